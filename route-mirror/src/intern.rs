//! Interning of route attributes, as BIRD caches its `rta`s: a full Internet table has
//! a million routes but only a few thousand distinct attribute sets, so each route
//! holds an `Arc` to a shared one.

use std::sync::Arc;

use rustc_hash::FxHashSet;

use crate::model::RouteAttrs;

/// Hashed with FxHash: every applied route change hashes its attributes once, and
/// SipHash was 2-3% of the daemon's CPU during a 1M-route load (BENCHMARKS.md). The
/// input is the kernel's routes, not an adversary's choice of keys.
#[derive(Default)]
pub struct Interner {
    set: FxHashSet<Arc<RouteAttrs>>,
}

impl Interner {
    /// The shared copy of `attrs` (stored if new).
    pub fn intern(&mut self, attrs: Arc<RouteAttrs>) -> Arc<RouteAttrs> {
        if let Some(a) = self.set.get(&attrs) {
            return a.clone();
        }
        self.set.insert(attrs.clone());
        attrs
    }

    /// Forgets attribute sets no route uses any more.
    pub fn collect(&mut self) -> usize {
        let before = self.set.len();
        self.set.retain(|a| Arc::strong_count(a) > 1);
        before - self.set.len()
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}
