"""GPU throughput of a ~0.5B model in bf16: llm_al's scoring pass vs a batch-size-1 loop, LoRA
training and batched generation, each as tokens/s and model FLOPs utilisation (MFU) against the
device's bf16 matmul rate measured in the same run (issue 6's GPU targets: scoring >= 20x the
batch-size-1 loop and >= 30% MFU).

    .venv/bin/python eval/bench_gpu.py                       # on a CUDA machine: a few minutes
    .venv/bin/python eval/bench_gpu.py --smoke --device cpu  # the script's logic on a tiny model (~20 s, CPU)

Needs no download: the model is a random-init Llama-architecture network with Qwen2.5-0.5B's
shape (hidden 896, 24 layers, MLP 4864, 14 heads, 2 KV heads) and the embedded SmolLM2
tokenizer's vocabulary (49,152), about 0.4B parameters; throughput does not depend on the weights.
Data: the embedded Django en->fr pairs in SmolLM2's chat template with its default system prompt
(as eval/bench_scoring.py on the CPU), repeated to `--n` examples.

FLOPs are counted as in bench_scoring: 2 x (non-embedding) parameters per token through the
decoder, 2 x vocab x hidden per position the LM head projects; attention-score FLOPs are left out,
so MFU is a lower bound. Training counts 4 x decoder parameters per token (the forward, and the
backward pass through the frozen weights to reach the LoRA matrices; the LoRA weight gradients
are negligible) plus the head at response positions, forward and backward.
Writes eval/results/bench_gpu-<device>.txt, or --out. eval/gpu_check.sh runs it on the device machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llm_al import models                                       # noqa: E402
from llm_al.data.pool import records_to_pool                         # noqa: E402
from llm_al.data.demo import demo_records                       # noqa: E402
from llm_al.evaluate import generate                            # noqa: E402
from llm_al.features.engine import plan_batches, response_token_stats  # noqa: E402
from llm_al.features.formatting import prompt_text, tokenize             # noqa: E402
from llm_al.train import detach_lora, train_lora  # noqa: E402
from llm_al.config import TrainConfig

SHAPES = {  # hidden, layers, intermediate, heads, kv heads
    "qwen2.5-0.5b-shape": (896, 24, 4864, 14, 2),
    "smoke": (64, 2, 128, 4, 2),
}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_peak(device: str, dtype, size: int, seconds: float = 2.0) -> float:
    a = torch.randn(size, size, device=device, dtype=dtype)
    a @ a
    sync(device)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ a
        n += 1
        if n % 8 == 0:
            sync(device)
    sync(device)
    return 2 * size**3 * n / (time.perf_counter() - t0)


def random_model(shape: str, vocab: int, device: str, dtype):
    from transformers import AutoModelForCausalLM, LlamaConfig

    hidden, layers, inter, heads, kv = SHAPES[shape]
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, intermediate_size=inter,
                         num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=4096,
                         tie_word_embeddings=True, attn_implementation="sdpa")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.to(device).eval()


def batch1_loop(model, items, device) -> np.ndarray:
    """The loop peers use: one example at a time, full forward with labels."""
    out = []
    with torch.inference_mode():
        for t in items:
            ids = torch.tensor([t.prompt_ids + t.response_ids], device=device)
            labels = ids.clone()
            labels[0, : len(t.prompt_ids)] = -100
            out.append(model(input_ids=ids, labels=labels).loss.float().item())
    return np.array(out)


def timed(fn, device):
    sync(device)
    t0 = time.perf_counter()
    result = fn()
    sync(device)
    return result, time.perf_counter() - t0


def write_profile(fn, device: str, path: Path) -> None:
    """torch.profiler's operator table of one call of fn, by device (or CPU) time."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=acts) as prof:
        fn()
        sync(device)
    key = "cuda_time_total" if device.startswith("cuda") else "cpu_time_total"
    path.write_text(prof.key_averages().table(sort_by=key, row_limit=30) + "\n", encoding="utf-8")


def kcenter_section(n: int, device: str, dim: int = 384, budget: int = 500) -> list[str]:
    """kcenter.kcenter_torch on `device` over n x dim float32 points vs kcenter.kcenter_greedy (numpy,
    this machine's CPUs) on the same points; the picks must agree (random Gaussian data: no near-ties)."""
    from llm_al.strategies.kernels import kcenter

    x = np.random.default_rng(0).standard_normal((n, dim), dtype=np.float32)
    kcenter.kcenter_torch(x[: min(n, 20_000)], min(budget, 50), 0, device=device)                   # warm-up
    (ti, td), sec_t = timed(lambda: kcenter.kcenter_torch(x, budget, 0, device=device), device)
    (ni, nd), sec_n = timed(lambda: kcenter.kcenter_greedy(x, budget, 0), "cpu")
    same = int(np.argmin(np.append(ti == ni, False)))                        # picks equal up to here
    return [f"k-center, {n:,} x {dim} float32 (Gaussian), budget {budget}, first pick 0:",
            f"  kcenter.kcenter_torch on {device} (copy to the device included): {sec_t:.2f} s",
            f"  kcenter.kcenter_greedy (numpy, {os.cpu_count()} CPUs): {sec_n:.2f} s  ->  {sec_n / sec_t:.1f}x",
            f"  identical picks: {same} of {budget}; max |distance diff| at pick "
            f"{float(np.nanmax(np.abs(td - nd) / np.maximum(np.abs(nd), 1e-12))):.1e} (relative)"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--smoke", action="store_true", help="a tiny model and few examples: checks the script")
    ap.add_argument("--n", type=int, default=None, help="examples scored by llm_al (default 2,220; smoke 24)")
    ap.add_argument("--n-batch1", type=int, default=None, help="examples in the batch-size-1 loop (default 300)")
    ap.add_argument("--max-tokens", type=int, nargs="+", default=None,
                    help="scoring token budgets per batch to try (default 4096 16384; model.score_max_tokens)")
    ap.add_argument("--tokenizer", default=None,
                    help="tokenizer folder (default: the embedded SmolLM2's; eval/gpu_prep.sh copies it to .gpu/tokenizer)")
    ap.add_argument("--pairs", default=None,
                    help="JSONL of {source, target, ...} pairs (default: the embedded Django pairs, which need django)")
    ap.add_argument("--kcenter-n", type=int, default=None,
                    help="points for the k-center section (default 1,000,000 x 384; smoke 5,000; 0 skips it)")
    ap.add_argument("--profile", default=None,
                    help="also write torch.profiler's table of one scoring pass (largest budget) to this file")
    ap.add_argument("--out", default=None, help="result file (default eval/results/bench_gpu-<device>.txt)")
    args = ap.parse_args()
    device = models.pick_device(args.device)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    shape = "smoke" if args.smoke else "qwen2.5-0.5b-shape"
    n = args.n or (24 if args.smoke else 2220)
    n1 = min(n, args.n_batch1 or (10 if args.smoke else 300))
    budgets = args.max_tokens or ([1024] if args.smoke else [4096, 16384])

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.tokenizer or models.resolve(models.EMBEDDED_MODEL))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = random_model(shape, len(tok), device, dtype)
    if args.pairs:
        with open(args.pairs, encoding="utf-8") as f:
            records = [json.loads(line) for line in f if line.strip()]
    else:
        records = demo_records()[0]
    # repeats get a numbered source so the loader's duplicate filter keeps them
    rows = [{**records[i % len(records)], "source": records[i % len(records)]["source"]
             + (f" ({i // len(records)})" if i >= len(records) else "")} for i in range(n)]
    pool = records_to_pool(rows)
    items = tokenize(tok, pool.examples, 512)
    n = len(items)
    n1 = min(n1, n)
    head = model.get_output_embeddings().weight.numel()
    body = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    peak = matmul_peak(device, dtype, *((256, 0.2) if args.smoke else (8192, 2.0)))
    lines = [f"bench_gpu ({time.strftime('%Y-%m-%d %H:%M')}): random-init {shape} Llama ({(body + head) / 1e6:.1f}M "
             f"parameters: {body / 1e6:.1f}M decoder, {head / 1e6:.1f}M embeddings tied to the head), "
             f"{str(dtype).replace('torch.', '')} on {device}",
             f"machine: {torch.cuda.get_device_name(0) if device.startswith('cuda') else platform.processor() or platform.machine()}; "
             f"torch {torch.__version__}; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}",
             f"measured {str(dtype).replace('torch.', '')} matmul peak: {peak / 1e9:,.0f} GFLOP/s", ""]

    out = Path(args.out or Path(__file__).parent / "results" / f"bench_gpu-{device.split(':')[0]}.txt")

    shown = [0]

    def save() -> None:                     # after each section, so a later failure keeps the earlier ones
        out.write_text("\n".join(lines) + "\n", encoding="utf-8")
        print("\n".join(lines[shown[0]:]), flush=True)
        shown[0] = len(lines)

    # ---- scoring
    total, resp = sum(t.length for t in items), sum(len(t.response_ids) for t in items)
    ref, sec1 = timed(lambda: batch1_loop(model, items[:n1], device), device)
    tok1 = sum(len(t.response_ids) for t in items[:n1]) / sec1                 # response tokens/s
    fl1 = (2 * (body + head) * sum(t.length for t in items[:n1])) / sec1
    lines += [f"scoring: {n} examples, {total:,} tokens, {resp:,} response tokens",
              f"{'method':44s} {'seconds':>8s} {'resp tok/s':>11s} {'vs batch-1':>10s} {'MFU':>6s}",
              f"{f'batch-size-1 loop (first {n1} examples)':44s} {sec1:8.2f} {tok1:11,.0f} {1:9.2f}x {fl1 / peak:6.1%}"]
    for budget in budgets:
        response_token_stats(model, items[: min(n, 64)], tok.pad_token_id, budget, 64)            # warm-up
        stats, sec = timed(lambda: response_token_stats(model, items, tok.pad_token_id, budget, 64), device)
        P, batches = plan_batches(items, budget, 64)
        needed = 2 * body * (P + total - P * n) + 2 * head * resp
        diff = float(np.max(np.abs(stats[:n1, 0] / stats[:n1, 2] - ref)))
        lines.append(f"{f'llm_al pass, max_tokens={budget}':44s} {sec:8.2f} {resp / sec:11,.0f} "
                     f"{resp / sec / tok1:9.2f}x {needed / sec / peak:6.1%}   (max |loss diff| vs batch-1 {diff:.1e})")
    save()
    if args.profile:
        write_profile(lambda: response_token_stats(model, items, tok.pad_token_id, budgets[-1], 64), device,
                      Path(args.profile))

    # ---- LoRA training (the default TrainConfig but for the batch size)
    sub = items[: min(n, 16 if args.smoke else 512)]
    for batch_size in (8, 16):
        cfg = TrainConfig(batch_size=batch_size)
        (peft_model, result), sec = timed(lambda: train_lora(model, sub, tok.pad_token_id, cfg, 0, progress_bar=False),
                                          device)
        detach_lora(peft_model)
        tokens = sum(t.length for t in sub)
        r_tokens = sum(len(t.response_ids) for t in sub)
        flops = 4 * body * tokens + 4 * head * r_tokens
        lines.append(f"LoRA training, {len(sub)} examples, batch {batch_size}: {sec:.2f} s, {tokens / sec:,.0f} tokens/s, "
                     f"MFU {flops / sec / peak:.1%} (4 x decoder params per token), {result.steps} steps")

    save()

    # ---- batched greedy generation (random weights rarely stop early: each answer runs to the limit)
    prompts = [prompt_text(tok, ex.prompt_messages) for ex in pool.examples[: min(n, 8 if args.smoke else 200)]]
    max_new = 8 if args.smoke else 64
    for batch_size in (50, 200) if not args.smoke else (4,):
        _, sec = timed(lambda: generate(model, tok, prompts, max_new, batch_size, progress_bar=False), device)
        lines.append(f"greedy generation, {len(prompts)} prompts x <= {max_new} new tokens, batch {batch_size}: "
                     f"{sec:.2f} s, {len(prompts) * max_new / sec:,.0f} new tokens/s (upper bound: every answer at the limit)")
    save()
    kc_n = args.kcenter_n if args.kcenter_n is not None else (5000 if args.smoke else 1_000_000)
    if kc_n:
        lines += [""] + kcenter_section(kc_n, device)
    save()


if __name__ == "__main__":
    main()
