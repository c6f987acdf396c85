//! The daemon side of the control socket.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::proto::{Reply, Request, MAX_REQUEST};
use super::view::route_view;
use crate::daemon::{Command, Shared};
use crate::diff;
use crate::fib::DEFAULT_RULE_TABLES;
use crate::intern::Interner;
use crate::model::Family;
use crate::netlink::{self, decode::DecodeCounters, msg::DumpKind, socket::NlSocket};
use crate::reconcile::{ScanReason, ScanScope};

/// How long a client may take to send its request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one reply may take to write (a client that stops reading is cut off).
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Server {
    listener: UnixListener,
    shared: Arc<Shared>,
    path: PathBuf,
}

impl Server {
    /// Binds the socket (mode 0600). A stale socket file is replaced; a live one is an error.
    pub fn bind(path: &Path, shared: Arc<Shared>) -> Result<Server> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!("another route-mirror is already serving {}", path.display());
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing stale socket {}", path.display()))?;
        }
        let listener = UnixListener::bind(path)
            .with_context(|| format!("binding control socket {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod 0600 {}", path.display()))?;
        Ok(Server {
            listener,
            shared,
            path: path.to_owned(),
        })
    }

    pub async fn serve(self) -> Result<()> {
        loop {
            let (stream, _) = self
                .listener
                .accept()
                .await
                .with_context(|| format!("accept on {}", self.path.display()))?;
            let shared = self.shared.clone();
            tokio::spawn(async move {
                if let Err(e) = handle(stream, shared).await {
                    debug!(error = %e, "control client ended with an error");
                }
            });
        }
    }
}

async fn handle(stream: UnixStream, shared: Arc<Shared>) -> Result<()> {
    let (rd, wr) = stream.into_split();
    let mut rd = BufReader::new(rd).take(MAX_REQUEST as u64 + 1);
    let mut wr = BufWriter::new(wr);
    let mut line = String::new();
    let n = tokio::time::timeout(REQUEST_TIMEOUT, rd.read_line(&mut line))
        .await
        .context("request timed out")??;
    let replies = if n > MAX_REQUEST {
        vec![Reply::Error(format!(
            "request longer than {MAX_REQUEST} bytes"
        ))]
    } else {
        match serde_json::from_str::<Request>(line.trim_end()) {
            Ok(Request::Watch { prefix, table }) => return watch(wr, &shared, prefix, table).await,
            Ok(req) => match dispatch(req, &shared).await {
                Ok(r) => r,
                Err(e) => vec![Reply::Error(format!("{e:#}"))],
            },
            Err(e) => {
                warn!(error = %e, "bad control request");
                shared.status.lock().expect("status lock").bad_requests += 1;
                vec![Reply::Error(format!("bad request: {e}"))]
            }
        }
    };
    tokio::time::timeout(WRITE_TIMEOUT, async {
        for r in replies {
            let mut s = serde_json::to_string(&r)?;
            s.push('\n');
            wr.write_all(s.as_bytes()).await?;
        }
        wr.flush().await?;
        anyhow::Ok(())
    })
    .await
    .context("client did not read its reply in time")??;
    Ok(())
}

fn ok<T: Serialize>(v: T) -> Result<Vec<Reply>> {
    Ok(vec![Reply::Ok(serde_json::to_value(v)?)])
}

async fn dispatch(req: Request, shared: &Arc<Shared>) -> Result<Vec<Reply>> {
    match req {
        Request::Lookup { addr, table, tos } => {
            let m = shared.mirror.read().expect("mirror lock");
            let tables: Vec<u32> = table.map_or_else(|| DEFAULT_RULE_TABLES.to_vec(), |t| vec![t]);
            let found = m
                .fib
                .lookup(addr, &tables, tos)
                .map(|(t, net, e)| route_view(&m, t, net, e));
            ok(found)
        }
        Request::Show {
            prefix,
            table,
            family,
        } => {
            let m = shared.mirror.read().expect("mirror lock");
            let mut out = Vec::new();
            for ((f, t), rt) in m.fib.tables() {
                if family.is_some_and(|x| x != f) || table.is_some_and(|x| x != t) {
                    continue;
                }
                let iter = match &prefix {
                    Some(p) if Family::of_net(p) != f => continue,
                    Some(p) => rt.iter_within(p),
                    None => rt.iter(),
                };
                for (net, e) in iter {
                    out.push(Reply::Item(serde_json::to_value(route_view(
                        &m, t, net, e,
                    ))?));
                }
            }
            let n = out.len();
            out.push(Reply::Ok(json!({ "count": n })));
            Ok(out)
        }
        Request::Stats => ok(stats(shared)),
        Request::Diff => {
            let dump = tokio::task::spawn_blocking(dump_now).await??;
            shared.barrier().await?;
            let m = shared.mirror.read().expect("mirror lock");
            ok(diff::compare(&m, &dump))
        }
        Request::Scan {
            wait,
            family,
            table,
        } => {
            let scope = ScanScope {
                families: family.map_or_else(|| Family::ALL.to_vec(), |f| vec![f]),
                table,
                ..if family.is_none() && table.is_none() {
                    ScanScope::full()
                } else {
                    ScanScope::routes(Family::V4)
                }
            };
            let (tx, rx) = oneshot::channel();
            shared.command(Command::Scan {
                scope,
                reason: ScanReason::Manual,
                reply: Some(tx),
            })?;
            if wait {
                ok(rx
                    .await
                    .context("the core stopped before the scan finished")?)
            } else {
                ok(json!({ "queued": true }))
            }
        }
        Request::DropEvents { count } => {
            shared.command(Command::DropEvents(count))?;
            ok(json!({ "dropping": count }))
        }
        Request::Reload => ok(crate::daemon::reload(shared)?),
        Request::Watch { .. } => bail!("watch is a stream (handled before dispatch)"),
        Request::Sync => {
            shared.barrier().await?;
            ok(json!({ "synced": true }))
        }
    }
}

/// How long one watch line may take to write before the watcher counts as stuck.
const WATCH_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Streams applied changes until the client leaves or falls behind.
async fn watch(
    mut wr: BufWriter<tokio::net::unix::OwnedWriteHalf>,
    shared: &Shared,
    prefix: Option<ipnet::IpNet>,
    table: Option<u32>,
) -> Result<()> {
    use tokio::sync::broadcast::error::RecvError;
    let mut rx = shared.watch.subscribe();
    let wanted = |r: &crate::ctl::view::WatchRecord| match &r.route {
        None => true, // markers go to everyone
        Some(v) => {
            table.is_none_or(|t| t == v.table) && prefix.is_none_or(|p| p.contains(&v.prefix))
        }
    };
    loop {
        let reply = match rx.recv().await {
            Ok(rec) if !wanted(&rec) => None,
            Ok(rec) => Some(Reply::Item(serde_json::to_value(&*rec)?)),
            Err(RecvError::Lagged(n)) => {
                shared.status.lock().expect("status lock").watchers_dropped += 1;
                warn!(missed = n, "dropping a watcher that fell behind");
                Some(Reply::Error(format!(
                    "watcher too slow: {n} changes dropped; refetch with `route-mirror show` and watch again"
                )))
            }
            Err(RecvError::Closed) => Some(Reply::Ok(json!({ "closed": true }))),
        };
        let last = matches!(reply, Some(Reply::Error(_) | Reply::Ok(_)));
        let write = async {
            if let Some(reply) = reply {
                let mut line = serde_json::to_string(&reply)?;
                line.push('\n');
                wr.write_all(line.as_bytes()).await?;
            }
            // Flush whenever the queue drains (even if its last records were filtered
            // out), so no line waits for the next change.
            if rx.is_empty() || last {
                wr.flush().await?;
            }
            anyhow::Ok(())
        };
        match tokio::time::timeout(WATCH_WRITE_TIMEOUT, write).await {
            Ok(Ok(())) if !last => {}
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => return Err(e), // the watcher left
            Err(_) => {
                shared.status.lock().expect("status lock").watchers_dropped += 1;
                bail!("watcher stopped reading; dropped");
            }
        }
    }
}

/// A fresh dump of routes and nexthop objects on a private socket.
fn dump_now() -> Result<Vec<crate::model::Change>> {
    let mut sock = NlSocket::open().context("opening a netlink socket for diff")?;
    let mut counters = DecodeCounters::default();
    let mut interner = Interner::default();
    let mut out = Vec::new();
    match netlink::dump_blocking(
        &mut sock,
        DumpKind::Nexthops,
        &mut counters,
        &mut interner,
        &mut out,
    ) {
        Ok(()) => {}
        // Kernels without nexthop objects refuse the dump; routes still compare.
        Err(netlink::DumpError::Refused { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    for f in Family::ALL {
        netlink::dump_blocking(
            &mut sock,
            DumpKind::Routes(f, None),
            &mut counters,
            &mut interner,
            &mut out,
        )?;
    }
    Ok(out)
}

/// The process's resident memory (VmRSS), from /proc.
pub fn rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    Some(pages * page)
}

fn stats(shared: &Shared) -> Value {
    let st = shared.status.lock().expect("status lock").clone();
    let m = shared.mirror.read().expect("mirror lock");
    let mut routes = serde_json::Map::new();
    let mut total = 0usize;
    let mut prefixes = 0usize;
    for ((f, t), rt) in m.fib.tables() {
        total += rt.len();
        prefixes += rt.prefixes();
        let fam = routes.entry(f.to_string()).or_insert_with(|| json!({}));
        fam[t.to_string()] = json!(rt.len());
    }
    let now = SystemTime::now();
    let age = |t: Option<SystemTime>| {
        t.and_then(|t| now.duration_since(t).ok())
            .map(|d| d.as_secs_f64())
    };
    let last_scan_age = st.last_scan.as_ref().map(|r| {
        now.duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| {
            d.as_millis() as f64 - r.started_unix_ms as f64 - r.duration_ms
        }) / 1000.0
    });
    json!({
        "source": st.source,
        "source_fallback": st.source_fallback,
        "ring": st.ring,
        "bpf_fib": st.bpf_fib,
        "netns": shared.netns,
        "synced": st.synced,
        "uptime_s": age(Some(shared.started)),
        "initial_sync_ms": st.initial_sync_ms,
        "routes_total": total,
        "prefixes_total": prefixes,
        "routes": routes,
        "links": m.links.len(),
        "addresses": m.addrs.len(),
        "nexthop_objects": m.nexthops.len(),
        "attr_sets": m.attr_sets(),
        "events_applied": st.events_applied,
        "events_dropped_by_request": st.events_dropped_by_request,
        "last_event_age_s": age(st.last_event),
        // How far behind the kernel the mirror may be: time since it last had applied
        // everything queued (≈0 when idle; grows during a burst or a scan).
        "sync_lag_s": age(st.caught_up),
        "apply": m.counters,
        "enobufs": st.enobufs,
        "silent_drops": st.silent_drops,
        "resyncs": st.resyncs,
        "scans": st.scans,
        "scans_by_reason": st.scans_by_reason,
        "verdicts": st.verdicts,
        "object_verdicts": st.object_verdicts,
        "last_scan": st.last_scan,
        "last_scan_age_s": last_scan_age,
        "scan_in_progress": st.scan_in_progress,
        "scan_pending": st.scan_pending,
        "decode": st.decode,
        "bad_requests": st.bad_requests,
        "watchers": shared.watch.receiver_count(),
        "watchers_dropped": st.watchers_dropped,
        "rcvbuf": st.rcvbuf,
        "socket_resets": st.socket_resets,
        "rss_bytes": rss_bytes(),
    })
}
