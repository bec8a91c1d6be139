//! What a DNS answer may add to a pool. Answers come from outside (a name
//! server, or whoever controls the zone), so before their addresses
//! become backends they are bounded in number and screened: nothing that
//! is not a unicast host (unspecified, multicast, broadcast), nothing
//! link-local (169.254.169.254 is the cloud metadata service), and none
//! of tollgate's own listeners (a loop, or the admin port).

use super::resolver::{Address, Answer, Failure};
use std::net::{IpAddr, SocketAddr};

/// At most this many addresses of one answer become backends (in answer
/// order); a name that returns thousands of records would otherwise make
/// as many backends, health checks and `/health` entries.
pub const MAX_ADDRESSES: usize = 128;

/// What screening left out of an answer, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Screened {
    /// Addresses refused, with why.
    pub refused: Vec<(SocketAddr, &'static str)>,
    /// Addresses past [`MAX_ADDRESSES`].
    pub over_limit: usize,
}

/// The answer with refused addresses left out and at most
/// [`MAX_ADDRESSES`] kept; a failure when none is left.
pub fn screen(
    answer: Answer,
    own: &[SocketAddr],
    name: &str,
) -> (Result<Answer, Failure>, Screened) {
    let mut screened = Screened::default();
    let mut addrs: Vec<Address> = Vec::with_capacity(answer.addrs.len().min(MAX_ADDRESSES));
    for address in answer.addrs {
        if let Some(why) = refusal(address.addr, own) {
            screened.refused.push((address.addr, why));
        } else if addrs.len() < MAX_ADDRESSES {
            addrs.push(address);
        } else {
            screened.over_limit += 1;
        }
    }
    if addrs.is_empty() {
        let failure = Failure {
            result: "no_records",
            message: format!("{name}: every address was refused ({screened:?})"),
        };
        return (Err(failure), screened);
    }
    (
        Ok(Answer {
            addrs,
            ttl: answer.ttl,
        }),
        screened,
    )
}

/// Why `addr` may not be a backend, if it may not.
fn refusal(addr: SocketAddr, own: &[SocketAddr]) -> Option<&'static str> {
    let ip = match addr.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    if ip.is_unspecified() || ip.is_multicast() {
        return Some("not a unicast address");
    }
    let link_local = match ip {
        IpAddr::V4(v4) => v4.is_link_local() || v4.is_broadcast(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    };
    if link_local {
        return Some("link-local or broadcast (cloud metadata lives there)");
    }
    // A listener's own address, or this machine's loopback on its port
    // (a listener on 0.0.0.0 answers there too). Other hosts on the same
    // port are other machines.
    let is_own = own.iter().any(|listener| {
        listener.port() == addr.port() && (listener.ip() == ip || ip.is_loopback())
    });
    if is_own {
        return Some("one of tollgate's own listeners");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn answer(addrs: &[&str]) -> Answer {
        super::super::resolver::answer_for_tests(addrs, Duration::from_secs(30))
    }

    fn kept(result: &Result<Answer, Failure>) -> Vec<String> {
        result
            .as_ref()
            .map(|a| a.addrs.iter().map(|a| a.addr.to_string()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn metadata_multicast_and_own_listeners_are_refused() {
        let own: Vec<SocketAddr> = vec![
            "0.0.0.0:8080".parse().expect("a"),
            "127.0.0.1:9090".parse().expect("a"),
        ];
        let (result, screened) = screen(
            answer(&[
                "10.0.0.1:8000",
                "169.254.169.254:80",
                "[fe80::1]:80",
                "0.0.0.0:80",
                "224.0.0.1:80",
                "255.255.255.255:80",
                "127.0.0.1:9090",
                "127.0.0.1:8080",
                "[::ffff:169.254.169.254]:80",
                "[::1]:9090",
                "127.0.0.1:8000",
                "10.0.0.2:8080",
            ]),
            &own,
            "api.internal",
        );
        assert_eq!(
            kept(&result),
            ["10.0.0.1:8000", "127.0.0.1:8000", "10.0.0.2:8080"]
        );
        assert_eq!(screened.refused.len(), 9, "{screened:?}");
    }

    #[test]
    fn an_answer_is_capped_and_one_with_nothing_left_fails() {
        let many: Vec<String> = (0..MAX_ADDRESSES + 50)
            .map(|i| format!("10.1.{}.{}:80", i / 250, i % 250 + 1))
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let (result, screened) = screen(answer(&many), &[], "big");
        assert_eq!(kept(&result).len(), MAX_ADDRESSES);
        assert_eq!(screened.over_limit, 50);
        let (result, _) = screen(answer(&["169.254.169.254:80"]), &[], "meta");
        assert_eq!(result.err().map(|f| f.result), Some("no_records"));
    }
}
