"""Property-based fuzzing of every pool loader (llm_al.data.pool) and of annotation import.

Inputs are records of every accepted shape, then damaged: wrong types, missing and empty fields,
unhashable roles, huge cells, deep nesting, huge integers, lone surrogates, non-UTF-8 bytes,
BOMs, NULs, truncation, a line of another format, duplicated rows, an explicit --field mapping,
labelled and unlabelled loading. The property: a correct pool, or a `UserError` whose message
names the file (and the row when one record is at fault); never another exception; and a
rejected `annotate import` leaves no --out file. Derandomized (the same inputs every run) and
without an example database, so CI is deterministic and writes nothing to the repository.
FUZZ_INPUTS is the number of inputs one run of this file tries (the README figure).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_al.data.annotate import export_for_annotation, import_annotations
from llm_al.cli import main
from llm_al.data.pool import ROLES, load_pool
from llm_al.data.formats import read_rows
from llm_al.errors import DataError, UserError

LOADER_EXAMPLES = 400
ANNOTATE_EXAMPLES = 150
FUZZ_INPUTS = LOADER_EXAMPLES + 2 * ANNOTATE_EXAMPLES
FUZZ = settings(max_examples=LOADER_EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
FUZZ_IMPORT = settings(FUZZ, max_examples=ANNOTATE_EXAMPLES)
TRIED: dict[str, int] = {}

FIELDS = ["messages", "conversations", "instruction", "input", "output", "prompt", "response", "completion",
          "translation", "source", "target", "source_lang", "target_lang", "system", "question", "answer", ""]
ROLE_VALUES = ["user", "assistant", "system", "human", "gpt", "model", "bot", None, 3, ["user"], {"r": 1}]

# ---------------------------------------------------------------- strategies

text = st.one_of(st.text(max_size=12), st.sampled_from(["", "   ", "=1+2", "-x", "@a", "'=b", "\u2028", "a\r\nb",
                                                         "\x00", "{source}", "é☕", '"q",x']))
leaf = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True), text)
value = st.recursive(leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
                     max_leaves=5)
turn = st.fixed_dictionaries({}, optional={"role": st.sampled_from(ROLE_VALUES), "content": st.one_of(text, leaf),
                                           "from": st.sampled_from(ROLE_VALUES), "value": text})
good_turns = st.lists(st.tuples(st.sampled_from(["user", "assistant"]), st.text(min_size=1, max_size=8)),
                      min_size=1, max_size=4).map(lambda ts: [{"role": r, "content": c} for r, c in ts])
hostile_turns = st.lists(st.fixed_dictionaries({"role": st.sampled_from(ROLE_VALUES), "content": st.one_of(text, leaf)}),
                         min_size=1, max_size=3)
shaped = st.one_of(
    st.fixed_dictionaries({"messages": st.one_of(good_turns, st.lists(turn, max_size=4), value)}),
    st.fixed_dictionaries({"messages": hostile_turns}),
    st.fixed_dictionaries({"conversations": st.lists(turn, max_size=4)}),
    st.fixed_dictionaries({"instruction": text, "output": text}, optional={"input": text, "system": text}),
    st.fixed_dictionaries({"prompt": text}, optional={"response": text, "completion": leaf}),
    st.fixed_dictionaries({"translation": st.one_of(st.dictionaries(st.sampled_from(["en", "fr", "de", ""]),
                                                                    st.one_of(text, leaf), max_size=3), value)}),
    st.fixed_dictionaries({"source": text}, optional={"target": text, "source_lang": text, "target_lang": leaf}),
)
record = st.one_of(shaped, st.dictionaries(st.sampled_from(FIELDS), value, max_size=5), leaf)
word = st.text(min_size=1, max_size=12).filter(str.strip)
valid = st.one_of(                                   # records that must load (one shape per file)
    st.lists(st.fixed_dictionaries({"messages": good_turns.filter(lambda t: t[-1]["role"] == "assistant"
                                                                  and any(m["role"] == "user" for m in t)
                                                                  and all(m["content"].strip() for m in t))}),
             min_size=1, max_size=5),
    st.lists(st.fixed_dictionaries({"instruction": word, "output": word}, optional={"input": word}), min_size=1,
             max_size=5),
    st.lists(st.fixed_dictionaries({"prompt": word, "response": word}, optional={"system": word}), min_size=1,
             max_size=5),
    st.lists(st.fixed_dictionaries({"source": word, "target": word}, optional={"source_lang": st.just("en")}),
             min_size=1, max_size=5),
)


@st.composite
def records(draw) -> list:
    """Records of one shape mostly (as real files are), some damaged, some duplicated."""
    first = draw(shaped)
    rest = draw(st.lists(st.one_of(shaped, record, st.just(first)), max_size=5))
    recs = [first, *rest]
    for _ in range(draw(st.integers(0, 2))):                  # damage a field
        i = draw(st.integers(0, len(recs) - 1))
        if isinstance(recs[i], dict) and recs[i]:
            key = draw(st.sampled_from(sorted(recs[i])))
            recs[i] = {**recs[i], key: draw(value)}
    if draw(st.integers(0, 9)) == 0:                          # one huge row
        recs.append({**first, **{k: "x" * 1_000_000 for k in first if isinstance(first[k], str)}})
    return recs


def _cell(v) -> str:
    return "" if v is None else v if isinstance(v, str) else json.dumps(v)


def serialize(recs: list, fmt: str) -> bytes:
    """The records as a user's tool would write them."""
    if fmt == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs).encode("utf-8", "surrogatepass")
    if fmt == "json":
        return json.dumps(recs, ensure_ascii=False).encode("utf-8", "surrogatepass")
    if fmt in ("csv", "tsv"):
        dicts = [r if isinstance(r, dict) else {"value": r} for r in recs]
        header = list(dict.fromkeys(k for r in dicts for k in r))
        buf = io.StringIO(newline="")
        writer = csv.writer(buf, delimiter="\t" if fmt == "tsv" else ",")
        writer.writerow(header)
        writer.writerows([_cell(r.get(k)) for k in header] for r in dicts)
        return buf.getvalue().encode("utf-8", "surrogatepass")
    import pyarrow as pa
    import pyarrow.parquet as pq

    dicts = [r if isinstance(r, dict) else {"value": r} for r in recs]
    buf = io.BytesIO()
    try:
        pq.write_table(pa.Table.from_pylist(dicts), buf)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):   # mixed types: as text columns
        cols = list(dict.fromkeys(k for r in dicts for k in r))
        buf = io.BytesIO()
        pq.write_table(pa.table({c: pa.array([None if r.get(c) is None else _cell(r.get(c)) for r in dicts],
                                             pa.string()) for c in cols}), buf)
    return buf.getvalue()


INSERTS = [b"\xff", b"\xc3", b"\x00", b"\xef\xbb\xbf", b"\r", b"\n", b'"', b",", b"\t", b"{", b"]",
           b'{"prompt": "\\ud800", "response": "lone surrogate"}\n', b'{"prompt": 1' + b"0" * 5000 + b"}\n",
           b"[" * 50_000 + b"\n", b"prompt,response\nq,a\n", b'"messages"\n"[[[[' + b"[" * 50_000 + b'"\n']


@st.composite
def damaged_bytes(draw, data: bytes) -> bytes:
    """Byte-level damage: a BOM, inserted bytes (invalid UTF-8, NUL, another format's line, deep
    nesting, a huge integer, an escaped lone surrogate), or a truncation."""
    if draw(st.booleans()):
        return data
    if draw(st.booleans()):
        data = b"\xef\xbb\xbf" + data
    for _ in range(draw(st.integers(0, 2))):
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from(INSERTS)) + data[at:]
    if draw(st.integers(0, 3)) == 0:
        data = data[: draw(st.integers(0, len(data)))]
    return data


fields_option = st.one_of(st.none(), st.dictionaries(st.sampled_from([*ROLES, "bogus"]),
                                                     st.one_of(st.sampled_from(FIELDS), leaf), max_size=2))

# ---------------------------------------------------------------- the property


def check_loader_outcome(path: Path, blob: bytes | None = None, **kw) -> str:
    """Load `path` (written from `blob` if given); on success check the pool's invariants, on
    failure the error's message. Any exception that is not a UserError escapes (and fails the
    test). Returns 'ok' or 'error'."""
    if blob is not None:
        path.write_bytes(blob)
    try:
        raw, _ = read_rows(str(path))
    except UserError as err:
        raw = None
        assert str(path) in str(err), str(err)
    try:
        pool = load_pool(str(path), **kw)
    except UserError as err:
        msg = str(err)
        options_ok = kw.get("fields") is None or (isinstance(kw["fields"], dict) and all(
            r in ROLES and isinstance(c, str) and c for r, c in kw["fields"].items()))
        assert str(path) in msg, f"the message does not name the file: {msg!r}"
        assert len(msg) > len(str(path)) + 5, msg                           # and says what is wrong
        if isinstance(err, DataError) and err.row is not None:
            assert f"row {err.row}" in msg, msg
        if raw and options_ok:                                              # a record is at fault: its row
            assert isinstance(err, DataError) and err.row is not None, msg
        return "error"
    assert raw is not None and len(pool) >= 1
    assert len(set(pool.ids)) == len(pool.ids)
    rows = {r for r, _ in raw}
    for ex in pool.examples:
        assert ex.row in rows
        assert all(m["role"] in ("system", "user", "assistant") and isinstance(m["content"], str)
                   and m["content"].strip() for m in ex.messages)
        assert ex.messages[-1]["role"] in ("user", "assistant")
        assert ex.is_labelled or not kw.get("labelled", True)
        json.dumps(list(ex.messages), ensure_ascii=False).encode("utf-8")   # writable back as UTF-8
    return "ok"


@pytest.fixture(scope="module")
def scratch():
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


@FUZZ
@given(recs=records(), fmt=st.sampled_from(["jsonl", "json", "csv", "tsv", "parquet"]),
       ext=st.sampled_from(["same", "same", "same", ".jsonl", ".csv", ".json"]), data=st.data(),
       fields=fields_option, labelled=st.booleans(), system_prompt=st.one_of(st.none(), text))
def test_fuzz_loaders(scratch, recs, fmt, ext, data, fields, labelled, system_prompt):
    clean = data.draw(st.booleans())                  # half the inputs are well-formed files
    if clean:
        recs, ext, fields = data.draw(valid), "same", None
        system_prompt = data.draw(st.one_of(st.none(), word))
    blob = serialize(recs, fmt)
    if clean:
        outcome = check_loader_outcome(scratch.joinpath(f"clean.{fmt}"), blob=blob, labelled=labelled,
                                       system_prompt=system_prompt)
        assert outcome == "ok"
        TRIED[outcome] = TRIED.get(outcome, 0) + 1
        return
    if fmt != "parquet":
        blob = data.draw(damaged_bytes(blob))
    elif data.draw(st.integers(0, 4)) == 0:                                 # a truncated parquet file
        blob = blob[: data.draw(st.integers(0, len(blob)))]
    path = scratch / f"pool{'.' + fmt if ext == 'same' else ext}"
    path.write_bytes(blob)
    outcome = check_loader_outcome(path, fields=fields, labelled=labelled, system_prompt=system_prompt)
    TRIED[outcome] = TRIED.get(outcome, 0) + 1


@pytest.mark.parametrize("labelled", [True, False])
@pytest.mark.parametrize("role", [["user"], {"r": 1}, 3, None])
def test_unhashable_and_odd_chat_roles(scratch, role, labelled):
    """Found by hand while reviewing the fuzzer (a list role raised TypeError); the generator
    reaches it only rarely, so it is pinned here."""
    for recs in ([{"messages": [{"role": role, "content": "x"}, {"role": "assistant", "content": "y"}]}],
                 [{"messages": [{"role": "user", "content": "x"}, {"role": role, "content": ""}]}]):
        assert check_loader_outcome(scratch / "roles.jsonl", blob=serialize(recs, "jsonl"), labelled=labelled) == "error"


# ---------------------------------------------------------------- annotation import

PROMPTS = [{"prompt": "=SUM(A1:A2)"}, {"prompt": "Why?", "system": "Be brief."}, {"prompt": "Sky?"},
           {"prompt": "Line\nbreak, \"quoted\""}]


@pytest.fixture(scope="module")
def annotate_setup(scratch):
    pool_path = scratch / "prompts.jsonl"
    pool_path.write_text("".join(json.dumps(r) + "\n" for r in PROMPTS), encoding="utf-8")
    pool = load_pool(str(pool_path), labelled=False)
    out = {}
    for ext in (".csv", ".jsonl"):
        path = export_for_annotation(pool, range(len(pool)), scratch / f"export{ext}", drafts=["-1", None, "@x", ""])
        out[ext] = read_rows(str(path))[0]
    return pool_path, pool, out


@st.composite
def filled_rows(draw, exported: list[tuple[int, dict]]) -> list:
    """The exported rows as an annotator might return them: filled, emptied, retyped, dropped,
    duplicated, with ids changed or columns removed."""
    rows = [dict(rec) for _, rec in exported]
    clean = draw(st.booleans())                       # half the files are filled in properly
    for rec in rows:
        rec["response"] = draw(word if clean else st.one_of(word, text, leaf))
    for _ in range(0 if clean else draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["drop_row", "dup_row", "bad_id", "drop_col", "retype", "huge", "not_dict"]))
        i = draw(st.integers(0, len(rows) - 1))
        if kind == "drop_row" and len(rows) > 1:
            rows.pop(i)
        elif kind == "dup_row":
            rows.append(dict(rows[i]) if isinstance(rows[i], dict) else rows[i])
        elif not isinstance(rows[i], dict):
            continue
        elif kind == "bad_id":
            rows[i]["llm_al_id"] = draw(st.one_of(text, leaf))
        elif kind == "drop_col":
            rows[i].pop(draw(st.sampled_from(sorted(rows[i]))), None)
        elif kind == "retype":
            rows[i][draw(st.sampled_from(sorted(rows[i])))] = draw(value)
        elif kind == "huge":
            rows[i]["response"] = "y" * 1_000_000
        else:
            rows[i] = draw(leaf)
    return rows


@FUZZ_IMPORT
@given(data=st.data(), fmt=st.sampled_from([".csv", ".jsonl"]), out_ext=st.sampled_from([".jsonl", ".csv"]),
       manifest=st.sampled_from([None, "ok", "corrupt", "not-a-list"]))
def test_fuzz_annotate_import_cli(scratch, annotate_setup, data, fmt, out_ext, manifest):
    """`llm-al annotate import` on a damaged file: exit 0 with a loadable file of the labelled
    examples, or exit 2 with a message naming the file and no --out file."""
    pool_path, pool, exported = annotate_setup
    rows = data.draw(filled_rows(exported[fmt]))
    blob = data.draw(damaged_bytes(serialize(rows, fmt.lstrip("."))))
    filled = scratch / f"filled{fmt}"
    filled.write_bytes(blob)
    ids = Path(str(filled) + ".ids.json")
    ids.unlink(missing_ok=True)
    if manifest == "ok":
        ids.write_text(json.dumps([ex.prompt_id for ex in pool.examples]))
    elif manifest == "corrupt":
        ids.write_bytes(blob[:40])
    elif manifest == "not-a-list":
        ids.write_text("7")
    out = scratch / f"merged{out_ext}"
    out.unlink(missing_ok=True)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(["annotate", "import", str(filled), "--pool", str(pool_path), "--out", str(out)])
    if rc == 0:
        merged = load_pool(str(out), labelled=False)
        assert 1 <= len(merged) <= len(pool) and all(ex.is_labelled for ex in merged.examples)
        TRIED["import ok"] = TRIED.get("import ok", 0) + 1
    else:
        assert rc == 2, err.getvalue()
        assert not out.exists(), "a rejected import left an output file"
        assert str(filled) in err.getvalue() or str(ids) in err.getvalue(), err.getvalue()
        TRIED["import error"] = TRIED.get("import error", 0) + 1


@FUZZ_IMPORT
@given(data=st.data(), fmt=st.sampled_from([".csv", ".jsonl"]), require_all=st.booleans())
def test_fuzz_import_annotations(scratch, annotate_setup, data, fmt, require_all):
    """The library call: a list of labelled examples, or a UserError naming the file (and row)."""
    _, pool, exported = annotate_setup
    rows = data.draw(filled_rows(exported[fmt]))
    filled = scratch / f"direct{fmt}"
    filled.write_bytes(data.draw(damaged_bytes(serialize(rows, fmt.lstrip(".")))))
    try:
        examples, report = import_annotations(filled, pool, require_all=require_all)
    except UserError as err:
        assert str(filled) in str(err), str(err)
        if isinstance(err, DataError) and err.row is not None:
            assert f"row {err.row}" in str(err)
        return
    assert report.accepted == len(examples) >= 1
    assert all(ex.is_labelled and ex.response.strip() for ex in examples)
    assert len({ex.prompt_id for ex in examples}) == len(examples)


def test_fuzzers_tried_both_outcomes():
    """The generators reach both sides of the property (runs after the fuzzers in file order)."""
    if not TRIED:
        pytest.skip("run with the fuzz tests above")
    print(f"fuzz outcomes: {TRIED}")
    assert TRIED.get("ok", 0) >= LOADER_EXAMPLES // 10 and TRIED.get("error", 0) >= LOADER_EXAMPLES // 10, TRIED
    assert TRIED.get("ok", 0) + TRIED.get("error", 0) >= LOADER_EXAMPLES, TRIED
    assert TRIED.get("import ok", 0) >= ANNOTATE_EXAMPLES // 10 and TRIED.get("import error", 0) >= ANNOTATE_EXAMPLES // 10
