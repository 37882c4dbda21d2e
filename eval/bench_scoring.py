"""Scoring throughput: llm_al's batched response-loss pass vs a batch-size-1 transformers loop and
vs plain length-sorted batches of 16, on the same model and data, measured in one run; plus model
FLOPs utilisation against this machine's measured matmul rate.

    .venv/bin/python eval/bench_scoring.py            # ~3 minutes on the 2-core CPU

Data: 200 Django en->fr pairs in SmolLM2's chat template with its default system prompt (~72
tokens each), as in the issue's reference measurements. Writes eval/results/bench_scoring.txt.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llm_al import models                                       # noqa: E402
from llm_al.data import records_to_pool                         # noqa: E402
from llm_al.demo_data import demo_records                       # noqa: E402
from llm_al.features import length_sorted_batches, response_token_stats   # noqa: E402
from llm_al.formatting import pack, tokenize                     # noqa: E402

N_EXAMPLES = 200


def matmul_peak(seconds: float = 3.0) -> float:
    a = torch.randn(2048, 2048)
    a @ a
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ a
        n += 1
    return 2 * 2048**3 * n / (time.perf_counter() - t0)


def batch1_loop(model, items) -> np.ndarray:
    """The straightforward loop peers use: one example at a time, full forward with labels."""
    out = []
    with torch.inference_mode():
        for t in items:
            ids = torch.tensor([t.prompt_ids + t.response_ids])
            labels = ids.clone()
            labels[0, : len(t.prompt_ids)] = -100
            out.append(model(input_ids=ids, labels=labels).loss.item())
    return np.array(out)


def plain_batches(model, items, pad_id, size: int = 16) -> np.ndarray:
    """Length-sorted batches of 16, full forward over every position with the LM head everywhere."""
    out = np.zeros(len(items))
    order = sorted(range(len(items)), key=lambda i: items[i].length)
    with torch.inference_mode():
        for s in range(0, len(order), size):
            batch = order[s:s + size]
            ids, mask, rows, pos, targets = pack([items[i] for i in batch], pad_id)
            logits = model(input_ids=ids, attention_mask=mask).logits                       # (B, T, V)
            nll = torch.nn.functional.cross_entropy(logits[rows, pos].float(), targets, reduction="none")
            sums = torch.zeros(len(batch), dtype=torch.float64).index_add_(0, rows, nll.double())
            out[batch] = (sums / torch.bincount(rows, minlength=len(batch))).numpy()
    return out


def main() -> None:
    torch.manual_seed(0)
    model, tok = models.load_model(models.EMBEDDED_MODEL, device="cpu")
    rows = demo_records()[0][:N_EXAMPLES]
    pool = records_to_pool(rows)                   # default template; SmolLM2 adds its default system prompt
    items = tokenize(tok, pool.examples, 512)
    params = sum(p.numel() for p in model.parameters())
    total = sum(t.length for t in items)
    resp = sum(len(t.response_ids) for t in items)
    peak = matmul_peak()

    timings = {}
    t0 = time.perf_counter()
    ref = batch1_loop(model, items)
    timings["batch-size-1 transformers loop"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    plain = plain_batches(model, items, tok.pad_token_id)
    timings["length-sorted batches of 16 (full LM head)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    stats = response_token_stats(model, items, tok.pad_token_id, max_tokens=4096, max_batch=64)
    timings["llm_al response_token_stats"] = time.perf_counter() - t0
    ours = stats[:, 0] / stats[:, 2]
    padded = sum(max(items[i].length for i in b) * len(b)
                 for b in length_sorted_batches([t.length for t in items], 4096, 64))

    # model FLOPs of the work that changes the answer: the decoder over every real token (2 x
    # non-embedding params) and the LM head over response positions only (2 x vocab x hidden)
    head = model.get_output_embeddings().weight.numel()
    body = params - model.get_input_embeddings().weight.numel()
    useful = 2 * body * total + 2 * head * resp
    lines = [
        f"bench_scoring ({time.strftime('%Y-%m-%d')}): SmolLM2-135M (embedded, fp32, CPU)",
        f"machine: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        f"data: {len(items)} Django en->fr pairs, chat template with the default system prompt: {total} tokens "
        f"({total / len(items):.1f} per example), {resp} response tokens; llm_al's batches pad to {padded} tokens",
        f"measured fp32 matmul peak (2048^3): {peak / 1e9:.0f} GFLOP/s; useful model FLOPs: {useful / 1e9:.0f} GFLOP",
        "",
        f"{'method':46s} {'seconds':>8s} {'resp tok/s':>11s} {'GFLOP/s':>8s} {'MFU':>6s} {'vs batch-1':>10s}",
    ]
    base = timings["batch-size-1 transformers loop"]
    for name, sec in timings.items():
        lines.append(f"{name:46s} {sec:8.2f} {resp / sec:11.0f} {useful / sec / 1e9:8.1f} "
                     f"{useful / sec / peak:6.1%} {base / sec:9.2f}x")
    lines += ["", f"max |loss difference| vs the batch-size-1 loop: ours {np.max(np.abs(ours - ref)):.2e}, "
                  f"plain batches {np.max(np.abs(plain - ref)):.2e} (nats/token)"]
    text = "\n".join(lines)
    print(text)
    out = Path(__file__).parent / "results" / "bench_scoring.txt"
    out.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
