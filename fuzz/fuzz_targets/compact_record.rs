//! The eBPF source's compact route records, differentially: the input is a route
//! message as the kernel sends it (seeds: captured messages, header included). Whatever
//! the socket filter's compactor (the same code, run here) turns into a compact record
//! must decode to exactly the change the netlink decoder reads from the raw message; and
//! the input read as a compact record body must decode without a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use route_mirror::ebpf::record::{compact_like_the_filter, decode_compact};
use route_mirror::mirror::Mirror;
use route_mirror::netlink::{decode, msg};

fuzz_target!(|data: &[u8]| {
    if let Some(body) = compact_like_the_filter(data) {
        let ty = u16::from_ne_bytes([data[4], data[5]]);
        let raw = msg::messages(data).next().expect("the compactor saw one message");
        let (mut c_raw, mut c_compact) = Default::default();
        let from_raw = decode::decode(&raw, &mut c_raw);
        let from_compact = decode_compact(ty, &body, &mut c_compact);
        assert_eq!(format!("{from_raw:?}"), format!("{from_compact:?}"));
        assert_eq!(format!("{c_raw:?}"), format!("{c_compact:?}"));
        if let Ok(Some(change)) = from_compact {
            let _ = Mirror::new().apply(change);
        }
    }
    for ty in [msg::RTM_NEWROUTE, msg::RTM_DELROUTE] {
        let mut c = msg::DecodeCounters::default();
        if let Ok(Some(change)) = decode_compact(ty, data, &mut c) {
            let _ = Mirror::new().apply(change);
        }
    }
});
