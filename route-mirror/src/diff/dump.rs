//! The kernel's side of `diff`: every dump the comparison needs, on a private socket,
//! and the dump/barrier/compare loop.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use super::canon::{kernel_state, mirror_state, State};
use super::{compare, DiffReport};
use crate::model::Family;
use crate::netlink::{self, msg::DumpKind, socket::NlSocket};
use crate::shared::Shared;

/// How many times `diff` dumps and compares while changes race with it.
pub const DIFF_TRIES: usize = 5;

/// `route-mirror diff`: dump, barrier, compare. A change the kernel makes after the
/// dump but before the comparison reaches the mirror (through the barrier) and not the
/// dump: a false difference (seen as a `local fe80::` route whose DAD finished in that
/// window). The dump's socket stays subscribed until the comparison is done; a
/// difference found while it heard of a change is checked again.
pub async fn against_kernel(shared: &Arc<Shared>) -> Result<Option<DiffReport>> {
    let mut report = None;
    for _ in 0..DIFF_TRIES {
        let ns = shared.netns.clone();
        let (kernel, watch) =
            tokio::task::spawn_blocking(move || crate::netns::run_in(ns, dump_kernel)).await??;
        shared.barrier().await?;
        let sh = shared.clone();
        let (r, changed) = tokio::task::spawn_blocking(move || {
            let mirror = mirror_state(&sh.mirror.read().expect("mirror lock"));
            (compare(&kernel, &mirror), heard_changes(&watch))
        })
        .await
        .context("diff task failed")?;
        let settled = r.is_empty() || !changed;
        report = Some(r);
        if settled {
            break;
        }
    }
    Ok(report)
}

/// Dumps the kernel until a dump ran with no change notified meanwhile (at most 10
/// tries, then until two consecutive dumps agree): an IPv6 route dump that overlaps a
/// change can skip an entry that existed throughout (the fib6 walker resumes by
/// count, without NLM_F_DUMP_INTR). `diff` then reported a route the mirror rightly
/// holds as "mirror only" (a link-local `local fe80::` route whose DAD finished during
/// the dump: the flaky j_forced_overrun_resyncs).
///
/// Returns the state and its socket, still subscribed: [`heard_changes`] tells whether
/// the kernel changed anything since.
pub fn dump_kernel() -> Result<(State, NlSocket)> {
    let mut prev: Option<(State, NlSocket)> = None;
    for attempt in 0..10 {
        let (state, quiet, sock) = match dump_once() {
            Ok(r) => r,
            // The subscribed socket overran: changes were racing; try again.
            Err(e) if attempt < 9 && is_enobufs(&e) => {
                std::thread::sleep(Duration::from_millis(20 * (attempt + 1)));
                continue;
            }
            Err(e) => return Err(e),
        };
        if quiet || prev.as_ref().is_some_and(|(p, _)| *p == state) {
            return Ok((state, sock));
        }
        prev = Some((state, sock));
        std::thread::sleep(Duration::from_millis(20 * (attempt + 1)));
    }
    prev.ok_or_else(|| anyhow::anyhow!("the kernel refused every dump"))
}

/// Whether notifications reached `sock` since its dump ended (drains them).
pub fn heard_changes(sock: &NlSocket) -> bool {
    let mut buf = Vec::with_capacity(netlink::socket::RECV_BUF);
    let mut heard = false;
    loop {
        match sock.recv(&mut buf) {
            Ok(0) => return heard,
            Ok(_) => heard = true,
            // An overrun means changes too.
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => heard = true,
            Err(_) => return heard,
        }
    }
}

fn is_enobufs(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(c.downcast_ref::<netlink::DumpError>(), Some(netlink::DumpError::Io(io)) if io.raw_os_error() == Some(libc::ENOBUFS))
            || c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.raw_os_error() == Some(libc::ENOBUFS))
    })
}

/// One dump of everything compared, on a private socket subscribed to every group the
/// mirror follows; `true` if no notification arrived while it ran; the socket.
fn dump_once() -> Result<(State, bool, NlSocket)> {
    let mut sock = NlSocket::open().context("opening a netlink socket for diff")?;
    sock.subscribe(&route_mirror_common::groups::ALL)
        .context("subscribing the diff socket")?;
    let _ = sock.set_rcvbuf(32 << 20);
    let mut msgs: Vec<(u16, Vec<u8>)> = Vec::new();
    let mut others = 0;
    let mut kinds = vec![DumpKind::Links];
    for f in Family::ALL {
        kinds.push(DumpKind::Addrs(f));
        kinds.push(DumpKind::Netconf(f));
    }
    kinds.push(DumpKind::Nexthops);
    for f in Family::ALL {
        kinds.push(DumpKind::Rules(f));
    }
    for f in Family::ALL {
        kinds.push(DumpKind::Routes(f, None));
    }
    for kind in kinds {
        match netlink::dump_raw(&mut sock, kind, |m| msgs.push((m.ty, m.payload.to_vec()))) {
            Ok(n) => others += n,
            // Kernels without nexthop objects refuse that dump; the rest still compares.
            Err(netlink::DumpError::Refused { .. }) if kind == DumpKind::Nexthops => {}
            Err(e) => return Err(e.into()),
        }
    }
    // Notifications still queued arrived after the last DONE; they may have raced too.
    let late = heard_changes(&sock);
    Ok((kernel_state(&msgs), others == 0 && !late, sock))
}
