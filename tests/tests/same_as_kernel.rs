//! The router rule: for every frame xdpfwd forwards, the receiver gets exactly the frame the
//! Linux router would have delivered. A mixed stream goes through the kernel alone, then with
//! xdpfwd beside it (kernel forwarding on in both runs), and the frames captured at the
//! receiver are compared byte for byte.

use std::{net::IpAddr, thread, time::Duration};

use etherparse::PacketBuilder;
use xdpfwd_tests::{
    CLIENT_V4, CLIENT_V6, Finished, Forwarder, SERVER_V4, SERVER_V6, Topology, in_netns, ns_sh,
    packet::{RawSocket, fix_ipv4_checksum, with_ipv4_options, with_ipv6_extension},
    xdp_counter,
};

fn w<B: Build>(b: B, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    b.build(&mut v, payload);
    v
}

/// The last step of an etherparse builder.
trait Build {
    fn build(self, out: &mut Vec<u8>, payload: &[u8]);
}

impl<T> Build for etherparse::PacketBuilderStep<T>
where
    etherparse::PacketBuilderStep<T>: WriteStep,
{
    fn build(self, out: &mut Vec<u8>, payload: &[u8]) {
        self.write_step(out, payload);
    }
}

trait WriteStep {
    fn write_step(self, out: &mut Vec<u8>, payload: &[u8]);
}

macro_rules! write_step {
    ($($t:ty),*) => {$(
        impl WriteStep for etherparse::PacketBuilderStep<$t> {
            fn write_step(self, out: &mut Vec<u8>, payload: &[u8]) {
                self.write(out, payload).expect("frame builds");
            }
        }
    )*};
}
write_step!(
    etherparse::UdpHeader,
    etherparse::TcpHeader,
    etherparse::Icmpv4Header,
    etherparse::Icmpv6Header
);

/// The mixed stream, from the client's interface to the forwarder's MAC.
fn stream(c_mac: [u8; 6], f_mac: [u8; 6]) -> Vec<(&'static str, Vec<u8>)> {
    let v4 = |ttl: u8| {
        PacketBuilder::ethernet2(c_mac, f_mac).ipv4(CLIENT_V4.octets(), SERVER_V4.octets(), ttl)
    };
    let v6 = |hop: u8| {
        PacketBuilder::ethernet2(c_mac, f_mac).ipv6(CLIENT_V6.octets(), SERVER_V6.octets(), hop)
    };
    let data = |n: usize| (0..n).map(|i| (i * 7 + 3) as u8).collect::<Vec<u8>>();
    let mut out: Vec<(&'static str, Vec<u8>)> = Vec::new();
    let mut push = |name: &'static str, f: Vec<u8>| out.push((name, f));

    // IPv4
    let mut small = w(v4(64).udp(4000, 9000), &data(4));
    small.resize(60, 0xab); // link-layer padding, trimmed by a router
    push("udp4 small padded", small);
    push("udp4 1200", w(v4(64).udp(4001, 9000), &data(1200)));
    push("tcp4 syn", w(v4(64).tcp(4002, 80, 1000, 64240).syn(), &[]));
    push("tcp4 data", w(v4(64).tcp(4002, 80, 1001, 64240).ack(77).psh(), &data(100)));
    push("icmp4 echo", w(v4(64).icmpv4_echo_request(7, 1), &data(56)));
    push("udp4 ttl 2", w(v4(2).udp(4003, 9000), &data(20)));
    let mut df = w(v4(64).udp(4004, 9000), &data(1400));
    df[20] |= 0x40;
    fix_ipv4_checksum(&mut df);
    push("udp4 DF 1400", df);
    // IP options (NOP NOP NOP EOL): the kernel's business.
    push("udp4 options", with_ipv4_options(&w(v4(64).udp(4005, 9000), &data(30))));
    // Fragments: first (MF, offset 0) and last (offset 64 bytes).
    let whole = w(v4(64).udp(4006, 9000), &data(100));
    let l4 = &whole[34..];
    let mut first = whole[..34].to_vec();
    first.extend_from_slice(&l4[..64]);
    first[16..18].copy_from_slice(&84u16.to_be_bytes());
    first[20..22].copy_from_slice(&0x2000u16.to_be_bytes());
    fix_ipv4_checksum(&mut first);
    push("udp4 first fragment", first);
    let mut last = whole[..34].to_vec();
    last.extend_from_slice(&l4[64..]);
    last[16..18].copy_from_slice(&((20 + l4.len() - 64) as u16).to_be_bytes());
    last[20..22].copy_from_slice(&8u16.to_be_bytes());
    fix_ipv4_checksum(&mut last);
    push("udp4 last fragment", last);
    let mut bad = w(v4(64).udp(4007, 9000), &data(10));
    bad[24] ^= 0xff;
    push("udp4 bad header checksum", bad);

    // IPv6
    push("udp6 small", w(v6(64).udp(4100, 9000), &data(2)));
    push("udp6 1200", w(v6(64).udp(4101, 9000), &data(1200)));
    push("tcp6 syn", w(v6(64).tcp(4102, 80, 5000, 64240).syn(), &[]));
    push("icmp6 echo", w(v6(64).icmpv6_echo_request(9, 1), &data(56)));
    push("udp6 hop limit 2", w(v6(2).udp(4103, 9000), &data(20)));
    // Extension headers: destination options (forwarded as is) and hop-by-hop (kernel).
    for (name, next) in [("udp6 destination options", 60u8), ("udp6 hop-by-hop", 0u8)] {
        push(name, with_ipv6_extension(&w(v6(64).udp(4104, 9000), &data(24)), next));
    }
    out
}

/// Jumbo frames (both links at MTU 9000): in more than one buffer on veth (longer than a
/// page), or in one buffer but longer than an AF_XDP frame; ICMP, TCP and UDP, fragments.
fn jumbo_stream(c_mac: [u8; 6], f_mac: [u8; 6]) -> Vec<(&'static str, Vec<u8>)> {
    let v4 =
        || PacketBuilder::ethernet2(c_mac, f_mac).ipv4(CLIENT_V4.octets(), SERVER_V4.octets(), 64);
    let v6 =
        || PacketBuilder::ethernet2(c_mac, f_mac).ipv6(CLIENT_V6.octets(), SERVER_V6.octets(), 64);
    let data = |n: usize| (0..n).map(|i| (i * 13 + 5) as u8).collect::<Vec<u8>>();
    let mut out: Vec<(&'static str, Vec<u8>)> = Vec::new();
    let mut push = |name: &'static str, f: Vec<u8>| out.push((name, f));
    push("udp4 8972", w(v4().udp(4200, 9000), &data(8972)));
    let mut df = w(v4().udp(4201, 9000), &data(8000));
    df[20] |= 0x40;
    fix_ipv4_checksum(&mut df);
    push("udp4 DF 8000", df);
    push("udp4 3000", w(v4().udp(4202, 9000), &data(3000)));
    push("tcp4 8000", w(v4().tcp(4203, 80, 1001, 64240).ack(77).psh(), &data(8000)));
    push("icmp4 echo 6000", w(v4().icmpv4_echo_request(7, 1), &data(6000)));
    let mut padded = w(v4().udp(4204, 9000), &data(7000));
    padded.extend_from_slice(&[0xab; 40]); // beyond the IP length: trimmed by a router
    push("udp4 7000 padded", padded);
    // A first fragment of 8000 bytes (MF set).
    let mut first = w(v4().udp(4205, 9000), &data(8000));
    first[20..22].copy_from_slice(&0x2000u16.to_be_bytes());
    fix_ipv4_checksum(&mut first);
    push("udp4 first fragment 8000", first);
    push("udp6 8952", w(v6().udp(4300, 9000), &data(8952)));
    push("tcp6 5000", w(v6().tcp(4301, 80, 5001, 64240).ack(9).psh(), &data(5000)));
    push("udp6 2500", w(v6().udp(4302, 9000), &data(2500)));
    push("udp4 small", w(v4().udp(4206, 9000), &data(100)));
    out
}

/// Sends the stream `make` builds from the client and returns the frames from the client
/// that arrived at the server.
fn run(topo: &Topology, make: Stream) -> Vec<Vec<u8>> {
    // Warm the neighbour caches, so no frame waits for resolution.
    assert!(topo.ping(&topo.client, IpAddr::V4(SERVER_V4), 2));
    assert!(topo.ping(&topo.client, IpAddr::V6(SERVER_V6), 2));
    thread::sleep(Duration::from_millis(200));
    let s0 = topo.s0.clone();
    let capture = in_netns(&topo.server, move || RawSocket::open(&s0)).unwrap().unwrap();
    let c0 = topo.c0.clone();
    let sender = in_netns(&topo.client, move || RawSocket::open(&c0)).unwrap().unwrap();
    let c_mac = topo.mac(&topo.client, &topo.c0).unwrap();
    let f_mac = topo.mac(&topo.fwd, &topo.f0).unwrap();
    for (_, frame) in make(c_mac, f_mac) {
        sender.send(&frame).unwrap();
        thread::sleep(Duration::from_millis(5));
    }
    let from_client = |f: &Vec<u8>| {
        (f.len() >= 34 && f[12..14] == [8, 0] && f[26..30] == CLIENT_V4.octets())
            || (f.len() >= 54 && f[12..14] == [0x86, 0xdd] && f[22..38] == CLIENT_V6.octets())
    };
    capture.drain(Duration::from_millis(500), 1000).into_iter().filter(from_client).collect()
}

type Stream = fn([u8; 6], [u8; 6]) -> Vec<(&'static str, Vec<u8>)>;

/// Runs the stream through the kernel, then through xdpfwd started with `args`, and compares
/// what the server received; `counter` names the xdpfwd counter that must show the work.
fn compare(tag: &str, args: &[&str], counter: &str) {
    let topo = Topology::new(tag, true).unwrap();
    compare_on(&topo, stream, args, &[(counter, 10)]);
}

/// [`compare`] on `topo` with the stream `make`; each of `counters` must reach its count.
/// Returns how xdpfwd finished.
fn compare_on(topo: &Topology, make: Stream, args: &[&str], counters: &[(&str, u64)]) -> Finished {
    topo.enable_gro().unwrap();
    let kernel = run(topo, make);
    assert!(kernel.len() >= 10, "the kernel forwarded {} frames", kernel.len());

    let mut full = vec![topo.f0.as_str(), topo.f1.as_str(), "--stats-interval", "0"];
    full.extend_from_slice(args);
    let mut fwd = Forwarder::start(&topo.fwd, &full).unwrap();
    let ours = run(topo, make);
    let done = fwd.stop().unwrap();
    for &(counter, least) in counters {
        let work = xdp_counter(&done.stdout, counter);
        assert!(work >= least, "{counter} is {work}, not at least {least}: {}", done.stdout);
    }

    let names: Vec<_> = make([0; 6], [0; 6]).into_iter().map(|(n, _)| n).collect();
    assert_eq!(ours.len(), kernel.len(), "same number of frames ({names:?})");
    for (i, (k, o)) in kernel.iter().zip(&ours).enumerate() {
        assert_eq!(k, o, "frame {i} differs:\nkernel {k:02x?}\nxdpfwd {o:02x?}");
    }
    done
}

#[test]
fn mixed_stream_through_xdpfwd_equals_the_kernels() {
    compare("s", &["--default-path", "af-xdp"], "steered");
}

#[test]
fn mixed_stream_through_the_fast_path_equals_the_kernels() {
    compare("sf", &["--default-path", "fast"], "fast_forwarded");
}

/// Interfaces with an ifindex beyond `IFINDEX_DIRECT` are looked up in the hash rather than
/// the array, ingress and egress, on both paths: still the kernel's frame for frame.
#[test]
fn interfaces_with_large_ifindexes_forward_as_the_kernel_does() {
    let large = xdpfwd_common::IFINDEX_DIRECT + 1000;
    for (tag, ifindexes, path, counter) in [
        ("ia", [Some(large), None], "af-xdp", "steered"),
        ("if", [None, Some(large)], "fast", "fast_forwarded"),
    ] {
        let topo = Topology::with_ifindexes(tag, true, ifindexes).unwrap();
        let index =
            |dev: &str| ns_sh(&topo.fwd, &["cat", &format!("/sys/class/net/{dev}/ifindex")]);
        let large_dev = if ifindexes[0].is_some() { &topo.f0 } else { &topo.f1 };
        assert_eq!(index(large_dev).unwrap().trim(), large.to_string());
        compare_on(&topo, stream, &["--default-path", path], &[(counter, 10)]);
    }
}

/// Jumbo frames (MTU 9000) on the fast path: frames in more than one buffer leave intact,
/// the kernel's frame for frame.
#[test]
fn jumbo_frames_through_the_fast_path_equal_the_kernels() {
    let topo = Topology::new("jf", true).unwrap();
    topo.set_mtu(9000, 9000).unwrap();
    let done =
        compare_on(&topo, jumbo_stream, &["--default-path", "fast"], &[("fast_forwarded", 11)]);
    assert_eq!(xdp_counter(&done.stdout, "pass_too_long"), 0, "{}", done.stdout);
}

/// With the AF_XDP path chosen, jumbo frames take it in more than one UMEM frame (the
/// sockets are bound with `XDP_USE_SG`): received in several, the first rewritten, sent as
/// one packet of several. Only the padded one (its IP length short of its end, which user
/// space would have to trim across buffers) takes the fast path. Still the kernel's frame
/// for frame.
#[test]
fn jumbo_frames_through_the_af_xdp_path_equal_the_kernels() {
    let topo = Topology::new("ja", true).unwrap();
    topo.set_mtu(9000, 9000).unwrap();
    let done = compare_on(&topo, jumbo_stream, &["--default-path", "af-xdp"], &[("steered", 11)]);
    assert_eq!(xdp_counter(&done.stdout, "fast_forwarded"), 1, "{}", done.stdout);
    assert_eq!(xdp_counter(&done.stdout, "pass_too_long"), 0, "{}", done.stdout);
    // No MTU warning: 9000 fits the multi-buffer sockets.
    assert!(!done.stderr.contains("do not fit"), "{}", done.stderr);
    assert!(done.stderr.contains("multi-buffer (frames up to 61412 bytes)"), "{}", done.stderr);
}

/// The Subnet-Router anycast address of a prefix (here 2001:2:0:2::, of the server's link)
/// is a Linux router's own: it takes packets to it in. With the kernel's forwarding off
/// (the kernel then drops its anycast route), xdpfwd, the router in its place, leaves them
/// to the kernel all the same: it neither forwards them nor answers them with "time
/// exceeded", as it does for the server's address.
#[test]
fn packets_to_the_subnet_router_anycast_address_are_not_forwarded() {
    let topo = Topology::new("an", false).unwrap();
    topo.static_neighbours().unwrap();
    let args = [topo.f0.as_str(), topo.f1.as_str(), "--stats-interval", "0"];
    let mut fwd = Forwarder::start(&topo.fwd, &args).unwrap();
    let c0 = topo.c0.clone();
    let client = in_netns(&topo.client, move || RawSocket::open(&c0)).unwrap().unwrap();
    let c_mac = topo.mac(&topo.client, &topo.c0).unwrap();
    let f_mac = topo.mac(&topo.fwd, &topo.f0).unwrap();
    let anycast: std::net::Ipv6Addr = "2001:2:0:2::".parse().unwrap();
    let to = |dst: std::net::Ipv6Addr, hop: u8| {
        let ip = PacketBuilder::ethernet2(c_mac, f_mac).ipv6(CLIENT_V6.octets(), dst.octets(), hop);
        w(ip.udp(4000, 9000), &[1, 2, 3, 4])
    };
    for frame in [to(anycast, 64), to(anycast, 1), to(SERVER_V6, 1)] {
        client.send(&frame).unwrap();
        thread::sleep(Duration::from_millis(20));
    }
    let back = client.drain(Duration::from_millis(500), 100);
    let exceeded: Vec<&Vec<u8>> = back
        .iter()
        .filter(|f| f.len() >= 102 && f[12..14] == [0x86, 0xdd] && f[20] == 58 && f[54] == 3)
        .collect();
    assert_eq!(exceeded.len(), 1, "one \"time exceeded\": {exceeded:02x?}");
    assert_eq!(exceeded[0][86..102], SERVER_V6.octets(), "for the packet to the server");
    let done = fwd.stop().unwrap();
    assert!(done.success, "{done:?}");
    assert_eq!(xdp_counter(&done.stdout, "steered_icmp"), 1, "{}", done.stdout);
    assert_eq!(xdp_counter(&done.stdout, "steered_neigh_miss"), 0, "{}", done.stdout);
}

/// A policy rule on a protocol and its ports (`ipproto udp dport 7000`) cannot match a
/// packet of another protocol, ports or not (the kernel compares the protocol first): with
/// the kernel's forwarding off, xdpfwd forwards ICMP and GRE past it, and only the UDP
/// datagram to port 7000 meets the rule's unreachable table.
#[test]
fn a_port_rule_of_another_protocol_lets_packets_through() {
    let topo = Topology::new("pp", false).unwrap();
    topo.static_neighbours().unwrap();
    for args in [
        &["ip", "route", "add", "unreachable", "default", "table", "200"][..],
        &["ip", "rule", "add", "ipproto", "udp", "dport", "7000", "lookup", "200", "pref", "200"],
    ] {
        ns_sh(&topo.fwd, args).unwrap();
    }
    let args = [topo.f0.as_str(), topo.f1.as_str(), "--stats-interval", "0"];
    let mut fwd = Forwarder::start(&topo.fwd, &args).unwrap();
    let c_mac = topo.mac(&topo.client, &topo.c0).unwrap();
    let f_mac = topo.mac(&topo.fwd, &topo.f0).unwrap();
    let v4 =
        || PacketBuilder::ethernet2(c_mac, f_mac).ipv4(CLIENT_V4.octets(), SERVER_V4.octets(), 64);
    let echo = w(v4().icmpv4_echo_request(7, 1), &[1; 16]);
    let mut gre = w(v4().udp(4000, 7000), &[2; 16]);
    gre[23] = 47;
    fix_ipv4_checksum(&mut gre);
    let udp = w(v4().udp(4000, 7000), &[3; 16]);
    let s0 = topo.s0.clone();
    let capture = in_netns(&topo.server, move || RawSocket::open(&s0)).unwrap().unwrap();
    let c0 = topo.c0.clone();
    let sender = in_netns(&topo.client, move || RawSocket::open(&c0)).unwrap().unwrap();
    for frame in [&echo, &gre, &udp] {
        sender.send(frame).unwrap();
        thread::sleep(Duration::from_millis(20));
    }
    let arrived: Vec<u8> = capture
        .drain(Duration::from_millis(500), 100)
        .iter()
        .filter(|f| f.len() > 34 && f[12..14] == [8, 0] && f[26..30] == CLIENT_V4.octets())
        .map(|f| f[23])
        .collect();
    let done = fwd.stop().unwrap();
    assert_eq!(arrived, [1, 47], "ICMP and GRE arrived, UDP to 7000 did not\n{}", done.stdout);
    assert_eq!(xdp_counter(&done.stdout, "pass_fib"), 0, "{}", done.stdout);
}
