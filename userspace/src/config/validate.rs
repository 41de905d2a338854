//! Validation: every table of the file checked, one function per section, into the
//! [`Config`] the rest of xdpfwd reads. Every error names the file, the line and column, and
//! the field.

use std::{net::IpAddr, ops::Range};

use ipnet::IpNet;
use toml::Spanned;
use xdpfwd_common::{Action, MAX_NATS, MAX_QUEUES, MAX_RULES};

use super::{
    ConfigError, EcmpMode, InterfaceSpec, MatchSpec, RewriteSpec, RouteSpec, RuleSpec,
    XconnectSpec,
    file::{Defaults, InterfaceCfg, MatchCfg, RewriteCfg, RouteCfg, RuleCfg, XconnectCfg},
};
use crate::{egress_path::DefaultPath, loader::ModeArg, netfilter::NetfilterMode};

/// Builds located errors for one file.
pub(super) struct Locator<'a> {
    pub file: &'a str,
    pub text: &'a str,
}

impl Locator<'_> {
    /// A located error.
    pub fn at(&self, span: Range<usize>, field: impl Into<String>, message: String) -> ConfigError {
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

    fn action(&self, v: &Spanned<String>, field: String) -> Result<Action, ConfigError> {
        Action::from_name(v.get_ref()).ok_or_else(|| {
            self.at(
                v.span(),
                field,
                format!(
                    "unknown action {:?}: expected forward, kernel, drop, fast or af_xdp",
                    v.get_ref()
                ),
            )
        })
    }

    fn mode(&self, v: &Spanned<String>, field: String) -> Result<ModeArg, ConfigError> {
        match v.get_ref().as_str() {
            "auto" => Ok(ModeArg::Auto),
            "native" => Ok(ModeArg::Native),
            "skb" => Ok(ModeArg::Skb),
            other => Err(self.at(
                v.span(),
                field,
                format!("unknown mode {other:?}: expected auto, native or skb"),
            )),
        }
    }

    fn queues(&self, v: &Spanned<i64>, field: String) -> Result<u32, ConfigError> {
        u32::try_from(*v.get_ref()).ok().filter(|n| (1..=MAX_QUEUES).contains(n)).ok_or_else(|| {
            self.at(
                v.span(),
                field,
                format!("invalid queue count {}: expected 1-{MAX_QUEUES}", v.get_ref()),
            )
        })
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

/// `[[interface]]`: names, attach modes, queue counts and VLAN handling.
pub(super) fn interfaces(
    loc: &Locator,
    tables: &[InterfaceCfg],
) -> Result<Vec<InterfaceSpec>, ConfigError> {
    let mut interfaces: Vec<InterfaceSpec> = Vec::new();
    for (i, iface) in tables.iter().enumerate() {
        let field = |name: &str| format!("interface[{i}].{name}");
        let name = iface.name.get_ref();
        if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
            let message = format!("invalid interface name {name:?}");
            return Err(loc.at(iface.name.span(), field("name"), message));
        }
        if interfaces.iter().any(|x| &x.name == name) {
            let message = format!("interface {name:?} is listed twice");
            return Err(loc.at(iface.name.span(), field("name"), message));
        }
        interfaces.push(InterfaceSpec {
            name: name.clone(),
            mode: iface.mode.as_ref().map(|m| loc.mode(m, field("mode"))).transpose()?,
            queues: iface.queues.as_ref().map(|q| loc.queues(q, field("queues"))).transpose()?,
            vlan_pop: iface.vlan_pop.unwrap_or(false),
            vlan_push: iface
                .vlan_push
                .as_ref()
                .map(|v| loc.vlan(v, field("vlan_push")))
                .transpose()?,
        });
    }
    Ok(interfaces)
}

/// `[defaults]`: the action for unmatched transit traffic.
pub(super) fn unmatched(loc: &Locator, defaults: &Defaults) -> Result<Action, ConfigError> {
    match &defaults.unmatched {
        Some(a) => loc.action(a, "defaults.unmatched".into()),
        None => Ok(Action::Forward),
    }
}

/// `[defaults]`: who chooses an ECMP path where the kernel's hash cannot be computed.
pub(super) fn ecmp(loc: &Locator, defaults: &Defaults) -> Result<EcmpMode, ConfigError> {
    match &defaults.ecmp {
        Some(v) => EcmpMode::from_name(v.get_ref()).ok_or_else(|| {
            loc.at(
                v.span(),
                "defaults.ecmp",
                format!("unknown ecmp mode {:?}: expected exact or own-hash", v.get_ref()),
            )
        }),
        None => Ok(EcmpMode::Exact),
    }
}

/// `[defaults]`: what to do while netfilter hooks see forwarded traffic.
pub(super) fn netfilter(loc: &Locator, defaults: &Defaults) -> Result<NetfilterMode, ConfigError> {
    match &defaults.netfilter {
        Some(v) => NetfilterMode::from_name(v.get_ref()).ok_or_else(|| {
            loc.at(
                v.span(),
                "defaults.netfilter",
                format!("unknown netfilter mode {:?}: expected defer or warn", v.get_ref()),
            )
        }),
        None => Ok(NetfilterMode::Defer),
    }
}

/// `[defaults]`: the path of plain forwarding (`None`: not set, `auto` unless the command
/// line says otherwise).
pub(super) fn path(loc: &Locator, defaults: &Defaults) -> Result<Option<DefaultPath>, ConfigError> {
    defaults
        .path
        .as_ref()
        .map(|v| {
            DefaultPath::from_name(v.get_ref()).ok_or_else(|| {
                loc.at(
                    v.span(),
                    "defaults.path",
                    format!("unknown path {:?}: expected auto, af_xdp or fast", v.get_ref()),
                )
            })
        })
        .transpose()
}

/// `[[xconnect]]`: pairs of configured interfaces, each in one pair at most.
pub(super) fn xconnects(
    loc: &Locator,
    tables: &[XconnectCfg],
    interfaces: &[InterfaceSpec],
) -> Result<Vec<XconnectSpec>, ConfigError> {
    let mut xconnects: Vec<XconnectSpec> = Vec::new();
    for (i, x) in tables.iter().enumerate() {
        let field = |name: &str| format!("xconnect[{i}].{name}");
        let a = loc.interface(&x.a, field("a"), interfaces)?;
        let b = loc.interface(&x.b, field("b"), interfaces)?;
        for (name, span, f) in [(&a, x.a.span(), "a"), (&b, x.b.span(), "b")] {
            if xconnects.iter().any(|o| &o.a == name || &o.b == name) {
                let message = format!("{name:?} is already in another cross-connect");
                return Err(loc.at(span, field(f), message));
            }
        }
        if a == b {
            return Err(loc.at(x.b.span(), field("b"), "a and b are the same interface".into()));
        }
        let mac_a = x.mac_a.as_ref().map(|m| loc.mac(m, field("mac_a"))).transpose()?;
        let mac_b = x.mac_b.as_ref().map(|m| loc.mac(m, field("mac_b"))).transpose()?;
        xconnects.push(XconnectSpec { a, b, mac_a, mac_b });
    }
    Ok(xconnects)
}

/// Whether `name` is a cross-connected interface (which carries no routed traffic).
fn crossed(xconnects: &[XconnectSpec], name: Option<&String>) -> bool {
    name.is_some_and(|n| xconnects.iter().any(|x| &x.a == n || &x.b == n))
}

/// `[[rule]]`: steering rules, first match wins.
pub(super) fn rules(
    loc: &Locator,
    tables: &[RuleCfg],
    interfaces: &[InterfaceSpec],
    xconnects: &[XconnectSpec],
) -> Result<Vec<RuleSpec>, ConfigError> {
    if tables.len() > MAX_RULES as usize {
        let message = format!("{} rules; at most {MAX_RULES}", tables.len());
        return Err(loc.at(0..0, "rule", message));
    }
    let mut rules = Vec::new();
    for (i, r) in tables.iter().enumerate() {
        let field = |name: &str| format!("rule[{i}].{name}");
        let matches = loc.matches(&r.matches(), &field, interfaces)?;
        if crossed(xconnects, matches.input.as_ref()) {
            return Err(loc.at(
                r.input.as_ref().map_or(0..0, Spanned::span),
                field("in"),
                "the interface is cross-connected: its frames bypass the rules".into(),
            ));
        }
        let action = loc.action(&r.action, field("action"))?;
        let name = r.name.as_ref().map(|n| n.get_ref().clone());
        rules.push(RuleSpec { matches, action, name });
    }
    Ok(rules)
}

/// `[[route]]`: static routes, one per prefix.
pub(super) fn routes(
    loc: &Locator,
    tables: &[RouteCfg],
    interfaces: &[InterfaceSpec],
    xconnects: &[XconnectSpec],
) -> Result<Vec<RouteSpec>, ConfigError> {
    let mut routes: Vec<RouteSpec> = Vec::new();
    for (i, r) in tables.iter().enumerate() {
        let route = route(loc, i, r, interfaces, xconnects)?;
        if routes.iter().any(|o| o.dst == route.dst) {
            let message = format!("a second route to {}", route.dst);
            return Err(loc.at(r.dst.span(), format!("route[{i}].dst"), message));
        }
        routes.push(route);
    }
    Ok(routes)
}

fn route(
    loc: &Locator,
    i: usize,
    r: &RouteCfg,
    interfaces: &[InterfaceSpec],
    xconnects: &[XconnectSpec],
) -> Result<RouteSpec, ConfigError> {
    let field = |name: &str| format!("route[{i}].{name}");
    let dst = loc.prefix(&r.dst, field("dst"))?;
    let via = r.via.as_ref().map(|v| loc.addr(v, field("via"))).transpose()?;
    let dev = r.dev.as_ref().map(|v| loc.interface(v, field("dev"), interfaces)).transpose()?;
    let mac = r.mac.as_ref().map(|v| loc.mac(v, field("mac"))).transpose()?;
    let vlan = r.vlan.as_ref().map(|v| loc.vlan(v, field("vlan"))).transpose()?;
    let missing = match (&via, &mac) {
        (Some(_), Some(_)) => Some(("mac", "give either via or mac, not both")),
        (None, None) => Some(("via", "a route needs via (a next-hop address) or dev + mac")),
        (None, Some(_)) if dev.is_none() => Some(("dev", "a route with a fixed mac needs dev")),
        _ => None,
    };
    if let Some((name, message)) = missing {
        return Err(loc.at(r.dst.span(), field(name), message.into()));
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
    if crossed(xconnects, dev.as_ref()) {
        return Err(loc.at(
            r.dev.as_ref().map_or(0..0, Spanned::span),
            field("dev"),
            "the interface is cross-connected: it carries no routed traffic".into(),
        ));
    }
    Ok(RouteSpec { dst, via, dev, mac, vlan })
}

/// `[[rewrite]]`: stateless NAT rewrites, first match wins.
pub(super) fn rewrites(
    loc: &Locator,
    tables: &[RewriteCfg],
    interfaces: &[InterfaceSpec],
    xconnects: &[XconnectSpec],
) -> Result<Vec<RewriteSpec>, ConfigError> {
    if tables.len() > MAX_NATS as usize {
        let message = format!("{} rewrites; at most {MAX_NATS}", tables.len());
        return Err(loc.at(0..0, "rewrite", message));
    }
    tables.iter().enumerate().map(|(i, r)| rewrite(loc, i, r, interfaces, xconnects)).collect()
}

fn rewrite(
    loc: &Locator,
    i: usize,
    r: &RewriteCfg,
    interfaces: &[InterfaceSpec],
    xconnects: &[XconnectSpec],
) -> Result<RewriteSpec, ConfigError> {
    let field = |name: &str| format!("rewrite[{i}].{name}");
    let match_field = |name: &str| format!("rewrite[{i}].match.{name}");
    let matches = loc.matches(r.matches.get_ref(), &match_field, interfaces)?;
    let spec = RewriteSpec {
        name: r.name.as_ref().map(|n| n.get_ref().clone()),
        set_src: r.set_src.as_ref().map(|v| loc.addr(v, field("set_src"))).transpose()?,
        set_dst: r.set_dst.as_ref().map(|v| loc.addr(v, field("set_dst"))).transpose()?,
        set_src_port: r
            .set_src_port
            .as_ref()
            .map(|v| loc.port(v, field("set_src_port")))
            .transpose()?,
        set_dst_port: r
            .set_dst_port
            .as_ref()
            .map(|v| loc.port(v, field("set_dst_port")))
            .transpose()?,
        matches,
    };
    let (sets_addr, sets_port) = (
        spec.set_src.is_some() || spec.set_dst.is_some(),
        spec.set_src_port.is_some() || spec.set_dst_port.is_some(),
    );
    if !sets_addr && !sets_port {
        return Err(loc.at(
            r.matches.span(),
            field("set_dst"),
            "a rewrite needs at least one of set_src, set_dst, set_src_port, set_dst_port".into(),
        ));
    }
    one_version(loc, r, &spec, &field)?;
    if sets_addr && spec.matches.src.is_none() && spec.matches.dst.is_none() {
        return Err(loc.at(
            r.matches.span(),
            field("match"),
            "an address rewrite needs match.src or match.dst (of the same IP version)".into(),
        ));
    }
    if sets_port && !matches!(spec.matches.proto, Some(1 | 6 | 17 | 58)) {
        let span = r.set_dst_port.as_ref().or(r.set_src_port.as_ref()).map_or(0..0, Spanned::span);
        return Err(loc.at(
            span,
            field(if r.set_dst_port.is_some() { "set_dst_port" } else { "set_src_port" }),
            "port rewrites need match.proto = tcp, udp, icmp or icmpv6 (echo identifier)".into(),
        ));
    }
    if crossed(xconnects, spec.matches.input.as_ref()) {
        return Err(loc.at(
            r.matches.span(),
            match_field("in"),
            "the interface is cross-connected: its frames are not rewritten".into(),
        ));
    }
    Ok(spec)
}

/// Every address of a rewrite must be of one IP version.
fn one_version(
    loc: &Locator,
    r: &RewriteCfg,
    spec: &RewriteSpec,
    field: &dyn Fn(&str) -> String,
) -> Result<(), ConfigError> {
    let mut version = None;
    let addrs = [
        (spec.matches.src.map(|n| n.addr()), "match.src", r.matches.span()),
        (spec.matches.dst.map(|n| n.addr()), "match.dst", r.matches.span()),
        (spec.set_src, "set_src", r.set_src.as_ref().map_or(0..0, Spanned::span)),
        (spec.set_dst, "set_dst", r.set_dst.as_ref().map_or(0..0, Spanned::span)),
    ];
    for (addr, name, span) in addrs {
        let Some(addr) = addr else { continue };
        match version {
            Some(v4) if v4 != addr.is_ipv4() => {
                let message = "mixes IPv4 and IPv6 addresses in one rewrite".into();
                return Err(loc.at(span, field(name), message));
            }
            _ => version = Some(addr.is_ipv4()),
        }
    }
    Ok(())
}

pub(super) fn parse_mac(s: &str) -> Option<[u8; 6]> {
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
