//! Capturing real kernel messages as fuzzing seeds (`route-mirror debug capture`).
//!
//! Dumps links, addresses, nexthop objects and routes, then records notifications for
//! a while, and writes raw messages (header + payload, as the kernel sent them) into
//! `<out>/<target>/`: one file per distinct message *shape* (type, attribute layout),
//! so a 10k-route table gives a few dozen seeds, not 10k. Whole datagrams go to
//! `<out>/netlink_datagram/`.

use std::collections::HashSet;
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::msg::attrs;
use super::msg::{self, DumpKind, RawMsg, NLMSG_HDRLEN};
use super::socket::{NlSocket, RECV_BUF};
use crate::model::Family;
use route_mirror_common::groups;

/// Seeds kept per target (distinct shapes beyond this are dropped).
const MAX_PER_TARGET: usize = 256;
/// Whole datagrams kept.
const MAX_DATAGRAMS: usize = 24;

/// The fuzz target a message type seeds, and the fixed header length before its attributes.
fn target_of(ty: u16) -> Option<(&'static str, usize)> {
    Some(match ty {
        msg::RTM_NEWROUTE | msg::RTM_DELROUTE => ("route_msg", 12),
        msg::RTM_NEWLINK | msg::RTM_DELLINK => ("link_msg", 16),
        msg::RTM_NEWADDR | msg::RTM_DELADDR => ("addr_msg", 8),
        msg::RTM_NEWNEXTHOP | msg::RTM_DELNEXTHOP => ("nexthop_msg", 8),
        _ => return None,
    })
}

#[derive(Default)]
struct Seeds {
    shapes: HashSet<Vec<u16>>,
    per_target: std::collections::HashMap<&'static str, usize>,
    datagrams: usize,
    written: usize,
}

impl Seeds {
    fn message(&mut self, out: &Path, m: &RawMsg<'_>, raw: &[u8]) -> Result<()> {
        let Some((target, hdr)) = target_of(m.ty) else {
            return Ok(());
        };
        // Shape: type, header bytes that select behaviour (family, type, scope...), and
        // the attribute types with their lengths.
        let mut shape = vec![m.ty];
        shape.extend(m.payload.iter().take(hdr.min(12)).map(|&b| b as u16));
        if target == "route_msg" || target == "addr_msg" {
            // prefix lengths and table ids vary per route without changing the shape
            shape.truncate(1 + 1);
            shape.extend(
                m.payload
                    .get(3..hdr)
                    .unwrap_or(&[])
                    .iter()
                    .map(|&b| b as u16),
            );
            if target == "route_msg" && shape.len() > 3 {
                shape.remove(3); // rtm_table
            }
        }
        for a in attrs(m.payload.get(hdr..).unwrap_or(&[])).flatten() {
            shape.push(a.0);
            shape.push(a.1.len() as u16);
        }
        let n = self.per_target.entry(target).or_default();
        if *n >= MAX_PER_TARGET || !self.shapes.insert(shape) {
            return Ok(());
        }
        *n += 1;
        let dir = out.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("seed-{}-{:03}", m.ty, n)), raw)?;
        self.written += 1;
        Ok(())
    }

    fn datagram(&mut self, out: &Path, buf: &[u8]) -> Result<()> {
        if self.datagrams >= MAX_DATAGRAMS {
            return Ok(());
        }
        self.datagrams += 1;
        let dir = out.join("netlink_datagram");
        std::fs::create_dir_all(&dir)?;
        // Large dump datagrams are cut to their first messages: seeds stay small.
        let mut end = 0;
        let mut off = 0;
        while off + NLMSG_HDRLEN <= buf.len() && off < 4096 {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4 bytes")) as usize;
            if len < NLMSG_HDRLEN || off + len > buf.len() {
                break;
            }
            off += (len + 3) & !3;
            end = off.min(buf.len());
        }
        std::fs::write(
            dir.join(format!("datagram-{:03}", self.datagrams)),
            &buf[..end.max(buf.len().min(NLMSG_HDRLEN))],
        )?;
        self.written += 1;
        Ok(())
    }

    fn buffer(&mut self, out: &Path, buf: &[u8]) -> Result<()> {
        let mut off = 0;
        let mut useful = false;
        for m in msg::messages(buf) {
            let len = NLMSG_HDRLEN + m.payload.len();
            let raw = &buf[off..off + len];
            off += (len + 3) & !3;
            if target_of(m.ty).is_some() {
                useful = true;
                self.message(out, &m, raw)?;
            }
        }
        if useful {
            self.datagram(out, buf)?;
        }
        Ok(())
    }
}

/// Dumps everything, then records notifications for `listen`; returns the seed count.
/// Must run inside the namespace to capture.
pub fn capture(out: &Path, listen: Duration) -> Result<usize> {
    let mut sock = NlSocket::open().context("opening a netlink socket")?;
    sock.set_rcvbuf(32 << 20)?;
    let mut seeds = Seeds::default();
    let mut buf = Vec::with_capacity(RECV_BUF);
    let mut kinds = vec![DumpKind::Links, DumpKind::Nexthops];
    for f in Family::ALL {
        kinds.push(DumpKind::Addrs(f));
        kinds.push(DumpKind::Routes(f, None));
    }
    for kind in kinds {
        let seq = sock.request_dump(kind)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        'dump: loop {
            match sock.recv(&mut buf) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    anyhow::ensure!(Instant::now() < deadline, "{kind:?} dump timed out");
                    sock.wait_readable(500)?;
                    continue;
                }
                Err(e) => return Err(e).context("recv"),
            }
            seeds.buffer(out, &buf)?;
            for m in msg::messages(&buf) {
                if m.seq == seq && matches!(m.ty, msg::NLMSG_DONE | msg::NLMSG_ERROR) {
                    break 'dump;
                }
            }
        }
    }
    sock.subscribe(&groups::ALL)?;
    let end = Instant::now() + listen;
    while Instant::now() < end {
        match sock.recv(&mut buf) {
            Ok(_) => seeds.buffer(out, &buf)?,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                sock.wait_readable(100)?;
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {}
            Err(e) => return Err(e).context("recv"),
        }
    }
    Ok(seeds.written)
}
