//! Compression through Pingora's module, with our policy: decoded bodies
//! are compared byte for byte with what the upstream sent.

mod common;
use common::*;
use std::io::Read;

fn json_doc() -> String {
    let items: Vec<String> = (0..60)
        .map(|i| {
            format!(
                "{{\"id\":{i},\"name\":\"item-{i:03}\",\"price_cents\":{},\"tags\":[\"a\",\"b\"]}}",
                1000 + i
            )
        })
        .collect();
    format!("{{\"items\":[{}]}}", items.join(","))
}

fn reply(content_type: &str, body: &[u8], extra: &[(&str, &str)]) -> Action {
    let mut headers = vec![("Content-Type".to_string(), content_type.to_string())];
    headers.extend(extra.iter().map(|(n, v)| (n.to_string(), v.to_string())));
    Action::Reply(Reply {
        status: 200,
        headers,
        body: body.to_vec(),
    })
}

/// 2 MB of varied JSON: many flushes of a streamed encoder.
fn large_doc() -> Vec<u8> {
    (0..30_000)
        .map(|i| {
            format!(
                "{{\"id\":{i},\"hash\":\"{:016x}\"}},",
                (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
            )
        })
        .collect::<String>()
        .into_bytes()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

fn origin() -> TestUpstream {
    TestUpstream::start(|req| {
        let doc = json_doc();
        match req.path.as_str() {
            "/json" => reply(
                "application/json",
                doc.as_bytes(),
                &[("ETag", "\"v1\""), ("Cache-Control", "max-age=60")],
            ),
            "/small" => reply("application/json", b"{\"ok\":true}", &[]),
            "/png" => reply("image/png", doc.as_bytes(), &[]),
            "/pre-gzipped" => reply(
                "application/json",
                &gzip(doc.as_bytes()),
                &[("Content-Encoding", "gzip")],
            ),
            "/off/json" => reply("application/json", doc.as_bytes(), &[]),
            "/large" => reply(
                "application/json",
                &large_doc(),
                &[("Cache-Control", "no-store")],
            ),
            "/chunked" => reply(
                "application/json",
                doc.as_bytes(),
                &[
                    ("Transfer-Encoding", "chunked"),
                    ("Cache-Control", "max-age=60"),
                ],
            ),
            "/just-above-min" => reply("text/plain", &[b'a'; 1200], &[]),
            _ => Action::Reply(Reply {
                status: 404,
                headers: Vec::new(),
                body: Vec::new(),
            }),
        }
    })
}

fn setup() -> (TollgateProcess, TestUpstream) {
    let up = origin();
    let proxy = TollgateProcess::start(&format!(
        "compression: {{ min_size: 1000, brotli_quality: 4 }}\n\
         upstreams:\n  api: {{ backends: [\"{}\"] }}\n\
         routes:\n  - {{ name: api, upstream: api, cache: {{ default_ttl: 60s }} }}\n  \
         - {{ name: off, upstream: api, match: {{ path_prefix: /off/ }}, compression: {{ enabled: false }} }}\n",
        up.addr
    ));
    (proxy, up)
}

fn fetch(proxy: &TollgateProcess, path: &str, accept: Option<&str>) -> Response {
    let headers: Vec<(&str, &str)> = accept.iter().map(|a| ("Accept-Encoding", *a)).collect();
    request(proxy.addr, "GET", path, &headers, b"").expect("request")
}

fn decode(r: &Response) -> Vec<u8> {
    let mut out = Vec::new();
    match r.header("content-encoding") {
        None => out = r.body.clone(),
        Some("gzip") => {
            flate2::read::GzDecoder::new(&r.body[..])
                .read_to_end(&mut out)
                .expect("gunzip");
        }
        Some("br") => {
            // Strict: an unfinished stream (what Pingora 0.9's encoder
            // sends) is an error here.
            brotli::Decompressor::new(&r.body[..], 4096)
                .read_to_end(&mut out)
                .expect("a complete brotli stream");
        }
        Some("zstd") => out = zstd::decode_all(&r.body[..]).expect("unzstd"),
        Some(other) => panic!("unexpected encoding {other}"),
    }
    out
}

#[test]
fn each_encoding_is_chosen_by_accept_encoding_and_decodes_to_the_original() {
    let (proxy, _up) = setup();
    for (accept, want) in [
        ("gzip", "gzip"),
        ("br", "br"),
        ("zstd", "zstd"),
        ("br;q=0.5, gzip;q=0.9", "gzip"),
    ] {
        let r = fetch(&proxy, "/json", Some(accept));
        assert_eq!(r.header("content-encoding"), Some(want), "{accept}");
        assert!(
            r.body.len() < json_doc().len() / 2,
            "{want} did not shrink the body"
        );
        assert_eq!(decode(&r), json_doc().as_bytes(), "{want}");
        assert!(r
            .header("vary")
            .is_some_and(|v| v.to_ascii_lowercase().contains("accept-encoding")));
        assert_eq!(
            r.header("etag"),
            Some("W/\"v1\""),
            "a changed body has a weak ETag"
        );
    }
}

#[test]
fn brotli_is_on_by_default_and_off_at_quality_zero() {
    let up = origin();
    let start = |compression: &str| {
        TollgateProcess::start(&format!(
            "compression: {compression}\nupstreams:\n  api: {{ backends: [\"{}\"] }}\nroutes:\n  - {{ name: api, upstream: api }}\n",
            up.addr
        ))
    };
    let on = start("{}");
    let r = fetch(&on, "/json", Some("br, gzip;q=0.5"));
    assert_eq!(r.header("content-encoding"), Some("br"));
    assert_eq!(decode(&r), json_doc().as_bytes());
    let off = start("{ brotli_quality: 0 }");
    let r = fetch(&off, "/json", Some("br, gzip;q=0.5"));
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(decode(&r), json_doc().as_bytes());
}

/// Every shape of body a brotli response can have decodes with the strict
/// decoder to the upstream's bytes: small, large (many flushed chunks),
/// chunked from the upstream, a fresh hit from the stored encoded copy,
/// and a hit through Pingora's cache path.
#[test]
fn brotli_streams_are_complete_for_every_body_shape() {
    let (proxy, up) = setup();
    let cases: [(&str, Vec<u8>); 3] = [
        ("/just-above-min", vec![b'a'; 1200]),
        ("/large", large_doc()),
        ("/chunked", json_doc().into_bytes()),
    ];
    for (path, want) in &cases {
        let r = fetch(&proxy, path, Some("br"));
        assert_eq!(r.header("content-encoding"), Some("br"), "{path}");
        assert!(r.header("content-length").is_none(), "{path} streams");
        assert_eq!(&decode(&r), want, "{path}");
    }
    let miss = fetch(&proxy, "/json", Some("br"));
    let hit = fetch(&proxy, "/json", Some("br"));
    assert_eq!(hit.cache_status().as_deref(), Some("tollgate; hit"));
    assert_eq!(
        hit.header("content-length"),
        Some(hit.body.len().to_string().as_str()),
        "a fresh hit is sent from the stored brotli copy, with its length"
    );
    assert_eq!(decode(&miss), json_doc().as_bytes());
    assert_eq!(decode(&hit), json_doc().as_bytes());
    // `Cache-Control` on the request takes Pingora's cache path.
    let r = request(
        proxy.addr,
        "GET",
        "/json",
        &[("Accept-Encoding", "br"), ("Cache-Control", "max-stale=0")],
        b"",
    )
    .expect("get");
    assert_eq!(r.cache_status().as_deref(), Some("tollgate; hit"));
    assert_eq!(r.header("content-encoding"), Some("br"));
    assert_eq!(decode(&r), json_doc().as_bytes());
    let head = request(
        proxy.addr,
        "HEAD",
        "/json",
        &[("Accept-Encoding", "br")],
        b"",
    )
    .expect("head");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(
        up.recorded().iter().filter(|r| r.path == "/json").count(),
        1
    );
}

#[test]
fn identity_small_and_incompressible_responses_are_sent_as_they_are() {
    let (proxy, _up) = setup();
    let identity = fetch(&proxy, "/json", None);
    assert_eq!(identity.header("content-encoding"), None);
    assert_eq!(identity.body, json_doc().as_bytes());
    assert_eq!(identity.header("etag"), Some("\"v1\""));
    let small = fetch(&proxy, "/small", Some("gzip"));
    assert_eq!(
        (small.header("content-encoding"), small.body.as_slice()),
        (None, &b"{\"ok\":true}"[..])
    );
    let png = fetch(&proxy, "/png", Some("gzip"));
    assert_eq!(png.header("content-encoding"), None);
    let off = fetch(&proxy, "/off/json", Some("gzip"));
    assert_eq!(
        off.header("content-encoding"),
        None,
        "the route turns compression off"
    );
}

#[test]
fn a_compressed_upstream_response_is_kept_or_decompressed_as_the_client_needs() {
    let (proxy, _up) = setup();
    let gz = fetch(&proxy, "/pre-gzipped", Some("gzip"));
    assert_eq!(gz.header("content-encoding"), Some("gzip"));
    assert_eq!(decode(&gz), json_doc().as_bytes());
    let plain = fetch(&proxy, "/pre-gzipped", None);
    assert_eq!(plain.header("content-encoding"), None);
    assert_eq!(plain.body, json_doc().as_bytes());
}

#[test]
fn a_cached_response_is_stored_once_and_encoded_per_client() {
    let (proxy, up) = setup();
    let first = fetch(&proxy, "/json", Some("br"));
    assert_eq!(first.header("content-encoding"), Some("br"));
    let gz = fetch(&proxy, "/json", Some("gzip"));
    assert_eq!(gz.cache_status().as_deref(), Some("tollgate; hit"));
    assert_eq!(gz.header("content-encoding"), Some("gzip"));
    assert_eq!(decode(&gz), json_doc().as_bytes());
    let plain = fetch(&proxy, "/json", None);
    assert_eq!(plain.cache_status().as_deref(), Some("tollgate; hit"));
    assert_eq!(plain.body, json_doc().as_bytes());
    assert_eq!(
        up.recorded().iter().filter(|r| r.path == "/json").count(),
        1
    );
}

/// Fresh hits sent as gzip or zstd come from an encoded copy kept with the
/// entry: made on the first such hit, weighed with the entry, reused after,
/// and gone with it.
#[test]
fn fresh_hits_keep_one_encoded_copy_per_coding() {
    let (proxy, up) = setup();
    let size = || proxy.metric("tollgate_cache_size_bytes").unwrap_or(0.0);
    let miss = fetch(&proxy, "/json", Some("gzip"));
    assert_eq!(miss.header("content-encoding"), Some("gzip"));
    proxy.wait_metric("tollgate_cache_entries", 1.0);
    let stored = size();

    let hit = fetch(&proxy, "/json", Some("gzip"));
    assert_eq!(hit.cache_status().as_deref(), Some("tollgate; hit"));
    assert_eq!(hit.header("content-encoding"), Some("gzip"));
    assert_eq!(
        hit.header("content-length"),
        Some(hit.body.len().to_string().as_str())
    );
    assert_eq!(hit.header("etag"), Some("W/\"v1\""));
    assert!(hit
        .header("vary")
        .is_some_and(|v| v.to_ascii_lowercase().contains("accept-encoding")));
    assert!(hit.header("accept-ranges").is_none());
    assert_eq!(decode(&hit), json_doc().as_bytes());
    let with_gzip = size();
    assert!(
        with_gzip > stored && with_gzip < stored + json_doc().len() as f64,
        "the gzip copy is weighed: {stored} -> {with_gzip}"
    );

    let again = fetch(&proxy, "/json", Some("gzip"));
    assert_eq!(again.body, hit.body, "the same copy is served again");
    assert_eq!(size(), with_gzip, "no second gzip copy");

    let zstd = fetch(&proxy, "/json", Some("zstd"));
    assert_eq!(zstd.header("content-encoding"), Some("zstd"));
    assert_eq!(decode(&zstd), json_doc().as_bytes());
    assert!(size() > with_gzip, "the zstd copy is weighed too");

    let plain = fetch(&proxy, "/json", None);
    assert_eq!(plain.cache_status().as_deref(), Some("tollgate; hit"));
    assert_eq!(plain.body, json_doc().as_bytes());
    assert_eq!(
        up.recorded().iter().filter(|r| r.path == "/json").count(),
        1
    );

    // A successful POST invalidates the entry; its copies go with it.
    let post = request(proxy.addr, "POST", "/json", &[], b"{}").expect("post");
    assert_eq!(post.status, 200);
    proxy.wait_metric("tollgate_cache_entries", 0.0);
    proxy.wait_metric("tollgate_cache_size_bytes", 0.0);
}

#[test]
fn compression_savings_are_counted() {
    let (proxy, _up) = setup();
    fetch(&proxy, "/off/json", Some("gzip"));
    let r = fetch(&proxy, "/json", Some("gzip"));
    let out = r.body.len() as f64;
    proxy.wait_metric(
        r#"tollgate_compression_bytes_total{direction="in",encoding="gzip"}"#,
        json_doc().len() as f64,
    );
    let counted_out = proxy
        .metric(r#"tollgate_compression_bytes_total{direction="out",encoding="gzip"}"#)
        .expect("out");
    assert!(
        counted_out > 0.0 && counted_out <= out + 64.0,
        "out {counted_out} vs body {out}"
    );
}
