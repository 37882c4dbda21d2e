"""Probes: per-example scores that need more than the one scoring pass of `features.py`: several
stochastic passes (MC dropout), a backward pass (gradient length), generation (sampled
disagreement, greedy confidence, the oracle metric), a committee of adapters, a reference corpus.

A probe is a function `fn(ctx: ProbeContext) -> (scores, cost)` registered with
`@PROBES.register(name, description, provides=("score_a", ...), needs_model=..., needs_labels=...)`
where it is defined. `scores` maps each provided name to an (N,) array aligned with
`ctx.examples`; `cost` says what it took (seconds, forward passes, tokens), merged into
`Features.cost` under the probe's name. The scores land in `Features.scores`, so a strategy or
ordering that declares `needs=("score_a",)` gets them through `features.require("score_a")`,
and `pipeline.compute_features` (one-shot) and `loop.rescore` (under each round's adapter) run
exactly the probes the requested features need. Optional meta: `matrices=(...)` for provided
names that are (N, D) matrices rather than scores, `same_every_round=True` for scores the
adapter cannot change (loop rounds keep the first pass's), `work="..."` for what `--dry-run` says
the probe costs.

Probes stay out of strategies: strategies remain pure functions of the feature arrays, and the
model work is batched and cached here once per pool.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import sparse

from llm_al.errors import FeatureUnavailableError
from llm_al.config import DataConfig, EvalConfig, ModelConfig, OverlapConfig, ProbeConfig, TrainConfig
from llm_al.registries import PROBES, hint, matrix_names, needs_model, provided_names, provider  # noqa: F401


@dataclass
class ProbeContext:
    """What a probe may use. `model` is the base model (one-shot) or the round's adapter (loop)."""

    examples: Sequence[Any]                 # the pool examples to score, in order
    model: Any = None
    tokenizer: Any = None
    model_cfg: ModelConfig | None = None
    probe_cfg: ProbeConfig = field(default_factory=ProbeConfig)
    train_cfg: TrainConfig | None = None    # adapters a probe trains or attaches
    eval_cfg: EvalConfig | None = None      # generation length, metric
    overlap_cfg: OverlapConfig | None = None   # reference corpus, n, passage sample
    labelled: Sequence[Any] | None = None   # examples labelled so far (loop rounds), else None
    cache_dir: Path | None = None           # per-example caches; None in loop rounds (the adapter changes)
    model_key: str = ""                     # fingerprint of the model, part of every cache key
    progress: bool = False
    pool_path: str | None = None            # where the pool came from (Pool.path: a file, or embedded:NAME)
    data_cfg: DataConfig | None = None      # how the pool was read (fields, languages), for files read alike




def run_probes(features: set[str], ctx: ProbeContext) -> tuple[dict[str, np.ndarray], dict]:
    """Run each probe needed for `features` once; returns (scores by name, cost by probe)."""
    entries = {}
    for f in sorted(features):
        entry = provider(f)
        if entry is not None:
            entries[entry.name] = entry
    scores: dict[str, np.ndarray] = {}
    cost: dict = {}
    for name, entry in entries.items():
        if entry.meta.get("needs_labels", False):
            unlabelled = [i for i, ex in enumerate(ctx.examples) if not getattr(ex, "is_labelled", True)]
            if unlabelled:
                raise FeatureUnavailableError(
                    f"probe {name!r} reads the reference responses, but {len(unlabelled)} pool examples have none "
                    f"(first at pool position {unlabelled[0]}); use a label-free strategy or label the pool")
        out, c = entry.fn(ctx)
        missing = set(entry.meta.get("provides", ())) - set(out)
        assert not missing, f"probe {name} did not return {sorted(missing)}"
        for key, value in out.items():
            if not sparse.issparse(value):          # scipy.sparse matrices (n-gram counts) stay sparse
                value = np.asarray(value)
            assert value.shape[0] == len(ctx.examples), \
                f"probe {name}: {key} has {value.shape[0]} rows, pool {len(ctx.examples)}"
            scores[key] = value
        cost[name] = c
    return scores, cost

