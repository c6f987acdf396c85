//! The one event path for both sources: a notification from the socket or a record
//! from the ring is decoded, counted, stamped against the running scan and applied.

use tracing::warn;

use crate::ebpf::record;
use crate::mirror::{FollowUp, Mirror};
use crate::model::Change;
use crate::netlink::decode;
use crate::netlink::msg::{self, RawMsg};
use crate::netlink::msg::{DecodeCounters, DecodeError};
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
        let change = self.decode(m);
        self.apply_change(mirror, scan, change, out);
    }

    /// Applies one compact ring record (a route notification the socket filter decoded
    /// in the kernel) exactly as [`EventPath::apply`] applies the raw message.
    pub fn apply_compact(
        &mut self,
        mirror: &mut Mirror,
        scan: Option<&ActiveScan>,
        msg_type: u16,
        body: &[u8],
        out: &mut Applied,
    ) {
        if self.drop_next > 0 {
            self.drop_next -= 1;
            out.dropped += 1;
            return;
        }
        let decoded = record::decode_compact(msg_type, body, &mut self.decode);
        let change = self.count_malformed(msg_type, decoded);
        self.apply_change(mirror, scan, change, out);
    }

    fn apply_change(
        &mut self,
        mirror: &mut Mirror,
        scan: Option<&ActiveScan>,
        change: Option<Change>,
        out: &mut Applied,
    ) {
        if let Some(change) = change {
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
        let decoded = decode::decode(m, &mut self.decode);
        self.count_malformed(m.ty, decoded)
    }

    fn count_malformed(
        &mut self,
        msg_type: u16,
        decoded: Result<Option<Change>, DecodeError>,
    ) -> Option<Change> {
        match decoded {
            Ok(change) => change,
            Err(e) => {
                self.decode.malformed += 1;
                if self.malformed_logged < MALFORMED_LOG_CAP {
                    self.malformed_logged += 1;
                    warn!(msg_type, error = %e, "skipping malformed netlink message");
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
