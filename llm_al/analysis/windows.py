"""`llm-al report`'s section on difficulty windows (the `window` strategy, llm_al/strategies/windows.py):
how the metric moves along the pool's difficulty ranking, and how much of that is length."""

from __future__ import annotations

import numpy as np
from scipy import stats as sps

from llm_al.analysis.document import Context, Document, figure, fmt
from llm_al.analysis.protocol import partial_spearman
from llm_al.config import parse_strategy


def report_section(doc: Document, c: Context) -> None:
    """`llm-al report`'s "Difficulty windows" section (doc, c: llm_al.analysis.document's Document and Context):
    for each (by, ordering, budget), each window's runs: mean metric, the subset's mean base-model
    `by` and mean length; Spearman of the metric with the window start, the mean `by` and the mean
    length over all runs; and the partial Spearman of the metric with `by` holding length fixed,
    which separates difficulty from the length it drags along."""
    groups: dict[tuple, list[tuple[float, object]]] = {}
    for (spec, ordering, budget), runs in c.groups.items():
        name, params = parse_strategy(spec)
        if name == "window":
            key = (params.get("by", "loss"), ordering, budget)
            groups.setdefault(key, []).extend((float(params.get("start", 0.5)), r) for r in runs)
    doc.add("h", "9. Difficulty windows")
    if not groups:
        doc.absent("no `window` strategy in this directory")
        return
    for (by, ordering, budget), pairs in groups.items():
        starts = sorted({s for s, _ in pairs})
        where = f"{by} windows, ordering {ordering}, budget {budget}"
        rows, table = [], []
        for s in starts:
            runs = [r for t, r in pairs if t == s]
            mean = lambda key: float(np.mean([r.features.get(key, np.nan) for r in runs]))  # noqa: E731
            row = {"start": s, "n": len(runs), "metric": float(np.mean([r.value for r in runs])),
                   "by": mean(f"subset.{by}"), "length": mean("subset.length")}
            rows.append(row)
            table.append([f"{s:g}", str(len(runs)), fmt(row["metric"]), fmt(row["by"], ".3f"), fmt(row["length"], ".1f")])
        doc.add("p", f"Contiguous windows of the pool's ascending {by} ranking ({where}); the subset columns are "
                     f"means under the base model (a warm-started scorer may rank differently).")
        doc.add("table", ["window start", "runs", c.primary, f"subset mean {by} (base)", "subset mean length (words)"],
                table)
        doc.csv(f"windows_{by}.csv", rows)
        if len(starts) < 2:
            doc.absent(f"{where}: one window only, nothing to relate")
            continue
        y = np.array([r.value for _, r in pairs])
        x = {"window start": np.array([s for s, _ in pairs]),
             f"mean {by}": np.array([r.features.get(f"subset.{by}", np.nan) for _, r in pairs]),
             "mean length": np.array([r.features.get("subset.length", np.nan) for _, r in pairs])}
        lines = []
        for label, v in x.items():
            ok = np.isfinite(v)
            if ok.sum() >= 3 and np.ptp(v[ok]) > 0 and np.ptp(y[ok]) > 0:
                res = sps.spearmanr(v[ok], y[ok])
                lines.append(f"{c.primary} vs {label}: Spearman {res.statistic:+.2f} (p {res.pvalue:.3g}, n {ok.sum()})")
        a, b = x[f"mean {by}"], x["mean length"]
        ok = np.isfinite(a) & np.isfinite(b)
        if ok.sum() >= 4:
            rho, p = partial_spearman(a[ok], y[ok], b[ok])
            conf = sps.spearmanr(a[ok], b[ok]).statistic if np.ptp(a[ok]) > 0 and np.ptp(b[ok]) > 0 else np.nan
            lines.append(f"{c.primary} vs mean {by} holding length fixed: partial Spearman {fmt(rho, '+.2f')} "
                         f"(p {fmt(p, '.3g')}); {by} and length move together with Spearman {fmt(conf, '+.2f')} "
                         "across these subsets (the length confound)")
            doc.findings.append(f"difficulty windows ({by}): partial Spearman of {c.primary} with {by} holding "
                                f"length fixed {fmt(rho, '+.2f')} (p {fmt(p, '.3g')}); {by} vs length {fmt(conf, '+.2f')}.")
        doc.add("list", lines or ["too few runs with subset features to correlate"])
        fig, ax = figure(6.5, 4.0)
        ax.plot([r["start"] for r in rows], [r["metric"] for r in rows], "o-", color="C0", label=c.primary)
        ax.set(xlabel=f"window start (quantile of the {by} ranking; 0 = lowest)", ylabel=c.primary)
        twin = ax.twinx()
        twin.plot([r["start"] for r in rows], [r["length"] for r in rows], "s--", color="C1", label="mean length")
        twin.set_ylabel("subset mean length (words)", color="C1")
        doc.figure(fig, f"windows_{by}.png", f"{c.primary} of each {by} window (mean of its runs) with the "
                   "window's mean response length: the length confound.")
