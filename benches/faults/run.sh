#!/usr/bin/env bash
# Fault benchmark: tollgate in front of three small upstreams (nginx) and a
# Redis, under a constant paced client load, with one fault injected at a
# time. See benches/faults/README.md.
#
#   benches/faults/run.sh [SCENARIO ...]
#
# Each scenario runs the load for SECONDS (12), injects its fault at
# FAULT_FROM (4 s) and removes it at FAULT_TO (8 s). For each it prints the
# requests sent, client-visible failures by status or I/O error, p99 during
# the fault, and the time from the fault's end to the last failure; writes
# target/bench/faults-results.json. Everything runs on loopback; tollgate,
# the upstreams and Redis on CPU 0, the client on CPU 1. Not part of the
# test command.
. "$(dirname "$0")/../load/setup.sh" # strict mode, the repository's root, the helpers
SECONDS_PER_RUN="${SECONDS_PER_RUN:-12}"
FAULT_FROM=4
FAULT_TO=8
RATE="${RATE:-1000}"          # requests per second across all connections
CONNS="${CONNS:-32}"
ALL="backend_killed backend_hung backend_5xx backend_idle_close redis_killed redis_hung reload_storm broken_reload graceful_upgrade sigterm_in_flight"
SCENARIOS="${*:-$ALL}"

bench_setup faults "nginx redis-server curl" fault_client

PROXY=127.0.0.1:18300
ADMIN=127.0.0.1:18310
BACKENDS=(127.0.0.1:18301 127.0.0.1:18302 127.0.0.1:18303)
REDIS_PORT=18306
KEY=fault-key
KEY_HASH="sha256:$(printf '%s' "$KEY" | sha256sum | cut -d' ' -f1)"
CLIENT=target/release/examples/fault_client
BIN=target/release/tollgate

# One nginx per backend; MODE ok|5xx, KEEPALIVE in seconds.
backend_conf() { # index mode keepalive
  local i=$1 mode=$2 ka=$3 addr=${BACKENDS[$1]}
  local answer='add_header Cache-Control "no-store"; return 200 "{\"backend\":'"$i"'}";'
  [ "$mode" = 5xx ] && answer='return 503 "{\"error\":\"broken\"}";'
  cat > "$WORK/b$i.conf" <<NGX
worker_processes 1;
pid $WORK/b$i.pid;
error_log $WORK/b$i-error.log crit;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout ${ka}s;
  server {
    listen $addr reuseport;
    default_type application/json;
    location / { $answer }
  }
}
NGX
}
backend_start() { taskset -c $PROXY_CPU nginx -c "$WORK/b$1.conf"; }
backend_reload() { nginx -c "$WORK/b$1.conf" -s reload; }
backend_pids() { # master and workers of backend i
  local master; master=$(cat "$WORK/b$1.pid" 2>/dev/null || true)
  [ -n "$master" ] && { echo "$master"; pgrep -P "$master" || true; }
}
backend_signal() { for p in $(backend_pids "$1"); do kill "-$2" "$p" 2>/dev/null || true; done; }
backend_kill() { backend_signal "$1" KILL; rm -f "$WORK/b$1.pid"; }
wait_backend() { # index
  for _ in $(seq 1 100); do
    curl -fsS -o /dev/null "http://${BACKENDS[$1]}/" 2>/dev/null && return 0
    sleep 0.05 # poll until it answers
  done
  echo "backend $1 did not come up" >&2; exit 1
}

redis_start() {
  taskset -c $PROXY_CPU redis-server --port $REDIS_PORT --bind 127.0.0.1 --save "" --appendonly no \
    --daemonize yes --pidfile "$WORK/redis.pid" --logfile "$WORK/redis.log"
  for _ in $(seq 1 100); do
    redis-cli -p $REDIS_PORT ping >/dev/null 2>&1 && return 0
    sleep 0.05 # poll until it answers
  done
  echo "redis did not come up" >&2; exit 1
}
redis_pid() { cat "$WORK/redis.pid"; }

UPGRADE_SOCK="$WORK/upgrade-${ADMIN##*:}.sock" # tollgate_server_yaml's name for it
tollgate_config() { # [extra route line]
  tollgate_server_yaml "$PROXY" "$ADMIN" 3s
  cat <<YAML
logging: { level: warn, access_log: false }
tiers:
  standard: { per_second: 100000, per_hour: 100000000 }
tenants:
  bench: { tier: standard, api_keys: ["$KEY_HASH"] }
anonymous: { reject: true }
redis: { url: "redis://127.0.0.1:$REDIS_PORT", timeout: 50ms }
upstreams:
  api:
    backends: ["${BACKENDS[0]}", "${BACKENDS[1]}", "${BACKENDS[2]}"]
    retries: 2
    max_fails: 3
    fail_timeout: 5s
    fail_on_5xx: true
    retry_on_5xx: true
    health_check: { path: /, interval: 1s, timeout: 500ms, unhealthy_threshold: 2, healthy_threshold: 1 }
routes:
  - name: api
    match: { path_prefix: /api/ }
    upstream: api
    timeouts: { connect: 500ms, read: 1s, total: 5s }
${1:-}
YAML
}

tollgate_pid=""
# tollgate_launch [ARGS]: tollgate on the current config, not waited for
# (a graceful upgrade's new process waits for the old one's sockets).
tollgate_launch() {
  taskset -c $PROXY_CPU $BIN run -c "$WORK/tollgate.yaml" "$@" >> "$WORK/tollgate.log" 2>&1 &
  tollgate_pid=$!
}
wait_redis_shared() {
  for _ in $(seq 1 200); do
    curl -fsS "http://$ADMIN/health" 2>/dev/null | grep -q '"redis":{[^}]*"status":"ok"' && return 0
    curl -fsS -o /dev/null -H "X-API-Key: $KEY" "http://$PROXY/api/warm" 2>/dev/null || true
    sleep 0.05 # poll until Redis decides again
  done
  echo "redis did not come back in tollgate's view" >&2
}

# stop_world: every tollgate, backend and Redis of this run, whatever state
# a scenario left them in (stopped, hung).
stop_world() {
  for p in $(pgrep -f "$BIN run -c $WORK" || true); do kill -9 "$p" 2>/dev/null || true; done
  for i in 0 1 2; do backend_signal "$i" CONT; backend_kill "$i"; done
  if [ -f "$WORK/redis.pid" ]; then
    kill -CONT "$(redis_pid)" 2>/dev/null || true
    kill -9 "$(redis_pid)" 2>/dev/null || true
    rm -f "$WORK/redis.pid"
  fi
}
bench_at_exit stop_world

fresh_world() { # keepalive seconds for the backends
  stop_world
  sleep 0.2 # let the ports go
  for i in 0 1 2; do backend_conf "$i" ok "$1"; backend_start "$i"; done
  for i in 0 1 2; do wait_backend "$i"; done
  redis_start
  tollgate_config > "$WORK/tollgate.yaml"
  rm -f "$UPGRADE_SOCK"
  tollgate_launch
  tollgate_wait_ready
  wait_redis_shared
}

run_load() { # rate conns -> json on stdout (runs in the background)
  taskset -c $LOAD_CPU "$CLIENT" "$PROXY" /api/items "$SECONDS_PER_RUN" "$2" "$1" "$FAULT_FROM" "$FAULT_TO" "X-API-Key: $KEY"
}

declare -A results
at() { sleep "$1"; } # the load started at t=0; faults are placed with sleeps on purpose

scenario() {
  local name=$1 rate=$RATE conns=$CONNS keepalive=60
  # Idle close: each backend sees a request about once a second, as long
  # as its keep-alive timeout, so pooled connections race their closing.
  if [ "$name" = backend_idle_close ]; then rate=3; conns=3; keepalive=1; fi
  echo "== $name" >&2
  fresh_world "$keepalive"
  run_load "$rate" "$conns" > "$WORK/$name.json" &
  local load=$!
  at "$FAULT_FROM"
  case "$name" in
    backend_killed) backend_kill 0; at $((FAULT_TO - FAULT_FROM)); backend_start 0 ;;
    backend_hung) backend_signal 0 STOP; at $((FAULT_TO - FAULT_FROM)); backend_signal 0 CONT ;;
    backend_5xx) backend_conf 0 5xx 60; backend_reload 0; at $((FAULT_TO - FAULT_FROM)); backend_conf 0 ok 60; backend_reload 0 ;;
    backend_idle_close) at $((FAULT_TO - FAULT_FROM)) ;; # the fault is the whole run: keepalive_timeout 1s
    redis_killed) kill -9 "$(redis_pid)"; rm -f "$WORK/redis.pid"; at $((FAULT_TO - FAULT_FROM)); redis_start ;;
    redis_hung) kill -STOP "$(redis_pid)"; at $((FAULT_TO - FAULT_FROM)); kill -CONT "$(redis_pid)" ;;
    reload_storm)
      for s in $(seq 1 $((FAULT_TO - FAULT_FROM))); do
        tollgate_config "  - { name: extra$s, match: { path_prefix: /extra$s/ }, upstream: api }" > "$WORK/tollgate.yaml"
        kill -HUP "$tollgate_pid"; at 1
      done ;;
    broken_reload)
      echo "routes: [ this is not valid" > "$WORK/tollgate.yaml"; kill -HUP "$tollgate_pid"
      at $((FAULT_TO - FAULT_FROM)); tollgate_config > "$WORK/tollgate.yaml"; kill -HUP "$tollgate_pid" ;;
    graceful_upgrade)
      local old=$tollgate_pid
      tollgate_launch --upgrade
      for _ in $(seq 1 100); do [ -S "$UPGRADE_SOCK" ] && break; sleep 0.05; done # until the new one listens for the hand-over
      kill -QUIT "$old"; at $((FAULT_TO - FAULT_FROM)) ;;
    sigterm_in_flight) kill -TERM "$tollgate_pid"; at $((FAULT_TO - FAULT_FROM)) ;;
  esac
  wait "$load"
  # What tollgate says it did (summed over labels), when it is still up.
  local said='{}' scraped
  if scraped=$(curl -fsS "http://$ADMIN/metrics" 2>/dev/null); then
    said=$(printf '%s\n' "$scraped" | awk '
    /^tollgate_(upstream_retries_total|upstream_failures_total|upstream_panic_total|redis_breaker_opens_total|ratelimit_fallback_total|redis_errors_total|config_reloads_total)/ {
      name = $1; sub(/\{.*/, "", name); sum[name] += $2 }
    END { sep = ""; printf "{"; for (n in sum) { printf "%s\"%s\": %d", sep, n, sum[n]; sep = ", " } printf "}" }')
  fi
  python3 - "$WORK/$name.json" "$said" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
r["tollgate_metrics"] = json.loads(sys.argv[2])
json.dump(r, open(sys.argv[1], "w"))
PY
  results[$name]=$(cat "$WORK/$name.json")
  echo "   ${results[$name]}" >&2
}

for s in $SCENARIOS; do scenario "$s"; done

echo
printf 'load: %s req/s over %s keep-alive connections (backend_idle_close: 3 req/s over 3), %ss per run, fault from %ss to %ss\n' \
  "$RATE" "$CONNS" "$SECONDS_PER_RUN" "$FAULT_FROM" "$FAULT_TO"
printf '%-20s %9s %7s %5s %8s %10s %10s  %s\n' scenario requests failed "5xx" "retried" "p99 ms" "fault p99" "recovery ms / failures by kind"
python3 - "$OUT/faults-results.json" "$SCENARIOS" <<PY
import json, sys
results = {$(for s in $SCENARIOS; do printf '"%s": %s,' "$s" "${results[$s]}"; done)}
for name in sys.argv[2].split():
    r = results[name]
    fails = {k: v for k, v in r["by_status"].items() if not k.isdigit() or int(k) >= 500}
    print(f'{name:<20} {r["requests"]:>9} {r["failures"]:>7} {r["client_5xx"]:>5} {r["client_retries"]:>8} {r["p99_ms"]:>10.1f} {r["p99_during_fault_ms"]:>10.1f}  {r["recovery_ms"]:.0f} {fails or ""}')
json.dump(results, open(sys.argv[1], "w"), indent=2)
print(f"written: {sys.argv[1]}")
PY
