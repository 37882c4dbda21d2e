"""llm_al.strategies.kernels (kcenter, kmeans, knn, facility) against the small-pool code they stand in for: kcenter_fast and
kcenter_torch pick what the plain greedy loop picks, knn_graph is brute force, knn_ivf and
knn_faiss find most of it (all of it when every list is searched), facility_location_sparse on
the full graph is the dense lazy greedy, kmeans_large finds the clusters kmeans finds.
A few seconds."""

from __future__ import annotations

import numpy as np
import pytest

from llm_al.strategies.kernels.facility import dense_similarity, facility_location_greedy, labelled_cover

from llm_al.strategies.kernels.kmeans import kmeans

from llm_al.strategies.kernels.rows import unit
from llm_al.errors import BudgetError, ConfigError
from llm_al.types import Features
from llm_al.strategies.kernels.knn import knn_faiss, knn_graph, knn_ivf, knn_recall, knn_rows
from llm_al.strategies.kernels.facility import facility_location_sparse
from llm_al.strategies.kernels.kmeans import have_faiss, kmeans_large
from llm_al.strategies.kernels.kcenter import kcenter_fast, kcenter_torch
from llm_al.strategies.base import run_strategy
from llm_al.strategies.kernels.kcenter import kcenter_greedy

SMALL = {"hot": 40, "candidates": 8, "block": 64, "chunk": 3}   # every path: epochs, refreshes, compaction


def blobs(n: int, dim: int, clusters: int, seed: int, spread: float = 0.3, unit_norm: bool = True,
          dups: int = 0) -> np.ndarray:
    """(n + dups, dim) float32 Gaussian clusters, optionally unit-norm, with `dups` exact copies of
    random rows shuffled in."""
    g = np.random.default_rng(seed)
    x = g.normal(size=(clusters, dim))[g.integers(clusters, size=n)] + spread * g.normal(size=(n, dim))
    if unit_norm:
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    if dups:
        x = np.concatenate([x, x[g.choice(n, dups)]])[g.permutation(n + dups)]
    return x.astype(np.float32)


def greedy64(x: np.ndarray, budget: int, first: int) -> tuple[np.ndarray, np.ndarray, float]:
    """The plain one-pass-per-pick loop with kcenter_fast's arithmetic (kcenter_greedy's expression
    in float64, rounded to float32). Also returns the smallest relative gap between the farthest
    and the second farthest row over all picks (how close the run came to a tie)."""
    x64 = x.astype(np.float32).astype(np.float64)
    sq = np.einsum("nd,nd->n", x64, x64)
    min_d = np.full(len(x), np.inf, dtype=np.float32)
    chosen, dist, gap, c = [], [np.nan], np.inf, first
    for k in range(budget):
        chosen.append(c)
        np.minimum(min_d, np.maximum(sq + sq[c] - 2.0 * (x64 @ x64[c]), 0.0).astype(np.float32), out=min_d)
        min_d[chosen] = -np.inf
        if k + 1 < budget:
            c = int(np.argmax(min_d))
            dist.append(float(np.sqrt(max(min_d[c], 0.0))))
            top2 = np.partition(min_d, len(x) - 2)[-2:] if len(x) - len(chosen) >= 2 else [0.0, 1.0]
            gap = min(gap, (top2[1] - top2[0]) / max(top2[1], 1e-30))
    return np.array(chosen), np.array(dist), gap


# ---------------------------------------------------------------------------- k-center
CASES = [  # (n, dim, clusters, budget, unit_norm, dups)
    (300, 8, 5, 60, True, 0),            # uniform-ish, small budget
    (800, 32, 20, 300, True, 0),         # clustered, deep budget
    (500, 16, 10, 200, True, 150),       # exact duplicates
    (400, 12, 10, 400, False, 0),        # budget == N, not unit norm
    (120, 4, 3, 120, False, 60),         # budget == N with duplicates
    (2000, 64, 50, 250, True, 0),
]


@pytest.mark.parametrize("params", [{}, SMALL], ids=["defaults", "tiny-blocks"])
@pytest.mark.parametrize("case", CASES, ids=[f"n{c[0]}-d{c[1]}-b{c[3]}{'-dups' if c[5] else ''}" for c in CASES])
def test_kcenter_fast_is_the_greedy_loop(case, params):
    """Bit for bit the plain loop run in kcenter_fast's arithmetic, duplicates and budget == N
    included: the lazy bounds, rounds and cold rows change what is computed, never the picks."""
    n, dim, clusters, budget, unit_norm, dups = case
    x = blobs(n, dim, clusters, seed=n, unit_norm=unit_norm, dups=dups)
    first = n // 3
    want_idx, want_dist, _ = greedy64(x, budget, first)
    idx, dist = kcenter_fast(x, budget, first, **params)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_array_equal(dist, want_dist)        # NaN first, then exactly the same float32 values


@pytest.mark.parametrize("seed", range(6))
def test_kcenter_fast_matches_kcenter_greedy(seed):
    """Same picks as strategies.kcenter_greedy, distances to 1e-5, on unit-norm data without
    near-ties (checked: every pick beat the runner-up by > 1e-5 relative, far above the ~1e-7
    float32 rounding that separates the two evaluations of the same expression)."""
    g = np.random.default_rng(seed)
    n, dim, budget = int(g.integers(200, 1500)), int(g.choice([8, 32, 96])), int(g.integers(20, 120))
    x = blobs(n, dim, int(g.integers(3, 30)), seed, spread=float(g.uniform(0.1, 1.0)))
    first = int(g.integers(n))
    _, _, gap = greedy64(x, budget, first)
    assert gap > 1e-5, f"seed {seed}: test data has a near-tie (relative gap {gap:.2e}); pick another"
    want_idx, want_dist = kcenter_greedy(x, budget, first)
    for params in ({}, SMALL):
        idx, dist = kcenter_fast(x, budget, first, **params)
        np.testing.assert_array_equal(idx, want_idx)
        np.testing.assert_allclose(dist, want_dist, rtol=0, atol=1e-5)


def test_kcenter_fast_duplicates_take_the_lowest_index_copy():
    base = blobs(200, 8, 5, seed=3)
    x = np.concatenate([base, base])                         # row i and row i + 200 are equal
    idx, dist = kcenter_fast(x, 200, 0, **SMALL)
    assert (idx < 200).all()                                 # every row is picked before its copy
    idx, dist = kcenter_fast(x, 400, 0, **SMALL)
    assert sorted(idx.tolist()) == list(range(400)) and (dist[200:] == 0).all()


def test_kcenter_fast_reads_a_memmap(tmp_path):
    x = blobs(3000, 24, 15, seed=7)
    np.save(tmp_path / "x.npy", x)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    want = kcenter_fast(x, 150, 11, **SMALL)
    got = kcenter_fast(mm, 150, 11, **SMALL)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(kcenter_fast(x.astype(np.float64), 150, 11)[0], want[0])   # cast like kcenter_greedy


def test_kcenter_fast_checks_its_arguments():
    x = blobs(10, 3, 2, seed=0)
    with pytest.raises(BudgetError, match="budget of 11 examples from a pool of 10"):
        kcenter_fast(x, 11, 0)
    with pytest.raises(BudgetError):
        kcenter_fast(x, 0, 0)
    with pytest.raises(ConfigError, match="first=10"):
        kcenter_fast(x, 3, 10)
    idx, dist = kcenter_fast(x, 1, 4)
    assert idx.tolist() == [4] and np.isnan(dist).all()


@pytest.mark.parametrize("seed", range(4))
def test_kcenter_torch_matches_kcenter_greedy(seed):
    """CPU torch, small blocks: kcenter_greedy's picks on data without near-ties (checked as in
    test_kcenter_fast_matches_kcenter_greedy), distances to 1e-5. The CUDA path is the same code
    on another device and is not run here (no GPU)."""
    g = np.random.default_rng(100 + seed)
    n, dim, budget = int(g.integers(200, 1500)), int(g.choice([8, 32, 96])), int(g.integers(20, 120))
    x = blobs(n, dim, int(g.integers(3, 30)), 100 + seed, spread=float(g.uniform(0.1, 1.0)))
    first = int(g.integers(n))
    assert greedy64(x, budget, first)[2] > 1e-5, "test data has a near-tie; pick another seed"
    want_idx, want_dist = kcenter_greedy(x, budget, first)
    idx, dist = kcenter_torch(x, budget, first, device="cpu", block=97)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_allclose(dist, want_dist, rtol=0, atol=1e-5)
    assert np.isnan(dist[0])


def test_kcenter_torch_duplicates_budget_n_and_arguments():
    base = blobs(60, 5, 4, seed=3)
    x = np.concatenate([base, base])                         # row i and row i + 60 are equal
    idx, dist = kcenter_torch(x, 120, 0, block=50)
    assert sorted(idx.tolist()) == list(range(120))
    assert len(set((idx[:60] % 60).tolist())) == 60          # each point once before any copy ...
    assert (dist[60:] < 1e-3).all()                          # ... then the copies (which copy first is float32 noise)
    with pytest.raises(BudgetError, match="budget of 121"):
        kcenter_torch(x, 121, 0)
    with pytest.raises(ConfigError, match="first=120"):
        kcenter_torch(x, 3, 120)
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="device='cuda'.*is_available"):
            kcenter_torch(x, 3, 0, device="cuda")


def test_kcenter_strategy_device():
    x = blobs(300, 8, 5, seed=1)
    f = Features(ids=[f"i{i}" for i in range(300)], length=np.ones(300, np.float32), embeddings=x)
    cpu = run_strategy("kcenter", f, 20, np.random.default_rng(0), device="cpu")
    auto = run_strategy("kcenter", f, 20, np.random.default_rng(0))   # below 20,000: numpy either way
    np.testing.assert_array_equal(cpu.indices, auto.indices)
    with pytest.raises(ConfigError, match="device='gpu'.*auto, cpu, cuda"):
        run_strategy("kcenter", f, 5, np.random.default_rng(0), device="gpu")
    for bad in ("cuda:abc", "cuda:", "cuda:0x"):                # were a raw torch RuntimeError
        with pytest.raises(ConfigError, match="is invalid"):
            run_strategy("kcenter", f, 5, np.random.default_rng(0), device=bad)
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="device='cuda' but torch sees no CUDA GPU"):
            run_strategy("kcenter", f, 5, np.random.default_rng(0), device="cuda")
    else:                                                     # pragma: no cover (CI has no GPU)
        gpu = run_strategy("kcenter", f, 20, np.random.default_rng(0), device="cuda")
        np.testing.assert_array_equal(gpu.indices, cpu.indices)


# ---------------------------------------------------------------------------- kNN graph, facility location
@pytest.mark.parametrize("n,k,block", [(300, 7, 64), (257, 256, 100), (500, 32, 1000)])
def test_knn_graph_is_brute_force(n, k, block):
    x = blobs(n, 16, 6, seed=n, unit_norm=False)
    u = unit(x).astype(np.float32)
    sim = u @ u.T                                            # (N, N)
    np.fill_diagonal(sim, -np.inf)
    want = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    idx, s = knn_graph(x, k, block=block)
    assert idx.shape == (n, k) and s.shape == (n, k)
    assert (idx != np.arange(n)[:, None]).all()              # never itself
    np.testing.assert_allclose(s, np.take_along_axis(sim, want, axis=1), atol=1e-6)
    assert np.mean(idx == want) > 0.99                       # order differs only at float32 near-ties
    for row in range(n):                                     # and the neighbour sets agree up to them
        kth = np.sort(sim[row])[-k]
        assert set(idx[row]) ^ set(want[row]) <= set(np.flatnonzero(np.abs(sim[row] - kth) < 1e-6))


def test_knn_graph_checks_k():
    with pytest.raises(ConfigError, match=r"k=5 must be an integer in \[1, N-1=4\]"):
        knn_graph(np.eye(5, dtype=np.float32), 5)


def assert_valid_graph(x: np.ndarray, graph: tuple[np.ndarray, np.ndarray], k: int) -> None:
    """(N, k) neighbours: never the row itself, no repeats, the similarities true and sorted."""
    idx, sim = graph
    n = len(x)
    assert idx.shape == (n, k) and sim.shape == (n, k) and idx.dtype == np.int64 and sim.dtype == np.float32
    assert (idx != np.arange(n)[:, None]).all() and (idx >= 0).all() and (idx < n).all()
    assert all(len(set(row)) == k for row in idx.tolist())
    u = unit(x)
    np.testing.assert_allclose(sim, np.einsum("nd,nkd->nk", u, u[idx]), atol=1e-5)
    assert (np.diff(sim, axis=1) <= 0).all()


def test_knn_ivf_searching_every_list_is_the_exact_graph():
    x = blobs(600, 16, 12, seed=4, unit_norm=False)
    want = knn_graph(x, 9)
    got = knn_ivf(x, 9, np.random.default_rng(0), nlist=20, nprobe=20, block=64)
    assert_valid_graph(x, got, 9)
    assert knn_recall(got[0], want[0]) > 0.999               # only float32 near-ties may differ
    np.testing.assert_allclose(got[1], want[1], atol=1e-6)


def test_knn_ivf_recall_on_clustered_data():
    """4 of 32 lists searched on 40 overlapping clusters (spread 1.0: one list alone holds ~89% of
    the true neighbours, measured): most true neighbours are found, more than with one list."""
    x = blobs(4000, 32, 40, seed=8, spread=1.0)
    exact = knn_graph(x, 16)
    got = knn_ivf(x, 16, np.random.default_rng(0), nlist=32, nprobe=4)
    assert_valid_graph(x, got, 16)
    recall = knn_recall(got[0], exact[0])
    assert recall > 0.95, recall                             # 0.981 measured
    one = knn_recall(knn_ivf(x, 16, np.random.default_rng(0), nlist=32, nprobe=1)[0], exact[0])
    assert one < recall - 0.05, (one, recall)                # probing more lists finds more
    again = knn_ivf(x, 16, np.random.default_rng(0), nlist=32, nprobe=4)
    np.testing.assert_array_equal(again[0], got[0])          # deterministic under rng


def test_knn_ivf_rows_in_tiny_lists_search_on_until_they_have_k():
    x = blobs(300, 8, 5, seed=2)
    got = knn_ivf(x, 10, np.random.default_rng(3), nlist=100, nprobe=1, block=16)   # ~3 rows a list
    assert_valid_graph(x, got, 10)


def test_knn_ivf_with_duplicate_rows():
    x = np.repeat(blobs(20, 6, 3, seed=1), 5, axis=0)       # every row 5 times
    got = knn_ivf(x, 4, np.random.default_rng(0), nlist=5, nprobe=2)
    assert_valid_graph(x, got, 4)
    np.testing.assert_allclose(got[1], 1.0, atol=1e-6)       # its 4 copies are its nearest


@pytest.mark.skipif(not have_faiss(), reason="faiss not installed")
def test_knn_faiss_ivf_searches_what_knn_ivf_searches_and_hnsw_finds_most():
    x = blobs(3000, 24, 30, seed=6, spread=0.4)
    exact = knn_graph(x, 12)
    ivf = knn_ivf(x, 12, np.random.default_rng(1), nlist=30, nprobe=3)
    fivf = knn_faiss(x, 12, np.random.default_rng(1), index="ivf", nlist=30, nprobe=3)
    for g in (ivf, fivf):
        assert_valid_graph(x, g, 12)
    assert knn_recall(fivf[0], ivf[0]) > 0.99                # same lists, same candidates
    full = knn_faiss(x, 12, np.random.default_rng(1), index="ivf", nlist=30, nprobe=30)
    assert knn_recall(full[0], exact[0]) > 0.999
    hnsw = knn_faiss(x, 12, np.random.default_rng(1), index="hnsw")
    assert_valid_graph(x, hnsw, 12)
    assert knn_recall(hnsw[0], exact[0]) > 0.95


def test_knn_rows_are_the_exact_graph_rows_and_recall_counts_overlap():
    x = blobs(500, 12, 8, seed=9)
    want = knn_graph(x, 7)
    rows = np.array([0, 3, 250, 499])
    got = knn_rows(x, rows, 7, block=64)
    np.testing.assert_array_equal(got[0], want[0][rows])
    np.testing.assert_allclose(got[1], want[1][rows], atol=1e-6)
    assert knn_recall(np.array([[1, 2], [5, 6]]), np.array([[2, 9], [7, 8]])) == 0.25


def test_approximate_graphs_check_their_arguments():
    x = blobs(50, 4, 3, seed=0)
    with pytest.raises(ConfigError, match="nlist=51"):
        knn_ivf(x, 3, np.random.default_rng(0), nlist=51)
    with pytest.raises(ConfigError, match=r"nprobe=6 must be an integer in \[1, 5\]"):
        knn_ivf(x, 3, np.random.default_rng(0), nlist=5, nprobe=6)
    with pytest.raises(ConfigError, match="k=50"):
        knn_ivf(x, 50, np.random.default_rng(0))
    if have_faiss():
        with pytest.raises(ConfigError, match="index='flat'"):
            knn_faiss(x, 3, np.random.default_rng(0), index="flat")


@pytest.mark.parametrize("seed", range(3))
def test_facility_location_sparse_on_the_full_graph_is_the_dense_greedy(seed):
    x = blobs(150, 8, 6, seed=seed, unit_norm=False)
    want_idx, want_gain = facility_location_greedy(dense_similarity(x, 20000, "test"), 40)
    idx, gain = facility_location_sparse(knn_graph(x, len(x) - 1, block=64), 40)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_allclose(gain, want_gain, rtol=0, atol=1e-5)   # float32 similarities, summed


def test_facility_location_sparse_on_the_full_graph_is_the_dense_greedy_from_a_labelled_cover():
    x = blobs(150, 8, 6, seed=4, unit_norm=False)
    cover = labelled_cover(x, blobs(30, 8, 6, seed=5, unit_norm=False))     # (N,) a labelled set's coverage
    want_idx, want_gain = facility_location_greedy(dense_similarity(x, 20000, "test"), 40, cover)
    idx, gain = facility_location_sparse(knn_graph(x, len(x) - 1, block=64), 40, cover)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_allclose(gain, want_gain, rtol=0, atol=1e-5)
    plain, _ = facility_location_greedy(dense_similarity(x, 20000, "test"), 40)
    assert plain.tolist() != idx.tolist()                    # the cover changed the picks


def test_facility_location_sparse_with_few_neighbours_covers_each_cluster():
    g = np.random.default_rng(5)
    truth = g.integers(8, size=400)
    x = (np.eye(8, 16)[truth] + 0.05 * g.normal(size=(400, 16))).astype(np.float32)
    idx, gain = facility_location_sparse(knn_graph(x, 10), 8)
    assert sorted(truth[idx].tolist()) == list(range(8))    # one representative per cluster
    assert np.all(np.diff(gain) <= 1e-9)                     # submodular: gains never grow


# ---------------------------------------------------------------------------- k-means
BACKENDS = ["numpy", pytest.param("faiss", marks=pytest.mark.skipif(not have_faiss(), reason="faiss not installed"))]


@pytest.mark.parametrize("backend", BACKENDS)
def test_kmeans_large_finds_well_separated_clusters(backend):
    g = np.random.default_rng(0)
    truth = g.integers(12, size=3000)
    x = (6.0 * g.normal(size=(12, 20))[truth] + g.normal(size=(3000, 20))).astype(np.float32)
    c, labels = kmeans_large(x, 12, np.random.default_rng(1), max_iter=20, sample=1000, block=500, backend=backend)
    _, ref = kmeans(x, 12, np.random.default_rng(1))
    for lab in (labels, ref):                                # both recover the partition exactly
        pairs = set(zip(truth.tolist(), lab.tolist()))
        assert len(pairs) == 12 and len({t for t, _ in pairs}) == 12 and len({q for _, q in pairs}) == 12
    assert c.shape == (12, 20) and labels.shape == (3000,)
    inertia = ((x - c[labels]) ** 2).sum(1).mean()
    ref_c = np.stack([x[ref == j].mean(0) for j in range(12)])
    assert inertia <= 1.01 * ((x - ref_c[ref]) ** 2).sum(1).mean()   # centroids fit on a 1000-row sample


def test_kmeans_with_fixed_centres_puts_its_centroids_where_they_leave_the_data_uncovered():
    g = np.random.default_rng(3)
    truth = np.repeat(np.arange(6), 20)
    x = np.eye(6, 8)[truth] + 0.05 * g.normal(size=(120, 8))
    fixed = np.eye(6, 8)[[0, 1, 2]] + 0.05 * g.normal(size=(3, 8))     # centres already on clusters 0-2
    c, labels = kmeans(x, 3, np.random.default_rng(0), fixed=fixed)
    assert sorted(np.argmax(c, axis=1).tolist()) == [3, 4, 5]
    assert np.all(labels[truth < 3] == -1) and np.all(labels[truth >= 3] >= 0)
    plain = kmeans(x, 3, np.random.default_rng(0))                      # without: the plain k-means
    np.testing.assert_array_equal(plain[1], kmeans(x, 3, np.random.default_rng(0), fixed=np.empty((0, 8)))[1])


def test_kmeans_large_is_deterministic_and_checks_arguments():
    x = blobs(500, 6, 4, seed=2)
    a = kmeans_large(x, 4, np.random.default_rng(3), backend="numpy")
    b = kmeans_large(x, 4, np.random.default_rng(3), backend="numpy")
    np.testing.assert_array_equal(a[1], b[1])
    with pytest.raises(ConfigError, match="backend='torch'"):
        kmeans_large(x, 4, np.random.default_rng(0), backend="torch")
    with pytest.raises(ConfigError, match="k=501"):
        kmeans_large(x, 501, np.random.default_rng(0))
