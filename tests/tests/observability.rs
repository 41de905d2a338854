//! What an operator sees: `xdpfwd stats` (text and JSON), the Prometheus endpoint (validated
//! by a real OpenMetrics parser), and xdpfwd running as an unprivileged user with only the
//! capabilities it needs.

use std::{
    io::{Read, Write},
    net::{IpAddr, TcpStream},
    process::Command,
};

use xdpfwd_tests::{Forwarder, SERVER_V4, SERVER_V6, Topology, in_netns, run_to_exit, xdpfwd_bin};

#[test]
fn stats_shows_the_running_forwarder_as_text_and_json() {
    let topo = Topology::new("st", false).unwrap();
    let none = run_to_exit(&topo.fwd, &[], &["stats", "--count", "1"]).unwrap();
    assert!(!none.success && none.stderr.contains("no xdpfwd runs"), "{none:?}");

    let mut fwd =
        Forwarder::start(&topo.fwd, &[&topo.f0, &topo.f1, "--stats-interval", "0"]).unwrap();
    assert!(topo.ping(&topo.client, IpAddr::V4(SERVER_V4), 3));
    let json = run_to_exit(&topo.fwd, &[], &["stats", "--json", "--count", "1"]).unwrap();
    assert!(json.success, "{json:?}");
    let doc: serde_json::Value = serde_json::from_str(json.stdout.lines().next().unwrap()).unwrap();
    assert_eq!(doc["pid"].as_u64(), Some(u64::from(fwd.pid())));
    let stats = &doc["stats"];
    assert_eq!(stats["xsk_mode"], "copy");
    let steered = stats["xdp"]["steered"].as_u64().unwrap()
        + stats["xdp"]["steered_neigh_miss"].as_u64().unwrap();
    assert!(steered >= 6, "3 echo requests and replies steered: {stats}");
    assert!(stats["ports"].as_array().unwrap().iter().any(|p| p["iface"] == topo.f0.as_str()));
    assert!(stats["frames"]["total"].as_u64().unwrap() > 0);

    let text =
        run_to_exit(&topo.fwd, &[], &["stats", "--count", "2", "--interval", "0.2"]).unwrap();
    assert!(text.success, "{text:?}");
    for expect in ["frames: total", "xdp:", "kernel: rx_dropped", "copy mode", "forwarded"] {
        assert!(text.stdout.contains(expect), "stats text lacks {expect:?}: {}", text.stdout);
    }
    assert!(fwd.stop().unwrap().success);
}

/// Fetches `http://127.0.0.1:port/metrics` from inside `ns`.
fn scrape(ns: &str, port: u16) -> String {
    in_netns(ns, move || {
        let mut conn = TcpStream::connect(("127.0.0.1", port))?;
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
        let mut response = String::new();
        conn.read_to_string(&mut response)?;
        Ok::<_, std::io::Error>(response)
    })
    .unwrap()
    .unwrap()
}

#[test]
fn metrics_endpoint_serves_valid_openmetrics() {
    let topo = Topology::new("pm", false).unwrap();
    let mut fwd = Forwarder::start(
        &topo.fwd,
        &[&topo.f0, &topo.f1, "--stats-interval", "0", "--metrics", "19100"],
    )
    .unwrap();
    assert!(topo.ping(&topo.client, IpAddr::V6(SERVER_V6), 3));
    let response = scrape(&topo.fwd, 19100);
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("application/openmetrics-text"), "{head}");
    for expect in [
        "xdpfwd_build_info{",
        "xdpfwd_rx_packets_total{iface=",
        "xdpfwd_rx_bytes_total{",
        "xdpfwd_drops_total{",
        "xdpfwd_xsk_kernel_events_total{",
        "xdpfwd_xdp_verdicts_total{reason=\"steered\"}",
        "xdpfwd_umem_frames{state=\"total\"}",
        "xdpfwd_uptime_seconds",
        "# EOF",
    ] {
        assert!(body.contains(expect), "metrics lack {expect:?}:\n{body}");
    }
    // A real parser: the Prometheus project's Python client, OpenMetrics mode.
    let file = std::env::temp_dir().join(format!("{}-metrics.txt", topo.prefix));
    std::fs::write(&file, body).unwrap();
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as parse\n\
             fams = list(parse(open(sys.argv[1]).read()))\nprint(len(fams))",
        ])
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    assert!(out.status.success(), "OpenMetrics parser: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).trim().parse::<u32>().unwrap() >= 10);
    let not_found = {
        let ns = topo.fwd.clone();
        in_netns(&ns, || {
            let mut conn = TcpStream::connect(("127.0.0.1", 19100))?;
            conn.write_all(b"GET / HTTP/1.1\r\n\r\n")?;
            let mut r = String::new();
            conn.read_to_string(&mut r)?;
            Ok::<_, std::io::Error>(r)
        })
        .unwrap()
        .unwrap()
    };
    assert!(not_found.starts_with("HTTP/1.1 404"), "{not_found}");
    assert!(fwd.stop().unwrap().success);
}

const CAPS: &str = "net_admin,+net_raw,+bpf,+perfmon,+ipc_lock";

fn setpriv(caps: &str) -> Vec<String> {
    let set = format!("-all,+{caps}");
    vec![
        "setpriv".into(),
        "--reuid=65534".into(),
        "--regid=65534".into(),
        "--clear-groups".into(),
        format!("--inh-caps={set}"),
        format!("--ambient-caps={set}"),
        format!("--bounding-set={set}"),
        "--".into(),
    ]
}

#[test]
fn runs_as_an_unprivileged_user_with_only_its_capabilities() {
    let topo = Topology::new("lp", false).unwrap();
    // The binary must be reachable by the unprivileged user.
    let bin = xdpfwd_bin();
    let readable = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !readable {
        eprintln!("skipped: {} is not executable by an unprivileged user here", bin.display());
        return;
    }
    let wrapper = setpriv(CAPS);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let mut fwd = Forwarder::start_wrapped(
        &topo.fwd,
        &wrapper,
        &[&topo.f0, &topo.f1, "--stats-interval", "0"],
    )
    .unwrap();
    assert!(topo.ping(&topo.client, IpAddr::V4(SERVER_V4), 3), "forwards without root");
    let done = fwd.stop().unwrap();
    assert!(done.success, "{done:?}");
    assert!(xdpfwd_tests::forwarded_packets(&done.stdout).unwrap() >= 6);

    // One capability fewer: refused, naming it.
    let wrapper = setpriv("net_admin,+net_raw,+perfmon,+ipc_lock");
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let refused = run_to_exit(&topo.fwd, &wrapper, &["run", &topo.f0, &topo.f1]).unwrap();
    assert!(!refused.success);
    assert!(refused.stderr.contains("CAP_BPF"), "{}", refused.stderr);
    assert!(!topo.xdp_attached());
}
