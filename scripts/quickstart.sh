#!/usr/bin/env bash
# Quick start: install, train EIR on the real COVID-19 chest X-rays (CPU recipe), then generate
# reports for the held-out test studies and print the metrics beside the baselines.
# Data root: $EIR_DATA_DIR, else ../shared/data beside the checkout. Output: $EIR_OUTPUT_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup_env.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
output_dir=${EIR_OUTPUT_DIR:-outputs/quickstart}

.venv/bin/eir --log-level WARNING train --recipe quickstart_covid --output-dir "$output_dir" --overwrite
.venv/bin/eir --log-level WARNING evaluate --model "$output_dir/model" --split test
