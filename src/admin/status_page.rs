//! The live status page: `/status.json` (the page's data, stable for
//! scripts), its plain-text form (what a browser without JavaScript
//! shows), and the page itself, computed from `crate::status`'s sampled
//! history, `/health`'s document and the cache store.

use crate::state::AppState;
use crate::status::history::{self, History};
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::time::UNIX_EPOCH;

/// Tenants listed under "top rejected".
const TOP_TENANTS: usize = 10;

/// The page: static HTML, CSS and JS compiled into the binary, with the
/// plain-text summary inlined for browsers that run no JavaScript.
const PAGE: &str = include_str!("status_page.html");

/// The status page, with `summary` (from [`text_summary`]) in its
/// no-script block.
pub fn page(summary: &str) -> String {
    PAGE.replace("{{SUMMARY}}", &html_escape(summary))
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(c),
        }
    }
    out
}

fn round(x: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (x * scale).round() / scale
}

fn unix(t: std::time::SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `/status.json`: the instance, routes, upstreams, cache, compression and
/// rate limiting, over the last minute. `health` is `/health`'s body, whose
/// upstream section is reused so both pages always agree.
pub fn report(state: &AppState, health: &Value) -> Value {
    let gateway = state.gateway();
    let config = &gateway.config;
    let history = state.status.lock();
    let last_reload = state.last_reload();

    let routes: Vec<Value> = config
        .routes
        .iter()
        .map(|r| {
            route_json(
                &history,
                &r.name,
                &r.destination.describe(&config.upstreams),
            )
        })
        .collect();

    let mut upstreams = Vec::new();
    if let Some(pools) = health["components"]["upstreams"].as_object() {
        for (name, pool) in pools {
            let mut pool = pool.clone();
            if let Some(backends) = pool["backends"].as_array_mut() {
                for backend in backends {
                    let id = (
                        name.clone(),
                        backend["address"].as_str().unwrap_or("").to_owned(),
                    );
                    backend["failures_last_minute"] = json!(history.failures(&id));
                    backend["last_error"] = match history.last_error(&id) {
                        Some(e) => json!({"kind": e.kind, "at_unix": unix(e.seen)}),
                        None => Value::Null,
                    };
                }
            }
            pool["name"] = json!(name);
            upstreams.push(pool);
        }
    }

    let (lookups, hits) = config
        .routes
        .iter()
        .filter_map(|r| history.route(&r.name))
        .fold((0, 0), |(l, h), w| (l + w.cache_lookups, h + w.cache_hits));
    let store = state.cache.store;
    let cache = json!({
        "size_bytes": store.size_bytes(),
        "max_size_bytes": config.cache.max_size,
        "entries": store.entries(),
        "evictions": state.cache.evicted_items(),
        "hit_ratio_last_minute": (lookups > 0).then(|| round(hits as f64 / lookups as f64, 3)),
        "l2": state.cache.redis().map(|tier| json!({
            "status": if tier.is_answering() { "ok" } else { "degraded" },
            "breaker": if tier.breaker_is_open() { "open" } else { "closed" },
        })),
    });

    let (bytes_in, bytes_out) = history.compression();
    let compression = json!({
        "enabled": config.compression.is_some(),
        "bytes_in_last_minute": bytes_in,
        "bytes_out_last_minute": bytes_out,
        "bytes_saved_last_minute": bytes_in.saturating_sub(bytes_out),
    });

    let tiers: Vec<Value> = config
        .rate_limit
        .iter()
        .flat_map(|rl| rl.tiers.iter())
        .map(|t| {
            let w = history.tier(&t.name);
            json!({"name": t.name, "allowed_last_minute": w.allowed, "limited_last_minute": w.limited, "fallback_last_minute": w.fallback})
        })
        .collect();
    let rejected_429: u64 = config
        .routes
        .iter()
        .filter_map(|r| history.route(&r.name))
        .map(|w| w.too_many)
        .sum();
    let top: Vec<Value> = history
        .top_rejected(TOP_TENANTS)
        .into_iter()
        .map(|(tenant, n)| json!({"tenant": tenant, "rejected": n}))
        .collect();
    let rate_limiting = json!({
        "enabled": config.rate_limit.is_some(),
        "tiers": tiers,
        "responses_429_last_minute": rejected_429,
        "top_rejected_tenants": top,
        "redis": health["components"]["redis"].clone(),
    });

    let instance = json!({
        "status": health["status"],
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.started.elapsed().as_secs(),
        "config_file": config.source,
        "config_loaded_at_unix": unix(gateway.loaded_at),
        "last_reload": last_reload.map(|r| json!({"at_unix": unix(r.at), "result": if r.ok { "ok" } else { "error" }, "message": r.message})),
        "warnings": config.warnings,
    });

    json!({
        "instance": instance,
        "window_seconds": history::WINDOW.as_secs(),
        "sampled_every_seconds": history::SAMPLE_EVERY.as_secs(),
        "samples": history.len(),
        "routes": routes,
        "upstreams": upstreams,
        "cache": cache,
        "compression": compression,
        "rate_limiting": rate_limiting,
    })
}

fn route_json(history: &History, name: &str, upstream: &str) -> Value {
    let w = history.route(name);
    let (rates, p95s) = history.spark(name);
    let ms = |v: Option<f64>| v.map(|x| round(x, 2));
    json!({
        "name": name,
        "upstream": upstream,
        "requests_per_second": w.as_ref().map(|w| round(w.rate, 2)),
        "latency_ms": {
            "p50": w.as_ref().and_then(|w| ms(w.p50_ms)),
            "p95": w.as_ref().and_then(|w| ms(w.p95_ms)),
            "p99": w.as_ref().and_then(|w| ms(w.p99_ms)),
        },
        "responses": w.as_ref().map(|w| json!({
            "1xx": w.by_class[0], "2xx": w.by_class[1], "3xx": w.by_class[2],
            "4xx": w.by_class[3], "5xx": w.by_class[4], "429": w.too_many,
        })),
        "cache_hit_ratio": w.as_ref().and_then(|w| w.hit_ratio()).map(|r| round(r, 3)),
        "spark": {
            "requests_per_second": rates.into_iter().map(|r| round(r, 2)).collect::<Vec<_>>(),
            "p95_ms": p95s.into_iter().map(ms).collect::<Vec<_>>(),
        },
    })
}

/// The report as plain text: what a terminal browser (no JavaScript)
/// shows, and a quick read for a human with `curl`.
pub fn text_summary(report: &Value) -> String {
    let mut out = String::new();
    let i = &report["instance"];
    let _ = writeln!(
        out,
        "tollgate {} - {} - up {} s - config {}",
        i["version"].as_str().unwrap_or("?"),
        i["status"].as_str().unwrap_or("?"),
        i["uptime_seconds"],
        i["config_file"].as_str().unwrap_or("?"),
    );
    if let Some(r) = i["last_reload"].as_object() {
        let _ = writeln!(out, "last reload: {} at {}", r["result"], r["at_unix"]);
    }
    for w in i["warnings"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "warning: {}", w.as_str().unwrap_or(""));
    }
    let _ = writeln!(
        out,
        "\nroutes (last minute): name  req/s  p50/p95/p99 ms  2xx/4xx/5xx/429  hit ratio"
    );
    for r in report["routes"].as_array().into_iter().flatten() {
        let l = &r["latency_ms"];
        let c = &r["responses"];
        let _ = writeln!(
            out,
            "  {}  {}  {}/{}/{}  {}/{}/{}/{}  {}",
            r["name"].as_str().unwrap_or("?"),
            r["requests_per_second"],
            l["p50"],
            l["p95"],
            l["p99"],
            c["2xx"],
            c["4xx"],
            c["5xx"],
            c["429"],
            r["cache_hit_ratio"],
        );
    }
    let _ = writeln!(out, "\nupstreams:");
    for u in report["upstreams"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "  {}: {} ({}/{} healthy)",
            u["name"].as_str().unwrap_or("?"),
            u["status"].as_str().unwrap_or("?"),
            u["healthy"],
            u["total"],
        );
        for d in u["dns"].as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "    dns {} {} ({} addresses){}",
                d["name"].as_str().unwrap_or("?"),
                d["status"].as_str().unwrap_or("?"),
                d["addresses"].as_array().map_or(0, Vec::len),
                match d["last_error"]["message"].as_str() {
                    Some(m) => format!(", last error: {m}"),
                    None => String::new(),
                },
            );
        }
        for b in u["backends"].as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "    {} ({}) {} in-flight {} failures/min {}",
                b["address"].as_str().unwrap_or("?"),
                b["source"].as_str().unwrap_or("config"),
                if b["healthy"].as_bool() == Some(true) {
                    "healthy"
                } else {
                    "DOWN"
                },
                b["in_flight"],
                b["failures_last_minute"],
            );
        }
    }
    let c = &report["cache"];
    let _ = writeln!(
        out,
        "\ncache: {} of {} bytes, {} entries, {} evictions, hit ratio {}",
        c["size_bytes"],
        c["max_size_bytes"],
        c["entries"],
        c["evictions"],
        c["hit_ratio_last_minute"],
    );
    let rl = &report["rate_limiting"];
    if rl["enabled"].as_bool() == Some(true) {
        let _ = writeln!(
            out,
            "rate limiting: {} 429s in the last minute",
            rl["responses_429_last_minute"]
        );
        for t in rl["top_rejected_tenants"].as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "  {} rejected {}",
                t["tenant"].as_str().unwrap_or("?"),
                t["rejected"]
            );
        }
    }
    out
}
