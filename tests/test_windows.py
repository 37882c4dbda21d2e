"""Difficulty windows: the `window` strategy on a known ranking, the partial Spearman that separates
difficulty from length, the report section, and the shipped recipe.

    .venv/bin/python -m pytest -q tests/test_windows.py    # a few seconds
"""

from __future__ import annotations

import numpy as np
import pytest

from llm_al.analysis.protocol import partial_spearman
from llm_al.errors import ConfigError
from llm_al.types import Features
from llm_al.strategies.base import run_strategy
from llm_al.analysis.writeup import write_report
from test_writeup import _cfg, _write


def _features(loss) -> Features:
    loss = np.asarray(loss, dtype=np.float32)
    return Features(ids=[f"e{i}" for i in range(len(loss))], length=np.arange(len(loss), dtype=np.float32), loss=loss)


def test_windows_take_contiguous_stretches_of_the_ranking():
    loss = np.random.default_rng(0).permutation(100).astype(np.float32)   # ranks 0..99, shuffled
    f = _features(loss)
    rng = np.random.default_rng(1)
    easy = run_strategy("window", f, 10, rng, start=0.0)
    hard = run_strategy("window", f, 10, rng, start=1.0)
    mid = run_strategy("window", f, 10, rng, start=0.5)
    assert sorted(loss[easy.indices]) == list(range(10))
    assert sorted(loss[hard.indices]) == list(range(90, 100))
    assert sorted(loss[mid.indices]) == list(range(45, 55))                # round(0.5 * 90) = 45
    assert list(loss[mid.indices]) == sorted(loss[mid.indices])           # picks in rank order
    np.testing.assert_array_equal(mid.scores, loss[mid.indices])


def test_window_by_another_score_and_bad_start():
    f = _features(np.zeros(20))
    f.direct_loss = np.arange(20, dtype=np.float32)[::-1].copy()
    sel = run_strategy("window", f, 5, np.random.default_rng(0), by="direct_loss", start=0.0)
    assert sorted(sel.indices.tolist()) == [15, 16, 17, 18, 19]            # lowest direct_loss
    for bad in (-0.1, 1.5, "middle", float("nan")):
        with pytest.raises(ConfigError, match="start"):
            run_strategy("window", f, 5, np.random.default_rng(0), start=bad)
    with pytest.raises(ConfigError, match="by"):
        run_strategy("window", f, 5, np.random.default_rng(0), by="nonsense")


def test_ties_are_broken_by_the_seed_not_the_position():
    f = _features(np.zeros(40))
    picks = {tuple(sorted(run_strategy("window", f, 5, np.random.default_rng(s), start=0.0).indices)) for s in range(5)}
    assert len(picks) > 1


def test_partial_spearman_removes_a_confound_and_keeps_a_direct_effect():
    rng = np.random.default_rng(0)
    length = rng.normal(size=300)
    loss = length + 0.3 * rng.normal(size=300)
    confounded = length + 0.3 * rng.normal(size=300)                      # metric driven by length only
    direct = loss + 0.3 * rng.normal(size=300)                            # metric driven by loss
    rho, p = partial_spearman(loss, confounded, length)
    assert abs(rho) < 0.15 and p > 0.01
    rho, p = partial_spearman(loss, direct, length)
    assert rho > 0.3 and p < 1e-6
    with pytest.raises(ValueError, match="at least 4"):
        partial_spearman([1, 2, 3], [1, 2, 3], [1, 2, 3])


def test_report_sets_each_window_beside_its_length(tmp_path):
    """Windows whose chrF follows length, not loss: the section shows the windows in order and the
    partial correlation of chrF with loss holding length fixed comes out small."""
    starts = [0, 0.25, 0.5, 0.75, 1]
    specs = [f"window:start={s}" for s in starts]
    cfg = _cfg(strategies=["random", *specs], seeds=[0, 1, 2])
    rng = np.random.default_rng(0)
    for k in range(3):
        _write(tmp_path, "random", "shuffled", k, k, k, 30.0 + k, cfg)
        for j, (s, spec) in enumerate(zip(starts, specs)):
            length = 8.0 + 4 * j + rng.normal()
            _write(tmp_path, spec, "shuffled", k, k, k, 20.0 + length + rng.normal(0, 0.5), cfg,
                   features={"loss": 1.0 + s + rng.normal(0, 0.3), "length": length})
    files = write_report(tmp_path)
    md = files["report.md"].read_text(encoding="utf-8")
    section = md.split("## 9. Difficulty windows")[1]
    assert "| window start | runs | chrf |" in section
    assert [line.split("|")[1].strip() for line in section.splitlines() if line.startswith("| 0")
            or line.startswith("| 1 ")] == ["0", "0.25", "0.5", "0.75", "1"]
    assert "chrf vs mean length: Spearman +0.9" in section                 # chrF tracks length
    assert files["windows_loss.png"].exists() and files["windows_loss.csv"].exists()
    assert "partial Spearman" in md.split("## Findings")[1].split("## 1.")[0]


def test_reports_without_windows_say_so(tmp_path):
    cfg = _cfg(strategies=["random"], seeds=[0, 1])
    for k in range(2):
        _write(tmp_path, "random", "shuffled", k, k, k, 30.0 + k, cfg)
    md = write_report(tmp_path)["report.md"].read_text(encoding="utf-8")
    assert "Not shown: no `window` strategy in this directory" in md
