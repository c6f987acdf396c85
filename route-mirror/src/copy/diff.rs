//! `diff --copy NAME`: the kernel's source table against the kernel's target table,
//! both dumped now on private sockets in their namespaces (not the mirrors: this checks
//! what the copy machinery left in the kernel). The source side goes through the copy's
//! filter and rewrite; only routes of the copy's protocol count on the target side
//! (every route, for a table the copy owns). A wanted route the target lacks is shown
//! with the reason it was refused, if the copy recorded one.

use std::collections::BTreeSet;

use anyhow::{Context, Result};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::spec::{Job, Producer};
use super::status::Refused;
use super::sync::Wanted;
use crate::fib::Entry;
use crate::intern::Interner;
use crate::mirror::Mirror;
use crate::model::{Change, Family};
use crate::netlink::msg::DecodeCounters;
use crate::netlink::msg::DumpKind;
use crate::netlink::socket::NlSocket;
use crate::view::{format_route, route_view};

/// Routes listed per kind of difference (all are counted).
const LIST_MAX: usize = 1000;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Missing {
    /// The route as it should be, `ip route` style.
    pub route: String,
    /// Why the copy could not install it, if it knows.
    pub reason: Option<String>,
    pub detail: Option<String>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct CopyDiff {
    pub name: String,
    pub from: Option<String>,
    pub to: String,
    /// Routes the source (or the declaration) wants in the target.
    pub wanted: u64,
    /// Routes of the copy in the target.
    pub installed: u64,
    pub missing_count: u64,
    pub extra_count: u64,
    pub differing_count: u64,
    /// IPv4 keys whose routes are all there, in another order than the source's (the
    /// kernel forwards with a key's first route).
    #[serde(default)]
    pub reordered_count: u64,
    pub missing: Vec<Missing>,
    /// In the target, not wanted.
    pub extra: Vec<String>,
    /// (wanted, in the target).
    pub differing: Vec<(String, String)>,
    /// The key's routes as wanted, in order, then as the target lists them.
    #[serde(default)]
    pub reordered: Vec<(Vec<String>, Vec<String>)>,
}

impl CopyDiff {
    pub fn is_empty(&self) -> bool {
        self.missing_count == 0
            && self.extra_count == 0
            && self.differing_count == 0
            && self.reordered_count == 0
    }
}

/// A mirror of one table (plus the links and nexthop objects its routes name) of
/// namespace `ns`, from dumps taken now.
pub fn kernel_table(ns: Option<String>, table: u32) -> Result<Mirror> {
    crate::netns::run_in(ns, move || {
        let mut sock = NlSocket::open().context("opening a netlink socket for diff --copy")?;
        let _ = sock.set_rcvbuf(32 << 20);
        let mut c = DecodeCounters::default();
        let mut interner = Interner::default();
        let mut out = Vec::new();
        crate::netlink::dump_blocking(&mut sock, DumpKind::Links, &mut c, &mut interner, &mut out)?;
        match crate::netlink::dump_blocking(
            &mut sock,
            DumpKind::Nexthops,
            &mut c,
            &mut interner,
            &mut out,
        ) {
            Ok(()) | Err(crate::netlink::DumpError::Refused { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        for f in Family::ALL {
            crate::netlink::dump_blocking(
                &mut sock,
                DumpKind::Routes(f, Some(table)),
                &mut c,
                &mut interner,
                &mut out,
            )?;
        }
        let mut m = Mirror::new();
        for ch in out {
            match ch {
                // A dump lists a key's routes in the kernel's order: each goes after
                // the ones before it (IPv6 device routes of one prefix and metric on
                // several devices, `ip route append`), as an append's notification.
                Change::NewRoute { route, .. } => m.apply(Change::NewRoute {
                    route,
                    flags: crate::model::nlm::CREATE | crate::model::nlm::APPEND,
                }),
                ch @ (Change::NewLink(_) | Change::NewNexthop(_)) => m.apply(ch),
                _ => None,
            };
        }
        Ok(m)
    })
}

/// A route through one of the copy's shared nexthop objects ([`super::nhpool`]) as the
/// inline multipath route it stands for (the source's route spells its hops).
fn inline(tgt: &Mirror, e: &Entry) -> Entry {
    match e.attrs.nh_id {
        Some(id) if super::nhpool::in_range(id) => {
            let mut a = (*e.attrs).clone();
            a.nexthops = tgt
                .effective_hops(&e.attrs)
                .into_iter()
                .map(|mut h| {
                    h.flags &= crate::model::rtnh::STABLE;
                    h.weight = h.weight.max(1);
                    h
                })
                .collect();
            a.nh_id = None;
            a.flags = 0;
            Entry::new(e.sub(), std::sync::Arc::new(a), e.stamp)
        }
        _ => e.clone(),
    }
}

/// Compares what `job` wants (from `src`, a mirror of its source) with `tgt` (a mirror
/// of its target). `refused`: the copy's record of refusals, for the reasons.
pub fn compare(
    job: &Job,
    src: &Mirror,
    tgt: &Mirror,
    protocol: u8,
    refused: &[Refused],
) -> CopyDiff {
    let mut d = CopyDiff {
        name: job.name.clone(),
        to: job.to.to_string(),
        ..Default::default()
    };
    let declared = job.declared_index();
    let mut dsts: BTreeSet<IpNet> = BTreeSet::new();
    match &job.producer {
        Producer::Copy { from, filter, .. } => {
            d.from = Some(from.to_string());
            for f in Family::ALL {
                if let Some(t) = src.fib.table(f, from.table) {
                    dsts.extend(
                        t.prefix_entries()
                            .map(|(p, _)| p)
                            .filter(|p| filter.admits_prefix(p)),
                    );
                }
            }
        }
        Producer::Declared(_) => dsts.extend(declared.keys().copied()),
    }
    let ours = |e: &Entry| job.owner || e.attrs.protocol == protocol;
    for f in Family::ALL {
        if let Some(t) = tgt.fib.table(f, job.to.table) {
            for (p, es) in t.prefix_entries() {
                d.installed += es.iter().filter(|e| e.attrs.protocol == protocol).count() as u64;
                if es.iter().any(ours) {
                    dsts.insert(p);
                }
            }
        }
    }
    let links: rustc_hash::FxHashMap<&str, u32> = tgt
        .links
        .values()
        .map(|l| (l.value.name.as_str(), l.value.ifindex))
        .collect();
    let reason = |dst: &IpNet, metric: u32| {
        refused
            .iter()
            .find(|r| r.dst == dst.to_string() && r.metric == metric)
            .map(|r| (r.reason.clone(), r.detail.clone()))
    };
    let show = |dst: IpNet, e: &Entry| format_route(&route_view(tgt, job.to.table, dst, e), true);
    for dst in dsts {
        let wanted: Vec<Wanted> = job.wanted_at(&declared, dst, src, &links, protocol);
        let current: Vec<Entry> = tgt
            .fib
            .table(Family::of_net(&dst), job.to.table)
            .and_then(|t| t.get(&dst))
            .map_or(&[][..], |es| es.as_slice())
            .iter()
            .map(|e| inline(tgt, e))
            .collect();
        let current = current.as_slice();
        let (pairs, matched) = super::sync::pair_ours(current, &wanted, ours);
        for (w, pair) in wanted.iter().zip(pairs.iter().copied()) {
            d.wanted += 1;
            match w {
                Err((sub, dev)) => {
                    d.missing_count += 1;
                    if d.missing.len() < LIST_MAX {
                        let (r, detail) = reason(&dst, sub.priority).unzip();
                        d.missing.push(Missing {
                            route: format!(
                                "{dst} metric {} (no device {:?} in the target)",
                                sub.priority, dev.0
                            ),
                            reason: r.or(Some("no_device".into())),
                            detail: detail.flatten(),
                        });
                    }
                }
                Ok((k, a)) => {
                    let want = Entry::new(k.sub, std::sync::Arc::new(a.clone()), 0);
                    match pair {
                        Some(i) => {
                            if *current[i].attrs != *a {
                                d.differing_count += 1;
                                if d.differing.len() < LIST_MAX {
                                    d.differing.push((show(dst, &want), show(dst, &current[i])));
                                }
                            }
                        }
                        None => {
                            d.missing_count += 1;
                            if d.missing.len() < LIST_MAX {
                                let (r, detail) = reason(&dst, k.sub.priority).unzip();
                                d.missing.push(Missing {
                                    route: show(dst, &want),
                                    reason: r,
                                    detail: detail.flatten(),
                                });
                            }
                        }
                    }
                }
            }
        }
        // An IPv4 key lists its routes in order: paired routes out of the wanted order
        // are a difference.
        if dst.addr().is_ipv4() {
            let mut subs: Vec<crate::model::SubKey> = Vec::new();
            for (k, _) in wanted.iter().flatten() {
                if !subs.contains(&k.sub) {
                    subs.push(k.sub);
                }
            }
            for sub in subs {
                let ws: Vec<(usize, Option<usize>)> = wanted
                    .iter()
                    .zip(&pairs)
                    .enumerate()
                    .filter(|(_, (w, _))| matches!(w, Ok((k, _)) if k.sub == sub))
                    .map(|(i, (_, p))| (i, *p))
                    .collect();
                let got: Vec<usize> = (0..current.len())
                    .filter(|&i| current[i].sub() == sub && ours(&current[i]))
                    .collect();
                let placed: Vec<usize> = ws.iter().filter_map(|(_, p)| *p).collect();
                // Routes of ours not wanted count as extra, not as an order.
                let in_order: Vec<usize> = got.iter().copied().filter(|&i| matched[i]).collect();
                if ws.len() < 2 || placed.len() != ws.len() || placed == in_order {
                    continue;
                }
                d.reordered_count += 1;
                if d.reordered.len() < LIST_MAX {
                    let want_list = ws
                        .iter()
                        .map(|(i, _)| match &wanted[*i] {
                            Ok((k, a)) => {
                                show(dst, &Entry::new(k.sub, std::sync::Arc::new(a.clone()), 0))
                            }
                            Err(_) => String::new(),
                        })
                        .collect();
                    let got_list = got.iter().map(|&i| show(dst, &current[i])).collect();
                    d.reordered.push((want_list, got_list));
                }
            }
        }
        for (i, e) in current.iter().enumerate() {
            if !matched[i] && ours(e) {
                d.extra_count += 1;
                if d.extra.len() < LIST_MAX {
                    d.extra.push(show(dst, e));
                }
            }
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::copy_flag;
    use crate::copy::spec::resolve;
    use crate::model::{rtn, Link, NextHop, Route, RouteAttrs, RouteKey, SubKey};

    fn mirror(routes: &[(u32, &str, u8, u32)]) -> Mirror {
        let mut m = Mirror::new();
        m.apply(Change::NewLink(Link {
            ifindex: 3,
            name: "veth1".into(),
            flags: libc::IFF_UP as u32,
            mtu: 1500,
            master: 0,
            group: 0,
            vrf_table: None,
        }));
        for &(table, dst, proto, ifindex) in routes {
            m.apply(Change::NewRoute {
                route: Route {
                    key: RouteKey {
                        table,
                        dst: dst.parse().unwrap(),
                        sub: SubKey::metric(0),
                    },
                    attrs: Arc::new(RouteAttrs {
                        protocol: proto,
                        kind: rtn::UNICAST,
                        scope: crate::model::scope::LINK,
                        nexthops: vec![NextHop::new(None, ifindex)].into(),
                        ..Default::default()
                    }),
                },
                flags: 0,
            });
        }
        m
    }

    #[test]
    fn missing_extra_differing_and_aliens() {
        let names = crate::names::Names::builtin();
        let jobs = resolve(&[copy_flag("main=200").unwrap()], &[], &[None], &names).unwrap();
        let src = mirror(&[
            (254, "10.0.0.0/24", 4, 3),
            (254, "10.1.0.0/24", 4, 3),
            (254, "10.2.0.0/24", 4, 3),
        ]);
        let same = mirror(&[
            (200, "10.0.0.0/24", 240, 3),
            (200, "10.1.0.0/24", 240, 3),
            (200, "10.2.0.0/24", 240, 3),
            (200, "10.9.0.0/24", 4, 3), // alien: not ours, not counted
        ]);
        let d = compare(&jobs[0], &src, &same, 240, &[]);
        assert!(d.is_empty(), "{d:?}");
        assert_eq!((d.wanted, d.installed), (3, 3));
        let off = mirror(&[
            (200, "10.0.0.0/24", 240, 3),
            (200, "10.1.0.0/24", 4, 3), // alien where ours should be: missing
            (200, "10.3.0.0/24", 240, 3), // ours, not wanted: extra
        ]);
        let refused = vec![Refused {
            dst: "10.1.0.0/24".into(),
            metric: 0,
            reason: "exists".into(),
            errno: Some(17),
            detail: None,
            attempts: 1,
            retry_in_s: 0.1,
        }];
        let d = compare(&jobs[0], &src, &off, 240, &refused);
        assert_eq!(
            (d.missing_count, d.extra_count, d.differing_count),
            (2, 1, 0),
            "{d:?}"
        );
        let m = d
            .missing
            .iter()
            .find(|m| m.route.contains("10.1.0.0"))
            .unwrap();
        assert_eq!(m.reason.as_deref(), Some("exists"));
    }

    /// The same routes at an IPv4 key in another order are a difference (the kernel
    /// forwards with the first).
    #[test]
    fn a_key_list_in_another_order_is_reordered() {
        let names = crate::names::Names::builtin();
        let jobs = resolve(&[copy_flag("main=200").unwrap()], &[], &[None], &names).unwrap();
        let list = |table: u32, proto: u8, gws: &[&str]| {
            let mut m = mirror(&[]);
            for gw in gws {
                m.apply(Change::NewRoute {
                    route: Route {
                        key: RouteKey {
                            table,
                            dst: "10.5.0.0/24".parse().unwrap(),
                            sub: SubKey::metric(0),
                        },
                        attrs: Arc::new(RouteAttrs {
                            protocol: proto,
                            kind: rtn::UNICAST,
                            nexthops: vec![NextHop::new(Some(gw.parse().unwrap()), 3)].into(),
                            ..Default::default()
                        }),
                    },
                    flags: crate::model::nlm::CREATE | crate::model::nlm::APPEND,
                });
            }
            m
        };
        let src = list(254, 4, &["198.18.1.2", "198.18.1.3"]);
        let same = list(200, 240, &["198.18.1.2", "198.18.1.3"]);
        let d = compare(&jobs[0], &src, &same, 240, &[]);
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(d.wanted, 2);
        let swapped = list(200, 240, &["198.18.1.3", "198.18.1.2"]);
        let d = compare(&jobs[0], &src, &swapped, 240, &[]);
        assert_eq!(
            (
                d.missing_count,
                d.extra_count,
                d.differing_count,
                d.reordered_count
            ),
            (0, 0, 0, 1),
            "{d:?}"
        );
        assert!(d.reordered[0].0[0].contains("198.18.1.2"), "{d:?}");
        assert!(d.reordered[0].1[0].contains("198.18.1.3"), "{d:?}");
    }
}
