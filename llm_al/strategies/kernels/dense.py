"""The in-memory kernels of the diversity strategies, for pools that fit an N x D (and, for facility
location, an N x N) float matrix: unit rows, squared distances, k-means++ and Lloyd's k-means, and
lazy-greedy facility location on a dense similarity. kernels/scale.py and kernels/knn.py hold the
bounded-memory versions for 10^5-10^6 examples (tests/test_scale.py checks they pick the same).
"""

from __future__ import annotations

import heapq

import numpy as np

from llm_al.errors import ConfigError


def unit(x: np.ndarray) -> np.ndarray:
    """(N, D) rows scaled to unit L2 norm (zero rows stay zero), as a new float64 array. Divided in
    place in that copy: one (N, D) float64 array at peak, not two (3 GB less at 1M x 384)."""
    out = np.array(x, dtype=np.float64)                      # always a copy: the caller's x is untouched
    for a in range(0, len(out), 1 << 16):                    # norm's x*x temporary, a block at a time
        block = out[a: a + (1 << 16)]
        block /= np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)
    return out


def sq_dists(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """(N, K) squared Euclidean distances between rows of x (N, D) and c (K, D)."""
    d = np.einsum("nd,nd->n", x, x)[:, None] + np.einsum("kd,kd->k", c, c)[None] - 2.0 * (x @ c.T)
    return np.maximum(d, 0.0)


def kmeans_pp_init(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """(k,) distinct row indices by greedy k-means++ (Arthur & Vassilvitskii 2007; the greedy
    variant scikit-learn uses): each step draws 2 + log k candidates by D^2 sampling and keeps the
    one that lowers the total squared distance most, which rarely puts two seeds in one cluster.
    When every remaining point coincides with a chosen one (duplicates), the next is uniform."""
    n = len(x)
    trials = 2 + int(np.log(k))
    chosen = [int(rng.integers(n))]
    d = ((x - x[chosen[0]]) ** 2).sum(1)                     # (N,) squared distance to the nearest seed
    for _ in range(1, k):
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


def kmeans(x: np.ndarray, k: int, rng: np.random.Generator, max_iter: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means from a seeded k-means++ start. Returns (centroids (k, D), labels (N,)), the
    labels being the nearest centroid of each row. A cluster that empties keeps its old centroid."""
    x = np.asarray(x, dtype=np.float64)                      # (N, D)
    c = x[kmeans_pp_init(x, k, rng)].copy()                  # (k, D)
    labels = np.argmin(sq_dists(x, c), axis=1)               # (N,)
    for _ in range(max_iter):
        counts = np.bincount(labels, minlength=k)            # (k,)
        order = np.argsort(labels, kind="stable")
        filled = np.flatnonzero(counts)
        sums = np.add.reduceat(x[order], (np.cumsum(counts) - counts)[filled], axis=0)   # (k', D)
        c[filled] = sums / counts[filled, None]
        new = np.argmin(sq_dists(x, c), axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
    return c, labels


def dense_similarity(x: np.ndarray, max_dense: int, strategy: str) -> np.ndarray:
    """(N, N) float32 shifted cosine similarity (1 + cos) / 2, in [0, 1]."""
    if len(x) > max_dense:
        raise ConfigError(
            f"strategy {strategy!r}: a pool of {len(x)} examples is above max_dense={max_dense} (the dense "
            f"N x N similarity would take {len(x) ** 2 * 4 / 2**30:.1f} GiB); raise max_dense if the memory is "
            f"there, or select from a smaller pool (the facility_location strategy itself switches to a "
            f"k-nearest-neighbour graph above max_dense)")
    u = unit(x).astype(np.float32)
    sim = u @ u.T                                            # (N, N)
    sim += 1.0
    sim *= 0.5
    return sim


def facility_location_greedy(sim: np.ndarray, budget: int) -> tuple[np.ndarray, np.ndarray]:
    """Lazy greedy (Minoux 1978) maximisation of f(S) = sum_i max_{j in S} sim[i, j] for a
    symmetric non-negative sim (N, N). A heap holds stale upper bounds on each candidate's marginal
    gain (valid by submodularity); only the top is recomputed, and it is taken once its bound is
    fresh. Exact ties (they happen: float32 gains) go to the lower index, as with np.argmax in a
    plain greedy loop or kcenter_greedy. Returns (indices in pick order, gain at each pick)."""
    n = len(sim)
    cover = np.zeros(n, dtype=np.float64)                    # (N,) max similarity to the chosen set
    gains0 = sim.sum(0, dtype=np.float64)                    # (N,) exact gains of the empty set
    heap = [(-float(g), j, 0) for j, g in enumerate(gains0)]   # (-bound, index, step it is exact at)
    heapq.heapify(heap)
    chosen = np.empty(budget, dtype=np.int64)
    gains = np.empty(budget, dtype=np.float64)
    for k in range(budget):
        while True:
            neg, j, fresh_at = heapq.heappop(heap)
            if fresh_at == k:
                break
            g = float(np.maximum(sim[j] - cover, 0.0).sum())     # sim symmetric: row j is column j
            heapq.heappush(heap, (-g, j, k))
        chosen[k], gains[k] = j, -neg
        np.maximum(cover, sim[j], out=cover)
    return chosen, gains
