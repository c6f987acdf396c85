//! The canonical form both sides of `diff` are brought to: every route of every key in
//! order, with every attribute a dump shows (liveness flags and metrics included), plus
//! links, addresses, nexthop objects and netconf settings.
//!
//! The kernel side is decoded from the raw dump by netlink-packet-route, not by the
//! daemon's own route decoder ([`crate::netlink::route`]): a decoder bug that drops or
//! changes something must show as a difference, not vanish on both sides. Encapsulations
//! and realms are read from the dump's bytes here ([`tunnel_attrs`]) and compared byte
//! for byte. Attributes the mirror does not model are kept by name, so a route using
//! them differs rather than compares equal. The mirror side is rendered as a dump would
//! show it now ([`crate::liveness`]).
//!
//! One rule makes both sides comparable whatever `nexthop_compat_mode` is: a route with
//! a nexthop object is its object id plus the object's hops, resolved in the same state's
//! objects (`compat_mode=1` spells the hops out inline, `0` does not).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_core::{Nla, Parseable};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteMetric, RouteVia,
};
use serde::{Deserialize, Serialize};

use crate::liveness::{self, Hop};
use crate::mirror::Mirror;
use crate::model::{rtax, rtm_f, rtnh, Encap, Family, MetricValue, NextHop, NexthopObject};
use crate::netlink::msg;
use crate::netlink::msg::DecodeCounters;

/// Identity of a list of routes: the kernel's key (IPv4 TOS, IPv6 source prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RecKey {
    pub family: Family,
    pub table: u32,
    pub dst: IpNet,
    pub src: Option<IpNet>,
    pub tos: u8,
    pub metric: u32,
}

/// One next hop as a dump shows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HopRec {
    pub gateway: Option<IpAddr>,
    pub ifindex: u32,
    pub weight: u16,
    /// `RTNH_F_*`, liveness included (hardware offload bits left out).
    pub flags: u8,
    /// `RTA_ENCAP_TYPE` + `RTA_ENCAP` bytes.
    pub encap: Option<Encap>,
    /// `RTA_FLOW` (IPv4 realms); 0: none.
    pub realms: u32,
}

/// One route as a dump shows it, key aside.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RouteRec {
    pub kind: u8,
    pub protocol: u8,
    pub scope: u8,
    /// `rtm_flags`, liveness included (hardware offload bits left out).
    pub flags: u32,
    pub prefsrc: Option<IpAddr>,
    pub nh_id: Option<u32>,
    pub hops: Vec<HopRec>,
    pub metrics: Vec<(u16, MetricValue)>,
    pub pref: Option<u8>,
    /// Attributes the mirror does not model, by name.
    pub other: Vec<String>,
}

/// A link as far as routing cares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkRec {
    pub name: String,
    pub flags: u32,
    pub mtu: u32,
}

/// Everything `diff` compares, from one side.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub routes: BTreeMap<RecKey, Vec<RouteRec>>,
    pub links: BTreeMap<u32, LinkRec>,
    pub addrs: BTreeSet<(u32, IpAddr, u8, u8)>,
    /// Addresses still in duplicate address detection: the kernel announces an IPv6
    /// address only once DAD is done, so the mirror need not hold these yet.
    pub tentative: BTreeSet<(u32, IpAddr, u8, u8)>,
    pub nexthops: BTreeMap<u32, NexthopObject>,
    /// `ignore_routes_with_linkdown` per (family, ifindex or all/default).
    pub netconf: BTreeMap<(Family, i32), bool>,
    /// Policy rules per family, in the kernel's order.
    pub rules: BTreeMap<Family, Vec<crate::rule::Rule>>,
}

impl State {
    pub fn route_count(&self) -> usize {
        self.routes.values().map(Vec::len).sum()
    }
}

/// The mask of `RTNH_F_*` bits compared (hardware offload bits vary with drivers).
const HOP_FLAGS: u8 = !(rtnh::OFFLOAD | rtnh::TRAP);
const ROUTE_FLAGS: u32 = !(rtm_f::OFFLOAD
    | rtm_f::TRAP
    | rtm_f::OFFLOAD_FAILED
    | rtnh::OFFLOAD as u32
    | rtnh::TRAP as u32);

/// A mirror hop as a dump shows it.
fn hop_rec(h: &NextHop) -> HopRec {
    HopRec {
        gateway: h.gateway,
        ifindex: h.ifindex,
        weight: h.weight,
        flags: h.flags & HOP_FLAGS,
        encap: h.encap.as_deref().cloned(),
        realms: h.realms,
    }
}

/// A hop's realms and encapsulation.
pub(crate) type Tunnel = (u32, Option<Encap>);

const RTA_MULTIPATH: u16 = 9;
const RTA_FLOW: u16 = 11;
const RTA_ENCAP_TYPE: u16 = 21;
const RTA_ENCAP: u16 = 22;

/// Realms and encapsulation read from a dumped route's bytes (`attrs`: the attributes
/// after `struct rtmsg`): the route's own, then each `RTA_MULTIPATH` hop's. Read here,
/// not by the daemon's decoder, so a decoder that loses them shows as a difference.
pub(crate) fn tunnel_attrs(attrs: &[u8]) -> (Tunnel, Vec<Tunnel>) {
    fn of(b: &[u8]) -> Tunnel {
        let (mut realms, mut kind, mut data) = (0, None, None);
        for (t, v) in crate::lwt::nested(b) {
            match t {
                RTA_FLOW if v.len() == 4 => realms = u32::from_ne_bytes([v[0], v[1], v[2], v[3]]),
                RTA_ENCAP_TYPE if v.len() >= 2 => kind = Some(u16::from_ne_bytes([v[0], v[1]])),
                RTA_ENCAP => data = Some(v),
                _ => {}
            }
        }
        let encap = data.map(|d| Encap {
            kind: kind.unwrap_or(0),
            data: d.into(),
        });
        (realms, encap)
    }
    let mut hops = Vec::new();
    if let Some((_, mut mp)) = crate::lwt::nested(attrs)
        .into_iter()
        .find(|(t, _)| *t == RTA_MULTIPATH)
    {
        // `struct rtnexthop { u16 len; u8 flags; u8 hops; i32 ifindex; }` + attributes.
        while mp.len() >= 8 {
            let len = usize::from(u16::from_ne_bytes([mp[0], mp[1]]));
            if len < 8 || len > mp.len() {
                break;
            }
            hops.push(of(&mp[8..len]));
            mp = mp.get((len + 3) & !3..).unwrap_or_default();
        }
    }
    (of(attrs), hops)
}

/// Replaces an object route's hops by its object's (see the module doc).
fn resolve_object_hops(
    rec: &mut RouteRec,
    objects: &HashMap<u32, &NexthopObject>,
    attrs_for: impl Fn(Option<u32>) -> crate::model::RouteAttrs,
) {
    let Some(id) = rec.nh_id else { return };
    let hops: Vec<Hop> = liveness::effective_hops(objects, &attrs_for(Some(id)));
    rec.hops = hops.iter().map(|h| hop_rec(&h.hop)).collect();
    // The route-level liveness of an object route depends on the compat mode (it is the
    // hop's only when the hops are spelled out): its hops carry it.
    rec.flags &= !u32::from(rtnh::LIVENESS);
}

/// Builds the kernel's state from raw dump messages (`(type, payload)`).
pub fn kernel_state(msgs: &[(u16, Vec<u8>)]) -> State {
    let mut s = State::default();
    let mut c = DecodeCounters::default();
    let mut routes: Vec<(RecKey, RouteRec)> = Vec::new();
    for (ty, p) in msgs {
        match *ty {
            msg::RTM_NEWROUTE => {
                if let Some(r) = kernel_route(p) {
                    routes.push(r);
                }
            }
            msg::RTM_NEWLINK => {
                if let Ok(lm) = LinkMessage::parse(p.as_slice()) {
                    let mut l = LinkRec {
                        name: String::new(),
                        flags: lm.header.flags.bits(),
                        mtu: 0,
                    };
                    for a in &lm.attributes {
                        match a {
                            LinkAttribute::IfName(n) => l.name = n.clone(),
                            LinkAttribute::Mtu(m) => l.mtu = *m,
                            _ => {}
                        }
                    }
                    s.links.insert(lm.header.index, l);
                }
            }
            msg::RTM_NEWADDR => {
                if let Ok(am) = AddressMessage::parse(p.as_slice()) {
                    let (mut local, mut address) = (None, None);
                    for a in &am.attributes {
                        match a {
                            AddressAttribute::Local(l) => local = Some(*l),
                            AddressAttribute::Address(x) => address = Some(*x),
                            _ => {}
                        }
                    }
                    let tentative = am.header.flags.contains(AddressHeaderFlags::Tentative)
                        || am.attributes.iter().any(|a| {
                            matches!(a, AddressAttribute::Flags(f) if f.contains(AddressFlags::Tentative))
                        });
                    if let Some(addr) = local.or(address) {
                        let a = (
                            am.header.index,
                            addr,
                            am.header.prefix_len,
                            u8::from(am.header.scope),
                        );
                        s.addrs.insert(a);
                        if tentative {
                            s.tentative.insert(a);
                        }
                    }
                }
            }
            msg::RTM_NEWNEXTHOP => {
                if let Ok(n) = crate::netlink::nexthop::decode(p, &mut c) {
                    s.nexthops.insert(n.id, n);
                }
            }
            msg::RTM_NEWRULE => {
                if let Ok(Some(r)) = crate::netlink::rule::decode(p, &mut c) {
                    s.rules.entry(r.family).or_default().push(r);
                }
            }
            msg::RTM_NEWNETCONF => {
                if let Ok(Some(n)) = crate::netlink::netconf::decode(p, &mut c) {
                    if let Some(on) = n.ignore_linkdown {
                        s.netconf.insert((n.family, n.ifindex), on);
                    }
                }
            }
            _ => {}
        }
    }
    let objects: HashMap<u32, &NexthopObject> = s.nexthops.iter().map(|(k, v)| (*k, v)).collect();
    for (k, mut r) in routes {
        resolve_object_hops(&mut r, &objects, |id| crate::model::RouteAttrs {
            nh_id: id,
            ..Default::default()
        });
        s.routes.entry(k).or_default().push(r);
    }
    s
}

fn ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn via(v: &RouteVia) -> Option<IpAddr> {
    match v {
        RouteVia::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteVia::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn metric(m: &RouteMetric) -> Option<(u16, MetricValue)> {
    let u = |t, v: &u32| Some((t, MetricValue::U32(*v)));
    match m {
        RouteMetric::Lock(v) => u(rtax::LOCK, v),
        RouteMetric::Mtu(v) => u(rtax::MTU, v),
        RouteMetric::Window(v) => u(rtax::WINDOW, v),
        RouteMetric::Rtt(v) => u(rtax::RTT, v),
        RouteMetric::RttVar(v) => u(rtax::RTTVAR, v),
        RouteMetric::SsThresh(v) => u(rtax::SSTHRESH, v),
        RouteMetric::Cwnd(v) => u(rtax::CWND, v),
        RouteMetric::Advmss(v) => u(rtax::ADVMSS, v),
        RouteMetric::Reordering(v) => u(rtax::REORDERING, v),
        RouteMetric::Hoplimit(v) => u(rtax::HOPLIMIT, v),
        RouteMetric::InitCwnd(v) => u(rtax::INITCWND, v),
        RouteMetric::Features(v) => u(rtax::FEATURES, v),
        RouteMetric::RtoMin(v) => u(rtax::RTO_MIN, v),
        RouteMetric::InitRwnd(v) => u(rtax::INITRWND, v),
        RouteMetric::QuickAck(v) => u(rtax::QUICKACK, v),
        RouteMetric::FastopenNoCookie(v) => u(rtax::FASTOPEN_NO_COOKIE, v),
        RouteMetric::CcAlgo(n) => Some((rtax::CC_ALGO, MetricValue::Name(n.as_str().into()))),
        RouteMetric::Other(nla) => {
            let mut b = vec![0u8; nla.value_len()];
            nla.emit_value(&mut b);
            let v = b
                .get(..4)
                .map(|x| u32::from_ne_bytes([x[0], x[1], x[2], x[3]]))?;
            Some((nla.kind() & 0x3fff, MetricValue::U32(v)))
        }
        _ => None,
    }
}

/// One dumped route through netlink-packet-route. Cache clones and other families are
/// not part of the FIB.
fn kernel_route(p: &[u8]) -> Option<(RecKey, RouteRec)> {
    let rm = RouteMessage::parse(p).ok()?;
    let h = &rm.header;
    let family = Family::from_af(u8::from(h.address_family))?;
    if h.flags.bits() & rtm_f::CLONED != 0 {
        return None;
    }
    let mut table = u32::from(h.table);
    let (mut dst, mut src, mut gateway, mut oif, mut metric_v) = (None, None, None, 0, 0);
    let mut rec = RouteRec {
        kind: u8::from(h.kind),
        protocol: u8::from(h.protocol),
        scope: u8::from(h.scope),
        flags: h.flags.bits() & ROUTE_FLAGS,
        prefsrc: None,
        nh_id: None,
        hops: Vec::new(),
        metrics: Vec::new(),
        pref: None,
        other: Vec::new(),
    };
    let mut multipath = None;
    for a in &rm.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = ip(d),
            RouteAttribute::Source(s) => src = ip(s),
            RouteAttribute::Gateway(g) => gateway = ip(g),
            RouteAttribute::Via(v) => gateway = via(v),
            RouteAttribute::PrefSource(p) => rec.prefsrc = ip(p),
            RouteAttribute::Oif(i) => oif = *i,
            RouteAttribute::Priority(p) => metric_v = *p,
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::NhId(id) => rec.nh_id = Some(*id),
            RouteAttribute::Preference(p) => rec.pref = Some(u8::from(*p)),
            RouteAttribute::Metrics(ms) => {
                rec.metrics = ms.iter().filter_map(metric).collect();
                rec.metrics.sort_by_key(|(t, _)| *t);
            }
            RouteAttribute::MultiPath(hops) => multipath = Some(hops.clone()),
            // Compared as bytes ([`tunnel_attrs`]).
            RouteAttribute::Realm(_) | RouteAttribute::EncapType(_) | RouteAttribute::Encap(_) => {}
            // Informational, or per-lookup: not forwarding state.
            RouteAttribute::CacheInfo(_)
            | RouteAttribute::Expires(_)
            | RouteAttribute::MulticastExpires(_)
            | RouteAttribute::Uid(_)
            | RouteAttribute::Iif(_)
            | RouteAttribute::Mark(_) => {}
            other => rec.other.push(format!("{other:?}")),
        }
    }
    let flags_of = |f: u8| f & HOP_FLAGS;
    let ((realms, encap), mut tunnels) = tunnel_attrs(p.get(12..).unwrap_or_default());
    tunnels.reverse();
    rec.hops = match multipath {
        Some(hops) => hops
            .iter()
            .map(|nh| {
                let mut g = None;
                for a in &nh.attributes {
                    match a {
                        RouteAttribute::Gateway(x) => g = ip(x),
                        RouteAttribute::Via(v) => g = via(v),
                        RouteAttribute::Realm(_)
                        | RouteAttribute::EncapType(_)
                        | RouteAttribute::Encap(_) => {}
                        other => rec.other.push(format!("nexthop {other:?}")),
                    }
                }
                let (realms, encap) = tunnels.pop().unwrap_or_default();
                HopRec {
                    gateway: g,
                    ifindex: nh.interface_index,
                    weight: u16::from(nh.hops) + 1,
                    flags: flags_of(nh.flags.bits()),
                    encap,
                    realms,
                }
            })
            .collect(),
        // A reject route has no gateway or device, but keeps its realms.
        None if gateway.is_some() || oif != 0 || realms != 0 || encap.is_some() => {
            vec![HopRec {
                gateway,
                ifindex: oif,
                weight: 1,
                flags: flags_of(h.flags.bits() as u8),
                encap,
                realms,
            }]
        }
        None => Vec::new(),
    };
    let net = |a: Option<IpAddr>, len: u8| -> Option<IpNet> {
        let a = a.unwrap_or(match family {
            Family::V4 => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            Family::V6 => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        });
        IpNet::new(a, len).ok().map(|n| n.trunc())
    };
    let key = RecKey {
        family,
        table,
        dst: net(dst, h.destination_prefix_length)?,
        src: match family {
            Family::V6 if h.source_prefix_length > 0 || src.is_some() => {
                Some(net(src, h.source_prefix_length)?)
            }
            _ => None,
        },
        tos: if family == Family::V4 { h.tos } else { 0 },
        metric: metric_v,
    };
    Some((key, rec))
}

/// The mirror's state as a dump would show it now.
pub fn mirror_state(m: &Mirror) -> State {
    let mut s = State::default();
    for ((family, table), t) in m.fib.tables() {
        for (dst, e) in t.iter() {
            let sub = e.sub();
            let a = &e.attrs;
            let hops = m.dumped_hops(family, a);
            let mut rec = RouteRec {
                kind: a.kind,
                protocol: a.protocol,
                scope: a.scope,
                flags: m.live.route_flags(family, a, &hops) & ROUTE_FLAGS,
                prefsrc: a.prefsrc,
                nh_id: a.nh_id,
                hops: hops.iter().map(hop_rec).collect(),
                metrics: a.metrics.iter().cloned().collect(),
                pref: a.pref,
                other: Vec::new(),
            };
            if rec.nh_id.is_some() {
                rec.flags &= !u32::from(rtnh::LIVENESS);
            }
            let key = RecKey {
                family,
                table,
                dst,
                src: sub.src,
                tos: sub.tos,
                metric: sub.priority,
            };
            s.routes.entry(key).or_default().push(rec);
        }
    }
    for (i, l) in &m.links {
        s.links.insert(
            *i,
            LinkRec {
                name: l.value.name.clone(),
                flags: l.value.flags,
                mtu: l.value.mtu,
            },
        );
    }
    for a in m.addrs.keys() {
        s.addrs.insert((a.ifindex, a.addr, a.prefix_len, a.scope));
    }
    for (i, n) in &m.nexthops {
        s.nexthops.insert(*i, n.value.clone());
    }
    for (k, v) in m.live.ignore_settings() {
        s.netconf.insert(*k, *v);
    }
    for f in Family::ALL {
        let list: Vec<crate::rule::Rule> = m.rules.list(f).iter().cloned().collect();
        if !list.is_empty() {
            s.rules.insert(f, list);
        }
    }
    s
}
