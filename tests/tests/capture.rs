//! Regenerates the fuzzing seed corpora in fuzz/corpus/ from real kernel messages:
//! `cargo test -p route-mirror-tests --test capture -- --ignored` (root; commits
//! nothing itself: review and commit the files).

use std::process::Command;
use std::time::Duration;

use route_mirror_tests::{batch, daemon_bin, workspace_root, Netns};

/// Routes and objects with shapes the bulk sets do not have.
const EXTRA: &[&str] = &[
    "nexthop add id 1 via 198.18.1.2 dev veth1",
    "nexthop add id 2 via 198.18.2.2 dev veth2",
    "nexthop add id 3 group 1/2",
    "nexthop add id 4 group 1,3/2,5",
    "nexthop add id 5 blackhole",
    "nexthop add id 6 via 2001:2:0:1::2 dev veth1",
    "nexthop add id 7 group 1/2 type resilient buckets 8",
    "route add 203.0.113.0/24 nhid 3",
    "route add 203.0.114.0/24 nhid 5 table 200",
    "route add 203.0.115.0/24 nhid 2 table 300",
    "route add 2001:db8:6::/48 nhid 6",
    "route add 192.0.2.0/24 nexthop via 198.18.1.2 weight 1 nexthop via 198.18.2.2 weight 3",
    "route add 192.0.3.0/24 via 198.18.1.2 metric 50 mtu 1400 advmss 1360 table 100",
    "route add 192.0.4.0/24 via 198.18.2.2 table 1000 proto 186",
    "route add unreachable 192.0.5.0/24 table 1000",
    "route add prohibit 192.0.6.0/24",
    "route add throw 192.0.7.0/24 table 100",
    "route add 192.0.8.0/24 via 198.18.1.2 src 198.18.1.1 tos 0x10",
    "route add 2001:db8:1::/48 via 2001:2:0:1::2",
    "route add 2001:db8:2::/48 nexthop via 2001:2:0:1::2 nexthop via 2001:2:0:2::2",
    "route add 2001:db8:3::/48 via 2001:2:0:2::2 expires 600 metric 7 table 100",
    "route add blackhole 2001:db8:4::/48 table 4000",
    "route add unreachable 2001:db8:5::/48",
    "addr add 198.18.9.1/24 dev veth2 label veth2:9",
    "addr add 2001:2:0:9::1/64 dev veth2 nodad valid_lft 900 preferred_lft 600",
];

/// Changes made while the capture listens: deletions, replaces, flaps.
const CHURN: &[&str] = &[
    "route replace 203.0.113.0/24 via 198.18.2.2",
    "route del 192.0.2.0/24",
    "route del 2001:db8:2::/48",
    "route flush table 100",
    "nexthop replace id 1 via 198.18.2.2 dev veth2",
    "nexthop del id 4",
    "nexthop del id 7",
    "addr del 198.18.9.1/24 dev veth2",
    "addr del 2001:2:0:9::1/64 dev veth2",
    "link set veth1 down",
    "link set veth1 up",
    "link set veth2 mtu 1400",
    "link add vethx type veth peer name vethxp",
    "link del vethx",
];

#[test]
#[ignore = "regenerates fuzz/corpus; run by hand as root"]
fn capture_fuzz_seeds() {
    let ns = Netns::new();
    ns.load_batch(batch("v4-10k"));
    for l in EXTRA {
        ns.ip(&l.split_whitespace().collect::<Vec<_>>());
    }
    let out = workspace_root().join("fuzz/corpus");
    let mut cap = Command::new(daemon_bin())
        .args(["debug", "capture", "--netns", ns.name(), "--listen", "4"])
        .arg(&out)
        .spawn()
        .expect("spawn capture");
    std::thread::sleep(Duration::from_millis(2500));
    for l in CHURN {
        ns.ip(&l.split_whitespace().collect::<Vec<_>>());
    }
    let st = cap.wait().unwrap();
    assert!(st.success(), "capture failed: {st}");
    for t in [
        "route_msg",
        "link_msg",
        "addr_msg",
        "nexthop_msg",
        "netlink_datagram",
    ] {
        let n = std::fs::read_dir(out.join(t)).map_or(0, |d| d.count());
        assert!(n > 0, "no seeds for {t}");
        eprintln!("{t}: {n} seeds");
    }
}
