//! `lookup` through the policy rules: the flow fields of `ip route get`, the rule walk
//! ([`crate::fib::rules`]) and the answer as JSON: the route object `lookup` always
//! printed, plus `rule` (the priority that decided) and `result`; for a multipath route,
//! the next hop the kernel's hash picks or why it cannot be known.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::fib::flow::Flow;
use crate::fib::multipath::{flow_hash, select, HashConfig};
use crate::fib::rules::{ExactTables, Outcome};
use crate::fib::Entry;
use crate::mirror::Mirror;
use crate::model::{rtn, rtnh, Family};
use crate::rule::action;
use crate::view::{route_view, RouteContext};

/// The flow fields of a lookup beyond its address and TOS (all optional; names of
/// devices are resolved by the daemon).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowArgs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iif: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oif: Option<String>,
    /// A VRF device: `ip route get ... vrf NAME` (the VRF as output device).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vrf: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mark: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipproto: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sport: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dport: Option<u16>,
}

impl FlowArgs {
    pub fn is_empty(&self) -> bool {
        *self == FlowArgs::default()
    }
}

/// The flow for `addr`, device names resolved against the mirror's links.
pub fn flow(m: &Mirror, addr: IpAddr, tos: u8, a: &FlowArgs) -> Result<Flow, String> {
    let dev = |n: &Option<String>, what: &str| -> Result<Option<u32>, String> {
        match n {
            None => Ok(None),
            Some(n) => m
                .rules
                .links
                .ifindex(n)
                .or_else(|| m.ifindex_by_name(n))
                .map(Some)
                .ok_or_else(|| format!("{what} {n:?}: no such device")),
        }
    };
    let mut oif = dev(&a.oif, "oif")?;
    if let Some(v) = &a.vrf {
        let (i, _) = m
            .rules
            .links
            .vrf_by_name(v)
            .ok_or_else(|| format!("vrf {v:?}: no such VRF device"))?;
        if oif.is_some() {
            return Err("--vrf and --oif both name the output device".into());
        }
        oif = Some(i);
    }
    if let Some(s) = a.from {
        if Family::of(&s) != Family::of(&addr) {
            return Err(format!("--from {s} is not of the family of {addr}"));
        }
    }
    Ok(Flow {
        dst: addr,
        src: a.from,
        iif: dev(&a.iif, "iif")?,
        oif,
        mark: a.mark.unwrap_or(0),
        uid: a.uid,
        ipproto: a.ipproto.unwrap_or(0),
        sport: a.sport.unwrap_or(0),
        dport: a.dport.unwrap_or(0),
        tos,
    })
}

fn strerror(errno: i32) -> String {
    std::io::Error::from_raw_os_error(errno)
        .to_string()
        .split(" (os error")
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Adds `rule` and `result` (and `error` for reject routes) to a route object.
pub fn decorate(v: &mut Value, rule: Option<u32>, kind: u8) {
    if let Some(r) = rule {
        v["rule"] = json!(r);
    }
    let err = crate::fib::rules::route_errno(kind);
    v["result"] = json!(if err.is_some() {
        rtn::name(kind).unwrap_or("reject")
    } else {
        "route"
    });
    if let Some(e) = err {
        v["error"] = json!(strerror(e));
    }
}

/// The multipath hash sysctls of namespace `ns` (read from a thread inside it: `/proc/
/// sys/net` shows the reading thread's namespace).
pub fn hash_config(ns: Option<String>) -> HashConfig {
    crate::netns::run_in(ns, || {
        Ok(HashConfig::read(std::path::Path::new("/proc/sys/net")))
    })
    .unwrap_or_default()
}

/// Answers one flow through the rules: the route object with `rule` and `result`, an
/// object for a rule action (`{"result": "blackhole", "rule": N, ...}`), or `null` when
/// nothing routes it. `Err`: a rule on the way cannot be evaluated, or bad arguments.
pub fn answer(m: &Mirror, f: &Flow, hash: Option<&HashConfig>) -> Result<Value, String> {
    if let Some(v) = bad_source(f, |s| m.addrs.keys().any(|a| a.addr == s)) {
        return Ok(v);
    }
    let set = m.rules.set();
    let links = &m.rules.links;
    let kf = f.kernel(links, set.dissects(f.family()));
    let hops = |a: &crate::model::RouteAttrs| m.effective_hops(a);
    let usable = |fam, e: &crate::fib::Entry| m.usable(fam, &e.attrs);
    let o = set.decide(
        &kf,
        &ExactTables::new(&m.fib, &hops).with_usable(&usable),
        links,
    );
    outcome_value(m, o, f, hash)
}

/// An output lookup from a source address the host does not have fails in the kernel
/// (`ip_route_output_key_hash_rcu`): say so rather than answer a route.
pub fn bad_source(f: &Flow, local: impl Fn(IpAddr) -> bool) -> Option<Value> {
    match (f.iif, f.src, f.family()) {
        (None, Some(s), Family::V4) if !s.is_unspecified() && !local(s) => Some(json!({
            "result": "error",
            "error": strerror(libc::ENETUNREACH),
            "why": format!("{s} is not a local address: an output lookup from it fails \
                           (give --iif for traffic forwarded from it)"),
        })),
        _ => None,
    }
}

/// The JSON of a rule walk's outcome, rendered with `ctx`'s names.
pub fn outcome_value<C: RouteContext + ?Sized>(
    ctx: &C,
    o: Outcome<(ipnet::IpNet, &Entry)>,
    f: &Flow,
    hash: Option<&HashConfig>,
) -> Result<Value, String> {
    match o {
        Outcome::Route {
            rule,
            table,
            route: (net, e),
            kind,
        } => {
            let mut v = serde_json::to_value(route_view(ctx, table, net, e)).unwrap_or(Value::Null);
            decorate(&mut v, Some(rule), kind);
            let err = crate::fib::rules::route_errno(kind);
            // With liveness: a dead hop is not chosen (fib_select_multipath).
            let hops = ctx.dumped_hops(crate::model::Family::of_net(&net), &e.attrs);
            if err.is_none() && hops.len() > 1 {
                let usable: Vec<(u32, bool)> = hops
                    .iter()
                    .map(|h| (u32::from(h.weight.max(1)), h.flags & rtnh::DEAD == 0))
                    .collect();
                let cfg = hash.copied().unwrap_or_default();
                // An output lookup through a device takes the first live hop on it (IPv4
                // `fib_table_lookup`; IPv6 without a source, `RT6_LOOKUP_F_IFACE`).
                let on_oif = f
                    .oif
                    .filter(|_| f.iif.is_none() && (f.family() == Family::V4 || f.src.is_none()))
                    .and_then(|oif| {
                        hops.iter()
                            .position(|h| h.ifindex == oif && h.flags & rtnh::DEAD == 0)
                    });
                v["multipath"] = match on_oif {
                    Some(i) => json!({"hop": i, "why": "output device"}),
                    None => match flow_hash(&cfg, f) {
                        Ok(h) => match select(h, &usable) {
                            Some(i) => json!({"hop": i, "hash": h}),
                            None => json!({"per_flow": "no usable next hop"}),
                        },
                        Err(why) => json!({"per_flow": why.to_string()}),
                    },
                };
            }
            Ok(v)
        }
        Outcome::Action { rule, action: a } => {
            let errno = Outcome::<()>::Action { rule, action: a }
                .errno()
                .unwrap_or(0);
            Ok(json!({
                "result": match a {
                    action::UNREACHABLE => "unreachable",
                    action::PROHIBIT => "prohibit",
                    _ => "blackhole",
                },
                "rule": rule,
                "error": strerror(errno),
            }))
        }
        Outcome::NoRoute => Ok(Value::Null),
        Outcome::OnLink { oif } => {
            let dev = ctx
                .link_name(oif)
                .map_or_else(|| format!("ifindex {oif}"), str::to_string);
            Ok(json!({
                "result": "onlink",
                "oif": dev,
                "error": strerror(libc::EHOSTUNREACH),
                "why": format!(
                    "no route leaves through {dev}: the kernel sends {} on-link through it \
                     without a route (`ip route get` without fibmatch shows that)",
                    f.dst
                ),
            }))
        }
        Outcome::CannotEvaluate { rule, why } => Err(format!("cannot evaluate rule {rule}: {why}")),
    }
}

/// The `ip route get`-style text of an answer.
pub fn format_answer(addr: IpAddr, v: &Value) -> Result<String, serde_json::Error> {
    if v.is_null() {
        return Ok(format!("no route to {addr}"));
    }
    if v.get("prefix").is_none() {
        let rule = v
            .get("rule")
            .map(|r| format!(" (rule {r})"))
            .unwrap_or_default();
        let err = v["error"].as_str().unwrap_or_default();
        let why = v
            .get("why")
            .and_then(Value::as_str)
            .map(|w| format!(": {w}"))
            .unwrap_or_default();
        return Ok(format!(
            "{} {addr}{rule}: {err}{why}",
            v["result"].as_str().unwrap_or("error")
        ));
    }
    let r: crate::view::RouteView = serde_json::from_value(v.clone())?;
    let mut s = crate::view::format_route(&r, true);
    if let Some(rule) = v.get("rule") {
        s.push_str(&format!("\n    rule {rule}"));
    }
    if let Some(e) = v.get("error").and_then(Value::as_str) {
        s.push_str(&format!(" ({e})"));
    }
    match v.get("multipath") {
        Some(mp) if mp.get("hop").is_some() => {
            let i = mp["hop"].as_u64().unwrap_or(0) as usize;
            if let Some(h) = r.nexthops.get(i) {
                let via = h.gateway.map(|g| format!("via {g} ")).unwrap_or_default();
                let dev = h
                    .dev
                    .as_deref()
                    .map(|d| format!("dev {d}"))
                    .unwrap_or_default();
                s.push_str(&format!(
                    "\n    chosen next hop: {via}{dev} (hop {})",
                    i + 1
                ));
            }
        }
        Some(mp) => {
            if let Some(w) = mp.get("per_flow").and_then(Value::as_str) {
                s.push_str(&format!("\n    next hop: {w}"));
            }
        }
        None => {}
    }
    Ok(s)
}
