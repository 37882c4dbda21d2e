"""The comparison with random: per-strategy means over seeds, paired differences from random with
bootstrap intervals, wins out of n; printed as a table and written as Markdown, CSV and JSON."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from llm_al.io import write_text
from llm_al.metrics import METRICS
from llm_al.seeds import rng
from llm_al.stats import bootstrap_ci, paired_comparison


def summarize(results: list[dict], floor: dict, cfg) -> dict:
    """Per strategy: mean and 95% bootstrap CI over seeds of every metric; for the primary metric
    the paired (by seed) difference from random with its CI and wins out of n."""
    primary = cfg.eval.primary
    higher = METRICS.get(primary).meta.get("higher_is_better", True)
    ok = [r for r in results if r.get("status") == "ok"]
    by_strategy: dict[str, dict[int, dict]] = {}
    for r in ok:
        by_strategy.setdefault(r["strategy"], {})[r["seed"]] = r
    random_runs = by_strategy.get("random", {})
    stats_rng = rng(cfg.seeds[0], "stats")
    rows = []
    for spec in cfg.strategies:
        runs = by_strategy.get(spec, {})
        row: dict = {"strategy": spec, "n": len(runs),
                     "failed": sum(1 for r in results if r["strategy"] == spec and r.get("status") != "ok")}
        if runs:
            for metric in cfg.eval.metrics:
                vals = np.array([runs[s]["eval"]["metrics"][metric] for s in sorted(runs)])
                lo, hi = bootstrap_ci(vals, stats_rng)
                row[metric] = {"mean": float(vals.mean()), "sd": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
                               "ci": [lo, hi], "values": vals.tolist()}
            row["train_seconds"] = float(np.mean([r["timings"]["train_seconds"] for r in runs.values()]))
            row["overlap"] = _mean_overlap(list(runs.values()))
            row["select_seconds"] = float(np.mean([r["timings"]["select_seconds"] for r in runs.values()]))
        paired = sorted(set(runs) & set(random_runs))
        if spec != "random" and paired:
            cmp = paired_comparison(np.array([runs[s]["eval"]["metrics"][primary] for s in paired]),
                                    np.array([random_runs[s]["eval"]["metrics"][primary] for s in paired]),
                                    stats_rng, higher_is_better=higher)
            row["vs_random"] = {"n": cmp.n, "mean_diff": cmp.mean_diff, "ci": [cmp.ci_low, cmp.ci_high],
                                "wins": cmp.wins, "ties": cmp.ties, "verdict": verdict(cmp.ci_low, cmp.ci_high, higher)}
        rows.append(row)
    return {"primary": primary, "higher_is_better": higher, "budget": cfg.budget, "ordering": cfg.ordering,
            "seeds": cfg.seeds, "test_size": floor.get("test_size"), "pool_size": floor.get("pool_size"),
            "untrained": floor["eval"]["metrics"], "strategies": rows}


OVERLAP_COLUMNS = {("reference", "pooled_ngram_overlap"): "ref n-gram %",
                   ("reference", "vocab_seen"): "ref vocab %",
                   ("test", "vocab_coverage"): "test vocab cov %"}


def _mean_overlap(runs: list[dict]) -> dict:
    """Mean over runs of the overlap figures the table shows (as percentages)."""
    out = {}
    for (group, key), label in OVERLAP_COLUMNS.items():
        values = [r["overlap"][group][key] for r in runs if group in r.get("overlap", {})]
        if values:
            out[label] = 100 * float(np.mean(values))
    return out


def verdict(lo: float, hi: float, higher_is_better: bool) -> str:
    if lo <= 0 <= hi:
        return "inside the noise of random"
    better = lo > 0 if higher_is_better else hi < 0
    return "better than random" if better else "worse than random"


def _fmt(x: float) -> str:
    return f"{x:6.2f}"


def table_rows(summary: dict) -> list[list[str]]:
    p = summary["primary"]
    overlap_cols = [c for c in OVERLAP_COLUMNS.values()
                    if any(c in r.get("overlap", {}) for r in summary["strategies"])]
    header = ["strategy", "n", f"{p} mean", "95% CI (seeds)", "diff vs random", "95% CI (paired)", "wins",
              "verdict", "train s/run", *overlap_cols]
    blank = [""] * (len(header) - 3)
    rows = [header, ["untrained (floor)", "-", _fmt(summary["untrained"][p]), *blank]]
    for r in summary["strategies"]:
        if p not in r:
            rows.append([r["strategy"], str(r["n"]), "failed" if r["failed"] else "-", *blank])
            continue
        m = r[p]
        v = r.get("vs_random")
        rows.append([
            r["strategy"], str(r["n"]), _fmt(m["mean"]), f"[{m['ci'][0]:.2f}, {m['ci'][1]:.2f}]",
            f"{v['mean_diff']:+.2f}" if v else "(baseline)",
            f"[{v['ci'][0]:+.2f}, {v['ci'][1]:+.2f}]" if v else "",
            f"{v['wins']}/{v['n']}" if v else "", v["verdict"] if v else "", f"{r['train_seconds']:.0f}",
            *(f"{r['overlap'][c]:.1f}" if c in r.get("overlap", {}) else "" for c in overlap_cols),
        ])
    return rows


def format_table(summary: dict) -> str:
    rows = table_rows(summary)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    direction = "higher is better" if summary["higher_is_better"] else "lower is better"
    title = (f"{summary['primary']} ({direction}) on {summary['test_size']} test examples; budget "
             f"{summary['budget']} of {summary['pool_size']}, ordering {summary['ordering']}, "
             f"seeds {summary['seeds']} (runs paired by seed)")
    others = [m for m in summary["strategies"][0] if m in METRICS and m != summary["primary"]]
    extra = []
    for r in summary["strategies"]:
        if all(m in r for m in others):
            extra.append(f"  {r['strategy']}: " + ", ".join(f"{m} {r[m]['mean']:.2f}" for m in others))
    floor = ", ".join(f"{m} {summary['untrained'][m]:.2f}" for m in others)
    notes = ["Overlap columns: share of the subset's word n-grams found in the reference corpus, share of its "
             "words seen there, and share of the test references' words present in the subset's responses."]
    return "\n".join([title, "", *lines, "", "Other metrics (mean over seeds):", f"  untrained: {floor}", *extra,
                      "", *notes])


def write_tables(summary: dict, out: Path) -> None:
    write_text(out / "table.md", "```\n" + format_table(summary) + "\n```\n")
    buf = io.StringIO()
    csv.writer(buf).writerows(table_rows(summary))
    write_text(out / "table.csv", buf.getvalue())
