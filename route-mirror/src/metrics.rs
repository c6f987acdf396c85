//! Prometheus metrics (`--metrics-listen ADDR`, off by default): `GET /metrics` in the
//! Prometheus text format (0.0.4).
//!
//! Each scrape reads every mirrored namespace's [`Stats`] (what `route-mirror stats`
//! shows, [`Stats::collect`]) and encodes it there and then: nothing is copied ahead, so
//! a scrape is exactly as fresh as `stats`, and the eBPF ring's kernel→mirror lag is
//! exported as the ring's own histogram (its buckets, count and sum), so Prometheus and
//! `stats` agree by construction.
//!
//! Why prometheus-client and not metrics + metrics-exporter-prometheus (used before):
//! that exporter builds histograms only from samples recorded into its process-global
//! recorder (it keeps them until a scrape), so the ring's histogram could only have been
//! re-recorded approximately, and its values came from a refresh task, up to a second
//! stale. prometheus-client's [`Collector`] encodes families from our own counters at
//! scrape time. Its Prometheus text encoder, not its OpenMetrics one, because
//! `promtool check metrics` (Debian's prometheus 2.42) parses the Prometheus format and
//! reads an OpenMetrics counter (`# TYPE x counter` then `x_total`) as a family without
//! HELP. HTTP is hyper's (one route).
//!
//! Conventions, which CI checks with `promtool check metrics` on a live scrape
//! (tests/tests/ops.rs): names `route_mirror_*`, counters end in `_total`, base units
//! (seconds, bytes), HELP and TYPE on every family, and every series carries `netns`
//! (`host` for the daemon's own namespace) but `process_resident_memory_bytes`, which
//! is the whole process's.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tracing::{info, warn};

use crate::copy::status::JobStatus;
use crate::ebpf::RingStats;
use crate::shared::Shared;
use crate::stats::{rss_bytes, Stats};

/// Binds `addr` and serves the namespaces' metrics there. Must run inside the tokio
/// runtime; a bind failure is returned, not logged.
pub fn serve(addr: SocketAddr, instances: Vec<Arc<Shared>>) -> Result<()> {
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("starting the metrics listener on {addr}"))?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    if !addr.ip().is_loopback() {
        warn!(%addr, "metrics are served beyond loopback");
    }
    info!(%addr, "Prometheus metrics at http://{addr}/metrics");
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Namespaces(instances)));
    let registry = Arc::new(registry);
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let registry = registry.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let registry = registry.clone();
                    async move { Ok::<_, Infallible>(respond(&req, registry).await) }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await
                {
                    tracing::debug!(error = %e, "metrics connection ended");
                }
            });
        }
    });
    Ok(())
}

async fn respond(
    req: &Request<hyper::body::Incoming>,
    registry: Arc<Registry>,
) -> Response<Full<Bytes>> {
    let reply = |status, content_type, body: String| {
        Response::builder()
            .status(status)
            .header(hyper::header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("static response parts")
    };
    if req.uri().path() != "/metrics" {
        return reply(StatusCode::NOT_FOUND, "text/plain", "try /metrics\n".into());
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", String::new());
    }
    // Collecting takes the mirror's read lock: off the async workers.
    let text = tokio::task::spawn_blocking(move || render(&registry)).await;
    match text {
        Ok(Ok(text)) => reply(
            StatusCode::OK,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            text,
        ),
        _ => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            "encoding failed\n".into(),
        ),
    }
}

fn render(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, registry)?;
    Ok(text)
}

/// The mirrored namespaces, read at each scrape.
struct Namespaces(Vec<Arc<Shared>>);

impl std::fmt::Debug for Namespaces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self.0.iter().map(|s| &s.netns).collect();
        f.debug_tuple("Namespaces").field(&names).finish()
    }
}

impl Collector for Namespaces {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let all: Vec<(String, Stats)> = self
            .0
            .iter()
            .map(|s| {
                let st = Stats::collect(s);
                (st.netns.clone().unwrap_or_else(|| "host".into()), st)
            })
            .collect();
        for family in families(&all) {
            family.encode(&mut encoder)?;
        }
        Ok(())
    }
}

/// Label pairs of one series (`netns` first).
type Labels = Vec<(&'static str, String)>;

enum Value {
    Counter(u64),
    Gauge(f64),
    /// Cumulative buckets (`le` in seconds; `+Inf` is `count`), sum and count.
    Histogram {
        buckets: Vec<(f64, u64)>,
        sum: f64,
        count: u64,
    },
}

/// One metric family and its series from every namespace.
struct Family {
    name: &'static str,
    help: &'static str,
    series: Vec<(Labels, Value)>,
}

impl Family {
    fn encode(&self, encoder: &mut DescriptorEncoder) -> std::fmt::Result {
        let Some((_, first)) = self.series.first() else {
            return Ok(());
        };
        let (name, kind) = match first {
            // The encoder appends `_total` to counters; the catalogue spells it out.
            Value::Counter(_) => (
                self.name.strip_suffix("_total").unwrap_or(self.name),
                MetricType::Counter,
            ),
            Value::Gauge(_) => (self.name, MetricType::Gauge),
            Value::Histogram { .. } => (self.name, MetricType::Histogram),
        };
        let mut family = encoder.encode_descriptor(name, self.help, None, kind)?;
        for (labels, value) in &self.series {
            let mut series = family.encode_family(labels)?;
            match value {
                Value::Counter(v) => ConstCounter::new(*v).encode(series)?,
                Value::Gauge(v) => series.encode_gauge(v)?,
                Value::Histogram {
                    buckets,
                    sum,
                    count,
                } => {
                    // prometheus-client takes each bucket's own count and accumulates.
                    let mut below = 0;
                    let own: Vec<(f64, u64)> = buckets
                        .iter()
                        .map(|&(le, cumulative)| {
                            let n = cumulative.saturating_sub(below);
                            below = below.max(cumulative);
                            (le, n)
                        })
                        .collect();
                    series.encode_histogram::<Labels>(*sum, *count, &own, None)?
                }
            }
        }
        Ok(())
    }
}

/// Builds families over every namespace: `each` adds one namespace's series.
struct Catalogue<'a> {
    all: &'a [(String, Stats)],
    out: Vec<Family>,
}

/// One namespace's series of the family being built.
struct Series<'a> {
    netns: &'a str,
    out: &'a mut Vec<(Labels, Value)>,
}

impl Series<'_> {
    fn labelled(&mut self, labels: &[(&'static str, &str)], v: Value) {
        let mut l: Labels = vec![("netns", self.netns.to_string())];
        l.extend(labels.iter().map(|&(k, v)| (k, v.to_string())));
        self.out.push((l, v));
    }
    fn counter(&mut self, v: u64) {
        self.labelled(&[], Value::Counter(v));
    }
    fn gauge(&mut self, v: f64) {
        self.labelled(&[], Value::Gauge(v));
    }
}

impl Catalogue<'_> {
    fn family(
        &mut self,
        name: &'static str,
        help: &'static str,
        each: impl Fn(&Stats, &mut Series),
    ) {
        let mut series = Vec::new();
        for (netns, st) in self.all {
            each(
                st,
                &mut Series {
                    netns,
                    out: &mut series,
                },
            );
        }
        self.out.push(Family { name, help, series });
    }
}

impl Catalogue<'_> {
    /// A family over the daemon's copies, each once (every namespace's stats list them
    /// all), labelled with the namespace the copy writes (`netns`), its name (`copy`)
    /// and its target table (`table`).
    fn copy_family(
        &mut self,
        name: &'static str,
        help: &'static str,
        each: impl Fn(&JobStatus, &mut Series),
    ) {
        let mut series = Vec::new();
        for job in self
            .all
            .first()
            .map(|(_, st)| &st.copies[..])
            .unwrap_or(&[])
        {
            let (netns, table) = job.to.rsplit_once('/').unwrap_or(("host", &job.to));
            let from = series.len();
            each(
                job,
                &mut Series {
                    netns,
                    out: &mut series,
                },
            );
            for (labels, _) in &mut series[from..] {
                labels.insert(1, ("copy", job.name.clone()));
                labels.insert(2, ("table", table.to_string()));
            }
        }
        self.out.push(Family { name, help, series });
    }
}

/// The kernel copies and declared route sets (issue 15).
fn copy_families(c: &mut Catalogue) {
    c.copy_family(
        "route_mirror_copy_synced",
        "1 once the copy's first pass is done (its target table equals what it wants).",
        |j, s| s.gauge(f64::from(u8::from(j.state == "synced"))),
    );
    c.copy_family(
        "route_mirror_copy_routes",
        "Routes of the copy by state: installed (in the target), pending (being written), failing (refused, retried with backoff).",
        |j, s| {
            for (state, n) in [
                ("installed", j.installed),
                ("pending", j.pending),
                ("failing", j.failing),
            ] {
                s.labelled(&[("state", state)], Value::Gauge(n as f64));
            }
        },
    );
    c.copy_family(
        "route_mirror_copy_failing_routes",
        "Routes the target kernel refuses now, by reason.",
        |j, s| {
            for (reason, n) in &j.failing_by_reason {
                s.labelled(&[("reason", reason)], Value::Gauge(*n as f64));
            }
        },
    );
    c.copy_family(
        "route_mirror_copy_verdicts_total",
        "What the copy did per route: installed, replaced, removed, reinstalled (missing though ours), adopted (found at start), seen (equal at a scan), failed.",
        |j, s| {
            let v = &j.verdicts;
            for (verdict, n) in [
                ("installed", v.installed),
                ("replaced", v.replaced),
                ("removed", v.removed),
                ("reinstalled", v.reinstalled),
                ("adopted", v.adopted),
                ("seen", v.seen),
                ("failed", v.failed),
            ] {
                s.labelled(&[("verdict", verdict)], Value::Counter(n));
            }
        },
    );
    c.copy_family(
        "route_mirror_copy_failures_total",
        "Writes the target kernel refused (and routes that could not be written), by reason.",
        |j, s| {
            for (reason, n) in &j.failed_by_reason {
                s.labelled(&[("reason", reason)], Value::Counter(*n));
            }
        },
    );
    c.copy_family(
        "route_mirror_copy_foreign_changes_total",
        "Changes by someone else to the copy's routes in the target (deletes, and replaces or other changes).",
        |j, s| {
            let other = j.foreign_changes.saturating_sub(j.foreign_deletes);
            s.labelled(&[("kind", "delete")], Value::Counter(j.foreign_deletes));
            s.labelled(&[("kind", "change")], Value::Counter(other));
        },
    );
    c.copy_family(
        "route_mirror_copy_repairs_total",
        "Foreign deletes and replaces the copy repaired at once.",
        |j, s| {
            s.labelled(&[("kind", "delete")], Value::Counter(j.repaired_deletes));
            s.labelled(&[("kind", "replace")], Value::Counter(j.repaired_replaces));
        },
    );
    c.copy_family(
        "route_mirror_copy_retries_total",
        "Retries of refused routes (backoff 100 ms doubling to 30 s).",
        |j, s| s.counter(j.retries),
    );
    c.copy_family(
        "route_mirror_copy_lag_seconds",
        "Source change seen to target write acknowledged, over the copy's recent writes: p50, p99 and max.",
        |j, s| {
            let ms = [("p50", j.lag.p50_ms), ("p99", j.lag.p99_ms), ("max", Some(j.lag.max_ms))];
            if j.lag.samples > 0 {
                for (stat, v) in ms {
                    if let Some(v) = v {
                        s.labelled(&[("stat", stat)], Value::Gauge(v as f64 / 1000.0));
                    }
                }
            }
        },
    );
    c.copy_family(
        "route_mirror_copy_thread_cpu_seconds",
        "CPU time of the thread writing the copy's target namespace (shared by the copies into that namespace).",
        |j, s| s.gauge(j.cpu_s),
    );
}

/// Every family, in exposition order. Counts of things the kernel reported are
/// counters; sizes and states are gauges.
fn families(all: &[(String, Stats)]) -> Vec<Family> {
    let mut c = Catalogue {
        all,
        out: Vec::new(),
    };
    c.family(
        "route_mirror_build_info",
        "route-mirror's version and the namespace's active event source (ebpf or netlink); always 1.",
        |st, s| {
            s.labelled(
                &[("version", env!("CARGO_PKG_VERSION")), ("source", &st.source)],
                Value::Gauge(1.0),
            )
        },
    );
    c.family(
        "route_mirror_ebpf_abi_mismatches_total",
        "eBPF objects refused because their record ABI is not this daemon's (a stale embedded object; the source falls back to netlink under --source auto).",
        |st, s| s.counter(st.ebpf_abi_mismatches),
    );
    c.family(
        "route_mirror_synced",
        "1 once the initial full sync is done.",
        |st, s| s.gauge(f64::from(u8::from(st.synced))),
    );
    c.family(
        "route_mirror_sync_lag_seconds",
        "How far the mirror may be behind the kernel: 0 while it is idle with nothing queued; else the time since it last was (events being applied, or a resync after lost events).",
        |st, s| {
            if let Some(lag) = st.sync_lag_s {
                s.gauge(lag)
            }
        },
    );
    c.family(
        "route_mirror_routes",
        "Routes in the mirror, by family and table id.",
        |st, s| {
            for (family, tables) in &st.routes {
                for (table, n) in tables {
                    s.labelled(
                        &[("family", family), ("table", table)],
                        Value::Gauge(*n as f64),
                    );
                }
            }
        },
    );
    c.family("route_mirror_links", "Links in the mirror.", |st, s| {
        s.gauge(st.links as f64)
    });
    c.family(
        "route_mirror_addresses",
        "Interface addresses in the mirror.",
        |st, s| s.gauge(st.addresses as f64),
    );
    c.family(
        "route_mirror_nexthop_objects",
        "Nexthop objects in the mirror.",
        |st, s| s.gauge(st.nexthop_objects as f64),
    );
    c.family(
        "route_mirror_attribute_sets",
        "Distinct route attribute sets shared by all routes.",
        |st, s| s.gauge(st.attr_sets as f64),
    );
    c.family(
        "route_mirror_rules",
        "Policy routing rules mirrored, by family.",
        |st, s| {
            for (family, n) in [("inet", st.rules.inet), ("inet6", st.rules.inet6)] {
                s.labelled(&[("family", family)], Value::Gauge(n as f64));
            }
        },
    );
    c.family(
        "route_mirror_events_total",
        "Kernel notifications applied to the mirror, by event source and type.",
        |st, s| {
            let a = &st.apply;
            for (kind, v) in [
                ("route_add", a.route_adds),
                ("route_update", a.route_updates),
                ("route_delete", a.route_deletes),
                ("route_delete_unknown", a.route_deletes_unknown),
                ("netconf", a.netconf_events),
                ("link", a.link_events),
                ("address", a.addr_events),
                ("nexthop", a.nexthop_events),
                ("rule", st.rules.counters.rule_events),
            ] {
                s.labelled(&[("source", &st.source), ("type", kind)], Value::Counter(v));
            }
        },
    );
    c.family(
        "route_mirror_inferred_removals_total",
        "IPv4 routes removed because their device, source address or nexthop object went away (the kernel sends no delete for these).",
        |st, s| s.counter(st.apply.inferred_removals),
    );
    c.family(
        "route_mirror_inferred_confirmed_total",
        "Inferred removals a later full dump confirmed.",
        |st, s| s.counter(st.apply.inferred_confirmed),
    );
    c.family(
        "route_mirror_inferred_refuted_total",
        "Inferred removals a later full dump refuted (the scan put the routes back).",
        |st, s| s.counter(st.apply.inferred_refuted),
    );
    c.family(
        "route_mirror_enobufs_total",
        "Netlink receive queue overruns (ENOBUFS): events were lost and a resync followed.",
        |st, s| s.counter(st.enobufs),
    );
    c.family(
        "route_mirror_silent_drops_total",
        "Notifications the kernel dropped without reporting ENOBUFS (socket drop counter).",
        |st, s| s.counter(st.silent_drops),
    );
    c.family(
        "route_mirror_resyncs_total",
        "Full resyncs started because events were lost.",
        |st, s| s.labelled(&[("reason", "overrun")], Value::Counter(st.resyncs)),
    );
    c.family(
        "route_mirror_socket_resets_total",
        "Netlink sockets replaced because a dump stalled after an overrun.",
        |st, s| s.counter(st.socket_resets),
    );
    c.family(
        "route_mirror_scans_total",
        "Completed full scans (mark and sweep against a fresh dump), by reason.",
        |st, s| {
            for (reason, n) in &st.scans_by_reason {
                s.labelled(&[("reason", reason)], Value::Counter(*n));
            }
        },
    );
    c.family(
        "route_mirror_prune_verdicts_total",
        "Routes judged by full scans: seen (unchanged), updated, created or deleted (the last three repaired lost events).",
        |st, s| {
            let v = &st.verdicts;
            for (verdict, n) in [
                ("seen", v.seen),
                ("updated", v.updated),
                ("created", v.created),
                ("deleted", v.deleted),
            ] {
                s.labelled(&[("verdict", verdict)], Value::Counter(n));
            }
        },
    );
    c.family(
        "route_mirror_last_scan_duration_seconds",
        "Duration of the last completed full scan.",
        |st, s| {
            if let Some(r) = &st.last_scan {
                s.gauge(r.duration_ms / 1000.0)
            }
        },
    );
    c.family(
        "route_mirror_last_scan_timestamp_seconds",
        "Unix time the last completed full scan started.",
        |st, s| {
            if let Some(r) = &st.last_scan {
                s.gauge(r.started_unix_ms as f64 / 1000.0)
            }
        },
    );
    c.family(
        "route_mirror_decode_issues_total",
        "Netlink messages or attributes the decoder skipped or did not model, by kind.",
        |st, s| {
            let d = &st.decode;
            for (kind, n) in [
                ("malformed", d.malformed),
                ("unknown_attribute", d.unknown_attrs),
                ("unknown_route_type", d.unknown_route_types),
                ("unknown_message", d.unknown_messages),
            ] {
                s.labelled(&[("kind", kind)], Value::Counter(n));
            }
        },
    );
    c.family(
        "route_mirror_bad_requests_total",
        "Control socket requests that did not parse (garbage, truncated, oversized, timed out).",
        |st, s| s.counter(st.bad_requests),
    );
    c.family(
        "route_mirror_watchers",
        "route-mirror watch clients connected.",
        |st, s| s.gauge(st.watchers as f64),
    );
    c.family(
        "route_mirror_watchers_dropped_total",
        "route-mirror watch clients dropped for falling behind.",
        |st, s| s.counter(st.watchers_dropped),
    );
    ring_families(&mut c);
    copy_families(&mut c);
    let mut out = c.out;
    if let Some(rss) = rss_bytes() {
        out.push(Family {
            name: "process_resident_memory_bytes",
            help: "Resident memory of the route-mirror process (all namespaces).",
            series: vec![(Vec::new(), Value::Gauge(rss as f64))],
        });
    }
    out
}

/// Name, help and value of a ring family.
type RingFamily = (&'static str, &'static str, fn(&RingStats) -> u64);

/// A kernel-side ring counter (summed over CPUs).
fn kernel(r: &RingStats, name: &str) -> u64 {
    r.kernel.get(name).copied().unwrap_or(0)
}

/// The eBPF source's ring buffer (namespaces using it only).
fn ring_families(c: &mut Catalogue) {
    let gauges: [RingFamily; 3] = [
        (
            "route_mirror_ring_size_bytes",
            "Size of the eBPF ring buffer.",
            |r| r.size_bytes,
        ),
        (
            "route_mirror_ring_memlock_bytes",
            "Kernel memory the eBPF ring buffer map holds (its memlock, as bpftool shows it).",
            |r| r.memlock_bytes,
        ),
        (
            "route_mirror_ring_high_water_bytes",
            "Highest fill of the eBPF ring buffer seen (bytes written, not yet read).",
            |r| r.high_water_bytes,
        ),
    ];
    for (name, help, value) in gauges {
        c.family(name, help, |st, s| {
            if let Some(r) = &st.ring {
                s.gauge(value(r) as f64)
            }
        });
    }
    let counters: [RingFamily; 7] = [
        (
            "route_mirror_ring_records_total",
            "Records the socket filter wrote to the eBPF ring buffer.",
            |r| kernel(r, "records"),
        ),
        (
            "route_mirror_ring_bytes_total",
            "Bytes the socket filter wrote to the eBPF ring buffer (record headers included).",
            |r| kernel(r, "bytes"),
        ),
        (
            "route_mirror_ring_drops_total",
            "Notifications lost because the eBPF ring buffer was full (each forces a resync).",
            |r| kernel(r, "drops"),
        ),
        (
            "route_mirror_ring_truncated_total",
            "Notifications too long for a ring record (each forces a resync).",
            |r| kernel(r, "truncated"),
        ),
        (
            "route_mirror_ring_read_records_total",
            "Records the daemon read from the eBPF ring buffer.",
            |r| r.records_read,
        ),
        (
            "route_mirror_ring_read_bytes_total",
            "Bytes the daemon read from the eBPF ring buffer.",
            |r| r.bytes_read,
        ),
        (
            "route_mirror_ring_loss_resyncs_total",
            "Resyncs forced by ring drops or truncated records.",
            |r| r.loss_resyncs,
        ),
    ];
    for (name, help, value) in counters {
        c.family(name, help, |st, s| {
            if let Some(r) = &st.ring {
                s.counter(value(r))
            }
        });
    }
    c.family(
        "route_mirror_ring_lag_seconds",
        "Kernel to mirror delay of each notification through the eBPF ring: from the socket filter seeing it to the daemon reading it (applied in the same batch). The buckets are the ring histogram's own, as stats shows them.",
        |st, s| {
            if let Some(r) = &st.ring {
                let l = &r.lag;
                let buckets = l
                    .buckets
                    .iter()
                    .map(|b| (b.le_us / 1e6, b.count))
                    .collect();
                s.labelled(
                    &[],
                    Value::Histogram {
                        buckets,
                        sum: l.sum_us / 1e6,
                        count: l.count,
                    },
                );
            }
        },
    );
}
