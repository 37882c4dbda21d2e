"""k-means: `kmeans` (greedy k-means++ then Lloyd, dense float64, small pools) and `kmeans_large`
(fit on a sample, assign in blocks; numpy or faiss), which finds the clusters kmeans finds
(tests/test_scale.py) with bounded memory at 10^5-10^6 rows.
"""

from __future__ import annotations

import importlib.util

import numpy as np

from llm_al.errors import ConfigError
from llm_al.strategies.kernels.rows import rows_as, sq_dists


def kmeans_pp_init(x: np.ndarray, k: int, rng: np.random.Generator, d0: np.ndarray | None = None) -> np.ndarray:
    """(k,) distinct row indices by greedy k-means++ (Arthur & Vassilvitskii 2007; the greedy
    variant scikit-learn uses): each step draws 2 + log k candidates by D^2 sampling and keeps the
    one that lowers the total squared distance most, which rarely puts two seeds in one cluster.
    When every remaining point coincides with a chosen one (duplicates), the next is uniform.
    `d0` (N,), when given, is each row's squared distance to centres chosen before (fixed ones,
    see kmeans): the first seed is then D^2-sampled from it too, not uniform."""
    n = len(x)
    trials = 2 + int(np.log(k))
    if d0 is None:
        chosen = [int(rng.integers(n))]
        d = ((x - x[chosen[0]]) ** 2).sum(1)                 # (N,) squared distance to the nearest seed
    else:
        chosen, d = [], np.array(d0, dtype=np.float64)
    while len(chosen) < k:
        d[chosen] = 0.0
        total = d.sum()
        if total <= 0:
            j = int(rng.choice(np.setdiff1d(np.arange(n), chosen)))
            chosen.append(j)
            continue
        cand = rng.choice(n, size=trials, p=d / total)       # (T,) D^2-sampled candidates (never a seed)
        new_d = np.minimum(d[None], sq_dists(x[cand], x))       # (T, N) distances if each were added
        best = int(np.argmin(new_d.sum(1)))
        chosen.append(int(cand[best]))
        d = new_d[best].copy()
    return np.array(chosen, dtype=np.int64)


def kmeans(x: np.ndarray, k: int, rng: np.random.Generator, max_iter: int = 100,
           fixed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means from a seeded k-means++ start. Returns (centroids (k, D), labels (N,)), the
    labels being the nearest centroid of each row. A cluster that empties keeps its old centroid.
    `fixed` (F, D): centres that are there already and never move (the labelled examples): a row
    nearer one of them than to every centroid is labelled -1 and moves no centroid, so the k
    centroids settle where the fixed ones leave the data uncovered, minimising the k-means cost
    with the fixed centres given (the conditional p-median/k-means problem of location theory,
    Minieka 1980, "Conditional centers and medians of a graph"). None: plain k-means."""
    x = np.asarray(x, dtype=np.float64)                      # (N, D)
    to_fixed = None if fixed is None or len(fixed) == 0 else sq_dists(x, np.asarray(fixed, dtype=np.float64)).min(1)

    def nearest(c: np.ndarray) -> np.ndarray:
        d = sq_dists(x, c)                                   # (N, k)
        lab = np.argmin(d, axis=1)
        return lab if to_fixed is None else np.where(to_fixed < d.min(1), -1, lab)

    c = x[kmeans_pp_init(x, k, rng, to_fixed)].copy()        # (k, D)
    labels = nearest(c)                                      # (N,)
    for _ in range(max_iter):
        xs, ls = (x, labels) if to_fixed is None else (x[labels >= 0], labels[labels >= 0])
        counts = np.bincount(ls, minlength=k)                # (k,)
        order = np.argsort(ls, kind="stable")
        filled = np.flatnonzero(counts)
        if len(filled):
            sums = np.add.reduceat(xs[order], (np.cumsum(counts) - counts)[filled], axis=0)   # (k', D)
            c[filled] = sums / counts[filled, None]
        new = nearest(c)
        if np.array_equal(new, labels):
            break
        labels = new
    return c, labels


def have_faiss() -> bool:
    return importlib.util.find_spec("faiss") is not None


def assign(x: np.ndarray, c: np.ndarray, block: int) -> np.ndarray:
    """(N,) nearest centroid of every row, a block of rows at a time (one (block, k) matrix)."""
    sqc = np.einsum("kd,kd->k", c, c)                        # (k,)
    labels = np.empty(len(x), dtype=np.int64)
    for s in range(0, len(x), block):
        d = np.asarray(x[s : s + block], dtype=np.float32) @ c.T   # (b, k)
        d *= -2.0
        d += sqc                                             # |x - c|^2 - |x|^2
        labels[s : s + block] = d.argmin(axis=1)
    return labels


def kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """(k,) distinct row indices by greedy k-means++: kmeans_pp_init's algorithm (Arthur
    & Vassilvitskii 2007, 2 + log k D^2-sampled candidates a step, keep the one that lowers the
    total most), in float32 with the row norms computed once."""
    n = len(x)
    trials = 2 + int(np.log(k))
    sq = np.einsum("nd,nd->n", x, x)                         # (N,)
    chosen = [int(rng.integers(n))]
    d = np.maximum(sq + sq[chosen[0]] - 2.0 * (x @ x[chosen[0]]), 0.0)   # (N,) to the nearest seed
    for _ in range(1, k):
        d[chosen] = 0.0
        total = d.sum(dtype=np.float64)
        if total <= 0:                                       # every row coincides with a seed
            chosen.append(int(rng.choice(np.setdiff1d(np.arange(n), chosen))))
            continue
        cand = rng.choice(n, size=trials, p=d / total)       # (T,)
        new_d = np.minimum(d[None], np.maximum(sq[cand, None] + sq[None] - 2.0 * (x[cand] @ x.T), 0.0))   # (T, N)
        best = int(np.argmin(new_d.sum(axis=1, dtype=np.float64)))
        chosen.append(int(cand[best]))
        d = new_d[best]
    return np.array(chosen, dtype=np.int64)


def kmeans_large(x: np.ndarray, k: int, rng: np.random.Generator, max_iter: int = 20, sample: int | None = None,
                 block: int = 16384, backend: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means for large N. Returns (centroids (k, D) float32, labels (N,) int64), labels
    being every row's nearest centroid, like kmeans.

    Both backends fit the same way: greedy k-means++ (`kmeans_pp`) on a uniform sample of 20 k
    rows, then up to `max_iter` Lloyd steps on a uniform sample of `sample` rows (default 256 per
    centroid, faiss's own default training size; all rows when N is smaller), then one blocked
    pass assigns every row. backend="faiss" runs the Lloyd steps with faiss.Kmeans (Johnson et
    al., "Billion-scale similarity search with GPUs", 2019; it re-seeds an empty cluster by
    splitting a large one); "numpy" runs them in blocks of rows, summing in float64 (an emptied
    cluster keeps its centroid, as in kmeans); "auto" takes faiss when installed.
    Nothing larger than the sample and a (block, k) float32 matrix is materialised."""
    n, dim = x.shape
    if not 1 <= k <= n:
        raise ConfigError(f"kmeans_large: k={k} must be in [1, N={n}]")
    if backend not in ("auto", "faiss", "numpy"):
        raise ConfigError(f"kmeans_large: backend={backend!r} must be one of auto, faiss, numpy")
    if backend == "faiss" and not have_faiss():
        raise ConfigError("kmeans_large: backend='faiss' but faiss is not installed (pip install faiss-cpu)")
    m = min(n, sample or 256 * k)
    rows = np.sort(rng.choice(n, size=m, replace=False)) if m < n else np.arange(n)
    xs = np.empty((m, dim), dtype=np.float32)                # (m, D) the training sample
    for s in range(0, m, block):
        xs[s : s + block] = rows_as(x, rows[s : s + block])
    init = rng.choice(m, size=min(m, 20 * k), replace=False) if m > 20 * k else np.arange(m)
    c = xs[init[kmeans_pp(xs[init], k, rng)]]               # (k, D)
    if backend == "faiss" or (backend == "auto" and have_faiss()):
        import faiss

        km = faiss.Kmeans(dim, k, niter=max_iter, seed=int(rng.integers(2**31)), max_points_per_centroid=m // k + 1,
                          min_points_per_centroid=1, verbose=False)
        km.train(xs, init_centroids=c)
        c = np.ascontiguousarray(km.centroids, dtype=np.float32)
    else:
        labels = None
        for _ in range(max_iter):
            new = assign(xs, c, block)
            if labels is not None and np.array_equal(new, labels):
                break
            labels = new
            sums = np.zeros((k, dim))                        # (k, D) float64, summed a block at a time
            for s in range(0, m, block):
                lab = labels[s : s + block]
                order = np.argsort(lab, kind="stable")
                starts = np.flatnonzero(np.r_[True, np.diff(lab[order]) != 0])
                sums[lab[order][starts]] += np.add.reduceat(xs[s : s + block][order].astype(np.float64), starts)
            counts = np.bincount(labels, minlength=k)        # (k,)
            filled = np.flatnonzero(counts)
            c[filled] = sums[filled] / counts[filled, None]
    return c, assign(x, c, block)
