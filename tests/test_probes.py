"""The probe extension point: a registered probe's scores reach `Features.scores`, survive
`take`, are computed only when a feature asks for them, refuse unlabelled pools when they read
references, and are recomputed under the adapter in loop rounds."""

from __future__ import annotations

import numpy as np
import pytest

from llm_al.data.pool import records_to_pool
from llm_al.errors import FeatureUnavailableError
from llm_al.types import Features
from llm_al.features.probes import PROBES, ProbeContext, provided_names, provider, run_probes

CALLS: list[int] = []


@PROBES.register("test_prompt_chars", "prompt length in characters (test probe)", provides=("test_chars",),
                 needs_model=False, needs_labels=True)
def _prompt_chars(ctx: ProbeContext):
    CALLS.append(len(ctx.examples))
    return {"test_chars": np.array([len(ex.prompt_messages[-1]["content"]) for ex in ctx.examples], dtype=np.float32)}, {"examples": len(ctx.examples)}


def _pool(labelled=True):
    rows = [{"prompt": "a" * (i + 1), **({"response": "r"} if labelled else {})} for i in range(5)]
    return records_to_pool(rows, path="mem.jsonl")


def test_registered_probe_is_listed_and_found():
    assert "test_chars" in provided_names()
    assert provider("test_chars").name == "test_prompt_chars"
    assert provider("no_such_score") is None


def test_compute_features_runs_only_needed_probes(cache_dir):
    from llm_al.config import ModelConfig
    from llm_al.run.pipeline import compute_features

    pool = _pool()
    CALLS.clear()
    f = compute_features(pool, set(), ModelConfig(), progress=False)
    assert CALLS == [] and f.scores == {}
    f = compute_features(pool, {"test_chars"}, ModelConfig(), progress=False)
    assert CALLS == [5]
    np.testing.assert_array_equal(f.require("test_chars"), [1, 2, 3, 4, 5])
    assert f.cost["probe_test_prompt_chars"] == {"examples": 5}
    sub = f.take([4, 0])
    np.testing.assert_array_equal(sub.require("test_chars"), [5, 1])


def test_missing_probe_feature_names_the_probe():
    f = Features(ids=["a"], length=np.ones(1, dtype=np.float32))
    with pytest.raises(FeatureUnavailableError, match="test_prompt_chars"):
        f.require("test_chars")


def test_probe_reading_references_refuses_unlabelled_pool():
    pool = records_to_pool([{"prompt": "x"}, {"prompt": "yy"}], path="mem.jsonl", labelled=False)
    with pytest.raises(FeatureUnavailableError, match="reference responses"):
        run_probes({"test_chars"}, ProbeContext(examples=pool.examples))


def test_loop_rescore_recomputes_probe_scores_for_the_remaining_pool(tiny_model):
    from llm_al.config import ExperimentConfig
    from llm_al.features.engine import build_features
    from llm_al.run.loop import rescore

    model, tokenizer = tiny_model
    pool = _pool()
    base = build_features(pool.examples, pool.ids)
    base.scores["test_chars"] = np.zeros(5, dtype=np.float32)      # stale values from round 0
    sub = rescore(model, tokenizer, base, pool.examples, np.array([3, 1]), {"test_chars"}, ExperimentConfig(), [0])
    np.testing.assert_array_equal(sub.require("test_chars"), [4, 2])
    assert sub.ids == [pool.ids[3], pool.ids[1]]


@pytest.mark.parametrize("override, match", [("probe.mc_passes=1", "mc_passes"), ("probe.mc_dropout=1.0", "mc_dropout"),
                                             ("probe.gen_samples=1", "gen_samples"),
                                             ("probe.gen_temperature=0", "gen_temperature"),
                                             ("probe.committee_size=1", "committee_size")])
def test_bad_probe_settings_fail_at_config_load(override, match):
    from llm_al.config import load_config
    from llm_al.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])
