"""Ray: score and embed a pool over several workers, and spread a sweep's runs over workers.

Optional extra: `pip install 'llm-al[ray]'` (ray>=2.40). Nothing else in llm_al imports this module.

    # one machine, every GPU (or 4 CPU workers): Ray starts a local cluster by itself
    llm-al run recipe.yaml --ray --workers 4

    # a cluster: the same llm-al install (and model paths, if local) on every node, and out_dir plus
    # $LLM_AL_CACHE on a filesystem every node shares (the claim files and the feature cache live there)
    ray start --head --port=6379                         # on the head node
    ray start --address=HEAD_IP:6379                     # on each worker node
    RAY_ADDRESS=HEAD_IP:6379 llm-al run recipe.yaml --ray --workers 8      # from any node
    #   or: llm-al run recipe.yaml --ray --workers 8 --ray-address HEAD_IP:6379

What each part does:

- `score_pool_ray(pool, needs, model_cfg, num_workers)`: the per-example statistics of
  `pipeline.compute_features` (the loss pass with and without the prompt, the scorer model's pair
  for scorer_ifd, the sentence embeddings), with the model work sharded over `num_workers` Ray
  actors. Each actor loads each model once and keeps it for every later shard, and scores its
  shard with the single-process functions themselves (features.compute_model_features,
  compute_embeddings) into a throwaway cache. The driver keeps the real on-disk caches
  (llm_al.features.cache.ShardedCache, the same folders and keys as compute_features), sends the actors only
  the rows still missing, dealt so that each gets a like mix of long and short ones, and builds the
  Features with `features.build_features`. The result equals compute_features' up to float
  rounding from different batch composition (tests/test_distributed.py: allclose 1e-5, same ids
  and order, same selections).
  Plain actors rather than Ray Data `map_batches`: the rows are already-tokenised Python objects,
  not tables, the cache and order bookkeeping stay in the driver where the single-process code
  keeps them, the results come back in shard order with no Arrow round trip, and plain `ray` is
  enough (no `ray[data]` dependencies). Probe scores (llm_al.features.probes) are not distributed: asking
  for one is a ConfigError.
- `run_sweep_ray(cfg, num_workers)`: fills the feature cache with score_pool_ray (when the
  workers share $LLM_AL_CACHE they then find every row cached), starts `num_workers` Ray tasks
  that each call `experiment.run_experiment(cfg)` on the same out_dir -- the lock-file claims
  (`experiment.claim`) hand each cell to exactly one of them -- then one last task that finds every
  cell done and writes the summary over all of them (and redoes any cell a dead worker left).

Placement: one GPU per actor or task when the cluster has GPUs (`num_gpus=1`; Ray sets
CUDA_VISIBLE_DEVICES, and model.device=auto picks it), else one CPU each (`cpus_per_worker`).
Each sweep worker evaluates the untrained floor itself unless it is already on disk (the floor
has no claim), so the first floor evaluation is repeated once per worker, in parallel.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from llm_al import models
from llm_al.config import ExperimentConfig, ModelConfig, parse_strategy
from llm_al.errors import ConfigError, FeatureUnavailableError, UserError
from llm_al.features import probes
from llm_al.features.cache import ShardedCache, text_key  # text_key: the embedding cache's row key, as compute_embeddings makes it
from llm_al.features.engine import (STAT_COLUMNS, build_features, compute_embeddings, compute_model_features,
                                    ifd_from_stats, loss_cache_plan)
from llm_al.features.pooling import embedding_cache
from llm_al.run.experiment import run_experiment
from llm_al.run.pipeline import load_data
from llm_al.strategies.needs import needed_features
from llm_al.types import COMPUTED_FEATURES, DIRECT_FEATURES, LOSS_FEATURES, Features

log = logging.getLogger("llm_al")
# Environment a worker needs to see what the driver sees (cache location, offline switches).
WORKER_ENV = ("LLM_AL_CACHE", "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE",
              "TOKENIZERS_PARALLELISM")


# ---------------------------------------------------------------------------- ray plumbing
def _ray(address: str | None = None):
    """The ray module, connected: to `address` (or $RAY_ADDRESS) when given, else a local cluster
    that Ray starts on this machine. An already-initialised Ray is used as it is."""
    try:
        import ray
    except ImportError:
        raise UserError("Ray is not installed: pip install 'llm-al[ray]' (or pip install 'ray>=2.40')") from None
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=True)
    return ray


def worker_env() -> dict[str, str]:
    """The variables of WORKER_ENV that are set here. Each actor and task sets them itself, rather
    than through a Ray runtime_env, which would start fresh worker processes for every new value
    (a new cache folder) instead of reusing warm ones."""
    return {k: os.environ[k] for k in WORKER_ENV if k in os.environ}


def _gpus_per_worker(ray, num_gpus: float | None) -> float:
    """`num_gpus` as given; None: 1 when the cluster has any GPU, else 0."""
    if num_gpus is not None:
        return float(num_gpus)
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def default_workers(address: str | None = None) -> int:
    """One worker per GPU of the cluster; without GPUs the count must be given."""
    gpus = int(_ray(address).cluster_resources().get("GPU", 0))
    if gpus < 1:
        raise ConfigError("the Ray cluster has no GPU, so there is no default worker count: give --workers N "
                          "(N CPU workers, one core each)")
    return gpus


def _check_workers(num_workers: int) -> None:
    if not isinstance(num_workers, int) or isinstance(num_workers, bool) or num_workers < 1:
        raise ConfigError(f"num_workers must be a positive integer, got {num_workers!r}")


class Scorer:
    """A Ray actor's body: loads each model (by name) once and scores the shards it is sent, through
    the same functions as the single-process path (features.compute_model_features and
    compute_embeddings, with a throwaway cache: the driver keeps the real one)."""

    def __init__(self, model_cfg: ModelConfig, env: dict | None = None):
        os.environ.update(env or {})
        self.model_cfg = model_cfg
        self.lms: dict[str, Any] = {}
        self.embedders: dict[str, Any] = {}
        self.shards = 0                              # shards scored so far (tests check the work was spread)

    def _lm(self, name: str):
        if name not in self.lms:
            cfg = self.model_cfg
            self.lms[name] = models.load_model(name, cfg.device, dtype=getattr(cfg, "dtype", None),
                                               trust_remote_code=cfg.trust_remote_code)
        return self.lms[name]

    def describe(self, name: str) -> tuple[Any, str]:
        """(the tokenizer, the weights' dtype as the loss cache names it) of model `name`."""
        model, tokenizer = self._lm(name)
        return tokenizer, str(next(model.parameters()).dtype)

    def loss_stats(self, name: str, examples: Sequence, direct: bool, embed: bool = False) -> np.ndarray:
        """(len(examples), len(STAT_COLUMNS)) of one scoring pass, as compute_model_features gives them;
        with `embed` (model.embedder=model) the pooled vectors follow as further columns."""
        model, tokenizer = self._lm(name)
        self.shards += 1
        with tempfile.TemporaryDirectory(prefix="llm-al-shard-") as tmp:
            stats, vectors, _ = compute_model_features(model, tokenizer, examples, Path(tmp), "shard",
                                                       self.model_cfg.max_length, self.model_cfg.score_max_tokens,
                                                       progress_bar=False, direct=direct, embed=embed)
        return stats if vectors is None else np.hstack([stats, vectors])

    def embed(self, name: str, texts: Sequence[str], batch_size: int) -> np.ndarray:
        """(len(texts), D) float32 unit vectors, as compute_embeddings gives them."""
        if name not in self.embedders:
            self.embedders[name] = models.load_embedder(name, self.model_cfg.device)
        self.shards += 1
        with tempfile.TemporaryDirectory(prefix="llm-al-shard-") as tmp:
            vecs, _ = compute_embeddings(self.embedders[name], list(texts), Path(tmp), "shard", batch_size,
                                         progress_bar=False)
        return vecs

    def where(self) -> tuple[str, int]:
        """(host:pid, shards scored so far)."""
        return f"{socket.gethostname()}:{os.getpid()}", self.shards


def start_scorers(num_workers: int, model_cfg: ModelConfig, *, num_gpus: float | None = None, cpus_per_worker: float = 1,
                  address: str | None = None) -> list:
    """`num_workers` Scorer actors (models load lazily, on each actor's first shard)."""
    _check_workers(num_workers)
    ray = _ray(address)
    actor = ray.remote(Scorer).options(num_cpus=cpus_per_worker, num_gpus=_gpus_per_worker(ray, num_gpus))
    return [actor.remote(model_cfg, worker_env()) for _ in range(num_workers)]


def _shards(lengths: Sequence[int], n: int) -> list[np.ndarray]:
    """Positions dealt round-robin in order of decreasing length: every shard gets a like mix of
    long and short rows (and so a like share of the work)."""
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    return [order[j::n] for j in range(n)]


def _scatter(ray, actors: list, method: str, rows: Sequence, lengths: Sequence[int], *args) -> np.ndarray:
    """Call actor.method(*args[:1], shard, *args[1:]) on a shard of `rows` per actor; the results
    stitched back in the order of `rows`."""
    shards = [s for s in _shards(lengths, len(actors)) if len(s)]
    refs = [getattr(a, method).remote(args[0], [rows[i] for i in s], *args[1:]) for a, s in zip(actors, shards)]
    parts = ray.get(refs)
    out = np.empty((len(rows), *parts[0].shape[1:]), dtype=parts[0].dtype)
    for s, part in zip(shards, parts):
        out[s] = part
    return out


# ---------------------------------------------------------------------------- scoring a pool
def score_pool_ray(pool, needs: set[str], model_cfg: ModelConfig, num_workers: int, *, actors: list | None = None,
                   num_gpus: float | None = None, cpus_per_worker: float = 1, address: str | None = None,
                   embed_batch_size: int = 64) -> Features:
    """`pipeline.compute_features(pool, needs, model_cfg)` with the model work on Ray actors.

    Same caches, keys and statistics as the single-process path (see the module docstring);
    `actors` reuses Scorer actors from `start_scorers` (else `num_workers` new ones, which end
    with this call). Probe scores are not distributed: asking for one is a ConfigError."""
    _check_workers(num_workers)
    probe_needs = needs & set(probes.provided_names())
    if probe_needs:
        raise ConfigError(f"score_pool_ray computes the loss passes and embeddings, not probe scores "
                          f"({', '.join(sorted(probe_needs))}); compute those with pipeline.compute_features")
    if "scorer_ifd" in needs and not model_cfg.scorer:
        raise FeatureUnavailableError("scorer_ifd (Superfiltering) needs a second, small scorer model: "
                                      "set model.scorer to a hub id or local folder (e.g. a GPT-2-size model)")
    ray = _ray(address)
    actors = actors or start_scorers(num_workers, model_cfg, num_gpus=num_gpus, cpus_per_worker=cpus_per_worker)
    cache_dir = models.cache_root() / "features"
    stats: dict[str, np.ndarray] = {}
    cost: dict = {"workers": len(actors)}

    def passes(name: str, which: set[bool], prefix: str = "", embed: bool = False) -> None:
        tokenizer, dtype = ray.get(actors[0].describe.remote(name))
        key = models.fingerprint(name)
        for direct in sorted(which):
            kind = "direct" if direct else "loss"
            cache, items, keys = loss_cache_plan(tokenizer, pool.examples, cache_dir, key, dtype,
                                                 model_cfg.max_length, direct)
            pooled = embedding_cache(cache_dir, key, dtype, model_cfg.max_length) if embed and not direct else None
            todo = sorted(set(cache.missing(keys)) | set(pooled.missing(keys) if pooled else []))
            lengths = items.lengths
            t0 = time.perf_counter()
            if todo:
                rows = [pool.examples[i] for i in todo]
                out = _scatter(ray, actors, "loss_stats", rows, [int(lengths[i]) for i in todo], name, direct,
                               pooled is not None)
                cache.add([keys[i] for i in todo], out[:, :len(STAT_COLUMNS)])
                if pooled is not None:
                    pooled.add([keys[i] for i in todo], out[:, len(STAT_COLUMNS):].astype(np.float32))
            stats[prefix + kind] = cache.get(keys)
            if pooled is not None:
                stats["pooled"] = pooled.get(keys)
            cost.update({prefix + k: v for k, v in {
                f"{kind}_seconds": time.perf_counter() - t0, f"{kind}_examples_scored": len(todo),
                f"{kind}_tokens_scored": int(lengths[todo].sum()),
                f"{kind}_tokens_needed": int(lengths.sum()),
                "truncated": int(items.truncated.sum())}.items()})
            if pooled is not None:            # the same pass (as compute_model_features reports it)
                cost.update({"embed_seconds": cost[f"{prefix}{kind}_seconds"], "embed_examples": len(todo),
                             "embed_examples_needed": len(keys), "embed_in_loss_pass": True})

    embed_model = "embeddings" in needs and model_cfg.embedder == models.MODEL_EMBEDDER   # from the loss pass
    which = {d for d, group in ((False, LOSS_FEATURES), (True, DIRECT_FEATURES)) if needs & group}
    if which or embed_model:
        passes(model_cfg.name, which | ({False} if embed_model else set()), embed=embed_model)
    scorer_ifd = None
    if "scorer_ifd" in needs:
        passes(model_cfg.scorer, {False, True}, prefix="scorer_")
        scorer_ifd = ifd_from_stats(stats["scorer_loss"], stats["scorer_direct"])
    embeddings = stats.get("pooled")
    if "embeddings" in needs and not embed_model:
        texts = [ex.text for ex in pool.examples]
        cache = ShardedCache(cache_dir / f"emb-{text_key(models.fingerprint(model_cfg.embedder))}")
        keys = [text_key(t) for t in texts]
        todo = cache.missing(keys)
        t0 = time.perf_counter()
        if todo:
            rows = [texts[i] for i in todo]
            cache.add([keys[i] for i in todo], _scatter(ray, actors, "embed", rows, [len(t) for t in rows],
                                                        model_cfg.embedder, embed_batch_size))
        embeddings = cache.get(keys)
        cost.update({"embed_seconds": time.perf_counter() - t0, "embed_examples": len(todo),
                     "embed_examples_needed": len(texts)})
    return build_features(pool.examples, pool.ids, loss_stats=stats.get("loss"), direct_stats=stats.get("direct"),
                          scorer_ifd=scorer_ifd, embeddings=embeddings, cost=cost)


# ---------------------------------------------------------------------------- sweeps
def _sweep_task(cfg: ExperimentConfig, env: dict, keep_summary: bool = False) -> dict:
    """One sweep worker: run_experiment on the shared out_dir; which cells this worker trained
    (and the summary it wrote, when `keep_summary`)."""
    os.environ.update(env)
    ran: list[str] = []

    class Ran(logging.Handler):                      # run_experiment logs "running <run_id>" per claimed cell
        def emit(self, record: logging.LogRecord) -> None:
            if record.msg == "running %s":
                ran.append(str(record.args[0]))

    handler, logger = Ran(), logging.getLogger("llm_al")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    t0 = time.perf_counter()
    try:
        summary = run_experiment(cfg)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    report = {"worker": f"{socket.gethostname()}:{os.getpid()}", "ran": ran, "seconds": time.perf_counter() - t0}
    return {**report, "summary": summary} if keep_summary else report


def run_sweep_ray(cfg: ExperimentConfig, num_workers: int, *, num_gpus: float | None = None, cpus_per_worker: float = 1,
                  prescore: bool = True, address: str | None = None) -> dict:
    """Run the experiment `cfg` with its cells spread over `num_workers` Ray tasks; returns the
    summary (as run_experiment does) with `workers`: what each worker ran and how long it took."""
    _check_workers(num_workers)
    ray = _ray(address)
    gpus = _gpus_per_worker(ray, num_gpus)
    t0 = time.perf_counter()
    if prescore:                                     # fill the shared feature cache once, over all workers
        needs = needed_features([parse_strategy(s) for s in cfg.strategies], cfg.orderings) | set(cfg.features)
        needs -= set(probes.provided_names())
        if needs & COMPUTED_FEATURES:
            pool = load_data(cfg.data, seed=cfg.seeds[0]).pool
            actors = start_scorers(num_workers, cfg.model, num_gpus=gpus, cpus_per_worker=cpus_per_worker)
            score_pool_ray(pool, needs, cfg.model, num_workers, actors=actors)
            for a in actors:
                ray.kill(a)                          # give their GPUs back to the sweep tasks
    task = ray.remote(_sweep_task).options(num_cpus=cpus_per_worker, num_gpus=gpus, max_retries=0)
    env = worker_env()
    reports = ray.get([task.remote(cfg, env) for _ in range(num_workers)])
    final = ray.get(task.remote(cfg, env, keep_summary=True))   # every cell done: the summary over all of them
    summary = final.pop("summary")
    summary["workers"] = reports + [{**final, "final": True}]
    summary["ray_seconds"] = time.perf_counter() - t0
    log.info("ray sweep: %d workers ran %s cells; the final pass ran %d", num_workers,
             sum(len(r["ran"]) for r in reports), len(final["ran"]))
    return summary
