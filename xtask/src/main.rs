//! Developer tasks for route-mirror: `cargo xtask <build|run|test|fuzz|dist>`, one file
//! per task as in aya-template.
//!
//! * `cargo xtask build [--release]` — build the whole workspace ([`build`]).
//! * `cargo xtask run [--release] [-- ARGS]` — build, then run `route-mirror run ARGS`
//!   against the host's own routing tables (through `sudo` when not root) ([`run`]).
//! * `cargo xtask test` — the full suite a fresh machine runs (what `.ci/run` calls):
//!   prerequisites (eBPF toolchain included), rustfmt, clippy, eBPF object, build,
//!   `cargo test --workspace` with the netlink source, then the core and eBPF suites with
//!   the eBPF source; when `CI=true` (or `--fuzz-seconds N`) also the fuzz run and the
//!   package check ([`test`]).
//! * `cargo xtask fuzz [--seconds N] [--target T]` — build the cargo-fuzz targets in
//!   `fuzz/` (nightly) and run each for N seconds from the committed seed corpora
//!   ([`fuzz`]).
//! * `cargo xtask dist` — release build, man pages, completions, the .deb and its
//!   `-dbgsym` ([`dist`]), held to lintian and `systemd-analyze verify`
//!   ([`package_check`]).
//!
//! Shared by all: [`paths`] (where things are) and [`process`] (running commands).

mod build;
mod build_ebpf;
mod clients;
mod dist;
mod fuzz;
mod package_check;
mod paths;
mod process;
mod run;
mod test;
mod tools;

use std::env;
use std::process::ExitCode;

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
    /// Release build, man pages, completions, the .deb and its -dbgsym (target/debian/),
    /// checked with lintian and systemd-analyze verify.
    Dist,
}

/// Fuzz seconds per target when `CI=true` and no `--fuzz-seconds` is given.
const CI_FUZZ_SECONDS: u64 = 15;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Build { release } => build::build(release),
        Cmd::Run { release, args } => run::run(release, &args),
        Cmd::Test { fuzz_seconds } => test::test(
            fuzz_seconds
                .or_else(|| (env::var("CI").as_deref() == Ok("true")).then_some(CI_FUZZ_SECONDS)),
        ),
        Cmd::Fuzz { seconds, target } => fuzz::fuzz(seconds, target.as_deref()),
        Cmd::Dist => dist::dist().and_then(|p| package_check::check_packages(&p)),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
