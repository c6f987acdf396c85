//! The one event path for both sources: a notification from the socket or a record
//! from the ring is decoded, counted, stamped against the running scan and applied.

use tracing::warn;

use crate::mirror::{FollowUp, Mirror};
use crate::model::Change;
use crate::netlink::decode;
use crate::netlink::msg::DecodeCounters;
use crate::netlink::msg::{self, RawMsg};
use crate::reconcile::ActiveScan;

/// Malformed messages logged (the log is capped; the counter is not).
const MALFORMED_LOG_CAP: u64 = 100;

/// What the event path keeps between messages: the decoder's counters and the test
/// knob that discards events.
#[derive(Default)]
pub struct EventPath {
    pub decode: DecodeCounters,
    /// Test knob: event messages still to discard (to prove the prune repairs them).
    pub drop_next: u64,
    malformed_logged: u64,
}

/// What applying a batch of events produced, flushed into the status after it.
#[derive(Default)]
pub struct Applied {
    /// Scans the events call for (to confirm inferred removals).
    pub followups: Vec<FollowUp>,
    pub events: u64,
    pub dropped: u64,
}

impl EventPath {
    /// Applies one notification to the mirror, stamped against the running scan.
    pub fn apply(
        &mut self,
        mirror: &mut Mirror,
        scan: Option<&ActiveScan>,
        m: &RawMsg<'_>,
        out: &mut Applied,
    ) {
        if is_reply(m) {
            return; // a reply to a request we no longer wait for
        }
        if self.drop_next > 0 {
            self.drop_next -= 1;
            out.dropped += 1;
            return;
        }
        if let Some(change) = self.decode(m) {
            out.events += 1;
            let stamp = match scan {
                Some(s) => s.event_stamp(Mirror::dump_class(&change, &s.scope)),
                None => mirror.generation(),
            };
            out.followups.extend(mirror.apply_stamped(change, stamp));
        }
    }

    /// Decodes a message (an event or a dump entry); a malformed one is counted, logged
    /// (capped) and skipped.
    pub fn decode(&mut self, m: &RawMsg<'_>) -> Option<Change> {
        match decode::decode(m, &mut self.decode) {
            Ok(change) => change,
            Err(e) => {
                self.decode.malformed += 1;
                if self.malformed_logged < MALFORMED_LOG_CAP {
                    self.malformed_logged += 1;
                    warn!(msg_type = m.ty, error = %e, "skipping malformed netlink message");
                }
                None
            }
        }
    }
}

/// A control message (a reply to a request), not a notification.
pub fn is_reply(m: &RawMsg<'_>) -> bool {
    matches!(
        m.ty,
        msg::NLMSG_DONE | msg::NLMSG_ERROR | msg::NLMSG_NOOP | msg::NLMSG_OVERRUN
    )
}
