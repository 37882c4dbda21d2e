"""The comparison with random: per-strategy means over seeds, paired differences from random with
Student t intervals (n beside each), wins out of n; printed as a table and written as Markdown, CSV
and JSON."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from llm_al.analysis.document import interval
from llm_al.analysis.protocol import percentile_among_random
from llm_al.analysis.stats import paired_comparison, t_interval
from llm_al.analysis.variance import variance_decomposition
from llm_al.config import ExperimentConfig, parse_strategy
from llm_al.features.probes import provider
from llm_al.io import write_text
from llm_al.metrics import METRICS
from llm_al.seeds import rng
from llm_al.strategies.needs import strategy_needs
from llm_al.types import DIRECT_FEATURES, LOSS_FEATURES


def _key(r: dict) -> tuple[int, int, int]:
    return (r["seeds"]["subset"], r["seeds"]["order"], r["seeds"]["init"])


def strategy_cost(spec: str, feature_cost: dict) -> dict:
    """What a strategy's features cost: model tokens scored (cached or not, so runs compare) and
    examples embedded, with the seconds they took when computed in this run."""
    needs = strategy_needs(*parse_strategy(spec))
    tokens = seconds = 0.0
    for kind, group in (("loss", LOSS_FEATURES), ("direct", DIRECT_FEATURES)):
        if needs & group:
            tokens += feature_cost.get(f"{kind}_tokens_needed", 0)
            seconds += feature_cost.get(f"{kind}_seconds", 0.0)
    if "scorer_ifd" in needs:
        tokens += feature_cost.get("scorer_loss_tokens_needed", 0) + feature_cost.get("scorer_direct_tokens_needed", 0)
        seconds += feature_cost.get("scorer_loss_seconds", 0.0) + feature_cost.get("scorer_direct_seconds", 0.0)
    embedded = feature_cost.get("embed_examples_needed", 0) if "embeddings" in needs else 0
    shared = feature_cost.get("embed_in_loss_pass") and needs & LOSS_FEATURES   # model.embedder=model: one pass
    if embedded and not shared:
        seconds += feature_cost.get("embed_seconds", 0.0)
    probe_tokens = 0
    for name in sorted({p.name for p in map(provider, needs) if p is not None}):
        c = feature_cost.get(f"probe_{name}", {})       # as computed in this run: 0 where cached
        probe_tokens += int(c.get("tokens_scored", 0)) + int(c.get("generated_tokens", 0))
        seconds += float(c.get("seconds", 0.0))
    return {"scored_tokens": int(tokens), "embedded_examples": int(embedded), "probe_tokens": probe_tokens,
            "feature_seconds": seconds}


def summarize(results: list[dict], floor: dict, cfg: ExperimentConfig, feature_cost: dict | None = None) -> dict:
    """One row per (strategy, ordering): mean and 95% t interval over runs of every metric (None
    with one run); for
    the primary metric, the difference from random under the same ordering paired by seeds, with
    its CI and wins out of n; with several orderings, each against shuffled order (percentile among
    the shuffled runs); with several subsets of several runs each, the within-subset share of the
    variance beside its null (how much order and init noise, rather than the subset, moves the score)."""
    primary = cfg.eval.primary
    higher = METRICS.get(primary).meta.get("higher_is_better", True)
    value = lambda r: r["eval"]["metrics"][primary]  # noqa: E731
    budgets = cfg.budget_list
    budget_of = lambda r: r.get("budget", cfg.budget)  # noqa: E731
    groups: dict[tuple[str, str, int], dict[tuple, dict]] = {}
    for r in results:
        if r.get("status") == "ok":
            groups.setdefault((r["strategy"], r["ordering"], budget_of(r)), {})[_key(r)] = r
    stats_rng = rng(cfg.seeds[0], "stats")
    rows = []
    for budget in budgets:                                   # one row per (budget, strategy, ordering)
        for spec, ordering in ((s, o) for s in cfg.strategies for o in cfg.orderings):
            runs = groups.get((spec, ordering, budget), {})
            label = spec if len(cfg.orderings) == 1 else f"{spec} [{ordering}]"
            label += f" @{budget}" if len(budgets) > 1 else ""
            row: dict = {"strategy": spec, "ordering": ordering, "budget": budget, "label": label, "n": len(runs),
                         "failed": sum(1 for r in results if (r["strategy"], r.get("ordering"), budget_of(r))
                                       == (spec, ordering, budget) and r.get("status") != "ok")}
            if not runs:
                rows.append(row)
                continue
            for metric in cfg.eval.metrics:
                vals = np.array([runs[k]["eval"]["metrics"][metric] for k in sorted(runs)])
                ci = list(t_interval(vals)) if len(vals) > 1 else None
                row[metric] = {"mean": float(vals.mean()), "sd": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
                               "ci": ci, "values": vals.tolist()}
            row["by_task"] = _by_task(list(runs.values()), primary)
            row["train_seconds"] = float(np.mean([r["timings"]["train_seconds"] for r in runs.values()]))
            row["select_seconds"] = float(np.mean([r["timings"]["select_seconds"] for r in runs.values()]))
            row["overlap"] = _mean_overlap(list(runs.values()))
            row["cost"] = strategy_cost(spec, feature_cost or {})
            baseline = groups.get(("random", ordering, budget), {})
            paired = sorted(set(runs) & set(baseline))
            if spec != "random" and paired:
                cmp = paired_comparison(np.array([value(runs[k]) for k in paired]),
                                        np.array([value(baseline[k]) for k in paired]), stats_rng,
                                        higher_is_better=higher)
                ci = [cmp.ci_low, cmp.ci_high] if cmp.n > 1 else None
                row["vs_random"] = {"n": cmp.n, "mean_diff": cmp.mean_diff, "ci": ci,
                                    "wins": cmp.wins, "ties": cmp.ties, "p_sign_flip": cmp.p,
                                    "verdict": paired_verdict(cmp.ci_low, cmp.ci_high, higher, cmp.n, cmp.p)}
            shuffled = groups.get((spec, "shuffled", budget), {})
            if ordering != "shuffled" and len(shuffled) > 1:
                mine = np.array([value(r) for r in runs.values()])
                others = np.array([value(r) for r in shuffled.values()])
                row["vs_shuffled"] = {"mean_diff": float(mine.mean() - others.mean()), "n_shuffled": len(others),
                                      "percentile": percentile_among_random(float(mine.mean()), others, higher)}
            row["variance"] = _variance(runs, value, stats_rng)
            row["curve"] = _curve(list(runs.values()), primary)
            rows.append(row)
    return {"primary": primary, "higher_is_better": higher,
            "budget": budgets[0] if len(budgets) == 1 else budgets, "orderings": cfg.orderings,
            "design": cfg.design, "runs": sum(r["n"] for r in rows), "test_size": floor.get("test_size"),
            "pool_size": floor.get("pool_size"), "untrained": floor["eval"]["metrics"], "strategies": rows,
            "untrained_by_task": _by_task([floor], primary), "aggregate": floor["eval"].get("aggregate")}


def _by_task(runs: list[dict], primary: str) -> dict | None:
    """Mean primary metric per task over runs whose test set mixes tasks (eval.by_task), else None."""
    if not runs or not all(r["eval"].get("by_task") for r in runs):
        return None
    tasks = sorted(runs[0]["eval"]["by_task"])
    return {t: {"mean": float(np.mean([r["eval"]["by_task"][t][primary] for r in runs])),
                "n_test": runs[0]["eval"]["by_task"][t]["n"]} for t in tasks}


def _curve(runs: list[dict], primary: str) -> list[dict] | None:
    """Mean primary metric per active-learning round over the runs (None without rounds)."""
    if not all(r.get("rounds") for r in runs):
        return None
    by_round: dict[int, list] = {}
    for r in runs:
        for entry in r["rounds"]:
            by_round.setdefault(entry["round"], []).append((entry["labelled"], entry["metrics"][primary]))
    return [{"round": k, "labelled": v[0][0], "mean": float(np.mean([m for _, m in v])), "n": len(v)}
            for k, v in sorted(by_round.items())]


def _variance(runs: dict[tuple, dict], value, stats_rng) -> dict | None:
    """The within-subset share beside its null and the variance components (llm_al.analysis.variance),
    over every run of >= 2 subsets when at least one has >= 2 runs; None otherwise."""
    by_subset: dict[int, list[tuple]] = {}
    for key in sorted(runs):
        by_subset.setdefault(key[0], []).append((value(runs[key]), key[1], key[2]))
    sizes = sorted(len(v) for v in by_subset.values())
    if len(by_subset) < 2 or sizes[-1] < 2:
        return None
    shape = {"subsets": len(by_subset), "runs_per_subset": sizes[0] if sizes[0] == sizes[-1] else f"{sizes[0]}-{sizes[-1]}"}
    groups = [np.array([v for v, _, _ in rs]) for rs in by_subset.values()]
    if np.ptp(np.concatenate(groups)) == 0:
        return {**shape, "share_within": None, "note": "every run scored the same: no variance to share out"}
    seeds = [np.array([(o, i) for _, o, i in rs]) for rs in by_subset.values()]
    return {**shape, **variance_decomposition(groups, stats_rng, seeds=seeds, n_draws=2000, n_perm=2000).to_dict()}


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


MIN_PAIRS = 3
"""Paired seeds below which no verdict is given: a bootstrap CI of one or two differences is
degenerate (one pair: a single point), so it cannot tell a gain from seed noise."""


def paired_verdict(lo: float, hi: float, higher_is_better: bool, n: int | None = None, p: float | None = None,
                   alpha: float = 0.05) -> str:
    """From the paired CI and the paired sign-flip p (few seeds; with many random subsets,
    analysis.verdict also asks for the percentile among them). With fewer than MIN_PAIRS pairs, no
    verdict; a CI that excludes 0 while p >= alpha (always so below 6 seeds) only "leans"."""
    if n is not None and n < MIN_PAIRS:
        return f"too few seeds for a verdict (n={n})"
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "no verdict (a non-finite result)"
    if lo <= 0 <= hi:
        return "inside the noise of random"
    better = lo > 0 if higher_is_better else hi < 0
    if p is not None and not p < alpha:
        return f"leans {'better' if better else 'worse'}, not significant (sign-flip p {p:.2g}, n={n})"
    return "better than random" if better else "worse than random"


def _fmt(x: float) -> str:
    return f"{x:6.2f}"


def table_rows(summary: dict) -> list[list[str]]:
    p, rows_in = summary["primary"], summary["strategies"]
    overlap_cols = [c for c in OVERLAP_COLUMNS.values() if any(c in r.get("overlap", {}) for r in rows_in)]
    with_orders = any("vs_shuffled" in r for r in rows_in)
    with_variance = any(r.get("variance") for r in rows_in)
    header = ["strategy", "n", f"{p} mean", "95% t-CI (runs)", "diff vs random", "95% t-CI (paired)", "wins",
              "verdict", *(["diff vs shuffled", "pct of shuffled"] if with_orders else []),
              *(["within-subset SS % (null)"] if with_variance else []), "train s/run", "scoring cost", *overlap_cols]
    blank = [""] * (len(header) - 3)
    rows = [header, ["untrained (floor)", "-", _fmt(summary["untrained"][p]), *blank]]
    for r in rows_in:
        if p not in r:
            rows.append([r["label"], str(r["n"]), "failed" if r["failed"] else "-", *blank])
            continue
        m, v, o, var = r[p], r.get("vs_random"), r.get("vs_shuffled"), r.get("variance")
        rows.append([
            r["label"], str(r["n"]), _fmt(m["mean"]), interval(*(m.get("ci") or (None, None)), r["n"]),
            f"{v['mean_diff']:+.2f}" if v else ("(baseline)" if r["strategy"] == "random" else ""),
            interval(*(v.get("ci") or (None, None)), v["n"], "+.2f") if v else "",
            f"{v['wins']}/{v['n']}" if v else "", v["verdict"] if v else "",
            *([f"{o['mean_diff']:+.2f}" if o else "", f"{o['percentile']:.0f}" if o else ""] if with_orders else []),
            *([_share(var)] if with_variance else []),
            f"{r['train_seconds']:.0f}", _cost(r.get("cost")),
            *(f"{r['overlap'][c]:.1f}" if c in r.get("overlap", {}) else "" for c in overlap_cols),
        ])
    return rows


def _share(var: dict | None) -> str:
    if not var or var.get("share_within") is None:
        return ""
    return f"{100 * var['share_within']:.0f} ({100 * var['null_share']:.0f})"


def _cost(cost: dict | None) -> str:
    if not cost or not (cost["scored_tokens"] or cost["embedded_examples"] or cost.get("probe_tokens")):
        return "none"
    parts = []
    if cost["scored_tokens"]:
        parts.append(f"{cost['scored_tokens'] / 1000:.0f}k tok")
    if cost["embedded_examples"]:
        parts.append(f"{cost['embedded_examples']} emb")
    if cost.get("probe_tokens"):
        parts.append(f"{cost['probe_tokens'] / 1000:.0f}k probe tok")
    return " + ".join(parts)


def _budgets(budget) -> str:
    return "/".join(map(str, budget)) if isinstance(budget, list) else str(budget)


def _t_note(ns: list[int]) -> str:
    """The footnote on the t intervals, with the t quantile of the fewest runs a row has."""
    from scipy import stats as sps

    note = ("95% t-CI: Student t interval of the mean over the n runs (paired: of the n differences from "
            "random by seed)")
    n = min((k for k in ns if k >= 2), default=0)
    if not n:
        return note + "."
    return note + f"; with {n} runs t = {sps.t.ppf(0.975, n - 1):.2f} (1.96 for many runs), so few runs give wide intervals."


def format_table(summary: dict) -> str:
    rows = table_rows(summary)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    direction = "higher is better" if summary["higher_is_better"] else "lower is better"
    title = (f"{summary['primary']} ({direction}) on {summary['test_size']} test examples; budget "
             f"{_budgets(summary['budget'])} of {summary['pool_size']}; orderings {', '.join(summary['orderings'])}; "
             f"{summary['runs']} runs, {summary['design']} design (strategies paired with random by seeds)")
    others = [m for m in METRICS.names() if m != summary["primary"] and any(m in r for r in summary["strategies"])]
    extra = [f"  {r['label']}: " + ", ".join(f"{m} {r[m]['mean']:.2f}" for m in others)
             for r in summary["strategies"] if all(m in r for m in others)]
    floor = ", ".join(f"{m} {summary['untrained'][m]:.2f}" for m in others if m in summary["untrained"])
    notes = [_t_note([r["n"] for r in summary["strategies"] if not r.get("failed")]),
             "scoring cost: model tokens scored (forward passes over the pool) and examples embedded to compute "
             "the strategy's features, beyond the training every strategy pays; random needs none. probe tok: "
             "tokens a probe ran through the model (all MC-dropout passes, generated tokens) in this run; 0 "
             "when its results came from the cache.",
             "Overlap columns: share of the subset's word n-grams found in the reference corpus, share of its "
             "words seen there, and share of the test references' words present in the subset's responses."]
    per_task = [r for r in summary["strategies"] if r.get("by_task")]
    if per_task:
        tasks = list(per_task[0]["by_task"])
        notes.append(f"Per task ({summary['primary']}, mean over runs; test examples per task in brackets). The table's "
                     f"figures are {summary.get('aggregate') or 'the macro average over the tasks'}:")
        notes.append("  " + ", ".join(f"{t} [{per_task[0]['by_task'][t]['n_test']}]" for t in tasks))
        floor_tasks = summary.get("untrained_by_task") or {}
        if floor_tasks:
            notes.append("  untrained: " + ", ".join(f"{floor_tasks[t]['mean']:.2f}" for t in tasks))
        notes += [f"  {r['label']}: " + ", ".join(f"{r['by_task'][t]['mean']:.2f}" for t in tasks) for r in per_task]
    if any("vs_shuffled" in r for r in summary["strategies"]):
        notes.append("pct of shuffled: percentile of the ordering's mean among the runs of the same strategy "
                     "under shuffled orders (50 = typical of a random order).")
    curves = [r for r in summary["strategies"] if r.get("curve")]
    if curves:
        notes.append(f"Learning curves ({summary['primary']} by labelled examples, mean over runs):")
        notes += [f"  {r['label']}: " + ", ".join(f"{c['labelled']}: {c['mean']:.2f}" for c in r["curve"])
                  for r in curves]
    if any(r.get("variance") for r in summary["strategies"]):
        notes.append("within-subset SS % (null): SS_within / SS_total over every run of the subsets, and in "
                     "parentheses what it would be if subsets made no difference, (n - G)/(n - 1) for G subsets and "
                     "n runs (77 at 8 x 4, 91 at 10 x 10). Only a share below its null says anything (that "
                     "subsets matter); shares of different designs compare as their excess over their own null. "
                     "`llm-al report` gives the permutation null and the variance components with intervals.")
    return "\n".join([title, "", *lines, "", "Other metrics (mean over runs):", f"  untrained: {floor}", *extra,
                      "", *notes])


def write_tables(summary: dict, out: Path) -> None:
    write_text(out / "table.md", "```\n" + format_table(summary) + "\n```\n")
    buf = io.StringIO()
    csv.writer(buf).writerows(table_rows(summary))
    write_text(out / "table.csv", buf.getvalue())
