"""Per-run overhead of a sweep: the share of each run's wall time that is neither training nor
evaluation (target: under 10%), and the one-off costs of the sweep beside it.

    .venv/bin/python eval/bench_sweep.py        # ~4 min on 2 CPU cores; writes eval/results/bench_sweep.txt

The sweep: the embedded default (SmolLM2-135M, Django en->fr pool), strategies random, perplexity
and kcenter with seed 0 (3 runs), budget 20, 10 test examples, 16 new tokens; everything else at
its defaults (adapters saved, overlap with the `pydoc` reference). It runs in this process through
`experiment.run_experiment`, with timers wrapped around the functions it calls, so nothing in
llm_al changes for the measurement:

  * a run's wall time: from the check of its result file (`_done`) to the release of its claim,
    i.e. everything the cell loop spends on that cell;
  * train and eval: the run's own recorded timings (`timings.train_seconds`, `eval_seconds`);
  * the overhead = wall - train - eval, split into selection + ordering (recorded `select_seconds`),
    tokenisation, adapter attach (peft, outside the recorded train time), adapter save, adapter
    detach, subset description (feature means, overlap), result write, result-file check and
    claim, and what is left unattributed;
  * one-off costs (outside every run): config checks, data, model load, features, overlap index,
    the untrained floor, summary and tables.

Features are computed cold: LLM_AL_CACHE points at a fresh folder whose `models/` links to the
user cache's (so the embedded model is not converted again). The machine is shared: the load
average is printed; other jobs slow training and evaluation more than the overhead, so the share
is if anything understated under load.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

RESULT = Path(__file__).parent / "results" / "bench_sweep.txt"
OVERRIDES = ["budget=20", "strategies=[random,perplexity,kcenter]", "seeds=[0]", "data.max_test=10",
             "eval.max_new_tokens=16", "progress=false"]
RUN_PHASES = ("select", "tokenize", "adapter attach", "adapter save", "adapter detach", "describe subset",
              "write result", "check + claim")


class Timers:
    """Wall-clock timers around named functions; time inside a run goes to that run."""

    def __init__(self) -> None:
        self.oneoff: dict[str, float] = defaultdict(float)
        self.runs: list[dict] = []
        self.current: dict | None = None

    def add(self, phase: str, seconds: float) -> None:
        target = self.current["phases"] if self.current is not None else self.oneoff
        target[phase] += seconds

    def wrap(self, module, name: str, phase: str) -> None:
        fn = getattr(module, name)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.add(phase, time.perf_counter() - t0)

        setattr(module, name, timed)

    def wrap_cells(self, experiment) -> None:
        """A run starts at the check of its result file (`_done` with a budget) and ends when its
        claim is released."""
        done, claim = experiment._done, experiment.claim

        def timed_done(path, cfg_dict, budget=None):
            t0 = time.perf_counter()
            if budget is not None:
                self.current = {"name": path.stem, "start": t0, "phases": defaultdict(float)}
            try:
                return done(path, cfg_dict, budget)
            finally:
                self.add("check + claim" if budget is not None else "check floor", time.perf_counter() - t0)

        @contextmanager
        def timed_claim(path):
            t0 = time.perf_counter()
            with claim(path) as mine:
                inner = time.perf_counter()
                yield mine
                inside = time.perf_counter() - inner
            self.add("check + claim", time.perf_counter() - t0 - inside)
            self.current["wall"] = time.perf_counter() - self.current["start"]
            self.runs.append(self.current)
            self.current = None

        experiment._done, experiment.claim = timed_done, timed_claim


def load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f} (1 min), {five:.1f} (5 min)"


def main() -> None:
    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    user_cache = Path(os.environ.get("LLM_AL_CACHE", Path.home() / ".cache" / "llm_al")).expanduser()
    tmp = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    (tmp / "cache").mkdir()
    if (user_cache / "models").exists():
        (tmp / "cache" / "models").symlink_to(user_cache / "models")
    os.environ["LLM_AL_CACHE"] = str(tmp / "cache")

    import json

    import llm_al.train
    from llm_al import models
    from llm_al.run import cell, experiment, record
    from llm_al.config import load_config

    timers = Timers()
    for module, name, phase in (
        (experiment, "load_data", "data"), (models, "load_model", "model load"),
        (experiment, "compute_features", "features (cold)"), (experiment, "reference_index", "overlap index"),
        (experiment, "evaluate", "evaluate"), (experiment, "summarize", "summary"),
        (experiment, "write_tables", "summary"), (experiment, "write_text", "config.yaml"),
        (experiment, "check_out_dir", "config.yaml"), (cell, "tokenize", "tokenize"),
        (llm_al.train, "attach_lora", "adapter attach"), (experiment, "save_adapter", "adapter save"),
        (experiment, "detach_lora", "adapter detach"), (record, "describe_subset", "describe subset"),
        (experiment, "write_json", "write result"),
    ):
        timers.wrap(module, name, phase)
    timers.wrap_cells(experiment)

    say(f"bench_sweep: per-run overhead of a sweep, {time.strftime('%Y-%m-%d %H:%M')}")
    say(f"machine: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}; Python "
        f"{platform.python_version()}; load average at start {load_average()} (shared machine)")
    say(f"sweep: llm-al demo {' '.join(OVERRIDES)} (3 runs: random, perplexity, kcenter at seed 0), "
        f"out_dir and a cold feature cache in {tmp}")
    t0 = time.perf_counter()
    cfg = load_config(None, OVERRIDES + [f"out_dir={tmp / 'out'}"])
    config_seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    summary = experiment.run_experiment(cfg)
    total = time.perf_counter() - t1
    runs = {r["name"]: r for r in timers.runs}
    say()
    say(f"{'run':<34} {'wall s':>7} {'train s':>8} {'eval s':>7} {'other s':>8} {'other %':>8}")
    walls = trains = evals = 0.0
    breakdown: dict[str, float] = defaultdict(float)
    for name in sorted(runs):
        rec = json.loads((tmp / "out" / "runs" / f"{name}.json").read_text(encoding="utf-8"))
        assert rec["status"] == "ok", rec.get("error")
        t = rec["timings"]
        wall = runs[name]["wall"]
        other = wall - t["train_seconds"] - t["eval_seconds"]
        walls, trains, evals = walls + wall, trains + t["train_seconds"], evals + t["eval_seconds"]
        say(f"{name:<34} {wall:>7.2f} {t['train_seconds']:>8.2f} {t['eval_seconds']:>7.2f} {other:>8.2f} "
            f"{100 * other / wall:>7.1f}%")
        phases = runs[name]["phases"]
        parts = {"select": t["select_seconds"], **{p: phases.get(p, 0.0) for p in RUN_PHASES[1:]}}
        parts["evaluate wrapper beyond recorded eval"] = phases.get("evaluate", 0.0) - t["eval_seconds"]
        parts["unattributed"] = other - sum(parts.values())
        for k, v in parts.items():
            breakdown[k] += v
    other = walls - trains - evals
    say(f"{'all runs':<34} {walls:>7.2f} {trains:>8.2f} {evals:>7.2f} {other:>8.2f} {100 * other / walls:>7.1f}%")
    say()
    say(f"where the {other:.2f} s not spent training or evaluating went (summed over the {len(runs)} runs):")
    for k, v in breakdown.items():
        say(f"  {k:<40} {v:>7.3f} s  {100 * v / walls:>5.2f}% of run time")
    say()
    oneoff = dict(timers.oneoff)
    floor = oneoff.pop("evaluate", 0.0)
    say(f"one-off costs of the sweep (outside every run; run_experiment took {total:.1f} s in all):")
    items = {"config checks (load_config)": config_seconds, **{k: v for k, v in oneoff.items()},
             "untrained floor (evaluate)": floor}
    for k, v in items.items():
        say(f"  {k:<40} {v:>7.2f} s")
    rest = total - walls - sum(v for k, v in items.items() if k != "config checks (load_config)")
    say(f"  {'unattributed':<40} {rest:>7.2f} s")
    fc = summary.get("feature_cost", {})
    say(f"  (features: loss pass {fc.get('loss_seconds', 0):.1f} s over {fc.get('loss_examples_scored', 0)} "
        f"examples, embeddings {fc.get('embed_seconds', 0):.1f} s)")
    say()
    say(f"per-run overhead: {100 * other / walls:.1f}% of run time (target < 10%): "
        f"{'met' if other / walls < 0.10 else 'NOT met'}; with the one-off costs spread over these {len(runs)} runs, "
        f"{100 * (total - trains - evals) / total:.0f}% of run_experiment's time is neither training nor evaluation "
        f"(a real sweep has far more runs per one-off).")
    say(f"load average at end: {load_average()}")
    from llm_al.io import write_text

    write_text(RESULT, "\n".join(lines) + "\n")
    print(f"written to {RESULT}", file=sys.stderr)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
