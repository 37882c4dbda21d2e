"""Runs per hour: K runs trained and evaluated one by one (train_lora + evaluate.generate) vs in
one grouped pass (train_grouped + grouped_generate), on CPU.

    .venv/bin/python eval/bench_throughput.py                 # default: K 1,2,4, 24 examples, ~7 min on 2 busy cores
    .venv/bin/python eval/bench_throughput.py --full          # demo-size runs, K up to 8 (much longer)
    .venv/bin/python eval/bench_throughput.py --real --full --ks 1,4   # the demo's own model, pool and test set
    .venv/bin/python eval/bench_throughput.py --out eval/results/bench_throughput-cpu.txt
    python3 eval/bench_throughput.py --full --device cuda --dtype bfloat16      # on a GPU (not run yet)

The model is a random-init Llama of SmolLM2-135M's shape (hidden 576, 30 layers, 9 heads, 3 kv
heads, intermediate 1536, vocab 49152; built from LlamaConfig, nothing downloaded), float32 on
CPU. The data are synthesized token ids: each run gets its own random subset of a pool of
examples of ~55 tokens (a prompt of 25-35 tokens and a response of 20-30) in its own order, and
its own adapter init seed; all runs share one test set of prompts. Generation is greedy with
left padding; the "tokenizer" maps a string of space-separated ids to ids and back, so no
vocabulary is needed. The figures: wall seconds of each way, runs per hour, the ratio, the peak
resident memory of the process so far (ru_maxrss, so it only grows), and how close the grouped
runs are to the sequential ones (max abs weight difference; generations equal or not).
The machine is shared: the load average is printed at the start and the end.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llm_al.evaluate import generate                                        # noqa: E402
from llm_al.features.formatting import Tokenized                               # noqa: E402
from llm_al.grouped import grouped_generate, peft_lora_weights             # noqa: E402
from llm_al.config import TrainConfig                                       # noqa: E402
from llm_al.train import detach_lora, train_lora                            # noqa: E402
from llm_al.train_grouped import GroupedRun, train_grouped                  # noqa: E402

PAD, EOS = 0, 2


class IdTokenizer:
    """Strings of space-separated token ids <-> ids: enough for evaluate.generate."""

    pad_token_id, eos_token_id = PAD, EOS

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": [int(t) for t in text.split()]}

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return " ".join(str(int(i)) for i in ids if not (skip_special_tokens and int(i) in (PAD, EOS)))

    def get_vocab(self) -> dict:
        return {}


SHAPES = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=600),
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152),
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=151936),    # Llama blocks of Qwen2.5-0.5B's shape (no qkv bias)
}


def build_model(shape_name: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    shape = SHAPES[shape_name]
    config = LlamaConfig(**shape, max_position_embeddings=2048, tie_word_embeddings=True, pad_token_id=PAD,
                         bos_token_id=1, eos_token_id=EOS)
    return LlamaForCausalLM(config).eval()


def synth_pool(n: int, vocab: int, rng, prefix: int) -> list[Tokenized]:
    """n examples shaped like the demo's (38 tokens on average, 11.6 of them the response, measured
    on its first 64 with SmolLM2's tokenizer): a prefix of `prefix` tokens that every example
    shares (the chat template's system turn and user header: 14 in the demo), then a user turn of
    8-16 and a response of 7-15 random ids (3..vocab-1), the last one the end-of-turn."""
    system = rng.integers(3, vocab, prefix).tolist()
    return [Tokenized(system + rng.integers(3, vocab, rng.integers(8, 17)).tolist(),
                      rng.integers(3, vocab, rng.integers(7, 16)).tolist(), False, 1) for _ in range(n)]


def matmul_rate(device: str, dtype) -> float:
    """FLOP/s of a 1024 x 1024 x 1024 matmul on this machine now (median of 5 after a warm-up)."""
    a = torch.randn(1024, 1024, device=device, dtype=dtype)
    b = torch.randn(1024, 1024, device=device, dtype=dtype)
    times = []
    for i in range(6):
        _sync()
        t0 = time.perf_counter()
        a @ b
        _sync()
        if i:
            times.append(time.perf_counter() - t0)
    return 2 * 1024 ** 3 / float(np.median(times))


def useful_flops(model, runs, cfg, prompt_tokens: int, new_tokens: int) -> tuple[float, float]:
    """(training, generation) FLOPs that change the answer: each distinct token once (the shared
    prefix once per step of a run, no padding) through the non-embedding weights, and the LM head
    only where a token is predicted. Training with a frozen base = forward + the backward to the
    inputs: 4 FLOPs per weight per token; generation: 2. Attention scores are not counted."""
    from llm_al.features.formatting import shared_prefix_length
    from llm_al.train import ordered_batches

    head = model.get_output_embeddings().weight.numel()
    body = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    if model.config.tie_word_embeddings:
        body += head                                                      # the tied head counted once, below
    body -= head
    train = 0.0
    for run in runs:
        for step in ordered_batches(len(run.items), cfg.batch_size, cfg.epochs):
            items = [run.items[i] for i in step]
            P = shared_prefix_length(items)
            tokens = P + sum(t.length - P for t in items)
            train += 4 * (body * tokens + head * sum(len(t.response_ids) for t in items))
    gen = 2 * (body * (len(runs) * prompt_tokens + new_tokens) + head * new_tokens)
    return train, gen


def generated_tokens(tok, gens, max_new_tokens: int) -> int:
    """Tokens the K runs' generations took: each output's tokens plus the stop token, if it stopped."""
    n = 0
    for run in gens:
        for text in run:
            k = len(tok(text, add_special_tokens=False)["input_ids"])
            n += min(max_new_tokens, k + 1)
    return n


def real_setup(args):
    """The demo's own model, pool and test prompts (--real): the embedded SmolLM2-135M-Instruct in
    float32 and the embedded Django English-French pool, its test set as the prompts."""
    from llm_al.config import DataConfig
    from llm_al.features.formatting import prompt_text, tokenize
    from llm_al.models import EMBEDDED_MODEL, load_model
    from llm_al.run.pipeline import load_data

    model, tok = load_model(EMBEDDED_MODEL, args.device, dtype=getattr(torch, args.dtype))
    data = load_data(DataConfig(), seed=0)
    pool = tokenize(tok, data.pool.examples, 256)
    prompts = [prompt_text(tok, ex.prompt_messages) for ex in data.test.examples][:args.prompts]
    return model, tok, pool, prompts


def rss_mb() -> float:
    """Peak resident memory of the process so far (on CUDA: peak allocated GPU memory), MB."""
    if torch.cuda.is_available() and torch.cuda.max_memory_allocated():
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024        # Linux: KiB


def hf_generate(model, tok, prompts, max_new_tokens: int, batch_size: int) -> list[str]:
    """evaluate.generate as it was before llm_al/decode.py: transformers' generate on length-sorted,
    left-padded batches, every row kept until the batch's longest answer ends."""
    from llm_al.evaluate import left_pad, stop_token_ids

    encoded = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    outputs = [""] * len(prompts)
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        ids, mask = left_pad([encoded[i] for i in batch], tok.pad_token_id)
        with torch.inference_mode():
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                                 max_new_tokens=max_new_tokens, eos_token_id=stop_token_ids(model, tok),
                                 pad_token_id=tok.pad_token_id, temperature=None, top_p=None, top_k=None)
        for b, i in enumerate(batch):
            outputs[i] = tok.decode(out[b, ids.shape[1]:], skip_special_tokens=True).strip()
    return outputs


def sequential(model, tok, runs, prompts, cfg, args, before: bool = True):
    """train_lora + generation per run (`before`: transformers' generate, as runs were made before
    this issue; else evaluate.generate, finished rows leaving the batch); returns (seconds, train
    seconds, weights per run, generations per run)."""
    t0 = time.perf_counter()
    weights, gens, train_s = [], [], 0.0
    for run in runs:
        t1 = time.perf_counter()
        peft_model, _ = train_lora(model, run.items, PAD, cfg, run.init_seed, progress_bar=False)
        train_s += time.perf_counter() - t1
        w, _ = peft_lora_weights(peft_model)
        weights.append({n: (a.detach().clone(), b.detach().clone()) for n, (a, b) in w.items()})
        peft_model.eval()
        gens.append(hf_generate(peft_model, tok, prompts, args.max_new_tokens, args.eval_batch) if before else
                    generate(peft_model, tok, prompts, args.max_new_tokens, args.eval_batch, progress_bar=False))
        detach_lora(peft_model)
    _sync()
    return time.perf_counter() - t0, train_s, weights, gens


def grouped(model, tok, runs, prompts, cfg, args, mode, share_prefix: bool = True):
    _sync()
    t0 = time.perf_counter()
    lora, _ = train_grouped(model, runs, PAD, cfg, mode=mode, share_prefix=share_prefix)
    _sync()
    t1 = time.perf_counter()
    gens = grouped_generate(model, tok, lora, prompts, args.max_new_tokens, args.eval_batch, mode=mode)
    _sync()
    return time.perf_counter() - t0, t1 - t0, lora, gens


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def max_weight_diff(lora, weights) -> float:
    return max(float((w[n][i] - (lora.A, lora.B)[i][n][k].detach()).abs().max())
               for k, w in enumerate(weights) for n in lora.names for i in (0, 1))


def layer_bench(ks, say, reps: int = 7) -> None:
    """Forward + backward of one grouped layer of SmolLM2's MLP shape (576 -> 1536, r 16) on K*4
    rows of 60 tokens, gather vs loop, interleaved; the median of `reps` timings each."""
    from llm_al.grouped import GroupedLoraLinear, Router

    say(f"one grouped layer 576 -> 1536, r 16, K*4 rows x 60 tokens, forward + backward, median of {reps} (ms):")
    say(f"{'K':>3} {'gather':>8} {'loop':>8} {'loop/gather':>12}")
    for K in ks:
        base = torch.nn.Linear(576, 1536, bias=False).requires_grad_(False)
        A = (torch.randn(K, 16, 576) * 0.02).requires_grad_()          # (K, r, in)
        B = (torch.randn(K, 1536, 16) * 0.02).requires_grad_()         # (K, out, r)
        x = torch.randn(K * 4, 60, 576)                                  # (rows, T, in)
        router = Router(K)
        layers = {m: GroupedLoraLinear(base, A, B, 2.0, 0.0, router, m) for m in ("gather", "loop")}
        times: dict[str, list[float]] = {m: [] for m in layers}
        with router.rows(torch.arange(K).repeat_interleave(4)):
            for _ in range(reps):
                for m, layer in layers.items():
                    t0 = time.perf_counter()
                    layer(x).square().mean().backward()
                    times[m].append((time.perf_counter() - t0) * 1e3)
                    A.grad = B.grad = None
        g, lp = (float(np.median(times[m])) for m in ("gather", "loop"))
        say(f"{K:>3} {g:>8.2f} {lp:>8.2f} {lp / g:>12.2f}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="demo size: K 1,2,4,8, 100 examples, 50 prompts, 32 new tokens")
    ap.add_argument("--ks", default=None, help="comma-separated K values (default 1,2,4; --full 1,2,4,8)")
    ap.add_argument("--examples", type=int, default=None, help="examples per run (default 24; --full 100)")
    ap.add_argument("--prompts", type=int, default=None, help="test prompts (default 10; --full 50)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default 16; --full 32")
    ap.add_argument("--eval-batch", type=int, default=50, help="prompts per generate call (per run)")
    ap.add_argument("--prefix", type=int, default=14,
                    help="prompt-prefix tokens every example shares (the demo's system turn and user header: 14)")
    ap.add_argument("--share-prefix", default="on", choices=["on", "off", "both"],
                    help="grouped training runs the shared prefix once per step (on), or every example whole (off)")
    ap.add_argument("--modes", default="auto", help="grouped modes to time: auto, gather, loop")
    ap.add_argument("--sequential-now", action="store_true",
                    help="also time train_lora + today's evaluate.generate (finished rows leave the batch)")
    ap.add_argument("--real", action="store_true",
                    help="the demo's own model (embedded SmolLM2-135M-Instruct), pool and test prompts")
    ap.add_argument("--tiny", action="store_true", help="the 2-layer test-sized model (same as --shape tiny)")
    ap.add_argument("--shape", default="smollm2-135m", choices=sorted(SHAPES), help="the random-init model's shape")
    ap.add_argument("--seq-max-k", type=int, default=None,
                    help="time the sequential runs only up to this K; above it, 'vs seq' uses the per-run time of "
                         "the sequential runs at the largest timed K (marked *), and weights/generations are not compared")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on the shared 2-core machine 2 threads ran ~10x slower)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the model and both ways run there)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="the base model's dtype")
    ap.add_argument("--layer-bench", action="store_true", help="only time one grouped layer, gather vs loop")
    ap.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = ap.parse_args(argv)
    ks = [int(k) for k in (args.ks or ("1,2,4,8" if args.full else "1,2,4")).split(",")]
    args.examples = args.examples or (100 if args.full else 24)
    args.prompts = args.prompts or (50 if args.full else 10)
    args.max_new_tokens = args.max_new_tokens or (64 if args.real else 32 if args.full else 16)
    modes = args.modes.split(",")
    torch.set_num_threads(args.threads)

    lines: list[str] = []

    def say(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    load0 = os.getloadavg()
    say(f"bench_throughput: sequential vs grouped LoRA runs, {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC")
    say(f"machine: {os.cpu_count()} CPUs, {platform.machine()}; torch {torch.__version__}, {torch.get_num_threads()} "
        f"threads; load average at start {load0[0]:.1f} (1 min), {load0[1]:.1f} (5 min) (shared machine)")
    if args.layer_bench:
        layer_bench([1, 2, 4, 8], say)
        return
    shape = "tiny" if args.tiny else args.shape
    cfg = TrainConfig(epochs=1, batch_size=4, lr=1e-3)
    rng = np.random.default_rng(0)
    if args.real:
        model, tok, pool, prompts = real_setup(args)
        prompt_tokens = sum(len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts)
        say(f"model: the embedded SmolLM2-135M-Instruct, {args.dtype} on {args.device}; LoRA r={cfg.lora_r} "
            f"alpha={cfg.lora_alpha} all-linear; batch {cfg.batch_size}, {cfg.epochs} epoch, lr {cfg.lr}")
        say(f"runs: {args.examples} examples of the demo pool ({len(pool)}, {np.mean([t.length for t in pool]):.1f} "
            f"tokens on average) each; {len(prompts)} demo test prompts, greedy, max_new_tokens {args.max_new_tokens} "
            f"(stops at the end of turn), {args.eval_batch} prompts per generate call (per run)")
    else:
        model = build_model(shape).to(device=args.device, dtype=getattr(torch, args.dtype))
        vocab = model.config.vocab_size
        tok = IdTokenizer()
        say(f"model: random-init Llama of shape {shape}, "
            f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, {args.dtype} on {args.device}; "
            f"LoRA r={cfg.lora_r} alpha={cfg.lora_alpha} all-linear; batch {cfg.batch_size}, {cfg.epochs} epoch, lr {cfg.lr}")
        say(f"runs: {args.examples} synthesized examples of ~37 tokens each ({args.prefix} shared); {args.prompts} "
            f"test prompts, greedy, max_new_tokens {args.max_new_tokens}, {args.eval_batch} prompts per generate "
            "call (per run)")
        pool = synth_pool(max(ks) * args.examples, vocab, rng, args.prefix)
        prompts = [" ".join(map(str, pool[0].prompt_ids[:args.prefix] + rng.integers(3, vocab, rng.integers(8, 17)).tolist()))
                   for _ in range(args.prompts)]
        prompt_tokens = sum(len(p.split()) for p in prompts)
    rate = matmul_rate(args.device, getattr(torch, args.dtype))
    say(f"matmul rate measured now: {rate / 1e9:.0f} GFLOP/s ({args.dtype}, 1024^3)")
    say(f"peak RSS after the model and data: {rss_mb():.0f} MB")
    say("")
    say(f"{'K':>3} {'way':<20} {'seconds':>9} {'train s':>8} {'runs/hour':>10} {'vs seq':>7} "
        f"{'train %mm':>9} {'gen %mm':>8} {'peak GPU MB' if args.device != 'cpu' else 'peak RSS MB':>12} "
        f"{'max |dW|':>9} {'gens equal':>10}")
    if args.device != "cpu":          # CUDA start-up and kernel selection, outside every timing
        warm = [GroupedRun(pool[:8], init_seed=1)]
        sequential(model, tok, warm, prompts[:2], cfg, args)
        grouped(model, tok, warm, prompts[:2], cfg, args, modes[0])
    shares = {"on": [True], "off": [False], "both": [True, False]}[args.share_prefix]
    per_run = None                    # sequential seconds per run at the largest timed K
    for K in ks:
        picks = [rng.permutation(len(pool))[:args.examples] for _ in range(K)]
        runs = [GroupedRun([pool[i] for i in p], init_seed=100 + k) for k, p in enumerate(picks)]

        def mm(total: float, train: float, gens) -> str:
            f_train, f_gen = useful_flops(model, runs, cfg, prompt_tokens,
                                          generated_tokens(tok, gens, args.max_new_tokens))
            return f"{100 * f_train / (train * rate):>8.1f}% {100 * f_gen / ((total - train) * rate):>7.1f}%"

        timed = args.seq_max_k is None or K <= args.seq_max_k
        if timed:
            seq_s, seq_train, weights, seq_gens = sequential(model, tok, runs, prompts, cfg, args)
            per_run = seq_s / K
            say(f"{K:>3} {'sequential before':<20} {seq_s:>9.1f} {seq_train:>8.1f} {K / seq_s * 3600:>10.1f} "
                f"{1.0:>7.2f} {mm(seq_s, seq_train, seq_gens)} {rss_mb():>12.0f}")
            if args.sequential_now:
                now_s, now_train, now_w, now_gens = sequential(model, tok, runs, prompts, cfg, args, before=False)
                equal = sum(a == b for ga, sa in zip(now_gens, seq_gens) for a, b in zip(ga, sa))
                say(f"{K:>3} {'sequential now':<20} {now_s:>9.1f} {now_train:>8.1f} {K / now_s * 3600:>10.1f} "
                    f"{seq_s / now_s:>7.2f} {mm(now_s, now_train, now_gens)} {rss_mb():>12.0f} {0.0:>9.1e} "
                    f"{equal:>5}/{K * len(prompts)}")
        for mode in modes:
            for share in shares:
                g_s, g_train, lora, g_gens = grouped(model, tok, runs, prompts, cfg, args, mode, share)
                if timed:
                    equal = sum(a == b for ga, sa in zip(g_gens, seq_gens) for a, b in zip(ga, sa))
                    ratio, diff, gens = f"{seq_s / g_s:>7.2f}", f"{max_weight_diff(lora, weights):>9.1e}", \
                        f"{equal:>5}/{K * len(prompts)}"
                else:
                    ratio, diff, gens = f"{per_run * K / g_s:>6.2f}*", f"{'-':>9}", f"{'-':>10}"
                way = f"grouped {mode}" + ("" if share else " padded")
                say(f"{K:>3} {way:<20} {g_s:>9.1f} {g_train:>8.1f} {K / g_s * 3600:>10.1f} "
                    f"{ratio} {mm(g_s, g_train, g_gens)} {rss_mb():>12.0f} {diff} {gens}")
    say("")
    if args.device == "cpu":
        layer_bench([1, 2, 4, 8], say)
    load1 = os.getloadavg()
    say("")
    say(f"load average at the end {load1[0]:.1f} (1 min), {load1[1]:.1f} (5 min)")
    say("vs seq: 'sequential before' seconds (train_lora + transformers' generate, one run after another, as runs "
        "were made before issue 15) / this way's seconds (train + generate) for the same K runs; * where the "
        "sequential time is K x the per-run time measured at the largest timed K")
    say("train %mm, gen %mm: useful FLOPs (each distinct token once: the shared prefix once per step, no padding; "
        "4 per weight per token in training, 2 in generation; see useful_flops) / (phase seconds x the matmul "
        "rate above). grouped ... padded: every example whole in a right-padded batch (share_prefix=False)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
