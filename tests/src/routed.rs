//! The routed topology's helpers: frames the client sends, captures on both server links,
//! the forwarder's routes and neighbours.
//!
//! ```text
//!   client ns                forwarder ns                   server ns
//!   {p}c0 198.18.1.2/24 ─── {p}f0 198.18.1.1/24
//!                            {p}f1 198.18.2.1/24 ─────────── {p}s0 198.18.2.2/24
//!                            {p}f2 198.18.3.1/24 ─────────── {p}s2 198.18.3.2/24
//! ```
//!
//! Routed destinations are in 198.19.0.0/16 and 2001:2:50::/44.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    thread,
    time::{Duration, Instant},
};

use etherparse::PacketBuilder;

use crate::{Topology, fmt_mac, in_netns, ns_sh, packet::RawSocket, sh};

/// A UDP or TCP frame from `src` to `dst` as the client sends it (raw, any source address).
pub fn frame(
    c_mac: [u8; 6],
    f_mac: [u8; 6],
    (src, dst): (Ipv4Addr, Ipv4Addr),
    tcp: bool,
    (sport, dport): (u16, u16),
    len: usize,
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(c_mac, f_mac).ipv4(src.octets(), dst.octets(), 64);
    let payload: Vec<u8> = (0..len).map(|i| (i * 13 + 1) as u8).collect();
    let mut out = Vec::new();
    if tcp {
        b.tcp(sport, dport, 1, 64240).ack(1).write(&mut out, &payload).expect("frame builds");
    } else {
        b.udp(sport, dport).write(&mut out, &payload).expect("frame builds");
    }
    out
}

/// Both server-side interfaces captured: frames to 198.19.0.0/16 that arrived on each.
pub struct Capture {
    s0: RawSocket,
    s2: RawSocket,
}

impl Capture {
    pub fn open(topo: &Topology, s2: &str) -> Capture {
        let (a, b) = (topo.s0.clone(), s2.to_string());
        Capture {
            s0: in_netns(&topo.server, move || RawSocket::open(&a)).unwrap().unwrap(),
            s2: in_netns(&topo.server, move || RawSocket::open(&b)).unwrap().unwrap(),
        }
    }

    pub fn take(&self) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        // IPv4 to 198.19.0.0/16, IPv6 to 2001:2:50::/44, 2001:2:0:8000::/49 and
        // 2001:2:0:70::/64 (what the BGP configurations announce).
        let ours = |f: &Vec<u8>| {
            let v6 = f.len() >= 54 && f[12..14] == [0x86, 0xdd] && f[38..42] == [0x20, 0x01, 0, 2];
            (f.len() >= 34 && f[12..14] == [8, 0] && f[30..32] == [198, 19])
                || (v6 && f[42] == 0 && f[43] & 0xf0 == 0x50)
                || (v6 && f[42..44] == [0, 0] && f[44] & 0x80 != 0)
                || (v6 && f[42..46] == [0, 0, 0, 0x70])
        };
        let a =
            self.s0.drain(Duration::from_millis(400), 100_000).into_iter().filter(ours).collect();
        let b =
            self.s2.drain(Duration::from_millis(400), 100_000).into_iter().filter(ours).collect();
        (a, b)
    }
}

/// Permanent IPv6 neighbours for the server's addresses on both links.
pub fn neighbours_v6(topo: &Topology, f2: &str, s2: &str) {
    let s0_mac = fmt_mac(topo.mac(&topo.server, &topo.s0).unwrap());
    let s2_mac = fmt_mac(topo.mac(&topo.server, s2).unwrap());
    for (addr, mac, dev) in
        [("2001:2:0:2::2", &s0_mac, topo.f1.as_str()), ("2001:2:0:3::2", &s2_mac, f2)]
    {
        topo.permanent_neighbour(addr, mac, dev).unwrap();
    }
}

pub fn neighbours(topo: &Topology, f2: &str, s2: &str) {
    let s0_mac = fmt_mac(topo.mac(&topo.server, &topo.s0).unwrap());
    let s2_mac = fmt_mac(topo.mac(&topo.server, s2).unwrap());
    for (addr, mac, dev) in [("198.18.2.2", &s0_mac, topo.f1.as_str()), ("198.18.3.2", &s2_mac, f2)]
    {
        topo.permanent_neighbour(addr, mac, dev).unwrap();
    }
}

pub fn ip(topo: &Topology, args: &str) {
    let mut full = vec!["ip", "-n", topo.fwd.as_str()];
    full.extend(args.split_whitespace());
    sh(&full).unwrap();
}

/// A UDP frame over IPv6.
pub fn frame6(c_mac: [u8; 6], f_mac: [u8; 6], src: &str, dst: &str, dport: u16) -> Vec<u8> {
    let (src, dst): (std::net::Ipv6Addr, std::net::Ipv6Addr) =
        (src.parse().unwrap(), dst.parse().unwrap());
    let mut out = Vec::new();
    PacketBuilder::ethernet2(c_mac, f_mac)
        .ipv6(src.octets(), dst.octets(), 64)
        .udp(4000, dport)
        .write(&mut out, &[7; 60])
        .expect("frame builds");
    out
}

/// Sends `flows` UDP flows (different source ports, and source addresses unless
/// `one_source`), `per_flow` frames each, to `dst`; returns for every flow the set of links
/// (0: s0, 2: s2) its frames arrived on, and the total.
pub fn flows(
    topo: &Topology,
    capture: &Capture,
    dst: Ipv4Addr,
    (flows, per_flow): (u16, usize),
    one_source: bool,
) -> (BTreeMap<u16, BTreeSet<u8>>, usize) {
    let c0 = topo.c0.clone();
    let sender = in_netns(&topo.client, move || RawSocket::open(&c0)).unwrap().unwrap();
    let c_mac = topo.mac(&topo.client, &topo.c0).unwrap();
    let f_mac = topo.mac(&topo.fwd, &topo.f0).unwrap();
    for _ in 0..per_flow {
        for port in 0..flows {
            let host = if one_source { 2 } else { 10 + (port % 200) as u8 };
            let f = frame(
                c_mac,
                f_mac,
                (Ipv4Addr::new(198, 18, 1, host), dst),
                false,
                (10_000 + port, 9000),
                64,
            );
            sender.send(&f).unwrap();
        }
        thread::sleep(Duration::from_millis(2));
    }
    let (a, b) = capture.take();
    let mut seen: BTreeMap<u16, BTreeSet<u8>> = BTreeMap::new();
    for (link, frames) in [(0u8, &a), (2u8, &b)] {
        for f in frames.iter() {
            let sport = u16::from_be_bytes([f[34], f[35]]);
            seen.entry(sport).or_default().insert(link);
        }
    }
    (seen, a.len() + b.len())
}

/// Waits (at most 10 s) until the kernel's route for `prefix` in the forwarder shows `want`.
pub fn wait_route(topo: &Topology, prefix: &str, want: impl Fn(&str) -> bool) -> String {
    wait_route_for(topo, prefix, Duration::from_secs(10), want)
}

/// Waits (at most `timeout`) until the kernel's route for `prefix` in the forwarder shows
/// `want`; returns the route as last seen.
pub fn wait_route_for(
    topo: &Topology,
    prefix: &str,
    timeout: Duration,
    want: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let family = if prefix.contains(':') { "-6" } else { "-4" };
        let r = sh(&["ip", "-n", &topo.fwd, family, "route", "show", prefix]).unwrap_or_default();
        if want(&r) || Instant::now() > deadline {
            return r;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Only xdpfwd can forward: the kernel's forwarding is (still) off.
pub fn assert_forwarding_off(topo: &Topology) {
    let v = ns_sh(&topo.fwd, &["sysctl", "-n", "net.ipv4.ip_forward"]).unwrap();
    assert_eq!(v.trim(), "0", "the kernel's forwarding is off");
}
