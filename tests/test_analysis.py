"""The analysis statistics recover known effects on synthetic data and report none where there is none.

Repeated-seed checks use fixed seeds 0..49, so each test is deterministic; the thresholds are set so
that a broken correction (no Bonferroni, no pairing, a wrong SS formula) fails them."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from llm_al.analysis.protocol import (band, feature_correlations, holm, learning_curve, ols_r2,
                                     percentile_among_random, strategy_vs_random, verdict, wilcoxon_vs_baseline)

BETTER, WORSE, NOISE = ("better than 95% of random subsets", "worse than 95% of random subsets",
                        "inside the noise of random")


# ---------------------------------------------------------------- Holm and Wilcoxon

def test_holm_matches_hand_computation():
    # Sorted: d .005, a .01, c .03, b .04; multipliers 4, 3, 2, 1 -> .02, .03, .06, .04;
    # running max -> .02, .03, .06, .06. At alpha .05: reject d and a only.
    out = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.005}, alpha=0.05)
    assert list(out) == ["a", "b", "c", "d"]
    assert {k: v["p_adjusted"] for k, v in out.items()} == pytest.approx({"a": 0.03, "b": 0.06, "c": 0.06, "d": 0.02})
    assert {k for k, v in out.items() if v["reject"]} == {"a", "d"}
    assert out["b"]["p"] == 0.04


def test_holm_caps_at_one_and_rejects_bad_input():
    out = holm({"x": 0.6, "y": 0.9, "z": 0.4})
    assert [out[k]["p_adjusted"] for k in "xyz"] == pytest.approx([1.0, 1.0, 1.0])
    assert not any(v["reject"] for v in out.values())
    with pytest.raises(ValueError, match="1.5"):
        holm({"x": 1.5})
    with pytest.raises(ValueError, match="nan"):
        holm({"x": float("nan")})


def test_wilcoxon_finds_a_consistent_shift_and_not_a_symmetric_one():
    rng = np.random.default_rng(0)
    base = rng.normal(40, 5, 20)
    shifted = wilcoxon_vs_baseline(base + 1 + rng.normal(0, 0.2, 20), base)
    assert shifted.p < 0.01 and shifted.n == shifted.n_nonzero == 20 and shifted.note == ""
    v = np.arange(1.0, 11.0)
    symmetric = wilcoxon_vs_baseline(base + np.concatenate([v, -v]), base)
    assert symmetric.p > 0.05
    # a zero-mean random difference is called significant in about 5% of seeds, not more
    hits = sum(wilcoxon_vs_baseline(base + np.random.default_rng(s).normal(0, 1, 20), base).p < 0.05
               for s in range(50))
    assert hits <= 6


def test_wilcoxon_degenerate_cases_give_p_one_with_a_note():
    same = wilcoxon_vs_baseline(np.ones(8), np.ones(8))
    assert same.p == 1.0 and same.n_nonzero == 0 and "zero" in same.note
    # zero differences are dropped (zero_method="wilcox"): 7 pairs left, the one negative has rank 1,
    # so W = 1 and the exact two-sided p = 2 * P(W <= 1) = 2 * 2 / 2**7
    dropped = wilcoxon_vs_baseline([0.0, 0, 0, -1, 2, 3, 4, 5, 6, 7], np.zeros(10))
    assert dropped.n_nonzero == 7 and dropped.statistic == 1.0 and dropped.p == pytest.approx(4 / 128)
    one = wilcoxon_vs_baseline([2.0], [1.0])
    assert one.p == 1.0 and "1 pair" in one.note
    with pytest.raises(ValueError, match="equal length"):
        wilcoxon_vs_baseline([1.0, 2.0], [1.0])


# ---------------------------------------------------------------- percentile, band, verdict

def test_percentile_is_mid_rank_and_mirrors_for_lower_is_better():
    r = np.array([1.0, 2.0, 3.0, 3.0, 4.0])
    assert percentile_among_random(3.0, r) == pytest.approx(60.0)        # (2 worse + 2/2 ties) / 5
    assert percentile_among_random(3.0, r, higher_is_better=False) == pytest.approx(40.0)  # (1 + 1) / 5
    assert percentile_among_random(9.0, r) == 100.0 and percentile_among_random(0.0, r) == 0.0
    assert percentile_among_random(0.0, r, higher_is_better=False) == 100.0
    assert percentile_among_random(2.5, [2.5]) == 50.0
    rng = np.random.default_rng(0)
    vals = rng.integers(0, 5, 30).astype(float)
    for v in (0.0, 2.0, 2.5, 4.0):
        assert (percentile_among_random(v, vals) + percentile_among_random(v, vals, False)) == pytest.approx(100.0)


def test_band_is_the_central_interval():
    assert band(np.arange(101.0), level=0.9) == pytest.approx((5.0, 95.0))
    assert band(np.arange(101.0)) == pytest.approx((2.5, 97.5))
    with pytest.raises(ValueError, match="2 NaN"):
        band([1.0, np.nan, np.nan])


def test_verdict_rule():
    assert verdict(97, 0.5, 2.0) == BETTER
    assert verdict(97, -0.1, 2.0) == NOISE                 # CI touches 0
    assert verdict(80, 0.5, 2.0) == NOISE                  # real shift, but many random subsets match it
    assert verdict(3, -2.0, -0.5) == WORSE
    assert verdict(97, -2.0, -0.5, higher_is_better=False) == BETTER   # lower metric, CI below 0
    assert verdict(3, 0.5, 2.0, higher_is_better=False) == WORSE
    assert verdict(91, 0.5, 2.0, level=90) == "better than 90% of random subsets"
    with pytest.raises(ValueError):
        verdict(50, 2.0, 1.0)


def test_strategy_far_above_random_is_better_paired_and_unpaired():
    rng = np.random.default_rng(0)
    random_runs = rng.normal(40, 2, 100)
    strat = random_runs + 6 + rng.normal(0, 0.5, 100)       # 3 sd above, consistent paired gains
    r = strategy_vs_random(strat, random_runs, np.random.default_rng(1))
    assert r.paired and r.test == "wilcoxon" and r.win_rate == 1.0
    assert r.ci_low > 5 and r.ci_high < 7 and r.p < 1e-10 and r.percentile >= 99
    assert r.verdict == BETTER
    few = strategy_vs_random(rng.normal(46, 0.5, 10), random_runs, np.random.default_rng(1))
    assert not few.paired and few.test == "mann-whitney" and "unequal" in few.note
    assert few.win_rate > 0.95 and few.verdict == BETTER
    # lower-is-better metric: the same numbers make the strategy worse
    assert strategy_vs_random(strat, random_runs, np.random.default_rng(1), higher_is_better=False).verdict == WORSE
    json.dumps(r.to_dict())                                 # plain values only


def test_strategy_from_the_random_distribution_is_inside_the_noise_in_most_seeds():
    verdicts = []
    for seed in range(50):
        rng = np.random.default_rng(seed)
        random_runs, strat = rng.normal(40, 2, 20), rng.normal(40, 2, 20)
        verdicts.append(strategy_vs_random(strat, random_runs, rng).verdict)
    assert verdicts.count(NOISE) >= 47, verdicts


# ---------------------------------------------------------------- feature correlation and OLS

def _features(rng, g: int = 100, real: bool = True):
    y = rng.normal(30, 3, g)
    feats = {f"noise{i}": rng.normal(size=g) for i in range(12)}
    feats["real"] = y + rng.normal(0, 0.3, g) if real else rng.normal(size=g)
    return feats, y


def test_spearman_bonferroni_finds_exactly_the_real_feature():
    feats, y = _features(np.random.default_rng(0))
    rows = feature_correlations(feats, y)
    assert [r.feature for r in rows] == list(feats)
    assert [r.feature for r in rows if r.significant] == ["real"]
    real = rows[-1]
    assert real.rho > 0.9 and real.p_bonferroni == pytest.approx(min(1.0, real.p * 13))
    assert all(r.p_bonferroni == pytest.approx(min(1.0, 13 * r.p)) for r in rows)


def test_spearman_bonferroni_false_positive_rate_is_small():
    # Without the correction 13 noise features would give >= 1 hit in ~49% of repetitions.
    any_hit = sum(any(r.significant for r in feature_correlations(*_features(np.random.default_rng(s), real=False)))
                  for s in range(50))
    assert any_hit <= 5


def test_constant_feature_gives_nan_and_a_note_not_a_crash():
    rng = np.random.default_rng(0)
    y = rng.normal(size=20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                     # no ConstantInputWarning either
        rows = feature_correlations({"flat": np.full(20, 3.0), "x": y + rng.normal(0, 0.1, 20)}, y)
    flat = rows[0]
    assert np.isnan(flat.rho) and np.isnan(flat.p) and not flat.significant and "constant" in flat.note
    assert rows[1].significant and rows[1].p_bonferroni == pytest.approx(min(1.0, 2 * rows[1].p))
    with pytest.raises(ValueError, match="metric is constant"):
        feature_correlations({"x": y}, np.ones(20))
    with pytest.raises(ValueError, match="19 values"):
        feature_correlations({"x": y[:19]}, y)


def test_ols_recovers_a_real_effect():
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    y = 2 * x + rng.normal(size=200)                        # true R^2 = 4 / (4 + 1) = 0.8
    fit = ols_r2(x, y, np.random.default_rng(1))
    assert fit.r2 == pytest.approx(np.corrcoef(x, y)[0, 1] ** 2)   # simple regression: R^2 = r^2
    assert abs(fit.r2 - 0.8) < 0.05
    assert fit.adj_r2 == pytest.approx(1 - (1 - fit.r2) * 199 / 198)
    assert fit.chance_r2 == pytest.approx(1 / 199) and fit.chance_r2_perm < 0.03
    assert fit.f_p < 1e-10 and fit.p_perm == pytest.approx(1 / 201)


def test_ols_on_noise_sits_at_its_chance_level():
    chance = 11 / 99                                        # mean of Beta(11/2, 88/2)
    r2s, perms = [], []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        fit = ols_r2(rng.normal(size=(100, 11)), rng.normal(size=100), rng)
        assert fit.chance_r2 == pytest.approx(chance) and fit.rank == 11
        assert 0.0 < fit.r2 < 0.26                          # chance +- ~3 sd (sd of Beta ~ 0.044)
        assert abs(fit.chance_r2_perm - chance) < 0.03
        r2s.append(fit.r2)
        perms.append(fit.p_perm)
    assert abs(np.mean(r2s) - chance) < 0.03
    assert sum(p < 0.05 for p in perms) <= 3


def test_ols_refuses_too_few_observations():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="G = 12, F = 11"):
        ols_r2(rng.normal(size=(12, 11)), rng.normal(size=12), rng)
    ols_r2(rng.normal(size=(13, 11)), rng.normal(size=13), rng, n_perm=10)


# ---------------------------------------------------------------- learning curves

def test_learning_curve_groups_and_sorts():
    recs = [{"strategy": "random", "budget": 200, "seed": s, "value": v} for s, v in enumerate([50.0, 52.0, 54.0])]
    recs += [{"strategy": "ifd", "budget": b, "seed": 0, "value": float(b)} for b in (300, 100)]
    recs += [{"strategy": "random", "budget": 100, "seed": s, "value": v} for s, v in enumerate([40.0, 44.0])]
    pts = learning_curve(recs)
    assert [(p.strategy, p.x) for p in pts] == [("random", 100), ("random", 200), ("ifd", 100), ("ifd", 300)]
    r200 = pts[1]
    assert (r200.n, r200.mean, r200.sd) == (3, pytest.approx(52.0), pytest.approx(2.0))
    half = 4.302653 * 2.0 / np.sqrt(3)                   # t_{0.975, 2} sd / sqrt(n): wider than the values' range
    assert (r200.ci_low, r200.ci_high) == pytest.approx((52.0 - half, 52.0 + half), abs=1e-4)
    single = pts[2]
    assert single.n == 1 and np.isnan(single.sd) and np.isnan(single.ci_low) and np.isnan(single.ci_high)
    rounds = learning_curve([{"strategy": "s", "round": r, "seed": 0, "value": 1.0} for r in (2, 0, 1)])
    assert [p.x for p in rounds] == [0, 1, 2]
    with pytest.raises(ValueError, match="repeats"):
        learning_curve(recs + [recs[0]])
    with pytest.raises(ValueError, match="budget or round"):
        learning_curve([{"strategy": "s", "seed": 0, "value": 1.0}])


def test_verdict_does_not_claim_a_level_its_baseline_cannot_resolve():
    from llm_al.analysis.protocol import verdict

    assert verdict(0.0, -9.0, -5.0, n_baseline=5) == "worse than all 5 random subsets (too few to claim 95%)"
    assert verdict(100.0, 1.0, 3.0, n_baseline=19) == "better than all 19 random subsets (too few to claim 95%)"
    assert verdict(90.0, 1.0, 3.0, n_baseline=10) == "inside the noise of random"
    assert verdict(96.0, 1.0, 3.0, n_baseline=20) == "better than 95% of random subsets"


def test_report_verdict_agrees_with_the_table_on_three_same_signed_seeds():
    """report.md's verdict (analysis.verdict via strategy_vs_random) must not call a difference that
    the paired sign-flip test cannot show "worse": the table says "leans worse" for the same seeds."""
    strat, rand = np.array([25.0, 24.4, 25.7]), np.array([29.0, 27.5, 28.5])    # differences -4.0, -3.1, -2.8
    r = strategy_vs_random(strat, rand, np.random.default_rng(0))
    assert r.ci_high < 0 and r.percentile == 0
    assert r.verdict.startswith("leans worse, not significant (sign-flip p 0.25; worse than all 3 random")
    # differences -6.9, -1.5, -1.7 all below 0: their t interval (n = 3) reaches past 0, so no lean either
    spread = strategy_vs_random(np.array([22.1, 26.0, 26.8]), rand, np.random.default_rng(0))
    assert spread.ci_low < 0 < spread.ci_high and spread.verdict == NOISE
    assert verdict(0, -2.0, -0.5, n_baseline=3, p=0.01) == "worse than all 3 random subsets (too few to claim 95%)"
    assert verdict(97, 0.5, 2.0, p=0.2, test="Mann-Whitney p") == \
        "leans better, not significant (Mann-Whitney p 0.2; better than 95% of random subsets)"
    assert verdict(97, 0.5, 2.0, p=0.01) == BETTER
