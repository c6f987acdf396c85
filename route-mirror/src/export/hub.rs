//! The hub: the one place the change funnel fans out. [`Hub`] is the side every thread
//! reaches (subscribing, counters); [`Exports`] is the core's side, which drains the
//! mirror's journal once per batch and hands it to every export.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use tokio::sync::broadcast;

use super::bpf_fib::{BpfFib, BpfFibStats};
use super::change::{Batch, Marker};
use super::feed::{Feed, FeedStats, Progress, Tap, Update};
use super::watch::Watch;
use crate::mirror::{Journal, Mirror};
use crate::view::WatchRecord;

/// Subscriptions to the change funnel, shared by every thread (cheap to clone).
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    /// The mirrored namespace (`host`: the daemon's own).
    netns: String,
    mirror: Arc<RwLock<Mirror>>,
    watch: Watch,
    feeds: Mutex<Vec<Arc<Tap>>>,
    progress: Arc<Progress>,
}

impl Hub {
    pub fn new(netns: Option<&str>, mirror: Arc<RwLock<Mirror>>) -> Hub {
        Hub {
            inner: Arc::new(Inner {
                netns: netns.unwrap_or("host").to_string(),
                mirror,
                watch: Watch::default(),
                feeds: Mutex::new(Vec::new()),
                progress: Arc::default(),
            }),
        }
    }

    /// The mirrored namespace's name (`host` for the daemon's own), for exports that
    /// label what they publish.
    pub fn netns(&self) -> &str {
        &self.inner.netns
    }

    /// A `route-mirror watch` client's stream of rendered changes.
    pub fn watch(&self) -> broadcast::Receiver<Arc<WatchRecord>> {
        self.inner.watch.subscribe()
    }

    pub fn watchers(&self) -> usize {
        self.inner.watch.watchers()
    }

    /// Shows a record made outside the core to this namespace's watchers (a copy's
    /// writes into one of its tables). Check [`Hub::watchers`] first to skip building it.
    pub fn watch_send(&self, rec: Arc<crate::view::WatchRecord>) {
        self.inner.watch.send(rec);
    }

    /// A new feed for an export running on its own thread or task: take a
    /// [`Feed::snapshot`], then apply what [`Feed::recv`] delivers. `capacity` bounds
    /// the route changes it may fall behind by before it must resnapshot.
    pub fn subscribe(&self, name: &str, capacity: usize) -> Feed {
        let (feed, tap) = Feed::new(
            name,
            capacity,
            self.inner.mirror.clone(),
            self.inner.progress.clone(),
        );
        self.feeds().push(tap);
        feed
    }

    /// Counters of every live feed.
    pub fn feed_stats(&self) -> Vec<FeedStats> {
        self.feeds().iter().map(|t| t.stats()).collect()
    }

    /// The live feeds (those whose [`Feed`] was dropped are let go here).
    fn feeds(&self) -> MutexGuard<'_, Vec<Arc<Tap>>> {
        let mut f = self.inner.feeds.lock().expect("feeds lock");
        f.retain(|t| Arc::strong_count(t) > 1);
        f
    }
}

/// The core's side of the funnel: owns the exports that run on the core thread (watch
/// rendering, the BPF FIB) and feeds the others.
pub struct Exports {
    hub: Hub,
    bpf_fib: Option<BpfFib>,
}

impl Exports {
    pub fn new(hub: Hub, bpf_fib: Option<BpfFib>) -> Exports {
        Exports { hub, bpf_fib }
    }

    /// Call before changing the mirror: it journals changes only while an export
    /// consumes them.
    pub fn begin(&self, mirror: &mut Mirror) {
        let wanted = self.hub.watchers() > 0
            || !self.hub.feeds().is_empty()
            || self.bpf_fib.as_ref().is_some_and(BpfFib::started);
        if !wanted {
            mirror.journal = None;
        } else if mirror.journal.is_none() {
            mirror.journal = Some(Journal::default());
        }
    }

    /// Hands what the mirror journaled to every export. Call before releasing the
    /// mirror's write lock: feeds rely on it (see [`Feed::snapshot_with`]).
    pub fn publish(&mut self, mirror: &mut Mirror, source: &'static str) {
        let Some(journal) = mirror.journal.replace(Journal::default()) else {
            return;
        };
        let batch = Batch::new(journal, source);
        if batch.is_empty() {
            return;
        }
        self.hub.inner.watch.changes(&batch, mirror);
        if let Some(f) = &mut self.bpf_fib {
            f.changes(&batch, mirror);
        }
        let feeds = self.hub.feeds();
        if !feeds.is_empty() {
            let batch = Arc::new(batch);
            for t in feeds.iter() {
                t.changes(&batch);
            }
        }
    }

    /// A resync starts or ends.
    pub fn marker(&self, m: Marker) {
        let resyncing = matches!(m, Marker::ResyncStart { .. });
        self.hub
            .inner
            .progress
            .resyncing
            .store(resyncing, Ordering::Release);
        self.hub.inner.watch.marker(&m);
        for t in self.hub.feeds().iter() {
            t.push(Update::from(&m));
        }
    }

    /// The initial sync is done (call under the mirror's write lock): the BPF FIB
    /// starts from the synced mirror, feeds learn that it is complete.
    pub fn synced(&mut self, mirror: &Mirror) {
        self.hub
            .inner
            .progress
            .synced
            .store(true, Ordering::Release);
        if let Some(f) = &mut self.bpf_fib {
            f.start(mirror);
        }
        for t in self.hub.feeds().iter() {
            t.push(Update::Synced);
        }
    }

    /// After each turn of the core loop and before barriers are answered (outside the
    /// write lock): the BPF FIB writes its maps, so a query that returns saw them too.
    pub fn flush(&mut self, mirror: &RwLock<Mirror>) {
        if let Some(f) = &mut self.bpf_fib {
            f.flush(mirror);
        }
    }

    pub fn bpf_fib_stats(&self) -> Option<BpfFibStats> {
        self.bpf_fib.as_ref().map(BpfFib::stats)
    }
}

impl Drop for Exports {
    /// The core stopped: feeds end once drained.
    fn drop(&mut self) {
        for t in self.hub.feeds().iter() {
            t.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{rtn, Change, NextHop, Route, RouteAttrs, RouteKey, SubKey};

    fn add(dst: &str) -> Change {
        Change::NewRoute {
            route: Route {
                key: RouteKey {
                    table: 254,
                    dst: dst.parse().unwrap(),
                    sub: SubKey::metric(0),
                },
                attrs: Arc::new(RouteAttrs {
                    kind: rtn::UNICAST,
                    nexthops: vec![NextHop::new(None, 2)].into(),
                    ..Default::default()
                }),
            },
            flags: 0,
        }
    }

    fn setup() -> (Arc<RwLock<Mirror>>, Hub, Exports) {
        let mirror = Arc::new(RwLock::new(Mirror::new()));
        let hub = Hub::new(None, mirror.clone());
        let core = Exports::new(hub.clone(), None);
        (mirror, hub, core)
    }

    /// One batch through the funnel, as the core does it.
    fn apply(mirror: &RwLock<Mirror>, core: &mut Exports, changes: &[&str]) {
        let mut m = mirror.write().unwrap();
        core.begin(&mut m);
        for dst in changes {
            m.apply(add(dst));
        }
        core.publish(&mut m, "netlink");
    }

    fn deltas(u: Option<Update>) -> usize {
        match u {
            Some(Update::Changes(b)) => b.deltas.len(),
            other => panic!("expected changes, got {other:?}"),
        }
    }

    #[test]
    fn a_feed_that_falls_behind_resnapshots_then_follows_again() {
        let (mirror, hub, mut core) = setup();
        let mut feed = hub.subscribe("slow", 2);
        apply(&mirror, &mut core, &["10.0.0.0/8"]);
        apply(&mirror, &mut core, &["10.1.0.0/16"]);
        // The third change does not fit: the feed is told to resnapshot, and nothing
        // more is queued until it does.
        apply(&mirror, &mut core, &["10.2.0.0/16"]);
        apply(&mirror, &mut core, &["10.3.0.0/16"]);
        assert_eq!(deltas(feed.try_recv()), 1);
        assert_eq!(deltas(feed.try_recv()), 1);
        assert!(matches!(feed.try_recv(), Some(Update::Resnapshot)));
        assert!(feed.try_recv().is_none());
        let s = feed.stats();
        assert_eq!((s.changes, s.dropped, s.resnapshots), (2, 2, 1));
        let snap = feed.snapshot();
        assert_eq!(snap.routes.len(), 4);
        apply(&mirror, &mut core, &["10.4.0.0/16", "10.5.0.0/16"]);
        assert_eq!(deltas(feed.try_recv()), 2);
        assert_eq!(hub.feed_stats()[0].queued, 0);
    }

    #[test]
    fn a_snapshot_takes_in_queued_changes_and_keeps_markers() {
        let (mirror, hub, mut core) = setup();
        let mut feed = hub.subscribe("f", 100);
        apply(&mirror, &mut core, &["10.0.0.0/8"]);
        core.marker(Marker::ResyncStart {
            source: "netlink",
            note: "test",
        });
        apply(&mirror, &mut core, &["10.1.0.0/16"]);
        let snap = feed.snapshot();
        assert_eq!(snap.routes.len(), 2);
        assert!(snap.resyncing && !snap.synced);
        assert!(matches!(
            feed.try_recv(),
            Some(Update::ResyncStart {
                source: "netlink",
                ..
            })
        ));
        assert!(feed.try_recv().is_none());
        core.synced(&mirror.read().unwrap());
        assert!(matches!(feed.try_recv(), Some(Update::Synced)));
        assert!(feed.snapshot().synced);
    }

    #[test]
    fn nothing_is_journaled_without_a_consumer() {
        let (mirror, hub, mut core) = setup();
        apply(&mirror, &mut core, &["10.0.0.0/8"]);
        core.begin(&mut mirror.write().unwrap());
        assert!(mirror.read().unwrap().journal.is_none());
        let feed = hub.subscribe("f", 100);
        core.begin(&mut mirror.write().unwrap());
        assert!(mirror.read().unwrap().journal.is_some());
        // Dropping the feed unsubscribes it.
        drop(feed);
        core.begin(&mut mirror.write().unwrap());
        assert!(mirror.read().unwrap().journal.is_none());
        assert!(hub.feed_stats().is_empty());
    }

    #[test]
    fn a_feed_ends_after_the_core_stops() {
        let (mirror, hub, mut core) = setup();
        let mut feed = hub.subscribe("f", 100);
        apply(&mirror, &mut core, &["10.0.0.0/8"]);
        let reader = std::thread::spawn(move || {
            let mut n = 0;
            while let Some(u) = feed.recv_blocking() {
                n += deltas(Some(u));
            }
            n
        });
        drop(core);
        assert_eq!(reader.join().unwrap(), 1);
    }

    #[tokio::test]
    async fn an_async_feed_wakes_on_changes() {
        let (mirror, hub, mut core) = setup();
        let mut feed = hub.subscribe("f", 100);
        let waiter = tokio::spawn(async move { feed.recv().await.map(|u| deltas(Some(u))) });
        tokio::task::yield_now().await;
        apply(&mirror, &mut core, &["10.0.0.0/8", "10.1.0.0/16"]);
        assert_eq!(waiter.await.unwrap(), Some(2));
    }
}
