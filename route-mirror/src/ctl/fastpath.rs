//! Lock-free lookups for the control socket: a background thread keeps a [`FastFib`]
//! snapshot (plus the link names and nexthop objects it renders with) published through
//! an `ArcSwap`; requests use it while it is current and take the mirror's read lock for
//! the exact path otherwise.
//!
//! Rebuild policy: once the mirror has been quiet for [`QUIET`] (no version change),
//! the thread takes the read lock only to copy out prefixes and classes
//! ([`crate::fib::Fib::extract`]), builds the tries without the lock and swaps them in.
//! During a burst the snapshot is stale, so lookups answer from the exact trie (correct,
//! slower, and they share the lock with the writer); BENCHMARKS.md has the numbers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, TryLockError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use serde_json::{json, Value};

use crate::daemon::Shared;
use crate::fib::fast::FastFib;
use crate::mirror::Names;

/// How long the mirror must stay unchanged before a rebuild.
pub const QUIET: Duration = Duration::from_millis(50);
/// How often the rebuilder looks at the mirror's version.
const POLL: Duration = Duration::from_millis(10);

/// A FIB snapshot and what rendering its routes needs.
pub struct Snapshot {
    pub fib: FastFib,
    pub names: Names,
}

#[derive(Default)]
pub struct FastPath {
    snap: ArcSwapOption<Snapshot>,
    builds: AtomicU64,
    last_extract_us: AtomicU64,
    last_build_us: AtomicU64,
    last_heap_bytes: AtomicU64,
    /// Lookups answered from a snapshot / from the exact trie under the lock.
    pub fast_lookups: AtomicU64,
    pub exact_lookups: AtomicU64,
}

impl FastPath {
    /// The snapshot, if the mirror has not changed since it was taken.
    pub fn current(&self) -> Option<Arc<Snapshot>> {
        let s = self.snap.load_full()?;
        s.fib.is_current().then_some(s)
    }

    /// Starts the rebuild thread. It stops when the daemon's state is dropped.
    pub fn spawn_rebuilder(self: &Arc<Self>, shared: &Arc<Shared>) -> std::io::Result<()> {
        let me = Arc::downgrade(self);
        let shared = Arc::downgrade(shared);
        std::thread::Builder::new()
            .name("rm-fib-fast".into())
            .spawn(move || {
                let mut seen = None;
                let mut changed_at = Instant::now();
                loop {
                    std::thread::sleep(POLL);
                    let (Some(me), Some(shared)) = (me.upgrade(), shared.upgrade()) else {
                        return;
                    };
                    // Never queue behind the writer just to read a number.
                    let version = match shared.mirror.try_read() {
                        Ok(m) => m.fib.version(),
                        Err(TryLockError::WouldBlock) => {
                            changed_at = Instant::now();
                            continue;
                        }
                        Err(TryLockError::Poisoned(_)) => return,
                    };
                    if me.snap.load().as_ref().map(|s| s.fib.version()) == Some(version) {
                        continue;
                    }
                    if seen != Some(version) {
                        seen = Some(version);
                        changed_at = Instant::now();
                        continue;
                    }
                    if changed_at.elapsed() < QUIET {
                        continue;
                    }
                    me.rebuild(&shared);
                }
            })
            .map(|_| ())
    }

    /// Takes a snapshot now (extract under the read lock, build without it).
    pub fn rebuild(&self, shared: &Shared) {
        let t0 = Instant::now();
        let (extract, names) = {
            let Ok(m) = shared.mirror.read() else { return };
            (m.fib.extract(), m.names())
        };
        let t1 = Instant::now();
        let fib = extract.build();
        let t2 = Instant::now();
        self.last_heap_bytes
            .store(fib.heap_bytes() as u64, Ordering::Relaxed);
        self.snap.store(Some(Arc::new(Snapshot { fib, names })));
        self.builds.fetch_add(1, Ordering::Relaxed);
        self.last_extract_us
            .store((t1 - t0).as_micros() as u64, Ordering::Relaxed);
        self.last_build_us
            .store((t2 - t1).as_micros() as u64, Ordering::Relaxed);
        release_free_memory();
    }

    pub fn stats(&self) -> Value {
        let snap = self.snap.load();
        json!({
            "current": snap.as_ref().is_some_and(|s| s.fib.is_current()),
            "version": snap.as_ref().map(|s| s.fib.version()),
            "builds": self.builds.load(Ordering::Relaxed),
            "last_extract_us": self.last_extract_us.load(Ordering::Relaxed),
            "last_build_us": self.last_build_us.load(Ordering::Relaxed),
            "heap_bytes": self.last_heap_bytes.load(Ordering::Relaxed),
            "fast_lookups": self.fast_lookups.load(Ordering::Relaxed),
            "exact_lookups": self.exact_lookups.load(Ordering::Relaxed),
        })
    }
}

/// Hands freed heap memory back to the kernel. glibc keeps what a burst freed (the
/// dump's decode buffers, the previous snapshot, a batch's buffers, in several
/// per-thread arenas) as RSS: measured after a full sync plus batch lookups, 147 MB
/// before and 93 MB after trimming (BENCHMARKS.md). Called after each rebuild (the
/// mirror has just gone quiet) and after each batch; it takes a few milliseconds and
/// holds no lock of ours.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions; it only returns free pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}
