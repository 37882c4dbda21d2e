"""write_report() on synthetic results folders with known structure (no model involved).

    .venv/bin/python -m pytest -q tests/test_writeup.py    # ~ 10 s on 2 CPU cores
"""

from __future__ import annotations

import base64
import csv
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from llm_al.analysis import variance
from llm_al.errors import UserError
from llm_al.analysis.writeup import write_report

PNG = b"\x89PNG\r\n\x1a\n"


def _cfg(**delta) -> dict:
    cfg = {"name": "synthetic", "strategies": ["random", "kcenter", "perplexity"], "orderings": ["shuffled"],
           "budget": 100, "design": "paired", "seeds": list(range(30)), "subset_seeds": [0], "order_seeds": [0],
           "init_seeds": [0], "data": {"pool": "pool.jsonl"}, "model": {"name": "tiny-model"},
           "train": {"lr": 5e-5, "epochs": 3, "batch_size": 8, "lora_r": 8},
           "eval": {"metrics": ["chrf", "bleu", "rougeL", "exact_match"], "primary": "chrf"}}
    return {**cfg, **delta}


def _write(root: Path, strategy: str, ordering: str, s: int, o: int, i: int, chrf: float, cfg: dict,
           budget: int = 100, features: dict | None = None, status: str = "ok") -> None:
    """One run record with the keys experiment.py writes."""
    f = features or {}
    run_id = f"{strategy}-{ordering}-s{s}o{o}i{i}-b{budget}"
    rec = {"run_id": run_id, "strategy": strategy, "strategy_name": strategy, "params": {}, "ordering": ordering,
           "seeds": {"subset": s, "order": o, "init": i}, "budget": budget, "config": cfg,
           "versions": {"python": "3.11", "numpy": np.__version__}, "pool_size": 1000, "test_size": 50,
           "status": status}
    if status == "ok":
        rec.update({
            "eval": {"metrics": {"chrf": chrf, "bleu": chrf / 2, "rougeL": chrf, "exact_match": 0.0}},
            "subset_features": {"loss": f.get("loss", 1.0), "entropy": f.get("entropy", 2.0),
                                "length": f.get("length", 10.0)},
            "overlap": {"reference": {"n_examples": budget, "pooled_ngram_overlap": f.get("ngram", 0.1),
                                      "vocab_seen": f.get("seen", 0.5)},
                        "test": {"vocab_coverage": f.get("coverage", 0.3), "vocab_jaccard": f.get("jaccard", 0.1),
                                 "ngram_overlap": 0.0, "n_test_words": 400}},
            "timings": {"select_seconds": 6.0 if strategy == "kcenter" else 0.01, "train_seconds": 10.0,
                        "eval_seconds": 2.0}})
    else:
        rec.update({"error": "RuntimeError: CUDA out of memory", "timings": {}})
    (root / "runs").mkdir(parents=True, exist_ok=True)
    (root / "runs" / f"{run_id}.json").write_text(json.dumps(rec))


def _floor(root: Path, cfg: dict) -> None:
    (root / "runs" / "untrained.json").write_text(json.dumps(
        {"run_id": "untrained", "strategy": "untrained", "status": "ok", "config": cfg,
         "eval": {"metrics": {"chrf": 12.5, "bleu": 1.0, "rougeL": 5.0, "exact_match": 0.0}}}))


@pytest.fixture(scope="module")
def comparison(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """30 random subsets whose loss tracks chrF (the others are noise), a clearly better kcenter, a null
    perplexity, 2 failed runs."""
    root = tmp_path_factory.mktemp("comparison")
    cfg, rng = _cfg(), np.random.default_rng(0)
    z = rng.normal(0, 1, 30)
    for k in range(30):
        feats = {"loss": z[k] + rng.normal(0, 0.2), "entropy": rng.normal(2, 0.3), "length": rng.normal(10, 2),
                 "ngram": rng.uniform(0, .2), "seen": rng.uniform(.4, .6), "coverage": rng.uniform(.2, .4),
                 "jaccard": rng.uniform(0, .2)}
        _write(root, "random", "shuffled", k, k, k, 30 + 3 * z[k], cfg, features=feats)
    for k, v in enumerate([44.0, 45.5, 46.0, 43.0, 45.0]):
        _write(root, "kcenter", "shuffled", k, k, k, v, cfg)
    for k, v in enumerate([28.0, 31.0, 30.0, 29.0, 32.0]):
        _write(root, "perplexity", "shuffled", k, k, k, v, cfg)
    for k in (5, 6):
        _write(root, "kcenter", "shuffled", k, k, k, 0.0, cfg, status="failed")
    _floor(root, cfg)
    (root / "summary.json").write_text(json.dumps({"primary": "chrf",
                                                   "feature_cost": {"loss_seconds": 12.0, "embed_seconds": 3.0}}))
    return root, write_report(root)


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])


def _csv(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_files_and_self_contained_html(comparison):
    root, files = comparison
    out = root / "report"
    for name in ("report.md", "report.html", "strategies.csv", "correlations.csv", "strategies_vs_random.png",
                 "correlations.png", "overlap.png"):
        assert files[name] == out / name and (out / name).exists(), name
    assert not list(out.glob(".*.tmp"))                       # atomic writes leave no temporaries
    page = (out / "report.html").read_text(encoding="utf-8")
    assert 'src="http' not in page and "<script" not in page and "href=" not in page
    parser = _Images()
    parser.feed(page)
    parser.close()
    pngs = [f for f in files if f.endswith(".png")]
    assert len(parser.srcs) == len(pngs)
    for src in parser.srcs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG)


def test_verdicts_and_failed_runs(comparison):
    files = comparison[1]
    md = files["report.md"].read_text(encoding="utf-8")
    assert "**kcenter**: better than 95% of random subsets" in md
    assert "**perplexity**: inside the noise of random" in md
    assert "40 successful runs, 2 failed (excluded)" in md and "CUDA out of memory" in md
    assert "untrained floor 12.50" in md
    rows = {r["label"]: r for r in _csv(files["strategies.csv"])}
    assert rows["kcenter"]["test"] == "mann-whitney"          # 5 strategy seeds vs 30 random: unpaired
    assert float(rows["kcenter"]["percentile"]) == 100.0 and float(rows["kcenter"]["p_holm"]) < 0.05
    assert float(rows["perplexity"]["p_holm"]) >= float(rows["perplexity"]["p"])
    assert "1.7x random" in md                                 # kcenter: (3 s embeddings + 18 s) / 12.01 s


def test_strong_feature_is_significant_noise_is_not(comparison):
    files = comparison[1]
    rows = {r["feature"]: r for r in _csv(files["correlations.csv"])}
    assert rows["subset.loss"]["significant"] == "True" and float(rows["subset.loss"]["rho"]) > 0.8
    noise = [k for k in rows if k != "subset.loss"]
    assert noise and all(rows[k]["significant"] == "False" for k in noise)
    assert "reference.n_examples" not in rows and "test.n_test_words" not in rows   # not subset properties
    md = files["report.md"].read_text(encoding="utf-8")
    assert "OLS of chrf" in md and "chance gives" in md


def test_absent_sections_say_why(comparison):
    md = comparison[1]["report.md"].read_text(encoding="utf-8")
    assert "Not shown: needs >= 2 distinct subsets, one of them with >= 2 runs" in md
    assert "Not shown: needs runs at >= 2 budgets" in md
    assert "Not shown: needs several orderings" in md


def test_grid_variance_and_orderings(tmp_path):
    cfg = _cfg(strategies=["random"], orderings=["shuffled", "easy_to_hard"], design="grid",
               subset_seeds=[0, 1, 2, 3], order_seeds=[0, 1, 2], seeds=[0])
    rng = np.random.default_rng(1)
    matrix = 30 + np.arange(4)[:, None] + rng.normal(0, 3, (4, 3))          # (G subsets, N orders)
    for s in range(4):
        for o in range(3):
            _write(tmp_path, "random", "shuffled", s, o, 0, float(matrix[s, o]), cfg)
        _write(tmp_path, "random", "easy_to_hard", s, 0, 0, 60.0, cfg)      # beats every shuffled run
    files = write_report(tmp_path, tmp_path / "wr")
    (row,) = [r for r in _csv(files["variance.csv"]) if r["ordering"] == "shuffled"]
    expected = variance.variance_decomposition(matrix, np.random.default_rng(0))
    assert float(row["share_within"]) == pytest.approx(expected.share_within)
    assert float(row["anova_p"]) == pytest.approx(expected.anova_p)
    assert float(row["null_share"]) == pytest.approx(8 / 11)                     # (n - G)/(n - 1), 4 x 3
    assert row["within"] == "order" and float(row["subset_variance"]) == pytest.approx(
        expected.components[0].variance)
    assert files["variance.png"].exists() and files["orderings.png"].exists()
    md = files["report.md"].read_text(encoding="utf-8")
    assert "random [easy_to_hard]: better than all 12 shuffled runs (too few to claim 95%)" in md
    assert "among 12 shuffled runs; with only 12 shuffled runs the percentile is coarse" in md
    assert "Not shown: no strategy other than random" in md
    assert "Not shown: needs >= 8 random subsets, has 4" in md


def test_learning_curves_over_budgets(tmp_path):
    cfg = _cfg(strategies=["random", "kcenter"], seeds=[0, 1, 2])
    for budget, level in ((50, 20.0), (100, 30.0)):
        for k in range(3):
            _write(tmp_path, "random", "shuffled", k, k, k, level + k, cfg, budget=budget)
            _write(tmp_path, "kcenter", "shuffled", k, k, k, level + 1 + k, cfg, budget=budget)
    files = write_report(tmp_path)
    md = files["report.md"].read_text(encoding="utf-8")
    assert files["learning_curves.png"].exists() and "## 6. Learning curves\n\n| strategy | budget |" in md
    rows = {r["label"]: r for r in _csv(files["strategies.csv"])}
    assert set(rows) == {"kcenter @50", "kcenter @100"} and rows["kcenter @50"]["test"] == "wilcoxon"  # paired


def test_constant_metric_is_reported_not_raised(tmp_path):
    cfg = _cfg(strategies=["random", "kcenter"], design="grid", subset_seeds=list(range(10)), order_seeds=[0, 1])
    for s in range(10):
        for o in (0, 1):
            _write(tmp_path, "random", "shuffled", s, o, 0, 0.0, cfg, features={"loss": s})
            _write(tmp_path, "kcenter", "shuffled", s, o, 0, 0.0, cfg)
    md = write_report(tmp_path)["report.md"].read_text(encoding="utf-8")
    assert md.count("no variation to analyse") >= 3           # vs random, variance, features
    assert "every run scored 0" in md.split("## 1.")[0]        # and the findings say so up front


def test_not_a_results_directory(tmp_path):
    with pytest.raises(UserError, match="holds no runs"):
        write_report(tmp_path)


def test_deterministic_and_matplotlib_stays_out_of_import(comparison, tmp_path):
    import subprocess
    import sys

    root, files = comparison
    again = write_report(root, tmp_path / "again")
    for name in ("report.md", "report.html", "strategies.csv", "correlations.csv"):
        assert again[name].read_bytes() == files[name].read_bytes(), name
    code = ("import sys, llm_al.analysis.writeup; assert 'matplotlib' not in sys.modules; "
            f"llm_al.analysis.writeup.write_report({str(root)!r}, {str(tmp_path / 'sub')!r}); "
            "assert 'matplotlib.pyplot' not in sys.modules")     # a bare Figure: no global backend switch
    subprocess.run([sys.executable, "-c", code], check=True)


def test_variance_is_read_beside_its_null_for_the_design_run(tmp_path):
    """Subsets with 4, 4, 4 and 2 runs: every run (null (14 - 4)/13) and the largest balanced block,
    3 x 4 (null 9/11), each beside its own null and permutation null, with components and intervals;
    the paper's 10 x 10 null (0.91) beside its shares."""
    cfg = _cfg(strategies=["random"], design="grid", subset_seeds=[0, 1, 2, 3], order_seeds=[0, 1, 2, 3], seeds=[0])
    rng = np.random.default_rng(2)
    matrix = 30 + rng.normal(0, 3, (4, 4))
    for s in range(4):
        for o in range(4 if s < 3 else 2):
            _write(tmp_path, "random", "shuffled", s, o, 0, float(matrix[s, o]), cfg)
    files = write_report(tmp_path, tmp_path / "wr")
    rows = {r["block"]: r for r in _csv(files["variance.csv"])}
    every, block = rows["all runs"], rows["balanced block"]
    assert (int(every["n_subsets"]), int(every["n_runs"]), int(every["min_runs"])) == (4, 14, 2)
    assert float(every["null_share"]) == pytest.approx(10 / 13)
    expected = variance.variance_decomposition([matrix[s, :4 if s < 3 else 2] for s in range(4)], rng)
    assert float(every["share_within"]) == pytest.approx(expected.share_within)
    assert (int(block["n_subsets"]), int(block["n_runs"])) == (3, 12) and float(block["null_share"]) == pytest.approx(9 / 11)
    assert float(block["share_within"]) == pytest.approx(
        variance.variance_decomposition(matrix[:3], rng).share_within)
    for r in rows.values():
        assert float(r["perm_q05"]) < float(r["null_share"]) < float(r["perm_q95"]) and 0 < float(r["perm_p"]) <= 1
        assert float(r["subset_ci_low"]) <= float(r["subset_variance"]) <= float(r["subset_ci_high"])
        assert float(r["order_ci_low"]) <= float(r["order_variance"]) <= float(r["order_ci_high"])
    md = files["report.md"].read_text(encoding="utf-8")
    section = md[md.index("## 4."):md.index("## 5.")]
    assert "| within-subset share | null | excess |" in section
    assert f"| {10 / 13:.2f} |" in section and f"| {9 / 11:.2f} |" in section
    assert "whose null is 0.91" in section and "at or below it" in section
    assert "if subsets made no difference" in md.split("## 1.")[0]


def test_feature_correlation_uses_one_run_per_subset_when_subsets_ran_unequally(tmp_path):
    """12 subsets at order 0, init 0, four of them also run at orders 1-3 (as the reproduction's 8 x 4
    arm beside its 30 single runs): the correlation reads the order-0 run of each, not the mean of 4
    runs beside single runs, and says so."""
    cfg = _cfg(strategies=["random"], design="grid", subset_seeds=list(range(12)), order_seeds=[0, 1, 2, 3])
    rng = np.random.default_rng(3)
    first = 30 + rng.normal(0, 3, 12)
    loss = first + rng.normal(0, 0.5, 12)                     # tracks the order-0 runs
    for s in range(12):
        _write(tmp_path, "random", "shuffled", s, 0, 0, float(first[s]), cfg, features={"loss": loss[s]})
        for o in range(1, 4) if s < 4 else ():
            _write(tmp_path, "random", "shuffled", s, o, 0, float(first[s] + (-1) ** s * 8.0 * o), cfg,
                   features={"loss": loss[s]})
    files = write_report(tmp_path, tmp_path / "wr")
    rows = {r["feature"]: r for r in _csv(files["correlations.csv"])}
    expected = stats.spearmanr(loss, first).statistic
    assert float(rows["subset.loss"]["rho"]) == pytest.approx(expected) and int(rows["subset.loss"]["n"]) == 12
    md = files["report.md"].read_text(encoding="utf-8")
    assert "over 12 random subsets (ordering shuffled, budget 100; one run each, at order seed 0 and init seed 0" in md


def test_intervals_are_t_intervals_with_n_beside_them(comparison):
    files = comparison[1]
    md = files["report.md"].read_text(encoding="utf-8")
    kc = next(r for r in _csv(files["strategies.csv"]) if r["label"] == "kcenter")
    lo, hi = stats_welch([44.0, 45.5, 46.0, 43.0, 45.0], kc)
    assert float(kc["ci_low"]) == pytest.approx(lo) and float(kc["ci_high"]) == pytest.approx(hi)
    assert f"95% t-CI [{lo:+.2f}, {hi:+.2f}] (n=5 vs 30)" in md


def stats_welch(strategy: list[float], row: dict) -> tuple[float, float]:
    """Welch's interval for the kcenter row, from the random runs' mean and the recorded values."""
    from llm_al.analysis.stats import welch_interval

    z = np.random.default_rng(0).normal(0, 1, 30)
    assert float(row["random_mean"]) == pytest.approx(float(np.mean(30 + 3 * z)))
    return welch_interval(np.array(strategy), 30 + 3 * z)


def test_loop_runs_give_a_learning_curve_by_labelled_examples(tmp_path):
    cfg = _cfg(strategies=["random", "kcenter"], seeds=[0, 1])
    for k in (0, 1):
        for strategy, gain in (("random", 0.0), ("kcenter", 4.0)):
            _write(tmp_path, strategy, "shuffled", k, k, k, 30.0 + gain, cfg)
            path = tmp_path / "runs" / f"{strategy}-shuffled-s{k}o{k}i{k}-b100.json"
            rec = json.loads(path.read_text())
            rec["rounds"] = [{"round": r, "labelled": 20 + 40 * r,
                              "metrics": {"chrf": 20.0 + 5 * r + (gain if r else 0.0) + k}} for r in range(3)]
            path.write_text(json.dumps(rec))
    _floor(tmp_path, cfg)
    md = write_report(tmp_path, tmp_path / "wr")["report.md"].read_text(encoding="utf-8")
    section = md[md.index("## 6."):md.index("## 7.")]
    assert "| kcenter | 100 | 2 | 34.50 |" in section and "| random | 20 | 2 | 20.50 |" in section
    assert "learning_curves.png" in section


def test_setup_names_the_seeds_the_runs_used_not_the_first_runs_config(tmp_path):
    """Runs recorded by two invocations (one with seeds=[0], one with [0, 1, 2]) keep each one's
    config; the report's setup must list the seeds of the runs it analyses."""
    root = tmp_path / "res"
    for s in range(3):
        cfg = _cfg(strategies=["random", "kcenter"], seeds=[0] if s == 0 else [0, 1, 2])
        _write(root, "random", "shuffled", s, s, s, 30.0 + s, cfg)
        _write(root, "kcenter", "shuffled", s, s, s, 31.0 + s, cfg)
    md = write_report(root)["report.md"].read_text()
    assert "design paired (seeds [0, 1, 2])" in md


def test_title_names_the_folders_own_config(tmp_path):
    """Runs reused from an earlier experiment keep their config's name; the report is titled by the
    folder's config.yaml (the invocation that made the folder), when there is one."""
    cfg = _cfg(strategies=["random"], seeds=[0, 1])
    for k in range(2):
        _write(tmp_path, "random", "shuffled", k, k, k, 30.0 + k, {**cfg, "name": "earlier"})
    assert write_report(tmp_path)["report.md"].read_text(encoding="utf-8").startswith("# llm-al report: earlier")
    (tmp_path / "config.yaml").write_text("name: this_folder\n", encoding="utf-8")
    assert write_report(tmp_path)["report.md"].read_text(encoding="utf-8").startswith(
        "# llm-al report: this_folder")
