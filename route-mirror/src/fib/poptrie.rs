//! A read-optimised longest-prefix-match structure: a poptrie (Asai & Ohara,
//! SIGCOMM 2015) with 16-bit direct pointing, 6-bit strides and leaf compression.
//!
//! Why hand-written: the crates measured in `benches/fib/` (prefix-trie's tree-bitmap,
//! ip_network_table's treebitmap) are general mutable maps that return the matched prefix
//! and a reference to its value; a poptrie answers one question — which `u32` belongs to
//! the longest prefix covering an address — with one array read plus about one 24-byte
//! node and one popcount per 6 bits below /16, and is a few bytes per prefix. No
//! maintained poptrie crate exists on crates.io for Rust at the time of writing.
//!
//! The structure is immutable: it is built from a sorted prefix list (see [`Poptrie::build`])
//! and replaced whole, so readers holding one never see a half-applied change (publish
//! it through an `Arc` swap). Rebuilding 1M IPv4 prefixes takes a few hundred
//! milliseconds (BENCHMARKS.md), which is why the exact trie stays the source of truth.

use std::marker::PhantomData;

/// Address keys the poptrie works on: `u32` for IPv4, `u128` for IPv6.
pub trait Key: Copy + Ord + std::fmt::Debug {
    const BITS: u8;
    /// The `bits` bits of the key starting `depth` bits from the top, zero-padded past
    /// the end of the key. Requires `depth < BITS` and `bits <= 16`.
    fn chunk(self, depth: u8, bits: u8) -> usize;
    /// The key with everything past the first `len` bits cleared.
    fn mask(self, len: u8) -> Self;
}

impl Key for u32 {
    const BITS: u8 = 32;
    #[inline(always)]
    fn chunk(self, depth: u8, bits: u8) -> usize {
        ((self << depth) >> (32 - bits)) as usize
    }
    fn mask(self, len: u8) -> Self {
        if len == 0 {
            0
        } else {
            self & (u32::MAX << (32 - u32::from(len.min(32))))
        }
    }
}

impl Key for u128 {
    const BITS: u8 = 128;
    #[inline(always)]
    fn chunk(self, depth: u8, bits: u8) -> usize {
        ((self << depth) >> (128 - bits)) as usize
    }
    fn mask(self, len: u8) -> Self {
        if len == 0 {
            0
        } else {
            self & (u128::MAX << (128 - u32::from(len.min(128))))
        }
    }
}

/// Bits resolved by the direct-pointing array of a large table: 2^18 entries (1 MiB), as
/// in the poptrie paper; with IPv4's many /24s one node level then finishes most lookups.
const DIRECT_LARGE: u8 = 18;
/// Prefix count from which a table gets [`DIRECT_LARGE`]: small tables (local, policy
/// tables) would otherwise pay 1 MiB each for nothing.
const LARGE: usize = 1 << 15;
/// Direct bits of small tables (1 KiB).
const DIRECT_SMALL: u8 = 8;
/// Keys [`Poptrie::lookup_many`] walks in lockstep.
pub const LANES: usize = 8;
/// Bits per internal node (64 children: one `u64` bitmap).
const STRIDE: u8 = 6;
/// Direct-array entries with this bit point at a node; others are a leaf value.
const NODE: u32 = 1 << 31;
/// Leaf value meaning "no route". Values stored must be below it.
pub const NONE: u32 = NODE - 1;

#[derive(Debug, Clone, Copy, Default)]
struct Node {
    /// Bit i: slot i is an internal node.
    vector: u64,
    /// Bit i: leaf slot i starts a new run of equal leaves (leaf compression).
    leafvec: u64,
    /// First leaf of this node in `leaves`.
    base0: u32,
    /// First child of this node in `nodes`.
    base1: u32,
}

/// An immutable LPM table from prefixes of `K` to `u32` values (< [`NONE`]).
#[derive(Debug, Clone)]
pub struct Poptrie<K: Key> {
    direct: Box<[u32]>,
    direct_bits: u8,
    nodes: Vec<Node>,
    leaves: Vec<u32>,
    len: usize,
    _k: PhantomData<K>,
}

#[inline(always)]
fn upto(bitmap: u64, i: usize) -> u32 {
    (bitmap & (u64::MAX >> (63 - i))).count_ones()
}

impl<K: Key> Poptrie<K> {
    /// Builds from `prefixes` (key, length, value). Keys are masked to their length;
    /// for duplicate prefixes the last one wins; lengths past the key width are clamped;
    /// values at or above [`NONE`] are stored as "no route".
    pub fn build(prefixes: impl IntoIterator<Item = (K, u8, u32)>) -> Poptrie<K> {
        let mut items: Vec<(K, u8, u32)> = prefixes
            .into_iter()
            .map(|(k, l, v)| {
                let l = l.min(K::BITS);
                (k.mask(l), l, v.min(NONE))
            })
            .collect();
        // Stable sort keeps input order among duplicates; keep the last of each run.
        items.sort_by_key(|&(k, l, _)| (k, l));
        let mut dedup: Vec<(K, u8, u32)> = Vec::with_capacity(items.len());
        for it in items {
            match dedup.last_mut() {
                Some(last) if (last.0, last.1) == (it.0, it.1) => *last = it,
                _ => dedup.push(it),
            }
        }
        Self::build_sorted(&dedup)
    }

    /// Builds from prefixes already masked, sorted by (key, length) and unique.
    fn build_sorted(items: &[(K, u8, u32)]) -> Poptrie<K> {
        let bits = if items.len() >= LARGE {
            DIRECT_LARGE
        } else {
            DIRECT_SMALL
        };
        let mut direct = vec![NONE; 1 << bits].into_boxed_slice();
        // Sorted by (key, length), a covering prefix comes before what it covers, so
        // painting in order leaves each slot with its longest covering prefix.
        for &(k, l, v) in items.iter().filter(|it| it.1 <= bits) {
            let start = k.chunk(0, bits);
            let n = 1usize << (bits - l);
            direct[start..start + n].fill(v);
        }
        let mut t = Poptrie {
            direct,
            direct_bits: bits,
            nodes: Vec::new(),
            leaves: Vec::new(),
            len: items.len(),
            _k: PhantomData,
        };
        for (slot, range) in groups(items, 0, bits) {
            let default = t.direct[slot];
            let node = t.build_node(&items[range], bits, default);
            let idx = t.nodes.len() as u32;
            t.nodes.push(node);
            t.direct[slot] = NODE | idx;
        }
        t.nodes.shrink_to_fit();
        t.leaves.shrink_to_fit();
        t
    }

    /// One node at `depth` for `items` (all inside its span; those no longer than
    /// `depth` were painted by the parent and are skipped); `default` is the value
    /// inherited from the covering prefixes above.
    fn build_node(&mut self, items: &[(K, u8, u32)], depth: u8, default: u32) -> Node {
        let mut slots = [default; 64];
        for &(k, l, v) in items
            .iter()
            .filter(|it| it.1 > depth && it.1 <= depth + STRIDE)
        {
            let start = k.chunk(depth, STRIDE);
            let n = 1usize << (depth + STRIDE - l);
            slots[start..start + n].fill(v);
        }
        let children = groups(items, depth, STRIDE);
        let mut node = Node {
            base0: self.leaves.len() as u32,
            base1: self.nodes.len() as u32,
            ..Node::default()
        };
        for (slot, _) in &children {
            node.vector |= 1 << slot;
        }
        let mut prev = None;
        for (i, &v) in slots.iter().enumerate() {
            if node.vector & (1 << i) == 0 && prev != Some(v) {
                node.leafvec |= 1 << i;
                self.leaves.push(v);
                prev = Some(v);
            }
        }
        self.nodes
            .resize(self.nodes.len() + children.len(), Node::default());
        for (j, (slot, range)) in children.into_iter().enumerate() {
            let child = self.build_node(&items[range], depth + STRIDE, slots[slot]);
            self.nodes[node.base1 as usize + j] = child;
        }
        node
    }

    /// The value of the longest prefix covering `key`.
    #[inline]
    pub fn lookup(&self, key: K) -> Option<u32> {
        let d = self.direct[key.chunk(0, self.direct_bits)];
        let v = if d & NODE == 0 {
            d
        } else {
            let mut n = self.nodes[(d & !NODE) as usize];
            let mut depth = self.direct_bits;
            loop {
                let i = key.chunk(depth, STRIDE);
                if n.vector & (1 << i) != 0 {
                    n = self.nodes[(n.base1 + upto(n.vector, i) - 1) as usize];
                    depth += STRIDE;
                } else {
                    break self.leaves[(n.base0 + upto(n.leafvec, i) - 1) as usize];
                }
            }
        };
        (v != NONE).then_some(v)
    }

    /// [`Poptrie::lookup`] of every key in `keys`, appended to `out` ([`NONE`] for no
    /// route). Keys are walked [`LANES`] at a time in lockstep, level by level, so the
    /// cache misses of independent keys overlap instead of each walk waiting for its
    /// own (BENCHMARKS.md: `lookup_many` rows).
    pub fn lookup_many(&self, keys: &[K], out: &mut Vec<u32>) {
        out.reserve(keys.len());
        for group in keys.chunks(LANES) {
            let mut val = [NONE; LANES];
            let mut node = [Node::default(); LANES];
            let mut depth = [self.direct_bits; LANES];
            let mut active = 0u32;
            for (i, &k) in group.iter().enumerate() {
                let d = self.direct[k.chunk(0, self.direct_bits)];
                if d & NODE == 0 {
                    val[i] = d;
                } else {
                    node[i] = self.nodes[(d & !NODE) as usize];
                    active |= 1 << i;
                }
            }
            while active != 0 {
                for (i, &k) in group.iter().enumerate() {
                    if active & (1 << i) == 0 {
                        continue;
                    }
                    let n = node[i];
                    let c = k.chunk(depth[i], STRIDE);
                    if n.vector & (1 << c) != 0 {
                        node[i] = self.nodes[(n.base1 + upto(n.vector, c) - 1) as usize];
                        depth[i] += STRIDE;
                    } else {
                        val[i] = self.leaves[(n.base0 + upto(n.leafvec, c) - 1) as usize];
                        active &= !(1 << i);
                    }
                }
            }
            out.extend_from_slice(&val[..group.len()]);
        }
    }

    /// Number of prefixes it was built from.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.direct.len() * 4
            + self.nodes.capacity() * std::mem::size_of::<Node>()
            + self.leaves.capacity() * 4
    }
}

/// The items longer than `depth + bits`, grouped by their `bits`-bit chunk at `depth`:
/// (chunk, index range). Sorted items of one chunk are contiguous.
fn groups<K: Key>(
    items: &[(K, u8, u32)],
    depth: u8,
    bits: u8,
) -> Vec<(usize, std::ops::Range<usize>)> {
    let mut out: Vec<(usize, std::ops::Range<usize>)> = Vec::new();
    for (i, &(k, l, _)) in items.iter().enumerate() {
        if l <= depth + bits {
            continue;
        }
        let c = k.chunk(depth, bits);
        match out.last_mut() {
            Some((s, r)) if *s == c => r.end = i + 1,
            _ => out.push((c, i..i + 1)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn brute<K: Key>(set: &[(K, u8, u32)], key: K) -> Option<u32> {
        // Last insert of a prefix wins, as in `build`.
        let mut best: Option<(u8, u32)> = None;
        for &(k, l, v) in set {
            let l = l.min(K::BITS);
            if key.mask(l) == k.mask(l) && best.is_none_or(|(bl, _)| l >= bl) {
                best = Some((l, v.min(NONE)));
            }
        }
        best.map(|b| b.1).filter(|&v| v != NONE)
    }

    #[test]
    fn edges() {
        let t = Poptrie::<u32>::build([(0, 0, 7), (0x0a00_0000, 8, 1), (0x0a01_0203, 32, 2)]);
        assert_eq!(t.lookup(0x0b00_0000), Some(7));
        assert_eq!(t.lookup(0x0a00_0001), Some(1));
        assert_eq!(t.lookup(0x0a01_0203), Some(2));
        assert_eq!(t.lookup(0x0a01_0202), Some(1));
        let e = Poptrie::<u128>::build([(u128::MAX, 128, 3)]);
        assert_eq!(e.lookup(u128::MAX), Some(3));
        assert_eq!(e.lookup(u128::MAX - 1), None);
        assert!(Poptrie::<u32>::build([]).lookup(1).is_none());
    }

    /// A table large enough for the 18-bit direct array, against prefix-trie's LPM.
    #[test]
    fn large_table_matches_prefix_trie() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut rng = move || {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            x.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        let mut reference = prefix_trie::PrefixMap::<ipnet::Ipv4Net, u32>::new();
        let mut set = Vec::new();
        for i in 0..(LARGE as u32 * 2) {
            let r = rng();
            let len = [0u8, 8, 16, 18, 20, 22, 24, 24, 24, 25, 28, 32][(r % 12) as usize];
            let a = ((r >> 32) as u32 & 0x3fff_ffff).mask(len);
            set.push((a, len, i));
            reference.insert(ipnet::Ipv4Net::new(a.into(), len).unwrap(), i);
        }
        let t = Poptrie::build(set.iter().copied());
        assert_eq!(t.direct_bits, DIRECT_LARGE);
        for _ in 0..200_000 {
            let a = (rng() >> 32) as u32 & 0x3fff_ffff;
            let want = reference
                .get_lpm(&ipnet::Ipv4Net::from(std::net::Ipv4Addr::from(a)))
                .map(|(_, v)| *v);
            assert_eq!(t.lookup(a), want, "{a:#x}");
        }
    }

    /// Keys clustered under a few /8s so that prefixes nest deeply.
    fn v4() -> impl Strategy<Value = (u32, u8, u32)> {
        (0u32..4, any::<u32>(), 0u8..=32, 0u32..1000)
            .prop_map(|(hi, lo, l, v)| ((hi << 30) | (lo >> 2), l, v))
    }

    fn v6() -> impl Strategy<Value = (u128, u8, u32)> {
        (0u128..4, any::<u128>(), 0u8..=128, 0u32..1000)
            .prop_map(|(hi, lo, l, v)| ((hi << 126) | (lo >> 2), l, v))
    }

    proptest! {
        #[test]
        fn v4_matches_brute_force(set in prop::collection::vec(v4(), 0..200),
                                  probes in prop::collection::vec(any::<u32>(), 50)) {
            let t = Poptrie::build(set.iter().copied());
            for &(k, l, _) in &set {
                for a in [k, k.mask(l), k | (u32::MAX >> l.min(31))] {
                    prop_assert_eq!(t.lookup(a), brute(&set, a));
                }
            }
            for &a in &probes {
                prop_assert_eq!(t.lookup(a), brute(&set, a));
            }
            // The lockstep batch answers as one lookup at a time (any batch length).
            let mut keys: Vec<u32> = probes.clone();
            keys.extend(set.iter().map(|&(k, _, _)| k));
            let mut many = Vec::new();
            t.lookup_many(&keys, &mut many);
            let one: Vec<u32> = keys.iter().map(|&a| t.lookup(a).unwrap_or(NONE)).collect();
            prop_assert_eq!(many, one);
        }

        #[test]
        fn v6_matches_brute_force(set in prop::collection::vec(v6(), 0..200),
                                  probes in prop::collection::vec(any::<u128>(), 50)) {
            let t = Poptrie::build(set.iter().copied());
            for &(k, l, _) in &set {
                for a in [k, k.mask(l), k | (u128::MAX >> l.min(127))] {
                    prop_assert_eq!(t.lookup(a), brute(&set, a));
                }
            }
            for &a in &probes {
                prop_assert_eq!(t.lookup(a), brute(&set, a));
            }
            // The lockstep batch answers as one lookup at a time (any batch length).
            let mut keys: Vec<u128> = probes.clone();
            keys.extend(set.iter().map(|&(k, _, _)| k));
            let mut many = Vec::new();
            t.lookup_many(&keys, &mut many);
            let one: Vec<u32> = keys.iter().map(|&a| t.lookup(a).unwrap_or(NONE)).collect();
            prop_assert_eq!(many, one);
        }
    }
}
