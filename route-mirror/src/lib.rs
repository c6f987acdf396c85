//! route-mirror: an exact, always-current userspace copy of the kernel routing tables.
//!
//! Data path, top-down: [`netlink`] (source: multicast events and dumps on one socket)
//! → [`netlink::decode`] → [`mirror`] (apply events; [`reconcile`] mark-and-sweep on
//! dumps) → [`fib`] (an LPM trie per family and table) → [`export`] (everything that
//! follows the mirror's changes: watch, the BPF FIB, feeds) and [`ctl`] (queries,
//! [`stats`]), with [`diff`] the correctness oracle. The core loop ([`daemon`]) owns the
//! order; [`shared`] is where it meets its readers.

#![recursion_limit = "256"]

pub mod config;
pub mod copy;
pub mod ctl;
pub mod daemon;
pub mod diff;
pub mod ebpf;
pub mod export;
pub mod fib;
pub mod fleet;
pub mod intern;
pub mod liveness;
pub mod lwt;
pub mod metrics;
pub mod mirror;
pub mod model;
pub mod names;
pub mod netlink;
pub mod netns;
pub mod reconcile;
pub mod rule;
pub mod shared;
pub mod stats;
pub mod view;
pub mod writer;
