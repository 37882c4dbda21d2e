"""Which features a strategy call or an ordering needs: the `needs` they registered, plus the features
their parameters name (a parameter `by` names one feature; the keys of `weights` name features).
What decides the scoring passes a run makes (run/pipeline.py), and what the cost tables charge to
each strategy (analysis/).
"""

from __future__ import annotations

import inspect
from typing import Iterable

from llm_al.registries import ORDERINGS, STRATEGIES, labelled_use
from llm_al.strategies.diversity import WEIGHTED_DEFAULT


def strategy_needs(name: str, params: dict) -> set[str]:
    """Features a strategy call needs: its registered `needs`, plus the features its parameters
    name. Convention: a parameter `by` names one feature; the keys of `weights` name features."""
    fn = STRATEGIES.get(name)
    needs = set(fn.meta.get("needs", ()))
    defaults = {p.name: p.default for p in inspect.signature(fn.fn).parameters.values()}
    if "by" in defaults:
        needs.add(params.get("by", defaults["by"]))
    if "weights" in defaults:
        needs.update((params.get("weights") or defaults["weights"] or WEIGHTED_DEFAULT).keys())
    return needs


def labelled_needs(name: str) -> set[str]:
    """Features a strategy reads from the labelled set (Features.labelled): its registered `needs`
    when it registered labelled="used: ...", else none (per-example scores of the candidates only)."""
    entry = STRATEGIES.get(name)
    return set(entry.meta.get("needs", ())) if labelled_use(entry.meta) == "used" else set()


def needed_features(strategies: Iterable[tuple[str, dict]], ordering_names: Iterable[str]) -> set[str]:
    needs: set[str] = set()
    for name, params in strategies:
        needs |= strategy_needs(name, params)
    for name in ordering_names:
        needs.update(ORDERINGS.get(name).meta.get("needs", ()))
    return needs
