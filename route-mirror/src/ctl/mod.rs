//! The control socket: newline-delimited JSON over a root-only Unix stream socket.
//!
//! A request is one line. A reply is zero or more `{"item": ...}` lines (streams such
//! as `show`) and then exactly one `{"ok": ...}` or `{"error": "..."}` line.

pub mod batch;
pub mod client;
pub mod fastpath;
pub mod lookup;
pub mod proto;
pub mod server;

use std::path::PathBuf;

/// Where the daemon listens by default: one socket per mirrored namespace.
pub fn default_socket(netns: Option<&str>) -> PathBuf {
    match netns {
        Some(ns) => PathBuf::from(format!("/run/route-mirror/{ns}.sock")),
        None => PathBuf::from("/run/route-mirror/route-mirror.sock"),
    }
}
