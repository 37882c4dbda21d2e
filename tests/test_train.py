"""LoRA training: exact order, seeds, standard adapter format, and the base model left intact."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import pool_records
from llm_al.data import records_to_pool
from llm_al.formatting import tokenize
from llm_al.train import TrainConfig, detach_lora, ordered_batches, save_adapter, train_lora

CFG = TrainConfig(epochs=2, batch_size=3, lr=1e-2, lora_r=4, lora_alpha=8, lora_dropout=0.0)


@pytest.fixture(scope="module")
def items(tiny_model):
    _, tok = tiny_model
    return tokenize(tok, records_to_pool(pool_records(10)).examples, 64)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_ordered_batches_replay_the_order_each_epoch():
    assert ordered_batches(5, 2, 2) == [[0, 1], [2, 3], [4], [0, 1], [2, 3], [4]]


def test_examples_are_consumed_in_exactly_the_given_order(tiny_model, items):
    """Record the token ids that actually reach the model's embedding layer, step by step."""
    model, tok = tiny_model
    seen: list[list[list[int]]] = []
    hook = model.get_input_embeddings().register_forward_hook(
        lambda mod, inp, out: seen.append(inp[0].tolist()))
    order = [7, 2, 9, 0, 4, 1, 8, 3, 6, 5]
    try:
        peft_model, result = train_lora(model, [items[i] for i in order], tok.pad_token_id, CFG, init_seed=0,
                                        progress_bar=False)
        model = detach_lora(peft_model)
    finally:
        hook.remove()
    expected = [order[i:i + 3] for i in range(0, 10, 3)] * 2
    assert len(seen) == len(expected) == result.steps
    for batch_ids, batch in zip(seen, expected):
        for row, idx in zip(batch_ids, batch):
            seq = items[idx].prompt_ids + items[idx].response_ids
            assert row[: len(seq)] == seq


def test_base_model_is_unchanged_and_reusable(tiny_model, items):
    model, tok = tiny_model
    before = _state(model)
    peft_model, result = train_lora(model, items, tok.pad_token_id, CFG, init_seed=1, progress_bar=False)
    assert result.losses[-1] < result.losses[0]                  # it learned something
    restored = detach_lora(peft_model)
    after = _state(restored)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any("lora" in name for name, _ in restored.named_modules())


def test_init_seed_controls_the_adapter(tiny_model, items, tmp_path):
    model, tok = tiny_model
    weights = []
    for seed in (5, 5, 6):
        peft_model, _ = train_lora(model, items[:3], tok.pad_token_id, TrainConfig(epochs=1, lora_r=4, lr=1e-3),
                                   init_seed=seed, progress_bar=False)
        weights.append(torch.cat([p.detach().flatten() for n, p in peft_model.named_parameters() if "lora_A" in n]))
        save_adapter(peft_model, tmp_path / f"a{len(weights)}")
        model = detach_lora(peft_model)
    assert torch.equal(weights[0], weights[1])
    assert not torch.equal(weights[0], weights[2])
    cfg = json.loads((tmp_path / "a1" / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and (tmp_path / "a1" / "adapter_model.safetensors").exists()


def test_saved_adapter_loads_back_with_peft(tiny_model, items, tmp_path):
    from peft import PeftModel

    model, tok = tiny_model
    peft_model, _ = train_lora(model, items, tok.pad_token_id, CFG, init_seed=2, progress_bar=False)
    ids = torch.tensor([items[0].prompt_ids + items[0].response_ids])
    with torch.no_grad():
        want = peft_model(input_ids=ids).logits
    save_adapter(peft_model, tmp_path / "adapter")
    model = detach_lora(peft_model)
    reloaded = PeftModel.from_pretrained(model, str(tmp_path / "adapter"))
    with torch.no_grad():
        got = reloaded(input_ids=ids).logits
    torch.testing.assert_close(got, want)
    detach_lora(reloaded)


def test_training_failure_leaves_base_model_clean(tiny_model, items):
    model, tok = tiny_model
    calls = []

    def fail(batch):
        calls.append(batch)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        train_lora(model, items, tok.pad_token_id, CFG, init_seed=0, on_batch=fail, progress_bar=False)
    assert calls and not any("lora" in name for name, _ in model.named_modules())


def test_bad_train_config():
    from llm_al.errors import ConfigError

    with pytest.raises(ConfigError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ConfigError, match="lr"):
        TrainConfig(lr=0)
