"""Hardening against the machine: resumable (chunked) scoring, out-of-memory back-off in scoring and
generation, disk-space and writability checks, confined output paths, and the CSV formula guard of
annotation export."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch

import llm_al.features.engine as features_mod
import llm_al.run.resources as resources
from conftest import pool_records
from llm_al.data.annotate import csv_escape, csv_unescape, export_for_annotation, import_annotations
from llm_al.data.pool import load_pool, records_to_pool
from llm_al.errors import UserError
from llm_al.evaluate import generate
from llm_al.features.cache import ShardedCache
from llm_al.features.engine import compute_loss_features
from llm_al.run.grid import Cell
from llm_al.io import confined

# ---------------------------------------------------------------- resumable scoring


def _count_scored(monkeypatch) -> list[int]:
    """Count the examples handed to the model for scoring (every call of response_token_stats)."""
    real, seen = features_mod.response_token_stats, []

    def counting(model, items, *args, **kw):
        seen.append(len(items))
        return real(model, items, *args, **kw)

    monkeypatch.setattr(features_mod, "response_token_stats", counting)
    return seen


def _score(model, tok, examples, cache: Path, **kw):
    return compute_loss_features(model, tok, examples, cache, "tiny", 64, progress_bar=False, **kw)


def test_scoring_interrupted_after_a_chunk_resumes_with_the_rest(tiny_model, tmp_path, monkeypatch):
    model, tok = tiny_model
    examples = records_to_pool(pool_records()).examples                 # 24 examples
    reference, _ = _score(model, tok, examples, tmp_path / "whole", chunk_size=5)

    class Stop(Exception):
        pass

    def stop_after_first(n: int) -> None:
        raise Stop(n)

    with pytest.raises(Stop):
        _score(model, tok, examples, tmp_path / "cut", chunk_size=5, on_chunk=stop_after_first)
    saved = len(ShardedCache(next((tmp_path / "cut").glob("loss-*"))))
    assert saved == 5                                                    # the first chunk reached the disk
    seen = _count_scored(monkeypatch)
    stats, cost = _score(model, tok, examples, tmp_path / "cut", chunk_size=5)
    assert seen == [5, 5, 5, 4] and sum(seen) == cost["loss_examples_scored"] == len(examples) - 5   # only the rest was scored
    np.testing.assert_allclose(stats, reference, rtol=1e-4, atol=1e-4)   # fp32 noise of batch composition
    _, again = _score(model, tok, examples, tmp_path / "cut", chunk_size=5)
    assert again["loss_examples_scored"] == 0


def test_scoring_killed_with_sigkill_resumes(tiny_model, tiny_model_dir, tmp_path):
    """A real `kill -9` while the first chunk's rows sit in the cache: the file is whole, and a
    rerun scores only what is missing and matches an uninterrupted run."""
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in pool_records()), encoding="utf-8")
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from llm_al.data.pool import load_pool
        from llm_al.features.engine import compute_loss_features
        from llm_al.models import load_model
        model, tok = load_model({str(tiny_model_dir)!r}, device="cpu")
        def on_chunk(n):
            print(n, flush=True)
            time.sleep(60)
        compute_loss_features(model, tok, load_pool({str(pool)!r}).examples, Path({str(tmp_path / 'cache')!r}),
                              "tiny", 64, progress_bar=False, chunk_size=7, on_chunk=on_chunk)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        assert proc.stdout.readline().strip() == "7"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    (folder,) = (tmp_path / "cache").glob("*")
    files = sorted(f.name for f in folder.iterdir())
    assert len(files) == 2 and files[1].endswith(".npz"), files          # one shard, no temporary file left,
    assert files[0] == ".claims" and len(list((folder / ".claims").iterdir())) == 1   # the killed chunk claim
    assert len(ShardedCache(folder)) == 7
    model, tok = tiny_model
    examples = load_pool(str(pool)).examples
    stats, cost = _score(model, tok, examples, tmp_path / "cache", chunk_size=7)
    assert cost["loss_examples_scored"] == len(examples) - 7
    assert not (folder / ".claims").exists()                             # the dead worker's lock is cleared
    reference, _ = _score(model, tok, examples, tmp_path / "whole")
    np.testing.assert_allclose(stats, reference, rtol=1e-4, atol=1e-4)   # fp32 noise of batch composition


def test_an_unreadable_cache_is_a_clear_error_and_never_unpickled(tmp_path):
    path = tmp_path / "loss-x.npz"                                       # a single-file cache of earlier versions
    np.savez(path, keys=np.array([{"a": 1}], dtype=object), values=np.zeros((1, 2)))   # needs pickle to load
    with pytest.raises(UserError, match="delete it to recompute"):
        ShardedCache(tmp_path / "loss-x")
    path.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(UserError, match="cannot be read"):
        ShardedCache(tmp_path / "loss-x")


# ---------------------------------------------------------------- out-of-memory back-off


def _fake_oom(times: int):
    state = {"left": times, "calls": []}

    def maybe_raise(*args, **kwargs):
        state["calls"].append(kwargs.get("max_tokens", args[3] if len(args) > 3 else None))
        if state["left"]:
            state["left"] -= 1
            raise torch.OutOfMemoryError("CUDA out of memory (fake)")
    return state, maybe_raise


def test_scoring_halves_max_tokens_on_out_of_memory(tiny_model, tmp_path, monkeypatch):
    model, tok = tiny_model
    examples = records_to_pool(pool_records()).examples
    reference, _ = _score(model, tok, examples, tmp_path / "ref", max_tokens=1024)
    real = features_mod.response_token_stats
    state, maybe_raise = _fake_oom(2)

    def flaky(model, items, pad_id, max_tokens, **kw):
        maybe_raise(max_tokens=max_tokens)
        return real(model, items, pad_id, max_tokens, **kw)

    monkeypatch.setattr(features_mod, "response_token_stats", flaky)
    stats, cost = _score(model, tok, examples, tmp_path / "oom", max_tokens=1024, chunk_size=10)
    assert state["calls"][:4] == [1024, 512, 256, 256]                  # halved twice, then kept for later chunks
    assert cost["loss_oom_backoffs"] == 2 and cost["loss_max_tokens"] == 256
    np.testing.assert_allclose(stats, reference, rtol=1e-4, atol=1e-4)   # fp32 noise of batch composition


def test_scoring_out_of_memory_on_one_example_is_a_clear_error(tiny_model, tmp_path, monkeypatch):
    model, tok = tiny_model
    examples = records_to_pool(pool_records(3)).examples
    state, maybe_raise = _fake_oom(10**6)
    monkeypatch.setattr(features_mod, "response_token_stats", lambda *a, **kw: maybe_raise(*a, **kw))
    with pytest.raises(UserError, match="single example of .* tokens.*model.max_length"):
        _score(model, tok, examples, tmp_path / "oom", max_tokens=4096)
    assert 2 <= len(state["calls"]) <= 14                                # it backed off, and gave up
    assert not list((tmp_path / "oom").rglob("*.npz"))                 # no cache shard written


def test_generation_halves_batch_size_on_out_of_memory(tiny_model, monkeypatch):
    model, tok = tiny_model
    prompts = [f"<|im_start|>user\n{s}<|im_end|>\n<|im_start|>assistant\n" for s, _ in
               [(r["source"], 0) for r in pool_records(7)]]
    reference = generate(model, tok, prompts, 3, batch_size=2, progress_bar=False)
    import llm_al.evaluate as evaluate_mod
    real, sizes = evaluate_mod.decode_batch, []

    def flaky(model, ids, *args, **kw):                # the decoding step every batch goes through
        sizes.append(int(ids.shape[0]))
        if sizes[-1] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (fake)")
        return real(model, ids, *args, **kw)

    monkeypatch.setattr(evaluate_mod, "decode_batch", flaky)
    cost: dict = {}
    assert generate(model, tok, prompts, 3, batch_size=8, progress_bar=False, cost=cost) == reference
    assert sizes[:3] == [7, 4, 2] and cost == {"generate_oom_backoffs": 2, "generate_batch_size": 2}
    monkeypatch.setattr(evaluate_mod, "decode_batch",
                        lambda *a, **kw: (_ for _ in ()).throw(torch.OutOfMemoryError("fake")))
    with pytest.raises(UserError, match="single prompt"):
        generate(model, tok, prompts, 3, batch_size=4, progress_bar=False)


# ---------------------------------------------------------------- disk space and writable folders

Usage = namedtuple("Usage", "total used free")


def test_lora_parameter_estimate_matches_peft(tiny_model):
    from llm_al.train import attach_lora, detach_lora
    from llm_al.config import TrainConfig

    model, _ = tiny_model
    estimate = resources.lora_parameters(model, 4, "all-linear")
    peft_model = attach_lora(model, TrainConfig(lora_r=4), 0)
    try:
        actual = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    finally:
        detach_lora(peft_model)
    assert estimate == actual
    assert resources.lora_parameters(model, 4, ["q_proj"]) == 2 * 4 * (64 + 64)   # 2 layers, 64 -> 64


def test_estimate_grows_with_what_is_written():
    base = dict(runs=10, test_size=100, budget=100, max_new_tokens=64, adapter_params=10**6, save_adapters=False,
                pool_size=1000, loss_passes=1, embedding_dim=0)
    est = resources.estimate_bytes(**base)
    assert resources.estimate_bytes(**{**base, "save_adapters": True})["out"] == est["out"] + 10 * (4 * 10**6 + 4000)
    assert resources.estimate_bytes(**{**base, "runs": 20})["out"] > est["out"]
    assert resources.estimate_bytes(**{**base, "embedding_dim": 384})["cache"] > est["cache"] > 0


def test_disk_check_refuses_when_clearly_insufficient(tmp_path, monkeypatch):
    monkeypatch.setattr(resources.shutil, "disk_usage", lambda p: Usage(10**9, 10**9 - 5 * 10**6, 5 * 10**6))
    resources.check_disk_space({"results": (tmp_path / "out", 10**6), "feature cache": (tmp_path / "c", 10**6)})
    with pytest.raises(UserError, match=r"about 6\.0 MB .* only 5\.0 MB are free"):    # one device: they add up
        resources.check_disk_space({"results": (tmp_path / "out", 5 * 10**6), "feature cache": (tmp_path, 10**6)})


def test_run_fails_fast_on_a_full_disk(tiny_model_dir, pool_file, tmp_path, cache_dir, monkeypatch, capsys):
    from llm_al.cli import main

    test = tmp_path / "test.jsonl"
    test.write_text(json.dumps({"source": "Add", "target": "Ajouter"}) + "\n")
    monkeypatch.setattr(resources.shutil, "disk_usage", lambda p: Usage(10**9, 10**9 - 1000, 1000))
    trained = []
    monkeypatch.setattr("llm_al.run.cell.train_lora", lambda *a, **k: trained.append(1))
    out = tmp_path / "out"
    rc = main(["demo", f"data.pool={pool_file}", f"data.test={test}", f"model.name={tiny_model_dir}", "budget=4",
               "seeds=[0]", "strategies=[random, perplexity]", "progress=false", f"out_dir={out}"])
    assert rc == 2 and "not enough free disk space" in capsys.readouterr().err
    assert not trained and not list(cache_dir.rglob("*.npz")) and not (out / "runs").exists()


def test_an_unwritable_feature_cache_fails_before_scoring(tiny_model, tmp_path, monkeypatch):
    from llm_al.config import ModelConfig
    from llm_al.run.pipeline import compute_features

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("LLM_AL_CACHE", str(blocker))
    pool = records_to_pool(pool_records(4))
    with pytest.raises(UserError, match="cannot write to the feature cache .*LLM_AL_CACHE"):
        compute_features(pool, {"loss"}, ModelConfig(), tiny_model, progress=False)
    assert compute_features(pool, {"length"}, ModelConfig(), progress=False).length is not None   # needs no cache


# ---------------------------------------------------------------- confined output paths


@pytest.mark.parametrize("spec", ["kcenter:x=../../../../tmp/evil", "kcenter:x=/etc/passwd", "kcenter:x=..\\..\\y",
                                  "kcenter:x=a\nb"])
def test_run_ids_from_hostile_specs_stay_inside_runs(tmp_path, spec):
    cell = Cell(spec, "kcenter", {})
    runs = tmp_path / "out" / "runs"
    path = confined(runs, f"{cell.run_id}.json")
    assert path.resolve().parent == runs.resolve()
    assert not any(c in cell.run_id for c in "/\\\n") and ".." not in cell.run_id


@pytest.mark.parametrize("name", ["../escape.json", "a/../../escape.json", "/etc/passwd", "..", ""])
def test_confined_refuses_names_that_leave_the_folder(tmp_path, name):
    with pytest.raises(UserError, match="leads outside"):
        confined(tmp_path / "runs", name)
    assert confined(tmp_path / "runs", "ok.json") == tmp_path / "runs" / "ok.json"


def test_confined_refuses_a_symlink_out(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "link.json").symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(UserError):
        confined(tmp_path / "runs", "link.json")


# ---------------------------------------------------------------- CSV formula injection


@pytest.mark.parametrize("text", ["=SUM(A1:A9)", "+1", "-1", "@cmd", "\tx", "'=x", "''@y", "'plain", "plain", "", "a=b"])
def test_csv_escape_round_trips(text):
    escaped = csv_escape(text)
    assert csv_unescape(escaped) == text
    assert not escaped[:1] in ("=", "+", "-", "@", "\t", "\r")


def test_annotation_csv_guards_formulas_and_imports_them_back_exactly(tmp_path):
    pool_path = tmp_path / "pool.jsonl"
    prompts = [{"prompt": "=HYPERLINK(\"http://x\")"}, {"prompt": "-2 + 3?"}, {"prompt": "'=quoted"}, {"prompt": "ok"}]
    pool_path.write_text("".join(json.dumps(p) + "\n" for p in prompts), encoding="utf-8")
    pool = load_pool(str(pool_path), labelled=False)
    drafts = ["@SUM(1)", "+5", "'-x", "fine"]
    out = export_for_annotation(pool, range(4), tmp_path / "todo.csv", drafts=drafts)
    with open(out, encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["prompt"] for r in rows] == ["'=HYPERLINK(\"http://x\")", "'-2 + 3?", "''=quoted", "ok"]
    assert [r["response"] for r in rows] == ["'@SUM(1)", "'+5", "''-x", "fine"]
    for r in rows:                                                       # no cell a spreadsheet would evaluate
        assert all(not v[:1] in ("=", "+", "-", "@") for v in r.values())
    examples, report = import_annotations(out, pool, accept_drafts=True)
    assert [ex.response for ex in examples] == drafts and report.unchanged == 4
    jsonl = export_for_annotation(pool, range(4), tmp_path / "todo.jsonl", drafts=drafts)
    assert [json.loads(line)["response"] for line in jsonl.read_text().splitlines()] == drafts   # JSON: as is
    assert [ex.response for ex in import_annotations(jsonl, pool, accept_drafts=True)[0]] == drafts

