//! The rest of the forwarding policy, on veth in namespaces: static routes (a next hop the
//! kernel resolves, a fixed MAC, added by a reload), L2 cross-connects with VLAN pop / push /
//! rewrite checked on captured frames, VLAN tags on routed traffic with VLAN rules, and
//! stateless NAT that the receiving kernels accept (TCP, UDP, ICMP; IPv4 and IPv6).

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use xdpfwd_tests::{
    CLIENT_V4, CLIENT_V6, Forwarder, SERVER_V4, SERVER_V6, Topology, fmt_mac, in_netns,
    packet::{RawSocket, checksum},
    run_to_exit, sh,
};

fn write_config(topo: &Topology, name: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("{}-{name}.toml", topo.prefix));
    std::fs::write(&path, text).unwrap();
    path
}

fn start(topo: &Topology, config: &std::path::Path) -> Forwarder {
    start_with(topo, config, &[])
}

/// Checks `config`, then starts xdpfwd with it and the `extra` flags.
fn start_with(topo: &Topology, config: &std::path::Path, extra: &[&str]) -> Forwarder {
    let path = config.to_string_lossy();
    let check = run_to_exit(&topo.fwd, &[], &["check", "--config", &path]).unwrap();
    assert!(check.success, "{check:?}");
    let mut args = vec!["--config", &path, "--stats-interval", "0"];
    args.extend_from_slice(extra);
    Forwarder::start(&topo.fwd, &args).unwrap()
}

fn reload(topo: &Topology) {
    let r = run_to_exit(&topo.fwd, &[], &["reload"]).unwrap();
    assert!(r.success, "{r:?}");
    thread::sleep(Duration::from_millis(400));
}

#[test]
fn static_routes_via_a_resolved_neighbour_and_a_fixed_mac_and_added_by_reload() {
    let topo = Topology::new("sr", false).unwrap();
    for a in ["198.19.5.1/32", "198.19.6.1/32", "2001:2:0:5::1/128"] {
        sh(&["ip", "-n", &topo.server, "addr", "add", a, "dev", &topo.s0, "nodad"]).unwrap();
    }
    let s0_mac = fmt_mac(topo.mac(&topo.server, &topo.s0).unwrap());
    let base = format!(
        "[[interface]]\nname = \"{f0}\"\n\n[[interface]]\nname = \"{f1}\"\n\n\
         [[route]]\ndst = \"198.19.5.0/24\"\nvia = \"{SERVER_V4}\"\n\n\
         [[route]]\ndst = \"2001:2:0:5::/64\"\nvia = \"{SERVER_V6}\"\n",
        f0 = topo.f0,
        f1 = topo.f1
    );
    let config = write_config(&topo, "routes", &base);
    let mut fwd = start(&topo, &config);
    // The forwarder's kernel has no route to these, and no neighbour entry for the server
    // yet: xdpfwd holds the frames while the kernel resolves the next hop.
    assert!(topo.ping(&topo.client, "198.19.5.1".parse().unwrap(), 2), "IPv4 static via");
    assert!(topo.ping(&topo.client, "2001:2:0:5::1".parse().unwrap(), 2), "IPv6 static via");
    assert!(!topo.ping(&topo.client, "198.19.6.1".parse().unwrap(), 1), "no route yet");

    let fixed = format!(
        "{base}\n[[route]]\ndst = \"198.19.6.0/24\"\ndev = \"{f1}\"\nmac = \"{s0_mac}\"\n",
        f1 = topo.f1
    );
    std::fs::write(&config, fixed).unwrap();
    reload(&topo);
    assert!(topo.ping(&topo.client, "198.19.6.1".parse().unwrap(), 2), "fixed-MAC route");
    let done = fwd.stop().unwrap();
    assert!(done.success, "{done:?}");
    assert!(done.stderr.contains("static routes"), "{}", done.stderr);
    let _ = std::fs::remove_file(config);
}

const ETH_CUSTOM: [u8; 2] = [0x88, 0xb5]; // IEEE 802 local experimental ethertype

/// A frame of the custom ethertype carrying `marker`, with an optional 802.1Q TCI.
fn custom_frame(dst: [u8; 6], src: [u8; 6], tci: Option<u16>, marker: u8) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend_from_slice(&src);
    if let Some(tci) = tci {
        f.extend_from_slice(&[0x81, 0x00]);
        f.extend_from_slice(&tci.to_be_bytes());
    }
    f.extend_from_slice(&ETH_CUSTOM);
    f.extend_from_slice(b"xdpfwd xconnect ");
    f.extend(std::iter::repeat_n(marker, 48));
    f
}

/// The captured frame whose payload ends with 48 `marker` bytes.
fn find(frames: &[Vec<u8>], marker: u8) -> Option<Vec<u8>> {
    frames.iter().find(|f| f.len() > 48 && f[f.len() - 48..].iter().all(|b| *b == marker)).cloned()
}

#[test]
fn xconnect_carries_any_ethertype_and_pops_pushes_and_rewrites_vlan_tags() {
    let topo = Topology::new("xc", false).unwrap();
    let config = write_config(
        &topo,
        "xconnect",
        &format!(
            "[[interface]]\nname = \"{f0}\"\nvlan_pop = true\n\n\
             [[interface]]\nname = \"{f1}\"\nvlan_pop = true\nvlan_push = 20\n\n\
             [[xconnect]]\na = \"{f0}\"\nb = \"{f1}\"\nmac_b = \"02:00:00:00:00:0b\"\n",
            f0 = topo.f0,
            f1 = topo.f1
        ),
    );
    let mut fwd = start(&topo, &config);
    let c_mac = topo.mac(&topo.client, &topo.c0).unwrap();
    let s_mac = topo.mac(&topo.server, &topo.s0).unwrap();
    let peer_b = [2, 0, 0, 0, 0, 0x0b];
    let c0 = topo.c0.clone();
    let s0 = topo.s0.clone();
    let client = in_netns(&topo.client, move || RawSocket::open(&c0)).unwrap().unwrap();
    let server = in_netns(&topo.server, move || RawSocket::open(&s0)).unwrap().unwrap();

    // An ARP request, untagged: pushed into VLAN 20, destination set to the peer MAC.
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&c_mac);
    arp.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&c_mac);
    arp.extend_from_slice(&[198, 18, 1, 2, 0, 0, 0, 0, 0, 0, 198, 18, 1, 99]);
    arp.resize(60, 0);
    arp[59] = 0xa5;
    client.send(&arp).unwrap();
    // A tagged frame (PCP 5, VID 10): the VID is rewritten in place, the priority kept.
    client.send(&custom_frame(s_mac, c_mac, Some(0xa00a), 0x11)).unwrap();
    let at_server = server.drain(Duration::from_millis(500), 100);
    let got = at_server
        .iter()
        .find(|f| f.len() >= 64 && f[16..18] == [0x08, 0x06] && f[63] == 0xa5)
        .unwrap_or_else(|| panic!("ARP not cross-connected: {at_server:02x?}"));
    let mut want = peer_b.to_vec();
    want.extend_from_slice(&arp[6..12]);
    want.extend_from_slice(&[0x81, 0x00, 0x00, 20]);
    want.extend_from_slice(&arp[12..]);
    assert_eq!(got, &want, "ARP: tag pushed, destination MAC set, nothing else changed");
    let got = find(&at_server, 0x11).expect("tagged custom frame cross-connected");
    let want = custom_frame(peer_b, c_mac, Some(0xa014), 0x11);
    assert_eq!(got, want, "VID 10 rewritten to 20 in place, PCP 5 kept");

    // Back from the server: a tagged frame loses its tag (b pops, a pushes nothing); an
    // untagged one passes unchanged (no peer MAC for a).
    server.send(&custom_frame(c_mac, s_mac, Some(20), 0x22)).unwrap();
    server.send(&custom_frame(c_mac, s_mac, None, 0x33)).unwrap();
    let at_client = client.drain(Duration::from_millis(500), 100);
    assert_eq!(
        find(&at_client, 0x22).expect("popped frame"),
        custom_frame(c_mac, s_mac, None, 0x22),
        "tag popped"
    );
    assert_eq!(
        find(&at_client, 0x33).expect("untagged frame"),
        custom_frame(c_mac, s_mac, None, 0x33),
        "carried unchanged"
    );
    let done = fwd.stop().unwrap();
    assert!(done.success, "{done:?}");
    let _ = std::fs::remove_file(config);
}

/// A UDP frame (no checksum) from 198.18.10.2 to the server's `port`, tagged with `vid`.
fn tagged_udp(c_mac: [u8; 6], f0_mac: [u8; 6], vid: u16, port: u16) -> Vec<u8> {
    let mut f =
        xdpfwd_tests::generator::udp_frame(c_mac, f0_mac, [198, 18, 10, 2], SERVER_V4.octets(), 80);
    f[36..38].copy_from_slice(&port.to_be_bytes());
    f.splice(12..12, [0x81, 0x00, (vid >> 8) as u8, vid as u8]);
    f
}

#[test]
fn routed_vlans_are_popped_and_pushed_and_vlan_rules_match() {
    // The client is a VLAN 10 host on a trunk: it sends tagged frames from a raw socket (this
    // kernel may lack 802.1Q devices) and its replies come back through a static route that
    // pushes the tag.
    let topo = Topology::new("vl", false).unwrap();
    let c_mac = topo.mac(&topo.client, &topo.c0).unwrap();
    let f0_mac = topo.mac(&topo.fwd, &topo.f0).unwrap();
    let config = write_config(
        &topo,
        "vlan",
        &format!(
            "[[interface]]\nname = \"{f0}\"\nvlan_pop = true\n\n[[interface]]\nname = \"{f1}\"\n\n\
             [[rule]]\nin = \"{f0}\"\nvlan = 10\nproto = \"udp\"\ndst_port = 9001\naction = \"drop\"\n\n\
             [[rule]]\nin = \"{f0}\"\nvlan = 11\nproto = \"udp\"\ndst_port = 9002\naction = \"drop\"\n\n\
             [[route]]\ndst = \"198.18.10.0/24\"\ndev = \"{f0}\"\nmac = \"{c0_mac}\"\nvlan = 10\n",
            f0 = topo.f0,
            f1 = topo.f1,
            c0_mac = fmt_mac(c_mac),
        ),
    );
    let mut fwd = start(&topo, &config);
    let c0 = topo.c0.clone();
    let client = in_netns(&topo.client, move || RawSocket::open(&c0)).unwrap().unwrap();
    let delivered = |vid: u16, port: u16| {
        let rx =
            in_netns(&topo.server, move || UdpSocket::bind(("0.0.0.0", port))).unwrap().unwrap();
        rx.set_read_timeout(Some(Duration::from_millis(400))).unwrap();
        let frame = tagged_udp(c_mac, f0_mac, vid, port);
        let mut buf = [0u8; 128];
        // Neighbour resolution towards the server may hold the first datagram briefly.
        (0..3).any(|_| {
            client.send(&frame).unwrap();
            rx.recv(&mut buf).is_ok_and(|n| buf[..n] == frame[46..])
        })
    };
    assert!(delivered(10, 9000), "tagged datagram forwarded untagged (popped)");
    assert!(!delivered(10, 9001), "the VLAN 10 rule drops");
    assert!(delivered(10, 9002), "a VLAN 11 rule does not match VLAN 10");
    assert!(!delivered(11, 9002), "the VLAN 11 rule drops VLAN 11");

    // A datagram to the VLAN host takes the static route: tagged with VLAN 10.
    let server = in_netns(&topo.server, || UdpSocket::bind("0.0.0.0:9100")).unwrap().unwrap();
    server.send_to(b"to the vlan host", "198.18.10.2:7000").unwrap();
    let frame = (0..20)
        .find_map(|_| {
            client
                .recv_incoming(Duration::from_millis(200))
                .filter(|f| f.len() > 46 && f[12..14] == [0x81, 0] && f[34..38] == [198, 18, 10, 2])
        })
        .expect("a tagged frame reached the VLAN host");
    assert_eq!(u16::from_be_bytes([frame[14], frame[15]]) & 0xfff, 10, "VLAN 10 pushed");
    assert_eq!(frame[16..18], [0x08, 0x00], "IPv4 inside the tag");
    assert_eq!(frame[0..6], c_mac, "the route's fixed MAC");
    assert_eq!(frame[6..12], f0_mac);
    assert_eq!(frame[26], 63, "TTL decremented");
    assert!(frame.ends_with(b"to the vlan host"));
    let done = fwd.stop().unwrap();
    assert!(done.success, "{done:?}");
    assert!(xdpfwd_tests::xdp_counter(&done.stdout, "drop_rule") >= 2, "{}", done.stdout);
    let _ = std::fs::remove_file(config);
}

#[test]
fn a_tagged_frame_to_an_unresolved_next_hop_is_held_where_the_kernel_forwards() {
    // The kernel's forwarding is on: a frame to a next hop it has not resolved yet is the
    // kernel's to forward (and resolve), unless xdpfwd pops its tag. The kernel has no
    // device for the tag: passed to it, the frame would be dropped and nothing resolved.
    let topo = Topology::new("vh", true).unwrap();
    let c_mac = topo.mac(&topo.client, &topo.c0).unwrap();
    let f0_mac = topo.mac(&topo.fwd, &topo.f0).unwrap();
    let config = write_config(
        &topo,
        "vlanneigh",
        &format!(
            "[[interface]]\nname = \"{}\"\nvlan_pop = true\n\n[[interface]]\nname = \"{}\"\n",
            topo.f0, topo.f1
        ),
    );
    let mut fwd = start(&topo, &config);
    let c0 = topo.c0.clone();
    let client = in_netns(&topo.client, move || RawSocket::open(&c0)).unwrap().unwrap();
    let rx = in_netns(&topo.server, || UdpSocket::bind("0.0.0.0:9000")).unwrap().unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 128];
    let mut once = |frame: &[u8], l3: usize| {
        client.send(frame).unwrap();
        rx.recv(&mut buf).is_ok_and(|n| buf[..n] == frame[l3 + 28..])
    };
    // One datagram each, nothing resolved before it: a retry would pass on a neighbour the
    // first resolved.
    assert!(once(&tagged_udp(c_mac, f0_mac, 10, 9000), 18), "the tagged datagram arrived");
    sh(&["ip", "-n", &topo.fwd, "neigh", "flush", "dev", &topo.f1]).unwrap();
    thread::sleep(Duration::from_millis(200));
    let mut untagged = tagged_udp(c_mac, f0_mac, 10, 9000);
    untagged.drain(12..16);
    assert!(once(&untagged, 14), "the untagged datagram arrived (forwarded by the kernel)");
    let done = fwd.stop().unwrap();
    assert!(done.success, "{done:?}");
    let passed = xdpfwd_tests::xdp_counter(&done.stdout, "pass_neigh_miss");
    assert_eq!(passed, 1, "only the untagged datagram went to the kernel\n{}", done.stdout);
    let _ = std::fs::remove_file(config);
}

#[test]
fn priority_tagged_frames_are_routed_as_untagged_ones() {
    // An 802.1Q tag with VLAN id 0 (802.1p priority only) is no VLAN: the kernel strips it
    // and routes the frame as untagged, on interfaces without VLAN devices too. With the
    // kernel's forwarding off, xdpfwd does the same (no `vlan_pop` needed): the datagram
    // arrives, untagged. A tag with a VLAN id still goes to the kernel (which drops it).
    let topo = Topology::new("vp", false).unwrap();
    topo.static_neighbours().unwrap();
    let c_mac = topo.mac(&topo.client, &topo.c0).unwrap();
    let f0_mac = topo.mac(&topo.fwd, &topo.f0).unwrap();
    let mut fwd =
        Forwarder::start(&topo.fwd, &[&topo.f0, &topo.f1, "--stats-interval", "0"]).unwrap();
    let c0 = topo.c0.clone();
    let client = in_netns(&topo.client, move || RawSocket::open(&c0)).unwrap().unwrap();
    let rx = in_netns(&topo.server, || UdpSocket::bind("0.0.0.0:9000")).unwrap().unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut buf = [0u8; 128];
    let mut once = |frame: &[u8]| {
        client.send(frame).unwrap();
        rx.recv(&mut buf).is_ok_and(|n| buf[..n] == frame[46..])
    };
    let mut priority = tagged_udp(c_mac, f0_mac, 0, 9000);
    priority[14] |= 0xa0; // PCP 5
    assert!(once(&priority), "the priority-tagged datagram arrived");
    assert!(!once(&tagged_udp(c_mac, f0_mac, 10, 9000)), "VLAN 10: not xdpfwd's");
    let done = fwd.stop().unwrap();
    assert!(done.success, "{done:?}");
    assert_eq!(xdpfwd_tests::xdp_counter(&done.stdout, "pass_vlan"), 1, "{}", done.stdout);
}

const VIP4: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 100);
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 2, 0, 0, 0, 0x100);

fn nat_config(topo: &Topology, udp_port: u16) -> String {
    format!(
        r#"[[interface]]
name = "{f0}"

[[interface]]
name = "{f1}"

[[rewrite]]
match = {{ proto = "tcp", dst = "{VIP4}/32", dst_port = 80 }}
set_dst = "{SERVER_V4}"
set_dst_port = 8080

[[rewrite]]
match = {{ proto = "tcp", src = "{SERVER_V4}/32", src_port = 8080 }}
set_src = "{VIP4}"
set_src_port = 80

[[rewrite]]
match = {{ proto = "tcp", dst = "{VIP6}/128", dst_port = 80 }}
set_dst = "{SERVER_V6}"
set_dst_port = 8080

[[rewrite]]
match = {{ proto = "tcp", src = "{SERVER_V6}/128", src_port = 8080 }}
set_src = "{VIP6}"
set_src_port = 80

[[rewrite]]
match = {{ proto = "udp", dst = "{VIP4}/32", dst_port = 53 }}
set_dst = "{SERVER_V4}"
set_dst_port = {udp_port}

[[rewrite]]
match = {{ proto = "icmp", dst = "{VIP4}/32" }}
set_dst = "{SERVER_V4}"
set_src_port = 17185

[[rewrite]]
match = {{ proto = "icmp", src = "{SERVER_V4}/32", dst = "{CLIENT_V4}/32" }}
set_src = "{VIP4}"
set_dst_port = 4660

[[rewrite]]
match = {{ proto = "icmpv6", dst = "{VIP6}/128" }}
set_dst = "{SERVER_V6}"

[[rewrite]]
match = {{ proto = "icmpv6", src = "{SERVER_V6}/128", dst = "{CLIENT_V6}/128" }}
set_src = "{VIP6}"
"#,
        f0 = topo.f0,
        f1 = topo.f1
    )
}

/// Connects from the client to `vip`:80, which the rewrites send to the server's 8080; the
/// server echoes. Returns the echoed bytes and the peer address the client saw.
fn tcp_through_nat(topo: &Topology, vip: IpAddr, any: IpAddr) -> (Vec<u8>, SocketAddr) {
    let listener = in_netns(&topo.server, move || TcpListener::bind((any, 8080))).unwrap().unwrap();
    let server = thread::spawn(move || {
        listener.set_nonblocking(false).unwrap();
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap();
        s.write_all(&buf[..n]).unwrap();
    });
    let result = in_netns(&topo.client, move || {
        let mut s = TcpStream::connect_timeout(&SocketAddr::new(vip, 80), Duration::from_secs(5))
            .expect("TCP connects through the rewrite");
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.write_all(b"through nat").unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap();
        (buf[..n].to_vec(), s.peer_addr().unwrap())
    })
    .unwrap();
    server.join().unwrap();
    result
}

/// Sends an ICMP echo request with identifier 0x1234 to `VIP4` from a raw socket in the
/// client; returns the echo reply's ICMP message.
fn icmp_echo_through_nat(topo: &Topology) -> Option<Vec<u8>> {
    in_netns(&topo.client, || {
        use socket2::{Domain, Protocol, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let mut req = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1];
        req.extend_from_slice(b"xdpfwd echo id");
        let c = checksum(&req);
        req[2..4].copy_from_slice(&c.to_be_bytes());
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            s.send_to(&req, &SocketAddr::new(IpAddr::V4(VIP4), 0).into()).unwrap();
            let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 256];
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                // SAFETY: recv_from initialised the first `n` bytes.
                let bytes: Vec<u8> = buf[..n].iter().map(|b| unsafe { b.assume_init() }).collect();
                let ihl = usize::from(bytes[0] & 0xf) * 4;
                let icmp = bytes[ihl..].to_vec();
                if from.as_socket().map(|a| a.ip()) == Some(IpAddr::V4(VIP4)) && icmp[0] == 0 {
                    return Some(icmp);
                }
            }
        }
        None
    })
    .unwrap()
}

#[test]
fn nat_rewrites_pass_the_receivers_checksums_for_tcp_udp_and_icmp_v4_and_v6() {
    let topo = Topology::new("nt", false).unwrap();
    let config = write_config(&topo, "nat", &nat_config(&topo, 5353));
    let mut fwd = start(&topo, &config);

    let (echo, peer) = tcp_through_nat(&topo, IpAddr::V4(VIP4), IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    assert_eq!((echo.as_slice(), peer), (&b"through nat"[..], SocketAddr::from((VIP4, 80))));
    let (echo, peer) = tcp_through_nat(&topo, IpAddr::V6(VIP6), IpAddr::V6(Ipv6Addr::UNSPECIFIED));
    assert_eq!((echo.as_slice(), peer), (&b"through nat"[..], SocketAddr::from((VIP6, 80))));

    // UDP with a checksum, then a frame whose UDP checksum is zero ("none"), which must stay
    // zero: any other value would be wrong and the receiver would drop the datagram.
    let rx = |port: u16| {
        let s =
            in_netns(&topo.server, move || UdpSocket::bind(("0.0.0.0", port))).unwrap().unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        s
    };
    let dns = rx(5353);
    let tx = in_netns(&topo.client, || UdpSocket::bind("0.0.0.0:0")).unwrap().unwrap();
    tx.send_to(b"udp through nat", (VIP4, 53)).unwrap();
    let mut buf = [0u8; 128];
    let (n, from) = dns.recv_from(&mut buf).expect("UDP datagram through the rewrite");
    assert_eq!(&buf[..n], b"udp through nat");
    assert_eq!(from.ip(), IpAddr::V4(CLIENT_V4));
    let c_mac = topo.mac(&topo.client, &topo.c0).unwrap();
    let f0_mac = topo.mac(&topo.fwd, &topo.f0).unwrap();
    let mut frame =
        xdpfwd_tests::generator::udp_frame(c_mac, f0_mac, CLIENT_V4.octets(), VIP4.octets(), 80);
    frame[36..38].copy_from_slice(&53u16.to_be_bytes());
    assert_eq!(frame[40..42], [0, 0], "the fixture has no UDP checksum");
    let c0 = topo.c0.clone();
    let raw = in_netns(&topo.client, move || RawSocket::open(&c0)).unwrap().unwrap();
    raw.send(&frame).unwrap();
    let (n, _) = dns.recv_from(&mut buf).expect("zero-checksum datagram through the rewrite");
    assert_eq!(&buf[..n], &frame[42..], "payload intact");

    // ICMP: the echo identifier is rewritten both ways; the server's kernel answered, so the
    // request's checksum was right, and the reply's is checked here.
    let reply = icmp_echo_through_nat(&topo).expect("echo reply through the rewrites");
    assert_eq!(reply[4..6], [0x12, 0x34], "identifier restored");
    assert_eq!(checksum(&reply), 0, "ICMP checksum valid");
    assert!(topo.ping(&topo.client, IpAddr::V6(VIP6), 2), "ICMPv6 (pseudo-header checksum)");

    // A reload changes a rewrite.
    std::fs::write(&config, nat_config(&topo, 5354)).unwrap();
    reload(&topo);
    let moved = rx(5354);
    tx.send_to(b"after reload", (VIP4, 53)).unwrap();
    let (n, _) = moved.recv_from(&mut buf).expect("the reloaded rewrite applies");
    assert_eq!(&buf[..n], b"after reload");

    let done = fwd.stop().unwrap();
    assert!(done.success, "{done:?}");
    let _ = std::fs::remove_file(config);
}

#[test]
fn the_fast_path_applies_the_same_nat_cross_connect_and_vlan_handling() {
    let topo = Topology::new("fp", false).unwrap();
    topo.enable_gro().unwrap();
    let fast = ["--default-path", "fast"];

    // NAT, all traffic on the fast path.
    let config = write_config(&topo, "fast-nat", &nat_config(&topo, 5353));
    let mut fwd = start_with(&topo, &config, &fast);
    let (echo, peer) = tcp_through_nat(&topo, IpAddr::V4(VIP4), IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    assert_eq!((echo.as_slice(), peer), (&b"through nat"[..], SocketAddr::from((VIP4, 80))));
    let done = fwd.stop().unwrap();
    let _ = std::fs::remove_file(&config);
    assert!(done.success, "{done:?}");
    assert!(
        xdpfwd_tests::xdp_counter(&done.stdout, "fast_forwarded") >= 4,
        "the TCP exchange took the fast path: {}",
        done.stdout
    );

    // A cross-connect with a VLAN rewrite, on the fast path.
    let config = write_config(
        &topo,
        "fast-xc",
        &format!(
            "[[interface]]\nname = \"{f0}\"\nvlan_pop = true\n\n\
             [[interface]]\nname = \"{f1}\"\nvlan_push = 20\n\n\
             [[xconnect]]\na = \"{f0}\"\nb = \"{f1}\"\nmac_b = \"02:00:00:00:00:0b\"\n",
            f0 = topo.f0,
            f1 = topo.f1
        ),
    );
    let mut fwd = start_with(&topo, &config, &fast);
    let c_mac = topo.mac(&topo.client, &topo.c0).unwrap();
    let s_mac = topo.mac(&topo.server, &topo.s0).unwrap();
    let peer_b = [2, 0, 0, 0, 0, 0x0b];
    let c0 = topo.c0.clone();
    let s0 = topo.s0.clone();
    let client = in_netns(&topo.client, move || RawSocket::open(&c0)).unwrap().unwrap();
    let server = in_netns(&topo.server, move || RawSocket::open(&s0)).unwrap().unwrap();
    client.send(&custom_frame(s_mac, c_mac, Some(0x600a), 0x44)).unwrap();
    client.send(&custom_frame(s_mac, c_mac, None, 0x55)).unwrap();
    let at_server = server.drain(Duration::from_millis(500), 100);
    assert_eq!(
        find(&at_server, 0x44).expect("tagged frame cross-connected"),
        custom_frame(peer_b, c_mac, Some(0x6014), 0x44),
        "VID rewritten in place, PCP kept, peer MAC set"
    );
    assert_eq!(
        find(&at_server, 0x55).expect("untagged frame cross-connected"),
        custom_frame(peer_b, c_mac, Some(20), 0x55),
        "tag pushed"
    );
    let done = fwd.stop().unwrap();
    assert!(done.success, "{done:?}");
    assert!(xdpfwd_tests::xdp_counter(&done.stdout, "fast_forwarded") >= 2, "{}", done.stdout);
    let _ = std::fs::remove_file(config);
}

#[test]
fn per_interface_attach_mode_and_queue_count() {
    let topo = Topology::with_queues("pi", false, 2).unwrap();
    let config = write_config(
        &topo,
        "per-iface",
        &format!(
            "[[interface]]\nname = \"{f0}\"\nmode = \"skb\"\nqueues = 1\n\n\
             [[interface]]\nname = \"{f1}\"\nmode = \"native\"\n",
            f0 = topo.f0,
            f1 = topo.f1
        ),
    );
    let mut fwd = start(&topo, &config);
    assert!(fwd.ready_line.contains("attach skb,native"), "{}", fwd.ready_line);
    assert!(fwd.ready_line.contains("1 worker(s)"), "the smallest queue count: {}", fwd.ready_line);
    let done = fwd.stop().unwrap();
    assert!(done.success, "{done:?}");
    let ports: Vec<&str> = done
        .stdout
        .lines()
        .filter_map(|l| l.trim_start().split(':').next())
        .filter(|p| p.contains("/q"))
        .collect();
    let (f0, f1) = (topo.f0.as_str(), topo.f1.as_str());
    assert_eq!(
        ports,
        [format!("{f0}/q0"), format!("{f1}/q0"), format!("{f1}/q1")],
        "sockets on f0's first queue only: {}",
        done.stdout
    );
    assert!(done.stderr.contains("skb"), "{}", done.stderr);

    // The command line overrides the file.
    let mut fwd = start_with(&topo, &config, &["--mode", "skb"]);
    assert!(fwd.ready_line.contains("attach skb,skb"), "{}", fwd.ready_line);
    let done = fwd.stop().unwrap();
    assert!(done.success, "{done:?}");
    let _ = std::fs::remove_file(config);
}
