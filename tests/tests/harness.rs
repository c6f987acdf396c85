//! Self-tests of the harness itself (no daemon needed): namespace topology,
//! batch loading, cleanup. Need root, like the mirror tests.

use route_mirror_tests::{batch, Netns};
use serde_json::Value;

fn ns_exists(name: &str) -> bool {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

#[test]
fn netns_topology_matches_netns_sh() {
    let ns = Netns::new();
    assert!(ns.name().starts_with("rmtest-"), "{}", ns.name());
    assert!(ns_exists(ns.name()));

    let links: Value = serde_json::from_str(&ns.ip(&["-j", "link", "show"])).unwrap();
    let names: Vec<&str> = links
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["ifname"].as_str())
        .collect();
    for want in ["lo", "veth1", "veth1p", "veth2", "veth2p"] {
        assert!(names.contains(&want), "link {want} missing: {names:?}");
    }
    for l in links.as_array().unwrap() {
        let flags: Vec<&str> = l["flags"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(flags.contains(&"UP"), "{} not up: {flags:?}", l["ifname"]);
    }

    let addrs = ns.ip(&["addr", "show"]);
    for want in [
        "198.18.1.1/24",
        "198.18.2.1/24",
        "2001:2:0:1::1/64",
        "2001:2:0:2::1/64",
    ] {
        assert!(addrs.contains(want), "address {want} missing:\n{addrs}");
    }
    for l in addrs.lines().filter(|l| l.contains("2001:2:0:")) {
        assert!(
            l.contains("nodad") && !l.contains("tentative"),
            "nodad not applied: {l}"
        );
    }

    let keep = ns.exec(&["sysctl", "-n", "net.ipv6.conf.all.keep_addr_on_down"]);
    assert_eq!(keep.trim(), "1");

    // on-link gateways are usable
    ns.ip(&["route", "add", "203.0.113.0/24", "via", "198.18.1.2"]);
    ns.ip(&["route", "add", "2001:db8:1::/48", "via", "2001:2:0:2::2"]);
    let r = ns.ip(&["route", "get", "203.0.113.7"]);
    assert!(r.contains("dev veth1"), "{r}");

    // errors carry the command's stderr
    let err = ns
        .try_ip(&["route", "add", "203.0.113.0/24", "via", "198.18.1.2"])
        .unwrap_err();
    assert!(format!("{err:#}").contains("File exists"), "{err:#}");
}

#[test]
fn netns_is_deleted_on_drop_and_names_are_unique() {
    let a = Netns::new();
    let b = Netns::new();
    assert_ne!(a.name(), b.name());
    let name = a.name().to_string();
    drop(a);
    assert!(!ns_exists(&name), "{name} still exists after drop");
    assert!(ns_exists(b.name()));
}

#[test]
fn load_batch_v4_10k() {
    let ns = Netns::new();
    let before = ns.kernel_route_count(4);
    ns.load_batch(batch("v4-10k"));
    let n: usize = ns
        .ip(&["-4", "route", "show", "table", "all"])
        .lines()
        .filter(|l| !l.starts_with(char::is_whitespace))
        .count();
    // 10000 routes, minus nothing: every line of the batch adds one route.
    assert!(n >= before + 10_000, "only {n} IPv4 routes after loading");
    assert!(ns.kernel_route_count(4) >= 10_000);
    // a broken batch fails loudly
    let dir = std::env::temp_dir().join(format!("rm-harness-bad-{}", std::process::id()));
    std::fs::write(&dir, "route add 999.0.0.0/8 via 198.18.1.2\n").unwrap();
    let res = ns.try_load_batch(&dir);
    std::fs::remove_file(&dir).unwrap();
    assert!(res.is_err());
}
