"""The shared vocabulary every layer speaks: `Features` (what is known about each pool example),
`Selection` (what a strategy returns), and the one list of feature names, grouped by what computes
them. Pure data: numpy only, no model code.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Sequence

import numpy as np

from llm_al.errors import FeatureUnavailableError
from llm_al.registries import hint

MIN_K_FRACTIONS = (0.1, 0.2, 0.3, 0.5)
"""The k of Min-K% Prob and Min-K%++: the columns of `Features.min_k` / `min_k_plus`."""

# ---------------------------------------------------------------------------- feature names
LOSS_FEATURES = frozenset({"loss", "entropy", "n_tokens", "min_k", "min_k_plus", "ifd"})
"""From the base model's scoring pass with the prompt."""
DIRECT_FEATURES = frozenset({"direct_loss", "ifd"})
"""From the base model's scoring pass without the prompt (IFD's denominator)."""
MODEL_FEATURES = LOSS_FEATURES | DIRECT_FEATURES
"""Everything the base model's two passes give: what an AL loop recomputes under each round's adapter."""
SCORER_FEATURES = frozenset({"scorer_ifd"})
"""From a second, small scorer model (Superfiltering): both passes under model.scorer."""
EMBEDDING_FEATURES = frozenset({"embeddings"})
"""From the embedder."""
COMPUTED_FEATURES = MODEL_FEATURES | SCORER_FEATURES | EMBEDDING_FEATURES
"""Every feature the scoring engine computes (probe scores come from the probes registry)."""
FEATURE_NAMES = ("loss", "entropy", "n_tokens", "min_k", "min_k_plus", "ifd", "direct_loss", "scorer_ifd",
                 "embeddings")
"""The engine's features in a fixed order (COMPUTED_FEATURES as a sequence), for messages and listings."""
SCALAR_FEATURES = ("loss", "entropy", "length", "n_tokens", "ifd", "direct_loss", "scorer_ifd")
"""The per-example (N,) fields of Features: what a run records subset means of and a hybrid may use."""
assert set(FEATURE_NAMES) == COMPUTED_FEATURES

NEEDS_HINT = {"loss": "a model (model.name)", "entropy": "a model (model.name)", "n_tokens": "a model",
               "min_k": "a model (model.name)", "min_k_plus": "a model (model.name)",
               "ifd": "a model (model.name)", "direct_loss": "a model",
               "scorer_ifd": "a second, small scorer model (model.scorer=..., e.g. a GPT-2-size model)",
               "embeddings": "an embedder (model.embedder)"}


@dataclass
class Features:
    """Aligned with a pool: row i describes pool.examples[i]. Absent features are None.

    `labelled`, when set, holds the same fields for the examples already labelled (an AL loop's
    earlier rounds, `llm-al select --labelled`): the rows a strategy selects from are these
    candidates, and a strategy that registers `labelled="used: ..."` reads the labelled set to
    avoid what is already covered (kcenter starts from it, facility location counts it as coverage).
    Indices always point into the candidates; see `with_labelled` and `labelled_rows`."""

    ids: list[str]
    length: np.ndarray                         # (N,) response words (NaN when unlabelled)
    loss: np.ndarray | None = None             # (N,) mean response NLL given the prompt, nats/token
    entropy: np.ndarray | None = None          # (N,) mean predictive entropy at response positions, nats
    n_tokens: np.ndarray | None = None         # (N,) response tokens scored
    min_k: np.ndarray | None = None            # (N, len(MIN_K_FRACTIONS)) mean of the lowest k% token log-probs
    min_k_plus: np.ndarray | None = None       # (N, len(MIN_K_FRACTIONS)) mean of the lowest k% Min-K%++ scores
    direct_loss: np.ndarray | None = None      # (N,) mean plain-response NLL with no prompt (IFD's denominator)
    plain_loss: np.ndarray | None = None       # (N,) mean plain-response NLL given the prompt, without the
                                               # template's end-of-turn tail (IFD's numerator); None: same as loss
    scorer_ifd: np.ndarray | None = None       # (N,) IFD under a separate small scorer model (Superfiltering)
    embeddings: np.ndarray | None = None       # (N, D) unit-norm
    scores: dict[str, np.ndarray] = field(default_factory=dict)   # (N,) each, from probes (llm_al.features.probes)
    cost: dict = field(default_factory=dict)   # what computing them cost (seconds, passes, tokens)
    labelled: Features | None = None           # the already-labelled examples' features (L rows), or None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def ifd(self) -> np.ndarray | None:
        """Instruction-following difficulty (Cherry LLM): the plain response's loss given the prompt /
        its loss without it, over the same tokens."""
        if self.loss is None or self.direct_loss is None:
            return None
        return ifd_ratio(self.loss if self.plain_loss is None else self.plain_loss, self.direct_loss)

    def get(self, name: str) -> np.ndarray | None:
        """A feature by name: a field, the `ifd` ratio, or a probe score; None when absent."""
        if name in self.scores:
            return self.scores[name]
        return getattr(self, name, None) if name not in ("scores", "cost", "labelled") else None

    def require(self, name: str) -> np.ndarray:
        value = self.get(name)
        if value is None:
            raise FeatureUnavailableError(
                f"feature {name!r} was not computed for this pool; it needs "
                f"{NEEDS_HINT.get(name) or hint(name) or name}")
        return value

    def take(self, indices: Sequence[int]) -> "Features":
        idx = np.asarray(indices, dtype=np.int64)
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        out = {k: (v if v is None or k in ("cost", "scores", "labelled") else [v[i] for i in idx] if k == "ids"
                   else v[idx]) for k, v in values.items()}
        out["scores"] = {k: v[idx] for k, v in self.scores.items()}
        out["cost"] = dict(self.cost)
        return Features(**out)                 # the labelled set stays: only the candidates are subset

    def with_labelled(self, labelled: Features | None) -> "Features":
        """These features (the candidates) with `labelled` attached as the labelled set, e.g.
        `features.take(remaining).with_labelled(features.take(chosen))`; None detaches it. A shallow
        copy: the arrays are shared."""
        if labelled is not None and labelled.labelled is not None:
            labelled = labelled.with_labelled(None)          # one level: the labelled set has no labelled set
        return Features(**{f.name: getattr(self, f.name) for f in fields(self) if f.name != "labelled"},
                        labelled=labelled)

    def labelled_rows(self, name: str) -> np.ndarray | None:
        """Feature `name` of the labelled set, or None when there is no labelled set or it is empty
        (a strategy then behaves as with nothing labelled). A labelled set that lacks the feature
        is a FeatureUnavailableError: a labelled-aware strategy must not silently ignore it."""
        if self.labelled is None or len(self.labelled) == 0:
            return None
        value = self.labelled.get(name)
        if value is None:
            raise FeatureUnavailableError(
                f"feature {name!r} is missing for the {len(self.labelled)} labelled examples (the candidates "
                f"have it); compute it for the labelled set too ({NEEDS_HINT.get(name) or hint(name) or name})")
        return value


def ifd_ratio(conditioned: np.ndarray, alone: np.ndarray) -> np.ndarray:
    """IFD = mean response loss given the prompt / mean response loss alone."""
    return (conditioned / np.maximum(alone, 1e-8)).astype(np.float32)


@dataclass
class Selection:
    indices: np.ndarray        # (budget,) positions in the pool, in pick order
    scores: np.ndarray         # (budget,) the value that drove each pick (NaN where none did)
    score_name: str            # what `scores` measures, for reports and exported subsets
    pool_scores: np.ndarray | None = None   # (N,) per-example scores, for score-based strategies
