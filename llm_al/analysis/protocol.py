"""Analysis statistics for the research protocol: strategy vs random, feature correlation, OLS R^2 beside
its chance level and learning curves (the variance decomposition is llm_al/analysis/variance.py).

Pure functions over arrays; every randomised function takes an explicit `rng`; results are frozen
dataclasses of plain floats/ints/strings (`.to_dict()` gives a JSON-ready dict). Intervals of means
and paired comparisons reuse `llm_al.analysis.stats` (Student t intervals, see there why not a
bootstrap). Bad input raises ValueError with the offending value.

    .venv/bin/python -m pytest -q tests/test_analysis.py    # ~ a few seconds on 2 CPU cores
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from llm_al.analysis.stats import Result, paired_comparison, t_interval, welch_interval

def _as_1d(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {a.shape}")
    n_nan = int(np.isnan(a).sum())
    if n_nan:
        raise ValueError(f"{name} holds {n_nan} NaN of {a.size} values")
    return a


# ---------------------------------------------------------------- paired tests and multiple testing

@dataclass(frozen=True)
class WilcoxonResult(Result):
    n: int               # pairs
    n_nonzero: int       # pairs with a non-zero difference (zero_method="wilcox" drops the rest)
    statistic: float     # scipy's W (NaN when the test was not run)
    p: float             # two-sided p; 1.0 when the test cannot be run (see note)
    median_diff: float   # median of strategy - baseline
    note: str            # empty, or why p was set to 1.0


def wilcoxon_vs_baseline(strategy, baseline) -> WilcoxonResult:
    """Two-sided Wilcoxon signed-rank test of strategy - baseline, paired by position.

    Zero differences are dropped (zero_method="wilcox"). With fewer than 2 pairs, or when every
    difference is zero, there is no evidence either way: p = 1.0 and `note` says why."""
    a, b = _as_1d(strategy, "strategy"), _as_1d(baseline, "baseline")
    if a.shape != b.shape:
        raise ValueError(f"wilcoxon needs paired samples of equal length, got {a.size} and {b.size}")
    d = a - b
    n, nz = int(d.size), int((d != 0).sum())
    med = float(np.median(d))
    if n < 2:
        return WilcoxonResult(n, nz, float("nan"), 1.0, med, f"only {n} pair: test not run, p set to 1")
    if nz == 0:
        return WilcoxonResult(n, 0, float("nan"), 1.0, med, f"all {n} differences are zero: p set to 1")
    res = sps.wilcoxon(d, zero_method="wilcox", alternative="two-sided")
    return WilcoxonResult(n, nz, float(res.statistic), float(res.pvalue), med, "")


def holm(pvalues: Mapping[str, float], alpha: float = 0.05) -> dict[str, dict]:
    """Holm-Bonferroni step-down over a family of named p-values.

    Sorted ascending p_(1) <= ... <= p_(m): adjusted p_(i) = max_{j<=i} min(1, (m - j + 1) p_(j)),
    so adjusted values are monotone in p and capped at 1; `reject` is adjusted p <= alpha (the same
    decisions as the step-down rule p_(i) <= alpha / (m - i + 1) stopped at the first failure).
    Returns {name: {"p": raw, "p_adjusted": float, "reject": bool}} in the input order."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    names = list(pvalues)
    p = np.array([pvalues[k] for k in names], dtype=np.float64)
    bad = [(k, float(v)) for k, v in zip(names, p, strict=True) if not 0 <= v <= 1]  # also catches NaN
    if bad:
        raise ValueError(f"p-values must lie in [0, 1], got {bad}")
    m = len(names)
    order = np.argsort(p, kind="stable")
    adj_sorted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    adj = np.empty(m)
    adj[order] = adj_sorted
    return {k: {"p": float(p[i]), "p_adjusted": float(adj[i]), "reject": bool(adj[i] <= alpha)}
            for i, k in enumerate(names)}


# ---------------------------------------------------------------- strategy vs the random distribution

def percentile_among_random(value: float, random_values, higher_is_better: bool = True) -> float:
    """Mid-rank percentile of `value` among random-subset results, in [0, 100]: 100 * (number strictly
    worse + half the number exactly equal) / n. "Worse" follows the metric direction."""
    r = _as_1d(random_values, "random_values")
    if not np.isfinite(value):
        raise ValueError(f"value must be finite, got {value}")
    worse = (r < value) if higher_is_better else (r > value)
    return float(100.0 * (worse.sum() + 0.5 * (r == value).sum()) / r.size)


def band(random_values, level: float = 0.95) -> tuple[float, float]:
    """Central `level` interval of the random distribution (linear-interpolated quantiles)."""
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    r = _as_1d(random_values, "random_values")
    tail = (1 - level) / 2
    return float(np.quantile(r, tail)), float(np.quantile(r, 1 - tail))


def verdict(percentile: float, ci_low: float, ci_high: float, higher_is_better: bool = True,
            level: float = 95.0, n_baseline: int | None = None, p: float | None = None,
            test: str = "p", alpha: float = 0.05) -> str:
    """Plain-language verdict. The CI is of the raw difference strategy - random.

    better: the CI excludes 0 on the good side (ci_low > 0, or ci_high < 0 when lower is better) AND
            percentile >= level;
    worse:  the CI excludes 0 on the bad side AND percentile <= 100 - level;
    else:   "inside the noise of random" (including a CI that excludes 0 while the percentile does
            not clear the bar: a real but small shift that many random subsets match).
    With `n_baseline` random results fewer than 100 / (100 - level) (20 at 95%), a percentile
    cannot reach the level's resolution: the verdict then says "better/worse than all N" and that
    N is too few for the level, rather than claim it. With `p` (the paired sign-flip or unpaired
    Mann-Whitney p, named by `test`), a better/worse verdict whose p is not below `alpha` (NaN
    included) only "leans": 3 seeds cannot give a sign-flip p below 0.25 however tight their
    interval, as table.paired_verdict says for the table."""
    if any(np.isnan(v) for v in (percentile, ci_low, ci_high)):
        raise ValueError(f"verdict needs finite inputs, got percentile={percentile}, CI=({ci_low}, {ci_high})")
    if ci_low > ci_high:
        raise ValueError(f"CI low {ci_low} is above CI high {ci_high}")
    good_side = ci_low > 0 if higher_is_better else ci_high < 0
    bad_side = ci_high < 0 if higher_is_better else ci_low > 0
    weak = p is not None and not p < alpha

    def said(side: str, what: str) -> str:
        return f"leans {side}, not significant ({test} {p:.2g}; {side} than {what})" if weak else f"{side} than {what}"

    if n_baseline is not None and n_baseline < int(np.ceil(100 / (100 - level))):
        few = f"all {n_baseline} random subsets (too few to claim {level:g}%)"
        if good_side and percentile >= 100:
            return said("better", few)
        if bad_side and percentile <= 0:
            return said("worse", few)
        return "inside the noise of random"
    if good_side and percentile >= level:
        return said("better", f"{level:g}% of random subsets")
    if bad_side and percentile <= 100 - level:
        return said("worse", f"{level:g}% of random subsets")
    return "inside the noise of random"


@dataclass(frozen=True)
class StrategyVsRandom(Result):
    paired: bool          # True: differences by seed; False: two independent samples
    n_strategy: int
    n_random: int
    strategy_mean: float
    random_mean: float
    mean_diff: float      # strategy - random (raw units, not direction-adjusted)
    ci_low: float         # 95% t interval of mean_diff (paired: stats.paired_comparison; unpaired: Welch)
    ci_high: float
    p: float              # paired: Wilcoxon signed-rank; unpaired: Mann-Whitney U (two-sided)
    test: str             # "wilcoxon" or "mann-whitney"
    win_rate: float       # paired: share of seeds won (ties count 0); unpaired: P(S better than R) + P(tie)/2
    percentile: float     # strategy mean among ALL random results (mid-rank, direction-aware)
    band_low: float       # central 95% band of the random results
    band_high: float
    verdict: str
    note: str


def strategy_vs_random(strategy_runs, random_runs, rng: np.random.Generator, higher_is_better: bool = True,
                       paired: bool = True) -> StrategyVsRandom:
    """Compare a strategy's per-seed results with per-seed random-subset results.

    Paired (by seed) when `paired` and both have the same length: the t interval of the paired
    differences (stats.paired_comparison), Wilcoxon signed-rank p, win rate = seeds won / seeds.
    Otherwise independent samples: Welch's t interval (stats.welch_interval), Mann-Whitney U p, win
    rate = P(a strategy run beats a random run) with ties counted half. `rng` drives the sign-flip
    test's Monte Carlo above 16 pairs. The percentile places the strategy MEAN among all single random
    results; a mean of k runs varies less than one run, so the percentile alone overstates a small
    shift, which is why the verdict also needs the CI (see `verdict`)."""
    s, r = _as_1d(strategy_runs, "strategy_runs"), _as_1d(random_runs, "random_runs")
    sign = 1.0 if higher_is_better else -1.0
    note = ""
    if paired and s.size == r.size:
        c = paired_comparison(s, r, rng, higher_is_better=higher_is_better)
        w = wilcoxon_vs_baseline(s, r)
        lo, hi, p, note = c.ci_low, c.ci_high, w.p, w.note
        win_rate, test, is_paired = c.wins / c.n, "wilcoxon", True
        gate, gate_test = c.p, "sign-flip p"
    else:
        if paired:
            note = f"unequal lengths ({s.size} strategy, {r.size} random): compared as independent samples"
        lo, hi = welch_interval(s, r)
        p = float(sps.mannwhitneyu(s, r, alternative="two-sided").pvalue)   # 1.0 when all values tie
        diff = sign * (s[:, None] - r[None, :])
        win_rate = float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)
        test, is_paired = "mann-whitney", False
        gate, gate_test = p, "Mann-Whitney p"
    pct = percentile_among_random(float(s.mean()), r, higher_is_better)
    b_lo, b_hi = band(r)
    said = (verdict(pct, lo, hi, higher_is_better, n_baseline=int(r.size), p=gate, test=gate_test)
            if np.isfinite(lo) and np.isfinite(hi) else "no verdict (one run on each side: no interval)")
    return StrategyVsRandom(is_paired, int(s.size), int(r.size), float(s.mean()), float(r.mean()),
                            float(s.mean() - r.mean()), float(lo), float(hi), float(p), test, float(win_rate),
                            pct, b_lo, b_hi, said, note)


# ---------------------------------------------------------------- feature correlation and OLS

@dataclass(frozen=True)
class FeatureCorrelation(Result):
    feature: str
    n: int
    rho: float            # Spearman rho with the metric (NaN for a constant feature)
    p: float              # two-sided p (NaN for a constant feature)
    p_bonferroni: float   # min(1, p * number of features)
    significant: bool     # p_bonferroni <= alpha
    note: str


def feature_correlations(features: Mapping[str, np.ndarray], metric, alpha: float = 0.05) -> list[FeatureCorrelation]:
    """Spearman rho of every subset-level feature (G,) with the subset metric (G,), Bonferroni over
    all features given (constant ones included: the family is fixed before looking; the protocol's
    13 features give alpha 0.05/13). Rows in the input order. A constant feature gives NaN and a
    note, never an error; a constant metric is an error (nothing can correlate with it)."""
    y = _as_1d(metric, "metric")
    if y.size < 3:
        raise ValueError(f"feature correlation needs at least 3 subsets, got {y.size}")
    if np.all(y == y[0]):
        raise ValueError(f"metric is constant ({y[0]}) over all {y.size} subsets: correlations are undefined")
    m = len(features)
    if m == 0:
        raise ValueError("no features given")
    rows = []
    for name, values in features.items():
        x = _as_1d(values, f"feature {name!r}")
        if x.shape != y.shape:
            raise ValueError(f"feature {name!r} has {x.size} values, metric has {y.size}")
        if np.all(x == x[0]):
            rows.append(FeatureCorrelation(name, int(x.size), float("nan"), float("nan"), float("nan"), False,
                                           f"constant feature ({x[0]}): correlation undefined"))
            continue
        res = sps.spearmanr(x, y)
        rho, p = float(res.statistic), float(res.pvalue)
        p_b = min(1.0, p * m)
        rows.append(FeatureCorrelation(name, int(x.size), rho, p, p_b, bool(p_b <= alpha), ""))
    return rows


def partial_spearman(x, y, z) -> tuple[float, float]:
    """(rho, p): Spearman correlation of x with y holding z fixed, i.e. the Pearson correlation of
    the residuals of rank(x) and rank(y) each regressed linearly on rank(z) (with intercept); p
    from Student's t with n - 3 degrees of freedom. What a score says about the metric beyond a
    confound (a difficulty window's loss beyond its length). NaN when a residual is constant."""
    x, y, z = (_as_1d(v, name) for v, name in ((x, "x"), (y, "y"), (z, "z")))
    if not x.size == y.size == z.size:
        raise ValueError(f"x, y, z must have the same length, got {x.size}, {y.size}, {z.size}")
    n = x.size
    if n < 4:
        raise ValueError(f"a partial correlation needs at least 4 observations, got {n}")
    A = np.column_stack([np.ones(n), sps.rankdata(z)])
    res = [r - A @ np.linalg.lstsq(A, r, rcond=None)[0] for r in (sps.rankdata(x), sps.rankdata(y))]
    if any(np.ptp(r) < 1e-12 * n for r in res):
        return float("nan"), float("nan")
    rho = float(np.clip(np.corrcoef(res[0], res[1])[0, 1], -1.0, 1.0))
    if abs(rho) == 1.0:
        return rho, 0.0
    t = rho * np.sqrt((n - 3) / (1.0 - rho**2))
    return rho, float(2 * sps.t.sf(abs(t), n - 3))


@dataclass(frozen=True)
class OLSFit(Result):
    n: int                # G observations
    n_features: int       # F columns of X
    rank: int             # rank of the centred X (the degrees of freedom chance uses)
    r2: float
    adj_r2: float         # 1 - (1 - R^2)(G - 1)/(G - F - 1)
    f_p: float            # p of the overall F test (Gaussian errors)
    chance_r2: float      # E[R^2] under the null = rank/(G - 1), the mean of Beta(rank/2, (G-rank-1)/2)
    chance_r2_perm: float # mean R^2 over n_perm permutations of y (NaN when n_perm = 0)
    p_perm: float         # (1 + #perm R^2 >= R^2) / (1 + n_perm)


def _r2(A: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """R^2 of each column of Y (G, K) regressed on A (G, F+1), intercept included in A."""
    coef, *_ = np.linalg.lstsq(A, Y, rcond=None)
    resid = Y - A @ coef                                       # (G, K)
    ss_tot = ((Y - Y.mean(0)) ** 2).sum(0)
    return 1.0 - (resid ** 2).sum(0) / ss_tot


def ols_r2(X, y, rng: np.random.Generator, n_perm: int = 200) -> OLSFit:
    """OLS of y on X with an intercept: R^2 and adjusted R^2 beside what chance gives with this many
    observations and features (the protocol's 11 features at G = 100 give chance 11/99 = 0.11)."""
    y = _as_1d(y, "y")
    X = np.asarray(X, dtype=np.float64)
    X = X[:, None] if X.ndim == 1 else X                        # (G, F)
    if X.ndim != 2 or X.shape[0] != y.size:
        raise ValueError(f"X must be (G, F) with G = len(y) = {y.size}, got shape {X.shape}")
    if np.isnan(X).any():
        raise ValueError(f"X holds {int(np.isnan(X).sum())} NaN")
    g, f = X.shape
    if g <= f + 1:
        raise ValueError(f"OLS needs more observations than features + 1: G = {g}, F = {f}")
    if np.all(y == y[0]):
        raise ValueError(f"y is constant ({y[0]}): R^2 is undefined")
    if n_perm < 0:
        raise ValueError(f"n_perm must be >= 0, got {n_perm}")
    A = np.column_stack([np.ones(g), X])                       # (G, F+1)
    rank = int(np.linalg.matrix_rank(X - X.mean(0))) if f else 0
    r2 = float(_r2(A, y[:, None])[0])
    adj = 1.0 - (1.0 - r2) * (g - 1) / (g - f - 1)
    df2 = g - rank - 1
    if rank == 0:
        f_p = 1.0                                              # constant X explains nothing
    elif r2 >= 1.0:
        f_p = 0.0                                              # exact fit
    else:
        f_p = float(sps.f.sf((r2 / rank) / ((1 - r2) / df2), rank, df2))
    if n_perm:
        Y = np.stack([rng.permutation(y) for _ in range(n_perm)], axis=1)   # (G, n_perm)
        perm = _r2(A, Y)
        chance_perm, p_perm = float(perm.mean()), float((1 + (perm >= r2 - 1e-12).sum()) / (1 + n_perm))
    else:
        chance_perm = p_perm = float("nan")
    return OLSFit(g, f, rank, r2, float(adj), f_p, rank / (g - 1), chance_perm, p_perm)


# ---------------------------------------------------------------- learning curves

@dataclass(frozen=True)
class CurvePoint(Result):
    strategy: str
    x: int | float        # the record's budget (or round when it has no budget)
    n: int                # seeds
    mean: float
    sd: float             # sample sd (ddof 1); NaN with one seed
    ci_low: float         # 95% t interval of the mean (stats.t_interval); NaN with one seed
    ci_high: float


def learning_curve(results: Sequence[Mapping]) -> list[CurvePoint]:
    """Group records {strategy, budget | round, seed, value} into one point per (strategy, x).

    Strategies keep the order of their first appearance; within a strategy points are sorted by x.
    A repeated (strategy, x, seed) is an error (it would count one run twice)."""
    groups: dict[tuple[str, int | float], dict] = {}
    for i, rec in enumerate(results):
        missing = [k for k in ("strategy", "seed", "value") if k not in rec]
        if missing or ("budget" not in rec and "round" not in rec):
            raise ValueError(f"record {i} lacks {missing or ['budget or round']}: {dict(rec)}")
        x = rec["budget"] if "budget" in rec else rec["round"]
        if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)) or not np.isfinite(x):
            raise ValueError(f"record {i} has a budget/round that is not a finite number: {x!r}")
        x = int(x) if isinstance(x, (int, np.integer)) else float(x)
        value = float(rec["value"])
        if not np.isfinite(value):
            raise ValueError(f"record {i} has a non-finite value: {dict(rec)}")
        seeds = groups.setdefault((str(rec["strategy"]), x), {})
        if rec["seed"] in seeds:
            raise ValueError(f"record {i} repeats strategy {rec['strategy']!r}, x {x:g}, seed {rec['seed']!r}")
        seeds[rec["seed"]] = value
    first = {s: k for k, s in enumerate(dict.fromkeys(s for s, _ in groups))}   # strategy -> order of appearance
    points = []
    for (strategy, x), seeds in sorted(groups.items(), key=lambda kv: (first[kv[0][0]], kv[0][1])):
        v = np.array(list(seeds.values()))
        lo, hi = t_interval(v)
        sd = float(v.std(ddof=1)) if v.size > 1 else float("nan")
        points.append(CurvePoint(strategy, x, int(v.size), float(v.mean()), sd, lo, hi))
    return points
