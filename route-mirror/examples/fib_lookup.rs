//! `route_mirror::fib` as a library: copy this host's routing tables once, then answer
//! "which route does the kernel use for X?" from the exact trie and from a read-optimised
//! snapshot, the way the daemon's control socket does.
//!
//! ```text
//! cargo run --release -p route-mirror --example fib_lookup -- 192.0.2.1 2001:db8::1
//! echo 10.1.2.3 | cargo run --release -p route-mirror --example fib_lookup
//! ```
//!
//! Route dumps need no privileges. This is a one-shot copy: a program that must stay
//! current links the daemon's core (`route_mirror::daemon`) or asks a running daemon
//! (`route-mirror lookup --batch`), which keeps the copy exact under churn.

use std::io::BufRead;
use std::net::IpAddr;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use arc_swap::ArcSwap;
use route_mirror::fib::fast::{FastFib, Lookup};
use route_mirror::fib::{Entry, DEFAULT_RULE_TABLES};
use route_mirror::intern::Interner;
use route_mirror::mirror::Mirror;
use route_mirror::model::{rtn, Family};
use route_mirror::netlink::dump_blocking;
use route_mirror::netlink::msg::DecodeCounters;
use route_mirror::netlink::msg::DumpKind;
use route_mirror::netlink::socket::NlSocket;

fn main() -> Result<()> {
    // 1. Fill a Mirror (FIB + links + nexthop objects) from one dump of each kind.
    //    Links first, so routes can be shown with interface names.
    let mut sock = NlSocket::open().context("opening a NETLINK_ROUTE socket")?;
    let (mut counters, mut interner) = (DecodeCounters::default(), Interner::default());
    let mut changes = Vec::new();
    let t0 = Instant::now();
    let kinds = [DumpKind::Links, DumpKind::Nexthops]
        .into_iter()
        .chain(Family::ALL.map(|f| DumpKind::Routes(f, None)));
    for kind in kinds {
        if let Err(e) = dump_blocking(&mut sock, kind, &mut counters, &mut interner, &mut changes) {
            // Kernels without nexthop objects refuse that dump; routes still work.
            if !matches!(kind, DumpKind::Nexthops) {
                bail!("dumping {kind:?}: {e}");
            }
        }
    }
    let mut mirror = Mirror::new();
    for change in changes {
        mirror.apply(change);
    }
    eprintln!(
        "copied {} routes in {} tables ({} distinct attribute sets) in {:.1} ms",
        mirror.fib.len(),
        mirror.fib.tables().count(),
        interner.len(),
        t0.elapsed().as_secs_f64() * 1e3
    );

    // 2. Freeze it into a poptrie snapshot. Readers share it through an ArcSwap: the
    //    writer publishes a new one with `store`, a reader never waits and never sees a
    //    half-built table. `is_current` says whether the Fib changed since.
    let t1 = Instant::now();
    let snapshot: ArcSwap<FastFib> = ArcSwap::from_pointee(mirror.fib.extract().build());
    eprintln!(
        "snapshot built in {:.1} ms, {} KiB",
        t1.elapsed().as_secs_f64() * 1e3,
        snapshot.load().heap_bytes() / 1024
    );

    // 3. Look up each address with the kernel's default policy (tables local, main,
    //    default; a `throw` route moves on), from the snapshot and from the exact trie.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let input: Box<dyn Iterator<Item = String>> = if args.is_empty() {
        Box::new(std::io::stdin().lock().lines().map_while(Result::ok))
    } else {
        Box::new(args.into_iter())
    };
    for line in input {
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        let Ok(addr) = text.parse::<IpAddr>() else {
            eprintln!("{text}: not an IP address");
            continue;
        };
        let snap = snapshot.load();
        let exact = mirror.fib.lookup(addr, &DEFAULT_RULE_TABLES, 0);
        match snap.lookup(addr, &DEFAULT_RULE_TABLES, 0) {
            Lookup::Route(table, net, e) => {
                // Both paths must name the same prefix in the same table.
                assert_eq!(exact.map(|(t, n, _)| (t, n)), Some((table, net)));
                println!("{addr} -> {net} table {table} {}", describe(&mirror, e));
            }
            Lookup::None => {
                assert!(exact.is_none());
                println!("{addr} -> no route");
            }
            // Only TOS-specific lookups need the exact path; TOS 0 never does.
            Lookup::Exact => unreachable!("TOS 0 lookups are always served by a snapshot"),
        }
    }
    Ok(())
}

/// The route's type, next hops (with nexthop objects resolved) and metric.
fn describe(mirror: &Mirror, e: &Entry) -> String {
    let kind = rtn::name(e.attrs.kind).unwrap_or("?");
    let mut s = format!("{kind} metric {}", e.priority());
    for hop in mirror.effective_hops(&e.attrs) {
        if let Some(gw) = hop.gateway {
            s.push_str(&format!(" via {gw}"));
        }
        if hop.ifindex != 0 {
            match mirror.link_name(hop.ifindex) {
                Some(name) => s.push_str(&format!(" dev {name}")),
                None => s.push_str(&format!(" dev #{}", hop.ifindex)),
            }
        }
    }
    s
}
