//! AFT objects as gNMI notifications.
//!
//! One notification carries up to [`PER_NOTIFICATION`] objects of one network instance:
//! its prefix is the instance's `afts` path (with the target), each update's path is
//! relative to it (`ipv4-unicast/ipv4-entry[prefix=P]/state/prefix`). A full table is a
//! few thousand responses instead of a million, and collectors (gnmic, Telegraf,
//! pygnmi) join prefix and path as the spec says.
//!
//! Values follow the requested encoding: PROTO sends typed scalars (`uint_val`,
//! `string_val`, `bytes_val`), JSON and JSON_IETF send JSON scalars (RFC 7951 for
//! JSON_IETF: 64-bit integers and binary as strings).

use super::path::{afts_path, elem, Key, Section, Selector};
use super::proto::{typed_value, Encoding, Notification, Path, TypedValue, Update};
use crate::export::aft::{
    metadata, origin_protocol, Aft, Change, Entry4, Instance, Member, NextHop, Obj, Op,
};

/// Objects per notification.
pub const PER_NOTIFICATION: usize = 64;

/// A leaf value before encoding.
enum Val {
    Str(String),
    Uint(u64),
    Bytes(Vec<u8>),
}

/// A leaf path below its object, with list keys.
type Rel = Vec<(&'static str, Option<(&'static str, String)>)>;

fn encode(v: Val, enc: Encoding) -> TypedValue {
    use typed_value::Value;
    let value = match (enc, v) {
        (Encoding::Proto, Val::Str(s)) => Value::StringVal(s),
        (Encoding::Proto, Val::Uint(n)) => Value::UintVal(n),
        (Encoding::Proto, Val::Bytes(b)) => Value::BytesVal(b),
        (Encoding::JsonIetf, v) => Value::JsonIetfVal(json(v, true).into_bytes()),
        (_, v) => Value::JsonVal(json(v, false).into_bytes()),
    };
    TypedValue { value: Some(value) }
}

fn json(v: Val, ietf: bool) -> String {
    match v {
        Val::Str(s) => serde_json::to_string(&s).unwrap_or_default(),
        Val::Uint(n) if ietf => format!("\"{n}\""),
        Val::Uint(n) => n.to_string(),
        Val::Bytes(b) => format!("\"{}\"", base64(&b)),
    }
}

/// RFC 4648 base64 with padding (YANG `binary` in JSON).
pub fn base64(b: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(b.len().div_ceil(3) * 4);
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                s.push(A[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

fn entry_leaves(prefix: &ipnet::IpNet, e: &Entry4) -> Vec<(Rel, Val)> {
    vec![
        (
            vec![("state", None), ("prefix", None)],
            Val::Str(prefix.to_string()),
        ),
        (
            vec![("state", None), ("next-hop-group", None)],
            Val::Uint(e.nhg),
        ),
        (
            vec![("state", None), ("origin-protocol", None)],
            Val::Str(origin_protocol(e.protocol, e.kind).to_string()),
        ),
        (
            vec![("state", None), ("entry-metadata", None)],
            Val::Bytes(metadata(e).to_vec()),
        ),
    ]
}

fn group_leaves(id: u64, members: &[Member]) -> Vec<(Rel, Val)> {
    let mut v = vec![(vec![("state", None), ("id", None)], Val::Uint(id))];
    for &(index, weight) in members {
        let nh = || {
            vec![
                ("next-hops", None),
                ("next-hop", Some(("index", index.to_string()))),
                ("state", None),
            ]
        };
        let mut a = nh();
        a.push(("index", None));
        v.push((a, Val::Uint(index)));
        let mut b = nh();
        b.push(("weight", None));
        v.push((b, Val::Uint(weight)));
    }
    v
}

fn hop_leaves(index: u64, h: &NextHop) -> Vec<(Rel, Val)> {
    let mut v = vec![(vec![("state", None), ("index", None)], Val::Uint(index))];
    if let Some(ip) = h.ip {
        v.push((
            vec![("state", None), ("ip-address", None)],
            Val::Str(ip.to_string()),
        ));
    }
    if let Some(i) = &h.interface {
        v.push((
            vec![
                ("interface-ref", None),
                ("state", None),
                ("interface", None),
            ],
            Val::Str(i.to_string()),
        ));
    }
    v
}

/// Builds notifications for one network instance, [`PER_NOTIFICATION`] objects each.
pub struct Builder<'a> {
    pub enc: Encoding,
    pub target: &'a str,
    pub time_ns: i64,
    ni: String,
    cur: Option<Notification>,
    objects: usize,
    pub out: Vec<Notification>,
}

impl<'a> Builder<'a> {
    pub fn new(enc: Encoding, target: &'a str, time_ns: i64) -> Builder<'a> {
        Builder {
            enc,
            target,
            time_ns,
            ni: String::new(),
            cur: None,
            objects: 0,
            out: Vec::new(),
        }
    }

    fn notification(&mut self, ni: &str) -> &mut Notification {
        if self.ni != ni || self.objects >= PER_NOTIFICATION {
            self.flush();
            self.ni = ni.to_string();
        }
        self.objects += 1;
        let (target, time_ns) = (self.target, self.time_ns);
        self.cur.get_or_insert_with(|| {
            let mut prefix = afts_path(ni);
            prefix.target = target.to_string();
            Notification {
                timestamp: time_ns,
                prefix: Some(prefix),
                ..Default::default()
            }
        })
    }

    /// Ends the current notification (a sync_response or a different kind follows).
    pub fn flush(&mut self) {
        if let Some(n) = self.cur.take() {
            self.out.push(n);
        }
        self.objects = 0;
    }

    fn object(&mut self, ni: &str, sel: &Selector, s: Section, k: Key, leaves: Vec<(Rel, Val)>) {
        if !sel.wants_ni(ni) || !sel.wants_section(s) || sel.key.is_some_and(|x| x != k) {
            return;
        }
        let (container, list, key) = s.names();
        let base = [
            elem(container, None),
            elem(list, Some((key, k.to_string()))),
        ];
        let enc = self.enc;
        let updates: Vec<Update> = leaves
            .into_iter()
            .filter(|(rel, _)| sel.wants_leaf(rel))
            .map(|(rel, v)| {
                let mut p = base.to_vec();
                p.extend(rel.into_iter().map(|(n, k)| elem(n, k)));
                Update {
                    path: Some(Path {
                        elem: p,
                        ..Default::default()
                    }),
                    val: Some(encode(v, enc)),
                    ..Default::default()
                }
            })
            .collect();
        if !updates.is_empty() {
            self.notification(ni).update.extend(updates);
        }
    }

    /// A deleted object (sent whatever leaves the selector picks within it).
    pub fn delete(&mut self, ni: &str, sel: &Selector, s: Section, k: Key) {
        if !sel.wants_ni(ni) || !sel.wants_section(s) || sel.key.is_some_and(|x| x != k) {
            return;
        }
        let (container, list, key) = s.names();
        self.notification(ni).delete.push(Path {
            elem: vec![
                elem(container, None),
                elem(list, Some((key, k.to_string()))),
            ],
            ..Default::default()
        });
    }

    /// A whole subtree deleted (the start of a resync bracket).
    pub fn delete_path(&mut self, ni: &str, p: Path) {
        self.flush();
        let n = self.notification(ni);
        let rel = p.elem[3..].to_vec();
        n.delete.push(Path {
            elem: rel,
            ..Default::default()
        });
        self.flush();
    }

    pub fn entry(&mut self, ni: &str, sel: &Selector, prefix: ipnet::IpNet, e: &Entry4) {
        let s = match prefix {
            ipnet::IpNet::V4(_) => Section::V4,
            ipnet::IpNet::V6(_) => Section::V6,
        };
        self.object(ni, sel, s, Key::Prefix(prefix), entry_leaves(&prefix, e));
    }

    pub fn group(&mut self, ni: &str, sel: &Selector, id: u64, members: &[Member]) {
        self.object(
            ni,
            sel,
            Section::Groups,
            Key::Id(id),
            group_leaves(id, members),
        );
    }

    pub fn hop(&mut self, ni: &str, sel: &Selector, index: u64, h: &NextHop) {
        self.object(ni, sel, Section::Hops, Key::Id(index), hop_leaves(index, h));
    }

    /// An existing next hop's interface renamed (its leaves updated) or gone (its
    /// `interface-ref/state/interface` leaf deleted).
    pub fn hop_interface(&mut self, ni: &str, sel: &Selector, index: u64, h: &NextHop) {
        if h.interface.is_some() {
            return self.hop(ni, sel, index, h);
        }
        let s = Section::Hops;
        let k = Key::Id(index);
        if !sel.wants_ni(ni)
            || !sel.wants_section(s)
            || sel.key.is_some_and(|x| x != k)
            || !sel.wants_leaf(&[
                ("interface-ref", None),
                ("state", None),
                ("interface", None),
            ])
        {
            return;
        }
        let (container, list, key) = s.names();
        self.notification(ni).delete.push(Path {
            elem: vec![
                elem(container, None),
                elem(list, Some((key, k.to_string()))),
                elem("interface-ref", None),
                elem("state", None),
                elem("interface", None),
            ],
            ..Default::default()
        });
    }

    /// One AFT operation, if `sel` selects its object: an update, or a delete.
    pub fn op(&mut self, ni: &str, sel: &Selector, c: &Change) {
        match &c.op {
            Op::NextHop { index, hop } => self.hop(ni, sel, *index, hop),
            Op::NextHopInterface { index, hop } => self.hop_interface(ni, sel, *index, hop),
            Op::NextHopDelete { index } => self.delete(ni, sel, Section::Hops, Key::Id(*index)),
            Op::Group { id, members } => self.group(ni, sel, *id, members),
            Op::GroupDelete { id } => self.delete(ni, sel, Section::Groups, Key::Id(*id)),
            Op::Entry { prefix, entry } => self.entry(ni, sel, *prefix, entry),
            Op::EntryDelete { prefix } => {
                let s = match prefix {
                    ipnet::IpNet::V4(_) => Section::V4,
                    ipnet::IpNet::V6(_) => Section::V6,
                };
                self.delete(ni, sel, s, Key::Prefix(*prefix))
            }
        }
    }

    /// An object met by a snapshot walk ([`Aft::visit`]), if `sel` selects it.
    pub fn obj(&mut self, ni: &str, sel: &Selector, o: &Obj<'_>) {
        match o {
            Obj::Hop(x, h) => self.hop(ni, sel, *x, h),
            Obj::Group(x, g) => self.group(ni, sel, *x, g),
            Obj::Entry(p, e) => self.entry(ni, sel, *p, e),
        }
    }

    /// Everything `sel` selects in one instance: next hops, groups, then entries, so a
    /// collector never sees a reference before its object.
    pub fn instance(&mut self, ni: &str, sel: &Selector, i: &Instance) {
        if !sel.wants_ni(ni) {
            return;
        }
        if let Some(k) = sel.key {
            // One object: a map lookup, not a walk.
            match (sel.section, k) {
                (Some(Section::Hops), Key::Id(x)) => {
                    if let Some(h) = i.next_hop(x) {
                        self.hop(ni, sel, x, &h);
                    }
                }
                (Some(Section::Groups), Key::Id(x)) => {
                    if let Some(g) = i.group(x) {
                        self.group(ni, sel, x, g);
                    }
                }
                (_, Key::Prefix(p)) => {
                    if let Some(e) = i.entry(&p) {
                        self.entry(ni, sel, p, e);
                    }
                }
                _ => {}
            }
            return;
        }
        if sel.wants_section(Section::Hops) {
            for (x, h) in i.next_hops() {
                self.hop(ni, sel, x, &h);
            }
        }
        if sel.wants_section(Section::Groups) {
            for (x, g) in i.groups() {
                self.group(ni, sel, x, g);
            }
        }
        for f in crate::model::Family::ALL {
            let s = match f {
                crate::model::Family::V4 => Section::V4,
                crate::model::Family::V6 => Section::V6,
            };
            if sel.wants_section(s) {
                for (p, e) in i.family_entries(f) {
                    self.entry(ni, sel, p, e);
                }
            }
        }
    }

    /// A whole AFT snapshot; `name` maps a table id to its network-instance name.
    pub fn snapshot(&mut self, aft: &Aft, sel: &Selector, name: &dyn Fn(u32) -> String) {
        for (table, i) in &aft.instances {
            self.instance(&name(*table), sel, i);
        }
        self.flush();
    }

    pub fn finish(mut self) -> Vec<Notification> {
        self.flush();
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0, 0, 0, 10, 1, 4]), "AAAACgEE");
    }
}
