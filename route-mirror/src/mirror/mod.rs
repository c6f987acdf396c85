//! The mirrored state of one network namespace: routes (in the [`Fib`]), links,
//! addresses, nexthop objects and netconf settings, and the rules for applying changes
//! to it.
//!
//! Two entry points change it: [`Mirror::apply`] for events, [`Mirror::mark`] +
//! [`Mirror::prune`] for dumps (see [`crate::reconcile`]). How route notifications
//! place routes in a key's list is in [`routes`]; what the kernel does silently when a
//! link, address or nexthop object changes is in [`inference`].

mod inference;
mod routes;
mod window;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use serde::{Deserialize, Serialize};
use tracing::debug;

use crate::fib::{Entry, Fib, Usable};
use crate::intern::Interner;
use crate::liveness::{self, Hop, Liveness};
use crate::model::{
    Address, Change, Family, Link, NextHop, NexthopObject, Route, RouteAttrs, RouteKey, SubKey,
};
use crate::netlink::msg::DumpKind;
use crate::reconcile::{ActiveScan, ScanReason, ScanScope, Verdict};

/// A mirrored object with the generation that last confirmed it.
#[derive(Debug, Clone)]
pub struct Stamped<T> {
    pub value: T,
    pub stamp: u32,
}

impl<T> std::ops::Deref for Stamped<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

/// Counts of what the event path applied.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ApplyCounters {
    pub route_adds: u64,
    pub route_updates: u64,
    pub route_deletes: u64,
    /// Deletes of routes the mirror did not have (harmless; e.g. after an inferred removal).
    pub route_deletes_unknown: u64,
    /// Route notifications the mirror already reflected (a dump chunk showed the change
    /// before its notification came; see `mirror::window`).
    #[serde(default)]
    pub route_adds_reflected: u64,
    pub link_events: u64,
    pub addr_events: u64,
    pub nexthop_events: u64,
    pub netconf_events: u64,
    /// IPv4 routes removed because their device went down or away, their source address
    /// went away or their nexthop object was deleted (the kernel says nothing of these).
    pub inferred_removals: u64,
    /// Nexthop objects the kernel deleted without a message because their device lost
    /// carrier, went down or away (and groups left empty by that).
    pub inferred_nexthop_removals: u64,
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
    /// Links whose hops' liveness changed (carrier, admin state, their
    /// `ignore_routes_with_linkdown`): routes through them may forward differently (dead
    /// hops are skipped) without a delta. [`Journal::ALL_LINKS`]: any link's may have.
    pub links_changed: Vec<u32>,
    /// Policy rules added or removed.
    pub rules: Vec<crate::fib::rules::mirror::RuleDelta>,
    /// Links renamed or removed (ifindex, each once per drain): what names them (the
    /// AFT's `interface-ref`, a route's `dev`) changed without a route delta. The
    /// routes through a removed link go as deltas of their own.
    pub links_renamed: Vec<u32>,
}

impl Journal {
    /// In [`Journal::links_changed`]: every link (an `all` setting changed). No link
    /// has ifindex 0.
    pub const ALL_LINKS: u32 = 0;
}

/// Identity of a route in the pending-inference set: a hash, not the route, so a link
/// carrying a million routes costs 16 bytes per route while its removal awaits the dump.
/// The attributes are part of it: a key may hold several routes.
fn key_hash(table: u32, dst: &IpNet, sub: &SubKey, attrs: &RouteAttrs) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (table, dst, sub, attrs).hash(&mut h);
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
    /// Policy rules and the link facts they name ([`crate::rule::mirror`]).
    pub rules: crate::fib::rules::mirror::RuleMirror,
    /// Link flags and netconf settings: what next-hop liveness is derived from.
    pub live: Liveness,
    /// The generation that last confirmed each netconf setting (values are in `live`).
    netconf_stamps: HashMap<(Family, i32), u32>,
    interner: Interner,
    generation: u32,
    pub counters: ApplyCounters,
    /// Changes since the exports last drained them, kept only while `Some` (an export
    /// consumes them).
    pub journal: Option<Journal>,
    /// Inferred removals awaiting confirmation: route hash → (family, generation at
    /// removal). A scan confirms only removals older than itself.
    inferred: HashMap<u64, (Family, u32)>,
    /// Route events a running dump's chunks may or may not reflect.
    window: window::DumpWindow,
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
        liveness::effective_hops(&self.nexthops, attrs)
            .into_iter()
            .map(|h| h.hop)
            .collect()
    }

    /// A route's effective hops with the flags a dump would show now (liveness included).
    pub fn dumped_hops(&self, family: Family, attrs: &RouteAttrs) -> Vec<NextHop> {
        let hops = liveness::effective_hops(&self.nexthops, attrs);
        self.live.dumped_hops(family, attrs, &hops)
    }

    /// Whether a route can forward now (see [`crate::liveness`]).
    pub fn usable(&self, family: Family, attrs: &RouteAttrs) -> Usable {
        if self.live.all_alive() && attrs.nh_id.is_none() {
            return Usable::Yes;
        }
        let hops: Vec<Hop> = liveness::effective_hops(&self.nexthops, attrs);
        self.live.usable(family, attrs, &hops)
    }

    /// A liveness predicate for lookups and snapshots, deciding once per distinct
    /// attribute set (a few thousand) rather than once per route.
    pub fn usable_fn(&self) -> impl FnMut(Family, &Entry) -> Usable + '_ {
        let all_alive = self.live.all_alive();
        let mut memo: HashMap<(Family, *const RouteAttrs), Usable> = HashMap::new();
        move |family, e| {
            if all_alive && e.attrs.nh_id.is_none() {
                return Usable::Yes;
            }
            *memo
                .entry((family, Arc::as_ptr(&e.attrs)))
                .or_insert_with(|| self.usable(family, &e.attrs))
        }
    }

    /// The route the kernel's lookup picks for `addr` through `tables`: dead routes are
    /// skipped as the kernel skips them.
    pub fn lookup(&self, addr: IpAddr, tables: &[u32], tos: u8) -> Option<(u32, IpNet, &Entry)> {
        let mut usable = self.usable_fn();
        self.fib.lookup_with(addr, tables, tos, &mut usable)
    }

    /// What rendering a route needs besides the FIB (link names, nexthop objects,
    /// liveness), copied so that lookups on a FIB snapshot can render without the
    /// mirror's lock.
    pub fn names(&self) -> Names {
        Names {
            links: self
                .links
                .iter()
                .map(|(&i, l)| (i, l.value.name.clone()))
                .collect(),
            nexthops: self.nexthops.clone(),
            live: self.live.clone(),
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

    /// Tells the exports that the liveness of hops through `ifindex` changed (of every
    /// link if `None`): routes through it forward differently without a route message.
    fn touch_dev_routes(&mut self, ifindex: Option<u32>) {
        if let Some(j) = &mut self.journal {
            j.links_changed.push(ifindex.unwrap_or(Journal::ALL_LINKS));
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

    /// Whether `link` names a known link differently.
    fn renames(&self, link: &Link) -> bool {
        self.links
            .get(&link.ifindex)
            .is_some_and(|l| l.value.name != link.name)
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

    /// Applies one event. Returns the scan it calls for, if any.
    pub fn apply(&mut self, change: Change) -> Option<FollowUp> {
        self.apply_stamped(change, self.generation)
    }

    /// The dump class a change belongs to, within a scan's scope (`None`: not dumped).
    pub fn dump_class(change: &Change, scope: &ScanScope) -> Option<DumpKind> {
        let kind = match change {
            Change::NewRoute { route, .. } | Change::DelRoute { route } => {
                let k = route.key;
                if !scope.covers_route(k.family(), k.table) {
                    return None;
                }
                DumpKind::Routes(k.family(), scope.table)
            }
            Change::NewLink(_) | Change::DelLink { .. } => DumpKind::Links,
            Change::NewAddr(a) | Change::DelAddr(a) => DumpKind::Addrs(Family::of(&a.addr)),
            Change::NewNexthop(_) | Change::DelNexthop { .. } => DumpKind::Nexthops,
            Change::NewRule(r) | Change::DelRule(r) => DumpKind::Rules(r.family),
            Change::NewNetconf(n) => DumpKind::Netconf(n.family),
            Change::DelNetconf { family, .. } => DumpKind::Netconf(*family),
        };
        scope.dumps().contains(&kind).then_some(kind)
    }

    /// Applies one event, stamping what it creates with `gen` (see
    /// [`ActiveScan::event_stamp`]).
    pub fn apply_stamped(&mut self, change: Change, gen: u32) -> Option<FollowUp> {
        // Links, addresses, nexthop objects and settings change what lookups render too.
        self.fib.touch();
        tracing::trace!(?change, "event");
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
            Change::NewRoute { route, flags } => {
                if self.window.replaying() {
                    self.window.replay_event(&window::RouteEvent::New {
                        route: route.clone(),
                        flags,
                    });
                }
                if self.window.covers(&route.key) {
                    let base = || self.key_list(&route.key);
                    let base = base();
                    self.window.record(
                        window::RouteEvent::New {
                            route: route.clone(),
                            flags,
                        },
                        || base,
                    );
                }
                self.apply_new_route(route, flags, gen);
                None
            }
            Change::DelRoute { route } => {
                if self.window.replaying() {
                    self.window
                        .replay_event(&window::RouteEvent::Del(route.clone()));
                }
                if self.window.covers(&route.key) {
                    let base = self.key_list(&route.key);
                    self.window
                        .record(window::RouteEvent::Del(route.clone()), || base);
                }
                self.apply_del_route(&route);
                None
            }
            Change::NewLink(link) => {
                self.counters.link_events += 1;
                if self
                    .links
                    .get(&link.ifindex)
                    .is_some_and(|l| l.value == link)
                {
                    self.window
                        .nh_reflected(window::ObjectId::Link(link.ifindex));
                } else {
                    self.window.carrier_notified(link.ifindex);
                }
                self.link_changed(link, gen)
            }
            Change::DelLink { ifindex } => {
                self.counters.link_events += 1;
                self.link_removed(ifindex)
            }
            Change::NewAddr(a) => {
                self.counters.addr_events += 1;
                if a.addr.is_ipv4() && self.live.set_v4_disabled(a.ifindex, false) {
                    // fib_add_ifaddr + fib_sync_up(dev, RTNH_F_DEAD): its hops revive.
                    self.touch_dev_routes(Some(a.ifindex));
                }
                self.addrs.insert(a, gen);
                None
            }
            Change::DelAddr(a) => {
                self.counters.addr_events += 1;
                self.addrs.remove(&a);
                self.addr_removed(&a)
            }
            Change::NewNexthop(nh) => {
                self.counters.nexthop_events += 1;
                if self.nexthops.get(&nh.id).is_some_and(|n| n.value == nh) {
                    self.window.nh_reflected(window::ObjectId::Nexthop(nh.id));
                }
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
                self.nexthops_removed(&[id], false)
            }
            Change::NewNetconf(n) => {
                self.counters.netconf_events += 1;
                self.netconf_changed(n, gen)
            }
            Change::DelNetconf { family, ifindex } => {
                self.counters.netconf_events += 1;
                self.live.remove_ignore(family, ifindex);
                self.netconf_stamps.remove(&(family, ifindex));
                None
            }
        }
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
                self.mark_dumped_route(route, scan);
            }
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
                if v != Verdict::Seen {
                    debug!(?v, old = ?self.links.get(&link.ifindex).map(|l| &l.value), new = ?link, "scan corrected a link");
                    self.window
                        .nh_correction(window::ObjectId::Link(link.ifindex), v, None);
                    if self
                        .links
                        .get(&link.ifindex)
                        .is_some_and(|l| crate::liveness::carrier_only(&l.value, &link))
                    {
                        self.window.carrier_correction(link.ifindex);
                    }
                }
                if self
                    .live
                    .set_link(link.ifindex, link.flags)
                    .liveness_changed
                {
                    self.touch_dev_routes(Some(link.ifindex));
                }
                if self.renames(&link) {
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
                if v != Verdict::Seen {
                    debug!(?a, "scan corrected an address");
                }
                if a.addr.is_ipv4() && self.live.set_v4_disabled(a.ifindex, false) {
                    self.touch_dev_routes(Some(a.ifindex));
                }
                self.addrs.insert(a, gen);
            }
            Change::NewNexthop(nh) => {
                let v = match self.nexthops.get(&nh.id) {
                    None => Verdict::Created,
                    Some(n) if n.value == nh => Verdict::Seen,
                    Some(_) => Verdict::Updated,
                };
                scan.object_verdicts.count(v);
                if v != Verdict::Seen {
                    debug!(?v, old = ?self.nexthops.get(&nh.id).map(|n| &n.value), new = ?nh, "scan corrected a nexthop object");
                    let before = self.nexthops.get(&nh.id).map(|n| n.value.clone());
                    self.window
                        .nh_correction(window::ObjectId::Nexthop(nh.id), v, before);
                }
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
            Change::NewNetconf(n) => {
                let Some(on) = n.ignore_linkdown else { return };
                let key = (n.family, n.ifindex);
                let v = match self.live.ignore_settings().get(&key) {
                    None => Verdict::Created,
                    Some(&old) if old == on => Verdict::Seen,
                    Some(_) => Verdict::Updated,
                };
                scan.object_verdicts.count(v);
                if v != Verdict::Seen {
                    debug!(?v, ?n, "scan corrected a netconf setting");
                }
                if self.live.set_ignore(n.family, n.ifindex, on) {
                    self.touch_dev_routes(u32::try_from(n.ifindex).ok());
                }
                self.netconf_stamps.insert(key, gen);
            }
            Change::DelLink { .. }
            | Change::DelAddr(_)
            | Change::DelNexthop { .. }
            | Change::DelNetconf { .. } => {}
        }
    }

    /// A dump of `kind` was requested: route events from now on may or may not be in its
    /// chunks ([`window`]).
    pub fn dump_started(&mut self, kind: DumpKind) {
        match kind {
            DumpKind::Routes(family, table) => self.window.start(family, table),
            _ => self.window.stop(),
        }
    }

    /// One chunk (datagram) of the running dump was marked.
    pub fn dump_chunk_done(&mut self, scan: &mut ActiveScan) {
        self.flush_held(scan);
        self.settle_cursor(scan);
        self.keep_unlisted(scan);
        if self.window.take_overflow() {
            scan.interrupted += 1;
        }
        self.window.chunk_done(scan.route_cursor.map(|(k, _)| k));
    }

    /// The running dump ended (or failed).
    pub fn dump_ended(&mut self, scan: &mut ActiveScan) {
        self.flush_held(scan);
        self.settle_cursor(scan);
        self.keep_unlisted(scan);
        if self.window.take_overflow() {
            scan.interrupted += 1;
        }
        self.window.stop();
    }

    /// Events from now on may explain the correction of the key the scan marked last
    /// (see [`window`]).
    fn settle_cursor(&mut self, scan: &ActiveScan) {
        if let Some(cursor) = scan.route_cursor {
            self.settle_marked(cursor);
        }
    }

    /// Deletes what the scan's completed dumps did not mark.
    pub fn prune(&mut self, scan: &mut ActiveScan) {
        self.fib.touch();
        self.flush_held(scan);
        // Corrections a later notification showed to be changes in flight, not misses.
        let (updated, created) = self.window.finish_nh_scan();
        let o = &mut scan.object_verdicts;
        let (updated, created) = (updated.min(o.updated), created.min(o.created));
        o.updated -= updated;
        o.created -= created;
        o.seen += updated + created;
        let (updated, created) = self.window.finish_scan();
        let v = &mut scan.verdicts;
        let (updated, created) = (updated.min(v.updated), created.min(v.created));
        v.updated -= updated;
        v.created -= created;
        v.seen += updated + created;
        let gen = scan.generation;
        let mut deleted = 0u64;
        // Corrections are listed in the debug log too (they mean the events missed something).
        let listing = self.tracking() || tracing::enabled!(tracing::Level::DEBUG);
        let mut removed = Vec::new();
        for ((family, id), t) in self.fib.tables_mut() {
            if scan.scope.covers_route(family, id)
                && scan.dumped(DumpKind::Routes(family, scan.scope.table))
            {
                deleted += t.retain(|dst, e| {
                    let keep = e.stamp == gen;
                    if !keep && listing {
                        removed.push((id, *dst, e.clone()));
                    }
                    keep
                }) as u64;
            }
        }
        for (t, dst, e) in removed {
            debug!(table = t, %dst, attrs = ?e.attrs, "scan pruned a route");
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
            let gone: Vec<u32> = self
                .links
                .iter()
                .filter(|(_, l)| l.stamp != gen)
                .map(|(&i, _)| i)
                .collect();
            for i in &gone {
                debug!(ifindex = i, "scan pruned a link");
                self.links.remove(i);
                self.live.remove_link(*i);
                self.touch_link_name(*i);
            }
            if !gone.is_empty() {
                let links: Vec<Link> = self.links.values().map(|l| l.value.clone()).collect();
                self.rules.relink(links.iter());
            }
            objects += gone.len();
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
                let mut gone = Vec::new();
                self.addrs.retain(|a, stamp| {
                    let keep = Family::of(&a.addr) != f || *stamp == gen;
                    if !keep {
                        gone.push(*a);
                    }
                    keep
                });
                for a in &gone {
                    debug!(?a, "scan pruned an address");
                }
                objects += before - self.addrs.len();
                // A missed removal of a link's last IPv4 address disabled IPv4 on it.
                for a in gone.iter().filter(|a| a.addr.is_ipv4()) {
                    let last = !self
                        .addrs
                        .keys()
                        .any(|o| o.ifindex == a.ifindex && o.addr.is_ipv4());
                    if last && self.live.set_v4_disabled(a.ifindex, true) {
                        self.touch_dev_routes(Some(a.ifindex));
                    }
                }
            }
            if scan.dumped(DumpKind::Netconf(f)) {
                let gone: Vec<(Family, i32)> = self
                    .live
                    .ignore_settings()
                    .keys()
                    .filter(|k| k.0 == f && self.netconf_stamps.get(k) != Some(&gen))
                    .copied()
                    .collect();
                for k in &gone {
                    self.live.remove_ignore(k.0, k.1);
                    self.netconf_stamps.remove(k);
                }
                if !gone.is_empty() {
                    self.touch_dev_routes(None);
                }
                objects += gone.len();
            }
        }
        if scan.dumped(DumpKind::Nexthops) {
            let before = self.nexthops.len();
            self.nexthops.retain(|id, n| {
                let keep = n.stamp == gen;
                if !keep {
                    debug!(id, "scan pruned a nexthop object");
                }
                keep
            });
            if self.nexthops.len() != before {
                self.touch_nh_routes();
            }
            objects += before - self.nexthops.len();
        }
        scan.object_verdicts.deleted += objects as u64;
        self.interner.collect();
    }
}

/// Link names, nexthop objects and liveness at one moment (see [`Mirror::names`]).
#[derive(Debug, Clone, Default)]
pub struct Names {
    links: HashMap<u32, String>,
    nexthops: HashMap<u32, Stamped<NexthopObject>>,
    live: Liveness,
}

impl Names {
    pub fn link_name(&self, ifindex: u32) -> Option<&str> {
        self.links.get(&ifindex).map(String::as_str)
    }

    pub fn effective_hops(&self, attrs: &RouteAttrs) -> Vec<NextHop> {
        liveness::effective_hops(&self.nexthops, attrs)
            .into_iter()
            .map(|h| h.hop)
            .collect()
    }

    pub fn dumped_hops(&self, family: Family, attrs: &RouteAttrs) -> Vec<NextHop> {
        let hops = liveness::effective_hops(&self.nexthops, attrs);
        self.live.dumped_hops(family, attrs, &hops)
    }

    pub fn live(&self) -> &Liveness {
        &self.live
    }

    /// Whether a route can forward now, as [`Mirror::usable`] decides it.
    pub fn usable(&self, family: Family, attrs: &RouteAttrs) -> Usable {
        let hops = liveness::effective_hops(&self.nexthops, attrs);
        self.live.usable(family, attrs, &hops)
    }
}

#[cfg(test)]
mod tests;
