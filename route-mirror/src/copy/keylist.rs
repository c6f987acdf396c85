//! Writing one IPv4 key's list of routes. The kernel keeps a list per (table, prefix,
//! tos, metric) (`ip route append`/`prepend`, a reject route beside a unicast one, a
//! subnet on two devices) and forwards with its first entry. An exact copy of the list
//! is the same routes in the same order: the writes keep the longest run the target
//! already has in place, delete the rest, and add the missing ones before it
//! (`NLM_F_CREATE`: in front) or after it (`NLM_F_APPEND`). The kernel refuses an entry
//! identical to one the list holds (same type and `fib_info`), so identical wanted
//! entries (a rewrite can make them so) are one.
//!
//! Every plan is checked against a model of what `fib_table_insert` and
//! `fib_table_delete` (net/ipv4/fib_trie.c) do with the requests the writer sends: a
//! delete removes the *first* entry its attributes match, which may not be the one
//! meant (a single hop matches a multipath entry whose first hop it is; weights and
//! hop flags are not compared). A plan the model does not end in the wanted list is
//! replaced by one that always does: delete from the front, then append in order.

use smallvec::SmallVec;

use crate::model::RouteAttrs;

/// One write of a key's plan: a delete names an entry of the current list, the others
/// an entry of the wanted one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Delete(usize),
    /// `NLM_F_CREATE | NLM_F_EXCL` into a key with no route (EEXIST if someone else's
    /// route arrived meanwhile: it is not ours to join).
    Add(usize),
    /// Replaces the first entry (forwarding never sees the key without a route).
    Replace(usize),
    Prepend(usize),
    Append(usize),
}

/// The writes that turn the key's list `cur` (kernel order, every entry ours) into
/// `want` (distinct entries). Deletes come first.
pub fn steps(cur: &[&RouteAttrs], want: &[&RouteAttrs]) -> Vec<Step> {
    if cur.len() == want.len() && cur.iter().zip(want).all(|(c, w)| c == w) {
        return Vec::new();
    }
    let plan = keep_a_run(cur, want);
    if ends_in(cur, want, &plan) {
        plan
    } else {
        rebuild(cur, want)
    }
}

/// Keeps the longest run of `want` that `cur` holds in the same order (deleting what
/// lies between: deletes reach anywhere, adds only the front and the end), preferring
/// one that keeps the first entry; deletes the others, prepends and appends the rest.
fn keep_a_run(cur: &[&RouteAttrs], want: &[&RouteAttrs]) -> Vec<Step> {
    let mut best: (usize, bool, usize, SmallVec<[usize; 4]>) = (0, false, 0, SmallVec::new());
    for a in 0..want.len() {
        // Greedy is optimal for "is want[a..b] a subsequence of cur".
        let mut kept: SmallVec<[usize; 4]> = SmallVec::new();
        let mut pos = 0;
        for w in &want[a..] {
            match cur[pos..].iter().position(|c| c == w) {
                Some(p) => {
                    kept.push(pos + p);
                    pos += p + 1;
                }
                None => break,
            }
        }
        let head = a == 0 && kept.first() == Some(&0);
        if (kept.len(), head) > (best.0, best.1) {
            best = (kept.len(), head, a, kept);
        }
    }
    let (len, _, a, kept) = best;
    let mut out = Vec::with_capacity(cur.len() + want.len());
    if len == 0 {
        match (cur.is_empty(), want.is_empty()) {
            (true, _) => {
                out.push(Step::Add(0));
                out.extend((1..want.len()).map(Step::Append));
            }
            (false, true) => out.extend((0..cur.len()).map(Step::Delete)),
            (false, false) => {
                out.extend((1..cur.len()).map(Step::Delete));
                out.push(Step::Replace(0));
                out.extend((1..want.len()).map(Step::Append));
            }
        }
        return out;
    }
    out.extend(
        (0..cur.len())
            .filter(|i| !kept.contains(i))
            .map(Step::Delete),
    );
    out.extend((0..a).rev().map(Step::Prepend));
    out.extend((a + len..want.len()).map(Step::Append));
    out
}

/// Deletes every entry from the front (the first entry is the first its own request
/// matches), then adds the wanted ones in order.
fn rebuild(cur: &[&RouteAttrs], want: &[&RouteAttrs]) -> Vec<Step> {
    let mut out: Vec<Step> = (0..cur.len()).map(Step::Delete).collect();
    if !want.is_empty() {
        out.push(Step::Add(0));
        out.extend((1..want.len()).map(Step::Append));
    }
    out
}

/// Whether the kernel, given `plan`, deletes exactly the entries meant, refuses
/// nothing, answers every write with a notification, and ends with `want`.
fn ends_in(cur: &[&RouteAttrs], want: &[&RouteAttrs], plan: &[Step]) -> bool {
    // (attrs, index in cur for entries that were there)
    let mut list: Vec<(&RouteAttrs, Option<usize>)> =
        cur.iter().enumerate().map(|(i, a)| (*a, Some(i))).collect();
    for s in plan {
        match *s {
            Step::Delete(i) => match list.iter().position(|(e, _)| delete_hits(cur[i], e)) {
                Some(p) if list[p].1 == Some(i) => {
                    list.remove(p);
                }
                _ => return false,
            },
            Step::Add(w) | Step::Replace(w) | Step::Prepend(w) | Step::Append(w) => {
                // An identical entry: EEXIST (a replace of the first entry by itself
                // succeeds silently, and no echo would come).
                if list.iter().any(|(e, _)| *e == want[w]) {
                    return false;
                }
                match s {
                    Step::Add(_) if !list.is_empty() => return false,
                    Step::Replace(_) if !list.is_empty() => list[0] = (want[w], None),
                    Step::Prepend(_) => list.insert(0, (want[w], None)),
                    _ => list.push((want[w], None)),
                }
            }
        }
    }
    list.len() == want.len() && list.iter().zip(want).all(|((e, _), w)| e == w)
}

/// Whether the kernel's IPv4 delete, sent for `req` as the writer encodes it (type,
/// protocol, next hops, preferred source; any scope, no metrics), matches entry `e`
/// (`fib_table_delete` with `fib_nh_match`; the key is matched already).
pub fn delete_hits(req: &RouteAttrs, e: &RouteAttrs) -> bool {
    if req.kind != 0 && req.kind != e.kind {
        return false;
    }
    if req.protocol != 0 && req.protocol != e.protocol {
        return false;
    }
    if req.prefsrc.is_some() && req.prefsrc != e.prefsrc {
        return false;
    }
    if let Some(id) = req.nh_id {
        return e.nh_id == Some(id);
    }
    let hop_given = |h: &crate::model::NextHop| h.ifindex != 0 || h.gateway.is_some();
    match req.nexthops.as_slice() {
        [one] if hop_given(one) => {
            if e.nh_id.is_some() {
                return false;
            }
            // Compared with the entry's first hop only.
            let Some(first) = e.nexthops.first() else {
                return false;
            };
            (one.ifindex == 0 || one.ifindex == first.ifindex)
                && (one.gateway.is_none() || one.gateway == first.gateway)
        }
        [] | [_] => true,
        many => {
            if e.nh_id.is_some() {
                return false;
            }
            // The entry's hops against the request's, in order; a request with fewer
            // hops than the entry is invalid (no match).
            e.nexthops.len() <= many.len()
                && e.nexthops.iter().zip(many).all(|(h, r)| {
                    (r.ifindex == 0 || r.ifindex == h.ifindex)
                        && (r.gateway.is_none() || r.gateway == h.gateway)
                })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{rtn, NextHop};

    fn via(gw: &str, ifindex: u32) -> RouteAttrs {
        RouteAttrs {
            protocol: 240,
            kind: rtn::UNICAST,
            nexthops: vec![NextHop::new(Some(gw.parse().unwrap()), ifindex)].into(),
            ..Default::default()
        }
    }

    fn blackhole() -> RouteAttrs {
        RouteAttrs {
            protocol: 240,
            kind: rtn::BLACKHOLE,
            ..Default::default()
        }
    }

    fn multipath(hops: &[(&str, u32)]) -> RouteAttrs {
        RouteAttrs {
            protocol: 240,
            kind: rtn::UNICAST,
            nexthops: hops
                .iter()
                .map(|(g, i)| NextHop::new(Some(g.parse().unwrap()), *i))
                .collect(),
            ..Default::default()
        }
    }

    fn run(cur: &[&RouteAttrs], want: &[&RouteAttrs]) -> Vec<Step> {
        let s = steps(cur, want);
        assert!(
            ends_in(cur, want, &s),
            "{s:?} does not end in the wanted list"
        );
        s
    }

    #[test]
    fn appends_prepends_and_deletes_keep_what_is_in_place() {
        let (a, b, c) = (via("198.18.1.2", 3), via("198.18.2.2", 5), blackhole());
        use Step::*;
        assert_eq!(run(&[], &[&a, &b]), vec![Add(0), Append(1)]);
        assert_eq!(run(&[&a], &[&a, &b]), vec![Append(1)], "append");
        assert_eq!(run(&[&a], &[&b, &a]), vec![Prepend(0)], "prepend");
        assert_eq!(
            run(&[&a], &[&c, &b, &a]),
            vec![Prepend(1), Prepend(0)],
            "prepends go in reverse"
        );
        assert_eq!(run(&[&a, &b], &[&b]), vec![Delete(0)], "the first goes");
        assert_eq!(
            run(&[&a, &b, &c], &[&a, &c]),
            vec![Delete(1)],
            "one from the middle"
        );
        assert_eq!(
            run(&[&a, &b], &[&a, &c, &b]),
            vec![Delete(1), Append(1), Append(2)]
        );
        assert_eq!(run(&[&a, &b], &[&a, &b]), vec![]);
        assert_eq!(run(&[&a], &[&b]), vec![Replace(0)], "no gap at the head");
        assert_eq!(
            run(&[&a, &b], &[&c, &a]),
            vec![Delete(1), Prepend(0)],
            "keeps the run a"
        );
        assert_eq!(run(&[&a, &b], &[]), vec![Delete(0), Delete(1)]);
        assert_eq!(run(&[&a, &b], &[&b, &a]).len(), 2, "a reorder");
    }

    #[test]
    fn an_ambiguous_delete_rebuilds_the_list() {
        // Deleting the single hop `a` after `ab` would hit `ab` (its first hop is `a`).
        let ab = multipath(&[("198.18.1.2", 3), ("198.18.2.2", 5)]);
        let a = via("198.18.1.2", 3);
        let b = via("198.18.2.2", 5);
        assert!(delete_hits(&a, &ab) && !delete_hits(&b, &ab));
        let s = run(&[&ab, &a], &[&ab, &b]);
        assert_eq!(
            s,
            vec![
                Step::Delete(0),
                Step::Delete(1),
                Step::Add(0),
                Step::Append(1)
            ]
        );
        // A multipath request with more hops than a single-hop entry matches it.
        assert!(delete_hits(&ab, &a));
        assert!(!delete_hits(&a, &blackhole()));
        assert!(delete_hits(&blackhole(), &blackhole()));
    }
}
