//! Records shared by the kernel (eBPF) and userspace halves of route-mirror.
//!
//! Everything here is `#[repr(C)]` and `no_std` so the eBPF crate can use it as is.
#![no_std]

/// Netlink multicast groups route-mirror subscribes to (`RTNLGRP_*`).
pub mod groups {
    pub const LINK: u32 = 1;
    pub const IPV4_IFADDR: u32 = 5;
    pub const IPV4_ROUTE: u32 = 7;
    pub const IPV4_RULE: u32 = 8;
    pub const IPV6_IFADDR: u32 = 9;
    pub const IPV6_ROUTE: u32 = 11;
    pub const IPV6_RULE: u32 = 19;
    pub const IPV4_NETCONF: u32 = 24;
    pub const IPV6_NETCONF: u32 = 25;
    pub const NEXTHOP: u32 = 32;
    /// All groups the mirror needs, in subscription order.
    pub const ALL: [u32; 10] = [
        LINK,
        IPV4_IFADDR,
        IPV4_ROUTE,
        IPV4_RULE,
        IPV6_IFADDR,
        IPV6_ROUTE,
        IPV6_RULE,
        IPV4_NETCONF,
        IPV6_NETCONF,
        NEXTHOP,
    ];
}

/// The record ABI between the eBPF object and the daemon that embeds it. The object
/// carries it as the symbol [`ABI_SYMBOL`] and the daemon refuses an object whose value
/// differs: an object built before a record change (it is built apart, with nightly)
/// would otherwise write records the decoder misreads and lose events silently.
///
/// The sizes of the shared records are folded in, so a layout change changes it by
/// itself; bump [`ABI_REVISION`] for a change sizes do not show (a flag, a field's
/// meaning, a counter's index, the compact rules).
pub const RECORD_ABI: u32 = abi_fingerprint();

/// Manual part of [`RECORD_ABI`].
pub const ABI_REVISION: u32 = 1;

/// Name of the object's `u32` global holding its [`RECORD_ABI`].
pub const ABI_SYMBOL: &str = "ROUTE_MIRROR_RECORD_ABI";

const fn abi_fingerprint() -> u32 {
    let parts = [
        ABI_REVISION,
        EventHeader::SIZE as u32,
        MAX_MSG as u32,
        compact::Route::SIZE as u32,
        compact::ADDRS as u32,
        compact::MAX_ATTRS as u32,
        counter::LEN,
        fib::Key4::SIZE as u32,
        fib::Key6::SIZE as u32,
        fib::Value::SIZE as u32,
        fib::Group::SIZE as u32,
    ];
    // FNV-1a over the parts: never 0, so a zeroed or missing value never matches.
    let mut h: u32 = 0x811c_9dc5;
    let mut i = 0;
    while i < parts.len() {
        h ^= parts[i];
        h = h.wrapping_mul(0x0100_0193);
        i += 1;
    }
    if h == 0 {
        1
    } else {
        h
    }
}

/// The header of every ring-buffer record the socket filter writes.
///
/// Two kinds of record follow it ([`event_flags::COMPACT`]):
/// * raw: the netlink message as the kernel sent it (header included), for every
///   message type, future attributes included, decoded by the same userspace decoder
///   the netlink source uses;
/// * compact: a [`compact::Route`] the filter decoded in the kernel, for the common
///   route notifications only (see [`compact::route`]); anything it does not plainly
///   understand goes raw, so both kinds decode to the same change.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// `bpf_ktime_get_ns()` when the filter saw the message (CLOCK_MONOTONIC).
    pub ktime_ns: u64,
    /// Raw records: length of the netlink message (the skb). Compact records: length of
    /// the body that follows.
    pub len: u32,
    /// `nlmsg_type` of the message.
    pub msg_type: u16,
    /// [`event_flags`].
    pub flags: u16,
}

impl EventHeader {
    pub const SIZE: usize = core::mem::size_of::<EventHeader>();
}

/// Bits of [`EventHeader::flags`].
pub mod event_flags {
    /// The message was longer than [`super::MAX_MSG`]: no bytes follow and userspace
    /// must resync (the change it carried is unknown).
    pub const TRUNCATED: u16 = 1;
    /// A [`super::compact::Route`] follows instead of the raw message.
    pub const COMPACT: u16 = 2;
}

/// Longest message copied to the ring. Route messages are ~70-150 bytes; link messages
/// with statistics reach ~1.5 KiB, so 4 KiB leaves headroom.
pub const MAX_MSG: usize = 4096;

/// Route notifications decoded in the kernel.
///
/// A raw IPv4 route notification is 68 bytes of netlink (plus the record header), an
/// IPv6 one ~136 (`RTA_CACHEINFO` alone is 36): the compact form is 44 / 80 bytes, so the
/// ring holds about twice the records, and userspace reads fixed offsets instead of
/// walking attributes. Only messages whose every attribute is one the mirror models in
/// a plain form are compacted: single path (gateway + ifindex, or a nexthop object id),
/// no source prefix, no metrics, no encapsulation. The rest stays raw, so a compact
/// record carries exactly what the raw message would have given the decoder.
pub mod compact {
    use super::MAX_MSG;

    pub const NLMSG_HDRLEN: usize = 16;
    pub const RTMSG_LEN: usize = 12;
    pub const RTM_NEWROUTE: u16 = 24;
    pub const RTM_DELROUTE: u16 = 25;
    pub const AF_INET: u8 = 2;
    pub const AF_INET6: u8 = 10;
    /// Attributes read before giving up (a plain IPv6 route has 7).
    pub const MAX_ATTRS: usize = 12;

    const RTA_DST: u16 = 1;
    const RTA_OIF: u16 = 4;
    const RTA_GATEWAY: u16 = 5;
    const RTA_PRIORITY: u16 = 6;
    const RTA_PREFSRC: u16 = 7;
    const RTA_CACHEINFO: u16 = 12;
    const RTA_TABLE: u16 = 15;
    const RTA_PREF: u16 = 20;
    const RTA_PAD: u16 = 24;
    const RTA_NH_ID: u16 = 30;

    /// Bits of [`Route::present`]: which optional attributes the message carried.
    pub mod has {
        pub const DST: u8 = 1;
        pub const GATEWAY: u8 = 2;
        pub const PREFSRC: u8 = 4;
        pub const NH_ID: u8 = 8;
        pub const PREF: u8 = 16;
    }

    /// The fixed part of a compact route record (32 bytes). The addresses follow it:
    /// destination, gateway, preferred source, each 4 (IPv4) or 16 (IPv6) bytes, so a
    /// record body is [`Route::SIZE`] + 3 × address length.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Route {
        /// The first 8 bytes of `struct rtmsg`: family, dst_len, src_len, tos, table,
        /// protocol, scope, type.
        pub rtm: [u8; 8],
        /// `rtm_flags`.
        pub rtm_flags: u32,
        /// `RTA_TABLE`, else the rtmsg's table byte.
        pub table: u32,
        /// `RTA_PRIORITY` (0 when absent).
        pub priority: u32,
        /// `RTA_OIF` (0 when absent).
        pub oif: u32,
        /// `RTA_NH_ID` (when `present & NH_ID`).
        pub nh_id: u32,
        /// `nlmsg_flags` (`NLM_F_REPLACE` matters).
        pub nlmsg_flags: u16,
        /// [`has`] bits.
        pub present: u8,
        /// `RTA_PREF` (when `present & PREF`).
        pub pref: u8,
    }

    impl Route {
        pub const SIZE: usize = core::mem::size_of::<Route>();
    }
    const _: () = assert!(Route::SIZE == 32);

    /// Address bytes after a [`Route`] (the IPv6 maximum).
    pub const ADDRS: usize = 48;

    /// Address length of a family (0: not compacted).
    #[inline(always)]
    pub fn addr_len(family: u8) -> usize {
        match family {
            AF_INET => 4,
            AF_INET6 => 16,
            _ => 0,
        }
    }

    // Reads at `off & (MAX_MSG - 1)`: a no-op for the offsets used (always checked
    // against `len <= MAX_MSG` first), and what lets the verifier (and rustc's bounds
    // checks) see every access inside the buffer.
    #[inline(always)]
    fn b(m: &[u8; MAX_MSG], off: usize) -> u8 {
        m[off & (MAX_MSG - 1)]
    }

    #[inline(always)]
    fn u16_at(m: &[u8; MAX_MSG], off: usize) -> u16 {
        u16::from_ne_bytes([b(m, off), b(m, off + 1)])
    }

    #[inline(always)]
    fn u32_at(m: &[u8; MAX_MSG], off: usize) -> u32 {
        u32::from_ne_bytes([b(m, off), b(m, off + 1), b(m, off + 2), b(m, off + 3)])
    }

    #[inline(always)]
    fn copy_addr(m: &[u8; MAX_MSG], off: usize, alen: usize, out: &mut [u8; ADDRS], slot: usize) {
        let mut i = 0;
        while i < 16 {
            if i < alen {
                if let Some(o) = out.get_mut(slot * alen + i) {
                    *o = b(m, off + i);
                }
            }
            i += 1;
        }
    }

    /// Compacts the route notification in `m[..len]` (netlink header included) into
    /// `out` and `addrs` (3 × [`addr_len`] bytes used). Returns false, leaving the
    /// message to go raw, unless it is one `RTM_NEWROUTE`/`RTM_DELROUTE` of IPv4 or
    /// IPv6 without a source prefix whose attributes are all well-formed and among
    /// table, destination, metric, gateway, output interface, preferred source, router
    /// preference, nexthop id (and the informational cache info and padding).
    ///
    /// Shared by the socket filter and the tests (which check that both record kinds
    /// decode to the same change): written for the verifier, every read is masked into
    /// the buffer and the attribute loop is bounded.
    #[inline(always)]
    pub fn route(m: &[u8; MAX_MSG], len: usize, out: &mut Route, addrs: &mut [u8; ADDRS]) -> bool {
        if !(NLMSG_HDRLEN + RTMSG_LEN..=MAX_MSG).contains(&len) {
            return false;
        }
        // One message, exactly the datagram.
        if u32_at(m, 0) as usize != len {
            return false;
        }
        let ty = u16_at(m, 4);
        if ty != RTM_NEWROUTE && ty != RTM_DELROUTE {
            return false;
        }
        let h = NLMSG_HDRLEN;
        let family = b(m, h);
        let alen = addr_len(family);
        if alen == 0 || b(m, h + 2) != 0 {
            return false; // another family, or a source prefix (IPv6 source routing)
        }
        let mut i = 0;
        while i < 8 {
            out.rtm[i] = b(m, h + i);
            i += 1;
        }
        out.rtm_flags = u32_at(m, h + 8);
        out.table = u32::from(b(m, h + 4));
        out.priority = 0;
        out.oif = 0;
        out.nh_id = 0;
        out.nlmsg_flags = u16_at(m, 6);
        out.present = 0;
        out.pref = 0;
        let mut off = h + RTMSG_LEN;
        let mut n = 0;
        while n < MAX_ATTRS {
            if off == len {
                return true;
            }
            if off + 4 > len {
                return false; // trailing bytes: let the raw decoder judge them
            }
            let alen_attr = u16_at(m, off) as usize;
            let aty = u16_at(m, off + 2) & 0x3fff;
            if alen_attr < 4 || alen_attr > len - off {
                return false;
            }
            let v = off + 4;
            let vlen = alen_attr - 4;
            match aty {
                RTA_TABLE if vlen >= 4 => out.table = u32_at(m, v),
                RTA_PRIORITY if vlen >= 4 => out.priority = u32_at(m, v),
                RTA_OIF if vlen >= 4 => out.oif = u32_at(m, v),
                RTA_NH_ID if vlen >= 4 => {
                    out.nh_id = u32_at(m, v);
                    out.present |= has::NH_ID;
                }
                RTA_PREF if vlen >= 1 => {
                    out.pref = b(m, v);
                    out.present |= has::PREF;
                }
                RTA_DST if vlen == alen => {
                    copy_addr(m, v, alen, addrs, 0);
                    out.present |= has::DST;
                }
                RTA_GATEWAY if vlen == alen => {
                    copy_addr(m, v, alen, addrs, 1);
                    out.present |= has::GATEWAY;
                }
                RTA_PREFSRC if vlen == alen => {
                    copy_addr(m, v, alen, addrs, 2);
                    out.present |= has::PREFSRC;
                }
                RTA_CACHEINFO | RTA_PAD => {}
                _ => return false,
            }
            off += (alen_attr + 3) & !3;
            if off > len {
                off = len; // the last attribute's padding may be missing
            }
            n += 1;
        }
        off == len
    }
}

/// Indices of the per-CPU `COUNTERS` array.
pub mod counter {
    /// Dump replies and acks for our own port, left in the socket queue.
    pub const PASSED: u32 = 0;
    /// Records written to the ring.
    pub const RECORDS: u32 = 1;
    /// Bytes written to the ring (headers included).
    pub const BYTES: u32 = 2;
    /// `bpf_ringbuf_output` failures (ring full): notifications lost.
    pub const DROPS: u32 = 3;
    /// Messages longer than `MAX_MSG` (sent as header-only records).
    pub const TRUNCATED: u32 = 4;
    /// skbs whose netlink header could not be read (left in the socket queue).
    pub const UNREADABLE: u32 = 5;
    /// Highest ring fill (bytes not yet consumed) seen before an output: a max, not a sum.
    pub const HIGH_WATER: u32 = 6;
    pub const NEWLINK: u32 = 7;
    pub const DELLINK: u32 = 8;
    pub const NEWADDR: u32 = 9;
    pub const DELADDR: u32 = 10;
    pub const NEWROUTE: u32 = 11;
    pub const DELROUTE: u32 = 12;
    pub const NEWNEXTHOP: u32 = 13;
    pub const DELNEXTHOP: u32 = 14;
    pub const OTHER: u32 = 15;
    /// Records written in the compact form (a subset of `RECORDS`).
    pub const COMPACT: u32 = 16;
    /// Entries of the array.
    pub const LEN: u32 = 17;
    /// Names for stats and `bpftool` readers, by index.
    pub const NAMES: [&str; LEN as usize] = [
        "passed",
        "records",
        "bytes",
        "drops",
        "truncated",
        "unreadable",
        "high_water",
        "newlink",
        "dellink",
        "newaddr",
        "deladdr",
        "newroute",
        "delroute",
        "newnexthop",
        "delnexthop",
        "other",
        "compact",
    ];

    /// The counter of a netlink message type.
    pub const fn for_type(ty: u16) -> u32 {
        match ty {
            16 => NEWLINK,
            17 => DELLINK,
            20 => NEWADDR,
            21 => DELADDR,
            24 => NEWROUTE,
            25 => DELROUTE,
            104 => NEWNEXTHOP,
            105 => DELNEXTHOP,
            _ => OTHER,
        }
    }
}

/// The pinned BPF FIB (`--bpf-fib`): LPM-trie maps `fib4`/`fib6` holding the best route
/// of each prefix of the chosen tables, and `nhgroups` holding ECMP next-hop groups.
///
/// Everything is plain bytes in a fixed layout (no BTF: the object is linked without
/// it), so an XDP/TC program, `bpftool map dump` and userspace all read the same thing.
pub mod fib {
    /// Next hops one `nhgroups` entry holds. 16 covers the ECMP widths routing daemons
    /// use by default (FRR's and BIRD's common builds stop at 16; hardware ECMP tables
    /// are 8-64 wide) while keeping a group at 392 bytes; wider routes keep their first
    /// 16 hops and set [`flags::TRUNCATED`] so a dataplane can fall back to
    /// `bpf_fib_lookup` for them.
    pub const MAX_HOPS: usize = 16;
    /// `max_entries` of `fib4`/`fib6` (a limit only: LPM tries are never preallocated).
    pub const MAX_PREFIXES: u32 = 1 << 22;
    /// `max_entries` of `nhgroups` (not preallocated either). Groups are shared by every
    /// prefix with the same hop set, so a full table needs a few thousand at most.
    pub const MAX_GROUPS: u32 = 1 << 16;

    /// The data part of an `fib4` key; the map key is `{ prefixlen: u32 (host order),
    /// table: [u8; 4] (big-endian), addr: [u8; 4] }` with prefixlen = 32 + prefix length,
    /// so the table id is always matched in full and one map serves several tables.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Key4 {
        pub table: [u8; 4],
        pub addr: [u8; 4],
    }

    /// As [`Key4`] for `fib6`: `{ prefixlen: u32, table: [u8; 4], addr: [u8; 16] }`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Key6 {
        pub table: [u8; 4],
        pub addr: [u8; 16],
    }

    /// Bits of [`Value::flags`] and [`Hop::flags`].
    pub mod flags {
        /// The route has several next hops: see [`super::Value::nhgroup`].
        pub const MULTIPATH: u8 = 1;
        /// More next hops than [`super::MAX_HOPS`]: the group holds the first ones only.
        pub const TRUNCATED: u8 = 2;
        /// `RTNH_F_ONLINK`: the gateway is on-link even if no prefix says so.
        pub const ONLINK: u8 = 4;
    }

    /// Gateway address family in [`Value::gw_family`] / [`Hop::gw_family`].
    pub mod gw {
        pub const NONE: u8 = 0;
        pub const V4: u8 = 4;
        pub const V6: u8 = 6;
    }

    /// The value of `fib4`/`fib6` (36 bytes, little-endian on x86/arm64 like the host).
    ///
    /// For a single-path route `ifindex`/`gateway` are its next hop and `nhgroup` is 0.
    /// For ECMP (`flags & MULTIPATH`) `ifindex`/`gateway` are the first hop (so a
    /// dataplane that ignores groups still forwards) and `nhgroup` is the `nhgroups` key.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Value {
        /// `RTN_*` (unicast 1, local 2, blackhole 6, unreachable 7, prohibit 8, throw 9...).
        pub kind: u8,
        /// [`gw`]: family of `gateway` (IPv4 routes may have IPv6 gateways, RTA_VIA).
        pub gw_family: u8,
        /// [`flags`].
        pub flags: u8,
        /// Number of next hops of the route (saturating at 255).
        pub nhops: u8,
        pub ifindex: u32,
        /// `RTA_PRIORITY`.
        pub metric: u32,
        pub table: u32,
        /// Key in `nhgroups` (0: none).
        pub nhgroup: u32,
        /// IPv4 in the first 4 bytes, or IPv6; zero when there is no gateway.
        pub gateway: [u8; 16],
    }

    /// One next hop of a group (24 bytes).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub struct Hop {
        pub ifindex: u32,
        /// ECMP weight 1..=256.
        pub weight: u16,
        pub gw_family: u8,
        pub flags: u8,
        pub gateway: [u8; 16],
    }

    /// The value of `nhgroups` (key: u32 group id, from 1): `count` valid entries of
    /// `hops` (8 + 16 * 24 = 392 bytes).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Group {
        pub count: u32,
        /// Sum of the weights of the valid hops (for weighted selection).
        pub total_weight: u32,
        pub hops: [Hop; MAX_HOPS],
    }

    /// Plain-old-data views for the userspace map API (which takes byte arrays).
    macro_rules! as_bytes {
        ($t:ty) => {
            impl $t {
                pub const SIZE: usize = core::mem::size_of::<$t>();
                /// The in-map representation.
                pub fn to_bytes(&self) -> [u8; core::mem::size_of::<$t>()] {
                    // SAFETY: repr(C), no padding (checked below), every bit pattern valid.
                    unsafe { core::mem::transmute_copy(self) }
                }
                pub fn from_bytes(b: &[u8; core::mem::size_of::<$t>()]) -> $t {
                    // SAFETY: as above; the read is unaligned-safe.
                    unsafe { core::ptr::read_unaligned(b.as_ptr() as *const $t) }
                }
            }
        };
    }
    as_bytes!(Key4);
    as_bytes!(Key6);
    as_bytes!(Value);
    as_bytes!(Hop);
    as_bytes!(Group);

    // No implicit padding anywhere (so to_bytes never exposes uninitialised bytes).
    const _: () = assert!(Key4::SIZE == 8 && Key6::SIZE == 20);
    const _: () = assert!(Value::SIZE == 36 && Hop::SIZE == 24);
    const _: () = assert!(Group::SIZE == 8 + MAX_HOPS * 24);
}

#[cfg(feature = "user")]
mod user {
    // Plain-old-data marker so userspace can read records without aya's trait.
    const _: () = assert!(super::EventHeader::SIZE == 16);
}
