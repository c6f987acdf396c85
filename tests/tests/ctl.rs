//! Control socket: root-only access (file mode and SO_PEERCRED), bad requests,
//! clients that never send or never read, shutdown and restart over a stale socket.
//!
//! Declaration order matters: `ns` before `d`, so the daemon dies before its namespace.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use route_mirror_tests::{batch, daemon_bin, Daemon, Netns, TempDir};
use serde_json::Value;

const NOBODY: &str = "65534";

/// Sends raw bytes (then half-closes when `close_write`) and returns the first reply line.
fn raw_request(sock: &Path, bytes: &[u8], close_write: bool) -> String {
    let mut s = UnixStream::connect(sock).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // The daemon may answer (and close) before it read everything of an oversized
    // request: a failed write is fine, the reply is what counts.
    let _ = s.write_all(bytes);
    if close_write {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).expect("reply line");
    line
}

fn error_of(line: &str) -> String {
    let v: Value = serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("expected an error reply, got {line:?}"))
        .to_string()
}

/// Copies the daemon binary where another uid can run it.
fn public_bin(dir: &TempDir) -> std::path::PathBuf {
    let p = dir.path().join("route-mirror");
    std::fs::copy(daemon_bin(), &p).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// `route-mirror stats --socket S` as uid/gid 65534 (nobody), no groups.
fn stats_as_nobody(bin: &Path, sock: &Path) -> std::process::Output {
    Command::new("setpriv")
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
        ])
        .arg(bin)
        .arg("stats")
        .arg("--socket")
        .arg(sock)
        .output()
        .expect("setpriv")
}

fn stats_quick(d: &Daemon) -> (Value, Duration) {
    let t = Instant::now();
    let v = d.cli_json_timeout(&["stats"], Duration::from_secs(10));
    (v, t.elapsed())
}

#[test]
fn non_root_client_is_refused() {
    let ns = Netns::new();
    let d = Daemon::start_synced(&ns, &[]);
    let mode = std::fs::metadata(d.socket()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    let tmp = TempDir::new("rm-ctl-bin").unwrap();
    let bin = public_bin(&tmp);

    // 1. The file mode stops it at connect(2), with a clear message from the client.
    let out = stats_as_nobody(&bin, d.socket());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(
        err.contains("permission denied") && err.contains("root-only"),
        "{err}"
    );

    // 2. Even when the mode is loosened, SO_PEERCRED refuses it, with a reply saying why.
    std::fs::set_permissions(d.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = stats_as_nobody(&bin, d.socket());
    let err = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "stdout: {stdout} stderr: {err}");
    assert!(
        !stdout.contains("routes"),
        "a refused client got stats: {stdout}"
    );
    assert!(
        err.contains("root-only") && err.contains("peer uid 65534"),
        "{err}"
    );
    let (v, _) = stats_quick(&d);
    assert_eq!(v["refused_peers"], 1, "{v}");
}

#[test]
fn bad_requests_get_an_error_and_the_daemon_keeps_serving() {
    let ns = Netns::new();
    let d = Daemon::start_synced(&ns, &[]);
    let sock = d.socket();

    let e = error_of(&raw_request(sock, b"hello there\n", false));
    assert!(e.starts_with("bad request"), "{e}");
    let e = error_of(&raw_request(sock, b"{\"cmd\":\"nope\"}\n", false));
    assert!(e.contains("unknown variant"), "{e}");
    let e = error_of(&raw_request(sock, b"\xff\xfe\x00garbage\n", false));
    assert!(e.contains("not UTF-8"), "{e}");
    // Truncated: half a request, then EOF.
    let e = error_of(&raw_request(sock, b"{\"cmd\":\"sta", true));
    assert!(e.starts_with("bad request"), "{e}");
    // Wrong types inside a known command.
    let e = error_of(&raw_request(
        sock,
        b"{\"cmd\":\"lookup\",\"addr\":\"300.1.1.1\",\"table\":null}\n",
        false,
    ));
    assert!(e.starts_with("bad request"), "{e}");
    // Oversized: 1 MiB without a newline, and 100 KiB with one.
    let e = error_of(&raw_request(sock, &vec![b'x'; 1 << 20], false));
    assert!(e.contains("longer than"), "{e}");
    let mut big = vec![b' '; 100 << 10];
    big.extend_from_slice(b"{\"cmd\":\"stats\"}\n");
    let e = error_of(&raw_request(sock, &big, false));
    assert!(e.contains("longer than"), "{e}");
    // Connect and leave: no reply, no harm.
    drop(UnixStream::connect(sock).unwrap());

    let (v, took) = stats_quick(&d);
    assert_eq!(v["bad_requests"], 7, "{v}");
    assert!(took < Duration::from_secs(5), "stats took {took:?}");
    assert!(d.exited().is_none());
    d.diff_empty();
}

#[test]
fn silent_and_non_reading_clients_do_not_block_others() {
    let ns = Netns::new();
    ns.load_batch(batch("v4-10k"));
    let d = Daemon::start_synced(&ns, &[]);
    let sock = d.socket();

    // Several clients ask for every route (~ megabytes) and never read.
    let hogs: Vec<UnixStream> = (0..4)
        .map(|_| {
            let mut s = UnixStream::connect(sock).unwrap();
            s.write_all(b"{\"cmd\":\"show\",\"prefix\":null,\"table\":null,\"family\":null}\n")
                .unwrap();
            s
        })
        .collect();
    // One connects and never sends.
    let mut silent = UnixStream::connect(sock).unwrap();
    std::thread::sleep(Duration::from_millis(500));

    for _ in 0..5 {
        let (v, took) = stats_quick(&d);
        assert!(v["routes_total"].as_u64().unwrap() >= 10_000, "{v}");
        assert!(
            took < Duration::from_secs(3),
            "stats took {took:?} behind stalled clients"
        );
    }
    // The mirror still follows the kernel while replies are stuck.
    ns.ip(&["route", "add", "203.0.113.0/24", "via", "198.18.1.2"]);
    d.diff_empty();

    // The silent client is told it timed out (REQUEST_TIMEOUT = 10 s) and closed.
    silent
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut line = String::new();
    BufReader::new(&silent).read_line(&mut line).unwrap();
    assert!(error_of(&line).contains("timed out"), "{line}");
    let mut rest = Vec::new();
    assert_eq!(
        silent.read_to_end(&mut rest).unwrap(),
        0,
        "closed after the error"
    );

    // A hog that finally reads gets its complete reply.
    let mut r = BufReader::new(&hogs[0]);
    let mut n = 0;
    let mut line = String::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line.starts_with("{\"ok\"") {
            break;
        }
        assert!(line.starts_with("{\"item\""), "{line}");
        n += 1;
    }
    let v: Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(v["ok"]["count"], n, "{line}");
    drop(hogs);
    assert!(d.exited().is_none());
}

#[test]
fn too_many_clients_are_refused_not_queued() {
    let ns = Netns::new();
    let d = Daemon::start_synced(&ns, &[]);
    // Fill every slot with silent clients (MAX_CLIENTS = 64).
    let idle: Vec<UnixStream> = (0..64)
        .map(|_| UnixStream::connect(d.socket()).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let e = error_of(&raw_request(d.socket(), b"{\"cmd\":\"stats\"}\n", false));
    assert!(e.starts_with("busy"), "{e}");
    drop(idle);
    // Slots come back as the idle clients go.
    let ok = route_mirror_tests::poll(Duration::from_secs(5), || {
        let out = d.cli(&["stats", "--json"]);
        out.status.success().then_some(())
    });
    assert!(ok.is_some(), "stats refused after the idle clients left");
    assert!(d.stats()["busy_refusals"].as_u64().unwrap() >= 1);
}

#[test]
fn sigterm_removes_the_socket_file() {
    let ns = Netns::new();
    let d = Daemon::start_synced(&ns, &[]);
    assert!(d.socket().exists());
    let status = d.stop().expect("was running");
    assert!(status.success(), "exit status {status}");
    assert!(!d.socket().exists(), "socket file left after SIGTERM");
}

#[test]
fn restart_after_kill9_replaces_the_stale_socket_and_resyncs() {
    let ns = Netns::new();
    ns.load_batch(batch("v4-10k"));
    let d = Daemon::start_synced(&ns, &[]);
    let sock = d.socket().to_path_buf();
    d.kill9();
    assert!(sock.exists(), "kill -9 leaves the socket file behind");
    // The kernel moves on while no daemon runs.
    ns.ip(&["route", "add", "203.0.113.0/24", "via", "198.18.1.2"]);
    ns.ip(&["route", "del", "81.24.24.0/22"]);
    ns.ip(&["route", "replace", "216.120.244.0/23", "via", "198.18.1.2"]);
    ns.ip(&["route", "add", "2001:db8:77::/48", "via", "2001:2:0:2::2"]);

    let d2 = Daemon::try_start_at(&ns, Some(&sock), &[]).expect("restart on the stale socket");
    d2.wait_synced(Duration::from_secs(60));
    d2.diff_empty();
    assert!(d2.lookup("203.0.113.1", None).is_some());

    // A second daemon on a live socket is refused, and leaves the first one serving.
    let d3 = Daemon::try_start_at(&ns, Some(&sock), &[]).unwrap();
    let st = route_mirror_tests::poll(Duration::from_secs(10), || d3.exited());
    assert!(
        matches!(st, Some(s) if !s.success()),
        "second daemon kept running"
    );
    assert!(
        d3.log_tail(5).contains("already serving"),
        "{}",
        d3.log_tail(5)
    );
    assert!(d2.stats()["synced"].as_bool().unwrap());
    drop(d3);
    drop(d2);
    drop(d);
}

#[test]
fn running_out_of_fds_does_not_stop_the_daemon() {
    // Regression: an accept(2) error (EMFILE) used to end the control server, and
    // with it the daemon.
    let ns = Netns::new();
    let d = Daemon::start_synced(&ns, &[]);
    let st = Command::new("prlimit")
        .arg(format!("--pid={}", d.pid()))
        .arg("--nofile=40:40")
        .status()
        .unwrap();
    assert!(st.success());
    let idle: Vec<UnixStream> = (0..60)
        .map(|_| UnixStream::connect(d.socket()).unwrap())
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    assert!(d.exited().is_none(), "daemon exited:\n{}", d.log_tail(20));
    drop(idle);
    let ok = route_mirror_tests::poll(Duration::from_secs(15), || {
        d.cli(&["stats", "--json"]).status.success().then_some(())
    });
    assert!(ok.is_some(), "control socket dead:\n{}", d.log_tail(20));
    ns.ip(&["route", "add", "203.0.113.0/24", "via", "198.18.1.2"]);
    d.diff_empty();
}

/// `lookup --batch` end to end, over more input than one chunk: one output line per
/// input line in input order, bad lines reported with their line number while the
/// stream goes on, answers equal to single lookups, errors counted in the exit status.
#[test]
fn batch_lookup_answers_every_line_in_order() {
    let ns = Netns::new();
    ns.load_batch(batch("v4-10k"));
    ns.ip(&["route", "add", "blackhole", "203.0.113.0/24"]);
    ns.ip(&[
        "-6",
        "route",
        "add",
        "2001:db8:77::/48",
        "via",
        "2001:2:0:1::2",
    ]);
    let d = Daemon::start_synced(&ns, &[]);
    let dir = TempDir::new("rm-batch").unwrap();

    // 40,000 pseudo-random IPv4 addresses (several chunks), with bad and special
    // lines at known places.
    let mut x: u32 = 12345;
    let mut lines: Vec<String> = (0..40_000)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            std::net::Ipv4Addr::from(x).to_string()
        })
        .collect();
    lines[0] = "203.0.113.7".into();
    lines[1] = "not an address".into();
    lines[20_000] = "2001:db8:77::1".into();
    lines[20_001] = "10.999.1.1".into();
    lines[39_999] = "  198.18.1.2  ".into();
    let input = dir.path().join("addrs");
    std::fs::write(&input, lines.join("\n")).unwrap();

    let out = d.cli(&["lookup", "--batch", input.to_str().unwrap(), "--json"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "errors must show in the exit status"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("2 of 40000 lines"), "{stderr}");
    let results: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(results.len(), lines.len(), "one result line per input line");
    assert_eq!(results[0]["prefix"], "203.0.113.0/24");
    assert_eq!(results[0]["type"], "blackhole");
    assert_eq!(results[1]["line"], 2);
    assert_eq!(results[1]["error"], "not an IP address");
    assert_eq!(results[20_000]["prefix"], "2001:db8:77::/48");
    assert_eq!(results[20_001]["line"], 20_002);
    assert_eq!(results[39_999]["addr"], "198.18.1.2");
    // Every 997th answer equals the single lookup of the same address.
    for (i, line) in lines.iter().enumerate().step_by(997).skip(1) {
        let single = d.cli_json(&["lookup", line.trim()]);
        assert_eq!(results[i]["addr"], line.trim(), "line {}", i + 1);
        assert_eq!(
            results[i]["prefix"],
            single["prefix"],
            "line {}: batch {} vs single {}",
            i + 1,
            results[i],
            single
        );
    }
    // The text format has the same number of lines, and answers from stdin too.
    let text = Command::new(daemon_bin())
        .args(["lookup", "--batch", "-", "--socket"])
        .arg(d.socket())
        .stdin(std::fs::File::open(&input).unwrap())
        .output()
        .unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    assert_eq!(text.lines().count(), lines.len());
    assert!(
        text.starts_with("203.0.113.7 blackhole 203.0.113.0/24"),
        "{}",
        &text[..80]
    );
    assert!(text.lines().nth(1).unwrap().starts_with("line 2: "));
}
