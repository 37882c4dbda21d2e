"""`llm-al report`'s section on the variance decomposition (llm_al/analysis/variance.py): for each
(strategy, ordering, budget) with >= 2 subsets, one of them run >= 2 times, the within-subset share
beside its null for the design run and the permutation null, the variance components with their
intervals, and the paper's figures on the same footing (excess over the null of its own grid)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from llm_al.analysis import variance
from llm_al.analysis.document import Context, Document, figure, fmt

WHY = "needs >= 2 distinct subsets, one of them with >= 2 runs (orders or init seeds), e.g. design=grid"
WITHIN = {"order": "order (init fixed)", "init": "init (order fixed)", "order+init": "order and init together",
          "crossed": "order x init grid", "within": "runs (seeds not recorded)"}


def _balanced_block(groups: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """The largest balanced block: the first n runs of every subset with >= n (the most runs, then the
    larger n; G >= 2, n >= 2); None when that is every run already or there is none."""
    lens = [len(v) for v, _ in groups]
    options = [m for m in range(2, max(lens) + 1) if sum(k >= m for k in lens) >= 2]
    if not options or min(lens) == max(lens):
        return None
    n = max(options, key=lambda m: (m * sum(k >= m for k in lens), m))
    return [(v[:n], s[:n]) for v, s in groups if len(v) >= n]


def _design(d: variance.VarianceDecomposition) -> str:
    if d.min_runs == d.max_runs:
        return f"{d.n_subsets} subsets x {d.max_runs} runs"
    return f"{d.n_subsets} subsets of {d.min_runs}-{d.max_runs} runs, {d.n_runs} runs"


def decompositions(c: Context) -> tuple[list[dict], list[str]]:
    """(one row per decomposed cell and block: its label, the block, the VarianceDecomposition; the
    cells not decomposed, each with why)."""
    rows, skipped = [], []
    for (s, o, b), runs in c.groups.items():
        by: dict[Any, list] = defaultdict(list)
        for r in runs:
            by[r.subset].append(r)
        known = all(None not in r.seeds[1:3] for r in runs)          # order and init seeds recorded
        groups = [(np.array([r.value for r in rs]), np.array([r.seeds[1:3] if known else (0, 0) for r in rs]))
                  for rs in by.values()]
        label = c.label(s, o, b)
        if len(groups) < 2 or max(len(v) for v, _ in groups) < 2:
            skipped.append(f"{label} ({len(groups)} distinct subset(s), {sum(len(v) >= 2 for v, _ in groups)} with >= 2 runs)")
            continue
        if np.ptp(np.concatenate([v for v, _ in groups])) == 0:
            skipped.append(f"{label} (every run scored {groups[0][0][0]:g}: no variation to analyse)")
            continue
        block = _balanced_block(groups)
        for name, part in (("all runs", groups), ("balanced block", block)):
            if part is not None:
                d = variance.variance_decomposition([v for v, _ in part], c.rng,
                                                    seeds=[sd for _, sd in part] if known else None)
                rows.append({"label": label, "strategy": s, "ordering": o, "budget": b, "block": name, "d": d})
    return rows, skipped


def _paper_lines(rows: list[dict]) -> list[str]:
    """The paper's shares and ours on the same footing: each beside the null of its own grid, as
    within-subset shares of the variance components, and ours carried to the paper's grid."""
    lines = []
    for r in rows:
        key = 500 if isinstance(r["budget"], (int, float)) and r["budget"] >= 300 else 100   # the paper's budgets
        f = variance.paper_footing(r["d"], key)
        lo, hi = f["paper_shares"]
        paper = (f"The paper (Flores et al. 2026, {key} examples): shares {lo:.2f}-{hi:.2f} on its {f['paper_grid']} "
                 f"grid, whose null is {f['paper_null']:.2f}: {f['paper_excess'][0]:+.2f} to "
                 f"{f['paper_excess'][1]:+.2f} from it, at or below it; as variance components, a within-subset "
                 f"share of {f['paper_within_vc'][0]:.2f}-{f['paper_within_vc'][1]:.2f} (each share read as its "
                 "expectation).")
        if paper not in lines:
            lines.append(paper)
        at, vc = f["ours_share_at_paper_grid"], f["ours_within_vc"]
        lines.append(f"**{r['label']} ({r['block']}, {_design(r['d'])})**: share {f['ours_share']:.2f}, "
                     f"{f['ours_excess']:+.2f} from its null {f['ours_null']:.2f}; within-subset share of the "
                     f"components {fmt(vc[0])} [{fmt(vc[1])}, {fmt(vc[2])}]; on the paper's {f['paper_grid']} grid "
                     f"these components imply a share of {fmt(at[0])} [{fmt(at[1])}, {fmt(at[2])}] "
                     f"({fmt(f['ours_excess_at_paper_grid'][0], '+.2f')} from its null).")
    return lines


def _flat(row: dict) -> dict:
    d = row["d"].to_dict()
    comps = d.pop("components")
    out = {k: v for k, v in row.items() if k != "d"} | d
    for comp in comps:
        name = comp.pop("name")
        out |= {f"{name}_{k}": v for k, v in comp.items()}
    return out


def report_section(doc: Document, c: Context) -> None:
    """`llm-al report`'s "Variance decomposition" section (doc, c: llm_al.analysis.document's Document
    and Context)."""
    doc.add("h", "4. Variance decomposition (subset vs order and init)")
    rows, skipped = decompositions(c)
    if not rows:
        doc.absent(WHY + (f"; have: {'; '.join(skipped)}" if skipped else ""))
        return
    doc.add("table", ["runs", "block", "design", "within a subset", "within-subset share", "null", "excess",
                      "shuffled labels 5-95%", "permutation p", "ANOVA F", "ANOVA p"],
            [[r["label"], r["block"], _design(d := r["d"]), WITHIN[d.within], fmt(d.share_within), fmt(d.null_share),
              fmt(d.excess, "+.2f"), f"{fmt(d.perm_q05)}-{fmt(d.perm_q95)}", fmt(d.perm_p, ".3g"),
              fmt(d.anova_f, ".3g"), fmt(d.anova_p, ".3g")] for r in rows])
    doc.add("p", "within-subset share = SS_within / SS_total, the protocol's ordering share. It depends on the "
                 "design: if subsets made no difference it would be (n - G)/(n - 1) on average for G subsets and n "
                 "runs (null; 0.77 at 8 x 4, 0.91 at 10 x 10), so only its excess over that null says anything, and "
                 "a share below the null says subsets matter. Permutation p: the share of "
                 f"{rows[0]['d'].n_perm} shufflings of the subset labels across runs that give a share this low "
                 "or lower.")
    doc.add("table", ["runs", "block", "component", "variance", "95% CI", "share of variance", "95% CI"],
            [[r["label"], r["block"], comp.name, fmt(comp.variance, ".3g"),
              f"[{fmt(comp.ci_low, '.3g')}, {fmt(comp.ci_high, '.3g')}] (G={r['d'].n_subsets})", fmt(comp.share),
              f"[{fmt(comp.share_ci_low)}, {fmt(comp.share_ci_high)}]"] for r in rows for comp in r["d"].components])
    notes = sorted({r["d"].note for r in rows if r["d"].note})
    doc.add("p", f"Variance components in {c.primary} units^2: method-of-moments (ANOVA) estimates truncated at 0, "
                 "with generalized confidence intervals under the normal random-effects model (a bootstrap over "
                 "subsets covers too rarely with 8 subsets; llm_al/analysis/variance.py says how these were "
                 "checked). They do not depend on the grid."
            + (" `order` (init fixed) includes any residual noise: separating them needs repeated runs of one seed "
               "pair." if any(r["d"].within == "order" for r in rows) else "")
            + (" " + "; ".join(notes) + "." if notes else "")
            + (f" Not decomposed ({WHY}): {'; '.join(skipped)}." if skipped else ""))
    doc.add("list", _paper_lines(rows))
    doc.csv("variance.csv", [_flat(r) for r in rows])
    for r in rows:
        d = r["d"]
        comps = ", ".join(f"{k.name} {k.variance:.3g} [{k.ci_low:.3g}, {k.ci_high:.3g}]" for k in d.components)
        doc.findings.append(f"{r['label']} ({r['block']}, {_design(d)}): within-subset share {d.share_within:.2f} "
                            f"vs {d.null_share:.2f} if subsets made no difference (excess {d.excess:+.2f}, "
                            f"permutation p {d.perm_p:.3g}); variance components {comps}.")
    _plot(doc, rows)


def _plot(doc: Document, rows: list[dict]) -> None:
    fig, ax = figure(max(4.0, 1.2 * len(rows) + 2), 3.6)
    x = np.arange(len(rows))
    ds = [r["d"] for r in rows]
    share, null = np.array([d.share_within for d in ds]), np.array([d.null_share for d in ds])
    band = np.abs(np.array([[d.perm_q05, d.perm_q95] for d in ds]).T - null)              # (2, rows)
    ax.bar(x, share, color="C0", width=0.5, label="within-subset share (observed)")
    ax.errorbar(x + 0.3, null, yerr=np.nan_to_num(band), fmt="_k", markersize=14, capsize=4,
                label="no subset effect: expectation, 5-95% of shuffles")
    ax.set_xticks(x, [f"{r['label']}\n{r['block']}" for r in rows], rotation=25, ha="right")
    ax.set(ylim=(0, 1), ylabel="SS_within / SS_total")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    doc.figure(fig, "variance.png", "Within-subset share of the sum of squares beside what it would be if subsets "
               "made no difference (the expectation and the 5-95% range of shuffled subset labels).")
