//! The in-kernel fast path (`--default-path fast`): the XDP program rewrites and redirects
//! through a DEVMAP, and user space only sees frames waiting for a neighbour.

use std::net::IpAddr;

use xdpfwd_tests::{
    CLIENT_V4, CLIENT_V6, Forwarder, SERVER_V4, SERVER_V6, Topology, forwarded_packets,
    traffic::udp_stream, xdp_counter,
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
    assert!(fwd.ready_line.contains("fast path"), "{}", fwd.ready_line);
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
