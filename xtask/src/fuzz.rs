//! `cargo xtask fuzz`: the cargo-fuzz targets in `fuzz/` (nightly), each run for a bounded
//! time from the committed seed corpora.

use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::paths::repo_root;
use crate::process::{exec, probe, show, step};

/// The cargo-fuzz targets in fuzz/ (one per decoder of kernel or client input).
const FUZZ_TARGETS: &[&str] = &[
    "netlink_datagram",
    "route_msg",
    "link_msg",
    "addr_msg",
    "nexthop_msg",
    "ctl_request",
    "compact_record",
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
pub fn fuzz(seconds: u64, only: Option<&str>) -> Result<()> {
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
