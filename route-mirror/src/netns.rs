//! Entering a named network namespace (`ip netns add NAME` → /run/netns/NAME).

use std::fs::File;
use std::os::fd::AsRawFd;

use anyhow::{Context, Result};

/// Moves the calling thread into the namespace. Call it before any other thread or
/// socket exists: threads spawned later inherit it, sockets keep the one they were born in.
pub fn enter(name: &str) -> Result<()> {
    if name.contains('/') || name.is_empty() || name == "." || name == ".." {
        anyhow::bail!("invalid network namespace name {name:?}");
    }
    let path = format!("/run/netns/{name}");
    let f = File::open(&path).with_context(|| format!("network namespace {name:?} ({path})"))?;
    // SAFETY: setns on a valid fd of a namespace file.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if r != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("setns into {name:?} (needs root: CAP_SYS_ADMIN)"));
    }
    Ok(())
}

/// Runs `f` on a thread inside namespace `name` (or the caller's, for `None`) and returns
/// its result: sockets `f` opens belong to that namespace.
pub fn run_in<T: Send + 'static>(
    name: Option<String>,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    std::thread::Builder::new()
        .name("rm-netns".into())
        .spawn(move || {
            if let Some(n) = &name {
                enter(n)?;
            }
            f()
        })
        .context("spawning a thread for the namespace")?
        .join()
        .map_err(|_| anyhow::anyhow!("the namespace thread panicked"))?
}
