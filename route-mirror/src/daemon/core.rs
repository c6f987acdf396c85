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

use super::{Command, Shared};
use crate::mirror::FollowUp;
use crate::netlink::decode::{self, DecodeCounters};
use crate::netlink::msg::{self, RawMsg};
use crate::netlink::socket::{NlSocket, RECV_BUF};
use crate::reconcile::{ActiveScan, ScanReason, ScanReport, ScanScope};
use route_mirror_common::groups;

/// Datagrams handled before looking at commands again, so queries and barriers stay
/// responsive during a long dump.
const BATCH: usize = 64;

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
    /// Malformed messages logged so far (the log is capped; the counter is not).
    malformed_logged: u64,
    started: Instant,
    /// [reliab] Consecutive scans redone because a dump may have skipped entries.
    redumps: u32,
}

impl Core {
    pub fn new(
        sock: NlSocket,
        rcvbuf: usize,
        shared: Arc<Shared>,
        commands: Receiver<Command>,
        scan_interval: Duration,
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
            malformed_logged: 0,
            started: Instant::now(),
            redumps: 0,
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
                self.start_pending_scan();
            }
            let idle = self.drain();
            if idle && self.scan.is_none() && self.pending.is_none() {
                for b in self.barriers.drain(..) {
                    let _ = b.send(());
                }
            }
            self.publish();
            if idle {
                let wait = self.next_periodic.saturating_duration_since(Instant::now());
                let ms = wait.as_millis().min(1000) as i32;
                if let Err(e) = self.shared.wait(self.sock.fd(), ms) {
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
            let Some(kind) = scan.remaining.pop() else {
                self.finish_scan();
                return;
            };
            match self.sock.request_dump(kind) {
                Ok(seq) => {
                    scan.current = Some((kind, seq));
                    return;
                }
                Err(e) => {
                    error!(?kind, error = %e, "dump request failed");
                    scan.failed.push(kind);
                }
            }
        }
    }

    fn finish_scan(&mut self) {
        let Some((mut scan, waiters)) = self.scan.take() else {
            return;
        };
        {
            let mut mirror = self.shared.mirror.write().expect("mirror lock");
            mirror.prune(&mut scan);
        }
        let report = scan.report(scan.started.elapsed());
        // [reliab] A dump that may have skipped entries is redone (bounded), else a
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
                        true
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
        match fresh {
            Ok(s) => self.sock = s,
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
        self.shared.status.lock().expect("status lock").enobufs += 1;
        if let Some((scan, _)) = &mut self.scan {
            scan.overrun_during = true;
        }
        self.queue_scan(ScanReason::Overrun, ScanScope::full(), None);
    }

    fn process(&mut self, buf: &[u8]) {
        let port = self.sock.port();
        let mut followups: Vec<FollowUp> = Vec::new();
        let mut dump_done: Option<Option<i32>> = None;
        let mut events = 0u64;
        let mut dropped = 0u64;
        let mut msgs = msg::messages(buf);
        {
            let mut mirror = self.shared.mirror.write().expect("mirror lock");
            for m in msgs.by_ref() {
                let is_dump = match &self.scan {
                    Some((scan, _)) => {
                        m.port == port && scan.current.is_some_and(|(_, seq)| seq == m.seq)
                    }
                    None => false,
                };
                if is_dump {
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
                                mirror.mark(change, scan);
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
                // [reliab] see `may_skip_v6_dump_entries`.
                if let Some((scan, _)) = &mut self.scan {
                    if may_skip_v6_dump_entries(scan, &m) {
                        scan.interrupted += 1;
                    }
                }
                if self.drop_events > 0 {
                    self.drop_events -= 1;
                    dropped += 1;
                    continue;
                }
                if let Some(change) =
                    decode_or_count(&m, &mut self.decode, &mut self.malformed_logged)
                {
                    events += 1;
                    if let Some(f) = mirror.apply(change) {
                        followups.push(f);
                    }
                }
            }
        }
        if msgs.truncated() {
            self.decode.malformed += 1;
            warn!("datagram ended in a truncated netlink header; rest skipped");
        }
        if events > 0 || dropped > 0 {
            let mut st = self.shared.status.lock().expect("status lock");
            st.events_applied += events;
            st.events_dropped_by_request += dropped;
            st.last_event = Some(std::time::SystemTime::now());
        }
        for f in followups {
            debug!(reason = ?f.reason, "event calls for a confirming scan");
            self.queue_scan(f.reason, f.scope, None);
        }
        if let Some(err) = dump_done {
            if let Some((scan, _)) = &mut self.scan {
                if let Some((kind, _)) = scan.current.take() {
                    if let Some(code) = err {
                        let e = io::Error::from_raw_os_error(code);
                        warn!(?kind, error = %e, "kernel refused a dump; its objects are not pruned");
                        scan.failed.push(kind);
                    }
                }
            }
            self.next_dump();
        }
    }

    /// Copies counters the core keeps privately into the shared status.
    fn publish(&mut self) {
        let mut st = self.shared.status.lock().expect("status lock");
        st.decode = self.decode.clone();
        st.scan_in_progress = self.scan.as_ref().map(|(s, _)| (s.reason, s.routes_dumped));
        st.scan_pending = self.pending.is_some();
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

// [reliab] ------------------------------------------------------------------------
/// Consecutive redone scans before giving up to the periodic scan.
const MAX_REDUMPS: u32 = 8;

/// An IPv6 route dump resumes each chunk by skipping as many entries as it already
/// sent (fib6 walker `skip = count`) when the tree changed, and sets no
/// NLM_F_DUMP_INTR: a removal during the dump can make it skip a route that existed
/// throughout (found by tests/tests/soak.rs: a daemon restarted mid-storm missed an
/// IPv6 blackhole route). A removal-type event during an IPv6 route dump therefore
/// marks the scan as interrupted.
fn may_skip_v6_dump_entries(scan: &ActiveScan, m: &RawMsg<'_>) -> bool {
    use crate::model::Family;
    use crate::netlink::msg::DumpKind;
    if !matches!(scan.current, Some((DumpKind::Routes(Family::V6, _), _))) {
        return false;
    }
    match m.ty {
        msg::RTM_DELROUTE => m.payload.first() == Some(&(libc::AF_INET6 as u8)),
        msg::RTM_NEWLINK | msg::RTM_DELLINK | msg::RTM_DELADDR | msg::RTM_DELNEXTHOP => true,
        _ => false,
    }
}
