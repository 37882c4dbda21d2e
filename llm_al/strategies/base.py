"""Acquisition strategies: pure functions from pool features to a budgeted selection.

Every strategy has the signature `fn(features, budget, rng, **params) -> Selection`, registers
itself with `@STRATEGIES.register(name, description, needs=(...), labelled=...)` where it is
defined, and must pass the contract suite in tests/test_strategies.py (exactly `budget` unique
in-range indices, the whole pool when budget equals its size, BudgetError above it, deterministic
under a seed; a strategy registered with labelled="used: ..." picks from the clusters the
labelled set leaves uncovered). `features` are the candidates; `features.labelled`, when set,
the examples already labelled (types.Features), which indices never point into.
Score-based strategies compute one score per pool example and pick with `top_k` (random
tie-breaking); set-based ones (k-center) select greedily and report what drove each pick.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import numpy as np

from llm_al.errors import BudgetError, ConfigError
from llm_al.registries import STRATEGIES, labelled_use
from llm_al.strategies.kernels.kcenter import kcenter_select
from llm_al.registry import matches
from llm_al.types import Features, Selection


def check_budget(budget: int, pool_size: int) -> None:
    if not isinstance(budget, (int, np.integer)) or budget <= 0 or budget > pool_size:
        raise BudgetError(int(budget), pool_size)


def top_k(scores: np.ndarray, budget: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of the `budget` highest scores, best first, ties broken at random."""
    check_budget(budget, len(scores))
    if np.isnan(scores).any():
        raise ValueError(f"{int(np.isnan(scores).sum())} scores are NaN; a strategy must not select on them")
    tie = rng.random(len(scores))
    if budget < len(scores) // 2:                            # sort only what can make the cut: same result
        cut = np.partition(scores, len(scores) - budget)[len(scores) - budget]
        cand = np.flatnonzero(scores >= cut)
        return cand[np.lexsort((tie[cand], -scores[cand]))][:budget]
    order = np.lexsort((tie, -scores))                       # last key is primary
    return order[:budget]


def from_scores(scores: np.ndarray, budget: int, rng: np.random.Generator, name: str) -> Selection:
    idx = top_k(scores, budget, rng)
    return Selection(idx, scores[idx], name, scores)


PER_EXAMPLE = "ignored: a per-example score, the same whatever is already labelled"
"""The `labelled=` registration of a strategy that ranks examples by their own scores."""


def run_strategy(name: str, features: Features, budget: int, rng: np.random.Generator,
                 **params: Any) -> Selection:
    """Look up, check and run a strategy; the one entry point the rest of llm_al uses. A strategy
    that uses the labelled set needs its registered features for the labelled rows too."""
    entry = STRATEGIES.check(name, params)              # parameter values, before any feature is read
    check_budget(budget, len(features))
    for need in entry.meta.get("needs", ()):
        features.require(need)
        if labelled_use(entry.meta) == "used":
            features.labelled_rows(need)
    try:
        sel = entry.fn(features, budget, rng, **params)
    except TypeError as err:
        if "unexpected keyword" in str(err):
            raise ConfigError(f"strategy {name!r}: {err}") from None
        raise
    assert len(np.unique(sel.indices)) == budget, f"{name} returned {len(np.unique(sel.indices))} unique of {budget}"
    return sel


# ---------------------------------------------------------------------------- random
@STRATEGIES.register("random", "uniformly random subset (the baseline every strategy is compared with)", needs=(),
                     labelled="ignored: the baseline draws uniformly from the candidates")
def random_subset(features: Features, budget: int, rng: np.random.Generator) -> Selection:
    return from_scores(rng.random(len(features)), budget, rng, "uniform draw")


# ---------------------------------------------------------------------------- perplexity
BANDS = ("low", "middle", "high")


@STRATEGIES.register(
    "perplexity",
    "band of base-model response loss: band=high (most uncertain, default), middle, or low (most familiar)",
    needs=("loss",), labelled=PER_EXAMPLE,
)
def perplexity_band(features: Features, budget: int, rng: np.random.Generator,
                    band: Literal["low", "middle", "high"] = "high") -> Selection:
    """Uncertainty sampling by response perplexity under the untrained model (Perlitz et al. 2023
    use sequence likelihood; "middle" follows the perplexity-band pruning of Marion et al. 2023).
    Scores are the mean response NLL; `band` decides which end of the ranking is taken."""
    loss = features.require("loss").astype(np.float64)
    if band == "high":
        return from_scores(loss, budget, rng, "response loss (nats/token)")
    if band == "low":
        sel = from_scores(-loss, budget, rng, "response loss (nats/token)")
        sel.scores, sel.pool_scores = -sel.scores, loss
        return sel
    if band == "middle":
        ranks = np.argsort(np.argsort(loss, kind="stable"), kind="stable").astype(np.float64)
        idx = top_k(-np.abs(ranks - (len(loss) - 1) / 2), budget, rng)
        return Selection(idx, loss[idx], "response loss (nats/token)", loss)
    raise ConfigError(f"perplexity band must be one of {', '.join(BANDS)}, got {band!r}")


# ---------------------------------------------------------------------------- k-center


@STRATEGIES.register("kcenter", "greedy k-center (core-set) over sentence embeddings: covers the pool evenly",
                     needs=("embeddings",), labelled="used: the labelled embeddings are the starting centres")
def kcenter(features: Features, budget: int, rng: np.random.Generator,
            device: Annotated[str, matches(r"auto|cpu|cuda(:\d+)?", "must be auto, cpu, cuda or cuda:N")] = "auto",
            ) -> Selection:
    """Core-set selection (Sener & Savarese, ICLR 2018): greedy k-center grown from the labelled set
    (`features.labelled`: every candidate starts at its distance to the nearest labelled example,
    so the first pick is the candidate farthest from what is labelled), or, with nothing labelled,
    from a seeded random first centre.
    device="cpu": numpy, the plain greedy loop up to 20,000 examples and kernels.kcenter.kcenter_fast above
    (the same picks, fewer passes over a large pool; tests/test_scale.py); "cuda" (or "cuda:N"):
    kernels.kcenter.kcenter_torch on that GPU (the same loop in float32 torch: kcenter_greedy's picks on
    data without float32 near-ties; on an H200 the same 500 picks at 1M x 384 in 0.68 s,
    eval/results/gpu/bench_gpu-cuda.txt); "auto": cuda
    when torch sees a GPU and the pool is above 20,000, else cpu."""
    if not isinstance(device, str) or not (device in ("auto", "cpu") or re.fullmatch(r"cuda(:\d+)?", device)):
        raise ConfigError(f"strategy 'kcenter': device={device!r} is invalid; must be one of auto, cpu, cuda "
                          f"(or cuda:N)")

    x = features.require("embeddings")
    centres = features.labelled_rows("embeddings")
    first = int(rng.integers(len(x))) if centres is None else None
    idx, dist = kcenter_select(x, budget, first, device, centres=centres)
    return Selection(idx, dist, "distance to already-chosen examples" if centres is None else
                     "distance to the labelled and already-chosen examples")

