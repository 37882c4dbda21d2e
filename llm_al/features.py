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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from llm_al.data import Example
from llm_al.errors import FeatureUnavailableError
from llm_al.formatting import Tokenized, pack, response_logits, tokenize
from llm_al.io import atomic_path

FEATURE_NAMES = ("loss", "entropy", "n_tokens", "length", "embeddings")


@dataclass
class Features:
    """Aligned with a pool: row i describes pool.examples[i]. Absent features are None."""

    ids: list[str]
    length: np.ndarray                         # (N,) response words
    loss: np.ndarray | None = None             # (N,) mean response NLL, nats/token
    entropy: np.ndarray | None = None          # (N,) mean predictive entropy, nats
    n_tokens: np.ndarray | None = None         # (N,) response tokens scored
    embeddings: np.ndarray | None = None       # (N, D) unit-norm
    cost: dict = field(default_factory=dict)   # what computing them cost (seconds, passes, tokens)

    def __len__(self) -> int:
        return len(self.ids)

    def require(self, name: str) -> np.ndarray:
        value = getattr(self, name, None)
        if value is None:
            hint = {"loss": "a model (model=...)", "entropy": "a model (model=...)",
                    "n_tokens": "a model", "embeddings": "an embedder (embedder=...)"}.get(name, name)
            raise FeatureUnavailableError(f"feature {name!r} was not computed for this pool; it needs {hint}")
        return value

    def take(self, indices: Sequence[int]) -> "Features":
        idx = np.asarray(indices, dtype=np.int64)
        pick = lambda a: None if a is None else a[idx]  # noqa: E731
        return Features([self.ids[i] for i in idx], self.length[idx], pick(self.loss), pick(self.entropy),
                        pick(self.n_tokens), pick(self.embeddings), dict(self.cost))


def response_words(examples: Sequence[Example]) -> np.ndarray:
    return np.array([len(ex.response.split()) for ex in examples], dtype=np.float32)


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
    """(N, 3) array: summed response NLL, summed entropy, response-token count per item.

    One forward pass of the decoder per batch; the LM head runs only on the hidden states that
    predict response tokens, so prompt positions cost no vocabulary projection.
    """
    import torch

    device = next(model.parameters()).device
    out = np.zeros((len(items), 3), dtype=np.float64)
    batches = length_sorted_batches([t.length for t in items], max_tokens, max_batch)
    with torch.inference_mode():
        for batch in batches:
            ids, mask, rows, pos, targets = (t.to(device) for t in pack([items[i] for i in batch], pad_id))
            logits = response_logits(model, ids, mask, rows, pos)          # (M, V)
            logp = torch.log_softmax(logits, dim=-1)
            nll = -logp.gather(1, targets[:, None])[:, 0]
            ent = -(logp.exp() * logp).sum(-1)
            sums = torch.zeros((len(batch), 2), dtype=torch.float64, device=device)
            sums.index_add_(0, rows, torch.stack([nll, ent], 1).double())
            out[batch, :2] = sums.cpu().numpy()
            out[batch, 2] = [len(items[i].response_ids) for i in batch]
            if progress:
                progress(len(batch))
    return out


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


def compute_loss_features(model, tokenizer, examples: Sequence[Example], cache_dir: Path, model_key: str,
                          max_length: int, max_tokens: int = 4096, progress_bar: bool = True) -> tuple[np.ndarray, dict]:
    """(N, 3) [nll_sum, entropy_sum, n_tokens] for `examples`, reusing the cache; and its cost."""
    from tqdm.auto import tqdm

    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    cache = RowCache(cache_dir / f"loss-{_text_key(model_key, dtype, str(max_length))}.npz")
    items = tokenize(tokenizer, examples, max_length)
    keys = [_text_key(",".join(map(str, t.prompt_ids)), ",".join(map(str, t.response_ids))) for t in items]
    todo = cache.missing(keys)
    t0 = time.perf_counter()
    if todo:
        bar = tqdm(total=len(todo), desc="scoring loss", unit="ex", disable=not progress_bar)
        stats = response_token_stats(model, [items[i] for i in todo], tokenizer.pad_token_id, max_tokens,
                                     progress=bar.update)
        bar.close()
        cache.add([keys[i] for i in todo], stats)
    cost = {"loss_seconds": time.perf_counter() - t0, "loss_examples_scored": len(todo),
            "loss_tokens_scored": int(sum(items[i].length for i in todo)),
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
    return cache.get(keys), {"embed_seconds": time.perf_counter() - t0, "embed_examples": len(todo)}


def build_features(examples: Sequence[Example], ids: list[str], *, loss_stats: np.ndarray | None = None,
                   embeddings: np.ndarray | None = None, cost: dict | None = None) -> Features:
    f = Features(ids=ids, length=response_words(examples), embeddings=embeddings, cost=dict(cost or {}))
    if loss_stats is not None:
        n = np.maximum(loss_stats[:, 2], 1)
        f.loss = (loss_stats[:, 0] / n).astype(np.float32)
        f.entropy = (loss_stats[:, 1] / n).astype(np.float32)
        f.n_tokens = loss_stats[:, 2].astype(np.int64)
    return f
