"""Per-example features, computed once and cached on disk.

- `loss`: mean negative log-likelihood (nats/token) of the response tokens given the prompt, under
  the base model; `entropy`: mean predictive entropy at those positions; `n_tokens`: their count.
  Batched, sorted by length (little padding), with the LM head applied at response positions only.
- `embeddings`: L2-normalised sentence embeddings of each example's text.
- `length`: response length in words (needs no model).

The caches hold one row per example text, keyed by a hash of the exact formatted text, in a file
per (model fingerprint, settings): a second run does no forward pass it has done before, and a new
pool that shares examples with an old one scores only the new ones.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from llm_al.data import Example
from llm_al.errors import FeatureUnavailableError
from llm_al.formatting import Tokenized, pack, response_logits, tokenize
from llm_al.io import atomic_path

FEATURE_NAMES = ("loss", "entropy", "n_tokens", "length", "embeddings")


MIN_K_FRACTIONS = (0.1, 0.2, 0.3, 0.5)
STAT_COLUMNS = ("nll_sum", "entropy_sum", "n_tokens", *(f"min_k_{k}" for k in MIN_K_FRACTIONS))
_NEEDS_HINT = {"loss": "a model (model.name)", "entropy": "a model (model.name)", "n_tokens": "a model",
               "min_k": "a model (model.name)", "ifd": "a model (model.name)", "direct_loss": "a model",
               "scorer_ifd": "a second, small scorer model (model.scorer=..., e.g. a GPT-2-size model)",
               "embeddings": "an embedder (model.embedder)"}


@dataclass
class Features:
    """Aligned with a pool: row i describes pool.examples[i]. Absent features are None."""

    ids: list[str]
    length: np.ndarray                         # (N,) response words (NaN when unlabelled)
    loss: np.ndarray | None = None             # (N,) mean response NLL given the prompt, nats/token
    entropy: np.ndarray | None = None          # (N,) mean predictive entropy at response positions, nats
    n_tokens: np.ndarray | None = None         # (N,) response tokens scored
    min_k: np.ndarray | None = None            # (N, len(MIN_K_FRACTIONS)) mean of the lowest k% token log-probs
    direct_loss: np.ndarray | None = None      # (N,) mean response NLL with no prompt (IFD's denominator)
    scorer_ifd: np.ndarray | None = None       # (N,) IFD under a separate small scorer model (Superfiltering)
    embeddings: np.ndarray | None = None       # (N, D) unit-norm
    scores: dict[str, np.ndarray] = field(default_factory=dict)   # (N,) each, from probes (llm_al.probes)
    cost: dict = field(default_factory=dict)   # what computing them cost (seconds, passes, tokens)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def ifd(self) -> np.ndarray | None:
        """Instruction-following difficulty (Cherry LLM): loss given the prompt / loss without it."""
        if self.loss is None or self.direct_loss is None:
            return None
        return ifd_ratio(self.loss, self.direct_loss)

    def get(self, name: str) -> np.ndarray | None:
        """A feature by name: a field, the `ifd` ratio, or a probe score; None when absent."""
        if name in self.scores:
            return self.scores[name]
        return getattr(self, name, None) if name != "scores" and name != "cost" else None

    def require(self, name: str) -> np.ndarray:
        value = self.get(name)
        if value is None:
            from llm_al.probes import hint

            raise FeatureUnavailableError(
                f"feature {name!r} was not computed for this pool; it needs "
                f"{_NEEDS_HINT.get(name) or hint(name) or name}")
        return value

    def take(self, indices: Sequence[int]) -> "Features":
        idx = np.asarray(indices, dtype=np.int64)
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        out = {k: (v if v is None or k in ("cost", "scores") else [v[i] for i in idx] if k == "ids" else v[idx])
               for k, v in values.items()}
        out["scores"] = {k: v[idx] for k, v in self.scores.items()}
        out["cost"] = dict(self.cost)
        return Features(**out)


def response_words(examples: Sequence[Example]) -> np.ndarray:
    """(N,) words in each response; NaN for unlabelled examples (no response to count)."""
    return np.array([len(ex.response.split()) if ex.is_labelled else np.nan for ex in examples], dtype=np.float32)


# ---------------------------------------------------------------------------- batching
def length_sorted_batches(lengths: Sequence[int], max_tokens: int, max_batch: int) -> list[list[int]]:
    """Groups of indices, longest first, each padded size (rows x longest) within `max_tokens`."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, cur, cur_max = [], [], 0
    for i in order:
        new_max = max(cur_max, lengths[i])
        if cur and (len(cur) + 1 > max_batch or new_max * (len(cur) + 1) > max_tokens):
            batches.append(cur)
            cur, new_max = [], lengths[i]
        cur.append(i)
        cur_max = new_max
    if cur:
        batches.append(cur)
    return batches


# ---------------------------------------------------------------------------- the loss pass
def response_token_stats(model, items: Sequence[Tokenized], pad_id: int, max_tokens: int = 4096,
                         max_batch: int = 64, progress: Callable | None = None) -> np.ndarray:
    """(N, len(STAT_COLUMNS)) array per item: summed response NLL, summed predictive entropy,
    response-token count, and for each k in MIN_K_FRACTIONS the mean of the lowest k% of the
    response-token log-probs (Min-K% Prob).

    One forward pass of the decoder per batch; the LM head runs only on the hidden states that
    predict response tokens, so prompt positions cost no vocabulary projection.
    """
    import torch

    device = next(model.parameters()).device
    out = np.zeros((len(items), len(STAT_COLUMNS)), dtype=np.float64)
    batches = length_sorted_batches([t.length for t in items], max_tokens, max_batch)
    with torch.inference_mode():
        for batch in batches:
            ids, mask, rows, pos, targets = (t.to(device) for t in pack([items[i] for i in batch], pad_id))
            logits = response_logits(model, ids, mask, rows, pos)          # (M, V)
            logp = torch.log_softmax(logits, dim=-1)
            token_lp = logp.gather(1, targets[:, None])[:, 0]              # (M,)
            ent = -(logp.exp() * logp).sum(-1)                            # (M,)
            sums = torch.zeros((len(batch), 2), dtype=torch.float64, device=device)
            sums.index_add_(0, rows, torch.stack([-token_lp, ent], 1).double())
            counts = torch.bincount(rows, minlength=len(batch))            # (B,)
            out[batch, :2] = sums.cpu().numpy()
            out[batch, 2] = counts.cpu().numpy()
            out[batch, 3:] = _min_k_means(token_lp.double(), rows, counts).cpu().numpy()
            if progress:
                progress(len(batch))
    return out


def _min_k_means(token_lp, rows, counts):
    """(B, len(MIN_K_FRACTIONS)): mean of the ceil(k * R_b) lowest log-probs of each row b."""
    import torch

    B, R = len(counts), int(counts.max())
    starts = torch.cumsum(counts, 0) - counts                              # (B,) offset of each row
    col = torch.arange(len(rows), device=rows.device) - starts[rows]      # (M,) position within row
    padded = torch.full((B, R), float("inf"), dtype=token_lp.dtype, device=rows.device)
    padded[rows, col] = token_lp
    csum = padded.sort(dim=1).values.cumsum(1)                            # (B, R) ascending log-probs
    out = []
    for k in MIN_K_FRACTIONS:
        kk = torch.clamp(torch.ceil(k * counts.double()).long(), min=1)    # (B,)
        out.append(csum[torch.arange(B), kk - 1] / kk)
    return torch.stack(out, 1)


def direct_items(items: Sequence[Tokenized], start_id: int) -> list[Tokenized]:
    """The same responses with no prompt, after a single start token (IFD's "direct answer")."""
    return [Tokenized([start_id], t.response_ids, t.truncated) for t in items]


# ---------------------------------------------------------------------------- caches
def _text_key(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:24]


class RowCache:
    """A file of rows keyed by text hash: load, find the missing keys, add rows, save atomically."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: dict[str, np.ndarray] = {}
        if path.exists():
            with np.load(path) as z:
                self.rows = dict(zip(z["keys"].tolist(), z["values"]))

    def missing(self, keys: Sequence[str]) -> list[int]:
        return [i for i, k in enumerate(keys) if k not in self.rows]

    def add(self, keys: Sequence[str], values: np.ndarray) -> None:
        self.rows.update(zip(keys, values))
        keys_all = np.array(list(self.rows), dtype=object).astype(str)
        with atomic_path(self.path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, keys=keys_all, values=np.stack([self.rows[k] for k in self.rows]))

    def get(self, keys: Sequence[str]) -> np.ndarray:
        return np.stack([self.rows[k] for k in keys])


def loss_cache_plan(tokenizer, examples: Sequence[Example], cache_dir: Path, model_key: str, dtype: str,
                    max_length: int, direct: bool) -> tuple[RowCache, list[Tokenized], list[str]]:
    """The cache file, the token items and their cache keys of one scoring pass (also what
    `--dry-run` uses to count what is still to score)."""
    kind = "direct" if direct else "loss"
    dtype = dtype.replace("torch.", "")
    cache = RowCache(cache_dir / f"{kind}-v2-{_text_key(model_key, dtype, str(max_length))}.npz")
    items = tokenize(tokenizer, examples, max_length)
    if direct:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        items = direct_items(items, start)
    keys = [_text_key(",".join(map(str, t.prompt_ids)), ",".join(map(str, t.response_ids))) for t in items]
    return cache, items, keys


def compute_loss_features(model, tokenizer, examples: Sequence[Example], cache_dir: Path, model_key: str,
                          max_length: int, max_tokens: int = 4096, progress_bar: bool = True,
                          direct: bool = False) -> tuple[np.ndarray, dict]:
    """(N, len(STAT_COLUMNS)) token statistics for `examples` (see response_token_stats), reusing the
    cache; and what it cost. `direct=True` scores the responses without their prompts."""
    from tqdm.auto import tqdm

    kind = "direct" if direct else "loss"
    cache, items, keys = loss_cache_plan(tokenizer, examples, cache_dir, model_key,
                                         str(next(model.parameters()).dtype), max_length, direct)
    todo = cache.missing(keys)
    t0 = time.perf_counter()
    if todo:
        bar = tqdm(total=len(todo), desc=f"scoring {kind}", unit="ex", disable=not progress_bar)
        stats = response_token_stats(model, [items[i] for i in todo], tokenizer.pad_token_id, max_tokens,
                                     progress=bar.update)
        bar.close()
        cache.add([keys[i] for i in todo], stats)
    cost = {f"{kind}_seconds": time.perf_counter() - t0, f"{kind}_examples_scored": len(todo),
            f"{kind}_tokens_scored": int(sum(items[i].length for i in todo)),
            f"{kind}_tokens_needed": int(sum(t.length for t in items)),       # cached or not
            "truncated": int(sum(t.truncated for t in items))}
    return cache.get(keys), cost


def compute_embeddings(embedder, texts: Sequence[str], cache_dir: Path, embedder_key: str,
                       batch_size: int = 64, progress_bar: bool = True) -> tuple[np.ndarray, dict]:
    cache = RowCache(cache_dir / f"emb-{_text_key(embedder_key)}.npz")
    keys = [_text_key(t) for t in texts]
    todo = cache.missing(keys)
    t0 = time.perf_counter()
    if todo:
        vecs = embedder.encode([texts[i] for i in todo], batch_size=batch_size, normalize_embeddings=True,
                               convert_to_numpy=True, show_progress_bar=progress_bar)
        cache.add([keys[i] for i in todo], vecs.astype(np.float32))
    return cache.get(keys), {"embed_seconds": time.perf_counter() - t0, "embed_examples": len(todo),
                             "embed_examples_needed": len(texts)}


def build_features(examples: Sequence[Example], ids: list[str], *, loss_stats: np.ndarray | None = None,
                   direct_stats: np.ndarray | None = None, scorer_ifd: np.ndarray | None = None,
                   embeddings: np.ndarray | None = None, cost: dict | None = None) -> Features:
    f = Features(ids=ids, length=response_words(examples), embeddings=embeddings, scorer_ifd=scorer_ifd,
                 cost=dict(cost or {}))
    if loss_stats is not None:
        n = np.maximum(loss_stats[:, 2], 1)
        f.loss = (loss_stats[:, 0] / n).astype(np.float32)
        f.entropy = (loss_stats[:, 1] / n).astype(np.float32)
        f.n_tokens = loss_stats[:, 2].astype(np.int64)
        f.min_k = loss_stats[:, 3:].astype(np.float32)
    if direct_stats is not None:
        f.direct_loss = (direct_stats[:, 0] / np.maximum(direct_stats[:, 2], 1)).astype(np.float32)
    return f


def ifd_ratio(conditioned: np.ndarray, alone: np.ndarray) -> np.ndarray:
    """IFD = mean response loss given the prompt / mean response loss alone."""
    return (conditioned / np.maximum(alone, 1e-8)).astype(np.float32)


def ifd_from_stats(loss_stats: np.ndarray, direct_stats: np.ndarray) -> np.ndarray:
    return ifd_ratio(loss_stats[:, 0] / np.maximum(loss_stats[:, 2], 1),
                     direct_stats[:, 0] / np.maximum(direct_stats[:, 2], 1))
