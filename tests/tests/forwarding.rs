//! xdpfwd on veth pairs in network namespaces: forwarding, what goes to the kernel, and
//! clean shutdown. Needs root; run through `cargo xtask test`.

use std::{
    net::IpAddr,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use xdpfwd_tests::{
    CLIENT_V4, CLIENT_V6, FWD_V4_A, FWD_V4_B, FWD_V6_A, FWD_V6_B, Forwarder, SERVER_V4, SERVER_V6,
    Topology, cpu_seconds, forwarded_packets, traffic::udp_stream, xdp_counter,
};

fn start(topo: &Topology) -> Forwarder {
    Forwarder::start(&topo.fwd, &[&topo.f0, &topo.f1, "--stats-interval", "0"])
        .expect("xdpfwd starts")
}

#[test]
fn ping_both_directions_ipv4_and_ipv6_with_kernel_forwarding_off() {
    let topo = Topology::new("p", false).unwrap();
    assert!(!topo.ping(&topo.client, IpAddr::V4(SERVER_V4), 1), "no forwarding without xdpfwd");
    let mut fwd = start(&topo);
    for (from, to) in [
        (&topo.client, IpAddr::V4(SERVER_V4)),
        (&topo.client, IpAddr::V6(SERVER_V6)),
        (&topo.server, IpAddr::V4(CLIENT_V4)),
        (&topo.server, IpAddr::V6(CLIENT_V6)),
    ] {
        assert!(topo.ping(from, to, 5), "ping {to} from {from}");
    }
    let done = fwd.stop().unwrap();
    assert!(done.success, "clean exit: {done:?}");
    let forwarded = forwarded_packets(&done.stdout).unwrap();
    assert!(
        forwarded >= 40,
        "4 × 5 echo requests and replies forwarded by xdpfwd, got {forwarded}"
    );
}

#[test]
fn a_worker_with_a_long_idle_spin_forwards_then_sleeps_once_traffic_stops() {
    let topo = Topology::new("spin", false).unwrap();
    let args = [&topo.f0, &topo.f1, "--stats-interval", "0", "--default-path", "af-xdp"];
    let mut fwd = Forwarder::start(&topo.fwd, &[&args[..], &["--idle-spin", "20000"]].concat())
        .expect("xdpfwd starts");
    assert!(topo.ping(&topo.client, IpAddr::V4(SERVER_V4), 5), "ping through the AF_XDP path");
    thread::sleep(Duration::from_millis(500));
    // A worker still polling takes a whole core, one that polls anew after every poll()
    // timeout a fifth of one (20 of every 100 ms), one asleep next to nothing.
    let (c0, t0) = (cpu_seconds(fwd.pid()), Instant::now());
    thread::sleep(Duration::from_secs(2));
    let cpu = (cpu_seconds(fwd.pid()) - c0) / t0.elapsed().as_secs_f64();
    let done = fwd.stop().unwrap();
    assert!(done.success, "clean exit: {done:?}");
    assert!(forwarded_packets(&done.stdout).unwrap() >= 10, "forwarded: {}", done.stdout);
    assert!(cpu < 0.1, "idle after the pings, xdpfwd took {:.0} % of a core", cpu * 100.0);
}

#[test]
fn traffic_to_the_forwarder_itself_is_answered_by_its_kernel() {
    let topo = Topology::new("l", false).unwrap();
    let mut fwd = start(&topo);
    for addr in
        [IpAddr::V4(FWD_V4_A), IpAddr::V4(FWD_V4_B), IpAddr::V6(FWD_V6_A), IpAddr::V6(FWD_V6_B)]
    {
        assert!(topo.ping(&topo.client, addr, 3), "ping {addr}");
    }
    let done = fwd.stop().unwrap();
    assert_eq!(forwarded_packets(&done.stdout), Some(0), "nothing steered: {}", done.stdout);
    assert!(xdp_counter(&done.stdout, "pass_route") >= 6, "local routes counted: {}", done.stdout);
}

#[test]
fn ttl_one_gets_time_exceeded_from_the_forwarders_kernel() {
    let topo = Topology::new("t", true).unwrap();
    let mut fwd = start(&topo);
    assert!(topo.ping(&topo.client, IpAddr::V4(SERVER_V4), 1));
    assert!(topo.ping(&topo.client, IpAddr::V6(SERVER_V6), 1));
    for (flag, dst, expect) in [
        ("-4", SERVER_V4.to_string(), "Time to live exceeded"),
        ("-6", SERVER_V6.to_string(), "Time exceeded"),
    ] {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &topo.client,
                "ping",
                flag,
                "-c",
                "1",
                "-t",
                "1",
                "-W",
                "2",
                &dst,
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(expect), "ping -t 1 {dst}: {text}");
    }
    let done = fwd.stop().unwrap();
    assert!(xdp_counter(&done.stdout, "pass_ttl") >= 2, "{}", done.stdout);
}

#[test]
fn udp_100k_datagrams_each_way_arrive_rewritten_and_intact() {
    let topo = Topology::new("u", false).unwrap();
    let mut fwd = start(&topo);
    assert!(topo.ping(&topo.client, IpAddr::V4(SERVER_V4), 1));
    assert!(topo.ping(&topo.client, IpAddr::V6(SERVER_V6), 1));
    let n = 100_000;
    udp_stream(&topo, &topo.client, &topo.server, &topo.s0, &topo.f1, IpAddr::V4(SERVER_V4), n);
    udp_stream(&topo, &topo.server, &topo.client, &topo.c0, &topo.f0, IpAddr::V4(CLIENT_V4), n);
    udp_stream(&topo, &topo.client, &topo.server, &topo.s0, &topo.f1, IpAddr::V6(SERVER_V6), n);
    udp_stream(&topo, &topo.server, &topo.client, &topo.c0, &topo.f0, IpAddr::V6(CLIENT_V6), n);
    let done = fwd.stop().unwrap();
    assert!(done.success);
    assert!(forwarded_packets(&done.stdout).unwrap() >= 4 * n, "{}", done.stdout);
}

#[test]
fn sigterm_and_kill9_leave_nothing_attached_and_restart_works() {
    let topo = Topology::new("k", false).unwrap();
    let mut fwd = start(&topo);
    assert!(topo.xdp_attached());
    let done = fwd.stop().unwrap();
    assert!(done.success, "SIGTERM exits 0: {done:?}");
    assert!(done.stdout.contains("final: forwarded"), "final counters printed");
    assert!(!topo.xdp_attached(), "detached after SIGTERM");

    let mut fwd = start(&topo);
    assert!(topo.xdp_attached());
    let _ = fwd.stop_with(libc::SIGKILL).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while topo.xdp_attached() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    assert!(!topo.xdp_attached(), "bpf_link released after kill -9");

    let mut fwd = start(&topo);
    assert!(topo.ping(&topo.client, IpAddr::V4(SERVER_V4), 2), "restart after kill -9 forwards");
    assert!(fwd.stop().unwrap().success);
}

#[test]
fn routes_added_replaced_and_removed_at_run_time_are_followed() {
    let topo = Topology::new("r", false).unwrap();
    // Addresses behind the server, reachable only through a route the test adds.
    xdpfwd_tests::sh(&["ip", "-n", &topo.server, "addr", "add", "198.18.9.1/32", "dev", "lo"])
        .unwrap();
    xdpfwd_tests::sh(&["ip", "-n", &topo.server, "addr", "add", "2001:2:0:9::1/128", "dev", "lo"])
        .unwrap();
    let v4: IpAddr = "198.18.9.1".parse().unwrap();
    let v6: IpAddr = "2001:2:0:9::1".parse().unwrap();
    let mut fwd = start(&topo);
    let route = |args: &[&str]| {
        let mut full = vec!["ip", "-n", topo.fwd.as_str()];
        full.extend_from_slice(args);
        xdpfwd_tests::sh(&full).unwrap();
        // Give the control plane a moment to apply the netlink event.
        thread::sleep(Duration::from_millis(300));
    };
    assert!(!topo.ping(&topo.client, v4, 1), "no route yet");
    route(&["route", "add", "198.18.9.0/24", "via", "198.18.2.2"]);
    route(&["-6", "route", "add", "2001:2:0:9::/64", "via", "2001:2:0:2::2"]);
    assert!(topo.ping(&topo.client, v4, 2), "route added");
    assert!(topo.ping(&topo.client, v6, 2), "IPv6 route added");
    // Replace the IPv6 route by one through another next hop (a second address of the
    // server): for IPv6 the kernel announces only the new route, with NLM_F_REPLACE.
    xdpfwd_tests::sh(&[
        "ip",
        "-n",
        &topo.server,
        "addr",
        "add",
        "2001:2:0:2::3/64",
        "dev",
        &topo.s0,
        "nodad",
    ])
    .unwrap();
    route(&["-6", "route", "replace", "2001:2:0:9::/64", "via", "2001:2:0:2::3"]);
    assert!(topo.ping(&topo.client, v6, 2), "IPv6 route replaced: one next hop, still forwarded");
    route(&["route", "del", "198.18.9.0/24"]);
    route(&["-6", "route", "del", "2001:2:0:9::/64"]);
    assert!(!topo.ping(&topo.client, v4, 1), "route removed");
    assert!(!topo.ping(&topo.client, v6, 1), "IPv6 route removed");
    let done = fwd.stop().unwrap();
    assert!(done.success);
    assert!(xdp_counter(&done.stdout, "steered") >= 6, "{}", done.stdout);
}
