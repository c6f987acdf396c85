//! A control-socket request line, parsed exactly as the server does. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use route_mirror::ctl::server::parse_request;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = parse_request(data) {
        // What parses must round-trip.
        let line = serde_json::to_string(&req).expect("serialize");
        assert_eq!(parse_request(line.as_bytes()).as_ref(), Ok(&req));
    }
});
