//! The CLI side of the control socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use super::proto::{Reply, Request};

/// Sends `req`, passes each streamed item to `on_item`, and returns the final value.
pub fn call(
    socket: &Path,
    req: &Request,
    timeout: Option<Duration>,
    mut on_item: impl FnMut(Value) -> Result<()>,
) -> Result<Value> {
    let stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow!(
            "no control socket at {} (is `route-mirror run` running?)",
            socket.display()
        ),
        std::io::ErrorKind::ConnectionRefused => anyhow!(
            "the daemon is not running: {} refuses connections",
            socket.display()
        ),
        std::io::ErrorKind::PermissionDenied => anyhow!(
            "permission denied on {} (the control socket is root-only)",
            socket.display()
        ),
        _ => anyhow!("connecting to {}: {e}", socket.display()),
    })?;
    stream.set_read_timeout(timeout)?;
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    // The daemon may answer and close before reading the request (a refused peer):
    // a failed write is reported only if no reply can be read. Reported as text, not
    // as an io::Error, so `main` cannot mistake it for stdout's broken pipe.
    let sent = (&stream).write_all(line.as_bytes());
    let mut rd = BufReader::with_capacity(1 << 16, &stream);
    if let Err(e) = sent {
        let mut buf = String::new();
        if rd.read_line(&mut buf).unwrap_or(0) > 0 {
            if let Ok(Reply::Error(msg)) = serde_json::from_str::<Reply>(buf.trim_end()) {
                bail!("daemon: {msg}");
            }
        }
        bail!("sending request: the daemon closed the connection ({e})");
    }
    let mut buf = String::new();
    loop {
        buf.clear();
        let n = rd.read_line(&mut buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                anyhow!("the daemon did not answer in time")
            }
            _ => anyhow!("reading reply: {e}"),
        })?;
        if n == 0 {
            bail!("the daemon closed the connection without a reply");
        }
        match serde_json::from_str::<Reply>(buf.trim_end())
            .context("malformed reply from the daemon")?
        {
            Reply::Item(v) => on_item(v)?,
            Reply::Ok(v) => return Ok(v),
            Reply::Error(e) => bail!("daemon: {e}"),
        }
    }
}
