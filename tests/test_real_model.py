"""The embedded SmolLM2 model for real (opt-in: `pytest -m slow`, a few minutes on a 2-core CPU)."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def test_embedded_model_converts_loads_and_scores_like_transformers():
    import torch

    from llm_al.data.pool import records_to_pool
    from llm_al.features.engine import response_token_stats
    from llm_al.features.formatting import tokenize
    from llm_al.models import EMBEDDED_MODEL, load_model

    model, tok = load_model(EMBEDDED_MODEL, device="cpu")
    assert tok.chat_template and tok.model_max_length < 10**6
    pool = records_to_pool([{"source": "Cancel", "target": "Annuler"},
                            {"source": "This field is required.", "target": "Ce champ est obligatoire."}],
                           system_prompt="Translate English to French.")
    items = tokenize(tok, pool.examples, 128)
    stats = response_token_stats(model, items, tok.pad_token_id)
    ids = torch.tensor([items[1].prompt_ids + items[1].response_ids])
    labels = ids.clone()
    labels[0, : len(items[1].prompt_ids)] = -100
    with torch.no_grad():
        ref = model(input_ids=ids, labels=labels).loss.item()
    assert stats[1, 0] / stats[1, 2] == pytest.approx(ref, rel=1e-4)
    assert 0 < ref < 5        # a real instruction model finds this translation plausible


def test_smoke_recipe_runs_end_to_end(tmp_path, capsys):
    from llm_al.cli import main

    assert main(["run", "recipes/tiny_smoke.yaml", f"out_dir={tmp_path}", "seeds=[0]", "strategies=[kcenter]",
                 "progress=false"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    random_row = next(r for r in summary["strategies"] if r["strategy"] == "random")
    assert random_row["chrf"]["mean"] > summary["untrained"]["chrf"]   # 16 examples already help
