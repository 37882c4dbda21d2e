"""Per-example features, computed once and cached on disk.

- `loss`: mean negative log-likelihood (nats/token) of the response tokens given the prompt, under
  the base model; `entropy`: mean predictive entropy at those positions; `n_tokens`: their count;
  `min_k` / `min_k_plus`: Min-K% Prob and Min-K%++ membership scores, from the same pass. The
  shared prompt prefix runs once, the rest is packed with no padding, and the LM head runs at
  response positions only (see response_token_stats).
- `embeddings`: L2-normalised sentence embeddings of each example's text (compute_embeddings), or,
  with model.embedder=model, the model's own pooled hidden states from the loss pass (pooling.py).
- `length`: response length in words (needs no model).

The caches hold one row per example text, keyed by a hash of the exact formatted text, in a folder
of append-only shards per (model fingerprint, settings) (llm_al.features.cache): a second run does no
forward pass it has done before, a new pool that shares examples with an old one scores only the
new ones, and a killed run resumes at the chunk it was in.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from llm_al.data.pool import Example
from llm_al.errors import UserError
from llm_al.features.cache import SavedElsewhere, ShardedCache, text_key
from llm_al.features.formatting import (PackedBatch, TokenTable, Tokenized, head_logits, pack_suffixes, plain_start_id,
                               plan_rows, shared_prefix_length, tokenize_table)
from llm_al.features.memory import free_accelerator_memory, out_of_memory_errors
from llm_al.features.pooling import (embedding_cache, hidden_size, pool_members, prefix_weighted_sum,
                                     require_responses)
from llm_al.io import claim, clear_stale_claims
from llm_al.types import MIN_K_FRACTIONS, Features, ifd_ratio

log = logging.getLogger("llm_al")
STAT_COLUMNS = ("nll_sum", "entropy_sum", "n_tokens", *(f"min_k_{k}" for k in MIN_K_FRACTIONS),
                *(f"min_k_plus_{k}" for k in MIN_K_FRACTIONS), "plain_nll_sum", "plain_tokens")
"""The last two: the NLL and count of the plain response's tokens (Tokenized.tail excluded), IFD's numerator."""


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
ROW_TOKENS = 256
"""Default row length the suffixes are packed into (longer rows: fewer, but attention over more
masked-out keys)."""
CPU_BATCH_TOKENS = 2048
"""On CPU, forward batches hold at most this many row tokens: 1-2k token batches ran 3-7% faster
than 4k ones on the 2-core machine (activations stay closer to the cache), see bench_scoring."""
HEAD_CHUNK = 256
"""Response positions per LM-head chunk: bounds the (chunk, vocab) float32 logits (50 MB at a
49k vocabulary); 128-1024 ran within 7% of each other on the 2-core CPU."""
CPU_SCORE_ROWS = 16
"""On CPU, token_scores runs over this many logit rows at a time, so its ~12 passes over the
(rows, vocab) temporaries stay in cache: 3.3x faster than over 1024 rows at once on the 2-core
CPU (8-16 rows were best; 48 were as slow as 1024). On GPU it runs on the whole chunk."""


def response_token_stats(model, items: Sequence[Tokenized], pad_id: int, max_tokens: int = 4096,
                         max_batch: int = 64, progress: Callable | None = None,
                         row_tokens: int = ROW_TOKENS, share_prefix: bool = True,
                         embed_out: np.ndarray | None = None) -> np.ndarray:
    """(N, len(STAT_COLUMNS)) array per item: summed response NLL, summed predictive entropy,
    response-token count, for each k in MIN_K_FRACTIONS the mean of the lowest k% of the
    response-token log-probs (Min-K% Prob), then the mean of the lowest k% of the Min-K%++ scores,
    then the summed NLL and the count of the plain response's tokens (without the template's tail).

    The work that does not change the answer is skipped: the prompt prefix every item shares (the
    chat template's system turn) runs once and its KV cache is reused by every batch; the rest of
    each item (its suffix) is packed back to back into rows of `row_tokens` (best-fit decreasing),
    each token attending to the prefix and its own item (a block-diagonal causal mask, position ids
    restarting after the prefix), so there is almost no padding; and the LM head runs only on the
    hidden states that predict response tokens. Batches hold up to `max_tokens` row tokens and
    `max_batch` rows. Models whose attention cannot take such a mask (e.g. flash-attention, or a
    sliding window shorter than a row) get one item per right-padded row instead, same answer.

    `embed_out`, (N, hidden_size) float32, receives each item's pooled vector from the same hidden
    states (position-weighted mean over all its tokens, prefix included: llm_al.features.pooling).
    """
    import torch

    device = next(model.parameters()).device
    out = np.zeros((len(items), len(STAT_COLUMNS)), dtype=np.float64)
    if not items:
        return out
    if device.type == "cpu":
        max_tokens = min(max_tokens, CPU_BATCH_TOKENS)
    P = shared_prefix_length(items) if share_prefix else 0
    row_span = P + max(max(t.length for t in items) - P, min(row_tokens, max_tokens))   # longest key span
    four_d = takes_block_masks(model, row_span)
    P, batches = plan_batches(items, max_tokens, max_batch, row_tokens, packed=four_d, share_prefix=share_prefix)
    decoder = model.get_decoder()
    # additive masks in the hidden states' dtype: eager adds them to the scores, sdpa takes them too
    # (and ran a little faster with them than with bool masks on CPU)
    mask_dtype = model.get_input_embeddings().weight.dtype
    with torch.inference_mode():
        prefix_kv, prefix_sum = None, None
        if P:
            prefix_kv, prefix_hidden = prefix_pass(decoder, torch.tensor([items[0].prompt_ids[:P]], device=device))
            prefix_sum = prefix_weighted_sum(prefix_hidden) if embed_out is not None else None    # (H,)
        for rows in batches:
            batch = pack_suffixes(items, rows, P, pad_id).to(device)
            hidden = decode_packed(model, decoder, batch, prefix_kv, four_d, mask_dtype)          # (B, T, H)
            if embed_out is not None:
                embed_out[batch.members] = pool_members(hidden, batch, prefix_sum)              # (n_mem, H)
            h = hidden[batch.rows, batch.pos]                                               # (M, H)
            chunks = [token_scores_blocked(head_logits(model, h[c:c + HEAD_CHUNK]), batch.targets[c:c + HEAD_CHUNK])
                      for c in range(0, len(h), HEAD_CHUNK)]
            lp, ent, z = (torch.cat(x).double() for x in zip(*chunks))                      # (M,) each
            n_mem = len(batch.members)
            plain = batch.plain.double()
            sums = torch.zeros((n_mem, 4), dtype=torch.float64, device=device)
            sums.index_add_(0, batch.member, torch.stack([-lp, ent, -lp * plain, plain], 1))
            counts = torch.bincount(batch.member, minlength=n_mem)                          # (n_mem,)
            block = torch.cat([sums[:, :2], counts[:, None].double(), _min_k_means(lp, batch.member, counts),
                               _min_k_means(z, batch.member, counts), sums[:, 2:]], 1)
            out[batch.members] = block.cpu().numpy()
            if progress:
                progress(n_mem)
    return out


_BLOCK_MASK_ATTENTION = ("sdpa", "eager")


def plan_batches(items: Sequence[Tokenized], max_tokens: int, max_batch: int, row_tokens: int = ROW_TOKENS,
                 packed: bool = True, share_prefix: bool = True) -> tuple[int, list[list[list[int]]]]:
    """(prefix_len, batches) of a scoring call: the prefix every item shares (0 if `share_prefix` is
    off), and batches of rows of item indices. Suffixes are packed into rows of `row_tokens` (or the
    longest suffix, if longer; one item per row if not `packed`), fullest rows first; a batch holds
    up to `max_batch` rows and `max_tokens` row tokens (rows x its longest row)."""
    P = shared_prefix_length(items) if share_prefix else 0
    suffix_len = [t.length - P for t in items]
    capacity = max(max(suffix_len), min(row_tokens, max_tokens)) if packed else 0
    rows = plan_rows(suffix_len, capacity)
    fill = [sum(suffix_len[i] for i in r) for r in rows]
    order = sorted(range(len(rows)), key=lambda j: -fill[j])
    batches, start = [], 0
    while start < len(order):
        n = max(1, min(max_batch, max_tokens // fill[order[start]]))
        batches.append([rows[j] for j in order[start:start + n]])
        start += n
    return P, batches


def _attn_implementation(model) -> str:
    return getattr(model.config, "_attn_implementation", None) or "eager"


def takes_block_masks(model, span: int) -> bool:
    """Whether the model's attention takes a custom 4D mask (sdpa, eager) that covers it fully: no
    sliding window shorter than `span`, the most keys a query may see (the custom mask replaces the
    model's own window mask)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    window = getattr(config, "sliding_window", None)
    return _attn_implementation(model) in _BLOCK_MASK_ATTENTION and not (window and window < span)


def prefix_cache(decoder, ids) -> list[tuple]:
    """The KV cache of prefix rows `ids` (R, P), per layer (keys, values) of (R, kv heads, P, d);
    differentiable when run with gradients (training reuses it the same way)."""
    return prefix_pass(decoder, ids)[0]


def prefix_pass(decoder, ids) -> tuple[list[tuple], object]:
    """prefix_cache's KV cache and the prefix's (R, P, H) last hidden states, from one pass."""
    done = decoder(input_ids=ids, use_cache=True)
    kv = getattr(done, "cache", None) or done.past_key_values        # transformers >= 5.24: `cache`
    return [(k, v) for k, v, *_ in kv], done.last_hidden_state


def decode_packed(model, decoder, batch: PackedBatch, prefix_kv, four_d: bool, mask_dtype):
    """(B, T, H) last hidden states of a packed batch, reusing the prefix's KV cache: one prefix row
    (1, ...) for every batch row, or one per batch row (B, ...)."""
    cache = None
    if prefix_kv is not None:
        from transformers import DynamicCache

        B = batch.ids.shape[0]
        cache = DynamicCache([(k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1)) for k, v in prefix_kv],
                             config=model.config)
    mask = batch.attention_mask(four_d, mask_dtype)
    return decoder(input_ids=batch.ids, attention_mask=mask, position_ids=batch.position_ids,
                   **{cache_kwarg(decoder): cache}, use_cache=cache is not None).last_hidden_state


def cache_kwarg(decoder) -> str:
    """The decoder's name for a KV cache argument: `cache` from transformers 5.24, `past_key_values`
    before (still accepted there, with a deprecation warning)."""
    import inspect

    return "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"


def token_scores(logits, targets):
    """(M,) each, from (M, V) logits and (M,) target ids: the target's log-prob log p(x_t), the
    predictive entropy H_t, and the Min-K%++ score z_t = (log p(x_t) - mu_t) / sigma_t, where
    mu_t = sum_v p(v) log p(v) = -H_t and sigma_t^2 = sum_v p(v) (log p(v) - mu_t)^2 (Zhang et al.,
    ICLR 2025). Works on x = logits - max (log p = x - logsumexp(x): the variance is the same) in
    place, one (M, V) temporary besides p; the variance is taken centred, not as E[x^2] - E[x]^2,
    which in float32 loses digits to cancellation."""
    import torch

    x = logits.float()
    x = x - x.amax(-1, keepdim=True)                                         # (M, V), <= 0
    x_t = x.gather(1, targets[:, None])[:, 0]                                # (M,)
    p = x.exp()
    norm = p.sum(-1)                                                         # (M,)
    p.div_(norm[:, None])                                                    # softmax
    tmp = p * x
    mean_x = tmp.sum(-1)                                                     # (M,) E_p[x]
    var = torch.mul(p, x.sub_(mean_x[:, None]).square_(), out=tmp).sum(-1)   # (M,) Var_p[x] = Var_p[log p]
    lse = norm.log()
    lp, mu = x_t - lse, mean_x - lse
    z = (lp - mu) / var.clamp_min(torch.finfo(var.dtype).tiny).sqrt()
    return lp, -mu, z


def token_scores_blocked(logits, targets):
    """token_scores over blocks of CPU_SCORE_ROWS rows on CPU (cache-sized temporaries), in one
    call on an accelerator. Each row is reduced on its own, so the blocks give the same numbers
(bit for bit in tests/test_scoring_engine.py)."""
    import torch

    if logits.device.type != "cpu" or len(logits) <= CPU_SCORE_ROWS:
        return token_scores(logits, targets)
    parts = [token_scores(logits[s:s + CPU_SCORE_ROWS], targets[s:s + CPU_SCORE_ROWS])
             for s in range(0, len(logits), CPU_SCORE_ROWS)]
    return tuple(torch.cat(x) for x in zip(*parts))


def _min_k_means(token_lp, rows, counts):
    """(B, len(MIN_K_FRACTIONS)): mean of the ceil(k * R_b) lowest values (log-probs, or Min-K%++
    scores) of each row b; `token_lp` (M,) holds the rows' values grouped by row, in row order."""
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
    """The plain responses (without the template's end-of-turn tail) with no prompt, after a single
    start token (IFD's "direct answer"; the start token from formatting.plain_start_id)."""
    return [Tokenized([start_id], t.plain_ids, t.truncated) for t in items]


# ---------------------------------------------------------------------------- caches
def loss_cache_plan(tokenizer, examples: Sequence[Example], cache_dir: Path, model_key: str, dtype: str,
                    max_length: int, direct: bool) -> tuple[ShardedCache, TokenTable, list[str]]:
    """The cache, the token items (compact: see TokenTable) and their cache keys of one scoring
    pass (also what `--dry-run` uses to count what is still to score)."""
    kind = "direct" if direct else "loss"
    dtype = dtype.replace("torch.", "")
    cache = ShardedCache(cache_dir / f"{kind}-v4-{text_key(model_key, dtype, str(max_length))}")
    items = tokenize_table(tokenizer, examples, max_length)
    if direct:
        items = items.plain_after([plain_start_id(tokenizer)])
    keys = [text_key(",".join(map(str, t.prompt_ids)), ",".join(map(str, t.response_ids))) for t in items]
    return cache, items, keys


SCORE_CHUNK = 256
"""Examples scored between two cache writes: a killed scoring run loses at most one chunk."""


def _stats_backing_off(model, items: Sequence[Tokenized], pad_id: int, state: dict, bar,
                       embed_out: np.ndarray | None = None) -> np.ndarray:
    """response_token_stats of `items`; on out-of-memory, halve state["max_tokens"] (kept for later
    chunks) and retry, until every batch holds a single example; then raise a UserError."""
    while True:
        done = bar.n
        try:
            return response_token_stats(model, items, pad_id, state["max_tokens"], progress=bar.update,
                                        embed_out=embed_out)
        except out_of_memory_errors() as err:
            free_accelerator_memory()
            lengths = [t.length for t in items]
            if all(len(b) == 1 for b in length_sorted_batches(lengths, state["max_tokens"], 64)):
                raise UserError(
                    f"out of accelerator memory scoring a single example of {max(lengths)} tokens "
                    f"(max_tokens backed off {state['oom_backoffs']} times to {state['max_tokens']}): lower "
                    f"model.max_length or use a device with more memory ({str(err).splitlines()[0][:200]})") from None
            state["max_tokens"] = max(1, state["max_tokens"] // 2)
            state["oom_backoffs"] += 1
            log.warning("out of memory while scoring; retrying with max_tokens=%d", state["max_tokens"])
            bar.n = done
            bar.refresh()


def compute_loss_features(model, tokenizer, examples: Sequence[Example], cache_dir: Path, model_key: str,
                          max_length: int, max_tokens: int = 4096, progress_bar: bool = True,
                          direct: bool = False, chunk_size: int = SCORE_CHUNK,
                          on_chunk: Callable[[int], None] | None = None) -> tuple[np.ndarray, dict]:
    """(N, len(STAT_COLUMNS)) token statistics for `examples` and what they cost: compute_model_features
    with no embeddings. `direct=True` scores the responses without their prompts."""
    stats, _, cost = compute_model_features(model, tokenizer, examples, cache_dir, model_key, max_length, max_tokens,
                                            progress_bar, direct, chunk_size, on_chunk)
    return stats, cost


def compute_model_features(model, tokenizer, examples: Sequence[Example], cache_dir: Path, model_key: str,
                           max_length: int, max_tokens: int = 4096, progress_bar: bool = True,
                           direct: bool = False, chunk_size: int = SCORE_CHUNK,
                           on_chunk: Callable[[int], None] | None = None,
                           embed: bool = False) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """(stats, vectors, cost): (N, len(STAT_COLUMNS)) token statistics of `examples` (response_token_stats)
    and, with `embed`, their (N, hidden_size) pooled vectors from the same with-prompt pass (model.embedder=
    model, pooling.py; else None). Each comes from its cache; the pass runs for what either lacks, filling both.

    The examples still to score go longest first in chunks of `chunk_size`; each chunk is added to
    the caches (atomically) as soon as it is scored, so a killed run resumes at the chunk it was in.
    Several processes scoring the same pool into the same cache (the workers of a sweep) share the
    work: each claims a chunk with a lock file before scoring it, passes over chunks another
    process holds and, once through the list, scores whatever of those is still missing (so a
    worker never waits on another, and at most the chunks in flight elsewhere are scored twice).
    `on_chunk(n)` runs after each chunk is saved, with the examples this call scored so far. On
    running out of accelerator memory the token budget per batch is halved and the chunk retried
    (see cost)."""
    from tqdm.auto import tqdm

    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if embed and direct:
        raise ValueError("pooled vectors come from the with-prompt pass (direct=False)")
    if embed:
        require_responses(examples)
    kind = "direct" if direct else "loss"
    dtype = str(next(model.parameters()).dtype)
    cache, items, keys = loss_cache_plan(tokenizer, examples, cache_dir, model_key, dtype, max_length, direct)
    caches = [cache, *([embedding_cache(cache_dir, model_key, dtype, max_length)] if embed else [])]
    need = np.stack([np.isin(np.arange(len(keys)), each.missing(keys)) for each in caches])   # (caches, N) to write
    lengths = items.lengths
    todo = sorted(np.flatnonzero(need.any(0)).tolist(), key=lambda i: -lengths[i])
    state = {"max_tokens": max_tokens, "oom_backoffs": 0}
    t0 = time.perf_counter()
    scored: list[int] = []
    if todo:
        bar = tqdm(total=len(todo), desc=f"scoring {kind}", unit="ex", disable=not progress_bar)
        saved_elsewhere = SavedElsewhere(keys, todo)

        def score(chunk: list[int]) -> None:
            for c, each in enumerate(caches):                # rows other workers saved since the last look
                need[c, saved_elsewhere(each.new_keys())] = False
            chunk = [i for i in chunk if need[:, i].any()]
            if chunk:
                vectors = np.zeros((len(chunk), hidden_size(model)), dtype=np.float32) if embed else None
                stats = _stats_backing_off(model, [items[i] for i in chunk], tokenizer.pad_token_id, state, bar,
                                           vectors)
                for c, values in enumerate((stats, vectors)[:len(caches)]):
                    rows = [j for j, i in enumerate(chunk) if need[c, i]]
                    caches[c].add([keys[chunk[j]] for j in rows], values[rows])
                need[:, chunk] = False
                scored.extend(chunk)
                if on_chunk:
                    on_chunk(len(scored))

        held_elsewhere = []
        for start in range(0, len(todo), chunk_size):
            chunk = todo[start: start + chunk_size]
            with claim(cache.path / ".claims" / text_key(*(keys[i] for i in chunk))) as mine:
                if mine:
                    score(chunk)
                else:
                    held_elsewhere.append(chunk)
        for chunk in held_elsewhere:                         # mostly saved by now; score what is not
            score(chunk)
        clear_stale_claims(cache.path / ".claims")           # a killed run's lock, and the empty folder
        bar.close()
    seconds = time.perf_counter() - t0
    cost = {f"{kind}_seconds": seconds, f"{kind}_examples_scored": len(scored),
            f"{kind}_tokens_scored": int(lengths[scored].sum()),
            f"{kind}_tokens_needed": int(lengths.sum()),                      # cached or not
            f"{kind}_oom_backoffs": state["oom_backoffs"], f"{kind}_max_tokens": state["max_tokens"],
            "truncated": int(items.truncated.sum())}
    if embed:                 # the pass that made them: shared with loss_seconds (one pass, both caches)
        cost.update({"embed_seconds": seconds, "embed_examples": len(scored), "embed_examples_needed": len(keys),
                     "embed_in_loss_pass": True})
    return cache.get(keys), caches[1].get(keys) if embed else None, cost


def compute_embeddings(embedder, texts: Sequence[str], cache_dir: Path, embedder_key: str,
                       batch_size: int = 64, progress_bar: bool = True) -> tuple[np.ndarray, dict]:
    cache = ShardedCache(cache_dir / f"emb-{text_key(embedder_key)}")
    keys = [text_key(t) for t in texts]
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
        K = len(MIN_K_FRACTIONS)
        f.min_k = loss_stats[:, 3:3 + K].astype(np.float32)
        f.min_k_plus = loss_stats[:, 3 + K:3 + 2 * K].astype(np.float32)
        f.plain_loss = (loss_stats[:, -2] / np.maximum(loss_stats[:, -1], 1)).astype(np.float32)
    if direct_stats is not None:
        f.direct_loss = (direct_stats[:, 0] / np.maximum(direct_stats[:, 2], 1)).astype(np.float32)
    return f


def ifd_from_stats(loss_stats: np.ndarray, direct_stats: np.ndarray) -> np.ndarray:
    """IFD from the two passes' statistics: the plain response's NLL given the prompt over its NLL
    with no prompt, over the same tokens (the template's tail is in neither)."""
    return ifd_ratio(loss_stats[:, -2] / np.maximum(loss_stats[:, -1], 1),
                     direct_stats[:, 0] / np.maximum(direct_stats[:, 2], 1))
