//! Read-optimised snapshots of the FIB: a [`Poptrie`] per table over each prefix's best
//! route, for lock-free lookups that agree with [`Fib::lookup`].
//!
//! A snapshot is immutable and carries the FIB version it was taken at; readers publish
//! and load it through an `Arc` swap (`arc-swap`), so a lookup never waits for the writer
//! and never sees a half-applied change. Whether to use it is the reader's call:
//! [`FastFib::is_current`] says whether the FIB changed since, and a stale snapshot is
//! bypassed for the exact path rather than served (the daemon answers as of now).
//!
//! Why rebuild rather than update in place: rebuilding 1M IPv4 prefixes takes a few
//! hundred milliseconds off the writer's lock (BENCHMARKS.md), while an in-place update
//! of a leaf-compressed poptrie would need copy-on-write of every node on the path for
//! readers to stay consistent. Taking the snapshot ([`Fib::extract`]) is the only part
//! that holds the FIB's read lock.
//!
//! What the fast path cannot express falls back to the exact one: lookups with a
//! nonzero TOS in a table that has TOS-specific routes ([`Lookup::Exact`]).
//! The values in the trie are `class << 8 | prefix length`: a class is a distinct
//! (attributes, sub-key) of best routes, a few thousand for a full table, so the
//! snapshot needs no per-prefix array: the matched prefix is the address masked to the
//! length.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::poptrie::{Poptrie, NONE};
use super::{Entry, Fib, Usable};
use crate::model::{rtn, Family};

/// Most classes one table can have (values are 31 bits, 8 of them the length).
const MAX_CLASSES: usize = (NONE >> 8) as usize;

enum Trie {
    V4(Poptrie<u32>),
    V6(Poptrie<u128>),
}

/// One table of a snapshot.
pub struct FastTable {
    trie: Trie,
    /// Distinct best routes without their prefix (stamp 0).
    classes: Vec<Entry>,
    /// The table has routes with a nonzero TOS: only TOS-0 lookups are served here.
    has_tos: bool,
}

/// Prefixes and classes of one table, taken under the FIB's lock ([`Fib::extract`]).
pub struct Extracted {
    items: ExtractedItems,
    classes: Vec<Entry>,
    has_tos: bool,
}

enum ExtractedItems {
    V4(Vec<(u32, u8, u32)>),
    V6(Vec<(u128, u8, u32)>),
    /// Too many distinct classes for the value encoding: exact path only.
    TooMany,
}

/// A taken but not yet built snapshot.
pub struct Extract {
    version: u64,
    counter: Arc<AtomicU64>,
    tables: Vec<((Family, u32), Extracted)>,
}

/// A read-optimised, immutable view of a whole [`Fib`] at one version.
pub struct FastFib {
    version: u64,
    counter: Arc<AtomicU64>,
    tables: BTreeMap<(Family, u32), FastTable>,
    /// Tables with too many classes to encode: lookups through them take the exact path.
    exact_only: Vec<(Family, u32)>,
}

/// What [`FastFib::lookup`] found.
#[derive(Debug, Clone, Copy)]
pub enum Lookup<'a> {
    /// The route (table, prefix, best entry of the prefix).
    Route(u32, IpNet, &'a Entry),
    /// No table has a route.
    None,
    /// The snapshot cannot answer this one (TOS routes): ask [`Fib::lookup`].
    Exact,
}

impl Fib {
    /// Takes what a [`FastFib`] is built from: each table's prefixes with their best
    /// TOS-0 route. O(routes); the only part of a rebuild that needs the FIB itself.
    /// [`ExtractCursor`] takes the same in pieces, for callers that must not hold the
    /// FIB's lock that long.
    pub fn extract(&self) -> Extract {
        self.extract_with(&mut |_, _| Usable::Yes)
    }

    /// [`Fib::extract`] taking, for each prefix, its first route that `usable` accepts
    /// (a prefix with none is left out, so lookups fall through to shorter ones, as the
    /// kernel's do past dead routes).
    pub fn extract_with(&self, usable: &mut dyn FnMut(Family, &Entry) -> Usable) -> Extract {
        let mut cursor = ExtractCursor::new(self);
        loop {
            match cursor.step_with(self, usize::MAX, usable) {
                Step::Done(x) => return x,
                Step::More => continue,
                Step::Changed => unreachable!("the FIB cannot change while borrowed"),
            }
        }
    }
}

/// A resumable [`Fib::extract`]. Each [`ExtractCursor::step`] takes a budget of
/// prefixes (a range of each table's storage slots) under the caller's read lock; between
/// steps the caller releases the lock, so the writer waits for one step at most, never
/// for the whole table (a full table's extract holds it for about 200 ms, BENCHMARKS.md).
/// The FIB's version is checked at every step: if it moved, the slots already taken may
/// disagree with the rest, and the cursor reports [`Step::Changed`] (start again later).
pub struct ExtractCursor {
    version: u64,
    counter: Arc<AtomicU64>,
    keys: Vec<(Family, u32)>,
    /// Next table (index into `keys`).
    table: usize,
    /// Next slot of that table.
    slot: usize,
    current: Option<TableExtractor>,
    done: Vec<((Family, u32), Extracted)>,
}

/// What one [`ExtractCursor::step`] got to.
pub enum Step {
    /// More to take: call again (after releasing the lock, if you hold one).
    More,
    Done(Extract),
    /// The FIB changed since the cursor started: its pieces cannot make one snapshot.
    Changed,
}

impl ExtractCursor {
    pub fn new(fib: &Fib) -> ExtractCursor {
        ExtractCursor {
            version: fib.version(),
            counter: fib.version_counter(),
            keys: fib.tables().map(|(k, _)| k).collect(),
            table: 0,
            slot: 0,
            current: None,
            done: Vec::new(),
        }
    }

    /// Takes prefixes from `fib` (the FIB the cursor was made from) until about `budget`
    /// prefixes have been visited.
    pub fn step(&mut self, fib: &Fib, budget: usize) -> Step {
        self.step_with(fib, budget, &mut |_, _| Usable::Yes)
    }

    /// [`ExtractCursor::step`] with a liveness predicate (see [`Fib::extract_with`]).
    pub fn step_with(
        &mut self,
        fib: &Fib,
        budget: usize,
        usable: &mut dyn FnMut(Family, &Entry) -> Usable,
    ) -> Step {
        if fib.version() != self.version || !Arc::ptr_eq(&fib.version, &self.counter) {
            return Step::Changed;
        }
        let mut left = budget.max(1);
        while let Some(&key @ (family, id)) = self.keys.get(self.table) {
            let Some(t) = fib.table(family, id) else {
                return Step::Changed;
            };
            let x = self
                .current
                .get_or_insert_with(|| TableExtractor::new(family, t.prefixes()));
            let end = t.slot_count();
            if self.slot < end {
                if left == 0 {
                    return Step::More;
                }
                let to = end.min(self.slot.saturating_add(left));
                for (p, es) in t.slot_entries(self.slot..to) {
                    x.add(p, es, usable);
                }
                left -= to - self.slot;
                self.slot = to;
                continue;
            }
            let x = self.current.take().expect("extractor of the current table");
            self.done.push((key, x.finish()));
            self.table += 1;
            self.slot = 0;
        }
        Step::Done(Extract {
            version: self.version,
            counter: self.counter.clone(),
            tables: std::mem::take(&mut self.done),
        })
    }
}

/// One table's prefixes and classes, as they are taken.
struct TableExtractor {
    family: Family,
    items: ExtractedItems,
    classes: Vec<Entry>,
    // This runs under the FIB's read lock, so it is kept lean: neighbouring prefixes
    // mostly share a class (one-entry memo), and FxHash otherwise.
    ids: rustc_hash::FxHashMap<(usize, u32, u32, u8), u32>,
    last: Option<((usize, u32, u32, u8), u32)>,
    has_tos: bool,
    too_many: bool,
}

impl TableExtractor {
    fn new(family: Family, prefixes: usize) -> TableExtractor {
        TableExtractor {
            family,
            items: match family {
                Family::V4 => ExtractedItems::V4(Vec::with_capacity(prefixes)),
                Family::V6 => ExtractedItems::V6(Vec::with_capacity(prefixes)),
            },
            classes: Vec::new(),
            ids: Default::default(),
            last: None,
            has_tos: false,
            too_many: false,
        }
    }

    fn add(&mut self, net: IpNet, es: &[Entry], usable: &mut dyn FnMut(Family, &Entry) -> Usable) {
        self.has_tos |= es.iter().any(|e| e.tos != 0);
        // The route a TOS-0 lookup takes here, as RouteTable::lookup_with picks it.
        let mut best = None;
        for e in es.iter().filter(|e| e.tos == 0 && e.ext.raw() == 0) {
            if crate::model::rtn::is_reject(e.attrs.kind) {
                best = Some(e);
                break;
            }
            match usable(self.family, e) {
                Usable::Yes => {
                    best = Some(e);
                    break;
                }
                Usable::No => continue,
                Usable::NoSkipPrefix => break,
            }
        }
        let Some(e) = best else {
            return;
        };
        let c = self.class_of(e);
        self.too_many |= c as usize >= MAX_CLASSES;
        let v = c << 8 | u32::from(net.prefix_len());
        match (&mut self.items, net) {
            (ExtractedItems::V4(items), IpNet::V4(n)) => {
                items.push((u32::from(n.network()), n.prefix_len(), v))
            }
            (ExtractedItems::V6(items), IpNet::V6(n)) => {
                items.push((u128::from(n.network()), n.prefix_len(), v))
            }
            _ => {}
        }
    }

    fn class_of(&mut self, e: &Entry) -> u32 {
        let key = (
            Arc::as_ptr(&e.attrs) as usize,
            e.priority,
            e.ext.raw(),
            e.tos,
        );
        if let Some((k, c)) = self.last {
            if k == key {
                return c;
            }
        }
        let classes = &mut self.classes;
        let c = *self.ids.entry(key).or_insert_with(|| {
            classes.push(Entry {
                stamp: 0,
                ..e.clone()
            });
            classes.len() as u32 - 1
        });
        self.last = Some((key, c));
        c
    }

    fn finish(self) -> Extracted {
        Extracted {
            items: if self.too_many {
                ExtractedItems::TooMany
            } else {
                self.items
            },
            classes: self.classes,
            has_tos: self.has_tos,
        }
    }
}

impl Extract {
    /// Builds the tries (no lock needed).
    pub fn build(self) -> FastFib {
        let mut tables = BTreeMap::new();
        let mut exact_only = Vec::new();
        for (key, x) in self.tables {
            let trie = match x.items {
                ExtractedItems::V4(v) => Trie::V4(Poptrie::build(v)),
                ExtractedItems::V6(v) => Trie::V6(Poptrie::build(v)),
                // Left out: lookups through this table take the exact path.
                ExtractedItems::TooMany => {
                    exact_only.push(key);
                    continue;
                }
            };
            tables.insert(
                key,
                FastTable {
                    trie,
                    classes: x.classes,
                    has_tos: x.has_tos,
                },
            );
        }
        FastFib {
            version: self.version,
            counter: self.counter,
            tables,
            exact_only,
        }
    }
}

/// The key type of one family's tries, for [`FastFib::lookup_many`].
trait TrieKey: super::poptrie::Key {
    fn trie(t: &Trie) -> Option<&Poptrie<Self>>;
    /// The prefix of length `len` covering the key.
    fn net(self, len: u8) -> IpNet;
}

impl TrieKey for u32 {
    fn trie(t: &Trie) -> Option<&Poptrie<u32>> {
        match t {
            Trie::V4(t) => Some(t),
            Trie::V6(_) => None,
        }
    }
    fn net(self, len: u8) -> IpNet {
        IpNet::V4(
            Ipv4Net::new(self.into(), len.min(32))
                .unwrap_or_default()
                .trunc(),
        )
    }
}

impl TrieKey for u128 {
    fn trie(t: &Trie) -> Option<&Poptrie<u128>> {
        match t {
            Trie::V6(t) => Some(t),
            Trie::V4(_) => None,
        }
    }
    fn net(self, len: u8) -> IpNet {
        IpNet::V6(
            Ipv6Net::new(self.into(), len.min(128))
                .unwrap_or_default()
                .trunc(),
        )
    }
}

impl FastTable {
    /// Longest prefix with a TOS-0 route: (prefix, its best entry).
    #[inline]
    fn lookup(&self, addr: IpAddr) -> Option<(IpNet, &Entry)> {
        let (v, net) = match (&self.trie, addr) {
            (Trie::V4(t), IpAddr::V4(a)) => {
                let v = t.lookup(u32::from(a))?;
                let net = Ipv4Net::new(a, v as u8).ok()?.trunc();
                (v, IpNet::V4(net))
            }
            (Trie::V6(t), IpAddr::V6(a)) => {
                let v = t.lookup(u128::from(a))?;
                let net = Ipv6Net::new(a, v as u8).ok()?.trunc();
                (v, IpNet::V6(net))
            }
            _ => return None,
        };
        Some((net, self.classes.get((v >> 8) as usize)?))
    }

    pub fn heap_bytes(&self) -> usize {
        let t = match &self.trie {
            Trie::V4(t) => t.heap_bytes(),
            Trie::V6(t) => t.heap_bytes(),
        };
        t + self.classes.capacity() * std::mem::size_of::<Entry>()
    }
}

impl FastFib {
    /// The FIB version this snapshot shows.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Whether the FIB it was taken from has not changed since (lock-free).
    pub fn is_current(&self) -> bool {
        self.counter.load(Ordering::Acquire) == self.version
    }

    /// [`Fib::lookup`] on this snapshot: through `tables` in order, `throw` moving on.
    pub fn lookup(&self, addr: IpAddr, tables: &[u32], tos: u8) -> Lookup<'_> {
        let family = Family::of(&addr);
        for &id in tables {
            let Some(t) = self.tables.get(&(family, id)) else {
                // Either absent from the FIB (empty) or left out (too many classes).
                if self.left_out(family, id) {
                    return Lookup::Exact;
                }
                continue;
            };
            if tos != 0 && t.has_tos {
                return Lookup::Exact;
            }
            match t.lookup(addr) {
                Some((_, e)) if e.attrs.kind == rtn::THROW => continue,
                Some((net, e)) => return Lookup::Route(id, net, e),
                None => continue,
            }
        }
        Lookup::None
    }

    /// [`FastFib::lookup`] of every address in `addrs` (same answers, in order, into
    /// `out`), several times faster for large batches: each table is found once per
    /// batch, and each trie is walked in one tight loop over the addresses still
    /// unanswered, so the cache misses of independent walks overlap instead of queueing
    /// behind the caller's per-address work (BENCHMARKS.md).
    pub fn lookup_many<'a>(
        &'a self,
        addrs: &[IpAddr],
        tables: &[u32],
        tos: u8,
        out: &mut Vec<Lookup<'a>>,
    ) {
        out.clear();
        out.resize(addrs.len(), Lookup::None);
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for (i, a) in addrs.iter().enumerate() {
            match a {
                IpAddr::V4(a) => v4.push((i, u32::from(*a))),
                IpAddr::V6(a) => v6.push((i, u128::from(*a))),
            }
        }
        self.walk_tables(Family::V4, v4, tables, tos, out);
        self.walk_tables(Family::V6, v6, tables, tos, out);
    }

    /// `pending` (output index, key) through `tables` in order, as [`FastFib::lookup`].
    fn walk_tables<'a, K: TrieKey>(
        &'a self,
        family: Family,
        mut pending: Vec<(usize, K)>,
        tables: &[u32],
        tos: u8,
        out: &mut [Lookup<'a>],
    ) {
        let mut values: Vec<u32> = Vec::with_capacity(pending.len());
        let mut keys: Vec<K> = Vec::with_capacity(pending.len());
        let mut exact = false;
        for &id in tables {
            if pending.is_empty() {
                return;
            }
            let Some(t) = self.tables.get(&(family, id)) else {
                if self.left_out(family, id) {
                    exact = true;
                    break;
                }
                continue;
            };
            if tos != 0 && t.has_tos {
                exact = true;
                break;
            }
            let Some(trie) = K::trie(&t.trie) else {
                continue;
            };
            keys.clear();
            keys.extend(pending.iter().map(|&(_, k)| k));
            values.clear();
            trie.lookup_many(&keys, &mut values);
            let mut kept = 0;
            for j in 0..pending.len() {
                let (i, k) = pending[j];
                let v = values[j];
                match t.classes.get((v >> 8) as usize) {
                    Some(e) if v != NONE && e.attrs.kind != rtn::THROW => {
                        out[i] = Lookup::Route(id, k.net(v as u8), e);
                    }
                    _ => {
                        pending[kept] = (i, k);
                        kept += 1;
                    }
                }
            }
            pending.truncate(kept);
        }
        // Stopped at a table the snapshot cannot answer for: the rest need the exact path.
        if exact {
            for (i, _) in pending {
                out[i] = Lookup::Exact;
            }
        }
    }

    /// Whether table `id` of `family` has routes (or was left out: unknown here).
    pub fn has_table(&self, family: Family, id: u32) -> bool {
        self.tables.contains_key(&(family, id)) || self.left_out(family, id)
    }

    fn left_out(&self, family: Family, id: u32) -> bool {
        self.exact_only.contains(&(family, id))
    }

    /// Heap bytes of all tables.
    pub fn heap_bytes(&self) -> usize {
        self.tables.values().map(FastTable::heap_bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fib::DEFAULT_RULE_TABLES;
    use crate::model::{NextHop, RouteAttrs, SubKey};
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Upsert {
            table: u32,
            net: IpNet,
            priority: u32,
            tos: u8,
            kind: u8,
        },
        Remove {
            table: u32,
            net: IpNet,
            priority: u32,
            tos: u8,
        },
    }

    fn attrs(kind: u8) -> Arc<RouteAttrs> {
        Arc::new(RouteAttrs {
            protocol: 4,
            kind,
            nexthops: vec![NextHop::new(None, 2)].into(),
            ..Default::default()
        })
    }

    /// Prefixes clustered under one /4 (v4) or /4 (v6) so that they nest, with /0, host
    /// routes and everything between.
    fn net() -> impl Strategy<Value = IpNet> {
        prop_oneof![
            (any::<u32>(), 0u8..=32).prop_map(|(a, l)| {
                let a = 0x0a00_0000 | (a >> 8);
                IpNet::V4(Ipv4Net::new(a.into(), l).unwrap().trunc())
            }),
            (any::<u128>(), 0u8..=128).prop_map(|(a, l)| {
                let a = (0x2001u128 << 112) | (a >> 20);
                IpNet::V6(Ipv6Net::new(a.into(), l).unwrap().trunc())
            }),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        let table = prop_oneof![Just(253u32), Just(254), Just(255)];
        let tos = prop_oneof![4 => Just(0u8), 1 => Just(8)];
        let kind =
            prop_oneof![6 => Just(rtn::UNICAST), 1 => Just(rtn::THROW), 1 => Just(rtn::BLACKHOLE)];
        prop_oneof![
            3 => (table.clone(), net(), 0u32..3, tos.clone(), kind).prop_map(|(table, net, priority, tos, kind)| Op::Upsert { table, net, priority, tos, kind }),
            1 => (table, net(), 0u32..3, tos).prop_map(|(table, net, priority, tos)| Op::Remove { table, net, priority, tos }),
        ]
    }

    fn sub(priority: u32, tos: u8) -> SubKey {
        SubKey {
            tos,
            ..SubKey::metric(priority)
        }
    }

    fn apply(fib: &mut Fib, op: &Op) {
        match *op {
            Op::Upsert {
                table,
                net,
                priority,
                tos,
                kind,
            } => {
                let tos = if net.addr().is_ipv4() { tos } else { 0 };
                fib.table_mut(Family::of_net(&net), table)
                    .upsert(&net, Entry::new(sub(priority, tos), attrs(kind), 0));
            }
            Op::Remove {
                table,
                net,
                priority,
                tos,
            } => {
                let tos = if net.addr().is_ipv4() { tos } else { 0 };
                fib.table_mut(Family::of_net(&net), table)
                    .remove(&net, &sub(priority, tos));
            }
        }
    }

    /// Addresses at the edges of every prefix the ops named, plus some random ones.
    fn probes(ops: &[Op], extra: &[u32]) -> Vec<IpAddr> {
        let mut v = Vec::new();
        for op in ops {
            let (Op::Upsert { net, .. } | Op::Remove { net, .. }) = op;
            v.push(net.network());
            v.push(net.broadcast());
        }
        for &x in extra {
            v.push(IpAddr::V4((0x0a00_0000 | (x >> 8)).into()));
            v.push(IpAddr::V6(
                ((0x2001u128 << 112) | (u128::from(x) << 60)).into(),
            ));
        }
        v
    }

    /// Comparable form of a [`Lookup`] (the entry by address: the same one, not an equal one).
    fn id(l: &Lookup<'_>) -> Option<(u32, IpNet, usize)> {
        match l {
            Lookup::Route(t, net, e) => Some((*t, *net, *e as *const Entry as usize)),
            Lookup::None => None,
            Lookup::Exact => Some((u32::MAX, IpNet::default(), 0)),
        }
    }

    fn check(fib: &Fib, snap: &FastFib, addrs: &[IpAddr]) -> Result<(), TestCaseError> {
        let table_sets: [&[u32]; 3] = [&DEFAULT_RULE_TABLES, &[254], &[100]];
        // The batch form answers exactly as one lookup at a time, mixed families too.
        let mut many = Vec::new();
        for tables in table_sets {
            for tos in [0u8, 8] {
                snap.lookup_many(addrs, tables, tos, &mut many);
                prop_assert_eq!(many.len(), addrs.len());
                for (a, m) in addrs.iter().zip(&many) {
                    prop_assert_eq!(
                        id(m),
                        id(&snap.lookup(*a, tables, tos)),
                        "{} tos {}",
                        a,
                        tos
                    );
                }
            }
        }
        for &a in addrs {
            for tables in table_sets {
                for tos in [0u8, 8, 12] {
                    let exact = fib.lookup(a, tables, tos);
                    match snap.lookup(a, tables, tos) {
                        Lookup::Exact => prop_assert!(tos != 0, "exact fallback for tos 0 at {a}"),
                        Lookup::None => prop_assert!(
                            exact.is_none(),
                            "{a} tos {tos}: fast none, exact {exact:?}"
                        ),
                        Lookup::Route(t, net, e) => {
                            let Some((et, enet, ee)) = exact else {
                                return Err(TestCaseError::fail(format!(
                                    "{a}: fast {net}, exact none"
                                )));
                            };
                            prop_assert_eq!(
                                (t, net, e.sub()),
                                (et, enet, ee.sub()),
                                "{} tos {}",
                                a,
                                tos
                            );
                            prop_assert!(Arc::ptr_eq(&e.attrs, &ee.attrs));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// Churn: after every step of ops, a fresh snapshot answers like the exact FIB,
        /// and the previous snapshot knows it is stale.
        #[test]
        fn snapshot_agrees_with_exact_lookup_under_churn(
            steps in prop::collection::vec(prop::collection::vec(op(), 1..20), 1..6),
            extra in prop::collection::vec(any::<u32>(), 20),
        ) {
            let mut fib = Fib::default();
            let mut all = Vec::new();
            let mut prev: Option<FastFib> = None;
            for ops in &steps {
                for op in ops {
                    apply(&mut fib, op);
                }
                if let Some(p) = &prev {
                    prop_assert!(!p.is_current());
                }
                all.extend(ops.iter().cloned());
                let snap = fib.extract().build();
                prop_assert!(snap.is_current());
                check(&fib, &snap, &probes(&all, &extra))?;
                // Taken in tiny pieces, a few per step: the same answers.
                let mut c = ExtractCursor::new(&fib);
                let split = loop {
                    match c.step(&fib, 3) {
                        Step::More => continue,
                        Step::Done(x) => break x.build(),
                        Step::Changed => return Err(TestCaseError::fail("changed")),
                    }
                };
                check(&fib, &split, &probes(&all, &extra))?;
                prev = Some(snap);
            }
        }
    }

    /// Taken one piece per step, the extract is the same snapshot; a change between
    /// steps makes the cursor give up instead of mixing two versions.
    #[test]
    fn piecewise_extract_matches_and_notices_changes() {
        let mut fib = Fib::default();
        let ops: Vec<Op> = [
            "0.0.0.0/0",
            "10.0.0.0/7",
            "10.1.0.0/16",
            "200.1.2.3/32",
            "2001:db8::/32",
            "::/0",
            "2000::/3",
        ]
        .iter()
        .enumerate()
        .map(|(i, n)| Op::Upsert {
            table: 254,
            net: n.parse().unwrap(),
            priority: i as u32 % 2,
            tos: 0,
            kind: rtn::UNICAST,
        })
        .collect();
        for op in &ops {
            apply(&mut fib, op);
        }
        let mut c = ExtractCursor::new(&fib);
        let mut steps = 0;
        let snap = loop {
            steps += 1;
            match c.step(&fib, 1) {
                Step::More => continue,
                Step::Done(x) => break x.build(),
                Step::Changed => panic!("nothing changed"),
            }
        };
        assert!(steps > 1, "{steps} steps");
        check(&fib, &snap, &probes(&ops, &[1, 2, 3])).unwrap();

        let mut c = ExtractCursor::new(&fib);
        assert!(matches!(c.step(&fib, 1), Step::More));
        apply(&mut fib, &ops[2]);
        assert!(matches!(c.step(&fib, 1), Step::Changed));
    }

    #[test]
    fn dropped_fib_makes_snapshots_stale() {
        let fib = Fib::default();
        let snap = fib.extract().build();
        assert!(snap.is_current());
        drop(fib);
        assert!(!snap.is_current());
    }
}
