//! Batch lookups (`route-mirror lookup --batch`): addresses stream in one per line after
//! the request line, results stream back one line per input line, in chunks.
//!
//! Framing, so the results need no JSON wrapping per line: the daemon sends
//! `{"item":{"bytes":N}}` followed by N bytes of result lines, repeatedly, then the
//! usual final `{"ok":{...counts}}`. Each chunk is answered from the current FIB snapshot
//! when there is one ([`super::fastpath`]) and otherwise under the mirror's read lock,
//! which is released before the chunk is written: a slow reader never holds up the core.
//!
//! Malformed lines (not an address, not UTF-8, too long) get an error line of their own
//! and the stream goes on; blank lines are skipped.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{RwLock, RwLockReadGuard};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::fastpath::FastPath;
use crate::fib::fast::Lookup;
use crate::fib::Entry;
use crate::mirror::Mirror;
use crate::model::Family;
use crate::shared::Shared;
use crate::view::{format_route, route_view, HopView, RouteContext};

/// Longest input line accepted (an IPv6 address with a zone is under 64 bytes).
pub const MAX_LINE: usize = 1024;
/// Input bytes answered per chunk (about 15k addresses).
pub const CHUNK: usize = 256 * 1024;

/// Output format of batch results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BatchFormat {
    /// `ADDR ROUTE` with ROUTE as `ip route` prints it (multipath on one line).
    #[default]
    Text,
    /// One JSON object per line: `addr`, `prefix` and the route's fields.
    Json,
    /// `addr,prefix,table,type,gateway,dev,metric,error` (multipath hops joined by `|`).
    Csv,
}

/// Header of the CSV format.
pub const CSV_HEADER: &str = "addr,prefix,table,type,gateway,dev,metric,error";

/// Counts of one batch, the final reply.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchCounts {
    pub lines: u64,
    pub found: u64,
    pub no_route: u64,
    pub errors: u64,
    /// Chunks answered from a snapshot / under the lock.
    pub fast_chunks: u64,
    pub exact_chunks: u64,
}

impl BatchCounts {
    /// Adds the counts of a later chunk.
    pub fn add(&mut self, o: &BatchCounts) {
        self.lines += o.lines;
        self.found += o.found;
        self.no_route += o.no_route;
        self.errors += o.errors;
        self.fast_chunks += o.fast_chunks;
        self.exact_chunks += o.exact_chunks;
    }
}

/// What one batch looks up in.
#[derive(Debug, Clone)]
pub struct BatchQuery {
    /// `--table T`, or the tables of the default rules (used only while the rules
    /// reduce to them; see [`answer_lines`]).
    pub tables: Vec<u32>,
    pub tos: u8,
    pub format: BatchFormat,
    /// Through the policy rules (no `--table`).
    pub rules: bool,
    /// The multipath hash sysctls, read once per batch.
    pub hash: Option<crate::fib::multipath::HashConfig>,
}

/// Rendered parts of a route that do not depend on its prefix, per chunk: the
/// attribute pointer is only meaningful while the chunk's snapshot or lock is held.
/// FxHash: the keys are a few integers, and SipHash showed up in batch profiles.
type Cache = rustc_hash::FxHashMap<(bool, u32, usize, u32, u8, u32), (String, String)>;
// (from snapshot, table, attrs pointer, metric, tos, interned src/hop id)

/// Answers the complete lines in `input` (no partial last line) into `out`.
/// `line_no` is the number of lines before `input` and is advanced.
///
/// Three passes, so that the lookups run as one batch
/// ([`crate::fib::fast::FastFib::lookup_many`]):
/// parse every line, look up every address, then write one line per input line.
pub fn answer_lines(
    fast: &FastPath,
    shared: &Shared,
    q: &BatchQuery,
    input: &[u8],
    line_no: &mut u64,
    out: &mut Vec<u8>,
    counts: &mut BatchCounts,
) {
    let mut lines = Vec::new();
    let mut addrs = Vec::new();
    let mut flows = false;
    for raw in input.split(|&b| b == b'\n') {
        *line_no += 1;
        let parsed = parse_line(raw);
        match parsed {
            Parsed::Blank => continue,
            Parsed::Addr(a, _) => addrs.push(a),
            Parsed::Flow(..) => flows = true,
            Parsed::Bad(..) => {}
        }
        lines.push((*line_no, parsed));
    }
    let snap = fast.current();
    // Through the rules: while they reduce to a chain of tables (the default rules) and
    // lines carry only addresses, the table walk below answers as before; otherwise
    // each line walks the rules.
    let tables = match (&snap, q.rules) {
        (_, false) => Some(q.tables.clone()),
        (Some(sn), true) if !flows => chain_tables(sn),
        _ => None,
    };
    let Some(tables) = tables else {
        rule_lines(fast, shared, snap.as_deref(), q, lines, out, counts);
        return;
    };
    let mut answers = Vec::new();
    if let Some(sn) = &snap {
        sn.fib.lookup_many(&addrs, &tables, q.tos, &mut answers);
    } else {
        answers.resize(addrs.len(), Lookup::Exact);
    }
    let mut guard: Option<RwLockReadGuard<'_, Mirror>> = None;
    let mut cache = Cache::default();
    let mut s = String::with_capacity(input.len() * 3);
    let (mut used_fast, mut used_exact) = (false, false);
    let names = snap.as_deref().map(|sn| &sn.names);
    let mut answers = answers.into_iter();
    for (n, parsed) in lines {
        counts.lines += 1;
        let (text, answer) = match parsed {
            Parsed::Blank | Parsed::Flow(..) => continue,
            Parsed::Bad(raw, msg) => {
                counts.errors += 1;
                error_line(q.format, n, raw, msg, &mut s);
                continue;
            }
            Parsed::Addr(addr, text) => (text, (addr, answers.next().unwrap_or(Lookup::Exact))),
        };
        match answer {
            (_, Lookup::Route(t, net, e)) => {
                used_fast = true;
                found(
                    names.expect("a snapshot answered"),
                    true,
                    q,
                    text,
                    t,
                    net,
                    e,
                    &mut cache,
                    &mut s,
                );
                counts.found += 1;
            }
            (_, Lookup::None) => {
                used_fast = true;
                no_route(q.format, text, &mut s);
                counts.no_route += 1;
            }
            (addr, Lookup::Exact) => {
                used_exact = true;
                let Some(m) = read_mirror(&shared.mirror, &mut guard) else {
                    error_line(q.format, n, text.as_bytes(), "mirror unavailable", &mut s);
                    counts.errors += 1;
                    continue;
                };
                match m.lookup(addr, &tables, q.tos) {
                    Some((t, net, e)) => {
                        found(m, false, q, text, t, net, e, &mut cache, &mut s);
                        counts.found += 1;
                    }
                    None => {
                        no_route(q.format, text, &mut s);
                        counts.no_route += 1;
                    }
                }
            }
        }
    }
    drop(guard);
    counts.fast_chunks += u64::from(used_fast);
    counts.exact_chunks += u64::from(used_exact);
    if used_fast {
        fast.fast_lookups.fetch_add(1, Ordering::Relaxed);
    }
    if used_exact {
        fast.exact_lookups.fetch_add(1, Ordering::Relaxed);
    }
    out.extend_from_slice(s.as_bytes());
}

/// The tables the snapshot's rules reduce to for both families, if they do: the IPv4
/// chain when the IPv6 one is the same but for tables IPv6 does not have (the default
/// rules: IPv6 has no `32767 default` rule).
fn chain_tables(sn: &super::fastpath::Snapshot) -> Option<Vec<u32>> {
    let c4 = sn.rules.chain(Family::V4)?;
    let c6 = sn.rules.chain(Family::V6)?;
    if c4.last.is_some() || c6.last.is_some() {
        return None;
    }
    let t4: Vec<u32> = c4.tables.iter().map(|t| t.1).collect();
    let t6: Vec<u32> = c6.tables.iter().map(|t| t.1).collect();
    let t4_only_absent_in_v6 = t4
        .iter()
        .filter(|t| !t6.contains(t))
        .all(|t| !sn.fib.has_table(Family::V6, *t));
    let same_order = t4.iter().filter(|t| t6.contains(t)).eq(t6.iter());
    (same_order && t4_only_absent_in_v6).then_some(t4)
}

/// A flow line: `{"addr": ..., "from": ..., "iif": ..., ...}` (JSON), or
/// `ADDR,FROM,IIF,OIF,MARK,UID,IPPROTO,SPORT,DPORT,TOS` (CSV, trailing fields optional,
/// empty fields absent).
#[derive(Debug, Clone, Default, Deserialize)]
struct FlowLine {
    addr: String,
    #[serde(default, flatten)]
    args: super::lookup::FlowArgs,
    #[serde(default)]
    tos: Option<u8>,
}

/// CSV columns of a flow line, in order.
pub const FLOW_COLUMNS: &str = "addr,from,iif,oif,mark,uid,ipproto,sport,dport,tos";

fn parse_flow(text: &str) -> Result<FlowLine, String> {
    if text.starts_with('{') {
        // `ipproto` may be a name in JSON too.
        let mut v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if let Some(p) = v.get("ipproto").and_then(|p| p.as_str()) {
            v["ipproto"] = crate::fib::flow::parse_ipproto(p)?.into();
        }
        if let Some(m) = v.get("mark").and_then(|p| p.as_str()) {
            v["mark"] = crate::fib::flow::parse_mark(m)?.into();
        }
        if let Some(t) = v.get("tos").and_then(|p| p.as_str()) {
            v["tos"] = crate::fib::flow::parse_tos(t)?.into();
        }
        return serde_json::from_value(v).map_err(|e| e.to_string());
    }
    let f: Vec<&str> = text.split(',').map(str::trim).collect();
    if f.len() > 10 {
        return Err(format!("more than the 10 columns {FLOW_COLUMNS}"));
    }
    let get = |i: usize| f.get(i).copied().filter(|s| !s.is_empty());
    let num = |i: usize, what: &str| -> Result<Option<u32>, String> {
        get(i)
            .map(|s| s.parse::<u32>().map_err(|_| format!("bad {what} {s:?}")))
            .transpose()
    };
    let port = |i: usize, what: &str| -> Result<Option<u16>, String> {
        get(i)
            .map(|s| s.parse::<u16>().map_err(|_| format!("bad {what} {s:?}")))
            .transpose()
    };
    Ok(FlowLine {
        addr: f[0].to_string(),
        args: super::lookup::FlowArgs {
            from: get(1)
                .map(|s| s.parse().map_err(|_| format!("bad from {s:?}")))
                .transpose()?,
            iif: get(2).map(str::to_string),
            oif: get(3).map(str::to_string),
            vrf: None,
            mark: get(4).map(crate::fib::flow::parse_mark).transpose()?,
            uid: num(5, "uid")?,
            ipproto: get(6).map(crate::fib::flow::parse_ipproto).transpose()?,
            sport: port(7, "sport")?,
            dport: port(8, "dport")?,
        },
        tos: get(9).map(crate::fib::flow::parse_tos).transpose()?,
    })
}

/// Answers lines through the rule walk: from the snapshot where it can, else under the
/// mirror's read lock.
fn rule_lines(
    fast: &FastPath,
    shared: &Shared,
    snap: Option<&super::fastpath::Snapshot>,
    q: &BatchQuery,
    lines: Vec<(u64, Parsed<'_>)>,
    out: &mut Vec<u8>,
    counts: &mut BatchCounts,
) {
    use crate::fib::rules::{ExactTables, FastTables};
    let mut guard: Option<RwLockReadGuard<'_, Mirror>> = None;
    let mut scratch = crate::fib::rules::Scratch::default();
    let mut s = String::new();
    let (mut used_fast, mut used_exact) = (false, false);
    for (n, parsed) in lines {
        counts.lines += 1;
        let (text, fl) = match parsed {
            Parsed::Blank => continue,
            Parsed::Bad(raw, msg) => {
                counts.errors += 1;
                error_line(q.format, n, raw, msg, &mut s);
                continue;
            }
            Parsed::Addr(a, text) => (
                text,
                FlowLine {
                    addr: a.to_string(),
                    ..Default::default()
                },
            ),
            Parsed::Flow(text) => match parse_flow(text) {
                Ok(f) => (text, f),
                Err(e) => {
                    counts.errors += 1;
                    error_line(q.format, n, text.as_bytes(), &e, &mut s);
                    continue;
                }
            },
        };
        let Ok(addr) = fl.addr.parse::<IpAddr>() else {
            counts.errors += 1;
            error_line(q.format, n, text.as_bytes(), "not an IP address", &mut s);
            continue;
        };
        let tos = fl.tos.unwrap_or(q.tos);
        // From the snapshot: its rules, links and tables, unless a table needs the exact
        // FIB or the flow names a device the snapshot does not know.
        let mut answer = None;
        if let Some(sn) = snap {
            if let Ok(f) = snapshot_flow(sn, addr, tos, &fl.args) {
                if let Some(v) = super::lookup::bad_source(&f, |a| sn.local.contains(&a)) {
                    answer = Some((f, Ok(v)));
                } else {
                    let kf = f.kernel(&sn.links, sn.rules.dissects(f.family()));
                    let t = FastTables::new(&sn.fib);
                    let o = sn.rules.decide_with(&kf, &t, &sn.links, &mut scratch);
                    if !t.fell_back() {
                        used_fast = true;
                        answer = Some((
                            f,
                            super::lookup::outcome_value(&sn.names, o, &f, q.hash.as_ref()),
                        ));
                    }
                }
            }
        }
        let (_, v) = match answer {
            Some(a) => a,
            None => {
                used_exact = true;
                let Some(m) = read_mirror(&shared.mirror, &mut guard) else {
                    error_line(q.format, n, text.as_bytes(), "mirror unavailable", &mut s);
                    counts.errors += 1;
                    continue;
                };
                match super::lookup::flow(m, addr, tos, &fl.args) {
                    Ok(f) => {
                        let set = m.rules.set();
                        let kf = f.kernel(&m.rules.links, set.dissects(f.family()));
                        let v = match super::lookup::bad_source(&f, |a| {
                            m.addrs.keys().any(|x| x.addr == a)
                        }) {
                            Some(v) => Ok(v),
                            None => {
                                let hops = |a: &crate::model::RouteAttrs| m.effective_hops(a);
                                let usable = |fam, e: &crate::fib::Entry| m.usable(fam, &e.attrs);
                                let o = set.decide_with(
                                    &kf,
                                    &ExactTables::new(&m.fib, &hops).with_usable(&usable),
                                    &m.rules.links,
                                    &mut scratch,
                                );
                                super::lookup::outcome_value(m, o, &f, q.hash.as_ref())
                            }
                        };
                        (f, v)
                    }
                    Err(e) => {
                        counts.errors += 1;
                        error_line(q.format, n, text.as_bytes(), &e, &mut s);
                        continue;
                    }
                }
            }
        };
        match v {
            Err(e) => {
                counts.errors += 1;
                error_line(q.format, n, text.as_bytes(), &e, &mut s);
            }
            Ok(v) => {
                if v.get("prefix").is_some() {
                    counts.found += 1;
                } else {
                    counts.no_route += 1;
                }
                rule_line(q.format, &fl.addr, addr, &v, &mut s);
            }
        }
    }
    drop(guard);
    counts.fast_chunks += u64::from(used_fast);
    counts.exact_chunks += u64::from(used_exact);
    if used_fast {
        fast.fast_lookups.fetch_add(1, Ordering::Relaxed);
    }
    if used_exact {
        fast.exact_lookups.fetch_add(1, Ordering::Relaxed);
    }
    out.extend_from_slice(s.as_bytes());
}

/// The flow of a line with the snapshot's links (`Err`: a device it does not know).
fn snapshot_flow(
    sn: &super::fastpath::Snapshot,
    addr: IpAddr,
    tos: u8,
    a: &super::lookup::FlowArgs,
) -> Result<crate::fib::flow::Flow, ()> {
    let dev = |n: &Option<String>| -> Result<Option<u32>, ()> {
        n.as_deref()
            .map(|n| sn.links.ifindex(n).ok_or(()))
            .transpose()
    };
    let mut oif = dev(&a.oif)?;
    if let Some(v) = &a.vrf {
        oif = Some(sn.links.vrf_by_name(v).ok_or(())?.0);
    }
    Ok(crate::fib::flow::Flow {
        dst: addr,
        src: a.from,
        iif: dev(&a.iif)?,
        oif,
        mark: a.mark.unwrap_or(0),
        uid: a.uid,
        ipproto: a.ipproto.unwrap_or(0),
        sport: a.sport.unwrap_or(0),
        dport: a.dport.unwrap_or(0),
        tos,
    })
}

/// One result line of the rule walk in the batch's format.
fn rule_line(
    format: BatchFormat,
    addr_text: &str,
    addr: IpAddr,
    v: &serde_json::Value,
    s: &mut String,
) {
    match format {
        BatchFormat::Json => {
            let mut o = if v.is_null() {
                serde_json::json!({ "prefix": null })
            } else {
                v.clone()
            };
            o["addr"] = addr_text.into();
            let _ = writeln!(s, "{o}");
        }
        BatchFormat::Text => {
            let t = super::lookup::format_answer(addr, v).unwrap_or_default();
            let one = t
                .replace(" \n\t", " ")
                .replace("\n    ", " ")
                .replace('\n', " ");
            if v.get("prefix").is_some() {
                let _ = writeln!(s, "{addr_text} {one}");
            } else {
                let _ = writeln!(s, "{one}");
            }
        }
        BatchFormat::Csv => {
            if v.is_null() {
                let _ = writeln!(s, "{addr_text},,,,,,,no route");
                return;
            }
            let r: Result<crate::view::RouteView, _> = serde_json::from_value(v.clone());
            let rule = v
                .get("rule")
                .map(|r| format!("rule {r}"))
                .unwrap_or_default();
            let err = v.get("error").and_then(|e| e.as_str()).unwrap_or_default();
            match r {
                Ok(view) => {
                    let join = |f: &dyn Fn(&HopView) -> String| {
                        view.nexthops.iter().map(f).collect::<Vec<_>>().join("|")
                    };
                    let gw = join(&|h| h.gateway.map(|g| g.to_string()).unwrap_or_default());
                    let dev = join(&|h| h.dev.clone().unwrap_or_default());
                    let _ = writeln!(
                        s,
                        "{addr_text},{},{},{},{gw},{},{},{}",
                        view.prefix,
                        view.table,
                        view.kind,
                        csv_field(&dev),
                        view.metric,
                        csv_field([rule, err.to_string()].join(" ").trim())
                    );
                }
                Err(_) => {
                    let kind = v.get("result").and_then(|r| r.as_str()).unwrap_or("error");
                    let _ = writeln!(
                        s,
                        "{addr_text},,,{kind},,,,{}",
                        csv_field(&format!("{rule}: {err}"))
                    );
                }
            }
        }
    }
}

/// One input line, parsed.
#[derive(Clone, Copy)]
enum Parsed<'a> {
    /// Skipped (no output line).
    Blank,
    /// The address and its text as given (it parsed, so it needs no escaping).
    Addr(IpAddr, &'a str),
    /// A line with flow fields (JSON object or CSV columns), parsed later.
    Flow(&'a str),
    /// What to show of the line and why it is not an address.
    Bad(&'a [u8], &'static str),
}

fn parse_line(raw: &[u8]) -> Parsed<'_> {
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    if let Some(a) = parse_v4(raw) {
        // SAFETY: parse_v4 accepted only ASCII digits and dots, which are valid UTF-8
        // (and the checked conversion showed up in profiles at 6% of a batch).
        return Parsed::Addr(IpAddr::V4(a), unsafe { std::str::from_utf8_unchecked(raw) });
    }
    let Ok(text) = std::str::from_utf8(raw) else {
        return Parsed::Bad(raw, "not UTF-8");
    };
    let text = text.trim();
    if text.is_empty() {
        return Parsed::Blank;
    }
    if raw.len() > MAX_LINE {
        return Parsed::Bad(&raw[..64], "line too long");
    }
    if text.starts_with('{') || text.contains(',') {
        // A CSV header line (`addr,from,...`) is not a lookup.
        if text.starts_with("addr,") {
            return Parsed::Blank;
        }
        return Parsed::Flow(text);
    }
    match text.parse::<IpAddr>() {
        Ok(a) => Parsed::Addr(a, text),
        Err(_) => Parsed::Bad(raw, "not an IP address"),
    }
}

/// Dotted-quad IPv4 without the general parser (a tenth of a batch's time went there):
/// accepts a subset of what `Ipv4Addr::from_str` accepts (no leading zeros, no
/// surrounding space), so whatever it rejects goes through the full parser.
fn parse_v4(b: &[u8]) -> Option<std::net::Ipv4Addr> {
    if b.len() > 15 {
        return None;
    }
    let mut octets = [0u8; 4];
    let mut parts = b.split(|&c| c == b'.');
    for o in &mut octets {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 3 || (p.len() > 1 && p[0] == b'0') {
            return None;
        }
        let mut v = 0u16;
        for &c in p {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + u16::from(c - b'0');
        }
        *o = u8::try_from(v).ok()?;
    }
    parts.next().is_none().then_some(octets.into())
}

/// The error line for input line `line_no`.
pub fn error_line(format: BatchFormat, line_no: u64, raw: &[u8], msg: &str, s: &mut String) {
    let input = String::from_utf8_lossy(raw);
    let input = input.trim();
    match format {
        BatchFormat::Text => {
            let _ = writeln!(s, "line {line_no}: {input:?}: {msg}");
        }
        BatchFormat::Json => {
            let _ = writeln!(
                s,
                "{{\"line\":{line_no},\"input\":{},\"error\":{}}}",
                serde_json::Value::from(input),
                serde_json::Value::from(msg)
            );
        }
        BatchFormat::Csv => {
            let _ = writeln!(
                s,
                "\"{}\",,,,,,,line {line_no}: {msg}",
                input.replace('"', "\"\"")
            );
        }
    }
}

/// A CSV field, quoted when it needs to be (RFC 4180): interface and table names may
/// contain commas or quotes.
fn csv_field(v: &str) -> std::borrow::Cow<'_, str> {
    if v.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", v.replace('"', "\"\"")).into()
    } else {
        v.into()
    }
}

fn no_route(format: BatchFormat, addr: &str, s: &mut String) {
    let _ = match format {
        BatchFormat::Text => writeln!(s, "{addr} no route"),
        BatchFormat::Json => writeln!(s, "{{\"addr\":\"{addr}\",\"prefix\":null}}"),
        BatchFormat::Csv => writeln!(s, "{addr},,,,,,,no route"),
    };
}

/// `ip route` style text of a prefix.
fn prefix_text(net: IpNet, s: &mut String) {
    match net {
        _ if net.prefix_len() == 0 => s.push_str("default"),
        IpNet::V4(n) if n.prefix_len() == 32 => v4_text(n.addr(), s),
        IpNet::V4(n) => cidr_text(n, s),
        IpNet::V6(n) if n.prefix_len() == 128 => {
            let _ = write!(s, "{}", n.addr());
        }
        IpNet::V6(n) => {
            let _ = write!(s, "{n}");
        }
    }
}

/// `a.b.c.d/len` without the formatting machinery: a third of a batch's time went to
/// `Display` (BENCHMARKS.md).
fn cidr_text(n: ipnet::Ipv4Net, s: &mut String) {
    v4_text(n.addr(), s);
    s.push('/');
    dec(n.prefix_len(), s);
}

fn v4_text(a: std::net::Ipv4Addr, s: &mut String) {
    let [x, y, z, w] = a.octets();
    dec(x, s);
    s.push('.');
    dec(y, s);
    s.push('.');
    dec(z, s);
    s.push('.');
    dec(w, s);
}

fn dec(v: u8, s: &mut String) {
    if v >= 100 {
        s.push(char::from(b'0' + v / 100));
    }
    if v >= 10 {
        s.push(char::from(b'0' + v / 10 % 10));
    }
    s.push(char::from(b'0' + v % 10));
}

#[allow(clippy::too_many_arguments)]
fn found<C: RouteContext + ?Sized>(
    ctx: &C,
    from_snapshot: bool,
    q: &BatchQuery,
    addr: &str,
    table: u32,
    net: IpNet,
    e: &Entry,
    cache: &mut Cache,
    s: &mut String,
) {
    let key = (
        from_snapshot,
        table,
        std::sync::Arc::as_ptr(&e.attrs) as usize,
        e.priority(),
        e.tos(),
        // The rare sub-key part (source prefix) shows in the output too.
        e.ext_raw(),
    );
    let (head, tail) = cache.entry(key).or_insert_with(|| {
        let placeholder = Family::of_net(&net).default_net();
        let view = route_view(ctx, table, placeholder, e);
        match q.format {
            BatchFormat::Text => {
                let text = format_route(&view, true).replace(" \n\t", " ");
                match text.split_once("default") {
                    Some((h, t)) => (h.to_string(), t.to_string()),
                    None => (String::new(), text),
                }
            }
            BatchFormat::Json => {
                let mut v = serde_json::to_value(&view).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.remove("prefix");
                }
                let text = v.to_string();
                let rest = text.strip_prefix('{').unwrap_or("}").to_string();
                (String::new(), rest)
            }
            BatchFormat::Csv => {
                let join = |f: &dyn Fn(&HopView) -> String| {
                    view.nexthops.iter().map(f).collect::<Vec<_>>().join("|")
                };
                let gw = join(&|h| h.gateway.map(|g| g.to_string()).unwrap_or_default());
                let dev = join(&|h| h.dev.clone().unwrap_or_default());
                let tail = format!(
                    ",{},{},{gw},{},{},",
                    csv_field(&view.table.to_string()),
                    view.kind,
                    csv_field(&dev),
                    view.metric
                );
                (String::new(), tail)
            }
        }
    });
    match q.format {
        BatchFormat::Text => {
            s.push_str(addr);
            s.push(' ');
            s.push_str(head);
            prefix_text(net, s);
            s.push_str(tail);
        }
        BatchFormat::Json => {
            let sep = if tail.starts_with('}') { "" } else { "," };
            s.push_str("{\"addr\":\"");
            s.push_str(addr);
            s.push_str("\",\"prefix\":\"");
            match net {
                IpNet::V4(n) => cidr_text(n, s),
                IpNet::V6(n) => {
                    let _ = write!(s, "{n}");
                }
            }
            s.push('"');
            s.push_str(sep);
            s.push_str(tail);
        }
        BatchFormat::Csv => {
            s.push_str(addr);
            s.push(',');
            match net {
                IpNet::V4(n) => cidr_text(n, s),
                IpNet::V6(n) => {
                    let _ = write!(s, "{n}");
                }
            }
            s.push_str(tail);
        }
    }
    s.push('\n');
}

/// The mirror's read guard, taken on the first line that needs the exact mirror and held
/// for the rest of the batch; `None` when a writer panicked mid-change (nothing
/// trustworthy to answer from).
fn read_mirror<'g, 'm>(
    mirror: &'m RwLock<Mirror>,
    guard: &'g mut Option<RwLockReadGuard<'m, Mirror>>,
) -> Option<&'g Mirror> {
    if guard.is_none() {
        *guard = Some(mirror.read().ok()?);
    }
    guard.as_deref()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{rtn, Change, Link, NextHop, Route, RouteAttrs, RouteKey, SubKey};
    use std::sync::Arc;

    fn route(table: u32, dst: &str, kind: u8, gw: Option<&str>, metric: u32) -> Change {
        Change::NewRoute {
            route: Route {
                key: RouteKey {
                    table,
                    dst: dst.parse().unwrap(),
                    sub: SubKey::metric(metric),
                },
                attrs: Arc::new(RouteAttrs {
                    protocol: 4,
                    kind,
                    nexthops: gw
                        .map(|g| NextHop::new(Some(g.parse().unwrap()), 7))
                        .into_iter()
                        .collect(),
                    ..Default::default()
                }),
            },
            flags: 0,
        }
    }

    /// A mirror with a link named like a CSV trap, a main-table /8, a more specific /24
    /// blackhole, an IPv6 /32 and a table-100 route.
    fn shared() -> Shared {
        let mut m = Mirror::new();
        m.apply(Change::NewLink(Link {
            ifindex: 7,
            name: "up,link".into(),
            // Up with carrier: its routes are not `linkdown`.
            flags: (libc::IFF_UP | libc::IFF_RUNNING | libc::IFF_LOWER_UP) as u32,
            mtu: 1500,
            ..Default::default()
        }));
        m.apply(route(
            254,
            "10.0.0.0/8",
            rtn::UNICAST,
            Some("198.18.1.2"),
            0,
        ));
        m.apply(route(254, "10.9.9.0/24", rtn::BLACKHOLE, None, 5));
        m.apply(route(
            254,
            "2001:db8::/32",
            rtn::UNICAST,
            Some("2001:2:0:1::2"),
            1024,
        ));
        m.apply(route(
            100,
            "192.0.2.0/24",
            rtn::UNICAST,
            Some("198.18.1.2"),
            0,
        ));
        Shared::detached(m).unwrap()
    }

    const INPUT: &[u8] =
        b"10.1.2.3\n\nnot-an-address\n\xff\xfe\n  10.9.9.9\r\n192.0.2.1\n2001:db8::1\n";

    fn run(
        sh: &Shared,
        fast: &FastPath,
        format: BatchFormat,
        chunks: &[&[u8]],
    ) -> (String, BatchCounts) {
        let q = BatchQuery {
            tables: crate::fib::DEFAULT_RULE_TABLES.to_vec(),
            tos: 0,
            format,
            rules: false,
            hash: None,
        };
        let (mut out, mut counts, mut line_no) = (Vec::new(), BatchCounts::default(), 0);
        for c in chunks {
            answer_lines(fast, sh, &q, c, &mut line_no, &mut out, &mut counts);
        }
        (String::from_utf8(out).unwrap(), counts)
    }

    fn expect_counts(c: BatchCounts) {
        // Blank lines are skipped; everything else is one line of output.
        assert_eq!(
            (c.lines, c.found, c.no_route, c.errors),
            (6, 3, 1, 2),
            "{c:?}"
        );
    }

    /// Bad lines get an error line naming their line number and the stream goes on,
    /// in every format, from the exact trie and from a snapshot alike.
    #[test]
    fn malformed_lines_are_reported_per_line_and_the_stream_goes_on() {
        let sh = shared();
        let fast = FastPath::default();
        for snapshot in [false, true] {
            if snapshot {
                assert!(fast.rebuild(&sh));
            }
            let (text, c) = run(&sh, &fast, BatchFormat::Text, &[INPUT]);
            expect_counts(c);
            assert_eq!(
                (c.fast_chunks, c.exact_chunks),
                (u64::from(snapshot), u64::from(!snapshot))
            );
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines.len(), 6, "{text}");
            assert_eq!(
                lines[0],
                "10.1.2.3 10.0.0.0/8 via 198.18.1.2 dev up,link proto static"
            );
            assert_eq!(lines[1], "line 3: \"not-an-address\": not an IP address");
            assert_eq!(lines[2], "line 4: \"\u{fffd}\u{fffd}\": not UTF-8");
            assert_eq!(
                lines[3],
                "10.9.9.9 blackhole 10.9.9.0/24 proto static metric 5"
            );
            // Table 100 is not consulted by the default rules.
            assert_eq!(lines[4], "192.0.2.1 no route");
            assert!(
                lines[5].starts_with("2001:db8::1 2001:db8::/32 via 2001:2:0:1::2 dev up,link"),
                "{}",
                lines[5]
            );

            let (json, c) = run(&sh, &fast, BatchFormat::Json, &[INPUT]);
            expect_counts(c);
            let v: Vec<serde_json::Value> = json
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            assert_eq!(v[0]["prefix"], "10.0.0.0/8");
            assert_eq!(v[0]["addr"], "10.1.2.3");
            assert_eq!(v[1]["line"], 3);
            assert_eq!(v[1]["error"], "not an IP address");
            assert_eq!(v[2]["line"], 4);
            assert_eq!(v[3]["type"], "blackhole");
            assert!(v[4]["prefix"].is_null());
            assert_eq!(v[5]["prefix"], "2001:db8::/32");

            let (csv, c) = run(&sh, &fast, BatchFormat::Csv, &[INPUT]);
            expect_counts(c);
            let lines: Vec<&str> = csv.lines().collect();
            assert_eq!(
                lines[0],
                "10.1.2.3,10.0.0.0/8,254,unicast,198.18.1.2,\"up,link\",0,"
            );
            assert_eq!(
                lines[1],
                "\"not-an-address\",,,,,,,line 3: not an IP address"
            );
            assert_eq!(lines[3], "10.9.9.9,10.9.9.0/24,254,blackhole,,,5,");
        }
    }

    proptest::proptest! {
        /// The IPv4 fast path accepts only what the standard parser accepts, with the
        /// same result, and accepts every canonical dotted quad.
        #[test]
        fn fast_ipv4_parse_agrees_with_std(
            junk in "[0-9.]{0,18}",
            a in proptest::prelude::any::<u32>(),
        ) {
            if let Some(v) = parse_v4(junk.as_bytes()) {
                proptest::prop_assert_eq!(Ok(v), junk.parse::<std::net::Ipv4Addr>());
            }
            let canonical = std::net::Ipv4Addr::from(a);
            proptest::prop_assert_eq!(parse_v4(canonical.to_string().as_bytes()), Some(canonical));
        }
    }

    /// Chunk boundaries change nothing: line numbers carry over, and an overlong line
    /// is one error.
    #[test]
    fn line_numbers_carry_across_chunks_and_long_lines_are_errors() {
        let sh = shared();
        let fast = FastPath::default();
        let long = vec![b'1'; MAX_LINE + 1];
        let (text, c) = run(
            &sh,
            &fast,
            BatchFormat::Text,
            &[b"10.0.0.1\nx", b"10.0.0.2", &long],
        );
        assert_eq!((c.lines, c.found, c.errors), (4, 2, 2), "{c:?}");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1], "line 2: \"x\": not an IP address");
        assert!(lines[2].starts_with("10.0.0.2 10.0.0.0/8"));
        assert!(
            lines[3].starts_with("line 4: ") && lines[3].ends_with("line too long"),
            "{}",
            lines[3]
        );
    }
}
