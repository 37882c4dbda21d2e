"""Benchmark of llm_al.strategies.kernels: selection at 10k, 100k and 1M embeddings against the plain code.

    .venv/bin/python eval/bench_selection.py                  # ~35 min on 2 busy CPU cores; ~2 GB of temp disk
    .venv/bin/python eval/bench_selection.py --sizes 1000000  # one size only: printed, the results file kept

Data: N x 384 float32 unit vectors from a mixture of 1000 Gaussian clusters (means uniform on the
sphere, Dirichlet(2) cluster weights, per-cluster noise 0.03-0.06 a dimension, so a row's cosine
to its cluster mean is 0.65-0.86), seed 0, written once to a .npy file per N. Each measurement
runs in a child process that loads the whole array into memory first: "peak MB" is the child's
peak RSS (VmHWM) minus its peak right after loading, i.e. memory beyond the embeddings.
Compared in the same run, one measurement each:
  * k-center, budget 500: the plain loop (one (N, D) matvec per pick, strategies.kcenter_greedy)
    vs kcenter.kcenter_fast and kcenter.kcenter_torch on CPU torch, and whether their picks agree;
    at 1M also kcenter_fast on float16-rounded rows (how soon float16 changes the picks);
  * k-means, k = 500, 5 Lloyd steps: diversity.kmeans (dense float64, k-means++ over all rows)
    vs kmeans.kmeans_large (numpy and faiss backends), with the inertia each reaches;
  * facility location, budget 500: dense (diversity, N x N; 10k) vs a 32-NN graph + the sparse
    lazy greedy (facility.facility_location_sparse), the graph exact (knn.knn_graph; up to 100k) or
    approximate (knn.knn_ivf at every N, nprobe 8 and at 100k also 4; faiss HNSW at 100k), with
    each approximate graph's recall@32 against the exact one (at 1M: against the exact neighbours
    of 1000 sampled rows, knn.knn_rows) and the dense objective of its picks relative to the
    best reference the run has (dense picks at 10k, exact-graph picks at 100k, a uniform random
    500 at 1M, where nothing better is affordable);
  * DEITA threshold greedy (strategies.run_strategy "deita", by=loss with Gamma losses) at 100k
    and 1M: one (N, D) float64 matvec per accepted pick.
Every child runs BLAS, OpenMP and torch on THREADS = 1 thread. This 2-core machine is shared, and there a
multithreaded BLAS call waits for the second core, ~8 ms a call (measured under a load of ~4:
256 products of 256 x 64 rows took 2.0 s on 2 threads, 37 ms on one), which swamps any method
making many small calls and says more about the neighbours than about the code. The plain k-center
loop is memory-bound (at 1M, one 1.5 GB pass a pick) and is also timed on 2 threads at 1M.
The printed report is also written to eval/results/bench_selection.txt.

Loss-based selection on 1M given losses (`--loss-only` runs just this part, ~1 min, and replaces
its section of the results file, keeping the rest):

    .venv/bin/python eval/bench_selection.py --loss-only

Data: 1M float32 losses ~ Gamma(2, 1) and a (1M, 4) Min-K% array, seed 0 (continuous, so no ties).
Through strategies.run_strategy on a Features holding only ids, length (NaN) and the one feature:
perplexity band=high / middle / low and min_k (k=0.2, unfamiliar), at budgets 500 and 100,000,
each against a plain numpy baseline that must pick the same set (argsort; argpartition for the
two ends). "peak MB" is again memory beyond the loaded inputs (the Features object included).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from llm_al.io import write_text

DIM, CLUSTERS, SEED, BUDGET, K_MEANS, ITERS, KNN, RECALL_ROWS = 384, 1000, 0, 500, 500, 5, 32, 1000
THREADS = 1   # BLAS / OpenMP threads in every child (see the module docstring)
SIZES = (10_000, 100_000, 1_000_000)
RESULT = Path(__file__).parent / "results" / "bench_selection.txt"


def write_mixture(path: Path, n: int, block: int = 100_000) -> None:
    """Seeded mixture of Gaussian clusters on the unit sphere, written a block at a time."""
    rng = np.random.default_rng(SEED)
    means = rng.standard_normal((CLUSTERS, DIM), dtype=np.float32)
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    weights = rng.dirichlet(np.full(CLUSTERS, 2.0))
    spread = rng.uniform(0.03, 0.06, CLUSTERS).astype(np.float32)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, DIM))
    for s in range(0, n, block):
        lab = rng.choice(CLUSTERS, size=min(block, n - s), p=weights)
        xb = rng.standard_normal((len(lab), DIM), dtype=np.float32) * spread[lab, None] + means[lab]
        out[s : s + len(lab)] = xb / np.linalg.norm(xb, axis=1, keepdims=True)
    out.flush()


def plain_kcenter(x: np.ndarray, budget: int, first: int) -> tuple[np.ndarray, np.ndarray]:
    """The straightforward loop: one (N, D) matvec per pick (the body of strategies.kcenter_greedy)."""
    sq = np.einsum("nd,nd->n", x, x)                         # (N,)
    min_d = np.full(len(x), np.inf, dtype=np.float32)
    chosen = np.empty(budget, dtype=np.int64)
    dist = np.full(budget, np.nan)
    c = first
    for k in range(budget):
        chosen[k] = c
        np.minimum(min_d, np.maximum(sq + sq[c] - 2.0 * (x @ x[c]), 0.0), out=min_d)
        min_d[chosen[: k + 1]] = -np.inf
        if k + 1 < budget:
            c = int(np.argmax(min_d))
            dist[k + 1] = float(np.sqrt(max(min_d[c], 0.0)))
    return chosen, dist


def inertia(x: np.ndarray, c: np.ndarray, labels: np.ndarray) -> float:
    """Mean squared distance of every row to its centroid, in blocks."""
    return float(sum(((x[s : s + 65536] - c[labels[s : s + 65536]]) ** 2).sum(dtype=np.float64)
                     for s in range(0, len(x), 65536)) / len(x))


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM). Not ru_maxrss: Linux carries that across
    fork + exec, so a child would start from the parent's peak."""
    status = Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024


def load(path: str) -> np.ndarray:
    """np.load without its transient second copy (which would hide up to N x D x 4 bytes of peak)."""
    with open(path, "rb") as f:
        read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        shape, fortran, dtype = read_header[np.lib.format.read_magic(f)](f)
        x = np.empty(shape, dtype=dtype, order="F" if fortran else "C")
        f.readinto(memoryview(x).cast("B"))
    return x


def child(task: str, data: str, out: str) -> None:
    """Run one measurement in this process and print a JSON line."""
    from llm_al.strategies.kernels import facility, kcenter, kmeans, knn

    x = load(data)                                           # (N, D) float32, fully in memory
    rng = np.random.default_rng(SEED)
    info: dict = {}
    graph = None
    if task == "kcenter_torch":
        import torch

        torch.set_num_threads(THREADS)
    if task == "kcenter_fast16":                             # float16 embeddings, read as float32
        for s in range(0, len(x), 65536):
            x[s : s + 65536] = x[s : s + 65536].astype(np.float16)
    if task == "deita":                                      # the Features `llm-al select` would hold
        from llm_al.types import Features
        from llm_al.strategies.base import run_strategy

        feats = Features(ids=[f"id{i}" for i in range(len(x))], length=np.full(len(x), np.nan, np.float32),
                         loss=rng.gamma(2.0, 1.0, len(x)).astype(np.float32), embeddings=x)
    base = peak_rss_mb()
    start = time.perf_counter()
    if task == "kcenter_plain":
        idx, dist = plain_kcenter(x, BUDGET, 0)
    elif task in ("kcenter_fast", "kcenter_fast16"):
        idx, dist = kcenter.kcenter_fast(x, BUDGET, 0)
    elif task == "kcenter_torch":
        idx, dist = kcenter.kcenter_torch(x, BUDGET, 0, device="cpu")
    elif task == "kmeans_dense":
        c, labels = kmeans.kmeans(x, K_MEANS, rng, max_iter=ITERS)
    elif task in ("kmeans_numpy", "kmeans_faiss"):
        c, labels = kmeans.kmeans_large(x, K_MEANS, rng, max_iter=ITERS, backend=task.split("_")[1])
    elif task == "fl_dense":
        idx, _ = facility.facility_location_greedy(facility.dense_similarity(x, len(x), "bench"), BUDGET)
    elif task.startswith("fl_"):                             # fl_knn (exact), fl_ivf, fl_ivf<nprobe>, fl_hnsw
        kind = task[3:]
        if kind == "knn":
            graph = knn.knn_graph(x, KNN)
        elif kind == "hnsw":
            graph = knn.knn_faiss(x, KNN, rng, index="hnsw")
        else:
            graph = knn.knn_ivf(x, KNN, rng, nprobe=int(kind[3:]) if kind[3:] else None)
        info["knn_seconds"] = time.perf_counter() - start
        idx, _ = facility.facility_location_sparse(graph, BUDGET)
    elif task == "knn_rows":                                 # exact neighbours of RECALL_ROWS sampled rows
        rows = np.sort(rng.choice(len(x), RECALL_ROWS, replace=False))
        exact = knn.knn_rows(x, rows, KNN)
    elif task == "deita":
        sel = run_strategy("deita", feats, BUDGET, rng)
        idx = sel.indices
        info["fill"] = int((sel.scores >= 0.9).sum())        # picks that did not pass the threshold
    seconds = time.perf_counter() - start
    peak = peak_rss_mb()
    if task.startswith("kcenter"):
        np.save(out, np.stack([idx.astype(np.float64), dist]))
    if task.startswith("kmeans"):
        info["inertia"] = inertia(x, np.asarray(c, dtype=np.float32), labels)
    if task.startswith("fl") or task == "deita":
        np.save(out, idx)
    if graph is not None:
        np.save(out + ".graph.npy", graph[0])
    if task == "knn_rows":
        np.save(out, np.column_stack([rows, exact[0]]))
    print(json.dumps({"seconds": seconds, "peak_mb": peak - base, "loaded_mb": base, **info}))


# ---------------------------------------------------------------------------- loss-based selection
LOSS_N, LOSS_BUDGETS = 1_000_000, (500, 100_000)
LOSS_METHODS = {   # task -> (strategy spec, baseline description)
    "high": ("perplexity:band=high", "np.argsort(-loss)[:budget]"),
    "middle": ("perplexity:band=middle", "budget nearest the median rank (argsort)"),
    "low": ("perplexity:band=low", "np.argsort(loss)[:budget]"),
    "min_k": ("min_k:k=0.2", "np.argsort(min_k[:, 1])[:budget]"),
}
LOSS_HEADER = "== loss-based selection on given losses =="


def write_losses(path: Path) -> None:
    rng = np.random.default_rng(SEED)
    loss = rng.gamma(2.0, 1.0, LOSS_N).astype(np.float32)                                   # (N,)
    min_k = -np.sort(rng.gamma(2.0, 1.0, (LOSS_N, 4)), axis=1)[:, ::-1].astype(np.float32)  # (N, 4)
    np.savez(path, loss=loss, min_k=min_k)


def baseline_picks(kind: str, loss: np.ndarray, min_k: np.ndarray, budget: int, how: str) -> np.ndarray:
    """The plain numpy answer each strategy must match (as a set)."""
    if kind == "middle":
        ranks = np.empty(len(loss), dtype=np.int64)
        ranks[np.argsort(loss, kind="stable")] = np.arange(len(loss))
        return np.argsort(np.abs(ranks - (len(loss) - 1) / 2), kind="stable")[:budget]
    key = {"high": -loss, "low": loss, "min_k": min_k[:, 1]}[kind]
    if how == "argpartition":
        return np.argpartition(key, budget - 1)[:budget]
    return np.argsort(key, kind="stable")[:budget]


def loss_child(task: str, data: str, out: str) -> None:
    """One loss-based measurement: `strategy:KIND:BUDGET` or `argsort|argpartition:KIND:BUDGET`."""
    from llm_al.types import Features
    from llm_al.strategies.base import run_strategy
    from llm_al.config import parse_strategy

    how, kind, budget = task.split(":")
    budget = int(budget)
    with np.load(data) as z:
        loss, min_k = z["loss"], z["min_k"]
    if how == "strategy":        # only the feature the strategy reads, as `llm-al select` would hold it
        features = Features(ids=[f"id{i}" for i in range(len(loss))], length=np.full(len(loss), np.nan, np.float32),
                            **({"min_k": min_k} if kind == "min_k" else {"loss": loss}))
    base = peak_rss_mb()
    start = time.perf_counter()
    if how == "strategy":
        name, params = parse_strategy(LOSS_METHODS[kind][0])
        idx = run_strategy(name, features, budget, np.random.default_rng(SEED), **params).indices
    else:
        idx = baseline_picks(kind, loss, min_k, budget, how)
    seconds = time.perf_counter() - start
    peak = peak_rss_mb()
    np.save(out, np.asarray(idx, dtype=np.int64))
    print(json.dumps({"seconds": seconds, "peak_mb": peak - base, "loaded_mb": base}))


def loss_section(tmp: str) -> list[str]:
    """Time and memory of loss-based selection on 1M given losses vs numpy; the report lines."""
    lines = [LOSS_HEADER]
    data = Path(tmp) / "losses.npz"
    write_losses(data)
    lines.append(f"data: {LOSS_N:,} losses ~ Gamma(2, 1) float32 and a ({LOSS_N:,}, 4) Min-K% array, seed {SEED}; "
                 f"one run each, BLAS/OpenMP on {THREADS} thread(s); peak MB = peak RSS beyond the loaded inputs")
    lines.append(f"{'strategy':<24} {'budget':>8}  {'method':<44} {'seconds':>8} {'peak MB':>8}  result")
    for kind, (spec, baseline) in LOSS_METHODS.items():
        for budget in LOSS_BUDGETS:
            r = run_child(f"strategy:{kind}:{budget}", data, Path(tmp) / "s.npy", child_fn="--loss-child")
            picks = set(np.load(Path(tmp) / "s.npy").tolist())
            lines.append(f"{spec:<24} {budget:>8,}  {'strategies.run_strategy':<44} {r['seconds']:>8.2f} "
                         f"{r['peak_mb']:>8.0f}")
            for how in ("argsort", "argpartition") if kind != "middle" else ("argsort",):
                b = run_child(f"{how}:{kind}:{budget}", data, Path(tmp) / "b.npy", child_fn="--loss-child")
                same = picks == set(np.load(Path(tmp) / "b.npy").tolist())
                label = baseline if how == "argsort" else f"np.argpartition (top-{budget:,}, unordered)"
                lines.append(f"{'':<24} {budget:>8,}  {label:<44} {b['seconds']:>8.2f} {b['peak_mb']:>8.0f}  "
                             f"same set: {same}; strategy / this: {r['seconds'] / max(b['seconds'], 1e-9):.1f}x")
    return lines


def loss_only() -> None:
    """Run only the loss-based part and put its section into the results file (the rest kept)."""
    with tempfile.TemporaryDirectory(prefix="bench-selection-loss-") as tmp:
        head = [f"(loss part run {time.strftime('%Y-%m-%d %H:%M')}; load average {os.getloadavg()[0]:.1f}; "
                f"machine: {machine()})"]
        lines = loss_section(tmp)
    lines = lines[:1] + head + lines[1:] + [f"load average at end: {os.getloadavg()[0]:.1f} (1 min)"]
    print("\n".join(lines))
    old = RESULT.read_text(encoding="utf-8") if RESULT.exists() else ""
    kept = old.split(LOSS_HEADER)[0].rstrip("\n")
    write_text(RESULT, (kept + "\n\n" if kept else "") + "\n".join(lines) + "\n")
    print(f"written to {RESULT}")


def run_child(task: str, data: Path, out: Path, threads: int = THREADS, child_fn: str = "--child") -> dict:
    env = {**os.environ, **dict.fromkeys(("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"), str(threads))}
    res = subprocess.run([sys.executable, __file__, child_fn, task, str(data), str(out)], capture_output=True,
                         text=True, env=env, check=False)
    if res.returncode:
        raise RuntimeError(f"{task} on {data.name} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def divergence(x: np.ndarray, plain: np.ndarray, fast: np.ndarray, step: int) -> str:
    """Where two k-center runs part: the float64 distance of each one's pick to the shared picks."""
    chosen = np.asarray(x[np.sort(plain[:step])], dtype=np.float64)
    d = [float(np.sqrt(((chosen - np.asarray(x[i], dtype=np.float64)) ** 2).sum(1).min()))
         for i in (plain[step], fast[step])]
    return (f"{'':>30}pick {step}: plain took row {plain[step]} at {d[0]:.9f}, kcenter_fast row {fast[step]} at "
            f"{d[1]:.9f} (float64 distances; relative difference {(d[1] - d[0]) / d[0]:+.1e}): a tie below float32 "
            f"resolution, after which the runs differ")


def dense_objective(x: np.ndarray, picks: np.ndarray) -> float:
    """Facility-location value sum_i max_{j in picks} (1 + cos(i, j)) / 2 over all rows, in blocks."""
    from llm_al.strategies.kernels.knn import unit_f32

    p = unit_f32(x[np.sort(picks)])                          # (budget, D)
    return float(sum(((1.0 + (unit_f32(x[s : s + 65536]) @ p.T).max(1)) / 2).sum(dtype=np.float64)
                     for s in range(0, len(x), 65536)))


def first_equal(a: np.ndarray, b: np.ndarray) -> str:
    agree = int(np.argmin(a == b)) if (a != b).any() else len(a)
    return f"all {len(a)} picks equal" if agree == len(a) else f"first {agree} picks equal"


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown")
    mem = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
               if line.startswith("MemTotal")) / 2**20
    try:
        import faiss
        fv = f", faiss {faiss.__version__}"
    except ImportError:
        fv = ", no faiss"
    return (f"{os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {model}, {mem:.0f} GB RAM; "
            f"Python {platform.python_version()}, numpy {np.__version__}{fv}")


def main(sizes: tuple[int, ...] = SIZES) -> None:
    lines = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    load = os.getloadavg()
    say(f"bench_selection: llm_al.strategies.kernels at 10k-1M embeddings, {time.strftime('%Y-%m-%d %H:%M')}")
    say(f"machine: {machine()}")
    say(f"load average at start: {load[0]:.1f} (1 min), {load[1]:.1f} (5 min): the machine is shared, and "
        f"other jobs' CPU use slows both sides of each comparison")
    say(f"data: N x {DIM} float32 unit vectors, mixture of {CLUSTERS} Gaussian clusters, seed {SEED}; "
        f"budget {BUDGET}; one run each, BLAS/OpenMP/torch on {THREADS} thread(s); peak MB = peak RSS beyond the "
        f"loaded embeddings")
    say()
    say(f"{'task':<18} {'N':>9}  {'method':<44} {'seconds':>8} {'peak MB':>8}  result")
    rows: dict[tuple[str, int], dict] = {}

    def row(task: str, n: int, method: str, r: dict, result: str = "") -> None:
        rows[task, n] = r
        say(f"{task.split('_')[0]:<18} {n:>9,}  {method:<44} {r['seconds']:>8.2f} {r['peak_mb']:>8.0f}  {result}")

    with tempfile.TemporaryDirectory(prefix="bench-selection-") as tmp:
        out = lambda name: Path(tmp) / f"{name}.npy"        # noqa: E731
        for n in sizes:
            data = Path(tmp) / f"x{n}.npy"
            t = time.perf_counter()
            write_mixture(data, n)
            say(f"-- N = {n:,}: data written in {time.perf_counter() - t:.1f} s ({data.stat().st_size / 2**20:.0f} MB)")
            x = np.load(data, mmap_mode="r")

            # k-center
            p = run_child("kcenter_plain", data, out("kc_plain"))
            row("kcenter_plain", n, "plain loop: one (N, D) matvec a pick", p)
            f = run_child("kcenter_fast", data, out("kc_fast"))
            (pi, pd), (fi, fd) = np.load(out("kc_plain")), np.load(out("kc_fast"))
            agree = int(np.argmin(pi == fi)) if (pi != fi).any() else len(pi)
            row("kcenter_fast", n, "kcenter.kcenter_fast", f,
                f"speed-up {p['seconds'] / f['seconds']:.1f}x; {first_equal(pi, fi)}; max |dist diff| "
                f"{np.nanmax(np.abs(pd[:agree] - fd[:agree])) if agree > 1 else 0:.1e}")
            if agree < len(pi):
                say(divergence(x, pi.astype(np.int64), fi.astype(np.int64), agree))
            g = run_child("kcenter_torch", data, out("kc_torch"))
            ti, td = np.load(out("kc_torch"))
            agree = int(np.argmin(pi == ti)) if (pi != ti).any() else len(pi)
            row("kcenter_torch", n, "kcenter.kcenter_torch, device=cpu (CPU torch)", g,
                f"speed-up {p['seconds'] / g['seconds']:.1f}x; {first_equal(pi, ti)}; max |dist diff| "
                f"{np.nanmax(np.abs(pd[:agree] - td[:agree])) if agree > 1 else 0:.1e}")
            if n == SIZES[-1]:
                p2 = run_child("kcenter_plain", data, out("kc_plain2"), threads=2)
                same2 = np.array_equal(np.load(out("kc_plain2"))[0], pi)
                row("kcenter_plain2", n, "plain loop, BLAS on 2 threads", p2,
                    f"kcenter_fast's speed-up over it {p2['seconds'] / f['seconds']:.1f}x; "
                    f"picks as on 1 thread: {same2}")
                h = run_child("kcenter_fast16", data, out("kc_fast16"))
                row("kcenter_fast16", n, "kcenter.kcenter_fast on float16-rounded rows", h,
                    f"vs float32 rows: {first_equal(fi, np.load(out('kc_fast16'))[0])} (why kcenter_torch is float32)")

            # k-means
            if n <= 100_000:
                d = run_child("kmeans_dense", data, out("km"))
                row("kmeans_dense", n, f"diversity.kmeans ({ITERS} steps, float64 (N, k))", d,
                    f"inertia {d['inertia']:.4f}")
            for backend in ("numpy", "faiss"):
                r = run_child(f"kmeans_{backend}", data, out("km"))
                ratio = f"speed-up {rows['kmeans_dense', n]['seconds'] / r['seconds']:.1f}x; " if n <= 100_000 else ""
                row(f"kmeans_{backend}", n, f"kmeans.kmeans_large backend={backend}", r,
                    f"{ratio}inertia {r['inertia']:.4f}")

            # facility location: dense (10k), exact kNN graph (<= 100k), approximate graphs
            fl_section(n, x, data, out, row, rows)
            del x
            say()
    if sizes == SIZES:
        summary(rows, say)
    say(f"load average at end: {os.getloadavg()[0]:.1f} (1 min)")
    say()
    if sizes != SIZES:
        print(f"(sizes {sizes}: not written to {RESULT})")
        return
    with tempfile.TemporaryDirectory(prefix="bench-selection-loss-") as tmp:   # last: --loss-only replaces it
        for line in loss_section(tmp):
            say(line)
    write_text(RESULT, "\n".join(lines) + "\n")
    print(f"written to {RESULT}")


def summary(rows: dict, say) -> None:
    big = SIZES[-1]
    k1, k2, k3 = rows["kcenter_plain", big], rows["kcenter_fast", big], rows["kcenter_torch", big]
    say(f"k-center at {big:,}: kcenter_fast's speed-up over the plain loop {k1['seconds'] / k2['seconds']:.1f}x, "
        f"{k2['peak_mb']:.0f} MB beyond the embeddings (plain: {k1['peak_mb']:.0f} MB). Speed-up by N: "
        + ", ".join(f"{n:,}: {rows['kcenter_plain', n]['seconds'] / rows['kcenter_fast', n]['seconds']:.1f}x"
                    for n in SIZES) + (" (where the plain loop wins, its per-pick pass over x fits in cache)."
                                       if min(rows["kcenter_plain", n]["seconds"] / rows["kcenter_fast", n]["seconds"]
                                              for n in SIZES) < 1 else "."))
    say(f"kcenter_torch is the plain loop in torch: on one CPU thread {k1['seconds'] / k3['seconds']:.1f}x the numpy "
        f"loop's speed at {big:,}; it is meant for a GPU, where it has not been run or timed here.")
    n_km = max(n for t, n in rows if t == "kmeans_dense")
    n_knn = max(n for t, n in rows if t == "fl_knn")
    knn = rows["fl_knn", n_knn]["knn_seconds"]
    ivf = rows["fl_ivf", big]
    say(f"Facility location at {big:,}: approximate kNN graph (knn_ivf) + sparse lazy greedy in {ivf['seconds']:.0f} s "
        f"({ivf['knn_seconds']:.0f} s of it the graph), {ivf['peak_mb']:.0f} MB beyond the embeddings; the exact graph "
        f"would take ~{knn * (big / n_knn) ** 2 / 3600:.1f} h (N^2 D flops, from {knn:.0f} s at {n_knn:,}).")
    say(f"Not run: dense k-means above {n_km:,} (at 1M each (N, k) float64 matrix is 4 GB, and k-means++ over "
        f"all rows scales with N: ~{rows['kmeans_dense', n_km]['seconds'] * big / n_km / 60:.0f} min from {n_km:,}); "
        f"dense facility location above 10k (N x N floats); the exact kNN graph above {n_knn:,}; faiss HNSW "
        f"above 100,000 (its build alone would add minutes to a run already long on a shared machine).")


def fl_section(n: int, x: np.ndarray, data: Path, out, row, rows: dict) -> None:
    """Facility location (budget BUDGET) and DEITA at N = n, as rows of the report."""
    from llm_al.strategies.kernels import knn

    ref = None                                               # (task, picks) that approximate picks are judged by
    if n <= 10_000:
        d = run_child("fl_dense", data, out("fl_dense"))
        row("fl_dense", n, "diversity dense N x N, lazy greedy", d)
        ref = ("dense", np.load(out("fl_dense")))
    exact = None
    if n <= 100_000:
        s = run_child("fl_knn", data, out("fl_knn"))
        exact, knn_p = np.load(str(out("fl_knn")) + ".graph.npy"), np.load(out("fl_knn"))
        extra = ""
        if ref is not None:
            extra = (f"; {len(set(ref[1]) & set(knn_p))}/{BUDGET} picks shared with dense; dense objective "
                     f"{dense_objective(x, knn_p) / dense_objective(x, ref[1]):.4f} of dense's")
        row("fl_knn", n, f"knn.knn_graph exact (k={KNN}) + sparse greedy", s, f"graph {s['knn_seconds']:.1f} s{extra}")
        ref = ref or ("exact-graph", knn_p)
    else:                                                    # recall on sampled rows, against a random subset
        r = run_child("knn_rows", data, out("knn_rows"))
        sample = np.load(out("knn_rows"))
        row("knn_rows", n, f"knn.knn_rows: exact {KNN}-NN of {RECALL_ROWS} sampled rows", r,
            f"(~{r['seconds'] * n / RECALL_ROWS / 2 / 3600:.1f} h for the whole exact graph at this rate, "
            f"by symmetry)")
        ref = ("random-500", np.random.default_rng(SEED).choice(n, BUDGET, replace=False))
    ref_obj = dense_objective(x, ref[1])
    nlist = int(round(np.sqrt(n)))
    approx = [("fl_ivf", f"knn.knn_ivf (nlist {nlist}, nprobe 8) + sparse")]
    if n == 100_000:
        approx += [("fl_ivf4", f"knn.knn_ivf (nlist {nlist}, nprobe 4) + sparse"),
                   ("fl_hnsw", "knn.knn_faiss hnsw (M 32, efSearch 64) + sparse")]
    for task, method in approx:
        a = run_child(task, data, out(task))
        picks, graph = np.load(out(task)), np.load(str(out(task)) + ".graph.npy", mmap_mode="r")
        if exact is not None:
            recall = f"recall@{KNN} {knn.knn_recall(graph, exact):.4f}"
            speed = f"; speed-up over exact {rows['fl_knn', n]['seconds'] / a['seconds']:.1f}x"
        else:
            recall = f"recall@{KNN} {knn.knn_recall(graph[sample[:, 0]], sample[:, 1:]):.4f} on {RECALL_ROWS} rows"
            speed = ""
        shared = f"; {len(set(ref[1]) & set(picks))}/{BUDGET} picks shared" if ref[0] != "random-500" else ""
        row(task, n, method, a, f"graph {a['knn_seconds']:.1f} s; {recall}{speed}; dense objective "
                                f"{dense_objective(x, picks) / ref_obj:.4f} of {ref[0]} picks'{shared}")
    if n >= 100_000:
        d = run_child("deita", data, out("deita"))
        row("deita", n, "run_strategy deita (threshold 0.9, by=loss)", d,
            f"{d['seconds'] / BUDGET * 1000:.0f} ms a pick; {d['fill']} relaxed-fill picks")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(*sys.argv[2:5])
    elif sys.argv[1:2] == ["--loss-child"]:
        loss_child(*sys.argv[2:5])
    elif sys.argv[1:2] == ["--loss-only"]:
        loss_only()
    elif sys.argv[1:2] == ["--sizes"]:                      # e.g. --sizes 1000000: printed, not written
        main(tuple(int(v) for v in sys.argv[2].split(",")))
    else:
        main()
