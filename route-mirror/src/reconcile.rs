//! BIRD-style mark-and-sweep of the mirror against a full dump (`krt_got_route` /
//! `krt_prune`).
//!
//! A scan starts a new generation; every dumped object is *marked* with it and gets a
//! verdict (seen, updated, created); events applied while the scan runs mark too,
//! since they are newer than the dump. The *prune* then deletes every object of the
//! scanned scope that no one marked. Kept pure (no I/O) so it is testable without a
//! kernel.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::model::{Family, RouteKey};
use crate::netlink::msg::DumpKind;

/// Outcome counts of a scan (or summed over all scans).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdicts {
    /// In the dump and identical in the mirror.
    pub seen: u64,
    /// In the dump, but the mirror had other attributes: an event was lost.
    pub updated: u64,
    /// In the dump, missing from the mirror: an event was lost.
    pub created: u64,
    /// In the mirror, not in the dump: a removal was lost (or was silent, IPv4 link down).
    pub deleted: u64,
}

impl Verdicts {
    pub fn corrections(&self) -> u64 {
        self.updated + self.created + self.deleted
    }

    pub fn add(&mut self, o: &Verdicts) {
        self.seen += o.seen;
        self.updated += o.updated;
        self.created += o.created;
        self.deleted += o.deleted;
    }

    pub fn count(&mut self, v: Verdict) {
        match v {
            Verdict::Seen => self.seen += 1,
            Verdict::Updated => self.updated += 1,
            Verdict::Created => self.created += 1,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Seen,
    Updated,
    Created,
}

/// What a scan dumps and may prune.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanScope {
    /// Route families to dump.
    pub families: Vec<Family>,
    /// Only this table (strict-checked dump), or all.
    pub table: Option<u32>,
    pub links: bool,
    pub addrs: bool,
    pub nexthops: bool,
    /// Policy rules of both families.
    #[serde(default)]
    pub rules: bool,
    /// `ignore_routes_with_linkdown` of every device, both families.
    #[serde(default)]
    pub netconf: bool,
}

impl ScanScope {
    pub fn full() -> ScanScope {
        ScanScope {
            families: Family::ALL.to_vec(),
            table: None,
            links: true,
            addrs: true,
            nexthops: true,
            rules: true,
            netconf: true,
        }
    }

    /// Routes of one family and the nexthop objects they may reference.
    pub fn routes(family: Family) -> ScanScope {
        ScanScope {
            families: vec![family],
            table: None,
            links: false,
            addrs: false,
            nexthops: true,
            rules: false,
            netconf: false,
        }
    }

    /// The netconf settings only (a new IPv4 `default` may have reached devices silently).
    pub fn netconf() -> ScanScope {
        ScanScope {
            families: Vec::new(),
            nexthops: false,
            netconf: true,
            rules: false,
            ..ScanScope::routes(Family::V4)
        }
    }

    /// The smallest scope covering both.
    pub fn merge(&mut self, o: &ScanScope) {
        for f in &o.families {
            if !self.families.contains(f) {
                self.families.push(*f);
            }
        }
        self.families.sort();
        if self.table != o.table {
            self.table = None;
        }
        self.links |= o.links;
        self.addrs |= o.addrs;
        self.nexthops |= o.nexthops;
        self.rules |= o.rules;
        self.netconf |= o.netconf;
    }

    /// The dumps to run, in an order where what routes refer to comes first.
    pub fn dumps(&self) -> Vec<DumpKind> {
        let mut d = Vec::new();
        if self.links {
            d.push(DumpKind::Links);
        }
        if self.addrs {
            d.extend(Family::ALL.iter().map(|f| DumpKind::Addrs(*f)));
        }
        if self.netconf {
            d.extend(Family::ALL.iter().map(|f| DumpKind::Netconf(*f)));
        }
        if self.nexthops {
            d.push(DumpKind::Nexthops);
        }
        if self.rules {
            d.extend(Family::ALL.iter().map(|f| DumpKind::Rules(*f)));
        }
        d.extend(
            self.families
                .iter()
                .map(|f| DumpKind::Routes(*f, self.table)),
        );
        d
    }

    pub fn covers_route(&self, family: Family, table: u32) -> bool {
        self.families.contains(&family) && self.table.is_none_or(|t| t == table)
    }
}

/// Why a scan ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScanReason {
    Initial,
    Periodic,
    Manual,
    /// The event stream lost messages (ENOBUFS): resync.
    Overrun,
    /// A link went down or away: confirm the inferred IPv4 removals.
    LinkChange,
    /// An IPv4 address went away: routes using it as source vanish silently.
    AddrRemoved,
    /// A nexthop object went away: the routes using it vanish.
    NexthopRemoved,
}

impl ScanReason {
    /// Whether the scan is expected to correct the mirror (it starts from nothing, or
    /// events were lost), so its corrections need no explaining: there is no point in
    /// remembering them as tentative (an initial sync would remember every route).
    pub fn expects_corrections(self) -> bool {
        matches!(self, ScanReason::Initial | ScanReason::Overrun)
    }
}

/// The result of one scan, as `stats` and `scan --wait` show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScanReport {
    pub reason: ScanReason,
    pub scope: ScanScope,
    pub generation: u32,
    /// Unix time the scan started, in milliseconds.
    pub started_unix_ms: u64,
    pub duration_ms: f64,
    pub routes_dumped: u64,
    /// Route verdicts.
    pub verdicts: Verdicts,
    /// Link, address and nexthop-object verdicts.
    pub object_verdicts: Verdicts,
    /// Dumps that failed (their objects were not pruned).
    pub failed_dumps: Vec<String>,
    /// Dump messages the kernel flagged NLM_F_DUMP_INTR (table changed mid-dump).
    pub interrupted_messages: u64,
    /// An overrun happened while this scan ran; another scan follows.
    pub overrun_during: bool,
}

/// A scan under way: its generation, remaining dumps and running verdicts.
pub struct ActiveScan {
    pub reason: ScanReason,
    pub scope: ScanScope,
    pub generation: u32,
    pub remaining: Vec<DumpKind>,
    pub current: Option<(DumpKind, u32)>,
    /// A reply of the current dump was seen: messages after it were queued after the
    /// dump request (all earlier ones come before its first reply).
    pub current_replied: bool,
    pub failed: Vec<DumpKind>,
    pub started: Instant,
    pub started_wall: SystemTime,
    pub routes_dumped: u64,
    pub verdicts: Verdicts,
    pub object_verdicts: Verdicts,
    pub interrupted: u64,
    pub overrun_during: bool,
    /// The key of the last dumped route and how many of its routes the dump listed so
    /// far: a key's routes arrive one after another, in the kernel's order.
    pub route_cursor: Option<(RouteKey, usize)>,
}

impl ActiveScan {
    pub fn new(reason: ScanReason, scope: ScanScope, generation: u32) -> ActiveScan {
        let mut remaining = scope.dumps();
        remaining.reverse(); // popped from the back
        ActiveScan {
            reason,
            scope,
            generation,
            remaining,
            current: None,
            current_replied: false,
            failed: Vec::new(),
            started: Instant::now(),
            started_wall: SystemTime::now(),
            routes_dumped: 0,
            verdicts: Verdicts::default(),
            object_verdicts: Verdicts::default(),
            interrupted: 0,
            overrun_during: false,
            route_cursor: None,
        }
    }

    /// The stamp for an event about objects of class `kind` applied now. Only an event
    /// known to be newer than that class's dump request may carry this scan's
    /// generation (and so survive the prune unconfirmed); an older one, e.g. queued
    /// before the request while the daemon was behind, must be confirmed by the dump,
    /// or a stale add whose delete was lost in an overrun would outlive the resync.
    pub fn event_stamp(&self, kind: Option<DumpKind>) -> u32 {
        let older = self.generation.wrapping_sub(1);
        match kind {
            Some(k) if self.current.is_some_and(|(c, _)| c == k) => {
                if self.current_replied {
                    self.generation
                } else {
                    older
                }
            }
            Some(k) if self.remaining.contains(&k) => older,
            _ => self.generation,
        }
    }

    /// Whether the dump of `kind` completed, so its objects may be pruned.
    pub fn dumped(&self, kind: DumpKind) -> bool {
        self.scope.dumps().contains(&kind) && !self.failed.contains(&kind)
    }

    pub fn report(&self, elapsed: Duration) -> ScanReport {
        ScanReport {
            reason: self.reason,
            scope: self.scope.clone(),
            generation: self.generation,
            started_unix_ms: self
                .started_wall
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            duration_ms: elapsed.as_secs_f64() * 1000.0,
            routes_dumped: self.routes_dumped,
            verdicts: self.verdicts,
            object_verdicts: self.object_verdicts,
            failed_dumps: self.failed.iter().map(|k| format!("{k:?}")).collect(),
            interrupted_messages: self.interrupted,
            overrun_during: self.overrun_during,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_widens_scope() {
        let mut a = ScanScope::routes(Family::V4);
        a.table = Some(100);
        let mut b = ScanScope::routes(Family::V6);
        b.table = Some(100);
        a.merge(&b);
        assert_eq!(a.families, vec![Family::V4, Family::V6]);
        assert_eq!(a.table, Some(100));
        b.table = Some(7);
        a.merge(&b);
        assert_eq!(a.table, None);
        assert!(a.covers_route(Family::V6, 7));
        assert!(!a.links);
    }

    #[test]
    fn dumps_put_nexthops_before_routes() {
        let d = ScanScope::full().dumps();
        let nh = d.iter().position(|k| *k == DumpKind::Nexthops).unwrap();
        let r = d
            .iter()
            .position(|k| matches!(k, DumpKind::Routes(..)))
            .unwrap();
        assert!(nh < r);
        assert_eq!(d.len(), 10);
    }
}
