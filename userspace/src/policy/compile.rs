//! Rules and rewrites compiled for the XDP program: the configuration's [`MatchSpec`]s as
//! [`Rule`]s and [`Nat`]s, with interface names resolved to ifindexes and prefixes as the
//! word pairs the program compares. The kernel's policy rules (`fib_rules`) use
//! [`prefix_words`] too.

use std::net::IpAddr;

use ipnet::IpNet;
use xdpfwd_common::{Action, Nat, NatFields, Rule, RuleFields};

use crate::config::{MatchSpec, RewriteSpec};

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
    action: Action,
    ifindex: impl Fn(&str) -> Option<u32>,
) -> Option<Rule> {
    let mut r = Rule { action: action as u32, ..Rule::default() };
    if let Some(name) = &spec.input {
        r.fields |= RuleFields::IN;
        r.in_ifindex = ifindex(name)?;
    }
    if let Some(p) = spec.proto {
        r.fields |= RuleFields::PROTO;
        r.proto = u16::from(p);
    }
    if let Some(v) = spec.vlan {
        r.fields |= RuleFields::VLAN;
        r.vlan = v;
    }
    for (net, is_src) in [(&spec.src, true), (&spec.dst, false)] {
        if let Some(net) = net {
            let (addr, mask, v4) = prefix_words(net);
            r.fields |= if v4 { RuleFields::V4 } else { RuleFields::V6 };
            if is_src {
                r.fields |= RuleFields::SRC;
                (r.src, r.src_mask) = (addr, mask);
            } else {
                r.fields |= RuleFields::DST;
                (r.dst, r.dst_mask) = (addr, mask);
            }
        }
    }
    if spec.proto == Some(1) {
        r.fields |= RuleFields::V4;
    }
    if spec.proto == Some(58) {
        r.fields |= RuleFields::V6;
    }
    if let Some((lo, hi)) = spec.src_port {
        r.fields |= RuleFields::SPORT;
        (r.sport_lo, r.sport_hi) = (lo, hi);
    }
    if let Some((lo, hi)) = spec.dst_port {
        r.fields |= RuleFields::DPORT;
        (r.dport_lo, r.dport_hi) = (lo, hi);
    }
    Some(r)
}

/// Compiles a rewrite for the XDP program.
pub fn compile_nat(spec: &RewriteSpec, ifindex: impl Fn(&str) -> Option<u32>) -> Option<Nat> {
    let mut rule = compile(&spec.matches, Action::Forward, ifindex)?;
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
        [(spec.set_src, NatFields::SRC, &mut nat.src), (spec.set_dst, NatFields::DST, &mut nat.dst)]
    {
        if let Some(a) = addr {
            nat.set |= bit;
            *slot = bytes(a);
            rule.fields |= if a.is_ipv4() { RuleFields::V4 } else { RuleFields::V6 };
        }
    }
    if let Some(p) = spec.set_src_port {
        nat.set |= NatFields::SPORT;
        nat.sport = p;
    }
    if let Some(p) = spec.set_dst_port {
        nat.set |= NatFields::DPORT;
        nat.dport = p;
    }
    nat.rule = rule;
    Some(nat)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    #[test]
    fn compiles_rewrites() {
        let c = parse("f", "[[rewrite]]\nmatch = { proto = \"udp\", dst = \"198.19.0.10/32\", dst_port = 53 }\nset_dst = \"198.19.0.20\"\nset_dst_port = 5353\n").unwrap();
        let n = compile_nat(&c.rewrites[0], |_| None).unwrap();
        assert_eq!(n.set, NatFields::DST | NatFields::DPORT);
        assert_eq!((n.dport, &n.dst[..4]), (5353, &[198, 19, 0, 20][..]));
        assert_eq!(
            n.rule.fields,
            RuleFields::PROTO | RuleFields::DST | RuleFields::DPORT | RuleFields::V4
        );
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
        assert_eq!(
            r.fields,
            RuleFields::IN
                | RuleFields::PROTO
                | RuleFields::DST
                | RuleFields::DPORT
                | RuleFields::V4
        );
        assert_eq!(
            (r.in_ifindex, r.proto, r.dport_lo, r.dport_hi, r.action),
            (7, 17, 9000, 9100, Action::Fast as u32)
        );
        let mut want = [0u8; 16];
        want[..4].copy_from_slice(&[198, 19, 0, 0]);
        assert_eq!(r.dst[0], u64::from_ne_bytes(want[..8].try_into().unwrap()));
        let mut mask = [0u8; 16];
        mask[..4].copy_from_slice(&[255, 255, 255, 0]);
        assert_eq!(r.dst_mask[0], u64::from_ne_bytes(mask[..8].try_into().unwrap()));
        assert!(
            compile(&c.rules[0].matches, Action::Forward, |_| None).is_none(),
            "unknown interface"
        );
    }
}
