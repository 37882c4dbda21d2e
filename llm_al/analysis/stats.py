"""Statistics for comparing strategies with random: pure functions over arrays.

Intervals of a mean are Student t intervals, not percentile bootstraps. With the 3-8 seeds an
experiment here has, a percentile bootstrap of the mean cannot reach past the smallest and largest
value (with 3 values it returns about their min and max, which covers the mean ~75% of the time);
BCa is no better, as it too only picks quantiles of the same resampled means. The t interval is
exact for normal values and wider than min..max at n = 3 (tests/test_stats_metrics.py checks its
coverage by simulation).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps


class Result:
    """Base of the analysis result dataclasses: `.to_dict()` gives a JSON-ready dict."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)  # type: ignore[call-overload]


@dataclass(frozen=True)
class PairedComparison:
    n: int                 # number of seed pairs
    mean_diff: float       # mean of (strategy - baseline) over paired seeds
    ci_low: float          # Student t interval of the mean difference (t_interval); NaN with one pair
    ci_high: float
    wins: int              # pairs where the strategy scored strictly higher
    ties: int
    p: float = float("nan")  # two-sided paired sign-flip (randomisation) test of mean_diff = 0


def t_interval(values, level: float = 0.95) -> tuple[float, float]:
    """Student t interval of the mean: mean +- t_{n-1} sd / sqrt(n) (sd with ddof 1). (NaN, NaN)
    with one value: a single run says nothing about its spread. Equal values give a zero-width
    interval."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"an interval needs a non-empty 1-D sample, got shape {v.shape}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if v.size == 1:
        return float("nan"), float("nan")
    half = sps.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size)
    return float(v.mean() - half), float(v.mean() + half)


def welch_interval(a, b, level: float = 0.95) -> tuple[float, float]:
    """t interval of mean(a) - mean(b) for two independent samples: Welch-Satterthwaite degrees of
    freedom when both have >= 2 values; with one value on a side, that side's variance is taken to
    be the other side's (equal variances, df = n_other - 1). (NaN, NaN) with one value on each."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size == 0 or b.size == 0:
        raise ValueError(f"an interval needs two non-empty samples, got {a.size} and {b.size}")
    if a.size == 1 and b.size == 1:
        return float("nan"), float("nan")
    va = a.var(ddof=1) if a.size > 1 else b.var(ddof=1)
    vb = b.var(ddof=1) if b.size > 1 else a.var(ddof=1)
    se2 = va / a.size + vb / b.size
    if a.size > 1 and b.size > 1 and se2 > 0:
        df = se2**2 / ((va / a.size) ** 2 / (a.size - 1) + (vb / b.size) ** 2 / (b.size - 1))
    else:
        df = max(a.size, b.size) - 1
    half = sps.t.ppf(0.5 + level / 2, df) * np.sqrt(se2)
    d = a.mean() - b.mean()
    return float(d - half), float(d + half)


def paired_comparison(strategy: np.ndarray, baseline: np.ndarray, rng: np.random.Generator,
                      higher_is_better: bool = True) -> PairedComparison:
    """Paired (by seed) difference strategy - baseline: its t interval, wins by direction, and the
    sign-flip p (`rng` drives its Monte Carlo above EXACT_SIGN_FLIPS pairs)."""
    a, b = np.asarray(strategy, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired comparison needs equal, non-empty samples, got {a.shape} and {b.shape}")
    d = a - b
    lo, hi = t_interval(d)
    better = d > 0 if higher_is_better else d < 0
    return PairedComparison(int(d.size), float(d.mean()), lo, hi, int(better.sum()), int((d == 0).sum()),
                            sign_flip_p(d, rng))


EXACT_SIGN_FLIPS = 16
"""Up to this many pairs the sign-flip test enumerates all 2^n assignments; above, Monte Carlo."""


def sign_flip_p(d: np.ndarray, rng: np.random.Generator, n_mc: int = 20_000) -> float:
    """Two-sided p of the paired randomisation test (Fisher's sign-flip test) of a zero mean
    difference: under the null each pair's difference is as likely negative as positive, so p is
    the share of the 2^n sign assignments whose |mean| reaches the observed |mean| (exact up to
    EXACT_SIGN_FLIPS pairs, else `n_mc` seeded draws, counting the observed one). It cannot go below
    2 / 2^n: 0.25 with 3 seeds, 0.0625 with 5, 0.03 with 6. A t interval of 3 same-signed
    differences can exclude 0 when they are close together, which this test cannot confirm; it is
    what keeps such an interval from being read as a verdict. NaN if a difference is not finite."""
    d = np.asarray(d, dtype=np.float64)
    n = d.size
    if n == 0:
        raise ValueError("sign-flip test of no pairs")
    if not np.all(np.isfinite(d)):
        return float("nan")                                  # no test of a NaN/inf difference (not p = 0)
    observed = abs(d.mean()) * (1 - 1e-12)                  # ties with the observed mean count as extreme
    if n <= EXACT_SIGN_FLIPS:
        signs = 1 - 2 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1)   # (2^n, n) every assignment
        return float(np.mean(np.abs(signs @ d) / n >= observed))
    signs = rng.choice([-1.0, 1.0], size=(n_mc, n))
    return float((1 + np.sum(np.abs(signs @ d) / n >= observed)) / (n_mc + 1))
