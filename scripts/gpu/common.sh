# Sourced by the scripts in scripts/gpu/: the repository root as working directory, $OUT
# (default /tmp/aios_out), the reference engine (solutions/) on the import path for every
# python3 started from here, Hugging Face offline, and two helpers.
cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 1
OUT=${OUT:-/tmp/aios_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/solutions" PYTHONSAFEPATH=1 AIOS_IMPL=reference
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

# section TITLE: a heading with the time, so a log shows where the minutes went.
section() { echo; echo "=== $* ($(date -u +%H:%M:%S))"; }

# record_environment [MODULE...]: the GPU (when nvidia-smi exists) and the versions of torch and
# of each MODULE, printed and written to $OUT/gpu.txt.
record_environment() {
  section environment
  { command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    python3 - "$@" <<'PY'
import importlib, sys
import torch
parts = [f"torch {torch.__version__}", f"cuda {torch.cuda.is_available()}"]
parts += [f"{name} {importlib.import_module(name).__version__}" for name in sys.argv[1:]]
print(", ".join(parts))
PY
  } 2>&1 | tee "$OUT/gpu.txt"
}

# use_carried_wheels: when fastapi or uvicorn is missing (the GPU image lacks them) and .whl/ holds wheels,
# install them into /tmp/site and put it on PYTHONPATH; then check the server's imports.
use_carried_wheels() {
  if ! python3 -c "import fastapi, uvicorn" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
    echo "installing the carried wheels into /tmp/site"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      && export PYTHONPATH="$PYTHONPATH:/tmp/site"
  fi
  python3 -c "import fastapi, uvicorn, prometheus_client, httpx" \
    || { echo "the server needs fastapi, uvicorn, prometheus-client and httpx"; return 1; }
}
