//! What a running forwarder's route tries hold (read with bpftool), next to what the kernel
//! holds (`ip -j route show table all`), as sets of (table, prefix) to compare.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, Ipv6Addr},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::sh;

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

/// Every route of the kernel in `ns`, both families, every table.
pub fn kernel_routes(ns: &str) -> anyhow::Result<BTreeSet<Entry>> {
    let mut out = BTreeSet::new();
    for (family, host) in [("-4", "/32"), ("-6", "/128")] {
        let routes = json(&["ip", "-n", ns, family, "-j", "route", "show", "table", "all"])?;
        for r in routes.as_array().context("routes")? {
            let table = match r["table"].as_str() {
                None | Some("main") => 254,
                Some("local") => 255,
                Some("default") => 253,
                Some(t) => t.parse().with_context(|| format!("table {t}"))?,
            };
            let dst = r["dst"].as_str().context("dst")?;
            let prefix = match dst {
                "default" if family == "-4" => "0.0.0.0/0".to_string(),
                "default" => "::/0".to_string(),
                d if d.contains('/') => d.to_string(),
                d => format!("{d}{host}"),
            };
            out.insert((table, prefix));
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
