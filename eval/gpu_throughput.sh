#!/usr/bin/env bash
# Issue 15's GPU measurement in one device call (prepare with eval/gpu_prep.sh first):
#   device run: command="bash eval/gpu_throughput.sh", carry=[".gpu"], timeout_s=580
# Runs per hour of demo-size runs (100 examples, batch 4, 1 epoch, greedy generation of 32 tokens
# on 50 prompts) on a random-init model of SmolLM2-135M's shape in bf16: one by one (train_lora +
# evaluate.generate) vs grouped (train_grouped + grouped_generate), K = 1, 4, 16, in one run.
#   bash eval/gpu_throughput.sh qwen   instead: a model of Qwen2.5-0.5B's shape, K = 4, 16, 64, the
#   sequential runs timed at K = 4 only (larger K compared with K x that per-run time)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 LLM_AL_CACHE=/tmp/llm_al_cache
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
{ nvidia-smi -L; python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"; } 2>&1 | tee "$OUT/environment-throughput.txt"
date -u
if [ "${1:-}" = qwen ]; then
    timeout 300 python3 eval/bench_throughput.py --device cuda --dtype bfloat16 --full --shape qwen2.5-0.5b \
        --ks 4,16,64 --seq-max-k 4 --modes gather --threads 8 --out "$OUT/bench_throughput-cuda-qwen0.5b.txt" 2>&1 \
        | grep -v Warning | tee "$OUT/bench_throughput-cuda-qwen0.5b.log"
else
    timeout 480 python3 eval/bench_throughput.py --device cuda --dtype bfloat16 --full --ks 1,4,16 --modes gather \
        --threads 8 --out "$OUT/bench_throughput-cuda.txt" 2>&1 | grep -v Warning | tee "$OUT/bench_throughput-cuda.log"
fi
date -u
