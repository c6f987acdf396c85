//! Developer tasks for route-mirror: `cargo xtask <build|run|test>`.
//!
//! * `cargo xtask build [--release]` — build the whole workspace.
//! * `cargo xtask run [--release] [-- ARGS]` — build, then run `route-mirror run ARGS`
//!   against the host's own routing tables (through `sudo` when not root).
//! * `cargo xtask test` — the full suite a fresh machine runs (what `.ci/run` calls):
//!   prerequisites, rustfmt, clippy, build, `cargo test --workspace`; then, when
//!   `CI=true` or `--fuzz-seconds N` is given, the fuzz run below.
//! * `cargo xtask fuzz [--seconds N] [--target T]` — build the cargo-fuzz targets in
//!   `fuzz/` (nightly) and run each for N seconds from the committed seed corpora.

use std::env;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "route-mirror developer tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the workspace (cargo build --workspace).
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Build, then run the daemon on the host's own routing tables (default socket).
    Run {
        /// Build and run the release binary.
        #[arg(long)]
        release: bool,
        /// Extra arguments passed to `route-mirror run` (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Full test suite: prerequisites, fmt, clippy, build, cargo test [, fuzz].
    Test {
        /// Also fuzz every target for this many seconds (default under CI=true: 15).
        #[arg(long, value_name = "SECS")]
        fuzz_seconds: Option<u64>,
    },
    /// Run the cargo-fuzz targets (nightly), each for a bounded time.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Only this target (default: all).
        #[arg(long)]
        target: Option<String>,
    },
}

/// Fuzz seconds per target when `CI=true` and no `--fuzz-seconds` is given.
const CI_FUZZ_SECONDS: u64 = 15;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Build { release } => build(release),
        Cmd::Run { release, args } => run(release, &args),
        Cmd::Test { fuzz_seconds } => test(
            fuzz_seconds
                .or_else(|| (env::var("CI").as_deref() == Ok("true")).then_some(CI_FUZZ_SECONDS)),
        ),
        Cmd::Fuzz { seconds, target } => fuzz(seconds, target.as_deref()),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------
// paths and process helpers

/// Repository (workspace) root: the parent of this crate's directory.
/// Prefers the runtime `CARGO_MANIFEST_DIR` (set by `cargo run`) over the
/// compile-time one, so a moved checkout sharing a target dir still works.
fn repo_root() -> PathBuf {
    let manifest = env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .filter(|p| p.join("Cargo.toml").is_file())
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// Cargo's target directory (honours `CARGO_TARGET_DIR`).
fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                repo_root().join(d)
            }
        }
        _ => repo_root().join("target"),
    }
}

/// Absolute path of the built daemon binary for a profile.
fn daemon_bin(release: bool) -> PathBuf {
    target_dir()
        .join(if release { "release" } else { "debug" })
        .join("route-mirror")
}

/// The cargo to use: the one that launched us (`$CARGO`), else `cargo` from PATH.
fn cargo() -> Command {
    let mut c = Command::new(env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo")));
    c.current_dir(repo_root());
    c
}

fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Print a step banner.
fn step(title: &str) {
    println!("\n==> {title}");
}

/// Run a command with inherited stdio; fail if it exits non-zero.
fn exec(mut cmd: Command) -> Result<()> {
    let line = show(&cmd);
    println!("+ {line}");
    let status = cmd
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("failed to start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Does `prog args..` start and exit successfully (output discarded)?
fn probe(prog: &str, args: &[&str]) -> bool {
    Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn is_root() -> bool {
    // Effective uid from /proc (avoids a libc dependency here).
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// A command that runs as root: directly when we are root, else through sudo.
fn as_root(prog: impl AsRef<std::ffi::OsStr>) -> Command {
    if is_root() {
        Command::new(prog)
    } else {
        let mut c = Command::new("sudo");
        c.arg("--preserve-env=RUST_LOG,RUST_BACKTRACE").arg(prog);
        c
    }
}

// ---------------------------------------------------------------------------
// tasks

fn build(release: bool) -> Result<()> {
    build_ebpf(release)?;
    step(&format!(
        "build workspace ({})",
        if release { "release" } else { "debug" }
    ));
    let mut c = cargo();
    c.args(["build", "--workspace"]);
    if release {
        c.arg("--release");
    }
    exec(c)
}

fn run(release: bool, args: &[String]) -> Result<()> {
    build(release)?;
    let bin = daemon_bin(release);
    if !bin.exists() {
        bail!("daemon binary not found at {}", bin.display());
    }
    step("run route-mirror on the host's routing tables (Ctrl-C to stop)");
    if !is_root() {
        println!("(not root: using sudo)");
    }
    let mut c = as_root(&bin);
    c.arg("run").args(args);
    let line = show(&c);
    println!("+ {line}");
    // Keep stdin attached so sudo can prompt for a password.
    let status = c
        .status()
        .with_context(|| format!("failed to start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` exited with {status}");
    }
    Ok(())
}

fn test(fuzz_seconds: Option<u64>) -> Result<()> {
    step("prerequisites");
    ensure_prerequisites()?;
    ensure_ebpf_prerequisites()?;

    step("rustfmt check");
    let mut c = cargo();
    c.args(["fmt", "--all", "--", "--check"]);
    exec(c)?;

    step("clippy");
    let mut c = cargo();
    c.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    exec(c)?;

    build_ebpf(false)?;

    step("build binaries");
    let mut c = cargo();
    c.args(["build", "--workspace", "--bins"]);
    exec(c)?;

    let bin = daemon_bin(false);
    if !bin.exists() {
        bail!("daemon binary not found at {} after build", bin.display());
    }

    step("cargo test");
    let mut c = cargo();
    c.args(["test", "--workspace"]);
    c.env("ROUTE_MIRROR_BIN", &bin);
    println!("  ROUTE_MIRROR_BIN={}", bin.display());
    exec(c)?;

    if let Some(secs) = fuzz_seconds.filter(|&s| s > 0) {
        fuzz(secs, None)?;
    }

    println!("\nxtask test: all steps passed");
    Ok(())
}

// ---------------------------------------------------------------------------
// fuzzing

/// The cargo-fuzz targets in fuzz/ (one per decoder of kernel or client input).
const FUZZ_TARGETS: &[&str] = &[
    "netlink_datagram",
    "route_msg",
    "link_msg",
    "addr_msg",
    "nexthop_msg",
    "ctl_request",
];

/// Optimised, with overflow checks (a wrapped length is a bug too); no sanitizer: the
/// decoders are safe Rust, a panic is the failure we look for, and uninstrumented
/// builds are faster to build (CI) and to run.
const FUZZ_FLAGS: &[&str] = &["-O", "--debug-assertions", "--sanitizer", "none"];

/// `cargo +nightly ...` through the rustup proxy, in fuzz/, without the variables the
/// outer (stable) cargo set for us.
fn nightly_cargo() -> Command {
    let mut c = Command::new("cargo");
    c.arg("+nightly")
        .current_dir(repo_root().join("fuzz"))
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("RUSTDOC")
        .env_remove("CARGO");
    c
}

fn ensure_fuzz_prerequisites() -> Result<()> {
    if !probe("rustup", &["run", "nightly", "rustc", "--version"]) {
        let mut c = Command::new("rustup");
        c.args(["toolchain", "install", "nightly", "--profile", "minimal"]);
        exec(c)?;
    }
    let ok = nightly_cargo()
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let mut c = Command::new("cargo");
        c.args(["install", "cargo-fuzz", "--locked"]);
        exec(c)?;
    }
    Ok(())
}

/// Builds the fuzz targets and runs each for `seconds` (new inputs go to a scratch
/// corpus under fuzz/target, the committed seeds in fuzz/corpus stay as they are).
/// Fails on the first crash, naming the artifact to turn into a regression test.
fn fuzz(seconds: u64, only: Option<&str>) -> Result<()> {
    step("fuzz prerequisites (nightly, cargo-fuzz)");
    ensure_fuzz_prerequisites()?;
    step("build fuzz targets");
    let mut c = nightly_cargo();
    c.args(["fuzz", "build"]).args(FUZZ_FLAGS);
    exec(c)?;
    let fuzz_dir = repo_root().join("fuzz");
    let mut summary = Vec::new();
    for t in FUZZ_TARGETS
        .iter()
        .filter(|t| only.is_none_or(|o| o == **t))
    {
        step(&format!("fuzz {t} for {seconds} s"));
        let scratch = fuzz_dir.join("target/corpus-run").join(t);
        std::fs::create_dir_all(&scratch)?;
        let mut c = nightly_cargo();
        c.args(["fuzz", "run"])
            .args(FUZZ_FLAGS)
            .arg(t)
            .arg(&scratch)
            .arg(fuzz_dir.join("corpus").join(t))
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .args(["-rss_limit_mb=2048", "-print_final_stats=1", "-timeout=10"]);
        let line = show(&c);
        println!("+ {line}");
        let out = c
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("failed to start `{line}`"))?;
        let err = String::from_utf8_lossy(&out.stderr);
        let stat = |k: &str| {
            err.lines()
                .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
                .unwrap_or_else(|| "?".into())
        };
        let execs = stat("stat::number_of_executed_units:");
        if !out.status.success() {
            let tail: Vec<&str> = err.lines().rev().take(40).collect();
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
            bail!("fuzz target {t} failed ({}): see the artifact above under fuzz/artifacts/{t}/; add it as a regression test next to the decoder", out.status);
        }
        println!("  {t}: {execs} execs, no crash");
        summary.push(format!("{t:<18} {execs:>12} execs  0 crashes"));
    }
    println!("\nfuzz summary ({seconds} s per target):");
    for l in summary {
        println!("  {l}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// prerequisites

fn ensure_prerequisites() -> Result<()> {
    // iproute2 (`ip`) and gzip (`zcat`) are used by the integration tests.
    let mut missing = Vec::new();
    if !probe("ip", &["-V"]) {
        missing.push("iproute2");
    }
    if !probe("zcat", &["--version"]) {
        missing.push("gzip");
    }
    if missing.is_empty() {
        println!("iproute2 and gzip: present");
    } else {
        println!("installing: {}", missing.join(" "));
        let mut c = as_root("apt-get");
        c.arg("update");
        exec(c)?;
        let mut c = as_root("apt-get");
        c.env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing);
        exec(c)?;
        if !probe("ip", &["-V"]) {
            bail!("`ip` still not runnable after installing iproute2");
        }
    }

    // rustfmt and clippy components.
    let mut components = Vec::new();
    if !probe_cargo(&["fmt", "--version"]) {
        components.push("rustfmt");
    }
    if !probe_cargo(&["clippy", "--version"]) {
        components.push("clippy");
    }
    if components.is_empty() {
        println!("rustfmt and clippy: present");
    } else {
        println!("installing rustup components: {}", components.join(" "));
        let mut c = Command::new("rustup");
        c.current_dir(repo_root())
            .args(["component", "add"])
            .args(&components);
        exec(c)?;
    }
    Ok(())
}

fn probe_cargo(args: &[&str]) -> bool {
    cargo()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

// ---------------------------------------------------------------------------
// eBPF extension point (not implemented yet)

/// Prerequisites of the eBPF build, called by `cargo xtask test`.
///
/// EXTENSION POINT: when `route-mirror-ebpf/` lands, this should ensure
/// `rustup toolchain install nightly --component rust-src` and
/// `cargo install bpf-linker@0.10.0 --locked` (skip when `bpf-linker --version`
/// already reports 0.10.0).
fn ensure_ebpf_prerequisites() -> Result<()> {
    Ok(())
}

/// Build the eBPF object, called before every workspace build.
///
/// EXTENSION POINT: build `route-mirror-ebpf` (excluded from the workspace) with
/// `cargo +nightly build -Z build-std=core --target bpfel-unknown-none --release`
/// in that directory, and hand the object path to the daemon build (e.g. via an
/// env var read by `include_bytes!`). Does nothing until the eBPF crate exists.
fn build_ebpf(_release: bool) -> Result<()> {
    let dir = repo_root().join("route-mirror-ebpf");
    if dir.join("Cargo.toml").exists() {
        println!(
            "note: {} exists but the eBPF build step is not wired up yet (see xtask build_ebpf)",
            dir.display()
        );
    }
    Ok(())
}
