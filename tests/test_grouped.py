"""Grouped LoRA (llm_al.grouped, llm_al.train_grouped): K runs trained in one pass over one base
model equal the same runs done one by one with train_lora, and the base model is left intact.

Tolerances (float32, CPU). The first-step gradients agree to 1e-6 relative: only the matmul
shapes differ. After several AdamW steps most weights agree to ~1e-6, but AdamW divides each
element's gradient by its own running RMS, so an element whose gradient is at rounding-noise level
(a few per thousand here) can take a visibly different step, at most about lr per step
(|m / sqrt(v)| <= 1/sqrt(1 - beta2) * (1 - beta1) ~ 3.2 after bias correction); measured: 5 to 15
of ~5000 elements above 1e-5, the largest 4.7e-4 with lr 1e-2. So the weights are checked as:
max abs difference < 0.1 * lr (a sign-flip bound, not a rounding bound), fewer than 1% of the
elements above 1e-5, and the whole adapter within 1e-3 relative (Frobenius; measured up to
1.1e-4, from those few elements); the per-step losses
(rounded to 5 decimals as train_lora does) within 2e-5.

The default grouped step runs the shared prefix once and packs the suffixes (share_prefix=True):
other matmul shapes again, so more rounding-level gradient elements flip. Its first-step
gradients equal the padded step's to 1e-4 relative (test_packed_step_...); after 6 steps at
lr 1e-2, measured against train_lora: run 0 worst 4.4e-3 (< 0.5 lr), 227 of 8192 elements above
1e-5 (2.8%), 9.6e-4 relative; runs 1 and 2 within 1.3e-6. Checked with PACKED_TOL (worst < lr,
under 5% of elements, 3e-3 relative), and the per-step losses within 2e-5 as above.
"""

from __future__ import annotations

import pytest
import torch

from conftest import pool_records
from llm_al.data.pool import records_to_pool
from llm_al.features.formatting import pack, response_logits, tokenize
from llm_al.grouped import (GroupedLoraLinear, attached, export_adapter, grouped_generate, init_grouped,
                            peft_lora_weights, peft_view)
from llm_al.config import TrainConfig
from llm_al.train import attach_lora, detach_lora, train_lora
from llm_al.train_grouped import GroupedRun, train_grouped

CFG = TrainConfig(epochs=2, batch_size=4, lr=1e-2, lora_r=4, lora_alpha=8, lora_dropout=0.0,
                  schedule="linear", warmup_steps=1)
ORDERS = [[3, 1, 4, 15, 9, 2, 6, 5, 10, 20], [0, 7, 8, 11, 12, 13, 14, 16, 17, 18],
          [23, 22, 21, 19, 5, 6, 1, 2, 3, 4]]
SEEDS = [11, 12, 13]


@pytest.fixture(scope="module")
def items(tiny_model):
    _, tok = tiny_model
    return tokenize(tok, records_to_pool(pool_records(24)).examples, 64)


def _sequential(model, items, pad_id, order, seed, cfg):
    """train_lora of one run: ({layer: (A, B)}, TrainResult); the base model restored."""
    peft_model, result = train_lora(model, [items[i] for i in order], pad_id, cfg, seed, progress_bar=False)
    weights, _ = peft_lora_weights(peft_model)
    weights = {n: (a.detach().clone(), b.detach().clone()) for n, (a, b) in weights.items()}
    detach_lora(peft_model)
    return weights, result


PADDED_TOL = (0.1, 0.01, 1e-3)
PACKED_TOL = (1.0, 0.05, 3e-3)


def _compare(lora, k, weights, lr, tol=PACKED_TOL) -> float:
    """Assert run k of `lora` matches sequential `weights` (see the module docstring): the largest
    difference below tol[0] * lr, under tol[1] of the elements above 1e-5, the adapter within tol[2]
    relative. Returns the max abs diff."""
    assert set(weights) == set(lora.names)
    diffs, big, total, num, den = [], 0, 0, 0.0, 0.0
    for name, (a, b) in weights.items():
        for want, got in ((a, lora.A[name][k]), (b, lora.B[name][k])):
            d = (want - got.detach()).abs()
            diffs.append(float(d.max()))
            big += int((d > 1e-5).sum())
            total += d.numel()
            num += float((d ** 2).sum())
            den += float((want ** 2).sum())
    worst = max(diffs)
    assert worst < tol[0] * lr, worst
    assert big < tol[1] * total, (big, total)
    assert (num / den) ** 0.5 < tol[2]         # padded: measured 1.1e-4, all of it from the few flipped elements
    return worst


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def trained(tiny_model, items):
    """The three CFG runs, grouped (gather mode) and sequential."""
    model, tok = tiny_model
    lora, results = train_grouped(model, [GroupedRun([items[i] for i in o], s) for o, s in zip(ORDERS, SEEDS)],
                                  tok.pad_token_id, CFG)
    seq = [_sequential(model, items, tok.pad_token_id, o, s, CFG) for o, s in zip(ORDERS, SEEDS)]
    return lora, results, seq


# ---------------------------------------------------------------------------- initialisation and gradients
def test_stacked_init_equals_peft_bitwise(tiny_model):
    model, _ = tiny_model
    lora = init_grouped(model, CFG, SEEDS)
    assert lora.K == 3 and lora.scaling == CFG.lora_alpha / CFG.lora_r
    for k, seed in enumerate(SEEDS):
        peft_model = attach_lora(model, CFG, seed)
        weights, _ = peft_lora_weights(peft_model)
        assert set(weights) == set(lora.names) and len(weights) == 2 * 7     # q k v o gate up down, 2 layers
        for name, (a, b) in weights.items():
            assert torch.equal(lora.A[name][k], a) and torch.equal(lora.B[name][k], b)
        detach_lora(peft_model)


@pytest.mark.parametrize("mode", ["gather", "loop"])
def test_each_adapter_gets_its_own_runs_gradient(tiny_model, items, mode):
    """One grouped backward of the summed per-run mean losses = each run's own backward through
    peft (B made nonzero first so that A gets a gradient too)."""
    model, tok = tiny_model
    lora = init_grouped(model, CFG, SEEDS)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        for name in lora.names:
            lora.B[name].copy_(torch.randn(lora.B[name].shape, generator=gen) * 0.05)
    batches = [[items[i] for i in o[:4]] for o in ORDERS]
    flat = [it for b in batches for it in b]
    ids, mask, rows, pos, targets = pack(flat, tok.pad_token_id)
    tag = torch.repeat_interleave(torch.arange(3), 4)                               # (12,)
    with attached(model, lora, mode) as router, router.rows(tag):
        ce = torch.nn.functional.cross_entropy(response_logits(model, ids, mask, rows, pos), targets,
                                               reduction="none")                    # (M,)
        tok_run = tag[rows]
        sum(ce[tok_run == k].mean() for k in range(3)).backward()
    for k in range(3):
        with peft_view(model, lora, k) as peft_model:
            ids_k, mask_k, rows_k, pos_k, targets_k = pack(batches[k], tok.pad_token_id)
            torch.nn.functional.cross_entropy(response_logits(peft_model, ids_k, mask_k, rows_k, pos_k),
                                              targets_k).backward()
            for name, (a, b) in peft_lora_weights(peft_model)[0].items():
                torch.testing.assert_close(lora.A[name].grad[k], a.grad, rtol=1e-5, atol=1e-7)
                torch.testing.assert_close(lora.B[name].grad[k], b.grad, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------- training equals sequential
@pytest.mark.parametrize("mode,share_prefix", [("gather", True), ("loop", True), ("gather", False)])
def test_grouped_training_equals_sequential(tiny_model, items, trained, mode, share_prefix):
    model, tok = tiny_model
    if mode == "gather" and share_prefix:
        lora, results, seq = trained
    else:
        lora, results = train_grouped(model, [GroupedRun([items[i] for i in o], s) for o, s in zip(ORDERS, SEEDS)],
                                      tok.pad_token_id, CFG, mode=mode, share_prefix=share_prefix)
        seq = trained[2]
    for k, (weights, ref) in enumerate(seq):
        _compare(lora, k, weights, CFG.lr, PACKED_TOL if share_prefix else PADDED_TOL)
        assert results[k].steps == ref.steps == 6 and len(results[k].losses) == 6
        assert results[k].tokens == ref.tokens
        assert results[k].losses == pytest.approx(ref.losses, abs=2e-5)
        assert results[k].seconds > 0


def test_per_adapter_clipping(tiny_model, items):
    """Run 0's gradient is 40-90 times its max_grad_norm (0.01) at every step, so it is clipped
    hard; the others (lr 1e-3, limit 2.0) stay under their limit and are never clipped. Each run
    still equals its sequential twin. (A huge lr such as 0.5 makes run 0 itself chaotic: grouped
    and sequential then drift apart by ~1% from rounding alone; the optimiser's exactness under
    huge gradients is checked without training dynamics in test_grouped_adamw_and_clipping_match_torch.)"""
    model, tok = tiny_model
    cfgs = [TrainConfig(**{**vars(CFG), "lr": lr, "max_grad_norm": clip}) for lr, clip in ((1e-2, 0.01), (1e-3, 2.0),
                                                                                         (1e-3, 2.0))]
    runs = [GroupedRun([items[i] for i in o], s, c) for o, s, c in zip(ORDERS, SEEDS, cfgs)]
    lora, results = train_grouped(model, runs, tok.pad_token_id, CFG)
    assert min(results[0].grad_norms) > 20 * 0.01
    assert max(results[1].grad_norms) < 2.0 and max(results[2].grad_norms) < 2.0
    for k, (o, s, c) in enumerate(zip(ORDERS, SEEDS, cfgs)):
        weights, ref = _sequential(model, items, tok.pad_token_id, o, s, c)
        _compare(lora, k, weights, c.lr)
        assert results[k].losses == pytest.approx(ref.losses, abs=2e-5)


def test_grouped_adamw_and_clipping_match_torch():
    """GroupedAdamW + clip_per_adapter over K stacked adapters = torch.optim.AdamW + LambdaLR +
    clip_grad_norm_ on each adapter alone, for gradients of very different sizes (one adapter's
    ~1e4 times the others'), different lrs, weight decays, limits and lengths (adapter 2 stops
    after 3 steps and must not move afterwards)."""
    from llm_al.train_grouped import GroupedAdamW, clip_per_adapter, lr_factor

    K, steps = 3, [6, 6, 3]
    cfgs = [TrainConfig(lr=1e-2, weight_decay=0.1, max_grad_norm=1.0, schedule="linear", warmup_steps=1),
            TrainConfig(lr=3e-3, weight_decay=0.0, max_grad_norm=1.0),
            TrainConfig(lr=1e-2, weight_decay=0.01, max_grad_norm=0.5, schedule="linear", warmup_steps=2)]
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(K, 4, 8, generator=gen), torch.randn(K, 5, 4, generator=gen)]
    grads = [[torch.randn(p.shape, generator=gen) * torch.tensor([1e3, 1e-1, 1.0]).view(K, 1, 1) for p in init]
             for _ in range(6)]
    stacked = [p.clone().requires_grad_() for p in init]
    opt = GroupedAdamW(stacked, K)
    for s in range(6):
        for p, g in zip(stacked, grads[s]):
            p.grad = g.clone()
        clip_per_adapter(stacked, torch.tensor([c.max_grad_norm for c in cfgs], dtype=torch.float64))
        on = torch.tensor([s < n for n in steps])
        lr = torch.tensor([c.lr * lr_factor(c, s, n) if s < n else 0.0 for c, n in zip(cfgs, steps)],
                          dtype=torch.float64)
        opt.step(on, lr, torch.tensor([c.weight_decay for c in cfgs], dtype=torch.float64))
    for k, (c, n) in enumerate(zip(cfgs, steps)):
        params = [p[k].clone().requires_grad_() for p in init]
        ref = torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(ref, lambda s, c=c, n=n: lr_factor(c, s, n))
        for s in range(n):
            for p, g in zip(params, grads[s]):
                p.grad = g[k].clone()
            torch.nn.utils.clip_grad_norm_(params, c.max_grad_norm)
            ref.step()
            sched.step()
        for p, q in zip(params, stacked):
            torch.testing.assert_close(q[k].detach(), p.detach(), rtol=1e-6, atol=1e-7)


def test_runs_of_different_lengths_finish_independently(tiny_model, items):
    """Subsets of 3, 7 and 12 items (2, 4, 6 steps at 2 epochs), the last with 1 epoch (3 steps)
    and weight decay: every run equals its sequential twin, so a finished run's adapter stayed
    put (no momentum, no weight decay after its last step)."""
    model, tok = tiny_model
    subsets = [[5, 2, 9], [1, 3, 5, 7, 9, 11, 13], [23, 20, 17, 14, 11, 8, 6, 4, 2, 0, 12, 16]]
    cfgs = [CFG, TrainConfig(**{**vars(CFG), "weight_decay": 0.1}),
            TrainConfig(**{**vars(CFG), "epochs": 1, "weight_decay": 0.1})]
    seen: dict[int, list] = {0: [], 1: [], 2: []}
    lora, results = train_grouped(model, [GroupedRun([items[i] for i in o], s, c)
                                          for o, s, c in zip(subsets, SEEDS, cfgs)],
                                  tok.pad_token_id, CFG, on_batch=lambda k, b: seen[k].append(b))
    assert [r.steps for r in results] == [2, 4, 3] == [len(seen[k]) for k in range(3)]
    assert seen[0] == [[0, 1, 2]] * 2 and seen[2] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    for k, (o, s, c) in enumerate(zip(subsets, SEEDS, cfgs)):
        weights, ref = _sequential(model, items, tok.pad_token_id, o, s, c)
        _compare(lora, k, weights, c.lr)
        assert results[k].losses == pytest.approx(ref.losses, abs=2e-5)
        assert results[k].tokens == ref.tokens


# ---------------------------------------------------------------------------- generation and export
@pytest.fixture(scope="module")
def random_lora(tiny_model):
    """Three adapters with large random B (distinct per run), so that their greedy outputs differ."""
    model, _ = tiny_model
    lora = init_grouped(model, CFG, SEEDS)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name in lora.names:
            lora.B[name].copy_(torch.randn(lora.B[name].shape, generator=gen) * 0.5)
    return lora


@pytest.mark.parametrize("mode", ["gather", "loop"])
def test_grouped_generation_equals_per_adapter_peft(tiny_model, random_lora, trained, mode):
    from llm_al.evaluate import generate
    from llm_al.features.formatting import prompt_text

    model, tok = tiny_model
    examples = records_to_pool(pool_records(24)).examples[:7]
    prompts = [prompt_text(tok, ex.prompt_messages) for ex in examples]
    for lora in (random_lora, trained[0]):
        got = grouped_generate(model, tok, lora, prompts, max_new_tokens=8, batch_size=3, mode=mode)
        want = []
        for k in range(lora.K):
            with peft_view(model, lora, k) as peft_model:
                want.append(generate(peft_model, tok, prompts, 8, 3, progress_bar=False))
        assert got == want
    # per-run prompt lists (different lengths) give each run its own prompts' continuations
    lora = random_lora
    want = grouped_generate(model, tok, lora, prompts, 8, 3, mode=mode)
    assert len({tuple(w) for w in want}) == 3 and all(any(w) for w in want)   # the adapters differ: routing matters
    sub = grouped_generate(model, tok, lora, [prompts[:2], prompts[3:], prompts[1:4]], 8, 3, mode=mode)
    assert sub == [want[0][:2], want[1][3:], want[2][1:4]]


def test_generation_keeps_finished_rows_routed(tiny_model, random_lora, trained):
    """A group where run 0's rows stop at once (a trained adapter that answers with the end-of-turn
    token) and run 1's rows go on to max_new_tokens: run 0's rows leave the batch after the first
    step (llm_al/decode.py), run 1's rows keep their adapter, and both runs equal peft alone."""
    from dataclasses import replace

    from llm_al.evaluate import generate
    from llm_al.features.formatting import prompt_text

    model, tok = tiny_model
    done, going = trained[0], random_lora
    mixed = replace(done, seeds=[done.seeds[0], going.seeds[1]],
                    A={n: torch.stack([done.A[n][0], going.A[n][1]]) for n in done.names},
                    B={n: torch.stack([done.B[n][0], going.B[n][1]]) for n in done.names})
    prompts = [prompt_text(tok, ex.prompt_messages) for ex in records_to_pool(pool_records(5)).examples]
    rows_seen = []
    hook = model.get_input_embeddings().register_forward_hook(lambda m, i, o: rows_seen.append(i[0].shape[0]))
    try:
        got = grouped_generate(model, tok, mixed, prompts, max_new_tokens=6, batch_size=5)
    finally:
        hook.remove()
    assert rows_seen == [10, 5, 5, 5, 5, 5]            # prefill of all 10 rows, then run 1's 5 alone
    want = []
    for k in range(2):
        with peft_view(model, mixed, k) as peft_model:
            want.append(generate(peft_model, tok, prompts, 6, 5, progress_bar=False))
    assert got == want
    assert all(w == "" for w in got[0]) and all(got[1])


def test_exported_adapter_loads_with_peft_and_matches(tiny_model, items, trained, tmp_path):
    from peft import PeftModel

    model, tok = tiny_model
    lora = trained[0]
    ids = torch.tensor([items[0].prompt_ids + items[0].response_ids])        # (1, T)
    for k in (0, 2):
        path = export_adapter(model, lora, k, tmp_path / f"run{k}")
        assert (path / "adapter_config.json").exists() and (path / "adapter_model.safetensors").exists()
        with attached(model, lora) as router, router.rows([k]), torch.no_grad():
            want = model(input_ids=ids).logits
        reloaded = PeftModel.from_pretrained(model, str(path))
        with torch.no_grad():
            got = reloaded(input_ids=ids).logits
        detach_lora(reloaded)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------- the base model
def test_base_model_unchanged(tiny_model, items):
    model, tok = tiny_model
    before = _state(model)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    ids = torch.tensor([items[1].prompt_ids + items[1].response_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    lora, _ = train_grouped(model, [GroupedRun(items[:5], 1), GroupedRun(items[5:8], 2)], tok.pad_token_id, CFG)
    grouped_generate(model, tok, lora, ["Hello"], 4, 2)
    after = _state(model)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert flags == {n: p.requires_grad for n, p in model.named_parameters()}
    assert not any(isinstance(m, GroupedLoraLinear) or "lora" in n for n, m in model.named_modules())
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, logits)


def test_a_failing_step_still_restores_the_model(tiny_model, items):
    model, tok = tiny_model

    def boom(k, batch):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        train_grouped(model, [GroupedRun(items[:5], 1)], tok.pad_token_id, CFG, on_batch=boom)
    assert not any(isinstance(m, GroupedLoraLinear) for m in model.modules())


def test_rows_must_match_the_router(tiny_model, items):
    model, tok = tiny_model
    lora = init_grouped(model, CFG, [1, 2])
    ids = torch.tensor([items[0].prompt_ids] * 3)
    with attached(model, lora) as router, router.rows([0, 1]), pytest.raises(RuntimeError, match="3 rows"):
        model(input_ids=ids)
    with attached(model, lora) as router, pytest.raises(ValueError, match="out of range"):
        with router.rows([0, 2]):
            pass


def test_dropout_is_per_run_seeded(tiny_model, items):
    """lora_dropout > 0: reproducible for the same seeds, different from no dropout (equivalent to
    sequential runs in distribution only, so no comparison with train_lora here)."""
    model, tok = tiny_model
    cfg = TrainConfig(**{**vars(CFG), "lora_dropout": 0.3})
    runs = [GroupedRun(items[:6], 1), GroupedRun(items[6:12], 2)]
    a, ra = train_grouped(model, runs, tok.pad_token_id, cfg)
    b, rb = train_grouped(model, runs, tok.pad_token_id, cfg)
    c, rc = train_grouped(model, runs, tok.pad_token_id, CFG)
    assert ra[0].losses == rb[0].losses and ra[1].losses == rb[1].losses
    name = a.names[0]
    assert torch.equal(a.A[name], b.A[name])
    assert not torch.equal(a.A[name], c.A[name])


# ---------------------------------------------------------------------------- the shared prefix, packed
def test_packed_step_with_shared_prefix_gives_the_padded_step_gradients(tiny_model, items):
    """One step with the system prefix run once per run (its KV reused, gradient through it) and the
    suffixes packed with block-diagonal masks = the same step with every example whole and padded:
    the same per-run losses and every adapter's gradient to float rounding."""
    from llm_al.train_grouped import _packed_backward, _padded_backward

    model, tok = tiny_model
    sys_items = tokenize(tok, records_to_pool(pool_records(24), system_prompt="Translate English to French.")
                         .examples, 64)
    batch = [(k, [sys_items[i] for i in o[:4]]) for k, o in enumerate(ORDERS)]
    grads, losses = [], []
    for backward in (_padded_backward, _packed_backward):
        lora = init_grouped(model, CFG, SEEDS)
        with torch.no_grad():
            gen = torch.Generator().manual_seed(0)
            for name in lora.names:
                lora.B[name].copy_(torch.randn(lora.B[name].shape, generator=gen) * 0.05)
        with attached(model, lora) as router:
            loss, tokens = backward(model, router, batch, tok.pad_token_id, 0)
        grads.append({n: (lora.A[n].grad.clone(), lora.B[n].grad.clone()) for n in lora.names})
        losses.append((loss, tokens))
    assert losses[0][1] == losses[1][1]
    assert losses[0][0] == pytest.approx(losses[1][0], rel=1e-5)
    from llm_al.features.formatting import shared_prefix_length
    assert shared_prefix_length([t for _, ts in batch for t in ts]) > 5     # the system turn is shared
    for n in grads[0]:
        for want, got in zip(grads[0][n], grads[1][n]):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
