#!/usr/bin/env bash
# Select an instruction-tuning subset and export it for another trainer. Runs on the embedded
# default pool (Django English->French); replace POOL with your own JSONL/CSV/Parquet file, hub
# dataset id or saved `datasets` folder (add --field ROLE=COLUMN if its columns are unusual).
#   bash recipes/select_instruction_subset.sh [OUT_DIR]     # about 2 minutes on a 2-core CPU
# Writes three exports of the same kind of choice, each with llm_al_id / llm_al_rank / llm_al_score
# columns, and with --explain the k-means cluster and nearest earlier pick of every example.
set -euo pipefail
POOL=${POOL:-embedded:django-en-fr}
OUT=${1:-runs/select}
mkdir -p "$OUT"
# DEITA-style: walk down the response loss, skip near-duplicates of what is already chosen -> Alpaca JSON
llm-al select "$POOL" --strategy "deita:threshold=0.9" --budget 100 --export-shape alpaca --explain --out "$OUT/deita.json"
# cover the pool evenly in embedding space -> chat messages JSONL (for SFT trainers that read messages)
llm-al select "$POOL" --strategy kcenter --budget 100 --export-shape messages --out "$OUT/kcenter.jsonl"
# the baseline every choice should be compared with, in the input's own shape
llm-al select "$POOL" --strategy random --budget 100 --seed 0 --out "$OUT/random.jsonl"
# the k-center choice: its n-gram overlap with the reference corpus (a stand-in for pretraining data)
llm-al overlap "$OUT/kcenter.jsonl"
