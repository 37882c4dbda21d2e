"""LoRA training: exact order, seeds, standard adapter format, and the base model left intact."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import pool_records
from llm_al.data.pool import records_to_pool
from llm_al.features.formatting import tokenize
from llm_al.train import detach_lora, ordered_batches, save_adapter, train_lora
from llm_al.config import TrainConfig

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


# ---------------------------------------------------------------------------- out-of-memory back-off
OOM_CFG = TrainConfig(epochs=2, batch_size=4, lr=1e-2, lora_r=4, lora_alpha=8, lora_dropout=0.0)
ORDER = [7, 2, 9, 0, 4, 1, 8, 3, 6, 5]        # steps of 4, 4, 2 examples, twice


def _lora_weights(peft_model) -> dict:
    return {n: p.detach().clone() for n, p in peft_model.named_parameters() if "lora_" in n}


def _train_with_oom(model, items, pad_id, too_big, seed=3):
    """train_lora where a forward pass raises torch.OutOfMemoryError (the type
    out_of_memory_errors() lists on this torch) inside the second decoder layer, after the
    embedding and the first layer have run, whenever `too_big(ids)` holds for its (B, T) input ids.
    Returns (lora weights, result, on_batch calls, the input ids of the passes that counted: those
    of each step's last attempt)."""
    from llm_al.features.memory import out_of_memory_errors

    assert torch.OutOfMemoryError in out_of_memory_errors()
    current, steps, calls = {}, [], []

    def start_step(batch):
        calls.append(batch)
        steps.append([])

    def remember(mod, inp, out):
        current["ids"] = inp[0]

    def maybe_fail(mod, args, kwargs):
        ids = current["ids"]
        if too_big(ids):
            steps[-1].clear()        # the step starts again
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        steps[-1].append(ids.tolist())

    hooks = [model.get_input_embeddings().register_forward_hook(remember),
             model.get_decoder().layers[1].register_forward_pre_hook(maybe_fail, with_kwargs=True)]
    try:
        peft_model, result = train_lora(model, items, pad_id, OOM_CFG, init_seed=seed, on_batch=start_step,
                                        progress_bar=False)
        weights = _lora_weights(peft_model)
        detach_lora(peft_model)
    finally:
        for h in hooks:
            h.remove()
    return weights, result, calls, [ids for step in steps for ids in step]


def _heavy_with_others(heavy):
    """Out of memory when a batch holds `heavy` and anything else."""
    seq = heavy.prompt_ids + heavy.response_ids
    return lambda ids: ids.shape[0] > 1 and any(row[: len(seq)] == seq for row in ids.tolist())


@pytest.mark.parametrize("rule, backoffs, micro", [
    ("more_than_2", 1, 2),
    ("more_than_1", 2, 1),
    ("heavy", 2, 1),          # the second micro-batch of step 0 fails after the first one's backward
])
def test_out_of_memory_backs_off_to_micro_batches_with_the_same_update(tiny_model, items, rule, backoffs, micro):
    model, tok = tiny_model
    ordered = [items[i] for i in ORDER]
    too_big = {"more_than_2": lambda ids: ids.shape[0] > 2, "more_than_1": lambda ids: ids.shape[0] > 1,
               "heavy": _heavy_with_others(ordered[3])}[rule]
    want, ref, ref_calls, _ = _train_with_oom(model, ordered, tok.pad_token_id, lambda ids: False)
    got, result, calls, passed = _train_with_oom(model, ordered, tok.pad_token_id, too_big)

    assert (ref.oom_backoffs, ref.micro_batch_size) == (0, 4)
    assert (result.oom_backoffs, result.micro_batch_size) == (backoffs, micro)   # the smaller size is kept
    assert calls == ref_calls == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]] * 2
    # what reached the model in the passes that counted is the given order, in micro-batches of at
    # most `micro` after the back-off
    rows = [row for ids in passed for row in ids]
    assert len(rows) == 2 * len(ordered)
    for row, item in zip(rows, ordered * 2):
        seq = item.prompt_ids + item.response_ids
        assert row[: len(seq)] == seq
    assert max(len(ids) for ids in passed[-3:]) <= micro
    assert result.tokens == ref.tokens and result.steps == ref.steps
    assert result.losses == pytest.approx(ref.losses, abs=2e-5)
    assert want.keys() == got.keys() and want
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-5, msg=name)   # seen: 1.5e-6 apart
    assert not any("lora" in name for name, _ in model.named_modules())


def test_a_single_example_out_of_memory_is_a_user_error(tiny_model, items):
    from llm_al.errors import UserError

    model, tok = tiny_model
    ordered = [items[i] for i in ORDER]
    heavy = ordered[5]
    seq = heavy.prompt_ids + heavy.response_ids
    too_big = lambda ids: any(row[: len(seq)] == seq for row in ids.tolist())     # noqa: E731
    with pytest.raises(UserError, match=rf"single example of {heavy.length} tokens .*step 1, after 2 halvings"
                                        r".*model\.max_length.*more memory \(CUDA out of memory"):
        _train_with_oom(model, ordered, tok.pad_token_id, too_big)
    assert not any("lora" in name for name, _ in model.named_modules())      # the adapter was removed


def test_bad_train_config():
    from llm_al.errors import ConfigError

    with pytest.raises(ConfigError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ConfigError, match="lr"):
        TrainConfig(lr=0)
