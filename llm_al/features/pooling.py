"""Sentence vectors from the causal LM itself (`model.embedder=model`): the position-weighted mean of
its final hidden states over an example's tokens, L2-normalised, as SGPT (Muennighoff 2022) and
GritLM pool a decoder, and as RDS+ embeds data (Ivison et al. 2025, "Large-Scale Data Selection
for Instruction Tuning", arXiv 2503.01807: a strong, cheap baseline at scale).

The vectors come out of the scoring pass that computes the losses (engine.response_token_stats
pools each packed member's hidden states beside its token statistics): no second model and no
second pass, and they are cached beside the loss statistics, one row per example under the loss
cache's key (embedding_cache).

Which tokens: every token of the formatted example, the chat template's shared prefix (the system
turn) included, weighted 1, 2, ..., n by position, prompt and response alike (the response with the
template's end-of-turn tail). The prefix is not left out although it is the same for every example,
because where "shared" ends depends on the call: the scoring pass runs, once, the longest prefix
*the items of that call* share (engine.plan_batches), which is shorter in a mixed pool, longer in a
chunk of like prompts and all but one token of the prompt for a single item. Pooling the suffix
only would make a cached vector depend on its chunk-mates, and a target example embedded in a call
of its own would not be comparable with the pool. The prefix costs nothing: its hidden states come
out of the prefix pass that already runs once per call, and under position weights its share is
small (20 prefix tokens of a 60-token example carry 210 / 1830 = 11% of the weight). So a vector is
the same whichever way it is computed: packed, one item per padded row (models that take no
block mask), without a shared prefix, or by a plain `model(..., output_hidden_states=True)`
(tests/test_rds.py checks each).

    .venv/bin/pytest -q tests/test_rds.py       # ~30 s on a 2-core CPU
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from llm_al.data.pool import Example
from llm_al.errors import FeatureUnavailableError
from llm_al.features.cache import ShardedCache, text_key


def hidden_size(model) -> int:
    """Width of the decoder's last hidden states: the LM head's input."""
    return int(model.get_output_embeddings().weight.shape[-1])


def embedding_cache(cache_dir: Path, model_key: str, dtype: str, max_length: int) -> ShardedCache:
    """The cache of pooled vectors of one model, beside its loss cache and keyed like it (one row
    per token sequence, engine.loss_cache_plan's keys), float32 (N, hidden_size) unit rows."""
    dtype = dtype.replace("torch.", "")
    return ShardedCache(Path(cache_dir) / f"pooled-v1-{text_key(model_key, dtype, str(max_length))}")


def require_responses(examples: Sequence[Example]) -> None:
    """model.embedder=model embeds in the scoring pass, which reads each example's response."""
    unlabelled = [i for i, ex in enumerate(examples) if not ex.is_labelled]
    if unlabelled:
        raise FeatureUnavailableError(
            f"model.embedder=model pools the model's hidden states in its scoring pass, which reads each "
            f"example's response, but {len(unlabelled)} examples have none (the first is row "
            f"{examples[unlabelled[0]].row}): embed unlabelled examples with a sentence-transformers model "
            f"(model.embedder, --embedder)")


def prefix_weighted_sum(prefix_hidden):
    """(H,) float32: sum over the shared prefix's positions t = 0..P-1 of (t + 1) * h_t, from its
    (1, P, H) last hidden states; what every item of the call adds to its own tokens' sum."""
    import torch

    P = prefix_hidden.shape[1]
    w = torch.arange(1, P + 1, dtype=torch.float32, device=prefix_hidden.device)      # (P,)
    return (prefix_hidden[0].float() * w[:, None]).sum(0)


def pool_members(hidden, batch, prefix_sum=None) -> np.ndarray:
    """(n_members, H) float32 unit vectors of a packed batch (formatting.PackedBatch): for each
    member, sum_t (t + 1) h_t over its own tokens (positions from batch.position_ids, which carry
    on after the prefix), plus `prefix_sum` (prefix_weighted_sum, None: no shared prefix), then
    L2-normalised (the weighted mean's 1 / sum(t + 1) drops out)."""
    import torch

    B, T, H = hidden.shape
    n = len(batch.members)
    real = batch.segment >= 0                                                          # (B, T)
    w = torch.where(real, batch.position_ids + 1, 0).to(torch.float32)               # (B, T) 1-based
    seg = torch.where(real, batch.segment, n).reshape(-1)                             # padding: a spare row
    sums = torch.zeros((n + 1, H), dtype=torch.float32, device=hidden.device)
    sums.index_add_(0, seg, (hidden.float() * w[..., None]).reshape(-1, H))
    sums = sums[:n]                                                                    # (n, H)
    if prefix_sum is not None:
        sums += prefix_sum
    return (sums / sums.norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)).cpu().numpy()

