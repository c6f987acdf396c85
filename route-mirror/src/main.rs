//! `route-mirror`: the daemon (`run`) and its client commands.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use clap::{Parser, Subcommand};
use ipnet::IpNet;
use serde_json::Value;

use route_mirror::ctl::batch::{self, BatchFormat};
use route_mirror::ctl::{self, client, proto::Request, view};
use route_mirror::daemon;
use route_mirror::diff::DiffReport;
use route_mirror::model::{table, Family};

#[derive(Parser)]
#[command(
    name = "route-mirror",
    version,
    about = "An exact, always-current userspace mirror of the kernel routing tables"
)]
struct Cli {
    /// Control socket [default: /run/route-mirror/route-mirror.sock, or /run/route-mirror/NETNS.sock]
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Network namespace (`ip netns` name) to mirror, or whose daemon to ask
    #[arg(long, global = true, value_name = "NAME")]
    netns: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon in the foreground
    Run {
        /// Seconds between authoritative full scans (prune passes)
        #[arg(long, default_value_t = 60.0, value_name = "SECS", value_parser = parse_secs)]
        scan_interval: f64,
        /// Netlink receive buffer in bytes (SO_RCVBUFFORCE); the kernel doubles it
        #[arg(long, default_value_t = 128 << 20, value_name = "BYTES")]
        rcvbuf: usize,
        /// Log filter (tracing env-filter syntax), overridden by RUST_LOG
        #[arg(long, default_value = "info")]
        log_level: String,
        /// Log as JSON lines instead of text
        #[arg(long)]
        log_json: bool,
    },
    /// The route the kernel would use for ADDR (longest match, lowest metric)
    ///
    /// With --batch, reads addresses one per line from FILE (or stdin: `-` or no FILE)
    /// and prints one result per line; malformed lines get an error line and the rest
    /// goes on (exit status 1 if there were any).
    Lookup {
        #[arg(required_unless_present = "batch", conflicts_with = "batch")]
        addr: Option<IpAddr>,
        /// Look up every address in FILE (`-`: stdin)
        #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "-")]
        batch: Option<PathBuf>,
        /// With --batch: CSV output (with a header line)
        #[arg(long, conflicts_with = "json")]
        csv: bool,
        /// Table id or name; default: the default rules' tables local, main, default
        #[arg(long, value_parser = parse_table)]
        table: Option<u32>,
        /// IPv4 TOS of the packet
        #[arg(long, default_value_t = 0)]
        tos: u8,
        #[arg(long)]
        json: bool,
    },
    /// Routes in `ip route` style (PREFIX: that prefix and everything inside it)
    Show {
        prefix: Option<IpNet>,
        /// Table id or name, or `all` [default: main]
        #[arg(long, default_value = "main")]
        table: String,
        /// 4 or 6
        #[arg(long, value_parser = parse_family)]
        family: Option<Family>,
        #[arg(long)]
        json: bool,
    },
    /// Counters: routes per table, events, resyncs, ENOBUFS, scan verdicts, memory
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Dump the kernel now and compare with the mirror; exit 1 if they differ
    Diff {
        #[arg(long)]
        json: bool,
    },
    /// Run a prune pass (full dump + mark-and-sweep) now
    Scan {
        /// Wait for it to finish and print its verdicts
        #[arg(long)]
        wait: bool,
        #[arg(long, value_parser = parse_family)]
        family: Option<Family>,
        #[arg(long, value_parser = parse_table)]
        table: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    /// Wait until the mirror has applied every change the kernel reported so far
    Sync,
    /// Knobs for tests
    #[command(subcommand, hide = true)]
    Debug(DebugCmd),
}

#[derive(Subcommand)]
enum DebugCmd {
    /// Discard the next N event messages (to prove that a scan repairs them)
    DropEvents { count: u64 },
}

fn parse_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("{s:?} is not a positive number of seconds")),
    }
}

fn parse_table(s: &str) -> Result<u32, String> {
    table::parse(s).ok_or_else(|| format!("{s:?} is not a table id or one of local, main, default"))
}

fn parse_family(s: &str) -> Result<Family, String> {
    match s {
        "4" | "inet" | "ipv4" => Ok(Family::V4),
        "6" | "inet6" | "ipv6" => Ok(Family::V6),
        _ => Err(format!("{s:?} is not a family (4 or 6)")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => code,
        // `route-mirror show | head`: the reader left; that is not an error.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("route-mirror: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main(cli: Cli) -> Result<ExitCode> {
    let socket = cli
        .socket
        .clone()
        .unwrap_or_else(|| ctl::default_socket(cli.netns.as_deref()));
    let call =
        |req: &Request, timeout: Option<Duration>| client::call(&socket, req, timeout, |_| Ok(()));
    let short = Some(Duration::from_secs(30));
    match cli.cmd {
        Cmd::Run {
            scan_interval,
            rcvbuf,
            log_level,
            log_json,
        } => {
            init_logs(&log_level, log_json);
            // Enter the namespace before any thread or socket exists (see netns::enter).
            if let Some(ns) = &cli.netns {
                route_mirror::netns::enter(ns)?;
            }
            let cfg = daemon::Config {
                netns: cli.netns.clone(),
                socket,
                scan_interval: Duration::from_secs_f64(scan_interval),
                rcvbuf,
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .thread_name("rm-ctl")
                .build()
                .context("starting the async runtime")?;
            rt.block_on(daemon::run(cfg))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Lookup {
            addr: None,
            batch,
            table,
            tos,
            json,
            csv,
        } => {
            let format = if json {
                BatchFormat::Json
            } else if csv {
                BatchFormat::Csv
            } else {
                BatchFormat::Text
            };
            let input: Box<dyn std::io::Read + Send> = match batch.as_deref() {
                None => Box::new(std::io::stdin()),
                Some(p) if p.as_os_str() == "-" => Box::new(std::io::stdin()),
                Some(p) => Box::new(
                    std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?,
                ),
            };
            let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
            use std::io::Write;
            if format == BatchFormat::Csv {
                writeln!(out, "{}", batch::CSV_HEADER)?;
            }
            let req = Request::LookupBatch { table, tos, format };
            let counts = client::lookup_batch(&socket, &req, input, &mut out)?;
            out.flush()?;
            if counts.errors > 0 {
                eprintln!(
                    "route-mirror: {} of {} lines were not addresses",
                    counts.errors, counts.lines
                );
                return Ok(ExitCode::from(1));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Lookup {
            addr: Some(addr),
            table,
            tos,
            json,
            ..
        } => {
            let v = call(&Request::Lookup { addr, table, tos }, short)?;
            if json {
                println!("{v}");
            } else if !v.is_null() {
                let r: view::RouteView = serde_json::from_value(v.clone())?;
                println!("{}", view::format_route(&r, true));
            } else {
                println!("no route to {addr}");
            }
            Ok(if v.is_null() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Cmd::Show {
            prefix,
            table,
            family,
            json,
        } => {
            let table = if table == "all" {
                None
            } else {
                Some(parse_table(&table).map_err(|e| anyhow!(e))?)
            };
            let req = Request::Show {
                prefix,
                table,
                family,
            };
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let mut first = true;
            use std::io::Write;
            if json {
                write!(out, "[")?;
            }
            client::call(&socket, &req, None, |item| {
                if json {
                    write!(out, "{}{item}", if first { "" } else { "," })?;
                } else {
                    let r: view::RouteView = serde_json::from_value(item)?;
                    writeln!(out, "{}", view::format_route(&r, table.is_none()))?;
                }
                first = false;
                Ok(())
            })?;
            if json {
                writeln!(out, "]")?;
            }
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Stats { json } => {
            let v = call(&Request::Stats, short)?;
            if json {
                println!("{v}");
            } else {
                print_stats(&v);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Diff { json } => {
            let v = call(&Request::Diff, None)?;
            let d: DiffReport = serde_json::from_value(v.clone())?;
            if json {
                println!("{v}");
            } else {
                print_diff(&d);
            }
            Ok(if d.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Cmd::Scan {
            wait,
            family,
            table,
            json,
        } => {
            let v = call(
                &Request::Scan {
                    wait,
                    family,
                    table,
                },
                None,
            )?;
            if json {
                println!("{v}");
            } else if wait {
                let verdicts = &v["verdicts"];
                println!(
                    "scan done in {:.1} ms: {} routes dumped; seen {}, updated {}, created {}, deleted {}",
                    v["duration_ms"].as_f64().unwrap_or(0.0),
                    v["routes_dumped"],
                    verdicts["seen"],
                    verdicts["updated"],
                    verdicts["created"],
                    verdicts["deleted"]
                );
            } else {
                println!("scan queued");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Sync => {
            call(&Request::Sync, None)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Debug(DebugCmd::DropEvents { count }) => {
            call(&Request::DropEvents { count }, short)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn init_logs(level: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

fn print_stats(v: &Value) {
    println!("source:            {}", v["source"].as_str().unwrap_or("?"));
    println!(
        "synced:            {}  (initial sync {} ms)",
        v["synced"], v["initial_sync_ms"]
    );
    println!(
        "routes:            {} in {} prefixes",
        v["routes_total"], v["prefixes_total"]
    );
    if let Some(fams) = v["routes"].as_object() {
        for (fam, tables) in fams {
            if let Some(tables) = tables.as_object() {
                for (t, n) in tables {
                    let name = t
                        .parse()
                        .ok()
                        .and_then(table::name)
                        .map_or_else(|| t.clone(), str::to_string);
                    println!("  {fam:<6} table {name:<10} {n}");
                }
            }
        }
    }
    println!(
        "links/addrs/nh:    {} / {} / {}",
        v["links"], v["addresses"], v["nexthop_objects"]
    );
    println!("attribute sets:    {}", v["attr_sets"]);
    println!("events applied:    {}", v["events_applied"]);
    println!("enobufs/resyncs:   {} / {}", v["enobufs"], v["resyncs"]);
    println!("scans:             {}", v["scans"]);
    let ver = &v["verdicts"];
    println!(
        "verdicts (routes): seen {} updated {} created {} deleted {}",
        ver["seen"], ver["updated"], ver["created"], ver["deleted"]
    );
    println!("inferred removals: {}", v["apply"]["inferred_removals"]);
    if let Some(s) = v["last_scan"].as_object() {
        println!(
            "last scan:         {} ({:.1} ms, {:.1} s ago)",
            s.get("reason").and_then(Value::as_str).unwrap_or("?"),
            s.get("duration_ms").and_then(Value::as_f64).unwrap_or(0.0),
            v["last_scan_age_s"].as_f64().unwrap_or(0.0)
        );
    }
    println!("malformed msgs:    {}", v["decode"]["malformed"]);
    println!("rcvbuf:            {}", v["rcvbuf"]);
    if let Some(rss) = v["rss_bytes"].as_u64() {
        println!("rss:               {:.1} MiB", rss as f64 / 1048576.0);
    }
}

fn print_diff(d: &DiffReport) {
    for r in &d.missing {
        println!("- kernel only: {}", view::format_route(r, true));
    }
    for r in &d.extra {
        println!("+ mirror only: {}", view::format_route(r, true));
    }
    for (k, m) in &d.differing {
        println!(
            "~ kernel: {}\n  mirror: {}",
            view::format_route(k, true),
            view::format_route(m, true)
        );
    }
    for n in &d.nexthop_details {
        println!("~ {n}");
    }
    println!(
        "{} kernel routes, {} mirrored; {} missing, {} extra, {} differing, {} nexthop differences",
        d.kernel_routes,
        d.mirror_routes,
        d.missing_count,
        d.extra_count,
        d.differing_count,
        d.nexthop_differences
    );
}
