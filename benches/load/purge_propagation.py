"""How fast a purge on one instance reaches another through Redis.

    cargo build --release && python3 benches/load/purge_propagation.py

Starts redis-server, a small origin and two tollgate instances with the
cache's Redis tier, then 30 times: fills one URL on both, purges it on A,
and polls B's /metrics until its remote-purge counter moves. Prints the
time A took to answer the purge and the time until B had applied it
(polling included).
"""
import subprocess, time, urllib.request, json, os, statistics, socket, sys
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, "target/release/tollgate")
import tempfile
W = tempfile.mkdtemp(prefix="tollgate-purge-")
def free():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p
rport = free()
redis = subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
origin_port = free()
# a tiny origin: python http.server is too slow to matter here (one fill per round)
origin = subprocess.Popen([sys.executable, "-c", f"""
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        b=b'x'*100; self.send_response(200); self.send_header('Cache-Control','max-age=300'); self.send_header('Content-Length',str(len(b))); self.end_headers(); self.wfile.write(b)
    def log_message(self,*a): pass
http.server.ThreadingHTTPServer(('127.0.0.1',{origin_port}),H).serve_forever()
"""])
procs = []
def start(i):
    port, admin = free(), free()
    cfg = f"""listen: ["127.0.0.1:{port}"]
admin: {{ listen: "127.0.0.1:{admin}", token_env: T }}
server: {{ threads: 1, pid_file: {W}/p{i}.pid, upgrade_sock: {W}/u{i}.sock }}
logging: {{ level: warn, access_log: false }}
redis: {{ url: "redis://127.0.0.1:{rport}" }}
cache: {{ redis: {{}} }}
upstreams: {{ o: {{ backends: ["127.0.0.1:{origin_port}"] }} }}
routes: [ {{ name: r, upstream: o, cache: {{}} }} ]
"""
    open(f"{W}/c{i}.yaml", "w").write(cfg)
    p = subprocess.Popen([BIN, "run", "-c", f"{W}/c{i}.yaml"], env={**os.environ, "T": "tok"}, stderr=subprocess.DEVNULL)
    procs.append(p)
    return port, admin
a, b = start(0), start(1)
time.sleep(1.5)
def get(port, path):
    return urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Host": "h"})).read()
def metric(admin, name):
    for l in urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics").read().decode().splitlines():
        if l.startswith(name + " "): return float(l.split()[1])
    return 0.0
samples = []
for i in range(30):
    path = f"/p{i}"
    get(a[0], path); time.sleep(0.05); get(b[0], path)
    before = metric(b[1], 'tollgate_cache_purges_total{reason="remote"}')
    t0 = time.perf_counter()
    req = urllib.request.Request(f"http://127.0.0.1:{a[1]}/cache/purge", data=json.dumps({"url": f"http://h{path}"}).encode(), headers={"Authorization": "Bearer tok", "Content-Type": "application/json"})
    urllib.request.urlopen(req).read()
    t_ack = time.perf_counter()
    while metric(b[1], 'tollgate_cache_purges_total{reason="remote"}') == before:
        if time.perf_counter() - t0 > 5: break
    samples.append(((t_ack - t0) * 1000, (time.perf_counter() - t0) * 1000))
for p in procs: p.terminate()
origin.terminate(); redis.terminate()
acks = sorted(s[0] for s in samples); seen = sorted(s[1] for s in samples)
print(f"purge answered on A: median {statistics.median(acks):.2f} ms, max {acks[-1]:.2f} ms")
print(f"applied on B (seen by polling B's /metrics): median {statistics.median(seen):.2f} ms, p90 {seen[int(len(seen)*0.9)]:.2f} ms, max {seen[-1]:.2f} ms")
