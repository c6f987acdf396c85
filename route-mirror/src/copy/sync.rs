//! Keeping one target table equal to what its producer wants: the scan/prune authority
//! of BIRD's krt (`krt_got_route` compares, `krt_prune` installs and removes) with FRR's
//! immediate repair of foreign changes. Pure: no I/O, no locks. The runner
//! ([`super::runner`]) feeds it changed prefixes, reads both mirrors for it, writes what
//! it plans and reports every outcome back.
//!
//! Work is per destination prefix. A prefix becomes *dirty* when its source changes,
//! when someone else changes it in the target (a foreign delete or replace: repaired at
//! once), on a full pass (start-up, graceful restart, every scan) and when a refused
//! route's retry is due. [`TargetSync::plan`] compares the routes wanted there with the
//! target's and yields the writes; while they are in flight, and until the target's
//! mirror has seen their echoes, the prefix is *busy* and is not planned again (its
//! mirror state would be stale). Only routes of the copy's protocol are ever replaced or
//! deleted, unless the copy owns the table.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};

use smallvec::SmallVec;

use super::keylist::{self, Step};
use super::want::MissingDevice;
use crate::fib::Entry;
use crate::model::{RouteAttrs, RouteKey, SubKey};
use crate::writer::{KernelError, Outcome, RouteOp};

/// First retry of a refused route; doubles per failed attempt up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Retries in a row, without backoff, of a route refused because a nexthop object of
/// the copy's pool had vanished (the pool writes it again first): enough for a device
/// that flaps while we write, bounded for a kernel that keeps deleting it.
pub const QUICK_RETRIES: u32 = 3;

/// Why a prefix needs a look.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Why {
    pub source: bool,
    /// Someone else changed it in the target.
    pub foreign: bool,
    /// A full pass: start-up (adoption) or a scan.
    pub pass: Option<Pass>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// The first pass after start: routes of ours found in the target are adopted.
    Initial,
    Scan,
}

impl Why {
    fn merge(&mut self, o: Why) {
        self.source |= o.source;
        self.foreign |= o.foreign;
        if o.pass.is_some() && self.pass != Some(Pass::Initial) {
            self.pass = o.pass;
        }
    }
}

/// Who caused a change the target's mirror reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The echo of one of our writes.
    Ours,
    /// Anyone else: another process, the kernel (a flush), a scan correction.
    Foreign,
    /// Not told: an echo where a write of ours awaits one, else foreign. (A foreign
    /// change taken for an echo still gets repaired: the real echo, arriving later,
    /// then looks foreign and the prefix is checked again.)
    Unknown,
}

/// Named outcomes, BIRD style, counted per write that succeeded (or per route found
/// right, for `seen`/`adopted`).
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Verdicts {
    /// Found equal by a scan.
    pub seen: u64,
    /// Found equal at start-up: a route of ours from before a restart, kept.
    pub adopted: u64,
    pub installed: u64,
    pub replaced: u64,
    pub removed: u64,
    /// Missing though installed before (a foreign delete, a flush, found by a scan).
    pub reinstalled: u64,
    /// Writes the kernel refused, and routes that could not be written (no device).
    pub failed: u64,
}

/// Counters of one target table.
#[derive(Debug, Default, Clone, Serialize)]
pub struct SyncCounters {
    pub verdicts: Verdicts,
    /// Refusals by reason (see [`Reason`]).
    pub failed_by_reason: BTreeMap<&'static str, u64>,
    /// Deletes of our routes by someone else, and repairs they caused.
    pub foreign_deletes: u64,
    /// Changes by someone else at prefixes we keep (replaces, adds, deletes), and
    /// writes that repaired them.
    pub foreign_changes: u64,
    pub repaired_deletes: u64,
    pub repaired_replaces: u64,
    /// Retries of refused routes.
    pub retries: u64,
    /// Writes whose outcome was lost; their prefixes were re-checked.
    pub unknown: u64,
    /// Busy prefixes settled by a barrier (their echoes did not all come).
    pub settled_by_barrier: u64,
}

/// Why a route is not in the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The target namespace has no device of that name (checked before writing).
    NoDevice,
    /// ENETUNREACH: the gateway is not reachable in the target.
    GatewayUnreachable,
    /// ENETDOWN: the device is down.
    DeviceDown,
    /// ENODEV.
    NoSuchDevice,
    /// EEXIST: another route (not ours) holds the key.
    Exists,
    /// EINVAL (the kernel's message says which part).
    Invalid,
    /// ENOENT / ESRCH on a write that needed something the target lacks (a table...).
    Missing,
    /// EINVAL "Nexthop id does not exist": the route names a nexthop object the target
    /// lacks (one of the copy's pool is written again and the route retried at once).
    NoObject,
    Other,
}

impl Reason {
    pub fn name(self) -> &'static str {
        match self {
            Reason::NoDevice => "no_device",
            Reason::GatewayUnreachable => "gateway_unreachable",
            Reason::DeviceDown => "device_down",
            Reason::NoSuchDevice => "no_such_device",
            Reason::Exists => "exists",
            Reason::Invalid => "invalid",
            Reason::Missing => "missing",
            Reason::NoObject => "no_object",
            Reason::Other => "other",
        }
    }

    pub fn of_errno(e: i32) -> Reason {
        match e {
            libc::ENETUNREACH => Reason::GatewayUnreachable,
            libc::ENETDOWN => Reason::DeviceDown,
            libc::ENODEV => Reason::NoSuchDevice,
            libc::EEXIST => Reason::Exists,
            libc::EINVAL => Reason::Invalid,
            libc::ENOENT | libc::ESRCH => Reason::Missing,
            _ => Reason::Other,
        }
    }

    /// The reason of a refused route write.
    pub fn of_route_error(e: &KernelError, attrs: &RouteAttrs) -> Reason {
        if attrs.nh_id.is_some() && super::nhpool::names_missing_object(e) {
            return Reason::NoObject;
        }
        Reason::of_errno(e.errno)
    }

    /// Refusals a change of the target's links or addresses may cure (retried at once
    /// on such a change, besides the backoff).
    pub fn link_related(self) -> bool {
        matches!(
            self,
            Reason::NoDevice
                | Reason::GatewayUnreachable
                | Reason::DeviceDown
                | Reason::NoSuchDevice
                | Reason::Invalid
                | Reason::NoObject
        )
    }
}

/// A route the target does not have, and when it is tried again.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub reason: Reason,
    pub errno: Option<i32>,
    /// The kernel's message, or the missing device.
    pub detail: Option<String>,
    pub attempts: u32,
    /// Retries in a row without backoff ([`QUICK_RETRIES`]).
    #[serde(skip)]
    pub quick: u32,
    #[serde(skip)]
    pub next_try: Instant,
    /// What was attempted (a changed want is tried at once, not after the backoff).
    #[serde(skip)]
    pub attrs: Option<RouteAttrs>,
}

/// A route wanted at a prefix: resolved for the target, or why it cannot be.
pub type Wanted = Result<(RouteKey, RouteAttrs), (SubKey, MissingDevice)>;

/// One write the plan asks for.
#[derive(Debug, Clone)]
pub struct Planned {
    pub dst: IpNet,
    pub op: RouteOp,
    pub key: RouteKey,
    /// For a delete: the route deleted (its protocol is named in the request).
    pub attrs: RouteAttrs,
    pub verdict: Verdict,
    /// It undoes someone else's change (a foreign delete or replace).
    pub repair: bool,
    /// A write of an IPv4 key's list ([`keylist`]): its success clears only the
    /// refusal of the same route (the key's others may still be refused).
    pub list: bool,
}

/// What a successful write counts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Installed,
    Replaced,
    Removed,
    Reinstalled,
}

/// A prefix with writes in flight or unconfirmed by the target's mirror.
#[derive(Debug)]
struct Busy {
    /// Writes sent and not yet answered.
    in_flight: u32,
    /// Successful writes whose echo the target's mirror has not shown yet.
    echoes: u32,
    /// An outcome was lost: only a barrier settles this prefix.
    uncertain: bool,
    since: Instant,
    /// When the source change being served happened (for the lag).
    source_ms: Option<u64>,
}

/// The state of one target table.
pub struct TargetSync {
    pub table: u32,
    pub protocol: u8,
    pub owner: bool,
    /// Prefixes to look at, why, and the oldest source change they serve.
    dirty: FxHashMap<IpNet, (Why, Option<u64>)>,
    /// The dirty prefixes in the order they became dirty (oldest first: under a load, a
    /// change waits behind older ones only, not behind a hash order). A prefix taken
    /// while busy leaves it and comes back to the front when it settles; entries no
    /// longer dirty are skipped.
    order: VecDeque<IpNet>,
    /// A full pass still to go through (kept apart: a million prefixes).
    pass: VecDeque<IpNet>,
    pass_kind: Option<Pass>,
    busy: FxHashMap<IpNet, Busy>,
    failures: FxHashMap<FailKey, Failure>,
    pub counters: SyncCounters,
    /// Source-change-to-write-acknowledged delays, in ms.
    pub lag: LagHistogram,
    /// The initial pass is done (every wanted route tried once).
    pub synced: bool,
}

impl TargetSync {
    pub fn new(table: u32, protocol: u8, owner: bool) -> TargetSync {
        TargetSync {
            table,
            protocol,
            owner,
            dirty: FxHashMap::default(),
            order: VecDeque::new(),
            pass: VecDeque::new(),
            pass_kind: None,
            busy: FxHashMap::default(),
            failures: FxHashMap::default(),
            counters: SyncCounters::default(),
            lag: LagHistogram::default(),
            synced: false,
        }
    }

    fn mark(&mut self, dst: IpNet, why: Why, at_ms: Option<u64>) {
        let e = self.dirty.entry(dst).or_insert_with(|| {
            self.order.push_back(dst);
            (Why::default(), None)
        });
        e.0.merge(why);
        e.1 = match (e.1, at_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    /// The source changed at `dst` (at `at_ms`, Unix milliseconds).
    pub fn source_changed(&mut self, dst: IpNet, at_ms: u64) {
        self.mark(
            dst,
            Why {
                source: true,
                ..Why::default()
            },
            Some(at_ms),
        );
    }

    /// The target's mirror changed at `dst`. `ours_deleted`: the change deleted a route
    /// of our protocol. Returns the origin it was taken for.
    pub fn target_changed(&mut self, dst: IpNet, origin: Origin, ours_deleted: bool) -> Origin {
        let origin = match origin {
            Origin::Unknown if self.busy.get(&dst).is_some_and(|b| b.echoes > 0) => Origin::Ours,
            Origin::Unknown => Origin::Foreign,
            o => o,
        };
        match origin {
            Origin::Ours => {
                if let Some(b) = self.busy.get_mut(&dst) {
                    b.echoes = b.echoes.saturating_sub(1);
                }
                self.maybe_unbusy(dst);
            }
            Origin::Foreign | Origin::Unknown => {
                self.counters.foreign_changes += 1;
                if ours_deleted {
                    self.counters.foreign_deletes += 1;
                }
                self.mark(
                    dst,
                    Why {
                        foreign: true,
                        ..Why::default()
                    },
                    None,
                );
            }
        }
        origin
    }

    /// The target's links or addresses changed: refusals they may cure are retried now.
    pub fn links_changed(&mut self, now: Instant) {
        let mut due = Vec::new();
        for ((dst, _, _), f) in self.failures.iter_mut() {
            if f.reason.link_related() {
                f.next_try = now;
                due.push(*dst);
            }
        }
        for d in due {
            self.mark(d, Why::default(), None);
        }
    }

    /// Starts a full pass over `dsts` (every prefix of the source that the copy takes
    /// and every prefix where the target has routes of ours).
    pub fn full_pass(&mut self, dsts: impl IntoIterator<Item = IpNet>, kind: Pass) {
        self.pass.extend(dsts);
        if self.pass_kind != Some(Pass::Initial) {
            self.pass_kind = Some(kind);
        }
    }

    /// Up to `max` prefixes ready to plan now: dirty ones first, oldest first, then the
    /// full pass. Busy prefixes stay dirty until they settle.
    pub fn ready(&mut self, now: Instant, max: usize) -> Vec<(IpNet, Why, Option<u64>)> {
        let mut out = Vec::new();
        // Failures whose retry is due.
        let due: Vec<IpNet> = self
            .failures
            .iter()
            .filter(|(_, f)| f.next_try <= now)
            .map(|((d, _, _), _)| *d)
            .filter(|d| !self.dirty.contains_key(d))
            .collect();
        for d in due {
            self.mark(d, Why::default(), None);
        }
        let mut taken: FxHashSet<IpNet> = FxHashSet::default();
        while out.len() < max {
            let Some(d) = self.order.pop_front() else {
                break;
            };
            // Busy: back in `order` when it settles (see `unbusy`).
            if self.busy.contains_key(&d) {
                continue;
            }
            if let Some((why, at)) = self.dirty.remove(&d) {
                taken.insert(d);
                out.push((d, why, at));
            }
        }
        while out.len() < max {
            let Some(d) = self.pass.pop_front() else {
                break;
            };
            let why = Why {
                pass: self.pass_kind,
                ..Why::default()
            };
            // A prefix is planned once per round (it may be dirty and in the pass too).
            if self.busy.contains_key(&d) || taken.contains(&d) {
                self.mark(d, why, None);
            } else {
                taken.insert(d);
                out.push((d, why, None));
            }
        }
        if self.pass.is_empty() && self.pass_kind.take() == Some(Pass::Initial) {
            self.synced = true;
        }
        out
    }

    /// Whether every wanted route was tried and nothing is pending (refused routes
    /// waiting for a retry do not count: they are shown, not waited for).
    pub fn idle(&self) -> bool {
        self.dirty.is_empty() && self.pass.is_empty() && self.busy.is_empty()
    }

    /// Prefixes waiting to be planned or settled.
    pub fn pending(&self) -> usize {
        self.dirty.len() + self.pass.len() + self.busy.len()
    }

    pub fn failures(&self) -> impl Iterator<Item = (&FailKey, &Failure)> {
        self.failures.iter()
    }

    /// When the next retry is due.
    pub fn next_retry(&self) -> Option<Instant> {
        self.failures.values().map(|f| f.next_try).min()
    }

    fn ours(&self, e: &Entry) -> bool {
        self.owner || e.attrs.protocol == self.protocol
    }

    /// Compares what is `wanted` at `dst` with the target's routes there (`current`, in
    /// kernel order) and returns the writes that make them equal, deletes first.
    pub fn plan(
        &mut self,
        dst: IpNet,
        why: Why,
        source_ms: Option<u64>,
        wanted: &[Wanted],
        current: &[Entry],
        now: Instant,
    ) -> Vec<Planned> {
        if self.busy.contains_key(&dst) {
            // Its writes are unconfirmed: the mirror may not show them yet.
            self.mark(dst, why, source_ms);
            return Vec::new();
        }
        let mut dels = Vec::new();
        let mut writes = Vec::new();
        let repair = why.foreign && !why.source && why.pass.is_none();
        let (owner, protocol) = (self.owner, self.protocol);
        let alien = |e: &Entry| !owner && e.attrs.protocol != protocol;
        if dst.addr().is_ipv4() && !current.iter().any(alien) {
            self.plan_lists(
                dst,
                why,
                repair,
                wanted,
                current,
                now,
                &mut dels,
                &mut writes,
            );
        } else if dst.addr().is_ipv4() {
            // A key holding someone else's route keeps the per-route plan: ours go
            // beside nothing there (the kernel's EEXIST is the answer, counted).
            let alien_at = |sub: SubKey| current.iter().any(|e| alien(e) && e.sub() == sub);
            let (rw, lw): (Vec<Wanted>, Vec<Wanted>) = wanted
                .iter()
                .cloned()
                .partition(|w| alien_at(wanted_sub(w)));
            let (rc, lc): (Vec<Entry>, Vec<Entry>) =
                current.iter().cloned().partition(|e| alien_at(e.sub()));
            self.plan_lists(dst, why, repair, &lw, &lc, now, &mut dels, &mut writes);
            self.plan_routes(dst, why, repair, &rw, &rc, now, &mut dels, &mut writes);
        } else {
            self.plan_routes(
                dst,
                why,
                repair,
                wanted,
                current,
                now,
                &mut dels,
                &mut writes,
            );
        }
        // Failures of routes no longer wanted here are forgotten.
        if self.failures.keys().any(|(d, _, _)| *d == dst) {
            let keep: Vec<(SubKey, u64)> = wanted
                .iter()
                .map(|w| match w {
                    Ok((k, a)) => (k.sub, which(k, a)),
                    Err((s, MissingDevice(dev))) => (*s, missing_which(&dst, dev)),
                })
                .collect();
            self.failures
                .retain(|(d, s, h), _| *d != dst || keep.contains(&(*s, *h)));
        }
        dels.append(&mut writes);
        if !dels.is_empty() {
            self.busy.insert(
                dst,
                Busy {
                    in_flight: dels.len() as u32,
                    echoes: 0,
                    uncertain: false,
                    since: now,
                    source_ms,
                },
            );
        }
        dels
    }

    /// Plans the keys of `dst` route by route (IPv6, and IPv4 keys holding someone
    /// else's route): each wanted route pairs with one of ours ([`pair_ours`]).
    #[allow(clippy::too_many_arguments)]
    fn plan_routes(
        &mut self,
        dst: IpNet,
        why: Why,
        repair: bool,
        wanted: &[Wanted],
        current: &[Entry],
        now: Instant,
        dels: &mut Vec<Planned>,
        writes: &mut Vec<Planned>,
    ) {
        let (pairs, matched) = pair_ours(current, wanted, |e| self.ours(e));
        for (w, pair) in wanted.iter().zip(pairs) {
            let (key, attrs) = match w {
                Ok(ka) => ka,
                Err((sub, MissingDevice(dev))) => {
                    self.refuse(
                        (dst, *sub, missing_which(&dst, dev)),
                        Reason::NoDevice,
                        None,
                        Some(format!("no device {dev:?} in the target")),
                        None,
                        now,
                    );
                    continue;
                }
            };
            let at_key: Vec<usize> = (0..current.len())
                .filter(|&i| current[i].sub() == key.sub)
                .collect();
            let mine = pair;
            let fkey = (dst, key.sub, which(key, attrs));
            if let Some(i) = mine {
                if *current[i].attrs == *attrs {
                    self.failures.remove(&fkey);
                    match why.pass {
                        Some(Pass::Initial) => self.counters.verdicts.adopted += 1,
                        Some(Pass::Scan) => self.counters.verdicts.seen += 1,
                        None => {}
                    }
                    continue;
                }
            }
            // A foreign replace of a route of ours leaves someone else's route at our
            // key: it is repaired (replaced back), FRR style. An alien route that held
            // the key before us (our add was refused: a record says so) is left alone.
            let alien = at_key.iter().any(|&i| !self.ours(&current[i]));
            let took_over = mine.is_none()
                && alien
                && why.foreign
                && !why.source
                && why.pass.is_none()
                && !self.failures.contains_key(&fkey);
            if !self.due(&fkey, attrs, now) {
                continue;
            }
            // Where another route shares the kernel's key (IPv6: dst, source, metric;
            // IPv4 with `ip route append`: the same list), a replace may hit that one
            // instead: delete ours, then add.
            // Another route of ours at the key (IPv6 device routes of one metric on two
            // devices) is contested the same way.
            let contested = current.iter().enumerate().any(|(i, e)| {
                (!self.ours(e) || matched[i])
                    && Some(i) != mine
                    && e.priority() == key.sub.priority
                    && e.tos() == key.sub.tos
                    && e.sub().src == key.sub.src
            });
            let verdict = if repair {
                if mine.is_some() || took_over {
                    self.counters.repaired_replaces += 1;
                    Verdict::Replaced
                } else {
                    self.counters.repaired_deletes += 1;
                    Verdict::Reinstalled
                }
            } else if mine.is_some() {
                Verdict::Replaced
            } else if why.pass == Some(Pass::Scan) {
                Verdict::Reinstalled
            } else {
                Verdict::Installed
            };
            // One write of this route-by-route plan.
            let planned = |op, attrs: &RouteAttrs| Planned {
                list: false,
                dst,
                op,
                key: *key,
                attrs: attrs.clone(),
                verdict,
                repair,
            };
            match mine {
                Some(i) if contested => {
                    dels.push(planned(RouteOp::Delete, &current[i].attrs));
                    writes.push(planned(RouteOp::Add, attrs));
                }
                Some(_) => writes.push(planned(RouteOp::Replace, attrs)),
                None if took_over => writes.push(planned(RouteOp::Replace, attrs)),
                // An alien route at the key: not ours to replace, unless we own the
                // table (then `mine` would have found it). The kernel's EEXIST is the
                // answer, counted.
                None => writes.push(planned(RouteOp::Add, attrs)),
            }
        }
        for (i, e) in current.iter().enumerate() {
            if !matched[i] && self.ours(e) {
                let sub = e.sub();
                dels.push(Planned {
                    list: false,
                    dst,
                    op: RouteOp::Delete,
                    key: RouteKey {
                        table: self.table,
                        dst,
                        sub,
                    },
                    attrs: (*e.attrs).clone(),
                    verdict: Verdict::Removed,
                    repair,
                });
            }
        }
    }

    /// Plans IPv4 keys whose routes are all ours as lists ([`keylist`]): the target's
    /// list of each key becomes the wanted one, entries and order.
    #[allow(clippy::too_many_arguments)]
    fn plan_lists(
        &mut self,
        dst: IpNet,
        why: Why,
        repair: bool,
        wanted: &[Wanted],
        current: &[Entry],
        now: Instant,
        dels: &mut Vec<Planned>,
        writes: &mut Vec<Planned>,
    ) {
        let mut keys: SmallVec<[SubKey; 2]> = SmallVec::new();
        for s in wanted
            .iter()
            .map(wanted_sub)
            .chain(current.iter().map(Entry::sub))
        {
            if !keys.contains(&s) {
                keys.push(s);
            }
        }
        for sub in keys {
            let fkey = (dst, sub, 0);
            let mut want: SmallVec<[&RouteAttrs; 2]> = SmallVec::new();
            let mut missing: SmallVec<[&MissingDevice; 1]> = SmallVec::new();
            for w in wanted {
                match w {
                    Ok((k, a)) if k.sub == sub && !want.contains(&a) => want.push(a),
                    Err((s, dev)) if *s == sub => missing.push(dev),
                    _ => {}
                }
            }
            let cur: SmallVec<[&RouteAttrs; 2]> = current
                .iter()
                .filter(|e| e.sub() == sub)
                .map(|e| &*e.attrs)
                .collect();
            let steps = keylist::steps(&cur, &want);
            let gated = match self.failures.get(&fkey) {
                _ if steps.is_empty() => false,
                None => false,
                Some(f) => {
                    let same = steps.iter().any(|s| match *s {
                        Step::Delete(_) => false,
                        Step::Add(w) | Step::Replace(w) | Step::Prepend(w) | Step::Append(w) => {
                            f.attrs.as_ref() == Some(want[w])
                        }
                    });
                    if f.next_try <= now || !same {
                        self.counters.retries += 1;
                        false
                    } else {
                        true
                    }
                }
            };
            // A device missing before is there now: its refusal is over (a refusal of
            // the write, if any, is recorded anew).
            if missing.is_empty() && self.failures.get(&fkey).is_some_and(|f| f.attrs.is_none()) {
                self.failures.remove(&fkey);
            }
            for MissingDevice(dev) in &missing {
                self.refuse(
                    fkey,
                    Reason::NoDevice,
                    None,
                    Some(format!("no device {dev:?} in the target")),
                    None,
                    now,
                );
            }
            if steps.is_empty() {
                if missing.is_empty() {
                    self.failures.remove(&fkey);
                }
                let n = want.len() as u64;
                match why.pass {
                    Some(Pass::Initial) => self.counters.verdicts.adopted += n,
                    Some(Pass::Scan) => self.counters.verdicts.seen += n,
                    None => {}
                }
                continue;
            }
            if gated {
                continue;
            }
            let key = RouteKey {
                table: self.table,
                dst,
                sub,
            };
            let added = if repair || why.pass == Some(Pass::Scan) {
                Verdict::Reinstalled
            } else {
                Verdict::Installed
            };
            for s in steps {
                let (op, attrs, verdict) = match s {
                    Step::Delete(i) => (RouteOp::Delete, cur[i], Verdict::Removed),
                    Step::Replace(w) => {
                        if repair {
                            self.counters.repaired_replaces += 1;
                        }
                        (RouteOp::Replace, want[w], Verdict::Replaced)
                    }
                    Step::Add(w) | Step::Prepend(w) | Step::Append(w) => {
                        if repair {
                            self.counters.repaired_deletes += 1;
                        }
                        let op = match s {
                            Step::Add(_) => RouteOp::Add,
                            Step::Prepend(_) => RouteOp::Prepend,
                            _ => RouteOp::Append,
                        };
                        (op, want[w], added)
                    }
                };
                let p = Planned {
                    dst,
                    op,
                    key,
                    attrs: attrs.clone(),
                    verdict,
                    repair,
                    list: true,
                };
                if op == RouteOp::Delete {
                    dels.push(p);
                } else {
                    writes.push(p);
                }
            }
        }
    }

    /// Whether a route with a refusal on record should be tried now: its retry is due,
    /// or what is wanted changed since the refused attempt (a missing device came back,
    /// say). Either way the attempt counts as a retry, whatever made the prefix looked
    /// at: a link check, a timer or a scan's full pass, which race one another.
    fn due(&mut self, fkey: &FailKey, attrs: &RouteAttrs, now: Instant) -> bool {
        match self.failures.get(fkey) {
            None => true,
            Some(f) if f.next_try <= now || f.attrs.as_ref() != Some(attrs) => {
                self.counters.retries += 1;
                true
            }
            Some(_) => false,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn refuse(
        &mut self,
        fkey: FailKey,
        reason: Reason,
        errno: Option<i32>,
        detail: Option<String>,
        attrs: Option<RouteAttrs>,
        now: Instant,
    ) {
        self.counters.verdicts.failed += 1;
        *self
            .counters
            .failed_by_reason
            .entry(reason.name())
            .or_default() += 1;
        let f = self.failures.entry(fkey).or_insert(Failure {
            reason,
            errno,
            detail: None,
            attempts: 0,
            quick: 0,
            next_try: now,
            attrs: None,
        });
        if f.reason != reason {
            f.quick = 0;
        }
        f.reason = reason;
        f.errno = errno;
        f.detail = detail;
        f.attrs = attrs;
        f.attempts = f.attempts.saturating_add(1);
        let backoff = BACKOFF_MIN
            .saturating_mul(1u32 << (f.attempts - 1).min(16))
            .min(BACKOFF_MAX);
        f.next_try = now + backoff;
    }

    /// Records the outcome of a planned write (in any order; once per write).
    pub fn outcome(&mut self, p: &Planned, o: &Outcome, now: Instant, now_ms: u64) {
        let mut echo = false;
        match o {
            Outcome::Done => {
                echo = true;
                let fkey = (p.dst, p.key.sub, which(&p.key, &p.attrs));
                let cleared = !p.list
                    || self
                        .failures
                        .get(&fkey)
                        .is_some_and(|f| f.attrs.as_ref() == Some(&p.attrs));
                if cleared {
                    self.failures.remove(&fkey);
                }
                let v = &mut self.counters.verdicts;
                match p.verdict {
                    _ if p.op == RouteOp::Delete && p.verdict != Verdict::Removed => {}
                    Verdict::Installed => v.installed += 1,
                    Verdict::Replaced => v.replaced += 1,
                    Verdict::Removed => v.removed += 1,
                    Verdict::Reinstalled => v.reinstalled += 1,
                }
            }
            // Deleting what is already gone is done.
            Outcome::Failed(KernelError { errno, .. })
                if p.op == RouteOp::Delete && matches!(*errno, libc::ESRCH | libc::ENOENT) => {}
            Outcome::Failed(e) => {
                let fkey = (p.dst, p.key.sub, which(&p.key, &p.attrs));
                let reason = Reason::of_route_error(e, &p.attrs);
                self.refuse(
                    fkey,
                    reason,
                    Some(e.errno),
                    e.msg.clone(),
                    (p.op != RouteOp::Delete).then(|| p.attrs.clone()),
                    now,
                );
                // An object of the copy's pool vanished unseen: the pool writes it
                // again in the next batch (the caller tells it), so the retry is due
                // now, and the prefix is pending work till then (a barrier waits).
                let pooled = p.attrs.nh_id.is_some_and(super::nhpool::in_range);
                if reason == Reason::NoObject && pooled {
                    if let Some(f) = self.failures.get_mut(&fkey) {
                        if f.quick < QUICK_RETRIES {
                            f.quick += 1;
                            f.next_try = now;
                            self.mark(p.dst, Why::default(), None);
                        }
                    }
                }
            }
            Outcome::Unknown => {
                self.counters.unknown += 1;
                if let Some(b) = self.busy.get_mut(&p.dst) {
                    b.uncertain = true;
                }
            }
        }
        if let Some(b) = self.busy.get_mut(&p.dst) {
            b.in_flight = b.in_flight.saturating_sub(1);
            if echo {
                b.echoes += 1;
            }
            if b.in_flight == 0 {
                if let Some(t) = b.source_ms.take() {
                    self.lag.record(now_ms.saturating_sub(t));
                }
            }
        }
        self.maybe_unbusy(p.dst);
    }

    fn maybe_unbusy(&mut self, dst: IpNet) {
        if self
            .busy
            .get(&dst)
            .is_some_and(|b| b.in_flight == 0 && b.echoes == 0 && !b.uncertain)
        {
            self.unbusy(dst);
        }
    }

    /// A prefix settles: if it became dirty meanwhile, it is next (it waited longest).
    fn unbusy(&mut self, dst: IpNet) {
        self.busy.remove(&dst);
        if self.dirty.contains_key(&dst) {
            self.order.push_front(dst);
        }
    }

    /// Busy prefixes answered but unconfirmed for longer than `after`: the caller asks
    /// the target's core for a barrier, drains the target's feed, then calls
    /// [`TargetSync::settled`] with them.
    pub fn unsettled(&self, now: Instant, after: Duration) -> Vec<IpNet> {
        self.busy
            .iter()
            .filter(|(_, b)| b.in_flight == 0 && now.duration_since(b.since) >= after)
            .map(|(d, _)| *d)
            .collect()
    }

    /// The target's mirror has seen everything written at these prefixes: check them
    /// again against it.
    pub fn settled(&mut self, dsts: &[IpNet]) {
        for d in dsts {
            if self.busy.get(d).is_some_and(|b| b.in_flight == 0) {
                self.unbusy(*d);
                self.counters.settled_by_barrier += 1;
                self.mark(*d, Why::default(), None);
            }
        }
    }

    /// Forgets everything in flight (the target's mirror is resynced or the writer was
    /// replaced): the caller starts a full pass.
    pub fn reset_busy(&mut self) {
        let busy: Vec<IpNet> = self.busy.keys().copied().collect();
        for d in busy {
            self.unbusy(d);
        }
    }
}

/// Delays in milliseconds, in buckets fine enough for p50/p99 at every scale: 1 ms up to
/// 100 ms, 10 ms up to 1 s, 100 ms up to 10 s, then 1 s up to 2 min (beyond: one open
/// bucket, reported as the max).
#[derive(Debug, Clone)]
pub struct LagHistogram {
    buckets: Vec<u64>,
    pub count: u64,
    pub max_ms: u64,
}

/// Bucket bounds: (from ms, bucket width ms, buckets).
const LAG_BUCKETS: [(u64, u64, usize); 4] = [
    (0, 1, 100),
    (100, 10, 90),
    (1000, 100, 90),
    (10_000, 1000, 110),
];

impl Default for LagHistogram {
    fn default() -> Self {
        LagHistogram {
            buckets: vec![0; LAG_BUCKETS.iter().map(|b| b.2).sum::<usize>() + 1],
            count: 0,
            max_ms: 0,
        }
    }
}

impl LagHistogram {
    fn bucket(ms: u64) -> usize {
        let mut base = 0;
        for (from, width, n) in LAG_BUCKETS {
            if ms < from + width * n as u64 {
                return base + ((ms - from) / width) as usize;
            }
            base += n;
        }
        base
    }

    /// The upper bound of bucket `i`.
    fn upper(i: usize) -> u64 {
        let mut base = 0;
        for (from, width, n) in LAG_BUCKETS {
            if i < base + n {
                return from + (i - base + 1) as u64 * width;
            }
            base += n;
        }
        u64::MAX
    }

    pub fn record(&mut self, ms: u64) {
        self.buckets[Self::bucket(ms)] += 1;
        self.count += 1;
        self.max_ms = self.max_ms.max(ms);
    }

    /// The `q` quantile (0..=1), as the upper bound of its bucket (capped at the max).
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let want = ((self.count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= want {
                return Some(Self::upper(i).min(self.max_ms.max(1)));
            }
        }
        Some(self.max_ms)
    }
}

/// The key of a wanted route.
fn wanted_sub(w: &Wanted) -> SubKey {
    match w {
        Ok((k, _)) => k.sub,
        Err((s, _)) => *s,
    }
}

/// A refusal on record: prefix, key and which of the key's routes ([`which`]).
pub type FailKey = (IpNet, SubKey, u64);

/// Tells apart the routes of one key that the kernel keeps side by side (IPv6 device
/// and nexthop-object routes, by device or object); 0 for the others.
fn which(key: &RouteKey, a: &RouteAttrs) -> u64 {
    if key.family() != crate::model::Family::V6 {
        return 0;
    }
    match (a.nh_id, a.nexthops.as_slice()) {
        (Some(id), _) => 1 << 32 | u64::from(id),
        (None, [h]) if h.gateway.is_none() => u64::from(h.ifindex),
        _ => 0,
    }
}

/// [`which`] for a route refused for a missing device: 0 for IPv4 (as [`which`], so
/// the retry finds the refusal), else by the device's name.
fn missing_which(dst: &IpNet, dev: &str) -> u64 {
    if dst.addr().is_ipv4() {
        return 0;
    }
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    dev.hash(&mut h);
    h.finish() | 1 << 40
}

/// Which of our routes in `current` stands for each wanted route. A key holds a list
/// (IPv6 device routes of one metric on several devices, `ip route append`): identical
/// routes pair first; then a wanted route takes a free one of ours at its key to replace,
/// except an IPv6 route the kernel keeps apart by its hop (a device or object route):
/// that one is added beside, and the free one removed.
pub(crate) fn pair_ours(
    current: &[Entry],
    wanted: &[Wanted],
    ours: impl Fn(&Entry) -> bool,
) -> (Vec<Option<usize>>, Vec<bool>) {
    let mut matched = vec![false; current.len()];
    let mut pairs = vec![None; wanted.len()];
    let free = |matched: &[bool], key: &RouteKey| {
        (0..current.len())
            .filter(|&i| !matched[i] && current[i].sub() == key.sub && ours(&current[i]))
            .collect::<Vec<_>>()
    };
    for (w, pair) in wanted.iter().zip(pairs.iter_mut()) {
        if let Ok((key, attrs)) = w {
            if let Some(i) = free(&matched, key)
                .into_iter()
                .find(|&i| *current[i].attrs == *attrs)
            {
                matched[i] = true;
                *pair = Some(i);
            }
        }
    }
    for (w, pair) in wanted.iter().zip(pairs.iter_mut()) {
        if let (Ok((key, attrs)), None) = (w, &pair) {
            let apart = key.family() == crate::model::Family::V6
                && (attrs.nh_id.is_some()
                    || matches!(attrs.nexthops.as_slice(), [h] if h.gateway.is_none()));
            if apart {
                continue;
            }
            if let Some(&i) = free(&matched, key).first() {
                matched[i] = true;
                *pair = Some(i);
            }
        }
    }
    (pairs, matched)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::model::{rtn, NextHop};

    const PROTO: u8 = 240;

    fn key(dst: &str, metric: u32) -> RouteKey {
        RouteKey {
            table: 200,
            dst: dst.parse().unwrap(),
            sub: SubKey::metric(metric),
        }
    }

    fn attrs(proto: u8, ifindex: u32) -> RouteAttrs {
        RouteAttrs {
            protocol: proto,
            kind: rtn::UNICAST,
            nexthops: vec![NextHop::new(Some("198.18.1.2".parse().unwrap()), ifindex)].into(),
            ..Default::default()
        }
    }

    fn entry(metric: u32, a: RouteAttrs) -> Entry {
        Entry::new(SubKey::metric(metric), Arc::new(a), 0)
    }

    fn src_change() -> Why {
        Why {
            source: true,
            ..Why::default()
        }
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ops(p: &[Planned]) -> Vec<(RouteOp, u32, Verdict)> {
        p.iter()
            .map(|p| (p.op, p.key.sub.priority, p.verdict))
            .collect()
    }

    #[test]
    fn install_replace_remove_and_leave_aliens_alone() {
        let mut s = TargetSync::new(200, PROTO, false);
        let now = Instant::now();
        let d = net("10.0.0.0/24");
        let wanted = [
            Ok((key("10.0.0.0/24", 0), attrs(PROTO, 3))),
            Ok((key("10.0.0.0/24", 10), attrs(PROTO, 3))),
            Ok((key("10.0.0.0/24", 20), attrs(PROTO, 3))),
        ];
        let current = [
            entry(10, attrs(PROTO, 5)), // ours, differs: replace
            entry(20, attrs(4, 3)),     // alien at a wanted key: add (the kernel says EEXIST)
            entry(30, attrs(PROTO, 3)), // ours, not wanted: remove
            entry(40, attrs(4, 3)),     // alien, not wanted: untouched
        ];
        let p = s.plan(d, src_change(), None, &wanted, &current, now);
        assert_eq!(
            ops(&p),
            vec![
                (RouteOp::Delete, 30, Verdict::Removed),
                (RouteOp::Add, 0, Verdict::Installed),
                (RouteOp::Replace, 10, Verdict::Replaced),
                (RouteOp::Add, 20, Verdict::Installed),
            ]
        );
        // The prefix is busy until every write is answered and echoed.
        s.source_changed(d, 0);
        assert!(s.ready(now, 10).is_empty());
        let exists = Outcome::Failed(KernelError {
            errno: libc::EEXIST,
            msg: None,
        });
        for (pl, o) in p
            .iter()
            .zip([Outcome::Done, Outcome::Done, Outcome::Done, exists])
        {
            s.outcome(pl, &o, now, 0);
        }
        assert_eq!(s.counters.verdicts.removed, 1);
        assert_eq!(s.counters.verdicts.installed, 1);
        assert_eq!(s.counters.failed_by_reason["exists"], 1);
        for _ in 0..3 {
            assert!(s.ready(now, 10).is_empty(), "busy until the echoes come");
            s.target_changed(d, Origin::Ours, false);
        }
        assert_eq!(s.ready(now, 10).len(), 1);
        // The owner replaces and removes aliens too.
        let mut o = TargetSync::new(200, PROTO, true);
        let p = o.plan(d, src_change(), None, &wanted, &current, now);
        assert_eq!(
            ops(&p),
            vec![
                (RouteOp::Delete, 30, Verdict::Removed),
                (RouteOp::Delete, 40, Verdict::Removed),
                (RouteOp::Add, 0, Verdict::Installed),
                (RouteOp::Replace, 10, Verdict::Replaced),
                (RouteOp::Replace, 20, Verdict::Replaced),
            ]
        );
    }

    #[test]
    fn equal_routes_are_adopted_at_start_and_seen_by_scans() {
        let mut s = TargetSync::new(200, PROTO, false);
        let now = Instant::now();
        let d = net("10.0.0.0/24");
        let wanted = [Ok((key("10.0.0.0/24", 0), attrs(PROTO, 3)))];
        let current = [entry(0, attrs(PROTO, 3))];
        s.full_pass([d], Pass::Initial);
        let r = s.ready(now, 10);
        assert!(s.synced);
        let p = s.plan(d, r[0].1, None, &wanted, &current, now);
        assert!(p.is_empty());
        assert_eq!(s.counters.verdicts.adopted, 1);
        s.full_pass([d], Pass::Scan);
        let r = s.ready(now, 10);
        assert!(s.plan(d, r[0].1, None, &wanted, &current, now).is_empty());
        assert_eq!(s.counters.verdicts.seen, 1);
        // A scan that finds it missing reinstalls it.
        s.full_pass([d], Pass::Scan);
        let r = s.ready(now, 10);
        let p = s.plan(d, r[0].1, None, &wanted, &[], now);
        assert_eq!(ops(&p), vec![(RouteOp::Add, 0, Verdict::Reinstalled)]);
    }

    #[test]
    fn foreign_deletes_and_replaces_are_repaired_and_counted() {
        let mut s = TargetSync::new(200, PROTO, false);
        let now = Instant::now();
        let d = net("10.0.0.0/24");
        let wanted = [Ok((key("10.0.0.0/24", 0), attrs(PROTO, 3)))];
        s.target_changed(d, Origin::Foreign, true);
        let r = s.ready(now, 10);
        let p = s.plan(d, r[0].1, None, &wanted, &[], now);
        assert_eq!(ops(&p), vec![(RouteOp::Add, 0, Verdict::Reinstalled)]);
        s.outcome(&p[0], &Outcome::Done, now, 0);
        s.target_changed(d, Origin::Ours, false);
        // Replaced by someone with other next hops (keeping or changing the protocol).
        s.target_changed(d, Origin::Foreign, false);
        let r = s.ready(now, 10);
        let p = s.plan(d, r[0].1, None, &wanted, &[entry(0, attrs(PROTO, 9))], now);
        assert_eq!(ops(&p), vec![(RouteOp::Replace, 0, Verdict::Replaced)]);
        let c = &s.counters;
        assert_eq!(
            (
                c.foreign_deletes,
                c.foreign_changes,
                c.repaired_deletes,
                c.repaired_replaces
            ),
            (1, 2, 1, 1)
        );
        assert_eq!(c.verdicts.reinstalled, 1);
    }

    #[test]
    fn an_alien_sharing_the_kernel_key_is_not_replaced_through() {
        let mut s = TargetSync::new(200, PROTO, false);
        let now = Instant::now();
        let d = net("2001:db8::/64");
        let k = key("2001:db8::/64", 1024);
        let alien_sub = SubKey::metric(1024);
        let mine = Entry::new(k.sub, Arc::new(attrs(PROTO, 4)), 0);
        let alien = Entry::new(alien_sub, Arc::new(attrs(4, 5)), 0);
        let p = s.plan(
            d,
            src_change(),
            None,
            &[Ok((k, attrs(PROTO, 3)))],
            &[alien, mine],
            now,
        );
        assert_eq!(
            ops(&p),
            vec![
                (RouteOp::Delete, 1024, Verdict::Replaced),
                (RouteOp::Add, 1024, Verdict::Replaced)
            ]
        );
        assert_eq!(p[0].attrs.protocol, PROTO, "the delete names our protocol");
    }

    #[test]
    fn refused_routes_back_off_and_retry_on_link_changes() {
        let mut s = TargetSync::new(200, PROTO, false);
        let t0 = Instant::now();
        let d = net("10.0.0.0/24");
        let wanted = [Ok((key("10.0.0.0/24", 0), attrs(PROTO, 3)))];
        let unreach = Outcome::Failed(KernelError {
            errno: libc::ENETUNREACH,
            msg: Some("Nexthop has invalid gateway".into()),
        });
        let p = s.plan(d, src_change(), None, &wanted, &[], t0);
        s.outcome(&p[0], &unreach, t0, 0);
        assert!(s.idle(), "a refused route is not pending work");
        assert_eq!(s.failures().count(), 1);
        assert_eq!(s.next_retry(), Some(t0 + BACKOFF_MIN));
        assert!(s.ready(t0, 10).is_empty());
        let r = s.ready(t0 + BACKOFF_MIN, 10);
        assert_eq!(r.len(), 1);
        let p = s.plan(d, r[0].1, None, &wanted, &[], t0 + BACKOFF_MIN);
        assert_eq!(p.len(), 1);
        s.outcome(&p[0], &unreach, t0 + BACKOFF_MIN, 0);
        assert_eq!(s.next_retry(), Some(t0 + BACKOFF_MIN * 3), "doubled");
        assert_eq!(s.counters.retries, 1);
        // A missing device is refused without a write; a link change retries at once.
        let d2 = net("10.1.0.0/16");
        let p = s.plan(
            d2,
            src_change(),
            None,
            &[Err((SubKey::metric(0), MissingDevice(Arc::from("veth9"))))],
            &[],
            t0,
        );
        assert!(p.is_empty());
        assert_eq!(s.counters.failed_by_reason["no_device"], 1);
        s.links_changed(t0);
        let ready: Vec<IpNet> = s.ready(t0, 10).into_iter().map(|r| r.0).collect();
        assert!(ready.contains(&d) && ready.contains(&d2));
        // Success clears the record; a route no longer wanted drops its record.
        let p = s.plan(d, Why::default(), None, &wanted, &[], t0);
        assert_eq!(s.counters.retries, 2, "tried again after the link change");
        s.outcome(&p[0], &Outcome::Done, t0, 0);
        s.plan(d2, src_change(), None, &[], &[], t0);
        assert_eq!(s.failures().count(), 0);
    }

    #[test]
    fn a_scan_pass_that_finds_the_missing_device_back_counts_a_retry() {
        // The target's scan after the device came back can plan the prefix before the
        // link check marks it: the attempt is a retry all the same.
        let mut s = TargetSync::new(200, PROTO, false);
        let t0 = Instant::now();
        let d = net("10.1.0.0/16");
        let k = key("10.1.0.0/16", 0);
        let p = s.plan(
            d,
            src_change(),
            None,
            &[Err((k.sub, MissingDevice(Arc::from("veth9"))))],
            &[],
            t0,
        );
        assert!(p.is_empty());
        let pass = Why {
            pass: Some(Pass::Scan),
            ..Why::default()
        };
        let wanted = [Ok((k, attrs(PROTO, 9)))];
        let p = s.plan(d, pass, None, &wanted, &[], t0);
        assert_eq!(p.len(), 1, "tried before the backoff: the device is back");
        assert_eq!(s.counters.retries, 1);
        s.outcome(&p[0], &Outcome::Done, t0, 0);
        assert_eq!(s.failures().count(), 0);
    }

    #[test]
    fn lost_outcomes_settle_only_by_barrier() {
        let mut s = TargetSync::new(200, PROTO, false);
        let t0 = Instant::now();
        let d = net("10.0.0.0/24");
        let p = s.plan(
            d,
            src_change(),
            Some(5),
            &[Ok((key("10.0.0.0/24", 0), attrs(PROTO, 3)))],
            &[],
            t0,
        );
        s.outcome(&p[0], &Outcome::Unknown, t0, 25);
        s.target_changed(d, Origin::Ours, false);
        assert!(!s.idle());
        assert!(s.unsettled(t0, Duration::from_secs(1)).is_empty());
        let late = t0 + Duration::from_secs(1);
        assert_eq!(s.unsettled(late, Duration::from_secs(1)), vec![d]);
        s.settled(&[d]);
        assert_eq!(s.ready(late, 10).len(), 1, "checked again");
        assert_eq!(s.lag.quantile(0.99), Some(20));
    }

    #[test]
    fn a_prefix_dirty_and_in_a_pass_is_planned_once() {
        let mut s = TargetSync::new(200, PROTO, false);
        let now = Instant::now();
        let d = net("10.0.0.0/24");
        s.source_changed(d, 0);
        s.full_pass([d, net("10.1.0.0/24")], Pass::Scan);
        let r = s.ready(now, 10);
        assert_eq!(r.iter().filter(|x| x.0 == d).count(), 1, "{r:?}");
        let wanted = [Ok((key("10.0.0.0/24", 0), attrs(PROTO, 3)))];
        assert_eq!(s.plan(d, r[0].1, None, &wanted, &[], now).len(), 1);
        assert!(
            s.plan(d, r[0].1, None, &wanted, &[], now).is_empty(),
            "busy: not again"
        );
    }

    #[test]
    fn lag_quantiles() {
        let mut h = LagHistogram::default();
        for ms in [1, 2, 3, 50, 150, 2500] {
            h.record(ms);
        }
        assert_eq!(h.quantile(0.5), Some(4));
        assert_eq!(h.quantile(0.99), Some(2500));
        assert_eq!(h.max_ms, 2500);
        assert_eq!(LagHistogram::default().quantile(0.5), None);
        // Above a second: 100 ms buckets up to 10 s, 1 s buckets up to 2 min.
        let mut h = LagHistogram::default();
        for ms in [1234, 1250, 1299, 1300, 17_400, 500_000] {
            h.record(ms);
        }
        assert_eq!(h.quantile(0.5), Some(1300));
        assert_eq!(h.quantile(0.8), Some(18_000));
        assert_eq!(h.quantile(1.0), Some(500_000));
        for ms in [
            0, 99, 100, 999, 1000, 9999, 10_000, 119_999, 120_000, 10_000_000,
        ] {
            let b = LagHistogram::bucket(ms);
            assert!(b < LagHistogram::default().buckets.len(), "{ms}");
            assert!(LagHistogram::upper(b) > ms, "{ms}");
            assert!(b == 0 || LagHistogram::upper(b - 1) <= ms, "{ms}");
        }
        // Beyond 2 min: the max, not a bucket's bound.
        let mut h = LagHistogram::default();
        h.record(187_725);
        assert_eq!(h.quantile(0.99), Some(187_725));
    }

    #[test]
    fn dirty_prefixes_are_taken_oldest_first() {
        let mut s = TargetSync::new(200, PROTO, false);
        let now = Instant::now();
        let nets: Vec<IpNet> = (0..50).map(|i| net(&format!("10.{i}.0.0/16"))).collect();
        for (i, d) in nets.iter().enumerate() {
            s.source_changed(*d, i as u64);
        }
        let got: Vec<IpNet> = s.ready(now, 20).into_iter().map(|r| r.0).collect();
        assert_eq!(got, nets[..20]);
        // A prefix changed again while its write is unconfirmed waits, then goes first.
        let wanted = [Ok((key("10.0.0.0/16", 0), attrs(PROTO, 3)))];
        let p = s.plan(nets[0], src_change(), Some(0), &wanted, &[], now);
        s.outcome(&p[0], &Outcome::Done, now, 1);
        s.source_changed(nets[0], 100);
        let got: Vec<IpNet> = s.ready(now, 10).into_iter().map(|r| r.0).collect();
        assert_eq!(got, nets[20..30], "busy: not taken");
        s.target_changed(nets[0], Origin::Unknown, false);
        let got: Vec<IpNet> = s.ready(now, 10).into_iter().map(|r| r.0).collect();
        assert_eq!(got[0], nets[0], "settled: first");
        assert_eq!(got[1..], nets[30..39]);
        let rest: Vec<IpNet> = s.ready(now, 100).into_iter().map(|r| r.0).collect();
        assert_eq!(rest, nets[39..]);
        assert!(s.idle());
    }
}
