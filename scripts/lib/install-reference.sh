#!/usr/bin/env bash
# Installs the reference Python stack for `keel bench model` (and for
# regenerating crates/keel-local/tests/fixtures/minilm_reference.json):
# sentence-transformers on the CPU in a private venv under .keel/st, and
# prints its python. Torch from PyPI brings CUDA libraries (~6 GB, a few
# minutes), so only scripts/bench calls this, never scripts/test. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv="$PWD/.keel/st"
if ! "$venv/bin/python" -c 'import sentence_transformers' 2>/dev/null; then
  printf '\033[1;34m[keel]\033[0m %s\n' "installing sentence-transformers (the reference for keel bench model, ~6 GB)" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check sentence-transformers==6.2.0 >&2
fi
echo "$venv/bin/python"
