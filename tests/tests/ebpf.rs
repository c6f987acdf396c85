//! The eBPF source: selection, loss-free bursts, ring-full recovery, fallback, pins.
//! Each test runs its own daemon in its own namespace (declare `ns` before `d`).

use route_mirror_tests::{batch, ebpf_object_present, poll, Daemon, Netns};
use serde_json::Value;
use std::time::Duration;

fn num(v: &Value, key: &str) -> u64 {
    v.get(key)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("`{key}` missing or not a number in {v}"))
}

/// Waits until IPv6 DAD is over (link-local addresses of fresh veths get their local
/// routes ~1-2 s after link up): a route appearing between `diff`'s dump and its
/// barrier would show as "mirror only".
fn settled(ns: Netns) -> Netns {
    poll(Duration::from_secs(10), || {
        ns.ip(&["-6", "addr", "show", "tentative"])
            .trim()
            .is_empty()
            .then_some(())
    });
    ns
}

/// The eBPF object must exist in CI; elsewhere these tests skip without it.
fn need_ebpf() -> bool {
    if ebpf_object_present() {
        return true;
    }
    assert!(
        std::env::var("CI").map_or(true, |v| v.is_empty() || v == "false"),
        "CI run without the eBPF object (cargo xtask build builds it)"
    );
    eprintln!("skipping: eBPF object not built (cargo xtask build)");
    false
}

/// Hidden knob that makes loading fail as a verifier refusal would.
const KNOB: &[(&str, &str)] = &[("ROUTE_MIRROR_TEST_EBPF_FAIL", "1")];

#[test]
fn stats_report_ebpf_source_and_pins() {
    if !need_ebpf() {
        return;
    }
    let ns = settled(Netns::new());
    let d = Daemon::start_synced(&ns, &["--source", "ebpf", "--ring-size", "1048576"]);
    ns.ip(&["route", "add", "203.0.113.0/24", "via", "198.18.1.2"]);
    d.diff_empty();
    let s = d.stats();
    assert_eq!(s["source"], "ebpf", "{s}");
    let ring = &s["ring"];
    assert_eq!(num(ring, "size_bytes"), 1 << 20, "{s}");
    assert!(num(&ring["kernel"], "newroute") >= 1, "{s}");
    assert!(num(ring, "records_read") >= 1, "{s}");
    assert!(num(&ring["lag"], "count") >= 1, "{s}");
    let pinned = ring["pinned"].as_str().expect("pinned path").to_string();
    for f in ["prog", "ring", "counters"] {
        let p = std::path::Path::new(&pinned).join(f);
        assert!(p.exists(), "{} missing", p.display());
    }
    // Text stats print the ring section too.
    let out = d.cli(&["stats"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("source:            ebpf"), "{text}");
    assert!(text.contains("ring lag:"), "{text}");
    // Clean exit removes the pins.
    d.stop();
    assert!(
        !std::path::Path::new(&pinned).exists(),
        "{pinned} left after exit"
    );
}

/// 100k routes against a small netlink receive buffer while the consumer is stalled
/// (SIGSTOP: deterministic, a fast consumer otherwise races the producer): the netlink
/// source overruns and resyncs; the eBPF source (same buffer) loses nothing.
#[test]
fn burst_ebpf_no_loss_where_netlink_overruns() {
    if !need_ebpf() {
        return;
    }
    // A stalled consumer with a tiny socket buffer while 100k routes arrive; the
    // stats once the mirror equals the kernel again.
    let burst = |source: &str| {
        let ns = settled(Netns::new());
        let d = Daemon::start_synced(
            &ns,
            &[
                "--rcvbuf",
                "8192",
                "--scan-interval",
                "3600",
                "--source",
                source,
            ],
        );
        d.pause();
        ns.load_batch(batch("v4-100k"));
        d.resume();
        d.diff_empty();
        d.stats()
    };
    let s = burst("netlink");
    assert!(
        num(&s, "enobufs") >= 1,
        "netlink source did not overrun: {s}"
    );
    assert!(num(&s, "resyncs") >= 1, "{s}");
    let s = burst("ebpf");
    assert_eq!(s["source"], "ebpf", "{s}");
    assert_eq!(num(&s, "enobufs"), 0, "{s}");
    assert_eq!(num(&s, "resyncs"), 0, "{s}");
    assert_eq!(num(&s["ring"]["kernel"], "drops"), 0, "{s}");
    assert!(num(&s, "routes_total") >= 100_000, "{s}");
}

/// A 4 KiB ring cannot hold a burst the consumer is not reading: drops are counted, a
/// resync repairs the mirror.
#[test]
fn tiny_ring_drops_then_resync() {
    if !need_ebpf() {
        return;
    }
    let ns = settled(Netns::new());
    let d = Daemon::start_synced(&ns, &["--source", "ebpf", "--ring-size", "4096"]);
    // Stalled consumer (SIGSTOP): a running one can keep up even with 4 KiB.
    d.pause();
    ns.load_batch(batch("v4-10k"));
    d.resume();
    d.diff_empty();
    let s = poll(Duration::from_secs(30), || {
        let s = d.stats();
        (num(&s, "resyncs") >= 1 && s["scan_in_progress"].is_null()).then_some(s)
    })
    .unwrap_or_else(|| panic!("no resync after ring drops: {}", d.stats()));
    assert!(num(&s["ring"]["kernel"], "drops") >= 1, "{s}");
    assert!(num(&s["ring"], "loss_resyncs") >= 1, "{s}");
    d.diff_empty();
}

/// `auto` falls back to netlink when the program cannot be loaded, saying why.
#[test]
fn auto_falls_back_to_netlink() {
    let ns = settled(Netns::new());
    let d = Daemon::start_env(&ns, &["--source", "auto"], KNOB);
    d.wait_synced(route_mirror_tests::SYNC_TIMEOUT);
    let s = d.stats();
    assert_eq!(s["source"], "netlink", "{s}");
    assert!(s["ring"].is_null(), "{s}");
    let why = s["source_fallback"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!why.is_empty(), "{s}");
    let log = d.log_tail(50);
    assert!(
        log.contains("eBPF source unavailable, using the netlink source"),
        "{log}"
    );
    ns.ip(&["route", "add", "203.0.113.0/24", "via", "198.18.1.2"]);
    d.diff_empty();
}

/// `--source ebpf` refuses to start (exit non-zero) rather than silently falling back.
#[test]
fn explicit_ebpf_fails_when_unloadable() {
    let ns = settled(Netns::new());
    let d = Daemon::start_env(&ns, &["--source", "ebpf"], KNOB);
    let st = poll(Duration::from_secs(10), || d.exited());
    assert!(
        st.is_some_and(|s| !s.success()),
        "daemon kept running: {}",
        d.log_tail(20)
    );
    assert!(d.log_tail(20).contains("cannot use the eBPF source"));
}

/// An embedded object whose record ABI is not the daemon's (what a stale object built
/// before a record change looks like: the knob makes the daemon expect another ABI) is
/// refused before anything is loaded: `auto` falls back to netlink saying why, counts
/// it, and stays exact; `--source ebpf` refuses to start.
#[test]
fn stale_object_abi_is_refused() {
    if !need_ebpf() {
        return;
    }
    const STALE: &[(&str, &str)] = &[("ROUTE_MIRROR_TEST_EBPF_ABI", "1")];
    let ns = settled(Netns::new());
    let d = Daemon::start_env(&ns, &["--source", "auto"], STALE);
    d.wait_synced(route_mirror_tests::SYNC_TIMEOUT);
    let s = d.stats();
    assert_eq!(s["source"], "netlink", "{s}");
    assert!(s["ring"].is_null(), "{s}");
    let why = s["source_fallback"].as_str().unwrap_or_default();
    assert!(why.contains("record ABI") && why.contains("stale"), "{s}");
    assert_eq!(num(&s, "ebpf_abi_mismatches"), 1, "{s}");
    let log = d.log_tail(50);
    assert!(
        log.contains("eBPF source unavailable") && log.contains("record ABI"),
        "{log}"
    );
    ns.ip(&["route", "add", "203.0.113.0/24", "via", "198.18.1.2"]);
    d.diff_empty();
    drop(d);

    let d = Daemon::start_env(&ns, &["--source", "ebpf"], STALE);
    let st = poll(Duration::from_secs(10), || d.exited());
    assert!(st.is_some_and(|s| !s.success()), "daemon kept running");
    assert!(d.log_tail(20).contains("record ABI"), "{}", d.log_tail(20));

    // Without the knob the embedded object's ABI is the daemon's: nothing counted.
    let d = Daemon::start_synced(&ns, &["--source", "ebpf"]);
    let s = d.stats();
    assert_eq!(s["source"], "ebpf", "{s}");
    assert_eq!(num(&s, "ebpf_abi_mismatches"), 0, "{s}");
}

/// One FIB entry as the test compares it: (type, metric, hops as (ifindex, gateway, weight)).
type Best = (u8, u64, Vec<(u64, String, u64)>);

fn rtn_number(name: &str) -> u8 {
    match name {
        "unicast" => 1,
        "local" => 2,
        "broadcast" => 3,
        "anycast" => 4,
        "multicast" => 5,
        "blackhole" => 6,
        "unreachable" => 7,
        "prohibit" => 8,
        "throw" => 9,
        "nat" => 10,
        other => other.parse().unwrap_or(255),
    }
}

/// `bpftool -j map dump pinned PATH` as (key bytes, value bytes) pairs.
fn bpftool_dump(path: &std::path::Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(path)
        .output()
        .expect("running bpftool (apt-get install bpftool)");
    assert!(
        out.status.success(),
        "bpftool map dump {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    let bytes = |a: &Value| -> Vec<u8> {
        a.as_array()
            .expect("byte array")
            .iter()
            .map(|b| {
                let s = b.as_str().expect("hex byte");
                u8::from_str_radix(s.trim_start_matches("0x"), 16).expect("hex byte")
            })
            .collect()
    };
    v.as_array()
        .expect("entries")
        .iter()
        .map(|e| (bytes(&e["key"]), bytes(&e["value"])))
        .collect()
}

fn le32(b: &[u8], o: usize) -> u64 {
    u64::from(u32::from_le_bytes(b[o..o + 4].try_into().unwrap()))
}

fn gw_string(family: u8, b: &[u8]) -> String {
    match family {
        4 => std::net::Ipv4Addr::from(<[u8; 4]>::try_from(&b[..4]).unwrap()).to_string(),
        6 => std::net::Ipv6Addr::from(<[u8; 16]>::try_from(&b[..16]).unwrap()).to_string(),
        _ => String::new(),
    }
}

/// The pinned maps decoded (read through the kernel maps, not the daemon):
/// (table, prefix) → best route.
fn read_bpf_fib(dir: &std::path::Path) -> std::collections::BTreeMap<(u64, String), Best> {
    let mut groups = std::collections::HashMap::new();
    for (k, v) in bpftool_dump(&dir.join("nhgroups")) {
        assert_eq!(v.len(), 8 + 16 * 24, "nhgroups value size");
        let count = le32(&v, 0) as usize;
        let hops: Vec<(u64, String, u64)> = (0..count)
            .map(|i| {
                let h = &v[8 + 24 * i..8 + 24 * (i + 1)];
                let weight = u64::from(u16::from_le_bytes([h[4], h[5]]));
                (le32(h, 0), gw_string(h[6], &h[8..24]), weight)
            })
            .collect();
        groups.insert(le32(&k, 0), hops);
    }
    let mut out = std::collections::BTreeMap::new();
    for (file, alen) in [("fib4", 4usize), ("fib6", 16usize)] {
        for (k, v) in bpftool_dump(&dir.join(file)) {
            assert_eq!(k.len(), 8 + alen, "{file} key size");
            assert_eq!(v.len(), 36, "{file} value size");
            let plen = le32(&k, 0) - 32;
            let table = u64::from(u32::from_be_bytes(k[4..8].try_into().unwrap()));
            let addr = &k[8..];
            let net: ipnet::IpNet = if alen == 4 {
                ipnet::Ipv4Net::new(<[u8; 4]>::try_from(addr).unwrap().into(), plen as u8)
                    .unwrap()
                    .into()
            } else {
                ipnet::Ipv6Net::new(<[u8; 16]>::try_from(addr).unwrap().into(), plen as u8)
                    .unwrap()
                    .into()
            };
            let (kind, gw_family, flags, nhops) = (v[0], v[1], v[2], v[3]);
            assert_eq!(le32(&v, 12), table, "value.table of {net}");
            let hops = if flags & 1 != 0 {
                let g = groups
                    .get(&le32(&v, 16))
                    .unwrap_or_else(|| panic!("{net}: nhgroup {} missing", le32(&v, 16)))
                    .clone();
                assert_eq!(g.len(), usize::from(nhops), "{net}: group size");
                g
            } else if nhops == 0 {
                Vec::new()
            } else {
                vec![(le32(&v, 4), gw_string(gw_family, &v[20..36]), 1)]
            };
            out.insert((table, net.to_string()), (kind, le32(&v, 8), hops));
        }
    }
    out
}

/// The mirror's best route per prefix of `tables`: the first TOS-0 route in `show`'s
/// order (the kernel's: lowest metric first, then the key's list) with a hop that is not
/// dead, and its live hops (the kernel's lookup skips dead ones).
fn mirror_best(d: &Daemon, tables: &[&str]) -> std::collections::BTreeMap<(u64, String), Best> {
    let mut out = std::collections::BTreeMap::new();
    for t in tables {
        let routes = d.cli_json(&["show", "--table", t, "--json"]);
        for r in routes.as_array().expect("routes") {
            if r["tos"].as_u64().unwrap_or(0) != 0 {
                continue;
            }
            let key = (
                r["table"].as_u64().unwrap(),
                r["prefix"].as_str().unwrap().to_string(),
            );
            let metric = r["metric"].as_u64().unwrap_or(0);
            let all = route_mirror_tests::nexthops(r);
            let live: Vec<&serde_json::Value> = all
                .iter()
                .filter(|h| {
                    !h["flags"]
                        .as_array()
                        .is_some_and(|f| f.contains(&"dead".into()))
                })
                .collect();
            if !all.is_empty() && live.is_empty() {
                continue;
            }
            let hops: Vec<(u64, String, u64)> = live
                .iter()
                .map(|h| {
                    let w = if live.len() > 1 {
                        h["weight"].as_u64().unwrap_or(1)
                    } else {
                        1
                    };
                    (
                        h["ifindex"].as_u64().unwrap_or(0),
                        h["gateway"].as_str().unwrap_or("").to_string(),
                        w,
                    )
                })
                .collect();
            let best = (rtn_number(r["type"].as_str().unwrap_or("")), metric, hops);
            out.entry(key).or_insert(best);
        }
    }
    out
}

fn assert_fib_equal(d: &Daemon, dir: &std::path::Path, tables: &[&str], when: &str) {
    d.diff_empty(); // also a barrier: the core syncs the maps before answering it
    let want = mirror_best(d, tables);
    let got = read_bpf_fib(dir);
    if got != want {
        let missing: Vec<_> = want
            .iter()
            .filter(|(k, v)| got.get(*k) != Some(v))
            .take(5)
            .collect();
        let extra: Vec<_> = got
            .iter()
            .filter(|(k, v)| want.get(*k) != Some(v))
            .take(5)
            .collect();
        panic!(
            "{when}: BPF FIB ({} entries) != mirror best routes ({}); mirror-side differences: {missing:?}; map-side: {extra:?}",
            got.len(),
            want.len()
        );
    }
    assert!(!want.is_empty(), "{when}: nothing to compare");
}

/// The pinned LPM maps hold exactly the mirror's best routes of the chosen tables after
/// a bulk load, IPv6 and multipath routes, and churn (replace, delete, metric
/// shadowing, a link down with inferred IPv4 removals), read back through the maps.
#[test]
fn bpf_fib_maps_equal_mirror_best_routes() {
    if !need_ebpf() {
        return;
    }
    let tables = ["main", "100"];
    for source in ["ebpf", "netlink"] {
        let ns = settled(Netns::new());
        // Routes that exist before the daemon: they arrive through the initial fill.
        ns.ip(&[
            "route",
            "add",
            "10.200.0.0/16",
            "via",
            "198.18.1.2",
            "table",
            "100",
        ]);
        ns.ip(&[
            "-6",
            "route",
            "add",
            "2001:db8:100::/48",
            "via",
            "2001:2:0:2::2",
            "table",
            "100",
        ]);
        let d = Daemon::start_synced(
            &ns,
            &[
                "--source",
                source,
                "--bpf-fib",
                "main,100",
                "--scan-interval",
                "3600",
            ],
        );
        let s = d.stats();
        let dir = std::path::PathBuf::from(
            s["bpf_fib"]["pinned"]
                .as_str()
                .unwrap_or_else(|| panic!("no bpf_fib.pinned: {s}")),
        );
        assert_fib_equal(&d, &dir, &tables, &format!("{source}: initial fill"));

        ns.load_batch(batch("v4-10k"));
        for cmd in [
            // IPv6, single and multipath, main and table 100.
            "-6 route add 2001:db8:1::/48 via 2001:2:0:1::2",
            "-6 route add 2001:db8:2::/48 nexthop via 2001:2:0:1::2 nexthop via 2001:2:0:2::2",
            "-6 route add 2001:db8:3::/48 via 2001:2:0:2::2 table 100 metric 50",
            "-6 route add 2001:db8:3::/48 via 2001:2:0:1::2 table 100 metric 10",
            "-6 route add 2001:db8:4::/64 dev veth2",
            // IPv4 multipath (weights), shadowed metrics, TOS route (not the best entry).
            "route add 10.50.0.0/16 nexthop via 198.18.1.2 weight 3 nexthop via 198.18.2.2",
            "route add 10.51.0.0/16 via 198.18.2.2 metric 20",
            "route add 10.51.0.0/16 via 198.18.1.2 metric 10",
            "route add 10.52.0.0/16 via 198.18.1.2 tos 0x10",
            "route add 10.52.0.0/16 via 198.18.2.2 metric 5",
            "route add unreachable 10.53.0.0/16 table 100",
            "route add 10.54.0.0/16 via 198.18.2.2 table 100",
        ] {
            let args: Vec<&str> = cmd.split(' ').collect();
            ns.ip(&args);
        }
        assert_fib_equal(&d, &dir, &tables, &format!("{source}: after load"));

        for cmd in [
            "route replace 10.50.0.0/16 via 198.18.2.2",
            "route replace 10.51.0.0/16 via 198.18.2.2 metric 10",
            "route del 10.51.0.0/16 metric 20",
            "route replace 10.54.0.0/16 table 100 nexthop via 198.18.1.2 nexthop via 198.18.2.2",
            "-6 route del 2001:db8:3::/48 table 100 metric 10",
            "-6 route del 2001:db8:2::/48 via 2001:2:0:2::2",
            "route del blackhole 158.62.219.0/24",
        ] {
            let args: Vec<&str> = cmd.split(' ').collect();
            ns.ip(&args);
        }
        assert_fib_equal(&d, &dir, &tables, &format!("{source}: after churn"));

        // veth2 down: the kernel drops every IPv4 route through it silently (main and
        // table 100); the mirror infers the removals, a dump confirms them.
        ns.ip(&["link", "set", "veth2", "down"]);
        let s = poll(Duration::from_secs(10), || {
            let s = d.stats();
            (num(&s["apply"], "inferred_confirmed") > 0
                && num(&s["apply"], "inferred_pending") == 0
                && s["scan_in_progress"].is_null())
            .then_some(s)
        })
        .unwrap_or_else(|| panic!("inferred removals not confirmed: {}", d.stats()));
        assert!(num(&s["apply"], "inferred_removals") > 0, "{s}");
        assert_eq!(
            num(&s["apply"], "inferred_refuted"),
            0,
            "the dump listed routes the mirror inferred gone: {s}"
        );
        assert_fib_equal(&d, &dir, &tables, &format!("{source}: after link down"));
        ns.ip(&["link", "set", "veth2", "up"]);
        ns.ip(&[
            "route",
            "add",
            "10.55.0.0/16",
            "via",
            "198.18.2.2",
            "table",
            "100",
        ]);
        assert_fib_equal(&d, &dir, &tables, &format!("{source}: after link up"));

        let s = d.stats();
        let f = &s["bpf_fib"];
        assert_eq!(num(f, "errors"), 0, "{s}");
        assert!(num(f, "groups") >= 1, "{s}");
        assert!(num(f, "memlock_bytes") > 0, "{s}");
        let text = String::from_utf8_lossy(&d.cli(&["stats"]).stdout).to_string();
        assert!(
            text.contains("bpf fib:") && text.contains("confirmed by dump"),
            "{text}"
        );
        d.stop();
        for f in ["fib4", "fib6", "nhgroups"] {
            assert!(!dir.join(f).exists(), "{f} pin left after exit");
        }
    }
}

/// `--bpf-fib` without a loadable eBPF object refuses to start, saying why.
#[test]
fn bpf_fib_fails_clearly_without_ebpf() {
    let ns = settled(Netns::new());
    let d = Daemon::start_env(&ns, &["--source", "netlink", "--bpf-fib", "main"], KNOB);
    let st = poll(Duration::from_secs(10), || d.exited());
    assert!(
        st.is_some_and(|s| !s.success()),
        "daemon kept running: {}",
        d.log_tail(20)
    );
    assert!(d.log_tail(20).contains("--bpf-fib"), "{}", d.log_tail(20));
}
