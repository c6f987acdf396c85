//! The oracle's self-test: a kernel dump (raw netlink messages, as the kernel sends
//! them), a mirror built from the same messages through the daemon's own decoder and
//! scan, and one divergence of each class injected into the mirror. Each must be
//! reported, in the right class, with counts that add up; a change to the oracle that
//! lets any of them pass unnoticed fails here.

use std::sync::Arc;

use super::*;
use crate::fib::Place;
use crate::mirror::Mirror;
use crate::model::{rtax, rtnh, Change, MetricValue, NextHop, SubKey};
use crate::netlink::decode::decode;
use crate::netlink::msg::DecodeCounters;
use crate::netlink::msg::{self, RawMsg};
use crate::reconcile::{ActiveScan, ScanReason, ScanScope};

fn put(b: &mut Vec<u8>, ty: u16, val: &[u8]) {
    b.extend_from_slice(&((4 + val.len()) as u16).to_ne_bytes());
    b.extend_from_slice(&ty.to_ne_bytes());
    b.extend_from_slice(val);
    while !b.len().is_multiple_of(4) {
        b.push(0);
    }
}

fn link(ifindex: u32, name: &str, flags: u32) -> (u16, Vec<u8>) {
    let mut b = vec![0u8, 0];
    b.extend_from_slice(&1u16.to_ne_bytes()); // ARPHRD_ETHER
    b.extend_from_slice(&ifindex.to_ne_bytes());
    b.extend_from_slice(&flags.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    let mut n = name.as_bytes().to_vec();
    n.push(0);
    put(&mut b, 3, &n); // IFLA_IFNAME
    put(&mut b, 4, &1500u32.to_ne_bytes()); // IFLA_MTU
    (msg::RTM_NEWLINK, b)
}

fn nexthop(id: u32, ifindex: u32, gw: [u8; 4]) -> (u16, Vec<u8>) {
    let mut b = vec![2u8, 0, 4, 0, 0, 0, 0, 0];
    put(&mut b, 1, &id.to_ne_bytes());
    put(&mut b, 5, &ifindex.to_ne_bytes());
    put(&mut b, 6, &gw);
    (msg::RTM_NEWNEXTHOP, b)
}

fn group(id: u32, members: &[u32]) -> (u16, Vec<u8>) {
    let mut b = vec![0u8, 0, 4, 0, 0, 0, 0, 0];
    put(&mut b, 1, &id.to_ne_bytes());
    let mut g = Vec::new();
    for m in members {
        g.extend_from_slice(&m.to_ne_bytes());
        g.extend_from_slice(&[0, 0, 0, 0]);
    }
    put(&mut b, 2, &g);
    (msg::RTM_NEWNEXTHOP, b)
}

fn netconf(family: u8, ifindex: i32, ignore: bool) -> (u16, Vec<u8>) {
    let mut b = vec![family, 0, 0, 0];
    put(&mut b, 1, &ifindex.to_ne_bytes());
    put(&mut b, 6, &i32::from(ignore).to_ne_bytes());
    (msg::RTM_NEWNETCONF, b)
}

/// An IPv4 route of table 254: `hops` are (gateway last byte, ifindex, flags).
struct V4 {
    dst: [u8; 4],
    len: u8,
    metric: u32,
    hops: Vec<(u8, u32, u8)>,
    mtu: Option<u32>,
    nhid: Option<u32>,
    flags: u32,
    /// Attributes appended to the route (a single-path route's realms, encapsulation).
    extra: Vec<u8>,
    /// Attributes appended to each `RTA_MULTIPATH` hop, by index.
    hop_extra: Vec<Vec<u8>>,
}

impl V4 {
    fn new(dst: [u8; 4], len: u8, hops: &[(u8, u32, u8)]) -> V4 {
        V4 {
            dst,
            len,
            metric: 0,
            hops: hops.to_vec(),
            mtu: None,
            nhid: None,
            flags: 0,
            extra: Vec::new(),
            hop_extra: Vec::new(),
        }
    }

    fn msg(&self) -> (u16, Vec<u8>) {
        let single_flags = match self.hops.as_slice() {
            [(_, _, f)] => u32::from(*f),
            _ => 0,
        };
        let mut b = vec![2u8, self.len, 0, 0, 254, 4, 0, 1];
        b.extend_from_slice(&(self.flags | single_flags).to_ne_bytes());
        put(&mut b, 15, &254u32.to_ne_bytes()); // RTA_TABLE
        put(&mut b, 1, &self.dst);
        if self.metric != 0 {
            put(&mut b, 6, &self.metric.to_ne_bytes());
        }
        if let Some(mtu) = self.mtu {
            let mut m = Vec::new();
            put(&mut m, rtax::MTU, &mtu.to_ne_bytes());
            put(&mut b, 8, &m);
        }
        if let Some(id) = self.nhid {
            put(&mut b, 30, &id.to_ne_bytes());
        }
        match self.hops.as_slice() {
            [] => {}
            [(gw, ifindex, _)] => {
                put(&mut b, 5, &[198, 18, 1, *gw]);
                put(&mut b, 4, &ifindex.to_ne_bytes());
            }
            hops => {
                let mut mp = Vec::new();
                for (i, (gw, ifindex, flags)) in hops.iter().enumerate() {
                    let mut nh = vec![0u8; 8];
                    put(&mut nh, 5, &[198, 18, 1, *gw]);
                    nh.extend_from_slice(self.hop_extra.get(i).map_or(&[][..], Vec::as_slice));
                    let len = nh.len() as u16;
                    nh[0..2].copy_from_slice(&len.to_ne_bytes());
                    nh[2] = *flags;
                    nh[4..8].copy_from_slice(&ifindex.to_ne_bytes());
                    mp.extend_from_slice(&nh);
                }
                put(&mut b, 9, &mp);
            }
        }
        b.extend_from_slice(&self.extra);
        (msg::RTM_NEWROUTE, b)
    }
}

const UP: u32 = libc::IFF_UP as u32 | libc::IFF_RUNNING as u32 | 0x10000;
const NO_CARRIER: u32 = libc::IFF_UP as u32;

/// A kernel dump: two links (the second without carrier), nexthop objects and a group,
/// netconf, a key with two routes (`ip route append`), a multipath route, a route with
/// metrics, a route through the group (spelled out as with `nexthop_compat_mode=1`) and
/// a linkdown route, a route with realms and an `ip` encapsulation, and a multipath
/// route whose second hop has both.
fn kernel_dump() -> Vec<(u16, Vec<u8>)> {
    let dup2 = V4::new([10, 9, 0, 0], 24, &[(3, 2, 0)]);
    let mut tun = V4::new([10, 30, 0, 0], 16, &[(2, 2, 0)]);
    tun.extra = tunnel(5, 1);
    let mut tun_mp = V4::new([10, 31, 0, 0], 16, &[(2, 2, 0), (3, 2, 0)]);
    tun_mp.hop_extra = vec![Vec::new(), tunnel(3 << 16 | 4, 9)];
    let mut mtu = V4::new([10, 20, 0, 0], 16, &[(2, 2, 0)]);
    mtu.mtu = Some(1400);
    let mut nh = V4::new([10, 70, 0, 0], 16, &[(2, 2, 0), (3, 2, 0)]);
    nh.nhid = Some(10);
    vec![
        link(2, "veth1", UP),
        link(3, "veth2", NO_CARRIER),
        netconf(2, 2, false),
        netconf(2, 3, false),
        netconf(10, 3, false),
        nexthop(1, 2, [198, 18, 1, 2]),
        nexthop(2, 2, [198, 18, 1, 3]),
        group(10, &[1, 2]),
        V4::new([10, 9, 0, 0], 24, &[(2, 2, 0)]).msg(),
        dup2.msg(),
        V4::new([10, 61, 0, 0], 16, &[(2, 2, 0), (3, 3, rtnh::LINKDOWN)]).msg(),
        mtu.msg(),
        nh.msg(),
        V4::new([10, 60, 0, 0], 16, &[(3, 3, rtnh::LINKDOWN)]).msg(),
        tun.msg(),
        tun_mp.msg(),
    ]
}

/// `RTA_FLOW` (`realms`), then `RTA_ENCAP` (`ip id ID dst 1.2.3.4 ttl 0`) and
/// `RTA_ENCAP_TYPE`, in the kernel's order.
fn tunnel(realms: u32, id: u64) -> Vec<u8> {
    let mut b = Vec::new();
    put(&mut b, 11, &realms.to_ne_bytes());
    let mut e = Vec::new();
    put(&mut e, 1, &id.to_be_bytes());
    put(&mut e, 2, &[1, 2, 3, 4]);
    put(&mut e, 4, &[0]);
    put(&mut b, 22, &e);
    put(&mut b, 21, &2u16.to_ne_bytes());
    b
}

/// The mirror a full scan of `dump` builds, through the daemon's decoder.
fn mirror_of(dump: &[(u16, Vec<u8>)]) -> Mirror {
    let mut m = Mirror::new();
    let gen = m.begin_scan();
    let mut scan = ActiveScan::new(ScanReason::Initial, ScanScope::full(), gen);
    let mut c = DecodeCounters::default();
    for (ty, p) in dump {
        let raw = RawMsg::notification(*ty, p);
        if let Some(change) = decode(&raw, &mut c).expect("well-formed test message") {
            m.mark(change, &mut scan);
        }
    }
    m.prune(&mut scan);
    m
}

fn diff(dump: &[(u16, Vec<u8>)], m: &Mirror) -> DiffReport {
    let r = compare(&kernel_state(dump), &mirror_state(m));
    assert!(r.adds_up(), "counts do not add up: {r:#?}");
    r
}

fn key(dst: &str) -> (IpNetKey, SubKey) {
    (dst.parse().unwrap(), SubKey::metric(0))
}

type IpNetKey = ipnet::IpNet;

fn main_v4(m: &mut Mirror) -> &mut crate::fib::RouteTable {
    m.fib.table_mut(Family::V4, 254)
}

#[test]
fn a_faithful_mirror_compares_equal() {
    let dump = kernel_dump();
    let mut m = mirror_of(&dump);
    let r = diff(&dump, &m);
    assert!(r.is_empty(), "{r:#?}");
    assert_eq!((r.kernel_routes, r.matched), (8, 8));
    // The decoder kept them (the kernel side reads them from the bytes on its own).
    let (net, sub) = key("10.31.0.0/16");
    let e = main_v4(&mut m).get_entry_mut(&net, &sub).expect("route");
    let hop = &e.attrs.nexthops[1];
    assert_eq!(hop.realms, 3 << 16 | 4);
    assert_eq!(hop.encap.as_ref().map(|e| e.kind), Some(2));
}

#[test]
fn a_dropped_duplicate_is_missing() {
    let dump = kernel_dump();
    let mut m = mirror_of(&dump);
    let (net, sub) = key("10.9.0.0/24");
    assert!(main_v4(&mut m)
        .remove_where(&net, &sub, |_| Some(1))
        .is_some());
    let r = diff(&dump, &m);
    assert_eq!(
        (r.missing_count, r.extra_count, r.differing_count),
        (1, 0, 0),
        "{r:#?}"
    );
    assert_eq!(
        r.missing[0].nexthops[0].gateway,
        Some("198.18.1.3".parse().unwrap())
    );
}

#[test]
fn a_reordered_list_is_reported() {
    let dump = kernel_dump();
    let mut m = mirror_of(&dump);
    let (net, sub) = key("10.9.0.0/24");
    main_v4(&mut m)
        .key_routes_mut(&net, &sub)
        .unwrap()
        .swap(0, 1);
    let r = diff(&dump, &m);
    assert_eq!(r.reordered_count, 2, "{r:#?}");
    assert_eq!(r.missing_count + r.extra_count + r.differing_count, 0);
}

/// Replaces the attributes of `dst`'s first route in the mirror.
fn edit(m: &mut Mirror, dst: &str, f: impl FnOnce(&mut crate::model::RouteAttrs)) {
    let (net, sub) = key(dst);
    let e = main_v4(m).get_entry_mut(&net, &sub).unwrap();
    let mut a = (*e.attrs).clone();
    f(&mut a);
    e.attrs = Arc::new(a);
}

#[test]
fn a_wrong_flag_differs() {
    let dump = kernel_dump();
    let mut m = mirror_of(&dump);
    edit(&mut m, "10.20.0.0/16", |a| {
        a.nexthops[0].flags |= rtnh::ONLINK
    });
    let r = diff(&dump, &m);
    assert_eq!(
        (r.differing_count, r.missing_count, r.extra_count),
        (1, 0, 0),
        "{r:#?}"
    );
}

#[test]
fn a_wrong_liveness_differs() {
    let dump = kernel_dump();
    let mut m = mirror_of(&dump);
    // The mirror believes veth2 ignores routes with link down: its hops show dead.
    m.apply(Change::NewNetconf(crate::model::Netconf {
        family: Family::V4,
        ifindex: 3,
        ignore_linkdown: Some(true),
    }));
    let r = diff(&dump, &m);
    assert_eq!(r.differing_count, 2, "{r:#?}"); // 10.61/16's second hop, 10.60/16
    assert_eq!(r.object_differences, 1, "{r:#?}");
    let (_, mirror) = &r.differing[0];
    assert!(mirror
        .nexthops
        .iter()
        .any(|h| h.flags.contains(&"dead".to_string())));
}

#[test]
fn a_wrong_metric_differs() {
    let dump = kernel_dump();
    let mut m = mirror_of(&dump);
    edit(&mut m, "10.20.0.0/16", |a| {
        a.metrics = crate::model::Metrics::new(vec![(rtax::MTU, MetricValue::U32(1500))])
    });
    let r = diff(&dump, &m);
    assert_eq!(r.differing_count, 1, "{r:#?}");
    assert_eq!(r.differing[0].0.mtu, Some(1400));
}

#[test]
fn a_stale_hop_differs() {
    let dump = kernel_dump();
    let mut m = mirror_of(&dump);
    edit(&mut m, "10.61.0.0/16", |a| {
        a.nexthops
            .push(NextHop::new(Some("198.18.1.9".parse().unwrap()), 2))
    });
    let r = diff(&dump, &m);
    assert_eq!(r.differing_count, 1, "{r:#?}");
}

/// A wrong realm or encapsulation, on a single-path route or one hop of a multipath
/// route, differs; so does a lost one.
#[test]
fn a_wrong_encap_or_realm_differs() {
    let dump = kernel_dump();
    type Edit = fn(&mut crate::model::RouteAttrs);
    let edits: [(&str, Edit); 5] = [
        ("10.30.0.0/16", |a| a.nexthops[0].realms = 6),
        ("10.30.0.0/16", |a| a.nexthops[0].encap = None),
        ("10.30.0.0/16", |a| {
            let e = a.nexthops[0].encap.as_mut().unwrap();
            let mut d = e.data.to_vec();
            *d.last_mut().unwrap() ^= 1; // another destination address byte
            e.data = d.into();
        }),
        ("10.31.0.0/16", |a| a.nexthops[1].realms = 4),
        ("10.31.0.0/16", |a| {
            a.nexthops[1].encap.as_mut().unwrap().kind = 4
        }),
    ];
    for (dst, f) in edits {
        let mut m = mirror_of(&dump);
        edit(&mut m, dst, f);
        let r = diff(&dump, &m);
        assert_eq!(
            (r.differing_count, r.missing_count, r.extra_count),
            (1, 0, 0),
            "{dst}: {r:#?}"
        );
        assert_eq!(r.differing[0].0.prefix.to_string(), dst);
    }
}

#[test]
fn an_extra_route_and_stale_objects_are_reported() {
    let dump = kernel_dump();
    let mut m = mirror_of(&dump);
    let extra = crate::fib::Entry::new(
        SubKey::metric(7),
        m.fib
            .get(&crate::model::RouteKey {
                table: 254,
                dst: "10.9.0.0/24".parse().unwrap(),
                sub: SubKey::metric(0),
            })
            .unwrap()
            .attrs
            .clone(),
        0,
    );
    main_v4(&mut m).insert(&"10.9.0.0/24".parse().unwrap(), extra, Place::Back);
    m.apply(Change::DelNexthop { id: 2 });
    let r = diff(&dump, &m);
    assert_eq!(r.extra_count, 1, "{r:#?}");
    // The nexthop object is gone, the group shrank.
    assert_eq!(r.object_differences, 2, "{r:#?}");
    // ... and the route through the group resolves to one hop instead of two.
    assert_eq!(r.differing_count, 1, "{r:#?}");
}

/// `nexthop_compat_mode=0` dumps a route with a nexthop object without its hops; the
/// mirror (which learned it spelled out) is the same route.
#[test]
fn object_routes_compare_equal_in_both_compat_modes() {
    let dump = kernel_dump();
    let m = mirror_of(&dump);
    let compat0: Vec<(u16, Vec<u8>)> = dump
        .iter()
        .map(|(ty, p)| {
            if *ty == msg::RTM_NEWROUTE && p[1] == 16 && p[16 + 8..16 + 8 + 2] == [10, 70] {
                let mut nh = V4::new([10, 70, 0, 0], 16, &[]);
                nh.nhid = Some(10);
                nh.msg()
            } else {
                (*ty, p.clone())
            }
        })
        .collect();
    assert_ne!(compat0, dump, "the test must change the route's form");
    let r = diff(&compat0, &m);
    assert!(r.is_empty(), "{r:#?}");
}
