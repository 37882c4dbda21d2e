"""How much of the spread of runs comes from the choice of subset, and how much from order and init
(issue 16): the within-subset share beside its null for the design actually run, a permutation
null, and variance components with intervals. Pure functions over arrays; the randomised ones take
an explicit `rng`.

    .venv/bin/python -m pytest -q tests/test_variance.py    # ~ 10 s on 2 CPU cores

The share SS_within / SS_total depends on the design. With G subsets, n runs in all (n_g of
subset g) and no subset effect, E[share] = (n - G) / (n - 1) for any group sizes: under normal noise
SS_within and SS_between are independent s^2 chi2(n - G) and s^2 chi2(G - 1), so the share is
Beta((n - G)/2, (G - 1)/2); and, with no distributional assumption, when the subset labels are
exchangeable (the permutation null), E[SS_between] = SS_total (G - 1)/(n - 1), because the mean of
n_g values drawn without replacement has variance (SS_total/n)(n - n_g)/(n_g (n - 1)). That is
N(G'-1)/(NG'-1) for G' subsets x N runs each: 0.77 at 8 x 4, 0.91 at the paper's 10 x 10. A share
is evidence that order matters only beside this number, and shares of two grids are compared as
their excess over their own nulls, or through variance components, which do not depend on the grid.

Variance components: method-of-moments (ANOVA) estimators truncated at 0, with generalized
confidence intervals (Weerahandi's generalized pivotal quantities) under the normal random-effects
model: each mean square MS_k = SS_k/df_k is replaced by SS_k / chi2(df_k) drawn independently, each
component is the same linear combination of these draws as of the mean squares, truncated at 0,
and its interval is the draws' central quantiles. Why not a bootstrap over subsets: with 8 subsets
x 4 runs a percentile bootstrap of the components covered the true subset variance 77-82% and the
within variance 88% of the time in simulation (400 data sets per setting, s_b^2 in 0..9, s_w^2 9),
where these intervals covered 95-97% and 95% (tests/test_variance.py checks the coverage). Unbalanced
one-way designs use n0 = (n - sum n_g^2 / n)/(G - 1) in place of the runs per subset (Searle,
Casella and McCulloch 1992, ch. 3), so their intervals are approximate (95-97% in the same
simulation with 8 subsets of 4 and 22 of 1).

Layouts (what varies inside a subset, from the runs' order and init seeds):
- one-way: components `subset` and one within-subset component named for what varies there:
  `order` (init fixed: the order-only arm), `init`, `order+init` (they move together: grid_tied or
  paired seeds), `within` (seeds not given). Order and residual noise are not separable without
  repeated runs of one seed pair, so `order` includes any residual noise.
- crossed (grid with >= 2 order seeds and >= 2 init seeds in each subset): the subsets that hold the
  complete order x init grid give `subset`, `order`, `init` and `residual` (the order x init
  interaction and any noise) from the nested two-way ANOVA: E[MS_S] = s_e^2 + I s_o^2 + O s_i^2
  + O I s_s^2, E[MS_O] = s_e^2 + I s_o^2, E[MS_I] = s_e^2 + O s_i^2, E[MS_E] = s_e^2.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import integrate, optimize
from scipy import stats as sps

from llm_al.analysis.stats import Result

PAPER_GRID = (10, 10)                                   # Flores et al. 2026: 10 subsets x 10 re-runs per cell
PAPER_SHARES = {100: (0.53, 0.90), 500: (0.65, 0.94)}   # their within-subset shares, by budget (examples)


@dataclass(frozen=True)
class Component(Result):
    name: str             # subset | order | init | order+init | within | residual
    variance: float       # method-of-moments estimate, truncated at 0 (metric units^2)
    ci_low: float         # generalized confidence interval (NaN when n_draws = 0)
    ci_high: float
    share: float          # variance / sum of the components' variances
    share_ci_low: float
    share_ci_high: float


@dataclass(frozen=True)
class VarianceDecomposition(Result):
    n_subsets: int        # G (subsets with at least one run)
    n_runs: int           # runs in all
    min_runs: int         # fewest and most runs of one subset (equal: a balanced design)
    max_runs: int
    within: str           # what varies inside a subset: order, init, order+init, crossed, within
    grand_mean: float
    ss_total: float       # sum over all runs of (x - grand mean)^2
    ss_within: float      # sum over subsets of the squared deviations from the subset's mean
    ss_between: float     # ss_total - ss_within
    share_within: float   # ss_within / ss_total: the protocol's "ordering share"
    null_share: float     # its expectation with no subset effect: (n - G)/(n - 1)
    excess: float         # share_within - null_share (<= 0 in expectation; below 0: subsets matter)
    perm_q05: float       # 5% and 95% quantiles of the share with subset labels shuffled across runs
    perm_q95: float
    perm_p: float         # one-sided: (1 + #shuffles with a share <= the observed) / (1 + n_perm)
    n_perm: int
    ms_within: float      # ss_within / (n - G): the within-subset (run) variance
    share_within_vc: float  # within-subset components / all components (grid-free)
    vc_ci_low: float      # its generalized confidence interval
    vc_ci_high: float
    anova_f: float        # one-way ANOVA across subsets (scipy.stats.f_oneway)
    anova_p: float
    components: tuple[Component, ...]
    note: str             # what the components were computed on, when not every run


def null_share(sizes) -> float:
    """E[SS_within / SS_total] with no subset effect, for subsets of `sizes` runs: (n - G)/(n - 1)."""
    s = np.asarray(sizes, dtype=np.int64)
    n, g = int(s.sum()), s.size
    if g < 2 or n <= g or (s < 1).any():
        raise ValueError(f"the null needs >= 2 subsets of >= 1 run and one with >= 2, got sizes {s.tolist()}")
    return (n - g) / (n - 1)


def _groups(scores) -> list[np.ndarray]:
    """A (G, N) matrix or a sequence of 1-D arrays -> one float array per subset, checked."""
    if isinstance(scores, np.ndarray) and scores.ndim != 2:
        raise ValueError(f"scores must be (G subsets, N runs) or one 1-D array per subset, got shape {scores.shape}")
    groups = [np.asarray(g, dtype=np.float64).ravel() for g in scores]
    n_nan = sum(int(np.isnan(g).sum()) for g in groups)
    if n_nan:
        raise ValueError(f"scores hold {n_nan} NaN of {sum(g.size for g in groups)} values: drop or rerun those runs first")
    sizes = [g.size for g in groups]
    if len(groups) < 2 or max(sizes, default=0) < 2 or min(sizes) < 1:
        raise ValueError(f"need at least 2 subsets, one of them with >= 2 runs, got runs per subset {sizes}")
    return groups


def permutation_shares(values: np.ndarray, sizes: np.ndarray, rng: np.random.Generator, n_perm: int) -> np.ndarray:
    """SS_within / SS_total with the subset labels shuffled across runs (group sizes kept), (n_perm,).
    SS_total does not change under a shuffle, so each share is 1 - SS_between / SS_total."""
    perm = rng.permuted(np.broadcast_to(values, (n_perm, values.size)), axis=1)   # (P, n)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    sums = np.add.reduceat(perm, starts, axis=1)                                  # (P, G)
    ss_total = float(((values - values.mean()) ** 2).sum())
    ss_between = (sums**2 / sizes).sum(1) - values.sum() ** 2 / values.size
    return 1.0 - ss_between / ss_total


def mom_components(ss: np.ndarray, df: np.ndarray, coef: np.ndarray, rng: np.random.Generator,
                   n_draws: int, level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Components = coef @ (ss / df), truncated at 0 (K,), with generalized confidence intervals:
    draws of coef @ (ss / chi2(df)), truncated at 0. Returns (estimates (K,), draws (n_draws, K),
    intervals (2, K)); the draws and intervals are empty / NaN when n_draws = 0."""
    est = np.maximum(0.0, coef @ (ss / df))
    if not n_draws:
        return est, np.empty((0, coef.shape[0])), np.full((2, coef.shape[0]), np.nan)
    pivots = ss / rng.chisquare(df, size=(n_draws, df.size))                     # (D, M) mean-square draws
    draws = np.maximum(0.0, pivots @ coef.T)                                      # (D, K)
    tail = (1 - level) / 2
    return est, draws, np.quantile(draws, [tail, 1 - tail], axis=0)


def _one_way(groups: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(SS, df, coef) of the one-way random-effects model: mean squares (between, within);
    components (subset, within) = ((MS_B - MS_W)/n0, MS_W)."""
    sizes = np.array([g.size for g in groups], dtype=np.float64)
    n, k = sizes.sum(), sizes.size
    allv = np.concatenate(groups)
    ss_w = float(sum(((g - g.mean()) ** 2).sum() for g in groups))
    ss_b = float(((allv - allv.mean()) ** 2).sum()) - ss_w
    n0 = (n - (sizes**2).sum() / n) / (k - 1)
    return np.array([ss_b, ss_w]), np.array([k - 1, n - k]), np.array([[1 / n0, -1 / n0], [0.0, 1.0]])


def _crossed(cubes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(SS, df, coef) of the nested two-way model on (G, O, I) cubes (subset x order x init, one run
    each): mean squares (subset, order, init, residual); components (subset, order, init, residual)."""
    g, o, i = cubes.shape
    m = cubes.mean((1, 2), keepdims=True)                                         # (G, 1, 1)
    a, b = cubes.mean(2, keepdims=True), cubes.mean(1, keepdims=True)             # (G, O, 1), (G, 1, I)
    ss = np.array([o * i * ((m - cubes.mean()) ** 2).sum(), i * ((a - m) ** 2).sum(),
                   o * ((b - m) ** 2).sum(), ((cubes - a - b + m) ** 2).sum()])
    df = np.array([g - 1, g * (o - 1), g * (i - 1), g * (o - 1) * (i - 1)], dtype=np.float64)
    coef = np.array([[1, -1, -1, 1], [0, 1, 0, -1], [0, 0, 1, -1], [0, 0, 0, 1]]) / np.array([[o * i], [i], [o], [1]])
    return ss, df, coef


def within_layout(seeds: Sequence[np.ndarray] | None) -> str:
    """What varies inside the subsets, from each subset's (n_g, 2) (order, init) seeds: `order`,
    `init`, `order+init` (both vary, not crossed), `crossed` (>= 2 subsets hold a complete order x init
    grid, >= 2 of each, one run per cell) or `within` (no seeds given, or neither varies)."""
    if seeds is None:
        return "within"
    multi = [np.asarray(s).reshape(-1, 2) for s in seeds if len(s) >= 2]
    varies = [any(len(np.unique(s[:, j])) > 1 for s in multi) for j in (0, 1)]
    if not all(varies):
        return "order" if varies[0] else "init" if varies[1] else "within"
    return "crossed" if sum(_is_grid(s) for s in multi) >= 2 else "order+init"


def _is_grid(s: np.ndarray) -> bool:
    o, i = np.unique(s[:, 0]), np.unique(s[:, 1])
    return o.size >= 2 and i.size >= 2 and len(s) == o.size * i.size == len({tuple(r) for r in s.tolist()})


def _cubes(groups: list[np.ndarray], seeds: Sequence[np.ndarray]) -> tuple[np.ndarray, str]:
    """The (G', O, I) cubes of the subsets with the most common complete grid shape, and a note."""
    shapes = {}
    for k, (g, s) in enumerate(zip(groups, seeds, strict=True)):
        s = np.asarray(s).reshape(-1, 2)
        if len(g) >= 2 and _is_grid(s):
            shapes.setdefault((np.unique(s[:, 0]).size, np.unique(s[:, 1]).size), []).append(k)
    (o, i), keep = max(shapes.items(), key=lambda kv: (len(kv[1]) * kv[0][0] * kv[0][1], kv[0]))
    cubes = np.empty((len(keep), o, i))
    for c, k in enumerate(keep):
        s = np.asarray(seeds[k]).reshape(-1, 2)
        rows, cols = np.unique(s[:, 0], return_inverse=True)[1], np.unique(s[:, 1], return_inverse=True)[1]
        cubes[c][rows, cols] = groups[k]
    left = len(groups) - len(keep)
    return cubes, (f"components from the {len(keep)} subsets with a complete {o} x {i} order x init grid"
                   + (f" ({left} other subsets left out)" if left else ""))


COMPONENT_NAMES = {"crossed": ("subset", "order", "init", "residual")}


def variance_decomposition(scores, rng: np.random.Generator, seeds: Sequence[np.ndarray] | None = None,
                           n_draws: int = 4000, n_perm: int = 4000, level: float = 0.95) -> VarianceDecomposition:
    """Decompose runs over subsets: `scores` is a (G, N) matrix or one 1-D array per subset (any
    sizes, one subset with >= 2 runs); `seeds` optionally gives each subset's (n_g, 2) order and
    init seeds, which name the within-subset component and find crossed layouts (module docstring).

    Reports SS_within / SS_total beside its null (n - G)/(n - 1), the permutation null's 5%/95%
    quantiles and one-sided p (a share this low with shuffled labels), the one-way ANOVA, and the
    variance components with generalized confidence intervals. `n_perm = 0` / `n_draws = 0` skip
    the permutation / the intervals (NaN)."""
    groups = _groups(scores)
    sizes = np.array([g.size for g in groups])
    values = np.concatenate(groups)
    grand = float(values.mean())
    ss_total = float(((values - grand) ** 2).sum())
    if ss_total == 0:
        raise ValueError(f"all {values.size} scores equal {grand}: the variance shares are undefined")
    one_way = _one_way(groups)
    (ss_b, ss_w), (_, df_w), _ = one_way
    share, null = ss_w / ss_total, null_share(sizes)
    q05 = q95 = p = float("nan")
    if n_perm:
        perm = permutation_shares(values, sizes, rng, n_perm)
        q05, q95 = (float(q) for q in np.quantile(perm, [0.05, 0.95]))
        p = float((1 + (perm <= share + 1e-12).sum()) / (1 + n_perm))
    layout, note = within_layout(seeds), ""
    if layout == "crossed":
        cubes, note = _cubes(groups, seeds)
        ss, df, coef = _crossed(cubes)
    else:
        ss, df, coef = one_way
    names = COMPONENT_NAMES.get(layout, ("subset", layout))
    comps, vc = _components(names, *mom_components(ss, df, coef, rng, n_draws, level), level)
    with warnings.catch_warnings():                            # zero within-variance: F = inf, let it show
        warnings.simplefilter("ignore")
        anova = sps.f_oneway(*groups)
    return VarianceDecomposition(len(groups), int(values.size), int(sizes.min()), int(sizes.max()), layout, grand,
                                 ss_total, float(ss_w), float(ss_b), float(share), float(null), float(share - null),
                                 q05, q95, p, int(n_perm), float(ss_w / df_w), *vc, float(anova.statistic),
                                 float(anova.pvalue), comps, note)


def _components(names, est: np.ndarray, draws: np.ndarray, ci: np.ndarray,
                level: float) -> tuple[tuple[Component, ...], tuple[float, float, float]]:
    """Component records, and the within-subset share of the components with its interval."""
    total = est.sum()
    share = est / total if total > 0 else np.full(est.size, np.nan)
    tail = (1 - level) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        sdraws = draws / draws.sum(1, keepdims=True)                             # (D, K)
    sci = np.nanquantile(sdraws, [tail, 1 - tail], axis=0) if len(draws) else np.full((2, est.size), np.nan)
    comps = tuple(Component(n, float(est[k]), float(ci[0, k]), float(ci[1, k]), float(share[k]), float(sci[0, k]),
                            float(sci[1, k])) for k, n in enumerate(names))
    within = 1.0 - comps[0].share if total > 0 else float("nan")
    return comps, (within, 1.0 - comps[0].share_ci_high, 1.0 - comps[0].share_ci_low)


@dataclass(frozen=True)
class ArmsDecomposition(Result):
    order_only: VarianceDecomposition  # data-order seed varies, model-init seed fixed
    all_seeds: VarianceDecomposition   # data order and init (and dropout) vary together
    share_difference: float            # all_seeds.share_within - order_only.share_within
    excess_difference: float           # the same for the excesses over each arm's null (grids may differ)
    ms_within_difference: float        # all_seeds.ms_within - order_only.ms_within: init variance (may be < 0)
    init_ci_low: float                 # its generalized confidence interval, truncated at 0
    init_ci_high: float


def decompose_arms(order_only, all_seeds, rng: np.random.Generator, n_draws: int = 4000, n_perm: int = 4000,
                   level: float = 0.95) -> ArmsDecomposition:
    """Both arms of the variance experiment on the same G subsets (row g is the same subset in both).

    The paper moved data order, adapter init and dropout with one seed, so its "ordering share" mixes
    them. Here the order-only arm varies only the data-order seed with init fixed, the all-seeds arm
    varies order and init. Their within-subset variances differ by the init variance (order and init
    noise adding independently): `ms_within_difference`, with the interval of
    SS_W(all)/chi2(df_all) - SS_W(order)/chi2(df_order) (the arms' runs are independent)."""
    a, b = np.asarray(order_only, dtype=np.float64), np.asarray(all_seeds, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        raise ValueError(f"both arms must be (G, N) over the same G subsets, got {a.shape} and {b.shape}")
    da = variance_decomposition(a, rng, n_draws=n_draws, n_perm=n_perm, level=level)
    db = variance_decomposition(b, rng, n_draws=n_draws, n_perm=n_perm, level=level)
    df = np.array([b.shape[0] * (b.shape[1] - 1), a.shape[0] * (a.shape[1] - 1)], dtype=np.float64)
    _, _, ci = mom_components(np.array([db.ss_within, da.ss_within]), df, np.array([[1.0, -1.0]]), rng, n_draws,
                              level)
    return ArmsDecomposition(da, db, db.share_within - da.share_within, db.excess - da.excess,
                             db.ms_within - da.ms_within, float(ci[0, 0]), float(ci[1, 0]))


# ---------------------------------------------------------------- the share at another grid; the paper

def expected_share(ratio: float, n_subsets: int, runs: int) -> float:
    """E[SS_within / SS_total] on a balanced grid of `n_subsets` x `runs` when the subset variance is
    `ratio` times the within-subset variance (normal random-effects model, exact): SS_within =
    s_w^2 chi2(a), SS_between = (s_w^2 + runs s_b^2) chi2(b), a = G(N-1), b = G-1, so the share is
    1/(1 + c (b/a) F) with F ~ F(b, a) and c = 1 + runs * ratio. ratio 0 gives the null a/(a + b)."""
    if n_subsets < 2 or runs < 2 or not ratio >= 0:
        raise ValueError(f"needs >= 2 subsets of >= 2 runs and a ratio >= 0, got {n_subsets} x {runs}, ratio {ratio}")
    a, b = n_subsets * (runs - 1), n_subsets - 1
    c = 1.0 + runs * ratio
    val, _ = integrate.quad(lambda t: sps.f.pdf(t, b, a) / (1.0 + c * b * t / a), 0, np.inf, limit=200)
    return float(val)


def implied_ratio(share: float, n_subsets: int, runs: int) -> float:
    """The subset / within variance ratio whose expected share on this grid is `share` (0 when the
    share is at or above the grid's null): the components a single observed share stands for."""
    if not 0 < share < 1:
        raise ValueError(f"share must lie in (0, 1), got {share}")
    if share >= expected_share(0.0, n_subsets, runs):
        return 0.0
    return float(optimize.brentq(lambda r: expected_share(r, n_subsets, runs) - share, 0.0, 1e6, xtol=1e-10))


def paper_footing(d: VarianceDecomposition, budget: int = 100) -> dict:
    """Our decomposition and the paper's on the same footing: each share minus its own grid's null,
    the within-subset share of the components (grid-free; the paper's implied by inverting
    expected_share at its 10 x 10 grid), and the share our components imply at the paper's grid,
    with the interval our components' interval maps to."""
    g, n = PAPER_GRID
    null = expected_share(0.0, g, n)
    lo, hi = PAPER_SHARES[budget]
    implied = [1.0 / (1.0 + implied_ratio(s, g, n)) for s in (lo, hi)]
    sub = d.components[0]
    within = sum(c.variance for c in d.components[1:])
    ratio = sub.variance / within if within > 0 else float("nan")
    at_grid = [float("nan")] * 3
    if np.isfinite(ratio) and np.isfinite(sub.share_ci_low):
        # the share at the grid falls as the subset share of the components rises: map the interval's ends
        ends = [s / (1 - s) if s < 1 else np.inf for s in (sub.share, sub.share_ci_high, sub.share_ci_low)]
        at_grid = [expected_share(r, g, n) if np.isfinite(r) else 0.0 for r in ends]
    elif np.isfinite(ratio):
        at_grid[0] = expected_share(ratio, g, n)
    return {"paper_grid": f"{g} x {n}", "paper_null": null, "paper_shares": [lo, hi],
            "paper_excess": [lo - null, hi - null], "paper_within_vc": implied,
            "ours_share": d.share_within, "ours_null": d.null_share, "ours_excess": d.excess,
            "ours_within_vc": [d.share_within_vc, d.vc_ci_low, d.vc_ci_high],
            "ours_share_at_paper_grid": at_grid, "ours_excess_at_paper_grid": [x - null for x in at_grid]}
