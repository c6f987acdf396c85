//! Where the initial sync's time goes: netlink decode vs applying to the mirror.
//!
//! Synthesises a million RTM_NEWROUTE messages shaped like the shared route sets
//! (unicast via one of two gateways, blackholes, 10% two-hop multipath, tables main and
//! 100, a few metrics) and times each stage on one core. Run:
//! `cargo bench -p route-mirror --bench decode`.

use std::hint::black_box;
use std::time::Instant;

use route_mirror::mirror::Mirror;
use route_mirror::model::Family;
use route_mirror::netlink::decode::decode;
use route_mirror::netlink::msg::DecodeCounters;
use route_mirror::netlink::msg::{RawMsg, RTM_NEWROUTE};
use route_mirror::reconcile::{ActiveScan, ScanReason, ScanScope};

fn attr(b: &mut Vec<u8>, ty: u16, val: &[u8]) {
    b.extend_from_slice(&((4 + val.len()) as u16).to_ne_bytes());
    b.extend_from_slice(&ty.to_ne_bytes());
    b.extend_from_slice(val);
    while !b.len().is_multiple_of(4) {
        b.push(0);
    }
}

/// One route message payload (rtmsg + attributes) as the kernel dumps it.
fn route(i: u32) -> Vec<u8> {
    let dst = (0x0100_0000u32 + i * 256).to_be_bytes();
    let table: u32 = if i.is_multiple_of(5) { 100 } else { 254 };
    let kind = if i % 4 == 3 { 6u8 } else { 1 };
    let mut b = vec![2, 24, 0, 0, table as u8, 4, 0, kind];
    b.extend_from_slice(&0u32.to_ne_bytes());
    attr(&mut b, 15, &table.to_ne_bytes()); // RTA_TABLE
    attr(&mut b, 1, &dst); // RTA_DST
    attr(&mut b, 6, &(10 * (i % 3)).to_ne_bytes()); // RTA_PRIORITY
    if kind == 1 {
        if i % 10 == 1 {
            let mut mp = Vec::new();
            for (gw, oif) in [([198u8, 18, 1, 2], 3u32), ([198, 18, 2, 2], 5)] {
                let mut nh = vec![0u8; 8];
                attr(&mut nh, 5, &gw); // RTA_GATEWAY inside rtnexthop
                let len = nh.len() as u16;
                nh[0..2].copy_from_slice(&len.to_ne_bytes());
                nh[4..8].copy_from_slice(&oif.to_ne_bytes());
                mp.extend_from_slice(&nh);
            }
            attr(&mut b, 9, &mp); // RTA_MULTIPATH
        } else {
            let (gw, oif) = if i.is_multiple_of(2) {
                ([198u8, 18, 1, 2], 3u32)
            } else {
                ([198, 18, 2, 2], 5)
            };
            attr(&mut b, 5, &gw); // RTA_GATEWAY
            attr(&mut b, 4, &oif.to_ne_bytes()); // RTA_OIF
        }
    }
    b
}

fn raw(p: &[u8]) -> RawMsg<'_> {
    RawMsg {
        ty: RTM_NEWROUTE,
        flags: 2,
        seq: 1,
        port: 1,
        payload: p,
    }
}

fn main() {
    const N: u32 = 1_000_000;
    let msgs: Vec<Vec<u8>> = (0..N).map(route).collect();

    let t = Instant::now();
    for m in &msgs {
        let parsed = <netlink_packet_route::route::RouteMessage as netlink_packet_core::Parseable<[u8]>>::parse(m);
        black_box(parsed.ok());
    }
    let crate_parse = t.elapsed();

    let mut c = DecodeCounters::default();
    let t = Instant::now();
    let mut changes = Vec::with_capacity(N as usize);
    for m in &msgs {
        changes.push(decode(&raw(m), &mut c).unwrap().unwrap());
    }
    let full_decode = t.elapsed();

    let mut mirror = Mirror::new();
    let gen = mirror.begin_scan();
    let mut scan = ActiveScan::new(ScanReason::Initial, ScanScope::routes(Family::V4), gen);
    let t = Instant::now();
    for ch in changes {
        mirror.mark(ch, &mut scan);
    }
    let mark = t.elapsed();

    let per = |d: std::time::Duration| d.as_secs_f64() * 1e9 / N as f64;
    println!("| stage (1M IPv4 route messages, one core) | total | per route |");
    println!("|---|---:|---:|");
    println!(
        "| netlink-packet-route `RouteMessage::parse` | {:.3} s | {:.0} ns |",
        crate_parse.as_secs_f64(),
        per(crate_parse)
    );
    println!(
        "| `decode()` → `Change` (hand decoder + model) | {:.3} s | {:.0} ns |",
        full_decode.as_secs_f64(),
        per(full_decode)
    );
    println!(
        "| `Mirror::mark` (intern + FIB upsert) | {:.3} s | {:.0} ns |",
        mark.as_secs_f64(),
        per(mark)
    );
    println!(
        "\nroutes mirrored: {}, attribute sets: {}",
        mirror.fib.len(),
        mirror.attr_sets()
    );
}
