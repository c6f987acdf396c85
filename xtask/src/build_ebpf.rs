//! The eBPF object: its toolchain (nightly rust-src, bpf-linker) and its build.

use std::env;
use std::process::{Command, Stdio};

use anyhow::{bail, Result};

use crate::paths::{ebpf_object, repo_root};
use crate::process::{exec, in_ci, probe, step};

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
pub fn ensure_ebpf_prerequisites() -> Result<()> {
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
    required_in_ci(r, "eBPF toolchain unavailable", "building netlink-only")
}

/// Builds `route-mirror-ebpf` (excluded from the workspace) with nightly for
/// bpfel-unknown-none. Always release: the verifier needs optimised code. Outside CI a
/// failure is a warning and the daemon builds netlink-only (build.rs embeds nothing).
pub fn build_ebpf(_release: bool) -> Result<()> {
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
    required_in_ci(
        r,
        "eBPF object not built",
        "the daemon will run netlink-only",
    )
}

/// eBPF is an accelerator: outside CI a failure is a warning (`what (error); then`);
/// CI must build the object.
fn required_in_ci(r: Result<()>, what: &str, then: &str) -> Result<()> {
    match r {
        Ok(()) => Ok(()),
        Err(e) if !in_ci() => {
            println!("warning: {what} ({e:#}); {then}");
            Ok(())
        }
        Err(e) => Err(e.context("CI must build the eBPF object")),
    }
}
