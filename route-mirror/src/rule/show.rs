//! Rules rendered as `ip rule` prints them (iproute2's `print_rule`): the text line and
//! the `ip -j rule` object, so that operators and scripts read the same thing from
//! both. Attributes iproute2 does not know (kept raw) are appended as `attr N 0xHEX`
//! (JSON: `"raw": [{"type": N, "hex": ...}]`).

use std::fmt::Write;

use serde_json::{json, Map, Value};

use super::{action, flags, fra, Rule};
use crate::model::{rtprot, Family};
use crate::names::Names;

/// What rendering needs besides the rule: names, and the state that the kernel's
/// derived flags come from.
pub struct ShowCtx<'a> {
    pub names: &'a Names,
    /// All rules of the rule's family (a goto is `[unresolved]` without its target).
    pub rules: &'a [Rule],
    /// Whether a device of this name exists (else `[detached]`).
    pub link_exists: &'a dyn Fn(&str) -> bool,
}

/// `rtnl_dsfield_n2a` with iproute2's shipped `rt_dsfield` names.
pub fn dsfield_name(tos: u8) -> String {
    let name = match tos {
        0x00 => "default",
        0x28 => "AF11",
        0x30 => "AF12",
        0x38 => "AF13",
        0x48 => "AF21",
        0x50 => "AF22",
        0x58 => "AF23",
        0x68 => "AF31",
        0x70 => "AF32",
        0x78 => "AF33",
        0x88 => "AF41",
        0x90 => "AF42",
        0x98 => "AF43",
        0x20 => "CS1",
        0x40 => "CS2",
        0x60 => "CS3",
        0x80 => "CS4",
        0xA0 => "CS5",
        0xC0 => "CS6",
        0xE0 => "CS7",
        0xB8 => "EF",
        _ => return format!("{tos:#x}"),
    };
    name.to_string()
}

/// `inet_proto_n2a` for the protocols of `/etc/protocols` that rules use.
pub fn ipproto_name(p: u8) -> String {
    let name = match p {
        1 => "icmp",
        2 => "igmp",
        4 => "ipencap",
        6 => "tcp",
        17 => "udp",
        33 => "dccp",
        41 => "ipv6",
        47 => "gre",
        50 => "esp",
        51 => "ah",
        58 => "ipv6-icmp",
        89 => "ospf",
        103 => "pim",
        112 => "vrrp",
        115 => "l2tp",
        132 => "sctp",
        136 => "udplite",
        137 => "mpls-in-ip",
        _ => return format!("ipproto-{p}"),
    };
    name.to_string()
}

/// Parses what [`ipproto_name`] prints, or a number.
pub fn parse_ipproto(s: &str) -> Option<u8> {
    if let Ok(n) = s.parse() {
        return Some(n);
    }
    let s = s.strip_prefix("ipproto-").unwrap_or(s);
    if let Ok(n) = s.parse() {
        return Some(n);
    }
    let alias = match s {
        "icmpv6" | "icmp6" => "ipv6-icmp",
        other => other,
    };
    (0..=u8::MAX).find(|&p| ipproto_name(p) == alias)
}

fn prefix_text(net: &ipnet::IpNet) -> (String, Option<u8>) {
    let host = match net {
        ipnet::IpNet::V4(_) => 32,
        ipnet::IpNet::V6(_) => 128,
    };
    let len = (net.prefix_len() != host).then_some(net.prefix_len());
    (net.addr().to_string(), len)
}

fn range(
    out: &mut String,
    json: &mut Map<String, Value>,
    key: &str,
    (a, b): (u16, u16),
    mask: Option<u16>,
) {
    if let Some(m) = mask.filter(|m| *m != u16::MAX) {
        let _ = write!(out, " {key} {a}/{m:#x}");
        json.insert(key.into(), json!(a));
        json.insert(format!("{key}_mask"), json!(format!("{m:#x}")));
    } else if a == b {
        let _ = write!(out, " {key} {a}");
        json.insert(key.into(), json!(a));
    } else {
        let _ = write!(out, " {key} {a}-{b}");
        json.insert(format!("{key}_start"), json!(a));
        json.insert(format!("{key}_end"), json!(b));
    }
}

/// The `ip rule` line (without the newline) and the `ip -j rule` object of `rule`.
pub fn render(rule: &Rule, ctx: &ShowCtx<'_>) -> (String, Value) {
    let mut s = format!("{}:\t", rule.priority);
    let mut j = Map::new();
    j.insert("priority".into(), json!(rule.priority));
    if rule.flags & flags::INVERT != 0 {
        s.push_str("not ");
        j.insert("not".into(), Value::Null);
    }
    match &rule.src {
        Some(n) => {
            let (a, len) = prefix_text(n);
            let _ = write!(s, "from {a}");
            j.insert("src".into(), json!(a));
            if let Some(l) = len {
                let _ = write!(s, "/{l}");
                j.insert("srclen".into(), json!(l));
            }
        }
        None => {
            s.push_str("from all");
            j.insert("src".into(), json!("all"));
        }
    }
    if let Some(n) = &rule.dst {
        let (a, len) = prefix_text(n);
        let _ = write!(s, " to {a}");
        j.insert("dst".into(), json!(a));
        if let Some(l) = len {
            let _ = write!(s, "/{l}");
            j.insert("dstlen".into(), json!(l));
        }
    }
    if rule.tos != 0 {
        let t = dsfield_name(rule.tos);
        let _ = write!(s, " tos {t}");
        j.insert("tos".into(), json!(t));
    }
    if rule.fwmark != 0 || rule.fwmask != 0 {
        let _ = write!(s, " fwmark {:#x}", rule.fwmark);
        j.insert("fwmark".into(), json!(format!("{:#x}", rule.fwmark)));
        if rule.fwmask != u32::MAX {
            let _ = write!(s, "/{:#x}", rule.fwmask);
            j.insert("fwmask".into(), json!(format!("{:#x}", rule.fwmask)));
        }
    }
    for (key, name) in [("iif", &rule.iif), ("oif", &rule.oif)] {
        if let Some(name) = name {
            let _ = write!(s, " {key} {name}");
            j.insert(key.into(), json!(name));
            if !(ctx.link_exists)(name) {
                s.push_str(" [detached]");
                j.insert(format!("{key}_detached"), Value::Null);
            }
        }
    }
    if rule.l3mdev {
        s.push_str(" lookup [l3mdev-table]");
        j.insert("l3mdev".into(), Value::Null);
    }
    if let Some((a, b)) = rule.uid_range {
        let _ = write!(s, " uidrange {a}-{b}");
        j.insert("uid_start".into(), json!(a));
        j.insert("uid_end".into(), json!(b));
    }
    if rule.ip_proto != 0 {
        let p = ipproto_name(rule.ip_proto);
        let _ = write!(s, " ipproto {p}");
        j.insert("ipproto".into(), json!(p));
    }
    if let Some(r) = rule.sport {
        range(&mut s, &mut j, "sport", r, rule.sport_mask);
    }
    if let Some(r) = rule.dport {
        range(&mut s, &mut j, "dport", r, rule.dport_mask);
    }
    if let Some(t) = rule.tun_id {
        let _ = write!(s, " tun_id {t}");
        j.insert("tun_id".into(), json!(t));
    }
    if rule.table != 0 {
        let t = ctx.names.table_name(rule.table);
        let _ = write!(s, " lookup {t}");
        j.insert("table".into(), json!(t));
        if let Some(pl) = rule.suppress_prefixlen {
            let _ = write!(s, " suppress_prefixlength {}", pl as i32);
            j.insert("suppress_prefixlen".into(), json!(pl as i32));
        }
        if let Some(g) = rule.suppress_ifgroup {
            let g = if g == 0 {
                "default".to_string()
            } else {
                (g as i32).to_string()
            };
            let _ = write!(s, " suppress_ifgroup {g}");
            j.insert("suppress_ifgroup".into(), json!(g));
        }
    }
    if let Some(flow) = rule.realms {
        let (from, to) = (flow >> 16, flow & 0xffff);
        if from != 0 {
            let _ = write!(s, " realms {from}/");
            j.insert("flow_from".into(), json!(from.to_string()));
        } else {
            s.push_str(" realms ");
        }
        let _ = write!(s, "{to}");
        j.insert("flow_to".into(), json!(to.to_string()));
    }
    match rule.action {
        action::GOTO => {
            match rule.goto {
                Some(t) => {
                    let _ = write!(s, " goto {t}");
                    j.insert("goto".into(), json!(t));
                }
                None => {
                    s.push_str(" goto none");
                    j.insert("goto".into(), json!("none"));
                }
            }
            if rule.unresolved(ctx.rules) {
                s.push_str(" [unresolved]");
                j.insert("unresolved".into(), Value::Null);
            }
        }
        action::NOP => {
            s.push_str(" nop");
            j.insert("nop".into(), Value::Null);
        }
        action::TO_TBL => {}
        a => {
            let name = crate::model::rtn::name(a).map_or_else(|| a.to_string(), str::to_string);
            let _ = write!(s, " {name}");
            j.insert("action".into(), json!(name));
        }
    }
    if rule.protocol != 0 && rule.protocol != rtprot::KERNEL {
        let p = ctx.names.proto_name(rule.protocol);
        let _ = write!(s, " proto {p}");
        j.insert("protocol".into(), json!(p));
    }
    if !rule.raw.is_empty() {
        let mut raw = Vec::new();
        for a in &rule.raw {
            let hex: String = a.value.iter().map(|b| format!("{b:02x}")).collect();
            let name = fra::name(a.kind)
                .map(|n| format!(" ({n})"))
                .unwrap_or_default();
            let _ = write!(s, " attr {}{name} 0x{hex}", a.kind);
            raw.push(json!({"type": a.kind, "hex": hex}));
        }
        j.insert("raw".into(), Value::Array(raw));
    }
    (s, Value::Object(j))
}

/// The heading `show rules` prints before each family when it lists both.
pub fn family_heading(f: Family) -> &'static str {
    match f {
        Family::V4 => "IPv4 rules:",
        Family::V6 => "IPv6 rules:",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rule::RawAttr;

    fn ctx<'a>(rules: &'a [Rule], names: &'a Names) -> ShowCtx<'a> {
        ShowCtx {
            names,
            rules,
            link_exists: &|n: &str| n != "nonexist",
        }
    }

    fn text(r: &Rule) -> String {
        let names = Names::builtin();
        let all = vec![r.clone()];
        render(r, &ctx(&all, &names)).0
    }

    /// Lines copied from `ip rule` (iproute2 6.1) for rules built to match.
    #[test]
    fn lines_match_ip_rule() {
        let v4 = Family::V4;
        assert_eq!(
            text(&Rule::to_table(v4, 0, 255)),
            "0:\tfrom all lookup local"
        );

        let mut r = Rule::to_table(v4, 230, 100);
        r.flags = flags::INVERT;
        r.fwmark = 5;
        r.fwmask = 0xf;
        r.sport = Some((1000, 2000));
        r.dport = Some((80, 80));
        r.protocol = 0;
        assert_eq!(
            text(&r),
            "230:\tnot from all fwmark 0x5/0xf sport 1000-2000 dport 80 lookup 100"
        );

        let mut r = Rule::to_table(v4, 240, 100);
        r.src = Some("10.0.0.0/8".parse().unwrap());
        r.fwmark = 7;
        r.fwmask = u32::MAX;
        r.iif = Some("veth0".into());
        r.oif = Some("veth1".into());
        r.suppress_prefixlen = Some(0);
        r.suppress_ifgroup = Some(5);
        r.protocol = 12;
        assert_eq!(
            text(&r),
            "240:\tfrom 10.0.0.0/8 fwmark 0x7 iif veth0 oif veth1 lookup 100 \
             suppress_prefixlength 0 suppress_ifgroup 5 proto bird"
        );

        let mut r = Rule::to_table(v4, 250, 0);
        r.action = action::GOTO;
        r.goto = Some(300);
        r.dst = Some("1.2.3.0/24".parse().unwrap());
        assert_eq!(
            text(&r),
            "250:\tfrom all to 1.2.3.0/24 goto 300 [unresolved]"
        );

        let mut r = Rule::to_table(v4, 260, 5);
        r.iif = Some("nonexist".into());
        assert_eq!(text(&r), "260:\tfrom all iif nonexist [detached] lookup 5");

        let mut r = Rule::to_table(v4, 100, 0);
        r.action = action::BLACKHOLE;
        r.dst = Some("203.0.113.0/24".parse().unwrap());
        assert_eq!(text(&r), "100:\tfrom all to 203.0.113.0/24 blackhole");

        let mut r = Rule::to_table(v4, 1000, 0);
        r.l3mdev = true;
        assert_eq!(text(&r), "1000:\tfrom all lookup [l3mdev-table]");

        let mut r = Rule::to_table(v4, 280, 7);
        r.src = Some("10.1.0.0/16".parse().unwrap());
        r.realms = Some(3 << 16 | 4);
        assert_eq!(text(&r), "280:\tfrom 10.1.0.0/16 lookup 7 realms 3/4");

        let mut r = Rule::to_table(v4, 220, 101);
        r.iif = Some("lo".into());
        r.ip_proto = 17;
        r.uid_range = Some((1000, 2000));
        assert_eq!(
            text(&r),
            "220:\tfrom all iif lo uidrange 1000-2000 ipproto udp lookup 101"
        );

        let mut r = Rule::to_table(Family::V6, 300, 100);
        r.src = Some("2001:db8::/32".parse().unwrap());
        r.tos = 0x20;
        assert_eq!(text(&r), "300:\tfrom 2001:db8::/32 tos CS1 lookup 100");

        let mut r = Rule::to_table(v4, 5, 5);
        r.src = Some("192.0.2.1/32".parse().unwrap());
        r.raw.push(RawAttr {
            kind: fra::DSCP,
            value: vec![0x0a],
        });
        assert_eq!(text(&r), "5:\tfrom 192.0.2.1 lookup 5 attr 25 (dscp) 0x0a");
    }

    #[test]
    fn json_has_ip_rule_keys() {
        let names = Names::builtin();
        let mut r = Rule::to_table(Family::V4, 230, 100);
        r.flags = flags::INVERT;
        r.fwmark = 5;
        r.fwmask = 0xf;
        r.sport = Some((1000, 2000));
        r.dport = Some((80, 80));
        let all = vec![r.clone()];
        let (_, j) = render(&r, &ctx(&all, &names));
        assert_eq!(
            j,
            json!({"priority": 230, "not": null, "src": "all", "fwmark": "0x5",
                   "fwmask": "0xf", "sport_start": 1000, "sport_end": 2000, "dport": 80,
                   "table": "100"})
        );
    }

    #[test]
    fn ipproto_names_round_trip() {
        for p in [1u8, 6, 17, 58, 132, 200] {
            assert_eq!(parse_ipproto(&ipproto_name(p)), Some(p));
        }
        assert_eq!(parse_ipproto("icmpv6"), Some(58));
        assert_eq!(parse_ipproto("bogus"), None);
    }
}
