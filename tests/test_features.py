"""Loss features against the plain transformers loss, batching invariance, and the disk cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import pool_records
from llm_al.data.pool import records_to_pool
from llm_al.features.engine import compute_loss_features, length_sorted_batches, response_token_stats
from llm_al.features.formatting import split_texts, tokenize


@pytest.fixture(scope="module")
def pool():
    return records_to_pool(pool_records(), system_prompt="Translate English to French.")


def test_length_sorted_batches_cover_everything_within_budget():
    lengths = [5, 50, 7, 30, 12, 12, 3]
    batches = length_sorted_batches(lengths, max_tokens=60, max_batch=3)
    assert sorted(i for b in batches for i in b) == list(range(7))
    for b in batches:
        assert len(b) <= 3 and max(lengths[i] for i in b) * len(b) <= 60 or len(b) == 1


def test_prompt_is_templated_and_response_ends_the_turn(tiny_model, pool):
    _, tok = tiny_model
    prompt, response = split_texts(tok, pool.examples[0])
    assert prompt.startswith("<|im_start|>system\nTranslate English to French.<|im_end|>")
    assert prompt.endswith("<|im_start|>assistant\n")
    assert response == pool.examples[0].response + "<|im_end|>"


def test_loss_matches_transformers_per_example(tiny_model, pool):
    model, tok = tiny_model
    items = tokenize(tok, pool.examples, 128)
    ours = response_token_stats(model, items, tok.pad_token_id, max_tokens=256, max_batch=8)
    for i in (0, 5, 11):
        ids = torch.tensor([items[i].prompt_ids + items[i].response_ids])
        labels = ids.clone()
        labels[0, : len(items[i].prompt_ids)] = -100
        with torch.no_grad():
            ref = model(input_ids=ids, labels=labels).loss.item()
        assert ours[i, 0] / ours[i, 2] == pytest.approx(ref, rel=1e-4)
        assert ours[i, 2] == len(items[i].response_ids)
    assert np.all(ours[:, 1] > 0)                                 # entropy is positive


def test_loss_does_not_depend_on_batch_composition(tiny_model, pool):
    model, tok = tiny_model
    items = tokenize(tok, pool.examples, 128)
    batched = response_token_stats(model, items, tok.pad_token_id, max_tokens=4096, max_batch=64)
    single = response_token_stats(model, items, tok.pad_token_id, max_tokens=4096, max_batch=1)
    np.testing.assert_allclose(batched, single, rtol=1e-4)


def test_truncation_keeps_some_response(tiny_model, pool):
    _, tok = tiny_model
    items = tokenize(tok, pool.examples, 12)
    assert all(t.length <= 12 and len(t.response_ids) >= 1 for t in items)
    assert any(t.truncated for t in items)


def test_cache_means_no_second_forward_pass(tiny_model, pool, cache_dir, monkeypatch):
    model, tok = tiny_model
    first, cost1 = compute_loss_features(model, tok, pool.examples, cache_dir, "tiny", 128, progress_bar=False)
    assert cost1["loss_examples_scored"] == len(pool)

    def boom(*a, **k):
        raise AssertionError("forward pass on a cached example")

    monkeypatch.setattr("llm_al.features.engine.response_token_stats", boom)
    again, cost2 = compute_loss_features(model, tok, pool.examples, cache_dir, "tiny", 128, progress_bar=False)
    np.testing.assert_array_equal(first, again)
    assert cost2["loss_examples_scored"] == 0
    monkeypatch.undo()
    # a new pool sharing examples scores only the new ones
    bigger = records_to_pool(pool_records() + [{"source": "Thanks", "target": "Merci"}],
                             system_prompt="Translate English to French.")
    _, cost3 = compute_loss_features(model, tok, bigger.examples, cache_dir, "tiny", 128, progress_bar=False)
    assert cost3["loss_examples_scored"] == 1
    assert not [p for p in cache_dir.rglob("*") if p.name.endswith(".tmp")]
    (folder,) = cache_dir.glob("loss-v4-*")
    assert len(list(folder.glob("*.npz"))) == 2                          # the first run's shard + the new row's


def test_cache_rows_hold_every_stat_column_in_a_v4_file(tiny_model, pool, cache_dir):
    from llm_al.features.engine import STAT_COLUMNS

    model, tok = tiny_model
    stats, _ = compute_loss_features(model, tok, pool.examples[:3], cache_dir, "tiny", 128, progress_bar=False)
    assert stats.shape == (3, len(STAT_COLUMNS)) and "min_k_plus_0.2" in STAT_COLUMNS
    assert [p.name.split("-")[:2] for p in cache_dir.glob("loss-*") if p.is_dir()] == [["loss", "v4"]]


def test_token_table_holds_the_same_items_compactly(tiny_model, pool):
    """The scoring pass keeps a pool's token ids in a TokenTable (flat int32 buffers): every item,
    length and truncation flag equals tokenize()'s, chunk boundaries included, and plain_after
    gives direct_items' "response alone" items."""
    from llm_al.features.engine import direct_items
    from llm_al.features.formatting import TokenTable, tokenize_table

    _, tok = tiny_model
    items = tokenize(tok, pool.examples, 24)                       # short: some are truncated
    table = tokenize_table(tok, pool.examples, 24, chunk=5)        # chunks of 5 across the pool
    assert isinstance(table, TokenTable) and len(table) == len(items)
    assert [table[i] for i in range(len(table))] == items and table[-1] == items[-1] and table[2:4] == items[2:4]
    assert table.lengths.tolist() == [t.length for t in items]
    assert table.truncated.tolist() == [t.truncated for t in items] and table.truncated.any()
    assert table.prompt.dtype == np.int32 and table.prompt.nbytes == 4 * sum(len(t.prompt_ids) for t in items)
    assert list(table.plain_after([7])) == direct_items(items, 7)
    with pytest.raises(IndexError):
        table[len(table)]
    assert len(tokenize_table(tok, [], 24)) == 0
