"""`llm-al eval-harness`: lm-evaluation-harness on a recorded run's adapter, offline, on a local task
(a 6-row multiple-choice JSONL) and the tiny random Llama; the scores join the run's result file.

    nice -n 10 .venv/bin/python -m pytest tests/test_harness.py -q      # ~20 s on 2 CPU cores
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from llm_al.cli import main
from llm_al.config import ExperimentConfig, to_dict

REPO = Path(__file__).resolve().parent.parent
RUN_ID = "random-shuffled-s0o0i0"


def _task_folder(tmp_path: Path) -> Path:
    """A folder holding one lm-eval task, `tiny_mc`, over a local 6-row JSONL (no hub)."""
    rows = [{"question": f"Cancel {i} ->", "choices": ["Annuler", "Oui", "Non"], "label": i % 3} for i in range(6)]
    data = tmp_path / "tiny_mc.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    folder = tmp_path / "tasks"
    folder.mkdir()
    task = {"task": "tiny_mc", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
            "output_type": "multiple_choice", "test_split": "test", "doc_to_text": "{{question}}",
            "doc_to_target": "label", "doc_to_choice": "choices",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                            {"metric": "brier_score", "aggregation": "brier_score", "higher_is_better": False}],
            "metadata": {"version": 1.0}}
    (folder / "tiny_mc.yaml").write_text(yaml.safe_dump(task), encoding="utf-8")
    return folder


def _results_folder(tmp_path: Path, model_dir: Path, save_adapters: bool = True) -> Path:
    """A results folder laid out as `llm-al run` writes it: config.yaml, runs/untrained.json,
    runs/RUN_ID.json (each embedding the resolved config) and, with save_adapters,
    adapters/RUN_ID (a peft LoRA adapter, its B matrices made non-zero so it changes the model)."""
    import torch

    from llm_al.config import TrainConfig
    from llm_al.models import load_model
    from llm_al.train import attach_lora, save_adapter

    cfg = to_dict(ExperimentConfig())
    cfg["model"].update(name=str(model_dir), device="cpu")
    cfg["save_adapters"] = save_adapters
    out = tmp_path / "results"
    (out / "runs").mkdir(parents=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    common = {"config": cfg, "versions": {"python": "3"}, "pool_size": 24, "test_size": 8, "notes": []}
    floor = {"run_id": "untrained", "strategy": "untrained", "status": "ok",
             "eval": {"metrics": {"chrf": 1.0}}, **common}
    run = {"run_id": RUN_ID, "strategy": "random", "ordering": "shuffled", "budget": 8, "status": "ok",
           "eval": {"metrics": {"chrf": 12.5}}, "selection": {"indices": [0, 1]}, **common}
    for record in (floor, run):
        (out / "runs" / f"{record['run_id']}.json").write_text(json.dumps(record), encoding="utf-8")
    if save_adapters:
        model, _ = load_model(str(model_dir), device="cpu")
        peft_model = attach_lora(model, TrainConfig(), init_seed=0)
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(len(name)))
        save_adapter(peft_model, out / "adapters" / RUN_ID)
    return out


def _read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_harness_scores_join_the_run_result_and_the_floor_differs(tmp_path, tiny_model_dir, capsys):
    pytest.importorskip("lm_eval")
    tasks, out = _task_folder(tmp_path), _results_folder(tmp_path, tiny_model_dir)
    result = out / "runs" / f"{RUN_ID}.json"
    before = _read(result)
    assert main(["eval-harness", str(out / "adapters" / RUN_ID), "--tasks", "tiny_mc", "--include-path",
                 str(tasks), "--batch-size", "4", "--device", "cpu"]) == 0
    assert "tiny_mc: acc" in capsys.readouterr().out
    after = _read(result)
    assert {k: after[k] for k in before} == before                 # every old key kept, unchanged
    entry = after["harness"]["tiny_mc"]
    assert 0.0 <= entry["metrics"]["acc"] <= 1.0, entry
    assert entry["n_samples"] == 6 and entry["limit"] is None and entry["adapter"] == f"adapters/{RUN_ID}"
    assert entry["higher_is_better"]["acc"] is True and entry["lm_eval_version"]
    assert not list((out / "runs").glob(".*.tmp"))                # the atomic write left nothing behind

    # the floor, named by its result file, is the base model alone: another score, same task, --limit
    assert main(["eval-harness", str(out / "runs" / "untrained.json"), "--tasks", "tiny_mc", "--include-path",
                 str(tasks), "--limit", "6", "--device", "cpu"]) == 0
    floor = _read(out / "runs" / "untrained.json")["harness"]["tiny_mc"]
    assert floor["adapter"] is None and floor["limit"] == 6
    assert floor["metrics"]["brier_score"] != pytest.approx(entry["metrics"]["brier_score"])   # the adapter was on

    # a second task later is merged in beside the first, which stays
    from llm_al.harness import record_scores

    record_scores(result, {"other": {"metrics": {"acc": 0.25}}})
    assert set(_read(result)["harness"]) == {"tiny_mc", "other"} and _read(result)["eval"] == before["eval"]


def test_run_without_a_saved_adapter_says_why(tmp_path, tiny_model_dir, capsys):
    pytest.importorskip("lm_eval")
    out = _results_folder(tmp_path, tiny_model_dir, save_adapters=False)
    assert main(["eval-harness", str(out / "adapters" / RUN_ID), "--tasks", "tiny_mc"]) == 2
    assert "save_adapters: false" in capsys.readouterr().err
    assert main(["eval-harness", str(out / "runs" / f"{RUN_ID}.json"), "--tasks", "tiny_mc"]) == 2
    assert "save_adapters: false" in capsys.readouterr().err

    shutil.rmtree(out)                                  # recorded with adapters, but the folder went missing
    out = _results_folder(tmp_path, tiny_model_dir, save_adapters=True)
    shutil.rmtree(out / "adapters")
    assert main(["eval-harness", str(out / "adapters" / RUN_ID), "--tasks", "tiny_mc"]) == 2
    assert "adapter_config.json is missing" in capsys.readouterr().err


def test_run_names_that_are_not_runs_are_refused_with_the_options(tmp_path, tiny_model_dir, capsys):
    pytest.importorskip("lm_eval")
    out = _results_folder(tmp_path, tiny_model_dir)
    assert main(["eval-harness", str(out), "--tasks", "tiny_mc"]) == 2         # the results folder itself
    err = capsys.readouterr().err
    assert "name one run" in err and RUN_ID in err
    assert main(["eval-harness", str(out / "adapters" / "random-shuffled-s9o0i0"), "--tasks", "tiny_mc"]) == 2
    err = capsys.readouterr().err
    assert "was not recorded" in err and "Did you mean" in err
    assert main(["eval-harness", str(tmp_path), "--tasks", "tiny_mc"]) == 2
    assert "names no run" in capsys.readouterr().err


def test_unknown_task_suggests_the_close_one(tmp_path, tiny_model_dir, capsys):
    pytest.importorskip("lm_eval")
    tasks, out = _task_folder(tmp_path), _results_folder(tmp_path, tiny_model_dir)
    assert main(["eval-harness", str(out / "adapters" / RUN_ID), "--tasks", "tiny_mx", "--include-path",
                 str(tasks), "--device", "cpu"]) == 2
    assert "Did you mean 'tiny_mc'" in capsys.readouterr().err


def test_missing_lm_eval_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "lm_eval", None)          # `import lm_eval` now raises ImportError
    assert main(["eval-harness", str(tmp_path / "results" / "adapters" / RUN_ID), "--tasks", "arc_easy"]) == 2
    assert "pip install 'llm-al[harness]'" in capsys.readouterr().err


def test_a_harness_key_does_not_break_the_report(tmp_path):
    """`llm-al report` on a recorded results folder whose runs all carry harness scores."""
    from llm_al.harness import record_scores

    out = tmp_path / "demo"
    shutil.copytree(REPO / "eval" / "results" / "demo-cpu" / "runs", out / "runs")
    shutil.copy(REPO / "eval" / "results" / "demo-cpu" / "config.yaml", out)
    for path in (out / "runs").glob("*.json"):
        record_scores(path, {"arc_easy": {"metrics": {"acc": 0.5, "acc_stderr": None}, "limit": 10}})
    assert main(["report", str(out)]) == 0
    assert (out / "report" / "report.md").is_file()
