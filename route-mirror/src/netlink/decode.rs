//! Netlink messages → [`Change`]s.
//!
//! Route, link and address messages go through netlink-packet-route; nexthop objects
//! through our own decoder ([`super::nexthop`]), as the crate has no `RTM_*NEXTHOP`.
//! Nothing here panics on kernel input: a malformed message is an error for the caller
//! to count and skip, odd-but-valid content (unknown attributes, route types, families)
//! is counted in [`DecodeCounters`](super::msg::DecodeCounters) and either kept or skipped.

use netlink_packet_core::Parseable;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::AddressFamily;

use super::msg::{self, DecodeCounters, DecodeError, RawMsg};
use super::{netconf, nexthop, route, rule, vrf};
use crate::model::{Address, Change, Link};

/// Decodes one message. `Ok(None)` means "nothing for the mirror" (already counted).
pub fn decode(m: &RawMsg<'_>, c: &mut DecodeCounters) -> Result<Option<Change>, DecodeError> {
    match m.ty {
        msg::RTM_NEWROUTE | msg::RTM_DELROUTE => route::decode(m, c),
        msg::RTM_NEWLINK => decode_link(m.payload, c).map(|l| Some(Change::NewLink(l))),
        msg::RTM_DELLINK => {
            decode_link(m.payload, c).map(|l| Some(Change::DelLink { ifindex: l.ifindex }))
        }
        msg::RTM_NEWADDR => Ok(decode_addr(m.payload, c)?.map(Change::NewAddr)),
        msg::RTM_DELADDR => Ok(decode_addr(m.payload, c)?.map(Change::DelAddr)),
        msg::RTM_NEWNEXTHOP => nexthop::decode(m.payload, c).map(|n| Some(Change::NewNexthop(n))),
        msg::RTM_DELNEXTHOP => {
            nexthop::decode(m.payload, c).map(|n| Some(Change::DelNexthop { id: n.id }))
        }
        msg::RTM_NEWRULE => Ok(rule::decode(m.payload, c)?.map(Change::NewRule)),
        msg::RTM_DELRULE => Ok(rule::decode(m.payload, c)?.map(Change::DelRule)),
        msg::RTM_NEWNETCONF => Ok(netconf::decode(m.payload, c)?.map(Change::NewNetconf)),
        msg::RTM_DELNETCONF => Ok(netconf::decode(m.payload, c)?.map(|n| Change::DelNetconf {
            family: n.family,
            ifindex: n.ifindex,
        })),
        _ => {
            c.unknown_messages += 1;
            Ok(None)
        }
    }
}

fn decode_link(payload: &[u8], _c: &mut DecodeCounters) -> Result<Link, DecodeError> {
    let lm = LinkMessage::parse(payload).map_err(|e| DecodeError::malformed("link", e))?;
    let l3 = vrf::facts(&lm);
    let mut link = Link {
        ifindex: lm.header.index,
        name: String::new(),
        flags: lm.header.flags.bits(),
        mtu: 0,
        master: l3.master,
        group: l3.group,
        vrf_table: l3.vrf_table,
    };
    for a in &lm.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Mtu(m) => link.mtu = *m,
            _ => {}
        }
    }
    if link.ifindex == 0 {
        return Err(DecodeError::malformed("link", "ifindex 0"));
    }
    Ok(link)
}

fn decode_addr(payload: &[u8], c: &mut DecodeCounters) -> Result<Option<Address>, DecodeError> {
    let am = AddressMessage::parse(payload).map_err(|e| DecodeError::malformed("address", e))?;
    if !matches!(am.header.family, AddressFamily::Inet | AddressFamily::Inet6) {
        c.other_families += 1;
        return Ok(None);
    }
    let (mut local, mut address) = (None, None);
    for a in &am.attributes {
        match a {
            AddressAttribute::Local(l) => local = Some(*l),
            AddressAttribute::Address(x) => address = Some(*x),
            _ => {}
        }
    }
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on p2p links.
    let Some(addr) = local.or(address) else {
        return Err(DecodeError::malformed(
            "address",
            "no IFA_LOCAL or IFA_ADDRESS",
        ));
    };
    Ok(Some(Address {
        ifindex: am.header.index,
        addr,
        prefix_len: am.header.prefix_len,
        scope: u8::from(am.header.scope),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::rtnh;

    /// Builds an RTM_NEWROUTE payload: rtmsg + attributes.
    pub(crate) fn route_payload(
        family: u8,
        dst_len: u8,
        table: u8,
        kind: u8,
        flags: u32,
        attrs: &[(u16, Vec<u8>)],
    ) -> Vec<u8> {
        let mut b = vec![family, dst_len, 0, 0, table, 4, 0, kind];
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

    fn raw(ty: u16, payload: &[u8]) -> RawMsg<'_> {
        RawMsg::notification(ty, payload)
    }

    #[test]
    fn decodes_a_unicast_route_with_table_beyond_255() {
        let p = route_payload(
            2,
            24,
            252,
            1,
            0,
            &[
                (1, vec![203, 0, 113, 0]),            // RTA_DST
                (5, vec![198, 18, 1, 2]),             // RTA_GATEWAY
                (4, 3u32.to_ne_bytes().to_vec()),     // RTA_OIF
                (6, 20u32.to_ne_bytes().to_vec()),    // RTA_PRIORITY
                (15, 4000u32.to_ne_bytes().to_vec()), // RTA_TABLE
            ],
        );
        let mut c = DecodeCounters::default();
        let Some(Change::NewRoute { route, .. }) =
            decode(&raw(msg::RTM_NEWROUTE, &p), &mut c).unwrap()
        else {
            panic!("not a route")
        };
        assert_eq!(route.key.table, 4000);
        assert_eq!(route.key.dst.to_string(), "203.0.113.0/24");
        assert_eq!(route.key.sub.priority, 20);
        assert_eq!(route.attrs.nexthops.len(), 1);
        assert_eq!(route.attrs.nexthops[0].ifindex, 3);
        assert_eq!(
            route.attrs.nexthops[0].gateway,
            Some("198.18.1.2".parse().unwrap())
        );
    }

    #[test]
    fn dead_route_is_a_route_and_its_liveness_is_not_stored() {
        let p = route_payload(
            2,
            24,
            254,
            1,
            u32::from(rtnh::DEAD | rtnh::LINKDOWN | rtnh::ONLINK),
            &[(1, vec![10, 0, 0, 0]), (4, 3u32.to_ne_bytes().to_vec())],
        );
        let mut c = DecodeCounters::default();
        let Some(Change::NewRoute { route, .. }) =
            decode(&raw(msg::RTM_NEWROUTE, &p), &mut c).unwrap()
        else {
            panic!("a dead route is still a route")
        };
        assert_eq!(route.attrs.flags, u32::from(rtnh::ONLINK));
        assert_eq!(route.attrs.nexthops[0].flags, rtnh::ONLINK);
    }

    #[test]
    fn unknown_type_is_kept_and_counted() {
        let p = route_payload(2, 8, 254, 42, 0, &[(1, vec![10, 0, 0, 0])]);
        let mut c = DecodeCounters::default();
        let Some(Change::NewRoute { route, .. }) =
            decode(&raw(msg::RTM_NEWROUTE, &p), &mut c).unwrap()
        else {
            panic!()
        };
        assert_eq!(route.attrs.kind, 42);
        assert_eq!(c.unknown_route_types, 1);
    }

    #[test]
    fn malformed_inputs_are_errors_not_panics() {
        let mut c = DecodeCounters::default();
        // Too short for rtmsg.
        assert!(decode(&raw(msg::RTM_NEWROUTE, &[2, 24]), &mut c).is_err());
        // Prefix length beyond the family.
        let p = route_payload(2, 40, 254, 1, 0, &[(1, vec![10, 0, 0, 0])]);
        assert!(decode(&raw(msg::RTM_NEWROUTE, &p), &mut c).is_err());
        // Destination of the wrong family.
        let p = route_payload(2, 24, 254, 1, 0, &[(1, vec![0; 16])]);
        assert!(decode(&raw(msg::RTM_NEWROUTE, &p), &mut c).is_err());
        // Attribute length running past the end.
        let mut p = route_payload(2, 24, 254, 1, 0, &[]);
        p.extend_from_slice(&[64, 0, 1, 0, 10, 0]);
        assert!(decode(&raw(msg::RTM_NEWROUTE, &p), &mut c).is_err());
        // Truncated link and address messages.
        assert!(decode(&raw(msg::RTM_NEWLINK, &[0; 3]), &mut c).is_err());
        assert!(decode(&raw(msg::RTM_NEWADDR, &[2, 24, 0]), &mut c).is_err());
    }

    #[test]
    fn other_families_are_skipped() {
        let p = route_payload(28, 0, 254, 1, 0, &[]); // AF_MPLS
        let mut c = DecodeCounters::default();
        assert!(decode(&raw(msg::RTM_NEWROUTE, &p), &mut c)
            .unwrap()
            .is_none());
        assert_eq!(c.other_families, 1);
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_random_bytes(ty in 16u16..110, bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let mut c = DecodeCounters::default();
            let _ = decode(&raw(ty, &bytes), &mut c);
        }
    }
}
