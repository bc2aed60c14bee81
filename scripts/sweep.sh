#!/bin/bash
# Train several variants of `make train`'s model at once and print each one's validation figures
# per epoch. Usage:
#   scripts/sweep.sh SECONDS NAME "FLAGS" [NAME "FLAGS" ...]
# Each NAME is trained with `make train`'s flags plus its own FLAGS, for at most SECONDS, into
# $RUNS/NAME (default build/sweep), its log beside it. DUPQ (default: `python3 -m app.cli`),
# DATA (../shared/data), VALID (build/valid.tsv, from `make train`'s `dupq split`) and DEVICE
# (cuda) can be set. Every run uses two CPU threads: give it a machine with two cores per run.
# The README's table of sixteen settings was trained this way, eight at a time on one H100.
set -u
limit=$1; shift
runs=${RUNS:-build/sweep}
data=${DATA:-../shared/data}
mkdir -p "$runs"
base=(--train "$data/qqp/train.tsv.gz" --valid "${VALID:-build/valid.tsv}" --device "${DEVICE:-cuda}" --threads 2
      --epochs 9 --glove --hidden-dim 128 --pooling mean_max --tokenizer models/dupq-qqp/tokenizer.json)
export TQDM_DISABLE=1 PYTHONUNBUFFERED=1
while [ $# -ge 2 ]; do
  name=$1 flags=$2; shift 2
  (
    start=$(date +%s)
    # shellcheck disable=SC2086  # FLAGS is a list of flags
    timeout "$limit" ${DUPQ:-python3 -m app.cli} train "${base[@]}" --out "$runs/$name" $flags > "$runs/$name.log" 2>&1
    echo "rc $? in $(( $(date +%s) - start )) s" >> "$runs/$name.log"
  ) &
done
wait
for log in "$runs"/*.log; do
  echo "== $(basename "$log" .log)"
  grep -E "epoch [0-9]+: valid|wrote|early stop|^rc |Error" "$log" | sed 's/^.*INFO //'
done
