#!/usr/bin/env bash
# Side-by-side peer benchmarks, one run on one machine (see BENCHMARKS.md):
#   1. single-sequence decode on the same GGUF file: cord vs llama.cpp (llama-cpp-python) vs
#      HF transformers (f32, the GGUF dequantized), interleaved, each `REPEAT` times;
#   2. the CoRD loop end to end: `cord synth` vs the Python loop on HF transformers
#      (benches/peers/hf_cord.py), same pool file, problems, beam width and budgets.
# Results: JSON files under $OUT (default /tmp/cord-peers) and a summary table on stdout.
#
#   bash benches/peers/setup.sh            # once: venv with torch, transformers, llama-cpp-python
#   bash benches/peers/run.sh [decode|cord|all]
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
VENV="${CORD_PEERS_VENV:-$HOME/.cache/cord/peers-venv}"
PY="$VENV/bin/python"
MODELS="${CORD_MODELS:-$HOME/.cache/cord/models}"
OUT="${OUT:-/tmp/cord-peers}"
REPEAT="${REPEAT:-3}"
MODEL="${MODEL:-$MODELS/qwen2.5-coder-0.5b/model.gguf}"
PROMPT_LEN="${PROMPT_LEN:-128}"
GEN_LEN="${GEN_LEN:-64}"
POOL="${POOL:-$ROOT/benches/peers/cord-peer-pool.toml}"
PROBLEMS="${PROBLEMS:-2}"
THREADS="$(nproc)"
mkdir -p "$OUT"
[ -x "$PY" ] || { echo "no peer venv at $VENV: run bash benches/peers/setup.sh" >&2; exit 2; }
CORD="${CORD:-}"
if [ -z "$CORD" ]; then
  cargo build --release -p cord-cli >&2
  CORD="${CARGO_TARGET_DIR:-$ROOT/target}/release/cord"
fi
what="${1:-all}"

decode() {
  for r in $(seq 1 "$REPEAT"); do
    "$CORD" bench decode --model "$MODEL" --batch 1 --prompt-len "$PROMPT_LEN" --gen-len "$GEN_LEN" \
      --repeat 1 --seed "$r" --json "$OUT/decode-cord-$r.json" >/dev/null 2>&1
    (cd benches/peers && "$PY" decode.py --peer llama --model "$MODEL" --prompt-len "$PROMPT_LEN" \
      --gen-len "$GEN_LEN" --repeat 1 --seed "$r" --threads "$THREADS" --json "$OUT/decode-llama-$r.json" >/dev/null 2>&1)
    (cd benches/peers && "$PY" decode.py --peer hf --model "$MODEL" --prompt-len "$PROMPT_LEN" \
      --gen-len "$GEN_LEN" --repeat 1 --seed "$r" --threads "$THREADS" --json "$OUT/decode-hf-$r.json" >/dev/null 2>&1)
  done
  "$PY" - "$OUT" "$REPEAT" <<'PY'
import json, statistics, sys
out, n = sys.argv[1], int(sys.argv[2])
def get(kind, r):
    d = json.load(open(f"{out}/decode-{kind}-{r}.json"))
    if kind == "cord":
        return d["results"]["cases"][0]["decode_tokens_per_s"]["mean"]
    return d["cases"][0]["decode_tok_s"]["median"]
rows = {k: [get(k, r) for r in range(1, n + 1)] for k in ("cord", "llama", "hf")}
print("single-sequence decode, tokens/s (median, min-max over", n, "interleaved runs)")
for k, v in rows.items():
    print(f"  {k:6s} {statistics.median(v):7.1f}  ({min(v):.1f}-{max(v):.1f})")
for k in ("llama", "hf"):
    ratios = [c / p for c, p in zip(rows["cord"], rows[k])]
    print(f"  cord/{k}: {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})")
json.dump(rows, open(f"{out}/decode-summary.json", "w"), indent=1)
PY
}

cord_loop() {
  head -n "$PROBLEMS" data/gsm8k.jsonl > "$OUT/problems.jsonl"
  /usr/bin/time -f "%e" -o "$OUT/cord-synth.time" "$CORD" synth --pool "$POOL" --input "$OUT/problems.jsonl" \
    --output "$OUT/cord-synth.jsonl" --overwrite --quiet --stats "$OUT/cord-synth-stats.json" >"$OUT/cord-synth.out" 2>&1
  (cd benches/peers && "$PY" hf_cord.py --pool "$POOL" --input "$OUT/problems.jsonl" --limit "$PROBLEMS" \
    --threads "$THREADS" --json "$OUT/hf-cord.json" >"$OUT/hf-cord.log" 2>&1)
  "$PY" - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
st = json.load(open(f"{out}/cord-synth-stats.json"))
hf = json.load(open(f"{out}/hf-cord.json"))
wall = float(open(f"{out}/cord-synth.time").read().split()[-1])
n = hf["problems"]
# cord runs all problems at once: seconds per problem = the run's wall time (models loaded) / n.
summ = st["summary"]
cord_pp = summ["seconds"] / max(1, summ["problems"])
print(f"CoRD loop, {n} problems, same pool/budgets: seconds per problem (search only, models loaded)")
print(f"  cord   {cord_pp:8.1f}   (whole process {wall:.1f} s incl. load)")
print(f"  hf-py  {hf['seconds_per_problem']:8.1f}   (load {hf['load_seconds']:.1f} s, scoring share {hf['score_share']:.0%})")
print(f"  hf/cord: {hf['seconds_per_problem'] / cord_pp:.2f}x")
PY
}

case "$what" in
  decode) decode ;;
  cord) cord_loop ;;
  all) decode; cord_loop ;;
  *) echo "usage: run.sh [decode|cord|all]" >&2; exit 2 ;;
esac
