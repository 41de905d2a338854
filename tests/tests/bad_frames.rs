//! A corpus of bad and unusual frames sent through the forwarder: each gets its documented
//! action (forwarded, or passed to the kernel) and is counted by reason, and good traffic
//! keeps flowing throughout. (The XDP program never drops: the kernel decides about what it
//! passes, as it would without xdpfwd.)

use std::{collections::BTreeMap, net::IpAddr, thread, time::Duration};

use etherparse::PacketBuilder;
use xdpfwd_tests::{
    CLIENT_V4, CLIENT_V6, Forwarder, SERVER_V4, SERVER_V6, Topology, in_netns,
    packet::{RawSocket, fix_ipv4_checksum, with_ipv4_options, with_ipv6_extension},
    run_to_exit, sh,
};

fn xdp_counters(topo: &Topology) -> BTreeMap<String, u64> {
    let out = run_to_exit(&topo.fwd, &[], &["stats", "--json", "--count", "1"]).unwrap();
    assert!(out.success, "{out:?}");
    let doc: serde_json::Value = serde_json::from_str(out.stdout.lines().next().unwrap()).unwrap();
    doc["stats"]["xdp"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .collect()
}

fn build(b: etherparse::PacketBuilderStep<etherparse::UdpHeader>, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

#[test]
fn bad_frames_get_their_documented_action_and_good_traffic_flows() {
    let topo = Topology::new("bf", false).unwrap();
    // Room for an oversize frame (larger than the egress MTU) to reach the forwarder.
    sh(&["ip", "-n", &topo.client, "link", "set", &topo.c0, "mtu", "3000"]).unwrap();
    sh(&["ip", "-n", &topo.fwd, "link", "set", &topo.f0, "mtu", "3000"]).unwrap();
    let mut fwd =
        Forwarder::start(&topo.fwd, &[&topo.f0, &topo.f1, "--stats-interval", "0"]).unwrap();
    assert!(topo.ping(&topo.client, IpAddr::V4(SERVER_V4), 2));
    assert!(topo.ping(&topo.client, IpAddr::V6(SERVER_V6), 2));

    let c_mac = topo.mac(&topo.client, &topo.c0).unwrap();
    let f_mac = topo.mac(&topo.fwd, &topo.f0).unwrap();
    let v4 = |ttl: u8| {
        PacketBuilder::ethernet2(c_mac, f_mac).ipv4(CLIENT_V4.octets(), SERVER_V4.octets(), ttl)
    };
    let v6 =
        || PacketBuilder::ethernet2(c_mac, f_mac).ipv6(CLIENT_V6.octets(), SERVER_V6.octets(), 64);
    let good = build(v4(64).udp(5000, 9000), &[7; 32]);

    // (name, frame, expected reason, reaches the server)
    let mut corpus: Vec<(String, Vec<u8>, &str, bool)> = Vec::new();
    // Truncated at every offset inside the headers: runts, short IP headers, short lengths.
    for len in 14..good.len() - 32 {
        corpus.push((format!("truncated to {len}"), good[..len].to_vec(), "pass_malformed", false));
    }
    let good6 = build(v6().udp(5005, 9000), &[8; 16]);
    for len in 14..good6.len() - 16 {
        corpus.push((
            format!("IPv6 truncated to {len}"),
            good6[..len].to_vec(),
            "pass_malformed",
            false,
        ));
    }
    let mut f = good.clone();
    f[14] = 0x44; // IHL 4
    fix_ipv4_checksum(&mut f);
    corpus.push(("IHL 4".into(), f, "pass_malformed", false));
    let mut f = good.clone();
    f[16..18].copy_from_slice(&10u16.to_be_bytes());
    fix_ipv4_checksum(&mut f);
    corpus.push(("total length 10".into(), f, "pass_malformed", false));
    let mut f = good.clone();
    f[16..18].copy_from_slice(&1400u16.to_be_bytes());
    fix_ipv4_checksum(&mut f);
    corpus.push(("total length beyond the frame".into(), f, "pass_malformed", false));
    let mut f = good.clone();
    f[24] ^= 0x55;
    corpus.push(("bad header checksum".into(), f, "pass_malformed", false));
    let mut f = good.clone();
    f[14] = 0x65;
    corpus.push(("version 6 in an IPv4 frame".into(), f, "pass_malformed", false));
    corpus.push(("IPv4 options".into(), with_ipv4_options(&good), "pass_options", false));
    // With the kernel's forwarding off, xdpfwd owes the "time exceeded" answer.
    for ttl in [0u8, 1] {
        corpus.push((
            format!("TTL {ttl}"),
            build(v4(ttl).udp(5001, 9000), &[1; 8]),
            "steered_icmp",
            false,
        ));
    }
    // Fragments are forwarded as they are, like the kernel does.
    let whole = build(v4(64).udp(5002, 9000), &[3; 100]);
    let mut first = whole[..34].to_vec();
    first.extend_from_slice(&whole[34..34 + 64]);
    first[16..18].copy_from_slice(&84u16.to_be_bytes());
    first[20..22].copy_from_slice(&0x2000u16.to_be_bytes());
    fix_ipv4_checksum(&mut first);
    corpus.push(("first fragment".into(), first, "steered", true));
    let mut later = whole[..34].to_vec();
    later.extend_from_slice(&whole[34 + 64..]);
    later[16..18].copy_from_slice(&((20 + whole.len() - 34 - 64) as u16).to_be_bytes());
    later[20..22].copy_from_slice(&8u16.to_be_bytes());
    fix_ipv4_checksum(&mut later);
    corpus.push(("later fragment".into(), later, "steered", true));
    // IPv6 extension headers: destination options forwarded, hop-by-hop to the kernel.
    let plain6 = build(v6().udp(5003, 9000), &[4; 24]);
    for (name, next, reason, arrives) in [
        ("IPv6 destination options", 60u8, "steered", true),
        ("IPv6 hop-by-hop", 0u8, "pass_options", false),
    ] {
        corpus.push((name.into(), with_ipv6_extension(&plain6, next), reason, arrives));
    }
    let mut f = plain6.clone();
    f[18..20].copy_from_slice(&2000u16.to_be_bytes());
    corpus.push(("IPv6 payload length beyond the frame".into(), f, "pass_malformed", false));
    let mut f = good.clone();
    f[12..14].copy_from_slice(&[0x88, 0xb5]);
    corpus.push(("unknown ethertype".into(), f, "pass_not_ip", false));
    for (name, tpid) in [("802.1Q", [0x81, 0x00]), ("QinQ 802.1ad", [0x88, 0xa8])] {
        let mut f = good[..12].to_vec();
        f.extend_from_slice(&tpid);
        f.extend_from_slice(&[0x00, 0x64]);
        f.extend_from_slice(&good[12..]);
        corpus.push((name.into(), f, "pass_vlan", false));
    }
    // Over the egress MTU: with DF answered "fragmentation needed" by xdpfwd, without it
    // the kernel's to fragment.
    let oversize = build(v4(64).udp(5004, 9000), &[5; 2000]);
    assert_eq!(oversize[20] & 0x40, 0x40, "DF set");
    corpus.push(("larger than the egress MTU, DF".into(), oversize.clone(), "steered_icmp", false));
    let mut f = oversize;
    f[20] &= !0x40;
    fix_ipv4_checksum(&mut f);
    corpus.push(("larger than the egress MTU".into(), f, "pass_mtu", false));
    let mut f = good.clone();
    f[26..30].copy_from_slice(&[127, 0, 0, 1]);
    fix_ipv4_checksum(&mut f);
    corpus.push(("loopback source".into(), f, "pass_special_addr", false));
    let mut f = good.clone();
    f[0..6].copy_from_slice(&[0x02, 0x11, 0x22, 0x33, 0x44, 0x55]);
    corpus.push(("another host's MAC".into(), f, "pass_not_for_us", false));
    let mut f = good.clone();
    f[0..6].copy_from_slice(&[0xff; 6]);
    corpus.push(("broadcast MAC".into(), f, "pass_not_for_us", false));

    let s0 = topo.s0.clone();
    let capture = in_netns(&topo.server, move || RawSocket::open(&s0)).unwrap().unwrap();
    let c0 = topo.c0.clone();
    let sender = in_netns(&topo.client, move || RawSocket::open(&c0)).unwrap().unwrap();
    let before = xdp_counters(&topo);
    let mut expected: BTreeMap<&str, u64> = BTreeMap::new();
    for (name, frame, reason, _) in &corpus {
        sender.send(frame).unwrap_or_else(|e| panic!("sending {name}: {e}"));
        *expected.entry(reason).or_default() += 1;
        thread::sleep(Duration::from_millis(2));
    }
    // Good traffic still flows.
    assert!(topo.ping(&topo.client, IpAddr::V4(SERVER_V4), 3), "forwarding goes on");
    let after = xdp_counters(&topo);
    for (reason, want) in &expected {
        let got =
            after.get(*reason).copied().unwrap_or(0) - before.get(*reason).copied().unwrap_or(0);
        // Exact where nothing else in the test produces that reason; background traffic
        // (ARP, neighbour discovery, the pings) may add to the others.
        let exact = ["pass_malformed", "pass_options", "steered_icmp", "pass_vlan", "pass_mtu"]
            .contains(reason);
        if exact {
            assert_eq!(got, *want, "{reason}: counted {got}, corpus has {want}");
        } else {
            assert!(got >= *want, "{reason}: counted {got}, corpus has {want}");
        }
    }
    let received: Vec<Vec<u8>> = capture.drain(Duration::from_millis(300), 10_000);
    let from_client = |f: &&Vec<u8>| {
        (f.len() >= 34 && f[12..14] == [8, 0] && f[26..30] == CLIENT_V4.octets() && f[23] == 17)
            || (f.len() >= 54
                && f[12..14] == [0x86, 0xdd]
                && f[22..38] == CLIENT_V6.octets()
                && f[20] != 58)
    };
    let arrived = received.iter().filter(from_client).count();
    let should = corpus.iter().filter(|c| c.3).count();
    assert_eq!(arrived, should, "exactly the frames a router forwards arrive");
    let done = fwd.stop().unwrap();
    assert!(done.success, "no crash: {done:?}");
}
