"""Benchmark of the feature cache: the sharded, append-only llm_al.features.cache.ShardedCache against the
single-file RowCache it replaced (a copy of which is kept below), filled the way
compute_loss_features fills it; plus the memory of tokenising a pool up front.

    .venv/bin/python eval/bench_cache.py           # ~10 min on 2 (shared) CPU cores; ~1.5 GB temp disk
    .venv/bin/python eval/bench_cache.py --quick   # 10k and 100k rows only, no tokenising: ~2 min

Rows: 15 float64 columns (like the loss statistics) keyed by 24-char hex keys, seeded. A fill
opens the cache, asks `missing` for all keys, then adds them in chunks of 256 (SCORE_CHUNK). A
load opens the filled cache in a fresh process, asks `missing` and `get` of every key (checked
equal to what was written). Each measurement runs in its own child process: seconds, bytes
written (/proc/self/io wchar: every byte handed to write()), the files left on disk, and the peak
RSS above the child's RSS just before (VmHWM, reset through /proc/self/clear_refs once the
synthetic data exists). The old cache rewrites its whole file on every add, so its fill grows
quadratically: it is measured up to OLD_MAX rows and its growth exponent reported.
Tokenising: 100k synthetic chat examples (prompts of 20-80 words, responses of 10-120, from a
fixed vocabulary) through llm_al.features.formatting.tokenize with the embedded SmolLM2 tokenizer, as
loss_cache_plan does for the whole pool before scoring. Machine load averages are recorded with
every row (the machine is shared). The printed report is also written to
eval/results/bench_cache.txt.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np

COLUMNS, CHUNK, SEED = 15, 256, 0
SIZES = (10_000, 100_000, 1_000_000)
OLD_SIZES = (10_000, 30_000, 100_000)
TOKENIZE_N = 100_000
RESULT = Path(__file__).parent / "results" / "bench_cache.txt"


class RowCache:
    """The cache before llm_al.features.cache (llm_al/features/engine.py up to 8c5733b), verbatim but for the
    error type: a file of rows keyed by text hash, rewritten whole on every add."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: dict[str, np.ndarray] = {}
        if path.exists():
            try:                                   # never allow_pickle: a cache file is data only
                with np.load(path) as z:
                    self.rows = dict(zip(z["keys"].tolist(), z["values"]))
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
                raise RuntimeError(f"feature cache {str(path)!r} cannot be read ({err})") from None

    def missing(self, keys: Sequence[str]) -> list[int]:
        return [i for i, k in enumerate(keys) if k not in self.rows]

    def add(self, keys: Sequence[str], values: np.ndarray) -> None:
        from llm_al.io import atomic_path

        self.rows.update(zip(keys, values))
        keys_all = np.array(list(self.rows), dtype=object).astype(str)
        with atomic_path(self.path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, keys=keys_all, values=np.stack([self.rows[k] for k in self.rows]))

    def get(self, keys: Sequence[str]) -> np.ndarray:
        return np.stack([self.rows[k] for k in keys])


# ---------------------------------------------------------------------------- child side
def _status(field: str) -> int:
    """A /proc/self/status field in bytes (VmRSS, VmHWM)."""
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1)) * 1024


def _wchar() -> int:
    return int(re.search(r"^wchar: (\d+)", Path("/proc/self/io").read_text(), re.M).group(1))


def _reset_peak() -> int:
    Path("/proc/self/clear_refs").write_text("5")       # VmHWM := VmRSS
    return _status("VmRSS")


def synthetic_rows(n: int) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(SEED)
    hexes = rng.bytes(12 * n).hex()
    keys = [hexes[i:i + 24] for i in range(0, 24 * n, 24)]                     # (n,) 24-char hex
    return keys, rng.normal(size=(n, COLUMNS))                                   # (n, 15) float64


def _open(kind: str, folder: Path):
    if kind == "old":
        return RowCache(folder / "old.npz")
    from llm_al.features.cache import ShardedCache

    return ShardedCache(folder / "new")


def _disk(folder: Path) -> tuple[int, int]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


def child_fill(kind: str, n: int, folder: Path) -> dict:
    keys, values = synthetic_rows(n)
    load0 = os.getloadavg()
    rss0, w0, t0 = _reset_peak(), _wchar(), time.perf_counter()
    cache = _open(kind, folder)
    todo = cache.missing(keys)
    for start in range(0, len(todo), CHUNK):
        chunk = todo[start:start + CHUNK]
        cache.add([keys[i] for i in chunk], values[chunk])
    seconds = time.perf_counter() - t0
    disk, files = _disk(folder)
    return {"seconds": seconds, "written": _wchar() - w0, "disk": disk, "files": files,
            "peak_extra": _status("VmHWM") - rss0, "rss0": rss0, "load": [load0, os.getloadavg()]}


def child_load(kind: str, n: int, folder: Path) -> dict:
    keys, values = synthetic_rows(n)
    load0 = os.getloadavg()
    rss0, t0 = _reset_peak(), time.perf_counter()
    cache = _open(kind, folder)
    t_open = time.perf_counter()
    assert cache.missing(keys) == [], "rows missing after the fill"
    t_missing = time.perf_counter()
    got = cache.get(keys)
    t_get = time.perf_counter()
    peak = _status("VmHWM") - rss0
    assert np.array_equal(got, values), "get returned other rows than were written"
    return {"open": t_open - t0, "missing": t_missing - t_open, "get": t_get - t_missing, "peak_extra": peak,
            "rss0": rss0, "load": [load0, os.getloadavg()]}


def synthetic_examples(n: int):
    from llm_al.data.pool import records_to_pool

    rng = np.random.default_rng(SEED)
    vocab = sorted({w for w in Path(np.__file__).with_name("__init__.py").read_text().split() if w.isalpha()})

    def text(lo: int, hi: int) -> str:
        return " ".join(vocab[i] for i in rng.integers(0, len(vocab), size=int(rng.integers(lo, hi + 1))))
    return records_to_pool([{"instruction": text(20, 80), "output": text(10, 120)} for _ in range(n)]).examples


def child_tokenize(n: int) -> dict:
    from transformers import AutoTokenizer

    from llm_al import models
    from llm_al.features.formatting import tokenize

    tok = AutoTokenizer.from_pretrained(models.resolve(models.EMBEDDED_MODEL))
    examples = synthetic_examples(n)
    load0 = os.getloadavg()
    rss0, t0 = _reset_peak(), time.perf_counter()
    items = tokenize(tok, examples, 2048)
    seconds = time.perf_counter() - t0
    held = _status("VmRSS") - rss0
    tokens = sum(t.length for t in items)
    return {"seconds": seconds, "held": held, "peak_extra": _status("VmHWM") - rss0, "tokens": tokens,
            "examples": len(items), "rss0": rss0, "load": [load0, os.getloadavg()]}


# ---------------------------------------------------------------------------- parent side
def run_child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "child", *args], capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if out.returncode:
        raise RuntimeError(f"child {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _mb(b: float) -> str:
    return f"{b / 1e6:,.1f}"


def _load(r: dict) -> str:
    return f"{r['load'][0][0]:.1f}->{r['load'][1][0]:.1f}"


def main(quick: bool) -> str:
    sizes = SIZES[:2] if quick else SIZES
    old_sizes = tuple(n for n in OLD_SIZES if n <= max(sizes))
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    lines = [f"bench_cache: feature cache fill / load / get (llm_al.features.cache.ShardedCache vs the old RowCache), "
             f"{time.strftime('%Y-%m-%d %H:%M')}",
             f"machine: {os.cpu_count()} CPUs, {cpu}; Python {platform.python_version()}, numpy {np.__version__}; "
             f"load average at start {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1/5/15 min; shared machine)",
             f"rows: {COLUMNS} float64 columns + a 24-char hex key, added in chunks of {CHUNK} after one `missing`",
             "", f"{'cache':<6}{'rows':>11}{'fill s':>9}{'written MB':>12}{'disk MB':>9}{'files':>7}"
             f"{'fill peak MB':>14}{'open s':>8}{'missing s':>10}{'get s':>7}{'load peak MB':>14}"
             "  load avg (fill; load)"]
    results: dict[tuple[str, int], tuple[dict, dict]] = {}
    for kind, ns in (("new", sizes), ("old", old_sizes)):
        for n in ns:
            with tempfile.TemporaryDirectory(prefix="bench_cache-") as tmp:
                fill = run_child("fill", kind, str(n), tmp)
                load = run_child("load", kind, str(n), tmp)
            results[(kind, n)] = (fill, load)
            lines.append(f"{kind:<6}{n:>11,}{fill['seconds']:>9.2f}{_mb(fill['written']):>12}{_mb(fill['disk']):>9}"
                         f"{fill['files']:>7}{_mb(fill['peak_extra']):>14}{load['open']:>8.2f}{load['missing']:>10.2f}"
                         f"{load['get']:>7.2f}{_mb(load['peak_extra']):>14}  {_load(fill)}; {_load(load)}")
            print(lines[-1], flush=True)
    lines.append("fill s: open + missing + every add; written MB: bytes handed to write() by the filling process; "
                 "disk MB / files: what is left; peak MB: peak RSS above the child's RSS once the synthetic rows "
                 "exist (VmHWM after clear_refs); open s: opening the filled cache in a fresh process; get s: `get` "
                 "of every key, checked equal to the rows written.")
    lines.append("")
    for kind, ns in (("new", sizes), ("old", old_sizes)):
        if len(ns) >= 2:
            (a, b) = ns[0], ns[-1]
            fa, fb = results[(kind, a)][0], results[(kind, b)][0]
            k_s = np.log(fb["seconds"] / fa["seconds"]) / np.log(b / a)
            k_w = np.log(fb["written"] / fa["written"]) / np.log(b / a)
            lines.append(f"{kind}: rows x{b // a} -> fill seconds x{fb['seconds'] / fa['seconds']:.1f} "
                         f"(~ rows^{k_s:.2f}), bytes written x{fb['written'] / fa['written']:.1f} (~ rows^{k_w:.2f})")
    if ("old", max(old_sizes)) in results and max(sizes) > max(old_sizes):
        n_old, n_new = max(old_sizes), max(sizes)
        fo = results[("old", n_old)][0]
        scale = (n_new / n_old) ** 2
        lines.append(f"old at {n_new:,} rows, not run: quadratic extrapolation from {n_old:,} gives "
                     f"~{fo['seconds'] * scale / 60:.0f} min and ~{fo['written'] * scale / 1e9:.0f} GB written "
                     f"(each of the {n_new // CHUNK:,} adds rewrites every row so far)")
    if not quick:
        r = run_child("tokenize", str(TOKENIZE_N))
        lines += ["", f"tokenising {r['examples']:,} synthetic examples (prompts of 20-80 words, responses of 10-120) "
                  f"with the embedded SmolLM2 tokenizer through llm_al.features.formatting.tokenize (max_length 2048):",
                  f"  {r['seconds']:.1f} s, {r['tokens']:,} tokens ({r['tokens'] / r['examples']:.0f} per example); "
                  f"RSS held by the result {_mb(r['held'])} MB ({r['held'] / r['tokens']:.0f} bytes per token; "
                  f"int32 arrays would take 4), peak {_mb(r['peak_extra'])} MB above the RSS before "
                  f"({_mb(r['rss0'])} MB: tokenizer + examples); load avg {_load(r)}",
                  f"  linear in the pool: ~{r['held'] / r['examples'] * 1e6 / 1e9:.1f} GB for 1M such examples "
                  "(compute_loss_features tokenises the whole pool before scoring any of it)"]
    lines.append(f"load average at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        what, *rest = sys.argv[2:]
        if what == "tokenize":
            result = child_tokenize(int(rest[0]))
        else:
            result = {"fill": child_fill, "load": child_load}[what](rest[0], int(rest[1]), Path(rest[2]))
        print(json.dumps(result))
    else:
        from llm_al.io import write_text

        report = main(quick="--quick" in sys.argv[1:])
        print(report)
        if "--quick" not in sys.argv[1:]:
            write_text(RESULT, report)
