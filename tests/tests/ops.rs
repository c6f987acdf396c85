//! Operating the daemon: configuration file, reload, Prometheus metrics.

use std::process::Command;
use std::time::Duration;

use route_mirror_tests::{
    batch, body, daemon_bin, ebpf_object_present, free_port, poll, promtool, promtool_complaints,
    scrape, Daemon, Netns, TempDir,
};

/// The value of the first sample line starting with `prefix` (name plus labels).
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn check_config_reports_line_and_key() {
    let dir = TempDir::new("rm-config").unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "scan_interval = 30\nrcvbuff = 5\n").unwrap();
    let out = Command::new(daemon_bin())
        .args(["--config"])
        .arg(&bad)
        .arg("check-config")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("line 2") && err.contains("rcvbuff"), "{err}");

    let good = dir.path().join("good.toml");
    std::fs::write(&good, "scan_interval = 30\nsource = \"netlink\"\n").unwrap();
    let out = Command::new(daemon_bin())
        .args(["--config"])
        .arg(&good)
        .arg("check-config")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("scan_interval = 30.0") && text.contains("rcvbuf = "),
        "{text}"
    );
}

#[test]
fn reload_applies_scan_interval_live_and_survives_a_bad_file() {
    let ns = Netns::new();
    let dir = TempDir::new("rm-reload").unwrap();
    let cfg = dir.path().join("rm.toml");
    std::fs::write(&cfg, "scan_interval = 3600\n").unwrap();
    let cfg_s = cfg.to_str().unwrap();
    let d = Daemon::start_synced(&ns, &["--config", cfg_s]);
    std::thread::sleep(Duration::from_millis(1500));
    let periodic = |d: &Daemon| {
        d.stats()["scans_by_reason"]["periodic"]
            .as_u64()
            .unwrap_or(0)
    };
    assert_eq!(periodic(&d), 0, "no periodic scan with a 3600 s interval");

    std::fs::write(&cfg, "scan_interval = 0.5\nrcvbuf = 1048576\n").unwrap();
    let out = d.cli(&["reload"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("applied now:        scan_interval"), "{text}");
    assert!(text.contains("need a restart:     rcvbuf"), "{text}");
    assert!(
        poll(Duration::from_secs(10), || (periodic(&d) >= 2)
            .then_some(()))
        .is_some(),
        "periodic scans after reload"
    );

    // An invalid file is refused and the daemon keeps serving.
    std::fs::write(&cfg, "scan_interval = \"soon\"\n").unwrap();
    let out = d.cli(&["reload"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 1"));
    assert!(d.stats()["synced"].as_bool().unwrap_or(false));
    d.diff_empty();
}

#[test]
fn metrics_move_with_route_changes() {
    let ns = Netns::new();
    let port = 20000 + (std::process::id() % 20000) as u16;
    let addr = format!("127.0.0.1:{port}");
    let d = Daemon::start_synced(&ns, &["--metrics-listen", &addr, "--source", "netlink"]);
    let ns_label = format!("netns=\"{}\"", ns.name());
    let adds = |t: &str| {
        let prefix = format!(
            "route_mirror_events_total{{{ns_label},source=\"netlink\",type=\"route_add\"}}"
        );
        sample(t, &prefix).unwrap_or(0.0)
    };
    let main_routes = |t: &str| {
        let prefix = format!("route_mirror_routes{{{ns_label},family=\"inet\",table=\"254\"}}");
        sample(t, &prefix).unwrap_or(0.0)
    };
    let before = poll(Duration::from_secs(5), || {
        scrape(&addr).filter(|t| t.contains(&format!("route_mirror_synced{{{ns_label}}} 1")))
    })
    .expect("metrics endpoint answers");
    assert!(
        before.contains("# TYPE route_mirror_events_total counter"),
        "{before}"
    );
    for i in 0..5 {
        ns.ip(&[
            "route",
            "add",
            &format!("203.0.113.{}/32", i),
            "via",
            "198.18.1.2",
        ]);
    }
    d.cli(&["sync"]);
    let after = poll(Duration::from_secs(5), || {
        scrape(&addr).filter(|t| adds(t) >= adds(&before) + 5.0)
    })
    .expect("route_add counter moved by 5");
    assert_eq!(main_routes(&after), main_routes(&before) + 5.0, "{after}");
    assert!(sample(&after, "process_resident_memory_bytes").unwrap_or(0.0) > 1e6);
}

/// Kills the daemon it holds when dropped.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let end = std::time::Instant::now() + Duration::from_secs(3);
        while std::time::Instant::now() < end {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn two_namespaces_in_one_daemon_are_mirrored_independently() {
    let (a, b) = (Netns::new(), Netns::new());
    let log = TempDir::new("rm-multi").unwrap();
    let logf = std::fs::File::create(log.path().join("daemon.log")).unwrap();
    let _d = Running(
        Command::new(daemon_bin())
            .args([
                "--config",
                "/dev/null",
                "run",
                "--netns",
                a.name(),
                "--netns",
                b.name(),
            ])
            .stderr(logf)
            .spawn()
            .unwrap(),
    );
    let cli = |ns: &Netns, args: &[&str]| {
        Command::new(daemon_bin())
            .args(["--netns", ns.name()])
            .args(args)
            .output()
            .unwrap()
    };
    for ns in [&a, &b] {
        let synced = poll(Duration::from_secs(20), || {
            let out = cli(ns, &["stats", "--json"]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            (v["synced"] == true && v["netns"] == ns.name()).then_some(())
        });
        let daemon_log = std::fs::read_to_string(log.path().join("daemon.log")).unwrap_or_default();
        assert!(synced.is_some(), "{} not synced: {daemon_log}", ns.name());
    }
    a.ip(&["route", "add", "203.0.113.0/24", "via", "198.18.1.2"]);
    b.ip(&[
        "route",
        "add",
        "198.51.100.0/24",
        "via",
        "198.18.2.2",
        "table",
        "100",
    ]);
    a.load_batch(route_mirror_tests::batch("v4-10k.batch.gz"));
    for ns in [&a, &b] {
        let out = cli(ns, &["diff"]);
        assert!(
            out.status.success(),
            "{}: {}",
            ns.name(),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    assert!(cli(&a, &["lookup", "203.0.113.9"]).status.success());
    assert_eq!(
        cli(&b, &["lookup", "203.0.113.9"]).status.code(),
        Some(1),
        "b must not see a's route"
    );
    assert!(cli(&b, &["lookup", "198.51.100.1", "--table", "100"])
        .status
        .success());
    let count = |ns: &Netns| {
        let out = cli(ns, &["stats", "--json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["routes_total"]
            .as_u64()
            .unwrap()
    };
    assert!(count(&a) > count(&b) + 9000);
}

#[test]
fn tables_by_name_or_number() {
    let ns = Netns::new();
    let d = Daemon::start_synced(&ns, &[]);
    ns.ip(&["route", "add", "203.0.113.0/24", "via", "198.18.1.2"]);
    d.cli(&["sync"]);
    let by_name = d.cli_json(&["show", "--table", "main", "--json"]);
    let by_number = d.cli_json(&["show", "--table", "254", "--json"]);
    assert_eq!(by_name, by_number);
    assert!(by_name
        .as_array()
        .is_some_and(|a| a.iter().any(|r| r["prefix"] == "203.0.113.0/24")));
    let out = d.cli(&["show", "--table", "no-such-table"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("rt_tables"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Text output names the table as `ip route` does.
    ns.ip(&[
        "route",
        "add",
        "198.51.100.0/24",
        "via",
        "198.18.1.2",
        "table",
        "local",
    ]);
    d.cli(&["sync"]);
    let text = String::from_utf8_lossy(&d.cli(&["show", "--table", "all"]).stdout).to_string();
    assert!(
        text.contains("198.51.100.0/24 via 198.18.1.2 dev veth1 table local"),
        "{text}"
    );
}

/// A live scrape of a daemon mirroring two namespaces (the eBPF source when its object
/// is built, so the ring's families and lag histogram are in it), taken while routes
/// change, passes `promtool check metrics`: HELP and TYPE on every family, each family
/// once, counters named `_total`. Every series carries `netns` but the process's own.
#[test]
fn live_scrape_passes_promtool_while_routes_change() {
    let Some(promtool) = promtool() else { return };
    let (a, b) = (Netns::new(), Netns::new());
    let source = if ebpf_object_present() {
        "ebpf"
    } else {
        "netlink"
    };
    let addr = format!("127.0.0.1:{}", free_port());
    let log = TempDir::new("rm-promtool").unwrap();
    let logf = std::fs::File::create(log.path().join("daemon.log")).unwrap();
    let ring = (64u64 << 20).to_string();
    let _d = Running(
        Command::new(daemon_bin())
            .args(["--config", "/dev/null", "run", "--metrics-listen", &addr])
            .args(["--netns", a.name(), "--netns", b.name(), "--source", source])
            .args(["--ring-size", &ring])
            .stderr(logf)
            .spawn()
            .unwrap(),
    );
    let synced = |t: &str| {
        [&a, &b]
            .iter()
            .all(|ns| t.contains(&format!("route_mirror_synced{{netns=\"{}\"}} 1", ns.name())))
    };
    let first = poll(Duration::from_secs(20), || {
        scrape(&addr).filter(|t| synced(t))
    });
    let daemon_log = || std::fs::read_to_string(log.path().join("daemon.log")).unwrap_or_default();
    let first = first.unwrap_or_else(|| panic!("both namespaces synced: {}", daemon_log()));
    assert_eq!(promtool_complaints(&promtool, body(&first)), "");

    // 1000 routes come and go in `a` while it is scraped.
    let churn = log.path().join("churn.batch");
    let mut lines = String::new();
    for op in ["add", "del"] {
        for i in 0..1000 {
            lines += &format!(
                "route {op} 10.99.{}.{}/32 via 198.18.1.2\n",
                i / 256,
                i % 256
            );
        }
    }
    std::fs::write(&churn, lines).unwrap();
    let mut ip = Command::new("ip")
        .args(["-n", a.name(), "-batch"])
        .arg(&churn)
        .spawn()
        .unwrap();
    let mut scrapes = 0;
    while scrapes < 3 || ip.try_wait().unwrap().is_none() {
        let t = scrape(&addr).expect("scrape");
        assert_eq!(promtool_complaints(&promtool, body(&t)), "", "{t}");
        scrapes += 1;
    }
    assert!(ip.wait().unwrap().success());
    let adds = |t: &str| {
        let prefix = format!(
            "route_mirror_events_total{{netns=\"{}\",source=\"{source}\",type=\"route_add\"}}",
            a.name()
        );
        sample(t, &prefix).unwrap_or(0.0)
    };
    // The ring's kernel counters are published at intervals: wait for them too.
    let ring_records = |t: &str| {
        let name = format!("route_mirror_ring_records_total{{netns=\"{}\"}}", a.name());
        sample(t, &name).unwrap_or(0.0)
    };
    let last = poll(Duration::from_secs(10), || {
        scrape(&addr)
            .filter(|t| adds(t) >= 1000.0 && (source != "ebpf" || ring_records(t) >= 2000.0))
    })
    .unwrap_or_else(|| panic!("1000 route adds counted: {}", daemon_log()));
    let text = body(&last);
    assert_eq!(promtool_complaints(&promtool, text), "");

    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        assert!(
            line.contains("netns=\"") || line.starts_with("process_"),
            "series without netns: {line}"
        );
    }
    for ns in [&a, &b] {
        let info = format!(
            "route_mirror_build_info{{netns=\"{}\",version=\"{}\",source=\"{source}\"}} 1",
            ns.name(),
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.contains(&info), "no {info}:\n{text}");
        let refuted = format!(
            "route_mirror_inferred_refuted_total{{netns=\"{}\"}}",
            ns.name()
        );
        assert!(text.contains(&refuted), "no {refuted}:\n{text}");
    }
    if source == "ebpf" {
        let ns = a.name();
        // The lag histogram: cumulative buckets ending in +Inf, which equals _count and
        // counts every record the daemon read.
        let inf = sample(
            text,
            &format!("route_mirror_ring_lag_seconds_bucket{{netns=\"{ns}\",le=\"+Inf\"}}"),
        );
        let count = sample(
            text,
            &format!("route_mirror_ring_lag_seconds_count{{netns=\"{ns}\"}}"),
        );
        assert!(inf.unwrap_or(0.0) >= 2000.0 && inf == count, "{text}");
        let buckets: Vec<f64> = text
            .lines()
            .filter(|l| {
                l.starts_with(&format!(
                    "route_mirror_ring_lag_seconds_bucket{{netns=\"{ns}\""
                ))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        assert!(buckets.len() > 10, "{text}");
        assert!(
            buckets.windows(2).all(|w| w[0] <= w[1]),
            "not cumulative: {buckets:?}"
        );
        // The ring's kernel memory: at least the ring itself (--ring-size above).
        let memlock = sample(
            text,
            &format!("route_mirror_ring_memlock_bytes{{netns=\"{ns}\"}}"),
        );
        assert!(memlock.unwrap_or(0.0) >= (64u64 << 20) as f64, "{text}");
        for name in [
            "route_mirror_ring_high_water_bytes",
            "route_mirror_ring_drops_total",
        ] {
            assert!(
                text.contains(&format!("{name}{{netns=\"{ns}\"}}")),
                "no {name}"
            );
        }
    }
}

/// `sync_lag_s` reads 0 on a caught-up, idle daemon (it read up to a second, the core's
/// poll timeout, when it was the time since the core last went round), and the time the
/// core has been working off a backlog while it is behind.
#[test]
fn sync_lag_is_zero_when_caught_up_and_the_delay_while_behind() {
    let ns = Netns::new();
    let addr = format!("127.0.0.1:{}", free_port());
    let d = Daemon::start_synced(&ns, &["--source", "netlink", "--metrics-listen", &addr]);
    for _ in 0..8 {
        let lag = d.stats()["sync_lag_s"].as_f64();
        assert_eq!(lag, Some(0.0), "idle and caught up");
        std::thread::sleep(Duration::from_millis(200));
    }
    let lag_of = |t: &str| {
        sample(
            t,
            &format!("route_mirror_sync_lag_seconds{{netns=\"{}\"}}", ns.name()),
        )
    };
    assert_eq!(scrape(&addr).as_deref().and_then(lag_of), Some(0.0));

    // Stopped while the kernel installs 100k routes, the daemon finds them queued when
    // it resumes: while it applies them the mirror is behind.
    d.pause();
    ns.load_batch(batch("v4-100k"));
    let resumed = std::time::Instant::now();
    d.resume();
    let mut seen = Vec::new();
    let routes = format!("route_mirror_routes{{netns=\"{}\",", ns.name());
    let mirrored = |t: &str| {
        let n: f64 = t
            .lines()
            .filter(|l| l.starts_with(&routes))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        n >= 100_000.0
    };
    let done = poll(Duration::from_secs(60), || {
        let t = scrape(&addr)?;
        seen.push((resumed.elapsed().as_secs_f64(), lag_of(&t)?));
        mirrored(&t).then_some(())
    });
    assert!(done.is_some(), "100k routes mirrored: {seen:?}");
    let behind: Vec<_> = seen.iter().filter(|(_, lag)| *lag > 0.0).collect();
    assert!(
        !behind.is_empty(),
        "no read while behind showed a lag: {seen:?}"
    );
    for (at, lag) in &behind {
        assert!(
            lag <= at,
            "lag {lag} s read {at} s after resuming: {seen:?}"
        );
    }
    d.cli(&["sync"]);
    assert_eq!(d.stats()["sync_lag_s"].as_f64(), Some(0.0));
}
