//! Which next hop of a multipath route the kernel picks for a flow: the multipath hash
//! (`fib_multipath_hash`, `rt6_multipath_hash`) and hash-threshold selection
//! (`fib_select_multipath`, `fib6_select_path`, `nexthop_select_path_hthr`).
//!
//! The hash is SipHash-2-4 over the kernel's `struct flow_keys` from its `basic` member
//! (`__flow_hash_from_keys`, after `__flow_hash_consistentify` sorts addresses and
//! ports), keyed by `fib_multipath_hash_seed` repeated in both key halves, and shifted
//! right by one. It is knowable only when the seed is: with the sysctl at 0 (default)
//! the kernel keys it with a random value, and the answer is "per flow". Policies 0
//! (L3), 1 (L4) and 2 (inner L3, which for the packet `ip route get` builds is L3) are
//! modelled; 3 (custom fields) and `fib_multipath_use_neigh` (neighbour state) are not.
//! What goes in matches `ip route get`: IPv4 hashes the packet it builds (ports only
//! for TCP/UDP), IPv6 the request's fields. Checked against the kernel in
//! `tests/multipath.rs`.

use std::hash::Hasher;
use std::net::IpAddr;
use std::path::Path;

use serde::Serialize;
use siphasher::sip::SipHasher24;

use super::flow::Flow;
use crate::model::Family;

/// The sysctls that decide multipath hashing in one namespace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct HashConfig {
    /// `net.ipv4.fib_multipath_hash_policy`.
    pub policy_v4: u8,
    /// `net.ipv6.fib_multipath_hash_policy`.
    pub policy_v6: u8,
    /// `net.ipv4.fib_multipath_hash_seed` (shared by IPv6); 0: random, unknowable.
    pub seed: u32,
    /// `net.ipv4.fib_multipath_use_neigh`: selection also follows neighbour state.
    pub use_neigh: bool,
}

impl HashConfig {
    /// Reads the sysctls under `proc_sys_net` (`/proc/sys/net` as seen from the
    /// namespace). Missing files read as the kernel's defaults.
    pub fn read(proc_sys_net: &Path) -> HashConfig {
        let get = |p: &str| -> u32 {
            std::fs::read_to_string(proc_sys_net.join(p))
                .ok()
                .and_then(|s| s.split_whitespace().next().and_then(|w| w.parse().ok()))
                .unwrap_or(0)
        };
        HashConfig {
            policy_v4: get("ipv4/fib_multipath_hash_policy") as u8,
            policy_v6: get("ipv6/fib_multipath_hash_policy") as u8,
            seed: get("ipv4/fib_multipath_hash_seed"),
            use_neigh: get("ipv4/fib_multipath_use_neigh") != 0,
        }
    }
}

/// Why the hop cannot be named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum PerFlow {
    /// `fib_multipath_hash_seed` is 0: the kernel hashes with a random key.
    RandomSeed,
    /// Policy 3 (custom fields) or another not modelled.
    Policy(u8),
    /// `fib_multipath_use_neigh` is on: neighbour state decides too.
    UseNeigh,
    /// An IPv4 output lookup with a source prefers hops with that source address.
    SourcePreference,
}

impl std::fmt::Display for PerFlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PerFlow::RandomSeed => f.write_str("per flow (fib_multipath_hash_seed is random)"),
            PerFlow::Policy(p) => write!(f, "per flow (fib_multipath_hash_policy {p})"),
            PerFlow::UseNeigh => f.write_str("per flow (fib_multipath_use_neigh)"),
            PerFlow::SourcePreference => {
                f.write_str("per flow (source address preference of an output lookup)")
            }
        }
    }
}

/// Bytes of `struct flow_keys` hashed, from `basic`: v4 48, v6 72 (x86-64 layout).
const KEYS_LEN: usize = 72;
const OFF_PROTO: usize = 2;
const OFF_FLOW_LABEL: usize = 4;
const OFF_PORTS: usize = 28;
const OFF_ADDRS: usize = 36;

fn siphash(bytes: &[u8], seed: u32) -> u64 {
    let k = (u64::from(seed) << 32) | u64::from(seed);
    let mut h = SipHasher24::new_with_keys(k, k);
    h.write(bytes);
    h.finish()
}

/// `__flow_hash_from_keys` over the given fields (network order), then `>> 1`.
fn hash_keys(
    seed: u32,
    src: IpAddr,
    dst: IpAddr,
    ports: Option<(u16, u16)>,
    proto: u8,
    flow_label: u32,
) -> u32 {
    let mut k = [0u8; KEYS_LEN];
    k[OFF_PROTO] = proto;
    k[OFF_FLOW_LABEL..OFF_FLOW_LABEL + 4].copy_from_slice(&flow_label.to_be_bytes());
    let (mut s, mut d) = (src, dst);
    let len = match (src, dst) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            // Compared as the raw be32 read as a host (little-endian) u32.
            if u32::from_le_bytes(b.octets()) < u32::from_le_bytes(a.octets()) {
                std::mem::swap(&mut s, &mut d);
            }
            48
        }
        _ => {
            let (a, b) = (addr16(&src), addr16(&dst));
            if b < a {
                std::mem::swap(&mut s, &mut d);
            }
            72
        }
    };
    if let Some((sp, dp)) = ports {
        let (mut sp, mut dp) = (sp.to_be_bytes(), dp.to_be_bytes());
        if u16::from_le_bytes(dp) < u16::from_le_bytes(sp) {
            std::mem::swap(&mut sp, &mut dp);
        }
        k[OFF_PORTS..OFF_PORTS + 2].copy_from_slice(&sp);
        k[OFF_PORTS + 2..OFF_PORTS + 4].copy_from_slice(&dp);
    }
    match (s, d) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            k[OFF_ADDRS..OFF_ADDRS + 4].copy_from_slice(&a.octets());
            k[OFF_ADDRS + 4..OFF_ADDRS + 8].copy_from_slice(&b.octets());
        }
        _ => {
            k[OFF_ADDRS..OFF_ADDRS + 16].copy_from_slice(&addr16(&s));
            k[OFF_ADDRS + 16..OFF_ADDRS + 32].copy_from_slice(&addr16(&d));
        }
    }
    let mut h = siphash(&k[..len], seed) as u32;
    if h == 0 {
        h = 1;
    }
    h >> 1
}

fn addr16(a: &IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

/// The multipath hash the kernel computes for `ip route get` of this flow. From the
/// flow as asked, not as the rules see it: IPv4 hashes the packet the request builds
/// even where its rules ignore protocol and ports ([`super::flow::Flow::kernel`]).
pub fn flow_hash(cfg: &HashConfig, f: &Flow) -> Result<u32, PerFlow> {
    if cfg.seed == 0 {
        return Err(PerFlow::RandomSeed);
    }
    if cfg.use_neigh {
        return Err(PerFlow::UseNeigh);
    }
    let src = match (f.family(), f.src) {
        (_, Some(s)) => s,
        (Family::V4, None) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        (Family::V6, None) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    };
    match f.family() {
        Family::V4 => {
            if f.iif.is_none() && f.src.is_some_and(|s| !s.is_unspecified()) {
                return Err(PerFlow::SourcePreference);
            }
            match cfg.policy_v4 {
                0 | 2 => Ok(hash_keys(cfg.seed, src, f.dst, None, 0, 0)),
                1 => {
                    // Dissected from the packet `ip route get` builds.
                    let (proto, ports) = f.packet_v4();
                    Ok(hash_keys(cfg.seed, src, f.dst, ports, proto, 0))
                }
                p => Err(PerFlow::Policy(p)),
            }
        }
        Family::V6 => match cfg.policy_v6 {
            // The flow label of a route-get request is 0.
            0 | 2 => Ok(hash_keys(cfg.seed, src, f.dst, None, f.ipproto, 0)),
            1 => Ok(hash_keys(
                cfg.seed,
                src,
                f.dst,
                Some((f.sport, f.dport)),
                f.ipproto,
                0,
            )),
            p => Err(PerFlow::Policy(p)),
        },
    }
}

/// Hash-threshold selection: each usable hop owns a share of the 31-bit hash space in
/// proportion to its weight (`fib_rebalance`: upper bound `round(w_cum << 31 / total) -
/// 1`); the first usable hop whose bound is not below the hash is chosen. `hops` are
/// (weight, usable) in the route's order.
pub fn select(hash: u32, hops: &[(u32, bool)]) -> Option<usize> {
    let total: u64 = hops.iter().filter(|h| h.1).map(|h| u64::from(h.0)).sum();
    if total == 0 {
        return None;
    }
    let mut w = 0u64;
    for (i, &(weight, usable)) in hops.iter().enumerate() {
        if !usable {
            continue;
        }
        w += u64::from(weight);
        let bound = (((w << 31) + total / 2) / total) as i64 - 1;
        if i64::from(hash) <= bound {
            return Some(i);
        }
    }
    // Rounding leaves no gap at the top (the last bound is 2^31 - 1), so this is only
    // reached with no usable hop; the kernel then keeps its first.
    hops.iter().position(|h| h.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_splits_the_hash_space_by_weight() {
        let hops = [(1, true), (1, true), (2, true)];
        assert_eq!(select(0, &hops), Some(0));
        assert_eq!(select((1 << 29) - 1, &hops), Some(0));
        assert_eq!(select(1 << 29, &hops), Some(1));
        assert_eq!(select((1 << 30) - 1, &hops), Some(1));
        assert_eq!(select(1 << 30, &hops), Some(2));
        assert_eq!(select(u32::MAX >> 1, &hops), Some(2));
        // A dead hop gives its share to the others.
        let hops = [(1, false), (1, true)];
        assert_eq!(select(0, &hops), Some(1));
        assert_eq!(select(0, &[(1, false)]), None);
    }

    #[test]
    fn hash_is_symmetric_and_seeded() {
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "192.0.2.7".parse().unwrap();
        let h1 = hash_keys(7, a, b, Some((1000, 80)), 6, 0);
        let h2 = hash_keys(7, b, a, Some((80, 1000)), 6, 0);
        assert_eq!(
            h1, h2,
            "__flow_hash_consistentify sorts addresses and ports"
        );
        assert_ne!(h1, hash_keys(8, a, b, Some((1000, 80)), 6, 0));
        assert!(h1 < 1 << 31);
    }

    #[test]
    fn unknown_seed_or_policy_is_per_flow() {
        let k = Flow::to("192.0.2.1".parse().unwrap());
        let cfg = HashConfig::default();
        assert_eq!(flow_hash(&cfg, &k), Err(PerFlow::RandomSeed));
        let cfg = HashConfig {
            seed: 5,
            policy_v4: 3,
            ..Default::default()
        };
        assert_eq!(flow_hash(&cfg, &k), Err(PerFlow::Policy(3)));
        let cfg = HashConfig {
            seed: 5,
            ..Default::default()
        };
        assert!(flow_hash(&cfg, &k).is_ok());
    }

    #[test]
    fn reads_sysctls_from_a_tree() {
        let dir = std::env::temp_dir().join(format!("rm-mp-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("ipv4")).unwrap();
        std::fs::create_dir_all(dir.join("ipv6")).unwrap();
        std::fs::write(dir.join("ipv4/fib_multipath_hash_policy"), "1\n").unwrap();
        std::fs::write(dir.join("ipv6/fib_multipath_hash_policy"), "2\n").unwrap();
        std::fs::write(dir.join("ipv4/fib_multipath_hash_seed"), "42\n").unwrap();
        let c = HashConfig::read(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            c,
            HashConfig {
                policy_v4: 1,
                policy_v6: 2,
                seed: 42,
                use_neigh: false
            }
        );
    }
}
