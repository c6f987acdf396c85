//! Copies and declared route sets resolved into [`Job`]s: one per target table, each
//! with the one producer that table follows. The settings themselves (`[[copy]]`,
//! `[[routes]]`, `--copy`, `--routes`) are [`crate::config`]'s: the configuration
//! stays below copy/, which reads it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use ipnet::IpNet;
use rustc_hash::FxHashMap;
use serde::Serialize;

use super::filter::{Filter, PrefixRange, Rewrite};
use super::iproute;
use super::sync::Wanted;
use super::want::Want;
use crate::config::{Config, ConfigError, CopyConfig, RoutesConfig};
use crate::mirror::Mirror;
use crate::model::{table, Family, SubKey};
use crate::names::Names;

/// A table in a namespace (`None`: the daemon's own namespace).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Endpoint {
    pub netns: Option<String>,
    pub table: u32,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = table::name(self.table).map_or_else(|| self.table.to_string(), str::to_string);
        match &self.netns {
            Some(n) => write!(f, "{n}/{t}"),
            None => f.write_str(&t),
        }
    }
}

impl Endpoint {
    /// `[NETNS/]TABLE`, the namespace defaulting to `netns`.
    pub fn parse(s: &str, default_netns: Option<&str>, names: &Names) -> Result<Endpoint, String> {
        let (ns, t) = match s.rsplit_once('/') {
            Some((ns, t)) => (Some(ns), t),
            None => (None, s),
        };
        if let Some(ns) = ns {
            if ns.is_empty() || ns.contains('/') || ns == "." || ns == ".." {
                return Err(format!("{s:?}: {ns:?} is not a namespace name"));
            }
        }
        let table = names
            .parse_table(t)
            .filter(|&t| t != 0)
            .ok_or_else(|| format!("{s:?}: {t:?} is not a table id or name"))?;
        Ok(Endpoint {
            netns: ns.or(default_netns).map(str::to_string),
            table,
        })
    }
}

/// What a target table follows.
#[derive(Debug, Clone, PartialEq)]
pub enum Producer {
    /// A table of a mirrored namespace, filtered and rewritten.
    Copy {
        from: Endpoint,
        filter: Box<Filter>,
        rewrite: Rewrite,
        metric: Option<u32>,
        prefsrc: bool,
    },
    /// Routes declared in the configuration or in files.
    Declared(Vec<Want>),
}

/// One target table and what keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub name: String,
    pub to: Endpoint,
    pub producer: Producer,
    pub owner: bool,
    pub persist: bool,
    /// IPv4 multipath routes go through shared nexthop objects ([`super::nhpool`]).
    pub nexthop_objects: bool,
}

impl Job {
    /// The namespaces this job needs mirrored (source and target).
    pub fn namespaces(&self) -> Vec<Option<String>> {
        let mut v = vec![self.to.netns.clone()];
        if let Producer::Copy { from, .. } = &self.producer {
            if from.netns != self.to.netns {
                v.push(from.netns.clone());
            }
        }
        v
    }

    /// Declared routes by prefix (empty for a copy).
    pub fn declared_index(&self) -> FxHashMap<IpNet, Vec<Want>> {
        let mut m: FxHashMap<IpNet, Vec<Want>> = FxHashMap::default();
        if let Producer::Declared(ws) = &self.producer {
            for w in ws {
                m.entry(w.dst).or_default().push(w.clone());
            }
        }
        m
    }

    /// The routes this job wants at `dst` of its target, resolved there (`links`: the
    /// target's device names): the source mirror's routes there that pass the filter,
    /// rewritten, or the declared ones (`declared`: [`Job::declared_index`]).
    pub fn wanted_at(
        &self,
        declared: &FxHashMap<IpNet, Vec<Want>>,
        dst: IpNet,
        src: &Mirror,
        links: &FxHashMap<&str, u32>,
        protocol: u8,
    ) -> Vec<Wanted> {
        let resolve = |w: &Want| {
            w.resolve(self.to.table, protocol, |n| links.get(n).copied())
                .map_err(|e| {
                    (
                        SubKey {
                            priority: w.metric,
                            tos: w.tos,
                            src: w.src,
                        },
                        e,
                    )
                })
        };
        match &self.producer {
            Producer::Declared(_) => declared
                .get(&dst)
                .map(|ws| ws.iter().map(resolve).collect())
                .unwrap_or_default(),
            Producer::Copy {
                from,
                filter,
                rewrite,
                metric,
                prefsrc,
            } => {
                if !filter.admits_prefix(&dst) {
                    return Vec::new();
                }
                let Some(es) = src
                    .fib
                    .table(Family::of_net(&dst), from.table)
                    .and_then(|t| t.get(&dst))
                else {
                    return Vec::new();
                };
                let mut out: Vec<Wanted> = Vec::with_capacity(es.len());
                let routes = es
                    .iter()
                    .filter(|e| filter.admits_route(e.attrs.protocol, e.attrs.kind))
                    .map(|e| {
                        let hops = src.effective_hops(&e.attrs);
                        let mut w =
                            Want::from_source(dst, &e.sub(), &e.attrs, &hops, |i| src.link_name(i));
                        rewrite.apply(&mut w);
                        if let Some(m) = metric {
                            w.metric = *m;
                        }
                        if !prefsrc {
                            w.prefsrc = None;
                        }
                        resolve(&w)
                    });
                // Entries a rewrite made identical are one: the kernel keeps no two
                // identical routes at a key.
                for w in routes {
                    let dup =
                        matches!(&w, Ok(ka) if out.iter().any(|o| o.as_ref().ok() == Some(ka)));
                    if !dup {
                        out.push(w);
                    }
                }
                out
            }
        }
    }
}

/// The copies and declared route sets of `cfg`, resolved (route files read now).
pub fn jobs(cfg: &Config) -> Result<Vec<Job>, String> {
    resolve(
        &cfg.copies,
        &cfg.route_sets,
        &cfg.mirrored(),
        crate::names::system(),
    )
}

/// [`jobs`] as a configuration check: a file whose copies do not resolve is refused at
/// start, by `check-config` and on reload, naming the key.
pub fn check(cfg: &Config, path: &Path) -> Result<(), ConfigError> {
    if cfg.copies.is_empty() && cfg.route_sets.is_empty() {
        return Ok(());
    }
    jobs(cfg).map(drop).map_err(|msg| ConfigError::Invalid {
        path: path.to_owned(),
        key: "copy",
        msg,
    })
}

/// Resolves the configured sections into jobs. `mirrored` are the namespaces the daemon
/// mirrors (`None`: its own): a `from`/`to` without a namespace means that one, and
/// needs it to be only one. Declared files are read now.
pub fn resolve(
    copies: &[CopyConfig],
    routes: &[RoutesConfig],
    mirrored: &[Option<String>],
    names: &Names,
) -> Result<Vec<Job>, String> {
    let default_ns = match mirrored {
        [one] => Some(one.clone()),
        _ => None,
    };
    let endpoint = |s: &str, what: &str| -> Result<Endpoint, String> {
        if !s.contains('/') && default_ns.is_none() {
            return Err(format!(
                "{what} {s:?}: the daemon mirrors several namespaces: say which (NETNS/TABLE)"
            ));
        }
        let d = default_ns.clone().flatten();
        Endpoint::parse(s, d.as_deref(), names)
    };
    let mut jobs: Vec<Job> = Vec::new();
    for c in copies {
        let name = c
            .name
            .clone()
            .unwrap_or_else(|| format!("{}={}", c.from, c.to));
        let ctx = |e: String| format!("copy {name:?}: {e}");
        let from = endpoint(&c.from, "from").map_err(ctx)?;
        let to = endpoint(&c.to, "to").map_err(ctx)?;
        if from == to {
            return Err(ctx(format!("copies {from} onto itself")));
        }
        let mut filter = Filter::default();
        for f in &c.families {
            filter.families.push(Filter::parse_family(f).map_err(ctx)?);
        }
        for p in &c.prefixes {
            filter.prefixes.push(PrefixRange::parse(p).map_err(ctx)?);
        }
        for p in &c.exclude {
            filter.exclude.push(PrefixRange::parse(p).map_err(ctx)?);
        }
        if let Some(ps) = &c.protocols {
            let mut v = Vec::new();
            for p in ps {
                v.push(Filter::parse_protocol(p, names).map_err(ctx)?);
            }
            filter.protocols = Some(v);
        }
        if let Some(ts) = &c.types {
            filter.kinds.clear();
            for t in ts {
                filter.kinds.push(Filter::parse_kind(t).map_err(ctx)?);
            }
        }
        let rewrite = Rewrite::parse(&c.nexthop).map_err(ctx)?;
        for f in Family::ALL {
            let taken = filter.families.is_empty() || filter.families.contains(&f);
            if taken && !rewrite.serves(f) {
                return Err(ctx(format!(
                    "`nexthop` has no next hop for {f} routes: add one, or `families = [{}]`",
                    if f == Family::V4 { 6 } else { 4 }
                )));
            }
        }
        jobs.push(Job {
            name,
            to,
            producer: Producer::Copy {
                from,
                filter: Box::new(filter),
                rewrite,
                metric: c.metric,
                prefsrc: c.prefsrc,
            },
            owner: c.owner,
            persist: c.persist,
            nexthop_objects: c.nexthop_objects,
        });
    }
    for (i, r) in routes.iter().enumerate() {
        let label = r
            .name
            .clone()
            .or_else(|| r.file.first().map(|p| p.display().to_string()))
            .unwrap_or_else(|| format!("routes #{}", i + 1));
        let ctx = |e: String| format!("routes {label:?}: {e}");
        let to = match &r.to {
            Some(t) => endpoint(t, "to").map_err(ctx)?,
            None => endpoint("main", "to").map_err(ctx)?,
        };
        let mut declared = Vec::new();
        for (n, line) in r.routes.iter().enumerate() {
            let d = iproute::parse_line(line, names)
                .map_err(|e| ctx(format!("routes[{n}] {line:?}: {e}")))?;
            declared.push(d);
        }
        for p in &r.file {
            let text = std::fs::read_to_string(p)
                .map_err(|e| ctx(format!("reading {}: {e}", p.display())))?;
            let parsed = iproute::parse_text(&text, names)
                .map_err(|e| ctx(format!("{}: {e}", p.display())))?;
            declared.extend(parsed);
        }
        // A line's `table` picks the table within the target namespace.
        let mut by_table: BTreeMap<u32, Vec<Want>> = BTreeMap::new();
        for d in declared {
            by_table
                .entry(d.table.unwrap_or(to.table))
                .or_default()
                .push(d.want);
        }
        if by_table.is_empty() {
            by_table.insert(to.table, Vec::new());
        }
        for (t, wants) in by_table {
            // A line naming another table makes a job of its own: `NAME/TABLE`.
            let name = if t == to.table {
                label.clone()
            } else {
                format!("{label}/{t}")
            };
            let to = Endpoint {
                netns: to.netns.clone(),
                table: t,
            };
            // Several sets into one table merge (a later one may not contradict).
            if let Some(j) = jobs.iter_mut().find(|j| j.to == to) {
                match &mut j.producer {
                    Producer::Declared(v) => {
                        v.extend(wants);
                        j.owner |= r.owner;
                        continue;
                    }
                    Producer::Copy { .. } => {
                        return Err(ctx(format!(
                            "{to} is the target of copy {:?} already",
                            j.name
                        )))
                    }
                }
            }
            jobs.push(Job {
                name,
                to,
                producer: Producer::Declared(wants),
                owner: r.owner,
                persist: r.persist,
                nexthop_objects: false,
            });
        }
    }
    // One producer per target table, and no route declared twice with different
    // attributes.
    for (i, a) in jobs.iter().enumerate() {
        if let Some(b) = jobs[..i].iter().find(|b| b.to == a.to) {
            return Err(format!(
                "{} and {} both write table {}",
                a.name, b.name, a.to
            ));
        }
        if let Producer::Declared(ws) = &a.producer {
            let mut seen: BTreeMap<(String, u32, u8, String), &Want> = BTreeMap::new();
            for w in ws {
                let k = (
                    w.dst.to_string(),
                    w.metric,
                    w.tos,
                    w.src.map(|s| s.to_string()).unwrap_or_default(),
                );
                if let Some(prev) = seen.insert(k, w) {
                    if prev != w {
                        return Err(format!(
                            "{}: {} metric {} is declared twice, differently",
                            a.name, w.dst, w.metric
                        ));
                    }
                }
            }
        }
    }
    // A copy whose target is another copy's source is fine; a cycle is not.
    for j in &jobs {
        let mut at = j.to.clone();
        for _ in 0..=jobs.len() {
            let Some(next) = jobs.iter().find(|k| match &k.producer {
                Producer::Copy { from, .. } => *from == at,
                Producer::Declared(_) => false,
            }) else {
                break;
            };
            if next.name == j.name {
                return Err(format!("copy {:?} feeds back into itself", j.name));
            }
            at = next.to.clone();
        }
    }
    Ok(jobs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{copy_flag, routes_flag};
    use serde::Deserialize;

    fn copies(t: &str) -> Vec<CopyConfig> {
        #[derive(Deserialize)]
        struct F {
            copy: Vec<CopyConfig>,
        }
        toml::from_str::<F>(t).unwrap().copy
    }

    fn ns(n: &str) -> Vec<Option<String>> {
        vec![Some(n.to_string())]
    }

    #[test]
    fn flag_and_section_resolve() {
        let names = Names::builtin();
        let jobs = resolve(&[copy_flag("main=B/200").unwrap()], &[], &ns("A"), &names).unwrap();
        assert_eq!(jobs[0].name, "main=B/200");
        assert_eq!(
            jobs[0].to,
            Endpoint {
                netns: Some("B".into()),
                table: 200
            }
        );
        let Producer::Copy {
            from,
            filter,
            rewrite,
            ..
        } = &jobs[0].producer
        else {
            panic!()
        };
        assert_eq!(
            from,
            &Endpoint {
                netns: Some("A".into()),
                table: 254
            }
        );
        assert_eq!(**filter, Filter::default());
        assert_eq!(rewrite, &Rewrite::Keep);
        assert_eq!(
            jobs[0].namespaces(),
            vec![Some("B".into()), Some("A".into())]
        );

        let c = copies(
            r#"
            [[copy]]
            from = "main"
            to = "200"
            families = 4
            prefixes = ["10.0.0.0/8 le 24"]
            protocols = ["bgp", 4]
            types = "unicast"
            nexthop = "via 198.18.1.2 dev veth1"
            owner = true
            "#,
        );
        let jobs = resolve(&c, &[], &[None], &names).unwrap();
        assert_eq!(
            jobs[0].to,
            Endpoint {
                netns: None,
                table: 200
            }
        );
        assert!(jobs[0].owner && jobs[0].persist);
        let Producer::Copy { filter, .. } = &jobs[0].producer else {
            panic!()
        };
        assert_eq!(filter.protocols, Some(vec![186, 4]));
        assert_eq!(filter.families, vec![Family::V4]);
    }

    #[test]
    fn mistakes_are_named() {
        let names = Names::builtin();
        let err = |c: &[CopyConfig], r: &[RoutesConfig], m: &[Option<String>]| {
            resolve(c, r, m, &names).unwrap_err()
        };
        let two = vec![Some("A".to_string()), Some("B".to_string())];
        assert!(err(&[copy_flag("main=200").unwrap()], &[], &two).contains("several namespaces"));
        assert!(err(&[copy_flag("main=main").unwrap()], &[], &ns("A")).contains("onto itself"));
        assert!(copy_flag("main").is_err());
        let mut c = copy_flag("main=B/200").unwrap();
        c.nexthop = vec!["via 198.18.1.2 dev veth1".into()];
        assert!(err(&[c.clone()], &[], &ns("A")).contains("no next hop for inet6"));
        c.families = vec!["4".into()];
        assert!(resolve(&[c], &[], &ns("A"), &names).is_ok());
        let cycle = [
            copy_flag("A/200=B/200").unwrap(),
            copy_flag("B/200=A/200").unwrap(),
        ];
        assert!(err(&cycle, &[], &ns("A")).contains("feeds back"));
        let both = [
            copy_flag("main=B/200").unwrap(),
            copy_flag("100=B/200").unwrap(),
        ];
        assert!(err(&both, &[], &ns("A")).contains("both write"));
        let r = RoutesConfig {
            routes: vec!["10.0.0.0/8 dev veth1".into(), "10.0.0.0/8 dev veth2".into()],
            ..routes_flag("/dev/null")
        };
        assert!(err(&[], &[r], &ns("A")).contains("declared twice"));
        let r = RoutesConfig {
            routes: vec!["10.0.0.0/8 dev veth1 bogus".into()],
            ..routes_flag("/dev/null")
        };
        assert!(err(&[], &[r], &ns("A")).contains("bogus"));
        assert!(err(&[], &[routes_flag("/nonexistent")], &ns("A")).contains("/nonexistent"));
    }

    #[test]
    fn a_config_whose_copies_do_not_resolve_is_refused_naming_the_key() {
        let mut cfg = Config::default();
        assert!(check(&cfg, Path::new("x.toml")).is_ok());
        cfg.copies.push(copy_flag("main=main").unwrap());
        let err = check(&cfg, Path::new("x.toml")).unwrap_err().to_string();
        assert!(
            err.contains("x.toml") && err.contains("`copy`") && err.contains("onto itself"),
            "{err}"
        );
    }

    #[test]
    fn declared_lines_pick_their_table() {
        let names = Names::builtin();
        let r = RoutesConfig {
            to: Some("B/200".into()),
            routes: vec![
                "10.0.0.0/8 dev veth1".into(),
                "10.1.0.0/16 dev veth1 table 300".into(),
            ],
            ..routes_flag("/dev/null")
        };
        let jobs = resolve(&[], &[r], &ns("A"), &names).unwrap();
        let tables: Vec<u32> = jobs.iter().map(|j| j.to.table).collect();
        assert_eq!(tables, vec![200, 300]);
        assert!(jobs.iter().all(|j| j.to.netns.as_deref() == Some("B")));
    }
}
