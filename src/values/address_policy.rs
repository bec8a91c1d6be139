//! Source-address allow and deny lists (a route's or a tenant's
//! `addresses`), compiled into one binary prefix trie per address family
//! so a decision costs at most 32 (IPv4) or 128 (IPv6) steps however long
//! the lists are.
//!
//! The rule: the **most specific** listed network containing the address
//! decides (`allow` admits, `deny` refuses), as a routing table picks a
//! route; an address no listed network contains is admitted only when
//! there is no `allow` list. So `allow: [10.0.0.0/8], deny: [10.9.0.0/16]`
//! admits 10.1.2.3 and refuses 10.9.1.1, and `deny: [10.0.0.0/8], allow:
//! [10.9.9.0/24]` refuses all of 10/8 but that /24. An IPv4-mapped IPv6
//! address (`::ffff:a.b.c.d`, how a dual-stack listener sees IPv4
//! clients) is judged as the IPv4 address it is.

use ipnet::IpNet;
use std::net::IpAddr;

/// One node of a binary trie: its two children (0 = none) and the verdict
/// of the network that ends here, if one does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Node {
    children: [u32; 2],
    verdict: Option<bool>,
}

/// A binary trie over the bits of addresses of one family.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Trie {
    nodes: Vec<Node>,
    /// Where the walk stands after an address's first eight bits, for
    /// each of their 256 values: the node reached (0: the walk ended
    /// there) and the verdict found on the way. Filled by `seal`; the
    /// first byte costs one index instead of eight steps.
    first_byte: Vec<(u32, Option<bool>)>,
}

impl Trie {
    fn new() -> Self {
        Self {
            first_byte: Vec::new(),
            nodes: vec![Node::default()],
        }
    }

    /// Marks the network whose first `len` bits are those of `bits`
    /// (left-aligned in a u128).
    fn insert(&mut self, bits: u128, len: u8, admit: bool) {
        let mut at = 0usize;
        for i in 0..len {
            let bit = ((bits >> (127 - u32::from(i))) & 1) as usize;
            let next = self.nodes[at].children[bit];
            at = if next == 0 {
                self.nodes.push(Node::default());
                let new = self.nodes.len() - 1;
                self.nodes[at].children[bit] = new as u32;
                new
            } else {
                next as usize
            };
        }
        self.nodes[at].verdict = Some(admit);
    }

    /// Fills `first_byte` once every network is in.
    fn seal(&mut self) {
        self.first_byte = (0..=255u8)
            .map(|byte| {
                let bits = u128::from(byte) << 120;
                let (at, found) = self.walk(bits, 0, 8, 0, self.nodes[0].verdict);
                (at as u32, found)
            })
            .collect();
    }

    /// The verdict of the longest listed prefix of `bits` (`width` bits
    /// long), if any.
    fn longest(&self, bits: u128, width: u8) -> Option<bool> {
        match self.first_byte.get((bits >> 120) as usize) {
            Some(&(0, found)) => found,
            Some(&(at, found)) => self.walk(bits, 8, width, at as usize, found).1,
            None => self.walk(bits, 0, width, 0, self.nodes[0].verdict).1,
        }
    }

    /// Walks bits `from..to` of `bits` from node `at`, `found` the verdict
    /// so far: the node where the walk stopped (0 when it ran out of
    /// children) and the last verdict on the way.
    fn walk(
        &self,
        bits: u128,
        from: u8,
        to: u8,
        mut at: usize,
        mut found: Option<bool>,
    ) -> (usize, Option<bool>) {
        for i in from..to {
            let bit = ((bits >> (127 - u32::from(i))) & 1) as usize;
            match self.nodes[at].children[bit] {
                0 => return (0, found),
                next => {
                    at = next as usize;
                    if let Some(v) = self.nodes[at].verdict {
                        found = Some(v);
                    }
                }
            }
        }
        (at, found)
    }
}

/// A compiled `addresses` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressPolicy {
    v4: Trie,
    v6: Trie,
    /// With an `allow` list, unlisted addresses are refused.
    default_admit: bool,
    /// Entries listed, for the documentation of a refusal in logs.
    entries: usize,
}

/// Why an `addresses` block cannot be compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyProblem {
    /// Not an address or a network (`ip` or `ip/len`).
    NotANetwork(String),
    /// `ip/len` with bits set past the prefix: which network was meant?
    HostBits {
        /// The entry as written.
        written: String,
        /// The network it is inside of.
        network: IpNet,
    },
    /// The same network is both allowed and denied.
    BothLists(IpNet),
}

impl PolicyProblem {
    /// The sentence `check` prints.
    pub fn message(&self) -> String {
        match self {
            Self::NotANetwork(s) => {
                format!("{s:?} is not an address or a network (write 10.0.0.0/8, 2001:db8::/32 or 192.0.2.7)")
            }
            Self::HostBits { written, network } => {
                format!("{written} has bits set past its prefix length: write {network}")
            }
            Self::BothLists(net) => format!("{net} is both allowed and denied"),
        }
    }
}

/// Reads one list entry: a network (`ip/len`, no host bits) or an
/// address (a /32 or /128).
pub fn parse_network(s: &str) -> Result<IpNet, PolicyProblem> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    let net = s
        .parse::<IpNet>()
        .map_err(|_| PolicyProblem::NotANetwork(s.to_owned()))?;
    if net.trunc() != net {
        return Err(PolicyProblem::HostBits {
            written: s.to_owned(),
            network: net.trunc(),
        });
    }
    Ok(net)
}

impl AddressPolicy {
    /// Compiles the lists; a network in both is a problem.
    pub fn new(allow: &[IpNet], deny: &[IpNet]) -> Result<Self, PolicyProblem> {
        if let Some(both) = allow.iter().find(|a| deny.contains(a)) {
            return Err(PolicyProblem::BothLists(*both));
        }
        let mut policy = Self {
            v4: Trie::new(),
            v6: Trie::new(),
            default_admit: allow.is_empty(),
            entries: allow.len() + deny.len(),
        };
        let lists = allow
            .iter()
            .map(|n| (n, true))
            .chain(deny.iter().map(|n| (n, false)));
        for (net, admit) in lists {
            match net {
                IpNet::V4(v4) => {
                    let bits = u128::from(u32::from(v4.network())) << 96;
                    policy.v4.insert(bits, v4.prefix_len(), admit);
                }
                IpNet::V6(v6) => {
                    let bits = u128::from(v6.network());
                    policy.v6.insert(bits, v6.prefix_len(), admit);
                }
            }
        }
        policy.v4.seal();
        policy.v6.seal();
        Ok(policy)
    }

    /// Whether `ip` may pass.
    pub fn admits(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let verdict = match ip {
            IpAddr::V4(v4) => self.v4.longest(u128::from(u32::from(v4)) << 96, 32),
            IpAddr::V6(v6) => self.v6.longest(u128::from(v6), 128),
        };
        verdict.unwrap_or(self.default_admit)
    }

    /// How many networks the lists hold.
    pub fn len(&self) -> usize {
        self.entries
    }

    /// Whether the lists are empty (everything admitted).
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter()
            .map(|s| parse_network(s).expect("network"))
            .collect()
    }

    fn policy(allow: &[&str], deny: &[&str]) -> AddressPolicy {
        AddressPolicy::new(&nets(allow), &nets(deny)).expect("policy")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn the_most_specific_network_decides() {
        let p = policy(&["10.0.0.0/8"], &["10.9.0.0/16"]);
        assert!(p.admits(ip("10.1.2.3")));
        assert!(!p.admits(ip("10.9.1.1")));
        assert!(
            !p.admits(ip("192.0.2.1")),
            "an allow list refuses the unlisted"
        );
        let p = policy(&["10.9.9.0/24"], &["10.0.0.0/8"]);
        assert!(p.admits(ip("10.9.9.9")));
        assert!(!p.admits(ip("10.9.8.1")));
        assert!(!p.admits(ip("11.0.0.1")));
        let p = policy(&[], &["203.0.113.0/24", "2001:db8::/32"]);
        assert!(!p.admits(ip("203.0.113.77")));
        assert!(!p.admits(ip("2001:db8::1")));
        assert!(
            p.admits(ip("2001:db9::1")),
            "a deny list admits the unlisted"
        );
        assert!(p.admits(ip("198.51.100.1")));
    }

    #[test]
    fn ipv4_mapped_addresses_are_judged_as_ipv4() {
        let p = policy(&["127.0.0.0/8"], &[]);
        assert!(p.admits(ip("::ffff:127.0.0.1")));
        assert!(!p.admits(ip("::ffff:10.0.0.1")));
        assert!(!p.admits(ip("::1")), "IPv6 loopback is not 127/8");
    }

    #[test]
    fn zero_length_prefixes_and_single_addresses() {
        let p = policy(&["0.0.0.0/0"], &["192.0.2.7"]);
        assert!(p.admits(ip("8.8.8.8")));
        assert!(!p.admits(ip("192.0.2.7")));
        assert!(p.admits(ip("192.0.2.8")));
        assert!(!p.admits(ip("::1")), "0.0.0.0/0 is IPv4 only");
    }

    #[test]
    fn bad_entries_are_refused_with_what_was_meant() {
        assert_eq!(
            parse_network("10.1.2.3/8"),
            Err(PolicyProblem::HostBits {
                written: "10.1.2.3/8".into(),
                network: "10.0.0.0/8".parse().expect("net"),
            })
        );
        assert!(matches!(
            parse_network("10.0.0.0/33"),
            Err(PolicyProblem::NotANetwork(_))
        ));
        assert!(matches!(
            parse_network("example.com"),
            Err(PolicyProblem::NotANetwork(_))
        ));
        assert!(matches!(
            AddressPolicy::new(&nets(&["10.0.0.0/8"]), &nets(&["10.0.0.0/8"])),
            Err(PolicyProblem::BothLists(_))
        ));
    }

    /// The verdict a linear scan gives: the longest containing network.
    fn scan(allow: &[IpNet], deny: &[IpNet], ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        allow
            .iter()
            .map(|n| (n, true))
            .chain(deny.iter().map(|n| (n, false)))
            .filter(|(n, _)| n.contains(&ip))
            .max_by_key(|(n, _)| n.prefix_len())
            .map_or(allow.is_empty(), |(_, admit)| admit)
    }

    fn v4_net() -> impl Strategy<Value = IpNet> {
        (any::<u32>(), 0u8..=32).prop_map(|(a, len)| {
            IpNet::new(IpAddr::from(a.to_be_bytes()), len)
                .expect("len")
                .trunc()
        })
    }

    /// Networks under a few shared tops (so lists overlap), any length.
    fn v6_net() -> impl Strategy<Value = IpNet> {
        (0u128..4, any::<u128>(), 0u8..=128).prop_map(|(top, a, len)| {
            let bits = (top << 120) | (a >> 8);
            IpNet::new(IpAddr::from(bits.to_be_bytes()), len)
                .expect("len")
                .trunc()
        })
    }

    /// The policy of `allow` and `deny` (less the networks also allowed),
    /// and that deny list.
    fn compiled(allow: &[IpNet], deny: Vec<IpNet>) -> (AddressPolicy, Vec<IpNet>) {
        let deny: Vec<IpNet> = deny.into_iter().filter(|d| !allow.contains(d)).collect();
        (AddressPolicy::new(allow, &deny).expect("policy"), deny)
    }

    /// The policy decides each address as the scan does.
    fn agrees(
        policy: &AddressPolicy,
        allow: &[IpNet],
        deny: &[IpNet],
        addresses: &[IpAddr],
    ) -> Result<(), TestCaseError> {
        for &ip in addresses {
            prop_assert_eq!(policy.admits(ip), scan(allow, deny, ip), "{}", ip);
        }
        Ok(())
    }

    proptest! {
        /// The trie agrees with a scan of the lists for any lists and
        /// address (addresses drawn near the listed networks too).
        #[test]
        fn the_trie_decides_as_a_scan_would(
            allow in proptest::collection::vec(v4_net(), 0..20),
            deny in proptest::collection::vec(v4_net(), 0..20),
            probes in proptest::collection::vec((any::<u32>(), any::<u32>(), 0usize..40), 1..50),
        ) {
            let (policy, deny) = compiled(&allow, deny);
            let listed: Vec<&IpNet> = allow.iter().chain(&deny).collect();
            for (random, noise, pick) in probes {
                // A random address, and one inside a listed network.
                let mut addresses = vec![IpAddr::from(random.to_be_bytes())];
                if let Some(IpNet::V4(v4)) = listed.get(pick % listed.len().max(1)) {
                    let host_bits = 32 - u32::from(v4.prefix_len());
                    let mask = if host_bits == 32 { u32::MAX } else { (1u32 << host_bits) - 1 };
                    let inside = u32::from(v4.network()) | (noise & mask);
                    addresses.push(IpAddr::from(inside.to_be_bytes()));
                }
                agrees(&policy, &allow, &deny, &addresses)?;
            }
        }

        /// The same for IPv6 networks of any length (the first-byte table
        /// and the walk past it).
        #[test]
        fn the_ipv6_trie_decides_as_a_scan_would(
            allow in proptest::collection::vec(v6_net(), 0..20),
            deny in proptest::collection::vec(v6_net(), 0..20),
            probes in proptest::collection::vec((any::<u128>(), any::<u128>(), 0usize..40), 1..50),
        ) {
            let (policy, deny) = compiled(&allow, deny);
            let listed: Vec<&IpNet> = allow.iter().chain(&deny).collect();
            for (random, noise, pick) in probes {
                let mut addresses = vec![IpAddr::from(random.to_be_bytes())];
                if let Some(IpNet::V6(v6)) = listed.get(pick % listed.len().max(1)) {
                    let host_bits = 128 - u32::from(v6.prefix_len());
                    let mask = if host_bits == 128 { u128::MAX } else { (1u128 << host_bits) - 1 };
                    let inside = u128::from(v6.network()) | (noise & mask);
                    addresses.push(IpAddr::from(inside.to_be_bytes()));
                }
                agrees(&policy, &allow, &deny, &addresses)?;
            }
        }
    }
}
