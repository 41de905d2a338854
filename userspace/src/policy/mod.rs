//! The configured policy compiled against the managed interfaces: the XDP program's rule and
//! NAT sets (switched atomically by one [`Policy`] word), the per-interface settings of the
//! `IFACES` map (VLAN handling, cross-connects) and the static routes the control plane
//! merges with the kernel's. [`compile`] turns the configuration's rules and rewrites into
//! the program's formats.

use std::{collections::HashMap, net::IpAddr};

use anyhow::{Context as _, bail};
use aya::maps::{Array, MapData};
use ipnet::IpNet;
use xdpfwd_common::{MAX_NATS, MAX_RULES, Nat, Policy, Rule, map_names};

use crate::{
    config::{Config, EcmpMode},
    egress_path::DefaultPath,
    iface::Iface,
    netfilter::NetfilterMode,
};

mod compile;
mod hits;
pub use compile::{compile, compile_nat, prefix_words};
pub use hits::{HitFigure, Hits, SharedHits};

/// Settings of one managed interface that come from the configuration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceOpts {
    /// Accept frames with one 802.1Q tag; strip it.
    pub vlan_pop: bool,
    /// VLAN id to tag frames sent out of the interface with (0: none).
    pub push_vlan: u16,
    /// Cross-connect peer ifindex (0: none).
    pub peer: u32,
    /// Destination MAC for frames cross-connected to the peer.
    pub peer_mac: Option<[u8; 6]>,
}

/// A static route with its interface names resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StaticRoute {
    pub dst: IpNet,
    /// Next hop to resolve through the kernel's neighbours.
    pub via: Option<IpAddr>,
    /// Egress ifindex; `None`: the managed interface the kernel routes `via` out of.
    pub oif: Option<u32>,
    /// Fixed next-hop MAC.
    pub mac: Option<[u8; 6]>,
    /// VLAN id to tag the route's frames with (0: the interface's own setting).
    pub vlan: u16,
}

/// What the control plane applies from the configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ControlPolicy {
    /// By ifindex; interfaces not listed get the defaults.
    pub ifaces: HashMap<u32, IfaceOpts>,
    pub routes: Vec<StaticRoute>,
    /// What to do while netfilter hooks see forwarded traffic.
    pub netfilter: NetfilterMode,
    /// The configuration's path of plain forwarding, if it names one.
    pub path: Option<DefaultPath>,
    /// Who chooses ECMP paths the kernel's hash cannot be computed for.
    pub ecmp: EcmpMode,
}

fn ifindex_of(ifaces: &[Iface], name: &str) -> anyhow::Result<u32> {
    ifaces
        .iter()
        .find(|i| i.name == name)
        .map(|i| i.ifindex)
        .with_context(|| format!("interface {name:?} is not managed by this instance"))
}

impl ControlPolicy {
    /// Resolves `config`'s interface settings and static routes against `ifaces`.
    pub fn new(config: &Config, ifaces: &[Iface]) -> anyhow::Result<Self> {
        let mut opts = HashMap::new();
        for spec in &config.interfaces {
            let Ok(ifindex) = ifindex_of(ifaces, &spec.name) else { continue };
            let entry: &mut IfaceOpts = opts.entry(ifindex).or_default();
            entry.vlan_pop = spec.vlan_pop;
            entry.push_vlan = spec.vlan_push.unwrap_or(0);
        }
        for (i, x) in config.xconnects.iter().enumerate() {
            let a = ifindex_of(ifaces, &x.a).with_context(|| format!("xconnect[{i}].a"))?;
            let b = ifindex_of(ifaces, &x.b).with_context(|| format!("xconnect[{i}].b"))?;
            let side_a: &mut IfaceOpts = opts.entry(a).or_default();
            (side_a.peer, side_a.peer_mac) = (b, x.mac_b);
            let side_b: &mut IfaceOpts = opts.entry(b).or_default();
            (side_b.peer, side_b.peer_mac) = (a, x.mac_a);
        }
        let mut routes = Vec::new();
        for (i, r) in config.routes.iter().enumerate() {
            let oif = match &r.dev {
                Some(dev) => {
                    Some(ifindex_of(ifaces, dev).with_context(|| format!("route[{i}].dev"))?)
                }
                None => None,
            };
            routes.push(StaticRoute {
                dst: r.dst,
                via: r.via,
                oif,
                mac: r.mac,
                vlan: r.vlan.unwrap_or(0),
            });
        }
        Ok(Self {
            ifaces: opts,
            routes,
            netfilter: config.netfilter,
            path: config.path,
            ecmp: config.ecmp,
        })
    }
}

/// The XDP program's two rule and NAT sets and the word that selects the active one.
pub struct PolicyMaps {
    pub rules: Array<MapData, Rule>,
    pub nats: Array<MapData, Nat>,
    pub ruleset: Array<MapData, u32>,
    pub hits: SharedHits,
}

impl PolicyMaps {
    /// Takes the maps out of the loaded program.
    pub fn take(ebpf: &mut aya::Ebpf) -> anyhow::Result<Self> {
        let mut take =
            |name: &str| ebpf.take_map(name).with_context(|| format!("map {name} missing"));
        Ok(Self {
            rules: Array::try_from(take(map_names::RULES)?)?,
            nats: Array::try_from(take(map_names::NATS)?)?,
            ruleset: Array::try_from(take(map_names::RULESET)?)?,
            hits: Hits::take(ebpf)?,
        })
    }

    /// Writes `config`'s rules and rewrites into the idle set, then switches to it with one
    /// map write. Nothing changes for traffic when an error is returned.
    pub fn apply(&mut self, config: &Config, ifaces: &[Iface]) -> anyhow::Result<()> {
        let ifindex = |name: &str| ifaces.iter().find(|i| i.name == name).map(|i| i.ifindex);
        let mut rules = Vec::new();
        for (i, spec) in config.rules.iter().enumerate() {
            let rule = compile(&spec.matches, spec.action, ifindex).with_context(|| {
                format!(
                    "rule[{i}].in: interface {:?} is not managed by this instance",
                    spec.matches.input
                )
            })?;
            rules.push(rule);
        }
        let mut nats = Vec::new();
        for (i, spec) in config.rewrites.iter().enumerate() {
            let nat = compile_nat(spec, ifindex).with_context(|| {
                format!(
                    "rewrite[{i}].match.in: interface {:?} is not managed by this instance",
                    spec.matches.input
                )
            })?;
            nats.push(nat);
        }
        if rules.len() > MAX_RULES as usize || nats.len() > MAX_NATS as usize {
            bail!("too many rules or rewrites");
        }
        let active = Policy::decode(self.ruleset.get(&0, 0)?);
        let next = 1 - active.set;
        for (i, rule) in rules.iter().enumerate() {
            self.rules.set(next * MAX_RULES + i as u32, *rule, 0)?;
        }
        for (i, nat) in nats.iter().enumerate() {
            self.nats.set(next * MAX_NATS + i as u32, *nat, 0)?;
        }
        let policy = Policy {
            set: next,
            rules: rules.len() as u32,
            nats: nats.len() as u32,
            default: config.unmatched,
        };
        let mut hits = self.hits.lock().map_err(|_| anyhow::anyhow!("the hit counters' lock"))?;
        hits.reset(next)?;
        self.ruleset.set(0, policy.encode(), 0)?;
        hits.activate(
            next,
            config.rules.iter().map(|r| r.name.clone()).collect(),
            config.rewrites.iter().map(|r| r.name.clone()).collect(),
        );
        Ok(())
    }
}
