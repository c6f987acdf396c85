//! The prefixes of one (family, table) and their routes: a hash index on the exact
//! prefix, which is all the event path asks for (insert, change, remove one prefix).
//!
//! The other readers get what they need from that index: covering prefixes (longest
//! match) by probing the prefix lengths the table holds, narrow `within` queries by
//! probing the few prefixes below them, and the (address, length) order by a sort made
//! on demand and kept until a prefix comes or goes. It replaced prefix-trie's
//! `PrefixMap`, whose insert of a new prefix cost the event path ~0.45 µs (44% of the
//! core thread during a 1M-route load, BENCHMARKS.md "CPU per change").

use std::hash::BuildHasher;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

use hashbrown::HashTable;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use rustc_hash::FxBuildHasher;

use super::Entries;

/// A prefix of one family, as the store keys it (host bits cleared).
pub trait Net: Copy + Ord + Into<IpNet> + Send + Sync + 'static {
    const BITS: u8;
    fn length(&self) -> u8;
    /// The prefix of length `len` (≤ this one's) holding this one.
    fn cut(&self, len: u8) -> Self;
    /// The two prefixes one bit longer (`None` for a host prefix).
    fn halves(&self) -> Option<(Self, Self)>;
    fn key_hash(&self) -> u64;
}

impl Net for Ipv4Net {
    const BITS: u8 = 32;
    fn length(&self) -> u8 {
        self.prefix_len()
    }
    fn cut(&self, len: u8) -> Self {
        let a = u32::from(self.addr());
        let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
        Ipv4Net::new_assert(Ipv4Addr::from(a & mask), len)
    }
    fn halves(&self) -> Option<(Self, Self)> {
        let len = self.prefix_len();
        (len < 32).then(|| {
            let a = u32::from(self.network());
            let b = a | 1 << (31 - len);
            (
                Ipv4Net::new_assert(Ipv4Addr::from(a), len + 1),
                Ipv4Net::new_assert(Ipv4Addr::from(b), len + 1),
            )
        })
    }
    fn key_hash(&self) -> u64 {
        FxBuildHasher
            .hash_one(u64::from(u32::from(self.addr())) << 8 | u64::from(self.prefix_len()))
    }
}

impl Net for Ipv6Net {
    const BITS: u8 = 128;
    fn length(&self) -> u8 {
        self.prefix_len()
    }
    fn cut(&self, len: u8) -> Self {
        let a = u128::from(self.addr());
        let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
        Ipv6Net::new_assert(Ipv6Addr::from(a & mask), len)
    }
    fn halves(&self) -> Option<(Self, Self)> {
        let len = self.prefix_len();
        (len < 128).then(|| {
            let a = u128::from(self.network());
            let b = a | 1 << (127 - len);
            (
                Ipv6Net::new_assert(Ipv6Addr::from(a), len + 1),
                Ipv6Net::new_assert(Ipv6Addr::from(b), len + 1),
            )
        })
    }
    fn key_hash(&self) -> u64 {
        FxBuildHasher.hash_one((u128::from(self.addr()), self.prefix_len()))
    }
}

/// Below this many levels a `within` query probes every prefix under it (at most
/// 2^(levels+1) - 1, only at the lengths the table holds) instead of sorting the table:
/// what the control socket's `show PREFIX` asks while routes stream in.
const PROBE_LEVELS: u8 = 10;

/// One table's prefixes (see the module doc).
pub struct PrefixStore<P> {
    /// Dense, in no particular order: removal moves the last slot into the hole.
    slots: Vec<(P, Entries)>,
    /// Slot numbers, hashed by their prefix.
    index: HashTable<u32>,
    /// How many prefixes of each length the table holds: covering walks probe only these.
    lens: Box<[u32]>,
    /// Slot numbers in (address, length) order; dropped when a prefix comes or goes.
    order: OnceLock<Box<[u32]>>,
}

impl<P: Net> Default for PrefixStore<P> {
    fn default() -> Self {
        PrefixStore {
            slots: Vec::new(),
            index: HashTable::new(),
            lens: vec![0; usize::from(P::BITS) + 1].into_boxed_slice(),
            order: OnceLock::new(),
        }
    }
}

impl<P: Net> PrefixStore<P> {
    /// Number of prefixes.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    fn slot(&self, p: &P) -> Option<usize> {
        let slots = &self.slots;
        self.index
            .find(p.key_hash(), |&i| slots[i as usize].0 == *p)
            .map(|&i| i as usize)
    }

    pub fn get(&self, p: &P) -> Option<&Entries> {
        let p = p.cut(p.length());
        self.slot(&p).map(|i| &self.slots[i].1)
    }

    pub fn get_mut(&mut self, p: &P) -> Option<&mut Entries> {
        let p = p.cut(p.length());
        self.slot(&p).map(|i| &mut self.slots[i].1)
    }

    /// The entries of `p`, added empty if the prefix is new.
    pub fn entry(&mut self, p: P) -> &mut Entries {
        let p = p.cut(p.length());
        let h = p.key_hash();
        let PrefixStore {
            slots,
            index,
            lens,
            order,
        } = self;
        let i = match index.find(h, |&i| slots[i as usize].0 == p) {
            Some(&i) => i as usize,
            None => {
                let i = slots.len();
                let n = u32::try_from(i).expect("fewer than 2^32 prefixes in a table");
                slots.push((p, Entries::new()));
                index.insert_unique(h, n, |&j| slots[j as usize].0.key_hash());
                lens[usize::from(p.length())] += 1;
                order.take();
                i
            }
        };
        &mut slots[i].1
    }

    /// Removes `p` with its entries.
    pub fn remove(&mut self, p: &P) -> Option<Entries> {
        let p = p.cut(p.length());
        let PrefixStore {
            slots,
            index,
            lens,
            order,
        } = self;
        let found = index
            .find_entry(p.key_hash(), |&i| slots[i as usize].0 == p)
            .ok()?;
        let i = *found.get() as usize;
        found.remove();
        let last = slots.len() - 1;
        if i != last {
            // The last slot moves into the hole: repoint its index entry.
            let moved = slots[last].0;
            let at = index
                .find_mut(moved.key_hash(), |&j| j as usize == last)
                .expect("every slot is indexed");
            *at = i as u32;
        }
        let (_, es) = slots.swap_remove(i);
        lens[usize::from(p.length())] -= 1;
        order.take();
        Some(es)
    }

    /// Calls `f` on every prefix's entries (in no particular order) and drops the
    /// prefixes left empty.
    pub fn retain_entries(&mut self, mut f: impl FnMut(&P, &mut Entries)) {
        let mut emptied = false;
        for (p, es) in self.slots.iter_mut() {
            f(p, es);
            emptied |= es.is_empty();
        }
        if emptied {
            self.slots.retain(|(_, es)| !es.is_empty());
            self.reindex();
        }
    }

    fn reindex(&mut self) {
        let PrefixStore {
            slots,
            index,
            lens,
            order,
        } = self;
        index.clear();
        lens.iter_mut().for_each(|n| *n = 0);
        for (i, (p, _)) in slots.iter().enumerate() {
            index.insert_unique(p.key_hash(), i as u32, |&j| slots[j as usize].0.key_hash());
            lens[usize::from(p.length())] += 1;
        }
        order.take();
    }

    /// Every prefix with its entries, in no particular order (slot order: stable until
    /// a prefix comes or goes).
    pub fn slots(&self) -> &[(P, Entries)] {
        &self.slots
    }

    fn order(&self) -> &[u32] {
        self.order.get_or_init(|| {
            // Sorted by value, not through the slots: one pass over them, then a sort
            // of contiguous pairs.
            let mut keyed: Vec<(P, u32)> = self
                .slots
                .iter()
                .enumerate()
                .map(|(i, (p, _))| (*p, i as u32))
                .collect();
            keyed.sort_unstable_by_key(|&(p, _)| p);
            keyed.into_iter().map(|(_, i)| i).collect()
        })
    }

    /// Every prefix with its entries, in (address, length) order.
    pub fn iter(&self) -> impl Iterator<Item = (P, &Entries)> + '_ {
        self.order().iter().map(|&i| {
            let (p, es) = &self.slots[i as usize];
            (*p, es)
        })
    }

    /// Prefixes inside `net` (including `net` itself) in (address, length) order.
    pub fn within(&self, net: &P) -> Box<dyn Iterator<Item = (P, &Entries)> + '_> {
        let net = net.cut(net.length());
        let deepest = (net.length()..=P::BITS)
            .rev()
            .find(|&l| self.lens[usize::from(l)] > 0);
        let Some(deepest) = deepest else {
            return Box::new(std::iter::empty());
        };
        if self.order.get().is_none() && deepest - net.length() <= PROBE_LEVELS {
            let mut out = Vec::new();
            self.probe_below(net, deepest, &mut out);
            return Box::new(out.into_iter());
        }
        let order = self.order();
        // In (address, length) order the prefixes inside `net` are contiguous: they start
        // at `net` itself and run while their address stays inside it.
        let start = order.partition_point(|&i| self.slots[i as usize].0 < net);
        let end_addr = broadcast(&net);
        Box::new(
            order[start..]
                .iter()
                .map(|&i| {
                    let (p, es) = &self.slots[i as usize];
                    (*p, es)
                })
                .take_while(move |(p, _)| {
                    let n: IpNet = (*p).into();
                    n.addr() <= end_addr
                }),
        )
    }

    /// Pre-order walk of the prefixes under `net` down to length `deepest`, probing the
    /// index at the lengths the table holds: (address, length) order.
    fn probe_below<'a>(&'a self, net: P, deepest: u8, out: &mut Vec<(P, &'a Entries)>) {
        if self.lens[usize::from(net.length())] > 0 {
            if let Some(i) = self.slot(&net) {
                out.push((net, &self.slots[i].1));
            }
        }
        if net.length() < deepest {
            if let Some((a, b)) = net.halves() {
                self.probe_below(a, deepest, out);
                self.probe_below(b, deepest, out);
            }
        }
    }

    /// Prefixes that contain `net` (including `net` itself), shortest first.
    pub fn covering(&self, net: &P) -> impl Iterator<Item = (P, &Entries)> + '_ {
        let net = *net;
        (0..=net.length())
            .filter(|&l| self.lens[usize::from(l)] > 0)
            .filter_map(move |l| self.probe(net.cut(l)))
    }

    /// Prefixes that contain `net` (including `net` itself), longest first: a longest
    /// match stops at the first it can use.
    pub fn covering_longest_first(&self, net: &P) -> impl Iterator<Item = (P, &Entries)> + '_ {
        let net = *net;
        (0..=net.length())
            .rev()
            .filter(|&l| self.lens[usize::from(l)] > 0)
            .filter_map(move |l| self.probe(net.cut(l)))
    }

    fn probe(&self, p: P) -> Option<(P, &Entries)> {
        self.slot(&p).map(|i| (p, &self.slots[i].1))
    }

    /// Heap bytes of the slots, the index and the order (if built).
    pub fn heap_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<(P, Entries)>()
            + self.index.allocation_size()
            + self.lens.len() * 4
            + self.order.get().map_or(0, |o| o.len() * 4)
    }
}

/// The last address of `net`.
fn broadcast<P: Net>(net: &P) -> std::net::IpAddr {
    let n: IpNet = (*net).into();
    n.broadcast()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fib::Entry;
    use crate::model::{RouteAttrs, SubKey};
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    fn es(tag: u32) -> Entries {
        let mut e = Entries::new();
        e.push(Entry::new(
            SubKey::metric(tag),
            Arc::new(RouteAttrs::default()),
            0,
        ));
        e
    }

    fn tag(es: &Entries) -> u32 {
        es[0].priority()
    }

    #[derive(Debug, Clone)]
    enum Op {
        Put(u32, u8),
        Del(u32, u8),
        Query(u32, u8),
        Sweep(u32),
    }

    fn net(a: u32, l: u8) -> Ipv4Net {
        Ipv4Net::new(Ipv4Addr::from(a), l).unwrap().trunc()
    }

    // Addresses drawn from a small space, so prefixes nest, repeat and get removed.
    fn op() -> impl Strategy<Value = Op> {
        let a = (0u32..64).prop_map(|x| x << 24 | (x & 7) << 13);
        let l = prop::sample::select(vec![0u8, 1, 2, 4, 8, 16, 17, 20, 24, 30, 32]);
        prop_oneof![
            4 => (a.clone(), l.clone()).prop_map(|(a, l)| Op::Put(a, l)),
            2 => (a.clone(), l.clone()).prop_map(|(a, l)| Op::Del(a, l)),
            2 => (a, l).prop_map(|(a, l)| Op::Query(a, l)),
            1 => (0u32..4).prop_map(Op::Sweep),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// Against a BTreeMap (ordered by (address, length) like the store's order):
        /// exact gets, ordered iteration, within (probed and sorted), covering both ways.
        #[test]
        fn store_matches_an_ordered_map(ops in prop::collection::vec(op(), 1..80)) {
            let mut s = PrefixStore::<Ipv4Net>::default();
            let mut m: BTreeMap<Ipv4Net, u32> = BTreeMap::new();
            for (k, op) in ops.iter().enumerate() {
                match *op {
                    Op::Put(a, l) => {
                        *s.entry(net(a, l)) = es(k as u32);
                        m.insert(net(a, l), k as u32);
                    }
                    Op::Del(a, l) => {
                        prop_assert_eq!(s.remove(&net(a, l)).map(|e| tag(&e)), m.remove(&net(a, l)));
                    }
                    Op::Sweep(r) => {
                        s.retain_entries(|_, e| if tag(e) % 4 == r { e.clear() });
                        m.retain(|_, t| *t % 4 != r);
                    }
                    Op::Query(a, l) => {
                        let q = net(a, l);
                        let want: Vec<(Ipv4Net, u32)> =
                            m.iter().filter(|(p, _)| q.contains(*p)).map(|(p, t)| (*p, *t)).collect();
                        let got: Vec<(Ipv4Net, u32)> = s.within(&q).map(|(p, e)| (p, tag(e))).collect();
                        prop_assert_eq!(&got, &want);
                        // The same through the sorted order, once it is built.
                        let _ = s.iter().count();
                        let got: Vec<(Ipv4Net, u32)> = s.within(&q).map(|(p, e)| (p, tag(e))).collect();
                        prop_assert_eq!(&got, &want);
                        let cover: Vec<(Ipv4Net, u32)> =
                            m.iter().filter(|(p, _)| p.contains(&q)).map(|(p, t)| (*p, *t)).collect();
                        let got: Vec<(Ipv4Net, u32)> = s.covering(&q).map(|(p, e)| (p, tag(e))).collect();
                        prop_assert_eq!(&got, &cover);
                        let mut rev: Vec<(Ipv4Net, u32)> =
                            s.covering_longest_first(&q).map(|(p, e)| (p, tag(e))).collect();
                        rev.reverse();
                        prop_assert_eq!(&rev, &cover);
                    }
                }
                prop_assert_eq!(s.len(), m.len());
                for (p, t) in &m {
                    prop_assert_eq!(s.get(p).map(tag), Some(*t));
                }
            }
            let all: Vec<(Ipv4Net, u32)> = s.iter().map(|(p, e)| (p, tag(e))).collect();
            let want: Vec<(Ipv4Net, u32)> = m.into_iter().collect();
            prop_assert_eq!(all, want);
        }
    }

    #[test]
    fn host_bits_are_cleared_and_v6_nests() {
        let mut s = PrefixStore::<Ipv6Net>::default();
        *s.entry("2001:db8::1/32".parse().unwrap()) = es(1);
        *s.entry("2001:db8:1::/48".parse().unwrap()) = es(2);
        *s.entry("::/0".parse().unwrap()) = es(3);
        let q: Ipv6Net = "2001:db8:1::5/128".parse().unwrap();
        let got: Vec<u32> = s.covering_longest_first(&q).map(|(_, e)| tag(e)).collect();
        assert_eq!(got, [2, 1, 3]);
        assert_eq!(s.get(&"2001:db8::/32".parse().unwrap()).map(tag), Some(1));
        let inside: Vec<String> = s
            .within(&"2001:db8::/32".parse().unwrap())
            .map(|(p, _)| p.to_string())
            .collect();
        assert_eq!(inside, ["2001:db8::/32", "2001:db8:1::/48"]);
    }
}
