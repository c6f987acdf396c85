//! Snapshots rendered in bounded slices, so a full table (over a million entries) costs
//! a subscriber a few MB instead of its whole rendering, and never holds the AFT (or an
//! async worker) for long.
//!
//! A [`Walk`] renders, per [`Walk::step`] and under the hub's lock, the next
//! [`SLICE`] objects of the AFT in key order ([`Aft::visit`]); its caller sends them and
//! asks for the next slice only once they are queued towards the client. Between two
//! slices the AFT keeps changing. Each step first drains the hub's broadcast (which
//! the pump fills under the same lock; draining is cheap, the batches are shared) and
//! notes which of the changed objects the walk had already passed; objects ahead of
//! it are read as they are when it reaches them. Once the walk ends, [`Walk::fixups`]
//! renders the current value (or the deletion) of every noted object, a bounded piece
//! at a time: a STREAM sends them right after its `sync_response`, ONCE and POLL right
//! before it. So the collector ends with exactly the AFT, and the receiver's changes
//! after the walk apply on top, in order. Nothing is lost, every step advances the walk
//! however fast the table churns, nothing is rendered ahead but a slice, and before
//! its `sync_response` a subscriber gets updates only (bar a resnapshot's opening
//! delete): a collector that merges everything up to the sync, as pygnmi does, cannot
//! apply a delete before the update it cancels.
//!
//! A Get notes the same objects and renders their current value at its last step
//! ([`Walk::stale`] says which of the earlier renderings to drop). If the broadcast
//! overflows or the mirror resyncs during a walk, the walk starts over, opening with a
//! delete of everything the subscription covers.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::broadcast::{self, error::TryRecvError};

use super::encode::{Builder, PER_NOTIFICATION};
use super::path::{Key, Section, Selector};
use super::proto::{Encoding, Notification};
use crate::export::aft::{Aft, InstanceNames, Slot};
use crate::export::afts::{now_ns, Batch};

/// Objects rendered per step or per piece of fixups (about a millisecond under the
/// hub's lock).
pub const SLICE: usize = 1024;
/// The most notifications one step or piece renders in one network instance: what a
/// walk holds rendered beyond its subscriber's queue (plus one per further instance a
/// slice spans, and a resnapshot's opening deletes).
pub const MAX_RENDERED: usize = SLICE / PER_NOTIFICATION + 2;

/// What a walk renders changes to objects it already passed as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Updates and deletes, sent between slices (Subscribe).
    Stream,
    /// Nothing until the end, then the current value of each (Get).
    Get,
}

/// What a step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// More to render.
    More,
    /// The walk reached the end: its notifications were the last.
    Done,
    /// The hub resynced or the receiver fell behind: the walk starts over (its next
    /// step opens with a delete of the subscribed roots). This step's output is empty.
    Restarted { lagged: bool },
}

/// One subscriber's position in a snapshot of one hub.
pub struct Walk {
    sels: Arc<[Selector]>,
    enc: Encoding,
    target: String,
    mode: Mode,
    /// The last position sent; `None` before the first object.
    cursor: Option<(u32, Slot)>,
    /// The first step ran: single objects (keyed selectors) and the bracket are sent.
    started: bool,
    /// Open with a delete of the subscribed roots (a resnapshot).
    bracket: bool,
    /// Tables this walk sent anything of: what a bracket must delete.
    tables: BTreeSet<u32>,
    /// [`Mode::Get`]: passed objects that changed since they were rendered.
    changed: HashSet<(u32, Slot)>,
    /// [`Mode::Stream`], after the walk: the changed objects in walk order, and how far
    /// [`Walk::fixups`] got (a pass of updates forwards, then of deletes backwards).
    fixups: Vec<(u32, Slot)>,
    fixed: (u8, usize),
    /// Instance names rendered by this walk, and the AFT's names as of its last step.
    names: HashMap<u32, String>,
    instance_names: Arc<InstanceNames>,
}

impl Walk {
    pub fn new(sels: Arc<[Selector]>, enc: Encoding, target: &str, mode: Mode) -> Walk {
        Walk {
            sels,
            enc,
            target: target.to_string(),
            mode,
            cursor: None,
            started: false,
            bracket: false,
            tables: BTreeSet::new(),
            changed: HashSet::new(),
            fixups: Vec::new(),
            fixed: (0, 0),
            names: HashMap::new(),
            instance_names: Arc::default(),
        }
    }

    /// A walk that opens with a delete of what the subscription covers (a fresh
    /// snapshot after a resync or an overflow).
    pub fn bracketed(mut self) -> Walk {
        self.bracket = true;
        self
    }

    fn name(names: &mut HashMap<u32, String>, aft: &Aft, table: u32) -> String {
        names
            .entry(table)
            .or_insert_with(|| aft.names.name(table))
            .clone()
    }

    fn restart(&mut self, lagged: bool) -> (Vec<Notification>, Step) {
        // Instances may have been renamed: the AFT's names from now on (the bracket
        // deletes the retired ones).
        self.names.clear();
        self.cursor = None;
        self.started = false;
        self.bracket = true;
        self.changed.clear();
        (Vec::new(), Step::Restarted { lagged })
    }

    /// Whether `sel` had seen the object at `pos` when the walk was at `at`.
    fn passed(at: (Option<(u32, Slot)>, bool), sel: &Selector, pos: (u32, Slot)) -> bool {
        if sel.key.is_some() {
            at.1
        } else {
            at.0.is_some_and(|c| pos <= c)
        }
    }

    /// [`Mode::Stream`], once the walk is done: whether objects it had passed changed
    /// before its last slice ([`Walk::fixups`] sends them).
    pub fn has_fixups(&self) -> bool {
        self.mode == Mode::Stream
            && (!self.changed.is_empty() || (self.fixed.0 < 2 && !self.fixups.is_empty()))
    }

    /// The next piece (at most [`SLICE`] objects) of the current value of every object
    /// that changed after the walk had passed it: updates in walk order (objects before
    /// the entries using them), then deletes of those gone, in reverse. Call it under
    /// the hub's lock, after the walk's last step; the receiver's changes after that
    /// step apply on top (each sets an object whole, so replaying them after a newer
    /// value still ends at the current one).
    pub fn fixups(&mut self, aft: &Aft) -> Vec<Notification> {
        if !self.changed.is_empty() {
            self.fixups = self.changed.drain().collect();
            self.fixups.sort_unstable();
            self.fixed = (0, 0);
        }
        let mut b = Builder::new(self.enc, &self.target, now_ns());
        let mut names = std::mem::take(&mut self.names);
        let mut budget = SLICE;
        while self.fixed.0 < 2 && budget > 0 {
            let (pass, i) = self.fixed;
            if i >= self.fixups.len() {
                self.fixed = (pass + 1, 0);
                continue;
            }
            let (table, slot) = if pass == 0 {
                self.fixups[i]
            } else {
                self.fixups[self.fixups.len() - 1 - i]
            };
            self.fixed.1 += 1;
            budget -= 1;
            let ni = Self::name(&mut names, aft, table);
            let inst = aft.instances.get(&table);
            for s in self.sels.iter() {
                match (pass, slot) {
                    (0, Slot::Hop(x)) => {
                        if let Some(h) = inst.and_then(|i| i.next_hop(x)) {
                            b.hop(&ni, s, x, &h);
                        }
                    }
                    (0, Slot::Group(x)) => {
                        if let Some(g) = inst.and_then(|i| i.group(x)) {
                            b.group(&ni, s, x, g);
                        }
                    }
                    (0, Slot::V4(_) | Slot::V6(_)) => {
                        let p = prefix_of(slot);
                        if let Some(e) = inst.and_then(|i| i.entry(&p)) {
                            b.entry(&ni, s, p, e);
                        }
                    }
                    (_, Slot::Hop(x)) => {
                        if inst.and_then(|i| i.next_hop(x)).is_none() {
                            b.delete(&ni, s, Section::Hops, Key::Id(x));
                        }
                    }
                    (_, Slot::Group(x)) => {
                        if inst.and_then(|i| i.group(x)).is_none() {
                            b.delete(&ni, s, Section::Groups, Key::Id(x));
                        }
                    }
                    (_, Slot::V4(_) | Slot::V6(_)) => {
                        let p = prefix_of(slot);
                        if inst.and_then(|i| i.entry(&p)).is_none() {
                            let sec = if p.addr().is_ipv4() {
                                Section::V4
                            } else {
                                Section::V6
                            };
                            b.delete(&ni, s, sec, Key::Prefix(p));
                        }
                    }
                    (_, Slot::End) => {}
                }
            }
        }
        if self.fixed.0 >= 2 {
            self.fixups = Vec::new();
        }
        self.names = names;
        b.finish()
    }

    /// Renders the next slice of `aft`, after the changes `rx` holds to objects already
    /// sent. Call it with the hub's lock held (through [`crate::export::afts::Afts::read`]),
    /// so that `aft` reflects exactly the batches drained.
    pub fn step(
        &mut self,
        aft: &Aft,
        rx: &mut broadcast::Receiver<Arc<Batch>>,
    ) -> (Vec<Notification>, Step) {
        self.instance_names = aft.names.clone();
        let mut b = Builder::new(self.enc, &self.target, now_ns());
        let mut names = std::mem::take(&mut self.names);
        // 1. What changed since the last step: the objects already rendered are noted
        // (a Get re-renders them at its end, a subscription sends them after its
        // sync_response: a collector merging what precedes it, as pygnmi does, never
        // sees a delete before the update it cancels).
        let at = (self.cursor, self.started);
        loop {
            let batch = match rx.try_recv() {
                Ok(batch) => batch,
                Err(TryRecvError::Empty) | Err(TryRecvError::Closed) => break,
                Err(TryRecvError::Lagged(_)) => {
                    self.names = names;
                    return self.restart(true);
                }
            };
            let Batch::Changes { changes, .. } = &*batch else {
                self.names = names;
                return self.restart(false);
            };
            for c in changes {
                let pos = (c.table, Slot::of_op(&c.op));
                if self.sels.iter().any(|s| Self::passed(at, s, pos)) {
                    self.tables.insert(c.table);
                    self.changed.insert(pos);
                }
            }
        }
        // 2. The first step: the bracket, and single objects (map lookups, not a walk).
        if !self.started {
            if self.bracket && self.mode == Mode::Stream {
                let mut instances: BTreeSet<String> = aft
                    .instances
                    .keys()
                    .chain(&self.tables)
                    .map(|t| Self::name(&mut names, aft, *t))
                    .collect();
                instances.extend(self.sels.iter().filter_map(|s| s.ni.clone()));
                instances.extend(aft.names.retired.iter().cloned());
                for s in self.sels.iter() {
                    for ni in instances.iter().filter(|n| s.wants_ni(n)) {
                        b.delete_path(ni, s.root_in(ni));
                    }
                }
                self.bracket = false;
            }
            for s in self.sels.iter().filter(|s| s.key.is_some()) {
                self.tables.extend(aft.instances.keys());
                b.snapshot(aft, s, &|t| aft.names.name(t));
            }
            self.started = true;
        }
        // 3. The next slice of the walk.
        let walking: Vec<&Selector> = self.sels.iter().filter(|s| s.key.is_none()).collect();
        let mut end = walking.is_empty();
        if !end {
            let wants = |table: u32, kind: Slot| {
                let ni = aft.names.name(table);
                walking
                    .iter()
                    .any(|s| s.wants_ni(&ni) && s.wants_section(section(kind)))
            };
            let tables = &mut self.tables;
            let next = aft.visit(self.cursor, SLICE, &wants, &mut |table, o| {
                tables.insert(table);
                let ni = Self::name(&mut names, aft, table);
                for s in &walking {
                    b.obj(&ni, s, &o);
                }
            });
            match next {
                Some(pos) => self.cursor = Some(pos),
                None => end = true,
            }
        }
        if end && self.mode == Mode::Get {
            // The current value of each object that changed after it was rendered.
            for &(table, slot) in &self.changed {
                let ni = Self::name(&mut names, aft, table);
                let Some(inst) = aft.instances.get(&table) else {
                    continue;
                };
                for s in self.sels.iter() {
                    match slot {
                        Slot::Hop(x) => {
                            if let Some(h) = inst.next_hop(x) {
                                b.hop(&ni, s, x, &h);
                            }
                        }
                        Slot::Group(x) => {
                            if let Some(g) = inst.group(x) {
                                b.group(&ni, s, x, g);
                            }
                        }
                        Slot::V4(p) => {
                            if let Some(e) = inst.v4.get(&p) {
                                b.entry(&ni, s, p.into(), e);
                            }
                        }
                        Slot::V6(p) => {
                            if let Some(e) = inst.v6.get(&p) {
                                b.entry(&ni, s, p.into(), e);
                            }
                        }
                        Slot::End => {}
                    }
                }
            }
        }
        self.names = names;
        (b.finish(), if end { Step::Done } else { Step::More })
    }

    /// [`Mode::Get`], after the last step: the objects whose earlier renderings are
    /// stale (the last step rendered their current value, if they still exist), as
    /// (network instance, section, key) of their paths.
    pub fn stale(&self) -> HashSet<(String, Section, String)> {
        self.changed
            .iter()
            .filter_map(|&(table, slot)| {
                let (s, k) = match slot {
                    Slot::Hop(x) => (Section::Hops, Key::Id(x)),
                    Slot::Group(x) => (Section::Groups, Key::Id(x)),
                    Slot::V4(p) => (Section::V4, Key::Prefix(p.into())),
                    Slot::V6(p) => (Section::V6, Key::Prefix(p.into())),
                    Slot::End => return None,
                };
                Some((self.instance_names.name(table), s, k.to_string()))
            })
            .collect()
    }
}

fn prefix_of(slot: Slot) -> ipnet::IpNet {
    match slot {
        Slot::V4(p) => p.into(),
        Slot::V6(p) => p.into(),
        _ => unreachable!("an entry's slot"),
    }
}

/// The section a walk position is in.
fn section(kind: Slot) -> Section {
    match kind {
        Slot::Hop(_) => Section::Hops,
        Slot::Group(_) => Section::Groups,
        Slot::V4(_) | Slot::End => Section::V4,
        Slot::V6(_) => Section::V6,
    }
}

/// Drops, from notifications rendered earlier, the updates of `stale` objects.
pub fn drop_stale(ns: &mut Vec<Notification>, stale: &HashSet<(String, Section, String)>) {
    if stale.is_empty() {
        return;
    }
    for n in ns.iter_mut() {
        let ni = n
            .prefix
            .as_ref()
            .and_then(|p| p.elem.get(1))
            .and_then(|e| e.key.get("name"))
            .cloned()
            .unwrap_or_default();
        n.update.retain(|u| {
            let Some(p) = &u.path else { return true };
            let (Some(c), Some(l)) = (p.elem.first(), p.elem.get(1)) else {
                return true;
            };
            let Some(s) = Section::ALL.into_iter().find(|s| s.names().0 == c.name) else {
                return true;
            };
            let key = l.key.get(s.names().2).cloned().unwrap_or_default();
            !stale.contains(&(ni.clone(), s, key))
        });
    }
    ns.retain(|n| !n.update.is_empty() || !n.delete.is_empty());
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;
    use std::net::{IpAddr, Ipv4Addr};

    use ipnet::{IpNet, Ipv4Net};

    use super::*;
    use crate::export::aft::{Best, NextHop};
    use crate::export::afts::Afts;
    use crate::export::gnmi::proto::Path;

    pub fn net(i: u32) -> IpNet {
        Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 + (i << 8)), 24)
            .unwrap()
            .into()
    }

    /// A best route whose hop (and so group) depends on `variant`.
    pub fn best(metric: u32, variant: u32) -> Best {
        Best {
            metric,
            kind: 1,
            protocol: 4,
            hops: vec![(
                NextHop {
                    ip: Some(IpAddr::V4(Ipv4Addr::new(198, 18, (variant % 250) as u8, 2))),
                    ifindex: 2 + variant % 3,
                    interface: Some("veth".into()),
                },
                1,
            )],
        }
    }

    /// A hub holding `n` entries over a few hop sets.
    pub fn hub(n: u32) -> Arc<Afts> {
        let afts = Arc::new(Afts::detached("t".into()));
        let mut aft = Aft::default();
        let mut sink = Vec::new();
        for i in 0..n {
            aft.set(254, net(i), Some(&best(i % 5, i % 4)), &mut sink);
        }
        afts.reset(aft);
        afts.mark_ready();
        afts
    }

    fn text(base: &Option<Path>, p: &Path) -> String {
        let mut s = String::new();
        for e in base.iter().flat_map(|b| &b.elem).chain(&p.elem) {
            s.push('/');
            s.push_str(&e.name);
            let mut k: Vec<_> = e.key.iter().collect();
            k.sort();
            for (k, v) in k {
                s.push_str(&format!("[{k}={v}]"));
            }
        }
        s
    }

    /// What a collector keeps: every leaf by its full path. A delete removes the path
    /// and everything below it.
    pub fn apply(model: &mut BTreeMap<String, String>, n: &Notification) {
        for d in &n.delete {
            let p = text(&n.prefix, d);
            let below = format!("{p}/");
            let gone: Vec<String> = model
                .range(p.clone()..)
                .map(|(k, _)| k)
                .take_while(|k| k.starts_with(&p))
                .filter(|k| **k == p || k.starts_with(&below))
                .cloned()
                .collect();
            for k in gone {
                model.remove(&k);
            }
        }
        for u in &n.update {
            let p = text(&n.prefix, u.path.as_ref().unwrap());
            model.insert(p, format!("{:?}", u.val));
        }
    }

    /// The whole AFT as a collector that read it at once would hold it.
    pub fn expected(afts: &Afts) -> BTreeMap<String, String> {
        let ns = afts.read(|aft| {
            let mut b = Builder::new(Encoding::Proto, "", 0);
            b.snapshot(aft, &Selector::all(), &|t| aft.names.name(t));
            b.finish()
        });
        let mut m = BTreeMap::new();
        for n in &ns {
            apply(&mut m, n);
        }
        m
    }

    /// Changes everywhere in the key space between slices: entries the walk passed and
    /// entries ahead of it deleted, re-pointed to new hops (new next hops and groups,
    /// old ones freed) or given a new metric, and new prefixes at both ends.
    fn churn(afts: &Afts, round: u32, n: u32) {
        afts.apply(|aft, out| {
            for k in 0..40 {
                let i = round.wrapping_mul(7919).wrapping_add(k * 104_729) % n;
                match k % 4 {
                    0 => aft.set(254, net(i), None, out),
                    1 => aft.set(254, net(i), Some(&best(i % 5, 4 + round)), out),
                    2 => aft.set(254, net(i), Some(&best(100 + round, i % 4)), out),
                    _ => {
                        aft.set(254, net(n + round), Some(&best(1, round)), out);
                        let low: IpNet = "1.0.0.0/24".parse().unwrap();
                        aft.set(254, low, Some(&best(round, 1)), out);
                    }
                }
            }
        });
    }

    /// A walk interleaved with changes ends with exactly the AFT as of its last slice,
    /// in Stream mode (changes to passed objects sent between slices) and in Get mode
    /// (their stale renderings replaced at the end), and no step renders more than a
    /// bounded slice.
    #[test]
    fn a_walk_under_churn_ends_exact_and_bounded() {
        const N: u32 = 20_000;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for mode in [Mode::Stream, Mode::Get] {
            let afts = hub(N);
            let mut rx = rt.block_on(afts.subscribe());
            let all: Arc<[Selector]> = Arc::from([Selector::all()]);
            let mut walk = Walk::new(all, Encoding::Proto, "", mode);
            let (mut got, mut steps, mut biggest) = (Vec::new(), 0, 0);
            loop {
                let (ns, st) = afts.read(|aft| walk.step(aft, &mut rx));
                steps += 1;
                biggest = biggest.max(ns.len());
                match (mode, st) {
                    (_, Step::Restarted { .. }) => panic!("no overflow expected"),
                    (Mode::Get, Step::Done) => {
                        drop_stale(&mut got, &walk.stale());
                        got.extend(ns);
                        break;
                    }
                    (_, Step::Done) => {
                        got.extend(ns);
                        // After the sync_response: what changed behind the walk, in
                        // bounded pieces, each under the lock.
                        while walk.has_fixups() {
                            let piece = afts.read(|aft| walk.fixups(aft));
                            biggest = biggest.max(piece.len());
                            got.extend(piece);
                        }
                        break;
                    }
                    (_, Step::More) => got.extend(ns),
                }
                // Several rounds between two steps: more changes than one piece holds.
                for k in 0..30 {
                    churn(&afts, steps * 30 + k, N);
                }
            }
            let mut model = BTreeMap::new();
            for n in &got {
                apply(&mut model, n);
            }
            let want = expected(&afts);
            assert!(want.len() > 3 * N as usize, "{}", want.len());
            assert!(
                model == want,
                "{mode:?}: the walk's view differs from the AFT"
            );
            assert!(steps > 10, "{steps} steps: sliced");
            // A Get's last step adds the changed objects (its response is whole anyway).
            if mode == Mode::Stream {
                assert!(
                    biggest <= MAX_RENDERED,
                    "{mode:?}: a step rendered {biggest} notifications"
                );
            }
        }
    }
}
