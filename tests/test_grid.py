from __future__ import annotations

import pytest

from llm_al.config import load_config, parse_strategy
from llm_al.run.grid import cells


def _cells(overrides):
    cfg = load_config(None, overrides)
    return cells(cfg, [(s, *parse_strategy(s)) for s in cfg.strategies])


def test_paired_design_pairs_every_strategy_by_seed():
    cs = _cells(["strategies=[random, kcenter]", "seeds=[3, 4]"])
    assert [(c.strategy, c.seeds) for c in cs] == [("random", (3, 3, 3)), ("random", (4, 4, 4)),
                                                   ("kcenter", (3, 3, 3)), ("kcenter", (4, 4, 4))]
    assert len({c.run_id for c in cs}) == 4


def test_grid_designs_separate_the_seeds():
    grid = _cells(["strategies=[random]", "design=grid", "subset_seeds=[0, 1]", "order_seeds=[5, 6, 7]",
                   "init_seeds=[9]"])
    assert [c.seeds for c in grid] == [(s, o, 9) for s in (0, 1) for o in (5, 6, 7)]
    tied = _cells(["strategies=[random]", "design=grid_tied", "subset_seeds=[0]", "order_seeds=[5, 6]"])
    assert [c.seeds for c in tied] == [(0, 5, 5), (0, 6, 6)]


def test_unseeded_orderings_run_once_per_subset_in_grids():
    cs = _cells(["strategies=[random]", "design=grid", "orderings=[shuffled, hard_to_easy]", "order_seeds=[0, 1]"])
    assert [(c.ordering, c.order_seed) for c in cs] == [("shuffled", 0), ("shuffled", 1), ("hard_to_easy", 0)]


def test_run_ids_are_file_safe():
    (c,) = _cells(['strategies=["weighted:weights={loss: 1, length: -0.5}"]', "seeds=[0]"])[1:]
    assert all(ch not in c.run_id for ch in "{}[]:=, ")


def test_budgets_axis_keeps_ids_of_the_default_budget_and_suffixes_others():
    from llm_al.config import load_config, parse_strategy
    from llm_al.run.grid import cells

    cfg = load_config(None, ["strategies=[random]", "seeds=[0]", "budget=100", "budgets=[50, 100, 200]"])
    ids = [(c.run_id, c.budget) for c in cells(cfg, [(s, *parse_strategy(s)) for s in cfg.strategies])]
    assert ids == [("random-shuffled-s0o0i0-b50", 50), ("random-shuffled-s0o0i0", 100),
                   ("random-shuffled-s0o0i0-b200", 200)]


@pytest.mark.parametrize("bad", ["budgets=[50, 50]", "budgets=[0]", "budgets=[true]"])
def test_bad_budgets_are_config_errors(bad):
    from llm_al.config import load_config
    from llm_al.errors import ConfigError

    with pytest.raises(ConfigError, match="budget"):
        load_config(None, [bad])
