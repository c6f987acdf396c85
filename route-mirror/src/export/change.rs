//! What the change funnel carries: batches of applied route changes and the resync
//! markers around them.

use crate::mirror::Journal;
pub use crate::mirror::{Cause, Delta, DeltaOp};

/// The changes the core applied together (one datagram, one ring drain, one prune), in
/// the order it applied them. The mirror already reflects them when an export sees them.
#[derive(Debug, Default)]
pub struct Batch {
    pub time_unix_ms: u64,
    /// The source that carried them: `netlink` or `ebpf`.
    pub source: &'static str,
    /// Route changes: op (add, replace, delete), cause (event, inferred, scan), table,
    /// prefix and the route entry (for a delete: the entry removed).
    pub deltas: Vec<Delta>,
    /// A nexthop object changed or went away: routes that use objects may forward
    /// differently without a delta of their own (read them from the mirror).
    pub nexthops_changed: bool,
    /// Policy rules added or removed.
    pub rules: Vec<crate::fib::rules::mirror::RuleDelta>,
    /// Links renamed or removed (ifindex): next hops and routes rendered with their
    /// name show another one now (read it from the mirror; none if removed).
    pub links_renamed: Vec<u32>,
    /// Links whose hops' liveness changed (see [`Journal::links_changed`]): routes
    /// through them may forward differently without a delta of their own.
    pub links_changed: Vec<u32>,
}

impl Batch {
    pub fn new(journal: Journal, source: &'static str) -> Batch {
        Batch {
            time_unix_ms: now_ms(),
            source,
            deltas: journal.deltas,
            nexthops_changed: journal.nexthops_changed,
            rules: journal.rules,
            links_renamed: journal.links_renamed,
            links_changed: journal.links_changed,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.deltas.is_empty()
            && !self.nexthops_changed
            && self.rules.is_empty()
            && self.links_renamed.is_empty()
            && self.links_changed.is_empty()
    }
}

/// A resync's bounds. Between them the mirror may miss changes (events were lost); at
/// `ResyncDone` it is exact again, and every correction came through as a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Marker {
    ResyncStart {
        source: &'static str,
        /// Why events were lost, and what a consumer should do.
        note: &'static str,
    },
    ResyncDone {
        source: &'static str,
    },
}

impl Marker {
    /// The marker's name in `route-mirror watch`.
    pub fn op(&self) -> &'static str {
        match self {
            Marker::ResyncStart { .. } => "resync",
            Marker::ResyncDone { .. } => "resync-done",
        }
    }

    pub fn source(&self) -> &'static str {
        match self {
            Marker::ResyncStart { source, .. } | Marker::ResyncDone { source } => source,
        }
    }

    pub fn note(&self) -> &'static str {
        match self {
            Marker::ResyncStart { note, .. } => note,
            Marker::ResyncDone { .. } => "the mirror is exact again as of this resync",
        }
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
