//! The core loop of one mirrored namespace: the only owner of its netlink socket.
//!
//! It reads the socket's one queue in order: dump replies (our port and the active
//! scan's sequence number) are *marked* into the mirror, everything else is an event
//! and is *applied*. Scans run one at a time; requests arriving meanwhile merge into
//! one pending scan. Runs on its own thread: a million-route dump is CPU work that
//! should not sit on the async runtime.

use std::io;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tracing::{debug, error, info, warn};

use crate::ebpf::{self, EbpfSource};
use crate::export::change::Marker;
use crate::export::hub::Exports;
use crate::mirror::{FollowUp, Mirror};
use crate::model::Family;
use crate::netlink::decode::{self, DecodeCounters};
use crate::netlink::msg::{self, DumpKind, RawMsg};
use crate::netlink::socket::{NlSocket, RECV_BUF};
use crate::reconcile::{ActiveScan, ScanReason, ScanReport, ScanScope};
use crate::shared::{Command, Shared};
use route_mirror_common::groups;

/// Datagrams handled before looking at commands again, so queries and barriers stay
/// responsive during a long dump.
const BATCH: usize = 64;
/// A progress line every this many dumped routes (a full table logs a handful).
const PROGRESS_EVERY: u64 = 250_000;
/// How long applied ring records may wait for a read of the ring's loss counters (one
/// `bpf` syscall each). Reading them on every drain pass cost ~2 syscalls per 5 records
/// under load (BENCHMARKS.md). A drop needs a full ring, so records drained after it
/// start this clock again: every loss is seen within `LOSS_CHECK` of the next drain,
/// and always before a barrier is answered, a dump is requested or a prune runs.
const LOSS_CHECK: Duration = Duration::from_millis(5);
/// Loss counters are read at least this often even with no records (belt and braces).
const LOSS_CHECK_IDLE: Duration = Duration::from_secs(1);
/// How often the ring's kernel counters in `stats` are refreshed while busy.
const RING_STATS_EVERY: Duration = Duration::from_millis(100);
/// Ring records applied per drain before looking at commands and the socket again.
/// Also bounds how long one drain holds the mirror's write lock (about a microsecond
/// per record). Single-lookup p99 during a 1M-route burst measured the same (2 ms) at
/// 4096, 512 and 64: CPU contention, not this lock, sets it (BENCHMARKS.md).
const RING_BATCH: usize = 512;

/// What applying events produced, flushed into the status after each batch.
#[derive(Default)]
struct EventAcc {
    followups: Vec<FollowUp>,
    events: u64,
    dropped: u64,
}

struct Pending {
    reason: ScanReason,
    scope: ScanScope,
    waiters: Vec<oneshot::Sender<ScanReport>>,
}

pub struct Core {
    sock: NlSocket,
    rcvbuf: usize,
    shared: Arc<Shared>,
    commands: Receiver<Command>,
    scan_interval: Duration,
    buf: Vec<u8>,
    scan: Option<(ActiveScan, Vec<oneshot::Sender<ScanReport>>)>,
    pending: Option<Pending>,
    barriers: Vec<oneshot::Sender<()>>,
    next_periodic: Instant,
    drop_events: u64,
    decode: DecodeCounters,
    /// The socket's drop counter as last seen (silent drops show as an increase).
    drops_seen: u32,
    /// After a loss, drain the queue to empty before the resync's first dump request:
    /// a congested socket drops every notification silently until a `recv` finds its
    /// queue empty, and a running dump never lets it be empty.
    drain_first: bool,
    /// Malformed messages logged so far (the log is capped; the counter is not).
    malformed_logged: u64,
    started: Instant,
    /// The eBPF source, when active: notifications arrive on its ring, not the socket.
    ebpf: Option<EbpfSource>,
    /// Consecutive scans redone because a dump may have skipped entries.
    redumps: u32,
    /// An IPv6 route dump just finished: removals still in the ring happened during it.
    v6_dump_just_done: bool,
    /// Where applied changes go (watch, the BPF FIB, feeds).
    exports: Exports,
    /// Ring records were applied since this instant and the loss counters not read
    /// since (see [`LOSS_CHECK`]).
    ring_unchecked: Option<Instant>,
    last_loss_check: Instant,
    last_ring_stats: Instant,
    /// A ring loss was found since the ring counters were last published.
    ring_lost: bool,
}

impl Core {
    pub fn new(
        sock: NlSocket,
        rcvbuf: usize,
        shared: Arc<Shared>,
        commands: Receiver<Command>,
        scan_interval: Duration,
        ebpf: Option<EbpfSource>,
        exports: Exports,
    ) -> Core {
        Core {
            sock,
            rcvbuf,
            shared,
            commands,
            scan_interval,
            buf: Vec::with_capacity(RECV_BUF),
            scan: None,
            pending: None,
            barriers: Vec::new(),
            next_periodic: Instant::now() + scan_interval,
            drop_events: 0,
            decode: DecodeCounters::default(),
            drops_seen: 0,
            drain_first: false,
            malformed_logged: 0,
            started: Instant::now(),
            ebpf,
            redumps: 0,
            v6_dump_just_done: false,
            exports,
            ring_unchecked: None,
            last_loss_check: Instant::now(),
            last_ring_stats: Instant::now(),
            ring_lost: false,
        }
    }

    pub fn run(mut self) {
        info!("initial sync: dumping links, addresses, nexthops and routes of all tables");
        self.queue_scan(ScanReason::Initial, ScanScope::full(), None);
        loop {
            if !self.handle_commands() {
                info!("core loop stopping");
                return;
            }
            if self.scan.is_none() {
                if self.pending.is_none() && Instant::now() >= self.next_periodic {
                    self.queue_scan(ScanReason::Periodic, ScanScope::full(), None);
                }
                if !self.drain_first {
                    self.start_pending_scan();
                }
            }
            let idle = self.drain();
            let mut fresh_stats = false;
            // Before barriers are answered: a query that returns saw current maps too.
            self.exports.flush(&self.shared.mirror);
            if idle && self.drain_first {
                // The queue was empty at a recv: the kernel has cleared the congestion,
                // so the resync's dump can start without losing what happens meanwhile.
                self.drain_first = false;
                continue;
            }
            if idle && self.scan.is_none() && self.pending.is_none() {
                if self.check_silent_drops() {
                    continue; // not caught up after all: a resync is queued
                }
                if !self.barriers.is_empty() && self.check_ring_loss(true) {
                    continue; // the ring lost events: a resync is queued
                }
                // Queries after a barrier see current ring counters.
                fresh_stats |= !self.barriers.is_empty();
                for b in self.barriers.drain(..) {
                    let _ = b.send(());
                }
                self.shared.status.lock().expect("status lock").caught_up =
                    Some(std::time::SystemTime::now());
            }
            self.publish(fresh_stats);
            if idle {
                let mut wait = self.next_periodic.saturating_duration_since(Instant::now());
                if let Some(t) = self.ring_unchecked {
                    // Wake in time to read the loss counters.
                    wait = wait.min((t + LOSS_CHECK).saturating_duration_since(Instant::now()));
                }
                let ms = wait.as_millis().clamp(1, 1000) as i32;
                let ring = self.ebpf.as_ref().map(|e| e.fd());
                if let Err(e) = self.shared.wait(self.sock.fd(), ring, ms) {
                    error!(error = %e, "poll failed");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// Returns false on shutdown.
    fn handle_commands(&mut self) -> bool {
        self.shared.clear_wake();
        loop {
            match self.commands.try_recv() {
                Ok(Command::Scan {
                    scope,
                    reason,
                    reply,
                }) => self.queue_scan(reason, scope, reply),
                Ok(Command::Barrier(tx)) => self.barriers.push(tx),
                Ok(Command::SetScanInterval(d)) => {
                    info!(seconds = d.as_secs_f64(), "scan interval changed");
                    let last = self
                        .next_periodic
                        .checked_sub(self.scan_interval)
                        .unwrap_or_else(Instant::now);
                    self.next_periodic = last + d;
                    self.scan_interval = d;
                }
                Ok(Command::DropEvents(n)) => {
                    warn!(
                        count = n,
                        "test knob: the next event messages will be discarded"
                    );
                    self.drop_events += n;
                }
                Ok(Command::Shutdown) | Err(TryRecvError::Disconnected) => return false,
                Err(TryRecvError::Empty) => return true,
            }
        }
    }

    fn queue_scan(
        &mut self,
        reason: ScanReason,
        scope: ScanScope,
        reply: Option<oneshot::Sender<ScanReport>>,
    ) {
        match &mut self.pending {
            Some(p) => {
                p.scope.merge(&scope);
                // The strongest reason wins the label: overrun over anything else.
                if reason == ScanReason::Overrun || p.reason == ScanReason::Periodic {
                    p.reason = reason;
                }
                p.waiters.extend(reply);
            }
            None => {
                self.pending = Some(Pending {
                    reason,
                    scope,
                    waiters: reply.into_iter().collect(),
                })
            }
        }
    }

    fn start_pending_scan(&mut self) {
        let Some(p) = self.pending.take() else { return };
        let generation = self
            .shared
            .mirror
            .write()
            .expect("mirror lock")
            .begin_scan();
        if p.reason == ScanReason::Overrun {
            self.shared.status.lock().expect("status lock").resyncs += 1;
        }
        info!(reason = ?p.reason, scope = ?p.scope.dumps(), generation, "scan started");
        self.scan = Some((ActiveScan::new(p.reason, p.scope, generation), p.waiters));
        self.next_dump();
    }

    /// Requests the next dump of the active scan, or finishes it.
    fn next_dump(&mut self) {
        loop {
            let Some((scan, _)) = &mut self.scan else {
                return;
            };
            if scan.remaining.is_empty() {
                self.finish_scan();
                return;
            }
            // Apply what the ring holds first: those events are older than the dump.
            self.drain_ring_all();
            let Some((scan, _)) = &mut self.scan else {
                return;
            };
            let Some(kind) = scan.remaining.pop() else {
                continue;
            };
            match self.sock.request_dump(kind) {
                Ok(seq) => {
                    scan.current = Some((kind, seq));
                    scan.current_replied = false;
                    return;
                }
                Err(e) => {
                    error!(?kind, error = %e, "dump request failed");
                    scan.failed.push(kind);
                }
            }
        }
    }

    /// Catches notifications the kernel dropped without an ENOBUFS (see
    /// [`NlSocket::drops`]): any new drop means the mirror may be wrong, so resync.
    /// Returns true if it queued one.
    fn check_silent_drops(&mut self) -> bool {
        let Ok(drops) = self.sock.drops() else {
            return false;
        };
        if drops == self.drops_seen {
            return false;
        }
        let lost = drops.wrapping_sub(self.drops_seen);
        self.drops_seen = drops;
        warn!(
            lost,
            "the kernel dropped notifications silently (socket congested): resyncing"
        );
        self.shared.status.lock().expect("status lock").silent_drops += u64::from(lost);
        self.exports.marker(Marker::ResyncStart {
            source: self.source_name(),
            note: "events were lost (socket congested); refetch after resync-done",
        });
        if let Some((scan, _)) = &mut self.scan {
            scan.overrun_during = true;
        }
        self.drain_first = true;
        self.queue_scan(ScanReason::Overrun, ScanScope::full(), None);
        true
    }

    fn finish_scan(&mut self) {
        // Drops during the scan (the socket stays congested while a dump runs) mean
        // its result may already be stale: follow it with another resync.
        self.check_silent_drops();
        // Everything the ring holds happened before the prune: apply it first, or the
        // prune would delete routes whose adds are still in the ring.
        self.drain_ring_all();
        let Some((mut scan, waiters)) = self.scan.take() else {
            return;
        };
        {
            let mut mirror = self.shared.mirror.write().expect("mirror lock");
            self.exports.begin(&mut mirror);
            mirror.prune(&mut scan);
            self.exports.publish(&mut mirror, source_name(&self.ebpf));
            if scan.reason == ScanReason::Initial {
                self.exports.synced(&mirror);
            }
        }
        if scan.reason == ScanReason::Overrun {
            self.exports.marker(Marker::ResyncDone {
                source: self.source_name(),
            });
        }
        let report = scan.report(scan.started.elapsed());
        // A dump that may have skipped entries is redone (bounded), else a
        // route that existed throughout could stay missing until the periodic scan.
        let redo = (scan.interrupted > 0).then(|| report.scope.clone());
        let v = report.verdicts;
        let corrections = v.corrections() + report.object_verdicts.corrections();
        match report.reason {
            ScanReason::Initial => info!(
                routes = report.routes_dumped,
                ms = format!("{:.0}", report.duration_ms),
                since_start_ms = self.started.elapsed().as_millis() as u64,
                "initial sync done"
            ),
            _ if corrections > 0
                && !report.overrun_during
                && report.reason != ScanReason::Overrun =>
            {
                warn!(
                    reason = ?report.reason,
                    created = v.created,
                    updated = v.updated,
                    deleted = v.deleted,
                    objects = report.object_verdicts.corrections(),
                    "scan corrected the mirror: the event stream missed changes"
                )
            }
            _ => info!(
                reason = ?report.reason,
                routes = report.routes_dumped,
                ms = format!("{:.1}", report.duration_ms),
                seen = v.seen,
                created = v.created,
                updated = v.updated,
                deleted = v.deleted,
                "scan done"
            ),
        }
        {
            let mut st = self.shared.status.lock().expect("status lock");
            st.scans += 1;
            let reason = serde_json::to_value(report.reason)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            *st.scans_by_reason.entry(reason).or_default() += 1;
            st.verdicts.add(&report.verdicts);
            st.object_verdicts.add(&report.object_verdicts);
            if report.reason == ScanReason::Initial {
                st.synced = true;
                st.initial_sync_ms = Some(report.duration_ms);
            }
            st.last_scan = Some(report.clone());
        }
        if report.scope == ScanScope::full() {
            self.next_periodic = Instant::now() + self.scan_interval;
        }
        for w in waiters {
            let _ = w.send(report.clone());
        }
        match redo {
            Some(scope) if self.redumps < MAX_REDUMPS => {
                self.redumps += 1;
                info!(scope = ?scope.dumps(), "dump raced with removals: scanning again");
                self.queue_scan(ScanReason::Overrun, scope, None);
            }
            Some(_) => {
                warn!("dumps keep racing with removals; the periodic scan will confirm");
                self.redumps = 0;
            }
            None => self.redumps = 0,
        }
    }

    /// Reads up to [`BATCH`] datagrams. Returns true when the queue is empty.
    fn drain(&mut self) -> bool {
        for _ in 0..BATCH {
            let mut buf = std::mem::take(&mut self.buf);
            let r = self.sock.recv(&mut buf);
            let idle = match r {
                Ok(_) => {
                    self.process(&buf);
                    // Only after that datagram is fully processed (ordering rule).
                    self.drain_ring_ordered();
                    false
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // The kernel queues a dump's next chunk inside the recvmsg that
                    // consumed the previous one, so an empty queue with a dump still
                    // outstanding means that chunk failed (ENOBUFS) and the dump is stuck.
                    if self.scan.as_ref().is_some_and(|(s, _)| s.current.is_some()) {
                        self.recover_stalled_dump();
                        false
                    } else {
                        // Socket idle: the ring is the only source left. Once it is
                        // drained to empty the core is idle and sleeps until the ring
                        // or the socket wakes it: trying the socket again after every
                        // few records was most of the eBPF source's syscalls (a failed
                        // recvfrom per record, BENCHMARKS.md).
                        let mut applied = 0;
                        loop {
                            let n = self.drain_ring_ordered();
                            applied += n;
                            if n == 0 || applied >= RING_BATCH * BATCH {
                                break n == 0;
                            }
                        }
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    self.overrun();
                    false
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => false,
                Err(e) => {
                    error!(error = %e, "netlink recv failed");
                    true
                }
            };
            self.buf = buf;
            if idle {
                return true;
            }
        }
        false
    }

    /// Replaces the socket (subscribing the new one first, so no event falls between)
    /// and restarts the interrupted scan as a full resync.
    fn recover_stalled_dump(&mut self) {
        warn!("dump stalled after a receive-queue overrun: replacing the netlink socket and resyncing");
        let fresh = NlSocket::open().and_then(|s| {
            s.set_rcvbuf(self.rcvbuf)?;
            s.subscribe(&groups::ALL)?;
            Ok(s)
        });
        let fresh = fresh.and_then(|s| {
            if let Some(src) = &mut self.ebpf {
                use std::os::fd::BorrowedFd;
                // SAFETY: the fd belongs to `s`, alive for this call.
                let fd = unsafe { BorrowedFd::borrow_raw(s.fd()) };
                src.attach(fd).map_err(io::Error::other)?;
            }
            Ok(s)
        });
        match fresh {
            Ok(s) => {
                self.sock = s;
                self.drops_seen = 0;
            }
            Err(e) => {
                error!(error = %e, "cannot open a new netlink socket; retrying shortly");
                std::thread::sleep(Duration::from_millis(100));
                return;
            }
        }
        self.shared
            .status
            .lock()
            .expect("status lock")
            .socket_resets += 1;
        if let Some((scan, waiters)) = self.scan.take() {
            for w in waiters {
                self.queue_scan(scan.reason, scan.scope.clone(), Some(w));
            }
        }
        self.queue_scan(ScanReason::Overrun, ScanScope::full(), None);
        self.start_pending_scan();
    }

    fn overrun(&mut self) {
        warn!("netlink receive queue overrun (ENOBUFS): events were lost, resyncing now");
        self.exports.marker(Marker::ResyncStart {
            source: self.source_name(),
            note: "events were lost (ENOBUFS); refetch after resync-done",
        });
        self.shared.status.lock().expect("status lock").enobufs += 1;
        if let Ok(d) = self.sock.drops() {
            self.drops_seen = d;
        }
        self.drain_first = true;
        if let Some((scan, _)) = &mut self.scan {
            scan.overrun_during = true;
        }
        self.queue_scan(ScanReason::Overrun, ScanScope::full(), None);
    }

    fn process(&mut self, buf: &[u8]) {
        let port = self.sock.port();
        let mut acc = EventAcc::default();
        let mut dump_done: Option<Option<i32>> = None;
        let mut msgs = msg::messages(buf);
        {
            let mut mirror = self.shared.mirror.write().expect("mirror lock");
            self.exports.begin(&mut mirror);
            for m in msgs.by_ref() {
                let is_dump = match &self.scan {
                    Some((scan, _)) => {
                        m.port == port && scan.current.is_some_and(|(_, seq)| seq == m.seq)
                    }
                    None => false,
                };
                if is_dump {
                    if let Some((scan, _)) = &mut self.scan {
                        scan.current_replied = true;
                    }
                    match m.ty {
                        msg::NLMSG_DONE => dump_done = Some(None),
                        msg::NLMSG_ERROR => {
                            let code = msg::error_code(m.payload).unwrap_or(libc::EIO);
                            if code != 0 {
                                dump_done = Some(Some(code));
                            }
                        }
                        _ => {
                            let Some((scan, _)) = &mut self.scan else {
                                continue;
                            };
                            if m.flags & msg::NLM_F_DUMP_INTR != 0 {
                                scan.interrupted += 1;
                            }
                            if let Some(change) =
                                decode_or_count(&m, &mut self.decode, &mut self.malformed_logged)
                            {
                                let before = scan.routes_dumped;
                                mirror.mark(change, scan);
                                if scan.routes_dumped != before
                                    && scan.routes_dumped % PROGRESS_EVERY == 0
                                {
                                    let secs = scan.started.elapsed().as_secs_f64();
                                    info!(
                                        reason = ?scan.reason,
                                        routes = scan.routes_dumped,
                                        rate = format!("{:.0}/s", scan.routes_dumped as f64 / secs),
                                        "scan progress"
                                    );
                                }
                            }
                        }
                    }
                    continue;
                }
                if matches!(
                    m.ty,
                    msg::NLMSG_DONE | msg::NLMSG_ERROR | msg::NLMSG_NOOP | msg::NLMSG_OVERRUN
                ) {
                    continue; // a reply to a request we no longer wait for
                }
                // A removal during an IPv6 route dump can make it skip entries.
                if let Some((scan, _)) = &mut self.scan {
                    if may_skip_v6_dump_entries(scan, &m) {
                        scan.interrupted += 1;
                    }
                }
                apply_event(
                    &mut mirror,
                    self.scan.as_ref().map(|(s, _)| s),
                    &m,
                    &mut acc,
                    &mut self.drop_events,
                    &mut self.decode,
                    &mut self.malformed_logged,
                );
            }
            self.exports.publish(&mut mirror, source_name(&self.ebpf));
        }
        if msgs.truncated() {
            self.decode.malformed += 1;
            warn!("datagram ended in a truncated netlink header; rest skipped");
        }
        self.flush_events(acc);
        let mut v6_done = false;
        if let Some(err) = dump_done {
            if let Some((scan, _)) = &mut self.scan {
                if let Some((kind, _)) = scan.current.take() {
                    if matches!(kind, DumpKind::Routes(Family::V6, _)) {
                        v6_done = true;
                    }
                    if let Some(code) = err {
                        let e = io::Error::from_raw_os_error(code);
                        warn!(?kind, error = %e, "kernel refused a dump; its objects are not pruned");
                        scan.failed.push(kind);
                    }
                }
            }
            // The ring (eBPF) still holds what happened during that dump.
            self.v6_dump_just_done |= v6_done;
            self.next_dump();
        }
    }

    fn flush_events(&mut self, acc: EventAcc) {
        if acc.events > 0 || acc.dropped > 0 {
            let mut st = self.shared.status.lock().expect("status lock");
            st.events_applied += acc.events;
            st.events_dropped_by_request += acc.dropped;
            st.last_event = Some(std::time::SystemTime::now());
        }
        for f in acc.followups {
            debug!(reason = ?f.reason, "event calls for a confirming scan");
            self.queue_scan(f.reason, f.scope, None);
        }
    }

    /// Drains the ring unless a dump is in flight. The kernel builds a dump's next
    /// chunk during the `recv` of the previous one, so while a dump runs the socket may
    /// hold a chunk older than events already in the ring: applying those events first
    /// would let the older chunk overwrite them. Applying an event late is safe (ring
    /// order keeps per-key order), so events wait until the dump's end.
    /// Returns the records applied.
    fn drain_ring_ordered(&mut self) -> usize {
        if self.scan.as_ref().is_some_and(|(s, _)| s.current.is_some()) {
            return 0;
        }
        self.drain_ring(RING_BATCH)
    }

    /// Drains the ring to empty (before a dump request and before a prune).
    fn drain_ring_all(&mut self) {
        while self.drain_ring(RING_BATCH) > 0 {}
        self.check_ring_loss(true);
        self.v6_dump_just_done = false;
    }

    /// Reads the ring's loss counters when due ([`LOSS_CHECK`]) or when `force`d; on a
    /// loss, queues a full resync at once. Returns whether events were lost.
    fn check_ring_loss(&mut self, force: bool) -> bool {
        let now = Instant::now();
        let due = force
            || self.ring_unchecked.is_some_and(|t| now - t >= LOSS_CHECK)
            || now - self.last_loss_check >= LOSS_CHECK_IDLE;
        if !due {
            return false;
        }
        let Some(src) = &mut self.ebpf else {
            return false;
        };
        self.ring_unchecked = None;
        self.last_loss_check = now;
        let lost = src.take_loss();
        if lost {
            self.on_ring_loss();
        }
        lost
    }

    /// Ring loss (ring full, message too long): resync now, as after ENOBUFS.
    fn on_ring_loss(&mut self) {
        self.ring_lost = true;
        warn!("eBPF ring lost notifications (ring full or message too long): resyncing now");
        self.exports.marker(Marker::ResyncStart {
            source: "ebpf",
            note: "the ring lost events; refetch after resync-done",
        });
        if let Some((scan, _)) = &mut self.scan {
            scan.overrun_during = true;
        }
        self.queue_scan(ScanReason::Overrun, ScanScope::full(), None);
    }

    /// Applies up to `max` ring records through the event path; any kernel-side loss
    /// (ring full, message too long) queues a full resync, as ENOBUFS does.
    fn drain_ring(&mut self, max: usize) -> usize {
        let Some(mut src) = self.ebpf.take() else {
            return 0;
        };
        let mut acc = EventAcc::default();
        let mut truncated = false;
        let mut risky = 0u64;
        let n = {
            let mut mirror = self.shared.mirror.write().expect("mirror lock");
            self.exports.begin(&mut mirror);
            let scan = self.scan.as_ref().map(|(s, _)| s);
            let v6_done = self.v6_dump_just_done;
            let risky = &mut risky;
            let (drop_events, dec, logged) = (
                &mut self.drop_events,
                &mut self.decode,
                &mut self.malformed_logged,
            );
            let n = src.drain(max, |h, bytes| {
                if ebpf::is_truncated(h) {
                    truncated = true;
                    return;
                }
                let mut msgs = msg::messages(bytes);
                for m in msgs.by_ref() {
                    if v6_done && removal_may_skip_v6(&m) {
                        *risky += 1;
                    }
                    apply_event(&mut mirror, scan, &m, &mut acc, drop_events, dec, logged);
                }
                if msgs.truncated() {
                    dec.malformed += 1;
                }
            });
            self.exports.publish(&mut mirror, "ebpf");
            n
        };
        self.ebpf = Some(src);
        if risky > 0 {
            if let Some((scan, _)) = &mut self.scan {
                scan.interrupted += risky;
            }
        }
        self.flush_events(acc);
        if n > 0 {
            self.ring_unchecked.get_or_insert_with(Instant::now);
        }
        // A truncated record counts as a loss too: read the counters now (so it is not
        // reported twice) and resync either way.
        if truncated && !self.check_ring_loss(true) {
            self.on_ring_loss();
        } else if !truncated {
            self.check_ring_loss(false);
        }
        n
    }

    fn source_name(&self) -> &'static str {
        source_name(&self.ebpf)
    }

    /// Copies counters the core keeps privately into the shared status. The ring's
    /// kernel counters (a `bpf` syscall each) are re-read every [`RING_STATS_EVERY`],
    /// or now when `fresh`: reading them on every pass was half the eBPF source's
    /// syscalls (BENCHMARKS.md).
    fn publish(&mut self, fresh: bool) {
        let mut st = self.shared.status.lock().expect("status lock");
        if fresh
            || self.ring_lost
            || st.ring.is_none()
            || self.last_ring_stats.elapsed() >= RING_STATS_EVERY
        {
            st.ring = self.ebpf.as_ref().map(|e| e.stats());
            self.last_ring_stats = Instant::now();
            self.ring_lost = false;
        }
        st.bpf_fib = self.exports.bpf_fib_stats();
        st.decode = self.decode.clone();
        st.scan_in_progress = self.scan.as_ref().map(|(s, _)| (s.reason, s.routes_dumped));
        st.scan_pending = self.pending.is_some();
        st.heartbeat = Some(Instant::now());
    }
}

fn source_name(ebpf: &Option<EbpfSource>) -> &'static str {
    if ebpf.is_some() {
        "ebpf"
    } else {
        "netlink"
    }
}

/// The one event path for both sources: a notification from the socket or the ring.
fn apply_event(
    mirror: &mut Mirror,
    scan: Option<&ActiveScan>,
    m: &RawMsg<'_>,
    acc: &mut EventAcc,
    drop_events: &mut u64,
    dec: &mut DecodeCounters,
    logged: &mut u64,
) {
    if matches!(
        m.ty,
        msg::NLMSG_DONE | msg::NLMSG_ERROR | msg::NLMSG_NOOP | msg::NLMSG_OVERRUN
    ) {
        return; // a reply to a request we no longer wait for
    }
    if *drop_events > 0 {
        *drop_events -= 1;
        acc.dropped += 1;
        return;
    }
    if let Some(change) = decode_or_count(m, dec, logged) {
        acc.events += 1;
        let stamp = match scan {
            Some(s) => s.event_stamp(Mirror::dump_class(&change, &s.scope)),
            None => mirror.generation(),
        };
        if let Some(f) = mirror.apply_stamped(change, stamp) {
            acc.followups.push(f);
        }
    }
}

fn decode_or_count(
    m: &RawMsg<'_>,
    c: &mut DecodeCounters,
    logged: &mut u64,
) -> Option<crate::model::Change> {
    match decode::decode(m, c) {
        Ok(change) => change,
        Err(e) => {
            c.malformed += 1;
            if *logged < 100 {
                *logged += 1;
                warn!(msg_type = m.ty, error = %e, "skipping malformed netlink message");
            }
            None
        }
    }
}

/// Consecutive redone scans before giving up to the periodic scan.
const MAX_REDUMPS: u32 = 8;

/// An IPv6 route dump resumes each chunk by skipping as many entries as it already
/// sent (fib6 walker `skip = count`) when the tree changed, and sets no
/// NLM_F_DUMP_INTR: a removal during the dump can make it skip a route that existed
/// throughout (found by tests/tests/soak.rs: a daemon restarted mid-storm missed an
/// IPv6 blackhole route). A removal-type event during an IPv6 route dump therefore
/// marks the scan as interrupted.
fn may_skip_v6_dump_entries(scan: &ActiveScan, m: &RawMsg<'_>) -> bool {
    matches!(scan.current, Some((DumpKind::Routes(Family::V6, _), _))) && removal_may_skip_v6(m)
}

/// Messages about removals that can shift an IPv6 route dump's resume point.
fn removal_may_skip_v6(m: &RawMsg<'_>) -> bool {
    match m.ty {
        msg::RTM_DELROUTE => m.payload.first() == Some(&(libc::AF_INET6 as u8)),
        msg::RTM_NEWLINK | msg::RTM_DELLINK | msg::RTM_DELADDR | msg::RTM_DELNEXTHOP => true,
        _ => false,
    }
}
