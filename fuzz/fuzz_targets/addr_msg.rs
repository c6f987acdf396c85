//! One addr message (seeds: real captured messages, header included). The type is
//! forced to RTM_NEWADDR/RTM_DELADDR so every input exercises this decoder; what decodes is
//! applied to a mirror. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use route_mirror::mirror::Mirror;
use route_mirror::netlink::{decode, msg};

fuzz_target!(|data: &[u8]| {
    let Some(payload) = data.get(msg::NLMSG_HDRLEN..) else {
        return;
    };
    let ty = u16::from_ne_bytes([data[4], data[5]]);
    let m = msg::RawMsg {
        ty: if ty == msg::RTM_DELADDR { msg::RTM_DELADDR } else { msg::RTM_NEWADDR },
        flags: u16::from_ne_bytes([data[6], data[7]]),
        seq: 0,
        port: 0,
        payload,
    };
    let mut counters = decode::DecodeCounters::default();
    if let Ok(Some(change)) = decode::decode(&m, &mut counters) {
        let mut mirror = Mirror::new();
        let _ = mirror.apply(change);
    }
});
