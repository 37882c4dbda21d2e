"""The embedded tasks (llm_al/data/tasks.py): each loads offline, its test set is fixed and disjoint
from its pool by source unit, `task=` picks one, and a mixed test set is scored per task."""

from __future__ import annotations


import numpy as np
import pytest

from llm_al.cli import main
from llm_al.config import DataConfig, EvalConfig, load_config
from llm_al.data import sources
from llm_al.data.pool import records_to_pool
from llm_al.data.tasks import TASKS, load_task, split_by_unit
from llm_al.errors import ConfigError, UnknownNameError
from llm_al.evaluate import score_predictions
from llm_al.run.pipeline import load_data

ALL = ["chatterbot", "django-en-af", "django-en-de", "django-en-fr", "mixed-instructions", "python-reference",
       "stdlib-docstrings"]


def test_every_task_is_registered():
    assert TASKS.names() == ALL


@pytest.mark.parametrize("name", ALL)
def test_task_loads_offline_with_a_disjoint_fixed_test_set(name):
    data = load_data(DataConfig(pool="embedded:" + name))
    pool, test = data.pool, data.test
    assert len(test) >= 25 and len(pool) >= 150           # python-reference is the small one (193)
    assert all(ex.is_labelled and ex.response.strip() for ex in [*pool.examples[:50], *test.examples])
    assert not {ex.prompt_id for ex in pool.examples} & {ex.prompt_id for ex in test.examples}
    assert data.notes == []                      # nothing was dropped for sitting on both sides
    assert {ex.source["task"] for ex in test.examples} <= set(ALL)
    again = load_task.__wrapped__(name)          # built afresh: no seed, no file order
    assert [r for r in again.test] == [r for r in load_task(name).test]


def test_the_demo_task_is_the_demo_pool():
    fr = load_data(DataConfig(pool="embedded:django-en-fr"))
    demo = load_data(DataConfig())
    assert fr.pool.ids == demo.pool.ids and fr.test.ids == demo.test.ids


def test_docstring_pool_is_a_real_choice_and_split_by_module():
    data = load_task("stdlib-docstrings")
    assert len(data.pool) >= 5000                 # a budget of 500 picks a tenth of it
    rows = sources.stdlib_functions()
    unit_of = {r["code"]: r["unit"] for r in rows}
    test_units = {unit_of[r["prompt"]] for r in data.test}
    assert len(test_units) >= 20                  # at most 2 per module: the test spans modules
    assert not test_units & {unit_of[r["prompt"]] for r in data.pool}   # no other method of a test module
    assert all('"""' not in r["prompt"] and 3 <= len(r["response"].split()) <= 30 for r in data.test)


def test_docstring_is_cut_from_the_source():
    src = 'def area(r):\n    """Return the area of a circle of radius r.\n\n    More text."""\n    return 3.14 * r * r\n'
    (row,) = sources._function_rows("geometry.py", src)
    assert row["summary"] == "Return the area of a circle of radius r."
    assert row["code"] == "def area(r):\n    return 3.14 * r * r" and row["unit"] == "geometry.py"


def test_no_reference_paragraph_sits_on_both_sides_under_two_topics():
    """pydoc's topics repeat each other ("compound" holds "try"): a split by topic alone put 10 of
    the 25 test rows, word for word, in the pool under another title."""
    data = load_task("python-reference")
    body = lambda r: r["prompt"].split("\n\n", 1)[1]  # noqa: E731 (the title line differs)
    pool_bodies, pool_openings = {body(r) for r in data.pool}, {r["response"] for r in data.pool}
    assert not [r for r in data.test if body(r) in pool_bodies or r["response"] in pool_openings]
    mixed = load_task("mixed-instructions")
    mixed_pool = {r["prompt"] for r in mixed.pool}
    assert not [r for r in mixed.test if r["prompt"] in mixed_pool]


def test_split_by_unit_keeps_a_units_rows_on_one_side():
    rows = [{"unit": f"u{i // 5}", "x": i} for i in range(100)]     # 20 units of 5
    pool, test = split_by_unit(rows, 10, per_unit=2)
    test_units = {r["unit"] for r in test}
    assert len(test) == 10 and len(test_units) == 5
    assert not test_units & {r["unit"] for r in pool}
    assert len(pool) == 100 - 5 * 5                                   # the test units' other rows are on neither side
    assert split_by_unit(list(reversed(rows)), 10, per_unit=2)[1] == test   # content order, not file order


def test_mixed_pool_mixes_every_task_with_a_test_set_per_task():
    data = load_task("mixed-instructions")
    in_test = {}
    for r in data.test:
        in_test[r["task"]] = in_test.get(r["task"], 0) + 1
    assert in_test == {t: 25 for t in ["stdlib-docstrings", "django-en-fr", "django-en-de", "python-reference",
                                       "chatterbot"]}
    assert {r["task"] for r in data.pool} == set(in_test)
    assert all(r["system"] for r in data.pool)    # each task keeps its own instruction
    for name in in_test:                          # each part's test rows are that task's own test rows
        own = load_task(name)
        own_prompts = {r.get("prompt", r.get("source")) for r in own.test}
        assert {r["prompt"] for r in data.test if r["task"] == name} <= own_prompts


def test_task_picks_the_pool_in_recipes_and_overrides(tmp_path):
    assert load_config(None, ["task=chatterbot"]).data.pool == "embedded:chatterbot"
    recipe = tmp_path / "r.yaml"
    recipe.write_text("task: django-en-de\nbudget: 50\n")
    assert load_config(recipe).data.pool == "embedded:django-en-de"
    with pytest.raises(UnknownNameError, match="Did you mean 'stdlib-docstrings'"):
        load_config(None, ["task=stdlib-docstring"])
    with pytest.raises(ConfigError, match="keep one"):
        load_config(None, ["task=chatterbot", "data.pool=my.jsonl"])
    with pytest.raises(UnknownNameError, match="Valid tasks: chatterbot"):
        DataConfig(pool="embedded:nope")


def test_mixed_test_set_is_scored_per_task_and_macro_averaged():
    records = [{"prompt": f"q{i}", "response": "le chat noir" if i < 4 else "a b c d", "task": "a" if i < 4 else "b"}
               for i in range(6)]
    examples = records_to_pool(records, path="mem").examples
    predictions = ["le chat noir"] * 4 + ["x y z w"] * 2           # task a perfect, task b all wrong
    result = score_predictions(examples, predictions, EvalConfig(metrics=["exact_match"], primary="exact_match"), 0.0)
    assert result["by_task"] == {"a": {"n": 4, "exact_match": 100.0}, "b": {"n": 2, "exact_match": 0.0}}
    assert result["metrics"]["exact_match"] == 50.0                # macro: each task counts once
    assert result["metrics_pooled"]["exact_match"] == pytest.approx(400 / 6)
    assert np.mean(result["per_example"]["exact_match"]) == pytest.approx(400 / 6)
    one = score_predictions(examples[:4], predictions[:4], EvalConfig(metrics=["exact_match"], primary="exact_match"), 0)
    assert "by_task" not in one                                    # one task: plain corpus scores


def test_llm_al_tasks_lists_sizes(capsys):
    main(["tasks"])
    out = capsys.readouterr().out
    for name in ALL:
        assert name in out
    assert "pool 5," in out and "test 125 over 5 tasks" in out
