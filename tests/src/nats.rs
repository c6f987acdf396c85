//! A NATS JetStream server for the export's tests, and daemons publishing to it.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{poll, Daemon, Netns};

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
