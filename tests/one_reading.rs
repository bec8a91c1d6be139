//! One reading, third round (issue 38): what tollgate routes on, keys,
//! varies and vouches for is what the upstream receives. Each test is
//! written as the attacker sends it and checks what the upstream, or the
//! next client, sees.

mod common;
use common::upstream::Recorded;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tollgate::ratelimit::identity::hash_key;

const ACME: &str = "acme-secret-key";

/// Tenant `acme` (API key `ACME`) in a roomy tier; anonymous clients too.
fn acme_tenant() -> String {
    format!(
        "tiers:\n  pro: {{ per_minute: 10000 }}\ntenants:\n  acme: {{ tier: pro, api_keys: [\"{}\"] }}\nanonymous: {{ tier: pro }}\n",
        hash_key(ACME)
    )
}

/// Tenant `acme` by API key, and one route that sets `X-Route` on the
/// request it forwards.
fn vouching_config(up: &TestUpstream) -> String {
    format!(
        "{}upstreams:
  api: {{ backends: [\"{}\"] }}
routes:
  - name: api
    upstream: api
    headers: {{ request: {{ set: {{ X-Route: api }} }} }}
",
        acme_tenant(),
        up.addr
    )
}

/// Every field tollgate writes on the forwarded request, with the value
/// the upstream must see (a `contains` check), and the forged copy the
/// attacker sends, which must not reach it (`Via` is a list tollgate
/// appends to: the client's entry stays unless nominated).
const WRITTEN: [(&str, &str, &str); 8] = [
    ("X-Tenant", "acme", "globex"),
    ("X-Route", "api", "evil"),
    ("X-Forwarded-For", "127.0.0.1", "6.6.6.6"),
    ("X-Forwarded-Proto", "http", "https"),
    ("X-Forwarded-Host", "test.local", "bank.example"),
    ("Forwarded", "for=127.0.0.1", "for=6.6.6.6"),
    ("Via", "tollgate", "1.1 evil"),
    ("X-Request-Id", "", "forged id with spaces"),
];

fn assert_vouched(seen: &Recorded, nominated: &str) {
    for (field, want, forged) in WRITTEN {
        let got = seen.header(&field.to_ascii_lowercase());
        let got = got.unwrap_or_else(|| panic!("Connection: {nominated} removed {field}"));
        let forged_kept = field != "Via" && got.contains(forged);
        assert!(
            got.contains(want) && !forged_kept,
            "Connection: {nominated}: {field} reached the upstream as {got:?}"
        );
    }
}

/// RFC 9110 §7.6.1 removes what the client's `Connection` nominates from
/// the message *received*: a client cannot use it to delete the tenant,
/// the forwarding fields or the route's `set` fields tollgate writes, one
/// at a time or all at once, in any spelling.
#[test]
fn a_clients_connection_header_cannot_remove_what_tollgate_writes() {
    let up = TestUpstream::fixed("ok");
    let proxy = TollgateProcess::start(&vouching_config(&up));
    let bearer = format!("Bearer {ACME}");
    let all: Vec<&str> = WRITTEN.iter().map(|(f, _, _)| *f).collect();
    let all = all.join(", ");
    let upper: Vec<String> = WRITTEN
        .iter()
        .map(|(f, _, _)| f.to_ascii_uppercase())
        .collect();
    let upper = upper.join(",");
    let mut nominations: Vec<String> = WRITTEN.iter().map(|(f, _, _)| f.to_string()).collect();
    nominations.push(all);
    nominations.push(upper);
    nominations.push("keep-alive, x-tenant, Via".to_owned());
    for (i, nominated) in nominations.iter().enumerate() {
        let mut headers: Vec<(&str, &str)> = WRITTEN.iter().map(|(f, _, v)| (*f, *v)).collect();
        headers.push(("Authorization", &bearer));
        headers.push(("Connection", nominated));
        let r = request(proxy.addr, "GET", "/vouched", &headers, b"").expect("request");
        assert_eq!(r.status, 200, "Connection: {nominated}");
        wait_until("the upstream saw the request", || up.count() == i + 1);
        let seen = up.recorded().pop().expect("recorded");
        assert_vouched(&seen, nominated);
        assert!(
            seen.header("connection").is_none_or(|c| !c.contains('-')),
            "nominations forwarded: {:?}",
            seen.header("connection")
        );
    }
}

/// `Origin` nominated by `Connection` is not part of the request: the
/// answer made without it is keyed without it, and a browser sending the
/// same `Origin` normally gets the answer made for that origin, not the
/// attacker's (before: stored under the origin's variant for the TTL).
#[test]
fn a_nominated_origin_cannot_poison_that_origins_cached_variant() {
    let up = TestUpstream::start(|req| {
        let origin = req.header("origin").unwrap_or("none").to_owned();
        let mut headers = vec![("Cache-Control", "max-age=300"), ("Vary", "Origin")];
        if origin != "none" {
            headers.push(("Access-Control-Allow-Origin", origin.as_str()));
        }
        reply(200, &headers, &origin)
    });
    let proxy = TollgateProcess::start(&format!(
        "upstreams:\n  api: {{ backends: [\"{}\"] }}\n\
         routes:\n  - {{ name: api, upstream: api, cache: {{ default_ttl: 60s }} }}\n",
        up.addr
    ));
    let origin = ("Origin", "https://app.example");
    let attack = request(
        proxy.addr,
        "GET",
        "/cors",
        &[origin, ("Connection", "Origin")],
        b"",
    )
    .expect("attack");
    assert_eq!(attack.text(), "none", "the upstream saw no Origin");
    let victim = request(proxy.addr, "GET", "/cors", &[origin], b"").expect("victim");
    assert_eq!(victim.text(), "https://app.example");
    assert_eq!(
        victim.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(up.count(), 2, "the victim's variant was fetched for it");
}

/// What `Connection` may not do: name `Host` or a framing field, hide a
/// name behind quotes or a pseudo-header spelling, or name more options
/// than a client ever needs. Each is a 400 and nothing reaches the
/// upstream.
#[test]
fn connection_options_that_would_hide_or_unframe_are_refused() {
    let up = TestUpstream::fixed("ok");
    let proxy = TollgateProcess::start(&one_route(up.addr));
    let many = vec!["X-A"; 17].join(", ");
    for (method, nominated, body) in [
        ("GET", "Host", &b""[..]),
        ("POST", "Content-Length", &b"abc"[..]),
        ("GET", "Transfer-Encoding", &b""[..]),
        ("GET", "\"X-Tenant\"", &b""[..]),
        ("GET", ":authority", &b""[..]),
        ("GET", "X-A;q=1", &b""[..]),
        ("GET", many.as_str(), &b""[..]),
    ] {
        let r =
            request(proxy.addr, method, "/", &[("Connection", nominated)], body).expect("request");
        assert_eq!(r.status, 400, "Connection: {nominated}");
        assert_eq!(r.json()["error"], "bad_request", "Connection: {nominated}");
    }
    assert_eq!(up.count(), 0);
    // Options about the connection still act on it.
    let mut client = KeptAlive::open(proxy.addr).expect("connect");
    let kept = client
        .send("GET", "/", &[("Connection", "keep-alive, X-Debug")], b"")
        .expect("first");
    assert_eq!(kept.status, 200);
    let closing = client
        .send("GET", "/", &[("Connection", "X-Debug, close")], b"")
        .expect("second, on the same connection");
    assert_eq!(closing.status, 200);
    assert!(client.closed_by_peer(), "Connection: close was honoured");
}

/// A split's `sticky.header` reads the field the upstream receives: with
/// `X-Tenant`, which tollgate writes for the identified tenant, one
/// tenant stays on one pool whatever copy it sends, and no client picks
/// its pool by forging the field (before: the client's copy was hashed).
#[test]
fn a_sticky_split_hashes_the_field_tollgate_wrote_not_the_clients_copy() {
    let a = TestUpstream::fixed("a");
    let b = TestUpstream::fixed("b");
    let proxy = TollgateProcess::start(&format!(
        "{}upstreams:
  a: {{ backends: [\"{}\"] }}
  b: {{ backends: [\"{}\"] }}
routes:
  - {{ name: split, upstreams: [{{ name: a, weight: 1 }}, {{ name: b, weight: 1 }}], sticky: {{ header: X-Tenant }} }}
",
        acme_tenant(),
        a.addr,
        b.addr
    ));
    let bearer = format!("Bearer {ACME}");
    let mut pools = std::collections::BTreeSet::new();
    for i in 0..16 {
        let forged = format!("tenant-{i}");
        let r = request(
            proxy.addr,
            "GET",
            "/sticky",
            &[("Authorization", &bearer), ("X-Tenant", &forged)],
            b"",
        )
        .expect("request");
        assert_eq!(r.status, 200);
        pools.insert(r.text());
    }
    assert_eq!(pools.len(), 1, "one tenant, one pool: {pools:?}");
}

/// Only a WebSocket handshake is forwarded as an upgrade (Pingora strips
/// any other `Upgrade`), so only it bypasses the cache: an attacker
/// adding `Upgrade: h2c` (or any protocol) with `Connection: upgrade` to a
/// cached GET is answered from the cache like anyone else, and cannot
/// use it to reach the origin at will (before: every such request went
/// upstream).
#[test]
fn a_non_websocket_upgrade_cannot_bypass_the_cache() {
    let up = TestUpstream::start(|_| reply(200, &[("Cache-Control", "max-age=300")], "cached"));
    let proxy = TollgateProcess::start(&format!(
        "upstreams:\n  api: {{ backends: [\"{}\"] }}\n\
         routes:\n  - {{ name: api, upstream: api, cache: {{ default_ttl: 60s }} }}\n",
        up.addr
    ));
    assert_eq!(get(proxy.addr, "/shielded").expect("warm").text(), "cached");
    for protocol in ["h2c", "foo/1", "websocket2", "WebSocket, h2c", "TLS/1.0"] {
        let r = request(
            proxy.addr,
            "GET",
            "/shielded",
            &[("Upgrade", protocol), ("Connection", "Upgrade")],
            b"",
        )
        .expect("request");
        assert_eq!(r.status, 200, "Upgrade: {protocol}");
        assert_eq!(
            r.cache_status().as_deref(),
            Some("tollgate; hit"),
            "Upgrade: {protocol}"
        );
    }
    assert_eq!(up.count(), 1, "the origin was asked once");
}

fn tunnel_proxy(backend: std::net::SocketAddr, idle: &str) -> TollgateProcess {
    TollgateProcess::start(&format!(
        "limits: {{ body_timeout: 1s }}\n\
         upstreams:\n  ws: {{ backends: [\"{backend}\"] }}\n\
         routes:\n  - {{ name: ws, upstream: ws, timeouts: {{ total: 1s, idle: {idle} }} }}\n"
    ))
}

fn open_tunnel(proxy: &TollgateProcess) -> TcpStream {
    let mut client = TcpStream::connect(proxy.addr).expect("connect");
    client
        .write_all(&websocket_handshake("/tunnel"))
        .expect("handshake");
    let answer = client::read_response_from(&mut client).expect("the 101");
    assert_eq!(answer.status, 101);
    proxy.wait_metric("tollgate_tunnels_open", 1.0);
    client
}

/// A masked one-byte binary frame from the client.
const CLIENT_FRAME: [u8; 7] = [0x82, 0x81, 1, 2, 3, 4, b'y' ^ 1];

/// After the 101 the client's side is bounded by `timeouts.idle`, not by
/// `limits.body_timeout` (a request body's bound): a client silent for
/// longer than the body timeout keeps its tunnel, and a tunnel where
/// nobody speaks ends after `idle`.
#[test]
fn a_silent_client_keeps_its_tunnel_past_the_body_timeout_until_idle() {
    let backend = TunnelBackend::start(false);
    let received = backend.received.clone();
    let backend = backend.addr;
    let proxy = tunnel_proxy(backend, "4s");
    let mut client = open_tunnel(&proxy);
    // Silent for over twice the body timeout (time passing is what is
    // tested: a slow machine only makes the wait longer).
    let opened = Instant::now();
    std::thread::sleep(Duration::from_millis(2500)); // pace: the silence is what is tested
    assert!(opened.elapsed() >= Duration::from_secs(2));
    client
        .write_all(&CLIENT_FRAME)
        .expect("the tunnel is still open");
    wait_until("the backend got the frame", || {
        received.load(Ordering::SeqCst) == CLIENT_FRAME.len()
    });
    // Nobody speaks now: the tunnel ends after idle.
    client
        .set_read_timeout(Some(DEADLINE))
        .expect("read timeout");
    let mut byte = [0u8; 1];
    assert!(
        matches!(client.read(&mut byte), Ok(0) | Err(_)),
        "tunnel closed"
    );
    proxy.wait_metric("tollgate_tunnels_open", 0.0);
}

/// A client that only listens to a backend that speaks (a live feed) is
/// kept past `idle`: the backend's bytes are the tunnel's life.
#[test]
fn a_listening_client_keeps_a_tunnel_to_a_speaking_backend() {
    let backend = TunnelBackend::start(true).addr;
    let proxy = tunnel_proxy(backend, "1s");
    let mut client = open_tunnel(&proxy);
    client
        .set_read_timeout(Some(DEADLINE))
        .expect("read timeout");
    // Three times the idle bound of frames from the backend (each frame
    // is 3 bytes, one every 100 ms): the tunnel must carry them all.
    let opened = Instant::now();
    let mut frames = [0u8; 3];
    while opened.elapsed() < Duration::from_secs(3) {
        client
            .read_exact(&mut frames)
            .expect("the backend's frames keep coming");
        assert_eq!(frames, [0x82, 0x01, b'x']);
    }
    assert_eq!(proxy.metric("tollgate_tunnels_open"), Some(1.0));
}

/// A trusted proxy that writes `X-Forwarded-For` entries with ports (IIS
/// ARR, Azure) still gives each client its own budget: the entry is the
/// client's address, not an unreadable hop that left everyone behind the
/// proxy in its bucket.
#[test]
fn forwarded_entries_with_ports_keep_clients_apart() {
    let up = TestUpstream::fixed("ok");
    let proxy = TollgateProcess::start_with_server(
        "  trusted_proxies: [127.0.0.1]\n",
        &format!(
            "tiers:\n  free: {{ per_minute: 1 }}\n\
         anonymous: {{ tier: free }}\n\
         upstreams:\n  api: {{ backends: [\"{}\"] }}\n\
         routes:\n  - {{ name: api, upstream: api }}\n",
            up.addr
        ),
    );
    let from = |xff: &str| {
        request(proxy.addr, "GET", "/", &[("X-Forwarded-For", xff)], b"")
            .expect("request")
            .status
    };
    assert_eq!(from("203.0.113.1:50000"), 200);
    assert_eq!(from("[2001:db8::1]:443"), 200, "another client");
    assert_eq!(from("203.0.113.2:50001, 10.0.0.1:8080"), 200, "a third");
    assert_eq!(
        from("203.0.113.1:61000"),
        429,
        "the first again, other port"
    );
}
