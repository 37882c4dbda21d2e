"""Several workers scoring one pool into one feature cache share the chunks (lock-file claims)
instead of each scoring the whole pool; none of them ever waits on another."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import pool_records
from llm_al.data.pool import records_to_pool
from llm_al.features.engine import compute_loss_features, loss_cache_plan
from llm_al.features.cache import text_key

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def pool():
    rows = [{**r, "source": f"{r['source']} {k}"} for k in range(4) for r in pool_records()]   # 96 examples
    return records_to_pool(rows, system_prompt="Translate English to French.")


def _held(tiny_model, pool, tmp_path, held: int):
    """The reference rows (scored into another folder), the cache keys, the chunks of 8 that
    compute_loss_features will make of a fresh cache in tmp_path / "c" (in its order), their claim
    files, and chunk `held` claimed by a live process (this one, standing in for another worker)."""
    model, tok = tiny_model
    ref, _ = compute_loss_features(model, tok, pool.examples, tmp_path / "ref", "tiny", 128, progress_bar=False)
    cache, items, keys = loss_cache_plan(tok, pool.examples, tmp_path / "c", "tiny",
                                         str(next(model.parameters()).dtype), 128, False)
    todo = sorted(range(len(keys)), key=lambda i: -items.lengths[i])
    chunks = [todo[s: s + 8] for s in range(0, len(todo), 8)]
    locks = [cache.path / ".claims" / f"{text_key(*(keys[i] for i in c))}.lock" for c in chunks]
    locks[held].parent.mkdir(parents=True)
    locks[held].write_text(f"{os.getpid()} {socket.gethostname()}\n")
    return ref, keys, chunks, locks


def test_a_chunk_another_worker_holds_is_passed_over_and_not_rescored_once_saved(tiny_model, pool, tmp_path):
    model, tok = tiny_model
    ref, keys, chunks, locks = _held(tiny_model, pool, tmp_path, held=0)
    other = loss_cache_plan(tok, pool.examples, tmp_path / "c", "tiny", str(next(model.parameters()).dtype), 128,
                            False)[0]                                  # the other worker's view of the cache

    def other_worker_saves(n):
        if n == 8:                # after our first chunk: chunk 0 (it holds) and chunk 5 (done, released)
            other.add([keys[i] for i in chunks[0]], ref[chunks[0]])
            other.add([keys[i] for i in chunks[5]], ref[chunks[5]])

    got, cost = compute_loss_features(model, tok, pool.examples, tmp_path / "c", "tiny", 128, progress_bar=False,
                                      chunk_size=8, on_chunk=other_worker_saves)
    # seen while scoring chunk 2, remembered until chunks 5 and 0 come round: neither is scored twice
    assert cost["loss_examples_scored"] == len(pool) - 16
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)   # chunks pack differently
    assert locks[0].exists() and not any(p.exists() for p in locks[1:])   # ours are released, theirs untouched


def test_a_held_chunk_still_missing_at_the_end_is_scored_here(tiny_model, pool, tmp_path):
    """No waiting on the other worker: what it has not saved when this one is through, this one scores."""
    model, tok = tiny_model
    ref, _, _, _ = _held(tiny_model, pool, tmp_path, held=3)
    order = []
    got, cost = compute_loss_features(model, tok, pool.examples, tmp_path / "c", "tiny", 128, progress_bar=False,
                                      chunk_size=8, on_chunk=order.append)
    assert cost["loss_examples_scored"] == len(pool) and order == list(range(8, len(pool) + 1, 8))
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)   # chunks pack differently


def test_two_processes_scoring_one_pool_share_the_work(tiny_model_dir, tmp_path):
    """Two processes start together on 96 examples in chunks of 8 (each chunk made to take 0.15 s):
    between them they score the pool about once, not twice, and both return the same rows."""
    pool_file = tmp_path / "pool.jsonl"
    rows = [{**r, "source": f"{r['source']} {k}"} for k in range(4) for r in pool_records()]
    pool_file.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    script = textwrap.dedent(f"""
        import json, os, sys, time
        from pathlib import Path
        import numpy as np
        from llm_al.data.pool import load_pool
        from llm_al.features.engine import compute_loss_features
        from llm_al.models import load_model
        me = int(sys.argv[1])
        model, tok = load_model({str(tiny_model_dir)!r}, device="cpu")
        pool = load_pool({str(pool_file)!r})
        open(os.path.join({str(tmp_path)!r}, f"ready{{me}}"), "w").close()
        while not all(os.path.exists(os.path.join({str(tmp_path)!r}, f"ready{{k}}")) for k in (0, 1)):
            time.sleep(0.01)
        stats, cost = compute_loss_features(model, tok, pool.examples, Path({str(tmp_path / "cache")!r}), "tiny", 128,
                                            progress_bar=False, chunk_size=8, on_chunk=lambda n: time.sleep(0.15))
        np.save(os.path.join({str(tmp_path)!r}, f"stats{{me}}.npy"), stats)
        print(json.dumps({{"scored": cost["loss_examples_scored"]}}))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(k)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for k in (0, 1)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    scored = [json.loads(out.strip().splitlines()[-1])["scored"] for out, _ in outs]
    assert min(scored) > 0, scored                                     # both took part
    assert len(rows) <= sum(scored) <= len(rows) + 2 * 8, scored       # at most the chunks in flight twice
    np.testing.assert_array_equal(np.load(tmp_path / "stats0.npy"), np.load(tmp_path / "stats1.npy"))
