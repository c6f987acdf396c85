//! `cargo xtask build`: the eBPF object, then the workspace.

use anyhow::Result;

use crate::build_ebpf::build_ebpf;
use crate::process::{cargo, exec, step};

pub fn build(release: bool) -> Result<()> {
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
