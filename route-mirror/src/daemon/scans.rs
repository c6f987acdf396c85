//! The core's scans: at most one running, the requests that arrive meanwhile merged
//! into one pending scan, the periodic schedule, and the bounded redo of a scan whose
//! dumps may have skipped entries. What a scan does to the mirror is
//! [`crate::reconcile`]'s; when it runs relative to events is the core loop's.

use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tracing::{info, warn};

use super::events::EventPath;
use crate::mirror::Mirror;
use crate::model::{Change, Family};
use crate::netlink::msg::{self, DumpKind, RawMsg};
use crate::reconcile::{ActiveScan, ScanReason, ScanReport, ScanScope};
use crate::shared::Status;

/// A progress line every this many dumped routes (a full table logs a handful).
const PROGRESS_EVERY: u64 = 250_000;
/// Consecutive redone scans before giving up to the periodic scan.
const MAX_REDUMPS: u32 = 8;

/// The scan under way and who waits for its report.
pub struct Running {
    pub scan: ActiveScan,
    waiters: Vec<oneshot::Sender<ScanReport>>,
}

/// Requests merged while a scan runs.
struct Pending {
    reason: ScanReason,
    scope: ScanScope,
    waiters: Vec<oneshot::Sender<ScanReport>>,
}

pub struct Scans {
    running: Option<Running>,
    pending: Option<Pending>,
    interval: Duration,
    next_periodic: Instant,
    /// Consecutive scans redone because a dump may have skipped entries.
    redumps: u32,
}

impl Scans {
    pub fn new(interval: Duration) -> Scans {
        Scans {
            running: None,
            pending: None,
            interval,
            next_periodic: Instant::now() + interval,
            redumps: 0,
        }
    }

    pub fn running(&self) -> Option<&ActiveScan> {
        self.running.as_ref().map(|r| &r.scan)
    }

    pub fn running_mut(&mut self) -> Option<&mut ActiveScan> {
        self.running.as_mut().map(|r| &mut r.scan)
    }

    /// A dump request of the running scan is in flight.
    pub fn dumping(&self) -> bool {
        self.running().is_some_and(|s| s.current.is_some())
    }

    /// Nothing running and nothing pending.
    pub fn idle(&self) -> bool {
        self.running.is_none() && self.pending.is_none()
    }

    pub fn pending(&self) -> bool {
        self.pending.is_some()
    }

    /// The initial sync or a resync after lost events is running or queued: until it
    /// is done the mirror is known to miss changes (other scans only confirm it).
    pub fn resync_owed(&self) -> bool {
        let owed = |r: ScanReason| matches!(r, ScanReason::Initial | ScanReason::Overrun);
        self.running().is_some_and(|s| owed(s.reason))
            || self.pending.as_ref().is_some_and(|p| owed(p.reason))
    }

    /// Queues a scan, merging it into the pending one.
    pub fn queue(
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

    /// Whether `m` answers the running scan's dump request (our port, its sequence).
    pub fn is_dump_reply(&self, m: &RawMsg<'_>, port: u32) -> bool {
        self.running()
            .is_some_and(|s| m.port == port && s.current.is_some_and(|(_, seq)| seq == m.seq))
    }

    /// Takes one reply of the running dump: an entry is marked into the mirror; the
    /// dump's end comes back, with the kernel's error if it refused the dump.
    pub fn dump_reply(
        &mut self,
        mirror: &mut Mirror,
        m: &RawMsg<'_>,
        events: &mut EventPath,
    ) -> Option<Option<i32>> {
        let scan = self.running_mut()?;
        scan.current_replied = true;
        match m.ty {
            msg::NLMSG_DONE => {
                mirror.dump_ended(scan);
                Some(None)
            }
            msg::NLMSG_ERROR => {
                let code = msg::error_code(m.payload).unwrap_or(libc::EIO);
                if code != 0 {
                    mirror.dump_ended(scan);
                }
                (code != 0).then_some(Some(code))
            }
            _ => {
                if m.flags & msg::NLM_F_DUMP_INTR != 0 {
                    scan.interrupted += 1;
                }
                if let Some(change) = events.decode(m) {
                    self.mark(mirror, change);
                }
                None
            }
        }
    }

    /// A datagram of the running dump's replies was marked (the dump goes on).
    pub fn chunk_done(&mut self, mirror: &mut Mirror) {
        if let Some(scan) = self.running_mut() {
            mirror.dump_chunk_done(scan);
        }
    }

    /// An event arrived while the running scan dumps: a removal during an IPv6 route
    /// dump can make it skip entries.
    pub fn event_during_dump(&mut self, m: &RawMsg<'_>) {
        if let Some(scan) = self.running_mut() {
            if may_skip_v6_dump_entries(scan, m) {
                scan.interrupted += 1;
            }
        }
    }

    /// Marks one object the running scan's dump listed into the mirror (logging
    /// progress on large dumps).
    fn mark(&mut self, mirror: &mut Mirror, change: Change) {
        let Some(scan) = self.running_mut() else {
            return;
        };
        let before = scan.routes_dumped;
        mirror.mark(change, scan);
        if scan.routes_dumped != before && scan.routes_dumped % PROGRESS_EVERY == 0 {
            let secs = scan.started.elapsed().as_secs_f64();
            info!(
                reason = ?scan.reason,
                routes = scan.routes_dumped,
                rate = format!("{:.0}/s", scan.routes_dumped as f64 / secs),
                "scan progress"
            );
        }
    }

    /// Events may have been lost: the running scan's result may already be stale, and
    /// a full resync follows it.
    pub fn events_lost(&mut self) {
        if let Some(s) = self.running_mut() {
            s.overrun_during = true;
        }
        self.queue(ScanReason::Overrun, ScanScope::full(), None);
    }

    /// Queues the periodic full scan when it is due and nothing else is pending.
    pub fn queue_periodic_if_due(&mut self) {
        if self.pending.is_none() && Instant::now() >= self.next_periodic {
            self.queue(ScanReason::Periodic, ScanScope::full(), None);
        }
    }

    /// How long until the periodic scan is due.
    pub fn until_periodic(&self) -> Duration {
        self.next_periodic.saturating_duration_since(Instant::now())
    }

    pub fn set_interval(&mut self, d: Duration) {
        info!(seconds = d.as_secs_f64(), "scan interval changed");
        let last = self
            .next_periodic
            .checked_sub(self.interval)
            .unwrap_or_else(Instant::now);
        self.next_periodic = last + d;
        self.interval = d;
    }

    /// Starts the pending scan with the mirror's new generation
    /// ([`Mirror::begin_scan`]); returns its reason.
    pub fn start_pending(&mut self, generation: u32) -> Option<ScanReason> {
        let p = self.pending.take()?;
        info!(reason = ?p.reason, scope = ?p.scope.dumps(), generation, "scan started");
        self.running = Some(Running {
            scan: ActiveScan::new(p.reason, p.scope, generation),
            waiters: p.waiters,
        });
        Some(p.reason)
    }

    /// Gives up the running scan (its socket was replaced): its waiters get the
    /// scan they asked for again.
    pub fn abandon_running(&mut self) {
        if let Some(Running { scan, waiters }) = self.running.take() {
            for w in waiters {
                self.queue(scan.reason, scan.scope.clone(), Some(w));
            }
        }
    }

    pub fn take_running(&mut self) -> Option<Running> {
        self.running.take()
    }

    /// Reports a finished scan: to the log, the status and its waiters. A scan whose
    /// dumps may have skipped entries is redone (bounded), else a route that existed
    /// throughout could stay missing until the periodic scan.
    pub fn finished(&mut self, running: Running, report: &ScanReport, status: &mut Status) {
        record(status, report);
        if report.scope == ScanScope::full() {
            self.next_periodic = Instant::now() + self.interval;
        }
        for w in running.waiters {
            let _ = w.send(report.clone());
        }
        if report.interrupted_messages == 0 {
            self.redumps = 0;
        } else if self.redumps < MAX_REDUMPS {
            self.redumps += 1;
            info!(scope = ?report.scope.dumps(), "dump raced with removals: scanning again");
            self.queue(ScanReason::Overrun, report.scope.clone(), None);
        } else {
            warn!("dumps keep racing with removals; the periodic scan will confirm");
            self.redumps = 0;
        }
    }
}

/// Logs a finished scan: a correction outside a resync means the event stream missed
/// changes, which is worth a warning.
pub fn log_report(report: &ScanReport, since_start: Duration) {
    let v = report.verdicts;
    let corrections = v.corrections() + report.object_verdicts.corrections();
    match report.reason {
        ScanReason::Initial => info!(
            routes = report.routes_dumped,
            ms = format!("{:.0}", report.duration_ms),
            since_start_ms = since_start.as_millis() as u64,
            "initial sync done"
        ),
        _ if corrections > 0 && unexplained(report) => {
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
}

/// Whether the scan's corrections follow no loss of events (see
/// `Stats::unexplained_corrections`).
fn unexplained(report: &ScanReport) -> bool {
    !report.overrun_during && !report.reason.expects_corrections()
}

/// Adds a finished scan to the published status.
fn record(st: &mut Status, report: &ScanReport) {
    st.scans += 1;
    let reason = serde_json::to_value(report.reason)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    *st.scans_by_reason.entry(reason).or_default() += 1;
    st.verdicts.add(&report.verdicts);
    st.object_verdicts.add(&report.object_verdicts);
    if unexplained(report) {
        st.unexplained_corrections += report.verdicts.corrections();
        st.unexplained_object_corrections += report.object_verdicts.corrections();
    }
    if report.reason == ScanReason::Initial {
        st.synced = true;
        st.initial_sync_ms = Some(report.duration_ms);
    }
    st.last_scan = Some(report.clone());
}

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
pub fn removal_may_skip_v6(m: &RawMsg<'_>) -> bool {
    match m.ty {
        msg::RTM_DELROUTE => m.payload.first() == Some(&(libc::AF_INET6 as u8)),
        msg::RTM_NEWLINK | msg::RTM_DELLINK | msg::RTM_DELADDR | msg::RTM_DELNEXTHOP => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finish(s: &mut Scans, interrupted: u64) {
        let generation = 7;
        s.start_pending(generation).expect("a pending scan");
        let mut running = s.take_running().unwrap();
        running.scan.interrupted = interrupted;
        let report = running.scan.report(Duration::ZERO);
        s.finished(running, &report, &mut Status::default());
    }

    #[test]
    fn requests_merge_into_one_pending_scan_labelled_by_the_strongest_reason() {
        let mut s = Scans::new(Duration::from_secs(3600));
        let (tx, mut rx) = oneshot::channel();
        s.queue(ScanReason::Periodic, ScanScope::routes(Family::V4), None);
        s.queue(ScanReason::Manual, ScanScope::routes(Family::V6), Some(tx));
        s.events_lost();
        s.queue(ScanReason::Manual, ScanScope::routes(Family::V4), None);
        assert_eq!(s.start_pending(1), Some(ScanReason::Overrun));
        assert_eq!(s.running().unwrap().scope, ScanScope::full());
        assert!(!s.pending() && !s.idle());
        let running = s.take_running().unwrap();
        let report = running.scan.report(Duration::ZERO);
        s.finished(running, &report, &mut Status::default());
        assert_eq!(rx.try_recv().unwrap().reason, ScanReason::Overrun);
        assert!(s.idle());
    }

    #[test]
    fn interrupted_dumps_are_redone_a_bounded_number_of_times() {
        let mut s = Scans::new(Duration::from_secs(3600));
        s.queue(ScanReason::Manual, ScanScope::full(), None);
        for _ in 0..MAX_REDUMPS {
            finish(&mut s, 1);
            assert!(s.pending(), "redone");
        }
        finish(&mut s, 1);
        assert!(!s.pending(), "left to the periodic scan");
        assert_eq!(s.redumps, 0);
    }

    #[test]
    fn a_finished_scan_reaches_the_status() {
        let mut s = Scans::new(Duration::from_secs(3600));
        s.queue(ScanReason::Initial, ScanScope::full(), None);
        s.start_pending(2);
        let running = s.take_running().unwrap();
        let report = running.scan.report(Duration::from_millis(5));
        let mut st = Status::default();
        s.finished(running, &report, &mut st);
        assert!(st.synced);
        assert_eq!((st.scans, st.scans_by_reason["initial"]), (1, 1));
        assert_eq!(st.initial_sync_ms, Some(5.0));
    }
}
