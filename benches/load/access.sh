#!/usr/bin/env bash
# What access policy costs, side by side in one run (issue 42): two
# tollgates on the same routes, one plain, one with every route behind a
# 1,000-network address list (the client allowed by its most specific
# entry, 127.0.0.0/8, among 999 denied networks) and a CORS policy (the
# client sends no Origin: the fields are checked and `Vary: Origin` added
# on every answer), each asked for the same cached hit and the same
# pass-through.
#
#   benches/load/access.sh [DURATION_SECONDS=10] [ROUNDS=3]
#
# Proxies and the origin on CPU 0, wrk on CPU 1; rounds alternate. Prints
# requests/s per case (median of the rounds) and the policy's ratio to the
# plain proxy (the target: >= 0.97x).
. "$(dirname "$0")/../load/setup.sh" # strict mode, the repository's root, the helpers
DURATION="${1:-10}"
ROUNDS="${2:-3}"
bench_setup access "nginx wrk"

bench_addresses 18560 ORIGIN PLAIN PLAIN_ADMIN POLICY POLICY_ADMIN
bench_document "$WORK/doc.json"
origin_conf "$WORK" "$ORIGIN" > "$WORK/origin.conf"

NETS=$(python3 -c 'print(", ".join(f"{10 + i // 250}.{i % 250}.0.0/16" for i in range(999)))')
config() { # listen admin [policy]
  tollgate_server_yaml "$1" "$2"
  echo "logging: { access_log: false }"
  if [ -n "${3:-}" ]; then
    origin_routes_yaml | sed "s|upstream: origin|upstream: origin, addresses: { allow: [127.0.0.0/8], deny: [$NETS] }, cors: { allow_origins: [\"https://app.example.com\"] }|"
  else
    origin_routes_yaml
  fi
}
config "$PLAIN" "$PLAIN_ADMIN" > "$WORK/plain.yaml"
config "$POLICY" "$POLICY_ADMIN" policy > "$WORK/policy.yaml"

bench_nginx "$WORK/origin.conf"
declare -A admin=([plain]=$PLAIN_ADMIN [policy]=$POLICY_ADMIN)
declare -A addr=([plain]=$PLAIN [policy]=$POLICY)
for name in plain policy; do
  bench_bg $PROXY_CPU "$WORK/$name.log" target/release/tollgate run -c "$WORK/$name.yaml"
  tollgate_pid=$bench_last_pid
  tollgate_wait_ready "${admin[$name]}"
  curl -fsS -o /dev/null "http://${addr[$name]}/cached"
done
# The policy proxy really judges: an Origin it allows gets CORS fields.
curl -fsS -D - -o /dev/null -H 'Origin: https://app.example.com' "http://$POLICY/cached" \
  | grep -qi '^access-control-allow-origin: https://app.example.com' \
  || { echo "the policy proxy sent no CORS fields" >&2; exit 1; }

alternating_rounds plain policy

echo "median of $ROUNDS rounds, ${DURATION}s each, wrk -t1 -c64; tollgate on CPU 0, wrk on CPU 1"
for s in cached passthrough; do
  for name in plain policy; do
    m=$(for round in $(seq 1 "$ROUNDS"); do echo "${r[$name/$s/$round]}"; done | median)
    eval "med_${name}=$m"
  done
  printf '%-12s plain %10.0f   1,000 networks + CORS %10.0f (%.3fx)\n' "$s" "$med_plain" \
    "$med_policy" "$(echo "scale=4; $med_policy / $med_plain" | bc)"
done
