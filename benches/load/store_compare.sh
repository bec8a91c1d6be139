#!/usr/bin/env bash
# Cache hits with today's store against an earlier commit's, side by side
# in one run: with 1 worker thread (tollgate on CPU 0, wrk on CPU 1) and
# with 2 worker threads on both cores (wrk sharing them), so the sharded
# store shows what it costs single-threaded and what it gives with two.
#
#   benches/load/store_compare.sh [BASE=c08892c~1] [DURATION_SECONDS=5] [ROUNDS=3]
#
# SCENARIO=fills makes every request a miss that is stored (a unique query
# on a cacheable URL: the store's fill path, its purge log and indexes)
# instead of a hit.
#
# BASE defaults to the commit before the sharded store (issue 26). It is
# built in a git worktree under /tmp (kept between runs, with its target
# directory, so a second run does not rebuild it). TODAY_DIR=<checkout>
# measures that checkout's release build instead of this one (e.g. the
# commit that finished the store, to leave later work out). Rounds
# alternate.
set -euo pipefail
cd "$(dirname "$0")/../.."
. benches/load/setup.sh
BASE="${1:-c08892c~1}"
DURATION="${2:-5}"
ROUNDS="${3:-3}"
SCENARIO="${SCENARIO:-hits}"
scripts/install-deps build-essential cmake pkg-config libssl-dev nginx wrk
cargo build --release --locked --bin tollgate >&2
BASE_BIN=$(base_binary "$BASE")
declare -A BIN=([today]="${TODAY_DIR:-.}/target/release/tollgate" [base]="$BASE_BIN")

WORK="$(mktemp -d /tmp/tollgate-store.XXXXXX)"
chmod 755 "$WORK"
ORIGIN=127.0.0.1:18581
PROXY=127.0.0.1:18580
ADMIN=127.0.0.1:18582
bench_document "$WORK/doc.json"
cat > "$WORK/unique.lua" <<'LUA'
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, "/cached?n=" .. n .. "-" .. math.random(1000000000))
end
LUA
origin_conf "$WORK" "$ORIGIN" > "$WORK/origin.conf"
config() { # threads
  cat <<YAML
listen: ["$PROXY"]
admin: { listen: "$ADMIN" }
server: { threads: $1, work_stealing: false, pid_file: $WORK/tollgate.pid, upgrade_sock: $WORK/upgrade.sock }
logging: { access_log: false }
upstreams:
  origin: { backends: ["$ORIGIN"] }
routes:
  - { name: api, upstream: origin, cache: {} }
YAML
}
proxy_pid=""
cleanup() {
  nginx -c "$WORK/origin.conf" -s stop 2>/dev/null || true
  [ -n "$proxy_pid" ] && kill "$proxy_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
nginx -c "$WORK/origin.conf"

# measure WHICH THREADS: req/s of cached hits.
measure() {
  config "$2" > "$WORK/tollgate.yaml"
  local cpus=0 wrk_cpus=1 wrk_threads=1
  if [ "$2" = 2 ]; then cpus=0,1; wrk_cpus=0,1; wrk_threads=2; fi
  taskset -c "$cpus" "${BIN[$1]}" run -c "$WORK/tollgate.yaml" > "$WORK/$1.log" 2>&1 &
  proxy_pid=$!
  for _ in $(seq 1 300); do curl -fsS -o /dev/null "http://$ADMIN/ready" 2>/dev/null && break; sleep 0.1; done
  curl -fsS -o /dev/null "http://$PROXY/cached"
  curl -fsS -D - -o /dev/null "http://$PROXY/cached" | grep -qi "cache-status:.*hit" \
    || { echo "$1: no cache hit" >&2; exit 1; }
  local script=()
  [ "$SCENARIO" = fills ] && script=(-s "$WORK/unique.lua")
  taskset -c "$wrk_cpus" wrk -t"$wrk_threads" -c64 -d"${DURATION}s" "${script[@]}" "http://$PROXY/cached" \
    | awk '/^Requests\/sec:/ { print $2 }'
  kill "$proxy_pid"; wait "$proxy_pid" 2>/dev/null || true; proxy_pid=""
}
declare -A r
for round in $(seq 1 "$ROUNDS"); do
  for threads in 1 2; do
    for which in base today; do
      r["$which/$threads/$round"]=$(measure "$which" "$threads")
    done
  done
done
median() { sort -n | sed -n "$(( (ROUNDS + 1) / 2 ))p"; }
for threads in 1 2; do
  for which in base today; do
    m=$(for round in $(seq 1 "$ROUNDS"); do echo "${r[$which/$threads/$round]}"; done | median)
    eval "med_${which}_$threads=$m"
    echo "$which ($BASE for base), $threads worker thread(s): $m $SCENARIO/s"
  done
  echo "today / base, $threads worker thread(s): $(echo "scale=3; $(eval echo "\$med_today_$threads") / $(eval echo "\$med_base_$threads")" | bc)x"
done
