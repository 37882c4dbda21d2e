"""The contract every strategy must pass (parametrised over the registry, so a new strategy is
tested the moment it registers), plus a behaviour test per strategy on a case with a known answer."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import clustered_features, synthetic_features
from llm_al.errors import BudgetError, ConfigError, FeatureUnavailableError, UnknownNameError
from llm_al.registries import LABELLED_META, labelled_use
from llm_al.types import Features
from llm_al.strategies.base import STRATEGIES, run_strategy, top_k
from llm_al.strategies.kernels.kcenter import kcenter_fast, kcenter_greedy, kcenter_torch

NAMES = STRATEGIES.names()
USES_LABELLED = [e.name for e in STRATEGIES if labelled_use(e.meta) == "used"]
IGNORES_LABELLED = [e.name for e in STRATEGIES if labelled_use(e.meta) == "ignored"]
LABELLED_PARAMS = {"cluster_stratified": {"clusters": 6}}   # strata fine enough to tell the 6 clusters apart


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("budget", [1, 7, 39])
def test_returns_budget_unique_in_range(name, budget):
    f = synthetic_features(40)
    sel = run_strategy(name, f, budget, np.random.default_rng(0))
    assert len(sel.indices) == budget
    assert len(set(sel.indices.tolist())) == budget
    assert sel.indices.min() >= 0 and sel.indices.max() < 40
    assert len(sel.scores) == budget


@pytest.mark.parametrize("name", NAMES)
def test_budget_equal_to_pool_returns_whole_pool(name):
    f = synthetic_features(25)
    sel = run_strategy(name, f, 25, np.random.default_rng(1))
    assert sorted(sel.indices.tolist()) == list(range(25))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("budget", [26, 0, -3])
def test_bad_budget_raises_with_numbers(name, budget):
    with pytest.raises(BudgetError) as err:
        run_strategy(name, synthetic_features(25), budget, np.random.default_rng(0))
    assert str(budget) in str(err.value)
    if budget > 0:
        assert "25" in str(err.value)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_under_seed(name):
    f = synthetic_features(50)
    a = run_strategy(name, f, 10, np.random.default_rng(123))
    b = run_strategy(name, f, 10, np.random.default_rng(123))
    np.testing.assert_array_equal(a.indices, b.indices)


@pytest.mark.parametrize("name", NAMES)
def test_duplicate_examples_still_give_unique_picks(name):
    f = synthetic_features(10)
    f.embeddings[:] = f.embeddings[0]          # every example identical
    f.loss[:] = 1.0
    sel = run_strategy(name, f, 10, np.random.default_rng(0))
    assert sorted(sel.indices.tolist()) == list(range(10))


@pytest.mark.parametrize("name", [e.name for e in STRATEGIES if e.meta.get("needs")])
def test_missing_feature_is_a_clear_error(name):
    f = Features(ids=["a", "b", "c"], length=np.ones(3, dtype=np.float32))
    with pytest.raises(FeatureUnavailableError, match="needs"):
        run_strategy(name, f, 2, np.random.default_rng(0))


# ---------------------------------------------------------------------------- the labelled set
def test_every_strategy_says_whether_it_reads_the_labelled_set():
    """A registration must choose (registries.check_strategy_meta): no default could be right for
    a strategy nobody has looked at."""
    for entry in STRATEGIES:
        assert LABELLED_META.fullmatch(str(entry.meta.get("labelled"))), entry.name
    assert USES_LABELLED and IGNORES_LABELLED
    with pytest.raises(ValueError, match="labelled='used: <how>' or labelled='ignored: <why>'"):
        STRATEGIES.register("throwaway_undeclared", "no labelled= given", needs=())(lambda f, b, r: None)
    with pytest.raises(ValueError, match="got labelled='yes'"):
        STRATEGIES.register("throwaway_undeclared", "a bare word", needs=(), labelled="yes")(lambda f, b, r: None)
    assert "throwaway_undeclared" not in STRATEGIES


@pytest.mark.parametrize("name", USES_LABELLED)
def test_labelled_aware_strategies_pick_from_the_clusters_the_labelled_set_leaves_uncovered(name):
    """Six well-separated clusters (embeddings and prompt n-grams alike), three of them covered by
    24 labelled examples each and holding twice the candidates: every one of 3 picks must come from
    the three uncovered clusters. With the labelled set detached (what every strategy saw before
    the loop passed it) each of these strategies lands picks in covered clusters on these seeds."""
    for seed in range(4):
        f, cluster, uncovered = clustered_features(seed)
        sel = run_strategy(name, f, 3, np.random.default_rng(seed), **LABELLED_PARAMS.get(name, {}))
        got = cluster[sel.indices]
        assert set(got.tolist()) <= set(uncovered), (seed, got.tolist(), uncovered)


@pytest.mark.parametrize("name", IGNORES_LABELLED)
def test_a_strategy_registered_as_ignoring_the_labelled_set_does_ignore_it(name):
    f, _, _ = clustered_features(0)
    a = run_strategy(name, f, 5, np.random.default_rng(0))
    b = run_strategy(name, f.with_labelled(None), 5, np.random.default_rng(0))
    np.testing.assert_array_equal(a.indices, b.indices)


@pytest.mark.parametrize("name", USES_LABELLED)
def test_an_empty_labelled_set_changes_nothing(name):
    f = synthetic_features(30)
    empty = f.take([]).with_labelled(None)
    a = run_strategy(name, f, 6, np.random.default_rng(2))
    b = run_strategy(name, f.with_labelled(empty), 6, np.random.default_rng(2))
    np.testing.assert_array_equal(a.indices, b.indices)


@pytest.mark.parametrize("name", USES_LABELLED)
def test_a_labelled_set_without_the_needed_feature_is_a_clear_error(name):
    f, _, _ = clustered_features(0)
    lab = f.labelled
    lab.embeddings, lab.scores = None, {}
    with pytest.raises(FeatureUnavailableError, match="labelled examples"):
        run_strategy(name, f, 3, np.random.default_rng(0))


def test_kcenter_paths_start_alike_from_labelled_centres():
    """The plain loop, the lazy fast path (small blocks, so its bounds and cold rows are used)
    and the torch path make the brute-force picks from the labelled centres."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1500, 12)).astype(np.float32)
    centres = rng.normal(size=(40, 12)).astype(np.float32)
    d = ((x[:, None] - centres[None]) ** 2).sum(-1).min(1)
    want = []
    for _ in range(25):
        i = int(np.argmax(np.where(np.isin(np.arange(len(x)), want), -1.0, d)))
        want.append(i)
        d = np.minimum(d, ((x - x[i]) ** 2).sum(-1))
    plain = kcenter_greedy(x, 25, None, centres=centres)
    assert plain[0].tolist() == want and not np.isnan(plain[1]).any()
    for idx, dist in (kcenter_fast(x, 25, None, block=256, hot=64, candidates=16, chunk=8, centres=centres),
                      kcenter_torch(x, 25, None, centres=centres)):
        assert idx.tolist() == want
        np.testing.assert_allclose(dist, plain[1], rtol=1e-5)
    with pytest.raises(ConfigError, match="not both"):
        kcenter_greedy(x, 3, 0, centres=centres)


def test_unknown_strategy_suggests():
    with pytest.raises(UnknownNameError, match="Did you mean .kcenter.*Valid strategies: .*kcenter.*perplexity.*random"):
        run_strategy("kcentre", synthetic_features(5), 2, np.random.default_rng(0))


def test_unknown_parameter_is_config_error():
    with pytest.raises(ConfigError, match="perplexity"):
        run_strategy("perplexity", synthetic_features(5), 2, np.random.default_rng(0), bnd="low")


# ---------------------------------------------------------------------------- behaviour
def test_top_k_breaks_ties_at_random_but_keeps_order():
    scores = np.array([1.0, 5.0, 5.0, 5.0, 0.0])
    picks = {tuple(top_k(scores, 2, np.random.default_rng(s)).tolist()) for s in range(30)}
    assert all(set(p) <= {1, 2, 3} for p in picks)
    assert len(picks) > 1                                      # ties not always resolved the same way
    assert top_k(scores, 4, np.random.default_rng(0))[-1] == 0


def test_random_is_roughly_uniform():
    f = synthetic_features(20)
    counts = np.zeros(20)
    for s in range(400):
        counts[run_strategy("random", f, 5, np.random.default_rng(s)).indices] += 1
    assert counts.min() > 50 and counts.max() < 150             # expected 100 each


def test_perplexity_bands_pick_the_right_ends():
    f = synthetic_features(9)
    f.loss = np.arange(9, dtype=np.float32)[::-1].copy()        # loss of index i is 8 - i
    high = run_strategy("perplexity", f, 3, np.random.default_rng(0), band="high")
    low = run_strategy("perplexity", f, 3, np.random.default_rng(0), band="low")
    mid = run_strategy("perplexity", f, 3, np.random.default_rng(0), band="middle")
    assert sorted(high.indices.tolist()) == [0, 1, 2]
    assert sorted(low.indices.tolist()) == [6, 7, 8]
    assert sorted(mid.indices.tolist()) == [3, 4, 5]
    np.testing.assert_allclose(sorted(low.scores), [0, 1, 2])   # scores are the losses themselves
    with pytest.raises(ConfigError, match="low, middle, high"):
        run_strategy("perplexity", f, 3, np.random.default_rng(0), band="top")


def test_kcenter_covers_every_cluster():
    rng = np.random.default_rng(0)
    centres = np.eye(5, 16) * 10
    x = np.concatenate([c + rng.normal(scale=0.1, size=(30, 16)) for c in centres]).astype(np.float32)
    f = synthetic_features(150, 16)
    f.embeddings = x
    sel = run_strategy("kcenter", f, 5, np.random.default_rng(3))
    assert sorted(set((sel.indices // 30).tolist())) == [0, 1, 2, 3, 4]
    assert np.isnan(sel.scores[0]) and np.all(sel.scores[1:] > 5)   # each later pick far from the chosen


def test_kcenter_greedy_matches_a_brute_force_loop():
    x = np.random.default_rng(1).normal(size=(60, 4)).astype(np.float32)
    idx, _ = kcenter_greedy(x, 8, first=0)
    chosen = [0]
    for _ in range(7):
        d = np.min(((x[:, None, :] - x[chosen][None]) ** 2).sum(-1), axis=1)
        d[chosen] = -1
        chosen.append(int(np.argmax(d)))
    assert idx.tolist() == chosen


@pytest.mark.parametrize("n, budget", [(1000, 10), (1000, 499), (1000, 600), (50, 50)])
def test_top_k_partition_path_equals_the_full_sort(n, budget):
    """top_k sorts only the candidates that can make the cut; the picks (and their order) must be
    exactly those of the full lexsort, ties included, for the same generator state."""
    scores = np.random.default_rng(1).integers(0, 20, n).astype(np.float64)      # many ties
    got = top_k(scores, budget, np.random.default_rng(7))
    tie = np.random.default_rng(7).random(n)
    want = np.lexsort((tie, -scores))[:budget]
    np.testing.assert_array_equal(got, want)
