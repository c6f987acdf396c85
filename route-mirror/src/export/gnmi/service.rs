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

use tokio::sync::{broadcast::error::RecvError, mpsc, Barrier};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info};

use super::encode::{instance_name, Builder};
use super::path::{display, join, Key, Section, Selector};
use super::proto::g_nmi_server::GNmi;
use super::proto::{
    get_request, subscribe_request, subscribe_response, subscription_list, CapabilityRequest,
    CapabilityResponse, Encoding, GetRequest, GetResponse, ModelData, Notification, SetRequest,
    SetResponse, SubscribeRequest, SubscribeResponse, SubscriptionList, SubscriptionMode,
};
use crate::export::aft::{Aft, Op};
use crate::export::afts::{now_ns, Afts, Batch};

/// Responses queued towards one subscriber's gRPC stream. When it is full the
/// subscriber's task waits, its hub queue fills, and it starts over from a snapshot.
const RESPONSE_QUEUE: usize = 64;
/// Shortest SAMPLE interval honoured.
const MIN_SAMPLE: Duration = Duration::from_millis(100);

/// Counters shown in `stats` (`gnmi`).
#[derive(Debug, Default)]
pub struct GnmiStats {
    pub subscribers: AtomicU64,
    pub subscriptions: AtomicU64,
    pub gets: AtomicU64,
    pub notifications: AtomicU64,
    /// Subscribers that fell behind their queue and were sent a fresh snapshot.
    pub overflows: AtomicU64,
    /// Resync brackets sent (mirror resyncs and overflows).
    pub resyncs: AtomicU64,
    pub errors: AtomicU64,
}

impl GnmiStats {
    pub fn json(&self) -> serde_json::Value {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "subscribers": g(&self.subscribers),
            "subscriptions": g(&self.subscriptions),
            "gets": g(&self.gets),
            "notifications": g(&self.notifications),
            "overflows": g(&self.overflows),
            "resyncs": g(&self.resyncs),
            "errors": g(&self.errors),
        })
    }
}

pub struct Service {
    hubs: Vec<Arc<Afts>>,
    pub stats: Arc<GnmiStats>,
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
    pub fn new(hubs: Vec<Arc<Afts>>) -> Service {
        Service {
            hubs,
            stats: Arc::new(GnmiStats::default()),
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

/// The current state `sels` select in one hub: a copy of the AFT for broad selections,
/// direct reads under the hub's lock for single objects.
async fn render(hub: &Afts, sels: &[Selector], enc: Encoding, target: &str) -> Vec<Notification> {
    let time_ns = now_ns();
    let build = |aft: &Aft| {
        let mut b = Builder::new(enc, target, time_ns);
        for s in sels {
            b.snapshot(aft, s, &instance_name);
        }
        b.finish()
    };
    if sels.iter().all(|s| s.key.is_some()) {
        hub.with(build).await
    } else {
        build(&hub.snapshot().await)
    }
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

/// Sends notifications; false once the client is gone.
async fn send_all(tx: &Tx, stats: &GnmiStats, ns: Vec<Notification>) -> bool {
    for n in ns {
        stats.notifications.fetch_add(1, Ordering::Relaxed);
        if tx.send(Ok(update(n))).await.is_err() {
            return false;
        }
    }
    true
}

/// One subscription of a list, resolved.
struct Sub {
    sel: Selector,
    sample: Option<Duration>,
    suppress_redundant: bool,
    heartbeat: Option<Duration>,
}

/// The AFT operations of a batch that `sub` selects, as notifications.
fn render_ops(b: &mut Builder<'_>, sel: &Selector, changes: &[crate::export::aft::Change]) {
    for c in changes {
        let ni = instance_name(c.table);
        match &c.op {
            Op::NextHop { index, hop } => b.hop(&ni, sel, *index, hop),
            Op::NextHopInterface { index, hop } => b.hop_interface(&ni, sel, *index, hop),
            Op::NextHopDelete { index } => b.delete(&ni, sel, Section::Hops, Key::Id(*index)),
            Op::Group { id, members } => b.group(&ni, sel, *id, members),
            Op::GroupDelete { id } => b.delete(&ni, sel, Section::Groups, Key::Id(*id)),
            Op::Entry { prefix, entry } => b.entry(&ni, sel, *prefix, entry),
            Op::EntryDelete { prefix } => {
                let s = match prefix {
                    ipnet::IpNet::V4(_) => Section::V4,
                    ipnet::IpNet::V6(_) => Section::V6,
                };
                b.delete(&ni, sel, s, Key::Prefix(*prefix))
            }
        }
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

/// The current value (or deletion) of each touched object `sel` selects.
fn render_touched(b: &mut Builder<'_>, aft: &Aft, sel: &Selector, t: &Touched) {
    for &(table, s, id, prefix) in t {
        let ni = instance_name(table);
        let inst = aft.instances.get(&table);
        match (s, prefix) {
            (Section::Hops, _) => match inst.and_then(|i| i.next_hop(id)) {
                Some(h) => b.hop(&ni, sel, id, &h),
                None => b.delete(&ni, sel, s, Key::Id(id)),
            },
            (Section::Groups, _) => match inst.and_then(|i| i.group(id)) {
                Some(g) => b.group(&ni, sel, id, g),
                None => b.delete(&ni, sel, s, Key::Id(id)),
            },
            (_, Some(p)) => match inst.and_then(|i| i.entry(&p)) {
                Some(e) => b.entry(&ni, sel, p, e),
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
    tx: Tx,
    stats: Arc<GnmiStats>,
}

/// STREAM mode for one hub: snapshot, sync (once all hubs sent theirs), then changes;
/// SAMPLE subscriptions on their timers.
async fn stream_hub(hub: Arc<Afts>, target: String, call: StreamCall) {
    let StreamCall {
        subs,
        enc,
        updates_only,
        barrier,
        tx,
        stats,
    } = call;
    let mut sub = hub.subscribe().await;
    if !updates_only {
        let mut b = Builder::new(enc, &target, sub.time_ns);
        for s in subs.iter() {
            b.snapshot(&sub.snapshot, &s.sel, &instance_name);
        }
        if !send_all(&tx, &stats, b.finish()).await {
            return;
        }
    }
    drop(std::mem::take(&mut sub.snapshot));
    if barrier.wait().await.is_leader() && tx.send(Ok(sync_response())).await.is_err() {
        return;
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
            r = sub.rx.recv() => {
                let resync = match r {
                    Ok(batch) => match &*batch {
                        Batch::Changes { time_ns, changes } => {
                            let mut b = Builder::new(enc, &target, *time_ns);
                            for (i, s) in subs.iter().enumerate() {
                                if s.sample.is_some() {
                                    touch(&mut touched[i], changes);
                                } else {
                                    render_ops(&mut b, &s.sel, changes);
                                }
                            }
                            if !send_all(&tx, &stats, b.finish()).await {
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
                    // sync_response. Subscribe first so nothing after it is missed.
                    stats.resyncs.fetch_add(1, Ordering::Relaxed);
                    sub = hub.subscribe().await;
                    let mut b = Builder::new(enc, &target, sub.time_ns);
                    let mut instances: Vec<String> = sub.snapshot.instances.keys().map(|t| instance_name(*t)).collect();
                    instances.extend(subs.iter().filter_map(|s| s.sel.ni.clone()));
                    instances.sort();
                    instances.dedup();
                    for s in subs.iter() {
                        for ni in instances.iter().filter(|n| s.sel.wants_ni(n)) {
                            b.delete_path(ni, s.sel.root_in(ni));
                        }
                        b.snapshot(&sub.snapshot, &s.sel, &instance_name);
                    }
                    drop(std::mem::take(&mut sub.snapshot));
                    touched.iter_mut().for_each(Touched::clear);
                    if !send_all(&tx, &stats, b.finish()).await || tx.send(Ok(sync_response())).await.is_err() {
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
                    let ns = if s.suppress_redundant && !heartbeat {
                        let t = std::mem::take(&mut touched[i]);
                        if t.is_empty() {
                            continue;
                        }
                        hub.with(|aft| {
                            let mut b = Builder::new(enc, &target, now_ns());
                            render_touched(&mut b, aft, &s.sel, &t);
                            b.finish()
                        }).await
                    } else {
                        touched[i].clear();
                        render(&hub, std::slice::from_ref(&s.sel), enc, &target).await
                    };
                    if !send_all(&tx, &stats, ns).await {
                        return;
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
    tx: Tx,
    stats: Arc<GnmiStats>,
) {
    let sels: Vec<Selector> = subs.iter().map(|s| s.sel.clone()).collect();
    match subscription_list::Mode::try_from(list.mode).unwrap_or(subscription_list::Mode::Stream) {
        subscription_list::Mode::Once => {
            for (hub, target) in &targets {
                if !send_all(&tx, &stats, render(hub, &sels, enc, target).await).await {
                    return;
                }
            }
            let _ = tx.send(Ok(sync_response())).await;
        }
        subscription_list::Mode::Poll => loop {
            // The first poll is implicit: the list itself asks for the current state.
            for (hub, target) in &targets {
                if !send_all(&tx, &stats, render(hub, &sels, enc, target).await).await {
                    return;
                }
            }
            if tx.send(Ok(sync_response())).await.is_err() {
                return;
            }
            match reqs.message().await {
                Ok(Some(SubscribeRequest {
                    request: Some(subscribe_request::Request::Poll(_)),
                    ..
                })) => continue,
                Ok(Some(_)) => {
                    let _ = tx
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
            let call = StreamCall {
                subs: Arc::new(subs),
                enc,
                updates_only: list.updates_only,
                barrier: Arc::new(Barrier::new(targets.len())),
                tx: tx.clone(),
                stats,
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
        let mut notification = Vec::new();
        // The AFT is state only: a CONFIG Get selects nothing.
        if r.r#type != get_request::DataType::Config as i32 {
            for (hub, target) in &targets {
                notification.extend(render(hub, &sels, enc, target).await);
            }
        }
        if notification.is_empty() {
            let shown: Vec<String> = paths.iter().map(display).collect();
            return Err(Status::not_found(format!(
                "not found: nothing at {}",
                shown.join(", ")
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
        let stats = self.stats.clone();
        tokio::spawn(async move {
            let _gauge = gauge;
            subscription(targets, list, subs, enc, reqs, tx, stats).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
