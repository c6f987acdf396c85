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

use std::sync::atomic::Ordering;

use super::batch::{self, BatchCounts, BatchQuery};
use super::fastpath::FastPath;
use super::proto::{Reply, Request, MAX_REQUEST};
use super::view::route_view;
use crate::daemon::{Command, Shared};
use crate::diff;
use crate::fib::fast::Lookup;
use crate::fib::DEFAULT_RULE_TABLES;
use crate::model::Family;
use crate::netlink::{self, decode::DecodeCounters, msg::DumpKind, socket::NlSocket};
use crate::reconcile::{ScanReason, ScanScope};

/// How long a client may take to send its request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one reply may take to write (a client that stops reading is cut off).
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Server {
    listener: UnixListener,
    ctx: Ctx,
    path: PathBuf,
}

/// What each client handler gets.
#[derive(Clone)]
struct Ctx {
    shared: Arc<Shared>,
    fast: Arc<FastPath>,
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
        let fast = Arc::new(FastPath::default());
        fast.spawn_rebuilder(&shared)
            .context("starting the FIB snapshot thread")?;
        Ok(Server {
            listener,
            ctx: Ctx { shared, fast },
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
            let ctx = self.ctx.clone();
            tokio::spawn(async move {
                if let Err(e) = handle(stream, ctx).await {
                    debug!(error = %e, "control client ended with an error");
                }
            });
        }
    }
}

async fn handle(stream: UnixStream, ctx: Ctx) -> Result<()> {
    let shared = &ctx.shared;
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
            Ok(Request::LookupBatch { table, tos, format }) => {
                let q = BatchQuery {
                    tables: table.map_or_else(|| DEFAULT_RULE_TABLES.to_vec(), |t| vec![t]),
                    tos,
                    format,
                };
                return lookup_batch(rd.into_inner(), wr, &ctx, q).await;
            }
            Ok(req) => match dispatch(req, &ctx).await {
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

/// Streams a batch lookup: reads input in chunks of whole lines, answers each chunk
/// (lock held, if at all, only while answering), then writes it.
async fn lookup_batch(
    mut rd: BufReader<tokio::net::unix::OwnedReadHalf>,
    mut wr: BufWriter<tokio::net::unix::OwnedWriteHalf>,
    ctx: &Ctx,
    q: BatchQuery,
) -> Result<()> {
    let mut counts = BatchCounts::default();
    let mut line_no = 0u64;
    let mut buf: Vec<u8> = Vec::with_capacity(batch::CHUNK + batch::MAX_LINE);
    let mut out: Vec<u8> = Vec::with_capacity(batch::CHUNK * 4);
    let mut eof = false;
    while !eof {
        // Fill up to a chunk of input.
        while buf.len() < batch::CHUNK {
            let start = buf.len();
            buf.resize(batch::CHUNK + batch::MAX_LINE, 0);
            let n = tokio::time::timeout(REQUEST_TIMEOUT, rd.read(&mut buf[start..]))
                .await
                .context("batch input stalled")??;
            buf.truncate(start + n);
            if n == 0 {
                eof = true;
                break;
            }
        }
        // Whole lines only; at EOF the last line needs no newline.
        let end = if eof {
            buf.len()
        } else {
            match buf.iter().rposition(|&b| b == b'\n') {
                Some(i) => i + 1,
                // A chunk without a newline is one overlong line: answered (as an error)
                // by itself, its rest then reads as a line of its own.
                None => buf.len(),
            }
        };
        if end > 0 {
            let body = buf[..end].strip_suffix(b"\n").unwrap_or(&buf[..end]);
            out.clear();
            batch::answer_lines(
                &ctx.fast,
                &ctx.shared,
                &q,
                body,
                &mut line_no,
                &mut out,
                &mut counts,
            );
            buf.drain(..end);
            if !out.is_empty() {
                let head = serde_json::to_string(&Reply::Item(json!({ "bytes": out.len() })))?;
                tokio::time::timeout(WRITE_TIMEOUT, async {
                    wr.write_all(head.as_bytes()).await?;
                    wr.write_all(b"\n").await?;
                    wr.write_all(&out).await?;
                    wr.flush().await?;
                    anyhow::Ok(())
                })
                .await
                .context("client did not read its results in time")??;
            }
        }
    }
    let mut s = serde_json::to_string(&Reply::Ok(serde_json::to_value(counts)?))?;
    s.push('\n');
    tokio::time::timeout(WRITE_TIMEOUT, async {
        wr.write_all(s.as_bytes()).await?;
        wr.flush().await?;
        anyhow::Ok(())
    })
    .await
    .context("client did not read its results in time")??;
    Ok(())
}

async fn dispatch(req: Request, ctx: &Ctx) -> Result<Vec<Reply>> {
    let shared = &ctx.shared;
    match req {
        Request::Lookup { addr, table, tos } => {
            let tables: Vec<u32> = table.map_or_else(|| DEFAULT_RULE_TABLES.to_vec(), |t| vec![t]);
            // Lock-free while the snapshot is current; the exact trie otherwise.
            if let Some(snap) = ctx.fast.current() {
                let found = match snap.fib.lookup(addr, &tables, tos) {
                    Lookup::Route(t, net, e) => Some(Some(route_view(&snap.names, t, net, e))),
                    Lookup::None => Some(None),
                    Lookup::Exact => None,
                };
                if let Some(found) = found {
                    ctx.fast.fast_lookups.fetch_add(1, Ordering::Relaxed);
                    return ok(found);
                }
            }
            ctx.fast.exact_lookups.fetch_add(1, Ordering::Relaxed);
            let m = shared.mirror.read().expect("mirror lock");
            let found = m
                .fib
                .lookup(addr, &tables, tos)
                .map(|(t, net, e)| route_view(&*m, t, net, e));
            ok(found)
        }
        Request::LookupBatch { .. } => bail!("lookup-batch is a streaming request"),
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
                        &*m, t, net, e,
                    ))?));
                }
            }
            let n = out.len();
            out.push(Reply::Ok(json!({ "count": n })));
            Ok(out)
        }
        Request::Stats => {
            let mut v = stats(shared);
            v["fast_lookup"] = ctx.fast.stats();
            ok(v)
        }
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
        Request::Sync => {
            shared.barrier().await?;
            ok(json!({ "synced": true }))
        }
    }
}

/// A fresh dump of routes and nexthop objects on a private socket.
fn dump_now() -> Result<Vec<crate::model::Change>> {
    let mut sock = NlSocket::open().context("opening a netlink socket for diff")?;
    let mut counters = DecodeCounters::default();
    let mut out = Vec::new();
    match netlink::dump_blocking(&mut sock, DumpKind::Nexthops, &mut counters, &mut out) {
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
            &mut out,
        )?;
    }
    Ok(out)
}

fn rss_bytes() -> Option<u64> {
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
        "source": "netlink",
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
        "apply": m.counters,
        "enobufs": st.enobufs,
        "resyncs": st.resyncs,
        "scans": st.scans,
        "verdicts": st.verdicts,
        "object_verdicts": st.object_verdicts,
        "last_scan": st.last_scan,
        "last_scan_age_s": last_scan_age,
        "scan_in_progress": st.scan_in_progress,
        "scan_pending": st.scan_pending,
        "decode": st.decode,
        "bad_requests": st.bad_requests,
        "rcvbuf": st.rcvbuf,
        "socket_resets": st.socket_resets,
        "rss_bytes": rss_bytes(),
    })
}
