//! Policy rules: mirrored, diffed, and `lookup` answering what `ip route get` answers.
//!
//! The property test builds random rules of every selector and action kind (both
//! families) over routes in several tables (unicast, blackhole, unreachable, prohibit,
//! throw), asks the kernel `ip route get ... fibmatch` for 2,000+ random flows (source,
//! destination, input device, mark, uid, protocol, ports, TOS; forwarding and output
//! lookups) in one `ip -batch`, asks the daemon the same flows in one `lookup --batch`,
//! and compares table, prefix and route type, or the error the kernel answers with.
//! Then rules churn (add, delete, priority replaced) with `diff` empty after each round.
//! Runs on the source `ROUTE_MIRROR_SOURCE` names (netlink or ebpf).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::process::Command;
use std::time::Duration;

use route_mirror_tests::{daemon_bin, Daemon, Netns, TempDir};
use serde_json::Value;

/// A small deterministic generator (xorshift64*): the failing seed is printed.
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
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn seed() -> u64 {
    std::env::var("RULES_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        })
}

/// Tables, routes and addresses both tests start from.
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
    ns.ip(&["link", "set", "veth2", "group", "5"]);
    // Output lookups from a source need it local.
    for i in 1..=3 {
        ns.ip(&["addr", "add", &format!("10.200.0.{i}/32"), "dev", "lo"]);
        ns.ip(&[
            "addr",
            "add",
            &format!("2001:db8:200::{i}/128"),
            "dev",
            "lo",
        ]);
    }
    let mut b = String::new();
    b.push_str("route add default via 198.18.1.2\n");
    b.push_str("route add 10.0.0.0/8 via 198.18.2.2\n");
    b.push_str("route add ::/0 via 2001:2:0:1::2\n");
    b.push_str("route add 2001:db8::/32 via 2001:2:0:2::2\n");
    let kinds = ["blackhole", "unreachable", "prohibit", "throw"];
    for t in 100..106u32 {
        let dev = if t % 2 == 0 { "veth1" } else { "veth2" };
        let (gw4, gw6) = if t % 2 == 0 {
            ("198.18.1.2", "2001:2:0:1::2")
        } else {
            ("198.18.2.2", "2001:2:0:2::2")
        };
        let _ = writeln!(b, "route add 10.0.0.0/8 via {gw4} table {t}");
        let _ = writeln!(b, "route add 10.{}.0.0/16 dev {dev} table {t}", t - 96);
        let _ = writeln!(b, "route add 10.1.{}.0/24 via {gw4} table {t}", t - 99);
        let _ = writeln!(
            b,
            "route add {} 10.2.{}.0/24 table {t}",
            kinds[(t as usize) % 4],
            t - 99
        );
        let _ = writeln!(
            b,
            "route add {} 10.3.0.0/16 table {t}",
            kinds[(t as usize + 1) % 4]
        );
        if t % 3 == 0 {
            let _ = writeln!(b, "route add default via {gw4} table {t}");
            let _ = writeln!(b, "route add ::/0 via {gw6} table {t}");
        }
        let _ = writeln!(b, "route add 2001:db8::/32 via {gw6} table {t}");
        let _ = writeln!(
            b,
            "route add 2001:db8:{:x}::/48 dev {dev} table {t}",
            t - 96
        );
        let _ = writeln!(
            b,
            "route add {} 2001:db8:2:{:x}::/64 table {t}",
            kinds[(t as usize) % 4],
            t - 99
        );
        let _ = writeln!(
            b,
            "route add {} 2001:db8:3::/48 table {t}",
            kinds[(t as usize + 2) % 4]
        );
    }
    let dir = TempDir::new("rules-topo").unwrap();
    let f = dir.path().join("topo.batch");
    std::fs::write(&f, b).unwrap();
    ns.load_batch(&f);
}

const PREFS: std::ops::Range<u64> = 1..400;

/// One random rule as `ip rule add` arguments (family flag first).
fn random_rule(r: &mut Rng, v6: bool) -> Vec<String> {
    let mut a: Vec<String> = vec![
        if v6 { "-6" } else { "-4" }.into(),
        "rule".into(),
        "add".into(),
    ];
    let pref = PREFS.start + r.below(PREFS.end - PREFS.start);
    if r.chance(10) {
        a.push("not".into());
    }
    let (from, to): (&[&str], &[&str]) = if v6 {
        (
            &[
                "2001:db8:77::/48",
                "2001:db8:200::1",
                "2001:db8:200::/120",
                "2000::/3",
            ],
            &[
                "2001:db8::/32",
                "2001:db8:1::/48",
                "2001:db8:3::/48",
                "2001:db8:2::/48",
                "::/1",
            ],
        )
    } else {
        (
            &["192.0.2.0/24", "10.200.0.1", "10.200.0.0/30", "192.0.0.0/8"],
            &[
                "10.0.0.0/8",
                "10.1.0.0/16",
                "10.2.0.0/16",
                "10.3.0.0/16",
                "10.1.3.0/24",
            ],
        )
    };
    if r.chance(30) {
        a.extend(["from".into(), r.pick(from).to_string()]);
    }
    if r.chance(30) {
        a.extend(["to".into(), r.pick(to).to_string()]);
    }
    if r.chance(12) {
        a.extend(["tos".into(), r.pick(&["0x10", "0x04", "0x0c"]).to_string()]);
    }
    if r.chance(20) {
        let m = r.pick(&["1", "2", "0x10/0xf0", "0x3/0x3", "4"]);
        a.extend(["fwmark".into(), m.to_string()]);
    }
    if r.chance(20) {
        a.extend([
            "iif".into(),
            r.pick(&["veth1", "veth2", "lo", "ghost0"]).to_string(),
        ]);
    }
    if r.chance(8) {
        a.extend(["oif".into(), r.pick(&["veth1", "veth2"]).to_string()]);
    }
    if r.chance(12) {
        a.extend([
            "uidrange".into(),
            r.pick(&["1000-2000", "0-0", "3000-4000"]).to_string(),
        ]);
    }
    if r.chance(15) {
        let p = if v6 { "ipv6-icmp" } else { "icmp" };
        a.extend(["ipproto".into(), r.pick(&["tcp", "udp", p]).to_string()]);
    }
    if r.chance(12) {
        a.extend([
            "sport".into(),
            r.pick(&["1000-2000", "53", "5000"]).to_string(),
        ]);
    }
    if r.chance(12) {
        a.extend(["dport".into(), r.pick(&["80", "443", "1-1024"]).to_string()]);
    }
    a.extend(["pref".into(), pref.to_string()]);
    match r.below(100) {
        0..=54 => {
            a.extend(["table".into(), (100 + r.below(6)).to_string()]);
            if r.chance(15) {
                a.extend([
                    "suppress_prefixlength".into(),
                    r.pick(&["0", "8", "16"]).to_string(),
                ]);
            }
            if r.chance(6) {
                a.extend(["suppress_ifgroup".into(), "5".into()]);
            }
        }
        55..=59 => a.extend(["table".into(), "main".into()]),
        60..=69 => {
            let target = pref + 1 + r.below(50);
            a.extend(["goto".into(), target.to_string()]);
        }
        70..=74 => a.push("nop".into()),
        75..=81 => a.push("blackhole".into()),
        82..=88 => a.push("unreachable".into()),
        89..=95 => a.push("prohibit".into()),
        _ => a.push("l3mdev".into()),
    }
    a
}

fn add_rules(ns: &Netns, r: &mut Rng, n: usize) -> Vec<Vec<String>> {
    let mut added = Vec::new();
    while added.len() < n {
        let v6 = r.chance(45);
        let mut args = random_rule(r, v6);
        // `l3mdev` takes no table; some combinations the kernel refuses: skip those.
        let strs: Vec<&str> = args.iter().map(String::as_str).collect();
        if ns.try_ip(&strs).is_ok() {
            args[2] = "del".into();
            added.push(args);
        }
    }
    added
}

struct Flow {
    dst: String,
    from: Option<String>,
    iif: Option<&'static str>,
    /// `oif`: output lookups route through it; forwarding ones carry it to IPv6 rules.
    oif: Option<&'static str>,
    mark: u32,
    uid: Option<u32>,
    ipproto: Option<&'static str>,
    sport: Option<u16>,
    dport: Option<u16>,
    tos: u8,
}

fn random_flow(r: &mut Rng, v6: bool) -> Flow {
    let dst = if v6 {
        let p = r.pick(&[
            "2001:db8:1",
            "2001:db8:2:1",
            "2001:db8:2:3",
            "2001:db8:3",
            "2001:db8:5",
            "2001:db9",
            "2001:db8:4",
        ]);
        format!("{p}::{:x}", 1 + r.below(0xffff))
    } else {
        let p = r.pick(&[
            "10.1.1",
            "10.1.3",
            "10.2.1",
            "10.2.4",
            "10.3.9",
            "10.4.0",
            "10.9.9",
            "203.0.113",
            "10.2.2",
        ]);
        format!("{p}.{}", 1 + r.below(250))
    };
    let input = r.chance(55);
    let (from, iif) = if input {
        let from = if v6 {
            format!(
                "{}::{:x}",
                r.pick(&["2001:db8:77", "2001:db8:78", "2001:db8:1"]),
                1 + r.below(0xfff)
            )
        } else {
            format!(
                "{}.{}",
                r.pick(&["192.0.2", "192.0.3", "100.64.0"]),
                1 + r.below(250)
            )
        };
        (Some(from), Some(*r.pick(&["veth1", "veth2"])))
    } else if r.chance(40) {
        let i = 1 + r.below(3);
        let from = if v6 {
            format!("2001:db8:200::{i}")
        } else {
            format!("10.200.0.{i}")
        };
        (Some(from), None)
    } else {
        (None, None)
    };
    let ipproto = if r.chance(30) {
        None
    } else {
        Some(*r.pick(&["tcp", "udp", if v6 { "ipv6-icmp" } else { "icmp" }]))
    };
    let oif = if r.chance(if input { 15 } else { 35 }) {
        Some(*r.pick(&["veth1", "veth2", "lo"]))
    } else {
        None
    };
    Flow {
        dst,
        from,
        iif,
        oif,
        mark: *r.pick(&[0u32, 0, 1, 2, 3, 4, 0x13, 0x21]),
        uid: if r.chance(40) {
            Some(*r.pick(&[0u32, 1500, 3500]))
        } else {
            None
        },
        ipproto,
        sport: if r.chance(50) {
            Some(*r.pick(&[53u16, 1500, 5000, 7]))
        } else {
            None
        },
        dport: if r.chance(50) {
            Some(*r.pick(&[80u16, 443, 1000, 8080]))
        } else {
            None
        },
        tos: *r.pick(&[0u8, 0, 0x10, 0x14, 0x30, 0x20, 0x0c]),
    }
}

impl Flow {
    fn ip_args(&self) -> String {
        let mut s = format!("route get {}", self.dst);
        if let Some(f) = &self.from {
            let _ = write!(s, " from {f}");
        }
        if let Some(i) = self.iif {
            let _ = write!(s, " iif {i}");
        }
        if let Some(o) = self.oif {
            let _ = write!(s, " oif {o}");
        }
        if self.mark != 0 {
            let _ = write!(s, " mark {}", self.mark);
        }
        if let Some(u) = self.uid {
            let _ = write!(s, " uid {u}");
        }
        if let Some(p) = self.ipproto {
            let _ = write!(s, " ipproto {p}");
        }
        if let Some(p) = self.sport {
            let _ = write!(s, " sport {p}");
        }
        if let Some(p) = self.dport {
            let _ = write!(s, " dport {p}");
        }
        if self.tos != 0 {
            let _ = write!(s, " tos {:#x}", self.tos);
        }
        s.push_str(" fibmatch");
        s
    }

    fn json(&self) -> Value {
        let mut v = serde_json::json!({"addr": self.dst, "tos": self.tos});
        if let Some(f) = &self.from {
            v["from"] = f.clone().into();
        }
        if let Some(i) = self.iif {
            v["iif"] = i.into();
        }
        if let Some(o) = self.oif {
            v["oif"] = o.into();
        }
        if self.mark != 0 {
            v["mark"] = self.mark.into();
        }
        if let Some(u) = self.uid {
            v["uid"] = u.into();
        }
        if let Some(p) = self.ipproto {
            v["ipproto"] = p.into();
        }
        if let Some(p) = self.sport {
            v["sport"] = p.into();
        }
        if let Some(p) = self.dport {
            v["dport"] = p.into();
        }
        v
    }
}

/// What the kernel answered: (table, prefix, type) or its error message.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Route {
        table: u32,
        prefix: String,
        kind: String,
    },
    Error(String),
}

fn table_id(name: &str) -> u32 {
    match name {
        "local" => 255,
        "main" => 254,
        "default" => 253,
        n => n.parse().unwrap_or_else(|_| panic!("table {n:?}")),
    }
}

/// The prefix as `ip -j route` prints it: host routes without a length, /0 as default.
fn ip_prefix(p: &str) -> String {
    let n: ipnet::IpNet = p.parse().unwrap();
    if n.prefix_len() == 0 {
        "default".into()
    } else if n.prefix_len() == n.max_prefix_len() {
        n.addr().to_string()
    } else {
        n.to_string()
    }
}

fn kernel_answers(ns: &Netns, flows: &[Flow], dir: &TempDir) -> Vec<Answer> {
    let f = dir.path().join("get.batch");
    let text: String = flows.iter().map(|f| f.ip_args() + "\n").collect();
    std::fs::write(&f, text).unwrap();
    let out = Command::new("ip")
        .args(["-n", ns.name(), "-j", "-force", "-batch"])
        .arg(&f)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut failed: HashMap<usize, String> = HashMap::new();
    let mut last_msg = String::new();
    for l in stderr.lines() {
        if let Some(rest) = l.strip_prefix("Command failed ") {
            let n: usize = rest.rsplit(':').next().unwrap().trim().parse().unwrap();
            failed.insert(n, std::mem::take(&mut last_msg));
        } else {
            last_msg = l
                .trim_start_matches("RTNETLINK answers: ")
                .trim_start_matches("Error: ")
                .to_string();
        }
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut ok = stdout.lines().filter(|l| l.starts_with('['));
    (1..=flows.len())
        .map(|n| match failed.get(&n) {
            Some(m) => Answer::Error(m.clone()),
            None => {
                let v: Value =
                    serde_json::from_str(ok.next().expect("an answer per line")).unwrap();
                let r = &v[0];
                Answer::Route {
                    table: table_id(r["table"].as_str().unwrap_or("main")),
                    prefix: r["dst"].as_str().unwrap().to_string(),
                    kind: r["type"].as_str().unwrap_or("unicast").to_string(),
                }
            }
        })
        .collect()
}

fn mirror_answers(d: &Daemon, flows: &[Flow], dir: &TempDir) -> Vec<(Answer, Value)> {
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
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        flows.len(),
        "one answer per flow; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    lines
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let a = if let Some(e) = v.get("error").and_then(Value::as_str) {
                // A reject route or a rule action: the kernel answers with its error.
                Answer::Error(e.to_string())
            } else if v["prefix"].is_null() {
                Answer::Error(
                    v.get("line")
                        .map(|_| format!("bad line: {v}"))
                        .unwrap_or_else(|| "Network is unreachable".into()),
                )
            } else {
                Answer::Route {
                    table: v["table"].as_u64().unwrap() as u32,
                    prefix: ip_prefix(v["prefix"].as_str().unwrap()),
                    kind: v["type"].as_str().unwrap().to_string(),
                }
            };
            (a, v)
        })
        .collect()
}

fn rules_of(ns: &Netns) -> String {
    format!("{}{}", ns.ip(&["-4", "rule"]), ns.ip(&["-6", "rule"]))
}

#[test]
fn lookup_agrees_with_ip_route_get_through_random_rules() {
    let seed = seed();
    eprintln!("RULES_SEED={seed}");
    let mut r = Rng(seed);
    let ns = Netns::new();
    topology(&ns);
    add_rules(&ns, &mut r, 120);
    let d = Daemon::start_synced(&ns, &[]);
    d.diff_empty();
    let dir = TempDir::new("rules-prop").unwrap();
    let flows: Vec<Flow> = (0..2200).map(|i| random_flow(&mut r, i % 5 >= 3)).collect();
    let kernel = kernel_answers(&ns, &flows, &dir);
    let mirror = mirror_answers(&d, &flows, &dir);
    let mut bad = Vec::new();
    for ((f, k), (m, v)) in flows.iter().zip(&kernel).zip(&mirror) {
        if k != m {
            bad.push(format!(
                "ip {}\n  kernel: {k:?}\n  mirror: {m:?} {v}",
                f.ip_args()
            ));
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {} flows differ (RULES_SEED={seed}):\n{}\nrules:\n{}",
        bad.len(),
        flows.len(),
        bad.iter().take(12).cloned().collect::<Vec<_>>().join("\n"),
        rules_of(&ns)
    );
    // Not vacuous: both routes and errors were compared.
    let routed = kernel
        .iter()
        .filter(|a| matches!(a, Answer::Route { .. }))
        .count();
    assert!(
        // (A seed may draw an early catch-all reject rule: few routes, still some.)
        routed >= 20 && routed <= flows.len() - 20,
        "flows should mix routes and errors: {routed} of {} routed (RULES_SEED={seed})\nrules:\n{}",
        flows.len(),
        rules_of(&ns)
    );
}

#[test]
fn rules_churn_keeps_diff_empty() {
    let seed = seed();
    eprintln!("RULES_SEED={seed}");
    let mut r = Rng(seed);
    let ns = Netns::new();
    topology(&ns);
    let mut live = add_rules(&ns, &mut r, 40);
    let d = Daemon::start_synced(&ns, &[]);
    d.diff_empty();
    let count = |d: &Daemon| -> u64 {
        let s = d.stats();
        s["rules"]["inet"].as_u64().unwrap() + s["rules"]["inet6"].as_u64().unwrap()
    };
    for round in 0..6 {
        // Delete some, add some, and move some to another priority.
        for _ in 0..8 {
            if live.is_empty() {
                break;
            }
            let i = r.below(live.len() as u64) as usize;
            let args = live.swap_remove(i);
            let strs: Vec<&str> = args.iter().map(String::as_str).collect();
            ns.ip(&strs);
            if round % 2 == 1 && r.chance(50) {
                // Same rule, other priority.
                let mut moved = args.clone();
                moved[2] = "add".into();
                let p = moved.iter().position(|a| a == "pref").unwrap() + 1;
                moved[p] = (PREFS.start + r.below(PREFS.end - PREFS.start)).to_string();
                let strs: Vec<&str> = moved.iter().map(String::as_str).collect();
                if ns.try_ip(&strs).is_ok() {
                    moved[2] = "del".into();
                    live.push(moved);
                }
            }
        }
        live.extend(add_rules(&ns, &mut r, 8));
        d.diff_empty();
        let kernel = rules_of(&ns).lines().filter(|l| !l.is_empty()).count() as u64;
        assert_eq!(count(&d), kernel, "round {round}: rule count");
    }
    // A watcher sees rule changes.
    let mut w = Command::new(daemon_bin())
        .arg("--socket")
        .arg(d.socket())
        .args(["watch", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    ns.ip(&[
        "rule",
        "add",
        "from",
        "192.0.2.77",
        "table",
        "101",
        "pref",
        "999",
    ]);
    let line = {
        use std::io::BufRead;
        let mut rd = std::io::BufReader::new(w.stdout.take().unwrap());
        let mut s = String::new();
        rd.read_line(&mut s).unwrap();
        s
    };
    let _ = w.kill();
    let _ = w.wait();
    assert!(
        line.contains("999: from 192.0.2.77 lookup 101") && line.contains("\"add\""),
        "watch line: {line}"
    );
}
