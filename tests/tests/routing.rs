//! The kernel's FIB as routing daemons and operators build it, mirrored by xdpfwd: policy rules
//! (`ip rule`) of every selector it evaluates and some it leaves to the kernel, rule tables,
//! `throw`, blackhole and route MTUs compared frame for frame with the kernel's own
//! forwarding; routes that FRR installs through nexthop objects and groups, and BIRD's
//! multipath routes, forwarded with the kernel's forwarding off and followed as they change.
//!
//! ```text
//!   client ns                forwarder ns                   server ns
//!   {p}c0 198.18.1.2/24 ─── {p}f0 198.18.1.1/24
//!                            {p}f1 198.18.2.1/24 ─────────── {p}s0 198.18.2.2/24
//!                            {p}f2 198.18.3.1/24 ─────────── {p}s2 198.18.3.2/24
//! ```

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
    thread,
    time::{Duration, Instant},
};

use etherparse::{IcmpEchoHeader, Icmpv4Type, Icmpv6Type, PacketBuilder, icmpv4::TimeExceededCode};
use xdpfwd_tests::{
    Forwarder, Topology,
    daemons::{BIRD_BGP_FWD, Bird, FRR_BGP_FWD, FRR_BGP_SERVER, Frr},
    in_netns,
    mirror::{in_step, kernel_buckets, mirrored_buckets},
    ns_sh,
    packet::RawSocket,
    routed::{
        Capture, assert_forwarding_off, flows, frame, frame6, ip, neighbours, neighbours_v6,
        wait_route, wait_route_for,
    },
    sh, xdp_counter, xdpfwd_took,
};

/// `frame` with its DS field (IPv4 TOS byte with the header checksum redone, IPv6 traffic
/// class) set to `ds`.
fn with_ds(mut frame: Vec<u8>, ds: u8) -> Vec<u8> {
    if frame[14] >> 4 == 6 {
        frame[14] = 0x60 | ds >> 4;
        frame[15] = (ds & 0x0f) << 4 | (frame[15] & 0x0f);
        return frame;
    }
    frame[15] = ds;
    frame[24..26].fill(0);
    let sum =
        frame[14..34].chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum::<u32>();
    let folded = (sum & 0xffff) + (sum >> 16);
    let folded = (folded & 0xffff) + (folded >> 16);
    frame[24..26].copy_from_slice(&(!(folded as u16)).to_be_bytes());
    frame
}

/// The rule set of the test: every selector xdpfwd evaluates (tos included), a goto, an inverted rule, a
/// rule only the kernel can evaluate (fwmark), tables with `throw`, a blackhole, a route MTU.
fn policy(topo: &Topology, f2: &str) {
    let f1 = topo.f1.as_str();
    for r in [
        format!("route add 198.19.50.0/24 via 198.18.2.2 dev {f1}"),
        format!("route add 198.19.51.0/24 via 198.18.2.2 dev {f1}"),
        format!("route add 198.19.52.0/24 via 198.18.2.2 dev {f1} mtu 1000"),
        format!("route add 198.19.50.0/24 via 198.18.3.2 dev {f2} table 100"),
        "route add throw 198.19.51.0/24 table 100".to_string(),
        format!("route add default via 198.18.3.2 dev {f2} table 100"),
        "route add blackhole 198.19.50.0/24 table 101".to_string(),
        format!("route add 198.19.51.0/24 via 198.18.3.2 dev {f2} table 102"),
        "rule add pref 100 from 198.18.1.0/28 lookup 100".to_string(),
        "rule add pref 105 tos 0x10 lookup 102".to_string(),
        "rule add pref 110 ipproto udp dport 6000-6010 lookup 102".to_string(),
        "rule add pref 120 from 198.18.1.128/26 fwmark 1 lookup 100".to_string(),
        format!("rule add pref 130 iif {} ipproto tcp lookup 100", topo.f0),
        "rule add pref 140 not from 198.18.1.0/24 lookup 100".to_string(),
        "rule add pref 150 from 198.18.1.240/28 goto 160".to_string(),
        "rule add pref 155 from 198.18.1.192/27 lookup 101".to_string(),
        "rule add pref 160 dport 7000 lookup 102 suppress_prefixlength 0".to_string(),
        // IPv6: a source rule, a port rule, a throw, an inverted rule.
        format!("-6 route add 2001:2:50::/64 via 2001:2:0:2::2 dev {f1}"),
        format!("-6 route add 2001:2:51::/64 via 2001:2:0:2::2 dev {f1}"),
        format!("-6 route add 2001:2:50::/64 via 2001:2:0:3::2 dev {f2} table 100"),
        "-6 route add throw 2001:2:51::/64 table 100".to_string(),
        format!("-6 route add 2001:2:51::/64 via 2001:2:0:3::2 dev {f2} table 102"),
        "-6 rule add pref 100 from 2001:2:0:1::/120 lookup 100".to_string(),
        "-6 rule add pref 105 tos 0xb8 lookup 102".to_string(),
        "-6 rule add pref 110 ipproto udp dport 6000 lookup 102".to_string(),
        "-6 rule add pref 120 not to 2001:2:50::/48 lookup 100".to_string(),
    ] {
        ip(topo, &r);
    }
}

/// The stream: each source, protocol and port picks a different rule.
fn stream(c_mac: [u8; 6], f_mac: [u8; 6]) -> Vec<Vec<u8>> {
    let a = |s: [u8; 4], d: [u8; 4]| (Ipv4Addr::from(s), Ipv4Addr::from(d));
    let mut out = Vec::new();
    for dst in [[198, 19, 50, 7], [198, 19, 51, 7], [198, 19, 52, 7]] {
        for (src, tcp, ports) in [
            ([198, 18, 1, 2], false, (4000, 9000)),  // pref 100: table 100
            ([198, 18, 1, 60], false, (4000, 6005)), // pref 110: table 102
            ([198, 18, 1, 60], false, (4000, 6011)), // main
            ([198, 18, 1, 150], false, (4000, 9000)), // fwmark rule: the kernel's
            ([198, 18, 1, 60], true, (4000, 80)),    // pref 130: iif + tcp
            ([198, 18, 5, 5], false, (4000, 9000)),  // pref 140: not from
            ([198, 18, 1, 245], false, (4000, 9000)), // pref 150: goto over 155
            ([198, 18, 1, 200], false, (4000, 9000)), // pref 155: blackhole in 101
            ([198, 18, 1, 60], false, (4000, 7000)), // pref 160: suppressed default
        ] {
            out.push(frame(c_mac, f_mac, a(src, dst), tcp, ports, 100));
        }
    }
    // pref 105, `tos 0x10`: the kernel compares the legacy TOS bits (0x1c) only, never ECN.
    for ds in [0x10, 0xb0, 0x13, 0x08, 0x0c] {
        let f = frame(c_mac, f_mac, a([198, 18, 1, 60], [198, 19, 51, 7]), false, (4000, 9000), 90);
        out.push(with_ds(f, ds));
    }
    // Over the route MTU (1000): the kernel fragments it.
    out.push(frame(c_mac, f_mac, a([198, 18, 1, 60], [198, 19, 52, 8]), false, (4000, 9000), 1200));
    for dst in ["2001:2:50::7", "2001:2:51::7", "2001:2:52::7"] {
        for (src, dport) in [
            ("2001:2:0:1::2", 9000),   // pref 100: table 100 (2001:2:52:: not there)
            ("2001:2:0:1::1:2", 6000), // pref 110: table 102
            ("2001:2:0:1::1:2", 9000), // pref 120 for 2001:2:52::, else main
        ] {
            out.push(frame6(c_mac, f_mac, src, dst, dport));
        }
        // pref 105, `tos 0xb8`: the whole DSCP (not the legacy bits), never ECN.
        for ds in [0xb8, 0xbb, 0x18, 0xbc] {
            out.push(with_ds(frame6(c_mac, f_mac, "2001:2:0:1::1:2", dst, 9000), ds));
        }
    }
    out
}

fn send_stream(topo: &Topology, capture: &Capture) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let c0 = topo.c0.clone();
    let sender = in_netns(&topo.client, move || RawSocket::open(&c0)).unwrap().unwrap();
    let c_mac = topo.mac(&topo.client, &topo.c0).unwrap();
    let f_mac = topo.mac(&topo.fwd, &topo.f0).unwrap();
    for f in stream(c_mac, f_mac) {
        sender.send(&f).unwrap();
        thread::sleep(Duration::from_millis(5));
    }
    capture.take()
}

#[test]
fn policy_rules_choose_the_egress_exactly_as_the_kernel_does() {
    let topo = Topology::new("pr", true).unwrap();
    topo.enable_gro().unwrap();
    let (f2, s2) = topo.second_link().unwrap();
    neighbours(&topo, &f2, &s2);
    // IPv6 sources beyond the client's address are on its prefix; the kernel forwards them.
    // The IPv4 sources are not on the client's link: no reverse-path filter in the way.
    for conf in ["all", "default", topo.f0.as_str()] {
        ns_sh(&topo.fwd, &["sysctl", "-qw", &format!("net.ipv4.conf.{conf}.rp_filter=0")]).unwrap();
    }
    policy(&topo, &f2);
    let capture = Capture::open(&topo, &s2);
    let kernel = send_stream(&topo, &capture);
    assert!(kernel.0.len() + kernel.1.len() >= 20, "the kernel forwarded {kernel:?}");
    let ds = |f: &Vec<u8>| if f[14] >> 4 == 6 { f[14] << 4 | f[15] >> 4 } else { f[15] };
    let tos_out = |frames: &[Vec<u8>]| frames.iter().map(ds).filter(|d| *d != 0).count();
    assert_eq!(tos_out(&kernel.1), 3 + 2, "the tos rules send these out of f2");
    assert_eq!(tos_out(&kernel.0), 2 + 6, "and the others out of f1");

    let mut fwd =
        Forwarder::start(&topo.fwd, &[&topo.f0, &topo.f1, &f2, "--stats-interval", "0"]).unwrap();
    let ours = send_stream(&topo, &capture);
    let done = fwd.stop().unwrap();
    // All but the fwmark rule's three frames and the one over the route MTU (two fragments
    // from the kernel) are xdpfwd's, the tos rules' included.
    let forwarded = kernel.0.len() + kernel.1.len();
    let steered = xdpfwd_took(&done.stdout) as usize;
    assert!(steered >= forwarded - 5, "xdpfwd forwarded {steered} of {forwarded}: {}", done.stdout);
    // Only the fwmark rule's three frames are the kernel's (single-port rules, reported by
    // Linux 6.16+ with a port mask, and tos rules are evaluated by xdpfwd).
    assert_eq!(xdp_counter(&done.stdout, "pass_fib"), 3, "{}", done.stdout);
    assert_eq!(ours.0, kernel.0, "frames out of f1 differ");
    assert_eq!(ours.1, kernel.1, "frames out of f2 differ");
}

const FRR_CONF: &str = "frr defaults traditional
!
ip route 198.19.60.0/24 198.18.2.2
ip route 198.19.61.0/24 198.18.2.2
ip route 198.19.61.0/24 198.18.3.2
!
";

#[test]
fn frr_routes_through_nexthop_objects_and_groups_are_forwarded_with_kernel_forwarding_off() {
    let topo = Topology::new("fr", false).unwrap();
    topo.enable_gro().unwrap();
    let (f2, s2) = topo.second_link().unwrap();
    neighbours(&topo, &f2, &s2);
    let frr = Frr::start(&topo.fwd, &topo.fwd, &["zebra", "staticd"], FRR_CONF).unwrap();
    let single = wait_route(&topo, "198.19.60.0/24", |r| r.contains("nhid"));
    assert!(single.contains("nhid"), "FRR installs through a nexthop object: {single}");
    let group = wait_route(&topo, "198.19.61.0/24", |r| r.contains("nhid") && r.contains(&f2));
    assert!(group.contains(&topo.f1) && group.contains(&f2), "{group}");

    assert_forwarding_off(&topo);
    let mut fwd =
        Forwarder::start(&topo.fwd, &[&topo.f0, &topo.f1, &f2, "--stats-interval", "0"]).unwrap();
    let capture = Capture::open(&topo, &s2);
    let (seen, total) = flows(&topo, &capture, Ipv4Addr::new(198, 19, 60, 9), (8, 20), false);
    assert_eq!(total, 160, "every frame through the nexthop object arrived: {seen:?}");
    assert!(seen.values().all(|l| *l == BTreeSet::from([0])), "all out of f1: {seen:?}");

    let (seen, total) = flows(&topo, &capture, Ipv4Addr::new(198, 19, 61, 9), (32, 10), false);
    assert_eq!(total, 320, "every frame through the group arrived");
    assert!(seen.values().all(|l| l.len() == 1), "a flow never changes path: {seen:?}");
    let on = |link: u8| seen.values().filter(|l| l.contains(&link)).count();
    assert!(on(0) >= 4 && on(2) >= 4, "both paths carry flows: {} and {}", on(0), on(2));

    // FRR removes a path: the group changes under the route, frames follow.
    frr.configure(&["no ip route 198.19.61.0/24 198.18.3.2"]).unwrap();
    let after = wait_route(&topo, "198.19.61.0/24", |r| !r.contains(&f2));
    assert!(!after.contains(&f2), "{after}");
    thread::sleep(Duration::from_millis(300));
    let (seen, total) = flows(&topo, &capture, Ipv4Addr::new(198, 19, 61, 9), (32, 5), false);
    assert_eq!(total, 160);
    assert!(seen.values().all(|l| *l == BTreeSet::from([0])), "all out of f1 now: {seen:?}");
    let done = fwd.stop().unwrap();
    assert!(done.success, "{}{}", done.stdout, done.stderr);
    assert!(xdpfwd_took(&done.stdout) >= 640, "{}", done.stdout);
    drop(frr);
}

/// BGP over two links (FRR in the forwarder and the server, one session per link): the
/// announced prefix is an ECMP nexthop group; a session going down withdraws its path and
/// frames leave only by the other link within a second of the kernel's change, and come back
/// to both when it returns. The kernel's forwarding is off: what arrives, xdpfwd forwarded.
#[test]
fn bgp_paths_going_down_and_up_are_followed_with_kernel_forwarding_off() {
    let topo = Topology::new("bg", false).unwrap();
    topo.enable_gro().unwrap();
    let (f2, s2) = topo.second_link().unwrap();
    neighbours(&topo, &f2, &s2);
    assert_forwarding_off(&topo);
    let mut fwd =
        Forwarder::start(&topo.fwd, &[&topo.f0, &topo.f1, &f2, "--stats-interval", "0"]).unwrap();
    let server =
        Frr::start(&topo.server, &topo.server, &["zebra", "staticd", "bgpd"], FRR_BGP_SERVER)
            .unwrap();
    let frr = Frr::start(&topo.fwd, &topo.fwd, &["zebra", "bgpd"], FRR_BGP_FWD).unwrap();
    let prefix = "198.19.70.0/24";
    let both = |r: &str| r.contains("nhid") && r.contains(&topo.f1) && r.contains(&f2);
    let r = wait_route_for(&topo, prefix, Duration::from_secs(60), both);
    assert!(both(&r), "BGP installs two paths: {r}\n{}\n{}", frr.logs(), server.logs());
    let capture = Capture::open(&topo, &s2);
    let dst = Ipv4Addr::new(198, 19, 70, 9);
    let spread = |seen: &BTreeMap<u16, BTreeSet<u8>>, link: u8| {
        seen.values().filter(|l| l.contains(&link)).count()
    };
    let (seen, total) = flows(&topo, &capture, dst, (32, 5), false);
    assert_eq!(total, 160, "every frame through the BGP group arrived: {seen:?}");
    assert!(spread(&seen, 0) >= 4 && spread(&seen, 2) >= 4, "both paths carry flows: {seen:?}");

    frr.configure(&["router bgp 65001", "neighbor 198.18.3.2 shutdown"]).unwrap();
    let one = wait_route_for(&topo, prefix, Duration::from_secs(10), |r| !r.contains(&f2));
    assert!(!one.contains(&f2), "the session's path is withdrawn: {one}");
    thread::sleep(Duration::from_millis(1000));
    let (seen, total) = flows(&topo, &capture, dst, (32, 5), false);
    assert_eq!(total, 160, "{seen:?}");
    assert!(seen.values().all(|l| *l == BTreeSet::from([0])), "only f1 is left: {seen:?}");

    frr.configure(&["router bgp 65001", "no neighbor 198.18.3.2 shutdown"]).unwrap();
    let back = wait_route_for(&topo, prefix, Duration::from_secs(30), both);
    assert!(both(&back), "the path comes back: {back}");
    thread::sleep(Duration::from_millis(1000));
    let (seen, total) = flows(&topo, &capture, dst, (32, 5), false);
    assert_eq!(total, 160, "{seen:?}");
    assert!(spread(&seen, 0) >= 4 && spread(&seen, 2) >= 4, "both paths again: {seen:?}");
    let done = fwd.stop().unwrap();
    assert!(done.success, "{}{}", done.stdout, done.stderr);
    drop(frr);
    drop(server);
}

/// The kernel keeps an IPv6 multipath route as sibling routes and deletes them one by one,
/// each `RTM_DELROUTE` naming only the sibling that went: it forwards through both while both
/// are there (ECMP), then by the one left, and by none once the last is gone. So must xdpfwd.
#[test]
fn ipv6_multipath_siblings_deleted_one_by_one_are_followed() {
    let topo = Topology::new("s6", false).unwrap();
    topo.enable_gro().unwrap();
    let (f2, s2) = topo.second_link().unwrap();
    neighbours_v6(&topo, &f2, &s2);
    let f1 = topo.f1.clone();
    let mut fwd =
        Forwarder::start(&topo.fwd, &[&topo.f0, &f1, &f2, "--stats-interval", "0"]).unwrap();
    let capture = Capture::open(&topo, &s2);
    let c0 = topo.c0.clone();
    let sender = in_netns(&topo.client, move || RawSocket::open(&c0)).unwrap().unwrap();
    let c_mac = topo.mac(&topo.client, &topo.c0).unwrap();
    let f_mac = topo.mac(&topo.fwd, &topo.f0).unwrap();
    let send = || {
        for port in 0..20 {
            // Different sources: the hash (policy 0) spreads them over the siblings.
            let src = format!("2001:2:0:1::{:x}", 0x100 + port);
            let f = frame6(c_mac, f_mac, &src, "2001:2:0:8060::9", 9000 + port);
            sender.send(&f).unwrap();
            thread::sleep(Duration::from_millis(2));
        }
        let (a, b) = capture.take();
        (a.len(), b.len())
    };
    ip(&topo, &format!("-6 route add 2001:2:0:8060::/64 via 2001:2:0:2::2 dev {f1}"));
    ip(&topo, &format!("-6 route append 2001:2:0:8060::/64 via 2001:2:0:3::2 dev {f2}"));
    let both = wait_route(&topo, "2001:2:0:8060::/64", |r| r.contains("nexthop"));
    assert!(both.contains(&f1) && both.contains(&f2), "two siblings: {both}");
    thread::sleep(Duration::from_millis(300));
    let (a, b) = send();
    assert!(a + b == 20 && a > 0 && b > 0, "both siblings carry flows: {a} and {b}");

    ip(&topo, &format!("-6 route del 2001:2:0:8060::/64 via 2001:2:0:3::2 dev {f2}"));
    thread::sleep(Duration::from_millis(300));
    assert_eq!(send(), (20, 0), "the sibling left forwards, out of f1");

    ip(&topo, &format!("-6 route del 2001:2:0:8060::/64 via 2001:2:0:2::2 dev {f1}"));
    thread::sleep(Duration::from_millis(300));
    assert_eq!(send(), (0, 0), "no route left: nothing forwarded");
    let done = fwd.stop().unwrap();
    assert!(done.success, "{}{}", done.stdout, done.stderr);
}

/// FRR creates nexthop objects as routes change and deletes those no route uses any more, for
/// as long as it runs: over time more objects than xdpfwd has slots (16,384). The slots of
/// deleted objects are reused, so a route through the newest object is still forwarded.
#[test]
fn nexthop_objects_created_and_deleted_beyond_the_slot_count_keep_forwarding() {
    let topo = Topology::new("nx", false).unwrap();
    topo.enable_gro().unwrap();
    let (f2, s2) = topo.second_link().unwrap();
    neighbours(&topo, &f2, &s2);
    let mut fwd =
        Forwarder::start(&topo.fwd, &[&topo.f0, &topo.f1, &f2, "--stats-interval", "0"]).unwrap();
    let mut batch = String::new();
    for i in 0..20_000u32 {
        let via = if i % 2 == 0 {
            format!("198.18.2.2 dev {}", topo.f1)
        } else {
            format!("198.18.3.2 dev {f2}")
        };
        batch += &format!("nexthop add id {} via {via}\n", 10_000 + i);
        batch += &format!("route replace 198.19.200.0/24 nhid {}\n", 10_000 + i);
        if i > 0 {
            batch += &format!("nexthop del id {}\n", 10_000 + i - 1);
        }
    }
    let file = std::env::temp_dir().join(format!("xdpfwd-test-{}.batch", topo.fwd));
    std::fs::write(&file, batch).unwrap();
    let done = sh(&["ip", "-n", &topo.fwd, "-batch", &file.to_string_lossy()]);
    let _ = std::fs::remove_file(&file);
    done.unwrap();
    let r = wait_route(&topo, "198.19.200.0/24", |r| r.contains("nhid 29999"));
    assert!(r.contains("nhid 29999"), "{r}");

    assert_forwarding_off(&topo);
    let capture = Capture::open(&topo, &s2);
    let dst = Ipv4Addr::new(198, 19, 200, 9);
    let mut last = (BTreeMap::new(), 0);
    let caught_up = xdpfwd_tests::wait_for(Duration::from_secs(20), || {
        last = flows(&topo, &capture, dst, (4, 5), false);
        last.1 == 20 && last.0.values().all(|l| *l == BTreeSet::from([2]))
    });
    let done = fwd.stop().unwrap();
    assert!(caught_up, "the newest object's route forwards out of f2: {last:?}\n{}", done.stdout);
    assert!(!done.stderr.contains("nexthop slots exhausted"), "{}", done.stderr);
}

/// IPv4 routes through IPv6 next hops (RFC 5549; FRR's BGP unnumbered installs them through
/// nexthop objects, `ip route add ... via inet6 ...` with `RTA_VIA`): the next hop's MAC comes
/// from the IPv6 neighbour table, and when it is missing the kernel resolves it over ND while
/// xdpfwd holds the frames. The kernel's forwarding is off: what arrives, xdpfwd forwarded.
#[test]
fn ipv4_routes_through_ipv6_next_hops_are_forwarded() {
    let topo = Topology::new("r5", false).unwrap();
    topo.enable_gro().unwrap();
    let (f2, s2) = topo.second_link().unwrap();
    neighbours_v6(&topo, &f2, &s2);
    ip(&topo, &format!("nexthop add id 50 via 2001:2:0:2::2 dev {}", topo.f1));
    ip(&topo, "route add 198.19.90.0/24 nhid 50");
    ip(&topo, &format!("route add 198.19.91.0/24 via inet6 2001:2:0:3::2 dev {f2}"));
    let mut fwd =
        Forwarder::start(&topo.fwd, &[&topo.f0, &topo.f1, &f2, "--stats-interval", "0"]).unwrap();
    let capture = Capture::open(&topo, &s2);
    for (last, link) in [(90, 0u8), (91, 2)] {
        let (seen, total) = flows(&topo, &capture, Ipv4Addr::new(198, 19, last, 9), (4, 5), false);
        assert_eq!(total, 20, "198.19.{last}.9: {seen:?}");
        assert!(seen.values().all(|l| *l == BTreeSet::from([link])), "{last}: {seen:?}");
    }
    // An unresolved IPv6 next hop: resolved by the kernel, the held frames then leave.
    ip(&topo, &format!("neigh del 2001:2:0:2::2 dev {}", topo.f1));
    thread::sleep(Duration::from_millis(200));
    let (seen, total) = flows(&topo, &capture, Ipv4Addr::new(198, 19, 90, 9), (4, 5), false);
    assert_eq!(total, 20, "held until ND resolved the next hop: {seen:?}");
    let done = fwd.stop().unwrap();
    assert!(done.success, "{}{}", done.stdout, done.stderr);
    let held = xdp_counter(&done.stdout, "steered_neigh_miss");
    assert!(held >= 1, "frames waited for ND: {}", done.stdout);
    assert!(xdpfwd_took(&done.stdout) + held >= 60, "{}", done.stdout);
}

/// BIRD learns 198.19.70.0/24 and 2001:2:0:70::/64 over BGP from FRR on two links and merges
/// the paths (IPv4: one `RTA_MULTIPATH` route; IPv6: the kernel's sibling routes). Both are
/// spread over both links and follow a session going down and up.
#[test]
fn bird_bgp_multipath_is_forwarded_and_follows_sessions() {
    let topo = Topology::new("bb", false).unwrap();
    topo.enable_gro().unwrap();
    let (f2, s2) = topo.second_link().unwrap();
    neighbours(&topo, &f2, &s2);
    neighbours_v6(&topo, &f2, &s2);
    let mut fwd =
        Forwarder::start(&topo.fwd, &[&topo.f0, &topo.f1, &f2, "--stats-interval", "0"]).unwrap();
    let server =
        Frr::start(&topo.server, &topo.server, &["zebra", "staticd", "bgpd"], FRR_BGP_SERVER)
            .unwrap();
    let bird = Bird::start(&topo.fwd, &topo.fwd, BIRD_BGP_FWD).unwrap();
    let two = |r: &str| r.contains("nexthop") && r.contains(&topo.f1) && r.contains(&f2);
    let long = Duration::from_secs(60);
    for prefix in ["198.19.70.0/24", "2001:2:0:70::/64"] {
        let r = wait_route_for(&topo, prefix, long, two);
        assert!(two(&r), "{prefix}: {r}\n{}\n{}", bird.log(), server.logs());
    }
    let capture = Capture::open(&topo, &s2);
    let dst = Ipv4Addr::new(198, 19, 70, 9);
    let on = |seen: &BTreeMap<u16, BTreeSet<u8>>, link: u8| {
        seen.values().filter(|l| l.contains(&link)).count()
    };
    let (seen, total) = flows(&topo, &capture, dst, (32, 5), false);
    assert_eq!(total, 160, "{seen:?}");
    assert!(on(&seen, 0) >= 4 && on(&seen, 2) >= 4, "both paths carry flows: {seen:?}");
    let c0 = topo.c0.clone();
    let sender = in_netns(&topo.client, move || RawSocket::open(&c0)).unwrap().unwrap();
    let c_mac = topo.mac(&topo.client, &topo.c0).unwrap();
    let f_mac = topo.mac(&topo.fwd, &topo.f0).unwrap();
    let send6 = || {
        for port in 0..20 {
            let src = format!("2001:2:0:1::{:x}", 0x100 + port);
            let f = frame6(c_mac, f_mac, &src, "2001:2:0:70::9", 9000 + port);
            sender.send(&f).unwrap();
            thread::sleep(Duration::from_millis(2));
        }
        let (a, b) = capture.take();
        (a.len(), b.len())
    };
    let (a, b) = send6();
    assert!(a + b == 20 && a > 0 && b > 0, "IPv6 siblings: both carry flows: {a} and {b}");

    bird.birdc("disable b4b").unwrap();
    bird.birdc("disable b6b").unwrap();
    for prefix in ["198.19.70.0/24", "2001:2:0:70::/64"] {
        let r = wait_route_for(&topo, prefix, long, |r| !r.contains(&f2) && !r.is_empty());
        assert!(!r.contains(&f2) && r.contains(&topo.f1), "{prefix}: one path left: {r}");
    }
    thread::sleep(Duration::from_millis(1000));
    let (seen, total) = flows(&topo, &capture, dst, (32, 5), false);
    assert_eq!(total, 160, "{seen:?}");
    assert!(seen.values().all(|l| *l == BTreeSet::from([0])), "only f1 is left: {seen:?}");
    assert_eq!(send6(), (20, 0), "the IPv6 path left is forwarded, out of f1");

    bird.birdc("enable b4b").unwrap();
    let r = wait_route_for(&topo, "198.19.70.0/24", long, two);
    assert!(two(&r), "{r}");
    thread::sleep(Duration::from_millis(1000));
    let (seen, total) = flows(&topo, &capture, dst, (32, 5), false);
    assert_eq!(total, 160, "{seen:?}");
    assert!(on(&seen, 0) >= 4 && on(&seen, 2) >= 4, "both paths again: {seen:?}");
    let done = fwd.stop().unwrap();
    assert!(done.success, "{}{}", done.stdout, done.stderr);
    drop(bird);
    drop(server);
}

/// Each distinct set of paths of a multipath route takes a nexthop slot while a route points
/// at it: 20,000 different sets (weights) replacing each other on one prefix never exhaust
/// the 16,384 slots, and the last set forwards.
#[test]
fn multipath_sets_changing_beyond_the_slot_count_keep_forwarding() {
    let topo = Topology::new("ms", false).unwrap();
    topo.enable_gro().unwrap();
    let (f2, s2) = topo.second_link().unwrap();
    neighbours(&topo, &f2, &s2);
    let mut fwd =
        Forwarder::start(&topo.fwd, &[&topo.f0, &topo.f1, &f2, "--stats-interval", "0"]).unwrap();
    let mut batch = String::new();
    for w in 0..20_000u32 {
        batch += &format!(
            "route replace 198.19.201.0/24 nexthop via 198.18.2.2 dev {} weight {} nexthop via 198.18.3.2 dev {f2} weight {}\n",
            topo.f1,
            1 + w % 200,
            1 + w / 200
        );
    }
    let file = std::env::temp_dir().join(format!("xdpfwd-test-{}.batch", topo.fwd));
    std::fs::write(&file, batch).unwrap();
    let done = sh(&["ip", "-n", &topo.fwd, "-batch", &file.to_string_lossy()]);
    let _ = std::fs::remove_file(&file);
    done.unwrap();

    assert_forwarding_off(&topo);
    let capture = Capture::open(&topo, &s2);
    let dst = Ipv4Addr::new(198, 19, 201, 9);
    let mut last = (BTreeMap::new(), 0);
    let forwarded = xdpfwd_tests::wait_for(Duration::from_secs(20), || {
        last = flows(&topo, &capture, dst, (32, 2), false);
        last.1 == 64
    });
    let done = fwd.stop().unwrap();
    assert!(forwarded, "the last set forwards: {last:?}\n{}", done.stdout);
    assert!(last.0.values().all(|l| l.len() == 1), "a flow keeps its path: {last:?}");
    assert!(!done.stderr.contains("nexthop slots exhausted"), "{}", done.stderr);
}

const BIRD_CONF: &str = "log stderr all;
router id 198.18.1.1;
protocol device { scan time 1; }
protocol kernel kernel4 { scan time 1; merge paths on; ipv4 { export all; import none; }; }
protocol static static4 { ipv4; route 198.19.80.0/24 via 198.18.2.2 via 198.18.3.2; }
";

#[test]
fn bird_multipath_routes_are_forwarded_with_kernel_forwarding_off() {
    let topo = Topology::new("br", false).unwrap();
    topo.enable_gro().unwrap();
    let (f2, s2) = topo.second_link().unwrap();
    neighbours(&topo, &f2, &s2);
    let bird = Bird::start(&topo.fwd, &topo.fwd, BIRD_CONF).unwrap();
    let route = wait_route(&topo, "198.19.80.0/24", |r| r.contains("nexthop") && r.contains(&f2));
    assert!(route.contains("nexthop") && !route.contains("nhid"), "RTA_MULTIPATH: {route}");

    assert_forwarding_off(&topo);
    let mut fwd =
        Forwarder::start(&topo.fwd, &[&topo.f0, &topo.f1, &f2, "--stats-interval", "0"]).unwrap();
    let capture = Capture::open(&topo, &s2);
    let (seen, total) = flows(&topo, &capture, Ipv4Addr::new(198, 19, 80, 9), (32, 10), false);
    assert_eq!(total, 320, "every frame arrived");
    assert!(seen.values().all(|l| l.len() == 1), "a flow never changes path: {seen:?}");
    let on = |link: u8| seen.values().filter(|l| l.contains(&link)).count();
    assert!(on(0) >= 4 && on(2) >= 4, "both paths carry flows: {} and {}", on(0), on(2));
    // fib_multipath_hash_policy 0 hashes addresses only: one source, one path.
    let (seen, _) = flows(&topo, &capture, Ipv4Addr::new(198, 19, 80, 9), (16, 4), true);
    let paths: BTreeSet<u8> = seen.values().flatten().copied().collect();
    assert_eq!(paths.len(), 1, "policy 0: ports do not count: {seen:?}");
    // Policy 1 hashes the ports too: xdpfwd follows the sysctl.
    ns_sh(&topo.fwd, &["sysctl", "-qw", "net.ipv4.fib_multipath_hash_policy=1"]).unwrap();
    thread::sleep(Duration::from_millis(1200));
    let (seen, total) = flows(&topo, &capture, Ipv4Addr::new(198, 19, 80, 9), (32, 4), true);
    assert_eq!(total, 128);
    assert!(seen.values().all(|l| l.len() == 1), "a flow never changes path: {seen:?}");
    let paths: BTreeSet<u8> = seen.values().flatten().copied().collect();
    assert_eq!(paths.len(), 2, "policy 1: ports spread one source's flows: {seen:?}");
    let done = fwd.stop().unwrap();
    assert!(done.success, "{}{}", done.stdout, done.stderr);
    assert!(xdpfwd_took(&done.stdout) >= 512, "{}", done.stdout);
    drop(bird);
}

/// The kernel deletes the routes through a link that goes down without `RTM_DELROUTE`, and
/// does not bring them back when it comes up: xdpfwd must not forward on them either.
#[test]
fn routes_the_kernel_drops_with_a_link_are_dropped_with_it() {
    let topo = Topology::new("ld", false).unwrap();
    topo.enable_gro().unwrap();
    let (f2, s2) = topo.second_link().unwrap();
    neighbours(&topo, &f2, &s2);
    ip(&topo, &format!("route add 198.19.90.0/24 via 198.18.2.2 dev {}", topo.f1));
    let mut fwd =
        Forwarder::start(&topo.fwd, &[&topo.f0, &topo.f1, &f2, "--stats-interval", "0"]).unwrap();
    let capture = Capture::open(&topo, &s2);
    let dst = Ipv4Addr::new(198, 19, 90, 9);
    let (_, total) = flows(&topo, &capture, dst, (4, 10), false);
    assert_eq!(total, 40, "forwarded while the route exists");

    ip(&topo, &format!("link set {} down", topo.f1));
    ip(&topo, &format!("link set {} up", topo.f1));
    neighbours(&topo, &f2, &s2);
    let gone = wait_route(&topo, "198.19.90.0/24", |r| r.trim().is_empty());
    assert!(gone.trim().is_empty(), "the kernel dropped the route: {gone}");
    thread::sleep(Duration::from_millis(500));
    let (seen, total) = flows(&topo, &capture, dst, (4, 10), false);
    assert_eq!(total, 0, "nothing forwarded on a route the kernel no longer has: {seen:?}");

    ip(&topo, &format!("route add 198.19.90.0/24 via 198.18.2.2 dev {}", topo.f1));
    thread::sleep(Duration::from_millis(300));
    let (_, total) = flows(&topo, &capture, dst, (4, 10), false);
    assert_eq!(total, 40, "forwarded again once the route is back");
    let done = fwd.stop().unwrap();
    assert!(done.success, "{}{}", done.stdout, done.stderr);
}

/// With the default rules xdpfwd answers `local` and `main` with one lookup (the kernel merges
/// the two tables too). A rule added at run time, or a `local` route that is not a host route
/// (AnyIP: `local 198.19.95.0/24 dev lo`, covering a more specific `main` route), must bring
/// the separate `local` lookup back at once, and removing them merges again.
#[test]
fn runtime_rules_and_local_prefixes_keep_local_before_main() {
    let topo = Topology::new("lm", false).unwrap();
    topo.enable_gro().unwrap();
    let (f2, s2) = topo.second_link().unwrap();
    neighbours(&topo, &f2, &s2);
    ip(&topo, &format!("route add 198.19.95.0/25 via 198.18.2.2 dev {}", topo.f1));
    ip(&topo, &format!("route add 198.19.95.0/25 via 198.18.3.2 dev {f2} table 100"));
    let mut fwd =
        Forwarder::start(&topo.fwd, &[&topo.f0, &topo.f1, &f2, "--stats-interval", "0"]).unwrap();
    let capture = Capture::open(&topo, &s2);
    let dst = Ipv4Addr::new(198, 19, 95, 9);
    let links = |topo: &Topology| -> (BTreeSet<u8>, usize) {
        thread::sleep(Duration::from_millis(300));
        let (seen, total) = flows(topo, &capture, dst, (4, 5), false);
        (seen.values().flatten().copied().collect(), total)
    };
    assert_eq!(links(&topo), (BTreeSet::from([0]), 20), "main, merged with local");
    ip(&topo, "rule add pref 100 from 198.18.1.0/24 lookup 100");
    assert_eq!(links(&topo), (BTreeSet::from([2]), 20), "a rule added at run time");
    ip(&topo, "rule del pref 100");
    assert_eq!(links(&topo), (BTreeSet::from([0]), 20), "merged again");
    ip(&topo, "route add local 198.19.95.0/24 dev lo table local");
    assert_eq!(links(&topo), (BTreeSet::new(), 0), "local before main: the router's own");
    ip(&topo, "route del local 198.19.95.0/24 dev lo table local");
    assert_eq!(links(&topo), (BTreeSet::from([0]), 20), "forwarded again");
    let done = fwd.stop().unwrap();
    assert!(done.success, "{}{}", done.stdout, done.stderr);
}

/// The ifindex of `dev` in `ns`.
fn ifindex(ns: &str, dev: &str) -> u32 {
    let out = sh(&["ip", "-n", ns, "-j", "link", "show", "dev", dev]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[0]["ifindex"].as_u64().unwrap() as u32
}

/// Waits (at most 5 s) until the forwarder's bucket table of its one resilient group equals
/// the kernel's group 10, mapped to interfaces; returns both.
fn buckets_in_step(topo: &Topology, oif: &BTreeMap<u32, u32>) -> (Vec<Vec<u32>>, Vec<u32>) {
    let (ours, mut kernel) = in_step(Duration::from_secs(5), || {
        let kernel = kernel_buckets(&topo.fwd, 10).unwrap().iter().map(|nh| oif[nh]).collect();
        (mirrored_buckets(&topo.fwd, &topo.f0).unwrap(), vec![kernel])
    });
    (ours, kernel.remove(0))
}

/// A resilient nexthop group is forwarded by the kernel's own bucket table, which xdpfwd reads
/// (the kernel moves buckets without a word when the group is replaced) and follows as the
/// kernel moves idle buckets later on (bucket notifications); flows spread as the buckets say
/// and never change paths while the table holds. A table waiting for busy buckets to go idle
/// is the kernel's until it is balanced. The kernel's forwarding is off.
#[test]
fn resilient_groups_follow_the_kernels_bucket_table() {
    let topo = Topology::new("rg", false).unwrap();
    topo.enable_gro().unwrap();
    let (f2, s2) = topo.second_link().unwrap();
    neighbours(&topo, &f2, &s2);
    let f1 = topo.f1.clone();
    ip(&topo, &format!("nexthop add id 1 via 198.18.2.2 dev {f1}"));
    ip(&topo, &format!("nexthop add id 2 via 198.18.3.2 dev {f2}"));
    ip(&topo, "nexthop add id 10 group 1/2 type resilient buckets 32 idle_timer 2");
    ip(&topo, "route add 198.19.63.0/24 nhid 10");
    let oif = BTreeMap::from([(1, ifindex(&topo.fwd, &f1)), (2, ifindex(&topo.fwd, &f2))]);
    assert_forwarding_off(&topo);
    let mut fwd =
        Forwarder::start(&topo.fwd, &[&topo.f0, &f1, &f2, "--stats-interval", "0"]).unwrap();
    let capture = Capture::open(&topo, &s2);
    let dst = Ipv4Addr::new(198, 19, 63, 9);
    // The share of 128 flows on f1, after checking every frame arrived on one link per flow.
    let on_f1 = || {
        let (seen, total) = flows(&topo, &capture, dst, (128, 2), false);
        assert_eq!(total, 256, "every frame arrived: {seen:?}");
        assert!(seen.values().all(|l| l.len() == 1), "a flow never changes path: {seen:?}");
        seen.values().filter(|l| l.contains(&0)).count()
    };

    let (ours, kernel) = buckets_in_step(&topo, &oif);
    assert_eq!(ours, std::slice::from_ref(&kernel), "the bucket table is the kernel's");
    let n = on_f1();
    assert!((40..=88).contains(&n), "16 of 32 buckets on f1: {n} of 128 flows");

    // Replaced: the kernel moves the (idle) buckets at once and says nothing of them.
    ip(&topo, "nexthop replace id 10 group 1,1/2,3 type resilient");
    let (ours, kernel) = buckets_in_step(&topo, &oif);
    assert_eq!(ours, std::slice::from_ref(&kernel), "read again after the replace");
    assert_eq!(kernel.iter().filter(|o| **o == oif[&1]).count(), 8, "{kernel:?}");
    let n = on_f1();
    assert!((12..=52).contains(&n), "8 of 32 buckets on f1: {n} of 128 flows");

    // Buckets in use are not moved until idle: the kernel's own traffic (from the router)
    // marks them used, the replace leaves them, and they move 2 s later, one notification
    // each.
    let sender = in_netns(&topo.fwd, || std::net::UdpSocket::bind("0.0.0.0:0")).unwrap().unwrap();
    for i in 0..512u32 {
        let to = (Ipv4Addr::new(198, 19, 63, 1 + (i % 250) as u8), 7000 + (i / 250) as u16);
        let _ = sender.send_to(b"used", to);
    }
    ip(&topo, "nexthop replace id 10 group 1/2 type resilient");
    // Unbalanced, the table would move buckets the kernel sees idle (xdpfwd's flows) where
    // the kernel keeps busy ones: the group is the kernel's until balanced.
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut ours = mirrored_buckets(&topo.fwd, &topo.f0).unwrap();
    while !ours.is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
        ours = mirrored_buckets(&topo.fwd, &topo.f0).unwrap();
    }
    let kernel = kernel_buckets(&topo.fwd, 10).unwrap();
    assert!(kernel.iter().filter(|nh| **nh == 1).count() < 16, "used buckets stay: {kernel:?}");
    assert!(ours.is_empty(), "an unbalanced table is the kernel's: {ours:?}");
    thread::sleep(Duration::from_secs(4));
    let (ours, kernel) = buckets_in_step(&topo, &oif);
    assert_eq!(ours, std::slice::from_ref(&kernel), "the moved buckets are followed");
    assert_eq!(kernel.iter().filter(|o| **o == oif[&1]).count(), 16, "{kernel:?}");
    let _ = capture.take();
    let n = on_f1();
    assert!((40..=88).contains(&n), "16 of 32 buckets on f1: {n} of 128 flows");
    let done = fwd.stop().unwrap();
    assert!(done.success, "{}{}", done.stdout, done.stderr);
    assert_eq!(xdp_counter(&done.stdout, "pass_route"), 0, "{}", done.stdout);
}

/// A nexthop group path whose neighbour the kernel knows to be unusable (failed) is skipped
/// by the kernel's hash-threshold selection: every flow leaves by the other path; so is a
/// multipath route's with `fib_multipath_use_neigh`. So with
/// xdpfwd and the kernel's forwarding off (xdpfwd used to send those flows to the dead
/// neighbour, holding them while it resolved in vain); when the neighbour comes back, the
/// flows spread again.
#[test]
fn group_paths_through_failed_neighbours_are_avoided_as_the_kernel_does() {
    let topo = Topology::new("bn", true).unwrap();
    topo.enable_gro().unwrap();
    let (f2, s2) = topo.second_link().unwrap();
    neighbours(&topo, &f2, &s2);
    let f1 = topo.f1.clone();
    ip(&topo, &format!("nexthop add id 1 via 198.18.2.2 dev {f1}"));
    ip(&topo, &format!("nexthop add id 2 via 198.18.3.9 dev {f2}"));
    ip(&topo, "nexthop add id 10 group 1/2");
    ip(&topo, "route add 198.19.64.0/24 nhid 10");
    // A multipath route avoids bad neighbours too, with fib_multipath_use_neigh.
    ip(
        &topo,
        &format!(
            "route add 198.19.66.0/24 nexthop via 198.18.2.2 dev {f1} nexthop via 198.18.3.9 dev {f2}"
        ),
    );
    ns_sh(&topo.fwd, &["sysctl", "-qw", "net.ipv4.fib_multipath_use_neigh=1"]).unwrap();
    ip(&topo, &format!("neigh replace 198.18.3.9 dev {f2} nud failed"));
    let capture = Capture::open(&topo, &s2);
    let all_on_f1 = |who: &str| {
        for dst in [Ipv4Addr::new(198, 19, 64, 9), Ipv4Addr::new(198, 19, 66, 9)] {
            let (seen, total) = flows(&topo, &capture, dst, (64, 2), false);
            assert_eq!(total, 128, "{who}, {dst}: every frame arrived: {seen:?}");
            let f1 = BTreeSet::from([0]);
            assert!(seen.values().all(|l| *l == f1), "{who}, {dst}: all by f1: {seen:?}");
        }
    };
    all_on_f1("the kernel");

    for conf in ["net.ipv4.ip_forward=0", "net.ipv4.conf.all.forwarding=0"] {
        ns_sh(&topo.fwd, &["sysctl", "-qw", conf]).unwrap();
    }
    assert_forwarding_off(&topo);
    let mut fwd =
        Forwarder::start(&topo.fwd, &[&topo.f0, &f1, &f2, "--stats-interval", "0"]).unwrap();
    all_on_f1("xdpfwd");

    // The neighbour answers again: both paths carry flows.
    let s2_mac = xdpfwd_tests::fmt_mac(topo.mac(&topo.server, &s2).unwrap());
    ip(&topo, &format!("neigh replace 198.18.3.9 dev {f2} lladdr {s2_mac} nud permanent"));
    thread::sleep(Duration::from_millis(300));
    for dst in [Ipv4Addr::new(198, 19, 64, 9), Ipv4Addr::new(198, 19, 66, 9)] {
        let (seen, total) = flows(&topo, &capture, dst, (64, 2), false);
        assert_eq!(total, 128, "{seen:?}");
        let on = |link: u8| seen.values().filter(|l| l.contains(&link)).count();
        assert!(on(0) >= 8 && on(2) >= 8, "{dst}: both paths again: {seen:?}");
    }
    let done = fwd.stop().unwrap();
    assert!(done.success, "{}{}", done.stdout, done.stderr);
}

/// A link going down takes the kernel's nexthop objects through it out of their groups
/// without a word: the group's flows all leave by the paths left, with xdpfwd as with the
/// kernel (xdpfwd used to keep hashing flows to the dead path, whose frames the kernel,
/// forwarding off, then dropped).
#[test]
fn a_link_going_down_takes_its_paths_out_of_nexthop_groups() {
    let topo = Topology::new("ld", false).unwrap();
    topo.enable_gro().unwrap();
    let (f2, s2) = topo.second_link().unwrap();
    neighbours(&topo, &f2, &s2);
    let f1 = topo.f1.clone();
    ip(&topo, &format!("nexthop add id 1 via 198.18.2.2 dev {f1}"));
    ip(&topo, &format!("nexthop add id 2 via 198.18.3.2 dev {f2}"));
    ip(&topo, "nexthop add id 10 group 1/2");
    ip(&topo, "route add 198.19.65.0/24 nhid 10");
    assert_forwarding_off(&topo);
    let mut fwd =
        Forwarder::start(&topo.fwd, &[&topo.f0, &f1, &f2, "--stats-interval", "0"]).unwrap();
    let capture = Capture::open(&topo, &s2);
    let dst = Ipv4Addr::new(198, 19, 65, 9);
    let (seen, total) = flows(&topo, &capture, dst, (64, 2), false);
    assert_eq!(total, 128, "{seen:?}");
    assert!(seen.values().filter(|l| l.contains(&2)).count() >= 8, "both paths: {seen:?}");

    ip(&topo, &format!("link set {f2} down"));
    let group = sh(&["ip", "-n", &topo.fwd, "nexthop", "show", "id", "10"]).unwrap();
    assert!(!group.contains("1/2"), "the kernel took the path out: {group}");
    thread::sleep(Duration::from_millis(1500));
    let (seen, total) = flows(&topo, &capture, dst, (64, 2), false);
    assert_eq!(total, 128, "every frame by the path left: {seen:?}");
    assert!(seen.values().all(|l| *l == BTreeSet::from([0])), "{seen:?}");
    let done = fwd.stop().unwrap();
    assert!(done.success, "{}{}", done.stdout, done.stderr);
    assert!(done.stderr.contains("a link with nexthops went down"), "{}", done.stderr);
}

/// The ECMP routes of the seeded-hash test: a weighted multipath route, a weighted nexthop
/// group, a resilient group (the hash picks a bucket), IPv6 siblings.
fn seeded_routes(topo: &Topology, f2: &str) {
    let f1 = topo.f1.as_str();
    for r in [
        format!(
            "route add 198.19.70.0/24 nexthop via 198.18.2.2 dev {f1} \
             nexthop via 198.18.3.2 dev {f2} weight 2"
        ),
        format!("nexthop add id 71 via 198.18.2.2 dev {f1}"),
        format!("nexthop add id 72 via 198.18.3.2 dev {f2}"),
        "nexthop add id 73 group 71,3/72".to_string(),
        "route add 198.19.71.0/24 nhid 73".to_string(),
        "nexthop add id 74 group 71/72 type resilient buckets 32".to_string(),
        "route add 198.19.72.0/24 nhid 74".to_string(),
        format!(
            "-6 route add 2001:2:57::/64 nexthop via 2001:2:0:2::2 dev {f1} \
             nexthop via 2001:2:0:3::2 dev {f2}"
        ),
    ] {
        ip(topo, &r);
    }
}

/// A frame with its IPv6 flow label set to `label` (no checksum covers it).
fn with_label(mut f: Vec<u8>, label: u32) -> Vec<u8> {
    f[15] = f[15] & 0xf0 | (label >> 16) as u8 & 0x0f;
    f[16] = (label >> 8) as u8;
    f[17] = label as u8;
    f
}

/// An ICMP error from `from` to `to` quoting `quoted` (an IP packet's first bytes).
fn icmp_error(c_mac: [u8; 6], f_mac: [u8; 6], from: &str, to: &str, quoted: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let eth = PacketBuilder::ethernet2(c_mac, f_mac);
    let built = match (from.parse::<IpAddr>().unwrap(), to.parse::<IpAddr>().unwrap()) {
        (IpAddr::V4(a), IpAddr::V4(b)) => eth
            .ipv4(a.octets(), b.octets(), 64)
            .icmpv4(Icmpv4Type::TimeExceeded(TimeExceededCode::TtlExceededInTransit))
            .write(&mut out, quoted),
        (IpAddr::V6(a), IpAddr::V6(b)) => eth
            .ipv6(a.octets(), b.octets(), 64)
            .icmpv6(Icmpv6Type::PacketTooBig { mtu: 1280 })
            .write(&mut out, quoted),
        _ => panic!("one family"),
    };
    built.expect("ICMP error builds");
    out
}

/// The first bytes of a UDP packet from `src` to `dst` (labelled, for IPv6), as an ICMP
/// error quotes it.
fn quote(src: &str, dst: &str, label: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let built = match (src.parse::<IpAddr>().unwrap(), dst.parse::<IpAddr>().unwrap()) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            PacketBuilder::ipv4(a.octets(), b.octets(), 1).udp(53, 4000).write(&mut out, &[])
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            PacketBuilder::ipv6(a.octets(), b.octets(), 1).udp(53, 4000).write(&mut out, &[])
        }
        _ => panic!("one family"),
    };
    built.expect("quoted packet builds");
    if out[0] >> 4 == 6 {
        out[1] = out[1] & 0xf0 | (label >> 16) as u8 & 0x0f;
        out[2] = (label >> 8) as u8;
        out[3] = label as u8;
    }
    out
}

/// Flows over [`seeded_routes`]: many sources and destinations (policy 0 hashes addresses,
/// IPv6 also the flow label and next header), ICMPv6 echoes with flow labels (whose byte
/// order in the kernel's hash depends on its policy rules), one behind a destination
/// options header, and ICMP errors as routers send them, which the kernel hashes on the
/// packet they quote.
fn seeded_stream(c_mac: [u8; 6], f_mac: [u8; 6]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for i in 0..40u8 {
        for net in [70, 71, 72] {
            let a = (Ipv4Addr::new(198, 18, 1, 10 + i), Ipv4Addr::new(198, 19, net, 7 + i % 5));
            out.push(frame(c_mac, f_mac, a, i % 2 == 0, (4000, 9000), 100));
        }
    }
    for i in 0..24u32 {
        let f = frame6(c_mac, f_mac, &format!("2001:2:0:1::{:x}", 16 + i), "2001:2:57::7", 9000);
        out.push(if i % 2 == 1 { with_label(f, 0x1_2345 + i * 0x1111) } else { f });
    }
    for i in 0..12u32 {
        let mut f = Vec::new();
        let src: std::net::Ipv6Addr = format!("2001:2:0:1::{:x}", 64 + i).parse().unwrap();
        let dst: std::net::Ipv6Addr = "2001:2:57::8".parse().unwrap();
        PacketBuilder::ethernet2(c_mac, f_mac)
            .ipv6(src.octets(), dst.octets(), 64)
            .icmpv6(Icmpv6Type::EchoRequest(IcmpEchoHeader { id: 7, seq: i as u16 }))
            .write(&mut f, &[9; 32])
            .expect("echo builds");
        out.push(with_label(f, 0xa_bcde ^ (i * 0x3_1337)));
    }
    // An echo behind a destination options header (8 bytes of padding); forwarding does not
    // check the ICMPv6 checksum.
    let mut opts = out.last().unwrap().clone();
    opts[20] = 60;
    let len = u16::from_be_bytes([opts[18], opts[19]]) + 8;
    opts[18..20].copy_from_slice(&len.to_be_bytes());
    opts.splice(54..54, [58, 0, 1, 4, 0, 0, 0, 0]);
    out.push(opts);
    for k in 0..6u8 {
        let host = format!("198.19.70.{}", 99 + k);
        let inner = quote(&host, &format!("198.18.{}.5", 200 + k), 0);
        out.push(icmp_error(c_mac, f_mac, "198.18.1.9", &host, &inner));
    }
    for k in 0..6u32 {
        let host = format!("2001:2:57::{:x}", 0x99 + k);
        let inner = quote(&host, &format!("2001:2:0:9::{k:x}"), 0x5_0000 + k * 0x777);
        out.push(icmp_error(c_mac, f_mac, "2001:2:0:1::9", &host, &inner));
    }
    out
}

/// The frames that left through f1 and through f2.
type Links = (Vec<Vec<u8>>, Vec<Vec<u8>>);

/// The second link, GRO on the peers, permanent neighbours of both families on both links
/// and `rp_filter` off: the setting of the ECMP tests. Returns the second link's ends.
fn two_links(topo: &Topology) -> (String, String) {
    topo.enable_gro().unwrap();
    let (f2, s2) = topo.second_link().unwrap();
    neighbours(topo, &f2, &s2);
    neighbours_v6(topo, &f2, &s2);
    for conf in ["all", "default", topo.f0.as_str()] {
        ns_sh(&topo.fwd, &["sysctl", "-qw", &format!("net.ipv4.conf.{conf}.rp_filter=0")]).unwrap();
    }
    (f2, s2)
}

/// The frames a test sends, built for the client's and the router's MACs.
type Stream = fn([u8; 6], [u8; 6]) -> Vec<Vec<u8>>;

/// The kernel's forwarding of `stream`, sent twice (the second time from the flow cache, for
/// xdpfwd), then xdpfwd's (started with `args`, or on the three interfaces); returns both
/// and xdpfwd's report.
fn kernel_and_ours(
    topo: &Topology,
    f2: &str,
    capture: &Capture,
    stream: Stream,
    args: Option<&[&str]>,
) -> (Links, Links, String, String) {
    let c0 = topo.c0.clone();
    let sender = in_netns(&topo.client, move || RawSocket::open(&c0)).unwrap().unwrap();
    let c_mac = topo.mac(&topo.client, &topo.c0).unwrap();
    let f_mac = topo.mac(&topo.fwd, &topo.f0).unwrap();
    let send = || {
        for _ in 0..2 {
            for f in stream(c_mac, f_mac) {
                sender.send(&f).unwrap();
                thread::sleep(Duration::from_millis(2));
            }
        }
        capture.take()
    };
    let kernel = send();
    let all = [topo.f0.as_str(), topo.f1.as_str(), f2, "--stats-interval", "0"];
    let mut fwd = Forwarder::start(&topo.fwd, args.unwrap_or(&all)).unwrap();
    let ours = send();
    let done = fwd.stop().unwrap();
    (kernel, ours, done.stdout, done.stderr)
}

/// With `net.ipv4.fib_multipath_hash_seed` set (Linux 6.11+), the kernel's multipath hash
/// (policy 0) is known: every flow of a multipath route, nexthop groups (hash-threshold and
/// resilient) and IPv6 siblings leaves by the kernel's own path, frame for frame, ICMP
/// errors included; also with an IPv6 port rule, which makes the kernel hash ICMPv6's flow
/// label in the other byte order (ICMPv6 behind an extension header is then the kernel's).
#[test]
fn with_a_hash_seed_every_flow_takes_the_kernels_path() {
    let topo = Topology::new("hs", true).unwrap();
    if !std::path::Path::new("/proc/sys/net/ipv4/fib_multipath_hash_seed").exists() {
        eprintln!("skipped: this kernel has no fib_multipath_hash_seed (Linux 6.11+)");
        return;
    }
    let (f2, s2) = two_links(&topo);
    ns_sh(&topo.fwd, &["sysctl", "-qw", "net.ipv4.fib_multipath_hash_seed=2718281"]).unwrap();
    seeded_routes(&topo, &f2);
    let capture = Capture::open(&topo, &s2);
    let total = 2 * seeded_stream([0; 6], [0; 6]).len();
    for dissect in [false, true] {
        if dissect {
            ip(&topo, "-6 rule add pref 40000 ipproto tcp lookup main");
        }
        let (kernel, ours, stdout, stderr) =
            kernel_and_ours(&topo, &f2, &capture, seeded_stream, None);
        assert_eq!(kernel.0.len() + kernel.1.len(), total, "the kernel forwarded {kernel:?}");
        assert!(kernel.0.len() > 20 && kernel.1.len() > 20, "the paths share the flows");
        assert_eq!(ours.0, kernel.0, "frames out of f1 differ (dissect: {dissect})");
        assert_eq!(ours.1, kernel.1, "frames out of f2 differ (dissect: {dissect})");
        assert!(stderr.contains("ECMP hash seed: with"), "{stderr}");
        // With the port rule, the echo behind the extension header (twice) is the kernel's.
        let passed = if dissect { 2 } else { 0 };
        assert_eq!(xdp_counter(&stdout, "pass_fib"), passed, "{stdout}");
        assert_eq!(xdpfwd_took(&stdout) as usize, total - passed as usize, "{stdout}");
    }
}

/// `frame` as an IPv4 fragment: the first (more fragments) or one at offset 64 bytes.
fn fragment(mut f: Vec<u8>, first: bool) -> Vec<u8> {
    let flags: u16 = if first { 0x2000 } else { 8 };
    f[20..22].copy_from_slice(&flags.to_be_bytes());
    ipv4_checksum(&mut f);
    f
}

/// Sets the IPv4 header checksum of an Ethernet frame.
fn ipv4_checksum(f: &mut [u8]) {
    f[24..26].fill(0);
    let sum: u32 = f[14..34].chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum();
    let sum = (sum & 0xffff) + (sum >> 16);
    f[24..26].copy_from_slice(&(!((sum & 0xffff) + (sum >> 16)) as u16).to_be_bytes());
}

/// An IPv4 packet of protocol `proto` carrying `payload`.
fn ipv4_proto(
    (c_mac, f_mac): ([u8; 6], [u8; 6]),
    (src, dst): (Ipv4Addr, Ipv4Addr),
    proto: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(c_mac, f_mac)
        .ipv4(src.octets(), dst.octets(), 64)
        .write(&mut out, etherparse::IpNumber(proto), payload)
        .expect("packet builds");
    out
}

/// Flows that policies 2 and 3 tell apart: TCP and UDP with many ports, IPv4 fragments,
/// IP-in-IP and GRE (the kernel's flow dissector finds an inner packet), SCTP (whose ports it
/// reads too), labelled IPv6 UDP, IPv6 behind a destination options header, ICMP errors
/// (hashed on their own header by these policies).
fn policy_stream(c_mac: [u8; 6], f_mac: [u8; 6]) -> Vec<Vec<u8>> {
    let macs = (c_mac, f_mac);
    let addrs = |i: u8, net: u8| {
        (Ipv4Addr::new(198, 18, 1, 10 + i % 7), Ipv4Addr::new(198, 19, net, 7 + i % 5))
    };
    let mut out = Vec::new();
    for i in 0..36u8 {
        let ports = (1000 + u16::from(i) * 37, 2000 + u16::from(i) * 101 % 500);
        out.push(frame(c_mac, f_mac, addrs(i, 70 + i % 3), i % 3 == 0, ports, 100));
    }
    for i in 0..4u8 {
        let f =
            frame(c_mac, f_mac, addrs(i + 3, 70 + i % 3), false, (5000 + u16::from(i), 53), 100);
        out.push(fragment(f, i % 2 == 0));
    }
    let inner = frame(c_mac, f_mac, addrs(1, 72), false, (7, 7), 40);
    for i in 0..4u8 {
        out.push(ipv4_proto(macs, addrs(i, 70 + i % 3), 4, &inner[14..]));
        let mut gre = vec![0, 0, 0x08, 0];
        gre.extend_from_slice(&inner[14..]);
        out.push(ipv4_proto(macs, addrs(i + 1, 70 + i % 3), 47, &gre));
        // An SCTP common header: ports, verification tag, checksum; then a chunk.
        let mut sctp = [(3000 + u16::from(i) * 7).to_be_bytes(), 80u16.to_be_bytes()].concat();
        sctp.extend_from_slice(&[0; 24]);
        out.push(ipv4_proto(macs, addrs(i + 2, 70 + i % 3), 132, &sctp));
    }
    // Sources that sort after the destination (the kernel swaps the addresses to hash).
    for i in 0..4u8 {
        let a = (Ipv4Addr::new(198, 19, 200, 1 + i), Ipv4Addr::new(198, 19, 70 + i % 3, 9));
        out.push(frame(c_mac, f_mac, a, i % 2 == 0, (40000 - u16::from(i), 443), 60));
    }
    // UDP whose IP length ends inside its header (the rest is padding): no ports.
    let mut short = frame(c_mac, f_mac, addrs(5, 71), false, (1234, 80), 10);
    short[16..18].copy_from_slice(&22u16.to_be_bytes());
    ipv4_checksum(&mut short);
    out.push(short);
    for i in 0..2u16 {
        let mut echo = Vec::new();
        PacketBuilder::ethernet2(c_mac, f_mac)
            .ipv4([198, 18, 1, 30], [198, 19, 70 + i as u8, 5], 64)
            .icmpv4_echo_request(77 + i, 1)
            .write(&mut echo, &[1; 16])
            .expect("echo builds");
        out.push(echo);
    }
    for i in 0..16u32 {
        let src = format!("2001:2:0:1::{:x}", 16 + i);
        let f = frame6(c_mac, f_mac, &src, "2001:2:57::7", 9000 + i as u16 * 13);
        out.push(with_label(f, 0x1_2345 + i * 0x1111));
    }
    for i in 0..4u32 {
        let src = format!("2001:2:ff::{:x}", 1 + i);
        let f = frame6(c_mac, f_mac, &src, "2001:2:57::9", 7000 + i as u16);
        out.push(if i % 2 == 0 { with_label(f, 0xf_0000 + i) } else { f });
    }
    // UDP behind a destination options header (8 bytes of padding).
    let mut opts = out.last().unwrap().clone();
    opts[20] = 60;
    let len = u16::from_be_bytes([opts[18], opts[19]]) + 8;
    opts[18..20].copy_from_slice(&len.to_be_bytes());
    opts.splice(54..54, [17, 0, 1, 4, 0, 0, 0, 0]);
    out.push(opts);
    for k in 0..3u8 {
        let host = format!("198.19.70.{}", 99 + k);
        let inner = quote(&host, &format!("198.18.{}.5", 200 + k), 0);
        out.push(icmp_error(c_mac, f_mac, "198.18.1.9", &host, &inner));
        let host = format!("2001:2:57::{:x}", 0x99 + k);
        let inner = quote(&host, &format!("2001:2:0:9::{k:x}"), 0x5_0000 + u32::from(k));
        out.push(icmp_error(c_mac, f_mac, "2001:2:0:1::9", &host, &inner));
    }
    out
}

/// With `fib_multipath_hash_seed` set, policies 2 (innermost addresses) and 3 (the fields
/// `fib_multipath_hash_fields` names, per family) are the kernel's own hash too: every flow
/// leaves by the kernel's path, frame for frame. What the kernel's flow dissector reads
/// beyond xdpfwd (an inner packet for policy 2 or inner fields, SCTP's ports, IPv6 behind an
/// extension header) is the kernel's; outer fields of IP-in-IP and GRE are xdpfwd's.
#[test]
fn with_a_hash_seed_policies_2_and_3_take_the_kernels_paths() {
    let topo = Topology::new("hp", true).unwrap();
    if !std::path::Path::new("/proc/sys/net/ipv4/fib_multipath_hash_seed").exists() {
        eprintln!("skipped: this kernel has no fib_multipath_hash_seed (Linux 6.11+)");
        return;
    }
    let (f2, s2) = two_links(&topo);
    ns_sh(&topo.fwd, &["sysctl", "-qw", "net.ipv4.fib_multipath_hash_seed=314159"]).unwrap();
    seeded_routes(&topo, &f2);
    let capture = Capture::open(&topo, &s2);
    let total = 2 * policy_stream([0; 6], [0; 6]).len();
    // (policy, IPv4 fields, IPv6 fields, frames of the stream the kernel forwards): IP-in-IP
    // and GRE 8 (policy 2, inner fields), SCTP 4 and the short UDP 1 (IPv4 ports), the
    // extension header 1.
    for (policy, v4, v6, kernel_only) in [
        (2, 0x7, 0x7, 9),
        (3, 0x37, 0x3f, 6),
        (3, 0xc3, 0x2c3, 9),
        (3, 0x30, 0x28, 6),
        (3, 0x7, 0x7, 1),
        (3, 0x1, 0x10, 1),
        (3, 0xc0, 0x1c0, 9),
    ] {
        for (family, fields) in [("ipv4", v4), ("ipv6", v6)] {
            for (name, value) in [("policy", policy), ("fields", fields)] {
                let set = format!("net.{family}.fib_multipath_hash_{name}={value}");
                ns_sh(&topo.fwd, &["sysctl", "-qw", &set]).unwrap();
            }
        }
        let case = format!("policy {policy}, fields {v4:#x} / {v6:#x}");
        let (kernel, ours, stdout, stderr) =
            kernel_and_ours(&topo, &f2, &capture, policy_stream, None);
        assert_eq!(
            kernel.0.len() + kernel.1.len(),
            total,
            "{case}: the kernel forwarded {kernel:?}"
        );
        if v4 & 0x3f != 0 {
            assert!(
                kernel.0.len() > 20 && kernel.1.len() > 20,
                "{case}: the paths share the flows"
            );
        }
        assert_eq!(ours.0, kernel.0, "{case}: frames out of f1 differ");
        assert_eq!(ours.1, kernel.1, "{case}: frames out of f2 differ");
        assert!(stderr.contains("ECMP hash seed: with"), "{stderr}");
        assert_eq!(xdp_counter(&stdout, "pass_fib"), 2 * kernel_only, "{case}: {stdout}");
        assert_eq!(
            xdpfwd_took(&stdout) as usize,
            total - 2 * kernel_only as usize,
            "{case}: {stdout}"
        );
    }
}

/// Where the kernel forwards and its multipath hash cannot be computed (no
/// `fib_multipath_hash_seed`, or policy 1, which takes the NIC's receive hash), ECMP is the
/// kernel's: every flow leaves by the kernel's path because the kernel forwards it. With
/// `ecmp = "own-hash"` xdpfwd's own hash chooses instead. (Where the kernel's forwarding is
/// off, xdpfwd's own hash chooses: the FRR and BIRD tests above.)
#[test]
fn without_a_hash_seed_ecmp_where_the_kernel_forwards_is_the_kernels() {
    let topo = Topology::new("hn", true).unwrap();
    if !std::path::Path::new("/proc/sys/net/ipv4/fib_multipath_hash_seed").exists() {
        eprintln!("skipped: this kernel has no fib_multipath_hash_seed (Linux 6.11+)");
        return;
    }
    let (f2, s2) = two_links(&topo);
    seeded_routes(&topo, &f2);
    let capture = Capture::open(&topo, &s2);
    let total = 2 * seeded_stream([0; 6], [0; 6]).len();
    let config = std::env::temp_dir().join(format!("{}-ecmp.toml", topo.prefix));
    let mut text = String::from("[defaults]\necmp = \"own-hash\"\n");
    for name in [topo.f0.as_str(), topo.f1.as_str(), f2.as_str()] {
        text += &format!("[[interface]]\nname = \"{name}\"\n");
    }
    std::fs::write(&config, text).unwrap();
    let own = ["--config", config.to_str().unwrap(), "--stats-interval", "0"];
    for (policy, seed) in [(0, 0), (1, 0), (1, 2718281), (2, 0), (3, 0)] {
        for family in ["ipv4", "ipv6"] {
            let set = format!("net.{family}.fib_multipath_hash_policy={policy}");
            ns_sh(&topo.fwd, &["sysctl", "-qw", &set]).unwrap();
        }
        let set = format!("net.ipv4.fib_multipath_hash_seed={seed}");
        ns_sh(&topo.fwd, &["sysctl", "-qw", &set]).unwrap();
        let case = format!("policy {policy}, seed {seed}");
        let (kernel, ours, stdout, stderr) =
            kernel_and_ours(&topo, &f2, &capture, seeded_stream, None);
        assert_eq!(
            kernel.0.len() + kernel.1.len(),
            total,
            "{case}: the kernel forwarded {kernel:?}"
        );
        assert_eq!(ours, kernel, "{case}: the kernel's paths");
        assert_eq!(xdp_counter(&stdout, "pass_fib"), total as u64, "{case}: {stdout}");
        assert_eq!(xdpfwd_took(&stdout), 0, "{case}: {stdout}");
        assert!(stderr.contains("ECMP left to the kernel where it forwards"), "{case}: {stderr}");
        // xdpfwd's own hash: every frame forwarded, over both paths.
        let (_, ours, stdout, stderr) =
            kernel_and_ours(&topo, &f2, &capture, seeded_stream, Some(&own));
        assert_eq!(ours.0.len() + ours.1.len(), total, "{case}, own hash: {ours:?}");
        assert!(
            ours.0.len() > 20 && ours.1.len() > 20,
            "{case}, own hash: the paths share the flows"
        );
        assert_eq!(xdp_counter(&stdout, "pass_fib"), 0, "{case}, own hash: {stdout}");
        assert_eq!(xdpfwd_took(&stdout) as usize, total, "{case}, own hash: {stdout}");
        assert!(stderr.contains("ECMP paths by xdpfwd's own hash"), "{case}: {stderr}");
    }
    std::fs::remove_file(&config).unwrap();
}

/// A rewrite's new destination port is what the policy rules see, as its new address is (a
/// DNAT before the route lookup): a rule on the new port chooses the table, and the frame
/// leaves by that table's route with the new port. A rewrite to an ECMP destination is
/// xdpfwd's to forward (the kernel would forward the frame unrewritten), by its own hash
/// where the kernel's is unknown.
#[test]
fn a_rewrite_is_routed_by_its_new_destination_port_and_address() {
    let topo = Topology::new("np", true).unwrap();
    let (f2, s2) = two_links(&topo);
    ip(&topo, "route add 198.19.80.0/24 via 198.18.2.2");
    ip(&topo, "route add 198.19.80.0/24 via 198.18.3.2 table 100");
    ip(&topo, "rule add pref 100 ipproto tcp dport 8080 lookup 100");
    let f1 = topo.f1.clone();
    ip(
        &topo,
        &format!(
            "route add 198.19.82.0/24 nexthop via 198.18.2.2 dev {f1} nexthop via 198.18.3.2 dev {f2}"
        ),
    );
    let config = std::env::temp_dir().join(format!("{}-nat-port.toml", topo.prefix));
    let mut text = String::new();
    for name in [topo.f0.as_str(), topo.f1.as_str(), f2.as_str()] {
        text += &format!("[[interface]]\nname = \"{name}\"\n");
    }
    text += "[[rewrite]]\nmatch = { proto = \"tcp\", dst = \"198.19.80.7/32\", dst_port = 80 }\n";
    text += "set_dst_port = 8080\n";
    text += "[[rewrite]]\nmatch = { proto = \"udp\", dst = \"198.19.81.7/32\" }\n";
    text += "set_dst = \"198.19.82.7\"\n";
    std::fs::write(&config, text).unwrap();
    let capture = Capture::open(&topo, &s2);
    let c0 = topo.c0.clone();
    let sender = in_netns(&topo.client, move || RawSocket::open(&c0)).unwrap().unwrap();
    let c_mac = topo.mac(&topo.client, &topo.c0).unwrap();
    let f_mac = topo.mac(&topo.fwd, &topo.f0).unwrap();
    let args = ["--config", config.to_str().unwrap(), "--stats-interval", "0"];
    let mut fwd = Forwarder::start(&topo.fwd, &args).unwrap();
    let addrs = (Ipv4Addr::new(198, 18, 1, 2), Ipv4Addr::new(198, 19, 80, 7));
    for i in 0..10u16 {
        sender.send(&frame(c_mac, f_mac, addrs, true, (5000 + i, 80), 40)).unwrap();
        thread::sleep(Duration::from_millis(2));
    }
    let (f1_out, f2_out) = capture.take();
    let ecmp = (Ipv4Addr::new(198, 18, 1, 2), Ipv4Addr::new(198, 19, 81, 7));
    for i in 0..20u16 {
        sender.send(&frame(c_mac, f_mac, ecmp, false, (6000 + i, 53), 40)).unwrap();
        thread::sleep(Duration::from_millis(2));
    }
    let (e1, e2) = capture.take();
    let done = fwd.stop().unwrap();
    std::fs::remove_file(&config).unwrap();
    assert!(f1_out.is_empty(), "main's route, for port 80: {f1_out:?}");
    assert_eq!(f2_out.len(), 10, "table 100's route, for port 8080: {}", done.stdout);
    for f in &f2_out {
        assert_eq!(f[36..38], 8080u16.to_be_bytes(), "rewritten: {f:?}");
    }
    assert_eq!(e1.len() + e2.len(), 20, "the rewrite to the ECMP route: {}", done.stdout);
    for f in e1.iter().chain(&e2) {
        assert_eq!(f[30..34], [198, 19, 82, 7], "rewritten: {f:?}");
    }
    assert_eq!(xdpfwd_took(&done.stdout), 30, "{}", done.stdout);
}

/// A frame whose VLAN tag xdpfwd pops is not one the kernel would forward (it has no device
/// for the tag): to an ECMP route, xdpfwd forwards it by its own hash even where the kernel
/// forwards untagged frames and its multipath hash is unknown (no seed).
#[test]
fn ecmp_frames_whose_tag_is_popped_are_forwarded_by_xdpfwd() {
    let topo = Topology::new("vp", true).unwrap();
    let (f2, s2) = two_links(&topo);
    let f1 = topo.f1.clone();
    ip(
        &topo,
        &format!(
            "route add 198.19.82.0/24 nexthop via 198.18.2.2 dev {f1} nexthop via 198.18.3.2 dev {f2}"
        ),
    );
    let config = std::env::temp_dir().join(format!("{}-vlan.toml", topo.prefix));
    let text = format!(
        "[[interface]]\nname = \"{}\"\nvlan_pop = true\n[[interface]]\nname = \"{f1}\"\n\
         [[interface]]\nname = \"{f2}\"\n",
        topo.f0
    );
    std::fs::write(&config, text).unwrap();
    let capture = Capture::open(&topo, &s2);
    let c0 = topo.c0.clone();
    let sender = in_netns(&topo.client, move || RawSocket::open(&c0)).unwrap().unwrap();
    let c_mac = topo.mac(&topo.client, &topo.c0).unwrap();
    let f_mac = topo.mac(&topo.fwd, &topo.f0).unwrap();
    let args = ["--config", config.to_str().unwrap(), "--stats-interval", "0"];
    let mut fwd = Forwarder::start(&topo.fwd, &args).unwrap();
    for i in 0..20u8 {
        let addrs = (Ipv4Addr::new(198, 18, 1, 2 + i), Ipv4Addr::new(198, 19, 82, 7 + i));
        let mut f = frame(c_mac, f_mac, addrs, false, (7000, 53), 40);
        f.splice(12..12, [0x81, 0x00, 0x00, 10]);
        sender.send(&f).unwrap();
        thread::sleep(Duration::from_millis(2));
    }
    let (a, b) = capture.take();
    let done = fwd.stop().unwrap();
    std::fs::remove_file(&config).unwrap();
    assert_eq!(a.len() + b.len(), 20, "forwarded, untagged: {}", done.stdout);
    assert!(a.iter().chain(&b).all(|f| f[12..14] == [8, 0]), "untagged");
    assert_eq!(xdpfwd_took(&done.stdout), 20, "{}", done.stdout);
}
