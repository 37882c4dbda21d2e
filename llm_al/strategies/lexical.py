"""Lexical diversity: hashed word n-grams of each prompt, and two label-free strategies over them.

- probe `ngrams` -> `ngram_counts`: a scipy.sparse CSR matrix (N, 2**20) of word n-gram counts
  (n = 1..probe.ngram_max) of each example's prompt text, lower-cased unicode word tokens, each
  n-gram hashed into one of 2**20 columns by a stable hash (blake2b), so the columns mean the same
  in every process and run. Source side only (no response read), as in Zeng et al. 2019 where only
  source sentences are seen before annotation. Hash collisions are possible (two n-grams sharing a
  column): with 2**20 columns and D distinct n-grams about 1 - exp(-D / 2**20) of them share a column
  (~9% at D = 10^5, a 10k-sentence pool), and both strategies then treat such a pair as one n-gram.
- strategy `delfy`: decayed log frequency (Zeng et al. 2019), the score Flores et al. 2026 correlate.
- strategy `ngram_coverage`: greedy maximum weighted coverage of the pool's n-gram vocabulary.

No cache: hashing is cheap (see `ngrams`' cost record) and needs no model. Both strategies select
from the candidates they are given (in a loop round, the remaining pool) and read the labelled set
(`features.labelled`: the examples of earlier rounds, or `llm-al select --labelled`): its n-grams
count as covered (ngram_coverage) and decay DelFy's weights by exp(-decay C(g|L)). Pool
frequencies C(g|U) are the candidates' counts, U being the unlabelled pool as in Zeng et al.

Tests: `.venv/bin/pytest -q tests/test_lexical.py` (a few seconds).
"""

from __future__ import annotations

import hashlib
import re
import time
from typing import Annotated, Literal, Sequence

import numpy as np
from scipy import sparse

from llm_al.errors import ConfigError
from llm_al.features.probes import PROBES, ProbeContext
from llm_al.registry import at_least
from llm_al.strategies import diversity   # module import: diversity and this module import each other via strategies
from llm_al.strategies.base import STRATEGIES, top_k
from llm_al.types import Features, Selection

NGRAM_DIM = 2**20                      # hashed columns of `ngram_counts`
_WORD = re.compile(r"\w+")             # unicode word characters (letters, digits, underscore)


# ---------------------------------------------------------------------------- the probe
def prompt_text(example) -> str:
    """The non-system prompt messages joined by newlines (label-free: no response)."""
    return "\n".join(m["content"] for m in example.prompt_messages if m["role"] != "system")


def ngram_column(gram: str) -> int:
    """Stable column of an n-gram (its words joined by one space) in [0, NGRAM_DIM)."""
    return int.from_bytes(hashlib.blake2b(gram.encode("utf-8"), digest_size=8).digest(), "little") % NGRAM_DIM


def hashed_ngram_counts(texts: Sequence[str], ngram_max: int) -> sparse.csr_matrix:
    """(N, NGRAM_DIM) int32 CSR counts of the word n-grams (n = 1..ngram_max) of each text."""
    if not isinstance(ngram_max, (int, np.integer)) or isinstance(ngram_max, bool) or ngram_max < 1:
        raise ConfigError(f"probe.ngram_max must be an integer >= 1, got {ngram_max!r}")
    column: dict[str, int] = {}        # n-gram -> column, each distinct n-gram hashed once
    rows, cols = [], []
    for i, text in enumerate(texts):
        words = _WORD.findall(text.lower())
        grams = [" ".join(words[j:j + n]) for n in range(1, ngram_max + 1) for j in range(len(words) - n + 1)]
        for g in grams:
            c = column.get(g)
            if c is None:
                c = column[g] = ngram_column(g)
            cols.append(c)
        rows.extend([i] * len(grams))
    data = np.ones(len(cols), dtype=np.int32)
    m = sparse.csr_matrix((data, (np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64))),
                          shape=(len(texts), NGRAM_DIM))   # duplicate (row, col) entries are summed
    m.sum_duplicates()
    return m


@PROBES.register("ngrams", "hashed word n-gram counts (n = 1..probe.ngram_max) of each prompt; no model",
                 provides=("ngram_counts",), matrices=("ngram_counts",), needs_model=False, needs_labels=False)
def ngrams_probe(ctx: ProbeContext):
    t0 = time.perf_counter()
    counts = hashed_ngram_counts([prompt_text(ex) for ex in ctx.examples], ctx.probe_cfg.ngram_max)
    return {"ngram_counts": counts}, {"seconds": time.perf_counter() - t0, "examples": len(ctx.examples),
                                      "ngrams": int(counts.sum()), "distinct_columns": int(len(np.unique(counts.indices))),
                                      "forward_passes": 0, "tokens": 0, "generations": 0}


# ---------------------------------------------------------------------------- shared pieces
def _count_matrix(m, rows: int, strategy: str, whose: str) -> sparse.csr_matrix:
    if not sparse.issparse(m) or m.ndim != 2 or m.shape[0] != rows:
        raise ConfigError(f"strategy {strategy!r}: ngram_counts {whose} must be a sparse (N, H) count matrix with "
                          f"N = {rows} rows (the 'ngrams' probe), got {type(m).__name__} of shape "
                          f"{getattr(m, 'shape', None)}")
    return sparse.csr_matrix(m, dtype=np.float64)


def counts_matrices(features: Features, strategy: str) -> tuple[sparse.csr_matrix, np.ndarray]:
    """The candidates' (N, V) float64 CSR n-gram counts, restricted to the V columns that occur
    in them, and the labelled set's counts of those same V n-grams, (V,) (zeros when nothing is
    labelled; n-grams only the labelled set has cannot matter to a candidate)."""
    m = _count_matrix(features.require("ngram_counts"), len(features), strategy, "of the candidates")
    used = np.unique(m.indices)
    x = m[:, used] if len(used) else sparse.csr_matrix((m.shape[0], 0))
    lab = features.labelled_rows("ngram_counts")
    if lab is None:
        return x, np.zeros(x.shape[1])
    lab = _count_matrix(lab, len(features.labelled), strategy, "of the labelled set")
    if lab.shape[1] != m.shape[1]:
        raise ConfigError(f"strategy {strategy!r}: the labelled set's ngram_counts have {lab.shape[1]} columns, "
                          f"the candidates' {m.shape[1]}: hash both with the same 'ngrams' probe")
    return x, np.asarray(lab[:, used].sum(0)).ravel()


def greedy_pick(score: np.ndarray, taken: np.ndarray, tie: np.ndarray) -> int:
    """The untaken index of highest score; exact ties go to the lowest `tie` key (a seeded draw)."""
    s = np.where(taken, -np.inf, score)
    best = np.flatnonzero(s == s.max())
    return int(best[np.argmin(tie[best])])


# ---------------------------------------------------------------------------- DelFy
def delfy_weights(x: sparse.csr_matrix, decay: float, in_labelled: np.ndarray) -> np.ndarray:
    """(V,) F(g) of Zeng et al. 2019, Algorithm 1: G(g) = log(1 + C(g|U)) exp(-decay C(g|L)),
    F(g) = G(g) / sum_g' G(g'), with C(g|U) the count of n-gram g in the unlabelled pool (the
    rows of x) and C(g|L) in the labelled set (`in_labelled`, zeros when nothing is labelled)."""
    g = np.log1p(np.asarray(x.sum(0)).ravel()) * np.exp(-decay * in_labelled)   # (V,)
    return g / g.sum() if g.sum() > 0 else g


def delfy_scores(x: sparse.csr_matrix, decay: float, order: np.ndarray,
                 in_labelled: np.ndarray | None = None) -> np.ndarray:
    """(N,) DelFy of Zeng et al. 2019, Algorithm 1:

        F(g) as in delfy_weights (log pool frequency, decayed by the labelled set's counts)
        DelFy(x) = (1/|x|) sum over the n-gram tokens g of x of F(g) * exp(-decay * C(g|U_<x))

    where U_<x are the pool examples ranked above x by LF(x) = (1/|x|) sum F(g) (`order`, best
    first) and |x| the number of n-gram tokens of x. Zero for an example without n-grams.
    x: (N, V) counts; in_labelled: (V,) the labelled set's counts (None: nothing labelled)."""
    n = x.shape[0]
    f = delfy_weights(x, decay, np.zeros(x.shape[1]) if in_labelled is None else in_labelled)
    k = np.asarray(x.sum(1)).ravel()                                     # (N,) |x|
    xs = sparse.csc_matrix(x[order])                                     # rows in LF order
    xs.sort_indices()
    col = np.repeat(np.arange(xs.shape[1]), np.diff(xs.indptr))          # (nnz,) column of each entry
    excl = np.cumsum(xs.data) - xs.data                                  # running count before each entry
    before = excl - excl[xs.indptr[col]]                                 # count in higher-ranked rows, same column
    contrib = xs.data * f[col] * np.exp(-decay * before)                 # (nnz,)
    ranked = np.bincount(xs.indices, weights=contrib, minlength=n)       # (N,) in LF order
    out = np.zeros(n)
    out[order] = ranked
    return np.divide(out, k, out=np.zeros(n), where=k > 0)


def shared_columns(x: sparse.csr_matrix) -> np.ndarray:
    """(V,) bool: the n-grams present in every row (a fixed prompt template): they cannot tell
    examples apart, and through the 1/|x| normalisation they would favour short prompts."""
    df = np.bincount(x.indices, minlength=x.shape[1])                   # rows containing each column
    return df >= x.shape[0]


@STRATEGIES.register("delfy", "DelFy decayed log-frequency of prompt n-grams (Zeng et al. 2019); mode=paper "
                     "(default, one pass as in the paper) or greedy (re-decay after each pick)",
                     needs=("ngram_counts",),
                     labelled="used: the labelled set's n-gram counts decay their weights (exp(-decay C(g|L)))")
def delfy(features: Features, budget: int, rng: np.random.Generator, decay: Annotated[float, at_least(0)] = 1.0,
          mode: Literal["paper", "greedy"] = "paper",
          drop_shared: bool = True) -> Selection:
    """Decay Logarithm Frequency (Zeng, Garg, Chatterjee, Nallasamy & Paulik, "Empirical Evaluation
    of Active Learning Techniques for Neural MT", DeepLo 2019): prefer examples made of n-grams that
    are frequent in the pool (log frequency) but not yet represented, decaying an n-gram's weight
    by exp(-decay * count) of its earlier occurrences. One of the subset-level scores of Flores et
    al. 2026. The formula follows Algorithm 1 (G, F, LF, Decay; lambda1 = lambda2 = `decay`) as
    reimplemented in public code; the paper text itself could not be consulted here.

    mode="paper": rank the pool by LF, score each example with its n-grams decayed by their counts
      in the examples ranked above it, take the top `budget` by DelFy (random tie-break). Scores and
      pool_scores: DelFy.
    mode="greedy": pick one at a time the example of highest (1/|x|) sum F(g) exp(-decay C_S(g)),
      C_S the counts in the examples picked so far (F carries the labelled decay, so a labelled
      n-gram counts as if picked), and update C_S. Scores only fall, so the
      incremental update (only rows sharing the pick's n-grams change; a sparse column slice) gives
      the same picks as a lazy greedy. Score: DelFy at pick time; pool_scores None.
    `drop_shared` drops n-grams present in every example (see shared_columns). The labelled set
    (`features.labelled`) enters through F: lambda1 = `decay` on its counts C(g|L)."""
    decay = diversity.check_number("delfy", "decay", decay, 0.0, np.inf, "must be a finite number >= 0")
    if mode not in ("paper", "greedy"):
        raise ConfigError(f"strategy 'delfy': mode={mode!r} is invalid; must be 'paper' or 'greedy'")
    x, in_labelled = counts_matrices(features, "delfy")
    if drop_shared:
        keep = np.flatnonzero(~shared_columns(x))
        x, in_labelled = x[:, keep], in_labelled[keep]
    n = x.shape[0]
    f = delfy_weights(x, decay, in_labelled)                             # (V,)
    k = np.asarray(x.sum(1)).ravel()                                     # (N,) |x|
    lf = np.divide(x @ f, k, out=np.zeros(n), where=k > 0)              # (N,) LF
    if mode == "paper":
        order = np.lexsort((rng.random(n), -lf))
        score = delfy_scores(x, decay, order, in_labelled)
        idx = top_k(score, budget, rng)
        return Selection(idx, score[idx], f"DelFy (decayed log-frequency of prompt n-grams, decay={decay:g})", score)
    xc = sparse.csc_matrix(x)
    tie = rng.random(n)
    taken = np.zeros(n, dtype=bool)
    seen = np.zeros(x.shape[1])                                          # (V,) counts in the picks so far
    score = lf.copy()
    picks, at_pick = np.empty(budget, dtype=np.int64), np.empty(budget)
    for b in range(budget):
        i = greedy_pick(score, taken, tie)
        picks[b], at_pick[b], taken[i] = i, score[i], True
        cols, cnt = x.indices[x.indptr[i]:x.indptr[i + 1]], x.data[x.indptr[i]:x.indptr[i + 1]]
        old = f[cols] * np.exp(-decay * seen[cols])
        seen[cols] += cnt
        delta = f[cols] * np.exp(-decay * seen[cols]) - old              # (c,) <= 0
        change = xc[:, cols] @ delta                                     # (N,)
        score += np.divide(change, k, out=np.zeros(n), where=k > 0)
    return Selection(picks, at_pick, f"DelFy at pick time (greedy, decayed by earlier picks, decay={decay:g})")


# ---------------------------------------------------------------------------- n-gram coverage
def coverage_greedy(x: sparse.csr_matrix, weight: np.ndarray, budget: int, tie: np.ndarray,
                    covered: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Greedy maximum weighted coverage: f(S) = sum of weight[g] over the columns g that some row
    of S contains. Monotone submodular, so greedy is within (1 - 1/e) of the best (Nemhauser,
    Wolsey & Fisher 1978). Exact marginal gains kept up to date: a pick lowers only the rows sharing
    its newly covered columns (a sparse column slice). Ties, including the all-zero gains once
    everything is covered, go to the lowest `tie` key (random when `tie` is a seeded draw).
    `covered` (V,) bool marks columns covered before the first pick (the labelled set's n-grams).
    Returns (indices in pick order, marginal gain at each pick)."""
    b = sparse.csr_matrix(x, dtype=np.float64, copy=True)
    b.data[:] = 1.0                                                      # presence
    bc = sparse.csc_matrix(b)
    covered = np.zeros(x.shape[1], dtype=bool) if covered is None else np.array(covered, dtype=bool)
    gain = b @ np.where(covered, 0.0, weight)                            # (N,)
    tol = 1e-9 * max(float(weight.sum()), 1.0)                           # float dust after subtractions
    taken = np.zeros(x.shape[0], dtype=bool)
    picks, gains = np.empty(budget, dtype=np.int64), np.empty(budget)
    for k in range(budget):
        i = greedy_pick(gain, taken, tie)
        picks[k], gains[k], taken[i] = i, max(gain[i], 0.0), True
        cols = b.indices[b.indptr[i]:b.indptr[i + 1]]
        new = cols[~covered[cols]]
        covered[new] = True
        gain -= bc[:, new] @ weight[new]
        gain[np.abs(gain) < tol] = 0.0
    return picks, gains


@STRATEGIES.register("ngram_coverage", "greedy max coverage of the pool's prompt n-grams weighted by log(1 + "
                     "pool count); random once all are covered", needs=("ngram_counts",),
                     labelled="used: the labelled set's n-grams count as covered")
def ngram_coverage(features: Features, budget: int, rng: np.random.Generator) -> Selection:
    """Vocabulary coverage as a selection objective: cover as much of the pool's n-gram vocabulary
    as possible, each n-gram weighted by log(1 + its count in the pool), by greedy with exact
    incremental gains (Nemhauser et al. 1978; the vocabulary-size diversity score of Flores et al.
    2026 turned into an objective). The labelled set's n-grams (`features.labelled`) are covered
    before the first pick. Once every n-gram is covered the remaining picks are uniformly random
    among the rest (gain 0). Score: the marginal gain (weight of newly covered n-grams) at pick time."""
    x, in_labelled = counts_matrices(features, "ngram_coverage")
    weight = np.log1p(np.asarray(x.sum(0)).ravel())                      # (V,)
    idx, gains = coverage_greedy(x, weight, budget, rng.random(x.shape[0]), covered=in_labelled > 0)
    return Selection(idx, gains, "weight of newly covered prompt n-grams (log(1 + pool count)); "
                     "0 = all covered already, picked at random")


def vocabulary_size(counts: sparse.spmatrix, indices: Sequence[int]) -> int:
    """Distinct hashed n-grams in the rows `indices` (the paper's vocabulary-size diversity)."""
    sub = sparse.csr_matrix(counts)[np.asarray(indices, dtype=np.int64)]
    return int(len(np.unique(sub.indices[sub.data != 0])))
