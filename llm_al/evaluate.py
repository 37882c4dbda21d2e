"""Evaluation by generating: batched greedy decoding, then the registered metrics.

No teacher forcing: the model writes each answer token by token (left-padded batches, stopping at
the end of its turn; finished rows leave the batch, llm_al/decode.py), and the text is scored
against the reference. Per-example scores are kept.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Sequence

from llm_al.config import EvalConfig
from llm_al.data.pool import Example
from llm_al.decode import greedy_decode, plain_greedy
from llm_al.errors import UserError
from llm_al.features.formatting import prompt_text
from llm_al.features.memory import free_accelerator_memory, out_of_memory_errors
from llm_al.metrics import score_all

log = logging.getLogger("llm_al")
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|endoftext|>", "</s>")


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int):
    """(ids, attention mask), each (B, T) long tensors, the sequences right-aligned (left padding,
    so generation continues every prompt from its last token)."""
    import torch

    T = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), T), dtype=torch.long)
    for b, s in enumerate(sequences):
        ids[b, T - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[b, T - len(s):] = 1
    return ids, mask


def stop_token_ids(model, tokenizer) -> list[int]:
    ids: set[int] = set()
    eos = getattr(model.generation_config, "eos_token_id", None)
    ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in END_OF_TURN_TOKENS if t in vocab)
    return sorted(ids)


def generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int,
             progress_bar: bool = True, cost: dict | None = None) -> list[str]:
    """Greedy continuations of `prompts`, batched by length with left padding. On running out of
    accelerator memory the batch size is halved and the batch retried, down to one prompt; `cost`
    (if given) receives the back-offs and the final batch size."""
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    stops = stop_token_ids(model, tokenizer)
    outputs: list[str] = [""] * len(prompts)
    bar = tqdm(total=len(prompts), desc="generating", unit="ex", disable=not progress_bar)
    start, backoffs = 0, 0
    while start < len(order):
        batch = order[start: start + batch_size]
        ids, mask = left_pad([encoded[i] for i in batch], tokenizer.pad_token_id)
        T = ids.shape[1]
        try:
            new = decode_batch(model, ids.to(device), mask.to(device), max_new_tokens, stops, tokenizer.pad_token_id)
        except out_of_memory_errors() as err:
            free_accelerator_memory()
            if batch_size == 1:
                raise UserError(f"out of accelerator memory generating for a single prompt of {T} tokens "
                                f"(+ {max_new_tokens} new): lower eval.max_new_tokens or model.max_length "
                                f"({str(err).splitlines()[0][:200]})") from None
            batch_size, backoffs = max(1, batch_size // 2), backoffs + 1
            log.warning("out of memory while generating; retrying with batch_size=%d", batch_size)
            continue
        for b, i in enumerate(batch):
            outputs[i] = tokenizer.decode(new[b], skip_special_tokens=True).strip()
        bar.update(len(batch))
        start += len(batch)
    bar.close()
    if cost is not None:
        cost.update({"generate_oom_backoffs": backoffs, "generate_batch_size": batch_size})
    return outputs


def decode_batch(model, ids, mask, max_new_tokens: int, stops: Sequence[int], pad_id: int,
                 route=None) -> list[list[int]]:
    """Greedy new tokens of each row of a left-padded batch: decode.greedy_decode (finished rows
    leave the batch) when the model's generation config adds no logits processor, else
    transformers' generate (which then applies them, as before)."""
    import torch

    if plain_greedy(model):
        return greedy_decode(model, ids, mask, max_new_tokens, stops, route)
    with (route(torch.arange(len(ids))) if route else contextlib.nullcontext()), torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
                             eos_token_id=list(stops), pad_token_id=pad_id, temperature=None, top_p=None, top_k=None)
    return [row.tolist() for row in out[:, ids.shape[1]:]]


def evaluate(model, tokenizer, examples: Sequence[Example], cfg: EvalConfig, progress_bar: bool = True) -> dict:
    """Generate for every test example and score; returns metrics, predictions and timing."""
    t0 = time.perf_counter()
    prompts = [prompt_text(tokenizer, ex.prompt_messages) for ex in examples]
    gen_cost: dict = {}
    predictions = generate(model, tokenizer, prompts, cfg.max_new_tokens, cfg.batch_size, progress_bar, gen_cost)
    gen_seconds = time.perf_counter() - t0
    result = score_predictions(examples, predictions, cfg, gen_seconds)
    result["seconds"] = time.perf_counter() - t0
    if gen_cost["generate_oom_backoffs"]:                                       # only when it backed off
        result.update({"generate_oom_backoffs": gen_cost["generate_oom_backoffs"],
                       "generate_batch_size": gen_cost["generate_batch_size"]})
    return result


def score_predictions(examples: Sequence[Example], predictions: Sequence[str], cfg: EvalConfig,
                      gen_seconds: float) -> dict:
    """evaluate()'s result for `predictions` of `examples` (one run's generations, however made):
    the metrics, per-example scores, predictions, ids, and timing (seconds = generation + scoring).
    When the examples come from more than one task (their records' `task`, as in the mixed pool),
    `metrics` is the macro average of the tasks' own scores, `by_task` holds each task's, and
    `metrics_pooled` the scores of all examples as one corpus."""
    t0 = time.perf_counter()
    predictions, references = list(predictions), [ex.response for ex in examples]
    scores = score_all(cfg.metrics, predictions, references)
    result = {
        "metrics": {name: s["score"] for name, s in scores.items()},
        "per_example": {name: s["per_example"] for name, s in scores.items()},
        "predictions": predictions,
        "ids": [ex.id for ex in examples],
    }
    tasks = [ex.source.get("task") if isinstance(ex.source, dict) else None for ex in examples]
    if len(set(tasks)) > 1:                 # a mixed test set: each task on its own, then their macro average
        by_task = {}
        for task in sorted(set(tasks), key=str):
            rows = [i for i, t in enumerate(tasks) if t == task]
            part = score_all(cfg.metrics, [predictions[i] for i in rows], [references[i] for i in rows])
            by_task[str(task)] = {"n": len(rows), **{name: s["score"] for name, s in part.items()}}
        result["metrics_pooled"] = result["metrics"]
        result["metrics"] = {name: sum(t[name] for t in by_task.values()) / len(by_task) for name in cfg.metrics}
        result["by_task"] = by_task
        result["aggregate"] = f"macro average over {len(by_task)} tasks (metrics_pooled: all test examples as one corpus)"
    result.update({"seconds": gen_seconds + time.perf_counter() - t0, "generate_seconds": gen_seconds})
    return result
