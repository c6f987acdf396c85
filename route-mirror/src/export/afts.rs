//! One namespace's AFT, kept current from the change funnel and shared by the gNMI
//! subscribers: the AFT, read a slice at a time under its lock, plus the ordered
//! changes broadcast under the same lock.
//!
//! A pump thread follows its [`Feed`]: it builds the AFT from a feed snapshot (copied
//! under the mirror's read lock, converted after it), then for each batch re-reads the
//! best route of every touched prefix from the mirror (one read lock per batch; every
//! prefix using a nexthop object when one changed, every prefix with a route through
//! a link whose liveness changed; the interface name of every next hop through a
//! renamed or removed link) and broadcasts the resulting AFT operations. The broadcast is bounded: a subscriber that falls behind gets `Lagged`
//! and starts over from a fresh snapshot, so a slow collector never slows the daemon
//! and never keeps a silently wrong copy. When the feed itself falls behind
//! (`Resnapshot`), or the mirror finishes a resync, every subscriber starts over.

use std::sync::{Arc, Mutex};

use ipnet::IpNet;
use tokio::sync::broadcast;
use tracing::{debug, warn};

use super::aft::{Aft, Change, InstanceNames};
use super::feed::{Feed, MirrorReader, Update};
use super::hub::Hub;

/// Batches a subscriber may fall behind by before it starts over (each holds at most
/// [`BATCH_MAX`] changes). `ROUTE_MIRROR_GNMI_QUEUE_BATCHES` overrides it: a test knob
/// that makes an overflow cheap to provoke.
const QUEUE_BATCHES: usize = 1024;
/// Changes per broadcast batch.
const BATCH_MAX: usize = 1024;
/// Route changes the pump's feed may fall behind by (a full table's worth: a burst
/// the size of the table is one resnapshot anyway).
const FEED_CAPACITY: usize = 2 << 20;

fn queue_batches() -> usize {
    std::env::var("ROUTE_MIRROR_GNMI_QUEUE_BATCHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or(QUEUE_BATCHES)
}

/// What subscribers receive after their snapshot.
#[derive(Debug)]
pub enum Batch {
    /// AFT operations, in order, applied at `time_ns` (Unix epoch), and the
    /// network-instance names of their tables.
    Changes {
        time_ns: i64,
        changes: Vec<Change>,
        names: Arc<InstanceNames>,
    },
    /// The mirror resynced (or the pump lost track): start over from a fresh snapshot.
    Resync { time_ns: i64 },
}

/// Counters of one namespace's AFT.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct AftsStats {
    pub entries: u64,
    pub batches: u64,
    pub changes: u64,
    /// Times the AFT was rebuilt from a snapshot because its feed fell behind.
    pub rebuilds: u64,
    /// Resync brackets sent to subscribers (mirror resyncs and rebuilds).
    pub resyncs: u64,
}

pub struct Afts {
    /// The namespace's name (`ip netns` name), or `host` for the daemon's own.
    pub name: String,
    state: Mutex<Option<Aft>>,
    tx: broadcast::Sender<Arc<Batch>>,
    ready: tokio::sync::watch::Sender<bool>,
    pub stats: Mutex<AftsStats>,
}

pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

impl Afts {
    /// Subscribes to a namespace's change funnel and starts the pump thread.
    pub fn start(hub: &Hub) -> std::io::Result<Arc<Afts>> {
        let afts = Arc::new(Afts::detached(hub.netns().to_string()));
        let feed = hub.subscribe("gnmi", FEED_CAPACITY);
        let mirror = feed.reader();
        let a = afts.clone();
        std::thread::Builder::new()
            .name(format!("rm-aft-{}", a.name).chars().take(15).collect())
            .spawn(move || a.pump(feed, &mirror))?;
        Ok(afts)
    }

    /// AFTs that nothing feeds: tests and embedders drive them with [`Afts::reset`]
    /// and [`Afts::apply`].
    pub fn detached(name: String) -> Afts {
        Afts {
            name,
            state: Mutex::new(None),
            tx: broadcast::channel(queue_batches()).0,
            ready: tokio::sync::watch::channel(false).0,
            stats: Mutex::new(AftsStats::default()),
        }
    }

    /// Waits for the first snapshot, then returns the stream of what changes from now
    /// on. Snapshots are read in slices through [`Afts::read`]: whatever a slice reads
    /// is the AFT after every batch this receiver has drained under the same lock (the
    /// pump broadcasts under it), so a reader knows exactly which changes it has seen.
    pub async fn subscribe(&self) -> broadcast::Receiver<Arc<Batch>> {
        let mut ready = self.ready.subscribe();
        let _ = ready.wait_for(|r| *r).await;
        self.tx.subscribe()
    }

    /// Lets subscribers in (the pump does it once the mirror is synced).
    pub fn mark_ready(&self) {
        self.ready.send_replace(true);
    }

    /// Runs `f` on the current AFT under the hub's lock, now (after [`Afts::subscribe`]
    /// or [`Afts::with`] waited for the first snapshot). The pump waits meanwhile: keep
    /// `f` to a bounded slice of work. Blocking: call it off the async workers.
    pub fn read<R>(&self, f: impl FnOnce(&Aft) -> R) -> R {
        let state = self.state.lock().expect("afts lock");
        f(state.as_ref().unwrap_or(&Aft::default()))
    }

    /// Runs `f` on the current AFT under the hub's lock (for reads of a few objects:
    /// the pump waits meanwhile).
    pub async fn with<R>(&self, f: impl FnOnce(&Aft) -> R) -> R {
        let mut ready = self.ready.subscribe();
        let _ = ready.wait_for(|r| *r).await;
        self.read(f)
    }

    /// Replaces the AFT (first build, rebuild) and tells subscribers to start over.
    pub fn reset(&self, mut aft: Aft) {
        let mut state = self.state.lock().expect("afts lock");
        if let Some(old) = state.as_ref() {
            // Names the collectors may hold stay retired, whatever the new AFT's are.
            let mut names = old
                .names
                .with_vrfs(aft.names.vrfs().clone())
                .unwrap_or_else(|| (*old.names).clone());
            names.retired.extend(aft.names.retired.iter().cloned());
            aft.names = Arc::new(names);
        }
        let had = state.replace(aft).is_some();
        let mut st = self.stats.lock().expect("afts stats");
        st.entries = state.as_ref().map_or(0, |a| a.entries() as u64);
        if had {
            st.resyncs += 1;
            let _ = self.tx.send(Arc::new(Batch::Resync { time_ns: now_ns() }));
        }
    }

    /// Tells subscribers to start over from a fresh snapshot (the mirror resynced).
    pub fn resync(&self) {
        let _state = self.state.lock().expect("afts lock");
        self.stats.lock().expect("afts stats").resyncs += 1;
        let _ = self.tx.send(Arc::new(Batch::Resync { time_ns: now_ns() }));
    }

    /// Applies `f` to the AFT and broadcasts the changes it reports, atomically with
    /// respect to [`Hub::subscribe`].
    pub fn apply(&self, f: impl FnOnce(&mut Aft, &mut Vec<Change>)) {
        let mut state = self.state.lock().expect("afts lock");
        let Some(aft) = state.as_mut() else { return };
        let mut changes = Vec::new();
        f(aft, &mut changes);
        let entries = aft.entries() as u64;
        if changes.is_empty() {
            return;
        }
        let time_ns = now_ns();
        let mut st = self.stats.lock().expect("afts stats");
        st.entries = entries;
        st.changes += changes.len() as u64;
        for chunk in changes.chunks(BATCH_MAX) {
            st.batches += 1;
            let _ = self.tx.send(Arc::new(Batch::Changes {
                time_ns,
                changes: chunk.to_vec(),
                names: aft.names.clone(),
            }));
        }
    }

    /// Renames network instances after the VRF devices `vrfs` (table → name). If that
    /// changes any name, subscribers start over: a fresh snapshot under the new names,
    /// opening with a delete of the old ones.
    pub fn set_vrfs(&self, vrfs: std::collections::BTreeMap<u32, String>) {
        let mut state = self.state.lock().expect("afts lock");
        let Some(aft) = state.as_mut() else { return };
        let Some(names) = aft.names.with_vrfs(vrfs) else {
            return;
        };
        debug!(netns = %self.name, retired = ?names.retired, "network instances renamed");
        aft.names = Arc::new(names);
        self.stats.lock().expect("afts stats").resyncs += 1;
        let _ = self.tx.send(Arc::new(Batch::Resync { time_ns: now_ns() }));
    }

    /// Builds the AFT from a feed snapshot: the copy under the read lock, the
    /// conversion after it.
    fn rebuild(&self, feed: &mut Feed, mirror: &MirrorReader) -> bool {
        let snap = feed.snapshot();
        let mut aft = Aft::build_from(&snap.routes, &snap.names);
        let vrfs = InstanceNames::vrfs_of(&mirror.read());
        if let Some(names) = aft.names.with_vrfs(vrfs) {
            aft.names = Arc::new(names);
        }
        self.reset(aft);
        snap.synced
    }

    fn pump(&self, mut feed: Feed, mirror: &MirrorReader) {
        let mut synced = self.rebuild(&mut feed, mirror);
        if synced {
            self.ready.send_replace(true);
        }
        let mut touched: Vec<(u32, IpNet)> = Vec::new();
        let mut links: Vec<u32> = Vec::new();
        let mut live: Vec<u32> = Vec::new();
        while let Some(first) = feed.recv_blocking() {
            let (mut resync, mut lagged, mut nexthops) = (false, false, false);
            // Take whatever else is queued: one mirror read for all of it.
            let mut next = Some(first);
            while let Some(u) = next {
                match u {
                    Update::Changes(b) => {
                        touched.extend(b.deltas.iter().map(|d| (d.table, d.dst)));
                        nexthops |= b.nexthops_changed;
                        links.extend(&b.links_renamed);
                        live.extend(&b.links_changed);
                    }
                    Update::ResyncDone { .. } => resync = true,
                    Update::ResyncStart { .. } => {}
                    Update::Synced => synced = true,
                    Update::Resnapshot => lagged = true,
                }
                if touched.len() >= 1 << 16 {
                    break;
                }
                next = feed.try_recv();
            }
            if lagged {
                warn!(netns = %self.name, "AFT export fell behind the mirror: rebuilding it");
                self.stats.lock().expect("afts stats").rebuilds += 1;
                synced |= self.rebuild(&mut feed, mirror);
            } else if !touched.is_empty() || nexthops || !links.is_empty() || !live.is_empty() {
                let m = mirror.read();
                if nexthops || !live.is_empty() {
                    // A nexthop object changed: every route using one may forward
                    // differently without a delta of its own. A link died or revived
                    // (carrier, admin state, its ignore_routes_with_linkdown): which
                    // routes and hops forward through it changed. Decided once per
                    // attribute set.
                    let all = live.contains(&crate::mirror::Journal::ALL_LINKS);
                    let affected = |a: &crate::model::RouteAttrs| {
                        (nexthops && a.nh_id.is_some())
                            || (!live.is_empty()
                                && (all
                                    || m.effective_hops(a)
                                        .iter()
                                        .any(|h| live.contains(&h.ifindex))))
                    };
                    let mut memo: std::collections::HashMap<*const crate::model::RouteAttrs, bool> =
                        std::collections::HashMap::new();
                    for ((_, table), t) in m.fib.tables() {
                        for (dst, e) in t.iter() {
                            if *memo
                                .entry(Arc::as_ptr(&e.attrs))
                                .or_insert_with(|| affected(&e.attrs))
                            {
                                touched.push((table, dst));
                            }
                        }
                    }
                }
                touched.sort_unstable();
                touched.dedup();
                debug!(netns = %self.name, prefixes = touched.len(), "AFT batch");
                links.sort_unstable();
                links.dedup();
                // A VRF device created, renamed or removed renames its table's instance
                // (links renamed or removed come with a batch; a VRF without routes
                // names nothing yet).
                self.set_vrfs(InstanceNames::vrfs_of(&m));
                self.apply(|aft, out| {
                    if !links.is_empty() {
                        aft.rename_links(&m, &links, out);
                    }
                    for (table, prefix) in &touched {
                        aft.refresh(&m, *table, *prefix, out);
                    }
                });
            }
            touched.clear();
            links.clear();
            live.clear();
            if synced {
                self.ready.send_replace(true);
            }
            if resync && !lagged {
                self.resync();
            }
        }
    }
}
