"""Training K LoRA runs in one pass over one frozen base model (grouped LoRA, see llm_al.grouped).

Each step takes the next batch of every run still training, packs them into one right-padded
batch (the rows of run k consecutive and tagged k), runs the decoder once, computes each run's
loss (the mean over ITS batch's response tokens, as train_lora does) and backpropagates the sum.
The adapters' parameters are disjoint and rows do not interact in the decoder, so adapter k gets
exactly run k's gradient. Everything else stays per run, vectorised over the K dimension:

  * order and batches: ordered_batches(len(items), batch_size, epochs) of each run's own config;
  * initialisation: attach_lora(model, cfg, init_seed) of the run (bitwise peft's);
  * gradient clipping: clip_grad_norm_ over the run's own A and B of all layers
    (clip_coef = max_norm / (norm + 1e-6), clamped to 1);
  * AdamW (torch.optim.AdamW's formula: p *= 1 - lr*wd; exp_avg.lerp_(g, 1 - b1);
    exp_avg_sq = b2*exp_avg_sq + (1 - b2)*g*g; bias corrections from the run's own step count;
    eps 1e-8, betas (0.9, 0.999)) with a per-run active mask: a run that has finished (or has no
    batch this step) keeps its weights and moments untouched;
  * learning-rate schedule (constant / linear with warmup) over the run's own total steps.

With lora_dropout = 0 (the default) a grouped run equals train_lora with the same seed up to float
rounding (the batch shapes differ); with lora_dropout > 0 the dropout masks come from a per-run
generator seeded with the init seed, so runs are equivalent in distribution, not bitwise.
Not supported here: the out-of-memory micro-batch back-off of train_lora.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import torch

from llm_al.features.engine import ROW_TOKENS, decode_packed, prefix_cache, takes_block_masks
from llm_al.features.formatting import (Tokenized, head_logits, pack, pack_suffixes, plan_rows, response_logits,
                                        shared_prefix_length)
from llm_al.grouped import GroupedLora, attached, init_grouped
from llm_al.config import TrainConfig
from llm_al.train import TrainResult, ordered_batches

ARCH_FIELDS = ("lora_r", "lora_alpha", "lora_dropout", "target_modules")


@dataclass
class GroupedRun:
    """One run of a group: its items in training order, its adapter init seed, and optionally its
    own TrainConfig (epochs, batch_size, lr, schedule, warmup, weight_decay, max_grad_norm may
    differ between runs; the LoRA shape fields must not)."""

    items: Sequence[Tokenized]
    init_seed: int
    cfg: TrainConfig | None = None


@dataclass
class GroupedResult(TrainResult):
    grad_norms: list[float] = field(default_factory=list)
    """Total gradient norm of the run's adapter at each step, before clipping."""


def lr_factor(cfg: TrainConfig, step: int, total: int) -> float:
    """train_lora's LambdaLR factor at `step` (0-based) of a run of `total` steps."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "linear":
        return max(0.0, (total - step) / max(1, total - cfg.warmup_steps))
    return 1.0


class GroupedAdamW:
    """AdamW over parameters whose first dimension is the adapter (K, ...), with per-adapter
    learning rate, weight decay, step count and active mask. Same formula as
    torch.optim.AdamW (single-tensor, amsgrad off)."""

    def __init__(self, params: Sequence[torch.Tensor], K: int, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params, self.K, self.betas, self.eps = list(params), K, betas, eps
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        self.steps = torch.zeros(K, dtype=torch.float64)     # (K,) steps taken by each adapter

    @torch.no_grad()
    def step(self, active: torch.Tensor, lr: torch.Tensor, weight_decay: torch.Tensor) -> None:
        """active (K,) bool; lr, weight_decay (K,) float64. Inactive adapters are left as they are."""
        b1, b2 = self.betas
        self.steps += active.double()
        t = self.steps.clamp(min=1)                                    # (K,)
        step_size = lr / (1 - b1 ** t)                                 # (K,) float64, as Python floats in torch
        bc2_sqrt = (1 - b2 ** t).sqrt()                                # (K,)
        decay = 1 - lr * weight_decay                                  # (K,)
        for p, m, v in zip(self.params, self.exp_avg, self.exp_avg_sq):
            shape = (self.K,) + (1,) * (p.dim() - 1)
            on = active.to(p.device).view(shape)
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            as_p = lambda x: x.to(device=p.device, dtype=p.dtype).view(shape)        # noqa: E731
            new_p = p * as_p(decay)
            new_m = m.lerp(g, 1 - b1)
            new_v = v.mul(b2).addcmul_(g, g, value=1 - b2)
            denom = (new_v.sqrt() / as_p(bc2_sqrt)).add_(self.eps)
            new_p -= as_p(step_size) * (new_m / denom)
            p.copy_(torch.where(on, new_p, p))
            m.copy_(torch.where(on, new_m, m))
            v.copy_(torch.where(on, new_v, v))


@torch.no_grad()
def clip_per_adapter(params: Sequence[torch.Tensor], max_norm: torch.Tensor) -> torch.Tensor:
    """clip_grad_norm_ for each adapter k over its slices params[i][k]; returns the (K,) total norms."""
    norms = torch.stack([p.grad.flatten(1).norm(dim=1) for p in params if p.grad is not None])   # (P, K)
    total = torch.linalg.vector_norm(norms, dim=0)                                                # (K,)
    coef = (max_norm.to(total) / (total + 1e-6)).clamp(max=1.0)                                   # (K,)
    for p in params:
        if p.grad is not None:
            p.grad.mul_(coef.view((-1,) + (1,) * (p.dim() - 1)))
    return total


def _run_configs(runs: Sequence[GroupedRun], cfg: TrainConfig) -> list[TrainConfig]:
    cfgs = [r.cfg or cfg for r in runs]
    for c in cfgs:
        for name in ARCH_FIELDS:
            if getattr(c, name) != getattr(cfg, name):
                raise ValueError(f"grouped runs must share train.{name} ({getattr(c, name)!r} != {getattr(cfg, name)!r})")
    return cfgs


def train_grouped(model, runs: Sequence[GroupedRun], pad_id: int, cfg: TrainConfig, mode: str = "auto",
                  on_batch: Callable[[int, list[int]], None] | None = None,
                  progress_bar: bool = False, share_prefix: bool = True) -> tuple[GroupedLora, list[GroupedResult]]:
    """Train one LoRA adapter per run on `model`, all in one pass (see the module docstring).

    With `share_prefix` (the default) each step runs the prompt prefix its examples share (the chat
    template's system turn) once per run and reuses its keys and values, gradient included, for the
    rest of each example, packed with no padding (block-diagonal masks, as the scoring pass does);
    otherwise every example runs whole in a right-padded batch. The two agree to float rounding.

    Returns (GroupedLora holding the K trained adapters, one GroupedResult per run). The model is
    left as it was (its Linear layers put back, requires_grad flags and train/eval mode restored).
    `on_batch(k, positions)` sees run k's item positions at each of its steps. `seconds` of a run
    is its share of each step's time (the step's time divided by the runs in it)."""
    if not runs or any(not r.items for r in runs):
        raise ValueError("every grouped run needs items to train on")
    cfgs = _run_configs(runs, cfg)
    lora = init_grouped(model, replace(cfg), [r.init_seed for r in runs])
    steps = [ordered_batches(len(r.items), c.batch_size, c.epochs) for r, c in zip(runs, cfgs)]
    results = [GroupedResult(steps=len(s), seconds=0.0, micro_batch_size=c.batch_size) for s, c in zip(steps, cfgs)]
    params = lora.parameters()
    opt = GroupedAdamW(params, lora.K)
    max_norm = torch.tensor([c.max_grad_norm for c in cfgs], dtype=torch.float64)     # (K,)
    wd = torch.tensor([c.weight_decay for c in cfgs], dtype=torch.float64)            # (K,)
    was_training = model.training
    seeds = [r.init_seed for r in runs] if cfg.lora_dropout > 0 else None
    from tqdm.auto import tqdm

    with attached(model, lora, mode, dropout_seeds=seeds) as router:
        model.train()
        try:
            for step in tqdm(range(max(map(len, steps))), desc="grouped training", unit="step",
                             disable=not progress_bar):
                t0 = time.perf_counter()
                active = [k for k in range(lora.K) if step < len(steps[k])]
                if on_batch:
                    for k in active:
                        on_batch(k, steps[k][step])
                batch = [(k, [runs[k].items[i] for i in steps[k][step]]) for k in active]
                backward = _packed_backward if share_prefix else _padded_backward
                losses, tokens = backward(model, router, batch, pad_id, step)
                norms = clip_per_adapter(params, max_norm)
                on = torch.zeros(lora.K, dtype=torch.bool)
                on[active] = True
                lr = torch.tensor([c.lr * lr_factor(c, step, len(steps[k])) if k in active else 0.0
                                   for k, c in enumerate(cfgs)], dtype=torch.float64)  # (K,)
                opt.step(on, lr, wd)
                for p in params:
                    p.grad = None
                share = (time.perf_counter() - t0) / len(active)
                for k in active:
                    res = results[k]
                    res.losses.append(round(losses[k], 5))
                    res.tokens += tokens[k]
                    res.seconds += share
                    res.grad_norms.append(float(norms[k]))
        finally:
            model.train(was_training)
    for p in params:
        p.requires_grad_(False)
    return lora, results


def _padded_backward(model, router, batch: list[tuple[int, list[Tokenized]]], pad_id: int, step: int):
    """This step's examples of every active run (`batch`: (run, its items)) whole, one right-padded
    row each, one forward; backward of the sum of the runs' mean response losses.
    Returns ({run: loss}, {run: response tokens})."""
    ids, mask, rows, pos, targets = pack([t for _, items in batch for t in items], pad_id)  # (B, T) x2, (M,) x3
    tag = torch.tensor([k for k, items in batch for _ in items])                        # (B,) run of each row
    device = next(model.parameters()).device
    with router.rows(tag):
        logits = response_logits(model, ids.to(device), mask.to(device), rows.to(device), pos.to(device))  # (M, V)
    return _sum_backward(logits, targets.to(device), tag.to(device)[rows.to(device)], router.K,
                         [k for k, _ in batch], step)


def _packed_backward(model, router, batch: list[tuple[int, list[Tokenized]]], pad_id: int, step: int):
    """_padded_backward's result, with the shared prefix run once per run: its KV cache (A runs, one
    row each) is reused by that run's packed rows, and the gradient flows back through it."""
    items = [t for _, run_items in batch for t in run_items]
    P = shared_prefix_length(items)
    span = max(t.length for t in items)
    four_d = takes_block_masks(model, span)
    rows, row_run = [], []                                    # a row holds one run's items (one adapter)
    offset = 0
    for a, (_, run_items) in enumerate(batch):
        suffix = [t.length - P for t in run_items]
        for r in plan_rows(suffix, max(max(suffix), ROW_TOKENS) if four_d else 0):
            rows.append([offset + i for i in r])
            row_run.append(a)
        offset += len(run_items)
    device = next(model.parameters()).device
    packed = pack_suffixes(items, rows, P, pad_id).to(device)
    tags = torch.tensor([k for k, _ in batch])                                          # (A,) run of each prefix row
    decoder = model.get_decoder()
    kv = None
    if P:
        with router.rows(tags):
            kv = prefix_cache(decoder, torch.tensor([items[0].prompt_ids[:P]] * len(batch), device=device))
        at = torch.tensor(row_run, device=device)                                       # (B,) prefix row of each row
        kv = [(k.index_select(0, at), v.index_select(0, at)) for k, v in kv]            # (B, heads, P, d)
    row_tag = tags[row_run]                                                             # (B,) adapter of each row
    with router.rows(row_tag):
        hidden = decode_packed(model, decoder, packed, kv, four_d, model.get_input_embeddings().weight.dtype)
    logits = head_logits(model, hidden[packed.rows, packed.pos])                        # (M, V)
    return _sum_backward(logits, packed.targets, row_tag.to(device)[packed.rows], router.K,
                         [k for k, _ in batch], step)


def _sum_backward(logits, targets, tok_run, K: int, active: list[int], step: int):
    """Backward of the sum over the `active` runs of each run's mean token cross-entropy; tok_run
    (M,) is the run of each target. Returns ({run: loss}, {run: tokens})."""
    device = logits.device
    ce = torch.nn.functional.cross_entropy(logits, targets, reduction="none")                           # (M,)
    sums = torch.zeros(K, dtype=ce.dtype, device=device).index_add_(0, tok_run, ce)                     # (K,)
    counts = torch.bincount(tok_run, minlength=K)                                                        # (K,)
    means = sums / counts.clamp(min=1)                                                                   # (K,)
    values = {k: float(means[k].detach()) for k in active}
    for k, v in values.items():
        if not math.isfinite(v):
            raise FloatingPointError(f"training loss of grouped run {k} became {v} at step {step}")
    means[active].sum().backward()
    return values, {k: int(counts[k]) for k in active}
