//! Table and protocol names as `ip route` knows them: iproute2's `rt_tables` and
//! `rt_protos` files (and their `.d/*.conf` drop-ins) on top of the built-in names.
//!
//! iproute2 reads `/etc/iproute2` and, since 6.5, falls back to `/usr/share/iproute2`;
//! both are read here, `/etc` last so a local name wins.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use crate::model::{rtprot, table};

/// Where iproute2 keeps its name files, lowest precedence first.
pub const DIRS: [&str; 2] = ["/usr/share/iproute2", "/etc/iproute2"];

/// The system's names, read once per process.
pub fn system() -> &'static Names {
    static NAMES: std::sync::OnceLock<Names> = std::sync::OnceLock::new();
    NAMES.get_or_init(Names::load)
}

#[derive(Debug, Clone, Default)]
pub struct Names {
    tables: BTreeMap<u32, String>,
    table_ids: HashMap<String, u32>,
    protos: BTreeMap<u8, String>,
    proto_ids: HashMap<String, u8>,
}

impl Names {
    /// Built-in names only.
    pub fn builtin() -> Names {
        let mut n = Names::default();
        for id in [table::DEFAULT, table::MAIN, table::LOCAL] {
            if let Some(name) = table::name(id) {
                n.add_table(id, name);
            }
        }
        for p in 0..=u8::MAX {
            if let Some(name) = rtprot::name(p) {
                n.add_proto(p, name);
            }
        }
        n
    }

    /// Built-in names plus the system's iproute2 files. Unreadable files are skipped:
    /// names are a convenience, numbers always work.
    pub fn load() -> Names {
        let mut n = Names::builtin();
        for dir in DIRS {
            n.load_dir(Path::new(dir));
        }
        n
    }

    fn load_dir(&mut self, dir: &Path) {
        for (file, is_table) in [("rt_tables", true), ("rt_protos", false)] {
            let mut files = vec![dir.join(file)];
            if let Ok(rd) = std::fs::read_dir(dir.join(format!("{file}.d"))) {
                let mut extra: Vec<_> = rd
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "conf"))
                    .collect();
                extra.sort();
                files.extend(extra);
            }
            for f in files {
                if let Ok(text) = std::fs::read_to_string(&f) {
                    if is_table {
                        self.add_tables_text(&text);
                    } else {
                        self.add_protos_text(&text);
                    }
                }
            }
        }
    }

    /// Lines of `ID NAME`; `#` starts a comment; malformed lines are ignored, as iproute2 does.
    pub fn add_tables_text(&mut self, text: &str) {
        for (id, name) in entries(text) {
            if let Ok(id) = parse_number::<u32>(id) {
                self.add_table(id, name);
            }
        }
    }

    pub fn add_protos_text(&mut self, text: &str) {
        for (id, name) in entries(text) {
            if let Ok(id) = parse_number::<u8>(id) {
                self.add_proto(id, name);
            }
        }
    }

    fn add_table(&mut self, id: u32, name: &str) {
        self.tables.insert(id, name.to_string());
        self.table_ids.insert(name.to_string(), id);
    }

    fn add_proto(&mut self, id: u8, name: &str) {
        self.protos.insert(id, name.to_string());
        self.proto_ids.insert(name.to_string(), id);
    }

    pub fn table_name(&self, id: u32) -> String {
        self.tables
            .get(&id)
            .cloned()
            .unwrap_or_else(|| id.to_string())
    }

    /// A table given by number or name.
    pub fn parse_table(&self, s: &str) -> Option<u32> {
        self.table_ids
            .get(s)
            .copied()
            .or_else(|| parse_number(s).ok())
    }

    pub fn proto_name(&self, id: u8) -> String {
        self.protos
            .get(&id)
            .cloned()
            .unwrap_or_else(|| id.to_string())
    }

    pub fn parse_proto(&self, s: &str) -> Option<u8> {
        self.proto_ids
            .get(s)
            .copied()
            .or_else(|| parse_number(s).ok())
    }
}

fn entries(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.lines().filter_map(|l| {
        let l = l.split('#').next().unwrap_or("").trim();
        let mut it = l.split_whitespace();
        let (id, name) = (it.next()?, it.next()?);
        Some((id, name))
    })
}

/// Decimal or `0x` hex, as iproute2 accepts.
fn parse_number<T: TryFrom<u64>>(s: &str) -> Result<T, ()> {
    let v = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).map_err(|_| ())?,
        None => s.parse::<u64>().map_err(|_| ())?,
    };
    T::try_from(v).map_err(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_add_to_builtins() {
        let mut n = Names::builtin();
        n.add_tables_text(
            "# comment\n255\tlocal\n254 main\n100 transit # BGP\n0x10 hex\nbad line here\n4000\n",
        );
        n.add_protos_text("186 bgp\n250 mine\n");
        assert_eq!(n.parse_table("transit"), Some(100));
        assert_eq!(n.parse_table("hex"), Some(16));
        assert_eq!(n.parse_table("main"), Some(254));
        assert_eq!(n.parse_table("4000"), Some(4000));
        assert_eq!(n.parse_table("nope"), None);
        assert_eq!(n.table_name(100), "transit");
        assert_eq!(n.table_name(4000), "4000");
        assert_eq!(n.proto_name(250), "mine");
        assert_eq!(n.proto_name(12), "bird");
        assert_eq!(n.parse_proto("bgp"), Some(186));
        assert_eq!(n.parse_proto("300"), None);
    }
}
