#!/usr/bin/env bash
# What an idle connection costs, and throughput at 10,000 connections:
# tollgate beside nginx, HAProxy and the bare Pingora proxy, in one run.
# See benches/load/README.md.
#
#   benches/load/connections.sh [IDLE=3000] [DURATION_SECONDS=5] [ROUNDS=3]
#   PARTS="idle" benches/load/connections.sh     # only the memory part
#
# 1. idle: for each proxy, IDLE keep-alive clients (examples/idle_clients)
#    each send one request and then sit idle; the growth of the proxy's
#    resident memory (its worker process) divided by IDLE is the cost of
#    an idle connection. HTTP/1.1 on every proxy, then HTTP/2 (h2c prior
#    knowledge) on tollgate, nginx and HAProxy.
# 2. wide: pass-through and cache hits with wrk at 100 and at 10,000
#    connections; prints each proxy's 10k / 100 ratio (rounds alternate).
# Proxies and the origin on CPU 0, the clients on CPU 1. Writes
# target/bench/connections-results.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
. benches/load/setup.sh
IDLE="${1:-3000}"
DURATION="${2:-5}"
ROUNDS="${3:-3}"
PARTS="${PARTS:-idle wide}"
TOLLGATE_BIN="${TOLLGATE_BIN:-target/release/tollgate}" # another build, to compare
PROXY_CPU=0
LOAD_CPU=1
OUT=target/bench
mkdir -p "$OUT"
WORK="$(mktemp -d /tmp/tollgate-conns.XXXXXX)"
chmod 755 "$WORK"

scripts/install-deps build-essential cmake pkg-config libssl-dev nginx haproxy wrk
cargo build --release --locked --bin tollgate --example bare_proxy --example idle_clients >&2
ulimit -n "$(ulimit -Hn)" # 10,000 connections need more than the usual 1,024 descriptors

ORIGIN=127.0.0.1:18281
TOLLGATE=127.0.0.1:18280
TOLLGATE_H2C=127.0.0.1:18285
ADMIN=127.0.0.1:18290
NGINX=127.0.0.1:18282
NGINX_H2C=127.0.0.1:18286
HAPROXY=127.0.0.1:18284
HAPROXY_H2C=127.0.0.1:18287
BARE=127.0.0.1:18283

bench_document "$WORK/doc.json"
origin_conf "$WORK" "$ORIGIN" | sed -e 's/worker_connections 4096/worker_connections 20000/' > "$WORK/origin.conf"
peer_configs "$WORK" "$ORIGIN" "$NGINX" "$HAPROXY" "$NGINX_H2C" "$HAPROXY_H2C" 10500

cat > "$WORK/tollgate.yaml" <<YAML
listen: ["$TOLLGATE", { address: "$TOLLGATE_H2C", h2c: true }]
admin: { listen: "$ADMIN" }
server: { threads: 1, work_stealing: false, grace_period: 0s, graceful_shutdown_timeout: 1s,
          pid_file: $WORK/tollgate.pid, upgrade_sock: $WORK/upgrade.sock }
limits: { max_connections: 10500, keepalive_timeout: 300s }
logging: { level: warn, access_log: true, access_log_path: $WORK/tollgate-access.log }
upstreams:
  origin: { backends: ["$ORIGIN"] }
routes:
  - { name: plain, match: { path_prefix: /plain/ }, upstream: origin }
  - { name: api, match: { path_prefix: / }, upstream: origin, cache: {} }
YAML

peer_pid=""
cleanup() {
  nginx -c "$WORK/nginx-proxy.conf" -s stop 2>/dev/null || true
  nginx -c "$WORK/origin.conf" -s stop 2>/dev/null || true
  [ -n "$peer_pid" ] && kill "$peer_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

taskset -c $PROXY_CPU nginx -c "$WORK/origin.conf"
wait_answers "$ORIGIN"

# start_peer NAME: starts that proxy afresh (so memory freed by an earlier
# measurement is not reused by the next) and sets peer_pid to the process
# that serves connections (nginx: its worker).
start_peer() {
  case $1 in
    nginx)
      taskset -c $PROXY_CPU nginx -c "$WORK/nginx-proxy.conf"
      wait_answers "$NGINX"
      peer_pid=$(pgrep -P "$(cat "$WORK/nginx-proxy.pid")" | head -n 1) ;;
    haproxy)
      taskset -c $PROXY_CPU haproxy -db -f "$WORK/haproxy.cfg" > "$WORK/haproxy.log" 2>&1 &
      peer_pid=$!
      wait_answers "$HAPROXY" ;;
    tollgate)
      taskset -c $PROXY_CPU "$TOLLGATE_BIN" run -c "$WORK/tollgate.yaml" > "$WORK/tollgate.log" 2>&1 &
      peer_pid=$!
      wait_answers "$TOLLGATE" ;;
    bare-pingora)
      taskset -c $PROXY_CPU target/release/examples/bare_proxy "$BARE" "$ORIGIN" "$WORK/doc.json" > "$WORK/bare.log" 2>&1 &
      peer_pid=$!
      wait_answers "$BARE" ;;
  esac
}
stop_peer() {
  case $1 in
    nginx) nginx -c "$WORK/nginx-proxy.conf" -s stop
           for _ in $(seq 1 100); do kill -0 "$peer_pid" 2>/dev/null || break; sleep 0.05; done ;; # poll until it is gone
    *) kill "$peer_pid"; wait "$peer_pid" 2>/dev/null || true ;;
  esac
  peer_pid=""
}

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

declare -A idle_cost
# idle NAME ADDR PROTO: RSS growth per idle connection of a fresh NAME, in bytes.
idle() {
  local before after fifo="$WORK/hold-$1-$3"
  start_peer "$1"
  mkfifo "$fifo"
  before=$(rss_kib "$peer_pid")
  taskset -c $LOAD_CPU target/release/examples/idle_clients "$2" "$IDLE" "$3" /cached < "$fifo" > "$WORK/idle-$1-$3.out" &
  local client=$!
  exec 9> "$fifo" # holds the clients' stdin open until the measurement is taken
  for _ in $(seq 1 1200); do
    grep -q '^ready' "$WORK/idle-$1-$3.out" 2>/dev/null && break
    kill -0 "$client" 2>/dev/null || break
    sleep 0.1 # poll until every connection is open and answered
  done
  grep -q '^ready' "$WORK/idle-$1-$3.out" || { echo "$1 $3: the idle clients did not get ready" >&2; exit 1; }
  sleep 1 # pace: the last answers' frees land before RSS is read
  after=$(rss_kib "$peer_pid")
  exec 9>&-
  wait "$client" || true
  stop_peer "$1"
  idle_cost["$1/$3"]=$(( (after - before) * 1024 / IDLE ))
  echo "idle $1 $3: RSS $before -> $after KiB, $(( (after - before) * 1024 / IDLE )) bytes per connection" >&2
}

if [[ " $PARTS " == *" idle "* ]]; then
  idle tollgate "$TOLLGATE" http1
  idle bare-pingora "$BARE" http1
  idle nginx "$NGINX" http1
  idle haproxy "$HAPROXY" http1
  idle tollgate "$TOLLGATE_H2C" h2c
  idle nginx "$NGINX_H2C" h2c
  idle haproxy "$HAPROXY_H2C" h2c
fi

declare -A wide
to_rps() { awk '/^Requests\/sec:/ { print $2 }'; }
if [[ " $PARTS " == *" wide "* ]]; then
  for round in $(seq 1 "$ROUNDS"); do
    for s in "passthrough:/plain/uncached" "cached:/cached"; do
      IFS=: read -r scen path <<<"$s"
      for t in "nginx:$NGINX" "haproxy:$HAPROXY" "tollgate:$TOLLGATE" "bare-pingora:$BARE"; do
        name=${t%%:*}; addr=${t#*:}
        start_peer "$name"
        for conns in 100 10000; do
          rps=$(taskset -c $LOAD_CPU wrk -t1 -c$conns -d"${DURATION}s" --timeout 10s "http://$addr$path" | to_rps)
          wide["$scen/$name/$conns"]+="$rps;"
          echo "round $round $scen $name c$conns: $rps" >&2
        done
        stop_peer "$name"
      done
    done
  done
fi

python3 - "$OUT/connections-results.json" "$IDLE" "$ROUNDS" "$DURATION" <<PY
import json, statistics, sys
idle = {$(for k in "${!idle_cost[@]}"; do printf '"%s": %s,' "$k" "${idle_cost[$k]}"; done)}
wide_raw = {$(for k in "${!wide[@]}"; do printf '"%s": "%s",' "$k" "${wide[$k]}"; done)}
out, count, rounds, duration = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
names = ("tollgate", "bare-pingora", "nginx", "haproxy")
if idle:
    print(f"\nidle connections: {count} keep-alive clients, one request each; RSS growth of the proxy per connection")
    print(f"{'proxy':<14} {'HTTP/1.1 bytes':>15} {'HTTP/2 bytes':>13}")
    for n in names:
        h1, h2 = idle.get(f"{n}/http1"), idle.get(f"{n}/h2c")
        if h1 is None and h2 is None: continue
        print(f"{n:<14} {h1 if h1 is not None else '-':>15} {h2 if h2 is not None else '-':>13}")
wide = {}
for k, v in wide_raw.items():
    wide[k] = statistics.median(float(x) for x in v.strip(";").split(";"))
if wide:
    print(f"\nthroughput at 100 and 10,000 connections (median of {rounds} x {duration}s, wrk -t1)")
    print(f"{'scenario':<12} {'proxy':<14} {'c100 req/s':>11} {'c10000 req/s':>13} {'10k/100':>8} {'10k vs nginx':>13}")
    for scen in ("passthrough", "cached"):
        for n in names:
            a, b = wide.get(f"{scen}/{n}/100"), wide.get(f"{scen}/{n}/10000")
            ng = wide.get(f"{scen}/nginx/10000")
            if not a or not b: continue
            print(f"{scen:<12} {n:<14} {a:>11.0f} {b:>13.0f} {b/a:>7.2f}x {b/ng if ng else 0:>12.2f}x")
json.dump({"idle_connections": int(count), "idle_bytes_per_connection": idle,
           "wide_rps": wide}, open(out, "w"), indent=2)
print(f"written: {out}")
PY
