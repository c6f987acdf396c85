use std::collections::HashSet;

use super::*;
use crate::model::{
    nlm, rtax, rtn, rtnh, GroupMember, MetricValue, Metrics, Netconf, NexthopKind, SubKey,
};

const UP: u32 = libc::IFF_UP as u32 | libc::IFF_RUNNING as u32 | 0x10000;
const NO_CARRIER: u32 = libc::IFF_UP as u32;
const ADD: u16 = nlm::CREATE | nlm::EXCL;
const APPEND: u16 = nlm::CREATE | nlm::APPEND;
const PREPEND: u16 = nlm::CREATE;

/// Link `ifindex`, "vethN", with `flags`.
fn link(ifindex: u32, flags: u32) -> Link {
    Link {
        ifindex,
        name: format!("veth{ifindex}"),
        flags,
        mtu: 1500,
        ..Default::default()
    }
}

fn veth1(flags: u32) -> Link {
    link(3, flags)
}

/// A mirror with links 3 (veth1) and 4 up.
fn two_links() -> Mirror {
    let mut m = Mirror::new();
    m.apply(Change::NewLink(veth1(UP)));
    m.apply(Change::NewLink(link(4, UP)));
    m
}

/// An IPv4 nexthop object `id` through device `ifindex`.
fn device_nh(id: u32, ifindex: u32) -> NexthopObject {
    NexthopObject {
        id,
        family: Some(Family::V4),
        protocol: 0,
        kind: NexthopKind::Single {
            gateway: None,
            ifindex,
            flags: 0,
            encap: None,
        },
    }
}

fn attrs(hops: &[(Option<&str>, u32)]) -> RouteAttrs {
    RouteAttrs {
        protocol: 4,
        kind: rtn::UNICAST,
        nexthops: hops
            .iter()
            .map(|(g, i)| NextHop::new(g.map(|g| g.parse().unwrap()), *i))
            .collect(),
        ..Default::default()
    }
}

fn route_with(dst: &str, metric: u32, a: RouteAttrs) -> Route {
    Route {
        key: RouteKey {
            table: 254,
            dst: dst.parse().unwrap(),
            sub: SubKey::metric(metric),
        },
        attrs: Arc::new(a),
    }
}

fn route(dst: &str, metric: u32, ifindex: u32) -> Route {
    route_with(dst, metric, attrs(&[(None, ifindex)]))
}

fn new(r: Route) -> Change {
    Change::route(r)
}

fn with(r: Route, flags: u16) -> Change {
    Change::NewRoute { route: r, flags }
}

/// The ifindexes of the first hop of each route of `dst` metric `metric`, in list order.
fn list(m: &Mirror, dst: &str, metric: u32) -> Vec<u32> {
    let net: IpNet = dst.parse().unwrap();
    m.fib
        .table(Family::of_net(&net), 254)
        .map(|t| {
            t.key_routes(&net, &SubKey::metric(metric))
                .iter()
                .map(|e| e.attrs.nexthops.first().map_or(0, |h| h.ifindex))
                .collect()
        })
        .unwrap_or_default()
}

fn scan(m: &mut Mirror, scope: ScanScope) -> ActiveScan {
    let gen = m.begin_scan();
    ActiveScan::new(ScanReason::Manual, scope, gen)
}

#[test]
fn scan_verdicts_and_prune() {
    let mut m = Mirror::new();
    m.apply(new(route("10.0.0.0/8", 0, 2)));
    m.apply(new(route("10.1.0.0/16", 0, 2))); // will be missing from the dump
    m.apply(new(route("10.2.0.0/16", 0, 2))); // will differ in the dump
    let mut scan = scan(&mut m, ScanScope::routes(Family::V4));
    m.mark(new(route("10.0.0.0/8", 0, 2)), &mut scan);
    m.mark(new(route("10.2.0.0/16", 0, 3)), &mut scan);
    m.mark(new(route("10.3.0.0/16", 0, 2)), &mut scan);
    // An event during the scan is newer than the dump: it must survive the prune.
    m.apply(new(route("10.4.0.0/16", 0, 2)));
    m.prune(&mut scan);
    let v = scan.verdicts;
    assert_eq!((v.seen, v.updated, v.created, v.deleted), (1, 1, 1, 1));
    assert_eq!(m.fib.len(), 4);
    assert!(m.fib.get(&route("10.1.0.0/16", 0, 2).key).is_none());
    assert!(m.fib.get(&route("10.4.0.0/16", 0, 2).key).is_some());
}

#[test]
fn failed_dump_prunes_nothing() {
    let mut m = Mirror::new();
    m.apply(new(route("10.0.0.0/8", 0, 2)));
    let mut scan = scan(&mut m, ScanScope::routes(Family::V4));
    scan.failed.push(DumpKind::Routes(Family::V4, None));
    m.prune(&mut scan);
    assert_eq!(m.fib.len(), 1);
}

/// `ip route add` / `append` / `prepend` / `replace` / `del` and the two connected routes
/// of one subnet on two devices, as the notifications' flags place them.
#[test]
fn ipv4_keys_hold_lists_in_kernel_order() {
    let mut m = Mirror::new();
    let p = "10.9.0.0/24";
    m.apply(with(route(p, 0, 2), ADD));
    m.apply(with(route(p, 0, 3), APPEND));
    m.apply(with(route(p, 0, 4), PREPEND));
    m.apply(with(route(p, 0, 5), APPEND));
    assert_eq!(list(&m, p, 0), vec![4, 2, 3, 5]);
    assert_eq!(m.fib.len(), 4);
    // A delete names the route: the one with those attributes goes.
    m.apply(Change::DelRoute {
        route: route(p, 0, 3),
    });
    assert_eq!(list(&m, p, 0), vec![4, 2, 5]);
    // `replace` replaces the first.
    m.apply(with(route(p, 0, 6), nlm::REPLACE));
    assert_eq!(list(&m, p, 0), vec![6, 2, 5]);
    // Lookups use the first (alive) route.
    let (_, _, e) = m
        .lookup(
            "10.9.0.1".parse().unwrap(),
            &crate::fib::DEFAULT_RULE_TABLES,
            0,
        )
        .unwrap();
    assert_eq!(e.attrs.nexthops[0].ifindex, 6);
    // A dump with the same list: all seen; then a dump missing one and reordered.
    let mut s = scan(&mut m, ScanScope::routes(Family::V4));
    for i in [6, 2, 5] {
        m.mark(new(route(p, 0, i)), &mut s);
    }
    m.prune(&mut s);
    assert_eq!(s.verdicts.corrections(), 0, "{:?}", s.verdicts);
    let mut s = scan(&mut m, ScanScope::routes(Family::V4));
    for i in [5, 6] {
        m.mark(new(route(p, 0, i)), &mut s);
    }
    m.prune(&mut s);
    assert_eq!(list(&m, p, 0), vec![5, 6]);
    assert!(
        s.verdicts.deleted == 1 && s.verdicts.updated >= 1,
        "{:?}",
        s.verdicts
    );
    // A new-key notification means the kernel had no route for the key: stale ones go.
    m.apply(with(route(p, 0, 7), ADD));
    assert_eq!(list(&m, p, 0), vec![7]);
}

#[test]
fn a_dumped_duplicate_is_created_in_its_place() {
    let mut m = Mirror::new();
    let p = "10.9.0.0/24";
    m.apply(with(route(p, 0, 2), ADD));
    let mut s = scan(&mut m, ScanScope::routes(Family::V4));
    m.mark(new(route(p, 0, 4)), &mut s);
    m.mark(new(route(p, 0, 2)), &mut s);
    m.mark(new(route(p, 0, 3)), &mut s);
    m.prune(&mut s);
    assert_eq!(list(&m, p, 0), vec![4, 2, 3]);
}

/// An IPv6 dump resumes each chunk by position; after a change it can list a route of
/// the last chunk again (seen in the eBPF soak: a blackhole route at a chunk boundary,
/// "created" as a second copy). Not a correction, no second copy.
#[test]
fn a_route_the_dump_repeats_is_not_created_twice() {
    let mut m = Mirror::new();
    let p = "10.9.0.0/24";
    m.apply(with(route(p, 0, 2), ADD));
    m.apply(with(route(p, 0, 3), APPEND));
    let mut s = v4_scan(&mut m);
    v4_dump(&mut m, &mut s, &[route(p, 0, 2)]);
    v4_dump(&mut m, &mut s, &[route(p, 0, 2), route(p, 0, 3)]);
    m.dump_ended(&mut s);
    m.prune(&mut s);
    assert_eq!(list(&m, p, 0), vec![2, 3]);
    assert_eq!(s.verdicts.corrections(), 0, "{:?}", s.verdicts);
}

fn v6_gw(n: u8, ifindex: u32) -> (Option<&'static str>, u32) {
    let g: &'static str = Box::leak(format!("2001:2:0:{n}::2").into_boxed_str());
    (Some(g), ifindex)
}

fn mtu(n: u32) -> Metrics {
    Metrics::new(vec![(rtax::MTU, MetricValue::U32(n))])
}

/// `ip -6 route add P via A mtu 1400; append P via B mtu 1300; del P via A`: the route
/// shows the first sibling's metrics, then the next one's.
#[test]
fn ipv6_siblings_and_their_metrics() {
    let mut m = Mirror::new();
    let p = "2001:db8:9::/48";
    let a = |hops: &[(Option<&str>, u32)], mt: u32| RouteAttrs {
        metrics: mtu(mt),
        ..attrs(hops)
    };
    m.apply(with(route_with(p, 1024, a(&[v6_gw(1, 2)], 1400)), ADD));
    m.apply(with(
        route_with(p, 1024, a(&[v6_gw(2, 3), v6_gw(1, 2)], 1300)),
        APPEND,
    ));
    let key = route(p, 1024, 0).key;
    let e = m.fib.get(&key).unwrap();
    assert_eq!(m.fib.len(), 1);
    assert_eq!(e.attrs.mtu(), Some(1400));
    assert_eq!(e.attrs.nexthops[0].ifindex, 2);
    // A dump agrees (it shows the first sibling's metrics only): nothing to correct.
    let mut s = scan(&mut m, ScanScope::routes(Family::V6));
    m.mark(
        new(route_with(p, 1024, a(&[v6_gw(1, 2), v6_gw(2, 3)], 1400))),
        &mut s,
    );
    m.prune(&mut s);
    assert_eq!(s.verdicts.corrections(), 0, "{:?}", s.verdicts);
    // The first sibling goes: the next one's metrics show.
    m.apply(Change::DelRoute {
        route: route_with(p, 1024, a(&[v6_gw(1, 2)], 1400)),
    });
    let e = m.fib.get(&key).unwrap();
    assert_eq!(e.attrs.nexthops.len(), 1);
    assert_eq!(e.attrs.mtu(), Some(1300));
    // Device routes of one metric are a list; `prepend` appends and `replace` replaces
    // the first of the same kind.
    m.apply(with(route(p, 1024, 2), APPEND));
    m.apply(with(route(p, 1024, 4), PREPEND));
    assert_eq!(list(&m, p, 1024), vec![3, 2, 4]);
    m.apply(with(route(p, 1024, 4), nlm::REPLACE));
    assert_eq!(list(&m, p, 1024), vec![4, 3, 4]);
}

#[test]
fn admin_down_flushes_ipv4_routes_without_a_live_hop_in_all_tables() {
    let mut m = two_links();
    m.apply(new(route("10.0.0.0/8", 0, 3)));
    let mut r = route("10.0.0.0/8", 5, 3);
    r.key.table = 100;
    m.apply(new(r));
    m.apply(new(route("10.9.0.0/16", 0, 4)));
    let mp = route_with("10.8.0.0/16", 0, attrs(&[(None, 3), (None, 4)]));
    m.apply(new(mp.clone()));
    let f = m.apply(Change::NewLink(veth1(0)));
    assert_eq!(f.unwrap().reason, ScanReason::LinkChange);
    // The multipath route stays, its hop through veth1 dead.
    assert_eq!(m.fib.len(), 2);
    assert_eq!(m.counters.inferred_removals, 2);
    let e = m.fib.get(&mp.key).unwrap();
    let hops = m.dumped_hops(Family::V4, &e.attrs);
    assert_eq!(hops[0].flags, rtnh::DEAD | rtnh::LINKDOWN);
    assert_eq!(hops[1].flags, 0);
    // The other link goes down too: now it has no live hop either.
    m.apply(Change::NewLink(link(4, 0)));
    assert!(m.fib.get(&mp.key).is_none());
}

/// Carrier loss keeps routes (flagged), removes nexthop objects on the link and the
/// routes using them, shrinks groups and drops groups left empty.
#[test]
fn carrier_loss_is_state_for_routes_and_death_for_nexthop_objects() {
    let mut m = two_links();
    let single = |id, ifindex| Change::NewNexthop(device_nh(id, ifindex));
    let group = |id, members: &[u32]| {
        Change::NewNexthop(NexthopObject {
            id,
            family: None,
            protocol: 0,
            kind: NexthopKind::Group {
                members: members
                    .iter()
                    .map(|&id| GroupMember { id, weight: 1 })
                    .collect(),
                resilient: false,
            },
        })
    };
    m.apply(single(1, 3));
    m.apply(single(2, 4));
    m.apply(group(10, &[1, 2]));
    m.apply(group(11, &[1]));
    let nh = |dst: &str, id| {
        route_with(
            dst,
            0,
            RouteAttrs {
                nh_id: Some(id),
                nexthops: Default::default(),
                ..attrs(&[])
            },
        )
    };
    m.apply(new(nh("10.70.0.0/16", 10)));
    m.apply(new(nh("10.71.0.0/16", 1)));
    m.apply(new(nh("10.72.0.0/16", 11)));
    let plain = route("10.60.0.0/16", 0, 3);
    m.apply(new(plain.clone()));
    m.apply(Change::NewLink(veth1(NO_CARRIER)));
    assert_eq!(
        m.nexthops.keys().copied().collect::<HashSet<_>>(),
        HashSet::from([2, 10])
    );
    let NexthopKind::Group { members, .. } = &m.nexthops[&10].kind else {
        panic!()
    };
    assert_eq!(members.len(), 1);
    assert_eq!(m.fib.len(), 2);
    assert_eq!(m.counters.inferred_nexthop_removals, 2);
    // The plain route stays, linkdown; dead (and skipped) only if ignored.
    let e = m.fib.get(&plain.key).unwrap();
    assert_eq!(m.dumped_hops(Family::V4, &e.attrs)[0].flags, rtnh::LINKDOWN);
    let addr: IpAddr = "10.60.0.1".parse().unwrap();
    let tables = crate::fib::DEFAULT_RULE_TABLES;
    assert!(m.lookup(addr, &tables, 0).is_some());
    m.apply(Change::NewNetconf(Netconf {
        family: Family::V4,
        ifindex: 3,
        ignore_linkdown: Some(true),
    }));
    let e = m.fib.get(&plain.key).unwrap();
    assert_eq!(
        m.dumped_hops(Family::V4, &e.attrs)[0].flags,
        rtnh::LINKDOWN | rtnh::DEAD
    );
    assert!(m.lookup(addr, &tables, 0).is_none());
    // Carrier back: alive again, no route message needed.
    m.apply(Change::NewLink(veth1(UP)));
    assert!(m.lookup(addr, &tables, 0).is_some());
}

#[test]
fn inferred_removals_are_confirmed_or_refuted_by_the_next_dump() {
    let mut m = Mirror::new();
    m.journal = Some(Journal::default());
    m.apply(Change::NewLink(veth1(UP)));
    m.apply(new(route("10.0.0.0/8", 0, 3)));
    m.apply(new(route("10.1.0.0/16", 0, 3)));
    m.apply(new(route("10.2.0.0/16", 0, 3)));
    m.journal.as_mut().unwrap().deltas.clear();
    m.apply(Change::NewLink(veth1(0)));
    assert_eq!(m.counters.inferred_removals, 3);
    assert_eq!(m.counters.inferred_pending, 3);
    // Every removal reached the exports' funnel (the BPF FIB and watch follow it).
    assert_eq!(m.journal.as_ref().unwrap().deltas.len(), 3);
    // Re-added by an event before the dump: neither confirmed nor refuted.
    m.apply(new(route("10.2.0.0/16", 0, 3)));
    assert_eq!(m.counters.inferred_pending, 2);
    let gen = m.begin_scan();
    let mut scan = ActiveScan::new(ScanReason::LinkChange, ScanScope::routes(Family::V4), gen);
    // The dump still lists 10.1/16: the inference was wrong for it.
    m.mark(new(route("10.1.0.0/16", 0, 3)), &mut scan);
    m.mark(new(route("10.2.0.0/16", 0, 3)), &mut scan);
    m.prune(&mut scan);
    let c = &m.counters;
    assert_eq!(
        (c.inferred_confirmed, c.inferred_refuted, c.inferred_pending),
        (1, 1, 0)
    );
}

#[test]
fn v6_sibling_delete_keeps_the_other_hops() {
    let mut m = Mirror::new();
    let r = route_with("2001:db8::/32", 1024, attrs(&[v6_gw(1, 3), v6_gw(2, 4)]));
    let key = r.key;
    m.apply(new(r));
    m.apply(Change::DelRoute {
        route: route_with("2001:db8::/32", 1024, attrs(&[v6_gw(1, 3)])),
    });
    assert_eq!(m.fib.get(&key).unwrap().attrs.nexthops.len(), 1);
    m.apply(Change::DelRoute {
        route: route_with("2001:db8::/32", 1024, attrs(&[v6_gw(2, 4)])),
    });
    assert!(m.fib.get(&key).is_none());
}

#[test]
fn ipv6_all_sets_every_device_and_ipv4_default_asks_for_a_dump() {
    let mut m = Mirror::new();
    let f = m.apply(Change::NewNetconf(Netconf {
        family: Family::V4,
        ifindex: crate::model::netconf::DEFAULT,
        ignore_linkdown: Some(true),
    }));
    assert!(f.is_some_and(|f| f.scope.dumps() == ScanScope::netconf().dumps()));
    // A notification about another setting leaves this one alone.
    m.apply(Change::NewNetconf(Netconf {
        family: Family::V4,
        ifindex: 3,
        ignore_linkdown: None,
    }));
    assert!(!m.live.ignores_linkdown(Family::V4, 3));
}

/// Renames and removals reach the funnel, from events and from scans alike: what
/// names a route's device (the AFT's next hops, NATS route objects) must re-read it.
#[test]
fn link_renames_and_removals_are_journaled() {
    let mut m = Mirror::new();
    m.journal = Some(Journal::default());
    let renamed = |m: &mut Mirror| std::mem::take(&mut m.journal.as_mut().unwrap().links_renamed);
    m.apply(Change::NewLink(veth1(UP)));
    assert!(renamed(&mut m).is_empty(), "a new link renames nothing");
    m.apply(Change::NewLink(Link {
        name: "wan0".into(),
        ..veth1(UP)
    }));
    m.apply(Change::NewLink(Link {
        name: "wan0".into(),
        mtu: 9000,
        ..veth1(UP)
    }));
    assert_eq!(renamed(&mut m), [3], "once, for the rename only");
    // A scan that finds it renamed again, then one that no longer finds it.
    let gen = m.begin_scan();
    let mut scan = ActiveScan::new(ScanReason::Periodic, ScanScope::full(), gen);
    m.mark(Change::NewLink(veth1(UP)), &mut scan);
    m.prune(&mut scan);
    assert_eq!(renamed(&mut m), [3]);
    let gen = m.begin_scan();
    let mut scan = ActiveScan::new(ScanReason::Periodic, ScanScope::full(), gen);
    m.prune(&mut scan);
    assert_eq!(renamed(&mut m), [3]);
    assert!(m.links.is_empty());
    m.apply(Change::NewLink(veth1(UP)));
    m.apply(Change::DelLink { ifindex: 3 });
    m.apply(Change::DelLink { ifindex: 3 });
    assert_eq!(renamed(&mut m), [3], "removed once");
}

/// One chunk of a route dump as the core applies it: its routes, then its end.
fn v4_dump(m: &mut Mirror, s: &mut ActiveScan, chunk: &[Route]) {
    for r in chunk {
        m.mark(new(r.clone()), s);
    }
    m.dump_chunk_done(s);
}

fn v4_scan(m: &mut Mirror) -> ActiveScan {
    let s = scan(m, ScanScope::routes(Family::V4));
    m.dump_started(DumpKind::Routes(Family::V4, None));
    s
}

/// IPv4 route dumps run under RCU (Linux 6.10+): a chunk can read a key before changes
/// whose notifications still reach the socket ahead of it. Wherever in those changes the
/// chunk read the key, the mirror (which applied them all) is confirmed, not corrected
/// back to the older list.
#[test]
fn a_chunk_older_or_newer_than_the_events_before_it_confirms_them() {
    let p = "10.9.0.0/24";
    let bh = route_with(
        p,
        0,
        RouteAttrs {
            kind: rtn::BLACKHOLE,
            ..attrs(&[])
        },
    );
    for chunk_after in 0..=4 {
        let mut m = Mirror::new();
        m.apply(with(route(p, 0, 7), ADD));
        m.apply(with(route(p, 0, 9), APPEND));
        let mut s = v4_scan(&mut m);
        // [7, 9] -> append 2 -> replace first by a blackhole -> del 2 -> del blackhole.
        let mut lists = vec![vec![route(p, 0, 7), route(p, 0, 9)]];
        let events = [
            with(route(p, 0, 2), APPEND),
            with(bh.clone(), nlm::REPLACE),
            Change::DelRoute {
                route: route(p, 0, 2),
            },
            Change::DelRoute { route: bh.clone() },
        ];
        lists.push(vec![route(p, 0, 7), route(p, 0, 9), route(p, 0, 2)]);
        lists.push(vec![bh.clone(), route(p, 0, 9), route(p, 0, 2)]);
        lists.push(vec![bh.clone(), route(p, 0, 9)]);
        lists.push(vec![route(p, 0, 9)]);
        for e in events {
            m.apply(e);
        }
        v4_dump(&mut m, &mut s, &lists[chunk_after]);
        m.dump_ended(&mut s);
        m.prune(&mut s);
        assert_eq!(
            list(&m, p, 0),
            vec![9],
            "chunk read after {chunk_after} events"
        );
        assert_eq!(s.verdicts.corrections(), 0, "chunk after {chunk_after}");
    }
}

/// An insert in flight when the chunk read its key: the chunk shows the route, its
/// notification comes after the chunk. No duplicate, and no correction counted.
#[test]
fn an_insert_in_flight_is_notified_after_the_chunk_that_shows_it() {
    let p = "10.9.0.0/24";
    let mut m = Mirror::new();
    m.apply(with(route(p, 0, 2), ADD));
    let mut s = v4_scan(&mut m);
    v4_dump(&mut m, &mut s, &[route(p, 0, 2), route(p, 0, 3)]);
    m.apply(with(route(p, 0, 3), APPEND));
    m.dump_ended(&mut s);
    m.prune(&mut s);
    assert_eq!(list(&m, p, 0), vec![2, 3]);
    assert_eq!(m.counters.route_adds_reflected, 1);
    assert_eq!(s.verdicts.corrections(), 0, "{:?}", s.verdicts);
    assert_eq!(s.verdicts.seen, 2);
}

/// A delete in flight: notified before the route leaves the list, so a chunk after the
/// notification may still show it. It stays deleted.
#[test]
fn a_delete_in_flight_is_notified_before_the_chunk_that_still_shows_it() {
    let p = "10.9.0.0/24";
    let mut m = Mirror::new();
    m.apply(with(route(p, 0, 2), ADD));
    m.apply(with(route(p, 0, 3), APPEND));
    let mut s = v4_scan(&mut m);
    m.apply(Change::DelRoute {
        route: route(p, 0, 3),
    });
    v4_dump(&mut m, &mut s, &[route(p, 0, 2), route(p, 0, 3)]);
    m.dump_ended(&mut s);
    m.prune(&mut s);
    assert_eq!(list(&m, p, 0), vec![2]);
    assert_eq!(s.verdicts.corrections(), 0, "{:?}", s.verdicts);
}

/// An add queued before the dump's first reply (stamped older: confirmed by the dump),
/// of a key the chunk read before the add: it survives the prune.
#[test]
fn an_add_the_chunk_read_too_early_survives_the_prune() {
    let mut m = Mirror::new();
    m.apply(with(route("10.1.0.0/16", 0, 2), ADD));
    let mut s = v4_scan(&mut m);
    m.apply_stamped(
        with(route("10.9.0.0/24", 0, 3), ADD),
        s.generation.wrapping_sub(1),
    );
    v4_dump(&mut m, &mut s, &[route("10.1.0.0/16", 0, 2)]);
    m.dump_ended(&mut s);
    m.prune(&mut s);
    assert_eq!(list(&m, "10.9.0.0/24", 0), vec![3]);
    assert_eq!(s.verdicts.corrections(), 0, "{:?}", s.verdicts);
}

/// The window does not hide a wrong mirror: a dumped list the key never went through is
/// a correction, made with the window's events applied on top of it.
#[test]
fn a_list_the_key_never_went_through_is_corrected() {
    let p = "10.9.0.0/24";
    let mut m = Mirror::new();
    m.apply(with(route(p, 0, 2), ADD)); // the kernel has 5 instead (an event was lost)
    let mut s = v4_scan(&mut m);
    m.apply(with(route(p, 0, 3), APPEND));
    v4_dump(&mut m, &mut s, &[route(p, 0, 5), route(p, 0, 3)]);
    m.dump_ended(&mut s);
    m.prune(&mut s);
    assert_eq!(list(&m, p, 0), vec![5, 3]);
    assert!(s.verdicts.corrections() > 0, "{:?}", s.verdicts);
}

/// Events older than a chunk can reach the mirror after it (eBPF: a dump's first chunk
/// is built at the request, before the `recv` that orders ring records around it). The
/// chunk's correction is withdrawn once those events bring the list the mirror had
/// before it to the one the chunk showed; one they never bring there stays counted.
#[test]
fn a_correction_the_events_after_it_explain_is_withdrawn() {
    let p = "10.9.0.0/24";
    for (events, corrections) in [(vec![4, 5], 0), (vec![4], 1), (vec![], 1)] {
        let mut m = Mirror::new();
        m.apply(with(route(p, 0, 2), ADD));
        let mut s = v4_scan(&mut m);
        // The kernel replaced 2 by 4, then 4 by 5; the chunk shows 5.
        v4_dump(&mut m, &mut s, &[route(p, 0, 5)]);
        m.dump_ended(&mut s);
        for &i in &events {
            m.apply(with(route(p, 0, i), nlm::CREATE | nlm::REPLACE));
        }
        m.prune(&mut s);
        assert_eq!(list(&m, p, 0), vec![*events.last().unwrap_or(&5)]);
        assert_eq!(
            s.verdicts.corrections(),
            corrections,
            "events {events:?}: {:?}",
            s.verdicts
        );
    }
}

/// A chunk read after an admin down flushed a key's first route (no message), before
/// the link event that lets the mirror infer it: the chunk's reorder is that flush.
#[test]
fn a_silent_flush_the_link_event_explains_after_the_chunk_is_no_correction() {
    let p = "10.9.0.0/24";
    let mut m = two_links();
    m.apply(with(route(p, 0, 3), ADD));
    m.apply(with(route(p, 0, 4), APPEND));
    let mut s = v4_scan(&mut m);
    v4_dump(&mut m, &mut s, &[route(p, 0, 4)]);
    m.dump_ended(&mut s);
    m.apply(Change::NewLink(veth1(0)));
    m.prune(&mut s);
    assert_eq!(list(&m, p, 0), vec![4]);
    assert_eq!(s.verdicts.corrections(), 0, "{:?}", s.verdicts);
}

/// Admin down of both hops' devices: `fib_sync_down_dev` flags the multipath route's
/// `fib_info` `LINKDOWN`, then `fib_flush` removes it silently. A chunk read between the
/// two shows the flag; the link events after it explain that.
#[test]
fn a_multipath_route_dumped_dead_before_its_flush_is_no_correction() {
    let mut m = two_links();
    let mp = route_with("10.8.0.0/16", 0, attrs(&[(None, 3), (None, 4)]));
    m.apply(with(mp.clone(), ADD));
    let mut dumped = (*mp.attrs).clone();
    dumped.flags |= u32::from(rtnh::LINKDOWN);
    let mut s = v4_scan(&mut m);
    v4_dump(&mut m, &mut s, &[route_with("10.8.0.0/16", 0, dumped)]);
    m.dump_ended(&mut s);
    m.apply(Change::NewLink(veth1(0)));
    m.apply(Change::NewLink(link(4, 0)));
    m.prune(&mut s);
    assert!(m.fib.get(&mp.key).is_none());
    assert_eq!(s.verdicts.corrections(), 0, "{:?}", s.verdicts);
}

/// A device's last IPv4 address going disables IPv4 on it (`fib_inetaddr_event`:
/// `fib_disable_ip(dev, NETDEV_DOWN, true)`): its hops die, IPv4 routes left without a
/// live hop go without a message, multipath routes keep the dead hop; an address coming
/// back revives it (`fib_sync_up`). Found by the soak (scans after `addr del` pruned
/// the routes through the device).
#[test]
fn the_last_ipv4_address_going_kills_the_devices_hops() {
    let mut m = Mirror::new();
    m.apply(Change::NewLink(veth1(UP)));
    m.apply(Change::NewLink(link(5, UP)));
    let addr = Address {
        ifindex: 3,
        addr: "198.18.1.1".parse().unwrap(),
        prefix_len: 24,
        scope: 0,
    };
    m.apply(Change::NewAddr(addr));
    let gw1 = (Some("198.18.1.2"), 3);
    let gw2 = (Some("198.18.2.2"), 5);
    m.apply(with(route_with("10.1.0.0/16", 0, attrs(&[gw1])), ADD));
    m.apply(with(route_with("10.2.0.0/16", 0, attrs(&[gw1, gw2])), ADD));
    m.apply(Change::DelAddr(addr));
    assert!(m.fib.get(&route("10.1.0.0/16", 0, 3).key).is_none());
    let mp = m
        .fib
        .get(&route("10.2.0.0/16", 0, 3).key)
        .expect("multipath kept");
    let hops = m.dumped_hops(Family::V4, &mp.attrs.clone());
    assert_eq!(hops[0].flags & rtnh::DEAD, rtnh::DEAD, "{hops:?}");
    assert_eq!(hops[1].flags & rtnh::DEAD, 0, "{hops:?}");
    m.apply(Change::NewAddr(addr));
    let mp = m.fib.get(&route("10.2.0.0/16", 0, 3).key).unwrap();
    let hops = m.dumped_hops(Family::V4, &mp.attrs.clone());
    assert_eq!(hops[0].flags & rtnh::LIVENESS, 0, "{hops:?}");
}

/// Replacing a nexthop object renotifies every route using it with `NLM_F_REPLACE`
/// (`fib_info_notify_update`), wherever the route sits in its key's list: that moves
/// nothing (found by the soak: a key [via 9.2, nhid 8] became [nhid 8, ...]).
#[test]
fn a_nexthop_replace_renotification_moves_nothing() {
    let p = "10.9.0.0/24";
    let mut m = Mirror::new();
    let nh8 = route_with(
        p,
        10,
        RouteAttrs {
            kind: rtn::BLACKHOLE,
            nh_id: Some(8),
            ..attrs(&[])
        },
    );
    m.apply(with(nh8.clone(), ADD));
    m.apply(with(route(p, 10, 6), PREPEND));
    m.apply(with(nh8, nlm::REPLACE));
    let first: Vec<Option<u32>> = m
        .fib
        .table(Family::V4, 254)
        .unwrap()
        .key_routes(&p.parse().unwrap(), &SubKey::metric(10))
        .iter()
        .map(|e| e.attrs.nh_id)
        .collect();
    assert_eq!(first, vec![None, Some(8)]);
}

/// A nexthop object (or a link) created or replaced while a dump runs: the chunk shows it,
/// its notification comes after the chunk and changes nothing. Not a correction (seen in
/// the eBPF soak: `nexthop replace id 2 ...` during a confirming scan); one whose
/// notification never comes stays a correction.
#[test]
fn a_nexthop_change_in_flight_is_notified_after_the_dump_that_shows_it() {
    let obj = device_nh;
    let mut m = Mirror::new();
    m.apply(Change::NewNexthop(obj(1, 2)));
    let gen = m.begin_scan();
    let mut s = ActiveScan::new(ScanReason::NexthopRemoved, ScanScope::full(), gen);
    m.mark(Change::NewNexthop(obj(1, 3)), &mut s); // replaced in flight
    m.mark(Change::NewNexthop(obj(2, 3)), &mut s); // created in flight
    m.mark(Change::NewNexthop(obj(3, 3)), &mut s); // missed: no notification follows
    m.mark(Change::NewLink(veth1(UP)), &mut s); // a link created in flight, too
    m.apply(Change::NewNexthop(obj(1, 3)));
    m.apply(Change::NewNexthop(obj(2, 3)));
    m.apply(Change::NewLink(veth1(UP)));
    m.prune(&mut s);
    let v = s.object_verdicts;
    assert_eq!((v.updated, v.created, v.seen), (0, 1, 3), "{v:?}");
}

/// A nexthop object whose device loses its carrier goes, and the kernel takes it out of
/// its groups without a message for them. A dump read between that and the link event
/// shows the groups shrunk: the link event explains it. Without that event the group's
/// correction stays counted.
#[test]
fn a_group_dumped_without_a_member_whose_removal_comes_later_is_no_correction() {
    for carrier_loss in [true, false] {
        let mut m = two_links();
        m.apply(Change::NewNexthop(device_nh(1, 3)));
        m.apply(Change::NewNexthop(device_nh(2, 4)));
        let group = |members: &[u32]| NexthopObject {
            id: 10,
            family: None,
            protocol: 0,
            kind: NexthopKind::Group {
                members: members
                    .iter()
                    .map(|&id| GroupMember { id, weight: 1 })
                    .collect(),
                resilient: false,
            },
        };
        m.apply(Change::NewNexthop(group(&[1, 2])));
        let gen = m.begin_scan();
        let mut s = ActiveScan::new(ScanReason::NexthopRemoved, ScanScope::full(), gen);
        // Nexthop 1 is gone already when the dump reads the objects.
        m.mark(Change::NewNexthop(device_nh(2, 4)), &mut s);
        m.mark(Change::NewNexthop(group(&[2])), &mut s);
        if carrier_loss {
            m.apply(Change::NewLink(veth1(NO_CARRIER)));
        }
        m.prune(&mut s);
        let v = s.object_verdicts;
        assert_eq!(v.updated, u64::from(!carrier_loss), "{carrier_loss}: {v:?}");
    }
}

/// A carrier flap shorter than linkwatch's delay: a dump in between shows the link
/// without its carrier, and the one notification that follows reports the state at the
/// time linkwatch ran (carrier back). That notification explains the dump's correction;
/// without it the correction stays counted.
#[test]
fn a_carrier_change_linkwatch_reports_after_the_dump_is_no_correction() {
    for notified in [true, false] {
        let mut m = Mirror::new();
        m.apply(Change::NewLink(link(6, UP)));
        let gen = m.begin_scan();
        let mut s = ActiveScan::new(ScanReason::LinkChange, ScanScope::full(), gen);
        m.mark(Change::NewLink(link(6, NO_CARRIER)), &mut s);
        if notified {
            m.apply(Change::NewLink(link(6, UP)));
        }
        m.prune(&mut s);
        let v = s.object_verdicts;
        assert_eq!(v.updated, u64::from(!notified), "{notified}: {v:?}");
    }
}
