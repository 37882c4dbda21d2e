"""Reading the rows of a pool: JSON Lines, JSON, CSV/TSV, Parquet, a `datasets` save_to_disk folder or
a hub dataset id, each row as (1-based row number, record); data/pool.py turns records into
examples. Errors name the file and the row.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

from llm_al.errors import DataError

READ_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv",
                   ".tsv": "tsv", ".parquet": "parquet"}
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def record_keys(rec: dict) -> str:
    return ", ".join(map(str, rec)) or "(none)"


def json_loads(text: str) -> Any:
    """json.loads, with nesting too deep for the parser and integers over Python's 4300-digit
    limit reported as JSONDecodeError too (they raise RecursionError / ValueError)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise json.JSONDecodeError("arrays or objects nested too deeply", text, 0) from None
    except ValueError as e:
        raise json.JSONDecodeError(f"a number too long to read ({str(e).split(':')[0]})", text, 0) from None
    escape = _SURROGATE_ESCAPE.search(text)
    if escape:  # a \ud800-style escape decodes to a lone surrogate unless it is half of a pair
        try:
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise json.JSONDecodeError("a lone UTF-16 surrogate escape (\\uD800-\\uDFFF) is not valid Unicode text",
                                       text, escape.start()) from None
    return data




def _read_text(path: Path, label: str) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read the file ({e.strerror or e})", label) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(f"line {line}: not valid UTF-8 text (byte 0x{data[e.start]:02x} at offset "
                        f"{e.start}); save the file as UTF-8", label) from None


def _jsonl_rows(text: str, label: str) -> list[tuple[int, Any]]:
    rows = []
    for n, line in enumerate(text.split("\n"), 1):  # not splitlines(): U+2028 may sit in a string
        if line.strip():
            try:
                rows.append((n, json_loads(line)))
            except json.JSONDecodeError as e:
                raise DataError(f"line {n} is not valid JSON: {e.msg} (column {e.colno})", label) from None
    return rows


def _read_json(text: str, label: str) -> tuple[list[tuple[int, Any]], str]:
    if not text.strip():
        return [], "json"
    try:
        data = json_loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # JSON Lines saved as .json (as `Dataset.to_json` does)
            return _jsonl_rows(text, label), "jsonl"
        raise DataError(f"not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})", label) from None
    if isinstance(data, dict):
        lists = [k for k, v in data.items() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError(f"expected a list of records, or an object holding one list such as "
                            f"{{'data': [...]}}; found an object with keys: {record_keys(data)}", label)
        data = data[lists[0]]
    if not isinstance(data, list):
        raise DataError(f"expected a list of records, got {type(data).__name__}", label)
    return list(enumerate(data, 1)), "json"


def _read_csv(text: str, label: str, delimiter: str) -> list[tuple[int, Any]]:
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))  # long responses are normal
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows = []
    try:
        header = reader.fieldnames or []
        repeated = sorted({h for h in header if header.count(h) > 1})
        if repeated:
            raise DataError(f"the header repeats column(s): {', '.join(repeated)}", label)
        for n, rec in enumerate(reader, 1):
            if None in rec:
                raise DataError(f"has {len(header) + len(rec[None])} cells but the header has "
                                f"{len(header)} columns", label, n)
            rows.append((n, {k: (None if v == "" else v) for k, v in rec.items()}))  # empty = missing
    except csv.Error as e:
        raise DataError(f"line {reader.line_num}: not valid CSV ({e})", label) from None
    return rows


def _read_parquet(path: Path, label: str) -> list[tuple[int, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return list(enumerate(pq.read_table(path).to_pylist(), 1))
    except (pa.ArrowException, OSError, ValueError) as e:
        raise DataError(f"not a readable Parquet file ({e})", label) from None


def _read_datasets(path: Path, label: str, split: str) -> list[tuple[int, Any]]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001 (datasets raises many kinds for a folder it cannot read)
        raise DataError(f"a folder that is not a dataset saved with save_to_disk "
                        f"({type(e).__name__}: {short_repr(str(e), 200)})", label) from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"no split {split!r}; splits: {', '.join(ds)}", label)
        ds = ds[split]
    return list(enumerate(ds.to_list(), 1))


def _read_hub(spec: str, split: str) -> list[tuple[int, Any]]:
    try:
        import datasets

        ds = datasets.load_dataset(spec, split=split)
    except Exception as e:  # noqa: BLE001 (network, auth, missing split, bad script: all the same to the user)
        raise DataError(f"neither a local file nor a reachable Hugging Face hub dataset "
                        f"({type(e).__name__}: {short_repr(str(e), 200)}). Offline machines "
                        f"(HF_DATASETS_OFFLINE=1) can load only local files and cached datasets", spec) from None
    return list(enumerate(ds.to_list(), 1))


def read_rows(spec: str, *, split: str = "train") -> tuple[list[tuple[int, Any]], str]:
    """The raw records of a .jsonl/.ndjson/.json/.csv/.tsv/.parquet file, a `save_to_disk` folder or
    a hub id (`owner/name`), as (1-based row, record) pairs (JSON Lines: line numbers; CSV: empty
    cells are None), and the format read."""
    spec = str(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        return _read_datasets(path, spec, split), "datasets"
    if path.is_file():
        fmt = READ_EXTENSIONS.get(path.suffix.lower())
        if fmt is None:
            raise DataError(f"unknown format {path.suffix or '(no extension)'!r}; supported: "
                            f"{', '.join(READ_EXTENSIONS)}, or a datasets save_to_disk folder", spec)
        if fmt == "parquet":
            return _read_parquet(path, spec), fmt
        if fmt == "jsonl":
            return _jsonl_rows(_read_text(path, spec), spec), fmt
        if fmt == "json":
            return _read_json(_read_text(path, spec), spec)
        return _read_csv(_read_text(path, spec), spec, "\t" if fmt == "tsv" else ","), fmt
    if HUB_ID.fullmatch(spec) and not path.suffix:
        return _read_hub(spec, split), "datasets"
    raise DataError("no such file", spec)
