//! A whole datagram as the kernel would deliver it: framing, decoding of every message
//! type, and applying what decodes to a mirror. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use route_mirror::mirror::Mirror;
use route_mirror::netlink::{decode, msg};

fuzz_target!(|data: &[u8]| {
    let mut counters = msg::DecodeCounters::default();
    let mut mirror = Mirror::new();
    let mut it = msg::messages(data);
    for m in it.by_ref() {
        let _ = msg::error_code(m.payload);
        if let Ok(Some(change)) = decode::decode(&m, &mut counters) {
            let _ = mirror.apply(change);
        }
    }
    let _ = it.truncated();
});
