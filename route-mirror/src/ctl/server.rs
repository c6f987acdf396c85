//! The daemon side of the control socket.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use serde_json::json;
use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter,
};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{oneshot, Semaphore};
use tracing::{debug, warn};

use std::sync::atomic::Ordering;

use super::batch::{self, BatchCounts, BatchQuery};
use super::fastpath::FastPath;
use super::lookup;
use super::proto::{Reply, Request, MAX_REQUEST};
use crate::diff;
use crate::fib::fast::Lookup;
use crate::fib::DEFAULT_RULE_TABLES;
use crate::mirror::Mirror;
use crate::model::Family;
use crate::reconcile::{ScanReason, ScanScope};
use crate::shared::{Command, Shared};
use crate::stats::Stats;
use crate::view::{route_view, WatchRecord};

/// How long a client may take to send its request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a reply may make no progress (a client that stops reading is cut off).
/// Measured per chunk, so a large `show` to a slow but reading client still completes.
const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes written per timed step of a reply.
const WRITE_CHUNK: usize = 64 * 1024;
/// Clients served at once; more are answered with an error and closed at once,
/// so stalled clients cannot pile up replies in memory.
pub const MAX_CLIENTS: usize = 64;

pub struct Server {
    listener: UnixListener,
    shared: Arc<Shared>,
    path: PathBuf,
    slots: Arc<Semaphore>,
    /// Lock-free lookups from a snapshot of the FIB (see `fastpath`).
    fast: Arc<FastPath>,
}

impl Server {
    /// Binds the socket (mode 0600). A stale socket file is replaced; a live one is an error.
    pub fn bind(path: &Path, shared: Arc<Shared>) -> Result<Server> {
        // SAFETY: geteuid has no preconditions.
        let hint = if unsafe { libc::geteuid() } != 0 {
            " (not running as root: pass --socket in a directory this user may write)"
        } else {
            ""
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating {}{hint}", dir.display()))?;
        }
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!("another route-mirror is already serving {}", path.display());
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing stale socket {}", path.display()))?;
        }
        let listener = UnixListener::bind(path)
            .with_context(|| format!("binding control socket {}{hint}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod 0600 {}", path.display()))?;
        let fast = Arc::new(FastPath::default());
        fast.spawn_rebuilder(&shared)
            .context("starting the FIB snapshot thread")?;
        Ok(Server {
            listener,
            shared,
            path: path.to_owned(),
            slots: Arc::new(Semaphore::new(MAX_CLIENTS)),
            fast,
        })
    }

    pub async fn serve(self) -> Result<()> {
        loop {
            let stream = match self.listener.accept().await {
                Ok((stream, _)) => stream,
                // Out of fds or a client that vanished mid-accept: keep serving the others.
                Err(e) => {
                    warn!(error = %e, socket = %self.path.display(), "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let shared = self.shared.clone();
            let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                shared.status.lock().expect("status lock").busy_refusals += 1;
                // Best effort, never waits: the socket buffer takes a short line.
                let _ = stream.try_write(&reply_line(&Reply::Error(format!(
                    "busy: {MAX_CLIENTS} clients are already being served"
                ))));
                continue;
            };
            let fast = self.fast.clone();
            tokio::spawn(async move {
                if let Err(e) = handle(stream, shared, fast).await {
                    debug!(error = %e, "control client ended with an error");
                }
                drop(permit);
            });
        }
    }
}

/// Why a peer may not use the control socket, if it may not: only root (and the
/// daemon's own user, when it runs unprivileged) may.
fn refuse_peer(stream: &UnixStream) -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    match stream.peer_cred() {
        Ok(c) if c.uid() == 0 || c.uid() == me => None,
        Ok(c) => Some(format!(
            "permission denied: the control socket is root-only (peer uid {}, pid {})",
            c.uid(),
            c.pid().map_or_else(|| "?".to_string(), |p| p.to_string())
        )),
        Err(e) => Some(format!(
            "permission denied: cannot check the peer's credentials: {e}"
        )),
    }
}

fn reply_line(r: &Reply) -> Vec<u8> {
    let mut v =
        serde_json::to_vec(r).unwrap_or_else(|_| br#"{"error":"unserializable reply"}"#.to_vec());
    v.push(b'\n');
    v
}

/// Reads one request line: at most [`MAX_REQUEST`] bytes, within [`REQUEST_TIMEOUT`].
/// `Ok(None)`: the client closed without sending anything.
async fn read_request<R: AsyncRead + Unpin>(
    rd: &mut BufReader<R>,
) -> Result<Option<Request>, String> {
    let mut rd = rd.take(MAX_REQUEST as u64 + 1);
    let mut line = Vec::new();
    let n = match tokio::time::timeout(REQUEST_TIMEOUT, rd.read_until(b'\n', &mut line)).await {
        Err(_) => {
            return Err(format!(
                "request timed out: no complete line within {} s",
                REQUEST_TIMEOUT.as_secs()
            ))
        }
        Ok(Err(e)) => return Err(format!("reading request: {e}")),
        Ok(Ok(n)) => n,
    };
    if n == 0 {
        return Ok(None);
    }
    if n > MAX_REQUEST {
        return Err(format!("request longer than {MAX_REQUEST} bytes"));
    }
    parse_request(&line).map(Some)
}

/// Parses one request line (trailing newline optional). Never panics.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    let text = std::str::from_utf8(line).map_err(|e| format!("bad request: not UTF-8: {e}"))?;
    serde_json::from_str::<Request>(text.trim_end()).map_err(|e| format!("bad request: {e}"))
}

async fn handle(stream: UnixStream, shared: Arc<Shared>, fast: Arc<FastPath>) -> Result<()> {
    let refused = refuse_peer(&stream);
    let (rd, wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let reply = if let Some(msg) = refused {
        warn!(reason = %msg, "refused a control client");
        shared.status.lock().expect("status lock").refused_peers += 1;
        reply_line(&Reply::Error(msg))
    } else {
        match read_request(&mut rd).await {
            Ok(None) => return Ok(()),
            Ok(Some(Request::Watch { prefix, table })) => {
                return watch(BufWriter::new(wr), &shared, prefix, table).await
            }
            Ok(Some(Request::LookupBatch { table, tos, format })) => {
                let hash = if table.is_none() {
                    let ns = shared.netns.clone();
                    tokio::task::spawn_blocking(move || lookup::hash_config(ns))
                        .await
                        .ok()
                } else {
                    None
                };
                let q = BatchQuery {
                    tables: table.map_or_else(|| DEFAULT_RULE_TABLES.to_vec(), |t| vec![t]),
                    tos,
                    format,
                    rules: table.is_none(),
                    hash,
                };
                return lookup_batch(rd, BufWriter::new(wr), &shared, &fast, q).await;
            }
            Ok(Some(req)) => match dispatch(req, &shared, &fast).await {
                Ok(r) => r,
                Err(e) => reply_line(&Reply::Error(format!("{e:#}"))),
            },
            Err(msg) => {
                warn!(error = %msg, "bad control request");
                shared.status.lock().expect("status lock").bad_requests += 1;
                reply_line(&Reply::Error(msg))
            }
        }
    };
    write_reply(wr, &reply).await
}

/// Writes a whole reply; gives up when the client makes no progress for
/// [`WRITE_STALL_TIMEOUT`]. No lock is held here.
async fn write_reply<W: AsyncWrite + Unpin>(mut wr: W, reply: &[u8]) -> Result<()> {
    for chunk in reply.chunks(WRITE_CHUNK) {
        tokio::time::timeout(WRITE_STALL_TIMEOUT, wr.write_all(chunk))
            .await
            .context("client did not read its reply in time")??;
    }
    tokio::time::timeout(WRITE_STALL_TIMEOUT, wr.shutdown())
        .await
        .context("client did not read its reply in time")??;
    Ok(())
}

fn ok<T: Serialize>(v: T) -> Result<Vec<u8>> {
    Ok(reply_line(&Reply::Ok(serde_json::to_value(v)?)))
}

/// Runs `f` (which takes the mirror lock) off the async workers, so a long read
/// (a large `show`) or a core holding the write lock cannot stall other clients.
async fn blocking<F>(f: F) -> Result<Vec<u8>>
where
    F: FnOnce() -> Result<Vec<u8>> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .context("request task failed")?
}

/// Streams a batch lookup: reads input in chunks of whole lines, answers each chunk
/// (lock held, if at all, only while answering), then writes it.
async fn lookup_batch(
    mut rd: BufReader<tokio::net::unix::OwnedReadHalf>,
    mut wr: BufWriter<tokio::net::unix::OwnedWriteHalf>,
    shared: &Arc<Shared>,
    fast: &Arc<FastPath>,
    q: BatchQuery,
) -> Result<()> {
    let mut counts = BatchCounts::default();
    let mut line_no = 0u64;
    let mut buf: Vec<u8> = Vec::with_capacity(batch::CHUNK + batch::MAX_LINE);
    let mut eof = false;
    // One chunk is answered on a blocking thread while the previous one is written
    // and the next one read: I/O and lookups overlap (BENCHMARKS.md).
    let mut inflight: Option<tokio::task::JoinHandle<(Vec<u8>, BatchCounts)>> = None;
    loop {
        let mut next = None;
        if !eof {
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
                    // A chunk without a newline is one overlong line: answered (as an
                    // error) by itself, its rest then reads as a line of its own.
                    None => buf.len(),
                }
            };
            if end > 0 {
                let rest = buf.split_off(end);
                let mut body = std::mem::replace(&mut buf, rest);
                if body.last() == Some(&b'\n') {
                    body.pop();
                }
                let first = line_no;
                line_no += body.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
                let (fast, shared, q) = (fast.clone(), shared.clone(), q.clone());
                next = Some(tokio::task::spawn_blocking(move || {
                    let (mut out, mut counts, mut n) = (Vec::new(), BatchCounts::default(), first);
                    batch::answer_lines(&fast, &shared, &q, &body, &mut n, &mut out, &mut counts);
                    (out, counts)
                }));
            }
        }
        if let Some(h) = inflight.take() {
            let (out, c) = h.await.context("batch lookup task failed")?;
            counts.add(&c);
            if !out.is_empty() {
                let head = serde_json::to_string(&Reply::Item(json!({ "bytes": out.len() })))?;
                tokio::time::timeout(WRITE_STALL_TIMEOUT, async {
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
        inflight = next;
        if eof && inflight.is_none() {
            break;
        }
    }
    drop(buf);
    super::fastpath::release_free_memory();
    let mut s = serde_json::to_string(&Reply::Ok(serde_json::to_value(counts)?))?;
    s.push('\n');
    tokio::time::timeout(WRITE_STALL_TIMEOUT, async {
        wr.write_all(s.as_bytes()).await?;
        wr.flush().await?;
        anyhow::Ok(())
    })
    .await
    .context("client did not read its results in time")??;
    Ok(())
}

/// Answers one request with the complete reply bytes (items, then ok/error).
async fn dispatch(req: Request, shared: &Arc<Shared>, fast: &Arc<FastPath>) -> Result<Vec<u8>> {
    let shared = shared.clone();
    match req {
        Request::Lookup {
            addr,
            table: Some(table),
            tos,
            ..
        } => {
            // `--table`: a plain longest match in that table. The answer says `result`
            // as a walk through the rules does (the CLI's exit status reads it).
            let tables = [table];
            if let Some(snap) = fast.current() {
                let found = match snap.fib.lookup(addr, &tables, tos) {
                    Lookup::Route(t, net, e) => {
                        let mut v = serde_json::to_value(route_view(&snap.names, t, net, e))?;
                        lookup::decorate(&mut v, None, e.attrs.kind);
                        Some(v)
                    }
                    Lookup::None => Some(serde_json::Value::Null),
                    Lookup::Exact => None,
                };
                if let Some(found) = found {
                    fast.fast_lookups.fetch_add(1, Ordering::Relaxed);
                    return ok(found);
                }
            }
            fast.exact_lookups.fetch_add(1, Ordering::Relaxed);
            let exact = move |m: &Mirror| -> Result<Vec<u8>> {
                let found = match m.fib.lookup(addr, &tables, tos) {
                    Some((t, net, e)) => {
                        let mut v = serde_json::to_value(route_view(m, t, net, e))?;
                        lookup::decorate(&mut v, None, e.attrs.kind);
                        v
                    }
                    None => serde_json::Value::Null,
                };
                ok(found)
            };
            // One lookup takes about a microsecond: done here when the lock is free
            // (saves the hand-off to a blocking thread, measured in BENCHMARKS.md), on a
            // blocking thread when the core holds it.
            if let Ok(m) = shared.mirror.try_read() {
                return exact(&m);
            }
            blocking(move || exact(&shared.mirror.read().expect("mirror lock"))).await
        }
        Request::Lookup {
            addr,
            table: None,
            tos,
            flow,
        } => {
            // Through the rules. A lookup with only an address, under rules that reduce
            // to a chain of tables (the default three), stays on the lock-free snapshot.
            if flow.is_empty() {
                if let Some(snap) = fast.current() {
                    if let Some(chain) = snap.rules.chain(Family::of(&addr)) {
                        if chain.last.is_none() {
                            let tables: Vec<u32> = chain.tables.iter().map(|t| t.1).collect();
                            let found = match snap.fib.lookup(addr, &tables, tos) {
                                Lookup::Route(t, net, e) => {
                                    let rule = chain.tables.iter().find(|x| x.1 == t).map(|x| x.0);
                                    let mut v =
                                        serde_json::to_value(route_view(&snap.names, t, net, e))?;
                                    lookup::decorate(&mut v, rule, e.attrs.kind);
                                    Some(v)
                                }
                                Lookup::None => Some(serde_json::Value::Null),
                                Lookup::Exact => None,
                            };
                            // Multipath answers need the hash: the exact path has it.
                            if let Some(v) = found.filter(|v| {
                                v.get("nexthops")
                                    .and_then(|h| h.as_array())
                                    .is_none_or(|h| h.len() < 2)
                            }) {
                                fast.fast_lookups.fetch_add(1, Ordering::Relaxed);
                                return ok(v);
                            }
                        }
                    }
                }
            }
            fast.exact_lookups.fetch_add(1, Ordering::Relaxed);
            let ns = shared.netns.clone();
            let hash = tokio::task::spawn_blocking(move || lookup::hash_config(ns))
                .await
                .ok();
            let exact = move |m: &Mirror| -> Result<Vec<u8>> {
                let f = lookup::flow(m, addr, tos, &flow).map_err(|e| anyhow!(e))?;
                let v = lookup::answer(m, &f, hash.as_ref()).map_err(|e| anyhow!(e))?;
                ok(v)
            };
            if let Ok(m) = shared.mirror.try_read() {
                return exact(&m);
            }
            blocking(move || exact(&shared.mirror.read().expect("mirror lock"))).await
        }
        Request::VrfTable { name } => {
            let m = shared.mirror.read().expect("mirror lock");
            let t = m.rules.links.vrf_by_name(&name).map(|(_, t)| t);
            drop(m);
            ok(t)
        }
        Request::ShowRules { family } => {
            blocking(move || {
                let m = shared.mirror.read().expect("mirror lock");
                let names = crate::names::system();
                let exists = |n: &str| m.rules.links.ifindex(n).is_some();
                let mut out = Vec::new();
                let mut n = 0usize;
                for f in Family::ALL {
                    if family.is_some_and(|x| x != f) {
                        continue;
                    }
                    let all = m.rules.list(f).to_vec();
                    let ctx = crate::rule::show::ShowCtx {
                        names,
                        rules: &all,
                        link_exists: &exists,
                    };
                    for r in &all {
                        let (text, mut j) = crate::rule::show::render(r, &ctx);
                        j["family"] = json!(f);
                        j["text"] = json!(text);
                        out.extend(reply_line(&Reply::Item(j)));
                        n += 1;
                    }
                }
                drop(m);
                out.extend(reply_line(&Reply::Ok(json!({ "count": n }))));
                Ok(out)
            })
            .await
        }
        Request::Show {
            prefix,
            table,
            family,
        } => {
            blocking(move || {
                // Serialised straight to bytes under the read lock (no per-route JSON
                // values); the lock is released before a single byte goes to the client.
                let m = shared.mirror.read().expect("mirror lock");
                let mut out = Vec::new();
                let mut n = 0usize;
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
                        out.extend_from_slice(b"{\"item\":");
                        serde_json::to_writer(&mut out, &route_view(&*m, t, net, e))?;
                        out.extend_from_slice(b"}\n");
                        n += 1;
                    }
                }
                drop(m);
                out.extend(reply_line(&Reply::Ok(json!({ "count": n }))));
                Ok(out)
            })
            .await
        }
        Request::Stats => {
            let fast_lookup = Some(fast.stats());
            blocking(move || {
                ok(Stats {
                    fast_lookup,
                    ..Stats::collect(&shared)
                })
            })
            .await
        }
        Request::Diff => ok(diff::against_kernel(&shared).await?),
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
        Request::Reload => ok(crate::shared::reload(&shared)?),
        Request::Watch { .. } | Request::LookupBatch { .. } => {
            bail!("a streaming request (handled before dispatch)")
        }
        Request::Sync => {
            shared.barrier().await?;
            ok(json!({ "synced": true }))
        }
        Request::Copies => {
            let reg = shared.copies.get().cloned();
            ok(reg.map(|r| r.statuses()).unwrap_or_default())
        }
        Request::DiffCopy { name } => ok(diff_copy(&shared, &name).await?),
    }
}

/// How many times `diff --copy` compares while the kernel may still be changing.
const COPY_DIFF_TRIES: usize = 5;

/// `diff --copy`: barriers on the copy's mirrors and on the copies, then both tables
/// dumped and compared. A difference is checked again (a few times) in case the kernel
/// was still changing.
async fn diff_copy(shared: &Shared, name: &str) -> Result<crate::copy::diff::CopyDiff> {
    let reg = shared
        .copies
        .get()
        .cloned()
        .context("this daemon runs no copies")?;
    let job = reg
        .spec(name)
        .with_context(|| format!("no copy named {name:?} (see `route-mirror copies`)"))?;
    let protocol = shared
        .reloadable
        .as_ref()
        .map_or(crate::copy::PROTOCOL, |r| {
            r.current.lock().expect("config lock").copy_protocol
        });
    let mut last = None;
    for attempt in 0..COPY_DIFF_TRIES {
        for ns in job.namespaces() {
            reg.mirror(&ns)
                .with_context(|| format!("namespace {ns:?} is not mirrored"))?
                .sync(Duration::from_secs(300))
                .await?;
        }
        reg.barrier(Duration::from_secs(300)).await?;
        let refused = reg.status(name).map(|s| s.refused).unwrap_or_default();
        let j = job.clone();
        let d = tokio::task::spawn_blocking(move || -> Result<crate::copy::diff::CopyDiff> {
            let src = match &j.producer {
                crate::copy::spec::Producer::Copy { from, .. } => {
                    crate::copy::diff::kernel_table(from.netns.clone(), from.table)?
                }
                crate::copy::spec::Producer::Declared(_) => crate::mirror::Mirror::new(),
            };
            let tgt = crate::copy::diff::kernel_table(j.to.netns.clone(), j.to.table)?;
            Ok(crate::copy::diff::compare(
                &j, &src, &tgt, protocol, &refused,
            ))
        })
        .await
        .context("diff --copy task failed")??;
        let done = d.is_empty();
        last = Some(d);
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50 * (attempt as u64 + 1))).await;
    }
    last.context("no comparison ran")
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
    let mut rx = shared.exports.watch();
    let wanted = |r: &WatchRecord| match &r.route {
        None if r.copy.is_some() => r.copy.as_ref().is_some_and(|c| {
            table.is_none_or(|t| t == c.table) && prefix.is_none_or(|p| p.contains(&c.prefix))
        }),
        // Markers go to everyone; rule changes to those not watching one prefix.
        None => r.rule.is_none() || prefix.is_none(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_request_lines_are_errors_not_panics() {
        assert_eq!(
            parse_request(b"{\"cmd\":\"stats\"}\n"),
            Ok(Request::Stats),
            "trailing newline accepted"
        );
        for bad in [
            &b"\xff\xfe"[..],
            b"",
            b"{\"cmd\":\"sta",
            b"{\"cmd\":\"stats\"} trailing",
            b"{\"cmd\":\"lookup\",\"addr\":\"300.1.1.1\",\"table\":null}",
            b"{\"cmd\":\"drop-events\",\"count\":-1}",
            b"[1,2,3]",
        ] {
            let e = parse_request(bad).unwrap_err();
            assert!(e.starts_with("bad request"), "{e}");
        }
    }

    #[tokio::test]
    async fn oversized_and_truncated_requests_are_refused() {
        let big = vec![b'x'; MAX_REQUEST + 10];
        let e = read_request(&mut BufReader::new(&big[..]))
            .await
            .unwrap_err();
        assert!(e.contains("longer than"), "{e}");
        let e = read_request(&mut BufReader::new(&b"{\"cmd\":"[..]))
            .await
            .unwrap_err();
        assert!(e.starts_with("bad request"), "{e}");
        assert_eq!(read_request(&mut BufReader::new(&b""[..])).await, Ok(None));
        assert_eq!(
            read_request(&mut BufReader::new(
                &b"{\"cmd\":\"sync\"}\n{\"cmd\":\"stats\"}\n"[..]
            ))
            .await,
            Ok(Some(Request::Sync)),
            "one request per connection"
        );
    }
}
