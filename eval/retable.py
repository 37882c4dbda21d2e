"""Re-derive a results folder's summary.json, table.md and table.csv from its recorded runs, the way
`llm-al run` wrote them at the end of the recording (llm_al/run/experiment.py): the cells of the
folder's config.yaml, read from runs/*.json, summarised by today's llm_al.analysis.table. The
recorded feature cost and total seconds are kept; no model is loaded and nothing is trained.

    PYTHONPATH=. .venv/bin/python eval/retable.py eval/results/reproduction-cpu [more folders]   # ~2 s each

Used when the statistics change (issue 16: t intervals, the share beside its null), so the committed
tables say what the code now says about the same runs. `llm-al report FOLDER` does the same for report/.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from llm_al.analysis.table import summarize, write_tables
from llm_al.config import load_config, parse_strategy
from llm_al.io import write_json
from llm_al.run.grid import cells


def retable(folder: Path) -> dict:
    cfg = load_config(folder / "config.yaml")
    specs = [(spec, *parse_strategy(spec)) for spec in cfg.strategies]
    results = []
    for cell in cells(cfg, specs):
        path = folder / "runs" / f"{cell.run_id}.json"
        if not path.exists():
            raise SystemExit(f"{path} is missing: the recording's config names a run the folder does not hold")
        results.append(json.loads(path.read_text(encoding="utf-8")))
    floor = json.loads((folder / "runs" / "untrained.json").read_text(encoding="utf-8"))
    old = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    summary = summarize(results, floor, cfg, old.get("feature_cost"))
    summary["feature_cost"] = old.get("feature_cost")
    summary["total_seconds"] = old.get("total_seconds")
    write_json(folder / "summary.json", summary)
    write_tables(summary, folder)
    return summary


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        s = retable(Path(arg))
        print(f"{arg}: {s['runs']} runs re-summarised")
