//! Lookups through policy rules on the whole FIB (issue 13: "a lookup through the rules
//! must stay close to a plain lookup").
//!
//! Run: `cargo bench -p route-mirror --bench fib -- rules` (only this part). Rule sets:
//! none (today's walk of tables local/main/default, no rule code at all), the kernel's
//! default rules, the defaults plus 10 rules (a WireGuard-style fwmark pair, source and
//! destination policy, an input device, a uid range, a port rule, a goto) and the
//! defaults plus 1,000 rules (a large policy router: source prefixes, destination
//! prefixes, marks and input devices, each to one of the tables). Every set is asked
//! the same flows, on the daemon's snapshot ([`FastTables`]), two ways:
//! - single: [`RuleSet::decide`] per flow, what one `lookup` runs (a fresh scratch);
//! - batch: what `lookup --batch` runs: address-only lines under rules that reduce to
//!   a chain of tables take [`FastFib::lookup_many`] over that chain; every other line
//!   [`RuleSet::decide_with`] with one scratch per batch.
//!
//! Flows: random destinations; for the "flows" rows also sources (half inside a rule's
//! `from` prefix), marks, input devices, uids, protocols and ports, so the large sets'
//! rules match some of them.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use route_mirror::fib::fast::{FastFib, Lookup};
use route_mirror::fib::flow::Flow;
use route_mirror::fib::l3mdev::{LinkFacts, LinkMap};
use route_mirror::fib::rules::{FastTables, Outcome, RuleSet, Scratch};
use route_mirror::mirror::Mirror;
use route_mirror::model::{table, Family};
use route_mirror::rule::{action, flags, Rule};

use crate::{mps, Rng};

/// Flows per measurement.
const FLOWS: usize = 1_000_000;
/// Input devices the rules and flows name (ifindex 100..).
const DEVS: u32 = 64;
/// Table the non-default rules send to (the route sets' second table).
const POLICY_TABLE: u32 = 100;

fn links() -> LinkMap {
    let mut m = LinkMap::default();
    for i in 0..DEVS {
        m.insert(LinkFacts {
            ifindex: 100 + i,
            name: format!("in{i}"),
            ..Default::default()
        });
    }
    m
}

fn random_addr(rng: &mut Rng, f: Family) -> IpAddr {
    match f {
        Family::V4 => IpAddr::V4(Ipv4Addr::from(rng.next() as u32)),
        // Inside 2000::/3, where the IPv6 set's prefixes are.
        Family::V6 => {
            let hi = (rng.next() & !(0xe000u64 << 48)) | (0x2000u64 << 48);
            IpAddr::V6(Ipv6Addr::from(
                (u128::from(hi) << 64) | u128::from(rng.next()),
            ))
        }
    }
}

/// IPv4: a random address (58% are routed, as in the table walk above). IPv6: a random
/// address inside a random prefix of the set (random IPv6 addresses almost never are).
fn destination(rng: &mut Rng, f: Family, v6_prefixes: &[(IpAddr, u8)]) -> IpAddr {
    match f {
        Family::V4 => random_addr(rng, f),
        Family::V6 => {
            let (a, len) = v6_prefixes[rng.next() as usize % v6_prefixes.len()];
            let host = u128::from(rng.next()) << 64 | u128::from(rng.next());
            let keep = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            match a {
                IpAddr::V6(a) => {
                    IpAddr::V6(Ipv6Addr::from((u128::from(a) & keep) | (host & !keep)))
                }
                IpAddr::V4(_) => random_addr(rng, f),
            }
        }
    }
}

fn net(rng: &mut Rng, f: Family, len: u8) -> IpNet {
    IpNet::new(random_addr(rng, f), len).unwrap().trunc()
}

/// The defaults plus `extra` rules at priorities 1000.. (before `main`).
fn rule_set(f: Family, extra: usize, rng: &mut Rng) -> (Vec<Rule>, Vec<IpNet>, Vec<u32>) {
    let mut rules = Rule::defaults(f);
    let (mut sources, mut marks) = (Vec::new(), Vec::new());
    let (src_len, dst_len) = match f {
        Family::V4 => (24, 16),
        Family::V6 => (48, 32),
    };
    let add = |rules: &mut Vec<Rule>, r: Rule| {
        let at = rules
            .iter()
            .position(|x| x.priority > r.priority)
            .unwrap_or(rules.len());
        rules.insert(at, r);
    };
    let to = |prio: u32| Rule::to_table(f, prio, POLICY_TABLE);
    if extra == 10 {
        // WireGuard-style pair, then ordinary policy.
        let mut wg = Rule::to_table(f, 1000, 51820);
        wg.fwmark = 0xca6c;
        wg.fwmask = u32::MAX;
        wg.flags = flags::INVERT;
        add(&mut rules, wg);
        let mut sup = Rule::to_table(f, 1001, table::MAIN);
        sup.suppress_prefixlen = Some(0);
        add(&mut rules, sup);
        for p in 1002..1004 {
            let mut r = to(p);
            let n = net(rng, f, src_len);
            sources.push(n);
            r.src = Some(n);
            add(&mut rules, r);
        }
        let mut r = to(1004);
        r.dst = Some(net(rng, f, dst_len));
        add(&mut rules, r);
        let mut r = to(1005);
        r.iif = Some("in3".into());
        add(&mut rules, r);
        let mut r = to(1006);
        r.uid_range = Some((1000, 1999));
        add(&mut rules, r);
        let mut r = to(1007);
        r.ip_proto = 6;
        r.dport = Some((443, 443));
        add(&mut rules, r);
        let mut r = Rule::to_table(f, 1008, 0);
        r.action = action::GOTO;
        r.goto = Some(1009);
        r.fwmark = 7;
        r.fwmask = 0xff;
        marks.push(7);
        add(&mut rules, r);
        let mut r = to(1009);
        r.fwmark = 0x100;
        r.fwmask = 0xf00;
        marks.push(0x100);
        add(&mut rules, r);
    } else if extra > 0 {
        // 40% sources, 20% destinations, 20% marks, 20% input devices.
        for i in 0..extra {
            let mut r = to(1000 + i as u32);
            match i % 5 {
                0 | 1 => {
                    let n = net(rng, f, src_len);
                    sources.push(n);
                    r.src = Some(n);
                }
                2 => r.dst = Some(net(rng, f, dst_len)),
                3 => {
                    let m = (rng.next() as u32) | 1;
                    marks.push(m);
                    r.fwmark = m;
                    r.fwmask = u32::MAX;
                }
                _ => r.iif = Some(format!("in{}", rng.next() % u64::from(DEVS))),
            }
            add(&mut rules, r);
        }
    }
    (rules, sources, marks)
}

fn flows(
    f: Family,
    sources: &[IpNet],
    marks: &[u32],
    v6_prefixes: &[(IpAddr, u8)],
    rng: &mut Rng,
) -> Vec<Flow> {
    (0..FLOWS)
        .map(|_| {
            let mut fl = Flow::to(destination(rng, f, v6_prefixes));
            let r = rng.next();
            if r & 1 == 1 && !sources.is_empty() {
                let n = sources[(r >> 8) as usize % sources.len()];
                let host = random_addr(rng, f);
                fl.src = Some(match (n.network(), n.netmask(), host) {
                    (IpAddr::V4(a), IpAddr::V4(m), IpAddr::V4(h)) => IpAddr::V4(Ipv4Addr::from(
                        u32::from(a) | (u32::from(h) & !u32::from(m)),
                    )),
                    (IpAddr::V6(a), IpAddr::V6(m), IpAddr::V6(h)) => IpAddr::V6(Ipv6Addr::from(
                        u128::from(a) | (u128::from(h) & !u128::from(m)),
                    )),
                    _ => unreachable!("one family"),
                });
            } else if r & 2 == 2 {
                fl.src = Some(random_addr(rng, f));
            }
            if r & 0x30 == 0x30 && !marks.is_empty() {
                fl.mark = marks[(r >> 16) as usize % marks.len()];
            }
            if r & 0xc0 == 0xc0 {
                fl.iif = Some(100 + (r >> 24) as u32 % DEVS);
            }
            fl.uid = Some(((r >> 32) % 3000) as u32);
            fl.ipproto = if r & 0x100 == 0 { 6 } else { 17 };
            fl.sport = (r >> 40) as u16;
            fl.dport = if r & 0x200 == 0 {
                443
            } else {
                (r >> 48) as u16
            };
            fl
        })
        .collect()
}

/// Answers found (routes or reject types, not "no route") and the time taken.
fn single(set: &RuleSet, snap: &FastFib, links: &LinkMap, flows: &[Flow]) -> (usize, Duration) {
    let t = Instant::now();
    let mut found = 0;
    for fl in flows {
        let kf = fl.kernel(links, set.dissects(fl.family()));
        let o = set.decide(black_box(&kf), &FastTables::new(snap), links);
        found += usize::from(matches!(o, Outcome::Route { .. } | Outcome::Action { .. }));
    }
    (found, t.elapsed())
}

/// `dsts`: the flows' destinations when the flows are bare addresses (what the batch
/// parser hands over for address lines), so the chain path can take them as they are.
fn batch(
    set: &RuleSet,
    snap: &FastFib,
    links: &LinkMap,
    flows: &[Flow],
    dsts: Option<&[IpAddr]>,
) -> (usize, Duration) {
    let t = Instant::now();
    let mut found = 0;
    let chain = flows
        .first()
        .and_then(|f| set.chain(f.family()))
        .filter(|c| c.last.is_none());
    if let (Some(c), Some(dsts)) = (chain, dsts) {
        let tables: Vec<u32> = c.tables.iter().map(|t| t.1).collect();
        let mut out = Vec::new();
        for chunk in dsts.chunks(16 * 1024) {
            snap.lookup_many(black_box(chunk), &tables, 0, &mut out);
            found += out
                .iter()
                .filter(|l| matches!(l, Lookup::Route(..)))
                .count();
        }
        return (found, t.elapsed());
    }
    let mut scratch = Scratch::default();
    let tables = FastTables::new(snap);
    for fl in flows {
        let kf = fl.kernel(links, set.dissects(fl.family()));
        let o = set.decide_with(black_box(&kf), &tables, links, &mut scratch);
        found += usize::from(matches!(o, Outcome::Route { .. } | Outcome::Action { .. }));
    }
    (found, t.elapsed())
}

/// Prints one markdown table per family.
pub fn bench(m: &Mirror) {
    use route_mirror::fib::DEFAULT_RULE_TABLES as T;
    let snap = m.fib.extract().build();
    let links = links();
    let v6_prefixes = crate::load("v6-230k.batch.gz").1;
    println!("| family | rules | flows | single M/s | batch M/s | found |");
    println!("|---|---|---|---:|---:|---:|");
    for f in Family::ALL {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ f as u64);
        let addrs: Vec<Flow> = (0..FLOWS)
            .map(|_| Flow::to(destination(&mut rng, f, &v6_prefixes)))
            .collect();
        // Today's walk without rules: the default rules' tables, one at a time and batched.
        let tables: &[u32] = match f {
            Family::V4 => &T,
            Family::V6 => &T[..2],
        };
        let t = Instant::now();
        let one = addrs
            .iter()
            .filter(|a| matches!(black_box(snap.lookup(a.dst, tables, 0)), Lookup::Route(..)))
            .count();
        let one_t = t.elapsed();
        let dsts: Vec<IpAddr> = addrs.iter().map(|a| a.dst).collect();
        let t = Instant::now();
        let (mut many, mut out) = (0, Vec::new());
        for chunk in dsts.chunks(16 * 1024) {
            snap.lookup_many(black_box(chunk), tables, 0, &mut out);
            many += out
                .iter()
                .filter(|l| matches!(l, Lookup::Route(..)))
                .count();
        }
        let many_t = t.elapsed();
        assert_eq!(one, many);
        println!(
            "| {f:?} | none (tables {tables:?}, no rule code) | addresses | {:.2} | {:.2} | {one} |",
            mps(FLOWS, one_t),
            mps(FLOWS, many_t)
        );
        for extra in [0, 10, 1000] {
            let (rules, sources, marks) = rule_set(f, extra, &mut rng);
            let set = RuleSet::new(&rules, &links);
            let name = if extra == 0 {
                format!("defaults ({})", rules.len())
            } else {
                format!("defaults + {extra}")
            };
            let (s_found, s_t) = single(&set, &snap, &links, &addrs);
            let (b_found, b_t) = batch(&set, &snap, &links, &addrs, Some(&dsts));
            assert_eq!(s_found, b_found, "{name}: single and batch disagree");
            if extra == 0 {
                assert_eq!(
                    s_found, one,
                    "the default rules must find what the tables do"
                );
            }
            println!(
                "| {f:?} | {name} | addresses | {:.2} | {:.2} | {s_found} |",
                mps(FLOWS, s_t),
                mps(FLOWS, b_t)
            );
            let fl = flows(f, &sources, &marks, &v6_prefixes, &mut rng);
            let (s_found, s_t) = single(&set, &snap, &links, &fl);
            let (b_found, b_t) = batch(&set, &snap, &links, &fl, None);
            assert_eq!(s_found, b_found, "{name}: single and batch disagree");
            println!(
                "| {f:?} | {name} | flows | {:.2} | {:.2} | {s_found} |",
                mps(FLOWS, s_t),
                mps(FLOWS, b_t)
            );
        }
    }
    println!();
}
