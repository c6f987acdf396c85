//! What CI holds the packages to: their contents, `lintian` with no errors and no
//! warnings, and `systemd-analyze verify` of the unit as installed.
//!
//! Warnings fail too: every lintian warning so far was a real defect (unstripped
//! binary, missing copyright notice, ...), and a tag that does not apply to a package
//! built outside the Debian archive is overridden in `contrib/debian/lintian-overrides`
//! with the reason, where a reviewer sees it. Informational tags (`I:`) are printed.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::dist::Packages;
use crate::paths::target_dir;
use crate::process::{show, step};
use crate::tools::ensure_lintian;

pub fn check_packages(p: &Packages) -> Result<()> {
    check_contents(&p.deb)?;
    lintian(&[&p.deb, &p.dbgsym])?;
    verify_unit(&p.deb)
}

/// The package must hold the binary, unit, config, man pages and completions.
fn check_contents(deb: &Path) -> Result<()> {
    step("check package contents (dpkg -c)");
    let listing = output(Command::new("dpkg").arg("-c").arg(deb))?;
    let want = [
        "./usr/bin/route-mirror",
        "./usr/lib/systemd/system/route-mirror.service",
        "./etc/route-mirror/route-mirror.toml",
        "./etc/iproute2/rt_protos.d/route-mirror.conf",
        "./usr/share/man/man1/route-mirror.1.gz",
        "./usr/share/man/man1/route-mirror-run.1.gz",
        "./usr/share/bash-completion/completions/route-mirror",
        "./usr/share/zsh/vendor-completions/_route-mirror",
        "./usr/share/fish/vendor_completions.d/route-mirror.fish",
        "./usr/share/doc/route-mirror/copyright",
        "./usr/share/doc/route-mirror/changelog.Debian.gz",
    ];
    let missing: Vec<_> = want.iter().filter(|w| !listing.contains(*w)).collect();
    if !missing.is_empty() {
        bail!("{} lacks {missing:?}:\n{listing}", deb.display());
    }
    println!("{} holds all {} expected files", deb.display(), want.len());
    Ok(())
}

/// `lintian` on the packages: any error or warning fails.
fn lintian(debs: &[&Path]) -> Result<()> {
    step("lintian");
    ensure_lintian()?;
    let mut c = Command::new("lintian");
    c.args(["--allow-root", "--display-info"]).args(debs);
    let line = show(&c);
    println!("+ {line}");
    let out = c.output().with_context(|| format!("running `{line}`"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    print!("{text}{}", String::from_utf8_lossy(&out.stderr));
    let faults = faults(&text);
    // lintian exits 2 on errors; 1 is its own failure (bad package, internal error).
    if !faults.is_empty() || !out.status.success() {
        bail!(
            "lintian: {} errors/warnings ({}); see above",
            faults.len(),
            out.status
        );
    }
    println!("lintian: no errors, no warnings");
    Ok(())
}

/// lintian's error and warning lines (`E: `, `W: `), not its informational ones.
fn faults(lintian_output: &str) -> Vec<&str> {
    lintian_output
        .lines()
        .filter(|l| l.starts_with("E: ") || l.starts_with("W: "))
        .collect()
}

/// `systemd-analyze verify` of the unit in a root holding the unpacked package, without
/// booting systemd. The root also gets what the unit relies on from the base system:
/// systemd's own units (the targets it orders against) and `/bin/kill` (ExecReload);
/// man pages resolve against the package's own (Documentation=). verify reports most
/// problems (unknown keys, bad values) on stderr yet exits 0: any output fails.
fn verify_unit(deb: &Path) -> Result<()> {
    step("systemd-analyze verify (unit as installed)");
    let root = target_dir().join("debian/verify-root");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    output(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root))?;
    let units = root.join("usr/lib/systemd/system");
    output(
        Command::new("cp")
            .args(["-an", "/usr/lib/systemd/system/."])
            .arg(&units),
    )?;
    std::fs::create_dir_all(root.join("usr/bin"))?;
    std::fs::copy("/usr/bin/kill", root.join("usr/bin/kill"))?;
    std::os::unix::fs::symlink("usr/bin", root.join("bin"))?;
    let unit = units.join("route-mirror.service");
    let mut c = Command::new("systemd-analyze");
    c.arg("verify")
        .arg(format!("--root={}", root.display()))
        .arg(&unit)
        .env("MANPATH", root.join("usr/share/man"))
        .env("SYSTEMD_LOG_COLOR", "0");
    let line = show(&c);
    println!("+ {line}");
    let out = c.output().with_context(|| format!("running `{line}`"))?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() || !said.trim().is_empty() {
        bail!("systemd-analyze verify ({}):\n{said}", out.status);
    }
    println!("{}: clean", unit.display());
    std::fs::remove_dir_all(&root)?;
    Ok(())
}

/// Runs a command, failing with its stderr if it fails; returns its stdout.
fn output(c: &mut Command) -> Result<String> {
    let line = show(c);
    let out = c.output().with_context(|| format!("running `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::faults;

    #[test]
    fn errors_and_warnings_are_faults_infos_are_not() {
        // What lintian said of the package before this check existed.
        let before = "E: route-mirror: malformed-contact Maintainer route-mirror\n\
            E: route-mirror: unstripped-binary-or-object [usr/bin/route-mirror]\n\
            W: route-mirror: description-synopsis-starts-with-article\n\
            I: route-mirror: no-md5sums-control-file\n";
        assert_eq!(faults(before).len(), 3);
        assert!(faults("I: route-mirror: hardening-no-fortify-functions\n").is_empty());
    }
}
