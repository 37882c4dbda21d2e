from __future__ import annotations

import numpy as np
import pytest

from llm_al.metrics import METRICS, score_all
from llm_al.analysis.table import paired_verdict as verdict
from llm_al.analysis.stats import bootstrap_ci, paired_comparison


def test_bootstrap_ci_covers_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    small = rng.normal(5, 1, 10)
    big = rng.normal(5, 1, 1000)
    lo_s, hi_s = bootstrap_ci(small, np.random.default_rng(1))
    lo_b, hi_b = bootstrap_ci(big, np.random.default_rng(1))
    assert lo_b < 5 < hi_b
    assert (hi_b - lo_b) < (hi_s - lo_s) / 5


def test_paired_comparison_finds_a_known_effect_and_no_effect():
    rng = np.random.default_rng(0)
    base = rng.normal(40, 5, 30)                                # large between-seed spread
    better = base + 2 + rng.normal(0, 0.5, 30)                  # small consistent gain: pairing reveals it
    same = base + rng.normal(0, 0.5, 30)
    c = paired_comparison(better, base, np.random.default_rng(1))
    assert c.ci_low > 1 and c.ci_high < 3 and c.wins == 30
    n = paired_comparison(same, base, np.random.default_rng(1))
    assert n.ci_low < 0 < n.ci_high
    assert verdict(n.ci_low, n.ci_high, True) == "inside the noise of random"
    assert verdict(c.ci_low, c.ci_high, True) == "better than random"
    assert verdict(-3, -1, True) == "worse than random"
    assert verdict(-3, -1, False) == "better than random"


def test_paired_comparison_counts_wins_by_direction():
    c = paired_comparison(np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 1.0]), np.random.default_rng(0),
                          higher_is_better=False)
    assert (c.wins, c.ties, c.n) == (1, 1, 3)
    with pytest.raises(ValueError):
        paired_comparison(np.array([1.0]), np.array([1.0, 2.0]), np.random.default_rng(0))


@pytest.mark.parametrize("name", METRICS.names())
def test_metric_contract(name):
    entry = METRICS.get(name)
    assert entry.meta["higher_is_better"] is True
    refs = ["Enregistrer et continuer", "Supprimer les objets sélectionnés", "Oui"]
    perfect, per = entry.fn(refs, refs)
    assert perfect == pytest.approx(100.0) and np.allclose(per, 100.0)
    bad, per_bad = entry.fn(["zzz", "qqq", "xxx"], refs)
    assert bad < 20 and len(per_bad) == 3
    with pytest.raises(ValueError):
        entry.fn(["a"], refs)


def test_rouge_keeps_accented_words():
    # rouge-score's default tokenizer would reduce "été" to "t" and call these equal.
    score, _ = METRICS.get("rougeL").fn(["il a été"], ["il a ete"])
    assert score == pytest.approx(100 * 2 / 3)


def test_exact_match_normalises_whitespace_only():
    _, per = METRICS.get("exact_match").fn(["  Oui ", "oui"], ["Oui", "Oui"])
    assert per.tolist() == [100.0, 0.0]


def test_score_all_keeps_per_example():
    out = score_all(["chrf", "bleu"], ["a b c", "d"], ["a b c", "e"])
    assert set(out) == {"chrf", "bleu"} and len(out["chrf"]["per_example"]) == 2
    assert out["chrf"]["per_example"][0] == pytest.approx(100.0)


def test_paired_verdict_refuses_one_or_two_seeds():
    assert verdict(-6.9, -6.9, True, n=1) == "too few seeds for a verdict (n=1)"
    assert verdict(1.0, 2.0, True, n=2) == "too few seeds for a verdict (n=2)"
    assert verdict(1.0, 2.0, True, n=3) == "better than random"


def test_sign_flip_test_has_exact_small_sample_values_and_finds_real_effects():
    from llm_al.analysis.stats import sign_flip_p

    rng = np.random.default_rng(0)
    assert sign_flip_p(np.array([-6.9, -3.1, -0.8]), rng) == pytest.approx(0.25)      # 2 of 8 assignments
    assert sign_flip_p(np.array([1.0, 2, 3, 4, 5, 6]), rng) == pytest.approx(2 / 64)
    assert sign_flip_p(np.array([3.0, -1.0]), rng) == pytest.approx(1.0)
    big = rng.normal(2.0, 1.0, 40)                                           # Monte Carlo above 16 pairs
    assert sign_flip_p(big, rng) < 0.001
    null = [sign_flip_p(rng.normal(0, 1, 8), rng) for _ in range(400)]
    assert 0.02 < np.mean(np.array(null) < 0.05) < 0.09                      # ~5% false positives


def test_three_same_signed_seeds_only_lean():
    """All three seeds below random: the bootstrap CI excludes 0, but 3 seeds cannot show a
    difference (sign-flip p 0.25), so the table says it leans, not that it is worse."""
    c = paired_comparison(np.array([22.1, 26.0, 26.8]), np.array([29.0, 27.5, 28.5]), np.random.default_rng(0))
    assert c.ci_high < 0 and c.p == pytest.approx(0.25)
    assert verdict(c.ci_low, c.ci_high, True, c.n, c.p) == "leans worse, not significant (sign-flip p 0.25, n=3)"
    six = paired_comparison(np.arange(6) + 31.0, np.arange(6) + 28.0, np.random.default_rng(0))
    assert verdict(six.ci_low, six.ci_high, True, six.n, six.p) == "better than random"


def test_non_finite_differences_give_no_test_and_no_verdict():
    from llm_al.analysis.stats import sign_flip_p

    assert np.isnan(sign_flip_p(np.array([1.0, np.nan, 2.0]), np.random.default_rng(0)))   # was p = 0
    assert np.isnan(sign_flip_p(np.array([1.0, np.inf, 2.0]), np.random.default_rng(0)))
    assert verdict(np.nan, np.nan, True, n=3, p=np.nan) == "no verdict (a non-finite result)"
    assert verdict(1.0, 2.0, True, n=3, p=np.nan).startswith("leans better")    # a NaN p is not significant
