"""The cross-task leaderboard (llm_al/analysis/leaderboard.py) on synthetic results folders."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llm_al.analysis.leaderboard import format_leaderboard, leaderboard, smallest_holm_p
from llm_al.cli import main
from llm_al.errors import UserError

from test_writeup import _cfg, _floor, _write


def _folder(root, task: str, gains: dict[str, float], seeds: int = 8, primary: str = "chrf"):
    cfg = _cfg(strategies=["random", *gains], seeds=list(range(seeds)), data={"pool": f"embedded:{task}"},
               eval={"metrics": ["chrf", "bleu", "rougeL", "exact_match"], "primary": primary})
    rng = np.random.default_rng(len(task))
    base = rng.normal(30, 2, seeds)
    for s in range(seeds):
        _write(root, "random", "shuffled", s, s, s, float(base[s]), cfg)
        for name, gain in gains.items():
            _write(root, name, "shuffled", s, s, s, float(base[s] + gain + rng.normal(0, 0.2)), cfg)
    _floor(root, cfg)
    summary = {"strategies": [{"strategy": name, "ordering": "shuffled", "budget": 100, "select_seconds": 0.5,
                               "cost": {"scored_tokens": 1000 * (name == "perplexity"), "embedded_examples": 50,
                                        "probe_tokens": 0, "feature_seconds": 3.0}} for name in gains]}
    (root / "summary.json").write_text(json.dumps(summary))
    return root


def test_every_task_and_strategy_against_random_holm_adjusted_as_one_family(tmp_path):
    a = _folder(tmp_path / "a", "django-en-de", {"kcenter": 3.0, "perplexity": 0.0})
    b = _folder(tmp_path / "b", "chatterbot", {"kcenter": -3.0, "perplexity": 0.0})
    board = leaderboard([a, b])
    assert board["tasks"] == ["chatterbot", "django-en-de"] and board["comparisons"] == 4
    rows = {(r["task"], r["strategy"]): r for r in board["rows"]}
    assert rows["django-en-de", "kcenter"]["verdict"] == "better than random"
    assert rows["chatterbot", "kcenter"]["verdict"] == "worse than random"
    assert rows["django-en-de", "perplexity"]["verdict"] == "inside the noise of random"
    ps = sorted(r["p"] for r in board["rows"])
    assert min(r["p_holm"] for r in board["rows"]) == pytest.approx(min(1.0, 4 * ps[0]))   # Holm's first step
    assert all(r["p_holm"] >= r["p"] for r in board["rows"])
    assert rows["django-en-de", "perplexity"]["cost"]["scored_tokens"] == 1000
    text = format_leaderboard(board)
    assert "4 comparisons" in text
    assert f"| django-en-de | 100 | kcenter | 8 | {rows['django-en-de', 'kcenter']['mean_diff']:+.2f} |" in text


def test_leaderboard_command_writes_the_table_and_refuses_mixed_metrics(tmp_path, capsys):
    a = _folder(tmp_path / "a", "django-en-de", {"kcenter": 3.0})
    out = tmp_path / "board.md"
    assert main(["leaderboard", str(a), "--out", str(out)]) == 0
    assert "kcenter" in out.read_text() and "kcenter" in capsys.readouterr().out
    b = _folder(tmp_path / "b", "chatterbot", {"kcenter": 1.0}, primary="bleu")
    with pytest.raises(UserError, match="different metrics"):
        leaderboard([a, b])
    with pytest.raises(UserError, match="no strategy could be compared"):
        leaderboard([_folder(tmp_path / "c", "chatterbot", {})])


def test_the_table_says_when_the_design_cannot_reach_significance(tmp_path):
    """8 seeds: the exact paired test's smallest p is 2/256; times 9 comparisons it is 0.07, so no
    row could ever pass Holm at 0.05: the table must say so rather than print 'inside the noise'."""
    assert smallest_holm_p(8, 9) == pytest.approx(9 * 2 / 256) and smallest_holm_p(12, 24) < 0.05
    gains = {f"s{k}": 5.0 for k in range(9)}
    board = leaderboard([_folder(tmp_path / "a", "django-en-de", gains)])
    assert board["smallest_holm_p"] == pytest.approx(9 * 2 / 256)
    assert all(r["verdict"].startswith("leans better") for r in board["rows"])   # huge gains, yet cannot pass
    assert "no row can pass at 0.05 whatever the data" in format_leaderboard(board)
