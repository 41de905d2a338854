//! Netfilter rules on forwarded traffic: xdpfwd bypasses every hook, so with
//! `netfilter = "defer"` (the default) the kernel forwards, and filters, a family's transit
//! traffic while nftables or iptables hooks see it; xdpfwd takes over again when they go.
//! With `"warn"` xdpfwd forwards past them and says so.

use std::{net::IpAddr, time::Duration};

use xdpfwd_tests::{
    Forwarder, SERVER_V4, SERVER_V6, Topology, ns_sh, run_to_exit, stats_json, wait_for,
    xdp_counter,
};

/// Runs `nft CMD` in `ns`.
fn nft(ns: &str, cmd: &str) {
    ns_sh(ns, &["nft", cmd]).unwrap();
}

/// A forward-hook chain that drops forwarded IPv4 to the server (IPv6 passes it).
fn drop_v4_to_server(ns: &str) {
    nft(ns, "add table inet nfx");
    nft(ns, "add chain inet nfx fwdchain { type filter hook forward priority 0; policy accept; }");
    nft(ns, &format!("add rule inet nfx fwdchain ip daddr {SERVER_V4} drop"));
}

#[test]
fn forward_rules_keep_transit_with_the_kernel_while_they_exist() {
    let topo = Topology::new("nf", true).unwrap();
    // Resolved next hops: nothing but the deferral keeps xdpfwd from forwarding.
    topo.static_neighbours().unwrap();
    drop_v4_to_server(&topo.fwd);
    let mut fwd =
        Forwarder::start(&topo.fwd, &[&topo.f0, &topo.f1, "--stats-interval", "0"]).unwrap();
    assert!(
        !topo.ping(&topo.client, IpAddr::V4(SERVER_V4), 3),
        "the router's forward rule drops these pings; xdpfwd must not forward them"
    );
    assert!(topo.ping(&topo.client, IpAddr::V6(SERVER_V6), 3), "the kernel forwards IPv6");
    let doc = stats_json(&topo.fwd);
    let stats = &doc["stats"];
    assert!(stats["xdp"]["pass_netfilter"].as_u64().unwrap() >= 6, "{stats}");
    assert_eq!(stats["xdp"]["steered"].as_u64(), Some(0), "{stats}");
    let notice = stats["notices"]["netfilter"].as_str().unwrap_or_default();
    assert!(notice.contains("inet nfx/fwdchain (forward)"), "stats say why: {stats}");

    // The rules go: xdpfwd forwards again, without a restart.
    nft(&topo.fwd, "delete table inet nfx");
    assert!(wait_for(Duration::from_secs(5), || {
        topo.ping(&topo.client, IpAddr::V4(SERVER_V4), 1)
            && stats_json(&topo.fwd)["stats"]["xdp"]["steered"].as_u64() > Some(0)
    }));
    assert!(stats_json(&topo.fwd)["stats"]["notices"].get("netfilter").is_none());
    // And come back.
    drop_v4_to_server(&topo.fwd);
    std::thread::sleep(Duration::from_secs(2));
    assert!(!topo.ping(&topo.client, IpAddr::V4(SERVER_V4), 3), "new rules are honoured");
    let doc = stats_json(&topo.fwd);
    assert_eq!(doc["stats"]["fallbacks"]["netfilter"].as_u64(), Some(2), "begun twice: {doc}");
    assert!(doc["paths"]["kernel"].as_u64() >= Some(9), "pings left to the kernel: {doc}");
    assert!(doc["paths"]["af_xdp"].as_u64() > Some(0), "{doc}");
    let done = fwd.stop().unwrap();
    assert!(done.success);
    assert!(done.stderr.contains("netfilter hooks see forwarded traffic"), "{}", done.stderr);
    assert!(xdp_counter(&done.stdout, "pass_netfilter") > 0);
}

#[test]
fn warn_forwards_past_the_rules_and_says_so() {
    let topo = Topology::new("nw", true).unwrap();
    // The kernel would resolve the server's address only for a frame it forwards, and it
    // forwards none past the rule.
    topo.static_neighbours().unwrap();
    drop_v4_to_server(&topo.fwd);
    let path = std::env::temp_dir().join(format!("{}-netfilter.toml", topo.prefix));
    let text = format!(
        "[defaults]\nnetfilter = \"warn\"\n[[interface]]\nname = \"{}\"\n[[interface]]\nname = \"{}\"\n",
        topo.f0, topo.f1
    );
    std::fs::write(&path, text).unwrap();
    let config = path.to_str().unwrap();
    let mut fwd =
        Forwarder::start(&topo.fwd, &["--config", config, "--stats-interval", "0"]).unwrap();
    assert!(topo.ping(&topo.client, IpAddr::V4(SERVER_V4), 3), "xdpfwd bypasses the rule");
    let notice = stats_json(&topo.fwd)["stats"]["notices"]["netfilter"].clone();
    assert!(notice.as_str().is_some_and(|n| n.contains("bypasses")), "{notice}");
    let done = fwd.stop().unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(done.stderr.contains("xdpfwd bypasses them"), "{}", done.stderr);
    let bad = run_to_exit(&topo.fwd, &[], &["check", "--config", "/dev/null"]).unwrap();
    assert!(bad.success, "an empty file is a valid configuration: {bad:?}");
}
