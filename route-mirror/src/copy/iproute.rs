//! Declared routes in `ip route` syntax: one route per line, as after `ip route add`
//! (a leading `ip`, `-4`/`-6`, `route`, and `add`/`replace`/`append` are accepted, so a
//! file written for `ip -batch` reads as it is). Defaults follow iproute2: metric 1024
//! for IPv6 (0 for IPv4), scope `link` for a unicast route without a gateway, `host` for
//! `local`, `link` for `broadcast`/`multicast`/`anycast`, else `global`.
//!
//! Anything not understood is an error naming the line and the word: a declared route
//! the daemon would install differently from what the file says must not pass silently.
//! `proto` is accepted and ignored (declared routes carry the daemon's own protocol).

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use smallvec::SmallVec;
use thiserror::Error;

use super::want::{Want, WantHop};
use crate::model::{rtax, rtn, rtnh, scope, Family, MetricValue, Metrics};
use crate::names::Names;

/// One declared route: the table its line names (if any) and the route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declared {
    pub table: Option<u32>,
    pub want: Want,
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error("line {line}: {msg}")]
pub struct ParseError {
    pub line: usize,
    pub msg: String,
}

/// Parses a file's text: blank lines and `#` comments are skipped.
pub fn parse_text(text: &str, names: &Names) -> Result<Vec<Declared>, ParseError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        out.push(parse_line(line, names).map_err(|msg| ParseError { line: i + 1, msg })?);
    }
    Ok(out)
}

fn route_type(s: &str) -> Option<u8> {
    Some(match s {
        "unicast" => rtn::UNICAST,
        "local" => rtn::LOCAL,
        "broadcast" => rtn::BROADCAST,
        "anycast" => rtn::ANYCAST,
        "multicast" => rtn::MULTICAST,
        "blackhole" => rtn::BLACKHOLE,
        "unreachable" => rtn::UNREACHABLE,
        "prohibit" => rtn::PROHIBIT,
        "throw" => rtn::THROW,
        "nat" => rtn::NAT,
        _ => return None,
    })
}

fn scope_of(s: &str) -> Option<u8> {
    Some(match s {
        "global" | "universe" => scope::UNIVERSE,
        "site" => scope::SITE,
        "link" => scope::LINK,
        "host" => scope::HOST,
        "nowhere" => scope::NOWHERE,
        n => n.parse().ok()?,
    })
}

fn number<T: std::str::FromStr>(what: &str, v: Option<&str>) -> Result<T, String> {
    let v = v.ok_or_else(|| format!("`{what}` needs a value"))?;
    v.parse()
        .map_err(|_| format!("`{what} {v}`: not a valid number"))
}

fn addr(what: &str, v: Option<&str>) -> Result<IpAddr, String> {
    let v = v.ok_or_else(|| format!("`{what}` needs an address"))?;
    v.parse()
        .map_err(|_| format!("`{what} {v}`: not an IP address"))
}

/// `default`, `ADDR` or `ADDR/LEN`; host bits must be clear (the kernel refuses them).
fn prefix(s: &str, family: Option<Family>) -> Result<IpNet, String> {
    if s == "default" || s == "all" || s == "any" {
        return Ok(family.unwrap_or(Family::V4).default_net());
    }
    let net: IpNet = match s.parse() {
        Ok(n) => n,
        Err(_) => {
            let a: IpAddr = s.parse().map_err(|_| format!("{s:?} is not a prefix"))?;
            IpNet::from(a)
        }
    };
    if net.trunc() != net {
        return Err(format!(
            "{s}: host bits set (did you mean {}?)",
            net.trunc()
        ));
    }
    Ok(net)
}

/// One line (without its comment).
pub fn parse_line(line: &str, names: &Names) -> Result<Declared, String> {
    let mut words = line.split_whitespace().peekable();
    let mut family = None;
    // Preamble: `ip [-4|-6] route add`, any part of it.
    loop {
        match words.peek().copied() {
            Some("ip") | Some("route") | Some("r") | Some("ro") => {}
            Some("-4") => family = Some(Family::V4),
            Some("-6") => family = Some(Family::V6),
            Some("add") | Some("a") | Some("replace") | Some("append") => {}
            _ => break,
        }
        words.next();
    }
    let words: Vec<&str> = words.collect();
    let mut i = 0;
    let mut kind = rtn::UNICAST;
    if let Some(t) = words.first().and_then(|w| route_type(w)) {
        kind = t;
        i += 1;
    }
    let dst_word = *words.get(i).ok_or("no destination prefix")?;
    i += 1;
    let mut table = None;
    let mut tos = 0u8;
    let mut metric: Option<u32> = None;
    let mut scope_set: Option<u8> = None;
    let mut src: Option<IpNet> = None;
    let mut prefsrc = None;
    let mut pref = None;
    let mut mtu = None;
    let mut nh_id = None;
    // Hop 0 is the route's own (`via`, `dev`); `nexthop` starts further ones.
    let mut hops: Vec<WantHop> = vec![WantHop::default_hop()];
    let mut multipath = false;
    while i < words.len() {
        let w = words[i];
        let val = words.get(i + 1).copied();
        let hop = hops.last_mut().expect("one hop");
        i += 2;
        match w {
            "via" => {
                // `via inet6 ADDR` / `via inet ADDR`
                let (v, skip) = match val {
                    Some("inet") | Some("inet6") => (words.get(i).copied(), 1),
                    _ => (val, 0),
                };
                i += skip;
                hop.gateway = Some(addr("via", v)?);
            }
            "dev" | "oif" => {
                hop.dev = Some(Arc::from(val.ok_or("`dev` needs a device name")?));
            }
            "weight" if multipath => {
                let wt: u16 = number("weight", val)?;
                if !(1..=256).contains(&wt) {
                    return Err(format!("weight {wt}: must be 1 to 256"));
                }
                hop.weight = wt;
            }
            "onlink" => {
                hop.flags |= rtnh::ONLINK;
                i -= 1;
            }
            "pervasive" => {
                hop.flags |= rtnh::PERVASIVE;
                i -= 1;
            }
            "nexthop" => {
                if !multipath {
                    if hops[0] != WantHop::default_hop() {
                        return Err(
                            "`via`/`dev` before `nexthop`: give every hop as `nexthop ...`".into(),
                        );
                    }
                    hops.clear();
                    multipath = true;
                }
                hops.push(WantHop::default_hop());
                i -= 1;
            }
            "table" => {
                let v = val.ok_or("`table` needs a table")?;
                table = Some(
                    names
                        .parse_table(v)
                        .filter(|&t| t != 0)
                        .ok_or_else(|| format!("`table {v}`: not a table id or name"))?,
                );
            }
            "metric" | "priority" | "preference" => metric = Some(number(w, val)?),
            "tos" | "dsfield" => {
                let v = val.ok_or("`tos` needs a value")?;
                tos = u8::from_str_radix(v.trim_start_matches("0x"), 16)
                    .map_err(|_| format!("`tos {v}`: not a TOS value"))?;
            }
            "scope" => {
                let v = val.ok_or("`scope` needs a value")?;
                scope_set = Some(scope_of(v).ok_or_else(|| format!("`scope {v}`: unknown scope"))?);
            }
            "src" => prefsrc = Some(addr("src", val)?),
            "from" => src = Some(prefix(val.ok_or("`from` needs a prefix")?, family)?),
            "pref" => {
                pref = Some(match val {
                    Some("low") => 3,
                    Some("medium") => 0,
                    Some("high") => 1,
                    v => return Err(format!("`pref {}`: low, medium or high", v.unwrap_or(""))),
                })
            }
            "mtu" => {
                let v = if val == Some("lock") {
                    return Err("`mtu lock` is not supported".into());
                } else {
                    number("mtu", val)?
                };
                mtu = Some(v);
            }
            "nhid" => nh_id = Some(number("nhid", val)?),
            "proto" | "protocol" => {
                val.ok_or("`proto` needs a value")?;
            }
            other => return Err(format!("`{other}`: not supported in a declared route")),
        }
    }
    // The family: -4/-6, else the prefix, else (for `default`) the first gateway.
    let gw_family = hops.iter().find_map(|h| h.gateway.map(|g| Family::of(&g)));
    let dst = prefix(dst_word, family.or(gw_family))?;
    let family = Family::of_net(&dst);
    if let Some(s) = src {
        if family == Family::V4 {
            return Err("`from` (a source prefix) is IPv6 only".into());
        }
        if Family::of_net(&s) != family {
            return Err(format!("`from {s}`: not an {family} prefix"));
        }
    }
    if family == Family::V6 && tos != 0 {
        return Err("`tos` is IPv4 only".into());
    }
    if let Some(p) = prefsrc {
        if Family::of(&p) != family {
            return Err(format!("`src {p}`: not an {family} address"));
        }
    }
    if !multipath && hops[0] == WantHop::default_hop() {
        hops.clear();
    }
    for h in &hops {
        if let Some(g) = h.gateway {
            if family == Family::V6 && g.is_ipv4() {
                return Err(format!("`via {g}`: an IPv6 route needs an IPv6 gateway"));
            }
        } else if h.dev.is_none() {
            return Err("a `nexthop` without `via` or `dev`".into());
        }
    }
    let forwards = matches!(kind, rtn::UNICAST);
    if forwards && hops.is_empty() && nh_id.is_none() {
        return Err("a unicast route needs `via`, `dev`, `nexthop` or `nhid`".into());
    }
    if !forwards
        && !hops.is_empty()
        && !matches!(
            kind,
            rtn::LOCAL | rtn::BROADCAST | rtn::ANYCAST | rtn::MULTICAST
        )
    {
        return Err(format!(
            "a {} route has no next hop",
            crate::model::rtn::name(kind).unwrap_or("typed")
        ));
    }
    if nh_id.is_some() && !hops.is_empty() {
        return Err("`nhid` and `via`/`dev`/`nexthop` together".into());
    }
    let scope = scope_set.unwrap_or(match kind {
        rtn::LOCAL | rtn::NAT => scope::HOST,
        rtn::BROADCAST | rtn::MULTICAST | rtn::ANYCAST => scope::LINK,
        rtn::UNICAST if nh_id.is_none() && hops.iter().all(|h| h.gateway.is_none()) => scope::LINK,
        _ => scope::UNIVERSE,
    });
    let metric = metric.unwrap_or(if family == Family::V6 { 1024 } else { 0 });
    Ok(Declared {
        table,
        want: Want {
            dst,
            tos,
            metric,
            src,
            kind,
            scope,
            prefsrc,
            pref,
            metrics: Metrics::new(
                mtu.map(|m| (rtax::MTU, MetricValue::U32(m)))
                    .into_iter()
                    .collect(),
            ),
            nh_id,
            hops: SmallVec::from_vec(hops),
        },
    })
}

impl WantHop {
    fn default_hop() -> WantHop {
        WantHop {
            gateway: None,
            dev: None,
            weight: 1,
            flags: 0,
            encap: None,
            realms: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(s: &str) -> Declared {
        parse_line(s, &Names::builtin()).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn err(s: &str) -> String {
        parse_line(s, &Names::builtin()).unwrap_err()
    }

    #[test]
    fn ip_route_add_forms() {
        let d = one("ip route add 10.0.0.0/24 via 198.18.1.2 dev veth1 metric 10 table 200");
        assert_eq!(d.table, Some(200));
        let w = d.want;
        assert_eq!(
            (w.dst.to_string(), w.metric, w.scope),
            ("10.0.0.0/24".into(), 10, 0)
        );
        assert_eq!(w.hops.len(), 1);
        assert_eq!(w.hops[0].dev.as_deref(), Some("veth1"));
        // As an `ip -batch` line, with a type; defaults of iproute2.
        let w = one("route add blackhole 10.1.0.0/16").want;
        assert_eq!((w.kind, w.metric, w.scope), (rtn::BLACKHOLE, 0, 0));
        assert!(w.hops.is_empty());
        let w = one("10.2.0.0/16 dev veth2 src 198.18.2.1").want;
        assert_eq!(w.scope, scope::LINK);
        assert_eq!(w.prefsrc, Some("198.18.2.1".parse().unwrap()));
        let w = one("2001:db8::/32 via 2001:2:0:1::2 dev veth1 pref high mtu 1400").want;
        assert_eq!(
            (w.metric, w.pref, w.metrics.get(rtax::MTU)),
            (1024, Some(1), Some(1400))
        );
        let w = one("default via 2001:2:0:1::2 dev veth1").want;
        assert_eq!(w.dst.to_string(), "::/0");
        assert_eq!(one("-6 unreachable default").want.dst.to_string(), "::/0");
        assert_eq!(
            one("unreachable default table main").want.dst.to_string(),
            "0.0.0.0/0"
        );
        let w = one("10.3.0.0/16 nexthop via 198.18.1.2 dev veth1 weight 2 nexthop via 198.18.2.2 dev veth2 onlink").want;
        assert_eq!(w.hops.len(), 2);
        assert_eq!((w.hops[0].weight, w.hops[1].flags), (2, rtnh::ONLINK));
        let w = one("192.0.2.7 dev veth1 proto static scope host").want;
        assert_eq!(
            (w.dst.to_string(), w.scope),
            ("192.0.2.7/32".into(), scope::HOST)
        );
        assert_eq!(one("10.4.0.0/16 nhid 7").want.nh_id, Some(7));
        assert_eq!(one("10.5.0.0/16 tos 0x10 dev veth1").want.tos, 0x10);
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert!(
            err("10.0.0.1/8 dev veth1").contains("host bits"),
            "{}",
            err("10.0.0.1/8 dev veth1")
        );
        assert!(err("10.0.0.0/8").contains("needs `via`"));
        assert!(err("10.0.0.0/8 via banana").contains("not an IP address"));
        assert!(err("10.0.0.0/8 dev veth1 advmss 1400").contains("`advmss`"));
        assert!(err("10.0.0.0/8 dev veth1 table nosuch").contains("nosuch"));
        assert!(err("blackhole 10.0.0.0/8 dev veth1").contains("no next hop"));
        assert!(err("2001:db8::/32 via 198.18.1.2").contains("IPv6 gateway"));
        assert!(err("10.0.0.0/8 from 10.0.0.0/16 dev veth1").contains("IPv6 only"));
        assert!(err("").contains("no destination"));
        let e = parse_text(
            "# pins\n10.0.0.0/8 dev veth1\n\n10.1.0.0/16 bogus\n",
            &Names::builtin(),
        )
        .unwrap_err();
        assert_eq!(e.line, 4);
    }
}
