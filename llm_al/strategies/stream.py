"""Stream-based selective sampling: read the pool once, in a seeded random order, and decide for
each example on arrival whether to take it (Cohn, Atlas & Ladner, "Improving generalization with
active learning", Machine Learning 1994; Settles, "Active Learning Literature Survey" 2009, sec. 2.2).

The decision compares the example's score with an adaptive threshold: the (1 - rate) quantile of
the scores seen so far, rate = remaining budget / remaining stream. On an exchangeable stream that
accepts about `rate` of what comes, so the budget is spread over the whole stream instead of being
spent on the first good-looking examples; when the budget left equals the stream left, everything
is taken, so exactly `budget` examples are chosen and never more.

`StreamSelector` is the decision rule alone (`offer(score) -> bool`), for a true stream, e.g. lines
read from disk and scored one by one:

    sel = StreamSelector(budget=100, stream_length=n_lines)
    kept = [line for line, s in zip(lines, scores) if sel.offer(s)]

Tests: `.venv/bin/pytest -q tests/test_stream.py` (a second).
"""

from __future__ import annotations

import bisect
import math

from typing import Annotated

import numpy as np

from llm_al.errors import ConfigError
from llm_al.registry import at_least
from llm_al.strategies import diversity   # module import: diversity and this module import each other via strategies
from llm_al.strategies.base import STRATEGIES, PER_EXAMPLE, check_budget
from llm_al.types import Features, Selection


def default_warmup(stream_length: int) -> int:
    """Examples observed before any is accepted on merit: 10, or 5% of a shorter stream (>= 1)."""
    return max(1, min(10, math.ceil(0.05 * stream_length)))


def sorted_quantile(values: list[float], q: float) -> float:
    """The q quantile of an ascending list, linear interpolation (numpy's default method)."""
    pos = q * (len(values) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


class StreamSelector:
    """Accept/reject decisions for a stream of known length, taking exactly `budget` of it.

    `offer(score)` is called once per arriving example, in stream order. It accepts when
      - the budget left equals the examples left (this one included): forced, so the budget is met;
      - else, after the first `warmup` examples (observed only), when the score is at or above
        the (1 - rate) quantile of all scores seen so far (this one included), where
        rate = budget left / examples left;
    and never once the budget is spent. `higher=False` prefers low scores. The seen scores are kept
    sorted (bisect insertion: fine for streams up to ~10^5; memory O(stream))."""

    def __init__(self, budget: int, stream_length: int, warmup: int | None = None, higher: bool = True):
        check_budget(budget, stream_length)
        self.budget, self.stream_length, self.higher = int(budget), int(stream_length), higher
        self.warmup = default_warmup(stream_length) if warmup is None else diversity.check_int(
            "stream", "warmup", warmup, 0, stream_length)
        self.seen: list[float] = []        # ascending, sign-flipped when higher=False
        self.accepted = 0
        self.thresholds: list[float] = []  # threshold each decision used (NaN: forced, warm-up or full)

    @property
    def offered(self) -> int:
        return len(self.seen)

    def offer(self, score: float) -> bool:
        if self.offered >= self.stream_length:
            raise ConfigError(f"StreamSelector: offered more than the declared stream_length={self.stream_length}")
        score = float(score)
        if math.isnan(score):
            raise ValueError(f"StreamSelector: score of stream item {self.offered} is NaN")
        s = score if self.higher else -score
        bisect.insort(self.seen, s)
        left_budget = self.budget - self.accepted
        left_stream = self.stream_length - self.offered + 1      # this one included
        threshold = math.nan
        if left_budget <= 0:
            take = False
        elif left_budget >= left_stream:
            take = True
        elif self.offered <= self.warmup:
            take = False
        else:
            threshold = sorted_quantile(self.seen, 1.0 - left_budget / left_stream)
            take = s >= threshold
        self.thresholds.append(threshold if self.higher else -threshold)
        self.accepted += take
        return take


@STRATEGIES.register("stream", "stream-based selective sampling: one pass in random order, take an example when "
                     "its score (by=loss) passes an adaptive quantile threshold", needs=(), labelled=PER_EXAMPLE)
def stream(features: Features, budget: int, rng: np.random.Generator, by: diversity.ScoreName = "loss",
           higher: bool = True, warmup: Annotated[int, at_least(0)] | None = None) -> Selection:
    """Stream-based selective sampling (Cohn, Atlas & Ladner 1994; Settles 2009, sec. 2.2) over any
    per-example score `by` (a Features field or probe score; the pipeline computes it). The pool is
    read once in a seeded random order; see StreamSelector for the threshold. `higher=False` takes
    low scores. Scores: the `by` value of each accepted example, in stream order; pool_scores None
    (a decision depends on the order and on the earlier ones)."""
    if not isinstance(higher, (bool, np.bool_)):
        raise ConfigError(f"strategy 'stream': higher={higher!r} is invalid; must be true or false")
    s = diversity.field_scores(features, by, "stream")
    if s.ndim != 1:
        raise ConfigError(f"strategy 'stream': by={by!r} is not a per-example score (shape {s.shape})")
    order = rng.permutation(len(s))                                      # the stream
    sel = StreamSelector(budget, len(s), warmup, higher=bool(higher))
    idx = np.array([i for i in order if sel.offer(s[i])], dtype=np.int64)
    assert len(idx) == budget, f"stream accepted {len(idx)} of budget {budget}"
    return Selection(idx, s[idx], f"{by} of examples accepted from a random-order stream "
                     f"({'high' if higher else 'low'} passes an adaptive quantile threshold)")
