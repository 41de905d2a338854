//! The NAT rewrite of the real XDP program on arbitrary TCP and UDP frames, under
//! `BPF_PROG_RUN` through the fast path (see `xdp_harness`: its rewrites send TCP port 80 to
//! 198.18.2.3:8080, IPv4 UDP port 53 from 198.18.1.77 to port 5353, IPv6 UDP from
//! 2001:2:0:1::99 port 5000, and any protocol to 198.18.2.44 to .45): every rewritten frame
//! carries the new fields and checksums that verify from scratch, and an IPv4 UDP checksum of
//! zero stays zero.

use std::{cell::RefCell, net::Ipv6Addr};

use etherparse::PacketBuilder;
use proptest::prelude::*;
use xdpfwd_tests::{
    packet::checksum,
    xdp_harness::{Harness, INGRESS_MAC},
};

thread_local! {
    static HARNESS: RefCell<Option<Harness>> = const { RefCell::new(None) };
}

const XDP_REDIRECT: u32 = 4;
const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x09];

fn run(frame: &[u8]) -> (u32, Vec<u8>) {
    HARNESS.with(|h| {
        let mut h = h.borrow_mut();
        let h = h.get_or_insert_with(|| {
            let mut h = Harness::new().expect("loading the XDP harness (root needed)");
            h.enable_redirect().expect("DEVMAP");
            h
        });
        h.run(frame).expect("test run")
    })
}

/// Whether the IPv4 header checksum and the L4 checksum (over the pseudo-header) verify; a
/// UDP checksum of zero ("none") counts as valid.
fn v4_checksums_ok(f: &[u8]) -> bool {
    let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
    let (ip, l4) = (&f[14..34], &f[34..14 + total]);
    if checksum(ip) != 0 {
        return false;
    }
    if f[23] == 17 && l4[6..8] == [0, 0] {
        return true;
    }
    let mut data = ip[12..20].to_vec();
    data.extend_from_slice(&[0, f[23]]);
    data.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    data.extend_from_slice(l4);
    checksum(&data) == 0
}

fn v6_checksum_ok(f: &[u8]) -> bool {
    let len = usize::from(u16::from_be_bytes([f[18], f[19]]));
    let l4 = &f[54..54 + len];
    let mut data = f[22..54].to_vec();
    data.extend_from_slice(&(len as u32).to_be_bytes());
    data.extend_from_slice(&[0, 0, 0, f[20]]);
    data.extend_from_slice(l4);
    checksum(&data) == 0
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn tcp_v4_destination_rewrite(
        payload in proptest::collection::vec(any::<u8>(), 0..300),
        sport in any::<u16>(),
        seq in any::<u32>(),
        window in any::<u16>(),
    ) {
        let mut f = Vec::new();
        PacketBuilder::ethernet2(SRC_MAC, INGRESS_MAC)
            .ipv4([198, 18, 1, 2], [198, 18, 2, 2], 64)
            .tcp(sport, 80, seq, window)
            .ack(seq.wrapping_mul(7))
            .write(&mut f, &payload)
            .unwrap();
        let (action, out) = run(&f);
        prop_assert_eq!(action, XDP_REDIRECT);
        prop_assert_eq!(&out[30..34], &[198, 18, 2, 3][..], "destination rewritten");
        prop_assert_eq!(&out[36..38], &8080u16.to_be_bytes()[..], "port rewritten");
        prop_assert_eq!(out[22], 63, "TTL decremented");
        prop_assert_eq!(&out[54..], &f[54..], "payload untouched");
        prop_assert!(v4_checksums_ok(&out), "checksums verify: {:02x?}", &out[..54]);
    }

    #[test]
    fn udp_v4_source_and_port_rewrite_keeps_the_zero_checksum_rule(
        payload in proptest::collection::vec(any::<u8>(), 0..300),
        sport in any::<u16>(),
        no_checksum: bool,
    ) {
        let mut f = Vec::new();
        PacketBuilder::ethernet2(SRC_MAC, INGRESS_MAC)
            .ipv4([198, 18, 1, 2], [198, 18, 2, 2], 64)
            .udp(sport, 53)
            .write(&mut f, &payload)
            .unwrap();
        if no_checksum {
            f[40] = 0;
            f[41] = 0;
        }
        let (action, out) = run(&f);
        prop_assert_eq!(action, XDP_REDIRECT);
        prop_assert_eq!(&out[26..30], &[198, 18, 1, 77][..], "source rewritten");
        prop_assert_eq!(&out[36..38], &5353u16.to_be_bytes()[..], "port rewritten");
        if no_checksum {
            prop_assert_eq!(&out[40..42], &[0u8, 0][..], "no checksum stays no checksum");
        } else {
            prop_assert_ne!(&out[40..42], &[0u8, 0][..], "a computed zero is sent as 0xffff");
        }
        prop_assert!(v4_checksums_ok(&out), "checksums verify: {:02x?}", &out[..42]);
    }

    #[test]
    fn udp_v6_source_and_port_rewrite(
        payload in proptest::collection::vec(any::<u8>(), 0..300),
        sport in any::<u16>(),
        dport in any::<u16>(),
    ) {
        let src: Ipv6Addr = "2001:2:0:1::2".parse().unwrap();
        let dst: Ipv6Addr = "2001:2:0:2::2".parse().unwrap();
        let mut f = Vec::new();
        PacketBuilder::ethernet2(SRC_MAC, INGRESS_MAC)
            .ipv6(src.octets(), dst.octets(), 64)
            .udp(sport, dport)
            .write(&mut f, &payload)
            .unwrap();
        let (action, out) = run(&f);
        prop_assert_eq!(action, XDP_REDIRECT);
        let want: Ipv6Addr = "2001:2:0:1::99".parse().unwrap();
        prop_assert_eq!(&out[22..38], &want.octets()[..], "source rewritten");
        prop_assert_eq!(&out[54..56], &5000u16.to_be_bytes()[..], "port rewritten");
        prop_assert_eq!(out[21], 63, "hop limit decremented");
        prop_assert_ne!(&out[60..62], &[0u8, 0][..], "IPv6 UDP always has a checksum");
        prop_assert!(v6_checksum_ok(&out), "checksum verifies: {:02x?}", &out[..62]);
    }
}

/// A frame the program passes is the frame that arrived, even when a rewrite and a VLAN pop
/// apply to it and the destination device exists: a tagged TCP frame to port 80 whose TCP
/// header is cut short (the IP length covers only 10 of its bytes) cannot be rewritten, and
/// must reach the kernel with its tag, addresses and ports untouched.
#[test]
fn a_truncated_tagged_frame_matching_a_rewrite_passes_unchanged() {
    const XDP_PASS: u32 = 2;
    let mut f = Vec::new();
    PacketBuilder::ethernet2(SRC_MAC, INGRESS_MAC)
        .ipv4([198, 18, 1, 2], [198, 51, 100, 7], 64)
        .tcp(4000, 80, 1, 1000)
        .write(&mut f, &[])
        .unwrap();
    // Keep 10 bytes of the TCP header; fix the IP total length and header checksum.
    f.truncate(14 + 20 + 10);
    f[16..18].copy_from_slice(&30u16.to_be_bytes());
    xdpfwd_tests::packet::fix_ipv4_checksum(&mut f);
    // VLAN 10 (priority 3), which the harness's ingress pops.
    f.splice(12..12, [0x81, 0x00, 0x60, 10]);
    let (action, out) = run(&f);
    assert_eq!(action, XDP_PASS);
    assert_eq!(out, f, "the frame reached the kernel unchanged");
}

/// A TCP frame over IPv6 to `dport`, with a destination options header when `ext`.
fn tcp6(dport: u16, ext: bool) -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2(SRC_MAC, INGRESS_MAC)
        .ipv6(
            "2001:2:0:1::2".parse::<Ipv6Addr>().unwrap().octets(),
            "2001:2:0:2::2".parse::<Ipv6Addr>().unwrap().octets(),
            64,
        )
        .tcp(40000, dport, 1, 1000)
        .write(&mut f, &[1; 20])
        .unwrap();
    if ext { xdpfwd_tests::packet::with_ipv6_extension(&f, 60) } else { f }
}

/// The harness's first rule sends TCP port 22 to the kernel. Behind a destination options
/// header the port is not where the rule looks: such a frame goes to the kernel too, instead
/// of slipping past the rule.
#[test]
fn extension_headers_do_not_slip_past_port_rules() {
    const XDP_PASS: u32 = 2;
    assert_eq!(run(&tcp6(22, false)).0, XDP_PASS, "the rule applies");
    assert_eq!(run(&tcp6(23, false)).0, XDP_REDIRECT, "other ports are forwarded");
    let (verdict, out) = run(&tcp6(22, true));
    assert_eq!(verdict, XDP_PASS, "behind a destination options header");
    assert_eq!(out, tcp6(22, true), "unchanged");
}

/// A frame to 198.18.2.44 (the harness rewrites any protocol's destination to .45) of IP
/// protocol `proto`, with 16 bytes of L4 payload.
fn to_moved_host(proto: u8) -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2(SRC_MAC, INGRESS_MAC)
        .ipv4([198, 18, 1, 2], [198, 18, 2, 44], 64)
        .udp(1000, 2000)
        .write(&mut f, &[5; 8])
        .unwrap();
    f[23] = proto;
    let sum = {
        let mut ip = f[14..34].to_vec();
        ip[10..12].fill(0);
        checksum(&ip)
    };
    f[24..26].copy_from_slice(&sum.to_be_bytes());
    f
}

/// An address rewrite updates the checksums it knows (TCP, UDP, ICMP); DCCP's and
/// UDP-Lite's also cover the addresses, so such frames go to the kernel unchanged rather
/// than leave with a wrong checksum.
#[test]
fn address_rewrites_leave_protocols_with_unknown_checksums_to_the_kernel() {
    const XDP_PASS: u32 = 2;
    let (verdict, out) = run(&to_moved_host(17));
    assert_eq!(verdict, XDP_REDIRECT, "UDP is rewritten");
    assert_eq!(out[30..34], [198, 18, 2, 45]);
    assert!(v4_checksums_ok(&out));
    for proto in [33, 136] {
        let frame = to_moved_host(proto);
        let (verdict, out) = run(&frame);
        assert_eq!((verdict, out), (XDP_PASS, frame), "protocol {proto}");
    }
}
