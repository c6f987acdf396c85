//! Lock-free lookups for the control socket: a background thread keeps a [`FastFib`]
//! snapshot (plus the link names and nexthop objects it renders with) published through
//! an `ArcSwap`; requests use it while it is current and take the mirror's read lock for
//! the exact path otherwise.
//!
//! Rebuild policy: once the mirror has been quiet for [`QUIET`] (no version change;
//! longer after an abandoned rebuild, up to [`QUIET_MAX`]),
//! the thread copies out prefixes and classes a few pieces at a time under the read
//! lock ([`ExtractCursor`]; it starts again later if the mirror changes meanwhile),
//! builds the tries without the lock and swaps them in.
//! During a burst the snapshot is stale, so lookups answer from the exact trie (correct,
//! slower, and they share the lock with the writer); BENCHMARKS.md has the numbers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, TryLockError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;

use crate::fib::fast::{ExtractCursor, FastFib, Step};
use crate::mirror::Names;
use crate::shared::Shared;
use crate::stats::FastLookupStats;

/// How long the mirror must stay unchanged before a rebuild.
pub const QUIET: Duration = Duration::from_millis(50);
/// After a rebuild the mirror's changes cut short, the quiet time doubles up to this
/// (and returns to [`QUIET`] after a rebuild that completes). A burst that pauses now
/// and then (a loaded machine descheduling the writer) started and abandoned a ~300 ms
/// extract at nearly every pause: 12% of the daemon's CPU during a 1M-route load.
pub const QUIET_MAX: Duration = Duration::from_millis(1600);
/// Prefixes extracted per read-lock hold: a few milliseconds at most (BENCHMARKS.md).
pub const PREFIXES_PER_LOCK: usize = 8192;
/// How often the rebuilder looks at the mirror's version.
const POLL: Duration = Duration::from_millis(10);

/// A FIB snapshot and what rendering its routes needs.
pub struct Snapshot {
    pub fib: FastFib,
    pub names: Names,
    /// The policy rules at the same moment (any change makes the snapshot stale), and
    /// the links they and lookups name.
    pub rules: Arc<crate::fib::rules::RuleSet>,
    pub links: crate::fib::l3mdev::LinkMap,
    /// The host's addresses (an output lookup from another source fails).
    pub local: std::collections::HashSet<std::net::IpAddr>,
}

#[derive(Default)]
pub struct FastPath {
    snap: ArcSwapOption<Snapshot>,
    builds: AtomicU64,
    /// Rebuilds given up because the mirror changed during the extract.
    aborted: AtomicU64,
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
                let mut quiet = QUIET;
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
                    if changed_at.elapsed() < quiet {
                        continue;
                    }
                    quiet = if me.rebuild(&shared) {
                        QUIET
                    } else {
                        (quiet * 2).min(QUIET_MAX)
                    };
                }
            })
            .map(|_| ())
    }

    /// Takes a snapshot now: extracted in pieces under the read lock, released between
    /// pieces so the core never waits long to write, then built without the lock.
    /// Returns false (and counts it) when the mirror changed during the extract.
    pub fn rebuild(&self, shared: &Shared) -> bool {
        let t0 = Instant::now();
        let mut cursor = None;
        let (extract, (names, rules, links, local)) = loop {
            let Ok(m) = shared.mirror.read() else {
                return false;
            };
            let c = cursor.get_or_insert_with(|| ExtractCursor::new(&m.fib));
            // Dead routes are left out, as the kernel's lookup skips them.
            let step = c.step_with(&m.fib, PREFIXES_PER_LOCK, &mut m.usable_fn());
            match step {
                Step::More => continue,
                Step::Done(x) => {
                    let local = m.addrs.keys().map(|a| a.addr).collect();
                    break (x, (m.names(), m.rules.set(), m.rules.links.clone(), local));
                }
                Step::Changed => {
                    self.aborted.fetch_add(1, Ordering::Relaxed);
                    return false;
                }
            }
        };
        let t1 = Instant::now();
        let fib = extract.build();
        let t2 = Instant::now();
        self.last_heap_bytes
            .store(fib.heap_bytes() as u64, Ordering::Relaxed);
        self.snap.store(Some(Arc::new(Snapshot {
            fib,
            names,
            rules,
            links,
            local,
        })));
        self.builds.fetch_add(1, Ordering::Relaxed);
        self.last_extract_us
            .store((t1 - t0).as_micros() as u64, Ordering::Relaxed);
        self.last_build_us
            .store((t2 - t1).as_micros() as u64, Ordering::Relaxed);
        release_free_memory();
        true
    }

    pub fn stats(&self) -> FastLookupStats {
        let snap = self.snap.load();
        FastLookupStats {
            current: snap.as_ref().is_some_and(|s| s.fib.is_current()),
            version: snap.as_ref().map(|s| s.fib.version()),
            builds: self.builds.load(Ordering::Relaxed),
            aborted_builds: self.aborted.load(Ordering::Relaxed),
            last_extract_us: self.last_extract_us.load(Ordering::Relaxed),
            last_build_us: self.last_build_us.load(Ordering::Relaxed),
            heap_bytes: self.last_heap_bytes.load(Ordering::Relaxed),
            fast_lookups: self.fast_lookups.load(Ordering::Relaxed),
            exact_lookups: self.exact_lookups.load(Ordering::Relaxed),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fib::fast::Lookup;
    use crate::fib::{Entry, DEFAULT_RULE_TABLES};
    use crate::mirror::Mirror;
    use crate::model::{rtn, table, Family, NextHop, RouteAttrs, SubKey};
    use std::net::IpAddr;
    use std::sync::atomic::AtomicBool;

    const GENERATIONS: u32 = 400;
    /// Every this many generations the writer pauses until readers used a snapshot.
    const PAUSE_EVERY: u32 = 50;

    fn attrs(gen: u32) -> Arc<RouteAttrs> {
        Arc::new(RouteAttrs {
            kind: rtn::UNICAST,
            nexthops: vec![NextHop::new(None, 2)].into(),
            metrics: crate::model::Metrics::new(vec![(
                crate::model::rtax::MTU,
                crate::model::MetricValue::U32(gen),
            )]),
            ..Default::default()
        })
    }

    /// Generation `gen` of both routes, in one write: a reader must see both or neither.
    fn write_generation(m: &mut Mirror, gen: u32) {
        let sub = SubKey::metric(0);
        for net in ["10.0.0.0/8", "2001:db8::/32"] {
            let net = net.parse().unwrap();
            m.fib
                .table_mut(Family::of_net(&net), table::MAIN)
                .upsert(&net, Entry::new(sub, attrs(gen), 0));
        }
    }

    const PROBES: [&str; 2] = ["10.1.2.3", "2001:db8::1"];

    /// The generations the two probes see, from one snapshot or one read lock.
    fn read(fast: &FastPath, shared: &Shared) -> (bool, [Option<u32>; 2]) {
        let addrs: [IpAddr; 2] = PROBES.map(|a| a.parse().unwrap());
        if let Some(s) = fast.current() {
            let gens = addrs.map(|a| match s.fib.lookup(a, &DEFAULT_RULE_TABLES, 0) {
                Lookup::Route(_, _, e) => e.attrs.mtu(),
                Lookup::None => None,
                Lookup::Exact => panic!("TOS 0 lookups never need the exact path"),
            });
            return (true, gens);
        }
        let m = shared.mirror.read().unwrap();
        let gens = addrs.map(|a| {
            m.fib
                .lookup(a, &DEFAULT_RULE_TABLES, 0)
                .and_then(|(_, _, e)| e.attrs.mtu())
        });
        (false, gens)
    }

    fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Readers during writes, through the rebuild thread the daemon runs: every read
    /// sees one whole generation (never one route old and the other new), generations
    /// never go backwards for a reader, snapshots are used between bursts and the exact
    /// trie during them, and the last generation is what everyone ends up seeing.
    #[test]
    fn readers_during_writes_never_see_a_half_applied_change() {
        let shared = Arc::new(Shared::detached(Mirror::new()).unwrap());
        write_generation(&mut shared.mirror.write().unwrap(), 0);
        let fast = Arc::new(FastPath::default());
        fast.spawn_rebuilder(&shared).unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let fast_reads = Arc::new(AtomicU64::new(0));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (shared, fast, done, fast_reads) = (
                    shared.clone(),
                    fast.clone(),
                    done.clone(),
                    fast_reads.clone(),
                );
                std::thread::spawn(move || {
                    let (mut last, mut exact_reads) = (0u32, 0u64);
                    while !done.load(Ordering::Acquire) {
                        let (from_snapshot, [a, b]) = read(&fast, &shared);
                        assert_eq!(a, b, "half-applied change (snapshot: {from_snapshot})");
                        let gen = a.expect("both routes always exist");
                        assert!(gen >= last, "generation went back from {last} to {gen}");
                        last = gen;
                        if from_snapshot {
                            fast_reads.fetch_add(1, Ordering::Relaxed);
                        } else {
                            exact_reads += 1;
                        }
                    }
                    exact_reads
                })
            })
            .collect();
        for gen in 1..=GENERATIONS {
            write_generation(&mut shared.mirror.write().unwrap(), gen);
            if gen % PAUSE_EVERY == 0 {
                // Quiet: the rebuilder publishes a snapshot and readers switch to it.
                let before = fast_reads.load(Ordering::Relaxed);
                wait_for("a current snapshot", || fast.current().is_some());
                wait_for("a snapshot read", || {
                    fast_reads.load(Ordering::Relaxed) > before
                });
            } else {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        let last = read(&fast, &shared).1;
        done.store(true, Ordering::Release);
        let exact_reads: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
        assert_eq!(last, [Some(GENERATIONS); 2]);
        assert!(fast_reads.load(Ordering::Relaxed) >= u64::from(GENERATIONS / PAUSE_EVERY));
        assert!(
            exact_reads > 0,
            "no read ever took the exact path during writes"
        );
        assert!(fast.builds.load(Ordering::Relaxed) >= u64::from(GENERATIONS / PAUSE_EVERY));
    }
}
