"""model.embedder=model (the LM's own position-weighted mean-pooled hidden states, from the loss pass)
and the RDS+ strategy `rds` with its target-set probe. The vectors are checked against a plain
`model(..., output_hidden_states=True)` on the tiny model; the probe and strategy on clusters whose
answer is known (a toy embedder, or hand-made similarity matrices). ~30 s on a 2-core CPU."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import pool_records, synthetic_features
from llm_al import models
from llm_al.config import ExperimentConfig, ModelConfig, ProbeConfig
from llm_al.data.pool import records_to_pool
from llm_al.errors import BudgetError, ConfigError, FeatureUnavailableError
from llm_al.features.engine import compute_loss_features, compute_model_features, response_token_stats
from llm_al.features.formatting import shared_prefix_length, tokenize
from llm_al.features.probes import ProbeContext
from llm_al.run.pipeline import compute_features
from llm_al.strategies.base import run_strategy
from llm_al.strategies.rds import rds_targets

SYSTEM = "Translate English to French."


@pytest.fixture(scope="module")
def pool():
    return records_to_pool(pool_records(), system_prompt=SYSTEM)


@pytest.fixture(scope="module")
def items(tiny_model, pool):
    return tokenize(tiny_model[1], pool.examples, 128)


def pooled(model, tok, items, **kw) -> np.ndarray:
    out = np.full((len(items), model.config.hidden_size), np.nan, dtype=np.float32)
    response_token_stats(model, items, tok.pad_token_id, embed_out=out, **kw)
    return out


def direct_vector(model, ids: list[int]) -> np.ndarray:
    """The position-weighted mean (weights 1..T) of the final hidden states of one plain forward, unit norm."""
    with torch.no_grad():
        h = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0].double()   # (T, H)
    w = torch.arange(1, len(ids) + 1, dtype=torch.float64)
    v = (h * w[:, None]).sum(0) / w.sum()
    return (v / v.norm()).numpy()


# ---------------------------------------------------------------------------- the pooled vectors
def test_pooled_vectors_are_position_weighted_means_of_the_last_hidden_states(tiny_model, items):
    model, tok = tiny_model
    assert shared_prefix_length(items) >= 8                      # the system turn runs once, as a prefix
    got = pooled(model, tok, items)
    want = np.stack([direct_vector(model, t.prompt_ids + t.response_ids) for t in items])
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    uniform = []                                                 # a plain mean would be another vector
    for t in items[:3]:
        with torch.no_grad():
            h = model(input_ids=torch.tensor([t.prompt_ids + t.response_ids]), output_hidden_states=True)
        v = h.hidden_states[-1][0].double().mean(0)
        uniform.append((v / v.norm()).numpy())
    assert np.abs(np.stack(uniform) - got[:3]).max() > 1e-3


def test_packed_unpacked_unshared_and_alone_pool_the_same_tokens(tiny_model, items, monkeypatch):
    """One item per right-padded row (models that take no block mask), no shared prefix, small rows,
    and an item scored alone (its own prefix: all but one prompt token) give the packed vectors."""
    model, tok = tiny_model
    packed = pooled(model, tok, items)
    for kw in ({"share_prefix": False}, {"row_tokens": 40, "max_tokens": 80, "max_batch": 2}):
        np.testing.assert_allclose(pooled(model, tok, items, **kw), packed, atol=2e-5, rtol=0, err_msg=str(kw))
    np.testing.assert_allclose(pooled(model, tok, items[5:6]), packed[5:6], atol=2e-5, rtol=0)
    monkeypatch.setattr("llm_al.features.engine.takes_block_masks", lambda *a: False)     # e.g. flash-attention
    np.testing.assert_allclose(pooled(model, tok, items, max_batch=5), packed, atol=2e-5, rtol=0)


def test_embeddings_are_cached_beside_the_losses_and_reused(tiny_model, pool, cache_dir, monkeypatch):
    model, tok = tiny_model
    stats, _ = compute_loss_features(model, tok, pool.examples, cache_dir, "tiny", 128, progress_bar=False)
    # the losses are cached, the embeddings not: the pass runs again, filling the embedding cache only
    stats2, vectors, cost = compute_model_features(model, tok, pool.examples, cache_dir, "tiny", 128,
                                                   progress_bar=False, embed=True)
    assert cost["embed_examples"] == len(pool) and vectors.shape == (len(pool), model.config.hidden_size)
    np.testing.assert_allclose(stats2, stats, atol=1e-4)
    (loss_folder,) = cache_dir.glob("loss-v4-*")
    (pooled_folder,) = cache_dir.glob("pooled-v1-*")
    assert len(list(loss_folder.glob("*.npz"))) == 1 and len(list(pooled_folder.glob("*.npz"))) == 1
    np.testing.assert_allclose(vectors, pooled(model, tok, tokenize(tok, pool.examples, 128)), atol=2e-5)

    def boom(*a, **k):
        raise AssertionError("forward pass on a cached example")

    monkeypatch.setattr("llm_al.features.engine.response_token_stats", boom)
    _, again, cost2 = compute_model_features(model, tok, pool.examples, cache_dir, "tiny", 128, progress_bar=False,
                                             embed=True)
    np.testing.assert_array_equal(again, vectors)
    assert cost2["embed_examples"] == cost2["loss_examples_scored"] == 0


def test_model_embedder_fills_features_embeddings_and_kcenter_runs_on_them(tiny_model, tiny_model_dir, pool,
                                                                            cache_dir, monkeypatch):
    model, tok = tiny_model

    def refuse(*a, **k):
        raise AssertionError("a sentence-transformers model was loaded for embedder=model")

    monkeypatch.setattr(models, "load_embedder", refuse)
    cfg = ModelConfig(name=str(tiny_model_dir), embedder="model", device="cpu", max_length=128)
    f = compute_features(pool, {"embeddings"}, cfg, model_and_tokenizer=tiny_model, progress=False)
    assert f.embeddings.shape == (len(pool), model.config.hidden_size) and f.loss is not None   # one pass, both
    np.testing.assert_allclose(f.embeddings, pooled(model, tok, tokenize(tok, pool.examples, 128)), atol=2e-5)
    assert f.cost["embed_examples_needed"] == len(pool)
    sel = run_strategy("kcenter", f, 5, np.random.default_rng(0))
    assert len(set(sel.indices.tolist())) == 5
    unlabelled = records_to_pool([{"prompt": r["source"]} for r in pool_records(3)], labelled=False)
    with pytest.raises(FeatureUnavailableError, match="sentence-transformers"):
        compute_features(unlabelled, {"embeddings"}, cfg, model_and_tokenizer=tiny_model, progress=False)


def test_model_embedder_is_refused_where_a_text_encoder_is_needed():
    from llm_al.strategies.reference_overlap import similarity_scores

    with pytest.raises(ConfigError, match="sentence-transformers"):
        models.load_embedder("model")
    with pytest.raises(ConfigError, match="ref_similarity"):
        similarity_scores(["a text"], ExperimentConfig().overlap, "model")


# ---------------------------------------------------------------------------- the target-set probe
class Clusters:
    """A toy sentence embedder: a text's vector is the sum of one axis per cluster word it holds
    (word cK... -> axis K), so texts of one cluster are close and of different clusters orthogonal."""

    def encode(self, texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False):
        out = np.full((len(texts), 8), 1e-3, dtype=np.float32)
        for i, t in enumerate(texts):
            for w in t.split():
                if w[:1] == "c" and w[1:2].isdigit():
                    out[i, int(w[1])] += 1.0 + 0.01 * len(w)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.fixture()
def toy_embedder(tmp_path, monkeypatch, cache_dir) -> str:
    folder = tmp_path / "toy-embedder"
    folder.mkdir()
    (folder / "modules.json").write_text("[]")
    monkeypatch.setattr(models, "load_embedder", lambda name, device="auto": Clusters())
    return str(folder)


def cluster_rows(cluster: int, n: int, task: str | None = None, start: int = 0) -> list[dict]:
    rows = [{"prompt": f"c{cluster}w{start + i} " * (1 + i % 3), "response": f"r{cluster} {start + i}"}
            for i in range(n)]
    return [{**r, "task": task} for r in rows] if task else rows


def write(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def rds_features(pool, embedder: str, targets: str | None):
    cfg = ExperimentConfig(probe=ProbeConfig(targets=targets))
    return compute_features(pool, {"embeddings", "target_similarity"}, ModelConfig(embedder=embedder),
                            progress=False, cfg=cfg)


def test_rds_picks_the_pool_examples_nearest_the_targets(tmp_path, toy_embedder):
    pool = records_to_pool(cluster_rows(1, 12) + cluster_rows(2, 12) + cluster_rows(3, 12), path="pool.jsonl")
    targets = write(tmp_path / "dev.jsonl", cluster_rows(2, 3, start=100))
    f = rds_features(pool, toy_embedder, targets)
    assert f.scores["target_similarity"].shape == (36, 1) and f.cost["probe_rds_targets"]["target_examples"] == 3
    sel = run_strategy("rds", f, 8, np.random.default_rng(0))
    assert set((sel.indices // 12).tolist()) == {1}                  # pool rows 12-23: cluster 2
    assert (np.diff(sel.scores) <= 1e-7).all() and sel.scores[-1] > 0.9


def test_api_select_takes_a_target_file(tmp_path, toy_embedder):
    from llm_al import api

    pool = records_to_pool(cluster_rows(1, 6) + cluster_rows(2, 6), path="pool.jsonl")
    targets = write(tmp_path / "dev.jsonl", cluster_rows(1, 2, start=100))
    picks = api.select(pool, "rds", 4, model=ModelConfig(embedder=toy_embedder), targets=targets, progress=False)
    assert sorted(p.index // 6 for p in picks) == [0] * 4 and "nearest target example" in picks[0].reason


def test_select_command_takes_a_target_file(tmp_path, toy_embedder):
    from llm_al.cli import main

    pool = write(tmp_path / "pool.jsonl", cluster_rows(1, 6) + cluster_rows(2, 6))
    targets = write(tmp_path / "dev.jsonl", cluster_rows(2, 2, start=100))
    out = tmp_path / "picked.jsonl"
    assert main(["select", pool, "--strategy", "rds", "--budget", "3", "--targets", targets,
                 "--embedder", toy_embedder, "--out", str(out)]) == 0
    picked = [json.loads(line)["prompt"] for line in out.read_text().splitlines()]
    assert len(picked) == 3 and all(p.startswith("c2w") for p in picked)


def test_rds_takes_equal_shares_of_two_target_tasks_round_robin(tmp_path, toy_embedder):
    """Task a's targets sit in cluster 1, task b's in cluster 2; cluster 1 is far closer to its targets
    (identical prompts but for one word), so a ranking by the best similarity alone takes cluster 1 only."""
    pool = records_to_pool(cluster_rows(1, 10) + cluster_rows(2, 10) + cluster_rows(3, 10), path="pool.jsonl")
    targets = write(tmp_path / "dev.jsonl", cluster_rows(1, 2, "a", start=50) + cluster_rows(2, 2, "b", start=50))
    f = rds_features(pool, toy_embedder, targets)
    sim = f.scores["target_similarity"].astype(np.float64)
    sim[10:20, 1] *= 0.5                                              # task b's cluster: now less similar than a's
    f.scores["target_similarity"] = sim
    assert f.cost["probe_rds_targets"]["target_tasks"] == {"a": 2, "b": 2}
    sel = run_strategy("rds", f, 8, np.random.default_rng(0))
    assert (sel.indices[0::2] // 10).tolist() == [0] * 4 and (sel.indices[1::2] // 10).tolist() == [1] * 4
    assert "round-robin over 2 target tasks" in sel.score_name
    top = np.argsort(-np.nanmax(sim, 1))[:8]
    assert set((top // 10).tolist()) == {0}                          # without the round robin: task a only


def test_rds_leaves_out_the_targets_own_prompts(tmp_path, toy_embedder):
    rows = cluster_rows(1, 6) + cluster_rows(2, 6)
    pool = records_to_pool(rows, path="pool.jsonl")
    targets = write(tmp_path / "dev.jsonl", [{**r, "response": "another answer"} for r in rows[6:9]])  # 3 of cluster 2
    f = rds_features(pool, toy_embedder, targets)
    assert np.isnan(f.scores["target_similarity"][6:9]).all() and f.cost["probe_rds_targets"]["left_out"] == 3
    sel = run_strategy("rds", f, 3, np.random.default_rng(0))
    assert sorted(sel.indices.tolist()) == [9, 10, 11]               # the rest of cluster 2, not the targets
    assert len(run_strategy("rds", f, 9, np.random.default_rng(0)).indices) == 9
    with pytest.raises(BudgetError, match="10 examples from a pool of 9 left once the 3 pool examples"):
        run_strategy("rds", f, 10, np.random.default_rng(0))


def test_rds_defaults_to_the_embedded_tasks_dev_split(toy_embedder):
    from llm_al.data.tasks import dev_records, load_task

    task = load_task("django-en-fr")
    dev = {r["source"] for r in dev_records("django-en-fr")}
    rows = [r for r in task.pool if r["source"] in dev][:5] + [r for r in task.pool if r["source"] not in dev][:15]
    pool = records_to_pool(rows, path="embedded:django-en-fr", system_prompt=task.system_prompt,
                           translation_template=task.template)
    ctx = ProbeContext(examples=pool.examples, model_cfg=ModelConfig(embedder=toy_embedder),
                       pool_path="embedded:django-en-fr")
    scores, cost = rds_targets(ctx)
    assert cost["targets"].startswith("embedded:django-en-fr:dev") and cost["target_examples"] == 20
    assert cost["target_tasks"] == {"django-en-fr": 20} and cost["left_out"] == 5
    assert np.isnan(scores["target_similarity"][:5]).all() and not np.isnan(scores["target_similarity"][5:]).any()


def test_rds_without_a_target_set_is_a_clear_error(tmp_path, toy_embedder):
    pool = records_to_pool(cluster_rows(1, 4), path="pool.jsonl")
    with pytest.raises(FeatureUnavailableError, match="probe.targets"):
        rds_targets(ProbeContext(examples=pool.examples, model_cfg=ModelConfig(embedder=toy_embedder),
                                 pool_path="pool.jsonl"))
    with pytest.raises(ConfigError, match="probe.targets"):
        ProbeConfig(targets=str(tmp_path / "missing.jsonl"))


def test_rds_targets_embed_with_the_model_embedder(tiny_model, tiny_model_dir, pool, tmp_path, cache_dir,
                                                   monkeypatch):
    """embedder=model: the targets go through the same scoring pass (and caches) as the pool, with
    the model the pipeline holds (none is loaded again)."""
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("a second model was loaded"))
    targets = write(tmp_path / "dev.jsonl", pool_records()[:2])       # two pool examples: left out
    cfg = ModelConfig(name=str(tiny_model_dir), embedder="model", device="cpu", max_length=128)
    f = compute_features(pool, {"embeddings", "target_similarity"}, cfg, model_and_tokenizer=tiny_model,
                         progress=False, cfg=ExperimentConfig(probe=ProbeConfig(targets=targets)))
    sim = f.scores["target_similarity"]
    assert np.isnan(sim[:2]).all() and f.cost["probe_rds_targets"]["embed_examples"] == 0   # all cached
    want = (f.embeddings[2:] @ f.embeddings[:2].T).max(1)             # same vectors as the pool's own
    np.testing.assert_allclose(sim[2:, 0], want, atol=1e-5)


def test_loop_rounds_keep_model_free_probe_scores(monkeypatch):
    """Target similarity does not depend on the round's adapter (rds_targets registers
    same_every_round): the loop keeps the base scores instead of rerunning the probe."""
    from llm_al.features import probes
    from llm_al.run.loop import rescore

    base = synthetic_features(10)
    base.scores["target_similarity"] = np.arange(20, dtype=np.float32).reshape(10, 2)
    monkeypatch.setattr(probes, "run_probes", lambda *a: pytest.fail("a model-free probe was rerun"))
    sub = rescore(None, None, base, [None] * 10, np.array([1, 3]), {"target_similarity"}, ExperimentConfig(), [])
    np.testing.assert_array_equal(sub.scores["target_similarity"], [[2, 3], [6, 7]])


def test_subset_record_keeps_the_mean_best_target_similarity():
    from llm_al.run.record import subset_means

    f = synthetic_features(4)
    f.scores = {"target_similarity": np.array([[0.2, 0.9], [np.nan, np.nan], [0.5, 0.1], [0.3, 0.3]])}
    record = subset_means(f, np.array([0, 1, 2]))
    assert record["target_similarity_row_max"] == pytest.approx(0.7)   # (0.9 + 0.5) / 2, the NaN row left out


def test_dry_run_counts_model_embeddings_in_the_loss_pass(tiny_model_dir, pool, cache_dir):
    from llm_al.run.estimate import Estimate, add_scoring

    est = Estimate("cpu")
    add_scoring(est, pool.examples, {"embeddings"}, ModelConfig(name=str(tiny_model_dir), embedder="model",
                                                                 max_length=128))
    assert [s.what for s in est.steps] == [f"score {len(pool)} of {len(pool)} pool examples (0 cached), pooling "
                                           "the model's hidden states as embeddings"]
