//! DNS rebinding: a page on `attacker.example` whose name is re-pointed at
//! 127.0.0.1 makes the operator's browser send it requests to the admin
//! listener that the browser considers same-origin, and reads the
//! answers (`/status.json`, `/health`, `/metrics` are open to reads by
//! default). Such requests carry the attacker's name in `Host`, so the
//! admin listener answers only to its own kinds of names: IP addresses,
//! `localhost`, and the names listed in `admin.hosts`.

use pingora::http::RequestHeader;

/// Whether the admin listener answers a request with this `Host`: none
/// (HTTP/1.0 tools), an IP address, `localhost`, or one of `allowed`
/// (normalised host names, `admin.hosts`). Ports are ignored.
pub fn host_allowed(req: &RequestHeader, allowed: &[String]) -> bool {
    let Some(value) = req.headers.get(http::header::HOST) else {
        return true;
    };
    let Some(host) = crate::values::host::Host::parse(value.as_bytes()) else {
        return false;
    };
    let name = host.as_str();
    let literal = name.trim_start_matches('[').trim_end_matches(']');
    literal.parse::<std::net::IpAddr>().is_ok()
        || name == "localhost"
        || allowed.iter().any(|a| a == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_host(host: Option<&str>) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/status.json", None).expect("request");
        if let Some(host) = host {
            req.insert_header("host", host).expect("host");
        }
        req
    }

    #[test]
    fn addresses_localhost_and_listed_names_are_answered() {
        let allowed = ["tollgate.internal".to_owned()];
        for host in [
            None,
            Some("127.0.0.1:9090"),
            Some("10.0.0.7"),
            Some("[::1]:9090"),
            Some("localhost:9090"),
            Some("LOCALHOST"),
            Some("Tollgate.Internal:9090"),
            Some("tollgate.internal."),
        ] {
            assert!(host_allowed(&with_host(host), &allowed), "{host:?}");
        }
    }

    #[test]
    fn a_rebinding_pages_name_is_not() {
        let allowed = ["tollgate.internal".to_owned()];
        for host in [
            "attacker.example",
            "attacker.example:9090",
            "127.0.0.1.nip.io",
            "localhost.attacker.example",
            "tollgate.internal.attacker.example",
            "",
            "bad host",
        ] {
            assert!(!host_allowed(&with_host(Some(host)), &allowed), "{host:?}");
        }
    }
}
