//! `RTM_NEWROUTE` / `RTM_DELROUTE` decoding, by hand.
//!
//! Routes are the hot path: a full Internet table is a million of them at every resync.
//! netlink-packet-route builds a `Vec` of typed attributes (and one per next hop) for each
//! message; this reads the few attributes the mirror models straight from the bytes into
//! stack values, which measured about twice as fast end to end (`cargo bench --bench
//! decode`, BENCHMARKS.md). The crate stays the reference: a differential test checks both
//! decoders agree on every message shape the kernel sends.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ipnet::IpNet;
use smallvec::SmallVec;

use super::msg::{self, attrs, u32_attr, DecodeCounters, DecodeError, RawMsg};
use crate::model::{
    rtax, rtm_f, rtn, rtnh, Change, Encap, Family, MetricValue, Metrics, NextHop, Route,
    RouteAttrs, RouteKey, SubKey,
};

const RTMSG_LEN: usize = 12;

const RTA_DST: u16 = 1;
const RTA_SRC: u16 = 2;
const RTA_IIF: u16 = 3;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PRIORITY: u16 = 6;
const RTA_PREFSRC: u16 = 7;
const RTA_METRICS: u16 = 8;
const RTA_MULTIPATH: u16 = 9;
const RTA_FLOW: u16 = 11;
const RTA_CACHEINFO: u16 = 12;
const RTA_TABLE: u16 = 15;
const RTA_MARK: u16 = 16;
const RTA_VIA: u16 = 18;
const RTA_PREF: u16 = 20;
const RTA_ENCAP_TYPE: u16 = 21;
const RTA_ENCAP: u16 = 22;
const RTA_EXPIRES: u16 = 23;
const RTA_PAD: u16 = 24;
const RTA_UID: u16 = 25;
const RTA_NH_ID: u16 = 30;
/// `struct rtnexthop { u16 len; u8 flags; u8 hops; i32 ifindex; }`
const RTNH_LEN: usize = 8;

/// The fields of a route message the mirror models, before they become a [`Route`].
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct RawRoute {
    pub family: u8,
    pub dst_len: u8,
    pub src_len: u8,
    pub tos: u8,
    pub table: u32,
    pub protocol: u8,
    pub scope: u8,
    pub kind: u8,
    pub flags: u32,
    pub dst: Option<IpAddr>,
    pub src: Option<IpAddr>,
    pub gateway: Option<IpAddr>,
    pub prefsrc: Option<IpAddr>,
    pub oif: u32,
    pub priority: u32,
    pub nh_id: Option<u32>,
    pub pref: Option<u8>,
    /// `RTA_FLOW` (IPv4 realms) of a single-path route; 0 when absent.
    pub flow: u32,
    /// `RTA_ENCAP_TYPE` + `RTA_ENCAP` of a single-path route.
    pub encap: Option<Box<Encap>>,
    /// `RTA_METRICS`, in message order.
    pub metrics: Vec<(u16, MetricValue)>,
    /// `RTA_MULTIPATH` hops with their raw `RTNH_F_*` flags.
    pub multipath: Option<SmallVec<[NextHop; 2]>>,
    pub unknown_attrs: u64,
}

/// An address attribute of the route's family: 4 or 16 bytes.
fn addr(v: &[u8], what: &'static str) -> Result<IpAddr, DecodeError> {
    match v.len() {
        4 => Ok(IpAddr::V4(Ipv4Addr::new(v[0], v[1], v[2], v[3]))),
        16 => {
            let mut b = [0u8; 16];
            b.copy_from_slice(v);
            Ok(IpAddr::V6(Ipv6Addr::from(b)))
        }
        n => Err(DecodeError::malformed(what, format!("{n}-byte address"))),
    }
}

/// `RTA_VIA`: `struct rtvia { u16 family; u8 addr[]; }` (IPv4 routes via IPv6 gateways).
fn via(v: &[u8]) -> Result<IpAddr, DecodeError> {
    if v.len() < 2 {
        return Err(DecodeError::malformed("RTA_VIA", "short"));
    }
    addr(&v[2..], "RTA_VIA")
}

/// Collects `RTA_ENCAP_TYPE` and `RTA_ENCAP` (in either order) into one [`Encap`].
#[derive(Default)]
struct EncapParts<'a> {
    kind: Option<u16>,
    data: Option<&'a [u8]>,
}

impl<'a> EncapParts<'a> {
    /// Takes `RTA_ENCAP_TYPE` or `RTA_ENCAP`.
    fn take(&mut self, ty: u16, val: &'a [u8]) -> Result<(), DecodeError> {
        if ty == RTA_ENCAP {
            self.data = Some(val);
            return Ok(());
        }
        let b = val
            .get(..2)
            .ok_or_else(|| DecodeError::malformed("RTA_ENCAP_TYPE", "short"))?;
        self.kind = Some(u16::from_ne_bytes([b[0], b[1]]));
        Ok(())
    }

    /// The encapsulation; an `RTA_ENCAP` without its type is malformed (the kernel
    /// always sends both), a type without data is no encapsulation.
    fn finish(self) -> Result<Option<Box<Encap>>, DecodeError> {
        match (self.kind, self.data) {
            (Some(kind), Some(data)) => Ok(Some(Box::new(Encap {
                kind,
                data: data.into(),
            }))),
            (None, Some(_)) => Err(DecodeError::malformed(
                "RTA_ENCAP",
                "without RTA_ENCAP_TYPE",
            )),
            _ => Ok(None),
        }
    }
}

fn multipath(v: &[u8], unknown: &mut u64) -> Result<SmallVec<[NextHop; 2]>, DecodeError> {
    let mut hops = SmallVec::new();
    let mut b = v;
    while b.len() >= RTNH_LEN {
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        if len < RTNH_LEN || len > b.len() {
            return Err(DecodeError::malformed(
                "RTA_MULTIPATH",
                format!("rtnexthop length {len}"),
            ));
        }
        let mut hop = NextHop {
            gateway: None,
            ifindex: u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
            weight: u16::from(b[3]) + 1,
            flags: b[2],
            encap: None,
            realms: 0,
        };
        let mut encap = EncapParts::default();
        for a in attrs(&b[RTNH_LEN..len]) {
            let (ty, val) = a?;
            match ty {
                RTA_GATEWAY => hop.gateway = Some(addr(val, "RTA_GATEWAY")?),
                RTA_VIA => hop.gateway = Some(via(val)?),
                RTA_FLOW => hop.realms = u32_attr(val, "RTA_FLOW")?,
                RTA_ENCAP_TYPE | RTA_ENCAP => encap.take(ty, val)?,
                _ => *unknown += 1,
            }
        }
        hop.encap = encap.finish()?;
        hops.push(hop);
        let aligned = (len + 3) & !3;
        b = if aligned >= b.len() {
            &[]
        } else {
            &b[aligned..]
        };
    }
    Ok(hops)
}

/// Reads a route message's header and the attributes the mirror models.
pub(crate) fn parse(payload: &[u8]) -> Result<RawRoute, DecodeError> {
    let h = payload
        .get(..RTMSG_LEN)
        .ok_or_else(|| DecodeError::malformed("route", "shorter than rtmsg"))?;
    let mut r = RawRoute {
        family: h[0],
        dst_len: h[1],
        src_len: h[2],
        tos: h[3],
        table: u32::from(h[4]),
        protocol: h[5],
        scope: h[6],
        kind: h[7],
        flags: u32::from_ne_bytes([h[8], h[9], h[10], h[11]]),
        ..Default::default()
    };
    let mut encap = EncapParts::default();
    for a in attrs(&payload[RTMSG_LEN..]) {
        let (ty, v) = a?;
        match ty {
            RTA_DST => r.dst = Some(addr(v, "RTA_DST")?),
            RTA_SRC => r.src = Some(addr(v, "RTA_SRC")?),
            RTA_GATEWAY => r.gateway = Some(addr(v, "RTA_GATEWAY")?),
            RTA_VIA => r.gateway = Some(via(v)?),
            RTA_PREFSRC => r.prefsrc = Some(addr(v, "RTA_PREFSRC")?),
            RTA_OIF => r.oif = u32_attr(v, "RTA_OIF")?,
            RTA_PRIORITY => r.priority = u32_attr(v, "RTA_PRIORITY")?,
            RTA_TABLE => r.table = u32_attr(v, "RTA_TABLE")?,
            RTA_NH_ID => r.nh_id = Some(u32_attr(v, "RTA_NH_ID")?),
            RTA_PREF => {
                r.pref = Some(
                    *v.first()
                        .ok_or_else(|| DecodeError::malformed("RTA_PREF", "empty"))?,
                )
            }
            RTA_MULTIPATH => r.multipath = Some(multipath(v, &mut r.unknown_attrs)?),
            RTA_FLOW => r.flow = u32_attr(v, "RTA_FLOW")?,
            RTA_ENCAP_TYPE | RTA_ENCAP => encap.take(ty, v)?,
            RTA_METRICS => {
                for m in attrs(v) {
                    let (mty, mv) = m?;
                    let value = if mty == rtax::CC_ALGO {
                        let name = mv.split(|b| *b == 0).next().unwrap_or_default();
                        MetricValue::Name(String::from_utf8_lossy(name).into())
                    } else {
                        MetricValue::U32(u32_attr(mv, "RTA_METRICS")?)
                    };
                    r.metrics.push((mty, value));
                }
            }
            // Informational or per-dump values that say nothing about the forwarding state.
            RTA_IIF | RTA_CACHEINFO | RTA_MARK | RTA_EXPIRES | RTA_PAD | RTA_UID => {}
            _ => r.unknown_attrs += 1,
        }
    }
    r.encap = encap.finish()?;
    Ok(r)
}

fn net(
    family: Family,
    addr: Option<IpAddr>,
    len: u8,
    what: &'static str,
) -> Result<IpNet, DecodeError> {
    let addr = match (family, addr) {
        (_, Some(a)) if Family::of(&a) == family => a,
        (_, Some(a)) => {
            return Err(DecodeError::malformed(
                what,
                format!("{a} in a {family} route"),
            ))
        }
        (Family::V4, None) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        (Family::V6, None) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    // The kernel sends dst with host bits cleared; trunc() keeps the key canonical anyway.
    IpNet::new(addr, len)
        .map(|n| n.trunc())
        .map_err(|_| DecodeError::malformed(what, format!("prefix length {len}")))
}

/// Turns a parsed route message into the change it means for the mirror.
pub(crate) fn build(
    m: &RawMsg<'_>,
    r: RawRoute,
    c: &mut DecodeCounters,
) -> Result<Option<Change>, DecodeError> {
    c.unknown_attrs += r.unknown_attrs;
    let Some(family) = Family::from_af(r.family) else {
        c.other_families += 1;
        return Ok(None);
    };
    if r.flags & rtm_f::CLONED != 0 {
        c.cloned += 1;
        return Ok(None);
    }
    let dst = net(family, r.dst, r.dst_len, "route destination")?;
    let src = match family {
        Family::V6 if r.src_len > 0 || r.src.is_some() => {
            Some(net(family, r.src, r.src_len, "route source")?)
        }
        _ => None,
    };
    let multipath = r.multipath.as_ref().is_some_and(|mp| mp.len() > 1);
    // Next hops in the kernel's order (an IPv6 notification about one sibling of a
    // multipath route lists that sibling first: the mirror re-orders on merge). Only the
    // configured flags are kept; liveness is derived.
    let mut hops: SmallVec<[NextHop; 2]> = match r.multipath {
        Some(mp) => mp,
        None => {
            let mut one = SmallVec::new();
            // A reject route has no gateway or device, but keeps its realms.
            if r.gateway.is_some() || r.oif != 0 || r.flow != 0 || r.encap.is_some() {
                one.push(NextHop {
                    gateway: r.gateway,
                    ifindex: r.oif,
                    weight: 1,
                    flags: r.flags as u8,
                    encap: r.encap,
                    realms: r.flow,
                });
            }
            one
        }
    };
    for h in hops.iter_mut() {
        h.flags &= rtnh::STABLE;
    }
    // A nexthop-object route is its object, whatever `nexthop_compat_mode` spells out.
    if r.nh_id.is_some() {
        hops.clear();
    }
    let key = RouteKey {
        table: r.table,
        dst,
        sub: SubKey {
            priority: r.priority,
            tos: if family == Family::V4 { r.tos } else { 0 },
            src,
        },
    };
    if r.kind > rtn::MAX_KNOWN {
        c.unknown_route_types += 1;
    }
    let mut flags = r.flags & !rtm_f::VOLATILE;
    if family == Family::V4 && multipath && r.nh_id.is_none() {
        // The kernel's fib_info flag (see RouteAttrs::flags).
        flags |= r.flags & u32::from(rtnh::LINKDOWN);
    }
    let attrs = RouteAttrs {
        protocol: r.protocol,
        kind: r.kind,
        scope: r.scope,
        flags,
        prefsrc: r.prefsrc,
        nh_id: r.nh_id,
        nexthops: hops,
        pref: r.pref,
        metrics: Metrics::new(r.metrics),
        hop_metrics: None,
    };
    let route = Route {
        key,
        attrs: Arc::new(attrs),
    };
    if m.ty == msg::RTM_DELROUTE {
        return Ok(Some(Change::DelRoute { route }));
    }
    Ok(Some(Change::NewRoute {
        route,
        flags: m.flags,
    }))
}

pub(crate) fn decode(
    m: &RawMsg<'_>,
    c: &mut DecodeCounters,
) -> Result<Option<Change>, DecodeError> {
    build(m, parse(m.payload)?, c)
}

/// The reference decoder: the same fields read through netlink-packet-route.
#[cfg(test)]
pub(crate) fn parse_reference(payload: &[u8]) -> Result<RawRoute, DecodeError> {
    use netlink_packet_core::Parseable;
    use netlink_packet_route::route::{
        RouteAddress, RouteAttribute, RouteMessage, RouteMetric, RouteVia,
    };
    fn ip(a: &RouteAddress) -> Result<IpAddr, DecodeError> {
        match a {
            RouteAddress::Inet(v4) => Ok(IpAddr::V4(*v4)),
            RouteAddress::Inet6(v6) => Ok(IpAddr::V6(*v6)),
            other => Err(DecodeError::malformed("address", format!("{other:?}"))),
        }
    }
    fn ip_via(v: &RouteVia) -> Result<IpAddr, DecodeError> {
        match v {
            RouteVia::Inet(v4) => Ok(IpAddr::V4(*v4)),
            RouteVia::Inet6(v6) => Ok(IpAddr::V6(*v6)),
            other => Err(DecodeError::malformed("via", format!("{other:?}"))),
        }
    }
    /// The kernel always sends both halves. The bytes come from `diff`'s own reader of
    /// the message (re-emitting the crate's parse panics on some corrupted inputs).
    fn encap(
        kind: Option<u16>,
        data: Option<&Vec<netlink_packet_route::route::RouteLwTunnelEncap>>,
        raw: Option<Encap>,
    ) -> Result<Option<Box<Encap>>, DecodeError> {
        match (kind, data, raw) {
            (Some(kind), Some(_), Some(raw)) => Ok(Some(Box::new(Encap { kind, ..raw }))),
            (_, Some(_), _) => Err(DecodeError::malformed("RTA_ENCAP", "without type")),
            _ => Ok(None),
        }
    }
    let (mut raw_top, mut raw_hops) =
        crate::diff::canon::tunnel_attrs(payload.get(RTMSG_LEN..).unwrap_or_default());
    raw_hops.reverse();
    let flow = |f: &netlink_packet_route::route::RouteRealm| {
        u32::from(f.source) << 16 | u32::from(f.destination)
    };
    let rm = RouteMessage::parse(payload).map_err(|e| DecodeError::malformed("route", e))?;
    let h = &rm.header;
    let mut r = RawRoute {
        family: u8::from(h.address_family),
        dst_len: h.destination_prefix_length,
        src_len: h.source_prefix_length,
        tos: h.tos,
        table: u32::from(h.table),
        protocol: u8::from(h.protocol),
        scope: u8::from(h.scope),
        kind: u8::from(h.kind),
        flags: h.flags.bits(),
        ..Default::default()
    };
    let (mut etype, mut edata) = (None, None);
    for a in &rm.attributes {
        match a {
            RouteAttribute::Realm(f) => r.flow = flow(f),
            RouteAttribute::EncapType(t) => etype = Some(u16::from(*t)),
            RouteAttribute::Encap(v) => edata = Some(v),
            RouteAttribute::Destination(d) => r.dst = Some(ip(d)?),
            RouteAttribute::Source(s) => r.src = Some(ip(s)?),
            RouteAttribute::Gateway(g) => r.gateway = Some(ip(g)?),
            RouteAttribute::Via(v) => r.gateway = Some(ip_via(v)?),
            RouteAttribute::PrefSource(p) => r.prefsrc = Some(ip(p)?),
            RouteAttribute::Oif(i) => r.oif = *i,
            RouteAttribute::Priority(p) => r.priority = *p,
            RouteAttribute::Table(t) => r.table = *t,
            RouteAttribute::NhId(id) => r.nh_id = Some(*id),
            RouteAttribute::Preference(p) => r.pref = Some(u8::from(*p)),
            RouteAttribute::Metrics(ms) => {
                for m in ms {
                    let (t, v) = match m {
                        RouteMetric::Lock(v) => (rtax::LOCK, *v),
                        RouteMetric::Mtu(v) => (rtax::MTU, *v),
                        RouteMetric::Window(v) => (rtax::WINDOW, *v),
                        RouteMetric::Rtt(v) => (rtax::RTT, *v),
                        RouteMetric::RttVar(v) => (rtax::RTTVAR, *v),
                        RouteMetric::SsThresh(v) => (rtax::SSTHRESH, *v),
                        RouteMetric::Cwnd(v) => (rtax::CWND, *v),
                        RouteMetric::Advmss(v) => (rtax::ADVMSS, *v),
                        RouteMetric::Reordering(v) => (rtax::REORDERING, *v),
                        RouteMetric::Hoplimit(v) => (rtax::HOPLIMIT, *v),
                        RouteMetric::InitCwnd(v) => (rtax::INITCWND, *v),
                        RouteMetric::Features(v) => (rtax::FEATURES, *v),
                        RouteMetric::RtoMin(v) => (rtax::RTO_MIN, *v),
                        RouteMetric::InitRwnd(v) => (rtax::INITRWND, *v),
                        RouteMetric::QuickAck(v) => (rtax::QUICKACK, *v),
                        RouteMetric::FastopenNoCookie(v) => (rtax::FASTOPEN_NO_COOKIE, *v),
                        RouteMetric::CcAlgo(n) => {
                            r.metrics
                                .push((rtax::CC_ALGO, MetricValue::Name(n.as_str().into())));
                            continue;
                        }
                        RouteMetric::Other(nla) => {
                            use netlink_packet_core::Nla;
                            let mut b = vec![0u8; nla.value_len()];
                            nla.emit_value(&mut b);
                            (nla.kind() & 0x3fff, u32_attr(&b, "RTA_METRICS")?)
                        }
                        _ => continue,
                    };
                    r.metrics.push((t, MetricValue::U32(v)));
                }
            }
            RouteAttribute::MultiPath(hops) => {
                let mut out = SmallVec::new();
                for hop in hops {
                    let (mut gw, mut realms, mut etype, mut edata) = (None, 0, None, None);
                    for a in &hop.attributes {
                        match a {
                            RouteAttribute::Gateway(g) => gw = Some(ip(g)?),
                            RouteAttribute::Via(v) => gw = Some(ip_via(v)?),
                            RouteAttribute::Realm(f) => realms = flow(f),
                            RouteAttribute::EncapType(t) => etype = Some(u16::from(*t)),
                            RouteAttribute::Encap(v) => edata = Some(v),
                            _ => r.unknown_attrs += 1,
                        }
                    }
                    let raw = raw_hops.pop().and_then(|(_, e)| e);
                    out.push(NextHop {
                        gateway: gw,
                        ifindex: hop.interface_index,
                        weight: u16::from(hop.hops) + 1,
                        flags: hop.flags.bits(),
                        encap: encap(etype, edata, raw)?,
                        realms,
                    });
                }
                r.multipath = Some(out);
            }
            RouteAttribute::CacheInfo(_)
            | RouteAttribute::Expires(_)
            | RouteAttribute::MulticastExpires(_)
            | RouteAttribute::Uid(_)
            | RouteAttribute::Iif(_)
            | RouteAttribute::Mark(_) => {}
            _ => r.unknown_attrs += 1,
        }
    }
    r.encap = encap(etype, edata, raw_top.1.take())?;
    Ok(r)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// One attribute, padded: the test message builder the eBPF record tests share.
    pub(crate) fn put(b: &mut Vec<u8>, ty: u16, val: &[u8]) {
        b.extend_from_slice(&((4 + val.len()) as u16).to_ne_bytes());
        b.extend_from_slice(&ty.to_ne_bytes());
        b.extend_from_slice(val);
        while !b.len().is_multiple_of(4) {
            b.push(0);
        }
    }

    pub(crate) fn ip_bytes(v6: bool, seed: u8) -> Vec<u8> {
        if v6 {
            vec![
                0x20, 0x01, 0x0d, 0xb8, seed, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, seed,
            ]
        } else {
            vec![198, 18, seed, 2]
        }
    }

    /// Route messages of every shape the kernel sends: both families, tables below and
    /// above 255, every route type, single and multipath next hops (some dead), nexthop
    /// ids, source prefixes, preferences, metrics, and attributes we do not model.
    fn message() -> impl Strategy<Value = Vec<u8>> {
        (
            any::<bool>(),
            0u8..=12,
            prop::sample::select(vec![0u32, 100, 254, 255, 4000]),
            any::<u32>(),
            prop::option::of(1u32..2000),
            prop::collection::vec((any::<u8>(), any::<u8>(), 1u32..10, any::<bool>()), 0..4),
            (
                any::<bool>(),
                any::<bool>(),
                any::<bool>(),
                any::<bool>(),
                any::<bool>(),
                any::<bool>(),
            ),
            any::<u32>(),
        )
            .prop_map(
                |(
                    v6,
                    kind,
                    table,
                    priority,
                    nh_id,
                    hops,
                    (gw, src, pref, mtu, junk, tunnel),
                    flags,
                )| {
                    let dst_len = if v6 { 48 } else { 24 };
                    let mut b = vec![
                        if v6 { 10 } else { 2 },
                        dst_len,
                        if v6 && src { 64 } else { 0 },
                        0,
                        table.min(255) as u8,
                        12,
                        0,
                        kind,
                    ];
                    b.extend_from_slice(&(flags & 0x5f).to_ne_bytes());
                    if table > 255 {
                        put(&mut b, RTA_TABLE, &table.to_ne_bytes());
                    }
                    let mut dst = ip_bytes(v6, 7);
                    if !v6 {
                        dst[3] = 0;
                    } else {
                        dst[15] = 0;
                        dst[4] = 0;
                    }
                    put(&mut b, RTA_DST, &dst);
                    put(&mut b, RTA_PRIORITY, &priority.to_ne_bytes());
                    if v6 && src {
                        put(&mut b, RTA_SRC, &ip_bytes(true, 0));
                    }
                    if let Some(id) = nh_id {
                        put(&mut b, RTA_NH_ID, &id.to_ne_bytes());
                    }
                    if pref {
                        put(&mut b, RTA_PREF, &[1]);
                    }
                    if mtu {
                        let mut m = Vec::new();
                        put(&mut m, rtax::LOCK, &(1u32 << rtax::MTU).to_ne_bytes());
                        put(&mut m, rtax::MTU, &1400u32.to_ne_bytes());
                        put(&mut m, rtax::ADVMSS, &1360u32.to_ne_bytes());
                        put(&mut m, rtax::INITCWND, &10u32.to_ne_bytes());
                        put(&mut m, rtax::CC_ALGO, b"cubic\0");
                        put(&mut m, rtax::QUICKACK, &1u32.to_ne_bytes());
                        put(&mut b, RTA_METRICS, &m);
                    }
                    if junk {
                        put(&mut b, RTA_CACHEINFO, &[0; 32]);
                        put(&mut b, 27, &[6]); // RTA_IP_PROTO: not modelled, counted
                    }
                    if hops.len() > 1 {
                        let mut mp = Vec::new();
                        for (seed, nhflags, ifindex, with_gw) in &hops {
                            let mut nh = vec![0u8; RTNH_LEN];
                            if *with_gw {
                                put(&mut nh, RTA_GATEWAY, &ip_bytes(v6, *seed));
                            }
                            if tunnel && seed % 2 == 0 {
                                tunnel_attrs(&mut nh, v6, *seed);
                            }
                            let len = nh.len() as u16;
                            nh[0..2].copy_from_slice(&len.to_ne_bytes());
                            nh[2] = nhflags & 0x5f;
                            nh[3] = *seed;
                            nh[4..8].copy_from_slice(&ifindex.to_ne_bytes());
                            mp.extend_from_slice(&nh);
                        }
                        put(&mut b, RTA_MULTIPATH, &mp);
                    } else if let Some((seed, _, ifindex, with_gw)) = hops.first() {
                        if *with_gw || gw {
                            put(&mut b, RTA_GATEWAY, &ip_bytes(v6, *seed));
                        }
                        put(&mut b, RTA_OIF, &ifindex.to_ne_bytes());
                        if tunnel {
                            tunnel_attrs(&mut b, v6, *seed);
                        }
                    }
                    b
                },
            )
    }

    /// Realms (IPv4) and an `ip`/`ip6` encapsulation, as the kernel sends them: the
    /// nested `RTA_ENCAP` before `RTA_ENCAP_TYPE`.
    fn tunnel_attrs(b: &mut Vec<u8>, v6: bool, seed: u8) {
        if !v6 {
            put(b, RTA_FLOW, &(u32::from(seed) << 16 | 5).to_ne_bytes());
        }
        let mut e = Vec::new();
        put(&mut e, 1, &u64::from(seed).to_be_bytes()); // LWTUNNEL_IP_ID
        put(&mut e, 2, &ip_bytes(v6, seed)); // LWTUNNEL_IP_DST
        put(&mut e, 4, &[seed]); // TTL / HOPLIMIT
        put(b, RTA_ENCAP, &e);
        put(
            b,
            RTA_ENCAP_TYPE,
            &(if v6 { 4u16 } else { 2u16 }).to_ne_bytes(),
        );
    }

    fn raw(ty: u16, payload: &[u8]) -> RawMsg<'_> {
        RawMsg::notification(ty, payload)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// The hand decoder reads exactly what netlink-packet-route reads.
        #[test]
        fn agrees_with_netlink_packet_route(m in message(), del in any::<bool>()) {
            let ours = parse(&m).expect("hand decoder rejected a well-formed message");
            let reference = parse_reference(&m).expect("reference rejected a well-formed message");
            prop_assert_eq!(&ours, &reference);
            let ty = if del { msg::RTM_DELROUTE } else { msg::RTM_NEWROUTE };
            let (mut c1, mut c2) = (DecodeCounters::default(), DecodeCounters::default());
            let a = build(&raw(ty, &m), ours, &mut c1).unwrap();
            let b = build(&raw(ty, &m), reference, &mut c2).unwrap();
            prop_assert_eq!(a, b);
        }

        /// Corrupted messages: never a panic, and never a different success.
        #[test]
        fn corrupted_messages(m in message(), at in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<prop::sample::Index>()) {
            let mut m = m;
            let i = at.index(m.len());
            m[i] = byte;
            m.truncate(cut.index(m.len() + 1));
            if let (Ok(mut ours), Ok(mut reference)) = (parse(&m), parse_reference(&m)) {
                // A corrupted type can turn into one we ignore on purpose (RTA_PAD, ...)
                // while the crate counts it as unknown: only the decoded fields must agree.
                ours.unknown_attrs = 0;
                reference.unknown_attrs = 0;
                prop_assert_eq!(ours, reference);
            }
        }
    }
}
