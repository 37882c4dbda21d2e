"""The experiment runner: config in, steps in order, results out.

    data -> features (once) -> untrained floor -> for each cell (strategy x ordering x seeds, grid.py):
        select (subset seed) -> order (order seed) -> LoRA train (init seed) -> generate & score
    -> paired comparison with random -> table

The base model is loaded once and reused by every run (peft adds and removes the adapter). Each
run writes `runs/<run_id>.json` atomically when it finishes; re-running the same out_dir skips
finished runs, so a killed experiment resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import platform
import time
import traceback
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

import yaml

from llm_al import models
from llm_al.analysis.table import summarize, write_tables
from llm_al.config import ExperimentConfig, parse_strategy, to_dict
from llm_al.errors import BudgetError, UserError
from llm_al.evaluate import evaluate
from llm_al.features.reference_index import reference_index
from llm_al.io import claim, confined, write_json, write_text
from llm_al.run.cell import order_for_training, train_in_order
from llm_al.run.grid import Cell, cells
from llm_al.run.loop import run_loop
from llm_al.run.pipeline import compute_features, load_data
from llm_al.run.packed import Sweep, run_packed
from llm_al.run.record import describe_subset, run_header, selection_record
from llm_al.run.resources import check_run_resources, check_writable
from llm_al.seeds import rng
from llm_al.strategies.base import run_strategy
from llm_al.strategies.needs import needed_features
from llm_al.train import detach_lora, save_adapter

log = logging.getLogger("llm_al")
PACKAGES = ("llm-al", "torch", "transformers", "peft", "sentence-transformers", "numpy", "sacrebleu",
            "rouge-score", "datasets", "django")


def versions() -> dict:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


# The config sections that decide a single run's result. Seeds, strategies and names may change
# between invocations of the same out_dir (to add runs); these may not.
RESULT_KEYS = ("data", "model", "train", "eval", "overlap", "loop", "probe")


def _done(path: Path, cfg_dict: dict, budget: int | None = None) -> dict | None:
    """The finished result at `path`, if any; an error if it came from a different config (or,
    for a run, a different budget)."""
    if not path.exists():
        return None
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None
    if result.get("status") != "ok":
        return None
    old = result.get("config", {})
    defaults = to_dict(ExperimentConfig())      # a section or key added since that run was written had its default
    changed = [k for k in RESULT_KEYS if _with_defaults(old.get(k, defaults[k]), defaults[k]) != cfg_dict[k]]
    if budget is not None and result.get("budget", old.get("budget")) != budget:
        changed.append("budget")
    if changed:
        raise UserError(f"{path} was produced with a different config ({', '.join(changed)} differ); "
                        "use a new out_dir, or delete the old results to recompute them")
    return result


def _with_defaults(section, default):
    """A config section as written by an older version, with the keys added since at their defaults."""
    return {**default, **section} if isinstance(section, dict) and isinstance(default, dict) else section


def check_out_dir(out: Path) -> None:
    """Create the output directory and check it is writable (a per-process probe: Ray workers check
    one out_dir at once)."""
    check_writable(out, "output directory")


def run_experiment(cfg: ExperimentConfig) -> dict:
    t_start = time.perf_counter()
    out = Path(cfg.out_dir)
    check_out_dir(out)
    write_text(out / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True))
    data = load_data(cfg.data, seed=cfg.seeds[0])
    if max(cfg.budget_list) > len(data.pool):
        raise BudgetError(max(cfg.budget_list), len(data.pool))
    specs = [(spec, *parse_strategy(spec)) for spec in cfg.strategies]

    model, tokenizer = models.load_model(cfg.model.name, cfg.model.device, dtype=cfg.model.dtype,
                                         trust_remote_code=cfg.model.trust_remote_code)
    needs = needed_features([(name, params) for _, name, params in specs], cfg.orderings) | set(cfg.features)
    check_run_resources(cfg, model, needs, runs=len(cells(cfg, specs)), pool_size=len(data.pool),
                        test_size=len(data.test), cache_dir=models.cache_root() / "features")
    features = compute_features(data.pool, needs, cfg.model, (model, tokenizer), cfg.progress, cfg=cfg)
    index = (reference_index(cfg.overlap.reference, cfg.overlap.n, cfg.overlap.reference_field,
                             cfg.overlap.reference_split) if cfg.overlap.reference else None)
    cfg_dict = to_dict(cfg)
    common = {"config": cfg_dict, "versions": versions(), "pool_size": len(data.pool),
              "test_size": len(data.test), "notes": data.notes}

    floor_path = out / "runs" / "untrained.json"
    floor = _done(floor_path, cfg_dict)
    if floor is None:
        log.info("evaluating the untrained model (the floor)")
        ev = evaluate(model, tokenizer, data.test.examples, cfg.eval, cfg.progress)
        floor = {"run_id": "untrained", "strategy": "untrained", "status": "ok", "eval": ev,
                 "timings": {"eval_seconds": ev["seconds"]}, **common}
        write_json(floor_path, floor)

    if cfg.loop.rounds or cfg.run.pack_size == "alone":   # a loop's rounds depend on each other
        results, busy = _run_one_by_one(cfg, specs, data, features, model, tokenizer, out, common, index)
    else:
        sweep = Sweep(cfg, data, features, model, tokenizer, out, common, index)
        results, busy = run_packed(
            sweep, cells(cfg, specs), lambda cell, path: _done(path, cfg_dict, cell.budget),
            lambda cell, path: _one_run(cfg, cell, data, features, model, tokenizer, path, out, common, index)[0])
    if busy:
        log.info("%d cells were running in other workers: %s", len(busy), ", ".join(busy[:5]))

    summary = summarize(results, floor, cfg, features.cost)
    summary["feature_cost"] = features.cost
    summary["total_seconds"] = time.perf_counter() - t_start
    write_json(out / "summary.json", summary)
    write_tables(summary, out)
    return summary


def _run_one_by_one(cfg, specs, data, features, model, tokenizer, out, common, index):
    """Every cell alone, in order (the AL loop's path): (results, cells other workers held)."""
    cfg_dict = to_dict(cfg)
    results, busy = [], []
    for cell in cells(cfg, specs):
        path = confined(out / "runs", f"{cell.run_id}.json")
        done = _done(path, cfg_dict, cell.budget)
        if done is not None:
            log.info("%s: already done, skipping", path.name)
            results.append(done)
            continue
        with claim(path) as mine:
            if not mine:                 # another live worker is running this cell
                busy.append(cell.run_id)
                continue
            log.info("running %s", cell.run_id)
            record, model = _one_run(cfg, cell, data, features, model, tokenizer, path, out, common, index)
        results.append(record)
    return results, busy


def _one_run(cfg: ExperimentConfig, cell: Cell, data, features, model, tokenizer, path, out, common, index):
    """Select, order, train, evaluate; write the result. Returns (record, the base model again)."""
    record = run_header(cell, common)
    timings: dict = {}
    peft_model = None
    try:
        if cfg.loop.rounds:
            rounds, final, ev, model = run_loop(cfg, cell, data, features, model, tokenizer, cfg.progress)
            record.update({
                "status": "ok", "rounds": rounds, "eval": ev,
                "selection": {"ids": [data.pool.ids[i] for i in final], "indices": final.tolist()},
                **describe_subset(cfg, data, features, index, final),
                "timings": {"train_seconds": sum(r["train_seconds"] for r in rounds),
                            "select_seconds": sum(r.get("rescore_seconds", 0.0) for r in rounds),
                            "eval_seconds": sum(r["eval_seconds"] for r in rounds)}})
            write_json(path, record)
            return record, model
        t0 = time.perf_counter()
        sel = run_strategy(cell.name, features, cell.budget, rng(cell.subset_seed, "subset"), **cell.params)
        order = order_for_training(cell, sel.indices, features)
        timings["select_seconds"] = time.perf_counter() - t0
        peft_model, tr = train_in_order(model, tokenizer, data.pool.examples, order, cell, cfg, cfg.progress)
        timings["train_seconds"] = tr.seconds
        if cfg.save_adapters:
            save_adapter(peft_model, confined(out / "adapters", path.stem))
        ev = evaluate(peft_model, tokenizer, data.test.examples, cfg.eval, cfg.progress)
        timings["eval_seconds"] = ev["seconds"]
        model, peft_model = detach_lora(peft_model), None
        record.update({"status": "ok", **selection_record(cfg, data, features, index, sel, order),
                       "train": asdict(tr), "eval": ev, "timings": timings})
        write_json(path, record)
    except (UserError, KeyboardInterrupt):
        raise
    except Exception as err:  # record the failure, keep the other runs going
        log.error("%s failed: %s", path.stem, err)
        record.update({"status": "failed", "error": f"{type(err).__name__}: {err}",
                       "traceback": traceback.format_exc(), "timings": timings})
        write_json(path, record)
        if peft_model is not None:
            model = detach_lora(peft_model)
    return record, model
