"""Human annotation of chosen prompts: export them for annotators, import the filled file, merge.

    pool = load_pool("prompts.jsonl", labelled=False)            # prompts without responses
    chosen = pool.subset(indices)                                 # what a strategy picked
    export_for_annotation(chosen, range(len(chosen)), "to_annotate.csv", drafts=model_drafts)
    # ... annotators fill (or correct) the `response` column ...
    labelled, report = import_annotations("to_annotate.csv", chosen)
    pool = merge_labelled(pool, labelled)

Rows are matched by `llm_al_id`, the example's `prompt_id`, so the file may be re-ordered. Import
checks the whole file before returning anything and writes nothing; a file that fails any check
raises a `DataError` naming the file, the row (JSON Lines: the line) and the id.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Sequence

from llm_al.data.pool import Example, Pool, is_missing

from llm_al.data.formats import json_loads, read_rows
from llm_al.errors import DataError, UserError
from llm_al.io import atomic_path

COLUMNS = ("llm_al_id", "system", "prompt", "response", "draft", "notes")
_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
# A CSV cell a spreadsheet would run as a formula (OWASP "CSV injection"): after any apostrophes,
# = + - @ tab or CR. Export prefixes such cells with one apostrophe; import strips exactly that one,
# so every text survives the round trip (a cell "'=x" is written "''=x" and read back as "'=x").
_FORMULA = re.compile(r"'*[=+\-@\t\r]")


def csv_escape(text: str) -> str:
    return "'" + text if _FORMULA.match(text) else text


def csv_unescape(text: str) -> str:
    return text[1:] if text.startswith("'") and _FORMULA.match(text, 1) else text


@dataclass(frozen=True)
class ImportReport:
    """What an annotation file held. `changed` + `unchanged` + `from_scratch` == `accepted`;
    `skipped_blank` and `skipped_drafts` rows (partial imports) stay unlabelled."""

    path: str
    rows: int  # data rows in the file
    accepted: int  # rows turned into labelled examples
    changed: int  # rows whose draft the annotator edited
    unchanged: int  # rows left as the draft (compared after stripping whitespace)
    from_scratch: int  # rows that had no draft
    notes: dict[str, str] = field(default_factory=dict)  # llm_al_id -> the annotator's note, if any
    skipped_blank: int = 0  # rows left blank (partial import): still unlabelled
    skipped_drafts: int = 0  # rows still holding the unedited draft (partial import): still unlabelled

    def summary(self) -> str:
        skipped = (f"; skipped as unlabelled: {self.skipped_blank} blank, {self.skipped_drafts} unedited drafts"
                   if self.skipped_blank or self.skipped_drafts else "")
        return (f"{self.path}: {self.accepted} of {self.rows} rows accepted ({self.changed} drafts edited, "
                f"{self.unchanged} drafts accepted unedited, {self.from_scratch} written from scratch; "
                f"{len(self.notes)} with notes){skipped}")


def unlabelled_indices(pool: Pool) -> list[int]:
    """Positions of the examples that still need a response."""
    return [i for i, ex in enumerate(pool.examples) if not ex.is_labelled]


def annotation_format(path: Path, label: str) -> str:
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UserError(f"{label}: unknown annotation file format {path.suffix or '(no extension)'!r}; "
                        f"valid extensions: {', '.join(_FORMATS)}")
    return fmt


# ---------------------------------------------------------------- export


def _prompt_text(ex: Example) -> str:
    """The user turn, or for multi-turn chats the conversation so far as 'role: content' lines."""
    turns = [m for m in ex.prompt_messages if m["role"] != "system"]
    if len(turns) == 1:
        return turns[0]["content"]
    return "\n".join(f"{m['role']}: {m['content']}" for m in turns)


def export_for_annotation(pool: Pool, indices: Iterable[int], out: str | Path, *,
                          drafts: Sequence[str] | None = None) -> Path:
    """Write `pool.examples[i]` for i in `indices` (unlabelled examples, in that order) as rows of
    `COLUMNS` to a .jsonl/.csv file, atomically; return the path. With `drafts` (aligned with
    `indices`, e.g. a local model's outputs) each row's `response` starts as its draft for the
    annotator to correct, and `draft` keeps it so the edits can be counted on import."""
    out_path = Path(out).expanduser()
    fmt = annotation_format(out_path, str(out))
    indices = [int(i) for i in indices]
    if not indices:
        raise UserError(f"{out}: no examples to export")
    bad = [i for i in indices if not 0 <= i < len(pool)]
    if bad:
        raise IndexError(f"example index {bad[0]} is outside a pool of {len(pool)}")
    if len(set(indices)) != len(indices):
        repeated = next(i for i in indices if indices.count(i) > 1)
        raise ValueError(f"example index {repeated} appears {indices.count(repeated)} times")
    if drafts is not None:
        if isinstance(drafts, str) or len(drafts) != len(indices):
            raise ValueError(f"drafts must be a sequence of {len(indices)} texts (one per index), "
                             f"got {type(drafts).__name__} of {len(drafts)}")
        for i, draft in enumerate(drafts):
            if draft is not None and not isinstance(draft, str):
                raise ValueError(f"drafts[{i}] must be text or None, got {type(draft).__name__}")
    rows = []
    for k, i in enumerate(indices):
        ex = pool.examples[i]
        if ex.is_labelled:
            raise DataError(f"example {ex.id} (index {i}) already has a response; only unlabelled "
                            "examples are exported for annotation (load the pool with labelled=False)",
                            pool.path or "in-memory records", ex.row)
        draft = (drafts[k] if drafts is not None else None) or ""
        system = ex.messages[0]["content"] if ex.messages[0]["role"] == "system" else ""
        rows.append({"llm_al_id": ex.prompt_id, "system": system, "prompt": _prompt_text(ex),
                     "response": draft, "draft": draft, "notes": ""})
    with atomic_path(out_path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        if fmt == "csv":
            writer = csv.DictWriter(fh, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows({k: csv_escape(v) for k, v in row.items()} for row in rows)
        else:
            fh.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return out_path


# ---------------------------------------------------------------- import


def _cell(rec: dict, name: str, where: tuple[str, int], from_csv: bool = False) -> str:
    """A text cell; missing (null, empty CSV cell) reads as ''. From CSV, export's formula guard
    (one leading apostrophe) is removed."""
    value = rec.get(name)
    if is_missing(value):
        return ""
    if not isinstance(value, str):
        raise DataError(f"field {name!r} must be text, got {type(value).__name__} {value!r:.60}", *where)
    return csv_unescape(value) if from_csv else value


def _read(path: Path, label: str) -> list[tuple[int, dict]]:
    """The rows of an annotation file, each checked to be a record with the needed columns."""
    fmt = annotation_format(path, label)
    if not path.is_file():
        raise DataError("no such file", label)
    rows, _ = read_rows(label)
    if not rows:
        raise DataError("no rows (the file is empty)", label)
    if fmt == "csv":  # every CSV record has every header column
        missing = [c for c in ("llm_al_id", "response") if c not in rows[0][1]]
        if missing:
            raise DataError(f"line 1 (the header) has no {' or '.join(map(repr, missing))} column; "
                            f"columns found: {', '.join(rows[0][1])}; expected: {', '.join(COLUMNS)}", label)
    for n, rec in rows:
        if not isinstance(rec, dict):
            raise DataError(f"expected an object with the fields {', '.join(COLUMNS)}, got "
                            f"{type(rec).__name__}", label, n)
        for col in ("llm_al_id", "response"):
            if col not in rec:
                raise DataError(f"no {col!r} field; fields found: {', '.join(rec) or '(none)'}", label, n)
    return rows


def _with_response(ex: Example, response: str, shape: str) -> Example:
    """`ex` answered: its source record gets the response under the shape's own field where there is
    a natural one (output, target, the missing translation language, a final chat turn), else under
    'response', so that writing the record back and loading it gives the same example."""
    rec = dict(ex.source)

    def value(key: str) -> object:  # CSV holds lists and dicts as JSON text
        try:
            return json.loads(rec[key]) if isinstance(rec.get(key), str) else rec.get(key)
        except json.JSONDecodeError:
            return rec[key]

    key = "response"
    if shape == "prompt_response":
        key = next((k for k in ("response", "completion", "output") if k in rec), "response")
    elif shape == "alpaca":
        key = "output"
    elif shape == "translation" and isinstance(value("translation"), dict):
        pair = dict(value("translation"))
        empty = [k for k, v in pair.items() if is_missing(v) or (isinstance(v, str) and not v.strip())]
        if len(empty) == 1:
            rec["translation"] = {**pair, empty[0]: response}
            return ex.with_response(response, rec)
    elif shape == "translation" and "source" in rec:
        key = "target"
    elif shape in ("messages", "sharegpt"):
        name = "messages" if shape == "messages" else "conversations"
        turns = value(name)
        if isinstance(turns, list):
            last = turns[-1] if turns and isinstance(turns[-1], dict) else {}
            if last.get("role", last.get("from")) in ("assistant", "gpt", "model"):
                turns = turns[:-1]  # the empty placeholder the loader skipped
            turn = {"role": "assistant", "content": response} if shape == "messages" else \
                {"from": "gpt", "value": response}
            rec[name] = [*turns, turn]
            return ex.with_response(response, rec)
    rec[key] = response
    return ex.with_response(response, rec)


def import_annotations(path: str | Path, pool: Pool, *, require_all: bool = True, partial: bool = False,
                       accept_drafts: bool = False) -> tuple[list[Example], ImportReport]:
    """The annotated examples of `path` (a file written by `export_for_annotation` and filled in),
    in file order, and a report. `pool` is the pool or subset that was exported: each row's
    `llm_al_id` must be the prompt_id of one of its unlabelled examples, no id may repeat and,
    with `require_all`, every unlabelled example of `pool` must have a row.

    A draft is not a label: a row whose response still equals its draft (after stripping
    whitespace) is refused, unless `accept_drafts` (take it as the label) or `partial` (leave it
    unlabelled). A blank response is refused unless `partial` (left unlabelled). All rows are
    checked before anything is returned; nothing is written. Messages name the command-line flags
    (--partial, --accept-drafts) that map to these arguments."""
    label = str(path)
    rows = _read(Path(path).expanduser(), label)
    from_csv = annotation_format(Path(path), label) == "csv"
    targets = {ex.prompt_id: ex for ex in pool.examples if not ex.is_labelled}
    done = {ex.prompt_id: ex for ex in pool.examples if ex.is_labelled}
    seen: dict[str, int] = {}
    answered: list[tuple[Example, str]] = []
    changed = unchanged = from_scratch = skipped_blank = skipped_drafts = 0
    notes, drafted = {}, []
    for n, rec in rows:
        where = (label, n)
        ex_id = _cell(rec, "llm_al_id", where).strip()
        if not ex_id:
            raise DataError("empty 'llm_al_id'; keep the ids that export wrote", *where)
        if ex_id not in targets:
            why = (f"it is already labelled in the pool (row {done[ex_id].row})" if ex_id in done else
                   f"no unlabelled example of the pool ({len(targets)}) has it; import against the pool "
                   "or subset that was exported")
            raise DataError(f"unknown llm_al_id {ex_id!r}: {why}", *where)
        if ex_id in seen:
            raise DataError(f"llm_al_id {ex_id!r} appears twice (rows {seen[ex_id]} and {n})", *where)
        seen[ex_id] = n
        response, draft = _cell(rec, "response", where, from_csv), _cell(rec, "draft", where, from_csv)
        note = _cell(rec, "notes", where, from_csv).strip()
        if note:
            notes[ex_id] = note
        if not response.strip():
            if not partial:
                raise DataError(f"empty 'response' for llm_al_id {ex_id!r}; fill it in, or pass --partial to import "
                                "only the answered rows (the rest stay unlabelled)", *where)
            skipped_blank += 1
            continue
        if not draft.strip():
            from_scratch += 1
        elif response.strip() == draft.strip():
            if not accept_drafts:
                drafted.append(n)
                skipped_drafts += partial
                continue
            unchanged += 1
        else:
            changed += 1
        answered.append((targets[ex_id], response))
    if drafted and not partial:
        shown = ", ".join(map(str, drafted[:10])) + (f" and {len(drafted) - 10} more" if len(drafted) > 10 else "")
        raise DataError(f"{len(drafted)} of {len(rows)} rows still hold the model's draft unedited (rows {shown}); "
                        "a draft is not a label: edit them, pass --partial to import only the edited rows (the "
                        "drafts stay unlabelled), or --accept-drafts to take the drafts as labels", label)
    if require_all:
        missing = [pid for pid in targets if pid not in seen]
        if missing:
            shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            raise DataError(f"{len(missing)} of the {len(targets)} exported examples have no row: {shown} "
                            "(pass --partial to import a partial file)", label)
    examples = [_with_response(ex, response, pool.shape) for ex, response in answered]
    report = ImportReport(label, len(rows), len(examples), changed, unchanged, from_scratch, notes,
                          skipped_blank, skipped_drafts)
    return examples, report


def read_manifest(path: str | Path) -> set[str]:
    """The prompt ids that `annotate export` wrote beside its file (`<file>.ids.json`)."""
    label = str(path)
    try:
        ids = json_loads(Path(path).read_bytes().decode("utf-8-sig"))
    except OSError as e:
        raise DataError(f"cannot read the export's id list ({e.strerror or e})", label) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"the export's id list is damaged ({e}); delete it to import without the completeness "
                        "check, or export again", label) from None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise DataError(f"the export's id list must be a JSON list of ids, got {type(ids).__name__}", label)
    return set(ids)


# ---------------------------------------------------------------- merge


def merge_labelled(pool: Pool, new_examples: Sequence[Example]) -> Pool:
    """A new pool: `pool` with each unlabelled example replaced, in place, by the labelled example of
    `new_examples` with the same prompt_id; everything else (and `pool` itself) untouched. An
    original whose labelled version is already in the pool is dropped as a duplicate instead."""
    new: dict[str, Example] = {}
    for ex in new_examples:
        if not ex.is_labelled:
            raise ValueError(f"example {ex.id} (row {ex.row}) has no response; merge takes labelled examples")
        if ex.prompt_id in new:
            raise ValueError(f"two new examples answer the prompt {ex.prompt_id} (rows {new[ex.prompt_id].row} "
                             f"and {ex.row})")
        new[ex.prompt_id] = ex
    originals = {ex.prompt_id for ex in pool.examples if not ex.is_labelled}
    stray = [pid for pid in new if pid not in originals]
    if stray:
        raise DataError(f"{len(stray)} new example(s) match no unlabelled example of the pool by prompt id: "
                        f"{', '.join(stray[:10])}", pool.path or "in-memory records")
    rows = {ex.id: ex.row for ex in pool.examples}
    examples, duplicates = [], list(pool.duplicates)
    for ex in pool.examples:
        answer = None if ex.is_labelled else new.get(ex.prompt_id)
        if answer is not None and answer.id in rows:
            duplicates.append((ex.row, rows[answer.id]))
            continue
        examples.append(answer or ex)
    return replace(pool, examples=examples, duplicates=duplicates)
