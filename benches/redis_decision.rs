//! Cost of one rate-limit decision through Redis (one Lua script, one round
//! trip), with criterion. Needs a Redis: set `TOLLGATE_BENCH_REDIS`, e.g.
//! `TOLLGATE_BENCH_REDIS=redis://127.0.0.1:6379 cargo bench --bench redis_decision`;
//! without it the benchmark says so and measures nothing. The local store
//! is measured in `benches/hot_path.rs`. Numbers: docs/book/src/benchmarks-history.md.

use criterion::{criterion_group, criterion_main, Criterion};
use std::time::{Duration, Instant};
use tollgate::config::model::RedisConfig;
use tollgate::ratelimit::gcra::Window;
use tollgate::ratelimit::local::Check;
use tollgate::ratelimit::redis::RedisBuckets;

fn redis_decision(c: &mut Criterion) {
    let Ok(url) = std::env::var("TOLLGATE_BENCH_REDIS") else {
        eprintln!("redis_decision: set TOLLGATE_BENCH_REDIS=redis://HOST:PORT to measure");
        return;
    };
    let windows = [
        Window::new(1_000_000, 60, 1_000_000),
        Window::new(50_000_000, 3600, 50_000_000),
    ];
    let keys: Vec<String> = (0..1000).map(|i| format!("t:tenant-{i}")).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let redis = RedisBuckets::new(&RedisConfig {
        url: tollgate::config::model::Secret::new(url.clone()),
        cluster: Vec::new(),
        timeout: Duration::from_millis(200),
        key_prefix: "tollgate:bench:".into(),
        breaker_failures: 3,
        breaker_open_for: Duration::from_secs(2),
    })
    .expect("redis client");
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis.is_degraded() {
            assert!(Instant::now() < deadline, "redis at {url} did not connect");
            tokio::time::sleep(Duration::from_millis(10)).await; // poll until connected
        }
    });
    let mut i = 0usize;
    c.bench_function(
        "ratelimit/redis decision (1000 tenants, minute + hour)",
        |b| {
            b.iter(|| {
                i = (i + 1) % keys.len();
                let v = rt
                    .block_on(redis.decide(&[Check {
                        key: &keys[i],
                        windows: &windows,
                        cost: 1,
                    }]))
                    .result
                    .expect("redis decision");
                assert!(v[0].allowed);
            })
        },
    );
}

criterion_group!(benches, redis_decision);
criterion_main!(benches);
