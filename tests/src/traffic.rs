//! Traffic for the tests: numbered UDP streams checked datagram by datagram and frame by frame;
//! iperf3 between the end namespaces.

use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr, UdpSocket},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crate::{
    Topology, in_netns, ns_sh,
    packet::{RawSocket, checksum},
};

/// Sends `count` numbered datagrams from `from_ns` to `dst` and checks that every one arrives
/// intact, and that captured frames carry the router's rewrite.
pub fn udp_stream(
    topo: &Topology,
    from_ns: &str,
    to_ns: &str,
    to_dev: &str,
    egress_dev: &str,
    dst: IpAddr,
    count: u64,
) {
    const PORT: u16 = 9000;
    const LEN: usize = 64;
    let payload = |seq: u64| -> [u8; LEN] {
        let mut p = [0u8; LEN];
        p[..8].copy_from_slice(&seq.to_be_bytes());
        for (i, b) in p[8..].iter_mut().enumerate() {
            *b = (seq as u8).wrapping_mul(31).wrapping_add(i as u8);
        }
        p
    };
    let bind: SocketAddr = match dst {
        IpAddr::V4(_) => "0.0.0.0:9000".parse().unwrap(),
        IpAddr::V6(_) => "[::]:9000".parse().unwrap(),
    };
    let receiver = in_netns(to_ns, move || UdpSocket::bind(bind)).unwrap().unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&receiver);
    let size: libc::c_int = 64 << 20;
    // SAFETY: valid c_int option for the call's duration.
    unsafe {
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, (&raw const size).cast(), 4)
    };
    receiver.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let dev = to_dev.to_owned();
    let capture = in_netns(to_ns, move || RawSocket::open(&dev)).unwrap().unwrap();
    let sender = in_netns(from_ns, move || {
        let s = UdpSocket::bind(if dst.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
        s.connect(SocketAddr::new(dst, PORT))?;
        Ok::<_, std::io::Error>(s)
    })
    .unwrap()
    .unwrap();

    let done = Arc::new(AtomicBool::new(false));
    let recv_thread = {
        let done = done.clone();
        thread::spawn(move || {
            let mut seen = HashSet::new();
            let mut bad = 0u64;
            let mut buf = [0u8; 2048];
            let deadline = Instant::now() + Duration::from_secs(60);
            while (seen.len() as u64) < count && Instant::now() < deadline {
                match receiver.recv(&mut buf) {
                    Ok(n) => {
                        let seq = u64::from_be_bytes(buf[..8].try_into().unwrap());
                        if n != LEN || buf[..n] != payload(seq) {
                            bad += 1;
                        }
                        seen.insert(seq);
                    }
                    Err(_) if done.load(Ordering::Relaxed) => {
                        // Sender finished and nothing for 200 ms: what is missing is lost.
                        break;
                    }
                    Err(_) => {}
                }
            }
            (seen.len() as u64, bad)
        })
    };
    let start = Instant::now();
    for seq in 0..count {
        sender.send(&payload(seq)).unwrap();
        if seq % 64 == 63 {
            // About 30k datagrams/s: well within what the forwarder sustains on veth.
            while start.elapsed() < Duration::from_micros(seq * 33) {
                std::hint::spin_loop();
            }
        }
    }
    done.store(true, Ordering::Relaxed);
    let (received, bad) = recv_thread.join().unwrap();
    assert_eq!(bad, 0, "corrupted datagrams");
    assert_eq!(received, count, "datagrams lost {from_ns} -> {dst}");

    // Frames at the receiver: MACs of the forwarder's egress and the receiver, TTL / hop limit
    // decremented, checksums valid, payload unchanged.
    let rx_mac = topo.mac(to_ns, to_dev).unwrap();
    let fwd_mac = topo.mac(&topo.fwd, egress_dev).unwrap();
    let mut checked = 0;
    while let Some(frame) = capture.recv_incoming(Duration::from_millis(300)) {
        let Some(udp) = udp_payload_offset(&frame, dst) else { continue };
        assert_eq!(&frame[0..6], &rx_mac, "destination MAC = receiver");
        assert_eq!(&frame[6..12], &fwd_mac, "source MAC = forwarder egress");
        match dst {
            IpAddr::V4(_) => {
                assert_eq!(frame[22], 63, "TTL decremented");
                assert_eq!(checksum(&frame[14..34]), 0, "IPv4 header checksum");
            }
            IpAddr::V6(_) => assert_eq!(frame[21], 63, "hop limit decremented"),
        }
        assert!(l4_checksum_ok(&frame, dst.is_ipv4()), "UDP checksum");
        let seq = u64::from_be_bytes(frame[udp..udp + 8].try_into().unwrap());
        assert_eq!(&frame[udp..udp + LEN], &payload(seq), "payload unchanged");
        assert_eq!(frame.len(), udp + LEN, "no trailing bytes");
        checked += 1;
        if checked == 2000 {
            break;
        }
    }
    assert!(checked >= 100, "captured {checked} frames");
}

/// Offset of the UDP payload when `frame` is a UDP datagram to port 9000 for `dst`.
pub fn udp_payload_offset(frame: &[u8], dst: IpAddr) -> Option<usize> {
    match dst {
        IpAddr::V4(d) => (frame.len() >= 42
            && frame[12..14] == [8, 0]
            && frame[23] == 17
            && frame[30..34] == d.octets()
            && frame[36..38] == 9000u16.to_be_bytes())
        .then_some(42),
        IpAddr::V6(d) => (frame.len() >= 62
            && frame[12..14] == [0x86, 0xdd]
            && frame[20] == 17
            && frame[38..54] == d.octets()
            && frame[56..58] == 9000u16.to_be_bytes())
        .then_some(62),
    }
}

/// Verifies the TCP/UDP checksum (pseudo-header included) of an untagged frame.
pub fn l4_checksum_ok(frame: &[u8], v4: bool) -> bool {
    let mut pseudo = Vec::new();
    let (l4, proto) = if v4 {
        let ihl = usize::from(frame[14] & 0xf) * 4;
        let total = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
        pseudo.extend_from_slice(&frame[26..34]);
        pseudo.extend_from_slice(&[0, frame[23]]);
        pseudo.extend_from_slice(&((total - ihl) as u16).to_be_bytes());
        (&frame[14 + ihl..14 + total], frame[23])
    } else {
        let len = usize::from(u16::from_be_bytes([frame[18], frame[19]]));
        pseudo.extend_from_slice(&frame[22..54]);
        pseudo.extend_from_slice(&(len as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, frame[20]]);
        (&frame[54..54 + len], frame[20])
    };
    let _ = proto;
    pseudo.extend_from_slice(l4);
    checksum(&pseudo) == 0
}

/// Runs `iperf3 ARGS` in the client namespace against a one-shot `iperf3 -s -1 -p PORT` in
/// the server namespace (stopped afterwards whatever happens); the client's report. ARGS name
/// the port the client connects to (NAT may map it to `port`).
pub fn iperf3(topo: &Topology, port: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut server = Command::new("ip")
        .args(["netns", "exec", &topo.server, "iperf3", "-s", "-1", "-p", port])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    // Until it listens (a fixed pause was not always enough on a loaded machine).
    let filter = format!("sport = :{port}");
    let listening = crate::wait_for(Duration::from_secs(5), || {
        ns_sh(&topo.server, &["ss", "-Hltn", &filter]).is_ok_and(|out| !out.trim().is_empty())
    });
    if !listening {
        let _ = server.kill();
        let _ = server.wait();
        anyhow::bail!("iperf3 -s -p {port} did not listen within 5 s");
    }
    let mut all = vec!["iperf3"];
    all.extend_from_slice(args);
    let report = ns_sh(&topo.client, &all);
    let _ = server.kill();
    let _ = server.wait();
    report
}

/// The receiver's goodput in an iperf3 report (`-f g`): its last "receiver" line (the sum with
/// several streams), in Gbit/s.
pub fn gbits(report: &str) -> Option<f64> {
    let line = report.lines().rfind(|l| l.contains("receiver"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "Gbits/sec")?;
    words.get(at.checked_sub(1)?)?.parse().ok()
}
