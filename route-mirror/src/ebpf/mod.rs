//! The eBPF event source: a socket filter on the core's netlink socket moves every
//! notification into a BPF ring buffer (see `route-mirror-ebpf/`), so the socket queue
//! only carries dump replies and can no longer overflow under an event storm.
//!
//! The core consumes the ring synchronously in its own thread ([`EbpfSource::drain`]),
//! at points where doing so cannot reorder a dump chunk after a newer event (see
//! `daemon::core`). Lost records (ring full, message too long) are detected from the
//! kernel's per-CPU counters and force a full resync, exactly like ENOBUFS.

pub mod abi;
pub mod clock;
pub mod record;
pub mod ring;
pub mod stats;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::{Path, PathBuf};

use route_mirror_common::counter;

pub use record::Record;
use thiserror::Error;
use tracing::{info, warn};

pub use stats::RingStats;
use stats::{BatchSummary, Hist, LagSummary};

/// Root of the pins: `<PIN_ROOT>/<netns or "host">/{prog,ring,counters}`.
pub const PIN_ROOT: &str = "/sys/fs/bpf/route-mirror";
/// Hidden test knob: when set (non-empty), loading fails as if the verifier refused.
pub const FAIL_KNOB: &str = "ROUTE_MIRROR_TEST_EBPF_FAIL";
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// The embedded eBPF object: the source's program and ring, and the maps of the BPF FIB
/// export ([`crate::export::bpf_fib`]).
#[cfg(has_ebpf_obj)]
pub(crate) static OBJECT: Option<&[u8]> = Some(aya::include_bytes_aligned!(concat!(
    env!("OUT_DIR"),
    "/route-mirror.bpf.o"
)));
#[cfg(not(has_ebpf_obj))]
pub(crate) static OBJECT: Option<&[u8]> = None;

/// Why the eBPF source is unavailable (shown in the one fallback log line).
#[derive(Debug, Error)]
pub enum LoadError {
    #[error("eBPF object not built (build with `cargo xtask build`)")]
    NotBuilt,
    #[error("ring size {0} is not a power of two >= 4096")]
    BadRingSize(u64),
    #[error("loading disabled by the {FAIL_KNOB} test knob")]
    TestKnob,
    #[error("BPF not permitted (needs CAP_BPF or root, and BPF enabled): {0}")]
    Permission(String),
    #[error("{}", abi_message(*.found, *.want))]
    AbiMismatch { found: Option<u32>, want: u32 },
    #[error("{0}")]
    Other(String),
}

fn abi_message(found: Option<u32>, want: u32) -> String {
    match found {
        Some(f) => format!(
            "embedded eBPF object has record ABI {f:#010x}, this daemon decodes {want:#010x}: \
             the object is stale (rebuild with `cargo xtask build`)"
        ),
        None => format!(
            "embedded eBPF object has no record ABI (built before the check), this daemon \
             decodes {want:#010x}: rebuild with `cargo xtask build`"
        ),
    }
}

pub(crate) fn classify(context: &str, e: impl std::error::Error) -> LoadError {
    // aya wraps the errno deep inside; its Display chain mentions it.
    let mut msg = format!("{context}: {e}");
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    if msg.contains("Operation not permitted") || msg.contains("os error 1)") {
        LoadError::Permission(msg)
    } else {
        LoadError::Other(msg)
    }
}

/// Is the embedded object present?
pub fn object_built() -> bool {
    OBJECT.is_some()
}

pub struct EbpfSource {
    bpf: aya::Ebpf,
    /// Keeps the ring map (and its fd) alive for `ring`'s mappings.
    ring_map: aya::maps::MapData,
    ring: ring::Ring,
    /// Kernel memory charged for the ring map (fdinfo `memlock`).
    memlock: u64,
    counters: aya::maps::PerCpuArray<aya::maps::MapData, u64>,
    size: u64,
    pin_dir: Option<PathBuf>,
    /// drops + truncations already answered with a resync.
    seen_loss: u64,
    records: u64,
    bytes: u64,
    loss_resyncs: u64,
    lag: Hist,
    batch: Hist,
}

impl EbpfSource {
    /// Loads the program with our netlink `port` and a ring of `ring_size` bytes, and
    /// pins program and maps under `PIN_ROOT/<pin_name>/` when `pin_name` is given
    /// (a pin failure is logged, not fatal: pins are for inspection only).
    pub fn load(
        port: u32,
        ring_size: u64,
        pin_name: Option<&str>,
    ) -> Result<EbpfSource, LoadError> {
        let obj = OBJECT.ok_or(LoadError::NotBuilt)?;
        abi::check(obj)?;
        if !ring_size.is_power_of_two() || !(4096..=1 << 31).contains(&ring_size) {
            return Err(LoadError::BadRingSize(ring_size));
        }
        if std::env::var_os(FAIL_KNOB).is_some_and(|v| !v.is_empty()) {
            return Err(LoadError::TestKnob);
        }
        let mut bpf = aya::EbpfLoader::new()
            .override_global("OUR_PORT", &port, true)
            .map_max_entries("RING", ring_size as u32)
            .load(obj)
            .map_err(|e| classify("loading the eBPF object", e))?;
        socket_filter(&mut bpf)?
            .load()
            .map_err(|e| classify("verifying the socket filter", e))?;
        let pin_dir = match pin_name {
            Some(name) => match pin_all(&mut bpf, name) {
                Ok(dir) => Some(dir),
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "cannot pin the eBPF program and maps (bpftool inspection unavailable)");
                    None
                }
            },
            None => None,
        };
        let ring_map = match bpf.take_map("RING") {
            Some(aya::maps::Map::RingBuf(m)) => m,
            _ => return Err(LoadError::Other("map RING missing".into())),
        };
        let ring = ring::Ring::map(ring_map.fd().as_fd(), ring_size)
            .map_err(|e| classify("mapping the ring buffer", e))?;
        let memlock = memlock_of(ring_map.fd().as_fd().as_raw_fd()).unwrap_or(0);
        let counters = bpf
            .take_map("COUNTERS")
            .ok_or_else(|| LoadError::Other("map COUNTERS missing".into()))?;
        let counters =
            aya::maps::PerCpuArray::try_from(counters).map_err(|e| classify("map COUNTERS", e))?;
        Ok(EbpfSource {
            bpf,
            ring_map,
            ring,
            memlock,
            counters,
            size: ring_size,
            pin_dir,
            seen_loss: 0,
            records: 0,
            bytes: 0,
            loss_resyncs: 0,
            lag: Hist::default(),
            batch: Hist::default(),
        })
    }

    /// Attaches the filter to a (new) netlink socket (SO_ATTACH_BPF).
    pub fn attach(&mut self, sock: BorrowedFd<'_>) -> Result<(), LoadError> {
        socket_filter(&mut self.bpf)?
            .attach(sock)
            .map_err(|e| classify("SO_ATTACH_BPF on the netlink socket", e))
    }

    /// The ring's fd, readable while any record is unconsumed (for `poll`).
    pub fn fd(&self) -> RawFd {
        self.ring_map.fd().as_fd().as_raw_fd()
    }

    /// Bytes in the ring not yet consumed (a load from the mapping, no syscall).
    pub fn pending(&self) -> u64 {
        self.ring.pending()
    }

    /// Hands up to `max` records to `f` in ring order, stopping at the first one the
    /// filter saw at or after `before` (CLOCK_MONOTONIC ns; `u64::MAX`: no bound).
    /// Returns how many were read.
    pub fn drain(&mut self, max: usize, before: u64, mut f: impl FnMut(Record<'_>)) -> usize {
        let now = monotonic_ns();
        let lag = &mut self.lag;
        let (n, bytes) = self.ring.consume(max, |rec| {
            let Some((h, body)) = record::split(rec) else {
                return true; // cannot happen (the filter writes whole headers): skip it
            };
            if h.ktime_ns >= before {
                return false;
            }
            lag.add(now.saturating_sub(h.ktime_ns));
            f(Record::of(&h, body));
            true
        });
        if n > 0 {
            self.records += n as u64;
            self.bytes += bytes;
            self.batch.add(n as u64);
        }
        n
    }

    /// Sum over CPUs of every kernel counter (`high_water` is the max).
    pub fn kernel_counters(&self) -> [u64; counter::LEN as usize] {
        let mut out = [0u64; counter::LEN as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            if let Ok(vals) = self.counters.get(&(i as u32), 0) {
                *slot = if i as u32 == counter::HIGH_WATER {
                    vals.iter().copied().max().unwrap_or(0)
                } else {
                    vals.iter().copied().fold(0u64, u64::wrapping_add)
                };
            }
        }
        out
    }

    /// True (once per loss) when the kernel dropped or truncated records since the last
    /// call: the caller must resync.
    ///
    /// Reads only the two loss counters (one syscall each): this runs after every
    /// drain, and reading all 16 counters there was most of the eBPF source's syscalls
    /// in the 1M-route bench.
    pub fn take_loss(&mut self) -> bool {
        let sum = |i: u32| {
            self.counters
                .get(&i, 0)
                .map(|v| v.iter().copied().fold(0u64, u64::wrapping_add))
                .unwrap_or(0)
        };
        let loss = sum(counter::DROPS) + sum(counter::TRUNCATED);
        if loss > self.seen_loss {
            self.seen_loss = loss;
            self.loss_resyncs += 1;
            true
        } else {
            false
        }
    }

    pub fn stats(&self) -> RingStats {
        let c = self.kernel_counters();
        let hw = c[counter::HIGH_WATER as usize];
        RingStats {
            size_bytes: self.size,
            memlock_bytes: self.memlock,
            kernel: counter::NAMES
                .iter()
                .zip(c)
                .map(|(n, v)| (n.to_string(), v))
                .collect(),
            records_read: self.records,
            bytes_read: self.bytes,
            loss_resyncs: self.loss_resyncs,
            high_water_bytes: hw,
            high_water_fill: hw as f64 / self.size as f64,
            lag: LagSummary::of(&self.lag),
            batch: BatchSummary::of(&self.batch),
            pinned: self.pin_dir.as_ref().map(|d| d.display().to_string()),
        }
    }
}

impl Drop for EbpfSource {
    /// Clean exit: the pins go (the program and maps die with the last reference).
    fn drop(&mut self) {
        if let Some(dir) = &self.pin_dir {
            if let Err(e) = std::fs::remove_dir_all(dir) {
                warn!(dir = %dir.display(), error = %e, "cannot remove the BPF pins");
            } else {
                info!(dir = %dir.display(), "BPF pins removed");
            }
        }
    }
}

fn socket_filter(bpf: &mut aya::Ebpf) -> Result<&mut aya::programs::SocketFilter, LoadError> {
    bpf.program_mut("route_mirror")
        .ok_or_else(|| LoadError::Other("program route_mirror missing from the object".into()))?
        .try_into()
        .map_err(|e| classify("program type", e))
}

/// The `memlock` line of a BPF map fd's fdinfo: the kernel memory charged for it.
fn memlock_of(fd: RawFd) -> Option<u64> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
}

/// CLOCK_MONOTONIC in ns: the clock `bpf_ktime_get_ns` reads.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Mounts bpffs at /sys/fs/bpf unless it is already there.
fn ensure_bpffs() -> anyhow::Result<()> {
    let root = std::ffi::CString::new("/sys/fs/bpf")?;
    // SAFETY: statfs fills a struct we own; the path is a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(root.as_ptr(), &mut st) } == 0 && st.f_type as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    std::fs::create_dir_all("/sys/fs/bpf")?;
    let fstype = std::ffi::CString::new("bpf")?;
    // SAFETY: valid C strings, no data argument.
    let r = unsafe {
        libc::mount(
            fstype.as_ptr(),
            root.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error())
            .map_err(|e| anyhow::anyhow!("mounting bpffs at /sys/fs/bpf: {e}"));
    }
    info!("mounted bpffs at /sys/fs/bpf");
    Ok(())
}

/// The pin directory of a namespace, created (bpffs mounted) if needed; old pin
/// directories of namespaces that are gone are swept on the way.
pub(crate) fn pin_dir(name: &str) -> anyhow::Result<PathBuf> {
    use anyhow::Context;
    ensure_bpffs()?;
    let dir = Path::new(PIN_ROOT).join(sanitize(name));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    sweep_orphans();
    Ok(dir)
}

/// Removes pin directories of namespaces that no longer exist (left by a daemon that
/// was killed): each holds a ring's kernel memory until its pins go.
fn sweep_orphans() {
    let Ok(entries) = std::fs::read_dir(PIN_ROOT) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        if name == "host" || Path::new("/run/netns").join(&name).exists() {
            continue;
        }
        if std::fs::remove_dir_all(e.path()).is_ok() {
            info!(dir = %e.path().display(), "removed the pins of a namespace that is gone");
        }
    }
}

/// Pins program, ring and counters under `PIN_ROOT/<name>/`, replacing stale pins of an
/// earlier run (a pin is only a reference: removing it never affects a live user).
fn pin_all(bpf: &mut aya::Ebpf, name: &str) -> anyhow::Result<PathBuf> {
    use anyhow::Context;
    let dir = pin_dir(name)?;
    for f in ["prog", "ring", "counters"] {
        let p = dir.join(f);
        if p.exists() {
            std::fs::remove_file(&p)
                .with_context(|| format!("removing stale pin {}", p.display()))?;
        }
    }
    for (map, file) in [("RING", "ring"), ("COUNTERS", "counters")] {
        bpf.map(map)
            .with_context(|| format!("map {map} missing"))?
            .pin(dir.join(file))
            .with_context(|| format!("pinning map {map}"))?;
    }
    bpf.program_mut("route_mirror")
        .context("program route_mirror missing")?
        .pin(dir.join("prog"))
        .context("pinning the program")?;
    Ok(dir)
}
