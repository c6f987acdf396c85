//! Temporary map-backed stand-in with the trie's API (replaced by the real trie).

use std::collections::BTreeMap;

pub trait Bits:
    Copy + Eq + Ord + std::hash::Hash + std::fmt::Debug + Send + Sync + 'static
{
    const BITS: u8;
    fn bit(self, i: u8) -> bool;
    fn masked(self, len: u8) -> Self;
}
impl Bits for u32 {
    const BITS: u8 = 32;
    fn bit(self, i: u8) -> bool {
        self >> (31 - i) & 1 == 1
    }
    fn masked(self, len: u8) -> Self {
        if len == 0 {
            0
        } else {
            self & (u32::MAX << (32 - len.min(32) as u32))
        }
    }
}
impl Bits for u128 {
    const BITS: u8 = 128;
    fn bit(self, i: u8) -> bool {
        self >> (127 - i) & 1 == 1
    }
    fn masked(self, len: u8) -> Self {
        if len == 0 {
            0
        } else {
            self & (u128::MAX << (128 - len.min(128) as u32))
        }
    }
}

pub struct Trie<K: Bits, V> {
    map: BTreeMap<(K, u8), V>,
}
pub type Trie4<V> = Trie<u32, V>;
pub type Trie6<V> = Trie<u128, V>;

impl<K: Bits, V> Default for Trie<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Bits, V> Trie<K, V> {
    pub fn new() -> Self {
        Trie {
            map: BTreeMap::new(),
        }
    }
    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
    pub fn insert(&mut self, key: K, len: u8, value: V) -> Option<V> {
        if len > K::BITS {
            return None;
        }
        self.map.insert((key.masked(len), len), value)
    }
    pub fn remove(&mut self, key: K, len: u8) -> Option<V> {
        self.map.remove(&(key.masked(len), len))
    }
    pub fn get(&self, key: K, len: u8) -> Option<&V> {
        self.map.get(&(key.masked(len), len))
    }
    pub fn get_mut(&mut self, key: K, len: u8) -> Option<&mut V> {
        self.map.get_mut(&(key.masked(len), len))
    }
    pub fn get_or_insert_with(&mut self, key: K, len: u8, f: impl FnOnce() -> V) -> &mut V {
        self.map.entry((key.masked(len), len)).or_insert_with(f)
    }
    pub fn longest_match(&self, addr: K) -> Option<(K, u8, &V)> {
        self.matches(addr).next()
    }
    pub fn matches(&self, addr: K) -> impl Iterator<Item = (K, u8, &V)> {
        (0..=K::BITS).rev().filter_map(move |l| {
            let k = addr.masked(l);
            self.map.get(&(k, l)).map(|v| (k, l, v))
        })
    }
    pub fn iter(&self) -> impl Iterator<Item = (K, u8, &V)> {
        self.map.iter().map(|(&(k, l), v)| (k, l, v))
    }
    pub fn iter_within(&self, key: K, len: u8) -> impl Iterator<Item = (K, u8, &V)> {
        let key = key.masked(len);
        self.iter()
            .filter(move |&(k, l, _)| l >= len && k.masked(len) == key)
    }
    pub fn retain(&mut self, mut f: impl FnMut(K, u8, &mut V) -> bool) {
        self.map.retain(|&(k, l), v| f(k, l, v));
    }
    pub fn heap_bytes(&self) -> usize {
        self.map.len() * (std::mem::size_of::<(K, u8)>() + std::mem::size_of::<V>() + 16)
    }
}
