//! The batched kernel writer (`route_mirror::writer`) against a real kernel: many
//! requests per sendmsg, and each refusal reported for its own request only.

use std::net::IpAddr;

use ipnet::IpNet;
use route_mirror::model::{rtn, NextHop, RouteAttrs, RouteKey, SubKey};
use route_mirror::writer::{Outcome, RouteOp, Writer};
use route_mirror_tests::Netns;

const TABLE: u32 = 1234;

fn attrs(gw: &str, ifindex: u32) -> RouteAttrs {
    RouteAttrs {
        protocol: 240,
        kind: rtn::UNICAST,
        nexthops: vec![NextHop::new(Some(gw.parse::<IpAddr>().unwrap()), ifindex)].into(),
        ..Default::default()
    }
}

fn key(i: u32) -> RouteKey {
    let dst: IpNet = format!("10.{}.{}.0/24", i >> 8, i & 255).parse().unwrap();
    RouteKey {
        table: TABLE,
        dst,
        sub: SubKey::metric(0),
    }
}

#[test]
fn batched_writes_report_each_refusal_on_its_own_request() {
    let ns = Netns::new();
    let veth1: u32 = ns
        .exec(&["cat", "/sys/class/net/veth1/ifindex"])
        .trim()
        .parse()
        .unwrap();
    let n = 5000u32;
    // Every 1000th route has an unreachable gateway, route 2500 a missing device (no gateway: with one the kernel says ENETUNREACH).
    let bad_gw = |i: u32| i % 1000 == 7;
    let (outcomes, port) = route_mirror::netns::run_in(Some(ns.name().to_string()), move || {
        let mut w = Writer::open(64 << 10)?;
        let mut seqs = Vec::new();
        for i in 0..n {
            let a = if bad_gw(i) {
                attrs("192.0.2.1", veth1)
            } else if i == 2500 {
                RouteAttrs {
                    nexthops: vec![NextHop::new(None, 9999)].into(),
                    ..attrs("198.18.1.2", veth1)
                }
            } else {
                attrs("198.18.1.2", veth1)
            };
            seqs.push(w.route(RouteOp::Add, &key(i), &a));
        }
        let mut out = Vec::new();
        w.commit(&mut out);
        assert!(w.stats.sendmsg_calls > 1, "{:?}", w.stats);
        assert_eq!(out.iter().map(|o| o.0).collect::<Vec<_>>(), seqs);
        // Adding again: every one is refused with EEXIST, except the ones never added.
        for i in [0u32, 1, 7] {
            w.route(RouteOp::Add, &key(i), &attrs("198.18.1.2", veth1));
        }
        let mut again = Vec::new();
        w.commit(&mut again);
        out.extend(again);
        Ok((out, w.port()))
    })
    .unwrap();
    assert!(port != 0);
    let failed: Vec<(usize, i32)> = outcomes
        .iter()
        .enumerate()
        .filter_map(|(i, (_, o))| match o {
            Outcome::Failed(e) => Some((i, e.errno)),
            Outcome::Unknown => panic!("outcome {i} unknown"),
            Outcome::Done => None,
        })
        .collect();
    let mut want: Vec<(usize, i32)> = (0..n)
        .filter(|&i| bad_gw(i))
        .map(|i| (i as usize, libc::ENETUNREACH))
        .collect();
    want.push((2500, libc::ENODEV));
    want.sort();
    // The re-adds: 0 and 1 exist (EEXIST), 7 was refused before and now goes in.
    want.push((n as usize, libc::EEXIST));
    want.push((n as usize + 1, libc::EEXIST));
    assert_eq!(failed, want);
    // The kernel's extended-ACK text comes with the errno.
    match &outcomes[7].1 {
        Outcome::Failed(e) => assert!(
            e.msg.as_deref().is_some_and(|m| m.contains("gateway")),
            "{e:?}"
        ),
        o => panic!("{o:?}"),
    }
    let shown = ns.ip(&["route", "show", "table", &TABLE.to_string()]);
    let installed = shown.lines().count() as u32;
    assert_eq!(
        installed,
        n - 5 - 1 + 1,
        "{}",
        &shown[..shown.len().min(500)]
    );
    assert!(shown.contains("10.0.7.0/24 via 198.18.1.2 dev veth1 proto 240"));
    assert!(
        !shown.contains("10.9.196.0/24"),
        "route 2500 must be missing"
    );
}
