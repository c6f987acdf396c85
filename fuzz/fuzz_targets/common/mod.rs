//! The body shared by the one-message targets.

use route_mirror::mirror::Mirror;
use route_mirror::netlink::{decode, msg};

/// Decodes `data` (a captured message, header included) as a `new_ty`/`del_ty` message, so
/// every input exercises that decoder, and applies what decodes to a mirror. Nothing may
/// panic.
pub fn one_message(data: &[u8], new_ty: u16, del_ty: u16) {
    let Some(payload) = data.get(msg::NLMSG_HDRLEN..) else {
        return;
    };
    let ty = u16::from_ne_bytes([data[4], data[5]]);
    let m = msg::RawMsg {
        ty: if ty == del_ty { del_ty } else { new_ty },
        flags: u16::from_ne_bytes([data[6], data[7]]),
        seq: 0,
        port: 0,
        payload,
    };
    let mut counters = msg::DecodeCounters::default();
    if let Ok(Some(change)) = decode::decode(&m, &mut counters) {
        let mut mirror = Mirror::new();
        let _ = mirror.apply(change);
    }
}
