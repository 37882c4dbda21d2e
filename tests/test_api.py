"""The public Python API (llm_al.api): the same selections, orders and comparison as the command line,
the README's example run as written, and a new strategy picked up by the contract suite unedited.
No real model: the strategies here need no model (length, random) or get their features given."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import pool_records
from llm_al import api
from llm_al.cli import main
from llm_al.config import ModelConfig
from llm_al.orderings import run_ordering
from llm_al.run.pipeline import compute_features
from llm_al.seeds import rng
from llm_al.strategies.base import run_strategy
from llm_al.types import Features

ROOT = Path(__file__).resolve().parent.parent


def _features(pool, seed: int = 0) -> Features:
    """Length plus random unit embeddings: enough for kcenter and --explain without a model."""
    f = compute_features(pool, {"length"}, ModelConfig(), progress=False)
    emb = np.random.default_rng(seed).normal(size=(len(pool), 8)).astype(np.float32)
    f.embeddings = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    return f


def test_load_pool_reads_like_select(pool_file):
    from llm_al.data.pool import load_pool

    pool = api.load_pool(str(pool_file))
    assert len(pool) == len(pool_records())
    assert pool.ids == load_pool(str(pool_file)).ids


def test_select_returns_picks_with_scores_and_reasons(pool_file, cache_dir):
    pool = api.load_pool(str(pool_file))
    picks = api.select(pool, "window:by=length,start=1", 5, seed=3)
    sel = run_strategy("window", compute_features(pool, {"length"}, ModelConfig(), progress=False), 5,
                       rng(3, "subset"), by="length", start=1)
    assert [p.index for p in picks] == sel.indices.tolist()
    assert [p.rank for p in picks] == [1, 2, 3, 4, 5]
    assert [p.id for p in picks] == [pool.ids[i] for i in sel.indices]
    assert [p.example for p in picks] == [pool.examples[i] for i in sel.indices]
    assert [p.score for p in picks] == [float(s) for s in sel.scores]
    assert {p.reason for p in picks} == {sel.score_name}
    assert api.select(pool, "random", 4, seed=1)[0].reason == "uniform draw"


def test_select_is_what_the_command_line_writes(pool_file, cache_dir, tmp_path):
    pool = api.load_pool(str(pool_file))
    picks = api.select(pool, "window:by=length,start=0", 6, seed=2)
    out = tmp_path / "subset.jsonl"
    assert main(["select", str(pool_file), "--strategy", "window:by=length,start=0", "--budget", "6", "--seed", "2",
                 "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["llm_al_id"] for r in rows] == [p.id for p in picks]
    assert [r["llm_al_rank"] for r in rows] == [p.rank for p in picks]
    assert [r["llm_al_score"] for r in rows] == [round(p.score, 6) for p in picks]


def test_select_with_given_features_and_explanations(pool_file):
    pool = api.load_pool(str(pool_file))
    features = _features(pool)
    picks = api.select(pool, "kcenter", 5, seed=0, features=features, explain=True)
    assert [p.index for p in picks] == run_strategy("kcenter", features, 5, rng(0, "subset")).indices.tolist()
    assert set(picks[0].explanation) == {"llm_al_cluster", "llm_al_nearest_earlier_id", "llm_al_nearest_earlier_sim"}
    assert picks[1].explanation["llm_al_nearest_earlier_id"] in {p.id for p in picks[:1]}


def test_order_is_the_runs_data_order(pool_file):
    pool = api.load_pool(str(pool_file))
    features = _features(pool)
    picks = api.select(pool, "random", 8, seed=4, features=features)
    for ordering in ("shuffled", "as_selected"):
        steps = api.order(pool, picks, ordering, seed=4, features=features)
        expected = run_ordering(ordering, np.array([p.index for p in picks]), features, rng(4, "order"))
        assert steps == expected.tolist()
        assert sorted(steps) == sorted(p.index for p in picks)
    assert api.order(pool, [p.index for p in picks], "as_selected", features=features) == [p.index for p in picks]


def test_run_takes_a_recipe_or_a_config_with_overrides(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(api, "run_experiment", lambda cfg: seen.append(cfg) or {"runs": []})
    recipe = tmp_path / "r.yaml"
    recipe.write_text("budget: 7\nstrategies: [kcenter]\n", encoding="utf-8")
    assert api.run(str(recipe), seeds=[4], train={"lr": 5e-4}, **{"eval.max_new_tokens": 9}) == {"runs": []}
    cfg = seen[-1]
    assert (cfg.budget, cfg.seeds, cfg.train.lr, cfg.eval.max_new_tokens) == (7, [4], 5e-4, 9)
    assert cfg.strategies == ["random", "kcenter"] and cfg.train.epochs == 1     # the rest: defaults
    api.run(cfg, budget=9)
    assert (seen[-1].budget, seen[-1].train.lr) == (9, 5e-4)
    api.run(cfg)
    assert seen[-1] is cfg
    with pytest.raises(Exception, match="unknown config key"):
        api.run(cfg, bugdet=3)


def test_compare_is_the_reports_table_as_data(tmp_path):
    from test_writeup import _cfg, _write

    cfg, r = _cfg(seeds=list(range(12))), np.random.default_rng(0)
    for k in range(12):
        _write(tmp_path, "random", "shuffled", k, k, k, 30 + r.normal(), cfg)
        _write(tmp_path, "kcenter", "shuffled", k, k, k, 36 + r.normal(), cfg)
    _write(tmp_path, "kcenter", "shuffled", 0, 0, 0, 31.0, cfg, budget=50)       # no random run at budget 50
    table = api.compare(tmp_path)
    files = api.report(tmp_path, tmp_path / "report")
    with open(files["strategies.csv"], encoding="utf-8") as fh:
        written = list(csv.DictReader(fh))
    rows = {(r["strategy"], r["budget"]): r for r in table}
    assert set(rows) == {("kcenter", 100), ("kcenter", 50)}
    compared, alone = rows["kcenter", 100], rows["kcenter", 50]
    assert compared["compared"] and compared["verdict"].startswith("better than")
    assert not alone["compared"] and "random" in alone["reason"]
    (csv_row,) = written
    for key in ("strategy_mean", "random_mean", "mean_diff", "p", "p_holm", "percentile"):
        assert float(csv_row[key]) == pytest.approx(compared[key])


def _readme_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs(pool_file, cache_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pool.jsonl").write_text(pool_file.read_text(encoding="utf-8"), encoding="utf-8")
    scope: dict = {}
    exec(compile(_readme_example(), "README.md", "exec"), scope)
    assert len(scope["picks"]) == 5 and sorted(scope["steps"]) == sorted(p.index for p in scope["picks"])
    assert "1 " in capsys.readouterr().out


def test_a_new_strategy_is_picked_up_by_the_contract_suite(tmp_path):
    """One decorated function is all a strategy needs: registered from outside the package (here a
    pytest plug-in standing in for a new module), the unedited contract suite runs on it, and a
    strategy that breaks the contract fails it."""
    plugin = tmp_path / "throwaway_strategy.py"
    plugin.write_text(
        "import numpy as np\n"
        "from llm_al.strategies.base import STRATEGIES, from_scores\n\n"
        "@STRATEGIES.register('throwaway_hardest', 'the highest base-model loss first', needs=('loss',),\n"
        "                     labelled='ignored: a per-example score')\n"
        "def throwaway_hardest(features, budget, rng):\n"
        "    return from_scores(features.require('loss'), budget, rng, 'response loss')\n\n"
        "@STRATEGIES.register('throwaway_broken', 'repeats its first pick', needs=(), labelled='ignored: broken')\n"
        "def throwaway_broken(features, budget, rng):\n"
        "    from llm_al.types import Selection\n"
        "    idx = np.zeros(budget, dtype=np.int64)\n"
        "    return Selection(idx, np.zeros(budget), 'nothing')\n", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}

    def contract(name: str) -> str:
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "throwaway_strategy",
                               str(ROOT / "tests" / "test_strategies.py"), "-k", name],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        return done.stdout.strip().splitlines()[-1]

    good = contract("throwaway_hardest")
    assert re.search(r"\b(\d+) passed", good) and int(re.search(r"(\d+) passed", good).group(1)) >= 8, good
    assert "failed" not in good, good
    assert "failed" in contract("throwaway_broken")
