"""The public Python API: what `llm-al select`, `llm-al run` and `llm-al report` do, callable from a
notebook or a script. The command line is a thin layer over these functions, so both take one path.

    from llm_al import api

    pool = api.load_pool("pool.jsonl")                      # a file, a datasets folder, a hub id
    picks = api.select(pool, "kcenter", budget=50, seed=0)  # any strategy of `llm-al list`
    more = api.select(pool, "kcenter", budget=20, labelled=api.load_pool("chosen.jsonl"))   # 20 more
    steps = api.order(pool, picks, "shuffled", seed=0)      # the training order (pool positions)
    summary = api.run("recipes/quickstart.yaml", budget=50, out_dir="runs/b50", **{"train.lr": 5e-4})
    table = api.compare("runs/b50")                         # strategy vs random, one dict per row

`select` returns a plain list of `Pick`s rather than a `datasets.Dataset`: the picks carry their
pool position, rank, score and reason next to the `Example` itself, they need no Arrow schema for
the optional explanation columns, and `api.select(...)[i].example` stays the same object the pool
holds. `write_subset(pool, [p.index for p in picks], path)` (llm_al.data.export) writes them in the
pool's own format, which is what `llm-al select` does.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from llm_al.analysis.writeup import comparisons, load_results, write_report
from llm_al.config import DataConfig, ExperimentConfig, ModelConfig, config_from, parse_strategy
from llm_al.errors import BudgetError
from llm_al.data.demo import EMBEDDED_POOL
from llm_al.data.pool import Example, Pool
from llm_al.io import check_output
from llm_al.orderings import run_ordering
from llm_al.run.experiment import run_experiment
from llm_al.run.pipeline import compute_features, load_data
from llm_al.strategies.needs import labelled_needs, needed_features
from llm_al.seeds import rng
from llm_al.strategies.base import STRATEGIES, check_budget, run_strategy
from llm_al.strategies.explain import explain_selection
from llm_al.types import Features


@dataclass(frozen=True)
class Pick:
    """One chosen example."""

    rank: int                  # 1 = the strategy's first pick
    index: int                 # position in the pool
    id: str                    # the example's content id (stable across runs and file formats)
    example: Example
    score: float | None        # the value that drove this pick; None where none did (e.g. random)
    reason: str                # what `score` measures, e.g. "mean response loss (nats/token)"
    explanation: dict[str, Any] = field(default_factory=dict)
    """With explain=True: llm_al_cluster, llm_al_nearest_earlier_id, llm_al_nearest_earlier_sim."""


def load_pool(source: str = EMBEDDED_POOL, *, fields: dict[str, str] | None = None, system_prompt: str | None = None,
              split: str = "train", source_lang: str | None = None, target_lang: str | None = None,
              seed: int = 0) -> Pool:
    """The pool at `source` (JSONL/JSON/CSV/Parquet, a `datasets` folder, a hub id, or the embedded
    demo pool), read as `llm-al select` reads it: exact duplicates dropped, nothing held out."""
    cfg = DataConfig(pool=str(source), fields=fields, system_prompt=system_prompt, split=split,
                     source_lang=source_lang, target_lang=target_lang)
    return load_data(cfg, seed=seed, need_test=False).pool


def model_config(model: str | None = None, *, embedder: str | None = None, scorer: str | None = None,
                 device: str = "auto", max_length: int = 256, trust_remote_code: bool = False) -> ModelConfig:
    """The models `select` and `order` score with (None: the embedded defaults)."""
    cfg = ModelConfig(device=device, max_length=max_length, trust_remote_code=trust_remote_code, scorer=scorer)
    if model:
        cfg.name = model
    if embedder:
        cfg.embedder = embedder
    return cfg


def check_selection(pool: Pool, strategy: str, budget: int, labelled: Pool | None = None) -> tuple[str, dict[str, Any]]:
    """The checks a selection can make before any scoring (the strategy and its parameter values,
    the budget against the pool, less the `labelled` examples); returns the parsed (name, params)."""
    name, params = parse_strategy(strategy)
    STRATEGIES.check(name, params)
    check_budget(budget, len(pool))
    left = len(candidate_indices(pool, labelled))
    try:
        check_budget(budget, left)
    except BudgetError as err:
        err.args = (f"{err.args[0]} left once the {len(pool) - left} examples already in the labelled set are set "
                    f"aside (of {len(pool)})",)
        raise
    return name, params


def candidate_indices(pool: Pool, labelled: Pool | None) -> np.ndarray:
    """Pool positions of the examples whose prompt is not in `labelled` (all of them when None)."""
    if labelled is None:
        return np.arange(len(pool))
    known = {ex.prompt_id for ex in labelled.examples}
    return np.array([i for i, ex in enumerate(pool.examples) if ex.prompt_id not in known], dtype=np.int64)


def select(pool: Pool, strategy: str, budget: int, *, seed: int = 0, model: ModelConfig | None = None,
           explain: bool = False, features: Features | None = None, progress: bool = True,
           labelled: Pool | None = None, targets: str | None = None, data: DataConfig | None = None) -> list[Pick]:
    """`budget` examples of `pool` chosen by `strategy` (a spec: `name` or `name:key=value,...`), in
    pick order. The features the strategy needs are computed (and cached) with `model` (default:
    the embedded models), unless `features` for this pool are given. Same seed, same picks as
    `llm-al select --seed`. `labelled`: examples already chosen ("I have these, pick `budget`
    more"), e.g. an earlier selection: pool examples with one of their prompts are never picked,
    and a strategy registered labelled="used: ..." (`llm-al list`) picks away from them. `targets`:
    the target set of `rds` (config probe.targets), a file of examples of the data to do well on
    (default: the embedded task's dev split, for an embedded:NAME pool), read with `data`'s field
    mapping, split and languages (the pool's, as `llm-al select` passes them)."""
    name, params = check_selection(pool, strategy, budget, labelled)
    if features is None:
        needs = needed_features([(name, params)], []) | ({"embeddings"} if explain else set())
        cfg = config_from(None, {"probe.targets": targets, **({"data": asdict(data)} if data else {})}) if targets else None
        features = compute_features(pool, needs, model or ModelConfig(), progress=progress, cfg=cfg)
    candidates, chosen_from = candidate_indices(pool, labelled), features
    if labelled is not None:
        lab = labelled_set_features(pool, labelled, features, labelled_needs(name), model, progress)
        chosen_from = features.take(candidates).with_labelled(lab)
    sel = run_strategy(name, chosen_from, budget, rng(seed, "subset"), **params)
    indices = candidates[sel.indices]                        # pool positions
    columns = explain_selection(features, indices, pool.ids, np.random.default_rng(seed)) if explain else {}
    return [Pick(rank=k + 1, index=int(i), id=pool.ids[i], example=pool.examples[i],
                 score=None if s != s else float(s), reason=sel.score_name,
                 explanation={col: values[k] for col, values in columns.items()})
            for k, (i, s) in enumerate(zip(indices, sel.scores))]


def labelled_set_features(pool: Pool, labelled: Pool, features: Features, needs: set[str],
                          model: ModelConfig | None, progress: bool) -> Features:
    """Features of the `labelled` examples: their rows of the pool's `features` when every one of
    them is a pool example (matched by prompt), else computed for them (the disk cache makes the
    ones also in the pool cheap). Only `needs`: what the strategy reads from a labelled set."""
    row = {ex.prompt_id: i for i, ex in enumerate(pool.examples)}
    rows = [row[ex.prompt_id] for ex in labelled.examples if ex.prompt_id in row]
    if len(rows) == len(labelled) and all(features.get(f) is not None for f in needs):
        return features.take(rows)
    return compute_features(labelled, needs, model or ModelConfig(), progress=progress)


def order(pool: Pool, picks: Sequence[Pick] | Sequence[int], ordering: str = "shuffled", *, seed: int = 0,
          model: ModelConfig | None = None, features: Features | None = None, progress: bool = True) -> list[int]:
    """The training order of a selection under `ordering` (`llm-al list`): pool positions, first
    trained on first. `seed` is the run seed whose data-order stream `llm-al run` would use."""
    indices = np.array([p.index if isinstance(p, Pick) else int(p) for p in picks], dtype=np.int64)
    if features is None:
        features = compute_features(pool, needed_features([], [ordering]), model or ModelConfig(), progress=progress)
    return [int(i) for i in run_ordering(ordering, indices, features, rng(seed, "order"))]


def configure(recipe_or_config: ExperimentConfig | str | Path | None = None, **overrides: Any) -> ExperimentConfig:
    """The experiment config `run` would use: a recipe file, a config, or None (the defaults), with
    `overrides` as keyword arguments (`budget=50`, `train={"lr": 5e-4}` or `**{"train.lr": 5e-4}`)."""
    if isinstance(recipe_or_config, ExperimentConfig) and not overrides:
        return recipe_or_config
    return config_from(recipe_or_config, overrides)


def run(recipe_or_config: ExperimentConfig | str | Path | None = None, **overrides: Any) -> dict:
    """Run an experiment (as `llm-al run RECIPE key=value ...`) and return its summary (what
    summary.json holds). The results go to the config's out_dir; a second call resumes there. An
    out_dir that is one of the run's input files, a file, or unwritable is a UserError before any
    work."""
    cfg = configure(recipe_or_config, **overrides)
    check_output(cfg.out_dir, [cfg.data.pool, cfg.data.test], folder=True, label="out_dir")
    return run_experiment(cfg)


def compare(results_dir: str | Path) -> list[dict]:
    """The comparison table of a results directory as data: one dict per (strategy, ordering,
    budget), against the random runs of the same ordering and budget (the rows of the report's
    "Strategies vs random" table and strategies.csv). A group that could not be compared has
    `compared: False` and `reason`."""
    c, _, _ = load_results(results_dir)
    results, tested = comparisons(c)
    return [{**tested[k], "compared": True} if k in tested else
            {"label": c.label(*k), "strategy": k[0], "ordering": k[1], "budget": k[2], "compared": False,
             "reason": str(results[k])}
            for k in results]


def report(results_dir: str | Path, out: str | Path | None = None) -> dict[str, Path]:
    """Write the `llm-al report` write-up (Markdown, HTML, plots, CSV) of a results directory."""
    check_output(out if out is not None else Path(results_dir) / "report", folder=True)
    return write_report(results_dir, out)
