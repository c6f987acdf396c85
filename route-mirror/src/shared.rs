//! What the core loop of one namespace shares with everything else: the mirror, the
//! status it publishes, the commands it takes, the exports' subscriptions, and the
//! configuration reload that reaches every namespace. Below both the core
//! ([`crate::daemon`]) and its readers ([`crate::ctl`], [`crate::metrics`]): they meet
//! here and never import each other.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use serde::Serialize;
use tokio::sync::oneshot;
use tracing::info;

use crate::config::ConfigSource;
use crate::export::hub::Hub;
use crate::mirror::Mirror;
use crate::netlink::msg::DecodeCounters;
use crate::reconcile::{ScanReason, ScanReport, ScanScope, Verdicts};

/// Longest a query waits for the mirror to catch up (a full resync of a large table
/// takes a few seconds; this bounds a stuck daemon, not a slow one).
const BARRIER_TIMEOUT: Duration = Duration::from_secs(300);

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

/// Counters and state the core (and the control server) publish; `stats` shows them
/// as part of [`crate::stats::Stats`].
#[derive(Debug, Default, Clone)]
pub struct Status {
    pub synced: bool,
    pub initial_sync_ms: Option<f64>,
    pub events_applied: u64,
    pub events_dropped_by_request: u64,
    pub last_event: Option<SystemTime>,
    /// Last time the core loop went round (the systemd watchdog pings only while recent).
    pub heartbeat: Option<std::time::Instant>,
    /// The last instant the mirror held everything the kernel had reported (None
    /// before the initial sync); see [`crate::stats::Stats::sync_lag_s`].
    pub caught_up: Option<SystemTime>,
    /// The core is asleep with nothing queued and no resync owed: the mirror is current.
    pub current: bool,
    pub enobufs: u64,
    pub resyncs: u64,
    pub scans: u64,
    /// Completed scans per reason (`initial`, `periodic`, `overrun`, ...).
    pub scans_by_reason: std::collections::BTreeMap<String, u64>,
    pub verdicts: Verdicts,
    pub object_verdicts: Verdicts,
    /// See `Stats::unexplained_corrections`.
    pub unexplained_corrections: u64,
    pub unexplained_object_corrections: u64,
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

/// State shared between the core thread and its readers (control socket, metrics,
/// systemd, exports).
pub struct Shared {
    pub mirror: Arc<RwLock<Mirror>>,
    pub status: Mutex<Status>,
    pub netns: Option<String>,
    pub started: SystemTime,
    /// The change funnel's subscriptions: `watch` clients and feeds ([`crate::export`]).
    pub exports: Hub,
    /// Set when the daemon was started from a configuration it can re-read.
    pub reloadable: Option<Arc<Reloadable>>,
    /// The daemon's kernel copies (every namespace's control socket reaches them all).
    pub copies: std::sync::OnceLock<Arc<crate::copy::status::Registry>>,
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
    /// State around `mirror` for a core loop that reads `commands`.
    pub fn new(
        mirror: Mirror,
        status: Status,
        netns: Option<String>,
        reloadable: Option<Arc<Reloadable>>,
        commands: Sender<Command>,
    ) -> std::io::Result<Shared> {
        let mirror = Arc::new(RwLock::new(mirror));
        Ok(Shared {
            exports: Hub::new(netns.as_deref(), mirror.clone()),
            mirror,
            status: Mutex::new(status),
            netns,
            started: SystemTime::now(),
            reloadable,
            copies: std::sync::OnceLock::new(),
            commands: Mutex::new(commands),
            wake: eventfd()?,
        })
    }

    /// State around `mirror` with no core loop behind it: the control-socket code
    /// ([`crate::ctl`]) then serves a mirror the caller fills and changes itself
    /// (tests, benchmarks, embedding). Commands to the core fail.
    pub fn detached(mirror: Mirror) -> std::io::Result<Shared> {
        Shared::new(mirror, Status::default(), None, None, mpsc::channel().0)
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

    /// Waits until the netlink socket (`sock`, ignored when negative) or the ring is
    /// readable, a command arrives or `ms` pass. Returns whether the socket may hold
    /// something (readable, an error, or the poll did not say). A wakeup by a command is
    /// consumed here, only when the eventfd said so: reading it on every loop turn was a
    /// syscall per wakeup of the core (BENCHMARKS.md). Commands sent after that read
    /// make the eventfd readable again, so none waits for the next timeout.
    pub(crate) fn wait(&self, sock: i32, ring: Option<i32>, ms: i32) -> std::io::Result<bool> {
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
            return Ok(true);
        }
        if fds[1].revents != 0 {
            self.clear_wake();
        }
        Ok(fds[0].revents != 0)
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

/// Hands every copy thread its jobs from the new configuration (declared route files
/// re-read). A job whose namespaces are not mirrored, or whose target namespace has no
/// copy thread yet, needs a restart.
fn reload_copies(
    shared: &Shared,
    current: &crate::config::Config,
    new: &crate::config::Config,
) -> Result<()> {
    let registry = shared.copies.get().context("this daemon runs no copies")?;
    let jobs = crate::copy::spec::jobs(new).map_err(|e| anyhow::anyhow!(e))?;
    let threads = registry.threads.lock().expect("copy threads").clone();
    let mirrored = current.mirrored();
    let old = crate::copy::spec::jobs(current).unwrap_or_default();
    for j in &jobs {
        let known = old.iter().flat_map(|o| o.namespaces()).collect::<Vec<_>>();
        if j.namespaces()
            .iter()
            .any(|ns| !mirrored.contains(ns) && !known.contains(ns))
        {
            anyhow::bail!(
                "copy {:?} needs a namespace the daemon does not mirror yet",
                j.name
            );
        }
        if !threads.iter().any(|t| t.netns == j.to.netns) {
            anyhow::bail!(
                "copy {:?} writes a namespace with no copy thread yet",
                j.name
            );
        }
    }
    *registry.specs.lock().expect("copy specs") = jobs.clone();
    for t in &threads {
        let mine: Vec<_> = jobs
            .iter()
            .filter(|j| j.to.netns == t.netns)
            .cloned()
            .collect();
        t.send(crate::copy::status::Msg::SetJobs(mine));
    }
    Ok(())
}

/// Re-reads the configuration: applies what can change live, reports what needs a
/// restart. An invalid file changes nothing.
pub fn reload(shared: &Shared) -> Result<ReloadReport> {
    let r = shared
        .reloadable
        .as_ref()
        .context("this daemon was not started from a configuration file it can re-read")?;
    let new = r.source.effective()?;
    crate::copy::spec::check(&new, &r.source.path)?;
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
    let mut applied = applied;
    let mut restart_required = restart_required;
    if applied.contains(&"copy") {
        match reload_copies(shared, &current, &new) {
            Ok(()) => {
                current.copies = new.copies.clone();
                current.route_sets = new.route_sets.clone();
            }
            Err(e) => {
                tracing::warn!(error = %e, "copies not reloaded");
                applied.retain(|k| *k != "copy");
                restart_required.push("copy");
            }
        }
    }
    let report = ReloadReport {
        path: r.source.path.clone(),
        applied,
        restart_required,
    };
    info!(applied = ?report.applied, restart_required = ?report.restart_required, "configuration reloaded");
    Ok(report)
}
