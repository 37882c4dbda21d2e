"""Teacher-forced model probes and their strategies: MC-dropout BALD and disagreement, expected
gradient length, and query-by-committee. All read the reference response (needs_labels=True).

- `mc_dropout` -> `bald`, `mc_disagreement`: K stochastic passes with dropout(p) applied to the
  inputs of the decoder's Linear layers (Llama-family models have no active dropout of their own,
  and a fresh LoRA adapter has B = 0, so its dropout changes nothing). `bald`: per response token
  BALD = H[mean_k p_k] - mean_k H[p_k], averaged over the example's response tokens.
  `mc_disagreement`: the standard deviation across the K passes of the example's mean response
  NLL, i.e. how much the dropout models disagree about the whole response. The token-level "KL of
  each pass to the mean" (the research protocol's wording) is not offered separately because it is
  BALD itself: mean_k KL(p_k || p_bar) = H[p_bar] - mean_k H[p_k] (the generalised Jensen-Shannon
  divergence; `mc_token_scores` computes both and a test checks the identity).
- `gradient_length` -> `grad_norm`: the L2 norm of the gradient of the example's mean response NLL
  with respect to the LoRA weights, per example from one batched backward.
- `committee` -> `committee`: std across a committee of LoRA adapters, each trained on a bootstrap
  resample of the labelled set, of each example's mean response NLL (loop rounds only).

Dropout masks are a pure function of (probe.seed, the example's token ids, pass, layer, position,
feature), not of the batch an example lands in, so a cached score is the score a fresh run gives.

Over 450 lines because the family's three model probes (MC dropout, gradient length, committee)
share the model-state helpers and the per-row cache plumbing above them; its four strategies are
the last 40 lines.
"""

from __future__ import annotations

import contextlib
import time
from typing import Sequence

import numpy as np

from llm_al.config import ModelConfig, TrainConfig
from llm_al.errors import ConfigError, FeatureUnavailableError
from llm_al.features.cache import ShardedCache
from llm_al.features.cache import text_key
from llm_al.features.engine import length_sorted_batches, response_token_stats
from llm_al.features.formatting import Tokenized, pack, response_logits, tokenize
from llm_al.features.probes import PROBES, ProbeContext
from llm_al.seeds import stream_seed
from llm_al.strategies.base import STRATEGIES, PER_EXAMPLE, from_scores
from llm_al.train import attach_lora, detach_lora, optimise, train_lora
from llm_al.types import Selection

_M32 = 0xFFFFFFFF


# ---------------------------------------------------------------------------- pure per-token math
def mc_token_scores(logp):
    """BALD and mean KL to the mean, per token, from K passes' log-probs `logp` (K, M, V).

    Returns (bald (M,), disagreement (M,)), in nats: bald = H[mean_k p_k] - mean_k H[p_k]
    (Houlsby et al. 2011), disagreement = mean_k KL(p_k || mean_k p_k) (McCallum & Nigam 1998).
    """
    import math

    import torch

    K = logp.shape[0]
    p = logp.exp()                                                     # (K, M, V)
    log_mean = torch.logsumexp(logp, 0) - math.log(K)                  # (M, V)
    h_mean = -(log_mean.exp() * log_mean).nan_to_num().sum(-1)         # (M,)  0*log0 -> 0
    mean_h = -torch.where(p > 0, p * logp, 0.0).sum(-1).mean(0)        # (M,)
    kl = torch.where(p > 0, p * (logp - log_mean), 0.0).sum(-1).mean(0)
    return h_mean - mean_h, kl


def mix32(x):
    """A 32-bit integer hash (xorshift-multiply) of an int64 tensor of values in [0, 2**32)."""
    for _ in range(2):
        x = x ^ (x >> 16)
        x = (x * 0x45D9F3B) & _M32      # constant < 2**31: the product stays below 2**63
    return x ^ (x >> 16)


def position_hash(T: int, D: int, device=None):
    """(T, D) hashes of the element positions t*D + d: the same values for any padded length T."""
    import torch

    return mix32(torch.arange(T * D, device=device, dtype=torch.int64).view(T, D) + 1)


def dropout_keep(row_seeds, k: int, layer: int, table, p: float):
    """(B, T, D) bool keep-mask, P(keep) = 1 - p. Element (b, t, d) is a pure function of
    (row_seeds[b], pass k, layer, table[t, d] = position_hash), so an example's mask does not
    depend on its batch or padding; one multiply-xorshift round per element after the seeds."""
    import torch

    s = mix32(row_seeds ^ mix32(torch.tensor((k << 12) + layer + 1, device=row_seeds.device)))   # (B,)
    y = table[None] ^ s[:, None, None]                                                          # (B, T, D)
    y = (y * 0x45D9F3B) & _M32
    y ^= y >> 16
    y = (y * 0x45D9F3B) & _M32
    return y >= int(p * 2**32)


# ---------------------------------------------------------------------------- model state helpers
def _is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "active_adapter")


@contextlib.contextmanager
def _preserved(model):
    """Restore every module's train/eval flag, every parameter's requires_grad and torch's global
    RNG on exit: a probe leaves the model and the process as it found them."""
    import torch

    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    devices = [next(model.parameters()).device] if next(model.parameters()).is_cuda else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            for m, mode in modes:
                m.training = mode
            for p, flag in flags:
                p.requires_grad_(flag)


def _model(ctx: ProbeContext, probe: str):
    if ctx.model is None or ctx.tokenizer is None:
        raise FeatureUnavailableError(f"probe {probe!r} needs a model and tokenizer (model.name)")
    return ctx.model, ctx.tokenizer


def _lengths(ctx: ProbeContext) -> tuple[int, int]:
    """(max_length per example, padded tokens per batch) from the model config."""
    m = ctx.model_cfg if ctx.model_cfg is not None else ModelConfig()
    return m.max_length, m.score_max_tokens


def _row_keys(items: Sequence[Tokenized]) -> list[str]:
    return [text_key(",".join(map(str, t.prompt_ids)), ",".join(map(str, t.response_ids))) for t in items]


def _cached_rows(ctx: ProbeContext, kind: str, settings: Sequence, items, keys, compute):
    """Rows for `items` from `compute(positions) -> (len, C) array`, through a ShardedCache when
    ctx.cache_dir is set (folder per model key + settings, row per exact token ids)."""
    if ctx.cache_dir is None:
        return compute(list(range(len(items)))), len(items)
    cache = ShardedCache(ctx.cache_dir / f"{kind}-v1-{text_key(ctx.model_key, *map(str, settings))}")
    todo = cache.missing(keys)
    if todo:
        cache.add([keys[i] for i in todo], compute(todo))
    return cache.get(keys), len(todo)


def _cost(t0: float, **counts) -> dict:
    base = {"forward_passes": 0, "backward_passes": 0, "tokens_scored": 0, "adapters_trained": 0}
    return {"seconds": time.perf_counter() - t0, **base, **counts}


# ---------------------------------------------------------------------------- MC dropout
def _dropout_targets(decoder) -> list:
    """The outermost Linear layers inside the decoder (a peft-wrapped Linear counts once, not its
    base_layer/lora_A/lora_B), in module order; the LM head is not part of the decoder."""
    import torch

    found: list[tuple[str, object]] = []
    for name, mod in decoder.named_modules():
        linear = isinstance(mod, torch.nn.Linear) or isinstance(getattr(mod, "base_layer", None), torch.nn.Linear)
        if linear and not any(name.startswith(outer + ".") for outer, _ in found):
            found.append((name, mod))
    return [mod for _, mod in found]


def _head(model, hidden):
    """Float32 logits of the LM head (with final-logit soft-capping where the model has it)."""
    import torch

    logits = model.get_output_embeddings()(hidden).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def mc_dropout_stats(model, items: Sequence[Tokenized], row_seeds: np.ndarray, pad_id: int, passes: int,
                     p: float, max_tokens: int = 4096, progress: bool = False) -> tuple[np.ndarray, dict]:
    """(N, 3) rows (mean BALD, std over passes of the mean response NLL, response tokens) and counts. Per batch: K decoder
    passes with seeded dropout on the Linear inputs, hidden states at response positions kept
    (K, M, H); the LM head and the per-token math then run in chunks of response tokens."""
    import torch
    from tqdm.auto import tqdm

    decoder = model.get_decoder()
    targets = _dropout_targets(decoder)
    if not targets:
        raise FeatureUnavailableError("mc_dropout: no Linear layers found in the decoder to apply dropout to")
    layer_of = {id(m): i for i, m in enumerate(targets)}
    state: dict = {}

    def hook(module, args, kwargs):
        x = args[0] if args else kwargs["x"]
        shape = tuple(x.shape[1:])                     # (T, D)
        if shape not in state["tables"]:
            state["tables"][shape] = position_hash(*shape, device=x.device)
        keep = dropout_keep(state["seeds"], state["k"], layer_of[id(module)], state["tables"][shape], p)
        x = torch.where(keep, x * (1.0 / (1.0 - p)), 0.0).to(x.dtype)
        return ((x, *args[1:]), kwargs) if args else (args, {**kwargs, "x": x})

    device = next(model.parameters()).device
    out = np.zeros((len(items), 3), dtype=np.float64)
    batches = length_sorted_batches([t.length for t in items], max_tokens, 64)
    vocab = model.get_output_embeddings().weight.shape[0]
    chunk = max(1, (1 << 24) // (passes * vocab))         # K x chunk x V floats per head call (64 MB)
    any_diff = False
    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in targets]
    try:
        model.eval()
        with torch.inference_mode():
            for batch in tqdm(batches, desc="mc dropout", unit="batch", disable=not progress):
                ids, mask, rows, pos, targets = (t.to(device) for t in pack([items[i] for i in batch], pad_id))
                state["seeds"] = torch.as_tensor(row_seeds[batch], dtype=torch.int64, device=device)
                state["tables"] = {}
                hs = []
                for k in range(passes):
                    state["k"] = k
                    hs.append(decoder(input_ids=ids, attention_mask=mask).last_hidden_state[rows, pos])  # (M, H)
                hs = torch.stack(hs)                                                                # (K, M, H)
                any_diff = any_diff or bool((hs != hs[:1]).any())
                sums = torch.zeros(len(batch), dtype=torch.float64, device=device)
                nll = torch.zeros((len(batch), passes), dtype=torch.float64, device=device)        # per pass
                for c in range(0, hs.shape[1], chunk):
                    logp = torch.log_softmax(_head(model, hs[:, c:c + chunk]), -1)                  # (K, m, V)
                    bald, _ = mc_token_scores(logp)
                    sums.index_add_(0, rows[c:c + chunk], bald.double())
                    tgt = targets[c:c + chunk]
                    token_lp = logp.gather(-1, tgt[None, :, None].expand(passes, -1, 1))[..., 0]    # (K, m)
                    nll.index_add_(0, rows[c:c + chunk], -token_lp.T.double())
                counts = torch.bincount(rows, minlength=len(batch)).double().clamp(min=1)
                out[batch, 0] = (sums / counts).cpu().numpy()
                out[batch, 1] = (nll / counts[:, None]).std(dim=1, unbiased=False).cpu().numpy()
                out[batch, 2] = counts.cpu().numpy()
    finally:
        for h in handles:
            h.remove()
    if items and not any_diff:
        raise FeatureUnavailableError(f"mc_dropout: the {passes} dropout passes came out identical "
                                      f"(p={p}); the scores would be a constant 0")
    return out, {"forward_passes": len(batches) * passes,
                 "tokens_scored": int(sum(t.length for t in items)) * passes}


@PROBES.register("mc_dropout", "MC-dropout BALD and disagreement over K teacher-forced passes (probe.mc_passes, "
                 "probe.mc_dropout)", provides=("bald", "mc_disagreement"), needs_model=True, needs_labels=True)
def mc_dropout_probe(ctx: ProbeContext):
    cfg = ctx.probe_cfg
    K, p = int(cfg.mc_passes), float(cfg.mc_dropout)
    if K < 2:
        raise ConfigError(f"probe.mc_passes must be >= 2 (BALD compares passes), got {K}")
    if not 0 <= p < 1:
        raise ConfigError(f"probe.mc_dropout must be in [0, 1), got {p}")
    if p == 0:
        raise FeatureUnavailableError("mc_dropout: probe.mc_dropout is 0, so dropout cannot be enabled and "
                                      "all passes would be identical; set probe.mc_dropout > 0 (e.g. 0.1)")
    model, tok = _model(ctx, "mc_dropout")
    max_length, max_tokens = _lengths(ctx)
    t0 = time.perf_counter()
    items = tokenize(tok, ctx.examples, max_length)
    keys = _row_keys(items)
    row_seeds = np.array([int(k[:8], 16) ^ (int(cfg.seed) & _M32) for k in keys], dtype=np.int64)
    counts: dict = {}

    def compute(todo):
        with _preserved(model):
            rows, c = mc_dropout_stats(model, [items[i] for i in todo], row_seeds[todo], tok.pad_token_id, K, p,
                                       max_tokens, ctx.progress)
        counts.update(c)
        return rows

    dtype = str(next(model.parameters()).dtype)
    rows, scored = _cached_rows(ctx, "mc2", (dtype, max_length, K, p, cfg.seed), items, keys, compute)
    cost = _cost(t0, examples_scored=scored, **counts)
    return {"bald": rows[:, 0].astype(np.float32), "mc_disagreement": rows[:, 1].astype(np.float32)}, cost


# ---------------------------------------------------------------------------- gradient length
def lora_grad_norms(peft_model, items: Sequence[Tokenized], pad_id: int, max_tokens: int = 4096) -> tuple[np.ndarray, dict]:
    """(N,) L2 norm of d(mean response NLL of example i)/d(active LoRA weights), one backward per
    batch. Forward hooks keep each lora_A/lora_B Linear's input X (B, T, d_in) and output; the
    output grads G (B, T, d_out) come from one autograd.grad of the summed per-example losses, and
    example i's weight gradient is G_i^T X_i (padding rows masked), so ||.||^2 sums over layers.
    The model's .grad fields are never touched."""
    import torch

    active = peft_model.active_adapter
    layers = [(n, m) for n, m in peft_model.named_modules()
              if isinstance(m, torch.nn.Linear) and (n.endswith(f".lora_A.{active}") or n.endswith(f".lora_B.{active}"))]
    if not layers:
        raise FeatureUnavailableError(f"gradient_length: the model has no LoRA Linear layers for adapter {active!r}")
    captured: list = []

    def keep(module, args, output):
        captured.append((args[0], output))

    device = next(peft_model.parameters()).device
    out = np.zeros(len(items), dtype=np.float64)
    batches = length_sorted_batches([t.length for t in items], max_tokens, 64)
    for _, m in layers:
        m.weight.requires_grad_(True)
    handles = [m.register_forward_hook(keep) for _, m in layers]
    try:
        peft_model.eval()
        with torch.enable_grad():
            for batch in batches:
                captured.clear()
                ids, mask, rows, pos, targets = (t.to(device) for t in pack([items[i] for i in batch], pad_id))
                logits = response_logits(peft_model, ids, mask, rows, pos)                      # (M, V)
                nll = torch.nn.functional.cross_entropy(logits, targets, reduction="none")      # (M,)
                counts = torch.bincount(rows, minlength=len(batch))                             # (B,)
                loss = (nll / counts[rows]).sum()               # sum over examples of each one's mean NLL
                grads = torch.autograd.grad(loss, [o for _, o in captured])
                sq = torch.zeros(len(batch), dtype=torch.float64, device=device)
                with torch.no_grad():
                    for (x, _), g in zip(captured, grads):
                        g = g.float() * mask[..., None]                                         # (B, T, d_out)
                        per = torch.einsum("bto,bti->boi", g, x.float())                        # (B, d_out, d_in)
                        sq += per.pow(2).sum((1, 2)).double()
                out[batch] = sq.sqrt().cpu().numpy()
    finally:
        for h in handles:
            h.remove()
        captured.clear()
    return out, {"forward_passes": len(batches), "backward_passes": len(batches),
                 "tokens_scored": int(sum(t.length for t in items))}


@PROBES.register("gradient_length", "L2 norm of the LoRA gradient of each example's response loss "
                 "(expected gradient length)", provides=("grad_norm",), needs_model=True, needs_labels=True)
def gradient_length_probe(ctx: ProbeContext):
    """Under the round's adapter in loop rounds; one-shot, under a fresh adapter attached with
    train.attach_lora (seed from probe.seed) and removed afterwards. A fresh adapter has B = 0, so
    the gradients of its A matrices are exactly zero and the norm is that of the B gradients."""
    model, tok = _model(ctx, "gradient_length")
    train_cfg = ctx.train_cfg if ctx.train_cfg is not None else TrainConfig()
    max_length, max_tokens = _lengths(ctx)
    t0 = time.perf_counter()
    items = tokenize(tok, ctx.examples, max_length)
    keys = _row_keys(items)
    counts: dict = {}
    init_seed = stream_seed(ctx.probe_cfg.seed, "init")

    def compute(todo):
        sub = [items[i] for i in todo]
        with _preserved(model):
            if _is_peft(model):
                norms, c = lora_grad_norms(model, sub, tok.pad_token_id, max_tokens)
            else:
                peft_model = attach_lora(model, train_cfg, init_seed)
                try:
                    norms, c = lora_grad_norms(peft_model, sub, tok.pad_token_id, max_tokens)
                finally:
                    detach_lora(peft_model)
        counts.update(c)
        return norms[:, None]

    lora = (train_cfg.lora_r, train_cfg.lora_alpha, train_cfg.target_modules, init_seed)
    settings = (str(next(model.parameters()).dtype), max_length, *lora)
    rows, scored = _cached_rows(ctx, "gradlen", settings, items, keys, compute)
    return {"grad_norm": rows[:, 0].astype(np.float32)}, _cost(t0, examples_scored=scored, **counts)


# ---------------------------------------------------------------------------- committee
@PROBES.register("committee", "query-by-committee: std of response loss across LoRA adapters trained on "
                 "bootstraps of the labelled set (probe.committee_size; loop rounds only)",
                 provides=("committee",), needs_model=True, needs_labels=True)
def committee_probe(ctx: ProbeContext):
    """Each member: a LoRA adapter trained with ctx.train_cfg on a bootstrap resample of
    ctx.labelled (its own resample and init seed from probe.seed); it scores every example's mean
    response NLL; the score is the std across members. A round's PeftModel gets the members as
    extra adapters (add/set/delete_adapter), its own adapter untouched; a base model gets each
    member attached and removed."""
    import torch
    from peft import LoraConfig

    labelled = list(ctx.labelled or [])
    if len(labelled) < 2:
        raise FeatureUnavailableError(
            f"qbc needs a labelled set: use it in the active-learning loop (loop.rounds >= 1), where each "
            f"round passes the examples labelled so far; got {len(labelled)} labelled examples")
    size = int(ctx.probe_cfg.committee_size)
    if size < 2:
        raise ConfigError(f"probe.committee_size must be >= 2 (a std across members), got {size}")
    model, tok = _model(ctx, "committee")
    cfg = ctx.train_cfg if ctx.train_cfg is not None else TrainConfig()
    max_length, max_tokens = _lengths(ctx)
    t0 = time.perf_counter()
    items = tokenize(tok, ctx.examples, max_length)
    lab_items = tokenize(tok, labelled, max_length)
    seeds = np.random.SeedSequence([int(ctx.probe_cfg.seed), 7]).generate_state(2 * size)   # resample, init
    losses = np.zeros((size, len(items)))
    steps = 0
    with _preserved(model):
        if _is_peft(model):
            active = model.active_adapter
            targets = model.peft_config[active].target_modules
        for c in range(size):
            boot = np.random.default_rng(int(seeds[2 * c])).integers(0, len(lab_items), len(lab_items))
            train_items = [lab_items[i] for i in boot]
            if _is_peft(model):
                name = f"committee_{c}"
                torch.manual_seed(int(seeds[2 * c + 1]))
                model.add_adapter(name, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                                   target_modules=targets, task_type="CAUSAL_LM", bias="none"))
                try:
                    model.set_adapter(name)
                    steps += optimise(model, train_items, tok.pad_token_id, cfg, None, False).steps
                    stats = response_token_stats(model, items, tok.pad_token_id, max_tokens)
                finally:
                    model.set_adapter(active)
                    model.delete_adapter(name)
            else:
                member, result = train_lora(model, train_items, tok.pad_token_id, cfg, int(seeds[2 * c + 1]),
                                            progress_bar=False)
                try:
                    stats = response_token_stats(member, items, tok.pad_token_id, max_tokens)
                finally:
                    detach_lora(member)
                steps += result.steps
            losses[c] = stats[:, 0] / np.maximum(stats[:, 2], 1)
    n_batches = len(length_sorted_batches([t.length for t in items], max_tokens, 64))
    cost = _cost(t0, forward_passes=steps + size * n_batches, backward_passes=steps,
                 tokens_scored=size * int(sum(t.length for t in items)), adapters_trained=size,
                 examples_scored=len(items))
    return {"committee": losses.std(axis=0).astype(np.float32)}, cost


# ---------------------------------------------------------------------------- strategies
@STRATEGIES.register("bald", "highest MC-dropout BALD (mutual information) along the reference response",
                     needs=("bald",), labelled=PER_EXAMPLE)
def bald(features, budget: int, rng: np.random.Generator) -> Selection:
    """BALD (Houlsby et al. 2011; Gal, Islam & Ghahramani, ICML 2017): H[mean prediction] minus
    the mean entropy of the MC-dropout predictions, averaged over the response tokens."""
    return from_scores(features.require("bald").astype(np.float64), budget, rng, "MC-dropout BALD (nats/token)")


@STRATEGIES.register("mc_disagreement", "highest MC-dropout disagreement: std over the passes of the response NLL",
                     needs=("mc_disagreement",), labelled=PER_EXAMPLE)
def mc_disagreement(features, budget: int, rng: np.random.Generator) -> Selection:
    """Disagreement of the MC-dropout models (Gal & Ghahramani 2016; the MC-dropout disagreement of
    Flores et al. 2026) at the level of the whole response: the standard deviation over the K passes
    of the example's mean response NLL. (The token-level mean KL to the mean equals BALD, see the
    module doc, so it is not a separate strategy.)"""
    return from_scores(features.require("mc_disagreement").astype(np.float64), budget, rng,
                       "MC-dropout KL to the mean (nats/token)")


@STRATEGIES.register("egl", "expected gradient length: largest LoRA gradient norm of the response loss",
                     needs=("grad_norm",), labelled=PER_EXAMPLE)
def egl(features, budget: int, rng: np.random.Generator) -> Selection:
    """Expected gradient length / expected model change (Settles, Craven & Ray, NIPS 2008), with the
    reference response in place of the expectation over labels; Ash et al. (BADGE, ICLR 2020) use
    the same gradients as embeddings."""
    return from_scores(features.require("grad_norm").astype(np.float64), budget, rng, "LoRA gradient norm")


@STRATEGIES.register("qbc", "query-by-committee: largest std of response loss across bootstrap-trained adapters",
                     needs=("committee",), labelled="ignored: a per-example score (the committee probe itself "
                     "trains its adapters on the labelled examples, ProbeContext.labelled)")
def qbc(features, budget: int, rng: np.random.Generator) -> Selection:
    """Query by committee (Seung, Opper & Sompolinsky 1992; Dagan & Engelson 1995): disagreement of
    a committee of adapters trained on bootstraps of the labelled set, as the std of their losses."""
    return from_scores(features.require("committee").astype(np.float64), budget, rng,
                       "committee std of response loss (nats/token)")
