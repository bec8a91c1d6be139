#!/usr/bin/env bash
# Memory check: how tollgate's resident memory (RSS) follows the cache, the
# number of routes and the number of tenants. See benches/load/README.md.
#
#   benches/load/memory.sh [FILL_SECONDS]
#
# 1. cache: fills a cache of CACHE_MAX (64 MiB) with distinct 1 KB and
#    16 KB responses, and 1 KB ones with 4 cache tags (one per entry,
#    three shared), well past its size; reports RSS before and after, the
#    bytes the cache weighs, and RSS above (idle RSS + cache.max_size).
# 2. routes: 1, 10, 100, 1000 routes; RSS after a request to every route.
# 3. tenants: 10 ... 100,000 tenants in the config; RSS idle and after
#    requests cycling through every tenant's key (one bucket each).
# 4. anonymous: ANON_KEYS (1,000,000) distinct client addresses (through a
#    trusted X-Forwarded-For), then twice as many: RSS idle, after 1M and
#    after 2M distinct keys with rate_limit.max_local_buckets at 1M — the
#    second number must not grow past the first by more than noise.
# Prints tables and writes target/bench/memory-results.json. Exits non-zero
# if the filled cache leaves RSS above idle + max_size + the documented
# overhead (MAX_OVERHEAD_PCT of max_size).
. "$(dirname "$0")/../load/setup.sh" # strict mode, the repository's root, the helpers
FILL_SECONDS="${1:-15}"
CACHE_MAX_MIB="${CACHE_MAX_MIB:-64}"
PARTS="${PARTS:-cache routes tenants anonymous}" # which of the checks to run
ANON_KEYS="${ANON_KEYS:-1000000}"
MAX_OVERHEAD_PCT="${MAX_OVERHEAD_PCT:-25}"

bench_setup mem "nginx wrk curl"

bench_addresses 18180 PROXY ORIGIN ADMIN

python3 - "$WORK" <<'PY'
import sys
work = sys.argv[1]
for name, size in (("small.json", 1024), ("large.json", 16384)):
    body = '{"data":"' + "x" * (size - 11) + '"}'
    open(f"{work}/{name}", "w").write(body)
PY

origin_locations "$WORK" "$ORIGIN" "$(cat <<LOC
    location /small/ { add_header Cache-Control "public, max-age=3600"; try_files /small.json =404; }
    location /large/ { add_header Cache-Control "public, max-age=3600"; try_files /large.json =404; }
    location /tagged/ { add_header Cache-Control "public, max-age=3600"; add_header Surrogate-Key "item-\$uri catalogue en-gb v2"; try_files /small.json =404; }
    location /       { add_header Cache-Control "no-store"; try_files /small.json =404; }
LOC
)" > "$WORK/origin.conf"

bench_nginx "$WORK/origin.conf"

# Writes the common head of a config: listeners, one worker, the origin.
config_head() {
  tollgate_server_yaml "$PROXY" "$ADMIN"
  cat <<YAML
logging: { level: warn, access_log: false }
upstreams:
  origin: { backends: ["$ORIGIN"] }
cache: { max_size: ${CACHE_MAX_MIB}MiB }
YAML
}

# wrk script: every request a new path under $PREFIX, or a new API key.
cat > "$WORK/distinct.lua" <<'LUA'
local n = 0
local prefix = os.getenv("PREFIX") or "/small/"
local keys = tonumber(os.getenv("KEYS") or "0")
local anon = os.getenv("ANON") == "1"
local base = tonumber(os.getenv("BASE") or "0")
request = function()
  n = n + 1
  if anon then
    local k = base + n
    local ip = string.format("10.%d.%d.%d", math.floor(k / 65536) % 256, math.floor(k / 256) % 256, k % 256)
    return wrk.format("GET", "/small/anon", { ["X-Forwarded-For"] = ip })
  end
  if keys > 0 then
    return wrk.format("GET", "/", { ["X-API-Key"] = "key-" .. (n % keys) })
  end
  return wrk.format("GET", prefix .. n)
end
LUA

load() { # seconds [env...]
  local secs=$1; shift
  env "$@" taskset -c $LOAD_CPU wrk -t1 -c16 -d"${secs}s" -s "$WORK/distinct.lua" "http://$PROXY" > "$WORK/wrk.out"
  wrk_rps < "$WORK/wrk.out" >&2
}

declare -a json_parts

# 1. cache fill
cache_rows=()
cache_ok=1
route_rows=()
tenant_rows=()
part_cache() {
echo "   max_size ${CACHE_MAX_MIB} MiB, filled for ${FILL_SECONDS}s per body size" >&2
{ config_head; cat <<YAML
routes:
  - { name: api, match: { path_prefix: / }, upstream: origin, cache: {} }
YAML
} > "$WORK/cache.yaml"
for size in small large tagged; do
  tollgate_start "$WORK/cache.yaml"
  curl -fsS -o /dev/null "http://$PROXY/$size/warm"
  idle=$(rss_kib "$tollgate_pid")
  load "$FILL_SECONDS" PREFIX="/$size/"
  filled=$(rss_kib "$tollgate_pid")
  bytes=$(metric tollgate_cache_size_bytes)
  entries=$(metric tollgate_cache_entries)
  evictions=$(metric tollgate_cache_evictions_total)
  tollgate_stop
  max_kib=$((CACHE_MAX_MIB * 1024))
  over_kib=$((filled - idle - max_kib))
  limit_kib=$((max_kib * MAX_OVERHEAD_PCT / 100))
  per_entry=$(( entries > 0 ? (filled - idle) * 1024 / entries : 0 ))
  if [ "$over_kib" -gt "$limit_kib" ]; then cache_ok=0; fi
  cache_rows+=("$size $idle $filled $bytes $entries $evictions $over_kib $per_entry")
  json_parts+=("\"cache_$size\": {\"rss_idle_kib\": $idle, \"rss_filled_kib\": $filled, \"cache_bytes\": $bytes, \"entries\": $entries, \"evictions\": $evictions, \"rss_over_idle_plus_max_kib\": $over_kib, \"rss_per_entry_bytes\": $per_entry}")
done
}

# 2. routes
part_routes() {
for n in 1 10 100 1000; do
  { config_head; echo "routes:"
    for i in $(seq 1 "$n"); do
      echo "  - { name: r$i, match: { path_prefix: /r$i/ }, upstream: origin, cache: {} }"
    done
  } > "$WORK/routes.yaml"
  tollgate_start "$WORK/routes.yaml"
  for i in $(seq 1 "$n"); do echo "url = \"http://$PROXY/r$i/x\""; echo "output = /dev/null"; done > "$WORK/curl.cfg"
  curl -fsS --no-progress-meter --parallel --parallel-max 16 -K "$WORK/curl.cfg"
  rss=$(rss_kib "$tollgate_pid")
  tollgate_stop
  route_rows+=("$n $rss")
  json_parts+=("\"routes_$n\": {\"rss_kib\": $rss}")
done
}

# 3. tenants
part_tenants() {
for n in 10 1000 10000 100000; do
  { config_head; cat <<YAML
routes:
  - { name: api, match: { path_prefix: / }, upstream: origin }
rate_limit: { api_key_headers: [x-api-key] }
tiers:
  standard: { per_minute: 100000000, per_hour: 1000000000 }
anonymous: { reject: true }
tenants:
YAML
    python3 - "$n" <<'PY'
import hashlib, sys
for i in range(int(sys.argv[1])):
    h = hashlib.sha256(f"key-{i}".encode()).hexdigest()
    print(f'  t{i}: {{ tier: standard, api_keys: ["sha256:{h}"] }}')
PY
  } > "$WORK/tenants.yaml"
  tollgate_start "$WORK/tenants.yaml"
  idle=$(rss_kib "$tollgate_pid")
  # Long enough for every tenant to be seen at least once at the rates here.
  load $(( n >= 100000 ? 10 : 3 )) KEYS="$n"
  active=$(rss_kib "$tollgate_pid")
  tollgate_stop
  tenant_rows+=("$n $idle $active")
  json_parts+=("\"tenants_$n\": {\"rss_idle_kib\": $idle, \"rss_after_traffic_kib\": $active}")
done
}

# 4. anonymous keys
anon_rows=()
part_anonymous() {
echo "   $ANON_KEYS distinct client addresses, then twice as many" >&2
{ config_head | sed 's/^server: { /server: { trusted_proxies: [127.0.0.1], /'; cat <<YAML
routes:
  - { name: api, match: { path_prefix: / }, upstream: origin, cache: {} }
tiers:
  free: { per_hour: 10 }         # a bucket outlives the run: one request spends a tenth of the hour
anonymous: { tier: free }
rate_limit: { max_local_buckets: $ANON_KEYS }
YAML
} > "$WORK/anon.yaml"
tollgate_start "$WORK/anon.yaml"
curl -fsS -o /dev/null "http://$PROXY/small/anon"
idle=$(rss_kib "$tollgate_pid")
# wrk's threads each count from 1: one thread, and enough time for ANON_KEYS
# requests; BASE moves the second round past the first round's addresses.
anon_load() { # base
  local sent=0
  while [ "$sent" -lt "$ANON_KEYS" ]; do
    env ANON=1 BASE=$(( $1 + sent )) taskset -c $LOAD_CPU wrk -t1 -c16 -d10s -s "$WORK/distinct.lua" "http://$PROXY" > "$WORK/wrk.out"
    sent=$(( sent + $(awk '/requests in/ { print $1 }' "$WORK/wrk.out") ))
  done
  echo "$sent"
}
first=$(anon_load 0)
one=$(rss_kib "$tollgate_pid")
buckets_one=$(metric tollgate_ratelimit_buckets)
second=$(anon_load "$first")
two=$(rss_kib "$tollgate_pid")
evicted=$(metric tollgate_ratelimit_buckets_evicted_total)
tollgate_stop
anon_rows+=("$idle $first $one $buckets_one $second $two $evicted")
json_parts+=("\"anonymous\": {\"rss_idle_kib\": $idle, \"keys_first\": $first, \"rss_after_first_kib\": $one, \"keys_second\": $second, \"rss_after_second_kib\": $two, \"buckets_evicted\": $evicted}")
}

for part in $PARTS; do
  echo "== $part" >&2
  "part_$part"
done

echo
echo "cache (max_size ${CACHE_MAX_MIB} MiB = $((CACHE_MAX_MIB * 1024)) KiB; allowed overhead ${MAX_OVERHEAD_PCT}% of max_size)"
printf '%-6s %10s %11s %12s %9s %10s %16s %12s\n' body "idle KiB" "filled KiB" "cache bytes" entries evictions "over idle+max KiB" "RSS B/entry"
for r in ${cache_rows[@]+"${cache_rows[@]}"}; do
  read -r size idle filled bytes entries evictions over per <<<"$r"
  printf '%-6s %10s %11s %12s %9s %10s %16s %12s\n' "$size" "$idle" "$filled" "$bytes" "$entries" "$evictions" "$over" "$per"
done
echo
echo "routes (RSS after one request per route)"
for r in ${route_rows[@]+"${route_rows[@]}"}; do read -r n rss <<<"$r"; printf '%6s routes  %8s KiB\n' "$n" "$rss"; done
echo
echo "tenants (RSS idle, and after traffic from every tenant)"
for r in ${tenant_rows[@]+"${tenant_rows[@]}"}; do read -r n idle active <<<"$r"; printf '%7s tenants  %8s KiB idle  %8s KiB active\n' "$n" "$idle" "$active"; done

echo
echo "anonymous keys (max_local_buckets = $ANON_KEYS)"
for r in ${anon_rows[@]+"${anon_rows[@]}"}; do
  read -r idle first one buckets second two evicted <<<"$r"
  printf 'idle %s KiB; after %s distinct keys %s KiB (%s buckets); after %s more %s KiB (%s evicted)\n' \
    "$idle" "$first" "$one" "$buckets" "$second" "$two" "$evicted"
done

printf '{"cache_max_size_mib": %s, "max_overhead_pct": %s, %s}\n' "$CACHE_MAX_MIB" "$MAX_OVERHEAD_PCT" \
  "$(IFS=,; echo "${json_parts[*]}")" | python3 -m json.tool > "$OUT/memory-results.json"
echo "written: $OUT/memory-results.json"
if [ "$cache_ok" -ne 1 ]; then
  echo "FAIL: RSS with a full cache exceeds idle + max_size + ${MAX_OVERHEAD_PCT}%" >&2
  exit 1
fi
