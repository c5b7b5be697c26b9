#!/usr/bin/env bash
# Installs the peer stacks for benches/peers into a venv outside the repo (default
# ~/.cache/cord/peers-venv; override with CORD_PEERS_VENV). A no-op when everything is present.
#   - PyTorch + HF transformers (CPU inference; `gguf` lets transformers read the same GGUF files)
#   - llama-cpp-python, built from source by pip (CMake, ~5-10 min on 2 cores)
# Usage: bash benches/peers/setup.sh [--no-llama]   then   source "$VENV/bin/activate"
set -euo pipefail
VENV="${CORD_PEERS_VENV:-$HOME/.cache/cord/peers-venv}"
want_llama=1
[ "${1:-}" = "--no-llama" ] && want_llama=0
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
py="$VENV/bin/python"
have() { "$py" -c "import $1" >/dev/null 2>&1; }
if ! have torch || ! have transformers || ! have gguf || ! have accelerate; then
  "$py" -m pip install --quiet "torch==2.15.0" "transformers==5.23.0" "gguf==0.19.0" \
    "safetensors==0.8.0" "accelerate==1.15.0" "numpy<3" "sentencepiece" "protobuf" >&2
fi
if [ "$want_llama" = 1 ] && ! have llama_cpp; then
  # Plain CPU build (OpenMP, native SIMD), as a user would get it from `pip install`.
  CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON}" "$py" -m pip install --quiet --no-binary llama-cpp-python \
    "llama-cpp-python==0.3.36" >&2
fi
"$py" - <<'PY'
import importlib
for m in ("torch", "transformers", "gguf", "llama_cpp"):
    try:
        mod = importlib.import_module(m)
        print(f"{m} {getattr(mod, '__version__', '?')}")
    except Exception as e:  # noqa: BLE001
        print(f"{m} missing ({type(e).__name__})")
PY
echo "venv: $VENV"
