//! `xdpfwd capture`: what it writes is what crossed the forwarder, byte for byte, on both
//! paths; drops and frames left to the kernel carry their reason; a tcpdump filter selects;
//! a capture killed leaves the data path as it was.

use std::{net::Ipv4Addr, time::Duration};

use xdpfwd_tests::{
    Forwarder, Topology,
    capture::{Captured, Capturing},
    in_netns, mirror,
    packet::{RawSocket, fix_ipv4_checksum},
    routed::frame,
    wait_for,
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 2);

/// UDP frames to the server's port `dport`, of growing sizes.
fn frames(topo: &Topology, n: u16, dport: u16) -> Vec<Vec<u8>> {
    let c_mac = topo.mac(&topo.client, &topo.c0).unwrap();
    let f_mac = topo.mac(&topo.fwd, &topo.f0).unwrap();
    (0..n)
        .map(|i| {
            frame(c_mac, f_mac, (CLIENT, SERVER), false, (5000 + i, dport), 20 + 70 * i as usize)
        })
        .collect()
}

fn to_port(dport: u16) -> impl Fn(&Vec<u8>) -> bool {
    move |f| f.len() >= 38 && f[12..14] == [8, 0] && f[23] == 17 && f[36..38] == dport.to_be_bytes()
}

fn sorted(mut frames: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    frames.sort();
    frames
}

fn seen(got: &[Captured], iface: &str, flags: u32) -> Vec<Vec<u8>> {
    got.iter().filter(|c| c.iface == iface && c.flags == flags).map(|c| c.data.clone()).collect()
}

#[test]
fn captured_frames_are_those_sent_and_received_on_both_paths() {
    for path in ["af-xdp", "fast"] {
        let topo = Topology::new("cp", true).unwrap();
        topo.static_neighbours().unwrap();
        topo.enable_gro().unwrap();
        let mut fwd =
            Forwarder::start(&topo.fwd, &[&topo.f0, &topo.f1, "--default-path", path]).unwrap();
        let (c0, s0) = (topo.c0.clone(), topo.s0.clone());
        let sender = in_netns(&topo.client, move || RawSocket::open(&c0)).unwrap().unwrap();
        let sink = in_netns(&topo.server, move || RawSocket::open(&s0)).unwrap().unwrap();
        let mut capture = Capturing::start(&topo.fwd, &["udp", "port", "7000"]).unwrap();
        let switch = mirror::capture_switch(&topo.fwd, &topo.f0).unwrap();
        assert_eq!(switch.ifaces, 2, "both watched");
        assert!(switch.filter_len > 0, "the filter runs in the XDP program: {switch:?}");

        let sent = frames(&topo, 20, 7000);
        // Not selected by the filter: forwarded, never captured.
        let other = frames(&topo, 3, 7001);
        for f in sent.iter().chain(&other) {
            sender.send(f).unwrap();
        }
        let received: Vec<_> = sink
            .drain(Duration::from_millis(500), 1000)
            .into_iter()
            .filter(to_port(7000))
            .collect();
        assert_eq!(received.len(), sent.len(), "{path}: every frame forwarded");
        // The capture reads its rings every few milliseconds.
        std::thread::sleep(Duration::from_millis(300));
        let got = capture.stop().unwrap();

        assert_eq!(sorted(seen(&got, &topo.f0, 1)), sorted(sent.clone()), "{path}: in = sent");
        assert_eq!(sorted(seen(&got, &topo.f1, 2)), sorted(received), "{path}: out = received");
        assert_eq!(got.len(), 2 * sent.len(), "{path}: nothing else: {got:?}");
        let how = if path == "fast" { "out, fast path" } else { "out, AF_XDP path" };
        assert!(got.iter().filter(|c| c.flags == 2).all(|c| c.comment.ends_with(how)), "{got:?}");
        assert!(got.iter().all(|c| c.original_len as usize == c.data.len()));

        let off = || mirror::capture_switch(&topo.fwd, &topo.f0).unwrap() == Default::default();
        assert!(wait_for(Duration::from_secs(2), off), "{path}: the switch stays on");
        // Killed, the capture leaves the program and the workers as they were.
        let mut killed = Capturing::start(&topo.fwd, &["--interface", &topo.f1]).unwrap();
        let switch = mirror::capture_switch(&topo.fwd, &topo.f0).unwrap();
        assert_eq!((switch.ifaces, switch.filter_len), (1, 0), "f1 only, no filter");
        killed.kill().unwrap();
        assert!(
            wait_for(Duration::from_secs(2), off),
            "{path}: the capture switch stays on after the capture was killed: {:?}",
            mirror::capture_switch(&topo.fwd, &topo.f0)
        );
        let done = fwd.stop().unwrap();
        assert!(done.success, "{done:?}");
        // Switching a capture on and off writes the program's maps without a failure.
        assert!(!done.stderr.contains("capture: CAPTURE"), "{}", done.stderr);
    }
}

#[test]
fn frames_not_forwarded_are_captured_with_their_reason_and_a_filter_selects() {
    let topo = Topology::new("cd", true).unwrap();
    topo.static_neighbours().unwrap();
    let mut fwd = Forwarder::start(&topo.fwd, &[&topo.f0, &topo.f1]).unwrap();
    let c0 = topo.c0.clone();
    let sender = in_netns(&topo.client, move || RawSocket::open(&c0)).unwrap().unwrap();
    let mut capture =
        Capturing::start(&topo.fwd, &["--drops", "--count", "2", "udp", "port", "7000"]).unwrap();

    let mut expired = frames(&topo, 1, 7000).remove(0);
    expired[22] = 1;
    fix_ipv4_checksum(&mut expired);
    let mut martian = frames(&topo, 1, 7000).remove(0);
    martian[26..30].copy_from_slice(&[127, 0, 0, 1]);
    fix_ipv4_checksum(&mut martian);
    let mut other = expired.clone();
    other[36..38].copy_from_slice(&7001u16.to_be_bytes());
    fix_ipv4_checksum(&mut other);
    // Forwarded, and to another port: neither is captured.
    let plain = frames(&topo, 1, 7000).remove(0);
    for f in [&plain, &other, &expired, &martian] {
        sender.send(f).unwrap();
    }
    let got = capture.wait(Duration::from_secs(5)).unwrap();
    let reasons: Vec<(&str, &str)> =
        got.iter().map(|c| (c.iface.as_str(), c.comment.as_str())).collect();
    assert_eq!(
        reasons,
        [
            (topo.f0.as_str(), "xdpfwd: to the kernel: pass_ttl"),
            (topo.f0.as_str(), "xdpfwd: to the kernel: pass_special_addr"),
        ],
        "{got:?}"
    );
    assert_eq!(got[0].data, expired);
    assert_eq!(got[1].data, martian);

    // Standard output into tcpdump, as an operator pipes it.
    let bin = xdpfwd_tests::xdpfwd_bin();
    let pipeline =
        format!("{} capture -w - --drops -c 1 udp 2>/dev/null | tcpdump -nr - 2>&1", bin.display());
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", &topo.fwd, "sh", "-c", &pipeline])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The capture starts at some point: send until it has its frame (bounded).
    for _ in 0..50 {
        sender.send(&expired).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        if child.try_wait().unwrap().is_some() {
            break;
        }
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("IP 198.18.1.2.5000 > 198.18.2.2.7000"), "tcpdump read: {text}");
    assert!(fwd.stop().unwrap().success);
}

#[test]
fn frames_a_worker_drops_are_captured_with_its_reason() {
    // Kernel forwarding off: xdpfwd holds frames for a neighbour that never answers.
    let topo = Topology::new("ch", false).unwrap();
    let mut fwd = Forwarder::start(&topo.fwd, &[&topo.f0, &topo.f1]).unwrap();
    let c0 = topo.c0.clone();
    let sender = in_netns(&topo.client, move || RawSocket::open(&c0)).unwrap().unwrap();
    let mut capture = Capturing::start(&topo.fwd, &["--drops", "-c", "1", "udp"]).unwrap();
    let c_mac = topo.mac(&topo.client, &topo.c0).unwrap();
    let f_mac = topo.mac(&topo.fwd, &topo.f0).unwrap();
    let nobody = Ipv4Addr::new(198, 18, 2, 99);
    let held = frame(c_mac, f_mac, (CLIENT, nobody), false, (5000, 7000), 30);
    sender.send(&held).unwrap();
    // Held for 3 s, then dropped.
    let got = capture.wait(Duration::from_secs(8)).unwrap();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].comment, "xdpfwd: dropped: held_dropped");
    assert_eq!(got[0].iface, topo.f1, "seen on the egress that waited");
    assert_eq!(got[0].data, held, "as it arrived: a held frame is rewritten only when sent");
    assert!(fwd.stop().unwrap().success);
}

#[test]
fn a_capture_names_what_it_cannot_do() {
    let topo = Topology::new("ce", false).unwrap();
    let none = xdpfwd_tests::run_to_exit(&topo.fwd, &[], &["capture", "-w", "/dev/null"]).unwrap();
    assert!(!none.success && none.stderr.contains("no xdpfwd"), "{none:?}");
    let mut fwd = Forwarder::start(&topo.fwd, &[&topo.f0, &topo.f1]).unwrap();
    for (args, says) in [
        (&["capture", "-w", "/dev/null", "--interface", "eth9"][..], "eth9 is not an interface"),
        (&["capture", "-w", "/dev/null", "udp", "prot", "7"], "filter expression"),
        (&["capture", "-w", "/dev/null", "--direction", "none"], "captures nothing"),
        (&["capture", "-w", "/dev/null", "--snaplen", "0"], "--snaplen 0"),
    ] {
        let out = xdpfwd_tests::run_to_exit(&topo.fwd, &[], args).unwrap();
        assert!(!out.success && out.stderr.contains(says), "{args:?}: {out:?}");
    }
    // Another user may not watch the traffic.
    let nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"];
    let reachable = std::process::Command::new(nobody[0])
        .args(&nobody[1..])
        .arg(xdpfwd_tests::xdpfwd_bin())
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if reachable {
        let args = ["capture", "-w", "/dev/null"];
        let out = xdpfwd_tests::run_to_exit(&topo.fwd, &nobody, &args).unwrap();
        assert!(!out.success && out.stderr.contains("permission denied"), "{out:?}");
    } else {
        eprintln!("skipped the other user: the binary is not executable by uid 65534 here");
    }
    assert_eq!(mirror::capture_switch(&topo.fwd, &topo.f0).unwrap(), Default::default());
    assert!(fwd.stop().unwrap().success);
}

#[test]
fn two_captures_at_once_each_get_what_they_asked_for() {
    let topo = Topology::new("c2", true).unwrap();
    topo.static_neighbours().unwrap();
    let mut fwd = Forwarder::start(&topo.fwd, &[&topo.f0, &topo.f1]).unwrap();
    let (c0, s0) = (topo.c0.clone(), topo.s0.clone());
    let sender = in_netns(&topo.client, move || RawSocket::open(&c0)).unwrap().unwrap();
    let sink = in_netns(&topo.server, move || RawSocket::open(&s0)).unwrap().unwrap();
    let mut arriving =
        Capturing::start(&topo.fwd, &["-i", &topo.f0, "--direction", "in", "udp", "port", "7000"])
            .unwrap();
    let mut leaving =
        Capturing::start(&topo.fwd, &["-i", &topo.f1, "--direction", "out", "-s", "40"]).unwrap();
    let switch = mirror::capture_switch(&topo.fwd, &topo.f0).unwrap();
    assert_eq!((switch.ifaces, switch.filter_len), (2, 0), "no filter both share: {switch:?}");

    let sent = frames(&topo, 10, 7000);
    let other = frames(&topo, 4, 7001);
    for f in sent.iter().chain(&other) {
        sender.send(f).unwrap();
    }
    let received = sink.drain(Duration::from_millis(500), 1000);
    std::thread::sleep(Duration::from_millis(300));
    let arrived = arriving.stop().unwrap();
    let left = leaving.stop().unwrap();
    assert_eq!(sorted(seen(&arrived, &topo.f0, 1)), sorted(sent), "in on f0, port 7000 only");
    assert_eq!(arrived.len(), 10, "{arrived:?}");
    let forwarded: Vec<_> =
        received.iter().filter(|f| to_port(7000)(f) || to_port(7001)(f)).collect();
    assert_eq!(forwarded.len(), 14);
    let cut: Vec<Vec<u8>> = forwarded.iter().map(|f| f[..40].to_vec()).collect();
    let left_ours: Vec<Vec<u8>> = seen(&left, &topo.f1, 2)
        .into_iter()
        .filter(|f| f.len() == 40 && f[12..14] == [8, 0] && f[30..34] == SERVER.octets())
        .collect();
    assert_eq!(sorted(left_ours), sorted(cut), "out on f1, cut to 40 bytes");
    assert!(left.iter().all(|c| c.iface == topo.f1 && c.flags == 2), "{left:?}");
    assert!(fwd.stop().unwrap().success);
}
