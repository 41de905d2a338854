//! The TOML configuration (`--config FILE`): interfaces and their VLAN handling, steering
//! rules, static routes, L2 cross-connects, stateless NAT rewrites and the default for
//! unmatched traffic; parsed and validated.
//! Every error names the file, the line and column, and the field.
//!
//! [`file`] is the file's shape as serde reads it, [`validate`] checks it section by section;
//! compiling rules and rewrites for the XDP program belongs to [`crate::policy`]. `docs/configuration.md`
//! documents every key; `docs/xdpfwd.example.toml` uses them all.
//!
//! ```toml
//! [defaults]
//! unmatched = "forward"      # forward | kernel | drop | fast | af_xdp
//! path = "auto"              # auto | af_xdp | fast: the path of plain forwarding
//!
//! [[interface]]
//! name = "r0"
//! mode = "native"           # XDP attach mode: auto | native | skb
//! queues = 2                 # AF_XDP sockets on rx queues 0..2 only
//! vlan_pop = true            # accept 802.1Q-tagged frames, strip the tag
//! vlan_push = 100            # tag what leaves r0 with VLAN 100
//!
//! [[rule]]                   # first match wins, in file order
//! in = "r0"
//! proto = "udp"              # tcp | udp | icmp | icmpv6 | a number
//! dst = "198.19.0.0/24"
//! dst_port = "9000-9100"     # or 9000
//! action = "fast"            # forward | kernel | drop | fast | af_xdp
//!
//! [[route]]
//! dst = "198.51.100.0/24"
//! via = "198.19.0.1"         # or dev + mac
//!
//! [[xconnect]]
//! a = "r2"
//! b = "r3"
//!
//! [[rewrite]]
//! match = { dst = "198.19.0.10/32", proto = "tcp", dst_port = 80 }
//! set_dst = "198.19.0.20"
//! set_dst_port = 8080
//! ```

mod file;
mod validate;

use std::{fmt, net::IpAddr, path::Path};

use ipnet::IpNet;
use xdpfwd_common::Action;

use crate::{egress_path::DefaultPath, loader::ModeArg, netfilter::NetfilterMode};

/// A configuration error, located in its file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// The field, e.g. `rule[2].dst` (empty for syntax errors).
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// What a rule or a rewrite matches, before interface names are resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MatchSpec {
    pub input: Option<String>,
    pub proto: Option<u8>,
    pub src: Option<IpNet>,
    pub dst: Option<IpNet>,
    pub src_port: Option<(u16, u16)>,
    pub dst_port: Option<(u16, u16)>,
    pub vlan: Option<u16>,
}

/// A steering rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSpec {
    pub matches: MatchSpec,
    pub action: Action,
    /// The label of its hit counter.
    pub name: Option<String>,
}

/// A managed interface and its VLAN handling.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfaceSpec {
    pub name: String,
    /// XDP attach mode (`--mode` on the command line overrides it).
    pub mode: Option<ModeArg>,
    /// Bind AF_XDP sockets on rx queues `0..queues` only (default: every rx queue).
    pub queues: Option<u32>,
    /// Accept frames with one 802.1Q tag and strip it.
    pub vlan_pop: bool,
    /// Tag every frame sent out of the interface with this VLAN id.
    pub vlan_push: Option<u16>,
}

/// A static route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub dst: IpNet,
    /// Next hop, resolved through the kernel's neighbour table.
    pub via: Option<IpAddr>,
    /// Egress interface (found from the kernel's routes to `via` when absent).
    pub dev: Option<String>,
    /// Fixed next-hop MAC (with `dev`, instead of `via`).
    pub mac: Option<[u8; 6]>,
    /// VLAN id to tag the route's frames with.
    pub vlan: Option<u16>,
}

/// An L2 cross-connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XconnectSpec {
    pub a: String,
    pub b: String,
    /// Destination MAC of frames sent out of `a` (from `b`).
    pub mac_a: Option<[u8; 6]>,
    /// Destination MAC of frames sent out of `b` (from `a`).
    pub mac_b: Option<[u8; 6]>,
}

/// A stateless NAT rewrite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewriteSpec {
    pub matches: MatchSpec,
    /// The label of its hit counter.
    pub name: Option<String>,
    pub set_src: Option<IpAddr>,
    pub set_dst: Option<IpAddr>,
    pub set_src_port: Option<u16>,
    pub set_dst_port: Option<u16>,
}

/// `ecmp = ...`: who chooses a path of a nexthop group or multipath route where the kernel's
/// multipath hash cannot be computed (no `fib_multipath_hash_seed`, or hash policy 1), for
/// frames arriving where the kernel forwards. Where its forwarding is off, xdpfwd is the
/// router and its own hash chooses either way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EcmpMode {
    /// The kernel forwards those frames: every path xdpfwd takes is the kernel's.
    #[default]
    Exact,
    /// xdpfwd's own hash chooses (stable per flow, weighted, but not the kernel's path).
    OwnHash,
}

impl EcmpMode {
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "exact" => Some(EcmpMode::Exact),
            "own-hash" => Some(EcmpMode::OwnHash),
            _ => None,
        }
    }
}

/// A validated configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    pub interfaces: Vec<InterfaceSpec>,
    pub rules: Vec<RuleSpec>,
    /// Action for transit traffic that matches no rule.
    pub unmatched: Action,
    /// What to do while netfilter hooks see forwarded traffic (`defer` unless set).
    pub netfilter: NetfilterMode,
    /// The path of plain forwarding (`--default-path` overrides it; `auto` if neither).
    pub path: Option<DefaultPath>,
    /// Who chooses an ECMP path where the kernel's hash cannot be computed.
    pub ecmp: EcmpMode,
    pub routes: Vec<RouteSpec>,
    pub xconnects: Vec<XconnectSpec>,
    pub rewrites: Vec<RewriteSpec>,
}

impl Config {
    /// The configured interface names, in order.
    pub fn names(&self) -> Vec<String> {
        self.interfaces.iter().map(|i| i.name.clone()).collect()
    }
}

/// Reads and validates `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.display().to_string(),
        line: 0,
        column: 0,
        field: String::new(),
        message: format!("cannot read: {e}"),
    })?;
    parse(&path.display().to_string(), &text)
}

/// Parses and validates a configuration text; `file` names it in errors.
pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
    let loc = validate::Locator { file, text };
    let parsed: file::File = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        loc.at(span, String::new(), e.message().trim().to_owned())
    })?;
    let interfaces = validate::interfaces(&loc, &parsed.interface)?;
    let unmatched = validate::unmatched(&loc, &parsed.defaults)?;
    let netfilter = validate::netfilter(&loc, &parsed.defaults)?;
    let path = validate::path(&loc, &parsed.defaults)?;
    let ecmp = validate::ecmp(&loc, &parsed.defaults)?;
    let xconnects = validate::xconnects(&loc, &parsed.xconnect, &interfaces)?;
    let rules = validate::rules(&loc, &parsed.rule, &interfaces, &xconnects)?;
    let routes = validate::routes(&loc, &parsed.route, &interfaces, &xconnects)?;
    let rewrites = validate::rewrites(&loc, &parsed.rewrite, &interfaces, &xconnects)?;
    Ok(Config { interfaces, rules, unmatched, netfilter, path, ecmp, routes, xconnects, rewrites })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../docs/xdpfwd.example.toml");

    #[test]
    fn the_example_is_valid() {
        let c = parse("example.toml", EXAMPLE).unwrap();
        assert_eq!(c.names(), ["r0", "r1", "r2", "r3"]);
        assert!(!c.routes.is_empty() && !c.xconnects.is_empty() && !c.rewrites.is_empty());
        assert!(!c.rules.is_empty());
    }

    fn err(text: &str) -> ConfigError {
        parse("f.toml", text).unwrap_err()
    }

    #[test]
    fn errors_name_line_and_field() {
        let e = err(
            "[[interface]]\nname = \"r0\"\n\n[[rule]]\nin = \"r0\"\ndst = \"198.18.0.0/33\"\naction = \"forward\"\n",
        );
        assert_eq!((e.line, e.field.as_str()), (6, "rule[0].dst"), "{e}");
        assert!(e.to_string().starts_with("f.toml:6:7: rule[0].dst: invalid prefix"), "{e}");
        let e = err("[[interface]]\nname = \"r0\"\n[[rule]]\nin = \"r9\"\naction = \"drop\"\n");
        assert_eq!((e.line, e.field.as_str()), (4, "rule[0].in"), "{e}");
        let e = err("[[rule]]\naction = \"teleport\"\n");
        assert_eq!((e.line, e.field.as_str()), (2, "rule[0].action"), "{e}");
        let e = err("[[rule]]\nproto = \"tcp\"\ndst_port = \"90-80\"\naction = \"drop\"\n");
        assert_eq!((e.line, e.field.as_str()), (3, "rule[0].dst_port"), "{e}");
        let e = err("[[rule]]\ndst_port = 80\naction = \"drop\"\n");
        assert_eq!(e.field, "rule[0].dst_port", "{e}");
        let e = err("[[rule]]\ncolour = \"red\"\naction = \"drop\"\n");
        assert_eq!(e.line, 2, "unknown keys are located: {e}");
        assert!(e.message.contains("colour"), "{e}");
        let e = err("[defaults]\nunmatched = \"maybe\"\n");
        assert_eq!((e.line, e.field.as_str()), (2, "defaults.unmatched"), "{e}");
        let e = err("[[rule]\n");
        assert_eq!(e.line, 1, "syntax errors are located: {e}");
    }

    #[test]
    fn the_default_path_and_the_af_xdp_action_are_read() {
        let c = parse("f.toml", "[defaults]\npath = \"af_xdp\"\nunmatched = \"af_xdp\"\n").unwrap();
        assert_eq!((c.path, c.unmatched), (Some(DefaultPath::AfXdp), Action::AfXdp));
        assert_eq!(parse("f.toml", "").unwrap().path, None, "unset: the command line's, or auto");
        let e = err("[defaults]\npath = \"kernel\"\n");
        assert_eq!((e.line, e.field.as_str()), (2, "defaults.path"), "{e}");
        assert!(e.message.contains("auto, af_xdp or fast"), "{e}");
    }

    #[test]
    fn the_ecmp_mode_is_read() {
        assert_eq!(parse("f.toml", "").unwrap().ecmp, EcmpMode::Exact, "the kernel's paths");
        let c = parse("f.toml", "[defaults]\necmp = \"own-hash\"\n").unwrap();
        assert_eq!(c.ecmp, EcmpMode::OwnHash);
        assert_eq!(parse("example.toml", EXAMPLE).unwrap().ecmp, EcmpMode::Exact);
        let e = err("[defaults]\necmp = \"fast\"\n");
        assert_eq!((e.line, e.field.as_str()), (2, "defaults.ecmp"), "{e}");
        assert!(e.message.contains("exact or own-hash"), "{e}");
    }

    #[test]
    fn route_xconnect_rewrite_and_vlan_errors_name_line_and_field() {
        let ifaces =
            "[[interface]]\nname = \"r0\"\nvlan_pop = true\n[[interface]]\nname = \"r1\"\n";
        let e = err(&format!("{ifaces}[[route]]\ndst = \"198.51.100.0/24\"\n"));
        assert_eq!((e.line, e.field.as_str()), (7, "route[0].via"), "{e}");
        let e = err(&format!(
            "{ifaces}[[route]]\ndst = \"198.51.100.0/24\"\nmac = \"02:00:00:00:00:01\"\n"
        ));
        assert_eq!(e.field, "route[0].dev", "{e}");
        let e = err(&format!(
            "{ifaces}[[route]]\ndst = \"198.51.100.0/24\"\ndev = \"r1\"\nmac = \"02:00:00:00:01\"\n"
        ));
        assert_eq!((e.line, e.field.as_str()), (9, "route[0].mac"), "{e}");
        let e =
            err(&format!("{ifaces}[[route]]\ndst = \"198.51.100.0/24\"\nvia = \"2001:db8::1\"\n"));
        assert_eq!((e.line, e.field.as_str()), (8, "route[0].via"), "{e}");
        let e = err(&format!(
            "{ifaces}[[route]]\ndst = \"198.51.100.0/24\"\nvia = \"198.18.0.1\"\nvlan = 4095\n"
        ));
        assert_eq!((e.line, e.field.as_str()), (9, "route[0].vlan"), "{e}");
        let e = err(&format!("{ifaces}[[xconnect]]\na = \"r0\"\nb = \"r0\"\n"));
        assert_eq!((e.line, e.field.as_str()), (8, "xconnect[0].b"), "{e}");
        let e = err(&format!("{ifaces}[[xconnect]]\na = \"r0\"\nb = \"r9\"\n"));
        assert_eq!((e.line, e.field.as_str()), (8, "xconnect[0].b"), "{e}");
        let e = err(&format!(
            "{ifaces}[[xconnect]]\na = \"r0\"\nb = \"r1\"\n[[rule]]\nin = \"r0\"\naction = \"drop\"\n"
        ));
        assert_eq!((e.line, e.field.as_str()), (10, "rule[0].in"), "{e}");
        let e = err(&format!("{ifaces}[[rule]]\nin = \"r1\"\nvlan = 10\naction = \"drop\"\n"));
        assert_eq!((e.line, e.field.as_str()), (8, "rule[0].vlan"), "needs vlan_pop: {e}");
        let e = err(&format!("{ifaces}[[rewrite]]\nmatch = {{ dst = \"198.19.0.1\" }}\n"));
        assert_eq!(e.field, "rewrite[0].set_dst", "nothing to set: {e}");
        let e = err(&format!(
            "{ifaces}[[rewrite]]\nmatch = {{ dst = \"198.19.0.1\" }}\nset_dst = \"2001:db8::1\"\n"
        ));
        assert_eq!((e.line, e.field.as_str()), (8, "rewrite[0].set_dst"), "{e}");
        let e = err(&format!(
            "{ifaces}[[rewrite]]\nmatch = {{ dst = \"198.19.0.1\" }}\nset_dst_port = 80\n"
        ));
        assert_eq!((e.line, e.field.as_str()), (8, "rewrite[0].set_dst_port"), "{e}");
        let e = err(&format!(
            "{ifaces}[[rewrite]]\nmatch = {{ proto = \"tcp\", dst_port = \"x\" }}\nset_dst_port = 80\n"
        ));
        assert_eq!((e.line, e.field.as_str()), (7, "rewrite[0].match.dst_port"), "{e}");
    }

    #[test]
    fn interface_mode_and_queues() {
        let c = parse("f", "[[interface]]\nname = \"r0\"\nmode = \"skb\"\nqueues = 2\n").unwrap();
        assert_eq!((c.interfaces[0].mode, c.interfaces[0].queues), (Some(ModeArg::Skb), Some(2)));
        let e = err("[[interface]]\nname = \"r0\"\nmode = \"turbo\"\n");
        assert_eq!((e.line, e.field.as_str()), (3, "interface[0].mode"), "{e}");
        let e = err("[[interface]]\nname = \"r0\"\nqueues = 0\n");
        assert_eq!((e.line, e.field.as_str()), (3, "interface[0].queues"), "{e}");
    }
}
