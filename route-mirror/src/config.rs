//! The configuration file (`/etc/route-mirror/route-mirror.toml`).
//!
//! Every `route-mirror run` option has a key here; a flag on the command line wins over
//! the file. Errors name the line and the key. On reload (SIGHUP or `route-mirror
//! reload`) the daemon applies what it can live and says what needs a restart; an
//! invalid file never takes a running daemon down.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub const DEFAULT_PATH: &str = "/etc/route-mirror/route-mirror.toml";

/// Which event source to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// eBPF when it loads here, netlink otherwise.
    #[default]
    Auto,
    Ebpf,
    Netlink,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Network namespaces (`ip netns` names) to mirror, each independently: a name, a
    /// list, or `"all"` (every named namespace at start); empty: the daemon's own.
    #[serde(deserialize_with = "one_or_many")]
    pub netns: Vec<String>,
    /// Control socket path; unset: /run/route-mirror/route-mirror.sock (or NETNS.sock).
    pub socket: Option<PathBuf>,
    /// Seconds between authoritative full scans.
    pub scan_interval: f64,
    /// Netlink receive buffer, bytes.
    pub rcvbuf: usize,
    pub source: SourceKind,
    /// eBPF ring buffer size, bytes (a power of two).
    pub ring_size: usize,
    /// Prometheus metrics listen address (`127.0.0.1:9469`); unset: no metrics endpoint.
    pub metrics_listen: Option<SocketAddr>,
    /// Log filter (tracing env-filter syntax), e.g. `info` or `route_mirror=debug`.
    pub log_level: String,
    /// Tables (ids or names) whose best routes the pinned BPF FIB holds; unset or empty:
    /// no BPF FIB. In the file either `"main,100"` or `["main", 100]`.
    #[serde(deserialize_with = "tables_de")]
    pub bpf_fib_tables: Vec<String>,
    /// gNMI server address (OpenConfig AFT telemetry), e.g. `[::]:9339`; unset: off.
    pub gnmi_listen: Option<SocketAddr>,
    /// Allow plaintext gNMI (only on a loopback address).
    pub gnmi_insecure: bool,
    /// gNMI TLS server certificate chain (PEM).
    pub gnmi_tls_cert: Option<PathBuf>,
    /// gNMI TLS private key (PEM).
    pub gnmi_tls_key: Option<PathBuf>,
    /// Kernel copies: `[[copy]]` sections (see [`crate::copy::spec`]).
    #[serde(rename = "copy")]
    pub copies: Vec<CopyConfig>,
    /// Declared route sets: `[[routes]]` sections.
    #[serde(rename = "routes")]
    pub route_sets: Vec<RoutesConfig>,
    /// The protocol number of the routes copies and declared sets install (their name,
    /// `route-mirror`, is in rt_protos.d); only routes of it are ever changed or removed.
    pub copy_protocol: u8,
    /// CA bundle (PEM) that gNMI client certificates must chain to; unset: clients are
    /// not asked for certificates.
    pub gnmi_tls_client_ca: Option<PathBuf>,
    /// Largest gNMI GetResponse, bytes. A Get is one gRPC message and clients refuse
    /// larger ones than they allow (4 MiB by default in gRPC): beyond this a Get is
    /// answered RESOURCE_EXHAUSTED, pointing to Subscribe ONCE, before it is rendered
    /// whole. Raise it for clients configured to receive more.
    pub gnmi_get_max_bytes: usize,
    /// NATS server URL (`nats://127.0.0.1:4222`); unset: no NATS export.
    pub nats_url: Option<String>,
    /// The `<host>` token of the NATS subjects; unset: the system's host name.
    pub nats_host: Option<String>,
    /// JetStream stream name (created if missing, subjects `route-mirror.>`).
    pub nats_stream: String,
    /// Seconds between full snapshots on the control subject (0: only at start,
    /// reconnect and lag).
    pub nats_snapshot_interval: f64,
    /// Route changes buffered while the NATS server is unreachable or slow; beyond it
    /// changes are dropped (counted) and a snapshot follows.
    pub nats_buffer: usize,
}

/// Accepts `"main,100"`, `["main", "100"]` or `["main", 100]`.
fn tables_de<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum One {
        Name(String),
        Id(u32),
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        List(String),
        Many(Vec<One>),
    }
    Ok(match Repr::deserialize(d)? {
        Repr::List(s) => split_tables(&s),
        Repr::Many(v) => v
            .into_iter()
            .map(|o| match o {
                One::Name(s) => s.trim().to_string(),
                One::Id(n) => n.to_string(),
            })
            .collect(),
    })
}

/// gRPC's default receive limit (grpc-go, grpc-python and so pygnmi, gnmic): the
/// largest GetResponse a client reads unless configured otherwise.
pub const DEFAULT_GNMI_GET_MAX_BYTES: usize = 4 << 20;

/// `--gnmi-*` settings.
#[derive(Debug, Clone, PartialEq)]
pub struct GnmiConfig {
    pub listen: Option<SocketAddr>,
    pub insecure: bool,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_client_ca: Option<PathBuf>,
    pub get_max_bytes: usize,
}

impl Default for GnmiConfig {
    fn default() -> GnmiConfig {
        GnmiConfig {
            listen: None,
            insecure: false,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            get_max_bytes: DEFAULT_GNMI_GET_MAX_BYTES,
        }
    }
}

impl GnmiConfig {
    /// Checks the security rules; returns why not when they are broken.
    pub fn check(&self) -> std::result::Result<(), String> {
        let Some(addr) = self.listen else {
            return Ok(());
        };
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), Some(_)) if self.insecure => {
                Err("--gnmi-insecure and TLS certificate files are mutually exclusive".into())
            }
            (Some(_), Some(_)) => Ok(()),
            (Some(_), None) | (None, Some(_)) => {
                Err("TLS needs both a certificate (gnmi_tls_cert) and its key (gnmi_tls_key)".into())
            }
            (None, None) if !self.insecure => Err(format!(
                "gNMI on {addr} needs TLS (gnmi_tls_cert + gnmi_tls_key), or gnmi_insecure on a loopback address"
            )),
            (None, None) if !addr.ip().is_loopback() => Err(format!(
                "plaintext gNMI (gnmi_insecure) is allowed only on a loopback address, not {addr}"
            )),
            (None, None) => {
                if self.tls_client_ca.is_some() {
                    Err("gnmi_tls_client_ca needs TLS (gnmi_tls_cert + gnmi_tls_key)".into())
                } else {
                    Ok(())
                }
            }
        }
    }
}

impl Config {
    /// The gNMI export's settings.
    pub fn gnmi(&self) -> GnmiConfig {
        GnmiConfig {
            listen: self.gnmi_listen,
            insecure: self.gnmi_insecure,
            tls_cert: self.gnmi_tls_cert.clone(),
            tls_key: self.gnmi_tls_key.clone(),
            tls_client_ca: self.gnmi_tls_client_ca.clone(),
            get_max_bytes: self.gnmi_get_max_bytes,
        }
    }
}

/// `main,100` → `["main", "100"]`.
pub fn split_tables(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

impl Config {
    /// The namespaces the daemon mirrors as configured (`None`: its own), `"all"`
    /// expanded now.
    pub fn mirrored(&self) -> Vec<Option<String>> {
        let names = expand_netns(&self.netns).unwrap_or_default();
        if names.is_empty() {
            vec![None]
        } else {
            names.into_iter().map(Some).collect()
        }
    }

    /// The BPF FIB tables as ids (validated: every entry resolves).
    pub fn bpf_fib_table_ids(&self) -> Vec<u32> {
        let names = crate::names::Names::load();
        let mut ids: Vec<u32> = self
            .bpf_fib_tables
            .iter()
            .filter_map(|t| names.parse_table(t))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

/// Default eBPF ring size: 8 MiB hold ~115k compact IPv4 route records (~80k IPv6),
/// about two seconds of the kernel's fastest insertion rate measured here.
pub const DEFAULT_RING_SIZE: usize = 8 << 20;

impl Default for Config {
    fn default() -> Config {
        Config {
            netns: Vec::new(),
            socket: None,
            scan_interval: 60.0,
            rcvbuf: 128 << 20,
            source: SourceKind::Auto,
            // Sustained rate plus stall headroom, not a whole burst: the ring is drained
            // during dumps too, its pages are resident (RSS) from load on, and a full
            // ring costs a resync, not a wrong mirror (BENCHMARKS.md, issue 14).
            ring_size: DEFAULT_RING_SIZE,
            metrics_listen: None,
            log_level: "info".to_string(),
            bpf_fib_tables: Vec::new(),
            gnmi_listen: None,
            gnmi_insecure: false,
            gnmi_tls_cert: None,
            gnmi_tls_key: None,
            gnmi_tls_client_ca: None,
            gnmi_get_max_bytes: DEFAULT_GNMI_GET_MAX_BYTES,
            nats_url: None,
            nats_host: None,
            nats_stream: "route-mirror".into(),
            nats_snapshot_interval: 300.0,
            nats_buffer: 1 << 20,
            copies: Vec::new(),
            route_sets: Vec::new(),
            copy_protocol: COPY_PROTOCOL,
        }
    }
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("reading {path}: {err}")]
    Read { path: PathBuf, err: std::io::Error },
    #[error("{path}: {msg}")]
    Parse { path: PathBuf, msg: String },
    #[error("{path}: key `{key}`: {msg}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        msg: String,
    },
}

impl Config {
    /// Reads and validates a file. A missing file at the default path is not an error
    /// (defaults apply); anywhere else it is.
    pub fn load(path: &Path, must_exist: bool) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => {
                return Ok(Config::default())
            }
            Err(err) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    err,
                })
            }
        };
        Config::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            msg: locate(text, &e),
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |key, msg: String| {
            Err(ConfigError::Invalid {
                path: path.to_owned(),
                key,
                msg,
            })
        };
        if !(self.scan_interval > 0.0 && self.scan_interval.is_finite()) {
            return bad(
                "scan_interval",
                format!("{} is not a positive number of seconds", self.scan_interval),
            );
        }
        if self.rcvbuf < 4096 {
            return bad(
                "rcvbuf",
                format!("{} bytes is below the 4096-byte minimum", self.rcvbuf),
            );
        }
        if !self.ring_size.is_power_of_two() || !(4096..=1 << 31).contains(&self.ring_size) {
            return bad(
                "ring_size",
                format!(
                    "{} is not a power of two between 4096 and 2^31",
                    self.ring_size
                ),
            );
        }
        for ns in &self.netns {
            if ns.is_empty() || ns.contains('/') || ns == "." || ns == ".." {
                return bad("netns", format!("{ns:?} is not a namespace name"));
            }
        }
        if self.socket.is_some() && (self.netns.len() > 1 || self.netns.iter().any(|n| n == "all"))
        {
            return bad("socket", "one socket path cannot serve several namespaces: leave it unset (each gets /run/route-mirror/NAME.sock)".into());
        }
        if !self.bpf_fib_tables.is_empty() {
            let names = crate::names::Names::load();
            for t in &self.bpf_fib_tables {
                match names.parse_table(t) {
                    Some(0) | None => {
                        return bad(
                            "bpf_fib_tables",
                            format!("{t:?} is not a routing table id or name"),
                        )
                    }
                    Some(_) => {}
                }
            }
        }
        if !(self.nats_snapshot_interval >= 0.0 && self.nats_snapshot_interval.is_finite()) {
            return bad(
                "nats_snapshot_interval",
                format!("{} is not a number of seconds", self.nats_snapshot_interval),
            );
        }
        if self.nats_stream.is_empty() || self.nats_stream.contains(['.', '*', '>', ' ']) {
            return bad(
                "nats_stream",
                format!("{:?} is not a stream name", self.nats_stream),
            );
        }
        if self.nats_buffer == 0 {
            return bad("nats_buffer", "must be at least 1".into());
        }
        if self.gnmi_get_max_bytes == 0 {
            return bad("gnmi_get_max_bytes", "must be at least 1".into());
        }
        if let Err(msg) = self.gnmi().check() {
            return bad("gnmi_listen", msg);
        }
        let copying = !self.copies.is_empty() || !self.route_sets.is_empty();
        if copying
            && (crate::model::rtprot::name(self.copy_protocol).is_some() || self.copy_protocol < 5)
        {
            return bad(
                "copy_protocol",
                format!("{} belongs to another routing protocol", self.copy_protocol),
            );
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log_level).is_err() {
            return bad(
                "log_level",
                format!("{:?} is not a log filter", self.log_level),
            );
        }
        Ok(())
    }

    /// Splits the changes from `self` to `new` into those a running daemon applies live
    /// and those that need a restart (by key name).
    pub fn changes(&self, new: &Config) -> (Vec<&'static str>, Vec<&'static str>) {
        let mut live = Vec::new();
        let mut restart = Vec::new();
        if self.scan_interval != new.scan_interval {
            live.push("scan_interval");
        }
        if self.log_level != new.log_level {
            live.push("log_level");
        }
        // Declared route files are re-read on every reload: they count as changed.
        if self.copies != new.copies || !self.route_sets.is_empty() || !new.route_sets.is_empty() {
            live.push("copy");
        }
        for (key, differs) in [
            ("copy_protocol", self.copy_protocol != new.copy_protocol),
            ("netns", self.netns != new.netns),
            ("socket", self.socket != new.socket),
            ("rcvbuf", self.rcvbuf != new.rcvbuf),
            ("source", self.source != new.source),
            ("ring_size", self.ring_size != new.ring_size),
            ("metrics_listen", self.metrics_listen != new.metrics_listen),
            ("bpf_fib_tables", self.bpf_fib_tables != new.bpf_fib_tables),
            ("gnmi_listen", self.gnmi_listen != new.gnmi_listen),
            ("gnmi_insecure", self.gnmi_insecure != new.gnmi_insecure),
            ("gnmi_tls_cert", self.gnmi_tls_cert != new.gnmi_tls_cert),
            ("gnmi_tls_key", self.gnmi_tls_key != new.gnmi_tls_key),
            (
                "gnmi_tls_client_ca",
                self.gnmi_tls_client_ca != new.gnmi_tls_client_ca,
            ),
            (
                "gnmi_get_max_bytes",
                self.gnmi_get_max_bytes != new.gnmi_get_max_bytes,
            ),
        ] {
            if differs {
                restart.push(key);
            }
        }
        (live, restart)
    }
}

/// `route-mirror run` flags that override the file (unset flags leave the file's value).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RunArgs {
    /// Seconds between authoritative full scans (prune passes) [default: 60]
    #[arg(long, value_name = "SECS")]
    pub scan_interval: Option<f64>,
    /// Netlink receive buffer in bytes (SO_RCVBUFFORCE; the kernel doubles it) [default: 128 MiB]
    #[arg(long, value_name = "BYTES")]
    pub rcvbuf: Option<usize>,
    /// Event source: the eBPF ring buffer (auto: when it loads here) or the netlink socket [default: auto]
    #[arg(long, value_enum)]
    pub source: Option<SourceKind>,
    /// eBPF ring buffer size in bytes (power of two; resident memory; a full ring is answered with a resync) [default: 8 MiB]
    #[arg(long, value_name = "BYTES")]
    pub ring_size: Option<usize>,
    /// Serve Prometheus metrics on ADDR (e.g. 127.0.0.1:9469) [default: off]
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Log filter (tracing env-filter syntax; RUST_LOG wins) [default: info]
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Keep a pinned BPF FIB (LPM-trie maps fib4/fib6 + nhgroups under the pin directory)
    /// with the best routes of these tables: comma-separated ids or names, e.g. `main,100`.
    /// Needs the eBPF object (either source); the daemon refuses to start without it
    /// [default: off]
    #[arg(long, value_name = "TABLES")]
    pub bpf_fib: Option<String>,
    /// Serve the forwarding tables over gNMI (OpenConfig AFT) on ADDR, e.g. [::]:9339;
    /// needs --gnmi-tls-cert/--gnmi-tls-key, or --gnmi-insecure on a loopback address
    /// [default: off]
    #[arg(long, value_name = "ADDR")]
    pub gnmi_listen: Option<SocketAddr>,
    /// Serve gNMI without TLS (refused unless the address is loopback)
    #[arg(long)]
    pub gnmi_insecure: bool,
    /// gNMI TLS certificate chain (PEM)
    #[arg(long, value_name = "FILE")]
    pub gnmi_tls_cert: Option<PathBuf>,
    /// gNMI TLS private key (PEM)
    #[arg(long, value_name = "FILE")]
    pub gnmi_tls_key: Option<PathBuf>,
    /// Require gNMI client certificates signed by this CA bundle (PEM)
    #[arg(long, value_name = "FILE")]
    pub gnmi_tls_client_ca: Option<PathBuf>,
    /// Largest gNMI Get response in bytes; a larger Get is refused with
    /// RESOURCE_EXHAUSTED (read it with Subscribe ONCE) [default: 4 MiB, gRPC's default
    /// receive limit]
    #[arg(long, value_name = "BYTES")]
    pub gnmi_get_max_bytes: Option<usize>,
    /// Publish every applied route change to this NATS server's JetStream, e.g.
    /// nats://127.0.0.1:4222 [default: off]
    #[arg(long, value_name = "URL")]
    pub nats_url: Option<String>,
    /// Host token of the NATS subjects [default: the host name]
    #[arg(long, value_name = "NAME")]
    pub nats_host: Option<String>,
    /// Seconds between full snapshots on NATS (0: only at start, reconnect and lag) [default: 300]
    #[arg(long, value_name = "SECS")]
    pub nats_snapshot_interval: Option<f64>,
    /// Keep table TO equal to table FROM of the mirrored namespace: FROM=[NETNS/]TO,
    /// e.g. `--netns A --copy main=B/200` (repeatable; `[[copy]]` sections have filters
    /// and next-hop rewrites)
    #[arg(long = "copy", value_name = "FROM=TO", value_parser = copy_flag_form)]
    pub copy: Vec<String>,
    /// Install and keep the routes of FILE (`ip route` syntax, one per line; re-read on
    /// reload) in the mirrored namespace (repeatable)
    #[arg(long = "routes", value_name = "FILE")]
    pub routes: Vec<String>,
    /// Log as JSON lines instead of text
    #[arg(long)]
    pub log_json: bool,
}

/// `--copy` must be `FROM=TO` (what FROM and TO name is checked with the rest).
fn copy_flag_form(s: &str) -> Result<String, String> {
    copy_flag(s).map(|_| s.to_string())
}

impl RunArgs {
    /// Lays the flags (and the global `--netns`/`--socket`) over a file's settings.
    pub fn apply(&self, netns: &[String], socket: Option<&Path>, cfg: &mut Config) {
        if !netns.is_empty() {
            cfg.netns = netns.to_vec();
        }
        if let Some(s) = socket {
            cfg.socket = Some(s.to_owned());
        }
        if let Some(v) = self.scan_interval {
            cfg.scan_interval = v;
        }
        if let Some(v) = self.rcvbuf {
            cfg.rcvbuf = v;
        }
        if let Some(v) = self.source {
            cfg.source = v;
        }
        if let Some(v) = self.ring_size {
            cfg.ring_size = v;
        }
        if let Some(v) = self.metrics_listen {
            cfg.metrics_listen = Some(v);
        }
        if let Some(v) = &self.log_level {
            cfg.log_level = v.clone();
        }
        if let Some(v) = &self.bpf_fib {
            cfg.bpf_fib_tables = split_tables(v);
        }
        if let Some(v) = self.gnmi_listen {
            cfg.gnmi_listen = Some(v);
        }
        if let Some(v) = self.gnmi_get_max_bytes {
            cfg.gnmi_get_max_bytes = v;
        }
        if let Some(v) = &self.nats_url {
            cfg.nats_url = Some(v.clone());
        }
        if let Some(v) = &self.nats_host {
            cfg.nats_host = Some(v.clone());
        }
        if let Some(v) = self.nats_snapshot_interval {
            cfg.nats_snapshot_interval = v;
        }
        for c in &self.copy {
            cfg.copies
                .push(copy_flag(c).expect("checked by the flag's parser"));
        }
        for r in &self.routes {
            cfg.route_sets.push(routes_flag(r));
        }
        if self.gnmi_insecure {
            cfg.gnmi_insecure = true;
        }
        for (flag, key) in [
            (&self.gnmi_tls_cert, &mut cfg.gnmi_tls_cert),
            (&self.gnmi_tls_key, &mut cfg.gnmi_tls_key),
            (&self.gnmi_tls_client_ca, &mut cfg.gnmi_tls_client_ca),
        ] {
            if let Some(v) = flag {
                *key = Some(v.clone());
            }
        }
    }
}

/// Where a running daemon re-reads its configuration from, and the flags it started with
/// (which keep winning over the file after a reload).
#[derive(Debug, Clone)]
pub struct ConfigSource {
    pub path: PathBuf,
    pub must_exist: bool,
    pub args: RunArgs,
    pub netns: Vec<String>,
    pub socket: Option<PathBuf>,
}

impl ConfigSource {
    /// The effective configuration: the file (or defaults) with the flags on top.
    pub fn effective(&self) -> Result<Config, ConfigError> {
        let mut cfg = Config::load(&self.path, self.must_exist)?;
        self.args
            .apply(&self.netns, self.socket.as_deref(), &mut cfg);
        cfg.validate(&self.path)?;
        Ok(cfg)
    }
}

/// `netns = "a"` or `netns = ["a", "b"]`.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// The namespaces to mirror: `"all"` expands to every name under /run/netns now.
pub fn expand_netns(names: &[String]) -> std::io::Result<Vec<String>> {
    if !names.iter().any(|n| n == "all") {
        return Ok(names.to_vec());
    }
    let mut all: Vec<String> = std::fs::read_dir("/run/netns")?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    all.sort();
    Ok(all)
}

/// toml's message with the line and column of its span.
fn locate(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim_end().to_string();
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let line_start = before.rfind('\n').map_or(0, |i| i + 1);
            let col = before.len() - line_start + 1;
            let this_line = text[line_start..].lines().next().unwrap_or("");
            match this_line.split_once('=') {
                Some((key, _)) if !key.trim().is_empty() => {
                    format!("line {line}, column {col}, key `{}`: {msg}", key.trim())
                }
                _ => format!("line {line}, column {col}: {msg}"),
            }
        }
        None => msg,
    }
}

// --- copies and declared route sets (resolved into jobs by copy::spec) -------------
//
// ```toml
// [[copy]]
// name = "to-b"                 # default: "FROM=TO"
// from = "main"                 # [NETNS/]TABLE; NETNS defaults to the mirrored one
// to = "B/200"                  # [NETNS/]TABLE
// families = [4]                # default both
// prefixes = ["10.0.0.0/8 le 24"]
// exclude = ["10.9.0.0/16+"]
// protocols = ["bgp", "static"] # default any
// types = ["unicast", "blackhole"]  # default unicast blackhole unreachable prohibit throw
// nexthop = "keep"              # or "blackhole", "dev DEV", "via GW dev DEV", or a list
// metric = 100                  # default the source's
// prefsrc = true                # keep the source's preferred source address
// owner = false                 # true: remove and replace every route of the target table
// persist = true                # false: remove the copy's routes when the daemon exits
// nexthop_objects = true        # IPv4 multipath routes through shared nexthop objects
//
// [[routes]]
// to = "B/200"                  # default: main of the mirrored namespace
// file = "/etc/route-mirror/pins.routes"   # `ip route` syntax, one per line
// routes = ["10.9.0.0/16 via 198.18.1.2 dev veth1", "blackhole 10.10.0.0/16"]
// ```

/// The protocol of the routes copies install (`route-mirror` in
/// /etc/iproute2/rt_protos.d/route-mirror.conf, shipped by the package): unassigned by
/// iproute2 and by the routing daemons that claim numbers (FRR 186-199, BIRD 12).
pub const COPY_PROTOCOL: u8 = 240;

/// A `[[copy]]` section (or `--copy FROM=TO`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopyConfig {
    #[serde(default)]
    pub name: Option<String>,
    pub from: String,
    pub to: String,
    #[serde(default, deserialize_with = "strings")]
    pub families: Vec<String>,
    #[serde(default, deserialize_with = "strings")]
    pub prefixes: Vec<String>,
    #[serde(default, deserialize_with = "strings")]
    pub exclude: Vec<String>,
    #[serde(default, deserialize_with = "opt_strings")]
    pub protocols: Option<Vec<String>>,
    #[serde(default, deserialize_with = "opt_strings")]
    pub types: Option<Vec<String>>,
    #[serde(default, deserialize_with = "strings")]
    pub nexthop: Vec<String>,
    #[serde(default)]
    pub metric: Option<u32>,
    #[serde(default = "yes")]
    pub prefsrc: bool,
    #[serde(default)]
    pub owner: bool,
    #[serde(default = "yes")]
    pub persist: bool,
    /// Multipath routes name shared nexthop objects the copy makes in the target
    /// (`copy::nhpool`) instead of spelling their hops (IPv4).
    #[serde(default = "yes")]
    pub nexthop_objects: bool,
}

/// A `[[routes]]` section (or `--routes FILE`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutesConfig {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default, deserialize_with = "paths", alias = "files")]
    pub file: Vec<PathBuf>,
    #[serde(default, deserialize_with = "strings")]
    pub routes: Vec<String>,
    #[serde(default)]
    pub owner: bool,
    #[serde(default = "yes")]
    pub persist: bool,
}

fn yes() -> bool {
    true
}

/// A string or number, or a list of them, as strings.
fn strings<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum One {
        S(String),
        N(i64),
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        One(One),
        Many(Vec<One>),
    }
    let s = |o: One| match o {
        One::S(s) => s,
        One::N(n) => n.to_string(),
    };
    Ok(match Repr::deserialize(d)? {
        Repr::One(o) => vec![s(o)],
        Repr::Many(v) => v.into_iter().map(s).collect(),
    })
}

fn opt_strings<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    strings(d).map(Some)
}

fn paths<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
    strings(d).map(|v| v.into_iter().map(PathBuf::from).collect())
}

/// `--copy FROM=TO`.
pub fn copy_flag(s: &str) -> Result<CopyConfig, String> {
    let (from, to) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected SRC_TABLE=[NETNS/]TABLE"))?;
    Ok(CopyConfig {
        name: Some(s.to_string()),
        from: from.to_string(),
        to: to.to_string(),
        families: Vec::new(),
        prefixes: Vec::new(),
        exclude: Vec::new(),
        protocols: None,
        types: None,
        nexthop: Vec::new(),
        metric: None,
        prefsrc: true,
        owner: false,
        persist: true,
        nexthop_objects: true,
    })
}

/// `--routes FILE`.
pub fn routes_flag(p: &str) -> RoutesConfig {
    RoutesConfig {
        name: None,
        to: None,
        file: vec![PathBuf::from(p)],
        routes: Vec::new(),
        owner: false,
        persist: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<Config, ConfigError> {
        Config::parse(t, Path::new("test.toml"))
    }

    #[test]
    fn defaults_and_overrides() {
        assert_eq!(parse("").unwrap(), Config::default());
        let c =
            parse("scan_interval = 5\nsource = \"netlink\"\nmetrics_listen = \"127.0.0.1:9469\"\n")
                .unwrap();
        assert_eq!(c.scan_interval, 5.0);
        assert_eq!(c.source, SourceKind::Netlink);
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9469".parse().unwrap()));
        assert_eq!(parse("netns = \"a\"").unwrap().netns, vec!["a"]);
        assert_eq!(
            parse("netns = [\"a\", \"b\"]").unwrap().netns,
            vec!["a", "b"]
        );
        assert!(parse("netns = [\"a\", \"b\"]\nsocket = \"/x.sock\"").is_err());
    }

    #[test]
    fn errors_name_line_and_key() {
        let e = parse("scan_interval = 5\nscan_intervall = 6\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("scan_intervall"), "{e}");
        let e = parse("rcvbuf = \"big\"\n").unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("rcvbuf"), "{e}");
        let e = parse("scan_interval = -1\n").unwrap_err().to_string();
        assert!(e.contains("`scan_interval`"), "{e}");
        let e = parse("ring_size = 5000\n").unwrap_err().to_string();
        assert!(e.contains("`ring_size`"), "{e}");
        let e = parse("source = \"carrier-pigeon\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1") && e.contains("source"), "{e}");
    }

    #[test]
    fn bpf_fib_tables_forms() {
        let want = vec!["main".to_string(), "100".to_string()];
        assert_eq!(
            parse("bpf_fib_tables = \"main, 100\"\n")
                .unwrap()
                .bpf_fib_tables,
            want
        );
        assert_eq!(
            parse("bpf_fib_tables = [\"main\", 100]\n")
                .unwrap()
                .bpf_fib_tables,
            want
        );
        assert_eq!(
            parse("bpf_fib_tables = [\"main\", 100]\n")
                .unwrap()
                .bpf_fib_table_ids(),
            vec![100, 254]
        );
        let e = parse("bpf_fib_tables = \"main,nosuch\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`bpf_fib_tables`") && e.contains("nosuch"),
            "{e}"
        );
        let mut c = Config::default();
        RunArgs {
            bpf_fib: Some("local,main".into()),
            ..Default::default()
        }
        .apply(&[], None, &mut c);
        assert_eq!(c.bpf_fib_table_ids(), vec![254, 255]);
    }

    #[test]
    fn reload_splits_live_and_restart_changes() {
        let a = Config::default();
        let b = Config {
            scan_interval: 1.0,
            rcvbuf: 1 << 20,
            ..Config::default()
        };
        assert_eq!(a.changes(&b), (vec!["scan_interval"], vec!["rcvbuf"]));
    }

    #[test]
    fn missing_default_file_is_fine_elsewhere_not() {
        let p = Path::new("/nonexistent/route-mirror.toml");
        assert!(Config::load(p, false).is_ok());
        assert!(Config::load(p, true).is_err());
    }
}
