"""The cross-task leaderboard: every strategy against random on every task and budget, one table.

Input: results folders of `llm-al run` (one task each, e.g. recipes/leaderboard.yaml with task=...).
Each (task, strategy, budget) is compared with the random runs of its own folder, paired by seed, as
`llm-al report` does (llm_al.analysis.writeup.comparisons); the p-values are then Holm-adjusted
across every comparison of every folder (a leaderboard reads many comparisons at once, so one
corrected family is the honest one). Beside each gain: n, the 95% t interval, wins out of n, and the
cost of the strategy's features (model tokens scored, examples embedded, probe tokens, seconds when
computed) from the folder's summary.json, so a user can weigh gain against cost.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from llm_al.analysis.document import budget_key
from llm_al.analysis.protocol import holm
from llm_al.analysis.writeup import comparisons, load_results
from llm_al.errors import UserError

VERDICT_ALPHA = 0.05


def _task(cfg: dict, folder: Path) -> str:
    pool = str((cfg.get("data") or {}).get("pool") or folder.name)
    return pool.split("embedded:", 1)[-1]


def _cost(folder: Path) -> dict[tuple, dict]:
    path = folder / "summary.json"
    summary = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    return {(r["strategy"], r["ordering"], r["budget"]): {**(r.get("cost") or {}),
                                                          "select_seconds": r.get("select_seconds")}
            for r in summary.get("strategies", [])}


def leaderboard(folders: list[str | Path]) -> dict:
    """{"rows": one per compared (task, strategy, ordering, budget), Holm-adjusted across all of
    them; "primary", "tasks", "skipped": groups that could not be compared, with why}."""
    rows, skipped, primaries, higher = [], [], set(), True
    for folder in map(Path, folders):
        c, _, _ = load_results(folder)
        primaries.add(c.primary)
        higher = c.higher
        task, cost = _task(c.cfg, folder), _cost(folder)
        results, tested = comparisons(c)
        skipped += [f"{task}: {c.label(*k)}: {res}" for k, res in results.items() if k not in tested]
        for k, r in tested.items():
            rows.append({"task": task, **{key: r[key] for key in ("strategy", "ordering", "budget", "n_strategy",
                                                                 "n_random", "strategy_mean", "random_mean",
                                                                 "mean_diff", "ci_low", "ci_high", "p", "test",
                                                                 "paired", "win_rate")},
                         "cost": cost.get(k, {})})
    if not rows:
        raise UserError(f"no strategy could be compared with random in {', '.join(map(str, folders))}")
    if len(primaries) > 1:
        raise UserError(f"the folders rank by different metrics ({', '.join(sorted(primaries))}): one leaderboard "
                        "needs one eval.primary")
    adjusted = holm({str(i): r["p"] for i, r in enumerate(rows)})
    for i, r in enumerate(rows):
        r["p_holm"] = adjusted[str(i)]["p_adjusted"]
        r["verdict"] = _verdict(r, higher)
    n_min = min(r["n_strategy"] for r in rows)
    return {"primary": primaries.pop(), "higher_is_better": higher, "tasks": sorted({r["task"] for r in rows}),
            "rows": rows, "comparisons": len(rows), "skipped": skipped, "n_min": n_min,
            "smallest_holm_p": smallest_holm_p(n_min, len(rows))}


def _verdict(r: dict, higher: bool) -> str:
    """better/worse only when the Holm-adjusted p passes AND the t interval excludes 0 (the report's
    interval rule, llm_al.analysis.protocol.verdict); leans when only the interval does."""
    better = (r["mean_diff"] > 0) == higher
    excludes_zero = r["ci_low"] > 0 or r["ci_high"] < 0          # NaN compares False: no claim
    if r["p_holm"] < VERDICT_ALPHA and excludes_zero:
        return "better than random" if better else "worse than random"
    if excludes_zero:
        return "leans " + ("better" if better else "worse") + " (not after Holm)"
    return "inside the noise of random"


def smallest_holm_p(n_pairs: int, comparisons: int) -> float:
    """The smallest Holm-adjusted p the design can reach: the exact two-sided paired test's smallest
    p over n seeds (every difference of one sign: 2 / 2^n, Wilcoxon and sign-flip alike) times the
    number of comparisons. Above alpha, no comparison can pass, whatever the data."""
    return min(1.0, comparisons * 2.0 / 2 ** n_pairs)


def _fmt(x, spec: str = ".2f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def format_leaderboard(board: dict) -> str:
    """Markdown: one table of every comparison, sorted by task, budget and gain, with its notes."""
    head = ["task", "budget", "strategy", "n", "diff vs random", "95% t-CI", "win rate", "p", "p Holm", "verdict",
            "tokens scored", "embedded", "probe tokens", "feature s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(board["rows"], key=lambda r: (r["task"], budget_key(r["budget"]), -r["mean_diff"])):
        label = r["strategy"] + (f" [{r['ordering']}]" if r["ordering"] != "shuffled" else "")
        ci = f"[{_fmt(r['ci_low'], '+.2f')}, {_fmt(r['ci_high'], '+.2f')}]"
        cost = r["cost"]
        known = bool(cost)              # a folder without summary.json: cost unknown, not free
        lines.append("| " + " | ".join([
            r["task"], str(r["budget"]), label, str(r["n_strategy"]), _fmt(r["mean_diff"], "+.2f"), ci,
            _fmt(r["win_rate"]), _fmt(r["p"], ".3g"),
            _fmt(r["p_holm"], ".3g"), r["verdict"],
            *[f"{cost.get(k, 0):,}" if known else "-" for k in ("scored_tokens", "embedded_examples", "probe_tokens")],
            _fmt(cost.get("feature_seconds"), ".0f")]) + " |")
    notes = [f"{board['primary']}, strategy minus random, paired by seed within each task's folder; "
             f"{board['comparisons']} comparisons; p from the paired Wilcoxon signed-rank test (Mann-Whitney where "
             f"the seeds do not pair), as `llm-al report`, Holm-adjusted as one family (alpha {VERDICT_ALPHA}). "
             "95% t-CI: Student t interval over the n paired differences (n printed beside it). "
             "better/worse: Holm-adjusted p < 0.05 and the interval excludes 0; 'leans': the interval excludes 0 "
             "but the Holm-adjusted p does not pass.",
             f"With {board['n_min']} seeds (the fewest of any row) and {board['comparisons']} comparisons, the "
             f"smallest Holm-adjusted p any row can reach is {board['smallest_holm_p']:.3g} (2 / 2^n x comparisons)"
             + (": no row can pass at 0.05 whatever the data; more seeds are needed."
                if board["smallest_holm_p"] >= VERDICT_ALPHA else "."),
             "Cost: the model tokens scored and examples embedded to compute the strategy's features "
             "(random needs none), probe tokens (extra model passes), and the seconds they took where they "
             "were computed in that run (0 where they came from the cache)."]
    notes += [f"not compared: {s}" for s in board["skipped"]]
    return "\n".join(lines + [""] + notes) + "\n"
