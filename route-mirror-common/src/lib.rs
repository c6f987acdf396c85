//! Records shared by the kernel (eBPF) and userspace halves of route-mirror.
//!
//! Everything here is `#[repr(C)]` and `no_std` so the eBPF crate can use it as is.
#![no_std]

/// Netlink multicast groups route-mirror subscribes to (`RTNLGRP_*`).
pub mod groups {
    pub const LINK: u32 = 1;
    pub const IPV4_IFADDR: u32 = 5;
    pub const IPV4_ROUTE: u32 = 7;
    pub const IPV6_IFADDR: u32 = 9;
    pub const IPV6_ROUTE: u32 = 11;
    pub const NEXTHOP: u32 = 32;
    /// All groups the mirror needs, in subscription order.
    pub const ALL: [u32; 6] = [
        LINK,
        IPV4_IFADDR,
        IPV4_ROUTE,
        IPV6_IFADDR,
        IPV6_ROUTE,
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

#[cfg(feature = "user")]
mod user {
    // Plain-old-data marker so userspace can read records without aya's trait.
    const _: () = assert!(super::EventHeader::SIZE == 24);
}
