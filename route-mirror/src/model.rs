//! The route model, keyed the way the kernel keys routes.
//!
//! IPv4: (table, dst/len, tos, priority). IPv6: (table, dst/len, src/len, priority).
//! Everything else about a route lives in [`RouteAttrs`], which is interned
//! (see [`crate::intern`]) because a full table shares a few thousand distinct sets.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

/// Address family of a route, address or FIB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Family {
    #[serde(rename = "inet")]
    V4,
    #[serde(rename = "inet6")]
    V6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// `AF_INET` / `AF_INET6`.
    pub fn af(self) -> u8 {
        match self {
            Family::V4 => libc::AF_INET as u8,
            Family::V6 => libc::AF_INET6 as u8,
        }
    }

    pub fn from_af(af: u8) -> Option<Family> {
        match af as i32 {
            libc::AF_INET => Some(Family::V4),
            libc::AF_INET6 => Some(Family::V6),
            _ => None,
        }
    }

    pub fn of(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    pub fn of_net(net: &IpNet) -> Family {
        match net {
            IpNet::V4(_) => Family::V4,
            IpNet::V6(_) => Family::V6,
        }
    }

    /// The `/0` prefix of this family.
    pub fn default_net(self) -> IpNet {
        match self {
            Family::V4 => IpNet::V4(Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0).unwrap()),
            Family::V6 => IpNet::V6(Ipv6Net::new(Ipv6Addr::UNSPECIFIED, 0).unwrap()),
        }
    }

    pub fn number(self) -> u8 {
        match self {
            Family::V4 => 4,
            Family::V6 => 6,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "inet",
            Family::V6 => "inet6",
        })
    }
}

/// Well-known routing table ids (`/etc/iproute2/rt_tables`).
pub mod table {
    pub const UNSPEC: u32 = 0;
    pub const DEFAULT: u32 = 253;
    pub const MAIN: u32 = 254;
    pub const LOCAL: u32 = 255;

    pub fn name(id: u32) -> Option<&'static str> {
        Some(match id {
            DEFAULT => "default",
            MAIN => "main",
            LOCAL => "local",
            _ => return None,
        })
    }

    /// Accepts a number or one of the built-in names.
    pub fn parse(s: &str) -> Option<u32> {
        match s {
            "default" => Some(DEFAULT),
            "main" => Some(MAIN),
            "local" => Some(LOCAL),
            _ => s.parse().ok(),
        }
    }
}

/// `RTN_*` route types. Unknown values are kept as their number.
pub mod rtn {
    pub const UNSPEC: u8 = 0;
    pub const UNICAST: u8 = 1;
    pub const LOCAL: u8 = 2;
    pub const BROADCAST: u8 = 3;
    pub const ANYCAST: u8 = 4;
    pub const MULTICAST: u8 = 5;
    pub const BLACKHOLE: u8 = 6;
    pub const UNREACHABLE: u8 = 7;
    pub const PROHIBIT: u8 = 8;
    pub const THROW: u8 = 9;
    pub const NAT: u8 = 10;
    pub const XRESOLVE: u8 = 11;
    pub const MAX_KNOWN: u8 = XRESOLVE;

    /// Types whose lookup answers with an error and never looks at next hops
    /// (`fib_props[type].error < 0`).
    pub fn is_reject(t: u8) -> bool {
        matches!(
            t,
            BLACKHOLE | UNREACHABLE | PROHIBIT | THROW | NAT | XRESOLVE
        )
    }

    pub fn name(t: u8) -> Option<&'static str> {
        Some(match t {
            UNSPEC => "none",
            UNICAST => "unicast",
            LOCAL => "local",
            BROADCAST => "broadcast",
            ANYCAST => "anycast",
            MULTICAST => "multicast",
            BLACKHOLE => "blackhole",
            UNREACHABLE => "unreachable",
            PROHIBIT => "prohibit",
            THROW => "throw",
            NAT => "nat",
            XRESOLVE => "xresolve",
            _ => return None,
        })
    }
}

/// `RTPROT_*` route protocols (`/etc/iproute2/rt_protos`).
pub mod rtprot {
    pub const KERNEL: u8 = 2;
    pub const BOOT: u8 = 3;
    pub const STATIC: u8 = 4;
    /// Router advertisements (`RTF_ADDRCONF` routes).
    pub const RA: u8 = 9;

    pub fn name(p: u8) -> Option<&'static str> {
        Some(match p {
            0 => "unspec",
            1 => "redirect",
            2 => "kernel",
            3 => "boot",
            4 => "static",
            8 => "gated",
            9 => "ra",
            10 => "mrt",
            11 => "zebra",
            12 => "bird",
            13 => "dnrouted",
            14 => "xorp",
            15 => "ntk",
            16 => "dhcp",
            17 => "mrouted",
            18 => "keepalived",
            42 => "babel",
            99 => "openr",
            186 => "bgp",
            187 => "isis",
            188 => "ospf",
            189 => "rip",
            192 => "eigrp",
            _ => return None,
        })
    }
}

/// `RT_SCOPE_*`.
pub mod scope {
    pub const UNIVERSE: u8 = 0;
    pub const SITE: u8 = 200;
    pub const LINK: u8 = 253;
    pub const HOST: u8 = 254;
    pub const NOWHERE: u8 = 255;

    pub fn name(s: u8) -> Option<&'static str> {
        Some(match s {
            UNIVERSE => "global",
            SITE => "site",
            LINK => "link",
            HOST => "host",
            NOWHERE => "nowhere",
            _ => return None,
        })
    }
}

/// `RTNH_F_*` next-hop flags.
pub mod rtnh {
    pub const DEAD: u8 = 1;
    pub const PERVASIVE: u8 = 2;
    pub const ONLINK: u8 = 4;
    pub const OFFLOAD: u8 = 8;
    pub const LINKDOWN: u8 = 16;
    pub const UNRESOLVED: u8 = 32;
    pub const TRAP: u8 = 64;
    /// Flags that describe the route as configured. DEAD/LINKDOWN follow link and netconf
    /// state and change without a route notification, so the mirror derives them
    /// ([`crate::liveness`]); OFFLOAD/TRAP belong to hardware offload and are not kept.
    pub const STABLE: u8 = PERVASIVE | ONLINK;
    /// The liveness flags.
    pub const LIVENESS: u8 = DEAD | LINKDOWN;
}

/// `rtm_flags` bits above the `RTNH_F_*` byte.
pub mod rtm_f {
    pub const CLONED: u32 = 0x200;
    pub const OFFLOAD: u32 = 0x4000;
    pub const TRAP: u32 = 0x8000;
    pub const OFFLOAD_FAILED: u32 = 0x2000_0000;
    /// Route-level flags the mirror does not store: liveness (derived) and hardware offload.
    pub const VOLATILE: u32 = OFFLOAD
        | TRAP
        | OFFLOAD_FAILED
        | super::rtnh::LIVENESS as u32
        | super::rtnh::OFFLOAD as u32
        | super::rtnh::TRAP as u32;
}

/// `RTAX_*` route metrics (`RTA_METRICS`).
pub mod rtax {
    pub const LOCK: u16 = 1;
    pub const MTU: u16 = 2;
    pub const WINDOW: u16 = 3;
    pub const RTT: u16 = 4;
    pub const RTTVAR: u16 = 5;
    pub const SSTHRESH: u16 = 6;
    pub const CWND: u16 = 7;
    pub const ADVMSS: u16 = 8;
    pub const REORDERING: u16 = 9;
    pub const HOPLIMIT: u16 = 10;
    pub const INITCWND: u16 = 11;
    pub const FEATURES: u16 = 12;
    pub const RTO_MIN: u16 = 13;
    pub const INITRWND: u16 = 14;
    pub const QUICKACK: u16 = 15;
    pub const CC_ALGO: u16 = 16;
    pub const FASTOPEN_NO_COOKIE: u16 = 17;

    /// The name `ip route` gives a metric.
    pub fn name(t: u16) -> Option<&'static str> {
        Some(match t {
            LOCK => "lock",
            MTU => "mtu",
            WINDOW => "window",
            RTT => "rtt",
            RTTVAR => "rttvar",
            SSTHRESH => "ssthresh",
            CWND => "cwnd",
            ADVMSS => "advmss",
            REORDERING => "reordering",
            HOPLIMIT => "hoplimit",
            INITCWND => "initcwnd",
            FEATURES => "features",
            RTO_MIN => "rto_min",
            INITRWND => "initrwnd",
            QUICKACK => "quickack",
            CC_ALGO => "congctl",
            FASTOPEN_NO_COOKIE => "fastopen_no_cookie",
            _ => return None,
        })
    }
}

/// The value of one route metric: a number, or a congestion-control name (`RTAX_CC_ALGO`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum MetricValue {
    U32(u32),
    Name(Box<str>),
}

/// A route's metrics (`RTA_METRICS`) as the kernel reports them: the ones set, ordered by
/// `RTAX_*` type (the kernel's order). Empty for most routes, and then no allocation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Metrics(Box<[(u16, MetricValue)]>);

impl Metrics {
    pub fn new(mut v: Vec<(u16, MetricValue)>) -> Metrics {
        v.sort_by_key(|(t, _)| *t);
        Metrics(v.into_boxed_slice())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &(u16, MetricValue)> {
        self.0.iter()
    }

    /// A numeric metric (`RTAX_*`), if set.
    pub fn get(&self, t: u16) -> Option<u32> {
        self.0.iter().find_map(|(k, v)| match v {
            MetricValue::U32(x) if *k == t => Some(*x),
            _ => None,
        })
    }

    /// The congestion-control algorithm (`RTAX_CC_ALGO`), if set.
    pub fn congctl(&self) -> Option<&str> {
        self.0.iter().find_map(|(k, v)| match v {
            MetricValue::Name(n) if *k == rtax::CC_ALGO => Some(&**n),
            _ => None,
        })
    }

    /// Whether metric `t` is locked (bit `t` of `RTAX_LOCK`).
    pub fn locked(&self, t: u16) -> bool {
        t < 32 && self.get(rtax::LOCK).is_some_and(|l| l & (1 << t) != 0)
    }
}

/// The part of a route's key besides its table and destination prefix (which the FIB trie
/// keys on). The kernel keeps a *list* of routes per key, in its own order (`ip route
/// append`/`prepend`, a connected route per device for a subnet on two devices, IPv6
/// device routes of one metric...); the first one that is alive forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SubKey {
    /// Metric (`RTA_PRIORITY`); lower is preferred.
    pub priority: u32,
    /// IPv4 TOS; always 0 for IPv6.
    pub tos: u8,
    /// IPv6 source prefix (`RTA_SRC`, source-specific routing); `None` otherwise.
    pub src: Option<IpNet>,
}
/// Everything that identifies one kernel route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RouteKey {
    pub table: u32,
    pub dst: IpNet,
    #[serde(flatten)]
    pub sub: SubKey,
}

impl RouteKey {
    pub fn family(&self) -> Family {
        Family::of_net(&self.dst)
    }
}

impl SubKey {
    /// The sub-key of an ordinary route: a metric, TOS 0, no source prefix.
    pub fn metric(priority: u32) -> SubKey {
        SubKey {
            priority,
            tos: 0,
            src: None,
        }
    }
}

/// One next hop of a route.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NextHop {
    pub gateway: Option<IpAddr>,
    /// Output interface; 0 when the route has none (e.g. blackhole).
    pub ifindex: u32,
    /// ECMP weight, 1..=256 (kernel `rtnh_hops + 1`).
    pub weight: u16,
    /// `RTNH_F_*`, masked to [`rtnh::STABLE`] (liveness is derived: [`crate::liveness`]).
    pub flags: u8,
    /// Lightweight-tunnel encapsulation (`RTA_ENCAP_TYPE` + `RTA_ENCAP`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encap: Option<Box<Encap>>,
    /// IPv4 realms (`RTA_FLOW`: `from << 16 | to`); 0 when none (the kernel omits 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub realms: u32,
}

fn is_zero(x: &u32) -> bool {
    *x == 0
}

/// `LWTUNNEL_ENCAP_*` types.
pub mod lwt {
    pub const MPLS: u16 = 1;
    pub const IP: u16 = 2;
    pub const ILA: u16 = 3;
    pub const IP6: u16 = 4;
    pub const SEG6: u16 = 5;
    pub const BPF: u16 = 6;
    pub const SEG6_LOCAL: u16 = 7;
    pub const RPL: u16 = 8;
    pub const IOAM6: u16 = 9;
    pub const XFRM: u16 = 10;

    /// The name `ip route` gives an encapsulation type.
    pub fn name(t: u16) -> Option<&'static str> {
        Some(match t {
            MPLS => "mpls",
            IP => "ip",
            ILA => "ila",
            IP6 => "ip6",
            SEG6 => "seg6",
            BPF => "bpf",
            SEG6_LOCAL => "seg6local",
            RPL => "rpl",
            IOAM6 => "ioam6",
            XFRM => "xfrm",
            _ => return None,
        })
    }
}

/// A next hop's lightweight-tunnel encapsulation: its type and the nested attributes of
/// `RTA_ENCAP` exactly as the kernel sent them. The mirror does not forward through
/// tunnels, so it keeps the bytes (compared byte for byte) and decodes them only to show
/// them ([`crate::view`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Encap {
    /// `LWTUNNEL_ENCAP_*` ([`lwt`]).
    pub kind: u16,
    /// The payload of `RTA_ENCAP` (nested attributes).
    pub data: Box<[u8]>,
}

/// Attributes of a route other than its key. Interned: many routes share one.
/// `Default` is an unspecified-type route without next hops (for building test routes).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RouteAttrs {
    /// `RTPROT_*`.
    pub protocol: u8,
    /// `RTN_*`.
    pub kind: u8,
    /// `RT_SCOPE_*`.
    pub scope: u8,
    /// `rtm_flags` without the [`rtm_f::VOLATILE`] bits, except that an IPv4 multipath
    /// route keeps `RTNH_F_LINKDOWN`: the kernel's per-route (`fib_info`) flag depends on
    /// the order of link events, so it is state the mirror keeps and updates.
    pub flags: u32,
    /// Preferred source address (`RTA_PREFSRC`).
    pub prefsrc: Option<IpAddr>,
    /// Nexthop object id (`RTA_NH_ID`); resolved through the mirror's nexthop table.
    pub nh_id: Option<u32>,
    /// Inline next hops (`RTA_GATEWAY`/`RTA_OIF` or `RTA_MULTIPATH`), in the kernel's
    /// order. Empty for a route with a nexthop object: whatever `nexthop_compat_mode`
    /// makes the kernel spell out, such a route *is* its object, resolved when read.
    pub nexthops: SmallVec<[NextHop; 2]>,
    /// IPv6 router preference (`RTA_PREF`), if present.
    pub pref: Option<u8>,
    /// `RTA_METRICS`: the route's own (an IPv6 multipath route's are its first sibling's).
    pub metrics: Metrics,
    /// IPv6 multipath routes only: every sibling's metrics in `nexthops` order, when some
    /// differ from the first's (`ip -6 route append ... mtu N`). The kernel shows the first
    /// sibling's; when that sibling goes, the next one's show.
    pub hop_metrics: Option<Box<[Metrics]>>,
}

impl NextHop {
    /// One plain next hop: weight 1, no flags.
    pub fn new(gateway: Option<IpAddr>, ifindex: u32) -> NextHop {
        NextHop {
            gateway,
            ifindex,
            weight: 1,
            flags: 0,
            encap: None,
            realms: 0,
        }
    }
}

impl RouteAttrs {
    /// Route MTU (`RTAX_MTU`), if set.
    pub fn mtu(&self) -> Option<u32> {
        self.metrics.get(rtax::MTU)
    }

    /// Equal as a route dump shows them: an IPv6 dump shows only the first sibling's
    /// metrics, so per-sibling metrics the mirror learned from events are not compared.
    pub fn same_as_dumped(&self, dumped: &RouteAttrs) -> bool {
        let RouteAttrs {
            protocol,
            kind,
            scope,
            flags,
            prefsrc,
            nh_id,
            nexthops,
            pref,
            metrics,
            hop_metrics: _,
        } = dumped;
        self.protocol == *protocol
            && self.kind == *kind
            && self.scope == *scope
            && self.flags == *flags
            && self.prefsrc == *prefsrc
            && self.nh_id == *nh_id
            && self.nexthops == *nexthops
            && self.pref == *pref
            && self.metrics == *metrics
    }

    pub fn kind_name(&self) -> String {
        rtn::name(self.kind).map_or_else(|| self.kind.to_string(), str::to_string)
    }
    pub fn protocol_name(&self) -> String {
        rtprot::name(self.protocol).map_or_else(|| self.protocol.to_string(), str::to_string)
    }
    pub fn scope_name(&self) -> String {
        scope::name(self.scope).map_or_else(|| self.scope.to_string(), str::to_string)
    }
}

/// A full route as decoded from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub key: RouteKey,
    pub attrs: Arc<RouteAttrs>,
}

/// A nexthop object (`RTM_NEWNEXTHOP`), referenced by routes through `RTA_NH_ID`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NexthopObject {
    pub id: u32,
    /// `None` for groups and blackholes created with family unspec.
    pub family: Option<Family>,
    pub protocol: u8,
    pub kind: NexthopKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NexthopKind {
    /// A single next hop: gateway and/or device.
    Single {
        gateway: Option<IpAddr>,
        ifindex: u32,
        flags: u8,
        /// `NHA_ENCAP_TYPE` + `NHA_ENCAP` (see [`Encap`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        encap: Option<Box<Encap>>,
    },
    Blackhole,
    /// A group of other nexthop objects (ECMP or resilient).
    Group {
        members: Vec<GroupMember>,
        resilient: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GroupMember {
    pub id: u32,
    /// 1..=65536 as the kernel reports it (weight - 1 on the wire).
    pub weight: u32,
}

/// A network interface as far as routing cares.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub ifindex: u32,
    pub name: String,
    /// `IFF_*` flags.
    pub flags: u32,
    pub mtu: u32,
    /// `IFLA_MASTER` (0: none), for VRF ports.
    #[serde(default)]
    pub master: u32,
    /// `IFLA_GROUP` (`suppress_ifgroup`).
    #[serde(default)]
    pub group: u32,
    /// `IFLA_VRF_TABLE` when the link is a VRF device.
    #[serde(default)]
    pub vrf_table: Option<u32>,
}

impl Link {
    pub fn is_up(&self) -> bool {
        self.flags & libc::IFF_UP as u32 != 0
    }
    /// Carrier present (`IFF_LOWER_UP`).
    pub fn has_carrier(&self) -> bool {
        self.flags & 0x10000 != 0
    }
}

/// An interface address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Address {
    pub ifindex: u32,
    pub addr: IpAddr,
    pub prefix_len: u8,
    pub scope: u8,
}

/// `ignore_routes_with_linkdown` of one device, or of `all`/`default` (`RTM_NEWNETCONF`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Netconf {
    pub family: Family,
    /// A device's ifindex, or [`netconf::ALL`] / [`netconf::DEFAULT`].
    pub ifindex: i32,
    /// `NETCONFA_IGNORE_ROUTES_WITH_LINKDOWN`; `None` when the message did not carry it
    /// (a notification about another setting).
    pub ignore_linkdown: Option<bool>,
}

/// `NETCONFA_IFINDEX_*` pseudo devices.
pub mod netconf {
    pub const ALL: i32 = -1;
    pub const DEFAULT: i32 = -2;
}

/// `NLM_F_*` flags of a route notification: they say where the route went in its key's
/// list (`fib_table_insert` sets them to what it did).
pub mod nlm {
    pub const REPLACE: u16 = 0x100;
    pub const EXCL: u16 = 0x200;
    pub const CREATE: u16 = 0x400;
    pub const APPEND: u16 = 0x800;
}

/// One decoded kernel change or dump entry, as every source delivers it.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// `RTM_NEWROUTE`, with the message's `nlmsg_flags` ([`nlm`]): `REPLACE` replaced the
    /// key's first route, `CREATE|EXCL` made a new key, `CREATE|APPEND` appended to the
    /// key's list, `CREATE` alone prepended to it. 0 (a dump entry, or an unknown
    /// origin): the route replaces the key's first.
    NewRoute {
        route: Route,
        flags: u16,
    },
    /// `RTM_DELROUTE`: the route the kernel removed, with its attributes, so the right one
    /// of a key's list goes. An IPv6 message naming one next hop of a multipath route
    /// removes that sibling only.
    DelRoute {
        route: Route,
    },
    NewLink(Link),
    DelLink {
        ifindex: u32,
    },
    NewAddr(Address),
    DelAddr(Address),
    NewNexthop(NexthopObject),
    DelNexthop {
        id: u32,
    },
    /// `RTM_NEWRULE` (an event, or a dump entry).
    NewRule(Rule),
    /// `RTM_DELRULE`: the whole rule, as the kernel reports the one it removed.
    DelRule(Rule),
    NewNetconf(Netconf),
    DelNetconf {
        family: Family,
        ifindex: i32,
    },
}

impl Change {
    /// A route as a dump lists it (no notification flags).
    pub fn route(route: Route) -> Change {
        Change::NewRoute { route, flags: 0 }
    }
}

// Policy routing rules: the data only; list order, display and evaluation live in
// `crate::rule` and `crate::fib::rules`, above this module.

/// An attribute kept as the kernel sent it (type without the nested/byte-order bits).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RawAttr {
    pub kind: u16,
    pub value: Vec<u8>,
}

/// One policy routing rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Rule {
    pub family: Family,
    /// `FRA_PRIORITY` (`ip rule ... pref N`); lower is consulted first.
    pub priority: u32,
    /// `FR_ACT_*` (`crate::rule::action`).
    pub action: u8,
    /// `FRA_TABLE` (or the header's table); 0 with `l3mdev`.
    pub table: u32,
    /// `FIB_RULE_*` without the volatile bits (`crate::rule::flags::VOLATILE`).
    pub flags: u32,
    /// `from` prefix; `None` is "all".
    pub src: Option<IpNet>,
    /// `to` prefix.
    pub dst: Option<IpNet>,
    /// The header's TOS byte (`tos`/`dsfield`).
    pub tos: u8,
    pub iif: Option<String>,
    pub oif: Option<String>,
    /// `fwmark`; with `fwmask`, matches when `(mark ^ fwmark) & fwmask == 0`.
    pub fwmark: u32,
    pub fwmask: u32,
    /// `FRA_GOTO` target priority.
    pub goto: Option<u32>,
    /// `FRA_FLOW` (IPv4 realms, `to << 16 | from`... as the kernel stores it).
    pub realms: Option<u32>,
    pub tun_id: Option<u64>,
    pub suppress_prefixlen: Option<u32>,
    pub suppress_ifgroup: Option<u32>,
    /// `l3mdev`: use the table of the flow's VRF.
    pub l3mdev: bool,
    /// `uidrange START-END` (inclusive).
    pub uid_range: Option<(u32, u32)>,
    /// `FRA_PROTOCOL`: who installed the rule (`RTPROT_*`).
    pub protocol: u8,
    /// `ipproto` (0: any).
    pub ip_proto: u8,
    /// `sport` / `dport` ranges (inclusive).
    pub sport: Option<(u16, u16)>,
    pub dport: Option<(u16, u16)>,
    /// `FRA_SPORT_MASK` / `FRA_DPORT_MASK` (6.15+): the port matches when
    /// `(start ^ port) & mask == 0`. The kernel sets 0xffff itself for a single port.
    pub sport_mask: Option<u16>,
    pub dport_mask: Option<u16>,
    /// Attributes not decoded here, in the order received.
    pub raw: Vec<RawAttr>,
}
