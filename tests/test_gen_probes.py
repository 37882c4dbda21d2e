"""Generation probes: the greedy answer and its log-prob match a hand-written token loop, the oracle
is the metric of that answer, sampled disagreement and BLEU variance give known values on hand-made
samples, reruns match, caches are reused, label-free probes run on prompts only and the oracle
refuses them; the four strategies take the right end of the ranking."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import pool_records, synthetic_features
from llm_al.data.pool import records_to_pool
from llm_al.errors import ConfigError, FeatureUnavailableError
from llm_al.evaluate import stop_token_ids
from llm_al.config import EvalConfig
from llm_al.features.formatting import prompt_text
from llm_al.strategies.generation import bleu_variance, chrf_disagreement, generate_ids, greedy_outputs
from llm_al.features.probes import ProbeContext, run_probes
from llm_al.config import ProbeConfig
from llm_al.strategies.base import run_strategy

MAX_NEW = 6


def _ctx(pool, tiny_model, **kw) -> ProbeContext:
    model, tok = tiny_model
    kw.setdefault("eval_cfg", EvalConfig(max_new_tokens=MAX_NEW, batch_size=3))
    return ProbeContext(examples=pool.examples, model=model, tokenizer=tok, **kw)


def _hand_greedy(model, tok, prompt: str, max_new: int) -> tuple[list[int], float]:
    """One prompt, no batching, no cache: argmax token by token, summing its log-prob."""
    import torch

    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    stops = set(stop_token_ids(model, tok))
    out, total = [], 0.0
    with torch.no_grad():
        for _ in range(max_new):
            logits = model(input_ids=torch.tensor([ids + out])).logits[0, -1].double()
            logp = torch.log_softmax(logits, -1)
            t = int(logp.argmax())
            out.append(t)
            total += float(logp[t])
            if t in stops:
                break
    return out, total / len(out)


def test_greedy_logprob_matches_a_hand_loop(tiny_model):
    model, tok = tiny_model
    pool = records_to_pool(pool_records(5))
    ctx = _ctx(pool, tiny_model)
    scores, cost = run_probes({"greedy_logprob"}, ctx)
    gen_ids, texts, _, _ = greedy_outputs(ctx)
    for i, ex in enumerate(pool.examples):
        ids, mean_lp = _hand_greedy(model, tok, prompt_text(tok, ex.prompt_messages), MAX_NEW)
        assert gen_ids[i] == ids
        assert texts[i] == tok.decode(ids, skip_special_tokens=True).strip()
        assert scores["greedy_logprob"][i] == pytest.approx(mean_lp, abs=1e-4)
    assert np.all(scores["greedy_logprob"] < 0)
    c = cost["greedy"]
    assert c["generations"] == 5 and c["generated_tokens"] == sum(map(len, gen_ids)) and c["seconds"] > 0


def test_oracle_is_the_primary_metric_of_the_greedy_answer(tiny_model):
    import sacrebleu

    pool = records_to_pool(pool_records(5))
    ctx = _ctx(pool, tiny_model)
    scores, cost = run_probes({"oracle", "greedy_logprob"}, ctx)
    _, texts, _, _ = greedy_outputs(ctx)
    want = [sacrebleu.sentence_chrf(t, [ex.response]).score for t, ex in zip(texts, pool.examples)]
    np.testing.assert_allclose(scores["oracle"], want)
    # one generation shared by both probes of the call
    assert cost["greedy"]["generations"] + cost["oracle"]["generations"] == 5
    # a different primary metric is honoured
    ctx = _ctx(pool, tiny_model, eval_cfg=EvalConfig(max_new_tokens=MAX_NEW, primary="exact_match"))
    scores, cost = run_probes({"oracle"}, ctx)
    assert cost["oracle"]["metric"] == "exact_match" and set(scores["oracle"]) <= {0.0, 100.0}


def test_label_free_probes_run_on_prompts_only_and_the_oracle_is_refused(tiny_model):
    rows = [{"source": r["source"], "source_lang": "English", "target_lang": "French"} for r in pool_records(4)]
    pool = records_to_pool(rows, labelled=False)
    assert not any(ex.is_labelled for ex in pool.examples)
    scores, _ = run_probes({"greedy_logprob", "gen_disagreement", "bleu_variance"},
                           _ctx(pool, tiny_model, probe_cfg=ProbeConfig(gen_samples=3)))
    assert all(len(v) == 4 and np.isfinite(v).all() for v in scores.values())
    with pytest.raises(FeatureUnavailableError, match="reference responses"):
        run_probes({"oracle"}, _ctx(pool, tiny_model))


def test_sampled_probe_is_seeded_cached_and_needs_two_samples(tiny_model, tmp_path):
    pool = records_to_pool(pool_records(4))
    cfg = ProbeConfig(gen_samples=3, seed=5)
    a, cost_a = run_probes({"gen_disagreement"}, _ctx(pool, tiny_model, probe_cfg=cfg))
    b, _ = run_probes({"gen_disagreement"}, _ctx(pool, tiny_model, probe_cfg=cfg))
    for k in ("gen_disagreement", "bleu_variance"):
        np.testing.assert_array_equal(a[k], b[k])
    assert cost_a["sampled"]["generations"] == 12 and cost_a["sampled"]["generated_tokens"] > 0
    assert np.all((a["gen_disagreement"] >= 0) & (a["gen_disagreement"] <= 1))
    # a random-init model's samples differ: disagreement is not a constant
    assert a["gen_disagreement"].max() > 0
    other, _ = run_probes({"gen_disagreement"}, _ctx(pool, tiny_model, probe_cfg=ProbeConfig(gen_samples=3, seed=6)))
    assert not np.array_equal(other["gen_disagreement"], a["gen_disagreement"])
    # disk cache: a second context with the same key does no generation and gives the same scores
    c1, cost1 = run_probes({"gen_disagreement"}, _ctx(pool, tiny_model, probe_cfg=cfg, cache_dir=tmp_path, model_key="m"))
    c2, cost2 = run_probes({"gen_disagreement"}, _ctx(pool, tiny_model, probe_cfg=cfg, cache_dir=tmp_path, model_key="m"))
    assert cost1["sampled"]["generations"] == 12 and cost2["sampled"]["generations"] == 0
    np.testing.assert_array_equal(c1["gen_disagreement"], c2["gen_disagreement"])
    with pytest.raises(ConfigError, match="gen_samples"):
        run_probes({"bleu_variance"}, _ctx(pool, tiny_model, probe_cfg=ProbeConfig(gen_samples=1)))


def test_greedy_cache_is_reused_across_pools(tiny_model, tmp_path):
    pool = records_to_pool(pool_records(6))
    first, cost1 = run_probes({"greedy_logprob"}, _ctx(pool.subset([0, 1, 2]), tiny_model, cache_dir=tmp_path,
                                                          model_key="m"))
    both, cost2 = run_probes({"greedy_logprob"}, _ctx(pool, tiny_model, cache_dir=tmp_path, model_key="m"))
    assert cost1["greedy"]["generations"] == 3 and cost2["greedy"]["generations"] == 3   # only the new ones
    assert cost2["greedy"]["cached"] == 3
    np.testing.assert_allclose(both["greedy_logprob"][:3], first["greedy_logprob"])
    _, cost3 = run_probes({"greedy_logprob"}, _ctx(pool, tiny_model, cache_dir=tmp_path, model_key="other"))
    assert cost3["greedy"]["generations"] == 6                                       # new model key, new cache


def test_sampling_gives_the_asked_number_of_sequences(tiny_model):
    model, tok = tiny_model
    out = generate_ids(model, tok, ["a", "bb b", "c c c"], 4, batch_size=4, samples=3, temperature=1.0, seed=0)
    assert [len(s) for s in out] == [3, 3, 3]
    assert all(1 <= len(seq) <= 4 for s in out for seq in s)


# ---------------------------------------------------------------------------- pure scores
def test_chrf_disagreement_known_values():
    assert chrf_disagreement(["the cat sat", "the cat sat", "the cat sat"]) == 0.0
    assert chrf_disagreement(["", ""]) == 0.0                           # identical, even if empty
    assert chrf_disagreement(["aaaa aaaa", "bbbb bbbb"]) == pytest.approx(1.0)   # no shared character
    mid = chrf_disagreement(["the cat sat on the mat", "the cat sat on a mat"])
    assert 0 < mid < 0.5
    with pytest.raises(ConfigError):
        chrf_disagreement(["only one"])


def test_bleu_variance_known_values():
    assert bleu_variance(["a b c d", "a b c d", "a b c d"]) == 0.0
    # Xiao et al.'s BLEUVar, mean over the 6 ordered pairs of (1 - BLEU)^2: the 2 pairs of the two
    # equal samples give 0, the 4 pairs with the sample that shares nothing give 1
    assert bleu_variance(["a b c d", "a b c d", "w x y z"]) == pytest.approx(4 / 6)
    assert bleu_variance(["", ""]) == 0.0 and bleu_variance(["a b c d", "w x y z"]) == 1.0
    import sacrebleu                       # a partial match: BLEU b = sentence BLEU / 100 each way

    a, b = "the cat sat on the mat", "the cat sat on a mat"
    ab, ba = (sacrebleu.sentence_bleu(x, [y]).score / 100 for x, y in ((a, b), (b, a)))
    assert bleu_variance([a, b]) == pytest.approx(((1 - ab) ** 2 + (1 - ba) ** 2) / 2)
    with pytest.raises(ConfigError):
        bleu_variance(["x"])


# ---------------------------------------------------------------------------- strategies
@pytest.mark.parametrize("name, feature, lowest", [("greedy_logprob", "greedy_logprob", True),
                                                   ("oracle", "oracle", True),
                                                   ("gen_disagreement", "gen_disagreement", False),
                                                   ("bleu_variance", "bleu_variance", False)])
def test_strategies_take_the_right_end(name, feature, lowest):
    f = synthetic_features(9)
    f.scores[feature] = np.array([5.0, -1.0, 3.0, 8.0, 0.0, 2.0, 7.0, -4.0, 1.0])
    sel = run_strategy(name, f, 3, np.random.default_rng(0))
    want = [7, 1, 4] if lowest else [3, 6, 0]
    assert sel.indices.tolist() == want
    np.testing.assert_array_equal(sel.scores, f.scores[feature][want])    # the score itself, not negated
    np.testing.assert_array_equal(sel.pool_scores, f.scores[feature])


def test_compute_features_runs_the_greedy_probe_through_the_pipeline(tiny_model, tiny_model_dir, cache_dir):
    from llm_al.config import ModelConfig
    from llm_al.run.pipeline import compute_features

    pool = records_to_pool(pool_records(4))
    cfg = ModelConfig(name=str(tiny_model_dir))
    f = compute_features(pool, {"greedy_logprob"}, cfg, model_and_tokenizer=tiny_model, progress=False)
    assert f.require("greedy_logprob").shape == (4,) and f.cost["probe_greedy"]["generations"] == 4
    f2 = compute_features(pool, {"greedy_logprob"}, cfg, model_and_tokenizer=tiny_model, progress=False)
    assert f2.cost["probe_greedy"]["generations"] == 0
    np.testing.assert_allclose(f2.require("greedy_logprob"), f.require("greedy_logprob"))
