"""Paired initialisation: attention weights drawn from their own random stream.

Under one seed, a model with attention and the same model without it should
start from the same weights in every layer they share, so that a comparison
between them measures the attention and not a different draw of the backbone.
:func:`separate_rng` gives the code inside it a random stream of its own,
derived from (not drawn from) the global generator's current state, and puts
the global state back on exit: the layers created after it get the draws they
would have got had the attention not been there, and two models built from
the same state get the same attention weights.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def derived_seed(stream: int = 1) -> int:
    """A 63-bit seed that is a function of the global CPU generator's state and ``stream``."""
    state = torch.get_rng_state().numpy().tobytes()
    digest = hashlib.sha256(state + int(stream).to_bytes(8, "little", signed=True)).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@contextmanager
def separate_rng(stream: int = 1) -> Iterator[None]:
    """Run the body on a random stream of its own; the global CPU generator is unchanged afterwards."""
    seed = derived_seed(stream)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
