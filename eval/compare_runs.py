"""Compare the runs of two results folders run by run: selections, training orders, per-step losses,
predictions and every metric, and say which are bit-identical.

    python eval/compare_runs.py eval/results/demo-cpu /tmp/demo-after > eval/results/layout-demo-comparison.txt

Used to show that a refactor changed no result (issue 14: the demo's 9 chrF values). Exit status 1
if any compared value differs, so it can gate a change.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def runs(folder: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted((folder / "runs").glob("*.json"))}


def fields(run: dict) -> dict[str, object]:
    """The values a refactor must not change (timings and versions may)."""
    out = {"metrics": run.get("eval", {}).get("metrics"), "predictions": run.get("eval", {}).get("predictions")}
    if run.get("selection") is not None:
        out["selection"] = run["selection"]
        out["order"] = run.get("order")
        out["losses"] = run.get("train", {}).get("losses")
    return out


def main(before: str, after: str) -> int:
    a, b = runs(Path(before)), runs(Path(after))
    print(f"before: {before} ({len(a)} runs)\nafter:  {after} ({len(b)} runs)\n")
    differ = 0
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b:
            print(f"{name}: only in {'after' if name in b else 'before'}")
            differ += 1
            continue
        fa, fb = fields(a[name]), fields(b[name])
        same = [k for k in fa if fa[k] == fb.get(k)]
        diff = [k for k in fa if fa[k] != fb.get(k)]
        chrf = (fa["metrics"] or {}).get("chrf"), (fb["metrics"] or {}).get("chrf")
        gap = ""
        if "losses" in diff and fa["losses"] and fb.get("losses") and len(fa["losses"]) == len(fb["losses"]):
            gap = f" (max |step loss difference| {max(abs(x - y) for x, y in zip(fa['losses'], fb['losses'])):.1e})"
        print(f"{name:32s} chrF {chrf[0]!r:>20} -> {chrf[1]!r:<20} identical: {', '.join(same) or '-'}"
              + (f"; DIFFERENT: {', '.join(diff)}{gap}" if diff else ""))
        differ += bool(diff)
    print(f"\n{len(set(a) & set(b)) - differ} of {len(set(a) | set(b))} runs bit-identical in every compared value")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
