//! What a lookup asks about: a [`Flow`] (the fields of `ip route get`), and the
//! [`KernelFlow`] the kernel's rules actually see for it.
//!
//! They differ. `ip route get` without `iif` is an output lookup: the kernel runs it
//! with `lo` as input device and the caller's uid. With `iif` it is a forwarding
//! lookup: IPv4 then ignores the uid given (`ip_route_input_slow` uses uid 0) and takes
//! protocol and ports from the packet it builds (ports only for TCP/UDP, and only when
//! some rule needs them: `fib4_rules_early_flow_dissect`); IPv6 takes everything from
//! the request and uses "no uid" (`INVALID_UID`) when none is given. Rules compare TOS
//! as DSCP: IPv4's legacy `tos` selector only its three low DSCP bits (`tos & 0x1c`),
//! IPv6's the whole DSCP. Confirmed with `ip route get` on 6.18 (BENCHMARKS.md/README).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::l3mdev::{update_flow, LinkMap, LOOPBACK_IFINDEX};
use crate::model::Family;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

/// `uid` of a lookup that names none: `ip route get` run as root.
pub const DEFAULT_UID: u32 = 0;
/// `INVALID_UID`: what IPv6 forwarding lookups without a uid carry.
pub const INVALID_UID: u32 = u32::MAX;

/// A lookup as asked (`route-mirror lookup ADDR --from ... --iif ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Flow {
    pub dst: IpAddr,
    pub src: Option<IpAddr>,
    /// Input device (a forwarding lookup); `None` for output from this host.
    pub iif: Option<u32>,
    pub oif: Option<u32>,
    pub mark: u32,
    pub uid: Option<u32>,
    pub ipproto: u8,
    pub sport: u16,
    pub dport: u16,
    /// The TOS / DS field byte.
    pub tos: u8,
}

impl Flow {
    /// A flow with only a destination: what `lookup ADDR` asks.
    pub fn to(dst: IpAddr) -> Flow {
        Flow {
            dst,
            src: None,
            iif: None,
            oif: None,
            mark: 0,
            uid: None,
            ipproto: 0,
            sport: 0,
            dport: 0,
            tos: 0,
        }
    }

    pub fn family(&self) -> Family {
        Family::of(&self.dst)
    }

    /// Protocol and ports of the IPv4 packet `ip route get` builds (and forwarding lookups
    /// and the multipath hash dissect): UDP when no protocol is given (measured: the
    /// kernel's hash matches a UDP packet then), ports only for TCP and UDP.
    pub fn packet_v4(&self) -> (u8, Option<(u16, u16)>) {
        let proto = if self.ipproto == 0 {
            IPPROTO_UDP
        } else {
            self.ipproto
        };
        let ports = matches!(proto, IPPROTO_TCP | IPPROTO_UDP).then_some((self.sport, self.dport));
        (proto, ports)
    }

    /// Whether the flow carries anything beyond its destination.
    pub fn is_plain(&self) -> bool {
        *self == Flow::to(self.dst)
    }

    /// The flow as `fib_rules_lookup` sees it. `dissect` is whether some IPv4 rule needs
    /// protocol and ports on input (`fib_rules_require_fldissect`).
    pub fn kernel(&self, links: &LinkMap, dissect: bool) -> KernelFlow {
        let family = self.family();
        let input = self.iif.is_some();
        let iif = self.iif.unwrap_or(LOOPBACK_IFINDEX);
        // Forwarding lookups carry no output device, neither to the rules nor to the
        // tables (measured: `ip route get ... iif A oif B` answers as without `oif B`).
        let oif = if input { 0 } else { self.oif.unwrap_or(0) };
        let l3 = update_flow(links, oif, iif);
        let (uid, ipproto, sport, dport) = match (family, input) {
            (Family::V4, true) => {
                if dissect {
                    let (proto, ports) = self.packet_v4();
                    let (s, d) = ports.unwrap_or((0, 0));
                    (DEFAULT_UID, proto, s, d)
                } else {
                    (DEFAULT_UID, 0, 0, 0)
                }
            }
            (Family::V6, true) => (
                self.uid.unwrap_or(INVALID_UID),
                self.ipproto,
                self.sport,
                self.dport,
            ),
            // IPv4 route-get requests without a protocol are UDP to the rules too
            // (measured: a plain `ip route get` matches an `ipproto udp` rule); IPv6's
            // are not.
            (Family::V4, false) => (
                self.uid.unwrap_or(DEFAULT_UID),
                self.packet_v4().0,
                self.sport,
                self.dport,
            ),
            (Family::V6, false) => (
                self.uid.unwrap_or(DEFAULT_UID),
                self.ipproto,
                self.sport,
                self.dport,
            ),
        };
        let src = self.src.filter(|s| !s.is_unspecified());
        KernelFlow {
            family,
            dst: self.dst,
            src,
            iif,
            oif: l3.oif,
            l3mdev: l3.l3mdev,
            l3mdev_from_oif: l3.from_oif,
            l3mdev_table: links.vrf_table(l3.l3mdev),
            mark: self.mark,
            uid,
            ipproto,
            sport,
            dport,
            dscp: self.tos >> 2,
            input,
        }
    }
}

/// The flow the rules and the table lookups see (`struct flowi4`/`flowi6` in
/// `fib_rules_lookup`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelFlow {
    pub family: Family,
    pub dst: IpAddr,
    /// `None`: no source (IPv4 0.0.0.0; IPv6 without `RT6_LOOKUP_F_HAS_SADDR`).
    pub src: Option<IpAddr>,
    pub iif: u32,
    pub oif: u32,
    pub l3mdev: u32,
    pub l3mdev_from_oif: bool,
    /// The table of the flow's VRF, if it has one.
    pub l3mdev_table: Option<u32>,
    pub mark: u32,
    pub uid: u32,
    pub ipproto: u8,
    pub sport: u16,
    pub dport: u16,
    /// DSCP (the DS field without its ECN bits, shifted down).
    pub dscp: u8,
    /// A forwarding lookup (`iif` given).
    pub input: bool,
}

impl KernelFlow {
    /// The source address as the kernel's IPv4 code holds it (0.0.0.0 when none).
    pub fn src_or_any(&self) -> IpAddr {
        self.src.unwrap_or(match self.family {
            Family::V4 => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            Family::V6 => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        })
    }

    /// The TOS an IPv4 route or legacy `tos` rule compares (`fib_dscp_masked_match`).
    pub fn legacy_tos(&self) -> u8 {
        (self.dscp << 2) & 0x1c
    }

    /// The output device a table lookup must route through, if any (measured with
    /// `ip route get ... oif DEV` on 6.18): IPv4 output lookups pass over routes with no
    /// usable next hop on it (`fib_lookup_good_nhc`; reject and throw routes are decided
    /// before that test), IPv6 ones do so when they have no source
    /// (`RT6_LOOKUP_F_IFACE`; with a source the device is only a preference). Forwarding
    /// lookups route by the table alone.
    pub fn oif_filter(&self) -> Option<u32> {
        let strict = self.family == Family::V4 || self.src.is_none();
        (!self.input && self.oif != 0 && strict).then_some(self.oif)
    }

    /// Whether an IPv4 output lookup that finds no route (or a reject) is sent on-link
    /// through its output device instead (`ip_route_output_key_hash_rcu`: "Apparently,
    /// routing tables are wrong. Assume, that the destination is on link."); not in a VRF.
    pub fn assumes_onlink(&self) -> bool {
        self.family == Family::V4 && !self.input && self.oif != 0 && self.l3mdev == 0
    }
}

/// Parses `N` or `N/MASK` (decimal or 0x-hex) into a flow mark: `N & MASK`.
pub fn parse_mark(s: &str) -> Result<u32, String> {
    let (v, m) = match s.split_once('/') {
        Some((v, m)) => (v, Some(m)),
        None => (s, None),
    };
    let v = parse_u32(v).ok_or_else(|| format!("bad mark {s:?}: want N or N/MASK"))?;
    let m = match m {
        Some(m) => parse_u32(m).ok_or_else(|| format!("bad mark mask in {s:?}"))?,
        None => u32::MAX,
    };
    Ok(v & m)
}

/// Parses a TOS byte as `ip route get tos` takes it: hex (`0x10`), decimal, or a
/// `rt_dsfield` name (`CS1`, `AF11`, `EF`...).
pub fn parse_tos(s: &str) -> Result<u8, String> {
    if let Some(n) = parse_u32(s) {
        return u8::try_from(n).map_err(|_| format!("tos {s:?} beyond 0xff"));
    }
    (0..=u8::MAX)
        .find(|&t| crate::rule::show::dsfield_name(t).eq_ignore_ascii_case(s))
        .ok_or_else(|| format!("bad tos {s:?}: want 0xNN or a DS field name"))
}

/// Parses `--ipproto`: `tcp`, `udp`, `icmp`, `ipv6-icmp` or a number.
pub fn parse_ipproto(s: &str) -> Result<u8, String> {
    crate::rule::show::parse_ipproto(s).ok_or_else(|| format!("unknown protocol {s:?}"))
}

fn parse_u32(s: &str) -> Option<u32> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u32::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fib::l3mdev::tests::links;

    fn flow(dst: &str) -> Flow {
        Flow::to(dst.parse().unwrap())
    }

    #[test]
    fn output_lookups_run_from_lo_as_root() {
        let k = flow("192.0.2.1").kernel(&links(), false);
        assert_eq!((k.iif, k.uid, k.input, k.src), (1, 0, false, None));
        assert_eq!(
            k.ipproto, IPPROTO_UDP,
            "IPv4 route get without a protocol is UDP"
        );
        assert_eq!(flow("2001:db8::1").kernel(&links(), false).ipproto, 0);
    }

    #[test]
    fn ipv4_forwarding_ignores_uid_and_dissects_ports_only_when_needed() {
        let mut f = flow("192.0.2.1");
        f.iif = Some(14);
        f.uid = Some(1500);
        f.ipproto = IPPROTO_TCP;
        f.sport = 1000;
        f.dport = 80;
        let k = f.kernel(&links(), false);
        assert_eq!((k.uid, k.ipproto, k.sport, k.dport), (0, 0, 0, 0));
        let k = f.kernel(&links(), true);
        assert_eq!((k.uid, k.ipproto, k.sport, k.dport), (0, 6, 1000, 80));
        f.ipproto = IPPROTO_ICMP;
        let k = f.kernel(&links(), true);
        assert_eq!((k.ipproto, k.sport, k.dport), (1, 0, 0));
    }

    #[test]
    fn ipv6_forwarding_keeps_the_request_and_has_no_uid_by_default() {
        let mut f = flow("2001:db8::1");
        f.iif = Some(14);
        f.ipproto = IPPROTO_ICMPV6;
        f.sport = 7;
        let k = f.kernel(&links(), false);
        assert_eq!((k.uid, k.ipproto, k.sport), (INVALID_UID, 58, 7));
        f.uid = Some(1500);
        assert_eq!(f.kernel(&links(), false).uid, 1500);
    }

    #[test]
    fn tos_is_compared_as_dscp() {
        let mut f = flow("192.0.2.1");
        f.tos = 0x30;
        let k = f.kernel(&links(), false);
        assert_eq!((k.dscp, k.legacy_tos()), (0x0c, 0x10));
        f.tos = 0x11;
        assert_eq!(f.kernel(&links(), false).legacy_tos(), 0x10);
    }

    #[test]
    fn a_vrf_port_gives_the_flow_its_vrf_table() {
        let mut f = flow("192.0.2.1");
        f.iif = Some(11);
        let k = f.kernel(&links(), false);
        assert_eq!((k.l3mdev, k.l3mdev_table), (10, Some(1001)));
    }

    #[test]
    fn flag_parsers() {
        assert_eq!(parse_mark("0x1234/0xff"), Ok(0x34));
        assert_eq!(parse_mark("7"), Ok(7));
        assert!(parse_mark("x/1").is_err());
        assert_eq!(parse_tos("0x10"), Ok(0x10));
        assert_eq!(parse_tos("cs1"), Ok(0x20));
        assert!(parse_tos("0x100").is_err());
        assert_eq!(parse_ipproto("udp"), Ok(17));
        assert_eq!(parse_ipproto("ipv6-icmp"), Ok(58));
        assert!(parse_ipproto("nope").is_err());
    }
}
