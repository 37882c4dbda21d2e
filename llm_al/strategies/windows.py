"""Difficulty windows: a contiguous stretch of the pool's ranking by a score (by=loss), the design
of the research protocol's sixth experiment (docs: score the pool with a warm-started model,
train on contiguous windows of the difficulty ranking, report the length confound).

    llm-al run recipes/difficulty_windows.yaml          # the windows against random

`window:start=0` takes the `budget` easiest examples (lowest `by`), `start=1` the hardest, and
`start=0.5` the middle stretch; unlike `perplexity:band=...` every start in [0, 1] is allowed, so
a recipe can sweep the whole ranking. Windows of a loss ranking are confounded with length (short
responses have noisier, often higher, per-token loss), so `window_profile` reports each
window's mean score and mean length beside each other, and the report correlates both with the
metric.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np

from llm_al.registry import between
from llm_al.strategies import diversity  # attributes read at call time: diversity imports strategies, which imports us
from llm_al.strategies.base import STRATEGIES, PER_EXAMPLE, check_budget
from llm_al.types import Features, Selection


def window_indices(scores: np.ndarray, budget: int, start: float, rng: np.random.Generator) -> np.ndarray:
    """Positions of the `budget` examples whose rank (ascending score, ties in a seeded random
    order) lies in the window that begins at rank round(start * (N - budget)); in rank order."""
    check_budget(budget, len(scores))
    order = np.lexsort((rng.random(len(scores)), scores))          # ascending, random tie-break
    first = int(round(start * (len(scores) - budget)))
    return order[first: first + budget]


@STRATEGIES.register("window", "a contiguous window of the ranking by a score (by=loss): start=0 the lowest "
                     "(easiest) budget, 1 the highest, 0.5 the middle", needs=(), labelled=PER_EXAMPLE)
def window(features: Features, budget: int, rng: np.random.Generator, by: diversity.ScoreName = "loss",
           start: Annotated[float, between(0, 1)] = 0.5) -> Selection:
    """Contiguous window of the ascending ranking by `by` (any per-example score: loss under the
    base model or, with model.scoring_adapter, a warm-started one; ifd; length; a probe score).
    Difficulty windows are how curriculum and data-pruning studies probe which part of the
    difficulty range helps (Swayamdipta et al., EMNLP 2020 "dataset cartography"; Marion et al.
    2023, perplexity bands). Score: the `by` value of each pick."""
    start = diversity.check_number("window", "start", start, 0.0, 1.0, "must be a number in [0, 1] (0: lowest scores)")
    s = diversity.field_scores(features, by, "window")
    idx = window_indices(s, budget, start, rng)
    return Selection(idx, s[idx], f"{by} (window from rank quantile {start:g})", s)


def window_profile(features: Features, indices: np.ndarray, by: str = "loss") -> dict[str, float]:
    """Mean `by` and mean response length (words) of a selection: the two things a difficulty
    window moves together."""
    s = diversity.field_scores(features, by, "window")
    return {f"mean_{by}": float(np.mean(s[indices])), "mean_length": float(np.nanmean(features.length[indices]))}
