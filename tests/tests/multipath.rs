//! Multipath: the next hop `lookup` says the kernel's hash picks is the one `ip route
//! get` picks, and where the hash cannot be known (a random `fib_multipath_hash_seed`)
//! `lookup` says "per flow" instead of naming one.
//!
//! Routes with two hops of unequal weight, inline and as a nexthop-object group, both
//! families; hash policies 0 (L3) and 1 (L4) with a known seed, then the seed back to
//! random. Flows: forwarded (source and input device) and output lookups, TCP and UDP
//! with random ports, all asked of the kernel in one `ip -batch` and of the daemon in
//! one `lookup --batch` per setting. Runs on the source `ROUTE_MIRROR_SOURCE` names.

use std::fmt::Write as _;
use std::process::Command;

use route_mirror_tests::{daemon_bin, Daemon, Netns, TempDir};
use serde_json::{json, Value};

/// xorshift64*; the seed is printed so a failure can be replayed (`MULTIPATH_SEED`).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Destinations inside the multipath prefixes: (prefix base, family is v6).
const PREFIXES: [(&str, bool); 4] = [
    ("198.51.100.", false), // inline hops, weights 1 and 2
    ("203.0.113.", false),  // nexthop group 1/2,3
    ("2001:db8:100::", true),
    ("2001:db8:200::", true),
];

fn topology(ns: &Netns) {
    for s in [
        "net.ipv4.ip_forward=1",
        "net.ipv6.conf.all.forwarding=1",
        "net.ipv4.conf.all.rp_filter=0",
        "net.ipv4.conf.default.rp_filter=0",
        "net.ipv4.conf.veth1.rp_filter=0",
        "net.ipv4.conf.veth2.rp_filter=0",
    ] {
        ns.exec(&["sysctl", "-qw", s]);
    }
    for args in [
        "route add 198.51.100.0/24 nexthop via 198.18.1.2 dev veth1 weight 1 nexthop via 198.18.2.2 dev veth2 weight 2",
        "nexthop add id 1 via 198.18.1.2 dev veth1",
        "nexthop add id 2 via 198.18.2.2 dev veth2",
        "nexthop add id 10 group 1/2,3",
        "route add 203.0.113.0/24 nhid 10",
        "-6 route add 2001:db8:100::/48 nexthop via 2001:2:0:1::2 dev veth1 weight 1 nexthop via 2001:2:0:2::2 dev veth2 weight 3",
        "nexthop add id 3 via 2001:2:0:1::2 dev veth1",
        "nexthop add id 4 via 2001:2:0:2::2 dev veth2",
        "nexthop add id 11 group 3,2/4",
        "-6 route add 2001:db8:200::/48 nhid 11",
    ] {
        let a: Vec<&str> = args.split_whitespace().collect();
        ns.ip(&a);
    }
}

struct Flow {
    dst: String,
    /// Forwarded from this source on veth1p's side; `None`: an output lookup.
    from: Option<String>,
    tcp: bool,
    sport: u16,
    dport: u16,
}

fn random_flow(r: &mut Rng) -> Flow {
    let (base, v6) = PREFIXES[r.below(4) as usize];
    let dst = if v6 {
        format!("{base}{:x}:{:x}", r.below(0xffff) + 1, r.below(0xffff) + 1)
    } else {
        format!("{base}{}", r.below(254) + 1)
    };
    let from = (r.below(3) > 0).then(|| {
        if v6 {
            format!(
                "2001:db8:9:{:x}::{:x}",
                r.below(0xffff),
                r.below(0xffff) + 1
            )
        } else {
            format!("10.9.{}.{}", r.below(256), r.below(254) + 1)
        }
    });
    Flow {
        dst,
        from,
        tcp: r.below(2) == 0,
        sport: 1024 + r.below(60000) as u16,
        dport: *[22u16, 53, 80, 443, 8080].get(r.below(5) as usize).unwrap(),
    }
}

impl Flow {
    fn ip_args(&self) -> String {
        let mut s = format!("route get {}", self.dst);
        if let Some(f) = &self.from {
            let _ = write!(s, " from {f} iif veth1");
        }
        let _ = write!(
            s,
            " ipproto {} sport {} dport {}",
            if self.tcp { "tcp" } else { "udp" },
            self.sport,
            self.dport
        );
        s
    }

    fn json(&self) -> Value {
        let mut v = json!({
            "addr": self.dst,
            "ipproto": if self.tcp { 6 } else { 17 },
            "sport": self.sport,
            "dport": self.dport,
        });
        if let Some(f) = &self.from {
            v["from"] = f.clone().into();
            v["iif"] = "veth1".into();
        }
        v
    }
}

/// The hop `ip route get` names: (gateway, dev).
fn kernel_hops(ns: &Netns, flows: &[Flow], dir: &TempDir) -> Vec<(String, String)> {
    let f = dir.path().join("get.batch");
    let text: String = flows.iter().map(|f| f.ip_args() + "\n").collect();
    std::fs::write(&f, text).unwrap();
    let out = Command::new("ip")
        .args(["-n", ns.name(), "-j", "-batch"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip route get: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('['))
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v[0]["gateway"].as_str().unwrap_or_default().to_string(),
                v[0]["dev"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// The daemon's answers, one JSON object per flow.
fn mirror_answers(d: &Daemon, flows: &[Flow], dir: &TempDir) -> Vec<Value> {
    let f = dir.path().join("lookup.jsonl");
    let text: String = flows.iter().map(|f| f.json().to_string() + "\n").collect();
    std::fs::write(&f, text).unwrap();
    let out = Command::new(daemon_bin())
        .arg("--socket")
        .arg(d.socket())
        .args(["lookup", "--json", "--batch"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "lookup --batch: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The hop an answer names: (gateway, dev), or `Err` with what it said instead.
fn named_hop(v: &Value) -> Result<(String, String), String> {
    let mp = &v["multipath"];
    let Some(i) = mp["hop"].as_u64() else {
        return Err(format!("no hop named: {v}"));
    };
    let h = &v["nexthops"][i as usize];
    Ok((
        h["gateway"].as_str().unwrap_or_default().to_string(),
        h["dev"].as_str().unwrap_or_default().to_string(),
    ))
}

#[test]
fn lookup_names_the_hop_the_kernel_hash_picks() {
    let seed = std::env::var("MULTIPATH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("MULTIPATH_SEED={seed}");
    let mut r = Rng(seed);
    let ns = Netns::new();
    topology(&ns);
    let d = Daemon::start_synced(&ns, &[]);
    d.diff_empty();
    let dir = TempDir::new("multipath").unwrap();
    let hash_seed = (r.below(u64::from(u32::MAX - 1)) + 1).to_string();
    for policy in ["0", "1"] {
        for s in [
            format!("net.ipv4.fib_multipath_hash_policy={policy}"),
            format!("net.ipv6.fib_multipath_hash_policy={policy}"),
            format!("net.ipv4.fib_multipath_hash_seed={hash_seed}"),
        ] {
            ns.exec(&["sysctl", "-qw", &s]);
        }
        let flows: Vec<Flow> = (0..400).map(|_| random_flow(&mut r)).collect();
        let kernel = kernel_hops(&ns, &flows, &dir);
        let mirror = mirror_answers(&d, &flows, &dir);
        assert_eq!(kernel.len(), flows.len(), "one kernel answer per flow");
        assert_eq!(mirror.len(), flows.len(), "one daemon answer per flow");
        let mut bad = Vec::new();
        let mut hops = std::collections::HashMap::<&str, usize>::new();
        for ((f, k), m) in flows.iter().zip(&kernel).zip(&mirror) {
            // An output lookup with no source is hashed from 0.0.0.0 / ::, as the kernel
            // does; none of these flows has a source preference.
            match named_hop(m) {
                Ok(h) if &h == k => *hops.entry(k.1.as_str()).or_default() += 1,
                other => bad.push(format!(
                    "ip {}\n  kernel: {k:?}\n  mirror: {other:?}",
                    f.ip_args()
                )),
            }
        }
        assert!(
            bad.is_empty(),
            "policy {policy}, seed {hash_seed}: {} of {} flows differ (MULTIPATH_SEED={seed}):\n{}",
            bad.len(),
            flows.len(),
            bad.iter().take(8).cloned().collect::<Vec<_>>().join("\n")
        );
        // Not vacuous: the kernel spread the flows over both hops.
        assert!(
            hops.len() == 2 && hops.values().all(|&n| n > flows.len() / 10),
            "policy {policy}: hops chosen {hops:?}"
        );
    }
    // A random seed: the hop cannot be known, and lookup says so.
    ns.exec(&["sysctl", "-qw", "net.ipv4.fib_multipath_hash_seed=0"]);
    let flows: Vec<Flow> = (0..50).map(|_| random_flow(&mut r)).collect();
    for (f, m) in flows.iter().zip(mirror_answers(&d, &flows, &dir)) {
        let why = m["multipath"]["per_flow"].as_str().unwrap_or_default();
        assert!(
            why.starts_with("per flow") && m["multipath"].get("hop").is_none(),
            "ip {}: {m}",
            f.ip_args()
        );
        assert_eq!(m["nexthops"].as_array().map(Vec::len), Some(2), "{m}");
    }
}
