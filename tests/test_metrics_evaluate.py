"""Hugging Face `evaluate` metrics named in eval.metrics (llm_al/metrics_evaluate.py), all offline:
local metric scripts written under tmp_path, and local stand-ins for evaluate's chrf, sacrebleu and
rouge scripts (tests/fixtures/evaluate_metrics) checked against the built-ins.

    nice -n 10 .venv/bin/python -m pytest tests/test_metrics_evaluate.py -q     # ~15 s on 2 cores
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")     # evaluate reads it once, at its import

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from llm_al.config import EvalConfig, load_config  # noqa: E402
from llm_al.errors import ConfigError, UnknownNameError  # noqa: E402
from llm_al.metrics import METRICS, metric, score_all  # noqa: E402
from llm_al.metrics_evaluate import is_evaluate_spec  # noqa: E402

from conftest import PAIRS  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "evaluate_metrics"

MISMATCH = '''import datasets
import evaluate


class Mismatch(evaluate.Metric):
    """Share of predictions that differ from their reference: lower is better, in [0, 1]."""

    {declare}

    def _info(self):
        return evaluate.MetricInfo(description="share of mismatches", citation="", inputs_description="",
                                   features=datasets.Features({{"predictions": datasets.Value("string"),
                                                               "references": datasets.Value("string")}}))

    def _compute(self, predictions, references):
        wrong = sum(p != r for p, r in zip(predictions, references))
        return {{"mismatch": wrong / len(references), "n": len(references)}}
'''
DECLARED = "higher_is_better = False\n    score_range = (0, 1)"


@pytest.fixture(autouse=True)
def forget_loaded_metrics():
    """Unregister what a test loaded (tmp_path scripts), leaving the shared METRICS as other files expect it."""
    before = set(METRICS.names())
    yield
    for name in set(METRICS.names()) - before:
        del METRICS._entries[name]


def write_metric(folder: Path, declare: str = DECLARED) -> Path:
    """A local evaluate metric script `mismatch.py` (one import per line: evaluate scans them)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "mismatch.py"
    path.write_text(MISMATCH.format(declare=declare or "pass"), encoding="utf-8")
    return path


def test_a_local_metric_loads_offline_through_the_config(tmp_path):
    spec = str(write_metric(tmp_path / "declared"))
    assert is_evaluate_spec(spec) and not is_evaluate_spec("chrf")
    cfg = EvalConfig(metrics=["chrf", spec], primary=spec)
    entry = METRICS.get(cfg.primary)                 # registered by the config check, under its name
    assert entry.meta["higher_is_better"] is False   # from the metric's own declaration
    assert entry.meta["key"] == "mismatch"           # the field named after the metric, of two numeric ones
    assert entry.meta["scale"] == 100.0 and entry.meta["range"] == [0.0, 1.0]
    corpus, per = entry.fn(["Oui", "Non", "Fermer", "x"], ["Oui", "Oui", "Fermer", "Filtre"])
    assert per.tolist() == [0.0, 100.0, 0.0, 100.0]  # one compute call per pair, x100 from [0, 1]
    assert corpus == pytest.approx(50.0)
    out = score_all(cfg.metrics, ["Oui", "Non"], ["Oui", "Oui"])
    assert out[spec]["per_example"] == [0.0, 100.0] and out[spec]["score"] == pytest.approx(50.0)
    with pytest.raises(ValueError):
        entry.fn(["a"], ["a", "b"])


def test_a_fresh_process_resolves_the_spec_wherever_it_looks_it_up(tmp_path):
    """The report and a worker that unpickled its config call METRICS.get(primary) without having
    read the config in that process: the registry's resolver loads the spec there."""
    spec = str(write_metric(tmp_path / "fresh"))
    assert spec not in METRICS                       # nothing loaded it in this process yet
    entry = METRICS.get(spec)
    assert entry.meta["higher_is_better"] is False and spec in METRICS
    with pytest.raises(UnknownNameError, match="Valid metrics"):
        METRICS.get("chrf_typo")                     # a plain unknown name is still a helpful miss


def test_a_folder_and_a_recipe_override_name_one_too(tmp_path, monkeypatch):
    folder = tmp_path / "mismatch"
    write_metric(folder)
    monkeypatch.chdir(tmp_path)
    cfg = load_config(overrides=["eval.metrics=[chrf, ./mismatch;key=mismatch]", "eval.primary=chrf"])
    assert cfg.eval.metrics == ["chrf", "./mismatch;key=mismatch"]
    assert metric("./mismatch;key=mismatch").meta["higher_is_better"] is False


def test_an_undeclared_direction_or_range_must_be_stated(tmp_path):
    spec = str(write_metric(tmp_path / "bare", declare=""))
    with pytest.raises(ConfigError, match=r"does not declare its higher is better.*higher_is_better=true\|false"):
        EvalConfig(metrics=[spec], primary=spec)
    with pytest.raises(ConfigError, match=r"does not declare its range.*range=<lo>\.\.<hi>"):
        EvalConfig(metrics=[spec + ";higher_is_better=false"], primary=spec + ";higher_is_better=false")
    stated = spec + ";higher_is_better=false;range=0..1;key=mismatch"
    entry = metric(stated)
    assert entry.meta["higher_is_better"] is False and entry.meta["scale"] == 100.0
    kept = metric(spec + ";higher_is_better=false;range=0..inf")   # not [0, 1]: kept in its own units
    assert kept.meta["scale"] == 1.0 and kept.fn(["a"], ["b"])[1].tolist() == [1.0]


def test_contradictions_and_bad_options_are_config_errors(tmp_path):
    spec = str(write_metric(tmp_path / "declared"))
    for suffix, needle in [(";higher_is_better=true", "says higher_is_better=True but the metric declares"),
                           (";range=0..100", "says range=.*declares score_range"),
                           (";keys=n", "option 'keys=n'.*Did you mean 'key'"),
                           (";higher_is_better=yes", "must be true or false, got 'yes'"),
                           (";range=1..0", "range must be <lo>..<hi> with lo < hi"),
                           (";key=nope", "no field 'nope'.*mismatch, n")]:
        with pytest.raises(ConfigError, match=needle):
            metric(spec + suffix)
    bare = str(write_metric(tmp_path / "bare", declare=""))
    with pytest.raises(ConfigError, match=r"returned mismatch=1\.0.*range \[0, 0\.5\]"):
        metric(bare + ";higher_is_better=false;range=0..0.5")
    odd = str(write_metric(tmp_path / "odd", declare='higher_is_better = False\n    score_range = "0-1"'))
    with pytest.raises(ConfigError, match=r"declares score_range='0-1', not \(lo, hi\)"):
        metric(odd)


def test_unknown_names_and_missing_paths_say_what_is_valid(tmp_path):
    with pytest.raises(UnknownNameError, match=r"unknown metric 'chrff'.*Did you mean 'chrf'.*evaluate:<hub id>"):
        EvalConfig(metrics=["chrff"], primary="chrff")
    missing = str(tmp_path / "nope" / "metric.py")
    with pytest.raises(ConfigError, match=r"local evaluate metric .*metric\.py' does not exist.*Built-in metrics: "
                                          r"bleu, chrf, exact_match, rougeL"):
        EvalConfig(metrics=[missing], primary=missing)
    with pytest.raises(ConfigError, match=r"names no metric"):
        metric("evaluate:")
    broken = tmp_path / "broken.py"
    broken.write_text("this is not python\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"cannot load evaluate metric '.*broken\.py'"):
        metric(str(broken))


def test_a_hub_name_offline_is_a_clear_config_error():
    with pytest.raises(ConfigError, match=r"cannot load evaluate metric 'evaluate:llm-al-no-such-metric'.*offline"
                                          r".*name its \.py path instead.*Built-in metrics"):
        EvalConfig(metrics=["evaluate:llm-al-no-such-metric"], primary="chrf")


# ---------------------------------------------------------------------------- built-ins against evaluate's scripts
def _pairs() -> tuple[list[str], list[str]]:
    """36 (prediction, reference) pairs of French UI strings: exact, accents dropped, words
    reordered, truncated, and unrelated, so corpus scores are far from 0 and 100."""
    refs = [t for _, t in PAIRS]
    plain = str.maketrans("éèêàçôû’", "eeeacou'")
    preds = [r if i % 4 == 0 else r.translate(plain) if i % 4 == 1 else " ".join(reversed(r.split()))
             if i % 4 == 2 else r[: max(1, len(r) // 2)] for i, r in enumerate(refs)]
    preds += [refs[(i + 5) % len(refs)] for i in range(12)]
    return preds, refs + refs[:12]


@pytest.mark.parametrize("builtin, fixture", [("chrf", "chrf"), ("bleu", "sacrebleu")])
def test_chrf_and_bleu_equal_evaluate_s_corpus_scores(builtin, fixture):
    preds, refs = _pairs()
    assert len(preds) == 36 and any("é" in r for r in refs)
    ours, _ = METRICS.get(builtin).fn(preds, refs)
    theirs = metric(f"{FIXTURES / fixture};key=score;higher_is_better=true;range=0..100")
    corpus, per = theirs.fn(preds, refs)
    assert 10 < ours < 90 and corpus == pytest.approx(ours, abs=1e-9)
    if builtin == "chrf":                            # sentence chrF is one-pair corpus chrF
        assert np.allclose(per, METRICS.get("chrf").fn(preds, refs)[1])


def test_rouge_l_equals_evaluate_s_on_ascii_and_keeps_accented_words():
    preds, refs = _pairs()
    ascii_pairs = [(p, r) for p, r in zip(preds, refs) if p.isascii() and r.isascii() and "_" not in p + r]
    assert len(ascii_pairs) >= 10
    p_ascii, r_ascii = map(list, zip(*ascii_pairs))
    _, ours = METRICS.get("rougeL").fn(p_ascii, r_ascii)
    theirs = metric(f"{FIXTURES / 'rouge'};key=rougeL;higher_is_better=true;range=0..1")
    _, per = theirs.fn(p_ascii, r_ascii)             # one pair: the bootstrap median is the pair's score
    assert np.allclose(per, ours)
    # Accented text: rouge-score's default tokenizer (evaluate's) keeps only [a-z0-9] runs, so "été"
    # and "ôté" both become "t" and it scores two different words as a match; ours tokenises Unicode words.
    _, ours_acc = METRICS.get("rougeL").fn(["il a été"], ["il a ôté"])
    _, theirs_acc = theirs.fn(["il a été"], ["il a ôté"])
    assert ours_acc[0] == pytest.approx(100 * 2 / 3) and theirs_acc[0] == pytest.approx(100.0)
