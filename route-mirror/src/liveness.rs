//! Next-hop liveness, derived as the kernel derives it: `linkdown` and `dead` are state of
//! links and per-device settings, not of routes.
//!
//! The kernel keeps routes whose next hop lost its link. Carrier loss (`NETDEV_CHANGE`)
//! flags the hop `linkdown`; admin down (`NETDEV_DOWN`) flags it `dead` too (IPv4 then
//! flushes every route left without a live hop, silently; IPv6 deletes them with
//! notifications; multipath routes of both keep the dead hop). When the link returns the
//! flags go, again without any route message. A dump reports a `linkdown` hop `dead` as
//! well when `ignore_routes_with_linkdown` is set for its device (IPv4: the device's or
//! `all`; IPv6: the device's, which writing `all` sets on every device), and lookups skip
//! it (`fib_lookup_good_nhc`, `find_match`). Verified in namespaces on 6.18 (`ip -d route`
//! after `ip link set PEER down` / `DEV down`, with each setting).
//!
//! So the mirror stores no liveness in routes (a link flap would rewrite a million of
//! them): [`Liveness`] holds each link's flags and the netconf settings, and the flags a
//! dump would show *now* are computed when a route is rendered or looked up.
//!
//! Rules, from `fib_sync_down_dev`/`fib_sync_up` (IPv4) and `fib6_ifdown`/`fib6_ifup`
//! plus `addrconf_notify` (IPv6):
//! - IPv4 hop: `dead` while its device is admin down; `linkdown` while it is down or
//!   has no carrier (`IFF_LOWER_UP`/`IFF_RUNNING`). Host-scope routes (local addresses)
//!   are exempt (`fib_nh_scope == RT_SCOPE_NOWHERE`).
//! - IPv6 hop: `linkdown` while its device is not operationally up (`IFF_RUNNING`);
//!   `dead` from admin down until the device is operationally up again (an admin-up link
//!   without carrier keeps its IPv6 hops dead: the revival waits for `addrconf` to see
//!   the link ready). Local and anycast routes are exempt.
//! - A nexthop object's hop carries the flags its object reports (the kernel deletes
//!   objects whose device loses carrier or goes down, [`crate::mirror`]).

use std::collections::{HashMap, HashSet};

use crate::fib::Usable;
use crate::model::{netconf, rtn, rtnh, scope, Family, NextHop, NexthopKind, RouteAttrs};

const IFF_UP: u32 = libc::IFF_UP as u32;
const IFF_RUNNING: u32 = libc::IFF_RUNNING as u32;
const IFF_LOWER_UP: u32 = 0x10000;

/// Whether links `a` and `b` differ in their carrier (`IFF_LOWER_UP`, `IFF_RUNNING`,
/// `IFF_DORMANT`) and nothing else.
pub fn carrier_only(a: &crate::model::Link, b: &crate::model::Link) -> bool {
    const CARRIER: u32 = IFF_LOWER_UP | IFF_RUNNING | 0x20000;
    a != b
        && (a.flags ^ b.flags) & !CARRIER == 0
        && crate::model::Link {
            flags: b.flags,
            ..a.clone()
        } == *b
}

/// Link flags and netconf settings: everything liveness is derived from. Cloned into
/// the lock-free lookup snapshot ([`crate::mirror::Names`]), so it stays small (one entry
/// per link).
#[derive(Debug, Clone, Default)]
pub struct Liveness {
    /// `IFF_*` flags of each link.
    flags: HashMap<u32, u32>,
    /// Links whose IPv6 hops are dead: admin down since they were last operationally up.
    v6_dead: HashSet<u32>,
    /// `ignore_routes_with_linkdown` per (family, ifindex or [`netconf::ALL`]/`DEFAULT`).
    ignore: HashMap<(Family, i32), bool>,
    /// Links whose last IPv4 address went: IPv4 is disabled on them
    /// (`fib_disable_ip(dev, NETDEV_DOWN, force)`), their IPv4 hops are dead until an
    /// address comes back or the link comes up (`fib_sync_up(dev, RTNH_F_DEAD)`).
    v4_disabled: HashSet<u32>,
}

/// What a link change means for the routes through it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkTransition {
    /// Went admin down (or was first seen down): IPv4 flushes routes left without a live hop.
    pub went_down: bool,
    /// Lost carrier or went down: the kernel deletes nexthop objects on it.
    pub lost_carrier: bool,
    /// Any change to the flags liveness depends on.
    pub liveness_changed: bool,
}

impl Liveness {
    /// Records a link's new flags and says what changed.
    pub fn set_link(&mut self, ifindex: u32, flags: u32) -> LinkTransition {
        let old = self.flags.insert(ifindex, flags);
        let up = flags & IFF_UP != 0;
        let carrier = up && flags & (IFF_LOWER_UP | IFF_RUNNING) != 0;
        if !up {
            self.v6_dead.insert(ifindex);
        } else if flags & IFF_RUNNING != 0 {
            self.v6_dead.remove(&ifindex);
        }
        if up && old.is_some_and(|o| o & IFF_UP == 0) {
            self.v4_disabled.remove(&ifindex);
        }
        let (was_up, had_carrier) = match old {
            Some(o) => (
                o & IFF_UP != 0,
                o & IFF_UP != 0 && o & (IFF_LOWER_UP | IFF_RUNNING) != 0,
            ),
            None => (true, true),
        };
        let mask = IFF_UP | IFF_RUNNING | IFF_LOWER_UP;
        LinkTransition {
            went_down: was_up && !up,
            lost_carrier: had_carrier && !carrier,
            liveness_changed: old.is_none_or(|o| o & mask != flags & mask),
        }
    }

    /// The link's last IPv4 address went (true) or one came back (false); returns
    /// whether that changed anything.
    pub fn set_v4_disabled(&mut self, ifindex: u32, disabled: bool) -> bool {
        if disabled {
            self.v4_disabled.insert(ifindex)
        } else {
            self.v4_disabled.remove(&ifindex)
        }
    }

    /// Whether IPv4 hops through `ifindex` are dead (admin down, or IPv4 disabled).
    pub fn v4_dead(&self, ifindex: u32) -> bool {
        self.v4_disabled.contains(&ifindex)
            || self.flags.get(&ifindex).is_some_and(|f| f & IFF_UP == 0)
    }

    pub fn remove_link(&mut self, ifindex: u32) {
        self.flags.remove(&ifindex);
        self.v6_dead.remove(&ifindex);
        self.v4_disabled.remove(&ifindex);
        for f in Family::ALL {
            self.ignore.remove(&(f, ifindex as i32));
        }
    }

    /// Sets `ignore_routes_with_linkdown`; returns whether it changed.
    pub fn set_ignore(&mut self, family: Family, ifindex: i32, on: bool) -> bool {
        let old = self.ignore.insert((family, ifindex), on);
        // Writing IPv6 `all` writes `default` too, silently (addrconf_fixup_linkdown).
        if family == Family::V6 && ifindex == netconf::ALL {
            self.ignore.insert((family, netconf::DEFAULT), on);
        }
        old != Some(on)
    }

    pub fn remove_ignore(&mut self, family: Family, ifindex: i32) {
        self.ignore.remove(&(family, ifindex));
    }

    /// `ip_ignore_linkdown` / `ip6_ignore_linkdown` of a device.
    pub fn ignores_linkdown(&self, family: Family, ifindex: u32) -> bool {
        let dev = self.ignore.get(&(family, ifindex as i32)) == Some(&true);
        match family {
            Family::V4 => dev || self.ignore.get(&(family, netconf::ALL)) == Some(&true),
            Family::V6 => dev,
        }
    }

    /// Whether no link is down or without carrier: every hop is alive (the common case,
    /// checked first so lookups and snapshots skip the per-route work).
    pub fn all_alive(&self) -> bool {
        self.v6_dead.is_empty()
            && self.v4_disabled.is_empty()
            && self
                .flags
                .values()
                .all(|f| f & IFF_UP != 0 && f & IFF_RUNNING != 0 && f & IFF_LOWER_UP != 0)
    }

    /// The stored liveness flags (`RTNH_F_DEAD`/`LINKDOWN`) of an inline hop of a route of
    /// `family` through `ifindex`, before `ignore_routes_with_linkdown` is applied.
    fn stored(&self, family: Family, ifindex: u32) -> u8 {
        let Some(&f) = self.flags.get(&ifindex) else {
            return 0;
        };
        let up = f & IFF_UP != 0;
        match family {
            Family::V4 => {
                let mut x = 0;
                let disabled = self.v4_disabled.contains(&ifindex);
                if !up || disabled {
                    x |= rtnh::DEAD;
                }
                if !up || disabled || f & (IFF_LOWER_UP | IFF_RUNNING) == 0 {
                    x |= rtnh::LINKDOWN;
                }
                x
            }
            Family::V6 => {
                let mut x = 0;
                if self.v6_dead.contains(&ifindex) {
                    x |= rtnh::DEAD;
                }
                if !up || f & IFF_RUNNING == 0 {
                    x |= rtnh::LINKDOWN;
                }
                x
            }
        }
    }

    /// The liveness flags a dump shows on a route's hop: its stored flags, plus `dead`
    /// for a `linkdown` hop whose device ignores routes with link down.
    fn dumped(&self, family: Family, stored: u8, ifindex: u32) -> u8 {
        if stored & rtnh::LINKDOWN != 0 && self.ignores_linkdown(family, ifindex) {
            stored | rtnh::DEAD
        } else {
            stored
        }
    }

    /// Whether routes of this kind keep their hops out of link-state tracking.
    fn exempt(family: Family, attrs: &RouteAttrs) -> bool {
        match family {
            Family::V4 => attrs.scope == scope::HOST,
            Family::V6 => matches!(attrs.kind, rtn::LOCAL | rtn::ANYCAST),
        }
    }

    /// The hops of a route with the flags a dump would show now (configured flags plus
    /// liveness). `hops` are the route's effective hops ([`effective_hops`]).
    pub fn dumped_hops(&self, family: Family, attrs: &RouteAttrs, hops: &[Hop]) -> Vec<NextHop> {
        hops.iter()
            .map(|h| {
                let mut hop = h.hop.clone();
                let stored = match h.object {
                    // Objects report their own flags (kept in the hop).
                    Some(_) => hop.flags & rtnh::LIVENESS,
                    None if Self::exempt(family, attrs) || hop.ifindex == 0 => 0,
                    None => self.stored(family, hop.ifindex),
                };
                let fam = h.object.unwrap_or(family);
                hop.flags = hop.flags & !rtnh::LIVENESS | self.dumped(fam, stored, hop.ifindex);
                hop
            })
            .collect()
    }

    /// The route-level `rtm_flags` liveness bits a dump shows: a single-path route's are
    /// its hop's; a multipath IPv4 route's are its own (`fib_info`) flags, kept in the
    /// attributes; IPv6 multipath routes have none.
    pub fn route_flags(&self, family: Family, attrs: &RouteAttrs, dumped: &[NextHop]) -> u32 {
        let base = attrs.flags & !u32::from(rtnh::LIVENESS);
        if attrs.nh_id.is_some() {
            return base;
        }
        match dumped {
            [one] => base | u32::from(one.flags & rtnh::LIVENESS),
            [] => base,
            _ if family == Family::V4 => attrs.flags,
            _ => base,
        }
    }

    /// Whether a route can forward now, as the kernel's lookup decides
    /// (`fib_lookup_good_nhc` for IPv4: the IPv4 setting of each hop's device, whatever
    /// the gateway's family; `find_match` for IPv6).
    pub fn usable(&self, family: Family, attrs: &RouteAttrs, hops: &[Hop]) -> Usable {
        if rtn::is_reject(attrs.kind) || hops.is_empty() || Self::exempt(family, attrs) {
            return Usable::Yes;
        }
        let good = |h: &Hop| {
            let stored = match h.object {
                Some(_) => h.hop.flags & rtnh::LIVENESS,
                None if h.hop.ifindex == 0 => 0,
                None => self.stored(family, h.hop.ifindex),
            };
            stored & rtnh::DEAD == 0
                && !(stored & rtnh::LINKDOWN != 0 && self.ignores_linkdown(family, h.hop.ifindex))
        };
        if hops.iter().any(good) {
            Usable::Yes
        } else if attrs.nh_id.is_some() && family == Family::V4 {
            Usable::NoSkipPrefix
        } else {
            Usable::No
        }
    }

    /// Links and settings, for `diff` and `stats`.
    pub fn link_flags(&self) -> &HashMap<u32, u32> {
        &self.flags
    }

    pub fn ignore_settings(&self) -> &HashMap<(Family, i32), bool> {
        &self.ignore
    }
}

/// One effective next hop of a route: inline, or resolved from a nexthop object (with
/// that object's family, which decides whose `ignore_routes_with_linkdown` applies).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    pub hop: NextHop,
    pub object: Option<Family>,
}

/// The next hops a route forwards through: its nexthop object's (resolved in
/// `nexthops`, group members in group order) if it has one, else its inline hops.
pub fn effective_hops<N: std::ops::Deref<Target = crate::model::NexthopObject>>(
    nexthops: &HashMap<u32, N>,
    attrs: &RouteAttrs,
) -> Vec<Hop> {
    let Some(nh) = attrs.nh_id.and_then(|id| nexthops.get(&id)) else {
        return attrs
            .nexthops
            .iter()
            .map(|h| Hop {
                hop: h.clone(),
                object: None,
            })
            .collect();
    };
    let single = |obj: &crate::model::NexthopObject, weight: u16| match &obj.kind {
        NexthopKind::Single {
            gateway,
            ifindex,
            flags,
            encap,
        } => Some(Hop {
            hop: NextHop {
                weight,
                flags: *flags,
                encap: encap.clone(),
                ..NextHop::new(*gateway, *ifindex)
            },
            object: Some(
                obj.family
                    .unwrap_or_else(|| gateway.map_or(Family::V4, |g| Family::of(&g))),
            ),
        }),
        _ => None,
    };
    match &nh.kind {
        NexthopKind::Single { .. } => single(nh, 1).into_iter().collect(),
        NexthopKind::Blackhole => Vec::new(),
        NexthopKind::Group { members, .. } => members
            .iter()
            .filter_map(|m| {
                single(
                    nexthops.get(&m.id)?,
                    m.weight.min(u32::from(u16::MAX)) as u16,
                )
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NextHop;

    const UP_RUNNING: u32 = IFF_UP | IFF_RUNNING | IFF_LOWER_UP;

    fn route(ifindex: u32) -> RouteAttrs {
        RouteAttrs {
            kind: rtn::UNICAST,
            nexthops: vec![NextHop::new(None, ifindex)].into(),
            ..Default::default()
        }
    }

    fn flags(l: &Liveness, family: Family, ifindex: u32) -> u8 {
        let a = route(ifindex);
        let hops = effective_hops::<Box<crate::model::NexthopObject>>(&HashMap::new(), &a);
        l.dumped_hops(family, &a, &hops)[0].flags
    }

    #[test]
    fn carrier_loss_is_linkdown_and_dead_only_where_ignored() {
        let mut l = Liveness::default();
        l.set_link(3, UP_RUNNING);
        assert!(l.all_alive());
        assert_eq!(flags(&l, Family::V4, 3), 0);
        let t = l.set_link(3, IFF_UP);
        assert!(t.lost_carrier && !t.went_down && t.liveness_changed);
        assert_eq!(flags(&l, Family::V4, 3), rtnh::LINKDOWN);
        assert_eq!(flags(&l, Family::V6, 3), rtnh::LINKDOWN);
        l.set_ignore(Family::V4, 3, true);
        assert_eq!(flags(&l, Family::V4, 3), rtnh::LINKDOWN | rtnh::DEAD);
        assert_eq!(flags(&l, Family::V6, 3), rtnh::LINKDOWN);
        // IPv4 `all` covers every device; IPv6 `all` is written to each device by the kernel.
        l.set_ignore(Family::V4, 3, false);
        l.set_ignore(Family::V4, netconf::ALL, true);
        assert_eq!(flags(&l, Family::V4, 3), rtnh::LINKDOWN | rtnh::DEAD);
        l.set_ignore(Family::V6, netconf::ALL, true);
        assert_eq!(flags(&l, Family::V6, 3), rtnh::LINKDOWN);
        l.set_link(3, UP_RUNNING);
        assert_eq!(flags(&l, Family::V4, 3), 0);
    }

    #[test]
    fn admin_down_kills_and_ipv6_revives_only_when_running() {
        let mut l = Liveness::default();
        l.set_link(3, UP_RUNNING);
        let t = l.set_link(3, 0);
        assert!(t.went_down && t.lost_carrier);
        assert_eq!(flags(&l, Family::V4, 3), rtnh::DEAD | rtnh::LINKDOWN);
        assert_eq!(flags(&l, Family::V6, 3), rtnh::DEAD | rtnh::LINKDOWN);
        // Admin up with carrier but not yet operationally up: IPv4 revives, IPv6 waits.
        l.set_link(3, IFF_UP | IFF_LOWER_UP);
        assert_eq!(flags(&l, Family::V4, 3), 0);
        assert_eq!(flags(&l, Family::V6, 3), rtnh::DEAD | rtnh::LINKDOWN);
        l.set_link(3, UP_RUNNING);
        assert_eq!(flags(&l, Family::V6, 3), 0);
    }

    #[test]
    fn lookups_skip_what_the_kernel_skips() {
        let mut l = Liveness::default();
        l.set_link(3, IFF_UP);
        let a = route(3);
        let hops = effective_hops::<Box<crate::model::NexthopObject>>(&HashMap::new(), &a);
        assert_eq!(l.usable(Family::V4, &a, &hops), Usable::Yes);
        l.set_ignore(Family::V4, 3, true);
        assert_eq!(l.usable(Family::V4, &a, &hops), Usable::No);
        let local = RouteAttrs {
            scope: scope::HOST,
            ..a.clone()
        };
        assert_eq!(l.usable(Family::V4, &local, &hops), Usable::Yes);
        let blackhole = RouteAttrs {
            kind: rtn::BLACKHOLE,
            nexthops: Default::default(),
            ..a
        };
        assert_eq!(l.usable(Family::V4, &blackhole, &[]), Usable::Yes);
    }
}
