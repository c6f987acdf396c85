//! A path-compressed binary (Patricia) trie for longest-prefix match: the first FIB trie.
//!
//! Measured against prefix-trie and ip_network_table (`cargo bench --bench fib`, see
//! BENCHMARKS.md) it was slower to build and to look up and used ~4x the memory, so the
//! FIB uses `prefix_trie::PrefixMap`; this one stays as the benchmark baseline.
//!
//! Layout choices, all made for a table of a million routes that is read far more often
//! than it is written:
//!
//! * Nodes live in one `Vec` and refer to each other by `u32` index: half the size of a
//!   pointer, no allocation per node, and freed slots are chained into a free list through
//!   their first child link, so churn does not grow the arena.
//! * Values are kept apart from the nodes, densely packed in their own `Vec`. A lookup walks
//!   only small, fixed-size nodes and touches a value once, at the end; a node says whether it
//!   holds a value by a non-`NIL` value index. Removal swaps the last value into the hole, so
//!   the value array never has gaps and never needs an `Option` tag.
//! * Node 0 is a permanent `/0` node. Having a root that never moves means insertion never
//!   has to replace the root, and the default route is simply that node's value.
//! * Every non-root node without a value has exactly two children (path compression); removal
//!   restores that by splicing out at most two nodes, and `retain` restores it in one
//!   post-order pass.
//!
//! Prefix lengths greater than `K::BITS` are clamped to `K::BITS` by every method: the kernel
//! cannot produce them, and clamping (rather than rejecting) lets `get_or_insert_with` always
//! return a reference without a panic path.

use std::fmt;

/// An address type the trie can key on: an unsigned integer whose most significant bit is
/// the first bit of the address.
pub trait Bits: Copy + Eq + Ord + std::hash::Hash + fmt::Debug + Send + Sync + 'static {
    /// Width of the address in bits (32 or 128).
    const BITS: u8;
    /// The all-zero address, the key of the `/0` prefix.
    const ZERO: Self;
    /// Bit `i` counted from the most significant end; `false` for `i >= BITS`, so callers
    /// walking past a host route need no special case.
    fn bit(self, i: u8) -> bool;
    /// Keeps the top `len` bits and zeroes the rest; `len >= BITS` keeps everything.
    fn masked(self, len: u8) -> Self;
    /// Number of leading bits `self` and `other` agree on (`BITS` when equal).
    fn common_prefix_len(self, other: Self) -> u8;
    /// Upper bound on the width of the direct-indexed table in front of the trie (see
    /// [`Patricia`]), which otherwise grows with the number of prefixes.
    const MAX_JUMP_BITS: u8;
    /// The top `n` bits (`1..=MAX_JUMP_BITS`) as an index.
    fn top_bits(self, n: u8) -> usize;
    /// Inverse of `top_bits`: an address whose top `n` bits are `idx`, the rest zero.
    fn from_top_bits(idx: usize, n: u8) -> Self;
}

macro_rules! impl_bits {
    ($t:ty, $jump:expr) => {
        impl Bits for $t {
            const BITS: u8 = <$t>::BITS as u8;
            const ZERO: Self = 0;
            const MAX_JUMP_BITS: u8 = $jump;

            #[inline(always)]
            fn top_bits(self, n: u8) -> usize {
                self.checked_shr(u32::from(<Self as Bits>::BITS - n))
                    .unwrap_or(0) as usize
            }

            #[inline(always)]
            fn from_top_bits(idx: usize, n: u8) -> Self {
                (idx as $t)
                    .checked_shl(u32::from(<Self as Bits>::BITS - n))
                    .unwrap_or(0)
            }

            #[inline(always)]
            fn bit(self, i: u8) -> bool {
                i < <Self as Bits>::BITS && (self >> (<Self as Bits>::BITS - 1 - i)) & 1 == 1
            }

            #[inline(always)]
            fn masked(self, len: u8) -> Self {
                // `checked_shr` turns the shift-by-width case (len 0) into "mask nothing".
                self & !(<$t>::MAX.checked_shr(u32::from(len)).unwrap_or(0))
            }

            #[inline(always)]
            fn common_prefix_len(self, other: Self) -> u8 {
                (self ^ other).leading_zeros() as u8
            }
        }
    };
}
impl_bits!(u32, 20);
impl_bits!(u128, 20);

/// Marks an absent child or value.
const NIL: u32 = u32::MAX;
/// The permanent `/0` node.
const ROOT: u32 = 0;
/// Upper bound of the DFS stack: a root-to-leaf path has at most `128 + 1` nodes (prefix
/// lengths strictly increase), and pre-order keeps at most one pending sibling per level
/// plus the two children just pushed.
const STACK: usize = 132;
/// At most one matching prefix per length `0..=128`.
const MATCH_CAP: usize = 129;
/// Below this many prefixes the jump table would cost more memory than the levels it
/// skips are worth (there is a trie per routing table, most of them tiny).
const JUMP_MIN: usize = 4096;

/// Jump-table width for `n` prefixes: about one slot per prefix (log2 n), so the table
/// costs ~8 bytes per prefix at most and skips about as many levels as a balanced binary
/// trie over `n` keys has.
fn jump_bits_for<K: Bits>(n: usize) -> u8 {
    if n < JUMP_MIN {
        return 0;
    }
    ((usize::BITS - 1 - n.leading_zeros()) as u8).min(K::MAX_JUMP_BITS)
}

/// One slot of the jump table: the state a root walk would be in after consuming the top
/// `jump_bits` bits of any address in the slot.
#[derive(Clone, Copy, Debug)]
struct Jump {
    /// First node with `len >= jump_bits` inside the slot, or `NIL`.
    start: u32,
    /// Deepest value node with `len < jump_bits` covering the slot, or `NIL`.
    best: u32,
}

#[derive(Clone, Copy, Debug)]
struct Node<K> {
    /// The prefix, already masked to `len`.
    key: K,
    child: [u32; 2],
    /// Index into `vals`, or `NIL` for a pure branch node.
    val: u32,
    len: u8,
}

/// Longest-prefix-match map from `(address, prefix length)` to `V`.
///
/// Lengths above `K::BITS` are clamped to `K::BITS` (see the module docs).
#[derive(Clone)]
pub struct Patricia<K: Bits, V> {
    nodes: Vec<Node<K>>,
    /// Head of the chain of freed node slots, linked through `child[0]`.
    free_head: u32,
    vals: Vec<V>,
    /// `owners[i]` is the node whose value is `vals[i]`; needed to re-point a node when its
    /// value is moved by `swap_remove`.
    owners: Vec<u32>,
    /// Direct-indexed by the top `jump_bits` bits of an address, so a lookup starts that
    /// many bits down instead of at the root: the top of a binary trie over a million
    /// prefixes is ~20 dependent loads, each a likely cache miss. Empty (`jump_bits == 0`)
    /// until the trie holds `JUMP_MIN` prefixes; widened as it grows, like a `Vec`
    /// doubling; kept exact by every mutation.
    jump: Vec<Jump>,
    jump_bits: u8,
}

/// IPv4 FIB trie.
pub type Patricia4<V> = Patricia<u32, V>;
/// IPv6 FIB trie.
pub type Patricia6<V> = Patricia<u128, V>;

impl<K: Bits, V> Default for Patricia<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Bits, V: fmt::Debug> fmt::Debug for Patricia<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.iter().map(|(k, l, v)| ((k, l), v)))
            .finish()
    }
}

#[inline(always)]
fn clamp<K: Bits>(len: u8) -> u8 {
    len.min(K::BITS)
}

impl<K: Bits, V> Patricia<K, V> {
    pub fn new() -> Self {
        Patricia {
            nodes: vec![Node {
                key: K::ZERO,
                child: [NIL; 2],
                val: NIL,
                len: 0,
            }],
            free_head: NIL,
            vals: Vec::new(),
            owners: Vec::new(),
            jump: Vec::new(),
            jump_bits: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.vals.len()
    }

    pub fn is_empty(&self) -> bool {
        self.vals.is_empty()
    }

    #[inline(always)]
    fn node(&self, i: u32) -> &Node<K> {
        &self.nodes[i as usize]
    }

    #[inline(always)]
    fn node_mut(&mut self, i: u32) -> &mut Node<K> {
        &mut self.nodes[i as usize]
    }

    fn alloc(&mut self, key: K, len: u8) -> u32 {
        let n = Node {
            key,
            child: [NIL; 2],
            val: NIL,
            len,
        };
        if self.free_head != NIL {
            let i = self.free_head;
            self.free_head = self.node(i).child[0];
            *self.node_mut(i) = n;
            i
        } else {
            self.nodes.push(n);
            (self.nodes.len() - 1) as u32
        }
    }

    fn free(&mut self, i: u32) {
        let head = self.free_head;
        let n = self.node_mut(i);
        n.child = [head, NIL];
        n.val = NIL;
        self.free_head = i;
    }

    fn replace_child(&mut self, parent: u32, old: u32, new: u32) {
        let p = self.node_mut(parent);
        let side = usize::from(p.child[1] == old);
        p.child[side] = new;
    }

    /// Detaches node `i`'s value, keeping `vals` dense.
    fn take_val(&mut self, i: u32) -> Option<V> {
        let vi = self.node(i).val;
        if vi == NIL {
            return None;
        }
        self.node_mut(i).val = NIL;
        let v = self.vals.swap_remove(vi as usize);
        self.owners.swap_remove(vi as usize);
        if let Some(&moved) = self.owners.get(vi as usize) {
            self.node_mut(moved).val = vi;
        }
        Some(v)
    }

    /// Index of the node for exactly `key/len` (masked), creating it if absent.
    fn locate_or_create(&mut self, key: K, len: u8) -> u32 {
        // Invariant: `cur` is a prefix of key/len (cur.len <= len, key agrees on cur.len bits).
        let mut cur = ROOT;
        if let Some(j) = self.jump_slot(key) {
            if let Some(n) = self.nodes.get(j.start as usize) {
                if n.len <= len && key.common_prefix_len(n.key) >= n.len {
                    cur = j.start;
                }
            }
        }
        loop {
            let n = *self.node(cur);
            if n.len == len {
                return cur;
            }
            let side = usize::from(key.bit(n.len));
            let c = n.child[side];
            if c == NIL {
                let leaf = self.alloc(key, len);
                self.node_mut(cur).child[side] = leaf;
                return leaf;
            }
            let cn = *self.node(c);
            let cpl = key.common_prefix_len(cn.key).min(cn.len).min(len);
            if cpl == cn.len {
                cur = c;
                continue;
            }
            // The new prefix diverges from (or sits above) child `c` at bit `cpl`.
            let (top, new) = if cpl == len {
                let new = self.alloc(key, len);
                self.node_mut(new).child[usize::from(cn.key.bit(len))] = c;
                (new, new)
            } else {
                let branch = self.alloc(key.masked(cpl), cpl);
                let leaf = self.alloc(key, len);
                let b = self.node_mut(branch);
                b.child[usize::from(key.bit(cpl))] = leaf;
                b.child[usize::from(cn.key.bit(cpl))] = c;
                (branch, leaf)
            };
            self.node_mut(cur).child[side] = top;
            return new;
        }
    }

    /// Node for exactly `key/len` if it holds a value.
    #[inline]
    fn find(&self, key: K, len: u8) -> Option<u32> {
        let len = clamp::<K>(len);
        let key = key.masked(len);
        let mut cur = ROOT;
        if len >= self.jump_bits {
            // Every node of length >= jump_bits in the slot is below the slot's start.
            if let Some(j) = self.jump_slot(key) {
                cur = j.start;
            }
        }
        loop {
            let n = self.nodes.get(cur as usize)?;
            if n.len > len || key.common_prefix_len(n.key) < n.len {
                return None;
            }
            if n.len == len {
                return (n.val != NIL).then_some(cur);
            }
            cur = n.child[usize::from(key.bit(n.len))];
            if cur == NIL {
                return None;
            }
        }
    }

    fn set_val(&mut self, i: u32, value: V) -> Option<V> {
        let vi = self.node(i).val;
        if vi != NIL {
            return Some(std::mem::replace(&mut self.vals[vi as usize], value));
        }
        self.node_mut(i).val = self.vals.len() as u32;
        self.vals.push(value);
        self.owners.push(i);
        None
    }

    pub fn insert(&mut self, key: K, len: u8, value: V) -> Option<V> {
        let len = clamp::<K>(len);
        let key = key.masked(len);
        let i = self.locate_or_create(key, len);
        let old = self.set_val(i, value);
        if old.is_none() {
            self.jump_inserted(key, len, i);
        }
        old
    }

    pub fn remove(&mut self, key: K, len: u8) -> Option<V> {
        let len = clamp::<K>(len);
        let key = key.masked(len);
        let (mut grand, mut parent, mut cur) = (NIL, NIL, ROOT);
        loop {
            let n = self.node(cur);
            if n.len > len || key.common_prefix_len(n.key) < n.len {
                return None;
            }
            if n.len == len {
                break;
            }
            let c = n.child[usize::from(key.bit(n.len))];
            if c == NIL {
                return None;
            }
            (grand, parent, cur) = (parent, cur, c);
        }
        let v = self.take_val(cur)?;
        match self.node(cur).child {
            _ if cur == ROOT => {}
            [NIL, NIL] => {
                self.replace_child(parent, cur, NIL);
                self.free(cur);
                // A valueless non-root parent now has a single child: splice it out.
                let p = *self.node(parent);
                if parent != ROOT && p.val == NIL {
                    let only = if p.child[0] == NIL {
                        p.child[1]
                    } else {
                        p.child[0]
                    };
                    self.replace_child(grand, parent, only);
                    self.free(parent);
                }
            }
            [c, NIL] | [NIL, c] => {
                self.replace_child(parent, cur, c);
                self.free(cur);
            }
            _ => {}
        }
        self.jump_removed(key, len, cur);
        Some(v)
    }

    pub fn get(&self, key: K, len: u8) -> Option<&V> {
        let i = self.find(key, len)?;
        self.vals.get(self.node(i).val as usize)
    }

    pub fn get_mut(&mut self, key: K, len: u8) -> Option<&mut V> {
        let i = self.find(key, len)?;
        let vi = self.node(i).val as usize;
        self.vals.get_mut(vi)
    }

    /// get_mut, inserting the value made by `f` if absent.
    pub fn get_or_insert_with(&mut self, key: K, len: u8, f: impl FnOnce() -> V) -> &mut V {
        let len = clamp::<K>(len);
        let i = self.locate_or_create(key.masked(len), len);
        if self.node(i).val == NIL {
            self.set_val(i, f());
            self.jump_inserted(key.masked(len), len, i);
        }
        let vi = self.node(i).val as usize;
        &mut self.vals[vi]
    }

    #[inline]
    pub fn longest_match(&self, addr: K) -> Option<(K, u8, &V)> {
        let nodes = &self.nodes[..];
        let (mut best, mut cur) = match self.jump_slot(addr) {
            Some(j) => (j.best, j.start),
            None => (NIL, ROOT),
        };
        while let Some(n) = nodes.get(cur as usize) {
            if addr.common_prefix_len(n.key) < n.len {
                break;
            }
            if n.val != NIL {
                best = cur;
            }
            cur = n.child[usize::from(addr.bit(n.len))];
        }
        let n = nodes.get(best as usize)?;
        Some((n.key, n.len, self.vals.get(n.val as usize)?))
    }

    /// All stored prefixes that contain `addr`, longest first. Collected into a fixed
    /// on-stack buffer (one slot per possible length) so no heap allocation happens.
    pub fn matches(&self, addr: K) -> Matches<'_, K, V> {
        let mut m = Matches {
            trie: self,
            buf: [NIL; MATCH_CAP],
            n: 0,
        };
        let mut cur = ROOT;
        while let Some(node) = self.nodes.get(cur as usize) {
            if addr.common_prefix_len(node.key) < node.len {
                break;
            }
            if node.val != NIL {
                if let Some(slot) = m.buf.get_mut(m.n) {
                    *slot = cur;
                    m.n += 1;
                }
            }
            cur = node.child[usize::from(addr.bit(node.len))];
        }
        m
    }

    /// All entries in (address, prefix length) order: a pre-order walk visiting the `0`
    /// side first yields exactly that, because a node's masked key is the smallest address
    /// in its subtree and its length is shorter than every descendant's.
    pub fn iter(&self) -> Iter<'_, K, V> {
        Iter::new(self, ROOT)
    }

    /// Entries inside `key/len`, including itself, in the same order as [`Patricia::iter`].
    pub fn iter_within(&self, key: K, len: u8) -> Iter<'_, K, V> {
        let len = clamp::<K>(len);
        let key = key.masked(len);
        let mut cur = ROOT;
        while let Some(n) = self.nodes.get(cur as usize) {
            if n.len >= len {
                // The first node at or below `len` on this path roots everything inside.
                if n.key.masked(len) == key {
                    return Iter::new(self, cur);
                }
                break;
            }
            if key.common_prefix_len(n.key) < n.len {
                break;
            }
            cur = n.child[usize::from(key.bit(n.len))];
        }
        Iter::new(self, NIL)
    }

    /// Visits every entry mutably in iteration order and drops those for which `f` returns
    /// false, then re-compresses paths in the same single pass: O(nodes), which is what a
    /// mark-and-sweep of a million routes needs (n separate removes would each re-walk).
    pub fn retain(&mut self, mut f: impl FnMut(K, u8, &mut V) -> bool) {
        self.retain_rec(ROOT, &mut f);
        self.jump_rebuild(jump_bits_for::<K>(self.len()));
    }

    #[inline(always)]
    fn jump_slot(&self, addr: K) -> Option<&Jump> {
        if self.jump_bits == 0 {
            return None;
        }
        self.jump.get(addr.top_bits(self.jump_bits))
    }

    /// Walks from the root to the jump-table state of slot `slot`.
    fn jump_entry(&self, slot: usize) -> Jump {
        let s = self.jump_bits;
        let key = K::from_top_bits(slot, s);
        let mut j = Jump {
            start: NIL,
            best: NIL,
        };
        let mut cur = ROOT;
        while let Some(n) = self.nodes.get(cur as usize) {
            if n.len >= s {
                if n.key.masked(s) == key {
                    j.start = cur;
                }
                break;
            }
            if key.common_prefix_len(n.key) < n.len {
                break;
            }
            if n.val != NIL {
                j.best = cur;
            }
            cur = n.child[usize::from(key.bit(n.len))];
        }
        j
    }

    /// Replaces the table with one `bits` wide (0 drops it). One root walk per slot:
    /// O(2^bits * depth), amortised like `Vec` growth since `bits` tracks log2(len).
    fn jump_rebuild(&mut self, bits: u8) {
        self.jump_bits = bits;
        self.jump = Vec::new();
        if bits == 0 {
            return;
        }
        let table: Vec<Jump> = (0..1usize << bits).map(|i| self.jump_entry(i)).collect();
        self.jump = table;
    }

    /// Slots inside `key/len`.
    fn jump_range(&self, key: K, len: u8) -> std::ops::Range<usize> {
        let s = self.jump_bits;
        let first = key.top_bits(s);
        first..first + (1usize << (s - len.min(s)))
    }

    /// Keeps the table exact after `key/len` gained a value at node `node`. A short prefix
    /// (above the table) changes only `best` of the slots it covers, and only where it is
    /// now the deepest; nodes made above the table are never a slot's `start`. A long one
    /// lies in one slot whose `start` may have moved, so that slot is re-walked.
    fn jump_inserted(&mut self, key: K, len: u8, node: u32) {
        let want = jump_bits_for::<K>(self.len());
        if want > self.jump_bits {
            self.jump_rebuild(want);
            return;
        }
        if self.jump_bits == 0 {
            return;
        }
        let range = self.jump_range(key, len);
        if len < self.jump_bits {
            let nodes = &self.nodes;
            for j in self.jump.get_mut(range).into_iter().flatten() {
                if nodes.get(j.best as usize).is_none_or(|b| b.len < len) {
                    j.best = node;
                }
            }
        } else {
            self.jump_rewalk(range.start);
        }
    }

    /// Counterpart of `jump_inserted` after `key/len` lost its value at node `node` (which
    /// may have been freed): slots that used it as `best` fall back to the next shorter
    /// covering prefix, the same for all of them.
    fn jump_removed(&mut self, key: K, len: u8, node: u32) {
        if self.jump_bits == 0 {
            return;
        }
        let range = self.jump_range(key, len);
        if len < self.jump_bits {
            let fallback = self.best_above(key, len);
            for j in self.jump.get_mut(range).into_iter().flatten() {
                if j.best == node {
                    j.best = fallback;
                }
            }
        } else {
            self.jump_rewalk(range.start);
        }
    }

    /// Deepest value node strictly shorter than `len` that covers `key`.
    fn best_above(&self, key: K, len: u8) -> u32 {
        let mut best = NIL;
        let mut cur = ROOT;
        while let Some(n) = self.nodes.get(cur as usize) {
            if n.len >= len || key.common_prefix_len(n.key) < n.len {
                break;
            }
            if n.val != NIL {
                best = cur;
            }
            cur = n.child[usize::from(key.bit(n.len))];
        }
        best
    }

    fn jump_rewalk(&mut self, slot: usize) {
        let e = self.jump_entry(slot);
        if let Some(j) = self.jump.get_mut(slot) {
            *j = e;
        }
    }

    /// Returns what should replace `i` in its parent. Recursion depth is bounded by
    /// `K::BITS + 1` because lengths strictly increase downwards.
    fn retain_rec(&mut self, i: u32, f: &mut impl FnMut(K, u8, &mut V) -> bool) -> u32 {
        let n = *self.node(i);
        if let Some(v) = self.vals.get_mut(n.val as usize) {
            if !f(n.key, n.len, v) {
                self.take_val(i);
            }
        }
        let mut child = n.child;
        for c in &mut child {
            if *c != NIL {
                *c = self.retain_rec(*c, f);
            }
        }
        self.node_mut(i).child = child;
        if i == ROOT || self.node(i).val != NIL {
            return i;
        }
        match child {
            [NIL, NIL] => {
                self.free(i);
                NIL
            }
            [c, NIL] | [NIL, c] => {
                self.free(i);
                c
            }
            _ => i,
        }
    }

    /// Heap bytes of the arena and value arrays (capacity, not length, since that is what
    /// is actually allocated); excludes anything `V` itself owns.
    pub fn heap_bytes(&self) -> usize {
        self.nodes.capacity() * std::mem::size_of::<Node<K>>()
            + self.vals.capacity() * std::mem::size_of::<V>()
            + self.owners.capacity() * std::mem::size_of::<u32>()
            + self.jump.capacity() * std::mem::size_of::<Jump>()
    }
}

/// Iterator of [`Patricia::matches`].
pub struct Matches<'a, K: Bits, V> {
    trie: &'a Patricia<K, V>,
    buf: [u32; MATCH_CAP],
    n: usize,
}

impl<'a, K: Bits, V> Iterator for Matches<'a, K, V> {
    type Item = (K, u8, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        self.n = self.n.checked_sub(1)?;
        let n = self.trie.nodes.get(*self.buf.get(self.n)? as usize)?;
        Some((n.key, n.len, self.trie.vals.get(n.val as usize)?))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.n, Some(self.n))
    }
}

/// Iterator of [`Patricia::iter`] and [`Patricia::iter_within`]; its DFS stack is a fixed array.
pub struct Iter<'a, K: Bits, V> {
    trie: &'a Patricia<K, V>,
    stack: [u32; STACK],
    sp: usize,
}

impl<'a, K: Bits, V> Iter<'a, K, V> {
    fn new(trie: &'a Patricia<K, V>, start: u32) -> Self {
        let mut it = Iter {
            trie,
            stack: [NIL; STACK],
            sp: 0,
        };
        it.push(start);
        it
    }

    #[inline]
    fn push(&mut self, i: u32) {
        if i != NIL {
            if let Some(slot) = self.stack.get_mut(self.sp) {
                *slot = i;
                self.sp += 1;
            }
        }
    }
}

impl<'a, K: Bits, V> Iterator for Iter<'a, K, V> {
    type Item = (K, u8, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        let trie = self.trie;
        while self.sp > 0 {
            self.sp -= 1;
            let n = trie.nodes.get(self.stack[self.sp] as usize)?;
            self.push(n.child[1]);
            self.push(n.child[0]);
            if let Some(v) = trie.vals.get(n.val as usize) {
                return Some((n.key, n.len, v));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn v4(s: &str) -> (u32, u8) {
        let (a, l) = s.split_once('/').unwrap();
        (
            u32::from(a.parse::<std::net::Ipv4Addr>().unwrap()),
            l.parse().unwrap(),
        )
    }

    fn ins(t: &mut Patricia4<u32>, s: &str, v: u32) -> Option<u32> {
        let (k, l) = v4(s);
        t.insert(k, l, v)
    }

    fn lpm(t: &Patricia4<u32>, a: &str) -> Option<(u32, u8, u32)> {
        let a = u32::from(a.parse::<std::net::Ipv4Addr>().unwrap());
        t.longest_match(a).map(|(k, l, v)| (k, l, *v))
    }

    /// Structural invariants that the public API cannot see directly.
    fn check_invariants_full<K: Bits, V>(t: &Patricia<K, V>, check_jump: bool) {
        let mut reachable = 0usize;
        let mut stack = vec![ROOT];
        while let Some(i) = stack.pop() {
            reachable += 1;
            let n = t.node(i);
            assert_eq!(n.key, n.key.masked(n.len));
            if i != ROOT && n.val == NIL {
                assert!(n.child[0] != NIL && n.child[1] != NIL, "unary branch node");
            }
            if n.val != NIL {
                assert_eq!(t.owners[n.val as usize], i);
            }
            for (side, &c) in n.child.iter().enumerate() {
                if c != NIL {
                    let cn = t.node(c);
                    assert!(cn.len > n.len);
                    assert_eq!(cn.key.masked(n.len), n.key);
                    assert_eq!(cn.key.bit(n.len), side == 1);
                    stack.push(c);
                }
            }
        }
        let mut free = 0usize;
        let mut f = t.free_head;
        while f != NIL {
            free += 1;
            f = t.node(f).child[0];
        }
        assert_eq!(reachable + free, t.nodes.len(), "leaked nodes");
        assert_eq!(t.vals.len(), t.owners.len());
        if t.jump_bits != 0 && check_jump {
            assert_eq!(t.jump.len(), 1 << t.jump_bits);
            for (slot, j) in t.jump.iter().enumerate() {
                let want = t.jump_entry(slot);
                assert_eq!(
                    (j.start, j.best),
                    (want.start, want.best),
                    "stale jump slot {slot}"
                );
            }
        }
    }

    fn check_invariants<K: Bits, V>(t: &Patricia<K, V>) {
        check_invariants_full(t, true);
    }

    #[test]
    fn default_route_and_host_routes() {
        let mut t = Patricia4::new();
        assert!(t.is_empty());
        assert_eq!(lpm(&t, "1.2.3.4"), None);
        assert_eq!(ins(&mut t, "0.0.0.0/0", 1), None);
        assert_eq!(lpm(&t, "1.2.3.4"), Some((0, 0, 1)));
        assert_eq!(lpm(&t, "255.255.255.255"), Some((0, 0, 1)));
        assert_eq!(ins(&mut t, "1.2.3.4/32", 2), None);
        assert_eq!(lpm(&t, "1.2.3.4"), Some((0x01020304, 32, 2)));
        assert_eq!(lpm(&t, "1.2.3.5"), Some((0, 0, 1)));
        assert_eq!(ins(&mut t, "255.255.255.255/32", 3), None);
        assert_eq!(lpm(&t, "255.255.255.255"), Some((u32::MAX, 32, 3)));
        assert_eq!(t.len(), 3);
        // Keys are masked by the trie: host bits of a /0 are ignored.
        assert_eq!(ins(&mut t, "9.9.9.9/0", 4), Some(1));
        assert_eq!(t.get(0x0a000000, 0), Some(&4));
        assert_eq!(t.remove(0, 0), Some(4));
        assert_eq!(lpm(&t, "1.2.3.5"), None);
        assert_eq!(t.remove(0, 0), None);
        check_invariants(&t);

        let mut t6 = Patricia6::new();
        t6.insert(u128::MAX, 128, "host");
        t6.insert(0, 0, "default");
        assert_eq!(t6.longest_match(u128::MAX), Some((u128::MAX, 128, &"host")));
        assert_eq!(t6.longest_match(u128::MAX - 1), Some((0, 0, &"default")));
        assert_eq!(t6.get(u128::MAX, 128), Some(&"host"));
        check_invariants(&t6);
    }

    #[test]
    fn overlong_lengths_are_clamped_not_panics() {
        let mut t = Patricia4::new();
        assert_eq!(t.insert(7, 200, 1), None);
        assert_eq!(t.get(7, 32), Some(&1));
        assert_eq!(t.get(7, 255), Some(&1));
        assert_eq!(*t.get_or_insert_with(7, 33, || 9), 1);
        assert_eq!(t.iter_within(7, 99).count(), 1);
        assert_eq!(t.remove(7, 40), Some(1));
        assert!(t.is_empty());
        assert!(!0u32.bit(32) && !u32::MAX.bit(200) && !u128::MAX.bit(128));
        assert_eq!(u32::MAX.masked(0), 0);
        assert_eq!(u32::MAX.masked(255), u32::MAX);
        assert_eq!(u128::MAX.masked(1), 1 << 127);
    }

    #[test]
    fn insert_replace_returns_old() {
        let mut t = Patricia4::new();
        assert_eq!(ins(&mut t, "10.0.0.0/8", 1), None);
        assert_eq!(ins(&mut t, "10.1.2.3/8", 2), Some(1));
        assert_eq!(t.len(), 1);
        *t.get_mut(0x0a000000, 8).unwrap() += 10;
        assert_eq!(t.get(0x0a000000, 8), Some(&12));
        assert_eq!(*t.get_or_insert_with(0x0a000000, 8, || 99), 12);
        assert_eq!(*t.get_or_insert_with(0x0a000000, 9, || 99), 99);
        assert_eq!(t.len(), 2);
        assert_eq!(t.get(0x0a000000, 7), None);
        assert_eq!(t.get(0x0a800000, 9), None);
    }

    #[test]
    fn remove_inner_nodes() {
        let mut t = Patricia4::new();
        ins(&mut t, "10.0.0.0/8", 8);
        ins(&mut t, "10.0.0.0/16", 16);
        ins(&mut t, "10.128.0.0/16", 160);
        ins(&mut t, "10.0.0.0/24", 24);
        check_invariants(&t);
        // /16 has one child (/24): removing it splices.
        assert_eq!(t.remove(0x0a000000, 16), Some(16));
        check_invariants(&t);
        assert_eq!(lpm(&t, "10.0.0.1"), Some((0x0a000000, 24, 24)));
        assert_eq!(lpm(&t, "10.0.1.1"), Some((0x0a000000, 8, 8)));
        // /8 has two children: it stays as a branch node.
        assert_eq!(t.remove(0x0a000000, 8), Some(8));
        check_invariants(&t);
        assert_eq!(lpm(&t, "10.0.1.1"), None);
        assert_eq!(lpm(&t, "10.128.1.1"), Some((0x0a800000, 16, 160)));
        // Removing a leaf below a valueless branch removes the branch too.
        let before = t.nodes.len();
        assert_eq!(t.remove(0x0a000000, 24), Some(24));
        check_invariants(&t);
        assert_eq!(t.len(), 1);
        // Freed slots are reused.
        ins(&mut t, "192.168.0.0/16", 1);
        ins(&mut t, "192.168.1.0/24", 2);
        assert_eq!(t.nodes.len(), before);
        check_invariants(&t);
        assert_eq!(t.remove(0x0a000000, 24), None);
        assert_eq!(t.remove(0xc0a80000, 17), None);
    }

    #[test]
    fn iteration_order_and_within() {
        let mut t = Patricia4::new();
        for (i, s) in [
            "10.0.0.0/24",
            "0.0.0.0/0",
            "10.0.0.0/8",
            "192.168.1.0/24",
            "10.0.0.0/16",
            "10.0.1.0/24",
            "10.128.0.0/9",
            "192.168.0.0/16",
            "10.0.0.1/32",
        ]
        .iter()
        .enumerate()
        {
            ins(&mut t, s, i as u32);
        }
        let got: Vec<_> = t.iter().map(|(k, l, _)| (k, l)).collect();
        let mut want = got.clone();
        want.sort();
        assert_eq!(got, want);
        assert_eq!(got.len(), 9);
        assert_eq!(got[0], (0, 0));
        let within: Vec<_> = t
            .iter_within(0x0a000000, 16)
            .map(|(k, l, _)| (k, l))
            .collect();
        assert_eq!(
            within,
            vec![
                (0x0a000000, 16),
                (0x0a000000, 24),
                (0x0a000001, 32),
                (0x0a000100, 24)
            ]
        );
        // A prefix not stored but covering stored ones.
        assert_eq!(t.iter_within(0x0a000000, 15).count(), 4);
        assert_eq!(t.iter_within(0xc0000000, 4).count(), 2);
        assert_eq!(t.iter_within(0x0b000000, 8).count(), 0);
        assert_eq!(t.iter_within(0, 0).count(), 9);
        let m: Vec<_> = t.matches(0x0a000001).map(|(_, l, _)| l).collect();
        assert_eq!(m, vec![32, 24, 16, 8, 0]);
    }

    #[test]
    fn retain_prunes_and_compresses() {
        let mut t = Patricia4::new();
        for i in 0..1000u32 {
            t.insert(i.wrapping_mul(0x9e3779b9), (i % 33) as u8, i);
        }
        let n = t.len();
        let mut seen = 0;
        t.retain(|_, _, v| {
            seen += 1;
            *v += 1;
            *v % 3 == 0
        });
        assert_eq!(seen, n);
        check_invariants(&t);
        assert!(t.iter().all(|(_, _, v)| v % 3 == 0));
        t.retain(|_, _, _| false);
        check_invariants(&t);
        assert!(t.is_empty());
        assert_eq!(t.iter().count(), 0);
    }

    // ---- property tests against a brute-force model ----

    #[derive(Debug, Clone)]
    enum Op {
        Insert(usize, Option<u8>, u8, u16),
        Remove(usize, Option<u8>, u8),
        GetOrInsert(usize, Option<u8>, u8, u16),
        Retain(u16),
    }

    fn ops(bits: u8) -> impl Strategy<Value = Vec<Op>> {
        let key = (0usize..6, proptest::option::of(0..bits), 0..=bits + 1);
        let op = prop_oneof![
            4 => (key.clone(), any::<u16>()).prop_map(|((k, f, l), v)| Op::Insert(k, f, l, v)),
            2 => key.clone().prop_map(|(k, f, l)| Op::Remove(k, f, l)),
            1 => (key, any::<u16>()).prop_map(|((k, f, l), v)| Op::GetOrInsert(k, f, l, v)),
            1 => (1u16..5).prop_map(Op::Retain),
        ];
        proptest::collection::vec(op, 0..60)
    }

    fn run_model<K: Bits>(
        pool: &[K],
        flip: impl Fn(K, u8) -> K,
        ops: &[Op],
        probes: &[K],
        jump: bool,
    ) {
        let mut t: Patricia<K, u16> = Patricia::new();
        if jump {
            t.jump_rebuild(6);
        }
        let mut m: BTreeMap<(K, u8), u16> = BTreeMap::new();
        let key = |k: usize, f: Option<u8>, l: u8| {
            let base = pool[k % pool.len()];
            let k = f.map_or(base, |f| flip(base, f));
            let l = l.min(K::BITS);
            (k.masked(l), l)
        };
        for op in ops {
            match *op {
                Op::Insert(k, f, l, v) => {
                    let (mk, ml) = key(k, f, l);
                    assert_eq!(t.insert(mk, l, v), m.insert((mk, ml), v));
                }
                Op::Remove(k, f, l) => {
                    let (mk, ml) = key(k, f, l);
                    assert_eq!(t.remove(mk, l), m.remove(&(mk, ml)));
                }
                Op::GetOrInsert(k, f, l, v) => {
                    let (mk, ml) = key(k, f, l);
                    assert_eq!(
                        *t.get_or_insert_with(mk, l, || v),
                        *m.entry((mk, ml)).or_insert(v)
                    );
                }
                Op::Retain(d) => {
                    let keep = |v: &u16| !v.is_multiple_of(d);
                    t.retain(|_, _, v| keep(v));
                    m.retain(|_, v| keep(v));
                }
            }
            check_invariants_full(&t, false);
            assert_eq!(t.len(), m.len());
        }
        check_invariants(&t);
        let got: Vec<_> = t.iter().map(|(k, l, v)| (k, l, *v)).collect();
        let want: Vec<_> = m.iter().map(|(&(k, l), &v)| (k, l, v)).collect();
        assert_eq!(got, want);
        for (&(k, l), v) in &m {
            assert_eq!(t.get(k, l), Some(v));
            let within: Vec<_> = t.iter_within(k, l).map(|(k, l, v)| (k, l, *v)).collect();
            let want: Vec<_> = m
                .iter()
                .filter(|(&(k2, l2), _)| l2 >= l && k2.masked(l) == k)
                .map(|(&(k, l), &v)| (k, l, v))
                .collect();
            assert_eq!(within, want);
        }
        let mut addrs: Vec<K> = probes.to_vec();
        addrs.extend(pool.iter().copied());
        addrs.extend(m.keys().map(|&(k, _)| k));
        for &a in &addrs {
            let mut want: Vec<_> = m
                .iter()
                .filter(|(&(k, l), _)| a.masked(l) == k)
                .map(|(&(k, l), &v)| (k, l, v))
                .collect();
            want.reverse();
            let got: Vec<_> = t.matches(a).map(|(k, l, v)| (k, l, *v)).collect();
            assert_eq!(got, want);
            assert_eq!(
                t.longest_match(a).map(|(k, l, v)| (k, l, *v)),
                want.first().copied()
            );
            for l in [0, K::BITS / 2, K::BITS] {
                assert_eq!(t.get(a, l), m.get(&(a.masked(l), l)));
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn model_u32(
            pool in proptest::collection::vec(any::<u32>(), 1..6),
            ops in ops(32),
            probes in proptest::collection::vec(any::<u32>(), 0..16),
            jump in any::<bool>(),
        ) {
            run_model(&pool, |k, f| k ^ (1 << (31 - f)), &ops, &probes, jump);
        }

        #[test]
        fn model_u128(
            pool in proptest::collection::vec(any::<u128>(), 1..6),
            ops in ops(128),
            probes in proptest::collection::vec(any::<u128>(), 0..16),
            jump in any::<bool>(),
        ) {
            run_model(&pool, |k, f| k ^ (1 << (127 - f)), &ops, &probes, jump);
        }

        /// Small address space so that nesting is dense rather than rare.
        #[test]
        fn model_u32_dense(
            ops in ops(32),
            jump in any::<bool>(),
        ) {
            let pool = [0u32, 0x8000_0000, 0xc000_0000, 0x0a00_0000, 0x0a80_0000, 0xffff_ffff];
            let probes = [1, 0x0a00_0001, 0x7fff_ffff];
            run_model(&pool, |k, f| k ^ (1 << (31 - f)), &ops, &probes, jump);
        }
    }
}
