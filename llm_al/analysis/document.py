"""The pieces of the `llm-al report` write-up (llm_al/analysis/writeup.py) that its sections share: one
run as read from its JSON record (`Run`), the document rendered twice (`Document`: Markdown and HTML,
figures and CSVs written as they are added), the grouped runs a section reads (`Context`), and the
number and figure formatting.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llm_al.analysis import protocol as analysis
from llm_al.errors import UserError
from llm_al.io import atomic_path, write_text

NOT_SUBSET_FEATURES = {"n_examples", "n_test_words", "n_test_ngrams"}   # the budget or the test set, not the subset
COARSE_BELOW = 20                # fewer random runs than this: the percentile moves in big steps
CSS = ("body{font-family:system-ui,sans-serif;max-width:62em;margin:2em auto;padding:0 1em;color:#222}"
       "table{border-collapse:collapse;margin:1em 0;font-size:.9em}td,th{border:1px solid #bbb;padding:.25em .5em}"
       "th{background:#eee}td{text-align:right}td:first-child{text-align:left}img{max-width:100%}"
       "figcaption{font-size:.9em;color:#555}.absent{color:#777;font-style:italic}")


@dataclass
class Run:
    strategy: str                # the spec as written (e.g. perplexity:band=middle)
    ordering: str
    budget: Any
    round: Any                   # None unless the record has a `round`
    seeds: tuple                 # (subset, order, init[, round]): the pairing key
    subset: Any                  # identity of the chosen subset: its ids, else its subset seed
    value: float                 # the primary metric
    features: dict[str, float]   # subset.*, reference.*, test.*
    rec: dict


def to_run(rec: dict, primary: str, path: Path) -> Run:
    try:
        value = float(rec["eval"]["metrics"][primary])
    except (KeyError, TypeError):
        raise UserError(f"{path}: status ok but no eval.metrics.{primary} (the primary metric)") from None
    feats = {f"subset.{k}": v for k, v in (rec.get("subset_features") or {}).items()}
    for group in ("reference", "test"):
        feats.update({f"{group}.{k}": v for k, v in ((rec.get("overlap") or {}).get(group) or {}).items()
                      if k not in NOT_SUBSET_FEATURES})
    feats = {k: float(v) for k, v in feats.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)}
    s = rec.get("seeds") or {}
    seeds = (s.get("subset"), s.get("order"), s.get("init")) + ((rec["round"],) if "round" in rec else ())
    ids = (rec.get("selection") or {}).get("ids")
    return Run(rec["strategy"], rec.get("ordering", "shuffled"), rec.get("budget"), rec.get("round"), seeds,
               frozenset(ids) if ids else ("seed", s.get("subset")), value, feats, rec)


class Document:
    """Blocks rendered twice (Markdown, HTML); figures and CSVs are written as they are added."""

    def __init__(self, out: Path):
        self.out, self.blocks, self.files, self.findings = out, [], {}, []

    def add(self, kind: str, *args) -> None:
        self.blocks.append((kind, *args))

    def absent(self, why: str) -> None:
        self.add("absent", f"Not shown: {why}.")

    def csv(self, name: str, rows: list[dict]) -> None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        write_text(self.out / name, buf.getvalue())
        self.files[name] = self.out / name

    def figure(self, fig, name: str, caption: str) -> None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
        with atomic_path(self.out / name) as tmp:
            tmp.write_bytes(buf.getvalue())
        self.files[name] = self.out / name
        self.add("img", name, caption, buf.getvalue())

    def markdown(self, title: str) -> str:
        cell = lambda x: str(x).replace("|", "\\|")  # noqa: E731
        lines = [f"# {title}", "", "## Findings", "", *(f"- {f}" for f in self.findings or ["none to report"]), ""]
        for kind, *a in self.blocks:
            if kind == "h":
                lines.append(f"## {a[0]}")
            elif kind in ("p", "absent"):
                lines.append(a[0] if kind == "p" else f"*{a[0]}*")
            elif kind == "list":
                lines += [f"- {x}" for x in a[0]]
            elif kind == "table":
                lines += ["| " + " | ".join(map(cell, a[0])) + " |", "|" + "---|" * len(a[0]),
                          *("| " + " | ".join(map(cell, r)) + " |" for r in a[1])]
            elif kind == "img":
                lines += [f"![{a[0]}]({a[0]})", "", f"*{a[1]}*"]
            lines.append("")
        return "\n".join(lines)

    def html(self, title: str) -> str:
        def inline(text) -> str:
            t = html.escape(str(text))
            return re.sub(r"`(.+?)`", r"<code>\1</code>", re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t))

        items = lambda xs: "<ul>" + "".join(f"<li>{inline(x)}</li>" for x in xs) + "</ul>"  # noqa: E731
        row = lambda cells, tag: "<tr>" + "".join(f"<{tag}>{inline(x)}</{tag}>" for x in cells) + "</tr>"  # noqa: E731
        parts = [f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{inline(title)}</title>",
                 f"<style>{CSS}</style></head><body><h1>{inline(title)}</h1><h2>Findings</h2>",
                 items(self.findings or ["none to report"])]
        for kind, *a in self.blocks:
            if kind == "h":
                parts.append(f"<h2>{inline(a[0])}</h2>")
            elif kind in ("p", "absent"):
                parts.append(f"<p class=\"{kind}\">{inline(a[0])}</p>")
            elif kind == "list":
                parts.append(items(a[0]))
            elif kind == "table":
                parts.append("<table>" + row(a[0], "th") + "".join(row(r, "td") for r in a[1]) + "</table>")
            elif kind == "img":
                png = base64.b64encode(a[2]).decode("ascii")
                parts.append(f"<figure><img alt=\"{html.escape(a[0])}\" src=\"data:image/png;base64,{png}\">"
                             f"<figcaption>{inline(a[1])}</figcaption></figure>")
        return "\n".join(parts) + "\n</body></html>\n"


@dataclass
class Context:
    groups: dict[tuple, list[Run]]      # (strategy, ordering, budget) -> runs sorted by seeds; random first
    primary: str
    higher: bool
    cfg: dict
    summary: dict
    rng: np.random.Generator

    def __post_init__(self):
        self.runs = [r for g in self.groups.values() for r in g]
        self.orderings = list(dict.fromkeys(k[1] for k in self.groups))
        self.budgets = sorted({r.budget for r in self.runs if r.budget is not None}, key=budget_key)

    def label(self, s: str, o: str, b=None) -> str:
        return (s + (f" [{o}]" if len(self.orderings) > 1 else "")
                + (f" @{b}" if b is not None and len(self.budgets) > 1 else ""))

    def values(self, key: tuple) -> np.ndarray | None:
        return np.array([r.value for r in self.groups[key]]) if key in self.groups else None

    def compare(self, key: tuple, base_key: tuple) -> analysis.StrategyVsRandom | str:
        """analysis.strategy_vs_random of group `key` against `base_key`, paired when the seed keys match;
        a string saying why not when it cannot be run."""
        runs, base = self.groups[key], self.groups.get(base_key, [])
        if len(base) < 2:
            return f"needs >= 2 {base_key[0]} runs under ordering {base_key[1]}, budget {base_key[2]}; has {len(base)}"
        sv, bv = self.values(key), self.values(base_key)
        if np.ptp(np.concatenate([sv, bv])) == 0:
            return f"every run scored {sv[0]:g}: no variation to analyse"
        paired = [str(r.seeds) for r in runs] == [str(r.seeds) for r in base]     # both sorted by seeds
        return analysis.strategy_vs_random(sv, bv, self.rng, self.higher, paired=paired)


def budget_key(b) -> tuple:
    return (0, float(b), "") if isinstance(b, (int, float)) else (1, 0.0, str(b))


def coarse_note(n: int, what: str) -> str:
    return (f"; with only {n} {what} runs the percentile is coarse (steps of {100 / n:.0f} points)"
            if n < COARSE_BELOW else "")


def fmt(x, spec: str = ".2f") -> str:
    return "" if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, spec)


def interval(lo, hi, n, spec: str = ".2f") -> str:
    """An interval with its n beside it, '[lo, hi] (n=N)'; '- (n=N)' where there is none (one run)."""
    if lo is None or hi is None or not (np.isfinite(lo) and np.isfinite(hi)):
        return f"- (n={n})"
    return f"[{format(lo, spec)}, {format(hi, spec)}] (n={n})"


def figure(width: float = 6.5, height: float = 4.0, ncols: int = 1):
    # a bare Figure renders with Agg; pyplot and its global backend state are never touched
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    return fig, fig.subplots(1, ncols)


def strip_plot(doc: Document, c: Context, items: list[tuple[str, np.ndarray, np.ndarray | None]], name: str, base: str) -> None:
    """Each item's runs as points over the central 95% band and the mean of its baseline's runs."""
    fig, ax = figure(max(5.0, len(items) + 2.0), 4.2)
    jitter, first = np.random.default_rng(0), True
    for x, (_, values, ref) in enumerate(items):
        if ref is not None and len(ref) >= 2:
            lo, hi = analysis.band(ref)
            ax.fill_between([x - .4, x + .4], lo, hi, color="0.85", lw=0, label=f"{base} 2.5-97.5%" if first else None)
            ax.hlines(ref.mean(), x - .4, x + .4, colors="0.35", linestyles="--", label=f"{base} mean" if first else None)
            first = False
        ax.scatter(x + jitter.uniform(-.15, .15, len(values)), values, s=18, zorder=3, color=f"C{x % 10}")
    ax.set_xticks(range(len(items)), [i[0] for i in items], rotation=25, ha="right")
    ax.set_ylabel(f"{c.primary} ({'higher' if c.higher else 'lower'} is better)")
    if not first:                                        # some band was drawn
        ax.legend(loc="best", fontsize=8)
    doc.figure(fig, name, f"Each run's {c.primary} over the band of the {base} runs of the same "
               f"{'ordering and budget' if base == 'random' else 'strategy and budget'} (grey: 2.5-97.5%, dashed: mean).")
