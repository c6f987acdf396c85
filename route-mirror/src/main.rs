//! `route-mirror`: the daemon (`run`) and its client commands.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use clap::{Parser, Subcommand};
use ipnet::IpNet;
use serde_json::Value;

use route_mirror::config::{self, ConfigSource, RunArgs};
use route_mirror::copy;
use route_mirror::ctl::batch::{self, BatchFormat};
use route_mirror::ctl::lookup::FlowArgs;
use route_mirror::ctl::{self, client, proto::Request};
use route_mirror::daemon;
use route_mirror::diff::DiffReport;
use route_mirror::model::Family;
use route_mirror::shared::{LogReload, Reloadable};
use route_mirror::stats::Stats;
use route_mirror::view;

#[derive(Parser)]
#[command(
    name = "route-mirror",
    version,
    about = "An exact, always-current userspace mirror of the kernel routing tables"
)]
struct Cli {
    /// Configuration file [default: /etc/route-mirror/route-mirror.toml, if present]
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Control socket [default: /run/route-mirror/route-mirror.sock, or /run/route-mirror/NETNS.sock]
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Network namespace (`ip netns` name) to mirror (repeat it, or `all`, to mirror
    /// several at once), or whose mirror to ask
    #[arg(long, global = true, value_name = "NAME", action = clap::ArgAction::Append)]
    netns: Vec<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum FleetCmd {
    /// The route router R (`host/netns`, or `netns` alone) uses for each ADDR
    Lookup { router: String, addrs: Vec<IpAddr> },
    /// Every router's routes as JSON ({"host/netns": {"state", "seq", "routes"}})
    Dump { router: Option<String> },
    /// The routers, their state (current, stale, waiting), seq and route count
    Routers,
    /// Follow the stream: one JSON line per applied change (router, seq, op, prefix,
    /// the daemon's time_ms and the arrival time recv_ms)
    Follow,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon in the foreground
    Run(Box<RunArgs>),
    /// Read a fleet's routes from NATS JetStream (what `run --nats-url` publishes):
    /// one FIB per router, rebuilt from the stream's snapshots and changes
    Fleet {
        /// NATS server
        #[arg(long, value_name = "URL", default_value = "nats://127.0.0.1:4222")]
        nats_url: String,
        /// JetStream stream
        #[arg(long, default_value = "route-mirror")]
        stream: String,
        #[command(subcommand)]
        what: FleetCmd,
    },
    /// Validate the configuration file and print the effective configuration
    CheckConfig,
    /// Make the daemon re-read its configuration file (like SIGHUP)
    Reload,
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
        /// A plain longest match in this table (id or name) instead of the rules
        #[arg(long, value_parser = parse_table)]
        table: Option<u32>,
        /// TOS / DS field of the packet (0x10, 16, or a name like CS1)
        #[arg(long, default_value = "0", value_parser = route_mirror::fib::flow::parse_tos)]
        tos: u8,
        /// Source address (with --iif: forwarded traffic from it; without: sent from this
        /// host, so it must be one of its addresses, as for `ip route get`)
        #[arg(long, value_name = "SRC")]
        from: Option<IpAddr>,
        /// Input device: a forwarding lookup, as `ip route get ... iif DEV`
        #[arg(long, value_name = "DEV")]
        iif: Option<String>,
        /// Output device
        #[arg(long, value_name = "DEV")]
        oif: Option<String>,
        /// Look up in VRF NAME (its device as output device, as `ip route get ... vrf NAME`)
        #[arg(long, value_name = "NAME")]
        vrf: Option<String>,
        /// Firewall mark, N or N/MASK (the mark is N & MASK)
        #[arg(long, value_name = "N[/MASK]", value_parser = route_mirror::fib::flow::parse_mark)]
        mark: Option<u32>,
        /// User id of the sending socket [default: 0, as root's `ip route get`]
        #[arg(long)]
        uid: Option<u32>,
        /// IP protocol: tcp, udp, icmp, ipv6-icmp or a number
        #[arg(long, value_parser = route_mirror::fib::flow::parse_ipproto)]
        ipproto: Option<u8>,
        #[arg(long)]
        sport: Option<u16>,
        #[arg(long)]
        dport: Option<u16>,
        #[arg(long)]
        json: bool,
    },
    /// Routes in `ip route` style (PREFIX: that prefix and everything inside it), or
    /// with `rules` the policy rules in `ip rule` style
    Show {
        /// A prefix, or `rules`
        #[arg(value_name = "PREFIX|rules")]
        what: Option<String>,
        /// Table id or name, or `all` [default: main]
        #[arg(long, default_value = "main")]
        table: String,
        /// The table of VRF NAME (as `ip route show vrf NAME`)
        #[arg(long, value_name = "NAME", conflicts_with = "table")]
        vrf: Option<String>,
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
    ///
    /// With --copy NAME: dump the copy's source and target tables and compare them
    /// (through the copy's filter and rewrite); refused routes show with their reason.
    Diff {
        /// A copy or declared route set (see `route-mirror copies`)
        #[arg(long, value_name = "NAME")]
        copy: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Kernel copies and declared route sets: state, routes installed, pending and
    /// refused (by reason), verdicts, lag
    Copies {
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
    /// Follow the changes the mirror applies, live (PREFIX: routes inside it)
    Watch {
        prefix: Option<IpNet>,
        #[arg(long, value_parser = parse_table)]
        table: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    /// Knobs for tests
    #[command(subcommand, hide = true)]
    Debug(DebugCmd),
    /// Write man pages or shell completions into DIR (used by packaging)
    #[command(hide = true)]
    Generate {
        #[arg(value_enum)]
        what: Generated,
        dir: PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Generated {
    Man,
    Completions,
}

#[derive(Subcommand)]
enum DebugCmd {
    /// Discard the next N event messages (to prove that a scan repairs them)
    DropEvents { count: u64 },
    /// Single lookups one after another until STOP_FILE exists (or --max-seconds):
    /// prints their latency percentiles as JSON (bench/lookup.sh)
    LookupLatency {
        addrs: Vec<IpAddr>,
        #[arg(long)]
        stop_file: PathBuf,
        #[arg(long, default_value_t = 100)]
        interval_us: u64,
        #[arg(long, default_value_t = 600.0)]
        max_seconds: f64,
    },
    /// Write real kernel messages (dumps, then `--listen` seconds of notifications) of
    /// the namespace given by --netns into OUT/<fuzz target>/ as fuzzing seeds
    Capture {
        out: PathBuf,
        #[arg(long, default_value_t = 0.0)]
        listen: f64,
    },
}

/// A table by number or by name (built-in or from iproute2's rt_tables files).
fn parse_table(s: &str) -> Result<u32, String> {
    route_mirror::names::system()
        .parse_table(s)
        .ok_or_else(|| format!("{s:?} is not a table id or a name in rt_tables"))
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
    if !matches!(cli.cmd, Cmd::Run(_)) {
        // Client commands are filters (`route-mirror show | head`): die quietly on a closed
        // pipe like any Unix tool, instead of Rust's default of failing the next print.
        // SAFETY: restoring the default disposition of a signal has no preconditions.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
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
    if !matches!(cli.cmd, Cmd::Run(_) | Cmd::CheckConfig) && cli.netns.len() > 1 {
        anyhow::bail!("a query asks one namespace's mirror: give --netns once");
    }
    let socket = cli
        .socket
        .clone()
        .unwrap_or_else(|| ctl::default_socket(cli.netns.first().map(String::as_str)));
    let call =
        |req: &Request, timeout: Option<Duration>| client::call(&socket, req, timeout, |_| Ok(()));
    let short = Some(Duration::from_secs(30));
    let globals = (cli.config.clone(), cli.netns.clone(), cli.socket.clone());
    match cli.cmd {
        Cmd::Run(args) => {
            let source = config_source(&globals, (*args).clone());
            let file = source.effective()?;
            copy::spec::check(&file, &source.path)?;
            let log = init_logs(&file.log_level, args.log_json);
            let cfgs = daemon::Config::resolve(&file)?;
            let reloadable = std::sync::Arc::new(Reloadable {
                source,
                current: std::sync::Mutex::new(file),
                log: Some(log),
                instances: Default::default(),
            });
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .thread_name("rm-ctl")
                .build()
                .context("starting the async runtime")?;
            rt.block_on(daemon::run(cfgs, Some(reloadable)))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::CheckConfig => {
            let source = config_source(&globals, RunArgs::default());
            let file = source.effective()?;
            copy::spec::check(&file, &source.path)?;
            println!("# effective configuration ({})", source.path.display());
            print!("{}", toml::to_string(&file)?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Reload => {
            let v = call(&Request::Reload, short)?;
            let list = |k: &str| {
                v[k].as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default()
            };
            println!("reloaded {}", v["path"].as_str().unwrap_or("?"));
            println!("applied now:        {}", list("applied"));
            println!("need a restart:     {}", list("restart_required"));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Fleet {
            nats_url,
            stream,
            what,
        } => fleet_cmd(nats_url, stream, what),
        Cmd::Lookup {
            addr: None,
            batch,
            table,
            tos,
            json,
            csv,
            ..
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
            from,
            iif,
            oif,
            vrf,
            mark,
            uid,
            ipproto,
            sport,
            dport,
            json,
            ..
        } => {
            let flow = FlowArgs {
                from,
                iif,
                oif,
                vrf,
                mark,
                uid,
                ipproto,
                sport,
                dport,
            };
            let v = call(
                &Request::Lookup {
                    addr,
                    table,
                    tos,
                    flow,
                },
                short,
            )?;
            if json {
                println!("{v}");
            } else {
                println!("{}", route_mirror::ctl::lookup::format_answer(addr, &v)?);
            }
            // 0: a route the kernel would forward with; 1: no route, or the kernel answers
            // with an error (blackhole, unreachable, prohibit).
            let routed = v.get("result").and_then(|r| r.as_str()) == Some("route");
            Ok(if routed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Cmd::Show {
            what: Some(what),
            family,
            json,
            ..
        } if what == "rules" => {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            use std::io::Write;
            let mut items = Vec::new();
            client::call(&socket, &Request::ShowRules { family }, None, |item| {
                items.push(item);
                Ok(())
            })?;
            if json {
                writeln!(out, "{}", Value::Array(items))?;
            } else {
                let both = family.is_none();
                let mut last = None;
                for it in &items {
                    let f: Family = serde_json::from_value(it["family"].clone())?;
                    if both && last != Some(f) {
                        writeln!(out, "{}", route_mirror::rule::show::family_heading(f))?;
                        last = Some(f);
                    }
                    writeln!(out, "{}", it["text"].as_str().unwrap_or_default())?;
                }
            }
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Show {
            what,
            table,
            vrf,
            family,
            json,
        } => {
            let prefix = what
                .map(|w| {
                    w.parse::<IpNet>()
                        .map_err(|_| anyhow!("{w:?} is neither a prefix nor `rules`"))
                })
                .transpose()?;
            let table = if let Some(v) = &vrf {
                let r = call(&Request::VrfTable { name: v.clone() }, short)?;
                Some(
                    r.as_u64()
                        .ok_or_else(|| anyhow!("vrf {v:?}: no such VRF device"))?
                        as u32,
                )
            } else if table == "all" {
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
                print_stats(&serde_json::from_value(v)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Diff {
            copy: Some(name),
            json,
        } => {
            let v = with_progress(&socket, || call(&Request::DiffCopy { name }, None))?;
            let d: route_mirror::copy::diff::CopyDiff = serde_json::from_value(v.clone())?;
            if json {
                println!("{v}");
            } else {
                print_copy_diff(&d);
            }
            Ok(if d.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Cmd::Copies { json } => {
            let v = call(&Request::Copies, short)?;
            if json {
                println!("{v}");
            } else {
                let jobs: Vec<route_mirror::copy::status::JobStatus> = serde_json::from_value(v)?;
                print_copies(&jobs);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Diff { copy: None, json } => {
            let v = with_progress(&socket, || call(&Request::Diff, None))?;
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
            let req = Request::Scan {
                wait,
                family,
                table,
            };
            let v = with_progress(&socket, || call(&req, None))?;
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
        Cmd::Watch {
            prefix,
            table,
            json,
        } => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            client::call(&socket, &Request::Watch { prefix, table }, None, |item| {
                if json {
                    writeln!(out, "{item}")?;
                } else {
                    let w: view::WatchRecord = serde_json::from_value(item)?;
                    writeln!(out, "{}", view::format_watch(&w))?;
                }
                out.flush()?;
                Ok(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Sync => {
            with_progress(&socket, || call(&Request::Sync, None))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Generate { what, dir } => {
            use clap::CommandFactory;
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let cmd = Cli::command();
            match what {
                Generated::Man => clap_mangen::generate_to(cmd, &dir)?,
                Generated::Completions => {
                    use clap_complete::Shell;
                    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
                        clap_complete::generate_to(
                            shell,
                            &mut Cli::command(),
                            "route-mirror",
                            &dir,
                        )?;
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Debug(DebugCmd::Capture { out, listen }) => {
            if let Some(ns) = globals.1.first() {
                route_mirror::netns::enter(ns)?;
            }
            let n = route_mirror::netlink::capture::capture(
                &out,
                Duration::from_secs_f64(listen.max(0.0)),
            )?;
            println!("{n} seeds written to {}", out.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Debug(DebugCmd::LookupLatency {
            addrs,
            stop_file,
            interval_us,
            max_seconds,
        }) => {
            let v = client::lookup_latency(
                &socket,
                &addrs,
                Duration::from_micros(interval_us),
                &stop_file,
                Duration::from_secs_f64(max_seconds.max(0.0)),
            )?;
            println!("{v}");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Debug(DebugCmd::DropEvents { count }) => {
            call(&Request::DropEvents { count }, short)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The configuration file and the flags that override it.
/// Runs `f` (a request that may wait on a long scan) and, when stderr is a terminal,
/// shows what the daemon is doing meanwhile: the scan under way, routes dumped, rate.
fn with_progress<T>(socket: &std::path::Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    use std::io::IsTerminal;
    use std::sync::atomic::{AtomicBool, Ordering};
    if !std::io::stderr().is_terminal() {
        return f();
    }
    let done = std::sync::Arc::new(AtomicBool::new(false));
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
            .expect("static template"),
    );
    let poller = {
        let (done, bar, socket) = (done.clone(), bar.clone(), socket.to_owned());
        std::thread::spawn(move || {
            let mut last: Option<(u64, std::time::Instant)> = None;
            while !done.load(Ordering::Relaxed) {
                let stats = client::call(
                    &socket,
                    &Request::Stats,
                    Some(Duration::from_secs(2)),
                    |_| Ok(()),
                );
                let msg = match stats {
                    Ok(v) => match v["scan_in_progress"].as_array() {
                        Some(a) => {
                            let n = a.get(1).and_then(Value::as_u64).unwrap_or(0);
                            let rate = match last {
                                Some((m, t)) if n > m => {
                                    format!(
                                        ", {:.0} routes/s",
                                        (n - m) as f64 / t.elapsed().as_secs_f64()
                                    )
                                }
                                _ => String::new(),
                            };
                            last = Some((n, std::time::Instant::now()));
                            let reason = a.first().and_then(Value::as_str).unwrap_or("?");
                            format!("{reason} scan: {n} routes dumped{rate}")
                        }
                        None => "waiting for the mirror to catch up".to_string(),
                    },
                    Err(_) => "waiting for the daemon".to_string(),
                };
                bar.set_message(msg);
                bar.tick();
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let r = f();
    done.store(true, Ordering::Relaxed);
    let _ = poller.join();
    bar.finish_and_clear();
    r
}

/// `(--config, --netns, --socket)` as given on the command line.
type Globals = (Option<PathBuf>, Vec<String>, Option<PathBuf>);

fn config_source((config, netns, socket): &Globals, args: RunArgs) -> ConfigSource {
    ConfigSource {
        path: config
            .clone()
            .unwrap_or_else(|| PathBuf::from(config::DEFAULT_PATH)),
        must_exist: config.is_some(),
        args,
        netns: netns.clone(),
        socket: socket.clone(),
    }
}

/// Structured logs to stderr; returns a handle that changes the filter at run time.
fn init_logs(level: &str, json: bool) -> LogReload {
    use tracing_subscriber::{fmt, prelude::*, reload, EnvFilter};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let (filter, handle) = reload::Layer::new(filter);
    let fmt_layer = fmt::layer().with_writer(std::io::stderr);
    if json {
        tracing_subscriber::registry()
            .with(filter)
            .with(fmt_layer.json())
            .init();
    } else {
        tracing_subscriber::registry()
            .with(filter)
            .with(fmt_layer)
            .init();
    }
    Box::new(move |level: &str| {
        let f = EnvFilter::try_new(level).map_err(|e| anyhow!("log filter {level:?}: {e}"))?;
        handle
            .reload(f)
            .map_err(|e| anyhow!("changing the log filter: {e}"))
    })
}

/// A value as JSON prints it (`null` when absent, `1.0` for a whole float), as the
/// text form always showed these.
fn as_json(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn print_stats(s: &Stats) {
    println!("source:            {}", s.source);
    println!(
        "synced:            {}  (initial sync {} ms)",
        s.synced,
        as_json(&s.initial_sync_ms)
    );
    println!(
        "routes:            {} in {} prefixes",
        s.routes_total, s.prefixes_total
    );
    for (fam, tables) in &s.routes {
        for (t, n) in tables {
            let name = t.parse().map_or_else(
                |_| t.clone(),
                |id| route_mirror::names::system().table_name(id),
            );
            println!("  {fam:<6} table {name:<10} {n}");
        }
    }
    println!(
        "links/addrs/nh:    {} / {} / {}",
        s.links, s.addresses, s.nexthop_objects
    );
    println!(
        "rules (v4/v6):     {} / {} ({} VRFs)",
        s.rules.inet, s.rules.inet6, s.rules.vrfs
    );
    println!("attribute sets:    {}", s.attr_sets);
    println!("events applied:    {}", s.events_applied);
    println!(
        "sync lag:          {:.3} s",
        s.sync_lag_s.unwrap_or(f64::NAN)
    );
    println!("enobufs/resyncs:   {} / {}", s.enobufs, s.resyncs);
    println!("scans:             {}", s.scans);
    let ver = &s.verdicts;
    println!(
        "verdicts (routes): seen {} updated {} created {} deleted {}",
        ver.seen, ver.updated, ver.created, ver.deleted
    );
    let a = &s.apply;
    println!(
        "inferred removals: {} (confirmed by dump {}, refuted {}, awaiting dump {})",
        a.inferred_removals, a.inferred_confirmed, a.inferred_refuted, a.inferred_pending
    );
    if let Some(l) = &s.last_scan {
        println!(
            "last scan:         {} ({:.1} ms, {:.1} s ago)",
            as_json(&l.reason).trim_matches('"'),
            l.duration_ms,
            s.last_scan_age_s.unwrap_or(0.0)
        );
    }
    for j in &s.copies {
        println!(
            "copy {}:  {}, installed {}, pending {}, failing {}{}, lag p99 {} ms",
            j.name,
            j.state,
            j.installed,
            j.pending,
            j.failing,
            reasons(&j.failing_by_reason),
            j.lag.p99_ms.map_or_else(|| "-".into(), |v| v.to_string())
        );
    }
    println!("malformed msgs:    {}", s.decode.malformed);
    println!("rcvbuf:            {}", s.rcvbuf);
    if let Some(why) = &s.source_fallback {
        println!("ebpf unavailable:  {why}");
    }
    if let Some(r) = &s.ring {
        let k = |name: &str| as_json(&r.kernel.get(name));
        println!(
            "ring:              {} bytes ({} bytes memlock), high water {} ({:.2}%), pinned {}",
            r.size_bytes,
            r.memlock_bytes,
            r.high_water_bytes,
            r.high_water_fill * 100.0,
            r.pinned.as_deref().unwrap_or("no")
        );
        println!(
            "ring records:      {} read ({} bytes); kernel: {} records ({} compact), {} drops, {} truncated, {} passed",
            r.records_read, r.bytes_read, k("records"), k("compact"), k("drops"), k("truncated"), k("passed")
        );
        println!(
            "ring by type:      route +{} -{}  link +{} -{}  addr +{} -{}  nexthop +{} -{}  other {}",
            k("newroute"), k("delroute"), k("newlink"), k("dellink"), k("newaddr"),
            k("deladdr"), k("newnexthop"), k("delnexthop"), k("other")
        );
        let l = &r.lag;
        println!(
            "ring lag:          p50 {:.0} us, p90 {:.0} us, p99 {:.0} us, p99.9 {:.0} us, max {:.0} us ({} records)",
            l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us, l.count
        );
        let b = &r.batch;
        println!(
            "ring batches:      {} (mean {:.1}, p99 {}, max {}); loss resyncs {}",
            b.batches, b.mean, b.p99, b.max, r.loss_resyncs
        );
    }
    if let Some(f) = &s.bpf_fib {
        println!(
            "bpf fib:           tables {} pinned {}; {} v4 + {} v6 prefixes, {} groups, {:.1} MiB memlock",
            as_json(&f.tables),
            f.pinned.as_deref().unwrap_or("no"),
            f.prefixes_v4,
            f.prefixes_v6,
            f.groups,
            f.memlock_bytes as f64 / 1048576.0
        );
        println!(
            "bpf fib updates:   {} writes, {} deletes, {} errors; {} syncs (max {:.1} ms)",
            f.updates, f.deletes, f.errors, f.syncs, f.max_sync_ms
        );
    }
    if let Some(rss) = s.rss_bytes {
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
        let (kt, mt) = (view::format_route(k, true), view::format_route(m, true));
        if kt == mt {
            // The difference is in a field the text form leaves out: show both in full.
            let js = |r| serde_json::to_string(r).unwrap_or_default();
            println!("~ kernel: {}\n  mirror: {}", js(k), js(m));
        } else {
            println!("~ kernel: {kt}\n  mirror: {mt}");
        }
    }
    for r in &d.reordered {
        println!("^ out of order: {}", view::format_route(r, true));
    }
    for n in &d.object_details {
        println!("~ {n}");
    }
    for n in &d.rule_details {
        println!("~ {n}");
    }
    println!(
        "{} kernel routes, {} mirrored: {} matched, {} reordered, {} differing, {} missing, {} extra; {} object differences; \
         {} kernel rules, {} mirrored, {} rule differences",
        d.kernel_routes,
        d.mirror_routes,
        d.matched,
        d.reordered_count,
        d.differing_count,
        d.missing_count,
        d.extra_count,
        d.object_differences,
        d.kernel_rules,
        d.mirror_rules,
        d.rule_differences
    );
}

fn fleet_cmd(url: String, stream: String, what: FleetCmd) -> Result<ExitCode> {
    use route_mirror::fleet::{follow, Source, State};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let src = Source {
        url,
        stream,
        subject_prefix: "route-mirror".into(),
    };
    if let FleetCmd::Follow = what {
        use std::io::Write;
        let mut seen: std::collections::HashMap<String, u64> = Default::default();
        rt.block_on(follow(&src, false, |fleet, _| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            for (name, r) in &fleet.routers {
                if seen.get(name) != Some(&r.seq) {
                    seen.insert(name.clone(), r.seq);
                    let line = serde_json::json!({"router": name, "seq": r.seq,
                        "state": r.state, "routes": r.fib.len(), "time_ms": r.last_change_ms,
                        "recv_ms": now});
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "{line}");
                    let _ = out.flush();
                }
            }
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    let fleet = rt.block_on(follow(&src, true, |_, _| {}))?;
    let describe = |name: &str, r: &route_mirror::fleet::Router| {
        serde_json::json!({"router": name, "state": r.state, "seq": r.seq,
            "routes": r.fib.len(), "gaps": r.gaps, "snapshots": r.snapshots})
    };
    match what {
        FleetCmd::Routers => {
            for (name, r) in &fleet.routers {
                println!("{}", describe(name, r));
            }
            Ok(ExitCode::SUCCESS)
        }
        FleetCmd::Dump { router } => {
            let mut out = serde_json::Map::new();
            for (name, r) in &fleet.routers {
                if router
                    .as_deref()
                    .is_some_and(|x| fleet.router(x).map(|y| std::ptr::eq(y, r)) != Some(true))
                {
                    continue;
                }
                let mut v = describe(name, r);
                v["routes"] = serde_json::to_value(r.fib.routes())?;
                out.insert(name.clone(), v);
            }
            println!("{}", serde_json::Value::Object(out));
            Ok(ExitCode::SUCCESS)
        }
        FleetCmd::Lookup { router, addrs } => {
            let Some(r) = fleet.router(&router) else {
                anyhow::bail!(
                    "no router {router:?} on the stream (have: {})",
                    fleet.routers.keys().cloned().collect::<Vec<_>>().join(", ")
                );
            };
            match r.state {
                State::Current => {}
                State::Resyncing => anyhow::bail!(
                    "router {router:?} is resyncing (it lost events, or its snapshot predates its \
                     initial sync): its copy may be wrong until its resync-end"
                ),
                s => anyhow::bail!(
                    "router {router:?} has no current copy ({s:?}): wait for its next snapshot"
                ),
            }
            let mut missing = false;
            for a in addrs {
                match r.fib.lookup(a) {
                    Some(v) => println!("{}", serde_json::to_string(v)?),
                    None => {
                        missing = true;
                        println!("null");
                    }
                }
            }
            Ok(if missing {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        FleetCmd::Follow => unreachable!("handled above"),
    }
}

fn print_copy_diff(d: &route_mirror::copy::diff::CopyDiff) {
    println!(
        "copy {}: {} -> {}: {} routes wanted, {} installed",
        d.name,
        d.from.as_deref().unwrap_or("(declared)"),
        d.to,
        d.wanted,
        d.installed
    );
    if d.is_empty() {
        println!("no differences");
        return;
    }
    println!(
        "missing {}, extra {}, differing {}, reordered {}",
        d.missing_count, d.extra_count, d.differing_count, d.reordered_count
    );
    for m in &d.missing {
        let why = match (&m.reason, &m.detail) {
            (Some(r), Some(x)) => format!("  [{r}: {x}]"),
            (Some(r), None) => format!("  [{r}]"),
            _ => String::new(),
        };
        println!("- {}{why}", m.route);
    }
    for e in &d.extra {
        println!("+ {e}");
    }
    for (want, got) in &d.differing {
        println!("~ want {want}");
        println!("  have {got}");
    }
    for (want, got) in &d.reordered {
        println!("~ want in this order:");
        for r in want {
            println!("    {r}");
        }
        println!("  have:");
        for r in got {
            println!("    {r}");
        }
    }
}

/// ` (reason n, ...)`, or nothing.
fn reasons(by: &std::collections::BTreeMap<String, u64>) -> String {
    if by.is_empty() {
        return String::new();
    }
    let each: Vec<String> = by.iter().map(|(k, v)| format!("{k} {v}")).collect();
    format!(" ({})", each.join(", "))
}

fn print_copies(jobs: &[route_mirror::copy::status::JobStatus]) {
    if jobs.is_empty() {
        println!("no copies");
        return;
    }
    for j in jobs {
        println!(
            "{} ({}): {} -> {}  {}{}{}",
            j.name,
            j.kind,
            j.from.as_deref().unwrap_or("declared"),
            j.to,
            j.state,
            if j.owner { ", owner" } else { "" },
            if j.persist { "" } else { ", no persist" }
        );
        println!(
            "  installed {}  pending {}  failing {}{}",
            j.installed,
            j.pending,
            j.failing,
            reasons(&j.failing_by_reason)
        );
        let v = &j.verdicts;
        println!(
            "  verdicts: installed {} replaced {} removed {} reinstalled {} adopted {} seen {} failed {}",
            v.installed, v.replaced, v.removed, v.reinstalled, v.adopted, v.seen, v.failed
        );
        println!(
            "  foreign changes {} (deletes {}), repaired deletes {} replaces {}, retries {}",
            j.foreign_changes,
            j.foreign_deletes,
            j.repaired_deletes,
            j.repaired_replaces,
            j.retries
        );
        if j.lag.samples > 0 {
            println!(
                "  lag: p50 {} ms, p99 {} ms, max {} ms ({} samples)",
                j.lag.p50_ms.unwrap_or(0),
                j.lag.p99_ms.unwrap_or(0),
                j.lag.max_ms,
                j.lag.samples
            );
        }
        if let Some(ms) = j.initial_sync_ms {
            println!("  initial sync {ms:.0} ms");
        }
        for r in j.refused.iter().take(10) {
            println!(
                "  refused {} metric {}: {}{} (attempt {}, retry in {:.1} s)",
                r.dst,
                r.metric,
                r.reason,
                r.detail
                    .as_deref()
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default(),
                r.attempts,
                r.retry_in_s
            );
        }
    }
}
