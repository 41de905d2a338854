//! A change after which the kernel forwards a frame no longer (a forward chain that drops
//! it, a strict `rp_filter` against its source) stops xdpfwd from forwarding it within
//! milliseconds: the kernel reports the change (nftables, netconf notifications) and xdpfwd
//! reads the hooks and sysctls again at once, instead of at its next poll (every 0.5 s).
//!
//! The client sends a frame every millisecond while the change is made, with the kernel's
//! forwarding on (the reference); no frame sent [`SLACK`] after the change may reach the
//! server.

use std::{
    net::Ipv4Addr,
    thread,
    time::{Duration, Instant},
};

use xdpfwd_tests::{
    Forwarder, SERVER_V4, Topology, in_netns, ns_sh, packet::RawSocket, routed::frame, stats_json,
};

/// Frames sent per measurement, one a millisecond.
const SENDS: u16 = 400;
/// When the change is made, after the first frame.
const CHANGE_AT: Duration = Duration::from_millis(150);
/// How long after a change xdpfwd may still forward what the kernel no longer would: room
/// for a busy machine (measured here: nothing sent after the command that made the change
/// returned; its poll alone took up to 500 ms).
const SLACK: Duration = Duration::from_millis(100);
/// Source ports count the frames from here.
const FIRST_PORT: u16 = 20_000;

/// What arrived around a change.
struct Around {
    /// Frames sent before the change began, and how many of them arrived.
    sent_before: usize,
    arrived_before: usize,
    /// Frames that arrived though sent [`SLACK`] or more after the change was made: how
    /// long after, in ms.
    late: Vec<u128>,
    /// The last frame sent after the change that arrived: how long after, in µs.
    last_after: Option<u128>,
}

/// Sends [`SENDS`] UDP frames from `src` to the server, one a millisecond, makes `change`
/// [`CHANGE_AT`] after the first, and sees which arrive.
fn around(topo: &Topology, src: Ipv4Addr, change: impl FnOnce()) -> Around {
    let (c0, s0) = (topo.c0.clone(), topo.s0.clone());
    let sender = in_netns(&topo.client, move || RawSocket::open(&c0)).unwrap().unwrap();
    let receiver = in_netns(&topo.server, move || RawSocket::open(&s0)).unwrap().unwrap();
    let (c_mac, f_mac) =
        (topo.mac(&topo.client, &topo.c0).unwrap(), topo.mac(&topo.fwd, &topo.f0).unwrap());
    let until = Instant::now() + Duration::from_millis(u64::from(SENDS) * 2 + 500);
    let receiving = thread::spawn(move || {
        let mut seqs = Vec::new();
        while Instant::now() < until {
            if let Some(seq) =
                receiver.recv_incoming(Duration::from_millis(50)).and_then(|f| seq(&f))
            {
                seqs.push(seq);
            }
        }
        seqs
    });
    let sending = thread::spawn(move || {
        let mut times = Vec::with_capacity(SENDS as usize);
        for i in 0..SENDS {
            let f = frame(c_mac, f_mac, (src, SERVER_V4), false, (FIRST_PORT + i, 9), 32);
            times.push(Instant::now());
            sender.send(&f).unwrap();
            thread::sleep(Duration::from_millis(1));
        }
        times
    });
    thread::sleep(CHANGE_AT);
    let began = Instant::now();
    change();
    let made = Instant::now();
    let times = sending.join().unwrap();
    let seqs = receiving.join().unwrap();
    let sent_before = times.iter().filter(|t| **t < began).count();
    let arrived_before = seqs.iter().filter(|s| times[**s] < began).count();
    let after: Vec<Duration> =
        seqs.iter().filter_map(|s| times[*s].checked_duration_since(made)).collect();
    let late = after.iter().filter(|a| **a >= SLACK).map(|a| a.as_millis()).collect();
    let last_after = after.iter().max().map(|a| a.as_micros());
    Around { sent_before, arrived_before, late, last_after }
}

/// The frame's number, if it is one of [`around`]'s.
fn seq(f: &[u8]) -> Option<usize> {
    let ipv4_udp = f.len() >= 38 && f[12..14] == [0x08, 0x00] && f[23] == 17;
    let port = ipv4_udp.then(|| u16::from_be_bytes([f[34], f[35]]))?;
    (FIRST_PORT..FIRST_PORT + SENDS).contains(&port).then(|| usize::from(port - FIRST_PORT))
}

/// The forwarder's topology with the kernel's forwarding on and resolved next hops, and
/// xdpfwd running on it.
fn start(tag: &str) -> (Topology, Forwarder) {
    let topo = Topology::new(tag, true).unwrap();
    topo.static_neighbours().unwrap();
    let fwd = Forwarder::start(&topo.fwd, &[&topo.f0, &topo.f1, "--stats-interval", "0"]).unwrap();
    (topo, fwd)
}

fn check(what: &str, a: &Around, topo: &Topology) {
    eprintln!("{what}: the last frame forwarded was sent {:?} µs after the change", a.last_after);
    assert!(
        a.arrived_before * 2 > a.sent_before,
        "{what}: before the change frames went through ({} of {})",
        a.arrived_before,
        a.sent_before
    );
    assert!(
        a.late.is_empty(),
        "{what}: {} frames sent after the change still forwarded, sent this many ms after it: \
         {:?}",
        a.late.len(),
        a.late
    );
    let paths = stats_json(&topo.fwd)["paths"].clone();
    let forwarded = paths["af_xdp"].as_u64().unwrap_or(0) + paths["fast"].as_u64().unwrap_or(0);
    assert!(forwarded >= a.arrived_before as u64 / 2, "{what}: xdpfwd forwarded them: {paths}");
}

#[test]
fn a_forward_chain_stops_xdpfwd_within_milliseconds() {
    let (topo, mut fwd) = start("wn");
    let rules = std::env::temp_dir().join(format!("{}-drop.nft", topo.prefix));
    std::fs::write(
        &rules,
        format!(
            "table inet nfx {{\n  chain fwdchain {{\n    type filter hook forward priority 0; policy \
             accept;\n    ip daddr {SERVER_V4} drop\n  }}\n}}\n"
        ),
    )
    .unwrap();
    let a = around(&topo, Ipv4Addr::new(198, 18, 1, 2), || {
        ns_sh(&topo.fwd, &["nft", "-f", rules.to_str().unwrap()]).unwrap();
    });
    let _ = std::fs::remove_file(&rules);
    check("nftables", &a, &topo);
    let done = fwd.stop().unwrap();
    assert!(done.success, "{}{}", done.stdout, done.stderr);
}

#[test]
fn a_strict_rp_filter_stops_spoofed_sources_within_milliseconds() {
    let (topo, mut fwd) = start("wr");
    let sysctl = |key: &str, v: u8| {
        ns_sh(&topo.fwd, &["sysctl", "-qw", &format!("net.ipv4.conf.{key}.rp_filter={v}")])
            .unwrap();
    };
    sysctl("all", 0);
    sysctl(&topo.f0, 0);
    thread::sleep(Duration::from_millis(600));
    // A source on the server's side: the route back to it leaves through f1, not f0, so a
    // strict check drops what claims it on f0.
    let a = around(&topo, Ipv4Addr::new(198, 18, 2, 77), || sysctl(&topo.f0, 1));
    check("rp_filter", &a, &topo);
    let done = fwd.stop().unwrap();
    assert!(done.success, "{}{}", done.stdout, done.stderr);
}
