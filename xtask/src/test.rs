//! `cargo xtask test`: everything CI runs, from a fresh machine's prerequisites to the
//! suite's closing summary.

use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::build_ebpf::{build_ebpf, ensure_ebpf_prerequisites};
use crate::dist::dist;
use crate::fuzz::fuzz;
use crate::package_check::check_packages;
use crate::paths::{daemon_bin, ebpf_object, repo_root};
use crate::process::{cargo, exec, probe, probe_cargo, show, step};
use crate::tools::{apt_install, promtool};

pub fn test(fuzz_seconds: Option<u64>) -> Result<()> {
    step("prerequisites");
    ensure_prerequisites()?;
    ensure_ebpf_prerequisites()?;
    // The metrics tests lint live scrapes with it.
    let promtool = promtool()?;
    crate::clients::ensure_clients()?;

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
                "exact",
                "--test",
                "watch",
                "--test",
                "copy",
                "--test",
                "rules",
                "--test",
                "multipath",
            ]);
        }
        c.env("ROUTE_MIRROR_BIN", &bin);
        c.env("ROUTE_MIRROR_SOURCE", source);
        c.env("PROMTOOL", &promtool);
        c.env("ROUTE_MIRROR_TEST_PYTHON", crate::clients::venv_python());
        println!(
            "  ROUTE_MIRROR_BIN={} ROUTE_MIRROR_SOURCE={source} PROMTOOL={}",
            bin.display(),
            promtool.display()
        );
        totals.add(exec_tests(c)?);
    }

    if std::env::var_os("CI").is_some() {
        let packages = dist()?;
        check_packages(&packages)?;
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

/// What the integration tests need from the system, and rustfmt and clippy.
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
        apt_install(&missing)?;
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
