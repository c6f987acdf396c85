//! Placeholder: a path-compressed binary trie is being written (see fib/mod.rs).

/// An address type the trie can key on.
pub trait Bits: Copy + Eq + Ord + std::fmt::Debug {
    const BITS: u8;
}
impl Bits for u32 {
    const BITS: u8 = 32;
}
impl Bits for u128 {
    const BITS: u8 = 128;
}

pub struct Trie<K, V> {
    _p: std::marker::PhantomData<(K, V)>,
}
