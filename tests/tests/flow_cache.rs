//! The XDP program's flow cache (`--flow-cache`): a flow's decision is reused for its next
//! frames, and no longer once anything it was made from changes. With the kernel's
//! forwarding off, so that every frame delivered is one xdpfwd forwarded: after each change
//! (route, neighbour, steering rules), every flow follows the new state, on both paths.

use std::{net::Ipv4Addr, path::PathBuf, thread, time::Duration};

use nix::{
    sched::{CpuSet, sched_setaffinity},
    unistd::Pid,
};
use xdpfwd_tests::{
    Forwarder, Topology, fmt_mac,
    generator::{Generator, Sink, client_to_server},
    in_netns, ns_sh,
    packet::RawSocket,
    routed::{Capture, assert_forwarding_off, frame, ip, neighbours},
    run_to_exit, stats_json, wait_for,
};

/// The routed destination of these tests.
const DST: Ipv4Addr = Ipv4Addr::new(198, 19, 5, 9);
/// Flows sent each time, and frames per flow.
const FLOWS: u16 = 16;
const PER_FLOW: usize = 20;

/// The routed topology with the kernel's forwarding off, both server links taking
/// redirected frames (GRO), permanent neighbours, and 198.19.5.0/24 routed through s0.
fn setup(tag: &str) -> (Topology, String, String) {
    let topo = Topology::new(tag, false).unwrap();
    topo.enable_gro().unwrap();
    let (f2, s2) = topo.second_link().unwrap();
    ns_sh(&topo.server, &["ethtool", "-K", &s2, "gro", "on"]).unwrap();
    neighbours(&topo, &f2, &s2);
    ip(&topo, &format!("route add 198.19.5.0/24 via 198.18.2.2 dev {}", topo.f1));
    assert_forwarding_off(&topo);
    (topo, f2, s2)
}

/// Sends `FLOWS` UDP flows (one source address and port each), `PER_FLOW` frames each, to
/// [`DST`]; returns what arrived on s0 and on s2. From CPU 0: the XDP program runs on the
/// sender's CPU, so every send meets the same per-CPU cache.
fn send(topo: &Topology, capture: &Capture) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut cpu0 = CpuSet::new();
    cpu0.set(0).unwrap();
    sched_setaffinity(Pid::from_raw(0), &cpu0).unwrap();
    let c0 = topo.c0.clone();
    let sender = in_netns(&topo.client, move || RawSocket::open(&c0)).unwrap().unwrap();
    let c_mac = topo.mac(&topo.client, &topo.c0).unwrap();
    let f_mac = topo.mac(&topo.fwd, &topo.f0).unwrap();
    for _ in 0..PER_FLOW {
        for flow in 0..FLOWS {
            let src = Ipv4Addr::new(198, 18, 1, 10 + flow as u8);
            let f = frame(c_mac, f_mac, (src, DST), false, (10_000 + flow, 9000), 64);
            sender.send(&f).unwrap();
        }
        thread::sleep(Duration::from_millis(2));
    }
    capture.take()
}

/// The flow cache's figures as `xdpfwd stats --json` reports them.
fn cache(topo: &Topology) -> (u64, u64, u64) {
    let c = stats_json(&topo.fwd)["stats"]["flow_cache"].clone();
    let n = |k: &str| c[k].as_u64().unwrap_or(0);
    (n("slots"), n("hits"), n("fills"))
}

/// Lets the control plane see a change made a moment ago.
fn settle() {
    thread::sleep(Duration::from_millis(300));
}

const ALL: usize = FLOWS as usize * PER_FLOW;

#[test]
fn cached_flows_follow_route_and_neighbour_changes_on_both_paths() {
    for (tag, path) in [("cf", "fast"), ("ca", "af-xdp")] {
        let (topo, f2, s2) = setup(tag);
        let args = [&topo.f0, &topo.f1, &f2, "--default-path", path, "--stats-interval", "0"];
        let mut fwd = Forwarder::start(&topo.fwd, &args).unwrap();
        let capture = Capture::open(&topo, &s2);

        let (a, b) = send(&topo, &capture);
        assert_eq!((a.len(), b.len()), (ALL, 0), "{path}: every frame out of f1");
        let (slots, hits, fills) = cache(&topo);
        assert_eq!(slots, 8192, "{path}: the default size");
        // Every flow misses once per generation; the control plane starts one at least every
        // 0.5 s, so most frames hit.
        assert!(hits >= ALL as u64 / 2 && fills >= FLOWS as u64, "{path}: {hits} {fills}");

        ip(&topo, &format!("route replace 198.19.5.0/24 via 198.18.3.2 dev {f2}"));
        settle();
        let (a, b) = send(&topo, &capture);
        assert_eq!((a.len(), b.len()), (0, ALL), "{path}: every flow follows the new route");

        // The next hop's MAC changes: every frame is addressed to the new one.
        let new_mac = [0x02, 0, 0, 0, 0x5e, 0x99];
        topo.permanent_neighbour("198.18.3.2", &fmt_mac(new_mac), &f2).unwrap();
        settle();
        let (a, b) = send(&topo, &capture);
        assert_eq!((a.len(), b.len()), (0, ALL), "{path}");
        assert!(b.iter().all(|f| f[0..6] == new_mac), "{path}: to the new MAC");

        // Through s0 again, then no route at all: nothing is forwarded.
        ip(&topo, &format!("route replace 198.19.5.0/24 via 198.18.2.2 dev {}", topo.f1));
        settle();
        assert_eq!(send(&topo, &capture).0.len(), ALL, "{path}: back out of f1");
        ip(&topo, "route del 198.19.5.0/24");
        settle();
        let (a, b) = send(&topo, &capture);
        assert_eq!((a.len(), b.len()), (0, 0), "{path}: no route, nothing forwarded");

        let done = fwd.stop().unwrap();
        assert!(done.success, "{}{}", done.stdout, done.stderr);
        assert!(done.stdout.contains("flow cache: hits "), "{}", done.stdout);
    }
}

fn write_config(topo: &Topology, f2: &str, action: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("{}-cache.toml", topo.prefix));
    let text = format!(
        "[[interface]]\nname = \"{}\"\n\n[[interface]]\nname = \"{}\"\n\n\
         [[interface]]\nname = \"{f2}\"\n\n\
         [[rule]]\nname = \"to-5\"\ndst = \"198.19.5.0/24\"\naction = \"{action}\"\n",
        topo.f0, topo.f1
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// A steering rule counts every frame it matches, also those whose decision came from the
/// cache; a reload that changes the rule applies to cached flows at once.
#[test]
fn rules_count_cached_frames_and_a_reload_applies_to_cached_flows() {
    let (topo, f2, s2) = setup("cr");
    let config = write_config(&topo, &f2, "forward");
    let args = ["--config", config.to_str().unwrap(), "--stats-interval", "0"];
    let mut fwd = Forwarder::start(&topo.fwd, &args).unwrap();
    let capture = Capture::open(&topo, &s2);
    let (a, _) = send(&topo, &capture);
    assert_eq!(a.len(), ALL);
    let stats = stats_json(&topo.fwd)["stats"].clone();
    assert_eq!(stats["rules"][0]["hits"], ALL as u64, "{stats}");
    assert!(stats["flow_cache"]["hits"].as_u64().unwrap() >= ALL as u64 / 2, "{stats}");

    write_config(&topo, &f2, "kernel");
    let reload = run_to_exit(&topo.fwd, &[], &["reload"]).unwrap();
    assert!(reload.success, "{reload:?}");
    settle();
    let (a, b) = send(&topo, &capture);
    assert_eq!((a.len(), b.len()), (0, 0), "the kernel's now, and it does not forward");
    let stats = stats_json(&topo.fwd)["stats"].clone();
    assert_eq!(stats["rules"][0]["hits"], ALL as u64, "{stats}");
    assert!(stats["xdp"]["pass_rule"].as_u64().unwrap() >= ALL as u64, "{stats}");
    let done = fwd.stop().unwrap();
    assert!(done.success, "{}{}", done.stdout, done.stderr);
    let _ = std::fs::remove_file(config);
}

#[test]
fn the_flow_cache_is_sized_or_turned_off_by_flag() {
    let (topo, f2, s2) = setup("cz");
    let refused =
        run_to_exit(&topo.fwd, &[], &["run", &topo.f0, &topo.f1, "--flow-cache", "3000"]).unwrap();
    assert!(!refused.success);
    assert!(
        refused.stderr.contains("--flow-cache must be 0 (off) or a power of two"),
        "{}",
        refused.stderr
    );
    for (slots, want) in [("0", 0), ("1024", 1024)] {
        let args = [&topo.f0, &topo.f1, &f2, "--flow-cache", slots, "--stats-interval", "0"];
        let mut fwd = Forwarder::start(&topo.fwd, &args).unwrap();
        let capture = Capture::open(&topo, &s2);
        assert_eq!(send(&topo, &capture).0.len(), ALL, "--flow-cache {slots}");
        let (size, hits, fills) = cache(&topo);
        assert_eq!(size, want);
        if want == 0 {
            assert_eq!((hits, fills), (0, 0), "off: no hit, no fill");
        } else {
            assert!(hits > 0);
        }
        let done = fwd.stop().unwrap();
        assert!(done.success, "{}{}", done.stdout, done.stderr);
        if want == 0 {
            assert!(done.stdout.contains("flow cache: off"), "{}", done.stdout);
        }
    }
}

/// A flood of new flows (65,536 of them, 8 per slot of the default 8192: every frame
/// misses) suspends the cache, which then only costs; frames go on through the full path;
/// ordinary traffic (8 flows) gets it back at the next retry and keeps it.
#[test]
fn a_flood_of_new_flows_suspends_the_cache_and_ordinary_traffic_gets_it_back() {
    let topo = Topology::new("cg", false).unwrap();
    topo.static_neighbours().unwrap();
    let sink = Sink::attach(&topo.server, &topo.s0).unwrap();
    let args = [topo.f0.as_str(), &topo.f1, "--stats-interval", "0", "--default-path", "fast"];
    let mut fwd = Forwarder::start(&topo.fwd, &args).unwrap();
    let frame = client_to_server(&topo, 60).unwrap();
    let figures = || stats_json(&topo.fwd)["stats"]["flow_cache"].clone();

    let flood = Generator::start(&topo.client, &topo.c0, frame.clone(), 65_536, 0, None).unwrap();
    let suspended = wait_for(Duration::from_secs(5), || figures()["suspended"] == true);
    let before = sink.count().unwrap().0;
    thread::sleep(Duration::from_millis(300));
    let during = sink.count().unwrap().0 - before;
    flood.stop().unwrap();
    assert!(suspended, "the flood suspends the cache: {}", figures());
    assert!(during > 10_000, "frames go on while it is suspended: {during}");

    let steady = Generator::start(&topo.client, &topo.c0, frame, 8, 0, None).unwrap();
    let back = wait_for(Duration::from_secs(10), || figures()["suspended"] == false);
    let resumed = figures();
    thread::sleep(Duration::from_secs(2));
    let after = figures();
    steady.stop().unwrap();
    assert!(back, "a few flows get the cache back: {resumed}");
    assert_eq!(after["suspensions"], resumed["suspensions"], "and keep it: {after}");
    let hits = |f: &serde_json::Value| f["hits"].as_u64().unwrap_or(0);
    assert!(hits(&after) > hits(&resumed) + 100_000, "{resumed} {after}");

    let done = fwd.stop().unwrap();
    assert!(done.success, "{}{}", done.stdout, done.stderr);
    let times = after["suspensions"].as_u64().unwrap_or(0);
    assert!(times >= 1, "{after}");
    assert!(done.stdout.contains(&format!("suspended {times} times")), "{}", done.stdout);
    assert!(done.stderr.contains("flow cache suspended"), "{}", done.stderr);
}

/// A firewall that updates a set's elements many times a second (no chain changes, so
/// nothing for xdpfwd to defer to) does not empty the cache: such notifications start no
/// generation (each would make every flow miss once).
#[test]
fn set_updates_of_a_busy_firewall_keep_the_cache() {
    let topo = Topology::new("cs", false).unwrap();
    topo.static_neighbours().unwrap();
    let _sink = Sink::attach(&topo.server, &topo.s0).unwrap();
    let args = [topo.f0.as_str(), &topo.f1, "--stats-interval", "0", "--default-path", "fast"];
    let mut fwd = Forwarder::start(&topo.fwd, &args).unwrap();
    ns_sh(&topo.fwd, &["nft", "add table inet fw"]).unwrap();
    ns_sh(&topo.fwd, &["nft", "add set inet fw blocked { type ipv4_addr; }"]).unwrap();
    let steady =
        Generator::start(&topo.client, &topo.c0, client_to_server(&topo, 60).unwrap(), 8, 0, None)
            .unwrap();
    thread::sleep(Duration::from_millis(500));
    let (_, hits_before, fills_before) = cache(&topo);
    const UPDATES: u32 = 100;
    for i in 0..UPDATES {
        let element =
            format!("add element inet fw blocked {{ 198.19.{}.{} }}", i / 200, i % 200 + 1);
        ns_sh(&topo.fwd, &["nft", &element]).unwrap();
    }
    let (_, hits, fills) = cache(&topo);
    steady.stop().unwrap();
    // 8 flows, each missing once per generation: two generations per update would make 1600
    // fills; the control plane's own (a few a second) a few dozen.
    assert!(fills - fills_before < 400, "{} fills for {UPDATES} set updates", fills - fills_before);
    assert!(hits > hits_before + 100_000, "{hits_before} {hits}");
    let done = fwd.stop().unwrap();
    assert!(done.success, "{}{}", done.stdout, done.stderr);
}
