"""Diversity and hybrid acquisition strategies over sentence embeddings.

Each strategy is a pure function `fn(features, budget, rng, **params) -> Selection` registered where
it is defined, like `kcenter` in strategies/base.py; the reusable pieces (k-means, lazy-greedy facility
location) are plain functions in strategies/kernels/ (kmeans.py, facility.py). Cosine similarities are taken on
re-normalised embeddings, so a caller's non-unit vectors cannot silently change their meaning.

`pool_scores`, where set, measures the same thing as `scores` (so `score_name` names both); for
greedy set selection (facility_location, deita, idds, score_then_diversify) the value that drove a
pick depends on the earlier picks, and `pool_scores` is left None.

Every strategy here but `weighted` reads the labelled set (`features.labelled`, types.Features)
and treats it as chosen before the first pick: facility location counts it as coverage, DEITA and
IDDS as accepted/selected examples, kmeans holds it as fixed centres, cluster_stratified counts it
towards each cluster's share, score_then_diversify's k-center starts from it.

Tests: `.venv/bin/python -m pytest -q tests/test_diversity.py` (a few seconds on CPU).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Literal

import numpy as np

from llm_al.errors import ConfigError
from llm_al.features.probes import matrix_names, provided_names
from llm_al.registry import Constraint, above, at_least, between, one_of
from llm_al.strategies.base import PER_EXAMPLE, STRATEGIES, top_k
from llm_al.strategies.kernels.facility import (dense_similarity, facility_location_greedy,
                                                facility_location_sparse, labelled_cover)
from llm_al.strategies.kernels.kcenter import kcenter_greedy
from llm_al.strategies.kernels.kmeans import kmeans
from llm_al.strategies.kernels.knn import knn_graph, knn_ivf
from llm_al.strategies.kernels.rows import max_cosine, sq_dists, unit
from llm_al.types import SCALAR_FEATURES, Features, Selection

SCORE_FIELDS = SCALAR_FEATURES   # per-example Features fields a hybrid can use


def score_fields() -> list[str]:
    """Every per-example score a hybrid can use: the Features fields and each probe's scores."""
    return [*SCORE_FIELDS, *(f for f in provided_names() if f not in matrix_names())]
THEN = ("kcenter", "facility_location")
ScoreName = Annotated[str, one_of(score_fields)]
"""A `by=` parameter: the name of a per-example score (checked when the strategy spec is parsed)."""
PositiveInt = Annotated[int, at_least(1)]


def _weights_ok(w: Mapping) -> bool:
    return bool(w) and set(w) <= set(score_fields()) and all(np.isfinite(v) for v in w.values()) and any(w.values())


Weights = Annotated[Mapping[str, float], Constraint(
    _weights_ok, lambda: f"must map per-example scores ({', '.join(score_fields())}) to finite numbers, not all 0",
    ({}, {"not-a-score": 1.0}, {"loss": 0.0}))]


# ---------------------------------------------------------------------------- validation
def bad_param(strategy: str, param: str, value: object, valid: str) -> ConfigError:
    return ConfigError(f"strategy {strategy!r}: {param}={value!r} is invalid; {valid}")


def check_int(strategy: str, param: str, value: object, lo: int, hi: int | None = None) -> int:
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not ok or value < lo or (hi is not None and value > hi):
        raise bad_param(strategy, param, value, f"must be an integer in [{lo}, {'inf' if hi is None else hi}]")
    return int(value)


def check_number(strategy: str, param: str, value: object, lo: float, hi: float, valid: str) -> float:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not ok or not np.isfinite(value) or not lo <= value <= hi:
        raise bad_param(strategy, param, value, valid)
    return float(value)


def field_scores(features: Features, by: str, strategy: str) -> np.ndarray:
    """(N,) float64 copy of a per-example Features field, checked for NaN."""
    if by not in score_fields():
        raise bad_param(strategy, "by", by, f"must be one of {', '.join(score_fields())}")
    s = features.require(by).astype(np.float64)
    if np.isnan(s).any():
        raise ValueError(f"{int(np.isnan(s).sum())} {by} values are NaN; {strategy} must not select on them")
    return s


# ---------------------------------------------------------------------------- rank normalisation
def rank01(v: np.ndarray) -> np.ndarray:
    """(N,) average ranks (ties share their mean rank) scaled to [0, 1]; all zeros when N == 1."""
    _, inv, counts = np.unique(v, return_inverse=True, return_counts=True)
    start = np.cumsum(counts) - counts                       # (U,) rank of each distinct value's first copy
    ranks = (start + (counts - 1) / 2.0)[inv]                # (N,)
    return ranks / max(len(v) - 1, 1)


# ---------------------------------------------------------------------------- k-means (kernels/kmeans.py)
def with_labelled_rows(features: Features) -> tuple[np.ndarray, np.ndarray | None]:
    """(N + L, D) float64 embeddings of the candidates then the labelled examples, and the
    labelled rows alone (None when nothing is labelled): what cluster_stratified clusters."""
    x = np.asarray(features.require("embeddings"), dtype=np.float64)   # (N, D)
    lab = features.labelled_rows("embeddings")
    if lab is None:
        return x, None
    lab = np.asarray(lab, dtype=np.float64)                             # (L, D)
    return np.concatenate([x, lab]), lab


@STRATEGIES.register("kmeans", "k-means with k = budget over embeddings; the example nearest each centroid",
                     needs=("embeddings",), labelled="used: the labelled examples are fixed centres, so the "
                     "k-means centroids settle where they leave the pool uncovered")
def kmeans_representatives(features: Features, budget: int, rng: np.random.Generator,
                           max_iter: PositiveInt = 100) -> Selection:
    """Cluster representatives (Chang et al., "On Training Instance Selection for Few-Shot Neural
    Text Generation", ACL 2021; small-text's EmbeddingKMeans, after Zhdanov 2019): k-means with
    k = budget, then for each non-empty cluster, largest first, the pool example nearest its
    centroid that is not already taken (two centroids sharing a nearest point, e.g. duplicates,
    send the second to its next-nearest). Empty clusters leave gaps, filled by the points farthest
    from everything chosen so far (k-center style). Score: Euclidean distance to the nearest
    centroid (for a cluster pick, its own centroid); lower is more representative.
    With a labelled set (`features.labelled`) its examples are fixed centres (kernels.kmeans.kmeans
    `fixed`: the conditional k-means problem, as k-center grown from the labelled set is the
    core-set's): a candidate nearer a labelled example than to every centroid belongs to no
    cluster, so the budget's centroids go where the labelled set leaves the pool uncovered; the
    fill counts the labelled set as chosen. With nothing labelled the picks are the plain ones."""
    max_iter = check_int("kmeans", "max_iter", max_iter, 1)
    x = np.asarray(features.require("embeddings"), dtype=np.float64)   # (N, D)
    lab = features.labelled_rows("embeddings")                         # (L, D) or None
    c, labels = kmeans(x, budget, rng, max_iter, fixed=lab)            # labels -1: nearest a labelled example
    d2 = sq_dists(x, c)                                                 # (N, k)
    pool_dist = np.sqrt(d2.min(1))                                      # (N,)
    counts = np.bincount(labels[labels >= 0], minlength=budget)
    taken = np.zeros(len(x), dtype=bool)
    picks, scores = [], []
    for j in sorted(np.flatnonzero(counts), key=lambda j: (-counts[j], j)):
        i = int(np.argmin(np.where(taken, np.inf, d2[:, j])))
        taken[i] = True
        picks.append(i)
        scores.append(float(np.sqrt(d2[i, j])))
    if len(picks) < budget:                                             # empty clusters: farthest-point fill
        min_d = sq_dists(x, x[picks]).min(1) if picks else np.full(len(x), np.inf)   # (N,)
        if lab is not None:
            np.minimum(min_d, sq_dists(x, np.asarray(lab, dtype=np.float64)).min(1), out=min_d)
        for _ in range(budget - len(picks)):
            min_d[taken] = -np.inf
            i = int(np.argmax(min_d))
            taken[i] = True
            picks.append(i)
            scores.append(float(pool_dist[i]))
            np.minimum(min_d, sq_dists(x, x[i][None])[:, 0], out=min_d)
    return Selection(np.array(picks, dtype=np.int64), np.array(scores),
                     "distance to its k-means centroid (lower = more representative)", pool_dist)


# ---------------------------------------------------------------------------- facility location (kernels/facility.py)
KNN_EXACT_MAX = 50_000   # facility_location approx="auto": the exact kNN graph up to this many examples


@STRATEGIES.register("facility_location", "lazy-greedy facility location over (1+cos)/2: picks that best "
                     "represent the whole pool (a k-nearest-neighbour graph above max_dense)", needs=("embeddings",),
                     labelled="used: each candidate's similarity to the labelled set is its starting coverage")
def facility_location(features: Features, budget: int, rng: np.random.Generator, max_dense: PositiveInt = 20000,
                      knn: PositiveInt = 32, approx: bool | Literal["auto"] = "auto") -> Selection:
    """Submodular facility location, maximised by lazy greedy (Minoux 1978; the (1 - 1/e) greedy
    guarantee of Nemhauser et al. 1978), as in CRAIG (Mirzasoleiman et al., ICML 2020) and in
    Superfiltering's diversity variant (Li et al., ACL 2024), which runs it on top of IFD
    filtering. Up to `max_dense` examples: the dense N x N similarity, f(S) = sum over every
    example i of max_{j in S} (1 + cos(i, j)) / 2. Above it: the sparse facility location of Wei
    et al. ("Submodularity in data subset selection and active learning", ICML 2015;
    knn.facility_location_sparse), where each example counts only its k = min(knn, N - 1) nearest
    neighbours and itself: a pick j covers i only if j is among i's k nearest, so the sparse f is
    a lower bound of the dense one, equal to it when k = N - 1. The graph is exact (knn.knn_graph,
    N^2 D flops: ~3 min at 100k x 384 on one busy core) when approx=False, or approx="auto" and
    N <= 50,000; approximate above that or with approx=True (knn.knn_ivf: an inverted file over
    k-means lists, drawn with rng; it misses the neighbours that sit in lists it does not
    search: recall@32 0.99 at 100k in eval/results/bench_selection.txt; 1M x 384 took ~5 min and
    ~2 GB beyond the embeddings there). Deterministic under rng (the dense path and the exact
    graph do not use it). With a labelled set L (`features.labelled`) the objective is f(S | L):
    each example starts covered by its most similar labelled example (kernels.facility.
    labelled_cover, exact on both paths), so picks go where L leaves the pool uncovered.
    Score: marginal gain at pick time (of the sparse objective on the graph path)."""
    name = "facility_location"
    max_dense = check_int(name, "max_dense", max_dense, 1)
    knn = check_int(name, "knn", knn, 1)
    if not (isinstance(approx, (bool, np.bool_)) or (isinstance(approx, str) and approx == "auto")):
        raise bad_param(name, "approx", approx, "must be auto, true or false")
    x = features.require("embeddings")
    n = len(x)
    cover = labelled_cover(x, features.labelled_rows("embeddings"))     # (N,) or None
    if n <= max_dense:
        idx, gains = facility_location_greedy(dense_similarity(x, max_dense, name), budget, cover)
        return Selection(idx, gains, "facility-location marginal gain (coverage added, in (1+cos)/2 units)")
    k = min(knn, n - 1)
    approximate = bool(approx) if not isinstance(approx, str) else n > KNN_EXACT_MAX
    graph = knn_ivf(x, k, rng) if approximate else knn_graph(x, k)
    idx, gains = facility_location_sparse(graph, budget, cover)
    kind = "approximate (IVF)" if approximate else "exact"
    return Selection(idx, gains, f"facility-location marginal gain (coverage added, in (1+cos)/2 units) counting "
                                 f"each example's {k} nearest neighbours only ({kind} kNN graph)")


# ---------------------------------------------------------------------------- DEITA
@STRATEGIES.register("deita", "DEITA threshold greedy: walk down a score (by=loss), skip examples with cosine "
                     ">= threshold to any accepted one", needs=("embeddings",),
                     labelled="used: the labelled examples count as accepted before the walk")
def deita(features: Features, budget: int, rng: np.random.Generator, by: ScoreName = "loss",
          threshold: Annotated[float, above(-1)] = 0.9) -> Selection:
    """Score-first, diversity-aware selection (Liu et al., "What makes good data for alignment?",
    ICLR 2024): walk the pool in descending `by` (random tie-break) and accept an example only if
    its cosine similarity to every accepted one is below `threshold` (> 1 disables the filter).
    DEITA stops when the walk ends; here, if fewer than `budget` passed, the rest is filled greedily
    by the lowest max-similarity to the accepted set (ties: earlier in the walk).
    The labelled set (`features.labelled`) counts as accepted before the walk starts.
    Score: max cosine similarity to the labelled set and the earlier picks (NaN for the first when
    nothing is labelled); a pick passed the threshold exactly when its score is below it, so fill
    picks are those with score >= threshold."""
    threshold = check_number("deita", "threshold", threshold, -1.0, np.inf,
                             "must be a finite number > -1 (a cosine; above 1 accepts everything)")
    if threshold <= -1.0:
        raise bad_param("deita", "threshold", threshold, "must be a finite number > -1")
    s = field_scores(features, by, "deita")
    x = unit(features.require("embeddings"))                 # (N, D)
    n = len(x)
    order = np.lexsort((rng.random(n), -s))                  # walk order, best first
    lab = features.labelled_rows("embeddings")
    max_sim = np.full(n, -np.inf) if lab is None else max_cosine(x, lab).astype(np.float64)   # (N,) to the accepted
    picks, scores = [], []

    def accept(i: int) -> None:
        picks.append(i)
        scores.append(np.nan if np.isinf(max_sim[i]) else float(max_sim[i]))
        np.maximum(max_sim, x @ x[i], out=max_sim)

    for i in order:
        if len(picks) == budget:
            break
        if max_sim[i] < threshold:
            accept(int(i))
    if len(picks) < budget:                                  # relaxed fill: least similar to the accepted
        pos = np.empty(n, dtype=np.int64)
        pos[order] = np.arange(n)
        left = np.ones(n, dtype=bool)
        left[picks] = False
        for _ in range(budget - len(picks)):
            cand = np.flatnonzero(left)
            best = cand[max_sim[cand] == max_sim[cand].min()]
            i = int(best[np.argmin(pos[best])])
            left[i] = False
            accept(i)
    return Selection(np.array(picks, dtype=np.int64), np.array(scores),
                     f"max cosine similarity to {'' if lab is None else 'the labelled set and '}earlier picks "
                     f"(walking down {by}; < {threshold:g} passed "
                     f"the DEITA filter, >= is a relaxed fill)")


# ---------------------------------------------------------------------------- IDDS
@STRATEGIES.register("idds", "in-domain diversity sampling: typical of the pool, unlike what is already chosen",
                     needs=("embeddings",), labelled="used: the labelled examples join the selected set from the start")
def idds(features: Features, budget: int, rng: np.random.Generator, lam: Annotated[float, between(0, 1)] = 0.67,
         labelled: Sequence[int] | None = None) -> Selection:
    """In-Domain Diversity Sampling (Tsvigun et al., "Active Learning for Abstractive Text
    Summarization", Findings of EMNLP 2022; implemented in ATGen): greedily pick the example
    maximising lam * mean cos(x, unlabelled pool) - (1 - lam) * mean cos(x, selected), where
    "selected" holds the labelled set (`features.labelled`, the examples labelled outside the
    candidates), the `labelled` indices (candidates to treat as labelled) and the earlier picks
    (its term is 0 while empty).
    lam = 0.67 is the paper's value. The pool term is fixed: a dot with the mean embedding of the
    examples not in `labelled` (mean of dot products = dot with the mean vector); the selected term
    is a running sum. `labelled` indices are never picked. Exact ties go to a seeded random order.
    Score: the IDDS value at pick time."""
    lam = check_number("idds", "lam", lam, 0.0, 1.0, "must be a number in [0, 1]")
    x = unit(features.require("embeddings"))                 # (N, D)
    n = len(x)
    lab = np.zeros(n, dtype=bool)
    for i in ([] if labelled is None else labelled):
        if not isinstance(i, (int, np.integer)) or isinstance(i, bool) or not 0 <= i < n:
            raise ConfigError(f"strategy 'idds': labelled contains {i!r}; each index must be an integer "
                              f"in [0, {n - 1}]")
        lab[i] = True
    if budget > n - lab.sum():
        raise ConfigError(f"strategy 'idds': budget {budget} is more than the {n - lab.sum()} pool examples "
                          f"left after labelled= ({int(lab.sum())} indices)")
    typical = x @ x[~lab].mean(0)                            # (N,) mean cosine to the unlabelled pool
    sel_sum = x[lab].sum(0)                                  # (D,) running sum of selected embeddings
    n_sel = int(lab.sum())
    outside = features.labelled_rows("embeddings")           # (L, D) labelled, not candidates
    if outside is not None:
        sel_sum += unit(outside).sum(0)
        n_sel += len(outside)
    tie = rng.permutation(n)
    avail = ~lab
    picks, scores = [], []
    for _ in range(budget):
        spread = x @ sel_sum / n_sel if n_sel else np.zeros(n)   # (N,) mean cosine to the selected
        score = np.where(avail, lam * typical - (1.0 - lam) * spread, -np.inf)
        best = np.flatnonzero(score == score.max())
        i = int(best[np.argmin(tie[best])])
        picks.append(i)
        scores.append(float(score[i]))
        avail[i] = False
        sel_sum += x[i]
        n_sel += 1
    return Selection(np.array(picks, dtype=np.int64), np.array(scores),
                     f"IDDS at pick time: {lam:g} * mean cos to pool - {1 - lam:g} * mean cos to selected")


# ---------------------------------------------------------------------------- hybrids
@STRATEGIES.register("score_then_diversify", "top fraction of the pool by a score (by=loss), then k-center or "
                     "facility location inside it", needs=("embeddings",),
                     labelled="used: its k-center or facility-location stage starts from the labelled set")
def score_then_diversify(features: Features, budget: int, rng: np.random.Generator, by: ScoreName = "loss",
                         descending: bool = True, fraction: Annotated[float, between(0, 1, lo_open=True)] | None = None,
                         then: Literal["kcenter", "facility_location"] = "kcenter") -> Selection:
    """Filter then diversify, the recipe of Superfiltering's diversity variant (Li et al., ACL 2024:
    IFD filter, then facility location) and of DEITA's score-first design: keep the top `fraction`
    of the pool by `by` (highest first unless descending=False; random tie-break), then run
    k-center (first centre: the best-scored) or lazy facility location inside that subset. With a
    labelled set (`features.labelled`) the diversity stage starts from it: k-center from the
    labelled centres (no fixed first centre), facility location with its coverage.
    fraction=None means 0.3, widened to exactly `budget` examples when 0.3 * N < budget (so the
    default works for every budget, as the contract suite requires); an explicit fraction with
    fraction * N < budget is a ConfigError. Score: what drove each pick inside the subset."""
    name = "score_then_diversify"
    if then not in THEN:
        raise bad_param(name, "then", then, f"must be one of {', '.join(THEN)}")
    if not isinstance(descending, (bool, np.bool_)):
        raise bad_param(name, "descending", descending, "must be true or false")
    s = field_scores(features, by, name)
    n = len(s)
    if fraction is None:
        m = max(int(np.floor(0.3 * n)), budget)
    else:
        fraction = check_number(name, "fraction", fraction, 0.0, 1.0, "must be a number in (0, 1]")
        m = int(np.floor(fraction * n + 1e-9))
        if m < budget:
            raise bad_param(name, "fraction", fraction,
                            f"keeps {m} of {n} examples, fewer than budget {budget}; need >= {budget / n:.4g}")
    subset = top_k(s if descending else -s, m, rng)          # (m,) pool indices, best first
    x = features.require("embeddings")[subset]               # (m, D)
    lab = features.labelled_rows("embeddings")
    if then == "kcenter":
        idx, drove = kcenter_greedy(x, budget, first=0 if lab is None else None, centres=lab)
        what = ("distance to already-chosen (k-center; first pick: best score)" if lab is None else
                "distance to the labelled and already-chosen (k-center from the labelled set)")
    else:
        idx, drove = facility_location_greedy(dense_similarity(x, 20000, name), budget,   # ties: better score
                                              labelled_cover(x, lab))
        what = "facility-location marginal gain"
    kept = f"top {m} of {n} by {by} ({'highest' if descending else 'lowest'} first)"
    return Selection(subset[idx], drove, f"{what} within the {kept}")


def allocate(sizes: np.ndarray, budget: int) -> np.ndarray:
    """(K,) picks per cluster, proportional to `sizes` with largest-remainder rounding (ties: the
    larger cluster, then the lower index); if budget allows, every non-empty cluster gets at least
    one, taken from the clusters with the most. Never more than a cluster holds."""
    quota = budget * sizes / sizes.sum()                     # (K,)
    alloc = np.floor(quota).astype(np.int64)
    short = budget - int(alloc.sum())
    alloc[np.lexsort((np.arange(len(sizes)), -sizes, -(quota - alloc)))[:short]] += 1
    if budget >= int((sizes > 0).sum()):
        for j in np.flatnonzero((sizes > 0) & (alloc == 0)):
            alloc[int(np.argmax(alloc))] -= 1
            alloc[j] = 1
    assert alloc.sum() == budget and np.all(alloc <= sizes), (alloc, sizes, budget)
    return alloc


def top_up(sizes: np.ndarray, held: np.ndarray, budget: int) -> np.ndarray:
    """(K,) picks per cluster when the clusters already hold `held` labelled examples beside their
    `sizes` candidates: each cluster's proportional share of the combined sample (`allocate` of
    budget + held.sum() over sizes + held) less what it holds, and the budget split in proportion
    to those shortfalls; a cluster the labelled set already fills gets none. With nothing held it
    is allocate(sizes, budget). Never more than a cluster's candidates (a shortfall is at most that)."""
    target = allocate(sizes + held, budget + int(held.sum()))
    return allocate(np.maximum(target - held, 0), budget)


@STRATEGIES.register("cluster_stratified", "k-means clusters get budget shares by size; best by a score "
                     "(by=loss) within each", needs=("embeddings",),
                     labelled="used: labelled examples count towards their clusters' shares")
def cluster_stratified(features: Features, budget: int, rng: np.random.Generator, by: ScoreName = "loss",
                       descending: bool = True, clusters: PositiveInt | None = None, max_iter: PositiveInt = 100) -> Selection:
    """Cluster-stratified selection: proportional-allocation stratified sampling (strata = k-means
    clusters of the embeddings, as in the cluster-based selection of Chang et al., ACL 2021), with
    a score ranking inside each stratum: k-means the embeddings into `clusters` groups (default
    min(budget, 10)), split the budget across clusters in proportion to their size (`allocate`),
    and take the best by `by` within each (random tie-break). Picks are ordered cluster by cluster,
    largest cluster first. With a labelled set (`features.labelled`) the k-means runs over the
    candidates and the labelled examples together and the new picks top each cluster up towards its
    proportional share of the whole labelled sample (`top_up`): proportional allocation (Cochran,
    "Sampling Techniques", 1977, sec. 5.5) applied to the combined sample, so strata the labelled
    set already fills get nothing more. Score: the `by` value of each pick."""
    name = "cluster_stratified"
    if not isinstance(descending, (bool, np.bool_)):
        raise bad_param(name, "descending", descending, "must be true or false")
    s = field_scores(features, by, name)
    n = len(s)
    k = min(budget, 10) if clusters is None else check_int(name, "clusters", clusters, 1, n)
    max_iter = check_int(name, "max_iter", max_iter, 1)
    both, lab = with_labelled_rows(features)
    _, labels = kmeans(both, k, rng, max_iter)
    labels, held = labels[:n], np.bincount(labels[n:], minlength=k)     # (N,), (k,) labelled per cluster
    sizes = np.bincount(labels, minlength=k)
    alloc = allocate(sizes, budget) if lab is None else top_up(sizes, held, budget)
    picks = []
    for j in sorted(range(k), key=lambda j: (-sizes[j], j)):
        if alloc[j]:
            members = np.flatnonzero(labels == j)
            picks.append(members[top_k(s[members] if descending else -s[members], int(alloc[j]), rng)])
    idx = np.concatenate(picks)
    return Selection(idx, s[idx], f"{by} ({'highest' if descending else 'lowest'} within each of {k} "
                                  f"k-means clusters; budget split by cluster size)", s)


WEIGHTED_DEFAULT = {"loss": 1.0}


@STRATEGIES.register("weighted", "weighted sum of rank-normalised features, e.g. weights={loss: 1, length: -0.5}",
                     needs=(), labelled=PER_EXAMPLE)
def weighted(features: Features, budget: int, rng: np.random.Generator,
             weights: Weights | None = None) -> Selection:
    """Linear scalarisation of several per-example scores, each rank-normalised to [0, 1] (ties
    share their mean rank) so that units do not matter; a negative weight prefers low values.
    weights=None means {"loss": 1.0}, which picks the same set as perplexity band=high. Picks the
    top `budget` of the combined score (random tie-break). Score: the combined score."""
    weights = WEIGHTED_DEFAULT if weights is None else weights
    if not isinstance(weights, Mapping) or not weights:
        raise bad_param("weighted", "weights", weights, f"must be a non-empty mapping over {', '.join(score_fields())}")
    combined = np.zeros(len(features))
    for field, w in weights.items():
        if field not in score_fields():
            raise ConfigError(f"strategy 'weighted': weights has an unknown field {field!r}; valid fields: "
                              f"{', '.join(score_fields())}")
        w = check_number("weighted", f"weights[{field!r}]", w, -np.inf, np.inf, "must be a finite number")
        combined += w * rank01(field_scores(features, field, "weighted"))
    if all(float(w) == 0.0 for w in weights.values()):
        raise bad_param("weighted", "weights", weights, "at least one weight must be non-zero")
    idx = top_k(combined, budget, rng)
    label = " + ".join(f"{float(w):g}*rank({f})" for f, w in weights.items())
    return Selection(idx, combined[idx], f"weighted rank score: {label} (ranks in [0, 1])", combined)

