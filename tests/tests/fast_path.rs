//! The in-kernel fast path (`--default-path fast`): the XDP program rewrites and redirects
//! through a DEVMAP, and user space only sees frames waiting for a neighbour. With `auto` (the
//! default) each egress takes it while the device takes redirected frames.

use std::{net::IpAddr, time::Duration};

use xdpfwd_tests::{
    CLIENT_V4, CLIENT_V6, Forwarder, SERVER_V4, SERVER_V6, Topology, forwarded_packets, ns_sh,
    stats_json,
    traffic::{gbits, iperf3, udp_stream},
    wait_for, xdp_counter,
};

#[test]
fn fast_path_forwards_rewritten_frames_without_user_space() {
    let topo = Topology::new("fp", false).unwrap();
    topo.enable_gro().unwrap();
    let mut fwd = Forwarder::start(
        &topo.fwd,
        &[&topo.f0, &topo.f1, "--stats-interval", "0", "--default-path", "fast"],
    )
    .unwrap();
    let paths = format!("paths {} fast, {} fast", topo.f0, topo.f1);
    assert!(fwd.ready_line.contains(&paths), "{}", fwd.ready_line);
    for (from, to) in [
        (&topo.client, IpAddr::V4(SERVER_V4)),
        (&topo.client, IpAddr::V6(SERVER_V6)),
        (&topo.server, IpAddr::V4(CLIENT_V4)),
        (&topo.server, IpAddr::V6(CLIENT_V6)),
    ] {
        assert!(topo.ping(from, to, 3), "ping {to} from {from}");
    }
    let n = 20_000;
    udp_stream(&topo, &topo.client, &topo.server, &topo.s0, &topo.f1, IpAddr::V4(SERVER_V4), n);
    udp_stream(&topo, &topo.server, &topo.client, &topo.c0, &topo.f0, IpAddr::V6(CLIENT_V6), n);
    let done = fwd.stop().unwrap();
    assert!(done.success);
    let fast = xdp_counter(&done.stdout, "fast_forwarded");
    assert!(fast >= 2 * n, "fast path forwarded {fast}: {}", done.stdout);
    assert!(
        forwarded_packets(&done.stdout).unwrap() < 10,
        "only frames waiting for a neighbour go through AF_XDP: {}",
        done.stdout
    );
    assert_eq!(xdp_counter(&done.stdout, "fast_failed"), 0);
}

/// The path out of `iface` as `xdpfwd stats` reports it now: (path, reason).
fn egress_path(ns: &str, iface: &str) -> (String, String) {
    let doc = stats_json(ns);
    let paths = doc["stats"]["egress_paths"].as_array().cloned().unwrap_or_default();
    let e = paths.iter().find(|e| e["iface"] == iface).cloned().unwrap_or_default();
    (e["path"].as_str().unwrap_or("").into(), e["reason"].as_str().unwrap_or("").into())
}

/// Counts of the XDP program's `name` counter, now.
fn counter(ns: &str, name: &str) -> u64 {
    stats_json(ns)["stats"]["xdp"][name].as_u64().unwrap_or(0)
}

#[test]
fn auto_takes_the_fast_path_out_of_an_egress_while_it_takes_redirected_frames() {
    let topo = Topology::new("fa", false).unwrap();
    // No flag: `auto`. The client's and server's veths have neither GRO nor XDP, so nothing
    // redirected into f0 or f1 would arrive: both take the AF_XDP path.
    let mut fwd =
        Forwarder::start(&topo.fwd, &[&topo.f0, &topo.f1, "--stats-interval", "0"]).unwrap();
    let paths = format!("paths {} af_xdp, {} af_xdp", topo.f0, topo.f1);
    assert!(fwd.ready_line.contains(&paths), "{}", fwd.ready_line);
    let (path, reason) = egress_path(&topo.fwd, &topo.f1);
    assert_eq!(path, "af_xdp");
    assert!(reason.contains("takes no redirected frames"), "{reason}");
    // Neighbours resolved first: frames waiting for one take the AF_XDP path whatever else.
    assert!(topo.ping(&topo.client, IpAddr::V4(SERVER_V4), 2));
    assert!(topo.ping(&topo.client, IpAddr::V6(SERVER_V6), 2));
    let n = 2_000;
    udp_stream(&topo, &topo.client, &topo.server, &topo.s0, &topo.f1, IpAddr::V4(SERVER_V4), n);
    assert_eq!(counter(&topo.fwd, "fast_forwarded"), 0);

    // GRO on the server's end: f1 now takes redirected frames, and the fast path.
    ns_sh(&topo.server, &["ethtool", "-K", &topo.s0, "gro", "on"]).unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || egress_path(&topo.fwd, &topo.f1).0 == "fast"),
        "f1 did not switch to the fast path: {:?}",
        egress_path(&topo.fwd, &topo.f1)
    );
    assert_eq!(egress_path(&topo.fwd, &topo.f0).0, "af_xdp", "f0's peer did not change");
    udp_stream(&topo, &topo.client, &topo.server, &topo.s0, &topo.f1, IpAddr::V4(SERVER_V4), n);
    udp_stream(&topo, &topo.client, &topo.server, &topo.s0, &topo.f1, IpAddr::V6(SERVER_V6), n);
    assert!(counter(&topo.fwd, "fast_forwarded") >= 2 * n);
    // Replies leave through f0, whose peer still takes no redirected frames.
    assert!(topo.ping(&topo.client, IpAddr::V4(SERVER_V4), 3));

    // GRO off again: back to AF_XDP, and nothing redirected into the void.
    ns_sh(&topo.server, &["ethtool", "-K", &topo.s0, "gro", "off"]).unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || egress_path(&topo.fwd, &topo.f1).0 == "af_xdp"),
        "f1 did not return to the AF_XDP path"
    );
    let fast = counter(&topo.fwd, "fast_forwarded");
    udp_stream(&topo, &topo.client, &topo.server, &topo.s0, &topo.f1, IpAddr::V4(SERVER_V4), n);
    assert_eq!(counter(&topo.fwd, "fast_forwarded"), fast);
    let done = fwd.stop().unwrap();
    assert!(done.success);
    assert_eq!(xdp_counter(&done.stdout, "fast_failed"), 0, "{}", done.stdout);
    let report = format!("{} af_xdp (auto: the device takes no redirected frames", topo.f1);
    assert!(done.stdout.contains(&report), "{}", done.stdout);
}

/// A jumbo frame (MTU 9000, more than one buffer on veth) leaves by the fast path only out of
/// a device that takes such frames; out of one that takes none (the server's end without GRO
/// or XDP, so the kernel reports neither `NDO_XMIT` nor `NDO_XMIT_SG`), the kernel forwards it
/// instead of the redirect losing it. The AF_XDP path, with multi-buffer sockets, carries it
/// out of either.
#[test]
fn jumbo_frames_take_the_fast_path_only_where_the_device_takes_them() {
    let topo = Topology::new("fj", false).unwrap();
    topo.set_mtu(9000, 9000).unwrap();
    ns_sh(&topo.fwd, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]).unwrap();
    let ping = || {
        let server = SERVER_V4.to_string();
        let args = ["ping", "-q", "-c", "3", "-i", "0.1", "-W", "2", "-M", "do", "-s", "8000"];
        let mut args = args.to_vec();
        args.push(&server);
        ns_sh(&topo.client, &args).is_ok()
    };
    for path in ["fast", "af-xdp"] {
        let _ = ns_sh(&topo.client, &["ethtool", "-K", &topo.c0, "gro", "off"]);
        let _ = ns_sh(&topo.server, &["ethtool", "-K", &topo.s0, "gro", "off"]);
        let mut fwd = Forwarder::start(
            &topo.fwd,
            &[&topo.f0, &topo.f1, "--stats-interval", "0", "--default-path", path],
        )
        .unwrap();
        // Replies come back through f0, whose peer (the client's end) has no GRO either.
        assert!(ping(), "jumbo pings arrive ({path})");
        // (The first request and reply may wait for a neighbour: the kernel's too.)
        let passed = counter(&topo.fwd, "pass_too_long");
        if path == "fast" {
            assert!(passed >= 4, "{path}: {}", stats_json(&topo.fwd));
        } else {
            // In more than one UMEM frame through the sockets, none to the kernel.
            assert_eq!(passed, 0, "{path}: {}", stats_json(&topo.fwd));
            assert!(counter(&topo.fwd, "steered") >= 4, "{}", stats_json(&topo.fwd));
        }
        // With GRO on both ends both devices take frames in more than one buffer: the fast
        // path where it is chosen; the AF_XDP path keeps them where it is.
        topo.enable_gro().unwrap();
        let taken = if path == "fast" { "fast_forwarded" } else { "steered" };
        assert!(
            wait_for(Duration::from_secs(5), || {
                let before = counter(&topo.fwd, taken);
                ping() && counter(&topo.fwd, taken) >= before + 6
            }),
            "{path}: {}",
            stats_json(&topo.fwd)
        );
        let done = fwd.stop().unwrap();
        assert_eq!(xdp_counter(&done.stdout, "fast_failed"), 0, "{}", done.stdout);
        if path == "af-xdp" {
            assert_eq!(xdp_counter(&done.stdout, "pass_too_long"), 0, "{}", done.stdout);
            assert_eq!(xdp_counter(&done.stdout, "fast_forwarded"), 0, "{}", done.stdout);
        }
    }
}

/// TCP at MTU 9000 through xdpfwd as the router (the kernel's forwarding off), with the
/// defaults (auto: the fast path, the ends with GRO) and with the AF_XDP path chosen: every
/// data segment is a frame in more than one buffer, and all of them take the path chosen
/// (none lost to the kernel, which would drop them): the AF_XDP path in several UMEM frames.
#[test]
fn tcp_at_mtu_9000_takes_the_path_chosen() {
    let topo = Topology::new("ft", false).unwrap();
    topo.set_mtu(9000, 9000).unwrap();
    topo.enable_gro().unwrap();
    for (path, taken) in [("auto", "fast_forwarded"), ("af-xdp", "steered")] {
        let mut fwd = Forwarder::start(
            &topo.fwd,
            &[&topo.f0, &topo.f1, "--stats-interval", "0", "--default-path", path],
        )
        .unwrap();
        assert!(topo.ping(&topo.client, IpAddr::V4(SERVER_V4), 2));
        let args = ["-c", "198.18.2.2", "-p", "5203", "-t", "2", "-f", "g"];
        let report = iperf3(&topo, "5203", &args).unwrap();
        let goodput = gbits(&report).unwrap_or(0.0);
        let done = fwd.stop().unwrap();
        // Segments of 8948 bytes of payload (timestamps on), one frame each.
        let segments = (goodput * 1e9 * 2.0 / 8.0 / 8948.0) as u64;
        let work = xdp_counter(&done.stdout, taken);
        assert!(goodput > 0.1, "{path}: {report}");
        assert!(work >= segments * 9 / 10, "{path}: {work} for {segments}: {}", done.stdout);
        assert_eq!(xdp_counter(&done.stdout, "pass_too_long"), 0, "{}", done.stdout);
        assert_eq!(xdp_counter(&done.stdout, "fast_failed"), 0, "{}", done.stdout);
    }
}

/// With the kernel's forwarding off, a jumbo frame whose next hop is unknown waits in the
/// worker in all its UMEM frames (AF_XDP path, multi-buffer sockets) until the kernel has
/// resolved it, then leaves whole; before, it went to the kernel, which dropped it. Both
/// families; the ends have no GRO, so the fast path cannot carry it either.
#[test]
fn jumbo_frames_wait_for_their_next_hop_in_several_umem_frames() {
    let topo = Topology::new("fh", false).unwrap();
    topo.set_mtu(9000, 9000).unwrap();
    let mut fwd = Forwarder::start(
        &topo.fwd,
        &[&topo.f0, &topo.f1, "--stats-interval", "0", "--default-path", "af-xdp"],
    )
    .unwrap();
    for (server, family) in [(IpAddr::V4(SERVER_V4), "-4"), (IpAddr::V6(SERVER_V6), "-6")] {
        let _ = ns_sh(&topo.fwd, &["ip", family, "neigh", "flush", "dev", &topo.f1]);
        let before = counter(&topo.fwd, "steered_neigh_miss");
        let server = server.to_string();
        // One echo request of 8000 bytes: only the held frame can answer it.
        let args = ["ping", "-q", "-c", "1", "-W", "3", "-s", "8000", &server];
        assert!(ns_sh(&topo.client, &args).is_ok(), "{server}: {}", stats_json(&topo.fwd));
        assert!(counter(&topo.fwd, "steered_neigh_miss") > before, "{}", stats_json(&topo.fwd));
    }
    let stats = stats_json(&topo.fwd);
    let ports = stats["stats"]["ports"].as_array().cloned().unwrap_or_default();
    let sent: u64 = ports.iter().filter_map(|p| p["held_sent"].as_u64()).sum();
    let dropped: u64 = ports.iter().filter_map(|p| p["held_dropped"].as_u64()).sum();
    assert!(sent >= 2 && dropped == 0, "{stats}");
    let done = fwd.stop().unwrap();
    assert_eq!(xdp_counter(&done.stdout, "pass_too_long"), 0, "{}", done.stdout);
    assert_eq!(xdp_counter(&done.stdout, "fast_forwarded"), 0, "{}", done.stdout);
}
