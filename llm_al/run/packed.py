"""Packs: a sweep's cells trained and evaluated K at a time in one pass over the base model
(grouped LoRA: llm_al.train_grouped, llm_al.grouped).

    pending cells -> packs of K (pack_size) -> per cell: claim, select, order (as a run alone does)
        -> train_grouped: one pass, each run with its own order, init seed, optimizer state,
           schedule and clipping; the shared prompt prefix once per step, suffixes packed
        -> each adapter saved as an ordinary peft adapter -> one grouped greedy generation
        -> each cell's metrics -> runs/<run_id>.json (atomic), one file per cell

What is per cell stays per cell: its result file, its claim (held while its pack runs: a pack
killed half way leaves its unfinished cells unclaimed, and a resumed sweep packs only those), and
its failure (a strategy that fails records a failed run; the pack goes on without it). Out of
accelerator memory in a pack of K > 1 splits it in two halves and runs each; a pack of one that
still runs out goes the one-run path, whose training halves micro-batches (llm_al.train) and
whose generation halves its batch (llm_al.evaluate). Packed and one-by-one runs agree to float
rounding (tests/test_grouped.py, tests/test_packed.py); each record says which pack it was in.
"""

from __future__ import annotations

import logging
import time
import traceback
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from llm_al.config import ExperimentConfig
from llm_al.errors import UserError
from llm_al.evaluate import score_predictions
from llm_al.features.formatting import prompt_text, tokenize
from llm_al.features.memory import free_accelerator_memory, out_of_memory_errors
from llm_al.grouped import export_adapter, grouped_generate
from llm_al.io import claim, confined, write_json
from llm_al.run.cell import order_for_training
from llm_al.run.grid import Cell
from llm_al.run.record import run_header, selection_record
from llm_al.seeds import rng, stream_seed
from llm_al.strategies.base import run_strategy
from llm_al.train_grouped import GroupedRun, train_grouped

log = logging.getLogger("llm_al")

CPU_PACK = 4
"""pack_size "auto" on a CPU. Training is compute-bound there, so stacking runs adds little: on the
2-core machine with 2 threads a pack of 4 ran 1.09x the runs per hour of a pack of 1 (at 1 thread
0.91x; eval/results/bench_throughput-cpu.txt)."""
MAX_AUTO_PACK = 64
"""The largest pack "auto" picks on a GPU (the H200 benchmark went up to 64)."""


@dataclass
class Sweep:
    """What every run of a sweep shares: the config, data, features, model and where results go."""

    cfg: ExperimentConfig
    data: object
    features: object
    model: object
    tokenizer: object
    out: Path
    common: dict
    index: object


def run_memory_bytes(model, cfg: ExperimentConfig) -> int:
    """An upper estimate of the memory one more run in a pack takes: its adapter with gradient and
    AdamW moments (4 float32 copies) plus the activations a micro-batch of batch_size x max_length
    tokens keeps for the backward (per token and layer ~10 hidden-size and 4 intermediate-size
    vectors in the model's dtype). Real micro-batches are shorter than max_length."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    hidden, layers = config.hidden_size, config.num_hidden_layers
    inter = getattr(config, "intermediate_size", 4 * hidden)
    elem = next(model.parameters()).element_size()
    r = cfg.train.lora_r
    adapter = layers * r * (4 * hidden + 2 * hidden + 3 * (hidden + inter)) * 4 * 4   # q k v o, gate up down
    tokens = cfg.train.batch_size * cfg.model.max_length
    return int(adapter + tokens * layers * (10 * hidden + 4 * inter) * elem)


def pack_size(cfg: ExperimentConfig, model) -> int:
    """run.pack_size, or for "auto": CPU_PACK on a CPU; on a GPU, as many runs as half its free
    memory holds by run_memory_bytes, 1..MAX_AUTO_PACK."""
    if cfg.run.pack_size != "auto":
        return int(cfg.run.pack_size)
    import torch

    device = next(model.parameters()).device
    if device.type != "cuda":
        return CPU_PACK
    free, _ = torch.cuda.mem_get_info(device)
    return int(max(1, min(MAX_AUTO_PACK, free // 2 // run_memory_bytes(model, cfg))))


def run_packed(sw: Sweep, cells: list[Cell], done: Callable[[Cell, Path], dict | None],
               one_run: Callable[[Cell, Path], dict]) -> tuple[list[dict], list[str]]:
    """Every cell's result (finished earlier, or run now in packs), and the cells other workers
    held. `done(cell, path)` is a finished result or None; `one_run(cell, path)` runs a cell alone
    (the fallback of a pack of one that runs out of memory)."""
    K = pack_size(sw.cfg, sw.model)
    results, busy, pending = [], [], []
    with ExitStack() as held:
        for cell in cells:
            path = confined(sw.out / "runs", f"{cell.run_id}.json")
            finished = done(cell, path)
            if finished is not None:
                log.info("%s: already done, skipping", path.name)
                results.append(finished)
                continue
            if not held.enter_context(claim(path)):      # another live worker is running this cell
                busy.append(cell.run_id)
                continue
            pending.append((cell, path))
            if len(pending) == K:
                results += _run_pack(sw, pending, one_run)
                held.close()
                pending = []
        if pending:
            results += _run_pack(sw, pending, one_run)
    return results, busy


def _run_pack(sw: Sweep, pack: list[tuple[Cell, Path]], one_run) -> list[dict]:
    """Select and order each cell, then train and evaluate the pack; returns the records."""
    log.info("a pack of %d runs", len(pack))
    for cell, _ in pack:
        log.info("running %s", cell.run_id)                   # one line per cell: sweep workers count them
    chosen, records = [], []
    for cell, path in pack:
        record = run_header(cell, sw.common)
        try:
            t0 = time.perf_counter()
            sel = run_strategy(cell.name, sw.features, cell.budget, rng(cell.subset_seed, "subset"), **cell.params)
            order = order_for_training(cell, sel.indices, sw.features)
            record["timings"] = {"select_seconds": time.perf_counter() - t0}
            chosen.append((cell, path, record, sel, order))
        except (UserError, KeyboardInterrupt):
            raise
        except Exception as err:  # record the failure, keep the other runs going
            records.append(_failed(record, path, err))
    if chosen:
        records += _train_and_evaluate(sw, chosen, one_run)
    return records


def _train_and_evaluate(sw: Sweep, chosen: list, one_run) -> list[dict]:
    """train_grouped + grouped generation for the chosen cells, splitting the pack on out-of-memory."""
    try:
        return _grouped_pass(sw, chosen)
    except out_of_memory_errors():
        free_accelerator_memory()
        if len(chosen) == 1:
            cell, path = chosen[0][:2]
            log.warning("out of memory in a pack of one; running %s alone", cell.run_id)
            return [one_run(cell, path)]
        half = len(chosen) // 2
        log.warning("out of memory in a pack of %d; splitting it into %d + %d", len(chosen), half,
                    len(chosen) - half)
        return _train_and_evaluate(sw, chosen[:half], one_run) + _train_and_evaluate(sw, chosen[half:], one_run)
    except (UserError, KeyboardInterrupt):
        raise
    except Exception as err:  # the pass failed: every run in it failed
        return [_failed(record, path, err) for _, path, record, _, _ in chosen]


def _grouped_pass(sw: Sweep, chosen: list) -> list[dict]:
    cfg, model, tok = sw.cfg, sw.model, sw.tokenizer
    examples = sw.data.pool.examples
    runs = [GroupedRun(tokenize(tok, [examples[i] for i in order], cfg.model.max_length),
                       stream_seed(cell.init_seed, "init")) for cell, _, _, _, order in chosen]
    lora, trained = train_grouped(model, runs, tok.pad_token_id, cfg.train, progress_bar=cfg.progress)
    if cfg.save_adapters:
        for k, (_, path, _, _, _) in enumerate(chosen):
            export_adapter(model, lora, k, confined(sw.out / "adapters", path.stem))
    test = sw.data.test.examples
    t0 = time.perf_counter()
    prompts = [prompt_text(tok, ex.prompt_messages) for ex in test]
    generations = grouped_generate(model, tok, lora, prompts, cfg.eval.max_new_tokens, cfg.eval.batch_size)
    gen_share = (time.perf_counter() - t0) / len(chosen)
    ids = [cell.run_id for cell, *_ in chosen]
    records = []
    for k, ((cell, path, record, sel, order), tr) in enumerate(zip(chosen, trained)):
        ev = score_predictions(test, generations[k], cfg.eval, gen_share)
        record["timings"].update({"train_seconds": tr.seconds, "eval_seconds": ev["seconds"]})
        record.update({"status": "ok", **selection_record(cfg, sw.data, sw.features, sw.index, sel, order),
                       "train": asdict(tr), "eval": ev, "timings": record["timings"],
                       "pack": {"size": len(chosen), "position": k, "runs": ids}})
        write_json(path, record)
        records.append(record)
    return records


def _failed(record: dict, path: Path, err: Exception) -> dict:
    log.error("%s failed: %s", path.stem, err)
    record.update({"status": "failed", "error": f"{type(err).__name__}: {err}",
                   "traceback": traceback.format_exc(), "timings": record.get("timings", {})})
    write_json(path, record)
    return record
