"""Overlap statistics over an n-gram index (llm_al/features/overlap.py): per example (the share of its
n-grams and words the reference has, its longest matched span), per selected subset, and between
training and test responses.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from llm_al.errors import UserError
from llm_al.features.overlap import TOKENIZERS, NgramIndex, hash_batch, member, sorted_unique


def example_overlap(index: NgramIndex, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-example overlap with the reference, each an (N,) array.

    - `ngram_overlap`: share of the example's n-gram occurrences found in the reference (0.0 when
      the example has fewer than n words: see `n_ngrams`, which is 0 then);
    - `longest_match`: the longest run of consecutive found n-grams as a span in words
      (run + n - 1; 0 if none). Each n-gram of the span is in the reference, not necessarily the
      whole span in one place: the usual decontamination approximation;
    - `vocab_seen`: share of the example's distinct words found in the reference vocabulary
      (0.0 with no words: see `n_words`);
    - `n_ngrams`, `n_found`, `n_words` (word tokens): the counts behind the shares."""
    n, N = index.n, len(texts)
    w, wdoc, g, gdoc = hash_batch(texts, n, TOKENIZERS.get(index.tokenizer).fn)
    found = index.contains(g)  # (G,)
    n_ngrams = np.bincount(gdoc, minlength=N)
    n_found = np.bincount(gdoc[found], minlength=N)
    run = _longest_runs(found, gdoc, N)
    order = np.lexsort((w, wdoc))  # distinct (document, word) pairs
    ws, ds = w[order], wdoc[order]
    first = np.ones(len(ws), bool)
    first[1:] = (ws[1:] != ws[:-1]) | (ds[1:] != ds[:-1])
    seen = index.knows_words(ws[first])
    n_distinct = np.bincount(ds[first], minlength=N)
    n_seen = np.bincount(ds[first][seen], minlength=N)
    return {
        "ngram_overlap": _share(n_found, n_ngrams),
        "longest_match": np.where(run > 0, run + n - 1, 0),
        "vocab_seen": _share(n_seen, n_distinct),
        "n_ngrams": n_ngrams,
        "n_found": n_found,
        "n_words": np.bincount(wdoc, minlength=N),
    }


def _share(part: np.ndarray, whole: np.ndarray) -> np.ndarray:
    return np.divide(part, whole, out=np.zeros(len(whole)), where=whole > 0)


def _longest_runs(found: np.ndarray, doc: np.ndarray, N: int) -> np.ndarray:
    """(N,) longest run of consecutive True per document (positions of a document are contiguous)."""
    out = np.zeros(N, np.int64)
    if not found.any():
        return out
    cont = np.zeros(len(found), bool)  # True where position i continues a run from i - 1
    cont[1:] = found[:-1] & (doc[1:] == doc[:-1])
    start = found & ~cont
    run_id = np.cumsum(start) - 1
    lengths = np.bincount(run_id[found])  # (runs,), every run has at least one found position
    np.maximum.at(out, doc[start], lengths)
    return out


def subset_overlap(index: NgramIndex, texts: Sequence[str]) -> dict[str, float | int]:
    """Subset-level overlap: means of the per-example values, the pooled share of all the
    subset's n-grams found, and the counts (`n_short`: examples shorter than n words)."""
    if len(texts) == 0:
        raise UserError("subset_overlap needs at least one text, got an empty subset")
    per = example_overlap(index, texts)
    total, hits = int(per["n_ngrams"].sum()), int(per["n_found"].sum())
    return {
        "n_examples": len(texts),
        "ngram_overlap": float(per["ngram_overlap"].mean()),
        "pooled_ngram_overlap": hits / total if total else 0.0,
        "longest_match": float(per["longest_match"].mean()),
        "max_longest_match": int(per["longest_match"].max()),
        "vocab_seen": float(per["vocab_seen"].mean()),
        "n_ngrams": total,
        "n_short": int((per["n_ngrams"] == 0).sum()),
    }


def test_overlap(train_texts: Sequence[str], test_texts: Sequence[str], n: int = 8,
                 tokenizer: str = "words") -> dict[str, float | int]:
    """Overlap of a training subset with the test set, from sets of hashes (no index):
    `ngram_overlap` (share of test n-gram occurrences that occur in the training texts; 0.0 when
    the test set has no n-gram, see `n_test_ngrams`), `vocab_coverage` (share of distinct test
    words seen in training) and `vocab_jaccard` (|train ∩ test| / |train ∪ test| of vocabularies)."""
    tokenize = TOKENIZERS.get(tokenizer).fn
    w_tr, _, g_tr, _ = hash_batch(train_texts, n, tokenize)
    w_te, _, g_te, _ = hash_batch(test_texts, n, tokenize)
    v_tr, v_te = sorted_unique(w_tr), sorted_unique(w_te)
    if len(v_te) == 0:
        raise UserError(f"the test set ({len(test_texts)} texts) has no words; its overlap is undefined")
    both = len(np.intersect1d(v_tr, v_te, assume_unique=True))
    return {
        "ngram_overlap": float(member(sorted_unique(g_tr), g_te).mean()) if len(g_te) else 0.0,
        "n_test_ngrams": len(g_te),
        "vocab_coverage": both / len(v_te),
        "vocab_jaccard": both / (len(v_tr) + len(v_te) - both),
        "n_train_words": len(v_tr),
        "n_test_words": len(v_te),
    }


test_overlap.__test__ = False  # a library function, not a pytest test
