//! One rule prepared for matching: devices resolved to ifindexes, prefixes to bit
//! masks, the goto target to a list position. Compiled once per change of rules or
//! links, so the walk ([`super`]) and the candidate index
//! ([`super::index`]) test plain integers per flow.

use std::net::IpAddr;

use crate::fib::flow::KernelFlow;
use crate::fib::l3mdev::LinkMap;
use crate::model::Family;
use crate::rule::{action, flags, fra, port_match, Rule};

/// A device named by a rule, resolved against the links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dev {
    Any,
    /// Named, but no such device (`[detached]`): matches nothing.
    Detached,
    /// `l3`: the device is a VRF, so flows on its ports match too (6.16+).
    Index {
        ifindex: u32,
        l3: bool,
    },
}

/// One rule, prepared for matching.
#[derive(Debug, Clone)]
pub(crate) struct Compiled {
    pub pref: u32,
    pub action: u8,
    pub table: u32,
    pub l3mdev: bool,
    pub invert: bool,
    pub find_saddr: bool,
    /// Index of the first rule with the goto's target priority.
    pub target: Option<usize>,
    /// (address, mask) in the low bits of a u128 (IPv4: low 32); mask 0: any.
    pub src: (u128, u128),
    pub src_len: u8,
    pub dst: (u128, u128),
    pub dst_len: u8,
    pub iif: Dev,
    pub oif: Dev,
    pub mark: u32,
    pub mask: u32,
    pub tun_id: u64,
    pub uid: (u32, u32),
    pub tos: u8,
    pub ip_proto: u8,
    pub sport: Option<(u16, u16)>,
    pub dport: Option<(u16, u16)>,
    pub sport_mask: Option<u16>,
    pub dport_mask: Option<u16>,
    pub suppress_prefixlen: i32,
    pub suppress_ifgroup: Option<u32>,
    /// Why the rule cannot be evaluated (raw attributes).
    pub opaque: Option<String>,
}

pub(crate) fn addr_bits(a: &IpAddr) -> u128 {
    match a {
        IpAddr::V4(a) => u128::from(u32::from(*a)),
        IpAddr::V6(a) => u128::from(*a),
    }
}

pub(crate) fn mask_bits(family: Family, len: u8) -> u128 {
    let width = match family {
        Family::V4 => 32,
        Family::V6 => 128,
    };
    if len == 0 {
        0
    } else {
        let ones = u128::MAX >> (128 - u32::from(len));
        ones << (width - u32::from(len))
    }
}

fn resolve(name: &Option<String>, links: &LinkMap) -> Dev {
    match name {
        None => Dev::Any,
        Some(n) => match links.ifindex(n) {
            None => Dev::Detached,
            Some(ifindex) => Dev::Index {
                ifindex,
                l3: links.is_l3_master(ifindex),
            },
        },
    }
}

impl Compiled {
    pub(crate) fn new(r: &Rule, rules: &[Rule], links: &LinkMap) -> Compiled {
        let net = |n: &Option<ipnet::IpNet>| match n {
            Some(n) => {
                let m = mask_bits(r.family, n.prefix_len());
                ((addr_bits(&n.addr()) & m, m), n.prefix_len())
            }
            None => ((0, 0), 0),
        };
        let (src, src_len) = net(&r.src);
        let (dst, dst_len) = net(&r.dst);
        let opaque = (!r.raw.is_empty()).then(|| {
            let names: Vec<String> = r
                .raw
                .iter()
                .map(|a| match fra::name(a.kind) {
                    Some(n) => format!("{n} (attribute {})", a.kind),
                    None => format!("attribute {}", a.kind),
                })
                .collect();
            format!("it has {} this program does not decode", names.join(", "))
        });
        Compiled {
            pref: r.priority,
            action: r.action,
            table: r.table,
            l3mdev: r.l3mdev,
            invert: r.flags & flags::INVERT != 0,
            find_saddr: r.flags & flags::FIND_SADDR != 0,
            target: match (r.action, r.goto) {
                (action::GOTO, Some(t)) => rules.iter().position(|x| x.priority == t),
                _ => None,
            },
            src,
            src_len,
            dst,
            dst_len,
            iif: resolve(&r.iif, links),
            oif: resolve(&r.oif, links),
            mark: r.fwmark,
            mask: r.fwmask,
            tun_id: r.tun_id.unwrap_or(0),
            uid: r.uid_range.unwrap_or((0, u32::MAX)),
            tos: r.tos,
            ip_proto: r.ip_proto,
            sport: r.sport,
            dport: r.dport,
            sport_mask: r.sport_mask,
            dport_mask: r.dport_mask,
            suppress_prefixlen: r.suppress_prefixlen.map_or(-1, |p| p as i32),
            suppress_ifgroup: r.suppress_ifgroup,
            opaque,
        }
    }

    /// `fib_rule_match` with the family's `match`, before `FIB_RULE_INVERT`.
    /// `None`: depends on what is not known here (FIND_SADDR without a source).
    pub(crate) fn selects(&self, f: &KernelFlow) -> Option<bool> {
        match self.iif {
            Dev::Any => {}
            Dev::Detached => return Some(false),
            Dev::Index { ifindex, l3 } => {
                if !(ifindex == f.iif || (l3 && !f.l3mdev_from_oif && f.l3mdev == ifindex)) {
                    return Some(false);
                }
            }
        }
        match self.oif {
            Dev::Any => {}
            Dev::Detached => return Some(false),
            Dev::Index { ifindex, l3 } => {
                if !(ifindex == f.oif || (l3 && f.l3mdev_from_oif && f.l3mdev == ifindex)) {
                    return Some(false);
                }
            }
        }
        if (self.mark ^ f.mark) & self.mask != 0 {
            return Some(false);
        }
        // Lookups carry no tunnel id.
        if self.tun_id != 0 {
            return Some(false);
        }
        if self.l3mdev && f.l3mdev_table.is_none() {
            return Some(false);
        }
        if f.uid < self.uid.0 || f.uid > self.uid.1 {
            return Some(false);
        }
        if (addr_bits(&f.dst) ^ self.dst.0) & self.dst.1 != 0 {
            return Some(false);
        }
        match (f.family, f.src) {
            (Family::V4, src) => {
                let s = src.map_or(0, |s| addr_bits(&s));
                if (s ^ self.src.0) & self.src.1 != 0 {
                    return Some(false);
                }
                // Legacy TOS selector: the rule's DSCP against the flow's low three bits.
                if self.tos != 0 && self.tos >> 2 != f.dscp & 0x07 {
                    return Some(false);
                }
            }
            (Family::V6, src) => {
                if self.src_len != 0 {
                    match src {
                        Some(s) if (addr_bits(&s) ^ self.src.0) & self.src.1 != 0 => {
                            return Some(false)
                        }
                        Some(_) => {}
                        None if self.find_saddr => return None,
                        None => return Some(false),
                    }
                }
                if self.tos != 0 && self.tos >> 2 != f.dscp {
                    return Some(false);
                }
            }
        }
        if self.ip_proto != 0 && self.ip_proto != f.ipproto {
            return Some(false);
        }
        if !port_match(self.sport, self.sport_mask, f.sport)
            || !port_match(self.dport, self.dport_mask, f.dport)
        {
            return Some(false);
        }
        Some(true)
    }

    pub(crate) fn suppresses(&self, prefix_len: u8, dev: u32, links: &LinkMap) -> bool {
        if i32::from(prefix_len) <= self.suppress_prefixlen {
            return true;
        }
        matches!(self.suppress_ifgroup, Some(g) if dev != 0 && links.group(dev) == g)
    }
}
