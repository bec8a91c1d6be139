//! The built-in sample API behind `tollgate demo`: a few JSON endpoints that
//! look like the API a team would put tollgate in front of, so a newcomer
//! sees routing, timeouts, errors and metrics without writing a backend.

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The demo config, bundled into the binary.
pub const DEMO_CONFIG: &str = include_str!("../conf/demo.yaml");
/// Where the demo origin listens (the demo config points at it).
pub const ORIGIN_ADDR: &str = "127.0.0.1:8081";

/// The sample API.
#[derive(Default)]
pub struct DemoOrigin {
    served: AtomicU64,
}

const COUNTRIES: &[(&str, &str, &str)] = &[
    ("AR", "Argentina", "ARS"),
    ("AU", "Australia", "AUD"),
    ("BR", "Brazil", "BRL"),
    ("CA", "Canada", "CAD"),
    ("CH", "Switzerland", "CHF"),
    ("CN", "China", "CNY"),
    ("DE", "Germany", "EUR"),
    ("ES", "Spain", "EUR"),
    ("FR", "France", "EUR"),
    ("GB", "United Kingdom", "GBP"),
    ("IN", "India", "INR"),
    ("IT", "Italy", "EUR"),
    ("JP", "Japan", "JPY"),
    ("KR", "South Korea", "KRW"),
    ("MX", "Mexico", "MXN"),
    ("NL", "Netherlands", "EUR"),
    ("NO", "Norway", "NOK"),
    ("SE", "Sweden", "SEK"),
    ("US", "United States", "USD"),
    ("ZA", "South Africa", "ZAR"),
];

fn json_response(
    status: StatusCode,
    cache_control: &str,
    value: serde_json::Value,
) -> Response<Vec<u8>> {
    let body = value.to_string().into_bytes();
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CONTENT_LENGTH, body.len())
        .header(http::header::CACHE_CONTROL, cache_control)
        .header("server", "tollgate-demo-origin")
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[async_trait]
impl ServeHttp for DemoOrigin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let n = self.served.fetch_add(1, Ordering::Relaxed) + 1;
        // Read (and discard) any request body so the connection stays usable.
        while let Ok(Some(_)) = session.read_request_body().await {}
        let req = session.req_header();
        let path = req.uri.path().to_owned();
        let query = req.uri.query().map(str::to_owned);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        match path.as_str() {
            "/reference/countries" => json_response(
                StatusCode::OK,
                "public, max-age=3600",
                json!({ "countries": COUNTRIES.iter().map(|(code, name, currency)| json!({
                    "code": code, "name": name, "currency": currency
                })).collect::<Vec<_>>() }),
            ),
            "/pricing/quote" => {
                let sku = query_param(query.as_deref(), "sku").unwrap_or("basic");
                let cents = 1000 + sku.bytes().map(u64::from).sum::<u64>() % 9000;
                json_response(
                    StatusCode::OK,
                    "public, max-age=60",
                    json!({ "sku": sku, "price_cents": cents, "currency": "USD", "quoted_at": now }),
                )
            }
            "/dashboard/stats" => json_response(
                StatusCode::OK,
                "private, no-cache",
                json!({ "origin_requests_served": n, "generated_at": now }),
            ),
            "/slow" => {
                let ms = query_param(query.as_deref(), "ms")
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(2000)
                    .min(10_000);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                json_response(StatusCode::OK, "no-store", json!({ "slept_ms": ms }))
            }
            _ => json_response(
                StatusCode::NOT_FOUND,
                "no-store",
                json!({ "error": "not_found", "message": format!("The demo origin has no {path}") }),
            ),
        }
    }
}
