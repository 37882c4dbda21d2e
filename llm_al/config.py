"""Experiment configuration: dataclass defaults, YAML recipes as deltas, `key=value` overrides.

The dataclasses are the single source of defaults. A recipe states only what differs; dotted
command-line overrides (`train.lr=5e-4 budget=200`) come last. Unknown keys are errors with a
suggestion; every value is validated before any work starts. Every result embeds the resolved
config, so a run can be reproduced from its result file alone.

Over 450 lines because every section's defaults, documentation and validation live together, one
dataclass per section (splitting them would split the one place a user reads for a key).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from llm_al.data.demo import EMBEDDED_POOL
from llm_al.data.reference import is_hub_id
from llm_al.errors import ConfigError, UnknownNameError, UserError
from llm_al.metrics_evaluate import builtin_names, is_evaluate_spec, load_evaluate_metric, naming_help
from llm_al.models import DTYPES, EMBEDDED_EMBEDDER, EMBEDDED_MODEL
from llm_al.registries import METRICS, ORDERINGS, STRATEGIES, TASKS, provided_names
from llm_al.registry import did_you_mean
from llm_al.types import FEATURE_NAMES

DESIGNS = ("paired", "grid", "grid_tied")
"""How runs are laid out over seeds (see run/grid.py)."""


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `5e-4` as a string; recipes mean a float."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def yaml_value(text: str):
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as err:
        raise ConfigError(f"cannot read {text[:80]!r} as YAML: {str(err).splitlines()[0]}") from None


@dataclass
class DataConfig:
    pool: str = EMBEDDED_POOL
    """A JSONL/JSON/CSV/Parquet file, a saved `datasets` folder, a hub dataset id, or embedded:django-en-fr."""
    test: str | None = None
    """The held-out test set. None: the embedded pool's fixed test set, else a seeded split of the pool."""
    test_size: float = 50
    """Size of the seeded split when `test` is None (a count, or a fraction below 1)."""
    fields: dict[str, str] | None = None
    """Explicit column mapping, e.g. {prompt: question, response: answer}."""
    split: str = "train"
    """Split to read from a `datasets` folder or hub dataset."""
    system_prompt: str | None = None
    """Prepended to examples without a system turn. None: the embedded pool's own, else none."""
    max_pool: int | None = None
    """Keep a seeded random sample of this many pool examples (None: all)."""
    max_test: int | None = None
    """Keep the first this many test examples (None: all)."""
    source_lang: str | None = None
    """Translation pools: the source language of pairs whose records name none (e.g. English)."""
    target_lang: str | None = None
    """Translation pools: the target language of pairs whose records name none (e.g. fr or French)."""

    def __post_init__(self) -> None:
        if isinstance(self.pool, str) and self.pool.startswith("embedded:"):
            TASKS.get(self.pool[len("embedded:"):])          # an unknown task lists the valid ones


@dataclass
class ModelConfig:
    name: str = EMBEDDED_MODEL
    """Causal LM to score, fine-tune and evaluate: embedded default, hub id or local folder."""
    embedder: str = EMBEDDED_EMBEDDER
    """sentence-transformers model for embedding features (hub id or local folder), or `model`: the
    causal LM's own final hidden states, position-weighted mean-pooled over every token of each
    formatted example and L2-normalised (SGPT / RDS+), from the same pass as the losses and cached
    beside them (llm_al.features.pooling). `model` needs labelled examples and has no use for
    plain reference passages (ref_similarity)."""
    scorer: str | None = None
    """A second, small causal LM for scorer_ifd (Superfiltering); None: not configured."""
    device: str = "auto"
    """auto (CUDA if present, else CPU), cpu, cuda, cuda:1, ..."""
    dtype: str = "auto"
    """Weights dtype: auto (bfloat16 on GPU, float32 on CPU), float32, bfloat16 or float16."""
    trust_remote_code: bool = False
    """Run model code shipped with a checkpoint. Off unless you trust the checkpoint."""
    max_length: int = 256
    """Tokens per example (prompt + response) for scoring and training."""
    score_max_tokens: int = 4096
    """Padded tokens per scoring batch."""


    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"model.dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")


@dataclass
class TrainConfig:
    epochs: int = 1
    """Passes over the subset; each replays the same order. (Defaults fit the 2-core CPU demo.)"""
    batch_size: int = 4
    lr: float = 1e-3
    """AdamW learning rate for the adapter."""
    schedule: str = "constant"
    """"constant" or "linear" (decay to 0 over all steps)."""
    warmup_steps: int = 0
    weight_decay: float = 0.0
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    """0 by default: peft's dropout adds ~1/3 to a CPU step, and is one more source of randomness."""
    target_modules: str | list[str] = "all-linear"
    """peft target modules: "all-linear" or a list of module names."""
    max_grad_norm: float = 1.0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "lora_r"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr}")
        if self.schedule not in ("constant", "linear"):
            raise ConfigError(f"train.schedule must be 'constant' or 'linear', got {self.schedule!r}")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"train.lora_dropout must be in [0, 1), got {self.lora_dropout}")


@dataclass
class EvalConfig:
    metrics: list[str] = field(default_factory=lambda: ["chrf", "bleu", "rougeL", "exact_match"])
    """Built-in metrics (`llm-al list`) and any Hugging Face `evaluate` metric: `evaluate:<hub id>`, a
    local script `path/to/m.py` or folder `./m`, with `;key=...;higher_is_better=...;range=0..1` where
    the metric does not declare them (llm_al.metrics_evaluate). Each evaluate metric is loaded and
    checked here, before any work (3-5 s for the `evaluate` import, once per process)."""
    primary: str = "chrf"
    """The metric the comparison table and the verdicts use."""
    max_new_tokens: int = 64
    batch_size: int = 50

    def __post_init__(self) -> None:
        for name in self.metrics:
            if is_evaluate_spec(name):
                load_evaluate_metric(name)
            elif name not in METRICS:
                raise UnknownNameError(f"eval.metrics: unknown metric {name!r}."
                                       f"{did_you_mean(name, builtin_names())} {naming_help()}")
        if self.primary not in self.metrics:
            raise ConfigError(f"eval.primary {self.primary!r} is not among eval.metrics {self.metrics}")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ConfigError("eval.max_new_tokens and eval.batch_size must be >= 1")


@dataclass
class LoopConfig:
    rounds: int = 0
    """Acquisition rounds after the seed set; 0 = one-shot selection (no loop)."""
    seed_size: int = 20
    """Examples in the seed set; the rest of the budget is split evenly over the rounds."""
    seed_strategy: str = "random"
    """How the seed set is chosen (any strategy)."""

    def round_size(self, budget: int) -> int:
        if self.rounds < 1:
            raise ConfigError("loop.rounds must be >= 1 for a loop")
        extra = budget - self.seed_size
        if self.seed_size < 1 or extra < self.rounds or extra % self.rounds:
            raise ConfigError(f"budget {budget} - loop.seed_size {self.seed_size} = {extra} must split evenly "
                              f"into loop.rounds {self.rounds} rounds of at least 1 example")
        return extra // self.rounds

    def __post_init__(self) -> None:
        if self.rounds < 0:
            raise ConfigError(f"loop.rounds must be >= 0, got {self.rounds}")
        STRATEGIES.get(self.seed_strategy)


@dataclass
class ProbeConfig:
    """Settings of the probes (config section `probe`)."""

    seed: int = 0
    """Seed of every random draw a probe makes (dropout masks, sampled generations, bootstraps)."""
    mc_passes: int = 8
    """Stochastic passes K of the `mc_dropout` probe (bald, mc_disagreement); >= 2."""
    mc_dropout: float = 0.1
    """Dropout p the `mc_dropout` probe applies to the decoder's Linear inputs during its passes; in (0, 1)."""
    committee_size: int = 3
    """LoRA adapters in the `committee` probe (qbc), each trained on a bootstrap of the labelled set; >= 2."""
    ngram_max: int = 2
    """Longest word n-gram the `ngrams` probe counts (n = 1..ngram_max; llm_al.strategies.lexical)."""
    gen_samples: int = 4
    """Sampled answers per prompt for the `sampled` probe (gen_disagreement, bleu_variance); >= 2."""
    gen_temperature: float = 1.0
    """Sampling temperature of the `sampled` probe (no top-k / top-p truncation)."""
    targets: str | None = None
    """The target set of the `rds_targets` probe (strategy rds): examples of the data to do well on, a
    file (or datasets folder, hub id) in any pool format, read as the pool is (data.fields, the pool's
    load-time system prompt); a record's `task` groups them. None: the embedded task's dev split
    (llm_al.data.tasks.dev_records) when data.pool is embedded:NAME, else rds is an error."""

    def __post_init__(self) -> None:
        for name, lo in (("mc_passes", 2), ("committee_size", 2), ("ngram_max", 1), ("gen_samples", 2)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise ConfigError(f"probe.{name} must be an integer >= {lo}, got {value!r}")
        if not 0 <= self.mc_dropout < 1:
            raise ConfigError(f"probe.mc_dropout must be in [0, 1), got {self.mc_dropout!r}")
        if not self.gen_temperature > 0:
            raise ConfigError(f"probe.gen_temperature must be > 0, got {self.gen_temperature!r}")
        if self.targets is not None and not (isinstance(self.targets, str) and self.targets
                                             and (Path(self.targets).expanduser().exists() or is_hub_id(self.targets))):
            raise ConfigError(f"probe.targets must name an existing file or folder of target examples (or a hub "
                              f"dataset id), got {self.targets!r}")


@dataclass
class OverlapConfig:
    reference: str | None = "pydoc"
    """Pre-training-like reference corpus for overlap columns: "pydoc" (the standard library's
    Python reference prose, a small stand-in for a real pre-training sample), a text file, JSON
    Lines, any of those gzip-compressed, a .parquet file, a datasets save_to_disk folder, a folder of
    such shards, or a hub dataset id (streamed; online only); see llm_al/data/reference.py. None: no
    reference overlap."""
    reference_field: str = "text"
    """The text field (column) of a row-format reference: JSON Lines, Parquet, datasets, hub."""
    reference_split: str = "train"
    """The split of a reference saved as a DatasetDict, or of a hub dataset."""
    n: int = 8
    """Word n-gram length for overlap with the reference and with the test set."""
    sample_passages: int = 2000
    """ref_similarity: reference passages sampled (seeded reservoir over the streamed corpus) and
    embedded once, then cached; fewer if the corpus has fewer passages."""
    passage_words: int = 64
    """ref_similarity: words (whitespace tokens) per reference passage."""
    neighbours: int = 5
    """ref_similarity: an example's score is its mean cosine to this many nearest passages."""
    sample_seed: int = 0
    """ref_similarity: seed of the passage sample."""

    def __post_init__(self) -> None:
        for key in ("n", "sample_passages", "passage_words", "neighbours"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"overlap.{key} must be a positive integer, got {value!r}")


@dataclass
class RunConfig:
    pack_size: int | str = "auto"
    """Runs trained and evaluated together in one grouped pass (llm_al/run/packed.py): a positive
    integer, "auto" (run/packed.py pack_size: 4 on CPU, from the free memory on a GPU), or "off"
    (each run alone through train_lora and evaluate: the reference path). A pack of 1 still runs
    the shared prompt prefix once per step. Packing changes no run's seeds or data, only float
    rounding, so it is not part of a run's identity: a sweep resumes across a change of it."""

    def __post_init__(self) -> None:
        ok = self.pack_size in ("auto", "alone") or (isinstance(self.pack_size, int)
                                                   and not isinstance(self.pack_size, bool) and self.pack_size >= 1)
        if not ok:
            raise ConfigError(f"run.pack_size must be a positive integer, auto or alone, got {self.pack_size!r}")


@dataclass
class ExperimentConfig:
    name: str = "demo"
    out_dir: str = "runs/demo"
    """Results go here: one JSON per run, summary.json, table.md/.csv. Re-running resumes."""
    strategies: list[str] = field(default_factory=lambda: ["random", "perplexity", "kcenter"])
    """Strategy specs, `name` or `name:key=value,...` (e.g. perplexity:band=middle). random is always run."""
    orderings: list[str] = field(default_factory=lambda: ["shuffled"])
    """How each subset is ordered for training; several = a curriculum comparison (llm-al list)."""
    budget: int = 100
    budgets: list[int] = field(default_factory=list)
    """A sweep over budgets (learning curve over budgets); empty = just `budget`. Runs at `budget`
    keep their ids, so adding budgets to an experiment reuses its runs."""
    design: str = "paired"
    """paired (run k uses seed k for subset, order and init), grid (subset_seeds x order_seeds x
    init_seeds) or grid_tied (subset_seeds x order_seeds, init seed = order seed). See llm_al/run/grid.py."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4, 5])
    """Run seeds of the paired design. Each derives separate subset, data-order and init streams. Six
    by default: the fewest at which a paired sign-flip test can reach p < 0.05 (2 / 2^6 = 0.031);
    the demo's 18 runs take ~7.5 min on a 2-core CPU, packed (eval/results/demo-cpu.md)."""
    subset_seeds: list[int] = field(default_factory=lambda: [0])
    """Grid designs: the subsets (for random, G different subsets)."""
    order_seeds: list[int] = field(default_factory=lambda: [0])
    """Grid designs: the data orders of each subset."""
    init_seeds: list[int] = field(default_factory=lambda: [0])
    """Grid design: the adapter initialisations."""
    features: list[str] = field(default_factory=list)
    """Features to compute even if no strategy needs them, so every run records their subset means
    for correlation (loss, entropy, min_k, ifd, embeddings, ...)."""
    save_adapters: bool = True
    progress: bool = True
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    overlap: OverlapConfig = field(default_factory=OverlapConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    run: RunConfig = field(default_factory=RunConfig)

    @property
    def budget_list(self) -> list[int]:
        return list(self.budgets) or [self.budget]

    def __post_init__(self) -> None:
        if "random" not in [parse_strategy(s)[0] for s in self.strategies]:
            self.strategies = ["random", *self.strategies]
        for spec in self.strategies:                 # names and parameter values, before any work
            STRATEGIES.check(*parse_strategy(spec))
        for name in self.orderings:
            ORDERINGS.check(name)
        valid = (*FEATURE_NAMES, *provided_names())
        for name in self.features:
            if name not in valid:
                raise ConfigError(f"unknown feature {name!r} in features; valid: {', '.join(valid)}")
        if not self.orderings or len(set(self.orderings)) != len(self.orderings):
            raise ConfigError(f"orderings must be a non-empty list of distinct names, got {self.orderings!r}")
        for b in [self.budget, *self.budgets]:
            if not isinstance(b, int) or isinstance(b, bool) or b < 1:
                raise ConfigError(f"budget must be a positive integer, got {b!r} (in budget/budgets)")
        if len(set(self.budgets)) != len(self.budgets):
            raise ConfigError(f"budgets are listed twice: {self.budgets}")
        if self.loop.rounds:
            for b in self.budget_list:
                self.loop.round_size(b)                # each budget must split into the rounds
        if self.design not in DESIGNS:
            raise ConfigError(f"design must be one of {', '.join(DESIGNS)}, got {self.design!r}")
        for key in ("seeds", "subset_seeds", "order_seeds", "init_seeds"):
            value = getattr(self, key)
            if not value or len(set(value)) != len(value):
                raise ConfigError(f"{key} must be a non-empty list of distinct integers, got {value!r}")
        if len(set(self.strategies)) != len(self.strategies):
            raise ConfigError(f"strategies are listed twice: {self.strategies}")


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets and braces: 'a=1,w={x: 1, y: 2}' -> ['a=1', 'w={x: 1, y: 2}']."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return [*parts, cur]


def parse_strategy(spec: str) -> tuple[str, dict[str, Any]]:
    """'perplexity:band=middle,x=1' -> ('perplexity', {'band': 'middle', 'x': 1})."""
    name, _, rest = str(spec).partition(":")
    params: dict[str, Any] = {}
    for part in filter(None, _split_top_level(rest)):
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"strategy spec {spec!r}: expected name:key=value,..., got {part!r}")
        params[key.strip()] = yaml_value(value)
    return name.strip(), params


# ---------------------------------------------------------------------------- building
def task_alias(delta: dict) -> dict:
    """A recipe's or override's top-level `task: NAME` as `data.pool: embedded:NAME`."""
    if "task" not in delta:
        return delta
    delta = dict(delta)
    task = delta.pop("task")
    if not isinstance(task, str) or not task:
        raise ConfigError(f"task must be the name of an embedded task (llm-al tasks), got {task!r}")
    data = dict(delta.get("data") or {})
    pool = data.get("pool")
    if pool is not None and pool != "embedded:" + task:
        raise ConfigError(f"task={task!r} and data.pool={pool!r} both name the pool: keep one")
    data["pool"] = "embedded:" + task
    delta["data"] = data
    return delta


def _merge(base: dict, delta: dict, cls: type, prefix: str = "") -> dict:
    """Deep-merge `delta` into `base`, rejecting keys the dataclass `cls` does not have."""
    known = {f.name: f for f in fields(cls)}
    out = dict(base)
    for key, value in delta.items():
        if key not in known:
            raise UnknownNameError(
                f"unknown config key {prefix + key!r}.{did_you_mean(key, list(known))} "
                f"Valid keys{' under ' + prefix.rstrip('.') if prefix else ''}: {', '.join(known)}"
            )
        sub = _dataclass_type(known[key])
        if sub is not None:
            if not isinstance(value, dict):
                raise ConfigError(f"config key {prefix + key!r} is a section; give it a mapping, got {value!r}")
            out[key] = _merge(base[key], value, sub, prefix + key + ".")
        else:
            out[key] = value
    return out


def _dataclass_type(f: dataclasses.Field) -> type | None:
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return type(default) if is_dataclass(default) else None


def _type_ok(value: Any, hint: Any) -> bool:
    """Does `value` (from YAML) fit the annotation `hint`? Ints pass for floats."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, dict):
        return isinstance(value, origin)
    return isinstance(value, hint) if isinstance(hint, type) else True


def _build(cls: type, values: dict, prefix: str = "") -> Any:
    kwargs = {}
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        sub = _dataclass_type(f)
        if sub is not None:
            kwargs[f.name] = _build(sub, values[f.name], prefix + f.name + ".")
            continue
        if not _type_ok(values[f.name], hints[f.name]):
            hint = hints[f.name]
            hint = hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
            raise ConfigError(f"config key {prefix + f.name!r} must be {hint}, got {values[f.name]!r}")
        kwargs[f.name] = values[f.name]
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"invalid config for {cls.__name__}: {err}") from None


def parse_overrides(overrides: list[str]) -> dict:
    """['train.lr=5e-4', 'budget=200'] -> {'train': {'lr': 0.0005}, 'budget': 200}."""
    delta: dict = {}
    for item in overrides:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ConfigError(f"override {item!r} is not key=value (e.g. train.lr=5e-4)")
        node = delta
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml_value(value) if value != "" else None
    return delta


def load_config(recipe: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    values = dataclasses.asdict(ExperimentConfig())
    if recipe is not None:
        path = Path(recipe)
        if not path.exists():
            raise UserError(f"recipe {str(path)!r} does not exist")
        try:
            delta = yaml_value(path.read_text(encoding="utf-8")) or {}
        except ConfigError as err:
            raise ConfigError(f"{path}: not a valid recipe: {err}") from None
        if not isinstance(delta, dict):
            raise ConfigError(f"{path}: a recipe must be a mapping of config keys, got {type(delta).__name__}")
        values = _merge(values, task_alias(delta), ExperimentConfig)
    values = _merge(values, task_alias(parse_overrides(overrides or [])), ExperimentConfig)
    return _build(ExperimentConfig, values)


def to_dict(cfg: ExperimentConfig) -> dict:
    return dataclasses.asdict(cfg)


def config_from(source: ExperimentConfig | str | Path | None = None, delta: dict | None = None) -> ExperimentConfig:
    """A validated config from a recipe file (None: the defaults) or an existing config, with `delta`
    merged in last: a nested mapping ({"train": {"lr": 5e-4}}) or dotted keys ({"train.lr": 5e-4})."""
    values = dataclasses.asdict(source if isinstance(source, ExperimentConfig) else load_config(source))
    nested: dict = {}
    for key, value in (delta or {}).items():
        node, parts = nested, key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        if isinstance(value, dict) and isinstance(node.get(parts[-1]), dict):
            node[parts[-1]].update(value)
        else:
            node[parts[-1]] = value
    return _build(ExperimentConfig, _merge(values, task_alias(nested), ExperimentConfig))
