//! The mirror's rules: both families' [`RuleList`]s, the link facts rules refer to
//! ([`LinkMap`]), and the compiled [`RuleSet`] lookups walk, rebuilt lazily after a
//! change (a link storm does not recompile a thousand rules per link event; the first
//! lookup after it does, once).

use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::RuleSet;
use crate::fib::l3mdev::{LinkFacts, LinkMap};
use crate::model::{Family, Link, Rule};
use crate::rule::list::{Applied, RuleList};

/// A rule added or removed, for the change funnel (`watch`).
#[derive(Debug, Clone)]
pub struct RuleDelta {
    pub added: bool,
    pub rule: Rule,
    /// `event` or `scan`.
    pub cause: &'static str,
}

#[derive(Debug, Default, Clone, Serialize, serde::Deserialize)]
pub struct RuleCounters {
    pub rule_events: u64,
    /// `RTM_DELRULE` for a rule the mirror did not hold.
    pub rule_deletes_unknown: u64,
}

#[derive(Debug, Default)]
pub struct RuleMirror {
    lists: [RuleList; 2],
    pub links: LinkMap,
    compiled: Mutex<Option<Arc<RuleSet>>>,
    pub counters: RuleCounters,
}

fn slot(f: Family) -> usize {
    match f {
        Family::V4 => 0,
        Family::V6 => 1,
    }
}

fn facts(l: &Link) -> LinkFacts {
    LinkFacts {
        ifindex: l.ifindex,
        name: l.name.clone(),
        master: l.master,
        vrf_table: l.vrf_table,
        group: l.group,
    }
}

impl RuleMirror {
    pub fn list(&self, f: Family) -> &RuleList {
        &self.lists[slot(f)]
    }

    /// Rules of both families (IPv4 first), each in kernel order.
    pub fn all(&self) -> impl Iterator<Item = &Rule> {
        self.lists.iter().flat_map(|l| l.iter())
    }

    pub fn len(&self) -> usize {
        self.lists.iter().map(RuleList::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn changed(&mut self) {
        *self.compiled.get_mut().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The compiled rules (built on first use after a change).
    pub fn set(&self) -> Arc<RuleSet> {
        let mut c = self.compiled.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = &*c {
            return s.clone();
        }
        let s = Arc::new(RuleSet::new(self.all(), &self.links));
        *c = Some(s.clone());
        s
    }

    /// An event's `RTM_NEWRULE`; `true` if the rule is new to the mirror.
    pub fn add(&mut self, rule: Rule, stamp: u32) -> bool {
        self.counters.rule_events += 1;
        let f = rule.family;
        let created = self.lists[slot(f)].upsert(rule, stamp) == Applied::Created;
        if created {
            self.changed();
        }
        created
    }

    /// An event's `RTM_DELRULE`; `true` if the mirror held the rule.
    pub fn remove(&mut self, rule: &Rule) -> bool {
        self.counters.rule_events += 1;
        let held = self.lists[slot(rule.family)].remove(rule);
        if held {
            self.changed();
        } else {
            self.counters.rule_deletes_unknown += 1;
        }
        held
    }

    /// A dump's rule during a scan stamped `stamp`; `true` if it was already held.
    pub fn mark(&mut self, rule: Rule, stamp: u32) -> bool {
        let f = rule.family;
        let seen = self.lists[slot(f)].mark(rule, stamp) == Applied::Seen;
        if !seen {
            self.changed();
        }
        seen
    }

    /// Drops `f`'s rules the scan did not mark, returning them.
    pub fn prune(&mut self, f: Family, stamp: u32) -> Vec<Rule> {
        let gone = self.lists[slot(f)].prune(stamp);
        if !gone.is_empty() {
            self.changed();
        }
        gone
    }

    pub fn link(&mut self, l: &Link) {
        let f = facts(l);
        if self.links.get(l.ifindex) != Some(&f) {
            self.links.insert(f);
            self.changed();
        }
    }

    pub fn unlink(&mut self, ifindex: u32) {
        if self.links.get(ifindex).is_some() {
            self.links.remove(ifindex);
            self.changed();
        }
    }

    /// Rebuilds the link facts from the mirror's links (after a scan pruned some).
    pub fn relink<'a>(&mut self, links: impl Iterator<Item = &'a Link>) {
        let mut m = LinkMap::default();
        for l in links {
            m.insert(facts(l));
        }
        self.links = m;
        self.changed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiled_set_follows_rules_and_links() {
        let mut m = RuleMirror::default();
        for r in Rule::defaults(Family::V4) {
            m.add(r, 1);
        }
        assert_eq!(m.set().family(Family::V4).len(), 3);
        let mut r = Rule::to_table(Family::V4, 100, 7);
        r.iif = Some("eth9".into());
        m.add(r.clone(), 1);
        assert_eq!(m.set().family(Family::V4).len(), 4);
        assert!(m.set().chain(Family::V4).is_none());
        m.remove(&r);
        assert!(m.set().chain(Family::V4).is_some());
        m.remove(&r);
        assert_eq!(m.counters.rule_deletes_unknown, 1);
        // A scan that sees only the defaults prunes nothing else.
        for r in Rule::defaults(Family::V4) {
            assert!(m.mark(r, 2));
        }
        assert!(m.prune(Family::V4, 2).is_empty());
        assert_eq!(m.len(), 3);
    }
}
