#!/usr/bin/env bash
# The performance budget: per-request counts that repeat on a shared,
# noisy machine, checked against benches/budget/budgets.txt. Called by the
# test command (scripts/test), so CI runs it on every change.
#
#   benches/budget/check.sh                  # check, print the table
#   SCENARIOS="cached grpc-unary" benches/budget/check.sh
#   BUDGET_TOLERANCE_PCT=5 BUDGET_REQUESTS=1000 benches/budget/check.sh
#   BUDGET_KEEP=target/bench/budget benches/budget/check.sh   # keep the callgrind files
#   TOLLGATE_BIN=/path/to/tollgate benches/budget/check.sh    # count another build
#
# For each scenario a release build of tollgate serves a fixed sequence of
# requests, one after another on one keep-alive connection, from the
# budget's own origin and clients (examples/budget_peers.rs):
#
# - instructions per request: tollgate runs under `valgrind --tool=callgrind`
#   (all its threads), WARM requests warm the path, the counters are
#   zeroed, REQUESTS more are sent, and the total is divided by REQUESTS.
#   The same binary and requests give the same count to a fraction of a
#   percent, whatever else the machine is doing.
# - system calls and context switches per request: tollgate runs natively
#   (CPU 0; clients and origin on CPU 1) and the kernel counts them while
#   the clients send REQUESTS requests: system calls with `perf stat -e
#   raw_syscalls:sys_enter`, voluntary context switches (each a wait for
#   an event; preemptions by a busy machine are left out) from /proc.
#   What callgrind cannot see.
#
# A scenario fails when a count exceeds its budget by more than
# BUDGET_TOLERANCE_PCT (5 %). A change that spends more raises the budget
# in the same commit and says why (see budgets.txt). Exits non-zero on any
# failure, after printing the whole table.
. "$(dirname "$0")/../load/setup.sh" # strict mode, the repository's root, the helpers # the work directory, settle, the shared config pieces
BUDGETS=benches/budget/budgets.txt
REQUESTS="${BUDGET_REQUESTS:-1000}"
WARM="${BUDGET_WARM:-300}"
TOLERANCE_PCT="${BUDGET_TOLERANCE_PCT:-5}"
ALL_SCENARIOS="cached passthrough passthrough-ratelimit jwt-hit grpc-unary redis-hit"
SCENARIOS="${SCENARIOS:-$ALL_SCENARIOS}"

bench_setup budget "python3 valgrind linux-perf redis-server" budget_peers jwt_bench_keys
TOLLGATE="${TOLLGATE_BIN:-target/release/tollgate}" # another build, to compare
PEERS=target/release/examples/budget_peers

# Free ports for this run: the kernel picks them (bound, then released).
read -r ORIGIN ORIGIN_H2C PROXY PROXY_H2C ADMIN REDIS_PORT < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(6)]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))')
ORIGIN=127.0.0.1:$ORIGIN
ORIGIN_H2C=127.0.0.1:$ORIGIN_H2C
PROXY=127.0.0.1:$PROXY
PROXY_H2C=127.0.0.1:$PROXY_H2C
ADMIN=127.0.0.1:$ADMIN
BENCH_KEY=budget-key
ISSUER=https://auth.budget/
AUDIENCE=budget-api

proxy_pid=""
bench_at_exit '[ -z "$proxy_pid" ] || kill "$proxy_pid"'
bench_bg $LOAD_CPU "$WORK/origin.log" "$PEERS" origin "$ORIGIN" "$ORIGIN_H2C"
bench_bg $LOAD_CPU "$WORK/redis.log" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no
TOKEN=$(target/release/examples/jwt_bench_keys "$WORK/jwks.json" "$ISSUER" "$AUDIENCE")
KEY_HASH=$("$TOLLGATE" hash-key "$BENCH_KEY")

# The configuration every scenario shares: what a deployment turns on by
# default (access log to a file, forwarding headers), one worker thread.
base_config() {
  tollgate_server_yaml "[\"$PROXY\", { address: \"$PROXY_H2C\", h2c: true }]" "$ADMIN"
  cat <<YAML
logging: { level: warn, access_log: true, access_log_path: $WORK/access.log }
upstreams:
  origin: { backends: ["$ORIGIN"] }
  grpc: { backends: ["$ORIGIN_H2C"], protocol: h2c }
routes:
  - { name: echo, upstream: grpc, match: { path_prefix: /bench.Echo/ } }
  - { name: plain, match: { path_prefix: /plain/ }, upstream: origin }
  - { name: api, match: { path_prefix: / }, upstream: origin, cache: {} }
YAML
}
base_config > "$WORK/base.yaml"
# Rate limiting by API key: a budget the requests cannot reach.
{ base_config; bench_rate_limits "$KEY_HASH"; } > "$WORK/ratelimit.yaml"
# Tenants from JWTs (RS256, the verified-token cache on): the token names
# the same tenant, which lists the issuer.
{ base_config; bench_rate_limits "$KEY_HASH" "$ISSUER"; bench_jwt_auth "$WORK/jwks.json" "$ISSUER" "$AUDIENCE"; } > "$WORK/jwt.yaml"
# The Redis tier alone: a memory tier too small to keep the document, so
# every hit is a Redis lookup.
{ base_config; cat <<YAML
redis: { url: "redis://127.0.0.1:$REDIS_PORT", timeout: 200ms }
cache: { max_size: 3KiB, max_object_size: 2KiB, redis: { lookup_timeout: 200ms } }
YAML
} > "$WORK/redis.yaml"

# scenario -> "config client path [header]"
declare -A plan=(
  [cached]="base http1 /cached"
  [passthrough]="base http1 /plain/uncached"
  [passthrough-ratelimit]="ratelimit http1 /plain/uncached Authorization:Bearer+$BENCH_KEY"
  [jwt-hit]="jwt http1 /cached Authorization:Bearer+$TOKEN"
  [grpc-unary]="base grpc /bench.Echo/Unary"
  [redis-hit]="redis http1 /cached"
)

# client_cmd KIND PATH COUNT [HEADER]: sets CMD to the client that sends
# COUNT requests on one connection (HEADER is NAME:VALUE, `+` for spaces).
client_cmd() {
  local kind=$1 path=$2 count=$3 header=${4:-}
  if [ "$kind" = grpc ]; then
    CMD=(taskset -c $LOAD_CPU "$PEERS" grpc "$PROXY_H2C" "$path" "$count")
  else
    CMD=(taskset -c $LOAD_CPU "$PEERS" http1 "$PROXY" "$path" "$count")
    [ -z "$header" ] || CMD+=("${header//+/ }")
  fi
}
client() { client_cmd "$@"; "${CMD[@]}"; }

# start_proxy CONFIG [WRAPPER...]: starts tollgate (under WRAPPER) and waits
# until the scenario's first request succeeds.
start_proxy() {
  local config=$1 kind=$2 path=$3 header=$4; shift 4
  taskset -c $PROXY_CPU "$@" "$TOLLGATE" run -c "$WORK/$config.yaml" > "$WORK/proxy.log" 2>&1 &
  proxy_pid=$!
  for _ in $(seq 1 900); do
    client "$kind" "$path" 1 "$header" >/dev/null 2>&1 && return 0
    kill -0 "$proxy_pid" 2>/dev/null || break
    sleep 0.1 # poll until the proxy (slow to start under valgrind) answers
  done
  echo "tollgate with $config.yaml never answered $path:" >&2
  tail -n 20 "$WORK/proxy.log" >&2
  exit 1
}

# voluntary_switches PID: the voluntary context switches of all its threads.
voluntary_switches() {
  cat /proc/"$1"/task/*/status 2>/dev/null | awk '/^voluntary_ctxt_switches:/ { s += $2 } END { print s + 0 }'
}

stop_proxy() {
  kill "$proxy_pid" 2>/dev/null || true
  wait "$proxy_pid" 2>/dev/null || true
  proxy_pid=""
}

# Redis-tier hits must really come from Redis: the first answer is written
# there in the background, so wait until a hit says so.
wait_redis_hit() {
  for _ in $(seq 1 300); do
    curl -fsS -o /dev/null -D - "http://$PROXY/cached" 2>/dev/null | grep -qi '^cache-status:.*detail=l2' && return 0
    sleep 0.1 # poll until the first answer is in Redis
  done
  echo "redis-hit: /cached is not served from the Redis tier" >&2
  exit 1
}

declare -A measured
for scen in $SCENARIOS; do
  [ -n "${plan[$scen]:-}" ] || { echo "unknown scenario $scen (known: $ALL_SCENARIOS)" >&2; exit 2; }
  read -r config kind path header <<<"${plan[$scen]}"

  # Kernel counts, natively.
  start_proxy "$config" "$kind" "$path" "$header"
  [ "$scen" = redis-hit ] && wait_redis_hit
  client "$kind" "$path" "$WARM" "$header"
  settle "$proxy_pid"
  client_cmd "$kind" "$path" "$REQUESTS" "$header"
  # System calls of tollgate's threads (-p) while the client runs; its
  # voluntary context switches (the waits: a busy machine's preemptions
  # are the involuntary ones, left out) from /proc before and after.
  switched_before=$(voluntary_switches "$proxy_pid")
  perf stat -x, -e raw_syscalls:sys_enter -p "$proxy_pid" -o "$WORK/perf.csv" -- "${CMD[@]}"
  switches=$(( $(voluntary_switches "$proxy_pid") - switched_before ))
  syscalls=$(awk -F, '$3 == "raw_syscalls:sys_enter" { print $1 }' "$WORK/perf.csv")
  [[ "$syscalls" =~ ^[0-9]+$ ]] || { echo "$scen: perf counted no system calls (needs root or kernel.perf_event_paranoid <= 1):" >&2; cat "$WORK/perf.csv" >&2; exit 1; }
  stop_proxy

  # Instructions, under callgrind.
  out="$WORK/callgrind.out"
  start_proxy "$config" "$kind" "$path" "$header" valgrind --tool=callgrind --callgrind-out-file="$out" --dump-instr=no
  [ "$scen" = redis-hit ] && wait_redis_hit
  client "$kind" "$path" "$WARM" "$header"
  settle "$proxy_pid"
  callgrind_control -z "$proxy_pid" >/dev/null
  client "$kind" "$path" "$REQUESTS" "$header"
  callgrind_control -d "budget-$scen" "$proxy_pid" >/dev/null
  # One dump file per thread: sum the totals of the dump taken after the run.
  instructions=$(grep -h '^totals:' $(grep -l "^desc: Trigger: .*budget-$scen" "$out"*) | awk '{ s += $2 } END { print s }')
  [[ "$instructions" =~ ^[0-9]+$ ]] && [ "$instructions" -gt 0 ] || { echo "$scen: callgrind counted no instructions" >&2; exit 1; }
  stop_proxy
  if [ -n "${BUDGET_KEEP:-}" ]; then mkdir -p "$BUDGET_KEEP" && for f in "$out"*; do mv "$f" "$BUDGET_KEEP/$scen.${f##*/}"; done; else rm -f "$out"*; fi

  measured[$scen]="$((instructions / REQUESTS)) $(awk -v n="$syscalls" -v r="$REQUESTS" 'BEGIN { printf "%.2f", n / r }') $(awk -v n="$switches" -v r="$REQUESTS" 'BEGIN { printf "%.2f", n / r }')"
  echo "$scen: ${measured[$scen]} (instructions, syscalls, context switches per request)" >&2
done

# The table, and the verdict.
failed=0
printf '\nperformance budget: per request, %s requests after %s to warm up; fails over budget + %s %%\n' "$REQUESTS" "$WARM" "$TOLERANCE_PCT"
printf '%-22s %-16s %12s %12s %8s  %s\n' scenario count measured budget ratio verdict
for scen in $SCENARIOS; do
  read -r m_instr m_sys m_ctx <<<"${measured[$scen]}"
  line=$(awk -v s="$scen" '$1 == s { print; exit }' "$BUDGETS")
  if [ -z "$line" ]; then
    printf '%-22s %-16s %12s %12s %8s  %s\n' "$scen" "-" "-" "-" "-" "NO BUDGET (add a line to $BUDGETS)"
    failed=1
    continue
  fi
  read -r _ b_instr b_sys b_ctx <<<"$line"
  for pair in "instructions $m_instr $b_instr" "syscalls $m_sys $b_sys" "ctx-switches $m_ctx $b_ctx"; do
    read -r what m b <<<"$pair"
    verdict=$(awk -v m="$m" -v b="$b" -v t="$TOLERANCE_PCT" 'BEGIN {
      if (m > b * (1 + t / 100)) print "OVER"; else if (m < b * (1 - 2 * t / 100)) print "ok (under: lower the budget)"; else print "ok" }')
    ratio=$(awk -v m="$m" -v b="$b" 'BEGIN { printf "%.3fx", m / b }')
    printf '%-22s %-16s %12s %12s %8s  %s\n' "$scen" "$what" "$m" "$b" "$ratio" "$verdict"
    [ "$verdict" = OVER ] && failed=1
  done
done
if [ "$failed" = 1 ]; then
  echo "performance budget: FAILED. A change that spends more raises its budget in $BUDGETS in the same commit, and says why." >&2
  exit 1
fi
echo "performance budget: ok"
