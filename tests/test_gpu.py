"""Checks that need a CUDA GPU (marker `gpu`: deselected by default; eval/gpu_check.sh runs them on
the device machine with `pytest -m gpu tests/test_gpu.py`), plus a CPU smoke run of the GPU
benchmark script so it cannot rot between GPU sessions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import pool_records

ROOT = Path(__file__).resolve().parent.parent

torch = pytest.importorskip("torch")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")


def test_gpu_benchmark_script_runs_on_cpu(tiny_model_dir, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in pool_records()), encoding="utf-8")
    out = tmp_path / "bench.txt"
    proc = subprocess.run([sys.executable, str(ROOT / "eval" / "bench_gpu.py"), "--smoke", "--device", "cpu",
                           "--tokenizer", str(tiny_model_dir), "--pairs", str(pairs), "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = out.read_text()
    for line in ("batch-size-1 loop", "llm_al pass, max_tokens=1024", "LoRA training", "greedy generation"):
        assert line in text, text
    diff = float(text.split("max |loss diff| vs batch-1 ")[1].split(")")[0])
    assert diff < 1e-4, text           # fp32 on CPU: the packed pass gives the batch-size-1 losses


# ---------------------------------------------------------------------------- on a GPU
@pytest.fixture(scope="module")
def items_and_tok(tiny_model_dir):
    from transformers import AutoTokenizer

    from llm_al.data.pool import records_to_pool
    from llm_al.features.formatting import tokenize

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    pool = records_to_pool(pool_records())
    return tokenize(tok, pool.examples, 128), tok, pool


def _stats(model_dir, items, tok, device, dtype, max_tokens=4096):
    from llm_al.features.engine import response_token_stats
    from llm_al.models import load_model

    model, _ = load_model(str(model_dir), device=device, dtype=dtype)
    return response_token_stats(model, items, tok.pad_token_id, max_tokens, 64)


@pytest.mark.gpu
@needs_cuda
def test_scoring_on_cuda_matches_cpu(tiny_model_dir, items_and_tok):
    items, tok, _ = items_and_tok
    cpu = _stats(tiny_model_dir, items, tok, "cpu", "float32")
    gpu32 = _stats(tiny_model_dir, items, tok, "cuda", "float32")
    gpu16 = _stats(tiny_model_dir, items, tok, "cuda", "bfloat16")
    loss = cpu[:, 0] / cpu[:, 2]
    np.testing.assert_allclose(gpu32[:, 0] / gpu32[:, 2], loss, rtol=1e-4)
    np.testing.assert_array_equal(gpu16[:, 2], cpu[:, 2])                  # same response tokens
    np.testing.assert_allclose(gpu16[:, 0] / gpu16[:, 2], loss, rtol=0.03)  # bf16 weights and activations


@pytest.mark.gpu
@needs_cuda
def test_scoring_backs_off_on_a_real_cuda_out_of_memory(tiny_model_dir, items_and_tok, tmp_path):
    """Cap this process's CUDA memory at half of what a full batch needs (measured first); the pass
    must halve its token budget until a batch fits, and give the same numbers."""
    from llm_al.data.pool import records_to_pool
    from llm_al.features.engine import compute_loss_features
    from llm_al.models import load_model

    _, tok, _ = items_and_tok
    rows = [{**r, "source": f"{r['source']} {k}"} for k in range(400) for r in pool_records()]
    examples = records_to_pool(rows).examples                                # 9,600 examples
    model, _ = load_model(str(tiny_model_dir), device="cuda", dtype="float32")
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    ref, _ = compute_loss_features(model, tok, examples, tmp_path / "a", "tiny", 128, max_tokens=16384,
                                   progress_bar=False, chunk_size=len(examples))
    batch_bytes = torch.cuda.max_memory_allocated() - base          # what one full batch needs
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction((base + batch_bytes // 2) / total)
    try:
        got, cost = compute_loss_features(model, tok, examples, tmp_path / "b", "tiny", 128, max_tokens=16384,
                                          progress_bar=False, chunk_size=len(examples))
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    assert cost["loss_oom_backoffs"] >= 1, cost
    assert cost["loss_max_tokens"] < 16384
    np.testing.assert_allclose(got[:, 0] / got[:, 2], ref[:, 0] / ref[:, 2], rtol=1e-4)


@pytest.mark.gpu
@needs_cuda
def test_lora_training_in_bf16_on_cuda_learns_and_restores_the_base(tiny_model_dir, items_and_tok, tmp_path):
    from llm_al.models import load_model
    from llm_al.train import detach_lora, save_adapter, train_lora
    from llm_al.config import TrainConfig

    items, tok, _ = items_and_tok
    model, _ = load_model(str(tiny_model_dir), device="cuda", dtype="bfloat16")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    peft_model, result = train_lora(model, items, tok.pad_token_id, TrainConfig(epochs=5, batch_size=4, lr=3e-3), 0,
                                    progress_bar=False)
    assert all(np.isfinite(result.losses))
    assert np.mean(result.losses[-6:]) < np.mean(result.losses[:6])       # it learns the 24 pairs
    save_adapter(peft_model, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    base = detach_lora(peft_model)
    for k, v in base.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.gpu
@needs_cuda
def test_batched_generation_on_cuda_equals_one_at_a_time(tiny_model_dir, items_and_tok):
    from llm_al.evaluate import generate
    from llm_al.features.formatting import prompt_text
    from llm_al.models import load_model

    _, tok, pool = items_and_tok
    model, tok2 = load_model(str(tiny_model_dir), device="cuda", dtype="float32")
    prompts = [prompt_text(tok2, ex.prompt_messages) for ex in pool.examples[:12]]
    batched = generate(model, tok2, prompts, 12, batch_size=12, progress_bar=False)
    single = [generate(model, tok2, [p], 12, batch_size=1, progress_bar=False)[0] for p in prompts]
    assert batched == single


@pytest.mark.gpu
@needs_cuda
def test_training_backs_off_on_a_real_cuda_out_of_memory(tiny_model_dir, items_and_tok):
    """Cap CUDA memory at half of what a step of 24 examples needed (measured first): training must
    fall back to accumulated micro-batches and end with the same adapter as the uncapped run."""
    from llm_al.models import load_model
    from llm_al.train import detach_lora, train_lora
    from llm_al.config import TrainConfig

    items, tok, _ = items_and_tok
    model, _ = load_model(str(tiny_model_dir), device="cuda", dtype="float32")
    cfg = TrainConfig(epochs=2, batch_size=24)

    def adapter_after_training():
        peft_model, result = train_lora(model, items, tok.pad_token_id, cfg, 0, progress_bar=False)
        weights = {k: v.detach().clone() for k, v in peft_model.state_dict().items() if "lora_" in k}
        detach_lora(peft_model)
        return weights, result

    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    ref, ref_result = adapter_after_training()
    step_bytes = torch.cuda.max_memory_allocated() - base
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction((base + step_bytes // 2) / total)
    try:
        got, result = adapter_after_training()
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    assert ref_result.oom_backoffs == 0 and result.oom_backoffs >= 1, result
    assert result.micro_batch_size < 24
    np.testing.assert_allclose(result.losses, ref_result.losses, rtol=1e-4)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-5)
