//! The routing-daemon harness on its own, without xdpfwd: FRR and BIRD started in the
//! topology's namespaces install static, ECMP and BGP routes the kernel shows as expected, and
//! dropping their guards leaves no process, route or file behind.
//!
//! The configurations here are the ones the forwarding tests can reuse. For BGP over two paths
//! the server gets a second link to the forwarder:
//!
//! ```text
//!   forwarder ns                             server ns
//!   {p}f1 198.18.2.1/24 2001:2:0:2::1/64 ─── {p}s0 198.18.2.2/24 2001:2:0:2::2/64
//!   {p}f2 198.18.3.1/24 2001:2:0:3::1/64 ─── {p}s2 198.18.3.2/24 2001:2:0:3::2/64
//! ```

use std::{
    path::Path,
    time::{Duration, Instant},
};

use xdpfwd_tests::{
    Topology,
    daemons::{BIRD_BGP_FWD, Bird, FRR_BGP_FWD, FRR_BGP_SERVER, Frr},
    sh, wait_for,
};

/// staticd: one route through one next hop, one through two, for IPv4 and IPv6.
const FRR_STATIC: &str = "\
frr defaults traditional
!
ip route 198.19.60.0/24 198.18.2.2
ip route 198.19.61.0/24 198.18.1.2
ip route 198.19.61.0/24 198.18.2.2
ipv6 route 2001:2:0:60::/64 2001:2:0:2::2
ipv6 route 2001:2:0:61::/64 2001:2:0:1::2
ipv6 route 2001:2:0:61::/64 2001:2:0:2::2
!
";

/// BIRD: a static route through two next hops per address family, exported to the kernel.
const BIRD_STATIC: &str = "\
log stderr all;
router id 198.18.1.1;
protocol device { scan time 1; }
protocol kernel kernel4 {
  scan time 1;
  merge paths on;
  ipv4 { export all; import none; };
}
protocol kernel kernel6 {
  scan time 1;
  merge paths on;
  ipv6 { export all; import none; };
}
protocol static static4 {
  ipv4;
  route 198.19.80.0/24 via 198.18.1.2 via 198.18.2.2;
}
protocol static static6 {
  ipv6;
  route 2001:2:0:80::/64 via 2001:2:0:1::2 via 2001:2:0:2::2;
}
";

/// How long BGP may take to (re)converge; it takes 0.5 to 3 s on an idle machine.
const CONVERGE: Duration = Duration::from_secs(30);

/// `ip -n NS [-6] route show PREFIX`, empty on error.
fn route(ns: &str, prefix: &str) -> String {
    let family = if prefix.contains(':') { "-6" } else { "-4" };
    sh(&["ip", "-n", ns, family, "route", "show", prefix]).unwrap_or_default()
}

/// Number of paths of a route as `ip route` prints it (0 when there is no route).
fn paths(route: &str) -> usize {
    match route.matches("nexthop via").count() {
        0 => usize::from(route.contains(" via ")),
        n => n,
    }
}

/// The `nhid` of a route, if it uses a nexthop object.
fn nhid(route: &str) -> Option<u32> {
    route.split_whitespace().skip_while(|w| *w != "nhid").nth(1)?.parse().ok()
}

/// `ip -n NS nexthop show id ID`.
fn nexthop(ns: &str, id: u32) -> String {
    sh(&["ip", "-n", ns, "nexthop", "show", "id", &id.to_string()]).unwrap_or_default()
}

/// No process is left in `ns`, and none of `pids` exists any more.
fn assert_no_process_left(ns: &str, pids: &[u32]) {
    let left = sh(&["ip", "netns", "pids", ns]).unwrap();
    assert!(left.trim().is_empty(), "processes left in {ns}: {left}");
    for pid in pids {
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "process {pid} still exists");
    }
}

#[test]
fn frr_static_route_is_installed_through_a_nexthop_object_and_removed_on_drop() {
    let topo = Topology::new("ds", true).unwrap();
    let started = Instant::now();
    let frr = Frr::start(&topo.fwd, &topo.fwd, &["zebra", "staticd"], FRR_STATIC).unwrap();
    eprintln!("zebra + staticd answered after {:?}", started.elapsed());
    assert!(
        wait_for(Duration::from_secs(10), || nhid(&route(&topo.fwd, "198.19.60.0/24")).is_some()),
        "no route with nhid: {}\n{}",
        route(&topo.fwd, "198.19.60.0/24"),
        frr.logs()
    );
    eprintln!("static route in the kernel after {:?}", started.elapsed());
    let r = route(&topo.fwd, "198.19.60.0/24");
    assert!(r.contains(&format!("via 198.18.2.2 dev {} proto static", topo.f1)), "{r}");
    let shown = frr.vtysh("show ip route 198.19.60.0/24").unwrap();
    assert!(shown.contains(&format!("198.18.2.2, via {}", topo.f1)), "{shown}");
    assert!(frr.vtysh("show no such thing").is_err());

    // A name in use is refused, and the running instance is left alone.
    assert!(Frr::start(&topo.fwd, &topo.fwd, &["zebra"], "").is_err());
    assert!(frr.vtysh("show version").unwrap().contains("FRRouting"));

    let pids = frr.pids();
    assert_eq!(pids.len(), 2);
    drop(frr);
    assert_no_process_left(&topo.fwd, &pids);
    assert!(!Path::new(&format!("/etc/frr/{}", topo.fwd)).exists());
    assert!(!Path::new(&format!("/var/run/frr/{}", topo.fwd)).exists());
    // zebra takes its routes along when it stops.
    assert_eq!(route(&topo.fwd, "198.19.60.0/24"), "");
}

#[test]
fn frr_static_ecmp_routes_use_a_nexthop_group_for_ipv4_and_ipv6() {
    let topo = Topology::new("de", true).unwrap();
    let frr = Frr::start(&topo.fwd, &topo.fwd, &["zebra", "staticd"], FRR_STATIC).unwrap();
    for prefix in ["198.19.61.0/24", "2001:2:0:61::/64"] {
        assert!(
            wait_for(Duration::from_secs(10), || paths(&route(&topo.fwd, prefix)) == 2),
            "{prefix}: {}\n{}",
            route(&topo.fwd, prefix),
            frr.logs()
        );
        let r = route(&topo.fwd, prefix);
        let id = nhid(&r).unwrap_or_else(|| panic!("{prefix} without nhid: {r}"));
        let group = nexthop(&topo.fwd, id);
        assert!(group.contains(" group "), "{prefix}: nexthop {id} is no group: {group}");
    }
    let r = route(&topo.fwd, "2001:2:0:60::/64");
    assert!(nhid(&r).is_some() && r.contains("via 2001:2:0:2::2"), "{r}");
    let pids = frr.pids();
    drop(frr);
    assert_no_process_left(&topo.fwd, &pids);
}

#[test]
fn bird_static_route_through_two_next_hops_is_a_multipath_route() {
    let topo = Topology::new("bs", true).unwrap();
    let started = Instant::now();
    let bird = Bird::start(&topo.fwd, &topo.fwd, BIRD_STATIC).unwrap();
    eprintln!("bird answered after {:?}", started.elapsed());
    for (prefix, a, b) in [
        ("198.19.80.0/24", "198.18.1.2", "198.18.2.2"),
        ("2001:2:0:80::/64", "2001:2:0:1::2", "2001:2:0:2::2"),
    ] {
        assert!(
            wait_for(Duration::from_secs(10), || paths(&route(&topo.fwd, prefix)) == 2),
            "{prefix}: {}\n{}",
            route(&topo.fwd, prefix),
            bird.log()
        );
        let r = route(&topo.fwd, prefix);
        assert!(r.contains(&format!("nexthop via {a} dev {}", topo.f0)), "{r}");
        assert!(r.contains(&format!("nexthop via {b} dev {}", topo.f1)), "{r}");
        // BIRD 2.0 installs RTA_MULTIPATH routes, not nexthop objects.
        assert_eq!(nhid(&r), None, "{r}");
    }
    eprintln!("multipath routes in the kernel after {:?}", started.elapsed());
    assert!(bird.birdc("show route").unwrap().contains("198.19.80.0/24"));
    assert!(bird.birdc("show no such thing").is_err());
    // A name in use is refused, and the running instance is left alone.
    assert!(Bird::start(&topo.fwd, &topo.fwd, BIRD_STATIC).is_err());
    assert!(bird.birdc("show status").unwrap().contains("up and running"));

    let pid = bird.pid();
    drop(bird);
    assert_no_process_left(&topo.fwd, &[pid]);
    assert!(!Path::new(&format!("/run/xdpfwd-bird-{}", topo.fwd)).exists());
    assert_eq!(route(&topo.fwd, "198.19.80.0/24"), "");
}

#[test]
fn daemons_that_fail_to_start_leave_nothing_behind() {
    let topo = Topology::new("df", true).unwrap();
    let err = Bird::start(&topo.fwd, &topo.fwd, "protocol nonsense {").unwrap_err();
    assert!(format!("{err:#}").contains("exited"), "{err:#}");
    assert!(!Path::new(&format!("/run/xdpfwd-bird-{}", topo.fwd)).exists());

    assert!(Frr::start(&topo.fwd, &topo.fwd, &["zebra", "nosuchd"], "").is_err());
    assert!(Frr::start(&topo.fwd, "../etc", &["zebra"], "").is_err());
    // A namespace that does not exist: zebra's `ip netns exec` fails at once.
    let err = Frr::start("xfnosuchns", &topo.fwd, &["zebra"], "").unwrap_err();
    assert!(format!("{err:#}").contains("exited"), "{err:#}");
    assert!(!Path::new(&format!("/etc/frr/{}", topo.fwd)).exists());
    assert!(!Path::new(&format!("/var/run/frr/{}", topo.fwd)).exists());
    assert_no_process_left(&topo.fwd, &[]);
}

#[test]
fn frr_bgp_over_two_links_installs_an_ecmp_group_and_a_shut_neighbour_withdraws_its_path() {
    let topo = Topology::new("db", true).unwrap();
    topo.second_link().unwrap();
    let f2 = format!("{}f2", topo.prefix);
    let started = Instant::now();
    let server =
        Frr::start(&topo.server, &topo.server, &["zebra", "staticd", "bgpd"], FRR_BGP_SERVER)
            .unwrap();
    let fwd = Frr::start(&topo.fwd, &topo.fwd, &["zebra", "bgpd"], FRR_BGP_FWD).unwrap();
    eprintln!("both FRR instances answered after {:?}", started.elapsed());
    let logs = || format!("{}\n{}", fwd.logs(), server.logs());

    for prefix in ["198.19.70.0/24", "2001:2:0:70::/64"] {
        assert!(
            wait_for(CONVERGE, || paths(&route(&topo.fwd, prefix)) == 2),
            "{prefix}: {}\n{}\n{}",
            route(&topo.fwd, prefix),
            fwd.vtysh("show bgp summary").unwrap_or_default(),
            logs()
        );
        let r = route(&topo.fwd, prefix);
        let id = nhid(&r).unwrap_or_else(|| panic!("{prefix} without nhid: {r}"));
        assert!(nexthop(&topo.fwd, id).contains(" group "), "{}", nexthop(&topo.fwd, id));
        assert!(r.contains(&format!("dev {}", topo.f1)) && r.contains(&format!("dev {f2}")), "{r}");
    }
    eprintln!("BGP ECMP (IPv4 and IPv6) in the kernel after {:?}", started.elapsed());
    // FRR installs IPv6 BGP routes via the peers' link-local addresses.
    assert!(route(&topo.fwd, "2001:2:0:70::/64").contains("nexthop via fe80::"));

    // Shutting one IPv4 session down withdraws its path; the other stays.
    let t = Instant::now();
    fwd.configure(&["router bgp 65001", "neighbor 198.18.3.2 shutdown"]).unwrap();
    assert!(
        wait_for(CONVERGE, || paths(&route(&topo.fwd, "198.19.70.0/24")) == 1),
        "{}",
        route(&topo.fwd, "198.19.70.0/24")
    );
    eprintln!("one IPv4 path withdrawn after {:?}", t.elapsed());
    let r = route(&topo.fwd, "198.19.70.0/24");
    assert!(r.contains(&format!("via 198.18.2.2 dev {}", topo.f1)), "{r}");
    assert_eq!(paths(&route(&topo.fwd, "2001:2:0:70::/64")), 2);

    let t = Instant::now();
    fwd.configure(&["router bgp 65001", "no neighbor 198.18.3.2 shutdown"]).unwrap();
    assert!(
        wait_for(CONVERGE, || paths(&route(&topo.fwd, "198.19.70.0/24")) == 2),
        "{}",
        route(&topo.fwd, "198.19.70.0/24")
    );
    eprintln!("IPv4 path back after {:?}", t.elapsed());

    // The same from the announcing side, for IPv6.
    let t = Instant::now();
    server.configure(&["router bgp 65002", "neighbor 2001:2:0:3::1 shutdown"]).unwrap();
    assert!(
        wait_for(CONVERGE, || paths(&route(&topo.fwd, "2001:2:0:70::/64")) == 1),
        "{}",
        route(&topo.fwd, "2001:2:0:70::/64")
    );
    eprintln!("one IPv6 path withdrawn after {:?}", t.elapsed());
    assert!(route(&topo.fwd, "2001:2:0:70::/64").contains(&format!("dev {}", topo.f1)));

    let mut pids = fwd.pids();
    pids.extend(server.pids());
    drop(fwd);
    drop(server);
    assert_no_process_left(&topo.fwd, &pids);
    assert_no_process_left(&topo.server, &pids);
}

#[test]
fn bird_merges_two_bgp_paths_from_frr_into_one_multipath_route() {
    let topo = Topology::new("bb", true).unwrap();
    topo.second_link().unwrap();
    let f2 = format!("{}f2", topo.prefix);
    let started = Instant::now();
    let server =
        Frr::start(&topo.server, &topo.server, &["zebra", "staticd", "bgpd"], FRR_BGP_SERVER)
            .unwrap();
    let bird = Bird::start(&topo.fwd, &topo.fwd, BIRD_BGP_FWD).unwrap();
    for prefix in ["198.19.70.0/24", "2001:2:0:70::/64"] {
        assert!(
            wait_for(CONVERGE, || paths(&route(&topo.fwd, prefix)) == 2),
            "{prefix}: {}\n{}\n{}\n{}",
            route(&topo.fwd, prefix),
            bird.birdc("show protocols").unwrap_or_default(),
            bird.log(),
            server.logs()
        );
        let r = route(&topo.fwd, prefix);
        assert!(r.contains(&format!("dev {}", topo.f1)) && r.contains(&format!("dev {f2}")), "{r}");
    }
    eprintln!("BIRD BGP multipath (IPv4 and IPv6) in the kernel after {:?}", started.elapsed());
    // BIRD installs IPv6 BGP routes via the peers' global addresses.
    assert!(route(&topo.fwd, "2001:2:0:70::/64").contains("nexthop via 2001:2:0:3::2"));

    let t = Instant::now();
    bird.birdc("disable b4b").unwrap();
    assert!(wait_for(CONVERGE, || paths(&route(&topo.fwd, "198.19.70.0/24")) == 1));
    eprintln!("one path withdrawn after {:?}", t.elapsed());
    let t = Instant::now();
    bird.birdc("enable b4b").unwrap();
    assert!(wait_for(CONVERGE, || paths(&route(&topo.fwd, "198.19.70.0/24")) == 2));
    eprintln!("path back after {:?}", t.elapsed());

    // Stopping the announcing FRR withdraws everything at once (no graceful-restart hold).
    let t = Instant::now();
    let mut pids = server.pids();
    drop(server);
    assert!(
        wait_for(Duration::from_secs(5), || route(&topo.fwd, "198.19.70.0/24").is_empty()),
        "{}",
        route(&topo.fwd, "198.19.70.0/24")
    );
    eprintln!("routes gone {:?} after FRR stopped", t.elapsed());
    pids.push(bird.pid());
    drop(bird);
    assert_no_process_left(&topo.fwd, &pids);
    assert_no_process_left(&topo.server, &pids);
}
