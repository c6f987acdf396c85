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
    pub const NEXTHOP: u32 = 32;
    /// All groups the mirror needs, in subscription order.
    pub const ALL: [u32; 8] = [
        LINK,
        IPV4_IFADDR,
        IPV4_ROUTE,
        IPV4_RULE,
        IPV6_IFADDR,
        IPV6_ROUTE,
        IPV6_RULE,
        NEXTHOP,
    ];
}

/// The ring-buffer record the socket filter writes for every netlink notification.
///
/// Layout on the ring: this header, then `cap_len` bytes of the raw netlink message
/// (header included). Raw bytes instead of a compact decoded record so the kernel side
/// stays a trivial copy (the verifier accepts it, and every message type, future
/// attributes included, reaches the one userspace decoder the netlink source uses).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// `bpf_ktime_get_ns()` when the filter saw the message (CLOCK_MONOTONIC).
    pub ktime_ns: u64,
    /// Length of the whole skb (the netlink message as the kernel sent it).
    pub len: u32,
    /// Bytes of the message that follow this header (`< len` only when truncated).
    pub cap_len: u32,
    /// `nlmsg_type` of the first message.
    pub msg_type: u16,
    /// [`event_flags`].
    pub flags: u16,
    pub _pad: u32,
}

impl EventHeader {
    pub const SIZE: usize = core::mem::size_of::<EventHeader>();
}

/// Bits of [`EventHeader::flags`].
pub mod event_flags {
    /// The message was longer than [`super::MAX_MSG`]: no bytes follow and userspace
    /// must resync (the change it carried is unknown).
    pub const TRUNCATED: u16 = 1;
}

/// Longest message copied to the ring. Route messages are ~70-150 bytes; link messages
/// with statistics reach ~1.5 KiB, so 4 KiB leaves headroom.
pub const MAX_MSG: usize = 4096;

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
    /// Entries of the array.
    pub const LEN: u32 = 16;
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
    const _: () = assert!(super::EventHeader::SIZE == 24);
}
