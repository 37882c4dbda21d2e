#!/usr/bin/env bash
# Every check that needs a GPU, in one device call (prepare with eval/gpu_prep.sh first):
#   device run: command="bash eval/gpu_check.sh", carry=[".gpu"], timeout_s=540
# 1. the tests marked `gpu` (tests/test_gpu.py: scoring on CUDA vs CPU, real out-of-memory back-off,
#    bf16 LoRA training, batched generation); 2. eval/bench_gpu.py (scoring vs a batch-size-1 loop,
#    training and generation throughput, MFU in bf16 for a ~0.4B random-init model).
# Results land in $OUT (fetched back by the device tool); copy them to eval/results/ and commit.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 LLM_AL_CACHE=/tmp/llm_al_cache
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
{ nvidia-smi; python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"; } 2>&1 | tee "$OUT/environment.txt"
timeout 240 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py 2>&1 | tee "$OUT/gpu-tests.txt"
timeout 240 python3 eval/bench_gpu.py --tokenizer .gpu/tokenizer --pairs .gpu/django_en_fr.jsonl \
    --out "$OUT/bench_gpu-cuda.txt" 2>&1 | tail -30
