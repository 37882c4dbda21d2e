"""The `ngrams` probe (hashed prompt n-gram counts, sparse) and the lexical strategies `delfy` and
`ngram_coverage`, on hand-made pools whose right answer is known and against direct re-computations."""

from __future__ import annotations

import math
from collections import Counter
from itertools import combinations

import numpy as np
import pytest
from scipy import sparse

from llm_al.data.pool import records_to_pool
from llm_al.errors import ConfigError, FeatureUnavailableError
from llm_al.types import Features
from llm_al.strategies.lexical import (
    NGRAM_DIM,
    coverage_greedy,
    hashed_ngram_counts,
    ngram_column,
    vocabulary_size,
)
from llm_al.strategies.base import run_strategy


def grams(text: str, n_max: int = 2) -> list[str]:
    words = text.lower().split()
    return [" ".join(words[j:j + n]) for n in range(1, n_max + 1) for j in range(len(words) - n + 1)]


def lexical_features(texts: list[str], n_max: int = 2) -> Features:
    n = len(texts)
    return Features(ids=[f"x{i}" for i in range(n)], length=np.ones(n, dtype=np.float32),
                    scores={"ngram_counts": hashed_ngram_counts(texts, n_max)})


# ---------------------------------------------------------------------------- the probe
def test_counts_of_a_known_text():
    m = hashed_ngram_counts(["The cat, the CAT sat.", "", "Élan vital"], 2)
    assert sparse.isspmatrix_csr(m) and m.shape == (3, NGRAM_DIM)
    row = m[0].toarray().ravel()
    assert row[ngram_column("the")] == 2 and row[ngram_column("cat")] == 2 and row[ngram_column("sat")] == 1
    assert row[ngram_column("the cat")] == 2 and row[ngram_column("cat the")] == 1 and row[ngram_column("cat sat")] == 1
    assert m[0].sum() == 9                                   # 5 words + 4 bigrams
    assert m[1].nnz == 0                                     # no words, no n-grams
    assert m[2, ngram_column("élan")] == 1 and m[2, ngram_column("élan vital")] == 1   # unicode words, lower-cased
    assert hashed_ngram_counts(["The cat, the CAT sat."], 1).sum() == 5
    with pytest.raises(ConfigError, match="ngram_max"):
        hashed_ngram_counts(["x"], 0)


def test_hash_is_stable_across_processes():
    # blake2b, not Python's salted hash(): these columns must never change, or caches and runs disagree
    assert ngram_column("the") == 776798
    assert ngram_column("the cat") == 904152


def test_probe_reads_prompts_only_and_needs_no_model(cache_dir):
    from llm_al.config import ModelConfig
    from llm_al.run.pipeline import compute_features

    rows = [{"prompt": "red apple", "response": "zebra"}, {"prompt": "green apple pie", "response": "zebra"},
            {"prompt": "red wine", "response": "zebra"}]
    pool = records_to_pool(rows, path="mem.jsonl")
    # ModelConfig() names a hub model that cannot load offline: the probe must not try
    f = compute_features(pool, {"ngram_counts"}, ModelConfig(), progress=False)
    m = f.require("ngram_counts")
    assert sparse.issparse(m) and m.shape == (3, NGRAM_DIM)
    assert m[:, ngram_column("zebra")].sum() == 0                    # responses are not read
    assert m[0, ngram_column("red apple")] == 1 and m[:, ngram_column("apple")].sum() == 2
    assert f.cost["probe_ngrams"]["ngrams"] == 3 + 5 + 3 and f.cost["probe_ngrams"]["forward_passes"] == 0
    sub = f.take([2, 0])                                              # Features.take indexes the CSR rows
    assert sparse.issparse(sub.require("ngram_counts"))
    assert (sub.require("ngram_counts") != m[[2, 0]]).nnz == 0
    assert vocabulary_size(m, [0, 2]) == 5                            # red, apple, wine, red apple, red wine


def test_unlabelled_pool_is_fine():
    from llm_al.features.probes import ProbeContext, run_probes

    pool = records_to_pool([{"prompt": "a b"}, {"prompt": "b c"}], path="mem.jsonl", labelled=False)
    scores, cost = run_probes({"ngram_counts"}, ProbeContext(examples=pool.examples))
    assert scores["ngram_counts"].shape[0] == 2 and cost["ngrams"]["ngrams"] == 6


def test_count_matrix_is_not_a_per_example_score():
    from llm_al.strategies.diversity import score_fields

    assert "ngram_counts" not in score_fields()
    f = lexical_features(["a b", "c d", "e f"])
    f.loss = np.ones(3, dtype=np.float32)
    with pytest.raises(ConfigError, match="by='ngram_counts'"):
        run_strategy("stream", f, 2, np.random.default_rng(0), by="ngram_counts")


def test_missing_counts_name_the_probe():
    f = Features(ids=["a", "b"], length=np.ones(2, dtype=np.float32))
    with pytest.raises(FeatureUnavailableError, match="ngrams"):
        run_strategy("delfy", f, 1, np.random.default_rng(0))


# ---------------------------------------------------------------------------- DelFy
def delfy_reference(texts: list[str], decay: float) -> np.ndarray:
    """Zeng et al. 2019, Algorithm 1 with an empty labelled set, written out loop by loop."""
    toks = [grams(t) for t in texts]
    pool = Counter(g for t in toks for g in t)
    total = sum(math.log(1 + c) for c in pool.values())
    F = {g: math.log(1 + c) / total for g, c in pool.items()}
    lf = [sum(F[g] for g in t) / len(t) for t in toks]
    assert len(set(lf)) == len(lf), "test pool must have no LF ties"
    above: Counter = Counter()
    out = np.zeros(len(texts))
    for i in sorted(range(len(texts)), key=lambda i: -lf[i]):
        out[i] = sum(F[g] * math.exp(-decay * above[g]) for g in toks[i]) / len(toks[i])
        above.update(toks[i])
    return out


def random_texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(12)]
    return [" ".join(rng.choice(vocab, size=rng.integers(2, 7), p=np.arange(12, 0, -1) / 78)) for _ in range(n)]


@pytest.mark.parametrize("decay", [0.0, 0.5, 2.0])
def test_delfy_paper_mode_matches_the_formula_written_out(decay):
    texts = random_texts(30, seed=1)
    sel = run_strategy("delfy", lexical_features(texts), 5, np.random.default_rng(0), decay=decay, drop_shared=False)
    np.testing.assert_allclose(sel.pool_scores, delfy_reference(texts, decay), rtol=1e-10)
    np.testing.assert_allclose(sel.scores, np.sort(sel.pool_scores)[::-1][:5])


def test_delfy_greedy_matches_a_recompute_from_scratch():
    texts = random_texts(40, seed=2)
    sel = run_strategy("delfy", lexical_features(texts), 12, np.random.default_rng(3), mode="greedy", drop_shared=False)
    toks = [grams(t) for t in texts]
    pool = Counter(g for t in toks for g in t)
    total = sum(math.log(1 + c) for c in pool.values())
    seen: Counter = Counter()                                  # n-gram counts of the picks so far
    for k, (i, s) in enumerate(zip(sel.indices, sel.scores)):
        now = [sum(math.log(1 + pool[g]) / total * math.exp(-seen[g]) for g in t) / len(t) for t in toks]
        best = max(now[j] for j in range(len(texts)) if j not in sel.indices[:k])
        assert now[i] == pytest.approx(best, rel=1e-9) and s == pytest.approx(now[i], rel=1e-9)
        seen.update(toks[i])


TWO_GROUPS = ["sun moon", "sun moon", "sun star", "rain snow", "rain snow", "rain hail", "odd thing"]


@pytest.mark.parametrize("mode", ["paper", "greedy"])
def test_delfy_prefers_frequent_uncovered_ngrams_and_decays_repeats(mode):
    f = lexical_features(TWO_GROUPS)
    for seed in range(10):
        picks = run_strategy("delfy", f, 2, np.random.default_rng(seed), mode=mode).indices.tolist()
        # one of each frequent group; never the duplicate of the first, nor the rare "odd thing"
        assert len(set(picks) & {0, 1}) == 1 and len(set(picks) & {3, 4}) == 1, picks
    # without decay it is plain log frequency: a duplicate pair can be taken together
    pairs = {tuple(sorted(run_strategy("delfy", f, 2, np.random.default_rng(s), mode=mode, decay=0.0).indices))
             for s in range(20)}
    assert (0, 1) in pairs or (3, 4) in pairs


def test_delfy_drops_a_shared_template():
    texts = ["translate this please: " + t for t in TWO_GROUPS]    # unigrams: no template/text bigrams
    a = run_strategy("delfy", lexical_features(texts, 1), 3, np.random.default_rng(0))
    b = run_strategy("delfy", lexical_features(TWO_GROUPS, 1), 3, np.random.default_rng(0))
    np.testing.assert_allclose(a.pool_scores, b.pool_scores)     # template n-grams in every row are ignored
    c = run_strategy("delfy", lexical_features(texts, 1), 3, np.random.default_rng(0), drop_shared=False)
    assert not np.allclose(c.pool_scores, b.pool_scores)


def test_delfy_rejects_bad_params():
    f = lexical_features(TWO_GROUPS)
    with pytest.raises(ConfigError, match="mode"):
        run_strategy("delfy", f, 2, np.random.default_rng(0), mode="lazy")
    with pytest.raises(ConfigError, match="decay"):
        run_strategy("delfy", f, 2, np.random.default_rng(0), decay=-1.0)


# ---------------------------------------------------------------------------- coverage
def test_coverage_two_pick_is_the_known_optimum():
    texts = ["a b c", "a b c", "c d", "e f g h"]
    sel = run_strategy("ngram_coverage", lexical_features(texts), 4, np.random.default_rng(0))
    l2, l3, l4 = math.log(2), math.log(3), math.log(4)
    assert sel.indices[0] in (0, 1) and sel.indices[1] == 3 and sel.indices[2] == 2
    assert {sel.indices[0], sel.indices[3]} == {0, 1}                # the duplicate adds nothing: last
    np.testing.assert_allclose(sel.scores, [4 * l3 + l4, 7 * l2, 2 * l2, 0.0], atol=1e-12)
    # brute force: {0 or 1, 3} is the best pair
    w = {g: math.log(1 + c) for g, c in Counter(g for t in texts for g in grams(t)).items()}
    value = {p: sum(w[g] for g in set(grams(texts[p[0]])) | set(grams(texts[p[1]]))) for p in combinations(range(4), 2)}
    assert max(value, key=value.get) in ((0, 3), (1, 3))


def test_coverage_greedy_matches_a_recompute_from_scratch():
    rng = np.random.default_rng(5)
    x = sparse.random(50, 30, density=0.1, format="csr", random_state=rng) * 3
    x.data = np.ceil(x.data)
    weight = rng.uniform(0.1, 2.0, 30)
    idx, gains = coverage_greedy(x, weight, 20, rng.random(50))
    covered = np.zeros(30, dtype=bool)
    dense = x.toarray() > 0
    for i, g in zip(idx, gains):
        fresh = (dense & ~covered) @ weight
        fresh[list(idx[:list(idx).index(i)])] = -1
        assert fresh[i] == pytest.approx(fresh.max(), abs=1e-12) and g == pytest.approx(max(fresh[i], 0), abs=1e-9)
        covered |= dense[i]


def test_coverage_is_random_once_everything_is_covered():
    f = lexical_features(["same words here"] * 6)
    firsts, rests = set(), set()
    for s in range(20):
        sel = run_strategy("ngram_coverage", f, 3, np.random.default_rng(s))
        assert sel.scores[0] > 0 and np.all(sel.scores[1:] == 0)
        firsts.add(int(sel.indices[0]))
        rests.add(tuple(sel.indices[1:].tolist()))
    assert len(firsts) > 2 and len(rests) > 2                         # no fixed index order


def test_loop_rescore_and_subset_record_handle_the_count_matrix():
    from llm_al.config import ExperimentConfig
    from llm_al.run.record import subset_means
    from llm_al.features.engine import build_features
    from llm_al.run.loop import rescore

    pool = records_to_pool([{"prompt": p, "response": "r"} for p in ["a b", "b c", "c d e"]], path="mem.jsonl")
    base = build_features(pool.examples, pool.ids)
    base.scores["ngram_counts"] = hashed_ngram_counts(["stale"] * 3, 2)
    sub = rescore(None, None, base, pool.examples, np.array([2, 0]), {"ngram_counts"}, ExperimentConfig(), [1])
    np.testing.assert_array_equal(sub.require("ngram_counts").sum(1).A1, [5, 3])   # recomputed, no model used
    record = subset_means(base.take([0, 1]), np.array([0, 1]))
    assert record["ngram_counts_vocabulary"] == 1.0 and "ngram_counts" not in record   # only "stale"
