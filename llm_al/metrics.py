"""Generation metrics, all on a 0-100 scale, each with per-example scores.

`fn(predictions, references) -> (corpus score, per-example scores)`, registered with metadata
(`higher_is_better`) so reports never guess a direction. Any Hugging Face `evaluate` metric can be
named beside these (`evaluate:<hub id>`, or a local `.py` script or folder): see metrics_evaluate.py;
`metric(name)` resolves either kind.

The well-kept library path for the built-ins is sacrebleu and rouge-score called directly, not
`evaluate`'s chrf / sacrebleu / rouge scripts, because those scripts are thin wrappers of the same
calls with the same defaults (tests/test_metrics_evaluate.py checks chrF and BLEU give identical
corpus scores on accented text, and ROUGE-L identical per-example scores on ASCII text), while
`evaluate` adds a 3-5 s import, hub scripts that do not load offline, and for ROUGE a corpus score
that is a bootstrap median of resampled means (random) rather than the mean. Two deliberate
differences: ROUGE-L here tokenises Unicode words (rouge-score's default tokenizer, which evaluate
uses, drops every non-ASCII letter, so "été" becomes "t"), and per-example BLEU uses
effective order (sacrebleu.sentence_bleu) where a one-pair `evaluate` sacrebleu call does not.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from llm_al.metrics_evaluate import is_evaluate_spec, load_evaluate_metric
from llm_al.registries import METRICS
from llm_al.registry import Entry


def _check(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references) or not references:
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")


@METRICS.register("chrf", "character n-gram F-score (sacrebleu chrF, corpus level)", higher_is_better=True)
def chrf(predictions: Sequence[str], references: Sequence[str]) -> tuple[float, np.ndarray]:
    import sacrebleu

    _check(predictions, references)
    corpus = sacrebleu.corpus_chrf(list(predictions), [list(references)]).score
    per = np.array([sacrebleu.sentence_chrf(p, [r]).score for p, r in zip(predictions, references)])
    return float(corpus), per


@METRICS.register("bleu", "BLEU (sacrebleu, corpus level; per-example with effective order)", higher_is_better=True)
def bleu(predictions: Sequence[str], references: Sequence[str]) -> tuple[float, np.ndarray]:
    import sacrebleu

    _check(predictions, references)
    corpus = sacrebleu.corpus_bleu(list(predictions), [list(references)]).score
    per = np.array([sacrebleu.sentence_bleu(p, [r]).score for p, r in zip(predictions, references)])
    return float(corpus), per


class _UnicodeWords:
    """rouge-score's default tokenizer drops every non-ASCII letter ("é"); this one keeps them."""

    def tokenize(self, text: str) -> list[str]:
        return re.findall(r"\w+", text.lower())


@METRICS.register("rougeL", "ROUGE-L F-measure (longest common subsequence of words), mean over examples",
                  higher_is_better=True)
def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> tuple[float, np.ndarray]:
    from rouge_score import rouge_scorer

    _check(predictions, references)
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_UnicodeWords())
    per = np.array([100 * scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)])
    return float(per.mean()), per


def _normalise(text: str) -> str:
    return " ".join(text.split())


@METRICS.register("exact_match", "share of outputs equal to the reference (whitespace-normalised), in %",
                  higher_is_better=True)
def exact_match(predictions: Sequence[str], references: Sequence[str]) -> tuple[float, np.ndarray]:
    _check(predictions, references)
    per = np.array([100.0 * (_normalise(p) == _normalise(r)) for p, r in zip(predictions, references)])
    return float(per.mean()), per


def metric(name: str) -> Entry:
    """The METRICS entry of a built-in name or an evaluate spec (loaded and registered on first use;
    a fresh process, such as a worker that unpickled its config, loads it here)."""
    return load_evaluate_metric(name) if is_evaluate_spec(name) else METRICS.get(name)


def score_all(names: Sequence[str], predictions: Sequence[str], references: Sequence[str]) -> dict[str, dict]:
    out = {}
    for name in names:
        corpus, per = metric(name).fn(predictions, references)
        out[name] = {"score": corpus, "per_example": per.round(4).tolist()}
    return out
