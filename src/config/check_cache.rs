//! Validation of caching: the process-wide limits (`cache:`), each route's
//! cache policy, and response compression.

use super::file;
use super::locate::FieldPath;
use super::model::*;
use super::Checker;

impl Checker<'_> {
    pub(super) fn cache_redis(
        &mut self,
        spec: Option<&file::CacheSpec>,
        redis: Option<&RedisConfig>,
        path: &FieldPath,
    ) -> Option<CacheRedisConfig> {
        let spec = spec?.redis.as_ref()?;
        if spec.enabled == Some(false) {
            return None;
        }
        let path = path.key("redis");
        if redis.is_none() {
            self.problem(
                path.clone(),
                "the cache's Redis tier uses the top-level redis connection: add redis: { url: ... }",
            );
        }
        let config = CacheRedisConfig {
            max_object_size: spec.max_object_size.map_or(1024 * 1024, |s| s.0),
            key_prefix: spec
                .key_prefix
                .clone()
                .unwrap_or_else(|| "tollgate:cache:".to_owned()),
            lookup_timeout: spec.lookup_timeout.map_or(ms(20), |d| d.0),
            write_timeout: spec.write_timeout.map_or(ms(1000), |d| d.0),
            purge_timeout: spec.purge_timeout.map_or(ms(60_000), |d| d.0),
            listen_timeout: spec.listen_timeout.map_or(ms(2000), |d| d.0),
            purge_marker_ttl: spec.purge_marker_ttl.map_or(ms(60_000), |d| d.0),
        };
        for (field, value) in [
            ("lookup_timeout", config.lookup_timeout),
            ("write_timeout", config.write_timeout),
            ("purge_timeout", config.purge_timeout),
            ("listen_timeout", config.listen_timeout),
        ] {
            if value.is_zero() {
                self.problem(path.key(field), "must be longer than zero");
            }
        }
        if config.purge_marker_ttl <= config.write_timeout * 2 {
            self.problem(
                path.key("purge_marker_ttl"),
                format!(
                    "must be longer than twice write_timeout ({:?}): writes older than the markers are dropped",
                    config.write_timeout
                ),
            );
        }
        if redis.is_some_and(|r| r.key_prefix == config.key_prefix) {
            self.problem(
                path.key("key_prefix"),
                "must differ from redis.key_prefix (the rate limiter's keys)",
            );
        }
        Some(config)
    }

    pub(super) fn cache_tags(
        &mut self,
        spec: Option<&file::CacheSpec>,
        path: &FieldPath,
    ) -> CacheTags {
        let mut header =
            |field: &str, name: &str| match http::HeaderName::from_bytes(name.as_bytes()) {
                Ok(h) => Some(h),
                Err(_) => {
                    self.problem(
                        path.key(field),
                        format!("{name:?} is not a header field name"),
                    );
                    None
                }
            };
        let headers = match spec.and_then(|c| c.tag_headers.as_ref()) {
            Some(names) => names
                .iter()
                .filter_map(|n| header("tag_headers", n))
                .collect(),
            None => vec![
                http::HeaderName::from_static("surrogate-key"),
                http::HeaderName::from_static("cache-tag"),
            ],
        };
        let invalidation_header = match spec.and_then(|c| c.invalidation_header.as_deref()) {
            Some("") => None,
            Some(name) => header("invalidation_header", name),
            None => Some(http::HeaderName::from_static("x-invalidate-tags")),
        };
        CacheTags {
            headers,
            strip: spec.and_then(|c| c.strip_tag_headers).unwrap_or(true),
            invalidation_header,
        }
    }

    pub(super) fn cache_limits(
        &mut self,
        spec: Option<&file::CacheSpec>,
        path: &FieldPath,
    ) -> CacheLimits {
        let limits = CacheLimits {
            max_size: spec
                .and_then(|c| c.max_size)
                .map_or(defaults::CACHE_MAX_SIZE, |s| s.0),
            max_object_size: spec
                .and_then(|c| c.max_object_size)
                .map_or(defaults::CACHE_MAX_OBJECT, |s| s.0),
            lock_timeout: spec
                .and_then(|c| c.lock_timeout)
                .map_or(defaults::CACHE_LOCK_TIMEOUT, |d| d.0),
        };
        if limits.max_object_size > limits.max_size {
            self.problem(
                path.key("max_object_size"),
                "max_object_size is larger than max_size",
            );
        }
        if limits.lock_timeout.is_zero() {
            self.problem(
                path.key("lock_timeout"),
                "lock_timeout must be greater than zero",
            );
        }
        limits
    }

    pub(super) fn route_cache(
        &mut self,
        spec: &file::RouteCacheSpec,
        path: &FieldPath,
    ) -> RouteCache {
        let statuses = spec
            .statuses
            .clone()
            .unwrap_or_else(|| defaults::CACHEABLE_STATUSES.to_vec());
        if statuses.is_empty()
            || statuses
                .iter()
                .any(|s| !(200..=599).contains(s) || *s == 206)
        {
            self.problem(
                path.key("statuses"),
                "statuses must list final HTTP statuses (200-599, not 206)",
            );
        }
        let mut key_headers = Vec::new();
        for (i, name) in spec.key.headers.iter().enumerate() {
            match http::HeaderName::from_bytes(name.as_bytes()) {
                Ok(h) => key_headers.push(h),
                Err(_) => self.problem(
                    path.key("key").key("headers").index(i),
                    format!("invalid header name {name:?}"),
                ),
            }
        }
        if let (Some(d), Some(m)) = (spec.default_ttl, spec.max_ttl) {
            if d.0 > m.0 {
                self.warn(
                    &path.key("default_ttl"),
                    "default_ttl is longer than max_ttl; max_ttl applies",
                );
            }
        }
        let targeted_fields = match &spec.targeted_fields {
            None => RouteCache::default().targeted_fields,
            Some(names) => {
                let mut fields = Vec::with_capacity(names.len());
                for (i, name) in names.iter().enumerate() {
                    match http::HeaderName::from_bytes(name.as_bytes()) {
                        Ok(h) if h != http::header::CACHE_CONTROL => fields.push(h),
                        _ => self.problem(
                            path.key("targeted_fields").index(i),
                            format!("{name:?} is not a header name other than Cache-Control"),
                        ),
                    }
                }
                fields
            }
        };
        RouteCache {
            targeted_fields,
            strip_targeted_fields: spec.strip_targeted_fields,
            strip_set_cookie: matches!(spec.set_cookie, Some(file::SetCookieSpec::Strip)),
            expose_key: spec.expose_key,
            default_ttl: spec.default_ttl.map(|d| d.0),
            max_ttl: spec.max_ttl.map(|d| d.0),
            stale_while_revalidate: spec
                .stale_while_revalidate
                .map_or(std::time::Duration::ZERO, |d| d.0),
            stale_if_error: spec
                .stale_if_error
                .map_or(std::time::Duration::ZERO, |d| d.0),
            statuses,
            heuristic_freshness: spec.heuristic_freshness.unwrap_or(true),
            exclude_query: spec.key.exclude_query.clone(),
            ignore_query: spec.key.ignore_query,
            sort_query: spec.key.sort_query.unwrap_or(true),
            key_headers,
        }
    }

    pub(super) fn compression(
        &mut self,
        spec: &file::CompressionSpec,
        path: &FieldPath,
    ) -> CompressionConfig {
        let mut level = |field: &str, value: Option<u32>, default: u32, max: u32| {
            let v = value.unwrap_or(default);
            if !(1..=max).contains(&v) {
                self.problem(
                    path.key(field),
                    format!("{field} must be between 1 and {max}"),
                );
            }
            v
        };
        let gzip_level = level("gzip_level", spec.gzip_level, 6, 9);
        // Brotli is on at quality 4 unless `brotli_quality: 0` turns it off.
        let brotli_quality = match spec.brotli_quality {
            Some(0) => None,
            q => Some(level("brotli_quality", q, 4, 11)),
        };
        let zstd_level = level("zstd_level", spec.zstd_level, 3, 19);
        CompressionConfig {
            min_size: spec
                .min_size
                .map_or(defaults::COMPRESSION_MIN_SIZE, |s| s.0),
            gzip_level,
            brotli_quality,
            zstd_level,
            content_types: spec
                .content_types
                .clone()
                .unwrap_or_else(|| {
                    defaults::COMPRESSIBLE_TYPES
                        .iter()
                        .map(|s| (*s).to_owned())
                        .collect()
                })
                .into_iter()
                .map(|t| t.to_ascii_lowercase())
                .collect(),
        }
    }
}

fn ms(millis: u64) -> std::time::Duration {
    std::time::Duration::from_millis(millis)
}
