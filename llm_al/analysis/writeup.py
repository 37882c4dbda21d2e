"""The write-up of a results directory: one Markdown and one self-contained HTML report, the plots as
PNG files and the tables as CSV, from `runs/*.json` (plus summary.json's feature cost, if present).

    .venv/bin/python -c "from llm_al.analysis.writeup import write_report; print(write_report('runs/demo'))"  # ~5 s

Sections, each shown only when the data supports it (otherwise one line says why): setup; each
(strategy, ordering, budget) against the random runs of the same ordering and budget (paired by seeds
when the seed keys match); cost; the within-subset variance share; subset-level features vs the
metric over random subsets; learning curves; overlap vs the metric; orderings vs shuffled; difficulty
windows (llm_al/analysis/windows.py). Every
statistic comes from llm_al.analysis.protocol; this module groups runs, formats and draws.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from llm_al.analysis import protocol as analysis
from llm_al.analysis.document import (Context, Document, Run, budget_key, coarse_note, figure, fmt, interval,
                                      strip_plot, to_run)
from llm_al.analysis.variance_report import report_section as variance_section
from llm_al.analysis.windows import report_section as windows_section
from llm_al.errors import UnknownNameError, UserError
from llm_al.io import write_text
from llm_al.metrics import METRICS
from llm_al.orderings import ORDERINGS
from llm_al.seeds import rng as seeded_rng
from llm_al.strategies.needs import strategy_needs
from llm_al.types import DIRECT_FEATURES, LOSS_FEATURES

MIN_FEATURE_SUBSETS = 8          # random subsets needed before correlating features with the metric
# ---------------------------------------------------------------- sections

def _setup(doc: Document, c: Context, failed: list[dict], floor: dict | None) -> None:
    doc.add("h", "1. Setup")
    cfg, first = c.cfg, (c.runs[0].rec if c.runs else failed[0] if failed else {})
    short = lambda v: f"{v[0]}..{v[-1]} ({len(v)})" if isinstance(v, list) and len(v) > 6 else str(v)  # noqa: E731
    # the seeds the runs here used (runs recorded by several invocations may each carry another list)
    used = [sorted({r.seeds[j] for r in c.runs if r.seeds[j] is not None}) or cfg.get(k)
            for j, k in enumerate(("subset_seeds", "order_seeds", "init_seeds"))]
    seeds = (f"seeds {short(used[0])}" if cfg.get("design") == "paired" else
             f"subset seeds {short(used[0])}, order seeds {short(used[1])}, init seeds {short(used[2])}")
    tr = cfg.get("train") or {}
    lines = [f"model `{(cfg.get('model') or {}).get('name', '?')}`; pool `{(cfg.get('data') or {}).get('pool', '?')}`",
             (f"pool size {first.get('pool_size', '?')}, test size {first.get('test_size', '?')}; "
              f"budget(s) {', '.join(map(str, c.budgets)) or '?'}"),
             f"design {cfg.get('design', '?')} ({seeds}); orderings {', '.join(c.orderings) or '?'}",
             (f"training: lr {tr.get('lr', '?')}, epochs {tr.get('epochs', '?')}, batch {tr.get('batch_size', '?')}, "
              f"LoRA r {tr.get('lora_r', '?')}"),
             (f"primary metric {c.primary} ({'higher' if c.higher else 'lower'} is better); untrained floor "
              + (fmt(floor["eval"]["metrics"].get(c.primary)) if floor else "not recorded")),
             f"{len(c.runs)} successful runs, {len(failed)} failed (excluded)"]
    lines += [f"failed: `{r.get('run_id', '?')}`: {str(r.get('error') or 'no error recorded').splitlines()[0][:160]}"
              for r in failed[:5]] + ([f"... and {len(failed) - 5} more failed runs"] if len(failed) > 5 else [])
    versions = first.get("versions") or {}
    lines.append("versions: " + (", ".join(f"{k} {v}" for k, v in versions.items() if v) or "not recorded"))
    doc.add("list", lines)
    if failed:
        doc.findings.append(f"{len(failed)} failed run(s) excluded from every statistic.")


def comparisons(c: Context) -> tuple[dict[tuple, object], dict[tuple, dict]]:
    """Each (strategy, ordering, budget) against the random runs of the same ordering and budget:
    (every group -> its analysis.StrategyVsRandom, or a string saying why it was not compared;
    the compared groups -> one row of the comparison table, with the Holm-adjusted p)."""
    results = {k: c.compare(k, ("random", k[1], k[2])) for k in c.groups if k[0] != "random"}
    tested = {k: {"label": c.label(*k), "strategy": k[0], "ordering": k[1], "budget": k[2], **res.to_dict()}
              for k, res in results.items() if not isinstance(res, str)}
    if tested:
        adj = analysis.holm({str(k): r["p"] for k, r in tested.items()})
        for k, r in tested.items():
            r["p_holm"] = adj[str(k)]["p_adjusted"]
    return results, tested


def _vs_random(doc: Document, c: Context) -> None:
    doc.add("h", "2. Strategies vs random")
    results, tested = comparisons(c)
    if not results:
        doc.absent("no strategy other than random in this directory")
        return
    lines = []
    if tested:
        doc.add("table", ["strategy", "n", "mean", "random mean (n)", "diff", "95% t-CI", "test", "p", "p Holm",
                          "win rate", "pct of random", "verdict"],
                [[r["label"], str(r["n_strategy"]), fmt(r["strategy_mean"]), f"{fmt(r['random_mean'])} ({r['n_random']})",
                  fmt(r["mean_diff"], "+.2f"), interval(r["ci_low"], r["ci_high"], _n(r), "+.2f"), r["test"],
                  fmt(r["p"], ".3g"), fmt(r["p_holm"], ".3g"), fmt(r["win_rate"]), fmt(r["percentile"], ".0f"),
                  r["verdict"]] for r in tested.values()])
        doc.csv("strategies.csv", list(tested.values()))
    for k, res in results.items():
        if k not in tested:
            lines.append(f"**{c.label(*k)}**: not compared ({res})")
            continue
        r = tested[k]
        coarse = coarse_note(r["n_random"], "random")
        lines.append(f"**{r['label']}**: {r['verdict']} ({c.primary} {r['strategy_mean']:.2f} vs {r['random_mean']:.2f}; "
                     f"diff {r['mean_diff']:+.2f}, 95% t-CI {interval(r['ci_low'], r['ci_high'], _n(r), '+.2f')}, "
                     f"{'paired by seeds' if r['paired'] else 'unpaired'}, p {r['p']:.3g} (Holm {r['p_holm']:.3g}); "
                     f"percentile {r['percentile']:.0f} among {r['n_random']} random runs{coarse})")
        doc.findings.append(f"{r['label']}: {r['verdict']}.")
    doc.add("list", lines)
    if tested:
        doc.add("p", "95% t-CI: Student t interval of the mean difference, over the n paired differences (paired by "
                     "seeds) or Welch's for n strategy vs n random runs (unpaired). "
                     "Verdict: better (worse) needs that interval to exclude 0 on that side AND the "
                     "strategy mean to beat (lose to) 95% of single random runs (all of them, below 20); it only "
                     "'leans' unless the paired sign-flip p (unpaired: Mann-Whitney p) is below 0.05, which 3 seeds "
                     "cannot reach (their smallest p is 0.25). p Holm corrects over the strategies.")
        strip_plot(doc, c, [(c.label(*k), c.values(k), c.values(("random", k[1], k[2]))) for k in c.groups
                        if k[0] == "random" or k in tested], "strategies_vs_random.png", "random")


def _n(r: dict) -> str:
    """The n of a comparison's interval (a StrategyVsRandom as a dict): pairs, or strategy vs baseline runs."""
    return str(r["n_strategy"]) if r["paired"] else f"{r['n_strategy']} vs {r['n_random']}"


def _feature_seconds(rec: dict, cost: dict) -> float | None:
    """One-off feature-scoring seconds the run's strategy and ordering needed (summary.json feature_cost)."""
    try:
        needs = strategy_needs(rec.get("strategy_name", rec["strategy"]), rec.get("params") or {})
        needs |= set(ORDERINGS.get(rec.get("ordering", "shuffled")).meta.get("needs", ()))
    except UnknownNameError:                          # a plug-in this process has not registered
        return None
    paid_by = {"loss_seconds": LOSS_FEATURES, "direct_seconds": DIRECT_FEATURES, "embed_seconds": {"embeddings"},
               "scorer_loss_seconds": {"scorer_ifd"}, "scorer_direct_seconds": {"scorer_ifd"}}
    return float(sum(cost.get(k, 0.0) for k, feats in paid_by.items() if needs & feats))


def _cost(doc: Document, c: Context) -> None:
    doc.add("h", "3. Cost")
    if not c.groups:
        doc.absent("no successful runs")
        return
    cost = {k: v for k, v in (c.summary.get("feature_cost") or {}).items() if k.endswith("_seconds")}
    rows, totals = [], {}
    for (s, o, b), runs in c.groups.items():             # random comes first in each (budget, ordering)
        t = [np.mean([r.rec.get("timings", {}).get(f"{k}_seconds", np.nan) for r in runs])
             for k in ("select", "train", "eval")]
        feat = _feature_seconds(runs[0].rec, cost) if cost else None
        totals[(s, o, b)] = total = float(np.nansum(t)) + (feat or 0.0)
        base = totals.get(("random", o, b))
        rows.append([c.label(s, o, b), fmt(float(np.mean([r.value for r in runs]))), *(fmt(x, ".3g") for x in t),
                     fmt(feat, ".3g") if cost else "n/a", fmt(total, ".3g"),
                     f"{total / base:.1f}x random" if base and s != "random" else ""])
    doc.add("table", ["strategy", c.primary, "select s", "train s", "eval s", "features s (once)", "total s",
                      "vs random"], rows)
    doc.add("p", "Seconds are means per run. features s: the one-off scoring the strategy and ordering need, from "
                 "summary.json feature_cost (a cache hit records ~0 s); total = features + select + train + eval, "
                 "the cost of one fine-tune with this choice; vs random divides it by random's total."
            if cost else "summary.json records no feature scoring (feature_cost): its cost is not included.")


def feature_sample(runs: list[Run]) -> tuple[list[list[Run]], str]:
    """The runs a feature correlation reads, one list per subset, and that design in words. When every
    subset has the same number k of runs, all of them (a subset's value is the mean of its k runs);
    otherwise one run per subset, at the (order seed, init seed) pair the most subsets have (the
    lowest seeds on ties), leaving out subsets without it: means of 4 runs beside single runs would
    give the subsets unequal noise, and a correlation over them a mixed design."""
    by: dict[Any, list[Run]] = defaultdict(list)
    for r in runs:
        by[r.subset].append(r)
    sizes = sorted({len(v) for v in by.values()})
    if len(sizes) <= 1:
        k = sizes[0] if sizes else 0
        return list(by.values()), "one run each" if k == 1 else f"each subset's {k} runs averaged, {k} for every subset"
    count = Counter(pair for rs in by.values() for pair in {r.seeds[1:3] for r in rs})
    pair = min(count, key=lambda p: (-count[p], [-1 if x is None else x for x in p]))
    chosen = [[hit] for rs in by.values() if (hit := next((r for r in rs if r.seeds[1:3] == pair), None))]
    left = len(by) - len(chosen)
    return chosen, (f"one run each, at order seed {pair[0]} and init seed {pair[1]} (the subsets ran {sizes[0]}-"
                    f"{sizes[-1]} times; the other runs are not used" + (f"; {left} subsets without that run left "
                                                                          "out)" if left else ")"))


def _correlations(doc: Document, c: Context) -> None:
    doc.add("h", "5. Subset features vs the metric (random subsets)")
    cells = [k for k in c.groups if k[0] == "random"]     # the random cell with the most subsets, shuffled first
    key = max(cells, key=lambda k: (k[1] == "shuffled", len({r.subset for r in c.groups[k]})), default=None)
    samples, design = feature_sample(c.groups.get(key, []))
    if len(samples) < MIN_FEATURE_SUBSETS:
        doc.absent(f"needs >= {MIN_FEATURE_SUBSETS} random subsets, has {len(samples)}")
        return
    y = np.array([np.mean([r.value for r in rs]) for rs in samples])       # (G,) one value per subset
    if np.ptp(y) == 0:
        doc.absent(f"every random subset scored {y[0]:g}: no variation to analyse")
        return
    by = dict(enumerate(samples))
    first = next(iter(by.values()))[0].features
    names = [n for n in first if all(n in rs[0].features for rs in by.values())]
    if not names:
        doc.absent("the run records hold no subset-level features (subset_features, overlap)")
        return
    X = {n: np.array([rs[0].features[n] for rs in by.values()]) for n in names}
    rows = [r.to_dict() for r in analysis.feature_correlations(X, y)]
    doc.csv("correlations.csv", rows)
    doc.add("p", f"Spearman rho of each subset-level feature with {c.primary} over {len(y)} random subsets "
                 f"(ordering {key[1]}, budget {key[2]}; {design}), Bonferroni over {len(names)} features.")
    doc.add("table", ["feature", "rho", "p", "p Bonferroni", "significant", "note"],
            [[r["feature"], fmt(r["rho"], "+.2f"), fmt(r["p"], ".3g"), fmt(r["p_bonferroni"], ".3g"),
              "yes" if r["significant"] else "no", r["note"]] for r in rows])
    sig = [r["feature"] for r in rows if r["significant"]]
    doc.findings.append(f"{len(sig)} of {len(names)} subset features correlate significantly with {c.primary} "
                        f"over {len(y)} random subsets ({design.split(' (')[0]})"
                        + (f": {', '.join(sig)}." if sig else "."))
    live = [n for n in names if np.ptp(X[n]) > 0]
    if live and len(y) > len(live) + 1:
        fit = analysis.ols_r2(np.column_stack([X[n] for n in live]), y, c.rng)
        doc.add("p", f"OLS of {c.primary} on the {len(live)} non-constant features: R^2 {fit.r2:.2f} (adjusted "
                     f"{fit.adj_r2:.2f}); chance gives {fit.chance_r2:.2f} (permutations {fit.chance_r2_perm:.2f}); "
                     f"permutation p {fit.p_perm:.3g}, F-test p {fit.f_p:.3g}.")
        doc.findings.append(f"OLS R^2 of {c.primary} on the features {fit.r2:.2f} vs {fit.chance_r2:.2f} by chance.")
    else:
        doc.absent(f"OLS needs more subsets ({len(y)}) than non-constant features ({len(live)}) + 1")
    from matplotlib import colormaps

    fig, ax = figure(6.5, 0.35 * len(rows) + 1.5)
    rho = np.nan_to_num(np.array([r["rho"] for r in rows]))    # constant features drawn at 0
    ax.barh(range(len(rows)), rho, color=colormaps["RdBu"]((rho + 1) / 2), edgecolor="k")
    for i, r in enumerate(rows):
        if r["significant"]:
            ax.text(rho[i] + np.sign(rho[i]) * .03, i, "*", va="center", ha="left" if rho[i] >= 0 else "right",
                    fontsize=14)
    ax.set_yticks(range(len(rows)), [r["feature"] for r in rows])
    ax.invert_yaxis()
    ax.axvline(0, color="k", lw=.8)
    ax.set(xlim=(-1, 1), xlabel=f"Spearman rho with {c.primary} (* Bonferroni-significant)")
    doc.figure(fig, "correlations.png", f"Feature correlations with {c.primary} over random subsets; * marks "
               "Bonferroni significance.")


def _curves(doc: Document, c: Context) -> None:
    doc.add("h", "6. Learning curves")
    loops = [r for r in c.runs if r.rec.get("rounds")]
    if loops:       # active-learning loops: the metric after each round, by examples labelled so far
        xkey = "labelled"
        recs = [{"strategy": c.label(r.strategy, r.ordering), "budget": e["labelled"], "seed": r.seeds,
                 "value": float(e["metrics"][c.primary])} for r in loops for e in r.rec["rounds"]]
    elif len(c.budgets) < 2 and all(r.round is None for r in c.runs):
        doc.absent(f"needs runs at >= 2 budgets (or rounds), has budget {', '.join(map(str, c.budgets)) or 'none'}")
        return
    else:
        xkey = "budget" if len(c.budgets) > 1 else "round"
        recs = [{"strategy": c.label(r.strategy, r.ordering), xkey: getattr(r, xkey), "seed": r.seeds,
                 "value": r.value} for r in c.runs if getattr(r, xkey) is not None]
    pts = analysis.learning_curve(recs)
    doc.add("table", ["strategy", xkey, "n", "mean", "sd", "95% t-CI"],
            [[p.strategy, str(p.x), str(p.n), fmt(p.mean), fmt(p.sd), interval(p.ci_low, p.ci_high, p.n)] for p in pts])
    fig, ax = figure()
    for i, s in enumerate(dict.fromkeys(p.strategy for p in pts)):
        ps = [p for p in pts if p.strategy == s]
        x = [p.x for p in ps]
        ax.plot(x, [p.mean for p in ps], marker="o", color=f"C{i % 10}", label=s)
        ax.fill_between(x, [p.ci_low for p in ps], [p.ci_high for p in ps], color=f"C{i % 10}", alpha=.2)
    ax.set(xlabel=xkey, ylabel=c.primary)
    ax.legend(fontsize=8)
    doc.figure(fig, "learning_curves.png", f"Mean {c.primary} per {xkey} with 95% t-interval bands over the seeds.")


def _overlap(doc: Document, c: Context) -> None:
    doc.add("h", "7. Overlap vs the metric")
    panels = [k for k in ("test.vocab_coverage", "reference.vocab_seen") if any(k in r.features for r in c.runs)]
    if not panels:
        doc.absent("the run records hold no overlap.test.vocab_coverage or overlap.reference.vocab_seen")
        return
    fig, axes = figure(5.0 * len(panels), 4.0, len(panels))
    for ax, feat in zip(np.atleast_1d(axes), panels):
        for i, (key, runs) in enumerate(c.groups.items()):
            pts = [(r.features[feat], r.value) for r in runs if feat in r.features]
            if pts:
                ax.scatter(*zip(*pts), s=16, color=f"C{i % 10}", label=c.label(*key), alpha=.8)
        ax.set(xlabel=feat, ylabel=c.primary)
    np.atleast_1d(axes)[0].legend(fontsize=8)
    doc.figure(fig, "overlap.png", f"Overlap of each run's subset with the test set / reference corpus against its "
               f"{c.primary}, all runs. Strategies pick subsets non-randomly: for a test of association see section 5 "
               "(random subsets only).")


def _orderings(doc: Document, c: Context) -> None:
    doc.add("h", "8. Orderings vs shuffled")
    if len(c.orderings) < 2 or "shuffled" not in c.orderings:
        doc.absent("needs several orderings, one of them shuffled (the baseline)")
        return
    rows, items = [], {}
    for (s, o, b) in c.groups:
        base = (s, "shuffled", b)
        if o == "shuffled" or base not in c.groups:
            continue
        res = c.compare((s, o, b), base)
        if isinstance(res, str):
            rows.append([c.label(s, o, b), str(len(c.groups[(s, o, b)])), str(len(c.groups[base])), "", "", "", "",
                         res])
            continue
        v = res.verdict.replace("random subsets", "shuffled runs").replace("random", "shuffled orders")
        rows.append([c.label(s, o, b), str(res.n_strategy), str(res.n_random), fmt(res.mean_diff, "+.2f"),
                     interval(res.ci_low, res.ci_high, _n(res.to_dict()), "+.2f"), fmt(res.p, ".3g"),
                     fmt(res.percentile, ".0f"), v])
        items.setdefault(c.label(*base), (c.values(base), c.values(base)))
        items[c.label(s, o, b)] = (c.values((s, o, b)), c.values(base))
        doc.findings.append(f"{c.label(s, o, b)}: {v} (percentile {res.percentile:.0f} among {res.n_random} "
                            f"shuffled runs{coarse_note(res.n_random, 'shuffled')}).")
    if not rows:
        doc.absent("no strategy was run both shuffled and under another ordering at the same budget")
        return
    doc.add("table", ["ordering", "n", "n shuffled", "diff vs shuffled", "95% t-CI", "p", "pct of shuffled", "verdict"],
            rows)
    if items:
        strip_plot(doc, c, [(k, *v) for k, v in items.items()], "orderings.png", "shuffled")


# ---------------------------------------------------------------- entry point

def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise UserError(f"{path} is not valid JSON ({err}); delete it to have `llm-al run` redo that run") from None


def load_results(results_dir: str | Path) -> tuple[Context, list[dict], dict | None]:
    """The runs of a results directory (`runs/*.json`; summary.json and config.yaml when present),
    grouped by (strategy, ordering, budget): (the Context the sections read, the failed run
    records, the untrained floor's record or None)."""
    results = Path(results_dir)
    paths = sorted((results / "runs").glob("*.json"))
    if not paths:
        raise UserError(f"{results} holds no runs/*.json: not a results directory of `llm-al run`")
    records = [(p, _read_json(p)) for p in paths]
    floor = next((r for _, r in records if r.get("strategy") == "untrained"), None)
    ok = [(p, r) for p, r in records if r.get("strategy") != "untrained" and r.get("status") == "ok"]
    failed = [r for _, r in records if r.get("strategy") != "untrained" and r.get("status") != "ok"]
    cfg = next((r["config"] for _, r in ok + [(None, r) for r in failed] if r.get("config")), None)
    if cfg is None and (results / "config.yaml").exists():
        cfg = yaml.safe_load((results / "config.yaml").read_text(encoding="utf-8"))
    cfg = cfg or {}
    summary = _read_json(results / "summary.json") if (results / "summary.json").exists() else {}
    primary = (cfg.get("eval") or {}).get("primary") or summary.get("primary") or "chrf"
    higher = summary.get("higher_is_better")        # recorded: no need to load an evaluate metric again
    if higher is None or summary.get("primary") != primary:
        higher = METRICS.get(primary).meta.get("higher_is_better", True)
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for p, rec in ok:
        r = to_run(rec, primary, p)
        groups[(r.strategy, r.ordering, r.budget)].append(r)
    rank = {s: i for i, s in enumerate(["random", *cfg.get("strategies", [])])}
    orank = {o: i for i, o in enumerate(cfg.get("orderings", []))}
    order = sorted(groups, key=lambda k: (budget_key(k[2]), orank.get(k[1], 99), k[1], rank.get(k[0], 99), k[0]))
    c = Context({k: sorted(groups[k], key=lambda r: str(r.seeds)) for k in order}, primary, higher, cfg, summary,
                seeded_rng(int((cfg.get("seeds") or [0])[0]), "stats"))
    return c, failed, floor


def write_report(results_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Write report.md, report.html (self-contained), PNG plots and CSV tables for a results directory
    (`runs/*.json`; summary.json and config.yaml when present) into out_dir (default results_dir/report).
    Returns {file name: path} of everything written."""
    results = Path(results_dir)
    c, failed, floor = load_results(results)
    out = Path(out_dir) if out_dir is not None else results / "report"
    primary, cfg = c.primary, c.cfg
    doc = Document(out)
    if not c.runs:
        doc.findings.append("no successful runs: nothing to analyse.")
    elif len({r.value for r in c.runs}) == 1:
        doc.findings.append(f"every run scored {c.runs[0].value:g} {primary}: no variation to analyse.")
    _setup(doc, c, failed, floor)

    for section in (_vs_random, _cost, variance_section, _correlations, _curves, _overlap, _orderings, windows_section):
        section(doc, c)
    folder_cfg = results / "config.yaml"       # the folder's own invocation; runs may come from earlier ones
    name = (yaml.safe_load(folder_cfg.read_text(encoding="utf-8")) or {}).get("name") if folder_cfg.exists() else None
    title = f"llm-al report: {name or cfg.get('name', results.name)} ({results})"
    write_text(out / "report.md", doc.markdown(title))
    write_text(out / "report.html", doc.html(title))
    return {"report.md": out / "report.md", "report.html": out / "report.html", **doc.files}
