"""Greedy decoding that drops finished rows: the batch shrinks as rows reach a stop token.

transformers' `generate` keeps every row of a batch until the last one stops, so a batch of 50
test prompts whose answers are ~15 tokens runs as many decoding steps as its longest answer (64
when one row repeats itself), for every row: in the demo's recorded runs only 23-44% of the
decoded token-steps were kept (eval/results/bench_throughput-cpu.txt). Here each step runs only
the rows still going; their KV cache rows are selected in place (DynamicCache.batch_select_indices).

Same answer as `generate(do_sample=False)`: the argmax of the next-token logits, left padding
masked, position ids counted over real tokens (as `generate` computes them), stop at any of the
stop ids. Shrinking the batch changes the matmul shapes, so logits can differ in the last float
bits (a near-tie may flip, as with any change of batch size). The LM head runs only on each row's
last position. Models whose generation config asks for logits processors (repetition penalty,
banned n-grams, forced tokens, a minimum length, ...) keep `generate` (see `plain_greedy`).
"""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Sequence

PROCESSOR_FIELDS = {"repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
                    "bad_words_ids": None, "force_words_ids": None, "suppress_tokens": None,
                    "begin_suppress_tokens": None, "forced_bos_token_id": None, "forced_eos_token_id": None,
                    "min_length": 0, "min_new_tokens": None, "sequence_bias": None, "exponential_decay_length_penalty": None,
                    "renormalize_logits": False}
"""Generation-config fields that make `generate` change greedy logits, with their neutral values."""


def plain_greedy(model) -> bool:
    """Whether the model's generation config leaves greedy decoding plain (no logits processor),
    so greedy_decode gives generate's answer."""
    config = getattr(model, "generation_config", None)

    def neutral(value, default) -> bool:
        return value is None or value == default or (isinstance(value, (list, tuple, dict)) and not value)

    return config is None or all(neutral(getattr(config, name, None), default)
                                 for name, default in PROCESSOR_FIELDS.items())


def greedy_decode(model, ids, mask, max_new_tokens: int, stop_ids: Sequence[int],
                  route: Callable[[object], ContextManager] | None = None) -> list[list[int]]:
    """New token ids of each row of the left-padded batch ids, mask (B, T), up to `max_new_tokens`,
    each ending at (and including) its first stop id if it met one. `route(rows)` (optional) is
    entered around each forward with the original row numbers of the rows it runs (grouped LoRA
    uses it to route rows to their adapters)."""
    import torch
    from transformers import DynamicCache

    from llm_al.features.engine import cache_kwarg
    from llm_al.features.formatting import head_logits

    route = route or (lambda rows: contextlib.nullcontext())
    decoder = model.get_decoder()
    key = cache_kwarg(decoder)
    device = ids.device
    B = ids.shape[0]
    out: list[list[int]] = [[] for _ in range(B)]
    if max_new_tokens < 1 or B == 0:
        return out
    stops = torch.tensor(sorted(set(stop_ids)), device=device)
    alive = torch.arange(B, device=device)                      # original row of each running row
    position = (mask.long().cumsum(-1) - 1).clamp(min=0)        # generate's position ids for left padding
    cache = DynamicCache(config=model.config)
    attn, step_ids, step_pos = mask, ids, position
    with torch.inference_mode():
        for step in range(max_new_tokens):
            with route(alive):
                hidden = decoder(input_ids=step_ids, attention_mask=attn, position_ids=step_pos,
                                 **{key: cache}, use_cache=True).last_hidden_state[:, -1]      # (b, H)
            token = head_logits(model, hidden).argmax(-1)                                      # (b,)
            for row, t in zip(alive.tolist(), token.tolist()):
                out[row].append(t)
            going = ~torch.isin(token, stops)
            if step == max_new_tokens - 1 or not bool(going.any()):
                break
            if not bool(going.all()):
                keep = going.nonzero()[:, 0]
                cache.batch_select_indices(keep)
                alive, token, attn, step_pos = alive[keep], token[keep], attn[keep], step_pos[keep]
            attn = torch.cat([attn, attn.new_ones((len(alive), 1))], 1)
            step_pos = step_pos[:, -1:] + 1
            step_ids = token[:, None]
    return out
