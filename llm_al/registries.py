"""The registries, one per kind of plug-in, each knowing the module whose import fills it.

They live here, below every layer, so that `config` can check a strategy or ordering name without
importing the strategies (the first lookup imports the home module; see registry.Registry). The
plug-ins register where they are defined:

    @STRATEGIES.register(name, description, needs=(...), labelled="used: ..." or "ignored: ...")
                                                            in a module of llm_al/strategies/
    @PROBES.register(name, description, provides=(...))     beside the strategies that use the scores
    @ORDERINGS.register(name, description, needs=(...))     in llm_al/orderings.py
    @METRICS.register(name, description, higher_is_better=...)   in llm_al/metrics.py
    @TASKS.register(name, description, source=..., licence=...)  in llm_al/data/tasks.py
"""

from __future__ import annotations

import re
from typing import Any, Callable

from llm_al.registry import Registry

StrategyFn = Callable[..., "object"]
"""fn(features, budget, rng, **params) -> types.Selection"""
ProbeFn = Callable[..., "tuple[dict, dict]"]
"""fn(ctx: features.probes.ProbeContext) -> (scores by name, cost)"""
MetricFn = Callable[..., "tuple[float, object]"]
"""fn(predictions, references) -> (corpus score, (N,) per-example scores), on a 0-100 scale"""
TaskFn = Callable[[], "object"]
"""fn() -> data.tasks.TaskData (the pool and test records of an embedded task)"""
OrderingFn = Callable[..., "object"]
"""fn(indices, features, rng) -> a permutation of indices (see orderings.py)"""


# ---------------------------------------------------------------------------- the labelled set
LABELLED_META = re.compile(r"(used|ignored): \S.*", re.DOTALL)


def check_strategy_meta(name: str, meta: dict[str, Any]) -> str | None:
    """Every strategy says whether it reads the labelled set (`Features.labelled`): `labelled=
    "used: <how>"` or `"ignored: <why>"`. Required, with no default: a default of "ignored" would
    let a new diversity strategy skip the labelled set unnoticed (as every strategy did before the
    loop passed it), and a default of "used" would claim what the code may not do."""
    value = meta.get("labelled")
    if isinstance(value, str) and LABELLED_META.fullmatch(value):
        return None
    return (f"strategy {name!r} must say whether it reads the labelled set (Features.labelled): register it "
            f"with labelled='used: <how>' or labelled='ignored: <why>'; got labelled={value!r}")


def labelled_use(meta: dict[str, Any]) -> str:
    """"used" or "ignored": the first word of a strategy's `labelled` registration."""
    return str(meta["labelled"]).split(":", 1)[0]


STRATEGIES: Registry[StrategyFn] = Registry("strategy", "strategies", home="llm_al.strategies",
                                            check_meta=check_strategy_meta)
PROBES: Registry[ProbeFn] = Registry("probe", home="llm_al.strategies")
ORDERINGS: Registry[OrderingFn] = Registry("ordering", home="llm_al.orderings")
METRICS: Registry[MetricFn] = Registry("metric", home="llm_al.metrics")
TASKS: Registry[TaskFn] = Registry("task", home="llm_al.data.tasks")


# ---------------------------------------------------------------------------- probe lookups
def provider(feature: str):
    """The registered probe that provides `feature`, or None."""
    for name in PROBES.names():
        entry = PROBES.get(name)
        if feature in entry.meta.get("provides", ()):
            return entry
    return None


def provided_names() -> list[str]:
    return sorted(f for name in PROBES.names() for f in PROBES.get(name).meta.get("provides", ()))


def matrix_names() -> list[str]:
    """Provided names that are (N, D) matrices (e.g. sparse n-gram counts; a probe lists them in
    its `matrices` meta), not per-example scores: no strategy may rank or average them as one."""
    return sorted(f for name in PROBES.names() for f in PROBES.get(name).meta.get("matrices", ()))


def needs_model(features: set[str]) -> bool:
    return any(provider(f) is not None and provider(f).meta.get("needs_model", True) for f in features)


def hint(feature: str) -> str | None:
    entry = provider(feature)
    return None if entry is None else f"the {entry.name!r} probe ({entry.description})"
