"""The runs of an experiment: which strategy, ordering and seeds each cell uses.

A cell is one fine-tuning run. Its three seeds are separate: the subset seed drives selection, the
order seed the data order, the init seed the adapter initialisation (each through its own named
stream, llm_al.seeds). Designs:

- paired: for each k in `seeds`, one run with subset = order = init = k; every strategy runs
  under the same k, so strategies pair with random by k (the demo).
- grid: every combination of subset_seeds x order_seeds x init_seeds. With one init seed this is
  the "order-only" arm of a variance decomposition (G subsets x N orders, init fixed).
- grid_tied: subset_seeds x order_seeds with the init seed equal to the order seed: the
  "all-seeds" arm, where order and init noise move together as in the paper's single seed.

Orderings that ignore their generator (easy_to_hard, ...) run with the first order seed only in
the grid designs: more order seeds would only repeat the same run.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Any

from llm_al.config import ExperimentConfig
from llm_al.orderings import ORDERINGS

_UNSAFE = re.compile(r"[/\\\x00-\x1f]|\.\.")


@dataclass(frozen=True)
class Cell:
    strategy: str                 # the spec as written, e.g. "perplexity:band=middle"
    name: str                     # the registered strategy name
    params: dict[str, Any] = field(hash=False, compare=False)
    ordering: str = "shuffled"
    subset_seed: int = 0
    order_seed: int = 0
    init_seed: int = 0
    budget: int = 100
    default_budget: int = field(default=100, hash=False, compare=False)   # cfg.budget: its runs keep short ids

    @property
    def seeds(self) -> tuple[int, int, int]:
        return (self.subset_seed, self.order_seed, self.init_seed)

    @property
    def run_id(self) -> str:
        slug = self.strategy.replace(":", "-").replace(",", "-").replace("=", "").replace(" ", "")
        for ch in "{}[]":
            slug = slug.replace(ch, "")
        slug = _UNSAFE.sub("_", slug)       # parameter values may hold "/" or "..": keep the id one file name
        suffix = "" if self.budget == self.default_budget else f"-b{self.budget}"
        return f"{slug}-{self.ordering}-s{self.subset_seed}o{self.order_seed}i{self.init_seed}{suffix}"


def seed_triples(cfg: ExperimentConfig, ordering: str) -> list[tuple[int, int, int]]:
    if cfg.design == "paired":
        return [(k, k, k) for k in cfg.seeds]
    orders = cfg.order_seeds if ORDERINGS.get(ordering).meta.get("seeded") else cfg.order_seeds[:1]
    if cfg.design == "grid":
        return list(itertools.product(cfg.subset_seeds, orders, cfg.init_seeds))
    return [(s, o, o) for s, o in itertools.product(cfg.subset_seeds, orders)]


def cells(cfg: ExperimentConfig, specs: list[tuple[str, str, dict]]) -> list[Cell]:
    """Every run of the experiment, budgets outermost, then strategies (so a partial run has whole
    strategies at the first budgets). Runs at `cfg.budget` keep ids without a budget suffix, so a
    sweep over `budgets` reuses the runs of an earlier single-budget experiment."""
    return [Cell(spec, name, params, ordering, *triple, budget=budget, default_budget=cfg.budget)
            for budget in cfg.budget_list
            for spec, name, params in specs
            for ordering in cfg.orderings
            for triple in seed_triples(cfg, ordering)]
