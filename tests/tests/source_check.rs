//! The kernel's source validation (`fib_validate_source`): `rp_filter` strict and loose, a
//! source that is one of the router's own addresses, a source routed to a blackhole, a source
//! with no route. Frames with such sources go through the kernel alone, then with xdpfwd
//! beside it, and the server must receive the same frames both times: xdpfwd forwards none
//! that the kernel refuses.

use std::{net::IpAddr, thread, time::Duration};

use etherparse::PacketBuilder;
use xdpfwd_tests::{
    CLIENT_V4, FWD_V4_B, Forwarder, SERVER_V4, Topology, in_netns, ns_sh, packet::RawSocket,
    xdp_counter,
};

/// Sources of the stream, by what the kernel makes of them.
const SOURCES: [(&str, [u8; 4]); 5] = [
    ("the client", CLIENT_V4.octets()),
    ("the server's network (reverse route through the egress)", [198, 18, 2, 77]),
    ("the router's own address", FWD_V4_B.octets()),
    ("a blackholed network", [198, 19, 50, 1]),
    ("no route back", [198, 19, 99, 1]),
];

/// UDP to the server from each source, port 5000 + the source's index.
fn stream(c_mac: [u8; 6], f_mac: [u8; 6]) -> Vec<Vec<u8>> {
    SOURCES
        .iter()
        .enumerate()
        .map(|(i, (_, src))| {
            let mut f = Vec::new();
            PacketBuilder::ethernet2(c_mac, f_mac)
                .ipv4(*src, SERVER_V4.octets(), 64)
                .udp(5000 + i as u16, 9000)
                .write(&mut f, &[i as u8; 32])
                .unwrap();
            f
        })
        .collect()
}

/// Sends the stream three times; returns the indices of the sources whose frames arrived.
fn delivered(topo: &Topology) -> Vec<usize> {
    assert!(topo.ping(&topo.client, IpAddr::V4(SERVER_V4), 2), "neighbours warm");
    let s0 = topo.s0.clone();
    let capture = in_netns(&topo.server, move || RawSocket::open(&s0)).unwrap().unwrap();
    let c0 = topo.c0.clone();
    let sender = in_netns(&topo.client, move || RawSocket::open(&c0)).unwrap().unwrap();
    let c_mac = topo.mac(&topo.client, &topo.c0).unwrap();
    let f_mac = topo.mac(&topo.fwd, &topo.f0).unwrap();
    for _ in 0..3 {
        for frame in stream(c_mac, f_mac) {
            sender.send(&frame).unwrap();
            thread::sleep(Duration::from_millis(5));
        }
    }
    let mut got: Vec<usize> = capture
        .drain(Duration::from_millis(500), 1000)
        .into_iter()
        .filter(|f| f.len() >= 42 && f[12..14] == [8, 0] && f[36..38] == 9000u16.to_be_bytes())
        .map(|f| usize::from(u16::from_be_bytes([f[34], f[35]]) - 5000))
        .collect();
    got.sort_unstable();
    got
}

fn compare(tag: &str, rp_filter: u8) {
    let topo = Topology::new(tag, true).unwrap();
    ns_sh(&topo.fwd, &["ip", "route", "add", "blackhole", "198.19.50.0/24"]).unwrap();
    let rp = format!("net.ipv4.conf.all.rp_filter={rp_filter}");
    let rp_dev = format!("net.ipv4.conf.{}.rp_filter={rp_filter}", topo.f0);
    ns_sh(&topo.fwd, &["sysctl", "-qw", &rp, &rp_dev]).unwrap();
    let kernel = delivered(&topo);
    assert!(kernel.contains(&0), "the kernel forwards the client's frames: {kernel:?}");

    let mut fwd =
        Forwarder::start(&topo.fwd, &[&topo.f0, &topo.f1, "--stats-interval", "0"]).unwrap();
    let ours = delivered(&topo);
    let done = fwd.stop().unwrap();
    let names: Vec<_> = SOURCES.iter().map(|(n, _)| *n).collect();
    assert_eq!(ours, kernel, "rp_filter {rp_filter}: sources delivered ({names:?})");
    assert!(xdp_counter(&done.stdout, "steered") >= 3, "xdpfwd forwards: {}", done.stdout);
    assert!(
        xdp_counter(&done.stdout, "pass_source_check") >= 3,
        "the kernel decided on the others: {}",
        done.stdout
    );
}

#[test]
fn sources_the_kernel_refuses_with_rp_filter_off_are_not_forwarded() {
    compare("rp0", 0);
}

#[test]
fn strict_rp_filter_is_honoured() {
    compare("rp1", 1);
}

#[test]
fn loose_rp_filter_is_honoured() {
    compare("rp2", 2);
}
