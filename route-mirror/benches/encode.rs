//! Writing route requests: netlink-packet-route's typed `RouteMessage` against the hand
//! encoder, on a million routes shaped like the shared route sets (unicast via one of
//! two gateways, blackholes, 10% two-hop multipath). Decides which one the copy writer
//! uses (BENCHMARKS.md "Copies"). Run: `cargo bench -p route-mirror --bench encode`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use route_mirror::model::{rtn, NextHop, RouteAttrs, RouteKey, SubKey};
use route_mirror::writer::encode::{route, route_typed, RouteOp};

fn sample(i: u32) -> (RouteKey, RouteAttrs) {
    let dst = Ipv4Addr::from(0x0100_0000u32 + i * 256);
    let key = RouteKey {
        table: 200,
        dst: ipnet::IpNet::new(IpAddr::V4(dst), 24).unwrap(),
        sub: SubKey::metric(10 * (i % 3)),
    };
    let gw = |n: u8| Some(IpAddr::V4(Ipv4Addr::new(198, 18, n, 2)));
    let mut a = RouteAttrs {
        protocol: 240,
        kind: rtn::UNICAST,
        ..Default::default()
    };
    if i % 4 == 3 {
        a.kind = rtn::BLACKHOLE;
    } else if i % 10 == 1 {
        a.nexthops = vec![NextHop::new(gw(1), 3), NextHop::new(gw(2), 5)].into();
    } else {
        a.nexthops = vec![NextHop::new(gw(1 + (i % 2) as u8), 3 + 2 * (i % 2))].into();
    }
    (key, a)
}

/// An encoder under test.
type Encode = dyn Fn(&mut Vec<u8>, u32, RouteOp, &RouteKey, &RouteAttrs);

fn main() {
    const N: u32 = 1_000_000;
    let routes: Vec<(RouteKey, RouteAttrs)> = (0..N).map(sample).collect();
    let mut buf = Vec::with_capacity(256 << 10);
    let mut time = |f: &Encode| {
        let t = Instant::now();
        for (i, (k, a)) in routes.iter().enumerate() {
            if buf.len() > (256 << 10) {
                black_box(&buf);
                buf.clear();
            }
            f(&mut buf, i as u32, RouteOp::Add, k, a);
        }
        t.elapsed()
    };
    let typed = time(&route_typed);
    let hand = time(&route);
    let per = |d: std::time::Duration| d.as_secs_f64() * 1e9 / N as f64;
    println!("| encoder (1M IPv4 RTM_NEWROUTE, one core) | total | per route |");
    println!("|---|---:|---:|");
    println!(
        "| netlink-packet-route `RouteMessage` | {:.3} s | {:.0} ns |",
        typed.as_secs_f64(),
        per(typed)
    );
    println!(
        "| hand encoder | {:.3} s | {:.0} ns |",
        hand.as_secs_f64(),
        per(hand)
    );
}
