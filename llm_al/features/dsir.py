"""DSIR-style hashed n-gram importance (Xie et al., NeurIPS 2023): how close a subset is to a
reference corpus, in the space of hashed unigrams and bigrams, compared with a random baseline."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from llm_al.features.overlap import text_batches, hash_batch, positive_int, words


def _bucket_ids(texts: Sequence[str], buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """Bucket of every unigram and bigram occurrence (U+B,), and its document (U+B,)."""
    w, wdoc, g, gdoc = hash_batch(texts, 2, words)
    ids = np.concatenate([w, g]) % np.uint64(buckets)
    return ids.astype(np.int64), np.concatenate([wdoc, gdoc])


def hashed_ngram_features(texts: Sequence[str], buckets: int = 10_000) -> np.ndarray:
    """(N, buckets) float32 counts of hashed unigrams and bigrams (DSIR's features, always with the
    "words" tokenizer). Dense, so meant for N up to ~100k: 4 bytes x N x buckets."""
    ids, doc = _bucket_ids(texts, positive_int("buckets", buckets))
    out = np.zeros((len(texts), buckets), np.float32)
    np.add.at(out, (doc, ids), 1.0)
    return out


def _distribution(texts: Iterable[str], buckets: int) -> np.ndarray:
    """(buckets,) add-one smoothed distribution of hashed unigrams+bigrams, streamed in batches."""
    buckets = positive_int("buckets", buckets)
    counts = np.zeros(buckets, np.float64)
    for batch in text_batches(texts):
        counts += np.bincount(_bucket_ids(batch, buckets)[0], minlength=buckets)
    return (counts + 1.0) / (counts.sum() + buckets)


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.sum(p * (np.log(p) - np.log(q))))


def importance_kl(subset_texts: Sequence[str], reference_texts: Iterable[str], pool_texts: Sequence[str],
                  buckets: int = 10_000) -> dict[str, float]:
    """How much closer a subset is to the reference than a baseline, in DSIR's hashed-n-gram space.

    Returns `kl_subset` = KL(reference || subset), `kl_pool` = KL(reference || pool_texts) and
    `kl_reduction` = kl_pool - kl_subset (> 0: the subset is nearer the reference). Pass as
    `pool_texts` a random pool subset of the same size: add-one smoothing pulls small samples
    toward uniform, so the comparison is fair only between samples of similar size."""
    ref = _distribution(reference_texts, buckets)
    kl_subset = _kl(ref, _distribution(subset_texts, buckets))
    kl_pool = _kl(ref, _distribution(pool_texts, buckets))
    return {"kl_subset": kl_subset, "kl_pool": kl_pool, "kl_reduction": kl_pool - kl_subset}


def log_importance(texts: Sequence[str], reference_texts: Iterable[str], pool_texts: Iterable[str],
                   buckets: int = 10_000) -> np.ndarray:
    """(N,) DSIR log importance weights: sum over an example's hashed unigrams and bigrams of
    log p_reference - log p_pool (higher: more reference-like than pool-like)."""
    delta = np.log(_distribution(reference_texts, buckets)) - np.log(_distribution(pool_texts, buckets))
    ids, doc = _bucket_ids(texts, buckets)
    return np.bincount(doc, weights=delta[ids], minlength=len(texts))
