"""Any Hugging Face `evaluate` metric as an llm_al metric, named in `eval.metrics` beside the built-ins.

A metric name that is not a built-in (chrf, bleu, rougeL, exact_match) is read as an `evaluate` spec:

    evaluate:<hub id>[;options]    a metric on the Hugging Face Hub (`evaluate:chrf`, `evaluate:user/m`),
                                   passed to `evaluate.load`: needs the network or evaluate's cache
    <path>.py[;options]            a local metric script (one `evaluate.Metric` subclass in the file)
    <path with a />[;options]      a local folder `x/` holding `x.py` (evaluate's rule), e.g. `./metrics/ter`

Local paths load offline and are relative to the working directory. Options follow the name, each
after a `;` (as in `text/plain; charset=utf-8`; `?` and `,` would break a YAML flow list such as the
override `eval.metrics=[chrf,evaluate:chrf;key=score]`):

    key=<field>                    which field of `compute()`'s result is the score
    higher_is_better=true|false    the metric's direction
    range=<lo>..<hi>               its documented range (`0..1`, `0..100`, `0..inf`)

Direction and range come from the metric's own metadata where it has any: evaluate 0.4.6's
`EvaluationModuleInfo` has no such fields (description, citation, features, homepage, licence, urls,
...; nor do the metric cards' YAML headers), so the only metadata read is a class attribute
`higher_is_better` / `score_range` / `score_key` on the metric (or its info), which a local script
can declare. Where neither the metric nor the name says, loading stops with a ConfigError saying
which option to add; nothing is guessed. An option that contradicts the metric's own declaration is
an error too. `key` may be left out when the result has a numeric field named after the metric
(evaluate's convention: `bleu`, `exact_match`, `accuracy`) or exactly one numeric field.

Scale: llm_al metrics are on a 0-100 scale. A metric whose range is [0, 1] is multiplied by 100; one
on [0, 100] is kept as is; any other range (`0..inf`, `-1..1`) keeps the metric's own values, and
the entry's description and `scale` meta say so. A value outside the stated range is an error.

Per-example scores (for paired statistics): `compute()` is called once on the whole test set for
the corpus score and once more on each (prediction, reference) pair alone, so scoring N examples
costs N + 1 compute calls (about 4 ms of evaluate overhead each, plus the metric's own work). For a
corpus-level metric (BLEU) a one-pair score is that metric's sentence-level score, as sacrebleu's
own sentence_bleu is for the built-in.

When: `EvalConfig.__post_init__` loads each spec (`load_evaluate_metric`), so a bad name, a hub
metric that cannot load offline or an undeclared direction fails at config time, before any
training. That costs the `evaluate` import (3-5 s, once per process) plus one probe computation on
two pairs; configs naming only built-ins never import evaluate. The loaded metric is registered in
`METRICS` under its spec, so every later `METRICS.get(spec)` in the process finds it.
"""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from llm_al.errors import ConfigError, UserError
from llm_al.registries import METRICS
from llm_al.registry import Entry, did_you_mean

PREFIX = "evaluate:"
OPTIONS = ("key", "higher_is_better", "range")
PROBE = (["the cat sat on the mat", "a small test"], ["the cat sat on the mat", "something else entirely"])
"""(predictions, references) computed once at load time: it finds the result's fields and checks
the metric runs and stays inside its range before any training."""


def builtin_names() -> list[str]:
    """The metrics registered in llm_al (not the evaluate specs loaded so far)."""
    return [e.name for e in METRICS if e.meta.get("source") != "evaluate"]


def naming_help() -> str:
    """How to name an evaluate metric, for error messages."""
    return (f"Built-in metrics: {', '.join(builtin_names())}. Any Hugging Face `evaluate` metric can be named too: "
            f"'evaluate:<hub id>' (needs the network or evaluate's cache), or the path of a local metric script "
            f"('path/to/my_metric.py') or folder ('./my_metric', holding my_metric.py), followed by "
            f"';key=<result field>;higher_is_better=true|false;range=0..1' where the metric does not declare them.")


def is_evaluate_spec(name: str) -> bool:
    """True for `evaluate:...`, a path ending in .py, or a path with a / (options after ; ignored)."""
    target = name.split(";", 1)[0]
    return name.startswith(PREFIX) or target.endswith(".py") or "/" in target


def _offline() -> bool:
    return any(os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE")
               for v in ("HF_HUB_OFFLINE", "HF_EVALUATE_OFFLINE"))


def parse_spec(spec: str) -> tuple[str, bool, dict[str, Any]]:
    """(what evaluate.load gets, whether it is a local path, the options) of a spec; ConfigError
    for an unknown option, a bad value or a local path that does not exist."""
    target, _, query = spec.partition(";")
    local = not spec.startswith(PREFIX)
    if not local:
        target = target[len(PREFIX):]
    if not target:
        raise ConfigError(f"eval.metrics: {spec!r} names no metric. {naming_help()}")
    options: dict[str, Any] = {}
    for item in filter(None, query.split(";")):
        key, eq, value = item.partition("=")
        if key not in OPTIONS or not eq:
            raise ConfigError(f"eval.metrics: {spec!r}: option {item!r} is not key=value with a known key."
                              f"{did_you_mean(key, list(OPTIONS))} Options: {', '.join(OPTIONS)}")
        options[key] = _option_value(spec, key, value)
    if local and not Path(target).expanduser().exists():
        raise ConfigError(f"eval.metrics: local evaluate metric {target!r} does not exist (looked for "
                          f"{Path(target).expanduser().resolve()}). {naming_help()}")
    return target, local, options


def _option_value(spec: str, key: str, value: str) -> Any:
    if key == "higher_is_better":
        if value.lower() not in ("true", "false"):
            raise ConfigError(f"eval.metrics: {spec!r}: higher_is_better must be true or false, got {value!r}")
        return value.lower() == "true"
    if key == "range":
        lo, dots, hi = value.partition("..")
        try:
            bounds = (float(lo), float(hi))
        except ValueError:
            bounds = None
        if not dots or bounds is None or math.isnan(bounds[0] + bounds[1]) or not bounds[0] < bounds[1]:
            raise ConfigError(f"eval.metrics: {spec!r}: range must be <lo>..<hi> with lo < hi "
                              f"(e.g. 0..1, 0..100, 0..inf), got {value!r}")
        return bounds
    if not value:
        raise ConfigError(f"eval.metrics: {spec!r}: key= names no field")
    return value


def _load_module(spec: str, target: str, local: bool):
    """evaluate.load(target), its failure a ConfigError naming the metric, the cause and the options."""
    if _offline():                       # evaluate 0.4.6 reads only its own variable, at import
        os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
    import evaluate

    try:
        return evaluate.load(str(Path(target).expanduser()) if local else target, keep_in_memory=True)
    except Exception as err:             # noqa: BLE001  (evaluate raises many kinds; all mean "cannot load")
        why = str(err).splitlines()[0].rstrip(".") if str(err) else type(err).__name__
        note = ""
        if not local and _offline():
            note = (" This machine is offline (HF_HUB_OFFLINE/HF_EVALUATE_OFFLINE): a hub metric loads only from "
                    "evaluate's cache; copy the metric's script here and name its .py path instead.")
        raise ConfigError(f"eval.metrics: cannot load evaluate metric {spec!r}: {why}.{note} {naming_help()}") from None


def _declared(module, attr: str) -> Any:
    """A class attribute the metric (or its info) declares, else None."""
    for owner in (module, getattr(module, "info", None)):
        value = getattr(owner, attr, None)
        if value is not None:
            return value
    return None


def _reference_wrap(spec: str, module) -> Callable[[str], Any]:
    """How one reference string is passed: as is, or as a one-item list (metrics taking several references)."""
    formats = module.info.features
    formats = formats if isinstance(formats, list) else [formats]
    wraps = []
    for feats in formats:
        pred, ref = feats.get("predictions"), feats.get("references")
        if not _is_text(pred):
            continue
        if _is_text(ref):
            return lambda r: r
        inner = ref[0] if isinstance(ref, list) and len(ref) == 1 else getattr(ref, "feature", None)
        if _is_text(inner):
            wraps.append(lambda r: [r])
    if wraps:
        return wraps[0]
    raise ConfigError(f"eval.metrics: evaluate metric {spec!r} takes inputs {formats}; llm_al passes one "
                      "generated text and one reference text per example")


def _is_text(feature: Any) -> bool:
    return getattr(feature, "dtype", None) in ("string", "large_string")


def _number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _choose(spec: str, module, result: dict, options: dict) -> tuple[str, bool, tuple[float, float]]:
    """(result field, higher_is_better, range), each from the name's options or the metric's own
    declaration; a contradiction or a gap is a ConfigError saying which option to add."""
    numeric = [k for k, v in result.items() if _number(v)]
    chosen: dict[str, Any] = {}
    for option, attr in (("key", "score_key"), ("higher_is_better", "higher_is_better"), ("range", "score_range")):
        stated, declared = options.get(option), _declared(module, attr)
        if option == "range" and declared is not None:
            declared = _declared_range(spec, declared)
        if stated is not None and declared is not None and stated != declared:
            raise ConfigError(f"eval.metrics: {spec!r} says {option}={stated!r} but the metric declares "
                              f"{attr}={declared!r}; drop the option or make it agree")
        chosen[option] = stated if stated is not None else declared
    if chosen["key"] is None:
        named = [k for k in numeric if k == module.name]
        chosen["key"] = (named or numeric)[0] if named or len(numeric) == 1 else None
    if chosen["key"] not in numeric:
        got = f"no field {chosen['key']!r}" if chosen["key"] else "several numeric fields or none"
        raise ConfigError(f"eval.metrics: evaluate metric {spec!r} returned {got}; name the score with "
                          f";key=<field>, one of: {', '.join(numeric) or '(no numeric field)'}")
    gaps = {"higher_is_better": "higher_is_better=true|false", "range": "range=<lo>..<hi> (e.g. 0..1 or 0..100)"}
    for option, how in gaps.items():
        if chosen[option] is None:
            raise ConfigError(f"eval.metrics: evaluate metric {spec!r} does not declare its {option.replace('_', ' ')} "
                              f"(evaluate's metric info has no such field): add ;{how} to its name, as its "
                              f"documentation states it")
    if not isinstance(chosen["higher_is_better"], bool):
        raise ConfigError(f"eval.metrics: {spec!r}: the metric declares higher_is_better="
                          f"{chosen['higher_is_better']!r}, not true or false")
    return chosen["key"], chosen["higher_is_better"], chosen["range"]


def _declared_range(spec: str, declared: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(b) for b in declared)
    except (TypeError, ValueError):
        lo = hi = math.nan
    if not lo < hi:
        raise ConfigError(f"eval.metrics: {spec!r}: the metric declares score_range={declared!r}, not (lo, hi) "
                          "with lo < hi")
    return lo, hi


def _scale(bounds: tuple[float, float]) -> float:
    """x100 for a [0, 1] metric; 1 otherwise ([0, 100], or a range kept in the metric's own units)."""
    return 100.0 if bounds == (0.0, 1.0) else 1.0


def _score(spec: str, module, key: str, bounds, predictions, references, where: str,
           error: type[UserError] = UserError) -> float:
    """compute()[key] of one call; a failure, or a value not finite or outside the range, is `error`."""
    try:
        value = module.compute(predictions=list(predictions), references=list(references))[key]
    except Exception as err:             # noqa: BLE001  (a metric's own failure, reported with its name)
        raise error(f"evaluate metric {spec!r} failed on {where}: {type(err).__name__}: {err}") from err
    return _checked(spec, key, value, bounds, where, error)


def _checked(spec: str, key: str, value: Any, bounds, where: str, error: type[UserError]) -> float:
    """`value` as a float inside `bounds` (rounding error clipped); anything else is `error`."""
    slack = [1e-9 * max(1.0, abs(b)) if math.isfinite(b) else 0.0 for b in bounds]   # rounding: 100.00000000000004
    if not _number(value) or not math.isfinite(value) or not bounds[0] - slack[0] <= value <= bounds[1] + slack[1]:
        raise error(f"evaluate metric {spec!r} returned {key}={value!r} on {where}; a score must be a finite "
                    f"number in its stated range [{bounds[0]:g}, {bounds[1]:g}]")
    return min(max(float(value), bounds[0]), bounds[1])


def load_evaluate_metric(spec: str) -> Entry:
    """The METRICS entry of an evaluate spec, loading, checking and registering it on first use."""
    if spec in METRICS:
        return METRICS.get(spec)
    target, local, options = parse_spec(spec)
    module = _load_module(spec, target, local)
    wrap = _reference_wrap(spec, module)
    try:
        result = module.compute(predictions=PROBE[0], references=[wrap(r) for r in PROBE[1]])
    except Exception as err:             # noqa: BLE001
        raise ConfigError(f"eval.metrics: evaluate metric {spec!r} failed on a probe of two text pairs: "
                          f"{type(err).__name__}: {err}") from None
    if not isinstance(result, dict):
        raise ConfigError(f"eval.metrics: evaluate metric {spec!r} returned {type(result).__name__}, not a dict")
    key, higher, bounds = _choose(spec, module, result, options)
    scale = _scale(bounds)
    _checked(spec, key, result[key], bounds, "the load-time probe", ConfigError)
    for p, r in zip(*PROBE):             # the probe pairs one by one, as fn scores examples
        _score(spec, module, key, bounds, [p], [wrap(r)], f"the load-time probe {p!r}", ConfigError)

    def fn(predictions: Sequence[str], references: Sequence[str]) -> tuple[float, np.ndarray]:
        if len(predictions) != len(references) or not references:
            raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
        refs = [wrap(r) for r in references]
        corpus = _score(spec, module, key, bounds, predictions, refs, f"{len(refs)} examples")
        per = [_score(spec, module, key, bounds, [p], [r], f"example {i}")
               for i, (p, r) in enumerate(zip(predictions, refs))]
        return scale * corpus, scale * np.asarray(per, dtype=np.float64)

    units = "x100 from [0, 1]" if scale == 100 else (
        "as is, [0, 100]" if bounds == (0.0, 100.0) else f"in the metric's own units, [{bounds[0]:g}, {bounds[1]:g}]")
    description = f"evaluate metric {module.name} (field {key!r}, {units}); per example: one compute call each"
    METRICS.register(spec, description, higher_is_better=higher, source="evaluate", key=key,
                     range=list(bounds), scale=scale)(fn)
    return METRICS.get(spec)


METRICS.add_resolver(lambda name: load_evaluate_metric(name) if is_evaluate_spec(name) else None)
