//! What a running forwarder's route tries hold (read with bpftool), next to what the kernel
//! holds (`ip -j route show table all`), as sets of (table, prefix) to compare.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, Ipv6Addr},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::sh;

/// Reads (mirrored, kernel) every 200 ms until they are equal, `timeout` at most; returns the
/// last reading.
pub fn in_step<T: PartialEq>(
    timeout: std::time::Duration,
    mut read: impl FnMut() -> (T, T),
) -> (T, T) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let (mirrored, kernel) = read();
        if mirrored == kernel || std::time::Instant::now() > deadline {
            return (mirrored, kernel);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// A route entry: its table and its prefix as text (`198.19.70.0/24`, `2001:2:60::/64`).
pub type Entry = (u32, String);

fn json(args: &[&str]) -> anyhow::Result<Value> {
    let out = sh(args)?;
    serde_json::from_str(&out).with_context(|| format!("parsing the output of {args:?}"))
}

/// The id of the XDP program attached to `dev` in `ns`.
fn xdp_prog(ns: &str, dev: &str) -> anyhow::Result<u64> {
    let links = json(&["ip", "-n", ns, "-j", "link", "show", "dev", dev])?;
    links[0]["xdp"]["prog"]["id"]
        .as_u64()
        .or_else(|| links[0]["xdp"]["progs"][0]["id"].as_u64())
        .with_context(|| format!("no XDP program on {dev}: {links}"))
}

/// The id of the map called `name` that the program `prog` uses.
fn map_of(prog: u64, name: &str) -> anyhow::Result<u64> {
    let info = json(&["bpftool", "-j", "prog", "show", "id", &prog.to_string()])?;
    for id in info["map_ids"].as_array().context("map_ids")? {
        let id = id.as_u64().context("a map id")?;
        let map = json(&["bpftool", "-j", "map", "show", "id", &id.to_string()])?;
        if map["name"].as_str() == Some(name) {
            return Ok(id);
        }
    }
    bail!("program {prog} has no map {name}")
}

/// The bytes of one `"0x.."` array of a bpftool dump.
fn bytes(v: &Value) -> anyhow::Result<Vec<u8>> {
    v.as_array()
        .context("hex bytes")?
        .iter()
        .map(|b| {
            let s = b.as_str().context("a hex byte")?;
            u8::from_str_radix(s.trim_start_matches("0x"), 16).context("a hex byte")
        })
        .collect()
}

/// One route trie key (prefix length in host order, table big-endian, address) as an entry.
fn key_entry(key: &[u8]) -> anyhow::Result<Entry> {
    let bits = u32::from_le_bytes(key[0..4].try_into()?);
    let table = u32::from_be_bytes(key[4..8].try_into()?);
    let len = bits.checked_sub(32).context("a key shorter than its table")?;
    let addr = &key[8..];
    let prefix = match addr.len() {
        4 => format!("{}/{len}", Ipv4Addr::from(<[u8; 4]>::try_from(addr)?)),
        16 => format!("{}/{len}", Ipv6Addr::from(<[u8; 16]>::try_from(addr)?)),
        n => bail!("a key address of {n} bytes"),
    };
    Ok((table, prefix))
}

/// Every (table, prefix) in the route tries of the forwarder attached to `dev` in `ns`.
pub fn mirrored_routes(ns: &str, dev: &str) -> anyhow::Result<BTreeSet<Entry>> {
    let prog = xdp_prog(ns, dev)?;
    let mut out = BTreeSet::new();
    for name in ["ROUTES_V4", "ROUTES_V6"] {
        let map = map_of(prog, name)?;
        let dump = json(&["bpftool", "-j", "map", "dump", "id", &map.to_string()])?;
        for e in dump.as_array().context("a dump")? {
            out.insert(key_entry(&bytes(&e["key"])?)?);
        }
    }
    Ok(out)
}

/// The (table, prefix) of one route of `ip -j route` (`family` "-4" or "-6", `host` the
/// host prefix length it leaves out).
fn route_entry(r: &Value, family: &str, host: &str) -> anyhow::Result<Entry> {
    let table = match r["table"].as_str() {
        None | Some("main") => 254,
        Some("local") => 255,
        Some("default") => 253,
        Some(t) => t.parse().with_context(|| format!("table {t}"))?,
    };
    let prefix = match r["dst"].as_str().context("dst")? {
        "default" if family == "-4" => "0.0.0.0/0".to_string(),
        "default" => "::/0".to_string(),
        d if d.contains('/') => d.to_string(),
        d => format!("{d}{host}"),
    };
    Ok((table, prefix))
}

/// Every route of the kernel in `ns`, both families, every table.
pub fn kernel_routes(ns: &str) -> anyhow::Result<BTreeSet<Entry>> {
    let mut out = BTreeSet::new();
    for (family, host) in [("-4", "/32"), ("-6", "/128")] {
        let routes = json(&["ip", "-n", ns, family, "-j", "route", "show", "table", "all"])?;
        for r in routes.as_array().context("routes")? {
            out.insert(route_entry(r, family, host)?);
        }
    }
    Ok(out)
}

/// The value of entry `index` of the array map `map`.
fn array_value(map: u64, index: u32) -> anyhow::Result<Vec<u8>> {
    let key: Vec<String> = index.to_le_bytes().iter().map(|b| b.to_string()).collect();
    let mut args = vec!["bpftool", "-j", "map", "lookup", "id"];
    let id = map.to_string();
    args.push(&id);
    args.push("key");
    args.extend(key.iter().map(String::as_str));
    bytes(&json(&args)?["value"])
}

/// The bucket tables of the resilient groups that the forwarder attached to `dev` in `ns`
/// publishes for its routes: for each, the interface (ifindex) of every bucket's path.
pub fn mirrored_buckets(ns: &str, dev: &str) -> anyhow::Result<Vec<Vec<u32>>> {
    let prog = xdp_prog(ns, dev)?;
    let (slots, groups, buckets) =
        (map_of(prog, "NH_SLOTS")?, map_of(prog, "NH_GROUPS")?, map_of(prog, "NH_BUCKETS")?);
    let dump = json(&["bpftool", "-j", "map", "dump", "id", &slots.to_string()])?;
    let mut published = BTreeSet::new();
    for e in dump.as_array().context("a dump")? {
        let index = u32::from_le_bytes(bytes(&e["value"])?[..4].try_into()?);
        if index != 0 {
            published.insert(index);
        }
    }
    let word = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    let mut out = Vec::new();
    for index in published {
        // NhGroup: count, buckets, bucket_base, pad, then paths of 28 bytes (oif at 4).
        let group = array_value(groups, index)?;
        let (count, n, base) = (word(&group, 0), word(&group, 4), word(&group, 8));
        if n == 0 {
            continue;
        }
        let mut table = Vec::new();
        for b in 0..n {
            let path = u32::from(array_value(buckets, base + b)?[0]);
            anyhow::ensure!(path < count, "bucket {b} names path {path} of {count}");
            table.push(word(&group, 16 + 28 * path as usize + 4));
        }
        out.push(table);
    }
    Ok(out)
}

/// The nexthop of every bucket of the kernel's resilient group `id` in `ns`.
pub fn kernel_buckets(ns: &str, id: u32) -> anyhow::Result<Vec<u32>> {
    let dump = json(&["ip", "-n", ns, "-j", "nexthop", "bucket", "show", "id", &id.to_string()])?;
    let mut out = Vec::new();
    for b in dump.as_array().context("buckets")? {
        let index = b["bucket"]["index"].as_u64().context("a bucket index")? as usize;
        let nh = b["bucket"]["nhid"].as_u64().context("a bucket's nexthop")? as u32;
        out.resize(out.len().max(index + 1), 0);
        out[index] = nh;
    }
    Ok(out)
}

/// A path as (ifindex, gateway as text, empty when on-link).
pub type PathOf = (u32, String);

/// A gateway's text from 16 bytes: IPv4 in the first four unless `v6`.
fn gateway_text(bytes: &[u8], v6: bool) -> String {
    if bytes.iter().all(|b| *b == 0) {
        String::new()
    } else if v6 {
        Ipv6Addr::from(<[u8; 16]>::try_from(&bytes[..16]).unwrap()).to_string()
    } else {
        Ipv4Addr::from(<[u8; 4]>::try_from(&bytes[..4]).unwrap()).to_string()
    }
}

/// Every array entry of the map `map`, by index.
fn array_dump(map: u64) -> anyhow::Result<Vec<Vec<u8>>> {
    let dump = json(&["bpftool", "-j", "map", "dump", "id", &map.to_string()])?;
    let mut out = Vec::new();
    for e in dump.as_array().context("a dump")? {
        let index = u32::from_le_bytes(bytes(&e["key"])?[..4].try_into()?) as usize;
        out.resize(out.len().max(index + 1), Vec::new());
        out[index] = bytes(&e["value"])?;
    }
    Ok(out)
}

/// The paths each route of the forwarder's tries sends frames by (sorted), or none where the
/// kernel decides; keyed like [`mirrored_routes`].
pub fn mirrored_paths(
    ns: &str,
    dev: &str,
) -> anyhow::Result<std::collections::BTreeMap<Entry, Vec<PathOf>>> {
    let prog = xdp_prog(ns, dev)?;
    let slots = array_dump(map_of(prog, "NH_SLOTS")?)?;
    let groups = array_dump(map_of(prog, "NH_GROUPS")?)?;
    let word = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    let mut out = std::collections::BTreeMap::new();
    for name in ["ROUTES_V4", "ROUTES_V6"] {
        let map = map_of(prog, name)?;
        let dump = json(&["bpftool", "-j", "map", "dump", "id", &map.to_string()])?;
        for e in dump.as_array().context("a dump")? {
            let entry = key_entry(&bytes(&e["key"])?)?;
            let v6 = entry.1.contains(':');
            // Route: kind, oif, gateway[16], mac, vlan, mtu, nh, prefix_len, hop.
            let r = bytes(&e["value"])?;
            let mut paths = match word(&r, 0) {
                1 | 3 => vec![(word(&r, 4), gateway_text(&r[8..24], v6 || word(&r, 44) & 1 != 0))],
                5 => {
                    let index = slots.get(word(&r, 36) as usize).map_or(0, |s| word(s, 0));
                    let g = groups.get(index as usize).filter(|_| index != 0);
                    g.map_or_else(Vec::new, |g| {
                        (0..word(g, 0) as usize)
                            .map(|i| {
                                let p = &g[16 + 28 * i..16 + 28 * (i + 1)];
                                (word(p, 4), gateway_text(&p[8..24], v6 || word(p, 24) & 1 != 0))
                            })
                            .collect()
                    })
                }
                _ => Vec::new(),
            };
            paths.sort();
            out.insert(entry, paths);
        }
    }
    Ok(out)
}

/// The paths each unicast route of the kernel in `ns` sends frames by (sorted): its gateway
/// and device, its `RTA_MULTIPATH` next hops, or its nexthop object's (a group's members).
pub fn kernel_paths(ns: &str) -> anyhow::Result<std::collections::BTreeMap<Entry, Vec<PathOf>>> {
    let links = json(&["ip", "-n", ns, "-j", "link", "show"])?;
    let ifindex = |name: &str| {
        links
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["ifname"] == name)
            .and_then(|l| l["ifindex"].as_u64().map(|i| i as u32))
    };
    let path = |h: &Value| -> Option<PathOf> {
        Some((ifindex(h["dev"].as_str()?)?, h["gateway"].as_str().unwrap_or("").to_string()))
    };
    let nexthops = json(&["ip", "-n", ns, "-j", "nexthop", "show"])?;
    let by_id: std::collections::BTreeMap<u64, &Value> = nexthops
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| Some((n["id"].as_u64()?, n)))
        .collect();
    let object = |id: u64| -> Vec<PathOf> {
        let Some(n) = by_id.get(&id) else { return Vec::new() };
        match n["group"].as_array() {
            Some(members) => members
                .iter()
                .filter_map(|m| by_id.get(&m["id"].as_u64()?).and_then(|m| path(m)))
                .collect(),
            None => path(n).into_iter().collect(),
        }
    };
    let mut out = std::collections::BTreeMap::new();
    for (family, host) in [("-4", "/32"), ("-6", "/128")] {
        let routes = json(&["ip", "-n", ns, family, "-j", "route", "show", "table", "all"])?;
        for r in routes.as_array().context("routes")? {
            if r["type"].as_str().is_some_and(|t| t != "unicast") {
                continue;
            }
            let (table, prefix) = route_entry(r, family, host)?;
            let mut paths: Vec<PathOf> = if let Some(id) = r["nhid"].as_u64() {
                object(id)
            } else if let Some(hops) = r["nexthops"].as_array() {
                hops.iter().filter_map(path).collect()
            } else {
                path(r).into_iter().collect()
            };
            paths.sort();
            out.insert((table, prefix), paths);
        }
    }
    Ok(out)
}

/// A policy rule as the comparison sees it: action, table, source and destination prefixes
/// ("all" for none), and whether it has other selectors.
pub type RuleOf = (String, u32, String, String, bool);

fn prefix_text(addr: &[u8], mask: &[u8]) -> String {
    let len: u32 = mask.iter().map(|b| b.count_ones()).sum();
    if len == 0 {
        return "all".into();
    }
    match addr.len() {
        4 => format!("{}/{len}", Ipv4Addr::from(<[u8; 4]>::try_from(addr).unwrap())),
        _ => format!("{}/{len}", Ipv6Addr::from(<[u8; 16]>::try_from(addr).unwrap())),
    }
}

/// The policy rules the forwarder's XDP program walks, per family (false: IPv4).
pub fn mirrored_rules(
    ns: &str,
    dev: &str,
) -> anyhow::Result<std::collections::BTreeMap<bool, Vec<RuleOf>>> {
    let prog = xdp_prog(ns, dev)?;
    let ctl = array_dump(map_of(prog, "FIB_CTL")?)?;
    let rules = array_dump(map_of(prog, "FIB_RULES")?)?;
    let word = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    let mut out = std::collections::BTreeMap::new();
    for v6 in [false, true] {
        let fib = xdpfwd_common::FibWord::decode(word(&ctl[v6 as usize], 0));
        let n = if v6 { 16 } else { 4 };
        let mut list = Vec::new();
        for i in 0..fib.rules {
            let r = &rules[xdpfwd_common::fib_rule_index(fib.set, v6, i) as usize];
            // FibRule: Rule (fields, action, ..., src @24, src_mask @40, dst @56, dst_mask
            // @72), table @88, flags @100, ds_mask @105, port masks @106.
            let (fields, action, table, flags) =
                (word(r, 0), word(r, 4), word(r, 88), word(r, 100));
            let other =
                fields & !(4 | 8) != 0 || flags != 0 || r[105] != 0 || r[106..110] != [0; 4];
            let action = match action {
                0 => "lookup",
                1 => "goto",
                2 => "nop",
                _ => "kernel",
            };
            let src = prefix_text(&r[24..24 + n], &r[40..40 + n]);
            let dst = prefix_text(&r[56..56 + n], &r[72..72 + n]);
            list.push((action.to_string(), table, src, dst, other));
        }
        out.insert(v6, list);
    }
    Ok(out)
}

/// The kernel's policy rules in `ns` as the XDP program should walk them: lookups of tables
/// without routes of the family left out (they always go on).
pub fn kernel_rules(ns: &str) -> anyhow::Result<std::collections::BTreeMap<bool, Vec<RuleOf>>> {
    let routes = kernel_routes(ns)?;
    let mut out = std::collections::BTreeMap::new();
    for (family, v6) in [("-4", false), ("-6", true)] {
        let has_routes =
            |t: u32| routes.iter().any(|(table, p)| *table == t && p.contains(':') == v6);
        let rules = json(&["ip", "-n", ns, family, "-j", "rule", "show"])?;
        let mut list = Vec::new();
        for r in rules.as_array().context("rules")? {
            let table = match r["table"].as_str() {
                Some("local") => 255,
                Some("main") => 254,
                Some("default") => 253,
                Some(t) => t.parse().unwrap_or(0),
                None => 0,
            };
            let action = match (r["action"].as_str(), r["goto"].is_null()) {
                (Some("nop"), _) => "nop",
                (_, false) => "goto",
                (None, true) if table != 0 => "lookup",
                _ => "kernel",
            };
            if action == "lookup" && !has_routes(table) {
                continue;
            }
            let prefix = |key: &str, len: &str| match r[key].as_str() {
                None | Some("all") => "all".to_string(),
                Some(a) => format!("{a}/{}", r[len].as_u64().unwrap_or(if v6 { 128 } else { 32 })),
            };
            let known = [
                "priority", "src", "srclen", "dst", "dstlen", "table", "goto", "action", "protocol",
            ];
            let other =
                r.as_object().is_some_and(|o| o.keys().any(|k| !known.contains(&k.as_str())));
            let table = if action == "lookup" { table } else { 0 };
            list.push((
                action.to_string(),
                table,
                prefix("src", "srclen"),
                prefix("dst", "dstlen"),
                other,
            ));
        }
        out.insert(v6, list);
    }
    Ok(out)
}

/// The XDP program's capture switch, as `CAPTURE` and `CAPTURE_IFACES` hold it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureSwitch {
    pub flags: u32,
    pub snaplen: u32,
    /// Instructions of the filter the program runs (0: none).
    pub filter_len: u32,
    /// Interfaces watched.
    pub ifaces: usize,
}

/// The capture switch of the forwarder attached to `dev` in `ns`.
pub fn capture_switch(ns: &str, dev: &str) -> anyhow::Result<CaptureSwitch> {
    let prog = xdp_prog(ns, dev)?;
    let ctl = array_dump(map_of(prog, "CAPTURE")?)?;
    let word = |at: usize| {
        ctl.first()
            .and_then(|v| v.get(at..at + 4))
            .map_or(0, |b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let map = map_of(prog, "CAPTURE_IFACES")?.to_string();
    let ifaces = json(&["bpftool", "-j", "map", "dump", "id", &map])?;
    Ok(CaptureSwitch {
        flags: word(0),
        snaplen: word(4),
        filter_len: word(8),
        ifaces: ifaces.as_array().map_or(0, Vec::len),
    })
}
