"""summarize() on synthetic run records with known structure (no model involved)."""

from __future__ import annotations

import numpy as np
import pytest

from llm_al.config import load_config
from llm_al.analysis.table import format_table, summarize


def _run(strategy, ordering, s, o, i, chrf):
    return {"strategy": strategy, "ordering": ordering, "status": "ok", "seeds": {"subset": s, "order": o, "init": i},
            "eval": {"metrics": {"chrf": chrf, "bleu": chrf / 2, "rougeL": chrf, "exact_match": 0.0}},
            "timings": {"train_seconds": 1.0, "select_seconds": 0.0}, "overlap": {}}


FLOOR = {"eval": {"metrics": {"chrf": 10.0, "bleu": 1.0, "rougeL": 5.0, "exact_match": 0.0}},
         "test_size": 50, "pool_size": 500}


def test_paired_gain_over_random_is_found():
    cfg = load_config(None, ["strategies=[random, kcenter]", "seeds=[0, 1, 2, 3, 4, 5]"])
    rng = np.random.default_rng(0)
    base = rng.normal(30, 3, 6)
    runs = [_run("random", "shuffled", k, k, k, base[k]) for k in range(6)]
    runs += [_run("kcenter", "shuffled", k, k, k, base[k] + 2.0 + rng.normal(0, 0.1)) for k in range(6)]
    summary = summarize(runs, FLOOR, cfg)
    kc = next(r for r in summary["strategies"] if r["strategy"] == "kcenter")
    assert kc["vs_random"]["wins"] == 6 and kc["vs_random"]["mean_diff"] == pytest.approx(2.0, abs=0.2)
    assert kc["vs_random"]["verdict"] == "better than random"
    assert "better than random" in format_table(summary)
    assert "with 6 runs t = 2.57" in format_table(summary)          # the footnote's t is the table's n


def test_variance_share_and_ordering_percentile():
    cfg = load_config(None, ["strategies=[random]", "design=grid", "subset_seeds=[0, 1, 2]", "order_seeds=[0, 1, 2, 3]",
                             "orderings=[shuffled, easy_to_hard]"])
    # subsets differ by 1 point, orders within a subset by 10: the within-subset share is large
    runs = [_run("random", "shuffled", s, o, 0, 30 + s + 10 * (o % 2)) for s in range(3) for o in range(4)]
    runs += [_run("random", "easy_to_hard", s, 0, 0, 50.0) for s in range(3)]      # beats every shuffled run
    summary = summarize(runs, FLOOR, cfg)
    shuffled, ladder = summary["strategies"]
    ss_within = 3 * 4 * 25.0                                   # each subset: values +-5 around its mean
    ss_total = ss_within + 4 * ((30 - 31) ** 2 + 0 + (32 - 31) ** 2)
    assert shuffled["variance"]["share_within"] == pytest.approx(ss_within / ss_total)
    assert ladder["vs_shuffled"]["percentile"] == 100.0 and ladder["vs_shuffled"]["n_shuffled"] == 12
    assert ladder["variance"] is None                          # one run per subset: no within-subset spread
    table = format_table(summary)
    assert "within-subset SS %" in table and "pct of shuffled" in table


def test_failed_runs_are_counted_not_averaged():
    cfg = load_config(None, ["strategies=[random]", "seeds=[0, 1]"])
    runs = [_run("random", "shuffled", 0, 0, 0, 30.0), {"strategy": "random", "ordering": "shuffled",
                                                         "status": "failed", "seeds": {"subset": 1, "order": 1, "init": 1}}]
    row = summarize(runs, FLOOR, cfg)["strategies"][0]
    assert row["n"] == 1 and row["failed"] == 1 and row["chrf"]["values"] == [30.0]


def test_results_from_before_a_config_section_existed_are_reused(tmp_path):
    """A run written before a config section was added (so its config lacks it) still counts as
    done when the section has its default value now; a real difference is refused."""
    import json

    from llm_al.config import to_dict
    from llm_al.errors import UserError
    from llm_al.run.experiment import _done

    cfg = to_dict(load_config())
    old = {k: v for k, v in cfg.items() if k != "loop"}
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"status": "ok", "config": old}))
    assert _done(path, cfg)["status"] == "ok"
    changed = {**cfg, "loop": {**cfg["loop"], "rounds": 2}}
    with pytest.raises(UserError, match="loop differ"):
        _done(path, changed)
    # a key added to a section since (overlap.reference_field) also counts as its default
    old = {**cfg, "overlap": {k: v for k, v in cfg["overlap"].items() if k != "reference_field"}}
    path.write_text(json.dumps({"status": "ok", "config": old}))
    assert _done(path, cfg)["status"] == "ok"
    with pytest.raises(UserError, match="overlap differ"):
        _done(path, {**cfg, "overlap": {**cfg["overlap"], "reference_field": "content"}})


def test_budgets_axis_gives_one_row_per_budget_paired_within_the_budget():
    cfg = load_config(None, ["strategies=[random, kcenter]", "seeds=[0, 1, 2]", "budgets=[50, 100]"])
    runs = []
    for b, gain in ((50, 5.0), (100, -5.0)):        # kcenter wins at 50 and loses at 100
        for k in range(3):
            runs += [{**_run("random", "shuffled", k, k, k, 30.0 + k), "budget": b},
                     {**_run("kcenter", "shuffled", k, k, k, 30.0 + k + gain), "budget": b}]
    summary = summarize(runs, FLOOR, cfg)
    rows = {(r["strategy"], r["budget"]): r for r in summary["strategies"]}
    assert set(rows) == {(s, b) for s in ("random", "kcenter") for b in (50, 100)}
    assert rows[("kcenter", 50)]["vs_random"]["mean_diff"] == pytest.approx(5.0)
    assert rows[("kcenter", 100)]["vs_random"]["mean_diff"] == pytest.approx(-5.0)
    assert rows[("kcenter", 50)]["label"] == "kcenter @50" and summary["budget"] == [50, 100]
    assert "budget 50/100 of 500" in format_table(summary)


def test_probe_cost_is_charged_to_the_strategies_that_need_it():
    from llm_al.analysis.table import _cost, strategy_cost

    cost = {"loss_tokens_needed": 1000, "loss_seconds": 2.0,
            "probe_mc_dropout": {"seconds": 30.0, "tokens_scored": 8000},
            "probe_sampled": {"seconds": 50.0, "generated_tokens": 4000}}
    bald = strategy_cost("bald", cost)
    assert bald["probe_tokens"] == 8000 and bald["feature_seconds"] == 30.0 and bald["scored_tokens"] == 0
    gen = strategy_cost("gen_disagreement", cost)
    assert gen["probe_tokens"] == 4000 and gen["feature_seconds"] == 50.0
    assert strategy_cost("perplexity", cost)["probe_tokens"] == 0
    assert _cost(bald) == "8k probe tok"


def test_model_embeddings_from_the_loss_pass_are_not_charged_twice():
    from llm_al.analysis.table import strategy_cost

    sentence = {"loss_tokens_needed": 1000, "loss_seconds": 2.0, "embed_examples_needed": 50, "embed_seconds": 3.0}
    assert strategy_cost("deita", sentence)["feature_seconds"] == 5.0          # two models, two passes
    model = {**sentence, "embed_seconds": 2.0, "embed_in_loss_pass": True}     # model.embedder=model: one pass
    assert strategy_cost("deita", model)["feature_seconds"] == 2.0
    assert strategy_cost("kcenter", model)["feature_seconds"] == 2.0           # the pass is its whole cost


def test_table_prints_n_beside_every_interval_and_the_share_beside_its_null():
    """Issue 16: t intervals (not a bootstrap's min..max) with their n, and the within-subset share
    beside what it would be with no subset effect, (n - G)/(n - 1)."""
    from llm_al.analysis.stats import t_interval

    cfg = load_config(None, ["strategies=[random, kcenter]", "seeds=[0, 1, 2]"])
    base = [30.0, 33.0, 28.0]
    runs = [_run("random", "shuffled", k, k, k, base[k]) for k in range(3)]
    runs += [_run("kcenter", "shuffled", k, k, k, base[k] + d) for k, d in enumerate([1.0, 2.5, 0.5])]
    summary = summarize(runs, FLOOR, cfg)
    rnd, kc = summary["strategies"]
    assert rnd["chrf"]["ci"] == pytest.approx(list(t_interval(np.array(base))))
    assert rnd["chrf"]["ci"][0] < min(base) and rnd["chrf"]["ci"][1] > max(base)
    lo, hi = t_interval(np.array([1.0, 2.5, 0.5]))
    assert kc["vs_random"]["ci"] == pytest.approx([lo, hi])
    table = format_table(summary)
    assert f"[{lo:+.2f}, {hi:+.2f}] (n=3)" in table and "95% t-CI (paired)" in table
    assert f"[{rnd['chrf']['ci'][0]:.2f}, {rnd['chrf']['ci'][1]:.2f}] (n=3)" in table

    grid = load_config(None, ["strategies=[random]", "design=grid", "subset_seeds=[0, 1, 2]", "order_seeds=[0, 1, 2, 3]"])
    runs = [_run("random", "shuffled", s, o, 0, 30 + s + 10 * (o % 2)) for s in range(3) for o in range(4)]
    var = summarize(runs, FLOOR, grid)["strategies"][0]["variance"]
    assert var["null_share"] == pytest.approx(9 / 11) and var["runs_per_subset"] == 4
    assert [c["name"] for c in var["components"]] == ["subset", "order"]
    assert f"{100 * var['share_within']:.0f} (82)" in format_table(summarize(runs, FLOOR, grid))


def test_a_mixed_test_set_is_reported_per_task_beside_the_macro_average():
    cfg = load_config(None, ["strategies=[random, kcenter]", "seeds=[0, 1]"])
    runs = []
    for k, (a, b) in enumerate([(40.0, 10.0), (44.0, 12.0)]):
        for strategy, shift in (("random", 0.0), ("kcenter", 5.0)):
            r = _run(strategy, "shuffled", k, k, k, (a + b + shift) / 2)
            r["eval"]["by_task"] = {"code": {"n": 25, "chrf": a + shift}, "chat": {"n": 25, "chrf": b}}
            runs.append(r)
    floor = {**FLOOR, "eval": {**FLOOR["eval"], "aggregate": "macro average over 2 tasks",
                               "by_task": {"code": {"n": 25, "chrf": 8.0}, "chat": {"n": 25, "chrf": 3.0}}}}
    summary = summarize(runs, floor, cfg)
    kc = next(r for r in summary["strategies"] if r["strategy"] == "kcenter")
    assert kc["by_task"] == {"chat": {"mean": 11.0, "n_test": 25}, "code": {"mean": 47.0, "n_test": 25}}
    text = format_table(summary)
    assert "macro average over 2 tasks" in text and "chat [25], code [25]" in text
    assert "untrained: 3.00, 8.00" in text and "kcenter: 11.00, 47.00" in text
    plain = summarize([r | {"eval": {"metrics": r["eval"]["metrics"]}} for r in runs], FLOOR, cfg)
    assert all(r["by_task"] is None for r in plain["strategies"]) and "Per task" not in format_table(plain)
