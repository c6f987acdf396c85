//! Prometheus metrics (`--metrics-listen ADDR`, off by default).
//!
//! The daemon's statistics are defined once, as [`Stats`] (what `route-mirror stats`
//! shows); a refresh task copies them into the `metrics` recorder every [`REFRESH`],
//! and metrics-exporter-prometheus serves them over HTTP.
//! Names follow Prometheus conventions: `route_mirror_*`, `_total` for counters, base
//! units (seconds, bytes).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use metrics::{counter, gauge};
use metrics_exporter_prometheus::PrometheusBuilder;
use tracing::info;

use crate::shared::Shared;
use crate::stats::{rss_bytes, Stats};

/// How stale a scraped value may be.
pub const REFRESH: Duration = Duration::from_secs(1);

/// Starts the HTTP listener and the refresh task. Must run inside the tokio runtime.
pub fn serve(addr: SocketAddr, instances: Vec<Arc<Shared>>) -> Result<()> {
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
            for shared in &instances {
                refresh(shared);
            }
            if let Some(rss) = rss_bytes() {
                gauge!("process_resident_memory_bytes").set(rss as f64);
            }
        }
    });
    Ok(())
}

fn set_total(name: &'static str, labels: &[(&'static str, String)], v: u64) {
    counter!(name, labels).absolute(v);
}

fn set_gauge(name: &'static str, labels: &[(&'static str, String)], v: f64) {
    gauge!(name, labels).set(v);
}

/// Copies one namespace's counters into the recorder, labelled `netns` (`host` for the
/// daemon's own namespace).
pub fn refresh(shared: &Shared) {
    let ns = shared.netns.clone().unwrap_or_else(|| "host".to_string());
    let l = |extra: &[(&'static str, String)]| -> Vec<(&'static str, String)> {
        let mut v = vec![("netns", ns.clone())];
        v.extend_from_slice(extra);
        v
    };
    let st = Stats::collect(shared);
    for (family, tables) in &st.routes {
        for (table, n) in tables {
            set_gauge(
                "route_mirror_routes",
                &l(&[("family", family.clone()), ("table", table.clone())]),
                *n as f64,
            );
        }
    }
    set_gauge("route_mirror_links", &l(&[]), st.links as f64);
    set_gauge("route_mirror_addresses", &l(&[]), st.addresses as f64);
    set_gauge(
        "route_mirror_nexthop_objects",
        &l(&[]),
        st.nexthop_objects as f64,
    );
    set_gauge("route_mirror_attribute_sets", &l(&[]), st.attr_sets as f64);
    let c = &st.apply;
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
            &l(&[("source", st.source.clone()), ("type", kind.into())]),
            v,
        );
    }
    set_total(
        "route_mirror_inferred_removals_total",
        &l(&[]),
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
    set_gauge(
        "route_mirror_synced",
        &l(&[]),
        if st.synced { 1.0 } else { 0.0 },
    );
    set_total("route_mirror_enobufs_total", &l(&[]), st.enobufs);
    set_total("route_mirror_silent_drops_total", &l(&[]), st.silent_drops);
    set_total(
        "route_mirror_resyncs_total",
        &l(&[("reason", "overrun".into())]),
        st.resyncs,
    );
    set_total(
        "route_mirror_socket_resets_total",
        &l(&[]),
        st.socket_resets,
    );
    for (reason, n) in &st.scans_by_reason {
        set_total(
            "route_mirror_scans_total",
            &l(&[("reason", reason.clone())]),
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
            &l(&[("verdict", verdict.into())]),
            v,
        );
    }
    if let Some(s) = &st.last_scan {
        set_gauge(
            "route_mirror_last_scan_duration_seconds",
            &l(&[]),
            s.duration_ms / 1000.0,
        );
        set_gauge(
            "route_mirror_last_scan_timestamp_seconds",
            &l(&[]),
            s.started_unix_ms as f64 / 1000.0,
        );
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
            &l(&[("kind", kind.into())]),
            v,
        );
    }
    set_total("route_mirror_bad_requests_total", &l(&[]), st.bad_requests);
    if let Some(lag) = st.sync_lag_s {
        set_gauge("route_mirror_sync_lag_seconds", &l(&[]), lag);
    }
}
