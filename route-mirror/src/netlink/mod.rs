//! The netlink source: one NETLINK_ROUTE socket per mirrored namespace carrying both
//! multicast events and dumps ([`socket`]), framing ([`msg`]) and decoding ([`decode`],
//! [`nexthop`]).

pub mod capture;
pub mod decode;
pub mod msg;
pub mod netconf;
pub mod nexthop;
pub mod route;
pub mod rule;
pub mod socket;
pub mod vrf;

use std::io;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::intern::Interner;
use crate::model::Change;
use msg::DecodeCounters;
use msg::DumpKind;
use socket::NlSocket;

#[derive(Debug, Error)]
pub enum DumpError {
    #[error("netlink socket: {0}")]
    Io(#[from] io::Error),
    #[error("kernel refused the {kind:?} dump: {err}")]
    Refused { kind: DumpKind, err: io::Error },
    #[error("{kind:?} dump did not finish within {secs} s")]
    Timeout { kind: DumpKind, secs: u64 },
}

/// Runs one dump to completion on a private socket (no events on it) and appends the
/// decoded entries. Used where an independent view of the kernel is the point: `diff`.
/// Route attributes go through `interner`, so a million dumped routes share a few
/// thousand attribute allocations instead of owning one each.
pub fn dump_blocking(
    sock: &mut NlSocket,
    kind: DumpKind,
    counters: &mut DecodeCounters,
    interner: &mut Interner,
    out: &mut Vec<Change>,
) -> Result<(), DumpError> {
    dump_blocking_counting(sock, kind, counters, interner, out).map(|_| ())
}

/// [`dump_blocking`], returning how many other messages (notifications, when the
/// socket is subscribed) arrived while the dump ran: a dump that overlapped a change
/// may have skipped entries (IPv6 dumps resume by count and set no NLM_F_DUMP_INTR).
pub fn dump_blocking_counting(
    sock: &mut NlSocket,
    kind: DumpKind,
    counters: &mut DecodeCounters,
    interner: &mut Interner,
    out: &mut Vec<Change>,
) -> Result<u64, DumpError> {
    dump_raw(sock, kind, |m| match decode::decode(m, counters) {
        Ok(Some(Change::NewRoute { mut route, flags })) => {
            route.attrs = interner.intern(route.attrs);
            out.push(Change::NewRoute { route, flags });
        }
        Ok(Some(c)) => out.push(c),
        Ok(None) => {}
        Err(_) => counters.malformed += 1,
    })
}

/// Runs one dump to completion, handing each of its messages (undecoded) to `each`.
/// Returns how many other messages arrived meanwhile (see [`dump_blocking_counting`]).
pub fn dump_raw(
    sock: &mut NlSocket,
    kind: DumpKind,
    mut each: impl FnMut(&msg::RawMsg<'_>),
) -> Result<u64, DumpError> {
    let mut others = 0u64;
    let seq = sock.request_dump(kind)?;
    let mut buf = Vec::with_capacity(socket::RECV_BUF);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match sock.recv(&mut buf) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    return Err(DumpError::Timeout { kind, secs: 120 });
                }
                sock.wait_readable(1000)?;
                continue;
            }
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
        for m in msg::messages(&buf) {
            if m.seq != seq || m.port != sock.port() {
                others += 1;
                continue;
            }
            match m.ty {
                msg::NLMSG_DONE => return Ok(others),
                msg::NLMSG_ERROR => {
                    let code = msg::error_code(m.payload).unwrap_or(libc::EIO);
                    if code == 0 {
                        continue;
                    }
                    return Err(DumpError::Refused {
                        kind,
                        err: io::Error::from_raw_os_error(code),
                    });
                }
                _ => each(&m),
            }
        }
    }
}
