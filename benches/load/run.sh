#!/usr/bin/env bash
# Side-by-side load benchmark: tollgate vs nginx vs a bare Pingora proxy, in
# one run, on this machine. See benches/load/README.md.
#
#   benches/load/run.sh [DURATION_SECONDS] [ROUNDS]
#
# Proxies and the origin are pinned to CPU 0, wrk to CPU 1. Rounds
# alternate between the proxies so drift on a shared machine hits all of
# them alike. Prints requests/s and p50/p99 per scenario and the ratios,
# and writes target/bench/load-results.json.
. "$(dirname "$0")/../load/setup.sh" # strict mode, the repository's root, the helpers
DURATION="${1:-10}"
ROUNDS="${2:-3}"
CONNS=64

bench_setup bench "nginx haproxy wrk redis-server" bare_proxy

# TOLLGATE_RL: + rate limiting, local buckets
# TOLLGATE_REDIS: + rate limiting through Redis
# TOLLGATE_NOLOG: the same tollgate with the access log off
# TOLLGATE_L2: memory too small to keep anything: every hit from Redis
bench_addresses 18080 TOLLGATE ORIGIN NGINX BARE TOLLGATE_RL TOLLGATE_REDIS TOLLGATE_NOLOG TOLLGATE_L2 HAPROXY TOLLGATE_ADMIN TOLLGATE_RL_ADMIN TOLLGATE_REDIS_ADMIN TOLLGATE_NOLOG_ADMIN TOLLGATE_L2_ADMIN
REDIS_PORT=18099 # outside the addresses above
BENCH_KEY=bench-key

bench_document "$WORK/doc.json"

origin_conf "$WORK" "$ORIGIN" > "$WORK/origin.conf"

peer_configs "$WORK" "$ORIGIN" "$NGINX" "$HAPROXY"

tollgate_config() { # listen admin: the base config, its files under $WORK named by the port
  tollgate_server_yaml "$1" "$2"
  cat <<YAML
logging: { level: info, access_log: true, access_log_path: $WORK/tollgate-access-${1##*:}.log, slow_request_threshold: 10s }
compression: { min_size: 1000, gzip_level: 6, brotli_quality: 4 }
YAML
  origin_routes_yaml # plain: pass-through without pingora-cache; api: cached
}
tollgate_config "$TOLLGATE" "$TOLLGATE_ADMIN" > "$WORK/tollgate.yaml"
tollgate_config "$TOLLGATE_NOLOG" "$TOLLGATE_NOLOG_ADMIN" | sed -e "s/access_log: true/access_log: false/" > "$WORK/tollgate-nolog.yaml"
# The same tollgate with rate limiting on: a tenant with a budget far above
# what the load can reach, so every request is decided and none refused.
KEY_HASH=$(target/release/tollgate hash-key "$BENCH_KEY")
rl_config() { # listen admin [redis-url]
  tollgate_config "$1" "$2"
  bench_rate_limits "$KEY_HASH"
  if [ -n "${3:-}" ]; then echo "redis: { url: \"$3\", timeout: 50ms }"; fi
}
rl_config "$TOLLGATE_RL" "$TOLLGATE_RL_ADMIN" > "$WORK/tollgate-rl.yaml"
# The Redis tier on its own: a memory tier that cannot hold a 1 KiB entry
# (each is evicted as it is promoted), so every hit is a Redis lookup.
{ tollgate_config "$TOLLGATE_L2" "$TOLLGATE_L2_ADMIN"
  echo "redis: { url: \"redis://127.0.0.1:$REDIS_PORT\", timeout: 50ms }"
  echo "cache: { max_size: 3KiB, max_object_size: 2KiB, redis: { lookup_timeout: 50ms } }"
} > "$WORK/tollgate-l2.yaml"
rl_config "$TOLLGATE_REDIS" "$TOLLGATE_REDIS_ADMIN" "redis://127.0.0.1:$REDIS_PORT" > "$WORK/tollgate-redis.yaml"

bench_nginx "$WORK/origin.conf"
bench_nginx "$WORK/nginx-proxy.conf"
bench_bg $PROXY_CPU "$WORK/haproxy.log" haproxy -db -f "$WORK/haproxy.cfg"
bench_bg $PROXY_CPU "$WORK/bare.log" target/release/examples/bare_proxy "$BARE" "$ORIGIN" "$WORK/doc.json"
# Redis on the load generator's core: it is another machine's work in a
# deployment, and must not take the proxy's core.
bench_bg $LOAD_CPU "$WORK/redis.log" redis-server --port $REDIS_PORT --bind 127.0.0.1 --save "" --appendonly no
for variant in "" -rl -redis -nolog -l2; do
  bench_bg $PROXY_CPU "$WORK/tollgate$variant.log" target/release/tollgate run -c "$WORK/tollgate$variant.yaml"
done

wait_answers $ORIGIN $NGINX $HAPROXY $TOLLGATE $BARE $TOLLGATE_RL $TOLLGATE_REDIS $TOLLGATE_NOLOG $TOLLGATE_L2
for _ in $(seq 1 200); do
  curl -fsS "http://$TOLLGATE_REDIS_ADMIN/health" | grep -q '"redis":{[^}]*"status":"ok"' && break
  sleep 0.05 # poll until tollgate is connected to Redis
done

for addr in $NGINX $TOLLGATE; do # the compressed scenario must really be compressed
  curl -fsS -o /dev/null -D - -H "Accept-Encoding: gzip" -H "Authorization: Bearer $BENCH_KEY" "http://$addr/cached" \
    | grep -qi '^content-encoding: gzip' || { echo "$addr does not gzip /cached" >&2; exit 1; }
done

# HAProxy's hits must really come from its cache (its log names <CACHE>).
curl -fsS -o /dev/null "http://$HAPROXY/cached"; curl -fsS -o /dev/null "http://$HAPROXY/cached"
for _ in $(seq 1 100); do grep -q 'origin/<CACHE>' "$WORK/haproxy.log" && break; sleep 0.05; done # poll: the log line follows the answer
grep -q 'origin/<CACHE>' "$WORK/haproxy.log" || { echo "$HAPROXY does not serve /cached from its cache" >&2; exit 1; }

# The Redis-tier scenario must really be served from Redis.
curl -fsS -o /dev/null -H "Authorization: Bearer $BENCH_KEY" "http://$TOLLGATE_L2/cached"
for _ in $(seq 1 200); do
  curl -fsS -o /dev/null -D - -H "Authorization: Bearer $BENCH_KEY" "http://$TOLLGATE_L2/cached" \
    | grep -qi '^cache-status:.*detail=l2' && break
  sleep 0.05 # poll until the first response is written to Redis
done
curl -fsS -o /dev/null -D - -H "Authorization: Bearer $BENCH_KEY" "http://$TOLLGATE_L2/cached" \
  | grep -qi '^cache-status:.*detail=l2' || { echo "$TOLLGATE_L2 does not serve /cached from Redis" >&2; exit 1; }

measure() { # name addr path [accept-encoding] -> "rps p50 p99"
  local out auth="Authorization: Bearer $BENCH_KEY"
  # HAProxy's cache never answers a request that carries Authorization
  # (nginx's and tollgate's do, for a response marked public): its
  # requests go without, or its hits would be fetches.
  [ "$1" = haproxy ] && auth="X-No-Auth: 1"
  out=$(taskset -c $LOAD_CPU wrk -t1 -c$CONNS -d"${DURATION}s" --latency -H "$auth" \
    ${4:+-H "Accept-Encoding: $4"} "http://$2$3")
  if grep -q "Non-2xx" <<<"$out"; then echo "warning: $1 $3 had non-2xx responses" >&2; fi
  wrk_summary <<<"$out"
}

declare -A results
# scenario:path[:accept-encoding]; "compressed" is a cache hit sent gzipped
# (level 6 in both; nginx's gzip filter and tollgate both encode per response);
# "brotli" is a tollgate cache hit sent as brotli (nginx has no brotli
# module here). "passthrough" is a route with a cache and a no-store
# response; "passthrough-nocache" a route without cache settings.
scenarios=("passthrough:/uncached" "passthrough-nocache:/plain/uncached" "cached:/cached" "compressed:/cached:gzip" "brotli:/cached:br")
targets=("nginx:$NGINX" "haproxy:$HAPROXY" "tollgate:$TOLLGATE" "bare-pingora:$BARE" "tollgate+ratelimit:$TOLLGATE_RL" "tollgate+redis:$TOLLGATE_REDIS" "tollgate-nolog:$TOLLGATE_NOLOG" "tollgate-l2:$TOLLGATE_L2")
for round in $(seq 1 "$ROUNDS"); do
  for s in "${scenarios[@]}"; do
    IFS=: read -r scen path encoding <<<"$s"
    for t in "${targets[@]}"; do
      name=${t%%:*}; addr=${t#*:}
      # Compression is compared between the two caching proxies only.
      if [ -n "$encoding" ] && [ "$name" != nginx ] && [ "$name" != tollgate ]; then continue; fi
      if [ "$encoding" = br ] && [ "$name" != tollgate ]; then continue; fi
      # The Redis-tier instance: its cache hits only.
      if [ "$name" = tollgate-l2 ] && [ "$scen" != cached ]; then continue; fi
      # The no-cache route: against the peers and bare Pingora only.
      if [ "$scen" = passthrough-nocache ] && [ "$name" != nginx ] && [ "$name" != haproxy ] && [ "$name" != tollgate ] && [ "$name" != bare-pingora ]; then continue; fi
      r=$(measure "$name" "$addr" "$path" "$encoding")
      results["$scen/$name"]+="$r;"
      echo "round $round $scen $name: $r" >&2
    done
  done
done

# Latency at about half of each proxy's maximum (the median above): wrk has
# no fixed-rate mode, so each connection waits DELAY_MS between requests
# (wrk's delay() hook, whole milliseconds) and the number of connections
# sets the rate. The origin is measured directly with the same settings;
# the difference in p99 is what the proxy adds.
DELAY_MS=2
cat > "$WORK/paced.lua" <<LUA
delay = function() return $DELAY_MS end
LUA
paced() { # addr path conns [seconds] -> "rps p50 p99"
  local out
  out=$(taskset -c $LOAD_CPU wrk -t1 -c"$3" -d"${4:-$DURATION}s" --latency -s "$WORK/paced.lua" \
    -H "Authorization: Bearer $BENCH_KEY" "http://$1$2")
  wrk_summary <<<"$out"
}
declare -A half
for s in "passthrough:/uncached" "cached:/cached"; do
  IFS=: read -r scen path _ <<<"$s"
  for t in "nginx:$NGINX" "tollgate:$TOLLGATE"; do
    name=${t%%:*}; addr=${t#*:}
    max=$(python3 -c 'import statistics,sys; print(statistics.median(float(r.split()[0]) for r in sys.argv[1].strip(";").split(";")))' "${results["$scen/$name"]}")
    # A first guess from the delay alone, then one 1 s probe to correct it
    # for the response time and wrk's timer granularity.
    conns=$(python3 -c 'import math,sys; print(max(1, math.ceil(float(sys.argv[1]) / 2 * int(sys.argv[2]) / 1000)))' "$max" "$DELAY_MS")
    probe=$(paced "$addr" "$path" "$conns" 1 | cut -d' ' -f1)
    conns=$(python3 -c 'import math,sys; m, c, r = map(float, sys.argv[1:]); print(max(1, min(1000, math.ceil(c * m / 2 / max(r, 1)))))' "$max" "$conns" "$probe")
    half["$scen/$name"]="$(paced "$addr" "$path" "$conns") $max $conns"
    half["$scen/$name/origin"]="$(paced "$ORIGIN" "$path" "$conns")"
    echo "half load $scen $name: ${half["$scen/$name"]} origin: ${half["$scen/$name/origin"]}" >&2
  done
done

python3 - "$OUT/load-results.json" "$DURATION" "$ROUNDS" "$CONNS" <<PY
import json, statistics, sys, platform, os
raw = $(py_dict results)
half_raw = $(py_dict half)
out, duration, rounds, conns = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
res = {}
for key, runs in raw.items():
    vals = [tuple(map(float, r.split())) for r in runs.strip(";").split(";") if r]
    res[key] = {
        "rps": statistics.median(v[0] for v in vals),
        "p50_ms": statistics.median(v[1] for v in vals),
        "p99_ms": statistics.median(v[2] for v in vals),
        "rounds": [dict(zip(("rps", "p50_ms", "p99_ms"), v)) for v in vals],
    }
print(f"\nmedian of {rounds} rounds, {duration}s each, wrk -t1 -c{conns}; proxies+origin on CPU 0, wrk on CPU 1")
print(f"{'scenario':<12} {'proxy':<19} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'vs nginx':>9} {'vs haproxy':>11}")
for scen in ("passthrough", "passthrough-nocache", "cached", "compressed", "brotli"):
    base = res.get(f"{scen}/nginx", {}).get("rps")
    hap = res.get(f"{scen}/haproxy", {}).get("rps")
    for name in ("nginx", "haproxy", "tollgate", "bare-pingora", "tollgate+ratelimit", "tollgate+redis", "tollgate-nolog", "tollgate-l2"):
        r = res.get(f"{scen}/{name}")
        if not r: continue
        ratio = f"{r['rps']/base:.2f}x" if base else "-"
        hratio = f"{r['rps']/hap:.2f}x" if hap else "-"
        print(f"{scen:<12} {name:<19} {r['rps']:>10.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {ratio:>9} {hratio:>11}")
tg = {scen: res.get(f"{scen}/tollgate", {}).get("rps") for scen in ("passthrough", "passthrough-nocache", "cached", "brotli")}
for scen in ("passthrough", "cached"):
    for name in ("tollgate+ratelimit", "tollgate+redis"):
        r = res.get(f"{scen}/{name}")
        if r and tg[scen]:
            print(f"{scen:<12} {name} / tollgate without rate limiting: {r['rps'] / tg[scen]:.2f}x")
for scen in ("passthrough", "cached"):
    r = res.get(f"{scen}/tollgate-nolog")
    if r and tg[scen]:
        print(f"{scen:<12} tollgate access log on / off: {tg[scen] / r['rps']:.2f}x")
for scen in ("passthrough", "passthrough-nocache", "cached"):
    peers = {n: res.get(f"{scen}/{n}", {}).get("rps") for n in ("nginx", "haproxy")}
    peers = {n: v for n, v in peers.items() if v}
    if peers and tg.get(scen):
        best = max(peers, key=peers.get)
        print(f"{scen:<12} tollgate / fastest peer ({best}): {tg[scen] / peers[best]:.2f}x")
for scen in ("passthrough", "passthrough-nocache", "cached"):
    bare = res.get(f"{scen}/bare-pingora", {}).get("rps")
    if bare and tg.get(scen):
        print(f"{scen:<12} tollgate / bare Pingora: {tg[scen] / bare:.2f}x")
l2 = res.get("cached/tollgate-l2", {}).get("rps")
if l2 and tg.get("cached") and tg.get("passthrough"):
    print(f"Redis-tier hit / memory hit: {l2 / tg['cached']:.2f}x; Redis-tier hit / upstream fetch: {l2 / tg['passthrough']:.2f}x")
if tg.get("brotli") and tg.get("cached"):
    print(f"brotli hit / plain hit (tollgate): {tg['brotli'] / tg['cached']:.2f}x")
print(f"\nlatency at about half of each proxy's maximum ({len(half_raw)//2} runs; connections paced with wrk delay())")
print(f"{'scenario':<12} {'proxy':<9} {'req/s':>8} {'of max':>7} {'p50 ms':>7} {'p99 ms':>7} {'origin p99':>11} {'added p99':>10}")
half = {}
for scen in ("passthrough", "cached"):
    for name in ("nginx", "tollgate"):
        h = half_raw.get(f"{scen}/{name}")
        o = half_raw.get(f"{scen}/{name}/origin")
        if not h or not o: continue
        rps, p50, p99, mx, conns = map(float, h.split())
        orps, op50, op99 = map(float, o.split())
        half[f"{scen}/{name}"] = {"rps": rps, "of_max": rps / mx, "connections": int(conns), "p50_ms": p50,
                                 "p99_ms": p99, "origin_p99_ms": op99, "added_p99_ms": p99 - op99}
        print(f"{scen:<12} {name:<9} {rps:>8.0f} {rps/mx:>6.0%} {p50:>7.2f} {p99:>7.2f} {op99:>11.2f} {p99-op99:>10.2f}")
print("\nnote: bare-pingora answers /cached from memory in request_filter, without Pingora's cache:")
print("      the floor for a tollgate cache hit.")
json.dump({"machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
           "duration_s": int(duration), "rounds": int(rounds), "connections": int(conns),
           "results": res, "half_load": half}, open(out, "w"), indent=2)
print(f"written: {out}")
PY
