//! `route-mirror stats`: the daemon's statistics, defined once. The control server
//! collects and sends them ([`Stats::collect`]), the CLI prints them, the Prometheus
//! exporter ([`crate::metrics`]) copies them; all three read these fields.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::copy::status::JobStatus;
use crate::ebpf::RingStats;
use crate::export::bpf_fib::BpfFibStats;
use crate::export::feed::FeedStats;
use crate::mirror::ApplyCounters;
use crate::netlink::msg::DecodeCounters;
use crate::reconcile::{ScanReason, ScanReport, Verdicts};
use crate::shared::Shared;

/// One namespace's statistics at one moment.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stats {
    /// Active event source: `ebpf` or `netlink`.
    pub source: String,
    /// Why `auto` fell back to netlink, if it did.
    pub source_fallback: Option<String>,
    /// eBPF objects refused because their record ABI is not this daemon's (a stale
    /// embedded object; the process-wide count).
    pub ebpf_abi_mismatches: u64,
    /// eBPF ring statistics (eBPF source only).
    pub ring: Option<RingStats>,
    /// Pinned BPF FIB counters (`--bpf-fib` only).
    pub bpf_fib: Option<BpfFibStats>,
    pub netns: Option<String>,
    pub synced: bool,
    pub uptime_s: Option<f64>,
    pub initial_sync_ms: Option<f64>,
    pub routes_total: usize,
    pub prefixes_total: usize,
    /// Routes per family, then per table id.
    pub routes: BTreeMap<String, BTreeMap<String, usize>>,
    pub links: usize,
    pub addresses: usize,
    pub nexthop_objects: usize,
    /// Policy rules mirrored.
    #[serde(default)]
    pub rules: RuleStats,
    /// Distinct attribute sets shared by all routes.
    pub attr_sets: usize,
    pub events_applied: u64,
    pub events_dropped_by_request: u64,
    pub last_event_age_s: Option<f64>,
    /// How far behind the kernel the mirror may be, in seconds: 0 while the core sleeps
    /// with nothing queued and no resync owed (a caught-up mirror); otherwise the time
    /// since it last was: since it woke to apply what arrived (a burst reads its real
    /// delay as it is worked off), since events were lost (until the resync is done),
    /// or since start (until the initial sync is done). Periodic scans do not count:
    /// events keep the mirror current while they run. The eBPF ring's per-notification
    /// delay is `ring.lag`.
    pub sync_lag_s: Option<f64>,
    /// What the event path applied.
    pub apply: ApplyCounters,
    pub enobufs: u64,
    /// Notifications the kernel dropped without reporting ENOBUFS (socket congested).
    pub silent_drops: u64,
    pub resyncs: u64,
    pub scans: u64,
    /// Completed scans per reason (`initial`, `periodic`, `overrun`, ...).
    pub scans_by_reason: BTreeMap<String, u64>,
    pub verdicts: Verdicts,
    pub object_verdicts: Verdicts,
    /// Route corrections made by scans that followed no loss of events (not the initial
    /// sync, not a resync, no overrun while they ran): the event path missed something.
    /// The soak fails on any.
    pub unexplained_corrections: u64,
    /// The same for links, addresses, nexthop objects, rules and netconf settings.
    pub unexplained_object_corrections: u64,
    pub last_scan: Option<ScanReport>,
    pub last_scan_age_s: Option<f64>,
    /// The running scan's reason and the routes it has dumped so far.
    pub scan_in_progress: Option<(ScanReason, u64)>,
    pub scan_pending: bool,
    pub decode: DecodeCounters,
    /// Control requests that did not parse (garbage, truncated, oversized, timed out).
    pub bad_requests: u64,
    /// `route-mirror watch` clients now, and those dropped for falling behind.
    pub watchers: usize,
    pub watchers_dropped: u64,
    /// The exports' feeds ([`crate::export::feed`]).
    pub feeds: Vec<FeedStats>,
    /// The gNMI server (`--gnmi-listen`): subscribers, notifications, overflows...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gnmi: Option<serde_json::Value>,
    /// The NATS export (`--nats-url`): published, bytes, snapshots, publish errors...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats: Option<serde_json::Value>,
    /// The daemon's kernel copies and declared route sets (installed, pending, failing
    /// by reason, verdicts, lag): every namespace's stats list them all, as `copies`.
    #[serde(default)]
    pub copies: Vec<JobStatus>,
    /// Control clients refused because they are not root (SO_PEERCRED).
    pub refused_peers: u64,
    /// Control clients refused because too many were being served.
    pub busy_refusals: u64,
    /// Receive buffer the kernel granted (after doubling), as requested, and whether
    /// SO_RCVBUFFORCE was allowed.
    pub rcvbuf: usize,
    pub rcvbuf_requested: usize,
    pub rcvbuf_forced: bool,
    /// Netlink sockets replaced because a dump stalled after an overrun.
    pub socket_resets: u64,
    pub rss_bytes: Option<u64>,
    /// The control server's read-optimised lookup snapshot (filled by the server).
    pub fast_lookup: Option<FastLookupStats>,
}

/// The control server's lookup snapshot ([`crate::ctl::fastpath`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FastLookupStats {
    /// The snapshot matches the mirror (lookups use it).
    pub current: bool,
    pub version: Option<u64>,
    pub builds: u64,
    pub aborted_builds: u64,
    pub last_extract_us: u64,
    pub last_build_us: u64,
    pub heap_bytes: u64,
    pub fast_lookups: u64,
    pub exact_lookups: u64,
}

impl Stats {
    /// The core's published status, the mirror's sizes and counters, the exports'
    /// counters and the process's memory, as of now.
    pub fn collect(shared: &Shared) -> Stats {
        let st = shared.status.lock().expect("status lock").clone();
        let m = shared.mirror.read().expect("mirror lock");
        let mut routes: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
        let mut total = 0usize;
        let mut prefixes = 0usize;
        for ((f, t), rt) in m.fib.tables() {
            total += rt.len();
            prefixes += rt.prefixes();
            routes
                .entry(f.to_string())
                .or_default()
                .insert(t.to_string(), rt.len());
        }
        let now = SystemTime::now();
        let age = |t: Option<SystemTime>| {
            t.and_then(|t| now.duration_since(t).ok())
                .map(|d| d.as_secs_f64())
        };
        let last_scan_age_s = st.last_scan.as_ref().map(|r| {
            now.duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| {
                d.as_millis() as f64 - r.started_unix_ms as f64 - r.duration_ms
            }) / 1000.0
        });
        Stats {
            source: st.source.to_string(),
            source_fallback: st.source_fallback,
            ebpf_abi_mismatches: crate::ebpf::abi::mismatches(),
            ring: st.ring,
            bpf_fib: st.bpf_fib,
            netns: shared.netns.clone(),
            synced: st.synced,
            uptime_s: age(Some(shared.started)),
            initial_sync_ms: st.initial_sync_ms,
            routes_total: total,
            prefixes_total: prefixes,
            routes,
            links: m.links.len(),
            addresses: m.addrs.len(),
            nexthop_objects: m.nexthops.len(),
            rules: RuleStats {
                inet: m.rules.list(crate::model::Family::V4).len(),
                inet6: m.rules.list(crate::model::Family::V6).len(),
                vrfs: m
                    .rules
                    .links
                    .iter()
                    .filter(|l| l.vrf_table.is_some())
                    .count(),
                counters: m.rules.counters.clone(),
            },
            attr_sets: m.attr_sets(),
            events_applied: st.events_applied,
            events_dropped_by_request: st.events_dropped_by_request,
            last_event_age_s: age(st.last_event),
            sync_lag_s: if st.current {
                Some(0.0)
            } else {
                age(st.caught_up.or(Some(shared.started)))
            },
            apply: m.counters.clone(),
            enobufs: st.enobufs,
            silent_drops: st.silent_drops,
            resyncs: st.resyncs,
            scans: st.scans,
            scans_by_reason: st.scans_by_reason,
            verdicts: st.verdicts,
            object_verdicts: st.object_verdicts,
            unexplained_corrections: st.unexplained_corrections,
            unexplained_object_corrections: st.unexplained_object_corrections,
            last_scan: st.last_scan,
            last_scan_age_s,
            scan_in_progress: st.scan_in_progress,
            scan_pending: st.scan_pending,
            decode: st.decode,
            bad_requests: st.bad_requests,
            watchers: shared.exports.watchers(),
            watchers_dropped: st.watchers_dropped,
            feeds: shared.exports.feed_stats(),
            gnmi: crate::export::GNMI_STATS.get().map(|s| s.json()),
            nats: crate::export::NATS_STATS.get().map(|s| s.json()),
            copies: shared
                .copies
                .get()
                .map(|r| r.statuses())
                .unwrap_or_default(),
            refused_peers: st.refused_peers,
            busy_refusals: st.busy_refusals,
            rcvbuf: st.rcvbuf,
            rcvbuf_requested: st.rcvbuf_requested,
            rcvbuf_forced: st.rcvbuf_forced,
            socket_resets: st.socket_resets,
            rss_bytes: rss_bytes(),
            fast_lookup: None,
        }
    }
}

/// Rules per family, VRF devices, and rule events.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RuleStats {
    pub inet: usize,
    pub inet6: usize,
    pub vrfs: usize,
    pub counters: crate::fib::rules::mirror::RuleCounters,
}

/// The process's resident memory (VmRSS), from /proc.
pub fn rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    Some(pages * page)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mirror::Mirror;

    /// The wire names are the contract with scripts (`stats --json`) and the CLI.
    #[test]
    fn stats_round_trip_under_their_wire_names() {
        let shared = Shared::detached(Mirror::new()).unwrap();
        shared.status.lock().unwrap().source = "netlink";
        let v = serde_json::to_value(Stats::collect(&shared)).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut want = vec![
            "source",
            "source_fallback",
            "ebpf_abi_mismatches",
            "ring",
            "bpf_fib",
            "netns",
            "synced",
            "uptime_s",
            "initial_sync_ms",
            "routes_total",
            "prefixes_total",
            "routes",
            "links",
            "addresses",
            "nexthop_objects",
            "rules",
            "attr_sets",
            "events_applied",
            "events_dropped_by_request",
            "last_event_age_s",
            "sync_lag_s",
            "apply",
            "enobufs",
            "silent_drops",
            "resyncs",
            "scans",
            "scans_by_reason",
            "verdicts",
            "object_verdicts",
            "unexplained_corrections",
            "unexplained_object_corrections",
            "last_scan",
            "last_scan_age_s",
            "scan_in_progress",
            "scan_pending",
            "decode",
            "bad_requests",
            "watchers",
            "feeds",
            "watchers_dropped",
            "refused_peers",
            "busy_refusals",
            "rcvbuf",
            "rcvbuf_requested",
            "rcvbuf_forced",
            "socket_resets",
            "rss_bytes",
            "fast_lookup",
            "copies",
        ];
        want.sort_unstable();
        assert_eq!(keys, want);
        let back: Stats = serde_json::from_value(v).unwrap();
        assert_eq!(back.source, "netlink");
        assert!(back.rss_bytes.is_some_and(|b| b > 0));
    }
}
