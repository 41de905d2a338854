//! The TOML configuration (`--config FILE`): interfaces, steering rules and the default for
//! unmatched traffic; parsed, validated and compiled into the XDP program's rule format.
//! Every error names the file, the line and column, and the field.
//!
//! ```toml
//! [defaults]
//! unmatched = "forward"      # forward | kernel | drop | fast
//!
//! [[interface]]
//! name = "r0"
//!
//! [[rule]]                   # first match wins, in file order
//! in = "r0"
//! proto = "udp"              # tcp | udp | icmp | icmpv6 | a number
//! dst = "198.19.0.0/24"
//! dst_port = "9000-9100"     # or 9000
//! action = "fast"            # forward | kernel | drop | fast
//! ```

use std::{fmt, net::IpAddr, ops::Range, path::Path};

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;
use xdpfwd_common::{
    ACTION_DROP, ACTION_FAST, ACTION_FORWARD, ACTION_KERNEL, MAX_RULES, RULE_DPORT, RULE_DST,
    RULE_IN, RULE_PROTO, RULE_SPORT, RULE_SRC, RULE_V4, RULE_V6, Rule,
};

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
    action: Spanned<String>,
}

/// A steering rule before interface names are resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSpec {
    pub input: Option<String>,
    pub proto: Option<u8>,
    pub src: Option<IpNet>,
    pub dst: Option<IpNet>,
    pub src_port: Option<(u16, u16)>,
    pub dst_port: Option<(u16, u16)>,
    pub action: u32,
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub interfaces: Vec<String>,
    pub rules: Vec<RuleSpec>,
    /// Action for transit traffic that matches no rule.
    pub unmatched: u32,
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
    let at = |span: Range<usize>, field: String, message: String| {
        let (line, column) = position(text, span.start);
        ConfigError { file: file.to_owned(), line, column, field, message }
    };
    let parsed: File = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        at(span, String::new(), e.message().trim().to_owned())
    })?;
    let mut interfaces = Vec::new();
    for (i, iface) in parsed.interface.iter().enumerate() {
        let name = iface.name.get_ref();
        if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
            return Err(at(
                iface.name.span(),
                format!("interface[{i}].name"),
                format!("invalid interface name {name:?}"),
            ));
        }
        if interfaces.contains(name) {
            return Err(at(
                iface.name.span(),
                format!("interface[{i}].name"),
                format!("interface {name:?} is listed twice"),
            ));
        }
        interfaces.push(name.clone());
    }
    let unmatched = match &parsed.defaults.unmatched {
        Some(a) => action(a.get_ref()).ok_or_else(|| {
            at(
                a.span(),
                "defaults.unmatched".into(),
                format!("unknown action {:?}: expected forward, kernel, drop or fast", a.get_ref()),
            )
        })?,
        None => ACTION_FORWARD,
    };
    if parsed.rule.len() > MAX_RULES as usize {
        return Err(at(
            0..0,
            "rule".into(),
            format!("{} rules; at most {MAX_RULES}", parsed.rule.len()),
        ));
    }
    let mut rules = Vec::new();
    for (i, r) in parsed.rule.iter().enumerate() {
        let field = |name: &str| format!("rule[{i}].{name}");
        let input = match &r.input {
            Some(name) if !interfaces.contains(name.get_ref()) => {
                return Err(at(
                    name.span(),
                    field("in"),
                    format!("{:?} is not a configured [[interface]]", name.get_ref()),
                ));
            }
            Some(name) => Some(name.get_ref().clone()),
            None => None,
        };
        let proto = match &r.proto {
            Some(p) => Some(protocol(p.get_ref()).ok_or_else(|| {
                at(
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
        let prefix =
            |v: &Option<Spanned<String>>, name: &str| -> Result<Option<IpNet>, ConfigError> {
                match v {
                    Some(s) => s
                        .get_ref()
                        .parse::<IpNet>()
                        .or_else(|_| s.get_ref().parse::<IpAddr>().map(IpNet::from))
                        .map(|n| Some(n.trunc()))
                        .map_err(|_| {
                            at(s.span(), field(name), format!("invalid prefix {:?}", s.get_ref()))
                        }),
                    None => Ok(None),
                }
            };
        let src = prefix(&r.src, "src")?;
        let dst = prefix(&r.dst, "dst")?;
        if let (Some(s), Some(d)) = (src, dst)
            && s.addr().is_ipv4() != d.addr().is_ipv4()
        {
            return Err(at(
                r.dst.as_ref().map_or(0..0, Spanned::span),
                field("dst"),
                "src and dst are of different IP versions".into(),
            ));
        }
        let range = |v: &Option<Spanned<toml::Value>>,
                     name: &str|
         -> Result<Option<(u16, u16)>, ConfigError> {
            match v {
                Some(p) => port_range(p.get_ref()).map(Some).ok_or_else(|| {
                    at(
                        p.span(),
                        field(name),
                        format!(
                            "invalid port or range {}: expected 80 or \"1000-2000\"",
                            p.get_ref()
                        ),
                    )
                }),
                None => Ok(None),
            }
        };
        let src_port = range(&r.src_port, "src_port")?;
        let dst_port = range(&r.dst_port, "dst_port")?;
        if (src_port.is_some() || dst_port.is_some()) && !matches!(proto, Some(6 | 17)) {
            let span = r.dst_port.as_ref().or(r.src_port.as_ref()).map_or(0..0, Spanned::span);
            return Err(at(
                span,
                field(if r.dst_port.is_some() { "dst_port" } else { "src_port" }),
                "ports need proto = \"tcp\" or \"udp\"".into(),
            ));
        }
        let act = action(r.action.get_ref()).ok_or_else(|| {
            at(
                r.action.span(),
                field("action"),
                format!(
                    "unknown action {:?}: expected forward, kernel, drop or fast",
                    r.action.get_ref()
                ),
            )
        })?;
        rules.push(RuleSpec { input, proto, src, dst, src_port, dst_port, action: act });
    }
    Ok(Config { interfaces, rules, unmatched })
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

/// Compiles a rule for the XDP program; `ifindex` resolves interface names.
pub fn compile(spec: &RuleSpec, ifindex: impl Fn(&str) -> Option<u32>) -> Option<Rule> {
    let mut r = Rule { action: spec.action, ..Rule::default() };
    if let Some(name) = &spec.input {
        r.fields |= RULE_IN;
        r.in_ifindex = ifindex(name)?;
    }
    if let Some(p) = spec.proto {
        r.fields |= RULE_PROTO;
        r.proto = u32::from(p);
    }
    let words = |b: [u8; 16]| {
        [
            u64::from_ne_bytes(b[0..8].try_into().unwrap_or_default()),
            u64::from_ne_bytes(b[8..16].try_into().unwrap_or_default()),
        ]
    };
    let split = |net: &IpNet| -> ([u64; 2], [u64; 2], bool) {
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
    };
    for (net, is_src) in [(&spec.src, true), (&spec.dst, false)] {
        if let Some(net) = net {
            let (addr, mask, v4) = split(net);
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

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../docs/xdpfwd.example.toml");

    #[test]
    fn the_example_is_valid() {
        let c = parse("example.toml", EXAMPLE).unwrap();
        assert_eq!(c.interfaces, ["r0", "r1"]);
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
    fn compiles_prefixes_ports_and_interfaces() {
        let c = parse(
            "f",
            "[[interface]]\nname = \"r0\"\n[[rule]]\nin = \"r0\"\nproto = \"udp\"\ndst = \"198.19.0.0/24\"\ndst_port = \"9000-9100\"\naction = \"fast\"\n",
        )
        .unwrap();
        let r = compile(&c.rules[0], |n| (n == "r0").then_some(7)).unwrap();
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
        assert!(compile(&c.rules[0], |_| None).is_none(), "unknown interface");
    }
}
