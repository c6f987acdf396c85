//! Control-socket messages.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::batch::BatchFormat;
use crate::model::Family;

/// Longest request line the server reads; anything longer is refused.
pub const MAX_REQUEST: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// The route the kernel would use for `addr`: a plain longest match in `table`, or
    /// through the mirrored policy rules when `None` (with the flow's other fields).
    Lookup {
        addr: IpAddr,
        table: Option<u32>,
        #[serde(default)]
        tos: u8,
        #[serde(default, flatten)]
        flow: super::lookup::FlowArgs,
    },
    /// Policy rules (`ip rule`), one family or both.
    ShowRules {
        family: Option<Family>,
    },
    /// The table of VRF device `name` (`null`: no such VRF).
    VrfTable {
        name: String,
    },
    /// Many lookups: after this line the client sends addresses, one per line, and
    /// closes its sending side; the reply is framed chunks of result lines (see
    /// [`super::batch`]) and a final count.
    LookupBatch {
        table: Option<u32>,
        #[serde(default)]
        tos: u8,
        #[serde(default)]
        format: BatchFormat,
    },
    /// Routes, in `ip route` order. `table: None` means all tables.
    Show {
        prefix: Option<IpNet>,
        table: Option<u32>,
        family: Option<Family>,
    },
    Stats,
    /// Dump the kernel now and compare it with the mirror (after a barrier).
    Diff,
    /// A prune pass now; with `wait`, the reply carries its report.
    Scan {
        wait: bool,
        family: Option<Family>,
        table: Option<u32>,
    },
    /// Test knob: discard the next `count` event messages.
    DropEvents {
        count: u64,
    },
    /// Wait until the mirror has applied everything queued so far.
    Sync,
    /// Re-read the configuration file (as SIGHUP does).
    Reload,
    /// The kernel copies and declared route sets, with their state.
    Copies,
    /// Dump a copy's source and target tables now and compare them (after barriers).
    DiffCopy {
        name: String,
    },
    /// Stream every change the mirror applies (routes inside `prefix`, of `table`).
    Watch {
        prefix: Option<IpNet>,
        table: Option<u32>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Item(serde_json::Value),
    Ok(serde_json::Value),
    Error(String),
}
