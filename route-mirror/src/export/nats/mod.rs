//! The NATS JetStream export (`--nats-url URL`): every applied route change, as compact
//! JSON ([`message`]), to `route-mirror.<host>.<netns>.<table>.<family>` in a JetStream
//! stream the daemon creates if missing; snapshots and resync markers to
//! `route-mirror.<host>.<netns>.control`.
//!
//! One task per mirrored namespace follows its [`Feed`]. The feed is the bounded buffer:
//! while the server is unreachable the task stops reading it, the daemon keeps mirroring,
//! and once the feed holds `nats_buffer` changes it drops the rest (counted in `stats`
//! under `feeds`, name `nats`) and asks for a resnapshot. After a reconnect, a lag or a
//! failed publish the task publishes a fresh snapshot, so a consumer rebuilds exactly.
//! Routes whose rendering changed without a change of their own (a link renamed or
//! removed, a nexthop object replaced) are re-sent ([`keys`]).

pub mod keys;
pub mod message;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use async_nats::connection::State;
use async_nats::jetstream;
use tracing::{info, warn};

use self::keys::{just, key_routes, Derived, KeyOf};
use self::message::{base, family_token, route_id, Body, Keyed, Msg, SNAPSHOT_CHUNK};
use super::feed::{Feed, MirrorReader, Update};
use super::hub::Hub;
use crate::view::{route_view, RouteView};

/// `--nats-*` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct NatsConfig {
    pub url: Option<String>,
    /// The `<host>` subject token; default: the system's host name.
    pub host: Option<String>,
    /// JetStream stream name (created with subjects `<subject_prefix>.>`).
    pub stream: String,
    pub subject_prefix: String,
    /// Seconds between full snapshots (0: only at start, reconnect and lag).
    pub snapshot_interval: Duration,
    /// Route changes buffered while the server is unreachable or slow.
    pub buffer: usize,
    /// Oldest messages the stream keeps (must exceed `snapshot_interval`).
    pub max_age: Duration,
}

impl From<&crate::config::Config> for NatsConfig {
    /// The `nats_*` keys of the configuration file (and their flags).
    fn from(c: &crate::config::Config) -> NatsConfig {
        NatsConfig {
            url: c.nats_url.clone(),
            host: c.nats_host.clone(),
            stream: c.nats_stream.clone(),
            snapshot_interval: Duration::from_secs_f64(c.nats_snapshot_interval),
            buffer: c.nats_buffer,
            ..Default::default()
        }
    }
}

impl Default for NatsConfig {
    fn default() -> NatsConfig {
        NatsConfig {
            url: None,
            host: None,
            stream: "route-mirror".into(),
            subject_prefix: "route-mirror".into(),
            snapshot_interval: Duration::from_secs(300),
            buffer: 1 << 20,
            max_age: Duration::from_secs(3600),
        }
    }
}

/// Counters of the NATS export (all namespaces).
#[derive(Debug, Default)]
pub struct NatsStats {
    pub published: AtomicU64,
    pub bytes: AtomicU64,
    pub snapshots: AtomicU64,
    /// Publishes the server did not acknowledge (each answered by a snapshot).
    pub publish_errors: AtomicU64,
    /// Times a task found the connection back after losing it.
    pub reconnects: AtomicU64,
}

impl NatsStats {
    pub fn json(&self) -> serde_json::Value {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "published": g(&self.published),
            "bytes": g(&self.bytes),
            "snapshots": g(&self.snapshots),
            "publish_errors": g(&self.publish_errors),
            "reconnects": g(&self.reconnects),
        })
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

fn now_ms() -> u64 {
    crate::export::change::now_ms()
}

/// Connects (in the background: an unreachable server at start is like a lost one)
/// and starts one publisher per namespace.
pub async fn start(cfg: &NatsConfig, hubs: &[Hub]) -> Result<Arc<NatsStats>> {
    let url = cfg.url.clone().context("no NATS url")?;
    // Connections made (the first and every reconnect): a publisher that sees a new one
    // resends a snapshot, even if the client's own buffer carried everything across.
    let connects = Arc::new(AtomicU64::new(0));
    let c = connects.clone();
    let client = async_nats::ConnectOptions::new()
        .name("route-mirror")
        .event_callback(move |ev| {
            let c = c.clone();
            async move {
                if matches!(ev, async_nats::Event::Connected) {
                    c.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .reconnect_delay_callback(|n| Duration::from_millis((100 * n as u64).min(2000)))
        .connect(&url)
        .await
        .with_context(|| format!("NATS url {url}"))?;
    let stats = Arc::new(NatsStats::default());
    let host = cfg.host.clone().unwrap_or_else(hostname);
    let epoch = now_ms();
    for hub in hubs {
        let feed = hub.subscribe("nats", cfg.buffer);
        let p = Publisher {
            js: jetstream::new(client.clone()),
            client: client.clone(),
            mirror: feed.reader(),
            feed,
            base: base(&cfg.subject_prefix, &host, hub.netns()),
            cfg: cfg.clone(),
            epoch,
            connects: connects.clone(),
            seq: 0,
            snapshot_id: 0,
            derived: Derived::default(),
            partial: false,
            stats: stats.clone(),
        };
        tokio::spawn(p.run());
    }
    info!(%url, host, stream = cfg.stream, "NATS export started");
    Ok(stats)
}

struct Publisher {
    js: jetstream::Context,
    client: async_nats::Client,
    feed: Feed,
    mirror: MirrorReader,
    base: String,
    cfg: NatsConfig,
    epoch: u64,
    connects: Arc<AtomicU64>,
    seq: u64,
    snapshot_id: u64,
    /// Nexthop objects as last published: finds routes an object change rewrote.
    derived: Derived,
    /// The last snapshot was taken before the initial sync finished.
    partial: bool,
    stats: Arc<NatsStats>,
}

/// Acknowledgements awaited together (publishes are pipelined).
type Acks = Vec<jetstream::context::PublishAckFuture>;

impl Publisher {
    fn msg(&mut self, time_ms: u64, body: Body) -> Vec<u8> {
        self.seq += 1;
        let m = Msg {
            epoch: self.epoch,
            seq: self.seq,
            time_ms,
            body,
        };
        serde_json::to_vec(&m).unwrap_or_default()
    }

    async fn publish(&mut self, subject: String, payload: Vec<u8>, acks: &mut Acks) -> bool {
        self.stats
            .bytes
            .fetch_add(payload.len() as u64, Ordering::Relaxed);
        match self.js.publish(subject, payload.into()).await {
            Ok(a) => {
                acks.push(a);
                true
            }
            Err(e) => {
                warn!(error = %e, "NATS publish failed");
                false
            }
        }
    }

    /// Waits for every pending acknowledgement; false if any failed.
    async fn settle(&self, acks: &mut Acks) -> bool {
        let mut ok = true;
        for a in acks.drain(..) {
            match a.await {
                Ok(_) => {
                    self.stats.published.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    if ok {
                        warn!(error = %e, "NATS publish not acknowledged");
                    }
                    self.stats.publish_errors.fetch_add(1, Ordering::Relaxed);
                    ok = false;
                }
            }
        }
        ok
    }

    fn control(&self) -> String {
        format!("{}.control", self.base)
    }

    fn subject(&self, r: &RouteView) -> String {
        format!(
            "{}.{}.{}",
            self.base,
            message::token(&crate::names::system().table_name(r.table)),
            family_token(r.family)
        )
    }

    async fn snapshot(&mut self, reason: &str) -> bool {
        let snap = self.feed.snapshot();
        self.partial = !snap.synced;
        self.derived.reset(&snap.names, &snap.routes);
        let routes: Vec<Keyed> = snap
            .routes
            .iter()
            .map(|(t, p, e)| Keyed {
                id: route_id(&e.sub()),
                route: route_view(&snap.names, *t, *p, e),
            })
            .collect();
        drop(snap.routes);
        self.snapshot_id += 1;
        let id = self.snapshot_id;
        let control = self.control();
        let mut acks = Acks::new();
        let start = Body::SnapshotStart {
            snapshot: id,
            routes: routes.len(),
            reason: reason.to_string(),
            synced: snap.synced,
            resyncing: snap.resyncing,
        };
        let m = self.msg(now_ms(), start);
        let mut ok = self.publish(control.clone(), m, &mut acks).await;
        for chunk in routes.chunks(SNAPSHOT_CHUNK) {
            let m = self.msg(
                now_ms(),
                Body::Snapshot {
                    snapshot: id,
                    routes: chunk.to_vec(),
                },
            );
            ok &= self.publish(control.clone(), m, &mut acks).await;
            if acks.len() >= 64 {
                ok &= self.settle(&mut acks).await;
            }
        }
        let m = self.msg(now_ms(), Body::SnapshotEnd { snapshot: id });
        ok &= self.publish(control, m, &mut acks).await;
        ok &= self.settle(&mut acks).await;
        self.stats.snapshots.fetch_add(1, Ordering::Relaxed);
        info!(subject = %self.base, routes = routes.len(), reason, ok, "NATS snapshot published");
        ok
    }

    /// One message per route change, then one per key whose rendering changed without
    /// a change of its own; every key's routes as the mirror holds them now (so a
    /// message may be ahead of its `seq`, never behind: the key's next change says it
    /// again). Rendered under one read lock, published after it.
    async fn changes(&mut self, batch: &crate::export::change::Batch) -> bool {
        let rendered: Vec<(String, Vec<u8>)> = {
            let mirror = self.mirror.clone();
            let m = mirror.read();
            let mut v = Vec::with_capacity(batch.deltas.len());
            let word = |x: serde_json::Result<serde_json::Value>| {
                x.ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            };
            // Links renamed or removed, and links whose hops' liveness changed (a
            // route's hops show `dead`/`linkdown` as a dump would now).
            let mut links = batch.links_renamed.clone();
            if batch
                .links_changed
                .contains(&crate::mirror::Journal::ALL_LINKS)
            {
                links.extend(m.links.keys());
            } else {
                links.extend(&batch.links_changed);
            }
            let rederive = batch.nexthops_changed || !links.is_empty();
            let mut sent: std::collections::HashSet<KeyOf> = Default::default();
            for d in &batch.deltas {
                let sub = d.entry.sub();
                let list = key_routes(&m, d.table, &d.dst, &sub);
                let routes = (d.op == crate::mirror::DeltaOp::Delete || !just(&list, &d.entry))
                    .then(|| {
                        list.iter()
                            .map(|e| route_view(&*m, d.table, d.dst, e))
                            .collect()
                    });
                self.derived.published(&m, &d.entry.attrs);
                if rederive {
                    sent.insert(keys::key_of(d.table, d.dst, &sub));
                }
                let route = route_view(&*m, d.table, d.dst, &d.entry);
                let subject = self.subject(&route);
                let body = Body::Change {
                    op: word(serde_json::to_value(d.op)),
                    cause: word(serde_json::to_value(d.cause)),
                    id: route_id(&sub),
                    route: Box::new(route),
                    routes,
                };
                v.push((subject, self.msg(batch.time_unix_ms, body)));
            }
            if rederive {
                let affected = self.derived.affected(&m, &links, batch.nexthops_changed);
                for (k @ (table, dst, priority, tos, src), cause) in affected {
                    if sent.contains(&k) {
                        continue; // its change above already shows it as it is now
                    }
                    let sub = crate::model::SubKey { priority, tos, src };
                    let list: Vec<RouteView> = key_routes(&m, table, &dst, &sub)
                        .into_iter()
                        .map(|e| route_view(&*m, table, dst, e))
                        .collect();
                    let Some(first) = list.first().cloned() else {
                        continue;
                    };
                    let subject = self.subject(&first);
                    let body = Body::Change {
                        op: "replace".into(),
                        cause: cause.into(),
                        id: route_id(&sub),
                        route: Box::new(first),
                        routes: (list.len() > 1).then_some(list),
                    };
                    v.push((subject, self.msg(batch.time_unix_ms, body)));
                }
            }
            v
        };
        let mut acks = Acks::new();
        let mut ok = true;
        for (subject, payload) in rendered {
            ok &= self.publish(subject, payload, &mut acks).await;
            if acks.len() >= 256 {
                ok &= self.settle(&mut acks).await;
            }
        }
        ok & self.settle(&mut acks).await
    }

    async fn marker(&mut self, body: Body) -> bool {
        let mut acks = Acks::new();
        let control = self.control();
        let m = self.msg(now_ms(), body);
        let ok = self.publish(control, m, &mut acks).await;
        ok & self.settle(&mut acks).await
    }

    async fn ensure_stream(&self) -> Result<()> {
        let cfg = jetstream::stream::Config {
            name: self.cfg.stream.clone(),
            subjects: vec![format!("{}.>", self.cfg.subject_prefix)],
            max_age: self.cfg.max_age,
            ..Default::default()
        };
        self.js
            .get_or_create_stream(cfg)
            .await
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!("creating JetStream stream {}: {e}", self.cfg.stream))
    }

    async fn run(mut self) {
        let mut need: Option<&'static str> = Some("start");
        let mut stream_ok = false;
        let mut seen_connects = 0;
        let period = (!self.cfg.snapshot_interval.is_zero()).then_some(self.cfg.snapshot_interval);
        let mut next_periodic = period.map(|p| tokio::time::Instant::now() + p);
        loop {
            // Not connected: leave the feed alone (it is the bounded buffer).
            if self.client.connection_state() != State::Connected {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            let connects = self.connects.load(Ordering::Relaxed);
            if connects != seen_connects {
                if seen_connects > 0 {
                    self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                    info!(subject = %self.base, "NATS server reachable again: resending a snapshot");
                    need = Some("reconnect");
                    stream_ok = false;
                }
                seen_connects = connects;
            }
            if !stream_ok {
                if let Err(e) = self.ensure_stream().await {
                    warn!(error = %e, "NATS: retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                stream_ok = true;
            }
            if let Some(reason) = need.take() {
                if !self.snapshot(reason).await {
                    need = Some("publish-error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                if let Some(p) = period {
                    next_periodic = Some(tokio::time::Instant::now() + p);
                }
            }
            let tick = async {
                match next_periodic {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            let update = tokio::select! {
                u = self.feed.recv() => u,
                _ = tick => { need = Some("periodic"); continue }
                _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
            };
            let ok = match update {
                None => return, // the daemon stops
                Some(Update::Changes(b)) => self.changes(&b).await,
                Some(Update::ResyncStart { note, .. }) => {
                    self.marker(Body::ResyncStart { note: note.into() }).await
                }
                Some(Update::ResyncDone { .. }) => self.marker(Body::ResyncEnd).await,
                // A snapshot taken before the initial sync finished is complete now.
                Some(Update::Synced) if std::mem::take(&mut self.partial) => {
                    self.marker(Body::ResyncEnd).await
                }
                Some(Update::Synced) => true,
                Some(Update::Resnapshot) => {
                    need = Some("lagged");
                    true
                }
            };
            if !ok {
                need = Some("publish-error");
            }
        }
    }
}
