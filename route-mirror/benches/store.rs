//! The route store (`fib::store::PrefixStore`, a hash index on the exact prefix) against
//! the crate it replaced (`prefix-trie` 0.10 `PrefixMap`), on the real route sets, with
//! the same values (`fib::Entries`) and the same operations.
//!
//! Run: `cargo bench -p route-mirror --bench store` (route files as for the `fib`
//! bench: `$ROUTE_MIRROR_SHARED/routes/`). Prints a markdown table, ns per operation:
//! insert of every prefix in file order, in a tight loop ("hot") and with ~256 KiB of
//! other memory touched between inserts ("cold": the event path's inserts run between
//! decoding, interning and the ring's pages), exact get of every prefix (shuffled),
//! longest match of an address inside a stored prefix, removal of every prefix.

use std::collections::HashSet;
use std::hint::black_box;
use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flate2::read::GzDecoder;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use route_mirror::fib::store::{Net, PrefixStore};
use route_mirror::fib::{Entries, Entry};
use route_mirror::model::{RouteAttrs, SubKey};

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

/// Unique prefixes of an `ip -batch` file, in file order (as `benches/fib` reads them).
fn load(file: &str) -> Vec<IpNet> {
    let path = shared_routes().join(file);
    let f = std::fs::File::open(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (set ROUTE_MIRROR_SHARED)", path.display()));
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for line in BufReader::new(GzDecoder::new(f)).lines() {
        let line = line.expect("read route file");
        let pfx = line.split_whitespace().skip(2).find_map(|tok| {
            let (a, l) = tok.split_once('/').unwrap_or((tok, ""));
            let addr: IpAddr = a.parse().ok()?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let len = if l.is_empty() { max } else { l.parse().ok()? };
            IpNet::new(addr, len).ok().map(|n| n.trunc())
        });
        if let Some(p) = pfx {
            if seen.insert(p) {
                out.push(p);
            }
        }
    }
    out
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The two stores behind one interface.
trait Store<P> {
    fn name() -> &'static str;
    fn new() -> Self;
    fn put(&mut self, p: P, e: Entry);
    fn get(&self, p: &P) -> Option<&Entries>;
    fn lpm(&self, p: &P) -> Option<&Entries>;
    fn del(&mut self, p: &P) -> Option<Entries>;
}

impl<P: Net> Store<P> for PrefixStore<P> {
    fn name() -> &'static str {
        "PrefixStore (hash index)"
    }
    fn new() -> Self {
        PrefixStore::default()
    }
    fn put(&mut self, p: P, e: Entry) {
        self.entry(p).push(e);
    }
    fn get(&self, p: &P) -> Option<&Entries> {
        PrefixStore::get(self, p)
    }
    fn lpm(&self, p: &P) -> Option<&Entries> {
        self.covering_longest_first(p).next().map(|(_, e)| e)
    }
    fn del(&mut self, p: &P) -> Option<Entries> {
        self.remove(p)
    }
}

impl<P: prefix_trie::Prefix> Store<P> for prefix_trie::PrefixMap<P, Entries> {
    fn name() -> &'static str {
        "prefix-trie 0.10 PrefixMap"
    }
    fn new() -> Self {
        prefix_trie::PrefixMap::new()
    }
    fn put(&mut self, p: P, e: Entry) {
        self.entry(p).or_default().push(e);
    }
    fn get(&self, p: &P) -> Option<&Entries> {
        prefix_trie::PrefixMap::get(self, p)
    }
    fn lpm(&self, p: &P) -> Option<&Entries> {
        self.get_lpm(p).map(|(_, e)| e)
    }
    fn del(&mut self, p: &P) -> Option<Entries> {
        self.remove(p)
    }
}

fn per_op(d: Duration, n: usize) -> f64 {
    d.as_nanos() as f64 / n as f64
}

/// ns per op: hot insert, cold insert, get, lpm, remove.
fn run<P: Copy, S: Store<P>>(nets: &[P], hosts: &[P], order: &[usize]) -> [f64; 5] {
    let attrs = Arc::new(RouteAttrs::default());
    let entry = || Entry::new(SubKey::metric(0), attrs.clone(), 0);
    let mut s = S::new();
    let t = Instant::now();
    for &p in nets {
        s.put(p, entry());
    }
    let hot = per_op(t.elapsed(), nets.len());
    drop(s);

    let mut noise = vec![0u64; 32 * 1024]; // 256 KiB
    let mut s = S::new();
    let mut busy = Duration::ZERO;
    for (i, &p) in nets.iter().enumerate() {
        let t = Instant::now();
        s.put(p, entry());
        busy += t.elapsed();
        for w in noise.iter_mut().step_by(8) {
            *w = w.wrapping_add(i as u64);
        }
    }
    black_box(&noise);
    let cold = per_op(busy, nets.len());

    let t = Instant::now();
    let mut hits = 0usize;
    for &i in order {
        hits += usize::from(s.get(&nets[i]).is_some());
    }
    let get = per_op(t.elapsed(), order.len());
    assert_eq!(hits, nets.len());

    let t = Instant::now();
    let mut found = 0usize;
    for h in hosts {
        found += usize::from(s.lpm(h).is_some());
    }
    let lpm = per_op(t.elapsed(), hosts.len());
    assert_eq!(found, hosts.len());

    let t = Instant::now();
    for &i in order {
        black_box(s.del(&nets[i]));
    }
    let del = per_op(t.elapsed(), order.len());
    [hot, cold, get, lpm, del]
}

fn family<P: Net + prefix_trie::Prefix>(
    label: &str,
    nets: Vec<IpNet>,
    conv: impl Fn(IpNet) -> Option<P>,
    host: impl Fn(IpNet, u64) -> P,
) {
    let nets: Vec<P> = nets.into_iter().filter_map(conv).collect();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut order: Vec<usize> = (0..nets.len()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.next() as usize % (i + 1));
    }
    let hosts: Vec<P> = (0..1_000_000)
        .map(|_| {
            let p = nets[rng.next() as usize % nets.len()];
            host(p.into(), rng.next())
        })
        .collect();
    for (name, r) in [
        (
            <prefix_trie::PrefixMap<P, Entries> as Store<P>>::name(),
            run::<P, prefix_trie::PrefixMap<P, Entries>>(&nets, &hosts, &order),
        ),
        (
            <PrefixStore<P> as Store<P>>::name(),
            run::<P, PrefixStore<P>>(&nets, &hosts, &order),
        ),
    ] {
        println!(
            "| {label} ({} prefixes) | {name} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
            nets.len(),
            r[0],
            r[1],
            r[2],
            r[3],
            r[4]
        );
    }
}

fn main() {
    println!("| set | store | insert hot ns | insert cold ns | get ns | LPM ns | remove ns |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    family::<Ipv4Net>(
        "v4-1m",
        load("v4-1m.batch.gz"),
        |n| match n {
            IpNet::V4(n) => Some(n),
            _ => None,
        },
        |n, r| {
            let IpNet::V4(n) = n else { unreachable!() };
            let host = (r as u32) & !u32::from(n.netmask());
            Ipv4Net::from(std::net::Ipv4Addr::from(u32::from(n.network()) | host))
        },
    );
    family::<Ipv6Net>(
        "v6-230k",
        load("v6-230k.batch.gz"),
        |n| match n {
            IpNet::V6(n) => Some(n),
            _ => None,
        },
        |n, r| {
            let IpNet::V6(n) = n else { unreachable!() };
            let r = u128::from(r) << 64 | u128::from(r.rotate_left(17));
            let host = r & !u128::from(n.netmask());
            Ipv6Net::from(std::net::Ipv6Addr::from(u128::from(n.network()) | host))
        },
    );
}
