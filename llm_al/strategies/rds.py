"""RDS+: the pool examples most like a few examples of the data you want to do well on.

Ivison et al. 2025 ("Large-Scale Data Selection for Instruction Tuning", arXiv 2503.01807) scale
selection to millions of examples and find most methods fall below random there, while RDS+ stays
a strong, cheap baseline: embed the pool and a small target set (their tasks' dev examples) with the
base model's own position-weighted mean-pooled final hidden states, score each pool example by its
cosine to the targets, and, when the targets span several tasks, take the most similar examples
round-robin over the tasks so each task gets an equal share. Here:

- the embeddings are `model.embedder`'s: `model` is RDS+'s own (llm_al.features.pooling: the
  vectors come out of the loss pass and are cached beside the losses), a sentence-transformers model
  works too (the paper's weaker RDS baselines are of that kind);
- the probe `rds_targets` reads the target set (config `probe.targets`; default: the embedded
  task's dev split, llm_al.data.tasks.dev_records, when the pool is `embedded:NAME`), embeds it
  with the same embedder as the pool (the pool's vectors come back from the features cache the
  `embeddings` step filled), and provides `target_similarity`: (N, K), for each pool example its
  largest cosine to the target examples of each of the K target tasks (a record's `task`, sorted
  by name). Pool examples whose prompt is a target example's (the dev split is drawn from the pool)
  get NaN rows: the target set stands for the data to do well on, so it is never trained on;
- the strategy `rds` is a pure function of that matrix: task k's ranking is column k, highest
  first (seeded random tie-breaks); the picks go round-robin over the tasks, each taking its most
  similar example not yet picked, and never a NaN row.

Why a probe and a config key: the target set is read and embedded once per pool beside the other
features (a strategy stays a function of arrays, no file reading), and probe outputs must be one
row per pool example, so the per-task scores are an (N, K) matrix (registered in `matrices`: no
strategy ranks it as one score) and the task names go into the probe's cost record. A strategy
parameter (`rds:targets=...`) would not reach the feature computation, which runs on feature names.

    llm-al run recipes/quickstart.yaml task=django-en-fr 'strategies=[rds]' model.embedder=model
    llm-al run RECIPE 'strategies=[rds]' probe.targets=dev.jsonl      # a file pool: its target set

Tests: `.venv/bin/pytest -q tests/test_rds.py` (~30 s on a 2-core CPU, the tiny model).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Sequence

import numpy as np
from scipy import sparse

from llm_al import models
from llm_al.config import DataConfig, ModelConfig
from llm_al.data.pool import Example, content_id, load_pool, records_to_pool
from llm_al.data.tasks import dev_records, is_task, load_task, task_name
from llm_al.errors import BudgetError, ConfigError, FeatureUnavailableError
from llm_al.features.engine import compute_embeddings, compute_model_features
from llm_al.features.probes import PROBES, ProbeContext
from llm_al.strategies.base import STRATEGIES, check_budget
from llm_al.strategies.kernels.rows import max_cosine
from llm_al.strategies.reference_overlap import LazyEmbedder
from llm_al.types import Features, Selection

DEFAULT_TASK = "targets"
"""The task of target examples whose records name none."""


# ---------------------------------------------------------------------------- the target set
def load_time_system_prompt(examples: Sequence[Example]) -> str | None:
    """The system prompt the pool's loader gave examples without one (Example.system_injected), when
    there is exactly one; target examples are read with it, so both are formatted alike."""
    found = {ex.messages[0]["content"] for ex in examples if ex.system_injected}
    return found.pop() if len(found) == 1 else None


def target_set(ctx: ProbeContext) -> tuple[list[Example], str]:
    """(the target examples, where they came from): probe.targets, read as the pool is; else the dev
    split of the embedded task the pool is; else a FeatureUnavailableError naming the option."""
    system = load_time_system_prompt(ctx.examples)
    spec = ctx.probe_cfg.targets
    if spec:
        data = ctx.data_cfg or DataConfig()
        pool = load_pool(spec, fields=data.fields, system_prompt=system, split=data.split, labelled=False,
                         languages=(data.source_lang, data.target_lang))
        return pool.examples, str(spec)
    if ctx.pool_path and is_task(ctx.pool_path):
        name = task_name(ctx.pool_path)
        task = load_task(name)                      # formatted as pipeline.load_data formats the task's pool
        shape = {"system_prompt": system if system is not None else task.system_prompt,
                 **({"translation_template": task.template} if task.template else {})}
        pool = records_to_pool(dev_records(name), path=f"{ctx.pool_path}:dev", **shape)
        return pool.examples, f"{ctx.pool_path}:dev (llm_al.data.tasks.dev_records)"
    raise FeatureUnavailableError(
        f"rds ranks the pool by similarity to a target set (examples of the data to do well on), but none is "
        f"given and the pool ({ctx.pool_path or 'given in memory'}) is no embedded task with a dev split: set "
        f"probe.targets to a file of target examples (a recipe's `probe: {{targets: dev.jsonl}}`, "
        f"`probe.targets=dev.jsonl` on the command line, api.select(..., targets=...))")


def prompt_key(example: Example) -> str:
    """The content id of an example's prompt without its system turns: equal for a pool example and
    a target example that ask the same thing, whatever system prompt each was given."""
    return content_id([m for m in example.prompt_messages if m["role"] != "system"])


def embed_examples(ctx: ProbeContext, examples: Sequence[Example]) -> tuple[np.ndarray, dict]:
    """((N, D) unit vectors, cost) of `examples` with model.embedder, through the features caches
    (the pool's rows are there once the `embeddings` step ran). embedder=model uses the base model:
    the pipeline's (ctx.cache_dir is set only then: in loop rounds ctx.model is an adapter, and the
    loop keeps the first pass's scores, `same_every_round`), else it is loaded here."""
    cfg = ctx.model_cfg or ModelConfig()
    cache_dir = models.cache_root() / "features"
    if cfg.embedder != models.MODEL_EMBEDDER:
        return compute_embeddings(LazyEmbedder(cfg.embedder, cfg.device), [ex.text for ex in examples], cache_dir,
                                  models.fingerprint(cfg.embedder), progress_bar=ctx.progress)
    if ctx.model is not None and ctx.cache_dir is not None:
        model, tokenizer = ctx.model, ctx.tokenizer
    else:
        model, tokenizer = models.load_model(cfg.name, cfg.device, dtype=cfg.dtype,
                                             trust_remote_code=cfg.trust_remote_code)
    _, vectors, cost = compute_model_features(model, tokenizer, examples, cache_dir, models.fingerprint(cfg.name),
                                              cfg.max_length, cfg.score_max_tokens, ctx.progress, embed=True)
    return vectors, cost


@PROBES.register("rds_targets",
                 "largest cosine of each pool example to the target examples of each target task (probe.targets, "
                 "default the embedded task's dev split), embedded with model.embedder; NaN rows: the targets' own "
                 "prompts", provides=("target_similarity",), matrices=("target_similarity",), needs_model=False,
                 needs_labels=False, same_every_round=True,
                 work="embeds the target set (a few dozen examples) with model.embedder; the pool's vectors are "
                 "the embeddings step's")
def rds_targets(ctx: ProbeContext) -> tuple[dict[str, np.ndarray], dict]:
    t0 = time.perf_counter()
    targets, where = target_set(ctx)
    if not targets:
        raise FeatureUnavailableError(f"the target set {where} holds no examples")
    n = len(ctx.examples)
    vectors, embed_cost = embed_examples(ctx, [*ctx.examples, *targets])
    pool_v, target_v = vectors[:n], vectors[n:]                                  # (N, D), (T, D)
    tasks = np.array([str(ex.source.get("task") or DEFAULT_TASK) for ex in targets])
    names = sorted(set(tasks.tolist()))
    sim = np.stack([max_cosine(pool_v, target_v[tasks == name]) for name in names], axis=1)   # (N, K)
    own = {prompt_key(ex) for ex in targets}
    left_out = np.array([prompt_key(ex) in own for ex in ctx.examples], dtype=bool)           # (N,)
    sim[left_out] = np.nan
    counts = Counter(tasks.tolist())
    return {"target_similarity": sim.astype(np.float32)}, {
        "seconds": time.perf_counter() - t0, "targets": where, "target_examples": len(targets),
        "target_tasks": {name: counts[name] for name in names}, "left_out": int(left_out.sum()),
        "embedder": (ctx.model_cfg or ModelConfig()).embedder, **embed_cost}


# ---------------------------------------------------------------------------- the strategy
def task_columns(m, rows: int) -> np.ndarray:
    """(N, K) float64 target similarities (the `rds_targets` probe's matrix; a dense or sparse 2-D
    array, or an (N,) vector as one task)."""
    m = m.toarray() if sparse.issparse(m) else np.asarray(m)
    m = m[:, None] if m.ndim == 1 else m
    if m.ndim != 2 or m.shape[0] != rows or m.shape[1] < 1:
        raise ConfigError(f"strategy 'rds': target_similarity must be an (N, K) matrix with N = {rows} rows and "
                          f"K >= 1 target tasks (the 'rds_targets' probe), got shape {m.shape}")
    return m.astype(np.float64)


def round_robin(sim: np.ndarray, budget: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(picks, the similarity each was picked for): task k = 0, 1, ..., K-1, 0, ... in turn takes its
    most similar row (column k, ties broken by a seeded draw) not yet picked; NaN rows never. Each
    task ranks only its `budget` best rows: enough, as fewer than `budget` rows are picked before
    any pick, so fewer lie above a task's next one."""
    K = sim.shape[1]
    rows = np.flatnonzero(~np.isnan(sim).any(1))
    check_budget(budget, len(rows))
    tie = rng.random(len(sim))
    m = min(len(rows), budget)
    orders = []
    for k in range(K):
        s = sim[rows, k]
        cand = rows[s >= np.partition(s, len(s) - m)[len(s) - m]]               # the m highest, and ties
        orders.append(cand[np.lexsort((tie[cand], -sim[cand, k]))][:m])
    taken = np.zeros(len(sim), dtype=bool)
    cursor = np.zeros(K, dtype=np.int64)
    picks, scores = [], []
    while len(picks) < budget:
        k = len(picks) % K
        while taken[orders[k][cursor[k]]]:
            cursor[k] += 1
        i = orders[k][cursor[k]]
        taken[i] = True
        picks.append(i)
        scores.append(sim[i, k])
    return np.array(picks, dtype=np.int64), np.array(scores)


@STRATEGIES.register(
    "rds", "RDS+ (Ivison et al. 2025): most like a target set (probe.targets; default the embedded task's dev "
    "split) by cosine of model.embedder embeddings (model.embedder=model: RDS+'s own), round-robin over the "
    "target tasks; the targets' own prompts are never picked",
    needs=("embeddings", "target_similarity"),
    labelled="ignored: ranks by similarity to the target set, whatever is already labelled")
def rds(features: Features, budget: int, rng: np.random.Generator) -> Selection:
    """Representation-based data selection, RDS+ (Ivison et al. 2025, arXiv 2503.01807): see the
    module docstring. Scores: the cosine of each pick to the nearest target example of the task it
    was picked for; pool_scores: each example's largest over the tasks (NaN for the targets' own)."""
    sim = task_columns(features.require("target_similarity"), len(features))           # (N, K)
    left_out = np.isnan(sim).any(1)
    try:
        idx, scores = round_robin(sim, budget, rng)
    except BudgetError as err:
        err.args = (f"{err.args[0]} left once the {int(left_out.sum())} pool examples that share a target "
                    f"example's prompt are left out (of {len(sim)})",)
        raise
    K = sim.shape[1]
    name = "cosine to the nearest target example" + (f" of the task it was picked for (round-robin over {K} "
                                                      "target tasks)" if K > 1 else "")
    best = np.where(left_out, np.nan, np.where(left_out[:, None], 0.0, sim).max(1))
    return Selection(idx, scores, name, best)
