//! gNMI paths over the AFT tree: what a request's path selects, and the paths of the
//! objects sent back.
//!
//! The tree served (OpenConfig `openconfig-network-instance` + `openconfig-aft`):
//!
//! ```text
//! network-instances/network-instance[name]/afts/
//!   ipv4-unicast/ipv4-entry[prefix]/state/{prefix,next-hop-group,origin-protocol,entry-metadata}
//!   ipv6-unicast/ipv6-entry[prefix]/state/...                      (same leaves)
//!   next-hop-groups/next-hop-group[id]/state/id
//!   next-hop-groups/next-hop-group[id]/next-hops/next-hop[index]/state/{index,weight}
//!   next-hops/next-hop[index]/state/{index,ip-address}
//!   next-hops/next-hop[index]/interface-ref/state/interface
//! ```
//!
//! A request path selects a network instance (or all: `*` or no key), a section, one
//! entry (a list key) or all, and leaves within it; `*` matches any element or key
//! value, a trailing `...` everything below. Module prefixes on element names
//! (`openconfig-network-instance:network-instances`) are ignored. A `...` elsewhere
//! than at the end is refused (not supported).

use std::collections::HashMap;

use ipnet::IpNet;

use super::proto::{Path, PathElem};

/// The four lists under `afts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Section {
    V4,
    V6,
    Groups,
    Hops,
}

impl Section {
    pub const ALL: [Section; 4] = [Section::Hops, Section::Groups, Section::V4, Section::V6];

    /// Container and list element names, and the list's key name.
    pub fn names(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Section::V4 => ("ipv4-unicast", "ipv4-entry", "prefix"),
            Section::V6 => ("ipv6-unicast", "ipv6-entry", "prefix"),
            Section::Groups => ("next-hop-groups", "next-hop-group", "id"),
            Section::Hops => ("next-hops", "next-hop", "index"),
        }
    }

    fn by_container(name: &str) -> Option<Section> {
        Section::ALL.into_iter().find(|s| s.names().0 == name)
    }
}

/// The key of one AFT object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Prefix(IpNet),
    Id(u64),
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::Prefix(p) => p.fmt(f),
            Key::Id(i) => i.fmt(f),
        }
    }
}

/// One element of a pattern below the list entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pat {
    name: String,
    key: HashMap<String, String>,
}

/// What a request path selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    /// Network instance name; `None`: all.
    pub ni: Option<String>,
    /// `None`: all four sections.
    pub section: Option<Section>,
    /// One object of the section; `None`: all.
    pub key: Option<Key>,
    /// Elements below the object (empty: all its leaves); may end in `...`.
    rest: Vec<Pat>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    /// The path names something outside the AFT tree.
    #[error("path {0} is not served (only network-instances/network-instance/afts)")]
    NotServed(String),
    #[error("path {path}: bad key {key}={value:?}")]
    BadKey {
        path: String,
        key: String,
        value: String,
    },
    #[error("path {0}: '...' is supported only as the last element")]
    Unsupported(String),
}

fn local(name: &str) -> &str {
    name.rsplit_once(':').map_or(name, |(_, n)| n)
}

fn wild(name: &str) -> bool {
    name == "*"
}

/// `a/b[k=v]/c` for messages.
pub fn display(p: &Path) -> String {
    let mut s = String::new();
    for e in &p.elem {
        s.push('/');
        s.push_str(&e.name);
        let mut keys: Vec<_> = e.key.iter().collect();
        keys.sort();
        for (k, v) in keys {
            s.push_str(&format!("[{k}={v}]"));
        }
    }
    if s.is_empty() {
        s.push('/');
    }
    s
}

/// Joins a request's prefix and path (gNMI: the prefix's elements come first).
pub fn join(prefix: Option<&Path>, path: Option<&Path>) -> Path {
    let mut elem = prefix.map(|p| p.elem.clone()).unwrap_or_default();
    elem.extend(path.map(|p| p.elem.clone()).unwrap_or_default());
    Path {
        elem,
        ..Default::default()
    }
}

impl Selector {
    /// Everything.
    pub fn all() -> Selector {
        Selector {
            ni: None,
            section: None,
            key: None,
            rest: Vec::new(),
        }
    }

    pub fn parse(p: &Path) -> Result<Selector, PathError> {
        let shown = || display(p);
        let mut sel = Selector::all();
        let elems = &p.elem;
        if let Some(i) = elems.iter().position(|e| e.name == "...") {
            if i + 1 != elems.len() {
                return Err(PathError::Unsupported(shown()));
            }
        }
        let it = elems.iter().take_while(|e| e.name != "...").enumerate();
        let fixed = ["network-instances", "network-instance", "afts"];
        for (depth, e) in it {
            let name = local(&e.name);
            match depth {
                0..=2 => {
                    if !wild(name) && name != fixed[depth] {
                        return Err(PathError::NotServed(shown()));
                    }
                    if depth == 1 {
                        sel.ni = e.key.get("name").filter(|v| !wild(v)).cloned();
                        if e.key.keys().any(|k| k != "name") {
                            return Err(PathError::NotServed(shown()));
                        }
                    }
                }
                3 => {
                    if !wild(name) {
                        sel.section = Some(
                            Section::by_container(name)
                                .ok_or_else(|| PathError::NotServed(shown()))?,
                        );
                    }
                }
                4 => {
                    let candidates: Vec<Section> = match sel.section {
                        Some(s) => vec![s],
                        None => Section::ALL.to_vec(),
                    };
                    let s = candidates
                        .into_iter()
                        .find(|s| wild(name) || s.names().1 == name)
                        .ok_or_else(|| PathError::NotServed(shown()))?;
                    if !wild(name) {
                        sel.section = Some(s);
                    }
                    for (k, v) in &e.key {
                        let section = sel.section.ok_or_else(|| PathError::NotServed(shown()))?;
                        if k != section.names().2 {
                            return Err(PathError::NotServed(shown()));
                        }
                        if wild(v) {
                            continue;
                        }
                        let bad = || PathError::BadKey {
                            path: shown(),
                            key: k.clone(),
                            value: v.clone(),
                        };
                        sel.key = Some(match section {
                            Section::V4 | Section::V6 => {
                                let net: IpNet = v.parse().map_err(|_| bad())?;
                                let family_ok = matches!(
                                    (section, net),
                                    (Section::V4, IpNet::V4(_)) | (Section::V6, IpNet::V6(_))
                                );
                                if !family_ok || net.trunc() != net {
                                    return Err(bad());
                                }
                                Key::Prefix(net)
                            }
                            _ => Key::Id(v.parse().map_err(|_| bad())?),
                        });
                    }
                }
                _ => {
                    // Below the list entry: checked against each object's leaves.
                    sel.rest = elems[depth..]
                        .iter()
                        .map(|e| Pat {
                            name: local(&e.name).to_string(),
                            key: e.key.clone(),
                        })
                        .collect();
                    break;
                }
            }
        }
        Ok(sel)
    }

    /// Whether network instance `name` is selected.
    pub fn wants_ni(&self, name: &str) -> bool {
        self.ni.as_deref().is_none_or(|n| n == name)
    }

    pub fn wants_section(&self, s: Section) -> bool {
        self.section.is_none_or(|x| x == s)
    }

    /// Whether a leaf at `rel` (elements below the object, with keys) is selected.
    pub fn wants_leaf(&self, rel: &[(&str, Option<(&str, String)>)]) -> bool {
        for (i, pat) in self.rest.iter().enumerate() {
            if pat.name == "..." {
                return true;
            }
            let Some((name, key)) = rel.get(i) else {
                return false; // the pattern goes deeper than this leaf
            };
            if !wild(&pat.name) && pat.name != *name {
                return false;
            }
            for (k, v) in &pat.key {
                match key {
                    Some((kk, kv)) if kk == k && (wild(v) || v == kv) => {}
                    _ => return false,
                }
            }
        }
        true
    }

    /// The path a resync deletes for network instance `ni`: the selected subtree.
    pub fn root_in(&self, ni: &str) -> Path {
        let mut p = afts_path(ni);
        if let Some(s) = self.section {
            let (container, list, key) = s.names();
            p.elem.push(elem(container, None));
            if let Some(k) = self.key {
                p.elem.push(elem(list, Some((key, k.to_string()))));
            }
        }
        p
    }
}

pub fn elem(name: &str, key: Option<(&str, String)>) -> PathElem {
    PathElem {
        name: name.to_string(),
        key: key
            .map(|(k, v)| HashMap::from([(k.to_string(), v)]))
            .unwrap_or_default(),
    }
}

/// `network-instances/network-instance[name=NI]/afts`.
pub fn afts_path(ni: &str) -> Path {
    Path {
        elem: vec![
            elem("network-instances", None),
            elem("network-instance", Some(("name", ni.to_string()))),
            elem("afts", None),
        ],
        ..Default::default()
    }
}

/// The path of one object: `afts_path(ni)/<container>/<list>[<key>=K]`.
pub fn object_path(ni: &str, s: Section, k: Key) -> Path {
    let mut p = afts_path(ni);
    let (container, list, key) = s.names();
    p.elem.push(elem(container, None));
    p.elem.push(elem(list, Some((key, k.to_string()))));
    p
}

/// Parses gNMI's string form (`/a/b[k=v]/c`), as clients write paths; for tests and
/// the CLI.
pub fn parse_str(s: &str) -> Path {
    let mut elem_v = Vec::new();
    for part in split_path(s) {
        let (name, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part.as_str(), ""),
        };
        let mut key = HashMap::new();
        while let Some(end) = rest.find(']') {
            if let Some((k, v)) = rest[1..end].split_once('=') {
                key.insert(k.to_string(), v.to_string());
            }
            rest = &rest[end + 1..];
        }
        elem_v.push(PathElem {
            name: name.to_string(),
            key,
        });
    }
    Path {
        elem: elem_v,
        ..Default::default()
    }
}

/// Splits on `/` outside brackets (prefix keys hold slashes).
fn split_path(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut depth = 0;
    for c in s.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            '/' if depth == 0 => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(s: &str) -> Result<Selector, PathError> {
        Selector::parse(&parse_str(s))
    }

    #[test]
    fn selects_levels() {
        assert_eq!(sel("/").unwrap(), Selector::all());
        let s = sel("/network-instances/network-instance[name=main]/afts/ipv4-unicast").unwrap();
        assert_eq!(
            (s.ni.as_deref(), s.section, s.key),
            (Some("main"), Some(Section::V4), None)
        );
        let s = sel("/openconfig-network-instance:network-instances/network-instance[name=*]/afts/ipv6-unicast/ipv6-entry[prefix=2001:db8::/32]/state/prefix").unwrap();
        assert_eq!(s.ni, None);
        assert_eq!(s.key, Some(Key::Prefix("2001:db8::/32".parse().unwrap())));
        assert!(s.wants_leaf(&[("state", None), ("prefix", None)]));
        assert!(!s.wants_leaf(&[("state", None), ("origin-protocol", None)]));
        assert!(!s.wants_leaf(&[("state", None)]));
        let s = sel("/network-instances/network-instance/afts/*/next-hop-group[id=7]").unwrap();
        assert_eq!(
            (s.section, s.key),
            (Some(Section::Groups), Some(Key::Id(7)))
        );
        let s = sel("/network-instances/network-instance[name=100]/afts/next-hop-groups/next-hop-group/next-hops/next-hop[index=3]").unwrap();
        assert!(s.wants_leaf(&[
            ("next-hops", None),
            ("next-hop", Some(("index", "3".into()))),
            ("state", None),
            ("weight", None)
        ]));
        assert!(!s.wants_leaf(&[
            ("next-hops", None),
            ("next-hop", Some(("index", "4".into()))),
            ("state", None),
            ("weight", None)
        ]));
        assert!(!s.wants_leaf(&[("state", None), ("id", None)]));
        assert!(sel("/network-instances/...")
            .unwrap()
            .wants_leaf(&[("state", None)]));
    }

    #[test]
    fn refuses_what_is_not_served() {
        assert!(matches!(sel("/interfaces"), Err(PathError::NotServed(_))));
        assert!(matches!(
            sel("/network-instances/network-instance/afts/mpls"),
            Err(PathError::NotServed(_))
        ));
        assert!(matches!(
            sel("/network-instances/network-instance/afts/ipv4-unicast/ipv4-entry[prefix=10.0.0.1/8]"),
            Err(PathError::BadKey { .. })
        ));
        assert!(matches!(
            sel("/network-instances/network-instance/afts/ipv4-unicast/ipv4-entry[prefix=2001:db8::/32]"),
            Err(PathError::BadKey { .. })
        ));
        assert!(matches!(
            sel("/network-instances/.../state"),
            Err(PathError::Unsupported(_))
        ));
    }

    #[test]
    fn string_paths_keep_slashes_in_keys() {
        let p = parse_str("/a/b[prefix=10.0.0.0/8]/c");
        assert_eq!(p.elem.len(), 3);
        assert_eq!(p.elem[1].key["prefix"], "10.0.0.0/8");
        assert_eq!(display(&p), "/a/b[prefix=10.0.0.0/8]/c");
    }
}
