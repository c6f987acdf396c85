//! `route-mirror run`: wires the netlink source, the core loop and the control socket.

pub mod core;
pub mod events;
mod reader;
pub mod scans;
pub mod service;

use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tracing::{info, warn};

use crate::export::bpf_fib::BpfFib;
use crate::export::hub::Exports;
use crate::mirror::Mirror;
use crate::netlink::socket::NlSocket;
use crate::shared::{reload, Command, Reloadable, Shared, Status};
use route_mirror_common::groups;

/// Settings of `route-mirror run`, resolved from the configuration file and flags.
#[derive(Debug, Clone)]
pub struct Config {
    pub netns: Option<String>,
    pub socket: PathBuf,
    pub scan_interval: Duration,
    /// Netlink receive buffer in bytes.
    pub rcvbuf: usize,
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Where notifications come from.
    pub source: SourceChoice,
    /// eBPF ring buffer size in bytes (a power of two).
    pub ring_size: u64,
    /// Tables of the pinned BPF FIB (empty: none).
    pub bpf_fib_tables: Vec<u32>,
    /// The gNMI export (one server for every namespace).
    pub gnmi: crate::config::GnmiConfig,
    /// The NATS export (one connection for every namespace).
    pub nats: crate::export::nats::NatsConfig,
    /// Serve a control socket (namespaces mirrored only because a copy reads or
    /// writes them have none: `copies` and `diff --copy` on any socket cover them).
    pub control: bool,
}

/// `--source`: which event source to use.
pub use crate::config::SourceKind as SourceChoice;

impl Config {
    /// One instance per mirrored namespace (`"all"` expanded now), or one for the
    /// daemon's own namespace.
    pub fn resolve(c: &crate::config::Config) -> Result<Vec<Config>> {
        let names = crate::config::expand_netns(&c.netns).context("listing /run/netns")?;
        let names: Vec<Option<String>> = if names.is_empty() {
            if c.netns.is_empty() {
                vec![None]
            } else {
                anyhow::bail!("netns = \"all\", but there is no named namespace in /run/netns")
            }
        } else {
            names.into_iter().map(Some).collect()
        };
        // Namespaces a copy reads or writes are mirrored too (the copy needs both
        // states), without a control socket of their own.
        let mut implicit = Vec::new();
        for j in crate::copy::spec::jobs(c).map_err(|e| anyhow::anyhow!(e))? {
            for ns in j.namespaces() {
                if !names.contains(&ns) && !implicit.contains(&ns) {
                    implicit.push(ns);
                }
            }
        }
        let control = names.len();
        Ok(names
            .into_iter()
            .chain(implicit)
            .enumerate()
            .map(|(i, netns)| Config {
                control: i < control,
                socket: c
                    .socket
                    .clone()
                    .unwrap_or_else(|| crate::ctl::default_socket(netns.as_deref())),
                netns,
                scan_interval: Duration::from_secs_f64(c.scan_interval),
                rcvbuf: c.rcvbuf,
                metrics_listen: c.metrics_listen,
                source: c.source,
                ring_size: c.ring_size as u64,
                bpf_fib_tables: c.bpf_fib_table_ids(),
                gnmi: c.gnmi(),
                nats: c.into(),
            })
            .collect())
    }
}

/// A namespace as the copies reach it: its mirror and funnel, and closures for what they
/// ask its core (through a weak reference: a copy never keeps a core's state alive).
fn mirrored(s: &Arc<Shared>) -> crate::copy::status::Mirrored {
    let (p, b) = (Arc::downgrade(s), Arc::downgrade(s));
    crate::copy::status::Mirrored {
        netns: s.netns.clone(),
        mirror: s.mirror.clone(),
        hub: s.exports.clone(),
        progress: Arc::new(move || {
            p.upgrade().map_or((false, 0), |s| {
                let st = s.status.lock().expect("status lock");
                (st.synced, st.scans)
            })
        }),
        barrier: Arc::new(move |tx| {
            b.upgrade()
                .is_some_and(|s| s.command(Command::Barrier(tx)).is_ok())
        }),
    }
}

/// Starts the copy threads of the configuration's copies and declared route sets, and
/// makes them reachable from every namespace's control socket.
#[allow(clippy::type_complexity)]
fn start_copies(
    reloadable: Option<&Reloadable>,
    shareds: &[Arc<Shared>],
) -> Result<
    Option<(
        Arc<crate::copy::status::Registry>,
        Vec<std::thread::JoinHandle<()>>,
    )>,
> {
    let Some(r) = reloadable else { return Ok(None) };
    let (jobs, protocol) = {
        let c = r.current.lock().expect("config lock");
        (
            crate::copy::spec::jobs(&c).map_err(|e| anyhow::anyhow!(e))?,
            c.copy_protocol,
        )
    };
    let registry = Arc::new(crate::copy::status::Registry::default());
    for s in shareds {
        let _ = s.copies.set(registry.clone());
    }
    let mirrored: Vec<crate::copy::status::Mirrored> = shareds.iter().map(mirrored).collect();
    *registry.mirrors.lock().expect("copy mirrors") = mirrored.clone();
    if jobs.is_empty() {
        return Ok(Some((registry, Vec::new())));
    }
    let threads = crate::copy::runner::start(jobs, &mirrored, protocol, registry.clone())
        .context("starting the copies")?;
    Ok(Some((registry, threads)))
}

/// Starts the core thread of one namespace: it enters the namespace (so every socket it
/// opens, now or on recovery, lives there), opens and subscribes its netlink socket,
/// and reports back before it starts mirroring.
pub fn start(
    cfg: &Config,
    reloadable: Option<Arc<Reloadable>>,
) -> Result<(Arc<Shared>, std::thread::JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel();
    let thread_cfg = cfg.clone();
    let name = format!("rm-core-{}", cfg.netns.as_deref().unwrap_or("host"));
    let handle = std::thread::Builder::new()
        .name(name.chars().take(15).collect())
        .spawn(move || {
            let built = thread_cfg
                .netns
                .as_deref()
                .map_or(Ok(()), crate::netns::enter)
                .and_then(|()| build(&thread_cfg, reloadable));
            match built {
                Ok((shared, core)) => {
                    let _ = tx.send(Ok(shared));
                    core.run();
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        })
        .context("spawning core thread")?;
    let shared = rx
        .recv()
        .context("core thread ended during start-up")?
        .with_context(|| {
            format!(
                "mirroring namespace {}",
                cfg.netns.as_deref().unwrap_or("(own)")
            )
        })?;
    Ok((shared, handle))
}

/// The start-up of [`start`], on the core thread inside the namespace.
fn build(cfg: &Config, reloadable: Option<Arc<Reloadable>>) -> Result<(Arc<Shared>, core::Core)> {
    let sock = NlSocket::open().context("opening NETLINK_ROUTE socket")?;
    let rb = sock
        .set_rcvbuf_checked(cfg.rcvbuf)
        .with_context(|| format!("setting netlink receive buffer to {} bytes", cfg.rcvbuf))?;
    let granted = rb.granted;
    if rb.capped() {
        let rmem_max = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "?".into());
        warn!(
            requested = rb.requested,
            granted,
            forced = rb.forced,
            rmem_max = %rmem_max,
            "netlink receive buffer smaller than requested{}: expect more overruns (each is \
             repaired by a resync; `stats` counts them)",
            if rb.forced {
                ""
            } else {
                " (SO_RCVBUFFORCE refused without CAP_NET_ADMIN; SO_RCVBUF is capped by \
                 net.core.rmem_max)"
            }
        );
    }
    let (ebpf, fallback) = select_source(cfg, &sock)?;
    let source = if ebpf.is_some() { "ebpf" } else { "netlink" };
    // Opt-in and consumed by other programs: failing to provide it is an error at
    // start, never a silent degradation (a dataplane would read stale or no routes).
    let bpf_fib = if cfg.bpf_fib_tables.is_empty() {
        None
    } else {
        let pin_name = cfg.netns.as_deref().unwrap_or("host");
        Some(
            BpfFib::create(cfg.bpf_fib_tables.clone(), pin_name)
                .map_err(anyhow::Error::new)
                .context("--bpf-fib: cannot create the pinned BPF FIB maps")?,
        )
    };
    // Subscribe before the initial dump so nothing between the two is lost.
    sock.subscribe(&groups::ALL)
        .context("subscribing to rtnetlink groups")?;
    let (tx, rx) = mpsc::channel();
    let status = Status {
        rcvbuf: granted,
        source,
        source_fallback: fallback,
        rcvbuf_requested: rb.requested,
        rcvbuf_forced: rb.forced,
        ..Default::default()
    };
    let shared =
        Shared::new(Mirror::new(), status, cfg.netns.clone(), reloadable, tx).context("eventfd")?;
    let shared = Arc::new(shared);
    info!(
        netns = cfg.netns.as_deref().unwrap_or("(own)"),
        rcvbuf = granted,
        scan_interval_s = cfg.scan_interval.as_secs_f64(),
        source,
        "route-mirror starting ({source} source)"
    );
    let core = core::Core::new(
        sock,
        cfg.rcvbuf,
        shared.clone(),
        rx,
        cfg.scan_interval,
        ebpf,
        Exports::new(shared.exports.clone(), bpf_fib),
    );
    Ok((shared, core))
}

/// Loads and attaches the eBPF source as `--source` asks. `auto` falls back to netlink
/// with one log line saying why; `ebpf` fails instead.
fn select_source(
    cfg: &Config,
    sock: &NlSocket,
) -> Result<(Option<crate::ebpf::EbpfSource>, Option<String>)> {
    if cfg.source == SourceChoice::Netlink {
        return Ok((None, None));
    }
    let pin_name = cfg.netns.as_deref().unwrap_or("host");
    let loaded = crate::ebpf::EbpfSource::load(sock.port(), cfg.ring_size, Some(pin_name))
        .and_then(|mut src| {
            // SAFETY: the fd belongs to `sock`, alive for this call.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(sock.fd()) };
            src.attach(fd)?;
            Ok(src)
        });
    match loaded {
        Ok(src) => {
            info!(
                ring_size = cfg.ring_size,
                pinned = src.stats().pinned.as_deref().unwrap_or("(not pinned)"),
                "eBPF source active: notifications go through the ring buffer"
            );
            Ok((Some(src), None))
        }
        Err(e) if cfg.source == SourceChoice::Auto => {
            let why = e.to_string();
            warn!(reason = %why, "eBPF source unavailable, using the netlink source");
            Ok((None, Some(why)))
        }
        Err(e) => Err(anyhow::Error::new(e).context("--source ebpf: cannot use the eBPF source")),
    }
}

/// Runs the daemon until SIGINT/SIGTERM; SIGHUP reloads the configuration. Each
/// namespace in `cfgs` is mirrored independently, with its own control socket.
pub async fn run(cfgs: Vec<Config>, reloadable: Option<Arc<Reloadable>>) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut instances = Vec::new();
    let mut servers = tokio::task::JoinSet::new();
    let mut bound = Vec::new();
    for cfg in &cfgs {
        let (shared, core) = start(cfg, reloadable.clone())?;
        if cfg.control {
            bound.push((
                crate::ctl::server::Server::bind(&cfg.socket, shared.clone())?,
                cfg,
            ));
        } else {
            info!(
                netns = cfg.netns.as_deref().unwrap_or("(own)"),
                "mirrored for a copy (no control socket)"
            );
        }
        instances.push((shared, core, cfg.control.then(|| cfg.socket.clone())));
    }
    let shareds: Vec<Arc<Shared>> = instances.iter().map(|(s, _, _)| s.clone()).collect();
    // Copies start before the control sockets answer: `copies` never misses one.
    let copies = start_copies(reloadable.as_deref(), &shareds)?;
    for (server, cfg) in bound {
        info!(
            netns = cfg.netns.as_deref().unwrap_or("(own)"),
            socket = %cfg.socket.display(),
            "control socket listening"
        );
        servers.spawn(server.serve());
    }
    if let Some(r) = &reloadable {
        let _ = r
            .instances
            .set(shareds.iter().map(Arc::downgrade).collect());
    }
    if let Some(addr) = cfgs.first().and_then(|c| c.metrics_listen) {
        crate::metrics::serve(addr, shareds.clone())?;
    }
    if let Some(g) = cfgs.first().map(|c| &c.gnmi).filter(|g| g.listen.is_some()) {
        let hubs = shareds
            .iter()
            .map(|s| crate::export::afts::Afts::start(&s.exports))
            .collect::<std::io::Result<Vec<_>>>()
            .context("starting the AFT export threads")?;
        let running = crate::export::gnmi::serve(g, hubs)
            .await
            .context("--gnmi-listen")?;
        let _ = crate::export::GNMI_STATS.set(running.stats);
    }
    if let Some(n) = cfgs.first().map(|c| &c.nats).filter(|n| n.url.is_some()) {
        let hubs: Vec<_> = shareds.iter().map(|s| s.exports.clone()).collect();
        let stats = crate::export::nats::start(n, &hubs)
            .await
            .context("--nats-url")?;
        let _ = crate::export::NATS_STATS.set(stats);
    }
    service::spawn(shareds.clone());
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => { info!("SIGINT: shutting down"); break }
            _ = term.recv() => { info!("SIGTERM: shutting down"); break }
            _ = hup.recv() => {
                service::notify(sd_notify::NotifyState::Reloading);
                if let Ok(now) = sd_notify::NotifyState::monotonic_usec_now() {
                    service::notify(now);
                }
                let r = reload(&shareds[0]);
                service::notify(sd_notify::NotifyState::Ready);
                if let Err(e) = r {
                    warn!(error = format!("{e:#}"), "SIGHUP: configuration not reloaded; keeping the current one");
                }
            }
            r = servers.join_next() => { warn!(result = ?r, "a control server ended"); break }
        }
    }
    service::notify(sd_notify::NotifyState::Stopping);
    // Copies first: one that does not persist removes its routes, reading the mirrors.
    if let Some((registry, threads)) = copies {
        for t in registry.threads.lock().expect("copy threads").iter() {
            t.send(crate::copy::status::Msg::Shutdown);
        }
        for t in threads {
            tokio::task::spawn_blocking(move || t.join()).await.ok();
        }
    }
    for (shared, _, socket) in &instances {
        let _ = shared.command(Command::Shutdown);
        if let Some(socket) = socket {
            let _ = std::fs::remove_file(socket);
        }
    }
    for (_, core, _) in instances {
        tokio::task::spawn_blocking(move || core.join()).await.ok();
    }
    Ok(())
}
