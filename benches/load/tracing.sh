#!/usr/bin/env bash
# What OpenTelemetry tracing costs, side by side in one run: three
# tollgates on the same routes, tracing off, sampling 1 % and sampling
# 100 % of requests (exported over OTLP/HTTP to a collector that accepts
# everything: `return 200` in the origin's nginx), each asked for the
# same cached hit and the same pass-through.
#
#   benches/load/tracing.sh [DURATION_SECONDS=10] [ROUNDS=3]
#
# Proxies and the origin on CPU 0, wrk on CPU 1; rounds alternate. Prints
# requests/s per case (median of the rounds) and each sampled proxy's
# ratio to the one without tracing (the target: 1 % >= 0.97x).
. "$(dirname "$0")/../load/setup.sh" # strict mode, the repository's root, the helpers
DURATION="${1:-10}"
ROUNDS="${2:-3}"
bench_setup tracing "nginx wrk"

bench_addresses 18480 ORIGIN OFF OFF_ADMIN ONE ONE_ADMIN ALL ALL_ADMIN
bench_document "$WORK/doc.json"
# The origin is the collector too: exports are answered 200 and dropped.
origin_conf "$WORK" "$ORIGIN" \
  | sed 's|^    location = /cached |    location = /v1/traces { return 200; }\n&|' > "$WORK/origin.conf"

config() { # listen admin [ratio]
  tollgate_server_yaml "$1" "$2"
  echo "logging: { access_log: false }"
  [ -z "${3:-}" ] || echo "tracing: { endpoint: \"http://$ORIGIN/v1/traces\", sample_ratio: $3 }"
  origin_routes_yaml
}
config "$OFF" "$OFF_ADMIN" > "$WORK/off.yaml"
config "$ONE" "$ONE_ADMIN" 0.01 > "$WORK/one.yaml"
config "$ALL" "$ALL_ADMIN" 1.0 > "$WORK/all.yaml"

bench_nginx "$WORK/origin.conf"
curl -fsS -o /dev/null -X POST --data-binary x "http://$ORIGIN/v1/traces"
declare -A admin=([off]=$OFF_ADMIN [one]=$ONE_ADMIN [all]=$ALL_ADMIN)
declare -A addr=([off]=$OFF [one]=$ONE [all]=$ALL)
for name in off one all; do
  bench_bg $PROXY_CPU "$WORK/$name.log" target/release/tollgate run -c "$WORK/$name.yaml"
  tollgate_pid=$bench_last_pid
  tollgate_wait_ready "${admin[$name]}"
  curl -fsS -o /dev/null "http://${addr[$name]}/cached"
done

alternating_rounds off one all

# The sampled proxies really exported (and the collector kept up).
for name in one all; do
  echo "$name: spans exported $(ADMIN=${admin[$name]} metric tollgate_trace_spans_exported_total)," \
    "dropped $(curl -fsS "http://${admin[$name]}/metrics" | awk '/^tollgate_trace_spans_dropped_total/ { s += $2 } END { print s + 0 }')" >&2
done

echo "median of $ROUNDS rounds, ${DURATION}s each, wrk -t1 -c64; tollgate on CPU 0, wrk on CPU 1"
for s in cached passthrough; do
  for name in off one all; do
    m=$(for round in $(seq 1 "$ROUNDS"); do echo "${r[$name/$s/$round]}"; done | median)
    eval "med_${name}=$m"
  done
  printf '%-12s off %10.0f   1%% %10.0f (%.3fx)   100%% %10.0f (%.3fx)\n' "$s" "$med_off" \
    "$med_one" "$(echo "scale=4; $med_one / $med_off" | bc)" \
    "$med_all" "$(echo "scale=4; $med_all / $med_off" | bc)"
done
