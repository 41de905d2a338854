//! The router's ICMP errors with the kernel's forwarding off: time exceeded, fragmentation
//! needed / packet too big, destination unreachable (no route, `unreachable`, `prohibit`),
//! none for a `blackhole` or for an ICMP error, and the kernel's rate limit per destination.
//! The same frames go through the kernel's own forwarding, then through xdpfwd with the
//! kernel's forwarding off, and the client must receive the same errors, byte for byte but
//! for the IPv4 identification, the header checksum and the IPv6 flow label. Then tracepath
//! and traceroute see the router, and TCP finds a smaller path MTU through it.

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

use etherparse::PacketBuilder;
use xdpfwd_tests::{
    CLIENT_V4, Forwarder, SERVER_V4, SERVER_V6, Topology, in_netns, ns_sh, packet::RawSocket, sh,
    xdp_counter,
};

/// Routes and addresses the scenarios need, in the forwarder and the server.
fn prepare(topo: &Topology) {
    let f = |args: &[&str]| ns_sh(&topo.fwd, args).unwrap();
    f(&["ip", "route", "add", "198.19.60.0/24", "via", "198.18.2.2", "mtu", "1300"]);
    f(&["ip", "-6", "route", "add", "2001:2:0:60::/64", "via", "2001:2:0:2::2", "mtu", "1300"]);
    f(&["ip", "route", "add", "unreachable", "198.19.77.0/24"]);
    f(&["ip", "route", "add", "prohibit", "198.19.78.0/24"]);
    f(&["ip", "route", "add", "blackhole", "198.19.79.0/24"]);
    // Every scenario has a source of its own, so that the per-destination limits of one do
    // not touch another: the client answers for them all.
    for i in 10..30 {
        let v4 = format!("198.18.1.{i}/24");
        let v6 = format!("2001:2:0:1::{i:x}/64");
        sh(&["ip", "-n", &topo.client, "addr", "add", &v4, "dev", &topo.c0]).unwrap();
        sh(&["ip", "-n", &topo.client, "addr", "add", &v6, "dev", &topo.c0, "nodad"]).unwrap();
    }
}

fn src4(i: u8) -> [u8; 4] {
    [198, 18, 1, i]
}

fn src6(i: u8) -> [u8; 16] {
    Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, u16::from(i)).octets()
}

/// The frames of the scenarios, from the client to the router's MAC.
fn frames(c_mac: [u8; 6], f_mac: [u8; 6]) -> Vec<Vec<u8>> {
    let eth = || PacketBuilder::ethernet2(c_mac, f_mac);
    let udp4 = |src: [u8; 4], dst: [u8; 4], ttl: u8, len: usize, tos: u8, df: bool| {
        let mut ip =
            etherparse::Ipv4Header::new(0, ttl, etherparse::IpNumber::UDP, src, dst).unwrap();
        ip.dscp = etherparse::IpDscp::try_new(tos >> 2).unwrap();
        ip.dont_fragment = df;
        ip.identification = 0x4242;
        let mut f = Vec::new();
        eth()
            .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
            .udp(4000, 9000)
            .write(&mut f, &vec![0x5a; len])
            .unwrap();
        f
    };
    let udp6 = |src: [u8; 16], dst: [u8; 16], hops: u8, len: usize| {
        let mut f = Vec::new();
        eth().ipv6(src, dst, hops).udp(4000, 9000).write(&mut f, &vec![0x6b; len]).unwrap();
        f
    };
    let server = SERVER_V4.octets();
    let mut out = vec![
        // Time exceeded, with a TOS whose DSCP the answer keeps or not as the kernel does.
        udp4(src4(10), server, 1, 64, 0x28, false),
        udp4(src4(11), server, 0, 64, 0, true),
        // Fragmentation needed: over the route's MTU of 1300 with DF.
        udp4(src4(12), [198, 19, 60, 5], 64, 1400, 0, true),
        // A long packet that expires: the quote stops at 576 bytes.
        udp4(src4(13), server, 1, 1000, 0, false),
        // No route, unreachable, prohibit, blackhole.
        udp4(src4(14), [198, 19, 99, 1], 64, 32, 0, false),
        udp4(src4(15), [198, 19, 77, 1], 64, 32, 0, false),
        udp4(src4(16), [198, 19, 78, 1], 64, 32, 0, false),
        udp4(src4(17), [198, 19, 79, 1], 64, 32, 0, false),
        // IPv6: hop limit, packet too big (a route MTU of 1300), quote of at most 1232 bytes.
        udp6(src6(10), SERVER_V6.octets(), 1, 64),
        udp6(src6(11), Ipv6Addr::new(0x2001, 2, 0, 0x60, 0, 0, 0, 5).octets(), 64, 1400),
        udp6(src6(12), SERVER_V6.octets(), 1, 1400),
    ];
    // An ICMP error that expires is not answered.
    let mut f = Vec::new();
    eth()
        .ipv4(src4(18), server, 1)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Port,
        ))
        .write(&mut f, &[0x45; 28])
        .unwrap();
    out.push(f);
    // A burst to one destination: six answers, then one a second.
    for _ in 0..20 {
        out.push(udp4(src4(20), server, 1, 16, 0, false));
    }
    out
}

/// Jumbo frames (the client's link at MTU 9000, the server's at 1500) the router answers:
/// too big for the egress (IPv4 with DF, IPv6), expired. They arrive in more than one buffer.
fn jumbo_frames(c_mac: [u8; 6], f_mac: [u8; 6]) -> Vec<Vec<u8>> {
    let eth = || PacketBuilder::ethernet2(c_mac, f_mac);
    let udp4 = |src: [u8; 4], ttl: u8, df: bool| {
        let mut ip =
            etherparse::Ipv4Header::new(0, ttl, etherparse::IpNumber::UDP, src, SERVER_V4.octets())
                .unwrap();
        ip.dont_fragment = df;
        ip.identification = 0x4343;
        let mut f = Vec::new();
        let payload: Vec<u8> = (0..8000).map(|i| (i % 251) as u8).collect();
        eth()
            .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
            .udp(4000, 9000)
            .write(&mut f, &payload)
            .unwrap();
        f
    };
    let udp6 = |src: [u8; 16], hops: u8| {
        let mut f = Vec::new();
        let payload: Vec<u8> = (0..8000).map(|i| (i % 241) as u8).collect();
        eth().ipv6(src, SERVER_V6.octets(), hops).udp(4000, 9000).write(&mut f, &payload).unwrap();
        f
    };
    vec![udp4(src4(21), 64, true), udp4(src4(22), 1, false), udp6(src6(21), 64), udp6(src6(22), 1)]
}

/// The ICMP errors the client receives for the frames, with the fields that legitimately
/// differ between two senders zeroed: IPv4 identification and header checksum, IPv6 flow
/// label. Sorted.
fn errors(topo: &Topology) -> Vec<Vec<u8>> {
    errors_for(topo, frames)
}

/// [`errors`] for the frames `make` builds.
fn errors_for(topo: &Topology, make: fn([u8; 6], [u8; 6]) -> Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    assert!(topo.ping(&topo.client, IpAddr::V4(SERVER_V4), 1), "paths work");
    let c0 = topo.c0.clone();
    let capture = in_netns(&topo.client, move || RawSocket::open(&c0)).unwrap().unwrap();
    let c0 = topo.c0.clone();
    let sender = in_netns(&topo.client, move || RawSocket::open(&c0)).unwrap().unwrap();
    let c_mac = topo.mac(&topo.client, &topo.c0).unwrap();
    let f_mac = topo.mac(&topo.fwd, &topo.f0).unwrap();
    for frame in make(c_mac, f_mac) {
        sender.send(&frame).unwrap();
    }
    let mut got: Vec<Vec<u8>> = capture
        .drain(Duration::from_millis(1500), 2000)
        .into_iter()
        .filter_map(|mut f| {
            let v4_error =
                f.len() >= 42 && f[12..14] == [8, 0] && f[23] == 1 && matches!(f[34], 3 | 11);
            let v6_error = f.len() >= 62 && f[12..14] == [0x86, 0xdd] && f[20] == 58 && f[54] < 128;
            if v4_error {
                f[18..20].fill(0);
                f[24..26].fill(0);
            } else if v6_error {
                f[15] &= 0xf0;
                f[16..18].fill(0);
            } else {
                return None;
            }
            Some(f)
        })
        .collect();
    got.sort();
    got
}

/// The source (last byte) an IPv4 error is addressed to, for the assertions.
fn to_v4(f: &[u8]) -> Option<u8> {
    (f[12..14] == [8, 0]).then(|| f[33])
}

#[test]
fn icmp_errors_are_the_kernels_with_forwarding_off() {
    let topo = Topology::new("icmp", true).unwrap();
    prepare(&topo);
    let kernel = errors(&topo);
    let count = |errs: &[Vec<u8>], src: u8| errs.iter().filter(|f| to_v4(f) == Some(src)).count();
    assert_eq!(count(&kernel, 20), 6, "the kernel's limit per destination");
    for src in [10, 11, 12, 13, 14, 15, 16] {
        assert_eq!(count(&kernel, src), 1, "the kernel answers source {src}");
    }
    assert_eq!(count(&kernel, 17) + count(&kernel, 18), 0, "blackhole, ICMP error");
    let v6 = kernel.iter().filter(|f| f[12..14] == [0x86, 0xdd]).count();
    assert_eq!(v6, 3, "IPv6 errors: {kernel:02x?}");

    topo.set_forwarding(false).unwrap();
    let mut fwd =
        Forwarder::start(&topo.fwd, &[&topo.f0, &topo.f1, "--stats-interval", "0"]).unwrap();
    let ours = errors(&topo);
    let done = fwd.stop().unwrap();
    assert_eq!(ours.len(), kernel.len(), "as many errors as the kernel: {}", done.stdout);
    for (a, b) in ours.iter().zip(&kernel) {
        let at = a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()));
        let show = |f: &[u8]| format!("{:02x?}", &f[at.saturating_sub(8)..(at + 8).min(f.len())]);
        assert!(
            a == b,
            "the same error, byte for byte: ours {} B, the kernel's {} B, first difference at \
             byte {at}: ours {} kernel {}",
            a.len(),
            b.len(),
            show(a),
            show(b)
        );
    }
    assert!(xdp_counter(&done.stdout, "steered_icmp") >= 20, "{}", done.stdout);
    assert!(done.stdout.contains("icmp errors: sent"), "{}", done.stdout);
}

/// `icmp_errors_use_inbound_ifaddr = 1`: the errors come from the ingress's own address,
/// not from the route back's preferred source (here the other interface's address).
#[test]
fn icmp_errors_take_the_inbound_address_when_told() {
    let topo = Topology::new("icmpin", true).unwrap();
    prepare(&topo);
    let f = |args: &[&str]| ns_sh(&topo.fwd, args).unwrap();
    f(&["sysctl", "-qw", "net.ipv4.icmp_errors_use_inbound_ifaddr=1"]);
    let f0 = topo.f0.clone();
    f(&[
        "ip",
        "route",
        "change",
        "198.18.1.0/24",
        "dev",
        &f0,
        "proto",
        "kernel",
        "src",
        "198.18.2.1",
    ]);
    let kernel = errors(&topo);
    let from = |errs: &[Vec<u8>]| {
        errs.iter().filter(|e| to_v4(e).is_some()).map(|e| e[26..30].to_vec()).collect::<Vec<_>>()
    };
    assert!(
        from(&kernel).iter().all(|a| a[..] == [198, 18, 1, 1]),
        "inbound address: {kernel:02x?}"
    );
    topo.set_forwarding(false).unwrap();
    let mut fwd =
        Forwarder::start(&topo.fwd, &[&topo.f0, &topo.f1, "--stats-interval", "0"]).unwrap();
    let ours = errors(&topo);
    let done = fwd.stop().unwrap();
    assert_eq!(from(&ours), from(&kernel), "sources: {}", done.stdout);
    assert_eq!(ours, kernel, "the same errors");
}

/// With the kernel's IPv6 forwarding off for all interfaces but on for the ingress's own
/// `forwarding` (host/router behaviour only), the kernel does not forward IPv6: xdpfwd owes
/// the hop-limit error.
#[test]
fn ipv6_forwarding_is_the_kernels_global_switch() {
    let topo = Topology::new("icmp6", false).unwrap();
    let dev = format!("net.ipv6.conf.{}.forwarding=1", topo.f0);
    ns_sh(&topo.fwd, &["sysctl", "-qw", &dev]).unwrap();
    let mut fwd =
        Forwarder::start(&topo.fwd, &[&topo.f0, &topo.f1, "--stats-interval", "0"]).unwrap();
    let c_mac = topo.mac(&topo.client, &topo.c0).unwrap();
    let f_mac = topo.mac(&topo.fwd, &topo.f0).unwrap();
    let c0 = topo.c0.clone();
    let capture = in_netns(&topo.client, move || RawSocket::open(&c0)).unwrap().unwrap();
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(c_mac, f_mac)
        .ipv6(xdpfwd_tests::CLIENT_V6.octets(), SERVER_V6.octets(), 1)
        .udp(4000, 9000)
        .write(&mut frame, &[1; 16])
        .unwrap();
    assert!(topo.ping(&topo.client, IpAddr::V6(SERVER_V6), 1), "paths work");
    capture.send(&frame).unwrap();
    let answered = capture
        .drain(Duration::from_millis(1000), 100)
        .iter()
        .any(|f| f.len() > 62 && f[12..14] == [0x86, 0xdd] && f[20] == 58 && f[54] == 3);
    let done = fwd.stop().unwrap();
    assert!(answered, "hop limit exceeded is answered: {}", done.stdout);
}

/// tracepath and traceroute through xdpfwd (kernel forwarding off) see the router's hop.
#[test]
fn traceroute_sees_the_router() {
    let topo = Topology::new("trace", false).unwrap();
    let mut fwd =
        Forwarder::start(&topo.fwd, &[&topo.f0, &topo.f1, "--stats-interval", "0"]).unwrap();
    assert!(topo.ping(&topo.client, IpAddr::V4(SERVER_V4), 1), "paths work");
    let server = SERVER_V4.to_string();
    let trace =
        ns_sh(&topo.client, &["traceroute", "-n", "-q", "1", "-w", "2", "-m", "4", &server])
            .unwrap();
    let path = ns_sh(&topo.client, &["tracepath", "-n", "-m", "4", &server]).unwrap_or_default();
    let server6 = SERVER_V6.to_string();
    let trace6 =
        ns_sh(&topo.client, &["traceroute", "-6", "-n", "-q", "1", "-w", "2", "-m", "4", &server6])
            .unwrap();
    let done = fwd.stop().unwrap();
    let hop = |out: &str, n: &str, addr: &str| {
        out.lines().any(|l| l.trim_start().starts_with(n) && l.contains(addr))
    };
    assert!(hop(&trace, "1 ", "198.18.1.1"), "traceroute hop 1:\n{trace}");
    assert!(hop(&trace, "2 ", &server), "traceroute hop 2:\n{trace}");
    assert!(path.contains("198.18.1.1"), "tracepath sees the router:\n{path}");
    assert!(hop(&trace6, "1 ", "2001:2:0:1::1"), "traceroute -6 hop 1:\n{trace6}");
    assert!(xdp_counter(&done.stdout, "steered_icmp") >= 2, "{}", done.stdout);
    let _ = CLIENT_V4;
}

/// A TCP transfer over a path whose MTU (1300, a route's) is below the links' (1500): the
/// client learns it from xdpfwd's "fragmentation needed" / "packet too big" and completes.
#[test]
fn tcp_finds_the_path_mtu_through_xdpfwd() {
    let topo = Topology::new("pmtu", false).unwrap();
    let f = |args: &[&str]| ns_sh(&topo.fwd, args).unwrap();
    f(&["ip", "route", "add", "198.19.60.0/24", "via", "198.18.2.2", "mtu", "1300"]);
    f(&["ip", "-6", "route", "add", "2001:2:0:60::/64", "via", "2001:2:0:2::2", "mtu", "1300"]);
    ns_sh(&topo.server, &["ip", "addr", "add", "198.19.60.5/32", "dev", "lo"]).unwrap();
    ns_sh(&topo.server, &["ip", "addr", "add", "2001:2:0:60::5/128", "dev", "lo"]).unwrap();
    let mut fwd =
        Forwarder::start(&topo.fwd, &[&topo.f0, &topo.f1, "--stats-interval", "0"]).unwrap();
    for dst in [IpAddr::V4(Ipv4Addr::new(198, 19, 60, 5)), "2001:2:0:60::5".parse().unwrap()] {
        let sent = transfer(&topo, dst, 1 << 20);
        assert_eq!(sent, Ok(1 << 20), "TCP to {dst} completes");
    }
    let done = fwd.stop().unwrap();
    assert!(xdp_counter(&done.stdout, "steered_icmp") >= 2, "{}", done.stdout);
}

/// Sends `bytes` from the client to a server at `dst`; the bytes the server acknowledged
/// having read, or why not, within 20 s.
fn transfer(topo: &Topology, dst: IpAddr, bytes: usize) -> Result<usize, String> {
    let bind = SocketAddr::new(dst, 5201);
    let listener = in_netns(&topo.server, move || TcpListener::bind(bind)).unwrap().unwrap();
    let server = thread::spawn(move || -> std::io::Result<usize> {
        let (mut s, _) = listener.accept()?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut buf = vec![0u8; 65536];
        let mut total = 0;
        while total < bytes {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            total += n;
        }
        s.write_all(&(total as u64).to_be_bytes())?;
        Ok(total)
    });
    let client = in_netns(&topo.client, move || -> std::io::Result<usize> {
        let mut s = TcpStream::connect_timeout(&bind, Duration::from_secs(5))?;
        s.set_write_timeout(Some(Duration::from_secs(20)))?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        let started = Instant::now();
        s.write_all(&vec![0x33; bytes])?;
        let mut ack = [0u8; 8];
        s.read_exact(&mut ack)?;
        let _ = started;
        Ok(u64::from_be_bytes(ack) as usize)
    })
    .unwrap();
    let served = server.join().map_err(|_| "server panicked".to_string())?;
    served.map_err(|e| format!("server: {e}"))?;
    client.map_err(|e| format!("client: {e}"))
}

/// Jumbo frames the router cannot forward (too big for the egress, expired) get the kernel's
/// errors from xdpfwd too: the XDP program trims what it steers for an answer to the quote,
/// so a frame in more than one buffer fits one AF_XDP buffer.
#[test]
fn jumbo_frames_get_the_kernels_errors_with_forwarding_off() {
    let topo = Topology::new("icmpj", true).unwrap();
    prepare(&topo);
    topo.set_mtu(9000, 1500).unwrap();
    let kernel = errors_for(&topo, jumbo_frames);
    assert_eq!(kernel.len(), 4, "the kernel answers every frame: {kernel:02x?}");

    topo.set_forwarding(false).unwrap();
    let mut fwd =
        Forwarder::start(&topo.fwd, &[&topo.f0, &topo.f1, "--stats-interval", "0"]).unwrap();
    let ours = errors_for(&topo, jumbo_frames);
    let done = fwd.stop().unwrap();
    assert_eq!(ours, kernel, "the same errors, byte for byte: {}", done.stdout);
    assert!(xdp_counter(&done.stdout, "steered_icmp") >= 4, "{}", done.stdout);
    assert_eq!(xdp_counter(&done.stdout, "pass_too_long"), 0, "{}", done.stdout);
}

/// An ICMPv6 error to a source on another link than the one its packet came in by (routing
/// that is not symmetric, or a spoofed source) comes, as the kernel's (`icmp6_send`), from
/// the address the ingress would use towards that source, not from the link the error
/// leaves by; unless the route back has a preferred source, which then wins.
#[test]
fn icmpv6_errors_come_from_the_ingress_unless_the_route_back_says() {
    let topo = Topology::new("icmp6src", true).unwrap();
    let f = |args: &[&str]| ns_sh(&topo.fwd, args).unwrap();
    let s_mac = xdpfwd_tests::fmt_mac(topo.mac(&topo.server, &topo.s0).unwrap());
    topo.permanent_neighbour("2001:2:0:2::7", &s_mac, &topo.f1).unwrap();
    f(&[
        "ip",
        "-6",
        "route",
        "add",
        "2001:2:0:9::/64",
        "via",
        "2001:2:0:2::7",
        "src",
        "2001:2:0:2::1",
    ]);
    topo.permanent_neighbour("2001:2:0:2::2", &s_mac, &topo.f1).unwrap();
    let c_mac = topo.mac(&topo.client, &topo.c0).unwrap();
    let f_mac = topo.mac(&topo.fwd, &topo.f0).unwrap();
    let expired = |src: &str| {
        let src: Ipv6Addr = src.parse().unwrap();
        let mut v = Vec::new();
        PacketBuilder::ethernet2(c_mac, f_mac)
            .ipv6(src.octets(), SERVER_V6.octets(), 1)
            .udp(4000, 9000)
            .write(&mut v, &[7; 16])
            .unwrap();
        v
    };
    let frames = [expired("2001:2:0:2::7"), expired("2001:2:0:9::9")];
    let errors_at_server = || {
        let s0 = topo.s0.clone();
        let capture = in_netns(&topo.server, move || RawSocket::open(&s0)).unwrap().unwrap();
        let c0 = topo.c0.clone();
        let sender = in_netns(&topo.client, move || RawSocket::open(&c0)).unwrap().unwrap();
        for frame in &frames {
            sender.send(frame).unwrap();
            thread::sleep(Duration::from_millis(20));
        }
        let mut got: Vec<Vec<u8>> = capture
            .drain(Duration::from_millis(500), 100)
            .into_iter()
            .filter(|f| f.len() >= 62 && f[12..14] == [0x86, 0xdd] && f[20] == 58 && f[54] == 3)
            .map(|mut f| {
                f[15] &= 0xf0;
                f[16..18].fill(0);
                f
            })
            .collect();
        got.sort();
        got
    };
    let kernel = errors_at_server();
    let sources: Vec<Ipv6Addr> =
        kernel.iter().map(|e| <[u8; 16]>::try_from(&e[22..38]).unwrap().into()).collect();
    let expected: Vec<Ipv6Addr> =
        ["2001:2:0:1::1", "2001:2:0:2::1"].map(|a| a.parse().unwrap()).into();
    assert_eq!(sources, expected, "the kernel's: the ingress's, then the route's source");
    topo.set_forwarding(false).unwrap();
    let mut fwd =
        Forwarder::start(&topo.fwd, &[&topo.f0, &topo.f1, "--stats-interval", "0"]).unwrap();
    let ours = errors_at_server();
    let done = fwd.stop().unwrap();
    assert_eq!(xdp_counter(&done.stdout, "steered_icmp"), 2, "{}", done.stdout);
    assert_eq!(ours, kernel, "the same errors, byte for byte");
}
