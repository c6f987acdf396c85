//! A route a copy (or a declared route set) wants in its target table, with its devices
//! by name: the currency between a source (another table, another namespace, or a file
//! in `ip route` syntax) and the target namespace, where names become ifindexes.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use smallvec::SmallVec;

use crate::model::{
    rtn, rtnh, scope, Encap, Family, Metrics, NextHop, RouteAttrs, RouteKey, SubKey,
};

/// One next hop, its device by name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WantHop {
    pub gateway: Option<IpAddr>,
    pub dev: Option<Arc<str>>,
    pub weight: u16,
    /// `RTNH_F_ONLINK` / `RTNH_F_PERVASIVE`.
    pub flags: u8,
    /// Lightweight-tunnel encapsulation, written as the source's bytes.
    pub encap: Option<Box<Encap>>,
    /// IPv4 realms (`RTA_FLOW`); 0: none.
    pub realms: u32,
}

/// A route as its source states it, before the target resolves its devices.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Want {
    pub dst: IpNet,
    /// IPv4 TOS.
    pub tos: u8,
    pub metric: u32,
    /// IPv6 source prefix.
    pub src: Option<IpNet>,
    /// `RTN_*`.
    pub kind: u8,
    /// `RT_SCOPE_*` (IPv4; IPv6 has none).
    pub scope: u8,
    pub prefsrc: Option<IpAddr>,
    /// IPv6 router preference.
    pub pref: Option<u8>,
    /// `RTA_METRICS` (mtu, advmss, ...).
    pub metrics: Metrics,
    /// A nexthop object of the target, by id (declared `nhid N`).
    pub nh_id: Option<u32>,
    pub hops: SmallVec<[WantHop; 2]>,
}

impl Want {
    pub fn family(&self) -> Family {
        Family::of_net(&self.dst)
    }

    /// The route `attrs` at `dst` of a source mirror, with its effective next hops
    /// (through the source's nexthop objects) and the source's link names.
    pub fn from_source<'a>(
        dst: IpNet,
        sub: &SubKey,
        attrs: &RouteAttrs,
        hops: &[NextHop],
        link_name: impl Fn(u32) -> Option<&'a str>,
    ) -> Want {
        let hops = hops
            .iter()
            .map(|h| WantHop {
                gateway: h.gateway,
                dev: (h.ifindex != 0).then(|| match link_name(h.ifindex) {
                    Some(n) => Arc::from(n),
                    // Unknown to the source: no target device can have this name.
                    None => Arc::from(format!("#{}", h.ifindex)),
                }),
                weight: h.weight,
                flags: h.flags & rtnh::STABLE,
                encap: h.encap.clone(),
                realms: h.realms,
            })
            .collect();
        Want {
            dst,
            tos: sub.tos,
            metric: sub.priority,
            src: sub.src,
            kind: attrs.kind,
            scope: attrs.scope,
            prefsrc: attrs.prefsrc,
            pref: attrs.pref,
            metrics: attrs.metrics.clone(),
            nh_id: None,
            hops,
        }
    }

    /// The route to write into `table` of the target, devices looked up by `ifindex`, as
    /// the target's mirror will show it once installed (so the two compare equal): the
    /// kernel reports IPv6 routes with universe scope and a router preference (medium
    /// when none was given).
    pub fn resolve(
        &self,
        table: u32,
        protocol: u8,
        ifindex: impl Fn(&str) -> Option<u32>,
    ) -> Result<(RouteKey, RouteAttrs), MissingDevice> {
        let family = self.family();
        let mut hops: SmallVec<[NextHop; 2]> = SmallVec::with_capacity(self.hops.len());
        for h in &self.hops {
            let ifi = match &h.dev {
                Some(d) => ifindex(d).ok_or_else(|| MissingDevice(d.clone()))?,
                None => 0,
            };
            hops.push(NextHop {
                gateway: h.gateway,
                ifindex: ifi,
                weight: h.weight.max(1),
                flags: h.flags & rtnh::STABLE,
                encap: h.encap.clone(),
                realms: h.realms,
            });
        }
        let (scope, pref) = match family {
            Family::V4 => (self.scope, self.pref),
            Family::V6 => {
                // The kernel gives IPv6 blackhole, unreachable, prohibit and throw routes
                // the loopback device (and accepts it in the request).
                let reject = matches!(
                    self.kind,
                    rtn::BLACKHOLE | rtn::UNREACHABLE | rtn::PROHIBIT | rtn::THROW
                );
                if reject && hops.is_empty() && self.nh_id.is_none() {
                    hops.push(NextHop::new(None, ifindex("lo").unwrap_or(1)));
                }
                (scope::UNIVERSE, Some(self.pref.unwrap_or(0)))
            }
        };
        let flags = match hops.as_slice() {
            [one] if self.nh_id.is_none() => u32::from(one.flags),
            _ => 0,
        };
        let attrs = RouteAttrs {
            protocol,
            kind: self.kind,
            scope,
            flags,
            prefsrc: self.prefsrc,
            nh_id: self.nh_id,
            nexthops: if self.nh_id.is_some() {
                SmallVec::new()
            } else {
                hops
            },
            pref,
            metrics: self.metrics.clone(),
            hop_metrics: None,
        };
        let key = RouteKey {
            table,
            dst: self.dst,
            sub: SubKey {
                priority: self.metric,
                tos: if family == Family::V4 { self.tos } else { 0 },
                src: self.src,
            },
        };
        Ok((key, attrs))
    }
}

/// A device the target namespace does not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingDevice(pub Arc<str>);

/// `RTN_*` types a copy takes by default: the forwarding ones. `local`, `broadcast`,
/// `anycast` and `multicast` routes belong to the addresses of the namespace they are
/// in (the kernel makes them); copied elsewhere they would claim addresses there.
pub const DEFAULT_KINDS: [u8; 5] = [
    rtn::UNICAST,
    rtn::BLACKHOLE,
    rtn::UNREACHABLE,
    rtn::PROHIBIT,
    rtn::THROW,
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Change;
    use crate::netlink::decode::decode;
    use crate::netlink::msg::messages;
    use crate::netlink::msg::DecodeCounters;
    use crate::writer::encode::{route, RouteOp};

    fn links(name: &str) -> Option<u32> {
        match name {
            "lo" => Some(1),
            "veth1" => Some(3),
            "veth2" => Some(5),
            _ => None,
        }
    }

    fn want(dst: &str, hops: &[(Option<&str>, Option<&str>)]) -> Want {
        Want {
            dst: dst.parse().unwrap(),
            tos: 0,
            metric: 1024,
            src: None,
            kind: rtn::UNICAST,
            scope: 0,
            prefsrc: None,
            pref: None,
            metrics: Metrics::default(),
            nh_id: None,
            hops: hops
                .iter()
                .map(|(g, d)| WantHop {
                    gateway: g.map(|g| g.parse().unwrap()),
                    dev: d.map(Arc::from),
                    weight: 1,
                    flags: 0,
                    encap: None,
                    realms: 0,
                })
                .collect(),
        }
    }

    /// What `resolve` says the target will show is what the mirror's decoder makes of
    /// the bytes we write: the key (with its IPv6 hop identity) and every attribute.
    #[test]
    fn resolved_routes_match_the_decoder() {
        let cases = [
            want("2001:db8::/64", &[(None, Some("veth1"))]),
            want("2001:db8:1::/64", &[(Some("2001:2:0:1::2"), Some("veth1"))]),
            want(
                "2001:db8:2::/64",
                &[
                    (Some("2001:2:0:2::2"), Some("veth2")),
                    (Some("2001:2:0:1::2"), Some("veth1")),
                ],
            ),
            want("10.0.0.0/8", &[(None, Some("veth2"))]),
            want(
                "10.1.0.0/16",
                &[
                    (Some("198.18.2.2"), Some("veth2")),
                    (Some("198.18.1.2"), Some("veth1")),
                ],
            ),
            Want {
                kind: rtn::BLACKHOLE,
                ..want("2001:db8:3::/64", &[])
            },
        ];
        for w in cases {
            let (key, attrs) = w.resolve(200, 240, links).unwrap();
            let mut b = Vec::new();
            route(&mut b, 1, RouteOp::Replace, &key, &attrs);
            let m = messages(&b).next().unwrap();
            match decode(&m, &mut DecodeCounters::default()).unwrap() {
                Some(Change::NewRoute { route, .. }) => {
                    assert_eq!(route.key, key, "{w:?}");
                    assert_eq!(*route.attrs, attrs, "{w:?}");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_missing_device_is_named() {
        let w = want("10.0.0.0/8", &[(Some("198.18.1.2"), Some("veth9"))]);
        assert_eq!(
            w.resolve(200, 240, links).unwrap_err(),
            MissingDevice(Arc::from("veth9"))
        );
    }
}
