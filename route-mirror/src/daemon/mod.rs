//! `route-mirror run`: wires the netlink source, the core loop and the control socket.

pub mod core;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use serde::Serialize;
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::mirror::Mirror;
use crate::netlink::decode::DecodeCounters;
use crate::netlink::socket::NlSocket;
use crate::reconcile::{ScanReason, ScanReport, ScanScope, Verdicts};
use route_mirror_common::groups;

/// Longest a query waits for the mirror to catch up (a full resync of a large table
/// takes a few seconds; this bounds a stuck daemon, not a slow one).
const BARRIER_TIMEOUT: Duration = Duration::from_secs(300);

/// Settings of `route-mirror run`.
#[derive(Debug, Clone)]
pub struct Config {
    pub netns: Option<String>,
    pub socket: PathBuf,
    pub scan_interval: Duration,
    /// Netlink receive buffer in bytes.
    pub rcvbuf: usize,
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
    pub enobufs: u64,
    pub resyncs: u64,
    pub scans: u64,
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
    /// Netlink sockets replaced because a dump stalled after an overrun.
    pub socket_resets: u64,
    /// Control requests that did not parse (garbage, truncated, oversized, timed out).
    pub bad_requests: u64,
    /// Control clients refused because they are not root (SO_PEERCRED).
    pub refused_peers: u64,
    /// Control clients refused because too many were being served.
    pub busy_refusals: u64,
}

/// State shared between the core thread and the control socket.
pub struct Shared {
    pub mirror: RwLock<Mirror>,
    pub status: Mutex<Status>,
    pub netns: Option<String>,
    pub started: SystemTime,
    commands: Mutex<Sender<Command>>,
    wake: OwnedFd,
}

impl Shared {
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
    fn wait(&self, sock: i32, ms: i32) -> std::io::Result<()> {
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
        ];
        // SAFETY: two valid pollfds.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
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

/// Opens the netlink socket, subscribes, and starts the core thread.
/// Must run inside the mirrored namespace.
pub fn start(cfg: &Config) -> Result<(Arc<Shared>, std::thread::JoinHandle<()>)> {
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
    // Subscribe before the initial dump so nothing between the two is lost.
    sock.subscribe(&groups::ALL)
        .context("subscribing to rtnetlink groups")?;
    // SAFETY: eventfd returns a new fd or -1.
    let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if efd < 0 {
        return Err(std::io::Error::last_os_error()).context("eventfd");
    }
    // SAFETY: efd is a fresh fd we own.
    let wake = unsafe { OwnedFd::from_raw_fd(efd) };
    let (tx, rx) = mpsc::channel();
    let shared = Arc::new(Shared {
        mirror: RwLock::new(Mirror::new()),
        status: Mutex::new(Status {
            rcvbuf: granted,
            rcvbuf_requested: rb.requested,
            rcvbuf_forced: rb.forced,
            ..Default::default()
        }),
        netns: cfg.netns.clone(),
        started: SystemTime::now(),
        commands: Mutex::new(tx),
        wake,
    });
    info!(
        netns = cfg.netns.as_deref().unwrap_or("(own)"),
        rcvbuf = granted,
        scan_interval_s = cfg.scan_interval.as_secs_f64(),
        source = "netlink",
        "route-mirror starting (netlink source)"
    );
    let core = core::Core::new(sock, cfg.rcvbuf, shared.clone(), rx, cfg.scan_interval);
    let handle = std::thread::Builder::new()
        .name("rm-core".into())
        .spawn(move || core.run())
        .context("spawning core thread")?;
    Ok((shared, handle))
}

/// Runs the daemon until SIGINT/SIGTERM.
pub async fn run(cfg: Config) -> Result<()> {
    let (shared, core) = start(&cfg)?;
    let server = crate::ctl::server::Server::bind(&cfg.socket, shared.clone())?;
    info!(socket = %cfg.socket.display(), "control socket listening");
    let serve = tokio::spawn(server.serve());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("SIGINT: shutting down"),
        _ = term.recv() => info!("SIGTERM: shutting down"),
        r = serve => warn!(result = ?r, "control server ended"),
    }
    let _ = shared.command(Command::Shutdown);
    let _ = std::fs::remove_file(&cfg.socket);
    tokio::task::spawn_blocking(move || core.join()).await.ok();
    Ok(())
}
