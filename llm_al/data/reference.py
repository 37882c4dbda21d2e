"""Reference corpora for overlap: stream the documents of a corpus in bounded memory, and
fingerprint it cheaply so that an index built from it is reused until it changes.

    for text in reference_texts("corpus/", field="text"):   # any source below, one document at a time
        ...
    fp = fingerprint_files(["corpus/"], field="text")         # paths, sizes and mtimes of what is read

A reference (`spec`) is one of:

- "pydoc": the standard library's `pydoc_data.topics` (~0.8 MB of Python reference prose, one
  document per topic), the embedded default;
- a text file (.txt, .text, .md, .markdown, .rst, or any other extension when named on its own):
  one document per blank-line-separated paragraph;
- JSON Lines (.jsonl, .ndjson, or .json holding one object per line): the `field` of each row;
- any of those gzip-compressed (.txt.gz, .jsonl.gz, .json.gz, ...), decompressed as it is read;
- Parquet (.parquet): the `field` column, one record batch at a time;
- a folder saved by `datasets`' `save_to_disk` (a Dataset, or a DatasetDict and its `split`):
  the `field` column, memory-mapped, in batches;
- a folder of shards: each file above (and each save_to_disk folder) under it, recursively, in
  sorted path order, extensions mixed; hidden files, other extensions, a folder's own documents
  (README, LICENSE, CHANGELOG, CITATION, any extension) and .json files that are not JSON Lines
  (a pretty-printed metadata.json) are skipped, and the skipped files are logged;
- a Hugging Face hub dataset id ("owner/name") when online: `datasets.load_dataset(id,
  split=split, streaming=True)`, rows fetched as they are read.

A row whose `field` is null is an empty document; any other non-text value is an error. Memory:
one text line, one paragraph (at most `MAX_PARAGRAPH` characters: a longer one is cut at a line
end, losing the n-grams across the cut) or one batch of rows at a time, whatever the corpus size.
Every problem raises `DataError` naming the file (and its line or row where there is one).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import re
import sys
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from llm_al.errors import DataError

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".text", ".md", ".markdown", ".rst")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
_OTHER_COMPRESSION = (".bz2", ".xz", ".zst", ".zip", ".lz4", ".7z", ".tar", ".tgz")
_TABLES = (".csv", ".tsv", ".xlsx", ".arrow", ".feather")
MAX_PARAGRAPH = 1 << 23  # characters (8 MB): a paragraph this long is cut at a line end
ROW_BATCH = 1024  # rows per Parquet / datasets batch
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
FORMATS = ("'pydoc', a text file (.txt/.md/...), .jsonl/.ndjson/.json (JSON Lines), any of those as .gz, "
           ".parquet, a datasets save_to_disk folder, a folder of such shards, or a hub dataset id (online)")


# ---------------------------------------------------------------- what a spec is made of


def _kind(path: Path) -> str | None:
    """'text', 'jsonl', 'parquet' or 'datasets' for a file or folder this module reads, else None."""
    if path.is_dir():
        return "datasets" if _is_saved_dataset(path) else None
    name = path.name.lower()
    name = name[:-3] if name.endswith(".gz") else name
    suffix = os.path.splitext(name)[1]
    if suffix in TEXT_SUFFIXES:
        return "text"
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix == ".parquet" and not path.name.lower().endswith(".gz"):
        return "parquet"
    return None


def _is_saved_dataset(folder: Path) -> bool:
    return (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()


def is_hub_id(spec: str) -> bool:
    """'owner/name' that is no local path and does not end like a file name (a missing 'dir/x.jsonl'
    is a missing file, not a hub id)."""
    looks_like_file = _kind(Path(spec)) is not None or spec.lower().endswith((".gz", *_TABLES, *_OTHER_COMPRESSION))
    return bool(_HUB_ID.fullmatch(spec)) and not looks_like_file and not Path(spec).expanduser().exists()


def reference_units(spec: str | os.PathLike) -> list[tuple[str, Path]]:
    """The (kind, path) units a local reference is read from, in reading order (see the module
    docstring). A folder that is neither a saved dataset nor holds a readable shard, a missing
    path and a file in a format this module cannot stream raise `DataError`."""
    path = Path(spec).expanduser()
    if path.is_dir():
        if _is_saved_dataset(path):
            return [("datasets", path)]
        units, skipped = _shards(path)
        if not units:
            found = ", ".join(f"{ext} ({k})" for ext, k in skipped.most_common(8)) or "no files"
            raise DataError(f"the folder holds no file a reference can be read from (found: {found}); "
                            f"a reference is {FORMATS}", str(spec))
        return units
    if not path.is_file():
        raise DataError(f"no such file or folder; a reference is {FORMATS}", str(spec))
    kind = _kind(path)
    if kind is None:
        lower = path.name.lower()
        if lower.endswith(_OTHER_COMPRESSION):
            raise DataError("only gzip (.gz) compression is read; decompress the file or recompress it "
                            "with gzip", str(spec))
        if lower.endswith(_TABLES) or lower.endswith(tuple(t + ".gz" for t in _TABLES)):
            raise DataError(f"{path.suffix} is not a reference format; write the text column as .jsonl or "
                            f".parquet (a reference is {FORMATS})", str(spec))
        kind = "text"  # a file named on its own with another extension (or none) is plain text
    return [(kind, path)]


def _shards(root: Path) -> tuple[list[tuple[str, Path]], Counter]:
    """The readable units under `root`, sorted by path, and a count of skipped files by extension."""
    units, skipped = [], Counter()
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for d in list(dirs):
            if _is_saved_dataset(here / d):  # read as one unit; its .arrow files are not shards
                units.append(("datasets", here / d))
                dirs.remove(d)
        for name in files:
            kind = None if name.startswith(".") else _kind(here / name)
            if kind is not None and _FOLDER_DOCS.match(name):
                skipped[f"{name} (the folder's own document)"] += 1
            elif kind == "jsonl" and name.lower().endswith(".json") and not _json_lines(here / name):
                skipped[f"{name} (JSON, not JSON Lines)"] += 1
            elif kind is None:
                skipped[os.path.splitext(name)[1].lower() or name] += 1
            else:
                units.append((kind, here / name))
    units.sort(key=lambda u: u[1].relative_to(root).parts)
    if units and skipped:
        log.warning("reference folder %s: reading %d files, skipping %s", root, len(units),
                    ", ".join(f"{what} x{k}" for what, k in skipped.most_common(8)))
    return units, skipped


_FOLDER_DOCS = re.compile(r"(readme|licen[cs]e|changelog|citation)([._-].*)?$", re.IGNORECASE)


def _json_lines(path: Path) -> bool:
    """Whether a .json file in a folder of shards starts with one JSON value on its first non-blank
    line (JSON Lines); a pretty-printed file's first line ('{' or '[') is not one. A first line
    over 1 MB counts as JSON Lines (data, not metadata): reading it reports any problem by line."""
    limit = 1 << 20
    try:
        with open(path, "rb") as fh:
            for line in iter(lambda: fh.readline(limit), b""):
                if len(line) == limit and not line.endswith(b"\n"):
                    return True
                if line.strip():
                    json.loads(line)
                    return True
        return False
    except (OSError, ValueError):
        return False


# ---------------------------------------------------------------- reading


def reference_texts(spec: str | os.PathLike, field: str = "text", *, split: str = "train") -> Iterator[str]:
    """Stream the documents of a reference corpus (see the module docstring for the sources).
    Checks the path (and, for a hub id, that the hub is reachable) at once; problems inside a file
    raise `DataError` as the iterator reaches them."""
    spec_s = str(spec)
    if spec_s == "pydoc":
        from pydoc_data.topics import topics

        return iter([topics[k] for k in sorted(topics)])
    if is_hub_id(spec_s):
        return _hub_texts(spec_s, field, split)
    units = reference_units(spec)
    readers = {"text": lambda p: _paragraphs(p), "jsonl": lambda p: _jsonl_texts(p, field),
               "parquet": lambda p: _parquet_texts(p, field), "datasets": lambda p: _dataset_texts(p, field, split)}
    return (doc for kind, path in units for doc in readers[kind](path))


def _open(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line) of a UTF-8 file (gzip-compressed when named .gz), streamed;
    decoded per line to name a bad one."""
    lineno = 0
    try:
        with _open(path) as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    yield lineno, raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
                except UnicodeDecodeError:
                    hint = " (is it a binary or compressed file?)" if lineno == 1 else ""
                    raise DataError(f"line {lineno} is not valid UTF-8 text{hint}; save the file as UTF-8 "
                                    f"(a reference is {FORMATS})", str(path)) from None
    except (OSError, EOFError, zlib.error) as e:
        what = "not a readable gzip file" if path.name.lower().endswith(".gz") else "cannot read the file"
        where = f" after line {lineno}" if lineno else ""
        raise DataError(f"{what}{where} ({getattr(e, 'strerror', None) or e})", str(path)) from None


def _paragraphs(path: Path) -> Iterator[str]:
    para: list[str] = []
    size = 0
    for _, line in _lines(path):
        if line.strip():
            para.append(line)
            size += len(line)
            if size < MAX_PARAGRAPH:
                continue
        if para:
            yield "".join(para)
            para, size = [], 0
    if para:
        yield "".join(para)


def _text_value(value: object, field: str, path: str, row: int, unit: str = "row") -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""  # a null text is an empty document
    raise DataError(f"{unit} {row}: field {field!r} must be text, got {type(value).__name__} "
                    f"({str(value)[:40]!r})", path)


def _jsonl_texts(path: Path, field: str) -> Iterator[str]:
    for lineno, line in _lines(path):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            hint = ""
            if lineno == 1 and line.lstrip().startswith("["):
                hint = " (a JSON array cannot be streamed: write one JSON object per line, as JSON Lines)"
            raise DataError(f"line {lineno} is not valid JSON: {e.msg}{hint}", str(path)) from None
        if not isinstance(rec, dict) or field not in rec:
            found = ", ".join(map(str, rec)) if isinstance(rec, dict) else type(rec).__name__
            raise DataError(f"line {lineno} has no field {field!r} (found: {found or 'none'}); "
                            f"name the text field with --reference-field (field=...)", str(path))
        yield _text_value(rec[field], field, str(path), lineno, "line")


def _missing_field(field: str, columns: Iterable[str], label: str) -> DataError:
    return DataError(f"no column {field!r} (columns: {', '.join(map(str, columns)) or 'none'}); name the text "
                     f"column with --reference-field (field=...)", label)


def _parquet_texts(path: Path, field: str) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise DataError(f"not a readable Parquet file ({e})", str(path)) from None
    names = pf.schema_arrow.names
    if field not in names:
        raise _missing_field(field, names, str(path))
    kind = pf.schema_arrow.field(field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)
            or getattr(pa.types, "is_string_view", lambda _: False)(kind)):
        raise DataError(f"column {field!r} holds {kind}, not text", str(path))
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=ROW_BATCH, columns=[field]):
            for value in batch.column(0).to_pylist():
                row += 1
                yield value or ""
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"cannot read the Parquet file after row {row} ({e})", str(path)) from None


def _dataset_texts(path: Path, field: str, split: str) -> Iterator[str]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))  # memory-maps the Arrow files: nothing is loaded yet
    except Exception as e:  # noqa: BLE001 (datasets raises many kinds for a folder it cannot read)
        raise DataError(f"a folder that is not a readable datasets save_to_disk folder "
                        f"({type(e).__name__}: {str(e)[:200]})", str(path)) from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"no split {split!r}; splits: {', '.join(ds)} (choose one with --reference-split)",
                            str(path))
        ds = ds[split]
    if field not in ds.column_names:
        raise _missing_field(field, ds.column_names, str(path))
    row = 0
    for batch in ds.select_columns([field]).iter(batch_size=ROW_BATCH):
        for value in batch[field]:
            row += 1
            yield _text_value(value, field, str(path), row)


def _offline_var() -> str | None:
    return next((v for v in _OFFLINE_VARS if os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")),
                None)


def _hub_error(spec: str, split: str, why: str) -> DataError:
    return DataError(f"not a local file or folder, and as a Hugging Face hub dataset id it cannot be read: {why}. "
                     f"On a machine with network, save it once: datasets.load_dataset({spec!r}, split={split!r})"
                     f".save_to_disk('DIR') (or .to_parquet('FILE.parquet')), then pass DIR or the file as the "
                     f"reference", spec)


def _hub_dataset(spec: str, split: str):
    """The streaming dataset of a hub id; a clear `DataError` when the hub cannot be reached."""
    var = _offline_var()
    if var:
        raise _hub_error(spec, split, f"hub access is off ({var}={os.environ[var]}); unset it to stream from the hub")
    try:
        import datasets

        return datasets.load_dataset(spec, split=split, streaming=True)
    except Exception as e:  # noqa: BLE001 (network, auth, missing split: all the same to the user)
        raise _hub_error(spec, split, f"{type(e).__name__}: {str(e)[:200]}") from None


def _hub_texts(spec: str, field: str, split: str) -> Iterator[str]:
    ds = _hub_dataset(spec, split)
    columns = getattr(ds, "column_names", None)
    if columns and field not in columns:
        raise _missing_field(field, columns, spec)

    def rows() -> Iterator[str]:
        row, it = 0, iter(ds)
        while True:
            try:
                rec = next(it)
            except StopIteration:
                return
            except Exception as e:  # noqa: BLE001 (a stream can fail at any row: network, decoding)
                raise DataError(f"reading the hub dataset failed after row {row} ({type(e).__name__}: "
                                f"{str(e)[:200]})", spec) from None
            row += 1
            if field not in rec:
                raise _missing_field(field, rec, f"{spec}, row {row}")
            yield _text_value(rec[field], field, spec, row)

    return rows()


# ---------------------------------------------------------------- fingerprints


def fingerprint_files(paths: Iterable[str | os.PathLike], field: str = "text", *, split: str = "train") -> str:
    """A short hash of what each reference is read from: the paths, sizes and modification times
    of its files (a saved dataset: every file in its folder; a folder of shards: each shard, so a
    changed, added or removed shard changes it), plus `field` when a row format is read and `split`
    when a saved dataset or a hub id is. "pydoc": the module file and the Python version; a hub id:
    the id and the dataset's current revision (this needs the hub). Cheap: reads no contents."""
    h = hashlib.sha256()
    for spec in paths:
        spec_s = str(spec)
        if spec_s == "pydoc":
            from pydoc_data import topics

            h.update(f"pydoc\0{sys.version}\n".encode())
            units = [("text", Path(topics.__file__))]
        elif is_hub_id(spec_s):
            h.update(f"hub\0{spec_s}\0{_hub_revision(spec_s, split)}\0{split}\0{field}\n".encode())
            continue
        else:
            units = reference_units(spec)
        kinds = {kind for kind, _ in units}
        if kinds - {"text"}:
            h.update(f"field\0{field}\n".encode())
        if "datasets" in kinds:
            h.update(f"split\0{split}\n".encode())
        for _, path in units:
            files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
            for f in files:
                st = f.stat()
                h.update(f"{f.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _hub_revision(spec: str, split: str) -> str:
    var = _offline_var()
    if var:
        raise _hub_error(spec, split, f"hub access is off ({var}={os.environ[var]}); unset it to stream from the hub")
    try:
        from huggingface_hub import HfApi

        return str(HfApi().dataset_info(spec).sha)
    except Exception as e:  # noqa: BLE001 (network, auth, no such dataset)
        raise _hub_error(spec, split, f"{type(e).__name__}: {str(e)[:200]}") from None
