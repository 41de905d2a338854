//! `cargo xtask demo`: a client and a server namespace joined through a forwarder namespace
//! where xdpfwd runs, kernel forwarding off; ping and UDP streams (IPv4 and IPv6) through it
//! and the forwarder's counters, twice: with its default path (`auto`, here the in-kernel
//! fast path, with the reason) and with the AF_XDP path forced; then a configuration file
//! with a static route and NAT rewrites (TCP to a virtual address reaches the server); then
//! FRR: routes learned over BGP on two links, installed as a nexthop group and forwarded by
//! xdpfwd with ECMP; and everything removed afterwards.

use std::{
    net::{IpAddr, UdpSocket},
    path::Path,
    thread,
    time::Duration,
};

use anyhow::Context as _;
use xdpfwd_tests::{
    CLIENT_V4, CLIENT_V6, Forwarder, SERVER_V4, SERVER_V6, Topology, daemons::Frr, in_netns, ns_sh,
    sh, wait_for, xdp_counter, xdpfwd_took,
};

pub fn run(bin: &Path) -> anyhow::Result<()> {
    // SAFETY: single-threaded at this point; the variable is read by the Forwarder helper.
    unsafe { std::env::set_var("XDPFWD_BIN", bin) };
    let topo = Topology::new("d", false).context("creating the demo topology")?;
    println!("== topology (kernel forwarding OFF in the forwarder namespace)");
    println!("   {} [{} 198.18.1.2 2001:2:0:1::2]", topo.client, topo.c0);
    println!("     <-> [{} 198.18.1.1 | {} 198.18.2.1] {} (xdpfwd)", topo.f0, topo.f1, topo.fwd);
    println!("     <-> [{} 198.18.2.2 2001:2:0:2::2] {}", topo.s0, topo.server);

    // GRO on the client's and server's ends: their veths then take redirected frames, so
    // the default (`auto`) takes the in-kernel fast path out of both forwarder interfaces.
    topo.enable_gro()?;
    forward(&topo, "the default path (auto)", &[])?;
    forward(&topo, "the AF_XDP path forced", &["--default-path", "af-xdp"])?;

    policy(&topo)?;
    if let Err(err) = frr(&topo) {
        println!("   the FRR act failed: {err:#}");
    }
    println!("== removing the namespaces");
    drop(topo);
    Ok(())
}

/// The first act: xdpfwd with `args`, pings and UDP streams through it, its counters.
fn forward(topo: &Topology, label: &str, args: &[&str]) -> anyhow::Result<()> {
    let mut all = vec![topo.f0.as_str(), &topo.f1, "--stats-interval", "1"];
    all.extend_from_slice(args);
    println!("== xdpfwd run {}: {label}", all.join(" "));
    let mut fwd = Forwarder::start(&topo.fwd, &all)?;
    println!("== {}", fwd.ready_line);
    let stats = ns_sh(&topo.fwd, &[&fwd_bin(), "stats", "--count", "1"]).unwrap_or_default();
    for line in stats.lines().filter(|l| l.trim_start().starts_with("out of:")) {
        println!("   {}", line.trim());
    }
    for (from, to, label) in [
        (&topo.client, IpAddr::V4(SERVER_V4), "client -> server IPv4"),
        (&topo.client, IpAddr::V6(SERVER_V6), "client -> server IPv6"),
        (&topo.server, IpAddr::V4(CLIENT_V4), "server -> client IPv4"),
        (&topo.server, IpAddr::V6(CLIENT_V6), "server -> client IPv6"),
    ] {
        let ok = topo.ping(from, to, 5);
        println!("== ping {label}: {}", if ok { "5/5 replies" } else { "FAILED" });
    }
    for (server, label) in [(IpAddr::V4(SERVER_V4), "IPv4"), (IpAddr::V6(SERVER_V6), "IPv6")] {
        udp_stream(topo, server, label)?;
    }
    let done = fwd.stop()?;
    println!("== xdpfwd stopped (exit {:?}); its counters:", done.code);
    print!("{}", done.stdout);
    Ok(())
}

/// An iperf3 UDP stream from the client to `server`, its summary printed.
fn udp_stream(topo: &Topology, server: IpAddr, label: &str) -> anyhow::Result<()> {
    println!("== UDP stream {label}: iperf3 -u -b 200M -t 3 -l 1200 -w 4M, client -> server");
    let server = server.to_string();
    // A receive buffer that absorbs the server's scheduling hiccups on a small VM.
    let args =
        ["-c", &server, "-p", "5201", "-u", "-b", "200M", "-t", "3", "-l", "1200", "-w", "4M"];
    iperf3(topo, "5201", &args)
}

/// Runs iperf3 from the client to a one-shot server; prints its summary lines.
fn iperf3(topo: &Topology, port: &str, args: &[&str]) -> anyhow::Result<()> {
    match xdpfwd_tests::traffic::iperf3(topo, port, args) {
        Ok(text) => {
            for line in text.lines().filter(|l| l.contains("sender") || l.contains("receiver")) {
                println!("   {}", line.trim());
            }
        }
        Err(err) => println!("   iperf3 failed: {err}"),
    }
    Ok(())
}

/// The xdpfwd binary the demo runs.
fn fwd_bin() -> String {
    xdpfwd_tests::xdpfwd_bin().to_string_lossy().into_owned()
}

/// The second act: a configuration file with a static route and stateless NAT.
fn policy(topo: &Topology) -> anyhow::Result<()> {
    ns_sh(&topo.server, &["ip", "addr", "add", "198.19.7.1/32", "dev", &topo.s0])?;
    let config = std::env::temp_dir().join(format!("{}-demo.toml", topo.prefix));
    let text = format!(
        r#"[[interface]]
name = "{f0}"

[[interface]]
name = "{f1}"

# The forwarder's kernel has no route to 198.19.7.0/24: xdpfwd's own static route.
[[route]]
dst = "198.19.7.0/24"
via = "{SERVER_V4}"

# A virtual service address: TCP to 198.18.2.100:80 goes to the server's port 8080.
[[rewrite]]
match = {{ proto = "tcp", dst = "198.18.2.100/32", dst_port = 80 }}
set_dst = "{SERVER_V4}"
set_dst_port = 8080

[[rewrite]]
match = {{ proto = "tcp", src = "{SERVER_V4}/32", src_port = 8080 }}
set_src = "198.18.2.100"
set_src_port = 80
"#,
        f0 = topo.f0,
        f1 = topo.f1
    );
    std::fs::write(&config, &text)?;
    println!("== configuration file {}:", config.display());
    for line in text.lines().filter(|l| !l.is_empty()) {
        println!("   {line}");
    }
    let path = config.to_string_lossy().into_owned();
    let mut fwd = Forwarder::start(&topo.fwd, &["--config", &path, "--stats-interval", "0"])?;
    let ok = topo.ping(&topo.client, "198.19.7.1".parse()?, 3);
    println!(
        "== ping 198.19.7.1 through the static route: {}",
        if ok { "3/3 replies" } else { "FAILED" }
    );
    println!("== TCP through NAT: iperf3 -c 198.18.2.100 -p 80 -t 3 (the server listens on 8080)");
    iperf3(topo, "8080", &["-c", "198.18.2.100", "-p", "80", "-t", "3"])?;
    let done = fwd.stop()?;
    println!("== xdpfwd stopped (exit {:?})", done.code);
    let _ = std::fs::remove_file(config);
    Ok(())
}

/// BGP as the server announces it: 198.19.70.0/24 over both links.
const FRR_SERVER: &str = "frr defaults traditional
!
ip route 198.19.70.0/24 blackhole
!
router bgp 65002
 bgp router-id 198.18.2.2
 no bgp ebgp-requires-policy
 timers bgp 1 3
 coalesce-time 100
 neighbor 198.18.2.1 remote-as 65001
 neighbor 198.18.2.1 timers connect 1
 neighbor 198.18.3.1 remote-as 65001
 neighbor 198.18.3.1 timers connect 1
 address-family ipv4 unicast
  network 198.19.70.0/24
 exit-address-family
!
";

/// BGP as the forwarder learns it, with ECMP over the two sessions.
const FRR_FORWARDER: &str = "frr defaults traditional
!
router bgp 65001
 bgp router-id 198.18.2.1
 no bgp ebgp-requires-policy
 timers bgp 1 3
 coalesce-time 100
 neighbor 198.18.2.2 remote-as 65002
 neighbor 198.18.2.2 timers connect 1
 neighbor 198.18.3.2 remote-as 65002
 neighbor 198.18.3.2 timers connect 1
 address-family ipv4 unicast
  maximum-paths 2
 exit-address-family
!
";

/// The third act: FRR on the forwarder learns 198.19.70.0/24 from the server over BGP on two
/// links and installs it through a nexthop group; xdpfwd forwards it, spreading flows.
fn frr(topo: &Topology) -> anyhow::Result<()> {
    println!(
        "== FRR: BGP over two links, ECMP through a nexthop group, kernel forwarding still OFF"
    );
    let (f2, s2) = topo.second_link()?;
    ns_sh(&topo.server, &["ip", "addr", "add", "198.19.70.1/32", "dev", "lo"])?;
    let _server =
        Frr::start(&topo.server, &topo.server, &["zebra", "staticd", "bgpd"], FRR_SERVER)?;
    let _forwarder = Frr::start(&topo.fwd, &topo.fwd, &["zebra", "bgpd"], FRR_FORWARDER)?;
    let show =
        || sh(&["ip", "-n", &topo.fwd, "route", "show", "198.19.70.0/24"]).unwrap_or_default();
    if !wait_for(Duration::from_secs(20), || show().contains(f2.as_str())) {
        anyhow::bail!("BGP did not converge: {}", show());
    }
    for line in show().lines() {
        println!("   {}", line.trim());
    }
    for policy in ["0", "1"] {
        ns_sh(
            &topo.fwd,
            &["sysctl", "-qw", &format!("net.ipv4.fib_multipath_hash_policy={policy}")],
        )?;
        let mut fwd =
            Forwarder::start(&topo.fwd, &[&topo.f0, &topo.f1, &f2, "--stats-interval", "0"])?;
        if policy == "0" {
            let ok = topo.ping(&topo.client, "198.19.70.1".parse()?, 3);
            println!(
                "== ping 198.19.70.1 (learned over BGP): {}",
                if ok { "3/3 replies" } else { "FAILED" }
            );
        }
        println!(
            "== fib_multipath_hash_policy={policy} ({}): 16 UDP flows x 500 datagrams from the client",
            if policy == "0" {
                "addresses: one client, one path"
            } else {
                "ports too: flows spread"
            }
        );
        let before = [received(topo, &topo.s0), received(topo, &s2)];
        in_netns(&topo.client, || -> std::io::Result<()> {
            let sockets: Vec<UdpSocket> =
                (0..16).map(|_| UdpSocket::bind("198.18.1.2:0")).collect::<Result<_, _>>()?;
            for _ in 0..500 {
                for s in &sockets {
                    s.send_to(&[0x5a; 64], "198.19.70.1:9")?;
                }
                thread::sleep(Duration::from_micros(200));
            }
            Ok(())
        })??;
        thread::sleep(Duration::from_millis(300));
        let done = fwd.stop()?;
        let after = [received(topo, &topo.s0), received(topo, &s2)];
        println!(
            "   arrived at the server: {} over the link of {}, {} over the link of {f2}; \
             xdpfwd forwarded {} (fast path {}, AF_XDP path {})",
            after[0].saturating_sub(before[0]),
            topo.f1,
            after[1].saturating_sub(before[1]),
            xdpfwd_took(&done.stdout),
            xdp_counter(&done.stdout, "fast_forwarded"),
            xdp_counter(&done.stdout, "steered"),
        );
    }
    println!("== stopping FRR");
    Ok(())
}

/// Packets `dev` in the server's namespace has received (BGP's own included).
fn received(topo: &Topology, dev: &str) -> u64 {
    let path = format!("/sys/class/net/{dev}/statistics/rx_packets");
    ns_sh(&topo.server, &["cat", &path]).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}
