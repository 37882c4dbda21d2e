"""Row access shared by the kernels: rows of any (N, D) array (an np.memmap included) read a block at a
time as float32, squared norms and distances, unit rows, the t largest values, and a BLAS thread
limit for the small matrix products of the lazy loops.
"""

from __future__ import annotations

import contextlib

import numpy as np


def rows_as(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(len(rows), D) float32 copy of x[rows]; a slice when rows are consecutive (memmap-friendly)."""
    if len(rows) and int(rows[-1]) - int(rows[0]) + 1 == len(rows) and (np.diff(rows) == 1).all():
        return np.asarray(x[int(rows[0]) : int(rows[-1]) + 1], dtype=np.float32)
    return np.asarray(x[rows], dtype=np.float32)


def sq_norms(x: np.ndarray, block: int) -> np.ndarray:
    """(N,) float64 squared norms of the float32 rows."""
    sq = np.empty(len(x))
    for s in range(0, len(x), block):
        xb = np.asarray(x[s : s + block], dtype=np.float32).astype(np.float64)   # (b, D)
        sq[s : s + block] = np.einsum("nd,nd->n", xb, xb)
    return sq


def blas_threads_limit(threads: int | None) -> contextlib.AbstractContextManager:
    """Limit BLAS to `threads` threads inside a `with` block (threadpoolctl, which scikit-learn
    brings; a no-op when it is missing or threads is None)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threads = None
    return contextlib.nullcontext() if threads is None else threadpool_limits(threads, user_api="blas")


def top_t(v: np.ndarray, t: int) -> tuple[np.ndarray, float, int]:
    """Positions of the t largest values of v (ties: lower position first), ascending; and the
    bound on the rest: (their max, the lowest position holding it) or (-inf, len(v))."""
    n = len(v)
    if t >= n:
        return np.arange(n), -np.inf, n
    part = np.argpartition(v, (n - t - 1, n - t))
    edge = v[part[n - t]]                                    # smallest value kept
    above = part[n - t :][v[part[n - t :]] > edge]
    tied = np.flatnonzero(v == edge)
    need = t - len(above)
    pos = np.sort(np.concatenate([above, tied[:need]]))
    if need < len(tied):
        return pos, float(edge), int(tied[need])
    tau = v[part[n - t - 1]]
    return pos, float(tau), int(np.flatnonzero(v == tau)[0])


def unit(x: np.ndarray) -> np.ndarray:
    """(N, D) rows scaled to unit L2 norm (zero rows stay zero), as a new float64 array. Divided in
    place in that copy: one (N, D) float64 array at peak, not two (3 GB less at 1M x 384)."""
    out = np.array(x, dtype=np.float64)                      # always a copy: the caller's x is untouched
    for a in range(0, len(out), 1 << 16):                    # norm's x*x temporary, a block at a time
        block = out[a: a + (1 << 16)]
        block /= np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)
    return out


def max_cosine(x: np.ndarray, y: np.ndarray, block: int = 1 << 24) -> np.ndarray:
    """(N,) float32: the largest cosine similarity of each row of x (N, D) to a row of y (L, D),
    L >= 1, from float32 unit rows (scaled in float64 first, as facility.dense_similarity), a block
    of x at a time (at most `block` similarities in memory). How close each candidate is to the
    labelled set."""
    v = unit(y).astype(np.float32)                           # (L, D)
    out = np.empty(len(x), dtype=np.float32)
    step = max(1, block // len(v))
    for s in range(0, len(x), step):
        u = unit(np.asarray(x[s : s + step])).astype(np.float32)   # (b, D)
        out[s : s + step] = (u @ v.T).max(axis=1)
    return out


def sq_dists(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """(N, K) squared Euclidean distances between rows of x (N, D) and c (K, D)."""
    d = np.einsum("nd,nd->n", x, x)[:, None] + np.einsum("kd,kd->k", c, c)[None] - 2.0 * (x @ c.T)
    return np.maximum(d, 0.0)
