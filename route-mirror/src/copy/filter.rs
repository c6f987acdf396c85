//! What a copy takes from its source table ([`Filter`]) and what it does to the next
//! hops ([`Rewrite`]).
//!
//! Prefix ranges read like FRR prefix lists (`10.0.0.0/8 le 24`, `ge`, both) or BIRD
//! (`10.0.0.0/8{16,24}`, `10.0.0.0/8+`); a bare prefix matches only itself.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;
use smallvec::smallvec;

use super::iproute;
use super::want::{Want, WantHop, DEFAULT_KINDS};
use crate::model::{rtn, scope, Family};
use crate::names::Names;

/// A prefix and the lengths of the routes inside it that match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PrefixRange {
    pub net: IpNet,
    pub min: u8,
    pub max: u8,
}

impl PrefixRange {
    pub fn matches(&self, dst: &IpNet) -> bool {
        let len = dst.prefix_len();
        len >= self.min && len <= self.max && self.net.contains(dst)
    }

    pub fn parse(s: &str) -> Result<PrefixRange, String> {
        let s = s.trim();
        let bad = || {
            format!("{s:?}: not a prefix range (`NET`, `NET le N`, `NET ge N le M`, `NET{{A,B}}`, `NET+`)")
        };
        let (net_text, rest) = match s.find(|c: char| c == '{' || c == '+' || c.is_whitespace()) {
            Some(i) => (&s[..i], s[i..].trim()),
            None => (s, ""),
        };
        let net: IpNet = net_text.parse().map_err(|_| bad())?;
        if net.trunc() != net {
            return Err(format!(
                "{s:?}: host bits set (did you mean {}?)",
                net.trunc()
            ));
        }
        let len = net.prefix_len();
        let max_len = net.max_prefix_len();
        let (min, max) = if rest.is_empty() {
            (len, len)
        } else if rest == "+" {
            (len, max_len)
        } else if let Some(inner) = rest.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
            let (a, b) = inner.split_once(',').ok_or_else(bad)?;
            (
                a.trim().parse().map_err(|_| bad())?,
                b.trim().parse().map_err(|_| bad())?,
            )
        } else {
            let words: Vec<&str> = rest.split_whitespace().collect();
            let (mut min, mut max) = (len, len);
            let mut ge = false;
            let mut le = false;
            for pair in words.chunks(2) {
                let [k, v] = pair else { return Err(bad()) };
                let v: u8 = v.parse().map_err(|_| bad())?;
                match *k {
                    "ge" => (min, ge) = (v, true),
                    "le" => (max, le) = (v, true),
                    _ => return Err(bad()),
                }
            }
            // FRR: `ge N` alone means N..=max, `le M` alone len..=M.
            if ge && !le {
                max = max_len;
            }
            (min, max)
        };
        if min < len || max > max_len || min > max {
            return Err(format!(
                "{s:?}: lengths {min}..{max} must lie within {len}..{max_len}"
            ));
        }
        Ok(PrefixRange { net, min, max })
    }
}

impl fmt::Display for PrefixRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{{{},{}}}", self.net, self.min, self.max)
    }
}

/// Which routes of the source table a copy takes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Filter {
    /// Empty: both.
    pub families: Vec<Family>,
    /// Empty: every prefix.
    pub prefixes: Vec<PrefixRange>,
    pub exclude: Vec<PrefixRange>,
    /// `RTPROT_*`; `None`: any protocol.
    pub protocols: Option<Vec<u8>>,
    /// `RTN_*` types taken (default: [`DEFAULT_KINDS`]).
    pub kinds: Vec<u8>,
}

impl Default for Filter {
    fn default() -> Filter {
        Filter {
            families: Vec::new(),
            prefixes: Vec::new(),
            exclude: Vec::new(),
            protocols: None,
            kinds: DEFAULT_KINDS.to_vec(),
        }
    }
}

impl Filter {
    /// Whether a prefix can hold routes this copy takes (cheap; before reading routes).
    pub fn admits_prefix(&self, dst: &IpNet) -> bool {
        (self.families.is_empty() || self.families.contains(&Family::of_net(dst)))
            && (self.prefixes.is_empty() || self.prefixes.iter().any(|p| p.matches(dst)))
            && !self.exclude.iter().any(|p| p.matches(dst))
    }

    /// Whether a source route with this protocol and type is taken.
    pub fn admits_route(&self, protocol: u8, kind: u8) -> bool {
        self.kinds.contains(&kind)
            && self
                .protocols
                .as_ref()
                .is_none_or(|p| p.contains(&protocol))
    }

    pub fn parse_family(s: &str) -> Result<Family, String> {
        match s {
            "4" | "inet" | "ipv4" => Ok(Family::V4),
            "6" | "inet6" | "ipv6" => Ok(Family::V6),
            _ => Err(format!("{s:?} is not a family (4 or 6)")),
        }
    }

    pub fn parse_kind(s: &str) -> Result<u8, String> {
        (0..=rtn::MAX_KNOWN)
            .find(|&k| rtn::name(k) == Some(s))
            .or_else(|| s.parse().ok())
            .ok_or_else(|| format!("{s:?} is not a route type"))
    }

    pub fn parse_protocol(s: &str, names: &Names) -> Result<u8, String> {
        names
            .parse_proto(s)
            .ok_or_else(|| format!("{s:?} is not a protocol number or a name in rt_protos"))
    }
}

/// What a copy does to the next hops of the unicast routes it takes. Routes of other
/// types (blackhole, unreachable...) have none and are copied as they are.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Rewrite {
    /// The source's next hops, devices by name (the target needs the same names).
    #[default]
    Keep,
    /// Every route becomes a blackhole.
    Blackhole,
    /// One next hop for every route of a family (`via GW dev DEV`, or `dev DEV`).
    Hops {
        v4: Option<WantHop>,
        v6: Option<WantHop>,
    },
}

impl Rewrite {
    /// `keep`, `blackhole`, or one `[via GW] dev DEV [onlink]` per family (a `dev`-only
    /// hop serves both).
    pub fn parse(specs: &[String]) -> Result<Rewrite, String> {
        match specs {
            [] => return Ok(Rewrite::Keep),
            [one] if one.trim() == "keep" => return Ok(Rewrite::Keep),
            [one] if one.trim() == "blackhole" => return Ok(Rewrite::Blackhole),
            _ => {}
        }
        let (mut v4, mut v6) = (None, None);
        for s in specs {
            // Read as the next hop of a route through the `ip route` parser.
            let d = iproute::parse_line(&format!("0.0.0.0/0 {s}"), &Names::builtin())
                .or_else(|_| iproute::parse_line(&format!("::/0 {s}"), &Names::builtin()))
                .map_err(|e| format!("next hop {s:?}: {e}"))?;
            let [hop] = d.want.hops.as_slice() else {
                return Err(format!("next hop {s:?}: give exactly one `via`/`dev`"));
            };
            let fams: &[Family] = match hop.gateway {
                Some(IpAddr::V4(_)) => &[Family::V4],
                Some(IpAddr::V6(_)) => &[Family::V4, Family::V6],
                None => &[Family::V4, Family::V6],
            };
            for f in fams {
                let slot = match f {
                    Family::V4 => &mut v4,
                    Family::V6 => &mut v6,
                };
                // A gateway of the family's own wins over a device-only hop, which wins
                // over an IPv6 gateway for IPv4 routes.
                let rank = match hop.gateway {
                    Some(g) if Family::of(&g) == *f => 2,
                    None => 1,
                    Some(_) => 0,
                };
                match slot {
                    Some((_, r)) if *r == rank => {
                        return Err(format!("two next hops for {f} routes"));
                    }
                    Some((_, r)) if *r > rank => {}
                    _ => *slot = Some((hop.clone(), rank)),
                }
            }
        }
        Ok(Rewrite::Hops {
            v4: v4.map(|(h, _)| h),
            v6: v6.map(|(h, _)| h),
        })
    }

    /// Whether routes of `family` can be rewritten (a `Hops` rewrite may lack one).
    pub fn serves(&self, family: Family) -> bool {
        match self {
            Rewrite::Hops { v4, v6 } => match family {
                Family::V4 => v4.is_some(),
                Family::V6 => v6.is_some(),
            },
            _ => true,
        }
    }

    /// Rewrites `w` (a unicast route) in place. The source's preferred source address
    /// goes with its next hops.
    pub fn apply(&self, w: &mut Want) {
        if w.kind != rtn::UNICAST {
            return;
        }
        match self {
            Rewrite::Keep => {}
            Rewrite::Blackhole => {
                w.kind = rtn::BLACKHOLE;
                w.scope = scope::UNIVERSE;
                w.hops.clear();
                w.prefsrc = None;
            }
            Rewrite::Hops { v4, v6 } => {
                let hop = match w.family() {
                    Family::V4 => v4,
                    Family::V6 => v6,
                };
                if let Some(h) = hop {
                    w.scope = if h.gateway.is_some() {
                        scope::UNIVERSE
                    } else {
                        scope::LINK
                    };
                    w.hops = smallvec![h.clone()];
                    w.prefsrc = None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> PrefixRange {
        PrefixRange::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn prefix_ranges() {
        assert!(r("10.0.0.0/8").matches(&net("10.0.0.0/8")));
        assert!(!r("10.0.0.0/8").matches(&net("10.1.0.0/16")));
        let le = r("10.0.0.0/8 le 24");
        assert!(le.matches(&net("10.1.2.0/24")) && le.matches(&net("10.0.0.0/8")));
        assert!(!le.matches(&net("10.1.2.0/25")) && !le.matches(&net("11.0.0.0/24")));
        assert_eq!(r("10.0.0.0/8 ge 16"), r("10.0.0.0/8{16,32}"));
        assert_eq!(r("10.0.0.0/8+"), r("10.0.0.0/8 le 32"));
        assert_eq!(r("2001:db8::/32 ge 48 le 64").max, 64);
        assert!(r("::/0+").matches(&net("2001:db8::/48")));
        assert!(!r("::/0+").matches(&net("10.0.0.0/8")));
        for bad in [
            "10.0.0.1/8",
            "10.0.0.0/8 le 7",
            "10.0.0.0/8 le 33",
            "10.0.0.0/8 lt 9",
            "x",
        ] {
            assert!(PrefixRange::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn filters() {
        let f = Filter {
            families: vec![Family::V4],
            prefixes: vec![r("10.0.0.0/8 le 24")],
            exclude: vec![r("10.9.0.0/16+")],
            protocols: Some(vec![186]),
            ..Filter::default()
        };
        assert!(f.admits_prefix(&net("10.1.0.0/16")));
        assert!(!f.admits_prefix(&net("10.9.1.0/24")));
        assert!(!f.admits_prefix(&net("2001:db8::/32")));
        assert!(f.admits_route(186, rtn::UNICAST));
        assert!(!f.admits_route(4, rtn::UNICAST));
        assert!(!Filter::default().admits_route(2, rtn::LOCAL));
        assert_eq!(Filter::parse_kind("blackhole"), Ok(rtn::BLACKHOLE));
        assert_eq!(Filter::parse_protocol("bgp", &Names::builtin()), Ok(186));
    }

    #[test]
    fn rewrites() {
        assert_eq!(Rewrite::parse(&[]).unwrap(), Rewrite::Keep);
        assert_eq!(
            Rewrite::parse(&["blackhole".into()]).unwrap(),
            Rewrite::Blackhole
        );
        let rw = Rewrite::parse(&["via 198.18.1.2 dev veth1".into(), "dev veth2".into()]).unwrap();
        let Rewrite::Hops { v4, v6 } = &rw else {
            panic!()
        };
        assert_eq!(
            v4.as_ref().unwrap().gateway,
            Some("198.18.1.2".parse().unwrap())
        );
        assert_eq!(v6.as_ref().unwrap().dev.as_deref(), Some("veth2"));
        let only4 = Rewrite::parse(&["via 198.18.1.2 dev veth1".into()]).unwrap();
        assert!(only4.serves(Family::V4) && !only4.serves(Family::V6));
        assert!(Rewrite::parse(&[
            "via 198.18.1.2 dev veth1".into(),
            "via 198.18.2.2 dev veth2".into()
        ])
        .is_err());
        assert!(Rewrite::parse(&["bogus".into()]).is_err());

        let mut w = iproute::parse_line(
            "10.0.0.0/8 via 198.18.2.2 dev veth2 src 198.18.2.1",
            &Names::builtin(),
        )
        .unwrap()
        .want;
        let mut bh = w.clone();
        rw.apply(&mut w);
        assert_eq!(w.hops[0].dev.as_deref(), Some("veth1"));
        assert_eq!(w.prefsrc, None);
        Rewrite::Blackhole.apply(&mut bh);
        assert_eq!((bh.kind, bh.hops.len()), (rtn::BLACKHOLE, 0));
    }
}
