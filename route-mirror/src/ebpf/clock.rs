//! When the core reads the ring's kernel counters. Each read is a `bpf` syscall:
//! reading the loss counters on every drain pass cost ~2 syscalls per 5 records under
//! load, and reading the statistics on every loop turn was half the eBPF source's
//! syscalls (BENCHMARKS.md).

use std::time::{Duration, Instant};

/// How long applied ring records may wait for a read of the ring's loss counters. A
/// drop needs a full ring, so records drained after it start this clock again: every
/// loss is seen within `LOSS_CHECK` of the next drain, and always before a barrier is
/// answered, a dump is requested or a prune runs (the core forces a check there).
pub const LOSS_CHECK: Duration = Duration::from_millis(5);
/// Loss counters are read at least this often even with no records (belt and braces).
pub const LOSS_CHECK_IDLE: Duration = Duration::from_secs(1);
/// How often the ring's counters in `stats` are refreshed while busy.
pub const STATS_EVERY: Duration = Duration::from_millis(100);

#[derive(Debug)]
pub struct RingClock {
    /// Ring records were applied since this instant and the loss counters not read
    /// since.
    unchecked: Option<Instant>,
    last_loss_check: Instant,
    last_stats: Instant,
    /// A loss was found since the statistics were last refreshed.
    lost: bool,
}

impl Default for RingClock {
    fn default() -> RingClock {
        RingClock {
            unchecked: None,
            last_loss_check: Instant::now(),
            last_stats: Instant::now(),
            lost: false,
        }
    }
}

impl RingClock {
    /// Records were applied: the loss counters are due within [`LOSS_CHECK`].
    pub fn applied(&mut self) {
        self.unchecked.get_or_insert_with(Instant::now);
    }

    /// Whether to read the loss counters now (always when `force`d); if so, the
    /// clock restarts from this read.
    pub fn loss_check_due(&mut self, force: bool) -> bool {
        let now = Instant::now();
        let due = force
            || self.unchecked.is_some_and(|t| now - t >= LOSS_CHECK)
            || now - self.last_loss_check >= LOSS_CHECK_IDLE;
        if due {
            self.unchecked = None;
            self.last_loss_check = now;
        }
        due
    }

    /// When the core must wake, asleep or not, to read the loss counters.
    pub fn wake_by(&self) -> Option<Instant> {
        self.unchecked.map(|t| t + LOSS_CHECK)
    }

    /// A loss was found: the next statistics refresh is due at once.
    pub fn lost(&mut self) {
        self.lost = true;
    }

    /// Whether to refresh the ring's statistics now: every [`STATS_EVERY`], after a
    /// loss, or when `fresh` ones are wanted; if so, the clock restarts.
    pub fn stats_due(&mut self, fresh: bool) -> bool {
        let due = fresh || self.lost || self.last_stats.elapsed() >= STATS_EVERY;
        if due {
            self.last_stats = Instant::now();
            self.lost = false;
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applied_records_make_a_loss_check_due_within_loss_check() {
        let mut c = RingClock::default();
        assert!(
            !c.loss_check_due(false),
            "nothing applied, idle check not yet due"
        );
        assert!(c.wake_by().is_none());
        c.applied();
        let by = c.wake_by().unwrap();
        assert!(by <= Instant::now() + LOSS_CHECK);
        assert!(!c.loss_check_due(false));
        std::thread::sleep(LOSS_CHECK);
        assert!(c.loss_check_due(false));
        assert!(c.wake_by().is_none(), "the read restarts the clock");
        assert!(c.loss_check_due(true), "a forced check is always due");
    }

    #[test]
    fn a_loss_refreshes_the_statistics_at_once() {
        let mut c = RingClock::default();
        assert!(!c.stats_due(false));
        c.lost();
        assert!(c.stats_due(false));
        assert!(!c.stats_due(false));
        assert!(c.stats_due(true));
    }
}
