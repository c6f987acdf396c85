//! The rare part of a route's sub-key, interned process-wide.
//!
//! Only IPv6 source-specific routes have a source prefix (`RTA_SRC`) in their key, and a
//! whole table has few distinct ones. Keeping it inline made every [`super::Entry`] 64
//! bytes (with the IPv6 next-hop identity it then held); interned, an entry holds a `u32`
//! and is 24 bytes. Id 0 is "none", which every IPv4 route and most IPv6 routes have, so
//! the common path takes no lock.
//!
//! The table is process-wide (not per [`super::Fib`]) so that an `Entry` can resolve its
//! own key without a handle to its FIB. Values are never forgotten: the set is bounded by
//! the distinct source prefixes the kernel ever reported, which is small.

use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};

use ipnet::IpNet;

/// Handle of an interned source prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ExtId(u32);

impl ExtId {
    /// The id as a number (stable for the life of the process).
    pub fn raw(self) -> u32 {
        self.0
    }
}

type Ext = Option<IpNet>;

#[derive(Default)]
struct Table {
    list: Vec<Ext>,
    ids: HashMap<Ext, u32>,
}

fn table() -> &'static RwLock<Table> {
    static T: OnceLock<RwLock<Table>> = OnceLock::new();
    T.get_or_init(|| {
        RwLock::new(Table {
            list: vec![None],
            ids: HashMap::from([(None, 0)]),
        })
    })
}

/// The id of `src`, interning it if new.
pub fn intern(src: Option<IpNet>) -> ExtId {
    if src.is_none() {
        return ExtId(0);
    }
    if let Some(id) = find(src) {
        return id;
    }
    // A poisoned lock only means another thread panicked mid-insert of a plain map
    // operation; the data is still consistent, so keep going rather than panic too.
    let mut t = table().write().unwrap_or_else(|e| e.into_inner());
    let next = t.list.len() as u32;
    let id = *t.ids.entry(src).or_insert(next);
    if id == next {
        t.list.push(src);
    }
    ExtId(id)
}

/// The id of `src` if it was ever interned (else no route can have that key).
pub fn find(src: Option<IpNet>) -> Option<ExtId> {
    if src.is_none() {
        return Some(ExtId(0));
    }
    let t = table().read().unwrap_or_else(|e| e.into_inner());
    t.ids.get(&src).map(|&i| ExtId(i))
}

/// The source prefix behind `id`.
pub fn resolve(id: ExtId) -> Ext {
    if id.0 == 0 {
        return None;
    }
    let t = table().read().unwrap_or_else(|e| e.into_inner());
    t.list.get(id.0 as usize).copied().unwrap_or(None)
}

/// Number of interned source prefixes (including "none").
pub fn len() -> usize {
    table().read().unwrap_or_else(|e| e.into_inner()).list.len()
}
