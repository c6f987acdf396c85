//! The CLI side of the control socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use super::batch::BatchCounts;
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

/// Runs a batch lookup: a thread copies `input` (addresses, one per line) to the daemon
/// while the result lines are copied to `out` as they arrive, so neither side's socket
/// buffer can fill up and stall the other. Returns the daemon's counts.
pub fn lookup_batch(
    socket: &Path,
    req: &Request,
    mut input: Box<dyn std::io::Read + Send>,
    out: &mut dyn Write,
) -> Result<BatchCounts> {
    let stream = UnixStream::connect(socket)
        .with_context(|| format!("connecting to {}", socket.display()))?;
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    (&stream)
        .write_all(line.as_bytes())
        .context("sending request")?;
    let sender = stream.try_clone().context("cloning the control socket")?;
    let feeder = std::thread::spawn(move || -> std::io::Result<u64> {
        let mut w = std::io::BufWriter::with_capacity(1 << 16, &sender);
        let n = std::io::copy(&mut input, &mut w)?;
        w.flush()?;
        sender.shutdown(std::net::Shutdown::Write)?;
        Ok(n)
    });
    let mut rd = BufReader::with_capacity(1 << 20, &stream);
    let mut buf = String::new();
    let mut chunk = Vec::new();
    let result = loop {
        buf.clear();
        if rd.read_line(&mut buf).context("reading results")? == 0 {
            break Err(anyhow!("the daemon closed the connection before the end"));
        }
        match serde_json::from_str::<Reply>(buf.trim_end())
            .context("malformed reply from the daemon")?
        {
            Reply::Item(v) => {
                let n = v.get("bytes").and_then(Value::as_u64).unwrap_or(0) as usize;
                chunk.resize(n, 0);
                std::io::Read::read_exact(&mut rd, &mut chunk).context("reading results")?;
                out.write_all(&chunk)?;
            }
            Reply::Ok(v) => break Ok(serde_json::from_value(v)?),
            Reply::Error(e) => break Err(anyhow!("daemon: {e}")),
        }
    };
    match feeder.join() {
        Ok(Ok(_)) => {}
        Ok(Err(e)) if result.is_ok() => return Err(e).context("sending addresses"),
        Ok(Err(_)) => {}
        Err(_) => bail!("the input thread panicked"),
    }
    result
}

/// Latency of single lookups as a client sees them (connect, request, reply), for the
/// benchmarks: looks up `addrs` round-robin until `stop` exists or `max` passes,
/// `interval` apart, and summarises the latencies in microseconds.
pub fn lookup_latency(
    socket: &Path,
    addrs: &[std::net::IpAddr],
    interval: Duration,
    stop: &Path,
    max: Duration,
) -> Result<Value> {
    if addrs.is_empty() {
        bail!("no addresses to look up");
    }
    let t0 = std::time::Instant::now();
    let mut lat_ns: Vec<u64> = Vec::new();
    let mut errors = 0u64;
    while t0.elapsed() < max && !stop.exists() {
        let addr = addrs[lat_ns.len() % addrs.len()];
        let req = Request::Lookup {
            addr,
            table: None,
            tos: 0,
            flow: Default::default(),
        };
        let t = std::time::Instant::now();
        let ok = call(socket, &req, Some(Duration::from_secs(30)), |_| Ok(())).is_ok();
        lat_ns.push(t.elapsed().as_nanos() as u64);
        errors += u64::from(!ok);
        std::thread::sleep(interval);
    }
    lat_ns.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat_ns.is_empty() {
            return 0.0;
        }
        let i = ((lat_ns.len() as f64 * p).ceil() as usize).clamp(1, lat_ns.len()) - 1;
        lat_ns[i] as f64 / 1e3
    };
    Ok(serde_json::json!({
        "lookups": lat_ns.len(),
        "errors": errors,
        "seconds": t0.elapsed().as_secs_f64(),
        "p50_us": pct(0.50),
        "p90_us": pct(0.90),
        "p99_us": pct(0.99),
        "p999_us": pct(0.999),
        "max_us": pct(1.0),
    }))
}
