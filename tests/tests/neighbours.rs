//! Neighbours: the kernel sees none of the traffic xdpfwd forwards, so xdpfwd asks it to
//! re-confirm the stale next hops it forwards to, and only those: an entry nobody sends to is
//! left to age as the kernel ages it, without probes.

use std::{
    net::IpAddr,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use xdpfwd_tests::{Forwarder, SERVER_V4, Topology, in_netns, ns_sh, packet::RawSocket};

/// ARP requests for the server's address from the router's `f1` within `window` (the
/// router's replies to the server's own probes do not count).
fn router_arps(topo: &Topology, window: Duration) -> usize {
    let s0 = topo.s0.clone();
    let capture = in_netns(&topo.server, move || RawSocket::open(&s0)).unwrap().unwrap();
    let router = topo.mac(&topo.fwd, &topo.f1).unwrap();
    let deadline = Instant::now() + window;
    let mut arps = 0;
    while let Some(frame) =
        capture.recv_incoming(deadline.saturating_duration_since(Instant::now()))
    {
        let request = frame.len() >= 42 && frame[12..14] == [8, 6] && frame[20..22] == [0, 1];
        if request && frame[6..12] == router && frame[38..42] == SERVER_V4.octets() {
            arps += 1;
        }
    }
    arps
}

#[test]
fn only_stale_neighbours_in_use_are_reconfirmed() {
    let topo = Topology::new("sn", false).unwrap();
    // Probes follow a second after re-confirmation is asked for.
    let setting = format!("net.ipv4.neigh.{}.delay_first_probe_time=1", topo.f1);
    ns_sh(&topo.fwd, &["sysctl", "-qw", &setting]).unwrap();
    let mut fwd =
        Forwarder::start(&topo.fwd, &[&topo.f0, &topo.f1, "--stats-interval", "0"]).unwrap();
    assert!(topo.ping(&topo.client, IpAddr::V4(SERVER_V4), 2));
    let server = SERVER_V4.to_string();
    // Stale at once, as after half a minute without confirmation.
    let mac = xdpfwd_tests::fmt_mac(topo.mac(&topo.server, &topo.s0).unwrap());
    let stale =
        ["ip", "neigh", "replace", &server, "lladdr", &mac, "dev", &topo.f1, "nud", "stale"];
    ns_sh(&topo.fwd, &stale).unwrap();
    assert_eq!(router_arps(&topo, Duration::from_secs(12)), 0, "an unused entry is not probed");

    // Forwarded to, it is re-confirmed (the kernel sees none of that traffic).
    let mut ping = Command::new("ip")
        .args(["netns", "exec", &topo.client, "ping", "-q", "-c", "70", "-i", "0.2", &server])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let arps = router_arps(&topo, Duration::from_secs(12));
    let _ = ping.kill();
    let _ = ping.wait();
    assert!(arps >= 1, "an entry in use is re-confirmed");
    assert!(fwd.stop().unwrap().success);
}

#[test]
fn frames_leave_with_the_interfaces_current_mac() {
    let topo = Topology::new("hm", false).unwrap();
    let mut fwd =
        Forwarder::start(&topo.fwd, &[&topo.f0, &topo.f1, "--stats-interval", "0"]).unwrap();
    let mac = [0x02, 0, 0, 0, 0x5e, 0x01];
    let text = xdpfwd_tests::fmt_mac(mac);
    ns_sh(&topo.fwd, &["ip", "link", "set", "dev", &topo.f1, "address", &text]).unwrap();
    // Unresolved again: the first frames wait in user space for the server's address.
    ns_sh(&topo.fwd, &["ip", "neigh", "flush", "dev", &topo.f1]).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let s0 = topo.s0.clone();
    let capture = in_netns(&topo.server, move || RawSocket::open(&s0)).unwrap().unwrap();
    let _ = topo.ping(&topo.client, IpAddr::V4(SERVER_V4), 3);
    let mut requests = Vec::new();
    while let Some(f) = capture.recv_incoming(Duration::from_millis(500)) {
        // ICMP echo requests (IPv4, protocol 1, type 8).
        if f.len() > 34 && f[12..14] == [8, 0] && f[23] == 1 && f[34] == 8 {
            requests.push(f[6..12].to_vec());
        }
    }
    assert!(!requests.is_empty(), "echo requests reached the server");
    assert!(requests.iter().all(|src| src[..] == mac), "source MACs {requests:02x?}");
    let done = fwd.stop().unwrap();
    assert!(
        xdpfwd_tests::xdp_counter(&done.stdout, "steered_neigh_miss") >= 1,
        "a frame waited in user space: {}",
        done.stdout
    );
}
