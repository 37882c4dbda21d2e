"""Stream-based selective sampling: the `StreamSelector` rule on generators and the `stream`
strategy on pools whose scores are a known ramp."""

from __future__ import annotations

import numpy as np
import pytest

from llm_al.errors import BudgetError, ConfigError, FeatureUnavailableError
from llm_al.types import Features
from llm_al.strategies.base import run_strategy
from llm_al.strategies.stream import StreamSelector, default_warmup, sorted_quantile


def ramp_features(n: int) -> Features:
    """loss of pool example i is i: the right picks are the high indices."""
    return Features(ids=[f"x{i}" for i in range(n)], length=np.ones(n, dtype=np.float32),
                    loss=np.arange(n, dtype=np.float32))


def stream_positions(n: int, seed: int, indices: np.ndarray) -> np.ndarray:
    """Where in the stream each pick arrived (the strategy's stream is rng.permutation(n))."""
    pos = np.empty(n, dtype=np.int64)
    pos[np.random.default_rng(seed).permutation(n)] = np.arange(n)
    return pos[indices]


def scores_from_disk(n: int, seed: int):
    """A generator standing in for a true stream: ordinary scores, then a last third that is higher."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        yield float(rng.uniform(0, 1) + (1.0 if i >= 2 * n // 3 else 0.0))


# ---------------------------------------------------------------------------- StreamSelector
def test_selector_on_a_generator_takes_exactly_budget_and_keeps_some_for_the_end():
    n, budget = 600, 40
    sel = StreamSelector(budget, n)
    taken = [i for i, s in enumerate(scores_from_disk(n, 0)) if sel.offer(s)]
    assert len(taken) == budget and sel.accepted == budget
    scores = list(scores_from_disk(n, 0))
    early = [i for i in taken if i < 2 * n // 3]
    late = [i for i in taken if i >= 2 * n // 3]
    # about budget/n of each part of the stream is taken: the budget is not spent on the first two thirds
    assert 0.5 * budget * 2 / 3 <= len(early) <= 1.5 * budget * 2 / 3 and len(late) >= budget // 4
    assert np.mean([scores[i] for i in early]) > 0.8          # the early picks are the best early items
    assert all(scores[i] >= 1.0 for i in late)                 # the late picks are all from the high part
    with pytest.raises(ConfigError, match="stream_length=600"):
        sel.offer(0.5)


def test_selector_accepts_above_the_running_quantile():
    sel = StreamSelector(2, 10, warmup=3)
    decisions = [sel.offer(s) for s in [5.0, 1.0, 3.0, 0.0, 9.0, 0.5, 0.2, 0.1, 0.3, 0.4]]
    # warm-up (3) observes only; at item 4 (0.0) rate = 2/7: threshold = 5/7-quantile of {0,1,3,5}
    assert decisions[:4] == [False, False, False, False]
    assert sel.thresholds[3] == pytest.approx(sorted_quantile([0.0, 1.0, 3.0, 5.0], 1 - 2 / 7))
    assert decisions[4] is True                                  # 9.0: the best so far
    assert sum(decisions) == 2                                   # the last one is forced if need be


def test_selector_forces_the_tail_and_never_exceeds_the_budget():
    sel = StreamSelector(3, 5, warmup=0)
    assert [sel.offer(s) for s in [0.0, 0.0, 0.0, 0.0, 0.0]].count(True) == 3
    sel = StreamSelector(3, 3)
    assert all(sel.offer(s) for s in [1.0, 2.0, 3.0])           # budget == stream: everything
    sel = StreamSelector(2, 6, warmup=0)
    out = [sel.offer(s) for s in [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]]
    assert out == [True, True, False, False, False, False]     # a rising stream: each is the best so far


def test_selector_low_scores_and_bad_input():
    sel = StreamSelector(1, 20, warmup=5, higher=False)
    out = [sel.offer(s) for s in [5, 6, 7, 8, 9, -1] + [10] * 14]
    assert out.index(True) == 5                                  # the lowest score, right after warm-up
    with pytest.raises(BudgetError):
        StreamSelector(21, 20)
    with pytest.raises(ConfigError, match="warmup"):
        StreamSelector(1, 20, warmup=-1)
    with pytest.raises(ValueError, match="NaN"):
        StreamSelector(1, 5).offer(float("nan"))
    assert default_warmup(40) == 2 and default_warmup(10_000) == 10 and default_warmup(3) == 1


# ---------------------------------------------------------------------------- the strategy
@pytest.mark.parametrize("seed", range(5))
def test_stream_on_a_ramp_picks_from_the_top_across_the_whole_stream(seed):
    n, budget = 300, 30
    sel = run_strategy("stream", ramp_features(n), budget, np.random.default_rng(seed))
    assert len(sel.indices) == budget and sel.pool_scores is None
    np.testing.assert_array_equal(sel.scores, sel.indices.astype(np.float64))   # the loss of each pick
    assert np.mean(sel.indices >= 0.75 * n) >= 0.9              # mostly the top quarter
    thirds = np.histogram(stream_positions(n, seed, sel.indices), bins=3, range=(0, n))[0]
    assert thirds.min() >= budget // 6                           # spent across the stream, last third included
    assert np.all(np.diff(stream_positions(n, seed, sel.indices)) > 0)   # reported in stream order


def test_stream_low_end_and_other_fields():
    n = 200
    f = ramp_features(n)
    low = run_strategy("stream", f, 20, np.random.default_rng(0), higher=False)
    assert np.mean(low.indices < 0.25 * n) >= 0.9
    f.entropy = (n - np.arange(n)).astype(np.float32)
    by_entropy = run_strategy("stream", f, 20, np.random.default_rng(0), by="entropy")
    assert np.mean(by_entropy.indices < 0.25 * n) >= 0.9        # high entropy = low index here


def test_stream_is_deterministic_under_the_seed_and_varies_with_it():
    f = ramp_features(120)
    a = run_strategy("stream", f, 12, np.random.default_rng(7))
    b = run_strategy("stream", f, 12, np.random.default_rng(7))
    c = run_strategy("stream", f, 12, np.random.default_rng(8))
    np.testing.assert_array_equal(a.indices, b.indices)
    assert not np.array_equal(np.sort(a.indices), np.sort(c.indices))


def test_stream_errors_name_what_is_wrong():
    f = Features(ids=["a", "b", "c"], length=np.ones(3, dtype=np.float32))
    with pytest.raises(FeatureUnavailableError, match="loss"):
        run_strategy("stream", f, 2, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="by='nope'.*loss"):
        run_strategy("stream", ramp_features(10), 2, np.random.default_rng(0), by="nope")
    with pytest.raises(ConfigError, match="higher"):
        run_strategy("stream", ramp_features(10), 2, np.random.default_rng(0), higher="yes")


def test_pipeline_computes_the_feature_named_by():
    from llm_al.strategies.needs import strategy_needs

    assert strategy_needs("stream", {}) == {"loss"}
    assert strategy_needs("stream", {"by": "entropy"}) == {"entropy"}
    assert strategy_needs("delfy", {}) == {"ngram_counts"}
