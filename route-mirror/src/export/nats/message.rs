//! The NATS message format (compact JSON, one object per message), shared by the
//! publisher and the fleet consumer ([`crate::fleet`]). Documented in README ("NATS").
//!
//! Subjects, in the JetStream stream `route-mirror` (subjects `route-mirror.>`):
//!
//! * `route-mirror.<host>.<netns>.<table>.<family>`: one message per applied route
//!   change (`type: change`), `family` is `ipv4` or `ipv6`, `table` the `rt_tables` name;
//! * `route-mirror.<host>.<netns>.control`: snapshots (`snapshot-start`, `snapshot` chunks
//!   of routes, `snapshot-end`) and resync markers (`resync-start`, `resync-end`).
//!
//! Every message carries the mirror's `epoch` (its start time, ms) and `seq`, a sequence
//! number per mirror over all its subjects with no gaps: a consumer that sees a gap, or a
//! new epoch, discards that router's copy until the next `snapshot-end`. A snapshot is
//! the mirror at one point: changes published after its `snapshot-end` apply on top.
//!
//! Routes are kept per key, as the kernel keeps them: (table, prefix, [`route_id`]) holds
//! a list of routes in the kernel's order, the first the one it forwards with (IPv4
//! `ip route append`, a subnet on two devices, IPv6 device routes of one metric). A
//! change says what the key holds now (`routes`), so a consumer sets the list rather
//! than guessing where in it a route went; the common case, a key holding just the
//! changed route, leaves `routes` out.

use serde::{Deserialize, Serialize};

use crate::view::RouteView;

/// One message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Msg {
    /// The publishing daemon's start time (Unix ms): a new epoch restarts `seq`.
    pub epoch: u64,
    /// Per mirror, +1 per message, over every subject of the mirror.
    pub seq: u64,
    /// When the change was applied (changes) or the message built (others), Unix ms.
    pub time_ms: u64,
    #[serde(flatten)]
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Body {
    /// A route change: op `add`, `replace` or `delete` (`route` as it was), cause
    /// `event`, `inferred` or `scan`; or a route whose rendering changed without a
    /// change of its own (op `replace`): cause `link` (a device it uses was renamed or
    /// removed) or `nexthop` (the nexthop object it uses changed).
    Change {
        op: String,
        cause: String,
        /// The route's key within its table and prefix ([`route_id`]).
        id: String,
        route: Box<RouteView>,
        /// Every route the key holds now, in the kernel's order (empty: the key is
        /// gone). Absent when that is exactly `[route]` (an add or replace of a key's
        /// only route).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        routes: Option<Vec<RouteView>>,
    },
    /// A snapshot begins; `reason`: `start`, `periodic`, `reconnect`, `lagged`
    /// (the export fell behind the mirror), `publish-error`.
    SnapshotStart {
        snapshot: u64,
        routes: usize,
        reason: String,
        /// The mirror had finished its initial sync (else the rest arrives as changes,
        /// then `resync-end`).
        synced: bool,
        /// A resync was running (its corrections follow as changes, then `resync-end`).
        #[serde(default)]
        resyncing: bool,
    },
    /// Up to [`SNAPSHOT_CHUNK`] routes of the snapshot.
    Snapshot {
        snapshot: u64,
        routes: Vec<Keyed>,
    },
    SnapshotEnd {
        snapshot: u64,
    },
    /// Events were lost; the resync's corrections follow as changes. Until
    /// `resync-end` a consumer's copy may be wrong.
    ResyncStart {
        note: String,
    },
    /// The mirror (and a consumer that applied every change) is exact again: after a
    /// resync, or after the initial sync a snapshot with `synced` false was taken in.
    ResyncEnd,
}

/// A snapshot route with its key (a key's routes come in the kernel's order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Keyed {
    pub id: String,
    #[serde(flatten)]
    pub route: RouteView,
}

/// A route's key within its table and prefix, as the kernel keys it: metric, IPv4
/// TOS, IPv6 source prefix (`-` for none), `/`-separated: `100/0/-`,
/// `1024/0/2001:db8::/48`. A key holds a list of routes ([`Body::Change`]'s `routes`).
pub fn route_id(sub: &crate::model::SubKey) -> String {
    let src = sub.src.map_or_else(|| "-".to_string(), |s| s.to_string());
    format!("{}/{}/{src}", sub.priority, sub.tos)
}

/// Routes per `snapshot` message (about 250 KB of JSON, under NATS's 1 MB default).
pub const SNAPSHOT_CHUNK: usize = 1000;

/// A subject token: NATS forbids `.`, `*`, `>` and whitespace in one.
pub fn token(s: &str) -> String {
    let t: String = s
        .chars()
        .map(|c| match c {
            '.' | '*' | '>' => '_',
            c if c.is_whitespace() => '_',
            c => c,
        })
        .collect();
    if t.is_empty() {
        "_".into()
    } else {
        t
    }
}

/// `route-mirror.<host>.<netns>` (tokens already made safe).
pub fn base(prefix: &str, host: &str, netns: &str) -> String {
    format!("{prefix}.{}.{}", token(host), token(netns))
}

pub fn family_token(f: crate::model::Family) -> &'static str {
    match f {
        crate::model::Family::V4 => "ipv4",
        crate::model::Family::V6 => "ipv6",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_and_round_trip() {
        assert_eq!(
            base("route-mirror", "r1.example.net", "blue"),
            "route-mirror.r1_example_net.blue"
        );
        assert_eq!(token("a b>c*"), "a_b_c_");
        let m = Msg {
            epoch: 1,
            seq: 7,
            time_ms: 3,
            body: Body::SnapshotEnd { snapshot: 2 },
        };
        let j = serde_json::to_string(&m).unwrap();
        assert_eq!(
            j,
            r#"{"epoch":1,"seq":7,"time_ms":3,"type":"snapshot-end","snapshot":2}"#
        );
        assert_eq!(serde_json::from_str::<Msg>(&j).unwrap(), m);
    }
}
