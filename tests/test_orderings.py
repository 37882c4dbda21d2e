from __future__ import annotations

import numpy as np
import pytest

from conftest import synthetic_features
from llm_al.errors import FeatureUnavailableError, UnknownNameError
from llm_al.types import Features
from llm_al.orderings import ORDERINGS, run_ordering


@pytest.mark.parametrize("name", ORDERINGS.names())
def test_every_ordering_is_a_permutation_and_deterministic(name):
    f = synthetic_features(30)
    idx = np.array([3, 17, 5, 29, 0, 11, 8])
    a = run_ordering(name, idx, f, np.random.default_rng(7))
    b = run_ordering(name, idx, f, np.random.default_rng(7))
    assert sorted(a.tolist()) == sorted(idx.tolist())
    np.testing.assert_array_equal(a, b)


def test_as_selected_keeps_order():
    idx = np.array([4, 1, 3])
    assert run_ordering("as_selected", idx, synthetic_features(5), np.random.default_rng(0)).tolist() == [4, 1, 3]


def test_shuffled_depends_on_seed():
    idx = np.arange(20)
    f = synthetic_features(20)
    orders = {tuple(run_ordering("shuffled", idx, f, np.random.default_rng(s)).tolist()) for s in range(5)}
    assert len(orders) == 5


def test_loss_orderings_are_monotone():
    f = synthetic_features(30)
    idx = np.arange(0, 30, 2)
    easy = run_ordering("easy_to_hard", idx, f, np.random.default_rng(0))
    hard = run_ordering("hard_to_easy", idx, f, np.random.default_rng(0))
    assert np.all(np.diff(f.loss[easy]) >= 0)
    assert np.all(np.diff(f.loss[hard]) <= 0)


def test_ties_are_broken_at_random():
    f = synthetic_features(10)
    f.loss[:] = 1.0
    orders = {tuple(run_ordering("easy_to_hard", np.arange(10), f, np.random.default_rng(s)).tolist()) for s in range(5)}
    assert len(orders) > 1


def test_loss_ordering_without_loss_is_clear_error():
    f = Features(ids=["a", "b"], length=np.ones(2, dtype=np.float32))
    with pytest.raises(FeatureUnavailableError, match="loss"):
        run_ordering("easy_to_hard", np.arange(2), f, np.random.default_rng(0))


def test_unknown_ordering_suggests():
    with pytest.raises(UnknownNameError, match="Did you mean 'easy_to_hard'"):
        run_ordering("easy_to_har", np.arange(2), synthetic_features(2), np.random.default_rng(0))


@pytest.mark.parametrize("name, key, descending", [
    ("short_to_long", "length", False), ("long_to_short", "length", True),
    ("low_ifd_first", "ifd", False), ("high_ifd_first", "ifd", True),
])
def test_feature_orderings_are_monotone(name, key, descending):
    f = synthetic_features(30)
    out = run_ordering(name, np.arange(0, 30, 3), f, np.random.default_rng(0))
    values = getattr(f, key)[out]
    assert np.all(np.diff(values) <= 0) if descending else np.all(np.diff(values) >= 0)


def test_cluster_round_robin_alternates_clusters():
    rng = np.random.default_rng(0)
    centres = np.eye(3, 8) * 10
    f = synthetic_features(9, 8)
    f.embeddings = np.concatenate([c + rng.normal(scale=0.05, size=(3, 8)) for c in centres]).astype(np.float32)
    out = run_ordering("cluster_round_robin", np.arange(9), f, np.random.default_rng(1))   # k = 3
    clusters = (out // 3).tolist()
    assert all(a != b for a, b in zip(clusters, clusters[1:]))     # neighbours always from different clusters
    assert sorted(clusters[:3]) == [0, 1, 2]


@pytest.mark.parametrize("name, familiar", [("familiar_first", True), ("novel_first", False)])
def test_familiarity_orderings_sort_by_overlap_then_vocab(name, familiar):
    f = synthetic_features(30)
    f.scores["ref_overlap"][:] = np.repeat([0.0, 0.2, 0.6], 10)     # ties: ref_vocab orders within them
    out = run_ordering(name, np.arange(0, 30, 2), f, np.random.default_rng(0))
    key = np.stack([f.scores["ref_overlap"][out], f.scores["ref_vocab"][out]], 1)
    sign = -1 if familiar else 1
    steps = np.diff(sign * key, axis=0)
    assert np.all(steps[:, 0] >= 0)                                   # ref_overlap monotone
    assert np.all(steps[steps[:, 0] == 0, 1] >= 0)                    # ref_vocab monotone within ties
    back = run_ordering("novel_first" if familiar else "familiar_first", np.arange(0, 30, 2), f,
                        np.random.default_rng(0))
    assert back.tolist() == out[::-1].tolist()                        # no exact ties left: the reverse


def test_familiarity_ordering_refuses_a_constant_key():
    f = synthetic_features(10)
    f.scores["ref_overlap"][:] = 0.0
    f.scores["ref_vocab"][:] = 0.5
    with pytest.raises(FeatureUnavailableError, match="same for all 10 examples"):
        run_ordering("novel_first", np.arange(10), f, np.random.default_rng(0))


def test_ordering_needs_reach_compute_features():
    from llm_al.strategies.needs import needed_features

    assert {"ref_overlap", "ref_vocab"} <= needed_features([("random", {})], ["familiar_first", "shuffled"])


def test_cluster_blocks_keeps_clusters_together():
    rng = np.random.default_rng(0)
    centres = np.eye(3, 8) * 10
    f = synthetic_features(9, 8)
    f.embeddings = np.concatenate([c + rng.normal(scale=0.05, size=(3, 8)) for c in centres]).astype(np.float32)
    clusters = (run_ordering("cluster_blocks", np.arange(9), f, np.random.default_rng(1)) // 3).tolist()
    assert sum(a != b for a, b in zip(clusters, clusters[1:])) == 2     # three blocks, two boundaries
    orders = {tuple(run_ordering("cluster_blocks", np.arange(9), f, np.random.default_rng(s))) for s in range(4)}
    assert len(orders) > 1                                            # seeded: block and member order vary
