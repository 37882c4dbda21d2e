"""Fail fast, before a long run, on what it will lack: a writable output or cache folder, or the
disk space its files need.

The space estimate is rough and errs high: per run a result JSON (predictions, per-example
metrics, the selection), the adapter when `save_adapters` is on (r x (in + out) parameters of
every targeted linear layer, 4 bytes each), and per pool example one cache row per scoring pass
(twice: a merge of cache shards writes the merged shard before it deletes its inputs). A run is
refused only when the free space (shutil.disk_usage) is below that estimate, i.e. when it is
clearly insufficient.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from llm_al.config import ExperimentConfig
from llm_al.errors import UserError
from llm_al.types import DIRECT_FEATURES, LOSS_FEATURES

RESULT_BASE_BYTES = 16_000          # config, versions, timings of one result JSON
SUMMARY_BYTES = 200_000             # summary.json, tables, config.yaml
CACHE_ROW_BYTES = 184               # one loss/direct row: 11 float64 + a 24-char unicode key (4 bytes a char)
KEY_BYTES = 100


def check_writable(path: str | os.PathLike, what: str) -> None:
    """Create `path` if needed and write a file in it; a UserError naming `what` if that fails."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise UserError(f"cannot write to {what} {str(path)!r}: {err.strerror or err}") from None


def lora_parameters(model, r: int, target_modules: str | list[str]) -> int:
    """Parameters of a LoRA adapter of rank `r` on `model`: r x (in + out) per targeted linear
    layer ("all-linear": every nn.Linear but the output head)."""
    import torch

    total = 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        leaf = name.rsplit(".", 1)[-1]
        hit = leaf != "lm_head" if target_modules == "all-linear" else leaf in target_modules
        if hit:
            total += r * (module.in_features + module.out_features)
    return total


def estimate_bytes(*, runs: int, test_size: int, budget: int, max_new_tokens: int, adapter_params: int,
                   save_adapters: bool, pool_size: int, loss_passes: int, embedding_dim: int) -> dict[str, int]:
    """Rough bytes an experiment writes: {"out": under out_dir, "cache": under the feature cache}."""
    per_run = RESULT_BASE_BYTES + test_size * (4 * max_new_tokens + 160) + budget * 120
    out = SUMMARY_BYTES + runs * per_run + (runs * (4 * adapter_params + 4_000) if save_adapters else 0)
    cache = 2 * pool_size * (loss_passes * CACHE_ROW_BYTES + (4 * embedding_dim + KEY_BYTES if embedding_dim else 0))
    return {"out": int(out), "cache": int(cache)}


def check_disk_space(needs: dict[str, tuple[Path, int]]) -> None:
    """`needs`: what -> (folder, bytes). Folders on one device add up. A UserError if any device
    has less free space than what will be written to it."""
    by_device: dict[int, list[tuple[str, Path, int]]] = {}
    for what, (folder, nbytes) in needs.items():
        folder = Path(folder)
        existing = next(p for p in (folder, *folder.parents) if p.exists())
        by_device.setdefault(existing.stat().st_dev, []).append((what, existing, nbytes))
    for entries in by_device.values():
        need = sum(n for _, _, n in entries)
        free = shutil.disk_usage(entries[0][1]).free
        if free < need:
            parts = ", ".join(f"{what} ~{n / 1e6:.1f} MB in {folder}" for what, folder, n in entries)
            raise UserError(f"not enough free disk space: this run will write about {need / 1e6:.1f} MB ({parts}) "
                            f"but only {free / 1e6:.1f} MB are free there; free some space, or point out_dir / "
                            "LLM_AL_CACHE at a larger disk (save_adapters=false saves the most)")


def check_run_resources(cfg: ExperimentConfig, model, needs: set[str], *, runs: int, pool_size: int, test_size: int,
                        cache_dir: Path) -> dict[str, int]:
    """Before an experiment's long steps: the cache folder is writable and both folders have room.
    Returns the estimate (bytes)."""
    check_writable(cache_dir, "the feature cache (set LLM_AL_CACHE to a writable folder)")
    passes = int(bool(needs & LOSS_FEATURES)) + int(bool(needs & DIRECT_FEATURES))
    adapter = lora_parameters(model, cfg.train.lora_r, cfg.train.target_modules) if cfg.save_adapters else 0
    est = estimate_bytes(runs=runs, test_size=test_size, budget=max(cfg.budget_list),
                         max_new_tokens=cfg.eval.max_new_tokens, adapter_params=adapter,
                         save_adapters=cfg.save_adapters, pool_size=pool_size, loss_passes=passes,
                         embedding_dim=1024 if "embeddings" in needs else 0)
    check_disk_space({"results": (Path(cfg.out_dir), est["out"]), "feature cache": (cache_dir, est["cache"])})
    return est
