//! Prometheus metrics (`--metrics-listen ADDR`, off by default).
//!
//! The daemon already keeps its counters in [`Status`](crate::daemon::Status) and the
//! [`Mirror`](crate::mirror::Mirror); a refresh task copies them into the `metrics`
//! recorder every [`REFRESH`], and metrics-exporter-prometheus serves them over HTTP.
//! Names follow Prometheus conventions: `route_mirror_*`, `_total` for counters, base
//! units (seconds, bytes).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use metrics::{counter, gauge};
use metrics_exporter_prometheus::PrometheusBuilder;
use tracing::info;

use crate::daemon::Shared;

/// How stale a scraped value may be.
pub const REFRESH: Duration = Duration::from_secs(1);

/// Starts the HTTP listener and the refresh task. Must run inside the tokio runtime.
pub fn serve(addr: SocketAddr, shared: Arc<Shared>) -> Result<()> {
    let (recorder, exporter) = PrometheusBuilder::new()
        .with_http_listener(addr)
        .build()
        .with_context(|| format!("starting the metrics listener on {addr}"))?;
    metrics::set_global_recorder(recorder).context("installing the metrics recorder")?;
    tokio::spawn(exporter);
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "metrics are served beyond loopback");
    }
    info!(%addr, "Prometheus metrics at http://{addr}/metrics");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(REFRESH);
        loop {
            tick.tick().await;
            refresh(&shared);
        }
    });
    Ok(())
}

fn set_total(name: &'static str, labels: &[(&'static str, String)], v: u64) {
    counter!(name, labels).absolute(v);
}

/// Copies the daemon's counters into the recorder.
pub fn refresh(shared: &Shared) {
    let st = shared.status.lock().expect("status lock").clone();
    {
        let m = shared.mirror.read().expect("mirror lock");
        for ((family, table), t) in m.fib.tables() {
            gauge!("route_mirror_routes", "family" => family.to_string(), "table" => table.to_string()).set(t.len() as f64);
        }
        gauge!("route_mirror_links").set(m.links.len() as f64);
        gauge!("route_mirror_addresses").set(m.addrs.len() as f64);
        gauge!("route_mirror_nexthop_objects").set(m.nexthops.len() as f64);
        gauge!("route_mirror_attribute_sets").set(m.attr_sets() as f64);
        let c = &m.counters;
        for (kind, v) in [
            ("route_add", c.route_adds),
            ("route_update", c.route_updates),
            ("route_delete", c.route_deletes),
            ("route_delete_unknown", c.route_deletes_unknown),
            ("route_dead", c.dead_routes),
            ("link", c.link_events),
            ("address", c.addr_events),
            ("nexthop", c.nexthop_events),
        ] {
            set_total(
                "route_mirror_events_total",
                &[("source", "netlink".into()), ("type", kind.into())],
                v,
            );
        }
        set_total(
            "route_mirror_inferred_removals_total",
            &[],
            c.inferred_removals,
        );
        set_total(
            "route_mirror_inferred_confirmed_total",
            &[],
            c.inferred_confirmed,
        );
        set_total(
            "route_mirror_inferred_refuted_total",
            &[],
            c.inferred_refuted,
        );
    }
    gauge!("route_mirror_synced").set(if st.synced { 1.0 } else { 0.0 });
    set_total("route_mirror_enobufs_total", &[], st.enobufs);
    set_total("route_mirror_silent_drops_total", &[], st.silent_drops);
    set_total(
        "route_mirror_resyncs_total",
        &[("reason", "overrun".into())],
        st.resyncs,
    );
    set_total("route_mirror_socket_resets_total", &[], st.socket_resets);
    for (reason, n) in &st.scans_by_reason {
        set_total(
            "route_mirror_scans_total",
            &[("reason", reason.clone())],
            *n,
        );
    }
    for (verdict, v) in [
        ("seen", st.verdicts.seen),
        ("updated", st.verdicts.updated),
        ("created", st.verdicts.created),
        ("deleted", st.verdicts.deleted),
    ] {
        set_total(
            "route_mirror_prune_verdicts_total",
            &[("verdict", verdict.into())],
            v,
        );
    }
    if let Some(s) = &st.last_scan {
        gauge!("route_mirror_last_scan_duration_seconds").set(s.duration_ms / 1000.0);
        gauge!("route_mirror_last_scan_timestamp_seconds").set(s.started_unix_ms as f64 / 1000.0);
    }
    let d = &st.decode;
    for (kind, v) in [
        ("malformed", d.malformed),
        ("unknown_attribute", d.unknown_attrs),
        ("unknown_route_type", d.unknown_route_types),
        ("unknown_message", d.unknown_messages),
    ] {
        set_total(
            "route_mirror_decode_issues_total",
            &[("kind", kind.into())],
            v,
        );
    }
    set_total("route_mirror_bad_requests_total", &[], st.bad_requests);
    if let Some(t) = st.caught_up {
        let lag = std::time::SystemTime::now()
            .duration_since(t)
            .unwrap_or_default();
        gauge!("route_mirror_sync_lag_seconds").set(lag.as_secs_f64());
    }
    if let Some(rss) = crate::ctl::server::rss_bytes() {
        gauge!("process_resident_memory_bytes").set(rss as f64);
    }
}
