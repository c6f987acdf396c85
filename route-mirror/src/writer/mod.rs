//! Batched kernel writes: many route and nexthop-object requests per `sendmsg`, each
//! outcome matched back to its request by sequence number (FRR's dataplane batching,
//! `zebra/kernel_netlink.c` `nl_batch_*`).
//!
//! The kernel handles the messages of one `sendmsg` in order, inside that call, and
//! reports an error for a failed message whether or not it asked for an ACK. So only the
//! last message of each call carries `NLM_F_ACK`: errors arrive first, each naming its
//! request's sequence number, then that last ACK, and every request between without an
//! error succeeded. One failure costs only its own route. `NETLINK_CAP_ACK` keeps error
//! messages small (no copy of the request), `NETLINK_EXT_ACK` adds the kernel's reason
//! text. If the socket overruns (ENOBUFS: error reports lost), the calls' unresolved
//! requests are reported [`Outcome::Unknown`]: the caller re-checks them against its
//! mirror of the target, it never assumes success.
//!
//! The socket subscribes to nothing: the echoes of these writes reach the target
//! namespace's mirror, whose notifications carry this socket's port and the request's
//! sequence number ([`Writer::port`]).

pub mod encode;

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use netlink_sys::{protocols::NETLINK_ROUTE, Socket};
use serde::{Deserialize, Serialize};

use crate::model::{NexthopObject, RouteAttrs, RouteKey};
use crate::netlink::msg;
pub use encode::{NexthopOp, RouteOp};

/// Request bytes per `sendmsg` (~4,400 IPv4 routes). bench/floor.c on 1M IPv4 routes:
/// 256 KiB calls were 14% faster than 64 KiB ones (BENCHMARKS.md "Copies").
pub const DEFAULT_BATCH_BYTES: usize = 256 << 10;
/// Send buffer (a call's bytes must fit in it) and receive buffer (a call's error
/// reports must fit: ~1 KiB of kernel memory each, so a whole call of refusals fits).
const SOCK_BUF: usize = 8 << 20;
/// How long to wait for a call's final ACK (the kernel has already handled the call
/// when `sendmsg` returns; this bounds a kernel that has not).
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

const NLM_F_CAPPED: u16 = 0x100;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;

/// Why the kernel refused a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KernelError {
    /// Positive errno.
    pub errno: i32,
    /// The kernel's extended-ACK message (e.g. "Nexthop has invalid gateway").
    pub msg: Option<String>,
}

impl std::fmt::Display for KernelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", io::Error::from_raw_os_error(self.errno))?;
        if let Some(m) = &self.msg {
            write!(f, ": {m}")?;
        }
        Ok(())
    }
}

/// What became of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done,
    Failed(KernelError),
    /// Not known (the socket lost reports, or the call failed as a whole): re-check.
    Unknown,
}

/// Counters of one writer.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriterStats {
    pub requests: u64,
    pub sendmsg_calls: u64,
    pub bytes: u64,
    pub errors: u64,
    /// Requests whose outcome was lost (ENOBUFS, failed sendmsg, ACK timeout).
    pub unknown: u64,
    pub enobufs: u64,
}

/// A NETLINK_ROUTE socket for writing, in the namespace of the thread that opened it.
pub struct Writer {
    sock: Socket,
    port: u32,
    next_seq: u32,
    /// Requests queued for the next [`Writer::commit`], and where each starts.
    buf: Vec<u8>,
    starts: Vec<usize>,
    seqs: Vec<u32>,
    batch_bytes: usize,
    rbuf: Vec<u8>,
    pub stats: WriterStats,
}

impl Writer {
    /// Opens the socket in the calling thread's network namespace.
    pub fn open(batch_bytes: usize) -> io::Result<Writer> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        let addr = sock.bind_auto()?;
        sock.set_ext_ack(true)?;
        sock.set_cap_ack(true)?;
        for opt in [libc::SO_SNDBUFFORCE, libc::SO_RCVBUFFORCE] {
            let v = SOCK_BUF as libc::c_int;
            // SAFETY: a pointer to a live c_int with its size.
            unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    &v as *const libc::c_int as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
        }
        Ok(Writer {
            sock,
            port: addr.port_number(),
            next_seq: 1,
            buf: Vec::with_capacity(batch_bytes * 2),
            starts: Vec::new(),
            seqs: Vec::new(),
            batch_bytes: batch_bytes.max(4096),
            rbuf: Vec::with_capacity(1 << 16),
            stats: WriterStats::default(),
        })
    }

    /// This socket's netlink port: notifications caused by its requests carry it.
    pub fn port(&self) -> u32 {
        self.port
    }

    /// Requests queued and not yet committed.
    pub fn queued(&self) -> usize {
        self.starts.len()
    }

    fn next(&mut self) -> u32 {
        let s = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1).max(1);
        self.starts.push(self.buf.len());
        self.seqs.push(s);
        s
    }

    /// Queues a route request; returns its sequence number.
    pub fn route(&mut self, op: RouteOp, key: &RouteKey, attrs: &RouteAttrs) -> u32 {
        let s = self.next();
        encode::route(&mut self.buf, s, op, key, attrs);
        s
    }

    /// Queues a nexthop-object request; returns its sequence number.
    pub fn nexthop(&mut self, op: NexthopOp, nh: &NexthopObject) -> u32 {
        let s = self.next();
        encode::nexthop(&mut self.buf, s, op, nh);
        s
    }

    /// Sends everything queued, in calls of up to the batch size, and appends each
    /// request's `(seq, outcome)` to `out` in request order.
    pub fn commit(&mut self, out: &mut Vec<(u32, Outcome)>) {
        let n = self.starts.len();
        let mut i = 0;
        while i < n {
            let first = i;
            let start = self.starts[i];
            i += 1;
            while i < n && self.end_of(i) - start <= self.batch_bytes {
                i += 1;
            }
            self.call(first, i, out);
        }
        self.buf.clear();
        self.starts.clear();
        self.seqs.clear();
    }

    fn end_of(&self, i: usize) -> usize {
        self.starts.get(i + 1).copied().unwrap_or(self.buf.len())
    }

    /// One `sendmsg` of requests `first..end` and the collection of their outcomes.
    fn call(&mut self, first: usize, end: usize, out: &mut Vec<(u32, Outcome)>) {
        let last = self.starts[end - 1];
        let flags =
            u16::from_ne_bytes([self.buf[last + 6], self.buf[last + 7]]) | encode::NLM_F_ACK;
        self.buf[last + 6..last + 8].copy_from_slice(&flags.to_ne_bytes());
        let bytes = &self.buf[self.starts[first]..self.end_of(end - 1)];
        let base = out.len();
        out.extend(self.seqs[first..end].iter().map(|&s| (s, Outcome::Done)));
        self.stats.requests += (end - first) as u64;
        self.stats.sendmsg_calls += 1;
        self.stats.bytes += bytes.len() as u64;
        if let Err(e) = self.sock.send(bytes, 0) {
            tracing::warn!(error = %e, requests = end - first, "netlink sendmsg failed");
            self.unknown(&mut out[base..], |_| true);
            return;
        }
        let last_seq = self.seqs[end - 1];
        let first_seq = self.seqs[first];
        let index = |seq: u32| {
            let d = seq.wrapping_sub(first_seq) as usize;
            (d < end - first).then_some(d)
        };
        let mut resolved = vec![false; end - first];
        // Reports were lost (ENOBUFS): from then on read only what is queued.
        let mut overrun = false;
        loop {
            let wait = if overrun { Duration::ZERO } else { ACK_TIMEOUT };
            match self.recv(wait) {
                Ok(true) => {}
                Ok(false) => {
                    if !overrun {
                        tracing::warn!("no final ACK from the kernel within {ACK_TIMEOUT:?}");
                    }
                    break;
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    self.stats.enobufs += 1;
                    overrun = true;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "netlink recv failed while collecting ACKs");
                    overrun = true;
                    break;
                }
            }
            let mut done = false;
            for m in msg::messages(&self.rbuf) {
                if m.ty != msg::NLMSG_ERROR {
                    continue;
                }
                let Some((seq, err)) = parse_error(&m) else {
                    continue;
                };
                let Some(j) = index(seq) else { continue };
                resolved[j] = true;
                if let Some(e) = err {
                    self.stats.errors += 1;
                    out[base + j].1 = Outcome::Failed(e);
                }
                done |= seq == last_seq;
            }
            if done {
                break;
            }
        }
        if overrun || !resolved[end - first - 1] {
            // An error-free request sends no report, so once reports may have been lost
            // (or the final ACK never came) "no error heard" proves nothing.
            self.unknown(&mut out[base..], |j| !resolved[j]);
        }
    }

    fn unknown(&mut self, out: &mut [(u32, Outcome)], which: impl Fn(usize) -> bool) {
        for (j, o) in out.iter_mut().enumerate() {
            if which(j) && o.1 == Outcome::Done {
                o.1 = Outcome::Unknown;
                self.stats.unknown += 1;
            }
        }
    }

    /// One `recv` into `rbuf`, waiting up to `wait` for data. `Ok(false)`: nothing came.
    fn recv(&mut self, wait: Duration) -> io::Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, wait.as_millis() as i32) };
        if r == 0 {
            return Ok(false);
        }
        self.rbuf.clear();
        let cap = self.rbuf.capacity();
        // SAFETY: recv writes at most `cap` bytes into the spare capacity.
        let n = unsafe {
            libc::recv(
                self.sock.as_raw_fd(),
                self.rbuf.as_mut_ptr() as *mut libc::c_void,
                cap,
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(true);
            }
            if e.kind() == io::ErrorKind::WouldBlock {
                return Ok(false);
            }
            return Err(e);
        }
        // SAFETY: the kernel initialised the first n bytes.
        unsafe { self.rbuf.set_len((n as usize).min(cap)) };
        Ok(true)
    }
}

/// `(request seq, error)` of an NLMSG_ERROR (error `None`: an ACK). With
/// `NETLINK_CAP_ACK` the request is echoed as its 16-byte header only.
fn parse_error(m: &msg::RawMsg<'_>) -> Option<(u32, Option<KernelError>)> {
    let code = msg::error_code(m.payload)?;
    let req = m.payload.get(4..4 + msg::NLMSG_HDRLEN)?;
    let seq = u32::from_ne_bytes([req[8], req[9], req[10], req[11]]);
    if code == 0 {
        return Some((seq, None));
    }
    let mut text = None;
    if m.flags & NLM_F_ACK_TLVS != 0 {
        let skip = if m.flags & NLM_F_CAPPED != 0 {
            4 + msg::NLMSG_HDRLEN
        } else {
            4 + u32::from_ne_bytes([req[0], req[1], req[2], req[3]]) as usize
        };
        if let Some(tlvs) = m.payload.get(skip..) {
            for (ty, v) in crate::netlink::msg::attrs(tlvs).flatten() {
                if ty == NLMSGERR_ATTR_MSG {
                    let s = v.split(|&b| b == 0).next().unwrap_or(v);
                    text = Some(String::from_utf8_lossy(s).into_owned());
                }
            }
        }
    }
    Some((
        seq,
        Some(KernelError {
            errno: code,
            msg: text,
        }),
    ))
}
