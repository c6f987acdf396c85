//! The consumer side of the BPF ring buffer, read through shared memory.
//!
//! Written instead of using `aya::maps::RingBuf` for memory: aya maps the data pages
//! twice (so a record that wraps around the end reads as one slice), and the kernel
//! inserts every page of both mappings up front, so a 128 MiB ring showed as 256 MiB of
//! the daemon's RSS (`RssFile`) from the moment it loaded, idle or not (BENCHMARKS.md).
//! This maps them once and copies the rare record that wraps into a small buffer:
//! RSS = ring size + 2 pages. Reading costs no syscall either way: positions and
//! records are plain loads from the mapping.
//!
//! Layout (kernel/bpf/ringbuf.c): page 0 holds `consumer_pos` (the only page user space
//! may write), page 1 `producer_pos`, the data pages follow. Each record starts with an
//! 8-byte header: `u32 len` (bit 31 busy: being written; bit 30 discarded) and the
//! record's page offset; records are 8-byte aligned.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

const BUSY_BIT: u32 = 1 << 31;
const DISCARD_BIT: u32 = 1 << 30;
const HDR: u64 = 8;

/// One shared mapping, unmapped on drop.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(fd: i32, len: usize, prot: i32, offset: usize) -> io::Result<Mapping> {
        // SAFETY: a fresh shared mapping of a BPF map fd; the kernel checks size,
        // offset and protection (it refuses a writable mapping beyond the first page).
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd,
                offset as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: ptr as *mut u8,
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped; nothing borrows it past `Ring`.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}

/// A mapped BPF ring buffer (the consumer position is ours alone: one consumer).
pub struct Ring {
    consumer: Mapping,
    /// `producer_pos` page, then the data pages once.
    producer: Mapping,
    page: usize,
    size: u64,
    /// A record that wraps around the end, reassembled.
    wrapped: Vec<u8>,
}

// SAFETY: the mappings are owned by the ring and only accessed through `&mut self`
// (plus atomic loads of kernel-written positions).
unsafe impl Send for Ring {}

impl Ring {
    /// Maps the ring of `size` bytes (a power of two, a multiple of the page size).
    pub fn map(fd: BorrowedFd<'_>, size: u64) -> io::Result<Ring> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let fd = fd.as_raw_fd();
        let consumer = Mapping::new(fd, page, libc::PROT_READ | libc::PROT_WRITE, 0)?;
        let producer = Mapping::new(fd, page + size as usize, libc::PROT_READ, page)?;
        Ok(Ring {
            consumer,
            producer,
            page,
            size,
            wrapped: Vec::new(),
        })
    }

    fn consumer_pos(&self) -> &AtomicU64 {
        // SAFETY: the first word of the consumer page, 8-aligned (page-aligned mapping).
        unsafe { &*(self.consumer.ptr as *const AtomicU64) }
    }

    fn producer_pos(&self) -> u64 {
        // SAFETY: the first word of the producer page; the kernel writes it with release.
        unsafe { &*(self.producer.ptr as *const AtomicU64) }.load(Ordering::Acquire)
    }

    fn data(&self) -> *const u8 {
        // SAFETY: the data pages start one page into the producer mapping.
        unsafe { self.producer.ptr.add(self.page) }
    }

    /// Bytes written and not yet consumed.
    pub fn pending(&self) -> u64 {
        self.producer_pos()
            .wrapping_sub(self.consumer_pos().load(Ordering::Relaxed))
    }

    /// Hands up to `max` committed records to `f`, in ring order, and releases their
    /// space. Stops early at a record still being written, or at one `f` declines
    /// (returns false: it stays in the ring, first in line). Returns how many were
    /// taken and their bytes (record headers excluded).
    pub fn consume(&mut self, max: usize, mut f: impl FnMut(&[u8]) -> bool) -> (usize, u64) {
        let mask = self.size - 1;
        let mut cons = self.consumer_pos().load(Ordering::Relaxed);
        let mut prod = self.producer_pos();
        let (mut n, mut bytes) = (0usize, 0u64);
        while n < max {
            if cons == prod {
                prod = self.producer_pos();
                if cons == prod {
                    break;
                }
            }
            let off = cons & mask;
            // SAFETY: `off` is 8-aligned and below `size`, so the header lies inside the
            // data pages; the kernel publishes it with a release xchg.
            let hdr = unsafe { &*(self.data().add(off as usize) as *const AtomicU32) }
                .load(Ordering::Acquire);
            if hdr & BUSY_BIT != 0 {
                break;
            }
            let len = u64::from(hdr & !(BUSY_BIT | DISCARD_BIT));
            if hdr & DISCARD_BIT == 0 {
                let start = (off + HDR) & mask;
                if start + len <= self.size {
                    // SAFETY: the record lies inside the data pages; it is committed and
                    // the producer will not reuse it before we move `consumer_pos`.
                    let rec = unsafe {
                        std::slice::from_raw_parts(self.data().add(start as usize), len as usize)
                    };
                    if !f(rec) {
                        break;
                    }
                } else {
                    let first = (self.size - start) as usize;
                    let mut buf = std::mem::take(&mut self.wrapped);
                    buf.clear();
                    // SAFETY: both parts lie inside the data pages (as above).
                    unsafe {
                        buf.extend_from_slice(std::slice::from_raw_parts(
                            self.data().add(start as usize),
                            first,
                        ));
                        buf.extend_from_slice(std::slice::from_raw_parts(
                            self.data(),
                            len as usize - first,
                        ));
                    }
                    let taken = f(&buf);
                    self.wrapped = buf;
                    if !taken {
                        break;
                    }
                }
                n += 1;
                bytes += len;
            }
            cons += (len + HDR + 7) & !7;
            self.consumer_pos().store(cons, Ordering::Release);
        }
        (n, bytes)
    }
}
