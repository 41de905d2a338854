//! Under load from a generator that outruns the forwarder: no heap allocation in the workers,
//! every transmitted frame is one the worker received (frame ownership verified on every ring
//! operation), and every frame accounted for at shutdown.

use std::{
    thread,
    time::{Duration, Instant},
};

use xdpfwd_tests::{
    Forwarder, Topology, forwarded_packets, frame_accounting,
    generator::{Generator, Sink, client_to_server},
    report_value,
};

#[test]
fn a_million_packets_without_allocation_and_with_every_frame_accounted_for() {
    let topo = Topology::new("ld", false).unwrap();
    topo.static_neighbours().unwrap();
    let sink = Sink::attach(&topo.server, &topo.s0).unwrap();
    // The AF_XDP path (the sink's XDP program would let `auto` take the fast path out of f1).
    let args = [topo.f0.as_str(), &topo.f1, "--stats-interval", "0", "--default-path", "af-xdp"];
    let mut fwd = Forwarder::start(&topo.fwd, &args).unwrap();
    let frame = client_to_server(&topo, 60).unwrap();
    let generator = Generator::start(&topo.client, &topo.c0, frame, 8, 0, None).unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    while sink.count().unwrap().0 < 1_000_000 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    let sent = generator.stop().unwrap();
    thread::sleep(Duration::from_millis(200));
    let received = sink.count().unwrap().0;
    let done = fwd.stop().unwrap();
    assert!(done.success, "{done:?}");
    let forwarded = forwarded_packets(&done.stdout).unwrap();
    eprintln!("sent {sent}, forwarded {forwarded}, received {received}\n{}", done.stdout);
    assert!(forwarded >= 1_000_000, "forwarded {forwarded}");
    assert!(received >= 1_000_000, "the sink got {received}");
    assert_eq!(report_value(&done.stdout, "heap allocations"), Some(0), "worker allocations");
    assert_eq!(report_value(&done.stdout, "ownership violations"), Some(0), "frame ownership");
    let (total, free, fill, tx, held) = frame_accounting(&done.stdout).unwrap();
    assert_eq!(total, free + fill + tx + held, "every frame accounted for after overload");
    assert!(total > 0);
}
