"""Orderings: the order in which a selected subset is fed to training.

`fn(indices, features, rng) -> permutation of indices` (positions into the pool), registered with
`@ORDERINGS.register`; `seeded=True` marks the ones whose result depends on the generator beyond
breaking ties (the grid designs give those several order seeds). Pure functions; every randomised step uses the given `rng` (the run's
data-order seed stream). Ties in a sort key are broken at random, so equal-loss examples are not
left in selection order.
"""

from __future__ import annotations

import numpy as np

from llm_al.errors import FeatureUnavailableError
from llm_al.registries import ORDERINGS
from llm_al.strategies.kernels.kmeans import kmeans
from llm_al.types import Features


def sort_by(indices: np.ndarray, key: np.ndarray, rng: np.random.Generator, descending: bool = False) -> np.ndarray:
    k = key[indices].astype(np.float64)
    order = np.lexsort((rng.random(len(indices)), -k if descending else k))
    return indices[order]


@ORDERINGS.register("as_selected", "the order the strategy picked them in", needs=())
def as_selected(indices: np.ndarray, features: Features, rng: np.random.Generator) -> np.ndarray:
    return np.asarray(indices).copy()


@ORDERINGS.register("shuffled", "a seeded random permutation (data-order seed)", needs=(), seeded=True)
def shuffled(indices: np.ndarray, features: Features, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.asarray(indices))


@ORDERINGS.register("easy_to_hard", "ascending base-model response loss (curriculum)", needs=("loss",))
def easy_to_hard(indices: np.ndarray, features: Features, rng: np.random.Generator) -> np.ndarray:
    return sort_by(np.asarray(indices), features.require("loss"), rng)


@ORDERINGS.register("hard_to_easy", "descending base-model response loss (anti-curriculum)", needs=("loss",))
def hard_to_easy(indices: np.ndarray, features: Features, rng: np.random.Generator) -> np.ndarray:
    return sort_by(np.asarray(indices), features.require("loss"), rng, descending=True)


@ORDERINGS.register("short_to_long", "ascending response length in words", needs=())
def short_to_long(indices: np.ndarray, features: Features, rng: np.random.Generator) -> np.ndarray:
    return sort_by(np.asarray(indices), features.length, rng)


@ORDERINGS.register("long_to_short", "descending response length in words", needs=())
def long_to_short(indices: np.ndarray, features: Features, rng: np.random.Generator) -> np.ndarray:
    return sort_by(np.asarray(indices), features.length, rng, descending=True)


@ORDERINGS.register("low_ifd_first", "ascending IFD (instruction-following difficulty)", needs=("ifd",))
def low_ifd_first(indices: np.ndarray, features: Features, rng: np.random.Generator) -> np.ndarray:
    return sort_by(np.asarray(indices), features.require("ifd"), rng)


@ORDERINGS.register("high_ifd_first", "descending IFD (instruction-following difficulty)", needs=("ifd",))
def high_ifd_first(indices: np.ndarray, features: Features, rng: np.random.Generator) -> np.ndarray:
    return sort_by(np.asarray(indices), features.require("ifd"), rng, descending=True)


@ORDERINGS.register("cluster_round_robin",
                    "k-means the subset (k = sqrt(n)), then one example per cluster in turn, so neighbours differ",
                    needs=("embeddings",), seeded=True)
def cluster_round_robin(indices: np.ndarray, features: Features, rng: np.random.Generator) -> np.ndarray:
    """Interleave clusters: largest cluster first in each round, members in seeded random order."""
    indices = np.asarray(indices)
    k = max(1, int(round(np.sqrt(len(indices)))))
    _, labels = kmeans(features.require("embeddings")[indices], k, rng)
    groups = [rng.permutation(indices[labels == c]).tolist() for c in range(k)]
    groups = sorted((g for g in groups if g), key=len, reverse=True)
    out = []
    for r in range(len(groups[0])):
        out += [g[r] for g in groups if r < len(g)]
    return np.array(out, dtype=indices.dtype)


# Reverses. easy/hard, short/long and low/high IFD come in pairs, and so do familiar/novel below.
# as_selected and shuffled have no direction to reverse. Read backwards, cluster_round_robin is
# still one example per cluster in turn (the same kind of order, only the cluster sizes per round
# change), so its meaningful opposite is not its reverse but the blocked order, cluster_blocks.
@ORDERINGS.register("cluster_blocks",
                    "k-means the subset (k = sqrt(n)), then whole clusters one after another, so neighbours are "
                    "alike (the blocked opposite of cluster_round_robin)", needs=("embeddings",), seeded=True)
def cluster_blocks(indices: np.ndarray, features: Features, rng: np.random.Generator) -> np.ndarray:
    """Blocked practice: clusters in a seeded random order, members in seeded random order."""
    indices = np.asarray(indices)
    k = max(1, int(round(np.sqrt(len(indices)))))
    _, labels = kmeans(features.require("embeddings")[indices], k, rng)
    return np.concatenate([rng.permutation(indices[labels == c]) for c in rng.permutation(k)]).astype(indices.dtype)


def by_familiarity(indices: np.ndarray, features: Features, rng: np.random.Generator, familiar: bool) -> np.ndarray:
    """Sort by ref_overlap (n-gram overlap with the reference), ties by ref_vocab (share of words
    the reference has), remaining ties at random; most familiar first when `familiar`. Both come
    from the one `reference_overlap` probe (llm_al/strategies/reference_overlap.py). Raises when both are
    constant over the subset: the order would be a disguised shuffle."""
    indices = np.asarray(indices)
    overlap = features.require("ref_overlap")[indices].astype(np.float64)
    vocab = features.require("ref_vocab")[indices].astype(np.float64)
    if len(indices) > 1 and np.ptp(overlap) == 0 and np.ptp(vocab) == 0:
        raise FeatureUnavailableError(
            f"{'familiar' if familiar else 'novel'}_first: ref_overlap ({overlap[0]:g}) and ref_vocab "
            f"({vocab[0]:g}) are the same for all {len(indices)} examples, so the order would be a shuffle; "
            "use a reference closer to the data (overlap.reference) or a smaller overlap.n")
    sign = -1.0 if familiar else 1.0
    return indices[np.lexsort((rng.random(len(indices)), sign * vocab, sign * overlap))]


@ORDERINGS.register("familiar_first", "descending overlap with the reference corpus (ref_overlap, ties by "
                    "ref_vocab): what pre-training-like text covers first", needs=("ref_overlap", "ref_vocab"))
def familiar_first(indices: np.ndarray, features: Features, rng: np.random.Generator) -> np.ndarray:
    return by_familiarity(indices, features, rng, familiar=True)


@ORDERINGS.register("novel_first", "ascending overlap with the reference corpus (ref_overlap, ties by "
                    "ref_vocab): what the reference lacks first", needs=("ref_overlap", "ref_vocab"))
def novel_first(indices: np.ndarray, features: Features, rng: np.random.Generator) -> np.ndarray:
    return by_familiarity(indices, features, rng, familiar=False)


def run_ordering(name: str, indices: np.ndarray, features: Features, rng: np.random.Generator) -> np.ndarray:
    entry = ORDERINGS.get(name)
    for need in entry.meta.get("needs", ()):
        features.require(need)
    out = entry.fn(np.asarray(indices), features, rng)
    assert sorted(out.tolist()) == sorted(np.asarray(indices).tolist()), f"ordering {name} is not a permutation"
    return out
