//! Kernel copies: keep a target table equal to a source table (of the same or another
//! namespace), or to a declared route set, under one scan/prune authority (BIRD krt's
//! other half: `krt_got_route`, `krt_prune`, `krt_replace_rte`).

/// The protocol of the routes copies install (`route-mirror` in
/// /etc/iproute2/rt_protos.d/route-mirror.conf, shipped by the package): unassigned by
/// iproute2 and by the routing daemons that claim numbers (FRR 186-199, BIRD 12).
pub const PROTOCOL: u8 = 240;

pub mod diff;
pub mod filter;
pub mod iproute;
pub mod runner;
pub mod spec;
pub mod status;
pub mod sync;
pub mod want;
