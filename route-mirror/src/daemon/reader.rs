//! Reads a dump's replies on a second thread while the core applies the previous ones.
//!
//! The kernel builds a dump's next chunk inside the `recv` that takes the previous one,
//! so with one thread the initial sync was the kernel's dump time *plus* our decoding
//! and marking (~0.6 µs a route): 1.7x the `dump-floor` program that only reads. With
//! this reader the kernel builds chunks (on this thread, in its `recvmmsg`) while the
//! core decodes and marks the ones already read (on the core thread), so a sync costs
//! about the larger of the two (BENCHMARKS.md, issue 14).
//!
//! Order is kept: the reader hands whole batches over in the order it read them and
//! the core processes them in that order, exactly as if it had read them itself. The
//! reader only runs between a dump request and the datagram that ends that dump (or
//! the first error, or an empty queue, which the core then handles as before); outside
//! dumps the core reads the socket itself. A few batches are in flight at most (a pool
//! of buffers), so a core that falls behind holds the kernel back instead of growing.

use std::io;
use std::os::fd::RawFd;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::time::Duration;

use crate::netlink::msg;
use crate::netlink::socket::{recv_batch_fd, RecvBatch};

/// Batches read ahead of the core (each up to 16 chunks of 32 KiB).
const IN_FLIGHT: usize = 3;

/// One read: the batch, when its `recvmmsg` started (CLOCK_MONOTONIC ns; the ring's
/// ordering rule needs it), and what it returned.
pub struct Read {
    pub rx: RecvBatch,
    pub started: u64,
    pub result: io::Result<usize>,
    /// The reader stopped after this one (dump ended, error, empty queue).
    pub last: bool,
}

struct Start {
    fd: RawFd,
    port: u32,
    seq: u32,
}

pub struct DumpReader {
    start: Sender<Start>,
    reads: Receiver<Read>,
    free: SyncSender<RecvBatch>,
    /// Between `start` and the read marked `last`.
    active: bool,
}

impl DumpReader {
    pub fn spawn(name: &str) -> io::Result<DumpReader> {
        let (start_tx, start_rx) = mpsc::channel::<Start>();
        let (read_tx, read_rx) = mpsc::sync_channel::<Read>(IN_FLIGHT);
        let (free_tx, free_rx) = mpsc::sync_channel::<RecvBatch>(IN_FLIGHT + 1);
        for _ in 0..IN_FLIGHT {
            let _ = free_tx.try_send(RecvBatch::default());
        }
        std::thread::Builder::new()
            .name(format!("rm-dump-{name}"))
            .spawn(move || {
                while let Ok(s) = start_rx.recv() {
                    if !read_dump(&s, &read_tx, &free_rx) {
                        return;
                    }
                }
            })?;
        Ok(DumpReader {
            start: start_tx,
            reads: read_rx,
            free: free_tx,
            active: false,
        })
    }

    /// Starts reading the replies of dump `seq` (just requested on `fd`, port `port`).
    pub fn start(&mut self, fd: RawFd, port: u32, seq: u32) {
        self.active = self.start.send(Start { fd, port, seq }).is_ok();
    }

    /// Reading for the core: true until the core has taken the last read.
    pub fn active(&self) -> bool {
        self.active
    }

    /// The next read, waiting up to `timeout`; None on timeout.
    pub fn next(&mut self, timeout: Duration) -> Option<Read> {
        match self.reads.recv_timeout(timeout) {
            Ok(r) => {
                if r.last {
                    self.active = false;
                }
                Some(r)
            }
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                self.active = false;
                None
            }
        }
    }

    /// Gives a processed batch back for reuse.
    pub fn recycle(&self, rx: RecvBatch) {
        let _ = self.free.try_send(rx);
    }
}

/// Reads until the dump ends; false when the core has gone.
fn read_dump(s: &Start, out: &SyncSender<Read>, free: &Receiver<RecvBatch>) -> bool {
    loop {
        let Ok(mut rx) = free.recv() else {
            return false;
        };
        let started = crate::ebpf::monotonic_ns();
        let result = recv_batch_fd(s.fd, &mut rx);
        let last = match &result {
            Ok(_) => ends_dump(&rx, s.port, s.seq),
            // Interrupted: try again; anything else (empty queue, ENOBUFS) is the core's.
            Err(e) => e.kind() != io::ErrorKind::Interrupted,
        };
        if out
            .send(Read {
                rx,
                started,
                result,
                last,
            })
            .is_err()
        {
            return false;
        }
        if last {
            return true;
        }
    }
}

/// Whether the batch holds the end of dump `seq` (`NLMSG_DONE`, or an error reply).
fn ends_dump(rx: &RecvBatch, port: u32, seq: u32) -> bool {
    (0..rx.len()).any(|i| {
        msg::messages(rx.get(i)).any(|m| {
            m.port == port
                && m.seq == seq
                && (m.ty == msg::NLMSG_DONE
                    || (m.ty == msg::NLMSG_ERROR && msg::error_code(m.payload) != Some(0)))
        })
    })
}
