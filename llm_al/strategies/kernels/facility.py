"""Facility location, maximised by lazy greedy (Minoux 1978): on a dense (1 + cos) / 2 similarity
(`dense_similarity`, `facility_location_greedy`, small pools) and on a k-nearest-neighbour graph
(`facility_location_sparse`, graphs from kernels/knn.py), which with the full graph makes the
dense picks (tests/test_scale.py).
"""

from __future__ import annotations

import heapq

import numpy as np

from llm_al.errors import BudgetError, ConfigError
from llm_al.strategies.kernels.rows import max_cosine, unit


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


def labelled_cover(x: np.ndarray, labelled: np.ndarray | None) -> np.ndarray | None:
    """(N,) float64 max over the labelled rows of (1 + cos) / 2, dense_similarity's units: how well
    each candidate is already represented; None when nothing is labelled."""
    if labelled is None:
        return None
    sim = max_cosine(x, labelled)                            # (N,) float32
    sim += 1.0
    sim *= 0.5
    return sim.astype(np.float64)


def facility_location_greedy(sim: np.ndarray, budget: int,
                             cover: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Lazy greedy (Minoux 1978) maximisation of f(S) = sum_i max_{j in S} sim[i, j] for a
    symmetric non-negative sim (N, N). A heap holds stale upper bounds on each candidate's marginal
    gain (valid by submodularity); only the top is recomputed, and it is taken once its bound is
    fresh. Exact ties (they happen: float32 gains) go to the lower index, as with np.argmax in a
    plain greedy loop or kcenter_greedy. Returns (indices in pick order, gain at each pick).
    `cover` (N,), when given, is each row's similarity to an already-chosen set outside sim (the
    labelled examples, labelled_cover): the objective becomes f(S | L), max over S and L."""
    n = len(sim)
    if cover is None:
        cover = np.zeros(n, dtype=np.float64)                # (N,) max similarity to the chosen set
        gains0 = sim.sum(0, dtype=np.float64)                # (N,) exact gains of the empty set
    else:
        cover = np.array(cover, dtype=np.float64)
        gains0 = np.concatenate([np.maximum(sim[s : s + 1024] - cover, 0.0).sum(1)    # rows = columns
                                 for s in range(0, n, 1024)])
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


def facility_location_sparse(knn: tuple[np.ndarray, np.ndarray], budget: int,
                             cover: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Lazy-greedy facility location (Minoux 1978) on a kNN graph: maximise
    f(S) = sum_i max_{j in S} sim(i, j), sim = (1 + cos) / 2 as in diversity.facility_location,
    where sim(i, j) counts only when j is among i's neighbours or j = i (sim(i, i) = 1, unit rows);
    the sparse facility location of Wei et al. ("Submodularity in data subset selection and
    active learning", ICML 2015) and of submodlib. The gain of j is 1 - cover_j (clipped at 0)
    plus, over the rows i listing j, max(0, sim(i, j) - cover_i). With k = N - 1 (the full graph)
    this is facility_location_greedy on the dense matrix, ties to the lower index.
    `cover` (N,), when given, starts each row's coverage at its similarity to the labelled
    examples (labelled_cover; exact, not through the graph), as in facility_location_greedy.
    Returns (indices in pick order, gain at each pick). Memory: ~20 bytes an edge (N k edges)
    plus a heap of N entries."""
    nbr, cos = knn                                           # (N, k), (N, k)
    n, k = nbr.shape
    if not isinstance(budget, (int, np.integer)) or not 0 < budget <= n:
        raise BudgetError(int(budget), n)
    flat = nbr.ravel()
    w_rows = (cos.ravel().astype(np.float32) + np.float32(1.0)) * np.float32(0.5)   # (N k,) as dense_similarity rounds
    if cover is None:
        cover = np.zeros(n, dtype=np.float64)                # (N,) max similarity to the chosen set
        gains0 = 1.0 + np.bincount(flat, weights=w_rows, minlength=n)   # (N,) float64, summed in row order
    else:
        cover = np.array(cover, dtype=np.float64)
        over = np.maximum(w_rows - np.repeat(cover, k), 0.0)   # (N k,) what each edge would add to its row
        gains0 = np.maximum(1.0 - cover, 0.0) + np.bincount(flat, weights=over, minlength=n)
    order = np.argsort(flat, kind="stable")                  # (N k,) in-edges of each j, rows ascending
    w = w_rows[order]                                        # (N k,) sim(i, j)
    del w_rows
    src = (order // k).astype(np.int32 if n < 2**31 else np.int64)   # (N k,) the row i that lists j
    del order
    ptr = np.r_[0, np.cumsum(np.bincount(flat, minlength=n))]   # (N + 1,)
    heap = [(-float(g), j, 0) for j, g in enumerate(gains0)]
    heapq.heapify(heap)
    chosen = np.empty(budget, dtype=np.int64)
    gains = np.empty(budget, dtype=np.float64)
    for step in range(budget):
        while True:
            neg, j, fresh_at = heapq.heappop(heap)
            if fresh_at == step:
                break
            i, wj = src[ptr[j] : ptr[j + 1]], w[ptr[j] : ptr[j + 1]]
            g = max(0.0, 1.0 - cover[j]) + float(np.maximum(wj - cover[i], 0.0).sum())
            heapq.heappush(heap, (-g, j, step))
        chosen[step], gains[step] = j, -neg
        i, wj = src[ptr[j] : ptr[j + 1]], w[ptr[j] : ptr[j + 1]]
        cover[i] = np.maximum(cover[i], wj)
        cover[j] = max(cover[j], 1.0)
    return chosen, gains
