//! The link facts policy routing needs ([`LinkFacts`]) from `RTM_NEWLINK`: name,
//! `IFLA_MASTER`, `IFLA_GROUP`, and for a VRF device (`IFLA_INFO_KIND "vrf"`) its
//! `IFLA_VRF_TABLE`, through netlink-packet-route's link messages.
//!
//! No `vrf` module on the development machines: the tests below feed synthesised
//! messages laid out as the kernel's `rtnl_fill_ifinfo` + `vrf_fillinfo` send them.

use netlink_packet_core::Parseable;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVrf, LinkAttribute, LinkInfo, LinkMessage,
};

use super::msg::DecodeError;
use crate::fib::l3mdev::LinkFacts;

/// The facts of an already parsed link message.
pub fn facts(lm: &LinkMessage) -> LinkFacts {
    let mut f = LinkFacts {
        ifindex: lm.header.index,
        ..Default::default()
    };
    let mut is_vrf = false;
    let mut table = None;
    for a in &lm.attributes {
        match a {
            LinkAttribute::IfName(n) => f.name = n.clone(),
            LinkAttribute::Controller(m) => f.master = *m,
            LinkAttribute::Group(g) => f.group = *g,
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        LinkInfo::Kind(InfoKind::Vrf) => is_vrf = true,
                        LinkInfo::Data(InfoData::Vrf(vrf)) => {
                            for v in vrf {
                                if let InfoVrf::TableId(t) = v {
                                    table = Some(*t);
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    // A VRF device always reports its table; one that did not would have table 0,
    // which `fib_get_table` reads as main.
    f.vrf_table = is_vrf.then(|| table.unwrap_or(0));
    f
}

/// Parses `RTM_NEWLINK` / `RTM_DELLINK` payload into its facts.
pub fn decode(payload: &[u8]) -> Result<LinkFacts, DecodeError> {
    let lm = LinkMessage::parse(payload).map_err(|e| DecodeError::malformed("link", e))?;
    Ok(facts(&lm))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(ty: u16, val: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&((4 + val.len()) as u16).to_ne_bytes());
        b.extend_from_slice(&ty.to_ne_bytes());
        b.extend_from_slice(val);
        while !b.len().is_multiple_of(4) {
            b.push(0);
        }
        b
    }

    fn cstr(s: &str) -> Vec<u8> {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        v
    }

    const IFLA_IFNAME: u16 = 3;
    const IFLA_MASTER: u16 = 10;
    const IFLA_LINKINFO: u16 = 18;
    const IFLA_GROUP: u16 = 27;
    const IFLA_INFO_KIND: u16 = 1;
    const IFLA_INFO_DATA: u16 = 2;
    const IFLA_INFO_SLAVE_KIND: u16 = 4;
    const IFLA_VRF_TABLE: u16 = 1;

    fn link(index: u32, attrs: &[Vec<u8>]) -> Vec<u8> {
        // struct ifinfomsg: family, pad, type (ARPHRD_ETHER / ARPHRD_NONE), index, flags, change.
        let mut b = vec![0u8, 0];
        b.extend_from_slice(&1u16.to_ne_bytes());
        b.extend_from_slice(&index.to_ne_bytes());
        b.extend_from_slice(&0x10043u32.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        for a in attrs {
            b.extend_from_slice(a);
        }
        b
    }

    /// `ip link add blue type vrf table 1001` as the kernel reports it.
    #[test]
    fn a_vrf_device_reports_its_table() {
        let info = [
            attr(IFLA_INFO_KIND, &cstr("vrf")),
            attr(
                IFLA_INFO_DATA,
                &attr(IFLA_VRF_TABLE, &1001u32.to_ne_bytes()),
            ),
        ]
        .concat();
        let p = link(
            10,
            &[
                attr(IFLA_IFNAME, &cstr("blue")),
                attr(IFLA_GROUP, &0u32.to_ne_bytes()),
                attr(IFLA_LINKINFO, &info),
            ],
        );
        let f = decode(&p).unwrap();
        assert_eq!(
            f,
            LinkFacts {
                ifindex: 10,
                name: "blue".into(),
                master: 0,
                vrf_table: Some(1001),
                group: 0
            }
        );
    }

    /// `ip link set eth1 master blue` (a VRF port: slave kind "vrf") in group 5.
    #[test]
    fn a_vrf_port_reports_its_master_and_group() {
        let info = attr(IFLA_INFO_SLAVE_KIND, &cstr("vrf"));
        let p = link(
            11,
            &[
                attr(IFLA_IFNAME, &cstr("eth1")),
                attr(IFLA_MASTER, &10u32.to_ne_bytes()),
                attr(IFLA_GROUP, &5u32.to_ne_bytes()),
                attr(IFLA_LINKINFO, &info),
            ],
        );
        let f = decode(&p).unwrap();
        assert_eq!((f.master, f.group, f.vrf_table), (10, 5, None));
        assert_eq!(f.name, "eth1");
    }

    /// The mapping end to end: decoded messages into a link map, then a port's VRF.
    #[test]
    fn decoded_links_map_a_port_to_its_vrf_table() {
        let vrf_info = [
            attr(IFLA_INFO_KIND, &cstr("vrf")),
            attr(IFLA_INFO_DATA, &attr(IFLA_VRF_TABLE, &77u32.to_ne_bytes())),
        ]
        .concat();
        let mut m = crate::fib::l3mdev::LinkMap::default();
        m.insert(
            decode(&link(
                20,
                &[
                    attr(IFLA_IFNAME, &cstr("red")),
                    attr(IFLA_LINKINFO, &vrf_info),
                ],
            ))
            .unwrap(),
        );
        m.insert(
            decode(&link(
                21,
                &[
                    attr(IFLA_IFNAME, &cstr("veth-red")),
                    attr(IFLA_MASTER, &20u32.to_ne_bytes()),
                ],
            ))
            .unwrap(),
        );
        let l3 = crate::fib::l3mdev::update_flow(&m, 0, 21);
        assert_eq!(l3.l3mdev, 20);
        assert_eq!(m.vrf_table(l3.l3mdev), Some(77));
    }

    #[test]
    fn malformed_link_info_is_an_error() {
        // IFLA_VRF_TABLE of two bytes.
        let info = [
            attr(IFLA_INFO_KIND, &cstr("vrf")),
            attr(IFLA_INFO_DATA, &attr(IFLA_VRF_TABLE, &[1, 0])),
        ]
        .concat();
        let p = link(10, &[attr(IFLA_LINKINFO, &info)]);
        assert!(decode(&p).is_err());
        assert!(decode(&[0; 5]).is_err());
    }
}
