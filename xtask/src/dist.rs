//! `cargo xtask dist`: the .deb (release binary, man pages, completions) and its
//! `-dbgsym` package, then the checks CI holds them to (see [`crate::package_check`]).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::build::build;
use crate::paths::{daemon_bin, target_dir};
use crate::process::{cargo, exec, probe_cargo, step};

/// The two packages `dist` makes, in `target/debian/`.
pub struct Packages {
    /// route-mirror: the stripped binary, unit, configuration, man pages, completions.
    pub deb: PathBuf,
    /// route-mirror-dbgsym: the binary's debug info under /usr/lib/debug/.build-id/.
    pub dbgsym: PathBuf,
}

/// Builds the packages: release binary (with the eBPF object), generated man pages and
/// shell completions, then `cargo deb --no-build`, which strips the binary and moves its
/// debug info (`[profile.release] debug = 1`) into the dbgsym package.
pub fn dist() -> Result<Packages> {
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
    step("debian packages");
    if !probe_cargo(&["deb", "--version"]) {
        let mut c = cargo();
        c.args(["install", "cargo-deb", "--locked"]);
        exec(c)?;
    }
    let debs = target_dir().join("debian");
    let _ = std::fs::remove_dir_all(&debs);
    let mut c = cargo();
    c.args(["deb", "-p", "route-mirror", "--no-build"]);
    exec(c)?;
    let deb = newest(&debs, "route-mirror_", "deb")?;
    let dbgsym = debian_dbgsym(&newest(&debs, "route-mirror-dbgsym_", "ddeb")?)?;
    println!(
        "packages: {}\n          {}",
        deb.display(),
        dbgsym.display()
    );
    Ok(Packages { deb, dbgsym })
}

/// The newest `{prefix}*.{ext}` in `dir`.
fn newest(dir: &Path, prefix: &str, ext: &str) -> Result<PathBuf> {
    std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
        .with_context(|| format!("no {prefix}*.{ext} in {}", dir.display()))
}

/// Rewrites cargo-deb's Ubuntu-style `-dbgsym.ddeb` as the `-dbgsym.deb` Debian's
/// dh_strip + dh_gencontrol make: `Priority: optional` (not the obsolete `extra`), a
/// strict `Depends` on the package, a `Build-Ids` field, and its doc directory a symlink
/// to the package's (copyright and changelog included). lintian faults the .ddeb as it
/// comes (unknown-priority, no-copyright-file, no-changelog).
fn debian_dbgsym(ddeb: &Path) -> Result<PathBuf> {
    let root = ddeb.with_extension("d");
    let _ = std::fs::remove_dir_all(&root);
    let mut c = Command::new("dpkg-deb");
    c.arg("--raw-extract").arg(ddeb).arg(&root);
    exec(c)?;
    let ids_dir = root.join("usr/lib/debug/.build-id");
    let mut build_ids = Vec::new();
    for sub in std::fs::read_dir(&ids_dir).with_context(|| ids_dir.display().to_string())? {
        let sub = sub?;
        for f in std::fs::read_dir(sub.path())? {
            let name = f?.file_name().to_string_lossy().into_owned();
            if let Some(rest) = name.strip_suffix(".debug") {
                build_ids.push(format!("{}{rest}", sub.file_name().to_string_lossy()));
            }
        }
    }
    build_ids.sort();
    let control_path = root.join("DEBIAN/control");
    let control = std::fs::read_to_string(&control_path)?;
    let mut package = String::new();
    let mut out = String::new();
    for line in control.lines().filter(|l| !l.trim().is_empty()) {
        let (key, value) = line.split_once(':').unwrap_or((line, ""));
        let line = match key {
            "Source" => {
                package = value.trim().to_string();
                line.to_string()
            }
            "Priority" => "Priority: optional".to_string(),
            "Recommends" => format!("Depends:{value}"),
            "Description" => format!("Description: debug symbols for {package}"),
            _ => line.to_string(),
        };
        out.push_str(&line);
        out.push('\n');
    }
    out.push_str(&format!("Build-Ids: {}\n", build_ids.join(" ")));
    std::fs::write(&control_path, out)?;
    let doc = root.join("usr/share/doc");
    std::fs::create_dir_all(&doc)?;
    std::os::unix::fs::symlink(&package, doc.join(format!("{package}-dbgsym")))?;
    let deb = ddeb.with_extension("deb");
    let mut c = Command::new("dpkg-deb");
    c.args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&root)
        .arg(&deb);
    exec(c)?;
    std::fs::remove_dir_all(&root)?;
    std::fs::remove_file(ddeb)?;
    Ok(deb)
}
