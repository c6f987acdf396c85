//! The forwarding information base: an LPM trie per (family, table).
//!
//! Each trie node holds every route of one destination prefix (several metrics, TOS
//! values or IPv6 source prefixes), sorted by [`SubKey`] so the preferred one is first.
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

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use prefix_trie::{Prefix, PrefixMap};
use smallvec::SmallVec;

use crate::model::{rtn, table, Family, RouteAttrs, RouteKey, SubKey};

/// One route in the FIB: its sub-key, interned attributes and the scan stamp used by
/// the mark-and-sweep prune ([`crate::reconcile`]).
///
/// Laid out for memory: a full table holds over a million of these, one per prefix
/// inline in the trie's value slot. The rare parts of the sub-key (IPv6 source prefix,
/// IPv6 next-hop identity) live in a process-wide interned table ([`ext`]) and are held
/// here as a `u32`, so an entry is 24 bytes instead of 64 (see BENCHMARKS.md). The hot
/// parts (metric, TOS) stay inline: lookups never touch the side table.
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
            ext: ext::intern(sub.src, sub.hop),
            stamp,
            tos: sub.tos,
        }
    }

    /// The full sub-key (resolves the interned rare part).
    pub fn sub(&self) -> SubKey {
        let (src, hop) = ext::resolve(self.ext);
        SubKey {
            priority: self.priority,
            tos: self.tos,
            src,
            hop,
        }
    }

    /// Metric (`RTA_PRIORITY`).
    pub fn priority(&self) -> u32 {
        self.priority
    }

    /// The interned id of the rare sub-key part (0: no source prefix, no hop identity).
    pub fn ext_raw(&self) -> u32 {
        self.ext.raw()
    }

    /// IPv4 TOS (0 for IPv6).
    pub fn tos(&self) -> u8 {
        self.tos
    }

    /// Whether this entry has sub-key `sub`, without resolving anything: interned ids
    /// are canonical, so equal keys have equal ids.
    fn matches(&self, sub: &SubKey, id: ext::ExtId) -> bool {
        self.priority == sub.priority && self.tos == sub.tos && self.ext == id
    }

    /// [`SubKey`] order (priority, tos, src, hop), resolving the rare part only on ties.
    fn cmp_sub(&self, other: &Entry) -> std::cmp::Ordering {
        (self.priority, self.tos)
            .cmp(&(other.priority, other.tos))
            .then_with(|| {
                if self.ext == other.ext {
                    std::cmp::Ordering::Equal
                } else {
                    ext::resolve(self.ext).cmp(&ext::resolve(other.ext))
                }
            })
    }
}

/// The routes of one prefix, sorted by sub-key (lowest metric first).
pub type Entries = SmallVec<[Entry; 1]>;

/// The LPM trie under each table. prefix-trie's PrefixMap beat our own Patricia trie
/// (`benches/fib/patricia.rs`) on build speed, lookups and memory (BENCHMARKS.md), so it
/// is the one used.
enum Prefixes {
    V4(PrefixMap<Ipv4Net, Entries>),
    V6(PrefixMap<Ipv6Net, Entries>),
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

fn take_sub<P: Prefix>(t: &mut PrefixMap<P, Entries>, p: &P, sub: &SubKey) -> Option<Entry> {
    let id = ext::find(sub.src, sub.hop)?;
    let entries = t.get_mut(p)?;
    let i = entries.iter().position(|e| e.matches(sub, id))?;
    let e = entries.remove(i);
    if entries.is_empty() {
        t.remove(p);
    }
    Some(e)
}

fn retain_in<P: Prefix + Copy + Into<IpNet>>(
    t: &mut PrefixMap<P, Entries>,
    f: &mut impl FnMut(&IpNet, &mut Entry) -> bool,
) -> usize {
    let mut removed = 0;
    let mut emptied = false;
    for (p, entries) in t.iter_mut() {
        let net: IpNet = p.into();
        let before = entries.len();
        entries.retain(|e| f(&net, e));
        removed += before - entries.len();
        emptied |= entries.is_empty();
    }
    if emptied {
        t.retain(|_, es| !es.is_empty());
    }
    removed
}

fn spilled_bytes<P: Prefix>(t: &PrefixMap<P, Entries>) -> usize {
    t.values()
        .filter(|e| e.spilled())
        .map(|e| e.capacity() * std::mem::size_of::<Entry>())
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
            Family::V4 => Prefixes::V4(PrefixMap::new()),
            Family::V6 => Prefixes::V6(PrefixMap::new()),
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

    /// Heap bytes of the trie and of entry lists that outgrew their inline slot.
    pub fn heap_bytes(&self) -> usize {
        match &self.prefixes {
            Prefixes::V4(t) => t.mem_size() + spilled_bytes(t),
            Prefixes::V6(t) => t.mem_size() + spilled_bytes(t),
        }
    }

    pub fn get(&self, dst: &IpNet) -> Option<&Entries> {
        with_map!(&self.prefixes, dst, |t, n| t.get(n), None)
    }

    pub fn get_entry(&self, dst: &IpNet, sub: &SubKey) -> Option<&Entry> {
        let id = ext::find(sub.src, sub.hop)?;
        self.get(dst)?.iter().find(|e| e.matches(sub, id))
    }

    /// Inserts or replaces the route `dst`+`sub`. Returns the previous entry.
    pub fn upsert(&mut self, dst: &IpNet, entry: Entry) -> Option<Entry> {
        let entries = with_map!(
            &mut self.prefixes,
            dst,
            |t, n| t.entry(*n).or_insert_with(Entries::new),
            return None
        );
        match entries.binary_search_by(|e| e.cmp_sub(&entry)) {
            Ok(i) => Some(std::mem::replace(&mut entries[i], entry)),
            Err(i) => {
                entries.insert(i, entry);
                self.routes += 1;
                None
            }
        }
    }

    /// Mutable access to one route (to change it without moving it).
    pub fn get_entry_mut(&mut self, dst: &IpNet, sub: &SubKey) -> Option<&mut Entry> {
        let id = ext::find(sub.src, sub.hop)?;
        let entries = with_map!(&mut self.prefixes, dst, |t, n| t.get_mut(n), None)?;
        entries.iter_mut().find(|e| e.matches(sub, id))
    }

    pub fn remove(&mut self, dst: &IpNet, sub: &SubKey) -> Option<Entry> {
        let removed = with_map!(&mut self.prefixes, dst, |t, n| take_sub(t, n, sub), None);
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

    /// Prefixes inside `net` (including `net` itself) with their entries.
    pub fn prefix_entries_within(
        &self,
        net: &IpNet,
    ) -> Box<dyn Iterator<Item = (IpNet, &Entries)> + '_> {
        match (&self.prefixes, net) {
            (Prefixes::V4(t), IpNet::V4(n)) => {
                Box::new(t.children(n).map(|(p, es)| (IpNet::V4(p), es)))
            }
            (Prefixes::V6(t), IpNet::V6(n)) => {
                Box::new(t.children(n).map(|(p, es)| (IpNet::V6(p), es)))
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
                Box::new(t.cover(n).map(|(p, es)| (IpNet::V4(p), es)))
            }
            (Prefixes::V6(t), IpNet::V6(n)) => {
                Box::new(t.cover(n).map(|(p, es)| (IpNet::V6(p), es)))
            }
            _ => Box::new(std::iter::empty()),
        }
    }

    /// Routes whose prefix lies inside `net` (including `net` itself).
    pub fn iter_within(&self, net: &IpNet) -> Box<dyn Iterator<Item = (IpNet, &Entry)> + '_> {
        match (&self.prefixes, net) {
            (Prefixes::V4(t), IpNet::V4(n)) => Box::new(
                t.children(n)
                    .flat_map(|(p, es)| es.iter().map(move |e| (IpNet::V4(p), e))),
            ),
            (Prefixes::V6(t), IpNet::V6(n)) => Box::new(
                t.children(n)
                    .flat_map(|(p, es)| es.iter().map(move |e| (IpNet::V6(p), e))),
            ),
            _ => Box::new(std::iter::empty()),
        }
    }

    /// The route the kernel's `fib_table_lookup` would return for `addr` with `tos`:
    /// the longest matching prefix that has a route for this TOS, lowest metric first.
    pub fn lookup(&self, addr: IpAddr, tos: u8) -> TableLookup<'_> {
        self.lookup_by(addr, tos, |_| true)
    }

    /// [`RouteTable::lookup`] over the routes `accept` lets through: the others are
    /// passed over as if absent (the kernel's output-device filter, `fib_lookup_good_nhc`).
    pub fn lookup_by(
        &self,
        addr: IpAddr,
        tos: u8,
        accept: impl Fn(&Entry) -> bool,
    ) -> TableLookup<'_> {
        fn pick<'e>(
            es: &'e Entries,
            tos: u8,
            accept: &impl Fn(&Entry) -> bool,
        ) -> Option<&'e Entry> {
            es.iter()
                .find(|e| (e.tos == 0 || e.tos == tos) && accept(e))
        }
        // cover() walks from the shortest prefix to the longest: keep the last match.
        let found = match (&self.prefixes, addr) {
            (Prefixes::V4(t), IpAddr::V4(a)) => t
                .cover(&Ipv4Net::from(a))
                .filter_map(|(p, es)| pick(es, tos, &accept).map(|e| (IpNet::V4(p), e)))
                .last(),
            (Prefixes::V6(t), IpAddr::V6(a)) => t
                .cover(&Ipv6Net::from(a))
                .filter_map(|(p, es)| pick(es, 0, &accept).map(|e| (IpNet::V6(p), e)))
                .last(),
            _ => None,
        };
        match found {
            Some((_, e)) if e.attrs.kind == rtn::THROW => TableLookup::Throw,
            Some((net, e)) => TableLookup::Route(net, e),
            None => TableLookup::None,
        }
    }
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
    /// does with the default rules: a `throw` route moves on to the next table.
    pub fn lookup(&self, addr: IpAddr, tables: &[u32], tos: u8) -> Option<(u32, IpNet, &Entry)> {
        let family = Family::of(&addr);
        for &id in tables {
            if let Some(t) = self.table(family, id) {
                match t.lookup(addr, tos) {
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
        use crate::model::HopId;
        assert_eq!(std::mem::size_of::<Entry>(), 24);
        let mut t = RouteTable::new(Family::V6);
        let net: IpNet = "2001:db8::/32".parse().unwrap();
        let subs = [
            SubKey {
                priority: 5,
                tos: 0,
                src: Some("2001:db8:1::/48".parse().unwrap()),
                hop: None,
            },
            SubKey {
                priority: 5,
                tos: 0,
                src: None,
                hop: Some(HopId::Dev(7)),
            },
            SubKey {
                priority: 5,
                tos: 0,
                src: None,
                hop: Some(HopId::Gateway("fe80::1".parse().unwrap(), 3)),
            },
            SubKey {
                priority: 1,
                tos: 0,
                src: None,
                hop: Some(HopId::Object(9)),
            },
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
        let unknown = SubKey {
            priority: 5,
            tos: 0,
            src: None,
            hop: Some(HopId::Dev(12345)),
        };
        assert!(t.get_entry(&net, &unknown).is_none());
        assert!(t.remove(&net, &subs[2]).is_some());
        assert_eq!(t.len(), 3);
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
                expected.sort_by_key(|(n, s)| (n.network(), n.prefix_len(), *s));
                prop_assert_eq!(listed, expected);
                for a in addrs.into_iter().chain([0x0a01_0181, 0xffff_ffff, 0]) {
                    let addr = IpAddr::V4(Ipv4Addr::from(a));
                    let best = m
                        .iter()
                        .filter(|((n, s), _)| n.contains(&addr) && (s.tos == 0 || s.tos == tos))
                        .max_by(|((n1, s1), _), ((n2, s2), _)| n1.prefix_len().cmp(&n2.prefix_len()).then(s2.cmp(s1)));
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
