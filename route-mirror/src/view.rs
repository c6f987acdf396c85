//! What queries return: routes resolved for people (device names, type and protocol
//! names, nexthop objects expanded), as JSON and as `ip route`-like text.

use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::fib::Entry;
use crate::liveness::Liveness;
use crate::lwt::{encap_view, format_encap, EncapView, FlowView};
use crate::mirror::{Mirror, Names};
use crate::model::{
    rtax, rtn, rtnh, scope, table, Family, MetricValue, Metrics, NextHop, RouteAttrs,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HopView {
    pub gateway: Option<IpAddr>,
    pub dev: Option<String>,
    pub ifindex: u32,
    pub weight: u16,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
    /// Lightweight-tunnel encapsulation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encap: Option<EncapView>,
    /// IPv4 realms (`ip -j route`'s `flow`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<FlowView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteView {
    pub family: Family,
    pub prefix: IpNet,
    pub table: u32,
    pub metric: u32,
    #[serde(default)]
    pub tos: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<IpNet>,
    #[serde(rename = "type")]
    pub kind: String,
    pub protocol: String,
    pub scope: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefsrc: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nhid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Every `RTA_METRICS` value by its `ip route` name (`lock`: the locked ones).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub metrics: serde_json::Map<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pref: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
    pub nexthops: Vec<HopView>,
}

/// `RTNH_F_*` flag names in `ip route`'s order (`print_rt_flags`).
pub fn flag_names(f: u8) -> Vec<String> {
    [
        (rtnh::DEAD, "dead"),
        (rtnh::ONLINK, "onlink"),
        (rtnh::PERVASIVE, "pervasive"),
        (rtnh::OFFLOAD, "offload"),
        (rtnh::TRAP, "trap"),
        (rtnh::LINKDOWN, "linkdown"),
        (rtnh::UNRESOLVED, "unresolved"),
    ]
    .into_iter()
    .filter(|(b, _)| f & b != 0)
    .map(|(_, n)| n.to_string())
    .collect()
}

/// Metrics as `ip -j route` names them; numbers stay numbers (`rtt` in the kernel's
/// units, 1/8 ms), `lock` lists the locked metrics.
pub fn metrics_json(m: &Metrics) -> serde_json::Map<String, serde_json::Value> {
    let mut out = serde_json::Map::new();
    for (t, v) in m.iter() {
        let name = rtax::name(*t).map_or_else(|| format!("metric{t}"), str::to_string);
        match (t, v) {
            (&rtax::LOCK, MetricValue::U32(bits)) => {
                let locked: Vec<serde_json::Value> = (2..32u16)
                    .filter(|i| bits & (1 << i) != 0)
                    .map(|i| {
                        rtax::name(i)
                            .map_or_else(|| i.to_string(), str::to_string)
                            .into()
                    })
                    .collect();
                out.insert(name, locked.into());
            }
            (_, MetricValue::U32(x)) => {
                out.insert(name, (*x).into());
            }
            (_, MetricValue::Name(n)) => {
                out.insert(name, n.to_string().into());
            }
        }
    }
    out
}

/// What rendering a route needs besides the route: the live [`Mirror`] (under its lock)
/// or a [`Names`] copy taken with a FIB snapshot (lock-free lookups).
pub trait RouteContext {
    fn link_name(&self, ifindex: u32) -> Option<&str>;
    fn effective_hops(&self, attrs: &RouteAttrs) -> Vec<NextHop>;
    /// The route's effective hops with the flags a dump would show now.
    fn dumped_hops(&self, family: Family, attrs: &RouteAttrs) -> Vec<NextHop>;
    fn live(&self) -> &Liveness;
    /// Whether a route can forward now (see [`crate::liveness`]).
    fn usable(&self, family: Family, attrs: &RouteAttrs) -> crate::fib::Usable;
}

impl RouteContext for Mirror {
    fn link_name(&self, ifindex: u32) -> Option<&str> {
        Mirror::link_name(self, ifindex)
    }
    fn effective_hops(&self, attrs: &RouteAttrs) -> Vec<NextHop> {
        Mirror::effective_hops(self, attrs)
    }
    fn dumped_hops(&self, family: Family, attrs: &RouteAttrs) -> Vec<NextHop> {
        Mirror::dumped_hops(self, family, attrs)
    }
    fn live(&self) -> &Liveness {
        &self.live
    }
    fn usable(&self, family: Family, attrs: &RouteAttrs) -> crate::fib::Usable {
        Mirror::usable(self, family, attrs)
    }
}

impl RouteContext for Names {
    fn link_name(&self, ifindex: u32) -> Option<&str> {
        Names::link_name(self, ifindex)
    }
    fn effective_hops(&self, attrs: &RouteAttrs) -> Vec<NextHop> {
        Names::effective_hops(self, attrs)
    }
    fn dumped_hops(&self, family: Family, attrs: &RouteAttrs) -> Vec<NextHop> {
        Names::dumped_hops(self, family, attrs)
    }
    fn live(&self) -> &Liveness {
        Names::live(self)
    }
    fn usable(&self, family: Family, attrs: &RouteAttrs) -> crate::fib::Usable {
        Names::usable(self, family, attrs)
    }
}

pub fn hop_view<C: RouteContext + ?Sized>(m: &C, h: &NextHop) -> HopView {
    HopView {
        gateway: h.gateway,
        dev: (h.ifindex != 0).then(|| {
            m.link_name(h.ifindex)
                .map_or_else(|| format!("if{}", h.ifindex), str::to_string)
        }),
        ifindex: h.ifindex,
        weight: h.weight,
        flags: flag_names(h.flags),
        encap: h.encap.as_deref().map(encap_view),
        flow: FlowView::new(h.realms),
    }
}

/// A route as queries show it, with its nexthop object resolved through the mirror and
/// the liveness flags (`dead`, `linkdown`) a dump would show now.
pub fn route_view<C: RouteContext + ?Sized>(
    m: &C,
    table: u32,
    prefix: IpNet,
    e: &Entry,
) -> RouteView {
    let a: &RouteAttrs = &e.attrs;
    let sub = e.sub();
    let family = Family::of_net(&prefix);
    let hops = m.dumped_hops(family, a);
    let flags = m.live().route_flags(family, a, &hops);
    RouteView {
        family,
        prefix,
        table,
        metric: sub.priority,
        tos: sub.tos,
        from: sub.src,
        kind: a.kind_name(),
        protocol: crate::names::system().proto_name(a.protocol),
        scope: a.scope_name(),
        prefsrc: a.prefsrc,
        nhid: a.nh_id,
        mtu: a.mtu(),
        metrics: metrics_json(&a.metrics),
        pref: a.pref.map(|p| match p {
            0 => "medium".to_string(),
            1 => "high".to_string(),
            3 => "low".to_string(),
            n => n.to_string(),
        }),
        flags: flag_names(flags as u8),
        nexthops: hops.iter().map(|h| hop_view(m, h)).collect(),
    }
}

fn table_name(t: u32) -> String {
    crate::names::system().table_name(t)
}

/// One route in `ip route show` style. `with_table` adds `table T` (as `ip route show
/// table all` does for tables other than main).
pub fn format_route(r: &RouteView, with_table: bool) -> String {
    let mut s = String::new();
    if r.kind != "unicast" {
        let _ = write!(s, "{} ", r.kind);
    }
    if r.prefix.prefix_len() == 0 {
        s.push_str("default");
    } else if (r.family == Family::V4 && r.prefix.prefix_len() == 32)
        || r.prefix.prefix_len() == 128
    {
        let _ = write!(s, "{}", r.prefix.addr());
    } else {
        let _ = write!(s, "{}", r.prefix);
    }
    if let Some(from) = r.from {
        let _ = write!(s, " from {from}");
    }
    if r.tos != 0 {
        let _ = write!(s, " tos 0x{:x}", r.tos);
    }
    if let Some(id) = r.nhid {
        let _ = write!(s, " nhid {id}");
    }
    let single = (r.nexthops.len() == 1).then(|| &r.nexthops[0]);
    if let Some(e) = single.and_then(|h| h.encap.as_ref()) {
        let _ = write!(s, " {}", format_encap(e));
    }
    if let Some(h) = single {
        if let Some(gw) = h.gateway {
            let _ = write!(s, " via {gw}");
        }
        if let Some(dev) = &h.dev {
            let _ = write!(s, " dev {dev}");
        }
    }
    if with_table && r.table != table::MAIN {
        let _ = write!(s, " table {}", table_name(r.table));
    }
    if r.protocol != "boot" {
        let _ = write!(s, " proto {}", r.protocol);
    }
    let default_scope = match r.kind.as_str() {
        "local" | "nat" => scope::name(scope::HOST),
        "broadcast" | "multicast" | "anycast" => scope::name(scope::LINK),
        _ => scope::name(scope::UNIVERSE),
    };
    if Some(r.scope.as_str()) != default_scope {
        let _ = write!(s, " scope {}", r.scope);
    }
    if let Some(src) = r.prefsrc {
        let _ = write!(s, " src {src}");
    }
    if r.metric != 0 {
        let _ = write!(s, " metric {}", r.metric);
    }
    // `rtm_flags` (a single-path route's are its hop's), then metrics, as `ip route`.
    for f in &r.flags {
        let _ = write!(s, " {f}");
    }
    if let Some(f) = single.and_then(|h| h.flow) {
        let _ = write!(s, " {}", f.text());
    }
    format_metrics(&mut s, &r.metrics);
    if let Some(p) = &r.pref {
        let _ = write!(s, " pref {p}");
    }
    if r.nexthops.len() > 1 {
        for h in &r.nexthops {
            s.push_str(" \n\tnexthop");
            if let Some(e) = &h.encap {
                let _ = write!(s, " {}", format_encap(e));
            }
            if let Some(gw) = h.gateway {
                let _ = write!(s, " via {gw}");
            }
            if let Some(f) = h.flow {
                let _ = write!(s, " {}", f.text());
            }
            if let Some(dev) = &h.dev {
                let _ = write!(s, " dev {dev}");
            }
            let _ = write!(s, " weight {}", h.weight);
            for f in &h.flags {
                let _ = write!(s, " {f}");
            }
        }
    }
    s
}

/// Metrics as `ip route` prints them (`print_rta_metrics`): `mtu lock 1400`, `rtt 10ms`.
fn format_metrics(s: &mut String, m: &serde_json::Map<String, serde_json::Value>) {
    let locked: Vec<&str> = m
        .get("lock")
        .and_then(|l| l.as_array())
        .map(|l| l.iter().filter_map(|x| x.as_str()).collect())
        .unwrap_or_default();
    for (name, v) in m {
        if name == "lock" {
            continue;
        }
        let _ = write!(s, " {name}");
        if locked.contains(&name.as_str()) {
            s.push_str(" lock");
        }
        match (name.as_str(), v.as_u64()) {
            ("rtt" | "rttvar" | "rto_min", Some(x)) => {
                let ms = match name.as_str() {
                    "rtt" => x / 8,
                    "rttvar" => x / 4,
                    _ => x,
                };
                if ms >= 1000 {
                    let _ = write!(s, " {}s", ms as f64 / 1000.0);
                } else {
                    let _ = write!(s, " {ms}ms");
                }
            }
            ("features", Some(x)) if x & 1 != 0 => s.push_str(" ecn"),
            ("features", Some(x)) => {
                let _ = write!(s, " 0x{x:x}");
            }
            (_, Some(x)) => {
                let _ = write!(s, " {x}");
            }
            (_, None) => {
                let _ = write!(s, " {}", v.as_str().unwrap_or_default());
            }
        }
    }
}

/// One line of `route-mirror watch`: a change the mirror applied, or a marker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatchRecord {
    pub time_unix_ms: u64,
    /// `add`, `replace`, `delete`, or the markers `resync` (events were lost: refetch once
    /// `resync-done` follows) and `resync-done`.
    pub op: String,
    /// `event`, `inferred` (IPv4 removal the kernel did not announce), `scan`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<RouteView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// A policy rule added or removed: its family and `ip rule` line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// `op` is `copy`: what a copy (or declared route set) did to a kernel table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy: Option<CopyEvent>,
}

/// One write of a copy into its target table, as `route-mirror watch` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CopyEvent {
    /// The copy's name.
    pub name: String,
    /// The namespace written (`None`: the daemon's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    pub table: u32,
    pub prefix: IpNet,
    pub metric: u32,
    /// `installed`, `replaced`, `removed`, `reinstalled`, `failed` (the kernel refused:
    /// `error` says why; retried with backoff) or `unknown` (the outcome was lost:
    /// checked again).
    pub verdict: String,
    /// It undid someone else's delete or replace of a route of the copy.
    #[serde(default)]
    pub repair: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub fn format_watch(w: &WatchRecord) -> String {
    let secs = w.time_unix_ms / 1000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    let ts = format!("{h:02}:{m:02}:{s:02}.{:03}", w.time_unix_ms % 1000);
    let sign = match w.op.as_str() {
        "add" => "+",
        "replace" => "~",
        "delete" => "-",
        _ => "!",
    };
    let what = match (&w.route, &w.note) {
        _ if w.rule.is_some() => format!("rule {}", w.rule.as_deref().unwrap_or_default()),
        _ if w.copy.is_some() => {
            let c = w.copy.as_ref().expect("checked");
            let mut s = format!(
                "copy {}: {}{} {} metric {} table {}",
                c.name,
                c.verdict,
                if c.repair { " (repair)" } else { "" },
                c.prefix,
                c.metric,
                c.table
            );
            if let Some(ns) = &c.netns {
                let _ = write!(s, " netns {ns}");
            }
            if let Some(e) = &c.error {
                let _ = write!(s, ": {e}");
            }
            s
        }
        (Some(r), _) => format_route(r, true)
            .replace(" \n\t", " ")
            .replace('\n', " "),
        (None, Some(n)) => format!("{}: {n}", w.op),
        (None, None) => w.op.clone(),
    };
    let cause = w
        .cause
        .as_deref()
        .map(|c| format!(" [{c}]"))
        .unwrap_or_default();
    format!("{ts} {sign} {what}{cause}")
}

/// `rtn` name check used by the CLI to accept `show type blackhole` style filters later.
pub fn is_known_type(name: &str) -> bool {
    (0..=rtn::MAX_KNOWN).any(|t| rtn::name(t) == Some(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(kind: &str, prefix: &str, hops: Vec<HopView>) -> RouteView {
        RouteView {
            family: Family::V4,
            prefix: prefix.parse().unwrap(),
            table: 100,
            metric: 20,
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
            nexthops: hops,
        }
    }

    fn hop(gw: &str, dev: &str, w: u16) -> HopView {
        HopView {
            gateway: Some(gw.parse().unwrap()),
            dev: Some(dev.into()),
            ifindex: 3,
            weight: w,
            flags: vec![],
            encap: None,
            flow: None,
        }
    }

    #[test]
    fn formats_like_ip_route() {
        assert_eq!(
            format_route(
                &view("unicast", "1.0.0.0/24", vec![hop("198.18.1.2", "veth1", 1)]),
                true
            ),
            "1.0.0.0/24 via 198.18.1.2 dev veth1 table 100 metric 20"
        );
        assert_eq!(
            format_route(&view("blackhole", "0.0.0.0/0", vec![]), false),
            "blackhole default metric 20"
        );
        assert_eq!(
            format_route(&view("unicast", "10.0.0.0/8", vec![hop("198.18.1.2", "veth1", 1), hop("198.18.2.2", "veth2", 3)]), false),
            "10.0.0.0/8 metric 20 \n\tnexthop via 198.18.1.2 dev veth1 weight 1 \n\tnexthop via 198.18.2.2 dev veth2 weight 3"
        );
        assert!(is_known_type("prohibit"));
    }
}
