//! `cargo xtask run`: build, then run the daemon on the host's own routing tables.

use anyhow::{bail, Context, Result};

use crate::build::build;
use crate::paths::daemon_bin;
use crate::process::{as_root, is_root, show, step};

pub fn run(release: bool, args: &[String]) -> Result<()> {
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
