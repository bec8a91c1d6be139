//! Cost of one rate-limit decision, local and (when `TOLLGATE_BENCH_REDIS`
//! names a Redis URL) through Redis. Not a test: `cargo bench --bench decision`.
//!
//! Measured 2026-11-23 on the project machine (release, one core busy with
//! nothing else): see docs/BENCHMARKS.md.

use std::time::{Duration, Instant};
use tollgate::config::model::RedisConfig;
use tollgate::ratelimit::gcra::Window;
use tollgate::ratelimit::local::{Check, LocalBuckets};
use tollgate::ratelimit::redis::RedisBuckets;

fn per_op(label: &str, n: u32, elapsed: Duration) {
    println!(
        "{label:<40} {:>9.0} ns/decision",
        elapsed.as_nanos() as f64 / f64::from(n)
    );
}

fn main() {
    let windows = [
        Window::new(1_000_000, 60, 1_000_000),
        Window::new(50_000_000, 3600, 50_000_000),
    ];
    let keys: Vec<String> = (0..1000).map(|i| format!("t:tenant-{i}")).collect();

    let local = LocalBuckets::new();
    let n = 1_000_000u32;
    let started = Instant::now();
    for i in 0..n {
        let key = &keys[(i % 1000) as usize];
        let v = local.decide(&[Check {
            key,
            windows: &windows,
            cost: 1,
        }]);
        assert!(v[0].allowed);
    }
    per_op("local, 1000 tenants, minute+hour", n, started.elapsed());

    let Ok(url) = std::env::var("TOLLGATE_BENCH_REDIS") else {
        println!("(set TOLLGATE_BENCH_REDIS=redis://127.0.0.1:6379 to measure Redis decisions)");
        return;
    };
    let redis = RedisBuckets::new(&RedisConfig {
        url,
        timeout: Duration::from_millis(200),
        key_prefix: "tollgate:bench:".into(),
    })
    .expect("redis client");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis.is_degraded() {
            assert!(Instant::now() < deadline, "redis did not connect");
            tokio::time::sleep(Duration::from_millis(10)).await; // poll until connected
        }
        let n = 20_000u32;
        let started = Instant::now();
        for i in 0..n {
            let key = &keys[(i % 1000) as usize];
            let v = redis
                .decide(&[Check {
                    key,
                    windows: &windows,
                    cost: 1,
                }])
                .await
                .expect("redis decision");
            assert!(v[0].allowed);
        }
        per_op("redis (sequential round trips)", n, started.elapsed());
    });
}
