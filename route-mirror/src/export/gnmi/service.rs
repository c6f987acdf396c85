//! The gNMI service: Capabilities, Get and Subscribe (ONCE, POLL, STREAM with ON_CHANGE,
//! SAMPLE and TARGET_DEFINED) over the namespaces' AFT hubs. Set is refused: the AFT
//! is read-only state.
//!
//! The gNMI `target` selects a namespace (`ip netns` name, `host` for the daemon's own);
//! none (or `*`) means all of them, and then each notification names its namespace in
//! `prefix.target` when the daemon mirrors more than one.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, broadcast::error::RecvError, mpsc, Barrier, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info};

use super::encode::Builder;
use super::path::{display, join, Key, Section, Selector};
use super::proto::g_nmi_server::GNmi;
use super::proto::{
    get_request, subscribe_request, subscribe_response, subscription_list, CapabilityRequest,
    CapabilityResponse, Encoding, GetRequest, GetResponse, ModelData, Notification, SetRequest,
    SetResponse, SubscribeRequest, SubscribeResponse, SubscriptionList, SubscriptionMode,
};
use super::snapshot::{drop_stale, Mode, Step, Walk};
use crate::export::aft::{Aft, InstanceNames, Op};
use crate::export::afts::{now_ns, Afts, Batch};

/// Responses queued towards one subscriber's gRPC stream. When it is full the
/// subscriber's task waits (a snapshot renders its next slice only once there is
/// room), its hub queue fills, and it starts over from a snapshot.
const RESPONSE_QUEUE: usize = 64;

/// Snapshot slices rendered at once, whatever the number of subscribers: each on a
/// blocking thread, so rendering never occupies the async workers that accept
/// connections and forward changes, and ten full-table subscribers cost the CPU of
/// this many, not ten.
fn renderers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}
/// Shortest SAMPLE interval honoured.
const MIN_SAMPLE: Duration = Duration::from_millis(100);

/// Counters shown in `stats` (`gnmi`).
#[derive(Debug, Default)]
pub struct GnmiStats {
    pub subscribers: AtomicU64,
    pub subscriptions: AtomicU64,
    pub gets: AtomicU64,
    /// Gets refused with RESOURCE_EXHAUSTED: larger than `gnmi_get_max_bytes`.
    pub gets_too_large: AtomicU64,
    pub notifications: AtomicU64,
    /// Subscribers that fell behind their queue and were sent a fresh snapshot.
    pub overflows: AtomicU64,
    /// Resync brackets sent (mirror resyncs and overflows).
    pub resyncs: AtomicU64,
    pub errors: AtomicU64,
    /// The most notifications one subscriber ever had rendered but not yet taken by
    /// its gRPC stream (its queue plus the slice being sent): what bounds a
    /// subscriber's memory, whatever the size of the table.
    pub unsent_max: AtomicU64,
}

impl GnmiStats {
    pub fn json(&self) -> serde_json::Value {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "subscribers": g(&self.subscribers),
            "subscriptions": g(&self.subscriptions),
            "gets": g(&self.gets),
            "gets_too_large": g(&self.gets_too_large),
            "notifications": g(&self.notifications),
            "overflows": g(&self.overflows),
            "resyncs": g(&self.resyncs),
            "errors": g(&self.errors),
            "unsent_max": g(&self.unsent_max),
        })
    }
}

pub struct Service {
    hubs: Vec<Arc<Afts>>,
    pub stats: Arc<GnmiStats>,
    renderers: Arc<Semaphore>,
    /// The largest GetResponse served, bytes (`gnmi_get_max_bytes`).
    get_max: usize,
}

/// The models this server's paths come from (openconfig/public, release/models).
fn models() -> Vec<ModelData> {
    [
        ("openconfig-network-instance", "4.7.0"),
        ("openconfig-aft", "3.4.0"),
        ("openconfig-policy-types", "3.3.0"),
    ]
    .into_iter()
    .map(|(name, version)| ModelData {
        name: name.into(),
        organization: "OpenConfig working group".into(),
        version: version.into(),
    })
    .collect()
}

const ENCODINGS: [Encoding; 3] = [Encoding::Json, Encoding::JsonIetf, Encoding::Proto];

fn encoding(e: i32) -> Result<Encoding, Status> {
    match Encoding::try_from(e) {
        Ok(e) if ENCODINGS.contains(&e) => Ok(e),
        _ => Err(Status::unimplemented(format!(
            "encoding {e} is not supported (JSON, JSON_IETF, PROTO are)"
        ))),
    }
}

fn selector(p: &super::proto::Path) -> Result<Selector, Status> {
    Selector::parse(p).map_err(|e| match e {
        super::path::PathError::NotServed(_) => Status::not_found(e.to_string()),
        super::path::PathError::BadKey { .. } => Status::invalid_argument(e.to_string()),
        super::path::PathError::Unsupported(_) => Status::unimplemented(e.to_string()),
    })
}

/// The hubs a target names, and the target to put in their notifications.
type Targeted = Vec<(Arc<Afts>, String)>;

impl Service {
    pub fn new(hubs: Vec<Arc<Afts>>, get_max: usize) -> Service {
        Service {
            hubs,
            stats: Arc::new(GnmiStats::default()),
            renderers: Arc::new(Semaphore::new(renderers())),
            get_max,
        }
    }

    fn ctx(&self) -> Ctx {
        Ctx {
            stats: self.stats.clone(),
            renderers: self.renderers.clone(),
        }
    }

    fn targets(&self, target: &str) -> Result<Targeted, Status> {
        if target.is_empty() || target == "*" {
            let named = target == "*" || self.hubs.len() > 1;
            return Ok(self
                .hubs
                .iter()
                .map(|h| {
                    (
                        h.clone(),
                        if named { h.name.clone() } else { String::new() },
                    )
                })
                .collect());
        }
        match self.hubs.iter().find(|h| h.name == target) {
            Some(h) => Ok(vec![(h.clone(), target.to_string())]),
            None => Err(Status::not_found(format!(
                "target {target:?} is not a mirrored namespace (have: {})",
                self.hubs
                    .iter()
                    .map(|h| h.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }
}

/// What snapshot rendering needs, shared by every call.
#[derive(Clone)]
struct Ctx {
    stats: Arc<GnmiStats>,
    renderers: Arc<Semaphore>,
}

type Rx = broadcast::Receiver<Arc<Batch>>;

/// Runs `f` on a blocking thread once a renderer is free.
async fn render<T: Send + 'static>(ctx: &Ctx, f: impl FnOnce() -> T + Send + 'static) -> T {
    let _permit = ctx.renderers.acquire().await.expect("never closed");
    tokio::task::spawn_blocking(f)
        .await
        .expect("snapshot renderer panicked")
}

/// One step of a walk (a slice) under the hub's lock.
async fn step(
    ctx: &Ctx,
    hub: &Arc<Afts>,
    walk: Walk,
    rx: Rx,
) -> (Walk, Rx, Vec<Notification>, Step) {
    let hub = hub.clone();
    render(ctx, move || {
        let (mut walk, mut rx) = (walk, rx);
        let (ns, st) = hub.read(|aft| walk.step(aft, &mut rx));
        (walk, rx, ns, st)
    })
    .await
}

/// Sends one hub's snapshot a slice at a time (see [`super::snapshot`]), each slice
/// rendered only once the previous one is queued. `rx` comes from
/// [`Afts::subscribe`]; it is returned positioned right after the walk's last slice,
/// with the walk, whose [`send_fixups`] must follow. `None` once the client is gone.
async fn send_snapshot(
    ctx: &Ctx,
    hub: &Arc<Afts>,
    walk: Walk,
    out: &Out,
    mut rx: Rx,
) -> Option<(Rx, Walk)> {
    let mut walk = walk;
    loop {
        let (w, r, slice, st) = step(ctx, hub, walk, rx).await;
        (walk, rx) = (w, r);
        if !out.send_all(slice).await {
            return None;
        }
        match st {
            Step::More => {}
            Step::Done => return Some((rx, walk)),
            Step::Restarted { lagged } => {
                if lagged {
                    ctx.stats.overflows.fetch_add(1, Ordering::Relaxed);
                    info!(netns = %hub.name, "gNMI subscriber fell behind during a snapshot: starting it over");
                }
                ctx.stats.resyncs.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Sends the objects a snapshot's walk had passed that changed before it ended (a
/// STREAM's after its sync_response), a piece at a time under the hub's lock.
async fn send_fixups(ctx: &Ctx, hub: &Arc<Afts>, mut walk: Walk, out: &Out) -> bool {
    while walk.has_fixups() {
        let h = hub.clone();
        let (w, piece) = render(ctx, move || {
            let mut walk = walk;
            let piece = h.read(|aft| walk.fixups(aft));
            (walk, piece)
        })
        .await;
        walk = w;
        if !out.send_all(piece).await {
            return false;
        }
    }
    true
}

/// Bytes `ns` add to a GetResponse: each is a length-delimited field 1.
fn response_bytes(ns: &[Notification]) -> usize {
    use prost::Message;
    ns.iter()
        .map(|n| {
            let len = n.encoded_len();
            1 + prost::length_delimiter_len(len) + len
        })
        .sum()
}

/// The current state `sels` select in one hub, for a Get: rendered a slice at a time
/// like a snapshot, exact as of its last slice, with its size in a GetResponse. Gives
/// up, with the bytes rendered so far, as soon as they exceed `room`: a Get of the
/// whole table is refused after a few MB instead of being rendered whole (GBs).
async fn get_snapshot(
    ctx: &Ctx,
    hub: &Arc<Afts>,
    sels: Arc<[Selector]>,
    enc: Encoding,
    target: &str,
    room: usize,
) -> Result<(Vec<Notification>, usize), usize> {
    let mut rx = hub.subscribe().await;
    let mut walk = Walk::new(sels, enc, target, Mode::Get);
    let (mut out, mut size) = (Vec::new(), 0);
    loop {
        let (w, r, ns, st) = step(ctx, hub, walk, rx).await;
        (walk, rx) = (w, r);
        match st {
            Step::More => {
                size += response_bytes(&ns);
                if size > room {
                    return Err(size);
                }
                out.extend(ns);
            }
            Step::Done => {
                drop_stale(&mut out, &walk.stale());
                out.extend(ns);
                let size = response_bytes(&out);
                return if size > room {
                    Err(size)
                } else {
                    Ok((out, size))
                };
            }
            Step::Restarted { .. } => (out, size) = (Vec::new(), 0),
        }
    }
}

/// Why a Get is refused: what an operator needs to get the data anyway.
fn too_large(max: usize, rendered: usize, paths: &[String]) -> Status {
    Status::resource_exhausted(format!(
        "Get response too large: {} is at least {rendered} bytes, above the {max}-byte limit \
         (gnmi_get_max_bytes; a GetResponse is one gRPC message, and gRPC clients receive at \
         most 4 MiB unless configured otherwise); read it with Subscribe ONCE, which streams \
         any size, or Get a narrower path",
        paths.join(", ")
    ))
}

fn sync_response() -> SubscribeResponse {
    SubscribeResponse {
        response: Some(subscribe_response::Response::SyncResponse(true)),
        ..Default::default()
    }
}

fn update(n: Notification) -> SubscribeResponse {
    SubscribeResponse {
        response: Some(subscribe_response::Response::Update(n)),
        ..Default::default()
    }
}

type Tx = mpsc::Sender<Result<SubscribeResponse, Status>>;

/// One subscriber's responses: its bounded queue, and how many notifications are
/// rendered but not yet taken by its gRPC stream ([`responses`] counts them down).
#[derive(Clone)]
struct Out {
    tx: Tx,
    stats: Arc<GnmiStats>,
    unsent: Arc<AtomicU64>,
}

impl Out {
    fn new(tx: Tx, stats: Arc<GnmiStats>) -> Out {
        Out {
            tx,
            stats,
            unsent: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Counts `n` notifications rendered and kept for [`Out::send_held`].
    fn hold(&self, n: usize) {
        let now = self.unsent.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        self.stats.unsent_max.fetch_max(now, Ordering::Relaxed);
    }

    /// Sends notifications; false once the client is gone.
    async fn send_all(&self, ns: Vec<Notification>) -> bool {
        self.hold(ns.len());
        self.send_held(ns).await
    }

    /// Sends notifications already counted by [`Out::hold`].
    async fn send_held(&self, ns: Vec<Notification>) -> bool {
        let mut left = ns.len() as u64;
        for x in ns {
            self.stats.notifications.fetch_add(1, Ordering::Relaxed);
            if self.tx.send(Ok(update(x))).await.is_err() {
                self.unsent.fetch_sub(left, Ordering::Relaxed);
                return false;
            }
            left -= 1;
        }
        true
    }

    async fn send(&self, r: Result<SubscribeResponse, Status>) -> bool {
        self.tx.send(r).await.is_ok()
    }
}

/// The gRPC response stream of one subscriber: its queue, counting notifications out.
fn responses(
    rx: mpsc::Receiver<Result<SubscribeResponse, Status>>,
    unsent: Arc<AtomicU64>,
) -> impl tokio_stream::Stream<Item = Result<SubscribeResponse, Status>> {
    ReceiverStream::new(rx).map(move |r| {
        if let Ok(SubscribeResponse {
            response: Some(subscribe_response::Response::Update(_)),
            ..
        }) = &r
        {
            unsent.fetch_sub(1, Ordering::Relaxed);
        }
        r
    })
}

/// One subscription of a list, resolved.
struct Sub {
    sel: Selector,
    sample: Option<Duration>,
    suppress_redundant: bool,
    heartbeat: Option<Duration>,
}

/// The AFT operations of a batch that `sel` selects, as notifications.
fn render_ops(
    b: &mut Builder<'_>,
    sel: &Selector,
    changes: &[crate::export::aft::Change],
    names: &InstanceNames,
) {
    for c in changes {
        b.op(&names.name(c.table), sel, c);
    }
}

/// Objects a batch touched, by (table, section, key): what a suppress_redundant SAMPLE
/// sends at its next tick.
type Touched = HashSet<(u32, Section, u64, Option<ipnet::IpNet>)>;

fn touch(t: &mut Touched, changes: &[crate::export::aft::Change]) {
    for c in changes {
        t.insert(match &c.op {
            Op::NextHop { index, .. }
            | Op::NextHopInterface { index, .. }
            | Op::NextHopDelete { index } => (c.table, Section::Hops, *index, None),
            Op::Group { id, .. } | Op::GroupDelete { id } => (c.table, Section::Groups, *id, None),
            Op::Entry { prefix, .. } | Op::EntryDelete { prefix } => (
                c.table,
                if prefix.addr().is_ipv4() {
                    Section::V4
                } else {
                    Section::V6
                },
                0,
                Some(*prefix),
            ),
        });
    }
}

/// The current value (or deletion) of each touched object `sel` selects; with
/// `gone_only`, only the deletions (a full sample sends the rest in its snapshot).
fn render_touched(b: &mut Builder<'_>, aft: &Aft, sel: &Selector, t: &Touched, gone_only: bool) {
    for &(table, s, id, prefix) in t {
        let ni = aft.names.name(table);
        let inst = aft.instances.get(&table);
        match (s, prefix) {
            (Section::Hops, _) => match inst.and_then(|i| i.next_hop(id)) {
                Some(h) if !gone_only => b.hop(&ni, sel, id, &h),
                Some(_) => {}
                None => b.delete(&ni, sel, s, Key::Id(id)),
            },
            (Section::Groups, _) => match inst.and_then(|i| i.group(id)) {
                Some(g) if !gone_only => b.group(&ni, sel, id, g),
                Some(_) => {}
                None => b.delete(&ni, sel, s, Key::Id(id)),
            },
            (_, Some(p)) => match inst.and_then(|i| i.entry(&p)) {
                Some(e) if !gone_only => b.entry(&ni, sel, p, e),
                Some(_) => {}
                None => b.delete(&ni, sel, s, Key::Prefix(p)),
            },
            _ => {}
        }
    }
}

/// What every hub task of one STREAM call shares.
#[derive(Clone)]
struct StreamCall {
    subs: Arc<Vec<Sub>>,
    enc: Encoding,
    updates_only: bool,
    /// The sync_response goes out once every hub sent its snapshot.
    barrier: Arc<Barrier>,
    out: Out,
    ctx: Ctx,
}

/// STREAM mode for one hub: snapshot, sync (once all hubs sent theirs), then changes;
/// SAMPLE subscriptions on their timers.
async fn stream_hub(hub: Arc<Afts>, target: String, call: StreamCall) {
    let StreamCall {
        subs,
        enc,
        updates_only,
        barrier,
        out,
        ctx,
    } = call;
    let stats = &ctx.stats;
    let sels: Arc<[Selector]> = subs.iter().map(|s| s.sel.clone()).collect();
    let mut rx = hub.subscribe().await;
    let mut fix = None;
    if !updates_only {
        let walk = Walk::new(sels.clone(), enc, &target, Mode::Stream);
        let Some((r, w)) = send_snapshot(&ctx, &hub, walk, &out, rx).await else {
            return;
        };
        rx = r;
        fix = Some(w);
    }
    if barrier.wait().await.is_leader() && !out.send(Ok(sync_response())).await {
        return;
    }
    if let Some(w) = fix {
        if !send_fixups(&ctx, &hub, w, &out).await {
            return;
        }
    }
    // SAMPLE timers: next due time and what changed since the last sample, per sub.
    let start = tokio::time::Instant::now();
    let mut due: Vec<Option<tokio::time::Instant>> =
        subs.iter().map(|s| s.sample.map(|d| start + d)).collect();
    let mut beat: Vec<Option<tokio::time::Instant>> = subs
        .iter()
        .map(|s| s.heartbeat.map(|d| start + d))
        .collect();
    let mut touched: Vec<Touched> = subs.iter().map(|_| Touched::new()).collect();
    loop {
        let next = due.iter().flatten().min().copied();
        let sleep = async {
            match next {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = rx.recv() => {
                let resync = match r {
                    Ok(batch) => match &*batch {
                        Batch::Changes { time_ns, changes, names } => {
                            let mut b = Builder::new(enc, &target, *time_ns);
                            for (i, s) in subs.iter().enumerate() {
                                if s.sample.is_some() {
                                    touch(&mut touched[i], changes);
                                } else {
                                    render_ops(&mut b, &s.sel, changes, names);
                                }
                            }
                            if !out.send_all(b.finish()).await {
                                return;
                            }
                            false
                        }
                        Batch::Resync { .. } => true,
                    },
                    Err(RecvError::Lagged(n)) => {
                        stats.overflows.fetch_add(1, Ordering::Relaxed);
                        info!(netns = %hub.name, missed_batches = n, "gNMI subscriber fell behind: sending a fresh snapshot");
                        true
                    }
                    Err(RecvError::Closed) => return,
                };
                if resync {
                    // Bracket: delete what this subscription covers, a fresh snapshot,
                    // sync_response. The receiver goes on after the snapshot's state.
                    stats.resyncs.fetch_add(1, Ordering::Relaxed);
                    touched.iter_mut().for_each(Touched::clear);
                    let walk = Walk::new(sels.clone(), enc, &target, Mode::Stream).bracketed();
                    let Some((r, w)) = send_snapshot(&ctx, &hub, walk, &out, rx).await else {
                        return;
                    };
                    rx = r;
                    if !out.send(Ok(sync_response())).await || !send_fixups(&ctx, &hub, w, &out).await {
                        return;
                    }
                }
            }
            _ = sleep => {
                let now = tokio::time::Instant::now();
                for (i, s) in subs.iter().enumerate() {
                    let Some(d) = due[i].filter(|t| *t <= now) else { continue };
                    due[i] = Some(d + s.sample.unwrap_or(MIN_SAMPLE));
                    let heartbeat = beat[i].is_some_and(|t| t <= now);
                    if heartbeat {
                        beat[i] = s.heartbeat.map(|h| now + h);
                    }
                    let t = std::mem::take(&mut touched[i]);
                    if s.suppress_redundant && !heartbeat {
                        if t.is_empty() {
                            continue;
                        }
                        let ns = hub.with(|aft| {
                            let mut b = Builder::new(enc, &target, now_ns());
                            render_touched(&mut b, aft, &s.sel, &t, false);
                            b.finish()
                        }).await;
                        if !out.send_all(ns).await {
                            return;
                        }
                    } else {
                        // A full sample: what went since the last sample is deleted
                        // (a snapshot only says what exists), then what exists. The
                        // walk's receiver comes first: a change after the deletes is
                        // either ahead of the walk or one of its fixups.
                        let walk_rx = hub.subscribe().await;
                        if !t.is_empty() {
                            let ns = hub.with(|aft| {
                                let mut b = Builder::new(enc, &target, now_ns());
                                render_touched(&mut b, aft, &s.sel, &t, true);
                                b.finish()
                            }).await;
                            if !out.send_all(ns).await {
                                return;
                            }
                        }
                        let one: Arc<[Selector]> = Arc::from([s.sel.clone()]);
                        let walk = Walk::new(one, enc, &target, Mode::Stream);
                        let Some((_, w)) = send_snapshot(&ctx, &hub, walk, &out, walk_rx).await else {
                            return;
                        };
                        if !send_fixups(&ctx, &hub, w, &out).await {
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// Serves one Subscribe call after its SubscriptionList arrived.
async fn subscription(
    targets: Targeted,
    list: SubscriptionList,
    subs: Vec<Sub>,
    enc: Encoding,
    mut reqs: Streaming<SubscribeRequest>,
    out: Out,
    ctx: Ctx,
) {
    let sels: Arc<[Selector]> = subs.iter().map(|s| s.sel.clone()).collect();
    // ONCE and each POLL: every hub's snapshot (changes during it included, it ends
    // the call or waits for the next poll), then sync_response.
    let snapshots = || async {
        for (hub, target) in &targets {
            let rx = hub.subscribe().await;
            let walk = Walk::new(sels.clone(), enc, target, Mode::Stream);
            let Some((_, w)) = send_snapshot(&ctx, hub, walk, &out, rx).await else {
                return false;
            };
            if !send_fixups(&ctx, hub, w, &out).await {
                return false;
            }
        }
        out.send(Ok(sync_response())).await
    };
    match subscription_list::Mode::try_from(list.mode).unwrap_or(subscription_list::Mode::Stream) {
        subscription_list::Mode::Once => {
            snapshots().await;
        }
        subscription_list::Mode::Poll => loop {
            // The first poll is implicit: the list itself asks for the current state.
            if !snapshots().await {
                return;
            }
            match reqs.message().await {
                Ok(Some(SubscribeRequest {
                    request: Some(subscribe_request::Request::Poll(_)),
                    ..
                })) => continue,
                Ok(Some(_)) => {
                    let _ = out
                        .send(Err(Status::invalid_argument(
                            "only Poll messages may follow a POLL subscription list",
                        )))
                        .await;
                    return;
                }
                _ => return,
            }
        },
        subscription_list::Mode::Stream => {
            let tx = out.tx.clone();
            let call = StreamCall {
                subs: Arc::new(subs),
                enc,
                updates_only: list.updates_only,
                barrier: Arc::new(Barrier::new(targets.len())),
                out,
                ctx,
            };
            let mut tasks = tokio::task::JoinSet::new();
            for (hub, target) in targets {
                tasks.spawn(stream_hub(hub, target, call.clone()));
            }
            drop(call);
            // Ends when the client cancels (its stream fails or our responses have
            // nowhere to go) or every hub task ended. A client that merely half-closes
            // its side (as pygnmi does) keeps its subscription.
            let mut open = true;
            loop {
                tokio::select! {
                    m = reqs.message(), if open => match m {
                        Ok(Some(_)) => {} // nothing further to ask in STREAM mode
                        Ok(None) => open = false,
                        Err(_) => break,
                    },
                    r = tasks.join_next() => if r.is_none() { break },
                    _ = tx.closed() => break,
                }
            }
            tasks.abort_all();
        }
    }
}

fn resolve_subs(list: &SubscriptionList) -> Result<Vec<Sub>, Status> {
    let prefix = list.prefix.as_ref();
    let mut subs = Vec::new();
    for s in &list.subscription {
        let sel = selector(&join(prefix, s.path.as_ref()))?;
        let mode = SubscriptionMode::try_from(s.mode).unwrap_or(SubscriptionMode::TargetDefined);
        let nonzero = |ns: u64| (ns > 0).then(|| Duration::from_nanos(ns).max(MIN_SAMPLE));
        subs.push(Sub {
            sel,
            sample: match mode {
                // A SAMPLE with interval 0 means "the target's lowest": ours is MIN_SAMPLE.
                SubscriptionMode::Sample => Some(nonzero(s.sample_interval).unwrap_or(MIN_SAMPLE)),
                _ => None,
            },
            suppress_redundant: s.suppress_redundant,
            heartbeat: nonzero(s.heartbeat_interval),
        });
    }
    if subs.is_empty() {
        // No subscription: everything (as a path of "/" would).
        subs.push(Sub {
            sel: selector(&join(prefix, None))?,
            sample: None,
            suppress_redundant: false,
            heartbeat: None,
        });
    }
    Ok(subs)
}

/// Decrements the subscriber gauge when a Subscribe call's task ends.
struct Gauge(Arc<GnmiStats>);
impl Drop for Gauge {
    fn drop(&mut self) {
        self.0.subscribers.fetch_sub(1, Ordering::Relaxed);
    }
}

type SubscribeStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<SubscribeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl GNmi for Service {
    async fn capabilities(
        &self,
        _req: Request<CapabilityRequest>,
    ) -> Result<Response<CapabilityResponse>, Status> {
        Ok(Response::new(CapabilityResponse {
            supported_models: models(),
            supported_encodings: ENCODINGS.iter().map(|e| *e as i32).collect(),
            g_nmi_version: "0.10.0".into(),
            extension: Vec::new(),
        }))
    }

    async fn get(&self, req: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        self.stats.gets.fetch_add(1, Ordering::Relaxed);
        let r = req.into_inner();
        let enc = encoding(r.encoding)?;
        let prefix = r.prefix.as_ref();
        let paths: Vec<super::proto::Path> = if r.path.is_empty() {
            vec![join(prefix, None)]
        } else {
            r.path.iter().map(|p| join(prefix, Some(p))).collect()
        };
        let sels = paths.iter().map(selector).collect::<Result<Vec<_>, _>>()?;
        let targets = self.targets(prefix.map_or("", |p| p.target.as_str()))?;
        let shown = || paths.iter().map(display).collect::<Vec<String>>();
        let mut notification = Vec::new();
        // The AFT is state only: a CONFIG Get selects nothing.
        if r.r#type != get_request::DataType::Config as i32 {
            let ctx = self.ctx();
            let sels: Arc<[Selector]> = sels.into();
            let mut size = 0;
            for (hub, target) in &targets {
                let room = self.get_max - size;
                match get_snapshot(&ctx, hub, sels.clone(), enc, target, room).await {
                    Ok((ns, n)) => {
                        notification.extend(ns);
                        size += n;
                    }
                    Err(n) => {
                        self.stats.gets_too_large.fetch_add(1, Ordering::Relaxed);
                        let status = too_large(self.get_max, size + n, &shown());
                        info!(reason = status.message(), "gNMI Get refused");
                        return Err(status);
                    }
                }
            }
        }
        if notification.is_empty() {
            return Err(Status::not_found(format!(
                "not found: nothing at {}",
                shown().join(", ")
            )));
        }
        Ok(Response::new(GetResponse {
            notification,
            ..Default::default()
        }))
    }

    async fn set(&self, _req: Request<SetRequest>) -> Result<Response<SetResponse>, Status> {
        Err(Status::unimplemented(
            "route-mirror serves the kernel's forwarding state read-only",
        ))
    }

    type SubscribeStream = SubscribeStream;

    async fn subscribe(
        &self,
        req: Request<Streaming<SubscribeRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let mut reqs = req.into_inner();
        let first = reqs
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("no SubscriptionList"))?;
        let Some(subscribe_request::Request::Subscribe(list)) = first.request else {
            return Err(Status::invalid_argument(
                "the first SubscribeRequest must hold a SubscriptionList",
            ));
        };
        let enc = encoding(list.encoding)?;
        let subs = resolve_subs(&list)?;
        let targets = self.targets(list.prefix.as_ref().map_or("", |p| p.target.as_str()))?;
        debug!(
            mode = list.mode,
            subscriptions = subs.len(),
            "gNMI subscribe"
        );
        self.stats.subscriptions.fetch_add(1, Ordering::Relaxed);
        self.stats.subscribers.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(RESPONSE_QUEUE);
        let gauge = Gauge(self.stats.clone());
        let out = Out::new(tx, self.stats.clone());
        let unsent = out.unsent.clone();
        let ctx = self.ctx();
        tokio::spawn(async move {
            let _gauge = gauge;
            subscription(targets, list, subs, enc, reqs, out, ctx).await;
        });
        Ok(Response::new(Box::pin(responses(rx, unsent))))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::export::gnmi::snapshot::{tests as walk, MAX_RENDERED};

    /// What a subscriber reads.
    type Responses = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<SubscribeResponse, Status>> + Send>,
    >;

    /// A STREAM subscription to every path of `afts` (ON_CHANGE, PROTO), served the
    /// way `subscribe` serves one: its counters, its response stream and its task.
    fn subscribe_all(afts: &Arc<Afts>) -> (Arc<GnmiStats>, Responses, tokio::task::JoinHandle<()>) {
        let stats = Arc::new(GnmiStats::default());
        let ctx = Ctx {
            stats: stats.clone(),
            renderers: Arc::new(Semaphore::new(1)),
        };
        let (tx, rx) = mpsc::channel(RESPONSE_QUEUE);
        let out = Out::new(tx, stats.clone());
        let stream = Box::pin(responses(rx, out.unsent.clone()));
        let call = StreamCall {
            subs: Arc::new(vec![Sub {
                sel: Selector::all(),
                sample: None,
                suppress_redundant: false,
                heartbeat: None,
            }]),
            enc: Encoding::Proto,
            updates_only: false,
            barrier: Arc::new(Barrier::new(1)),
            out,
            ctx,
        };
        let task = tokio::spawn(stream_hub(afts.clone(), String::new(), call));
        (stats, stream, task)
    }

    /// A Get answers with at most `get_max` bytes, counted exactly as the response
    /// encodes: the whole table at exactly its size is served, a byte less is refused
    /// with RESOURCE_EXHAUSTED pointing to Subscribe ONCE; a small limit refuses a
    /// large table; one entry's Get is unaffected.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_get_is_bounded_by_its_response_size() {
        use prost::Message;
        let afts = walk::hub(20_000);
        let all = || {
            Request::new(GetRequest {
                encoding: Encoding::Proto as i32,
                ..Default::default()
            })
        };
        let whole = Service::new(vec![afts.clone()], usize::MAX)
            .get(all())
            .await
            .expect("no limit")
            .into_inner();
        let size = whole.encoded_len();
        let entries = whole
            .notification
            .iter()
            .flat_map(|n| &n.update)
            .filter(|u| u.path.as_ref().unwrap().elem.last().unwrap().name == "prefix")
            .count();
        assert_eq!(entries, 20_000);

        let exact = Service::new(vec![afts.clone()], size);
        assert_eq!(
            exact.get(all()).await.unwrap().into_inner().encoded_len(),
            size
        );
        let under = Service::new(vec![afts.clone()], size - 1);
        let err = under.get(all()).await.expect_err("a byte over the limit");
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(
            err.message().contains("Subscribe ONCE")
                && err.message().contains(&format!("{}-byte limit", size - 1)),
            "{}",
            err.message()
        );
        assert_eq!(under.stats.gets_too_large.load(Ordering::Relaxed), 1);

        // A small limit gives up after about a slice (the message says how far it got).
        let small = Service::new(vec![afts.clone()], 64 << 10);
        let err = small.get(all()).await.expect_err("over 64 KiB");
        let rendered: usize = err
            .message()
            .split("is at least ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{}", err.message()));
        assert!(
            rendered > 64 << 10 && rendered < size / 4,
            "gave up early: {rendered} of {size} bytes"
        );

        let one = Request::new(GetRequest {
            encoding: Encoding::Proto as i32,
            path: vec![super::super::path::parse_str(
                "/network-instances/network-instance[name=main]/afts/ipv4-unicast/ipv4-entry[prefix=10.0.1.0/24]",
            )],
            ..Default::default()
        });
        let got = small.get(one).await.expect("one entry fits").into_inner();
        assert_eq!(got.notification.len(), 1);
    }

    /// A VRF's table is the network instance named after the VRF device: created over
    /// a table with routes, renamed, removed, each time a STREAM subscriber gets a
    /// fresh snapshot that deletes the old name first, so its view equals the AFT
    /// with no instance left under an old name; changes after it carry the new name;
    /// a Get by the VRF's name finds its entries.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_vrf_names_its_network_instance() {
        use std::collections::BTreeMap;
        let afts = walk::hub(300);
        afts.apply(|aft, out| {
            for i in 0..200 {
                aft.set(1001, walk::net(i), Some(&walk::best(1, i % 3)), out);
            }
        });
        let (_stats, mut stream, task) = subscribe_all(&afts);
        let mut model = BTreeMap::new();
        // Reads until the stream is quiet; the sync_responses seen.
        async fn read(
            stream: &mut (impl tokio_stream::Stream<Item = Result<SubscribeResponse, Status>> + Unpin),
            model: &mut BTreeMap<String, String>,
        ) -> usize {
            let mut syncs = 0;
            while let Ok(Some(r)) =
                tokio::time::timeout(Duration::from_millis(500), stream.next()).await
            {
                match r.unwrap().response {
                    Some(subscribe_response::Response::Update(n)) => walk::apply(model, &n),
                    Some(subscribe_response::Response::SyncResponse(_)) => syncs += 1,
                    _ => {}
                }
            }
            syncs
        }
        let instances = |model: &BTreeMap<String, String>| -> BTreeSet<String> {
            model
                .keys()
                .filter_map(|k| k.split("[name=").nth(1))
                .map(|r| r.split(']').next().unwrap().to_string())
                .collect()
        };
        let set = |afts: &Afts, vrfs: &[(u32, &str)]| {
            afts.set_vrfs(vrfs.iter().map(|(t, n)| (*t, n.to_string())).collect())
        };
        use std::collections::BTreeSet;
        assert_eq!(read(&mut stream, &mut model).await, 1);
        let want: BTreeSet<String> = ["1001".to_string(), "main".to_string()].into();
        assert_eq!(instances(&model), want);
        assert!(model == walk::expected(&afts));

        for (vrfs, names) in [
            (&[(1001, "blue")][..], ["blue", "main"]),
            (&[(1001, "red")][..], ["main", "red"]),
            (&[][..], ["1001", "main"]),
        ] {
            set(&afts, vrfs);
            // A change right after the rename, in the VRF's table.
            afts.apply(|aft, out| {
                aft.set(1001, walk::net(7), Some(&walk::best(9, 2)), out);
                aft.set(1001, walk::net(8), None, out);
            });
            assert_eq!(
                read(&mut stream, &mut model).await,
                1,
                "{names:?}: a resnapshot"
            );
            let want: BTreeSet<String> = names.iter().map(|n| n.to_string()).collect();
            assert_eq!(instances(&model), want, "no instance under an old name");
            assert!(
                model == walk::expected(&afts),
                "{names:?}: the view = the AFT"
            );
        }

        set(&afts, &[(1001, "blue")]);
        let svc = Service::new(vec![afts.clone()], usize::MAX);
        let get = |ni: &str| {
            Request::new(GetRequest {
                encoding: Encoding::Proto as i32,
                path: vec![super::super::path::parse_str(&format!(
                    "/network-instances/network-instance[name={ni}]/afts/ipv4-unicast"
                ))],
                ..Default::default()
            })
        };
        let got = svc.get(get("blue")).await.expect("the VRF's entries");
        let entries = got
            .into_inner()
            .notification
            .iter()
            .flat_map(|n| &n.update)
            .filter(|u| u.path.as_ref().unwrap().elem.last().unwrap().name == "prefix")
            .count();
        assert_eq!(entries, 199);
        assert_eq!(
            svc.get(get("1001")).await.unwrap_err().code(),
            tonic::Code::NotFound
        );
        task.abort();
    }

    /// A STREAM subscriber that reads slowly while the AFT churns: the daemon never
    /// holds more than its queue plus one slice of rendered notifications for it
    /// (a small fraction of the table), and once the churn stops the subscriber's view
    /// equals the AFT.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_stream_subscriber_costs_a_slice_and_ends_exact() {
        const N: u32 = 50_000;
        let afts = walk::hub(N);
        let (stats, mut stream, task) = subscribe_all(&afts);

        // Churn on a thread of its own, as the pump does.
        let stop = Arc::new(AtomicBool::new(false));
        let churn = {
            let (afts, stop) = (afts.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut round = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    round += 1;
                    afts.apply(|aft, out| {
                        for k in 0..100 {
                            let i = round.wrapping_mul(7919).wrapping_add(k * 104_729) % N;
                            let best = (k % 3 != 0).then(|| walk::best(round % 9, i % 7));
                            aft.set(254, walk::net(i), best.as_ref(), out);
                        }
                    });
                    // A few dozen batches a second: the broadcast holds 1,024.
                    std::thread::sleep(Duration::from_millis(20));
                }
                round
            })
        };

        let mut model = BTreeMap::new();
        let (mut synced, mut updates) = (false, 0);
        while !synced {
            let r = tokio::time::timeout(Duration::from_secs(300), stream.next())
                .await
                .unwrap_or_else(|_| panic!("no progress: {}", stats.json()))
                .expect("stream open")
                .expect("no error");
            match r.response {
                Some(subscribe_response::Response::Update(n)) => {
                    walk::apply(&mut model, &n);
                    updates += 1;
                    if updates % 8 == 0 {
                        tokio::time::sleep(Duration::from_millis(1)).await; // a slow reader
                    }
                }
                Some(subscribe_response::Response::SyncResponse(_)) => synced = true,
                _ => {}
            }
        }
        stop.store(true, Ordering::Relaxed);
        let rounds = churn.join().unwrap();
        // Drain what the churn left queued, until the stream is quiet.
        while let Ok(Some(r)) =
            tokio::time::timeout(Duration::from_millis(500), stream.next()).await
        {
            if let Some(subscribe_response::Response::Update(n)) = r.unwrap().response {
                walk::apply(&mut model, &n);
            }
        }
        let want = walk::expected(&afts);
        assert!(
            rounds > 10,
            "the table churned during the snapshot ({rounds} rounds)"
        );
        assert!(model == want, "the subscriber's view differs from the AFT");
        assert_eq!(stats.overflows.load(Ordering::Relaxed), 0);
        let max = stats.unsent_max.load(Ordering::Relaxed) as usize;
        // The queue, the one the stream holds, and a slice.
        assert!(
            max <= RESPONSE_QUEUE + 1 + MAX_RENDERED,
            "{max} notifications rendered and unsent at once"
        );
        assert!(
            updates > 4 * max,
            "a table much larger than that: {updates}"
        );
        task.abort();
    }
}
