//! A route's weighted split between pools (`routes[].upstreams`): each
//! request picks a pool by weight — then least-connections inside it, and
//! retries stay there — unless stickiness keeps the client on the pool it
//! got first: a cookie tollgate sets to the pool's name and reads back,
//! or a request field (a user id) whose hash picks the pool, the same on
//! every instance.

use crate::config::model::Sticky;
use crate::upstream::UpstreamPool;
use pingora::http::RequestHeader;
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// A compiled split.
pub struct Split {
    members: Vec<(Arc<UpstreamPool>, u32)>,
    /// The last member: where a point past the weights would land.
    last: Arc<UpstreamPool>,
    total: u64,
    sticky: Option<Sticky>,
}

/// The pool a request goes to, and the cookie to set when stickiness by
/// cookie chose it now.
pub struct Choice {
    /// The pool.
    pub pool: Arc<UpstreamPool>,
    /// `Set-Cookie` value for the response.
    pub set_cookie: Option<String>,
}

impl Split {
    /// A split of `members` (weights ≥ 1, checked by `check`); `None`
    /// without members.
    pub fn new(members: Vec<(Arc<UpstreamPool>, u32)>, sticky: Option<Sticky>) -> Option<Self> {
        let total = members.iter().map(|(_, w)| u64::from(*w)).sum();
        let last = members.last()?.0.clone();
        Some(Self {
            members,
            last,
            total,
            sticky,
        })
    }

    /// The pools, with their weights.
    pub fn members(&self) -> &[(Arc<UpstreamPool>, u32)] {
        &self.members
    }

    /// Picks the pool for `req` (`tls`: whether the cookie may be `Secure`).
    pub fn choose(&self, req: &RequestHeader, tls: bool) -> Choice {
        match &self.sticky {
            Some(Sticky::Cookie(name)) => {
                if let Some(pool) = cookie(req, name)
                    .and_then(|value| self.members.iter().find(|(p, _)| p.name() == value))
                {
                    return Choice {
                        pool: pool.0.clone(),
                        set_cookie: None,
                    };
                }
                let pool = self.by_point(rand::random::<u64>() % self.total.max(1));
                let secure = if tls { "; Secure" } else { "" };
                Choice {
                    set_cookie: Some(format!(
                        "{name}={}; Path=/; HttpOnly; SameSite=Lax{secure}",
                        pool.name()
                    )),
                    pool,
                }
            }
            Some(Sticky::Header(field)) => {
                let point = match req.headers.get(field) {
                    Some(value) => {
                        let digest = Sha256::digest(value.as_bytes());
                        let mut head = [0u8; 8];
                        head.copy_from_slice(&digest[..8]);
                        u64::from_be_bytes(head) % self.total.max(1)
                    }
                    None => rand::random::<u64>() % self.total.max(1),
                };
                Choice {
                    pool: self.by_point(point),
                    set_cookie: None,
                }
            }
            None => Choice {
                pool: self.by_point(rand::random::<u64>() % self.total.max(1)),
                set_cookie: None,
            },
        }
    }

    /// The member whose share of `0..total` holds `point`.
    fn by_point(&self, mut point: u64) -> Arc<UpstreamPool> {
        for (pool, weight) in &self.members {
            if point < u64::from(*weight) {
                return pool.clone();
            }
            point -= u64::from(*weight);
        }
        self.last.clone()
    }
}

/// The value of cookie `name` in the request's `Cookie` fields.
fn cookie<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (n, v) = pair.trim().split_once('=')?;
            (n == name).then_some(v.trim())
        })
}
