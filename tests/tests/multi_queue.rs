//! Several rx queues and workers: a socket on every queue, frames never cross workers, and
//! everything still arrives.

use std::net::IpAddr;

use xdpfwd_tests::{
    CLIENT_V4, Forwarder, SERVER_V4, SERVER_V6, Topology, forwarded_packets, report_value,
    traffic::udp_stream,
};

#[test]
fn two_queues_two_workers_forward_everything() {
    let topo = Topology::with_queues("mq", false, 2).unwrap();
    let mut fwd = Forwarder::start(
        &topo.fwd,
        &[&topo.f0, &topo.f1, "--stats-interval", "0", "--workers", "2", "--cpus", "0,1"],
    )
    .unwrap();
    assert!(fwd.ready_line.contains("2 worker(s)"), "{}", fwd.ready_line);
    assert!(topo.ping(&topo.client, IpAddr::V4(SERVER_V4), 3));
    assert!(topo.ping(&topo.client, IpAddr::V6(SERVER_V6), 3));
    let n = 20_000;
    udp_stream(&topo, &topo.client, &topo.server, &topo.s0, &topo.f1, IpAddr::V4(SERVER_V4), n);
    udp_stream(&topo, &topo.server, &topo.client, &topo.c0, &topo.f0, IpAddr::V4(CLIENT_V4), n);
    let done = fwd.stop().unwrap();
    assert!(done.success, "{done:?}");
    for port in [format!("{}/q0", topo.f0), format!("{}/q1", topo.f0), format!("{}/q1", topo.f1)] {
        assert!(done.stdout.contains(&port), "a socket on {port}: {}", done.stdout);
    }
    assert!(forwarded_packets(&done.stdout).unwrap() >= 2 * n);
    assert_eq!(report_value(&done.stdout, "ownership violations"), Some(0));
}
