//! Faults while forwarding: an egress link going down and up, a managed interface deleted, an
//! MTU raised beyond what the AF_XDP path carries.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use xdpfwd_tests::{Forwarder, SERVER_V4, Topology, frame_accounting, in_netns, report_value, sh};

fn start(topo: &Topology) -> Forwarder {
    Forwarder::start(&topo.fwd, &[&topo.f0, &topo.f1, "--stats-interval", "0"]).unwrap()
}

/// Pings until one answer comes back or `within` passes.
fn ping_within(topo: &Topology, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if topo.ping(&topo.client, IpAddr::V4(SERVER_V4), 1) {
            return true;
        }
    }
    false
}

#[test]
fn egress_link_down_and_up_while_traffic_flows_recovers_without_losing_frames() {
    let topo = Topology::new("fl", false).unwrap();
    let mut fwd = start(&topo);
    assert!(topo.ping(&topo.client, IpAddr::V4(SERVER_V4), 2));

    // A steady UDP stream (1 datagram per ms) across the flap.
    let stop = Arc::new(AtomicBool::new(false));
    let sender = in_netns(&topo.client, || {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.connect(SocketAddr::new(IpAddr::V4(SERVER_V4), 9))?;
        Ok::<_, std::io::Error>(s)
    })
    .unwrap()
    .unwrap();
    let traffic = {
        let stop = stop.clone();
        thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let _ = sender.send(b"flap");
                thread::sleep(Duration::from_millis(1));
            }
        })
    };
    thread::sleep(Duration::from_millis(300));
    // The forwarder's own egress goes down (flushing its neighbours and the routes through
    // it) and comes back; the server's side keeps its routes.
    sh(&["ip", "-n", &topo.fwd, "link", "set", &topo.f1, "down"]).unwrap();
    thread::sleep(Duration::from_secs(1));
    sh(&["ip", "-n", &topo.fwd, "link", "set", &topo.f1, "up"]).unwrap();
    assert!(ping_within(&topo, Duration::from_secs(10)), "forwarding resumes after the flap");
    stop.store(true, Ordering::Relaxed);
    traffic.join().unwrap();

    let done = fwd.stop().unwrap();
    assert!(done.success, "{done:?}");
    let (total, free, fill, tx, held) = frame_accounting(&done.stdout).unwrap();
    assert_eq!(total, free + fill + tx + held, "no frame lost from the pool: {}", done.stdout);
    assert_eq!(report_value(&done.stdout, "ownership violations"), Some(0));
}

#[test]
fn a_deleted_managed_interface_stops_xdpfwd_cleanly() {
    let topo = Topology::new("dl", false).unwrap();
    let mut fwd = start(&topo);
    sh(&["ip", "-n", &topo.fwd, "link", "del", &topo.f1]).unwrap();
    // Signal 0 only waits for the exit.
    let done = fwd.stop_with(0).unwrap();
    assert!(!done.success, "a deleted interface is an error: {done:?}");
    assert!(
        done.stderr.contains(&format!("managed interface '{}' was deleted", topo.f1)),
        "{}",
        done.stderr
    );
    assert!(done.stdout.contains("final: forwarded"), "final counters printed");
    assert!(!topo.xdp_attached(), "nothing left attached on the remaining interface");
}

#[test]
fn an_mtu_raised_beyond_the_af_xdp_path_is_reported_and_forwarding_goes_on() {
    let topo = Topology::new("mt", false).unwrap();
    let mut fwd = start(&topo);
    assert!(topo.ping(&topo.client, IpAddr::V4(SERVER_V4), 1));
    // Beyond 16 UMEM frames of the multi-buffer sockets (61,412 bytes of frame).
    let raised = sh(&["ip", "-n", &topo.fwd, "link", "set", &topo.f1, "mtu", "65000"]);
    thread::sleep(Duration::from_millis(700));
    assert!(topo.ping(&topo.client, IpAddr::V4(SERVER_V4), 2), "ordinary traffic still forwarded");
    let done = fwd.stop().unwrap();
    assert!(done.success);
    match raised {
        Err(err) => eprintln!("the kernel refused the MTU itself: {err}"),
        Ok(_) => assert!(
            done.stderr.contains("MTU raised: frames longer than 61412 bytes"),
            "reported: {}",
            done.stderr
        ),
    }
}
