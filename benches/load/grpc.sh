#!/usr/bin/env bash
# gRPC unary calls, side by side in one run: h2load straight to a gRPC
# origin over cleartext HTTP/2, through tollgate (an h2c listener, an h2c
# upstream to the same origin), and through nginx `grpc_pass` (the peer).
# Prints calls per second of each, the ratios, and p50/p99 per call with
# the p99 each proxy adds.
#
#   benches/load/grpc.sh [DURATION_SECONDS=5] [ROUNDS=3]
#
# The origin is nginx speaking HTTP/2 with prior knowledge, answering
# `/bench.Echo/Unary` as a gRPC server does: `application/grpc`, one
# framed 64-byte message, `grpc-status: 0` in the trailers. The request
# is one framed 64-byte message. tollgate (1 worker), nginx (1 worker) and the origin on
# CPU 0, h2load on CPU 1 (16 connections, 10 concurrent streams each);
# rounds alternate between the two targets.
. "$(dirname "$0")/../load/setup.sh" # strict mode, the repository's root, the helpers
DURATION="${1:-5}"
ROUNDS="${2:-3}"
bench_setup grpc "nginx nghttp2-client"

bench_addresses 18480 PROXY ORIGIN ADMIN NGINX_PROXY
# A framed gRPC message (flag 0, 4-byte length) of 64 bytes, as request and reply.
python3 - "$WORK" <<'PY'
import sys, struct
body = b"x" * 64
frame = b"\0" + struct.pack(">I", len(body)) + body
import os
os.makedirs(f"{sys.argv[1]}/bench.Echo", exist_ok=True)
for name in ("request.bin", "bench.Echo/Unary"):
    open(f"{sys.argv[1]}/{name}", "wb").write(frame)
PY
cat > "$WORK/origin.conf" <<NGX
worker_processes 1;
pid $WORK/origin.pid;
error_log $WORK/origin-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen $ORIGIN http2;
    root $WORK;
    # The reply is the file bench.Echo/Unary; nginx answers a POST to a
    # static file with 405, turned into a GET of the same file.
    location = /bench.Echo/Unary {
      default_type application/grpc;
      add_trailer grpc-status 0;
      error_page 405 =200 \$uri;
    }
  }
}
NGX
# The same proxying done by nginx (grpc_pass), for a peer ratio.
cat > "$WORK/nginx-proxy.conf" <<NGX
worker_processes 1;
pid $WORK/nginx-proxy.pid;
error_log $WORK/nginx-proxy-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream grpc_origin { server $ORIGIN; keepalive 32; }
  server {
    listen $NGINX_PROXY http2;
    location /bench.Echo/ { grpc_pass grpc://grpc_origin; }
  }
}
NGX
{ tollgate_server_yaml "[{ address: \"$PROXY\", h2c: true }]" "$ADMIN"
  cat <<YAML
logging: { access_log: false }
upstreams:
  grpc: { backends: ["$ORIGIN"], protocol: h2c }
routes:
  - { name: echo, upstream: grpc, match: { path_prefix: /bench.Echo/ } }
YAML
} > "$WORK/tollgate.yaml"
bench_nginx "$WORK/origin.conf"
bench_nginx "$WORK/nginx-proxy.conf"
tollgate_start "$WORK/tollgate.yaml"

# One call each way first: both must end with grpc-status 0 (in trailers,
# which nghttp prints; curl does not).
for target in "$ORIGIN" "$PROXY" "$NGINX_PROXY"; do
  out=$(nghttp -v -H "content-type: application/grpc" -H "te: trailers" \
    -d "$WORK/request.bin" "http://$target/bench.Echo/Unary" 2>&1 | tr -d '\0')
  grep -aq "grpc-status: 0" <<<"$out" || { echo "no grpc-status 0 from $target:" >&2; echo "$out" >&2; exit 1; }
done

# measure TARGET ROUND: calls/s, and the per-call log for percentiles.
measure() {
  local log="$WORK/$1-$2.log"
  taskset -c 1 h2load -D "$DURATION" --warm-up-time=1 -c16 -m10 -t1 \
    -H "content-type: application/grpc" -H "te: trailers" -d "$WORK/request.bin" \
    --log-file="$log" "http://$3/bench.Echo/Unary" > "$WORK/$1-$2.out"
  awk '/^finished in/ { for (i = 1; i <= NF; i++) if ($i ~ /req\/s/) print $(i-1) }' "$WORK/$1-$2.out" | tr -d ','
}
# percentile FILE... P: the P-th percentile of the calls' durations (µs, column 3).
percentile() {
  local p="${*: -1}"
  cat "${@:1:$#-1}" | awk '{ print $3 }' | sort -n | awk -v p="$p" '{ v[NR] = $1 } END { i = int(NR * p / 100); if (i < 1) i = 1; print v[i] }'
}
declare -A r
for round in $(seq 1 "$ROUNDS"); do
  r[direct/$round]=$(measure direct "$round" "$ORIGIN")
  r[tollgate/$round]=$(measure tollgate "$round" "$PROXY")
  r[nginx/$round]=$(measure nginx "$round" "$NGINX_PROXY")
  if ! grep -q "succeeded, 0 failed, 0 errored" "$WORK/tollgate-$round.out"; then
    echo "calls through tollgate failed:" >&2; cat "$WORK/tollgate-$round.out" >&2; exit 1
  fi
done
for t in direct tollgate nginx; do
  m=$(for round in $(seq 1 "$ROUNDS"); do echo "${r[$t/$round]}"; done | median)
  eval "med_$t=$m"
  logs=("$WORK/$t"-*.log)
  eval "p50_$t=$(percentile "${logs[@]}" 50)"
  eval "p99_$t=$(percentile "${logs[@]}" 99)"
  echo "$t: $m calls/s, p50 $(eval echo "\$p50_$t") us, p99 $(eval echo "\$p99_$t") us"
done
echo "tollgate / direct = $(echo "scale=3; $med_tollgate / $med_direct" | bc)x"
echo "tollgate / nginx grpc_pass = $(echo "scale=3; $med_tollgate / $med_nginx" | bc)x"
echo "p99 added by tollgate: $(( p99_tollgate - p99_direct )) us; by nginx grpc_pass: $(( p99_nginx - p99_direct )) us"
