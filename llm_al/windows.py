"""Difficulty windows: a contiguous stretch of the pool's ranking by a score (by=loss), the design
of the research protocol's sixth experiment (docs: score the pool with a warm-started model,
train on contiguous windows of the difficulty ranking, report the length confound).

    llm-al run recipes/difficulty_windows.yaml          # the windows against random

`window:start=0` takes the `budget` easiest examples (lowest `by`), `start=1` the hardest, and
`start=0.5` the middle stretch; unlike `perplexity:band=...` every start in [0, 1] is allowed, so
a recipe can sweep the whole ranking. Windows of a loss ranking are confounded with length (short
responses have noisier, often higher, per-token loss), so `window_profile` reports each
window's mean score and mean length beside each other, and the report correlates both with the
metric.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np

from llm_al import diversity  # attributes read at call time: diversity imports strategies, which imports us
from llm_al.features import Features
from llm_al.registry import between
from llm_al.strategies import STRATEGIES, Selection, check_budget


def window_indices(scores: np.ndarray, budget: int, start: float, rng: np.random.Generator) -> np.ndarray:
    """Positions of the `budget` examples whose rank (ascending score, ties in a seeded random
    order) lies in the window that begins at rank round(start * (N - budget)); in rank order."""
    check_budget(budget, len(scores))
    order = np.lexsort((rng.random(len(scores)), scores))          # ascending, random tie-break
    first = int(round(start * (len(scores) - budget)))
    return order[first: first + budget]


@STRATEGIES.register("window", "a contiguous window of the ranking by a score (by=loss): start=0 the lowest "
                     "(easiest) budget, 1 the highest, 0.5 the middle", needs=())
def window(features: Features, budget: int, rng: np.random.Generator, by: diversity.ScoreName = "loss",
           start: Annotated[float, between(0, 1)] = 0.5) -> Selection:
    """Contiguous window of the ascending ranking by `by` (any per-example score: loss under the
    base model or, with model.scoring_adapter, a warm-started one; ifd; length; a probe score).
    Difficulty windows are how curriculum and data-pruning studies probe which part of the
    difficulty range helps (Swayamdipta et al., EMNLP 2020 "dataset cartography"; Marion et al.
    2023, perplexity bands). Score: the `by` value of each pick."""
    start = diversity.check_number("window", "start", start, 0.0, 1.0, "must be a number in [0, 1] (0: lowest scores)")
    s = diversity.field_scores(features, by, "window")
    idx = window_indices(s, budget, start, rng)
    return Selection(idx, s[idx], f"{by} (window from rank quantile {start:g})", s)


def window_profile(features: Features, indices: np.ndarray, by: str = "loss") -> dict[str, float]:
    """Mean `by` and mean response length (words) of a selection: the two things a difficulty
    window moves together."""
    s = diversity.field_scores(features, by, "window")
    return {f"mean_{by}": float(np.mean(s[indices])), "mean_length": float(np.nanmean(features.length[indices]))}


# ---------------------------------------------------------------------------- the report's section
def report_section(doc, c) -> None:
    """`llm-al report`'s "Difficulty windows" section (doc, c: llm_al.writeup's _Doc and _Ctx):
    for each (by, ordering, budget), each window's runs: mean metric, the subset's mean base-model
    `by` and mean length; Spearman of the metric with the window start, the mean `by` and the mean
    length over all runs; and the partial Spearman of the metric with `by` holding length fixed,
    which separates difficulty from the length it drags along."""
    from scipy import stats as sps

    from llm_al.analysis import partial_spearman
    from llm_al.config import parse_strategy
    from llm_al.writeup import _f, _figure

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
            table.append([f"{s:g}", str(len(runs)), _f(row["metric"]), _f(row["by"], ".3f"), _f(row["length"], ".1f")])
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
            lines.append(f"{c.primary} vs mean {by} holding length fixed: partial Spearman {_f(rho, '+.2f')} "
                         f"(p {_f(p, '.3g')}); {by} and length move together with Spearman {_f(conf, '+.2f')} "
                         "across these subsets (the length confound)")
            doc.findings.append(f"difficulty windows ({by}): partial Spearman of {c.primary} with {by} holding "
                                f"length fixed {_f(rho, '+.2f')} (p {_f(p, '.3g')}); {by} vs length {_f(conf, '+.2f')}.")
        doc.add("list", lines or ["too few runs with subset features to correlate"])
        fig, ax = _figure(6.5, 4.0)
        ax.plot([r["start"] for r in rows], [r["metric"] for r in rows], "o-", color="C0", label=c.primary)
        ax.set(xlabel=f"window start (quantile of the {by} ranking; 0 = lowest)", ylabel=c.primary)
        twin = ax.twinx()
        twin.plot([r["start"] for r in rows], [r["length"] for r in rows], "s--", color="C1", label="mean length")
        twin.set_ylabel("subset mean length (words)", color="C1")
        doc.figure(fig, f"windows_{by}.png", f"{c.primary} of each {by} window (mean of its runs) with the "
                   "window's mean response length: the length confound.")
