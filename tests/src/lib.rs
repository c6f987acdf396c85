//! Test harness for route-mirror integration tests.
//!
//! * [`Netns`] — a throwaway network namespace with the bench topology of
//!   `shared/routes/netns.sh` (lo up, veth1<->veth1p 198.18.1.1/24 +
//!   2001:2:0:1::1/64, veth2<->veth2p 198.18.2.1/24 + 2001:2:0:2::1/64), deleted
//!   on drop.
//! * [`Daemon`] — a `route-mirror run --netns NS` process with its own control
//!   socket and log file in a private temp dir, killed on drop.
//! * [`NatsServer`] — `nats-server -js` on loopback for the NATS export, killed on
//!   drop, and daemons publishing to it.
//!
//! Everything kernel-related happens inside namespaces created here; the host's
//! own routes, links and addresses are never touched. Tests need root and
//! iproute2; [`require_root`] panics with a clear message otherwise.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

mod nats;
pub use nats::{rebuild_from_stream, stream_messages, NatsServer};

/// Default timeout for one CLI call.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(30);
/// Timeout for `diff` (it includes a barrier, which can take a while after big loads).
pub const DIFF_TIMEOUT: Duration = Duration::from_secs(180);
/// Default timeout for the initial sync.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(60);

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn next_id() -> usize {
    COUNTER.fetch_add(1, Ordering::SeqCst)
}

// ---------------------------------------------------------------------------
// locations

/// The cargo workspace root (parent of this crate).
pub fn workspace_root() -> PathBuf {
    // Runtime CARGO_MANIFEST_DIR (set by `cargo test`) first, then compile time.
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .filter(|p| p.join("Cargo.toml").is_file())
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .parent()
        .expect("tests/ lives one level below the workspace root")
        .to_path_buf()
}

/// The shared data directory: `$ROUTE_MIRROR_SHARED`, else `<repo root>/../shared`
/// (if that has no `routes/`, the nearest `shared/routes` further up, for nested
/// git worktrees).
pub fn shared_dir() -> PathBuf {
    shared_dir_from(std::env::var_os("ROUTE_MIRROR_SHARED").as_deref())
}

fn shared_dir_from(var: Option<&OsStr>) -> PathBuf {
    match var {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => {
            let root = workspace_root();
            let default = root.join("..").join("shared");
            if default.join("routes").is_dir() {
                return default;
            }
            // A git worktree nested deeper than the main checkout (e.g.
            // /work/wt/NAME next to /work/main): look further up.
            root.ancestors()
                .skip(2)
                .map(|a| a.join("shared"))
                .find(|s| s.join("routes").is_dir())
                .unwrap_or(default)
        }
    }
}

/// Path of a route batch file in `shared/routes/`, e.g. `batch("v4-10k")`.
/// Panics if the file does not exist.
pub fn batch(name: &str) -> PathBuf {
    let file = if name.ends_with(".gz") {
        name.to_string()
    } else {
        format!("{name}.batch.gz")
    };
    let p = shared_dir().join("routes").join(file);
    assert!(
        p.is_file(),
        "route batch {} not found (set ROUTE_MIRROR_SHARED to the shared/ directory)",
        p.display()
    );
    p
}

/// The daemon binary: `$ROUTE_MIRROR_BIN`, else `<target dir>/debug/route-mirror`.
pub fn daemon_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ROUTE_MIRROR_BIN").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let target = match std::env::var_os("CARGO_TARGET_DIR").filter(|p| !p.is_empty()) {
        Some(t) => {
            let t = PathBuf::from(t);
            if t.is_absolute() {
                t
            } else {
                workspace_root().join(t)
            }
        }
        None => workspace_root().join("target"),
    };
    target.join("debug").join("route-mirror")
}

/// The Python of the venv holding the third-party test clients (pygnmi, nats-py):
/// `$ROUTE_MIRROR_TEST_PYTHON`, else `<workspace>/target/test-venv/bin/python`
/// (`cargo xtask test` makes it). `None` (with a note) when absent outside CI; in CI
/// its absence fails the test.
pub fn test_python() -> Option<PathBuf> {
    let p = std::env::var_os("ROUTE_MIRROR_TEST_PYTHON")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/test-venv/bin/python"));
    if p.is_file() {
        return Some(p);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "test venv {} missing: `cargo xtask test` installs it",
        p.display()
    );
    eprintln!(
        "skipping: no test venv at {} (run `cargo xtask test` once to create it)",
        p.display()
    );
    None
}

/// promtool (lints Prometheus scrapes): `$PROMTOOL`, else `promtool` on PATH, else
/// `<workspace>/target/tools/usr/bin/promtool` (`cargo xtask test` unpacks it there from
/// Debian's prometheus package). `None` (with a note) when absent outside CI; in CI its
/// absence fails the test.
pub fn promtool() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("PROMTOOL")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from),
        Some(PathBuf::from("promtool")),
        Some(workspace_root().join("target/tools/usr/bin/promtool")),
    ];
    let runs = |p: &PathBuf| {
        Command::new(p)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if let Some(p) = candidates.into_iter().flatten().find(runs) {
        return Some(p);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "promtool missing: `cargo xtask test` unpacks it into target/tools (or set PROMTOOL)"
    );
    eprintln!("skipping: no promtool (run `cargo xtask test` once, or set PROMTOOL)");
    None
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
/// GET http://ADDR/metrics over loopback (the daemon serves metrics in its own
/// namespace, for every namespace it mirrors).
pub fn scrape(addr: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

/// The body of a scrape (what follows the HTTP headers).
pub fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// `promtool check metrics` on a scrape's body: its complaints (empty when clean).
pub fn promtool_complaints(promtool: &std::path::Path, text: &str) -> String {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && said.trim().is_empty() {
        String::new()
    } else {
        format!("promtool {}: {said}", out.status)
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0")
}

// ---------------------------------------------------------------------------
// prerequisites

/// Panics with a clear message unless we run as root and `ip` (iproute2) works.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "route-mirror integration tests need root (they create network namespaces); \
         run them as root, e.g. `sudo -E cargo test --workspace` or `cargo xtask test` as root"
    );
    let ok = Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "`ip` (iproute2) not found: install it (`apt-get install -y iproute2`) or run `cargo xtask test`"
    );
}

// ---------------------------------------------------------------------------
// process helpers

fn render(prog: &OsStr, args: &[&OsStr]) -> String {
    let mut s = prog.to_string_lossy().into_owned();
    for a in args {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Run a command to completion; Ok(stdout) on success, Err with stderr otherwise.
fn run_checked(cmd: &mut Command) -> Result<String> {
    let args: Vec<&OsStr> = cmd.get_args().collect();
    let line = render(cmd.get_program(), &args);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("failed to start `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Poll `f` every 50 ms until it returns `Some`, or `timeout` elapses (then `None`).
/// `f` is always called at least once.
pub fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// The last `n` lines of `text`.
pub fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join("\n")
}

// ---------------------------------------------------------------------------
// Netns

/// A uniquely named network namespace (`rmtest-<pid>-<counter>`) with the
/// topology of `netns.sh`. Deleted on drop (kills nothing itself: drop the
/// [`Daemon`] running inside first — declare it after the `Netns`).
pub struct Netns {
    name: String,
}

impl Netns {
    /// Create the namespace and its topology. Panics on failure.
    pub fn new() -> Netns {
        Self::try_new().unwrap_or_else(|e| panic!("creating test namespace: {e:#}"))
    }

    /// Fallible variant of [`Netns::new`].
    pub fn try_new() -> Result<Netns> {
        require_root();
        let name = format!("rmtest-{}-{}", std::process::id(), next_id());
        if let Err(e) = run_checked(Command::new("ip").args(["netns", "add", &name])) {
            // A stale namespace from an earlier run with the same pid: replace it.
            let _ = run_checked(Command::new("ip").args(["netns", "del", &name]));
            run_checked(Command::new("ip").args(["netns", "add", &name]))
                .with_context(|| format!("after first attempt failed with: {e:#}"))?;
        }
        // From here on Drop deletes the namespace, also on a failed setup.
        let ns = Netns { name };
        ns.setup()?;
        Ok(ns)
    }

    fn setup(&self) -> Result<()> {
        self.try_ip(&["link", "set", "lo", "up"])?;
        // No duplicate address detection on the links made below: a link-local
        // address finishing DAD sends its own RTM_NEWADDR (and a local route) a second
        // or two after the link comes up, which under load lands in the middle of a
        // test and is then the "next event" a test knob counts (seen: the
        // drop-events test dropping a DAD completion instead of its route add).
        for scope in ["default", "all"] {
            let key = format!("net.ipv6.conf.{scope}.accept_dad=0");
            self.try_exec(&["sysctl", "-qw", &key])?;
        }
        for i in 1..=2 {
            let veth = format!("veth{i}");
            let peer = format!("veth{i}p");
            let v4 = format!("198.18.{i}.1/24");
            let v6 = format!("2001:2:0:{i}::1/64");
            self.try_ip(&["link", "add", &veth, "type", "veth", "peer", "name", &peer])?;
            self.try_ip(&["link", "set", &peer, "up"])?;
            self.try_ip(&["link", "set", &veth, "up"])?;
            self.try_ip(&["addr", "add", &v4, "dev", &veth])?;
            self.try_ip(&["addr", "add", &v6, "dev", &veth, "nodad"])?;
        }
        // Keep IPv6 addresses when a link goes down (link-down tests only
        // measure route removal).
        self.try_exec(&["sysctl", "-qw", "net.ipv6.conf.all.keep_addr_on_down=1"])?;
        Ok(())
    }

    /// The namespace name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NAME ARGS..` → stdout; panics with the command's stderr on error.
    pub fn ip(&self, args: &[&str]) -> String {
        self.try_ip(args).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Fallible variant of [`Netns::ip`].
    pub fn try_ip(&self, args: &[&str]) -> Result<String> {
        run_checked(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// `ip netns exec NAME ARGS..` → stdout; panics with stderr on error.
    pub fn exec(&self, args: &[&str]) -> String {
        self.try_exec(args).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Fallible variant of [`Netns::exec`].
    pub fn try_exec(&self, args: &[&str]) -> Result<String> {
        if args.is_empty() {
            bail!("Netns::exec: empty command");
        }
        run_checked(
            Command::new("ip")
                .args(["netns", "exec"])
                .arg(&self.name)
                .args(args),
        )
    }

    /// Adds `prefix` (`extra`, e.g. a metric, after it) with one hop via each veth
    /// peer, 198.18.1.2 and 198.18.2.2, at `weights`.
    pub fn add_two_hop_route(&self, prefix: &str, weights: [u32; 2], extra: &[&str]) {
        let [w1, w2] = weights.map(|w| w.to_string());
        let mut args = vec!["route", "add", prefix];
        args.extend_from_slice(extra);
        args.extend(["nexthop", "via", "198.18.1.2", "weight", &w1]);
        args.extend(["nexthop", "via", "198.18.2.2", "weight", &w2]);
        self.ip(&args);
    }

    /// Load a route batch: `zcat FILE | ip -n NAME -batch -` (plain files are
    /// passed to `-batch` directly). Panics on failure.
    pub fn load_batch(&self, path: impl AsRef<Path>) {
        let path = path.as_ref();
        self.try_load_batch(path)
            .unwrap_or_else(|e| panic!("loading {}: {e:#}", path.display()))
    }

    /// Fallible variant of [`Netns::load_batch`].
    pub fn try_load_batch(&self, path: &Path) -> Result<()> {
        if path.extension() != Some(OsStr::new("gz")) {
            run_checked(
                Command::new("ip")
                    .arg("-n")
                    .arg(&self.name)
                    .arg("-batch")
                    .arg(path)
                    .stdout(Stdio::null()),
            )?;
            return Ok(());
        }
        let mut zcat = Command::new("zcat")
            .arg(path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting zcat")?;
        let zout = zcat.stdout.take().expect("piped stdout");
        let ip = Command::new("ip")
            .arg("-n")
            .arg(&self.name)
            .args(["-batch", "-"])
            .stdin(zout)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output();
        let zstatus = zcat.wait().context("waiting for zcat")?;
        let ip = ip.context("running ip -batch")?;
        if !ip.status.success() {
            bail!(
                "ip -n {} -batch - failed ({}): {}",
                self.name,
                ip.status,
                tail_lines(&String::from_utf8_lossy(&ip.stderr), 20)
            );
        }
        if !zstatus.success() {
            bail!("zcat {} failed ({zstatus})", path.display());
        }
        Ok(())
    }

    /// Number of routes the kernel holds in this namespace for one family
    /// (`4` or `6`) over all tables, as listed by `ip -j route show table all`
    /// (multipath routes count once). Includes local/connected routes.
    pub fn kernel_route_count(&self, family: u8) -> usize {
        let fam = format!("-{family}");
        let out = self.ip(&["-j", &fam, "route", "show", "table", "all"]);
        let v: Value = serde_json::from_str(out.trim()).unwrap_or(Value::Array(vec![]));
        v.as_array().map_or(0, Vec::len)
    }
}

impl Default for Netns {
    fn default() -> Self {
        Netns::new()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let res = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output();
        match res {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "warning: ip netns del {} failed: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => eprintln!("warning: ip netns del {}: {e}", self.name),
        }
    }
}

// ---------------------------------------------------------------------------
// temp dir

/// A private temp dir, removed on drop unless the thread is panicking (then it
/// is kept for post-mortem and its path printed).
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> Result<TempDir> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}-{nanos}",
            std::process::id(),
            next_id()
        ));
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // ROUTE_MIRROR_KEEP_LOGS keeps every one (e.g. the logs of a daemon a test
        // restarted before it failed).
        if thread::panicking() || std::env::var_os("ROUTE_MIRROR_KEEP_LOGS").is_some() {
            eprintln!("(kept {} for inspection)", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

// ---------------------------------------------------------------------------
// Daemon

/// A `route-mirror run --netns NS --socket <tmp>/rm.sock` process.
/// Dropped: SIGTERM, SIGKILL after 2 s; dumps the log tail if panicking.
pub struct Daemon {
    child: Mutex<Option<Child>>,
    pid: u32,
    bin: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    netns: String,
    // Last field: dropped after the process is gone.
    dir: TempDir,
}

/// The event source the suite runs with: `$ROUTE_MIRROR_SOURCE` (netlink, ebpf or auto),
/// default netlink. `cargo xtask test` runs the core suite once per source.
pub fn suite_source() -> String {
    std::env::var("ROUTE_MIRROR_SOURCE")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "netlink".to_string())
}

/// `--source` (and a 64 MiB ring for eBPF, so parallel tests stay light on kernel
/// memory) unless the test passes its own.
fn source_args(extra: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    if !extra.contains(&"--source") {
        let s = suite_source();
        out.push("--source".to_string());
        out.push(s.clone());
        if s != "netlink" && !extra.contains(&"--ring-size") {
            out.push("--ring-size".to_string());
            out.push((64u64 << 20).to_string());
        }
    }
    out
}

/// Is the eBPF object embedded in the daemon binary (`route-mirror ebpf-status`-free
/// check: a `--source ebpf` daemon refuses to start without it)? Tests that need the
/// eBPF source skip when it is absent outside CI.
pub fn ebpf_object_present() -> bool {
    workspace_root()
        .join("route-mirror-ebpf/target/bpfel-unknown-none/release/route-mirror")
        .is_file()
}

impl Daemon {
    /// Start the daemon mirroring `ns`, with extra `run` arguments. Panics on failure.
    pub fn start(ns: &Netns, extra: &[&str]) -> Daemon {
        Self::try_start(ns, extra).unwrap_or_else(|e| panic!("starting daemon: {e:#}"))
    }

    /// Start the daemon and wait for its initial sync ([`SYNC_TIMEOUT`]).
    pub fn start_synced(ns: &Netns, extra: &[&str]) -> Daemon {
        let d = Self::start(ns, extra);
        d.wait_synced(SYNC_TIMEOUT);
        d
    }

    /// Fallible variant of [`Daemon::start`].
    pub fn try_start(ns: &Netns, extra: &[&str]) -> Result<Daemon> {
        Self::try_start_full(ns, None, extra, &[])
    }

    /// Like [`Daemon::start`] with extra environment variables for the daemon only
    /// (tests run in parallel threads: never set a knob in the test process itself).
    pub fn start_env(ns: &Netns, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        Self::try_start_env(ns, extra, env).unwrap_or_else(|e| panic!("starting daemon: {e:#}"))
    }

    /// Fallible variant of [`Daemon::start_env`].
    pub fn try_start_env(ns: &Netns, extra: &[&str], env: &[(&str, &str)]) -> Result<Daemon> {
        Self::try_start_full(ns, None, extra, env)
    }

    /// Like [`Daemon::try_start`], but listening on `socket` when given (e.g. the
    /// socket a killed daemon left behind) instead of a fresh one in its temp dir.
    pub fn try_start_at(ns: &Netns, socket: Option<&Path>, extra: &[&str]) -> Result<Daemon> {
        Self::try_start_full(ns, socket, extra, &[])
    }

    fn try_start_full(
        ns: &Netns,
        socket: Option<&Path>,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Daemon> {
        let bin = daemon_bin();
        if !bin.is_file() {
            bail!(
                "daemon binary {} not found: run `cargo build --workspace --bins` or set ROUTE_MIRROR_BIN",
                bin.display()
            );
        }
        let dir = TempDir::new("route-mirror-test")?;
        let socket = socket.map_or_else(|| dir.path().join("rm.sock"), Path::to_path_buf);
        let log = dir.path().join("daemon.log");
        let logf = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let logf2 = logf.try_clone()?;
        // Never pick up the host's /etc/route-mirror/route-mirror.toml.
        let config: &[&str] = if extra.contains(&"--config") {
            &[]
        } else {
            &["--config", "/dev/null"]
        };
        let child = Command::new(&bin)
            .arg("run")
            .arg("--netns")
            .arg(ns.name())
            .arg("--socket")
            .arg(&socket)
            .args(config)
            .args(source_args(extra))
            .args(extra)
            .env("RUST_BACKTRACE", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(logf2)
            .stderr(logf)
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        Ok(Daemon {
            pid: child.id(),
            child: Mutex::new(Some(child)),
            bin,
            socket,
            log,
            netns: ns.name().to_string(),
            dir,
        })
    }

    /// The daemon's pid (kept after it has been stopped).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    fn take_child(&self) -> Option<Child> {
        self.child.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn running(&self) -> bool {
        self.child
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn temp_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The last `n` lines of the daemon log.
    pub fn log_tail(&self, n: usize) -> String {
        let mut s = String::new();
        if let Ok(mut f) = File::open(&self.log) {
            // Only read the last 256 KiB.
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = f.seek(SeekFrom::Start(len.saturating_sub(256 * 1024)));
            let mut buf = Vec::new();
            let _ = f.read_to_end(&mut buf);
            s = String::from_utf8_lossy(&buf).into_owned();
        }
        tail_lines(&s, n)
    }

    /// `Some(status)` if the daemon process has exited.
    pub fn exited(&self) -> Option<ExitStatus> {
        self.child
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    fn context(&self) -> String {
        format!(
            "daemon pid {} in netns {}, log {}:\n--- daemon log tail ---\n{}\n-----------------------",
            self.pid(),
            self.netns,
            self.log.display(),
            self.log_tail(40)
        )
    }

    /// Run a client command against this daemon (`--socket` appended), with
    /// [`CLI_TIMEOUT`]. Panics if the command cannot be run or times out.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_timeout(args, CLI_TIMEOUT)
    }

    /// [`Daemon::cli`] with an explicit timeout.
    pub fn cli_timeout(&self, args: &[&str], timeout: Duration) -> Output {
        self.try_cli(args, timeout)
            .unwrap_or_else(|e| panic!("{e:#}\n{}", self.context()))
    }

    fn try_cli(&self, args: &[&str], timeout: Duration) -> Result<Output> {
        // stdout/stderr go to files, so a chatty command cannot block on a pipe.
        let id = next_id();
        let out_p = self.dir.path().join(format!("cli-{id}.out"));
        let err_p = self.dir.path().join(format!("cli-{id}.err"));
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .arg("--socket")
            .arg(&self.socket)
            .stdin(Stdio::null())
            .stdout(File::create(&out_p)?)
            .stderr(File::create(&err_p)?);
        let line = format!(
            "route-mirror {} --socket {}",
            args.join(" "),
            self.socket.display()
        );
        let mut child = cmd.spawn().with_context(|| format!("spawning `{line}`"))?;
        let status = match poll(timeout, || child.try_wait().ok().flatten()) {
            Some(s) => s,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("`{line}` did not finish within {timeout:?}");
            }
        };
        let out = Output {
            status,
            stdout: fs::read(&out_p).unwrap_or_default(),
            stderr: fs::read(&err_p).unwrap_or_default(),
        };
        let _ = fs::remove_file(&out_p);
        let _ = fs::remove_file(&err_p);
        Ok(out)
    }

    /// Run a client command with `--json` (appended if missing) and parse its
    /// stdout. Exit codes 0 and 1 are accepted (e.g. `lookup` prints `null` and
    /// exits 1 when there is no route); anything else panics.
    pub fn cli_json(&self, args: &[&str]) -> Value {
        self.cli_json_timeout(args, CLI_TIMEOUT)
    }

    /// [`Daemon::cli_json`] with an explicit timeout.
    pub fn cli_json_timeout(&self, args: &[&str], timeout: Duration) -> Value {
        let mut v: Vec<&str> = args.to_vec();
        if !v.contains(&"--json") {
            v.push("--json");
        }
        let out = self.cli_timeout(&v, timeout);
        let code = out.status.code();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !matches!(code, Some(0) | Some(1)) {
            panic!(
                "`route-mirror {}` exited with {}\nstdout: {stdout}\nstderr: {stderr}\n{}",
                v.join(" "),
                out.status,
                self.context()
            );
        }
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "`route-mirror {}` printed invalid JSON ({e}), exit {}\nstdout: {stdout}\nstderr: {stderr}\n{}",
                v.join(" "),
                out.status,
                self.context()
            )
        })
    }

    /// `stats --json`.
    pub fn stats(&self) -> Value {
        self.cli_json(&["stats"])
    }

    /// `lookup ADDR [--table T] --json` → the route object, or `None` (JSON null).
    pub fn lookup(&self, addr: &str, table: Option<&str>) -> Option<Value> {
        let mut args = vec!["lookup", addr];
        if let Some(t) = table {
            args.extend(["--table", t]);
        }
        let v = self.cli_json(&args);
        (!v.is_null()).then_some(v)
    }

    /// Poll `lookup` until `pred` holds for its result (`None` = no route);
    /// panics with the last result and the log tail after `timeout`.
    pub fn wait_lookup(
        &self,
        addr: &str,
        table: Option<&str>,
        timeout: Duration,
        what: &str,
        mut pred: impl FnMut(Option<&Value>) -> bool,
    ) -> Option<Value> {
        let mut last = None;
        let ok = poll(timeout, || {
            let r = self.lookup(addr, table);
            let hit = pred(r.as_ref());
            last = Some(r);
            hit.then_some(())
        });
        let last = last.flatten();
        if ok.is_none() {
            panic!(
                "lookup {addr} (table {table:?}) did not satisfy `{what}` within {timeout:?}; last result: {}\n{}",
                last.as_ref().map_or("null".to_string(), Value::to_string),
                self.context()
            );
        }
        last
    }

    /// Poll `stats --json` until `"synced": true`; panics on timeout or if the
    /// daemon exits.
    pub fn wait_synced(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                panic!("daemon exited before sync ({status})\n{}", self.context());
            }
            let out = self.cli(&["stats", "--json"]);
            let last = if out.status.success() {
                let s = String::from_utf8_lossy(&out.stdout).into_owned();
                if let Ok(v) = serde_json::from_str::<Value>(s.trim()) {
                    if v.get("synced").and_then(Value::as_bool) == Some(true) {
                        return;
                    }
                }
                s
            } else {
                format!(
                    "exit {}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                )
            };
            if Instant::now() >= deadline {
                panic!(
                    "daemon not synced within {timeout:?}; last `stats --json`: {last}\n{}",
                    self.context()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// `diff` (exit 0 expected): panics with its output and the log tail otherwise.
    pub fn diff_empty(&self) {
        let out = self.cli_timeout(&["diff"], DIFF_TIMEOUT);
        if out.status.code() != Some(0) {
            panic!(
                "`route-mirror diff` exited with {} (expected 0: mirror == kernel)\n--- stdout ---\n{}\n--- stderr ---\n{}\n{}",
                out.status,
                tail_lines(&String::from_utf8_lossy(&out.stdout), 60),
                tail_lines(&String::from_utf8_lossy(&out.stderr), 20),
                self.context()
            );
        }
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = self.pid;
        if self.running() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe {
                libc::kill(pid as libc::pid_t, sig);
            }
        }
    }

    /// SIGSTOP the daemon.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT the daemon.
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// SIGKILL the daemon and reap it.
    pub fn kill9(&self) {
        if let Some(mut c) = self.take_child() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then SIGKILL after 2 s; returns the exit status if it was running.
    pub fn stop(&self) -> Option<ExitStatus> {
        let mut c = self.take_child()?;
        if let Ok(Some(s)) = c.try_wait() {
            return Some(s);
        }
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
            libc::kill(c.id() as libc::pid_t, libc::SIGCONT); // in case it was paused
        }
        match poll(Duration::from_secs(2), || c.try_wait().ok().flatten()) {
            Some(s) => Some(s),
            None => {
                let _ = c.kill();
                c.wait().ok()
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let status = self.stop();
        if thread::panicking() {
            eprintln!(
                "=== route-mirror daemon (netns {}, exit {:?}), log {} ===\n{}\n=== end of daemon log ===",
                self.netns,
                status,
                self.log.display(),
                self.log_tail(80)
            );
        }
    }
}

// ---------------------------------------------------------------------------
// JSON helpers for route objects

/// `nexthops[*].gateway` of a route object (missing gateways skipped).
pub fn gateways(route: &Value) -> Vec<String> {
    nexthops(route)
        .iter()
        .filter_map(|nh| {
            nh.get("gateway")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .collect()
}

/// `nexthops` of a route object (empty if absent).
pub fn nexthops(route: &Value) -> Vec<Value> {
    route
        .get("nexthops")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// String field of a route object (`prefix`, `type`, `protocol`, ...).
pub fn str_field<'a>(route: &'a Value, key: &str) -> Option<&'a str> {
    route.get(key).and_then(Value::as_str)
}

/// Unsigned field of a route object (`table`, `metric`, ...).
pub fn u64_field(route: &Value, key: &str) -> Option<u64> {
    route.get(key).and_then(Value::as_u64)
}

/// Does the (optional) lookup result have this prefix and exactly these gateways?
pub fn is_route_via(route: Option<&Value>, prefix: &str, gws: &[&str]) -> bool {
    route.is_some_and(|r| {
        let mut got = gateways(r);
        got.sort();
        let mut want: Vec<String> = gws.iter().map(|s| s.to_string()).collect();
        want.sort();
        str_field(r, "prefix") == Some(prefix) && got == want
    })
}

/// Is the lookup result absent or a route for another prefix?
pub fn is_not_prefix(route: Option<&Value>, prefix: &str) -> bool {
    route.is_none_or(|r| str_field(r, "prefix") != Some(prefix))
}

/// Human-readable error helper for tests that prefer `Result`.
pub fn ensure(cond: bool, msg: impl std::fmt::Display) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(anyhow!("{msg}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shared_dir_env_and_fallback() {
        assert_eq!(
            shared_dir_from(Some(OsStr::new("/x/shared"))),
            PathBuf::from("/x/shared")
        );
        let fb = shared_dir_from(None);
        assert!(fb.ends_with("shared"), "{}", fb.display());
        assert_eq!(shared_dir_from(Some(OsStr::new(""))), fb);
    }

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail_lines("a", 5), "a");
        assert_eq!(tail_lines("", 3), "");
    }

    #[test]
    fn poll_returns_value_or_none() {
        let mut n = 0;
        let r = poll(Duration::from_secs(2), || {
            n += 1;
            (n >= 3).then_some(n)
        });
        assert_eq!(r, Some(3));
        let t0 = Instant::now();
        assert_eq!(poll(Duration::from_millis(120), || None::<()>), None);
        assert!(t0.elapsed() >= Duration::from_millis(120));
    }

    #[test]
    fn route_json_helpers() {
        let r = json!({
            "prefix": "203.0.113.0/24", "table": 254, "metric": 10, "type": "unicast",
            "nexthops": [
                {"gateway": "198.18.2.2", "dev": "veth2", "weight": 3},
                {"gateway": "198.18.1.2", "dev": "veth1", "weight": 1}
            ]
        });
        assert_eq!(gateways(&r), vec!["198.18.2.2", "198.18.1.2"]);
        assert_eq!(u64_field(&r, "table"), Some(254));
        assert_eq!(str_field(&r, "type"), Some("unicast"));
        assert!(is_route_via(
            Some(&r),
            "203.0.113.0/24",
            &["198.18.1.2", "198.18.2.2"]
        ));
        assert!(!is_route_via(Some(&r), "203.0.113.0/24", &["198.18.1.2"]));
        assert!(!is_route_via(None, "203.0.113.0/24", &[]));
        assert!(is_not_prefix(None, "203.0.113.0/24"));
        assert!(is_not_prefix(
            Some(&json!({"prefix": "203.0.0.0/16"})),
            "203.0.113.0/24"
        ));
        assert!(!is_not_prefix(Some(&r), "203.0.113.0/24"));
        assert!(nexthops(&json!({"type": "blackhole"})).is_empty());
    }

    #[test]
    fn unique_ids() {
        let a = next_id();
        let b = next_id();
        assert_ne!(a, b);
    }

    #[test]
    fn temp_dir_is_removed() {
        let p = {
            let d = TempDir::new("rm-harness-unit").unwrap();
            assert!(d.path().is_dir());
            d.path().to_path_buf()
        };
        assert!(!p.exists());
    }
}
