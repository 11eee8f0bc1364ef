"""The statistics behind every comparison report, said in words.

- :func:`plateau`: has a variant stopped learning? A rule on the per-epoch
  held-out metric, averaged over seeds.
- :func:`paired_difference`: a variant against the baseline on the same seeds
  (same data order, augmentation and shared initial weights): the mean
  difference, its 95 % t interval (and a bootstrap interval from 5 seeds up),
  the paired t-test's p-value and the smallest difference the run could have
  detected with 80 % power.
- :func:`holm`: Holm's step-down correction of several p-values.
- :func:`unpaired_difference`: Welch's t-test, for results that are not paired.
- :func:`latency_verdict`: a timing ratio, or "noise" when its spread says nothing.

Tests, intervals and distributions come from :mod:`scipy.stats`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

ALPHA = 0.05
CONFIDENCE = 0.95
POWER = 0.80
#: the plateau rule's fixed tolerance, in the metric's points (percent)
PLATEAU_POINTS = 0.3
#: seeds from which a bootstrap interval is reported beside the t interval
BOOTSTRAP_FROM = 5

#: the fewest per-epoch evaluations the plateau window may hold
PLATEAU_MIN_WINDOW = 3

PLATEAU_RULE = (
    "a variant has plateaued when the mean over seeds of its held-out {metric}, evaluated after every epoch, "
    "moved (max - min) by at most max({points} points, the seed std at the last epoch) over the epochs that end "
    "in the last quarter of training (the last ceil(E/4) of E epochs, at least 3)"
)

NOT_CONVERGED = "not converged: these differences measure how fast each variant learns, not where it ends"


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; 0 for one value, NaN for none)."""
    a = np.asarray([v for v in values if v is not None], dtype=float)
    if a.size == 0:
        return float("nan"), float("nan")
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


# ------------------------------------------------------------------ plateau


@dataclass
class Plateau:
    """The plateau rule's verdict for one variant (numbers in points)."""

    converged: bool
    epochs: int
    window: int
    movement: float | None
    tolerance: float | None
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def plateau(histories: list[list[float]], *, scale: float = 100.0, points: float = PLATEAU_POINTS) -> Plateau:
    """Apply the plateau rule to per-seed, per-epoch metric values (fractions, scaled to points).

    ``histories[k][e]`` is seed k's held-out metric after epoch e + 1. With E
    epochs (the shortest history), the window is the last
    ``q = max(3, ceil(E / 4))`` epochs (E >= 4 needed); the mean over seeds may
    move (max - min within the window) by at most ``max(points, seed std at epoch E)``.
    """
    hist = [list(h) for h in histories if h]
    if not hist:
        return Plateau(False, 0, 0, None, None, "no per-epoch history")
    E = min(len(h) for h in hist)
    if E < 4:
        return Plateau(False, E, 0, None, None,
                       f"{E} epoch(s): the rule needs at least 4 to see a quarter of training")
    a = np.asarray([h[:E] for h in hist], dtype=float) * scale
    q = max(PLATEAU_MIN_WINDOW, math.ceil(E / 4))
    window = a[:, E - q:].mean(axis=0)
    movement = float(window.max() - window.min())
    std = float(a[:, -1].std(ddof=1)) if len(a) > 1 else 0.0
    tolerance = max(points, std)
    ok = movement <= tolerance + 1e-9
    verb = "moved" if ok else "still moved"
    reason = (f"the seed mean {verb} {movement:.2f} points over epochs {E - q + 1}-{E} "
              f"({'<=' if ok else '>'} tolerance {tolerance:.2f})")
    return Plateau(bool(ok), E, q, movement, tolerance, reason)


# ----------------------------------------------------------- paired difference


def minimal_detectable(sd: float, n: int, *, alpha: float = ALPHA, power: float = POWER) -> float | None:
    """Smallest true mean difference a two-sided paired t-test at ``alpha`` detects with ``power``.

    Solves ``P(|T| > t_crit) = power`` for the effect, with ``T`` noncentral t
    (``n - 1`` degrees of freedom, noncentrality ``effect * sqrt(n) / sd``).
    None when it is undefined (fewer than 2 pairs); 0 when the spread is 0.
    """
    if n < 2 or not math.isfinite(sd):
        return None
    if sd == 0:
        return 0.0
    from scipy.optimize import brentq
    from scipy.stats import nct, t

    df = n - 1
    crit = float(t.ppf(1 - alpha / 2, df))

    def gap(nc: float) -> float:
        lower = float(nct.cdf(-crit, df, nc))  # the far tail; scipy can return NaN where it is ~0
        return float(nct.sf(crit, df, nc)) + (0.0 if math.isnan(lower) else lower) - power

    hi = 1.0
    while gap(hi) < 0:
        hi *= 2
    nc = brentq(gap, 0.0, hi, xtol=1e-10)
    return float(nc * sd / math.sqrt(n))


@dataclass
class Difference:
    """A variant minus the baseline, in points (or the unit given)."""

    variant: str
    baseline: str
    n: int
    mean: float
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    test: str
    sd: float | None = None
    bootstrap_low: float | None = None
    bootstrap_high: float | None = None
    minimal_detectable: float | None = None
    p_holm: float | None = None
    verdict: str = "not tested"
    statement: str = ""
    unit: str = "points"
    higher_is_better: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def finish(self, alpha: float = ALPHA) -> Difference:
        """Set ``verdict`` and ``statement`` from the numbers (Holm's p when set)."""
        u = self.unit
        head = f"{self.variant}: {signed(self.mean)}{' ' + u if u else ''}"
        if self.ci_low is not None and self.ci_high is not None:
            head += f" [{signed(self.ci_low)}, {signed(self.ci_high)}]"
        p = self.p_holm if self.p_holm is not None else self.p_value
        if self.n < 2:
            self.verdict = "not tested"
            self.statement = f"{head} vs {self.baseline}; not tested (needs at least 2 seeds)."
            return self
        if self.sd == 0 and self.mean == 0:
            self.verdict = "identical"
            self.statement = f"{head} vs {self.baseline}; identical on every seed."
            return self
        if p is None or not math.isfinite(p):
            self.verdict = "not tested"
            self.statement = f"{head} vs {self.baseline}; the same difference on every seed, so no t-test."
            return self
        which = "Holm-corrected p" if self.p_holm is not None else "p"
        if p < alpha:
            self.verdict = "better" if (self.mean > 0) == self.higher_is_better else "worse"
            words = f"{self.verdict} than {self.baseline} ({which} = {_p(p)})"
        else:
            self.verdict = "no evidence"
            words = f"no evidence of a difference ({which} = {_p(p)})"
        tail = ""
        if self.minimal_detectable is not None:
            tail = (f"; this run could only have seen differences larger than "
                    f"{self.minimal_detectable:.2f}{' ' + u if u else ''}")
        self.statement = f"{head}; {words}{tail}."
        return self


def signed(x: float, digits: int = 2) -> str:
    """``x`` with its sign, never "-0.00" for a value that rounds to zero."""
    return f"{round(x, digits) + 0.0:+.{digits}f}"


def _p(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def paired_difference(values: list[float], baseline: list[float], variant: str = "variant",
                      baseline_name: str = "none", *, scale: float = 100.0, unit: str = "points",
                      confidence: float = CONFIDENCE, bootstrap_seed: int = 0) -> Difference:
    """``values[k] - baseline[k]`` over paired seeds, with scipy's paired t-test and intervals."""
    if len(values) != len(baseline):
        raise ValueError(f"paired_difference: {len(values)} values against {len(baseline)} baseline values")
    a = np.asarray(values, dtype=float) * scale
    b = np.asarray(baseline, dtype=float) * scale
    d = a - b
    n = len(d)
    if n == 0:
        return Difference(variant, baseline_name, 0, float("nan"), None, None, None, "paired t", unit=unit).finish()
    mean = float(d.mean())
    if n < 2:
        return Difference(variant, baseline_name, n, mean, None, None, None, "paired t", unit=unit).finish()
    sd = float(d.std(ddof=1))
    out = Difference(variant, baseline_name, n, mean, None, None, None, "paired t", sd=sd, unit=unit)
    if sd == 0:
        out.ci_low = out.ci_high = mean
        return out.finish()
    from scipy import stats

    res = stats.ttest_rel(a, b)
    ci = res.confidence_interval(confidence_level=confidence)
    out.p_value, out.ci_low, out.ci_high = float(res.pvalue), float(ci.low), float(ci.high)
    out.minimal_detectable = minimal_detectable(sd, n)
    if n >= BOOTSTRAP_FROM:
        with warnings.catch_warnings():  # BCa on few points can warn about its own accuracy
            warnings.simplefilter("ignore")
            boot = stats.bootstrap((d,), np.mean, confidence_level=confidence, n_resamples=9999,
                                   method="percentile", rng=np.random.default_rng(bootstrap_seed))
        out.bootstrap_low, out.bootstrap_high = float(boot.confidence_interval.low), float(boot.confidence_interval.high)
    return out.finish()


def unpaired_difference(values: list[float], baseline: list[float], variant: str = "variant",
                        baseline_name: str = "none", *, scale: float = 100.0, unit: str = "points",
                        confidence: float = CONFIDENCE, higher_is_better: bool = True) -> Difference:
    """Welch's t-test (scipy, unequal variances) for results that are not paired by seed."""
    a = np.asarray(values, dtype=float) * scale
    b = np.asarray(baseline, dtype=float) * scale
    mean = float(a.mean() - b.mean()) if len(a) and len(b) else float("nan")
    out = Difference(variant, baseline_name, min(len(a), len(b)), mean, None, None, None, "Welch t", unit=unit,
                     higher_is_better=higher_is_better)
    if len(a) < 2 or len(b) < 2:
        return out.finish()
    out.sd = float(math.hypot(a.std(ddof=1), b.std(ddof=1)))
    if out.sd == 0:
        return out.finish()
    from scipy import stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_ind(a, b, equal_var=False)
        ci = res.confidence_interval(confidence_level=confidence)
    out.p_value, out.ci_low, out.ci_high = float(res.pvalue), float(ci.low), float(ci.high)
    return out.finish()


def holm(p_values: list[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (None stays None), in the input order.

    With the m defined p-values sorted ascending, the k-th (from 0) becomes
    ``max over j <= k of min(1, (m - j) p_(j))``.
    """
    idx = [i for i, p in enumerate(p_values) if p is not None and math.isfinite(p)]
    order = sorted(idx, key=lambda i: p_values[i])
    m = len(order)
    out: list[float | None] = [None] * len(p_values)
    running = 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (m - k) * float(p_values[i])))
        out[i] = running
    return out


def compare_to_baseline(per_variant: dict[str, list[float]], baseline: str, *, scale: float = 100.0,
                        unit: str = "points", paired: bool = True) -> dict[str, Difference]:
    """Every variant against ``baseline`` (paired by position, or Welch), Holm-corrected together."""
    if baseline not in per_variant:
        return {}
    fn = paired_difference if paired else unpaired_difference
    diffs = {name: fn(vals, per_variant[baseline], name, baseline, scale=scale, unit=unit)
             for name, vals in per_variant.items() if name != baseline}
    names = list(diffs)
    if len(names) > 1:
        for name, p in zip(names, holm([diffs[n].p_value for n in names]), strict=True):
            diffs[name].p_holm = p
            diffs[name].finish()
    return diffs


# ------------------------------------------------------------------ latency


@dataclass
class LatencyVerdict:
    ratio: float | None
    low: float | None
    high: float | None
    rounds: int
    noise: bool
    text: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def latency_verdict(times: list[float], baseline: list[float], *, adds_work: bool = True) -> LatencyVerdict:
    """The per-round ratio ``times[i] / baseline[i]`` (median and the 25-75 % range over rounds).

    "noise" when that range contains 1 (no measurable difference), or when a
    variant that only adds work measures faster than the baseline (the spread
    of the machine, not the model).
    """
    if len(times) != len(baseline) or not times:
        return LatencyVerdict(None, None, None, 0, True, "not measured")
    r = np.asarray(times, dtype=float) / np.asarray(baseline, dtype=float)
    low, med, high = (float(v) for v in np.quantile(r, [0.25, 0.5, 0.75]))
    noise = (low <= 1.0 <= high) or (adds_work and high < 1.0)
    text = "noise" if noise else f"{med:.2f}x [{low:.2f}-{high:.2f}]"
    return LatencyVerdict(med, low, high, len(r), bool(noise), text)
