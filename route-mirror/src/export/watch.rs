//! `route-mirror watch`: every change rendered once, as the mirror names it at that
//! moment, and broadcast to the watching clients. Bounded: a client that falls
//! [`WATCH_BUFFER`] records behind is dropped by the control server (and counted).

use std::sync::Arc;

use tokio::sync::broadcast;

use super::change::{Batch, Marker};
use crate::mirror::Mirror;
use crate::view::{route_view, WatchRecord};

/// Changes a watcher may fall behind by before it is dropped.
pub const WATCH_BUFFER: usize = 65536;

/// The sending side: the core renders into it; clients subscribe to it.
#[derive(Clone)]
pub struct Watch {
    tx: broadcast::Sender<Arc<WatchRecord>>,
}

impl Default for Watch {
    fn default() -> Watch {
        Watch {
            tx: broadcast::channel(WATCH_BUFFER).0,
        }
    }
}

impl Watch {
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<WatchRecord>> {
        self.tx.subscribe()
    }

    /// Clients watching now (rendering is skipped while there are none).
    pub fn watchers(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Renders a batch with the mirror's names (the mirror already reflects it).
    pub fn changes(&self, batch: &Batch, mirror: &Mirror) {
        if self.watchers() == 0 {
            return;
        }
        for d in &batch.deltas {
            let rec = WatchRecord {
                time_unix_ms: batch.time_unix_ms,
                op: lowercase(d.op),
                cause: Some(lowercase(d.cause)),
                source: batch.source.to_string(),
                route: Some(route_view(mirror, d.table, d.dst, &d.entry)),
                note: None,
                rule: None,
                copy: None,
            };
            let _ = self.tx.send(Arc::new(rec));
        }
        for d in &batch.rules {
            let f = d.rule.family;
            let all = mirror.rules.list(f).to_vec();
            let exists = |n: &str| mirror.rules.links.ifindex(n).is_some();
            let names = crate::names::system();
            let ctx = crate::rule::show::ShowCtx {
                names,
                rules: &all,
                link_exists: &exists,
            };
            let (line, _) = crate::rule::show::render(&d.rule, &ctx);
            let rec = WatchRecord {
                time_unix_ms: batch.time_unix_ms,
                op: if d.added { "add" } else { "delete" }.to_string(),
                cause: Some(d.cause.to_string()),
                source: batch.source.to_string(),
                route: None,
                note: None,
                rule: Some(format!("{f} {}", line.replacen(":\t", ": ", 1))),
                copy: None,
            };
            let _ = self.tx.send(Arc::new(rec));
        }
    }

    pub fn marker(&self, m: &Marker) {
        if self.watchers() == 0 {
            return;
        }
        let _ = self.tx.send(Arc::new(WatchRecord {
            time_unix_ms: super::change::now_ms(),
            op: m.op().to_string(),
            cause: None,
            source: m.source().to_string(),
            route: None,
            note: Some(m.note().to_string()),
            rule: None,
            copy: None,
        }));
    }

    /// Records made outside the core (a copy's writes), sent as they are.
    pub fn send(&self, rec: Arc<WatchRecord>) {
        let _ = self.tx.send(rec);
    }
}

/// A unit enum's serde name (`add`, `event`, ...).
fn lowercase(v: impl serde::Serialize) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}
