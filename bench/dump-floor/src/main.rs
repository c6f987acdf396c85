//! `dump-floor`: the least a program can do to read a namespace's routing state.
//!
//! It sends the dump requests route-mirror's initial sync sends (links, IPv4 and IPv6
//! addresses, nexthop objects, then the routes of every table of both families), on one
//! NETLINK_ROUTE socket with the same options (strict checking, 32 KiB chunks), reads
//! every reply and only counts messages: no decoding, no storing. The kernel's own work
//! (walking its tables and building the messages) is what remains, which makes it the
//! floor the daemon's initial sync is measured against (issue 14: sync <= 1.1x this).
//!
//! Usage: `ip netns exec NS dump-floor [RUNS]` prints one line per run and the best:
//! `dump-floor: 1230026 routes, 1230120 messages, 1.234 s`.

use std::io;
use std::time::Instant;

const NETLINK_ROUTE: i32 = 0;
const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const RTM_GETLINK: u16 = 18;
const RTM_GETADDR: u16 = 22;
const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const RTM_GETNEXTHOP: u16 = 106;
const NETLINK_GET_STRICT_CHK: i32 = 12;
const SOL_NETLINK: i32 = 270;
/// The kernel sizes dump chunks after the largest receive buffer seen, up to 32 KiB.
const BUF: usize = 1 << 20;

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

struct Counts {
    messages: u64,
    routes: u64,
}

fn socket() -> io::Result<i32> {
    // SAFETY: plain socket calls on a fresh fd.
    unsafe {
        let fd = check(libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            NETLINK_ROUTE,
        ))?;
        let one: libc::c_int = 1;
        check(libc::setsockopt(
            fd,
            SOL_NETLINK,
            NETLINK_GET_STRICT_CHK,
            &one as *const _ as *const libc::c_void,
            4,
        ))?;
        let mut addr: libc::sockaddr_nl = std::mem::zeroed();
        addr.nl_family = libc::AF_NETLINK as u16;
        check(libc::bind(
            fd,
            &addr as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        ))?;
        Ok(fd)
    }
}

/// One dump request: `ty` with a zeroed family header of `hdr_len` bytes.
fn request(fd: i32, ty: u16, family: u8, hdr_len: usize, seq: u32) -> io::Result<()> {
    let len = NLMSG_HDRLEN + hdr_len;
    let mut m = vec![0u8; len];
    m[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
    m[4..6].copy_from_slice(&ty.to_ne_bytes());
    m[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    m[8..12].copy_from_slice(&seq.to_ne_bytes());
    m[NLMSG_HDRLEN] = family;
    // SAFETY: sends our buffer to the kernel (nl_pid 0, the default address).
    let r = unsafe { libc::send(fd, m.as_ptr() as *const libc::c_void, len, 0) };
    check(r as i32).map(|_| ())
}

/// Reads replies until the dump's DONE, counting messages and route messages.
fn read_dump(fd: i32, buf: &mut [u8], c: &mut Counts) -> io::Result<()> {
    loop {
        // SAFETY: recv writes at most buf.len() bytes into buf.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
        let n = check(n as i32)? as usize;
        let mut off = 0;
        while off + NLMSG_HDRLEN <= n {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
            let ty = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
            if len < NLMSG_HDRLEN {
                return Err(io::Error::other("bad netlink message length"));
            }
            match ty {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => return Err(io::Error::other("the kernel refused a dump")),
                RTM_NEWROUTE => c.routes += 1,
                _ => {}
            }
            c.messages += 1;
            off += (len + 3) & !3;
        }
    }
}

fn run(buf: &mut [u8]) -> io::Result<(Counts, f64)> {
    let fd = socket()?;
    let mut c = Counts {
        messages: 0,
        routes: 0,
    };
    let t0 = Instant::now();
    // (type, family, family-header length): ifinfomsg 16, ifaddrmsg 8, nhmsg 8, rtmsg 12.
    let dumps = [
        (RTM_GETLINK, 0u8, 16usize),
        (RTM_GETADDR, libc::AF_INET as u8, 8),
        (RTM_GETADDR, libc::AF_INET6 as u8, 8),
        (RTM_GETNEXTHOP, 0, 8),
        (RTM_GETROUTE, libc::AF_INET as u8, 12),
        (RTM_GETROUTE, libc::AF_INET6 as u8, 12),
    ];
    for (seq, (ty, family, hdr)) in dumps.into_iter().enumerate() {
        request(fd, ty, family, hdr, seq as u32 + 1)?;
        read_dump(fd, buf, &mut c)?;
    }
    let secs = t0.elapsed().as_secs_f64();
    // SAFETY: closes our own fd.
    unsafe { libc::close(fd) };
    Ok((c, secs))
}

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1);
    let mut buf = vec![0u8; BUF];
    let mut best = f64::MAX;
    for _ in 0..runs.max(1) {
        match run(&mut buf) {
            Ok((c, secs)) => {
                println!(
                    "dump-floor: {} routes, {} messages, {secs:.3} s",
                    c.routes, c.messages
                );
                best = best.min(secs);
            }
            Err(e) => {
                eprintln!("dump-floor: {e}");
                std::process::exit(1);
            }
        }
    }
    println!("dump-floor best: {best:.3} s");
}
