//! Events lost on the control plane's netlink sockets: a burst of 100,000 route changes,
//! nexthop objects and a policy rule, far beyond a small receive buffer, while traffic flows.
//! xdpfwd leaves transit to the kernel from the moment it learns of the loss, reads links,
//! rules, nexthops, routes and neighbours again, and afterwards its tries hold exactly the
//! kernel's routes, each with the kernel's next hops, its rules are the kernel's, and every
//! frame goes where the kernel's tables send it.
//!
//! Topology: `xdpfwd_tests::routed` (client, forwarder with f0/f1/f2, server with s0/s2), the
//! kernel's forwarding off: what arrives was forwarded by xdpfwd.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::Ipv4Addr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    thread,
    time::{Duration, Instant},
};

use xdpfwd_tests::{
    Forwarder, Topology, in_netns,
    mirror::{
        Entry, PathOf, RuleOf, in_step, kernel_paths, kernel_routes, kernel_rules, mirrored_paths,
        mirrored_routes, mirrored_rules,
    },
    packet::RawSocket,
    routed::{Capture, assert_forwarding_off, flows, frame, ip, neighbours},
    sh, xdp_counter,
};

/// IPv4 host routes the burst adds: 198.19.128.0/17, every address.
const V4_ROUTES: u32 = 32_768;
/// IPv6 routes the burst adds: /80s under 2001:2:0:8000::/63.
const V6_ROUTES: u32 = 100_000 - V4_ROUTES;
/// Nexthop objects the IPv4 routes go through.
const NEXTHOPS: u32 = 1000;

fn v4_route(i: u32) -> String {
    format!("198.19.{}.{}/32", 128 + i / 256, i % 256)
}

fn v6_route(i: u32) -> String {
    format!("2001:2:0:{:x}:{:x}::/80", 0x8000 + i / 65_536, i % 65_536)
}

/// The burst, as `ip -batch` lines: nexthops and 100,000 routes added, a route and a nexthop
/// (with its route) of before deleted, a policy rule moving a prefix to f2, then half the new
/// routes deleted and a tenth of the nexthops (the kernel drops their routes silently).
fn burst(f2: &str) -> String {
    let mut b = String::new();
    for n in 0..NEXTHOPS {
        b += &format!("nexthop add id {} via 198.18.3.2 dev {f2}\n", 1000 + n);
    }
    for i in 0..V4_ROUTES {
        b += &format!("route add {} nhid {}\n", v4_route(i), 1000 + i % NEXTHOPS);
    }
    for i in 0..V6_ROUTES {
        b += &format!("route add {} via 2001:2:0:3::2 dev {f2}\n", v6_route(i));
        if i == V6_ROUTES / 2 {
            b += "route del 198.19.72.0/24\n";
            b += "nexthop del id 900\n";
            b += &format!("route add 198.19.71.0/24 via 198.18.3.2 dev {f2} table 100\n");
            b += "rule add pref 100 to 198.19.71.0/24 lookup 100\n";
        }
    }
    for i in (1..V4_ROUTES).step_by(2) {
        b += &format!("route del {}\n", v4_route(i));
    }
    for i in (1..V6_ROUTES).step_by(2) {
        b += &format!("route del {}\n", v6_route(i));
    }
    for n in 0..NEXTHOPS / 10 {
        b += &format!("nexthop del id {}\n", 1000 + n * 10);
    }
    b
}

/// The entries of the test's address ranges.
fn ours(set: BTreeSet<Entry>) -> BTreeSet<Entry> {
    set.into_iter()
        .filter(|(_, p)| p.starts_with("198.19.") || p.starts_with("2001:2:0:800"))
        .collect()
}

/// Frames to `dst` every millisecond until `stop`.
fn background(topo: &Topology, dst: Ipv4Addr, stop: Arc<AtomicBool>) -> thread::JoinHandle<u32> {
    let c0 = topo.c0.clone();
    let sender = in_netns(&topo.client, move || RawSocket::open(&c0)).unwrap().unwrap();
    let c_mac = topo.mac(&topo.client, &topo.c0).unwrap();
    let f_mac = topo.mac(&topo.fwd, &topo.f0).unwrap();
    let f = frame(c_mac, f_mac, (Ipv4Addr::new(198, 18, 1, 2), dst), false, (4000, 9000), 64);
    thread::spawn(move || {
        let (mut sent, deadline) = (0, Instant::now() + Duration::from_secs(120));
        while !stop.load(Relaxed) && Instant::now() < deadline {
            if sender.send(&f).is_ok() {
                sent += 1;
            }
            thread::sleep(Duration::from_millis(1));
        }
        sent
    })
}

#[test]
fn lost_netlink_events_are_made_up_for_by_reading_everything_again() {
    let topo = Topology::new("rs", false).unwrap();
    topo.enable_gro().unwrap();
    let (f2, s2) = topo.second_link().unwrap();
    neighbours(&topo, &f2, &s2);
    let f1 = topo.f1.clone();
    ip(&topo, &format!("nexthop add id 900 via 198.18.2.2 dev {f1}"));
    ip(&topo, "route add 198.19.70.0/24 nhid 900");
    ip(&topo, &format!("route add 198.19.71.0/24 via 198.18.2.2 dev {f1}"));
    ip(&topo, &format!("route add 198.19.72.0/24 via 198.18.2.2 dev {f1}"));
    // A buffer of a few events: the burst overruns both sockets.
    let args = [&topo.f0, &f1, &f2, "--stats-interval", "0", "--netlink-buffer", "4096"];
    let mut fwd = Forwarder::start(&topo.fwd, &args).unwrap();
    let capture = Capture::open(&topo, &s2);
    for last in [70, 71, 72] {
        let (seen, total) = flows(&topo, &capture, Ipv4Addr::new(198, 19, last, 9), (4, 5), false);
        assert_eq!(total, 20, "198.19.{last}.9 forwarded before the burst: {seen:?}");
    }

    let file = std::env::temp_dir().join(format!("xdpfwd-test-{}.batch", topo.fwd));
    fs::write(&file, burst(&f2)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let sender = background(&topo, Ipv4Addr::new(198, 19, 71, 9), stop.clone());
    let started = Instant::now();
    let batch = sh(&["ip", "-n", &topo.fwd, "-batch", &file.to_string_lossy()]);
    let _ = fs::remove_file(&file);
    batch.unwrap();
    eprintln!("the burst took {:?}", started.elapsed());

    // The tries come to hold exactly the kernel's routes.
    let (mirrored, kernel) = in_step(Duration::from_secs(60), || {
        (
            ours(mirrored_routes(&topo.fwd, &topo.f0).unwrap()),
            ours(kernel_routes(&topo.fwd).unwrap()),
        )
    });
    stop.store(true, Relaxed);
    let sent = sender.join().unwrap();
    let _ = capture.take();
    let missing: Vec<_> = kernel.difference(&mirrored).take(5).collect();
    let extra: Vec<_> = mirrored.difference(&kernel).take(5).collect();
    assert!(
        mirrored == kernel,
        "{} routes mirrored, {} in the kernel; missing {missing:?}, extra {extra:?}",
        mirrored.len(),
        kernel.len()
    );
    // Each route sends by the kernel's next hops (its nexthop object's, after the burst
    // deleted and added objects), and the rules are the kernel's.
    let ours_paths = |m: BTreeMap<Entry, Vec<PathOf>>| -> BTreeMap<Entry, Vec<PathOf>> {
        m.into_iter().filter(|(e, _)| !ours(BTreeSet::from([e.clone()])).is_empty()).collect()
    };
    let paths = ours_paths(mirrored_paths(&topo.fwd, &topo.f0).unwrap());
    let kernel_by = ours_paths(kernel_paths(&topo.fwd).unwrap());
    let differ: Vec<_> =
        kernel_by.iter().filter(|(e, p)| paths.get(*e) != Some(*p)).take(5).collect();
    let ours_of: Vec<_> = differ.iter().map(|(e, _)| paths.get(*e)).collect();
    assert!(differ.is_empty(), "routes whose next hops differ: {differ:?}, mirrored {ours_of:?}");
    // `local`'s lookup aside: xdpfwd merges `local` into `main` where the rules allow.
    let rules = |m: BTreeMap<bool, Vec<RuleOf>>| -> Vec<RuleOf> {
        m.into_values().flatten().filter(|r| r.1 != 255).collect()
    };
    assert_eq!(
        rules(mirrored_rules(&topo.fwd, &topo.f0).unwrap()),
        rules(kernel_rules(&topo.fwd).unwrap()),
        "the policy rules are the kernel's"
    );
    // 198.19.71.0/24 in main and table 100; the even new routes, less those through a
    // deleted nexthop (every tenth address).
    let left = 2 + V4_ROUTES / 2 - V4_ROUTES.div_ceil(10) + V6_ROUTES / 2;
    assert_eq!(kernel.len() as u32, left, "the burst left what it should in the kernel");

    // Every frame goes where the kernel's tables send it.
    assert_forwarding_off(&topo);
    let dst = |a: u8, b: u8| Ipv4Addr::new(198, 19, a, b);
    for (to, links, why) in [
        (dst(70, 9), None, "its nexthop was deleted"),
        (dst(72, 9), None, "its route was deleted"),
        (dst(71, 9), Some(2), "the rule sends it to table 100, out of f2"),
        (dst(128, 2), Some(2), "a route of the burst through a nexthop"),
        (dst(128, 3), None, "a route of the burst deleted again"),
        (dst(128, 10), None, "a route whose nexthop the burst deleted"),
    ] {
        let (seen, total) = flows(&topo, &capture, to, (4, 5), false);
        match links {
            None => assert_eq!(total, 0, "{to}: {why}: nothing forwarded; {seen:?}"),
            Some(link) => {
                assert_eq!(total, 20, "{to}: {why}: {seen:?}");
                assert!(
                    seen.values().all(|l| l.len() == 1 && l.contains(&link)),
                    "{to}: {why}: {seen:?}"
                );
            }
        }
    }
    let done = fwd.stop().unwrap();
    assert!(done.success, "{}{}", done.stdout, done.stderr);
    let log = &done.stderr;
    for line in log.lines().filter(|l| l.contains("read again") || l.contains("in step")) {
        eprintln!("{line}");
    }
    assert!(log.contains("rtnetlink events were lost"), "the burst overran the socket: {log}");
    assert!(log.contains("in step with the kernel again"), "{log}");
    if log.contains("nexthop events were lost") {
        assert!(log.contains("nexthops read again"), "{log}");
    }
    // The report says how often.
    let rereads = done
        .stdout
        .split("read again after lost events ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next()?.parse::<u64>().ok());
    assert!(rereads.is_some_and(|n| n >= 1), "{}", done.stdout);
    // While xdpfwd read everything again, transit went to the kernel.
    assert!(xdp_counter(&done.stdout, "pass_fib") > 0, "sent {sent}: {}", done.stdout);
}

/// Nexthop events lost while an object is deleted and made again through another link: the
/// kernel flushed the routes through the old one without a word, and the new dump reports the
/// id as if nothing happened. xdpfwd must read the routes again, not forward them through the
/// new object. xdpfwd is stopped (SIGSTOP) while the changes are made, so its nexthop socket
/// (4 KiB) overflows for certain; no route event is sent, so its rtnetlink socket does not.
#[test]
fn a_nexthop_made_again_while_its_events_were_lost_keeps_no_flushed_route() {
    let topo = Topology::new("rn", false).unwrap();
    topo.enable_gro().unwrap();
    let (f2, s2) = topo.second_link().unwrap();
    neighbours(&topo, &f2, &s2);
    let f1 = topo.f1.clone();
    ip(&topo, &format!("nexthop add id 900 via 198.18.2.2 dev {f1}"));
    ip(&topo, "route add 198.19.70.0/24 nhid 900");
    ip(&topo, &format!("route add 198.19.71.0/24 via 198.18.2.2 dev {f1}"));
    let args = [&topo.f0, &f1, &f2, "--stats-interval", "0", "--netlink-buffer", "4096"];
    let mut fwd = Forwarder::start(&topo.fwd, &args).unwrap();
    let capture = Capture::open(&topo, &s2);
    let (seen, total) = flows(&topo, &capture, Ipv4Addr::new(198, 19, 70, 9), (4, 5), false);
    assert_eq!(total, 20, "forwarded through nexthop 900 before: {seen:?}");

    let mut batch = String::new();
    for n in 0..200 {
        batch += &format!("nexthop add id {} via 198.18.3.2 dev {f2}\n", 2000 + n);
    }
    batch += "nexthop del id 900\n";
    batch += &format!("nexthop add id 900 via 198.18.3.2 dev {f2}\n");
    let file = std::env::temp_dir().join(format!("xdpfwd-test-{}.batch", topo.fwd));
    fs::write(&file, batch).unwrap();
    fwd.signal(libc::SIGSTOP);
    let done = sh(&["ip", "-n", &topo.fwd, "-batch", &file.to_string_lossy()]);
    fwd.signal(libc::SIGCONT);
    let _ = fs::remove_file(&file);
    done.unwrap();
    let route = sh(&["ip", "-n", &topo.fwd, "route", "show", "198.19.70.0/24"]).unwrap();
    assert!(route.trim().is_empty(), "the kernel flushed the route: {route}");

    let (mirrored, kernel) = in_step(Duration::from_secs(20), || {
        (
            ours(mirrored_routes(&topo.fwd, &topo.f0).unwrap()),
            ours(kernel_routes(&topo.fwd).unwrap()),
        )
    });
    assert_eq!(mirrored, kernel, "the tries hold the kernel's routes");
    assert_forwarding_off(&topo);
    let (seen, total) = flows(&topo, &capture, Ipv4Addr::new(198, 19, 70, 9), (4, 5), false);
    assert_eq!(total, 0, "no route, nothing forwarded (not out of f2): {seen:?}");
    let (seen, total) = flows(&topo, &capture, Ipv4Addr::new(198, 19, 71, 9), (4, 5), false);
    assert_eq!(total, 20, "forwarding resumed: {seen:?}");
    let done = fwd.stop().unwrap();
    assert!(done.success, "{}{}", done.stdout, done.stderr);
    assert!(done.stderr.contains("nexthop events were lost"), "{}", done.stderr);
    assert!(done.stderr.contains("in step with the kernel again"), "{}", done.stderr);
}

/// FRR-style churn arriving on two sockets: nexthop objects deleted (the kernel flushes their
/// routes without a word), made again through another link, and routes added through them
/// again. The route events and the nexthop events may be applied in either order; whichever
/// comes first, the routes end up forwarded through the new objects (never lost, never left
/// to a shorter prefix). xdpfwd is held (SIGSTOP) while the kernel changes, so all the
/// events wait together; ten prefixes make an unlucky order near certain to be met.
#[test]
fn nexthops_made_again_with_their_routes_are_followed_whatever_order_events_arrive_in() {
    let topo = Topology::new("ro", false).unwrap();
    topo.enable_gro().unwrap();
    let (f2, s2) = topo.second_link().unwrap();
    neighbours(&topo, &f2, &s2);
    let f1 = topo.f1.clone();
    for i in 0..10 {
        ip(&topo, &format!("nexthop add id {} via 198.18.2.2 dev {f1}", 100 + i));
        ip(&topo, &format!("route add 198.19.{}.0/24 nhid {}", 80 + i, 100 + i));
    }
    let args = [&topo.f0, &f1, &f2, "--stats-interval", "0"];
    let mut fwd = Forwarder::start(&topo.fwd, &args).unwrap();
    let capture = Capture::open(&topo, &s2);
    let (seen, total) = flows(&topo, &capture, Ipv4Addr::new(198, 19, 80, 9), (4, 5), false);
    assert_eq!(total, 20, "{seen:?}");

    let mut batch = String::new();
    for i in 0..10 {
        batch += &format!("nexthop del id {}\n", 100 + i);
        batch += &format!("nexthop add id {} via 198.18.3.2 dev {f2}\n", 100 + i);
        batch += &format!("route add 198.19.{}.0/24 nhid {}\n", 80 + i, 100 + i);
    }
    let file = std::env::temp_dir().join(format!("xdpfwd-test-{}.batch", topo.fwd));
    fs::write(&file, batch).unwrap();
    fwd.signal(libc::SIGSTOP);
    let done = sh(&["ip", "-n", &topo.fwd, "-batch", &file.to_string_lossy()]);
    fwd.signal(libc::SIGCONT);
    let _ = fs::remove_file(&file);
    done.unwrap();

    let ours_paths = |m: BTreeMap<Entry, Vec<PathOf>>| -> BTreeMap<Entry, Vec<PathOf>> {
        m.into_iter().filter(|((_, p), _)| p.starts_with("198.19.")).collect()
    };
    let (mirrored, kernel) = in_step(Duration::from_secs(10), || {
        (
            ours_paths(mirrored_paths(&topo.fwd, &topo.f0).unwrap()),
            ours_paths(kernel_paths(&topo.fwd).unwrap()),
        )
    });
    assert_eq!(mirrored, kernel, "every route through its new object");
    assert_eq!(kernel.len(), 10);
    assert_forwarding_off(&topo);
    for i in 0..10u8 {
        let (seen, total) =
            flows(&topo, &capture, Ipv4Addr::new(198, 19, 80 + i, 9), (4, 2), false);
        assert_eq!(total, 8, "198.19.{}.9: {seen:?}", 80 + i);
        assert!(seen.values().all(|l| *l == BTreeSet::from([2])), "all by f2: {seen:?}");
    }
    let done = fwd.stop().unwrap();
    assert!(done.success, "{}{}", done.stdout, done.stderr);
}
