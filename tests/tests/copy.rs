//! Kernel copies and declared routes (issue 15): a copy keeps a target table equal to a
//! source table (another namespace's, or the same namespace's), through churn, bursts,
//! foreign deletes and replaces, alien routes, restarts and missing devices.
//!
//! The oracle is `diff --copy NAME`: both kernels' tables dumped now and compared
//! through the copy's filter and rewrite. Declaration order matters: namespaces before
//! the daemon, so the daemon dies before them.

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use route_mirror_tests::{
    batch, body, free_port, poll, promtool, promtool_complaints, scrape, Daemon, Netns, TempDir,
    SYNC_TIMEOUT,
};
use serde_json::Value;

const PROTO: &str = "240";

fn copies(d: &Daemon) -> Vec<Value> {
    d.cli_json(&["copies"])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn copy(d: &Daemon, name: &str) -> Value {
    copies(d)
        .into_iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no copy {name:?} in `copies`"))
}

/// Waits until the copy made its first pass (every wanted route tried).
fn wait_copy_synced(d: &Daemon, name: &str) {
    let ok = poll(SYNC_TIMEOUT, || {
        (copy(d, name)["state"] == "synced").then_some(())
    });
    assert!(
        ok.is_some(),
        "copy {name} not synced: {}\n{}",
        copy(d, name),
        d.log_tail(30)
    );
}

/// `diff --copy NAME --json`: (empty, report).
fn diff_copy(d: &Daemon, name: &str) -> (bool, Value) {
    let out = d.cli_timeout(
        &["diff", "--copy", name, "--json"],
        Duration::from_secs(180),
    );
    let code = out.status.code();
    assert!(
        matches!(code, Some(0) | Some(1)),
        "diff --copy {name}: exit {code:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("diff --copy --json");
    (code == Some(0), v)
}

fn assert_exact(d: &Daemon, name: &str, when: &str) {
    let (empty, v) = diff_copy(d, name);
    assert!(
        empty,
        "copy {name} differs {when}: {v:#}\n{}",
        d.log_tail(20)
    );
    assert!(v["wanted"].as_u64().unwrap() > 0, "{v}");
}

/// Routes of `table` in `ns` as `ip -j` objects.
fn routes(ns: &Netns, family: &str, table: &str) -> Vec<Value> {
    // A table that never held a route of the family does not exist: empty.
    let Ok(out) = ns.try_ip(&["-j", family, "route", "show", "table", table]) else {
        return Vec::new();
    };
    serde_json::from_str::<Value>(out.trim())
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

fn route(ns: &Netns, prefix: &str, table: &str) -> Option<Value> {
    let fam = if prefix.contains(':') { "-6" } else { "-4" };
    routes(ns, fam, table)
        .into_iter()
        .find(|r| r["dst"] == prefix)
}

/// A few hundred IPv6 routes of the shared set, in `main`.
fn load_v6_subset(ns: &Netns, dir: &Path, n: usize) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "zcat {} | grep -v ' table ' | head -{n}",
            batch("v6-230k").display()
        ))
        .output()
        .expect("zcat");
    let f = dir.join("v6.batch");
    fs::write(&f, &out.stdout).unwrap();
    ns.load_batch(&f);
}

/// `100.64.I.0/24 via 198.18.1.2 dev veth1` for I in 0..n.
fn add_via_veth1(ns: &Netns, n: usize) {
    for i in 0..n {
        ns.ip(&[
            "route",
            "add",
            &format!("100.64.{i}.0/24"),
            "via",
            "198.18.1.2",
            "dev",
            "veth1",
        ]);
    }
}

/// A daemon on `ns` with `config` as its configuration file (in `dir`).
fn start_with_config(ns: &Netns, dir: &Path, config: String) -> Daemon {
    let cfg = dir.join("rm.toml");
    fs::write(&cfg, config).unwrap();
    Daemon::start_synced(ns, &["--config", &cfg.to_string_lossy()])
}

fn write_batch(dir: &Path, name: &str, lines: &[String]) -> std::path::PathBuf {
    let p = dir.join(name);
    fs::write(&p, lines.join("\n") + "\n").unwrap();
    p
}

#[test]
fn copies_into_another_namespace_and_the_same_one_stay_exact_through_churn_and_a_burst() {
    let t0 = Instant::now();
    let phase = |what: &str| eprintln!("{:>6.1} s  {what}", t0.elapsed().as_secs_f64());
    let a = Netns::new();
    let b = Netns::new();
    let tmp = TempDir::new("copy-churn").unwrap();
    a.load_batch(batch("v4-10k"));
    load_v6_subset(&a, tmp.path(), 500);
    let to_b = format!("main={}/200", b.name());
    let d = Daemon::start_synced(&a, &["--copy", &to_b, "--copy", "main=200"]);
    for name in [to_b.as_str(), "main=200"] {
        wait_copy_synced(&d, name);
        assert_exact(&d, name, "after the initial sync");
    }
    phase("initial sync checked");
    // The routes went in with our protocol, into both targets.
    let b4 = routes(&b, "-4", "200");
    assert!(b4.len() > 7000 && b4.iter().all(|r| r["protocol"] == PROTO));
    assert!(routes(&a, "-6", "200").len() >= 400);

    // Churn in A: adds, deletes, replaces, ECMP changes (v4 and v6), then a link flap.
    let mut lines = Vec::new();
    for i in 0..200 {
        lines.push(format!(
            "route add 100.64.{i}.0/24 via 198.18.1.2 dev veth1"
        ));
        lines.push(format!(
            "route add 2001:db8:{i:x}::/48 via 2001:2:0:1::2 dev veth1"
        ));
    }
    for i in 0..50 {
        lines.push(format!("route del 100.64.{i}.0/24"));
        lines.push(format!("route del 2001:db8:{i:x}::/48"));
    }
    for i in 50..100 {
        lines.push(format!(
            "route replace 100.64.{i}.0/24 via 198.18.2.2 dev veth2"
        ));
        lines.push(format!(
            "route replace 100.64.{}.0/24 nexthop via 198.18.1.2 dev veth1 nexthop via 198.18.2.2 dev veth2",
            i + 50
        ));
        lines.push(format!(
            "route replace 2001:db8:{:x}::/48 nexthop via 2001:2:0:1::2 dev veth1 nexthop via 2001:2:0:2::2 dev veth2",
            i
        ));
    }
    for i in 100..120 {
        // ECMP change: weights, then a hop less.
        lines.push(format!(
            "route replace 100.64.{i}.0/24 nexthop via 198.18.1.2 dev veth1 weight 3 nexthop via 198.18.2.2 dev veth2"
        ));
    }
    for i in 120..130 {
        lines.push(format!(
            "route replace 100.64.{i}.0/24 via 198.18.1.2 dev veth1"
        ));
    }
    a.load_batch(write_batch(tmp.path(), "churn.batch", &lines));
    phase("churn loaded");
    a.ip(&["link", "set", "veth2", "down"]);
    std::thread::sleep(Duration::from_millis(200));
    a.ip(&["link", "set", "veth2", "up"]);
    for name in [to_b.as_str(), "main=200"] {
        assert_exact(&d, name, "after churn and a link flap");
    }
    // Moved to veth2, then flushed by its link flap (IPv4, silently): gone in the copy.
    assert!(route(&a, "100.64.60.0/24", "main").is_none());
    assert!(route(&b, "100.64.60.0/24", "200").is_none());
    assert!(route(&b, "100.64.10.0/24", "200").is_none());
    assert!(route(&b, "100.64.125.0/24", "200").is_some_and(|r| r["gateway"] == "198.18.1.2"));
    phase("churn checked");

    // A 100k-route burst into A (as replaces: v4-10k's routes are among them).
    let burst = tmp.path().join("burst.batch");
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "zcat {} | sed 's/^route add /route replace /' > {}",
            batch("v4-100k").display(),
            burst.display()
        ))
        .status()
        .unwrap();
    assert!(st.success());
    a.load_batch(&burst);
    phase("burst loaded");
    for name in [to_b.as_str(), "main=200"] {
        assert_exact(&d, name, "after a 100k burst");
        phase("burst checked");
    }
    let c = copy(&d, &to_b);
    assert_eq!(c["failing"], 0, "{c}");
    assert!(c["lag"]["samples"].as_u64().unwrap() > 0, "{c}");
}

#[test]
fn foreign_deletes_and_replaces_are_repaired_and_aliens_left_alone() {
    let a = Netns::new();
    let b = Netns::new();
    let tmp = TempDir::new("copy-repair").unwrap();
    add_via_veth1(&a, 20);
    // Aliens in the target: one at a key the copy wants, one elsewhere.
    b.ip(&[
        "route",
        "add",
        "100.64.1.0/24",
        "via",
        "198.18.2.2",
        "dev",
        "veth2",
        "table",
        "200",
        "proto",
        "static",
    ]);
    b.ip(&[
        "route",
        "add",
        "100.99.0.0/16",
        "dev",
        "veth2",
        "table",
        "200",
        "proto",
        "static",
    ]);
    let name = format!("main={}/200", b.name());
    let metrics = format!("127.0.0.1:{}", free_port());
    let d = Daemon::start_synced(&a, &["--copy", &name, "--metrics-listen", &metrics]);
    wait_copy_synced(&d, &name);

    let alien = route(&b, "100.64.1.0/24", "200").expect("alien kept");
    assert_eq!(
        (alien["gateway"].as_str(), alien["protocol"].as_str()),
        (Some("198.18.2.2"), Some("static"))
    );
    assert!(route(&b, "100.99.0.0/16", "200").is_some_and(|r| r["protocol"] == "static"));
    let c = copy(&d, &name);
    assert_eq!(c["failing_by_reason"]["exists"], 1, "{c}");
    let (empty, v) = diff_copy(&d, &name);
    assert!(!empty);
    assert_eq!(v["missing_count"], 1, "{v}");
    assert_eq!(v["missing"][0]["reason"], "exists", "{v}");

    // A foreign delete, then a foreign replace of a route of ours: repaired at once.
    // Timed by the kernel's own notifications (`ip -ts monitor`: the foreign change's
    // and the repair's), so the test's polling does not count.
    let mon = Monitor::start_timestamped(&b, tmp.path());
    let watch = WatchFile::start(&d, tmp.path());
    let mut prefixes = Vec::new();
    for round in 0..3 {
        let p = format!("100.64.{}.0/24", 10 + round);
        b.ip(&["route", "del", &p, "table", "200"]);
        poll(Duration::from_secs(5), || route(&b, &p, "200")).expect("deleted route repaired");
        b.ip(&[
            "route",
            "replace",
            &p,
            "via",
            "198.18.2.2",
            "dev",
            "veth2",
            "table",
            "200",
        ]);
        poll(Duration::from_secs(5), || {
            route(&b, &p, "200").filter(|r| r["gateway"] == "198.18.1.2" && r["protocol"] == PROTO)
        })
        .expect("replaced route repaired");
        prefixes.push(p);
    }
    let log = mon.stop();
    let mut repair_ms: Vec<f64> = prefixes
        .iter()
        .flat_map(|p| repair_delays(&log, p))
        .collect();
    assert_eq!(
        repair_ms.len(),
        6,
        "3 deletes and 3 replaces repaired:\n{log}"
    );
    repair_ms.sort_by(f64::total_cmp);
    eprintln!("repair times (ms, kernel notification to notification): {repair_ms:?}");
    // Speed belongs to benchmarks (bench/copy.sh at 1M routes); here a bound a loaded
    // CI machine meets while a repair that waits for a timer (a settle or count tick of
    // a second, or the next scan) fails it.
    assert!(repair_ms[repair_ms.len() / 2] < 250.0, "{repair_ms:?}");
    assert!(repair_ms[repair_ms.len() - 1] < 900.0, "{repair_ms:?}");
    // `watch` on the source's daemon showed each repair as a copy event.
    let events = poll(Duration::from_secs(10), || {
        let ev: Vec<Value> = watch
            .records()
            .into_iter()
            .filter(|r| r["op"] == "copy" && r["copy"]["repair"] == true)
            .collect();
        (ev.len() >= 6).then_some(ev)
    })
    .unwrap_or_else(|| panic!("repairs in watch: {:#?}", watch.records()));
    for p in &prefixes {
        let of = |verdict: &str| {
            events
                .iter()
                .filter(|r| r["copy"]["prefix"] == p.as_str() && r["copy"]["verdict"] == verdict)
                .count()
        };
        assert_eq!(
            (of("reinstalled"), of("replaced")),
            (1, 1),
            "{p}: {events:#?}"
        );
    }
    let e = &events[0]["copy"];
    assert_eq!(
        (e["name"].as_str(), e["netns"].as_str(), e["table"].as_u64()),
        (Some(name.as_str()), Some(b.name()), Some(200)),
        "{e}"
    );
    // diff --copy waits for the copy to settle (its counters are then current).
    let (_, v) = diff_copy(&d, &name);
    assert_eq!(v["missing_count"], 1, "only the alien's key: {v}");
    let c = copy(&d, &name);
    assert!(c["repaired_deletes"].as_u64().unwrap() >= 3, "{c}");
    assert!(c["repaired_replaces"].as_u64().unwrap() >= 3, "{c}");
    assert!(c["foreign_deletes"].as_u64().unwrap() >= 3, "{c}");
    // The aliens are still as they were.
    assert!(route(&b, "100.64.1.0/24", "200").is_some_and(|r| r["protocol"] == "static"));
    assert!(route(&b, "100.99.0.0/16", "200").is_some_and(|r| r["protocol"] == "static"));
    // stats and Prometheus show the copy: its refusal by reason, repairs, routes.
    let st: Value = serde_json::from_slice(&d.cli(&["stats", "--json"]).stdout).unwrap();
    let sc = st["copies"]
        .as_array()
        .and_then(|a| a.iter().find(|j| j["name"] == name.as_str()))
        .unwrap_or_else(|| panic!("no copy in stats: {}", st["copies"]));
    assert_eq!(sc["failing_by_reason"]["exists"], 1, "{sc}");
    let text = scrape(&metrics).expect("scrape");
    let labels = format!("netns=\"{}\",copy=\"{name}\",table=\"200\"", b.name());
    let value = |series: &str| {
        body(&text)
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    };
    assert_eq!(
        value(&format!(
            "route_mirror_copy_failing_routes{{{labels},reason=\"exists\"}}"
        )),
        1.0
    );
    assert!(
        value(&format!(
            "route_mirror_copy_repairs_total{{{labels},kind=\"delete\"}}"
        )) >= 3.0
    );
    assert!(
        value(&format!(
            "route_mirror_copy_routes{{{labels},state=\"installed\"}}"
        )) >= 19.0
    );
    if let Some(p) = promtool() {
        assert_eq!(promtool_complaints(&p, body(&text)), "");
    }
}

/// `ip -n NS monitor route` into a file, for counting what the kernel did.
struct Monitor {
    child: Child,
    out: std::path::PathBuf,
}

impl Monitor {
    fn start(ns: &Netns, dir: &Path) -> Monitor {
        Monitor::spawn(ns, dir, &[])
    }

    /// Each line starts with the time the notification was read (`[2026-...T07:18:39.400019]`).
    fn start_timestamped(ns: &Netns, dir: &Path) -> Monitor {
        Monitor::spawn(ns, dir, &["-ts"])
    }

    fn spawn(ns: &Netns, dir: &Path, opts: &[&str]) -> Monitor {
        let out = dir.join("monitor.txt");
        let child = Command::new("ip")
            .args(opts)
            .args(["-n", ns.name(), "monitor", "route"])
            .stdout(fs::File::create(&out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("ip monitor");
        std::thread::sleep(Duration::from_millis(200));
        Monitor { child, out }
    }

    fn stop(mut self) -> String {
        std::thread::sleep(Duration::from_millis(200));
        let _ = self.child.kill();
        let _ = self.child.wait();
        fs::read_to_string(&self.out).unwrap_or_default()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `route-mirror watch --json` into a file.
struct WatchFile {
    child: Child,
    out: std::path::PathBuf,
}

impl WatchFile {
    fn start(d: &Daemon, dir: &Path) -> WatchFile {
        let out = dir.join("watch.json");
        let child = Command::new(route_mirror_tests::daemon_bin())
            .arg("--socket")
            .arg(d.socket())
            .args(["watch", "--json"])
            .stdout(fs::File::create(&out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("route-mirror watch");
        poll(Duration::from_secs(5), || {
            (d.stats()["watchers"].as_u64() >= Some(1)).then_some(())
        })
        .expect("watcher subscribed");
        WatchFile { child, out }
    }

    /// The records so far (one JSON object a line).
    fn records(&self) -> Vec<Value> {
        fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .collect()
    }
}

impl Drop for WatchFile {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Seconds of the day of an `ip -ts monitor` line's stamp, and the rest of the line.
fn stamped(line: &str) -> Option<(f64, &str)> {
    let (stamp, rest) = line.strip_prefix('[')?.split_once("] ")?;
    let (_, time) = stamp.split_once('T')?;
    let mut secs = 0.0;
    for part in time.split(':') {
        secs = secs * 60.0 + part.parse::<f64>().ok()?;
    }
    Some((secs, rest))
}

/// From a timestamped monitor log: for every change of `prefix` by someone else (a
/// delete, or a route of another protocol), the ms until our route was back.
fn repair_delays(log: &str, prefix: &str) -> Vec<f64> {
    let ours = |l: &str| {
        !l.starts_with("Deleted")
            && (l.contains(" proto 240 ") || l.contains(" proto route-mirror "))
    };
    let mut out = Vec::new();
    let mut foreign_at = None;
    for (t, l) in log.lines().filter_map(stamped) {
        if l.trim_start_matches("Deleted ").split(' ').next() != Some(prefix) {
            continue;
        }
        match (ours(l), foreign_at) {
            (true, Some(t0)) => {
                out.push((t - t0) * 1000.0);
                foreign_at = None;
            }
            (false, None) => foreign_at = Some(t),
            _ => {}
        }
    }
    out
}

#[test]
fn repair_delays_pair_foreign_changes_with_our_route_coming_back() {
    let log = "[2026-12-05T07:18:39.400019] 10.1.0.0/24 via 198.18.1.2 dev veth1 table 200 proto 240 \n\
               [2026-12-05T07:18:39.500000] Deleted 10.1.0.0/24 via 198.18.1.2 dev veth1 table 200 proto 240 \n\
               [2026-12-05T07:18:39.500100] 10.2.0.0/24 via 198.18.1.2 dev veth1 table 200 proto 240 \n\
               [2026-12-05T07:18:39.512500] 10.1.0.0/24 via 198.18.1.2 dev veth1 table 200 proto 240 \n\
               [2026-12-05T07:18:59.999000] 10.1.0.0/24 via 198.18.2.2 dev veth2 table 200 proto boot \n\
               [2026-12-05T07:19:00.001000] 10.1.0.0/24 via 198.18.1.2 dev veth1 table 200 proto 240 \n";
    let d = repair_delays(log, "10.1.0.0/24");
    assert_eq!(d.len(), 2, "{d:?}");
    assert!(
        (d[0] - 12.5).abs() < 0.01 && (d[1] - 2.0).abs() < 0.01,
        "{d:?}"
    );
    assert!(repair_delays(log, "10.2.0.0/24").is_empty());
}

#[test]
fn kill_9_then_source_changes_then_restart_adopts_without_a_flush() {
    let a = Netns::new();
    let b = Netns::new();
    let tmp = TempDir::new("copy-restart").unwrap();
    a.load_batch(batch("v4-10k"));
    let name = format!("main={}/200", b.name());
    let d = Daemon::start_synced(&a, &["--copy", &name]);
    wait_copy_synced(&d, &name);
    let before = copy(&d, &name)["installed"].as_u64().unwrap();
    d.kill9();

    let mon = Monitor::start(&b, tmp.path());
    a.ip(&[
        "route",
        "add",
        "100.64.1.0/24",
        "via",
        "198.18.1.2",
        "dev",
        "veth1",
    ]);
    a.ip(&[
        "route",
        "add",
        "100.64.2.0/24",
        "via",
        "198.18.2.2",
        "dev",
        "veth2",
    ]);
    a.ip(&[
        "route",
        "add",
        "100.64.3.0/24",
        "via",
        "198.18.2.2",
        "dev",
        "veth2",
    ]);
    a.ip(&[
        "route",
        "replace",
        "100.64.3.0/24",
        "via",
        "198.18.1.2",
        "dev",
        "veth1",
    ]);
    // Plain single-path routes of the loaded set (one per prefix in main).
    let plain: Vec<String> = routes(&a, "-4", "main")
        .iter()
        .filter(|r| r["gateway"] == "198.18.1.2" && r.get("metric").is_none())
        .filter_map(|r| r["dst"].as_str().map(str::to_string))
        .filter(|p| !p.starts_with("100.64.") && !p.starts_with("198.18."))
        .take(3)
        .collect();
    let (gone, moved) = (&plain[..2], plain[2].clone());
    for g in gone {
        a.ip(&["route", "del", g, "via", "198.18.1.2"]);
    }
    a.ip(&[
        "route",
        "replace",
        &moved,
        "via",
        "198.18.2.2",
        "dev",
        "veth2",
    ]);

    let d = Daemon::start_synced(&a, &["--copy", &name]);
    wait_copy_synced(&d, &name);
    assert_exact(&d, &name, "after a restart");
    let log = mon.stop();
    let c = copy(&d, &name);
    let v = &c["verdicts"];
    assert_eq!(v["installed"], 3, "{c}");
    assert_eq!(v["removed"], 2, "{c}");
    assert_eq!(v["replaced"], 1, "{c}");
    assert_eq!(v["adopted"].as_u64().unwrap(), before - 2 - 1, "{c}");
    // No flush: the target saw exactly the two removals, no delete-and-reinstall.
    let deletes: Vec<&str> = log.lines().filter(|l| l.starts_with("Deleted")).collect();
    assert_eq!(deletes.len(), 2, "{deletes:#?}");
    for g in gone {
        assert!(
            deletes.iter().any(|l| l.contains(g.as_str())),
            "{g} {deletes:?}"
        );
    }
}

#[test]
fn sigterm_leaves_the_routes_unless_persist_is_off() {
    let a = Netns::new();
    let b = Netns::new();
    let c = Netns::new();
    let tmp = TempDir::new("copy-persist").unwrap();
    add_via_veth1(&a, 10);
    // Multipath: through nexthop objects in the targets.
    for i in 0..5 {
        a.ip(&[
            "route",
            "add",
            &format!("100.65.{i}.0/24"),
            "nexthop",
            "via",
            "198.18.1.2",
            "dev",
            "veth1",
            "nexthop",
            "via",
            "198.18.2.2",
            "dev",
            "veth2",
        ]);
    }
    let d = start_with_config(
        &a,
        tmp.path(),
        format!(
            "[[copy]]\nname = \"kept\"\nfrom = \"main\"\nto = \"{b}/200\"\n\n\
             [[copy]]\nname = \"dropped\"\nfrom = \"main\"\nto = \"{b}/201\"\npersist = false\n\n\
             [[copy]]\nname = \"gone\"\nfrom = \"main\"\nto = \"{c}/200\"\npersist = false\n",
            b = b.name(),
            c = c.name()
        ),
    );
    for name in ["kept", "dropped", "gone"] {
        wait_copy_synced(&d, name);
    }
    assert!(route(&b, "100.64.5.0/24", "201").is_some());
    assert_eq!(groups(&our_objects(&b)).len(), 1, "one group shared in b");
    assert_eq!(our_objects(&c).len(), 3, "two hops and a group in c");
    let st = d.stop().expect("daemon exit status");
    assert!(st.success(), "{st:?}");
    let kept = routes(&b, "-4", "200");
    assert!(
        kept.iter().filter(|r| r["protocol"] == PROTO).count() >= 15,
        "{kept:?}"
    );
    assert!(
        routes(&b, "-4", "201").is_empty(),
        "persist = false removes its routes"
    );
    assert!(routes(&c, "-4", "200").is_empty());
    // The objects of c served only a copy that does not persist: deleted; b's serve
    // the persisting copy's routes: kept.
    assert!(our_objects(&c).is_empty(), "{:?}", our_objects(&c));
    let objs = our_objects(&b);
    assert_eq!(objs.len(), 3, "{objs:?}");
    let g = groups(&objs)[0];
    assert!(kept.iter().any(|r| r["nhid"].as_u64() == Some(g)));
}

#[test]
fn refused_routes_are_counted_and_retried_when_the_device_comes_back() {
    let a = Netns::new();
    let b = Netns::new();
    for i in 0..20 {
        let dev = if i % 2 == 0 { "veth1" } else { "veth2" };
        let gw = if i % 2 == 0 {
            "198.18.1.2"
        } else {
            "198.18.2.2"
        };
        a.ip(&[
            "route",
            "add",
            &format!("100.64.{i}.0/24"),
            "via",
            gw,
            "dev",
            dev,
        ]);
    }
    let name = format!("main={}/200", b.name());
    let d = Daemon::start_synced(&a, &["--copy", &name]);
    wait_copy_synced(&d, &name);
    assert_exact(&d, &name, "at start");

    b.ip(&["link", "del", "veth2"]);
    let c = poll(Duration::from_secs(10), || {
        let c = copy(&d, &name);
        (c["failing_by_reason"]["no_device"].as_u64().unwrap_or(0) >= 10).then_some(c)
    })
    .unwrap_or_else(|| panic!("refusals not counted: {}", copy(&d, &name)));
    assert!(c["refused"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["reason"] == "no_device"));
    let (empty, v) = diff_copy(&d, &name);
    assert!(!empty);
    assert!(
        v["missing"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["reason"] == "no_device"),
        "{v}"
    );
    // 10 routes via veth2, its connected routes (v4, v6, link-local), veth2p's.
    assert!(v["missing_count"].as_u64().unwrap() >= 11, "{v}");
    assert_eq!(v["extra_count"], 0, "{v}");

    b.ip(&[
        "link", "add", "veth2", "type", "veth", "peer", "name", "veth2p",
    ]);
    b.ip(&["link", "set", "veth2p", "up"]);
    b.ip(&["link", "set", "veth2", "up"]);
    b.ip(&["addr", "add", "198.18.2.1/24", "dev", "veth2"]);
    b.ip(&["addr", "add", "2001:2:0:2::1/64", "dev", "veth2", "nodad"]);
    let ok = poll(Duration::from_secs(20), || {
        diff_copy(&d, &name).0.then_some(())
    });
    assert!(ok.is_some(), "not repaired: {}", diff_copy(&d, &name).1);
    // No refusal is left on record (the diff's barrier made the counters current).
    let c = copy(&d, &name);
    assert_eq!(c["failing"], 0, "{c}");
    assert!(c["retries"].as_u64().unwrap() > 0, "{c}");
}

#[test]
fn filters_and_next_hop_rewrites() {
    let a = Netns::new();
    let b = Netns::new();
    let tmp = TempDir::new("copy-filter").unwrap();
    a.load_batch(batch("v4-10k"));
    load_v6_subset(&a, tmp.path(), 200);
    for i in 0..5 {
        a.ip(&["route", "add", &format!("100.64.{i}.0/24"), "dev", "veth1"]);
    }
    let d = start_with_config(
        &a,
        tmp.path(),
        format!(
            "[[copy]]\nname = \"filtered\"\nfrom = \"main\"\nto = \"{b}/201\"\n\
             families = [4]\nprefixes = [\"0.0.0.0/1 ge 20 le 23\"]\ntypes = [\"unicast\"]\n\
             nexthop = \"via 198.18.2.2 dev veth2\"\n\n\
             [[copy]]\nname = \"holes\"\nfrom = \"main\"\nto = \"{b}/202\"\n\
             protocols = [\"boot\"]\nnexthop = \"blackhole\"\n\n\
             [[copy]]\nname = \"moved\"\nfrom = \"main\"\nto = \"{b}/203\"\n\
             prefixes = \"100.64.0.0/16+\"\nmetric = 77\n",
            b = b.name()
        ),
    );
    for name in ["filtered", "holes", "moved"] {
        wait_copy_synced(&d, name);
        assert_exact(&d, name, "with filters");
    }
    // What the filter should take, from A's own listing.
    let want: Vec<String> = routes(&a, "-4", "main")
        .iter()
        .filter(|r| r.get("type").is_none())
        .filter_map(|r| r["dst"].as_str().map(str::to_string))
        .filter(|p| {
            let (addr, len) = p.split_once('/').unwrap_or((p, "32"));
            let len: u8 = len.parse().unwrap();
            let first: u8 = addr.split('.').next().unwrap().parse().unwrap();
            first < 128 && (20..=23).contains(&len)
        })
        .collect();
    let got = routes(&b, "-4", "201");
    assert!(!want.is_empty());
    assert_eq!(got.len(), want.len());
    assert!(got
        .iter()
        .all(|r| r["gateway"] == "198.18.2.2" && r["dev"] == "veth2" && r["protocol"] == PROTO));
    assert!(routes(&b, "-6", "201").is_empty());
    let holes4 = routes(&b, "-4", "202");
    let holes6 = routes(&b, "-6", "202");
    assert!(holes4.len() > 1000 && holes6.len() > 100);
    assert!(holes4
        .iter()
        .chain(&holes6)
        .all(|r| r["type"] == "blackhole"));
    // Only `boot` routes (what `ip route add` makes): the connected (kernel) ones stayed out.
    assert!(holes4
        .iter()
        .all(|r| !r["dst"].as_str().unwrap().starts_with("198.18.")));
    let moved = routes(&b, "-4", "203");
    assert_eq!(moved.len(), 5);
    assert!(moved
        .iter()
        .all(|r| r["metric"] == 77 && r["dev"] == "veth1"));
}

#[test]
fn declared_routes_survive_a_flush_and_follow_reloads() {
    let a = Netns::new();
    let b = Netns::new();
    let tmp = TempDir::new("copy-declared").unwrap();
    let file = tmp.path().join("pins.routes");
    fs::write(
        &file,
        "# pinned\n10.10.0.0/16 via 198.18.1.2 dev veth1\nblackhole 10.11.0.0/16\n\
         2001:db8:10::/48 via 2001:2:0:2::2 dev veth2 metric 5\n10.12.0.0/16 dev veth2 table 301\n",
    )
    .unwrap();
    let d = start_with_config(
        &a,
        tmp.path(),
        format!(
            "[[routes]]\nname = \"pins\"\nto = \"{b}/300\"\nfile = \"{f}\"\nroutes = [\"10.13.0.0/16 via 198.18.2.2 dev veth2\"]\n",
            b = b.name(),
            f = file.display()
        ),
    );
    wait_copy_synced(&d, "pins");
    assert_exact(&d, "pins", "at start");
    for p in ["10.10.0.0/16", "10.11.0.0/16", "10.13.0.0/16"] {
        assert!(
            route(&b, p, "300").is_some_and(|r| r["protocol"] == PROTO),
            "{p}"
        );
    }
    assert!(route(&b, "2001:db8:10::/48", "300").is_some_and(|r| r["metric"] == 5));
    assert!(
        route(&b, "10.12.0.0/16", "301").is_some(),
        "a line's own table"
    );

    b.ip(&["route", "flush", "table", "300"]);
    b.ip(&["-6", "route", "flush", "table", "300"]);
    let back = poll(Duration::from_secs(5), || {
        (route(&b, "10.10.0.0/16", "300").is_some()
            && route(&b, "10.11.0.0/16", "300").is_some()
            && route(&b, "2001:db8:10::/48", "300").is_some())
        .then_some(())
    });
    assert!(
        back.is_some(),
        "not reinstalled after a flush: {}",
        copy(&d, "pins")
    );
    assert_exact(&d, "pins", "after a flush");

    // No longer declared: removed on reload; a new line: installed.
    fs::write(
        &file,
        "10.10.0.0/16 via 198.18.2.2 dev veth2\n10.14.0.0/16 via 198.18.1.2 dev veth1\n",
    )
    .unwrap();
    let out = d.cli(&["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ok = poll(Duration::from_secs(5), || {
        (route(&b, "10.11.0.0/16", "300").is_none()
            && route(&b, "2001:db8:10::/48", "300").is_none()
            && route(&b, "10.12.0.0/16", "301").is_none()
            && route(&b, "10.14.0.0/16", "300").is_some()
            && route(&b, "10.10.0.0/16", "300").is_some_and(|r| r["gateway"] == "198.18.2.2"))
        .then_some(())
    });
    assert!(
        ok.is_some(),
        "reload not applied: {}\n{}",
        copy(&d, "pins"),
        b.ip(&["route", "show", "table", "all"])
    );
    assert!(
        route(&b, "10.13.0.0/16", "300").is_some(),
        "the inline route stays"
    );
    assert_exact(&d, "pins", "after a reload");
}

#[test]
fn an_owner_copy_replaces_and_removes_aliens_and_scans_recheck_everything() {
    let a = Netns::new();
    let b = Netns::new();
    let tmp = TempDir::new("copy-owner").unwrap();
    add_via_veth1(&a, 10);
    let alien = |prefix: &str| {
        b.ip(&[
            "route",
            "add",
            prefix,
            "via",
            "198.18.2.2",
            "dev",
            "veth2",
            "table",
            "200",
            "proto",
            "static",
        ]);
    };
    // At a key the copy wants, and where it wants nothing.
    alien("100.64.1.0/24");
    alien("100.99.0.0/16");
    let d = start_with_config(
        &a,
        tmp.path(),
        format!(
            "[[copy]]\nname = \"owned\"\nfrom = \"main\"\nto = \"{}/200\"\nfamilies = 4\nowner = true\n",
            b.name()
        ),
    );
    wait_copy_synced(&d, "owned");
    assert_exact(&d, "owned", "at start");
    assert!(
        route(&b, "100.64.1.0/24", "200")
            .is_some_and(|r| r["protocol"] == PROTO && r["gateway"] == "198.18.1.2"),
        "the alien at a wanted key is replaced"
    );
    assert!(
        route(&b, "100.99.0.0/16", "200").is_none(),
        "the alien elsewhere is removed"
    );
    // Nothing refused: the table is the copy's.
    assert_eq!(copy(&d, "owned")["failing"], 0);

    // A new alien is removed at once.
    alien("100.98.0.0/16");
    let gone = poll(Duration::from_secs(5), || {
        route(&b, "100.98.0.0/16", "200").is_none().then_some(())
    });
    assert!(gone.is_some(), "alien kept: {}", copy(&d, "owned"));

    // A scan re-checks every route: each found equal (verdict `seen`).
    let seen = |d: &Daemon| copy(d, "owned")["verdicts"]["seen"].as_u64().unwrap();
    let before = seen(&d);
    let out = d.cli(&["scan", "--wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rechecked = poll(Duration::from_secs(10), || {
        (seen(&d) >= before + 10).then_some(())
    });
    assert!(
        rechecked.is_some(),
        "no re-check after a scan: {}",
        copy(&d, "owned")
    );
    assert_exact(&d, "owned", "after a scan");
}

#[test]
fn unreachable_gateways_are_counted_and_retried_until_reachable() {
    let a = Netns::new();
    let b = Netns::new();
    let tmp = TempDir::new("copy-unreachable").unwrap();
    add_via_veth1(&a, 5);
    // Rewritten to a gateway B has no connected route to (ENETUNREACH).
    let d = start_with_config(
        &a,
        tmp.path(),
        format!(
            "[[copy]]\nname = \"far\"\nfrom = \"main\"\nto = \"{}/200\"\nfamilies = 4\n\
             prefixes = \"100.64.0.0/16+\"\nnexthop = \"via 203.0.113.1 dev veth1\"\n",
            b.name()
        ),
    );
    let c = poll(Duration::from_secs(10), || {
        let c = copy(&d, "far");
        (c["failing_by_reason"]["gateway_unreachable"] == 5).then_some(c)
    })
    .unwrap_or_else(|| panic!("refusals not counted: {}", copy(&d, "far")));
    assert_eq!(c["installed"], 0, "{c}");
    let (empty, v) = diff_copy(&d, "far");
    assert!(!empty);
    assert_eq!(v["missing_count"], 5, "{v}");
    assert!(
        v["missing"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["reason"] == "gateway_unreachable"),
        "{v}"
    );

    // The gateway becomes reachable: the retries (with backoff) install everything.
    b.ip(&["addr", "add", "203.0.113.2/24", "dev", "veth1"]);
    let ok = poll(Duration::from_secs(40), || {
        diff_copy(&d, "far").0.then_some(())
    });
    assert!(ok.is_some(), "not installed: {}", copy(&d, "far"));
    let c = copy(&d, "far");
    assert_eq!(c["failing"], 0, "{c}");
    assert_eq!(c["installed"], 5, "{c}");
    assert!(c["retries"].as_u64().unwrap() >= 5, "{c}");
    assert!(routes(&b, "-4", "200")
        .iter()
        .all(|r| r["gateway"] == "203.0.113.1" && r["protocol"] == PROTO));
}

/// A key's routes in `ns`'s `table`, in the kernel's order, as "TYPE via GW dev DEV".
fn key_list(ns: &Netns, prefix: &str, table: &str) -> Vec<String> {
    routes(ns, "-4", table)
        .into_iter()
        .filter(|r| r["dst"] == prefix)
        .map(|r| {
            format!(
                "{} via {} dev {}",
                r["type"].as_str().unwrap_or("unicast"),
                r["gateway"].as_str().unwrap_or("-"),
                r["dev"].as_str().unwrap_or("-")
            )
        })
        .collect()
}

/// IPv4 keys with several routes (`ip route append`/`prepend`, a reject route beside a
/// unicast one, a subnet on two devices) are copied as lists: the same routes in the
/// same order (the kernel forwards with the first), through appends, prepends, deletes
/// of one entry and a foreign delete of the head in the target; a rewrite that makes a
/// list's routes identical installs one.
#[test]
fn ipv4_key_lists_are_copied_in_order() {
    let a = Netns::new();
    let b = Netns::new();
    let tmp = TempDir::new("copy-lists").unwrap();
    let g1 = ["via", "198.18.1.2", "dev", "veth1"];
    let g2 = ["via", "198.18.2.2", "dev", "veth2"];
    let ip = |ns: &Netns, verb: &str, p: &str, rest: &[&str]| {
        let mut args = vec!["route", verb, p];
        args.extend_from_slice(rest);
        ns.ip(&args);
    };
    ip(&a, "add", "100.70.1.0/24", &g1);
    ip(&a, "append", "100.70.1.0/24", &g2);
    ip(&a, "add", "100.70.2.0/24", &g1);
    ip(&a, "prepend", "100.70.2.0/24", &g2);
    a.ip(&["route", "add", "blackhole", "100.70.3.0/24"]);
    ip(&a, "append", "100.70.3.0/24", &g1);
    ip(&a, "add", "100.70.4.0/24", &g1);
    ip(&a, "append", "100.70.4.0/24", &g2);
    ip(&a, "append", "100.70.4.0/24", &["dev", "veth1"]);
    // One subnet on two devices: two kernel routes at one key (in B too, whose
    // addresses the copied routes name as their source).
    for ns in [&a, &b] {
        ns.ip(&["addr", "add", "10.77.0.1/24", "dev", "veth1"]);
        ns.ip(&["addr", "add", "10.77.0.2/24", "dev", "veth2"]);
    }
    assert_eq!(key_list(&a, "10.77.0.0/24", "main").len(), 2);
    let collapsed = format!("{}/201", b.name());
    let d = start_with_config(
        &a,
        tmp.path(),
        format!(
            r#"
[[copy]]
name = "lists"
from = "main"
to = "{b}/200"

[[copy]]
name = "collapsed"
from = "main"
to = "{collapsed}"
families = [4]
prefixes = ["100.70.0.0/16 le 32"]
nexthop = "via 198.18.1.2 dev veth1"
"#,
            b = b.name()
        ),
    );
    for name in ["lists", "collapsed"] {
        wait_copy_synced(&d, name);
        assert_exact(&d, name, "after the initial sync");
    }
    for p in [
        "100.70.1.0/24",
        "100.70.2.0/24",
        "100.70.3.0/24",
        "100.70.4.0/24",
        "10.77.0.0/24",
    ] {
        assert_eq!(key_list(&b, p, "200"), key_list(&a, p, "main"), "{p}");
    }
    assert_eq!(
        key_list(&b, "100.70.2.0/24", "200")[0],
        "unicast via 198.18.2.2 dev veth2"
    );
    assert_eq!(
        key_list(&b, "100.70.3.0/24", "200")[0],
        "blackhole via - dev -"
    );
    // Rewritten to one hop, 100.70.1.0/24's two routes are one (the blackhole stays).
    assert_eq!(
        key_list(&b, "100.70.1.0/24", "201"),
        ["unicast via 198.18.1.2 dev veth1"]
    );
    assert_eq!(key_list(&b, "100.70.3.0/24", "201").len(), 2);

    // Changes of the source's lists: a delete in the middle, a delete of the head, a
    // prepend before a reject route, a new list, a second address's route gone.
    a.ip(&["route", "del", "100.70.4.0/24", "via", "198.18.2.2"]);
    a.ip(&["route", "del", "100.70.1.0/24", "via", "198.18.1.2"]);
    ip(&a, "prepend", "100.70.3.0/24", &g2);
    ip(&a, "append", "100.70.5.0/24", &g1);
    ip(&a, "append", "100.70.5.0/24", &g2);
    a.ip(&["addr", "del", "10.77.0.2/24", "dev", "veth2"]);
    for name in ["lists", "collapsed"] {
        assert_exact(&d, name, "after the source's lists changed");
    }
    for p in [
        "100.70.1.0/24",
        "100.70.3.0/24",
        "100.70.4.0/24",
        "100.70.5.0/24",
        "10.77.0.0/24",
    ] {
        assert_eq!(key_list(&b, p, "200"), key_list(&a, p, "main"), "{p}");
    }
    assert_eq!(key_list(&b, "100.70.4.0/24", "200").len(), 2);
    assert_eq!(
        key_list(&b, "100.70.3.0/24", "200")[0],
        "unicast via 198.18.2.2 dev veth2"
    );

    // A foreign delete of a list's head in the target: it comes back, first.
    b.ip(&[
        "route",
        "del",
        "100.70.2.0/24",
        "via",
        "198.18.2.2",
        "table",
        "200",
    ]);
    let want = key_list(&a, "100.70.2.0/24", "main");
    poll(Duration::from_secs(5), || {
        (key_list(&b, "100.70.2.0/24", "200") == want).then_some(())
    })
    .expect("the list's head repaired in place");
    assert_exact(&d, "lists", "after a foreign delete of a list's head");
    let c = copy(&d, "lists");
    assert_eq!(c["failing"], 0, "{c}");
    assert_eq!(c["failing_by_reason"].get("exists"), None, "{c}");
    assert!(c["repaired_deletes"].as_u64().unwrap() >= 1, "{c}");
}

/// First id of the copy's nexthop objects (`copy::nhpool::ID_BASE`).
const NH_BASE: u64 = 0x72f0_0000;

/// The copy's nexthop objects in `ns`: id -> `ip -j nexthop` object.
fn our_objects(ns: &Netns) -> std::collections::BTreeMap<u64, Value> {
    let out = ns.ip(&["-j", "nexthop", "show"]);
    let v: Vec<Value> = serde_json::from_str(out.trim()).unwrap_or_default();
    v.into_iter()
        .filter_map(|o| Some((o["id"].as_u64()?, o)))
        .filter(|(id, _)| (NH_BASE..NH_BASE + (1 << 20)).contains(id))
        .collect()
}

fn groups(objs: &std::collections::BTreeMap<u64, Value>) -> Vec<u64> {
    objs.iter()
        .filter(|(_, o)| o.get("group").is_some())
        .map(|(id, _)| *id)
        .collect()
}

/// IPv4 multipath routes are copied through shared nexthop objects the copy makes in
/// the target (one per distinct hop, one group per distinct weighted hop list), equal
/// to the source by `diff --copy` (which resolves the objects) through a change of
/// one hop, the deletion of a group's last user (the group is collected), a foreign
/// delete of a group (written again, its routes reinstalled) and kill -9 + restart
/// (objects adopted: nothing rewritten; a group unused meanwhile is collected).
#[test]
fn ecmp_goes_through_shared_nexthop_objects() {
    let a = Netns::new();
    let b = Netns::new();
    let tmp = TempDir::new("copy-nh").unwrap();
    let mut lines = Vec::new();
    for i in 0..60 {
        lines.push(format!(
            "route add 100.80.{i}.0/24 nexthop via 198.18.1.2 dev veth1 nexthop via 198.18.2.2 dev veth2"
        ));
    }
    for i in 0..20 {
        lines.push(format!(
            "route add 100.81.{i}.0/24 nexthop via 198.18.1.2 dev veth1 weight 3 nexthop via 198.18.2.2 dev veth2"
        ));
    }
    lines.push(
        "route add 100.82.0.0/24 nexthop via 198.18.2.2 dev veth2 nexthop via 198.18.1.3 dev veth1"
            .into(),
    );
    a.load_batch(write_batch(tmp.path(), "ecmp.batch", &lines));
    let name = format!("main={}/200", b.name());
    let d = Daemon::start_synced(&a, &["--copy", &name]);
    wait_copy_synced(&d, &name);
    assert_exact(&d, &name, "after the initial sync");
    let b4 = routes(&b, "-4", "200");
    let via_obj = b4.iter().filter(|r| r["nhid"].as_u64().is_some()).count();
    assert_eq!(via_obj, 81, "every multipath route names an object");
    let objs = our_objects(&b);
    assert_eq!(groups(&objs).len(), 3, "{objs:#?}");
    assert_eq!(objs.len(), 6, "3 hops, 3 groups: {objs:#?}");
    let c = copy(&d, &name);
    assert_eq!(c["nexthop_objects"]["written"], 6, "{c}");

    // One hop of a route changes: another group (the old one keeps its other users).
    a.ip(&[
        "route",
        "replace",
        "100.80.0.0/24",
        "nexthop",
        "via",
        "198.18.1.2",
        "dev",
        "veth1",
        "nexthop",
        "via",
        "198.18.1.3",
        "dev",
        "veth1",
    ]);
    assert_exact(&d, &name, "after one hop changed");
    // The last user of 100.82's group goes: the group is collected (its hops are shared).
    let before = our_objects(&b);
    a.ip(&["route", "del", "100.82.0.0/24"]);
    let g82 = route(&b, "100.80.0.0/24", "200").unwrap()["nhid"]
        .as_u64()
        .unwrap();
    let gone = poll(Duration::from_secs(10), || {
        let now = our_objects(&b);
        (groups(&now).len() == groups(&before).len() - 1).then_some(now)
    })
    .expect("an unused group is deleted");
    assert!(gone.contains_key(&g82), "the group still used stays");
    assert_exact(&d, &name, "after a group's last user went");

    // Someone deletes a group of ours: the kernel drops its routes with it; the group
    // is made again (under a new id) and the routes come back through it.
    let old = route(&b, "100.81.0.0/24", "200").unwrap()["nhid"]
        .as_u64()
        .unwrap();
    b.ip(&["nexthop", "del", "id", &old.to_string()]);
    let g = poll(Duration::from_secs(10), || {
        let objs = our_objects(&b);
        let w: Vec<Value> = routes(&b, "-4", "200")
            .into_iter()
            .filter(|r| r["dst"].as_str().is_some_and(|p| p.starts_with("100.81.")))
            .collect();
        let ids: std::collections::BTreeSet<u64> =
            w.iter().filter_map(|r| r["nhid"].as_u64()).collect();
        let id = *ids.iter().next()?;
        (w.len() == 20 && ids.len() == 1 && objs.contains_key(&id)).then_some(id)
    })
    .expect("the deleted group's routes are back through a group");
    assert_exact(&d, &name, "after a foreign delete of a group");
    let c = copy(&d, &name);
    assert!(
        c["nexthop_objects"]["repaired"].as_u64().unwrap() >= 1,
        "{c}"
    );

    // kill -9; the weighted routes go meanwhile; restart: objects adopted, the weighted
    // group (now unused) collected, nothing else written.
    d.kill9();
    for i in 0..20 {
        a.ip(&["route", "del", &format!("100.81.{i}.0/24")]);
    }
    let kept = our_objects(&b);
    let d = Daemon::start_synced(&a, &["--copy", &name]);
    wait_copy_synced(&d, &name);
    assert_exact(&d, &name, "after kill -9 and a restart");
    let c = copy(&d, &name);
    assert_eq!(c["nexthop_objects"]["written"], 0, "{c}");
    assert_eq!(
        c["nexthop_objects"]["adopted"].as_u64(),
        Some(kept.len() as u64),
        "{c}"
    );
    assert_eq!(c["verdicts"]["installed"], 0, "{c}");
    let after = poll(Duration::from_secs(10), || {
        let now = our_objects(&b);
        (!now.contains_key(&g)).then_some(now)
    })
    .expect("the unused weighted group is collected after the restart");
    assert!(after.contains_key(&g82));
    assert_exact(&d, &name, "after the collection");
}

/// Multipath routes change (new weights: new groups) while `veth2` loses and regains its
/// carrier again and again, and the daemon's tiny receive buffer overruns (resyncs): the
/// kernel deletes the copy's objects on `veth2` and shrinks the groups naming them,
/// silently, some between our write and the mirror's sight of its echo, so the pool
/// believed them as written: routes naming them were refused ("Nexthop id does not
/// exist", seen in the soak) or forwarded through a shrunk group, for good. Every such
/// route must come back: `diff --copy` is empty after each storm (its barrier waits for
/// the objects to be confirmed), with nothing left refused.
#[test]
fn ecmp_churn_through_carrier_flaps_leaves_no_route_missing() {
    const STORMS: usize = 8;
    /// Route changes between two carrier changes.
    const FLAP_EVERY: usize = 150;
    let a = Netns::new();
    let tmp = TempDir::new("copy-nh-flap").unwrap();
    let name = "main=200";
    let d = Daemon::start_synced(&a, &["--copy", name, "--rcvbuf", "16384"]);
    wait_copy_synced(&d, name);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for storm in 0..STORMS {
        let mut lines = Vec::new();
        for n in 0..3000usize {
            if n.is_multiple_of(FLAP_EVERY) {
                let state = if (n / FLAP_EVERY).is_multiple_of(2) {
                    "down"
                } else {
                    "up"
                };
                lines.push(format!("link set veth2p {state}"));
            }
            let i = next() % 1000;
            lines.push(format!(
                "route replace 100.90.{}.{}/32 nexthop via 198.18.1.2 dev veth1 weight {} nexthop via 198.18.2.2 dev veth2 weight {}",
                i / 250,
                i % 250,
                1 + next() % 16,
                1 + next() % 16
            ));
        }
        lines.push("link set veth2p up".into());
        a.load_batch(write_batch(tmp.path(), "storm.batch", &lines));
        let out = d.cli_timeout(&["sync"], Duration::from_secs(120));
        assert!(out.status.success(), "sync: {out:?}");
        assert_exact(&d, name, &format!("after storm {storm}"));
        let c = copy(&d, name);
        assert_eq!(c["failing"], 0, "storm {storm}: {c:#}");
        eprintln!(
            "storm {storm}: refused routes by reason {}, objects vanished {}, repaired {}, refused {}",
            c["failed_by_reason"],
            c["nexthop_objects"]["vanished"],
            c["nexthop_objects"]["repaired"],
            c["nexthop_objects"]["refused"],
        );
    }
}
