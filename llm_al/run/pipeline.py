"""The steps shared by `llm-al run/demo` and `llm-al select`: read the data, compute the features a
set of strategies and orderings needs (each at most once, cached on disk)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from llm_al import models
from llm_al.config import DataConfig, EvalConfig, ExperimentConfig, ModelConfig, OverlapConfig, TrainConfig

from llm_al.data.pool import Pool, drop_overlap, load_pool, records_to_pool, split_pool
from llm_al.data.tasks import is_task, load_task, task_name
from llm_al.errors import FeatureUnavailableError
from llm_al.features import probes
from llm_al.features.engine import build_features, compute_embeddings, compute_model_features, ifd_from_stats
from llm_al.seeds import rng
from llm_al.types import DIRECT_FEATURES, LOSS_FEATURES, Features

log = logging.getLogger("llm_al")


@dataclass
class Data:
    pool: Pool
    test: Pool | None
    notes: list[str]


def load_data(cfg: DataConfig, seed: int = 0, need_test: bool = True) -> Data:
    """Pool and test set per a DataConfig: an embedded task, or files with an optional seeded split.
    Test examples that also sit in the pool are removed from the pool (no train/test leak)."""
    notes: list[str] = []
    if is_task(cfg.pool):
        task = load_task(task_name(cfg.pool))
        system = cfg.system_prompt if cfg.system_prompt is not None else task.system_prompt
        shape = {"system_prompt": system, **({"translation_template": task.template} if task.template else {})}
        pool = records_to_pool(task.pool, path=cfg.pool, **shape)
        test = None if cfg.test is not None else records_to_pool(task.test, path=cfg.pool + ":test", **shape)
    else:
        system = cfg.system_prompt
        pool = load_pool(cfg.pool, fields=cfg.fields, system_prompt=system, split=cfg.split,
                         languages=(cfg.source_lang, cfg.target_lang))
        test = None
    if pool.duplicates:
        notes.append(f"pool: {pool.duplicates_note()}")
    if cfg.test is not None:
        test = load_pool(cfg.test, fields=cfg.fields, system_prompt=system, split=cfg.split,
                         languages=(cfg.source_lang, cfg.target_lang))
    elif test is None and need_test:
        pool, test = split_pool(pool, cfg.test_size, seed=int(rng(seed, "split").integers(2**31)))
        notes.append(f"no test set given: held out {len(test)} pool examples (seeded split)")
    if test is not None:
        pool, removed = drop_overlap(pool, test)
        if removed:
            notes.append(f"{removed} pool examples also in the test set (or sharing a test prompt) were removed "
                         "from the pool")
        if cfg.max_test is not None:
            test = test.subset(range(min(cfg.max_test, len(test))))
    if cfg.max_pool is not None and cfg.max_pool < len(pool):
        keep = np.sort(rng(seed, "pool_sample").choice(len(pool), cfg.max_pool, replace=False))
        pool = pool.subset(keep.tolist())
        notes.append(f"pool sampled down to {cfg.max_pool} examples (max_pool)")
    for note in notes:
        log.info(note)
    return Data(pool, test, notes)


def compute_features(pool: Pool, needs: set[str], model_cfg: ModelConfig, model_and_tokenizer=None,
                     progress: bool = True, cfg: ExperimentConfig | None=None) -> Features:
    """Only what `needs` asks for. `model_and_tokenizer` reuses a loaded model; else one is loaded.
    `cfg` (an ExperimentConfig) supplies the probe, train and eval settings probes use; defaults
    when None."""
    cache_dir = models.cache_root() / "features"
    if needs - {"length"}:                  # every other feature is cached: fail now, not after scoring
        from llm_al.run.resources import check_writable

        check_writable(cache_dir, "the feature cache (set LLM_AL_CACHE to a writable folder)")
    stats: dict[str, np.ndarray] = {}
    cost: dict = {}
    probe_needs = needs & set(probes.provided_names())
    if probe_needs and probes.needs_model(probe_needs) and model_and_tokenizer is None:
        model_and_tokenizer = models.load_model(model_cfg.name, model_cfg.device, dtype=model_cfg.dtype,
                                                trust_remote_code=model_cfg.trust_remote_code)

    def passes(name: str, model, tokenizer, which: set[bool], prefix: str = "", embed: bool = False) -> None:
        """The with-prompt (False) and/or without-prompt (True) passes of one model; `embed`: the
        with-prompt pass also pools the model's hidden states (model.embedder=model)."""
        key = models.fingerprint(name)
        for direct in sorted(which):
            s, vec, c = compute_model_features(model, tokenizer, pool.examples, cache_dir, key, model_cfg.max_length,
                                               model_cfg.score_max_tokens, progress, direct=direct,
                                               embed=embed and not direct)
            stats[prefix + ("direct" if direct else "loss")] = s
            if vec is not None:
                stats["pooled"] = vec                                   # (N, H) unit rows
            cost.update({prefix + k: v for k, v in c.items()})

    # model.embedder=model: the embeddings come out of the with-prompt pass (its loss stats come free)
    embed_model = "embeddings" in needs and model_cfg.embedder == models.MODEL_EMBEDDER
    which = {d for d, group in ((False, LOSS_FEATURES), (True, DIRECT_FEATURES)) if needs & group}
    if which or embed_model:
        model_and_tokenizer = model_and_tokenizer or models.load_model(
            model_cfg.name, model_cfg.device, dtype=model_cfg.dtype, trust_remote_code=model_cfg.trust_remote_code)
        passes(model_cfg.name, *model_and_tokenizer, which | ({False} if embed_model else set()), embed=embed_model)
    scorer_ifd = None
    if "scorer_ifd" in needs:
        if not model_cfg.scorer:
            raise FeatureUnavailableError("scorer_ifd (Superfiltering) needs a second, small scorer model: "
                                          "set model.scorer to a hub id or local folder (e.g. a GPT-2-size model)")
        scorer, scorer_tok = models.load_model(model_cfg.scorer, model_cfg.device, dtype=model_cfg.dtype,
                                               trust_remote_code=model_cfg.trust_remote_code)
        passes(model_cfg.scorer, scorer, scorer_tok, {False, True}, prefix="scorer_")
        scorer_ifd = ifd_from_stats(stats["scorer_loss"], stats["scorer_direct"])
        del scorer
    embeddings = stats.get("pooled")
    if "embeddings" in needs and not embed_model:
        embedder = models.load_embedder(model_cfg.embedder, model_cfg.device)
        embeddings, c = compute_embeddings(embedder, [ex.text for ex in pool.examples], cache_dir,
                                           models.fingerprint(model_cfg.embedder), progress_bar=progress)
        cost.update(c)
    features = build_features(pool.examples, pool.ids, loss_stats=stats.get("loss"), direct_stats=stats.get("direct"),
                              scorer_ifd=scorer_ifd, embeddings=embeddings, cost=cost)
    if probe_needs:
        model, tokenizer = model_and_tokenizer or (None, None)
        ctx = probe_context(pool.examples, model, tokenizer, model_cfg, cfg, progress, pool_path=pool.path,
                            cache_dir=cache_dir,   # model-free probes: no fingerprint (it may convert a model)
                            model_key=models.fingerprint(model_cfg.name) if probes.needs_model(probe_needs) else "")
        scores, probe_cost = probes.run_probes(probe_needs, ctx)
        features.scores.update(scores)
        features.cost.update({f"probe_{k}": v for k, v in probe_cost.items()})
    return features


def probe_context(examples, model, tokenizer, model_cfg: ModelConfig | None, cfg: ExperimentConfig | None, progress: bool, *, labelled=None,
                  cache_dir=None, model_key: str = "", pool_path: str | None = None) -> probes.ProbeContext:
    """The ProbeContext for `examples`, with the probe/train/eval settings of `cfg` (or defaults);
    `pool_path` (default cfg.data.pool): where the pool came from (a target-set probe's default)."""
    return probes.ProbeContext(
        examples=examples, model=model, tokenizer=tokenizer, model_cfg=model_cfg,
        probe_cfg=cfg.probe if cfg is not None else probes.ProbeConfig(),
        train_cfg=cfg.train if cfg is not None else TrainConfig(),
        eval_cfg=cfg.eval if cfg is not None else EvalConfig(),
        overlap_cfg=cfg.overlap if cfg is not None else OverlapConfig(),
        labelled=labelled, cache_dir=cache_dir, model_key=model_key, progress=progress,
        pool_path=pool_path or (cfg.data.pool if cfg is not None else None),
        data_cfg=cfg.data if cfg is not None else None)
