//! A pool's current members, and the membership source that tells
//! Pingora's backend view (and so the active-health registry) about them.

use super::BackendSlot;
use async_trait::async_trait;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::Backend;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Where a backend came from.
#[derive(Debug, Clone)]
pub enum BackendOrigin {
    /// An IP address in the config file.
    Config,
    /// An answer for a DNS name.
    Dns {
        /// The name as configured (`api.internal:8080`, `srv _http._tcp.users`).
        name: Box<str>,
        /// The SRV target, for SRV names.
        target: Option<Box<str>>,
        /// When the address first appeared in the name's answers.
        since: SystemTime,
    },
}

/// The backends of a pool at one moment. A request selects on the
/// snapshot it loaded; a DNS change publishes a new one.
#[derive(Default)]
pub struct Members {
    slots: Box<[Arc<BackendSlot>]>,
    /// Whether priorities differ (an SRV set with several priorities):
    /// selection then looks at the lowest priority with a candidate first.
    prioritized: bool,
}

impl Members {
    /// Members over `slots`.
    pub fn new(slots: Vec<Arc<BackendSlot>>) -> Self {
        let prioritized = slots
            .first()
            .is_some_and(|first| slots.iter().any(|s| s.priority != first.priority));
        Self {
            slots: slots.into_boxed_slice(),
            prioritized,
        }
    }

    /// Every backend, config addresses first, then each name's answers.
    pub fn slots(&self) -> &[Arc<BackendSlot>] {
        &self.slots
    }

    /// Whether selection must honour priorities.
    pub fn prioritized(&self) -> bool {
        self.prioritized
    }
}

/// Pingora's `ServiceDiscovery` over the set [`MembershipSource::set`]
/// last published. Pingora's own `Static` discovery has no way to replace
/// its set once built, which a pool fed by DNS needs.
#[derive(Default)]
pub struct MembershipSource {
    backends: Mutex<BTreeSet<Backend>>,
}

impl MembershipSource {
    /// Publishes the set the next view update reads.
    pub fn set(&self, backends: BTreeSet<Backend>) {
        *self.backends.lock().unwrap_or_else(|p| p.into_inner()) = backends;
    }
}

/// The handle Pingora's view owns; the pool keeps the other one.
pub struct SharedMembership(pub Arc<MembershipSource>);

#[async_trait]
impl ServiceDiscovery for SharedMembership {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let backends = self
            .0
            .backends
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Ok((backends, HashMap::new()))
    }
}
