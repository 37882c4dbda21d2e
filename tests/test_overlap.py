"""Tests for llm_al.features.overlap: hand-built references with known answers, the chunked build against a
brute-force set of n-grams, reuse by fingerprint, error messages, and hash stability."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from llm_al.features.dsir import hashed_ngram_features, importance_kl, log_importance
from llm_al.errors import UnknownNameError, UserError
from llm_al.features.overlap import (NgramIndex, _merge_runs, build_index, fingerprint_files, ngram_hashes, reference_texts, word_hashes, words)
from llm_al.features.overlap_stats import example_overlap, subset_overlap, test_overlap

NATO = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa"
REF = [NATO, "Sphinx of black quartz, judge my vow: five boxing wizards jump quickly over the lazy dogs."]
NOVEL = "zulu yankee xray whiskey victor uniform tango sierra romeo quebec"  # no word of it in REF


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> NgramIndex:
    return build_index(REF, tmp_path_factory.mktemp("idx") / "ref", n=8)


# ---------------------------------------------------------------- brute force, in plain Python


def _py_word_hash(word: str) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")


def _py_ngram_hash(hashes: list[int], n: int) -> int:
    """The documented hash spec, one n-gram at a time with Python ints: polynomial, then splitmix64."""
    mask, z = (1 << 64) - 1, 0
    for h in hashes[:n]:
        z = (z * 0x9E3779B97F4A7C15 + h) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


def _brute_force_ngrams(texts: list[str], n: int) -> np.ndarray:
    grams = set()
    for text in texts:
        hs = [_py_word_hash(w) for w in words(text)]
        grams.update(_py_ngram_hash(hs[i : i + n], n) for i in range(len(hs) - n + 1))
    return np.array(sorted(grams), dtype=np.uint64)


# ---------------------------------------------------------------- tokens and hashes


def test_words_are_lowercased_unicode_tokens():
    assert words("Don't stop, Zoë! 42 naïve_x") == ["don", "t", "stop", "zoë", "42", "naïve_x"]


def test_vectorised_hashes_match_the_python_spec():
    toks = words(NATO)
    wh = word_hashes(toks)
    assert wh.tolist() == [_py_word_hash(t) for t in toks]
    for n in (1, 2, 8, 16):
        expect = [_py_ngram_hash(wh.tolist()[i : i + n], n) for i in range(len(toks) - n + 1)]
        assert ngram_hashes(wh, n).tolist() == expect
    assert len(ngram_hashes(wh, 17)) == 0


def test_hashes_are_stable_across_processes():
    code = ("import json; from llm_al.features.overlap import word_hashes, ngram_hashes, words; "
            f"h = word_hashes(words({NATO!r})); print(json.dumps(ngram_hashes(h, 3).tolist()))")
    ours = ngram_hashes(word_hashes(words(NATO)), 3).tolist()
    for seed in ("1", "2"):  # a different str hash seed in each: Python's hash() would differ
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert json.loads(out.stdout) == ours
    # golden values: an index on disk is only valid while these stay the same
    assert int(word_hashes(["hello"])[0]) == 0x7D34E501A8EDB6A7
    assert int(ngram_hashes(word_hashes(words("The quick brown fox")), 4)[0]) == 0x4B0A2F0874C18E2E


# ---------------------------------------------------------------- per-example overlap, known answers


def test_verbatim_copy_overlaps_fully(index):
    out = example_overlap(index, [NATO.upper()])  # case does not matter
    assert out["ngram_overlap"][0] == 1.0
    assert out["longest_match"][0] == 16 and out["n_ngrams"][0] == 9 and out["n_words"][0] == 16


def test_one_shared_ngram_out_of_k(index):
    text = " ".join(NATO.split()[:8] + NOVEL.split()[:4])  # 12 words: k = 5 n-grams, 1 in REF
    out = example_overlap(index, [text])
    assert out["n_ngrams"][0] == 5 and out["n_found"][0] == 1
    assert out["ngram_overlap"][0] == pytest.approx(1 / 5)
    assert out["longest_match"][0] == 8


def test_disjoint_and_short_examples(index):
    out = example_overlap(index, [NOVEL, "alpha bravo charlie delta echo", ""])
    assert out["ngram_overlap"].tolist() == [0.0, 0.0, 0.0]
    assert out["longest_match"].tolist() == [0, 0, 0]
    assert out["n_ngrams"].tolist() == [3, 0, 0]  # the 5-word one is shorter than n = 8
    assert out["n_words"].tolist() == [10, 5, 0]
    assert out["vocab_seen"].tolist() == [0.0, 1.0, 0.0]


def test_longest_match_of_an_embedded_span(index):
    span = NATO.split()[2:12]  # 10 copied words inside novel text
    text = " ".join(NOVEL.split()[:6] + span + NOVEL.split()[6:])
    out = example_overlap(index, [text, NATO])  # a second example must not leak into the first
    assert out["longest_match"].tolist() == [10, 16]
    assert out["n_found"][0] == 3


def test_two_separate_runs_report_the_longer(index):
    nato = NATO.split()
    text = " ".join(nato[:9] + ["zulu"] + nato[4:15])  # runs of 9 and 11 copied words
    assert example_overlap(index, [text])["longest_match"][0] == 11


def test_vocab_seen_on_a_hand_case(index):
    out = example_overlap(index, ["Alpha bravo zulu ZULU yankee sphinx"])  # distinct: 5, seen: 3
    assert out["vocab_seen"][0] == pytest.approx(3 / 5)


def test_random_examples_match_a_brute_force_on_word_tuples(tmp_path):
    rng = np.random.default_rng(0)
    vocab = ["ab", "cd", "ef", "gh"]  # four words and n = 3: partial matches everywhere

    def text(k, words=vocab):
        return " ".join(rng.choice(words, size=k))

    ref = [text(rng.integers(0, 25)) for _ in range(30)]
    examples = [text(rng.integers(0, 20), vocab + ["zz"]) for _ in range(200)]  # "zz" is never seen
    index = build_index(ref, tmp_path / "idx", n=3, chunk_tokens=11)
    grams = {tuple(w[i : i + 3]) for w in map(str.split, ref) for i in range(len(w) - 2)}
    seen = {w for r in ref for w in r.split()}
    out = example_overlap(index, examples)
    for j, ex in enumerate(examples):
        w = ex.split()
        found = [tuple(w[i : i + 3]) in grams for i in range(len(w) - 2)]
        best = run = 0
        for f in found:
            run = run + 1 if f else 0
            best = max(best, run)
        assert out["n_ngrams"][j] == len(found) and out["n_found"][j] == sum(found)
        assert out["longest_match"][j] == (best + 2 if best else 0)
        assert out["vocab_seen"][j] == (len(set(w) & seen) / len(set(w)) if w else 0.0)


def test_subset_overlap_means_and_pooled_share(index):
    texts = [NATO, " ".join(NATO.split()[:8] + NOVEL.split()[:4]), "too short"]
    s = subset_overlap(index, texts)
    assert s["n_examples"] == 3 and s["n_short"] == 1 and s["n_ngrams"] == 14
    assert s["ngram_overlap"] == pytest.approx((1.0 + 0.2 + 0.0) / 3)
    assert s["pooled_ngram_overlap"] == pytest.approx(10 / 14)
    assert s["max_longest_match"] == 16 and s["longest_match"] == pytest.approx(24 / 3)
    with pytest.raises(UserError, match="empty subset"):
        subset_overlap(index, [])


# ---------------------------------------------------------------- building the index


def _pydoc_docs(k: int = 12) -> list[str]:
    return list(reference_texts("pydoc"))[:k]


def test_chunked_build_equals_one_chunk_and_brute_force(tmp_path):
    docs = _pydoc_docs()
    one = build_index(docs, tmp_path / "one", n=8)
    many = build_index(docs, tmp_path / "many", n=8, chunk_tokens=97)
    assert one.meta["runs"] == 1 and many.meta["runs"] > 50
    expect = _brute_force_ngrams(docs, 8)  # per document: no n-gram crosses a document boundary
    assert np.array_equal(np.asarray(one.ngrams), expect)
    assert np.array_equal(np.asarray(many.ngrams), expect)
    assert (tmp_path / "one" / "ngrams.npy").read_bytes() == (tmp_path / "many" / "ngrams.npy").read_bytes()
    vocab = sorted({_py_word_hash(w) for d in docs for w in words(d)})
    assert np.asarray(many.vocab).tolist() == vocab
    assert many.meta["ngrams"] == len(expect) and many.meta["tokens"] == sum(len(words(d)) for d in docs)
    assert not list((tmp_path / "many").glob("run-*")) and not list(tmp_path.glob(".*tmp"))


@pytest.mark.parametrize("block", [1, 3, None])
def test_block_merge_of_many_runs(tmp_path, block):
    rng = np.random.default_rng(0)
    runs, values = [], []
    for i in range(11):
        run = np.unique(rng.integers(0, 300, size=rng.integers(1, 80), dtype=np.uint64))
        values.append(run)
        np.save(tmp_path / f"r{i}.npy", run)
        runs.append(tmp_path / f"r{i}.npy")
    total = _merge_runs(runs, tmp_path / "out.npy", block=block)
    merged = np.load(tmp_path / "out.npy")
    assert total == len(merged) and np.array_equal(merged, np.unique(np.concatenate(values)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.npy"]  # runs deleted


def test_contains_uses_the_sorted_index(index):
    grams = np.asarray(index.ngrams)
    queries = np.concatenate([grams[::-1], np.array([0, 2**64 - 1, 12345], dtype=np.uint64), grams[:2]])
    found = index.contains(queries)
    assert found[: len(grams)].all() and not found[len(grams) : len(grams) + 3].any() and found[-2:].all()
    assert index.contains(np.empty(0, np.uint64)).shape == (0,)


def test_same_fingerprint_reuses_and_a_new_one_rebuilds(tmp_path):
    out = tmp_path / "ref"
    build_index(REF, out, fingerprint="v1")
    os.utime(out / "ngrams.npy", (1, 1))  # an old mtime marks the file: a rebuild rewrites it
    again = build_index(REF, out, fingerprint="v1")
    assert (out / "ngrams.npy").stat().st_mtime == 1 and again.meta["fingerprint"] == "v1"
    other = build_index(REF, out, fingerprint="v2")
    assert (out / "ngrams.npy").stat().st_mtime > 1 and other.meta["fingerprint"] == "v2"
    os.utime(out / "ngrams.npy", (1, 1))
    build_index(REF, out, n=4, fingerprint="v2")  # other params also rebuild
    assert (out / "ngrams.npy").stat().st_mtime > 1 and NgramIndex.load(out).n == 4
    assert not list(tmp_path.glob(".ref.*"))  # no temporary or old folders left behind


def test_a_build_finishing_second_keeps_the_equal_index_already_in_place(tmp_path, monkeypatch):
    """Two workers pass the reuse check, both build; the one that finishes second must keep the
    first one's index (a reader may have it open), not move it aside and put its own there."""
    import shutil
    from pathlib import Path

    prebuilt = tmp_path / "prebuilt"
    build_index(REF, prebuilt, fingerprint="v1")
    os.utime(prebuilt / "ngrams.npy", (1, 1))                  # marks the first worker's files
    out, real_rename, raced = tmp_path / "ref", os.rename, []

    def first_worker_lands_first(src, dst, *args, **kwargs):
        if Path(dst) == out and not raced:
            raced.append(True)
            shutil.copytree(prebuilt, out)                     # the other worker's rename, just before ours
        return real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "rename", first_worker_lands_first)
    index = build_index(REF, out, fingerprint="v1")
    assert raced and (out / "ngrams.npy").stat().st_mtime == 1  # theirs stands
    assert index.meta["fingerprint"] == "v1" and not list(tmp_path.glob(".ref.*"))


def test_a_path_spec_fingerprints_itself(tmp_path):
    ref = tmp_path / "ref.txt"
    ref.write_text(NATO + "\n\n" + REF[1] + "\n", encoding="utf-8")
    first = build_index(ref, tmp_path / "idx")
    assert first.meta["documents"] == 2 and first.meta["fingerprint"] == fingerprint_files([ref])
    os.utime(tmp_path / "idx" / "ngrams.npy", (1, 1))
    build_index(ref, tmp_path / "idx")
    assert (tmp_path / "idx" / "ngrams.npy").stat().st_mtime == 1
    os.utime(ref, ns=(10**18, 10**18))  # the file changed: a new fingerprint
    build_index(ref, tmp_path / "idx")
    assert (tmp_path / "idx" / "ngrams.npy").stat().st_mtime > 1


def test_refuses_to_overwrite_a_folder_that_is_not_an_index(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not an n-gram index"):
        build_index(REF, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


# ---------------------------------------------------------------- reference corpora and errors


def test_reference_texts_formats(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "b.txt").write_text("second file\n", encoding="utf-8")
    (tmp_path / "docs" / "a.txt").write_text("first para\nline two\n\n\n  \nsecond para\n", encoding="utf-8")
    assert list(reference_texts(tmp_path / "docs")) == ["first para\nline two\n", "second para\n", "second file\n"]
    rows = tmp_path / "r.jsonl"
    rows.write_text('{"text": "one", "body": "uno"}\n\n{"text": "two", "body": "dos"}\n', encoding="utf-8")
    assert list(reference_texts(rows)) == ["one", "two"]
    assert list(reference_texts(rows, field="body")) == ["uno", "dos"]
    pydoc = list(reference_texts("pydoc"))
    assert len(pydoc) > 50 and all(isinstance(t, str) and t for t in pydoc)


def test_missing_and_empty_references_name_the_path(tmp_path):
    missing = tmp_path / "nowhere.txt"
    with pytest.raises(UserError, match="nowhere.txt"):
        reference_texts(missing)
    with pytest.raises(UserError, match="nowhere.txt"):
        build_index(missing, tmp_path / "idx")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"empty\.txt is empty"):
        build_index(empty, tmp_path / "idx")
    with pytest.raises(UserError, match="is empty"):
        build_index([], tmp_path / "idx")
    with pytest.raises(UserError, match="no document of at least n=8 words"):
        build_index(["a few words only"], tmp_path / "idx")
    (tmp_path / "nodocs").mkdir()
    with pytest.raises(UserError, match=r"nodocs: the folder holds no file a reference can be read from "
                                        r"\(found: no files\)"):
        reference_texts(tmp_path / "nodocs")
    assert not (tmp_path / "idx").exists()


def test_jsonl_row_without_the_field_names_file_and_line(tmp_path):
    rows = tmp_path / "ref.jsonl"
    rows.write_text('{"text": "fine"}\n{"body": "no text here"}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"ref\.jsonl.*line 2 has no field 'text' \(found: body\)"):
        list(reference_texts(rows))
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\n\xff\xfe bad\n")
    with pytest.raises(UserError, match=r"bad\.txt.*line 2 is not valid UTF-8"):
        list(reference_texts(bad))


def test_unknown_tokenizer_lists_the_valid_ones(tmp_path):
    with pytest.raises(UnknownNameError, match="Valid tokenizers: words"):
        build_index(REF, tmp_path / "idx", tokenizer="wrods")


# ---------------------------------------------------------------- train/test overlap and DSIR


def test_test_overlap_on_a_hand_case():
    out = test_overlap(["a b c d"], ["c d e f", "A B"], n=2)
    # train bigrams {ab, bc, cd}; test bigrams cd, de, ef, ab: 2 of 4 found
    assert out["ngram_overlap"] == pytest.approx(2 / 4) and out["n_test_ngrams"] == 4
    assert out["vocab_coverage"] == pytest.approx(4 / 6)  # test words a..f, seen a..d
    assert out["vocab_jaccard"] == pytest.approx(4 / 6)
    out = test_overlap(["a b c d"], ["c d e f"], n=2)
    assert out["vocab_coverage"] == 0.5 and out["vocab_jaccard"] == pytest.approx(2 / 6)
    assert test_overlap(["x"], ["a b"], n=8)["ngram_overlap"] == 0.0
    with pytest.raises(UserError, match="no words"):
        test_overlap(["a b"], ["!!"], n=2)


def test_hashed_ngram_features_count_unigrams_and_bigrams():
    feats = hashed_ngram_features(["a b c", "a", ""], buckets=64)
    assert feats.shape == (3, 64) and feats.dtype == np.float32
    assert feats.sum(axis=1).tolist() == [5.0, 1.0, 0.0]  # 3 words + 2 bigrams, 1 word, nothing
    assert np.array_equal(feats[1], hashed_ngram_features(["a"], buckets=64)[0])
    assert (feats[0] >= feats[1]).all()


def test_importance_kl_prefers_reference_like_subsets():
    docs = _pydoc_docs(79)
    reference, held_out = docs[:40], docs[40:]
    rng = np.random.default_rng(0)
    like = [" ".join(words(d)[:60]) for d in held_out[:20]]
    cooking = words("stir the onions with garlic butter and simmer the tomato sauce until thick then "
                    "season with salt pepper basil and serve the pasta warm with grated cheese")
    unrelated = [" ".join(rng.choice(cooking, size=60)) for _ in range(20)]
    out = importance_kl(like, reference, unrelated, buckets=2048)
    assert 0 < out["kl_subset"] < out["kl_pool"]
    assert out["kl_reduction"] == pytest.approx(out["kl_pool"] - out["kl_subset"])
    weights = log_importance(like + unrelated, reference, unrelated, buckets=2048)
    assert weights.shape == (40,) and weights[:20].mean() > weights[20:].mean()


def test_an_index_another_process_finishes_first_is_kept_not_clobbered(tmp_path, monkeypatch):
    """Two sweep workers index the same corpus at once: the one that finishes second keeps the
    first one's index (which the first may be reading) instead of moving it aside, and a worker
    that looked before the other's rename does not take the index for a foreign folder."""
    from llm_al.features import overlap

    out = tmp_path / "idx"
    docs = ["the quick brown fox jumps over the lazy dog"] * 3

    def racing():               # the other worker completes the same index while this one reads
        overlap.build_index(iter(docs), out, n=3, fingerprint="fp")
        yield from docs

    overlap.build_index(racing(), out, n=3, fingerprint="fp")
    first = json.loads((out / "meta.json").read_text())
    assert first["ngrams"] == 7 and list(tmp_path.iterdir()) == [out]         # nothing left aside
    calls = []
    real = overlap._read_meta

    def late(path):             # the first look happens before the other worker's rename lands
        calls.append(path)
        return None if len(calls) == 1 else real(path)

    monkeypatch.setattr(overlap, "_read_meta", late)
    overlap.build_index(iter(docs), out, n=3, fingerprint="fp")
    assert json.loads((out / "meta.json").read_text()) == first
