#!/usr/bin/env bash
# Scenario (c), backlog: N events (default 1,000,000) are accepted while the server executes nothing
# (`workers: 0`), then the server restarts with workers and drains them. Prints and appends to
# bench/RESULTS.md: acknowledged events/s, ack latency, resident memory idle / with the backlog /
# peak / after draining, drain rate, and the store's size. Everything runs on 127.0.0.1.
set -euo pipefail
N=${1:-1000000}
cd "$(dirname "$0")/.."
cargo build --release -q -p hookflow -p hookflow-bench
bin=target/release
work=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; rm -rf "$work"' EXIT

mkdir "$work/flows"
cat > "$work/flows/backlog.yaml" <<'YAML'
id: backlog
trigger: { webhook: }
steps:
  - id: shape
    map: { email: "{{trigger.body.data.object.customer_email}}", plan: "{{trigger.body.data.object.items.data.0.price.nickname}}" }
YAML

start() { # $1: workers
  printf 'workers: %s\n' "$1" > "$work/config.yaml"
  RUST_LOG=warn "$bin/hookflow" serve --config "$work/config.yaml" --listen 127.0.0.1:0 \
    --flows "$work/flows" --data "$work/data" > "$work/banner" 2> "$work/log" &
  pid=$!
  until grep -q '^request inspector' "$work/banner" 2>/dev/null; do sleep 0.1; done
  base=$(head -1 "$work/banner" | sed 's/.* listening on //')
  url=$(awk '$1 == "backlog" { print $3 }' "$work/banner")
}
rss() { awk '/^VmRSS/ { print $2 }' "/proc/$pid/status"; }
hwm() { awk '/^VmHWM/ { print $2 }' "/proc/$pid/status"; }
stop() { kill -TERM "$pid"; wait "$pid" || true; pid=; }

start 0
"$bin/hookflow-load" --url "$url" --count 1000 --concurrency 16 > /dev/null
idle=$(rss)
ingest=$("$bin/hookflow-load" --url "$url" --count "$N" --concurrency 64)
echo "$ingest"
full=$(rss); peak=$(hwm)
stop

start 32
drain_start=$(date +%s.%N)
while [ "$(curl -s "$base/api/v1/runs?flow=backlog&status=queued&limit=1" | grep -c '"id"')" != 0 ]; do sleep 5; done
drain_end=$(date +%s.%N)
drained=$(rss); drain_peak=$(hwm)
stop
secs=$(echo "$drain_end - $drain_start" | bc)
rate=$(echo "($N + 1000) / $secs" | bc)
store=$(du -sm "$work/data" | cut -f1)

report="| $(date -u +%F) | $(git rev-parse --short HEAD) | backlog of $N | ${ingest#acked } | RSS idle $((idle/1024)) MB, with backlog $((full/1024)) MB, peak $((peak/1024)) MB | drained in ${secs%.*} s ($rate runs/s), RSS after $((drained/1024)) MB, peak $((drain_peak/1024)) MB | store $store MB |"
echo "$report"
echo "$report" >> bench/RESULTS.md
