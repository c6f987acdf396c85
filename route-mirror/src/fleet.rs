//! The fleet consumer: follows the NATS JetStream stream that route-mirror daemons
//! publish to ([`crate::export::nats`]), keeps one FIB per router, and answers "which
//! route does router R use for X". It is the reference for consumers of the format:
//!
//! * a router is `<host>/<netns>` (the subject's second and third tokens);
//! * its copy starts at a `snapshot-start` (a new copy is built from the `snapshot`
//!   chunks) and becomes current at the matching `snapshot-end`;
//! * changes then apply in `seq` order; a gap in `seq`, or a new `epoch` (the daemon
//!   restarted), marks the copy stale until the next snapshot ends, so it is never
//!   silently wrong;
//! * a `resync-start` (the router lost events), or a snapshot taken while the mirror
//!   resynced or before its initial sync finished, makes the copy `resyncing` until
//!   `resync-end`: changes keep applying, but lookups say it may be wrong.
//!
//! `route-mirror fleet` drives it from the command line (lookup, dump, follow).
//! Routes are kept per key, (table, prefix, `id`), each key a list in the kernel's
//! order: a change sets its key's list to the message's `routes` (or `[route]` when
//! absent), a snapshot's routes append to their key's list in the order they come.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use prefix_trie::PrefixMap;
use serde::Serialize;

use crate::export::nats::message::{Body, Keyed, Msg};
use crate::model::table;
use crate::view::RouteView;

/// The routes of one router.
#[derive(Default)]
pub struct Tables {
    v4: BTreeMap<u32, PrefixMap<Ipv4Net, Vec<Keyed>>>,
    v6: BTreeMap<u32, PrefixMap<Ipv6Net, Vec<Keyed>>>,
    len: usize,
}

impl Tables {
    fn slot(&mut self, table: u32, p: IpNet) -> Option<&mut Vec<Keyed>> {
        match p {
            IpNet::V4(n) => self.v4.get_mut(&table)?.get_mut(&n),
            IpNet::V6(n) => self.v6.get_mut(&table)?.get_mut(&n),
        }
    }

    fn list(&mut self, table: u32, p: IpNet) -> &mut Vec<Keyed> {
        match p {
            IpNet::V4(n) => self.v4.entry(table).or_default().entry(n).or_default(),
            IpNet::V6(n) => self.v6.entry(table).or_default().entry(n).or_default(),
        }
    }

    /// A snapshot route: after the routes of its key already there (they come in the
    /// kernel's order), keys ordered as the kernel orders them (metric, TOS, source).
    pub fn push(&mut self, k: Keyed) {
        let r = &k.route;
        let order = (r.metric, r.tos, r.from);
        let list = self.list(r.table, r.prefix);
        let at = list
            .iter()
            .position(|x| (x.route.metric, x.route.tos, x.route.from) > order)
            .unwrap_or(list.len());
        list.insert(at, k);
        self.len += 1;
    }

    /// A change: key `id` of `table`/`prefix` now holds `routes` (none: it is gone).
    pub fn set(&mut self, table: u32, prefix: IpNet, id: &str, routes: Vec<RouteView>) {
        let (added, mut removed) = (routes.len(), 0);
        let mut rest = Vec::new();
        match self.slot(table, prefix) {
            Some(list) => {
                let before = list.len();
                let at = list.iter().position(|x| x.id == id);
                list.retain(|x| x.id != id);
                removed = before - list.len();
                let keyed = routes.into_iter().map(|route| Keyed {
                    id: id.into(),
                    route,
                });
                match at {
                    Some(at) => drop(list.splice(at..at, keyed)),
                    None => rest.extend(keyed),
                }
                if list.is_empty() {
                    match prefix {
                        IpNet::V4(n) => {
                            self.v4.get_mut(&table).map(|t| t.remove(&n));
                        }
                        IpNet::V6(n) => {
                            self.v6.get_mut(&table).map(|t| t.remove(&n));
                        }
                    }
                }
            }
            None => rest.extend(routes.into_iter().map(|route| Keyed {
                id: id.into(),
                route,
            })),
        }
        self.len = self.len + added - rest.len() - removed;
        rest.into_iter().for_each(|k| self.push(k));
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every route, ordered by table, family, prefix, metric.
    pub fn routes(&self) -> Vec<&RouteView> {
        let mut out = Vec::with_capacity(self.len);
        for t in self.v4.values() {
            out.extend(t.iter().flat_map(|(_, l)| l.iter().map(|k| &k.route)));
        }
        for t in self.v6.values() {
            out.extend(t.iter().flat_map(|(_, l)| l.iter().map(|k| &k.route)));
        }
        out
    }

    /// Longest-prefix match in one table: the lowest-metric TOS-0 route.
    fn lpm(&self, table: u32, addr: IpAddr) -> Option<&RouteView> {
        let list = match addr {
            IpAddr::V4(a) => self.v4.get(&table)?.get_lpm(&Ipv4Net::from(a))?.1,
            IpAddr::V6(a) => self.v6.get(&table)?.get_lpm(&Ipv6Net::from(a))?.1,
        };
        list.iter().map(|k| &k.route).find(|r| r.tos == 0)
    }

    /// The route the router uses for `addr` under the default policy rules (local,
    /// main, default; a `throw` moves on), as `route-mirror lookup` answers.
    pub fn lookup(&self, addr: IpAddr) -> Option<&RouteView> {
        [table::LOCAL, table::MAIN, table::DEFAULT]
            .into_iter()
            .filter_map(|t| self.lpm(t, addr))
            .find(|r| r.kind != "throw")
    }
}

/// What a router's copy is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// No snapshot seen yet.
    Waiting,
    /// Exact as of `seq`.
    Current,
    /// A gap or a restart: waiting for the next snapshot.
    Stale,
    /// The router lost events and resyncs (or its snapshot was taken before its
    /// initial sync finished): the copy may be wrong until `resync-end`.
    Resyncing,
}

impl State {
    /// Holds a copy that changes keep current (exact, or converging to exact).
    fn following(self) -> bool {
        matches!(self, State::Current | State::Resyncing)
    }
}

/// One router's copy.
pub struct Router {
    pub fib: Tables,
    /// A snapshot being received: its id, routes so far, and whether it is partial.
    building: Option<(u64, Tables, bool)>,
    pub epoch: u64,
    pub seq: u64,
    pub state: State,
    /// Gaps in `seq` seen (each made the copy stale until a snapshot).
    pub gaps: u64,
    pub snapshots: u64,
    /// Time of the last change applied (Unix ms, as the daemon stamped it).
    pub last_change_ms: u64,
}

impl Default for Router {
    fn default() -> Router {
        Router {
            fib: Tables::default(),
            building: None,
            epoch: 0,
            seq: 0,
            state: State::Waiting,
            gaps: 0,
            snapshots: 0,
            last_change_ms: 0,
        }
    }
}

impl Router {
    /// Applies one message of this router, in stream order.
    pub fn apply(&mut self, m: Msg) {
        if m.epoch != self.epoch {
            if self.state.following() {
                self.state = State::Stale;
            }
            self.epoch = m.epoch;
            self.building = None;
        } else if m.seq != self.seq + 1 && self.seq != 0 {
            if self.state.following() {
                self.state = State::Stale;
            }
            self.gaps += 1;
            self.building = None;
        }
        self.seq = m.seq;
        match m.body {
            Body::SnapshotStart {
                snapshot,
                synced,
                resyncing,
                ..
            } => self.building = Some((snapshot, Tables::default(), !synced || resyncing)),
            Body::Snapshot { snapshot, routes } => {
                if let Some((id, t, _)) = &mut self.building {
                    if *id == snapshot {
                        routes.into_iter().for_each(|r| t.push(r));
                    }
                }
            }
            Body::SnapshotEnd { snapshot } => {
                if let Some((id, t, partial)) = self.building.take() {
                    if id == snapshot {
                        self.fib = t;
                        self.state = if partial {
                            State::Resyncing
                        } else {
                            State::Current
                        };
                        self.snapshots += 1;
                    }
                }
            }
            Body::Change {
                op,
                id,
                route,
                routes,
                ..
            } => {
                self.last_change_ms = m.time_ms;
                let (table, prefix) = (route.table, route.prefix);
                let routes = routes.unwrap_or_else(|| match op.as_str() {
                    "delete" => Vec::new(), // the daemon always sends `routes` with a delete
                    _ => vec![*route],
                });
                self.fib.set(table, prefix, &id, routes);
            }
            Body::ResyncStart { .. } if self.state == State::Current => {
                self.state = State::Resyncing
            }
            Body::ResyncEnd if self.state == State::Resyncing => self.state = State::Current,
            Body::ResyncStart { .. } | Body::ResyncEnd => {}
        }
    }
}

/// Every router seen on the stream.
#[derive(Default)]
pub struct Fleet {
    pub routers: BTreeMap<String, Router>,
    /// Messages that did not parse (counted, skipped).
    pub bad: u64,
}

impl Fleet {
    /// Applies one stream message (`subject`, `payload`); `prefix` is the subject
    /// prefix (`route-mirror`).
    pub fn apply(&mut self, prefix: &str, subject: &str, payload: &[u8]) {
        let mut tokens = subject
            .strip_prefix(prefix)
            .unwrap_or("")
            .split('.')
            .skip(1);
        let (Some(host), Some(netns)) = (tokens.next(), tokens.next()) else {
            self.bad += 1;
            return;
        };
        match serde_json::from_slice::<Msg>(payload) {
            Ok(m) => self
                .routers
                .entry(format!("{host}/{netns}"))
                .or_default()
                .apply(m),
            Err(_) => self.bad += 1,
        }
    }

    /// A router by `host/netns`, or by `netns` alone when only one host has it.
    pub fn router(&self, name: &str) -> Option<&Router> {
        if let Some(r) = self.routers.get(name) {
            return Some(r);
        }
        let mut it = self
            .routers
            .iter()
            .filter(|(k, _)| k.rsplit('/').next() == Some(name));
        match (it.next(), it.next()) {
            (Some((_, r)), None) => Some(r),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Family;

    fn route(prefix: &str, table: u32, metric: u32, kind: &str) -> Keyed {
        let prefix: IpNet = prefix.parse().unwrap();
        Keyed {
            id: format!("{metric}/0/-"),
            route: RouteView {
                family: Family::of_net(&prefix),
                prefix,
                table,
                metric,
                tos: 0,
                from: None,
                kind: kind.into(),
                protocol: "boot".into(),
                scope: "global".into(),
                prefsrc: None,
                nhid: None,
                mtu: None,
                metrics: Default::default(),
                pref: None,
                flags: vec![],
                nexthops: vec![],
            },
        }
    }

    fn msg(seq: u64, body: Body) -> Msg {
        Msg {
            epoch: 1,
            seq,
            time_ms: 0,
            body,
        }
    }

    fn change(seq: u64, op: &str, r: Keyed) -> Msg {
        msg(
            seq,
            Body::Change {
                op: op.into(),
                cause: "event".into(),
                id: r.id,
                route: Box::new(r.route),
                routes: None,
            },
        )
    }

    /// A key holding several routes (IPv4 `ip route append`): changes carry the key's
    /// list; the first forwards.
    #[test]
    fn a_key_holds_a_list() {
        let mut r = Router::default();
        r.apply(msg(
            1,
            Body::SnapshotStart {
                snapshot: 1,
                routes: 3,
                reason: "start".into(),
                synced: true,
                resyncing: false,
            },
        ));
        let mut second = route("10.0.0.0/8", 254, 10, "unicast");
        second.route.protocol = "static".into();
        r.apply(msg(
            2,
            Body::Snapshot {
                snapshot: 1,
                routes: vec![
                    route("10.0.0.0/8", 254, 10, "unicast"),
                    second.clone(),
                    route("10.0.0.0/8", 254, 5, "blackhole"),
                ],
            },
        ));
        r.apply(msg(3, Body::SnapshotEnd { snapshot: 1 }));
        let protocols = |r: &Router| -> Vec<String> {
            r.fib
                .routes()
                .iter()
                .map(|v| format!("{}:{}", v.metric, v.protocol))
                .collect()
        };
        assert_eq!(protocols(&r), ["5:boot", "10:boot", "10:static"]);
        // The first route of key 10/0/- deleted: the key keeps the second.
        let first = route("10.0.0.0/8", 254, 10, "unicast");
        r.apply(msg(
            4,
            Body::Change {
                op: "delete".into(),
                cause: "event".into(),
                id: first.id.clone(),
                route: Box::new(first.route.clone()),
                routes: Some(vec![second.route.clone()]),
            },
        ));
        assert_eq!(protocols(&r), ["5:boot", "10:static"]);
        assert_eq!(r.fib.len(), 2);
        // Prepended again: the key's list, in order.
        r.apply(msg(
            5,
            Body::Change {
                op: "add".into(),
                cause: "event".into(),
                id: first.id.clone(),
                route: Box::new(first.route.clone()),
                routes: Some(vec![first.route.clone(), second.route.clone()]),
            },
        ));
        assert_eq!(protocols(&r), ["5:boot", "10:boot", "10:static"]);
        // The blackhole's key emptied, then the rest.
        r.apply(change(
            6,
            "delete",
            route("10.0.0.0/8", 254, 5, "blackhole"),
        ));
        assert_eq!(protocols(&r), ["10:boot", "10:static"]);
        let mut gone = change(7, "delete", first);
        if let Body::Change { routes, .. } = &mut gone.body {
            *routes = Some(vec![]);
        }
        r.apply(gone);
        assert!(r.fib.is_empty() && r.fib.lookup("10.1.1.1".parse().unwrap()).is_none());
    }

    #[test]
    fn snapshot_then_changes_then_gap() {
        let mut r = Router::default();
        r.apply(msg(
            1,
            Body::SnapshotStart {
                snapshot: 1,
                routes: 2,
                reason: "start".into(),
                synced: true,
                resyncing: false,
            },
        ));
        r.apply(msg(
            2,
            Body::Snapshot {
                snapshot: 1,
                routes: vec![
                    route("10.0.0.0/8", 254, 10, "unicast"),
                    route("10.1.0.0/16", 254, 5, "unicast"),
                ],
            },
        ));
        assert_eq!(r.state, State::Waiting, "not current before snapshot-end");
        r.apply(msg(3, Body::SnapshotEnd { snapshot: 1 }));
        assert_eq!((r.state, r.fib.len()), (State::Current, 2));
        let addr = "10.1.2.3".parse().unwrap();
        assert_eq!(
            r.fib.lookup(addr).unwrap().prefix.to_string(),
            "10.1.0.0/16"
        );
        r.apply(change(4, "delete", route("10.1.0.0/16", 254, 5, "unicast")));
        assert_eq!(r.fib.lookup(addr).unwrap().prefix.to_string(), "10.0.0.0/8");
        // A lower metric on the same prefix wins; a throw in local falls through to main.
        r.apply(change(5, "add", route("10.0.0.0/8", 254, 1, "blackhole")));
        r.apply(change(6, "add", route("10.0.0.0/8", 255, 0, "throw")));
        assert_eq!(r.fib.lookup(addr).unwrap().kind, "blackhole");
        assert_eq!(r.fib.len(), 3);
        // Seq 8 after 6: a gap makes the copy stale until the next snapshot.
        r.apply(change(8, "add", route("192.0.2.0/24", 254, 0, "unicast")));
        assert_eq!((r.state, r.gaps), (State::Stale, 1));
        r.apply(msg(
            9,
            Body::SnapshotStart {
                snapshot: 2,
                routes: 0,
                reason: "periodic".into(),
                synced: true,
                resyncing: false,
            },
        ));
        r.apply(msg(10, Body::SnapshotEnd { snapshot: 2 }));
        assert_eq!((r.state, r.fib.len()), (State::Current, 0));
    }

    /// A resync bracket, and a snapshot taken during one, make the copy `resyncing`
    /// until `resync-end`; a gap during it still makes it stale.
    #[test]
    fn resync_brackets_the_copy() {
        let mut r = Router::default();
        let start = |seq, snapshot, resyncing| {
            msg(
                seq,
                Body::SnapshotStart {
                    snapshot,
                    routes: 0,
                    reason: "start".into(),
                    synced: true,
                    resyncing,
                },
            )
        };
        r.apply(start(1, 1, false));
        r.apply(msg(2, Body::SnapshotEnd { snapshot: 1 }));
        assert_eq!(r.state, State::Current);
        r.apply(msg(
            3,
            Body::ResyncStart {
                note: "enobufs".into(),
            },
        ));
        assert_eq!(r.state, State::Resyncing);
        r.apply(change(4, "add", route("10.0.0.0/8", 254, 0, "unicast")));
        assert_eq!((r.state, r.fib.len()), (State::Resyncing, 1));
        r.apply(msg(5, Body::ResyncEnd));
        assert_eq!(r.state, State::Current);
        // A snapshot of a resyncing mirror.
        r.apply(start(6, 2, true));
        r.apply(msg(7, Body::SnapshotEnd { snapshot: 2 }));
        assert_eq!((r.state, r.fib.len()), (State::Resyncing, 0));
        r.apply(msg(9, Body::ResyncEnd));
        assert_eq!((r.state, r.gaps), (State::Stale, 1), "a gap, not current");
    }

    #[test]
    fn fleet_keys_routers_by_subject() {
        let mut f = Fleet::default();
        let m = serde_json::to_vec(&msg(
            1,
            Body::SnapshotStart {
                snapshot: 1,
                routes: 0,
                reason: "start".into(),
                synced: true,
                resyncing: false,
            },
        ))
        .unwrap();
        f.apply("route-mirror", "route-mirror.r1.blue.control", &m);
        f.apply("route-mirror", "route-mirror.r1.blue.control", b"garbage");
        assert!(f.router("r1/blue").is_some() && f.router("blue").is_some());
        assert_eq!(f.bad, 1);
    }
}

/// Where the fleet's stream is.
#[derive(Debug, Clone)]
pub struct Source {
    pub url: String,
    pub stream: String,
    pub subject_prefix: String,
}

/// Follows the stream from its first retained message. `until_caught_up`: stop once
/// every message published before the call was applied; else follow forever, calling
/// `each` after every message with the fleet and whether it is caught up.
pub async fn follow(
    src: &Source,
    until_caught_up: bool,
    mut each: impl FnMut(&Fleet, bool),
) -> anyhow::Result<Fleet> {
    use anyhow::Context;
    use async_nats::jetstream;
    use tokio_stream::StreamExt;
    let client = async_nats::connect(&src.url)
        .await
        .with_context(|| format!("connecting to {}", src.url))?;
    let js = jetstream::new(client);
    let mut stream = js
        .get_stream(&src.stream)
        .await
        .with_context(|| format!("JetStream stream {}", src.stream))?;
    let last = stream
        .info()
        .await
        .context("stream info")?
        .state
        .last_sequence;
    let mut fleet = Fleet::default();
    if until_caught_up && last == 0 {
        return Ok(fleet);
    }
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: format!("{}.>", src.subject_prefix),
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .context("creating an ordered consumer")?;
    let mut msgs = consumer.messages().await.context("consuming")?;
    while let Some(m) = msgs.next().await {
        let m = m.context("reading the stream")?;
        fleet.apply(&src.subject_prefix, m.subject.as_str(), &m.payload);
        let info = m.info().ok();
        let caught_up = info.as_ref().is_some_and(|i| i.pending == 0);
        each(&fleet, caught_up);
        if until_caught_up && info.is_some_and(|i| i.stream_sequence >= last) {
            break;
        }
    }
    Ok(fleet)
}
