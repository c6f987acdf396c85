//! route-mirror: an exact, always-current userspace copy of the kernel routing tables.
//!
//! Data path, top-down: [`netlink`] (sources: multicast events and dumps, one socket)
//! → [`netlink::decode`] → [`mirror`] (apply changes, [`reconcile`] mark-and-sweep)
//! → [`fib`] (an LPM trie per family and table) → [`ctl`] (queries, stats, diff).

pub mod fib;
pub mod model;
