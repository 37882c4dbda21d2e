"""Generation metrics, all on a 0-100 scale, each with per-example scores.

`fn(predictions, references) -> (corpus score, per-example scores)`, registered with metadata
(`higher_is_better`) so reports never guess a direction. sacrebleu and rouge-score are called
directly (the `evaluate` hub metrics do not load offline).
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from llm_al.registries import METRICS


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


def score_all(names: Sequence[str], predictions: Sequence[str], references: Sequence[str]) -> dict[str, dict]:
    out = {}
    for name in names:
        corpus, per = METRICS.get(name).fn(predictions, references)
        out[name] = {"score": corpus, "per_example": per.round(4).tolist()}
    return out
