"""MC-dropout BALD/disagreement, expected gradient length and query-by-committee: the per-token math
on hand-made distributions, the probes on the tiny Llama (seeded, cached, leaving the model as they
found it), per-example gradient norms against a batch-size-1 loop, and the strategies."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import pool_records, synthetic_features
from llm_al.data.pool import records_to_pool
from llm_al.errors import FeatureUnavailableError
from llm_al.features.formatting import tokenize
from llm_al.strategies.mc import (
    committee_probe,
    dropout_keep,
    position_hash,
    gradient_length_probe,
    lora_grad_norms,
    mc_dropout_probe,
    mc_dropout_stats,
    mc_token_scores,
)
from llm_al.features.probes import ProbeContext, run_probes
from llm_al.config import ProbeConfig
from llm_al.strategies.base import run_strategy
from llm_al.train import attach_lora, detach_lora, train_lora
from llm_al.config import TrainConfig


@pytest.fixture(scope="module")
def pool():
    return records_to_pool(pool_records(8), system_prompt="Translate English to French.")


def _logits(model, tok, examples):
    items = tokenize(tok, examples, 64)
    ids = torch.tensor([items[0].prompt_ids + items[0].response_ids])
    with torch.no_grad():
        return model(input_ids=ids).logits.clone()


def _ctx(pool, model, tok, **kw):
    probe_kw = {k: kw.pop(k) for k in ("mc_passes", "mc_dropout", "seed", "committee_size") if k in kw}
    return ProbeContext(examples=pool.examples, model=model, tokenizer=tok, probe_cfg=ProbeConfig(**probe_kw), **kw)


# ---------------------------------------------------------------------------- per-token math
def test_bald_and_kl_are_zero_for_identical_passes_and_log2_for_opposite_ones():
    same = torch.log(torch.tensor([[0.2, 0.3, 0.5]])).expand(4, 1, 3)          # K=4 identical passes
    bald, kl = mc_token_scores(same)
    assert abs(bald.item()) < 1e-6 and abs(kl.item()) < 1e-6
    opposite = torch.log(torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]]))           # K=2, one-hot each way
    bald, kl = mc_token_scores(opposite)
    assert bald.item() == pytest.approx(math.log(2), rel=1e-6)
    assert kl.item() == pytest.approx(math.log(2), rel=1e-6)


def test_bald_matches_a_hand_computation_and_equals_kl_to_the_mean():
    p = np.array([[0.5, 0.5], [0.9, 0.1]])                                     # K=2 passes, V=2
    m = p.mean(0)
    h = lambda q: -(q * np.log(q)).sum(-1)                                     # noqa: E731
    want_bald = h(m) - h(p).mean()
    want_kl = np.mean([(q * np.log(q / m)).sum() for q in p])
    bald, kl = mc_token_scores(torch.log(torch.tensor(p, dtype=torch.float32))[:, None])
    assert bald.item() == pytest.approx(want_bald, rel=1e-5) and want_bald > 0
    assert kl.item() == pytest.approx(want_kl, rel=1e-5)
    logp = torch.log_softmax(torch.randn(5, 7, 11, generator=torch.Generator().manual_seed(0)), -1)
    bald, kl = mc_token_scores(logp)                                           # (M,) each
    assert bald.shape == (7,) and (bald > 0).all()
    torch.testing.assert_close(bald, kl, rtol=1e-4, atol=1e-6)                # generalised JS identity


def test_dropout_mask_rate_independence_and_batch_invariance():
    seeds = torch.tensor([11, 12, 13], dtype=torch.int64)
    a = dropout_keep(seeds, 0, 3, position_hash(50, 64), 0.25)
    assert a.shape == (3, 50, 64) and a.dtype == torch.bool
    assert 1 - a.float().mean().item() == pytest.approx(0.25, abs=0.02)
    torch.testing.assert_close(a, dropout_keep(seeds, 0, 3, position_hash(50, 64), 0.25))
    alone = dropout_keep(seeds[1:2], 0, 3, position_hash(20, 64), 0.25)      # other batch, shorter padding
    torch.testing.assert_close(alone[0], a[1, :20])
    independent = 0.75**2 + 0.25**2                                           # P(two independent masks agree)
    for other in (a[1], dropout_keep(seeds, 1, 3, position_hash(50, 64), 0.25)[0],
                  dropout_keep(seeds, 0, 4, position_hash(50, 64), 0.25)[0]):   # row, pass, layer
        assert (a[0] == other).float().mean().item() == pytest.approx(independent, abs=0.03)


# ---------------------------------------------------------------------------- mc_dropout probe
def test_mc_dropout_probe_is_seeded_positive_and_leaves_the_model_as_it_was(tiny_model, pool):
    model, tok = tiny_model
    before = _logits(model, tok, pool.examples)
    scores, cost = mc_dropout_probe(_ctx(pool, model, tok, mc_passes=4, seed=1))
    again, _ = mc_dropout_probe(_ctx(pool, model, tok, mc_passes=4, seed=1))
    other, _ = mc_dropout_probe(_ctx(pool, model, tok, mc_passes=4, seed=2))
    assert scores["bald"].shape == (8,) and np.all(np.isfinite(scores["bald"])) and np.all(scores["bald"] > 0)
    np.testing.assert_array_equal(scores["bald"], again["bald"])
    np.testing.assert_array_equal(scores["mc_disagreement"], again["mc_disagreement"])
    assert not np.array_equal(scores["bald"], other["bald"])
    dis = scores["mc_disagreement"]                       # std over passes of the response NLL
    assert np.all(np.isfinite(dis)) and np.all(dis > 0) and not np.allclose(dis, scores["bald"], rtol=0.1)
    assert cost["forward_passes"] >= 4 and cost["tokens_scored"] > 0 and cost["backward_passes"] == 0
    assert not any(m.training for m in model.modules())
    assert all(not m._forward_pre_hooks for m in model.modules())
    torch.testing.assert_close(_logits(model, tok, pool.examples), before, rtol=0, atol=0)
    more, _ = mc_dropout_probe(_ctx(pool, model, tok, mc_passes=4, seed=1, mc_dropout=0.3))
    assert more["bald"].mean() > scores["bald"].mean()                         # more dropout, more spread


def test_mc_dropout_restores_train_mode(tiny_model, pool):
    model, tok = tiny_model
    model.train()
    try:
        mc_dropout_probe(_ctx(pool, model, tok, mc_passes=2))
        assert all(m.training for m in model.modules())
    finally:
        model.eval()


def test_mc_scores_of_an_example_do_not_depend_on_its_batch(tiny_model, pool):
    model, tok = tiny_model
    items = tokenize(tok, pool.examples, 64)
    seeds = np.arange(100, 108, dtype=np.int64)
    together, _ = mc_dropout_stats(model, items, seeds, tok.pad_token_id, 3, 0.2, max_tokens=4096)
    alone, _ = mc_dropout_stats(model, items[5:6], seeds[5:6], tok.pad_token_id, 3, 0.2)
    np.testing.assert_allclose(alone[0], together[5], rtol=1e-4, atol=1e-7)


def test_mc_dropout_refuses_zero_dropout_and_identical_passes(tiny_model, pool, monkeypatch):
    model, tok = tiny_model
    with pytest.raises(FeatureUnavailableError, match="mc_dropout is 0"):
        mc_dropout_probe(_ctx(pool, model, tok, mc_dropout=0.0))
    monkeypatch.setattr("llm_al.strategies.mc.dropout_keep",
                        lambda seeds, k, layer, table, p: torch.ones((len(seeds), *table.shape), dtype=torch.bool))
    with pytest.raises(FeatureUnavailableError, match="identical"):
        mc_dropout_probe(_ctx(pool, model, tok, mc_passes=2))
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_mc_dropout_caches_per_example(tiny_model, pool, tmp_path):
    model, tok = tiny_model
    first, cost1 = mc_dropout_probe(_ctx(pool, model, tok, mc_passes=2, cache_dir=tmp_path, model_key="tiny"))
    again, cost2 = mc_dropout_probe(_ctx(pool, model, tok, mc_passes=2, cache_dir=tmp_path, model_key="tiny"))
    assert cost1["examples_scored"] == 8 and cost2["examples_scored"] == 0 and "forward_passes" in cost2
    np.testing.assert_array_equal(first["bald"], again["bald"])
    _, cost3 = mc_dropout_probe(_ctx(pool, model, tok, mc_passes=3, cache_dir=tmp_path, model_key="tiny"))
    assert cost3["examples_scored"] == 8                                       # K is part of the key


def test_probes_refuse_an_unlabelled_pool(tiny_model):
    model, tok = tiny_model
    unlabelled = records_to_pool([{"prompt": "x"}, {"prompt": "yy"}], path="mem.jsonl", labelled=False)
    for feature in ("bald", "grad_norm", "committee"):
        with pytest.raises(FeatureUnavailableError, match="reference responses"):
            run_probes({feature}, ProbeContext(examples=unlabelled.examples, model=model, tokenizer=tok))


# ---------------------------------------------------------------------------- gradient length
def _batch1_grad_norms(peft_model, items, pad_id):
    from llm_al.features.formatting import pack, response_logits

    out, a_norms = [], []
    params = [(n, p) for n, p in peft_model.named_parameters() if "lora_" in n]
    for it in items:
        ids, mask, rows, pos, targets = pack([it], pad_id)
        peft_model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(response_logits(peft_model, ids, mask, rows, pos), targets).backward()
        out.append(torch.sqrt(sum(torch.linalg.norm(p.grad) ** 2 for _, p in params)).item())
        a_norms.append(sum(torch.linalg.norm(p.grad).item() for n, p in params if "lora_A" in n))
    peft_model.zero_grad(set_to_none=True)
    return np.array(out), np.array(a_norms)


def test_grad_norms_equal_a_batch_of_one_loop(tiny_model, pool):
    model, tok = tiny_model
    items = tokenize(tok, pool.examples, 64)
    peft_model = attach_lora(model, TrainConfig(lora_r=4), 0)
    try:
        fresh, cost = lora_grad_norms(peft_model, items, tok.pad_token_id)
        ref, a_norms = _batch1_grad_norms(peft_model, items, tok.pad_token_id)
        np.testing.assert_allclose(fresh, ref, rtol=1e-4)
        assert cost["backward_passes"] == 1 and np.all(fresh > 0)
        assert np.all(a_norms == 0)                            # fresh adapter, B = 0: no gradient reaches A
        with torch.no_grad():                                  # B != 0: the A gradients count too
            for n, p in peft_model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(n)))
        trained, _ = lora_grad_norms(peft_model, items, tok.pad_token_id, max_tokens=120)   # several batches
        ref, a_norms = _batch1_grad_norms(peft_model, items, tok.pad_token_id)
        np.testing.assert_allclose(trained, ref, rtol=1e-4)
        assert np.all(a_norms > 0)
        assert not np.allclose(trained, fresh)
        assert all(p.grad is None for p in peft_model.parameters())
    finally:
        detach_lora(peft_model)


def test_gradient_length_probe_attaches_and_removes_a_fresh_adapter(tiny_model, pool, tmp_path):
    model, tok = tiny_model
    before = _logits(model, tok, pool.examples)
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    ctx = _ctx(pool, model, tok, train_cfg=TrainConfig(lora_r=4), cache_dir=tmp_path, model_key="tiny")
    scores, cost = gradient_length_probe(ctx)
    assert scores["grad_norm"].shape == (8,) and np.all(scores["grad_norm"] > 0)
    assert cost["backward_passes"] >= 1 and cost["adapters_trained"] == 0
    assert not hasattr(model, "peft_config") or not model.peft_config
    assert {n for n, _ in model.named_parameters()} == set(weights)
    for n, p in model.named_parameters():
        assert torch.equal(p, weights[n]) and p.requires_grad == flags[n], n
    torch.testing.assert_close(_logits(model, tok, pool.examples), before, rtol=0, atol=0)
    again, cost2 = gradient_length_probe(ctx)                          # seeded adapter, and cached
    np.testing.assert_array_equal(scores["grad_norm"], again["grad_norm"])
    assert cost2["examples_scored"] == 0


# ---------------------------------------------------------------------------- committee
def test_committee_refuses_one_shot_selection(tiny_model, pool):
    model, tok = tiny_model
    for labelled in (None, pool.examples[:1]):
        with pytest.raises(FeatureUnavailableError, match="qbc needs a labelled set"):
            committee_probe(_ctx(pool, model, tok, labelled=labelled))


def test_committee_in_a_loop_round_leaves_the_round_adapter_alone(tiny_model, pool):
    model, tok = tiny_model
    cfg = TrainConfig(lora_r=4, batch_size=2, lr=5e-3)
    round_model, _ = train_lora(model, tokenize(tok, pool.examples[:4], 64), tok.pad_token_id, cfg, 0,
                                progress_bar=False)
    try:
        before = _logits(round_model, tok, pool.examples)
        state = {n: p.detach().clone() for n, p in round_model.named_parameters()}
        ctx = _ctx(pool, round_model, tok, labelled=pool.examples[:4], train_cfg=cfg, committee_size=2, seed=5)
        scores, cost = committee_probe(ctx)
        again, _ = committee_probe(ctx)
        s = scores["committee"]
        assert s.shape == (8,) and np.all(np.isfinite(s)) and np.all(s >= 0) and s.max() > 0
        np.testing.assert_allclose(s, again["committee"], rtol=1e-5)
        assert cost["adapters_trained"] == 2 and cost["backward_passes"] == 2 * 2
        assert list(round_model.peft_config) == ["default"] and round_model.active_adapter == "default"
        assert {n for n, _ in round_model.named_parameters()} == set(state)
        for n, p in round_model.named_parameters():
            assert torch.equal(p, state[n]), n
        torch.testing.assert_close(_logits(round_model, tok, pool.examples), before, rtol=0, atol=0)
    finally:
        detach_lora(round_model)


# ---------------------------------------------------------------------------- end to end, strategies
def test_compute_features_with_bald_end_to_end(tiny_model_dir, pool, cache_dir):
    from llm_al.config import ModelConfig
    from llm_al.run.pipeline import compute_features

    model_cfg = ModelConfig(name=str(tiny_model_dir), device="cpu", max_length=64)
    f = compute_features(pool, {"bald"}, model_cfg, progress=False)
    bald = f.require("bald")
    assert bald.shape == (8,) and np.all(bald > 0)
    assert f.cost["probe_mc_dropout"]["examples_scored"] == 8
    assert any(cache_dir.rglob("mc2-v1-*/*.npz"))
    again = compute_features(pool, {"bald"}, model_cfg, progress=False)
    np.testing.assert_array_equal(again.require("bald"), bald)
    assert again.cost["probe_mc_dropout"]["examples_scored"] == 0
    sel = run_strategy("bald", f, 3, np.random.default_rng(0))
    np.testing.assert_array_equal(np.sort(sel.indices), np.sort(np.argsort(-bald)[:3]))


@pytest.mark.parametrize("name,score", [("bald", "bald"), ("mc_disagreement", "mc_disagreement"),
                                        ("egl", "grad_norm"), ("qbc", "committee")])
def test_strategies_take_the_highest_scores(name, score):
    f = synthetic_features(10)
    f.scores[score] = np.array([0.1, 5.0, 0.2, 0.3, 4.0, 0.0, 0.5, 3.0, 0.4, 0.6], dtype=np.float32)
    sel = run_strategy(name, f, 3, np.random.default_rng(0))
    assert sel.indices.tolist() == [1, 4, 7]
    del f.scores[score]
    with pytest.raises(FeatureUnavailableError):
        run_strategy(name, f, 3, np.random.default_rng(0))


def test_loop_rescore_takes_grad_norms_under_the_round_adapter(tiny_model, pool):
    from llm_al.config import ExperimentConfig
    from llm_al.features.engine import build_features
    from llm_al.run.loop import rescore

    model, tok = tiny_model
    cfg = ExperimentConfig()
    round_model, _ = train_lora(model, tokenize(tok, pool.examples[:4], 64), tok.pad_token_id, cfg.train, 0,
                                progress_bar=False)
    try:
        remaining = np.arange(4, 8)
        sub = rescore(round_model, tok, build_features(pool.examples, pool.ids), pool.examples, remaining,
                      {"grad_norm"}, cfg, [0, 1, 2, 3])
        items = tokenize(tok, [pool.examples[i] for i in remaining], cfg.model.max_length)
        direct, _ = lora_grad_norms(round_model, items, tok.pad_token_id)
        np.testing.assert_allclose(sub.require("grad_norm"), direct, rtol=1e-5)
        assert list(round_model.peft_config) == ["default"]
    finally:
        detach_lora(round_model)


def test_mc_dropout_under_a_fresh_adapter_equals_the_base_model(tiny_model, pool):
    """A peft-wrapped Linear gets dropout once (not also its base_layer/lora_A), with the same
    masks as the bare layer; B = 0, so the scores match the base model's."""
    model, tok = tiny_model
    items = tokenize(tok, pool.examples[:4], 64)
    seeds = np.arange(4, dtype=np.int64)
    base, _ = mc_dropout_stats(model, items, seeds, tok.pad_token_id, 2, 0.2)
    peft_model = attach_lora(model, TrainConfig(lora_r=4), 0)
    try:
        wrapped, _ = mc_dropout_stats(peft_model, items, seeds, tok.pad_token_id, 2, 0.2)
    finally:
        detach_lora(peft_model)
    np.testing.assert_allclose(wrapped, base, rtol=1e-5, atol=1e-7)
