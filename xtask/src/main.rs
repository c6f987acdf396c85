//! Developer tasks for route-mirror: `cargo xtask <build|run|test>`.
//!
//! * `cargo xtask build [--release]` — build the whole workspace.
//! * `cargo xtask run [--release] [-- ARGS]` — build, then run `route-mirror run ARGS`
//!   against the host's own routing tables (through `sudo` when not root).
//! * `cargo xtask test` — the full suite a fresh machine runs (what `.ci/run` calls):
//!   prerequisites (eBPF toolchain included), rustfmt, clippy, eBPF object, build,
//!   `cargo test --workspace` with the netlink source, then the core and eBPF suites with
//!   the eBPF source.

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
    /// Full test suite: prerequisites, fmt, clippy, build, cargo test.
    Test,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Build { release } => build(release),
        Cmd::Run { release, args } => run(release, &args),
        Cmd::Test => test(),
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

fn test() -> Result<()> {
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

    // The core suite runs once per source; the eBPF one only if the object was built
    // (in CI a missing object already failed above).
    let mut sources = vec!["netlink"];
    if ebpf_object().is_file() {
        sources.push("ebpf");
    } else {
        println!("note: no eBPF object: the suite runs with the netlink source only");
    }
    let mut totals = TestTotals::default();
    for source in sources {
        step(&format!("cargo test (source {source})"));
        let mut c = cargo();
        c.args(["test", "--workspace"]);
        if source != "netlink" {
            // Unit tests and the source-independent suites ran in the first pass.
            c.args([
                "-p",
                "route-mirror-tests",
                "--test",
                "mirror",
                "--test",
                "watch",
            ]);
        }
        c.env("ROUTE_MIRROR_BIN", &bin);
        c.env("ROUTE_MIRROR_SOURCE", source);
        println!(
            "  ROUTE_MIRROR_BIN={} ROUTE_MIRROR_SOURCE={source}",
            bin.display()
        );
        totals.add(exec_tests(c)?);
    }

    println!("\nxtask test: all steps passed");
    // The closing line sums every test binary (cargo's own last line is often a
    // doc-test run with 0 tests, which says nothing about the suite).
    println!(
        "summary: {} passed, {} failed, {} skipped",
        totals.passed, totals.failed, totals.ignored
    );
    Ok(())
}

/// Counts from cargo test's `test result:` lines.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct TestTotals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl TestTotals {
    fn add(&mut self, o: TestTotals) {
        self.passed += o.passed;
        self.failed += o.failed;
        self.ignored += o.ignored;
    }

    /// Adds the counts of one `test result: ok. 3 passed; 0 failed; 1 ignored; ...` line.
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result:") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

/// Like [`exec`] for `cargo test`: streams its output and totals the results.
fn exec_tests(mut cmd: Command) -> Result<TestTotals> {
    use std::io::{BufRead, BufReader};
    let line = show(&cmd);
    println!("+ {line}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("failed to start `{line}`"))?;
    let mut totals = TestTotals::default();
    if let Some(out) = child.stdout.take() {
        for l in BufReader::new(out).lines() {
            let l = l.context("reading test output")?;
            println!("{l}");
            totals.add_line(&l);
        }
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for `{line}`"))?;
    if !status.success() {
        println!(
            "summary: {} passed, {} failed, {} skipped",
            totals.passed,
            totals.failed.max(1),
            totals.ignored
        );
        bail!("`{line}` failed ({status})");
    }
    Ok(totals)
}

// ---------------------------------------------------------------------------
// prerequisites

fn ensure_prerequisites() -> Result<()> {
    // iproute2 (`ip`), gzip (`zcat`) and bpftool are used by the integration tests.
    let mut missing = Vec::new();
    if !probe("ip", &["-V"]) {
        missing.push("iproute2");
    }
    if !probe("zcat", &["--version"]) {
        missing.push("gzip");
    }
    // bpftool: the BPF FIB test reads the pinned maps back through the kernel with it.
    if !probe("bpftool", &["version"]) {
        missing.push("bpftool");
    }
    if missing.is_empty() {
        println!("iproute2, gzip and bpftool: present");
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
// eBPF

/// Is this a CI run (`.ci/run` sets CI=true)? There the eBPF object must build.
fn in_ci() -> bool {
    env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

fn bpf_linker_ok() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("0.10.0"))
        .unwrap_or(false)
}

/// Prerequisites of the eBPF build: nightly's rust-src and bpf-linker 0.10.0 (newer
/// releases want a system LLVM 21+ and fail to link here; see the eBPF notes).
fn ensure_ebpf_prerequisites() -> Result<()> {
    let r = (|| -> Result<()> {
        if !probe("rustup", &["run", "nightly", "rustc", "--version"]) {
            bail!("no nightly toolchain (rustup toolchain install nightly)");
        }
        let mut c = Command::new("rustup");
        c.args(["component", "add", "rust-src", "--toolchain", "nightly"]);
        exec(c)?;
        if bpf_linker_ok() {
            println!("bpf-linker 0.10.0: present");
        } else {
            let mut c = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
            c.args(["install", "bpf-linker@0.10.0", "--locked"]);
            exec(c)?;
        }
        Ok(())
    })();
    match r {
        Ok(()) => Ok(()),
        Err(e) if !in_ci() => {
            println!("warning: eBPF toolchain unavailable ({e:#}); building netlink-only");
            Ok(())
        }
        Err(e) => Err(e.context("CI must build the eBPF object")),
    }
}

/// Path of the built eBPF object (what `route-mirror/build.rs` embeds).
fn ebpf_object() -> PathBuf {
    repo_root().join("route-mirror-ebpf/target/bpfel-unknown-none/release/route-mirror")
}

/// Builds `route-mirror-ebpf` (excluded from the workspace) with nightly for
/// bpfel-unknown-none. Always release: the verifier needs optimised code. Outside CI a
/// failure is a warning and the daemon builds netlink-only (build.rs embeds nothing).
fn build_ebpf(_release: bool) -> Result<()> {
    let dir = repo_root().join("route-mirror-ebpf");
    if !dir.join("Cargo.toml").exists() {
        return Ok(());
    }
    step("build eBPF object (nightly, bpf-linker)");
    let r = (|| -> Result<()> {
        if !bpf_linker_ok() {
            bail!("bpf-linker 0.10.0 not found (cargo install bpf-linker@0.10.0 --locked)");
        }
        let mut c = Command::new("rustup");
        c.current_dir(&dir)
            .args(["run", "nightly", "cargo", "build", "-Z", "build-std=core"])
            .args(["--target", "bpfel-unknown-none", "--release"])
            // The outer cargo's settings must not leak into the nightly build.
            .env_remove("RUSTC")
            .env_remove("RUSTC_WRAPPER")
            .env_remove("CARGO")
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("RUSTUP_TOOLCHAIN");
        exec(c)?;
        if !ebpf_object().is_file() {
            bail!("{} missing after the build", ebpf_object().display());
        }
        println!("eBPF object: {}", ebpf_object().display());
        Ok(())
    })();
    match r {
        Ok(()) => Ok(()),
        Err(e) if !in_ci() => {
            println!("warning: eBPF object not built ({e:#}); the daemon will run netlink-only");
            Ok(())
        }
        Err(e) => Err(e.context("CI must build the eBPF object")),
    }
}

#[cfg(test)]
mod tests {
    use super::TestTotals;

    #[test]
    fn totals_sum_result_lines() {
        let mut t = TestTotals::default();
        t.add_line("test result: ok. 31 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.91s");
        t.add_line(
            "test result: FAILED. 3 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out",
        );
        t.add_line("running 3 tests");
        assert_eq!(
            t,
            TestTotals {
                passed: 34,
                failed: 1,
                ignored: 2
            }
        );
    }
}
