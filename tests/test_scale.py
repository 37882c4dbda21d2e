"""llm_al.scale against the small-pool code it stands in for: kcenter_fast picks what the plain
greedy loop picks, knn_graph is brute force, facility_location_sparse on the full graph is the
dense lazy greedy, kmeans_large finds the clusters diversity.kmeans finds. A few seconds."""

from __future__ import annotations

import numpy as np
import pytest

from llm_al.diversity import dense_similarity, facility_location_greedy, kmeans, unit
from llm_al.errors import BudgetError, ConfigError
from llm_al.scale import facility_location_sparse, have_faiss, kcenter_fast, kmeans_large, knn_graph
from llm_al.strategies import kcenter_greedy

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


@pytest.mark.parametrize("seed", range(3))
def test_facility_location_sparse_on_the_full_graph_is_the_dense_greedy(seed):
    x = blobs(150, 8, 6, seed=seed, unit_norm=False)
    want_idx, want_gain = facility_location_greedy(dense_similarity(x, 20000, "test"), 40)
    idx, gain = facility_location_sparse(knn_graph(x, len(x) - 1, block=64), 40)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_allclose(gain, want_gain, rtol=0, atol=1e-5)   # float32 similarities, summed


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


def test_kmeans_large_is_deterministic_and_checks_arguments():
    x = blobs(500, 6, 4, seed=2)
    a = kmeans_large(x, 4, np.random.default_rng(3), backend="numpy")
    b = kmeans_large(x, 4, np.random.default_rng(3), backend="numpy")
    np.testing.assert_array_equal(a[1], b[1])
    with pytest.raises(ConfigError, match="backend='torch'"):
        kmeans_large(x, 4, np.random.default_rng(0), backend="torch")
    with pytest.raises(ConfigError, match="k=501"):
        kmeans_large(x, 501, np.random.default_rng(0))
