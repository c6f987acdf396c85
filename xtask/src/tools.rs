//! Third-party tools the suite checks with, installed on first use: Debian packages
//! through apt, and promtool unpacked from Debian's `prometheus` package.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::paths::target_dir;
use crate::process::{as_root, exec, probe};

/// `apt-get install` the packages (after `apt-get update`), without recommends.
pub fn apt_install(packages: &[&str]) -> Result<()> {
    println!("installing: {}", packages.join(" "));
    let mut c = as_root("apt-get");
    c.arg("update");
    exec(c)?;
    let mut c = as_root("apt-get");
    c.env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "--no-install-recommends"])
        .args(packages);
    exec(c)
}

/// lintian, installed with apt when missing.
pub fn ensure_lintian() -> Result<()> {
    if !probe("lintian", &["--version"]) {
        apt_install(&["lintian"])?;
    }
    Ok(())
}

/// promtool (`promtool check metrics` lints a scrape): `$PROMTOOL`, else `promtool` on
/// PATH, else unpacked from Debian's `prometheus` package into `target/tools/`. Not
/// `apt-get install prometheus`: that package's maintainer scripts start a Prometheus
/// server on :9090 (its init script runs where systemd is not PID 1), and the suite
/// needs only the linter.
pub fn promtool() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("PROMTOOL").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    if probe("promtool", &["--version"]) {
        return Ok(PathBuf::from("promtool"));
    }
    let dir = target_dir().join("tools");
    let bin = dir.join("usr/bin/promtool");
    if !probe(&bin.to_string_lossy(), &["--version"]) {
        std::fs::create_dir_all(&dir)?;
        if !download_deb(&dir, "prometheus")? {
            let mut c = as_root("apt-get");
            c.arg("update");
            exec(c)?;
            if !download_deb(&dir, "prometheus")? {
                bail!("apt-get download prometheus failed");
            }
        }
        let deb = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("prometheus_"))
            })
            .context("no prometheus_*.deb after apt-get download")?;
        // Only ./usr/bin/promtool out of the package's tree.
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg("dpkg-deb --fsys-tarfile \"$1\" | tar -x -C \"$2\" ./usr/bin/promtool")
            .args(["sh".as_ref(), deb.as_os_str(), dir.as_os_str()]);
        exec(c)?;
        std::fs::remove_file(&deb)?;
    }
    let mut c = Command::new(&bin);
    c.arg("--version");
    exec(c)?;
    Ok(bin)
}

/// `apt-get download PACKAGE` into `dir`; false if apt could not find or fetch it.
fn download_deb(dir: &std::path::Path, package: &str) -> Result<bool> {
    let status = Command::new("apt-get")
        .args(["download", package])
        .current_dir(dir)
        .status()
        .context("running apt-get download")?;
    Ok(status.success())
}
