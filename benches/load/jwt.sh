#!/usr/bin/env bash
# Tenants from JWTs against tenants from API keys, side by side in one run:
# the same cached hit through one tollgate with rate limiting, asked with
# an API key and with a JWT (the same token reused: the verified-token
# cache answers), and through a second tollgate whose verified-token cache
# is off (`cache_size: 0`: every request checks the RS256 signature).
#
#   benches/load/jwt.sh [DURATION_SECONDS=10] [ROUNDS=3]
#
# Proxies and the origin on CPU 0, wrk on CPU 1; rounds alternate. Prints
# requests/s and p50/p99 per case (median of the rounds) and the ratios.
. "$(dirname "$0")/../load/setup.sh" # strict mode, the repository's root, the helpers
DURATION="${1:-10}"
ROUNDS="${2:-3}"
CONNS=64

bench_setup jwt "nginx wrk" jwt_bench_keys

bench_addresses 18280 PROXY ORIGIN NOCACHE ADMIN NOCACHE_ADMIN
BENCH_KEY=bench-key
ISSUER=https://auth.bench/
AUDIENCE=bench-api

bench_document "$WORK/doc.json"
origin_conf "$WORK" "$ORIGIN" > "$WORK/origin.conf"
TOKEN=$(target/release/examples/jwt_bench_keys "$WORK/jwks.json" "$ISSUER" "$AUDIENCE")
KEY_HASH=$(target/release/tollgate hash-key "$BENCH_KEY")

config() { # listen admin cache_size
  tollgate_server_yaml "$1" "$2"
  cat <<YAML
logging: { access_log: false }
$(bench_rate_limits "$KEY_HASH" "$ISSUER")
$(bench_jwt_auth "$WORK/jwks.json" "$ISSUER" "$AUDIENCE" "$3")
upstreams:
  origin: { backends: ["$ORIGIN"] }
routes:
  - { name: cached, upstream: origin, cache: {} }
YAML
}
config "$PROXY" "$ADMIN" 100000 > "$WORK/tollgate.yaml"
config "$NOCACHE" "$NOCACHE_ADMIN" 0 > "$WORK/tollgate-nocache.yaml"

bench_nginx "$WORK/origin.conf"
for name in tollgate tollgate-nocache; do
  bench_bg $PROXY_CPU "$WORK/$name.log" target/release/tollgate run -c "$WORK/$name.yaml"
done
wait_answers "$PROXY" "$NOCACHE"
# Both credentials answer, from the cache, as tenant bench.
for addr in "$PROXY" "$NOCACHE"; do
  for credential in "$BENCH_KEY" "$TOKEN"; do
    curl -fsS -o /dev/null -H "Authorization: Bearer $credential" "http://$addr/cached"
    curl -fsS -o /dev/null -D - -H "Authorization: Bearer $credential" "http://$addr/cached" \
      | grep -qi '^cache-status: .*hit' || { echo "$addr: not a cache hit" >&2; exit 1; }
  done
done

measure() { # addr credential -> "rps p50 p99"
  local out
  out=$(taskset -c $LOAD_CPU wrk -t1 -c$CONNS -d"${DURATION}s" --latency \
    -H "Authorization: Bearer $2" "http://$1/cached")
  if grep -q "Non-2xx" <<<"$out"; then echo "warning: non-2xx responses" >&2; fi
  wrk_summary <<<"$out"
}

declare -A results
cases=("api-key:$PROXY:$BENCH_KEY" "jwt:$PROXY:$TOKEN" "jwt-unremembered:$NOCACHE:$TOKEN")
for round in $(seq 1 "$ROUNDS"); do
  for c in "${cases[@]}"; do
    IFS=: read -r name host port credential <<<"$c"
    results["$name/$round"]=$(measure "$host:$port" "$credential")
    echo "round $round $name: ${results[$name/$round]}" >&2
  done
done

python3 - "$ROUNDS" "$DURATION" "$CONNS" <<PY
import statistics, sys
rounds, duration, conns = int(sys.argv[1]), sys.argv[2], sys.argv[3]
raw = $(py_dict results)
def med(name, i):
    return statistics.median(float(raw[f"{name}/{r}"].split()[i]) for r in range(1, rounds + 1))
print(f"cached hit, median of {rounds} rounds, {duration}s each, wrk -t1 -c{conns}; tollgate on CPU 0, wrk on CPU 1")
print(f"{'case':<18}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}")
for name in ("api-key", "jwt", "jwt-unremembered"):
    print(f"{name:<18}{med(name,0):>10.0f}{med(name,1):>9.3f}{med(name,2):>9.3f}")
print(f"\njwt / api-key:              {med('jwt',0)/med('api-key',0):.3f}x req/s")
print(f"jwt-unremembered / api-key: {med('jwt-unremembered',0)/med('api-key',0):.3f}x req/s")
PY
