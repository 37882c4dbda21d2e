"""Score a recorded run with EleutherAI's lm-evaluation-harness (the optional `harness` extra:
pip install 'llm-al[harness]') and add the scores to the run's result file.

    llm-al eval-harness eval/results/demo-cpu/adapters/random-shuffled-s0o0i0 --tasks arc_easy --limit 100

A run is named by its saved adapter folder, RESULTS_DIR/adapters/RUN_ID (where `llm-al run` saves
it when `save_adapters` is true), or by its result file, RESULTS_DIR/runs/RUN_ID.json; either way
the command reads the base model (model.name, dtype, device) from the run's embedded config, has
lm-eval's HFLM load it with the adapter on top (`peft=`), and writes the scores into
RESULTS_DIR/runs/RUN_ID.json under "harness", one entry per task:

    "harness": {"arc_easy": {"metrics": {"acc": 0.41, "acc_stderr": 0.02, ...},
                             "higher_is_better": {"acc": true, ...}, "n_samples": 100, "limit": 100,
                             "lm_eval_version": "0.4.13", "adapter": "adapters/RUN_ID", ...}}

The file is re-read just before the atomic write and only "harness" changes: a task evaluated
again replaces its entry, other tasks' entries and every other key are kept. RESULTS_DIR/runs/
untrained.json (the floor) is scored as the base model alone, for comparison.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import yaml

from llm_al import models
from llm_al.errors import UnknownNameError, UserError
from llm_al.io import write_json
from llm_al.registry import did_you_mean

log = logging.getLogger("llm_al")
INSTALL_HINT = "pip install 'llm-al[harness]'"
BOOTSTRAP_ITERS = 1000
"""Bootstrap resamples for the stderr of metrics that are not means (lm-eval's default is 100000;
means such as acc get a closed-form stderr either way)."""


@dataclass(frozen=True)
class RunFiles:
    """Where a recorded run lives: its results folder, id, result file and adapter (None: the floor)."""
    results_dir: Path
    run_id: str
    result_path: Path
    adapter: Path | None


def require_lm_eval():
    """The lm_eval module, or a UserError saying how to install it."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM  # noqa: F401  (the model class this module needs)
    except ImportError as err:
        raise UserError(f"eval-harness needs lm-evaluation-harness, which is not installed ({err}): "
                        f"{INSTALL_HINT}") from None
    return lm_eval


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise UserError(f"{path} is not valid JSON ({err})") from None


def locate_run(run: str | Path) -> tuple[RunFiles, dict]:
    """(where the run named by `run` lives, its result record). `run` is RESULTS_DIR/adapters/RUN_ID
    or RESULTS_DIR/runs/RUN_ID.json; anything else, or a run with no adapter, is a UserError
    saying what is missing."""
    path = Path(run).expanduser()
    if path.suffix == ".json" and path.parent.name == "runs":
        results, run_id = path.parent.parent, path.stem
    elif path.parent.name == "adapters":
        results, run_id = path.parent.parent, path.name
    elif (path / "runs").is_dir():
        ids = sorted(p.name for p in (path / "adapters").glob("*") if (p / "adapter_config.json").exists())
        listed = f"runs with a saved adapter: {', '.join(ids[:8])}{' ...' if len(ids) > 8 else ''}" if ids else \
            "none of its runs has a saved adapter"
        raise UserError(f"{str(run)!r} is a results folder; name one run in it, as {path / 'adapters' / 'RUN_ID'} "
                        f"({listed})")
    else:
        raise UserError(f"{str(run)!r} names no run: give RESULTS_DIR/adapters/RUN_ID (the run's saved adapter) "
                        "or RESULTS_DIR/runs/RUN_ID.json (its result file)")
    result_path = results / "runs" / f"{run_id}.json"
    if not result_path.is_file():
        known = sorted(p.stem for p in (results / "runs").glob("*.json"))
        raise UserError(f"no result file {result_path}: run {run_id!r} was not recorded in {results}."
                        + (did_you_mean(run_id, known) if known else " It holds no runs/*.json."))
    record = _read_json(result_path)
    if record.get("strategy") == "untrained":
        return RunFiles(results, run_id, result_path, None), record
    if record.get("status") != "ok":
        raise UserError(f"run {run_id!r} did not finish (status {record.get('status')!r} in {result_path}): "
                        "nothing to evaluate")
    adapter = results / "adapters" / run_id
    if not (adapter / "adapter_config.json").is_file():
        raise UserError(_no_adapter(run_id, adapter, record, results))
    return RunFiles(results, run_id, result_path, adapter), record


def _no_adapter(run_id: str, adapter: Path, record: dict, results: Path) -> str:
    """Why a finished run has no adapter to load, as far as its record tells."""
    if not run_config(record, results).get("save_adapters", True):
        return (f"run {run_id!r} has no saved adapter: this results folder was recorded with save_adapters: false; "
                "re-run the experiment with save_adapters=true into a new out_dir to keep adapters")
    if record.get("rounds"):
        return f"run {run_id!r} is an active-learning loop run (loop.rounds): loop runs save no adapter"
    return (f"run {run_id!r} has no saved adapter: {adapter / 'adapter_config.json'} is missing "
            "(adapters/ folders are not kept in git: was the results folder copied without it?)")


def run_config(record: dict, results: Path) -> dict:
    """The resolved config the run embeds; RESULTS_DIR/config.yaml for an older record without one."""
    if isinstance(record.get("config"), dict):
        return record["config"]
    path = results / "config.yaml"
    return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path.is_file() else {}


def task_manager(tasks: Sequence[str], include_path: Sequence[str | Path] = ()):
    """lm-eval's TaskManager that knows every task in `tasks`; an unknown one is an UnknownNameError.
    When the include folders alone define them all, lm-eval's ~15k built-in tasks are not indexed (~5 s)."""
    from lm_eval.tasks import TaskManager

    paths = [str(Path(p).expanduser()) for p in include_path]
    for p in paths:
        if not Path(p).is_dir():
            raise UserError(f"--include-path {p!r} is not a folder (it should hold lm-eval task YAML files)")
    if paths:
        tm = TaskManager(include_path=paths, include_defaults=False)
        if all(t in tm.all_tasks for t in tasks):
            return tm
    tm = TaskManager(include_path=paths or None)
    for t in tasks:
        if t not in tm.all_tasks and not Path(t).is_file():
            raise UnknownNameError(f"lm-eval knows no task {t!r}.{did_you_mean(t, tm.all_tasks)} `lm-eval ls tasks` "
                                   "lists them; --include-path DIR adds a folder of task YAML files")
    return tm


def _batch_size(batch_size: int | str) -> int | str:
    text = str(batch_size)
    if text.isdigit() and int(text) > 0:
        return int(text)
    if text == "auto" or (text.startswith("auto:") and text[5:].isdigit()):
        return text
    raise UserError(f"--batch-size must be a positive integer, 'auto' or 'auto:N', got {text!r}")


def task_scores(out: dict, task: str) -> dict:
    """One task's (or group's) entry from simple_evaluate's output: metrics named as lm-eval names
    them without the ",none" filter suffix ("acc", "acc_stderr"; "exact_match,strict-match" keeps
    its filter); a stderr lm-eval could not compute ("N/A") or a non-finite value is null."""
    metrics: dict[str, float | None] = {}
    for key, value in out["results"][task].items():
        if "," not in key:                                  # name, alias, sample_len
            continue
        metric, filt = key.split(",", 1)
        number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        metrics[metric if filt == "none" else key] = (float(number) if number is not None and math.isfinite(number)
                                                      else None)
    n = (out.get("n-samples") or {}).get(task, {}).get("effective", out["results"][task].get("sample_len"))
    return {"metrics": metrics, "higher_is_better": (out.get("higher_is_better") or {}).get(task, {}),
            "n_samples": n, "num_fewshot": (out.get("n-shot") or {}).get(task),
            "task_version": (out.get("versions") or {}).get(task)}


def evaluate_run(run: str | Path, tasks: Sequence[str], limit: int | float | None = None,
                 include_path: Sequence[str | Path] = (), batch_size: int | str = 8,
                 device: str | None = None) -> dict[str, dict]:
    """Run lm-eval's `tasks` on the run's base model plus its adapter (the floor: the base model
    alone) and add the scores to its result file (see the module docstring). Returns the entries
    written, by task."""
    lm_eval = require_lm_eval()
    from lm_eval.models.huggingface import HFLM

    if not tasks:
        raise UserError("--tasks names no task (give e.g. --tasks arc_easy,hellaswag)")
    files, record = locate_run(run)
    model_cfg = run_config(record, files.results_dir).get("model") or {}
    name = model_cfg.get("name") or models.EMBEDDED_MODEL
    device = models.pick_device(device or model_cfg.get("device") or "auto")
    dtype = models.torch_dtype(model_cfg.get("dtype"), device)
    size = _batch_size(batch_size)
    tm = task_manager(tasks, include_path)
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    log.info("lm-eval %s on %s%s: %s", lm_eval.__version__, name,
             f" + {files.adapter}" if files.adapter else " (the untrained floor)", ", ".join(tasks))
    t0 = time.perf_counter()
    try:
        lm = HFLM(pretrained=models.resolve(name), peft=str(files.adapter) if files.adapter else None,
                  device=device, dtype=dtype, batch_size=size,
                  trust_remote_code=bool(model_cfg.get("trust_remote_code", False)))
    except OSError as err:
        raise UserError(f"lm-eval could not load {name!r}{f' with {files.adapter}' if files.adapter else ''}: "
                        f"{str(err).splitlines()[0][:300]}") from None
    try:
        out = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), limit=limit, task_manager=tm,
                                      bootstrap_iters=BOOTSTRAP_ITERS, log_samples=False)
    except OSError as err:           # a task's dataset the hub must provide, offline or unreachable
        raise UserError(f"lm-eval could not run {', '.join(tasks)}: {str(err).splitlines()[0][:300]} "
                        "(offline, only tasks whose data files are local can run)") from None
    common = {"limit": limit, "lm_eval_version": lm_eval.__version__, "model": name,   # adapter: in RESULTS_DIR
              "adapter": files.adapter.relative_to(files.results_dir).as_posix() if files.adapter else None,
              "device": device,
              "dtype": str(dtype).removeprefix("torch."), "batch_size": size, "bootstrap_iters": BOOTSTRAP_ITERS,
              "seconds": round(time.perf_counter() - t0, 3),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    entries = {task: {**task_scores(out, task), **common} for task in out["results"]}
    record_scores(files.result_path, entries)
    return entries


def record_scores(result_path: Path, entries: dict[str, dict[str, Any]]) -> None:
    """Merge `entries` into the "harness" key of the result file, re-read now (another command may
    have written it meanwhile), and write it back atomically; every other key is kept."""
    record = _read_json(result_path)
    harness = record.get("harness") if isinstance(record.get("harness"), dict) else {}
    record["harness"] = {**harness, **entries}
    write_json(result_path, record)
    log.info("scores of %s added under \"harness\" in %s", ", ".join(entries), result_path)
