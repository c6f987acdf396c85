//! The gNMI export read by a client nobody here wrote: pygnmi (tests/clients/gnmi_client.py,
//! in the venv `cargo xtask test` makes) against `route-mirror run --gnmi-listen`.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use route_mirror_tests::{
    batch, daemon_bin, free_port, poll, rebuild_from_stream, stream_messages, test_python,
    workspace_root, Daemon, NatsServer, Netns, TempDir,
};
use serde_json::Value;

const NI: &str = "/network-instances/network-instance[name=main]/afts";

struct Gnmi {
    python: std::path::PathBuf,
    addr: String,
    /// The gNMI target of every operation (a namespace), if any.
    target: Option<String>,
}

impl Gnmi {
    /// A daemon on `ns` serving gNMI in plaintext on a free loopback port.
    fn start(ns: &Netns, env: &[(&str, &str)]) -> Option<(Daemon, Gnmi)> {
        Gnmi::start_with(ns, &[], env)
    }

    /// [`Gnmi::start`] with more `run` arguments.
    fn start_with(ns: &Netns, extra: &[&str], env: &[(&str, &str)]) -> Option<(Daemon, Gnmi)> {
        let python = test_python()?;
        let addr = format!("127.0.0.1:{}", free_port());
        let mut args = vec!["--gnmi-listen", &addr, "--gnmi-insecure"];
        args.extend_from_slice(extra);
        let d = Daemon::start_env(ns, &args, env);
        d.wait_synced(Duration::from_secs(30));
        Some((
            d,
            Gnmi {
                python,
                addr,
                target: None,
            },
        ))
    }

    /// The same server, addressed to one target (a mirrored namespace).
    fn target(&self, t: &str) -> Gnmi {
        Gnmi {
            python: self.python.clone(),
            addr: self.addr.clone(),
            target: Some(t.to_string()),
        }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.python);
        c.arg(workspace_root().join("tests/clients/gnmi_client.py"))
            .arg(&self.addr)
            .args(args);
        if let Some(t) = &self.target {
            c.env("GNMI_TARGET", t);
        }
        c
    }

    /// Runs one operation to its end; its JSON lines.
    fn run(&self, args: &[&str]) -> Vec<Value> {
        let out = self.cmd(args).output().expect("running the pygnmi client");
        assert!(
            out.status.success(),
            "pygnmi {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Starts a long-running operation; its JSON lines arrive on the channel.
    fn spawn(&self, args: &[&str]) -> (Child, mpsc::Receiver<Value>) {
        let mut child = self
            .cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the pygnmi client");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&l) {
                    let _ = tx.send(v);
                }
            }
        });
        (child, rx)
    }
}

/// Every leaf of pygnmi's parsed notifications: (prefix + "/" + path) → value.
fn leaves(msgs: &[Value]) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let mut add = |n: &Value| {
        let prefix = n["prefix"].as_str().unwrap_or("");
        for u in n["update"].as_array().into_iter().flatten() {
            let p = u["path"].as_str().unwrap_or("");
            out.insert(format!("{prefix}/{p}"), u["val"].clone());
        }
    };
    for m in msgs {
        // Get: {"get": {"notification": [...]}}; Subscribe: {"update": {...}}.
        for n in m["get"]["notification"].as_array().into_iter().flatten() {
            add(n);
        }
        if m["update"].is_object() {
            add(&m["update"]);
        }
    }
    out
}

fn wait_for(rx: &mpsc::Receiver<Value>, timeout: Duration, f: impl Fn(&Value) -> bool) -> Value {
    let end = Instant::now() + timeout;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(v) if f(&v) => return v,
            Ok(_) => {}
            Err(_) => panic!("no matching gNMI message within {timeout:?}"),
        }
    }
}

/// Every message up to and including the first that matches.
fn collect_until(
    rx: &mpsc::Receiver<Value>,
    timeout: Duration,
    f: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    let end = Instant::now() + timeout;
    let mut out = Vec::new();
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(v) => {
                let done = f(&v);
                out.push(v);
                if done {
                    return out;
                }
            }
            Err(_) => panic!("no matching gNMI message within {timeout:?}"),
        }
    }
}

/// The updates (`update`) or deletes (`delete`) of a streamed notification: full path
/// (prefix + path) and value.
fn streamed(m: &Value, what: &str) -> Vec<(String, Value)> {
    let prefix = m["update"]["prefix"].as_str().unwrap_or("");
    m["update"][what]
        .as_array()
        .into_iter()
        .flatten()
        .map(|u| {
            let p = u["path"].as_str().unwrap_or("");
            let full = if p.is_empty() {
                prefix.to_string()
            } else {
                format!("{prefix}/{p}")
            };
            (full, u["val"].clone())
        })
        .collect()
}

/// Next-hop index → interface, from notifications' leaves.
fn hop_interfaces(msgs: &[Value]) -> BTreeMap<u64, String> {
    let mut out = BTreeMap::new();
    for (p, v) in leaves(msgs) {
        if let Some(rest) = p.split("next-hops/next-hop[index=").nth(1) {
            if p.ends_with("/interface-ref/state/interface") {
                let index = rest.split(']').next().unwrap().parse().unwrap();
                out.insert(index, v.as_str().unwrap().to_string());
            }
        }
    }
    out
}

/// The next hops (gateway, interface, weight) pygnmi reads for the IPv4 entry
/// `prefix` of the main table: Get of the entry, of its next-hop group, then of each
/// of the group's next hops (PROTO where values are typed).
fn gnmi_hops(g: &Gnmi, prefix: &str) -> Vec<(String, String, u64)> {
    let get = |path: &str, enc: &str| leaves(&g.run(&["get", path, enc]));
    let e = get(
        &format!("{NI}/ipv4-unicast/ipv4-entry[prefix={prefix}]"),
        "proto",
    );
    let nhg = e
        .iter()
        .find(|(p, _)| p.ends_with("/state/next-hop-group"))
        .and_then(|(_, v)| v.as_u64())
        .unwrap_or_else(|| panic!("no next-hop-group for {prefix}: {e:?}"));
    let group = get(
        &format!("{NI}/next-hop-groups/next-hop-group[id={nhg}]"),
        "proto",
    );
    let mut hops = Vec::new();
    for (path, v) in &group {
        if path.ends_with("/state/weight") {
            let index: u64 = path
                .split("next-hop[index=")
                .nth(1)
                .unwrap()
                .split(']')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            let hop = get(&format!("{NI}/next-hops/next-hop[index={index}]"), "json");
            let find = |suffix: &str| {
                hop.iter()
                    .find(|(p, _)| p.ends_with(suffix))
                    .map(|(_, v)| v.as_str().unwrap().to_string())
            };
            hops.push((
                find("/state/ip-address").unwrap(),
                find("/interface-ref/state/interface").unwrap(),
                v.as_u64().unwrap(),
            ));
        }
    }
    hops.sort();
    hops
}

/// The next hops (gateway, interface, weight) `route-mirror lookup ADDR` answers with.
fn lookup_hops(d: &Daemon, addr: &str) -> Vec<(String, String, u64)> {
    let route = d
        .lookup(addr, None)
        .unwrap_or_else(|| panic!("lookup {addr} finds a route"));
    let mut want: Vec<(String, String, u64)> = route["nexthops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["gateway"].as_str().unwrap().to_string(),
                h["dev"].as_str().unwrap().to_string(),
                h["weight"].as_u64().unwrap(),
            )
        })
        .collect();
    want.sort();
    want
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Capabilities, Get of a prefix (its next-hop group and next hops, compared with
/// `route-mirror lookup`), NOT_FOUND for an absent one, and Subscribe ONCE with as
/// many entries as the mirror has prefixes.
#[test]
fn pygnmi_reads_the_mirror() {
    let ns = Netns::new();
    ns.add_two_hop_route("10.0.0.0/8", [1, 3], &["metric", "7"]);
    ns.ip(&[
        "-6",
        "route",
        "add",
        "2001:db8:9::/48",
        "via",
        "2001:2:0:1::2",
        "metric",
        "5",
    ]);
    ns.ip(&["route", "add", "blackhole", "192.0.2.0/24"]);
    ns.load_batch(batch("v4-10k"));
    let Some((d, g)) = Gnmi::start(&ns, &[]) else {
        return;
    };

    let caps = &g.run(&["caps"])[0];
    let encs: Vec<&str> = caps["supported_encodings"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(encs.contains(&"json") && encs.contains(&"proto"), "{caps}");
    assert!(caps["supported_models"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["name"] == "openconfig-aft"));

    // Get of one prefix, then of its group and hops (PROTO: typed values).
    let get = |path: &str, enc: &str| leaves(&g.run(&["get", path, enc]));
    let e = get(
        &format!("{NI}/ipv4-unicast/ipv4-entry[prefix=10.0.0.0/8]"),
        "proto",
    );
    let key = |leaf: &str| {
        format!("network-instances/network-instance[name=main]/afts/ipv4-unicast/ipv4-entry[prefix=10.0.0.0/8]/state/{leaf}")
    };
    assert_eq!(e[&key("prefix")], "10.0.0.0/8");
    assert_eq!(e[&key("origin-protocol")], "openconfig-policy-types:STATIC");
    assert!(
        e[&key("next-hop-group")].is_u64(),
        "next-hop-group is a uint"
    );
    assert_eq!(
        gnmi_hops(&g, "10.0.0.0/8"),
        lookup_hops(&d, "10.1.2.3"),
        "gNMI next hops of 10.0.0.0/8 = route-mirror lookup's"
    );
    // entry-metadata: metric (u32 BE) and route type, base64 in JSON.
    let meta = get(
        &format!("{NI}/ipv4-unicast/ipv4-entry[prefix=10.0.0.0/8]/state/entry-metadata"),
        "json",
    );
    assert_eq!(
        meta.values().next().unwrap(),
        "AAAABwED",
        "metric 7, RTN_UNICAST 1, RTPROT_BOOT 3"
    );
    let bh = get(
        &format!("{NI}/ipv4-unicast/ipv4-entry[prefix=192.0.2.0/24]/state/entry-metadata"),
        "json",
    );
    assert_eq!(
        bh.values().next().unwrap(),
        "AAAAAAYD",
        "metric 0, RTN_BLACKHOLE 6, RTPROT_BOOT 3"
    );
    let v6 = get(
        &format!("{NI}/ipv6-unicast/ipv6-entry[prefix=2001:db8:9::/48]"),
        "json",
    );
    assert_eq!(v6.len(), 4, "{v6:?}");

    let missing = g.run(&[
        "get",
        &format!("{NI}/ipv4-unicast/ipv4-entry[prefix=10.99.0.0/16]"),
    ]);
    assert!(
        missing[0]["error"].as_str().unwrap().contains("not found"),
        "NOT_FOUND: {missing:?}"
    );

    // ONCE over every network instance: one entry per (table, prefix) the mirror has.
    let once = g.run(&["once", "/network-instances"]);
    assert!(
        once.iter().any(|m| m["sync_response"] == true),
        "ONCE ends with sync_response"
    );
    let entries: HashSet<String> = leaves(&once)
        .keys()
        .filter(|p| p.ends_with("/state/prefix") && p.contains("-entry["))
        .cloned()
        .collect();
    let routes = d.cli_json(&["show", "--table", "all", "--json"]);
    let prefixes: HashSet<(u64, String)> = routes
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["tos"].as_u64().unwrap_or(0) == 0)
        .map(|r| {
            (
                r["table"].as_u64().unwrap(),
                r["prefix"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(prefixes.len() > 9_000, "{} prefixes", prefixes.len());
    assert_eq!(
        entries.len(),
        prefixes.len(),
        "ONCE entries = the mirror's prefixes"
    );
}

/// A Get is one gRPC message, and gRPC clients receive at most 4 MiB unless told
/// otherwise. A Get of the whole AFT of a large table (100k routes, tens of MB) is
/// refused with RESOURCE_EXHAUSTED naming the limit and pointing to Subscribe ONCE (not
/// an opaque transport error after the daemon rendered it all), and counted; a Get of
/// a prefix of that table still equals `route-mirror lookup`. With
/// `--gnmi-get-max-bytes` raised, a client configured to receive as much reads the
/// whole table in one Get: one entry per IPv4 prefix of the mirror's main table.
#[test]
fn a_get_larger_than_the_client_receives_is_refused_clearly() {
    let ns = Netns::new();
    ns.add_two_hop_route("10.0.0.0/8", [2, 5], &[]);
    ns.load_batch(batch("v4-100k"));
    let Some((d, g)) = Gnmi::start(&ns, &[]) else {
        return;
    };
    for path in ["/network-instances", &format!("{NI}/ipv4-unicast")] {
        let got = g.run(&["getcount", path, "proto"]);
        let err = got[0]["error"]
            .as_str()
            .unwrap_or_else(|| panic!("a Get of {path} is refused: {:.300}", got[0]));
        assert_eq!(got[0]["code"], "RESOURCE_EXHAUSTED", "{err}");
        assert!(
            err.contains("Subscribe ONCE") && err.contains("4194304-byte limit"),
            "the error says why and what to do instead: {err}"
        );
    }
    assert_eq!(d.stats()["gnmi"]["gets_too_large"], 2);
    assert_eq!(
        gnmi_hops(&g, "10.0.0.0/8"),
        lookup_hops(&d, "10.1.2.3"),
        "a Get of a multipath prefix = route-mirror lookup"
    );
    assert_eq!(
        gnmi_hops(&g, "130.225.208.0/24"),
        lookup_hops(&d, "130.225.208.1"),
        "a Get of one of the 100k = route-mirror lookup"
    );
    drop(d);

    let Some((d, g)) = Gnmi::start_with(&ns, &["--gnmi-get-max-bytes", "268435456"], &[]) else {
        return;
    };
    let mut c = g.cmd(&["getcount", &format!("{NI}/ipv4-unicast"), "proto"]);
    c.env("GNMI_MAX_RECEIVE", "268435456");
    c.env("GNMI_TIMEOUT", "120");
    let out = c.output().expect("pygnmi");
    let got: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "pygnmi getcount: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let prefixes: BTreeSet<String> = got["prefixes"]
        .as_array()
        .unwrap_or_else(|| panic!("the whole table in one Get: {got:.300}"))
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    let main: BTreeSet<String> = d
        .cli_json(&["show", "--table", "main", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["tos"].as_u64().unwrap_or(0) == 0)
        .map(|r| r["prefix"].as_str().unwrap().to_string())
        .filter(|p| !p.contains(':'))
        .collect();
    assert!(main.len() > 40_000, "{} prefixes in main", main.len());
    assert!(
        prefixes == main,
        "one Get entry per IPv4 prefix of the main table ({} vs {})",
        prefixes.len(),
        main.len()
    );
    assert_eq!(d.stats()["gnmi"]["gets_too_large"], 0);
}

/// A route as the three readers can all say it: (metric, type, next hops as
/// (gateway, interface, weight), sorted).
type Said = (u64, u8, Vec<(String, String, u64)>);

/// The network-instance name of a route object's table (a number or a name).
fn table_name(t: &Value) -> String {
    match t.as_u64() {
        Some(254) => "main".into(),
        Some(255) => "local".into(),
        Some(253) => "default".into(),
        Some(n) => n.to_string(),
        None => t.as_str().unwrap_or("?").to_string(),
    }
}

/// (instance, prefix) → what each route of that key says, from route objects
/// (`route-mirror show --json`, `route-mirror fleet dump`), TOS 0 only.
fn said_by_routes(routes: &[Value]) -> BTreeMap<(String, String), Vec<Said>> {
    let kinds = [
        ("unicast", 1),
        ("local", 2),
        ("broadcast", 3),
        ("anycast", 4),
        ("multicast", 5),
        ("blackhole", 6),
        ("unreachable", 7),
        ("prohibit", 8),
        ("throw", 9),
    ];
    let mut out: BTreeMap<(String, String), Vec<Said>> = BTreeMap::new();
    for r in routes
        .iter()
        .filter(|r| r["tos"].as_u64().unwrap_or(0) == 0)
    {
        let kind = kinds
            .iter()
            .find(|(k, _)| r["type"] == *k)
            .map_or(0, |(_, n)| *n);
        let mut hops: Vec<(String, String, u64)> = r["nexthops"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|h| {
                (
                    h["gateway"].as_str().unwrap_or("").to_string(),
                    h["dev"].as_str().unwrap_or("").to_string(),
                    h["weight"].as_u64().unwrap_or(1),
                )
            })
            .collect();
        hops.sort();
        out.entry((
            table_name(&r["table"]),
            r["prefix"].as_str().unwrap().to_string(),
        ))
        .or_default()
        .push((r["metric"].as_u64().unwrap_or(0), kind, hops));
    }
    out
}

/// (instance, prefix) → what its AFT entry says, from pygnmi's notifications (JSON):
/// the entry's metadata (metric, type), its group's next hops and weights, and each
/// hop's address and interface.
fn said_by_gnmi(msgs: &[Value]) -> BTreeMap<(String, String), Said> {
    let all = leaves(msgs);
    let key = |p: &str, k: &str| {
        p.split(&format!("[{k}="))
            .nth(1)
            .map(|r| r.split(']').next().unwrap().to_string())
    };
    let mut hops: BTreeMap<(String, u64), (String, String)> = BTreeMap::new();
    let mut groups: BTreeMap<(String, u64), Vec<(u64, u64)>> = BTreeMap::new();
    let mut entries: BTreeMap<(String, String), (u64, Vec<u8>)> = BTreeMap::new();
    for (p, v) in &all {
        let ni = key(p, "name").unwrap();
        if p.contains("/next-hop-groups/") {
            if p.ends_with("/state/weight") {
                let id = key(p, "id").unwrap().parse().unwrap();
                let index = key(p, "index").unwrap().parse().unwrap();
                groups
                    .entry((ni, id))
                    .or_default()
                    .push((index, v.as_u64().unwrap()));
            }
        } else if p.contains("/next-hops/next-hop[") {
            let index = key(p, "index").unwrap().parse().unwrap();
            let h = hops.entry((ni, index)).or_default();
            if p.ends_with("/state/ip-address") {
                h.0 = v.as_str().unwrap().to_string();
            } else if p.ends_with("/interface-ref/state/interface") {
                h.1 = v.as_str().unwrap().to_string();
            }
        } else if let Some(prefix) = key(p, "prefix") {
            let e = entries.entry((ni, prefix)).or_default();
            if p.ends_with("/state/next-hop-group") {
                e.0 = v.as_u64().unwrap();
            } else if p.ends_with("/state/entry-metadata") {
                e.1 = base64_decode(v.as_str().unwrap());
            }
        }
    }
    entries
        .into_iter()
        .map(|((ni, prefix), (group, meta))| {
            let metric = u32::from_be_bytes(meta[..4].try_into().unwrap()) as u64;
            let mut hs: Vec<(String, String, u64)> = groups
                .get(&(ni.clone(), group))
                .into_iter()
                .flatten()
                .map(|(index, weight)| {
                    let (ip, dev) = hops[&(ni.clone(), *index)].clone();
                    (ip, dev, *weight)
                })
                .collect();
            hs.sort();
            ((ni, prefix), (metric, meta[4], hs))
        })
        .collect()
}

/// The same FIB four ways: the mirror (`route-mirror show`), pygnmi's Subscribe ONCE
/// of every AFT, `route-mirror fleet` rebuilt from the JetStream stream (Debian's
/// nats-server on loopback), and nats-py's read of that stream rebuilt by the README's
/// rules; one daemon serving both, 10k routes plus multipath, blackhole, IPv6 and a
/// second table. Both NATS readers hold exactly the mirror's routes (metric, type,
/// next hops and weights); every gNMI entry says what the mirror's
/// route for that (table, prefix) says (its first: the one the kernel forwards with),
/// and every prefix has its entry.
#[test]
fn pygnmi_and_nats_read_the_same_fib() {
    let ns = Netns::new();
    ns.add_two_hop_route("10.0.0.0/8", [1, 3], &["metric", "7"]);
    ns.ip(&["route", "add", "blackhole", "192.0.2.0/24", "table", "100"]);
    ns.ip(&[
        "-6",
        "route",
        "add",
        "2001:db8:9::/48",
        "via",
        "2001:2:0:1::2",
        "metric",
        "5",
    ]);
    ns.load_batch(batch("v4-10k"));
    let dir = TempDir::new("rm-gnmi-nats").unwrap();
    let nats = NatsServer::start(dir.path(), free_port());
    let url = nats.url.clone();
    let Some((d, g)) = Gnmi::start_with(&ns, &["--nats-url", &url, "--nats-host", "r1"], &[])
    else {
        return;
    };
    d.diff_empty();
    let mirror = said_by_routes(
        d.cli_json(&["show", "--table", "all", "--json"])
            .as_array()
            .unwrap(),
    );
    assert!(mirror.len() > 9_000, "{} keys", mirror.len());

    let router = format!("r1/{}", ns.name());
    let consumer = poll(Duration::from_secs(30), || {
        let out = Command::new(daemon_bin())
            .args(["fleet", "--nats-url", &url, "dump"])
            .output()
            .ok()?;
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        let r = &v[router.as_str()];
        let routes = said_by_routes(r["routes"].as_array()?);
        (r["state"] == "current" && routes == mirror).then_some(routes)
    });
    assert!(
        consumer.is_some(),
        "the NATS consumer holds exactly the mirror's routes"
    );
    // nats-py, a client not written here: its messages rebuilt by the README's rules
    // hold the same routes.
    let by_nats_py = rebuild_from_stream(&stream_messages(&g.python, &url));
    assert!(
        by_nats_py.is_some_and(|r| said_by_routes(&r) == mirror),
        "nats-py's messages rebuild exactly the mirror's routes"
    );

    let gnmi = said_by_gnmi(&g.run(&["once", "/network-instances"]));
    assert_eq!(
        gnmi.keys().collect::<BTreeSet<_>>(),
        mirror.keys().collect::<BTreeSet<_>>(),
        "a gNMI entry for every (table, prefix) of the mirror"
    );
    let mut several = 0;
    for (k, said) in &gnmi {
        let routes = &mirror[k];
        several += usize::from(routes.len() > 1);
        // A key holding several routes (other metrics, IPv6 device routes of one
        // metric): the entry is the one the kernel forwards with, the first.
        assert_eq!(said, &routes[0], "{k:?}: gNMI says what the mirror says");
    }
    assert!(
        several > 0,
        "prefixes with several routes were compared too"
    );
    assert!(gnmi.contains_key(&("100".into(), "192.0.2.0/24".into())));
    assert_eq!(
        gnmi[&("main".to_string(), "10.0.0.0/8".to_string())]
            .2
            .len(),
        2,
        "multipath"
    );
}

/// STREAM ON_CHANGE: a route added then deleted in the namespace arrives as an update
/// and then a delete, each within 1 s; a subscription to a single entry sees that
/// entry only.
#[test]
fn stream_follows_changes_in_order() {
    let ns = Netns::new();
    let Some((_d, g)) = Gnmi::start(&ns, &[]) else {
        return;
    };
    let (mut all, rx) = g.spawn(&["stream", &format!("{NI}/ipv4-unicast"), "20"]);
    let one_path = format!("{NI}/ipv4-unicast/ipv4-entry[prefix=198.51.100.0/24]");
    let (mut one, rx1) = g.spawn(&["stream", &one_path, "20"]);
    wait_for(&rx, Duration::from_secs(10), |m| m["sync_response"] == true);
    wait_for(&rx1, Duration::from_secs(10), |m| {
        m["sync_response"] == true
    });

    let has = |m: &Value, what: &str, prefix: &str| {
        m["update"][what].as_array().into_iter().flatten().any(|u| {
            let p = u["path"].as_str().or_else(|| u.as_str()).unwrap_or("");
            p.contains(&format!("[prefix={prefix}]"))
        })
    };
    for prefix in ["203.0.113.0/24", "198.51.100.0/24"] {
        let t0 = now();
        ns.ip(&["route", "add", prefix, "via", "198.18.1.2"]);
        let m = wait_for(&rx, Duration::from_secs(5), |m| has(m, "update", prefix));
        let lag = m["t"].as_f64().unwrap() - t0;
        assert!(lag < 1.0, "add of {prefix} arrived after {lag:.3}s");
        let t1 = now();
        ns.ip(&["route", "del", prefix]);
        let m = wait_for(&rx, Duration::from_secs(5), |m| has(m, "delete", prefix));
        let lag = m["t"].as_f64().unwrap() - t1;
        assert!(lag < 1.0, "delete of {prefix} arrived after {lag:.3}s");
    }
    // The single-entry subscription saw its entry come and go, and nothing else.
    let _ = all.kill();
    std::thread::sleep(Duration::from_millis(300));
    let _ = one.kill();
    let seen: Vec<Value> = rx1.try_iter().collect();
    assert!(
        seen.iter().any(|m| has(m, "update", "198.51.100.0/24")),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|m| has(m, "delete", "198.51.100.0/24")),
        "{seen:?}"
    );
    assert!(
        !seen.iter().any(|m| has(m, "update", "203.0.113.0/24")),
        "filtered out: {seen:?}"
    );
    let _ = all.wait();
    let _ = one.wait();
}

/// A collector that stops reading while the table changes is not cut off and does not
/// slow the daemon: once it reads again it gets a delete of what it holds, a fresh
/// snapshot and a new sync_response.
#[test]
fn slow_subscriber_gets_a_fresh_snapshot() {
    let ns = Netns::new();
    // A 2-batch queue. The 100k-route load below overflows it whatever the client's
    // gRPC window absorbs (10k routes, about 4 MB, did not always: flaky under load).
    let Some((d, g)) = Gnmi::start(&ns, &[("ROUTE_MIRROR_GNMI_QUEUE_BATCHES", "2")]) else {
        return;
    };
    let (mut slow, rx) = g.spawn(&["slow", NI, "8", "90"]);
    wait_for(&rx, Duration::from_secs(10), |m| m["paused"].is_number());
    ns.load_batch(batch("v4-100k"));
    // The daemon kept up meanwhile.
    let out = d.cli(&["diff"]);
    assert!(
        out.status.success(),
        "diff while a subscriber stalls: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The bracket opens with a delete of the subscribed root (the afts container:
    // the empty path relative to the notification's prefix).
    let del = wait_for(&rx, Duration::from_secs(60), |m| {
        m["deletes"]
            .as_array()
            .is_some_and(|d| d.iter().any(|p| p == ""))
    });
    assert!(del["kind"] == "update", "{del}");
    wait_for(&rx, Duration::from_secs(60), |m| {
        m["kind"] == "sync_response"
    });
    let st = d.stats();
    assert!(
        st["gnmi"]["overflows"].as_u64() >= Some(1),
        "counted: {}",
        st["gnmi"]
    );
    let _ = slow.kill();
    let _ = slow.wait();
}

/// Makes a CA, a server certificate for 127.0.0.1 and a client certificate with openssl.
fn make_certs(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    for who in ["server", "client"] {
        run(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={who}"),
            "-keyout",
            &format!("{who}.key"),
            "-out",
            &format!("{who}.csr"),
        ]);
        run(&[
            "x509",
            "-req",
            "-in",
            &format!("{who}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            &format!("{who}.pem"),
        ]);
    }
}

/// TLS with client-certificate checks: pygnmi with the client certificate is served,
/// without one it is refused; plaintext on a non-loopback address is refused at start.
#[test]
fn tls_and_client_certificates() {
    let Some(python) = test_python() else { return };
    let dir = route_mirror_tests::TempDir::new("rm-gnmi-tls").unwrap();
    let d_ = dir.path();
    make_certs(d_);
    let p = |f: &str| d_.join(f).to_str().unwrap().to_string();
    let ns = Netns::new();
    let addr = format!("127.0.0.1:{}", free_port());
    let d = Daemon::start(
        &ns,
        &[
            "--gnmi-listen",
            &addr,
            "--gnmi-tls-cert",
            &p("server.pem"),
            "--gnmi-tls-key",
            &p("server.key"),
            "--gnmi-tls-client-ca",
            &p("ca.pem"),
        ],
    );
    d.wait_synced(Duration::from_secs(30));
    let g = Gnmi {
        python,
        addr,
        target: None,
    };
    let caps = |env: &[(&str, String)]| {
        let mut c = g.cmd(&["caps"]);
        c.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        c.output().expect("pygnmi")
    };
    let ok = caps(&[
        ("GNMI_TLS_ROOT", p("ca.pem")),
        ("GNMI_TLS_CERT", p("client.pem")),
        ("GNMI_TLS_KEY", p("client.key")),
    ]);
    assert!(
        ok.status.success(),
        "with a client certificate: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("openconfig-aft"));
    let refused = caps(&[("GNMI_TLS_ROOT", p("ca.pem")), ("GNMI_TIMEOUT", "3".into())]);
    assert!(
        !refused.status.success(),
        "no client certificate must be refused"
    );
    let plain = caps(&[("GNMI_TIMEOUT", "3".into())]);
    assert!(
        !plain.status.success(),
        "plaintext to a TLS server must fail"
    );

    // Plaintext anywhere but loopback: the daemon refuses to start.
    let bad = Daemon::start(&ns, &["--gnmi-listen", "0.0.0.0:1", "--gnmi-insecure"]);
    let status = route_mirror_tests::poll(Duration::from_secs(10), || bad.exited()).expect("exits");
    assert!(!status.success());
    assert!(
        bad.log_tail(20).contains("only on a loopback address"),
        "{}",
        bad.log_tail(20)
    );
}

/// `ip nexthop replace` re-routes every route using the object without a route message:
/// the AFT follows (a new next hop for the entry's group).
#[test]
fn nexthop_object_replace_reaches_subscribers() {
    nexthop_replace_reaches_subscribers(1);
}

/// The same with `nexthop_compat_mode` 0: the kernel sends no route message for the
/// routes using the object, only the nexthop's own.
#[test]
fn nexthop_object_replace_without_route_messages_reaches_subscribers() {
    nexthop_replace_reaches_subscribers(0);
}

fn nexthop_replace_reaches_subscribers(compat_mode: u8) {
    let ns = Netns::new();
    ns.exec(&[
        "sysctl",
        "-qw",
        &format!("net.ipv4.nexthop_compat_mode={compat_mode}"),
    ]);
    ns.ip(&[
        "nexthop",
        "add",
        "id",
        "10",
        "via",
        "198.18.1.2",
        "dev",
        "veth1",
    ]);
    ns.ip(&["route", "add", "192.0.2.0/24", "nhid", "10"]);
    let Some((_d, g)) = Gnmi::start(&ns, &[]) else {
        return;
    };
    let (mut sub, rx) = g.spawn(&["stream", NI, "20"]);
    let first = wait_for(&rx, Duration::from_secs(10), |m| m["sync_response"] == true);
    assert!(leaves(&[first]).values().any(|v| v == "198.18.1.2"));
    ns.ip(&[
        "nexthop",
        "replace",
        "id",
        "10",
        "via",
        "198.18.2.2",
        "dev",
        "veth2",
    ]);
    let m = wait_for(&rx, Duration::from_secs(5), |m| {
        leaves(std::slice::from_ref(m))
            .iter()
            .any(|(p, v)| p.ends_with("/state/ip-address") && v == "198.18.2.2")
    });
    assert!(m["update"].is_object());
    let _ = sub.kill();
    let _ = sub.wait();
}

/// POLL answers each Poll with the state at that moment; SAMPLE resends an entry every
/// interval whether it changed or not.
#[test]
fn poll_and_sample() {
    use std::io::Write;
    let ns = Netns::new();
    ns.ip(&["route", "add", "203.0.113.0/24", "via", "198.18.1.2"]);
    let Some((_d, g)) = Gnmi::start(&ns, &[]) else {
        return;
    };
    let entry = format!("{NI}/ipv4-unicast/ipv4-entry[prefix=203.0.113.0/24]");
    let mut poll = g
        .cmd(&["poll", &format!("{NI}/ipv4-unicast")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = poll.stdin.take().unwrap();
    let mut lines = BufReader::new(poll.stdout.take().unwrap()).lines();
    let mut next_poll = || -> Value {
        lines
            .by_ref()
            .map_while(Result::ok)
            .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
            .find(|v| v["poll"].is_object())
            .expect("a poll answer")
    };
    writeln!(stdin, "poll").unwrap();
    stdin.flush().unwrap();
    let mut polls = vec![next_poll()];
    ns.ip(&["route", "add", "198.51.100.0/24", "via", "198.18.1.2"]);
    // The AFT follows the mirror a few ms behind: Poll once a Get (the same AFT) has it,
    // else under load the Poll may answer before the change arrived (seen in CI-like runs).
    let added = format!("{NI}/ipv4-unicast/ipv4-entry[prefix=198.51.100.0/24]");
    route_mirror_tests::poll(Duration::from_secs(5), || {
        (!leaves(&g.run(&["get", &added])).is_empty()).then_some(())
    })
    .expect("the AFT has the new route");
    // pygnmi sends a Poll and then reads one answer: the first it read was the state
    // the SubscriptionList itself returns (as openconfig/gnmi's reference server
    // does), so the answer to a Poll sent after the change is the third.
    for _ in 0..2 {
        writeln!(stdin, "poll").unwrap();
        stdin.flush().unwrap();
        polls.push(next_poll());
    }
    drop(stdin);
    let _ = poll.wait();
    let has = |v: &Value, p: &str| v.to_string().contains(&format!("[prefix={p}]"));
    assert!(has(&polls[0], "203.0.113.0/24") && !has(&polls[0], "198.51.100.0/24"));
    let counts: Vec<usize> = polls
        .iter()
        .map(|p| p.to_string().matches("/state/prefix").count())
        .collect();
    assert!(
        has(&polls[2], "198.51.100.0/24"),
        "a poll sent after the change sees the new route (entries per poll: {counts:?})"
    );

    let samples = g.run(&["sample", &entry, "300", "2"]);
    let resent = samples
        .iter()
        .filter(|m| m["update"]["update"].is_array() && has(m, "203.0.113.0/24"))
        .count();
    assert!(
        resent >= 3,
        "an unchanged entry resent every 300 ms for 2 s: {resent}"
    );
}

/// SAMPLE reports a deleted entry: a gNMI delete in the first or second sample after
/// the route went, with suppress_redundant (only what changed is sampled) and without
/// it (every sample resends every entry, and a deletion is no entry: it must be said);
/// the entry is not sampled again after its delete.
#[test]
fn sample_reports_deletes() {
    let ns = Netns::new();
    let steady = "192.0.2.0/24";
    ns.ip(&["route", "add", steady, "via", "198.18.1.2"]);
    let Some((_d, g)) = Gnmi::start(&ns, &[]) else {
        return;
    };
    let has = |m: &Value, what: &str, prefix: &str| {
        m["update"][what].as_array().into_iter().flatten().any(|u| {
            let p = u["path"].as_str().or_else(|| u.as_str()).unwrap_or("");
            p.contains(&format!("[prefix={prefix}]"))
        })
    };
    let path = format!("{NI}/ipv4-unicast");
    for (suppress, prefix) in [(false, "203.0.113.0/24"), (true, "198.51.100.0/24")] {
        let mut args = vec!["sample", path.as_str(), "300", "30"];
        if suppress {
            args.push("suppress");
        }
        let (mut sub, rx) = g.spawn(&args);
        wait_for(&rx, Duration::from_secs(10), |m| m["sync_response"] == true);
        ns.ip(&["route", "add", prefix, "via", "198.18.2.2"]);
        wait_for(&rx, Duration::from_secs(5), |m| has(m, "update", prefix));
        // Whatever was in flight arrives: the next message with the entry is a later
        // sample's (or its delete).
        ns.ip(&["route", "del", prefix]);
        let after = collect_until(&rx, Duration::from_secs(5), |m| has(m, "delete", prefix));
        if !suppress {
            // Each full sample resends the steady entry once (an object's leaves are in
            // one notification): how many samples went by before the delete.
            let samples = after.iter().filter(|m| has(m, "update", steady)).count();
            assert!(
                samples <= 2,
                "the delete came {samples} samples after the route went"
            );
        }
        // Three more samples' time, then everything that arrived.
        std::thread::sleep(Duration::from_secs(1));
        let _ = sub.kill();
        let _ = sub.wait();
        let later: Vec<Value> = rx.try_iter().collect();
        if !suppress {
            assert!(
                later.iter().any(|m| has(m, "update", steady)),
                "sampling went on"
            );
        }
        let again: Vec<&Value> = later.iter().filter(|m| has(m, "update", prefix)).collect();
        assert!(again.is_empty(), "sampled after its delete: {again:?}");
    }
}

/// A renamed link keeps its next hops (same indices, groups and entries) and their
/// interface-ref shows the new name within 1 s; a removed link's entries and next hops
/// are deleted within 1 s. Routes over the links in both families.
#[test]
fn link_rename_and_removal_reach_subscribers() {
    let ns = Netns::new();
    ns.ip(&["route", "add", "192.0.2.0/24", "via", "198.18.1.2"]);
    ns.ip(&[
        "-6",
        "route",
        "add",
        "2001:db8:5::/48",
        "via",
        "2001:2:0:1::2",
    ]);
    ns.ip(&["route", "add", "203.0.113.0/24", "via", "198.18.2.2"]);
    ns.ip(&[
        "-6",
        "route",
        "add",
        "2001:db8:6::/48",
        "via",
        "2001:2:0:2::2",
    ]);
    let Some((d, g)) = Gnmi::start(&ns, &[]) else {
        return;
    };
    let (mut sub, rx) = g.spawn(&["stream", NI, "30"]);
    let snapshot = collect_until(&rx, Duration::from_secs(10), |m| m["sync_response"] == true);
    let hops = hop_interfaces(&snapshot);
    let via = |dev: &str| -> Vec<u64> {
        hops.iter()
            .filter(|(_, i)| *i == dev)
            .map(|(x, _)| *x)
            .collect()
    };
    let (veth1, veth2) = (via("veth1"), via("veth2"));
    assert!(veth1.len() >= 3 && veth2.len() >= 3, "{hops:?}");

    // Rename while up (6.18 allows it; the routes stay).
    let t0 = now();
    ns.ip(&["link", "set", "veth1", "name", "wan0"]);
    let mut renamed = BTreeMap::new();
    let mut regrouped = Vec::new();
    while renamed.len() < veth1.len() {
        let m = wait_for(&rx, Duration::from_secs(5), |m| m["update"].is_object());
        for (p, v) in streamed(&m, "update") {
            if p.ends_with("/state/next-hop-group") {
                regrouped.push(p.clone());
            }
            if let Some(rest) = p.split("next-hops/next-hop[index=").nth(1) {
                if p.ends_with("/interface-ref/state/interface") {
                    let index: u64 = rest.split(']').next().unwrap().parse().unwrap();
                    renamed.insert(index, (v, m["t"].as_f64().unwrap() - t0));
                }
            }
        }
    }
    let names: Vec<u64> = renamed.keys().copied().collect();
    assert_eq!(names, veth1, "the same next hops, renamed: {renamed:?}");
    for (index, (name, lag)) in &renamed {
        assert_eq!(name, "wan0", "next hop {index}");
        assert!(*lag < 1.0, "next hop {index} renamed after {lag:.3}s");
    }
    assert!(
        regrouped.is_empty(),
        "entries keep their groups: {regrouped:?}"
    );
    let route = d.lookup("192.0.2.1", None).unwrap();
    assert_eq!(route["nexthops"][0]["dev"], "wan0");
    let got = leaves(&g.run(&[
        "get",
        &format!("{NI}/next-hops/next-hop[index={}]", veth1[0]),
    ]));
    assert!(got.values().any(|v| v == "wan0"), "Get agrees: {got:?}");

    // Removal: its routes (IPv4 flushed silently by the kernel, IPv6 deleted) and the
    // next hops through it go.
    let t1 = now();
    ns.ip(&["link", "del", "veth2"]);
    let mut gone_hops = Vec::new();
    let mut gone_entries = Vec::new();
    while gone_hops.len() < veth2.len() || gone_entries.len() < 2 {
        let m = wait_for(&rx, Duration::from_secs(5), |m| m["update"].is_object());
        let lag = m["t"].as_f64().unwrap() - t1;
        for (p, _) in streamed(&m, "delete") {
            // The next hop itself (its interface leaf may be deleted first, when the
            // link's removal and its routes' land in different batches).
            let whole = p.split("next-hops/next-hop[index=").nth(1);
            if let Some(rest) = whole.filter(|r| r.ends_with(']')) {
                gone_hops.push(rest.trim_end_matches(']').parse::<u64>().unwrap());
            }
            for prefix in ["203.0.113.0/24", "2001:db8:6::/48"] {
                if p.contains(&format!("[prefix={prefix}]")) {
                    gone_entries.push(prefix);
                }
            }
            assert!(lag < 1.0, "{p} deleted after {lag:.3}s");
        }
    }
    gone_hops.sort_unstable();
    assert_eq!(gone_hops, veth2);
    let _ = sub.kill();
    let _ = sub.wait();
    d.diff_empty();
}

/// The entry prefixes in pygnmi's notifications.
fn entry_prefixes(msgs: &[Value]) -> BTreeSet<String> {
    leaves(msgs)
        .keys()
        .filter_map(|p| p.split("-entry[prefix=").nth(1))
        .map(|r| r.split(']').next().unwrap().to_string())
        .collect()
}

/// One daemon mirroring two namespaces: the gNMI target selects one (Get, Subscribe
/// ONCE and STREAM see only its routes, and its entries are exactly its mirror's main
/// table), no target reads both, an unknown target is an error.
#[test]
fn the_target_selects_the_namespace() {
    let (a, b) = (Netns::new(), Netns::new());
    a.ip(&["route", "add", "203.0.113.0/24", "via", "198.18.1.2"]);
    b.ip(&["route", "add", "198.51.100.0/24", "via", "198.18.2.2"]);
    let Some(python) = test_python() else { return };
    let addr = format!("127.0.0.1:{}", free_port());
    // Several namespaces: no --socket (each gets /run/route-mirror/NAME.sock).
    let log = TempDir::new("rm-gnmi-multi").unwrap();
    let logf = std::fs::File::create(log.path().join("daemon.log")).unwrap();
    let _d = Running(
        Command::new(daemon_bin())
            .args(["--config", "/dev/null", "run", "--gnmi-listen", &addr])
            .args(["--gnmi-insecure", "--netns", a.name(), "--netns", b.name()])
            .stderr(logf)
            .spawn()
            .unwrap(),
    );
    let cli = |ns: &Netns, args: &[&str]| -> Option<Value> {
        let out = Command::new(daemon_bin())
            .args(["--netns", ns.name()])
            .args(args)
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    };
    for ns in [&a, &b] {
        let synced = poll(Duration::from_secs(20), || {
            let v = cli(ns, &["stats", "--json"])?;
            (v["synced"] == true).then_some(())
        });
        let daemon_log = std::fs::read_to_string(log.path().join("daemon.log")).unwrap_or_default();
        assert!(synced.is_some(), "{} not synced: {daemon_log}", ns.name());
    }
    let g = Gnmi {
        python,
        addr,
        target: None,
    };
    let (ga, gb) = (g.target(a.name()), g.target(b.name()));
    let once = |g: &Gnmi| entry_prefixes(&g.run(&["once", NI]));
    let (in_a, in_b, all) = (once(&ga), once(&gb), once(&g));
    let main_of_a: BTreeSet<String> = cli(&a, &["show", "--table", "main", "--json"])
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["prefix"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        in_a,
        main_of_a,
        "target {} = its mirror's main table",
        a.name()
    );
    assert!(
        in_b.contains("198.51.100.0/24") && !in_b.contains("203.0.113.0/24"),
        "{in_b:?}"
    );
    assert!(
        all.is_superset(&in_a) && all.is_superset(&in_b),
        "no target: both"
    );
    let entry = |p: &str| format!("{NI}/ipv4-unicast/ipv4-entry[prefix={p}]");
    assert!(!leaves(&gb.run(&["get", &entry("198.51.100.0/24")])).is_empty());
    let other = ga.run(&["get", &entry("198.51.100.0/24")]);
    assert!(leaves(&other).is_empty(), "not in {}: {other:?}", a.name());
    let bad = g
        .target("no-such-netns")
        .run(&["get", &entry("198.51.100.0/24")]);
    assert!(bad[0]["error"].is_string(), "{bad:?}");

    // A change in b reaches b's subscribers, not a's.
    let (mut sa, rxa) = ga.spawn(&["stream", NI, "10"]);
    let (mut sb, rxb) = gb.spawn(&["stream", NI, "10"]);
    for rx in [&rxa, &rxb] {
        wait_for(rx, Duration::from_secs(10), |m| m["sync_response"] == true);
    }
    b.ip(&["route", "add", "192.0.2.0/24", "via", "198.18.2.2"]);
    let m = wait_for(&rxb, Duration::from_secs(5), |m| {
        entry_prefixes(std::slice::from_ref(m)).contains("192.0.2.0/24")
    });
    assert!(m["update"].is_object());
    a.ip(&["route", "add", "192.0.2.128/25", "via", "198.18.1.2"]);
    wait_for(&rxa, Duration::from_secs(5), |m| {
        entry_prefixes(std::slice::from_ref(m)).contains("192.0.2.128/25")
    });
    while let Ok(m) = rxa.try_recv() {
        assert!(
            !entry_prefixes(&[m]).contains("192.0.2.0/24"),
            "b's route streamed to {}",
            a.name()
        );
    }
    for s in [&mut sa, &mut sb] {
        let _ = s.kill();
        let _ = s.wait();
    }
}

/// A daemon this test started itself (several namespaces): stopped on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(3);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A mirror resync (events lost: ENOBUFS on a 4 KiB queue while the daemon is stopped)
/// reaches a STREAM subscriber as a bracket: a delete of its subscribed root, a fresh
/// snapshot, a second `sync_response`; that snapshot is exactly the mirror's table.
#[test]
fn a_resync_is_bracketed_for_subscribers() {
    let ns = Netns::new();
    let extra = ["--rcvbuf", "4096", "--source", "netlink"];
    let Some((d, g)) = Gnmi::start_with(&ns, &extra, &[]) else {
        return;
    };
    let (mut sub, rx) = g.spawn(&["stream", NI, "60"]);
    wait_for(&rx, Duration::from_secs(10), |m| m["sync_response"] == true);
    d.pause();
    ns.load_batch(batch("v4-10k"));
    d.resume();
    d.diff_empty();
    let st = d.stats();
    assert!(st["enobufs"].as_u64() >= Some(1), "no overrun: {st}");
    // Up to the bracket's delete of the root (the empty path under the prefix)...
    let is_root_delete = |m: &Value| {
        m["update"]["delete"].as_array().is_some_and(|d| {
            d.iter()
                .any(|p| p["path"].as_str().unwrap_or("").is_empty())
        })
    };
    collect_until(&rx, Duration::from_secs(60), is_root_delete);
    // ...then the fresh snapshot up to its sync_response.
    let fresh = collect_until(&rx, Duration::from_secs(60), |m| m["sync_response"] == true);
    let main: BTreeSet<String> = d
        .cli_json(&["show", "--table", "main", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["prefix"].as_str().unwrap().to_string())
        .collect();
    assert!(main.len() > 5_000, "{}", main.len());
    assert_eq!(
        entry_prefixes(&fresh),
        main,
        "the fresh snapshot is the mirror"
    );
    let st = d.stats();
    assert!(
        st["gnmi"]["resyncs"].as_u64() > st["gnmi"]["overflows"].as_u64(),
        "a mirror resync, not only a slow subscriber: {}",
        st["gnmi"]
    );
    let _ = sub.kill();
    let _ = sub.wait();
}

/// A collector's copy from pygnmi's parsed stream: updates set leaves, deletes remove
/// the path and everything below it, in the order they arrived.
fn replay(msgs: &[Value]) -> BTreeMap<String, Value> {
    let mut model = BTreeMap::new();
    for m in msgs {
        if !m["update"].is_object() {
            continue;
        }
        let prefix = m["update"]["prefix"].as_str().unwrap_or("");
        for d in m["update"]["delete"].as_array().into_iter().flatten() {
            let p = d.as_str().or_else(|| d["path"].as_str()).unwrap_or("");
            let full = if p.is_empty() {
                prefix.to_string()
            } else {
                format!("{prefix}/{p}")
            };
            let below = format!("{full}/");
            let gone: Vec<String> = model
                .range(full.clone()..)
                .map(|(k, _)| k)
                .take_while(|k: &&String| k.starts_with(&full))
                .filter(|k| **k == full || k.starts_with(&below))
                .cloned()
                .collect();
            for k in gone {
                model.remove(&k);
            }
        }
        for (p, v) in streamed(m, "update") {
            model.insert(p, v);
        }
    }
    model
}

/// A STREAM subscriber that takes its snapshot of 20,000 routes while they churn ends,
/// once the churn stops, with exactly the AFT a fresh ONCE reads and the kernel's
/// prefixes:
/// changes made during the sliced snapshot are neither lost nor applied out of order.
#[test]
fn a_snapshot_taken_under_churn_ends_exact() {
    let ns = Netns::new();
    let dir = TempDir::new("gnmi-churn").unwrap();
    let load = dir.path().join("load.batch");
    let mut text = String::new();
    for i in 0..20_000u32 {
        let via = if i % 2 == 0 {
            "198.18.1.2"
        } else {
            "198.18.2.2"
        };
        text += &format!(
            "route add 10.{}.{}.0/24 via {via}\n",
            100 + i / 256,
            i % 256
        );
    }
    std::fs::write(&load, text).unwrap();
    ns.load_batch(&load);
    let Some((d, g)) = Gnmi::start(&ns, &[]) else {
        return;
    };
    // Churn across the whole key space (both next hops, deletes, re-adds, metrics)
    // from before the subscription until well after its sync_response.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let (name, stop, dir) = (
            ns.name().to_string(),
            stop.clone(),
            dir.path().to_path_buf(),
        );
        std::thread::spawn(move || {
            let mut round = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                round += 1;
                let mut text = String::new();
                for k in 0..200u32 {
                    let i = (round * 7919 + k * 1031) % 20_000;
                    let p = format!("10.{}.{}.0/24", 100 + i / 256, i % 256);
                    text += &match (round + k) % 4 {
                        0 => format!("route del {p}\n"),
                        1 => format!("route replace {p} via 198.18.2.2\n"),
                        2 => format!("route replace {p} via 198.18.1.2\n"),
                        _ => format!("route replace {p} via 198.18.1.2 metric 0 proto static\n"),
                    };
                }
                let f = dir.join("churn.batch");
                std::fs::write(&f, text).unwrap();
                // `-force`: a delete of an already deleted prefix is no reason to stop.
                let _ = Command::new("ip")
                    .args(["-n", &name, "-force", "-batch"])
                    .arg(&f)
                    .stderr(Stdio::null())
                    .status();
            }
            round
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let (mut sub, rx) = g.spawn(&["stream", NI, "120"]);
    let mut msgs = collect_until(&rx, Duration::from_secs(90), |m| m["sync_response"] == true);
    let at_sync = msgs.len();
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = churn.join().unwrap();
    // Quiet: the mirror caught up, and the stream has nothing more to say.
    d.diff_empty();
    while let Ok(m) = rx.recv_timeout(Duration::from_secs(3)) {
        msgs.push(m);
    }
    let _ = sub.kill();
    let _ = sub.wait();
    assert!(
        rounds >= 5,
        "the routes churned throughout ({rounds} rounds)"
    );
    assert!(msgs.len() > at_sync, "changes streamed after the sync");

    let model = replay(&msgs);
    // A fresh ONCE (a Get of it all would exceed the client's 4 MB message limit).
    let got = leaves(&g.run(&["once", NI]));
    assert!(got.len() > 20_000, "{}", got.len());
    let differ: Vec<_> = got
        .iter()
        .filter(|(k, v)| model.get(*k) != Some(v))
        .map(|(k, v)| format!("{k}: {v} (streamed {:?})", model.get(k)))
        .chain(
            model
                .keys()
                .filter(|k| !got.contains_key(*k))
                .map(|k| format!("{k}: only streamed")),
        )
        .take(10)
        .collect();
    assert!(
        differ.is_empty(),
        "the subscriber's copy differs from Get: {differ:?}"
    );
    // And from the kernel: the same IPv4 prefixes in main.
    let kernel: BTreeSet<String> = ns
        .ip(&["-4", "route", "show", "table", "main"])
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(|p| {
            if p.contains('/') {
                p.to_string()
            } else {
                format!("{p}/32")
            }
        })
        .filter(|p| p != "default")
        .collect();
    let streamed: BTreeSet<String> = model
        .keys()
        .filter_map(|k| {
            k.split("ipv4-entry[prefix=")
                .nth(1)
                .map(|r| r.split(']').next().unwrap().to_string())
        })
        .collect();
    assert_eq!(streamed, kernel);
}

/// The AFT follows the kernel's next-hop liveness. With `ignore_routes_with_linkdown`
/// on a device whose veth peer (in another namespace) goes down, the kernel stops
/// using its hops: the entry of a prefix with a fallback route moves to that route
/// (its metric in `entry-metadata`), a multipath entry's group loses the dead hop, a
/// single-path route without fallback leaves the AFT; with the carrier back all is as
/// before. A subscriber sees each move within a second.
#[test]
fn the_aft_follows_carrier_loss() {
    let ns = Netns::new();
    let far = Netns::new();
    ns.ip(&[
        "link",
        "add",
        "vethc",
        "type",
        "veth",
        "peer",
        "name",
        "vethcp",
        "netns",
        far.name(),
    ]);
    far.ip(&["link", "set", "vethcp", "up"]);
    ns.ip(&["link", "set", "vethc", "up"]);
    ns.ip(&["addr", "add", "198.18.9.1/24", "dev", "vethc"]);
    ns.exec(&[
        "sysctl",
        "-qw",
        "net.ipv4.conf.vethc.ignore_routes_with_linkdown=1",
    ]);
    for cmd in [
        "route add 10.60.0.0/16 via 198.18.9.2",
        "route add 10.60.0.0/16 via 198.18.1.2 metric 10",
        "route add 10.61.0.0/16 nexthop via 198.18.9.2 nexthop via 198.18.1.2",
        "route add 10.62.0.0/16 via 198.18.9.2",
    ] {
        ns.ip(&cmd.split(' ').collect::<Vec<_>>());
    }
    let Some((d, g)) = Gnmi::start(&ns, &[]) else {
        return;
    };
    // Prefix → (metric, gateways of its group), from a Get.
    let forwarding = || -> BTreeMap<String, (u32, BTreeSet<String>)> {
        let l = leaves(&g.run(&["get", NI]));
        let find = |suffix: &str| -> Vec<(String, Value)> {
            l.iter()
                .filter(|(k, _)| k.ends_with(suffix))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        let key = |k: &str, list: &str| -> String {
            k.split(&format!("{list}["))
                .nth(1)
                .unwrap()
                .split(']')
                .next()
                .unwrap()
                .split('=')
                .nth(1)
                .unwrap()
                .to_string()
        };
        let ip: BTreeMap<String, String> = find("/state/ip-address")
            .into_iter()
            .map(|(k, v)| (key(&k, "next-hop"), v.as_str().unwrap().to_string()))
            .collect();
        let mut groups: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (k, _) in find("/state/weight") {
            let group = key(&k, "next-hop-group");
            let hop = k
                .rsplit("next-hop[index=")
                .next()
                .unwrap()
                .split(']')
                .next()
                .unwrap();
            // A connected route's hop has an interface and no address.
            let gw = ip.get(hop).cloned().unwrap_or_default();
            groups.entry(group).or_default().insert(gw);
        }
        let mut out = BTreeMap::new();
        for (k, v) in find("/state/next-hop-group") {
            if !k.contains("/ipv4-entry[") {
                continue;
            }
            let prefix = key(&k, "ipv4-entry");
            if !prefix.starts_with("10.6") {
                continue;
            }
            let meta = l[&k.replace("/next-hop-group", "/entry-metadata")]
                .as_str()
                .unwrap()
                .to_string();
            let bytes = base64_decode(&meta);
            let metric = u32::from_be_bytes(bytes[..4].try_into().unwrap());
            let gws = groups
                .get(v.to_string().trim_matches('"'))
                .cloned()
                .unwrap_or_default();
            out.insert(prefix, (metric, gws));
        }
        out
    };
    let set = |gws: &[&str]| gws.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    let before = BTreeMap::from([
        ("10.60.0.0/16".to_string(), (0, set(&["198.18.9.2"]))),
        (
            "10.61.0.0/16".to_string(),
            (0, set(&["198.18.9.2", "198.18.1.2"])),
        ),
        ("10.62.0.0/16".to_string(), (0, set(&["198.18.9.2"]))),
    ]);
    assert_eq!(forwarding(), before);

    let (mut sub, rx) = g.spawn(&["stream", &format!("{NI}/ipv4-unicast"), "60"]);
    wait_for(&rx, Duration::from_secs(10), |m| m["sync_response"] == true);
    let t0 = now();
    far.ip(&["link", "set", "vethcp", "down"]);
    let gone = wait_for(&rx, Duration::from_secs(5), |m| {
        streamed(m, "delete")
            .iter()
            .any(|(p, _)| p.contains("[prefix=10.62.0.0/16]"))
    });
    let lag = gone["t"].as_f64().unwrap() - t0;
    assert!(lag < 1.0, "10.62.0.0/16 left the AFT after {lag:.3}s");
    let after = BTreeMap::from([
        ("10.60.0.0/16".to_string(), (10, set(&["198.18.1.2"]))),
        ("10.61.0.0/16".to_string(), (0, set(&["198.18.1.2"]))),
    ]);
    let ok = poll(Duration::from_secs(5), || {
        (forwarding() == after).then_some(())
    });
    assert!(ok.is_some(), "carrier lost: {:?}", forwarding());
    // The mirror's own lookup agrees on the fallback.
    assert_eq!(
        d.lookup("10.60.0.1", None).unwrap()["metric"].as_u64(),
        Some(10)
    );

    far.ip(&["link", "set", "vethcp", "up"]);
    let ok = poll(Duration::from_secs(5), || {
        (forwarding() == before).then_some(())
    });
    assert!(ok.is_some(), "carrier back: {:?}", forwarding());
    let _ = sub.kill();
    let _ = sub.wait();
    d.diff_empty();
}

fn base64_decode(s: &str) -> Vec<u8> {
    const A: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.chars().filter(|c| *c != '=') {
        acc = (acc << 6) | A.find(c).expect("base64") as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}
