//! One addr message (seeds: real captured messages, header included). The type is
//! forced to RTM_NEWADDR/RTM_DELADDR so every input exercises this decoder; what decodes is
//! applied to a mirror. Nothing may panic.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use route_mirror::netlink::msg;

fuzz_target!(|data: &[u8]| common::one_message(data, msg::RTM_NEWADDR, msg::RTM_DELADDR));
