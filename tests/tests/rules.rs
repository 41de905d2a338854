//! Steering rules from the configuration file: each action, the match fields, first-match
//! order and the default for unmatched traffic; then a reload under a continuous stream.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use xdpfwd_tests::{
    FWD_V4_A, FWD_V6_A, Forwarder, SERVER_V4, SERVER_V6, Topology, in_netns, run_to_exit,
    stats_json, xdp_counter,
};

fn write_config(topo: &Topology, name: &str, body: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("{}-{name}.toml", topo.prefix));
    let text = format!(
        "[[interface]]\nname = \"{}\"\n\n[[interface]]\nname = \"{}\"\n\n{body}",
        topo.f0, topo.f1
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// A UDP socket bound in `ns` (the receiver, with a short timeout).
fn bind(ns: &str, addr: SocketAddr) -> UdpSocket {
    let s = in_netns(ns, move || UdpSocket::bind(addr)).unwrap().unwrap();
    s.set_read_timeout(Some(Duration::from_millis(400))).unwrap();
    s
}

/// Sends one datagram from the client (source port `sport`) to the server's `dport`; true
/// when it arrives.
fn delivered(topo: &Topology, dst: IpAddr, sport: u16, dport: u16) -> bool {
    delivered_in(topo, &topo.server, dst, sport, dport)
}

/// As [`delivered`], to a receiver in namespace `to_ns`.
fn delivered_in(topo: &Topology, to_ns: &str, dst: IpAddr, sport: u16, dport: u16) -> bool {
    let any = if dst.is_ipv4() { "0.0.0.0" } else { "::" };
    let rx = bind(to_ns, SocketAddr::new(any.parse().unwrap(), dport));
    let tx = in_netns(&topo.client, move || {
        UdpSocket::bind(SocketAddr::new(any.parse().unwrap(), sport))
    })
    .unwrap()
    .unwrap();
    tx.send_to(b"rule test", SocketAddr::new(dst, dport)).unwrap();
    let mut buf = [0u8; 64];
    rx.recv(&mut buf).is_ok()
}

#[test]
fn rules_actions_matches_order_and_default() {
    let topo = Topology::new("ru", false).unwrap();
    topo.enable_gro().unwrap();
    let config = write_config(
        &topo,
        "rules",
        &format!(
            r#"[defaults]
unmatched = "drop"
path = "fast"

[[rule]]
proto = "udp"
dst_port = 9001
action = "drop"

[[rule]]
proto = "udp"
dst_port = "9000-9002"
action = "forward"

[[rule]]
proto = "udp"
dst_port = 9003
action = "kernel"

[[rule]]
proto = "udp"
dst_port = 9004
action = "fast"

[[rule]]
proto = "udp"
dst_port = 9005
action = "af_xdp"

[[rule]]
in = "{f0}"
proto = "udp"
src_port = 5555
action = "forward"

[[rule]]
src = "2001:2:0:1::/64"
dst = "2001:2:0:2::/64"
action = "forward"

[[rule]]
src = "2001:2:0:2::/64"
dst = "2001:2:0:1::/64"
action = "forward"

[[rule]]
proto = "icmp"
action = "forward"
"#,
            f0 = topo.f0
        ),
    );
    let check =
        run_to_exit(&topo.fwd, &[], &["check", "--config", &config.to_string_lossy()]).unwrap();
    assert!(check.success, "{check:?}");
    let mut fwd = Forwarder::start(
        &topo.fwd,
        &["--config", &config.to_string_lossy(), "--stats-interval", "0"],
    )
    .unwrap();
    let paths = format!("paths {} fast, {} fast", topo.f0, topo.f1);
    assert!(fwd.ready_line.contains(&paths), "the config's path: {}", fwd.ready_line);
    let v4 = IpAddr::V4(SERVER_V4);
    assert!(topo.ping(&topo.client, v4, 2), "icmp rule");
    assert!(topo.ping(&topo.client, IpAddr::V6(SERVER_V6), 2), "IPv6 prefix rules");
    assert!(delivered(&topo, v4, 4000, 9000), "forward");
    assert!(!delivered(&topo, v4, 4000, 9001), "drop comes first");
    assert!(delivered(&topo, v4, 4000, 9002), "forward range");
    assert!(!delivered(&topo, v4, 4000, 9003), "kernel (its forwarding is off)");
    assert!(delivered(&topo, v4, 4000, 9004), "fast");
    // Everything else takes the fast path (`path = "fast"`); this rule's frames AF_XDP.
    let steered = || stats_json(&topo.fwd)["stats"]["xdp"]["steered"].as_u64().unwrap_or(0);
    let before = steered();
    assert!(delivered(&topo, v4, 4000, 9005), "af_xdp");
    assert_eq!(steered(), before + 1, "the af_xdp rule's datagram went to the AF_XDP path");
    let before = steered();
    assert!(delivered(&topo, v4, 4000, 9000), "forward");
    assert_eq!(steered(), before, "plain forwarding took the configured fast path");
    assert!(delivered(&topo, v4, 5555, 9100), "in + src_port");
    assert!(!delivered(&topo, v4, 4001, 9100), "unmatched: drop");
    assert!(delivered(&topo, IpAddr::V6(SERVER_V6), 4000, 9100), "IPv6 prefixes, any protocol");
    // Rules are for transit traffic: the router's own addresses stay reachable (SSH, BGP).
    for own in [IpAddr::V4(FWD_V4_A), IpAddr::V6(FWD_V6_A)] {
        assert!(delivered_in(&topo, &topo.fwd, own, 4001, 9100), "unmatched, to the router: {own}");
    }
    let done = fwd.stop().unwrap();
    assert!(done.success, "{done:?}");
    let out = &done.stdout;
    assert!(xdp_counter(out, "drop_rule") >= 2, "{out}");
    assert!(xdp_counter(out, "pass_rule") >= 1, "{out}");
    assert!(xdp_counter(out, "fast_forwarded") >= 1, "{out}");
    let _ = std::fs::remove_file(config);
}

/// Every rule and rewrite counts the frames it matched, labelled with its `name`, in `xdpfwd
/// stats` (text and JSON) and metrics; a reload starts the new configuration's counts at zero.
#[test]
fn rules_and_rewrites_count_their_hits_and_a_reload_starts_them_again() {
    let topo = Topology::new("rh", false).unwrap();
    topo.enable_gro().unwrap();
    let body = r#"[[rule]]
name = "drop-9001"
proto = "udp"
dst_port = 9001
action = "drop"

[[rule]]
proto = "udp"
action = "forward"

[[rewrite]]
name = "to-9000"
match = { proto = "udp", dst_port = 9005 }
set_dst_port = 9000
"#;
    let config = write_config(&topo, "hits", body);
    let mut fwd = Forwarder::start(
        &topo.fwd,
        &["--config", &config.to_string_lossy(), "--stats-interval", "0"],
    )
    .unwrap();
    let v4 = IpAddr::V4(SERVER_V4);
    for _ in 0..3 {
        assert!(!delivered(&topo, v4, 4000, 9001), "dropped by rule 0");
    }
    for _ in 0..2 {
        assert!(delivered(&topo, v4, 4000, 9002), "forwarded by rule 1");
    }
    assert!(delivered(&topo, v4, 4000, 9000), "rule 1");
    // Rule 1 forwards it and the rewrite sends it to port 9000 (where nobody listens here).
    let _ = delivered(&topo, v4, 4000, 9005);
    let stats = |topo: &Topology| {
        let out = run_to_exit(&topo.fwd, &[], &["stats", "--json", "--count", "1"]).unwrap();
        assert!(out.success, "{out:?}");
        let doc: serde_json::Value =
            serde_json::from_str(out.stdout.lines().next().unwrap()).unwrap();
        doc["stats"].clone()
    };
    let s = stats(&topo);
    assert_eq!(s["rules"][0]["name"], "drop-9001", "{s}");
    assert_eq!(s["rules"][0]["hits"], 3, "{s}");
    assert!(s["rules"][1]["name"].is_null(), "{s}");
    assert_eq!(s["rules"][1]["hits"], 4, "{s}");
    assert_eq!(s["rewrites"][0]["name"], "to-9000", "{s}");
    assert_eq!(s["rewrites"][0]["hits"], 1, "{s}");

    // A reload: the new rules count from zero.
    std::fs::write(&config, std::fs::read_to_string(&config).unwrap().replace("9001", "9003"))
        .unwrap();
    let reload = run_to_exit(&topo.fwd, &[], &["reload"]).unwrap();
    assert!(reload.success, "{reload:?}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(delivered(&topo, v4, 4000, 9001), "9001 is forwarded now");
    let s = stats(&topo);
    assert_eq!(s["rules"][0]["hits"], 0, "{s}");
    assert_eq!(s["rules"][1]["hits"], 1, "{s}");
    let done = fwd.stop().unwrap();
    assert!(done.success, "{done:?}");
    assert!(done.stdout.contains("rule hits: 0 (drop-9003) 0, 1 1"), "{}", done.stdout);
    let _ = std::fs::remove_file(config);
}

#[test]
fn reload_under_a_stream_takes_effect_atomically_and_an_invalid_file_changes_nothing() {
    let topo = Topology::new("rl", false).unwrap();
    let rules = |drop_port: u16| {
        format!("[[rule]]\nproto = \"udp\"\ndst_port = {drop_port}\naction = \"drop\"\n")
    };
    let config = write_config(&topo, "reload", &rules(9002));
    let mut fwd = Forwarder::start(
        &topo.fwd,
        &["--config", &config.to_string_lossy(), "--stats-interval", "0"],
    )
    .unwrap();
    let v4 = IpAddr::V4(SERVER_V4);
    assert!(topo.ping(&topo.client, v4, 1));
    assert!(!delivered(&topo, v4, 4000, 9002), "dropped before the reload");

    // A continuous stream to 9001 (1 datagram per ms) across the reload.
    let rx = bind(&topo.server, "0.0.0.0:9001".parse().unwrap());
    let size: libc::c_int = 8 << 20;
    // SAFETY: valid c_int option for the duration of the call.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&rx),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&raw const size).cast(),
            4,
        )
    };
    let tx = in_netns(&topo.client, || UdpSocket::bind("0.0.0.0:0")).unwrap().unwrap();
    let sender = thread::spawn(move || {
        let mut n = 0u32;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(3) {
            tx.send_to(&n.to_be_bytes(), (SERVER_V4, 9001)).unwrap();
            n += 1;
            thread::sleep(Duration::from_millis(1));
        }
        n
    });
    thread::sleep(Duration::from_millis(1000));
    std::fs::write(&config, std::fs::read_to_string(&config).unwrap().replace("9002", "9003"))
        .unwrap();
    let reload = run_to_exit(&topo.fwd, &[], &["reload"]).unwrap();
    assert!(reload.success && reload.stdout.contains("SIGHUP"), "{reload:?}");
    let sent = sender.join().unwrap();
    let mut seen = std::collections::HashSet::new();
    let mut buf = [0u8; 16];
    while let Ok(n) = rx.recv(&mut buf) {
        if n == 4 {
            seen.insert(u32::from_be_bytes(buf[..4].try_into().unwrap()));
        }
    }
    assert_eq!(seen.len() as u32, sent, "no datagram lost across the reload");
    assert!(delivered(&topo, v4, 4000, 9002), "the changed rule took effect");
    assert!(!delivered(&topo, v4, 4000, 9003), "the new rule drops");

    // An invalid file is refused; the running rules stay.
    std::fs::write(&config, "[[rule]]\naction = \"teleport\"\n").unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(fwd.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    thread::sleep(Duration::from_millis(300));
    assert!(delivered(&topo, v4, 4000, 9002), "still forwarded");
    assert!(!delivered(&topo, v4, 4000, 9003), "still dropped");
    let done = fwd.stop().unwrap();
    assert!(done.success);
    assert!(done.stderr.contains("reload refused"), "{}", done.stderr);
    assert!(done.stderr.contains("rule[0].action"), "the refusal names the field: {}", done.stderr);
    assert!(
        xdp_total(&done.stdout) >= u64::from(sent),
        "counters continue across reloads: {}",
        done.stdout
    );
    let _ = std::fs::remove_file(config);
}

/// Frames steered over the whole run (counters are never reset by a reload).
fn xdp_total(stdout: &str) -> u64 {
    xdp_counter(stdout, "steered")
}
