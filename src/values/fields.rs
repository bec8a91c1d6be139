//! Names of request fields that both the configuration checks and the
//! runtime must agree on: the tenant field's default, the forwarding
//! family a client may not set, and the override fields dropped unless
//! kept. `check` refuses a config that would let a client set one of
//! them; `headers` removes them from requests.

/// The tenant field when rate limiting is not configured: a client's own
/// copy is removed all the same, so nobody can claim a tenant upstream.
pub const DEFAULT_TENANT_HEADER: http::HeaderName = http::HeaderName::from_static("x-tenant");

/// Fields that tell an upstream who the client is, how it connected, or
/// which host, scheme, port or path it asked for — the whole family that
/// frameworks, CDNs and other proxies read, not only `X-Forwarded-*`. None
/// is in the cache key, so an origin that honoured a client's copy (a Rack
/// app behind TLS answering `X-Forwarded-Scheme: http` with a redirect to
/// https, say) would have that answer stored for everyone. From a peer
/// that is not a trusted proxy every one of them is removed, and
/// tollgate's own `X-Forwarded-For/-Proto/-Host` and `Forwarded` are set.
/// The one list (lower-case), documented in the book's Security chapter.
pub const FORWARDING_FIELDS: [&str; 38] = [
    // RFC 7239 and the de-facto X-Forwarded family.
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-forwarded-scheme",
    "x-forwarded-ssl",
    "x-forwarded-protocol",
    "x-forwarded-uri",
    "x-forwarded-path",
    "x-forwarded",
    "forwarded-for",
    "x-original-forwarded-for",
    // The scheme, as other stacks spell it.
    "front-end-https",
    "x-url-scheme",
    "x-scheme",
    "x-https",
    // The host.
    "x-host",
    "x-original-host",
    // The client's address, as CDNs and load balancers spell it.
    "x-real-ip",
    "x-client-ip",
    "client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-cluster-client-ip",
    "x-original-remote-addr",
    "x-remote-ip",
    "x-remote-addr",
    "x-originating-ip",
    "x-proxyuser-ip",
    "x-envoy-external-address",
    // Paths and certificates other proxies vouch for.
    "x-envoy-original-path",
    "x-envoy-internal",
    "x-forwarded-client-cert",
    "x-client-cert",
];

/// Request fields that make some frameworks serve another URL or method
/// than the request line says (IIS/Symfony/Laravel and friends). They are
/// not in the cache key, so they are dropped unless
/// `server.keep_override_headers` lists them.
pub const OVERRIDE_HEADERS: [&str; 7] = [
    "x-original-url",
    "x-rewrite-url",
    "x-override-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-http-destinationurl",
];
