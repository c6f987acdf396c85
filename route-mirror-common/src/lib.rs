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
