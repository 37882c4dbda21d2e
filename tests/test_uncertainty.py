"""Uncertainty strategies on hand-made cases, and the token statistics behind them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import pool_records, synthetic_features
from llm_al.data.pool import records_to_pool
from llm_al.errors import ConfigError, FeatureUnavailableError
from llm_al.features.engine import direct_items, response_token_stats
from llm_al.types import Features, MIN_K_FRACTIONS
from llm_al.features.formatting import tokenize
from llm_al.strategies.base import run_strategy


def test_entropy_picks_the_highest():
    f = synthetic_features(10)
    f.entropy = np.arange(10, dtype=np.float32)
    assert sorted(run_strategy("entropy", f, 3, np.random.default_rng(0)).indices.tolist()) == [7, 8, 9]


def test_min_k_prefers_unfamiliar_or_familiar():
    f = synthetic_features(6)
    f.min_k = np.repeat(-np.arange(6, dtype=np.float32)[:, None], len(MIN_K_FRACTIONS), axis=1)  # row i: -i
    unfamiliar = run_strategy("min_k", f, 2, np.random.default_rng(0))
    familiar = run_strategy("min_k", f, 2, np.random.default_rng(0), prefer="familiar", k=0.5)
    assert sorted(unfamiliar.indices.tolist()) == [4, 5] and sorted(familiar.indices.tolist()) == [0, 1]
    with pytest.raises(ConfigError, match="k=0.25 is invalid; must be one of"):
        run_strategy("min_k", f, 2, np.random.default_rng(0), k=0.25)


def test_ifd_ranks_examples_above_max_last():
    f = synthetic_features(5)
    f.loss = np.array([1.0, 2.0, 3.0, 4.0, 5.0], dtype=np.float32)
    f.direct_loss = np.array([2.0, 2.5, 3.1, 2.0, 5.0], dtype=np.float32)   # IFD .5 .8 .97 2.0 1.0
    sel = run_strategy("ifd", f, 3, np.random.default_rng(0))
    assert sel.indices.tolist() == [4, 2, 1]                   # 2.0 exceeds max_ifd=1 and ranks last
    np.testing.assert_allclose(sel.scores, [1.0, 3 / 3.1, 0.8], rtol=1e-5)
    every = run_strategy("ifd", f, 5, np.random.default_rng(0))
    assert every.indices.tolist()[-1] == 3
    assert run_strategy("ifd", f, 1, np.random.default_rng(0), max_ifd=None).indices.tolist() == [3]


def test_superfiltering_needs_a_scorer_model():
    f = Features(ids=["a", "b"], length=np.ones(2, dtype=np.float32), loss=np.ones(2, dtype=np.float32))
    with pytest.raises(FeatureUnavailableError, match="model.scorer"):
        run_strategy("superfiltering", f, 1, np.random.default_rng(0))


def test_min_k_statistic_matches_a_direct_computation(tiny_model):
    model, tok = tiny_model
    items = tokenize(tok, records_to_pool(pool_records(6)).examples, 64)
    stats = response_token_stats(model, items, tok.pad_token_id, max_batch=4)
    for i in (0, 3):
        ids = torch.tensor([items[i].prompt_ids + items[i].response_ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
        P, R = len(items[i].prompt_ids), len(items[i].response_ids)
        token_lp = logp[P - 1:P + R - 1].gather(1, torch.tensor(items[i].response_ids)[:, None])[:, 0]
        lowest = np.sort(token_lp.numpy())
        for j, k in enumerate(MIN_K_FRACTIONS):
            n = max(1, int(np.ceil(k * R)))
            assert stats[i, 3 + j] == pytest.approx(lowest[:n].mean(), rel=1e-4)


def test_direct_items_drop_the_prompt_and_the_end_of_turn(tiny_model):
    """IFD's direct pass scores the plain response (Cherry LLM): no prompt, and not the chat template's
    end-of-turn marker, which tokenize() keeps at the end of response_ids for training."""
    _, tok = tiny_model
    examples = records_to_pool(pool_records(3)).examples
    items = tokenize(tok, examples, 64)
    direct = direct_items(items, 7)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    for d, t, ex in zip(direct, items, examples):
        assert t.response_ids[-1] == end and t.tail >= 1
        assert d.prompt_ids == [7] and d.response_ids == tok(ex.response, add_special_tokens=False)["input_ids"]
        assert end not in d.response_ids


def test_plain_start_is_not_a_chat_turn_opener(tiny_model):
    """The tiny tokenizer mirrors SmolLM2: BOS <|im_start|> opens a chat turn (the model then expects a
    role name), <|endoftext|> separates pretraining documents. The direct pass starts after the latter."""
    from llm_al.features.formatting import plain_start_id

    _, tok = tiny_model
    assert tok.bos_token == "<|im_start|>"
    assert plain_start_id(tok) == tok.convert_tokens_to_ids("<|endoftext|>")


def test_ifd_numerator_leaves_out_the_end_of_turn(tiny_model):
    """The plain_nll_sum / plain_tokens columns are the NLL of the response's own tokens given the
    prompt (end-of-turn marker excluded), so IFD compares the same tokens with and without the prompt."""
    from llm_al.features.engine import STAT_COLUMNS, build_features

    model, tok = tiny_model
    examples = records_to_pool(pool_records(4)).examples
    items = tokenize(tok, examples, 64)
    stats = response_token_stats(model, items, tok.pad_token_id)
    col = {c: i for i, c in enumerate(STAT_COLUMNS)}
    for i, t in enumerate(items):
        ids = torch.tensor([t.prompt_ids + t.response_ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
        P, n = len(t.prompt_ids), len(t.plain_ids)
        nll = -logp[P - 1:P + n - 1].gather(1, torch.tensor(t.plain_ids)[:, None])[:, 0]
        assert stats[i, col["plain_tokens"]] == n == len(t.response_ids) - t.tail
        assert stats[i, col["plain_nll_sum"]] == pytest.approx(nll.sum().item(), rel=1e-4)
        assert stats[i, col["plain_nll_sum"]] < stats[i, col["nll_sum"]]
    direct = response_token_stats(model, direct_items(items, 0), tok.pad_token_id)
    f = build_features(examples, [e.id for e in examples], loss_stats=stats, direct_stats=direct)
    expect = (stats[:, col["plain_nll_sum"]] / stats[:, col["plain_tokens"]]) / (direct[:, 0] / direct[:, 2])
    np.testing.assert_allclose(f.ifd, expect, rtol=1e-5)
    assert not np.allclose(f.ifd, f.loss / f.direct_loss, rtol=1e-3)
