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

# bench_rate_limits KEY_HASH: a tier whose budget the load cannot reach
# (every request is decided, none refused) and the tenant holding the key.
bench_rate_limits() {
  cat <<YAML
tiers:
  bench: { per_second: 100000000, per_hour: 100000000000 }
tenants:
  bench: { tier: bench, api_keys: ["$1"] }
anonymous: { reject: true }
YAML
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
