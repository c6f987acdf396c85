//! What the NATS publisher reads from the mirror for a batch: a key's routes as the
//! mirror holds them now (each change message carries them, see [`super::message`]),
//! and the keys whose rendering changed without a route change of their own.
//!
//! A NATS route object names its devices and resolves its nexthop object, so two
//! things change it silently: a link renamed or removed, and a nexthop object replaced
//! (with `nexthop_compat_mode` 0 the kernel sends no route message for the routes using
//! it). [`Derived`] finds those routes (one scan of the mirror, decided once per
//! attribute set) so the publisher re-sends their keys.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use ipnet::IpNet;

use crate::fib::Entry;
use crate::mirror::Mirror;
use crate::model::{Family, NextHop, RouteAttrs, SubKey};
use crate::view::RouteContext;

/// A key within a table: (table, prefix, metric, TOS, IPv6 source).
pub type KeyOf = (u32, IpNet, u32, u8, Option<IpNet>);

pub fn key_of(table: u32, dst: IpNet, sub: &SubKey) -> KeyOf {
    (table, dst, sub.priority, sub.tos, sub.src)
}

/// The routes of `table`/`dst` with the key of `sub`, in the mirror's order.
pub fn key_routes<'a>(m: &'a Mirror, table: u32, dst: &IpNet, sub: &SubKey) -> Vec<&'a Entry> {
    let Some(es) = m
        .fib
        .table(Family::of_net(dst), table)
        .and_then(|t| t.get(dst))
    else {
        return Vec::new();
    };
    es.iter()
        .filter(|e| e.priority() == sub.priority && e.tos() == sub.tos && e.sub().src == sub.src)
        .collect()
}

/// Whether `list` (a key's routes now) is exactly `e`: the change message can leave
/// `routes` out.
pub fn just(list: &[&Entry], e: &Entry) -> bool {
    matches!(list, [only] if Arc::ptr_eq(&only.attrs, &e.attrs) && only.sub() == e.sub())
}

/// Why a key is re-sent (the message's `cause`).
pub const LINK: &str = "link";
pub const NEXTHOP: &str = "nexthop";

/// The next hops of the nexthop objects routes use, as last published.
#[derive(Default)]
pub struct Derived {
    objects: HashMap<u32, Vec<NextHop>>,
}

impl Derived {
    /// Starts over from a snapshot's routes (what a consumer now holds).
    pub fn reset(&mut self, names: &impl RouteContext, routes: &[(u32, IpNet, Entry)]) {
        self.objects.clear();
        for (_, _, e) in routes {
            if let Some(id) = e.attrs.nh_id {
                self.objects
                    .entry(id)
                    .or_insert_with(|| names.effective_hops(&e.attrs));
            }
        }
    }

    /// A route published with a change: its object is known from now on. Only a new
    /// object is taken (no earlier route used it); a known one that changed is left for
    /// [`Derived::affected`] to find, with every other route using it.
    pub fn published(&mut self, m: &Mirror, attrs: &RouteAttrs) {
        if let Some(id) = attrs.nh_id {
            self.objects
                .entry(id)
                .or_insert_with(|| m.effective_hops(attrs));
        }
    }

    /// The keys to re-send and why: every route through one of `links`, and when
    /// `nexthops` changed, every route whose object's next hops differ from what was
    /// last published.
    pub fn affected(
        &mut self,
        m: &Mirror,
        links: &[u32],
        nexthops: bool,
    ) -> Vec<(KeyOf, &'static str)> {
        let mut changed: HashMap<u32, Vec<NextHop>> = HashMap::new();
        let mut used: HashSet<u32> = HashSet::new();
        let mut memo: HashMap<*const RouteAttrs, Option<&'static str>> = HashMap::new();
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for ((_, table), t) in m.fib.tables() {
            for (dst, e) in t.iter() {
                let why = *memo.entry(Arc::as_ptr(&e.attrs)).or_insert_with(|| {
                    let hops = m.effective_hops(&e.attrs);
                    if let (true, Some(id)) = (nexthops, e.attrs.nh_id) {
                        used.insert(id);
                        let was = self.objects.get(&id);
                        if changed.contains_key(&id) || was.is_some_and(|w| *w != hops) {
                            changed.insert(id, hops);
                            return Some(NEXTHOP);
                        }
                        if was.is_none() {
                            self.objects.insert(id, hops);
                            return None;
                        }
                    }
                    hops.iter()
                        .any(|h| links.contains(&h.ifindex))
                        .then_some(LINK)
                });
                if let Some(why) = why {
                    let k = key_of(table, dst, &e.sub());
                    if seen.insert(k) {
                        out.push((k, why));
                    }
                }
            }
        }
        if nexthops {
            self.objects.extend(changed);
            self.objects.retain(|id, _| used.contains(id));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        rtn, Change, NexthopKind, NexthopObject, Route, RouteAttrs, RouteKey, SubKey,
    };

    fn nh(id: u32, gw: &str, ifindex: u32) -> Change {
        Change::NewNexthop(NexthopObject {
            id,
            family: Some(Family::V4),
            protocol: 3,
            kind: NexthopKind::Single {
                gateway: Some(gw.parse().unwrap()),
                ifindex,
                flags: 0,
                encap: None,
            },
        })
    }

    fn route(dst: &str, metric: u32, attrs: RouteAttrs) -> Change {
        Change::NewRoute {
            route: Route {
                key: RouteKey {
                    table: 254,
                    dst: dst.parse().unwrap(),
                    sub: SubKey::metric(metric),
                },
                attrs: Arc::new(RouteAttrs {
                    kind: rtn::UNICAST,
                    ..attrs
                }),
            },
            flags: 0,
        }
    }

    fn keys(v: &[(KeyOf, &str)]) -> Vec<String> {
        let mut s: Vec<String> = v.iter().map(|(k, w)| format!("{} {w}", k.1)).collect();
        s.sort();
        s
    }

    #[test]
    fn finds_the_routes_a_rename_or_an_object_change_rewrites() {
        let mut m = Mirror::new();
        m.apply(nh(10, "198.18.1.2", 3));
        m.apply(nh(11, "198.18.2.2", 4));
        let obj = |id| RouteAttrs {
            nh_id: Some(id),
            ..Default::default()
        };
        let dev = |ifindex| RouteAttrs {
            nexthops: vec![NextHop::new(None, ifindex)].into(),
            ..Default::default()
        };
        m.apply(route("10.0.0.0/8", 0, obj(10)));
        m.apply(route("10.1.0.0/16", 0, obj(11)));
        m.apply(route("10.2.0.0/16", 5, dev(4)));
        let mut d = Derived::default();
        let snap: Vec<(u32, IpNet, Entry)> = m
            .fib
            .tables()
            .flat_map(|((_, t), tab)| tab.iter().map(move |(p, e)| (t, p, e.clone())))
            .collect();
        d.reset(&m.names(), &snap);
        assert!(d.affected(&m, &[], true).is_empty(), "nothing changed yet");
        // Link 4 renamed: the device route and the route whose object uses it.
        assert_eq!(
            keys(&d.affected(&m, &[4], false)),
            ["10.1.0.0/16 link", "10.2.0.0/16 link"]
        );
        // Object 10 replaced: its route only, then never again for the same change.
        m.apply(nh(10, "198.18.9.2", 4));
        assert_eq!(keys(&d.affected(&m, &[], true)), ["10.0.0.0/8 nexthop"]);
        assert!(d.affected(&m, &[], true).is_empty());
        // A route on a new object is published with its change, not re-sent.
        m.apply(nh(12, "198.18.3.2", 3));
        m.apply(route("10.3.0.0/16", 0, obj(12)));
        d.published(&m, &obj(12));
        assert!(d.affected(&m, &[], true).is_empty());
        let e = m
            .fib
            .table(Family::V4, 254)
            .unwrap()
            .get(&"10.3.0.0/16".parse().unwrap())
            .unwrap()[0]
            .clone();
        let list = key_routes(&m, 254, &"10.3.0.0/16".parse().unwrap(), &e.sub());
        assert!(just(&list, &e));
    }
}
