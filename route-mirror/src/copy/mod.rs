//! Kernel copies: keep a target table equal to a source table (of the same or another
//! namespace), or to a declared route set, under one scan/prune authority (BIRD krt's
//! other half: `krt_got_route`, `krt_prune`, `krt_replace_rte`).

pub mod filter;
pub mod iproute;
pub mod spec;
pub mod sync;
pub mod want;
