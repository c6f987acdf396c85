//! The correctness oracle: the kernel's routes and nexthop objects, dumped now on a
//! private socket, against the mirror.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::fib::Entry;
use crate::mirror::Mirror;
use crate::model::{Change, RouteKey};
use crate::view::{route_view, RouteView};

/// At most this many routes are listed per kind of difference (all are counted).
const LIST_MAX: usize = 1000;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct DiffReport {
    pub kernel_routes: u64,
    pub mirror_routes: u64,
    /// Counts of each kind of difference.
    pub missing_count: u64,
    pub extra_count: u64,
    pub differing_count: u64,
    pub nexthop_differences: u64,
    /// In the kernel, not in the mirror.
    pub missing: Vec<RouteView>,
    /// In the mirror, not in the kernel.
    pub extra: Vec<RouteView>,
    /// Same key, other attributes: (kernel, mirror).
    pub differing: Vec<(RouteView, RouteView)>,
    pub nexthop_details: Vec<String>,
}

impl DiffReport {
    pub fn is_empty(&self) -> bool {
        self.missing_count == 0
            && self.extra_count == 0
            && self.differing_count == 0
            && self.nexthop_differences == 0
    }
}

/// Compares `dump` (routes and nexthops decoded from a fresh dump) with the mirror.
pub fn compare(m: &Mirror, dump: &[Change]) -> DiffReport {
    let mut r = DiffReport {
        mirror_routes: m.fib.len() as u64,
        ..Default::default()
    };
    let mut matched = 0u64;
    let mut kernel_keys: Option<HashSet<RouteKey>> = None;
    let mut kernel_nh = HashSet::new();
    for c in dump {
        match c {
            Change::NewRoute { route, .. } => {
                r.kernel_routes += 1;
                let k = &route.key;
                let kernel_entry = Entry::new(k.sub, route.attrs.clone(), 0);
                match m.fib.get(k) {
                    None => {
                        r.missing_count += 1;
                        if r.missing.len() < LIST_MAX {
                            r.missing.push(route_view(m, k.table, k.dst, &kernel_entry));
                        }
                    }
                    Some(e) => {
                        matched += 1;
                        if *e.attrs != *route.attrs {
                            r.differing_count += 1;
                            if r.differing.len() < LIST_MAX {
                                r.differing.push((
                                    route_view(m, k.table, k.dst, &kernel_entry),
                                    route_view(m, k.table, k.dst, e),
                                ));
                            }
                        }
                    }
                }
            }
            Change::NewNexthop(nh) => {
                kernel_nh.insert(nh.id);
                match m.nexthops.get(&nh.id) {
                    Some(mine) if mine.value == *nh => {}
                    Some(mine) => {
                        r.nexthop_differences += 1;
                        r.nexthop_details.push(format!(
                            "nexthop {} differs: kernel {:?} mirror {:?}",
                            nh.id, nh.kind, mine.value.kind
                        ));
                    }
                    None => {
                        r.nexthop_differences += 1;
                        r.nexthop_details
                            .push(format!("nexthop {} missing: {:?}", nh.id, nh.kind));
                    }
                }
            }
            _ => {}
        }
    }
    for id in m.nexthops.keys() {
        if !kernel_nh.contains(id) {
            r.nexthop_differences += 1;
            r.nexthop_details
                .push(format!("nexthop {id} is in the mirror only"));
        }
    }
    // Every mirror route the dump matched is accounted for; only look for the extra
    // ones (with a key set) when the counts say some exist.
    if matched < r.mirror_routes {
        let keys = kernel_keys.get_or_insert_with(|| {
            dump.iter()
                .filter_map(|c| match c {
                    Change::NewRoute { route, .. } => Some(route.key),
                    _ => None,
                })
                .collect()
        });
        for ((_, table), t) in m.fib.tables() {
            for (dst, e) in t.iter() {
                let key = RouteKey {
                    table,
                    dst,
                    sub: e.sub(),
                };
                if !keys.contains(&key) {
                    r.extra_count += 1;
                    if r.extra.len() < LIST_MAX {
                        r.extra.push(route_view(m, table, dst, e));
                    }
                }
            }
        }
    }
    r
}
