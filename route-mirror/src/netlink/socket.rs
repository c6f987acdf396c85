//! A NETLINK_ROUTE socket that carries both the multicast events and the dumps.
//!
//! One socket for both on purpose: the kernel queues dump chunks (generated at `recv`
//! time) and notifications on the same receive queue in the order they happen, so
//! processing that queue in order gives a dump interleaved correctly with the changes
//! made while it ran. Two sockets (as BIRD and FRR use) lose that ordering.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use super::msg::{self, DumpKind};

/// Receive buffer for one `recv`: large enough for the biggest dump chunk
/// the kernel builds (it sizes them after our buffer, up to 32 KiB per skb).
pub const RECV_BUF: usize = 1 << 20;

/// The outcome of sizing the receive buffer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RcvBuf {
    /// What `--rcvbuf` asked for.
    pub requested: usize,
    /// What the kernel reports (it doubles the value for bookkeeping overhead).
    pub granted: usize,
    /// SO_RCVBUFFORCE worked; false: fell back to SO_RCVBUF, capped by rmem_max.
    pub forced: bool,
}

impl RcvBuf {
    /// The kernel doubles what it grants; anything below twice the request was capped.
    pub fn capped(&self) -> bool {
        self.granted < self.requested.saturating_mul(2).min(i32::MAX as usize)
    }
}

/// Datagrams one [`NlSocket::recv_batch`] can return.
pub const BATCH_SLOTS: usize = 16;
/// Bytes per datagram slot. The kernel sizes dump chunks after the largest buffer a
/// `recvmsg` offered, capped at 32 KiB (`netlink_recvmsg`: `max_recvmsg_len`), so each
/// slot takes a whole chunk; notifications are far smaller.
pub const SLOT: usize = 32 << 10;

/// Buffers for [`NlSocket::recv_batch`]: `BATCH_SLOTS` datagrams of up to `SLOT` bytes.
///
/// One `recvmmsg` reads every queued datagram (up to the slots): the netlink source
/// receives one datagram per notification, and a `recv` each was a syscall per route
/// change (BENCHMARKS.md). Allocated by the first call, reused by every later one
/// (`Default` allocates nothing, so `mem::take` is free).
pub struct RecvBatch {
    buf: Vec<u8>,
    lens: [usize; BATCH_SLOTS],
    count: usize,
    /// Datagrams the kernel cut to fit a slot (their tail is lost: resync).
    pub truncated: u64,
}

impl Default for RecvBatch {
    fn default() -> Self {
        RecvBatch {
            buf: Vec::new(),
            lens: [0; BATCH_SLOTS],
            count: 0,
            truncated: 0,
        }
    }
}

impl RecvBatch {
    /// Datagrams read by the last call.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Datagram `i` of the last call.
    pub fn get(&self, i: usize) -> &[u8] {
        let start = i * SLOT;
        &self.buf[start..start + self.lens[i].min(SLOT)]
    }
}

pub struct NlSocket {
    sock: Socket,
    port: u32,
    seq: u32,
}

impl NlSocket {
    /// Opens a NETLINK_ROUTE socket in the calling thread's network namespace.
    pub fn open() -> io::Result<NlSocket> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        let addr = sock.bind_auto()?;
        // Strict checking makes the kernel honour the family/table filters of dumps.
        sock.set_netlink_get_strict_chk(true)?;
        sock.set_ext_ack(true)?;
        sock.set_non_blocking(true)?;
        Ok(NlSocket {
            sock,
            port: addr.port_number(),
            seq: 0,
        })
    }

    /// Our netlink port id: dump replies carry it, notifications carry the originator's.
    pub fn port(&self) -> u32 {
        self.port
    }

    /// Sets the receive buffer, bypassing `rmem_max` when allowed (SO_RCVBUFFORCE needs
    /// CAP_NET_ADMIN). Returns the size the kernel granted (it doubles the request).
    pub fn set_rcvbuf(&self, bytes: usize) -> io::Result<usize> {
        let val = bytes.min(i32::MAX as usize) as libc::c_int;
        if setsockopt_int(self.fd(), libc::SO_RCVBUFFORCE, val).is_err() {
            setsockopt_int(self.fd(), libc::SO_RCVBUF, val)?;
        }
        self.sock.get_rx_buf_sz()
    }

    /// Notifications the kernel dropped for this socket (`sk_drops`, via SO_MEMINFO).
    ///
    /// ENOBUFS is reported only when the socket *becomes* congested; while it stays
    /// congested (until its queue is empty after a `recv`, which never happens while a
    /// dump is running) further notifications are dropped silently. This counter sees
    /// every one of them.
    pub fn drops(&self) -> io::Result<u32> {
        let mut info = [0u32; libc::SK_MEMINFO_DROPS as usize + 1];
        let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
        // SAFETY: the kernel writes at most `len` bytes into `info`.
        let r = unsafe {
            libc::getsockopt(
                self.fd(),
                libc::SOL_SOCKET,
                libc::SO_MEMINFO,
                info.as_mut_ptr() as *mut libc::c_void,
                &mut len,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(info[libc::SK_MEMINFO_DROPS as usize])
    }

    /// [`NlSocket::set_rcvbuf`], also telling whether SO_RCVBUFFORCE was allowed. Without
    /// it (no CAP_NET_ADMIN) the kernel caps SO_RCVBUF at `net.core.rmem_max`, silently:
    /// the caller must compare `granted` with what it asked for.
    pub fn set_rcvbuf_checked(&self, bytes: usize) -> io::Result<RcvBuf> {
        let val = bytes.min(i32::MAX as usize) as libc::c_int;
        let forced = match setsockopt_int(self.fd(), libc::SO_RCVBUFFORCE, val) {
            Ok(()) => true,
            Err(_) => {
                setsockopt_int(self.fd(), libc::SO_RCVBUF, val)?;
                false
            }
        };
        Ok(RcvBuf {
            requested: bytes,
            granted: self.sock.get_rx_buf_sz()?,
            forced,
        })
    }

    pub fn rcvbuf(&self) -> io::Result<usize> {
        self.sock.get_rx_buf_sz()
    }

    pub fn subscribe(&self, groups: &[u32]) -> io::Result<()> {
        for &g in groups {
            self.sock.add_membership(g)?;
        }
        Ok(())
    }

    /// Sends a dump request and returns its sequence number.
    pub fn request_dump(&mut self, kind: DumpKind) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1).max(1);
        let req = msg::dump_request(kind, self.seq);
        let kernel = SocketAddr::new(0, 0);
        self.sock.send_to(&req, &kernel, 0)?;
        Ok(self.seq)
    }

    /// One non-blocking `recv`. `Ok(0)` never happens on netlink; `WouldBlock` means
    /// the queue is empty; `ENOBUFS` means notifications were dropped.
    pub fn recv(&self, buf: &mut Vec<u8>) -> io::Result<usize> {
        buf.clear();
        let cap = buf.capacity();
        // SAFETY: recv writes at most `cap` bytes into the vector's spare capacity,
        // and we only expose the bytes it reports as written.
        let n = unsafe {
            libc::recv(
                self.fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                cap,
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        // SAFETY: the kernel initialised the first n bytes.
        unsafe { buf.set_len(n.min(cap)) };
        Ok(n)
    }

    /// Reads every queued datagram, up to [`BATCH_SLOTS`], with one non-blocking
    /// `recvmmsg`. Errors as [`NlSocket::recv`] (an error after some datagrams is
    /// reported by the next call, as `recvmmsg` does).
    pub fn recv_batch(&self, b: &mut RecvBatch) -> io::Result<usize> {
        recv_batch_fd(self.fd(), b)
    }

    /// Blocks (with `poll`) until the socket is readable or `timeout_ms` passes.
    pub fn wait_readable(&self, timeout_ms: i32) -> io::Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(e);
        }
        Ok(r > 0)
    }

    pub fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

/// [`NlSocket::recv_batch`] on a raw fd: the dump reader thread reads the core's socket
/// this way while the core does not (see `daemon::reader`).
pub fn recv_batch_fd(fd: RawFd, b: &mut RecvBatch) -> io::Result<usize> {
    b.count = 0;
    if b.buf.len() < BATCH_SLOTS * SLOT {
        b.buf = vec![0; BATCH_SLOTS * SLOT];
    }
    let base = b.buf.as_mut_ptr();
    // SAFETY: zeroed iovec/mmsghdr are valid (null pointers, zero lengths).
    let mut iov: [libc::iovec; BATCH_SLOTS] = unsafe { std::mem::zeroed() };
    let mut hdrs: [libc::mmsghdr; BATCH_SLOTS] = unsafe { std::mem::zeroed() };
    for i in 0..BATCH_SLOTS {
        iov[i] = libc::iovec {
            // SAFETY: slot i lies inside `buf` (BATCH_SLOTS * SLOT bytes).
            iov_base: unsafe { base.add(i * SLOT) } as *mut libc::c_void,
            iov_len: SLOT,
        };
        hdrs[i].msg_hdr.msg_iov = &mut iov[i];
        hdrs[i].msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: BATCH_SLOTS valid headers, each pointing at its own slot of `buf`.
    let n = unsafe {
        libc::recvmmsg(
            fd,
            hdrs.as_mut_ptr(),
            BATCH_SLOTS as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    for (i, h) in hdrs.iter().take(n).enumerate() {
        b.lens[i] = h.msg_len as usize;
        if h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 || h.msg_len as usize > SLOT {
            b.truncated += 1;
        }
    }
    b.count = n;
    Ok(n)
}

fn setsockopt_int(fd: RawFd, opt: libc::c_int, val: libc::c_int) -> io::Result<()> {
    // SAFETY: passes a pointer to a live c_int with its exact size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            &val as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::RcvBuf;

    #[test]
    fn capped_compares_with_the_doubled_request() {
        let rb = |requested, granted| RcvBuf {
            requested,
            granted,
            forced: false,
        };
        assert!(!rb(65536, 131072).capped());
        assert!(rb(128 << 20, 425984).capped());
        assert!(!rb(usize::MAX, i32::MAX as usize).capped());
    }
}
