"""llm_al.run.distributed on a local 2-CPU Ray cluster with the tiny model: pool scoring sharded over
actors equals the single-process features, and a sweep split over Ray workers does every cell
once with the single-process results. Skipped when ray is not installed (the `ray` extra)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from llm_al.config import ModelConfig, load_config  # noqa: E402
from llm_al.data.pool import load_pool  # noqa: E402
from llm_al.run.distributed import _shards, run_sweep_ray, score_pool_ray, start_scorers  # noqa: E402
from llm_al.errors import ConfigError  # noqa: E402
from llm_al.run.pipeline import compute_features  # noqa: E402
from llm_al.seeds import rng  # noqa: E402
from llm_al.strategies.base import run_strategy  # noqa: E402


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray cluster for the module (its start-up is most of this file's time)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def _model_cfg(tiny_model_dir: Path, **kw) -> ModelConfig:
    return ModelConfig(name=str(tiny_model_dir), device="cpu", max_length=48, **kw)


def test_shards_deal_long_and_short_rows_evenly():
    shards = _shards([5, 50, 10, 40, 30, 20], 2)
    assert [s.tolist() for s in shards] == [[1, 4, 2], [3, 5, 0]]     # 50 30 10 | 40 20 5
    assert sorted(np.concatenate(shards).tolist()) == list(range(6))
    assert [len(s) for s in _shards([1, 2], 3)] == [1, 1, 0]


def test_bad_requests_fail_before_any_work(tiny_model_dir, pool_file):
    pool = load_pool(str(pool_file))
    with pytest.raises(ConfigError, match="num_workers must be a positive integer, got 0"):
        score_pool_ray(pool, {"loss"}, _model_cfg(tiny_model_dir), 0)
    from llm_al.features.probes import provided_names

    probe = provided_names()[0]
    with pytest.raises(ConfigError, match=f"not probe scores \\({probe}"):
        score_pool_ray(pool, {"loss", probe}, _model_cfg(tiny_model_dir), 2)


@pytest.fixture(scope="module")
def tiny_embedder_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A sentence-transformers folder: the tiny Llama, mean-pooled (64 dimensions)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers import models as st_models

    out = tmp_path_factory.mktemp("tiny-embedder")
    body = st_models.Transformer(str(tiny_model_dir), max_seq_length=64)
    SentenceTransformer(modules=[body, st_models.Pooling(64, "mean")], device="cpu").save(str(out))
    return out


def test_score_pool_equals_single_process(ray_cluster, tiny_model_dir, tiny_embedder_dir, pool_file, cache_dir,
                                          monkeypatch):
    from llm_al.config import parse_strategy

    pool = load_pool(str(pool_file))
    cfg = _model_cfg(tiny_model_dir, embedder=str(tiny_embedder_dir))
    needs = {"loss", "entropy", "min_k", "ifd", "embeddings"}    # passes with and without the prompt, embeddings
    single = compute_features(pool, needs, cfg, progress=False)
    monkeypatch.setenv("LLM_AL_CACHE", str(cache_dir.parent / "ray-cache"))   # no shared cache rows
    actors = start_scorers(2, cfg)
    dist = score_pool_ray(pool, needs, cfg, 2, actors=actors)
    assert dist.ids == single.ids
    for name in ("loss", "entropy", "min_k", "direct_loss", "ifd", "embeddings"):
        np.testing.assert_allclose(dist.get(name), single.get(name), rtol=1e-5, atol=1e-5, err_msg=name)
    np.testing.assert_array_equal(dist.n_tokens, single.n_tokens)
    assert dist.embeddings.shape == (len(pool), 64)
    assert dist.cost["loss_examples_scored"] == dist.cost["direct_examples_scored"] == dist.cost["embed_examples"] \
        == len(pool)
    assert dist.cost["workers"] == 2
    where = ray.get([a.where.remote() for a in actors])
    assert len({w for w, _ in where}) == 2 and all(n == 3 for _, n in where)   # one shard a pass each
    for spec in ("perplexity", "perplexity:band=middle", "ifd", "min_k", "kcenter"):
        name, params = parse_strategy(spec)
        a = run_strategy(name, single, 6, rng(3, "subset"), **params)
        b = run_strategy(name, dist, 6, rng(3, "subset"), **params)
        assert a.indices.tolist() == b.indices.tolist(), spec
    again = score_pool_ray(pool, needs, cfg, 2, actors=actors)      # every row now cached: no model work
    assert again.cost["loss_examples_scored"] == again.cost["direct_examples_scored"] == again.cost["embed_examples"] \
        == 0
    np.testing.assert_array_equal(again.loss, dist.loss)
    assert all(n == 3 for _, n in ray.get([a.where.remote() for a in actors]))
    for a in actors:
        ray.kill(a)


def _recipe(tmp_path: Path, tiny_model_dir: Path, pool_file: Path) -> Path:
    test = tmp_path / "test.jsonl"
    test.write_text(json.dumps({"source": "Delete", "target": "Supprimer"}) + "\n")
    recipe = tmp_path / "sweep.yaml"
    recipe.write_text(f"""
budget: 4
strategies: [random, perplexity]
seeds: [0, 1]
progress: false
save_adapters: false
data: {{pool: {pool_file}, test: {test}}}
model: {{name: {tiny_model_dir}, max_length: 48, device: cpu}}
train: {{epochs: 1, batch_size: 2, lora_r: 2}}
eval: {{max_new_tokens: 3}}
overlap: {{reference: null}}
""")
    return recipe


def test_sweep_over_ray_workers_matches_single_process(ray_cluster, tmp_path, tiny_model_dir, pool_file, cache_dir,
                                                       monkeypatch):
    from llm_al.run.experiment import run_experiment

    recipe = _recipe(tmp_path, tiny_model_dir, pool_file)
    single = run_experiment(load_config(recipe, [f"out_dir={tmp_path / 'single'}"]))
    monkeypatch.setenv("LLM_AL_CACHE", str(cache_dir.parent / "ray-cache"))    # the Ray side scores afresh
    out = tmp_path / "ray"
    summary = run_sweep_ray(load_config(recipe, [f"out_dir={out}"]), 2)

    cells = sorted(f"{s}-shuffled-s{k}o{k}i{k}" for s in ("random", "perplexity") for k in (0, 1))
    ran = [r for w in summary["workers"] for r in w["ran"]]
    assert sorted(ran) == cells                                    # every cell trained exactly once
    assert summary["workers"][-1]["final"] and summary["workers"][-1]["ran"] == []
    assert sorted(p.stem for p in (out / "runs").glob("*.json")) == sorted([*cells, "untrained"])
    assert not list(out.rglob("*.lock"))
    for cell in cells:
        a = json.loads((tmp_path / "single" / "runs" / f"{cell}.json").read_text())
        b = json.loads((out / "runs" / f"{cell}.json").read_text())
        assert b["status"] == "ok", b.get("error")
        assert a["selection"]["ids"] == b["selection"]["ids"], cell
        assert a["order"]["ids"] == b["order"]["ids"], cell
        assert a["eval"]["metrics"] == b["eval"]["metrics"], cell
        np.testing.assert_allclose(a["train"]["losses"], b["train"]["losses"], rtol=1e-4, err_msg=cell)
    assert summary["runs"] == single["runs"] == 4                  # the final summary covers every worker's cells
    primary = single["primary"]
    assert [r[primary]["values"] for r in summary["strategies"]] == [r[primary]["values"] for r in single["strategies"]]
    assert json.loads((out / "summary.json").read_text())["runs"] == 4


def test_cli_ray_flags(tmp_path, capsys):
    from llm_al.cli import _options_last, main

    moved = _options_last(["run", "r.yaml", "--ray", "budget=5", "--workers", "3", "x=1", "--ray-address=h:1"],
                          {"--ray": 0, "--workers": 1, "--ray-address": 1})
    assert moved == ["run", "r.yaml", "budget=5", "x=1", "--ray", "--workers", "3", "--ray-address=h:1"]
    recipe = tmp_path / "r.yaml"
    recipe.write_text("budget: 4\n")
    assert main(["run", str(recipe), "--workers", "2", "budget=5"]) == 2       # --workers without --ray
    assert "--workers and --ray-address go with --ray" in capsys.readouterr().err
