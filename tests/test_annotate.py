"""Tests for llm_al.data.annotate: export -> fill -> import -> merge round trips, drafts, and bad files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from llm_al.data.annotate import (
    COLUMNS,
    export_for_annotation,
    import_annotations,
    merge_labelled,
    unlabelled_indices,
)
from llm_al.data.pool import Pool, load_pool, records_to_pool
from llm_al.errors import DataError, UserError
from llm_al.data.export import write_subset

RECORDS = [{"prompt": "Café ☕?", "system": "Be brief."}, {"prompt": "2+2?"}, {"prompt": "Sky?", "response": "Blue"},
           {"prompt": "Line one\nline two, \"quoted\""}, {"prompt": "Why?", "response": ""}]


def pool_file(tmp_path: Path, records: list[dict] = RECORDS) -> Pool:
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return load_pool(str(path), labelled=False)


def read_rows(path: Path) -> list[dict]:
    if path.suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as fh:
            return list(csv.DictReader(fh))
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write_rows(path: Path, rows: list[dict]) -> Path:
    """Write the rows as an annotator's tool would (independently of llm_al)."""
    if path.suffix == ".csv":
        with open(path, "w", encoding="utf-8", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
            writer.writeheader()
            writer.writerows(rows)
    else:
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("ext", [".jsonl", ".csv"])
def test_round_trip(tmp_path, ext):
    pool = pool_file(tmp_path)
    before = list(pool.examples)
    todo = unlabelled_indices(pool)
    assert todo == [0, 1, 3, 4]
    out = export_for_annotation(pool, todo[::-1], tmp_path / f"todo{ext}")
    rows = read_rows(out)
    assert [r["llm_al_id"] for r in rows] == [pool.examples[i].prompt_id for i in todo[::-1]]
    assert list(rows[0]) == list(COLUMNS)
    assert rows[-1]["system"] == "Be brief." and rows[-1]["prompt"] == "Café ☕?"
    assert rows[1]["prompt"] == "Line one\nline two, \"quoted\"" and rows[1]["system"] == ""
    assert all(r["response"] == r["draft"] == r["notes"] == "" for r in rows)
    for r in rows:
        r["response"] = "Answer to " + r["prompt"]
    rows[0]["notes"] = "unsure"
    write_rows(out, rows[::-1])  # annotators may re-order the rows
    new, report = import_annotations(out, pool.subset(todo))
    assert (report.rows, report.accepted, report.changed, report.unchanged, report.from_scratch) == (4, 4, 0, 0, 4)
    assert report.notes == {pool.examples[4].prompt_id: "unsure"} and "4 of 4 rows accepted" in report.summary()
    merged = merge_labelled(pool, new)
    assert pool.examples == before  # the input pool is untouched
    assert len(merged) == len(pool) and all(ex.is_labelled for ex in merged.examples)
    for i, ex in enumerate(merged.examples):
        if i in todo:
            assert ex.prompt_id == pool.examples[i].prompt_id and ex.row == pool.examples[i].row
            assert ex.response == "Answer to " + pool.examples[i].messages[-1]["content"]
            assert ex.messages[:-1] == pool.examples[i].messages and ex.id != pool.examples[i].id
        else:
            assert ex is pool.examples[i]
    assert merged.examples[0].source == {**RECORDS[0], "response": "Answer to Café ☕?"}
    # written back in the pool's format, the merged pool loads (labelled) with the same ids
    back = load_pool(str(write_subset(merged, range(len(merged)), str(tmp_path / "merged.jsonl"))))
    assert back.ids == merged.ids
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


SHAPED = {  # shape -> two unlabelled records (the second with an empty response where the shape has one)
    "alpaca": [{"instruction": "Sum", "input": "2 3"}, {"instruction": "Greet", "input": "", "output": ""}],
    "messages": [{"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "a"},
                               {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]},
                 {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": ""}]}],
    "sharegpt": [{"conversations": [{"from": "human", "value": "Hey"}]},
                 {"conversations": [{"from": "human", "value": "Yo"}]}],
    "translation": [{"source": "Hello", "source_lang": "en", "target_lang": "fr"}, {"source": "Cat"}],
    "wmt": [{"translation": {"de": "Hallo", "en": None}}, {"translation": {"de": "Katze", "en": ""}}],
}


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
@pytest.mark.parametrize("shape", list(SHAPED))
def test_each_shape_merges_into_a_pool_that_reloads(tmp_path, shape, fmt):
    pool = records_to_pool(SHAPED[shape], labelled=False)
    out = export_for_annotation(pool, [0, 1], tmp_path / "todo.jsonl", drafts=["d0", None])
    rows = read_rows(out)
    if shape == "messages":
        assert (rows[0]["system"], rows[0]["prompt"]) == ("S", "user: a\nassistant: b\nuser: c")
    rows[1]["response"] = "r1"
    new, report = import_annotations(write_rows(out, rows), pool, accept_drafts=True)
    assert (report.unchanged, report.from_scratch) == (1, 1)
    merged = merge_labelled(pool, new)
    assert [ex.response for ex in merged.examples] == ["d0", "r1"]
    back = load_pool(str(write_subset(merged, [0, 1], str(tmp_path / f"merged.{fmt}"))))
    assert back.ids == merged.ids and back.shape == pool.shape


def test_drafts_changed_and_unchanged(tmp_path):
    pool = pool_file(tmp_path)
    todo = unlabelled_indices(pool)
    drafts = ["Oui.", "4", "two lines", "Because."]
    out = export_for_annotation(pool, todo, tmp_path / "todo.csv", drafts=drafts)
    rows = read_rows(out)
    assert [r["response"] for r in rows] == [r["draft"] for r in rows] == drafts
    rows[1]["response"] = "Four."
    rows[2]["response"] = "two lines\n"  # whitespace-only edits count as unchanged
    new, report = import_annotations(write_rows(out, rows), pool, accept_drafts=True)
    assert (report.changed, report.unchanged, report.from_scratch, report.accepted) == (1, 3, 0, 4)
    assert [ex.response for ex in new] == ["Oui.", "Four.", "two lines\n", "Because."]


def test_export_refusals(tmp_path):
    pool = pool_file(tmp_path)
    with pytest.raises(UserError, match=r"'\.txt'.*\.jsonl, \.ndjson, \.csv"):
        export_for_annotation(pool, [0], tmp_path / "todo.txt")
    with pytest.raises(DataError, match=r"pool\.jsonl, row 3: .*already has a response"):
        export_for_annotation(pool, [0, 2], tmp_path / "todo.jsonl")
    with pytest.raises(ValueError, match="drafts must be a sequence of 2"):
        export_for_annotation(pool, [0, 1], tmp_path / "todo.jsonl", drafts=["one"])
    with pytest.raises(ValueError, match="index 1 appears 2 times"):
        export_for_annotation(pool, [1, 1], tmp_path / "todo.jsonl")
    with pytest.raises(IndexError, match="outside a pool of 5"):
        export_for_annotation(pool, [9], tmp_path / "todo.jsonl")
    with pytest.raises(UserError, match="no examples"):
        export_for_annotation(pool, [], tmp_path / "todo.jsonl")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pool.jsonl"]


# ---------------------------------------------------------------- bad files


def drop_rows(rows):
    return rows[:1]


def empty_response(rows):
    rows[1]["response"] = "   "
    return rows


def unknown_id(rows):
    rows[1]["llm_al_id"] = "0123456789abcdef"
    return rows


def labelled_id(rows, pool):
    rows[1]["llm_al_id"] = pool.examples[2].prompt_id
    return rows


def duplicate_id(rows):
    rows[2]["llm_al_id"] = rows[0]["llm_al_id"]
    return rows


def no_response_column(rows):
    return [{k: v for k, v in r.items() if k != "response"} for r in rows]


BAD = {  # name -> (mutation, the needles of the error, for each format)
    "missing rows": (drop_rows, ["3 of the 4 exported examples have no row", "--partial"]),
    "empty response": (empty_response, ["row 2", "empty 'response'"]),
    "unknown id": (unknown_id, ["row 2", "unknown llm_al_id '0123456789abcdef'"]),
    "duplicate id": (duplicate_id, ["row 3", "appears twice (rows 1 and 3)"]),
    "no response column": (no_response_column, ["'response'"]),
}


def check_fails(tmp_path: Path, pool: Pool, path: Path, needles: list[str], **kw) -> None:
    before_examples, before_files = list(pool.examples), sorted(tmp_path.rglob("*"))
    with pytest.raises(DataError) as info:
        import_annotations(path, pool, **kw)
    msg = str(info.value)
    assert msg.startswith(str(path)), msg
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    assert pool.examples == before_examples and sorted(tmp_path.rglob("*")) == before_files


@pytest.mark.parametrize("ext", [".jsonl", ".csv"])
@pytest.mark.parametrize("case", list(BAD))
def test_bad_file_raises_and_changes_nothing(tmp_path, ext, case):
    pool = pool_file(tmp_path)
    todo = unlabelled_indices(pool)
    out = export_for_annotation(pool, todo, tmp_path / f"todo{ext}")
    rows = [{**r, "response": f"r{n}"} for n, r in enumerate(read_rows(out))]
    mutate, needles = BAD[case]
    write_rows(out, mutate(rows))
    if case == "no response column":
        needles = needles + (["line 1 (the header)"] if ext == ".csv" else ["row 1", "no 'response' field"])
    check_fails(tmp_path, pool.subset(todo), out, needles)
    if case == "missing rows":
        new, report = import_annotations(out, pool.subset(todo), require_all=False)
        assert len(new) == report.accepted == 1


def test_missing_rows_lists_ten_ids_and_a_count(tmp_path):
    pool = records_to_pool([{"prompt": f"p{i}"} for i in range(13)], labelled=False)
    out = export_for_annotation(pool, range(13), tmp_path / "todo.jsonl")
    write_rows(out, [{**r, "response": "x"} for r in read_rows(out)[:1]])
    msg = str(pytest.raises(DataError, import_annotations, out, pool).value)
    assert "12 of the 13" in msg and "and 2 more" in msg
    assert all(ex.prompt_id in msg for ex in pool.examples[1:11])
    assert pool.examples[12].prompt_id not in msg


def test_already_labelled_id(tmp_path):
    pool = pool_file(tmp_path)
    out = export_for_annotation(pool, [0, 1], tmp_path / "todo.jsonl")
    rows = [{**r, "response": "x"} for r in read_rows(out)]
    write_rows(out, labelled_id(rows, pool))
    check_fails(tmp_path, pool, out, ["row 2", "already labelled in the pool (row 3)"], require_all=False)


def test_malformed_json_line(tmp_path):
    pool = pool_file(tmp_path)
    out = export_for_annotation(pool, [0, 1], tmp_path / "todo.jsonl")
    lines = out.read_text(encoding="utf-8").splitlines()
    out.write_text(lines[0] + "\n" + lines[1][:-5] + "\n", encoding="utf-8")
    check_fails(tmp_path, pool, out, ["line 2 is not valid JSON"])
    out.write_text(lines[0] + "\n[1, 2]\n", encoding="utf-8")
    check_fails(tmp_path, pool, out, ["row 2", "expected an object"])


@pytest.mark.parametrize("ext", [".jsonl", ".csv"])
def test_non_utf8_and_bom(tmp_path, ext):
    pool = pool_file(tmp_path)
    todo = unlabelled_indices(pool)
    out = export_for_annotation(pool, todo, tmp_path / f"todo{ext}")
    write_rows(out, [{**r, "response": "caf\u00e9" if n == 1 else "ok"} for n, r in enumerate(read_rows(out))])
    good = out.read_bytes()
    out.write_bytes(good.replace("caf\u00e9".encode(), b"caf\xe9"))  # Latin-1, as an old spreadsheet saves
    line = "line 3" if ext == ".csv" else "line 2"  # the second record (CSV: after the header)
    check_fails(tmp_path, pool.subset(todo), out, [line, "not valid UTF-8"])
    out.write_bytes(b"\xef\xbb\xbf" + good)  # a BOM (Excel's "CSV UTF-8") is accepted
    new, _ = import_annotations(out, pool.subset(todo))
    assert [ex.response for ex in new] == ["ok", "caf\u00e9", "ok", "ok"]


def test_import_refusals(tmp_path):
    pool = pool_file(tmp_path)
    with pytest.raises(UserError, match=r"'\.xlsx'.*\.jsonl, \.ndjson, \.csv"):
        import_annotations(tmp_path / "todo.xlsx", pool)
    with pytest.raises(DataError, match="no such file"):
        import_annotations(tmp_path / "missing.csv", pool)
    (tmp_path / "empty.csv").write_text("llm_al_id,response\n", encoding="utf-8")
    check_fails(tmp_path, pool, tmp_path / "empty.csv", ["no rows"])


def test_merge_refusals():
    pool = records_to_pool([{"prompt": "a"}, {"prompt": "b"}], labelled=False)
    with pytest.raises(ValueError, match="has no response"):
        merge_labelled(pool, [pool.examples[0]])
    stray = records_to_pool([{"prompt": "z", "response": "Z"}]).examples
    with pytest.raises(DataError, match="match no unlabelled example"):
        merge_labelled(pool, stray)
    twice = [pool.examples[0].with_response("x", {}), pool.examples[0].with_response("y", {})]
    with pytest.raises(ValueError, match="two new examples"):
        merge_labelled(pool, twice)


def test_merge_drops_an_original_whose_answer_is_already_in_the_pool():
    pool = records_to_pool([{"prompt": "a"}, {"prompt": "a", "response": "A"}, {"prompt": "b"}], labelled=False)
    merged = merge_labelled(pool, [pool.examples[0].with_response("A", {"prompt": "a", "response": "A"})])
    assert merged.ids == pool.ids[1:] and merged.duplicates == [(1, 2)]
