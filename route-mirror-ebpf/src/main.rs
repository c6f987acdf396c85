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
    bindings::BPF_F_NO_PREALLOC,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_NO_WAKEUP},
    helpers::{bpf_ktime_get_ns, bpf_ringbuf_output, bpf_skb_load_bytes},
    macros::{map, socket_filter},
    maps::{lpm_trie::Key, HashMap, LpmTrie, PerCpuArray, RingBuf},
    programs::SkBuffContext,
};
use route_mirror_common::{compact, counter, event_flags, fib, EventHeader, MAX_MSG};

/// Our netlink port id, set by the loader (`EbpfLoader::set_global`) before load.
#[no_mangle]
static OUR_PORT: u32 = 0;

/// The record ABI this object was built with: the daemon reads it from the object
/// before loading and refuses a mismatch (see `route_mirror_common::RECORD_ABI`).
/// Read once per message (a load that never branches away) so the linker keeps it.
#[no_mangle]
static ROUTE_MIRROR_RECORD_ABI: u32 = route_mirror_common::RECORD_ABI;

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

/// Per-CPU staging area: the message is loaded into `msg` (one helper call), compacted
/// from there into `route`/`addrs` when it is a common route message, and the chosen
/// record is copied by `bpf_ringbuf_output` with its exact length (reserve needs a
/// constant size).
#[repr(C)]
pub struct Scratch {
    hdr: EventHeader,
    msg: [u8; MAX_MSG],
    chdr: EventHeader,
    route: compact::Route,
    addrs: [u8; compact::ADDRS],
}

#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

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
    // SAFETY: a plain read of a constant (never 0: see `RECORD_ABI`).
    if unsafe { core::ptr::read_volatile(&ROUTE_MIRROR_RECORD_ABI) } == 0 {
        return skb_len as i64;
    }
    if hdr[3] == port {
        add(counter::PASSED, 1);
        return skb_len as i64;
    }
    let msg_type = (hdr[1] & 0xffff) as u16;
    add(counter::for_type(msg_type), 1);

    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return skb_len as i64; // cannot happen; fall back to the socket queue
    };
    // SAFETY: the per-CPU scratch value, ours for this run of the program.
    let s = unsafe { &mut *s };
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let mut n = skb_len as usize;
    let mut flags = 0u16;
    if n > MAX_MSG {
        flags = event_flags::TRUNCATED;
        add(counter::TRUNCATED, 1);
        n = 0;
    }
    if n > 0 {
        // Re-bound for the verifier: 1..=MAX_MSG.
        let len = (n & (2 * MAX_MSG - 1)).min(MAX_MSG);
        if len == 0 {
            return 0;
        }
        // SAFETY: copies `len` <= MAX_MSG bytes into the scratch message buffer.
        let r = unsafe {
            bpf_skb_load_bytes(
                ctx.skb.skb as *const c_void,
                0,
                s.msg.as_mut_ptr() as *mut c_void,
                len as u32,
            )
        };
        if r != 0 {
            add(counter::UNREADABLE, 1);
            return skb_len as i64;
        }
        n = len;
    }

    let compacted = n > 0
        && (msg_type == compact::RTM_NEWROUTE || msg_type == compact::RTM_DELROUTE)
        && compact::route(&s.msg, n, &mut s.route, &mut s.addrs);
    let (src, total) = if compacted {
        let body = compact::Route::SIZE + 3 * compact::addr_len(s.route.rtm[0]);
        s.chdr = EventHeader {
            ktime_ns: now,
            len: body as u32,
            msg_type,
            flags: event_flags::COMPACT,
        };
        (
            &s.chdr as *const EventHeader as *mut c_void,
            (EventHeader::SIZE + body)
                .min(EventHeader::SIZE + compact::Route::SIZE + compact::ADDRS),
        )
    } else {
        s.hdr = EventHeader {
            ktime_ns: now,
            len: skb_len,
            msg_type,
            flags,
        };
        (
            &s.hdr as *const EventHeader as *mut c_void,
            (EventHeader::SIZE + n).min(EventHeader::SIZE + MAX_MSG),
        )
    };

    // Wake the consumer only when the ring was empty (it may be asleep); otherwise it
    // is awake or already has a wakeup pending, and poll() reports the ring readable
    // as long as any byte is unconsumed, so no wakeup can be lost. This turns one
    // wakeup per record into one per burst.
    let avail = RING.query(BPF_RB_AVAIL_DATA as u64);
    max(counter::HIGH_WATER, avail);
    let wake = if avail == 0 {
        0
    } else {
        BPF_RB_NO_WAKEUP as u64
    };
    // SAFETY: `total` bytes from `src` lie inside the scratch value.
    let r = unsafe {
        bpf_ringbuf_output(
            &RING as *const RingBuf as *mut c_void,
            src,
            total as u64,
            wake,
        )
    };
    if r != 0 {
        add(counter::DROPS, 1);
    } else {
        add(counter::RECORDS, 1);
        add(counter::BYTES, total as u64);
        if compacted {
            add(counter::COMPACT, 1);
        }
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
