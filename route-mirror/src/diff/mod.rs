//! The correctness oracle: the kernel's state, dumped now on a private socket, against
//! the mirror's.
//!
//! Both sides are brought to one canonical form ([`canon`]) and compared whole: each
//! key's complete list of routes (multiplicity and order), every attribute a dump shows
//! (metrics, flags with liveness, nexthop ids and the hops they resolve to), and the
//! links, addresses, nexthop objects and netconf settings. The counts always add up:
//! kernel routes = matched + reordered + differing + missing, mirror routes = matched +
//! reordered + differing + extra. `tests` inject one divergence of each class the oracle
//! exists to catch and fail if any goes unnoticed.

pub mod canon;
mod dump;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub use canon::{kernel_state, mirror_state, HopRec, LinkRec, RecKey, RouteRec, State};
pub use dump::{against_kernel, dump_kernel, heard_changes, DIFF_TRIES};

use crate::model::{rtn, rtprot, scope, Family, Metrics};
use crate::view::{flag_names, HopView, RouteView};

/// At most this many routes are listed per kind of difference (all are counted).
const LIST_MAX: usize = 1000;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct DiffReport {
    pub kernel_routes: u64,
    pub mirror_routes: u64,
    /// Routes in both, at the same place of their key's list.
    #[serde(default)]
    pub matched: u64,
    /// Counts of each kind of difference.
    pub missing_count: u64,
    pub extra_count: u64,
    pub differing_count: u64,
    /// Routes in both lists of a key, but in another order.
    #[serde(default)]
    pub reordered_count: u64,
    /// Links, addresses, nexthop objects and netconf settings that differ.
    #[serde(default)]
    pub object_differences: u64,
    /// In the kernel, not in the mirror.
    pub missing: Vec<RouteView>,
    /// In the mirror, not in the kernel.
    pub extra: Vec<RouteView>,
    /// Same key, other attributes: (kernel, mirror).
    pub differing: Vec<(RouteView, RouteView)>,
    /// In both, out of the kernel's order (as the kernel lists them).
    #[serde(default)]
    pub reordered: Vec<RouteView>,
    /// One line per differing link, address, nexthop object or setting.
    #[serde(default)]
    pub object_details: Vec<String>,
    /// Policy rules (both families) in the kernel and in the mirror.
    #[serde(default)]
    pub kernel_rules: u64,
    #[serde(default)]
    pub mirror_rules: u64,
    /// Rules one side has and the other lacks, or in another order.
    #[serde(default)]
    pub rule_differences: u64,
    #[serde(default)]
    pub rule_details: Vec<String>,
}

impl DiffReport {
    pub fn is_empty(&self) -> bool {
        self.missing_count == 0
            && self.extra_count == 0
            && self.differing_count == 0
            && self.reordered_count == 0
            && self.object_differences == 0
            && self.rule_differences == 0
    }

    /// Whether the counts explain both totals (see the module doc).
    pub fn adds_up(&self) -> bool {
        let common = self.matched + self.reordered_count + self.differing_count;
        common + self.missing_count == self.kernel_routes
            && common + self.extra_count == self.mirror_routes
    }
}

/// Compares the kernel's state with the mirror's.
pub fn compare(kernel: &State, mirror: &State) -> DiffReport {
    let mut r = DiffReport {
        kernel_routes: kernel.route_count() as u64,
        mirror_routes: mirror.route_count() as u64,
        ..Default::default()
    };
    let empty = Vec::new();
    let keys: BTreeSet<&RecKey> = kernel.routes.keys().chain(mirror.routes.keys()).collect();
    for key in keys {
        let k = kernel.routes.get(key).unwrap_or(&empty);
        let m = mirror.routes.get(key).unwrap_or(&empty);
        if k == m {
            r.matched += k.len() as u64;
            continue;
        }
        compare_lists(&mut r, key, k, m, &kernel.links, &mirror.links);
    }
    compare_objects(&mut r, kernel, mirror);
    let none = Vec::new();
    for f in Family::ALL {
        let (k, m) = (
            kernel.rules.get(&f).unwrap_or(&none),
            mirror.rules.get(&f).unwrap_or(&none),
        );
        r.kernel_rules += k.len() as u64;
        r.mirror_rules += m.len() as u64;
        let d = crate::rule::diff::compare(k, m);
        r.rule_differences += d.len() as u64;
        r.rule_details.extend(d);
    }
    r
}

/// One key's lists: routes at the same place match; the rest that both hold are
/// reordered; what remains pairs up as differing, and the surplus is missing or extra.
fn compare_lists(
    r: &mut DiffReport,
    key: &RecKey,
    k: &[RouteRec],
    m: &[RouteRec],
    klinks: &BTreeMap<u32, LinkRec>,
    mlinks: &BTreeMap<u32, LinkRec>,
) {
    let mut kleft: Vec<&RouteRec> = Vec::new();
    let mut mleft: Vec<&RouteRec> = Vec::new();
    for i in 0..k.len().max(m.len()) {
        match (k.get(i), m.get(i)) {
            (Some(a), Some(b)) if a == b => r.matched += 1,
            (a, b) => {
                kleft.extend(a);
                mleft.extend(b);
            }
        }
    }
    let mut kdiff = Vec::new();
    for a in kleft {
        match mleft.iter().position(|b| *b == a) {
            Some(j) => {
                mleft.remove(j);
                r.reordered_count += 1;
                if r.reordered.len() < LIST_MAX {
                    r.reordered.push(rec_view(key, a, klinks));
                }
            }
            None => kdiff.push(a),
        }
    }
    let paired = kdiff.len().min(mleft.len());
    for (a, b) in kdiff.iter().zip(&mleft) {
        r.differing_count += 1;
        if r.differing.len() < LIST_MAX {
            r.differing
                .push((rec_view(key, a, klinks), rec_view(key, b, mlinks)));
        }
    }
    for a in &kdiff[paired..] {
        r.missing_count += 1;
        if r.missing.len() < LIST_MAX {
            r.missing.push(rec_view(key, a, klinks));
        }
    }
    for b in &mleft[paired..] {
        r.extra_count += 1;
        if r.extra.len() < LIST_MAX {
            r.extra.push(rec_view(key, b, mlinks));
        }
    }
}

fn compare_objects(r: &mut DiffReport, kernel: &State, mirror: &State) {
    let note = |r: &mut DiffReport, line: String| {
        r.object_differences += 1;
        if r.object_details.len() < LIST_MAX {
            r.object_details.push(line);
        }
    };
    for (i, l) in &kernel.links {
        match mirror.links.get(i) {
            Some(m) if m == l => {}
            Some(m) => note(r, format!("link {i} differs: kernel {l:?} mirror {m:?}")),
            None => note(r, format!("link {i} ({}) missing", l.name)),
        }
    }
    for (i, m) in &mirror.links {
        if !kernel.links.contains_key(i) {
            note(r, format!("link {i} ({}) is in the mirror only", m.name));
        }
    }
    for a in kernel.addrs.difference(&mirror.addrs) {
        if !kernel.tentative.contains(a) {
            note(
                r,
                format!("address {}/{} on link {} missing", a.1, a.2, a.0),
            );
        }
    }
    for a in mirror.addrs.difference(&kernel.addrs) {
        note(
            r,
            format!(
                "address {}/{} on link {} is in the mirror only",
                a.1, a.2, a.0
            ),
        );
    }
    for (id, n) in &kernel.nexthops {
        match mirror.nexthops.get(id) {
            Some(m) if m == n => {}
            Some(m) => note(
                r,
                format!(
                    "nexthop {id} differs: kernel {:?} mirror {:?}",
                    n.kind, m.kind
                ),
            ),
            None => note(r, format!("nexthop {id} missing: {:?}", n.kind)),
        }
    }
    for id in mirror.nexthops.keys() {
        if !kernel.nexthops.contains_key(id) {
            note(r, format!("nexthop {id} is in the mirror only"));
        }
    }
    let dev = |i: i32| match i {
        crate::model::netconf::ALL => "all".to_string(),
        crate::model::netconf::DEFAULT => "default".to_string(),
        i => format!("link {i}"),
    };
    for ((f, i), on) in &kernel.netconf {
        match mirror.netconf.get(&(*f, *i)) {
            Some(m) if m == on => {}
            m => note(
                r,
                format!(
                    "{f} ignore_routes_with_linkdown of {} differs: kernel {on} mirror {m:?}",
                    dev(*i)
                ),
            ),
        }
    }
    for ((f, i), on) in &mirror.netconf {
        if !kernel.netconf.contains_key(&(*f, *i)) {
            note(
                r,
                format!(
                    "{f} ignore_routes_with_linkdown of {} ({on}) is in the mirror only",
                    dev(*i)
                ),
            );
        }
    }
}

/// A canonical route as queries show routes.
fn rec_view(key: &RecKey, r: &RouteRec, links: &BTreeMap<u32, LinkRec>) -> RouteView {
    let metrics = Metrics::new(r.metrics.clone());
    let dev = |i: u32| {
        (i != 0).then(|| {
            links
                .get(&i)
                .map_or_else(|| format!("if{i}"), |l| l.name.clone())
        })
    };
    RouteView {
        family: key.family,
        prefix: key.dst,
        table: key.table,
        metric: key.metric,
        tos: key.tos,
        from: key.src,
        kind: rtn::name(r.kind).map_or_else(|| r.kind.to_string(), str::to_string),
        protocol: rtprot::name(r.protocol).map_or_else(|| r.protocol.to_string(), str::to_string),
        scope: scope::name(r.scope).map_or_else(|| r.scope.to_string(), str::to_string),
        prefsrc: r.prefsrc,
        nhid: r.nh_id,
        mtu: metrics.get(crate::model::rtax::MTU),
        metrics: crate::view::metrics_json(&metrics),
        pref: r.pref.map(|p| p.to_string()),
        flags: {
            let mut f = flag_names(r.flags as u8);
            f.extend(r.other.iter().cloned());
            f
        },
        nexthops: r
            .hops
            .iter()
            .map(|h| HopView {
                gateway: h.gateway,
                dev: dev(h.ifindex),
                ifindex: h.ifindex,
                weight: h.weight,
                flags: flag_names(h.flags),
                encap: h.encap.as_ref().map(crate::lwt::encap_view),
                flow: crate::lwt::FlowView::new(h.realms),
            })
            .collect(),
    }
}

/// Family of a state's routes, for callers that count per family.
pub fn routes_of(s: &State, family: Family) -> usize {
    s.routes
        .iter()
        .filter(|(k, _)| k.family == family)
        .map(|(_, v)| v.len())
        .sum()
}

#[cfg(test)]
mod tests;
