//! Developer tasks for route-mirror: `cargo xtask <build|run|test>`.
//!
//! * `cargo xtask build [--release]` — build the whole workspace.
//! * `cargo xtask run [--release] [-- ARGS]` — build, then run `route-mirror run ARGS`
//!   against the host's own routing tables (through `sudo` when not root).
//! * `cargo xtask test` — the full suite a fresh machine runs (what `.ci/run` calls):
//!   prerequisites (eBPF toolchain included), rustfmt, clippy, eBPF object, build,
//!   `cargo test --workspace` with the netlink source, then the core and eBPF suites with
//!   the eBPF source; when `CI=true` (or `--fuzz-seconds N`) also the fuzz run and the
//!   package check.
//! * `cargo xtask fuzz [--seconds N] [--target T]` — build the cargo-fuzz targets in
//!   `fuzz/` (nightly) and run each for N seconds from the committed seed corpora.
//! * `cargo xtask dist` — release build, man pages, completions and the .deb.

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
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
    /// Full test suite: prerequisites, fmt, clippy, build, cargo test [, fuzz, dist].
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
    /// Release build, man pages, completions and the .deb (target/debian/).
    Dist,
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
        Cmd::Dist => dist().map(|_| ()),
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
    succeeds(Command::new(prog).args(args))
}

/// Runs quietly; true if it started and exited 0.
fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
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

/// Builds the .deb: release binary (with the eBPF object), generated man pages and
/// shell completions, then `cargo deb --no-build`. Returns the package's path.
fn dist() -> Result<PathBuf> {
    build(true)?;
    step("man pages and completions");
    let dist = target_dir().join("release").join("dist");
    let _ = std::fs::remove_dir_all(&dist);
    let bin = daemon_bin(true);
    for (what, dir) in [("man", "man"), ("completions", "completions")] {
        let mut c = Command::new(&bin);
        c.args(["generate", what]).arg(dist.join(dir));
        exec(c)?;
    }
    let mut c = Command::new("gzip");
    c.arg("-9nf");
    for e in std::fs::read_dir(dist.join("man"))? {
        c.arg(e?.path());
    }
    exec(c)?;
    step("debian package");
    if !probe_cargo(&["deb", "--version"]) {
        let mut c = cargo();
        c.args(["install", "cargo-deb", "--locked"]);
        exec(c)?;
    }
    let mut c = cargo();
    c.args(["deb", "-p", "route-mirror", "--no-build", "--no-strip"]);
    exec(c)?;
    let debs = target_dir().join("debian");
    let deb = std::fs::read_dir(&debs)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
        .with_context(|| format!("no .deb in {}", debs.display()))?;
    println!("package: {}", deb.display());
    Ok(deb)
}

/// The package must hold the binary, unit, config, man pages and completions.
fn check_deb(deb: &Path) -> Result<()> {
    step("check package contents (dpkg -c)");
    let out = Command::new("dpkg")
        .arg("-c")
        .arg(deb)
        .output()
        .context("running dpkg -c")?;
    let listing = String::from_utf8_lossy(&out.stdout);
    let want = [
        "./usr/bin/route-mirror",
        "./lib/systemd/system/route-mirror.service",
        "./etc/route-mirror/route-mirror.toml",
        "./usr/share/man/man1/route-mirror.1.gz",
        "./usr/share/man/man1/route-mirror-run.1.gz",
        "./usr/share/bash-completion/completions/route-mirror",
        "./usr/share/zsh/vendor-completions/_route-mirror",
        "./usr/share/fish/vendor_completions.d/route-mirror.fish",
    ];
    let missing: Vec<_> = want.iter().filter(|w| !listing.contains(*w)).collect();
    if !out.status.success() || !missing.is_empty() {
        bail!("{} lacks {missing:?}:\n{listing}", deb.display());
    }
    println!("{} holds all {} expected files", deb.display(), want.len());
    Ok(())
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

    if std::env::var_os("CI").is_some() {
        let deb = dist()?;
        check_deb(&deb)?;
    }

    if let Some(secs) = fuzz_seconds.filter(|&s| s > 0) {
        fuzz(secs, None)?;
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
    succeeds(cargo().args(args))
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
