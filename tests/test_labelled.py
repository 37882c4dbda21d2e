"""The labelled set reaches the strategies: the AL loop attaches what earlier rounds chose
(run/loop.py, with stand-ins for training and evaluation, so no model is needed), `api.select` and
`llm-al select --labelled` take examples already chosen. The strategy-level contract (picks go to
the clusters the labelled set leaves uncovered) is in test_strategies.py. A few seconds."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import cluster_rows
from llm_al import api
from llm_al.cli import main
from llm_al.config import ExperimentConfig, LoopConfig
from llm_al.data.pool import records_to_pool
from llm_al.errors import BudgetError
from llm_al.features.engine import build_features
from llm_al.run.grid import Cell


def clustered_pool(seed: int = 0, big: int = 8):
    """Prompts in 6 well-separated clusters (conftest.cluster_rows), `big` in each of clusters 0-2
    and 8 in each of 3-5: (pool, base features with embeddings and a loss that is highest for 4
    examples of each of clusters 0, 1 and 2, the (N,) cluster of each example)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(6), [big] * 3 + [8] * 3)
    emb, texts = cluster_rows(labels, rng)
    pool = records_to_pool([{"prompt": t, "response": "r"} for t in texts], path="mem.jsonl")
    assert len(pool) == len(labels)                          # no duplicate prompt was dropped
    features = build_features(pool.examples, pool.ids, embeddings=emb)
    first = np.arange(len(labels)) - np.searchsorted(labels, labels)   # position within its cluster
    features.loss = np.where((labels < 3) & (first < 4), 5.0, 1.0).astype(np.float32)
    return pool, features, labels


def run_stub_loop(monkeypatch, strategy: str, features, pool, seen: list):
    """run_loop with one round of 3 after a seed set of 12 (perplexity: the high-loss half of clusters
    0-2), training and evaluation replaced by stand-ins; `seen` collects the Features each strategy
    call gets. Returns the labelled pool positions, seed set first."""
    import llm_al.run.loop as loop

    def spy(name, f, budget, rng, **params):
        seen.append(f)
        return real(name, f, budget, rng, **params)

    real = loop.run_strategy
    monkeypatch.setattr(loop, "run_strategy", spy)
    monkeypatch.setattr(loop, "order_for_training", lambda cell, labelled, features: labelled)
    monkeypatch.setattr(loop, "train_in_order", lambda *a, **k: (
        object(), SimpleNamespace(seconds=0.0, oom_backoffs=0, micro_batch_size=1)))
    monkeypatch.setattr(loop, "evaluate", lambda *a, **k: {"metrics": {}, "seconds": 0.0})
    monkeypatch.setattr(loop, "detach_lora", lambda model: model)
    cfg = ExperimentConfig(loop=LoopConfig(rounds=1, seed_size=12, seed_strategy="perplexity"))
    cell = Cell(strategy=strategy, name=strategy, params={}, budget=15)
    data = SimpleNamespace(pool=pool, test=SimpleNamespace(examples=[]))
    rounds, labelled, _, _ = loop.run_loop(cfg, cell, data, features, None, None, progress=False)
    assert [r["labelled"] for r in rounds] == [12, 15]
    return labelled


def test_loop_kcenter_sees_the_labelled_set_and_picks_the_uncovered_clusters(monkeypatch):
    """The issue's case: k-center in a round used to start from a random remaining example, blind
    to the seed set, and put most picks in clusters the seed set had covered."""
    pool, features, cluster = clustered_pool()
    seen: list = []
    labelled = run_stub_loop(monkeypatch, "kcenter", features, pool, seen)
    seed, picks = labelled[:12], labelled[12:]
    assert sorted(set(cluster[seed].tolist())) == [0, 1, 2]
    round_features = seen[1]                                 # seen[0]: the seed strategy
    assert len(round_features) == 48 - 12 and round_features.labelled is not None
    assert round_features.labelled.ids == [pool.ids[i] for i in seed]
    np.testing.assert_array_equal(round_features.labelled.embeddings, features.embeddings[seed])
    assert sorted(cluster[picks].tolist()) == [3, 4, 5]


def test_loop_gives_the_labelled_rows_the_probe_scores_the_round_computes(monkeypatch):
    """n-gram counts that only the round's rescoring computes (the base features lack them) are
    computed for the labelled examples too, and ngram_coverage counts their n-grams as covered
    (the covered clusters hold more candidates, whose n-grams would otherwise weigh most)."""
    pool, features, cluster = clustered_pool(1, big=20)
    assert "ngram_counts" not in features.scores
    seen: list = []
    labelled = run_stub_loop(monkeypatch, "ngram_coverage", features, pool, seen)
    lab = seen[1].labelled
    assert lab.scores["ngram_counts"].shape[0] == 12 and seen[1].scores["ngram_counts"].shape[0] == 84 - 12
    assert set(cluster[labelled[12:]].tolist()) <= {3, 4, 5}


def test_api_select_picks_beside_a_labelled_set(tmp_path):
    pool, features, cluster = clustered_pool(2)
    chosen = np.flatnonzero((cluster < 3) & (np.arange(48) % 8 < 4))
    labelled = pool.subset(chosen.tolist())
    picks = api.select(pool, "kcenter", 3, features=features, labelled=labelled)
    assert sorted(cluster[[p.index for p in picks]].tolist()) == [3, 4, 5]
    assert not {p.id for p in picks} & set(labelled.ids)
    with pytest.raises(BudgetError, match="37 examples from a pool of 36 left once the 12 examples already in "
                                          "the labelled set"):
        api.select(pool, "random", 37, features=features, labelled=labelled)


def test_select_labelled_is_an_input_and_the_picks_are_new(tmp_path, pool_file, cache_dir, capsys):
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    assert main(["select", str(pool_file), "--strategy", "kcenter", "--budget", "4", "--out", str(first)]) == 0
    code = main(["select", str(pool_file), "--labelled", str(first), "--budget", "4", "--out", str(first)])
    assert code == 2 and "is the input" in capsys.readouterr().err and len(first.read_text().splitlines()) == 4
    code = main(["select", str(pool_file), "--labelled", str(pool_file), "--budget", "1", "--out", str(second)])
    assert code == 2 and "already in the labelled set" in capsys.readouterr().err and not second.exists()
    assert main(["select", str(pool_file), "--strategy", "kcenter", "--labelled", str(first), "--budget", "4",
                 "--out", str(second)]) == 0
    assert "beside the 4 in" in capsys.readouterr().out
    ids = [[json.loads(line)["llm_al_id"] for line in p.read_text().splitlines()] for p in (first, second)]
    assert len(ids[1]) == 4 and not set(ids[0]) & set(ids[1])


def test_list_says_which_strategies_read_the_labelled_set(capsys):
    assert main(["list"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")}
    assert "labelled set: used" in lines["kcenter"] and "labelled set: ignored" in lines["perplexity"]
