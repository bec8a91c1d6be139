//! The label values the metrics take: fixed lists, so a client cannot
//! create series (methods fold into `OTHER`), and the histogram bounds.

use http::Method;

/// Latency buckets for API requests, in seconds: 1 ms to 60 s.
/// Bounds of the latency histograms, in seconds (the status page reads them too).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Method label values. Extension methods are folded into `OTHER` so a
/// client cannot create series.
pub const METHOD_LABELS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "OTHER",
];

/// Index of a method in [`METHOD_LABELS`].
pub fn method_index(method: &Method) -> usize {
    match *method {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::PATCH => 4,
        Method::DELETE => 5,
        Method::OPTIONS => 6,
        _ => 7,
    }
}

/// Route label used for requests that matched no route.
pub const NO_ROUTE: &str = "(none)";

/// Every `result` label of `tollgate_dns_resolutions_total`.
pub const DNS_RESULTS: [&str; 8] = [
    "ok",
    "timeout",
    "nxdomain",
    "no_records",
    "servfail",
    "refused",
    "unreachable",
    "error",
];
