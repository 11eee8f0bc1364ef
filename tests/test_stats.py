"""The comparison statistics: plateau rule, paired intervals, Holm, power, latency noise."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from convattn.runs import stats

# ------------------------------------------------------------------ plateau

def test_plateau_flat_history_converges():
    flat = [[0.5, 0.9, 0.95, 0.951, 0.952, 0.951, 0.952, 0.952]] * 3
    p = stats.plateau(flat)
    assert p.converged and p.epochs == 8 and p.window == 3  # ceil(8 / 4) = 2, at least 3
    assert p.movement == pytest.approx(0.1, abs=1e-9)  # 95.1 .. 95.2 over epochs 6-8
    assert p.tolerance == pytest.approx(0.3)
    assert "epochs 6-8" in p.reason


def test_plateau_window_is_the_last_quarter():
    # 16 epochs: the window is epochs 13-16; the jump into epoch 13 is outside it
    h = [0.5] * 12 + [0.96, 0.962, 0.961, 0.963]
    p = stats.plateau([h, h])
    assert p.window == 4 and p.converged and p.movement == pytest.approx(0.3)
    late = [0.5] * 13 + [0.96, 0.962, 0.963]
    assert not stats.plateau([late]).converged


def test_plateau_rising_history_does_not_converge():
    rising = [[0.2, 0.4, 0.6, 0.8, 0.85, 0.9], [0.25, 0.45, 0.6, 0.78, 0.86, 0.91]]
    p = stats.plateau(rising)
    assert not p.converged
    assert p.window == 3
    # window: epochs 4-6, seed means 79, 85.5, 90.5
    assert p.movement == pytest.approx(11.5)
    assert "still moved" in p.reason


def test_plateau_noisy_seeds_widen_the_tolerance():
    # the seed mean moves by 1 point, but the seeds disagree by more than that at the end
    noisy = [[0.8, 0.9, 0.93, 0.94, 0.95, 0.94, 0.96, 0.93],
             [0.8, 0.9, 0.93, 0.95, 0.92, 0.94, 0.93, 0.97]]
    p = stats.plateau(noisy)
    end_std = float(np.std([93.0, 97.0], ddof=1))
    assert p.tolerance == pytest.approx(end_std)
    assert p.movement == pytest.approx(1.0)  # means over epochs 6-8: 94, 94.5, 95
    assert p.converged
    # the same histories with agreeing seeds (std 0) would not pass
    assert not stats.plateau([[0.8, 0.9, 0.93, 0.94, 0.95, 0.94, 0.945, 0.95]]).converged


def test_plateau_needs_four_epochs():
    p = stats.plateau([[0.9, 0.95, 0.95]])
    assert not p.converged and "at least 4" in p.reason
    assert not stats.plateau([]).converged


# ---------------------------------------------------------- paired difference

def test_paired_difference_equals_scipy():
    a = [0.951, 0.948, 0.957, 0.944]
    b = [0.947, 0.949, 0.950, 0.941]
    d = stats.paired_difference(a, b, "se", "none")
    diffs = (np.array(a) - np.array(b)) * 100
    ref = sps.ttest_rel(np.array(a) * 100, np.array(b) * 100)
    assert d.mean == pytest.approx(diffs.mean())
    assert d.p_value == pytest.approx(ref.pvalue)
    half = sps.t.ppf(0.975, len(a) - 1) * diffs.std(ddof=1) / math.sqrt(len(a))
    assert d.ci_low == pytest.approx(diffs.mean() - half)
    assert d.ci_high == pytest.approx(diffs.mean() + half)
    assert d.bootstrap_low is None  # fewer than 5 seeds
    assert d.statement.startswith("se: +0.33 points [")
    assert "could only have seen differences larger than" in d.statement


def test_paired_difference_bootstrap_from_five_seeds():
    a = [0.95, 0.96, 0.94, 0.97, 0.95, 0.96]
    b = [0.94, 0.94, 0.93, 0.95, 0.95, 0.94]
    d = stats.paired_difference(a, b)
    assert d.bootstrap_low is not None and d.bootstrap_low <= d.mean <= d.bootstrap_high
    diffs = (np.array(a) - np.array(b)) * 100
    ref = sps.bootstrap((diffs,), np.mean, confidence_level=0.95, n_resamples=9999, method="percentile",
                        rng=np.random.default_rng(0))
    assert d.bootstrap_low == pytest.approx(ref.confidence_interval.low)
    assert d.verdict == "better"


def test_paired_identical_runs_say_identical():
    d = stats.paired_difference([0.9, 0.91, 0.92], [0.9, 0.91, 0.92], "none2")
    assert d.mean == 0 and d.sd == 0 and d.verdict == "identical"
    assert "identical on every seed" in d.statement


def test_signed_never_prints_minus_zero():
    assert stats.signed(-1e-15) == "+0.00" and stats.signed(-0.004) == "+0.00" and stats.signed(-0.3) == "-0.30"


def test_paired_difference_needs_equal_lengths():
    with pytest.raises(ValueError, match="2 values against 3"):
        stats.paired_difference([1, 2], [1, 2, 3])


def test_minimal_detectable_has_80_percent_power():
    sd, n = 0.8, 5
    mde = stats.minimal_detectable(sd, n)
    crit = sps.t.ppf(0.975, n - 1)
    nc = mde * math.sqrt(n) / sd
    power = sps.nct.sf(crit, n - 1, nc) + sps.nct.cdf(-crit, n - 1, nc)
    assert power == pytest.approx(0.80, abs=1e-6)
    # a simulation of the paired t-test at that effect agrees
    rng = np.random.default_rng(0)
    d = rng.normal(mde, sd, size=(20000, n))
    p = sps.ttest_1samp(d, 0.0, axis=1).pvalue
    assert (p < 0.05).mean() == pytest.approx(0.80, abs=0.015)
    assert stats.minimal_detectable(0.0, 3) == 0.0
    assert stats.minimal_detectable(1.0, 1) is None


def test_unpaired_difference_is_welch():
    a, b = [0.9, 0.92, 0.95], [0.85, 0.86, 0.9, 0.88]
    d = stats.unpaired_difference(a, b)
    ref = sps.ttest_ind(np.array(a) * 100, np.array(b) * 100, equal_var=False)
    assert d.p_value == pytest.approx(ref.pvalue) and d.test == "Welch t"


# ------------------------------------------------------------------- Holm

def test_holm_on_known_p_values():
    # m = 4: sorted 0.01, 0.02, 0.03, 0.5 -> 0.04, 0.06, 0.06 (monotone), 0.5
    assert stats.holm([0.03, 0.01, 0.5, 0.02]) == pytest.approx([0.06, 0.04, 0.5, 0.06])
    assert stats.holm([0.6, 0.4]) == pytest.approx([0.8, 0.8])  # capped and monotone
    assert stats.holm([None, 0.01]) == [None, 0.01]


def test_compare_to_baseline_applies_holm_to_the_statements():
    per = {"none": [0.90, 0.91, 0.92, 0.93], "se": [0.91, 0.925, 0.93, 0.94], "eca": [0.90, 0.912, 0.918, 0.931]}
    out = stats.compare_to_baseline(per, "none")
    raw = {k: v.p_value for k, v in out.items()}
    adj = stats.holm([raw["se"], raw["eca"]])
    assert out["se"].p_holm == pytest.approx(adj[0]) and out["eca"].p_holm == pytest.approx(adj[1])
    assert "Holm-corrected p" in out["se"].statement
    assert stats.compare_to_baseline({"se": [1.0]}, "none") == {}


# ---------------------------------------------------------------- latency

def test_latency_ratio_with_clear_spread_is_a_number():
    base = [1.0, 1.02, 0.98, 1.01, 0.99, 1.0]
    slow = [1.2 * t for t in base]
    v = stats.latency_verdict(slow, base)
    assert not v.noise and v.ratio == pytest.approx(1.2) and v.text.startswith("1.20x")


def test_latency_spread_across_one_is_noise():
    base = [1.0] * 6
    v = stats.latency_verdict([0.95, 1.05, 1.02, 0.97, 1.04, 0.96], base)
    assert v.noise and v.text == "noise"


def test_latency_of_added_work_measuring_faster_is_noise():
    base = [1.0] * 5
    faster = [0.6, 0.55, 0.58, 0.62, 0.6]
    assert stats.latency_verdict(faster, base, adds_work=True).noise
    v = stats.latency_verdict(faster, base, adds_work=False)  # a variant that removes work may be faster
    assert not v.noise and v.ratio == pytest.approx(0.6)
