"""`--dry-run`: the plan of an experiment and its estimated cost, without running it.

Counts the runs, the examples still to score (the feature caches are consulted), and the tokens
each step processes; converts them to floating-point operations with the usual 2 x params per
token for a forward pass and 6 x params for a training step; and divides by this machine's matmul
rate, measured on the spot, times an efficiency per step. The efficiencies were measured on the
2-core CPU demo (eval/results/demo-cpu.md): scoring ran at ~0.9 of the matmul rate, LoRA training
at ~0.65, greedy generation at ~0.35. On other hardware treat the times as rough.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from llm_al import models
from llm_al.config import ExperimentConfig, parse_strategy
from llm_al.features import loss_cache_plan
from llm_al.grid import cells
from llm_al.pipeline import DIRECT_FEATURES, LOSS_FEATURES, load_data, needed_features

EFFICIENCY = {"score": 0.9, "train": 0.65, "generate": 0.35}


@dataclass
class Step:
    what: str
    tokens: int
    flops: float
    seconds: float


def matmul_rate(device: str = "cpu", seconds: float = 0.3) -> float:
    """FLOP/s of a 1024 x 1024 fp32 (CPU) or bf16 (GPU) matrix product, measured now."""
    import torch

    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    a = torch.randn(1024, 1024, device=device, dtype=dtype)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ a
        n += 1
    if device != "cpu":
        torch.cuda.synchronize()
    return 2 * 1024**3 * n / (time.perf_counter() - t0)


def count_params(name: str) -> int:
    """Parameters of a causal LM from its config alone (built on the meta device: no weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(models.resolve(name))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def plan_experiment(cfg: ExperimentConfig) -> str:
    from transformers import AutoTokenizer

    data = load_data(cfg.data, seed=cfg.seeds[0])
    specs = [(spec, *parse_strategy(spec)) for spec in cfg.strategies]
    runs = cells(cfg, specs)
    device = models.pick_device(cfg.model.device)
    tokenizer = AutoTokenizer.from_pretrained(models.resolve(cfg.model.name))
    params = count_params(cfg.model.name)
    rate = matmul_rate(device)
    needs = needed_features([(n, p) for _, n, p in specs], cfg.orderings)
    dtype = str(models.default_dtype(device))
    steps: list[Step] = []

    def add(what: str, tokens: int, flops_per_token: float, kind: str) -> None:
        flops = flops_per_token * params * tokens
        steps.append(Step(what, tokens, flops, flops / (rate * EFFICIENCY[kind])))

    for direct, group in ((False, LOSS_FEATURES), (True, DIRECT_FEATURES)):
        if needs & group:
            cache, items, keys = loss_cache_plan(tokenizer, data.pool.examples, models.cache_root() / "features",
                                                 models.fingerprint(cfg.model.name), dtype, cfg.model.max_length,
                                                 direct)
            todo = cache.missing(keys)
            add(f"score {len(todo)} of {len(items)} pool examples{' without prompts' if direct else ''} "
                f"({len(items) - len(todo)} cached)", sum(items[i].length for i in todo), 2, "score")
    mean_len = float(np.mean([len(tokenizer(ex.text)["input_ids"]) for ex in data.pool.examples[:200]])) + 15
    examples = sum(c.budget for c in runs)
    add(f"train {len(runs)} runs, {examples} examples in all x {cfg.train.epochs} epoch(s)",
        int(examples * cfg.train.epochs * mean_len), 6, "train")
    prompt_len = float(np.mean([len(tokenizer(ex.text)["input_ids"]) for ex in data.test.examples]))
    add(f"generate for {len(data.test)} test examples x {len(runs) + 1} evaluations (<= {cfg.eval.max_new_tokens} "
        "new tokens each)", int((len(runs) + 1) * len(data.test) * (prompt_len + cfg.eval.max_new_tokens)), 2,
        "generate")
    by_cell: dict[tuple[str, str], int] = {}
    for c in runs:
        by_cell[(c.strategy, c.ordering)] = by_cell.get((c.strategy, c.ordering), 0) + 1
    lines = [f"plan for {cfg.name!r} -> {cfg.out_dir} (dry run: nothing is trained or written)",
             f"  pool {len(data.pool)} examples, test {len(data.test)}, budget {'/'.join(map(str, cfg.budget_list))}, design {cfg.design}",
             f"  model {cfg.model.name} ({params / 1e6:.0f}M parameters) on {device}; "
             f"measured matmul rate {rate / 1e9:.0f} GFLOP/s",
             f"  features to compute: {', '.join(sorted(needs)) or 'none'}",
             f"  runs: {len(runs)} + the untrained floor"]
    lines += [f"    {s} [{o}]: {n}" for (s, o), n in by_cell.items()]
    lines.append("  estimated cost:")
    for st in steps:
        lines.append(f"    {st.what}: {st.tokens:,} tokens, {st.flops / 1e12:.1f} TFLOP, ~{st.seconds:.0f} s")
    total = sum(st.seconds for st in steps)
    lines.append(f"  estimated total: ~{total / 60:.1f} min on this machine (rough; finished runs in "
                 f"{cfg.out_dir} are skipped when it runs)")
    return "\n".join(lines)
