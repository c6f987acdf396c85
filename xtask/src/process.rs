//! Running commands: echoed, checked, quietly probed, or as root.

use std::env;
use std::ffi::OsString;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::paths::repo_root;

/// The cargo to use: the one that launched us (`$CARGO`), else `cargo` from PATH.
pub fn cargo() -> Command {
    let mut c = Command::new(env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo")));
    c.current_dir(repo_root());
    c
}

pub fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Print a step banner.
pub fn step(title: &str) {
    println!("\n==> {title}");
}

/// Run a command with inherited stdio; fail if it exits non-zero.
pub fn exec(mut cmd: Command) -> Result<()> {
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
pub fn probe(prog: &str, args: &[&str]) -> bool {
    succeeds(Command::new(prog).args(args))
}

/// Does `cargo args..` succeed (output discarded)?
pub fn probe_cargo(args: &[&str]) -> bool {
    succeeds(cargo().args(args))
}

/// Runs quietly; true if it started and exited 0.
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn is_root() -> bool {
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
pub fn as_root(prog: impl AsRef<std::ffi::OsStr>) -> Command {
    if is_root() {
        Command::new(prog)
    } else {
        let mut c = Command::new("sudo");
        c.arg("--preserve-env=RUST_LOG,RUST_BACKTRACE").arg(prog);
        c
    }
}

/// Is this a CI run (`.ci/run` sets CI=true)? There the eBPF object must build.
pub fn in_ci() -> bool {
    env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}
