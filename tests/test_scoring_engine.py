"""The scoring engine (shared prefix computed once, suffixes packed with no padding, LM head at
response positions only) against a plain per-example computation, its packing on hand-made items,
and the per-token Min-K%++ math on distributions whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import pool_records
from llm_al.data.pool import records_to_pool
from llm_al.features.engine import (STAT_COLUMNS, _min_k_means, takes_block_masks, response_token_stats, token_scores)
from llm_al.types import MIN_K_FRACTIONS
from llm_al.features.formatting import Tokenized, pack_suffixes, plan_rows, shared_prefix_length, tokenize

K = len(MIN_K_FRACTIONS)


def reference_stats(model, items) -> np.ndarray:
    """STAT_COLUMNS per item, one unpadded full forward per item, the statistics in float64 numpy."""
    out = []
    for t in items:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([t.prompt_ids + t.response_ids])).logits[0].double().numpy()
        P, R = len(t.prompt_ids), len(t.response_ids)
        x = logits[P - 1:P + R - 1]                                           # (R, V) predicting the response
        logp = x - x.max(1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(1, keepdims=True))
        p = np.exp(logp)
        lp = logp[np.arange(R), t.response_ids]
        mu = (p * logp).sum(1)
        sigma = np.sqrt((p * logp**2).sum(1) - mu**2)
        z = (lp - mu) / sigma
        lows = [np.sort(v)[:max(1, math.ceil(k * R))].mean() for v in (lp, z) for k in MIN_K_FRACTIONS]
        n = R - t.tail                                                       # the plain response's tokens
        out.append([-lp.sum(), -mu.sum(), R, *lows, -lp[:n].sum(), n])
    return np.array(out)


@pytest.fixture(scope="module")
def system_items(tiny_model):
    _, tok = tiny_model
    pool = records_to_pool(pool_records(), system_prompt="Translate English to French.")
    return tokenize(tok, pool.examples, 128)


# ---------------------------------------------------------------------------- per-token math
def test_min_k_plus_score_of_a_two_level_distribution_is_plus_minus_one():
    # p = (1/2, 1/4, 1/4): log p takes log(1/2) and log(1/4) with probability 1/2 each, so the
    # standardised log-prob of any token is exactly +1 (token 0) or -1 (tokens 1, 2).
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25]] * 3))
    lp, ent, z = token_scores(logits, torch.tensor([0, 1, 2]))
    np.testing.assert_allclose(lp.numpy(), np.log([0.5, 0.25, 0.25]), atol=1e-6)
    np.testing.assert_allclose(ent.numpy(), [1.5 * math.log(2)] * 3, atol=1e-6)
    np.testing.assert_allclose(z.numpy(), [1.0, -1.0, -1.0], atol=1e-5)


def test_min_k_plus_score_matches_the_formula_on_a_skewed_distribution():
    p = np.array([0.7, 0.2, 0.05, 0.05])
    mu = (p * np.log(p)).sum()                     # -0.8714...
    sigma = np.sqrt((p * np.log(p) ** 2).sum() - mu**2)
    _, _, z = token_scores(torch.log(torch.tensor(np.stack([p, p]), dtype=torch.float32)), torch.tensor([1, 3]))
    np.testing.assert_allclose(z.numpy(), (np.log(p[[1, 3]]) - mu) / sigma, rtol=1e-5)
    assert z[0] > z[1]                             # the rarer token scores lower


def test_min_k_means_of_rows_with_known_lowest_values():
    values = torch.tensor([-3.0, -1.0, 0.0, 2.0, 5.0, 7.0, -4.0], dtype=torch.float64)
    rows = torch.tensor([0, 0, 0, 0, 0, 1, 1])
    got = _min_k_means(values, rows, torch.bincount(rows)).numpy()
    # row 0 (5 values): k=.1, .2 -> lowest 1; k=.3 -> lowest 2; k=.5 -> lowest 3. Row 1 (2 values): 1, 1, 1, 1.
    np.testing.assert_allclose(got, [[-3, -3, -2, -4 / 3], [-4, -4, -4, -4]])


# ---------------------------------------------------------------------------- packing
def test_shared_prefix_stops_before_each_prompts_last_token():
    items = [Tokenized([1, 2, 3, 4], [9], False), Tokenized([1, 2, 3, 5, 6], [9], False)]
    assert shared_prefix_length(items) == 3
    assert shared_prefix_length(items[:1]) == 3                   # one item: all but its last prompt token
    assert shared_prefix_length(items + [Tokenized([1, 2], [9], False)]) == 1
    assert shared_prefix_length(items + [Tokenized([7, 2, 3, 4], [9], False)]) == 0


def test_plan_rows_packs_within_capacity_and_covers_everything():
    lengths = [90, 10, 60, 35, 5, 300, 40]
    rows = plan_rows(lengths, 100)
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in r) <= 100 or len(r) == 1 for r in rows)
    assert [5] in rows                                             # longer than a row: alone
    assert len(rows) == 4                                          # 300 | 90+10 | 60+40 | 35+5
    assert plan_rows(lengths, 0) == [[i] for i in sorted(range(7), key=lambda i: -lengths[i])]


def test_pack_suffixes_positions_targets_and_mask():
    items = [Tokenized([1, 2, 3, 4], [5, 6], False), Tokenized([1, 2, 7], [8], False)]
    b = pack_suffixes(items, [[0, 1]], prefix_len=2, pad_id=0)
    assert b.ids.tolist() == [[3, 4, 5, 6, 7, 8]]
    assert b.position_ids.tolist() == [[2, 3, 4, 5, 2, 3]]       # restart after the prefix
    assert b.targets.tolist() == [5, 6, 8] and b.pos.tolist() == [1, 2, 4] and b.member.tolist() == [0, 0, 1]
    mask = b.attention_mask(four_d=True)[0, 0]                    # (T, P + T)
    assert mask[4].tolist() == [True, True, False, False, False, False, True, False]   # item 1 sees prefix + itself
    assert mask[3].tolist() == [True, True, True, True, True, True, False, False]
    additive = b.attention_mask(four_d=True, dtype=torch.float32)[0, 0]
    assert additive[4, 2].item() == torch.finfo(torch.float32).min and additive[4, 0].item() == 0
    padded = pack_suffixes(items, [[0], [1]], prefix_len=2, pad_id=0)
    assert padded.attention_mask(four_d=False).tolist() == [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]


def test_sliding_window_shorter_than_a_row_gets_plain_rows(tiny_model):
    model, _ = tiny_model
    assert takes_block_masks(model, 256)
    model.config.sliding_window = 64
    try:
        assert not takes_block_masks(model, 256)
        assert takes_block_masks(model, 60)
    finally:
        model.config.sliding_window = None


# ---------------------------------------------------------------------------- the engine vs a plain loop
def test_shared_system_prompt_matches_per_example_forward(tiny_model, system_items):
    model, tok = tiny_model
    assert shared_prefix_length(system_items) >= 8                # the system turn is shared
    ref = reference_stats(model, system_items)
    for kwargs in ({}, {"row_tokens": 40, "max_tokens": 80, "max_batch": 2}, {"share_prefix": False}):
        ours = response_token_stats(model, system_items, tok.pad_token_id, **kwargs)
        assert ours.shape == (len(system_items), len(STAT_COLUMNS))
        np.testing.assert_allclose(ours, ref, atol=2e-5, rtol=0, err_msg=str(kwargs))


def test_no_shared_prefix_and_a_single_item(tiny_model, system_items):
    model, tok = tiny_model
    # first tokens differ, so nothing is shared
    items = [Tokenized([5 + i] + t.prompt_ids[-4:], t.response_ids, False) for i, t in enumerate(system_items[:6])]
    assert shared_prefix_length(items) == 0
    np.testing.assert_allclose(response_token_stats(model, items, tok.pad_token_id), reference_stats(model, items),
                               atol=2e-5, rtol=0)
    one = system_items[3:4]
    np.testing.assert_allclose(response_token_stats(model, one, tok.pad_token_id), reference_stats(model, one),
                               atol=2e-5, rtol=0)


def test_plain_padded_rows_and_eager_attention_give_the_same_answer(tiny_model, tiny_model_dir, system_items,
                                                                    monkeypatch):
    model, tok = tiny_model
    ref = reference_stats(model, system_items)
    monkeypatch.setattr("llm_al.features.engine.takes_block_masks", lambda *a: False)   # e.g. flash-attention
    np.testing.assert_allclose(response_token_stats(model, system_items, tok.pad_token_id, max_batch=5), ref,
                               atol=2e-5, rtol=0)
    monkeypatch.undo()
    from transformers import AutoModelForCausalLM

    eager = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), attn_implementation="eager").eval()
    np.testing.assert_allclose(response_token_stats(eager, system_items, tok.pad_token_id), ref, atol=2e-5, rtol=0)


def test_gpt2_scorer_model_is_packed_correctly(system_items):
    """A GPT-2 (learned absolute positions, the usual Superfiltering scorer) through the same engine."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=700, n_positions=256, n_embd=32, n_layer=2, n_head=4)).eval()
    np.testing.assert_allclose(response_token_stats(gpt2, system_items, 0), reference_stats(gpt2, system_items),
                               atol=2e-5, rtol=0)


# ---------------------------------------------------------------------------- the feature and its strategy
def test_build_features_splits_min_k_and_min_k_plus_columns():
    from llm_al.features.engine import build_features

    stats = np.array([[6.0, 3.0, 3, *range(1, K + 1), *range(10, 10 + K), 5.0, 2]], dtype=np.float64)
    assert stats.shape[1] == len(STAT_COLUMNS)
    f = build_features(records_to_pool(pool_records(1)).examples, ["a"], loss_stats=stats)
    assert f.loss.tolist() == [2.0] and f.entropy.tolist() == [1.0] and f.plain_loss.tolist() == [2.5]
    assert f.min_k.tolist() == [list(range(1, K + 1))] and f.min_k_plus.tolist() == [list(range(10, 10 + K))]


def test_min_k_plus_strategy_prefers_unfamiliar_or_familiar():
    from conftest import synthetic_features
    from llm_al.errors import ConfigError, FeatureUnavailableError
    from llm_al.strategies.base import run_strategy

    f = synthetic_features(6)
    f.min_k_plus = np.repeat(-np.arange(6, dtype=np.float32)[:, None], K, axis=1)      # row i: -i
    f.min_k = -f.min_k_plus                                                            # must not be what is read
    unfamiliar = run_strategy("min_k_plus", f, 2, np.random.default_rng(0))
    familiar = run_strategy("min_k_plus", f, 2, np.random.default_rng(0), prefer="familiar", k=0.5)
    assert sorted(unfamiliar.indices.tolist()) == [4, 5] and sorted(familiar.indices.tolist()) == [0, 1]
    with pytest.raises(ConfigError, match="k=0.25 is invalid; must be one of"):
        run_strategy("min_k_plus", f, 2, np.random.default_rng(0), k=0.25)
    f.min_k_plus = None
    with pytest.raises(FeatureUnavailableError, match="a model"):
        run_strategy("min_k_plus", f, 2, np.random.default_rng(0))


def test_blocked_token_scores_equal_one_call_bit_for_bit():
    """On CPU the scoring pass runs token_scores over blocks of CPU_SCORE_ROWS rows (cache-sized):
    the blocks must not change a single bit of the per-token scores."""
    from llm_al.features.engine import CPU_SCORE_ROWS, token_scores_blocked

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(10 * CPU_SCORE_ROWS + 3, 5000, generator=gen) * 4      # a ragged last block
    targets = torch.randint(0, 5000, (len(logits),), generator=gen)
    for whole, blocked in zip(token_scores(logits.clone(), targets), token_scores_blocked(logits.clone(), targets)):
        assert torch.equal(whole, blocked)
