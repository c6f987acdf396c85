//! Socket filter on route-mirror's NETLINK_ROUTE socket.
//!
//! Dump replies and acks (addressed to our own port) stay in the socket queue: the core
//! processes dumps exactly as with the netlink source. Every other message is a
//! multicast notification: it is copied to the `RING` ring buffer with a small header
//! and dropped from the socket (return 0), so the socket queue cannot overflow and no
//! notification is lost to ENOBUFS; a full ring is counted (`DROPS`) and userspace
//! resyncs, exactly as on ENOBUFS.
#![no_std]
#![no_main]

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_NO_WAKEUP},
    helpers::{bpf_ktime_get_ns, bpf_ringbuf_output, bpf_skb_load_bytes},
    macros::{map, socket_filter},
    bindings::BPF_F_NO_PREALLOC,
    maps::{lpm_trie::Key, HashMap, LpmTrie, PerCpuArray, RingBuf},
    programs::SkBuffContext,
};
use route_mirror_common::{counter, event_flags, fib, EventHeader, MAX_MSG};

/// Our netlink port id, set by the loader (`EbpfLoader::set_global`) before load.
#[no_mangle]
static OUR_PORT: u32 = 0;

/// Size is set by userspace (`--ring-size`) before load.
#[map]
static RING: RingBuf = RingBuf::with_byte_size(4096, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::LEN, 0);

/// The pinned BPF FIB (`--bpf-fib`), written by userspace only. Declared here so the
/// layouts live in one object an XDP/TC dataplane can share (by pin) and so creating
/// them needs nothing but the loader the ring already uses.
#[map]
static FIB4: LpmTrie<fib::Key4, fib::Value> = LpmTrie::with_max_entries(fib::MAX_PREFIXES, 0);

#[map]
static FIB6: LpmTrie<fib::Key6, fib::Value> = LpmTrie::with_max_entries(fib::MAX_PREFIXES, 0);

#[map]
static NHGROUPS: HashMap<u32, fib::Group> =
    HashMap::with_max_entries(fib::MAX_GROUPS, BPF_F_NO_PREALLOC);

/// Keeps the FIB maps' types in the object (a lookup the verifier sees but never runs
/// on the socket path: `len` of a netlink skb is never 0 here).
#[inline(always)]
fn fib_maps_used(len: u32) -> bool {
    if len != 0 {
        return false;
    }
    let k4 = Key::new(0, fib::Key4::default());
    let k6 = Key::new(0, fib::Key6::default());
    FIB4.get(&k4).is_some() || FIB6.get(&k6).is_some() || NHGROUPS.get_ptr(0u32).is_some()
}

const REC: usize = EventHeader::SIZE + MAX_MSG;

/// Per-CPU staging area: the record is assembled here, then copied by
/// `bpf_ringbuf_output` with its exact length (reserve needs a constant size).
#[map]
static SCRATCH: PerCpuArray<[u8; REC]> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn add(idx: u32, v: u64) {
    if let Some(p) = COUNTERS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot; programs do not migrate while running.
        unsafe { *p += v };
    }
}

#[inline(always)]
fn max(idx: u32, v: u64) {
    if let Some(p) = COUNTERS.get_ptr_mut(idx) {
        // SAFETY: as in `add`.
        unsafe {
            if *p < v {
                *p = v
            }
        };
    }
}

#[socket_filter]
pub fn route_mirror(ctx: SkBuffContext) -> i64 {
    filter(&ctx)
}

#[inline(always)]
fn filter(ctx: &SkBuffContext) -> i64 {
    let skb_len = ctx.len();
    if fib_maps_used(skb_len) {
        return 0;
    }
    // nlmsghdr: len u32, type u16, flags u16, seq u32, pid u32.
    let Ok(hdr) = ctx.load::<[u32; 4]>(0) else {
        add(counter::UNREADABLE, 1);
        return skb_len as i64;
    };
    // SAFETY: a plain read of a constant the loader patched.
    let port = unsafe { core::ptr::read_volatile(&OUR_PORT) };
    if hdr[3] == port {
        add(counter::PASSED, 1);
        return skb_len as i64;
    }
    let msg_type = (hdr[1] & 0xffff) as u16;
    add(counter::for_type(msg_type), 1);

    let Some(buf) = SCRATCH.get_ptr_mut(0) else {
        return skb_len as i64; // cannot happen; fall back to the socket queue
    };
    let buf = buf as *mut u8;
    let mut h = EventHeader {
        // SAFETY: no preconditions.
        ktime_ns: unsafe { bpf_ktime_get_ns() },
        len: skb_len,
        cap_len: 0,
        msg_type,
        flags: 0,
        _pad: 0,
    };
    let mut n = skb_len as usize;
    if n > MAX_MSG {
        h.flags = event_flags::TRUNCATED;
        add(counter::TRUNCATED, 1);
        n = 0;
    }
    if n > 0 {
        // Re-bound for the verifier: 1..=MAX_MSG.
        let len = (n & (2 * MAX_MSG - 1)).min(MAX_MSG);
        if len == 0 {
            return 0;
        }
        // SAFETY: copies `len` <= MAX_MSG bytes into the scratch value after the header.
        let r = unsafe {
            bpf_skb_load_bytes(
                ctx.skb.skb as *const c_void,
                0,
                buf.add(EventHeader::SIZE) as *mut c_void,
                len as u32,
            )
        };
        if r != 0 {
            add(counter::UNREADABLE, 1);
            return skb_len as i64;
        }
        n = len;
    }
    h.cap_len = n as u32;
    // SAFETY: the header fits at the start of the scratch value.
    unsafe { core::ptr::write_unaligned(buf as *mut EventHeader, h) };

    // Wake the consumer only when the ring was empty (it may be asleep); otherwise it
    // is awake or already has a wakeup pending, and poll() reports the ring readable
    // as long as any byte is unconsumed, so no wakeup can be lost. This turns one
    // wakeup per record into one per burst.
    let avail = RING.query(BPF_RB_AVAIL_DATA as u64);
    max(counter::HIGH_WATER, avail);
    let flags = if avail == 0 { 0 } else { BPF_RB_NO_WAKEUP as u64 };
    let total = (EventHeader::SIZE + n).min(REC);
    // SAFETY: `total` <= the scratch value's size.
    let r = unsafe {
        bpf_ringbuf_output(
            &RING as *const RingBuf as *mut c_void,
            buf as *mut c_void,
            total as u64,
            flags,
        )
    };
    if r != 0 {
        add(counter::DROPS, 1);
    } else {
        add(counter::RECORDS, 1);
        add(counter::BYTES, total as u64);
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
