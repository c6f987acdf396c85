//! `route-mirror watch`: the live stream of applied changes.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use route_mirror_tests::{batch, daemon_bin, poll, Daemon, Netns};
use serde_json::Value;

/// A `route-mirror watch --json` client whose lines arrive on a channel.
struct Watcher {
    child: Child,
    lines: mpsc::Receiver<Value>,
}

impl Watcher {
    fn start(d: &Daemon, args: &[&str]) -> Watcher {
        let mut child = Command::new(daemon_bin())
            .arg("--socket")
            .arg(d.socket())
            .arg("watch")
            .arg("--json")
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&l) {
                    let _ = tx.send(v);
                }
            }
        });
        // Subscribed once the daemon counts it.
        poll(Duration::from_secs(5), || {
            (d.stats()["watchers"].as_u64() >= Some(1)).then_some(())
        })
        .expect("watcher subscribed");
        Watcher { child, lines }
    }

    /// Records until `done` holds for the ones seen so far (or the timeout).
    fn collect(&self, timeout: Duration, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let end = Instant::now() + timeout;
        let mut seen = Vec::new();
        while !done(&seen) {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) => seen.push(v),
                Err(_) => break,
            }
        }
        seen
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ops_for<'a>(recs: &'a [Value], prefix: &str) -> Vec<(&'a str, &'a str)> {
    recs.iter()
        .filter(|r| r["route"]["prefix"].as_str() == Some(prefix))
        .map(|r| {
            (
                r["op"].as_str().unwrap_or(""),
                r["cause"].as_str().unwrap_or(""),
            )
        })
        .collect()
}

#[test]
fn watch_sees_add_replace_delete_and_inferred_link_down() {
    let ns = Netns::new();
    let d = Daemon::start_synced(&ns, &[]);
    let w = Watcher::start(&d, &[]);
    let only_v4 = Watcher::start(&d, &["203.0.113.0/24", "--table", "100"]);
    ns.ip(&[
        "route",
        "add",
        "203.0.113.0/24",
        "via",
        "198.18.1.2",
        "table",
        "100",
    ]);
    ns.ip(&[
        "route",
        "replace",
        "203.0.113.0/24",
        "via",
        "198.18.2.2",
        "table",
        "100",
    ]);
    ns.ip(&["route", "del", "203.0.113.0/24", "table", "100"]);
    ns.ip(&["route", "add", "192.0.2.0/24", "via", "198.18.1.2"]);
    ns.ip(&["link", "set", "veth1", "down"]);
    let recs = w.collect(Duration::from_secs(5), |r| {
        ops_for(r, "192.0.2.0/24").len() >= 2
    });
    assert_eq!(
        ops_for(&recs, "203.0.113.0/24"),
        vec![("add", "event"), ("replace", "event"), ("delete", "event")],
        "{recs:#?}"
    );
    // The kernel says nothing when it drops IPv4 routes of a downed link: inferred.
    assert_eq!(
        ops_for(&recs, "192.0.2.0/24"),
        vec![("add", "event"), ("delete", "inferred")],
        "{recs:#?}"
    );
    let filtered = only_v4.collect(Duration::from_secs(2), |r| r.len() >= 3);
    assert_eq!(
        filtered.len(),
        3,
        "filter by prefix and table: {filtered:#?}"
    );
    assert!(filtered.iter().all(|r| r["route"]["table"] == 100));
    d.diff_empty();
}

#[test]
fn overrun_is_marked_in_the_stream() {
    let ns = Netns::new();
    // ENOBUFS is the netlink source's loss path (the ring's is tested in ebpf.rs).
    let d = Daemon::start_synced(&ns, &["--rcvbuf", "4096", "--source", "netlink"]);
    let w = Watcher::start(&d, &["198.51.100.0/24"]);
    // Stopped, the daemon cannot keep up: the 4 KiB queue overflows for sure.
    d.pause();
    ns.load_batch(batch("v4-10k.batch.gz"));
    d.resume();
    let recs = w.collect(Duration::from_secs(60), |r| {
        r.iter().any(|v| v["op"] == "resync-done")
    });
    let ops: Vec<&str> = recs.iter().filter_map(|r| r["op"].as_str()).collect();
    let first_resync = ops
        .iter()
        .position(|o| *o == "resync")
        .expect("a resync marker");
    assert!(ops[first_resync..].contains(&"resync-done"), "{ops:?}");
    assert!(d.stats()["enobufs"].as_u64().unwrap_or(0) >= 1);
    d.diff_empty();
}

#[test]
fn a_watcher_that_never_reads_is_dropped_and_the_daemon_keeps_serving() {
    let ns = Netns::new();
    let d = Daemon::start_synced(&ns, &[]);
    let mut stuck = UnixStream::connect(d.socket()).unwrap();
    stuck
        .write_all(b"{\"cmd\":\"watch\",\"prefix\":null,\"table\":null}\n")
        .unwrap();
    poll(Duration::from_secs(5), || {
        (d.stats()["watchers"].as_u64() >= Some(1)).then_some(())
    })
    .expect("subscribed");
    ns.load_batch(batch("v4-100k.batch.gz"));
    // Queries stay fast while the stuck watcher's buffer is full.
    let t = Instant::now();
    let st = d.stats();
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "stats took {:?}",
        t.elapsed()
    );
    assert!(st["synced"].as_bool().unwrap_or(false));
    d.diff_empty();
    poll(Duration::from_secs(15), || {
        (d.stats()["watchers_dropped"].as_u64() >= Some(1)).then_some(())
    })
    .expect("the stuck watcher was dropped");
    assert_eq!(d.stats()["watchers"].as_u64(), Some(0));
    drop(stuck);
}
