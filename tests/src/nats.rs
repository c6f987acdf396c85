//! A NATS JetStream server for the export's tests, and daemons publishing to it.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::{poll, workspace_root, Daemon, Netns};

/// `nats-server -js` on a loopback port with its store in `dir`; killed on drop.
pub struct NatsServer {
    child: Child,
    pub url: String,
    pub port: u16,
}

impl NatsServer {
    /// Starts it and waits until it listens.
    pub fn start(dir: &Path, port: u16) -> NatsServer {
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server (cargo xtask test installs it)");
        let url = format!("nats://127.0.0.1:{port}");
        poll(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        })
        .expect("nats-server listening");
        NatsServer { child, url, port }
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A synced daemon mirroring `ns` and publishing here as host `r1` (`extra`: more
    /// `run` arguments), and its router's name on the stream, `r1/<netns>`.
    pub fn daemon(&self, ns: &Netns, extra: &[&str]) -> (Daemon, String) {
        let mut args = vec!["--nats-url", self.url.as_str(), "--nats-host", "r1"];
        args.extend_from_slice(extra);
        (Daemon::start_synced(ns, &args), format!("r1/{}", ns.name()))
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Every message of the `route-mirror` stream as nats-py reads it
/// (tests/clients/nats_client.py): `{subject, stream_seq, msg}` objects.
pub fn stream_messages(python: &Path, url: &str) -> Vec<Value> {
    let out = Command::new(python)
        .arg(workspace_root().join("tests/clients/nats_client.py"))
        .args([url, "route-mirror"])
        .output()
        .expect("running nats-py");
    assert!(
        out.status.success(),
        "nats-py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The routes a consumer of `msgs` (one router's, as [`stream_messages`] reads them)
/// holds, rebuilt by the README's rules alone, none of `route-mirror fleet`'s code:
/// from the last complete snapshot (each of its routes appended to its key's list,
/// key = table, prefix, `id`), every later `change` sets its key's list to its
/// `routes`, or `[route]` when that is absent. `None` before a complete snapshot or
/// on a gap in `seq`.
pub fn rebuild_from_stream(msgs: &[Value]) -> Option<Vec<Value>> {
    // Keys in the kernel's order within a prefix: by metric first.
    type Copy = BTreeMap<(String, String, u64, String), Vec<Value>>;
    let key = |r: &Value, id: &Value| {
        let metric = r["metric"].as_u64().unwrap_or(0);
        (
            r["table"].to_string(),
            r["prefix"].to_string(),
            metric,
            id.to_string(),
        )
    };
    let (mut current, mut building): (Option<Copy>, Option<Copy>) = (None, None);
    let mut seq = None;
    for m in msgs.iter().map(|m| &m["msg"]) {
        let s = m["seq"].as_u64()?;
        if seq.is_some_and(|prev| s != prev + 1) {
            return None;
        }
        seq = Some(s);
        match m["type"].as_str()? {
            "snapshot-start" => building = Some(BTreeMap::new()),
            "snapshot" => {
                for r in m["routes"].as_array()? {
                    building
                        .as_mut()?
                        .entry(key(r, &r["id"]))
                        .or_default()
                        .push(r.clone());
                }
            }
            "snapshot-end" => current = building.take(),
            "change" => {
                if let Some(c) = current.as_mut() {
                    let list = match m.get("routes") {
                        Some(rs) => rs.as_array()?.clone(),
                        None => vec![m["route"].clone()],
                    };
                    let k = key(&m["route"], &m["id"]);
                    if list.is_empty() {
                        c.remove(&k);
                    } else {
                        c.insert(k, list);
                    }
                }
            }
            _ => {}
        }
    }
    Some(current?.into_values().flatten().collect())
}
