//! Integration tests of the route-mirror daemon, written against the CLI
//! contract. Each test runs its own daemon in its own network namespace.
//!
//! Declaration order matters: `ns` is declared before `d`, so the daemon is
//! dropped (killed) before its namespace is deleted.

use std::time::Duration;

use route_mirror_tests::{
    batch, gateways, is_not_prefix, is_route_via, nexthops, str_field, u64_field, Daemon, Netns,
    CLI_TIMEOUT,
};
use serde_json::Value;

const STEP: Duration = Duration::from_secs(5);
const PFX: &str = "203.0.113.0/24";
const ADDR: &str = "203.0.113.7";
const GW1: &str = "198.18.1.2";
const GW2: &str = "198.18.2.2";

/// Numeric field of a JSON object, with a readable panic.
fn num(v: &Value, key: &str) -> u64 {
    v.get(key)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("`{key}` missing or not a number in {v}"))
}

fn assert_diff_reports_difference(d: &Daemon) {
    let out = d.cli_timeout(&["diff"], route_mirror_tests::DIFF_TIMEOUT);
    assert_eq!(
        out.status.code(),
        Some(1),
        "diff should report the missed route (exit 1); stdout: {} stderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// a.
#[test]
fn a_bulk_load_v4_10k_after_sync() {
    let ns = Netns::new();
    let d = Daemon::start_synced(&ns, &[]);
    ns.load_batch(batch("v4-10k"));
    d.diff_empty();
    let stats = d.stats();
    assert_eq!(stats["synced"], Value::Bool(true), "{stats}");
    let source = route_mirror_tests::suite_source();
    let expected = if source == "auto" { "ebpf" } else { &source };
    assert_eq!(str_field(&stats, "source"), Some(expected), "{stats}");
    let total = num(&stats, "routes_total");
    assert!(total >= 10_000, "routes_total {total} < 10000: {stats}");
}

// a'. initial sync of a table that exists before the daemon starts
#[test]
fn initial_sync_of_preloaded_table() {
    let ns = Netns::new();
    ns.load_batch(batch("v4-10k"));
    ns.ip(&["route", "add", "2001:db8:1::/48", "via", "2001:2:0:1::2"]);
    let d = Daemon::start_synced(&ns, &[]);
    d.diff_empty();
    assert!(num(&d.stats(), "routes_total") >= 10_001);
    let r = d
        .lookup("2001:db8:1::1", None)
        .expect("IPv6 route from the initial dump");
    assert_eq!(gateways(&r), vec!["2001:2:0:1::2"], "{r}");
}

// b.
#[test]
fn b_add_replace_delete() {
    let ns = Netns::new();
    let d = Daemon::start_synced(&ns, &[]);
    assert!(d.lookup(ADDR, None).is_none(), "route before adding it");

    ns.ip(&["route", "add", PFX, "via", GW1]);
    let r = d.wait_lookup(ADDR, None, STEP, "added via GW1", |r| {
        is_route_via(r, PFX, &[GW1])
    });
    let r = r.unwrap();
    assert_eq!(u64_field(&r, "table"), Some(254), "{r}");
    assert_eq!(str_field(&r, "type"), Some("unicast"), "{r}");
    assert_eq!(
        nexthops(&r)[0].get("dev").and_then(Value::as_str),
        Some("veth1"),
        "{r}"
    );

    ns.ip(&["route", "replace", PFX, "via", GW2]);
    d.wait_lookup(ADDR, None, STEP, "replaced via GW2", |r| {
        is_route_via(r, PFX, &[GW2])
    });

    ns.ip(&["route", "del", PFX]);
    d.wait_lookup(ADDR, None, STEP, "deleted", |r| is_not_prefix(r, PFX));
    d.diff_empty();
}

// c.
#[test]
fn c_multipath_weights() {
    let ns = Netns::new();
    let d = Daemon::start_synced(&ns, &[]);
    ns.ip(&[
        "route", "add", PFX, "nexthop", "via", GW1, "weight", "1", "nexthop", "via", GW2, "weight",
        "3",
    ]);
    let r = d
        .wait_lookup(ADDR, None, STEP, "multipath", |r| {
            is_route_via(r, PFX, &[GW1, GW2])
        })
        .unwrap();
    let nhs = nexthops(&r);
    assert_eq!(nhs.len(), 2, "{r}");
    let mut pairs: Vec<(String, u64)> = nhs
        .iter()
        .map(|nh| {
            (
                nh["gateway"].as_str().unwrap_or_default().to_string(),
                num(nh, "weight"),
            )
        })
        .collect();
    pairs.sort();
    assert_eq!(
        pairs,
        vec![(GW1.to_string(), 1), (GW2.to_string(), 3)],
        "weights as `ip route` shows them: {r}"
    );
    d.diff_empty();
}

// d.
#[test]
fn d_several_metrics_per_prefix() {
    let ns = Netns::new();
    let d = Daemon::start_synced(&ns, &[]);
    ns.ip(&[
        "route", "add", PFX, "via", GW1, "dev", "veth1", "metric", "10",
    ]);
    ns.ip(&[
        "route", "add", PFX, "via", GW2, "dev", "veth2", "metric", "20",
    ]);
    d.wait_lookup(ADDR, None, STEP, "metric 10 via GW1", |r| {
        is_route_via(r, PFX, &[GW1]) && r.and_then(|r| u64_field(r, "metric")) == Some(10)
    });
    let all = d.cli_json(&["show", PFX, "--table", "254"]);
    let n = all
        .as_array()
        .unwrap_or_else(|| panic!("show --json is not an array: {all}"))
        .iter()
        .filter(|r| str_field(r, "prefix") == Some(PFX))
        .count();
    assert_eq!(n, 2, "both metrics should be mirrored: {all}");

    ns.ip(&["route", "del", PFX, "metric", "10"]);
    d.wait_lookup(ADDR, None, STEP, "metric 20 via GW2", |r| {
        is_route_via(r, PFX, &[GW2]) && r.and_then(|r| u64_field(r, "metric")) == Some(20)
    });
    d.diff_empty();
}

// e.
#[test]
fn e_tables_100_and_4000() {
    let ns = Netns::new();
    let d = Daemon::start_synced(&ns, &[]);
    ns.ip(&["route", "add", PFX, "via", GW1, "table", "100"]);
    ns.ip(&[
        "route",
        "add",
        "198.51.100.0/24",
        "via",
        GW2,
        "table",
        "4000",
    ]);
    ns.ip(&["route", "add", "blackhole", "192.0.2.0/24", "table", "4000"]);
    ns.ip(&[
        "route",
        "add",
        "2001:db8:4::/48",
        "via",
        "2001:2:0:2::2",
        "table",
        "4000",
    ]);

    let r = d
        .wait_lookup(ADDR, Some("100"), STEP, "table 100 route", |r| {
            is_route_via(r, PFX, &[GW1])
        })
        .unwrap();
    assert_eq!(u64_field(&r, "table"), Some(100), "{r}");

    let r = d
        .wait_lookup(
            "198.51.100.9",
            Some("4000"),
            STEP,
            "table 4000 route",
            |r| is_route_via(r, "198.51.100.0/24", &[GW2]),
        )
        .unwrap();
    assert_eq!(u64_field(&r, "table"), Some(4000), "{r}");
    let r = d
        .lookup("2001:db8:4::1", Some("4000"))
        .expect("IPv6 route in table 4000");
    assert_eq!(u64_field(&r, "table"), Some(4000), "{r}");

    let show = d.cli_json(&["show", "--table", "4000"]);
    let arr = show
        .as_array()
        .unwrap_or_else(|| panic!("show --json is not an array: {show}"));
    let mut prefixes: Vec<&str> = arr.iter().filter_map(|r| str_field(r, "prefix")).collect();
    prefixes.sort();
    assert_eq!(
        prefixes,
        vec!["192.0.2.0/24", "198.51.100.0/24", "2001:db8:4::/48"],
        "{show}"
    );
    assert!(
        arr.iter().all(|r| u64_field(r, "table") == Some(4000)),
        "{show}"
    );

    // table 4000 routes must not leak into main
    let main = d.cli_json(&["show", "--table", "254"]);
    assert!(
        !main
            .as_array()
            .unwrap_or_else(|| panic!("show --json is not an array: {main}"))
            .iter()
            .any(|r| str_field(r, "prefix") == Some("198.51.100.0/24")),
        "{main}"
    );
    d.diff_empty();
}

// f.
#[test]
fn f_blackhole_unreachable_prohibit() {
    let ns = Netns::new();
    let d = Daemon::start_synced(&ns, &[]);
    let cases = [
        ("blackhole", "203.0.113.0/24", "203.0.113.7"),
        ("unreachable", "198.51.100.0/24", "198.51.100.7"),
        ("prohibit", "192.0.2.0/24", "192.0.2.7"),
        ("blackhole", "2001:db8:dead::/48", "2001:db8:dead::7"),
        ("unreachable", "2001:db8:beef::/48", "2001:db8:beef::7"),
    ];
    for (kind, pfx, _) in cases {
        ns.ip(&["route", "add", kind, pfx]);
    }
    for (kind, pfx, addr) in cases {
        let r = d
            .wait_lookup(addr, None, STEP, kind, |r| {
                r.is_some_and(|r| str_field(r, "prefix") == Some(pfx))
            })
            .unwrap();
        assert_eq!(str_field(&r, "type"), Some(kind), "{r}");
        assert!(gateways(&r).is_empty(), "{kind} route has a gateway: {r}");
    }
    d.diff_empty();
}

// g.
#[test]
fn g_ipv6_add_replace_delete() {
    let ns = Netns::new();
    let d = Daemon::start_synced(&ns, &[]);
    let pfx = "2001:db8:1::/48";
    let addr = "2001:db8:1::7";
    ns.ip(&["route", "add", pfx, "via", "2001:2:0:1::2"]);
    d.wait_lookup(addr, None, STEP, "v6 added", |r| {
        is_route_via(r, pfx, &["2001:2:0:1::2"])
    });
    ns.ip(&["route", "replace", pfx, "via", "2001:2:0:2::2"]);
    d.wait_lookup(addr, None, STEP, "v6 replaced", |r| {
        is_route_via(r, pfx, &["2001:2:0:2::2"])
    });
    ns.ip(&["route", "del", pfx]);
    d.wait_lookup(addr, None, STEP, "v6 deleted", |r| is_not_prefix(r, pfx));
    d.diff_empty();
}

/// IPv6 ECMP routes are sibling routes: `append` adds one, `del ... via` removes one,
/// and each message lists its own sibling first.
#[test]
fn g2_ipv6_sibling_append_and_delete() {
    let ns = Netns::new();
    let d = Daemon::start_synced(&ns, &[]);
    let pfx = "2001:db8:6::/48";
    let addr = "2001:db8:6::7";
    ns.ip(&["route", "add", pfx, "via", "2001:2:0:2::2"]);
    ns.ip(&["route", "append", pfx, "via", "2001:2:0:1::2"]);
    d.wait_lookup(addr, None, STEP, "two siblings", |r| {
        is_route_via(r, pfx, &["2001:2:0:1::2", "2001:2:0:2::2"])
    });
    d.diff_empty();
    ns.ip(&["route", "del", pfx, "via", "2001:2:0:2::2"]);
    d.wait_lookup(addr, None, STEP, "one sibling left", |r| {
        is_route_via(r, pfx, &["2001:2:0:1::2"])
    });
    d.diff_empty();
}

// h.
#[test]
fn h_nexthop_object_replace() {
    let ns = Netns::new();
    let d = Daemon::start_synced(&ns, &[]);
    ns.ip(&["nexthop", "add", "id", "10", "via", GW1, "dev", "veth1"]);
    ns.ip(&["route", "add", PFX, "nhid", "10"]);
    d.wait_lookup(ADDR, None, STEP, "nhid 10 via GW1", |r| {
        is_route_via(r, PFX, &[GW1])
    });
    // Replacing the nexthop object changes the route without any RTM_NEWROUTE.
    ns.ip(&["nexthop", "replace", "id", "10", "via", GW2, "dev", "veth2"]);
    let r = d
        .wait_lookup(ADDR, None, STEP, "nhid 10 now via GW2", |r| {
            is_route_via(r, PFX, &[GW2])
        })
        .unwrap();
    assert_eq!(
        nexthops(&r)[0].get("dev").and_then(Value::as_str),
        Some("veth2"),
        "{r}"
    );
    d.diff_empty();
}

// i.
#[test]
fn i_link_down_removes_routes() {
    let ns = Netns::new();
    let d = Daemon::start_synced(&ns, &[]);
    ns.ip(&["route", "add", PFX, "via", GW1, "dev", "veth1"]);
    ns.ip(&[
        "route", "add", PFX, "via", GW1, "dev", "veth1", "table", "100",
    ]);
    // less specific fallback via the other link
    ns.ip(&["route", "add", "203.0.0.0/16", "via", GW2, "dev", "veth2"]);
    d.wait_lookup(ADDR, None, STEP, "main route via veth1", |r| {
        is_route_via(r, PFX, &[GW1])
    });
    d.wait_lookup(ADDR, Some("100"), STEP, "table 100 route via veth1", |r| {
        is_route_via(r, PFX, &[GW1])
    });

    // The kernel flushes these IPv4 routes without sending RTM_DELROUTE.
    ns.ip(&["link", "set", "veth1", "down"]);
    assert!(
        ns.ip(&["route", "show", "table", "all", PFX])
            .trim()
            .is_empty(),
        "kernel still has the routes after link down"
    );
    let two = Duration::from_secs(2);
    d.wait_lookup(ADDR, None, two, "main falls back to /16", |r| {
        is_route_via(r, "203.0.0.0/16", &[GW2])
    });
    d.wait_lookup(ADDR, Some("100"), two, "table 100 route gone", |r| {
        is_not_prefix(r, PFX)
    });
    d.diff_empty();
}

// j.
#[test]
fn j_forced_overrun_resyncs() {
    let ns = Netns::new();
    // The ENOBUFS path exists only with the netlink source (the eBPF source's
    // equivalent, a full ring, is tested in ebpf.rs), so it runs in both passes.
    let d = Daemon::start_synced(&ns, &["--rcvbuf", "4096", "--source", "netlink"]);
    // A fast daemon keeps up even with a tiny buffer: stop it so the queue must overflow.
    d.pause();
    ns.load_batch(batch("v4-100k"));
    d.resume();
    d.diff_empty();
    let stats = d.stats();
    assert!(num(&stats, "enobufs") >= 1, "no ENOBUFS counted: {stats}");
    assert!(num(&stats, "resyncs") >= 1, "no resync counted: {stats}");
    assert!(num(&stats, "routes_total") >= 100_000, "{stats}");
    assert_eq!(stats["synced"], Value::Bool(true), "{stats}");
}

/// After an overrun the kernel keeps the socket congested, dropping notifications
/// without another ENOBUFS, until a `recv` finds the queue empty. Changes made while the
/// resync runs must still end up in the mirror.
#[test]
fn j2_churn_during_the_resync_is_not_lost() {
    let ns = Netns::new();
    let d = Daemon::start_synced(&ns, &["--rcvbuf", "4096", "--source", "netlink"]);
    d.pause();
    ns.load_batch(batch("v4-100k"));
    // Churn in a table of its own (adds, replaces, deletes), running across the resume
    // so it overlaps the resync that the overrun triggers.
    let mut files = Vec::new();
    for round in 0..6u32 {
        let mut cmds = String::new();
        for i in 0..4000u32 {
            let p = format!("100.{}.{}.0/24", 64 + (i >> 8), i & 255);
            match round % 3 {
                0 => cmds += &format!("route replace {p} via {GW1} table 7\n"),
                1 => cmds += &format!("route replace {p} via {GW2} table 7\n"),
                _ if i % 2 == 0 => cmds += &format!("route del {p} table 7\n"),
                _ => {}
            }
        }
        let f = d.temp_dir().join(format!("churn{round}.batch"));
        std::fs::write(&f, cmds).unwrap();
        files.push(f);
    }
    let name = ns.name().to_string();
    let churn = std::thread::spawn(move || {
        for f in files {
            let ok = std::process::Command::new("ip")
                .args(["-n", &name, "-force", "-batch"])
                .arg(&f)
                .status()
                .map(|s| s.success());
            assert!(matches!(ok, Ok(true) | Ok(false)), "ip -batch did not run");
        }
    });
    std::thread::sleep(Duration::from_millis(50));
    d.resume();
    churn.join().unwrap();
    d.diff_empty();
    let stats = d.stats();
    assert!(num(&stats, "enobufs") >= 1, "no overrun happened: {stats}");
}

// k.
#[test]
fn k_missed_change_repaired_by_scan() {
    let ns = Netns::new();
    // no periodic scan during the test
    let d = Daemon::start_synced(&ns, &["--scan-interval", "3600"]);
    let out = d.cli(&["debug", "drop-events", "1"]);
    assert!(
        out.status.success(),
        "debug drop-events failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    ns.ip(&["route", "add", PFX, "via", GW1]);
    // the event was dropped: the mirror must not know the route yet
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        is_not_prefix(d.lookup(ADDR, None).as_ref(), PFX),
        "route seen although its event was dropped"
    );
    assert_diff_reports_difference(&d);

    let scan = d.cli_json_timeout(&["scan", "--wait"], CLI_TIMEOUT);
    let v = &scan["verdicts"];
    assert_eq!(num(v, "created"), 1, "{scan}");
    assert_eq!(num(v, "deleted"), 0, "{scan}");
    assert!(num(v, "seen") >= 1, "{scan}");
    d.wait_lookup(ADDR, None, STEP, "repaired by scan", |r| {
        is_route_via(r, PFX, &[GW1])
    });
    d.diff_empty();
}

// Events queued while the daemon is stopped are applied after it resumes.
#[test]
fn paused_daemon_catches_up() {
    let ns = Netns::new();
    let d = Daemon::start_synced(&ns, &[]);
    d.pause();
    ns.ip(&["route", "add", PFX, "via", GW1]);
    ns.ip(&["route", "add", "2001:db8:1::/48", "via", "2001:2:0:1::2"]);
    d.resume();
    d.wait_lookup(ADDR, None, STEP, "added while paused", |r| {
        is_route_via(r, PFX, &[GW1])
    });
    d.diff_empty();
}

// A client without a daemon fails with exit code 2 and a message.
#[test]
fn client_without_daemon_exits_2() {
    let ns = Netns::new();
    let d = Daemon::start_synced(&ns, &[]);
    d.kill9();
    for args in [
        &["stats", "--json"][..],
        &["diff"][..],
        &["lookup", ADDR][..],
    ] {
        let out = d.cli(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(!out.stderr.is_empty(), "{args:?}: no message on stderr");
    }
}

// Regression (found by the soak): an IPv6 replace of a blackhole by a nexthop-object
// route left the blackhole in the mirror (the next hop is part of the IPv6 key).
#[test]
fn v6_replace_blackhole_by_nhid_route() {
    let ns = Netns::new();
    let d = Daemon::start_synced(&ns, &[]);
    ns.ip(&[
        "nexthop",
        "add",
        "id",
        "9",
        "via",
        "2001:2:0:1::2",
        "dev",
        "veth1",
    ]);
    ns.ip(&[
        "route",
        "add",
        "blackhole",
        "2001:db8:153::/48",
        "table",
        "4000",
    ]);
    ns.ip(&[
        "route",
        "replace",
        "2001:db8:153::/48",
        "table",
        "4000",
        "nhid",
        "9",
    ]);
    d.diff_empty();
    ns.ip(&[
        "route",
        "replace",
        "blackhole",
        "2001:db8:153::/48",
        "table",
        "4000",
    ]);
    d.diff_empty();
}
