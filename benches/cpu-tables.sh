#!/usr/bin/env bash
# Reruns the `cord bench` tables of BENCHMARKS.md (decode, attention paths, beam, score, synth)
# one after another on this machine. JSON goes to $OUT (default /tmp/cord-bench); tables to stdout.
#   CORD=path/to/cord bash benches/cpu-tables.sh     (default: a release build of this checkout)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/cord-bench}"
export CORD_MODELS="${CORD_MODELS:-$HOME/.cache/cord/models}"
M="$CORD_MODELS"
B="${CORD:-}"
if [ -z "$B" ]; then
  cargo build --release -p cord-cli >&2
  B="${CARGO_TARGET_DIR:-$PWD/target}/release/cord"
fi
mkdir -p "$OUT"
stamp() { echo "== $(date -u +%H:%M:%S) $*"; }
stamp decode
"$B" bench decode --config smollm2-135m --batch 1,4,16,64 --prompt-len 128 --gen-len 64 --repeat 2 --json "$OUT/decode-smollm2-random.json"
"$B" bench decode --model "$M/qwen2.5-coder-0.5b/model.gguf" --batch 1,4,16 --prompt-len 128 --gen-len 64 --repeat 2 --dequantize --json "$OUT/decode-qwen-deq.json"
stamp attention
for r in 1 2; do
  "$B" bench decode --config smollm2-135m --batch 1,16 --prompt-len 512 --gen-len 32 --repeat 1 --attention paged --json "$OUT/attn-paged-$r.json"
  "$B" bench decode --config smollm2-135m --batch 1,16 --prompt-len 512 --gen-len 32 --repeat 1 --attention gather --json "$OUT/attn-gather-$r.json"
done
stamp beam
"$B" bench beam --config smollm2-135m --beams 4 --prompt-len 256 --gen-len 256 --repeat 2 --json "$OUT/beam.json"
stamp score
"$B" bench score --config smollm2-135m --candidates 12 --context-len 512 --step-len 64 --answer-len 4 --repeat 2 --json "$OUT/score.json"
stamp synth
"$B" bench synth --pool benches/peers/cord-peer-pool.toml --input data/gsm8k.jsonl --limit 2 --repeat 2 --json "$OUT/synth.json"
stamp done
