//! `RTM_NEWRULE` / `RTM_DELRULE` → [`Rule`], through netlink-packet-route's rule
//! messages (rules are few and rarely change: no reason to hand-decode them).
//!
//! Attributes the crate does not decode (`FRA_DSCP`, the flow label and port/DSCP
//! masks of newer kernels) arrive as `Other` and are kept raw in [`Rule::raw`]. A
//! message the crate cannot parse, or whose prefixes do not fit its family, is an error
//! for the caller to count; rules of other families (IPMR, IP6MR) are counted and
//! skipped.

use ipnet::IpNet;
use netlink_packet_core::{Nla, Parseable};
use netlink_packet_route::rule::{RuleAttribute, RuleMessage};
use netlink_packet_route::AddressFamily;

use super::msg::{DecodeCounters, DecodeError};
use crate::model::Family;
use crate::rule::{flags, fra, RawAttr, Rule};

/// `FIB_RULE_*` header flags kept (the volatile ones are derived).
const KEPT_FLAGS: u32 = !flags::VOLATILE;

/// Decodes one rule message payload (`struct fib_rule_hdr` + attributes).
/// `Ok(None)`: a family the mirror does not keep (counted).
pub fn decode(payload: &[u8], c: &mut DecodeCounters) -> Result<Option<Rule>, DecodeError> {
    let m = RuleMessage::parse(payload).map_err(|e| DecodeError::malformed("rule", e))?;
    let family = match m.header.family {
        AddressFamily::Inet => Family::V4,
        AddressFamily::Inet6 => Family::V6,
        _ => {
            c.other_families += 1;
            return Ok(None);
        }
    };
    let host = match family {
        Family::V4 => 32,
        Family::V6 => 128,
    };
    let mut r = Rule::to_table(family, 0, u32::from(m.header.table));
    r.protocol = 0;
    r.action = u8::from(m.header.action);
    r.flags = m.header.flags.bits() & KEPT_FLAGS;
    r.tos = m.header.tos;
    let (mut src, mut dst) = (None, None);
    let (mut mark, mut mask) = (None, None);
    for a in m.attributes {
        match a {
            RuleAttribute::Source(ip) => src = Some(ip),
            RuleAttribute::Destination(ip) => dst = Some(ip),
            RuleAttribute::Iifname(n) => r.iif = Some(n),
            RuleAttribute::Oifname(n) => r.oif = Some(n),
            RuleAttribute::Goto(t) => r.goto = Some(t),
            RuleAttribute::Priority(p) => r.priority = p,
            RuleAttribute::FwMark(v) => mark = Some(v),
            RuleAttribute::FwMask(v) => mask = Some(v),
            RuleAttribute::Realm(realm) => {
                let mut b = [0u8; 4];
                netlink_packet_core::Emitable::emit(&realm, &mut b);
                r.realms = Some(u32::from_ne_bytes(b));
            }
            RuleAttribute::TunId(t) => r.tun_id = Some(t),
            // The kernel reports "unset" as (u32)-1.
            RuleAttribute::SuppressIfGroup(g) => r.suppress_ifgroup = (g != u32::MAX).then_some(g),
            RuleAttribute::SuppressPrefixLen(l) => {
                r.suppress_prefixlen = (l != u32::MAX).then_some(l)
            }
            RuleAttribute::Table(t) => r.table = t,
            RuleAttribute::L3MDev(on) => r.l3mdev = on,
            RuleAttribute::UidRange(u) => r.uid_range = Some((u.start, u.end)),
            RuleAttribute::Protocol(p) => r.protocol = u8::from(p),
            RuleAttribute::IpProtocol(p) => r.ip_proto = u8::from(p),
            RuleAttribute::SourcePortRange(p) => r.sport = Some((p.start, p.end)),
            RuleAttribute::DestinationPortRange(p) => r.dport = Some((p.start, p.end)),
            RuleAttribute::Other(nla) if nla.kind() == fra::PAD => {}
            RuleAttribute::Other(nla)
                if matches!(nla.kind(), fra::SPORT_MASK | fra::DPORT_MASK) =>
            {
                let mut v = vec![0u8; nla.value_len()];
                nla.emit_value(&mut v);
                let mask = <[u8; 2]>::try_from(v.as_slice())
                    .map(u16::from_ne_bytes)
                    .map_err(|_| DecodeError::malformed("rule", "port mask of the wrong size"))?;
                if nla.kind() == fra::SPORT_MASK {
                    r.sport_mask = Some(mask);
                } else {
                    r.dport_mask = Some(mask);
                }
            }
            other => {
                c.unknown_attrs += 1;
                let mut value = vec![0u8; other.value_len()];
                other.emit_value(&mut value);
                r.raw.push(RawAttr {
                    kind: other.kind(),
                    value,
                });
            }
        }
    }
    // `fib_nl2rule`: a nonzero mark without a mask compares every bit.
    r.fwmark = mark.unwrap_or(0);
    r.fwmask = mask.unwrap_or(if r.fwmark != 0 { u32::MAX } else { 0 });
    r.src = prefix("source", src, m.header.src_len, host, family)?;
    r.dst = prefix("destination", dst, m.header.dst_len, host, family)?;
    Ok(Some(r))
}

fn prefix(
    what: &'static str,
    addr: Option<std::net::IpAddr>,
    len: u8,
    host: u8,
    family: Family,
) -> Result<Option<IpNet>, DecodeError> {
    if len > host {
        return Err(DecodeError::malformed(
            "rule",
            format!("{what} prefix length {len} beyond {host}"),
        ));
    }
    match addr {
        None if len == 0 => Ok(None),
        None => Err(DecodeError::malformed(
            "rule",
            format!("{what} prefix length {len} without an address"),
        )),
        Some(a) if Family::of(&a) != family => Err(DecodeError::malformed(
            "rule",
            format!("{what} {a} in a {family} rule"),
        )),
        Some(a) => IpNet::new(a, len)
            .map(|n| Some(n.trunc()))
            .map_err(|e| DecodeError::malformed("rule", e)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::rule::action;

    /// Builds a rule message payload: fib_rule_hdr + attributes (native order).
    pub(crate) fn rule_payload(
        family: u8,
        dst_len: u8,
        src_len: u8,
        tos: u8,
        action: u8,
        flags: u32,
        attrs: &[(u16, Vec<u8>)],
    ) -> Vec<u8> {
        let mut b = vec![family, dst_len, src_len, tos, 0, 0, 0, action];
        b.extend_from_slice(&flags.to_ne_bytes());
        for (ty, val) in attrs {
            let len = 4 + val.len();
            b.extend_from_slice(&(len as u16).to_ne_bytes());
            b.extend_from_slice(&ty.to_ne_bytes());
            b.extend_from_slice(val);
            while !b.len().is_multiple_of(4) {
                b.push(0);
            }
        }
        b
    }

    fn u32a(kind: u16, v: u32) -> (u16, Vec<u8>) {
        (kind, v.to_ne_bytes().to_vec())
    }

    fn name(kind: u16, n: &str) -> (u16, Vec<u8>) {
        let mut v = n.as_bytes().to_vec();
        v.push(0);
        (kind, v)
    }

    /// The attributes `fib_nl_fill_rule` + `fib4_rule_fill` put in a dump of
    /// `ip rule add not from 10.0.0.0/8 iif veth0 fwmark 0x5/0xf sport 1000-2000
    /// uidrange 100-200 ipproto udp lookup 100 suppress_prefixlength 0 pref 230 proto bird`.
    fn full_v4() -> Vec<u8> {
        let mut ports = 1000u16.to_ne_bytes().to_vec();
        ports.extend_from_slice(&2000u16.to_ne_bytes());
        let mut uids = 100u32.to_ne_bytes().to_vec();
        uids.extend_from_slice(&200u32.to_ne_bytes());
        rule_payload(
            2,
            0,
            8,
            0,
            action::TO_TBL,
            flags::INVERT | flags::IIF_DETACHED,
            &[
                u32a(fra::TABLE, 100),
                u32a(fra::SUPPRESS_PREFIXLEN, 0),
                (fra::PROTOCOL, vec![12]),
                name(fra::IIFNAME, "veth0"),
                u32a(fra::PRIORITY, 230),
                u32a(fra::FWMARK, 5),
                u32a(fra::FWMASK, 0xf),
                (fra::UID_RANGE, uids),
                (fra::SPORT_RANGE, ports),
                (fra::IP_PROTO, vec![17]),
                (fra::SRC, vec![10, 0, 0, 0]),
            ],
        )
    }

    #[test]
    fn decodes_every_selector_and_drops_volatile_flags() {
        let mut c = DecodeCounters::default();
        let r = decode(&full_v4(), &mut c).unwrap().unwrap();
        assert_eq!(r.family, Family::V4);
        assert_eq!(r.priority, 230);
        assert_eq!(r.table, 100);
        assert_eq!(r.flags, flags::INVERT);
        assert_eq!(r.src, Some("10.0.0.0/8".parse().unwrap()));
        assert_eq!(r.iif.as_deref(), Some("veth0"));
        assert_eq!((r.fwmark, r.fwmask), (5, 0xf));
        assert_eq!(r.uid_range, Some((100, 200)));
        assert_eq!(r.sport, Some((1000, 2000)));
        assert_eq!(r.ip_proto, 17);
        assert_eq!(r.suppress_prefixlen, Some(0));
        assert_eq!(r.protocol, 12);
        assert!(r.raw.is_empty());
        assert_eq!(c.unknown_attrs, 0);
    }

    #[test]
    fn default_rule_and_unset_suppress() {
        let p = rule_payload(
            10,
            0,
            0,
            0,
            action::TO_TBL,
            0,
            &[
                u32a(fra::TABLE, 254),
                u32a(fra::SUPPRESS_PREFIXLEN, u32::MAX),
                (fra::PROTOCOL, vec![2]),
                u32a(fra::PRIORITY, 32766),
            ],
        );
        let r = decode(&p, &mut DecodeCounters::default()).unwrap().unwrap();
        assert_eq!(r, Rule::to_table(Family::V6, 32766, 254));
    }

    #[test]
    fn newer_attributes_are_kept_raw_and_counted() {
        let p = rule_payload(
            2,
            0,
            0,
            0,
            action::TO_TBL,
            0,
            &[
                u32a(fra::TABLE, 5),
                (fra::DSCP, vec![10]),
                (fra::PAD, vec![]),
                u32a(fra::PRIORITY, 5),
            ],
        );
        let mut c = DecodeCounters::default();
        let r = decode(&p, &mut c).unwrap().unwrap();
        assert_eq!(
            r.raw,
            vec![RawAttr {
                kind: fra::DSCP,
                value: vec![10]
            }]
        );
        assert_eq!(c.unknown_attrs, 1);
        // Raw bytes take part in identity: a different DSCP is a different rule.
        let p2 = rule_payload(
            2,
            0,
            0,
            0,
            action::TO_TBL,
            0,
            &[
                u32a(fra::TABLE, 5),
                (fra::DSCP, vec![11]),
                u32a(fra::PRIORITY, 5),
            ],
        );
        let r2 = decode(&p2, &mut c).unwrap().unwrap();
        assert_ne!(r, r2);
    }

    #[test]
    fn mark_without_mask_compares_every_bit() {
        let p = rule_payload(
            2,
            0,
            0,
            0,
            action::TO_TBL,
            0,
            &[u32a(fra::TABLE, 5), u32a(fra::FWMARK, 7)],
        );
        let r = decode(&p, &mut DecodeCounters::default()).unwrap().unwrap();
        assert_eq!((r.fwmark, r.fwmask), (7, u32::MAX));
    }

    #[test]
    fn other_families_are_skipped_and_counted() {
        let p = rule_payload(128, 0, 0, 0, action::TO_TBL, 0, &[u32a(fra::TABLE, 5)]);
        let mut c = DecodeCounters::default();
        assert!(decode(&p, &mut c).unwrap().is_none());
        assert_eq!(c.other_families, 1);
    }

    #[test]
    fn malformed_rules_are_errors_not_panics() {
        let mut c = DecodeCounters::default();
        let bad: Vec<Vec<u8>> = vec![
            // Shorter than fib_rule_hdr.
            vec![2, 0, 0],
            // Prefix length beyond the family.
            rule_payload(2, 33, 0, 0, 1, 0, &[(fra::DST, vec![10, 0, 0, 0])]),
            // Prefix length without an address.
            rule_payload(2, 24, 0, 0, 1, 0, &[]),
            // An IPv6 address in an IPv4 rule.
            rule_payload(2, 0, 64, 0, 1, 0, &[(fra::SRC, vec![0x20; 16])]),
            // Address of no family's length.
            rule_payload(2, 0, 8, 0, 1, 0, &[(fra::SRC, vec![10, 0, 0])]),
            // Port range and uid range of the wrong size.
            rule_payload(2, 0, 0, 0, 1, 0, &[(fra::SPORT_RANGE, vec![1, 2, 3])]),
            rule_payload(2, 0, 0, 0, 1, 0, &[(fra::UID_RANGE, vec![1; 4])]),
            // A u32 attribute of two bytes.
            rule_payload(2, 0, 0, 0, 1, 0, &[(fra::PRIORITY, vec![1, 2])]),
        ];
        for (i, p) in bad.iter().enumerate() {
            assert!(decode(p, &mut c).is_err(), "case {i} decoded");
        }
        // An attribute running past the end.
        let mut p = full_v4();
        p.extend_from_slice(&[64, 0, 6, 0, 1, 0]);
        assert!(decode(&p, &mut c).is_err());
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_random_bytes(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..160)) {
            let _ = decode(&bytes, &mut DecodeCounters::default());
        }

        #[test]
        fn never_panics_on_a_corrupted_rule(pos in 0usize..200, byte in proptest::prelude::any::<u8>()) {
            let mut p = full_v4();
            let i = pos % p.len();
            p[i] = byte;
            let _ = decode(&p, &mut DecodeCounters::default());
        }
    }
}
