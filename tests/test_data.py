"""Tests for llm_al.data.pool: shapes x formats, validation messages, write-back round trips, splits."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from llm_al.data.pool import (
    DEFAULT_TRANSLATION_TEMPLATE,
    Example,
    Pool,
    content_id,
    drop_overlap,
    load_pool,
    records_to_pool,
    split_pool,
)
from llm_al.errors import DataError, UserError
from llm_al.data.export import write_subset

SYS = {"role": "system", "content": "Be brief."}


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def bot(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


# shape -> (records, the messages of the first record, the pool's shape)
SHAPES = {
    "prompt_response": (
        [{"prompt": "Café ☕?", "response": "Oui.", "system": "Be brief."},
         {"prompt": "2+2?", "response": "4", "system": None},
         {"prompt": "Sky colour?", "response": "Blue", "system": None}],
        [SYS, user("Café ☕?"), bot("Oui.")], "prompt_response"),
    "completion": (
        [{"prompt": "Hi", "completion": "Hello"}, {"prompt": "Bye", "completion": "Ciao"},
         {"prompt": "Yes", "completion": "No"}],
        [user("Hi"), bot("Hello")], "prompt_response"),
    "alpaca": (
        [{"instruction": "Sum", "input": "2 3", "output": "5"},
         {"instruction": "Greet", "input": "", "output": "Hi"},
         {"instruction": "Negate", "input": "yes", "output": "no"}],
        [user("Sum\n\n2 3"), bot("5")], "alpaca"),
    "messages": (
        [{"messages": [SYS, user("Ünïcode?"), bot("Sí")]},
         {"messages": [user("a"), bot("b"), user("c"), bot("d")]},
         {"messages": [user("x"), bot("y")]}],
        [SYS, user("Ünïcode?"), bot("Sí")], "messages"),
    "sharegpt": (
        [{"conversations": [{"from": "human", "value": "Hey"}, {"from": "gpt", "value": "Yo"}]},
         {"conversations": [{"from": "system", "value": "S"}, {"from": "user", "value": "Q"},
                            {"from": "model", "value": "A"}]},
         {"conversations": [{"from": "human", "value": "1"}, {"from": "assistant", "value": "2"}]}],
        [user("Hey"), bot("Yo")], "sharegpt"),
    "source_target": (
        [{"source": "Hello", "target": "Bonjour", "source_lang": "en", "target_lang": "fr"},
         {"source": "Cat", "target": "Chat", "source_lang": "en", "target_lang": "fr"},
         {"source": "Dog", "target": "Chien", "source_lang": "en", "target_lang": "fr"}],
        [user("Translate this English text into French:\nHello"), bot("Bonjour")], "translation"),
    "wmt": (
        [{"translation": {"de": "Hallo", "en": "Hello"}}, {"translation": {"de": "Katze", "en": "Cat"}},
         {"translation": {"de": "Hund", "en": "Dog"}}],
        [user("Translate this German text into English:\nHallo"), bot("Hello")], "translation"),
}
FORMATS = ["jsonl", "json", "csv", "tsv", "parquet"]


def write_raw(path: Path, records: list[dict], fmt: str) -> Path:
    """Write records the way a user's tool would (independently of llm_al.data.pool)."""
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    elif fmt == "json":
        path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    elif fmt in ("csv", "tsv"):
        header = list(dict.fromkeys(k for r in records for k in r))
        with open(path, "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh, delimiter="\t" if fmt == "tsv" else ",")
            writer.writerow(header)
            for r in records:
                cells = [r.get(k) for k in header]
                writer.writerow(["" if v is None else v if isinstance(v, str) else json.dumps(v) for v in cells])
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), path)
    return path


def jsonl(tmp_path: Path, lines: list[str], name: str = "pool.jsonl") -> str:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def raises(spec_or_fn, *needles: str, **kw) -> str:
    """Assert a DataError whose message holds every needle; return the message."""
    with pytest.raises(DataError) as info:
        spec_or_fn() if callable(spec_or_fn) else load_pool(spec_or_fn, **kw)
    msg = str(info.value)
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    return msg


# ---------------------------------------------------------------- shapes x formats


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_each_shape_loads_from_each_format(tmp_path, shape, fmt):
    records, first, pool_shape = SHAPES[shape]
    path = write_raw(tmp_path / f"pool.{fmt}", records, fmt)
    pool = load_pool(str(path))
    assert (len(pool), pool.shape, pool.format, pool.path) == (3, pool_shape, fmt, str(path))
    assert list(pool.examples[0].messages) == first
    assert [ex.row for ex in pool.examples] == [1, 2, 3]
    assert pool.ids == records_to_pool(records).ids  # same content, same ids, whatever the format
    assert pool.examples[0].response == first[-1]["content"]


def test_example_properties_and_id():
    ex = records_to_pool([{"messages": [SYS, user("q1"), bot("a1"), user("q2"), bot("a2")]}]).examples[0]
    assert ex.prompt_messages == (SYS, user("q1"), bot("a1"), user("q2"))
    assert (ex.response, ex.text, ex.row) == ("a2", "q1\na1\nq2\na2", 1)
    blob = json.dumps(list(ex.messages), sort_keys=True, ensure_ascii=False)
    assert ex.id == hashlib.sha256(blob.encode()).hexdigest()[:16]
    assert isinstance(ex, Example) and hash(ex) == hash(ex.id)


def test_datasets_folder_dataset_and_datasetdict(tmp_path):
    import datasets

    records = SHAPES["alpaca"][0]
    datasets.Dataset.from_list(records).save_to_disk(str(tmp_path / "ds"))
    pool = load_pool(str(tmp_path / "ds"))
    assert (pool.format, pool.shape, len(pool)) == ("datasets", "alpaca", 3)
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(records),
                               "test": datasets.Dataset.from_list(records[:1])})
    dd.save_to_disk(str(tmp_path / "dd"))
    assert len(load_pool(str(tmp_path / "dd"))) == 3
    assert load_pool(str(tmp_path / "dd"), split="test").ids == pool.ids[:1]
    raises(str(tmp_path / "dd"), "no split 'dev'", "train", "test", split="dev")
    (tmp_path / "plain").mkdir()
    raises(str(tmp_path / "plain"), "plain", "not a dataset saved with save_to_disk")


def test_hub_id_failure_and_missing_file(tmp_path, monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    raises("nobody/nothing", "nobody/nothing", "neither a local file nor a reachable", "HF_DATASETS_OFFLINE")
    raises(str(tmp_path / "missing.jsonl"), "missing.jsonl", "no such file")


# ---------------------------------------------------------------- fields, translation, system prompt


def test_field_mapping():
    recs = [{"question": "Q1", "answer": "A1", "sys": "S"}, {"question": "Q2", "answer": "A2", "sys": None}]
    pool = records_to_pool(recs, fields={"prompt": "question", "response": "answer", "system": "sys"})
    assert pool.shape == "mapped"
    assert list(pool.examples[0].messages) == [{"role": "system", "content": "S"}, user("Q1"), bot("A1")]
    assert list(pool.examples[1].messages) == [user("Q2"), bot("A2")]
    alp = records_to_pool([{"task": "Do", "ctx": "this", "out": "done"}],
                          fields={"instruction": "task", "input": "ctx", "response": "out"})
    assert list(alp.examples[0].messages) == [user("Do\n\nthis"), bot("done")]
    chat = records_to_pool([{"chat": [user("u"), bot("b")]}], fields={"messages": "chat"})
    assert list(chat.examples[0].messages) == [user("u"), bot("b")]
    tr = records_to_pool([{"de_text": "Ja", "en_text": "Yes", "l": "de"}],
                         fields={"source": "de_text", "target": "en_text", "source_lang": "l"})
    assert tr.examples[0].messages[0]["content"] == "Translate this German text into the target language:\nJa"


def test_field_mapping_errors():
    raises(lambda: records_to_pool([{"q": "a", "a": "b"}], fields={"question": "q"}),
           "unknown role", "'question'", "prompt, response, system")
    recs = [{"q": "a", "a": "b"}, {"q": "c"}]
    raises(lambda: records_to_pool(recs, path="f.jsonl", fields={"prompt": "q", "response": "a"}),
           "f.jsonl, row 2", "column 'a'", "mapped to 'response'")


def test_translation_styles_language_names_and_template():
    pool = records_to_pool([{"translation": {"en": "Hi", "fr": "Salut"}}],
                           fields={"source_lang": "fr", "target_lang": "en"})
    assert list(pool.examples[0].messages) == [user("Translate this French text into English:\nSalut"), bot("Hi")]
    named = records_to_pool([{"source": "Qapla'", "target": "Success", "source_lang": "Klingon",
                              "target_lang": "en"}, {"source": "x", "target": "y"}],
                            translation_template="{source_lang}>{target_lang}: {source}")
    assert named.examples[0].messages[0]["content"] == "Klingon>English: Qapla'"
    assert named.examples[1].messages[0]["content"] == "the source language>the target language: x"
    assert "{source}" in DEFAULT_TRANSLATION_TEMPLATE
    raises(lambda: records_to_pool([{"source": "a", "target": "b"}], translation_template="{lang}"),
           "template", "{source_lang}")
    raises(lambda: records_to_pool([{"translation": {"en": "a", "fr": "b", "de": "c"}}], path="w.json"),
           "w.json, row 1", "en, fr, de")


def test_system_prompt_injection_keeps_ids():
    recs = SHAPES["completion"][0] + [{"prompt": "p", "completion": "c", "system": "Own."}]
    plain, injected = records_to_pool(recs), records_to_pool(recs, system_prompt="You translate.")
    assert plain.ids == injected.ids
    assert injected.examples[0].messages[0] == {"role": "system", "content": "You translate."}
    assert injected.examples[3].messages[0] == {"role": "system", "content": "Own."}  # not replaced
    assert injected.examples[0].text == plain.examples[0].text


def test_duplicates_are_dropped_and_reported():
    recs = [{"prompt": "a", "response": "b"}, {"prompt": "c", "response": "d"},
            {"prompt": "a", "response": "b", "extra": 1}, {"prompt": "c", "response": "d"}]
    pool = records_to_pool(recs)
    assert [ex.row for ex in pool.examples] == [1, 2]
    assert pool.duplicates == [(3, 1), (4, 2)]


# ---------------------------------------------------------------- bad input


def test_malformed_json_line(tmp_path):
    path = jsonl(tmp_path, ['{"prompt": "a", "response": "b"}', '{"prompt": "a",'])
    raises(path, path, "line 2", "not valid JSON")


def test_non_dict_row(tmp_path):
    path = jsonl(tmp_path, ['{"prompt": "a", "response": "b"}', "", '["prompt", "response"]'])
    raises(path, f"{path}, row 3", "expected a record", "list")


def test_missing_empty_and_non_text_fields(tmp_path):
    ok = '{"prompt": "a", "response": "b"}'
    path = jsonl(tmp_path, [ok, '{"prompt": "c"}'], "missing.jsonl")
    raises(path, f"{path}, row 2", "missing field 'response' or 'completion' or 'output'", "fields found: prompt")
    path = jsonl(tmp_path, [ok, '{"prompt": "  ", "response": "b"}'], "empty.jsonl")
    raises(path, f"{path}, row 2", "field 'prompt' is empty")
    path = jsonl(tmp_path, [ok, '{"prompt": 5, "response": "b"}'], "number.jsonl")
    raises(path, f"{path}, row 2", "field 'prompt' must be text", "int 5")


def test_missing_value_in_parquet_and_csv(tmp_path):
    recs = [{"prompt": "a", "response": "b"}, {"prompt": "c", "response": None}]
    for fmt in ("parquet", "csv"):
        path = str(write_raw(tmp_path / f"p.{fmt}", recs, fmt))
        raises(path, f"{path}, row 2", "missing field 'response'")


def test_bad_messages():
    def bad(messages, *needles):
        raises(lambda: records_to_pool([{"messages": messages}], path="m.jsonl"), "m.jsonl, row 1", *needles)

    bad([user("a"), user("b")], "last message", "assistant")
    bad([bot("a")], "no user message")
    bad([{"role": "robot", "content": "x"}, bot("b")], "'robot'", "system, user, assistant")
    bad([user("a"), {"role": "assistant", "content": ""}], "messages[2]", "non-empty text")
    bad([user("a"), SYS, bot("b")], "messages[2]", "system")
    bad("not json", "not valid JSON")
    bad([], "non-empty list")


def test_unknown_shape_lists_accepted_shapes():
    msg = raises(lambda: records_to_pool([{"q": "a", "a": "b"}], path="x.csv"), "x.csv, row 1", "fields found: q, a")
    assert "'messages'" in msg and "'instruction'" in msg and "fields" in msg


def test_unknown_extension_and_unreadable_files(tmp_path):
    (tmp_path / "pool.txt").write_text("prompt,response\n")
    raises(str(tmp_path / "pool.txt"), "pool.txt", "unknown format '.txt'", ".jsonl", ".parquet")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not parquet")
    raises(str(tmp_path / "bad.parquet"), "bad.parquet", "not a readable Parquet file")


def test_non_utf8_bytes(tmp_path):
    for name in ("bad.jsonl", "bad.csv"):
        path = tmp_path / name
        path.write_bytes(b'{"prompt": "a", "response": "b"}\n{"prompt": "caf\xe9", "response": "b"}\n')
        raises(str(path), str(path), "line 2", "not valid UTF-8")


def test_bom_accepted(tmp_path):
    (tmp_path / "bom.jsonl").write_bytes(b'\xef\xbb\xbf{"prompt": "a", "response": "b"}\n')
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbfprompt,response\r\na,b\r\n")
    (tmp_path / "bom.json").write_bytes(b'\xef\xbb\xbf[{"prompt": "a", "response": "b"}]')
    ids = {tuple(load_pool(str(tmp_path / n)).ids) for n in ("bom.jsonl", "bom.csv", "bom.json")}
    assert ids == {tuple(records_to_pool([{"prompt": "a", "response": "b"}]).ids)}


def test_empty_sources(tmp_path):
    for name, content in [("e.jsonl", "\n\n"), ("e.json", "[]"), ("e.csv", "prompt,response\n"), ("e2.json", "")]:
        (tmp_path / name).write_text(content)
        raises(str(tmp_path / name), name, "no examples")
    raises(lambda: records_to_pool([]), "no examples")


def test_json_variants(tmp_path):
    rec = {"prompt": "a", "response": "b"}
    (tmp_path / "wrapped.json").write_text(json.dumps({"version": 2, "data": [rec, rec]}))
    pool = load_pool(str(tmp_path / "wrapped.json"))
    assert (len(pool), pool.duplicates) == (1, [(2, 1)])
    (tmp_path / "lines.json").write_text(json.dumps(rec) + "\n" + json.dumps({"prompt": "c", "response": "d"}))
    assert load_pool(str(tmp_path / "lines.json")).format == "jsonl"
    (tmp_path / "two.json").write_text(json.dumps({"a": [rec], "b": [rec]}))
    raises(str(tmp_path / "two.json"), "two.json", "one list", "a, b")
    (tmp_path / "broken.json").write_text('[{"prompt": "a",\n "response": }]')
    raises(str(tmp_path / "broken.json"), "broken.json", "not valid JSON", "line 2")


def test_csv_row_with_too_many_cells(tmp_path):
    (tmp_path / "wide.csv").write_text("prompt,response\na,b\nc,d,e\n")
    raises(str(tmp_path / "wide.csv"), "wide.csv, row 2", "3 cells", "2 columns")


# ---------------------------------------------------------------- write_subset


OUTPUTS = {"jsonl": "sub.jsonl", "ndjson": "sub.ndjson", "json": "sub.json", "csv": "sub.csv",
           "tsv": "sub.tsv", "parquet": "sub.parquet", "datasets": "sub_ds"}


@pytest.mark.parametrize("out_name", list(OUTPUTS.values()), ids=list(OUTPUTS))
@pytest.mark.parametrize("shape", ["messages", "sharegpt", "wmt", "alpaca", "prompt_response"])
def test_write_subset_round_trips(tmp_path, shape, out_name):
    pool = records_to_pool(SHAPES[shape][0], system_prompt="ignored by ids")
    fmt = "datasets" if out_name == "sub_ds" else None
    columns = {"llm_al_id": [pool.ids[2], pool.ids[0]], "llm_al_score": np.array([0.5, -1.25], dtype=np.float32),
               "llm_al_rank": [1, 2]}
    out = write_subset(pool, [2, 0], str(tmp_path / out_name), columns=columns, format=fmt)
    back = load_pool(str(out))
    assert back.ids == [pool.ids[2], pool.ids[0]]
    assert back.shape == pool.shape
    assert back.examples[0].source["llm_al_id"] == pool.ids[2]
    assert float(back.examples[1].source["llm_al_score"]) == -1.25
    assert str(back.examples[0].source["llm_al_rank"]) == "1"
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_write_subset_keeps_non_ascii_and_format_rules(tmp_path):
    pool = load_pool(str(write_raw(tmp_path / "in.jsonl", SHAPES["prompt_response"][0], "jsonl")))
    out = write_subset(pool, [0], str(tmp_path / "out.jsonl"))
    assert "Café ☕?" in out.read_text(encoding="utf-8")
    no_ext = write_subset(pool, [1, 0], str(tmp_path / "subset"))  # the pool's own format
    assert [json.loads(line)["prompt"] for line in no_ext.read_text().splitlines()] == ["2+2?", "Café ☕?"]
    forced = write_subset(pool, [0], str(tmp_path / "forced.data"), format="csv")
    assert forced.read_text(encoding="utf-8").startswith("prompt,response,system")
    with pytest.raises(UserError, match=r"'\.txt'.*\.jsonl"):
        write_subset(pool, [0], str(tmp_path / "out.txt"))
    with pytest.raises(UserError, match="valid formats"):
        write_subset(pool, [0], str(tmp_path / "x.jsonl"), format="xml")
    with pytest.raises(UserError, match="no extension"):
        write_subset(records_to_pool(SHAPES["alpaca"][0]), [0], str(tmp_path / "memory_out"))


def test_write_subset_replaces_datasets_folder_only(tmp_path):
    pool = records_to_pool(SHAPES["alpaca"][0])
    out = tmp_path / "ds"
    write_subset(pool, [0, 1, 2], str(out), format="datasets")
    ds_pool = load_pool(str(out))
    write_subset(ds_pool, [1], str(out))  # no extension + datasets pool -> a folder, replaced
    assert load_pool(str(out)).ids == [pool.ids[1]]
    (tmp_path / "mine").mkdir()
    with pytest.raises(UserError, match="not a datasets folder"):
        write_subset(ds_pool, [0], str(tmp_path / "mine"))


# ---------------------------------------------------------------- split_pool, drop_overlap


def big_pool(n: int = 50) -> Pool:
    return records_to_pool([{"prompt": f"p{i}", "response": f"r{i}"} for i in range(n)])


def test_split_pool_is_seeded_and_sized():
    pool = big_pool()
    train, test = split_pool(pool, 10, seed=1)
    assert (len(train), len(test)) == (40, 10)
    assert set(train.ids).isdisjoint(test.ids) and set(train.ids) | set(test.ids) == set(pool.ids)
    assert split_pool(pool, 10, seed=1)[1].ids == test.ids
    assert split_pool(pool, 10, seed=2)[1].ids != test.ids
    assert len(split_pool(pool, 0.2, seed=0)[1]) == 10
    assert len(split_pool(pool, 0.001, seed=0)[1]) == 1
    assert [ex.row for ex in train.examples] == sorted(ex.row for ex in train.examples)
    assert train.duplicates == [] and train.format == pool.format


@pytest.mark.parametrize("bad", [0, 50, 60, 1.0, 1.5, -0.1, True, "3"])
def test_split_pool_rejects_bad_sizes(bad):
    with pytest.raises(DataError, match=r"test.?s|50 examples"):
        split_pool(big_pool(), bad, seed=0)


def test_drop_overlap():
    pool = big_pool(5)
    test = records_to_pool([pool.examples[1].source, pool.examples[3].source, {"prompt": "new", "response": "x"}],
                           system_prompt="Different system prompt, same ids")
    kept, removed = drop_overlap(pool, test)
    assert removed == 2 and len(kept) == 3
    assert kept.ids == [pool.ids[i] for i in (0, 2, 4)]
    assert drop_overlap(pool, records_to_pool([{"prompt": "z", "response": "z"}])) == (pool, 0)
    raises(lambda: drop_overlap(pool, pool), "all 5 examples")


def test_drop_overlap_removes_a_test_prompt_with_another_response():
    pool = records_to_pool([{"prompt": "Q1", "response": "A"}, {"prompt": "Q2", "response": "B"}])
    test = records_to_pool([{"prompt": "Q1", "response": "a different answer"}])
    kept, removed = drop_overlap(pool, test)
    assert removed == 1 and [ex.response for ex in kept.examples] == ["B"]


def test_subset_keeps_order_and_metadata():
    pool = big_pool(5)
    sub = pool.subset([4, np.int64(0)])
    assert sub.ids == [pool.ids[4], pool.ids[0]]
    assert (sub.path, sub.format, sub.shape, sub.duplicates) == (pool.path, pool.format, pool.shape, [])


# ---------------------------------------------------------------- unlabelled pools (labelled=False)


# shape -> (records without responses, the messages of the first record, a labelled twin of record 1)
UNLABELLED = {
    "prompt_response": ([{"prompt": "Café ☕?", "system": "Be brief."}, {"prompt": "2+2?", "response": ""}],
                        [SYS, user("Café ☕?")], {"prompt": "Café ☕?", "system": "Be brief.", "response": "Oui."}),
    "alpaca": ([{"instruction": "Sum", "input": "2 3"}, {"instruction": "Greet", "output": None}],
               [user("Sum\n\n2 3")], {"instruction": "Sum", "input": "2 3", "output": "5"}),
    "messages": ([{"messages": [SYS, user("a"), bot("b"), user("c")]}, {"messages": [user("x"), bot("")]}],
                 [SYS, user("a"), bot("b"), user("c")], {"messages": [SYS, user("a"), bot("b"), user("c"), bot("d")]}),
    "sharegpt": ([{"conversations": [{"from": "human", "value": "Hey"}]},
                  {"conversations": [{"from": "human", "value": "1"}, {"from": "gpt", "value": ""}]}],
                 [user("Hey")], {"conversations": [{"from": "human", "value": "Hey"}, {"from": "gpt", "value": "Yo"}]}),
    "translation": ([{"source": "Hello", "source_lang": "en", "target_lang": "fr"},
                     {"source": "Cat", "target": None, "source_lang": "en", "target_lang": "fr"}],
                    [user("Translate this English text into French:\nHello")],
                    {"source": "Hello", "target": "Bonjour", "source_lang": "en", "target_lang": "fr"}),
    "wmt": ([{"translation": {"de": "Hallo", "en": None}}, {"translation": {"de": "Katze", "en": ""}}],
            [user("Translate this German text into English:\nHallo")], {"translation": {"de": "Hallo", "en": "Hello"}}),
}


@pytest.mark.parametrize("shape", list(UNLABELLED))
def test_unlabelled_pool_in_each_shape(tmp_path, shape):
    records, first, twin = UNLABELLED[shape]
    pool = load_pool(str(write_raw(tmp_path / "pool.jsonl", records, "jsonl")), labelled=False)
    assert len(pool) == 2 and pool.shape == ("translation" if shape == "wmt" else shape)
    ex = pool.examples[0]
    assert list(ex.messages) == first and list(ex.prompt_messages) == first
    assert not ex.is_labelled and not pool.examples[1].is_labelled
    assert ex.id == ex.prompt_id == hashlib.sha256(
        json.dumps(first, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]
    labelled = records_to_pool([twin]).examples[0]
    assert labelled.is_labelled and labelled.prompt_id == ex.prompt_id and labelled.id != ex.id
    assert records_to_pool(records, labelled=False).ids == pool.ids
    with pytest.raises(DataError):  # the default still demands responses
        records_to_pool(records)


def test_unlabelled_prompt_only_csv(tmp_path):
    (tmp_path / "p.csv").write_text("prompt\nHi\nBye\n", encoding="utf-8")
    (tmp_path / "i.csv").write_text("instruction,input,output\nSum,2 3,\nGreet,,\n", encoding="utf-8")
    pool = load_pool(str(tmp_path / "p.csv"), labelled=False)
    assert (pool.shape, pool.format, [list(ex.messages) for ex in pool.examples]) == \
        ("prompt_response", "csv", [[user("Hi")], [user("Bye")]])
    alpaca = load_pool(str(tmp_path / "i.csv"), labelled=False)
    assert alpaca.shape == "alpaca" and list(alpaca.examples[0].messages) == [user("Sum\n\n2 3")]
    raises(str(tmp_path / "p.csv"), "p.csv, row 1", "cannot tell", "prompt")  # labelled by default


def test_mixed_pool_keeps_labelled_records():
    recs = [{"prompt": "a"}, {"prompt": "b", "response": "B"}, {"prompt": "a", "response": "A"}, {"prompt": "a"}]
    pool = records_to_pool(recs, labelled=False)
    assert [ex.is_labelled for ex in pool.examples] == [False, True, True]
    assert pool.duplicates == [(4, 1)]
    assert pool.examples[1].response == "B"
    assert pool.examples[0].prompt_id == pool.examples[2].prompt_id != pool.examples[1].prompt_id
    assert pool.ids == [content_id([user("a")]), content_id([user("b"), bot("B")]), content_id([user("a"), bot("A")])]


def test_unlabelled_response_raises_and_properties():
    ex = records_to_pool([{"messages": [user("q1"), bot("a1"), user("q2")]}], labelled=False).examples[0]
    with pytest.raises(ValueError, match=f"{ex.id}.*unlabelled"):
        _ = ex.response
    assert ex.prompt_messages == ex.messages and ex.text == "q1\na1\nq2"
    answered = ex.with_response("a2", {"k": 1})
    assert answered.is_labelled and answered.response == "a2" and answered.prompt_id == ex.prompt_id
    assert answered.id == records_to_pool([{"messages": [user("q1"), bot("a1"), user("q2"), bot("a2")]}]).ids[0]


def test_prompt_id_ignores_an_injected_system_prompt():
    plain = records_to_pool([{"prompt": "p"}], labelled=False).examples[0]
    injected = records_to_pool([{"prompt": "p"}], labelled=False, system_prompt="Sys").examples[0]
    assert injected.messages[0] == {"role": "system", "content": "Sys"} and injected.system_injected
    assert injected.id == injected.prompt_id == plain.id
    answered = injected.with_response("r", {})
    assert answered.id == records_to_pool([{"prompt": "p", "response": "r"}]).ids[0]
    assert records_to_pool([{"prompt": "p", "response": "r"}], system_prompt="Sys").examples[0].prompt_id == plain.id


def test_unlabelled_errors_still_name_row_and_field():
    def bad(recs, *needles, **kw):
        raises(lambda: records_to_pool(recs, path="u.jsonl", labelled=False, **kw), *needles)

    bad([{"prompt": "a"}, {"response": "b"}], "u.jsonl, row 2", "missing field 'prompt'")
    bad([{"prompt": "  "}], "u.jsonl, row 1", "field 'prompt' is empty")
    bad([{"messages": [user("a"), SYS]}], "row 1", "messages[2]", "system")
    bad([{"messages": [bot("")]}], "row 1", "messages[1]", "non-empty text")
    bad([{"translation": {"de": "Hallo"}}], "row 1", "source and target", "target may be empty")
    bad([{"question": "q"}], "row 1", "cannot tell", "fields found: question")
    mixed = records_to_pool([{"translation": {"de": "Hallo", "en": None}},
                             {"translation": {"de": "Ja", "en": "Yes", "fr": None}}], labelled=False)
    assert [ex.is_labelled for ex in mixed.examples] == [False, True]
    pool = records_to_pool([{"translation": {"de": "Hallo"}}], labelled=False, fields={"target_lang": "en"})
    assert list(pool.examples[0].messages) == [user("Translate this German text into English:\nHallo")]
    mapped = records_to_pool([{"q": "x"}], labelled=False, fields={"prompt": "q", "response": "a"})
    assert list(mapped.examples[0].messages) == [user("x")]
