//! The forwarding information base: an LPM trie per (family, table).

pub mod trie;

pub use trie::{Bits, Trie, Trie4, Trie6};
