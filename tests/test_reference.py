"""Tests for llm_al.data.reference: every source format gives the documents written into it and the same
index as the documents themselves, a changed shard changes the fingerprint, and every problem is a
`DataError` naming the file (and line or row). No network: the hub path is tried offline and
against a fake `datasets.load_dataset`."""

from __future__ import annotations

import gzip
import json
import os

import numpy as np
import pytest

from llm_al.data import reference
from llm_al.cli import main
from llm_al.errors import DataError, UserError
from llm_al.features.overlap import build_index
from llm_al.features.overlap_stats import example_overlap
from llm_al.data.reference import fingerprint_files, reference_texts, reference_units

NATO = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa"
PANGRAM = "Sphinx of black quartz, judge my vow: five boxing wizards jump quickly over the lazy dogs."
NOVEL = "zulu yankee xray whiskey victor uniform tango sierra romeo quebec"
DOCS = [NATO, PANGRAM, "Ünïcode words, too: naïve café"]
# 12 words: the first 8 of NATO then 4 novel ones, so 5 8-grams of which exactly 1 is in DOCS
PROBE = " ".join(NATO.split()[:8] + NOVEL.split()[:4])


def _jsonl(path, rows, compress=False):
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if compress:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _parquet(path, columns, row_group_size=1):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


def _saved_dataset(path, rows, split=None):
    import datasets

    ds = datasets.Dataset.from_list(rows)
    (datasets.DatasetDict({split: ds}) if split else ds).save_to_disk(str(path))
    return path


def _assert_same_index(spec, tmp_path, docs=DOCS, **kw):
    """The index of `spec` equals the index of the documents as a list, and finds PROBE's one 8-gram."""
    got = build_index(spec, tmp_path / "from-spec", **kw)
    want = build_index(list(docs), tmp_path / "from-list")
    assert np.array_equal(np.asarray(got.ngrams), np.asarray(want.ngrams))
    assert np.array_equal(np.asarray(got.vocab), np.asarray(want.vocab))
    assert got.meta["documents"] == len(docs) and got.meta["content_sha256"] == want.meta["content_sha256"]
    out = example_overlap(got, [PROBE, NOVEL])
    assert out["n_ngrams"].tolist() == [5, 3] and out["n_found"].tolist() == [1, 0]
    assert out["longest_match"].tolist() == [8, 0]
    return got


# ---------------------------------------------------------------- each format, with known overlap


def test_gzip_text_and_json_lines(tmp_path):
    txt = tmp_path / "ref.txt.gz"
    with gzip.open(txt, "wt", encoding="utf-8") as f:
        f.write("\n\n".join(DOCS) + "\n")
    assert [d.strip() for d in reference_texts(txt)] == DOCS
    _assert_same_index(txt, tmp_path / "txt", docs=[d + "\n" for d in DOCS])
    for name in ("ref.jsonl.gz", "ref.json.gz", "ref.ndjson.gz"):
        rows = _jsonl(tmp_path / name, [{"id": i, "body": d} for i, d in enumerate(DOCS)], compress=True)
        assert list(reference_texts(rows, "body")) == DOCS
    _assert_same_index(tmp_path / "ref.jsonl.gz", tmp_path / "jsonl", field="body")


def test_parquet_by_record_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(reference, "ROW_BATCH", 2)  # 4 rows in 4 row groups, read 2 at a time
    path = _parquet(tmp_path / "ref.parquet", {"title": ["a", "b", "c", "d"], "content": [*DOCS, None]})
    assert list(reference_texts(path, "content")) == [*DOCS, ""]  # a null text is an empty document
    _assert_same_index(path, tmp_path, docs=[*DOCS, ""], field="content")


def test_saved_dataset_folder_and_dataset_dict_split(tmp_path):
    rows = [{"text": d, "n": i} for i, d in enumerate(DOCS)]
    flat = _saved_dataset(tmp_path / "flat", rows)
    assert list(reference_texts(flat)) == DOCS
    _assert_same_index(flat, tmp_path / "i1")
    split = _saved_dataset(tmp_path / "dict", rows, split="validation")
    assert list(reference_texts(split, split="validation")) == DOCS
    with pytest.raises(DataError, match=r"dict: no split 'train'; splits: validation"):
        list(reference_texts(split))
    before = fingerprint_files([flat])
    list(reference_texts(flat))  # reading must not write cache files into the folder
    assert fingerprint_files([flat]) == before


def test_folder_of_mixed_shards_reads_in_sorted_path_order(tmp_path):
    root = tmp_path / "corpus"
    (root / "b").mkdir(parents=True)
    (root / "a.txt").write_text(DOCS[0] + "\n", encoding="utf-8")
    _jsonl(root / "b" / "part-1.jsonl.gz", [{"text": DOCS[1]}], compress=True)
    _parquet(root / "b" / "part-2.parquet", {"text": [DOCS[2]]})
    _saved_dataset(root / "c-saved", [{"text": "saved dataset shard"}])
    (root / "README").write_text("not a shard\n")
    (root / "notes.csv").write_text("a,b\n")
    (root / ".hidden.txt").write_text("hidden words\n")
    assert [k for k, _ in reference_units(root)] == ["text", "jsonl", "parquet", "datasets"]
    assert [d.strip() for d in reference_texts(root)] == [*DOCS, "saved dataset shard"]
    got = build_index(root, tmp_path / "idx")
    assert got.meta["documents"] == 4 and got.meta["fingerprint"] == fingerprint_files([root])
    assert example_overlap(got, [PROBE])["n_found"].tolist() == [1]


def test_a_corpus_folders_own_documents_and_json_metadata_are_not_read_as_text(tmp_path, caplog):
    """A folder of shards often carries a README.md, a LICENSE and a pretty-printed metadata.json:
    none is corpus text (the README would add n-grams, the metadata.json would fail as JSON Lines)."""
    root = tmp_path / "corpus"
    root.mkdir()
    (root / "a.txt").write_text(DOCS[0] + "\n", encoding="utf-8")
    (root / "part.json").write_text(json.dumps({"text": DOCS[1]}) + "\n", encoding="utf-8")   # JSON Lines
    (root / "README.md").write_text("# About this corpus\n\nnot a document\n", encoding="utf-8")
    (root / "LICENSE.txt").write_text("licence words\n", encoding="utf-8")
    (root / "metadata.json").write_text(json.dumps({"source": "x", "docs": 2}, indent=2), encoding="utf-8")
    with caplog.at_level("WARNING", logger="llm_al.data.reference"):
        units = reference_units(root)
    assert [p.name for _, p in units] == ["a.txt", "part.json"]
    assert [d.strip() for d in reference_texts(root)] == DOCS[:2]
    assert "README.md (the folder's own document)" in caplog.text and "metadata.json (JSON, not JSON Lines)" in caplog.text
    assert [p.name for _, p in reference_units(root / "README.md")] == ["README.md"]   # named on its own: read
    (root / "blank-first.json").write_text("\n" + json.dumps({"text": DOCS[2]}) + "\n", encoding="utf-8")
    (root / "long-first.json").write_text(json.dumps({"text": "word " * 300_000}) + "\n", encoding="utf-8")
    assert [p.name for _, p in reference_units(root)] == ["a.txt", "blank-first.json", "long-first.json", "part.json"]
    only_docs = tmp_path / "docs"
    only_docs.mkdir()
    (only_docs / "README.md").write_text("words\n", encoding="utf-8")
    with pytest.raises(DataError, match="holds no file a reference can be read from"):
        reference_units(only_docs)


def test_markdown_files_are_text(tmp_path):
    (tmp_path / "plays").mkdir()
    (tmp_path / "plays" / "hamlet.md").write_text("# Hamlet\n\nWho's there?\n", encoding="utf-8")
    assert list(reference_texts(tmp_path / "plays")) == ["# Hamlet\n", "Who's there?\n"]


def test_a_very_long_paragraph_is_cut_at_a_line_end(tmp_path, monkeypatch):
    monkeypatch.setattr(reference, "MAX_PARAGRAPH", 10)
    path = tmp_path / "long.txt"
    path.write_text("aaaa\nbbbb\ncccc\ndddd\n\neeee\n", encoding="utf-8")
    assert list(reference_texts(path)) == ["aaaa\nbbbb\n", "cccc\ndddd\n", "eeee\n"]  # cut at >= 10 chars


def test_reading_is_lazy(tmp_path):
    rows = tmp_path / "ref.jsonl.gz"
    with gzip.open(rows, "wt", encoding="utf-8") as f:
        f.write('{"text": "one"}\n{"text": "two"}\nnot json\n')
    it = reference_texts(rows)
    assert [next(it), next(it)] == ["one", "two"]  # the bad third line is not read yet
    with pytest.raises(DataError, match=r"ref\.jsonl\.gz: line 3 is not valid JSON"):
        next(it)


# ---------------------------------------------------------------- fingerprints and reuse


def test_a_changed_shard_rebuilds_and_an_unchanged_corpus_reuses(tmp_path):
    root = tmp_path / "corpus"
    root.mkdir()
    (root / "a.txt").write_text(NATO + "\n", encoding="utf-8")
    _jsonl(root / "b.jsonl.gz", [{"text": PANGRAM}], compress=True)
    out = tmp_path / "idx"
    first = build_index(root, out)
    os.utime(out / "ngrams.npy", (1, 1))  # an old mtime marks the file: a rebuild rewrites it
    build_index(root, out)
    assert (out / "ngrams.npy").stat().st_mtime == 1  # reused
    _jsonl(root / "b.jsonl.gz", [{"text": PANGRAM}, {"text": NOVEL}], compress=True)  # the shard changed
    again = build_index(root, out)
    assert again.meta["fingerprint"] != first.meta["fingerprint"] and again.meta["documents"] == 3
    assert example_overlap(again, [NOVEL])["ngram_overlap"].tolist() == [1.0]
    fp = fingerprint_files([root])
    (root / "c.parquet").write_bytes((tmp_path / "idx" / "meta.json").read_bytes())  # a new shard
    assert fingerprint_files([root]) != fp
    (root / "c.parquet").unlink()
    (root / "skipped.csv").write_text("x\n")  # a file that is not read does not matter
    assert fingerprint_files([root]) == fp


def test_the_field_and_split_are_part_of_the_fingerprint(tmp_path):
    rows = _jsonl(tmp_path / "r.jsonl", [{"text": "a", "body": "b"}])
    assert fingerprint_files([rows]) != fingerprint_files([rows], "body")
    txt = tmp_path / "r.txt"
    txt.write_text("plain\n")
    assert fingerprint_files([txt]) == fingerprint_files([txt], "body")  # no field in plain text
    saved = _saved_dataset(tmp_path / "saved", [{"text": "x"}], split="train")
    assert fingerprint_files([saved]) != fingerprint_files([saved], split="test")


# ---------------------------------------------------------------- clear errors


def test_empty_corpora_name_the_reference(tmp_path):
    empty = _jsonl(tmp_path / "empty.jsonl.gz", [], compress=True)
    with pytest.raises(UserError, match=r"empty\.jsonl\.gz is empty: 0 documents"):
        build_index(empty, tmp_path / "idx")
    blank = _parquet(tmp_path / "blank.parquet", {"text": ["", None, "  "]})
    with pytest.raises(UserError, match=r"blank\.parquet is empty: 3 documents"):
        build_index(blank, tmp_path / "idx")
    (tmp_path / "plays").mkdir()
    (tmp_path / "plays" / "data.bin").write_bytes(b"\0")
    (tmp_path / "plays" / "x.csv").write_text("a\n")
    with pytest.raises(DataError, match=r"plays: the folder holds no file a reference can be read from "
                                        r"\(found: (\.bin \(1\), \.csv \(1\)|\.csv \(1\), \.bin \(1\))\)"):
        reference_texts(tmp_path / "plays")
    assert not (tmp_path / "idx").exists()


def test_unreadable_gzip_names_the_file_and_line(tmp_path):
    fake = tmp_path / "plain.jsonl.gz"
    fake.write_text('{"text": "not compressed"}\n')
    with pytest.raises(DataError, match=r"plain\.jsonl\.gz: not a readable gzip file \(Not a gzipped file"):
        list(reference_texts(fake))
    good = gzip.compress(("\n".join(f"line {i} of text" for i in range(5000)) + "\n").encode())
    cut = tmp_path / "cut.txt.gz"
    cut.write_bytes(good[: len(good) // 2])  # truncated mid-stream
    with pytest.raises(DataError, match=r"cut\.txt\.gz: not a readable gzip file after line \d+"):
        list(reference_texts(cut))
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(DataError, match=r"binary\.txt: line 1 is not valid UTF-8 text \(is it a binary"):
        list(reference_texts(binary))


def test_missing_field_lists_what_was_found(tmp_path):
    rows = _jsonl(tmp_path / "r.jsonl.gz", [{"text": "ok"}, {"body": "x", "id": 2}], compress=True)
    with pytest.raises(DataError, match=r"r\.jsonl\.gz: line 2 has no field 'text' \(found: body, id\); "
                                        r"name the text field with --reference-field"):
        list(reference_texts(rows))
    pq = _parquet(tmp_path / "p.parquet", {"title": ["t"], "content": ["c"]})
    with pytest.raises(DataError, match=r"p\.parquet: no column 'text' \(columns: title, content\)"):
        list(reference_texts(pq))
    with pytest.raises(DataError, match=r"p\.parquet: column 'title' holds int64, not text"):
        list(reference_texts(_parquet(tmp_path / "p.parquet", {"title": [1]}), "title"))
    saved = _saved_dataset(tmp_path / "saved", [{"content": "c", "id": 1}])
    with pytest.raises(DataError, match=r"saved: no column 'text' \(columns: content, id\)"):
        list(reference_texts(saved))
    bad = _jsonl(tmp_path / "bad.jsonl", [{"text": "ok"}, {"text": ["a", "list"]}])
    with pytest.raises(DataError, match=r"bad\.jsonl: line 2: field 'text' must be text, got list"):
        list(reference_texts(bad))


def test_formats_that_are_not_streamed_say_what_to_do(tmp_path):
    for name, msg in (("t.csv", r"\.csv is not a reference format; write the text column as \.jsonl or \.parquet"),
                      ("t.txt.bz2", r"only gzip \(\.gz\) compression is read")):
        (tmp_path / name).write_text("x\n")
        with pytest.raises(DataError, match=name.replace(".", r"\.") + ": " + msg):
            reference_texts(tmp_path / name)
    arr = tmp_path / "arr.json"
    arr.write_text('[{"text": "a"},\n {"text": "b"}]\n')
    with pytest.raises(DataError, match=r"arr\.json: line 1 is not valid JSON.*a JSON array cannot be streamed"):
        list(reference_texts(arr))


def test_offline_hub_id_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match=r"owner/corpus: not a local file or folder, and as a Hugging Face hub "
                                        r"dataset id it cannot be read: hub access is off \(HF_HUB_OFFLINE=1\).*"
                                        r"save_to_disk\('DIR'\)"):
        reference_texts("owner/corpus")
    with pytest.raises(DataError, match="hub access is off"):
        fingerprint_files(["owner/corpus"])
    with pytest.raises(DataError, match="hub access is off"):
        build_index("owner/corpus", tmp_path / "idx")
    with pytest.raises(DataError, match=r"corpus/part\.jsonl\.gz: no such file or folder"):
        reference_texts("corpus/part.jsonl.gz")  # a missing file in a folder, not a hub id


def test_hub_id_streams_rows_when_online(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, split, streaming):
        calls.append((name, split, streaming))
        return iter([{"text": DOCS[0]}, {"text": None}, {"body": "no text"}])

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    it = reference_texts("owner/corpus", split="validation")
    assert calls == [("owner/corpus", "validation", True)]
    assert [next(it), next(it)] == [DOCS[0], ""]
    with pytest.raises(DataError, match=r"owner/corpus, row 3: no column 'text' \(columns: body\)"):
        next(it)

    def unreachable(*args, **kwargs):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(DataError, match=r"cannot be read: ConnectionError: no route to host\. On a machine"):
        reference_texts("owner/corpus")


# ---------------------------------------------------------------- the command line


def test_overlap_command_with_a_parquet_reference_and_its_field(tmp_path, cache_dir, capsys):
    ref = _parquet(tmp_path / "ref.parquet", {"title": ["nato", "pangram"], "content": DOCS[:2]})
    pool = _jsonl(tmp_path / "pool.jsonl", [{"prompt": PROBE, "response": "ok"}, {"prompt": NOVEL, "response": "no"}])
    args = ["overlap", str(pool), "--reference", str(ref), "--no-similarity"]
    assert main(args) == 2
    assert "no column 'text' (columns: title, content)" in capsys.readouterr().err
    out = tmp_path / "per.jsonl"
    assert main([*args, "--reference-field", "content", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "indexing the reference" in printed and "2 documents" in printed and "index built in" in printed
    per = [json.loads(line) for line in out.read_text().splitlines()]
    # PROBE + "ok": 13 words, 6 8-grams, 1 in the reference
    assert per[0]["llm_al_ngram_overlap"] == pytest.approx(1 / 6, abs=1e-6) and per[0]["llm_al_longest_match"] == 8
    assert main([*args, "--reference-field", "content"]) == 0
    printed = capsys.readouterr().out
    assert "indexing" not in printed and "index reused" in printed
