//! The mirror's copy of one family's rules, in the kernel's order, with the scan stamps
//! of the mark-and-sweep prune.
//!
//! Order is the kernel's `fib_nl_newrule`: by priority, a new rule after every rule of
//! its priority. Identity is the whole rule ([`super::Rule`] equality). Applying is
//! idempotent: a `RTM_NEWRULE` for a rule the list already holds only marks it, so an
//! event seen again after a dump that already included it (the eBPF source applies
//! held events after the dump) cannot create a duplicate; a real duplicate (possible
//! for a client that does not ask for `NLM_F_EXCL`) comes back from the next dump, where
//! each dumped copy marks one held copy or adds one.

use serde::Serialize;

use super::Rule;

/// What applying one rule did, for the scan's verdicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Applied {
    /// The list held it already (marked).
    Seen,
    /// The list lacked it (added).
    Created,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Held {
    rule: Rule,
    stamp: u32,
}

/// One family's rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleList {
    held: Vec<Held>,
}

impl RuleList {
    /// The rules in the kernel's order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &Rule> + '_ {
        self.held.iter().map(|h| &h.rule)
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// A copy of the rules in order (for evaluators that want a slice).
    pub fn to_vec(&self) -> Vec<Rule> {
        self.iter().cloned().collect()
    }

    /// An event's `RTM_NEWRULE`: marks the rule if held, else adds it after the rules
    /// of its priority.
    pub fn upsert(&mut self, rule: Rule, stamp: u32) -> Applied {
        if let Some(h) = self.held.iter_mut().find(|h| h.rule == rule) {
            h.stamp = stamp;
            return Applied::Seen;
        }
        self.insert(rule, stamp);
        Applied::Created
    }

    /// A dump's entry during a scan stamped `stamp`: marks one held copy not yet marked
    /// by this scan, else adds one (dumps list every duplicate).
    pub fn mark(&mut self, rule: Rule, stamp: u32) -> Applied {
        if let Some(h) = self
            .held
            .iter_mut()
            .find(|h| h.stamp != stamp && h.rule == rule)
        {
            h.stamp = stamp;
            return Applied::Seen;
        }
        // Not held, or every held copy was marked by this scan already (one more copy).
        self.insert(rule, stamp);
        Applied::Created
    }

    fn insert(&mut self, rule: Rule, stamp: u32) {
        let at = self
            .held
            .iter()
            .position(|h| h.rule.priority > rule.priority)
            .unwrap_or(self.held.len());
        self.held.insert(at, Held { rule, stamp });
    }

    /// `RTM_DELRULE`: removes the first held copy (the kernel's `rule_find` takes the
    /// first match). Returns whether one was held.
    pub fn remove(&mut self, rule: &Rule) -> bool {
        match self.held.iter().position(|h| &h.rule == rule) {
            Some(i) => {
                self.held.remove(i);
                true
            }
            None => false,
        }
    }

    /// The sweep: drops rules not marked with `stamp`, returning them.
    pub fn prune(&mut self, stamp: u32) -> Vec<Rule> {
        let mut gone = Vec::new();
        self.held.retain(|h| {
            let keep = h.stamp == stamp;
            if !keep {
                gone.push(h.rule.clone());
            }
            keep
        });
        gone
    }

    /// Replaces the whole list (tests, and a source that knows the full state).
    pub fn replace_all(&mut self, rules: impl IntoIterator<Item = Rule>, stamp: u32) {
        self.held.clear();
        for r in rules {
            self.insert(r, stamp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Family;

    fn rule(prio: u32, table: u32) -> Rule {
        Rule::to_table(Family::V4, prio, table)
    }

    fn order(l: &RuleList) -> Vec<(u32, u32)> {
        l.iter().map(|r| (r.priority, r.table)).collect()
    }

    #[test]
    fn new_rules_go_after_their_priority_as_the_kernel_inserts_them() {
        let mut l = RuleList::default();
        l.replace_all(Rule::defaults(Family::V4), 1);
        l.upsert(rule(100, 1), 1);
        l.upsert(rule(100, 2), 1);
        l.upsert(rule(50, 3), 1);
        l.upsert(rule(32766, 4), 1);
        assert_eq!(
            order(&l),
            vec![
                (0, 255),
                (50, 3),
                (100, 1),
                (100, 2),
                (32766, 254),
                (32766, 4),
                (32767, 253)
            ]
        );
        // Idempotent: the same rule again only marks.
        assert_eq!(l.upsert(rule(100, 1), 2), Applied::Seen);
        assert_eq!(l.len(), 7);
        assert!(l.remove(&rule(100, 1)));
        assert!(!l.remove(&rule(100, 1)));
        assert_eq!(l.len(), 6);
    }

    #[test]
    fn a_scan_marks_each_duplicate_once_and_prunes_the_unmarked() {
        let mut l = RuleList::default();
        l.replace_all([rule(10, 1), rule(20, 2), rule(30, 3)], 1);
        // The dump lists rule 10 twice (a real duplicate) and no longer rule 20.
        assert_eq!(l.mark(rule(10, 1), 2), Applied::Seen);
        assert_eq!(l.mark(rule(10, 1), 2), Applied::Created);
        assert_eq!(l.mark(rule(30, 3), 2), Applied::Seen);
        let gone = l.prune(2);
        assert_eq!(gone, vec![rule(20, 2)]);
        assert_eq!(order(&l), vec![(10, 1), (10, 1), (30, 3)]);
    }
}
