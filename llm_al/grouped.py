"""Grouped LoRA: K adapters on one frozen base model, each batch row routed to its own adapter.

Every linear layer that peft's LoRA would target (found by attaching a peft adapter and reading
which modules got LoRA layers) is wrapped by a `GroupedLoraLinear` holding stacked A (K, r, in)
and B (K, out, r). A forward computes, for row b of the batch,

    y[b] = base(x[b]) + (B[k_b] @ A[k_b] @ dropout(x[b])) * scaling,     k_b = router.index[b]

with the same operation order as peft's `lora_B(lora_A(dropout(x))) * scaling`. The per-row
adapter index is set before a forward with `router.rows(index)`, a context manager. Two ways to
apply the adapters (`mode`): "gather" picks A and B per row (index_select) and uses two bmm;
"loop" applies each adapter's F.linear to its consecutive rows (the rows of one run are
consecutive in every batch this module builds). Both give peft's result up to float rounding.
"auto" (the default) takes "loop" on a CPU or when the batch holds one run, else "gather": on a
CPU, gathering copies each row's A and B at every layer and decoding step (for 50 rows of one run,
~6 MB a layer a step at SmolLM2's size), which made grouped generation slower than peft's.

What is exact and what is not:
  * the stacked initial weights equal peft's for each init seed bitwise (they are peft's, copied);
  * a forward equals peft's forward with adapter k alone up to float32 rounding (different matmul
    shapes); with lora_dropout > 0 each run draws its dropout masks from its own generator, so a
    grouped run matches a sequential one in distribution only, not bitwise;
  * the base model is restored exactly on leaving `attached` (the original Linear modules are put
    back, and the parameters' requires_grad flags as they were).

Generation (`grouped_generate`) runs one batched greedy model.generate over the prompts of all
runs; HF generate keeps every row of the batch at every step (finished rows are padded, not
dropped), and each layer checks that the batch it sees has as many rows as the router's index.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from llm_al.config import TrainConfig
from llm_al.train import attach_lora, detach_lora, save_adapter

MODES = ("auto", "gather", "loop")


# ---------------------------------------------------------------------------- routing rows to adapters
class Router:
    """Which adapter each batch row uses; one shared by every grouped layer of a model."""

    def __init__(self, K: int, dropout_seeds: Sequence[int] | None = None):
        self.K = K
        self.index: torch.Tensor | None = None               # (B,) long, adapter of each row
        self.groups: list[tuple[int, slice]] = []             # consecutive rows with the same adapter
        self.generators = ([torch.Generator().manual_seed(int(s)) for s in dropout_seeds]
                           if dropout_seeds is not None else None)

    @contextlib.contextmanager
    def rows(self, index) -> Iterator["Router"]:
        """Route row b of every forward inside the block to adapter index[b]."""
        index = torch.as_tensor(index, dtype=torch.long)      # (B,)
        if index.numel() and not (0 <= int(index.min()) and int(index.max()) < self.K):
            raise ValueError(f"adapter index out of range 0..{self.K - 1}")
        previous = self.index, self.groups
        self.index, self.groups = index, _consecutive_groups(index.tolist())
        try:
            yield self
        finally:
            self.index, self.groups = previous

    def dropout(self, x: torch.Tensor, p: float) -> torch.Tensor:
        """Inverted dropout of x (B, L, in), each run's rows masked from that run's generator."""
        masks = []
        for k, sl in self.groups:
            shape = x[sl].shape
            gen = self.generators[k] if self.generators is not None else None
            keep = torch.empty(shape, dtype=x.dtype).bernoulli_(1 - p, generator=gen)   # (n_k, L, in) on CPU
            masks.append(keep.to(x.device))
        return x * torch.cat(masks, 0) / (1 - p)


def _consecutive_groups(index: list[int]) -> list[tuple[int, slice]]:
    """[(adapter, slice of rows)] for the runs of equal values in `index`."""
    groups, start = [], 0
    for b in range(1, len(index) + 1):
        if b == len(index) or index[b] != index[start]:
            groups.append((index[start], slice(start, b)))
            start = b
    return groups


class GroupedLoraLinear(nn.Module):
    """base(x) + per-row LoRA of K stacked adapters (see the module docstring)."""

    def __init__(self, base: nn.Linear, A: torch.Tensor, B: torch.Tensor, scaling: float, dropout: float,
                 router: Router, mode: str):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.base, self.scaling, self.p, self.router, self.mode = base, scaling, dropout, router, mode
        self.A, self.B = A, B                                 # (K, r, in), (K, out, r): not registered, not saved
        self.train(base.training)                             # follow the model's mode (dropout in train only)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base(x)                                 # (B, ..., out)
        index = self.router.index
        if index is None:
            raise RuntimeError("grouped LoRA forward outside router.rows(...): no adapter for the rows")
        if x.shape[0] != index.shape[0]:
            raise RuntimeError(f"batch of {x.shape[0]} rows but {index.shape[0]} adapter indices")
        x3 = x.to(self.A.dtype).reshape(x.shape[0], -1, x.shape[-1])        # (B, L, in)
        if self.training and self.p > 0:
            x3 = self.router.dropout(x3, self.p)
        gather = self.mode == "gather" or (self.mode == "auto" and x.device.type != "cpu"
                                           and len(self.router.groups) > 1)
        delta = self._gather(x3, index) if gather else self._loop(x3)                  # (B, L, out)
        return (result + delta.reshape(*x.shape[:-1], -1) * self.scaling).to(result.dtype)

    def _gather(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        index = index.to(x.device)
        A = self.A.index_select(0, index)                     # (B, r, in)
        B = self.B.index_select(0, index)                     # (B, out, r)
        return torch.bmm(torch.bmm(x, A.transpose(1, 2)), B.transpose(1, 2))   # (B, L, r) -> (B, L, out)

    def _loop(self, x: torch.Tensor) -> torch.Tensor:
        parts = [F.linear(F.linear(x[sl], self.A[k]), self.B[k]) for k, sl in self.router.groups]  # (n_k, L, out)
        return parts[0] if len(parts) == 1 else torch.cat(parts, 0)                   # (B, L, out)


# ---------------------------------------------------------------------------- the stacked adapters
@dataclass
class GroupedLora:
    """K LoRA adapters stacked per target layer. A[name]: (K, r, in), B[name]: (K, out, r), float
    tensors that require grad; `names` are module paths in the base model."""

    cfg: TrainConfig
    seeds: list[int]
    names: list[str]
    A: dict[str, torch.Tensor]
    B: dict[str, torch.Tensor]
    scaling: float
    extra: dict = field(default_factory=dict)

    @property
    def K(self) -> int:
        return len(self.seeds)

    def parameters(self) -> list[torch.Tensor]:
        return [t for name in self.names for t in (self.A[name], self.B[name])]

    def adapter(self, k: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Run k's (A (r, in), B (out, r)) per target layer, detached copies."""
        return {n: (self.A[n][k].detach().clone(), self.B[n][k].detach().clone()) for n in self.names}


def peft_lora_weights(peft_model) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], float]:
    """{module path in the base model: (A (r, in), B (out, r))} of a peft model's 'default'
    adapter (the tensors themselves, not copies), and its scaling."""
    found, scaling = {}, None
    for name, module in peft_model.base_model.model.named_modules():
        lora_A = getattr(module, "lora_A", None)
        if isinstance(lora_A, nn.ModuleDict) and "default" in lora_A:
            found[name] = (lora_A["default"].weight, module.lora_B["default"].weight)
            scaling = module.scaling["default"]
    if not found:
        raise ValueError("the peft model has no LoRA layers")
    return found, float(scaling)


def init_grouped(model, cfg: TrainConfig, seeds: Sequence[int]) -> GroupedLora:
    """The K adapters train_lora would start from, one per init seed: attach_lora(model, cfg, seed)
    (it seeds torch's global generator, as train_lora does), copy its weights, unload."""
    per_run, scaling = [], None
    for seed in seeds:
        peft_model = attach_lora(model, cfg, seed)
        try:
            weights, scaling = peft_lora_weights(peft_model)
            per_run.append({n: (a.detach().clone(), b.detach().clone()) for n, (a, b) in weights.items()})
        finally:
            detach_lora(peft_model)
    names = list(per_run[0])
    for name in names:
        if type(_get_module(model, name)) is not nn.Linear:
            raise ValueError(f"grouped LoRA supports nn.Linear targets only, {name} is not one")
    A = {n: torch.stack([w[n][0] for w in per_run]).requires_grad_() for n in names}   # (K, r, in)
    B = {n: torch.stack([w[n][1] for w in per_run]).requires_grad_() for n in names}   # (K, out, r)
    return GroupedLora(cfg, [int(s) for s in seeds], names, A, B, scaling)


def _get_module(model, name: str) -> nn.Module:
    return model.get_submodule(name)


def _set_module(model, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


@contextlib.contextmanager
def attached(model, lora: GroupedLora, mode: str = "auto",
             dropout_seeds: Sequence[int] | None = None) -> Iterator[Router]:
    """Wrap the target layers of `model` with grouped LoRA layers for the block; yields the Router.
    The base parameters are frozen inside the block; on leaving it the original Linear modules and
    the requires_grad flags are put back (the base weights are never written)."""
    router = Router(lora.K, dropout_seeds)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    originals: dict[str, nn.Module] = {}
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for name in lora.names:
            base = _get_module(model, name)
            originals[name] = base
            _set_module(model, name, GroupedLoraLinear(base, lora.A[name], lora.B[name], lora.scaling,
                                                       lora.cfg.lora_dropout, router, mode))
        yield router
    finally:
        for name, base in originals.items():
            _set_module(model, name, base)
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])


# ---------------------------------------------------------------------------- one run through peft
@contextlib.contextmanager
def peft_view(model, lora: GroupedLora, k: int):
    """An ordinary peft model holding run k's adapter (a fresh attach_lora with the weights copied
    in); unloaded on leaving the block. For evaluating one run alone and for exporting."""
    peft_model = attach_lora(model, lora.cfg, lora.seeds[k])
    try:
        weights, _ = peft_lora_weights(peft_model)
        if set(weights) != set(lora.names):
            raise ValueError("peft targets differ from the grouped adapters' layers")
        with torch.no_grad():
            for name, (a, b) in weights.items():
                a.copy_(lora.A[name][k])
                b.copy_(lora.B[name][k])
        peft_model.eval()
        yield peft_model
    finally:
        detach_lora(peft_model)


def export_adapter(model, lora: GroupedLora, k: int, path: Path) -> Path:
    """Save run k as a standard peft adapter folder (PeftModel.from_pretrained loads it)."""
    with peft_view(model, lora, k) as peft_model:
        save_adapter(peft_model, Path(path))
    return Path(path)


# ---------------------------------------------------------------------------- grouped generation
def grouped_generate(model, tokenizer, lora: GroupedLora, prompts, max_new_tokens: int, batch_size: int,
                     mode: str = "auto", runs: Sequence[int] | None = None) -> list[list[str]]:
    """Greedy continuations for each run (adapter) in `runs` (default: all), one list per run.

    `prompts` is one list shared by every run, or one list per run. Each run's prompts are sorted
    and chunked exactly as llm_al.evaluate.generate does with `batch_size`; chunk j of every run
    goes into one left-padded model.generate call (up to len(runs) * batch_size rows), rows tagged
    with their run. With shared prompts each run's rows are padded as in a run alone; with
    different prompts a row may get more left padding (masked, so the same continuation up to
    float rounding). No out-of-memory back-off here."""
    from llm_al.evaluate import decode_batch, left_pad, stop_token_ids

    runs = list(range(lora.K)) if runs is None else list(runs)
    per_run = [list(prompts)] * len(runs) if prompts and isinstance(prompts[0], str) else [list(p) for p in prompts]
    if len(per_run) != len(runs):
        raise ValueError(f"{len(per_run)} prompt lists for {len(runs)} runs")
    encoded = [[tokenizer(p, add_special_tokens=False)["input_ids"] for p in ps] for ps in per_run]
    orders = [sorted(range(len(e)), key=lambda i, e=e: -len(e[i])) for e in encoded]
    outputs = [[""] * len(ps) for ps in per_run]
    device = next(model.parameters()).device
    stops = stop_token_ids(model, tokenizer)
    n_chunks = max((math.ceil(len(o) / batch_size) for o in orders), default=0)
    with attached(model, lora, mode) as router:
        for j in range(n_chunks):
            slots = [(r, i) for r, order in enumerate(orders) for i in order[j * batch_size:(j + 1) * batch_size]]
            ids, mask = left_pad([encoded[r][i] for r, i in slots], tokenizer.pad_token_id)     # (N, T)
            tags = torch.tensor([runs[r] for r, _ in slots])                              # (N,) adapter of each row
            new = decode_batch(model, ids.to(device), mask.to(device), max_new_tokens, stops, tokenizer.pad_token_id,
                               route=lambda rows, tags=tags: router.rows(tags[rows.cpu()]))
            for b, (r, i) in enumerate(slots):
                outputs[r][i] = tokenizer.decode(new[b], skip_special_tokens=True).strip()
    return outputs
