"""Writing a chosen subset back in the pool's own format (or another one), atomically.

The records are written exactly as they were read, plus extra columns (llm_al_id, llm_al_rank,
llm_al_score, ...), so the output loads back as a pool with the same example ids.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from llm_al.data.pool import Pool, is_missing
from llm_al.errors import UserError
from llm_al.io import atomic_path

_OUTPUT_FORMATS = ("jsonl", "json", "csv", "tsv", "parquet", "datasets")
_WRITE_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv",
                     ".tsv": "tsv", ".parquet": "parquet"}


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    return str(value)


def _plain(value: Any) -> Any:
    return value.tolist() if isinstance(value, (np.generic, np.ndarray)) else value


def _cell(value: Any) -> str:
    """A CSV cell: text as is, lists/dicts/numbers as JSON, missing as empty."""
    if is_missing(value):
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=_json_default)


def _columns(records: list[dict]) -> list[str]:
    return list(dict.fromkeys(k for rec in records for k in rec))


def _arrow_table(records: list[dict]) -> Any:
    """A pyarrow table with every column of every record; a column Arrow cannot type becomes text."""
    import pyarrow as pa

    table = {}
    for col in _columns(records):
        values = [_plain(rec.get(col)) for rec in records]
        try:
            table[str(col)] = pa.array(values)
        except (pa.ArrowException, OverflowError, TypeError):
            table[str(col)] = pa.array([None if is_missing(v) else _cell(v) for v in values], type=pa.string())
    return pa.table(table)


def _write_datasets(records: list[dict], out: Path) -> None:
    """Save to a temporary folder beside `out`, then swap it in (replacing an old dataset folder)."""
    import datasets

    if out.exists() and not (out / "dataset_info.json").exists() and not (out / "dataset_dict.json").exists():
        raise UserError(f"{out} exists and is not a datasets folder; refusing to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    old = tmp.with_name(tmp.name + ".old")
    try:
        datasets.Dataset(_arrow_table(records)).save_to_disk(str(tmp / "data"))
        if out.exists():
            os.replace(out, old)
        os.replace(tmp / "data", out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def output_format(out: str | os.PathLike, format: str | None, pool_format: str) -> str:
    """The format `write_subset` writes `out` in: `format` if given; "datasets" (a save_to_disk
    folder) for a name ending in "/" or an existing datasets folder; else the file extension's;
    else, with no extension, the pool's own format."""
    supported = f"{', '.join(_WRITE_EXTENSIONS)}, or a folder (datasets; a name ending in /)"
    if format is not None:
        if format not in _OUTPUT_FORMATS:
            raise UserError(f"unknown output format {format!r}; valid formats: {', '.join(_OUTPUT_FORMATS)}")
        return format
    if str(out).endswith(("/", os.sep)):
        return "datasets"
    out = Path(out).expanduser()
    if out.is_dir():
        if (out / "dataset_info.json").exists() or (out / "dataset_dict.json").exists():
            return "datasets"
        raise UserError(f"{out} is an existing folder, not a datasets folder; give a file name, or a new folder "
                        "name ending in / for a datasets folder")
    if out.suffix.lower() in _WRITE_EXTENSIONS:
        return _WRITE_EXTENSIONS[out.suffix.lower()]
    if not out.suffix and pool_format in _OUTPUT_FORMATS:
        return pool_format
    raise UserError(f"{out}: cannot tell the output format from {out.suffix or '(no extension)'!r}; "
                    f"supported extensions: {supported}")


SHAPES = ("input", "alpaca", "messages")


def converted_record(ex, shape: str) -> dict:
    """An example as an Alpaca record ({system?, instruction, input, output}) or a chat record
    ({messages}) for other trainers; "input" gives the record exactly as it was read."""
    if shape == "input":
        return dict(ex.source)
    if shape == "messages":
        return {"messages": [dict(m) for m in ex.messages]}
    if shape == "alpaca":
        turns = [m for m in ex.messages if m["role"] != "system"]
        if len(turns) != 2:
            raise UserError(f"example {ex.id} (row {ex.row}) has {len(turns)} turns; Alpaca holds one prompt and "
                            "one response: export multi-turn pools with --export-shape messages")
        system = [m["content"] for m in ex.messages if m["role"] == "system"]
        return {**({"system": system[0]} if system else {}), "instruction": turns[0]["content"], "input": "",
                "output": turns[1]["content"]}
    raise UserError(f"unknown export shape {shape!r}; valid: {', '.join(SHAPES)}")


def write_subset(pool: Pool, indices: Sequence[int], out: str, *, columns: dict[str, Sequence] | None = None,
                 format: str | None = None, shape: str = "input") -> Path:
    """Write `pool.examples[i]` for i in `indices` (in that order) as records in `shape` (the
    source records as read, Alpaca, or chat messages), each with the extra `columns` (aligned with
    `indices`), atomically; return the path written."""
    out_path = Path(out).expanduser()
    fmt = output_format(out, format, pool.format)
    indices = [int(i) for i in indices]
    if not indices:
        raise UserError(f"{out}: no examples to write")
    bad = [i for i in indices if not 0 <= i < len(pool)]
    if bad:
        raise IndexError(f"example index {bad[0]} is outside a pool of {len(pool)}")
    columns = columns or {}
    for name, values in columns.items():
        if len(values) != len(indices):
            raise ValueError(f"column {name!r} has {len(values)} values for {len(indices)} examples")
    records = [converted_record(pool.examples[i], shape) for i in indices]
    for name, values in columns.items():
        for rec, value in zip(records, values):
            rec[name] = _plain(value)
    if fmt == "datasets":
        _write_datasets(records, out_path)
        return out_path
    with atomic_path(out_path) as tmp:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            pq.write_table(_arrow_table(records), tmp)
        elif fmt in ("csv", "tsv"):
            with open(tmp, "w", encoding="utf-8", newline="") as fh:
                writer = csv.writer(fh, delimiter="\t" if fmt == "tsv" else ",")
                header = _columns(records)
                writer.writerow(header)
                writer.writerows([_cell(rec.get(col)) for col in header] for rec in records)
        else:
            dump = lambda obj, **kw: json.dumps(obj, ensure_ascii=False, default=_json_default, **kw)  # noqa: E731
            text = dump(records, indent=2) if fmt == "json" else "\n".join(dump(r) for r in records)
            tmp.write_text(text + "\n", encoding="utf-8")
    return out_path


