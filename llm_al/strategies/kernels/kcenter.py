"""Greedy k-center (Gonzalez 1985), one algorithm with three paths that make the same picks:
`kcenter_greedy` (the plain numpy loop, small pools), `kcenter_fast` (lazy, blocked bounds over a
few "hot" rows per pick: bounded memory at 10^5-10^6 rows) and `kcenter_torch` (the plain loop in
torch, on a GPU when there is one). `kcenter_select` chooses among them the way the `kcenter`
strategy does. Each grows the chosen set from a first row, or from `centres` (the labelled
examples, not rows of x: the first pick is then the row farthest from them).

    .venv/bin/python -m pytest -q tests/test_scale.py tests/test_strategies.py -k kcenter
    .venv/bin/python eval/bench_selection.py                 # 10k / 100k / 1M x 384

`x` may be any (N, D) array, an np.memmap included; rows are read a block at a time and cast to
float32, as kcenter_greedy casts. Imports only numpy and llm_al.errors (threadpoolctl and torch
inside the functions that use them).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from llm_al.errors import BudgetError, ConfigError
from llm_al.strategies.kernels.rows import blas_threads_limit, rows_as, sq_norms, top_t

BIG_POOL = 20_000
"""Above this many rows the `kcenter` strategy takes kcenter_fast on cpu, kcenter_torch under auto with a GPU."""


def check_start(n: int, first: int | None, centres: np.ndarray | None, who: str) -> np.ndarray | None:
    """The (L, D) labelled centres to start from, or None (then the first pick is row `first`):
    exactly one of the two, `first` a row of x."""
    centres = None if centres is None or len(centres) == 0 else centres
    if centres is not None and first is not None:
        raise ConfigError(f"{who}: give first= or centres=, not both (with centres the first pick is the row "
                          f"farthest from them)")
    if centres is None and (first is None or not 0 <= first < n):
        raise ConfigError(f"{who}: first={first} is not a row of x (N={n})")
    return centres


def centre_sq_dists(x: np.ndarray, sq: np.ndarray, centres: np.ndarray, block: int = 1 << 22) -> np.ndarray:
    """(N,) float32 squared distance of each float32 row of x to the nearest of `centres` (L, D),
    kcenter_greedy's expression max((|x|^2 + |c|^2) - 2 x.c, 0) through a float32 matrix product,
    a few centres at a time (at most `block` distances in memory)."""
    c = np.asarray(centres, dtype=np.float32)                # (L, D)
    csq = np.einsum("ld,ld->l", c, c)                        # (L,)
    out = np.full(len(x), np.inf, dtype=np.float32)
    step = max(1, block // max(len(x), 1))
    for s in range(0, len(c), step):
        d = sq[:, None] + csq[None, s : s + step] - 2.0 * (x @ c[s : s + step].T)   # (N, step)
        np.minimum(out, np.maximum(d, 0.0).min(axis=1), out=out)
    return out


def kcenter_greedy(x: np.ndarray, budget: int, first: int | None,
                   centres: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Greedy 2-approximate k-center (Gonzalez 1985): repeatedly take the point farthest from the
    chosen set. Returns (indices in pick order, distance to the chosen set at the time of each
    pick; NaN for the first). Euclidean distance; x is (N, D). With `centres` (L, D), the
    already-labelled examples, the chosen set starts as them (the core-set of Sener & Savarese,
    ICLR 2018, grows the labelled set): no `first`, and the first pick's distance is to them."""
    n = len(x)
    centres = check_start(n, first, centres, "kcenter_greedy")
    x = x.astype(np.float32, copy=False)
    sq = np.einsum("nd,nd->n", x, x)                         # (N,)
    chosen = np.empty(budget, dtype=np.int64)
    dist_at_pick = np.full(budget, np.nan, dtype=np.float64)
    if centres is None:
        min_d, c = np.full(n, np.inf, dtype=np.float32), first
    else:
        min_d = centre_sq_dists(x, sq, centres)
        c = int(np.argmax(min_d))
        dist_at_pick[0] = float(np.sqrt(max(min_d[c], 0.0)))
    for k in range(budget):
        chosen[k] = c
        d = np.maximum(sq + sq[c] - 2.0 * (x @ x[c]), 0.0)   # (N,) squared distance to the new centre
        np.minimum(min_d, d, out=min_d)
        min_d[chosen[: k + 1]] = -np.inf                     # never pick a centre twice (duplicates)
        if k + 1 < budget:
            c = int(np.argmax(min_d))
            dist_at_pick[k + 1] = float(np.sqrt(max(min_d[c], 0.0)))
    return chosen, dist_at_pick


def exact_sq_dist(xb: np.ndarray, rows: np.ndarray, sq64: np.ndarray, cen64: np.ndarray, csq64: np.ndarray,
                  picks: np.ndarray) -> np.ndarray:
    """(p,) float32 squared distance from row rows[p] of xb (b, D) to centre picks[p]:
    kcenter_greedy's expression max((|x|^2 + |c|^2) - 2 x.c, 0) evaluated in float64 for each pair
    on its own (einsum, not BLAS) and rounded once, so equal rows get equal distances."""
    d = np.empty(len(rows), dtype=np.float32)
    for s in range(0, len(rows), 1024):                      # chunks that stay in cache
        r, c = rows[s : s + 1024], picks[s : s + 1024]
        dot = np.einsum("nd,nd->n", xb[r].astype(np.float64), cen64[c])
        d[s : s + 1024] = np.maximum(sq64[r] + csq64[c] - 2.0 * dot, 0.0)
    return d


def fold_min(val: np.ndarray, src: np.ndarray, xb: np.ndarray, sq32: np.ndarray, sq64: np.ndarray,
             cen32: np.ndarray, cen64: np.ndarray, csq32: np.ndarray, csq64: np.ndarray, lo: int, hi: int,
             exact: bool) -> tuple[np.ndarray, np.ndarray]:
    """Fold centres lo..hi-1 into the (val, src) of the float32 rows xb (b, D), returning new ones.

    src = -1: val is the exact (exact_sq_dist) squared distance to the nearest folded centre;
    src = j: that distance is exact_sq_dist to centre j, and val bounds it from above by at most
    2 slack. The centres are read through a float32 product, within slack = (2D + 8) 2^-24
    (|x|^2 + max |c|^2) of the exact value in any summation order (Higham, "Accuracy and
    Stability of Numerical Algorithms", 2002, sec. 3.1, with |x.c| <= (|x|^2 + |c|^2) / 2). A row
    whose float32 minimum exceeds val by the slack is unchanged; otherwise only centres within 2
    slack of its minimum can be the nearest. With exact=False, a row whose nearest is then
    certain (one such centre, clearly below the old minimum) keeps a bound and src = that centre;
    the rest are computed exactly, pair by pair."""
    g = xb @ cen32[lo:hi].T                                  # (b, P) float32
    g *= 2.0
    a = np.add.outer(sq32, csq32[lo:hi])                     # (b, P)
    a -= g
    amin = a.min(axis=1)                                     # (b,)
    slack = (2 * xb.shape[1] + 8) * 2.0**-24 * (sq32 + csq32[:hi].max())
    need = np.flatnonzero(amin - slack < val)                # rows a new centre may be nearer to
    val, src = val.copy(), src.copy()
    if not len(need):
        return val, src
    a, amin, slack = a[need], amin[need], slack[need]
    near = a <= (amin + 2 * slack)[:, None]                  # (n, P) centres that may be the nearest
    if not exact:
        floor = np.where(src[need] < 0, val[need], val[need] - 2 * slack)   # the old minimum is >= floor
        sure = (near.sum(axis=1) == 1) & (amin + slack < floor)
        val[need[sure]], src[need[sure]] = amin[sure] + slack[sure], lo + a[sure].argmin(axis=1)
        need, near = need[~sure], near[~sure]
    ri, ci = np.nonzero(near)
    old = need[src[need] >= 0]                               # their old nearest, exactly too
    rows, picks = np.concatenate([need[ri], old]), np.concatenate([lo + ci, src[old]])
    best = np.where(src < 0, val, np.inf).astype(np.float32)   # (b,) exact old minima
    np.minimum.at(best, rows, exact_sq_dist(xb, rows, sq64, cen64, csq64, picks))
    val[need], src[need] = best[need], -1
    return val, src


def kcenter_fast(x: np.ndarray, budget: int, first: int | None, block: int = 8192, hot: int | None = None,
                 candidates: int = 1024, chunk: int = 128, blas_threads: int | None = 1,
                 centres: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Greedy k-center (Gonzalez 1985): strategies.kcenter_greedy's algorithm and contract,
    (indices in pick order, distance to the chosen set at each pick; NaN for the first), first
    pick `first`, then always the row farthest from the chosen set, ties to the lowest index.
    With `centres` (L, D), the labelled examples, the chosen set starts as them (no `first`): they
    are folded like earlier picks, lazily, so a row far below the largest bound never meets most of them.

    The plain loop reads all of x once per pick. Here each row i keeps val[i], a bound on its
    squared distance to the first folded[i] picks, which can only overestimate its distance to all
    of them (lazy evaluation, as in Minoux's lazy greedy, 1978), and is brought up to date only
    while that bound could still be the largest:
      * hot rows, the `hot` largest bounds (all >= theta), are kept exact in a contiguous copy
        and updated once per round with a matrix product over the round's picks;
      * in a round, the `candidates` hot rows with the largest values are updated after every
        pick, and picking goes on while the best of them beats the bound on all other rows (the
        largest other hot value, and theta for the rest): each pick is the plain loop's argmax;
      * cold rows (bound < theta) are updated only when theta is lowered past their bound, with
        the picks they missed, `chunk` at a time, until their bound falls below theta.
    Distances are kcenter_greedy's expression evaluated in float64 and rounded to float32, read
    through a float32 product that rules out most rows (`fold_min`): equal rows get equal
    distances, so exact duplicates tie and the lowest index wins, and picks agree with the plain
    loop except where two distances differ by less than its float32 rounding (~1e-7 relative).
    Extra memory: 24 bytes a row plus (hot + candidates + block) float32 rows; x may be a memmap.
    BLAS runs on `blas_threads` threads (None: as configured): the many small products here lose
    more to waking BLAS threads than they gain, badly so on a busy machine (~8 ms a call on 2
    cores shared with another job, against ~0.1 ms on one thread)."""
    with blas_threads_limit(blas_threads):
        return kcenter_lazy(x, budget, first, block, hot, candidates, chunk, centres)


def _refresh(rows: np.ndarray, k: int, theta: float, x: np.ndarray, val: np.ndarray, src: np.ndarray,
             folded: np.ndarray, sq64: np.ndarray, cen64: np.ndarray, csq64: np.ndarray, fold: Callable,
             block: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Fold the picks each row missed, `chunk` at a time, oldest first, leaving a row cold as
    soon as its bound falls below theta; make the rest exact. Returns them, ascending, with
    their float32 rows. (kcenter_lazy's step; `val`, `src` and `folded` are updated in place.)"""
    dim = x.shape[1]
    rows = rows[np.argsort(folded[rows], kind="stable")]
    kept, kept_x = [np.empty(0, dtype=np.int64)], [np.empty((0, dim), dtype=np.float32)]
    for s in range(0, len(rows), block):
        r = rows[s : s + block]
        xr = rows_as(x, r)                               # (b, D)
        while len(r) and folded[r].min() < k:
            lo = int(folded[r].min())
            at = folded[r] == lo
            ra, xa = (r, xr) if at.all() else (r[at], xr[at])
            val[ra], src[ra] = fold(val[ra], src[ra], ra, xa, lo, min(k, lo + chunk), False)
            folded[ra] = min(k, lo + chunk)
            live = val[r] >= theta
            if not live.all():
                r, xr = r[live], xr[live]
        e = np.flatnonzero(src[r] >= 0)
        val[r[e]], src[r[e]] = exact_sq_dist(xr, e, sq64[r], cen64, csq64, src[r[e]]), -1
        live = val[r] >= theta
        kept.append(r[live])
        kept_x.append(xr[live])
    rows, xk = np.concatenate(kept), np.concatenate(kept_x)
    kept_x.clear()                                       # (so that only two copies of the hot rows coexist)
    order = np.argsort(rows)
    return rows[order], xk[order]


def kcenter_lazy(x: np.ndarray, budget: int, first: int | None, block: int, hot: int | None, candidates: int,
                 chunk: int, centres: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """kcenter_fast without the BLAS thread limit. The labelled centres, if any, are the first m
    entries of the centre arrays (picks number k = m, m + 1, ... there), never rows of x."""
    n, dim = x.shape
    if not isinstance(budget, (int, np.integer)) or not 0 < budget <= n:
        raise BudgetError(int(budget), n)
    centres = check_start(n, first, centres, "kcenter_fast")
    m = 0 if centres is None else len(centres)
    total = m + budget
    m_hot = hot or max(4 * candidates, n // 16)
    sq64 = sq_norms(x, block)                                # (N,)
    sq32 = sq64.astype(np.float32)
    val = np.full(n, np.inf, dtype=np.float32)               # (N,) bound on the squared distance
    src = np.full(n, -1, dtype=np.int32)                     # (N,) -1: val is exact (see fold_min)
    folded = np.zeros(n, dtype=np.int32)                     # (N,) picks folded into val (a prefix)
    cen32, cen64 = np.empty((total, dim), dtype=np.float32), np.empty((total, dim))   # labelled, then the picks
    csq32, csq64 = np.empty(total, dtype=np.float32), np.empty(total)
    if m:
        cen32[:m] = np.asarray(centres, dtype=np.float32)    # as rows_as reads a row
        cen64[:m] = cen32[:m]
        csq64[:m] = np.einsum("ld,ld->l", cen64[:m], cen64[:m])   # as sq_norms
        csq32[:m] = csq64[:m]
    chosen = np.empty(budget, dtype=np.int64)
    dist_at_pick = np.full(budget, np.nan, dtype=np.float64)

    def take(k: int, i: int, row: np.ndarray) -> None:
        chosen[k - m], cen32[k], cen64[k], csq32[k], csq64[k], val[i], src[i] = (i, row, row, sq32[i], sq64[i],
                                                                                  -np.inf, -1)

    def fold(v: np.ndarray, s: np.ndarray, rows: np.ndarray, xr: np.ndarray, lo: int, hi: int,
             exact: bool) -> tuple[np.ndarray, np.ndarray]:
        return fold_min(v, s, xr, sq32[rows], sq64[rows], cen32, cen64, csq32, csq64, lo, hi, exact)

    def refresh(rows: np.ndarray, k: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
        return _refresh(rows, k, theta, x, val, src, folded, sq64, cen64, csq64, fold, block, chunk)

    if not m:
        take(0, first, rows_as(x, np.array([first]))[0])
    k, theta = m or 1, np.inf
    hot_rows = np.empty(0, dtype=np.int64)                   # (H,) ascending; exact while >= theta
    while k < total:
        if not len(hot_rows):                                # lower theta to the m_hot-th largest bound
            theta = -np.inf if m_hot >= n - (k - m) else float(np.partition(val, n - m_hot)[n - m_hot])
            hot_rows, xh = refresh(np.flatnonzero((val >= theta) & (val > -np.inf)), k, theta)   # (H,), (H, D)
            continue
        pos, tau, tie = top_t(val[hot_rows], candidates)     # (T,) positions in hot_rows
        cand, xc = hot_rows[pos], xh[pos]
        vals, srcs = val[cand], src[cand]
        start = k
        while k < total:
            j = int(np.argmax(vals))
            v = vals[j]
            if v < theta or not (v > tau or (v == tau and pos[j] < tie)):
                break                                        # a row outside the candidates may be farther
            take(k, int(cand[j]), xc[j])
            dist_at_pick[k - m] = float(np.sqrt(max(v, 0.0)))
            vals[j] = -np.inf
            k += 1
            if k < total:
                vals, srcs = fold(vals, srcs, cand, xc, k - 1, k, True)
        if k == start:                                       # the hot rows all fell below theta
            hot_rows = hot_rows[:0]
            continue
        for s in range(0, len(hot_rows), block):             # fold the round's picks into the hot rows
            r = hot_rows[s : s + block]
            val[r], src[r] = fold(val[r], src[r], r, xh[s : s + block], start, k, True)
        val[cand] = vals                                     # (already up to date, pick by pick)
        folded[hot_rows] = k
        keep = val[hot_rows] >= theta
        if keep.sum() < 0.5 * len(keep):                     # compact once half the hot rows went cold
            hot_rows, xh = hot_rows[keep], xh[keep]
    return chosen, dist_at_pick


def kcenter_torch(x: np.ndarray, budget: int, first: int | None, device: str = "cpu",
                  block: int = 1 << 20, centres: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Greedy k-center with torch, for a GPU: strategies.kcenter_greedy's loop and contract
    (indices in pick order, distance to the chosen set at each pick; NaN for the first), with x
    copied to `device` once as float32 (N D 4 bytes there: 1.5 GB at 1M x 384; on the CPU a
    writable C-contiguous float32 x is read in place, never written) and the distance update
    done `block` rows at a time (extra device memory: two (N,) vectors, a few (block,)
    temporaries, one (65536, D) while the squared norms are computed). Each pick is one pass
    over x on the device; picks stay there until the end, so the loop never waits for the host.

    Same expression as kcenter_greedy in float32, max((|x|^2 + |c|^2) - 2 x.c, 0), only summed in
    another order (torch's kernels, not numpy's), and torch.argmax takes the first of tied maxima
    as np.argmax does: the picks are kcenter_greedy's on data without near-ties (two distances
    within float32 rounding, ~1e-7 relative, may be ordered either way). float32, not float16:
    a pick reads x once, so float16 would at most halve a pass that is already short on a GPU
    (at 1M x 384 on an H200 all 500 picks took 0.68 s, the copy to the device included), while
    rounding the embeddings to float16 (2^-11 relative a coordinate) changes which far point
    wins within a few dozen picks (eval/bench_selection.py: kcenter_fast on float16-rounded rows).
    Tested on CPU torch; on CUDA by eval/bench_gpu.py (H200, 1M x 384: the same 500 picks as
    kcenter_greedy, 15.7x its time on 16 CPUs; eval/results/gpu/bench_gpu-cuda.txt). With
    `centres` (L, D), the labelled examples, the distances start from them as in kcenter_greedy
    (copied to the device once, a (65536, 256) block of distances at a time)."""
    import torch

    n, dim = x.shape
    if not isinstance(budget, (int, np.integer)) or not 0 < budget <= n:
        raise BudgetError(int(budget), n)
    centres = check_start(n, first, centres, "kcenter_torch")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"kcenter_torch: device={device!r} but torch.cuda.is_available() is False")
    shared = (dev.type == "cpu" and type(x) is np.ndarray and x.dtype == np.float32 and x.flags.c_contiguous
              and x.flags.writeable)                          # CPU torch can read x in place
    xt = torch.from_numpy(x) if shared else torch.empty((n, dim), dtype=torch.float32, device=dev)   # (N, D)
    sq = torch.empty(n, dtype=torch.float32, device=dev)          # (N,)
    step = min(block, 65536)                                      # (step, D) temporaries here
    for s in range(0, n, step):
        xb = xt[s : s + step]
        if not shared:
            xb.copy_(torch.from_numpy(np.array(x[s : s + step], dtype=np.float32)))   # a writable copy
        sq[s : s + step] = (xb * xb).sum(dim=1)
    min_d = torch.full((n,), float("inf"), dtype=torch.float32, device=dev)   # (N,) to the chosen set
    chosen = torch.empty(budget, dtype=torch.int64, device=dev)
    at_pick = torch.full((budget,), float("nan"), dtype=torch.float32, device=dev)   # squared
    if centres is None:
        c = torch.tensor([first], dtype=torch.int64, device=dev)      # (1,)
    else:
        cen = torch.from_numpy(np.asarray(centres, dtype=np.float32)).to(dev)   # (L, D)
        csq = (cen * cen).sum(dim=1)                                  # (L,)
        for s in range(0, n, step):
            for t in range(0, len(cen), 256):
                d = (sq[s : s + step, None] + csq[None, t : t + 256]) - 2.0 * (xt[s : s + step] @ cen[t : t + 256].T)
                mb = min_d[s : s + step]
                torch.minimum(mb, d.clamp_(min=0.0).amin(dim=1), out=mb)
        c = torch.argmax(min_d).view(1)
        at_pick[:1] = min_d.index_select(0, c)
    for k in range(budget):
        chosen[k : k + 1] = c
        xc, sqc = xt.index_select(0, c)[0], sq.index_select(0, c)    # (D,), (1,)
        for s in range(0, n, block):
            d = (sq[s : s + block] + sqc) - 2.0 * (xt[s : s + block] @ xc)   # (b,)
            mb = min_d[s : s + block]
            torch.minimum(mb, d.clamp_(min=0.0), out=mb)
        min_d.index_fill_(0, c, float("-inf"))                       # never pick a centre twice
        if k + 1 < budget:
            c = torch.argmax(min_d).view(1)                           # first of tied maxima
            at_pick[k + 1 : k + 2] = min_d.index_select(0, c)
    dist = np.sqrt(np.maximum(at_pick.cpu().numpy().astype(np.float64), 0.0))   # NaN stays NaN
    return chosen.cpu().numpy(), dist


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def kcenter_select(x: np.ndarray, budget: int, first: int | None, device: str = "auto",
                   centres: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """k-center picks of x from row `first`, or from the labelled `centres` (L, D), by the path that
    suits the pool: device="cpu": the plain loop up to BIG_POOL rows, kcenter_fast above (the same
    picks); "cuda"/"cuda:N": kcenter_torch there; "auto": cuda when torch sees a GPU and the pool is
    above BIG_POOL, else cpu. Returns (indices in pick order, distance to the chosen set at each
    pick; NaN for the first when there are no centres)."""
    big = len(x) > BIG_POOL
    if device == "auto":
        device = "cuda" if big and cuda_available() else "cpu"
    if device != "cpu":
        if not cuda_available():
            raise ConfigError(f"strategy 'kcenter': device={device!r} but torch sees no CUDA GPU "
                              f"(torch.cuda.is_available() is False); use device=auto or cpu")
        return kcenter_torch(x, budget, first, device=device, centres=centres)
    if big:
        return kcenter_fast(np.asarray(x, dtype=np.float32), budget, first=first, centres=centres)
    return kcenter_greedy(x, budget, first=first, centres=centres)
