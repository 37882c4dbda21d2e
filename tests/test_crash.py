"""Crash safety: an experiment killed with SIGKILL at random moments and restarted finishes with
every cell done exactly once, no half-written file, and no lock left behind; two workers split a
sweep without doing a cell twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from llm_al.run.experiment import claim


def _recipe(tmp_path: Path, tiny_model_dir: Path, pool_file: Path, out: Path) -> Path:
    test = tmp_path / "test.jsonl"
    test.write_text(json.dumps({"source": "Delete", "target": "Supprimer"}) + "\n")
    recipe = tmp_path / f"{out.name}.yaml"
    recipe.write_text(f"""
out_dir: {out}
budget: 4
strategies: [random, kcenter]
design: grid
subset_seeds: [0, 1, 2]
order_seeds: [0]
progress: false
save_adapters: false
data: {{pool: {pool_file}, test: {test}}}
model: {{name: {tiny_model_dir}, max_length: 48}}
train: {{epochs: 1, batch_size: 2, lora_r: 2}}
eval: {{max_new_tokens: 2}}
""")
    return recipe


def _start(recipe: Path, env: dict, stderr=subprocess.DEVNULL) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "llm_al.cli", "run", str(recipe)], env=env,
                            stdout=subprocess.DEVNULL, stderr=stderr, text=True)


def _check_complete(out: Path) -> None:
    names = sorted(p.name for p in (out / "runs").glob("*.json"))
    expected = [f"{s}-shuffled-s{k}o0i0.json" for s in ("kcenter", "random") for k in range(3)] + ["untrained.json"]
    assert names == expected
    for p in (out / "runs").glob("*.json"):
        assert json.loads(p.read_text())["status"] == "ok"
    leftovers = [p.name for p in out.rglob("*") if p.suffix in (".tmp", ".lock") or p.name.endswith(".tmp")]
    assert not leftovers, leftovers


def test_kill_9_at_random_points_then_resume(tmp_path, tiny_model_dir, pool_file, cache_dir):
    out = tmp_path / "out"
    recipe = _recipe(tmp_path, tiny_model_dir, pool_file, out)
    env = {**os.environ, "LLM_AL_CACHE": str(cache_dir)}
    rng = np.random.default_rng(0)
    kills = 0
    for _ in range(6):                                   # kill at random moments of a ~10 s run
        proc = _start(recipe, env)
        time.sleep(float(rng.uniform(2.0, 8.0)))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        for p in (out / "runs").glob("*.json") if (out / "runs").exists() else []:
            json.loads(p.read_text())                    # never a half-written result
    assert kills >= 3
    proc = _start(recipe, env)
    assert proc.wait(timeout=300) == 0
    _check_complete(out)
    assert (out / "summary.json").exists()


def test_two_workers_split_a_sweep(tmp_path, tiny_model_dir, pool_file, cache_dir):
    out = tmp_path / "shared"
    recipe = _recipe(tmp_path, tiny_model_dir, pool_file, out)
    env = {**os.environ, "LLM_AL_CACHE": str(cache_dir)}
    workers = [_start(recipe, env, stderr=subprocess.PIPE) for _ in range(2)]
    logs = [w.communicate(timeout=300)[1] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [log[-3000:] for log in logs]
    _check_complete(out)
    ran = [line.split()[-1] for log in logs for line in log.splitlines() if line.startswith("running ")]
    assert sorted(ran) == sorted(set(ran)) and len(ran) == 6          # every cell trained exactly once
    authors = {json.loads(p.read_text())["worker"] for p in (out / "runs").glob("*-shuffled-*.json")}
    assert 1 <= len(authors) <= 2


def test_claim_is_exclusive_and_takes_over_stale_locks(tmp_path):
    path = tmp_path / "runs" / "cell.json"
    with claim(path) as first:
        assert first
        with claim(path) as second:
            assert not second                            # held by a live process (this one)
    assert not path.with_suffix(".lock").exists()
    path.with_suffix(".lock").write_text(f"999999999 {os.uname().nodename}\n")   # a dead process
    with claim(path) as third:
        assert third


def test_a_lock_being_written_is_held_and_an_old_empty_one_is_stale(tmp_path):
    """Between O_EXCL creating a lock and writing its owner, the file is empty: another worker
    must not take it over then (it would do the cell or chunk twice); an empty lock left long ago is
    stale."""
    import os
    import time

    from llm_al.io import FRESH_LOCK_SECONDS, _alive

    lock = tmp_path / "cell.lock"
    lock.write_text("")
    assert _alive(lock)
    old = time.time() - FRESH_LOCK_SECONDS - 5
    os.utime(lock, (old, old))
    assert not _alive(lock)
    with claim(tmp_path / "cell") as mine:                    # and claim() takes the stale one over
        assert mine
