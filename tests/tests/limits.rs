//! Resource limits and privileges: a receive buffer that cannot be granted, and a
//! daemon started without root. A clear error or a reported fallback, never a silent
//! wrong mirror.

use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use route_mirror_tests::{batch, daemon_bin, poll, Netns, TempDir};
use serde_json::Value;

/// A daemon run as uid/gid 65534 inside `ns` (through `ip netns exec`, so it needs
/// no setns itself), killed on drop.
struct Unprivileged {
    child: Child,
    dir: TempDir,
}

impl Unprivileged {
    fn start(ns: &Netns, extra: &[&str]) -> Unprivileged {
        let dir = TempDir::new("rm-unpriv").unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let bin = dir.path().join("route-mirror");
        std::fs::copy(daemon_bin(), &bin).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        std::fs::set_permissions(
            dir.path().join("log"),
            std::fs::Permissions::from_mode(0o666),
        )
        .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name()])
            .args([
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
            ])
            .arg(&bin)
            .arg("run")
            .arg("--socket")
            .arg(dir.path().join("rm.sock"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Unprivileged { child, dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// A client command as root (always allowed).
    fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(daemon_bin())
            .args(args)
            .arg("--socket")
            .arg(self.dir.path().join("rm.sock"))
            .output()
            .unwrap()
    }

    fn stats(&self) -> Value {
        let out = self.cli(&["stats", "--json"]);
        assert!(out.status.success(), "{out:?}\n{}", self.log());
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for Unprivileged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rmem_max() -> usize {
    std::fs::read_to_string("/proc/sys/net/core/rmem_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn rcvbuf_that_cannot_be_forced_is_logged_and_reported() {
    let ns = Netns::new();
    let req = 256 << 20;
    assert!(rmem_max() < req, "rmem_max too large for this test");
    let d = Unprivileged::start(&ns, &["--rcvbuf", &req.to_string()]);
    let synced = poll(Duration::from_secs(30), || {
        let out = d.cli(&["stats", "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["synced"] == true).then_some(v)
    });
    let v = synced.unwrap_or_else(|| panic!("unprivileged daemon never synced:\n{}", d.log()));
    assert_eq!(v["rcvbuf_forced"], false, "{v}");
    assert_eq!(v["rcvbuf_requested"], req, "{v}");
    let granted = v["rcvbuf"].as_u64().unwrap() as usize;
    assert!(granted <= 2 * rmem_max(), "granted {granted}: {v}");
    let log = d.log();
    assert!(
        log.contains("smaller than requested") && log.contains("SO_RCVBUFFORCE refused"),
        "{log}"
    );
    // The smaller buffer is a documented fallback, not a wrong mirror.
    ns.load_batch(batch("v4-10k"));
    let out = d.cli(&["diff"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        d.log()
    );
    assert!(d.stats()["routes_total"].as_u64().unwrap() >= 10_000);
}

#[test]
fn non_root_start_fails_with_a_clear_error() {
    let ns = Netns::new();
    let tmp = TempDir::new("rm-nonroot").unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = tmp.path().join("route-mirror");
    std::fs::copy(daemon_bin(), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let nobody = |args: &[&str]| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns.name()])
            .args([
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
            ])
            .arg(&bin)
            .args(args);
        let out = c.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Entering a namespace needs root.
    let (code, err) = nobody(&[
        "run",
        "--netns",
        ns.name(),
        "--socket",
        "/nonexistent/x.sock",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("needs root"), "{err}");
    // The default socket directory is root's.
    let (code, err) = nobody(&["run", "--socket", "/run/route-mirror-test-denied/rm.sock"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("Permission denied") && err.contains("not running as root"),
        "{err}"
    );
}
