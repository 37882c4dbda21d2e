"""Diversity and hybrid strategies: the strategy contract over their names (they may not yet be
imported by strategies.py, so tests/test_strategies.py may not see them), then one behaviour test
per strategy on a small hand-made case whose right answer is known."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import synthetic_features

import llm_al.strategies.diversity  # noqa: F401  (registers its strategies)
from llm_al.strategies.diversity import allocate, rank01
from llm_al.strategies.kernels.facility import dense_similarity
from llm_al.errors import BudgetError, ConfigError, FeatureUnavailableError
from llm_al.types import Features
from llm_al.strategies.base import STRATEGIES, run_strategy, top_k

NAMES = ["kmeans", "facility_location", "deita", "idds", "score_then_diversify", "cluster_stratified", "weighted"]
CASES = [pytest.param(n, {}, id=n) for n in NAMES] + [
    pytest.param("weighted", {"weights": {"loss": 1.0}}, id="weighted-loss"),
    pytest.param("facility_location", {"max_dense": 5, "approx": False}, id="facility_location-knn"),
    pytest.param("facility_location", {"max_dense": 5, "approx": True, "knn": 4}, id="facility_location-ivf")]


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def clustered(sizes, dim=16, spread=0.05, seed=0):
    """Features whose unit embeddings form one tight cluster per entry of `sizes` (around e_0,
    e_1, ...), and the true cluster label of each row."""
    g = np.random.default_rng(seed)
    x = np.concatenate([np.eye(len(sizes), dim)[c] + g.normal(scale=spread, size=(s, dim))
                        for c, s in enumerate(sizes)])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    f = synthetic_features(int(sum(sizes)), dim, seed=seed)
    f.embeddings = x.astype(np.float32)
    return f, np.repeat(np.arange(len(sizes)), sizes)


# ---------------------------------------------------------------------------- contract
def test_all_registered():
    assert set(NAMES) <= set(STRATEGIES.names())
    for name in NAMES:
        assert STRATEGIES.get(name).fn.__doc__, name        # every strategy documents its source


@pytest.mark.parametrize("name,params", CASES)
@pytest.mark.parametrize("budget", [1, 7, 39])
def test_returns_budget_unique_in_range(name, params, budget):
    sel = run_strategy(name, synthetic_features(40), budget, rng(0), **params)
    assert len(sel.indices) == budget and len(set(sel.indices.tolist())) == budget
    assert sel.indices.min() >= 0 and sel.indices.max() < 40
    assert len(sel.scores) == budget and sel.score_name
    assert not np.isnan(sel.scores[1:]).any()                # only a first pick may lack a driving value
    if sel.pool_scores is not None:
        assert sel.pool_scores.shape == (40,)


@pytest.mark.parametrize("name,params", CASES)
def test_budget_equal_to_pool_returns_whole_pool(name, params):
    sel = run_strategy(name, synthetic_features(25), 25, rng(1), **params)
    assert sorted(sel.indices.tolist()) == list(range(25))


@pytest.mark.parametrize("name,params", CASES)
@pytest.mark.parametrize("budget", [26, 0])
def test_bad_budget_raises_with_numbers(name, params, budget):
    with pytest.raises(BudgetError, match=str(budget)):
        run_strategy(name, synthetic_features(25), budget, rng(0), **params)


@pytest.mark.parametrize("name,params", CASES)
def test_deterministic_under_seed(name, params):
    f = synthetic_features(50)
    a, b = (run_strategy(name, f, 10, rng(123), **params) for _ in range(2))
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.scores, b.scores)


@pytest.mark.parametrize("name,params", CASES)
def test_duplicate_examples_still_give_unique_picks(name, params):
    f = synthetic_features(10)
    f.embeddings[:] = f.embeddings[0]
    f.loss[:] = 1.0
    sel = run_strategy(name, f, 10, rng(0), **params)
    assert sorted(sel.indices.tolist()) == list(range(10))


@pytest.mark.parametrize("name", [n for n in NAMES if STRATEGIES.get(n).meta.get("needs")])
def test_missing_embeddings_is_a_clear_error(name):
    f = Features(ids=["a", "b", "c"], length=np.ones(3, dtype=np.float32))
    with pytest.raises(FeatureUnavailableError, match="needs"):
        run_strategy(name, f, 2, rng(0))


def test_missing_score_field_is_a_clear_error():
    f = synthetic_features(10)
    f.loss = None
    for name in ("deita", "score_then_diversify", "cluster_stratified", "weighted"):
        with pytest.raises(FeatureUnavailableError, match="'loss'"):
            run_strategy(name, f, 2, rng(0))


# ---------------------------------------------------------------------------- kmeans
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kmeans_picks_the_point_nearest_each_cluster_mean(seed):
    f, labels = clustered([30, 25, 20, 15, 10], seed=seed)
    x = f.embeddings.astype(np.float64)
    expected = {}                                            # nearest point to each cluster mean -> distance
    for c in range(5):
        members = np.flatnonzero(labels == c)
        d = np.sqrt(((x[members] - x[members].mean(0)) ** 2).sum(1))
        expected[int(members[np.argmin(d)])] = d.min()
    sel = run_strategy("kmeans", f, 5, rng(seed))
    assert set(sel.indices.tolist()) == set(expected)
    assert sel.indices[0] in np.flatnonzero(labels == 0)     # largest cluster first
    np.testing.assert_allclose(sel.scores, [expected[i] for i in sel.indices.tolist()], rtol=1e-6)
    assert "lower" in sel.score_name


def test_kmeans_fills_empty_clusters_with_far_points():
    f = synthetic_features(10)
    f.embeddings[:8] = f.embeddings[0]                       # 8 copies of one point, 2 of another
    f.embeddings[8:] = f.embeddings[9]
    sel = run_strategy("kmeans", f, 4, rng(0))
    assert len(set(sel.indices.tolist())) == 4
    assert {int(i) >= 8 for i in sel.indices} == {True, False}   # both locations covered


# ---------------------------------------------------------------------------- facility location
def naive_facility_location(x: np.ndarray, budget: int):
    """Plain greedy: every gain recomputed at every step. It uses the strategy's float32
    similarity, so that only laziness differs (seed 1 has two gains 1e-7 apart at step 16)."""
    sim = dense_similarity(x, len(x), "test").astype(np.float64)
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(sim, (1.0 + u @ u.T) / 2.0, atol=1e-6)
    cover, picks, gains = np.zeros(len(x)), [], []
    for _ in range(budget):
        g = np.maximum(sim - cover[None, :], 0.0).sum(1)     # gain of adding each row
        g[picks] = -np.inf
        j = int(np.argmax(g))
        picks.append(j)
        gains.append(g[j])
        cover = np.maximum(cover, sim[j])
    return picks, np.array(gains)


@pytest.mark.parametrize("seed", [0, 1])
def test_facility_location_lazy_equals_naive_greedy(seed):
    f = synthetic_features(80, 6, seed=seed)
    sel = run_strategy("facility_location", f, 20, rng(seed))
    picks, gains = naive_facility_location(f.embeddings, 20)
    assert sel.indices.tolist() == picks
    np.testing.assert_allclose(sel.scores, gains, rtol=1e-4)
    assert np.all(np.diff(sel.scores) <= 1e-6)               # submodular: gains never grow


def test_facility_location_covers_each_cluster_first():
    f, labels = clustered([20, 15, 10])
    sel = run_strategy("facility_location", f, 3, rng(0))
    assert sorted(labels[sel.indices].tolist()) == [0, 1, 2]
    assert labels[sel.indices[0]] == 0                       # the biggest cluster covers most


def dense_objective(x: np.ndarray, picks: np.ndarray) -> float:
    """sum_i max_{j in picks} (1 + cos(i, j)) / 2: the dense facility-location value of a pick set."""
    return float(dense_similarity(x, len(x), "test")[:, picks].max(axis=1).sum(dtype=np.float64))


@pytest.mark.parametrize("approx", [False, True])
def test_facility_location_above_max_dense_with_a_complete_graph_is_the_dense_greedy(approx):
    """knn >= N - 1: every example lists every other, so the sparse objective is the dense one
    (an IVF search of a complete graph still visits every list until it has N - 1)."""
    f = synthetic_features(60, 6, seed=3)
    dense = run_strategy("facility_location", f, 15, rng(0))
    sparse = run_strategy("facility_location", f, 15, rng(0), max_dense=10, knn=100, approx=approx)
    assert sparse.indices.tolist() == dense.indices.tolist()
    np.testing.assert_allclose(sparse.scores, dense.scores, atol=1e-5)
    assert "59 nearest neighbours" in sparse.score_name and "neighbours" not in dense.score_name


@pytest.mark.parametrize("approx", [False, True])
def test_facility_location_above_max_dense_nearly_matches_the_dense_objective(approx):
    """A 10-NN graph on 600 examples in 6 clusters: budget unique picks covering every cluster,
    whose dense objective is within 1% of the dense greedy's. (Not one pick per cluster first, as
    dense does: a pick's sparse gain counts only the <= 10 rows listing it, so a fresh corner of
    a big cluster can outbid a small cluster.)"""
    f, labels = clustered([150, 120, 100, 90, 80, 60], dim=24, spread=0.3, seed=4)
    dense = run_strategy("facility_location", f, 30, rng(0))
    sparse = run_strategy("facility_location", f, 30, rng(0), max_dense=100, knn=10, approx=approx)
    assert len(set(sparse.indices.tolist())) == 30
    assert set(labels[sparse.indices].tolist()) == set(range(6))        # every cluster covered
    ratio = dense_objective(f.embeddings, sparse.indices) / dense_objective(f.embeddings, dense.indices)
    assert 0.99 < ratio < 1.01, ratio                      # 0.9989 exact graph, 0.9986 IVF (measured)
    assert ("approximate" in sparse.score_name) == approx
    again = run_strategy("facility_location", f, 30, rng(0), max_dense=100, knn=10, approx=approx)
    np.testing.assert_array_equal(again.indices, sparse.indices)


# ---------------------------------------------------------------------------- deita
def deita_case():
    """10 orthogonal examples, loss 10, 9.9, 8, 7, ...; example 1 is a near-copy of example 0."""
    f = synthetic_features(10, 16)
    x = np.eye(10, 16)
    x[1] = x[0] + 0.01 * np.eye(16)[15]
    f.embeddings = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    f.loss = np.array([10, 9.9, 8, 7, 6, 5, 4, 3, 2, 1], dtype=np.float32)
    return f


def test_deita_skips_a_near_duplicate_of_an_accepted_example():
    sel = run_strategy("deita", deita_case(), 3, rng(0), threshold=0.5)
    assert sel.indices.tolist() == [0, 2, 3]
    assert np.isnan(sel.scores[0]) and np.all(sel.scores[1:] < 0.5)


def test_deita_fills_with_the_least_similar_and_marks_them():
    sel = run_strategy("deita", deita_case(), 10, rng(0), threshold=0.5)
    assert sel.indices.tolist() == [0, 2, 3, 4, 5, 6, 7, 8, 9, 1]
    assert np.all(sel.scores[1:-1] < 0.5) and sel.scores[-1] >= 0.5   # only the fill failed the threshold


def test_deita_without_threshold_is_top_k_by_score():
    f = synthetic_features(40)
    sel = run_strategy("deita", f, 12, rng(0), threshold=1.01)
    assert sel.indices.tolist() == top_k(f.loss.astype(np.float64), 12, rng(0)).tolist()
    by_entropy = run_strategy("deita", f, 12, rng(0), threshold=1.01, by="entropy")
    assert set(by_entropy.indices.tolist()) == set(np.argsort(-f.entropy)[:12].tolist())


# ---------------------------------------------------------------------------- idds
def test_idds_lam_one_picks_the_most_central_first():
    f = synthetic_features(40)
    x = f.embeddings.astype(np.float64)
    sel = run_strategy("idds", f, 3, rng(0), lam=1.0)
    assert sel.indices[0] == int(np.argmax((x @ x.T).mean(1)))
    np.testing.assert_allclose(sel.scores[0], (x @ x.T).mean(1).max(), rtol=1e-6)


def test_idds_moves_away_from_labelled_examples():
    f, labels = clustered([20, 10])                          # cluster 0 is the bigger, more central one
    labelled = [0, 1, 2, 3, 4]
    central = run_strategy("idds", f, 1, rng(0), lam=1.0, labelled=labelled)
    diverse = run_strategy("idds", f, 20, rng(0), lam=0.1, labelled=labelled)
    assert labels[central.indices[0]] == 0
    assert labels[diverse.indices[0]] == 1
    assert not set(diverse.indices.tolist()) & set(labelled)


def test_idds_budget_beyond_unlabelled_is_an_error():
    with pytest.raises(ConfigError, match="budget 8 .* 7 pool examples"):
        run_strategy("idds", synthetic_features(10), 8, rng(0), labelled=[0, 1, 2])


# ---------------------------------------------------------------------------- hybrids
@pytest.mark.parametrize("then", ["kcenter", "facility_location"])
@pytest.mark.parametrize("descending", [True, False])
def test_score_then_diversify_stays_in_the_top_fraction(then, descending):
    f = synthetic_features(100)
    sel = run_strategy("score_then_diversify", f, 10, rng(0), fraction=0.3, then=then, descending=descending)
    ranked = np.argsort(-f.loss if descending else f.loss)
    assert set(sel.indices.tolist()) <= set(ranked[:30].tolist())
    assert "top 30 of 100" in sel.score_name
    if then == "kcenter":
        assert sel.indices[0] == ranked[0] and np.all(sel.scores[1:] > 0)


def test_score_then_diversify_spreads_inside_the_subset():
    f, labels = clustered([10, 10, 10])
    f.loss = np.ones(30, dtype=np.float32)
    f.loss[[0, 1, 2, 10, 11, 12, 20, 21, 22]] = 5.0          # the top 9 span all three clusters
    sel = run_strategy("score_then_diversify", f, 3, rng(0), fraction=0.3)
    assert sorted(labels[sel.indices].tolist()) == [0, 1, 2]


def test_allocate_is_proportional_with_largest_remainder():
    assert allocate(np.array([60, 30, 10]), 10).tolist() == [6, 3, 1]
    assert allocate(np.array([50, 30, 20]), 4).tolist() == [2, 1, 1]      # 2.0/1.2/0.8: remainder to 0.8
    assert allocate(np.array([97, 2, 1]), 3).tolist() == [1, 1, 1]       # every cluster gets one
    assert allocate(np.array([5, 5, 0]), 3).tolist()[2] == 0              # never from an empty cluster


def test_cluster_stratified_allocates_by_size_and_takes_the_best():
    f, labels = clustered([60, 30, 10])
    for descending, sign in ((True, -1), (False, 1)):
        sel = run_strategy("cluster_stratified", f, 10, rng(0), clusters=3, descending=descending)
        assert np.bincount(labels[sel.indices], minlength=3).tolist() == [6, 3, 1]
        for c, k in zip(range(3), (6, 3, 1)):
            members = np.flatnonzero(labels == c)
            best = members[np.argsort(sign * f.loss[members])[:k]]
            assert set(sel.indices[labels[sel.indices] == c].tolist()) == set(best.tolist())
        np.testing.assert_array_equal(sel.scores, f.loss[sel.indices])


def test_rank01_averages_ties():
    np.testing.assert_allclose(rank01(np.array([3.0, 1.0, 3.0, 2.0])), [5 / 6, 0, 5 / 6, 1 / 3])


def test_weighted_loss_only_is_the_perplexity_high_band():
    f = synthetic_features(40)
    w = run_strategy("weighted", f, 9, rng(0), weights={"loss": 1.0})
    p = run_strategy("perplexity", f, 9, rng(0), band="high")
    assert set(w.indices.tolist()) == set(p.indices.tolist())


def test_weighted_negative_length_prefers_short_examples():
    f = synthetic_features(5)
    f.loss = np.array([5, 4, 3, 2, 1], dtype=np.float32)
    f.length = np.array([50, 1, 2, 3, 4], dtype=np.float32)
    assert run_strategy("weighted", f, 1, rng(0), weights={"loss": 1.0}).indices.tolist() == [0]
    mixed = run_strategy("weighted", f, 2, rng(0), weights={"loss": 1.0, "length": -0.5})
    assert mixed.indices.tolist() == [1, 0]                  # 0.75 vs 0.5: the long one drops to second
    shortest = run_strategy("weighted", f, 3, rng(0), weights={"length": -1.0})
    assert set(shortest.indices.tolist()) == {1, 2, 3}


# ---------------------------------------------------------------------------- bad params
BAD = [
    ("kmeans", {"max_iter": 0}, "max_iter=0"),
    ("facility_location", {"max_dense": -5}, "max_dense=-5"),
    ("facility_location", {"knn": 0}, "knn=0"),
    ("facility_location", {"approx": "yes"}, "approx='yes'.*true or false or auto"),
    ("deita", {"threshold": -2.0}, "threshold=-2.0"),
    ("deita", {"by": "perplexity"}, "by='perplexity'.*loss, entropy, length, n_tokens"),
    ("idds", {"lam": 1.5}, r"lam=1.5.*\[0, 1\]"),
    ("idds", {"labelled": [3, 99]}, "labelled contains 99.*39"),
    ("score_then_diversify", {"then": "kmeans"}, "then='kmeans'.*kcenter, facility_location"),
    ("score_then_diversify", {"fraction": 0.05}, "fraction=0.05.*keeps 2 of 40"),
    ("score_then_diversify", {"fraction": 1.5}, "fraction=1.5"),
    ("score_then_diversify", {"descending": "yes"}, "descending='yes'"),
    ("cluster_stratified", {"clusters": 0}, "clusters=0"),
    ("cluster_stratified", {"clusters": 41}, r"clusters=41.*\[1, 40\]"),
    ("weighted", {"weights": {"loss": 1.0, "perplexity": 1.0}}, "'perplexity'.*loss, entropy, length, n_tokens"),
    ("weighted", {"weights": {"loss": float("nan")}}, "nan"),
    ("weighted", {"weights": {"loss": 0.0}}, "not all 0"),
    ("weighted", {"weights": {}}, "weights={}"),
    ("kmeans", {"k": 3}, "kmeans.*no parameter 'k'"),
]


@pytest.mark.parametrize("name,params,message", BAD, ids=[f"{n}-{next(iter(p))}" for n, p, _ in BAD])
def test_bad_params_are_config_errors_with_the_value(name, params, message):
    with pytest.raises(ConfigError, match=message):
        run_strategy(name, synthetic_features(40), 5, rng(0), **params)


def test_unit_rows_are_the_plain_formula_bit_for_bit_and_leave_the_input_alone():
    """unit() normalises in place in its own copy, block by block (memory); the values must be the
    one-shot x / norm(x) exactly, across block edges, with zero rows kept zero."""
    from llm_al.strategies.kernels.rows import unit

    for n in (1, 3, (1 << 16) + 5):
        x = np.random.default_rng(n).standard_normal((n, 7))
        x[0] = 0.0
        before = x.copy()
        want = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        got = unit(x)
        assert got.dtype == np.float64 and np.array_equal(got, want)
        assert np.array_equal(x, before) and got is not x
        assert np.array_equal(unit(x.astype(np.float32)), unit(x.astype(np.float32).astype(np.float64)))
