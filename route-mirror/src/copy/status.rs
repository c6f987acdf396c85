//! What the copies publish for `stats`, `copies`, metrics and `diff --copy`, and the
//! daemon-wide registry the control server reaches them through.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::spec::Job;
use super::sync::{SyncCounters, Verdicts};
use crate::export::hub::Hub;
use crate::mirror::Mirror;
use crate::writer::WriterStats;

/// A mirrored namespace as the copies reach it: its mirror, its change funnel, and the
/// two things they ask of its core, as closures (the daemon makes them), so that copies
/// depend on the mirror and the funnel, not on the daemon's shared state.
#[derive(Clone)]
pub struct Mirrored {
    pub netns: Option<String>,
    pub mirror: Arc<RwLock<Mirror>>,
    pub hub: Hub,
    /// (initial sync done, scans completed so far).
    pub progress: Arc<dyn Fn() -> (bool, u64) + Send + Sync>,
    /// Asks the core to answer once it has applied everything queued; false if it has
    /// stopped.
    pub barrier: Arc<dyn Fn(oneshot::Sender<()>) -> bool + Send + Sync>,
}

impl Mirrored {
    /// Waits for the core's barrier.
    pub async fn sync(&self, timeout: Duration) -> anyhow::Result<()> {
        let (tx, rx) = oneshot::channel();
        if !(self.barrier)(tx) {
            anyhow::bail!("the core of {:?} has stopped", self.netns);
        }
        tokio::time::timeout(timeout, rx)
            .await
            .map_err(|_| {
                anyhow::anyhow!("the mirror did not catch up within {} s", timeout.as_secs())
            })?
            .map_err(|_| anyhow::anyhow!("the core stopped before the barrier"))
    }
}

/// An eventfd a copy thread sleeps on; commands and feed updates ring it.
pub struct Bell(OwnedFd);

impl Bell {
    pub fn new() -> std::io::Result<Bell> {
        // SAFETY: eventfd returns a new fd or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh fd we own.
        Ok(Bell(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub fn ring(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd.
        unsafe { libc::write(self.0.as_raw_fd(), &one as *const u64 as *const _, 8) };
    }

    /// Sleeps until rung or `timeout` passes (at most a second), and clears it.
    pub fn wait(&self, timeout: Duration) {
        let mut pfd = libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(1000) as i32;
        // SAFETY: one valid pollfd; then a non-blocking read of at most 8 bytes.
        unsafe {
            libc::poll(&mut pfd, 1, ms);
            let mut v: u64 = 0;
            libc::read(self.0.as_raw_fd(), &mut v as *mut u64 as *mut _, 8);
        }
    }
}

/// Delays from a source change to the target write's acknowledgement.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
pub struct LagStats {
    pub samples: u64,
    pub p50_ms: Option<u64>,
    pub p99_ms: Option<u64>,
    pub max_ms: u64,
}

/// One refused route, as `copies --json` and `diff --copy` show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Refused {
    pub dst: String,
    pub metric: u32,
    pub reason: String,
    pub errno: Option<i32>,
    pub detail: Option<String>,
    pub attempts: u32,
    /// Seconds until the next attempt.
    pub retry_in_s: f64,
}

/// The state of one copy or declared route set (one target table).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JobStatus {
    pub name: String,
    /// `copy` or `routes`.
    pub kind: String,
    /// `NETNS/TABLE` of the source (copies only).
    pub from: Option<String>,
    pub to: String,
    pub owner: bool,
    pub persist: bool,
    /// `waiting` (for the mirrors' initial sync), `syncing` (first pass), `synced`.
    pub state: String,
    /// Routes of ours in the target table (counted at most once a second).
    pub installed: u64,
    /// Prefixes waiting to be written or confirmed.
    pub pending: u64,
    /// Routes the target refused (or could not take), by reason; retried with backoff.
    pub failing: u64,
    pub failing_by_reason: BTreeMap<String, u64>,
    /// Up to [`REFUSED_LIST`] of them.
    pub refused: Vec<Refused>,
    pub verdicts: Verdicts,
    pub failed_by_reason: BTreeMap<String, u64>,
    pub foreign_changes: u64,
    pub foreign_deletes: u64,
    pub repaired_deletes: u64,
    pub repaired_replaces: u64,
    pub retries: u64,
    pub unknown_outcomes: u64,
    pub settled_by_barrier: u64,
    pub lag: LagStats,
    /// The first pass, from both mirrors synced to every wanted route tried.
    pub initial_sync_ms: Option<f64>,
    /// Full passes done (start-up, scans, resnapshots).
    pub passes: u64,
    /// The writer of the target namespace (shared by its copies).
    pub writer: WriterStats,
    /// CPU time of the copy thread (user + system), for CPU per installed route.
    pub cpu_s: f64,
    /// The target namespace's shared nexthop objects (shared by its copies).
    #[serde(default)]
    pub nexthop_objects: super::nhpool::NhCounters,
}

/// Refused routes listed per job (all are counted).
pub const REFUSED_LIST: usize = 100;

impl JobStatus {
    pub fn new(job: &Job) -> JobStatus {
        let (kind, from) = match &job.producer {
            super::spec::Producer::Copy { from, .. } => ("copy", Some(from.to_string())),
            super::spec::Producer::Declared(_) => ("routes", None),
        };
        JobStatus {
            name: job.name.clone(),
            kind: kind.into(),
            from,
            to: job.to.to_string(),
            owner: job.owner,
            persist: job.persist,
            state: "waiting".into(),
            installed: 0,
            pending: 0,
            failing: 0,
            failing_by_reason: BTreeMap::new(),
            refused: Vec::new(),
            verdicts: Verdicts::default(),
            failed_by_reason: BTreeMap::new(),
            foreign_changes: 0,
            foreign_deletes: 0,
            repaired_deletes: 0,
            repaired_replaces: 0,
            retries: 0,
            unknown_outcomes: 0,
            settled_by_barrier: 0,
            lag: LagStats::default(),
            initial_sync_ms: None,
            passes: 0,
            writer: WriterStats::default(),
            nexthop_objects: Default::default(),
            cpu_s: 0.0,
        }
    }

    pub fn counters(&mut self, c: &SyncCounters) {
        self.verdicts = c.verdicts.clone();
        self.failed_by_reason = c
            .failed_by_reason
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        self.foreign_changes = c.foreign_changes;
        self.foreign_deletes = c.foreign_deletes;
        self.repaired_deletes = c.repaired_deletes;
        self.repaired_replaces = c.repaired_replaces;
        self.retries = c.retries;
        self.unknown_outcomes = c.unknown;
        self.settled_by_barrier = c.settled_by_barrier;
    }
}

/// Requests to a copy thread.
pub enum Msg {
    /// Answered once the copy has written (and seen confirmed) every change its
    /// mirrors had applied when the request arrived.
    Barrier(oneshot::Sender<()>),
    /// A reload: the thread's new jobs (empty: none left).
    SetJobs(Vec<Job>),
    Shutdown,
}

/// A copy thread, as the rest of the daemon reaches it.
pub struct ThreadCtl {
    pub netns: Option<String>,
    pub tx: Mutex<Sender<Msg>>,
    pub bell: Arc<Bell>,
}

impl ThreadCtl {
    pub fn send(&self, m: Msg) -> bool {
        let ok = self.tx.lock().expect("copy tx").send(m).is_ok();
        self.bell.ring();
        ok
    }
}

/// Every copy of the daemon: their status, and their threads.
#[derive(Default)]
pub struct Registry {
    pub jobs: Mutex<BTreeMap<String, JobStatus>>,
    pub threads: Mutex<Vec<Arc<ThreadCtl>>>,
    /// The configured jobs, for `diff --copy`.
    pub specs: Mutex<Vec<Job>>,
    /// Every mirrored namespace (for barriers before `diff --copy`).
    pub mirrors: Mutex<Vec<Mirrored>>,
}

impl Registry {
    pub fn statuses(&self) -> Vec<JobStatus> {
        self.jobs
            .lock()
            .expect("copy status")
            .values()
            .cloned()
            .collect()
    }

    pub fn spec(&self, name: &str) -> Option<Job> {
        self.specs
            .lock()
            .expect("copy specs")
            .iter()
            .find(|j| j.name == name)
            .cloned()
    }

    pub fn status(&self, name: &str) -> Option<JobStatus> {
        self.jobs.lock().expect("copy status").get(name).cloned()
    }

    /// The mirror of namespace `ns`.
    pub fn mirror(&self, ns: &Option<String>) -> Option<Mirrored> {
        self.mirrors
            .lock()
            .expect("copy mirrors")
            .iter()
            .find(|m| m.netns == *ns)
            .cloned()
    }

    /// Waits until every copy thread has caught up (see [`Msg::Barrier`]).
    pub async fn barrier(&self, timeout: Duration) -> anyhow::Result<()> {
        let threads: Vec<Arc<ThreadCtl>> = self.threads.lock().expect("copy threads").clone();
        for t in threads {
            let (tx, rx) = oneshot::channel();
            if !t.send(Msg::Barrier(tx)) {
                anyhow::bail!("a copy thread has stopped");
            }
            tokio::time::timeout(timeout, rx)
                .await
                .map_err(|_| {
                    anyhow::anyhow!("the copies did not catch up within {} s", timeout.as_secs())
                })?
                .map_err(|_| anyhow::anyhow!("a copy thread stopped before the barrier"))?;
        }
        Ok(())
    }
}
