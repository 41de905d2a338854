//! The ICMP error messages a router sends for a packet it cannot forward, as the kernel's
//! `__icmp_send` (`net/ipv4/icmp.c`) and `icmp6_send` (`net/ipv6/icmp.c`) build them: whether
//! a packet is answered at all, the ICMP header, and how much of the packet is quoted.
//!
//! Pure functions over the packet's bytes (from its IP header on); no I/O.

use etherparse::{
    Icmpv4Header, Icmpv4Type, Icmpv6Header, Icmpv6Type,
    icmpv4::{DestUnreachableHeader, TimeExceededCode},
    icmpv6::{self, DestUnreachableCode},
};
use xdpfwd_common::IcmpError;

/// Most bytes of an IPv4 error: "as much as we can without exceeding 576 bytes" (RFC 1812
/// 4.3.2.3); the quote is what remains after a 20-byte IP and an 8-byte ICMP header.
pub const QUOTE_V4: usize = 576 - 20 - 8;
/// Most bytes of an IPv6 error: the minimum MTU (RFC 4443 2.4 (c)); the quote is what remains
/// after a 40-byte IPv6 and an 8-byte ICMPv6 header.
pub const QUOTE_V6: usize = xdpfwd_common::ICMP_QUOTE_MAX;
/// Room for the longest message (header and quote).
pub const MESSAGE_MAX: usize = 8 + QUOTE_V6;

/// `NR_ICMP_TYPES`: the highest ICMP type the kernel knows.
const NR_ICMP_TYPES: u8 = 18;

/// ICMP types the kernel treats as errors (`icmp_pointers[type].error`): destination
/// unreachable, source quench, redirect, time exceeded, parameter problem.
fn is_v4_error(icmp_type: u8) -> bool {
    matches!(icmp_type, 3 | 4 | 5 | 11 | 12)
}

/// The type and code of `error` in the packet's family (`v6`), and whether the per-peer and
/// global limits may apply to it (the kernel never limits "fragmentation needed").
pub fn type_code(error: IcmpError, v6: bool) -> (u8, u8) {
    match (error, v6) {
        (IcmpError::TimeExceeded, false) => (11, 0),
        (IcmpError::TooBig, false) => (3, 4),
        (IcmpError::NoRoute, false) => (3, 0),
        (IcmpError::Unreachable, false) => (3, 1),
        (IcmpError::Prohibited, false) => (3, 13),
        (IcmpError::TimeExceeded, true) => (3, 0),
        (IcmpError::TooBig, true) => (2, 0),
        (IcmpError::NoRoute | IcmpError::Unreachable, true) => (1, 0),
        (IcmpError::Prohibited, true) => (1, 1),
    }
}

/// Whether the kernel would answer this IPv4 packet with an error: only the first fragment,
/// and never an ICMP error (or a type it does not know) or a packet too short to tell.
pub fn answerable_v4(packet: &[u8]) -> bool {
    if packet.len() < 20 {
        return false;
    }
    let offset = u16::from_be_bytes([packet[6], packet[7]]) & 0x1fff;
    if offset != 0 {
        return false;
    }
    if packet[9] != 1 {
        return true;
    }
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    match packet.get(ihl) {
        Some(&inner) => inner <= NR_ICMP_TYPES && !is_v4_error(inner),
        None => false,
    }
}

/// Whether the kernel would answer this IPv6 packet with an error (`is_ineligible` in
/// `net/ipv6/icmp.c`): not an ICMPv6 error, found behind the extension headers; a
/// non-first fragment whose ICMPv6 header is elsewhere is answered.
pub fn answerable_v6(packet: &[u8]) -> bool {
    if packet.len() < 40 {
        return false;
    }
    let (mut next, mut at) = (packet[6], 40);
    let mut fragment_offset = 0u16;
    // `ipv6_skip_exthdr`: hop-by-hop, routing, destination options, fragment, AH.
    for _ in 0..8 {
        match next {
            0 | 43 | 60 | 51 | 44 => {}
            _ => break,
        }
        let Some(header) = packet.get(at..at + 8) else { return false };
        if next == 44 {
            fragment_offset = u16::from_be_bytes([header[2], header[3]]) & !7;
            if fragment_offset != 0 {
                // The kernel stops at a non-first fragment: what follows is not a header.
                break;
            }
            (next, at) = (header[0], at + 8);
        } else if next == 51 {
            (next, at) = (header[0], at + (usize::from(header[1]) + 2) * 4);
        } else {
            (next, at) = (header[0], at + (usize::from(header[1]) + 1) * 8);
        }
    }
    if next != 58 {
        return true;
    }
    match packet.get(at) {
        None => fragment_offset != 0,
        // Informational messages (echo, ...) have the high bit set.
        Some(&icmp_type) => icmp_type & 0x80 != 0,
    }
}

/// Whether the kernel's `ip6_find_1stfragopt` finds where a fragment header would go in
/// `packet` (from its IPv6 header; `ip_len` is the packet's IP length, of which `packet`
/// may hold only the start): it walks hop-by-hop and routing headers and destination options
/// up to a routing header, and fails on a chain that runs past the packet. `ip6_fragment`
/// walks before it compares the packet with the route's MTU, so a packet too big for its
/// route with such a chain is dropped without an error. A chain that leaves the bytes at
/// hand but not the packet counts as found (the kernel's answer is likelier).
pub fn fragmentable_v6(packet: &[u8], ip_len: usize) -> bool {
    let Some(&first) = packet.get(6) else { return false };
    let (mut next, mut at, mut routing) = (first, 40usize, false);
    while at <= ip_len {
        match next {
            0 => {}
            43 => routing = true,
            60 if !routing => {}
            _ => return true,
        }
        if at + 2 > ip_len {
            return false;
        }
        let Some(&[header_next, header_len]) = packet.get(at..at + 2) else { return true };
        (next, at) = (header_next, at + (usize::from(header_len) + 1) * 8);
        if at > usize::from(u16::MAX) {
            return false;
        }
    }
    false
}

/// The IPv4 error for `packet` into `out`: the ICMP header with its checksum, then the quote
/// (the packet as it arrived, at most `quote_max` bytes). Returns the message's length.
pub fn build_v4(
    error: IcmpError,
    mtu: u32,
    packet: &[u8],
    quote_max: usize,
    out: &mut [u8; MESSAGE_MAX],
) -> usize {
    let quote = &packet[..packet.len().min(quote_max).min(QUOTE_V4)];
    let icmp_type = match error {
        IcmpError::TimeExceeded => Icmpv4Type::TimeExceeded(TimeExceededCode::TtlExceededInTransit),
        IcmpError::TooBig => {
            Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
                next_hop_mtu: mtu.min(65535) as u16,
            })
        }
        IcmpError::NoRoute => Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Network),
        IcmpError::Unreachable => Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Host),
        IcmpError::Prohibited => {
            Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FilterProhibited)
        }
    };
    let header = Icmpv4Header::with_checksum(icmp_type, quote);
    let bytes = header.to_bytes();
    out[..bytes.len()].copy_from_slice(&bytes);
    out[bytes.len()..bytes.len() + quote.len()].copy_from_slice(quote);
    bytes.len() + quote.len()
}

/// The IPv6 error for `packet` into `out`: the ICMPv6 header (checksum 0: the kernel's raw
/// ICMPv6 socket computes it over the addresses it picks), then the quote. Returns the
/// message's length.
pub fn build_v6(error: IcmpError, mtu: u32, packet: &[u8], out: &mut [u8; MESSAGE_MAX]) -> usize {
    let quote = &packet[..packet.len().min(QUOTE_V6)];
    let icmp_type = match error {
        IcmpError::TimeExceeded => {
            Icmpv6Type::TimeExceeded(icmpv6::TimeExceededCode::HopLimitExceeded)
        }
        IcmpError::TooBig => Icmpv6Type::PacketTooBig { mtu },
        IcmpError::NoRoute | IcmpError::Unreachable => {
            Icmpv6Type::DestinationUnreachable(DestUnreachableCode::NoRoute)
        }
        IcmpError::Prohibited => {
            Icmpv6Type::DestinationUnreachable(DestUnreachableCode::Prohibited)
        }
    };
    let bytes = Icmpv6Header { icmp_type, checksum: 0 }.to_bytes();
    out[..bytes.len()].copy_from_slice(&bytes);
    out[bytes.len()..bytes.len() + quote.len()].copy_from_slice(quote);
    bytes.len() + quote.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 UDP packet with TTL 1, 198.18.1.2 → 198.18.2.2, 8 bytes of payload.
    fn udp_v4(len: usize) -> Vec<u8> {
        let mut p = vec![
            0x45, 0x00, 0x00, 0x00, 0x12, 0x34, 0x40, 0x00, 0x01, 0x11, 0x00, 0x00, 198, 18, 1, 2,
            198, 18, 2, 2, 0x13, 0x88, 0x23, 0x28, 0x00, 0x00, 0x00, 0x00,
        ];
        p.resize(len, 0xab);
        let total = (len as u16).to_be_bytes();
        p[2..4].copy_from_slice(&total);
        p
    }

    #[test]
    fn time_exceeded_quotes_the_packet_byte_for_byte() {
        let packet = udp_v4(36);
        let mut out = [0u8; MESSAGE_MAX];
        let n = build_v4(IcmpError::TimeExceeded, 0, &packet, usize::MAX, &mut out);
        assert_eq!(n, 8 + 36);
        assert_eq!(out[..4], [11, 0, out[2], out[3]]);
        assert_eq!(out[4..8], [0, 0, 0, 0]);
        assert_eq!(&out[8..n], &packet[..]);
        assert_eq!(crate::rewrite::internet_checksum(&out[..n]), 0, "ICMP checksum");
    }

    #[test]
    fn fragmentation_needed_carries_the_mtu_and_stops_at_576_bytes() {
        let packet = udp_v4(1500);
        let mut out = [0u8; MESSAGE_MAX];
        let n = build_v4(IcmpError::TooBig, 1400, &packet, usize::MAX, &mut out);
        assert_eq!(n, 576 - 20);
        assert_eq!(out[..2], [3, 4]);
        assert_eq!(out[4..8], [0, 0, 0x05, 0x78]);
        assert_eq!(&out[8..n], &packet[..QUOTE_V4]);
        assert_eq!(crate::rewrite::internet_checksum(&out[..n]), 0);
    }

    #[test]
    fn unreachable_codes_are_the_kernels() {
        assert_eq!(type_code(IcmpError::NoRoute, false), (3, 0));
        assert_eq!(type_code(IcmpError::Unreachable, false), (3, 1));
        assert_eq!(type_code(IcmpError::Prohibited, false), (3, 13));
        assert_eq!(type_code(IcmpError::TooBig, true), (2, 0));
        assert_eq!(type_code(IcmpError::TimeExceeded, true), (3, 0));
        let mut out = [0u8; MESSAGE_MAX];
        build_v4(IcmpError::Prohibited, 0, &udp_v4(28), usize::MAX, &mut out);
        assert_eq!(out[..2], [3, 13]);
    }

    #[test]
    fn ipv6_messages_quote_up_to_the_minimum_mtu() {
        let mut packet = vec![0x60, 0, 0, 0, 0x05, 0xc8, 17, 1];
        packet.resize(40 + 1480, 0x5a);
        let mut out = [0u8; MESSAGE_MAX];
        let n = build_v6(IcmpError::TooBig, 1400, &packet, &mut out);
        assert_eq!(n, 1280 - 40);
        assert_eq!(out[..8], [2, 0, 0, 0, 0, 0, 0x05, 0x78]);
        assert_eq!(&out[8..n], &packet[..QUOTE_V6]);
        let n = build_v6(IcmpError::TimeExceeded, 0, &packet[..48], &mut out);
        assert_eq!((n, out[0], out[1]), (56, 3, 0));
    }

    #[test]
    fn a_header_chain_past_the_packet_is_not_fragmentable() {
        // UDP behind a routing header (8 bytes), then behind one whose length runs past the
        // packet (hdr ext len 188: 1512 bytes), then past the bytes at hand only.
        let mut p = vec![0x60, 0, 0, 0, 0, 16, 43, 64];
        p.resize(40, 0);
        p.extend_from_slice(&[17, 0, 0, 0, 0, 0, 0, 0]);
        p.extend_from_slice(&[0; 8]);
        assert!(fragmentable_v6(&p, p.len()));
        p[41] = 188;
        assert!(!fragmentable_v6(&p, p.len()));
        assert!(fragmentable_v6(&p, 40 + 1520), "beyond the quote: the kernel's likely answer");
        // Destination options before a routing header are walked; after one, they end it.
        let mut d = vec![0x60, 0, 0, 0, 0, 16, 60, 64];
        d.resize(40, 0);
        d.extend_from_slice(&[43, 0, 0, 0, 0, 0, 0, 0]);
        d.extend_from_slice(&[60, 200, 0, 0, 0, 0, 0, 0]);
        assert!(!fragmentable_v6(&d, d.len()), "the routing header's length runs past it");
        d[49] = 0;
        d.extend_from_slice(&[17, 250, 0, 0, 0, 0, 0, 0]);
        assert!(fragmentable_v6(&d, d.len()), "found at the options after the routing header");
        // A chain that never ends within the packet, and a runt.
        let mut h = vec![0x60, 0, 0, 0, 0, 8, 0, 64];
        h.resize(40, 0);
        h.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(!fragmentable_v6(&h, h.len()));
        assert!(!fragmentable_v6(&h[..6], 6));
    }

    #[test]
    fn errors_fragments_and_runts_are_not_answered() {
        assert!(answerable_v4(&udp_v4(28)));
        let mut fragment = udp_v4(28);
        fragment[7] = 1;
        assert!(!answerable_v4(&fragment), "a non-first fragment");
        let mut icmp = udp_v4(28);
        icmp[9] = 1;
        icmp[20] = 8;
        assert!(answerable_v4(&icmp), "an echo request");
        for error in [3, 4, 5, 11, 12, 19, 200] {
            icmp[20] = error;
            assert!(!answerable_v4(&icmp), "ICMP type {error}");
        }
        assert!(!answerable_v4(&icmp[..20]), "no room for the ICMP type");
        assert!(!answerable_v4(&[0x45; 10]));

        let mut v6 = vec![0x60, 0, 0, 0, 0, 8, 58, 1];
        v6.resize(48, 0);
        v6[40] = 128;
        assert!(answerable_v6(&v6), "an echo request");
        v6[40] = 1;
        assert!(!answerable_v6(&v6), "an ICMPv6 error");
        // Behind a destination options header (8 bytes).
        let mut opts = vec![0x60, 0, 0, 0, 0, 16, 60, 1];
        opts.resize(40, 0);
        opts.extend_from_slice(&[58, 0, 1, 4, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0]);
        assert!(!answerable_v6(&opts), "an ICMPv6 error behind options");
        opts[48] = 129;
        assert!(answerable_v6(&opts));
        // A non-first fragment of an ICMPv6 message: no header to look at, answered.
        let mut frag = vec![0x60, 0, 0, 0, 0, 16, 44, 1];
        frag.resize(40, 0);
        frag.extend_from_slice(&[58, 0, 0x00, 0x08, 0, 0, 0, 1]);
        assert!(answerable_v6(&frag));
        let mut udp = v6.clone();
        udp[6] = 17;
        assert!(answerable_v6(&udp));
    }
}
