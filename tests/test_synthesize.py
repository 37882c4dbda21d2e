"""Query synthesis: normalisation and de-duplication on hand-made cases with known answers, the
record shapes written back, the counts of a run with scripted model outputs, and the real command
end to end with the tiny model (gibberish, but a valid unlabelled pool with no pool duplicate)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import pool_records
from llm_al.data.pool import load_pool, records_to_pool
from llm_al.errors import UserError
from llm_al.run.synthesize import (
    char_ngrams,
    deduplicate,
    jaccard_matrix,
    label_free_needs,
    new_record,
    normalise_request,
    request_text,
    synthesize,
    _column,
)


def test_normalise_strips_collapses_and_drops():
    assert normalise_request("  Hello \n\n  world\t ", 40) == "Hello world"
    assert normalise_request(" \n\t ", 40) is None
    assert normalise_request("x" * 11, 10) is None and normalise_request("x" * 10, 10) == "x" * 10


def test_char_ngrams_and_jaccard_known_values():
    assert char_ngrams("ABcd") == {"abc", "bcd"}
    assert char_ngrams("ab") == {"ab"}                                  # shorter than n: itself
    assert char_ngrams("a  b c") == {"a b", " b ", "b c"}               # whitespace collapsed
    j = jaccard_matrix(["abcd", "xyz"], ["abce", "abcd", "q"])
    np.testing.assert_allclose(j, [[1 / 3, 1.0, 0.0], [0.0, 0.0, 0.0]])


def test_deduplicate_known_answers():
    cands = ["Cancel", "cancel", "Delete it", "Delete it", "Delete it!", "Brand new thing", "Add another"]
    why = deduplicate(cands, ["Cancel", "Add another one"])
    # "delete it" vs "delete it!": 7 shared 3-grams of 8 -> Jaccard 0.875 >= 0.8
    # "add another" vs "add another one": 9 of 13 -> 0.69 < 0.8
    assert why == ["exact-pool", "near-pool", None, "exact-new", "near-new", None, None]
    assert deduplicate(cands, ["Cancel"], threshold=0.9)[4] is None       # 0.875 < 0.9: kept
    assert deduplicate([], ["x"]) == [] and deduplicate(["a b"], []) == [None]
    with pytest.raises(UserError, match="threshold"):
        deduplicate(["a"], [], threshold=0)


SHAPES = {
    "prompt_response": ({"prompt": "Say hi", "system": "Be brief."}, {"prompt": "NEW", "system": "Be brief."}),
    "alpaca": ({"instruction": "Sum", "input": "2 3"}, {"instruction": "NEW"}),
    "messages": ({"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "a"}]},
                 {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "NEW"}]}),
    "sharegpt": ({"conversations": [{"from": "human", "value": "Hey"}]},
                 {"conversations": [{"from": "human", "value": "NEW"}]}),
    "translation": ({"source": "Hello", "source_lang": "en", "target_lang": "fr"},
                    {"source": "NEW", "source_lang": "en", "target_lang": "fr"}),
    "wmt": ({"translation": {"de": "Hallo", "en": None}}, {"translation": {"de": "NEW", "en": None}}),
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_new_records_keep_the_pool_shape_and_reload_unlabelled(shape):
    rec, want = SHAPES[shape]
    pool = records_to_pool([rec], labelled=False)
    kind, column = _column(pool, None)
    assert request_text(pool.examples[0], kind, column) in ("Say hi", "Sum", "a", "Hey", "Hello", "Hallo")
    new = new_record("NEW", pool.examples, kind, column)
    assert new == {**want, "synthesized_from": [pool.examples[0].id]}
    back = records_to_pool([new], labelled=False)
    assert back.shape == pool.shape and not back.examples[0].is_labelled
    assert "NEW" in back.examples[0].prompt_messages[-1]["content"]


def test_mapped_fields_write_the_mapped_column():
    pool = records_to_pool([{"question": "Why?", "answer": "Because."}], fields={"prompt": "question",
                                                                                  "response": "answer"}, labelled=False)
    kind, column = _column(pool, {"prompt": "question", "response": "answer"})
    assert (kind, column) == ("text", "question") and request_text(pool.examples[0], kind, column) == "Why?"


def test_only_label_free_strategies_may_rank():
    assert label_free_needs("greedy_logprob", {}) == {"greedy_logprob"}
    assert label_free_needs("random", {}) == set()
    for name in ("oracle", "perplexity", "ifd"):
        with pytest.raises(UserError, match="reads reference responses"):
            label_free_needs(name, {})


def test_synthesize_counts_with_scripted_outputs(tiny_model, monkeypatch):
    """The model's outputs are scripted: one copies a pool prompt, one is empty, two are the same
    new request up to case and spacing; exactly one survives and the report says why."""
    model, tok = tiny_model
    scripted = ["Cancel", "  Brand   new request ", "", "brand new request"]
    seen_prompts = []

    def fake_generate(model, tokenizer, prompts, max_new_tokens, batch_size, **kw):
        seen_prompts.extend(prompts)
        return [[tok(scripted[i % len(scripted)], add_special_tokens=False)["input_ids"]] for i in range(len(prompts))]

    monkeypatch.setattr("llm_al.run.synthesize.generate_ids", fake_generate)      # where synthesize looks it up
    pool = records_to_pool(pool_records(8), labelled=False)
    records, report = synthesize(pool, [3, 1, 0, 2, 4, 5], model, tok, 4, seeds_per_prompt=2, max_rounds=1)
    assert (report.generated, report.empty_or_long, report.duplicates, report.kept) == (4, 1, 2, 1)
    assert [r["source"] for r in records] == ["Brand new request"]
    # the second few-shot prompt showed the 3rd and 4th ranked prompts (pool 0 and 2), first shown first
    assert records[0]["synthesized_from"] == [pool.examples[0].id, pool.examples[2].id]
    assert pool_records()[0]["source"] in seen_prompts[1] and "Write one new request" in seen_prompts[1]
    # more rounds keep going until n are kept or the rounds run out (all later outputs are duplicates)
    _, report = synthesize(pool, [3, 1, 0, 2], model, tok, 4, seeds_per_prompt=2, max_rounds=3)
    assert report.rounds == 3 and report.kept == 1 and report.generated == 4 + 3 + 3


def test_synthesize_command_end_to_end(tmp_path, pool_file, tiny_model_dir, cache_dir, capsys):
    from llm_al.cli import main

    out = tmp_path / "new.jsonl"
    assert main(["annotate", "synthesize", str(pool_file), "--out", str(out), "--n", "3", "--model",
                 str(tiny_model_dir), "--max-new-tokens", "8", "--seeds-per-prompt", "2"]) == 0
    text = capsys.readouterr().out
    assert "kept" in text and str(out) in text
    pool = load_pool(str(pool_file), labelled=False)
    new = load_pool(str(out), labelled=False)
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert 1 <= len(new) <= 3 and len(rows) == len(new) and not any(ex.is_labelled for ex in new.examples)
    pool_sources = {" ".join(r["source"].split()) for r in pool_records()}
    assert all(r["source"] not in pool_sources and r["source"] == " ".join(r["source"].split()) for r in rows)
    assert all(set(r["synthesized_from"]) <= set(pool.ids) and len(r["synthesized_from"]) == 2 for r in rows)
    assert all(r["source_lang"] == "English" and r["target_lang"] == "French" for r in rows)
    # annotate export accepts the file
    sheet = tmp_path / "sheet.csv"
    assert main(["annotate", "export", str(out), "--budget", str(len(new)), "--out", str(sheet)]) == 0
    assert sheet.exists()
    # a strategy that reads references is refused before any model work
    capsys.readouterr()
    assert main(["annotate", "synthesize", str(pool_file), "--out", str(tmp_path / "x.jsonl"), "--n", "2",
                 "--from-strategy", "oracle"]) == 2
    assert "reads reference responses" in capsys.readouterr().err and not (tmp_path / "x.jsonl").exists()
