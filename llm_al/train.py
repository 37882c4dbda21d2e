"""LoRA fine-tuning with peft, consuming examples in exactly the order given.

A plain training loop rather than the transformers Trainer, whose sampler shuffles by default:
here batch k of every epoch is examples[k*B:(k+1)*B], so a curriculum is what it says. Every
epoch replays the same order. The adapter's initialisation and its dropout draw from the `init`
seed stream; the order comes from the caller (the `order` stream). The base model is modified in
place by peft and restored by `unload`, so one loaded model serves many runs.

A step that runs out of accelerator memory is redone in consecutive micro-batches (half the size,
halved again while needed, and kept for later steps), their gradients accumulated so that the
update is the whole batch's; a single example that does not fit is a UserError.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from llm_al.config import TrainConfig
from llm_al.errors import UserError
from llm_al.features.formatting import Tokenized, pack, response_logits
from llm_al.features.memory import free_accelerator_memory, out_of_memory_errors

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    steps: int
    seconds: float
    losses: list[float] = field(default_factory=list)   # mean response loss per step
    tokens: int = 0                                     # response tokens trained on (all epochs)
    oom_backoffs: int = 0
    """Times a step ran out of accelerator memory and the micro-batch size was halved."""
    micro_batch_size: int = 0
    """Examples per forward/backward pass at the end: batch_size unless it backed off (then each
    step's gradient is accumulated over micro-batches of this size)."""


def ordered_batches(n: int, batch_size: int, epochs: int) -> list[list[int]]:
    """Positions of each optimiser step: consecutive chunks of 0..n-1, the same every epoch."""
    one_epoch = [list(range(s, min(s + batch_size, n))) for s in range(0, n, batch_size)]
    return [b for _ in range(epochs) for b in one_epoch]


def attach_lora(model, cfg: TrainConfig, init_seed: int):
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(init_seed)    # LoRA A matrices are drawn from torch's global generator
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.target_modules, task_type="CAUSAL_LM", bias="none")
    return get_peft_model(model, lora)


def train_lora(model, items: Sequence[Tokenized], pad_id: int, cfg: TrainConfig, init_seed: int,
               on_batch: Callable[[list[int]], None] | None = None, progress_bar: bool = True):
    """Attach a fresh LoRA adapter to `model` and train it on `items` in the given order.

    Returns (peft model, TrainResult). `on_batch` sees the item positions of every step (tests use
    it to prove the order). Call `detach_lora` afterwards to get the untouched base model back; if
    training fails, the adapter is removed before the error propagates.
    """
    if not items:
        raise ValueError("nothing to train on")
    peft_model = attach_lora(model, cfg, init_seed)
    t0 = time.perf_counter()
    try:
        result = optimise(peft_model, items, pad_id, cfg, on_batch, progress_bar)
    except BaseException:
        detach_lora(peft_model)   # leave the caller's base model as it was
        raise
    result.seconds = time.perf_counter() - t0
    return peft_model, result


def optimise(peft_model, items, pad_id, cfg: TrainConfig, on_batch, progress_bar) -> TrainResult:
    import torch
    from tqdm.auto import tqdm

    device = next(peft_model.parameters()).device
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = ordered_batches(len(items), cfg.batch_size, cfg.epochs)

    def lr_factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "linear":
            return max(0.0, (len(steps) - step) / max(1, len(steps) - cfg.warmup_steps))
        return 1.0

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    result = TrainResult(steps=len(steps), seconds=0.0, micro_batch_size=cfg.batch_size)
    peft_model.train()
    for batch in tqdm(steps, desc="training", unit="step", disable=not progress_bar):
        if on_batch:
            on_batch(batch)
        loss, n_tokens = _backward_backing_off(peft_model, [items[i] for i in batch], pad_id, device, result,
                                               opt, step=len(result.losses))
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        result.losses.append(round(loss, 5))
        result.tokens += n_tokens
    peft_model.eval()
    return result


def _backward_backing_off(peft_model, batch: list[Tokenized], pad_id: int, device, result: TrainResult, opt,
                          step: int) -> tuple[float, int]:
    """Accumulate the gradient of one step's loss (the mean over the batch's response tokens) into
    the parameters' .grad, in consecutive micro-batches of result.micro_batch_size examples.
    Returns (loss, response tokens).

    On running out of accelerator memory the step's partial gradient is dropped, the micro-batch
    size halved (and kept, in `result`, for later steps) and the step redone; a single example
    that does not fit is a UserError."""

    total = sum(len(t.response_ids) for t in batch)
    while True:
        micro = result.micro_batch_size
        chunk = batch[:micro]
        try:
            loss_sum = 0.0
            for start in range(0, len(batch), micro):
                chunk = batch[start: start + micro]
                loss_sum += _chunk_backward(peft_model, chunk, pad_id, device, total, step)
            return loss_sum / total, total
        except out_of_memory_errors() as err:
            reason = (str(err).splitlines() or [type(err).__name__])[0][:200]
        # Outside the except block, so the traceback (and the activations it holds) is gone.
        opt.zero_grad(set_to_none=True)
        free_accelerator_memory()
        if len(chunk) == 1:
            raise UserError(
                f"out of accelerator memory training on a single example of {chunk[0].length} tokens (step "
                f"{step}, after {result.oom_backoffs} halvings of the micro-batch size): lower model.max_length "
                f"or use a device with more memory ({reason})") from None
        result.micro_batch_size = len(chunk) // 2      # of the micro-batch that failed (a last one may be short)
        result.oom_backoffs += 1
        log.warning("out of memory while training (step %d); retrying with micro-batches of %d examples",
                    step, result.micro_batch_size)


def _chunk_backward(peft_model, chunk: list[Tokenized], pad_id: int, device, total: int, step: int) -> float:
    """Backward of one micro-batch's share of the step loss: its mean response loss weighted by its
    share of the step's `total` response tokens, so the summed gradients are the whole batch's.
    Returns the micro-batch's summed response loss."""
    import torch

    ids, mask, rows, pos, targets = (t.to(device) for t in pack(chunk, pad_id))
    logits = response_logits(peft_model, ids, mask, rows, pos)          # (M, V)
    loss = torch.nn.functional.cross_entropy(logits, targets)          # mean over the chunk's response tokens
    value = loss.item()
    if not math.isfinite(value):
        raise FloatingPointError(f"training loss became {value} at step {step}")
    n = targets.numel()
    (loss if n == total else loss * (n / total)).backward()
    return value * n


def save_adapter(peft_model, path: Path) -> None:
    """Standard peft format (adapter_config.json + adapter_model.safetensors)."""
    peft_model.save_pretrained(str(path), safe_serialization=True)


def detach_lora(peft_model):
    """Remove the adapter layers and return the original base model, weights unchanged."""
    return peft_model.unload()
