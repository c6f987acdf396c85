//! The kernel's routing decision: `fib_rules_lookup` over one family's rules, each
//! rule's match (`fib_rule_match` + `fib4_rule_match` / `fib6_rule_match`), action
//! (`fib4_rule_action` / `fib6_rule_action`) and suppression (`fib4_rule_suppress` /
//! `fib6_rule_suppress`), over any FIB that can answer one table ([`Tables`]).
//!
//! Walk, as the kernel does: rules in list order; one that does not match is passed;
//! a matching `goto` continues at the first rule of its target priority (an unresolved
//! one is passed); `nop` is passed; `blackhole`/`unreachable`/`prohibit` end the walk
//! with their error; a table lookup that finds nothing, finds a `throw` route or names a
//! table that does not exist passes to the next rule (`-EAGAIN`), one that finds a
//! reject route (blackhole/unreachable/prohibit) ends with that route's error, and a
//! found route is used unless the rule suppresses it (`suppress_prefixlength`: prefix
//! no longer than N; `suppress_ifgroup`: first next hop's device in group N). Nothing
//! left: no route (`-ESRCH` → `ENETUNREACH`).
//!
//! A rule with attributes kept raw (not decoded, see [`crate::rule`]) or an IPv6
//! `FIB_RULE_FIND_SADDR` rule reached without a source cannot be evaluated here: the
//! walk stops there and says so instead of guessing.
//!
//! Speed: rules are compiled once per change of rules or links ([`RuleSet::new`]);
//! large sets get a candidate index ([`index`]) so a walk over 1,000 rules
//! tests only the few that can match; and a set whose rules select everything (the
//! default three) reduces to a plain chain of tables ([`RuleSet::chain`]) that batch
//! lookups answer with the table walk they always used (BENCHMARKS.md).

pub mod compiled;
pub mod index;
pub mod mirror;

use super::flow::KernelFlow;
use super::l3mdev::LinkMap;
use crate::model::{rtn, rtnh, table, Family, NextHop, RouteAttrs};
use crate::rule::{action, port_range_set, Rule};
use compiled::Compiled;
use index::Index;
pub use index::Scratch;

/// What one table answers for a flow (`fib_table_lookup` / `ip6_pol_route`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableAnswer<R> {
    /// No such table, no matching route, or a `throw` route: on to the next rule.
    Continue,
    /// The route the table would use.
    Route {
        route: R,
        /// `RTN_*` type: reject types end the walk with their error.
        kind: u8,
        prefix_len: u8,
        /// Device of the route's first next hop (0: none), for `suppress_ifgroup`.
        dev: u32,
    },
}

/// A FIB the rules can consult, one table at a time.
pub trait Tables {
    type Route: Copy;
    fn lookup(&self, family: Family, table: u32, flow: &KernelFlow) -> TableAnswer<Self::Route>;
}

/// The decision for one flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<R> {
    /// Rule `rule` looked up `table` and found `route` (of type `kind`; a reject type
    /// means the kernel answers with its error, see [`Outcome::errno`]).
    Route {
        rule: u32,
        table: u32,
        route: R,
        kind: u8,
    },
    /// Rule `rule`'s action (`blackhole`, `unreachable`, `prohibit`) ended the walk.
    Action { rule: u32, action: u8 },
    /// No rule gave an answer.
    NoRoute,
    /// Rule `rule` has to be evaluated and cannot be here; `why` says what it holds.
    CannotEvaluate { rule: u32, why: String },
    /// An IPv4 output lookup with an output device found no route through it (or a
    /// reject): the kernel sends the packet on-link through `oif` without a route, and
    /// `ip route get ... fibmatch` answers `EHOSTUNREACH`
    /// ([`KernelFlow::assumes_onlink`]).
    OnLink { oif: u32 },
}

impl<R> Outcome<R> {
    /// The error `ip route get` reports for this outcome (`None`: it answers a route).
    pub fn errno(&self) -> Option<i32> {
        match self {
            Outcome::Route { kind, .. } => route_errno(*kind),
            Outcome::Action { action, .. } => Some(match *action {
                action::UNREACHABLE => libc::ENETUNREACH,
                action::PROHIBIT => libc::EACCES,
                _ => libc::EINVAL,
            }),
            Outcome::NoRoute => Some(libc::ENETUNREACH),
            Outcome::OnLink { .. } => Some(libc::EHOSTUNREACH),
            Outcome::CannotEvaluate { .. } => None,
        }
    }

    /// The priority of the rule that decided (if one did).
    pub fn rule(&self) -> Option<u32> {
        match self {
            Outcome::Route { rule, .. }
            | Outcome::Action { rule, .. }
            | Outcome::CannotEvaluate { rule, .. } => Some(*rule),
            Outcome::NoRoute | Outcome::OnLink { .. } => None,
        }
    }

    pub fn map<S>(self, f: impl FnOnce(R) -> S) -> Outcome<S> {
        match self {
            Outcome::Route {
                rule,
                table,
                route,
                kind,
            } => Outcome::Route {
                rule,
                table,
                route: f(route),
                kind,
            },
            Outcome::Action { rule, action } => Outcome::Action { rule, action },
            Outcome::NoRoute => Outcome::NoRoute,
            Outcome::OnLink { oif } => Outcome::OnLink { oif },
            Outcome::CannotEvaluate { rule, why } => Outcome::CannotEvaluate { rule, why },
        }
    }
}

/// The error of a route of type `kind` (`fib_props[].error`; IPv6's
/// `ip6_rt_type_to_error` agrees for these).
pub fn route_errno(kind: u8) -> Option<i32> {
    match kind {
        rtn::BLACKHOLE | rtn::NAT | rtn::XRESOLVE => Some(libc::EINVAL),
        rtn::UNREACHABLE => Some(libc::EHOSTUNREACH),
        rtn::PROHIBIT => Some(libc::EACCES),
        _ => None,
    }
}

/// One family's rules, compiled.
#[derive(Debug, Clone, Default)]
pub struct FamilyRules {
    pub(crate) rules: Vec<Compiled>,
    index: Option<Index>,
    /// Some IPv4 rule needs protocol and ports on input (`fib_rules_require_fldissect`).
    dissect: bool,
}

/// Rules above this many get a candidate index: below, testing each is faster.
const INDEX_FROM: usize = 16;

impl FamilyRules {
    fn new(rules: &[Rule], links: &LinkMap) -> FamilyRules {
        let compiled: Vec<Compiled> = rules
            .iter()
            .map(|r| Compiled::new(r, rules, links))
            .collect();
        let dissect = rules.iter().any(|r| {
            r.iif.as_deref() != Some("lo")
                && (r.ip_proto != 0
                    || r.sport.is_some_and(port_range_set)
                    || r.dport.is_some_and(port_range_set)
                    || r.sport_mask.is_some_and(|m| m != 0)
                    || r.dport_mask.is_some_and(|m| m != 0))
        });
        let index = (compiled.len() > INDEX_FROM).then(|| Index::new(&compiled));
        FamilyRules {
            rules: compiled,
            index,
            dissect,
        }
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// What a set of rules that select everything reduces to: tables in order, then
/// (if a rule action ends the walk) that rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// (rule priority, table), in walk order.
    pub tables: Vec<(u32, u32)>,
    /// The rule whose action ends the walk when no table answered.
    pub last: Option<(u32, u8)>,
}

/// Both families' rules, compiled against the links they name.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    v4: FamilyRules,
    v6: FamilyRules,
    chains: [Option<Chain>; 2],
}

impl RuleSet {
    /// Compiles `rules` (any order of families; each family in kernel order).
    pub fn new<'a>(rules: impl IntoIterator<Item = &'a Rule>, links: &LinkMap) -> RuleSet {
        let (v4, v6): (Vec<Rule>, Vec<Rule>) = rules
            .into_iter()
            .cloned()
            .partition(|r| r.family == Family::V4);
        let chains = [chain(&v4), chain(&v6)];
        RuleSet {
            v4: FamilyRules::new(&v4, links),
            v6: FamilyRules::new(&v6, links),
            chains,
        }
    }

    /// The kernel's default rules of both families.
    pub fn defaults() -> RuleSet {
        let rules: Vec<Rule> = Family::ALL.into_iter().flat_map(Rule::defaults).collect();
        RuleSet::new(&rules, &LinkMap::default())
    }

    pub fn family(&self, f: Family) -> &FamilyRules {
        match f {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }

    /// Whether forwarding lookups of `f` dissect protocol and ports.
    pub fn dissects(&self, f: Family) -> bool {
        f == Family::V4 && self.v4.dissect
    }

    /// The plain chain of tables `f`'s rules reduce to, if every rule selects
    /// everything (the default rules do).
    pub fn chain(&self, f: Family) -> Option<&Chain> {
        self.chains[f as usize].as_ref()
    }

    /// `fib_rules_lookup` for `flow` (use [`super::flow::Flow::kernel`] to make it).
    pub fn decide<T: Tables>(
        &self,
        flow: &KernelFlow,
        tables: &T,
        links: &LinkMap,
    ) -> Outcome<T::Route> {
        self.decide_with(flow, tables, links, &mut Scratch::default())
    }

    /// [`RuleSet::decide`] reusing `scratch` (batches).
    pub fn decide_with<T: Tables>(
        &self,
        flow: &KernelFlow,
        tables: &T,
        links: &LinkMap,
        scratch: &mut Scratch,
    ) -> Outcome<T::Route> {
        let o = self.walk(flow, tables, links, scratch);
        if flow.assumes_onlink() {
            let failed = match &o {
                Outcome::Route { kind, .. } => route_errno(*kind).is_some(),
                Outcome::Action { .. } | Outcome::NoRoute => true,
                Outcome::OnLink { .. } | Outcome::CannotEvaluate { .. } => false,
            };
            if failed {
                return Outcome::OnLink { oif: flow.oif };
            }
        }
        o
    }

    fn walk<T: Tables>(
        &self,
        flow: &KernelFlow,
        tables: &T,
        links: &LinkMap,
        scratch: &mut Scratch,
    ) -> Outcome<T::Route> {
        let fam = self.family(flow.family);
        let rules = &fam.rules;
        match &fam.index {
            Some(ix) => {
                ix.candidates(flow, scratch);
                let mut from = 0;
                while let Some(i) = scratch.next_from(from) {
                    match step(rules, i, flow, tables, links) {
                        Step::Next => from = i + 1,
                        Step::Jump(t) => from = t,
                        Step::Done(o) => return o,
                    }
                }
                Outcome::NoRoute
            }
            None => {
                let mut i = 0;
                while i < rules.len() {
                    match step(rules, i, flow, tables, links) {
                        Step::Next => i += 1,
                        Step::Jump(t) => i = t,
                        Step::Done(o) => return o,
                    }
                }
                Outcome::NoRoute
            }
        }
    }
}

enum Step<R> {
    Next,
    Jump(usize),
    Done(Outcome<R>),
}

fn step<T: Tables>(
    rules: &[Compiled],
    i: usize,
    f: &KernelFlow,
    tables: &T,
    links: &LinkMap,
) -> Step<T::Route> {
    let r = &rules[i];
    if let Some(why) = &r.opaque {
        return Step::Done(Outcome::CannotEvaluate {
            rule: r.pref,
            why: why.clone(),
        });
    }
    let Some(sel) = r.selects(f) else {
        return Step::Done(Outcome::CannotEvaluate {
            rule: r.pref,
            why: "it asks the kernel to pick a source address (FIB_RULE_FIND_SADDR) and the \
                  lookup has none"
                .into(),
        });
    };
    if sel == r.invert {
        return Step::Next;
    }
    match r.action {
        // Backward jumps are refused by the kernel; guard against a corrupt list anyway.
        action::GOTO => match r.target {
            Some(t) if t > i => Step::Jump(t),
            _ => Step::Next,
        },
        action::NOP => Step::Next,
        action::TO_TBL => {
            let id = if r.l3mdev {
                f.l3mdev_table.unwrap_or(0)
            } else {
                r.table
            };
            // `fib_get_table(net, 0)` / `fib6_get_table(net, 0)` are main.
            let id = if id == table::UNSPEC { table::MAIN } else { id };
            match tables.lookup(f.family, id, f) {
                TableAnswer::Continue => Step::Next,
                TableAnswer::Route {
                    route,
                    kind,
                    prefix_len,
                    dev,
                } => {
                    if route_errno(kind).is_none() && r.suppresses(prefix_len, dev, links) {
                        return Step::Next;
                    }
                    Step::Done(Outcome::Route {
                        rule: r.pref,
                        table: id,
                        route,
                        kind,
                    })
                }
            }
        }
        a => Step::Done(Outcome::Action {
            rule: r.pref,
            action: a,
        }),
    }
}

fn chain(rules: &[Rule]) -> Option<Chain> {
    if !rules.iter().all(Rule::selects_all) {
        return None;
    }
    let mut c = Chain {
        tables: Vec::new(),
        last: None,
    };
    let mut i = 0;
    while i < rules.len() {
        let r = &rules[i];
        match r.action {
            action::GOTO => match r
                .goto
                .and_then(|t| rules.iter().position(|x| x.priority == t))
            {
                Some(t) if t > i => i = t,
                _ => i += 1,
            },
            action::NOP => i += 1,
            action::TO_TBL => {
                if r.suppress_prefixlen.is_some() || r.suppress_ifgroup.is_some() {
                    return None;
                }
                let id = if r.table == table::UNSPEC {
                    table::MAIN
                } else {
                    r.table
                };
                c.tables.push((r.priority, id));
                i += 1;
            }
            a => {
                c.last = Some((r.priority, a));
                break;
            }
        }
    }
    Some(c)
}

/// A FIB snapshot as [`Tables`]. A table the snapshot cannot answer for (TOS routes,
/// left out) answers "next rule" and sets [`FastTables::fell_back`]: the caller must
/// then ask the exact FIB instead.
pub struct FastTables<'a> {
    fib: &'a super::fast::FastFib,
    fell_back: std::cell::Cell<bool>,
}

impl<'a> FastTables<'a> {
    pub fn new(fib: &'a super::fast::FastFib) -> FastTables<'a> {
        FastTables {
            fib,
            fell_back: std::cell::Cell::new(false),
        }
    }

    pub fn fell_back(&self) -> bool {
        self.fell_back.get()
    }
}

impl<'a> Tables for FastTables<'a> {
    type Route = (ipnet::IpNet, &'a super::Entry);

    fn lookup(&self, family: Family, id: u32, f: &KernelFlow) -> TableAnswer<Self::Route> {
        // The snapshot keeps no next hops per route: the exact FIB filters by device.
        if f.oif_filter().is_some() {
            self.fell_back.set(true);
            return TableAnswer::Continue;
        }
        let tos = match family {
            Family::V4 => f.legacy_tos(),
            Family::V6 => 0,
        };
        match self.fib.lookup(f.dst, &[id], tos) {
            super::fast::Lookup::Route(_, net, e) => TableAnswer::Route {
                route: (net, e),
                kind: e.attrs.kind,
                prefix_len: net.prefix_len(),
                dev: e.attrs.nexthops.first().map_or(0, |h| h.ifindex),
            },
            super::fast::Lookup::None => TableAnswer::Continue,
            super::fast::Lookup::Exact => {
                self.fell_back.set(true);
                TableAnswer::Continue
            }
        }
    }
}

/// The exact FIB as [`Tables`]: `RouteTable::lookup` with the flow's TOS, the output
/// device's filter ([`KernelFlow::oif_filter`]) over the next hops `hops` resolves
/// (nexthop objects included), and, given [`ExactTables::with_usable`], the routes the
/// mirror's liveness says cannot forward skipped (`Mirror::usable`), as
/// `fib_table_lookup` skips dead ones.
#[derive(Clone, Copy)]
pub struct ExactTables<'a> {
    pub fib: &'a super::Fib,
    pub hops: &'a dyn Fn(&RouteAttrs) -> Vec<NextHop>,
    pub usable: Option<&'a UsableFn<'a>>,
}

/// Whether a route can forward now (`Mirror::usable`).
pub type UsableFn<'f> = dyn Fn(Family, &super::Entry) -> super::Usable + 'f;

impl<'a> ExactTables<'a> {
    pub fn new(fib: &'a super::Fib, hops: &'a dyn Fn(&RouteAttrs) -> Vec<NextHop>) -> Self {
        ExactTables {
            fib,
            hops,
            usable: None,
        }
    }

    /// Skips the routes `usable` says cannot forward.
    pub fn with_usable(self, usable: &'a dyn Fn(Family, &super::Entry) -> super::Usable) -> Self {
        ExactTables {
            usable: Some(usable),
            ..self
        }
    }

    /// Whether `e` can carry a flow that must leave through `oif`: IPv4 decides reject
    /// and throw routes before the device test; a hop must be alive.
    fn through(&self, family: Family, e: &super::Entry, oif: u32) -> bool {
        (family == Family::V4
            && (route_errno(e.attrs.kind).is_some() || e.attrs.kind == rtn::THROW))
            || (self.hops)(&e.attrs)
                .iter()
                .any(|h| h.ifindex == oif && h.flags & rtnh::DEAD == 0)
    }
}

impl<'a> Tables for ExactTables<'a> {
    type Route = (ipnet::IpNet, &'a super::Entry);

    fn lookup(&self, family: Family, id: u32, f: &KernelFlow) -> TableAnswer<Self::Route> {
        let Some(t) = self.fib.table(family, id) else {
            return TableAnswer::Continue;
        };
        let tos = match family {
            Family::V4 => f.legacy_tos(),
            Family::V6 => 0,
        };
        let oif = f.oif_filter();
        let found = t.lookup_with(f.dst, tos, &mut |fam, e| {
            if oif.is_some_and(|o| !self.through(family, e, o)) {
                return super::Usable::No;
            }
            self.usable.map_or(super::Usable::Yes, |u| u(fam, e))
        });
        match found {
            super::TableLookup::Route(net, e) => TableAnswer::Route {
                route: (net, e),
                kind: e.attrs.kind,
                prefix_len: net.prefix_len(),
                dev: e.attrs.nexthops.first().map_or(0, |h| h.ifindex),
            },
            super::TableLookup::Throw | super::TableLookup::None => TableAnswer::Continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fib::flow::Flow;
    use crate::fib::l3mdev::tests::links;
    use crate::rule::{flags, fra};
    use ipnet::IpNet;
    use proptest::prelude::*;
    use std::net::IpAddr;

    /// A FIB for tests: (family, table) → routes (prefix, type, device), longest wins.
    #[derive(Default)]
    struct Toy(Vec<(u32, IpNet, u8, u32)>);

    impl Toy {
        fn add(mut self, table: u32, net: &str, kind: u8, dev: u32) -> Toy {
            self.0.push((table, net.parse().unwrap(), kind, dev));
            self
        }
    }

    impl Tables for Toy {
        type Route = IpNet;
        fn lookup(&self, family: Family, id: u32, f: &KernelFlow) -> TableAnswer<IpNet> {
            let best = self
                .0
                .iter()
                .filter(|(t, n, _, _)| {
                    *t == id && Family::of_net(n) == family && n.contains(&f.dst)
                })
                .max_by_key(|(_, n, _, _)| n.prefix_len());
            match best {
                Some((_, _, rtn::THROW, _)) | None => TableAnswer::Continue,
                Some((_, n, kind, dev)) => TableAnswer::Route {
                    route: *n,
                    kind: *kind,
                    prefix_len: n.prefix_len(),
                    dev: *dev,
                },
            }
        }
    }

    fn fib() -> Toy {
        Toy::default()
            .add(255, "10.0.0.1/32", rtn::LOCAL, 14)
            .add(254, "0.0.0.0/0", rtn::UNICAST, 14)
            .add(254, "192.0.2.0/24", rtn::UNICAST, 14)
            .add(100, "192.0.2.0/24", rtn::UNICAST, 11)
            .add(100, "198.51.100.0/24", rtn::THROW, 0)
            .add(101, "198.51.100.0/24", rtn::BLACKHOLE, 0)
            .add(1001, "0.0.0.0/0", rtn::UNICAST, 11)
            .add(254, "::/0", rtn::UNICAST, 14)
            .add(100, "2001:db8::/32", rtn::UNREACHABLE, 0)
    }

    fn rule(prio: u32, table: u32) -> Rule {
        let mut r = Rule::to_table(Family::V4, prio, table);
        r.protocol = 0;
        r
    }

    fn decide(rules: &[Rule], f: Flow) -> Outcome<IpNet> {
        let l = links();
        let set = RuleSet::new(rules, &l);
        let k = f.kernel(&l, set.dissects(f.family()));
        let linear = set.decide(&k, &fib(), &l);
        let indexed = RuleSet::new_indexed(rules, &l).decide(&k, &fib(), &l);
        assert_eq!(linear, indexed, "index disagrees");
        linear
    }

    fn with_defaults(extra: impl IntoIterator<Item = Rule>) -> Vec<Rule> {
        let mut l = crate::rule::list::RuleList::default();
        l.replace_all(Rule::defaults(Family::V4), 0);
        for r in extra {
            l.upsert(r, 0);
        }
        l.to_vec()
    }

    fn flow(dst: &str) -> Flow {
        Flow::to(dst.parse().unwrap())
    }

    fn route(rule: u32, table: u32, net: &str) -> Outcome<IpNet> {
        Outcome::Route {
            rule,
            table,
            route: net.parse().unwrap(),
            kind: rtn::UNICAST,
        }
    }

    #[test]
    fn default_rules_walk_local_main_default() {
        let rules = with_defaults([]);
        assert_eq!(
            decide(&rules, flow("192.0.2.7")),
            route(32766, 254, "192.0.2.0/24")
        );
        assert_eq!(
            decide(&rules, flow("10.0.0.1")),
            Outcome::Route {
                rule: 0,
                table: 255,
                route: "10.0.0.1/32".parse().unwrap(),
                kind: rtn::LOCAL
            }
        );
        let set = RuleSet::new(&rules, &links());
        assert_eq!(
            set.chain(Family::V4),
            Some(&Chain {
                tables: vec![(0, 255), (32766, 254), (32767, 253)],
                last: None
            })
        );
    }

    #[test]
    fn source_rules_choose_the_table_and_throw_falls_through() {
        let mut r = rule(100, 100);
        r.src = Some("10.0.0.0/8".parse().unwrap());
        let rules = with_defaults([r]);
        let mut f = flow("192.0.2.7");
        assert_eq!(decide(&rules, f), route(32766, 254, "192.0.2.0/24"));
        f.src = Some("10.0.0.1".parse().unwrap());
        assert_eq!(decide(&rules, f), route(100, 100, "192.0.2.0/24"));
        // A throw route in table 100 sends the walk on to main.
        f.dst = "198.51.100.1".parse().unwrap();
        assert_eq!(decide(&rules, f), route(32766, 254, "0.0.0.0/0"));
        assert!(RuleSet::new(&rules, &links()).chain(Family::V4).is_none());
    }

    #[test]
    fn reject_routes_and_rule_actions_end_the_walk_with_their_errors() {
        let mut bh = rule(90, 0);
        bh.action = action::PROHIBIT;
        bh.dst = Some("203.0.113.0/24".parse().unwrap());
        let rules = with_defaults([rule(100, 101), bh]);
        let o = decide(&rules, flow("198.51.100.1"));
        assert_eq!(o.errno(), Some(libc::EINVAL));
        assert_eq!(o.rule(), Some(100));
        let o = decide(&rules, flow("203.0.113.9"));
        assert_eq!(
            o,
            Outcome::Action {
                rule: 90,
                action: action::PROHIBIT
            }
        );
        assert_eq!(o.errno(), Some(libc::EACCES));
        let v6 = decide(&[], flow("2001:db8::1"));
        assert_eq!(v6, Outcome::NoRoute);
        assert_eq!(v6.errno(), Some(libc::ENETUNREACH));
    }

    #[test]
    fn goto_nop_and_unresolved_goto() {
        let mut g = rule(10, 0);
        g.action = action::GOTO;
        g.goto = Some(200);
        g.dst = Some("192.0.2.0/24".parse().unwrap());
        let mut nop = rule(20, 0);
        nop.action = action::NOP;
        let skipped = rule(100, 101); // would blackhole 198.51.100/24, skipped by the goto
        let target = rule(200, 100);
        let rules = with_defaults([g.clone(), nop.clone(), skipped.clone(), target.clone()]);
        assert_eq!(
            decide(&rules, flow("192.0.2.1")),
            route(200, 100, "192.0.2.0/24")
        );
        // Not matched by the goto: walks through rule 100.
        assert_eq!(
            decide(&rules, flow("198.51.100.1")).errno(),
            Some(libc::EINVAL)
        );
        // Without its target the goto is passed.
        let rules = with_defaults([g, nop, skipped]);
        assert_eq!(
            decide(&rules, flow("192.0.2.1")),
            route(32766, 254, "192.0.2.0/24")
        );
    }

    #[test]
    fn suppress_prefixlength_zero_skips_default_routes_only() {
        let mut s = rule(50, 254);
        s.suppress_prefixlen = Some(0);
        let rules = with_defaults([s, rule(51, 1001)]);
        // main's default route is suppressed; table 1001 answers.
        assert_eq!(
            decide(&rules, flow("8.8.8.8")),
            route(51, 1001, "0.0.0.0/0")
        );
        // A more specific route in main is kept.
        assert_eq!(
            decide(&rules, flow("192.0.2.1")),
            route(50, 254, "192.0.2.0/24")
        );
    }

    #[test]
    fn suppress_ifgroup_uses_the_first_hops_device_group() {
        let mut s = rule(50, 254);
        s.suppress_ifgroup = Some(5); // device 14 (eth3) is in group 5
        let rules = with_defaults([s]);
        assert_eq!(
            decide(&rules, flow("192.0.2.1")),
            route(32766, 254, "192.0.2.0/24")
        );
    }

    #[test]
    fn not_inverts_the_whole_match() {
        let mut r = rule(100, 100);
        r.flags = flags::INVERT;
        r.fwmark = 1;
        r.fwmask = 1;
        let rules = with_defaults([r]);
        let mut f = flow("192.0.2.1");
        assert_eq!(decide(&rules, f), route(100, 100, "192.0.2.0/24"));
        f.mark = 3;
        assert_eq!(decide(&rules, f), route(32766, 254, "192.0.2.0/24"));
    }

    #[test]
    fn iif_lo_selects_output_and_uid_only_output_in_ipv4() {
        let mut lo = rule(100, 100);
        lo.iif = Some("lo".into());
        let mut uid = rule(90, 1001);
        uid.uid_range = Some((1000, 2000));
        let rules = with_defaults([lo, uid]);
        let mut f = flow("192.0.2.1");
        assert_eq!(decide(&rules, f), route(100, 100, "192.0.2.0/24"));
        f.uid = Some(1500);
        assert_eq!(decide(&rules, f), route(90, 1001, "0.0.0.0/0"));
        // Forwarded: neither the lo rule nor (IPv4) the uid applies.
        f.iif = Some(14);
        f.src = Some("192.0.2.99".parse().unwrap());
        assert_eq!(decide(&rules, f), route(32766, 254, "192.0.2.0/24"));
    }

    #[test]
    fn detached_devices_match_nothing() {
        let mut r = rule(100, 100);
        r.iif = Some("nonexist".into());
        let rules = with_defaults([r]);
        assert_eq!(
            decide(&rules, flow("192.0.2.1")),
            route(32766, 254, "192.0.2.0/24")
        );
    }

    #[test]
    fn tos_ports_and_protocol() {
        let mut t = rule(100, 100);
        t.tos = 0x10;
        let mut p = rule(110, 1001);
        p.ip_proto = 17;
        p.dport = Some((53, 53));
        let rules = with_defaults([t, p]);
        let mut f = flow("192.0.2.1");
        f.tos = 0x30;
        assert_eq!(decide(&rules, f), route(100, 100, "192.0.2.0/24"));
        f.tos = 0x14;
        assert_eq!(decide(&rules, f), route(32766, 254, "192.0.2.0/24"));
        f.ipproto = 17;
        f.dport = 53;
        assert_eq!(decide(&rules, f), route(110, 1001, "0.0.0.0/0"));
        // Forwarded: ports come from the packet, so a rule needing them still matches.
        f.iif = Some(14);
        f.src = Some("192.0.2.99".parse().unwrap());
        assert_eq!(decide(&rules, f), route(110, 1001, "0.0.0.0/0"));
    }

    #[test]
    fn l3mdev_rule_uses_the_vrf_table_of_the_flow() {
        let mut l3 = rule(1000, 0);
        l3.l3mdev = true;
        let rules = with_defaults([l3]);
        let mut f = flow("192.0.2.1");
        assert_eq!(decide(&rules, f), route(32766, 254, "192.0.2.0/24"));
        f.iif = Some(11); // a port of VRF blue (table 1001)
        f.src = Some("198.18.0.1".parse().unwrap());
        assert_eq!(decide(&rules, f), route(1000, 1001, "0.0.0.0/0"));
        // `--vrf blue` is the VRF device as oif.
        let mut g = flow("192.0.2.1");
        g.oif = Some(10);
        assert_eq!(decide(&rules, g), route(1000, 1001, "0.0.0.0/0"));
        // An iif rule naming the VRF matches its ports (6.16+).
        let mut byname = rule(500, 100);
        byname.iif = Some("blue".into());
        let rules = with_defaults([byname]);
        assert_eq!(decide(&rules, f), route(500, 100, "192.0.2.0/24"));
    }

    #[test]
    fn raw_attributes_stop_the_walk_where_they_are_reached() {
        let mut r = rule(100, 100);
        r.raw.push(crate::rule::RawAttr {
            kind: fra::DSCP,
            value: vec![4],
        });
        let rules = with_defaults([r]);
        match decide(&rules, flow("192.0.2.1")) {
            Outcome::CannotEvaluate { rule: 100, why } => assert!(why.contains("dscp"), "{why}"),
            o => panic!("{o:?}"),
        }
        // Decided before the walk reaches it: fine.
        assert_eq!(decide(&rules, flow("10.0.0.1")).rule(), Some(0));
    }

    impl RuleSet {
        /// Always indexed, whatever the size (tests compare it with the plain walk).
        fn new_indexed(rules: &[Rule], links: &LinkMap) -> RuleSet {
            let mut s = RuleSet::new(rules, links);
            for f in [&mut s.v4, &mut s.v6] {
                f.index = Some(Index::new(&f.rules));
            }
            s
        }
    }

    fn arb_rule(family: Family) -> impl Strategy<Value = Rule> {
        let v4 = family == Family::V4;
        (
            (0u32..40, 0u8..10, any::<bool>(), 0u32..6),
            (
                prop::option::of(0u8..4),
                prop::option::of(0u8..4),
                prop::option::of(0usize..5),
            ),
            (
                0u32..4,
                prop::sample::select(vec![0u32, 1, 3, u32::MAX]),
                prop::option::of((0u32..3000, 0u32..3000)),
            ),
            (
                prop::sample::select(vec![0u8, 6, 17]),
                prop::option::of((1u16..100, 1u16..100)),
                prop::sample::select(vec![0u8, 0x10, 0x20]),
            ),
            (
                prop::option::of(prop::sample::select(vec![0u32, 8, 24])),
                any::<bool>(),
            ),
        )
            .prop_map(
                move |(
                    (prio, act, invert, table),
                    (src, dst, iif),
                    (mark, mask, uid),
                    (proto, dport, tos),
                    (sup, l3),
                )| {
                    let mut r = Rule::to_table(family, prio * 10, 100 + table);
                    r.action = match act {
                        0 => action::GOTO,
                        1 => action::NOP,
                        2 => action::BLACKHOLE,
                        3 => action::UNREACHABLE,
                        _ => action::TO_TBL,
                    };
                    if r.action == action::GOTO {
                        r.goto = Some(prio * 10 + 10 * (1 + table));
                    }
                    if invert {
                        r.flags = flags::INVERT;
                    }
                    let pfx = |i: u8| -> IpNet {
                        let s = if v4 {
                            [
                                "0.0.0.0/1",
                                "192.0.2.0/24",
                                "192.0.0.0/8",
                                "198.51.100.0/24",
                            ][i as usize]
                        } else {
                            ["::/1", "2001:db8::/32", "2001:db8:1::/48", "2000::/3"][i as usize]
                        };
                        s.parse().unwrap()
                    };
                    r.src = src.map(pfx);
                    r.dst = dst.map(pfx);
                    r.iif = iif.map(|i| ["lo", "eth1", "blue", "eth3", "nonexist"][i].to_string());
                    r.fwmark = mark;
                    r.fwmask = if mark == 0 && mask == u32::MAX {
                        0
                    } else {
                        mask
                    };
                    r.uid_range = uid.map(|(a, b)| (a.min(b), a.max(b)));
                    r.ip_proto = proto;
                    r.dport = dport.map(|(a, b)| (a.min(b), a.max(b)));
                    r.tos = tos;
                    r.suppress_prefixlen = sup;
                    if l3 && r.action == action::TO_TBL {
                        r.l3mdev = true;
                        r.table = 0;
                    }
                    r
                },
            )
    }

    fn arb_flow(family: Family) -> impl Strategy<Value = Flow> {
        let v4 = family == Family::V4;
        (
            (
                0usize..6,
                prop::option::of(0usize..6),
                prop::option::of(prop::sample::select(vec![1u32, 10, 11, 14])),
            ),
            (
                0u32..4,
                prop::option::of(0u32..3000),
                prop::sample::select(vec![0u8, 6, 17]),
                0u16..100,
                0u16..100,
                prop::sample::select(vec![0u8, 0x10, 0x20, 0x30]),
            ),
        )
            .prop_map(
                move |((dst, src, iif), (mark, uid, ipproto, sport, dport, tos))| {
                    let addr = |i: usize| -> IpAddr {
                        let s = if v4 {
                            [
                                "192.0.2.1",
                                "198.51.100.7",
                                "10.0.0.1",
                                "8.8.8.8",
                                "192.0.0.1",
                                "0.0.0.1",
                            ][i]
                        } else {
                            [
                                "2001:db8::1",
                                "2001:db8:1::9",
                                "::1",
                                "2000::5",
                                "fe80::1",
                                "2001:db9::1",
                            ][i]
                        };
                        s.parse().unwrap()
                    };
                    Flow {
                        dst: addr(dst),
                        src: src.map(addr),
                        iif,
                        oif: None,
                        mark,
                        uid,
                        ipproto,
                        sport,
                        dport,
                        tos,
                    }
                },
            )
    }

    fn fib_both() -> Toy {
        let mut t = fib();
        for table in 100..106 {
            t = t
                .add(table, "192.0.0.0/8", rtn::UNICAST, 11)
                .add(
                    table,
                    "198.51.100.0/24",
                    if table % 2 == 0 {
                        rtn::THROW
                    } else {
                        rtn::PROHIBIT
                    },
                    0,
                )
                .add(table, "2001:db8::/32", rtn::UNICAST, 14)
                .add(table, "2001:db8:1::/48", rtn::THROW, 0);
        }
        t
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        /// The candidate index changes nothing: indexed and plain walks agree on random
        /// rules and flows of every selector and action kind.
        #[test]
        fn index_agrees_with_the_plain_walk(
            rules4 in prop::collection::vec(arb_rule(Family::V4), 0..60),
            rules6 in prop::collection::vec(arb_rule(Family::V6), 0..60),
            flows4 in prop::collection::vec(arb_flow(Family::V4), 20),
            flows6 in prop::collection::vec(arb_flow(Family::V6), 20),
        ) {
            let l = links();
            let mut rules = Vec::new();
            for (fam, rs) in [(Family::V4, rules4), (Family::V6, rules6)] {
                let mut list = crate::rule::list::RuleList::default();
                list.replace_all(Rule::defaults(fam), 0);
                for r in rs { list.upsert(r, 0); }
                rules.extend(list.to_vec());
            }
            let plain = RuleSet::new(&rules, &l);
            let mut plain_only = plain.clone();
            plain_only.v4.index = None;
            plain_only.v6.index = None;
            let indexed = RuleSet::new_indexed(&rules, &l);
            let tables = fib_both();
            for f in flows4.into_iter().chain(flows6) {
                let k = f.kernel(&l, plain.dissects(f.family()));
                let a = plain_only.decide(&k, &tables, &l);
                let b = indexed.decide(&k, &tables, &l);
                prop_assert_eq!(&a, &b, "flow {:?}", f);
            }
        }
    }
}
