//! `RTM_NEWNETCONF` / `RTM_DELNETCONF` decoding (include/uapi/linux/netconf.h).
//!
//! Only `ignore_routes_with_linkdown` matters to the mirror: with it set, a next hop
//! whose link lost carrier is reported `dead` and skipped by lookups (per device, or for
//! every device through `all`). netlink-packet-route has no netconf messages, so this
//! reads `struct netconfmsg` (one byte, padded to four) and its `NETCONFA_*` attributes.

use super::msg::{attrs, DecodeCounters, DecodeError};
use crate::model::{Family, Netconf};

/// `struct netconfmsg { u8 ncm_family; }`, aligned.
const NETCONFMSG_LEN: usize = 4;

const NETCONFA_IFINDEX: u16 = 1;
const NETCONFA_FORWARDING: u16 = 2;
const NETCONFA_RP_FILTER: u16 = 3;
const NETCONFA_MC_FORWARDING: u16 = 4;
const NETCONFA_PROXY_NEIGH: u16 = 5;
const NETCONFA_IGNORE_ROUTES_WITH_LINKDOWN: u16 = 6;
const NETCONFA_INPUT: u16 = 7;
const NETCONFA_BC_FORWARDING: u16 = 8;

fn i32_of(v: &[u8], what: &'static str) -> Result<i32, DecodeError> {
    let b: [u8; 4] = v
        .get(..4)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| DecodeError::malformed(what, format!("{} bytes, want 4", v.len())))?;
    Ok(i32::from_ne_bytes(b))
}

/// Decodes one netconf message; `Ok(None)` for families the mirror does not keep
/// (MPLS, ...), counted.
pub fn decode(payload: &[u8], c: &mut DecodeCounters) -> Result<Option<Netconf>, DecodeError> {
    let family = *payload
        .first()
        .ok_or_else(|| DecodeError::malformed("netconf", "empty"))?;
    let Some(family) = Family::from_af(family) else {
        c.other_families += 1;
        return Ok(None);
    };
    let mut ifindex = None;
    let mut ignore_linkdown = None;
    for a in attrs(payload.get(NETCONFMSG_LEN..).unwrap_or_default()) {
        let (ty, v) = a?;
        match ty {
            NETCONFA_IFINDEX => ifindex = Some(i32_of(v, "NETCONFA_IFINDEX")?),
            NETCONFA_IGNORE_ROUTES_WITH_LINKDOWN => {
                ignore_linkdown = Some(i32_of(v, "NETCONFA_IGNORE_ROUTES_WITH_LINKDOWN")? != 0)
            }
            NETCONFA_FORWARDING
            | NETCONFA_RP_FILTER
            | NETCONFA_MC_FORWARDING
            | NETCONFA_PROXY_NEIGH
            | NETCONFA_INPUT
            | NETCONFA_BC_FORWARDING => {}
            _ => c.unknown_attrs += 1,
        }
    }
    let ifindex =
        ifindex.ok_or_else(|| DecodeError::malformed("netconf", "no NETCONFA_IFINDEX"))?;
    Ok(Some(Netconf {
        family,
        ifindex,
        ignore_linkdown,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(family: u8, attrs: &[(u16, i32)]) -> Vec<u8> {
        let mut b = vec![family, 0, 0, 0];
        for (ty, v) in attrs {
            b.extend_from_slice(&8u16.to_ne_bytes());
            b.extend_from_slice(&ty.to_ne_bytes());
            b.extend_from_slice(&v.to_ne_bytes());
        }
        b
    }

    #[test]
    fn decodes_what_the_kernel_sends() {
        let mut c = DecodeCounters::default();
        // A device's full record (sent when it registers), then `all` changing.
        let full = msg(2, &[(1, 5), (2, 0), (3, 0), (4, 0), (8, 0), (5, 0), (6, 1)]);
        let n = decode(&full, &mut c).unwrap().unwrap();
        assert_eq!(
            (n.family, n.ifindex, n.ignore_linkdown),
            (Family::V4, 5, Some(true))
        );
        let all = decode(&msg(10, &[(1, -1), (6, 0)]), &mut c)
            .unwrap()
            .unwrap();
        assert_eq!(
            (all.family, all.ifindex, all.ignore_linkdown),
            (Family::V6, -1, Some(false))
        );
        let fwd_only = decode(&msg(2, &[(1, 3), (2, 1)]), &mut c).unwrap().unwrap();
        assert_eq!(fwd_only.ignore_linkdown, None);
        assert_eq!(c.unknown_attrs, 0);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let mut c = DecodeCounters::default();
        assert!(decode(&[], &mut c).is_err());
        assert!(decode(&msg(2, &[(6, 1)]), &mut c).is_err()); // no ifindex
        let mut m = msg(2, &[(1, 3)]);
        m.truncate(6);
        assert!(decode(&m, &mut c).is_err());
        assert!(decode(&msg(28, &[(1, 3)]), &mut c).unwrap().is_none()); // AF_MPLS
        assert_eq!(c.other_families, 1);
    }
}
