//! The forwarding information base: an LPM trie per (family, table).
//!
//! Each trie node holds every route of one destination prefix in the kernel's order: its
//! keys ([`SubKey`]: metric, TOS, IPv6 source prefix) in the order the kernel lists them,
//! and each key's *list* of routes (`ip route append`/`prepend`, the connected routes of a
//! subnet addressed on two devices, IPv6 device routes of one metric) as the kernel keeps
//! it ([`Place`]). Lookups take the first route that can forward ([`Usable`]).
//!
//! Used as a library (the daemon fills it from netlink; `examples/fib_lookup.rs` fills
//! it from one dump of this host's tables):
//!
//! ```
//! use std::sync::Arc;
//! use route_mirror::fib::{fast::Lookup, Entry, Fib, DEFAULT_RULE_TABLES};
//! use route_mirror::model::{rtn, table, Family, NextHop, RouteAttrs, SubKey};
//!
//! let attrs = Arc::new(RouteAttrs {
//!     protocol: 4,
//!     kind: rtn::UNICAST,
//!     nexthops: vec![NextHop::new(Some("198.18.1.2".parse()?), 3)].into(),
//!     ..Default::default()
//! });
//! let sub = SubKey::metric;
//! let mut fib = Fib::default();
//! let main = fib.table_mut(Family::V4, table::MAIN);
//! main.upsert(&"10.0.0.0/8".parse()?, Entry::new(sub(0), attrs.clone(), 0));
//! main.upsert(&"10.1.0.0/16".parse()?, Entry::new(sub(20), attrs.clone(), 0));
//! main.upsert(&"10.1.0.0/16".parse()?, Entry::new(sub(10), attrs, 0));
//!
//! // Exact lookup through the default policy's tables: longest prefix, lowest metric.
//! let (t, net, e) = fib.lookup("10.1.2.3".parse()?, &DEFAULT_RULE_TABLES, 0).unwrap();
//! assert_eq!((t, net.to_string(), e.priority()), (table::MAIN, "10.1.0.0/16".into(), 10));
//!
//! // A read-optimised snapshot: same answers, one at a time or in batches.
//! let snap = fib.extract().build();
//! let addrs = ["10.1.2.3".parse()?, "10.200.0.1".parse()?, "192.0.2.1".parse()?];
//! let mut out = Vec::new();
//! snap.lookup_many(&addrs, &DEFAULT_RULE_TABLES, 0, &mut out);
//! assert!(matches!(out[1], Lookup::Route(_, net, _) if net.to_string() == "10.0.0.0/8"));
//! assert!(matches!(out[2], Lookup::None));
//!
//! // Any change makes the snapshot stale; readers then rebuild or use the exact FIB.
//! fib.table_mut(Family::V4, table::MAIN).remove(&"10.0.0.0/8".parse()?, &sub(0));
//! assert!(!snap.is_current());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod ext;
pub mod fast;
pub mod flow;
pub mod l3mdev;
pub mod multipath;
pub mod poptrie;
pub mod rules;
pub mod store;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use smallvec::SmallVec;

use crate::model::{rtn, table, Family, RouteAttrs, RouteKey, SubKey};
use store::{Net, PrefixStore};

/// One route in the FIB: its sub-key, interned attributes and the scan stamp used by
/// the mark-and-sweep prune ([`crate::reconcile`]).
///
/// Laid out for memory: a full table holds over a million of these, one per prefix
/// inline in the trie's value slot. The rare part of the sub-key (the IPv6 source
/// prefix) lives in a process-wide interned table ([`ext`]) and is held here as a `u32`,
/// so an entry is 24 bytes instead of 64 (see BENCHMARKS.md). The hot parts (metric,
/// TOS) stay inline: lookups never touch the side table.
#[derive(Debug, Clone)]
pub struct Entry {
    pub attrs: Arc<RouteAttrs>,
    priority: u32,
    ext: ext::ExtId,
    pub stamp: u32,
    tos: u8,
}

impl Entry {
    pub fn new(sub: SubKey, attrs: Arc<RouteAttrs>, stamp: u32) -> Entry {
        Entry {
            attrs,
            priority: sub.priority,
            ext: ext::intern(sub.src),
            stamp,
            tos: sub.tos,
        }
    }

    /// The full sub-key (resolves the interned rare part).
    pub fn sub(&self) -> SubKey {
        SubKey {
            priority: self.priority,
            tos: self.tos,
            src: ext::resolve(self.ext),
        }
    }

    /// Metric (`RTA_PRIORITY`).
    pub fn priority(&self) -> u32 {
        self.priority
    }

    /// The interned id of the rare sub-key part (0: no source prefix).
    pub fn ext_raw(&self) -> u32 {
        self.ext.raw()
    }

    /// IPv4 TOS (0 for IPv6).
    pub fn tos(&self) -> u8 {
        self.tos
    }

    /// Whether both have the same key, without resolving anything: interned ids are
    /// canonical, so equal keys have equal ids.
    fn same_key(&self, other: &Entry) -> bool {
        self.priority == other.priority && self.tos == other.tos && self.ext == other.ext
    }

    /// The order of keys within a prefix, as the kernel lists them: IPv4 by TOS
    /// descending, then metric ascending (`fib_find_alias`); IPv6 by metric, then source
    /// prefix (resolved only on ties).
    fn cmp_key(&self, other: &Entry) -> std::cmp::Ordering {
        (std::cmp::Reverse(self.tos), self.priority)
            .cmp(&(std::cmp::Reverse(other.tos), other.priority))
            .then_with(|| {
                if self.ext == other.ext {
                    std::cmp::Ordering::Equal
                } else {
                    ext::resolve(self.ext).cmp(&ext::resolve(other.ext))
                }
            })
    }
}

/// The routes of one prefix in the kernel's order: keys in [`Entry::cmp_key`] order, and
/// each key's routes as the kernel lists them (its first one forwards).
pub type Entries = SmallVec<[Entry; 1]>;

/// Where a new route goes in its key's list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Replaces the key's first route (`NLM_F_REPLACE`, or a plain upsert).
    ReplaceFirst,
    /// Before the key's routes (`ip route prepend`: `NLM_F_CREATE` alone).
    Front,
    /// After the key's routes (`ip route append`: `NLM_F_CREATE|NLM_F_APPEND`).
    Back,
    /// The key's only route (`NLM_F_CREATE|NLM_F_EXCL`: the key was new to the kernel, so
    /// whatever the mirror still held for it is stale).
    Only,
}

/// The index range of `sub`'s routes within `es`, or where they would go.
fn key_range(es: &Entries, probe: &Entry) -> std::ops::Range<usize> {
    let start = es
        .iter()
        .position(|e| e.cmp_key(probe) != std::cmp::Ordering::Less)
        .unwrap_or(es.len());
    let len = es[start..].iter().take_while(|e| e.same_key(probe)).count();
    start..start + len
}

/// A stand-in entry with `sub`'s key (for ordering), if such a key can exist.
fn probe(sub: &SubKey) -> Option<Entry> {
    let ext = ext::find(sub.src)?;
    Some(Entry {
        attrs: probe_attrs(),
        priority: sub.priority,
        ext,
        stamp: 0,
        tos: sub.tos,
    })
}

fn probe_attrs() -> Arc<RouteAttrs> {
    static A: std::sync::OnceLock<Arc<RouteAttrs>> = std::sync::OnceLock::new();
    A.get_or_init(|| Arc::new(RouteAttrs::default())).clone()
}

/// The prefixes under each table ([`store`]: a hash index on the exact prefix; it
/// replaced prefix-trie's `PrefixMap`, whose inserts were 44% of the event path).
enum Prefixes {
    V4(PrefixStore<Ipv4Net>),
    V6(PrefixStore<Ipv6Net>),
}

/// Runs `$body` with `$t` bound to the family's map and `$n` to `$net` of the same family;
/// yields `$none` when the families differ.
macro_rules! with_map {
    ($prefixes:expr, $net:expr, |$t:ident, $n:ident| $body:expr, $none:expr) => {
        match ($prefixes, $net) {
            (Prefixes::V4($t), IpNet::V4($n)) => $body,
            (Prefixes::V6($t), IpNet::V6($n)) => $body,
            _ => $none,
        }
    };
}

/// Removes the route at `index` of `sub`'s list under `p`.
fn take_at<P: Net>(
    t: &mut PrefixStore<P>,
    p: &P,
    sub: &SubKey,
    pick: impl FnOnce(&[Entry]) -> Option<usize>,
) -> Option<Entry> {
    let probe = probe(sub)?;
    let entries = t.get_mut(p)?;
    let r = key_range(entries, &probe);
    let i = r.start + pick(&entries[r])?;
    let e = entries.remove(i);
    if entries.is_empty() {
        t.remove(p);
    }
    Some(e)
}

fn retain_in<P: Net>(
    t: &mut PrefixStore<P>,
    f: &mut impl FnMut(&IpNet, &mut Entry) -> bool,
) -> usize {
    let mut removed = 0;
    t.retain_entries(|p, entries| {
        let net: IpNet = (*p).into();
        let before = entries.len();
        entries.retain(|e| f(&net, e));
        removed += before - entries.len();
    });
    removed
}

fn spilled_bytes<P: Net>(t: &PrefixStore<P>) -> usize {
    t.slots()
        .iter()
        .filter(|(_, e)| e.spilled())
        .map(|(_, e)| e.capacity() * std::mem::size_of::<Entry>())
        .sum()
}

/// The routes of one (family, table).
pub struct RouteTable {
    family: Family,
    prefixes: Prefixes,
    routes: usize,
}

/// What a lookup in one table found.
#[derive(Debug, Clone)]
pub enum TableLookup<'a> {
    /// The route the kernel would use from this table.
    Route(IpNet, &'a Entry),
    /// A `throw` route matched: the kernel continues with the next table.
    Throw,
    /// Nothing matched.
    None,
}

impl RouteTable {
    pub fn new(family: Family) -> RouteTable {
        let prefixes = match family {
            Family::V4 => Prefixes::V4(PrefixStore::default()),
            Family::V6 => Prefixes::V6(PrefixStore::default()),
        };
        RouteTable {
            family,
            prefixes,
            routes: 0,
        }
    }

    pub fn family(&self) -> Family {
        self.family
    }

    /// Number of routes (not prefixes).
    pub fn len(&self) -> usize {
        self.routes
    }

    pub fn is_empty(&self) -> bool {
        self.routes == 0
    }

    pub fn prefixes(&self) -> usize {
        match &self.prefixes {
            Prefixes::V4(t) => t.len(),
            Prefixes::V6(t) => t.len(),
        }
    }

    /// Heap bytes of the store and of entry lists that outgrew their inline slot.
    pub fn heap_bytes(&self) -> usize {
        match &self.prefixes {
            Prefixes::V4(t) => t.heap_bytes() + spilled_bytes(t),
            Prefixes::V6(t) => t.heap_bytes() + spilled_bytes(t),
        }
    }

    pub fn get(&self, dst: &IpNet) -> Option<&Entries> {
        with_map!(&self.prefixes, dst, |t, n| t.get(n), None)
    }

    /// The routes of one key in the kernel's order (the first one forwards); empty if none.
    pub fn key_routes(&self, dst: &IpNet, sub: &SubKey) -> &[Entry] {
        let (Some(es), Some(probe)) = (self.get(dst), probe(sub)) else {
            return &[];
        };
        &es[key_range(es, &probe)]
    }

    /// The first route of a key: the one the kernel forwards with (if alive).
    pub fn get_entry(&self, dst: &IpNet, sub: &SubKey) -> Option<&Entry> {
        self.key_routes(dst, sub).first()
    }

    /// Inserts `entry` into its key's list at `place`. Returns the routes it replaced.
    pub fn insert(&mut self, dst: &IpNet, entry: Entry, place: Place) -> SmallVec<[Entry; 1]> {
        let entries = with_map!(
            &mut self.prefixes,
            dst,
            |t, n| t.entry(*n),
            return SmallVec::new()
        );
        let r = key_range(entries, &entry);
        let mut gone = SmallVec::new();
        match place {
            Place::ReplaceFirst if !r.is_empty() => {
                gone.push(std::mem::replace(&mut entries[r.start], entry));
            }
            Place::Only if !r.is_empty() => {
                gone.extend(entries.drain(r.start + 1..r.end));
                gone.insert(0, std::mem::replace(&mut entries[r.start], entry));
                self.routes -= r.len() - 1;
            }
            Place::ReplaceFirst | Place::Only | Place::Front => {
                entries.insert(r.start, entry);
                self.routes += 1;
            }
            Place::Back => {
                entries.insert(r.end, entry);
                self.routes += 1;
            }
        }
        gone
    }

    /// Inserts or replaces the first route of `dst`+`sub`. Returns the previous one.
    pub fn upsert(&mut self, dst: &IpNet, entry: Entry) -> Option<Entry> {
        self.insert(dst, entry, Place::ReplaceFirst)
            .into_iter()
            .next()
    }

    /// Runs `f` on the whole list of `dst` (created empty if the prefix is new) with the
    /// range of `entry`'s key in it, and `entry`: one hash probe where `key_routes` then `insert_at`
    /// take two (the mark path of a full sync does this once per route). A list `f`
    /// leaves empty is dropped.
    pub fn with_key_list<R>(
        &mut self,
        dst: &IpNet,
        entry: Entry,
        f: impl FnOnce(&mut Entries, std::ops::Range<usize>, Entry) -> R,
    ) -> Option<R> {
        let entries = with_map!(&mut self.prefixes, dst, |t, n| t.entry(*n), return None);
        let before = entries.len();
        let r = key_range(entries, &entry);
        let out = f(entries, r, entry);
        let after = entries.len();
        self.routes = self.routes + after - before;
        if after == 0 {
            with_map!(&mut self.prefixes, dst, |t, n| t.remove(n), None);
        }
        Some(out)
    }

    /// Inserts `entry` at position `index` of its key's list (clamped to its end).
    pub fn insert_at(&mut self, dst: &IpNet, entry: Entry, index: usize) {
        let entries = with_map!(&mut self.prefixes, dst, |t, n| t.entry(*n), return);
        let r = key_range(entries, &entry);
        entries.insert(r.start + index.min(r.len()), entry);
        self.routes += 1;
    }

    /// Mutable access to one key's routes (to change or reorder them in place).
    pub fn key_routes_mut(&mut self, dst: &IpNet, sub: &SubKey) -> Option<&mut [Entry]> {
        let probe = probe(sub)?;
        let entries = with_map!(&mut self.prefixes, dst, |t, n| t.get_mut(n), None)?;
        let r = key_range(entries, &probe);
        (!r.is_empty()).then(|| &mut entries[r])
    }

    /// Mutable access to a key's first route (to change it without moving it).
    pub fn get_entry_mut(&mut self, dst: &IpNet, sub: &SubKey) -> Option<&mut Entry> {
        self.key_routes_mut(dst, sub)?.first_mut()
    }

    /// Removes a key's first route.
    pub fn remove(&mut self, dst: &IpNet, sub: &SubKey) -> Option<Entry> {
        self.remove_where(dst, sub, |es| (!es.is_empty()).then_some(0))
    }

    /// Removes the route of `dst`+`sub` that `pick` chooses (an index into the key's list).
    pub fn remove_where(
        &mut self,
        dst: &IpNet,
        sub: &SubKey,
        pick: impl FnOnce(&[Entry]) -> Option<usize>,
    ) -> Option<Entry> {
        let removed = with_map!(
            &mut self.prefixes,
            dst,
            |t, n| take_at(t, n, sub, pick),
            None
        );
        if removed.is_some() {
            self.routes -= 1;
        }
        removed
    }

    /// Keeps the routes for which `f` returns true; O(n) over the table.
    pub fn retain(&mut self, mut f: impl FnMut(&IpNet, &mut Entry) -> bool) -> usize {
        let removed = match &mut self.prefixes {
            Prefixes::V4(t) => retain_in(t, &mut f),
            Prefixes::V6(t) => retain_in(t, &mut f),
        };
        self.routes -= removed;
        removed
    }

    /// Every route, in (prefix address, prefix length, sub-key) order.
    pub fn iter(&self) -> Box<dyn Iterator<Item = (IpNet, &Entry)> + '_> {
        match &self.prefixes {
            Prefixes::V4(t) => Box::new(
                t.iter()
                    .flat_map(|(p, es)| es.iter().map(move |e| (IpNet::V4(p), e))),
            ),
            Prefixes::V6(t) => Box::new(
                t.iter()
                    .flat_map(|(p, es)| es.iter().map(move |e| (IpNet::V6(p), e))),
            ),
        }
    }

    /// Every prefix with its entries, in (address, length) order.
    pub fn prefix_entries(&self) -> Box<dyn Iterator<Item = (IpNet, &Entries)> + '_> {
        match &self.prefixes {
            Prefixes::V4(t) => Box::new(t.iter().map(|(p, es)| (IpNet::V4(p), es))),
            Prefixes::V6(t) => Box::new(t.iter().map(|(p, es)| (IpNet::V6(p), es))),
        }
    }

    /// Number of storage slots (one per prefix): see [`RouteTable::slot_entries`].
    pub fn slot_count(&self) -> usize {
        self.prefixes()
    }

    /// The prefixes in storage slots `range` with their entries, in no particular order.
    /// Slots stay put while the table's prefixes do (the FIB's version tells), so a
    /// reader can take a table in ranges across lock releases.
    pub fn slot_entries(
        &self,
        range: std::ops::Range<usize>,
    ) -> Box<dyn Iterator<Item = (IpNet, &Entries)> + '_> {
        fn part<P: Net>(
            t: &PrefixStore<P>,
            range: std::ops::Range<usize>,
        ) -> impl Iterator<Item = (IpNet, &Entries)> + '_ {
            let s = t.slots();
            let r = range.start.min(s.len())..range.end.min(s.len());
            s[r].iter().map(|(p, es)| ((*p).into(), es))
        }
        match &self.prefixes {
            Prefixes::V4(t) => Box::new(part(t, range)),
            Prefixes::V6(t) => Box::new(part(t, range)),
        }
    }

    /// Prefixes inside `net` (including `net` itself) with their entries.
    pub fn prefix_entries_within(
        &self,
        net: &IpNet,
    ) -> Box<dyn Iterator<Item = (IpNet, &Entries)> + '_> {
        match (&self.prefixes, net) {
            (Prefixes::V4(t), IpNet::V4(n)) => {
                Box::new(t.within(n).map(|(p, es)| (IpNet::V4(p), es)))
            }
            (Prefixes::V6(t), IpNet::V6(n)) => {
                Box::new(t.within(n).map(|(p, es)| (IpNet::V6(p), es)))
            }
            _ => Box::new(std::iter::empty()),
        }
    }

    /// Prefixes that contain `net` (including `net` itself), shortest first.
    pub fn prefix_entries_covering(
        &self,
        net: &IpNet,
    ) -> Box<dyn Iterator<Item = (IpNet, &Entries)> + '_> {
        match (&self.prefixes, net) {
            (Prefixes::V4(t), IpNet::V4(n)) => {
                Box::new(t.covering(n).map(|(p, es)| (IpNet::V4(p), es)))
            }
            (Prefixes::V6(t), IpNet::V6(n)) => {
                Box::new(t.covering(n).map(|(p, es)| (IpNet::V6(p), es)))
            }
            _ => Box::new(std::iter::empty()),
        }
    }

    /// Routes whose prefix lies inside `net` (including `net` itself).
    pub fn iter_within(&self, net: &IpNet) -> Box<dyn Iterator<Item = (IpNet, &Entry)> + '_> {
        match (&self.prefixes, net) {
            (Prefixes::V4(t), IpNet::V4(n)) => Box::new(
                t.within(n)
                    .flat_map(|(p, es)| es.iter().map(move |e| (IpNet::V4(p), e))),
            ),
            (Prefixes::V6(t), IpNet::V6(n)) => Box::new(
                t.within(n)
                    .flat_map(|(p, es)| es.iter().map(move |e| (IpNet::V6(p), e))),
            ),
            _ => Box::new(std::iter::empty()),
        }
    }

    /// The route the kernel's `fib_table_lookup` would return for `addr` with `tos` if
    /// every route were alive: see [`RouteTable::lookup_with`].
    pub fn lookup(&self, addr: IpAddr, tos: u8) -> TableLookup<'_> {
        self.lookup_with(addr, tos, &mut |_, _| Usable::Yes)
    }

    /// [`RouteTable::lookup`] over the routes `accept` lets through: the others are
    /// passed over as if absent (the kernel's output-device filter, `fib_lookup_good_nhc`).
    pub fn lookup_by(
        &self,
        addr: IpAddr,
        tos: u8,
        accept: impl Fn(&Entry) -> bool,
    ) -> TableLookup<'_> {
        self.lookup_with(addr, tos, &mut |_, e| {
            if accept(e) {
                Usable::Yes
            } else {
                Usable::No
            }
        })
    }

    /// The route the kernel's `fib_table_lookup` returns for `addr` with `tos`: the
    /// longest matching prefix with a route for this TOS that `usable` accepts, taking
    /// each prefix's routes in the kernel's order. Reject routes (blackhole,
    /// unreachable, prohibit, throw) answer at once, as in the kernel; an IPv6 lookup
    /// (which has no source address here) skips source-specific routes.
    pub fn lookup_with(
        &self,
        addr: IpAddr,
        tos: u8,
        usable: &mut dyn FnMut(Family, &Entry) -> Usable,
    ) -> TableLookup<'_> {
        fn pick<'e>(
            family: Family,
            es: &'e Entries,
            tos: u8,
            usable: &mut dyn FnMut(Family, &Entry) -> Usable,
        ) -> Option<&'e Entry> {
            for e in es.iter() {
                if e.tos != 0 && e.tos != tos {
                    continue;
                }
                if e.ext.raw() != 0 {
                    continue;
                }
                // Reject routes are usable by liveness (they answer at once, as in the
                // kernel); a filter (the output device's) may still pass over them.
                match usable(family, e) {
                    Usable::Yes => return Some(e),
                    Usable::No => continue,
                    Usable::NoSkipPrefix => return None,
                }
            }
            None
        }
        let tos = if addr.is_ipv4() { tos } else { 0 };
        let family = self.family;
        let found = match (&self.prefixes, addr) {
            (Prefixes::V4(t), IpAddr::V4(a)) => t
                .covering_longest_first(&Ipv4Net::from(a))
                .find_map(|(p, es)| pick(family, es, tos, usable).map(|e| (IpNet::V4(p), e))),
            (Prefixes::V6(t), IpAddr::V6(a)) => t
                .covering_longest_first(&Ipv6Net::from(a))
                .find_map(|(p, es)| pick(family, es, tos, usable).map(|e| (IpNet::V6(p), e))),
            _ => None,
        };
        match found {
            Some((_, e)) if e.attrs.kind == rtn::THROW => TableLookup::Throw,
            Some((net, e)) => TableLookup::Route(net, e),
            None => TableLookup::None,
        }
    }
}

/// Whether a route can forward now (decided by the mirror from link and netconf state,
/// [`crate::liveness`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usable {
    Yes,
    /// No usable next hop: the kernel tries the prefix's next route.
    No,
    /// A nexthop-object route without a usable hop: the kernel's lookup gives up on this
    /// prefix and backtracks to shorter ones (`fib_table_lookup`'s `miss`).
    NoSkipPrefix,
}

/// All tables of both families.
#[derive(Default)]
pub struct Fib {
    tables: BTreeMap<(Family, u32), RouteTable>,
    /// Bumped on every mutable access, so that snapshots ([`fast::FastFib`]) can tell
    /// lock-free whether they are still current. Shared with the snapshots taken.
    version: Arc<AtomicU64>,
}

impl Drop for Fib {
    /// A replaced FIB must not look unchanged to snapshots taken from it.
    fn drop(&mut self) {
        self.version.store(u64::MAX, Ordering::Release);
    }
}

/// The tables the kernel's default policy rules consult, in order
/// (`ip rule`: 0 local, 32766 main, 32767 default).
pub const DEFAULT_RULE_TABLES: [u32; 3] = [table::LOCAL, table::MAIN, table::DEFAULT];

impl Fib {
    /// Marks the FIB changed (see [`Fib::version`]); the mirror also calls it for changes
    /// outside the FIB that lookups render (links, nexthop objects).
    pub fn touch(&self) {
        self.version.fetch_add(1, Ordering::AcqRel);
    }

    /// Changes with every mutable access to a table.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    fn version_counter(&self) -> Arc<AtomicU64> {
        self.version.clone()
    }

    pub fn table(&self, family: Family, id: u32) -> Option<&RouteTable> {
        self.tables.get(&(family, id))
    }

    pub fn table_mut(&mut self, family: Family, id: u32) -> &mut RouteTable {
        self.touch();
        self.tables
            .entry((family, id))
            .or_insert_with(|| RouteTable::new(family))
    }

    pub fn tables(&self) -> impl Iterator<Item = ((Family, u32), &RouteTable)> {
        self.tables.iter().map(|(k, t)| (*k, t))
    }

    pub fn tables_mut(&mut self) -> impl Iterator<Item = ((Family, u32), &mut RouteTable)> {
        self.touch();
        self.tables.iter_mut().map(|(k, t)| (*k, t))
    }

    /// Drops tables that became empty (the kernel forgets them too).
    pub fn drop_empty(&mut self) {
        self.touch();
        self.tables.retain(|_, t| !t.is_empty());
    }

    pub fn get(&self, key: &RouteKey) -> Option<&Entry> {
        self.table(key.family(), key.table)?
            .get_entry(&key.dst, &key.sub)
    }

    pub fn len(&self) -> usize {
        self.tables.values().map(RouteTable::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Longest-prefix match through `tables` in order, as the kernel's policy routing
    /// does with the default rules: a `throw` route moves on to the next table. Every
    /// route counts as alive; [`Fib::lookup_with`] asks.
    pub fn lookup(&self, addr: IpAddr, tables: &[u32], tos: u8) -> Option<(u32, IpNet, &Entry)> {
        self.lookup_with(addr, tables, tos, &mut |_, _| Usable::Yes)
    }

    /// [`Fib::lookup`] skipping the routes `usable` rejects, as the kernel skips dead ones.
    pub fn lookup_with(
        &self,
        addr: IpAddr,
        tables: &[u32],
        tos: u8,
        usable: &mut dyn FnMut(Family, &Entry) -> Usable,
    ) -> Option<(u32, IpNet, &Entry)> {
        let family = Family::of(&addr);
        for &id in tables {
            if let Some(t) = self.table(family, id) {
                match t.lookup_with(addr, tos, usable) {
                    TableLookup::Route(net, e) => return Some((id, net, e)),
                    TableLookup::Throw | TableLookup::None => continue,
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NextHop;

    fn entry(priority: u32, kind: u8, stamp: u32) -> Entry {
        Entry::new(
            SubKey::metric(priority),
            Arc::new(RouteAttrs {
                protocol: 4,
                kind,
                nexthops: vec![NextHop::new(None, 2)].into(),
                ..Default::default()
            }),
            stamp,
        )
    }

    #[test]
    fn lowest_metric_wins_and_removal_falls_back() {
        let mut t = RouteTable::new(Family::V4);
        let net: IpNet = "10.0.0.0/8".parse().unwrap();
        t.upsert(&net, entry(20, rtn::UNICAST, 0));
        t.upsert(&net, entry(10, rtn::UNICAST, 0));
        t.upsert(&"10.1.0.0/16".parse().unwrap(), entry(5, rtn::BLACKHOLE, 0));
        assert_eq!(t.len(), 3);
        let TableLookup::Route(n, e) = t.lookup("10.2.3.4".parse().unwrap(), 0) else {
            panic!()
        };
        assert_eq!((n, e.priority()), (net, 10));
        let TableLookup::Route(_, e) = t.lookup("10.1.3.4".parse().unwrap(), 0) else {
            panic!()
        };
        assert_eq!(e.attrs.kind, rtn::BLACKHOLE);
        t.remove(&net, &SubKey::metric(10));
        let TableLookup::Route(_, e) = t.lookup("10.2.3.4".parse().unwrap(), 0) else {
            panic!()
        };
        assert_eq!(e.priority(), 20);
        assert_eq!(t.retain(|_, e| e.priority() != 20), 1);
        assert_eq!(t.len(), 1);
        assert!(matches!(
            t.lookup("10.2.3.4".parse().unwrap(), 0),
            TableLookup::None
        ));
    }

    #[test]
    fn compact_entry_keeps_the_full_sub_key_and_its_order() {
        assert_eq!(std::mem::size_of::<Entry>(), 24);
        let mut t = RouteTable::new(Family::V6);
        let net: IpNet = "2001:db8::/32".parse().unwrap();
        let src = |s: &str| SubKey {
            src: Some(s.parse().unwrap()),
            ..SubKey::metric(5)
        };
        let subs = [
            src("2001:db8:1::/48"),
            SubKey::metric(5),
            src("2001:db8:2::/48"),
            SubKey::metric(1),
        ];
        for s in subs {
            let e = entry(0, rtn::UNICAST, 0);
            t.upsert(&net, Entry::new(s, e.attrs, 0));
        }
        let mut sorted = subs.to_vec();
        sorted.sort();
        let got: Vec<SubKey> = t.get(&net).unwrap().iter().map(Entry::sub).collect();
        assert_eq!(got, sorted);
        for s in subs {
            assert_eq!(t.get_entry(&net, &s).map(Entry::sub), Some(s));
        }
        assert!(t.get_entry(&net, &src("2001:db8:9::/48")).is_none());
        assert!(t.remove(&net, &subs[2]).is_some());
        assert_eq!(t.len(), 3);
    }

    fn via(ifindex: u32, priority: u32) -> Entry {
        let mut e = entry(priority, rtn::UNICAST, 0);
        Arc::make_mut(&mut e.attrs).nexthops = vec![NextHop::new(None, ifindex)].into();
        e
    }

    fn ifs(t: &RouteTable, net: &IpNet, sub: &SubKey) -> Vec<u32> {
        t.key_routes(net, sub)
            .iter()
            .map(|e| e.attrs.nexthops[0].ifindex)
            .collect()
    }

    /// `ip route add` / `append` / `prepend` / `replace` as `fib_table_insert` orders them.
    #[test]
    fn a_key_keeps_its_routes_in_kernel_order() {
        let mut t = RouteTable::new(Family::V4);
        let net: IpNet = "10.9.0.0/24".parse().unwrap();
        let k = SubKey::metric(0);
        t.insert(&net, via(2, 0), Place::Only);
        t.insert(&net, via(3, 0), Place::Back);
        t.insert(&net, via(4, 0), Place::Front);
        t.insert(&net, via(5, 20), Place::Only); // another key, after
        t.insert(&net, via(6, 0), Place::Back);
        assert_eq!(ifs(&t, &net, &k), vec![4, 2, 3, 6]);
        assert_eq!(t.len(), 5);
        let gone = t.insert(&net, via(7, 0), Place::ReplaceFirst);
        assert_eq!(gone[0].attrs.nexthops[0].ifindex, 4);
        assert_eq!(ifs(&t, &net, &k), vec![7, 2, 3, 6]);
        // Deletes name the route: the one with those attributes goes, wherever it is.
        let e = t.remove_where(&net, &k, |es| {
            es.iter().position(|e| e.attrs.nexthops[0].ifindex == 3)
        });
        assert!(e.is_some());
        assert_eq!(ifs(&t, &net, &k), vec![7, 2, 6]);
        // A new-key notification (CREATE|EXCL) means the kernel had none: stale ones go.
        let gone = t.insert(&net, via(8, 0), Place::Only);
        assert_eq!(gone.len(), 3);
        assert_eq!(ifs(&t, &net, &k), vec![8]);
        assert_eq!(ifs(&t, &net, &SubKey::metric(20)), vec![5]);
        assert_eq!(t.len(), 2);
        // TOS keys come first (fib_find_alias orders TOS descending, then metric).
        let tos = SubKey {
            tos: 0x10,
            ..SubKey::metric(30)
        };
        t.insert(&net, Entry::new(tos, via(9, 0).attrs, 0), Place::Only);
        let order: Vec<(u8, u32)> = t
            .get(&net)
            .unwrap()
            .iter()
            .map(|e| (e.tos(), e.priority()))
            .collect();
        assert_eq!(order, vec![(0x10, 30), (0, 0), (0, 20)]);
    }

    /// Dead routes are skipped: the prefix's next route, then shorter prefixes; a
    /// nexthop-object route without a live hop skips the rest of its prefix.
    #[test]
    fn lookups_skip_what_is_not_usable() {
        let mut t = RouteTable::new(Family::V4);
        let p24: IpNet = "10.9.0.0/24".parse().unwrap();
        let p16: IpNet = "10.9.0.0/16".parse().unwrap();
        t.insert(&p24, via(2, 0), Place::Only);
        t.insert(&p24, via(3, 0), Place::Back);
        t.insert(&p24, via(4, 10), Place::Only);
        t.insert(&p16, via(5, 0), Place::Only);
        let a: IpAddr = "10.9.0.1".parse().unwrap();
        let first_alive = |dead: &'static [u32]| {
            let mut usable = |_: Family, e: &Entry| {
                if dead.contains(&e.attrs.nexthops[0].ifindex) {
                    Usable::No
                } else {
                    Usable::Yes
                }
            };
            match t.lookup_with(a, 0, &mut usable) {
                TableLookup::Route(n, e) => Some((n.prefix_len(), e.attrs.nexthops[0].ifindex)),
                _ => None,
            }
        };
        assert_eq!(first_alive(&[]), Some((24, 2)));
        assert_eq!(first_alive(&[2]), Some((24, 3)));
        assert_eq!(first_alive(&[2, 3]), Some((24, 4)));
        assert_eq!(first_alive(&[2, 3, 4]), Some((16, 5)));
        assert_eq!(first_alive(&[2, 3, 4, 5]), None);
        let mut skip = |_: Family, e: &Entry| match e.attrs.nexthops[0].ifindex {
            2 => Usable::NoSkipPrefix,
            _ => Usable::Yes,
        };
        let TableLookup::Route(n, _) = t.lookup_with(a, 0, &mut skip) else {
            panic!()
        };
        assert_eq!(n, p16);
    }

    #[test]
    fn throw_continues_to_next_table() {
        let mut fib = Fib::default();
        fib.table_mut(Family::V4, 254)
            .upsert(&"10.0.0.0/8".parse().unwrap(), entry(0, rtn::THROW, 0));
        fib.table_mut(Family::V4, 253)
            .upsert(&"0.0.0.0/0".parse().unwrap(), entry(0, rtn::UNICAST, 0));
        let (t, net, _) = fib
            .lookup("10.1.1.1".parse().unwrap(), &DEFAULT_RULE_TABLES, 0)
            .unwrap();
        assert_eq!((t, net.prefix_len()), (253, 0));
    }

    mod model_check {
        use super::*;
        use proptest::prelude::*;
        use std::net::Ipv4Addr;

        #[derive(Debug, Clone)]
        enum Op {
            Upsert(u32, u8, u32, u8, bool),
            Remove(u32, u8, u32, u8),
            RetainPriorityBelow(u32),
        }

        /// Prefixes from a small pool so nesting, duplicates and /0 and /32 all occur.
        fn prefix() -> impl Strategy<Value = (u32, u8)> {
            (
                prop::sample::select(vec![
                    0u32,
                    0x0a00_0000,
                    0x0a01_0000,
                    0x0a01_0100,
                    0x0a01_0180,
                    0xc000_0200,
                    0xffff_ffff,
                ]),
                prop::sample::select(vec![0u8, 8, 16, 24, 25, 32]),
            )
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => (prefix(), 0u32..4, prop::sample::select(vec![0u8, 0x10]), any::<bool>()).prop_map(|((a, l), p, t, th)| Op::Upsert(a, l, p, t, th)),
                2 => (prefix(), 0u32..4, prop::sample::select(vec![0u8, 0x10])).prop_map(|((a, l), p, t)| Op::Remove(a, l, p, t)),
                1 => (0u32..4).prop_map(Op::RetainPriorityBelow),
            ]
        }

        fn net(a: u32, l: u8) -> IpNet {
            IpNet::V4(Ipv4Net::new(Ipv4Addr::from(a), l).unwrap().trunc())
        }

        fn sub(p: u32, tos: u8) -> SubKey {
            SubKey {
                tos,
                ..SubKey::metric(p)
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]
            #[test]
            fn route_table_matches_brute_force(ops in prop::collection::vec(op(), 1..60), addrs in prop::collection::vec(any::<u32>(), 16), tos in prop::sample::select(vec![0u8, 0x10])) {
                let mut t = RouteTable::new(Family::V4);
                // model: (net, sub) -> is_throw
                let mut m: BTreeMap<(IpNet, SubKey), bool> = BTreeMap::new();
                for op in ops {
                    match op {
                        Op::Upsert(a, l, p, tt, th) => {
                            let kind = if th { rtn::THROW } else { rtn::UNICAST };
                            let e = entry(p, kind, 0);
                            t.upsert(&net(a, l), Entry::new(sub(p, tt), e.attrs.clone(), 0));
                            m.insert((net(a, l), sub(p, tt)), th);
                        }
                        Op::Remove(a, l, p, tt) => {
                            let got = t.remove(&net(a, l), &sub(p, tt)).is_some();
                            prop_assert_eq!(got, m.remove(&(net(a, l), sub(p, tt))).is_some());
                        }
                        Op::RetainPriorityBelow(limit) => {
                            t.retain(|_, e| e.sub().priority < limit);
                            m.retain(|(_, s), _| s.priority < limit);
                        }
                    }
                    prop_assert_eq!(t.len(), m.len());
                }
                let listed: Vec<(IpNet, SubKey)> = t.iter().map(|(n, e)| (n, e.sub())).collect();
                let mut expected: Vec<(IpNet, SubKey)> = m.keys().copied().collect();
                expected.sort_by_key(|(n, s)| (n.network(), n.prefix_len(), std::cmp::Reverse(s.tos), s.priority));
                prop_assert_eq!(listed, expected);
                for a in addrs.into_iter().chain([0x0a01_0181, 0xffff_ffff, 0]) {
                    let addr = IpAddr::V4(Ipv4Addr::from(a));
                    // Longest prefix; then the kernel's order: TOS descending, metric.
                    let order = |s: &SubKey| (std::cmp::Reverse(s.tos), s.priority);
                    let best = m
                        .iter()
                        .filter(|((n, s), _)| n.contains(&addr) && (s.tos == 0 || s.tos == tos))
                        .max_by(|((n1, s1), _), ((n2, s2), _)| n1.prefix_len().cmp(&n2.prefix_len()).then(order(s2).cmp(&order(s1))));
                    match (t.lookup(addr, tos), best) {
                        (TableLookup::None, None) => {}
                        (TableLookup::Throw, Some((_, true))) => {}
                        (TableLookup::Route(n, e), Some(((bn, bs), false))) => {
                            prop_assert_eq!((n, e.sub()), (*bn, *bs));
                        }
                        (got, want) => prop_assert!(false, "lookup {addr}: got {got:?}, want {want:?}"),
                    }
                }
            }
        }
    }
}
