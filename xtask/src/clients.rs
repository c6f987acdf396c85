//! Third-party clients and servers the export tests run against (nothing written here):
//! Debian's `nats-server` (JetStream), and a Python venv with pygnmi and nats-py.
//!
//! The venv lives in `target/test-venv`; the tests find it through
//! `ROUTE_MIRROR_TEST_PYTHON` (set by `cargo xtask test`) or at that path.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Result};

use crate::paths::target_dir;
use crate::process::{as_root, exec, probe};

/// Pinned client versions (PyPI).
const PIP_PACKAGES: [&str; 2] = ["pygnmi==0.8.15", "nats-py==2.16.0"];

/// The venv's python.
pub fn venv_python() -> PathBuf {
    target_dir().join("test-venv/bin/python")
}

/// Installs `nats-server` (apt) and the venv (pip) if missing.
pub fn ensure_clients() -> Result<()> {
    if probe("nats-server", &["--version"]) {
        println!("nats-server: present");
    } else {
        println!("installing: nats-server");
        let mut c = as_root("apt-get");
        c.arg("update");
        exec(c)?;
        let mut c = as_root("apt-get");
        c.env("DEBIAN_FRONTEND", "noninteractive").args([
            "install",
            "-y",
            "--no-install-recommends",
            "nats-server",
        ]);
        exec(c)?;
        if !probe("nats-server", &["--version"]) {
            bail!("`nats-server` still not runnable after installing it");
        }
    }
    let py = venv_python();
    let have = |pkgs: &[&str]| {
        py.is_file()
            && Command::new(&py)
                .args(["-m", "pip", "show", "-q"])
                .args(pkgs.iter().map(|p| p.split("==").next().unwrap_or(p)))
                .output()
                .is_ok_and(|o| o.status.success())
    };
    if have(&PIP_PACKAGES) {
        println!("test venv ({}): present", py.display());
        return Ok(());
    }
    if !py.is_file() {
        let python = if probe("python3", &["-c", "import venv, ensurepip"]) {
            "python3"
        } else {
            println!("installing: python3-venv");
            let mut c = as_root("apt-get");
            c.env("DEBIAN_FRONTEND", "noninteractive").args([
                "install",
                "-y",
                "--no-install-recommends",
                "python3-venv",
            ]);
            exec(c)?;
            "python3"
        };
        let mut c = Command::new(python);
        c.args(["-m", "venv"]).arg(target_dir().join("test-venv"));
        exec(c)?;
    }
    let mut c = Command::new(&py);
    c.args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
        .args(PIP_PACKAGES);
    exec(c)
}
