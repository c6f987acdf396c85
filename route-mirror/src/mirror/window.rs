//! Route events a dump chunk may or may not reflect.
//!
//! A dump is not a snapshot in line with the notifications around it. Since Linux 6.10
//! IPv4 route dumps run under RCU without RTNL (`RTNL_FLAG_DUMP_UNLOCKED` on
//! `inet_dump_fib`), while route changes and their notifications happen under RTNL: a
//! chunk reads each key's list at some moment while it is being built, and is queued only
//! when it is full. A change to a key the chunk already read, made while the chunk was
//! built, is notified *before* the chunk on the socket, yet the chunk shows the older
//! list. A change in flight when the chunk read its key is half-visible: an insert is in
//! the list before its notification is sent (`fib_table_insert` notifies after
//! `fib_insert_alias`), a delete is notified before it leaves the list
//! (`fib_table_delete`). IPv6 dumps walk each table under `tb6_lock`, which changes and
//! their notifications also hold, but the chunk is still queued after notifications of
//! changes made once its walk was done.
//!
//! Applying a chunk as the truth at its place in the queue therefore loses changes (found
//! by tests/tests/exact.rs: a churn with link flaps, whose confirming scans ran during the
//! churn, left stale and wrong routes until the next scan, and counted corrections).
//!
//! So the mirror keeps the route events it applied since the previous chunk of the
//! running route dump (the window, per key). A chunk's routes of a key with events in the
//! window are taken as the state at some point of that window: the events are applied
//! again on top of the dumped list (on a scratch copy), and the result is what the
//! mirror's list is marked against. Route notifications applied again to a list that
//! already reflects them change nothing (a key never holds two identical routes: the
//! kernel refuses them with `EEXIST` and sends nothing, `fib_table_insert`,
//! `fib6_add_rt2node`; deletes of a route that is gone remove nothing), so the result is
//! right wherever in the window the chunk read the key. An insert still in flight when a
//! chunk read its key is notified after the chunk: the chunk's correction is *tentative*
//! until the end of the scan, and withdrawn when the notification turns out to change
//! nothing (the kernel never notifies an IPv4 change that changes nothing: a replace or
//! add of a route the key already lists fails).
//!
//! The eBPF source orders ring records by time around chunks, which leaves the same
//! in-flight cases; the window covers both sources. It also applies events *older* than
//! a chunk after it: records the filter saw after the `recv` that returned the chunk
//! started wait for the next chunk, yet a dump's first chunk is built when it is
//! requested, before that `recv`, and an IPv4 chunk read without RTNL shows an insert
//! before its record is written. Those events reach the mirror after the chunk, outside
//! any window (the dump may be over). Found by tests/tests/exact.rs with the eBPF
//! source (trace of `route_mirror::mirror::window`): a confirming scan's one chunk
//! showed `10.80.6.0/24 metric 10` as `[via 198.18.1.2]` while the mirror held `[via
//! 198.18.2.2, via 198.18.1.2]`: veth2 had gone admin down, the kernel had flushed the
//! route through it without a message, and the link event from which the mirror infers
//! that flush came off the ring after the chunk. The chunk's reorder counted as an
//! update; the notification-only rule above (*reflected*) cannot see it, and neither a
//! key changed twice before the chunk (the first event then changes the list again).
//! So a correction also keeps the key's list from before it, and every later route
//! event of the key during the scan, inferred removals included, is applied to that
//! list too: once it becomes the list the scan marked, the correction was those events
//! seen early, and is withdrawn. A lost event never arrives, so its correction stays
//! counted.

use std::collections::{HashMap, HashSet};

use super::Mirror;
use crate::fib::Entry;
use crate::model::{Family, NexthopKind, NexthopObject, Route, RouteKey};
use crate::reconcile::{ActiveScan, Verdict};

/// Events kept per window generation; two generations are kept, so at least this many of
/// the newest events are always there. A window holds the events between two chunks of
/// one dump (a chunk holds a few hundred routes), or the backlog before a dump's first
/// chunk, whose older part was queued before the request and is reflected anyway.
const HALF_CAP: usize = 64 * 1024;

/// Keys whose corrections a scan remembers as tentative (an in-flight change's
/// notification arrives within a chunk or two of it, so a scan that corrects more than
/// this is not a race).
const TENTATIVE_CAP: usize = 64 * 1024;

/// One route notification as applied.
#[derive(Debug, Clone)]
pub(super) enum RouteEvent {
    New {
        route: Route,
        flags: u16,
    },
    Del(Route),
    /// Not a notification: `fib_sync_down_dev` found every hop of this IPv4 multipath
    /// route dead and flagged its `fib_info` `RTNH_F_LINKDOWN` (a dump shows it), just
    /// before `fib_flush` removed it without a message. Replayed for corrections only.
    Linkdown(Route),
}

impl RouteEvent {
    pub(super) fn key(&self) -> &RouteKey {
        match self {
            RouteEvent::New { route, .. }
            | RouteEvent::Del(route)
            | RouteEvent::Linkdown(route) => &route.key,
        }
    }
}

/// An object whose dump correction may be withdrawn (see `DumpWindow::nh_tentative`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum ObjectId {
    Nexthop(u32),
    Link(u32),
}

/// A scan's correction of one key's list, until the scan ends.
#[derive(Debug)]
struct Tentative {
    verdicts: Vec<Verdict>,
    /// The mirror's list before the correction, with the key's events since applied.
    replay: Vec<Route>,
    /// The list the scan marked, once it moved past the key.
    marked: Option<Vec<Route>>,
}

#[derive(Debug, Default)]
pub(super) struct DumpWindow {
    /// The route dump in flight: family and table filter.
    dumping: Option<(Family, Option<u32>)>,
    /// Events since the last chunk, per key, in order: older generation, then newer.
    older: HashMap<RouteKey, Vec<RouteEvent>>,
    newer: HashMap<RouteKey, Vec<RouteEvent>>,
    newer_len: usize,
    /// The window dropped events (see [`DumpWindow::take_overflow`]).
    overflow: bool,
    /// Keys the current chunk listed (kept while the window holds events).
    listed: HashSet<RouteKey>,
    /// Each touched key's list before its first event in the window.
    bases: HashMap<RouteKey, Vec<Route>>,
    /// The key the last chunk ended with (its list may go on in the next chunk).
    chunk_ended_on: Option<RouteKey>,
    /// Dumped routes of one key with events in the window, held until the key's last
    /// route of the chunk: (key, routes in dump order).
    held: Option<(RouteKey, Vec<Route>)>,
    /// A key whose list the chunk boundary split, with events between its parts: its
    /// remaining routes are marked as they come (the scan is redone).
    split: Option<RouteKey>,
    /// Corrections made by chunks in this scan, per key, that later notifications may
    /// show to have been changes in flight.
    tentative: HashMap<RouteKey, Tentative>,
    /// Tentative corrections withdrawn: (updated, created).
    pub(super) withdrawn: (u64, u64),
    /// Objects (nexthop objects, links) a dump of this scan created or updated:
    /// tentative the same way (a change's notification is queued after the dump chunk
    /// that already shows it; seen in the eBPF soak: `nexthop replace` during a confirming
    /// scan).
    /// With a nexthop object's value before the correction (see
    /// [`DumpWindow::nh_member_removed`]).
    nh_tentative: HashMap<ObjectId, (Verdict, Option<NexthopObject>)>,
    /// Object corrections withdrawn: (updated, created).
    nh_withdrawn: (u64, u64),
    /// Links a dump corrected in their carrier only (see [`DumpWindow::carrier_notified`]).
    carrier_tentative: HashSet<u32>,
}

impl DumpWindow {
    /// A route dump of `family` (`table`: its filter) was requested.
    pub(super) fn start(&mut self, family: Family, table: Option<u32>) {
        self.stop();
        self.dumping = Some((family, table));
    }

    /// The route dump ended (or was abandoned).
    pub(super) fn stop(&mut self) {
        self.clear_events();
        self.overflow = false;
        self.held = None;
        self.split = None;
        self.chunk_ended_on = None;
        self.dumping = None;
    }

    /// A chunk was applied: the next chunk's window starts now.
    pub(super) fn chunk_done(&mut self, last: Option<RouteKey>) {
        tracing::trace!(?last, "chunk done");
        self.clear_events();
        self.split = None;
        self.chunk_ended_on = last;
    }

    fn clear_events(&mut self) {
        self.older.clear();
        self.newer.clear();
        self.newer_len = 0;
        self.listed.clear();
        self.bases.clear();
    }

    /// Keys with events in the window that the chunk did not list.
    fn unlisted(&self) -> Vec<RouteKey> {
        self.older
            .keys()
            .chain(self.newer.keys())
            .filter(|k| !self.listed.contains(k))
            .copied()
            .collect()
    }

    /// A route dump is running (silent removals must be recorded too).
    pub(super) fn active(&self) -> bool {
        self.dumping.is_some()
    }

    /// Events were dropped from a full window: the running scan cannot be trusted for
    /// the keys they touched, and is redone.
    pub(super) fn take_overflow(&mut self) -> bool {
        std::mem::take(&mut self.overflow)
    }

    pub(super) fn covers(&self, key: &RouteKey) -> bool {
        self.dumping
            .is_some_and(|(f, t)| key.family() == f && t.is_none_or(|t| t == key.table))
    }

    /// Remembers an event about to be applied, if a route dump it concerns is running.
    /// `base`: the key's list now, asked for only before the key's first event.
    pub(super) fn record(&mut self, event: RouteEvent, base: impl FnOnce() -> Vec<Route>) {
        if !self.covers(event.key()) {
            return;
        }
        if !self.touched(event.key()) {
            self.bases.insert(*event.key(), base());
        }
        if self.newer_len >= HALF_CAP {
            self.overflow |= !self.older.is_empty();
            self.older = std::mem::take(&mut self.newer);
            self.newer_len = 0;
        }
        self.newer_len += 1;
        tracing::trace!(?event, "window event");
        self.newer.entry(*event.key()).or_default().push(event);
    }

    /// Whether `key` has events in the window.
    pub(super) fn touched(&self, key: &RouteKey) -> bool {
        !(self.older.is_empty() && self.newer.is_empty())
            && (self.older.contains_key(key) || self.newer.contains_key(key))
    }

    /// The window's events of `key`, oldest first.
    pub(super) fn events(&self, key: &RouteKey) -> Vec<RouteEvent> {
        let mut out: Vec<RouteEvent> = self.older.get(key).cloned().unwrap_or_default();
        out.extend(self.newer.get(key).into_iter().flatten().cloned());
        out
    }

    /// Whether a correction of `key` would be remembered, and the key's list before
    /// it is still needed (the key's first correction in this scan).
    pub(super) fn wants_base(&self, key: &RouteKey) -> bool {
        !self.tentative.contains_key(key) && self.tentative.len() < TENTATIVE_CAP
    }

    /// A chunk corrected `key`'s list (`verdict`); `base`: the mirror's list before the
    /// correction (given when [`DumpWindow::wants_base`] said so).
    /// Past [`TENTATIVE_CAP`] keys, corrections are no longer remembered: they stay
    /// counted (the safe side), and memory stays bounded when a scan corrects much.
    pub(super) fn correction(&mut self, key: RouteKey, verdict: Verdict, base: Option<Vec<Route>>) {
        if verdict == Verdict::Seen {
            return;
        }
        if let Some(t) = self.tentative.get_mut(&key) {
            t.verdicts.push(verdict);
            // Marked again after it was settled (its list went on in the next chunk).
            t.marked = None;
        } else if let Some(replay) = base {
            self.tentative.insert(
                key,
                Tentative {
                    verdicts: vec![verdict],
                    replay,
                    marked: None,
                },
            );
        }
    }

    /// Whether the scan corrected `key` and has not settled it yet.
    pub(super) fn wants_settle(&self, key: &RouteKey) -> bool {
        self.tentative.get(key).is_some_and(|t| t.marked.is_none())
    }

    /// The scan moved past corrected `key`: `marked` is the list it marked.
    pub(super) fn settle(&mut self, key: &RouteKey, marked: Vec<Route>) {
        if let Some(t) = self.tentative.get_mut(key) {
            tracing::trace!(?key, before = ?t.replay, ?marked, "tentative correction");
            t.marked = Some(marked);
        }
    }

    /// Whether corrections wait for events that may explain them.
    pub(super) fn replaying(&self) -> bool {
        !self.tentative.is_empty()
    }

    /// A route event arrives while the scan runs: if it brings the list a correction
    /// started from to the one the scan marked, the correction was this change (and
    /// those before it) seen early by the dump, and is withdrawn.
    pub(super) fn replay_event(&mut self, event: &RouteEvent) {
        let key = *event.key();
        let Some(t) = self.tentative.get_mut(&key) else {
            return;
        };
        let mut m = scratch(key, std::mem::take(&mut t.replay));
        m.apply_event(event);
        t.replay = m.key_list(&key);
        let explained = t.marked.as_ref().is_some_and(|d| same_list(&t.replay, d));
        tracing::trace!(?event, replay = ?t.replay, explained, "event after a correction");
        if explained {
            self.withdraw(&key);
        }
    }

    fn withdraw(&mut self, key: &RouteKey) {
        for v in self
            .tentative
            .remove(key)
            .map(|t| t.verdicts)
            .unwrap_or_default()
        {
            match v {
                Verdict::Updated => self.withdrawn.0 += 1,
                Verdict::Created => self.withdrawn.1 += 1,
                Verdict::Seen => {}
            }
        }
    }

    /// A notification about `key` changed nothing: the chunk had shown it already, so the
    /// chunk's corrections of `key` were that change in flight, not a missed event.
    pub(super) fn reflected(&mut self, key: &RouteKey) {
        if self.tentative.is_empty() {
            return;
        }
        self.withdraw(key);
    }

    /// The scan ends: returns the withdrawn (updated, created) counts and forgets the rest.
    pub(super) fn finish_scan(&mut self) -> (u64, u64) {
        self.stop();
        self.tentative.clear();
        std::mem::take(&mut self.withdrawn)
    }

    /// A dump corrected object `id` (`verdict`).
    /// `before`: a nexthop object's value before the correction.
    pub(super) fn nh_correction(
        &mut self,
        id: ObjectId,
        verdict: Verdict,
        before: Option<NexthopObject>,
    ) {
        if verdict != Verdict::Seen && self.nh_tentative.len() < TENTATIVE_CAP {
            self.nh_tentative.insert(id, (verdict, before));
        }
    }

    /// Nexthop object `member` went (notified, or inferred from its device), and the
    /// kernel took it out of every group without a message for the groups. A group a
    /// dump corrected is withdrawn if its value before the correction, without
    /// `member`, is what the mirror holds now: the dump showed the group after the
    /// removal, before the removal's event came (seen in the eBPF soak: groups shrunk by
    /// a member whose device went down, dumped before the link event).
    pub(super) fn nh_member_removed(
        &mut self,
        member: u32,
        now: &HashMap<u32, super::Stamped<NexthopObject>>,
    ) {
        if self.nh_tentative.is_empty() {
            return;
        }
        let mut explained = Vec::new();
        for (id, (_, before)) in self.nh_tentative.iter_mut() {
            let ObjectId::Nexthop(gid) = *id else {
                continue;
            };
            let Some(NexthopObject {
                kind: NexthopKind::Group { members, .. },
                ..
            }) = before
            else {
                continue;
            };
            members.retain(|m| m.id != member);
            if before.as_ref() == now.get(&gid).map(|n| &n.value) {
                explained.push(*id);
            }
        }
        for id in explained {
            tracing::trace!(
                ?id,
                member,
                "group correction explained by a member's removal"
            );
            self.nh_reflected(id);
        }
    }

    /// A notification about object `id` changed nothing: the dump had shown it already.
    pub(super) fn nh_reflected(&mut self, id: ObjectId) {
        match self.nh_tentative.remove(&id).map(|(v, _)| v) {
            Some(Verdict::Updated) => self.nh_withdrawn.0 += 1,
            Some(Verdict::Created) => self.nh_withdrawn.1 += 1,
            _ => {}
        }
    }

    /// A dump corrected link `ifindex` in its carrier bits only.
    pub(super) fn carrier_correction(&mut self, ifindex: u32) {
        if self.nh_tentative.contains_key(&ObjectId::Link(ifindex)) {
            self.carrier_tentative.insert(ifindex);
        }
    }

    /// A notification of link `ifindex` came after a dump corrected its carrier. The
    /// kernel reports carrier changes from linkwatch, later (up to a second) and
    /// coalesced: a dump in between shows a carrier state whose own notification may
    /// never come (a flap shorter than linkwatch's delay is reported once, with the state
    /// at that time; seen in the soak: `vethc` dumped without `IFF_LOWER_UP` during
    /// carrier flaps 100 ms apart). The link's notification after the dump is the
    /// kernel's report of that change: the correction was it, seen early.
    pub(super) fn carrier_notified(&mut self, ifindex: u32) {
        if self.carrier_tentative.remove(&ifindex) {
            self.nh_reflected(ObjectId::Link(ifindex));
        }
    }

    /// The scan ends: the withdrawn object (updated, created) counts.
    pub(super) fn finish_nh_scan(&mut self) -> (u64, u64) {
        self.carrier_tentative.clear();
        self.nh_tentative.clear();
        std::mem::take(&mut self.nh_withdrawn)
    }
}

impl Mirror {
    /// Marks one dumped route, through the window: a key with events since the last
    /// chunk is held until its last route of the chunk, then marked as replayed.
    pub(super) fn mark_dumped_route(&mut self, route: Route, scan: &mut ActiveScan) {
        let key = route.key;
        if !(self.window.older.is_empty() && self.window.newer.is_empty()) {
            self.window.listed.insert(key);
        }
        if let Some(prev) = self.window.chunk_ended_on.take() {
            // The chunk's first route continues the last chunk's key: its list was read
            // in two parts, and a change between them can shift it (the kernel resumes
            // by position). Mark as dumped and redo the scan.
            if prev == key && self.window.touched(&key) {
                scan.interrupted += 1;
                self.window.split = Some(key);
            }
        }
        if self.window.held.as_ref().is_some_and(|(k, _)| *k != key) {
            self.flush_held(scan);
        }
        if self.window.split == Some(key) {
            self.mark_route(route, scan);
        } else if let Some((_, held)) = &mut self.window.held {
            held.push(route);
        } else if self.window.touched(&key) {
            self.window.held = Some((key, vec![route]));
        } else {
            self.mark_route(route, scan);
        }
    }

    /// The chunk ends: keys with events in the window that it did not list keep what the
    /// events made of them through the prune. The chunk read them before those events
    /// (or they lie in a later chunk's range, which marks them again); a route the
    /// kernel removed since was notified before it went, so the events removed it.
    pub(super) fn keep_unlisted(&mut self, scan: &ActiveScan) {
        let gen = scan.generation;
        for key in self.window.unlisted() {
            if let Some(rs) = self
                .fib
                .table_mut(key.family(), key.table)
                .key_routes_mut(&key.dst, &key.sub)
            {
                for e in rs {
                    e.stamp = gen;
                }
            }
        }
    }

    /// The routes of `key` in the mirror now.
    pub(super) fn key_list(&self, key: &RouteKey) -> Vec<Route> {
        self.fib
            .table(key.family(), key.table)
            .map(|t| {
                t.key_routes(&key.dst, &key.sub)
                    .iter()
                    .map(|e| Route {
                        key: *key,
                        attrs: e.attrs.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Marks the held key's list. If the dumped list is one the key went through in the
    /// window (its list before the window's events, or after any of them), the mirror's
    /// list, which has all of them, is confirmed. Otherwise the mirror was wrong: the
    /// dumped list with the window's events applied again is what it is marked against.
    pub(super) fn flush_held(&mut self, scan: &mut ActiveScan) {
        let Some((key, dumped)) = self.window.held.take() else {
            return;
        };
        let events = self.window.events(&key);
        let base = self.window.bases.get(&key).cloned().unwrap_or_default();
        let went_through = states(key, base, &events)
            .iter()
            .any(|s| same_list(s, &dumped));
        tracing::trace!(?key, ?dumped, ?events, went_through, "replay");
        let routes = if went_through {
            self.key_list(&key)
        } else {
            let mut scratch = scratch(key, dumped);
            for e in &events {
                scratch.apply_event(e);
            }
            scratch.key_list(&key)
        };
        for route in routes {
            self.mark_route(route, scan);
        }
    }

    fn apply_event(&mut self, e: &RouteEvent) {
        match e {
            RouteEvent::New { route, flags } => self.apply_new_route(route.clone(), *flags, 0),
            RouteEvent::Del(route) => self.apply_del_route(route),
            RouteEvent::Linkdown(route) => {
                let k = &route.key;
                let t = self.fib.table_mut(k.family(), k.table);
                if let Some(rs) = t.key_routes_mut(&k.dst, &k.sub) {
                    if let Some(e) = rs
                        .iter_mut()
                        .find(|e| super::routes::same_for_delete(&e.attrs, &route.attrs))
                    {
                        let mut a = (*e.attrs).clone();
                        a.flags |= u32::from(crate::model::rtnh::LINKDOWN);
                        e.attrs = std::sync::Arc::new(a);
                    }
                }
            }
        }
    }
}

/// A scratch mirror holding `routes` as `key`'s list.
fn scratch(key: RouteKey, routes: Vec<Route>) -> Mirror {
    let mut m = Mirror::new();
    let t = m.fib.table_mut(key.family(), key.table);
    for (i, r) in routes.into_iter().enumerate() {
        t.insert_at(&key.dst, Entry::new(key.sub, r.attrs, 0), i);
    }
    m
}

/// The lists `key` went through: `base`, then after each event.
fn states(key: RouteKey, base: Vec<Route>, events: &[RouteEvent]) -> Vec<Vec<Route>> {
    let mut m = scratch(key, base);
    let mut out = vec![m.key_list(&key)];
    for e in events {
        m.apply_event(e);
        out.push(m.key_list(&key));
    }
    out
}

fn same_list(mine: &[Route], dumped: &[Route]) -> bool {
    mine.len() == dumped.len()
        && mine
            .iter()
            .zip(dumped)
            .all(|(a, b)| a.attrs.same_as_dumped(&b.attrs))
}
