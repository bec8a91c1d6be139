#!/usr/bin/env bash
# The router at size: the same cached hit and pass-through through three
# tollgates whose files hold 1, 10,000 and 100,000 routes (half host
# routes, half prefix routes, the measured route among them), side by
# side in one run; `tollgate check` time, reload time (`POST
# /config/reload`: parse, validate, build, swap) and resident memory per
# file, and from those the memory one route costs.
#
#   benches/load/routes.sh [DURATION_SECONDS=5] [ROUNDS=3]
#
# Proxies and the origin on CPU 0, wrk on CPU 1; rounds alternate.
. "$(dirname "$0")/../load/setup.sh" # strict mode, the repository's root, the helpers
DURATION="${1:-5}"
ROUNDS="${2:-3}"
bench_setup routes "nginx wrk"

ORIGIN=127.0.0.1:18381
bench_document "$WORK/doc.json"
origin_conf "$WORK" "$ORIGIN" > "$WORK/origin.conf"

config() { # routes listen admin
  python3 - "$1" "$2" "$3" "$ORIGIN" "$WORK" <<'PY'
import sys
n, listen, admin, origin, work = int(sys.argv[1]), *sys.argv[2:]
out = [f'listen: ["{listen}"]', f'admin: {{ listen: "{admin}", token_env: TG_BENCH_TOKEN }}',
       f'server: {{ threads: 1, work_stealing: false, pid_file: {work}/{listen}.pid, upgrade_sock: {work}/{listen}.sock }}',
       'logging: { access_log: false }',
       f'upstreams: {{ origin: {{ backends: ["{origin}"] }} }}', 'routes:']
extra = n - 2
for i in range(extra):
    if i % 2:
        out.append(f'  - {{ name: h{i}, upstream: origin, match: {{ host: "h{i}.example.com" }} }}')
    else:
        out.append(f'  - {{ name: p{i}, upstream: origin, match: {{ path_prefix: /svc-{i}/ }} }}')
out.append('  - { name: plain, upstream: origin, match: { path_prefix: /plain/ } }')
out.append('  - { name: api, upstream: origin, cache: {} }')
print("\n".join(out))
PY
}
export TG_BENCH_TOKEN=bench-token
declare -A rss
bench_nginx "$WORK/origin.conf"
declare -A addr pid
port=18380
for n in 2 10000 100000; do
  port=$((port + 10))
  config "$n" "127.0.0.1:$port" "127.0.0.1:$((port + 1))" > "$WORK/r$n.yaml"
  start=$(date +%s.%N)
  target/release/tollgate check "$WORK/r$n.yaml" > /dev/null
  echo "check, $n routes: $(echo "$(date +%s.%N) - $start" | bc) s" >&2
  bench_bg $PROXY_CPU "$WORK/r$n.log" target/release/tollgate run -c "$WORK/r$n.yaml"
  pid[$n]=$bench_last_pid
  addr[$n]="127.0.0.1:$port"
  wait_answers "${addr[$n]}"
  curl -fsS -o /dev/null "http://${addr[$n]}/cached"
  start=$(date +%s.%N)
  curl -fsS -o /dev/null -X POST -H "Authorization: Bearer $TG_BENCH_TOKEN" -H "Content-Type: application/json" --data "{}" "http://127.0.0.1:$((port + 1))/config/reload"
  echo "reload, $n routes: $(echo "$(date +%s.%N) - $start" | bc) s" >&2
  rss[$n]=$(rss_kib "${pid[$n]}")
  echo "resident memory, $n routes: ${rss[$n]} KiB" >&2
done
echo "memory per route (100,000 routes vs 2): $(echo "scale=0; (${rss[100000]} - ${rss[2]}) * 1024 / 99998" | bc) bytes" >&2
rps() { taskset -c $LOAD_CPU wrk -t1 -c64 -d"${DURATION}s" "http://$1$2" | wrk_rps; }
declare -A r
for round in $(seq 1 "$ROUNDS"); do
  for n in 2 10000 100000; do
    for s in cached:/cached passthrough:/plain/uncached; do
      r["$n/${s%%:*}/$round"]=$(rps "${addr[$n]}" "${s#*:}")
    done
  done
done
for s in cached passthrough; do
  for n in 2 10000 100000; do
    m=$(for round in $(seq 1 "$ROUNDS"); do echo "${r[$n/$s/$round]}"; done | median)
    eval "med_${s}_$n=$m"
    echo "$s, $n routes: $m req/s"
  done
  b=$(eval echo "\$med_${s}_2")
  for n in 10000 100000; do
    echo "$s: $n routes / 1 route = $(echo "scale=3; $(eval echo "\$med_${s}_$n") / $b" | bc)x"
  done
done
