//! The TOML configuration (`--config FILE`): interfaces and their VLAN handling, steering
//! rules, static routes, L2 cross-connects, stateless NAT rewrites and the default for
//! unmatched traffic; parsed, validated and compiled into the XDP program's formats.
//! Every error names the file, the line and column, and the field. `docs/configuration.md`
//! documents every key; `docs/xdpfwd.example.toml` uses them all.
//!
//! ```toml
//! [defaults]
//! unmatched = "forward"      # forward | kernel | drop | fast
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
//! action = "fast"            # forward | kernel | drop | fast
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

use std::{fmt, net::IpAddr, ops::Range, path::Path};

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;
use xdpfwd_common::{
    ACTION_DROP, ACTION_FAST, ACTION_FORWARD, ACTION_KERNEL, MAX_NATS, MAX_RULES, NAT_DPORT,
    NAT_DST, NAT_SPORT, NAT_SRC, Nat, RULE_DPORT, RULE_DST, RULE_IN, RULE_PROTO, RULE_SPORT,
    RULE_SRC, RULE_V4, RULE_V6, RULE_VLAN, Rule,
};

use crate::loader::ModeArg;

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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    defaults: Defaults,
    #[serde(default)]
    interface: Vec<InterfaceCfg>,
    #[serde(default)]
    rule: Vec<RuleCfg>,
    #[serde(default)]
    route: Vec<RouteCfg>,
    #[serde(default)]
    xconnect: Vec<XconnectCfg>,
    #[serde(default)]
    rewrite: Vec<RewriteCfg>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Defaults {
    unmatched: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InterfaceCfg {
    name: Spanned<String>,
    mode: Option<Spanned<String>>,
    queues: Option<Spanned<i64>>,
    vlan_pop: Option<bool>,
    vlan_push: Option<Spanned<i64>>,
}

/// The match fields shared by `[[rule]]` and `[[rewrite]].match`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MatchCfg {
    #[serde(rename = "in")]
    input: Option<Spanned<String>>,
    proto: Option<Spanned<toml::Value>>,
    src: Option<Spanned<String>>,
    dst: Option<Spanned<String>>,
    src_port: Option<Spanned<toml::Value>>,
    dst_port: Option<Spanned<toml::Value>>,
    vlan: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleCfg {
    #[serde(rename = "in")]
    input: Option<Spanned<String>>,
    proto: Option<Spanned<toml::Value>>,
    src: Option<Spanned<String>>,
    dst: Option<Spanned<String>>,
    src_port: Option<Spanned<toml::Value>>,
    dst_port: Option<Spanned<toml::Value>>,
    vlan: Option<Spanned<i64>>,
    action: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteCfg {
    dst: Spanned<String>,
    via: Option<Spanned<String>>,
    dev: Option<Spanned<String>>,
    mac: Option<Spanned<String>>,
    vlan: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct XconnectCfg {
    a: Spanned<String>,
    b: Spanned<String>,
    mac_a: Option<Spanned<String>>,
    mac_b: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RewriteCfg {
    #[serde(rename = "match")]
    matches: Spanned<MatchCfg>,
    set_src: Option<Spanned<String>>,
    set_dst: Option<Spanned<String>>,
    set_src_port: Option<Spanned<i64>>,
    set_dst_port: Option<Spanned<i64>>,
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
    pub action: u32,
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
    pub set_src: Option<IpAddr>,
    pub set_dst: Option<IpAddr>,
    pub set_src_port: Option<u16>,
    pub set_dst_port: Option<u16>,
}

/// A validated configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    pub interfaces: Vec<InterfaceSpec>,
    pub rules: Vec<RuleSpec>,
    /// Action for transit traffic that matches no rule.
    pub unmatched: u32,
    pub routes: Vec<RouteSpec>,
    pub xconnects: Vec<XconnectSpec>,
    pub rewrites: Vec<RewriteSpec>,
}

impl Config {
    /// The configured interface names, in order.
    pub fn names(&self) -> Vec<String> {
        self.interfaces.iter().map(|i| i.name.clone()).collect()
    }

    /// The cross-connect an interface belongs to, as (peer, MAC for frames sent to the peer).
    pub fn xconnect_of(&self, name: &str) -> Option<(&str, Option<[u8; 6]>)> {
        self.xconnects.iter().find_map(|x| {
            if x.a == name {
                Some((x.b.as_str(), x.mac_b))
            } else if x.b == name {
                Some((x.a.as_str(), x.mac_a))
            } else {
                None
            }
        })
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

/// Builds located errors for one file.
struct Locator<'a> {
    file: &'a str,
    text: &'a str,
}

impl Locator<'_> {
    fn at(&self, span: Range<usize>, field: impl Into<String>, message: String) -> ConfigError {
        let (line, column) = position(self.text, span.start);
        ConfigError { file: self.file.to_owned(), line, column, field: field.into(), message }
    }

    fn prefix(&self, v: &Spanned<String>, field: String) -> Result<IpNet, ConfigError> {
        v.get_ref()
            .parse::<IpNet>()
            .or_else(|_| v.get_ref().parse::<IpAddr>().map(IpNet::from))
            .map(|n| n.trunc())
            .map_err(|_| self.at(v.span(), field, format!("invalid prefix {:?}", v.get_ref())))
    }

    fn addr(&self, v: &Spanned<String>, field: String) -> Result<IpAddr, ConfigError> {
        v.get_ref()
            .parse::<IpAddr>()
            .map_err(|_| self.at(v.span(), field, format!("invalid address {:?}", v.get_ref())))
    }

    fn mac(&self, v: &Spanned<String>, field: String) -> Result<[u8; 6], ConfigError> {
        parse_mac(v.get_ref()).ok_or_else(|| {
            self.at(
                v.span(),
                field,
                format!("invalid MAC address {:?}: expected 02:00:00:00:00:01", v.get_ref()),
            )
        })
    }

    fn vlan(&self, v: &Spanned<i64>, field: String) -> Result<u16, ConfigError> {
        u16::try_from(*v.get_ref()).ok().filter(|id| (1..=4094).contains(id)).ok_or_else(|| {
            self.at(v.span(), field, format!("invalid VLAN id {}: expected 1-4094", v.get_ref()))
        })
    }

    fn port(&self, v: &Spanned<i64>, field: String) -> Result<u16, ConfigError> {
        u16::try_from(*v.get_ref())
            .map_err(|_| self.at(v.span(), field, format!("invalid port {}", v.get_ref())))
    }

    fn interface(
        &self,
        v: &Spanned<String>,
        field: String,
        interfaces: &[InterfaceSpec],
    ) -> Result<String, ConfigError> {
        if interfaces.iter().any(|i| &i.name == v.get_ref()) {
            Ok(v.get_ref().clone())
        } else {
            Err(self.at(
                v.span(),
                field,
                format!("{:?} is not a configured [[interface]]", v.get_ref()),
            ))
        }
    }

    /// Validates the match fields of `rule[i]` / `rewrite[i].match` (`field` prefixes names).
    fn matches(
        &self,
        m: &MatchCfg,
        field: &dyn Fn(&str) -> String,
        interfaces: &[InterfaceSpec],
    ) -> Result<MatchSpec, ConfigError> {
        let input = match &m.input {
            Some(name) => Some(self.interface(name, field("in"), interfaces)?),
            None => None,
        };
        let proto = match &m.proto {
            Some(p) => Some(protocol(p.get_ref()).ok_or_else(|| {
                self.at(
                    p.span(),
                    field("proto"),
                    format!(
                        "unknown protocol {}: expected tcp, udp, icmp, icmpv6 or 0-255",
                        p.get_ref()
                    ),
                )
            })?),
            None => None,
        };
        let src = m.src.as_ref().map(|v| self.prefix(v, field("src"))).transpose()?;
        let dst = m.dst.as_ref().map(|v| self.prefix(v, field("dst"))).transpose()?;
        if let (Some(s), Some(d)) = (src, dst)
            && s.addr().is_ipv4() != d.addr().is_ipv4()
        {
            return Err(self.at(
                m.dst.as_ref().map_or(0..0, Spanned::span),
                field("dst"),
                "src and dst are of different IP versions".into(),
            ));
        }
        let range = |v: &Option<Spanned<toml::Value>>, name: &str| match v {
            Some(p) => port_range(p.get_ref()).map(Some).ok_or_else(|| {
                self.at(
                    p.span(),
                    field(name),
                    format!("invalid port or range {}: expected 80 or \"1000-2000\"", p.get_ref()),
                )
            }),
            None => Ok(None),
        };
        let src_port = range(&m.src_port, "src_port")?;
        let dst_port = range(&m.dst_port, "dst_port")?;
        if (src_port.is_some() || dst_port.is_some()) && !matches!(proto, Some(6 | 17)) {
            let span = m.dst_port.as_ref().or(m.src_port.as_ref()).map_or(0..0, Spanned::span);
            return Err(self.at(
                span,
                field(if m.dst_port.is_some() { "dst_port" } else { "src_port" }),
                "ports need proto = \"tcp\" or \"udp\"".into(),
            ));
        }
        let vlan = m.vlan.as_ref().map(|v| self.vlan(v, field("vlan"))).transpose()?;
        if let (Some(_), Some(name)) = (vlan, &input)
            && !interfaces.iter().any(|i| &i.name == name && i.vlan_pop)
        {
            return Err(self.at(
                m.vlan.as_ref().map_or(0..0, Spanned::span),
                field("vlan"),
                format!("interface {name:?} does not accept tagged frames: set vlan_pop = true"),
            ));
        }
        Ok(MatchSpec { input, proto, src, dst, src_port, dst_port, vlan })
    }
}

/// Parses and validates a configuration text; `file` names it in errors.
pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
    let loc = Locator { file, text };
    let parsed: File = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        loc.at(span, String::new(), e.message().trim().to_owned())
    })?;
    let mut interfaces: Vec<InterfaceSpec> = Vec::new();
    for (i, iface) in parsed.interface.iter().enumerate() {
        let name = iface.name.get_ref();
        if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
            return Err(loc.at(
                iface.name.span(),
                format!("interface[{i}].name"),
                format!("invalid interface name {name:?}"),
            ));
        }
        if interfaces.iter().any(|x| &x.name == name) {
            return Err(loc.at(
                iface.name.span(),
                format!("interface[{i}].name"),
                format!("interface {name:?} is listed twice"),
            ));
        }
        let vlan_push = iface
            .vlan_push
            .as_ref()
            .map(|v| loc.vlan(v, format!("interface[{i}].vlan_push")))
            .transpose()?;
        let mode = match &iface.mode {
            Some(m) => Some(match m.get_ref().as_str() {
                "auto" => ModeArg::Auto,
                "native" => ModeArg::Native,
                "skb" => ModeArg::Skb,
                other => {
                    return Err(loc.at(
                        m.span(),
                        format!("interface[{i}].mode"),
                        format!("unknown mode {other:?}: expected auto, native or skb"),
                    ));
                }
            }),
            None => None,
        };
        let queues = match &iface.queues {
            Some(q) => Some(
                u32::try_from(*q.get_ref())
                    .ok()
                    .filter(|n| (1..=xdpfwd_common::MAX_QUEUES).contains(n))
                    .ok_or_else(|| {
                        loc.at(
                            q.span(),
                            format!("interface[{i}].queues"),
                            format!(
                                "invalid queue count {}: expected 1-{}",
                                q.get_ref(),
                                xdpfwd_common::MAX_QUEUES
                            ),
                        )
                    })?,
            ),
            None => None,
        };
        interfaces.push(InterfaceSpec {
            name: name.clone(),
            mode,
            queues,
            vlan_pop: iface.vlan_pop.unwrap_or(false),
            vlan_push,
        });
    }
    let unmatched = match &parsed.defaults.unmatched {
        Some(a) => action(a.get_ref()).ok_or_else(|| {
            loc.at(
                a.span(),
                "defaults.unmatched",
                format!("unknown action {:?}: expected forward, kernel, drop or fast", a.get_ref()),
            )
        })?,
        None => ACTION_FORWARD,
    };
    if parsed.rule.len() > MAX_RULES as usize {
        return Err(loc.at(
            0..0,
            "rule",
            format!("{} rules; at most {MAX_RULES}", parsed.rule.len()),
        ));
    }
    let mut xconnects: Vec<XconnectSpec> = Vec::new();
    for (i, x) in parsed.xconnect.iter().enumerate() {
        let field = |name: &str| format!("xconnect[{i}].{name}");
        let a = loc.interface(&x.a, field("a"), &interfaces)?;
        let b = loc.interface(&x.b, field("b"), &interfaces)?;
        for (name, span, f) in [(&a, x.a.span(), "a"), (&b, x.b.span(), "b")] {
            if xconnects.iter().any(|o| &o.a == name || &o.b == name) {
                return Err(loc.at(
                    span,
                    field(f),
                    format!("{name:?} is already in another cross-connect"),
                ));
            }
        }
        if a == b {
            return Err(loc.at(x.b.span(), field("b"), "a and b are the same interface".into()));
        }
        let mac_a = x.mac_a.as_ref().map(|m| loc.mac(m, field("mac_a"))).transpose()?;
        let mac_b = x.mac_b.as_ref().map(|m| loc.mac(m, field("mac_b"))).transpose()?;
        xconnects.push(XconnectSpec { a, b, mac_a, mac_b });
    }
    let crossed = |name: &Option<String>| {
        name.as_ref().is_some_and(|n| xconnects.iter().any(|x| &x.a == n || &x.b == n))
    };
    let mut rules = Vec::new();
    for (i, r) in parsed.rule.iter().enumerate() {
        let field = |name: &str| format!("rule[{i}].{name}");
        let m = MatchCfg {
            input: r.input.clone(),
            proto: r.proto.clone(),
            src: r.src.clone(),
            dst: r.dst.clone(),
            src_port: r.src_port.clone(),
            dst_port: r.dst_port.clone(),
            vlan: r.vlan.clone(),
        };
        let matches = loc.matches(&m, &field, &interfaces)?;
        if crossed(&matches.input) {
            return Err(loc.at(
                r.input.as_ref().map_or(0..0, Spanned::span),
                field("in"),
                "the interface is cross-connected: its frames bypass the rules".into(),
            ));
        }
        let act = action(r.action.get_ref()).ok_or_else(|| {
            loc.at(
                r.action.span(),
                field("action"),
                format!(
                    "unknown action {:?}: expected forward, kernel, drop or fast",
                    r.action.get_ref()
                ),
            )
        })?;
        rules.push(RuleSpec { matches, action: act });
    }
    let mut routes = Vec::new();
    for (i, r) in parsed.route.iter().enumerate() {
        let field = |name: &str| format!("route[{i}].{name}");
        let dst = loc.prefix(&r.dst, field("dst"))?;
        let via = r.via.as_ref().map(|v| loc.addr(v, field("via"))).transpose()?;
        let dev =
            r.dev.as_ref().map(|v| loc.interface(v, field("dev"), &interfaces)).transpose()?;
        let mac = r.mac.as_ref().map(|v| loc.mac(v, field("mac"))).transpose()?;
        let vlan = r.vlan.as_ref().map(|v| loc.vlan(v, field("vlan"))).transpose()?;
        match (&via, &mac) {
            (Some(_), Some(_)) => {
                return Err(loc.at(
                    r.dst.span(),
                    field("mac"),
                    "give either via or mac, not both".into(),
                ));
            }
            (None, None) => {
                return Err(loc.at(
                    r.dst.span(),
                    field("via"),
                    "a route needs via (a next-hop address) or dev + mac".into(),
                ));
            }
            (None, Some(_)) if dev.is_none() => {
                return Err(loc.at(
                    r.dst.span(),
                    field("dev"),
                    "a route with a fixed mac needs dev".into(),
                ));
            }
            _ => {}
        }
        if let Some(v) = via
            && v.is_ipv4() != dst.addr().is_ipv4()
        {
            return Err(loc.at(
                r.via.as_ref().map_or(0..0, Spanned::span),
                field("via"),
                "via and dst are of different IP versions".into(),
            ));
        }
        if crossed(&dev) {
            return Err(loc.at(
                r.dev.as_ref().map_or(0..0, Spanned::span),
                field("dev"),
                "the interface is cross-connected: it carries no routed traffic".into(),
            ));
        }
        if routes.iter().any(|o: &RouteSpec| o.dst == dst) {
            return Err(loc.at(r.dst.span(), field("dst"), format!("a second route to {dst}")));
        }
        routes.push(RouteSpec { dst, via, dev, mac, vlan });
    }
    if parsed.rewrite.len() > MAX_NATS as usize {
        return Err(loc.at(
            0..0,
            "rewrite",
            format!("{} rewrites; at most {MAX_NATS}", parsed.rewrite.len()),
        ));
    }
    let mut rewrites = Vec::new();
    for (i, r) in parsed.rewrite.iter().enumerate() {
        let field = |name: &str| format!("rewrite[{i}].{name}");
        let match_field = |name: &str| format!("rewrite[{i}].match.{name}");
        let matches = loc.matches(r.matches.get_ref(), &match_field, &interfaces)?;
        let set_src = r.set_src.as_ref().map(|v| loc.addr(v, field("set_src"))).transpose()?;
        let set_dst = r.set_dst.as_ref().map(|v| loc.addr(v, field("set_dst"))).transpose()?;
        let set_src_port =
            r.set_src_port.as_ref().map(|v| loc.port(v, field("set_src_port"))).transpose()?;
        let set_dst_port =
            r.set_dst_port.as_ref().map(|v| loc.port(v, field("set_dst_port"))).transpose()?;
        if set_src.is_none()
            && set_dst.is_none()
            && set_src_port.is_none()
            && set_dst_port.is_none()
        {
            return Err(loc.at(
                r.matches.span(),
                field("set_dst"),
                "a rewrite needs at least one of set_src, set_dst, set_src_port, set_dst_port"
                    .into(),
            ));
        }
        // Every address of the rewrite must be of one IP version.
        let mut version = None;
        let addrs = [
            (matches.src.map(|n| n.addr()), "match.src", r.matches.span()),
            (matches.dst.map(|n| n.addr()), "match.dst", r.matches.span()),
            (set_src, "set_src", r.set_src.as_ref().map_or(0..0, Spanned::span)),
            (set_dst, "set_dst", r.set_dst.as_ref().map_or(0..0, Spanned::span)),
        ];
        for (addr, name, span) in addrs {
            let Some(addr) = addr else { continue };
            match version {
                Some(v4) if v4 != addr.is_ipv4() => {
                    return Err(loc.at(
                        span,
                        field(name),
                        "mixes IPv4 and IPv6 addresses in one rewrite".into(),
                    ));
                }
                _ => version = Some(addr.is_ipv4()),
            }
        }
        if (set_src.is_some() || set_dst.is_some())
            && matches.src.is_none()
            && matches.dst.is_none()
        {
            return Err(loc.at(
                r.matches.span(),
                field("match"),
                "an address rewrite needs match.src or match.dst (of the same IP version)".into(),
            ));
        }
        if (set_src_port.is_some() || set_dst_port.is_some())
            && !matches!(matches.proto, Some(1 | 6 | 17 | 58))
        {
            let span =
                r.set_dst_port.as_ref().or(r.set_src_port.as_ref()).map_or(0..0, Spanned::span);
            return Err(loc.at(
                span,
                field(if r.set_dst_port.is_some() { "set_dst_port" } else { "set_src_port" }),
                "port rewrites need match.proto = tcp, udp, icmp or icmpv6 (echo identifier)"
                    .into(),
            ));
        }
        if crossed(&matches.input) {
            return Err(loc.at(
                r.matches.span(),
                match_field("in"),
                "the interface is cross-connected: its frames are not rewritten".into(),
            ));
        }
        rewrites.push(RewriteSpec { matches, set_src, set_dst, set_src_port, set_dst_port });
    }
    Ok(Config { interfaces, rules, unmatched, routes, xconnects, rewrites })
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

fn action(name: &str) -> Option<u32> {
    Some(match name {
        "forward" => ACTION_FORWARD,
        "kernel" => ACTION_KERNEL,
        "drop" => ACTION_DROP,
        "fast" => ACTION_FAST,
        _ => return None,
    })
}

fn protocol(v: &toml::Value) -> Option<u8> {
    match v {
        toml::Value::Integer(n) => u8::try_from(*n).ok(),
        toml::Value::String(s) => Some(match s.as_str() {
            "tcp" => 6,
            "udp" => 17,
            "icmp" => 1,
            "icmpv6" => 58,
            _ => return None,
        }),
        _ => None,
    }
}

fn port_range(v: &toml::Value) -> Option<(u16, u16)> {
    match v {
        toml::Value::Integer(n) => u16::try_from(*n).ok().map(|p| (p, p)),
        toml::Value::String(s) => {
            let (lo, hi) = s.split_once('-').unwrap_or((s, s));
            let (lo, hi): (u16, u16) = (lo.trim().parse().ok()?, hi.trim().parse().ok()?);
            (lo <= hi).then_some((lo, hi))
        }
        _ => None,
    }
}

/// A prefix as the XDP program's rules compare it: address and mask as two native-endian
/// words each (IPv4 in the first 4 bytes), and whether it is IPv4.
pub fn prefix_words(net: &IpNet) -> ([u64; 2], [u64; 2], bool) {
    let words = |b: [u8; 16]| {
        [
            u64::from_ne_bytes(b[0..8].try_into().unwrap_or_default()),
            u64::from_ne_bytes(b[8..16].try_into().unwrap_or_default()),
        ]
    };
    let (addr, mask, v4) = match net {
        IpNet::V4(n) => {
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&n.network().octets());
            let mut m = [0u8; 16];
            m[..4].copy_from_slice(&n.netmask().octets());
            (a, m, true)
        }
        IpNet::V6(n) => (n.network().octets(), n.netmask().octets(), false),
    };
    (words(addr), words(mask), v4)
}

/// Compiles a rule's (or rewrite's) match for the XDP program; `ifindex` resolves interface
/// names.
pub fn compile(
    spec: &MatchSpec,
    action: u32,
    ifindex: impl Fn(&str) -> Option<u32>,
) -> Option<Rule> {
    let mut r = Rule { action, ..Rule::default() };
    if let Some(name) = &spec.input {
        r.fields |= RULE_IN;
        r.in_ifindex = ifindex(name)?;
    }
    if let Some(p) = spec.proto {
        r.fields |= RULE_PROTO;
        r.proto = u16::from(p);
    }
    if let Some(v) = spec.vlan {
        r.fields |= RULE_VLAN;
        r.vlan = v;
    }
    for (net, is_src) in [(&spec.src, true), (&spec.dst, false)] {
        if let Some(net) = net {
            let (addr, mask, v4) = prefix_words(net);
            r.fields |= if v4 { RULE_V4 } else { RULE_V6 };
            if is_src {
                r.fields |= RULE_SRC;
                (r.src, r.src_mask) = (addr, mask);
            } else {
                r.fields |= RULE_DST;
                (r.dst, r.dst_mask) = (addr, mask);
            }
        }
    }
    if spec.proto == Some(1) {
        r.fields |= RULE_V4;
    }
    if spec.proto == Some(58) {
        r.fields |= RULE_V6;
    }
    if let Some((lo, hi)) = spec.src_port {
        r.fields |= RULE_SPORT;
        (r.sport_lo, r.sport_hi) = (lo, hi);
    }
    if let Some((lo, hi)) = spec.dst_port {
        r.fields |= RULE_DPORT;
        (r.dport_lo, r.dport_hi) = (lo, hi);
    }
    Some(r)
}

/// Compiles a rewrite for the XDP program.
pub fn compile_nat(spec: &RewriteSpec, ifindex: impl Fn(&str) -> Option<u32>) -> Option<Nat> {
    let mut rule = compile(&spec.matches, ACTION_FORWARD, ifindex)?;
    let mut nat = Nat::default();
    let bytes = |a: IpAddr| match a {
        IpAddr::V4(v4) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&v4.octets());
            b
        }
        IpAddr::V6(v6) => v6.octets(),
    };
    for (addr, bit, slot) in
        [(spec.set_src, NAT_SRC, &mut nat.src), (spec.set_dst, NAT_DST, &mut nat.dst)]
    {
        if let Some(a) = addr {
            nat.set |= bit;
            *slot = bytes(a);
            rule.fields |= if a.is_ipv4() { RULE_V4 } else { RULE_V6 };
        }
    }
    if let Some(p) = spec.set_src_port {
        nat.set |= NAT_SPORT;
        nat.sport = p;
    }
    if let Some(p) = spec.set_dst_port {
        nat.set |= NAT_DPORT;
        nat.dport = p;
    }
    nat.rule = rule;
    Some(nat)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../docs/xdpfwd.example.toml");

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

    #[test]
    fn compiles_rewrites() {
        let c = parse("f", "[[rewrite]]\nmatch = { proto = \"udp\", dst = \"198.19.0.10/32\", dst_port = 53 }\nset_dst = \"198.19.0.20\"\nset_dst_port = 5353\n").unwrap();
        let n = compile_nat(&c.rewrites[0], |_| None).unwrap();
        assert_eq!(n.set, NAT_DST | NAT_DPORT);
        assert_eq!((n.dport, &n.dst[..4]), (5353, &[198, 19, 0, 20][..]));
        assert_eq!(n.rule.fields, RULE_PROTO | RULE_DST | RULE_DPORT | RULE_V4);
    }

    #[test]
    fn compiles_prefixes_ports_and_interfaces() {
        let c = parse(
            "f",
            "[[interface]]\nname = \"r0\"\n[[rule]]\nin = \"r0\"\nproto = \"udp\"\ndst = \"198.19.0.0/24\"\ndst_port = \"9000-9100\"\naction = \"fast\"\n",
        )
        .unwrap();
        let r =
            compile(&c.rules[0].matches, c.rules[0].action, |n| (n == "r0").then_some(7)).unwrap();
        assert_eq!(r.fields, RULE_IN | RULE_PROTO | RULE_DST | RULE_DPORT | RULE_V4);
        assert_eq!(
            (r.in_ifindex, r.proto, r.dport_lo, r.dport_hi, r.action),
            (7, 17, 9000, 9100, ACTION_FAST)
        );
        let mut want = [0u8; 16];
        want[..4].copy_from_slice(&[198, 19, 0, 0]);
        assert_eq!(r.dst[0], u64::from_ne_bytes(want[..8].try_into().unwrap()));
        let mut mask = [0u8; 16];
        mask[..4].copy_from_slice(&[255, 255, 255, 0]);
        assert_eq!(r.dst_mask[0], u64::from_ne_bytes(mask[..8].try_into().unwrap()));
        assert!(compile(&c.rules[0].matches, 0, |_| None).is_none(), "unknown interface");
    }
}
