from __future__ import annotations

import pytest

from conftest import pool_records
from llm_al.data.pool import records_to_pool
from llm_al.evaluate import evaluate, generate, stop_token_ids
from llm_al.config import EvalConfig
from llm_al.features.formatting import prompt_text


@pytest.fixture(scope="module")
def examples():
    return records_to_pool(pool_records(12), system_prompt="Translate English to French.").examples


def test_batched_left_padded_generation_equals_one_at_a_time(tiny_model, examples, monkeypatch):
    model, tok = tiny_model
    # The random-init model mostly writes whitespace; compare the generated token ids themselves.
    monkeypatch.setattr(tok, "decode", lambda ids, skip_special_tokens=True: " ".join(
        str(i) for i in list(ids) if i not in tok.all_special_ids))
    prompts = [prompt_text(tok, ex.prompt_messages) for ex in examples]
    batched = generate(model, tok, prompts, max_new_tokens=8, batch_size=5, progress_bar=False)
    single = [generate(model, tok, [p], max_new_tokens=8, batch_size=1, progress_bar=False)[0] for p in prompts]
    assert batched == single
    assert any(batched)


def test_stops_at_end_of_turn(tiny_model):
    model, tok = tiny_model
    assert tok.convert_tokens_to_ids("<|im_end|>") in stop_token_ids(model, tok)


def test_evaluate_reports_every_metric_per_example(tiny_model, examples):
    model, tok = tiny_model
    out = evaluate(model, tok, examples, EvalConfig(max_new_tokens=4), progress_bar=False)
    assert set(out["metrics"]) == {"chrf", "bleu", "rougeL", "exact_match"}
    assert all(len(v) == len(examples) for v in out["per_example"].values())
    assert len(out["predictions"]) == len(examples) and out["ids"] == [ex.id for ex in examples]
    assert 0 <= out["metrics"]["chrf"] <= 100
