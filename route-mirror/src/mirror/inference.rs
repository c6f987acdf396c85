//! What the kernel does without a route or nexthop message, inferred from the events
//! that cause it (each confirmed by a dump; `inferred_*` counters):
//!
//! - A device going admin down (`NETDEV_DOWN`): IPv4 routes left without a live hop are
//!   flushed (host-scope routes of its addresses are spared), multipath routes keep the
//!   dead hop (`fib_sync_down_dev` + `fib_flush`). Going away (`NETDEV_UNREGISTER`):
//!   every IPv4 route with a hop through it goes.
//! - A device losing carrier or going down or away: nexthop objects on it are deleted
//!   (`nexthop_flush_dev`, no `RTM_DELNEXTHOP`), groups lose them (and go when empty),
//!   and routes using a deleted object go (IPv4 silently; IPv6 with a notification only
//!   under `nexthop_compat_mode=1`). Seen on 6.18: `ip link set PEER down` left no trace
//!   of `nexthop id 1 via GW dev veth1` or of `group 1` in `ip nexthop`.
//! - An IPv4 address going away: routes of the main table using it as preferred source
//!   go (`fib_sync_down_addr`; 6.6+ sends the deletes too).
//! - An explicit nexthop delete: routes using the object go; groups lose it.
//!
//! Liveness itself (dead/linkdown hops that stay) is not inferred here: it is derived
//! ([`crate::liveness`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::{key_hash, Cause, DeltaOp, FollowUp, Mirror, Stamped};
use crate::liveness::LinkTransition;
use crate::model::{
    netconf, scope, table, Address, Family, Link, Netconf, NexthopKind, RouteAttrs,
};
use crate::reconcile::{ScanReason, ScanScope};

impl Mirror {
    pub(super) fn link_changed(&mut self, link: Link, gen: u32) -> Option<FollowUp> {
        let ifindex = link.ifindex;
        let t: LinkTransition = self.live.set_link(ifindex, link.flags);
        if self.renames(&link) {
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
        let mut followup = None;
        if t.lost_carrier {
            let doomed: Vec<u32> = self
                .nexthops
                .values()
                .filter(
                    |n| matches!(n.kind, NexthopKind::Single { ifindex: i, .. } if i == ifindex),
                )
                .map(|n| n.id)
                .collect();
            if !doomed.is_empty() {
                followup = self.nexthops_removed(&doomed, true);
            }
        }
        if t.went_down {
            // fib_sync_down_dev(NETDEV_DOWN) then fib_flush: IPv4 routes through this
            // device whose every hop is now dead. Host-scope routes are spared.
            self.v4_flush(ifindex, false);
            followup = Some(link_followup());
        }
        if t.liveness_changed {
            self.touch_dev_routes(Some(ifindex));
        }
        followup
    }

    pub(super) fn link_removed(&mut self, ifindex: u32) -> Option<FollowUp> {
        if self.links.remove(&ifindex).is_some() {
            self.touch_link_name(ifindex);
        }
        self.live.remove_link(ifindex);
        self.rules.unlink(ifindex);
        self.addrs.retain(|a, _| a.ifindex != ifindex);
        let doomed: Vec<u32> = self
            .nexthops
            .values()
            .filter(|n| matches!(n.kind, NexthopKind::Single { ifindex: i, .. } if i == ifindex))
            .map(|n| n.id)
            .collect();
        if !doomed.is_empty() {
            self.nexthops_removed(&doomed, true);
        }
        // NETDEV_UNREGISTER: every IPv4 route with a hop through it, local ones included.
        let gone = self.remove_v4_where(true, |a, _| {
            a.nh_id.is_none() && a.nexthops.iter().any(|h| h.ifindex == ifindex)
        });
        self.counters.inferred_removals += gone as u64;
        Some(link_followup())
    }

    /// `fib_sync_down_dev(dev, NETDEV_DOWN, force)` + `fib_flush`: IPv4 routes through
    /// `ifindex` whose every hop is now dead go. Without `force` (admin down) host-scope
    /// routes are spared; with it (the last address went) they are not.
    fn v4_flush(&mut self, ifindex: u32, force: bool) {
        let live = &self.live;
        let dead: HashSet<u32> = live
            .link_flags()
            .keys()
            .copied()
            .filter(|&i| live.v4_dead(i))
            .collect();
        let gone = self.remove_v4_where(true, |a, _| {
            a.nh_id.is_none()
                && (force || a.scope != scope::HOST)
                && a.nexthops.iter().any(|h| h.ifindex == ifindex)
                && a.nexthops.iter().all(|h| dead.contains(&h.ifindex))
        });
        self.counters.inferred_removals += gone as u64;
    }

    pub(super) fn addr_removed(&mut self, a: &Address) -> Option<FollowUp> {
        if !a.addr.is_ipv4() {
            return None;
        }
        let last = !self
            .addrs
            .keys()
            .any(|o| o.ifindex == a.ifindex && o.addr.is_ipv4());
        if last && self.live.set_v4_disabled(a.ifindex, true) {
            // The device's last IPv4 address went: fib_inetaddr_event disables IPv4 on
            // it (`fib_disable_ip(dev, NETDEV_DOWN, true)`): its hops die, and routes
            // left without a live hop are flushed, silently (seen on 6.18 in the soak).
            self.touch_dev_routes(Some(a.ifindex));
            self.v4_flush(a.ifindex, true);
        }
        if self.addrs.keys().any(|o| o.addr == a.addr) {
            // Another device still has it: the kernel keeps the prefsrc routes.
            return Some(FollowUp {
                reason: ScanReason::AddrRemoved,
                scope: ScanScope::routes(Family::V4),
            });
        }
        let addr = a.addr;
        let gone = self.remove_v4_where(false, |attrs, t| {
            t == table::MAIN && attrs.prefsrc == Some(addr)
        });
        self.counters.inferred_removals += gone as u64;
        Some(FollowUp {
            reason: ScanReason::AddrRemoved,
            scope: ScanScope::routes(Family::V4),
        })
    }

    /// Removes nexthop objects `ids`, then what the kernel removes with them: group
    /// members (a group left empty goes too) and the routes using any removed object.
    /// `silent`: the kernel sent no message for the objects themselves.
    pub(super) fn nexthops_removed(&mut self, ids: &[u32], silent: bool) -> Option<FollowUp> {
        let mut removed: HashSet<u32> = HashSet::new();
        let mut queue: Vec<u32> = ids.to_vec();
        while let Some(id) = queue.pop() {
            if self.nexthops.remove(&id).is_none() && !ids.contains(&id) {
                continue;
            }
            removed.insert(id);
            for n in self.nexthops.values_mut() {
                if let NexthopKind::Group { members, .. } = &mut n.value.kind {
                    let before = members.len();
                    members.retain(|m| m.id != id);
                    if members.len() != before && members.is_empty() {
                        queue.push(n.value.id);
                    }
                }
            }
        }
        for &id in &removed {
            self.window.nh_member_removed(id, &self.nexthops);
        }
        if silent {
            self.counters.inferred_nexthop_removals += removed.len() as u64;
        }
        let mut gone = 0;
        let mut dropped = Vec::new();
        let mut pend = Vec::new();
        let listing = self.tracking() || self.window.active() || self.window.replaying();
        for ((family, table), t) in self.fib.tables_mut() {
            gone += t.retain(|dst, e| {
                let keep = !e.attrs.nh_id.is_some_and(|id| removed.contains(&id));
                if !keep {
                    pend.push((family, key_hash(table, dst, &e.sub(), &e.attrs)));
                    if listing {
                        dropped.push((table, *dst, e.clone()));
                    }
                }
                keep
            });
        }
        for (t, dst, e) in dropped {
            self.silently_removed(t, dst, &e, false);
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

    pub(super) fn netconf_changed(&mut self, n: Netconf, gen: u32) -> Option<FollowUp> {
        // A message about another setting says nothing about this one.
        let on = n.ignore_linkdown?;
        self.netconf_stamps.insert((n.family, n.ifindex), gen);
        if n.family == Family::V6 && n.ifindex == netconf::ALL {
            self.netconf_stamps
                .insert((n.family, netconf::DEFAULT), gen);
        }
        if self.live.set_ignore(n.family, n.ifindex, on) {
            self.touch_dev_routes(u32::try_from(n.ifindex).ok());
        }
        // A new IPv4 `default` may reach devices that never set their own, silently
        // (devinet_copy_dflt_conf): read every device's setting again.
        (n.family == Family::V4 && n.ifindex == netconf::DEFAULT).then(|| FollowUp {
            reason: ScanReason::LinkChange,
            scope: ScanScope::netconf(),
        })
    }

    /// Removes IPv4 routes (all tables, every metric) for which `pred(attrs, table)`
    /// holds; returns how many. Decided per distinct attribute set and table first: a
    /// few thousand checks, not a million. `dead_first`: the kernel flagged them dead
    /// (`fib_sync_down_dev`) before flushing them (see [`Mirror::silently_removed`]).
    pub(super) fn remove_v4_where(
        &mut self,
        dead_first: bool,
        pred: impl Fn(&RouteAttrs, u32) -> bool,
    ) -> usize {
        let mut doomed: HashMap<(*const RouteAttrs, u32), bool> = HashMap::new();
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
                        .entry((Arc::as_ptr(&e.attrs), t))
                        .or_insert_with(|| pred(&e.attrs, t));
                }
            }
        }
        if !doomed.values().any(|d| *d) {
            return 0;
        }
        let mut gone = 0;
        let mut removed = Vec::new();
        let mut pend = Vec::new();
        let listing = self.tracking() || self.window.active() || self.window.replaying();
        for t in tables {
            gone += self.fib.table_mut(Family::V4, t).retain(|dst, e| {
                let doom = doomed
                    .get(&(Arc::as_ptr(&e.attrs), t))
                    .copied()
                    .unwrap_or(false);
                if doom {
                    pend.push((Family::V4, key_hash(t, dst, &e.sub(), &e.attrs)));
                    if listing {
                        removed.push((t, *dst, e.clone()));
                    }
                }
                !doom
            });
        }
        for (t, dst, e) in removed {
            self.silently_removed(t, dst, &e, dead_first);
        }
        self.pend_inferred(pend);
        gone
    }
}

impl Mirror {
    /// A route the kernel removes without a message: to the exports, to the running
    /// dump's window (a chunk may show it still there), and to the scan's corrections
    /// (a chunk may show it gone already, its link event still to come; see
    /// [`super::window`]). `dead_first`: the kernel flagged the route's hops dead
    /// before the flush, and an IPv4 multipath route's `fib_info` `LINKDOWN` with them,
    /// which a chunk read between the two shows (seen in the eBPF soak: seven multipath
    /// routes of table 1000 dumped with `LINKDOWN`, flushed when the link event came).
    fn silently_removed(
        &mut self,
        table: u32,
        dst: ipnet::IpNet,
        e: &crate::fib::Entry,
        dead_first: bool,
    ) {
        let key = crate::model::RouteKey {
            table,
            dst,
            sub: e.sub(),
        };
        if self.window.replaying() {
            use super::window::RouteEvent;
            let route = crate::model::Route {
                key,
                attrs: e.attrs.clone(),
            };
            if dead_first
                && key.family() == Family::V4
                && e.attrs.nh_id.is_none()
                && e.attrs.nexthops.len() > 1
            {
                self.window
                    .replay_event(&RouteEvent::Linkdown(route.clone()));
            }
            self.window.replay_event(&RouteEvent::Del(route));
        }
        if self.window.covers(&key) {
            // The list before: this route was just taken out of it (its position is
            // lost; the comparison of a dumped list with it is then only pessimistic).
            let mut base = self.key_list(&key);
            base.push(crate::model::Route {
                key,
                attrs: e.attrs.clone(),
            });
            let gone = crate::model::Route {
                key,
                attrs: e.attrs.clone(),
            };
            self.window
                .record(super::window::RouteEvent::Del(gone), || base);
        }
        self.note(DeltaOp::Delete, Cause::Inferred, table, dst, e);
    }
}

fn link_followup() -> FollowUp {
    FollowUp {
        reason: ScanReason::LinkChange,
        scope: ScanScope::routes(Family::V4),
    }
}
