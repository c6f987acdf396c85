//! Policy routing rules (`ip rule`), as the kernel keeps them: one ordered list per
//! family, walked by `fib_rules_lookup` before any table is consulted.
//!
//! A [`Rule`] (its data lives in [`crate::model`], its behaviour here) holds every
//! attribute the kernel reports (`fib_nl_fill_rule` and the per-family `fill`), so
//! that two rules are equal exactly when the kernel would list them identically.
//! Attributes this program does not understand are kept as raw bytes
//! ([`RawAttr`]): they take part in equality (so `diff` compares them byte for byte), and
//! the evaluator refuses to guess what such a rule matches (`crate::fib::rules`).
//!
//! The kernel has no rule key: a rule is its whole content, rules of equal priority
//! keep the order they were added in, and duplicates are possible (a client that does
//! not ask for `NLM_F_EXCL`). [`list::RuleList`] keeps that order.

pub mod diff;
pub mod list;
pub mod show;

use std::net::IpAddr;

use crate::model::Family;
pub use crate::model::{RawAttr, Rule};

/// `FR_ACT_*` rule actions.
pub mod action {
    pub const UNSPEC: u8 = 0;
    pub const TO_TBL: u8 = 1;
    pub const GOTO: u8 = 2;
    pub const NOP: u8 = 3;
    pub const BLACKHOLE: u8 = 6;
    pub const UNREACHABLE: u8 = 7;
    pub const PROHIBIT: u8 = 8;

    pub fn name(a: u8) -> Option<&'static str> {
        Some(match a {
            UNSPEC => "unspec",
            TO_TBL => "lookup",
            GOTO => "goto",
            NOP => "nop",
            BLACKHOLE => "blackhole",
            UNREACHABLE => "unreachable",
            PROHIBIT => "prohibit",
            _ => return None,
        })
    }
}

/// `FIB_RULE_*` flags.
pub mod flags {
    pub const PERMANENT: u32 = 0x1;
    pub const INVERT: u32 = 0x2;
    pub const UNRESOLVED: u32 = 0x4;
    pub const IIF_DETACHED: u32 = 0x8;
    pub const OIF_DETACHED: u32 = 0x10;
    pub const FIND_SADDR: u32 = 0x10000;
    /// Flags the kernel derives when it reports a rule and changes without a rule
    /// notification: a goto's target appearing, the named device being created or
    /// renamed. The mirror derives them from its own rules and links instead of storing
    /// them ([`super::Rule::unresolved`], [`super::Rule::iif_detached`]).
    pub const VOLATILE: u32 = UNRESOLVED | IIF_DETACHED | OIF_DETACHED;
}

/// `FRA_*` attribute numbers (`include/uapi/linux/fib_rules.h`).
pub mod fra {
    pub const DST: u16 = 1;
    pub const SRC: u16 = 2;
    pub const IIFNAME: u16 = 3;
    pub const GOTO: u16 = 4;
    pub const PRIORITY: u16 = 6;
    pub const FWMARK: u16 = 10;
    pub const FLOW: u16 = 11;
    pub const TUN_ID: u16 = 12;
    pub const SUPPRESS_IFGROUP: u16 = 13;
    pub const SUPPRESS_PREFIXLEN: u16 = 14;
    pub const TABLE: u16 = 15;
    pub const FWMASK: u16 = 16;
    pub const OIFNAME: u16 = 17;
    pub const PAD: u16 = 18;
    pub const L3MDEV: u16 = 19;
    pub const UID_RANGE: u16 = 20;
    pub const PROTOCOL: u16 = 21;
    pub const IP_PROTO: u16 = 22;
    pub const SPORT_RANGE: u16 = 23;
    pub const DPORT_RANGE: u16 = 24;
    pub const DSCP: u16 = 25;
    pub const FLOWLABEL: u16 = 26;
    pub const FLOWLABEL_MASK: u16 = 27;
    pub const SPORT_MASK: u16 = 28;
    pub const DPORT_MASK: u16 = 29;
    pub const DSCP_MASK: u16 = 30;

    /// Names of the attributes newer than what is decoded here, for messages.
    pub fn name(kind: u16) -> Option<&'static str> {
        Some(match kind {
            DSCP => "dscp",
            FLOWLABEL => "flowlabel",
            FLOWLABEL_MASK => "flowlabel mask",
            SPORT_MASK => "sport mask",
            DPORT_MASK => "dport mask",
            DSCP_MASK => "dscp mask",
            _ => return None,
        })
    }
}

impl Rule {
    /// A rule that sends everything of `family` to `table` at `priority`, like the
    /// kernel's default rules (`fib_default_rule_add`).
    pub fn to_table(family: Family, priority: u32, table: u32) -> Rule {
        Rule {
            family,
            priority,
            action: action::TO_TBL,
            table,
            flags: 0,
            src: None,
            dst: None,
            tos: 0,
            iif: None,
            oif: None,
            fwmark: 0,
            fwmask: 0,
            goto: None,
            realms: None,
            tun_id: None,
            suppress_prefixlen: None,
            suppress_ifgroup: None,
            l3mdev: false,
            uid_range: None,
            protocol: crate::model::rtprot::KERNEL,
            ip_proto: 0,
            sport: None,
            dport: None,
            sport_mask: None,
            dport_mask: None,
            raw: Vec::new(),
        }
    }

    /// The kernel's rules of a fresh namespace: IPv4 `0 local, 32766 main, 32767
    /// default`, IPv6 `0 local, 32766 main`.
    pub fn defaults(family: Family) -> Vec<Rule> {
        use crate::model::table;
        let mut v = vec![
            Rule::to_table(family, 0, table::LOCAL),
            Rule::to_table(family, 32766, table::MAIN),
        ];
        if family == Family::V4 {
            v.push(Rule::to_table(family, 32767, table::DEFAULT));
        }
        v
    }

    pub fn inverted(&self) -> bool {
        self.flags & flags::INVERT != 0
    }

    /// Whether `addr` is inside the `from` prefix (or there is none).
    pub fn src_contains(&self, addr: &IpAddr) -> bool {
        self.src.is_none_or(|n| n.contains(addr))
    }

    /// Whether `addr` is inside the `to` prefix (or there is none).
    pub fn dst_contains(&self, addr: &IpAddr) -> bool {
        self.dst.is_none_or(|n| n.contains(addr))
    }

    /// A goto whose target priority has no rule: the kernel skips it (`FIB_RULE_UNRESOLVED`).
    pub fn unresolved(&self, rules: &[Rule]) -> bool {
        self.action == action::GOTO
            && !self
                .goto
                .is_some_and(|t| rules.iter().any(|r| r.priority == t))
    }

    /// Whether the rule matches nothing but what it names: no selector at all.
    pub fn selects_all(&self) -> bool {
        self.src.is_none()
            && self.dst.is_none()
            && self.tos == 0
            && self.iif.is_none()
            && self.oif.is_none()
            && self.fwmask == 0
            && self.tun_id.is_none_or(|t| t == 0)
            && !self.l3mdev
            && self.uid_range.is_none()
            && self.ip_proto == 0
            && self.sport.is_none_or(|r| !port_range_set(r))
            && self.dport.is_none_or(|r| !port_range_set(r))
            && self.sport_mask.is_none_or(|m| m == 0)
            && self.dport_mask.is_none_or(|m| m == 0)
            && self.flags & (flags::INVERT | flags::FIND_SADDR) == 0
            && self.raw.is_empty()
    }
}

/// `fib_rule_port_range_set`: a range counts only when both ends are nonzero.
pub fn port_range_set((start, end): (u16, u16)) -> bool {
    start != 0 && end != 0
}

/// `fib_rule_port_match`: with a mask, `(start ^ port) & mask == 0`; without, the range.
pub fn port_match(range: Option<(u16, u16)>, mask: Option<u16>, port: u16) -> bool {
    let (start, end) = range.unwrap_or((0, 0));
    let mask = mask.unwrap_or(0);
    if (start ^ port) & mask != 0 {
        return false;
    }
    mask != 0 || !port_range_set((start, end)) || (start..=end).contains(&port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_what_a_fresh_namespace_has() {
        let v4 = Rule::defaults(Family::V4);
        assert_eq!(
            v4.iter().map(|r| (r.priority, r.table)).collect::<Vec<_>>(),
            vec![(0, 255), (32766, 254), (32767, 253)]
        );
        assert!(v4.iter().all(Rule::selects_all));
        assert_eq!(Rule::defaults(Family::V6).len(), 2);
    }

    #[test]
    fn unresolved_goto_is_derived_from_the_list() {
        let mut g = Rule::to_table(Family::V4, 10, 0);
        g.action = action::GOTO;
        g.goto = Some(100);
        let rules = Rule::defaults(Family::V4);
        assert!(g.unresolved(&rules));
        let mut with_target = rules.clone();
        with_target.push(Rule::to_table(Family::V4, 100, 7));
        assert!(!g.unresolved(&with_target));
        assert!(!rules[0].unresolved(&rules));
    }
}
