"""Evaluation by generating: batched greedy decoding, then the registered metrics.

No teacher forcing: the model writes each answer token by token (left-padded batches, stopping at
the end of its turn), and the text is scored against the reference. Per-example scores are kept.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

from llm_al.data import Example
from llm_al.formatting import prompt_text
from llm_al.metrics import METRICS, score_all

END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|endoftext|>", "</s>")


@dataclass
class EvalConfig:
    metrics: list[str] = field(default_factory=lambda: ["chrf", "bleu", "rougeL", "exact_match"])
    primary: str = "chrf"
    """The metric the comparison table and the verdicts use."""
    max_new_tokens: int = 64
    batch_size: int = 50

    def __post_init__(self) -> None:
        from llm_al.errors import ConfigError

        for name in self.metrics:
            METRICS.get(name)
        if self.primary not in self.metrics:
            raise ConfigError(f"eval.primary {self.primary!r} is not among eval.metrics {self.metrics}")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ConfigError("eval.max_new_tokens and eval.batch_size must be >= 1")


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
             progress_bar: bool = True) -> list[str]:
    """Greedy continuations of `prompts`, batched by length with left padding."""
    import torch
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    stops = stop_token_ids(model, tokenizer)
    outputs: list[str] = [""] * len(prompts)
    bar = tqdm(total=len(prompts), desc="generating", unit="ex", disable=not progress_bar)
    for start in range(0, len(order), batch_size):
        batch = order[start: start + batch_size]
        T = max(len(encoded[i]) for i in batch)
        ids = torch.full((len(batch), T), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(batch), T), dtype=torch.long)
        for b, i in enumerate(batch):                       # left padding
            ids[b, T - len(encoded[i]):] = torch.tensor(encoded[i])
            mask[b, T - len(encoded[i]):] = 1
        with torch.inference_mode():
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                                 max_new_tokens=max_new_tokens, eos_token_id=stops,
                                 pad_token_id=tokenizer.pad_token_id, temperature=None, top_p=None, top_k=None)
        for b, i in enumerate(batch):
            outputs[i] = tokenizer.decode(out[b, T:], skip_special_tokens=True).strip()
        bar.update(len(batch))
    bar.close()
    return outputs


def evaluate(model, tokenizer, examples: Sequence[Example], cfg: EvalConfig, progress_bar: bool = True) -> dict:
    """Generate for every test example and score; returns metrics, predictions and timing."""
    t0 = time.perf_counter()
    prompts = [prompt_text(tokenizer, ex.prompt_messages) for ex in examples]
    predictions = generate(model, tokenizer, prompts, cfg.max_new_tokens, cfg.batch_size, progress_bar)
    gen_seconds = time.perf_counter() - t0
    scores = score_all(cfg.metrics, predictions, [ex.response for ex in examples])
    return {
        "metrics": {name: s["score"] for name, s in scores.items()},
        "per_example": {name: s["per_example"] for name, s in scores.items()},
        "predictions": predictions,
        "ids": [ex.id for ex in examples],
        "seconds": time.perf_counter() - t0,
        "generate_seconds": gen_seconds,
    }
