#!/usr/bin/env bash
# What `du` shows of a PostgreSQL store under retention: rounds of 20,000 events (each with a
# 600-byte field) into a flow that keeps its newest 5,000 runs, on a throwaway cluster; after each
# round (runs finished, two retention sweeps passed), the runs kept, `du` of the cluster's `base`
# directory and pg_database_size. Needs PostgreSQL's initdb and pg_ctl on PATH, python3, and
# `cargo build --release`. Run as root (the cluster runs as `postgres`) or as a user that may run
# initdb. Usage: bench/pg-retention-disk.sh [ROUNDS]
set -eu
ROUNDS=${1:-8}
BIN=$(cd "$(dirname "$0")/.." && pwd)/target/release/hookflow
D=$(mktemp -d); PGD=$D/pgdata; PORT=55439; LISTEN=127.0.0.1:8797
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
mkdir -p $PGD $D/flows
[ "$(id -u)" = 0 ] && chown -R postgres $D
as_pg initdb -D $PGD -A trust -U postgres >/dev/null
as_pg pg_ctl -D $PGD -o "-p $PORT -k $D -c listen_addresses=127.0.0.1" -l $D/pg.log start >/dev/null
cat > $D/flows/du.yaml <<'F'
id: du
trigger: { webhook: }
retention: { max_runs: 5000 }
steps:
  - { id: keep, filter: { all: [ { value: "{{trigger.body.n}}", exists: true } ] } }
  - { id: shape, map: { n: "{{trigger.body.n}}", note: "{{trigger.body.note}}" } }
F
echo 'retention: { max_age: 14d, max_runs: 5000, every: 5s }' > $D/config.yaml
"$BIN" serve --config $D/config.yaml --listen $LISTEN --flows $D/flows \
  --store postgres://postgres@127.0.0.1:$PORT/postgres > $D/server.log 2>&1 &
SERVER=$!
trap 'kill $SERVER; as_pg pg_ctl -D $PGD stop -m fast >/dev/null; rm -rf $D' EXIT
for _ in $(seq 1 100); do curl -sf http://$LISTEN/healthz >/dev/null && break; sleep 0.2; done
URL=$(curl -s http://$LISTEN/api/v1/flows | python3 -c 'import json,sys; print([f for f in json.load(sys.stdin)["flows"] if f["id"]=="du"][0]["catch_url"])')
send() {
  python3 - "$URL" 20000 <<'PY'
import http.client, json, sys, threading, urllib.parse
url, count = urllib.parse.urlparse(sys.argv[1]), int(sys.argv[2])
lock, nxt = threading.Lock(), [0]
def work():
    c = http.client.HTTPConnection(url.hostname, url.port)
    while True:
        with lock:
            n = nxt[0]; nxt[0] += 1
        if n >= count: return
        c.request("POST", url.path, json.dumps({"n": n, "note": "x" * 600}), {"content-type": "application/json"})
        r = c.getresponse(); r.read()
        assert r.status == 200, r.status
threads = [threading.Thread(target=work) for _ in range(32)]
for t in threads: t.start()
for t in threads: t.join()
PY
}
sql() { psql -h $D -p $PORT -U postgres -tAc "$1"; }
echo "round,events_sent,runs_kept,du_base_MB,db_size_MB"
for round in $(seq 1 "$ROUNDS"); do
  send
  for _ in $(seq 1 600); do
    [ "$(curl -s http://$LISTEN/metrics | awk '/^hookflow_queue_depth /{print $2}')" = 0 ] && break
    sleep 1
  done
  sleep 12
  echo "$round,$((round * 20000)),$(sql 'select count(*) from hookflow.runs'),$(du -sm $PGD/base | cut -f1),$(sql "select pg_database_size('postgres')/1048576")"
done
