#!/usr/bin/env bash
# Writes through tollgate with the cache's Redis tier off, on, and on with
# Redis hung (SIGSTOP): every successful POST invalidates its URI (RFC 9111
# §4.4), and with the tier on its shared part goes to Redis and the other
# instances. Today against BASE (an earlier commit, built in a worktree
# under /tmp and kept), side by side, rounds alternating.
#
#   benches/load/invalidation.sh [BASE=b106e4e] [DURATION_SECONDS=5] [ROUNDS=3]
#
# tollgate and the origin on CPU 0; wrk (POSTs to 1,000 URIs of a cached
# route, 64 connections) and Redis on CPU 1. purge_timeout is 2s for both
# builds, so a build that waits on a hung Redis shows it without wrk's
# requests timing out. Prints req/s and p99 per build and state, and the
# ratios on/off and hung/off.
. "$(dirname "$0")/../load/setup.sh" # strict mode, the repository's root, the helpers
BASE="${1:-b106e4e}"
DURATION="${2:-5}"
ROUNDS="${3:-3}"
bench_setup invalidation "nginx wrk redis-server curl bc"
compare_builds "$BASE"

bench_addresses 18680 PROXY ORIGIN ADMIN
REDIS_PORT=18686
origin_locations "$WORK" "$ORIGIN" \
  '    location /items/ { add_header Cache-Control "max-age=300"; return 200 '"'"'{"ok":true}'"'"'; }' \
  > "$WORK/origin.conf"
cat > "$WORK/post.lua" <<'LUA'
local n = 0
request = function()
  n = n + 1
  return wrk.format("POST", "/items/" .. (n % 1000), { ["Content-Type"] = "application/json" }, "{}")
end
LUA
config() { # tier: off | on
  local tier=""
  if [ "$1" != off ]; then
    tier="redis: { url: \"redis://127.0.0.1:$REDIS_PORT\", timeout: 2s }
cache: { redis: { purge_timeout: 2s } }"
  fi
  tollgate_server_yaml "$PROXY" "$ADMIN"
  cat <<YAML
logging: { access_log: false }
$tier
YAML
  origin_routes_yaml "items / cache"
}
bench_nginx "$WORK/origin.conf"
bench_bg $LOAD_CPU "$WORK/redis.log" redis-server --port "$REDIS_PORT" --save "" --appendonly no
redis_pid=$bench_last_pid
bench_at_exit 'kill -CONT "$redis_pid"' # a stopped Redis would not die of the kill
for _ in $(seq 1 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.05; done

# measure WHICH STATE: "req/s p99_ms" of POSTs.
measure() {
  local tier=on
  [ "$2" = off ] && tier=off
  config "$tier" > "$WORK/tollgate.yaml"
  tollgate_start "$WORK/tollgate.yaml" "${BIN[$1]}"
  curl -fsS -o /dev/null -X POST "http://$PROXY/items/warm" || { echo "$1: POST failed" >&2; exit 1; }
  [ "$2" = hung ] && kill -STOP "$redis_pid"
  local out
  out=$(taskset -c $LOAD_CPU wrk -t1 -c64 -d"${DURATION}s" --timeout 10s --latency -s "$WORK/post.lua" "http://$PROXY")
  [ "$2" = hung ] && kill -CONT "$redis_pid"
  tollgate_stop
  wrk_summary <<<"$out" | awk '{ print $1, $3 }'  # req/s, p99
}
declare -A r
for round in $(seq 1 "$ROUNDS"); do
  for state in off on hung; do
    for which in base today; do
      r["$which/$state/$round"]=$(measure "$which" "$state")
    done
  done
done
printf '%-6s %-5s %12s %10s\n' build tier "POST req/s" "p99 ms"
declare -A med
for which in base today; do
  for state in off on hung; do
    rps=$(for round in $(seq 1 "$ROUNDS"); do echo "${r[$which/$state/$round]}" | cut -d' ' -f1; done | median)
    p99=$(for round in $(seq 1 "$ROUNDS"); do echo "${r[$which/$state/$round]}" | cut -d' ' -f2; done | median)
    med["$which/$state"]=$rps
    printf '%-6s %-5s %12s %10s\n' "$which" "$state" "$rps" "$p99"
  done
done
for which in base today; do
  on=$(echo "scale=3; ${med[$which/on]} / ${med[$which/off]}" | bc)
  hung=$(echo "scale=3; ${med[$which/hung]} / ${med[$which/off]}" | bc)
  echo "$which: tier on / off ${on}x, Redis hung / off ${hung}x"
done
