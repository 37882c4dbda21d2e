"""Uncertainty and informativeness strategies from one scoring pass of the untrained model (and,
for IFD, a second pass without the prompt). Each scores every pool example; `top_k` picks."""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np

from llm_al.errors import ConfigError
from llm_al.registry import above, one_of
from llm_al.strategies.base import STRATEGIES, PER_EXAMPLE, from_scores, top_k
from llm_al.types import MIN_K_FRACTIONS, Features, Selection


@STRATEGIES.register("entropy", "highest mean predictive entropy over the response tokens (teacher-forced)",
                     needs=("entropy",), labelled=PER_EXAMPLE)
def mean_entropy(features: Features, budget: int, rng: np.random.Generator) -> Selection:
    """Mean token entropy of the model's next-token distribution along the reference response, a
    standard uncertainty score for generation (Perlitz et al., EMNLP 2023; Flores et al. 2026)."""
    return from_scores(features.require("entropy").astype(np.float64), budget, rng, "mean token entropy (nats)")


MinKFraction = Annotated[float, one_of(MIN_K_FRACTIONS)]     # the fractions the scoring pass computes
Prefer = Literal["unfamiliar", "familiar"]


@STRATEGIES.register(
    "min_k",
    "Min-K% Prob: mean of the lowest k% response-token log-probs; prefer=unfamiliar (default) or familiar",
    needs=("min_k",), labelled=PER_EXAMPLE,
)
def min_k_prob(features: Features, budget: int, rng: np.random.Generator, k: MinKFraction = 0.2,
               prefer: Prefer = "unfamiliar") -> Selection:
    """Min-K% Prob (Shi et al., ICLR 2024), a membership score: a high mean of the k% least likely
    tokens suggests text seen in pre-training. `prefer=unfamiliar` picks the lowest (novel) ones,
    `familiar` the highest."""
    return _membership(features, "min_k", k, prefer, budget, rng, f"mean log-prob of the lowest {k:.0%} tokens")


def _membership(features: Features, name: str, k: float, prefer: str, budget: int, rng: np.random.Generator,
                label: str) -> Selection:
    """Pick by one column (fraction k) of a Min-K%-style membership score: lowest first when
    prefer=unfamiliar, highest when familiar."""
    if k not in MIN_K_FRACTIONS:
        raise ConfigError(f"{name}: k must be one of {MIN_K_FRACTIONS} (computed in the scoring pass), got {k!r}")
    if prefer not in ("unfamiliar", "familiar"):
        raise ConfigError(f"{name}: prefer must be 'unfamiliar' or 'familiar', got {prefer!r}")
    value = features.require(name)[:, MIN_K_FRACTIONS.index(k)].astype(np.float64)
    idx = top_k(-value if prefer == "unfamiliar" else value, budget, rng)
    return Selection(idx, value[idx], label, value)


@STRATEGIES.register(
    "min_k_plus",
    "Min-K%++: mean of the lowest k% standardised response-token log-probs; prefer=unfamiliar (default) or familiar",
    needs=("min_k_plus",), labelled=PER_EXAMPLE,
)
def min_k_plus(features: Features, budget: int, rng: np.random.Generator, k: MinKFraction = 0.2,
               prefer: Prefer = "unfamiliar") -> Selection:
    """Min-K%++ (Zhang et al., "Min-K%++: Improved baseline for detecting pre-training data from
    large language models", ICLR 2025): each response token's log-prob standardised against the
    model's next-token distribution, z_t = (log p(x_t) - mu_t) / sigma_t with mu_t the expected
    log-prob and sigma_t its standard deviation under that distribution, then the mean of the
    lowest k% of z_t. A high score (tokens at local maxima of the likelihood) suggests text seen in
    pre-training. `prefer=unfamiliar` picks the lowest, `familiar` the highest."""
    return _membership(features, "min_k_plus", k, prefer, budget, rng,
                       f"mean Min-K%++ score of the lowest {k:.0%} tokens")


def _ifd_select(ifd: np.ndarray, budget: int, rng: np.random.Generator, max_ifd: float | None, name: str) -> Selection:
    """Highest IFD first. Examples above `max_ifd` (the prompt does not help predict the response;
    Cherry LLM drops IFD > 1) rank after all others rather than being dropped, so the budget can
    still be met; their count shows in the scores."""
    if max_ifd is not None and not max_ifd > 0:
        raise ConfigError(f"{name}: max_ifd must be > 0 or null, got {max_ifd!r}")
    key = ifd.astype(np.float64).copy()
    if max_ifd is not None:
        key[ifd > max_ifd] = -np.inf
    idx = top_k(key, budget, rng)
    return Selection(idx, ifd[idx].astype(np.float64), "IFD (loss with prompt / loss without)", ifd)


@STRATEGIES.register("ifd", "highest instruction-following difficulty (Cherry LLM); IFD > max_ifd (1.0) ranked last",
                     needs=("ifd",), labelled=PER_EXAMPLE)
def ifd(features: Features, budget: int, rng: np.random.Generator, max_ifd: Annotated[float, above(0)] | None = 1.0) -> Selection:
    """IFD (Li et al., NAACL 2024): the response's loss given the prompt divided by its loss alone,
    both under the untrained model; high IFD = the prompt helps little, so the example is hard."""
    return _ifd_select(features.require("ifd"), budget, rng, max_ifd, "ifd")


@STRATEGIES.register("superfiltering", "IFD computed by a separate small scorer model (model.scorer), as in Superfiltering",
                     needs=("scorer_ifd",), labelled=PER_EXAMPLE)
def superfiltering(features: Features, budget: int, rng: np.random.Generator,
                   max_ifd: Annotated[float, above(0)] | None = 1.0) -> Selection:
    """Superfiltering (Li et al., ACL 2024): IFD from a small, cheap model (GPT-2 in the paper)
    picks data for a larger one."""
    return _ifd_select(features.require("scorer_ifd"), budget, rng, max_ifd, "superfiltering")
