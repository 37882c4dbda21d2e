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
exactly the probes the requested features need.

Probes stay out of strategies: strategies remain pure functions of the feature arrays, and the
model work is batched and cached here once per pool.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from scipy import sparse

from llm_al.errors import FeatureUnavailableError
from llm_al.registry import Registry


@dataclass
class ProbeConfig:
    """Settings of the probes (config section `probe`)."""

    seed: int = 0
    """Seed of every random draw a probe makes (dropout masks, sampled generations, bootstraps)."""
    mc_passes: int = 8
    """Stochastic passes K of the `mc_dropout` probe (bald, mc_disagreement); >= 2."""
    mc_dropout: float = 0.1
    """Dropout p the `mc_dropout` probe applies to the decoder's Linear inputs during its passes; in (0, 1)."""
    committee_size: int = 3
    """LoRA adapters in the `committee` probe (qbc), each trained on a bootstrap of the labelled set; >= 2."""
    ngram_max: int = 2
    """Longest word n-gram the `ngrams` probe counts (n = 1..ngram_max; llm_al.lexical)."""
    gen_samples: int = 4
    """Sampled answers per prompt for the `sampled` probe (gen_disagreement, bleu_variance); >= 2."""
    gen_temperature: float = 1.0
    """Sampling temperature of the `sampled` probe (no top-k / top-p truncation)."""

    def __post_init__(self) -> None:
        from llm_al.errors import ConfigError

        for name, lo in (("mc_passes", 2), ("committee_size", 2), ("ngram_max", 1), ("gen_samples", 2)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise ConfigError(f"probe.{name} must be an integer >= {lo}, got {value!r}")
        if not 0 <= self.mc_dropout < 1:
            raise ConfigError(f"probe.mc_dropout must be in [0, 1), got {self.mc_dropout!r}")
        if not self.gen_temperature > 0:
            raise ConfigError(f"probe.gen_temperature must be > 0, got {self.gen_temperature!r}")


@dataclass
class ProbeContext:
    """What a probe may use. `model` is the base model (one-shot) or the round's adapter (loop)."""

    examples: Sequence[Any]                 # the pool examples to score, in order
    model: Any = None
    tokenizer: Any = None
    model_cfg: Any = None                   # config.ModelConfig
    probe_cfg: ProbeConfig = field(default_factory=ProbeConfig)
    train_cfg: Any = None                   # train.TrainConfig (adapters a probe trains or attaches)
    eval_cfg: Any = None                    # evaluate.EvalConfig (generation length, metric)
    overlap_cfg: Any = None                 # config.OverlapConfig (reference corpus, n, passage sample)
    labelled: Sequence[Any] | None = None   # examples labelled so far (loop rounds), else None
    cache_dir: Path | None = None           # per-example caches; None in loop rounds (the adapter changes)
    model_key: str = ""                     # fingerprint of the model, part of every cache key
    progress: bool = False


ProbeFn = Callable[[ProbeContext], "tuple[dict[str, np.ndarray], dict]"]
PROBES: Registry[ProbeFn] = Registry("probe")


def provider(feature: str):
    """The registered probe that provides `feature`, or None."""
    for name in PROBES.names():
        entry = PROBES.get(name)
        if feature in entry.meta.get("provides", ()):
            return entry
    return None


def provided_names() -> list[str]:
    return sorted(f for name in PROBES.names() for f in PROBES.get(name).meta.get("provides", ()))


def matrix_names() -> list[str]:
    """Provided names that are (N, D) matrices (e.g. sparse n-gram counts; a probe lists them in
    its `matrices` meta), not per-example scores: no strategy may rank or average them as one."""
    return sorted(f for name in PROBES.names() for f in PROBES.get(name).meta.get("matrices", ()))


def needs_model(features: set[str]) -> bool:
    return any(provider(f) is not None and provider(f).meta.get("needs_model", True) for f in features)


def hint(feature: str) -> str | None:
    entry = provider(feature)
    return None if entry is None else f"the {entry.name!r} probe ({entry.description})"


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


# Probe families in their own modules register on import.
