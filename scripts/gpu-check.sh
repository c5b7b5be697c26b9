#!/usr/bin/env bash
# GPU check: one prepared run for a lent H200 machine (CUDA 13.0 driver, nvcc and PyTorch there,
# but no Rust and no network). The binary is built here and travels with the working tree.
#
# On the build host (this repo, no GPU needed):
#   scripts/gpu-check.sh --build
#       installs the CUDA 13.0 toolchain if needed (scripts/cuda-toolchain.sh), builds `cord` with
#       --features cuda (release, sm_90 kernels), strips it into dist/cord-cuda (~60 MiB: candle's
#       GGUF kernels are cubins) and xz-compresses it into dist/cord-cuda.xz (~9 MiB), which is
#       what travels (the device tool carries 64 MiB in all). dist/ is git-ignored.
# On the GPU machine (device tool: carry ["dist/cord-cuda.xz"], command `bash scripts/gpu-check.sh "$OUT"`):
#   scripts/gpu-check.sh OUT_DIR
#       1. environment: nvidia-smi, the CUDA libraries the binary links (found in the toolkit or in
#          the NVIDIA pip packages next to PyTorch), `ldd` of the binary;
#       2. kernel parity: `cord bench kernels --device cuda:0` (fused log-prob, paged attention,
#          KV write, block copy, each against its CPU reference);
#       3. per model shape (Qwen2.5-7B, Llama-3-8B; random bf16 weights):
#          decode tokens/s at batch 1/16/64 with the HBM-bandwidth fraction at batch 1,
#          the same at batch 16 with the gather attention path (paged vs gather),
#          B = 4 beam decoding at 256 prompt / 256 output tokens (KV sharing vs separate),
#          scoring throughput over a cached prefix;
#       4. OUT_DIR/gpu-check.json: every step's JSON, exit status and seconds.
#   Each step has its own timeout; a failed step does not stop the others. The whole run is
#   sized to finish in under 8 minutes (CORD_GPU_CHECK_QUICK=1: one model shape, one repeat).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${CORD_BIN:-$ROOT/dist/cord-cuda}"
LIMIT_MIB=64

if [ "${1:-}" = "--build" ]; then
  set -e
  cd "$ROOT"
  eval "$(bash scripts/cuda-toolchain.sh --env)"
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR_CUDA:-$HOME/.cache/cord/target-cuda}"
  cargo build --release -p cord-cli --features cuda
  mkdir -p dist
  strip -o dist/cord-cuda "$CARGO_TARGET_DIR/release/cord"
  xz -T0 -9 -c dist/cord-cuda > dist/cord-cuda.xz
  readelf -d dist/cord-cuda | grep NEEDED
  for f in dist/cord-cuda dist/cord-cuda.xz; do
    echo "$f: $(( $(stat -c %s "$f") / 1048576 )) MiB"
  done
  if [ "$(stat -c %s dist/cord-cuda.xz)" -ge $((LIMIT_MIB * 1048576)) ]; then
    echo "dist/cord-cuda.xz is over ${LIMIT_MIB} MiB and cannot travel" >&2
    exit 1
  fi
  exit 0
fi

OUT="${1:-${OUT:-gpu-check-out}}"
mkdir -p "$OUT"
LOG="$OUT/gpu-check.log"
: > "$LOG"
say() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" | tee -a "$LOG"; }
START=$(date +%s)

if [ ! -x "$BIN" ] && [ -f "$BIN.xz" ]; then
  # The carried, compressed binary: unpack it outside the tree (python3's lzma if xz is missing).
  dest="${TMPDIR:-/tmp}/cord-cuda"
  if command -v xz >/dev/null; then
    xz -d -c "$BIN.xz" > "$dest"
  else
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$BIN.xz" "$dest"
  fi
  chmod +x "$dest"
  BIN="$dest"
fi
if [ ! -x "$BIN" ]; then
  say "no binary at $BIN (build it with scripts/gpu-check.sh --build and carry dist/cord-cuda.xz)"
  exit 2
fi

# --- 1. environment --------------------------------------------------------------------------
libdirs=()
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/nvidia/lib64; do
  [ -d "$d" ] && libdirs+=("$d")
done
if command -v python3 >/dev/null; then
  while IFS= read -r d; do libdirs+=("$d"); done < <(python3 - <<'EOF' 2>/dev/null
import glob, os
try:
    import nvidia
    for base in nvidia.__path__:
        for d in sorted(glob.glob(os.path.join(base, "*", "lib"))):
            print(d)
except Exception:
    pass
EOF
)
fi
LD_LIBRARY_PATH="$(IFS=:; echo "${libdirs[*]:-}")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LD_LIBRARY_PATH
say "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
head -15 "$OUT/nvidia-smi.txt" | tee -a "$LOG"
ldd "$BIN" > "$OUT/ldd.txt" 2>&1 || true
if grep -q "not found" "$OUT/ldd.txt"; then
  say "libraries not found:"; grep "not found" "$OUT/ldd.txt" | tee -a "$LOG"
fi

# --- steps ------------------------------------------------------------------------------------
STEPS_FILE="$OUT/steps.tsv"
: > "$STEPS_FILE"
# step NAME TIMEOUT_S ARGS... : runs `cord ARGS --json OUT/NAME.json`, records status and time.
step() {
  local name=$1 limit=$2
  shift 2
  say "step $name: cord $*"
  local t0 t1 rc
  t0=$(date +%s.%N)
  timeout --kill-after=10 "$limit" "$BIN" "$@" --json "$OUT/$name.json" >> "$LOG" 2>&1
  rc=$?
  t1=$(date +%s.%N)
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(awk "BEGIN { printf \"%.1f\", $t1 - $t0 }")" >> "$STEPS_FILE"
  say "step $name: exit $rc"
}

REPEAT=2
MODELS=(qwen2.5-7b llama-3-8b)
if [ "${CORD_GPU_CHECK_QUICK:-0}" = 1 ]; then
  REPEAT=1
  MODELS=(qwen2.5-7b)
fi
# Dry runs of this script without a GPU: CORD_GPU_CHECK_DEVICE=cpu CORD_GPU_CHECK_MODELS=smollm2-135m
# CORD_GPU_CHECK_DTYPE=f32 CORD_BIN=target/release/cord scripts/gpu-check.sh /tmp/out
DEVICE="${CORD_GPU_CHECK_DEVICE:-cuda:0}"
DTYPE="${CORD_GPU_CHECK_DTYPE:-bf16}"
[ -n "${CORD_GPU_CHECK_MODELS:-}" ] && read -r -a MODELS <<< "$CORD_GPU_CHECK_MODELS"

step kernels 120 bench kernels --device "$DEVICE"
for m in "${MODELS[@]}"; do
  common=(--config "$m" --device "$DEVICE" --dtype "$DTYPE" --repeat "$REPEAT")
  step "decode-$m" 150 bench decode "${common[@]}" --batch 1,16,64 --prompt-len 128 --gen-len 64
  step "decode-gather-$m" 90 bench decode "${common[@]}" --batch 16 --prompt-len 128 --gen-len 64 \
    --attention gather
  step "beam-$m" 150 bench beam "${common[@]}" --beams 4 --prompt-len 256 --gen-len 256
  step "score-$m" 90 bench score "${common[@]}" --candidates 12 --context-len 512 --step-len 64 \
    --answer-len 8
done

# --- summary ----------------------------------------------------------------------------------
python3 - "$OUT" "$STEPS_FILE" "$(( $(date +%s) - START ))" <<'EOF' | tee -a "$LOG"
import json, os, sys
out, steps_file, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
steps = []
for line in open(steps_file):
    name, rc, secs = line.rstrip("\n").split("\t")
    path = os.path.join(out, name + ".json")
    result = None
    if os.path.exists(path):
        try:
            result = json.load(open(path))
        except Exception as e:
            result = {"unreadable": str(e)}
    steps.append({"step": name, "exit": int(rc), "seconds": float(secs), "result": result})
smi = open(os.path.join(out, "nvidia-smi.txt")).read() if os.path.exists(os.path.join(out, "nvidia-smi.txt")) else ""
summary = {"total_seconds": total, "nvidia_smi": smi, "steps": steps}
json.dump(summary, open(os.path.join(out, "gpu-check.json"), "w"), indent=1)
for s in steps:
    print(f"{s['step']:32s} exit {s['exit']:3d} {s['seconds']:7.1f} s")
print(f"total {total} s; wrote {os.path.join(out, 'gpu-check.json')}")
EOF
fails=$(awk -F'\t' '$2 != 0' "$STEPS_FILE" | wc -l)
[ "$fails" -eq 0 ]
