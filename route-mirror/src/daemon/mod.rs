//! `route-mirror run`: wires the netlink source, the core loop and the control socket.

pub mod core;
pub mod service;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use serde::Serialize;
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::config::ConfigSource;
use crate::export::bpf_fib::BpfFib;
use crate::export::hub::{Exports, Hub};
use crate::mirror::Mirror;
use crate::netlink::decode::DecodeCounters;
use crate::netlink::socket::NlSocket;
use crate::reconcile::{ScanReason, ScanReport, ScanScope, Verdicts};
use route_mirror_common::groups;

/// Longest a query waits for the mirror to catch up (a full resync of a large table
/// takes a few seconds; this bounds a stuck daemon, not a slow one).
const BARRIER_TIMEOUT: Duration = Duration::from_secs(300);

/// Settings of `route-mirror run`, resolved from the configuration file and flags.
#[derive(Debug, Clone)]
pub struct Config {
    pub netns: Option<String>,
    pub socket: PathBuf,
    pub scan_interval: Duration,
    /// Netlink receive buffer in bytes.
    pub rcvbuf: usize,
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Where notifications come from.
    pub source: SourceChoice,
    /// eBPF ring buffer size in bytes (a power of two).
    pub ring_size: u64,
    /// Tables of the pinned BPF FIB (empty: none).
    pub bpf_fib_tables: Vec<u32>,
}

/// `--source`: which event source to use.
pub use crate::config::SourceKind as SourceChoice;

impl Config {
    /// One instance per mirrored namespace (`"all"` expanded now), or one for the
    /// daemon's own namespace.
    pub fn resolve(c: &crate::config::Config) -> Result<Vec<Config>> {
        let names = crate::config::expand_netns(&c.netns).context("listing /run/netns")?;
        let names: Vec<Option<String>> = if names.is_empty() {
            if c.netns.is_empty() {
                vec![None]
            } else {
                anyhow::bail!("netns = \"all\", but there is no named namespace in /run/netns")
            }
        } else {
            names.into_iter().map(Some).collect()
        };
        Ok(names
            .into_iter()
            .map(|netns| Config {
                socket: c
                    .socket
                    .clone()
                    .unwrap_or_else(|| crate::ctl::default_socket(netns.as_deref())),
                netns,
                scan_interval: Duration::from_secs_f64(c.scan_interval),
                rcvbuf: c.rcvbuf,
                metrics_listen: c.metrics_listen,
                source: c.source,
                ring_size: c.ring_size as u64,
                bpf_fib_tables: c.bpf_fib_table_ids(),
            })
            .collect())
    }
}

/// Changes the log filter of the running daemon.
pub type LogReload = Box<dyn Fn(&str) -> Result<()> + Send + Sync>;

/// What a reload did.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadReport {
    pub path: PathBuf,
    /// Keys whose new values are in effect now.
    pub applied: Vec<&'static str>,
    /// Keys that changed in the file but take effect only after a restart.
    pub restart_required: Vec<&'static str>,
}

/// Configuration state a reload needs (one per process, shared by every namespace).
pub struct Reloadable {
    pub source: ConfigSource,
    /// The configuration in effect (live keys updated by reloads).
    pub current: Mutex<crate::config::Config>,
    pub log: Option<LogReload>,
    /// The mirrored namespaces a reload applies to.
    pub instances: std::sync::OnceLock<Vec<std::sync::Weak<Shared>>>,
}

/// Requests to the core loop.
pub enum Command {
    Scan {
        scope: ScanScope,
        reason: ScanReason,
        reply: Option<oneshot::Sender<ScanReport>>,
    },
    /// Answered once every message queued before it was applied and no scan is due.
    Barrier(oneshot::Sender<()>),
    /// Test knob: discard the next N event messages (to prove the prune repairs them).
    DropEvents(u64),
    /// A reload changed the period of full scans.
    SetScanInterval(Duration),
    Shutdown,
}

/// Counters and state the core publishes for `stats`.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Status {
    pub synced: bool,
    pub initial_sync_ms: Option<f64>,
    pub events_applied: u64,
    pub events_dropped_by_request: u64,
    #[serde(skip)]
    pub last_event: Option<SystemTime>,
    /// Last time the core loop went round (the systemd watchdog pings only while recent).
    #[serde(skip)]
    pub heartbeat: Option<std::time::Instant>,
    /// Last time the core had applied everything queued and had no scan to run.
    #[serde(skip)]
    pub caught_up: Option<SystemTime>,
    pub enobufs: u64,
    pub resyncs: u64,
    pub scans: u64,
    /// Completed scans per reason (`initial`, `periodic`, `overrun`, ...).
    pub scans_by_reason: std::collections::BTreeMap<String, u64>,
    pub verdicts: Verdicts,
    pub object_verdicts: Verdicts,
    pub last_scan: Option<ScanReport>,
    pub scan_in_progress: Option<(ScanReason, u64)>,
    pub scan_pending: bool,
    pub decode: DecodeCounters,
    /// Receive buffer the kernel granted (after doubling), as last set.
    pub rcvbuf: usize,
    /// `--rcvbuf` as requested.
    pub rcvbuf_requested: usize,
    /// SO_RCVBUFFORCE was allowed (else SO_RCVBUF, capped by net.core.rmem_max).
    pub rcvbuf_forced: bool,
    /// Notifications the kernel dropped without reporting ENOBUFS (socket congested).
    pub silent_drops: u64,
    /// Netlink sockets replaced because a dump stalled after an overrun.
    pub socket_resets: u64,
    /// Watchers dropped for falling behind.
    pub watchers_dropped: u64,
    /// Control requests that did not parse (garbage, truncated, oversized, timed out).
    pub bad_requests: u64,
    /// Control clients refused because they are not root (SO_PEERCRED).
    pub refused_peers: u64,
    /// Control clients refused because too many were being served.
    pub busy_refusals: u64,
    /// Active event source: "ebpf" or "netlink".
    pub source: &'static str,
    /// Why `auto` fell back to netlink, if it did.
    pub source_fallback: Option<String>,
    /// eBPF ring statistics (eBPF source only).
    pub ring: Option<crate::ebpf::RingStats>,
    /// Pinned BPF FIB counters (`--bpf-fib` only).
    pub bpf_fib: Option<crate::export::bpf_fib::BpfFibStats>,
}

/// State shared between the core thread and the control socket.
pub struct Shared {
    pub mirror: Arc<RwLock<Mirror>>,
    pub status: Mutex<Status>,
    pub netns: Option<String>,
    pub started: SystemTime,
    /// The change funnel's subscriptions: `watch` clients and feeds ([`crate::export`]).
    pub exports: Hub,
    /// Set when the daemon was started from a configuration it can re-read.
    pub reloadable: Option<Arc<Reloadable>>,
    commands: Mutex<Sender<Command>>,
    wake: OwnedFd,
}

/// A non-blocking eventfd (wakes the core's poll).
fn eventfd() -> std::io::Result<OwnedFd> {
    // SAFETY: eventfd returns a new fd or -1.
    let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if efd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: efd is a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(efd) })
}

impl Shared {
    /// State around `mirror` with no core loop behind it: the control-socket code
    /// ([`crate::ctl`]) then serves a mirror the caller fills and changes itself
    /// (tests, benchmarks, embedding). Commands to the core fail.
    pub fn detached(mirror: Mirror) -> std::io::Result<Shared> {
        let mirror = Arc::new(RwLock::new(mirror));
        Ok(Shared {
            exports: Hub::new(mirror.clone()),
            mirror,
            status: Mutex::new(Status::default()),
            netns: None,
            started: SystemTime::now(),
            reloadable: None,
            commands: Mutex::new(mpsc::channel().0),
            wake: eventfd()?,
        })
    }

    /// Sends a command to the core and wakes it.
    pub fn command(&self, c: Command) -> Result<()> {
        self.commands
            .lock()
            .expect("command lock")
            .send(c)
            .map_err(|_| anyhow::anyhow!("the core loop has stopped"))?;
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd.
        unsafe {
            libc::write(
                self.wake.as_raw_fd(),
                &one as *const u64 as *const libc::c_void,
                8,
            )
        };
        Ok(())
    }

    /// Waits until the netlink socket is readable, a command arrives or `ms` pass.
    fn wait(&self, sock: i32, ring: Option<i32>, ms: i32) -> std::io::Result<()> {
        let mut fds = [
            libc::pollfd {
                fd: sock,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: ring.unwrap_or(-1), // negative fds are ignored by poll
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: three valid pollfds.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 3, ms) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        Ok(())
    }

    fn clear_wake(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads at most 8 bytes into a live u64; the eventfd is non-blocking.
        unsafe {
            libc::read(
                self.wake.as_raw_fd(),
                &mut v as *mut u64 as *mut libc::c_void,
                8,
            )
        };
    }

    /// Waits until the mirror has applied everything the kernel queued so far.
    pub async fn barrier(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::Barrier(tx))?;
        tokio::time::timeout(BARRIER_TIMEOUT, rx)
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "the mirror did not catch up within {} s",
                    BARRIER_TIMEOUT.as_secs()
                )
            })?
            .context("core loop stopped before the barrier")
    }
}

/// Re-reads the configuration: applies what can change live, reports what needs a
/// restart. An invalid file changes nothing.
pub fn reload(shared: &Shared) -> Result<ReloadReport> {
    let r = shared
        .reloadable
        .as_ref()
        .context("this daemon was not started from a configuration file it can re-read")?;
    let new = r.source.effective()?;
    let mut current = r.current.lock().expect("config lock");
    let (applied, restart_required) = current.changes(&new);
    if applied.contains(&"log_level") {
        if let Some(log) = &r.log {
            log(&new.log_level)?;
        }
        current.log_level = new.log_level.clone();
    }
    if applied.contains(&"scan_interval") {
        let d = Duration::from_secs_f64(new.scan_interval);
        let instances = r.instances.get().map(Vec::as_slice).unwrap_or_default();
        if instances.is_empty() {
            shared.command(Command::SetScanInterval(d))?;
        }
        for i in instances.iter().filter_map(std::sync::Weak::upgrade) {
            i.command(Command::SetScanInterval(d))?;
        }
        current.scan_interval = new.scan_interval;
    }
    let report = ReloadReport {
        path: r.source.path.clone(),
        applied,
        restart_required,
    };
    info!(applied = ?report.applied, restart_required = ?report.restart_required, "configuration reloaded");
    Ok(report)
}

/// Starts the core thread of one namespace: it enters the namespace (so every socket it
/// opens, now or on recovery, lives there), opens and subscribes its netlink socket,
/// and reports back before it starts mirroring.
pub fn start(
    cfg: &Config,
    reloadable: Option<Arc<Reloadable>>,
) -> Result<(Arc<Shared>, std::thread::JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel();
    let thread_cfg = cfg.clone();
    let name = format!("rm-core-{}", cfg.netns.as_deref().unwrap_or("host"));
    let handle = std::thread::Builder::new()
        .name(name.chars().take(15).collect())
        .spawn(move || {
            let built = thread_cfg
                .netns
                .as_deref()
                .map_or(Ok(()), crate::netns::enter)
                .and_then(|()| build(&thread_cfg, reloadable));
            match built {
                Ok((shared, core)) => {
                    let _ = tx.send(Ok(shared));
                    core.run();
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        })
        .context("spawning core thread")?;
    let shared = rx
        .recv()
        .context("core thread ended during start-up")?
        .with_context(|| {
            format!(
                "mirroring namespace {}",
                cfg.netns.as_deref().unwrap_or("(own)")
            )
        })?;
    Ok((shared, handle))
}

/// The start-up of [`start`], on the core thread inside the namespace.
fn build(cfg: &Config, reloadable: Option<Arc<Reloadable>>) -> Result<(Arc<Shared>, core::Core)> {
    let sock = NlSocket::open().context("opening NETLINK_ROUTE socket")?;
    let rb = sock
        .set_rcvbuf_checked(cfg.rcvbuf)
        .with_context(|| format!("setting netlink receive buffer to {} bytes", cfg.rcvbuf))?;
    let granted = rb.granted;
    if rb.capped() {
        let rmem_max = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "?".into());
        warn!(
            requested = rb.requested,
            granted,
            forced = rb.forced,
            rmem_max = %rmem_max,
            "netlink receive buffer smaller than requested{}: expect more overruns (each is \
             repaired by a resync; `stats` counts them)",
            if rb.forced {
                ""
            } else {
                " (SO_RCVBUFFORCE refused without CAP_NET_ADMIN; SO_RCVBUF is capped by \
                 net.core.rmem_max)"
            }
        );
    }
    let (ebpf, fallback) = select_source(cfg, &sock)?;
    let source = if ebpf.is_some() { "ebpf" } else { "netlink" };
    // Opt-in and consumed by other programs: failing to provide it is an error at
    // start, never a silent degradation (a dataplane would read stale or no routes).
    let bpf_fib = if cfg.bpf_fib_tables.is_empty() {
        None
    } else {
        let pin_name = cfg.netns.as_deref().unwrap_or("host");
        Some(
            BpfFib::create(cfg.bpf_fib_tables.clone(), pin_name)
                .map_err(anyhow::Error::new)
                .context("--bpf-fib: cannot create the pinned BPF FIB maps")?,
        )
    };
    // Subscribe before the initial dump so nothing between the two is lost.
    sock.subscribe(&groups::ALL)
        .context("subscribing to rtnetlink groups")?;
    let wake = eventfd().context("eventfd")?;
    let (tx, rx) = mpsc::channel();
    let mirror = Arc::new(RwLock::new(Mirror::new()));
    let hub = Hub::new(mirror.clone());
    let shared = Arc::new(Shared {
        mirror,
        status: Mutex::new(Status {
            rcvbuf: granted,
            source,
            source_fallback: fallback,
            rcvbuf_requested: rb.requested,
            rcvbuf_forced: rb.forced,
            ..Default::default()
        }),
        netns: cfg.netns.clone(),
        started: SystemTime::now(),
        reloadable,
        exports: hub.clone(),
        commands: Mutex::new(tx),
        wake,
    });
    info!(
        netns = cfg.netns.as_deref().unwrap_or("(own)"),
        rcvbuf = granted,
        scan_interval_s = cfg.scan_interval.as_secs_f64(),
        source,
        "route-mirror starting ({source} source)"
    );
    let core = core::Core::new(
        sock,
        cfg.rcvbuf,
        shared.clone(),
        rx,
        cfg.scan_interval,
        ebpf,
        Exports::new(hub, bpf_fib),
    );
    Ok((shared, core))
}

/// Loads and attaches the eBPF source as `--source` asks. `auto` falls back to netlink
/// with one log line saying why; `ebpf` fails instead.
fn select_source(
    cfg: &Config,
    sock: &NlSocket,
) -> Result<(Option<crate::ebpf::EbpfSource>, Option<String>)> {
    if cfg.source == SourceChoice::Netlink {
        return Ok((None, None));
    }
    let pin_name = cfg.netns.as_deref().unwrap_or("host");
    let loaded = crate::ebpf::EbpfSource::load(sock.port(), cfg.ring_size, Some(pin_name))
        .and_then(|mut src| {
            // SAFETY: the fd belongs to `sock`, alive for this call.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(sock.fd()) };
            src.attach(fd)?;
            Ok(src)
        });
    match loaded {
        Ok(src) => {
            info!(
                ring_size = cfg.ring_size,
                pinned = src.stats().pinned.as_deref().unwrap_or("(not pinned)"),
                "eBPF source active: notifications go through the ring buffer"
            );
            Ok((Some(src), None))
        }
        Err(e) if cfg.source == SourceChoice::Auto => {
            let why = e.to_string();
            warn!(reason = %why, "eBPF source unavailable, using the netlink source");
            Ok((None, Some(why)))
        }
        Err(e) => Err(anyhow::Error::new(e).context("--source ebpf: cannot use the eBPF source")),
    }
}

/// Runs the daemon until SIGINT/SIGTERM; SIGHUP reloads the configuration. Each
/// namespace in `cfgs` is mirrored independently, with its own control socket.
pub async fn run(cfgs: Vec<Config>, reloadable: Option<Arc<Reloadable>>) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut instances = Vec::new();
    let mut servers = tokio::task::JoinSet::new();
    for cfg in &cfgs {
        let (shared, core) = start(cfg, reloadable.clone())?;
        let server = crate::ctl::server::Server::bind(&cfg.socket, shared.clone())?;
        info!(
            netns = cfg.netns.as_deref().unwrap_or("(own)"),
            socket = %cfg.socket.display(),
            "control socket listening"
        );
        servers.spawn(server.serve());
        instances.push((shared, core, cfg.socket.clone()));
    }
    let shareds: Vec<Arc<Shared>> = instances.iter().map(|(s, _, _)| s.clone()).collect();
    if let Some(r) = &reloadable {
        let _ = r
            .instances
            .set(shareds.iter().map(Arc::downgrade).collect());
    }
    if let Some(addr) = cfgs.first().and_then(|c| c.metrics_listen) {
        crate::metrics::serve(addr, shareds.clone())?;
    }
    service::spawn(shareds.clone());
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => { info!("SIGINT: shutting down"); break }
            _ = term.recv() => { info!("SIGTERM: shutting down"); break }
            _ = hup.recv() => {
                service::notify(sd_notify::NotifyState::Reloading);
                if let Ok(now) = sd_notify::NotifyState::monotonic_usec_now() {
                    service::notify(now);
                }
                let r = reload(&shareds[0]);
                service::notify(sd_notify::NotifyState::Ready);
                if let Err(e) = r {
                    warn!(error = format!("{e:#}"), "SIGHUP: configuration not reloaded; keeping the current one");
                }
            }
            r = servers.join_next() => { warn!(result = ?r, "a control server ended"); break }
        }
    }
    service::notify(sd_notify::NotifyState::Stopping);
    for (shared, _, socket) in &instances {
        let _ = shared.command(Command::Shutdown);
        let _ = std::fs::remove_file(socket);
    }
    for (_, core, _) in instances {
        tokio::task::spawn_blocking(move || core.join()).await.ok();
    }
    Ok(())
}
