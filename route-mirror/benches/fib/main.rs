//! FIB trie benchmark on the real route sets, against `prefix-trie` and `ip_network_table`.
//!
//! Run: `cargo bench -p route-mirror --bench fib` (`-- rules`: only the lookups through
//! policy rules, [`rules`]). The route files are looked up in
//! `$ROUTE_MIRROR_SHARED/routes/` (or `$ROUTE_MIRROR_SHARED/` itself), defaulting to the
//! `shared/` directory beside the repository root. Prints a markdown table.
//!
//! Everything runs in one process, one structure at a time (built, measured, dropped), so
//! the RSS delta of each build is not polluted by the others' live memory. Lookup inputs
//! are precomputed in each library's own key type so that only the lookup is timed.

// The whole baseline trie; this bench uses part of its API, the `patricia` test target
// (Cargo.toml) runs its unit tests.
#[allow(dead_code)]
mod patricia;
mod rules;

use std::collections::HashSet;
use std::hint::black_box;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flate2::read::GzDecoder;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use route_mirror::fib::poptrie::{Key, Poptrie};
use route_mirror::mirror::Mirror;
use route_mirror::model::{rtn, Change, NextHop, Route, RouteAttrs, RouteKey, SubKey};

use crate::patricia::{Bits, Patricia as Trie};

const LOOKUPS: usize = 10_000_000;

fn shared_routes() -> PathBuf {
    let base = std::env::var_os("ROUTE_MIRROR_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared"));
    let routes = base.join("routes");
    if routes.is_dir() {
        routes
    } else {
        base
    }
}

/// Unique prefixes of an `ip -batch` file, in file order. The prefix is the first token
/// after `route add` that parses as an address (a route type such as `blackhole` may come
/// first); without `/len` it is a host route.
fn load(file: &str) -> (usize, Vec<(IpAddr, u8)>) {
    let path = shared_routes().join(file);
    let f = std::fs::File::open(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (set ROUTE_MIRROR_SHARED to the shared/ directory)",
            path.display()
        )
    });
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut lines = 0;
    for line in BufReader::new(GzDecoder::new(f)).lines() {
        let line = line.expect("read route file");
        lines += 1;
        let pfx = line.split_whitespace().skip(2).find_map(|tok| {
            let (a, l) = tok.split_once('/').unwrap_or((tok, ""));
            let addr: IpAddr = a.parse().ok()?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let len = if l.is_empty() { max } else { l.parse().ok()? };
            Some((addr, len))
        });
        if let Some(p) = pfx {
            if seen.insert(p) {
                out.push(p);
            }
        }
    }
    (lines, out)
}

/// xorshift64*: deterministic and fast enough not to matter.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn rss_bytes() -> usize {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = s
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn mps(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64() / 1e6
}

#[derive(Clone, Copy)]
struct Row {
    family: &'static str,
    imp: &'static str,
    prefixes: usize,
    build: Duration,
    heap: Option<usize>,
    rss: usize,
    random: Duration,
    inside: Duration,
    random_hits: usize,
    inside_hits: usize,
}

/// What a family-specific adapter needs: the address type per library and the lookups.
trait Family: Bits + Key {
    const NAME: &'static str;
    type Net: Copy + prefix_trie::Prefix;
    type Addr: Copy;
    fn from_ip(ip: IpAddr) -> Self;
    fn to_net(self, len: u8) -> Self::Net;
    fn to_addr(self) -> Self::Addr;
    fn random(rng: &mut Rng) -> Self;
    /// Keeps the top `len` bits of `self` and takes the rest from `host`.
    fn with_host(self, len: u8, host: Self) -> Self;
    fn pt_insert(m: &mut prefix_trie::PrefixMap<Self::Net, u32>, n: Self::Net, v: u32);
    fn pt_lpm(m: &prefix_trie::PrefixMap<Self::Net, u32>, a: Self::Net) -> Option<(u8, u32)>;
    fn pt_mem(m: &prefix_trie::PrefixMap<Self::Net, u32>) -> usize;
    fn nt_insert(t: &mut ip_network_table::IpNetworkTable<u32>, a: Self::Addr, len: u8, v: u32);
    fn nt_lpm(t: &ip_network_table::IpNetworkTable<u32>, a: Self::Addr) -> Option<(u8, u32)>;
}

impl Family for u32 {
    const NAME: &'static str = "IPv4";
    type Net = Ipv4Net;
    type Addr = Ipv4Addr;
    fn from_ip(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(a) => a.into(),
            IpAddr::V6(_) => unreachable!("mixed families"),
        }
    }
    fn to_net(self, len: u8) -> Ipv4Net {
        Ipv4Net::new(self.into(), len).expect("valid length")
    }
    fn to_addr(self) -> Ipv4Addr {
        self.into()
    }
    fn random(rng: &mut Rng) -> Self {
        rng.next() as u32
    }
    fn with_host(self, len: u8, host: Self) -> Self {
        self.masked(len) | (host ^ host.masked(len))
    }
    fn pt_insert(m: &mut prefix_trie::PrefixMap<Ipv4Net, u32>, n: Ipv4Net, v: u32) {
        m.insert(n, v);
    }
    fn pt_lpm(m: &prefix_trie::PrefixMap<Ipv4Net, u32>, a: Ipv4Net) -> Option<(u8, u32)> {
        m.get_lpm(&a).map(|(p, v)| (p.prefix_len(), *v))
    }
    fn pt_mem(m: &prefix_trie::PrefixMap<Ipv4Net, u32>) -> usize {
        m.mem_size()
    }
    fn nt_insert(t: &mut ip_network_table::IpNetworkTable<u32>, a: Ipv4Addr, len: u8, v: u32) {
        let n = ip_network::Ipv4Network::new_truncate(a, len).expect("valid length");
        t.insert(n, v);
    }
    fn nt_lpm(t: &ip_network_table::IpNetworkTable<u32>, a: Ipv4Addr) -> Option<(u8, u32)> {
        t.longest_match_ipv4(a).map(|(n, v)| (n.netmask(), *v))
    }
}

impl Family for u128 {
    const NAME: &'static str = "IPv6";
    type Net = Ipv6Net;
    type Addr = Ipv6Addr;
    fn from_ip(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V6(a) => a.into(),
            IpAddr::V4(_) => unreachable!("mixed families"),
        }
    }
    fn to_net(self, len: u8) -> Ipv6Net {
        Ipv6Net::new(self.into(), len).expect("valid length")
    }
    fn to_addr(self) -> Ipv6Addr {
        self.into()
    }
    fn random(rng: &mut Rng) -> Self {
        (u128::from(rng.next()) << 64) | u128::from(rng.next())
    }
    fn with_host(self, len: u8, host: Self) -> Self {
        self.masked(len) | (host ^ host.masked(len))
    }
    fn pt_insert(m: &mut prefix_trie::PrefixMap<Ipv6Net, u32>, n: Ipv6Net, v: u32) {
        m.insert(n, v);
    }
    fn pt_lpm(m: &prefix_trie::PrefixMap<Ipv6Net, u32>, a: Ipv6Net) -> Option<(u8, u32)> {
        m.get_lpm(&a).map(|(p, v)| (p.prefix_len(), *v))
    }
    fn pt_mem(m: &prefix_trie::PrefixMap<Ipv6Net, u32>) -> usize {
        m.mem_size()
    }
    fn nt_insert(t: &mut ip_network_table::IpNetworkTable<u32>, a: Ipv6Addr, len: u8, v: u32) {
        let n = ip_network::Ipv6Network::new_truncate(a, len).expect("valid length");
        t.insert(n, v);
    }
    fn nt_lpm(t: &ip_network_table::IpNetworkTable<u32>, a: Ipv6Addr) -> Option<(u8, u32)> {
        t.longest_match_ipv6(a).map(|(n, v)| (n.netmask(), *v))
    }
}

/// Times one pass over `addrs`; returns the duration and the number of hits, and folds the
/// results into a checksum so the lookups cannot be optimised away.
fn time_lookups<A: Copy>(addrs: &[A], f: impl Fn(A) -> Option<(u8, u32)>) -> (Duration, usize) {
    let start = Instant::now();
    let mut hits = 0usize;
    let mut sum = 0u64;
    for &a in addrs {
        if let Some((l, v)) = f(black_box(a)) {
            hits += 1;
            sum = sum.wrapping_add(u64::from(l) ^ u64::from(v));
        }
    }
    let d = start.elapsed();
    black_box(sum);
    (d, hits)
}

/// [`time_lookups`] through [`Poptrie::lookup_many`], 4096 keys per call.
fn time_many<K: Key>(t: &Poptrie<K>, addrs: &[K]) -> (Duration, usize) {
    let start = Instant::now();
    let mut out = Vec::with_capacity(4096);
    let (mut hits, mut sum) = (0usize, 0u64);
    for chunk in addrs.chunks(4096) {
        out.clear();
        t.lookup_many(black_box(chunk), &mut out);
        for &v in &out {
            if v != route_mirror::fib::poptrie::NONE {
                hits += 1;
                sum = sum.wrapping_add(u64::from(v as u8) ^ u64::from(v >> 8));
            }
        }
    }
    let d = start.elapsed();
    black_box(sum);
    (d, hits)
}

fn bench_family<K: Family>(file: &str, rows: &mut Vec<Row>) {
    let mut batched = Vec::new();
    let (lines, pfx) = load(file);
    let pfx: Vec<(K, u8)> = pfx
        .into_iter()
        .map(|(a, l)| (K::from_ip(a).masked(l), l))
        .collect();
    eprintln!("{}: {lines} lines, {} unique prefixes", K::NAME, pfx.len());
    let mut pfx = pfx;
    // Kernel dumps arrive in address order; FIB_BENCH_SORTED=1 measures that insertion order.
    if std::env::var_os("FIB_BENCH_SORTED").is_some() {
        pfx.sort();
    }

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let random: Vec<K> = (0..LOOKUPS).map(|_| K::random(&mut rng)).collect();
    let inside: Vec<K> = (0..LOOKUPS)
        .map(|_| {
            let (k, l) = pfx[(rng.next() % pfx.len() as u64) as usize];
            k.with_host(l, K::random(&mut rng))
        })
        .collect();

    // Ours.
    let mut check: Vec<Option<u8>> = Vec::new();
    {
        let rss0 = rss_bytes();
        let t0 = Instant::now();
        let mut t: Trie<K, u32> = Trie::new();
        for (i, &(k, l)) in pfx.iter().enumerate() {
            t.insert(k, l, i as u32);
        }
        let build = t0.elapsed();
        let rss = rss_bytes().saturating_sub(rss0);
        assert_eq!(t.len(), pfx.len());
        let lpm = |a: K| t.longest_match(a).map(|(_, l, v)| (l, *v));
        check.extend(inside.iter().take(100_000).map(|&a| lpm(a).map(|x| x.0)));
        let (rd, rh) = time_lookups(&random, lpm);
        let (id, ih) = time_lookups(&inside, lpm);
        rows.push(Row {
            family: K::NAME,
            imp: "route-mirror Patricia (first trie)",
            prefixes: t.len(),
            build,
            heap: Some(t.heap_bytes()),
            rss,
            random: rd,
            inside: id,
            random_hits: rh,
            inside_hits: ih,
        });
    }

    // Poptrie (the read-optimised structure), rebuilt from the prefix list.
    {
        let rss0 = rss_bytes();
        let t0 = Instant::now();
        // The value carries the prefix length, as the FIB's fast tables do (class << 8 | len).
        let t = Poptrie::<K>::build(
            pfx.iter()
                .enumerate()
                .map(|(i, &(k, l))| (k, l, (i as u32) << 8 | u32::from(l))),
        );
        let build = t0.elapsed();
        let rss = rss_bytes().saturating_sub(rss0);
        let lpm = |a: K| t.lookup(a).map(|v| (v as u8, v >> 8));
        let got: Vec<Option<u8>> = inside
            .iter()
            .take(100_000)
            .map(|&a| lpm(a).map(|x| x.0))
            .collect();
        assert_eq!(got, check, "poptrie disagrees with the Patricia trie");
        let (rd, rh) = time_lookups(&random, lpm);
        let (id, ih) = time_lookups(&inside, lpm);
        let (brd, brh) = time_many(&t, &random);
        let (bid, bih) = time_many(&t, &inside);
        assert_eq!((brh, bih), (rh, ih), "lookup_many disagrees with lookup");
        let row = Row {
            family: K::NAME,
            imp: "route-mirror Poptrie (new, immutable rebuild)",
            prefixes: pfx.len(),
            build,
            heap: Some(t.heap_bytes()),
            rss,
            random: rd,
            inside: id,
            random_hits: rh,
            inside_hits: ih,
        };
        batched.push(Row {
            imp: "route-mirror Poptrie, `lookup_many` (8 keys in lockstep)",
            random: brd,
            inside: bid,
            ..row
        });
        rows.push(row);
    }

    // prefix-trie.
    {
        let nets: Vec<K::Net> = pfx.iter().map(|&(k, l)| k.to_net(l)).collect();
        let rss0 = rss_bytes();
        let t0 = Instant::now();
        let mut m = prefix_trie::PrefixMap::<K::Net, u32>::new();
        for (i, &n) in nets.iter().enumerate() {
            K::pt_insert(&mut m, n, i as u32);
        }
        let build = t0.elapsed();
        let rss = rss_bytes().saturating_sub(rss0);
        drop(nets);
        let lpm = |a: K::Net| K::pt_lpm(&m, a);
        let q: Vec<K::Net> = inside
            .iter()
            .map(|&a| a.to_net(<K as Bits>::BITS))
            .collect();
        let got: Vec<Option<u8>> = q
            .iter()
            .take(100_000)
            .map(|&a| lpm(a).map(|x| x.0))
            .collect();
        assert_eq!(got, check, "prefix-trie disagrees with ours");
        let (id, ih) = time_lookups(&q, lpm);
        let q: Vec<K::Net> = random
            .iter()
            .map(|&a| a.to_net(<K as Bits>::BITS))
            .collect();
        let (rd, rh) = time_lookups(&q, lpm);
        rows.push(Row {
            family: K::NAME,
            imp: "prefix-trie 0.10 PrefixMap",
            prefixes: pfx.len(),
            build,
            heap: Some(K::pt_mem(&m)),
            rss,
            random: rd,
            inside: id,
            random_hits: rh,
            inside_hits: ih,
        });
    }

    // ip_network_table.
    {
        let addrs: Vec<(K::Addr, u8)> = pfx.iter().map(|&(k, l)| (k.to_addr(), l)).collect();
        let rss0 = rss_bytes();
        let t0 = Instant::now();
        let mut t = ip_network_table::IpNetworkTable::<u32>::new();
        for (i, &(a, l)) in addrs.iter().enumerate() {
            K::nt_insert(&mut t, a, l, i as u32);
        }
        let build = t0.elapsed();
        let rss = rss_bytes().saturating_sub(rss0);
        drop(addrs);
        let lpm = |a: K::Addr| K::nt_lpm(&t, a);
        let q: Vec<K::Addr> = inside.iter().map(|&a| a.to_addr()).collect();
        let got: Vec<Option<u8>> = q
            .iter()
            .take(100_000)
            .map(|&a| lpm(a).map(|x| x.0))
            .collect();
        assert_eq!(got, check, "ip_network_table disagrees with ours");
        let (id, ih) = time_lookups(&q, lpm);
        let q: Vec<K::Addr> = random.iter().map(|&a| a.to_addr()).collect();
        let (rd, rh) = time_lookups(&q, lpm);
        rows.push(Row {
            family: K::NAME,
            imp: "ip_network_table 0.2",
            prefixes: pfx.len(),
            build,
            heap: None,
            rss,
            random: rd,
            inside: id,
            random_hits: rh,
            inside_hits: ih,
        });
    }
    rows.append(&mut batched);
}

/// Routes of an `ip -batch` file as the kernel would report them (close enough for
/// memory: type, table, metric, gateways, devices; devices numbered by first sight).
fn load_routes(file: &str, devs: &mut Vec<String>, mut out: impl FnMut(Route)) {
    let path = shared_routes().join(file);
    let f = std::fs::File::open(&path).expect("route file");
    for line in BufReader::new(GzDecoder::new(f)).lines() {
        let line = line.expect("read route file");
        let toks: Vec<&str> = line.split_whitespace().skip(2).collect();
        let mut kind = rtn::UNICAST;
        let mut dst: Option<IpNet> = None;
        let (mut table, mut metric) = (254u32, 0u32);
        let mut hops: Vec<NextHop> = Vec::new();
        let mut i = 0;
        while i < toks.len() {
            let next = toks.get(i + 1).copied().unwrap_or("");
            match toks[i] {
                "blackhole" => kind = rtn::BLACKHOLE,
                "unreachable" => kind = rtn::UNREACHABLE,
                "prohibit" => kind = rtn::PROHIBIT,
                "throw" => kind = rtn::THROW,
                "table" => {
                    table = next.parse().unwrap_or(254);
                    i += 1
                }
                "metric" => {
                    metric = next.parse().unwrap_or(0);
                    i += 1
                }
                "via" => {
                    hops.push(NextHop::new(next.parse().ok(), 0));
                    i += 1
                }
                "dev" => {
                    let idx = devs.iter().position(|d| d == next).unwrap_or_else(|| {
                        devs.push(next.to_string());
                        devs.len() - 1
                    }) as u32
                        + 2;
                    match hops.last_mut() {
                        Some(h) if h.ifindex == 0 => h.ifindex = idx,
                        _ => hops.push(NextHop::new(None, idx)),
                    }
                    i += 1
                }
                "nexthop" => {}
                t if dst.is_none() => {
                    dst = t.parse().ok().or_else(|| {
                        let a: IpAddr = t.parse().ok()?;
                        Some(IpNet::from(a))
                    })
                }
                _ => {}
            }
            i += 1;
        }
        let Some(dst) = dst else { continue };
        out(Route {
            key: RouteKey {
                table,
                dst: dst.trunc(),
                sub: SubKey::metric(metric),
            },
            attrs: Arc::new(RouteAttrs {
                protocol: 3,
                kind,
                nexthops: hops.into(),
                ..Default::default()
            }),
        });
    }
}

/// Both route sets applied to a [`Mirror`] as events, and how many routes that was.
fn whole_mirror() -> (Mirror, usize) {
    let mut devs = Vec::new();
    let mut n = 0usize;
    let mut m = Mirror::new();
    for file in ["v4-1m.batch.gz", "v6-230k.batch.gz"] {
        // Streamed: no route list outlives its apply, so RSS growth is the mirror's.
        load_routes(file, &mut devs, |route| {
            n += 1;
            m.apply(Change::NewRoute { route, flags: 0 });
        });
    }
    (m, n)
}

/// The whole mirror's route memory: both sets applied to a [`Mirror`] as events (FIB
/// tries, entries, interned attributes, allocator overhead), as RSS growth per route.
fn whole_fib_memory() {
    let rss0 = rss_bytes();
    let t0 = Instant::now();
    let (m, n) = whole_mirror();
    let build = t0.elapsed();
    let rss = rss_bytes().saturating_sub(rss0);
    let heap: usize = m.fib.tables().map(|(_, t)| t.heap_bytes()).sum();
    println!(
        "whole FIB: {} routes ({} in the FIB), {} attribute sets, size_of::<Entry>() = {} B, \
         parsed+applied in {:.2} s; trie+entries heap {:.1} B/route; RSS growth {:.1} B/route ({:.1} MiB)",
        n,
        m.fib.len(),
        m.attr_sets(),
        std::mem::size_of::<route_mirror::fib::Entry>(),
        build.as_secs_f64(),
        heap as f64 / n as f64,
        rss as f64 / n as f64,
        rss as f64 / (1 << 20) as f64,
    );
    whole_fib_lookups(&m);
    println!();
}

/// Lookups through the default rules' tables (local, main, default) of the whole FIB:
/// the exact trie, the snapshot one address at a time, and the snapshot's batch form.
fn whole_fib_lookups(m: &Mirror) {
    use route_mirror::fib::fast::Lookup;
    use route_mirror::fib::DEFAULT_RULE_TABLES as T;
    let t0 = Instant::now();
    let x = m.fib.extract();
    let extract = t0.elapsed();
    let snap = x.build();
    let build = t0.elapsed() - extract;
    // The daemon's rebuilder takes it a few pieces per read-lock hold: the longest hold.
    let per_hold = route_mirror::ctl::fastpath::PREFIXES_PER_LOCK;
    let mut cursor = route_mirror::fib::fast::ExtractCursor::new(&m.fib);
    let (mut steps, mut longest) = (0, Duration::ZERO);
    loop {
        let t = Instant::now();
        let step = cursor.step(&m.fib, per_hold);
        longest = longest.max(t.elapsed());
        steps += 1;
        if !matches!(step, route_mirror::fib::fast::Step::More) {
            break;
        }
    }
    println!(
        "piecewise extract, {per_hold} prefixes per step (read-lock hold): {steps} steps, longest {:.2} ms",
        longest.as_secs_f64() * 1e3
    );
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let addrs: Vec<IpAddr> = (0..LOOKUPS)
        .map(|_| IpAddr::V4(Ipv4Addr::from(rng.next() as u32)))
        .collect();
    let exact_n = LOOKUPS / 10;
    let t = Instant::now();
    let exact_hits = addrs[..exact_n]
        .iter()
        .filter(|a| black_box(m.fib.lookup(**a, &T, 0)).is_some())
        .count();
    let exact = t.elapsed();
    let t = Instant::now();
    let one_hits = addrs
        .iter()
        .filter(|a| matches!(black_box(snap.lookup(**a, &T, 0)), Lookup::Route(..)))
        .count();
    let one = t.elapsed();
    let t = Instant::now();
    let mut out = Vec::new();
    let mut many_hits = 0;
    for chunk in addrs.chunks(16 * 1024) {
        snap.lookup_many(chunk, &T, 0, &mut out);
        many_hits += out
            .iter()
            .filter(|l| matches!(l, Lookup::Route(..)))
            .count();
    }
    let many = t.elapsed();
    assert_eq!(one_hits, many_hits, "lookup_many must agree with lookup");
    println!(
        "whole FIB lookups, random IPv4 through tables local/main/default ({:.0}% hit): \
         snapshot extracted (under the lock) in {:.0} ms, built in {:.0} ms; exact trie {:.2} M/s ({} lookups, {} hits); \
         snapshot one at a time {:.2} M/s; snapshot lookup_many (16k per call) {:.2} M/s",
        100.0 * one_hits as f64 / LOOKUPS as f64,
        extract.as_secs_f64() * 1e3,
        build.as_secs_f64() * 1e3,
        mps(exact_n, exact),
        exact_n,
        exact_hits,
        mps(LOOKUPS, one),
        mps(LOOKUPS, many),
    );
}

fn main() {
    // `cargo bench --bench fib -- rules`: only the lookups through policy rules.
    if std::env::args().any(|a| a == "rules") {
        rules::bench(&whole_mirror().0);
        return;
    }
    whole_fib_memory();
    if std::env::var_os("FIB_BENCH_MEMORY_ONLY").is_some() {
        return;
    }
    let mut rows = Vec::new();
    bench_family::<u32>("v4-1m.batch.gz", &mut rows);
    bench_family::<u128>("v6-230k.batch.gz", &mut rows);

    println!(
        "| family | implementation | prefixes | build Minserts/s | heap B/prefix | RSS Δ B/prefix | LPM random M/s (hit %) | LPM inside M/s |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        let heap = r.heap.map_or("n/a".to_string(), |h| {
            format!("{:.1}", h as f64 / r.prefixes as f64)
        });
        println!(
            "| {} | {} | {} | {:.2} | {} | {:.1} | {:.2} ({:.0}%) | {:.2} |",
            r.family,
            r.imp,
            r.prefixes,
            mps(r.prefixes, r.build),
            heap,
            r.rss as f64 / r.prefixes as f64,
            mps(LOOKUPS, r.random),
            100.0 * r.random_hits as f64 / LOOKUPS as f64,
            mps(LOOKUPS, r.inside),
        );
        assert_eq!(r.inside_hits, LOOKUPS, "inside lookups must all hit");
    }
}
