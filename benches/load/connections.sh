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
. "$(dirname "$0")/../load/setup.sh" # strict mode, the repository's root, the helpers
IDLE="${1:-3000}"
DURATION="${2:-5}"
ROUNDS="${3:-3}"
PARTS="${PARTS:-idle wide}"
TOLLGATE_BIN="${TOLLGATE_BIN:-target/release/tollgate}" # another build, to compare

bench_setup conns "nginx haproxy wrk" bare_proxy idle_clients
ulimit -n "$(ulimit -Hn)" # 10,000 connections need more than the usual 1,024 descriptors

bench_addresses 18280 TOLLGATE ORIGIN NGINX BARE HAPROXY TOLLGATE_H2C NGINX_H2C HAPROXY_H2C ADMIN

bench_document "$WORK/doc.json"
origin_conf "$WORK" "$ORIGIN" | sed -e 's/worker_connections 4096/worker_connections 20000/' > "$WORK/origin.conf"
peer_configs "$WORK" "$ORIGIN" "$NGINX" "$HAPROXY" "$NGINX_H2C" "$HAPROXY_H2C" 10500

{ tollgate_server_yaml "[\"$TOLLGATE\", { address: \"$TOLLGATE_H2C\", h2c: true }]" "$ADMIN"
  cat <<YAML
limits: { max_connections: 10500, keepalive_timeout: 300s }
logging: { level: warn, access_log: true, access_log_path: $WORK/tollgate-access.log }
YAML
  origin_routes_yaml
} > "$WORK/tollgate.yaml"

peer_pid=""
bench_at_exit 'nginx -c "$WORK/nginx-proxy.conf" -s stop'
bench_at_exit '[ -z "$peer_pid" ] || kill "$peer_pid"'
bench_nginx "$WORK/origin.conf"
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
      bench_bg $PROXY_CPU "$WORK/haproxy.log" haproxy -db -f "$WORK/haproxy.cfg"
      peer_pid=$bench_last_pid
      wait_answers "$HAPROXY" ;;
    tollgate)
      bench_bg $PROXY_CPU "$WORK/tollgate.log" "$TOLLGATE_BIN" run -c "$WORK/tollgate.yaml"
      peer_pid=$bench_last_pid
      wait_answers "$TOLLGATE" ;;
    bare-pingora)
      bench_bg $PROXY_CPU "$WORK/bare.log" target/release/examples/bare_proxy "$BARE" "$ORIGIN" "$WORK/doc.json"
      peer_pid=$bench_last_pid
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
idle = {k: int(v) for k, v in $(py_dict idle_cost).items()}
wide_raw = $(py_dict wide)
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
