//! Netlink framing: splitting a received datagram into messages and a message into
//! attributes, building dump requests; and the decoding errors and counters every
//! decoder above (route, link, address, nexthop, rule) shares.
//!
//! Written by hand (not through netlink-packet-core's typed message) so that one bad
//! message costs only itself, and so message types the crate does not know
//! (`RTM_*NEXTHOP`) reach our own decoder.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::model::Family;

pub const NLMSG_HDRLEN: usize = 16;

pub const NLMSG_NOOP: u16 = 1;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLMSG_OVERRUN: u16 = 4;

pub const RTM_NEWLINK: u16 = 16;
pub const RTM_DELLINK: u16 = 17;
pub const RTM_GETLINK: u16 = 18;
pub const RTM_NEWADDR: u16 = 20;
pub const RTM_DELADDR: u16 = 21;
pub const RTM_GETADDR: u16 = 22;
pub const RTM_NEWROUTE: u16 = 24;
pub const RTM_DELROUTE: u16 = 25;
pub const RTM_GETROUTE: u16 = 26;
pub const RTM_NEWRULE: u16 = 32;
pub const RTM_DELRULE: u16 = 33;
pub const RTM_GETRULE: u16 = 34;
pub const RTM_NEWNETCONF: u16 = 80;
pub const RTM_DELNETCONF: u16 = 81;
pub const RTM_GETNETCONF: u16 = 82;
pub const RTM_NEWNEXTHOP: u16 = 104;
pub const RTM_DELNEXTHOP: u16 = 105;
pub const RTM_GETNEXTHOP: u16 = 106;

pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_MULTI: u16 = 0x2;
pub const NLM_F_DUMP_INTR: u16 = 0x10;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_REPLACE: u16 = 0x100;

const RTA_TABLE: u16 = 15;

/// One netlink message inside a datagram.
#[derive(Debug, Clone, Copy)]
pub struct RawMsg<'a> {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    pub port: u32,
    pub payload: &'a [u8],
}

impl<'a> RawMsg<'a> {
    /// A message as the kernel multicasts it: no flags, sequence 0, port 0.
    pub fn notification(ty: u16, payload: &'a [u8]) -> RawMsg<'a> {
        RawMsg {
            ty,
            flags: 0,
            seq: 0,
            port: 0,
            payload,
        }
    }
}

/// Iterates the messages of one datagram. Stops (and reports through
/// [`Messages::truncated`]) at the first header that does not fit.
pub struct Messages<'a> {
    buf: &'a [u8],
    truncated: bool,
}

pub fn messages(buf: &[u8]) -> Messages<'_> {
    Messages {
        buf,
        truncated: false,
    }
}

impl Messages<'_> {
    /// True if the datagram ended in a malformed header (the rest was skipped).
    pub fn truncated(&self) -> bool {
        self.truncated
    }
}

impl<'a> Iterator for Messages<'a> {
    type Item = RawMsg<'a>;

    fn next(&mut self) -> Option<RawMsg<'a>> {
        if self.buf.is_empty() {
            return None;
        }
        if self.buf.len() < NLMSG_HDRLEN {
            self.truncated = true;
            self.buf = &[];
            return None;
        }
        let b = self.buf;
        let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
        if len < NLMSG_HDRLEN || len > b.len() {
            self.truncated = true;
            self.buf = &[];
            return None;
        }
        let msg = RawMsg {
            ty: u16::from_ne_bytes([b[4], b[5]]),
            flags: u16::from_ne_bytes([b[6], b[7]]),
            seq: u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
            port: u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
            payload: &b[NLMSG_HDRLEN..len],
        };
        let aligned = (len + 3) & !3;
        self.buf = if aligned >= b.len() {
            &[]
        } else {
            &b[aligned..]
        };
        Some(msg)
    }
}

/// The errno of an `NLMSG_ERROR` payload (0 is an ACK). `None` if the payload is too
/// short or the code cannot be an errno (`i32::MIN` has no positive counterpart).
pub fn error_code(payload: &[u8]) -> Option<i32> {
    let b = payload.get(..4)?;
    i32::from_ne_bytes([b[0], b[1], b[2], b[3]]).checked_neg()
}

/// What a dump asks the kernel for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DumpKind {
    Links,
    Addrs(Family),
    Nexthops,
    /// Policy rules of one family.
    Rules(Family),
    /// Per-device settings (`ignore_routes_with_linkdown`) of one family.
    Netconf(Family),
    /// Routes of one family; `Some(table)` dumps only that table (strict checking).
    Routes(Family, Option<u32>),
}

/// Builds the request bytes for a dump. With NETLINK_GET_STRICT_CHK every header field
/// the kernel does not filter on must be zero.
pub fn dump_request(kind: DumpKind, seq: u32) -> Vec<u8> {
    let (ty, body): (u16, Vec<u8>) = match kind {
        // ifinfomsg: family, pad, type, index, flags, change
        DumpKind::Links => (RTM_GETLINK, vec![0u8; 16]),
        // ifaddrmsg: family, prefixlen, flags, scope, index
        DumpKind::Addrs(f) => {
            let mut b = vec![0u8; 8];
            b[0] = f.af();
            (RTM_GETADDR, b)
        }
        // nhmsg: family, scope, protocol, resvd, flags
        DumpKind::Nexthops => (RTM_GETNEXTHOP, vec![0u8; 8]),
        // fib_rule_hdr: family, dst_len, src_len, tos, table, res1, res2, action, flags
        DumpKind::Rules(f) => {
            let mut b = vec![0u8; 12];
            b[0] = f.af();
            (RTM_GETRULE, b)
        }
        // netconfmsg: family (padded to 4; strict checking wants nothing after it)
        DumpKind::Netconf(f) => (RTM_GETNETCONF, vec![f.af(), 0, 0, 0]),
        // rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
        DumpKind::Routes(f, table) => {
            let mut b = vec![0u8; 12];
            b[0] = f.af();
            if let Some(t) = table {
                b[4] = if t < 256 { t as u8 } else { 252 }; // RT_TABLE_COMPAT
                push_attr_u32(&mut b, RTA_TABLE, t);
            }
            (RTM_GETROUTE, b)
        }
    };
    let len = NLMSG_HDRLEN + body.len();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&body);
    out
}

fn push_attr_u32(b: &mut Vec<u8>, ty: u16, v: u32) {
    b.extend_from_slice(&8u16.to_ne_bytes());
    b.extend_from_slice(&ty.to_ne_bytes());
    b.extend_from_slice(&v.to_ne_bytes());
}

#[derive(Debug, Error)]
pub enum DecodeError {
    #[error("malformed {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
}

impl DecodeError {
    pub(crate) fn malformed(what: &'static str, detail: impl ToString) -> Self {
        DecodeError::Malformed {
            what,
            detail: detail.to_string(),
        }
    }
}

/// What the decoder met that was valid but unusual. Shown by `route-mirror stats`.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct DecodeCounters {
    /// Messages that failed to parse and were skipped.
    pub malformed: u64,
    /// Attributes we do not model (kept out of the mirror, counted).
    pub unknown_attrs: u64,
    /// Routes with an `RTN_*` type beyond the known ones (kept, shown by number).
    pub unknown_route_types: u64,
    /// Routes of other families (MPLS, multicast routing tables): skipped.
    pub other_families: u64,
    /// Route cache clones (`RTM_F_CLONED`): not part of the FIB, skipped.
    pub cloned: u64,
    /// Message types we did not subscribe to or do not handle: skipped.
    pub unknown_messages: u64,
}

/// Iterates `(type, value)` of netlink attributes; errors on a length that runs past the end.
pub fn attrs(mut b: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8]), DecodeError>> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let ty = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff; // strip NLA_F_NESTED / BYTEORDER
        if len < 4 || len > b.len() {
            b = &[];
            return Some(Err(DecodeError::malformed(
                "attribute",
                format!("length {len}"),
            )));
        }
        let val = &b[4..len];
        let aligned = (len + 3) & !3;
        b = if aligned >= b.len() {
            &[]
        } else {
            &b[aligned..]
        };
        Some(Ok((ty, val)))
    })
}

/// A `u32` attribute (native byte order), named `what` in the error.
pub fn u32_attr(v: &[u8], what: &'static str) -> Result<u32, DecodeError> {
    let b: [u8; 4] = v
        .get(..4)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| DecodeError::malformed(what, format!("{} bytes, want 4", v.len())))?;
    Ok(u32::from_ne_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_and_stops_at_bad_length() {
        let mut d = dump_request(DumpKind::Links, 7);
        let first_len = d.len();
        d.extend(dump_request(DumpKind::Nexthops, 8));
        d.extend_from_slice(&[200, 0, 0, 0, 1, 2]); // claims 200 bytes, has 6
        let mut it = messages(&d);
        let a = it.next().unwrap();
        assert_eq!(
            (a.ty, a.seq, a.payload.len()),
            (RTM_GETLINK, 7, first_len - 16)
        );
        let b = it.next().unwrap();
        assert_eq!((b.ty, b.seq), (RTM_GETNEXTHOP, 8));
        assert!(it.next().is_none());
        assert!(it.truncated());
    }

    #[test]
    fn error_code_of_i32_min_is_not_an_overflow() {
        // Found by the netlink_datagram fuzz target: `-i32::MIN` panicked with overflow
        // checks on (debug builds, which the integration tests run).
        assert_eq!(error_code(&i32::MIN.to_ne_bytes()), None);
        assert_eq!(error_code(&(-105i32).to_ne_bytes()), Some(105));
        assert_eq!(error_code(&0i32.to_ne_bytes()), Some(0));
        assert_eq!(error_code(&[1, 2]), None);
    }

    #[test]
    fn zero_length_header_does_not_loop() {
        let d = [0u8; 32];
        let mut it = messages(&d);
        assert!(it.next().is_none());
        assert!(it.truncated());
    }

    #[test]
    fn table_filter_uses_rta_table_beyond_255() {
        let d = dump_request(DumpKind::Routes(Family::V4, Some(4000)), 1);
        assert_eq!(d.len(), 16 + 12 + 8);
        assert_eq!(d[16 + 4], 252);
        assert_eq!(u32::from_ne_bytes(d[32..36].try_into().unwrap()), 4000);
    }
}
