//! Sets of HTTP methods, as routes and the config name them.

use http::Method;

/// A set of HTTP methods, as a bit mask. `ANY` also matches extension methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodSet(u16);

const KNOWN_METHODS: [(&str, u16); 9] = [
    ("GET", 1 << 0),
    ("HEAD", 1 << 1),
    ("POST", 1 << 2),
    ("PUT", 1 << 3),
    ("DELETE", 1 << 4),
    ("PATCH", 1 << 5),
    ("OPTIONS", 1 << 6),
    ("CONNECT", 1 << 7),
    ("TRACE", 1 << 8),
];

impl MethodSet {
    /// Every method, including extension methods.
    pub const ANY: MethodSet = MethodSet(u16::MAX);

    /// Builds a set from method names (case-insensitive).
    pub fn from_names<S: AsRef<str>>(names: &[S]) -> Result<Self, String> {
        if names.is_empty() {
            return Err(
                "methods must not be empty (leave the field out to allow every method)".into(),
            );
        }
        let mut bits = 0u16;
        for name in names {
            let upper = name.as_ref().to_ascii_uppercase();
            let bit = KNOWN_METHODS
                .iter()
                .find(|(n, _)| *n == upper)
                .map(|(_, b)| *b)
                .ok_or_else(|| {
                    format!(
                        "unknown method {:?} (one of GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, CONNECT, TRACE)",
                        name.as_ref()
                    )
                })?;
            bits |= bit;
        }
        Ok(MethodSet(bits))
    }

    fn bit(method: &Method) -> Option<u16> {
        let bit = match *method {
            Method::GET => 1 << 0,
            Method::HEAD => 1 << 1,
            Method::POST => 1 << 2,
            Method::PUT => 1 << 3,
            Method::DELETE => 1 << 4,
            Method::PATCH => 1 << 5,
            Method::OPTIONS => 1 << 6,
            Method::CONNECT => 1 << 7,
            Method::TRACE => 1 << 8,
            _ => return None,
        };
        Some(bit)
    }

    /// Whether a request with this method may use the route.
    pub fn contains(self, method: &Method) -> bool {
        if self == Self::ANY {
            return true;
        }
        Self::bit(method).is_some_and(|b| self.0 & b != 0)
    }

    /// Whether every method in `other` is also in `self`.
    pub fn covers(self, other: MethodSet) -> bool {
        self == Self::ANY || (other != Self::ANY && other.0 & !self.0 == 0)
    }
}

/// Whether `method` is safe (RFC 9110 §9.2.1): GET, HEAD, OPTIONS, TRACE.
/// Every other method, extension methods included, may change state.
pub fn is_safe(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_sets_cover_subsets() {
        let get_head = MethodSet::from_names(&["GET", "head"]).expect("set");
        let get = MethodSet::from_names(&["GET"]).expect("set");
        assert!(get_head.covers(get));
        assert!(!get.covers(get_head));
        assert!(MethodSet::ANY.covers(get));
        assert!(!get.covers(MethodSet::ANY));
        assert!(MethodSet::from_names(&["FETCH"]).is_err());
    }
}
