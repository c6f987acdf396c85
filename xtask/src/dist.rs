//! `cargo xtask dist`: the .deb (release binary, man pages, completions), and the check
//! of its contents that CI runs.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::build::build;
use crate::paths::{daemon_bin, target_dir};
use crate::process::{cargo, exec, probe_cargo, step};

/// Builds the .deb: release binary (with the eBPF object), generated man pages and
/// shell completions, then `cargo deb --no-build`. Returns the package's path.
pub fn dist() -> Result<PathBuf> {
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
pub fn check_deb(deb: &Path) -> Result<()> {
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
