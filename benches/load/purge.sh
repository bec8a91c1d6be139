#!/usr/bin/env bash
# Purge benchmark: what a large purge costs the cache hits running beside
# it, how long it takes, and what the Redis tier keeps. See
# benches/load/README.md.
#
#   benches/load/purge.sh [SIZES="100000 1000000"]
#
# Parts (PARTS, default all):
#   memory  for each size N: fill N entries sharing a tag and a route, then
#           run hits on 1,000 other keys at full load for HIT_SECONDS while
#           a purge of the tag (then, refilled, of the route) runs: the
#           hits' p50/p99/max before and during the purge, the purge's
#           duration, RSS before, filled and after.
#   redis   the same with the Redis tier (the purge also empties Redis):
#           adds Redis's used memory filled and after.
#   index   REDIS_WRITES (1,000,000) short-lived (max-age=1) writes on one
#           route through the Redis tier: the route's index size against
#           the live entries, and Redis's memory against theirs.
#   repeat  the memory part's tag purge sent PURGE_REPEAT (5) times,
#           PURGE_EVERY (2) seconds apart, while the first one's entries
#           are being freed: the hits beside it and the most unreclaimed
#           entries seen (never more than the entries that exist).
#   hits    cache-hit throughput with 1 and 2 worker threads, against
#           OLD_TOLLGATE (a binary of the store before, if given): ratio.
# tollgate (and the origin) on CPU 0, the load client and Redis on CPU 1;
# PROXY_CPUS=0,1 lets tollgate's purge thread run beside the load.
# Prints tables and writes target/bench/purge-results.json.
. "$(dirname "$0")/../load/setup.sh" # strict mode, the repository's root, the helpers
SIZES="${1:-100000 1000000}"
PARTS="${PARTS:-memory redis index hits}"
PURGE_REPEAT="${PURGE_REPEAT:-5}"
PURGE_EVERY="${PURGE_EVERY:-2}"
HIT_SECONDS="${HIT_SECONDS:-6}"
REDIS_WRITES="${REDIS_WRITES:-1000000}"
OLD_TOLLGATE="${OLD_TOLLGATE:-}"
PROXY_CPU="${PROXY_CPUS:-0}"  # "0,1" lets the purge thread use the load's core too
TOKEN=bench-admin-token
export BENCH_ADMIN_TOKEN=$TOKEN # the admin token the configs name

bench_setup purge "nginx wrk redis-server curl" purge_load
LOADER=target/release/examples/purge_load

bench_addresses 18280 PROXY ORIGIN ADMIN
REDIS_PORT=18286

echo '{"data":"a small document for the purge benchmark"}' > "$WORK/doc.json"
origin_locations "$WORK" "$ORIGIN" "$(cat <<LOC
    location /bulk/  { add_header Cache-Control "public, max-age=3600"; add_header Surrogate-Key "bulk item-\$uri"; try_files /doc.json =404; }
    location /hot/   { add_header Cache-Control "public, max-age=3600"; try_files /doc.json =404; }
    location /short/ { add_header Cache-Control "public, max-age=1"; try_files /doc.json =404; }
LOC
)" > "$WORK/origin.conf"

bench_nginx "$WORK/origin.conf"

redis_cli() { redis-cli -p "$REDIS_PORT" "$@"; }
start_redis() {
  bench_bg $LOAD_CPU "$WORK/redis.log" redis-server --port "$REDIS_PORT" --save "" --appendonly no
  redis_pid=$bench_last_pid
  for _ in $(seq 1 100); do redis_cli ping >/dev/null 2>&1 && return 0; sleep 0.05; done
  echo "redis-server did not start" >&2; exit 1
}
stop_redis() { kill "$redis_pid" 2>/dev/null || true; wait "$redis_pid" 2>/dev/null || true; redis_pid=""; }
redis_used() { redis_cli info memory | awk -F: '/^used_memory:/ { gsub("\r", "", $2); print $2 }'; }

config() { # threads with_redis
  tollgate_server_yaml "$PROXY" "$ADMIN" \
    | sed -e "s/threads: 1,/threads: $1,/" -e "s/{ listen: \"$ADMIN\" }/{ listen: \"$ADMIN\", token_env: BENCH_ADMIN_TOKEN }/"
  cat <<YAML
logging: { level: warn, access_log: false }
upstreams:
  origin: { backends: ["$ORIGIN"] }
YAML
  if [ "$2" = 1 ]; then
    echo "redis: { url: \"redis://127.0.0.1:$REDIS_PORT\" }"
    echo "cache: { max_size: 8GiB, redis: {} }"
  else
    echo "cache: { max_size: 8GiB }"
  fi
  cat <<YAML
routes:
  - { name: bulk, match: { path_prefix: /bulk/ }, upstream: origin, cache: {} }
  - { name: hot, match: { path_prefix: /hot/ }, upstream: origin, cache: {} }
  - { name: short, match: { path_prefix: /short/ }, upstream: origin, cache: {} }
YAML
}

load() { taskset -c $LOAD_CPU "$LOADER" "$@"; }
field() { python3 -c 'import json,sys; d=json.loads(sys.argv[1]); [d := d[k] for k in sys.argv[2:]]; print(d)' "$@"; }

declare -a json_parts rows

# One purge run: fill N entries (tag `bulk`, route `bulk`), hits on /hot/
# before and during a purge of PURGE_JSON. Adds a row and a JSON part.
purge_run() { # label with_redis n purge_json
  local label=$1 with_redis=$2 n=$3 purge_json=$4
  config 1 "$with_redis" > "$WORK/purge.yaml"
  [ "$with_redis" = 1 ] && start_redis
  tollgate_start "$WORK/purge.yaml"
  local idle used_before="-" used_filled="-" used_after="-"
  idle=$(rss_kib "$tollgate_pid")
  [ "$with_redis" = 1 ] && used_before=$(redis_used)
  load fill "$PROXY" /hot/ 1000 16 > /dev/null
  local fill_json
  fill_json=$(load fill "$PROXY" /bulk/ "$n" 32)
  if [ "$with_redis" = 1 ]; then
    # The writes are queued: wait until Redis holds them all.
    for _ in $(seq 1 600); do
      [ "$(metric 'tollgate_cache_l2_writes_total{result="ok"}')" -ge "$((n + 1000))" ] && break
      sleep 0.1 # poll until written
    done
    used_filled=$(redis_used)
  fi
  local filled entries
  filled=$(rss_kib "$tollgate_pid")
  entries=$(metric tollgate_cache_entries)
  local result
  result=$(load hits "$PROXY" /hot/ 1000 16 "$HIT_SECONDS" "$ADMIN" "$TOKEN" "$purge_json" 2)
  local after
  after=$(rss_kib "$tollgate_pid")
  [ "$with_redis" = 1 ] && used_after=$(redis_used)
  tollgate_stop
  [ "$with_redis" = 1 ] && stop_redis
  echo "$label n=$n: $result" >&2
  [ "$label" = repeat-tag ] && echo "repeat-tag n=$n: $PURGE_REPEAT purges ${PURGE_EVERY}s apart; most unreclaimed $(field "$result" unreclaimed_max) of $entries entries" >&2
  local b99 bmax d99 dmax dn ms purged r99 rmax rms
  b99=$(field "$result" before_purge p99_ms); bmax=$(field "$result" before_purge max_ms)
  d99=$(field "$result" during_purge p99_ms); dmax=$(field "$result" during_purge max_ms)
  dn=$(field "$result" during_purge requests); ms=$(field "$result" purge_ms)
  purged=$(field "$result" purge_answer purged)
  rms=$(field "$result" reclaim_ms)
  r99=$(field "$result" during_reclaim p99_ms 2>/dev/null || echo 0)
  rmax=$(field "$result" during_reclaim max_ms 2>/dev/null || echo 0)
  rows+=("$label $n $entries $purged $ms $b99 $d99 $bmax $dmax $dn $rms $r99 $rmax $idle $filled $after $used_filled $used_after")
  json_parts+=("\"${label}_$n\": {\"fill\": $fill_json, \"entries\": $entries, \"hits\": $result, \"rss_idle_kib\": $idle, \"rss_filled_kib\": $filled, \"rss_after_kib\": $after, \"redis_used_before\": \"$used_before\", \"redis_used_filled\": \"$used_filled\", \"redis_used_after\": \"$used_after\"}")
}

if [[ " $PARTS " == *" repeat "* ]]; then
  for n in $SIZES; do
    PURGE_REPEAT=$PURGE_REPEAT PURGE_EVERY=$PURGE_EVERY purge_run "repeat-tag" 0 "$n" '{"tag": "bulk"}'
  done
fi
for part in memory redis; do
  [[ " $PARTS " == *" $part "* ]] || continue
  with_redis=0; [ "$part" = redis ] && with_redis=1
  for n in $SIZES; do
    purge_run "$part-tag" $with_redis "$n" '{"tag": "bulk"}'
    purge_run "$part-route" $with_redis "$n" '{"route": "bulk"}'
  done
done

index_row=""
if [[ " $PARTS " == *" index "* ]]; then
  echo "== index: $REDIS_WRITES short-lived writes on one route" >&2
  start_redis
  config 1 1 > "$WORK/index.yaml"
  tollgate_start "$WORK/index.yaml"
  empty=$(redis_used)
  load fill "$PROXY" /short/ "$REDIS_WRITES" 32 > /dev/null &
  filler=$!
  # While the writes run: the route's index against the live entries.
  samples=()
  entry_bytes=0
  while kill -0 "$filler" 2>/dev/null; do
    sleep 2 # sample every 2 s while the writes run
    samples+=("$(redis_cli --scan --pattern 'tollgate:cache:c:*' | wc -l)/$(redis_cli zcard tollgate:cache:i:r:short)/$(( $(redis_used) - empty ))")
    one=$(redis_cli --scan --pattern 'tollgate:cache:c:*' | head -1 || true)
    [ -n "$one" ] && entry_bytes=$(redis_cli memory usage "$one")
  done
  wait "$filler" || true
  for _ in $(seq 1 600); do
    q=$(curl -fsS "http://$ADMIN/metrics" | awk '$1 ~ /^tollgate_cache_l2_writes_total/ { s += $2 } END { printf "%d", s }')
    [ "$q" -ge "$REDIS_WRITES" ] && break
    sleep 0.1 # poll until the queue drained
  done
  used=$(redis_used)
  live=$(redis_cli --scan --pattern 'tollgate:cache:c:*' | wc -l)
  members=$(redis_cli zcard tollgate:cache:i:r:short)
  tollgate_stop
  stop_redis
  live_bytes=$((live * entry_bytes))
  index_row="$REDIS_WRITES $live $members $entry_bytes $((used - empty)) $live_bytes"
  sampled=$(printf '"%s",' ${samples[@]+"${samples[@]}"})
  json_parts+=("\"index\": {\"writes\": $REDIS_WRITES, \"during_live_members_growth\": [${sampled%,}], \"after_live_entries\": $live, \"after_route_index_members\": $members, \"entry_bytes\": $entry_bytes, \"after_redis_used_growth\": $((used - empty)), \"after_live_entries_bytes\": $live_bytes}")
fi

hit_rows=()
if [[ " $PARTS " == *" hits "* ]]; then
  echo "== hits: 1 and 2 worker threads${OLD_TOLLGATE:+, against $OLD_TOLLGATE}" >&2
  for threads in 1 2; do
    config "$threads" 0 > "$WORK/hits.yaml"
    cpus=0; [ "$threads" = 2 ] && cpus=0,1
    for bin in target/release/tollgate $OLD_TOLLGATE; do
      tollgate_start "$WORK/hits.yaml" "$bin" "$cpus"
      load fill "$PROXY" /hot/ 1000 16 > /dev/null
      taskset -c $LOAD_CPU wrk -t1 -c64 -d10s "http://$PROXY/hot/1" > "$WORK/wrk.out"
      rps=$(wrk_rps < "$WORK/wrk.out")
      tollgate_stop
      hit_rows+=("$threads $bin $rps")
      json_parts+=("\"hits_${threads}_$(basename "$(dirname "$(dirname "$bin")")")\": {\"binary\": \"$bin\", \"threads\": $threads, \"rps\": $rps}")
    done
  done
fi

echo
printf '%-13s %8s %8s %8s %9s %22s %22s %7s %10s %22s %26s %24s\n' run entries held purged "purge ms" "hit p99 before/during" "hit max before/during" "during" "reclaim ms" "reclaiming p99/max" "RSS KiB idle/filled/after" "Redis B filled/after"
for r in ${rows[@]+"${rows[@]}"}; do
  read -r label n entries purged ms b99 d99 bmax dmax dn rms r99 rmax idle filled after uf ua <<<"$r"
  printf '%-13s %8s %8s %8s %9.0f %10.2f / %-9.2f %10.2f / %-9.2f %7s %10.0f %10.2f / %-9.2f %26s %24s\n' "$label" "$n" "$entries" "$purged" "$ms" "$b99" "$d99" "$bmax" "$dmax" "$dn" "$rms" "$r99" "$rmax" "$idle/$filled/$after" "$uf/$ua"
done
if [ -n "$index_row" ]; then
  read -r writes live members entry_bytes growth live_bytes <<<"$index_row"
  echo
  echo "index: $writes short-lived writes (max-age=1) on one route"
  echo "  while writing, every 2 s (live entries / route index members / Redis memory growth B; an entry is $entry_bytes B):"
  printf '    %s\n' ${samples[@]+"${samples[@]}"}
  echo "  after: $live live entries, route index holds $members members; Redis memory $growth B above empty"
fi
if [ ${#hit_rows[@]} -gt 0 ]; then
  echo
  echo "cache hits (wrk -c64, /hot/1):"
  for r in "${hit_rows[@]}"; do read -r threads bin rps <<<"$r"; printf '  %s thread(s) %-40s %10s req/s\n' "$threads" "$bin" "$rps"; done
fi
printf '{%s}\n' "$(IFS=,; echo "${json_parts[*]}")" | python3 -m json.tool > "$OUT/purge-results.json"
echo "written: $OUT/purge-results.json"
