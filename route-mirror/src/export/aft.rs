//! The OpenConfig AFT (abstract forwarding table) view of one namespace's mirror: what
//! the gNMI export serves under `/network-instances/network-instance[name]/afts`.
//!
//! One network instance per mirrored table. Each prefix carries its *best* route (the
//! one the kernel forwards with: the first TOS-0 route in the kernel's order that can
//! forward, next-hop liveness included), as `ipv4-entry`/`ipv6-entry`, and its group
//! holds the next hops the kernel uses (dead ones left out); a prefix none of whose
//! routes can forward has no entry (see [`best_route`]). Next hops and next-hop groups are shared
//! objects with ids: a next hop per distinct (gateway, interface index; a renamed link
//! keeps its next hops, whose `interface-ref` follows the new name), a group per
//! distinct weighted hop set, both reference-counted and deleted when their last user goes, as a
//! vendor router's AFT does. Non-unicast routes (blackhole, unreachable, local...) point
//! at a group without next hops; their type is in `entry-metadata`.
//!
//! [`Aft::set`] turns "the best route of this prefix is now X (or none)" into the
//! ordered AFT operations a collector applies: objects before the entries that use them
//! on the way in, entries before their objects on the way out.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::fib::{Entry, Usable};
use crate::mirror::Mirror;
use crate::model::{rtnh, Family};
use crate::view::RouteContext;

/// A next hop as the AFT shows it (`afts/next-hops/next-hop[index]/state`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NextHop {
    /// `state/ip-address`; none for a directly connected route.
    pub ip: Option<IpAddr>,
    pub ifindex: u32,
    /// `interface-ref/state/interface`: the link's name (none once the link is gone).
    pub interface: Option<Arc<str>>,
}

/// A next hop's identity: what it forwards to. Its interface's name is not part of it:
/// a renamed link keeps its next hops (and their groups and entries), and only their
/// `interface-ref` changes, as on a vendor router.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct HopKey {
    ip: Option<IpAddr>,
    ifindex: u32,
}

impl HopKey {
    fn of(h: &NextHop) -> HopKey {
        HopKey {
            ip: h.ip,
            ifindex: h.ifindex,
        }
    }
}

/// One member of a next-hop group: next-hop index and weight.
pub type Member = (u64, u64);

/// An AFT prefix entry (`ipv4-entry[prefix]/state`), without its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry4 {
    /// `state/next-hop-group`.
    pub nhg: u64,
    /// The route's metric (`RTA_PRIORITY`), in `entry-metadata`.
    pub metric: u32,
    /// `RTN_*` route type, in `entry-metadata`.
    pub kind: u8,
    /// `RTPROT_*`: mapped to `origin-protocol`, and in `entry-metadata`.
    pub protocol: u8,
}

/// The best route of a prefix, as the AFT needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Best {
    pub metric: u32,
    pub kind: u8,
    pub protocol: u8,
    /// Next hops and weights, in the route's order.
    pub hops: Vec<(NextHop, u64)>,
}

/// One AFT operation, in the order a collector must apply them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    NextHop {
        index: u64,
        hop: NextHop,
    },
    /// An existing next hop's interface was renamed, or went away (`interface` none).
    NextHopInterface {
        index: u64,
        hop: NextHop,
    },
    NextHopDelete {
        index: u64,
    },
    Group {
        id: u64,
        members: Arc<[Member]>,
    },
    GroupDelete {
        id: u64,
    },
    Entry {
        prefix: IpNet,
        entry: Entry4,
    },
    EntryDelete {
        prefix: IpNet,
    },
}

/// An [`Op`] in a network instance (a table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub table: u32,
    pub op: Op,
}

/// A position in an instance, in the order a snapshot walks it: next hops, groups,
/// IPv4 entries, IPv6 entries (objects before the entries that use them), each by key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Slot {
    Hop(u64),
    Group(u64),
    V4(Ipv4Net),
    V6(Ipv6Net),
    /// After every object of the instance.
    End,
}

impl Slot {
    fn rank(self) -> u8 {
        match self {
            Slot::Hop(_) => 0,
            Slot::Group(_) => 1,
            Slot::V4(_) => 2,
            Slot::V6(_) => 3,
            Slot::End => 4,
        }
    }

    pub fn of_prefix(p: IpNet) -> Slot {
        match p {
            IpNet::V4(p) => Slot::V4(p),
            IpNet::V6(p) => Slot::V6(p),
        }
    }

    /// The object an operation is about.
    pub fn of_op(op: &Op) -> Slot {
        match op {
            Op::NextHop { index, .. }
            | Op::NextHopInterface { index, .. }
            | Op::NextHopDelete { index } => Slot::Hop(*index),
            Op::Group { id, .. } | Op::GroupDelete { id } => Slot::Group(*id),
            Op::Entry { prefix, .. } | Op::EntryDelete { prefix } => Slot::of_prefix(*prefix),
        }
    }
}

/// One object met by [`Aft::visit`].
#[derive(Debug)]
pub enum Obj<'a> {
    Hop(u64, NextHop),
    Group(u64, &'a Arc<[Member]>),
    Entry(IpNet, &'a Entry4),
}

/// Reference-counted objects with small ids, deduplicated by value.
#[derive(Debug, Clone)]
struct Pool<V: std::hash::Hash + Eq + Clone> {
    ids: HashMap<V, (u64, u64)>,
    values: BTreeMap<u64, V>,
    next: u64,
}

impl<V: std::hash::Hash + Eq + Clone> Default for Pool<V> {
    fn default() -> Self {
        Pool {
            ids: HashMap::new(),
            values: BTreeMap::new(),
            next: 1,
        }
    }
}

impl<V: std::hash::Hash + Eq + Clone> Pool<V> {
    /// Takes a reference to `v`; `Some(id)` when it is new (the caller announces it).
    fn take(&mut self, v: &V) -> (u64, bool) {
        if let Some((id, refs)) = self.ids.get_mut(v) {
            *refs += 1;
            return (*id, false);
        }
        let id = self.next;
        self.next += 1;
        self.ids.insert(v.clone(), (id, 1));
        self.values.insert(id, v.clone());
        (id, true)
    }

    /// Drops a reference; true when it was the last (the caller deletes the object).
    fn release(&mut self, id: u64) -> bool {
        let Some(v) = self.values.get(&id) else {
            return false;
        };
        let (_, refs) = self.ids.get_mut(v).expect("pool maps agree");
        *refs -= 1;
        if *refs > 0 {
            return false;
        }
        let v = self.values.remove(&id).expect("present");
        self.ids.remove(&v);
        true
    }

    fn get(&self, id: u64) -> Option<&V> {
        self.values.get(&id)
    }
}

/// One network instance: a mirrored table. Every list is ordered by its key, so a
/// snapshot can be walked in bounded slices and resumed after the last key it sent
/// ([`Aft::visit`]) while the AFT keeps changing between slices.
#[derive(Debug, Clone, Default)]
pub struct Instance {
    pub v4: BTreeMap<Ipv4Net, Entry4>,
    pub v6: BTreeMap<Ipv6Net, Entry4>,
    hops: Pool<HopKey>,
    /// Each next hop's interface name, by index.
    interfaces: HashMap<u64, Option<Arc<str>>>,
    groups: Pool<Arc<[Member]>>,
}

impl Instance {
    pub fn entry(&self, prefix: &IpNet) -> Option<&Entry4> {
        match prefix {
            IpNet::V4(p) => self.v4.get(p),
            IpNet::V6(p) => self.v6.get(p),
        }
    }

    pub fn entries(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn next_hops(&self) -> impl Iterator<Item = (u64, NextHop)> + '_ {
        self.hops
            .values
            .keys()
            .filter_map(|&i| Some((i, self.next_hop(i)?)))
    }

    pub fn next_hop(&self, index: u64) -> Option<NextHop> {
        let k = self.hops.get(index)?;
        Some(NextHop {
            ip: k.ip,
            ifindex: k.ifindex,
            interface: self.interfaces.get(&index).cloned().flatten(),
        })
    }

    /// Re-reads the interface name of every next hop through `links`, appending an
    /// operation for each that changed.
    pub fn rename_links(
        &mut self,
        links: &[u32],
        name: &dyn Fn(u32) -> Option<Arc<str>>,
        out: &mut Vec<Op>,
    ) {
        for (&index, k) in &self.hops.values {
            if !links.contains(&k.ifindex) {
                continue;
            }
            let now = name(k.ifindex);
            let slot = self.interfaces.entry(index).or_default();
            if *slot != now {
                slot.clone_from(&now);
                out.push(Op::NextHopInterface {
                    index,
                    hop: NextHop {
                        ip: k.ip,
                        ifindex: k.ifindex,
                        interface: now,
                    },
                });
            }
        }
    }

    pub fn groups(&self) -> impl Iterator<Item = (u64, &Arc<[Member]>)> {
        self.groups.values.iter().map(|(&i, g)| (i, g))
    }

    pub fn group(&self, id: u64) -> Option<&Arc<[Member]>> {
        self.groups.get(id)
    }

    /// Entries of one family, in prefix order.
    pub fn family_entries(&self, f: Family) -> Box<dyn Iterator<Item = (IpNet, &Entry4)> + '_> {
        match f {
            Family::V4 => Box::new(self.v4.iter().map(|(p, e)| (IpNet::V4(*p), e))),
            Family::V6 => Box::new(self.v6.iter().map(|(p, e)| (IpNet::V6(*p), e))),
        }
    }

    fn take_group(&mut self, best: &Best, out: &mut Vec<Op>) -> u64 {
        let mut members = Vec::with_capacity(best.hops.len());
        for (hop, weight) in &best.hops {
            let (index, new) = self.hops.take(&HopKey::of(hop));
            let interface = self.interfaces.entry(index).or_default();
            if new {
                interface.clone_from(&hop.interface);
                out.push(Op::NextHop {
                    index,
                    hop: hop.clone(),
                });
            } else if *interface != hop.interface {
                // Read after a rename the pump has not seen yet: the next hop follows.
                interface.clone_from(&hop.interface);
                out.push(Op::NextHopInterface {
                    index,
                    hop: hop.clone(),
                });
            }
            members.push((index, *weight));
        }
        let members: Arc<[Member]> = members.into();
        let (id, new) = self.groups.take(&members);
        if new {
            out.push(Op::Group { id, members });
        } else {
            // The group existed: the hop references just taken are not its own.
            for (index, _) in members.iter() {
                if self.hops.release(*index) {
                    self.interfaces.remove(index); // never the last: the group holds it
                }
            }
        }
        id
    }

    fn release_group(&mut self, id: u64, out: &mut Vec<Op>) {
        let members = self.groups.get(id).cloned();
        if self.groups.release(id) {
            out.push(Op::GroupDelete { id });
            for (index, _) in members.iter().flat_map(|m| m.iter()) {
                if self.hops.release(*index) {
                    self.interfaces.remove(index);
                    out.push(Op::NextHopDelete { index: *index });
                }
            }
        }
    }

    /// Sets the best route of `prefix` (or removes it), appending the AFT operations.
    pub fn set(&mut self, prefix: IpNet, best: Option<&Best>, out: &mut Vec<Op>) {
        let old = self.entry(&prefix).copied();
        let Some(best) = best else {
            if let Some(old) = old {
                self.remove(&prefix);
                out.push(Op::EntryDelete { prefix });
                self.release_group(old.nhg, out);
            }
            return;
        };
        let nhg = self.take_group(best, out);
        let entry = Entry4 {
            nhg,
            metric: best.metric,
            kind: best.kind,
            protocol: best.protocol,
        };
        if old == Some(entry) {
            self.release_group(nhg, out); // our extra reference; never the last
            return;
        }
        match prefix {
            IpNet::V4(p) => self.v4.insert(p, entry),
            IpNet::V6(p) => self.v6.insert(p, entry),
        };
        out.push(Op::Entry { prefix, entry });
        if let Some(old) = old {
            self.release_group(old.nhg, out);
        }
    }

    fn remove(&mut self, prefix: &IpNet) {
        match prefix {
            IpNet::V4(p) => self.v4.remove(p),
            IpNet::V6(p) => self.v6.remove(p),
        };
    }
}

/// The AFTs of one namespace: a network instance per table that has routes.
#[derive(Debug, Clone, Default)]
pub struct Aft {
    pub instances: BTreeMap<u32, Instance>,
    /// What each table's network instance is called.
    pub names: Arc<InstanceNames>,
}

/// The network-instance names of one namespace's tables: a VRF's table is named after
/// its VRF device (as a router names its VRF instances), any other table as in
/// `rt_tables` (`main`, `local`, or its number).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceNames {
    vrfs: BTreeMap<u32, String>,
    /// Names no longer used (a VRF renamed, removed, or created over a table that
    /// had routes): a resnapshot deletes them too, so a collector keeps no instance
    /// under an old name.
    pub retired: BTreeSet<String>,
}

impl InstanceNames {
    /// The VRF devices among `m`'s links (the lowest ifindex wins if two share a table).
    pub fn vrfs_of(m: &Mirror) -> BTreeMap<u32, String> {
        let mut links: Vec<_> = m
            .links
            .values()
            .filter_map(|l| l.vrf_table.map(|t| (l.ifindex, t, l.name.clone())))
            .collect();
        links.sort_unstable();
        let mut vrfs = BTreeMap::new();
        for (_, table, name) in links {
            vrfs.entry(table).or_insert(name);
        }
        vrfs
    }

    /// The VRF devices' tables and names.
    pub fn vrfs(&self) -> &BTreeMap<u32, String> {
        &self.vrfs
    }

    pub fn name(&self, table: u32) -> String {
        match self.vrfs.get(&table) {
            Some(n) => n.clone(),
            None => crate::names::system().table_name(table),
        }
    }

    /// These names with `vrfs` as the VRF devices, if that renames any table; the
    /// names it replaces are retired.
    pub fn with_vrfs(&self, vrfs: BTreeMap<u32, String>) -> Option<InstanceNames> {
        if vrfs == self.vrfs {
            return None;
        }
        let mut next = InstanceNames {
            vrfs,
            retired: self.retired.clone(),
        };
        let tables: BTreeSet<u32> = self.vrfs.keys().chain(next.vrfs.keys()).copied().collect();
        for t in tables {
            let old = self.name(t);
            if old != next.name(t) {
                next.retired.insert(old);
            }
        }
        Some(next)
    }
}

impl Aft {
    /// The AFTs of every route in `routes` (a feed snapshot: each prefix's routes
    /// adjacent, in sub-key order).
    pub fn build_from(routes: &[(u32, IpNet, Entry)], names: &impl RouteContext) -> Aft {
        let mut aft = Aft::default();
        let mut sink = Vec::new();
        let mut i = 0;
        while i < routes.len() {
            let (table, dst) = (routes[i].0, routes[i].1);
            let n = routes[i..]
                .iter()
                .take_while(|r| r.0 == table && r.1 == dst)
                .count();
            let best = best_of(
                names,
                Family::of_net(&dst),
                routes[i..i + n].iter().map(|r| &r.2),
            );
            aft.set(table, dst, best.as_ref(), &mut sink);
            sink.clear();
            i += n;
        }
        aft
    }

    /// Sets the best route of `table`/`prefix`, appending the changes to `out`.
    pub fn set(&mut self, table: u32, prefix: IpNet, best: Option<&Best>, out: &mut Vec<Change>) {
        let mut ops = Vec::new();
        match self.instances.get_mut(&table) {
            Some(i) => i.set(prefix, best, &mut ops),
            None if best.is_some() => {
                let mut i = Instance::default();
                i.set(prefix, best, &mut ops);
                self.instances.insert(table, i);
            }
            None => {}
        }
        if self.instances.get(&table).is_some_and(|i| i.entries() == 0) {
            self.instances.remove(&table);
        }
        out.extend(ops.into_iter().map(|op| Change { table, op }));
    }

    /// Re-reads `table`/`prefix` from the mirror.
    pub fn refresh(&mut self, m: &Mirror, table: u32, prefix: IpNet, out: &mut Vec<Change>) {
        let best = best_route(m, table, &prefix);
        self.set(table, prefix, best.as_ref(), out);
    }

    pub fn entries(&self) -> usize {
        self.instances.values().map(Instance::entries).sum()
    }

    /// Visits up to `budget` objects after `after` (from the start when `None`), in
    /// walk order ([`Slot`]), skipping the sections `wants(table, section)` declines
    /// (`section`: any slot of it, key meaningless). Returns the last position visited,
    /// or `None` when the walk reached the end. Resuming after a position that changed
    /// meanwhile is fine: the walk goes on after its key.
    pub fn visit(
        &self,
        after: Option<(u32, Slot)>,
        mut budget: usize,
        wants: &dyn Fn(u32, Slot) -> bool,
        f: &mut dyn FnMut(u32, Obj<'_>),
    ) -> Option<(u32, Slot)> {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        let first = after.map_or(Unbounded, |(t, _)| Included(t));
        let mut last = None;
        for (&table, inst) in self.instances.range((first, Unbounded)) {
            let from = after.filter(|(t, _)| *t == table).map(|(_, s)| s);
            // Whether the walk is past `slot`'s section start (then resume after `from`).
            let bound = |kind: Slot| -> Option<std::ops::Bound<Slot>> {
                match from {
                    Some(f) if f.rank() > kind.rank() => None,
                    Some(f) if f.rank() == kind.rank() => Some(Excluded(f)),
                    _ => Some(Unbounded),
                }
            };
            macro_rules! section {
                ($kind:expr, $map:expr, $key:path, $obj:expr) => {
                    if let Some(b) = bound($kind).filter(|_| wants(table, $kind)) {
                        let lo = match b {
                            Excluded($key(k)) => Excluded(k),
                            _ => Unbounded,
                        };
                        for (k, v) in $map.range((lo, Unbounded)) {
                            if budget == 0 {
                                return last;
                            }
                            budget -= 1;
                            f(table, ($obj)(*k, v));
                            last = Some((table, $key(*k)));
                        }
                    }
                };
            }
            section!(Slot::Hop(0), inst.hops.values, Slot::Hop, |k, _| Obj::Hop(
                k,
                inst.next_hop(k).expect("listed")
            ));
            section!(Slot::Group(0), inst.groups.values, Slot::Group, |k, g| {
                Obj::Group(k, g)
            });
            section!(Slot::V4(Ipv4Net::default()), inst.v4, Slot::V4, |k, e| {
                Obj::Entry(IpNet::V4(k), e)
            });
            section!(Slot::V6(Ipv6Net::default()), inst.v6, Slot::V6, |k, e| {
                Obj::Entry(IpNet::V6(k), e)
            });
            // The instance is done: a later walk resumes at the next one.
            last = Some((table, Slot::End));
        }
        None
    }

    /// Links renamed or removed ([`crate::export::change::Batch::links_renamed`]): the
    /// next hops through them take the mirror's name for them now (none if removed).
    pub fn rename_links(&mut self, m: &Mirror, links: &[u32], out: &mut Vec<Change>) {
        let name = |i: u32| m.link_name(i).map(Arc::from);
        for (&table, inst) in &mut self.instances {
            let mut ops = Vec::new();
            inst.rename_links(links, &name, &mut ops);
            out.extend(ops.into_iter().map(|op| Change { table, op }));
        }
    }
}

/// The best route of `table`/`dst` in the mirror, as the AFT shows it.
pub fn best_route(m: &Mirror, table: u32, dst: &IpNet) -> Option<Best> {
    let family = Family::of_net(dst);
    let entries = m.fib.table(family, table)?.get(dst)?;
    best_of(m, family, entries.iter())
}

/// The route the kernel forwards with among one prefix's routes (in the kernel's
/// order: keys, then each key's list), as its lookup picks it
/// ([`crate::fib::RouteTable::lookup_with`] with the mirror's liveness): the first
/// TOS-0 route without a source prefix that can forward. Its next hops are the ones
/// the kernel uses: hops that are dead (or `linkdown` on a device that ignores such
/// routes) are left out, as `fib_select_multipath`/`fib6_select_path` skip them and
/// as a router's hardware FIB holds only the next hops it programmed. None when no
/// route of the prefix can forward: the kernel's lookup falls through to a shorter
/// prefix, so the AFT has no entry for it (the BPF FIB export decides the same way).
fn best_of<'a>(
    m: &impl RouteContext,
    family: Family,
    entries: impl Iterator<Item = &'a Entry>,
) -> Option<Best> {
    let mut best = None;
    for e in entries {
        if e.tos() != 0 || e.ext_raw() != 0 {
            continue;
        }
        if crate::model::rtn::is_reject(e.attrs.kind) {
            best = Some(e);
            break;
        }
        match m.usable(family, &e.attrs) {
            Usable::Yes => {
                best = Some(e);
                break;
            }
            Usable::No => continue,
            Usable::NoSkipPrefix => return None,
        }
    }
    let e = best?;
    let hops = m
        .dumped_hops(family, &e.attrs)
        .into_iter()
        .filter(|h| h.flags & rtnh::DEAD == 0)
        .map(|h| {
            let hop = NextHop {
                ip: h.gateway,
                ifindex: h.ifindex,
                interface: (h.ifindex != 0)
                    .then(|| m.link_name(h.ifindex).map(Arc::from))
                    .flatten(),
            };
            (hop, u64::from(h.weight.max(1)))
        })
        .collect();
    Some(Best {
        metric: e.priority(),
        kind: e.attrs.kind,
        protocol: e.attrs.protocol,
        hops,
    })
}

/// `entry-metadata` (at most 8 bytes in the model): metric (u32, big-endian), `RTN_*`
/// route type, `RTPROT_*` protocol. Documented in README ("gNMI").
pub fn metadata(e: &Entry4) -> [u8; 6] {
    let m = e.metric.to_be_bytes();
    [m[0], m[1], m[2], m[3], e.kind, e.protocol]
}

/// `origin-protocol`: the OpenConfig `INSTALL_PROTOCOL_TYPE` identity for a kernel
/// `RTPROT_*` value. Kernel-made routes (connected subnets, local addresses) are
/// `DIRECTLY_CONNECTED`; routing daemons tag theirs with their protocol number
/// (FRR: bgp 186, isis 187, ospf 188; BIRD uses 12 for all and says nothing more).
/// Anything else, including `boot` (`ip route add`), is `STATIC`.
pub fn origin_protocol(protocol: u8, kind: u8) -> &'static str {
    use crate::model::rtn;
    if kind == rtn::LOCAL {
        return "openconfig-policy-types:LOCAL";
    }
    match protocol {
        2 => "openconfig-policy-types:DIRECTLY_CONNECTED",
        186 => "openconfig-policy-types:BGP",
        187 => "openconfig-policy-types:ISIS",
        188 => "openconfig-policy-types:OSPF",
        _ => "openconfig-policy-types:STATIC",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop(gw: &str, ifindex: u32) -> NextHop {
        NextHop {
            ip: Some(gw.parse().unwrap()),
            ifindex,
            interface: Some(format!("veth{ifindex}").into()),
        }
    }

    fn best(metric: u32, hops: &[(&str, u32, u64)]) -> Best {
        Best {
            metric,
            kind: 1,
            protocol: 4,
            hops: hops.iter().map(|&(g, i, w)| (hop(g, i), w)).collect(),
        }
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ops(out: &[Change]) -> Vec<String> {
        out.iter()
            .map(|c| match &c.op {
                Op::NextHop { index, .. } => format!("nh {index}"),
                Op::NextHopInterface { index, hop } => {
                    format!("nh {index} dev {}", hop.interface.as_deref().unwrap_or("-"))
                }
                Op::NextHopDelete { index } => format!("-nh {index}"),
                Op::Group { id, members } => format!("nhg {id} {members:?}"),
                Op::GroupDelete { id } => format!("-nhg {id}"),
                Op::Entry { prefix, entry } => format!("e {prefix} {}", entry.nhg),
                Op::EntryDelete { prefix } => format!("-e {prefix}"),
            })
            .collect()
    }

    #[test]
    fn objects_come_before_entries_and_go_after_them() {
        let mut aft = Aft::default();
        let mut out = Vec::new();
        let ecmp = best(10, &[("198.18.1.2", 3, 1), ("198.18.2.2", 4, 2)]);
        aft.set(254, net("10.0.0.0/8"), Some(&ecmp), &mut out);
        assert_eq!(
            ops(&out),
            ["nh 1", "nh 2", "nhg 1 [(1, 1), (2, 2)]", "e 10.0.0.0/8 1"]
        );
        out.clear();
        // A second prefix on the same hop set shares the group: only its entry is new.
        aft.set(254, net("10.1.0.0/16"), Some(&ecmp), &mut out);
        assert_eq!(ops(&out), ["e 10.1.0.0/16 1"]);
        out.clear();
        // Setting the same best route again says nothing.
        aft.set(254, net("10.1.0.0/16"), Some(&ecmp), &mut out);
        assert!(out.is_empty());
        // Moving one prefix to a single hop makes a new group and keeps hop 1.
        aft.set(
            254,
            net("10.1.0.0/16"),
            Some(&best(10, &[("198.18.1.2", 3, 1)])),
            &mut out,
        );
        assert_eq!(ops(&out), ["nhg 2 [(1, 1)]", "e 10.1.0.0/16 2"]);
        out.clear();
        // Removing the ECMP prefix frees its group and hop 2, not hop 1.
        aft.set(254, net("10.0.0.0/8"), None, &mut out);
        assert_eq!(ops(&out), ["-e 10.0.0.0/8", "-nhg 1", "-nh 2"]);
        out.clear();
        aft.set(254, net("10.1.0.0/16"), None, &mut out);
        assert_eq!(ops(&out), ["-e 10.1.0.0/16", "-nhg 2", "-nh 1"]);
        assert!(
            aft.instances.is_empty(),
            "an emptied table leaves no instance"
        );
        // Deleting what is not there says nothing.
        out.clear();
        aft.set(254, net("10.1.0.0/16"), None, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn a_renamed_link_keeps_its_next_hops_and_renames_them() {
        let mut inst = Instance::default();
        let mut out = Vec::new();
        let ecmp = best(10, &[("198.18.1.2", 3, 1), ("198.18.2.2", 4, 1)]);
        inst.set(net("10.0.0.0/8"), Some(&ecmp), &mut out);
        inst.set(
            net("10.1.0.0/16"),
            Some(&best(10, &[("198.18.1.2", 3, 1)])),
            &mut out,
        );
        out.clear();
        // Link 3 renamed: one operation per next hop through it, nothing else changes.
        let names = |i: u32| (i == 3).then(|| Arc::from("wan0"));
        inst.rename_links(&[3], &names, &mut out);
        let changes: Vec<Change> = out.drain(..).map(|op| Change { table: 254, op }).collect();
        assert_eq!(ops(&changes), ["nh 1 dev wan0"]);
        assert_eq!(inst.next_hop(1).unwrap().interface.as_deref(), Some("wan0"));
        assert_eq!(
            inst.next_hop(2).unwrap().interface.as_deref(),
            Some("veth4")
        );
        // Said once: the same name again is no change.
        inst.rename_links(&[3], &names, &mut out);
        assert!(out.is_empty());
        // A route read before the pump saw a rename (the mirror already has the new
        // name) renames the shared next hop instead of making a second one.
        let mut renamed = best(20, &[("198.18.2.2", 4, 1)]);
        renamed.hops[0].0.interface = Some("lan0".into());
        inst.set(net("10.2.0.0/16"), Some(&renamed), &mut out);
        let changes: Vec<Change> = out.drain(..).map(|op| Change { table: 254, op }).collect();
        assert_eq!(
            ops(&changes),
            ["nh 2 dev lan0", "nhg 3 [(2, 1)]", "e 10.2.0.0/16 3"]
        );
        // Removed: the next hop loses its interface.
        inst.rename_links(&[3], &|_| None, &mut out);
        let changes: Vec<Change> = out.drain(..).map(|op| Change { table: 254, op }).collect();
        assert_eq!(ops(&changes), ["nh 1 dev -"]);
        assert_eq!(inst.next_hops().count(), 2);
        // Released with its last user, name and all.
        inst.set(net("10.0.0.0/8"), None, &mut out);
        inst.set(net("10.1.0.0/16"), None, &mut out);
        assert_eq!(inst.next_hops().map(|(i, _)| i).collect::<Vec<_>>(), [2]);
        assert_eq!(inst.interfaces.len(), 1);
    }

    #[test]
    fn metric_change_replaces_the_entry_in_place() {
        let mut aft = Aft::default();
        let mut out = Vec::new();
        let b = best(10, &[("198.18.1.2", 3, 1)]);
        aft.set(100, net("2001:db8::/32"), Some(&b), &mut out);
        out.clear();
        aft.set(
            100,
            net("2001:db8::/32"),
            Some(&Best { metric: 20, ..b }),
            &mut out,
        );
        assert_eq!(ops(&out), ["e 2001:db8::/32 1"]);
        let i = &aft.instances[&100];
        assert_eq!(i.entry(&net("2001:db8::/32")).unwrap().metric, 20);
        assert_eq!(i.groups().count(), 1);
        assert_eq!(i.next_hops().count(), 1);
    }

    #[test]
    fn metadata_and_origin() {
        let e = Entry4 {
            nhg: 1,
            metric: 0x0102_0304,
            kind: 6,
            protocol: 186,
        };
        assert_eq!(metadata(&e), [1, 2, 3, 4, 6, 186]);
        assert_eq!(origin_protocol(186, 1), "openconfig-policy-types:BGP");
        assert_eq!(
            origin_protocol(2, 1),
            "openconfig-policy-types:DIRECTLY_CONNECTED"
        );
        assert_eq!(origin_protocol(2, 2), "openconfig-policy-types:LOCAL");
        assert_eq!(origin_protocol(3, 1), "openconfig-policy-types:STATIC");
    }

    /// VRF devices name their tables (the lowest ifindex if two share one), other
    /// tables keep their rt_tables names; a rename retires the old name.
    #[test]
    fn vrf_devices_name_their_tables() {
        use crate::mirror::Stamped;
        use crate::model::Link;
        let mut m = Mirror::default();
        for (ifindex, name, vrf_table) in [
            (3, "blue", Some(1001)),
            (2, "green", Some(1002)),
            (9, "other", Some(1001)),
            (4, "eth0", None),
        ] {
            let link = Link {
                ifindex,
                name: name.into(),
                vrf_table,
                ..Link::default()
            };
            m.links.insert(
                ifindex,
                Stamped {
                    value: link,
                    stamp: 0,
                },
            );
        }
        let vrfs = InstanceNames::vrfs_of(&m);
        let want: BTreeMap<u32, String> =
            [(1001, "blue".to_string()), (1002, "green".to_string())].into();
        assert_eq!(vrfs, want);
        let names = InstanceNames::default().with_vrfs(vrfs.clone()).unwrap();
        assert_eq!(names.name(1001), "blue");
        assert_eq!(names.name(254), "main");
        assert!(names.with_vrfs(vrfs).is_none(), "unchanged");
        let renamed = names.with_vrfs([(1001, "red".to_string())].into()).unwrap();
        assert_eq!(renamed.name(1001), "red");
        assert_eq!(renamed.name(1002), "1002");
        let retired: BTreeSet<String> = ["1001", "1002", "blue", "green"].map(String::from).into();
        assert_eq!(renamed.retired, retired);
    }
}
