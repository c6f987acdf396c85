//! Lightweight-tunnel encapsulations and IPv4 realms as `ip route` prints them.
//!
//! The mirror keeps an encapsulation as the kernel's bytes ([`Encap`]) and never forwards
//! through it; this only renders them for `show`, `watch` and `diff` reports. The common
//! types (mpls, ip, ip6, seg6) are decoded like iproute2's `lwt_print_encap`; any other
//! type, or bytes that do not parse, show as the type name and the raw bytes in hex.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::model::{lwt, Encap};

/// An encapsulation for people and for `--json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncapView {
    /// `mpls`, `ip`, `ip6`, `seg6`, ... (the number when unknown).
    #[serde(rename = "type")]
    pub kind: String,
    /// What `ip route` prints after `encap TYPE` (e.g. `id 1 src 0.0.0.0 dst 1.2.3.4
    /// ttl 0 tos 0`).
    pub text: String,
    /// The `RTA_ENCAP` payload (nested attributes), hex.
    pub data: String,
}

/// IPv4 realms (`RTA_FLOW`) split as `ip route` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowView {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<u16>,
    pub to: u16,
}

impl FlowView {
    /// `None` for 0 (no realms).
    pub fn new(realms: u32) -> Option<FlowView> {
        (realms != 0).then(|| {
            let from = (realms >> 16) as u16;
            FlowView {
                from: (from != 0).then_some(from),
                to: realms as u16,
            }
        })
    }

    /// `realm TO` or `realms FROM/TO`.
    pub fn text(&self) -> String {
        match self.from {
            Some(f) => format!("realms {f}/{}", self.to),
            None => format!("realm {}", self.to),
        }
    }
}

pub fn encap_view(e: &Encap) -> EncapView {
    EncapView {
        kind: lwt::name(e.kind).map_or_else(|| e.kind.to_string(), str::to_string),
        text: describe(e).unwrap_or_default(),
        data: e.data.iter().fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        }),
    }
}

/// `encap TYPE TEXT` (or `encap TYPE` when there is nothing decoded to add).
pub fn format_encap(v: &EncapView) -> String {
    if v.text.is_empty() {
        format!("encap {}", v.kind)
    } else {
        format!("encap {} {}", v.kind, v.text)
    }
}

/// The attributes in `b`: (type without flags, value). Stops at the first malformed one
/// (rendering and `diff` only: the bytes are kept whole anyway).
pub(crate) fn nested(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        if len < 4 || len > b.len() {
            break;
        }
        out.push((u16::from_ne_bytes([b[2], b[3]]) & 0x3fff, &b[4..len]));
        let next = (len + 3) & !3;
        b = b.get(next..).unwrap_or_default();
    }
    out
}

fn v4(b: &[u8]) -> Option<Ipv4Addr> {
    <[u8; 4]>::try_from(b).ok().map(Ipv4Addr::from)
}

fn v6(b: &[u8]) -> Option<Ipv6Addr> {
    <[u8; 16]>::try_from(b).ok().map(Ipv6Addr::from)
}

/// What `ip route` prints after `encap TYPE`, for the types decoded here.
fn describe(e: &Encap) -> Option<String> {
    let attrs = nested(&e.data);
    let get = |t: u16| attrs.iter().find(|(k, _)| *k == t).map(|(_, v)| *v);
    let mut s = Vec::<String>::new();
    match e.kind {
        lwt::MPLS => {
            // MPLS_IPTUNNEL_DST: label stack entries (big endian), label in the top 20 bits.
            if let Some(dst) = get(1) {
                let labels: Vec<String> = dst
                    .chunks_exact(4)
                    .map(|c| (u32::from_be_bytes([c[0], c[1], c[2], c[3]]) >> 12).to_string())
                    .collect();
                s.push(labels.join("/"));
            }
            if let Some(ttl) = get(2).and_then(|v| v.first()) {
                s.push(format!("ttl {ttl}"));
            }
        }
        lwt::IP | lwt::IP6 => {
            let six = e.kind == lwt::IP6;
            if let Some(id) = get(1).and_then(|v| <[u8; 8]>::try_from(v).ok()) {
                s.push(format!("id {}", u64::from_be_bytes(id)));
            }
            let addr = |v: &[u8]| -> Option<String> {
                if six {
                    v6(v).map(|a| a.to_string())
                } else {
                    v4(v).map(|a| a.to_string())
                }
            };
            if let Some(a) = get(3).and_then(addr) {
                s.push(format!("src {a}"));
            }
            if let Some(a) = get(2).and_then(addr) {
                s.push(format!("dst {a}"));
            }
            let (ttl, tos) = if six {
                ("hoplimit", "tc")
            } else {
                ("ttl", "tos")
            };
            if let Some(x) = get(4).and_then(|v| v.first()) {
                s.push(format!("{ttl} {x}"));
            }
            if let Some(x) = get(5).and_then(|v| v.first()) {
                s.push(format!("{tos} {x}"));
            }
            // LWTUNNEL_IP_FLAGS: TUNNEL_* bits, big endian.
            if let Some(f) = get(6).and_then(|v| <[u8; 2]>::try_from(v).ok()) {
                let f = u16::from_be_bytes(f);
                for (bit, name) in [(0x04, "key"), (0x01, "csum"), (0x08, "seq")] {
                    if f & bit != 0 {
                        s.push(name.to_string());
                    }
                }
            }
        }
        lwt::SEG6 => {
            // SEG6_IPTUNNEL_SRH: `struct seg6_iptunnel_encap { int mode; struct
            // ipv6_sr_hdr srh; }`, segments stored last first.
            let v = get(1)?;
            let mode = i32::from_ne_bytes(v.get(..4)?.try_into().ok()?);
            let srh = v.get(4..)?;
            let first = usize::from(*srh.get(4)?);
            let mode = match mode {
                0 => "inline".to_string(),
                1 => "encap".to_string(),
                2 => "l2encap".to_string(),
                3 => "encap.red".to_string(),
                4 => "l2encap.red".to_string(),
                n => n.to_string(),
            };
            s.push(format!("mode {mode}"));
            let segs: Option<Vec<String>> = (0..=first)
                .rev()
                .map(|i| v6(srh.get(8 + 16 * i..8 + 16 * (i + 1))?).map(|a| a.to_string()))
                .collect();
            let segs = segs?;
            s.push(format!("segs {} [ {} ]", segs.len(), segs.join(" ")));
        }
        _ => return None,
    }
    Some(s.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(b: &mut Vec<u8>, ty: u16, v: &[u8]) {
        b.extend_from_slice(&((4 + v.len()) as u16).to_ne_bytes());
        b.extend_from_slice(&ty.to_ne_bytes());
        b.extend_from_slice(v);
        while !b.len().is_multiple_of(4) {
            b.push(0);
        }
    }

    fn text(kind: u16, data: Vec<u8>) -> String {
        format_encap(&encap_view(&Encap {
            kind,
            data: data.into(),
        }))
    }

    #[test]
    fn ip_and_ip6_as_ip_route_prints_them() {
        let mut b = Vec::new();
        attr(&mut b, 1, &1u64.to_be_bytes());
        attr(&mut b, 2, &[1, 2, 3, 4]);
        attr(&mut b, 3, &[5, 6, 7, 8]);
        attr(&mut b, 5, &[8]);
        attr(&mut b, 4, &[3]);
        attr(&mut b, 6, &0x05u16.to_be_bytes());
        assert_eq!(
            text(lwt::IP, b),
            "encap ip id 1 src 5.6.7.8 dst 1.2.3.4 ttl 3 tos 8 key csum"
        );
        let mut b = Vec::new();
        attr(&mut b, 1, &2u64.to_be_bytes());
        attr(
            &mut b,
            2,
            &"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets(),
        );
        attr(&mut b, 4, &[5]);
        assert_eq!(
            text(lwt::IP6, b),
            "encap ip6 id 2 dst 2001:db8::1 hoplimit 5"
        );
    }

    #[test]
    fn mpls_and_seg6() {
        let mut b = Vec::new();
        let stack = [
            (100u32 << 12).to_be_bytes(),
            ((200u32 << 12) | 0x100).to_be_bytes(),
        ]
        .concat();
        attr(&mut b, 1, &stack);
        attr(&mut b, 2, &[9]);
        assert_eq!(text(lwt::MPLS, b), "encap mpls 100/200 ttl 9");
        let mut srh = 1i32.to_ne_bytes().to_vec();
        srh.extend_from_slice(&[41, 4, 4, 1, 1, 0, 0, 0]);
        for s in ["fc00::2", "fc00::1"] {
            srh.extend_from_slice(&s.parse::<Ipv6Addr>().unwrap().octets());
        }
        let mut b = Vec::new();
        attr(&mut b, 1, &srh);
        assert_eq!(
            text(lwt::SEG6, b),
            "encap seg6 mode encap segs 2 [ fc00::1 fc00::2 ]"
        );
    }

    /// Unknown types and bytes that do not parse show the type alone; the raw bytes are
    /// in `data`. Never a panic.
    #[test]
    fn malformed_and_unknown() {
        assert_eq!(text(lwt::BPF, vec![1, 2, 3]), "encap bpf");
        assert_eq!(text(77, vec![]), "encap 77");
        assert_eq!(text(lwt::SEG6, vec![8, 0, 1, 0, 1, 0, 0, 0]), "encap seg6");
        for kind in [lwt::MPLS, lwt::IP, lwt::IP6, lwt::SEG6] {
            for n in 0..64u8 {
                let junk: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37) ^ n).collect();
                let _ = text(kind, junk);
            }
        }
        assert_eq!(
            encap_view(&Encap {
                kind: 2,
                data: vec![0xab, 1].into()
            })
            .data,
            "ab01"
        );
        assert_eq!(FlowView::new(0), None);
        assert_eq!(FlowView::new(5).unwrap().text(), "realm 5");
        assert_eq!(FlowView::new(3 << 16 | 4).unwrap().text(), "realms 3/4");
    }
}
