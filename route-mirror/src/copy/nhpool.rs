//! Shared nexthop objects for the multipath routes a copy writes into one target
//! namespace (issue 15: ECMP "into shared nexthop objects where the kernel supports
//! them": a route naming a group installs several times faster than one spelling its
//! hops, and a hop change is one message for every route using it).
//!
//! The pool owns the ids `ID_BASE..ID_BASE + ID_SPAN` of the target namespace, and only
//! objects there with the copy's protocol. It makes one object per distinct hop and one
//! group per distinct list of (hop, weight); routes name the group (`RTA_NH_ID`). Objects
//! are written before the routes that use them, in the same batch. Their state is
//! checked against the target's mirror: an object someone deleted or changed is written
//! again (the kernel deletes the routes using a deleted object; those come back as
//! foreign deletes). Objects no route uses are deleted when the copy is idle. After a
//! restart the pool adopts its objects from the target's mirror, so routes using them
//! compare equal and nothing is rewritten. When the kernel refuses nexthop objects
//! (EOPNOTSUPP: no `RTM_NEWNEXTHOP`), the pool turns itself off and routes go inline;
//! an object the kernel refuses for its own reasons (its device is down: the kernel
//! also removes objects whose device goes down) makes the routes using it go inline
//! until a retry succeeds.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};

use crate::mirror::Stamped;
use crate::model::{rtnh, Family, GroupMember, NextHop, NexthopKind, NexthopObject};
use crate::writer::{KernelError, Outcome};

/// The first id of the pool's range ("r", then the default protocol 240).
pub const ID_BASE: u32 = 0x72f0_0000;
/// Ids in the range: a million distinct hops and groups.
pub const ID_SPAN: u32 = 1 << 20;
/// An object the kernel refused is tried again after this long (its routes go inline
/// meanwhile).
const RETRY: Duration = Duration::from_secs(1);
/// An object the kernel accepted and the target's mirror still shows otherwise (or not
/// at all) after this long was changed or deleted unseen (the mirror overran and
/// resynced past our echo, or the device went between our write and its echo).
pub const UNSEEN_AFTER: Duration = Duration::from_secs(1);

pub fn in_range(id: u32) -> bool {
    (ID_BASE..ID_BASE + ID_SPAN).contains(&id)
}

/// One hop as an object's identity.
type HopKey = (Family, Option<IpAddr>, u32, u8);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// To be written (new, or found deleted or changed).
    New,
    /// Written, not yet seen in the target's mirror.
    Written,
    /// In the target's mirror as written.
    Live,
    /// Refused by the kernel: routes using it go inline until then.
    Failed(Instant),
}

#[derive(Debug)]
struct Obj {
    nh: NexthopObject,
    state: State,
    /// When the kernel last accepted it (`None`: never yet). Routes in the kernel may
    /// name it since then.
    done: Option<Instant>,
}

/// Counters shown with the copies.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NhCounters {
    /// Objects in the pool (hops and groups).
    pub objects: u64,
    pub groups: u64,
    /// Objects written (created or rewritten).
    pub written: u64,
    /// Objects found at start-up and kept.
    pub adopted: u64,
    /// Objects found deleted or changed by someone else, and written again.
    pub repaired: u64,
    /// Objects a write found missing from the kernel though the pool held them written
    /// (a route naming one, or a group naming a hop, was refused with "does not
    /// exist"), written again before that write's retry.
    pub vanished: u64,
    /// Unused objects deleted.
    pub collected: u64,
    /// Object writes the kernel refused.
    pub refused: u64,
    /// The kernel refused nexthop objects altogether: routes go inline.
    pub disabled: bool,
}

pub struct NhPool {
    protocol: u8,
    enabled: bool,
    hops: FxHashMap<HopKey, u32>,
    groups: FxHashMap<Vec<(u32, u32)>, u32>,
    objs: FxHashMap<u32, Obj>,
    next: u32,
    /// Groups of our range the pool let go while the kernel still holds them.
    orphans: Vec<u32>,
    pub counters: NhCounters,
}

impl NhPool {
    pub fn new(protocol: u8) -> NhPool {
        NhPool {
            protocol,
            enabled: true,
            hops: FxHashMap::default(),
            groups: FxHashMap::default(),
            objs: FxHashMap::default(),
            next: ID_BASE,
            orphans: Vec::new(),
            counters: NhCounters::default(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Takes over the objects of ours the target already holds (a restart).
    pub fn adopt(&mut self, nexthops: &HashMap<u32, Stamped<NexthopObject>>) {
        let mut ids: Vec<u32> = nexthops
            .iter()
            .filter(|(id, o)| in_range(**id) && o.value.protocol == self.protocol)
            .map(|(id, _)| *id)
            .collect();
        // Singles first: groups name them.
        ids.sort_by_key(|id| {
            (
                matches!(nexthops[id].value.kind, NexthopKind::Group { .. }),
                *id,
            )
        });
        for id in ids {
            if self.objs.contains_key(&id) {
                continue;
            }
            let nh = nexthops[&id].value.clone();
            match &nh.kind {
                NexthopKind::Single {
                    gateway,
                    ifindex,
                    flags,
                    encap: None,
                } => {
                    let Some(f) = nh.family else { continue };
                    self.hops
                        .entry((f, *gateway, *ifindex, flags & rtnh::STABLE))
                        .or_insert(id);
                }
                NexthopKind::Group {
                    members,
                    resilient: false,
                } => {
                    let key: Vec<(u32, u32)> = members.iter().map(|m| (m.id, m.weight)).collect();
                    self.groups.entry(key).or_insert(id);
                }
                _ => continue,
            }
            self.objs.insert(
                id,
                Obj {
                    nh,
                    state: State::Live,
                    done: None,
                },
            );
            self.counters.adopted += 1;
        }
        self.recount();
    }

    fn recount(&mut self) {
        self.counters.objects = self.objs.len() as u64;
        self.counters.groups = self.groups.len() as u64;
        self.counters.disabled = !self.enabled;
    }

    fn alloc(&mut self, taken: &dyn Fn(u32) -> bool) -> Option<u32> {
        for _ in 0..ID_SPAN {
            let id = self.next;
            self.next = if id + 1 >= ID_BASE + ID_SPAN {
                ID_BASE
            } else {
                id + 1
            };
            if !self.objs.contains_key(&id) && !self.orphans.contains(&id) && !taken(id) {
                return Some(id);
            }
        }
        None
    }

    fn usable(&self, id: u32, now: Instant) -> bool {
        !matches!(self.objs.get(&id), Some(Obj { state: State::Failed(t), .. }) if *t > now)
    }

    /// The group for a multipath route of `family` through `hops` (made if new), or
    /// `None`: the route goes inline (objects off, a refused object, no free id).
    /// `taken`: whether the target holds an object of that id (not ours to overwrite).
    pub fn group_for(
        &mut self,
        family: Family,
        hops: &[NextHop],
        now: Instant,
        taken: &dyn Fn(u32) -> bool,
    ) -> Option<u32> {
        // Realms have no place in an object; encapsulations stay with their routes.
        if !self.enabled
            || hops.len() < 2
            || hops.iter().any(|h| h.encap.is_some() || h.realms != 0)
        {
            return None;
        }
        let mut members = Vec::with_capacity(hops.len());
        for h in hops {
            let hf = h.gateway.as_ref().map_or(family, Family::of);
            let key = (hf, h.gateway, h.ifindex, h.flags & rtnh::STABLE);
            let id = match self.hops.get(&key) {
                Some(&id) => id,
                None => {
                    let id = self.alloc(taken)?;
                    self.hops.insert(key, id);
                    self.objs.insert(
                        id,
                        Obj {
                            nh: NexthopObject {
                                id,
                                family: Some(hf),
                                protocol: self.protocol,
                                kind: NexthopKind::Single {
                                    gateway: h.gateway,
                                    ifindex: h.ifindex,
                                    flags: key.3,
                                    encap: None,
                                },
                            },
                            state: State::New,
                            done: None,
                        },
                    );
                    id
                }
            };
            if !self.usable(id, now) {
                return None;
            }
            members.push((id, u32::from(h.weight.max(1))));
        }
        let id = match self.groups.get(&members) {
            Some(&id) => id,
            None => {
                let id = self.alloc(taken)?;
                self.objs.insert(
                    id,
                    Obj {
                        nh: NexthopObject {
                            id,
                            family: None,
                            protocol: self.protocol,
                            kind: NexthopKind::Group {
                                members: members
                                    .iter()
                                    .map(|&(id, weight)| GroupMember { id, weight })
                                    .collect(),
                                resilient: false,
                            },
                        },
                        state: State::New,
                        done: None,
                    },
                );
                self.groups.insert(members, id);
                id
            }
        };
        self.recount();
        self.usable(id, now).then_some(id)
    }

    /// Objects to write now (hops before groups), marked written. Refused ones whose
    /// retry is due are written again.
    pub fn take_writes(&mut self, now: Instant) -> Vec<NexthopObject> {
        let mut out: Vec<NexthopObject> = self
            .objs
            .values_mut()
            .filter(|o| match o.state {
                State::New => true,
                State::Failed(t) => t <= now,
                _ => false,
            })
            .map(|o| {
                o.state = State::Written;
                o.nh.clone()
            })
            .collect();
        out.sort_by_key(|o| (matches!(o.kind, NexthopKind::Group { .. }), o.id));
        out
    }

    /// The kernel's answer to writing object `id`. Returns whether routes in the kernel
    /// may name it though it is refused now (a rewrite refused: they must go inline).
    pub fn outcome(&mut self, id: u32, o: &Outcome, now: Instant) -> bool {
        let mut stranded = false;
        match o {
            Outcome::Done => {
                self.counters.written += 1;
                if let Some(ob) = self.objs.get_mut(&id) {
                    ob.done = Some(now);
                }
            }
            Outcome::Failed(KernelError { errno, .. }) if *errno == libc::EOPNOTSUPP => {
                self.counters.refused += 1;
                self.enabled = false;
            }
            Outcome::Failed(e) => {
                self.counters.refused += 1;
                let Some(ob) = self.objs.get_mut(&id) else {
                    self.recount();
                    return false;
                };
                ob.state = State::Failed(now + RETRY);
                stranded = ob.done.is_some();
                // A group refused for a member the kernel lacks, though the pool holds
                // it written: the member went unseen. Members and group are written
                // again at once (a member refused in the same batch keeps its retry,
                // and so does the group).
                if names_missing_object(e) {
                    let mut again = false;
                    for m in group_members(&ob.nh) {
                        again |= self.vanished(m);
                    }
                    if again {
                        if let Some(ob) = self.objs.get_mut(&id) {
                            ob.state = State::New;
                        }
                    }
                }
            }
            // Checked against the mirror like any other: unseen after a while, it is
            // written again.
            Outcome::Unknown => {
                if let Some(ob) = self.objs.get_mut(&id) {
                    ob.done = Some(now);
                }
            }
        }
        self.recount();
        stranded
    }

    /// Compares the pool with the target's objects: written ones seen become live.
    /// A live one someone changed is written again; one deleted (by someone, or by the
    /// kernel with its device) leaves the pool with the groups naming it, to be made
    /// again by the routes that need it (the kernel deleted those routes with it); a
    /// group the kernel still holds after losing a member is deleted once unused.
    /// Returns whether something broke: the routes naming broken objects must be
    /// checked again (a full pass).
    ///
    /// A written object the mirror still shows otherwise, or not at all, [`UNSEEN_AFTER`]
    /// after the kernel accepted it was changed or deleted unseen: it is written again
    /// (same id), and routes naming it are checked again.
    pub fn check(&mut self, nexthops: &HashMap<u32, Stamped<NexthopObject>>, now: Instant) -> bool {
        let mut gone: FxHashSet<u32> = FxHashSet::default();
        let before = self.counters.repaired;
        for (id, o) in self.objs.iter_mut() {
            let unseen = o
                .done
                .is_some_and(|t| now.saturating_duration_since(t) >= UNSEEN_AFTER);
            match (o.state, nexthops.get(id)) {
                (State::Written, Some(k)) if same_object(&k.value, &o.nh) => o.state = State::Live,
                (State::Written, _) if unseen => {
                    o.state = State::New;
                    self.counters.repaired += 1;
                }
                (State::Live, Some(k)) if !same_object(&k.value, &o.nh) => {
                    o.state = State::New;
                    self.counters.repaired += 1;
                }
                (State::Live, None) => {
                    gone.insert(*id);
                }
                _ => {}
            }
        }
        if !gone.is_empty() {
            self.counters.repaired += gone.len() as u64;
            let broken_groups: Vec<u32> = self
                .groups
                .iter()
                .filter(|(k, id)| gone.contains(id) || k.iter().any(|(m, _)| gone.contains(m)))
                .map(|(_, id)| *id)
                .collect();
            for id in &broken_groups {
                if !gone.contains(id) && nexthops.contains_key(id) {
                    self.orphans.push(*id);
                }
            }
            let drop: FxHashSet<u32> = gone.iter().chain(&broken_groups).copied().collect();
            self.objs.retain(|id, _| !drop.contains(id));
            self.hops.retain(|_, id| !drop.contains(id));
            self.groups.retain(|_, id| !drop.contains(id));
            self.recount();
        }
        before != self.counters.repaired
    }

    /// A write naming object `id` was refused because the kernel does not hold it,
    /// though the pool believed it written or live (deleted unseen: with its device
    /// between our write and its echo, or an outcome that was lost): `id` and, for a
    /// group, its members are written again in the next batch, before the routes that
    /// name them. Refused objects are left to their retry (their routes go inline).
    /// Returns whether anything is written again.
    pub fn vanished(&mut self, id: u32) -> bool {
        let Some(ob) = self.objs.get_mut(&id) else {
            return false;
        };
        let mut again = false;
        if matches!(ob.state, State::Written | State::Live) {
            ob.state = State::New;
            self.counters.vanished += 1;
            again = true;
        }
        for m in group_members(&self.objs[&id].nh) {
            if let Some(o) = self.objs.get_mut(&m) {
                if matches!(o.state, State::Written | State::Live) {
                    o.state = State::New;
                    self.counters.vanished += 1;
                    again = true;
                }
            }
        }
        again
    }

    /// The target's links changed: refused objects are tried again now.
    pub fn links_changed(&mut self) {
        for o in self.objs.values_mut() {
            if matches!(o.state, State::Failed(_)) {
                o.state = State::New;
            }
        }
    }

    /// Whether an object the kernel accepted is still unseen by the mirror after
    /// [`UNSEEN_AFTER`] (then [`NhPool::check`] is due without a change of objects).
    pub fn unseen(&self, now: Instant) -> bool {
        self.objs.values().any(|o| {
            o.state == State::Written
                && o.done
                    .is_some_and(|t| now.saturating_duration_since(t) >= UNSEEN_AFTER)
        })
    }

    /// Whether an object written is not yet seen by the target's mirror as written
    /// (routes naming it may forward otherwise until it is, or is written again).
    pub fn unconfirmed(&self) -> bool {
        self.objs.values().any(|o| o.state == State::Written)
    }

    /// Whether there are objects to write.
    pub fn has_writes(&self, now: Instant) -> bool {
        self.objs.values().any(|o| match o.state {
            State::New => true,
            State::Failed(t) => t <= now,
            _ => false,
        })
    }

    /// Live objects no route in `used` names (directly or through a group) and no
    /// group keeps: removed from the pool and returned, groups first, for deletion.
    pub fn collect(&mut self, used: &FxHashSet<u32>) -> Vec<NexthopObject> {
        self.collect_where(used, |o| o.state == State::Live)
    }

    /// Every object no route in `used` names and no kept group needs, whatever its
    /// state: the exit of copies that do not persist (objects written but unconfirmed
    /// go too; deleting one the kernel never made is refused, harmlessly).
    pub fn release(&mut self, used: &FxHashSet<u32>) -> Vec<NexthopObject> {
        self.collect_where(used, |_| true)
    }

    fn collect_where(
        &mut self,
        used: &FxHashSet<u32>,
        ripe: impl Fn(&Obj) -> bool,
    ) -> Vec<NexthopObject> {
        let dead_groups: Vec<u32> = self
            .groups
            .values()
            .copied()
            .filter(|id| !used.contains(id) && ripe(&self.objs[id]))
            .collect();
        let mut out = Vec::new();
        let protocol = self.protocol;
        self.orphans.retain(|&id| {
            if used.contains(&id) {
                return true;
            }
            out.push(NexthopObject {
                id,
                family: None,
                protocol,
                kind: NexthopKind::Blackhole,
            });
            false
        });
        for id in &dead_groups {
            if let Some(o) = self.objs.remove(id) {
                out.push(o.nh);
            }
        }
        self.groups.retain(|_, id| !dead_groups.contains(id));
        let kept: FxHashSet<u32> = self
            .groups
            .keys()
            .flat_map(|k| k.iter().map(|(m, _)| *m))
            .collect();
        let dead_hops: Vec<u32> = self
            .hops
            .values()
            .copied()
            .filter(|id| !kept.contains(id) && !used.contains(id) && ripe(&self.objs[id]))
            .collect();
        for id in &dead_hops {
            if let Some(o) = self.objs.remove(id) {
                out.push(o.nh);
            }
        }
        self.hops.retain(|_, id| !dead_hops.contains(id));
        self.counters.collected += out.len() as u64;
        self.recount();
        out
    }
}

/// Whether the kernel refused a write for naming an object it does not hold: a route
/// ("Nexthop id does not exist") or a group ("Invalid nexthop id"), both EINVAL. Without
/// the kernel's message any EINVAL is taken for it (writing the objects again is
/// harmless).
pub fn names_missing_object(e: &KernelError) -> bool {
    e.errno == libc::EINVAL
        && e.msg.as_deref().is_none_or(|m| {
            let m = m.to_ascii_lowercase();
            m.contains("nexthop id does not exist") || m.contains("invalid nexthop id")
        })
}

/// The ids a group names (none for a single hop).
fn group_members(nh: &NexthopObject) -> Vec<u32> {
    match &nh.kind {
        NexthopKind::Group { members, .. } => members.iter().map(|m| m.id).collect(),
        _ => Vec::new(),
    }
}

/// Whether the kernel's object is the one the pool wrote (liveness flags aside).
fn same_object(k: &NexthopObject, ours: &NexthopObject) -> bool {
    if k.protocol != ours.protocol {
        return false;
    }
    match (&k.kind, &ours.kind) {
        (
            NexthopKind::Single {
                gateway: g1,
                ifindex: i1,
                flags: f1,
                encap: e1,
            },
            NexthopKind::Single {
                gateway: g2,
                ifindex: i2,
                flags: f2,
                encap: e2,
            },
        ) => g1 == g2 && i1 == i2 && (f1 & rtnh::STABLE) == (f2 & rtnh::STABLE) && e1 == e2,
        (
            NexthopKind::Group {
                members: m1,
                resilient: r1,
            },
            NexthopKind::Group {
                members: m2,
                resilient: r2,
            },
        ) => m1 == m2 && r1 == r2,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop(gw: &str, ifindex: u32) -> NextHop {
        NextHop::new(Some(gw.parse().unwrap()), ifindex)
    }

    fn mirror_of(objs: &[NexthopObject]) -> HashMap<u32, Stamped<NexthopObject>> {
        objs.iter()
            .map(|o| {
                (
                    o.id,
                    Stamped {
                        value: o.clone(),
                        stamp: 0,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn groups_are_shared_written_once_checked_and_collected() {
        let mut p = NhPool::new(240);
        let now = Instant::now();
        let none = |_: u32| false;
        let ab = [hop("198.18.1.2", 3), hop("198.18.2.2", 5)];
        let g = p.group_for(Family::V4, &ab, now, &none).unwrap();
        assert!(in_range(g));
        assert_eq!(p.group_for(Family::V4, &ab, now, &none), Some(g), "deduped");
        let ba = [hop("198.18.2.2", 5), hop("198.18.1.2", 3)];
        let g2 = p.group_for(Family::V4, &ba, now, &none).unwrap();
        assert_ne!(g, g2, "another order is another group");
        assert_eq!(
            p.group_for(Family::V4, &ab[..1], now, &none),
            None,
            "one hop: inline"
        );
        let w = p.take_writes(now);
        assert_eq!(w.len(), 4, "two hops, two groups: {w:?}");
        assert!(
            !matches!(w[0].kind, NexthopKind::Group { .. }),
            "hops first"
        );
        assert!(p.take_writes(now).is_empty(), "written once");
        for o in &w {
            p.outcome(o.id, &Outcome::Done, now);
        }
        let live = mirror_of(&w);
        assert!(!p.check(&live, now));
        // Someone changes a group: written again.
        let mut changed = mirror_of(&w);
        changed.get_mut(&g).unwrap().value.kind = NexthopKind::Group {
            members: vec![GroupMember {
                id: w[0].id,
                weight: 1,
            }],
            resilient: false,
        };
        assert!(p.check(&changed, now));
        assert_eq!(
            p.take_writes(now).iter().map(|o| o.id).collect::<Vec<_>>(),
            vec![g]
        );
        assert!(!p.check(&live, now));
        // Only g2 used: g goes; its hops stay (g2 uses them).
        let used: FxHashSet<u32> = [g2].into_iter().collect();
        let c = p.collect(&used);
        assert_eq!(c.iter().map(|o| o.id).collect::<Vec<_>>(), vec![g]);
        let c = p.collect(&FxHashSet::default());
        assert_eq!(c.len(), 3, "g2, then its hops: {c:?}");
        assert_eq!(p.counters.objects, 0);
    }

    #[test]
    fn a_deleted_hop_takes_its_groups_out_and_their_remains_are_collected() {
        let mut p = NhPool::new(240);
        let now = Instant::now();
        let none = |_: u32| false;
        let ab = [hop("198.18.1.2", 3), hop("198.18.2.2", 5)];
        let g = p.group_for(Family::V4, &ab, now, &none).unwrap();
        let w = p.take_writes(now);
        p.check(&mirror_of(&w), now);
        // The kernel deletes hop b with its device; the group keeps hop a.
        let b_id = w[1].id;
        let mut k = mirror_of(&w);
        k.remove(&b_id);
        assert!(p.check(&k, now));
        assert_eq!(p.counters.objects, 1, "hop a stays");
        let g2 = p
            .group_for(Family::V4, &ab, now, &|id| k.contains_key(&id))
            .unwrap();
        assert_ne!(g2, g, "made again under a new id");
        let used: FxHashSet<u32> = [g2].into_iter().collect();
        let c = p.collect(&used);
        assert_eq!(
            c.iter().map(|o| o.id).collect::<Vec<_>>(),
            vec![g],
            "the remains"
        );
    }

    #[test]
    fn a_restart_adopts_and_refusals_go_inline() {
        let now = Instant::now();
        let none = |_: u32| false;
        let ab = [hop("198.18.1.2", 3), hop("198.18.2.2", 5)];
        let mut p = NhPool::new(240);
        let g = p.group_for(Family::V4, &ab, now, &none).unwrap();
        let w = p.take_writes(now);
        let mut kernel = mirror_of(&w);
        // Someone else's object in the range, and ours of another protocol: not ours.
        let alien = NexthopObject {
            protocol: 4,
            ..w[0].clone()
        };
        kernel.insert(
            ID_BASE + 99,
            Stamped {
                value: NexthopObject {
                    id: ID_BASE + 99,
                    ..alien
                },
                stamp: 0,
            },
        );
        let mut q = NhPool::new(240);
        q.adopt(&kernel);
        assert_eq!(q.counters.adopted, 3);
        let taken = |id: u32| kernel.contains_key(&id);
        assert_eq!(
            q.group_for(Family::V4, &ab, now, &taken),
            Some(g),
            "same id"
        );
        assert!(q.take_writes(now).is_empty(), "nothing rewritten");
        // A refused hop: routes through it go inline until the retry.
        let cd = [hop("198.18.3.2", 7), hop("198.18.1.2", 3)];
        assert!(q.group_for(Family::V4, &cd, now, &taken).is_some());
        let w = q.take_writes(now);
        let down = Outcome::Failed(KernelError {
            errno: libc::ENETDOWN,
            msg: None,
        });
        q.outcome(w[0].id, &down, now);
        assert_eq!(q.group_for(Family::V4, &cd, now, &taken), None);
        assert!(q.group_for(Family::V4, &cd, now + RETRY, &taken).is_some());
        // The kernel without nexthop objects: off for good.
        let no = Outcome::Failed(KernelError {
            errno: libc::EOPNOTSUPP,
            msg: None,
        });
        q.outcome(w[1].id, &no, now);
        assert_eq!(q.group_for(Family::V4, &ab, now, &taken), None);
        assert!(q.counters.disabled);
    }

    /// Objects the kernel accepted, then changed or deleted before the mirror showed
    /// them (an overrun's resync, a device gone between our write and its echo): a
    /// while later they are written again under the same ids, and a group refused for a
    /// member the pool believed written takes the member along.
    #[test]
    fn objects_changed_or_deleted_unseen_are_written_again() {
        let mut p = NhPool::new(240);
        let t0 = Instant::now();
        let none = |_: u32| false;
        let ab = [hop("198.18.1.2", 3), hop("198.18.2.2", 5)];
        let g = p.group_for(Family::V4, &ab, t0, &none).unwrap();
        let w = p.take_writes(t0);
        for o in &w {
            p.outcome(o.id, &Outcome::Done, t0);
        }
        // The kernel lost hop b (and the group shrank) before the mirror saw either.
        let b_id = w[1].id;
        let mut k = mirror_of(&w);
        k.remove(&b_id);
        k.get_mut(&g).unwrap().value.kind = NexthopKind::Group {
            members: vec![GroupMember {
                id: w[0].id,
                weight: 1,
            }],
            resilient: false,
        };
        assert!(!p.check(&k, t0), "an echo may be on its way");
        assert!(p.unconfirmed() && !p.unseen(t0));
        let later = t0 + UNSEEN_AFTER;
        assert!(p.unseen(later));
        assert!(p.check(&k, later), "routes naming them are checked again");
        let again: Vec<u32> = p.take_writes(later).iter().map(|o| o.id).collect();
        assert_eq!(again, vec![b_id, g], "same ids");
        // The group is refused, for a member the kernel lacks (gone again unseen).
        p.outcome(b_id, &Outcome::Done, later);
        let missing = Outcome::Failed(KernelError {
            errno: libc::EINVAL,
            msg: Some("Invalid nexthop id".into()),
        });
        assert!(p.outcome(g, &missing, later), "routes name it: stranded");
        let again: Vec<u32> = p.take_writes(later).iter().map(|o| o.id).collect();
        assert_eq!(again, vec![w[0].id, b_id, g], "members and group at once");
        assert_eq!(p.counters.vanished, 2);
        // A route refused for the group: group and members written again.
        assert!(p.vanished(g));
        assert_eq!(p.take_writes(later).len(), 3);
    }
}
