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
. "$(dirname "$0")/../load/setup.sh" # strict mode, the repository's root, the helpers
BASE="${1:-c08892c~1}"
DURATION="${2:-5}"
ROUNDS="${3:-3}"
SCENARIO="${SCENARIO:-hits}"
bench_setup store "nginx wrk"
compare_builds "$BASE" "${TODAY_DIR:-.}"

bench_addresses 18580 PROXY ORIGIN ADMIN
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
  tollgate_server_yaml "$PROXY" "$ADMIN" | sed -e "s/threads: 1,/threads: $1,/"
  cat <<YAML
logging: { access_log: false }
YAML
  origin_routes_yaml "api / cache"
}
bench_nginx "$WORK/origin.conf"

# measure WHICH THREADS: req/s of cached hits.
measure() {
  config "$2" > "$WORK/tollgate.yaml"
  local cpus=0 wrk_cpus=1 wrk_threads=1
  if [ "$2" = 2 ]; then cpus=0,1; wrk_cpus=0,1; wrk_threads=2; fi
  tollgate_start "$WORK/tollgate.yaml" "${BIN[$1]}" "$cpus"
  curl -fsS -o /dev/null "http://$PROXY/cached"
  curl -fsS -D - -o /dev/null "http://$PROXY/cached" | grep -qi "cache-status:.*hit" \
    || { echo "$1: no cache hit" >&2; exit 1; }
  local script=()
  [ "$SCENARIO" = fills ] && script=(-s "$WORK/unique.lua")
  taskset -c "$wrk_cpus" wrk -t"$wrk_threads" -c64 -d"${DURATION}s" "${script[@]}" "http://$PROXY/cached" \
    | wrk_rps
  tollgate_stop
}
declare -A r
for round in $(seq 1 "$ROUNDS"); do
  for threads in 1 2; do
    for which in base today; do
      r["$which/$threads/$round"]=$(measure "$which" "$threads")
    done
  done
done
for threads in 1 2; do
  for which in base today; do
    m=$(for round in $(seq 1 "$ROUNDS"); do echo "${r[$which/$threads/$round]}"; done | median)
    eval "med_${which}_$threads=$m"
    echo "$which ($BASE for base), $threads worker thread(s): $m $SCENARIO/s"
  done
  echo "today / base, $threads worker thread(s): $(echo "scale=3; $(eval echo "\$med_today_$threads") / $(eval echo "\$med_base_$threads")" | bc)x"
done
