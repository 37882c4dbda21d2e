"""The pool-based, multi-round active-learning loop.

    seed set (seed_strategy, e.g. random) -> round 0: fine-tune on it, evaluate
    round r: rescore the remaining pool with the round's adapter, select `round_size` more with the
             strategy (the remaining pool are its candidates; everything selected so far is attached
             as `Features.labelled`), fine-tune afresh on everything selected so far, evaluate

Each round's metric is recorded, so a strategy's learning curve sits beside random's. Model-based
features (loss, entropy, min_k, ifd) are recomputed under the current adapter for the examples
still in the pool; embeddings stay those of the base embedder. The labelled set carries the base
features (`labelled_features`: embeddings, n-gram counts and the other scores of the first pass;
a probe score the strategy reads there but the base lacks is computed for the labelled examples),
so a diversity strategy (kcenter, facility_location, ngram_coverage, ...: those registered
labelled="used: ...") picks away from what earlier rounds already chose. Scores that read the
reference response (loss, IFD, Min-K%) assume a labelled pool, i.e. selection of fine-tuning data
with the model in the loop; for a pool whose responses are truly unknown use label-free strategies
(the embedding-based ones, or random).
"""

from __future__ import annotations

import time

import numpy as np

from llm_al.config import ExperimentConfig
from llm_al.evaluate import evaluate
from llm_al.features import probes
from llm_al.features.engine import build_features, direct_items, response_token_stats
from llm_al.features.formatting import plain_start_id, tokenize
from llm_al.run.cell import order_for_training, train_in_order
from llm_al.run.grid import Cell
from llm_al.run.pipeline import probe_context
from llm_al.seeds import rng
from llm_al.strategies.base import run_strategy
from llm_al.strategies.needs import labelled_needs, strategy_needs
from llm_al.train import detach_lora
from llm_al.types import MODEL_FEATURES, Features



def rescore(model, tokenizer, base: Features, examples, indices: np.ndarray, needs: set[str], cfg: ExperimentConfig | None,
            labelled: list[int]) -> Features:
    """Features of pool[indices] under `model` (an adapter), keeping the base embeddings and
    scorer IFD: the one-pass statistics when `needs` asks for them, and every probe score it asks
    for (with the labelled examples so far, for probes such as a committee that train on them).
    A probe registered `same_every_round=True` (rds_targets: similarity to a target set under the
    base embedder) keeps the base scores where the base has them: the adapter does not change them."""
    sub = base.take(indices)
    chosen = [examples[i] for i in indices]
    if needs & MODEL_FEATURES:
        items = tokenize(tokenizer, chosen, cfg.model.max_length)
        stats = response_token_stats(model, items, tokenizer.pad_token_id)
        direct_stats = None
        if needs & {"ifd", "direct_loss"}:
            direct_stats = response_token_stats(model, direct_items(items, plain_start_id(tokenizer)),
                                                tokenizer.pad_token_id)
        fresh = build_features(chosen, sub.ids, loss_stats=stats, direct_stats=direct_stats, embeddings=sub.embeddings)
        fresh.scorer_ifd, fresh.scores = sub.scorer_ifd, sub.scores
        sub = fresh
    probe_needs = {f for f in needs & set(probes.provided_names())
                   if f not in sub.scores or not probes.provider(f).meta.get("same_every_round", False)}
    if probe_needs:
        ctx = probe_context(chosen, model, tokenizer, cfg.model, cfg, progress=False,
                            labelled=[examples[i] for i in labelled])
        scores, _ = probes.run_probes(probe_needs, ctx)
        sub.scores = {**sub.scores, **scores}
    return sub


def labelled_features(candidates: Features, base: Features, examples, labelled: list[int], lab_needs: set[str],
                      model, tokenizer, cfg: ExperimentConfig | None) -> Features:
    """`candidates` with the labelled examples attached (Features.with_labelled): their rows of the
    base features, plus each probe score in `lab_needs` (what the strategy reads from the labelled
    set, needs.labelled_needs) that the base lacks, computed for them by its probe under `model`.
    Per-round model scores of the labelled rows stay the base ones: no strategy reads them there."""
    lab = base.take(labelled)
    missing = (lab_needs & set(probes.provided_names())) - set(lab.scores)
    if missing and labelled:
        ctx = probe_context([examples[i] for i in labelled], model, tokenizer, cfg.model if cfg else None, cfg,
                            progress=False, labelled=[examples[i] for i in labelled])
        scores, _ = probes.run_probes(missing, ctx)
        lab.scores = {**lab.scores, **{k: v for k, v in scores.items() if k in missing}}
    return candidates.with_labelled(lab)


def run_loop(cfg: ExperimentConfig, cell: Cell, data, features: Features, model, tokenizer, progress: bool):
    """All rounds of one cell. Returns (rounds list, final selection indices, final eval, model)."""
    round_size = cfg.loop.round_size(cell.budget)
    needs = strategy_needs(cell.name, cell.params)
    model_needs = bool(needs & (MODEL_FEATURES | set(probes.provided_names())))
    select_rng = rng(cell.subset_seed, "subset")
    seed = run_strategy(cfg.loop.seed_strategy, features, cfg.loop.seed_size, select_rng)
    labelled = list(seed.indices)
    rounds, ev = [], None
    for r in range(cfg.loop.rounds + 1):
        t0 = time.perf_counter()
        order = order_for_training(cell, labelled, features)
        peft_model, tr = train_in_order(model, tokenizer, data.pool.examples, order, cell, cfg, progress)
        try:
            ev = evaluate(peft_model, tokenizer, data.test.examples, cfg.eval, progress)
            entry = {"round": r, "labelled": len(labelled), "metrics": ev["metrics"],
                     "train_seconds": tr.seconds, "eval_seconds": ev["seconds"],
                     "train_oom_backoffs": tr.oom_backoffs, "train_micro_batch_size": tr.micro_batch_size}
            if r < cfg.loop.rounds:
                t1 = time.perf_counter()
                remaining = np.setdiff1d(np.arange(len(data.pool)), labelled)
                pool_features = (rescore(peft_model, tokenizer, features, data.pool.examples, remaining,
                                         needs, cfg, labelled)
                                 if model_needs else features.take(remaining))
                pool_features = labelled_features(pool_features, features, data.pool.examples, labelled,
                                                  labelled_needs(cell.name), peft_model, tokenizer, cfg)
                sel = run_strategy(cell.name, pool_features, round_size, select_rng, **cell.params)
                labelled += remaining[sel.indices].tolist()
                entry["rescore_seconds"] = time.perf_counter() - t1
            entry["seconds"] = time.perf_counter() - t0
            rounds.append(entry)
        finally:
            model = detach_lora(peft_model)
    return rounds, np.array(labelled), ev, model
