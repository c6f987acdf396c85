//! The rare part of a route's sub-key, interned process-wide.
//!
//! Only IPv6 routes have a source prefix (`RTA_SRC`) or a next-hop identity in their key
//! ([`HopId`]), and a whole table has few distinct values of them (one per device,
//! RA router or nexthop object). Keeping them inline made every [`super::Entry`] 64 bytes;
//! interned, an entry holds a `u32` and is 24 bytes. Id 0 is "neither", which every
//! IPv4 route and most IPv6 routes have, so the common path takes no lock.
//!
//! The table is process-wide (not per [`super::Fib`]) so that an `Entry` can resolve its
//! own key without a handle to its FIB. Values are never forgotten: the set is bounded by
//! the distinct (source prefix, next hop) pairs the kernel ever reported, which is small.

use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};

use ipnet::IpNet;

use crate::model::HopId;

/// Handle of an interned (source prefix, next-hop identity) pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ExtId(u32);

impl ExtId {
    /// The id as a number (stable for the life of the process).
    pub fn raw(self) -> u32 {
        self.0
    }
}

type Ext = (Option<IpNet>, Option<HopId>);

#[derive(Default)]
struct Table {
    list: Vec<Ext>,
    ids: HashMap<Ext, u32>,
}

fn table() -> &'static RwLock<Table> {
    static T: OnceLock<RwLock<Table>> = OnceLock::new();
    T.get_or_init(|| {
        RwLock::new(Table {
            list: vec![(None, None)],
            ids: HashMap::from([((None, None), 0)]),
        })
    })
}

/// The id of `(src, hop)`, interning it if new.
pub fn intern(src: Option<IpNet>, hop: Option<HopId>) -> ExtId {
    if src.is_none() && hop.is_none() {
        return ExtId(0);
    }
    if let Some(id) = find(src, hop) {
        return id;
    }
    // A poisoned lock only means another thread panicked mid-insert of a plain map
    // operation; the data is still consistent, so keep going rather than panic too.
    let mut t = table().write().unwrap_or_else(|e| e.into_inner());
    let next = t.list.len() as u32;
    let id = *t.ids.entry((src, hop)).or_insert(next);
    if id == next {
        t.list.push((src, hop));
    }
    ExtId(id)
}

/// The id of `(src, hop)` if it was ever interned (else no route can have that key).
pub fn find(src: Option<IpNet>, hop: Option<HopId>) -> Option<ExtId> {
    if src.is_none() && hop.is_none() {
        return Some(ExtId(0));
    }
    let t = table().read().unwrap_or_else(|e| e.into_inner());
    t.ids.get(&(src, hop)).map(|&i| ExtId(i))
}

/// The pair behind `id`.
pub fn resolve(id: ExtId) -> Ext {
    if id.0 == 0 {
        return (None, None);
    }
    let t = table().read().unwrap_or_else(|e| e.into_inner());
    t.list.get(id.0 as usize).copied().unwrap_or((None, None))
}

/// Number of interned pairs (including the empty one).
pub fn len() -> usize {
    table().read().unwrap_or_else(|e| e.into_inner()).list.len()
}
