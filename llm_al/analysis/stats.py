"""Statistics for comparing strategies with random: pure functions over arrays."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PairedComparison:
    n: int                 # number of seed pairs
    mean_diff: float       # mean of (strategy - baseline) over paired seeds
    ci_low: float          # percentile bootstrap interval of the mean difference
    ci_high: float
    wins: int              # pairs where the strategy scored strictly higher
    ties: int
    p: float = float("nan")  # two-sided paired sign-flip (randomisation) test of mean_diff = 0


def bootstrap_ci(values: np.ndarray, rng: np.random.Generator, n_boot: int = 10_000,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean. With one value the interval is that value."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("bootstrap of an empty sample")
    means = values[rng.integers(0, values.size, size=(n_boot, values.size))].mean(axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def paired_comparison(strategy: np.ndarray, baseline: np.ndarray, rng: np.random.Generator,
                      n_boot: int = 10_000, higher_is_better: bool = True) -> PairedComparison:
    """Paired (by seed) difference strategy - baseline; `wins` counts the better side by direction."""
    a, b = np.asarray(strategy, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired comparison needs equal, non-empty samples, got {a.shape} and {b.shape}")
    d = a - b
    lo, hi = bootstrap_ci(d, rng, n_boot)
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
    2 / 2^n: 0.25 with 3 seeds, 0.0625 with 5, 0.03 with 6. A percentile bootstrap CI of 3
    same-signed differences excludes 0 whatever their size, which noise alone does 25% of the
    time; this test is what keeps such a CI from being read as a verdict. NaN if a difference is
    not finite."""
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
