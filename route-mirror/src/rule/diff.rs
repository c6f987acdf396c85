//! Rules in `diff`: the kernel's list of one family against the mirror's, in order.
//! Rules have no key, so the lists compare as multisets (what one side has that the
//! other lacks, raw attributes byte for byte) and then as sequences (same rules, other
//! order: a lookup could then pick another rule).

use std::collections::HashMap;

use super::Rule;

/// The differences, as lines for the report (empty: equal).
pub fn compare(kernel: &[Rule], mirror: &[Rule]) -> Vec<String> {
    let mut out = Vec::new();
    let mut count: HashMap<&Rule, i64> = HashMap::new();
    for r in kernel {
        *count.entry(r).or_default() += 1;
    }
    for r in mirror {
        *count.entry(r).or_default() -= 1;
    }
    for r in kernel.iter().chain(mirror) {
        match count.get(r).copied().unwrap_or(0) {
            n if n > 0 => out.push(format!("rule missing from the mirror: {}", brief(r))),
            n if n < 0 => out.push(format!("rule in the mirror only: {}", brief(r))),
            _ => continue,
        }
        // One line per distinct rule and side.
        count.insert(r, 0);
    }
    if out.is_empty() && kernel != mirror {
        out.push(format!(
            "rules of {} in another order: kernel {:?}, mirror {:?}",
            kernel
                .first()
                .map_or("?".to_string(), |r| r.family.to_string()),
            kernel.iter().map(|r| r.priority).collect::<Vec<_>>(),
            mirror.iter().map(|r| r.priority).collect::<Vec<_>>()
        ));
    }
    out
}

fn brief(r: &Rule) -> String {
    format!("{} pref {} {:?}", r.family, r.priority, r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Family;
    use crate::rule::RawAttr;

    #[test]
    fn equal_lists_have_no_difference_and_raw_bytes_count() {
        let a = Rule::defaults(Family::V4);
        assert!(compare(&a, &a).is_empty());
        let mut k = a.clone();
        let mut r = Rule::to_table(Family::V4, 5, 5);
        r.raw.push(RawAttr {
            kind: 25,
            value: vec![1],
        });
        k.insert(1, r.clone());
        let mut m = a.clone();
        r.raw[0].value = vec![2];
        m.insert(1, r);
        let d = compare(&k, &m);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d[0].starts_with("rule missing"));
        assert!(d[1].starts_with("rule in the mirror only"));
    }

    #[test]
    fn order_matters() {
        let a = Rule::to_table(Family::V4, 100, 1);
        let b = Rule::to_table(Family::V4, 100, 2);
        let d = compare(&[a.clone(), b.clone()], &[b, a]);
        assert_eq!(d.len(), 1);
        assert!(d[0].contains("another order"));
    }
}
