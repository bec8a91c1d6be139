use super::*;
use crate::config::model::{
    BackendConfig, HealthCheckConfig, PassiveHealth, Probe, UpstreamConfig,
};
use crate::discovery::DnsName;
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
        names: Vec::new(),
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
        protocol: crate::config::model::UpstreamProtocol::Http1,
        max_streams: 100,
    };
    UpstreamPool::new(&config, &metrics, &UpstreamMemory::default()).expect("pool")
}

fn port(slot: Arc<BackendSlot>) -> u16 {
    slot.addr().port()
}

fn slots(p: &UpstreamPool) -> Vec<Arc<BackendSlot>> {
    p.members().slots().to_vec()
}

#[test]
fn busy_backend_gets_no_new_requests_while_a_free_one_exists() {
    let p = pool(&[1, 1]);
    let _parked: Vec<BackendLease> = (0..5).map(|_| slots(&p)[0].lease()).collect();
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
    let _a = slots(&p)[0].lease();
    let _b = slots(&p)[1].lease();
    let _c = slots(&p)[1].lease();
    assert_eq!(port(p.select(None).expect("a backend")), 9001);
    let _d = slots(&p)[1].lease();
    // Now 1/1 vs 3/3: tied, either may be chosen; 4/3 after one more.
    let _e = slots(&p)[1].lease();
    assert_eq!(port(p.select(None).expect("a backend")), 9000);
}

#[test]
fn leases_release_on_drop() {
    let p = pool(&[1]);
    {
        let _l = slots(&p)[0].lease();
        assert_eq!(slots(&p)[0].in_flight(), 1);
    }
    assert_eq!(slots(&p)[0].in_flight(), 0);
}

#[test]
fn early_release_is_counted_once() {
    let p = pool(&[1]);
    let mut lease = slots(&p)[0].lease();
    lease.release();
    assert_eq!(slots(&p)[0].in_flight(), 0);
    drop(lease);
    assert_eq!(slots(&p)[0].in_flight(), 0);
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
    let all = slots(&p);
    let first = &all[0];
    p.record_failure(first.state(), FailureKind::Connect, &metrics);
    assert!(p.is_ready(first));
    p.record_failure(first.state(), FailureKind::Closed, &metrics);
    assert!(!p.is_ready(first));
    assert!(!p.has_other_ready(slots(&p)[1].addr()));
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
    p.view.set_enable(&slots(&p)[1].backend, false);
    for _ in 0..50 {
        assert_eq!(port(p.select(None).expect("a backend")), 9000);
    }
    p.view.set_enable(&slots(&p)[0].backend, false);
    assert!(p.select(None).is_none());
}

/// A pool fed by one DNS name whose answer the test sets.
fn dns_pool(
    memory: &UpstreamMemory,
    check: Option<HealthCheckConfig>,
) -> (UpstreamPool, Arc<DnsName>) {
    use crate::config::model::{DnsQuery, NamedBackend};
    let metrics = Metrics::new().expect("metrics");
    let query = DnsQuery::Srv {
        name: "_http._tcp.users".into(),
    };
    let config = UpstreamConfig {
        name: "users".into(),
        backends: Vec::new(),
        names: vec![NamedBackend {
            query: query.clone(),
            weight: 1,
        }],
        tls: None,
        host_header: None,
        health_check: check,
        passive: PassiveHealth {
            max_fails: 2,
            fail_timeout: Duration::from_secs(30),
            fail_on_5xx: false,
        },
        retries: 1,
        retry_on_5xx: false,
        protocol: crate::config::model::UpstreamProtocol::Http1,
        max_streams: 100,
    };
    let pool = UpstreamPool::new(&config, &metrics, memory).expect("pool");
    (pool, memory.dns_target("users", &query))
}

fn answer(records: &[(&str, u16, u16)]) -> crate::discovery::resolver::Answer {
    crate::discovery::resolver::Answer {
        addrs: records
            .iter()
            .map(
                |(addr, priority, weight)| crate::discovery::resolver::Address {
                    addr: addr.parse().expect("addr"),
                    priority: *priority,
                    srv_weight: Some(*weight),
                    target: None,
                },
            )
            .collect(),
        ttl: Duration::from_secs(5),
    }
}

#[test]
fn a_name_that_never_resolved_leaves_the_pool_empty_until_it_does() {
    let memory = UpstreamMemory::default();
    let (p, target) = dns_pool(&memory, None);
    assert!(p.select(None).is_none());
    target.apply(Ok(answer(&[("127.0.0.2:80", 0, 0)])), &Default::default());
    assert!(p.sync(&memory), "the new answer changes the members");
    assert_eq!(
        p.select(None).expect("a backend").addr().to_string(),
        "127.0.0.2:80"
    );
    assert!(!p.sync(&memory), "nothing changed since");
}

#[test]
fn an_address_that_stays_keeps_its_slot_and_a_removed_one_drains() {
    let memory = UpstreamMemory::default();
    let (p, target) = dns_pool(&memory, None);
    target.apply(
        Ok(answer(&[("127.0.0.2:80", 0, 0), ("127.0.0.3:80", 0, 0)])),
        &Default::default(),
    );
    p.sync(&memory);
    let before = slots(&p);
    let lease = before[0].lease();
    target.apply(Ok(answer(&[("127.0.0.3:80", 0, 0)])), &Default::default());
    assert!(p.sync(&memory));
    let after = slots(&p);
    assert_eq!(after.len(), 1);
    assert!(
        Arc::ptr_eq(&after[0], &before[1]),
        "the staying address keeps its state"
    );
    for _ in 0..20 {
        assert_eq!(
            p.select(None).expect("a backend").addr().to_string(),
            "127.0.0.3:80"
        );
    }
    assert_eq!(
        lease.backend().in_flight(),
        1,
        "the removed backend finishes what it has"
    );
}

#[test]
fn srv_priorities_send_traffic_to_the_lowest_group_with_a_healthy_member() {
    let check = HealthCheckConfig {
        probe: Probe::Tcp,
        interval: Duration::from_secs(5),
        timeout: Duration::from_secs(1),
        healthy_threshold: 1,
        unhealthy_threshold: 1,
    };
    let memory = UpstreamMemory::default();
    let (p, target) = dns_pool(&memory, Some(check));
    target.apply(
        Ok(answer(&[
            ("127.0.0.2:80", 20, 1),
            ("127.0.0.3:80", 10, 1),
            ("127.0.0.4:80", 10, 1),
        ])),
        &Default::default(),
    );
    p.sync(&memory);
    for _ in 0..50 {
        let chosen = p.select(None).expect("a backend").addr().to_string();
        assert_ne!(
            chosen, "127.0.0.2:80",
            "priority 20 waits while priority 10 is healthy"
        );
    }
    for s in slots(&p).iter().filter(|s| s.priority() == 10) {
        p.view.set_enable(&s.backend, false);
    }
    for _ in 0..20 {
        assert_eq!(
            p.select(None).expect("a backend").addr().to_string(),
            "127.0.0.2:80"
        );
    }
}

#[test]
fn srv_weights_share_idle_traffic_in_proportion() {
    let memory = UpstreamMemory::default();
    let (p, target) = dns_pool(&memory, None);
    // One priority, not 0: every member is a candidate.
    target.apply(
        Ok(answer(&[("127.0.0.2:80", 10, 3), ("127.0.0.3:80", 10, 1)])),
        &Default::default(),
    );
    p.sync(&memory);
    let heavy = (0..4000)
        .filter(|_| p.select(None).expect("a backend").addr().to_string() == "127.0.0.2:80")
        .count();
    assert!(
        (2700..=3300).contains(&heavy),
        "3:1 expected, got {heavy} of 4000"
    );
}
