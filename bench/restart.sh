#!/usr/bin/env bash
# Restart times of `dupq serve` over an existing data directory: a clean start (snapshot loaded),
# then two adds and a delete, kill -9, and a start that replays them from the store onto the
# snapshot. Prints the seconds to /ready and the engine's snapshot lines; cleans up after itself.
#
#   bench/restart.sh [DATA_DIR] [INDEX_KIND]      (default: the 1M HNSW directory of bench/service.py)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-build/bench-data/hnsw-1000000}
KIND=${2:-hnsw}
PORT=8767
URL=http://127.0.0.1:$PORT
LOGS=$(mktemp -d)

start() {
  DUPQ_INDEX_KIND=$KIND DUPQ_LOG_JSON=false .venv/bin/dupq serve --port $PORT --data-dir "$DATA" >"$LOGS/$1.log" 2>&1 &
  PID=$!
  t0=$(date +%s.%N)
  until curl -sf $URL/ready >/dev/null; do sleep 0.1; done
  echo "$1: ready after $(echo "$(date +%s.%N) - $t0" | bc) s"
}
post() { curl -sf -XPOST "$URL$1" -H 'content-type: application/json' -d "$2"; echo; }

start clean
post /questions '{"questions":[{"id":"restart-1","text":"Is this question still here after a crash?"},{"id":"restart-2","text":"What survives kill -9?"}]}'
victim=$(post /duplicates '{"question":"How do I learn Python?","k":1}' | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["matches"][0]["id"])')
curl -sf -XDELETE "$URL/questions/$victim" -o /dev/null -w "deleted $victim: %{http_code}\n"
kill -9 $PID
wait $PID 2>/dev/null || true
start after-kill
grep -hE "snapshot|caught up|rebuil" "$LOGS/after-kill.log"
post /duplicates '{"question":"Is this question still here after a crash?","k":1}'
for id in restart-1 restart-2; do curl -sf -XDELETE "$URL/questions/$id" -o /dev/null; done
kill $PID
wait $PID || true
rm -rf "$LOGS"
