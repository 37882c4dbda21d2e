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
    return PairedComparison(int(d.size), float(d.mean()), lo, hi, int(better.sum()), int((d == 0).sum()))
