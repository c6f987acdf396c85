//! Kernel copies: keep a target table equal to a source table (of the same or another
//! namespace), or to a declared route set, under one scan/prune authority (BIRD krt's
//! other half: `krt_got_route`, `krt_prune`, `krt_replace_rte`).

/// The protocol of the routes copies install (the `copy_protocol` default).
pub use crate::config::COPY_PROTOCOL as PROTOCOL;

pub mod diff;
pub mod filter;
pub mod iproute;
pub mod keylist;
pub mod nhpool;
pub mod runner;
pub mod spec;
pub mod status;
pub mod sync;
pub mod want;
