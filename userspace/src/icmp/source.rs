//! The source address of an ICMPv6 error, chosen as `icmp6_send` does when the route back has
//! no preferred source: `ipv6_dev_get_saddr` with the interface the packet arrived on as the
//! "outgoing" one (so a router answers from the address of the link a packet came in by,
//! even where the answer leaves by another). The rules of RFC 6724 section 5 as
//! `ipv6_get_saddr_eval` (`net/ipv6/addrconf.c`) ranks them, with the default policy table
//! (`ip addrlabel`); Mobile IPv6 home addresses are not considered.

use std::net::Ipv6Addr;

/// `IFA_F_TEMPORARY` (`IFA_F_SECONDARY`).
pub const TEMPORARY: u32 = 0x01;
/// `IFA_F_OPTIMISTIC`.
pub const OPTIMISTIC: u32 = 0x04;
/// `IFA_F_DEPRECATED`.
pub const DEPRECATED: u32 = 0x20;
/// `IFA_F_TENTATIVE`.
pub const TENTATIVE: u32 = 0x40;

/// An IPv6 address of the namespace, in the kernel's order (interfaces by index, each one's
/// addresses by decreasing scope, newest first: what an `RTM_GETADDR` dump gives).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub addr: Ipv6Addr,
    pub ifindex: u32,
    pub prefix_len: u8,
    /// `IFA_F_*`.
    pub flags: u32,
    /// The interface's `use_tempaddr` is 2 or more (temporary addresses preferred).
    pub prefer_temporary: bool,
}

/// The scope `__ipv6_addr_src_scope` gives an address (`IPV6_ADDR_SCOPE_*`); `None` for `::`.
fn scope(a: &Ipv6Addr) -> Option<u8> {
    let o = a.octets();
    Some(match o[0] {
        0xff => o[1] & 0x0f,
        0xfe if o[1] & 0xc0 == 0x80 => 0x02,
        0xfe if o[1] & 0xc0 == 0xc0 => 0x05,
        _ if a.is_unspecified() => return None,
        _ if *a == Ipv6Addr::LOCALHOST => 0x02,
        _ => 0x0e,
    })
}

/// Loopback, IPv4-mapped and IPv4-compatible addresses are always preferred (rule 3).
fn always_preferred(a: &Ipv6Addr) -> bool {
    let s = a.segments();
    s[..5] == [0; 5] && (s[5] == 0xffff || s[5] == 0)
}

/// The default policy table's label (`ip addrlabel`, RFC 6724 as Linux ships it): prefix,
/// length, label; the prefixes are disjoint but for `::1` inside `::/96`, listed first.
fn label(a: &Ipv6Addr) -> u8 {
    const TABLE: [(u128, u8, u8); 9] = [
        (1, 128, 0),
        (0xffff_0000_0000, 96, 4),
        (0, 96, 3),
        (0x2001_0010 << 96, 28, 7),
        (0x2001 << 112, 32, 6),
        (0x2002 << 112, 16, 2),
        (0x3ffe << 112, 16, 12),
        (0xfec0 << 112, 10, 11),
        (0xfc00 << 112, 7, 5),
    ];
    let a = u128::from(*a);
    TABLE
        .iter()
        .find(|(prefix, len, _)| (a ^ prefix).leading_zeros() >= u32::from(*len))
        .map_or(1, |(_, _, l)| *l)
}

/// Leading bits `a` and `b` share (`ipv6_addr_diff`; 128 when equal).
fn common_bits(a: &Ipv6Addr, b: &Ipv6Addr) -> u8 {
    (u128::from(*a) ^ u128::from(*b)).leading_zeros() as u8
}

fn orchid(a: &Ipv6Addr) -> bool {
    u128::from(*a) >> 100 == 0x2001_0010 >> 4
}

/// The source `ipv6_dev_get_saddr(dst_dev = oif, daddr = dst)` picks among `candidates`.
pub fn select(candidates: &[Candidate], dst: Ipv6Addr, oif: u32) -> Option<Ipv6Addr> {
    let dst_scope = scope(&dst).unwrap_or(0);
    // Multicast and link-local destinations: the outgoing interface's addresses only.
    let oif_only = dst.is_multicast() || dst_scope <= 0x02;
    let mut best: Option<(&Candidate, [i32; 9])> = None;
    for c in candidates {
        if (c.flags & TENTATIVE != 0 && c.flags & OPTIMISTIC == 0)
            || c.addr.is_multicast()
            || (oif_only && c.ifindex != oif)
        {
            continue;
        }
        let Some(src_scope) = scope(&c.addr) else { continue };
        let score = rank(c, src_scope, &dst, dst_scope, oif);
        // The first of equals stays (the kernel replaces only on a better rule).
        if best.as_ref().is_none_or(|(_, b)| score > *b) {
            best = Some((c, score));
        }
    }
    best.map(|(c, _)| c.addr)
}

/// The candidate's values for the rules in order (rules 1, 2, 3, 5, 6, 7, ORCHID, 8, and not
/// optimistic), compared lexicographically, higher better.
fn rank(c: &Candidate, src_scope: u8, dst: &Ipv6Addr, dst_scope: u8, oif: u32) -> [i32; 9] {
    let scope = i32::from(src_scope);
    let scope_rule = if src_scope >= dst_scope { -scope } else { scope - 128 };
    let avoid = DEPRECATED | OPTIMISTIC;
    let temporary = c.flags & TEMPORARY != 0;
    [
        i32::from(c.addr == *dst),
        scope_rule,
        i32::from(always_preferred(&c.addr) || c.flags & avoid == 0),
        i32::from(oif == 0 || c.ifindex == oif),
        i32::from(label(&c.addr) == label(dst)),
        i32::from(!temporary ^ c.prefer_temporary),
        i32::from(orchid(&c.addr) == orchid(dst)),
        i32::from(common_bits(&c.addr, dst).min(c.prefix_len)),
        i32::from(c.flags & OPTIMISTIC == 0),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(addr: &str, ifindex: u32, prefix_len: u8, flags: u32) -> Candidate {
        Candidate {
            addr: addr.parse().unwrap(),
            ifindex,
            prefix_len,
            flags,
            prefer_temporary: false,
        }
    }

    fn pick(candidates: &[Candidate], dst: &str, oif: u32) -> Option<String> {
        select(candidates, dst.parse().unwrap(), oif).map(|a| a.to_string())
    }

    /// The forwarder of the tests: `lo`, the client's link (2) and the server's (3).
    fn router() -> Vec<Candidate> {
        vec![
            c("::1", 1, 128, 0),
            c("2001:2:0:1::1", 2, 64, 0),
            c("fe80::1", 2, 64, 0),
            c("2001:2:0:2::1", 3, 64, 0),
            c("fe80::2", 3, 64, 0),
        ]
    }

    #[test]
    fn the_ingress_address_wins_over_the_longer_match_elsewhere() {
        // An error to the server's address for a packet that came in from the client's link:
        // rule 5 (the "outgoing" interface, the ingress here) before rule 8.
        assert_eq!(pick(&router(), "2001:2:0:2::2", 2).as_deref(), Some("2001:2:0:1::1"));
        assert_eq!(pick(&router(), "2001:2:0:2::2", 3).as_deref(), Some("2001:2:0:2::1"));
        // No interface: the longest match.
        assert_eq!(pick(&router(), "2001:2:0:2::2", 0).as_deref(), Some("2001:2:0:2::1"));
    }

    #[test]
    fn scope_comes_before_the_interface() {
        // The ingress has a link-local address only: a global one of another link wins.
        let only_ll = [c("fe80::1", 2, 64, 0), c("2001:2:0:2::1", 3, 64, 0)];
        assert_eq!(pick(&only_ll, "2001:2:0:9::9", 2).as_deref(), Some("2001:2:0:2::1"));
        // A link-local destination: the interface's own addresses only, link-local first.
        assert_eq!(pick(&router(), "fe80::99", 3).as_deref(), Some("fe80::2"));
        assert_eq!(pick(&[c("2001:2:0:2::1", 3, 64, 0)], "fe80::99", 2), None);
    }

    #[test]
    fn deprecated_tentative_and_temporary_addresses() {
        let mut v = vec![c("2001:2:0:1::5", 2, 64, DEPRECATED), c("2001:2:0:1::6", 2, 64, 0)];
        assert_eq!(pick(&v, "2001:2:0:1::9", 2).as_deref(), Some("2001:2:0:1::6"));
        v[1].flags = TENTATIVE;
        assert_eq!(pick(&v, "2001:2:0:1::9", 2).as_deref(), Some("2001:2:0:1::5"));
        let mut t = vec![c("2001:2:0:1::7", 2, 64, TEMPORARY), c("2001:2:0:1::8", 2, 64, 0)];
        assert_eq!(pick(&t, "2001:2:0:1::9", 2).as_deref(), Some("2001:2:0:1::8"), "public");
        t[0].prefer_temporary = true;
        t[1].prefer_temporary = true;
        assert_eq!(pick(&t, "2001:2:0:1::9", 2).as_deref(), Some("2001:2:0:1::7"));
    }

    #[test]
    fn labels_and_prefixes_break_ties_then_the_first_stays() {
        // A ULA destination prefers the ULA source (label 5) over a 2001::/32 one (6).
        let v = [c("2001:2:0:1::1", 2, 64, 0), c("fd00::1", 2, 64, 0)];
        assert_eq!(pick(&v, "fd00:1::1", 2).as_deref(), Some("fd00::1"));
        // The match is capped by the candidate's prefix length.
        let w = [c("2001:2:0:1::1", 2, 48, 0), c("2001:2:0:1:8000::1", 2, 64, 0)];
        assert_eq!(pick(&w, "2001:2:0:1::9", 2).as_deref(), Some("2001:2:0:1:8000::1"));
        let same = [c("2001:2:0:1::1", 2, 64, 0), c("2001:2:0:1::2", 2, 64, 0)];
        assert_eq!(pick(&same, "2001:2:0:9::9", 2).as_deref(), Some("2001:2:0:1::1"));
    }

    #[test]
    fn address_kinds() {
        let a = |s: &str| s.parse::<Ipv6Addr>().unwrap();
        assert_eq!(scope(&a("ff02::1")), Some(2));
        assert_eq!(scope(&a("ff0e::1")), Some(0x0e));
        assert_eq!(scope(&a("fec0::1")), Some(5));
        assert_eq!(scope(&a("::1")), Some(2));
        assert_eq!(scope(&a("::")), None);
        assert_eq!(label(&a("2001:10::1")), 7);
        assert_eq!(label(&a("::ffff:198.18.1.2")), 4);
        assert_eq!(label(&a("::198.18.1.2")), 3);
        assert_eq!(label(&a("2600::1")), 1);
        assert!(orchid(&a("2001:1f::1")) && !orchid(&a("2001:20::1")));
        assert!(always_preferred(&a("::ffff:1.2.3.4")) && always_preferred(&a("::1")));
        assert_eq!(common_bits(&a("2001:2::"), &a("2001:2::")), 128);
    }
}
