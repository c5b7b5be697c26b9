#!/usr/bin/env bash
# Side-by-side peer benchmarks, one run on one machine (see BENCHMARKS.md):
#   1. single-sequence prefill and decode on the same GGUF file: cord vs llama.cpp
#      (llama-cpp-python) vs HF transformers (f32, the GGUF dequantized), interleaved, each
#      `REPEAT` times (`PEERS=llama` leaves transformers out; `MODEL` picks the GGUF);
#   2. batched decode (batch 1/4/16 by default): cord vs HF transformers, interleaved;
#   3. the CoRD loop end to end: `cord synth` vs the Python loop on HF transformers
#      (benches/peers/hf_cord.py), same pool file, problems, beam width and budgets.
# Results: JSON files under $OUT (default /tmp/cord-peers) and a summary table on stdout.
#
#   bash benches/peers/setup.sh            # once: venv with torch, transformers, llama-cpp-python
#   bash benches/peers/run.sh [decode|batch|cord|all]
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
  local peers="${PEERS:-llama,hf}" tag
  tag="$(basename "$(dirname "$MODEL")")"
  for r in $(seq 1 "$REPEAT"); do
    "$CORD" bench decode --model "$MODEL" --batch 1 --prompt-len "$PROMPT_LEN" --gen-len "$GEN_LEN" \
      --repeat 1 --seed "$r" --json "$OUT/decode-$tag-cord-$r.json" >/dev/null 2>&1
    for peer in ${peers//,/ }; do
      (cd benches/peers && "$PY" decode.py --peer "$peer" --model "$MODEL" --prompt-len "$PROMPT_LEN" \
        --gen-len "$GEN_LEN" --repeat 1 --seed "$r" --threads "$THREADS" --json "$OUT/decode-$tag-$peer-$r.json" >/dev/null 2>&1)
    done
  done
  "$PY" - "$OUT" "$REPEAT" "$tag" "$peers" <<'PY'
import json, statistics, sys
out, n, tag, peers = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4].split(",")
def get(kind, r):
    d = json.load(open(f"{out}/decode-{tag}-{kind}-{r}.json"))
    if kind == "cord":
        c = d["results"]["cases"][0]
        return c["prefill_tokens_per_s"]["mean"], c["decode_tokens_per_s"]["mean"]
    c = d["cases"][0]
    return c["prefill_tok_s"]["median"], c["decode_tok_s"]["median"]
kinds = ["cord"] + peers
runs = {k: [get(k, r) for r in range(1, n + 1)] for k in kinds}
summary = {}
for i, what in ((1, "decode"), (0, "prefill")):
    print(f"{tag}: single-sequence {what}, tokens/s (median, min-max over {n} interleaved runs)")
    rows = {k: [v[i] for v in runs[k]] for k in kinds}
    for k, v in rows.items():
        print(f"  {k:6s} {statistics.median(v):7.1f}  ({min(v):.1f}-{max(v):.1f})")
    for k in peers:
        ratios = [c / p for c, p in zip(rows["cord"], rows[k])]
        print(f"  cord/{k}: {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})")
        rows[f"cord/{k}"] = ratios
    summary[what] = rows
json.dump(summary, open(f"{out}/decode-{tag}-summary.json", "w"), indent=1)
PY
}

# Batched decode: cord vs HF transformers at the same batch sizes (llama-cpp-python decodes one
# sequence per context, so it is not in this table).
batched() {
  local batches="${BATCHES:-1,4,16}"
  for r in $(seq 1 "$REPEAT"); do
    "$CORD" bench decode --model "$MODEL" --batch "$batches" --prompt-len "$PROMPT_LEN" --gen-len "$GEN_LEN" \
      --repeat 1 --seed "$r" --json "$OUT/batch-cord-$r.json" >/dev/null 2>&1
    (cd benches/peers && "$PY" decode.py --peer hf --model "$MODEL" --batch "$batches" --prompt-len "$PROMPT_LEN" \
      --gen-len "$GEN_LEN" --repeat 1 --seed "$r" --threads "$THREADS" --json "$OUT/batch-hf-$r.json" >/dev/null 2>&1)
  done
  "$PY" - "$OUT" "$REPEAT" <<'PY'
import json, statistics, sys
out, n = sys.argv[1], int(sys.argv[2])
def cases(kind, r):
    d = json.load(open(f"{out}/batch-{kind}-{r}.json"))
    if kind == "cord":
        return {c["batch"]: (c["prefill_tokens_per_s"]["mean"], c["decode_tokens_per_s"]["mean"]) for c in d["results"]["cases"]}
    return {c["batch"]: (c["prefill_tok_s"]["median"], c["decode_tok_s"]["median"]) for c in d["cases"]}
runs = {k: [cases(k, r) for r in range(1, n + 1)] for k in ("cord", "hf")}
print("batched decode, tokens/s summed over the batch (median, min-max over", n, "interleaved runs)")
summary = {}
for b in sorted(runs["cord"][0]):
    row = {}
    for k in ("cord", "hf"):
        row[k] = [runs[k][r][b][1] for r in range(n)]
    ratios = [c / h for c, h in zip(row["cord"], row["hf"])]
    summary[b] = {**row, "ratio": ratios}
    print(f"  batch {b:3d}: cord {statistics.median(row['cord']):7.1f} ({min(row['cord']):.1f}-{max(row['cord']):.1f})"
          f"  hf {statistics.median(row['hf']):7.1f} ({min(row['hf']):.1f}-{max(row['hf']):.1f})"
          f"  cord/hf {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})")
json.dump(summary, open(f"{out}/batch-summary.json", "w"), indent=1)
PY
}

cord_loop() {
  head -n "$PROBLEMS" data/gsm8k.jsonl > "$OUT/problems.jsonl"
  local n="${LOOP_REPEAT:-1}"
  for r in $(seq 1 "$n"); do
    /usr/bin/time -f "%e" -o "$OUT/cord-synth-$r.time" "$CORD" synth --pool "$POOL" --input "$OUT/problems.jsonl" \
      --output "$OUT/cord-synth-$r.jsonl" --overwrite --quiet --seed "$r" --stats "$OUT/cord-synth-stats-$r.json" \
      >"$OUT/cord-synth-$r.out" 2>&1
    (cd benches/peers && "$PY" hf_cord.py --pool "$POOL" --input "$OUT/problems.jsonl" --limit "$PROBLEMS" \
      --threads "$THREADS" --seed "$r" --json "$OUT/hf-cord-$r.json" >"$OUT/hf-cord-$r.log" 2>&1)
  done
  "$PY" - "$OUT" "$n" <<'PY'
import json, statistics, sys
out, n = sys.argv[1], int(sys.argv[2])
rows = []
for r in range(1, n + 1):
    st = json.load(open(f"{out}/cord-synth-stats-{r}.json"))["summary"]
    hf = json.load(open(f"{out}/hf-cord-{r}.json"))
    wall = float(open(f"{out}/cord-synth-{r}.time").read().split()[-1])
    # cord runs all problems at once: seconds per problem = the run's search time / problems.
    cord_pp = st["seconds"] / max(1, st["problems"])
    rows.append((cord_pp, hf["seconds_per_problem"], wall, hf["load_seconds"], hf["score_share"]))
    print(f"run {r}: cord {cord_pp:7.1f} s/problem (process {wall:.1f} s incl. load)   "
          f"hf-py {hf['seconds_per_problem']:7.1f} s/problem (load {hf['load_seconds']:.1f} s, "
          f"scoring {hf['score_share']:.0%})   hf/cord {hf['seconds_per_problem'] / cord_pp:.2f}x")
ratios = [h / c for c, h, *_ in rows]
print(f"CoRD loop, {n} run(s): hf/cord median {statistics.median(ratios):.2f}x "
      f"(min {min(ratios):.2f}, max {max(ratios):.2f})")
json.dump({"runs": rows, "hf_over_cord": ratios}, open(f"{out}/loop-summary.json", "w"), indent=1)
PY
}

case "$what" in
  decode) decode ;;
  batch) batched ;;
  cord) cord_loop ;;
  all) decode; batched; cord_loop ;;
  *) echo "usage: run.sh [decode|batch|cord|all]" >&2; exit 2 ;;
esac
