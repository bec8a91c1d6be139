# Sourced by the load benchmarks: the origin they measure against, and the
# rate-limit tenant run.sh and instructions.sh configure.

# bench_document PATH: a 1 KB JSON document.
bench_document() {
  python3 - "$1" <<'PY'
import json, sys
items = [{"id": i, "name": f"item-{i:03d}", "price_cents": 1000 + i} for i in range(24)]
doc = json.dumps({"items": items}, separators=(",", ":"))
open(sys.argv[1], "w").write((doc + " " * 1024)[:1024])
PY
}

# origin_conf WORK ADDR: an nginx config serving WORK/doc.json at /cached
# (`public, max-age=300`, ETag), /uncached and /plain/uncached (`no-store`).
origin_conf() {
  cat <<NGX
worker_processes 1;
pid $1/origin.pid;
error_log $1/origin-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen $2 reuseport;
    default_type application/json;
    location = /cached   { add_header Cache-Control "public, max-age=300"; etag on; alias $1/doc.json; }
    location = /uncached { add_header Cache-Control "no-store"; alias $1/doc.json; }
    location = /plain/uncached { add_header Cache-Control "no-store"; alias $1/doc.json; }
  }
}
NGX
}

# bench_rate_limits KEY_HASH [ISSUER]: a tier whose budget the load cannot
# reach (every request is decided, none refused) and the tenant holding
# the key; with ISSUER, that issuer's tokens may name the tenant too (a
# tenant with keys is not claimable by tokens otherwise).
bench_rate_limits() {
  cat <<YAML
tiers:
  bench: { per_second: 100000000, per_hour: 100000000000 }
tenants:
  bench: { tier: bench, api_keys: ["$1"]${2:+, issuers: [\"$2\"]} }
anonymous: { reject: true }
YAML
}

# bench_jwt_auth JWKS_FILE ISSUER AUDIENCE [CACHE_SIZE]: tenants from RS256
# JWTs (examples/jwt_bench_keys.rs makes the key set and a token), the
# tenant named by `org_id`, on bench_rate_limits' tier.
bench_jwt_auth() {
  cat <<YAML
auth:
  jwt:
    issuers:
      - issuer: "$2"
        audiences: [$3]
        jwks: { file: $1 }
        algorithms: [RS256]
    tenant_claim: org_id
    default_tier: bench
YAML
  [ -z "${4:-}" ] || echo "    cache_size: $4"
}

# origin_locations WORK ADDR LOCATIONS: an nginx config (one worker, no
# access log, root WORK) serving the given `location` blocks.
origin_locations() {
  cat <<NGX
worker_processes 1;
pid $1/origin.pid;
error_log $1/origin-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen $2 reuseport;
    default_type application/json;
    root $1;
$3
  }
}
NGX
}

# base_binary BASE: the path of a release build of commit BASE, made in a
# git worktree under /tmp (kept between runs, with its target directory,
# so a second run does not rebuild it). For today-against-base runs.
base_binary() {
  local dir
  dir="/tmp/tollgate-base-$(git rev-parse --short "$1")"
  if [ ! -x "$dir/target/release/tollgate" ]; then
    [ -d "$dir" ] || git worktree add -f "$dir" "$1" >&2
    (cd "$dir" && cargo build --release --locked --bin tollgate >&2)
  fi
  echo "$dir/target/release/tollgate"
}

# peer_configs WORK ORIGIN NGINX HAPROXY [NGINX_H2C HAPROXY_H2C] [MAXCONN]:
# writes WORK/nginx-proxy.conf and WORK/haproxy.cfg, the two peers as a
# production deployment would run them in front of ORIGIN: one worker
# (thread), keep-alive to the origin, the access log on (nginx buffered
# as production nginx writes it; HAProxy's httplog to its standard output,
# which the caller sends to a file), a cache for what the origin allows
# (nginx proxy_cache; HAProxy's cache, which keeps objects in shared
# memory), gzip in nginx as in tollgate. With the _H2C addresses each also
# listens for HTTP/2 with prior knowledge.
peer_configs() {
  local work=$1 origin=$2 nginx=$3 haproxy=$4 nginx_h2c=${5:-} haproxy_h2c=${6:-} maxconn=${7:-4096}
  # A connection can take two descriptors (client and origin side): within
  # the process's hard limit (20,000 on the project's machines), HAProxy
  # refuses to start otherwise.
  local fds hap_maxconn
  fds=$(ulimit -Hn)
  [ "$fds" = unlimited ] && fds=1048576
  hap_maxconn=$(( maxconn * 2 + 100 > fds ? (fds - 100) / 2 : maxconn ))
  cat > "$work/nginx-proxy.conf" <<NGX
worker_processes 1;
worker_rlimit_nofile $(( maxconn * 2 + 100 > fds ? fds : maxconn * 2 + 100 ));
pid $work/nginx-proxy.pid;
error_log $work/nginx-proxy-error.log warn;
events { worker_connections $maxconn; }
http {
  access_log $work/nginx-access.log combined buffer=64k flush=1s;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  proxy_cache_path $work/nginx-cache levels=1:2 keys_zone=api:10m max_size=100m inactive=10m use_temp_path=off;
  upstream origin { server $origin; keepalive 128; }
  gzip on; gzip_types application/json; gzip_min_length 1000; gzip_comp_level 6; gzip_proxied any;
  server {
    listen $nginx reuseport;
    ${nginx_h2c:+listen $nginx_h2c http2;}
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache api;
      proxy_cache_valid 200 5m;
    }
  }
}
NGX
  cat > "$work/haproxy.cfg" <<HAP
global
  nbthread 1
  maxconn $hap_maxconn
  log stdout format raw local0
defaults
  mode http
  log global
  option httplog
  option http-keep-alive
  timeout connect 5s
  timeout client 300s
  timeout server 60s
  timeout http-keep-alive 300s
cache api
  total-max-size 100
  max-object-size 65536
  max-age 300
frontend front
  bind $haproxy
  ${haproxy_h2c:+bind $haproxy_h2c proto h2}
  maxconn $hap_maxconn
  default_backend origin
backend origin
  http-reuse always
  http-request cache-use api
  http-response cache-store api
  server origin $origin maxconn 1000
HAP
}

# wait_answers ADDR...: polls each until it answers GET /uncached, fails
# the run when one never does.
wait_answers() {
  local addr
  for addr in "$@"; do
    for _ in $(seq 1 200); do
      curl -fsS -o /dev/null -H "Authorization: Bearer ${BENCH_KEY:-bench-key}" "http://$addr/uncached" 2>/dev/null && break
      sleep 0.05 # poll until the server answers
    done
    curl -fsS -o /dev/null -H "Authorization: Bearer ${BENCH_KEY:-bench-key}" "http://$addr/uncached" \
      || { echo "$addr does not answer" >&2; return 1; }
  done
}

# settle PID: waits (at most a minute) until the process has used at most
# 2 % of a core over half a second, so start-up work still running in the
# background (key sets, connectors) is not counted as the requests'.
settle() {
  local before after
  for _ in $(seq 1 120); do
    before=$(awk '{ print $14 + $15 }' "/proc/$1/stat")
    sleep 0.5 # pace: the sampling interval; the loop ends on the condition
    after=$(awk '{ print $14 + $15 }' "/proc/$1/stat")
    [ $((after - before)) -le 1 ] && return 0
  done
  echo "warning: process $1 did not settle within a minute" >&2
}
