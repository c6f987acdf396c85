//! Exports: everything that follows the mirror from outside the core loop hangs off
//! one change funnel, in the spirit of FRR's dataplane providers (`zebra_dplane.h`:
//! name, start, work, fini) and BIRD's krt hooks.
//!
//! The funnel: every route change the mirror applies (event, inferred removal, scan
//! correction) goes through `Mirror::note` into its [`Journal`](crate::mirror::Journal)
//! while any export consumes it. After each batch the core hands the journal to
//! [`hub::Exports::publish`], still under the mirror's write lock, as one
//! [`change::Batch`] of [`change::Delta`]s (op add/replace/delete, cause
//! event/inferred/scan, table, prefix, the route entry). A batch also says what changed
//! the routes' next hops or their rendering without a delta of their own: a nexthop
//! object changed (`nexthops_changed`: routes using objects may forward differently)
//! and links renamed or removed (`links_renamed`: whatever shows a route's device by
//! name, the AFT's next hops and NATS route objects, must re-read it). Resyncs are
//! bracketed by [`change::Marker`]s. Exports never reach back into the sources: they read the
//! mirror, and only through what the hub gives them.
//!
//! Two kinds of export:
//!
//! * On the core thread, each bounded and quick per change: [`watch`] (renders each
//!   change for `route-mirror watch`; a client that falls behind is dropped) and
//!   [`bpf_fib`] (the pinned BPF FIB: marks dirty prefixes, writes its maps when the
//!   core flushes, before barriers are answered).
//! * On their own thread or task, through a [`feed::Feed`] (kernel copies, [`gnmi`]
//!   through [`afts`], NATS):
//!   a bounded queue the core only appends to. A feed that falls behind stops
//!   receiving changes and is told to resnapshot, and `stats` counts it (`feeds`), so a
//!   slow export never slows the core and never silently misses a change.
//!
//! Counters are not changes: `stats` and the Prometheus metrics read them as
//! [`crate::stats::Stats`], the feeds' own counters included.
//!
//! A feed's life, FRR's provider callbacks in Rust terms: `subscribe` (name, start),
//! `snapshot` then `recv` in a loop (work), drop (fini). [`feed::Feed::snapshot`] is
//! exact: changes queued before it are in it, changes received after it are not.
//!
//! ```
//! use std::sync::{Arc, RwLock};
//! use route_mirror::export::{feed::Update, hub::{Exports, Hub}};
//! use route_mirror::mirror::Mirror;
//! use route_mirror::model::{rtn, Change, NextHop, Route, RouteAttrs, RouteKey, SubKey};
//!
//! let mirror = Arc::new(RwLock::new(Mirror::new()));
//! let hub = Hub::new(None, mirror.clone()); // in the daemon: `shared.exports`
//!
//! // An export: subscribe, copy the mirror, then follow its changes.
//! let mut feed = hub.subscribe("example", 1 << 20);
//! let copy = feed.snapshot();
//! assert!(copy.routes.is_empty() && !copy.synced);
//!
//! // The core applies an event and publishes it (what `daemon::core` does per batch).
//! let mut core = Exports::new(hub.clone(), None);
//! {
//!     let mut m = mirror.write().unwrap();
//!     core.begin(&mut m);
//!     let attrs = Arc::new(RouteAttrs {
//!         kind: rtn::UNICAST,
//!         nexthops: vec![NextHop::new(Some("192.0.2.1".parse()?), 2)].into(),
//!         ..Default::default()
//!     });
//!     let key = RouteKey { table: 254, dst: "10.0.0.0/8".parse()?, sub: SubKey::metric(0) };
//!     m.apply(Change::NewRoute { route: Route { key, attrs }, flags: 0 });
//!     core.publish(&mut m, "netlink");
//! }
//!
//! match feed.try_recv() {
//!     Some(Update::Changes(batch)) => {
//!         let d = &batch.deltas[0];
//!         assert_eq!((d.table, d.dst.to_string()), (254, "10.0.0.0/8".to_string()));
//!     }
//!     // Fell behind: `feed.snapshot()` again, then carry on.
//!     Some(Update::Resnapshot) => unreachable!("a fresh feed with room to spare"),
//!     other => panic!("unexpected {other:?}"),
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

/// Counters of the network exports (one each per process), shown by `stats`.
pub static GNMI_STATS: std::sync::OnceLock<std::sync::Arc<gnmi::service::GnmiStats>> =
    std::sync::OnceLock::new();
pub static NATS_STATS: std::sync::OnceLock<std::sync::Arc<nats::NatsStats>> =
    std::sync::OnceLock::new();

pub mod aft;
pub mod afts;
pub mod bpf_fib;
pub mod change;
pub mod feed;
pub mod gnmi;
pub mod hub;
pub mod nats;
pub mod watch;
