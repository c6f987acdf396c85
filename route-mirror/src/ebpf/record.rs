//! Ring records → what the event path applies.
//!
//! A record is an [`EventHeader`] followed by the raw netlink message, or by a compact
//! route the socket filter decoded in the kernel ([`route_mirror_common::compact`]).
//! A compact route becomes the same [`RawRoute`] the netlink decoder reads from the raw
//! message and goes through the same [`route::build`], so both kinds give the same
//! [`Change`] by construction (and the tests check it for every message shape).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use route_mirror_common::compact::{self, has};
use route_mirror_common::{event_flags, EventHeader};

use crate::model::Change;
use crate::netlink::msg::{DecodeCounters, DecodeError, RawMsg};
use crate::netlink::route::{self, RawRoute};

/// One record, as the consumer hands it on.
#[derive(Debug, Clone, Copy)]
pub enum Record<'a> {
    /// A netlink message as the kernel sent it (header included).
    Raw(&'a [u8]),
    /// A compact route record of this `nlmsg_type` (body after the header).
    Compact { msg_type: u16, body: &'a [u8] },
    /// The message was too long to copy: the change it carried is unknown (resync).
    Truncated,
}

impl<'a> Record<'a> {
    pub fn of(h: &EventHeader, body: &'a [u8]) -> Record<'a> {
        if h.flags & event_flags::TRUNCATED != 0 || (body.len() as u64) < u64::from(h.len) {
            Record::Truncated
        } else if h.flags & event_flags::COMPACT != 0 {
            Record::Compact {
                msg_type: h.msg_type,
                body,
            }
        } else {
            Record::Raw(body)
        }
    }

    /// An IPv6 route removal (it can make a running IPv6 route dump skip entries).
    pub fn is_v6_route_removal(&self) -> bool {
        match *self {
            Record::Compact { msg_type, body } => {
                msg_type == compact::RTM_DELROUTE && body.first() == Some(&compact::AF_INET6)
            }
            _ => false,
        }
    }
}

/// Splits a ring record into its header and body (None if shorter than a header).
pub fn split(rec: &[u8]) -> Option<(EventHeader, &[u8])> {
    let b = rec.get(..EventHeader::SIZE)?;
    let h = EventHeader {
        ktime_ns: u64::from_ne_bytes(b[0..8].try_into().ok()?),
        len: u32::from_ne_bytes(b[8..12].try_into().ok()?),
        msg_type: u16::from_ne_bytes([b[12], b[13]]),
        flags: u16::from_ne_bytes([b[14], b[15]]),
    };
    Some((h, &rec[EventHeader::SIZE..]))
}

fn addr(family: u8, b: &[u8]) -> Option<IpAddr> {
    match family {
        compact::AF_INET => Some(IpAddr::V4(Ipv4Addr::from(
            <[u8; 4]>::try_from(b.get(..4)?).ok()?,
        ))),
        compact::AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(b.get(..16)?).ok()?,
        ))),
        _ => None,
    }
}

/// Reads a compact route body into the fields the netlink decoder would have read
/// from the raw message. Errors only on a body the filter cannot have written.
pub(crate) fn parse_compact(body: &[u8]) -> Result<(u16, RawRoute), DecodeError> {
    let bad = |d: &str| DecodeError::malformed("compact route record", d);
    let f = body
        .get(..compact::Route::SIZE)
        .ok_or_else(|| bad("short"))?;
    let u32_at = |o: usize| u32::from_ne_bytes([f[o], f[o + 1], f[o + 2], f[o + 3]]);
    let family = f[0];
    let alen = compact::addr_len(family);
    if alen == 0 {
        return Err(bad("family"));
    }
    let addrs = body
        .get(compact::Route::SIZE..compact::Route::SIZE + 3 * alen)
        .ok_or_else(|| bad("short addresses"))?;
    let present = f[30];
    let slot = |bit: u8, i: usize| {
        if present & bit != 0 {
            addr(family, &addrs[i * alen..])
        } else {
            None
        }
    };
    let raw = RawRoute {
        family,
        dst_len: f[1],
        src_len: f[2],
        tos: f[3],
        protocol: f[5],
        scope: f[6],
        kind: f[7],
        flags: u32_at(8),
        table: u32_at(12),
        priority: u32_at(16),
        oif: u32_at(20),
        nh_id: (present & has::NH_ID != 0).then(|| u32_at(24)),
        pref: (present & has::PREF != 0).then_some(f[31]),
        dst: slot(has::DST, 0),
        gateway: slot(has::GATEWAY, 1),
        prefsrc: slot(has::PREFSRC, 2),
        ..RawRoute::default()
    };
    let nlmsg_flags = u16::from_ne_bytes([f[28], f[29]]);
    Ok((nlmsg_flags, raw))
}

/// Decodes a compact route record into its change, as the netlink decoder does the raw
/// message it stands for.
pub fn decode_compact(
    msg_type: u16,
    body: &[u8],
    c: &mut DecodeCounters,
) -> Result<Option<Change>, DecodeError> {
    if msg_type != compact::RTM_NEWROUTE && msg_type != compact::RTM_DELROUTE {
        return Err(DecodeError::malformed(
            "compact route record",
            format!("message type {msg_type}"),
        ));
    }
    let (flags, raw) = parse_compact(body)?;
    let m = RawMsg {
        flags,
        ..RawMsg::notification(msg_type, &[])
    };
    route::build(&m, raw, c)
}

/// The compact record the socket filter writes for `msg` (a whole netlink message),
/// if it compacts it: the filter's own code ([`compact::route`]), run in user space.
pub fn compact_like_the_filter(msg: &[u8]) -> Option<Vec<u8>> {
    let mut buf = Box::new([0u8; route_mirror_common::MAX_MSG]);
    let n = msg.len();
    buf.get_mut(..n)?.copy_from_slice(msg);
    let mut r = compact::Route::default();
    let mut addrs = [0u8; compact::ADDRS];
    if !compact::route(&buf, n, &mut r, &mut addrs) {
        return None;
    }
    let alen = compact::addr_len(r.rtm[0]);
    let mut out = Vec::with_capacity(compact::Route::SIZE + 3 * alen);
    out.extend_from_slice(&r.rtm);
    for v in [r.rtm_flags, r.table, r.priority, r.oif, r.nh_id] {
        out.extend_from_slice(&v.to_ne_bytes());
    }
    out.extend_from_slice(&r.nlmsg_flags.to_ne_bytes());
    out.extend_from_slice(&[r.present, r.pref]);
    out.extend_from_slice(&addrs[..3 * alen]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::decode;
    use crate::netlink::msg::{self, NLMSG_HDRLEN};
    use proptest::prelude::*;

    const RTA_DST: u16 = 1;
    const RTA_SRC: u16 = 2;
    const RTA_OIF: u16 = 4;
    const RTA_GATEWAY: u16 = 5;
    const RTA_PRIORITY: u16 = 6;
    const RTA_PREFSRC: u16 = 7;
    const RTA_METRICS: u16 = 8;
    const RTA_MULTIPATH: u16 = 9;
    const RTA_CACHEINFO: u16 = 12;
    const RTA_TABLE: u16 = 15;
    const RTA_VIA: u16 = 18;
    const RTA_PREF: u16 = 20;
    const RTA_EXPIRES: u16 = 23;
    const RTA_NH_ID: u16 = 30;

    use crate::netlink::route::tests::{ip_bytes as addr, put};

    /// A whole netlink message (header included) around a route payload.
    fn message(ty: u16, nlflags: u16, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::with_capacity(NLMSG_HDRLEN + payload.len());
        m.extend_from_slice(&((NLMSG_HDRLEN + payload.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&nlflags.to_ne_bytes());
        m.extend_from_slice(&[0; 8]);
        m.extend_from_slice(payload);
        m
    }

    /// Optional parts of a generated route message.
    #[derive(Debug, Clone, Copy, Default)]
    struct Shape {
        v6: bool,
        kind: u8,
        table: u32,
        tos: u8,
        dst_len: u8,
        rtm_flags: u32,
        priority: Option<u32>,
        gateway: bool,
        oif: Option<u32>,
        prefsrc: bool,
        nh_id: Option<u32>,
        pref: bool,
        cacheinfo: bool,
        /// Fallback triggers: multipath, metrics, source prefix, RTA_VIA, RTA_EXPIRES,
        /// an attribute nobody models, a gateway of the other family's length.
        multipath: bool,
        metrics: bool,
        src: bool,
        via: bool,
        expires: bool,
        unknown: bool,
        odd_gateway: bool,
    }

    impl Shape {
        fn payload(&self) -> Vec<u8> {
            let v6 = self.v6;
            let mut b = vec![
                if v6 { 10 } else { 2 },
                self.dst_len,
                if self.src { 64 } else { 0 },
                if v6 { 0 } else { self.tos },
                self.table.min(255) as u8,
                12,
                0,
                self.kind,
            ];
            b.extend_from_slice(&self.rtm_flags.to_ne_bytes());
            put(&mut b, RTA_TABLE, &self.table.to_ne_bytes());
            if self.dst_len > 0 {
                let mut dst = addr(v6, 7);
                *dst.last_mut().unwrap() = 0;
                put(&mut b, RTA_DST, &dst);
            }
            if self.src {
                put(&mut b, RTA_SRC, &addr(v6, 0));
            }
            if let Some(p) = self.priority {
                put(&mut b, RTA_PRIORITY, &p.to_ne_bytes());
            }
            if self.prefsrc {
                put(&mut b, RTA_PREFSRC, &addr(v6, 1));
            }
            if let Some(id) = self.nh_id {
                put(&mut b, RTA_NH_ID, &id.to_ne_bytes());
            }
            if self.metrics {
                let mut m = Vec::new();
                put(&mut m, 2, &1400u32.to_ne_bytes());
                put(&mut b, RTA_METRICS, &m);
            }
            if self.multipath {
                let mut mp = Vec::new();
                for (seed, ifindex) in [(3u8, 3u32), (4, 4)] {
                    let mut nh = vec![0u8; 8];
                    put(&mut nh, RTA_GATEWAY, &addr(v6, seed));
                    let len = nh.len() as u16;
                    nh[0..2].copy_from_slice(&len.to_ne_bytes());
                    nh[4..8].copy_from_slice(&ifindex.to_ne_bytes());
                    mp.extend_from_slice(&nh);
                }
                put(&mut b, RTA_MULTIPATH, &mp);
            }
            if self.gateway {
                put(&mut b, RTA_GATEWAY, &addr(v6, 2));
            }
            if self.odd_gateway {
                put(&mut b, RTA_GATEWAY, &addr(!v6, 2));
            }
            if self.via {
                let mut v = 10u16.to_ne_bytes().to_vec();
                v.extend_from_slice(&addr(true, 5));
                put(&mut b, RTA_VIA, &v);
            }
            if let Some(oif) = self.oif {
                put(&mut b, RTA_OIF, &oif.to_ne_bytes());
            }
            if self.cacheinfo {
                put(&mut b, RTA_CACHEINFO, &[0; 32]);
            }
            if self.expires {
                put(&mut b, RTA_EXPIRES, &30u32.to_ne_bytes());
            }
            if self.pref {
                put(&mut b, RTA_PREF, &[1]);
            }
            if self.unknown {
                put(&mut b, 27, &[6]); // RTA_IP_PROTO: not modelled
            }
            b
        }

        fn compactable(&self) -> bool {
            !(self.multipath
                || self.metrics
                || self.src
                || self.via
                || self.expires
                || self.unknown
                || self.odd_gateway)
        }
    }

    fn shape() -> impl Strategy<Value = Shape> {
        (
            (
                any::<bool>(),
                0u8..=12,
                prop::sample::select(vec![0u32, 100, 254, 255, 4000]),
            ),
            (
                any::<u8>(),
                any::<u8>(),
                any::<u32>(),
                prop::option::of(any::<u32>()),
            ),
            (any::<bool>(), prop::option::of(1u32..100), any::<bool>()),
            (prop::option::of(1u32..2000), any::<bool>(), any::<bool>()),
            prop::collection::vec(any::<bool>(), 7),
        )
            .prop_map(
                |(
                    (v6, kind, table),
                    (tos, len, rtm_flags, priority),
                    (gateway, oif, prefsrc),
                    (nh_id, pref, cacheinfo),
                    fb,
                )| {
                    // Rare fallbacks (about one message in three has one).
                    let rare = |i: usize, bias: bool| fb[i] && bias;
                    Shape {
                        v6,
                        kind,
                        table,
                        tos,
                        dst_len: if v6 { len % 129 } else { len % 33 },
                        rtm_flags: rtm_flags & 0x25f,
                        priority,
                        gateway,
                        oif,
                        prefsrc,
                        nh_id,
                        pref,
                        cacheinfo,
                        multipath: rare(0, len % 8 == 0),
                        metrics: rare(1, len % 8 == 1),
                        src: rare(2, v6 && len % 8 == 2),
                        via: rare(3, !v6 && len % 8 == 3),
                        expires: rare(4, len % 8 == 4),
                        unknown: rare(5, len % 8 == 5),
                        odd_gateway: rare(6, len % 8 == 6),
                    }
                },
            )
    }

    /// Decodes `m` both ways; asserts both kinds give the same change and counters.
    /// Returns whether the filter compacted it.
    fn same_change(m: &[u8]) -> bool {
        let Some(body) = compact_like_the_filter(m) else {
            return false;
        };
        let ty = u16::from_ne_bytes([m[4], m[5]]);
        let raw = msg::messages(m).next().expect("one message");
        let (mut c_raw, mut c_compact) = (DecodeCounters::default(), DecodeCounters::default());
        let from_raw = decode::decode(&raw, &mut c_raw);
        let from_compact = decode_compact(ty, &body, &mut c_compact);
        assert_eq!(
            format!("{from_raw:?}"),
            format!("{from_compact:?}"),
            "message {m:02x?}"
        );
        assert_eq!(format!("{c_raw:?}"), format!("{c_compact:?}"));
        true
    }

    #[test]
    fn every_common_kind_compacts_to_the_same_change() {
        use crate::model::rtn;
        let base = Shape {
            table: 254,
            dst_len: 24,
            priority: Some(100),
            ..Shape::default()
        };
        let gw = Shape {
            gateway: true,
            oif: Some(3),
            ..base
        };
        let mut cases = Vec::new();
        for v6 in [false, true] {
            let v6_extras = |s: Shape| Shape {
                cacheinfo: v6,
                pref: v6,
                dst_len: if v6 { 48 } else { s.dst_len },
                v6,
                ..s
            };
            for kind in [
                rtn::UNICAST,
                rtn::LOCAL,
                rtn::BROADCAST,
                rtn::BLACKHOLE,
                rtn::UNREACHABLE,
                rtn::PROHIBIT,
                rtn::THROW,
                42,
            ] {
                cases.push(v6_extras(Shape { kind, ..gw }));
                cases.push(v6_extras(Shape { kind, ..base }));
            }
            for s in [
                Shape {
                    gateway: false,
                    ..gw
                }, // device route
                Shape { dst_len: 0, ..gw }, // default route, no RTA_DST
                Shape {
                    priority: None,
                    ..gw
                }, // no metric
                Shape { table: 100, ..gw }, // table below 256
                Shape { table: 4000, ..gw }, // RTA_TABLE only
                Shape { tos: 0x10, ..gw },  // IPv4 TOS
                Shape {
                    prefsrc: true,
                    ..gw
                }, // preferred source
                Shape {
                    nh_id: Some(7),
                    gateway: false,
                    oif: None,
                    ..base
                }, // nexthop object
                Shape {
                    nh_id: Some(7),
                    ..gw
                }, // nexthop object, compat mode
                Shape {
                    rtm_flags: 0x10,
                    ..gw
                }, // linkdown
                Shape {
                    rtm_flags: 0x01,
                    ..gw
                }, // dead
                Shape {
                    rtm_flags: 0x04,
                    ..gw
                }, // onlink
                Shape {
                    rtm_flags: 0x200,
                    ..gw
                }, // cloned: skipped by both
            ] {
                cases.push(v6_extras(s));
            }
        }
        for s in &cases {
            let kind = s.kind;
            for ty in [msg::RTM_NEWROUTE, msg::RTM_DELROUTE] {
                for nlflags in [0u16, msg::NLM_F_REPLACE, 0x600 /* CREATE | EXCL */] {
                    let m = message(ty, nlflags, &s.payload());
                    assert!(same_change(&m), "kind {kind} not compacted: {s:?}");
                }
            }
        }
        // The rest stays raw.
        for fallback in [
            Shape {
                multipath: true,
                gateway: false,
                oif: None,
                ..gw
            },
            Shape {
                metrics: true,
                ..gw
            },
            Shape {
                src: true,
                v6: true,
                ..gw
            },
            Shape {
                via: true,
                gateway: false,
                ..gw
            },
            Shape {
                expires: true,
                v6: true,
                ..gw
            },
            Shape {
                unknown: true,
                ..gw
            },
            Shape {
                odd_gateway: true,
                gateway: false,
                ..gw
            },
        ] {
            let m = message(msg::RTM_NEWROUTE, 0, &fallback.payload());
            assert!(!same_change(&m), "compacted a fallback shape: {fallback:?}");
        }
        // Not a route message, another family, two messages in one: raw.
        let gw_msg = message(msg::RTM_NEWROUTE, 0, &gw.payload());
        let mut link = gw_msg.clone();
        link[4] = msg::RTM_NEWLINK as u8;
        assert!(compact_like_the_filter(&link).is_none());
        let mut mpls = gw_msg.clone();
        mpls[NLMSG_HDRLEN] = 28;
        assert!(compact_like_the_filter(&mpls).is_none());
        let mut two = gw_msg.clone();
        two.extend_from_slice(&gw_msg);
        assert!(compact_like_the_filter(&two).is_none());
    }

    /// The route messages captured from a real kernel (the fuzz seeds).
    #[test]
    fn captured_messages_compact_to_the_same_change() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/route_msg");
        let mut compacted = 0;
        for e in std::fs::read_dir(&dir).expect("fuzz seeds") {
            let m = std::fs::read(e.unwrap().path()).unwrap();
            if m.len() >= NLMSG_HDRLEN && same_change(&m) {
                compacted += 1;
            }
        }
        assert!(compacted >= 10, "only {compacted} seeds compacted");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]
        /// Generated messages: what compacts gives the raw decoder's change; what should
        /// compact does.
        #[test]
        fn generated_messages(s in shape(), del in any::<bool>(), replace in any::<bool>()) {
            let ty = if del { msg::RTM_DELROUTE } else { msg::RTM_NEWROUTE };
            let m = message(ty, if replace { msg::NLM_F_REPLACE } else { 0 }, &s.payload());
            prop_assert_eq!(same_change(&m), s.compactable(), "{:?}", s);
        }

        /// Corrupted messages: whatever still compacts decodes as the raw message does.
        #[test]
        fn corrupted_messages(s in shape(), at in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<prop::sample::Index>()) {
            let mut m = message(msg::RTM_NEWROUTE, 0, &s.payload());
            let i = at.index(m.len());
            m[i] = byte;
            m.truncate(cut.index(m.len() + 1));
            same_change(&m);
        }

        /// Arbitrary compact bodies never panic the decoder.
        #[test]
        fn arbitrary_compact_bodies(body in prop::collection::vec(any::<u8>(), 0..100), del in any::<bool>()) {
            let ty = if del { msg::RTM_DELROUTE } else { msg::RTM_NEWROUTE };
            let _ = decode_compact(ty, &body, &mut DecodeCounters::default());
        }
    }
}
