//! The core loop of one mirrored namespace: the only owner of its netlink socket, and
//! the place where the ordering rules live.
//!
//! It reads the socket's one queue in order: dump replies (our port and the running
//! scan's sequence number) are *marked* into the mirror, everything else is an event
//! and is *applied* ([`events`]). Scans run one at a time; requests arriving meanwhile
//! merge into one pending scan ([`scans`]). With the eBPF source, events arrive on the
//! ring instead and are applied where they cannot overtake an older dump chunk. Every
//! change goes to the exports ([`crate::export`]) before the mirror's write lock is
//! released. Runs on its own thread: a million-route dump is CPU work that should not
//! sit on the async runtime.

use std::io;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};

use super::events::{self, Applied, EventPath};
use super::reader::DumpReader;
use super::scans::{self, Scans};
use crate::ebpf::clock::RingClock;
use crate::ebpf::{self, EbpfSource, Record};
use crate::export::change::Marker;
use crate::export::hub::Exports;
use crate::model::Family;
use crate::netlink::msg::{self, DumpKind};
use crate::netlink::socket::{NlSocket, RecvBatch};
use crate::reconcile::{ScanReason, ScanScope};
use crate::shared::{Command, Shared};
use route_mirror_common::groups;

/// Datagrams handled before looking at commands again, so queries and barriers stay
/// responsive during a long dump.
const BATCH: usize = 64;
/// Ring records applied per drain before looking at commands and the socket again.
/// Also bounds how long one drain holds the mirror's write lock (about a microsecond
/// per record). Single-lookup p99 during a 1M-route burst measured the same (2 ms) at
/// 4096, 512 and 64: CPU contention, not this lock, sets it (BENCHMARKS.md).
const RING_BATCH: usize = 512;

/// While changes keep arriving, the core lets them gather this long before reading
/// again, instead of sleeping in `poll` and waking for each one: a 1M-route load woke
/// it ~250k times for ~4 records each (a few µs of scheduling per wakeup, the largest
/// part of the daemon's CPU in the profile, BENCHMARKS.md). The kernel queues them
/// meanwhile (ring or socket); commands still wake the core at once, and an isolated
/// change still wakes it at once: only changes that follow others within this window
/// wait for it (the lag under load stays within a few ms).
const GATHER: Duration = Duration::from_millis(2);
/// While changes stream, the socket's drop counter (a `getsockopt`) is read at most
/// this often; always before the core sleeps with nothing flowing and before a barrier
/// is answered (it was a syscall per wakeup, BENCHMARKS.md).
const DROP_CHECK: Duration = Duration::from_millis(5);
/// Longest the core waits for the dump reader's next batch before looking at commands.
const READER_WAIT: Duration = Duration::from_millis(50);

/// How events were lost. Each calls for a full resync at once.
#[derive(Debug, Clone, Copy)]
enum Loss {
    /// The socket's receive queue overflowed and the kernel said so.
    Enobufs,
    /// The kernel dropped this many notifications without saying so (see
    /// [`NlSocket::drops`]).
    SilentDrops(u32),
    /// The ring was full or a message too long for it.
    Ring,
    /// This many datagrams were larger than a receive slot (their tail is lost).
    TooLarge(u64),
}

impl Loss {
    fn log(self) {
        match self {
            Loss::Enobufs => {
                warn!("netlink receive queue overrun (ENOBUFS): events were lost, resyncing now")
            }
            Loss::SilentDrops(lost) => warn!(
                lost,
                "the kernel dropped notifications silently (socket congested): resyncing"
            ),
            Loss::Ring => {
                warn!("eBPF ring lost notifications (ring full or message too long): resyncing now")
            }
            Loss::TooLarge(datagrams) => warn!(
                datagrams,
                "netlink datagram larger than the receive slot: events lost, resyncing now"
            ),
        }
    }

    /// What the exports' `resync` marker says.
    fn note(self) -> &'static str {
        match self {
            Loss::Enobufs => "events were lost (ENOBUFS); refetch after resync-done",
            Loss::SilentDrops(_) => {
                "events were lost (socket congested); refetch after resync-done"
            }
            Loss::Ring => "the ring lost events; refetch after resync-done",
            Loss::TooLarge(_) => "a notification was too large to read; refetch after resync-done",
        }
    }

    /// A congested socket drops every notification silently until a `recv` finds its
    /// queue empty: drain it before the resync's first dump.
    fn congests_socket(self) -> bool {
        matches!(self, Loss::Enobufs | Loss::SilentDrops(_))
    }
}

pub struct Core {
    sock: NlSocket,
    rcvbuf: usize,
    shared: Arc<Shared>,
    commands: Receiver<Command>,
    rx: RecvBatch,
    scans: Scans,
    barriers: Vec<tokio::sync::oneshot::Sender<()>>,
    events: EventPath,
    /// The socket's drop counter as last seen (silent drops show as an increase).
    drops_seen: u32,
    /// After a loss, drain the queue to empty before the resync's first dump request:
    /// a congested socket drops every notification silently until a `recv` finds its
    /// queue empty, and a running dump never lets it be empty.
    drain_first: bool,
    started: Instant,
    /// The eBPF source, when active: notifications arrive on its ring, not the socket.
    ebpf: Option<EbpfSource>,
    /// When to read the ring's counters.
    ring_clock: RingClock,
    /// An IPv6 route dump just finished: removals still in the ring happened during it.
    v6_dump_just_done: bool,
    /// Where applied changes go (watch, the BPF FIB, feeds).
    exports: Exports,
    /// Events applied since the core last slept (see [`GATHER`]).
    pass_events: u64,
    /// CLOCK_MONOTONIC when the last socket read started (see `drain_ring_ordered`).
    recv_started: u64,
    /// Reads dump replies ahead on its own thread (see [`super::reader`]).
    reader: Option<DumpReader>,
    /// The socket may hold something: false after a `recv` found it empty, until a
    /// `poll` says otherwise. With the eBPF source the socket carries only dump replies
    /// and acks, so the core skips the `recv` that would fail after each wakeup.
    sock_ready: bool,
    /// When the socket's drop counter was last read (see [`DROP_CHECK`]).
    drops_checked: Instant,
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
            rx: RecvBatch::default(),
            scans: Scans::new(scan_interval),
            barriers: Vec::new(),
            events: EventPath::default(),
            drops_seen: 0,
            drain_first: false,
            started: Instant::now(),
            ebpf,
            ring_clock: RingClock::default(),
            v6_dump_just_done: false,
            exports,
            pass_events: 0,
            recv_started: 0,
            reader: None,
            sock_ready: true,
            drops_checked: Instant::now(),
        }
    }

    pub fn run(mut self) {
        info!("initial sync: dumping links, addresses, nexthops and routes of all tables");
        self.scans
            .queue(ScanReason::Initial, ScanScope::full(), None);
        loop {
            if !self.handle_commands() {
                info!("core loop stopping");
                return;
            }
            if self.scans.running().is_none() {
                self.scans.queue_periodic_if_due();
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
            if idle && self.scans.idle() {
                let drops_due = !self.barriers.is_empty()
                    || self.pass_events == 0
                    || self.drops_checked.elapsed() >= DROP_CHECK;
                if drops_due && self.check_silent_drops() {
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
            }
            // Idle (nothing queued) and no resync owed: the mirror is current until
            // the core wakes (see Stats::sync_lag_s).
            let current = idle && !self.resync_owed();
            self.publish(fresh_stats, current);
            if idle {
                if self.pass_events > 0 && self.scans.running().is_none() {
                    self.gather();
                } else {
                    self.sleep();
                }
                self.pass_events = 0;
                if current {
                    // Whatever woke the core arrived just now: current up to here.
                    let mut st = self.shared.status.lock().expect("status lock");
                    st.current = false;
                    st.caught_up = Some(std::time::SystemTime::now());
                }
            }
        }
    }

    /// Waits for the socket, the ring or a command, at most until the periodic scan or
    /// the ring's loss check is due.
    fn sleep(&mut self) {
        let mut wait = self.scans.until_periodic();
        if let Some(t) = self.ring_clock.wake_by() {
            wait = wait.min(t.saturating_duration_since(Instant::now()));
        }
        let ms = wait.as_millis().clamp(1, 1000) as i32;
        let ring = self.ebpf.as_ref().map(|e| e.fd());
        match self.shared.wait(self.sock.fd(), ring, ms) {
            Ok(ready) => self.sock_ready |= ready,
            Err(e) => {
                error!(error = %e, "poll failed");
                self.sock_ready = true;
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// Changes are flowing: lets more of them queue for [`GATHER`] (a command wakes).
    /// With the eBPF source a dump reply or ack on the socket wakes it too (the socket
    /// carries nothing else); with the netlink source the socket carries the changes
    /// that are meant to gather, so it is not watched (and counts as readable).
    fn gather(&mut self) {
        let sock = if self.ebpf.is_some() {
            self.sock.fd()
        } else {
            -1
        };
        match self.shared.wait(sock, None, GATHER.as_millis() as i32) {
            Ok(ready) => self.sock_ready |= ready || sock < 0,
            Err(e) => {
                error!(error = %e, "poll failed");
                self.sock_ready = true;
            }
        }
    }

    /// Returns false on shutdown.
    fn handle_commands(&mut self) -> bool {
        loop {
            match self.commands.try_recv() {
                Ok(Command::Scan {
                    scope,
                    reason,
                    reply,
                }) => self.scans.queue(reason, scope, reply),
                Ok(Command::Barrier(tx)) => self.barriers.push(tx),
                Ok(Command::SetScanInterval(d)) => self.scans.set_interval(d),
                Ok(Command::DropEvents(n)) => {
                    warn!(
                        count = n,
                        "test knob: the next event messages will be discarded"
                    );
                    self.events.drop_next += n;
                }
                Ok(Command::Shutdown) | Err(TryRecvError::Disconnected) => return false,
                Err(TryRecvError::Empty) => return true,
            }
        }
    }

    fn start_pending_scan(&mut self) {
        if !self.scans.pending() {
            return;
        }
        let generation = self
            .shared
            .mirror
            .write()
            .expect("mirror lock")
            .begin_scan();
        if self.scans.start_pending(generation) == Some(ScanReason::Overrun) {
            self.shared.status.lock().expect("status lock").resyncs += 1;
        }
        self.next_dump();
    }

    /// Requests the next dump of the running scan, or finishes it.
    fn next_dump(&mut self) {
        loop {
            let Some(scan) = self.scans.running() else {
                return;
            };
            if scan.remaining.is_empty() {
                self.finish_scan();
                return;
            }
            // Apply what the ring holds first: those events are older than the dump.
            self.drain_ring_all();
            let Some(scan) = self.scans.running_mut() else {
                return;
            };
            let Some(kind) = scan.remaining.pop() else {
                continue;
            };
            // Route events from here on may or may not be in the dump's chunks.
            self.shared
                .mirror
                .write()
                .expect("mirror lock")
                .dump_started(kind);
            self.sock_ready = true;
            match self.sock.request_dump(kind) {
                Ok(seq) => {
                    scan.current = Some((kind, seq));
                    scan.current_replied = false;
                    self.start_reader(seq);
                    return;
                }
                Err(e) => {
                    error!(?kind, error = %e, "dump request failed");
                    scan.failed.push(kind);
                }
            }
        }
    }

    /// Lets the reader thread read dump `seq`'s replies while the core applies them
    /// (started with the first dump; without it the core reads them itself).
    fn start_reader(&mut self, seq: u32) {
        if self.reader.is_none() {
            let name = self.shared.netns.as_deref().unwrap_or("host");
            match DumpReader::spawn(name) {
                Ok(r) => self.reader = Some(r),
                Err(e) => {
                    warn!(error = %e, "cannot start the dump reader thread; the core reads dumps itself");
                    return;
                }
            }
        }
        if let Some(r) = &mut self.reader {
            r.start(self.sock.fd(), self.sock.port(), seq);
        }
    }

    fn finish_scan(&mut self) {
        // Drops during the scan (the socket stays congested while a dump runs) mean
        // its result may already be stale: follow it with another resync.
        self.check_silent_drops();
        // Everything the ring holds happened before the prune: apply it first, or the
        // prune would delete routes whose adds are still in the ring.
        self.drain_ring_all();
        let Some(mut running) = self.scans.take_running() else {
            return;
        };
        let scan = &mut running.scan;
        {
            let mut mirror = self.shared.mirror.write().expect("mirror lock");
            self.exports.begin(&mut mirror);
            mirror.prune(scan);
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
        scans::log_report(&report, self.started.elapsed());
        let mut status = self.shared.status.lock().expect("status lock");
        self.scans.finished(running, &report, &mut status);
    }

    /// Reads up to [`BATCH`] batches of datagrams (from the dump reader while it reads
    /// a dump, else from the socket). Returns true when the queue is empty.
    fn drain(&mut self) -> bool {
        for _ in 0..BATCH {
            let from_reader = self.reader.as_ref().is_some_and(DumpReader::active);
            // eBPF: nothing but replies and acks arrive on the socket, and none is due.
            let skip_recv = !from_reader
                && self.ebpf.is_some()
                && !self.sock_ready
                && !self.drain_first
                && !self.scans.dumping();
            let (mut rx, r) = if skip_recv {
                let would_block = io::Error::from(io::ErrorKind::WouldBlock);
                (std::mem::take(&mut self.rx), Err(would_block))
            } else if from_reader {
                let reader = self.reader.as_mut().expect("checked above");
                let Some(read) = reader.next(READER_WAIT) else {
                    return false; // the kernel is slow to build chunks: look at commands
                };
                self.recv_started = read.started;
                (read.rx, read.result)
            } else {
                let mut rx = std::mem::take(&mut self.rx);
                if self.ebpf.is_some() {
                    self.recv_started = ebpf::monotonic_ns();
                }
                let r = self.sock.recv_batch(&mut rx);
                (rx, r)
            };
            let idle = match r {
                Ok(_) => {
                    self.process(&rx);
                    // Only after those datagrams are fully processed (ordering rule).
                    self.drain_ring_ordered();
                    false
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !from_reader {
                        self.sock_ready = false;
                    }
                    // The kernel queues a dump's next chunk inside the recvmsg that
                    // consumed the previous one, so an empty queue with a dump still
                    // outstanding means that chunk failed (ENOBUFS) and the dump is stuck.
                    if self.scans.dumping() {
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
                    self.lost_events(Loss::Enobufs);
                    false
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => false,
                Err(e) => {
                    error!(error = %e, "netlink recv failed");
                    true
                }
            };
            let cut = std::mem::take(&mut rx.truncated);
            match (&self.reader, from_reader) {
                (Some(reader), true) => reader.recycle(rx),
                _ => self.rx = rx,
            }
            if cut > 0 {
                self.events.decode.malformed += cut;
                self.lost_events(Loss::TooLarge(cut));
            }
            if idle {
                return true;
            }
        }
        false
    }

    /// A batch of datagrams from the socket, in order: replies of the running dump are
    /// marked, notifications applied.
    fn process(&mut self, rx: &RecvBatch) {
        let mut i = 0;
        while i < rx.len() {
            i = self.process_until_dump_end(rx, i);
        }
    }

    /// Processes datagrams from `from` under one hold of the mirror lock, up to and
    /// including one that ends the running dump (which then moves the scan on).
    /// Returns the index of the first datagram not processed.
    fn process_until_dump_end(&mut self, rx: &RecvBatch, from: usize) -> usize {
        let port = self.sock.port();
        let mut applied = Applied::default();
        let mut dump_done: Option<Option<i32>> = None;
        let mut truncated = 0u64;
        let mut i = from;
        {
            let shared = self.shared.clone();
            let mut mirror = shared.mirror.write().expect("mirror lock");
            self.exports.begin(&mut mirror);
            while i < rx.len() && dump_done.is_none() {
                let mut msgs = msg::messages(rx.get(i));
                i += 1;
                let mut chunk = false;
                for m in msgs.by_ref() {
                    if self.scans.is_dump_reply(&m, port) {
                        chunk = true;
                        if let Some(end) = self.scans.dump_reply(&mut mirror, &m, &mut self.events)
                        {
                            dump_done = Some(end);
                        }
                        continue;
                    }
                    if events::is_reply(&m) {
                        continue; // a reply to a request we no longer wait for
                    }
                    self.scans.event_during_dump(&m);
                    let scan = self.scans.running();
                    self.events.apply(&mut mirror, scan, &m, &mut applied);
                }
                if msgs.truncated() {
                    truncated += 1;
                }
                if chunk && dump_done.is_none() {
                    // The next chunk's window of route events starts here.
                    self.scans.chunk_done(&mut mirror);
                }
            }
            self.exports.publish(&mut mirror, source_name(&self.ebpf));
        }
        if truncated > 0 {
            self.events.decode.malformed += truncated;
            warn!("datagram ended in a truncated netlink header; rest skipped");
        }
        self.flush_events(applied);
        if let Some(err) = dump_done {
            self.dump_done(err);
        }
        i
    }

    /// The running dump ended (with the kernel's error, if it refused): on to the next.
    fn dump_done(&mut self, err: Option<i32>) {
        let mut v6_done = false;
        if let Some(scan) = self.scans.running_mut() {
            if let Some((kind, _)) = scan.current.take() {
                v6_done = matches!(kind, DumpKind::Routes(Family::V6, _));
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

    fn flush_events(&mut self, applied: Applied) {
        self.pass_events += applied.events + applied.dropped;
        if applied.events > 0 || applied.dropped > 0 {
            let mut st = self.shared.status.lock().expect("status lock");
            st.events_applied += applied.events;
            st.events_dropped_by_request += applied.dropped;
            st.last_event = Some(std::time::SystemTime::now());
        }
        for f in applied.followups {
            debug!(reason = ?f.reason, "event calls for a confirming scan");
            self.scans.queue(f.reason, f.scope, None);
        }
    }

    /// Events were lost: say so to the exports, count it, resync now.
    fn lost_events(&mut self, loss: Loss) {
        loss.log();
        let source = match loss {
            Loss::Ring => "ebpf",
            Loss::Enobufs | Loss::SilentDrops(_) | Loss::TooLarge(_) => self.source_name(),
        };
        let note = loss.note();
        self.exports.marker(Marker::ResyncStart { source, note });
        match loss {
            Loss::Enobufs => {
                self.shared.status.lock().expect("status lock").enobufs += 1;
                if let Ok(d) = self.sock.drops() {
                    self.drops_seen = d;
                }
            }
            Loss::SilentDrops(n) => {
                self.shared.status.lock().expect("status lock").silent_drops += u64::from(n)
            }
            Loss::Ring => self.ring_clock.lost(),
            Loss::TooLarge(_) => {}
        }
        self.drain_first |= loss.congests_socket();
        self.scans.events_lost();
    }

    /// Catches notifications the kernel dropped without an ENOBUFS (see
    /// [`NlSocket::drops`]): any new drop means the mirror may be wrong, so resync.
    /// Returns true if it queued one.
    fn check_silent_drops(&mut self) -> bool {
        self.drops_checked = Instant::now();
        let Ok(drops) = self.sock.drops() else {
            return false;
        };
        if drops == self.drops_seen {
            return false;
        }
        let lost = drops.wrapping_sub(self.drops_seen);
        self.drops_seen = drops;
        self.lost_events(Loss::SilentDrops(lost));
        true
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
                self.sock_ready = true;
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
        self.scans.abandon_running();
        self.scans
            .queue(ScanReason::Overrun, ScanScope::full(), None);
        self.start_pending_scan();
    }

    /// Drains the ring; while a dump is in flight, only the records older than the
    /// dump chunk the socket may still hold. The kernel builds a dump's next chunk
    /// inside the `recv` that returns the previous one (one chunk at a time), so a
    /// queued chunk is no older than the start of our last `recv`: an event the filter
    /// saw before that is older than every chunk still to come and may be applied now
    /// (the chunk carries its effect or a newer state); a later one could be newer than
    /// the queued chunk, which must not overwrite it, so it waits. An event applied after
    /// a chunk newer than itself is harmless: ring order keeps per-key order, so the
    /// newest state lands last. Draining during dumps keeps the ring small and the lag
    /// low while a full table is dumped (events used to wait for the dump's end).
    /// Returns the records applied.
    fn drain_ring_ordered(&mut self) -> usize {
        let before = if self.scans.dumping() {
            self.recv_started
        } else {
            u64::MAX
        };
        self.drain_ring(RING_BATCH, before)
    }

    /// Drains the ring to empty (before a dump request and before a prune).
    fn drain_ring_all(&mut self) {
        while self.drain_ring(RING_BATCH, u64::MAX) > 0 {}
        self.check_ring_loss(true);
        self.v6_dump_just_done = false;
    }

    /// Reads the ring's loss counters when due (see [`RingClock`]) or when `force`d; on
    /// a loss, resyncs at once. Returns whether events were lost.
    fn check_ring_loss(&mut self, force: bool) -> bool {
        let Some(src) = &mut self.ebpf else {
            return false;
        };
        if !self.ring_clock.loss_check_due(force) {
            return false;
        }
        let lost = src.take_loss();
        if lost {
            self.lost_events(Loss::Ring);
        }
        lost
    }

    /// Applies up to `max` ring records the filter saw before `before` (see
    /// `drain_ring_ordered`) through the event path; any kernel-side loss (ring full,
    /// message too long) resyncs, as ENOBUFS does.
    fn drain_ring(&mut self, max: usize, before: u64) -> usize {
        let Some(mut src) = self.ebpf.take() else {
            return 0;
        };
        let mut applied = Applied::default();
        let mut truncated = false;
        let mut risky = 0u64;
        let n = {
            let mut mirror = self.shared.mirror.write().expect("mirror lock");
            self.exports.begin(&mut mirror);
            let scan = self.scans.running();
            // Removals that happened during an IPv6 route dump may have made it skip
            // entries: those drained while it runs, and those left when it just ended.
            let v6_risk = self.v6_dump_just_done
                || scan.is_some_and(|s| {
                    matches!(s.current, Some((DumpKind::Routes(Family::V6, _), _)))
                });
            let events = &mut self.events;
            let n = src.drain(max, before, |rec| match rec {
                Record::Truncated => truncated = true,
                Record::Compact { msg_type, body } => {
                    if v6_risk && rec.is_v6_route_removal() {
                        risky += 1;
                    }
                    events.apply_compact(&mut mirror, scan, msg_type, body, &mut applied);
                }
                Record::Raw(bytes) => {
                    let mut msgs = msg::messages(bytes);
                    for m in msgs.by_ref() {
                        if v6_risk && scans::removal_may_skip_v6(&m) {
                            risky += 1;
                        }
                        events.apply(&mut mirror, scan, &m, &mut applied);
                    }
                    if msgs.truncated() {
                        events.decode.malformed += 1;
                    }
                }
            });
            self.exports.publish(&mut mirror, "ebpf");
            n
        };
        self.ebpf = Some(src);
        if risky > 0 {
            if let Some(scan) = self.scans.running_mut() {
                scan.interrupted += risky;
            }
        }
        self.flush_events(applied);
        if n > 0 {
            self.ring_clock.applied();
        }
        // A truncated record counts as a loss too: read the counters now (so it is not
        // reported twice) and resync either way.
        if truncated && !self.check_ring_loss(true) {
            self.lost_events(Loss::Ring);
        } else if !truncated {
            self.check_ring_loss(false);
        }
        n
    }

    fn source_name(&self) -> &'static str {
        source_name(&self.ebpf)
    }

    /// The mirror is known to miss changes until this resync is done: events were lost
    /// (overrun, ring loss, silent drops), or the initial sync. Periodic, manual and
    /// confirming scans run while events keep the mirror current.
    fn resync_owed(&self) -> bool {
        self.drain_first || self.scans.resync_owed()
    }

    /// Copies counters the core keeps privately into the shared status. The ring's
    /// kernel counters are re-read when the [`RingClock`] says so, or now when `fresh`.
    /// `current`: the core is about to sleep with nothing queued and no resync owed.
    fn publish(&mut self, fresh: bool, current: bool) {
        let mut st = self.shared.status.lock().expect("status lock");
        st.current = current;
        if current {
            st.caught_up = Some(std::time::SystemTime::now());
        }
        if self.ring_clock.stats_due(fresh || st.ring.is_none()) {
            st.ring = self.ebpf.as_ref().map(|e| e.stats());
        }
        st.bpf_fib = self.exports.bpf_fib_stats();
        st.decode = self.events.decode.clone();
        st.scan_in_progress = self.scans.running().map(|s| (s.reason, s.routes_dumped));
        st.scan_pending = self.scans.pending();
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
