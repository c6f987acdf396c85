//! `RTM_NEWNEXTHOP` / `RTM_DELNEXTHOP` decoding (include/uapi/linux/nexthop.h).
//!
//! netlink-packet-route has no nexthop messages, so this reads `struct nhmsg` and its
//! `NHA_*` attributes directly. Bounds are checked on every read.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::msg::{attrs, u32_attr, DecodeCounters, DecodeError};
use crate::model::{rtnh, Encap, Family, GroupMember, NexthopKind, NexthopObject};

const NHMSG_LEN: usize = 8;

const NHA_ID: u16 = 1;
const NHA_GROUP: u16 = 2;
const NHA_GROUP_TYPE: u16 = 3;
const NHA_BLACKHOLE: u16 = 4;
const NHA_OIF: u16 = 5;
const NHA_GATEWAY: u16 = 6;
const NHA_ENCAP_TYPE: u16 = 7;
const NHA_ENCAP: u16 = 8;
const NHA_FDB: u16 = 11;
const NHA_RES_GROUP: u16 = 12;
const NHA_OP_FLAGS: u16 = 14;
const NHA_GROUP_STATS: u16 = 15;
const NHA_HW_STATS_ENABLE: u16 = 16;
const NHA_HW_STATS_USED: u16 = 17;

const NEXTHOP_GRP_TYPE_RES: u16 = 1;
/// `struct nexthop_grp { u32 id; u8 weight; u8 weight_high; u16 resvd2; }`
const NEXTHOP_GRP_LEN: usize = 8;

pub fn decode(payload: &[u8], c: &mut DecodeCounters) -> Result<NexthopObject, DecodeError> {
    if payload.len() < NHMSG_LEN {
        return Err(DecodeError::malformed("nexthop", "shorter than nhmsg"));
    }
    let family = Family::from_af(payload[0]);
    let protocol = payload[2];
    let nh_flags = u32::from_ne_bytes([payload[4], payload[5], payload[6], payload[7]]);
    let (mut id, mut oif, mut gateway) = (None, 0u32, None);
    let (mut blackhole, mut members, mut resilient) = (false, None, false);
    let (mut encap_type, mut encap) = (None, None);
    for a in attrs(&payload[NHMSG_LEN..]) {
        let (ty, v) = a?;
        match ty {
            NHA_ID => id = Some(u32_attr(v, "NHA_ID")?),
            NHA_OIF => oif = u32_attr(v, "NHA_OIF")?,
            NHA_BLACKHOLE => blackhole = true,
            NHA_GATEWAY => {
                gateway = Some(match v.len() {
                    4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(v).unwrap_or_default())),
                    16 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(v).unwrap_or_default())),
                    n => return Err(DecodeError::malformed("NHA_GATEWAY", format!("{n} bytes"))),
                })
            }
            NHA_GROUP => {
                if v.len() % NEXTHOP_GRP_LEN != 0 {
                    return Err(DecodeError::malformed(
                        "NHA_GROUP",
                        format!("{} bytes", v.len()),
                    ));
                }
                members = Some(
                    v.chunks_exact(NEXTHOP_GRP_LEN)
                        .map(|g| GroupMember {
                            id: u32::from_ne_bytes([g[0], g[1], g[2], g[3]]),
                            // weight_high extends the 8-bit weight since Linux 6.12.
                            weight: (u32::from(g[5]) << 8 | u32::from(g[4])) + 1,
                        })
                        .collect::<Vec<_>>(),
                );
            }
            NHA_GROUP_TYPE => {
                let t = v
                    .get(..2)
                    .map(|b| u16::from_ne_bytes([b[0], b[1]]))
                    .ok_or_else(|| DecodeError::malformed("NHA_GROUP_TYPE", "short"))?;
                resilient = t == NEXTHOP_GRP_TYPE_RES;
            }
            // Present but not part of the forwarding answer we give.
            NHA_RES_GROUP | NHA_OP_FLAGS | NHA_GROUP_STATS | NHA_HW_STATS_ENABLE
            | NHA_HW_STATS_USED => {}
            NHA_ENCAP_TYPE => {
                let b = v
                    .get(..2)
                    .ok_or_else(|| DecodeError::malformed("NHA_ENCAP_TYPE", "short"))?;
                encap_type = Some(u16::from_ne_bytes([b[0], b[1]]));
            }
            NHA_ENCAP => encap = Some(v),
            NHA_FDB => c.unknown_attrs += 1,
            _ => c.unknown_attrs += 1,
        }
    }
    let id = id.ok_or_else(|| DecodeError::malformed("nexthop", "no NHA_ID"))?;
    let encap = match (encap_type, encap) {
        (Some(kind), Some(data)) => Some(Box::new(Encap {
            kind,
            data: data.into(),
        })),
        (None, Some(_)) => return Err(DecodeError::malformed("NHA_ENCAP", "without type")),
        _ => None,
    };
    let kind = if let Some(members) = members {
        NexthopKind::Group { members, resilient }
    } else if blackhole {
        NexthopKind::Blackhole
    } else {
        NexthopKind::Single {
            gateway,
            ifindex: oif,
            // As reported: an object made while its link had no carrier stays `linkdown`
            // (the kernel never revisits it). Hardware offload bits are not kept.
            flags: (nh_flags as u8) & !(rtnh::OFFLOAD | rtnh::TRAP),
            encap,
        }
    };
    Ok(NexthopObject {
        id,
        family,
        protocol,
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nhmsg(family: u8, attrs: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut b = vec![family, 0, 4, 0, 0, 0, 0, 0];
        for (ty, val) in attrs {
            b.extend_from_slice(&((4 + val.len()) as u16).to_ne_bytes());
            b.extend_from_slice(&ty.to_ne_bytes());
            b.extend_from_slice(val);
            while !b.len().is_multiple_of(4) {
                b.push(0);
            }
        }
        b
    }

    #[test]
    fn single_group_and_blackhole() {
        let mut c = DecodeCounters::default();
        let s = decode(
            &nhmsg(
                2,
                &[
                    (NHA_ID, 10u32.to_ne_bytes().into()),
                    (NHA_GATEWAY, vec![198, 18, 1, 2]),
                    (NHA_OIF, 3u32.to_ne_bytes().into()),
                ],
            ),
            &mut c,
        )
        .unwrap();
        assert_eq!(s.id, 10);
        assert_eq!(
            s.kind,
            NexthopKind::Single {
                gateway: Some("198.18.1.2".parse().unwrap()),
                ifindex: 3,
                flags: 0,
                encap: None,
            }
        );

        let mut grp = Vec::new();
        for (id, w) in [(10u32, 0u8), (11, 2)] {
            grp.extend_from_slice(&id.to_ne_bytes());
            grp.extend_from_slice(&[w, 0, 0, 0]);
        }
        let g = decode(
            &nhmsg(0, &[(NHA_ID, 20u32.to_ne_bytes().into()), (NHA_GROUP, grp)]),
            &mut c,
        )
        .unwrap();
        assert_eq!(
            g.kind,
            NexthopKind::Group {
                members: vec![
                    GroupMember { id: 10, weight: 1 },
                    GroupMember { id: 11, weight: 3 }
                ],
                resilient: false
            }
        );

        let b = decode(
            &nhmsg(
                2,
                &[
                    (NHA_ID, 30u32.to_ne_bytes().into()),
                    (NHA_BLACKHOLE, vec![]),
                ],
            ),
            &mut c,
        )
        .unwrap();
        assert_eq!(b.kind, NexthopKind::Blackhole);
    }

    #[test]
    fn malformed_is_an_error() {
        let mut c = DecodeCounters::default();
        assert!(decode(&[2, 0, 0], &mut c).is_err());
        assert!(decode(&nhmsg(2, &[]), &mut c).is_err()); // no id
        assert!(decode(&nhmsg(2, &[(NHA_ID, vec![1, 2])]), &mut c).is_err());
        assert!(decode(
            &nhmsg(
                2,
                &[
                    (NHA_ID, 1u32.to_ne_bytes().into()),
                    (NHA_GATEWAY, vec![1, 2, 3])
                ]
            ),
            &mut c
        )
        .is_err());
        assert!(decode(
            &nhmsg(
                2,
                &[(NHA_ID, 1u32.to_ne_bytes().into()), (NHA_GROUP, vec![0; 7])]
            ),
            &mut c
        )
        .is_err());
        let mut bad = nhmsg(2, &[]);
        bad.extend_from_slice(&[200, 0, 1, 0]);
        assert!(decode(&bad, &mut c).is_err());
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..128)) {
            let mut c = DecodeCounters::default();
            let _ = decode(&bytes, &mut c);
        }
    }
}
