"""The runner's packs (llm_al/run/packed.py): a sweep trained and evaluated K runs at a time gives
each cell the same subset, order and (to float rounding) the same training as running it alone;
each cell keeps its own result file, claim and failure; a killed pack resumes with only its missing
cells; out of memory splits a pack before anything else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llm_al.config import load_config
from llm_al.errors import ConfigError
from llm_al.run import packed
from llm_al.run.experiment import run_experiment


def _cfg(tmp_path: Path, tiny_model_dir: Path, pool_file: Path, name: str, **over):
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps({"source": s, "target": t}) + "\n"
                            for s, t in (("Delete", "Supprimer"), ("Save", "Enregistrer"), ("Cancel", "Annuler"))))
    overrides = [f"out_dir={tmp_path / name}", "budget=6", "strategies=[random,kcenter]", "seeds=[0,1,2]",
                 "progress=false", "save_adapters=false", f"data.pool={pool_file}", f"data.test={test}",
                 f"model.name={tiny_model_dir}", "model.max_length=64", "train.batch_size=2", "train.lora_r=2",
                 "train.lr=0.01", "eval.max_new_tokens=4", "overlap.reference=null",
                 *[f"{k}={v}" for k, v in over.items()]]
    return load_config(None, overrides)


def _runs(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (out / "runs").glob("*.json") if p.stem != "untrained"}


def test_pack_size_is_validated():
    for bad in (0, -1, "2", True, "off"):
        with pytest.raises(ConfigError, match="run.pack_size"):
            load_config(None, [f"run.pack_size={bad}" if not isinstance(bad, str) else f"run.pack_size='{bad}'"])
    assert load_config(None, ["run.pack_size=alone"]).run.pack_size == "alone"


def test_packed_sweep_equals_the_runs_alone(tmp_path, tiny_model_dir, pool_file, cache_dir):
    """6 cells in packs of 4 (a pack of 4, then of 2) vs each alone through train_lora (pack_size=alone):
    the same subsets and orders, the same per-step training losses to 1e-4, and the same
    generations; the packed records say which pack they were in."""
    alone = _runs(Path(run_experiment(_cfg(tmp_path, tiny_model_dir, pool_file, "alone", **{"run.pack_size": "alone"}))
                       and tmp_path / "alone"))
    packed_runs = _runs(Path(run_experiment(_cfg(tmp_path, tiny_model_dir, pool_file, "packed",
                                                 **{"run.pack_size": 4})) and tmp_path / "packed"))
    assert sorted(alone) == sorted(packed_runs) and len(alone) == 6
    sizes = sorted(r["pack"]["size"] for r in packed_runs.values())
    assert sizes == [2, 2, 4, 4, 4, 4]
    for run_id, a in alone.items():
        p = packed_runs[run_id]
        assert "pack" not in a and p["status"] == a["status"] == "ok"
        assert p["selection"]["ids"] == a["selection"]["ids"] and p["order"]["ids"] == a["order"]["ids"]
        assert p["train"]["steps"] == a["train"]["steps"] and p["train"]["tokens"] == a["train"]["tokens"]
        assert p["train"]["losses"] == pytest.approx(a["train"]["losses"], abs=1e-4)
        assert p["eval"]["predictions"] == a["eval"]["predictions"]
        assert p["eval"]["metrics"] == pytest.approx(a["eval"]["metrics"])


def test_a_resumed_sweep_packs_only_the_missing_cells(tmp_path, tiny_model_dir, pool_file, cache_dir):
    cfg = _cfg(tmp_path, tiny_model_dir, pool_file, "out", **{"run.pack_size": 3})
    run_experiment(cfg)
    out = tmp_path / "out"
    before = {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    missing = ["random-shuffled-s1o1i1", "kcenter-shuffled-s0o0i0"]        # one from each first pack
    for run_id in missing:
        (out / "runs" / f"{run_id}.json").unlink()
    run_experiment(cfg)
    runs = _runs(out)
    assert all(r["status"] == "ok" for r in runs.values()) and len(runs) == 6
    for run_id in missing:
        assert runs[run_id]["pack"] == {"size": 2, "position": missing.index(run_id), "runs": missing}
    after = {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    assert {n for n in after if after[n] != before.get(n)} == {f"{r}.json" for r in missing}
    assert not list(out.rglob("*.lock"))


def test_a_pack_killed_half_way_leaves_no_claim_and_no_result(tmp_path, tiny_model_dir, pool_file, cache_dir,
                                                             monkeypatch):
    cfg = _cfg(tmp_path, tiny_model_dir, pool_file, "out", **{"run.pack_size": 3})

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(packed, "grouped_generate", killed)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg)
    out = tmp_path / "out"
    assert not _runs(out) and not list(out.rglob("*.lock"))
    monkeypatch.undo()
    run_experiment(cfg)
    assert len(_runs(out)) == 6


def test_out_of_memory_splits_the_pack_then_runs_alone(tmp_path, tiny_model_dir, pool_file, cache_dir, monkeypatch):
    """A grouped pass of more than one run 'runs out of memory': the pack of 4 splits into 2 + 2, then
    1 + 1 each; a pass of one that still runs out goes the one-run path (no pack key)."""
    calls = []
    real = packed.train_grouped

    def tight(model, runs, *args, **kwargs):
        calls.append(len(runs))
        if len(runs) > 1 or len(calls) == 3:          # the first single run out of memory too
            raise torch.OutOfMemoryError("CUDA out of memory (test)")
        return real(model, runs, *args, **kwargs)

    monkeypatch.setattr(packed, "train_grouped", tight)
    run_experiment(_cfg(tmp_path, tiny_model_dir, pool_file, "out", **{"run.pack_size": 4, "seeds": "[0,1]"}))
    runs = _runs(tmp_path / "out")
    assert calls == [4, 2, 1, 1, 2, 1, 1]
    assert all(r["status"] == "ok" for r in runs.values()) and len(runs) == 4
    assert sum("pack" not in r for r in runs.values()) == 1                # the one that went alone


def test_a_failing_strategy_fails_its_run_only(tmp_path, tiny_model_dir, pool_file, cache_dir, monkeypatch):
    real = packed.run_strategy

    def flaky(name, *args, **kwargs):
        if name == "kcenter":
            raise RuntimeError("kcenter broke (test)")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(packed, "run_strategy", flaky)
    run_experiment(_cfg(tmp_path, tiny_model_dir, pool_file, "out", **{"run.pack_size": 6}))
    runs = _runs(tmp_path / "out")
    assert {k: r["status"] for k, r in runs.items()} == {
        **{f"kcenter-shuffled-s{s}o{s}i{s}": "failed" for s in range(3)},
        **{f"random-shuffled-s{s}o{s}i{s}": "ok" for s in range(3)}}
    assert all(r["pack"]["size"] == 3 for k, r in runs.items() if k.startswith("random"))
    assert "kcenter broke" in runs["kcenter-shuffled-s0o0i0"]["error"]


def test_auto_pack_size(tiny_model):
    model, _ = tiny_model
    cfg = load_config(None, [])
    assert packed.pack_size(cfg, model) == packed.CPU_PACK                  # on a CPU
    assert packed.pack_size(load_config(None, ["run.pack_size=7"]), model) == 7
    one = packed.run_memory_bytes(model, cfg)
    assert one > 0 and packed.run_memory_bytes(model, load_config(None, ["train.batch_size=8"])) > one


def test_dry_run_says_how_runs_are_packed(tmp_path, tiny_model_dir, pool_file, cache_dir):
    """--dry-run (estimate.plan_experiment) names the pack size and counts the shared prefix once a
    training step: fewer training tokens packed than alone, the same everything else."""
    from llm_al.run.estimate import plan_experiment

    cfg = _cfg(tmp_path, tiny_model_dir, pool_file, "out", **{"run.pack_size": 3})
    packed_plan = plan_experiment(cfg)
    alone_plan = plan_experiment(_cfg(tmp_path, tiny_model_dir, pool_file, "out", **{"run.pack_size": "alone"}))
    assert "packing: 3 runs a pass (run.pack_size=3)" in packed_plan and "packing: none" in alone_plan

    def train_tokens(plan: str) -> int:
        line = next(x for x in plan.splitlines() if x.strip().startswith("train "))
        return int(line.split(": ")[1].split(" tokens")[0].replace(",", ""))

    assert 0 < train_tokens(packed_plan) < train_tokens(alone_plan)
    assert not (tmp_path / "out").exists()
