use super::*;
use crate::config::model::{
    BackendConfig, HealthCheckConfig, PassiveHealth, Probe, UpstreamConfig,
};
use std::time::Duration;

fn pool(weights: &[usize]) -> UpstreamPool {
    pool_with(weights, None)
}

fn pool_with(weights: &[usize], health_check: Option<HealthCheckConfig>) -> UpstreamPool {
    let metrics = Metrics::new().expect("metrics");
    let config = UpstreamConfig {
        name: "api".into(),
        backends: weights
            .iter()
            .enumerate()
            .map(|(i, w)| BackendConfig {
                addr: SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16)),
                weight: *w,
            })
            .collect(),
        tls: None,
        host_header: None,
        health_check,
        passive: PassiveHealth {
            max_fails: 2,
            fail_timeout: Duration::from_secs(30),
            fail_on_5xx: false,
        },
        retries: 1,
        retry_on_5xx: false,
    };
    UpstreamPool::new(&config, &metrics, &UpstreamMemory::default()).expect("pool")
}

fn port(slot: &BackendSlot) -> u16 {
    slot.addr().port()
}

#[test]
fn busy_backend_gets_no_new_requests_while_a_free_one_exists() {
    let p = pool(&[1, 1]);
    let _parked: Vec<BackendLease> = (0..5).map(|_| p.slots()[0].lease()).collect();
    for _ in 0..100 {
        assert_eq!(port(p.select(None).expect("a backend")), 9001);
    }
}

#[test]
fn idle_equal_backends_share_load() {
    let p = pool(&[1, 1, 1]);
    let mut counts = [0usize; 3];
    for _ in 0..3000 {
        counts[(port(p.select(None).expect("a backend")) - 9000) as usize] += 1;
    }
    for c in counts {
        assert!((700..1300).contains(&c), "uneven share: {counts:?}");
    }
}

#[test]
fn weight_scales_the_connection_count() {
    let p = pool(&[1, 3]);
    // Backend 0 (weight 1) has 1 in flight, backend 1 (weight 3) has 2:
    // 1/1 > 2/3, so backend 1 is less loaded.
    let _a = p.slots()[0].lease();
    let _b = p.slots()[1].lease();
    let _c = p.slots()[1].lease();
    assert_eq!(port(p.select(None).expect("a backend")), 9001);
    let _d = p.slots()[1].lease();
    // Now 1/1 vs 3/3: tied, either may be chosen; 4/3 after one more.
    let _e = p.slots()[1].lease();
    assert_eq!(port(p.select(None).expect("a backend")), 9000);
}

#[test]
fn leases_release_on_drop() {
    let p = pool(&[1]);
    {
        let _l = p.slots()[0].lease();
        assert_eq!(p.slots()[0].in_flight(), 1);
    }
    assert_eq!(p.slots()[0].in_flight(), 0);
}

#[test]
fn early_release_is_counted_once() {
    let p = pool(&[1]);
    let mut lease = p.slots()[0].lease();
    lease.release();
    assert_eq!(p.slots()[0].in_flight(), 0);
    drop(lease);
    assert_eq!(p.slots()[0].in_flight(), 0);
}

#[test]
fn avoid_skips_a_backend_unless_it_is_the_only_one() {
    let p = pool(&[1, 1]);
    let first = SocketAddr::from(([127, 0, 0, 1], 9000));
    for _ in 0..50 {
        assert_eq!(port(p.select(Some(first)).expect("a backend")), 9001);
    }
    let single = pool(&[1]);
    assert_eq!(port(single.select(Some(first)).expect("a backend")), 9000);
}

#[test]
fn passively_failed_backends_are_not_selected() {
    let metrics = Metrics::new().expect("metrics");
    let p = pool(&[1, 1]);
    let first = &p.slots()[0];
    p.record_failure(first.state(), FailureKind::Connect, &metrics);
    assert!(p.is_ready(first));
    p.record_failure(first.state(), FailureKind::Closed, &metrics);
    assert!(!p.is_ready(first));
    assert!(!p.has_other_ready(p.slots()[1].addr()));
    for _ in 0..50 {
        assert_eq!(port(p.select(None).expect("a backend")), 9001);
    }
}

#[test]
fn backends_pingora_marks_not_ready_are_not_selected() {
    // Readiness comes from Pingora's view when a health check is configured;
    // disabling a backend there stands in for a failing check.
    let check = HealthCheckConfig {
        probe: Probe::Tcp,
        interval: Duration::from_secs(5),
        timeout: Duration::from_secs(1),
        healthy_threshold: 1,
        unhealthy_threshold: 1,
    };
    let p = pool_with(&[1, 1], Some(check));
    p.view.set_enable(&p.slots()[1].backend, false);
    for _ in 0..50 {
        assert_eq!(port(p.select(None).expect("a backend")), 9000);
    }
    p.view.set_enable(&p.slots()[0].backend, false);
    assert!(p.select(None).is_none());
}
