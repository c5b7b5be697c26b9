#!/usr/bin/env bash
# Queues N shard tasks of `cord synth` and a merge that runs after all of them succeeded.
#   deploy/slurm/submit.sh POOL INPUT OUT_DIR N [extra cord synth flags...]
# e.g. deploy/slurm/submit.sh models/paper.toml data/gsm8k.jsonl runs/paper-gsm8k 8 --save-tree
set -euo pipefail
if [ $# -lt 4 ]; then
  sed -n '2,4p' "$0" >&2
  exit 2
fi
pool="$1" input="$2" out="$3" n="$4"
shift 4
here="$(cd "$(dirname "$0")" && pwd)"
CORD_BIN="${CORD_BIN:-cord}"
gpus="$("$CORD_BIN" pool-info --gpus "$pool")"
mkdir -p "$out"
common="ALL,CORD_BIN=$CORD_BIN,CORD_POOL=$pool,CORD_INPUT=$input,CORD_OUT=$out"
gres=()
[ "$gpus" -gt 0 ] && gres=(--gres="gpu:$gpus")
array_job="$(sbatch --parsable --array="0-$((n - 1))" "${gres[@]}" \
  --export="$common,CORD_ARGS=$*" "$here/cord-array.sbatch")"
array_job="${array_job%%;*}"
merge_job="$(sbatch --parsable --dependency="afterok:$array_job" \
  --export="$common,CORD_SHARDS=$n" "$here/cord-merge.sbatch")"
echo "shards: job $array_job (array 0-$((n - 1)), $gpus GPU(s) each); merge: job $merge_job"
