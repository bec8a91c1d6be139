#!/usr/bin/env bash
# Instructions per request, counted by callgrind: tollgate (plain, with
# rate limiting, with tracing at 1 %, behind a 1,000-network address
# list and a CORS policy) and the bare Pingora proxy, per scenario. Unlike req/s on a shared 2-core machine the
# count repeats to a fraction of a percent for the same binary and inputs,
# so it tells whether one change to the per-request work helped.
#
#   benches/load/instructions.sh [REQUESTS=2000]
#   SCENARIOS="cached passthrough-nocache" PROXIES="tollgate" benches/load/instructions.sh
#
# Each proxy runs under `valgrind --tool=callgrind`; one keep-alive client
# warms the path (200 requests), the counters are zeroed, REQUESTS requests
# are sent one after another, and the counters are dumped. Printed: the
# proxy's instructions per request (all its threads), and where the output
# files are for `callgrind_annotate`. See benches/load/README.md.
. "$(dirname "$0")/../load/setup.sh" # strict mode, the repository's root, the helpers
REQUESTS="${1:-2000}"
OUT=target/bench/callgrind

bench_setup instr "nginx valgrind" bare_proxy

bench_addresses 18180 PROXY ORIGIN ADMIN
BENCH_KEY=bench-key

bench_document "$WORK/doc.json"
origin_conf "$WORK" "$ORIGIN" > "$WORK/origin.conf"
tollgate_config() { # extra yaml appended
  tollgate_server_yaml "$PROXY" "$ADMIN"
  cat <<YAML
logging: { level: info, access_log: true, access_log_path: $WORK/access.log, slow_request_threshold: 10s }
compression: { min_size: 1000, gzip_level: 6, brotli_quality: 4 }
YAML
  origin_routes_yaml
  cat
}
tollgate_config </dev/null > "$WORK/tollgate.yaml"
KEY_HASH=$(target/release/tollgate hash-key "$BENCH_KEY")
bench_rate_limits "$KEY_HASH" | tollgate_config > "$WORK/tollgate-rl.yaml"
# Tracing on, 1 % sampled (exports to the origin, which refuses them: the
# request path is what is counted).
printf 'tracing: { endpoint: "http://%s/v1/traces", sample_ratio: 0.01 }\n' "$ORIGIN" \
  | tollgate_config > "$WORK/tollgate-tracing.yaml"
# Every route behind a 1,000-network address list (the client is allowed
# by its most specific entry, 127.0.0.0/8, among 999 denied networks) and
# a CORS policy (the client sends no Origin: the fields are checked and
# `Vary: Origin` added on every answer).
NETS=$(python3 -c 'print(", ".join(f"{10 + i // 250}.{i % 250}.0.0/16" for i in range(999)))')
tollgate_config </dev/null \
  | sed "s|upstream: origin|upstream: origin, addresses: { allow: [127.0.0.0/8], deny: [$NETS] }, cors: { allow_origins: [\"https://app.example.com\"] }|" \
  > "$WORK/tollgate-addresses.yaml"

bench_at_exit '[ -z "${proxy_pid:-}" ] || kill "$proxy_pid"'
bench_nginx "$WORK/origin.conf"

# Sends N requests on one keep-alive connection, headers as wrk sends
# them; fails on a non-2xx.
client() { # addr path n [accept-encoding]
  python3 - "$@" <<'PY'
import http.client, sys
addr, path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
headers = {"Authorization": "Bearer bench-key"}
if len(sys.argv) > 4: headers["Accept-Encoding"] = sys.argv[4]
host, port = addr.split(":")
c = http.client.HTTPConnection(host, int(port), timeout=60)
for _ in range(n):
    # As wrk sends it: Host and the given fields, no Accept-Encoding.
    c.putrequest("GET", path, skip_accept_encoding=True)
    for k, v in headers.items(): c.putheader(k, v)
    c.endheaders()
    r = c.getresponse(); r.read()
    if r.status >= 300: sys.exit(f"{path}: {r.status}")
PY
}

declare -A counts
measure() { # name scenario path encoding command...
  local name=$1 scen=$2 path=$3 enc=$4; shift 4
  local file="$OUT/$name-$scen.out"
  rm -f "$OUT/$name-$scen.out"*
  valgrind --tool=callgrind --callgrind-out-file="$file" --dump-instr=no "$@" >"$WORK/proxy.log" 2>&1 &
  proxy_pid=$!
  for _ in $(seq 1 600); do
    curl -fsS -o /dev/null -H "Authorization: Bearer $BENCH_KEY" "http://$PROXY$path" 2>/dev/null && break
    sleep 0.1 # poll until the proxy (slow under valgrind) answers
  done
  client "$PROXY" "$path" 200 $enc
  settle "$proxy_pid" # start-up work still running is not the requests'
  callgrind_control -z "$proxy_pid" >/dev/null
  client "$PROXY" "$path" "$REQUESTS" $enc
  callgrind_control -d "$name-$scen" "$proxy_pid" >/dev/null
  kill "$proxy_pid"; wait "$proxy_pid" 2>/dev/null || true; proxy_pid=
  # One dump per thread: sum the totals of the dump taken after the run.
  local total
  total=$(grep -h '^totals:' $(grep -l "^desc: Trigger: .*$name-$scen" "$file"* ) | awk '{ s += $2 } END { print s }')
  counts["$scen/$name"]=$((total / REQUESTS))
  echo "$scen $name: $((total / REQUESTS)) instructions/request" >&2
}

SCENARIOS="${SCENARIOS:-passthrough passthrough-nocache cached compressed}"
PROXIES="${PROXIES:-tollgate tollgate+ratelimit bare-pingora}"
wanted() { [[ " $1 " == *" $2 "* ]]; }
for s in "passthrough:/uncached" "passthrough-nocache:/plain/uncached" "cached:/cached" "compressed:/cached:gzip"; do
  IFS=: read -r scen path enc <<<"$s"
  wanted "$SCENARIOS" "$scen" || continue
  if wanted "$PROXIES" tollgate; then
    measure tollgate "$scen" "$path" "$enc" target/release/tollgate run -c "$WORK/tollgate.yaml"
  fi
  if wanted "$PROXIES" tollgate+ratelimit; then
    measure tollgate+ratelimit "$scen" "$path" "$enc" target/release/tollgate run -c "$WORK/tollgate-rl.yaml"
  fi
  if wanted "$PROXIES" tollgate+addresses; then
    measure tollgate+addresses "$scen" "$path" "$enc" target/release/tollgate run -c "$WORK/tollgate-addresses.yaml"
  fi
  if wanted "$PROXIES" tollgate+tracing; then
    measure tollgate+tracing "$scen" "$path" "$enc" target/release/tollgate run -c "$WORK/tollgate-tracing.yaml"
  fi
  if wanted "$PROXIES" bare-pingora && [ -z "$enc" ]; then
    measure bare-pingora "$scen" "$path" "" target/release/examples/bare_proxy "$PROXY" "$ORIGIN" "$WORK/doc.json"
  fi
done

echo
printf '%-20s %-20s %14s %12s\n' scenario proxy instr/request "vs bare"
for scen in passthrough passthrough-nocache cached compressed; do
  for name in tollgate tollgate+ratelimit tollgate+tracing tollgate+addresses bare-pingora; do
    v=${counts["$scen/$name"]:-}
    [ -n "$v" ] || continue
    b=${counts["$scen/bare-pingora"]:-}
    ratio=$([ -n "$b" ] && python3 -c "print(f'{$v/$b:.2f}x')" || echo -)
    printf '%-20s %-20s %14s %12s\n' "$scen" "$name" "$v" "$ratio"
  done
done
echo "callgrind files: $OUT (callgrind_annotate FILE | head -60)"
