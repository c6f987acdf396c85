//! The NATS JetStream export against Debian's `nats-server -js` on loopback, read back
//! with nats-py (tests/clients/nats_client.py) and with `route-mirror fleet`.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use route_mirror_tests::{
    batch, daemon_bin, free_port, poll, stream_messages, test_python, workspace_root, Daemon,
    NatsServer, Netns, TempDir,
};
use serde_json::Value;

fn fleet(url: &str, args: &[&str]) -> std::process::Output {
    Command::new(daemon_bin())
        .args(["fleet", "--nats-url", url])
        .args(args)
        .output()
        .expect("route-mirror fleet")
}

/// (table, prefix, metric, type, gateways) of a route object.
fn key(r: &Value) -> String {
    let gws: Vec<String> = r["nexthops"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| {
            format!(
                "{}@{}",
                h["gateway"].as_str().unwrap_or("-"),
                h["dev"].as_str().unwrap_or("-")
            )
        })
        .collect();
    format!(
        "{} {} {} {} {}",
        r["table"],
        r["prefix"],
        r["metric"],
        r["type"],
        gws.join(",")
    )
}

/// The routes `route-mirror fleet dump` holds for `router`, as keys.
fn fleet_routes(url: &str, router: &str) -> (String, BTreeSet<String>) {
    let out = fleet(url, &["dump"]);
    if !out.status.success() {
        // No stream yet (the daemon creates it once connected).
        return ("missing".into(), BTreeSet::new());
    }
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let r = &v[router];
    let routes = r["routes"]
        .as_array()
        .map(|a| a.iter().map(key).collect())
        .unwrap_or_default();
    (r["state"].as_str().unwrap_or("missing").to_string(), routes)
}

/// Waits until the consumer's copy of `router` is current and equals the mirror, both
/// read afresh each round: the kernel may still change meanwhile (a link-local address
/// finishing DAD adds its local route seconds after the link came up), and an
/// expectation read once would then be the stale copy, not the consumer.
fn consumer_matches_mirror(url: &str, router: &str, d: &Daemon, what: &str) {
    let mut last = None;
    let matched = poll(Duration::from_secs(30), || {
        let (s, r) = fleet_routes(url, router);
        let want = mirror_routes(d);
        let ok = s == "current" && r == want;
        last = Some((s, r, want));
        ok.then_some(())
    });
    if matched.is_none() {
        let (s, r, want) = last.unwrap_or_default();
        panic!(
            "consumer != mirror {what}: state {s}, {} vs {} routes, e.g. {:?} / {:?}",
            r.len(),
            want.len(),
            r.difference(&want).take(3).collect::<Vec<_>>(),
            want.difference(&r).take(3).collect::<Vec<_>>()
        );
    }
}

fn mirror_routes(d: &Daemon) -> BTreeSet<String> {
    d.cli_json(&["show", "--table", "all", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .map(key)
        .collect()
}

/// Subjects, sequence numbers and snapshots as nats-py reads them; the fleet consumer
/// rebuilds the mirror exactly and answers lookups like `route-mirror lookup`; an outage
/// of the server loses nothing: the daemon keeps mirroring and resends a snapshot.
#[test]
fn jetstream_carries_the_mirror() {
    let Some(python) = test_python() else { return };
    let dir = TempDir::new("rm-nats").unwrap();
    let port = free_port();
    let mut server = NatsServer::start(dir.path(), port);
    let ns = Netns::new();
    ns.add_two_hop_route("10.0.0.0/8", [1, 3], &[]);
    let (d, router) = server.daemon(&ns, &["--nats-snapshot-interval", "0"]);
    // The changes below must come after the first snapshot to be changes.
    poll(Duration::from_secs(10), || {
        (fleet_routes(&server.url, &router).0 == "current").then_some(())
    })
    .expect("first snapshot");
    ns.ip(&[
        "route",
        "add",
        "198.51.100.0/24",
        "via",
        "198.18.1.2",
        "metric",
        "5",
    ]);
    ns.ip(&[
        "-6",
        "route",
        "add",
        "2001:db8:7::/48",
        "via",
        "2001:2:0:1::2",
    ]);
    ns.ip(&[
        "route",
        "del",
        "198.51.100.0/24",
        "via",
        "198.18.1.2",
        "metric",
        "5",
    ]);
    d.diff_empty();

    // nats-py: the snapshot on the control subject, then the changes on their
    // table/family subjects, seq 1, 2, 3... without gaps.
    let base = format!("route-mirror.r1.{}", ns.name());
    let msgs = poll(Duration::from_secs(10), || {
        let m = stream_messages(&python, &server.url);
        let deletes = m.iter().filter(|m| m["msg"]["op"] == "delete").count();
        (deletes >= 1).then_some(m)
    })
    .expect("the delete reached the stream");
    let seqs: Vec<u64> = msgs
        .iter()
        .map(|m| m["msg"]["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "per-mirror seq without gaps"
    );
    assert_eq!(msgs[0]["subject"], format!("{base}.control"));
    assert_eq!(msgs[0]["msg"]["type"], "snapshot-start");
    assert_eq!(msgs[0]["msg"]["reason"], "start");
    let changes: Vec<(String, String, String)> = msgs
        .iter()
        .filter(|m| m["msg"]["type"] == "change")
        .map(|m| {
            (
                m["subject"].as_str().unwrap().to_string(),
                m["msg"]["op"].as_str().unwrap().to_string(),
                m["msg"]["route"]["prefix"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let v4 = format!("{base}.main.ipv4");
    let v6 = format!("{base}.main.ipv6");
    assert!(
        changes.contains(&(v4.clone(), "add".into(), "198.51.100.0/24".into())),
        "{changes:?}"
    );
    assert!(
        changes.contains(&(v6, "add".into(), "2001:db8:7::/48".into())),
        "{changes:?}"
    );
    let add = changes
        .iter()
        .position(|c| c == &(v4.clone(), "add".into(), "198.51.100.0/24".into()));
    let del = changes
        .iter()
        .position(|c| c == &(v4.clone(), "delete".into(), "198.51.100.0/24".into()));
    assert!(add < del && del.is_some(), "add before delete: {changes:?}");

    // The fleet consumer's copy is the mirror's, and it answers like `lookup`.
    consumer_matches_mirror(&server.url, &router, &d, "before the outage");
    let out = fleet(&server.url, &["lookup", &router, "10.9.8.7"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(key(&got), key(&d.lookup("10.9.8.7", None).unwrap()));

    // Outage: the daemon keeps mirroring; after the server is back a snapshot brings
    // the consumer up to date (the stream's store survives the restart).
    server.stop();
    ns.ip(&["route", "add", "203.0.113.0/24", "via", "198.18.2.2"]);
    ns.load_batch(batch("v4-10k"));
    d.diff_empty();
    let mut server = NatsServer::start(dir.path(), server.port);
    // Changes while the daemon reconnects and resnapshots: the consumer must end with
    // them too (the mirror it is compared with is read after them, never before).
    ns.ip(&["route", "add", "192.0.2.0/24", "via", "198.18.1.2"]);
    ns.ip(&["route", "del", "203.0.113.0/24", "via", "198.18.2.2"]);
    d.diff_empty();
    consumer_matches_mirror(&server.url, &router, &d, "after the outage");
    let (_, routes) = fleet_routes(&server.url, &router);
    assert!(
        routes.iter().any(|r| r.contains("\"192.0.2.0/24\""))
            && !routes.iter().any(|r| r.contains("\"203.0.113.0/24\"")),
        "the changes after the reconnect reached the consumer"
    );
    let msgs = stream_messages(&python, &server.url);
    assert!(
        msgs.iter().any(|m| m["msg"]["reason"] == "reconnect"),
        "a snapshot after reconnecting"
    );
    let st = d.stats();
    assert!(
        st["nats"]["reconnects"].as_u64() >= Some(1),
        "{}",
        st["nats"]
    );
    server.stop();
}

/// A consumer that joins after the stream's start was discarded (JetStream keeps an
/// hour) rebuilds exactly from a periodic snapshot: the stream is purged up to a
/// periodic `snapshot-start` taken after some changes, more changes follow, and a
/// fresh `route-mirror fleet` consumer's copy equals the mirror.
#[test]
fn a_late_consumer_rebuilds_from_a_periodic_snapshot() {
    let Some(python) = test_python() else { return };
    let dir = TempDir::new("rm-nats").unwrap();
    let server = NatsServer::start(dir.path(), free_port());
    let ns = Netns::new();
    ns.ip(&["route", "add", "198.51.100.0/24", "via", "198.18.1.2"]);
    let (d, router) = server.daemon(&ns, &["--nats-snapshot-interval", "2"]);
    consumer_matches_mirror(&server.url, &router, &d, "at start");
    ns.ip(&["route", "add", "203.0.113.0/24", "via", "198.18.2.2"]);
    ns.ip(&["route", "del", "198.51.100.0/24"]);
    ns.ip(&[
        "-6",
        "route",
        "add",
        "2001:db8:7::/48",
        "via",
        "2001:2:0:1::2",
    ]);
    d.diff_empty();
    // A periodic snapshot after those changes.
    let last_change = stream_messages(&python, &server.url)
        .iter()
        .filter(|m| m["msg"]["type"] == "change")
        .filter_map(|m| m["stream_seq"].as_u64())
        .max()
        .expect("the changes are on the stream");
    let start = poll(Duration::from_secs(15), || {
        stream_messages(&python, &server.url)
            .iter()
            .find(|m| {
                m["msg"]["type"] == "snapshot-start"
                    && m["msg"]["reason"] == "periodic"
                    && m["stream_seq"].as_u64() > Some(last_change)
            })
            .and_then(|m| m["stream_seq"].as_u64())
    })
    .expect("a periodic snapshot");
    let out = Command::new(&python)
        .arg(workspace_root().join("tests/clients/nats_client.py"))
        .args([&server.url, "route-mirror", "purge", &start.to_string()])
        .output()
        .expect("nats-py purge");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("true"),
        "purged: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let msgs = stream_messages(&python, &server.url);
    assert_eq!(
        msgs[0]["stream_seq"].as_u64(),
        Some(start),
        "the stream's start is gone"
    );
    assert_eq!(msgs[0]["msg"]["type"], "snapshot-start");
    assert!(
        !msgs.iter().any(|m| m["msg"]["reason"] == "start"),
        "no start snapshot left"
    );
    ns.ip(&["route", "add", "192.0.2.0/24", "via", "198.18.1.2"]);
    d.diff_empty();
    consumer_matches_mirror(&server.url, &router, &d, "joining late");
    let (_, routes) = fleet_routes(&server.url, &router);
    assert!(
        routes.iter().any(|r| r.contains("\"203.0.113.0/24\""))
            && routes.iter().any(|r| r.contains("\"192.0.2.0/24\""))
            && !routes.iter().any(|r| r.contains("\"198.51.100.0/24\"")),
        "changes before and after the snapshot: {routes:?}"
    );
}

/// A bounded buffer: with the server gone and more changes than `nats_buffer`, the
/// excess is dropped and counted (the `nats` feed in `stats`), and a snapshot follows.
#[test]
fn outage_beyond_the_buffer_is_counted_and_resnapshotted() {
    if test_python().is_none() {
        return;
    }
    let dir = TempDir::new("rm-nats").unwrap();
    let port = free_port();
    let mut server = NatsServer::start(dir.path(), port);
    let conf = dir.path().join("rm.toml");
    std::fs::write(&conf, "nats_buffer = 1000\nnats_host = \"r1\"\n").unwrap();
    let ns = Netns::new();
    let conf_s = conf.to_str().unwrap();
    let d = Daemon::start_synced(&ns, &["--config", conf_s, "--nats-url", &server.url]);
    let router = format!("r1/{}", ns.name());
    poll(Duration::from_secs(10), || {
        (fleet_routes(&server.url, &router).0 == "current").then_some(())
    })
    .expect("first snapshot");
    server.stop();
    ns.load_batch(batch("v4-10k"));
    d.diff_empty();
    let feed = poll(Duration::from_secs(10), || {
        let st = d.stats();
        st["feeds"]
            .as_array()?
            .iter()
            .find(|f| f["name"] == "nats" && f["dropped"].as_u64() > Some(0))
            .cloned()
    })
    .expect("drops counted in stats.feeds");
    assert!(feed["resnapshots"].as_u64() >= Some(1), "{feed}");
    let server = NatsServer::start(dir.path(), port);
    consumer_matches_mirror(&server.url, &router, &d, "after the lagged snapshot");
}

/// Lost events: the daemon's resync is bracketed on the control subject (`resync-start`,
/// the corrections as changes, `resync-end`, in `seq` order), the consumer shows
/// `resyncing` in between at most, and ends current and equal to the mirror.
#[test]
fn a_resync_is_bracketed_on_the_stream() {
    let Some(python) = test_python() else { return };
    let dir = TempDir::new("rm-nats").unwrap();
    let server = NatsServer::start(dir.path(), free_port());
    let ns = Netns::new();
    // ENOBUFS is the netlink source's loss path: a 4 KiB queue and a stopped daemon.
    let (d, router) = server.daemon(&ns, &["--rcvbuf", "4096", "--source", "netlink"]);
    poll(Duration::from_secs(10), || {
        (fleet_routes(&server.url, &router).0 == "current").then_some(())
    })
    .expect("first snapshot");
    d.pause();
    ns.load_batch(batch("v4-10k"));
    d.resume();
    d.diff_empty();
    assert!(d.stats()["enobufs"].as_u64() >= Some(1), "no overrun");
    let msgs = poll(Duration::from_secs(30), || {
        let m = stream_messages(&python, &server.url);
        m.iter()
            .any(|m| m["msg"]["type"] == "resync-end")
            .then_some(m)
    })
    .expect("resync-end on the stream");
    let types: Vec<&str> = msgs
        .iter()
        .filter_map(|m| m["msg"]["type"].as_str())
        .collect();
    let start = types.iter().position(|t| *t == "resync-start");
    let end = types.iter().rposition(|t| *t == "resync-end");
    assert!(
        start.is_some() && start < end,
        "resync-start before resync-end"
    );
    let control = format!("route-mirror.r1.{}.control", ns.name());
    assert_eq!(msgs[start.unwrap()]["subject"], control);
    assert!(
        types[start.unwrap()..].contains(&"change"),
        "the resync's corrections arrive as changes: {:?}",
        &types[start.unwrap()..]
    );
    consumer_matches_mirror(&server.url, &router, &d, "after the resync");
}

/// With `nexthop_compat_mode` 0 a nexthop object replace sends no route message for the
/// routes using it: the daemon re-sends their keys (cause `nexthop`) so the consumer's
/// routes show the new next hop; likewise (cause `link`) after a link rename.
#[test]
fn nexthop_replace_and_link_rename_reach_the_consumer() {
    if test_python().is_none() {
        return;
    }
    let dir = TempDir::new("rm-nats").unwrap();
    let server = NatsServer::start(dir.path(), free_port());
    let ns = Netns::new();
    ns.exec(&["sysctl", "-qw", "net.ipv4.nexthop_compat_mode=0"]);
    ns.ip(&[
        "nexthop",
        "add",
        "id",
        "10",
        "via",
        "198.18.1.2",
        "dev",
        "veth1",
    ]);
    ns.ip(&["route", "add", "192.0.2.0/24", "nhid", "10"]);
    ns.ip(&["route", "add", "198.51.100.0/24", "nhid", "10"]);
    let (d, router) = server.daemon(&ns, &[]);
    consumer_matches_mirror(&server.url, &router, &d, "at start");
    ns.ip(&[
        "nexthop",
        "replace",
        "id",
        "10",
        "via",
        "198.18.2.2",
        "dev",
        "veth2",
    ]);
    d.diff_empty();
    let via = d.lookup("192.0.2.1", None).unwrap();
    assert_eq!(via["nexthops"][0]["gateway"], "198.18.2.2", "{via}");
    consumer_matches_mirror(&server.url, &router, &d, "after the nexthop replace");
    let (_, routes) = fleet_routes(&server.url, &router);
    for p in ["192.0.2.0/24", "198.51.100.0/24"] {
        assert!(
            routes
                .iter()
                .any(|r| r.contains(p) && r.contains("198.18.2.2@veth2")),
            "{p} through the new next hop: {routes:?}"
        );
    }
    // A renamed link sends no route message either: every route naming it is re-sent
    // (cause `link`), connected and local routes included.
    ns.ip(&["link", "set", "veth2", "name", "wan2"]);
    d.diff_empty();
    consumer_matches_mirror(&server.url, &router, &d, "after the rename");
    let (_, routes) = fleet_routes(&server.url, &router);
    assert!(
        routes
            .iter()
            .any(|r| r.contains("192.0.2.0/24") && r.contains("@wan2"))
            && !routes
                .iter()
                .any(|r| r.split([' ', ',']).any(|h| h.ends_with("@veth2"))),
        "{routes:?}"
    );
}
