//! Feeds: the bounded queues that carry the change funnel to exports running on their
//! own threads or tasks (kernel copies, gNMI, NATS). The core only ever appends to a
//! feed; a feed that falls [`Feed::capacity`] route changes behind stops receiving them
//! and is told to [`Update::Resnapshot`] instead, so a slow export costs the core
//! nothing and loses nothing it cannot read back.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock, RwLockReadGuard};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::change::{Batch, Marker};
use crate::fib::Entry;
use crate::mirror::{Mirror, Names};

/// What a feed delivers, in the order the core produced it.
#[derive(Debug, Clone)]
pub enum Update {
    /// Route changes applied together (shared by every feed: read, don't copy).
    Changes(Arc<Batch>),
    /// Events were lost; a resync runs and its corrections arrive as changes.
    ResyncStart {
        source: &'static str,
        note: &'static str,
    },
    /// The resync finished: the mirror, and a feed that applied every change, are exact.
    ResyncDone { source: &'static str },
    /// The initial sync finished: the mirror holds the kernel's whole state.
    Synced,
    /// This feed fell behind and changes were dropped: call [`Feed::snapshot`], then
    /// carry on receiving. Nothing more arrives until then.
    Resnapshot,
}

/// Mirror-wide state a snapshot reports, kept by the hub.
#[derive(Debug, Default)]
pub(super) struct Progress {
    pub synced: AtomicBool,
    pub resyncing: AtomicBool,
}

/// Counters of one feed, shown by `stats` (`feeds`).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedStats {
    pub name: String,
    pub capacity: usize,
    /// Route changes queued now, and the most ever queued.
    pub queued: usize,
    pub queued_max: usize,
    /// Route changes delivered into the queue, and dropped because it was full.
    pub changes: u64,
    pub dropped: u64,
    /// Times the feed fell behind and was told to resnapshot.
    pub resnapshots: u64,
    pub snapshots: u64,
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Update>,
    /// Route changes in `items` (what `capacity` bounds).
    deltas: usize,
    /// Fell behind: everything is dropped until the consumer takes a snapshot.
    lagged: bool,
    /// The core stopped: `recv` returns `None` once `items` is empty.
    closed: bool,
    stats: FeedStats,
}

impl Queue {
    fn pop(&mut self) -> Option<Update> {
        let u = self.items.pop_front()?;
        if let Update::Changes(b) = &u {
            self.deltas -= b.deltas.len();
        }
        Some(u)
    }
}

/// Called whenever a feed gets an update, besides waking `recv`: lets one thread wait
/// for several feeds and its own commands at once (e.g. by writing to an eventfd).
pub type Doorbell = Arc<dyn Fn() + Send + Sync>;

/// The core's end of one feed.
pub(super) struct Tap {
    queue: Mutex<Queue>,
    /// Wakes an async consumer (a permit is kept if it is not waiting yet).
    notify: Notify,
    /// Wakes a blocking consumer.
    cond: Condvar,
    doorbell: OnceLock<Doorbell>,
}

impl Tap {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().expect("feed lock")
    }

    fn wake(&self) {
        self.notify.notify_one();
        self.cond.notify_one();
        if let Some(d) = self.doorbell.get() {
            d();
        }
    }

    /// Appends a batch, or tells a consumer that fell behind to resnapshot. O(1).
    pub fn changes(&self, batch: &Arc<Batch>) {
        let mut q = self.lock();
        let n = batch.deltas.len();
        if q.lagged {
            q.stats.dropped += n as u64;
            return;
        }
        if q.deltas + n > q.stats.capacity {
            q.lagged = true;
            q.stats.dropped += n as u64;
            q.stats.resnapshots += 1;
            q.items.push_back(Update::Resnapshot);
        } else {
            q.deltas += n;
            q.stats.changes += n as u64;
            q.stats.queued_max = q.stats.queued_max.max(q.deltas);
            q.items.push_back(Update::Changes(batch.clone()));
        }
        drop(q);
        self.wake();
    }

    /// Appends a marker (dropped while lagged: the snapshot reports the state).
    pub fn push(&self, u: Update) {
        let mut q = self.lock();
        if !q.lagged {
            q.items.push_back(u);
        }
        drop(q);
        self.wake();
    }

    pub fn close(&self) {
        self.lock().closed = true;
        self.wake();
    }

    pub fn stats(&self) -> FeedStats {
        let q = self.lock();
        FeedStats {
            queued: q.deltas,
            ..q.stats.clone()
        }
    }
}

/// Every route of the mirror at one moment, for an export's initial or refresh copy.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// (table, prefix, entry) for every route of every table.
    pub routes: Vec<(u32, IpNet, Entry)>,
    /// Link names and nexthop objects, to resolve the entries' next hops.
    pub names: Names,
    /// The initial sync has finished (before it, the routes still arrive as changes).
    pub synced: bool,
    /// A resync runs: `ResyncDone` follows.
    pub resyncing: bool,
}

/// The export's end of a feed (see the [module docs](super)). Dropping it unsubscribes.
pub struct Feed {
    tap: Arc<Tap>,
    mirror: Arc<RwLock<Mirror>>,
    progress: Arc<Progress>,
}

impl Feed {
    pub(super) fn new(
        name: &str,
        capacity: usize,
        mirror: Arc<RwLock<Mirror>>,
        progress: Arc<Progress>,
    ) -> (Feed, Arc<Tap>) {
        let tap = Arc::new(Tap {
            queue: Mutex::new(Queue {
                stats: FeedStats {
                    name: name.to_string(),
                    capacity,
                    ..Default::default()
                },
                ..Default::default()
            }),
            notify: Notify::new(),
            cond: Condvar::new(),
            doorbell: OnceLock::new(),
        });
        let feed = Feed {
            tap: tap.clone(),
            mirror,
            progress,
        };
        (feed, tap)
    }

    /// Rings `d` on every update from now on (once per feed; a second call is ignored).
    /// For a consumer polling several feeds with [`Feed::try_recv`].
    pub fn set_doorbell(&self, d: Doorbell) {
        let _ = self.tap.doorbell.set(d);
    }

    /// Route changes this feed may hold before it must resnapshot.
    pub fn capacity(&self) -> usize {
        self.tap.lock().stats.capacity
    }

    fn pop(&self) -> Result<Option<Update>, Closed> {
        let mut q = self.tap.lock();
        match q.pop() {
            Some(u) => Ok(Some(u)),
            None if q.closed => Err(Closed),
            None => Ok(None),
        }
    }

    /// The next update, waiting for it; `None` once the daemon stops.
    pub async fn recv(&mut self) -> Option<Update> {
        loop {
            match self.pop() {
                Ok(Some(u)) => return Some(u),
                Ok(None) => self.tap.notify.notified().await,
                Err(Closed) => return None,
            }
        }
    }

    /// [`Feed::recv`] for a consumer on its own thread.
    pub fn recv_blocking(&mut self) -> Option<Update> {
        let mut q = self.tap.lock();
        loop {
            if let Some(u) = q.pop() {
                return Some(u);
            }
            if q.closed {
                return None;
            }
            q = self.tap.cond.wait(q).expect("feed lock");
        }
    }

    /// The next update if one is queued.
    pub fn try_recv(&mut self) -> Option<Update> {
        self.pop().ok().flatten()
    }

    /// Reads the mirror and restarts the feed at that point: every change queued so far
    /// is already in what `read` sees (the core queues changes under the mirror's write
    /// lock, this reads under its read lock), and every change received afterwards
    /// happened after it. Markers stay queued (one may repeat what the snapshot says).
    ///
    /// Holds the read lock while `read` runs: the core cannot apply changes meanwhile,
    /// so read what you need and convert later (copying a million-route table takes
    /// tens of milliseconds; the kernel queues events meanwhile).
    pub fn snapshot_with<R>(&mut self, read: impl FnOnce(&Mirror) -> R) -> R {
        let mirror = self.mirror.read().expect("mirror lock");
        {
            let mut q = self.tap.lock();
            q.items
                .retain(|u| !matches!(u, Update::Changes(_) | Update::Resnapshot | Update::Synced));
            q.deltas = 0;
            q.lagged = false;
            q.stats.snapshots += 1;
        }
        read(&mirror)
    }

    /// Every route and the names to render them: the usual start of an export, and
    /// what it does on [`Update::Resnapshot`].
    pub fn snapshot(&mut self) -> Snapshot {
        let progress = self.progress.clone();
        self.snapshot_with(|m| {
            let mut routes = Vec::with_capacity(m.fib.len());
            for ((_, table), t) in m.fib.tables() {
                routes.extend(t.iter().map(|(dst, e)| (table, dst, e.clone())));
            }
            Snapshot {
                routes,
                names: m.names(),
                synced: progress.synced.load(Ordering::Acquire),
                resyncing: progress.resyncing.load(Ordering::Acquire),
            }
        })
    }

    pub fn stats(&self) -> FeedStats {
        self.tap.stats()
    }

    /// Read access to the mirror as it is now (names for rendering, the routes a change
    /// touched), without restarting the feed.
    pub fn reader(&self) -> MirrorReader {
        MirrorReader(self.mirror.clone())
    }
}

/// Read-only access to the mirror for an export: never a write, never the sources.
#[derive(Clone)]
pub struct MirrorReader(Arc<RwLock<Mirror>>);

impl MirrorReader {
    /// The mirror under its read lock: the core waits for it, so hold it briefly.
    pub fn read(&self) -> RwLockReadGuard<'_, Mirror> {
        self.0.read().expect("mirror lock")
    }
}

struct Closed;

/// Marker updates as a feed carries them.
impl From<&Marker> for Update {
    fn from(m: &Marker) -> Update {
        match *m {
            Marker::ResyncStart { source, note } => Update::ResyncStart { source, note },
            Marker::ResyncDone { source } => Update::ResyncDone { source },
        }
    }
}
