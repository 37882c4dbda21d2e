#!/usr/bin/env bash
# Every check that needs a GPU, in one device call (prepare with eval/gpu_prep.sh first):
#   device run: command="bash eval/gpu_check.sh", carry=[".gpu"], timeout_s=420 (~3-4 min expected)
# 1. the tests marked `gpu` (tests/test_gpu.py: scoring on CUDA vs CPU, real out-of-memory back-off,
#    bf16 LoRA training, batched generation); 2. eval/bench_gpu.py (scoring vs a batch-size-1 loop,
#    training and generation throughput, MFU in bf16 for a ~0.4B random-init model, on 20,000 examples;
#    torch.profiler's table of one scoring pass; k-center on 1M x 384 with torch on the GPU).
# Results land in $OUT (fetched back by the device tool); copy them to eval/results/ and commit.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 LLM_AL_CACHE=/tmp/llm_al_cache
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
{ nvidia-smi; python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"; } 2>&1 | tee "$OUT/environment.txt"
date -u
timeout 180 python3 -m pytest -q -rs -p no:cacheprovider -m gpu tests/test_gpu.py 2>&1 | tee "$OUT/gpu-tests.txt" | tail -40
date -u
timeout 240 python3 eval/bench_gpu.py --tokenizer .gpu/tokenizer --pairs .gpu/django_en_fr.jsonl --n 20000 \
    --profile "$OUT/profile-scoring-cuda.txt" --out "$OUT/bench_gpu-cuda.txt" 2>&1 | grep -v Warning
date -u
