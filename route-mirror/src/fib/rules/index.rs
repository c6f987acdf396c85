//! A candidate index over a large rule list, so a walk over 1,000 rules tests only the
//! few that can match a flow.
//!
//! A rule matches only if each of its selectors does, so per selector ("dimension")
//! the index keeps, for each value a flow can bring, the set of rules that value does
//! not rule out, as a bitset over rule positions. A flow's candidates are the AND of its
//! dimensions' sets; the walk then visits candidates in order (a `goto` resumes at the
//! first candidate at or after its target) and tests each fully, so the index only has
//! to be a superset: rules it cannot reason about (`not` rules, rules kept raw) are in
//! every set. Dimensions: `from` and `to` prefixes (one hash probe per distinct prefix
//! length), `iif`, `oif`, and `fwmark` (one probe per distinct mask) — what large
//! policy routers select on. Cost, not correctness, depends on that choice
//! (BENCHMARKS.md, "rules").

use rustc_hash::FxHashMap;

use super::compiled::{addr_bits, mask_bits, Compiled, Dev};
use crate::fib::flow::KernelFlow;
use crate::model::Family;

/// Reusable per-lookup buffers.
#[derive(Debug, Clone, Default)]
pub struct Scratch {
    cand: Vec<u64>,
    tmp: Vec<u64>,
}

impl Scratch {
    /// The first candidate at or after `from`.
    pub(crate) fn next_from(&self, from: usize) -> Option<usize> {
        let mut w = from / 64;
        if w >= self.cand.len() {
            return None;
        }
        let mut bits = self.cand[w] & (u64::MAX << (from % 64));
        loop {
            if bits != 0 {
                return Some(w * 64 + bits.trailing_zeros() as usize);
            }
            w += 1;
            if w >= self.cand.len() {
                return None;
            }
            bits = self.cand[w];
        }
    }
}

type Bits = Box<[u64]>;

fn set(b: &mut [u64], i: usize) {
    b[i / 64] |= 1 << (i % 64);
}

fn or_into(dst: &mut [u64], src: &[u64]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d |= s;
    }
}

fn and_into(dst: &mut [u64], src: &[u64]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d &= s;
    }
}

#[derive(Debug, Clone)]
struct PrefixDim {
    base: Bits,
    /// Distinct prefix lengths (> 0), longest first.
    lens: Vec<u8>,
    map: FxHashMap<(u8, u128), Bits>,
}

#[derive(Debug, Clone)]
struct DevDim {
    base: Bits,
    map: FxHashMap<u32, Bits>,
}

#[derive(Debug, Clone)]
struct MarkDim {
    base: Bits,
    groups: Vec<(u32, FxHashMap<u32, Bits>)>,
}

/// The index of one family's compiled rules.
#[derive(Debug, Clone)]
pub(crate) struct Index {
    words: usize,
    src: PrefixDim,
    dst: PrefixDim,
    iif: DevDim,
    oif: DevDim,
    mark: MarkDim,
}

impl Index {
    pub(crate) fn new(rules: &[Compiled]) -> Index {
        let words = rules.len().div_ceil(64);
        let empty = || vec![0u64; words].into_boxed_slice();
        // Rules whose match the dimensions cannot describe are candidates everywhere.
        let everywhere = |r: &Compiled| r.invert || r.opaque.is_some() || r.find_saddr;
        let mut ix = Index {
            words,
            src: PrefixDim {
                base: empty(),
                lens: Vec::new(),
                map: FxHashMap::default(),
            },
            dst: PrefixDim {
                base: empty(),
                lens: Vec::new(),
                map: FxHashMap::default(),
            },
            iif: DevDim {
                base: empty(),
                map: FxHashMap::default(),
            },
            oif: DevDim {
                base: empty(),
                map: FxHashMap::default(),
            },
            mark: MarkDim {
                base: empty(),
                groups: Vec::new(),
            },
        };
        for (i, r) in rules.iter().enumerate() {
            let all = everywhere(r);
            for (dim, (key, len)) in [
                (&mut ix.src, (r.src, r.src_len)),
                (&mut ix.dst, (r.dst, r.dst_len)),
            ] {
                if all || len == 0 {
                    set(&mut dim.base, i);
                } else {
                    if !dim.lens.contains(&len) {
                        dim.lens.push(len);
                    }
                    set(dim.map.entry((len, key.0)).or_insert_with(empty), i);
                }
            }
            for (dim, dev) in [(&mut ix.iif, r.iif), (&mut ix.oif, r.oif)] {
                match dev {
                    _ if all => set(&mut dim.base, i),
                    Dev::Any => set(&mut dim.base, i),
                    Dev::Detached => {}
                    Dev::Index { ifindex, .. } => {
                        set(dim.map.entry(ifindex).or_insert_with(empty), i)
                    }
                }
            }
            if all || r.mask == 0 {
                set(&mut ix.mark.base, i);
            } else {
                let g = match ix.mark.groups.iter().position(|(m, _)| *m == r.mask) {
                    Some(g) => g,
                    None => {
                        ix.mark.groups.push((r.mask, FxHashMap::default()));
                        ix.mark.groups.len() - 1
                    }
                };
                set(
                    ix.mark.groups[g]
                        .1
                        .entry(r.mark & r.mask)
                        .or_insert_with(empty),
                    i,
                );
            }
        }
        ix.src.lens.sort_unstable_by(|a, b| b.cmp(a));
        ix.dst.lens.sort_unstable_by(|a, b| b.cmp(a));
        ix
    }

    /// Fills `s` with the flow's candidate rules.
    pub(crate) fn candidates(&self, f: &KernelFlow, s: &mut Scratch) {
        s.cand.clear();
        s.cand.resize(self.words, 0);
        s.tmp.clear();
        s.tmp.resize(self.words, 0);
        let family = f.family;
        // from
        s.cand.copy_from_slice(&self.src.base);
        let src = match (family, f.src) {
            (_, Some(a)) => Some(addr_bits(&a)),
            // IPv4 compares 0.0.0.0; IPv6 without a source matches no `from` prefix.
            (Family::V4, None) => Some(0),
            (Family::V6, None) => None,
        };
        if let Some(a) = src {
            probe_prefixes(&self.src, family, a, &mut s.cand);
        }
        // to
        s.tmp.copy_from_slice(&self.dst.base);
        probe_prefixes(&self.dst, family, addr_bits(&f.dst), &mut s.tmp);
        and_into(&mut s.cand, &s.tmp);
        // iif: the device, or (6.16+) the VRF it is a port of.
        s.tmp.copy_from_slice(&self.iif.base);
        if let Some(b) = self.iif.map.get(&f.iif) {
            or_into(&mut s.tmp, b);
        }
        if !f.l3mdev_from_oif && f.l3mdev != 0 {
            if let Some(b) = self.iif.map.get(&f.l3mdev) {
                or_into(&mut s.tmp, b);
            }
        }
        and_into(&mut s.cand, &s.tmp);
        // oif
        s.tmp.copy_from_slice(&self.oif.base);
        if let Some(b) = self.oif.map.get(&f.oif) {
            or_into(&mut s.tmp, b);
        }
        if f.l3mdev_from_oif && f.l3mdev != 0 {
            if let Some(b) = self.oif.map.get(&f.l3mdev) {
                or_into(&mut s.tmp, b);
            }
        }
        and_into(&mut s.cand, &s.tmp);
        // fwmark
        s.tmp.copy_from_slice(&self.mark.base);
        for (mask, m) in &self.mark.groups {
            if let Some(b) = m.get(&(f.mark & mask)) {
                or_into(&mut s.tmp, b);
            }
        }
        and_into(&mut s.cand, &s.tmp);
    }
}

fn probe_prefixes(dim: &PrefixDim, family: Family, addr: u128, out: &mut [u64]) {
    for &len in &dim.lens {
        let key = addr & mask_bits(family, len);
        if let Some(b) = dim.map.get(&(len, key)) {
            or_into(out, b);
        }
    }
}
