"""Generation-based probes and the strategies that read them: the model writes, and the scores
describe what it wrote (free generation, never teacher-forced argmax).

- `greedy` -> `greedy_logprob`: mean log-probability of the model's own greedy answer (confidence;
  Perlitz et al., EMNLP 2023, "mean greedy-token log-prob"). Label-free.
- `oracle` -> `oracle`: the primary metric (eval.primary, default chrF) of that greedy answer
  against the reference, i.e. where the current model does worst (Perlitz et al. 2023 use it to
  test the informativeness assumption directly). Reads the references.
- `sampled` -> `gen_disagreement`, `bleu_variance`: S = probe.gen_samples sampled answers per
  prompt; 1 - mean pairwise sentence chrF / 100 among them (lexical disagreement), and the
  BLEUVar, the mean pairwise (1 - BLEU)^2 among them (Xiao et al. 2020; Flores et al. 2026's
  "lexical similarity of outputs" and "BLEU variance", here over sampled rather than MC-dropout
  outputs). Label-free.

The greedy generation is shared: one batched, left-padded pass writes every prompt's answer (up to
eval.max_new_tokens, stopping at the end of the turn), a teacher-forced pass over prompt + written
tokens gives their exact log-probs, and both are cached per prompt text in a JSON file keyed by
the model fingerprint and the settings (one-shot runs), or kept on the ProbeContext for the other
generation probe of the same call (loop rounds, no disk cache).

    llm-al select pool.jsonl --strategy greedy_logprob --budget 100 --out chosen.jsonl
"""

from __future__ import annotations

import json
import time
from typing import Sequence

import numpy as np

from llm_al.errors import ConfigError
from llm_al.evaluate import left_pad, stop_token_ids
from llm_al.features.cache import text_key
from llm_al.features.engine import response_token_stats
from llm_al.features.formatting import Tokenized, prompt_text
from llm_al.features.probes import PROBES, ProbeContext
from llm_al.io import write_json
from llm_al.metrics import METRICS
from llm_al.strategies.base import STRATEGIES, PER_EXAMPLE, from_scores, top_k
from llm_al.types import Features
from llm_al.types import Selection


# ---------------------------------------------------------------------------- batched generation
def generate_ids(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int, *,
                 samples: int = 1, temperature: float | None = None, seed: int | None = None,
                 progress=None) -> list[list[list[int]]]:
    """Token ids the model writes after each prompt: (N prompts) x (samples) lists, each cut after
    its first stop token (kept: stopping is one of the model's choices). Greedy when `temperature`
    is None, else `samples` draws per prompt at that temperature (no top-k/top-p truncation),
    seeded by `seed` without touching the global torch RNG. Batched longest-first with left
    padding, `batch_size` generated rows per batch."""
    import torch

    device = next(model.parameters()).device
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    stops = stop_token_ids(model, tokenizer)
    stop_set = set(stops)
    per_batch = max(1, batch_size // samples)
    sampling = ({"do_sample": True, "temperature": float(temperature), "top_k": 0, "top_p": 1.0,
                 "num_return_sequences": samples} if temperature is not None else
                {"do_sample": False, "temperature": None, "top_p": None, "top_k": None})
    out_ids: list[list[list[int]]] = [[] for _ in prompts]
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.inference_mode():
        if seed is not None:
            torch.manual_seed(int(seed))
        for start in range(0, len(order), per_batch):
            batch = order[start: start + per_batch]
            ids, mask = left_pad([encoded[i] for i in batch], tokenizer.pad_token_id)
            T = ids.shape[1]
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                 max_new_tokens=max_new_tokens, eos_token_id=stops,
                                 pad_token_id=tokenizer.pad_token_id, **sampling)   # (B * samples, T + new)
            new = out[:, T:].cpu().tolist()
            for row, seq in enumerate(new):                     # rows are prompt-major
                cut = next((k + 1 for k, t in enumerate(seq) if t in stop_set), len(seq))
                out_ids[batch[row // samples]].append(seq[:cut])
            if progress:
                progress(len(batch))
    assert all(len(s) == samples for s in out_ids), "generate returned a wrong number of sequences"
    return out_ids


def _decode(tokenizer, ids: Sequence[int]) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=True).strip()


def _eval_settings(ctx: ProbeContext) -> tuple[int, int]:
    if ctx.eval_cfg is None:
        from llm_al.config import EvalConfig

        cfg = EvalConfig()
    else:
        cfg = ctx.eval_cfg
    return int(cfg.max_new_tokens), int(cfg.batch_size)


def _dtype(model) -> str:
    return str(next(model.parameters()).dtype).replace("torch.", "")


def _load_json_cache(path) -> dict:
    if path is None or not path.exists():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def _bar(ctx: ProbeContext, total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="ex", disable=not ctx.progress)


# ---------------------------------------------------------------------------- shared greedy pass
def greedy_outputs(ctx: ProbeContext) -> tuple[list[list[int]], list[str], np.ndarray, dict]:
    """Each pool prompt's greedy answer: (token ids, text, (N, 2) [summed log-prob, token count],
    cost). Reuses the disk cache (ctx.cache_dir) and, within one ProbeContext, the other probe's
    result; the cost counts only the generations done by this call."""
    if ctx.model is None or ctx.tokenizer is None:
        from llm_al.errors import FeatureUnavailableError

        raise FeatureUnavailableError("the generation probes need a model (model.name) to write answers")
    memo = ctx.__dict__.get("_gen_probes_greedy")
    if memo is not None:
        return (*memo, {"seconds": 0.0, "generations": 0, "generated_tokens": 0, "forward_passes": 0,
                        "shared": True})
    t0 = time.perf_counter()
    model, tok = ctx.model, ctx.tokenizer
    max_new, batch_size = _eval_settings(ctx)
    prompts = [prompt_text(tok, ex.prompt_messages) for ex in ctx.examples]
    keys = [text_key(p) for p in prompts]
    path = None
    if ctx.cache_dir is not None:
        path = ctx.cache_dir / f"greedy-v1-{text_key(ctx.model_key, _dtype(model), str(max_new))}.json"
    cache = _load_json_cache(path)
    todo = sorted({k: i for i, k in reversed(list(enumerate(keys))) if k not in cache}.values())
    generated_tokens = 0
    if todo:
        bar = _bar(ctx, len(todo), "greedy generation")
        ids = generate_ids(model, tok, [prompts[i] for i in todo], max_new, batch_size, progress=bar.update)
        bar.close()
        gen = [s[0] for s in ids]
        prompt_ids = [tok(prompts[i], add_special_tokens=False)["input_ids"] for i in todo]
        stats = response_token_stats(model, [Tokenized(p, g, False) for p, g in zip(prompt_ids, gen)],
                                     tok.pad_token_id)               # (len(todo), .) exact teacher-forced log-probs
        for j, i in enumerate(todo):
            cache[keys[i]] = {"ids": gen[j], "text": _decode(tok, gen[j]),
                              "nll_sum": float(stats[j, 0]), "n_tokens": int(stats[j, 2])}
        generated_tokens = int(sum(len(g) for g in gen))
        if path is not None:
            write_json(path, cache)
    rows = [cache[k] for k in keys]
    gen_ids = [r["ids"] for r in rows]
    texts = [r["text"] for r in rows]
    lp = np.array([[-r["nll_sum"], r["n_tokens"]] for r in rows], dtype=np.float64).reshape(len(rows), 2)
    ctx.__dict__["_gen_probes_greedy"] = (gen_ids, texts, lp)
    cost = {"seconds": time.perf_counter() - t0, "generations": len(todo), "generated_tokens": generated_tokens,
            "forward_passes": 1 if todo else 0, "cached": len(keys) - len(todo)}
    return gen_ids, texts, lp, cost


@PROBES.register("greedy", "mean log-prob of the model's own greedy answer (free generation)",
                 provides=("greedy_logprob",), needs_model=True, needs_labels=False)
def greedy_probe(ctx: ProbeContext) -> tuple[dict[str, np.ndarray], dict]:
    _, _, lp, cost = greedy_outputs(ctx)
    return {"greedy_logprob": lp[:, 0] / np.maximum(lp[:, 1], 1)}, cost


@PROBES.register("oracle", "primary metric (eval.primary) of the greedy answer against the reference",
                 provides=("oracle",), needs_model=True, needs_labels=True)
def oracle_probe(ctx: ProbeContext) -> tuple[dict[str, np.ndarray], dict]:
    _, texts, _, cost = greedy_outputs(ctx)
    primary = ctx.eval_cfg.primary if ctx.eval_cfg is not None else "chrf"
    t0 = time.perf_counter()
    _, per = METRICS.get(primary).fn(texts, [ex.response for ex in ctx.examples])
    cost = {**cost, "seconds": cost["seconds"] + time.perf_counter() - t0, "metric": primary}
    return {"oracle": np.asarray(per, dtype=np.float64)}, cost


# ---------------------------------------------------------------------------- sampled disagreement
def chrf_disagreement(samples: Sequence[str]) -> float:
    """1 - mean sentence chrF / 100 over the ordered pairs (i, j), i != j, of `samples` (chrF is
    not symmetric, so both directions count). Identical texts count as similarity 1, also when both
    are empty (sacrebleu gives chrF 0 for two empty strings)."""
    import sacrebleu

    if len(samples) < 2:
        raise ConfigError(f"lexical disagreement needs at least 2 samples, got {len(samples)}")
    sims = [1.0 if a == b else sacrebleu.sentence_chrf(a, [b]).score / 100
            for i, a in enumerate(samples) for j, b in enumerate(samples) if i != j]
    return float(1.0 - np.mean(sims))


def bleu_variance(samples: Sequence[str]) -> float:
    """BLEUVar of Xiao et al. (2020, "Wat zei je? Detecting out-of-distribution translations with
    variational transformers"): the mean over the ordered pairs (i, j), i != j, of (1 - BLEU(h_i,
    h_j))^2, BLEU in [0, 1] (sentence BLEU with effective order, h_j the one reference; not
    symmetric, so both directions count). Identical texts count as BLEU 1, also when both are empty.
    0 when all samples agree, 1 when no two share an n-gram."""
    import sacrebleu

    if len(samples) < 2:
        raise ConfigError(f"BLEU variance needs at least 2 samples, got {len(samples)}")
    terms = [(1.0 - (1.0 if a == b else sacrebleu.sentence_bleu(a, [b]).score / 100)) ** 2
             for i, a in enumerate(samples) for j, b in enumerate(samples) if i != j]
    return float(np.mean(terms))


@PROBES.register("sampled", "S sampled answers per prompt: lexical disagreement (1 - pairwise chrF) and BLEU variance",
                 provides=("gen_disagreement", "bleu_variance"), needs_model=True, needs_labels=False)
def sampled_probe(ctx: ProbeContext) -> tuple[dict[str, np.ndarray], dict]:
    cfg = ctx.probe_cfg
    S, temp, seed = int(cfg.gen_samples), float(cfg.gen_temperature), int(cfg.seed)
    if S < 2:
        raise ConfigError(f"probe.gen_samples must be >= 2 to measure disagreement between samples, got {S}")
    if not temp > 0:
        raise ConfigError(f"probe.gen_temperature must be > 0, got {temp}")
    if ctx.model is None or ctx.tokenizer is None:
        from llm_al.errors import FeatureUnavailableError

        raise FeatureUnavailableError("the sampled probe needs a model (model.name) to write answers")
    t0 = time.perf_counter()
    model, tok = ctx.model, ctx.tokenizer
    max_new, batch_size = _eval_settings(ctx)
    prompts = [prompt_text(tok, ex.prompt_messages) for ex in ctx.examples]
    keys = [text_key(p) for p in prompts]
    path = None
    if ctx.cache_dir is not None:
        settings = (ctx.model_key, _dtype(model), str(max_new), str(S), repr(temp), str(seed))
        path = ctx.cache_dir / f"sampled-v1-{text_key(*settings)}.json"
    cache = _load_json_cache(path)
    todo = sorted({k: i for i, k in reversed(list(enumerate(keys))) if k not in cache}.values())
    generated_tokens = 0
    if todo:
        bar = _bar(ctx, len(todo), f"sampling {S} answers")
        ids = generate_ids(model, tok, [prompts[i] for i in todo], max_new, batch_size, samples=S,
                           temperature=temp, seed=seed, progress=bar.update)
        bar.close()
        for j, i in enumerate(todo):
            cache[keys[i]] = [_decode(tok, s) for s in ids[j]]
        generated_tokens = int(sum(len(s) for per in ids for s in per))
        if path is not None:
            write_json(path, cache)
    samples = [cache[k] for k in keys]
    scores = {"gen_disagreement": np.array([chrf_disagreement(s) for s in samples], dtype=np.float64),
              "bleu_variance": np.array([bleu_variance(s) for s in samples], dtype=np.float64)}
    cost = {"seconds": time.perf_counter() - t0, "generations": S * len(todo), "generated_tokens": generated_tokens,
            "cached": len(keys) - len(todo), "samples": S, "temperature": temp}
    return scores, cost


# ---------------------------------------------------------------------------- strategies
def _lowest_first(values: np.ndarray, budget: int, rng: np.random.Generator, name: str) -> Selection:
    idx = top_k(-values, budget, rng)
    return Selection(idx, values[idx], name, values)


@STRATEGIES.register("greedy_logprob", "least confident first: lowest mean log-prob of the model's own greedy answer",
                     needs=("greedy_logprob",), labelled=PER_EXAMPLE)
def least_confident(features: Features, budget: int, rng: np.random.Generator) -> Selection:
    """Least-confidence sampling for generation (Perlitz et al., EMNLP 2023; Flores et al. 2026's
    "mean greedy-token log-prob"): the examples whose freely generated greedy answer the untrained
    model itself finds least likely. Label-free."""
    values = features.require("greedy_logprob").astype(np.float64)
    return _lowest_first(values, budget, rng, "mean log-prob of the greedy answer (nats/token)")


@STRATEGIES.register("oracle", "worst first: lowest eval.primary metric of the model's greedy answer vs the reference",
                     needs=("oracle",), labelled=PER_EXAMPLE)
def oracle(features: Features, budget: int, rng: np.random.Generator) -> Selection:
    """Oracle informativeness (Perlitz et al., EMNLP 2023): pick the examples the current model
    answers worst, measured by the evaluation metric against the reference. Needs labels; it is a
    test of the "informative examples help" assumption, not a usable acquisition function."""
    values = features.require("oracle").astype(np.float64)
    return _lowest_first(values, budget, rng, "metric of the greedy answer vs the reference")


@STRATEGIES.register("gen_disagreement", "most disagreeing first: 1 - mean pairwise chrF among sampled answers",
                     needs=("gen_disagreement",), labelled=PER_EXAMPLE)
def gen_disagreement(features: Features, budget: int, rng: np.random.Generator) -> Selection:
    """Lexical disagreement among sampled outputs, the generation analogue of committee
    disagreement (Perlitz et al., EMNLP 2023; "lexical similarity of outputs" in Flores et al.
    2026, here over temperature samples). Label-free."""
    return from_scores(features.require("gen_disagreement").astype(np.float64), budget, rng,
                       "1 - mean pairwise chrF/100 of sampled answers")


@STRATEGIES.register("bleu_variance", "highest BLEUVar of sampled answers: mean pairwise (1 - BLEU)^2 (Xiao et al. 2020)",
                     needs=("bleu_variance",), labelled=PER_EXAMPLE)
def bleu_variance_strategy(features: Features, budget: int, rng: np.random.Generator) -> Selection:
    """BLEU variance among sampled outputs (Xiao et al. 2020's BLEUVar, used by Perlitz et al.,
    EMNLP 2023 and Flores et al. 2026). Label-free."""
    return from_scores(features.require("bleu_variance").astype(np.float64), budget, rng,
                       "BLEUVar: mean pairwise (1 - BLEU)^2 of sampled answers")
