//! The mirrored state of one network namespace: routes (in the [`Fib`]), links,
//! addresses and nexthop objects, and the rules for applying changes to it.
//!
//! Two entry points change it: [`Mirror::apply`] for events, [`Mirror::mark`] +
//! [`Mirror::prune`] for dumps (see [`crate::reconcile`]).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use ipnet::IpNet;

use serde::{Deserialize, Serialize};

use crate::fib::{Entry, Fib};
use crate::intern::Interner;
use crate::model::{
    Address, Change, Family, Link, NextHop, NexthopKind, NexthopObject, Route, RouteAttrs, RouteKey,
};
use crate::netlink::msg::DumpKind;
use crate::reconcile::{ActiveScan, ScanReason, ScanScope, Verdict};

/// A mirrored object with the generation that last confirmed it.
#[derive(Debug, Clone)]
pub struct Stamped<T> {
    pub value: T,
    pub stamp: u32,
}

/// Counts of what the event path applied.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ApplyCounters {
    pub route_adds: u64,
    pub route_updates: u64,
    pub route_deletes: u64,
    /// Deletes of routes the mirror did not have (harmless; e.g. after an inferred removal).
    pub route_deletes_unknown: u64,
    /// Routes reported with every next hop dead: treated as deleted.
    pub dead_routes: u64,
    pub link_events: u64,
    pub addr_events: u64,
    pub nexthop_events: u64,
    /// IPv4 routes removed because their device went down or away, their source address
    /// went away or their nexthop object was deleted (the kernel says nothing of these).
    pub inferred_removals: u64,
    /// Inferred removals a later full route dump of their family confirmed: the kernel
    /// no longer had them when the confirming scan ran.
    pub inferred_confirmed: u64,
    /// Inferred removals the confirming dump still listed: the inference was wrong and
    /// the scan put them back.
    pub inferred_refuted: u64,
    /// Inferred removals awaiting their confirming scan (neither of the above yet; a
    /// route re-added by an event before that scan leaves this set uncounted).
    pub inferred_pending: u64,
}

/// One change to the mirrored routes, journaled while an export consumes them
/// ([`crate::export`]).
#[derive(Debug, Clone)]
pub struct Delta {
    pub op: DeltaOp,
    pub cause: Cause,
    pub table: u32,
    pub dst: IpNet,
    pub entry: Entry,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeltaOp {
    Add,
    Replace,
    Delete,
}

/// Why the mirror changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Cause {
    /// A kernel notification.
    Event,
    /// Removed because its device, source address or nexthop object went away (the
    /// kernel sends nothing for these IPv4 routes).
    Inferred,
    /// Corrected by a scan's mark and sweep.
    Scan,
}

/// What changed since the exports last drained it: the one change funnel. Every FIB
/// change goes through [`Mirror::note`], so events, inferred removals and scan
/// corrections all land here, in order.
#[derive(Debug, Default)]
pub struct Journal {
    pub deltas: Vec<Delta>,
    /// A nexthop object changed or went away: routes that use objects may forward
    /// differently without a delta of their own.
    pub nexthops_changed: bool,
    /// Policy rules added or removed.
    pub rules: Vec<crate::fib::rules::mirror::RuleDelta>,
    /// Links renamed or removed (ifindex, each once per drain): what names them (the
    /// AFT's `interface-ref`, a route's `dev`) changed without a route delta. The
    /// routes through a removed link go as deltas of their own.
    pub links_renamed: Vec<u32>,
}

/// Identity of a route in the pending-inference set: a hash, not the key, so a link
/// carrying a million routes costs 16 bytes per route while its removal awaits the dump.
fn key_hash(table: u32, dst: &IpNet, sub: &crate::model::SubKey) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (table, dst, sub).hash(&mut h);
    h.finish()
}

/// A scan an event asks for (to confirm an inference).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowUp {
    pub reason: ScanReason,
    pub scope: ScanScope,
}

#[derive(Default)]
pub struct Mirror {
    pub fib: Fib,
    pub links: HashMap<u32, Stamped<Link>>,
    pub addrs: HashMap<Address, u32>,
    pub nexthops: HashMap<u32, Stamped<NexthopObject>>,
    /// Policy rules and the link facts they name ([`crate::fib::rules::mirror`]).
    pub rules: crate::fib::rules::mirror::RuleMirror,
    interner: Interner,
    generation: u32,
    pub counters: ApplyCounters,
    /// Changes since the exports last drained them, kept only while `Some` (an export
    /// consumes them).
    pub journal: Option<Journal>,
    /// Inferred removals awaiting confirmation: route hash → (family, generation at
    /// removal). A scan confirms only removals older than itself.
    inferred: HashMap<u64, (Family, u32)>,
}

impl Mirror {
    pub fn new() -> Mirror {
        Mirror {
            generation: 1,
            ..Default::default()
        }
    }

    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Distinct attribute sets shared by all routes.
    pub fn attr_sets(&self) -> usize {
        self.interner.len()
    }

    pub fn link_name(&self, ifindex: u32) -> Option<&str> {
        self.links.get(&ifindex).map(|l| l.value.name.as_str())
    }

    pub fn ifindex_by_name(&self, name: &str) -> Option<u32> {
        self.links
            .values()
            .find(|l| l.value.name == name)
            .map(|l| l.value.ifindex)
    }

    /// The next hops a route forwards through: its nexthop object's if it has one.
    pub fn effective_hops(&self, attrs: &RouteAttrs) -> Vec<NextHop> {
        effective_hops(&self.nexthops, attrs)
    }

    /// What rendering a route needs besides the FIB (link names, nexthop objects), copied
    /// so that lookups on a FIB snapshot can render without the mirror's lock.
    pub fn names(&self) -> Names {
        Names {
            links: self
                .links
                .iter()
                .map(|(&i, l)| (i, l.value.name.clone()))
                .collect(),
            nexthops: self.nexthops.clone(),
        }
    }

    /// Whether changes must be reported to [`Mirror::note`] (someone consumes them).
    fn tracking(&self) -> bool {
        self.journal.is_some()
    }

    /// Tells the exports that nexthop objects changed: the routes using them changed
    /// their next hops without any route message.
    fn touch_nh_routes(&mut self) {
        if let Some(j) = &mut self.journal {
            j.nexthops_changed = true;
        }
    }

    /// Tells the exports that a link was renamed or removed: renderings that name it
    /// changed without a route message.
    fn touch_link_name(&mut self, ifindex: u32) {
        if let Some(j) = &mut self.journal {
            if !j.links_renamed.contains(&ifindex) {
                j.links_renamed.push(ifindex);
            }
        }
    }

    /// Remembers inferred removals until a dump confirms or refutes them.
    fn pend_inferred(&mut self, keys: Vec<(Family, u64)>) {
        let gen = self.generation;
        for (f, k) in keys {
            self.inferred.insert(k, (f, gen));
        }
        self.counters.inferred_pending = self.inferred.len() as u64;
    }

    fn note_rule(&mut self, added: bool, rule: &crate::rule::Rule, cause: &'static str) {
        if let Some(j) = &mut self.journal {
            j.rules.push(crate::fib::rules::mirror::RuleDelta {
                added,
                rule: rule.clone(),
                cause,
            });
        }
    }

    fn note(&mut self, op: DeltaOp, cause: Cause, table: u32, dst: IpNet, entry: &Entry) {
        if let Some(j) = &mut self.journal {
            j.deltas.push(Delta {
                op,
                cause,
                table,
                dst,
                entry: entry.clone(),
            });
        }
    }

    fn entry(&mut self, route: Route, stamp: u32) -> (RouteKey, Entry) {
        let attrs = self.interner.intern(route.attrs);
        (route.key, Entry::new(route.key.sub, attrs, stamp))
    }

    /// An IPv6 `NLM_F_REPLACE` replaces the kernel's route with the same dst, metric
    /// and source even when its next hop (part of our key for device, RA and
    /// nexthop-object routes) differs: `replace blackhole P` by `replace P nhid 9` left
    /// the blackhole in the mirror (found by the soak). With exactly one such route it
    /// is the one replaced; with several the kernel took the first and a scan confirms.
    fn replaced_v6_sibling(&mut self, key: &RouteKey) {
        let t = self.fib.table_mut(key.family(), key.table);
        let others: Vec<crate::model::SubKey> = t
            .get(&key.dst)
            .map(|es| {
                es.iter()
                    .filter(|e| {
                        let sub = e.sub();
                        sub != key.sub && sub.priority == key.sub.priority && sub.src == key.sub.src
                    })
                    .map(|e| e.sub())
                    .collect()
            })
            .unwrap_or_default();
        if let [only] = others.as_slice() {
            if let Some(e) = t.remove(&key.dst, only) {
                self.note(DeltaOp::Delete, Cause::Event, key.table, key.dst, &e);
            }
        }
    }

    /// Applies one event. Returns the scan it calls for, if any.
    pub fn apply(&mut self, change: Change) -> Option<FollowUp> {
        self.apply_stamped(change, self.generation)
    }

    /// The dump class a change belongs to, within a scan's scope (`None`: not dumped).
    pub fn dump_class(change: &Change, scope: &ScanScope) -> Option<DumpKind> {
        let kind = match change {
            Change::NewRoute { route, .. } => {
                let k = route.key;
                if !scope.covers_route(k.family(), k.table) {
                    return None;
                }
                DumpKind::Routes(k.family(), scope.table)
            }
            Change::DelRoute { key, .. } | Change::DeadRoute { key } => {
                DumpKind::Routes(key.family(), scope.table)
            }
            Change::NewLink(_) | Change::DelLink { .. } => DumpKind::Links,
            Change::NewAddr(a) | Change::DelAddr(a) => DumpKind::Addrs(Family::of(&a.addr)),
            Change::NewNexthop(_) | Change::DelNexthop { .. } => DumpKind::Nexthops,
            Change::NewRule(r) | Change::DelRule(r) => DumpKind::Rules(r.family),
        };
        scope.dumps().contains(&kind).then_some(kind)
    }

    /// Applies one event, stamping what it creates with `gen` (see
    /// [`ActiveScan::event_stamp`]).
    pub fn apply_stamped(&mut self, change: Change, gen: u32) -> Option<FollowUp> {
        // Links, addresses and nexthop objects change what lookups render too.
        self.fib.touch();
        match change {
            Change::NewRule(rule) => {
                if self.rules.add(rule.clone(), gen) {
                    self.note_rule(true, &rule, "event");
                }
                None
            }
            Change::DelRule(rule) => {
                if self.rules.remove(&rule) {
                    self.note_rule(false, &rule, "event");
                }
                None
            }
            Change::NewRoute { route, replace } => {
                let (key, entry) = self.entry(route, gen);
                if replace && key.family() == Family::V6 {
                    self.replaced_v6_sibling(&key);
                }
                if !self.inferred.is_empty()
                    && self
                        .inferred
                        .remove(&key_hash(key.table, &key.dst, &key.sub))
                        .is_some()
                {
                    self.counters.inferred_pending = self.inferred.len() as u64;
                }
                let noted = self.tracking().then(|| entry.clone());
                let op = match self
                    .fib
                    .table_mut(key.family(), key.table)
                    .upsert(&key.dst, entry)
                {
                    None => {
                        self.counters.route_adds += 1;
                        DeltaOp::Add
                    }
                    Some(_) => {
                        self.counters.route_updates += 1;
                        DeltaOp::Replace
                    }
                };
                if let Some(e) = noted {
                    self.note(op, Cause::Event, key.table, key.dst, &e);
                }
                None
            }
            Change::DelRoute { key, hops } => {
                self.delete_route(&key, &hops);
                None
            }
            Change::DeadRoute { key } => {
                self.counters.dead_routes += 1;
                let table = self.fib.table_mut(key.family(), key.table);
                if let Some(e) = table.remove(&key.dst, &key.sub) {
                    self.note(DeltaOp::Delete, Cause::Event, key.table, key.dst, &e);
                }
                None
            }
            Change::NewLink(link) => {
                self.counters.link_events += 1;
                let ifindex = link.ifindex;
                let up = link.is_up();
                let was_up = self.links.get(&ifindex).map(|l| l.value.is_up());
                if self
                    .links
                    .get(&ifindex)
                    .is_some_and(|l| l.value.name != link.name)
                {
                    self.touch_link_name(ifindex);
                }
                self.rules.link(&link);
                self.links.insert(
                    ifindex,
                    Stamped {
                        value: link,
                        stamp: gen,
                    },
                );
                match (was_up, up) {
                    // Down (or first seen down): the kernel flushes IPv4 routes through it
                    // without a word. Remove them now, confirm with a dump.
                    (Some(true) | None, false) => {
                        self.remove_v4_via_dev(ifindex, false);
                        Some(link_followup())
                    }
                    // Up again: IPv4 multipath hops through it revive silently.
                    (Some(false), true) => Some(link_followup()),
                    _ => None,
                }
            }
            Change::DelLink { ifindex } => {
                self.counters.link_events += 1;
                if self.links.remove(&ifindex).is_some() {
                    self.touch_link_name(ifindex);
                }
                self.rules.unlink(ifindex);
                self.addrs.retain(|a, _| a.ifindex != ifindex);
                self.remove_v4_via_dev(ifindex, true);
                Some(link_followup())
            }
            Change::NewAddr(a) => {
                self.counters.addr_events += 1;
                self.addrs.insert(a, gen);
                None
            }
            Change::DelAddr(a) => {
                self.counters.addr_events += 1;
                self.addrs.remove(&a);
                if a.addr.is_ipv4() {
                    let gone = self.remove_v4_where(|attrs, _| attrs.prefsrc == Some(a.addr));
                    self.counters.inferred_removals += gone as u64;
                    return Some(FollowUp {
                        reason: ScanReason::AddrRemoved,
                        scope: ScanScope::routes(Family::V4),
                    });
                }
                None
            }
            Change::NewNexthop(nh) => {
                self.counters.nexthop_events += 1;
                self.nexthops.insert(
                    nh.id,
                    Stamped {
                        value: nh,
                        stamp: gen,
                    },
                );
                self.touch_nh_routes();
                None
            }
            Change::DelNexthop { id } => {
                self.counters.nexthop_events += 1;
                self.nexthops.remove(&id);
                let mut gone = 0;
                let mut removed = Vec::new();
                let mut pend = Vec::new();
                let journaling = self.tracking();
                for ((family, table), t) in self.fib.tables_mut() {
                    gone += t.retain(|dst, e| {
                        let keep = e.attrs.nh_id != Some(id);
                        if !keep {
                            pend.push((family, key_hash(table, dst, &e.sub())));
                            if journaling {
                                removed.push((table, *dst, e.clone()));
                            }
                        }
                        keep
                    });
                }
                for (t, dst, e) in removed {
                    self.note(DeltaOp::Delete, Cause::Inferred, t, dst, &e);
                }
                self.pend_inferred(pend);
                self.touch_nh_routes();
                self.counters.inferred_removals += gone as u64;
                Some(FollowUp {
                    reason: ScanReason::NexthopRemoved,
                    scope: ScanScope {
                        families: Family::ALL.to_vec(),
                        ..ScanScope::routes(Family::V4)
                    },
                })
            }
        }
    }

    fn delete_route(&mut self, key: &RouteKey, hops: &[NextHop]) {
        let table = self.fib.table_mut(key.family(), key.table);
        // IPv6 removes one sibling of a multipath route at a time: keep the others.
        if key.family() == Family::V6 && !hops.is_empty() {
            if let Some(e) = table.get_entry(&key.dst, &key.sub) {
                let same =
                    |a: &NextHop, b: &NextHop| a.gateway == b.gateway && a.ifindex == b.ifindex;
                let left: smallvec::SmallVec<[NextHop; 2]> = e
                    .attrs
                    .nexthops
                    .iter()
                    .filter(|h| !hops.iter().any(|d| same(h, d)))
                    .cloned()
                    .collect();
                if !left.is_empty() && left.len() < e.attrs.nexthops.len() {
                    let mut attrs = (*e.attrs).clone();
                    attrs.nexthops = left;
                    let stamp = e.stamp;
                    let attrs = self.interner.intern(Arc::new(attrs));
                    if let Some(e) = self
                        .fib
                        .table_mut(key.family(), key.table)
                        .get_entry_mut(&key.dst, &key.sub)
                    {
                        e.attrs = attrs;
                        e.stamp = stamp;
                        let e = e.clone();
                        self.note(DeltaOp::Replace, Cause::Event, key.table, key.dst, &e);
                    }
                    self.counters.route_updates += 1;
                    return;
                }
            }
        }
        match self
            .fib
            .table_mut(key.family(), key.table)
            .remove(&key.dst, &key.sub)
        {
            Some(e) => {
                self.counters.route_deletes += 1;
                self.note(DeltaOp::Delete, Cause::Event, key.table, key.dst, &e);
            }
            None => self.counters.route_deletes_unknown += 1,
        }
    }

    /// Removes IPv4 routes (all tables, every metric) whose every next hop uses `ifindex`.
    ///
    /// A device going down (`NETDEV_DOWN`) spares host-scope routes (the `local` routes of
    /// its addresses: their next hop has scope NOWHERE, which `fib_sync_down_dev` skips);
    /// a device going away (`unregister`) takes everything through it.
    fn remove_v4_via_dev(&mut self, ifindex: u32, unregister: bool) {
        let gone = self.remove_v4_where(|attrs, m| {
            if !unregister && attrs.scope == crate::model::scope::HOST {
                return false;
            }
            let hops = m.effective_hops(attrs);
            !hops.is_empty() && hops.iter().all(|h| h.ifindex == ifindex)
        });
        self.counters.inferred_removals += gone as u64;
    }

    fn remove_v4_where(&mut self, pred: impl Fn(&RouteAttrs, &Mirror) -> bool) -> usize {
        // Decide per distinct attribute set first: a few thousand checks, not a million.
        let mut doomed: HashMap<*const RouteAttrs, bool> = HashMap::new();
        let tables: Vec<u32> = self
            .fib
            .tables()
            .filter(|((f, _), _)| *f == Family::V4)
            .map(|((_, t), _)| t)
            .collect();
        for &t in &tables {
            if let Some(table) = self.fib.table(Family::V4, t) {
                for (_, e) in table.iter() {
                    doomed
                        .entry(Arc::as_ptr(&e.attrs))
                        .or_insert_with(|| pred(&e.attrs, self));
                }
            }
        }
        if !doomed.values().any(|d| *d) {
            return 0;
        }
        let mut gone = 0;
        let mut removed = Vec::new();
        let mut pend = Vec::new();
        let journaling = self.tracking();
        for t in tables {
            gone += self.fib.table_mut(Family::V4, t).retain(|dst, e| {
                let doom = doomed.get(&Arc::as_ptr(&e.attrs)).copied().unwrap_or(false);
                if doom {
                    pend.push((Family::V4, key_hash(t, dst, &e.sub())));
                    if journaling {
                        removed.push((t, *dst, e.clone()));
                    }
                }
                !doom
            });
        }
        for (t, dst, e) in removed {
            self.note(DeltaOp::Delete, Cause::Inferred, t, dst, &e);
        }
        self.pend_inferred(pend);
        gone
    }

    /// Starts a scan: a new generation that dump entries and later events will carry.
    pub fn begin_scan(&mut self) -> u32 {
        self.generation = self.generation.wrapping_add(1).max(1);
        self.generation
    }

    /// Applies one dump entry during `scan`, recording its verdict.
    pub fn mark(&mut self, change: Change, scan: &mut ActiveScan) {
        self.fib.touch();
        let gen = scan.generation;
        match change {
            Change::NewRoute { route, .. } => {
                scan.routes_dumped += 1;
                let (key, entry) = self.entry(route, gen);
                if !self.inferred.is_empty() {
                    let h = key_hash(key.table, &key.dst, &key.sub);
                    // Only removals inferred before this scan began: for a later one the
                    // dump may predate the kernel's flush.
                    if self.inferred.get(&h).is_some_and(|(_, g)| *g != gen) {
                        self.inferred.remove(&h);
                        self.counters.inferred_refuted += 1;
                        self.counters.inferred_pending = self.inferred.len() as u64;
                    }
                }
                let table = self.fib.table_mut(key.family(), key.table);
                let verdict = match table.upsert(&key.dst, entry.clone()) {
                    None => Verdict::Created,
                    Some(old) if Arc::ptr_eq(&old.attrs, &entry.attrs) => Verdict::Seen,
                    Some(_) => Verdict::Updated,
                };
                scan.verdicts.count(verdict);
                match verdict {
                    Verdict::Created => {
                        self.note(DeltaOp::Add, Cause::Scan, key.table, key.dst, &entry)
                    }
                    Verdict::Updated => {
                        self.note(DeltaOp::Replace, Cause::Scan, key.table, key.dst, &entry)
                    }
                    Verdict::Seen => {}
                }
            }
            // Dead routes are as good as gone: leave them unmarked for the prune.
            Change::DeadRoute { .. } => scan.routes_dumped += 1,
            Change::DelRoute { .. } => {}
            Change::NewRule(rule) => {
                let seen = self.rules.mark(rule.clone(), gen);
                scan.object_verdicts.count(if seen {
                    Verdict::Seen
                } else {
                    Verdict::Created
                });
                if !seen {
                    self.note_rule(true, &rule, "scan");
                }
            }
            Change::DelRule(_) => {}
            Change::NewLink(link) => {
                self.rules.link(&link);
                let v = match self.links.get(&link.ifindex) {
                    None => Verdict::Created,
                    Some(l) if l.value == link => Verdict::Seen,
                    Some(_) => Verdict::Updated,
                };
                scan.object_verdicts.count(v);
                if self
                    .links
                    .get(&link.ifindex)
                    .is_some_and(|l| l.value.name != link.name)
                {
                    self.touch_link_name(link.ifindex);
                }
                self.links.insert(
                    link.ifindex,
                    Stamped {
                        value: link,
                        stamp: gen,
                    },
                );
            }
            Change::NewAddr(a) => {
                let v = if self.addrs.contains_key(&a) {
                    Verdict::Seen
                } else {
                    Verdict::Created
                };
                scan.object_verdicts.count(v);
                self.addrs.insert(a, gen);
            }
            Change::NewNexthop(nh) => {
                let v = match self.nexthops.get(&nh.id) {
                    None => Verdict::Created,
                    Some(n) if n.value == nh => Verdict::Seen,
                    Some(_) => Verdict::Updated,
                };
                scan.object_verdicts.count(v);
                self.nexthops.insert(
                    nh.id,
                    Stamped {
                        value: nh,
                        stamp: gen,
                    },
                );
                if v != Verdict::Seen {
                    self.touch_nh_routes();
                }
            }
            Change::DelLink { .. } | Change::DelAddr(_) | Change::DelNexthop { .. } => {}
        }
    }

    /// Deletes what the scan's completed dumps did not mark.
    pub fn prune(&mut self, scan: &mut ActiveScan) {
        self.fib.touch();
        let gen = scan.generation;
        let mut deleted = 0u64;
        let journaling = self.tracking();
        let mut removed = Vec::new();
        for ((family, id), t) in self.fib.tables_mut() {
            if scan.scope.covers_route(family, id)
                && scan.dumped(DumpKind::Routes(family, scan.scope.table))
            {
                deleted += t.retain(|dst, e| {
                    let keep = e.stamp == gen;
                    if !keep && journaling {
                        removed.push((id, *dst, e.clone()));
                    }
                    keep
                }) as u64;
            }
        }
        for (t, dst, e) in removed {
            self.note(DeltaOp::Delete, Cause::Scan, t, dst, &e);
        }
        self.fib.drop_empty();
        // A full route dump of a family that did not list an inferred removal confirms it.
        if !self.inferred.is_empty() {
            let confirmed: Vec<Family> = Family::ALL
                .into_iter()
                .filter(|f| {
                    scan.scope.table.is_none()
                        && scan.scope.families.contains(f)
                        && scan.dumped(DumpKind::Routes(*f, None))
                })
                .collect();
            let before = self.inferred.len();
            self.inferred
                .retain(|_, (f, g)| *g == gen || !confirmed.contains(f));
            self.counters.inferred_confirmed += (before - self.inferred.len()) as u64;
            self.counters.inferred_pending = self.inferred.len() as u64;
        }
        scan.verdicts.deleted += deleted;
        let mut objects = 0usize;
        if scan.dumped(DumpKind::Links) {
            let before = self.links.len();
            let gone: Vec<u32> = self
                .links
                .iter()
                .filter(|(_, l)| l.stamp != gen)
                .map(|(&i, _)| i)
                .collect();
            for i in gone {
                self.links.remove(&i);
                self.touch_link_name(i);
            }
            if self.links.len() != before {
                let links: Vec<Link> = self.links.values().map(|l| l.value.clone()).collect();
                self.rules.relink(links.iter());
            }
            objects += before - self.links.len();
        }
        for f in Family::ALL {
            if scan.dumped(DumpKind::Rules(f)) {
                let gone = self.rules.prune(f, gen);
                for r in &gone {
                    self.note_rule(false, r, "scan");
                }
                objects += gone.len();
            }
        }
        for f in Family::ALL {
            if scan.dumped(DumpKind::Addrs(f)) {
                let before = self.addrs.len();
                self.addrs
                    .retain(|a, stamp| Family::of(&a.addr) != f || *stamp == gen);
                objects += before - self.addrs.len();
            }
        }
        if scan.dumped(DumpKind::Nexthops) {
            let before = self.nexthops.len();
            self.nexthops.retain(|_, n| n.stamp == gen);
            if self.nexthops.len() != before {
                self.touch_nh_routes();
            }
            objects += before - self.nexthops.len();
        }
        scan.object_verdicts.deleted += objects as u64;
        self.interner.collect();
    }
}

/// Link names and nexthop objects at one moment (see [`Mirror::names`]).
#[derive(Debug, Clone, Default)]
pub struct Names {
    links: HashMap<u32, String>,
    nexthops: HashMap<u32, Stamped<NexthopObject>>,
}

impl Names {
    pub fn link_name(&self, ifindex: u32) -> Option<&str> {
        self.links.get(&ifindex).map(String::as_str)
    }

    pub fn effective_hops(&self, attrs: &RouteAttrs) -> Vec<NextHop> {
        effective_hops(&self.nexthops, attrs)
    }
}

/// The next hops of `attrs`: its nexthop object's (resolved in `nexthops`) if it has one.
fn effective_hops(
    nexthops: &HashMap<u32, Stamped<NexthopObject>>,
    attrs: &RouteAttrs,
) -> Vec<NextHop> {
    let Some(nh) = attrs.nh_id.and_then(|id| nexthops.get(&id)) else {
        return attrs.nexthops.to_vec();
    };
    match &nh.value.kind {
        NexthopKind::Single {
            gateway,
            ifindex,
            flags,
        } => vec![NextHop {
            gateway: *gateway,
            ifindex: *ifindex,
            weight: 1,
            flags: *flags,
        }],
        NexthopKind::Blackhole => Vec::new(),
        NexthopKind::Group { members, .. } => members
            .iter()
            .filter_map(|m| match &nexthops.get(&m.id)?.value.kind {
                NexthopKind::Single {
                    gateway,
                    ifindex,
                    flags,
                } => Some(NextHop {
                    gateway: *gateway,
                    ifindex: *ifindex,
                    weight: m.weight.min(u16::MAX as u32) as u16,
                    flags: *flags,
                }),
                _ => None,
            })
            .collect(),
    }
}

fn link_followup() -> FollowUp {
    FollowUp {
        reason: ScanReason::LinkChange,
        scope: ScanScope::routes(Family::V4),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SubKey;

    /// Link 3, "veth1", with `flags`.
    fn veth1(flags: u32) -> Link {
        Link {
            ifindex: 3,
            name: "veth1".into(),
            flags,
            mtu: 1500,
            ..Default::default()
        }
    }

    fn route(dst: &str, metric: u32, ifindex: u32) -> Route {
        Route {
            key: RouteKey {
                table: 254,
                dst: dst.parse().unwrap(),
                sub: SubKey::metric(metric),
            },
            attrs: Arc::new(RouteAttrs {
                protocol: 4,
                kind: 1,
                nexthops: vec![NextHop::new(None, ifindex)].into(),
                ..Default::default()
            }),
        }
    }

    fn new(r: Route) -> Change {
        Change::NewRoute {
            route: r,
            replace: false,
        }
    }

    #[test]
    fn scan_verdicts_and_prune() {
        let mut m = Mirror::new();
        m.apply(new(route("10.0.0.0/8", 0, 2)));
        m.apply(new(route("10.1.0.0/16", 0, 2))); // will be missing from the dump
        m.apply(new(route("10.2.0.0/16", 0, 2))); // will differ in the dump
        let gen = m.begin_scan();
        let mut scan = ActiveScan::new(ScanReason::Manual, ScanScope::routes(Family::V4), gen);
        m.mark(new(route("10.0.0.0/8", 0, 2)), &mut scan);
        m.mark(new(route("10.2.0.0/16", 0, 3)), &mut scan);
        m.mark(new(route("10.3.0.0/16", 0, 2)), &mut scan);
        // An event during the scan is newer than the dump: it must survive the prune.
        m.apply(new(route("10.4.0.0/16", 0, 2)));
        m.prune(&mut scan);
        assert_eq!(
            (
                scan.verdicts.seen,
                scan.verdicts.updated,
                scan.verdicts.created,
                scan.verdicts.deleted
            ),
            (1, 1, 1, 1)
        );
        assert_eq!(m.fib.len(), 4);
        assert!(m.fib.get(&route("10.1.0.0/16", 0, 2).key).is_none());
        assert!(m.fib.get(&route("10.4.0.0/16", 0, 2).key).is_some());
    }

    #[test]
    fn failed_dump_prunes_nothing() {
        let mut m = Mirror::new();
        m.apply(new(route("10.0.0.0/8", 0, 2)));
        let gen = m.begin_scan();
        let mut scan = ActiveScan::new(ScanReason::Manual, ScanScope::routes(Family::V4), gen);
        scan.failed.push(DumpKind::Routes(Family::V4, None));
        m.prune(&mut scan);
        assert_eq!(m.fib.len(), 1);
    }

    #[test]
    fn link_down_removes_v4_routes_through_it_in_all_tables() {
        let mut m = Mirror::new();
        m.apply(Change::NewLink(veth1(libc::IFF_UP as u32)));
        m.apply(new(route("10.0.0.0/8", 0, 3)));
        let mut r = route("10.0.0.0/8", 5, 3);
        r.key.table = 100;
        m.apply(new(r));
        m.apply(new(route("10.9.0.0/16", 0, 4)));
        let f = m.apply(Change::NewLink(veth1(0)));
        assert_eq!(f.unwrap().reason, ScanReason::LinkChange);
        assert_eq!(m.fib.len(), 1);
        assert_eq!(m.counters.inferred_removals, 2);
    }

    #[test]
    fn inferred_removals_are_confirmed_or_refuted_by_the_next_dump() {
        let mut m = Mirror::new();
        m.journal = Some(Journal::default());
        m.apply(Change::NewLink(veth1(libc::IFF_UP as u32)));
        m.apply(new(route("10.0.0.0/8", 0, 3)));
        m.apply(new(route("10.1.0.0/16", 0, 3)));
        m.apply(new(route("10.2.0.0/16", 0, 3)));
        m.journal.as_mut().unwrap().deltas.clear();
        m.apply(Change::NewLink(veth1(0)));
        assert_eq!(m.counters.inferred_removals, 3);
        assert_eq!(m.counters.inferred_pending, 3);
        // Every removal reached the exports' funnel (the BPF FIB and watch follow it).
        assert_eq!(m.journal.as_ref().unwrap().deltas.len(), 3);
        // Re-added by an event before the dump: neither confirmed nor refuted.
        m.apply(new(route("10.2.0.0/16", 0, 3)));
        assert_eq!(m.counters.inferred_pending, 2);
        let gen = m.begin_scan();
        let mut scan = ActiveScan::new(ScanReason::LinkChange, ScanScope::routes(Family::V4), gen);
        // The dump still lists 10.1/16: the inference was wrong for it.
        m.mark(new(route("10.1.0.0/16", 0, 3)), &mut scan);
        m.mark(new(route("10.2.0.0/16", 0, 3)), &mut scan);
        m.prune(&mut scan);
        let c = &m.counters;
        assert_eq!(
            (c.inferred_confirmed, c.inferred_refuted, c.inferred_pending),
            (1, 1, 0)
        );
    }

    /// Renames and removals reach the funnel, from events and from scans alike: what
    /// names a route's device (the AFT's next hops, NATS route objects) must re-read it.
    #[test]
    fn link_renames_and_removals_are_journaled() {
        let mut m = Mirror::new();
        m.journal = Some(Journal::default());
        let renamed =
            |m: &mut Mirror| std::mem::take(&mut m.journal.as_mut().unwrap().links_renamed);
        let up = libc::IFF_UP as u32;
        m.apply(Change::NewLink(veth1(up)));
        assert!(renamed(&mut m).is_empty(), "a new link renames nothing");
        m.apply(Change::NewLink(Link {
            name: "wan0".into(),
            ..veth1(up)
        }));
        m.apply(Change::NewLink(Link {
            name: "wan0".into(),
            mtu: 9000,
            ..veth1(up)
        }));
        assert_eq!(renamed(&mut m), [3], "once, for the rename only");
        // A scan that finds it renamed again, then one that no longer finds it.
        let gen = m.begin_scan();
        let mut scan = ActiveScan::new(ScanReason::Periodic, ScanScope::full(), gen);
        m.mark(Change::NewLink(veth1(up)), &mut scan);
        m.prune(&mut scan);
        assert_eq!(renamed(&mut m), [3]);
        let gen = m.begin_scan();
        let mut scan = ActiveScan::new(ScanReason::Periodic, ScanScope::full(), gen);
        m.prune(&mut scan);
        assert_eq!(renamed(&mut m), [3]);
        assert!(m.links.is_empty());
        m.apply(Change::NewLink(veth1(up)));
        m.apply(Change::DelLink { ifindex: 3 });
        m.apply(Change::DelLink { ifindex: 3 });
        assert_eq!(renamed(&mut m), [3], "removed once");
    }

    #[test]
    fn v6_sibling_delete_keeps_the_other_hops() {
        let mut m = Mirror::new();
        let mut r = route("2001:db8::/32", 1024, 3);
        let hops = vec![
            NextHop::new(Some("fe80::1".parse().unwrap()), 3),
            NextHop::new(Some("fe80::2".parse().unwrap()), 4),
        ];
        Arc::make_mut(&mut r.attrs).nexthops = hops.clone().into();
        let key = r.key;
        m.apply(new(r));
        m.apply(Change::DelRoute {
            key,
            hops: vec![hops[0].clone()].into(),
        });
        assert_eq!(m.fib.get(&key).unwrap().attrs.nexthops.len(), 1);
        m.apply(Change::DelRoute {
            key,
            hops: vec![hops[1].clone()].into(),
        });
        assert!(m.fib.get(&key).is_none());
    }
}
