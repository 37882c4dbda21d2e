"""k-nearest-neighbour graphs of large pools, and facility location over them.

    .venv/bin/python -m pytest -q tests/test_scale.py      # a few seconds
    .venv/bin/python eval/bench_selection.py               # recall and time at 10k / 100k / 1M x 384

A graph is (indices (N, k) int64, cosine similarities (N, k) float32): row i lists its k most
similar other rows by cosine, by decreasing similarity, ties to the lower index.
  * knn_graph: exact, brute force; N^2 D flops (87-172 s at 100k x 384 on one shared core,
    hours at 1M: eval/results/bench_selection.txt).
  * knn_ivf: approximate, an inverted file (IVF; Sivic & Zisserman, "Video Google", ICCV 2003;
    the coarse quantiser of Jegou et al., "Product quantization for nearest neighbor search",
    TPAMI 2011, without the product codes): the unit rows are split into `nlist` lists by
    k-means, and a row is compared only with the members of the `nprobe` lists whose centroids
    are nearest to it: about nprobe / nlist of the work. Blocked numpy, bounded memory.
  * knn_faiss: faiss's IndexHNSWFlat (Malkov & Yashunin, TPAMI 2018), a navigable small-world
    graph, or knn_ivf's search through faiss's IndexIVFFlat (the same lists; a cross-check).
facility_location_sparse maximises facility location over such a graph; knn_rows and
knn_recall measure how much of the exact graph an approximate one found. Rows are read a block
at a time, so `x` may be any (N, D) array, an np.memmap included.
"""

from __future__ import annotations


import numpy as np

from llm_al.errors import ConfigError
from llm_al.strategies.kernels.kmeans import have_faiss, kmeans_large
from llm_al.strategies.kernels.rows import rows_as


def unit_f32(x: np.ndarray) -> np.ndarray:
    """(b, D) rows scaled to unit norm in float64 then cast, exactly as facility.dense_similarity."""
    x = np.asarray(x, dtype=np.float64)
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def check_k(x: np.ndarray, k: object, who: str) -> int:
    n = len(x)
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= n - 1:
        raise ConfigError(f"{who}: k={k!r} must be an integer in [1, N-1={n - 1}]")
    return int(k)


# ---------------------------------------------------------------------------- top-k merging
def merge_top(cur_i: np.ndarray, cur_s: np.ndarray, sim: np.ndarray, c0: int, axis: int = 1) -> None:
    """Merge a tile of similarities into running top-k lists, in place. cur_i, cur_s (b, k) are
    the lists of b rows (views or copies; -inf marks an empty slot); with axis=1, sim is (b, m)
    and its columns are neighbours c0..c0+m-1; with axis=0 the roles swap (sim.T, without a
    copy). While a row has an empty slot, its lists and the tile are partially sorted together;
    after that only the entries above the row's current k-th similarity are merged."""
    b, k = cur_i.shape
    m = sim.shape[1] if axis == 1 else sim.shape[0]
    thr = cur_s.min(axis=1)                                  # (b,) current k-th similarity
    if np.isneginf(thr).any():                               # a row's first tiles: partial sort
        cat_s = np.concatenate([cur_s, sim if axis == 1 else sim.T], axis=1)   # (b, k + m)
        keep = np.argpartition(cat_s, m, axis=1)[:, -k:]     # positions < k: old entries, else c0 + pos - k
        cur_i[:] = np.where(keep < k, np.take_along_axis(cur_i, np.minimum(keep, k - 1), axis=1), c0 + keep - k)
        cur_s[:] = np.take_along_axis(cat_s, keep, axis=1)
        return
    live = np.flatnonzero((sim.max(axis=1) if axis == 1 else sim.max(axis=0)) > thr)   # rows any entry enters
    if not len(live):
        return
    if axis == 1:
        rr, cc = np.nonzero(sim[live] > thr[live, None])     # the few entries that enter a top-k
        rr = live[rr]
        new_s = sim[rr, cc]
    else:
        cc, rr = np.nonzero(sim[:, live] > thr[None, live])
        rr = live[rr]
        new_s = sim[cc, rr]
    if not len(rr):
        return
    rows = np.unique(rr)                                     # (t,)
    r = np.concatenate([np.repeat(rows, k), rr])
    v = np.concatenate([cur_s[rows].ravel(), new_s])
    i = np.concatenate([cur_i[rows].ravel(), cc + c0])
    order = np.lexsort((i, -v, r))                           # by row, then similarity, then index
    rank = np.arange(len(r)) - np.searchsorted(r[order], r[order])   # position within its row
    keep = order[rank < k]                                   # exactly k per row, rows ascending
    cur_s[rows] = v[keep].reshape(-1, k)
    cur_i[rows] = i[keep].reshape(-1, k)


def sort_rows(top_i: np.ndarray, top_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row by decreasing similarity, then increasing index; int64 indices."""
    order = np.lexsort((top_i, -top_s), axis=1)
    return np.take_along_axis(top_i, order, axis=1).astype(np.int64), np.take_along_axis(top_s, order, axis=1)


# ---------------------------------------------------------------------------- exact
def knn_graph(x: np.ndarray, k: int, block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours by cosine similarity, self excluded: (indices (N, k) int64,
    cosine similarities (N, k) float32), each row by decreasing similarity, ties to the lower
    index (which of several rows tied at the k-th place is kept is arbitrary in the first tile).
    Brute force over (block x block) tiles of U U^T (U the unit rows), upper triangle only, each
    tile merged into the running top-k of its rows and, transposed, of its columns. N^2 D flops;
    memory: a float32 unit copy of x, the (N, k) result and one tile."""
    n, dim = x.shape
    k = check_k(x, k, "knn_graph")
    u = np.empty((n, dim), dtype=np.float32)                 # (N, D) unit rows
    for s in range(0, n, block):
        u[s : s + block] = unit_f32(x[s : s + block])
    top_i = np.zeros((n, k), dtype=np.int64)
    top_s = np.full((n, k), -np.inf, dtype=np.float32)      # -inf: not filled yet
    for qs in range(0, n, block):
        for ds in range(qs, n, block):
            sim = u[qs : qs + block] @ u[ds : ds + block].T  # (bq, bd)
            if qs == ds:
                np.fill_diagonal(sim, -np.inf)               # a row is not its own neighbour
            merge_top(top_i[qs : qs + block], top_s[qs : qs + block], sim, ds)
            if ds != qs:
                merge_top(top_i[ds : ds + block], top_s[ds : ds + block], sim, qs, axis=0)
    return sort_rows(top_i, top_s)


def knn_rows(x: np.ndarray, rows: np.ndarray, k: int, block: int = 16384) -> tuple[np.ndarray, np.ndarray]:
    """Exact neighbours of some rows only: knn_graph(x, k)[0][rows], [1][rows] (up to ties at the
    k-th place), by brute force against all N rows, a block at a time; len(rows) N D flops. For
    measuring an approximate graph's recall where the exact graph is out of reach."""
    k = check_k(x, k, "knn_rows")
    rows = np.asarray(rows, dtype=np.int64)
    uq = unit_f32(rows_as(x, rows))                          # (q, D)
    top_i = np.zeros((len(rows), k), dtype=np.int64)
    top_s = np.full((len(rows), k), -np.inf, dtype=np.float32)
    for s in range(0, len(x), block):
        sim = uq @ unit_f32(x[s : s + block]).T              # (q, b)
        own = np.flatnonzero((rows >= s) & (rows < s + sim.shape[1]))
        sim[own, rows[own] - s] = -np.inf
        merge_top(top_i, top_s, sim, s)
    return sort_rows(top_i, top_s)


def knn_recall(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean over rows of |approx_i & exact_i| / k: the share of true k nearest neighbours found,
    both (N, k) index arrays."""
    hits = 0
    for s in range(0, len(exact), 4096):
        a, e = approx[s : s + 4096], exact[s : s + 4096]
        hits += int((a[:, :, None] == e[:, None, :]).any(axis=2).sum())
    return hits / exact.size


# ---------------------------------------------------------------------------- approximate: IVF
def ivf_centroids(x: np.ndarray, nlist: int, rng: np.random.Generator, backend: str = "numpy") -> np.ndarray:
    """(nlist, D) float32 k-means centroids of the unit rows: kmeans.kmeans_large (greedy k-means++,
    then 10 Lloyd steps) on a uniform sample of 64 rows a list (all rows when N is smaller)."""
    n = len(x)
    m = min(n, 64 * nlist)
    rows = np.sort(rng.choice(n, size=m, replace=False)) if m < n else np.arange(n)
    xs = np.concatenate([unit_f32(rows_as(x, rows[s : s + 4096])) for s in range(0, m, 4096)])   # (m, D)
    cent, _ = kmeans_large(xs, nlist, rng, max_iter=10, sample=m, block=4096, backend=backend)
    return cent


def nearest_lists(uq: np.ndarray, cent: np.ndarray, hi: int) -> np.ndarray:
    """(q, hi) int32: for each unit row of uq, the hi lists with the nearest centroids, nearest
    first (|u - c|^2, the distance k-means assigns by)."""
    d = uq @ cent.T                                          # (q, nlist), |u - c|^2 - |u|^2 = |c|^2 - 2 u.c
    d *= -2.0
    d += np.einsum("ld,ld->l", cent, cent)
    if hi < d.shape[1]:
        part = np.argpartition(d, hi - 1, axis=1)[:, :hi]   # (q, hi) the hi nearest, unordered
        order = np.argsort(np.take_along_axis(d, part, axis=1), axis=1, kind="stable")
        return np.take_along_axis(part, order, axis=1).astype(np.int32)
    return np.argsort(d, axis=1, kind="stable").astype(np.int32)


def ivf_lists(x: np.ndarray, cent: np.ndarray, nprobe: int,
              block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The inverted file: (u (N, D) float32 unit rows grouped by list, perm (N,) the row of x at
    each position of u, ptr (nlist + 1,): list L is u[ptr[L]:ptr[L+1]], probes (N, nprobe) int32:
    the lists each position searches, its own first). A row's list is its nearest centroid."""
    n, dim = x.shape
    probes = np.empty((n, nprobe), dtype=np.int32)          # (N, nprobe) in rows of x
    for s in range(0, n, block):
        probes[s : s + block] = nearest_lists(unit_f32(x[s : s + block]), cent, nprobe)
    perm = np.argsort(probes[:, 0], kind="stable")           # (N,) rows of x, list by list
    ptr = np.r_[0, np.cumsum(np.bincount(probes[:, 0], minlength=len(cent)))]
    probes = probes[perm]                                    # in positions of u
    u = np.empty((n, dim), dtype=np.float32)                 # (N, D) the one unit copy, list order
    for s in range(0, n, block):
        u[s : s + block] = unit_f32(rows_as(x, perm[s : s + block]))
    return u, perm, ptr, probes


def ivf_search(u: np.ndarray, ptr: np.ndarray, queries: np.ndarray, probes: np.ndarray, top_i: np.ndarray,
               top_s: np.ndarray, block: int) -> None:
    """For each query position q and list L in probes[q], merge the similarities of u[q] to L's
    members into q's top-k (top_i, top_s, in positions of u), in place. Probe rank by probe rank,
    list by list: one (queries probing L) x (members of L) product, in tiles of block x block."""
    nlist = len(ptr) - 1
    for r in range(probes.shape[1]):
        order = np.argsort(probes[:, r], kind="stable")      # the queries, grouped by their r-th list
        bounds = np.searchsorted(probes[order, r], np.arange(nlist + 1))
        for lst in np.flatnonzero(np.diff(bounds)):
            q_all = queries[order[bounds[lst] : bounds[lst + 1]]]
            for a in range(0, len(q_all), block):
                q = q_all[a : a + block]                      # (b,) positions in u
                uq, cur_i, cur_s = u[q], top_i[q], top_s[q]   # (b, D), (b, k), (b, k) copies
                for c0 in range(int(ptr[lst]), int(ptr[lst + 1]), block):
                    c1 = min(c0 + block, int(ptr[lst + 1]))
                    sim = uq @ u[c0:c1].T                     # (b, m)
                    own = np.flatnonzero((q >= c0) & (q < c1))
                    sim[own, q[own] - c0] = -np.inf           # not its own neighbour
                    merge_top(cur_i, cur_s, sim, c0)
                top_i[q], top_s[q] = cur_i, cur_s


def ivf_defaults(n: int, nlist: int | None, nprobe: int | None, who: str) -> tuple[int, int]:
    """nlist default: round(sqrt(N)) lists (faiss's guide suggests 4-16 sqrt(N) for search over a
    fixed base; here every row is also a query, and search and list building both cost about
    N^1.5 D at sqrt(N)); nprobe default 8: recall@32 0.9925 at 100k x 384 on the benchmark's
    clustered data, 0.981 with 4 (eval/results/bench_selection.txt)."""
    nlist = max(1, int(round(np.sqrt(n)))) if nlist is None else nlist
    nprobe = min(8, nlist) if nprobe is None else nprobe
    for name, v, hi in (("nlist", nlist, n), ("nprobe", nprobe, nlist)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or not 1 <= v <= hi:
            raise ConfigError(f"{who}: {name}={v!r} must be an integer in [1, {hi}]")
    return int(nlist), int(nprobe)


def knn_ivf(x: np.ndarray, k: int, rng: np.random.Generator, nlist: int | None = None, nprobe: int | None = None,
            block: int = 4096, kmeans_backend: str = "numpy") -> tuple[np.ndarray, np.ndarray]:
    """Approximate knn_graph by an inverted file: same return format; each row's neighbours
    are the best k among the members of the `nprobe` lists whose centroids are nearest to it
    (its own list first), so a true neighbour is missed only when it sits in a list farther away.
    A row that finds fewer than k other rows there is searched again over twice as many lists,
    until it has k.
    Deterministic given rng (it draws the k-means sample; kmeans_backend="numpy" by default, so
    the graph does not depend on whether faiss is installed). About nprobe N^2 D / nlist flops
    for the search plus N nlist D to build the lists. Memory beyond x: one float32 unit copy
    (grouped by list), the (N, k) result with a working copy, (N, nprobe) int32 probes, one
    block x block tile."""
    n, dim = x.shape
    k = check_k(x, k, "knn_ivf")
    nlist, nprobe = ivf_defaults(n, nlist, nprobe, "knn_ivf")
    cent = ivf_centroids(x, nlist, rng, kmeans_backend)     # (nlist, D)
    u, perm, ptr, probes = ivf_lists(x, cent, nprobe, block)
    top_i = np.zeros((n, k), dtype=np.int32 if n < 2**31 else np.int64)   # positions in u
    top_s = np.full((n, k), -np.inf, dtype=np.float32)
    ivf_search(u, ptr, np.arange(n), probes, top_i, top_s, block)
    del probes
    width = nprobe
    while width < nlist:                                     # rows that found fewer than k others:
        short = np.flatnonzero(np.isneginf(top_s.min(axis=1)))   # again from scratch, twice the lists
        if not len(short):
            break
        width = min(nlist, 2 * width)
        top_s[short] = -np.inf
        ivf_search(u, ptr, short, nearest_lists(u[short], cent, width), top_i, top_s, block)
    del u
    assert not np.isneginf(top_s).any(), "knn_ivf: a row has fewer than k neighbours after searching every list"
    out_i = np.empty((n, k), dtype=np.int64)
    out_s = np.empty((n, k), dtype=np.float32)
    for s in range(0, n, block):                             # back to rows of x
        out_i[perm[s : s + block]] = perm[top_i[s : s + block]]
        out_s[perm[s : s + block]] = top_s[s : s + block]
    del top_i, top_s
    for s in range(0, n, block):
        out_i[s : s + block], out_s[s : s + block] = sort_rows(out_i[s : s + block], out_s[s : s + block])
    return out_i, out_s


# ---------------------------------------------------------------------------- approximate: faiss
def knn_faiss(x: np.ndarray, k: int, rng: np.random.Generator, index: str = "hnsw", nlist: int | None = None,
              nprobe: int | None = None, hnsw_m: int = 32, ef_search: int | None = None,
              block: int = 16384) -> tuple[np.ndarray, np.ndarray]:
    """Approximate knn_graph through faiss (Johnson et al., "Billion-scale similarity search with
    GPUs", 2019); same return format. index="hnsw": IndexHNSWFlat with inner product (M = hnsw_m,
    efConstruction 40, efSearch = ef_search or max(2 k, 64)); rng unused; deterministic only on
    one OpenMP thread (insertion runs in parallel). index="ivf": IndexIVFFlat with inner product
    over the lists knn_ivf builds (the same k-means centroids and rng draws, an L2 coarse
    quantiser), so it searches knn_ivf's candidates: a cross-check, far slower on one thread
    (100k x 384, nprobe 8: 359 s against knn_ivf's 46-59 s, separate runs on a busy 2-core
    machine). Each row asks for k + 1 neighbours and drops itself; a row left short is searched
    again with twice the nprobe (ivf) or efSearch (hnsw).
    Memory beyond x: faiss's copy of the unit rows and the (N, k) result."""
    if not have_faiss():
        raise ConfigError("knn_faiss: faiss is not installed (pip install faiss-cpu, the `scale` extra)")
    import faiss

    n, dim = x.shape
    k = check_k(x, k, "knn_faiss")
    if index == "ivf":
        nlist, nprobe = ivf_defaults(n, nlist, nprobe, "knn_faiss")
        cent = ivf_centroids(x, nlist, rng)                  # (nlist, D) as knn_ivf's
        quantizer = faiss.IndexFlatL2(dim)
        quantizer.add(np.ascontiguousarray(cent, dtype=np.float32))
        idx = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        idx.train(cent)                                      # a no-op: the quantiser already holds nlist centroids

        def widen(level: int) -> None:
            idx.nprobe = min(nlist, nprobe * 2**level)
    elif index == "hnsw":
        idx = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        idx.hnsw.efConstruction = 40

        def widen(level: int) -> None:
            idx.hnsw.efSearch = (ef_search or max(2 * k, 64)) * 2**level
    else:
        raise ConfigError(f"knn_faiss: index={index!r} must be 'ivf' or 'hnsw'")
    for s in range(0, n, block):
        idx.add(unit_f32(x[s : s + block]))
    out_i = np.empty((n, k), dtype=np.int64)
    out_s = np.empty((n, k), dtype=np.float32)
    rows, level = np.arange(n), 0
    while len(rows):
        widen(level)
        for s in range(0, len(rows), block):
            r = rows[s : s + block]
            sim, nbr = idx.search(unit_f32(rows_as(x, r)), k + 1)   # (b, k + 1), -1 where none
            drop = np.where((nbr == r[:, None]).any(axis=1), (nbr == r[:, None]).argmax(axis=1), k)
            keep = np.arange(k + 1)[None] != drop[:, None]
            out_i[r] = nbr[keep].reshape(len(r), k)
            out_s[r] = sim[keep].reshape(len(r), k)
        rows = rows[(out_i[rows] < 0).any(axis=1)]
        level += 1
        if len(rows) and level > 40:
            raise RuntimeError(f"knn_faiss: {len(rows)} rows still short of {k} neighbours")
    for s in range(0, n, block):
        out_i[s : s + block], out_s[s : s + block] = sort_rows(out_i[s : s + block], out_s[s : s + block])
    return out_i, out_s


def knn_approx(x: np.ndarray, k: int, rng: np.random.Generator, backend: str = "numpy",
               **params) -> tuple[np.ndarray, np.ndarray]:
    """knn_ivf (backend="numpy") or knn_faiss (backend="faiss"; "auto": faiss when installed)."""
    if backend not in ("auto", "numpy", "faiss"):
        raise ConfigError(f"knn_approx: backend={backend!r} must be one of auto, numpy, faiss")
    if backend == "faiss" or (backend == "auto" and have_faiss()):
        return knn_faiss(x, k, rng, **params)
    return knn_ivf(x, k, rng, **params)


# ---------------------------------------------------------------------------- facility location
