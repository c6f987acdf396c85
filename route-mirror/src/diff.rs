//! The correctness oracle: the kernel's routes and nexthop objects, dumped now on a
//! private socket, against the mirror.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::fib::Entry;
use crate::intern::Interner;
use crate::mirror::Mirror;
use crate::model::{Change, Family, RouteKey};
use crate::netlink::{self, msg::DecodeCounters, msg::DumpKind, socket::NlSocket};
use crate::shared::Shared;
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
            && self.nexthop_differences == 0
            && self.rule_differences == 0
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
    for f in crate::model::Family::ALL {
        let kernel: Vec<crate::rule::Rule> = dump
            .iter()
            .filter_map(|c| match c {
                Change::NewRule(r) if r.family == f => Some(r.clone()),
                _ => None,
            })
            .collect();
        let mine = m.rules.list(f).to_vec();
        r.kernel_rules += kernel.len() as u64;
        r.mirror_rules += mine.len() as u64;
        let d = crate::rule::diff::compare(&kernel, &mine);
        r.rule_differences += d.len() as u64;
        r.rule_details.extend(d);
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

/// How many times `diff` dumps and compares while changes race with it.
const DIFF_TRIES: usize = 5;

/// `route-mirror diff`: dump, barrier, compare. A change the kernel makes after the
/// dump but before the comparison reaches the mirror (through the barrier) and not the
/// dump: a false difference (seen as a `local fe80::` route whose DAD finished in that
/// window). The dump's socket stays subscribed until the comparison is done; a
/// difference found while it heard of a change is checked again.
pub async fn against_kernel(shared: &Arc<Shared>) -> Result<Option<DiffReport>> {
    let mut report = None;
    for _ in 0..DIFF_TRIES {
        let ns = shared.netns.clone();
        let (dump, watch) =
            tokio::task::spawn_blocking(move || crate::netns::run_in(ns, dump_now)).await??;
        shared.barrier().await?;
        let sh = shared.clone();
        let (r, changed) = tokio::task::spawn_blocking(move || {
            let r = compare(&sh.mirror.read().expect("mirror lock"), &dump);
            (r, heard_changes(&watch))
        })
        .await
        .context("diff task failed")?;
        let settled = r.is_empty() || !changed;
        report = Some(r);
        if settled {
            break;
        }
    }
    Ok(report)
}

// ---------------------------------------------------------------------------
// the kernel side: dumping on a private socket

/// Dumps the kernel until a dump ran with no change notified meanwhile (at most 10
/// tries, then until two consecutive dumps agree): an IPv6 route dump that overlaps a
/// change can skip an entry that existed throughout (the fib6 walker resumes by
/// count, without NLM_F_DUMP_INTR). `diff` then reported a route the mirror rightly
/// holds as "mirror only" (a link-local `local fe80::` route whose DAD finished during
/// the dump: the flaky j_forced_overrun_resyncs).
///
/// Returns the dump and its socket, still subscribed: [`heard_changes`] tells whether
/// the kernel changed anything since.
fn dump_now() -> Result<(Vec<Change>, NlSocket)> {
    let mut prev: Option<(Vec<Change>, NlSocket)> = None;
    for attempt in 0..10 {
        let (dump, quiet, sock) = match dump_once() {
            Ok(r) => r,
            // The subscribed socket overran: changes were racing; try again.
            Err(e) if attempt < 9 && is_enobufs(&e) => {
                std::thread::sleep(Duration::from_millis(20 * (attempt + 1)));
                continue;
            }
            Err(e) => return Err(e),
        };
        if quiet || prev.as_ref().is_some_and(|(p, _)| *p == dump) {
            return Ok((dump, sock));
        }
        prev = Some((dump, sock));
        std::thread::sleep(Duration::from_millis(20 * (attempt + 1)));
    }
    prev.ok_or_else(|| anyhow::anyhow!("the kernel refused every dump"))
}

/// Whether notifications reached `sock` since its dump ended (drains them).
fn heard_changes(sock: &NlSocket) -> bool {
    let mut buf = Vec::with_capacity(netlink::socket::RECV_BUF);
    let mut heard = false;
    loop {
        match sock.recv(&mut buf) {
            Ok(0) => return heard,
            Ok(_) => heard = true,
            // An overrun means changes too.
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => heard = true,
            Err(_) => return heard,
        }
    }
}

fn is_enobufs(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(c.downcast_ref::<netlink::DumpError>(), Some(netlink::DumpError::Io(io)) if io.raw_os_error() == Some(libc::ENOBUFS))
            || c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.raw_os_error() == Some(libc::ENOBUFS))
    })
}

/// A fresh dump of routes and nexthop objects on a private socket subscribed to the
/// route groups; `true` if no notification arrived while it ran; the socket.
fn dump_once() -> Result<(Vec<Change>, bool, NlSocket)> {
    let mut sock = NlSocket::open().context("opening a netlink socket for diff")?;
    sock.subscribe(&route_mirror_common::groups::ALL)
        .context("subscribing the diff socket")?;
    let _ = sock.set_rcvbuf(32 << 20);
    let mut counters = DecodeCounters::default();
    let mut interner = Interner::default();
    let mut out = Vec::new();
    let mut others = 0;
    match netlink::dump_blocking_counting(
        &mut sock,
        DumpKind::Nexthops,
        &mut counters,
        &mut interner,
        &mut out,
    ) {
        Ok(n) => others += n,
        // Kernels without nexthop objects refuse the dump; routes still compare.
        Err(netlink::DumpError::Refused { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    for f in Family::ALL {
        others += netlink::dump_blocking_counting(
            &mut sock,
            DumpKind::Rules(f),
            &mut counters,
            &mut interner,
            &mut out,
        )?;
    }
    for f in Family::ALL {
        others += netlink::dump_blocking_counting(
            &mut sock,
            DumpKind::Routes(f, None),
            &mut counters,
            &mut interner,
            &mut out,
        )?;
    }
    // Notifications still queued arrived after the last DONE; they may have raced too.
    let late = heard_changes(&sock);
    Ok((out, others == 0 && !late, sock))
}
