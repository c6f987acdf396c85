//! Route notifications and dump entries placed in their key's list as the kernel places
//! them.
//!
//! IPv4 (`fib_table_insert`, `fib_table_delete`): a key (table, prefix, TOS, metric) holds
//! a list; the notification's flags say what happened (`REPLACE`: the first route was
//! replaced; `CREATE|EXCL`: the key is new; `CREATE|APPEND`: appended; `CREATE`:
//! prepended), and a delete carries the removed route's attributes.
//!
//! IPv6 (`fib6_add_rt2node`, `fib6_del`): routes of one (table, prefix, source, metric)
//! follow each other in insertion order, whatever the flags say (`prepend` appends);
//! gateway routes that may share a path (no nexthop object, not from a router
//! advertisement) join the key's multipath route as *siblings*. A notification about a
//! new sibling lists it first, then the others; the route keeps its first sibling first
//! and shows that sibling's metrics. `replace` replaces the first route of the same kind
//! (multipath-capable or not), else the first. Observed on 6.18 with `ip monitor`.

use std::sync::Arc;

use smallvec::SmallVec;
use tracing::debug;

use super::{key_hash, Cause, DeltaOp, Mirror};
use crate::fib::{Entries, Entry, Place};
use crate::model::{nlm, rtprot, Family, Metrics, NextHop, Route, RouteAttrs, RouteKey};
use crate::reconcile::{ActiveScan, Verdict};

/// Whether an IPv6 route may be (or become) part of a multipath route
/// (`rt6_qualify_for_ecmp`: a gateway, no nexthop object, not `RTF_ADDRCONF`).
fn v6_ecmp(a: &RouteAttrs) -> bool {
    a.nh_id.is_none()
        && a.protocol != rtprot::RA
        && !a.nexthops.is_empty()
        && a.nexthops.iter().all(|h| h.gateway.is_some())
}

fn same_hop(a: &NextHop, b: &NextHop) -> bool {
    a.gateway == b.gateway && a.ifindex == b.ifindex
}

/// Attributes equal for matching a delete (`fib_table_delete` matches what the request
/// names; the notification names everything): all but the IPv4 multipath route flag the
/// mirror keeps itself, which may lag the message's.
pub(super) fn same_for_delete(mine: &RouteAttrs, del: &RouteAttrs) -> bool {
    let lk = u32::from(crate::model::rtnh::LINKDOWN);
    mine.kind == del.kind
        && mine.protocol == del.protocol
        && mine.scope == del.scope
        && (mine.flags & !lk) == (del.flags & !lk)
        && mine.prefsrc == del.prefsrc
        && mine.nh_id == del.nh_id
        && mine.nexthops == del.nexthops
        && mine.pref == del.pref
        && mine.metrics == del.metrics
}

/// The metrics of each hop of an IPv6 multipath route, in hop order.
fn hop_metrics(a: &RouteAttrs) -> Vec<Metrics> {
    match &a.hop_metrics {
        Some(m) if m.len() == a.nexthops.len() => m.to_vec(),
        _ => vec![a.metrics.clone(); a.nexthops.len()],
    }
}

/// Sets `hops` and their metrics on `a`: the route shows its first hop's metrics, and
/// keeps per-hop ones only when they differ.
fn set_hops(a: &mut RouteAttrs, hops: SmallVec<[NextHop; 2]>, metrics: Vec<Metrics>) {
    a.metrics = metrics.first().cloned().unwrap_or_default();
    a.hop_metrics = (metrics.iter().any(|m| *m != a.metrics)).then(|| metrics.into());
    a.nexthops = hops;
}

impl Mirror {
    pub(super) fn apply_new_route(&mut self, route: Route, flags: u16, gen: u32) {
        if !self.inferred.is_empty() {
            let k = &route.key;
            let h = key_hash(k.table, &k.dst, &k.sub, &route.attrs);
            if self.inferred.remove(&h).is_some() {
                self.counters.inferred_pending = self.inferred.len() as u64;
            }
        }
        if self.reflects(&route, flags) {
            // The list already shows this route where the notification puts it: a dump
            // chunk read it before its notification came (see [`super::window`]).
            self.counters.route_adds_reflected += 1;
            self.window.reflected(&route.key);
            return;
        }
        let (route, place) = match route.key.family() {
            Family::V4 => (route, v4_place(flags)),
            Family::V6 => self.v6_place(route, flags),
        };
        let (key, entry) = self.entry(route, gen);
        let noted = self.tracking().then(|| entry.clone());
        let gone = self
            .fib
            .table_mut(key.family(), key.table)
            .insert(&key.dst, entry, place);
        let op = if gone.is_empty() {
            self.counters.route_adds += 1;
            DeltaOp::Add
        } else {
            self.counters.route_updates += 1;
            DeltaOp::Replace
        };
        // Routes a new key's notification showed to be stale.
        for e in gone.iter().skip(1) {
            self.note(DeltaOp::Delete, Cause::Event, key.table, key.dst, e);
        }
        if let Some(e) = noted {
            self.note(op, Cause::Event, key.table, key.dst, &e);
        }
    }
}

impl Mirror {
    /// Whether the key's list already holds what notification (`route`, `flags`) says
    /// happened. A key never holds two identical routes: the kernel refuses an add or
    /// replace of a route the key lists (`fib_table_insert`: `fa_match`; IPv6
    /// `fib6_add_rt2node`: `rt6_duplicate_nexthop`) with `EEXIST` and notifies nothing,
    /// so such a notification was already reflected by a dump.
    fn reflects(&self, route: &Route, flags: u16) -> bool {
        let k = &route.key;
        let Some(t) = self.fib.table(k.family(), k.table) else {
            return false;
        };
        let list = t.key_routes(&k.dst, &k.sub);
        if list.is_empty() {
            return false;
        }
        let new = &route.attrs;
        // IPv4: a replace of a route the key lists anywhere is refused by the kernel, so
        // this is either reflected already or the renotification of a route whose
        // nexthop object was replaced (`fib_info_notify_update`: `NLM_F_REPLACE` for
        // every route using the object), which moves nothing. (IPv6 replaces the first
        // route of the same kind even with an identical one further on.)
        let replace = flags & nlm::REPLACE != 0;
        match k.family() {
            Family::V4 => match v4_place(flags) {
                Place::ReplaceFirst if !replace => same_for_delete(&list[0].attrs, new),
                _ => list.iter().any(|e| same_for_delete(&e.attrs, new)),
            },
            Family::V6 => {
                let ecmp = v6_ecmp(new);
                if replace || flags & nlm::CREATE == 0 {
                    let i = if replace {
                        list.iter()
                            .position(|e| v6_ecmp(&e.attrs) == ecmp)
                            .unwrap_or(0)
                    } else {
                        0
                    };
                    return same_for_delete(&list[i].attrs, new)
                        && list[i].attrs.hop_metrics.is_none();
                }
                match list.iter().position(|e| v6_ecmp(&e.attrs)) {
                    // A sibling notification: every sibling it lists is in the route.
                    Some(i) if ecmp && new.nexthops.len() > 1 => {
                        let have = &list[i].attrs.nexthops;
                        have.len() == new.nexthops.len()
                            && new
                                .nexthops
                                .iter()
                                .all(|h| have.iter().any(|o| same_hop(o, h)))
                    }
                    _ => list.iter().any(|e| v6_duplicate(&e.attrs, new)),
                }
            }
        }
    }
}

/// `rt6_duplicate_nexthop`: an IPv6 route of the key already uses `new`'s next hop.
fn v6_duplicate(old: &RouteAttrs, new: &RouteAttrs) -> bool {
    if old.nh_id.is_some() || new.nh_id.is_some() {
        return old.nh_id == new.nh_id;
    }
    match new.nexthops.as_slice() {
        [] => old.nexthops.is_empty() && old.kind == new.kind,
        [h] => old.nexthops.iter().any(|o| same_hop(o, h)),
        _ => same_for_delete(old, new),
    }
}

/// Where an IPv4 notification's route went (see the module doc).
fn v4_place(flags: u16) -> Place {
    if flags & nlm::REPLACE != 0 || flags & nlm::CREATE == 0 {
        // A replace, or no insert flags (a dump-like message): the first route.
        Place::ReplaceFirst
    } else if flags & nlm::EXCL != 0 {
        Place::Only
    } else if flags & nlm::APPEND != 0 {
        Place::Back
    } else {
        Place::Front
    }
}

impl Mirror {
    /// Where an IPv6 notification's route goes in its key's list. The route to replace
    /// is first brought to the front of the list (so `ReplaceFirst` replaces it); a new
    /// sibling comes back merged into the key's multipath route.
    fn v6_place(&mut self, route: Route, flags: u16) -> (Route, Place) {
        let key = route.key;
        let list: &[Entry] = self
            .fib
            .table(Family::V6, key.table)
            .map_or(&[], |t| t.key_routes(&key.dst, &key.sub));
        let ecmp = v6_ecmp(&route.attrs);
        let (target, route, place) = if flags & nlm::REPLACE != 0 {
            // The first route of the same kind, else the first one.
            let i = list.iter().position(|e| v6_ecmp(&e.attrs) == ecmp);
            (i.unwrap_or(0), route, Place::ReplaceFirst)
        } else if flags & nlm::CREATE == 0 {
            (0, route, Place::ReplaceFirst)
        } else {
            // IPv6 notifications of an added route always carry NLM_F_EXCL
            // (`fib6_add_rt2node` starts from it), also when the key holds other routes
            // (device routes of one prefix and metric on several devices): an add goes
            // after them, or merges into the key's multipath route.
            match list.iter().position(|e| v6_ecmp(&e.attrs)) {
                // New siblings of the key's multipath route: the message lists the new
                // one first, then the others; the route keeps its first sibling first.
                Some(i) if ecmp && route.attrs.nexthops.len() > 1 => {
                    let merged = merge_siblings(&list[i].attrs, &route.attrs);
                    let route = Route {
                        key,
                        attrs: Arc::new(merged),
                    };
                    (i, route, Place::ReplaceFirst)
                }
                _ => (0, route, Place::Back),
            }
        };
        if target > 0 {
            let t = self.fib.table_mut(Family::V6, key.table);
            if let Some(rs) = t.key_routes_mut(&key.dst, &key.sub) {
                rs[..=target].rotate_right(1);
            }
        }
        (route, place)
    }

    pub(super) fn apply_del_route(&mut self, route: &Route) {
        let key = route.key;
        let family = key.family();
        let del = &route.attrs;
        let Some(t) = self.fib.table(family, key.table) else {
            self.counters.route_deletes_unknown += 1;
            return;
        };
        let list = t.key_routes(&key.dst, &key.sub);
        // IPv6 removes one sibling of a multipath route at a time: keep the others.
        if family == Family::V6 && v6_ecmp(del) {
            let sibling = list.iter().position(|e| {
                v6_ecmp(&e.attrs)
                    && e.attrs.nexthops.len() > del.nexthops.len()
                    && del
                        .nexthops
                        .iter()
                        .all(|d| e.attrs.nexthops.iter().any(|h| same_hop(h, d)))
            });
            if let Some(i) = sibling {
                let e = &list[i];
                let mut attrs = (*e.attrs).clone();
                let (hops, metrics): (SmallVec<[NextHop; 2]>, Vec<Metrics>) = attrs
                    .nexthops
                    .iter()
                    .cloned()
                    .zip(hop_metrics(&attrs))
                    .filter(|(h, _)| !del.nexthops.iter().any(|d| same_hop(h, d)))
                    .unzip();
                set_hops(&mut attrs, hops, metrics);
                let attrs = self.interner.intern(Arc::new(attrs));
                let t = self.fib.table_mut(family, key.table);
                if let Some(rs) = t.key_routes_mut(&key.dst, &key.sub) {
                    rs[i].attrs = attrs;
                    let e = rs[i].clone();
                    self.note(DeltaOp::Replace, Cause::Event, key.table, key.dst, &e);
                }
                self.counters.route_updates += 1;
                return;
            }
        }
        let pick = list
            .iter()
            .position(|e| same_for_delete(&e.attrs, del))
            .or_else(|| {
                // Not the attributes the mirror holds (it missed a change): the route
                // with those next hops, as fib_nh_match would find it.
                list.iter().position(|e| {
                    e.attrs.kind == del.kind
                        && e.attrs.nh_id == del.nh_id
                        && e.attrs.nexthops.len() == del.nexthops.len()
                        && e.attrs
                            .nexthops
                            .iter()
                            .zip(&del.nexthops)
                            .all(|(a, b)| same_hop(a, b))
                })
            });
        let removed = pick.and_then(|i| {
            self.fib
                .table_mut(family, key.table)
                .remove_where(&key.dst, &key.sub, |_| Some(i))
        });
        match removed {
            Some(e) => {
                self.counters.route_deletes += 1;
                self.note(DeltaOp::Delete, Cause::Event, key.table, key.dst, &e);
            }
            None => self.counters.route_deletes_unknown += 1,
        }
    }

    /// Marks one dumped route. A dump lists a key's routes one after another in the
    /// kernel's order; `scan.cursor` remembers how many of the current key's routes were
    /// seen, so the n-th dumped route is matched against the mirror's list from position
    /// n on and moved there (a reordered list is corrected and counted).
    pub(super) fn mark_route(&mut self, route: Route, scan: &mut ActiveScan) {
        let gen = scan.generation;
        let (key, entry) = self.entry(route, gen);
        if !self.inferred.is_empty() {
            let h = key_hash(key.table, &key.dst, &key.sub, &entry.attrs);
            // Only removals inferred before this scan began: for a later one the dump
            // may predate the kernel's flush.
            if self.inferred.get(&h).is_some_and(|(_, g)| *g != gen) {
                self.inferred.remove(&h);
                self.counters.inferred_refuted += 1;
                self.counters.inferred_pending = self.inferred.len() as u64;
            }
        }
        let idx = match scan.route_cursor {
            Some((k, n)) if k == key => n,
            prev => {
                if let Some(prev) = prev {
                    self.settle_marked(prev);
                }
                0
            }
        };
        scan.route_cursor = Some((key, idx + 1));
        // A correction remembers the key's list before it (see `super::window`).
        let tentative = !scan.reason.expects_corrections();
        let want_base = tentative && self.window.wants_base(&key);
        let t = self.fib.table_mut(key.family(), key.table);
        let marked = t.with_key_list(&key.dst, entry, |es, r, entry| {
            let base = |es: &Entries| {
                want_base.then(|| {
                    es[r.clone()]
                        .iter()
                        .map(|e| Route {
                            key,
                            attrs: e.attrs.clone(),
                        })
                        .collect::<Vec<_>>()
                })
            };
            let at = r.start + idx.min(r.len());
            let same = |e: &Entry| {
                Arc::ptr_eq(&e.attrs, &entry.attrs) || e.attrs.same_as_dumped(&entry.attrs)
            };
            // A route this scan already marked earlier in the key's list: the dump
            // repeated it (an IPv6 dump resumed by position after the tree changed). A
            // key never lists one route twice (the kernel refuses it with `EEXIST`).
            if es[r.start..at].iter().any(|e| e.stamp == gen && same(e)) {
                return None;
            }
            let j = es[at..r.end].iter().position(same);
            let before = if j == Some(0) { None } else { base(es) };
            let rs = &mut es[at..r.end];
            let (verdict, noted) = match j {
                Some(j) => {
                    rs[..=j].rotate_right(1);
                    rs[0].stamp = gen;
                    // Out of place: the mirror's order was wrong (or an earlier route is gone).
                    match j {
                        0 => (Verdict::Seen, None),
                        _ => (Verdict::Updated, Some(rs[0].clone())),
                    }
                }
                None if !rs.is_empty() && rs[0].stamp != gen => {
                    rs[0] = entry.clone();
                    (Verdict::Updated, Some(entry))
                }
                None => {
                    es.insert(at, entry.clone());
                    (Verdict::Created, Some(entry))
                }
            };
            Some((verdict, noted, before))
        });
        let (verdict, noted, before) = match marked {
            Some(Some(m)) => m,
            Some(None) => {
                // The repeat: the cursor stays where the list goes on.
                scan.route_cursor = Some((key, idx));
                return;
            }
            None => return,
        };
        scan.verdicts.count(verdict);
        if tentative {
            self.window.correction(key, verdict, before);
        }
        if let Some(e) = &noted {
            debug!(?verdict, table = key.table, dst = %key.dst, attrs = ?e.attrs, "scan corrected a route");
        }
        if let Some(e) = noted {
            let op = match verdict {
                Verdict::Created => DeltaOp::Add,
                _ => DeltaOp::Replace,
            };
            self.note(op, Cause::Scan, key.table, key.dst, &e);
        }
    }
}

impl Mirror {
    /// The scan moved past `cursor`'s key, whose first `n` routes it marked.
    pub(super) fn settle_marked(&mut self, (key, n): (RouteKey, usize)) {
        if self.window.wants_settle(&key) {
            let mut marked = self.key_list(&key);
            marked.truncate(n);
            self.window.settle(&key, marked);
        }
    }
}

/// `old` (the key's multipath route) with the siblings of notification `new` merged in:
/// the ring order starts at `old`'s first sibling; siblings new to the route carry the
/// notification's metrics (the new sibling's own).
fn merge_siblings(old: &RouteAttrs, new: &RouteAttrs) -> RouteAttrs {
    let mut hops: Vec<NextHop> = new.nexthops.to_vec();
    if let Some(first) = old.nexthops.first() {
        if let Some(p) = hops.iter().position(|h| same_hop(h, first)) {
            hops.rotate_left(p);
        }
    }
    let old_metrics = hop_metrics(old);
    let metrics: Vec<Metrics> = hops
        .iter()
        .map(|h| {
            old.nexthops
                .iter()
                .position(|o| same_hop(o, h))
                .map_or_else(|| new.metrics.clone(), |i| old_metrics[i].clone())
        })
        .collect();
    let mut merged = RouteAttrs {
        metrics: Metrics::default(),
        hop_metrics: None,
        ..new.clone()
    };
    set_hops(&mut merged, hops.into_iter().collect(), metrics);
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{rtax, MetricValue, SubKey};

    fn mtu(n: u32) -> Metrics {
        Metrics::new(vec![(rtax::MTU, MetricValue::U32(n))])
    }

    fn gw(n: u8, ifindex: u32) -> NextHop {
        NextHop::new(Some(format!("2001:2:0:{n}::2").parse().unwrap()), ifindex)
    }

    #[test]
    fn appended_siblings_keep_the_first_siblings_metrics() {
        let first = RouteAttrs {
            kind: 1,
            nexthops: vec![gw(1, 2)].into(),
            metrics: mtu(1400),
            ..Default::default()
        };
        // `append via 2:: mtu 1300`: the notification lists the new sibling first.
        let note = RouteAttrs {
            nexthops: vec![gw(2, 3), gw(1, 2)].into(),
            metrics: mtu(1300),
            ..first.clone()
        };
        let m = merge_siblings(&first, &note);
        assert_eq!(m.nexthops.to_vec(), vec![gw(1, 2), gw(2, 3)]);
        assert_eq!(m.metrics, mtu(1400));
        assert_eq!(m.hop_metrics.as_deref(), Some(&[mtu(1400), mtu(1300)][..]));
        // A third, listed from itself round the ring.
        let note3 = RouteAttrs {
            nexthops: vec![gw(3, 4), gw(1, 2), gw(2, 3)].into(),
            metrics: mtu(1280),
            ..first.clone()
        };
        let m3 = merge_siblings(&m, &note3);
        assert_eq!(m3.nexthops.to_vec(), vec![gw(1, 2), gw(2, 3), gw(3, 4)]);
        assert_eq!(
            m3.hop_metrics.as_deref(),
            Some(&[mtu(1400), mtu(1300), mtu(1280)][..])
        );
        // Same metrics everywhere: nothing per hop.
        let same = RouteAttrs {
            metrics: mtu(1400),
            ..note
        };
        assert_eq!(merge_siblings(&first, &same).hop_metrics, None);
        let _ = SubKey::metric(0);
    }
}
