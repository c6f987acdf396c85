//! Where things are: the workspace root, cargo's target directory, built artefacts.

use std::env;
use std::path::PathBuf;

/// Repository (workspace) root: the parent of this crate's directory.
/// Prefers the runtime `CARGO_MANIFEST_DIR` (set by `cargo run`) over the
/// compile-time one, so a moved checkout sharing a target dir still works.
pub fn repo_root() -> PathBuf {
    let manifest = env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .filter(|p| p.join("Cargo.toml").is_file())
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// Cargo's target directory (honours `CARGO_TARGET_DIR`).
pub fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                repo_root().join(d)
            }
        }
        _ => repo_root().join("target"),
    }
}

/// Absolute path of the built daemon binary for a profile.
pub fn daemon_bin(release: bool) -> PathBuf {
    target_dir()
        .join(if release { "release" } else { "debug" })
        .join("route-mirror")
}

/// Path of the built eBPF object (what `route-mirror/build.rs` embeds).
pub fn ebpf_object() -> PathBuf {
    repo_root().join("route-mirror-ebpf/target/bpfel-unknown-none/release/route-mirror")
}
