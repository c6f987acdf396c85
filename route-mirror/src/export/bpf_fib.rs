//! The pinned BPF FIB (`--bpf-fib TABLES`): LPM-trie maps `fib4`/`fib6` holding the best
//! route of every prefix of the chosen tables, plus `nhgroups` for ECMP next-hop sets,
//! pinned next to the source's pins so an XDP/TC dataplane and `bpftool map dump pinned`
//! see the FIB the mirror holds.
//!
//! The maps are declared in the eBPF object (`route-mirror-ebpf`), so this needs the
//! object but not the socket filter: it works with either event source. Layouts are in
//! [`route_mirror_common::fib`].
//!
//! An export on the change funnel ([`crate::export`]): after the initial sync
//! ([`BpfFib::start`], one bulk fill rather than a million incremental updates racing the
//! initial dump) every applied change of the chosen tables marks its prefix dirty
//! ([`BpfFib::changes`]); [`BpfFib::flush`] recomputes the best route of each dirty
//! prefix and writes or deletes its entry. The core flushes after each batch and before
//! answering barriers, so a `diff`/`show` that returns also means the maps are current.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::RwLock;
use std::time::Instant;

use aya::maps::lpm_trie::Key;
use aya::maps::{LpmTrie, MapData};
use ipnet::IpNet;
use route_mirror_common::fib::{self as layout, flags, gw, Group, Hop, Key4, Key6, Value};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::change::Batch;
use crate::ebpf::{self, LoadError, OBJECT};
use crate::fib::Usable;
use crate::mirror::Mirror;
use crate::model::{rtnh, Family};

type Fib4 = LpmTrie<MapData, [u8; Key4::SIZE], [u8; Value::SIZE]>;
type Fib6 = LpmTrie<MapData, [u8; Key6::SIZE], [u8; Value::SIZE]>;
type Groups = aya::maps::HashMap<MapData, u32, [u8; Group::SIZE]>;

/// Counters of the BPF FIB, shown by `stats`.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct BpfFibStats {
    pub tables: Vec<u32>,
    pub pinned: Option<String>,
    pub prefixes_v4: u64,
    pub prefixes_v6: u64,
    pub groups: u64,
    /// Map writes (insert or replace) and deletes since start.
    pub updates: u64,
    pub deletes: u64,
    /// Failed map operations (logged): the maps may differ from the mirror.
    pub errors: u64,
    /// Sync passes that had work, and the longest one.
    pub syncs: u64,
    pub max_sync_ms: f64,
    /// Kernel memory charged to the three maps (`memlock` of /proc/self/fdinfo).
    pub memlock_bytes: u64,
}

/// What a prefix's best route becomes in the maps.
struct Wanted {
    value: Value,
    /// The ECMP hop set (MULTIPATH routes only).
    group: Option<Vec<Hop>>,
}

pub struct BpfFib {
    _bpf: aya::Ebpf,
    fib4: Fib4,
    fib6: Fib6,
    groups: Groups,
    fds: [RawFd; 3],
    tables: Vec<u32>,
    pin_dir: Option<PathBuf>,
    /// Which group each multipath prefix uses (to release it when the prefix changes).
    prefix_group: HashMap<(u32, IpNet), u32>,
    /// Hop set → (group id, prefixes using it): one group per distinct hop set.
    group_ids: HashMap<Vec<Hop>, (u32, u64)>,
    group_hops: HashMap<u32, Vec<Hop>>,
    free_ids: Vec<u32>,
    next_id: u32,
    present: HashSet<(u32, IpNet)>,
    /// Prefixes whose best route may have changed since the last flush.
    dirty: HashSet<(u32, IpNet)>,
    /// The initial fill was requested: changes are tracked from then on.
    started: bool,
    stats: BpfFibStats,
    errors_logged: u64,
    /// memlock as last read, and when: `stats` runs every loop turn, fdinfo is read at
    /// most once a second.
    memlock: std::cell::Cell<(Option<Instant>, u64)>,
}

const PINS: [(&str, &str); 3] = [("FIB4", "fib4"), ("FIB6", "fib6"), ("NHGROUPS", "nhgroups")];

impl BpfFib {
    /// Creates the maps (from the embedded object) and pins them under
    /// `PIN_ROOT/<pin_name>/{fib4,fib6,nhgroups}`, replacing stale pins of an earlier run.
    /// Unlike the source's pins these are the product, so a pin failure is an error.
    pub fn create(tables: Vec<u32>, pin_name: &str) -> Result<BpfFib, LoadError> {
        let obj = OBJECT.ok_or(LoadError::NotBuilt)?;
        ebpf::abi::check(obj)?;
        if std::env::var_os(ebpf::FAIL_KNOB).is_some_and(|v| !v.is_empty()) {
            return Err(LoadError::TestKnob);
        }
        // Only the maps are created here; the program is never loaded by this instance.
        let mut bpf = aya::EbpfLoader::new()
            .load(obj)
            .map_err(|e| ebpf::classify("creating the BPF FIB maps", e))?;
        let dir = ebpf::pin_dir(pin_name).map_err(|e| LoadError::Other(format!("{e:#}")))?;
        for (map, file) in PINS {
            let p = dir.join(file);
            if p.exists() {
                std::fs::remove_file(&p).map_err(|e| {
                    LoadError::Other(format!("removing stale pin {}: {e}", p.display()))
                })?;
            }
            bpf.map(map)
                .ok_or_else(|| LoadError::Other(format!("map {map} missing from the object")))?
                .pin(&p)
                .map_err(|e| ebpf::classify(&format!("pinning {}", p.display()), e))?;
        }
        let mut take = |name: &str| {
            bpf.take_map(name)
                .ok_or_else(|| LoadError::Other(format!("map {name} missing from the object")))
        };
        let (m4, m6, mg) = (take("FIB4")?, take("FIB6")?, take("NHGROUPS")?);
        let raw = |m: &aya::maps::Map| match m {
            aya::maps::Map::LpmTrie(d) | aya::maps::Map::HashMap(d) => d.fd().as_fd().as_raw_fd(),
            _ => -1,
        };
        let fds = [raw(&m4), raw(&m6), raw(&mg)];
        let fib4 = Fib4::try_from(m4).map_err(|e| ebpf::classify("map FIB4", e))?;
        let fib6 = Fib6::try_from(m6).map_err(|e| ebpf::classify("map FIB6", e))?;
        let groups = Groups::try_from(mg).map_err(|e| ebpf::classify("map NHGROUPS", e))?;
        info!(dir = %dir.display(), ?tables, "BPF FIB maps pinned (fib4, fib6, nhgroups)");
        Ok(BpfFib {
            _bpf: bpf,
            fib4,
            fib6,
            groups,
            fds,
            stats: BpfFibStats {
                tables: tables.clone(),
                pinned: Some(dir.display().to_string()),
                ..Default::default()
            },
            tables,
            pin_dir: Some(dir),
            prefix_group: HashMap::new(),
            group_ids: HashMap::new(),
            group_hops: HashMap::new(),
            free_ids: Vec::new(),
            next_id: 1,
            present: HashSet::new(),
            dirty: HashSet::new(),
            started: false,
            errors_logged: 0,
            memlock: Default::default(),
        })
    }

    /// Starts tracking (after the initial sync) with every prefix of the chosen tables
    /// dirty, so the next [`BpfFib::flush`] is the initial fill.
    pub fn start(&mut self, mirror: &Mirror) {
        self.started = true;
        for ((_, id), t) in mirror.fib.tables() {
            if self.tables.contains(&id) {
                self.dirty.extend(t.iter().map(|(dst, _)| (id, dst)));
            }
        }
    }

    /// Whether changes are tracked (since [`BpfFib::start`]).
    pub fn started(&self) -> bool {
        self.started
    }

    /// Marks the prefixes of the chosen tables a batch changed dirty.
    pub fn changes(&mut self, batch: &Batch, mirror: &Mirror) {
        if !self.started {
            return;
        }
        for d in &batch.deltas {
            if self.tables.contains(&d.table) {
                self.dirty.insert((d.table, d.dst));
            }
        }
        let links = &batch.links_changed;
        if batch.nexthops_changed || !links.is_empty() {
            // A changed object changes the next hops of every route that uses one; a link
            // that died or revived changes which hops (and routes) forward. Decided once
            // per attribute set.
            let all = links.contains(&crate::mirror::Journal::ALL_LINKS);
            let mut memo: HashMap<*const crate::model::RouteAttrs, bool> = HashMap::new();
            let affected = |a: &crate::model::RouteAttrs| {
                (batch.nexthops_changed && a.nh_id.is_some())
                    || (!links.is_empty()
                        && (all
                            || mirror
                                .effective_hops(a)
                                .iter()
                                .any(|h| links.contains(&h.ifindex))))
            };
            for ((_, id), t) in mirror.fib.tables() {
                if !self.tables.contains(&id) {
                    continue;
                }
                for (dst, e) in t.iter() {
                    if *memo
                        .entry(std::sync::Arc::as_ptr(&e.attrs))
                        .or_insert_with(|| affected(&e.attrs))
                    {
                        self.dirty.insert((id, dst));
                    }
                }
            }
        }
    }

    /// Brings the maps up to date with the mirror for every dirty prefix.
    pub fn flush(&mut self, mirror: &RwLock<Mirror>) {
        if self.dirty.is_empty() {
            return;
        }
        let dirty = std::mem::take(&mut self.dirty);
        let started = Instant::now();
        // Values are computed under the read lock, written after it is released: only
        // this thread changes the mirror, so they cannot go stale in between.
        let wanted: Vec<((u32, IpNet), Option<Wanted>)> = {
            let m = mirror.read().expect("mirror lock");
            dirty
                .into_iter()
                .map(|(t, dst)| ((t, dst), wanted(&m, t, &dst)))
                .collect()
        };
        for (key, w) in wanted {
            self.put(key, w);
        }
        self.stats.syncs += 1;
        let ms = started.elapsed().as_secs_f64() * 1e3;
        if ms > self.stats.max_sync_ms {
            self.stats.max_sync_ms = ms;
        }
    }

    fn put(&mut self, key: (u32, IpNet), w: Option<Wanted>) {
        let old_group = self.prefix_group.remove(&key);
        let r = match w {
            Some(mut w) => {
                if let Some(hops) = w.group.take() {
                    match self.acquire(hops) {
                        Ok(id) => {
                            w.value.nhgroup = id;
                            self.prefix_group.insert(key, id);
                        }
                        Err(e) => self.error("nhgroups insert", &key, e),
                    }
                }
                let r = self.write(&key, &w.value);
                if r.is_ok() && self.present.insert(key) {
                    match key.1 {
                        IpNet::V4(_) => self.stats.prefixes_v4 += 1,
                        IpNet::V6(_) => self.stats.prefixes_v6 += 1,
                    }
                }
                self.stats.updates += 1;
                r
            }
            None if self.present.remove(&key) => {
                match key.1 {
                    IpNet::V4(_) => self.stats.prefixes_v4 -= 1,
                    IpNet::V6(_) => self.stats.prefixes_v6 -= 1,
                }
                self.stats.deletes += 1;
                self.delete(&key)
            }
            None => Ok(()),
        };
        if let Err(e) = r {
            self.error("fib update", &key, e);
        }
        // After the prefix stopped pointing at it: a dataplane never sees a dangling id.
        if let Some(id) = old_group {
            self.release(id);
        }
    }

    fn write(&mut self, (table, dst): &(u32, IpNet), v: &Value) -> Result<(), aya::maps::MapError> {
        let val = v.to_bytes();
        match dst {
            IpNet::V4(n) => {
                let k = Key4 {
                    table: table.to_be_bytes(),
                    addr: n.network().octets(),
                };
                let key = Key::new(32 + u32::from(n.prefix_len()), k.to_bytes());
                self.fib4.insert(&key, val, 0)
            }
            IpNet::V6(n) => {
                let k = Key6 {
                    table: table.to_be_bytes(),
                    addr: n.network().octets(),
                };
                let key = Key::new(32 + u32::from(n.prefix_len()), k.to_bytes());
                self.fib6.insert(&key, val, 0)
            }
        }
    }

    fn delete(&mut self, (table, dst): &(u32, IpNet)) -> Result<(), aya::maps::MapError> {
        match dst {
            IpNet::V4(n) => {
                let k = Key4 {
                    table: table.to_be_bytes(),
                    addr: n.network().octets(),
                };
                self.fib4
                    .remove(&Key::new(32 + u32::from(n.prefix_len()), k.to_bytes()))
            }
            IpNet::V6(n) => {
                let k = Key6 {
                    table: table.to_be_bytes(),
                    addr: n.network().octets(),
                };
                self.fib6
                    .remove(&Key::new(32 + u32::from(n.prefix_len()), k.to_bytes()))
            }
        }
    }

    /// The group id for a hop set, writing the group the first time it is used.
    fn acquire(&mut self, hops: Vec<Hop>) -> Result<u32, aya::maps::MapError> {
        if let Some((id, refs)) = self.group_ids.get_mut(&hops) {
            *refs += 1;
            return Ok(*id);
        }
        let id = self.free_ids.pop().unwrap_or_else(|| {
            self.next_id += 1;
            self.next_id - 1
        });
        let mut g = Group::default();
        for (slot, h) in g.hops.iter_mut().zip(&hops) {
            *slot = *h;
        }
        g.count = hops.len().min(layout::MAX_HOPS) as u32;
        g.total_weight = hops.iter().map(|h| u32::from(h.weight)).sum();
        if let Err(e) = self.groups.insert(id, g.to_bytes(), 0) {
            self.free_ids.push(id);
            return Err(e);
        }
        self.group_ids.insert(hops.clone(), (id, 1));
        self.group_hops.insert(id, hops);
        self.stats.groups += 1;
        Ok(id)
    }

    fn release(&mut self, id: u32) {
        let Some(hops) = self.group_hops.get(&id) else {
            return;
        };
        let Some((_, refs)) = self.group_ids.get_mut(hops) else {
            return;
        };
        *refs -= 1;
        if *refs > 0 {
            return;
        }
        if let Some(hops) = self.group_hops.remove(&id) {
            self.group_ids.remove(&hops);
        }
        self.stats.groups -= 1;
        if let Err(e) = self.groups.remove(&id) {
            self.stats.errors += 1;
            warn!(id, error = %e, "cannot delete a BPF FIB next-hop group");
        }
        self.free_ids.push(id);
    }

    fn error(&mut self, what: &str, (table, dst): &(u32, IpNet), e: aya::maps::MapError) {
        self.stats.errors += 1;
        if self.errors_logged < 20 {
            self.errors_logged += 1;
            warn!(table, %dst, error = %e, "{what} failed: the BPF FIB may differ from the mirror");
        }
    }

    pub fn stats(&self) -> BpfFibStats {
        let mut s = self.stats.clone();
        let (at, bytes) = self.memlock.get();
        s.memlock_bytes = if at.is_some_and(|t| t.elapsed().as_secs() < 1) {
            bytes
        } else {
            let b = self.fds.iter().map(|fd| memlock(*fd)).sum();
            self.memlock.set((Some(Instant::now()), b));
            b
        };
        s
    }
}

impl Drop for BpfFib {
    /// Clean exit: our pins go; the maps die with the last reference (a dataplane that
    /// opened them keeps its copy alive but no longer updated).
    fn drop(&mut self) {
        if let Some(dir) = &self.pin_dir {
            for (_, f) in PINS {
                let _ = std::fs::remove_file(dir.join(f));
            }
            // Empty unless the source's pins are still there.
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// `memlock:` of a map fd (the kernel memory charged to it).
fn memlock(fd: RawFd) -> u64 {
    std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("memlock:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

fn gateway(a: Option<IpAddr>) -> (u8, [u8; 16]) {
    let mut b = [0u8; 16];
    match a {
        Some(IpAddr::V4(a)) => {
            b[..4].copy_from_slice(&a.octets());
            (gw::V4, b)
        }
        Some(IpAddr::V6(a)) => (gw::V6, a.octets()),
        None => (gw::NONE, b),
    }
}

/// The best route of `table`/`dst` as the kernel's lookup picks it: the first TOS-0
/// route in the kernel's order that can forward ([`Mirror::usable`]), with the hops it
/// forwards through (dead ones left out, as `fib_rebalance` leaves them out). None when
/// no route of the prefix is alive: the dataplane's lookup then falls through to a
/// shorter prefix, as the kernel's does.
fn wanted(m: &Mirror, table: u32, dst: &IpNet) -> Option<Wanted> {
    let family = Family::of_net(dst);
    let mut e = None;
    for r in m.fib.table(family, table)?.get(dst)?.iter() {
        if r.tos() != 0 || r.ext_raw() != 0 {
            continue;
        }
        if crate::model::rtn::is_reject(r.attrs.kind) {
            e = Some(r);
            break;
        }
        match m.usable(family, &r.attrs) {
            Usable::Yes => {
                e = Some(r);
                break;
            }
            Usable::No => continue,
            Usable::NoSkipPrefix => return None,
        }
    }
    let e = e?;
    let hops: Vec<Hop> = m
        .dumped_hops(family, &e.attrs)
        .iter()
        .filter(|h| h.flags & rtnh::DEAD == 0)
        .map(|h| {
            let (gw_family, gateway) = gateway(h.gateway);
            Hop {
                ifindex: h.ifindex,
                weight: h.weight.max(1),
                gw_family,
                flags: if h.flags & rtnh::ONLINK != 0 {
                    flags::ONLINK
                } else {
                    0
                },
                gateway,
            }
        })
        .collect();
    let first = hops.first().copied().unwrap_or_default();
    let mut value = Value {
        kind: e.attrs.kind,
        gw_family: first.gw_family,
        flags: first.flags,
        nhops: hops.len().min(255) as u8,
        ifindex: first.ifindex,
        metric: e.sub().priority,
        table,
        nhgroup: 0,
        gateway: first.gateway,
    };
    let group = if hops.len() > 1 {
        value.flags |= flags::MULTIPATH;
        if hops.len() > layout::MAX_HOPS {
            value.flags |= flags::TRUNCATED;
        }
        let mut g = hops;
        g.truncate(layout::MAX_HOPS);
        Some(g)
    } else {
        None
    };
    Some(Wanted { value, group })
}
