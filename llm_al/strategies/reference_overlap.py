"""Overlap with a pre-training-like reference corpus as per-example scores, and the strategies that
select by it: `novel` (least like the reference first) and `familiar` (most like it first).

Why: fine-tuned models produce correct target words seen only in pre-training, and different
subsets and orders interact with what pre-training taught (Flores et al. 2026, see
docs/research-protocol.md: "interaction with pre-training data matters"). Domain overlap with a
reference as a data criterion follows Gururangan et al. (ACL 2020, "Don't Stop Pretraining":
adapting to data close to the target domain helps) and DSIR (Xie et al., NeurIPS 2023: select data
whose hashed n-gram distribution matches a target corpus; see llm_al/features/dsir.py).

Probes (settings in the config section `overlap`, see config.OverlapConfig), over each example's
whole text (`Example.text`: prompt + response when labelled, the prompt alone when not):

- `reference_overlap` -> `ref_overlap` (share of the example's word n-grams, n = overlap.n, found
  in the reference), `ref_span` (longest matched span in words) and `ref_vocab` (share of its
  distinct words seen in the reference): the exact n-gram index of llm_al/features/overlap.py.
- `reference_similarity` -> `ref_similarity`: embed a seeded reservoir sample of reference passages
  (overlap.sample_passages of overlap.passage_words words) with model.embedder, cache it, and score
  each example by its mean cosine to its overlap.neighbours nearest passages.

Neither depends on the fine-tuned adapter, so loop rounds recompute the same values (cheaply: the
index and the passage sample are on disk, the example embeddings in the features cache).

    llm-al select pool.jsonl --strategy novel --budget 100 --out novel.jsonl
    llm-al select pool.jsonl --strategy familiar:by=ref_similarity --budget 100 --out familiar.jsonl

Tests: `.venv/bin/pytest -q tests/test_overlap_probes.py` (a few seconds, no real embedder).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

from llm_al import models  # `diversity` as a module: it may still be importing (strategies.py)
from llm_al.config import ModelConfig, OverlapConfig

from llm_al.errors import ConfigError, FeatureUnavailableError, UserError
from llm_al.features.cache import text_key
from llm_al.features.engine import compute_embeddings
from llm_al.features.overlap import fingerprint_files, reference_texts
from llm_al.features.overlap_stats import example_overlap
from llm_al.features.probes import PROBES, ProbeContext
from llm_al.features.reference_index import reference_index
from llm_al.io import atomic_path
from llm_al.strategies import diversity
from llm_al.strategies.base import STRATEGIES, PER_EXAMPLE, top_k
from llm_al.types import Features
from llm_al.types import Selection

log = logging.getLogger("llm_al")
T = TypeVar("T")


# ---------------------------------------------------------------------------- settings
def overlap_settings(ctx: ProbeContext) -> OverlapConfig:
    """The context's OverlapConfig; the defaults (reference "pydoc") when the caller gave none."""
    if ctx.overlap_cfg is not None:
        return ctx.overlap_cfg
    return OverlapConfig()


def require_reference(cfg: OverlapConfig, score: str) -> str:
    if not cfg.reference:
        raise FeatureUnavailableError(
            f"{score} measures overlap with a reference corpus, but none is configured: set overlap.reference "
            f"(\"pydoc\", a text file, .jsonl, .parquet, a datasets folder, a folder of shards or a hub id)")
    return str(cfg.reference)


# ---------------------------------------------------------------------------- n-gram overlap
@PROBES.register("reference_overlap",
                 "word n-gram overlap of each example's text with the reference corpus (overlap.reference, "
                 "overlap.n): share of n-grams found, longest matched span, share of words seen",
                 provides=("ref_overlap", "ref_span", "ref_vocab"), needs_model=False, needs_labels=False)
def reference_overlap(ctx: ProbeContext) -> tuple[dict[str, np.ndarray], dict]:
    """Per-example `example_overlap` against the cached index of overlap.reference. Not cached per
    example: a lookup (hash the words, binary-search the index) costs about what hashing the
    texts for a cache key would."""
    cfg = overlap_settings(ctx)
    spec = require_reference(cfg, "ref_overlap")
    t0 = time.perf_counter()
    index = reference_index(spec, cfg.n, cfg.reference_field, cfg.reference_split)
    per = example_overlap(index, [ex.text for ex in ctx.examples])
    scores = {"ref_overlap": per["ngram_overlap"].astype(np.float32),      # (N,) in [0, 1]
              "ref_span": per["longest_match"].astype(np.float32),         # (N,) words
              "ref_vocab": per["vocab_seen"].astype(np.float32)}           # (N,) in [0, 1]
    cost = {"seconds": time.perf_counter() - t0, "examples": len(ctx.examples), "forward_passes": 0,
            "words": int(per["n_words"].sum()), "ngrams_looked_up": int(per["n_ngrams"].sum()),
            "reference_tokens": int(index.meta["tokens"])}
    return scores, cost


# ---------------------------------------------------------------------------- embedding similarity
def passages(texts: Iterable[str], passage_words: int) -> Iterator[str]:
    """The corpus's whitespace tokens, streamed and cut into consecutive passages of
    `passage_words`, joined by single spaces. Passages run across document boundaries, as
    pre-training packs text, so short documents (a text file's paragraphs) are not lost. The last,
    shorter passage is kept when it is the only one or holds at least half a passage."""
    buf: list[str] = []
    emitted = False
    for doc in texts:
        buf.extend(doc.split())
        while len(buf) >= passage_words:
            yield " ".join(buf[:passage_words])
            del buf[:passage_words]
            emitted = True
    if buf and (not emitted or len(buf) >= max(1, passage_words // 2)):
        yield " ".join(buf)


def reservoir_sample(items: Iterable[T], k: int, rng: np.random.Generator) -> tuple[list[T], int]:
    """A uniform random sample of `k` items of a stream of unknown length, in one pass and O(k)
    memory (Algorithm R, Vitter 1985): item i >= k replaces slot j ~ U{0..i} when j < k. Returns
    (sample, items seen); every item, in stream order, when the stream has at most k."""
    sample: list[T] = []
    seen = 0
    for i, item in enumerate(items):
        if i < k:
            sample.append(item)
        else:
            j = int(rng.integers(i + 1))
            if j < k:
                sample[j] = item
        seen = i + 1
    return sample, seen


class LazyEmbedder:
    """Loads the sentence-transformers model on the first `encode`, so fully cached calls load none."""

    def __init__(self, name: str, device: str = "auto"):
        self.name, self.device, self.model = name, device, None

    def encode(self, texts, **kwargs):
        if self.model is None:
            self.model = models.load_embedder(self.name, self.device)
        return self.model.encode(texts, **kwargs)


def sample_path(cfg: OverlapConfig, embedder_key: str) -> Path:
    """Where reference_sample caches its passages: by the corpus fingerprint, the embedder key and
    the sample settings."""
    spec = require_reference(cfg, "ref_similarity")
    key = text_key("passages-v1", fingerprint_files([spec], cfg.reference_field, split=cfg.reference_split),
                    embedder_key, str(cfg.sample_passages),
                    str(cfg.passage_words), str(cfg.sample_seed))   # bump v1 when `passages` changes
    return models.cache_root() / "overlap" / f"sample-{key}.npz"


def reference_sample(cfg: OverlapConfig, embedder, embedder_key: str, progress: bool = False) -> tuple[list[str], np.ndarray, dict]:
    """(passages, (P, D) unit embeddings, cost) of the seeded passage sample of cfg.reference.
    Cached in <cache>/overlap/ by the corpus fingerprint, the embedder key and the sample settings."""
    spec = require_reference(cfg, "ref_similarity")
    path = sample_path(cfg, embedder_key)
    if path.exists():
        with np.load(path) as z:
            return z["passages"].tolist(), z["embeddings"], {"passages": len(z["passages"]), "passages_embedded": 0,
                                                             "passages_in_reference": int(z["total"])}
    t0 = time.perf_counter()
    texts = reference_texts(spec, cfg.reference_field, split=cfg.reference_split)
    sample, total = reservoir_sample(passages(texts, cfg.passage_words), cfg.sample_passages,
                                     np.random.default_rng(cfg.sample_seed))
    if not sample:
        raise UserError(f"the reference {spec} has no words, so no passages to compare with")
    emb = np.asarray(embedder.encode(sample, batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
                                     show_progress_bar=progress), dtype=np.float32)   # (P, D)
    assert emb.shape[0] == len(sample), f"embedder returned {emb.shape[0]} rows for {len(sample)} passages"
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, passages=np.array(sample), embeddings=emb, total=total)
    return sample, emb, {"passages": len(sample), "passages_embedded": len(sample), "passages_in_reference": total,
                         "sample_seconds": time.perf_counter() - t0}


def knn_similarity(x: np.ndarray, ref: np.ndarray, k: int, rows: int = 1024) -> np.ndarray:
    """(N,) mean cosine similarity of each row of x (N, D) to its k most similar rows of ref (P, D)
    (all of them when P < k); rows are re-normalised. Blocks of `rows` bound the (rows, P) matrix."""
    x, ref = diversity.unit(x), diversity.unit(ref)
    k = min(k, len(ref))
    out = np.empty(len(x))
    for s in range(0, len(x), rows):
        sim = x[s : s + rows] @ ref.T                                   # (B, P)
        out[s : s + rows] = np.partition(sim, len(ref) - k, axis=1)[:, len(ref) - k :].mean(1)   # k largest
    return out


def check_passage_embedder(embedder_name: str) -> None:
    """ref_similarity embeds plain passages: model.embedder=model (the LM's pooled hidden states of
    chat-formatted examples, computed in its scoring pass) cannot, so it is a ConfigError."""
    if embedder_name == models.MODEL_EMBEDDER:
        raise ConfigError(
            "ref_similarity embeds plain passages of the reference corpus and the examples' text with a "
            "sentence-transformers model; model.embedder=model pools the causal LM's hidden states of each "
            "chat-formatted example inside its scoring pass, which does not apply to passages: set "
            f"model.embedder (--embedder) to a sentence-transformers model, e.g. {models.EMBEDDED_EMBEDDER}")


def similarity_scores(texts: Sequence[str], cfg: OverlapConfig, embedder_name: str, device: str = "auto", progress: bool = False,
                      embedder=None) -> tuple[np.ndarray, dict]:
    """(N,) ref_similarity of `texts` and the cost. The example embeddings share the features cache
    with the `embeddings` feature (same embedder key and text key), so neither is computed twice."""
    check_passage_embedder(embedder_name)
    t0 = time.perf_counter()
    require_reference(cfg, "ref_similarity")
    embedder = embedder or LazyEmbedder(embedder_name, device)
    key = models.fingerprint(embedder_name)
    _, ref, cost = reference_sample(cfg, embedder, key, progress)
    x, c = compute_embeddings(embedder, list(texts), models.cache_root() / "features", key, progress_bar=progress)
    scores = knn_similarity(x, ref, cfg.neighbours)
    return scores, {**cost, "examples_embedded": c["embed_examples"], "examples": len(texts),
                    "neighbours": min(cfg.neighbours, len(ref)), "seconds": time.perf_counter() - t0}


@PROBES.register("reference_similarity",
                 "mean cosine of each example's embedding (model.embedder) to its overlap.neighbours nearest "
                 "passages of a seeded sample of the reference corpus (overlap.sample_passages)",
                 provides=("ref_similarity",), needs_model=False, needs_labels=False)
def reference_similarity(ctx: ProbeContext) -> tuple[dict[str, np.ndarray], dict]:
    """Embedding similarity to the reference: nearest neighbours over a passage sample."""
    cfg = overlap_settings(ctx)
    model_cfg = ctx.model_cfg
    if model_cfg is None:
        model_cfg = ModelConfig()
    scores, cost = similarity_scores([ex.text for ex in ctx.examples], cfg, model_cfg.embedder, model_cfg.device,
                                     ctx.progress)
    return {"ref_similarity": scores.astype(np.float32)}, cost


# ---------------------------------------------------------------------------- strategies
def spread_scores(features: Features, by: str, strategy: str, budget: int) -> np.ndarray:
    """(N,) the `by` scores; an error when they are all equal and the pick would be a random draw."""
    s = diversity.field_scores(features, by, strategy)
    if budget < len(s) and s.max() == s.min():
        hint = (" On short or off-domain pools every n-gram misses; try by=ref_vocab or by=ref_similarity, "
                "a smaller overlap.n, or a reference closer to the pool." if by.startswith("ref_") else "")
        raise FeatureUnavailableError(f"strategy {strategy!r}: {by} is {s[0]:g} for all {len(s)} pool examples, "
                                      f"so choosing {budget} by it would be a random draw.{hint}")
    return s


def note_ties(s: np.ndarray, idx: np.ndarray, by: str, strategy: str) -> None:
    """Log how many picks a random tie-break decided (those tied with unpicked examples)."""
    chosen = np.zeros(len(s), bool)
    chosen[idx] = True
    cut = s[idx[-1]]
    left = int((s[~chosen] == cut).sum())
    if left:
        drawn = int((s[idx] == cut).sum())
        log.warning(f"{strategy}: {drawn} of {len(idx)} picks were drawn at random among {drawn + left} examples "
                    f"tied at {by}={cut:g}")


@STRATEGIES.register("novel", "least like the reference corpus first: lowest by= (default ref_overlap, n-gram "
                     "overlap; or ref_vocab, ref_span, ref_similarity, any score)", needs=(), labelled=PER_EXAMPLE)
def novel(features: Features, budget: int, rng: np.random.Generator,
          by: diversity.ScoreName = "ref_overlap") -> Selection:
    """The examples with the lowest `by`: text the reference (a pre-training stand-in) has not seen.
    Sources: the pre-training interaction of Flores et al. 2026 (docs/research-protocol.md); domain
    overlap as a data criterion, Gururangan et al. 2020 and DSIR (Xie et al. 2023). A hybrid with
    another score is `weighted`, e.g. weights={ref_overlap: -1, loss: 1} (novel and hard)."""
    s = spread_scores(features, by, "novel", budget)
    idx = top_k(-s, budget, rng)
    note_ties(s, idx, by, "novel")
    return Selection(idx, s[idx], f"{by} (lowest first: least like the reference)", s)


@STRATEGIES.register("familiar", "most like the reference corpus first: highest by= (default ref_overlap, n-gram "
                     "overlap; or ref_vocab, ref_span, ref_similarity, any score)", needs=(), labelled=PER_EXAMPLE)
def familiar(features: Features, budget: int, rng: np.random.Generator,
          by: diversity.ScoreName = "ref_overlap") -> Selection:
    """The examples with the highest `by`: text most like the reference (a pre-training stand-in),
    which the model may already half know. Sources as for `novel` (Flores et al. 2026; Gururangan
    et al. 2020; DSIR, Xie et al. 2023). Hybrid: `weighted` with weights={ref_overlap: 1, loss: 1}."""
    s = spread_scores(features, by, "familiar", budget)
    idx = top_k(s, budget, rng)
    note_ties(s, idx, by, "familiar")
    return Selection(idx, s[idx], f"{by} (highest first: most like the reference)", s)

