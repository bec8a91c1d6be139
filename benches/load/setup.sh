# Sourced by every benchmark script (benches/load, benches/faults,
# benches/budget): the machine layout, the work directory and what is
# stopped at exit, starting tollgate and waiting for it, the origin they
# measure against, the peers' configs, and the config pieces they share.

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.." # the repository's root

# Proxies and the origin on CPU 0, the load generator on CPU 1 (a script
# may change them after sourcing this file).
PROXY_CPU=0
LOAD_CPU=1
OUT=target/bench

# bench_setup NAME "PACKAGES" [EXAMPLE...]: the work directory
# (bench_workdir NAME), the Debian packages the bench needs besides the
# build's own, and release builds of tollgate and the named examples.
bench_setup() {
  bench_workdir "$1"
  local packages=$2 args=() example
  shift 2
  for example in "$@"; do args+=(--example "$example"); done
  # shellcheck disable=SC2086 # the package list splits on purpose
  scripts/install-deps build-essential cmake pkg-config libssl-dev $packages
  cargo build --release --locked --bin tollgate "${args[@]}" >&2
}

# bench_addresses BASE NAME...: sets NAME to 127.0.0.1:BASE, the next NAME
# to 127.0.0.1:BASE+1, and so on (each bench has its own range).
bench_addresses() {
  local port=$1 name
  shift
  for name in "$@"; do
    printf -v "$name" '127.0.0.1:%d' "$port"
    port=$((port + 1))
  done
}

# bench_workdir NAME: a fresh $WORK under /tmp (readable by nginx's
# unprivileged workers) and $OUT; at exit, bench_cleanup runs what
# bench_at_exit registered, stops the nginx instances bench_nginx started
# and the processes bench_bg started, and removes $WORK.
bench_workdir() {
  WORK="$(mktemp -d "/tmp/tollgate-$1.XXXXXX")"
  chmod 755 "$WORK"
  mkdir -p "$OUT"
  bench_exit_commands=()
  bench_nginx_confs=()
  bench_pids=()
  trap bench_cleanup EXIT
}
bench_cleanup() {
  local c p
  for c in "${bench_exit_commands[@]}"; do eval "$c" 2>/dev/null || true; done
  for c in "${bench_nginx_confs[@]}"; do nginx -c "$c" -s stop 2>/dev/null || true; done
  for p in "${bench_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
# bench_at_exit COMMAND: run (by eval) at exit, before the kills.
bench_at_exit() { bench_exit_commands+=("$1"); }
# bench_nginx CONF [CPU]: an nginx with CONF pinned to CPU (default the
# proxy's), stopped at exit.
bench_nginx() {
  taskset -c "${2:-$PROXY_CPU}" nginx -c "$1"
  bench_nginx_confs+=("$1")
}
# bench_bg CPU LOG COMMAND...: COMMAND pinned to CPU in the background, its
# output in LOG, killed at exit; its pid in $bench_last_pid.
bench_bg() {
  local cpu=$1 log=$2
  shift 2
  taskset -c "$cpu" "$@" > "$log" 2>&1 &
  bench_last_pid=$!
  bench_pids+=("$bench_last_pid")
}

# tollgate_start CONFIG [BINARY] [CPUS] [ADMIN]: a tollgate serving CONFIG
# (in $tollgate_pid, log in $WORK/tollgate.log), once its admin listener
# (default $ADMIN) says it is ready; the run fails with its log otherwise.
tollgate_start() {
  local bin="${2:-target/release/tollgate}"
  bench_bg "${3:-$PROXY_CPU}" "$WORK/tollgate.log" "$bin" run -c "$1"
  tollgate_pid=$bench_last_pid
  tollgate_wait_ready "${4:-$ADMIN}"
}
# tollgate_wait_ready [ADMIN]: waits (at most 20 s) until $tollgate_pid's
# admin listener says it is ready; fails the run with its log otherwise.
tollgate_wait_ready() {
  for _ in $(seq 1 400); do
    curl -fsS -o /dev/null "http://${1:-$ADMIN}/ready" 2>/dev/null && return 0
    kill -0 "$tollgate_pid" 2>/dev/null || break
    sleep 0.05 # poll until ready
  done
  tail -20 "$WORK/tollgate.log" >&2
  echo "tollgate did not become ready" >&2
  exit 1
}
# tollgate_stop: stops the tollgate tollgate_start started, and waits.
tollgate_stop() {
  kill "$tollgate_pid" 2>/dev/null || true
  wait "$tollgate_pid" 2>/dev/null || true
  tollgate_pid=""
}
# metric NAME: the value of an unlabelled metric on $ADMIN, as an integer.
metric() { curl -fsS "http://$ADMIN/metrics" | awk -v m="$1" '$1 == m { printf "%d", $2 }'; }
# rss_kib PID: the resident memory of PID, in KiB.
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# origin_routes_yaml [ROUTE...]: the `origin` pool (at $ORIGIN) and routes
# to it: each ROUTE is `NAME PREFIX [cache]`; without any, `plain` (/plain/,
# no cache) and `api` (/, cached) — the pair most benches measure.
origin_routes_yaml() {
  [ $# -gt 0 ] || set -- "plain /plain/" "api / cache"
  printf 'upstreams:\n  origin: { backends: ["%s"] }\nroutes:\n' "$ORIGIN"
  local route name prefix cache
  for route in "$@"; do
    read -r name prefix cache <<<"$route"
    [ -z "$cache" ] || cache=", cache: {}"
    printf '  - { name: %s, match: { path_prefix: %s }, upstream: origin%s }\n' "$name" "$prefix" "$cache"
  done
}

# tollgate_server_yaml LISTEN ADMIN [GRACE]: the listener, admin and
# server lines of a bench config: LISTEN is `ip:port` or a YAML list; one
# worker thread; its files under $WORK named by the admin port (several
# tollgates may share $WORK).
tollgate_server_yaml() {
  local listen=$1
  [[ $listen == \[* ]] || listen="[\"$listen\"]"
  cat <<YAML
listen: $listen
admin: { listen: "$2" }
server: { threads: 1, work_stealing: false, grace_period: ${3:-0s}, graceful_shutdown_timeout: 1s,
          pid_file: $WORK/tollgate-${2##*:}.pid, upgrade_sock: $WORK/upgrade-${2##*:}.sock }
YAML
}

# median: the median of the numbers on standard input, one per line.
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)] }'; }
# wrk_summary: "req/s p50_ms p99_ms" from `wrk --latency` output on
# standard input.
wrk_summary() {
  awk 'function ms(v) { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /s$/) n *= 1000; return n }
       /^Requests\/sec:/ { rps = $2 } $1 == "50%" { p50 = ms($2) } $1 == "99%" { p99 = ms($2) }
       END { printf "%s %.3f %.3f\n", rps, p50, p99 }'
}
# wrk_rps: req/s from wrk's output on standard input.
wrk_rps() { awk '/^Requests\/sec:/ { print $2 }'; }

# alternating_rounds NAME...: ROUNDS rounds of DURATION seconds each, the
# proxies NAME... (their addresses in the array `addr`) asked in turn for
# the cached hit and the pass-through, wrk on LOAD_CPU; req/s go to the
# array `r` under "NAME/cached|passthrough/ROUND", each printed to stderr.
alternating_rounds() {
  declare -gA r
  local round name s
  for round in $(seq 1 "$ROUNDS"); do
    for name in "$@"; do
      for s in cached:/cached passthrough:/plain/uncached; do
        r["$name/${s%%:*}/$round"]=$(taskset -c $LOAD_CPU wrk -t1 -c64 -d"${DURATION}s" "http://${addr[$name]}${s#*:}" | wrk_rps)
        echo "round $round $name ${s%%:*}: ${r[$name/${s%%:*}/$round]}" >&2
      done
    done
  done
}

# py_dict NAME: the associative array NAME as a Python dict of strings,
# for the scripts' summaries.
py_dict() {
  local -n dict=$1
  local k
  printf '{'
  for k in "${!dict[@]}"; do printf '"%s": "%s",' "$k" "${dict[$k]}"; done
  printf '}'
}

# bench_document PATH: a 1 KB JSON document.
bench_document() {
  python3 - "$1" <<'PY'
import json, sys
items = [{"id": i, "name": f"item-{i:03d}", "price_cents": 1000 + i} for i in range(24)]
doc = json.dumps({"items": items}, separators=(",", ":"))
open(sys.argv[1], "w").write((doc + " " * 1024)[:1024])
PY
}

# origin_conf WORK ADDR: an nginx config serving WORK/doc.json at /cached
# (`public, max-age=300`, ETag), /uncached and /plain/uncached (`no-store`).
origin_conf() {
  origin_locations "$1" "$2" "    location = /cached   { add_header Cache-Control \"public, max-age=300\"; etag on; alias $1/doc.json; }
    location = /uncached { add_header Cache-Control \"no-store\"; alias $1/doc.json; }
    location = /plain/uncached { add_header Cache-Control \"no-store\"; alias $1/doc.json; }"
}

# bench_rate_limits KEY_HASH [ISSUER]: a tier whose budget the load cannot
# reach (every request is decided, none refused) and the tenant holding
# the key; with ISSUER, that issuer's tokens may name the tenant too (a
# tenant with keys is not claimable by tokens otherwise).
bench_rate_limits() {
  cat <<YAML
tiers:
  bench: { per_second: 100000000, per_hour: 100000000000 }
tenants:
  bench: { tier: bench, api_keys: ["$1"]${2:+, issuers: [\"$2\"]} }
anonymous: { reject: true }
YAML
}

# bench_jwt_auth JWKS_FILE ISSUER AUDIENCE [CACHE_SIZE]: tenants from RS256
# JWTs (examples/jwt_bench_keys.rs makes the key set and a token), the
# tenant named by `org_id`, on bench_rate_limits' tier.
bench_jwt_auth() {
  cat <<YAML
auth:
  jwt:
    issuers:
      - issuer: "$2"
        audiences: [$3]
        jwks: { file: $1 }
        algorithms: [RS256]
    tenant_claim: org_id
    default_tier: bench
YAML
  [ -z "${4:-}" ] || echo "    cache_size: $4"
}

# origin_locations WORK ADDR LOCATIONS: an nginx config (one worker, no
# access log, root WORK) serving the given `location` blocks.
origin_locations() {
  cat <<NGX
worker_processes 1;
pid $1/origin.pid;
error_log $1/origin-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen $2 reuseport;
    default_type application/json;
    root $1;
$3
  }
}
NGX
}

# compare_builds BASE [TODAY_DIR]: BIN[base] is a release build of commit
# BASE, BIN[today] this checkout's (or TODAY_DIR's) release build.
declare -A BIN
compare_builds() {
  BIN[base]=$(base_binary "$1")
  BIN[today]="${2:-.}/target/release/tollgate"
}

# base_binary BASE: the path of a release build of commit BASE, made in a
# git worktree under /tmp (kept between runs, with its target directory,
# so a second run does not rebuild it). For today-against-base runs.
base_binary() {
  local dir
  dir="/tmp/tollgate-base-$(git rev-parse --short "$1")"
  if [ ! -x "$dir/target/release/tollgate" ]; then
    [ -d "$dir" ] || git worktree add -f "$dir" "$1" >&2
    (cd "$dir" && cargo build --release --locked --bin tollgate >&2)
  fi
  echo "$dir/target/release/tollgate"
}

# peer_configs WORK ORIGIN NGINX HAPROXY [NGINX_H2C HAPROXY_H2C] [MAXCONN]:
# writes WORK/nginx-proxy.conf and WORK/haproxy.cfg, the two peers as a
# production deployment would run them in front of ORIGIN: one worker
# (thread), keep-alive to the origin, the access log on (nginx buffered
# as production nginx writes it; HAProxy's httplog to its standard output,
# which the caller sends to a file), a cache for what the origin allows
# (nginx proxy_cache; HAProxy's cache, which keeps objects in shared
# memory), gzip in nginx as in tollgate. With the _H2C addresses each also
# listens for HTTP/2 with prior knowledge.
peer_configs() {
  local work=$1 origin=$2 nginx=$3 haproxy=$4 nginx_h2c=${5:-} haproxy_h2c=${6:-} maxconn=${7:-4096}
  # A connection can take two descriptors (client and origin side): within
  # the process's hard limit (20,000 on the project's machines), HAProxy
  # refuses to start otherwise.
  local fds hap_maxconn
  fds=$(ulimit -Hn)
  [ "$fds" = unlimited ] && fds=1048576
  hap_maxconn=$(( maxconn * 2 + 100 > fds ? (fds - 100) / 2 : maxconn ))
  cat > "$work/nginx-proxy.conf" <<NGX
worker_processes 1;
worker_rlimit_nofile $(( maxconn * 2 + 100 > fds ? fds : maxconn * 2 + 100 ));
pid $work/nginx-proxy.pid;
error_log $work/nginx-proxy-error.log warn;
events { worker_connections $maxconn; }
http {
  access_log $work/nginx-access.log combined buffer=64k flush=1s;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  proxy_cache_path $work/nginx-cache levels=1:2 keys_zone=api:10m max_size=100m inactive=10m use_temp_path=off;
  upstream origin { server $origin; keepalive 128; }
  gzip on; gzip_types application/json; gzip_min_length 1000; gzip_comp_level 6; gzip_proxied any;
  server {
    listen $nginx reuseport;
    ${nginx_h2c:+listen $nginx_h2c http2;}
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache api;
      proxy_cache_valid 200 5m;
    }
  }
}
NGX
  cat > "$work/haproxy.cfg" <<HAP
global
  nbthread 1
  maxconn $hap_maxconn
  log stdout format raw local0
defaults
  mode http
  log global
  option httplog
  option http-keep-alive
  timeout connect 5s
  timeout client 300s
  timeout server 60s
  timeout http-keep-alive 300s
cache api
  total-max-size 100
  max-object-size 65536
  max-age 300
frontend front
  bind $haproxy
  ${haproxy_h2c:+bind $haproxy_h2c proto h2}
  maxconn $hap_maxconn
  default_backend origin
backend origin
  http-reuse always
  http-request cache-use api
  http-response cache-store api
  server origin $origin maxconn 1000
HAP
}

# wait_answers ADDR...: polls each until it answers GET /uncached (for at
# most 30 s: a file of 100,000 routes takes seconds to load), fails the
# run when one never does.
wait_answers() {
  local addr
  for addr in "$@"; do
    for _ in $(seq 1 600); do
      curl -fsS -o /dev/null -H "Authorization: Bearer ${BENCH_KEY:-bench-key}" "http://$addr/uncached" 2>/dev/null && break
      sleep 0.05 # poll until the server answers
    done
    curl -fsS -o /dev/null -H "Authorization: Bearer ${BENCH_KEY:-bench-key}" "http://$addr/uncached" \
      || { echo "$addr does not answer" >&2; return 1; }
  done
}

# settle PID: waits (at most a minute) until the process has used at most
# 2 % of a core over half a second, so start-up work still running in the
# background (key sets, connectors) is not counted as the requests'.
settle() {
  local before after
  for _ in $(seq 1 120); do
    before=$(awk '{ print $14 + $15 }' "/proc/$1/stat")
    sleep 0.5 # pace: the sampling interval; the loop ends on the condition
    after=$(awk '{ print $14 + $15 }' "/proc/$1/stat")
    [ $((after - before)) -le 1 ] && return 0
  done
  echo "warning: process $1 did not settle within a minute" >&2
}
