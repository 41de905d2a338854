//! What an operator sees: `xdpfwd stats` (text and JSON), the Prometheus endpoint (validated
//! by a real OpenMetrics parser), and xdpfwd running as an unprivileged user with only the
//! capabilities it needs.

use std::{
    io::{Read, Write},
    net::{IpAddr, TcpStream},
    process::Command,
    time::Duration,
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
    assert_eq!(stats["xsk_max_frame"], 61412, "multi-buffer sockets");
    let steered = stats["xdp"]["steered"].as_u64().unwrap()
        + stats["xdp"]["steered_neigh_miss"].as_u64().unwrap();
    assert!(steered >= 6, "3 echo requests and replies steered: {stats}");
    assert!(stats["ports"].as_array().unwrap().iter().any(|p| p["iface"] == topo.f0.as_str()));
    assert!(stats["frames"]["total"].as_u64().unwrap() > 0);

    let text =
        run_to_exit(&topo.fwd, &[], &["stats", "--count", "2", "--interval", "0.2"]).unwrap();
    assert!(text.success, "{text:?}");
    for expect in [
        "frames: total",
        "xdp:",
        "kernel: rx_dropped",
        "copy mode, frames up to 61412 B",
        "forwarded",
        "paths: fast 0, af_xdp",
    ] {
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
        "xdpfwd_path_frames_total{path=\"af_xdp\"}",
        "xdpfwd_path_frames_total{path=\"kernel\"}",
        "xdpfwd_held_resolved_total{",
        "xdpfwd_umem_frames{state=\"total\"}",
        "xdpfwd_uptime_seconds",
        // Multi-buffer copy-mode sockets: 16 UMEM frames of 4096 bytes less the headroom
        // and the metadata.
        "xdpfwd_af_xdp_max_frame_bytes 61412",
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
    // As systemd's `RuntimeDirectory=` would: the instance's user owns where it serves stats.
    let dir = stats_dir(&topo.fwd);
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
    let wrapper = setpriv(CAPS);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let mut fwd = Forwarder::start_wrapped(
        &topo.fwd,
        &wrapper,
        &[&topo.f0, &topo.f1, "--stats-interval", "0"],
    )
    .unwrap();
    assert!(topo.ping(&topo.client, IpAddr::V4(SERVER_V4), 3), "forwards without root");
    let stats = run_to_exit(&topo.fwd, &[], &["stats", "--json", "--count", "1"]).unwrap();
    assert!(stats.success, "root reads the unprivileged instance's stats: {stats:?}");
    // Root captures from it: the instance opens the program's perf ring with its own
    // capabilities (CAP_PERFMON).
    let mut capture = xdpfwd_tests::capture::Capturing::start(&topo.fwd, &["-c", "4"]).unwrap();
    assert!(topo.ping(&topo.client, IpAddr::V4(SERVER_V4), 1));
    let got = capture.wait(Duration::from_secs(5)).unwrap();
    let dirs: Vec<u32> = got.iter().map(|c| c.flags).collect();
    assert_eq!(
        (dirs.iter().filter(|&&d| d == 1).count(), dirs.iter().filter(|&&d| d == 2).count()),
        (2, 2),
        "the echo request and reply, each in and out: {got:?}"
    );
    let done = fwd.stop().unwrap();
    // The service's runtime directory is its manager's to remove (systemd does).
    let _ = std::fs::remove_dir(&dir);
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

/// The stats directory of namespace `ns`.
fn stats_dir(ns: &str) -> std::path::PathBuf {
    let ino = xdpfwd_tests::ns_sh(ns, &["stat", "-L", "-c", "%i", "/proc/self/ns/net"]).unwrap();
    std::path::Path::new("/run/xdpfwd").join(ino.trim())
}

#[test]
fn stats_and_reload_trust_only_instances_that_answer() {
    let topo = Topology::new("sr", false).unwrap();
    let mut fwd =
        Forwarder::start(&topo.fwd, &[&topo.f0, &topo.f1, "--stats-interval", "0"]).unwrap();
    let dir = stats_dir(&topo.fwd);
    // A bystander whose pid names a socket that never answers, a stray file and a symlink.
    let mut victim = Command::new("sleep").arg("60").spawn().unwrap();
    let silent = dir.join(format!("{}.sock", victim.id()));
    let _listener = std::os::unix::net::UnixListener::bind(&silent).unwrap();
    let stray = dir.join("1.sock");
    std::fs::write(&stray, b"not a socket").unwrap();
    let link = dir.join("2.sock");
    std::os::unix::fs::symlink("/etc/hostname", &link).unwrap();

    let json = run_to_exit(&topo.fwd, &[], &["stats", "--json", "--count", "1"]).unwrap();
    assert!(json.success, "one silent socket does not hide the others: {json:?}");
    let pids: Vec<u64> = json
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["pid"].as_u64().unwrap())
        .collect();
    assert_eq!(pids, [u64::from(fwd.pid())], "{json:?}");
    assert!(json.stderr.contains("does not answer"), "the silent socket is reported: {json:?}");

    let reload = run_to_exit(&topo.fwd, &[], &["reload"]).unwrap();
    assert!(reload.success, "{reload:?}");
    assert!(reload.stdout.contains(&format!("pid {}", fwd.pid())), "{reload:?}");
    assert!(victim.try_wait().unwrap().is_none(), "the pid in a file name was not signalled");
    assert!(stray.exists() && link.exists(), "clients delete nothing");
    let _ = victim.kill();
    let _ = victim.wait();
    for path in [&silent, &stray, &link] {
        let _ = std::fs::remove_file(path);
    }
    let done = fwd.stop().unwrap();
    assert!(done.success);
    assert!(done.stderr.contains("SIGHUP: no --config to reload"), "{}", done.stderr);
}

/// A namespace's directory that an unprivileged instance left behind (it cannot remove it from
/// the root-owned `/run/xdpfwd`, and a later namespace may get the same inode number) is taken
/// over by the next instance once nothing in it answers.
#[test]
fn a_directory_another_users_instance_left_is_taken_over() {
    let topo = Topology::new("tk", false).unwrap();
    let dir = stats_dir(&topo.fwd);
    std::fs::create_dir_all(&dir).unwrap();
    let left = dir.join("99999999.sock");
    drop(std::os::unix::net::UnixListener::bind(&left).unwrap());
    for path in [&dir, &left] {
        std::os::unix::fs::chown(path, Some(65534), Some(65534)).unwrap();
    }
    let mut fwd =
        Forwarder::start(&topo.fwd, &[&topo.f0, &topo.f1, "--stats-interval", "0"]).unwrap();
    let stats = run_to_exit(&topo.fwd, &[], &["stats", "--json", "--count", "1"]).unwrap();
    let done = fwd.stop().unwrap();
    let _ = std::fs::remove_file(&left);
    let _ = std::fs::remove_dir(&dir);
    assert!(stats.success, "the instance took the directory over: {stats:?}\n{}", done.stderr);
    assert!(done.stderr.contains("took over a stats directory"), "{}", done.stderr);
}

#[test]
fn stats_refuses_a_symlinked_directory() {
    let topo = Topology::new("sd", false).unwrap();
    let dir = stats_dir(&topo.fwd);
    std::fs::create_dir_all(&dir).unwrap();
    let target = std::env::temp_dir().join(format!("xdpfwd-sd-{}", std::process::id()));
    std::fs::create_dir_all(&target).unwrap();
    std::fs::remove_dir(&dir).unwrap();
    std::os::unix::fs::symlink(&target, &dir).unwrap();
    let refused = run_to_exit(&topo.fwd, &[], &["stats", "--count", "1"]).unwrap();
    let started = Forwarder::start(&topo.fwd, &[&topo.f0, &topo.f1, "--stats-interval", "0"]);
    let _ = std::fs::remove_file(&dir);
    let _ = std::fs::remove_dir_all(&target);
    assert!(!refused.success && refused.stderr.contains("symlink"), "{refused:?}");
    let mut fwd = started.unwrap();
    let done = fwd.stop().unwrap();
    assert!(done.success, "forwarding does not depend on the stats socket: {done:?}");
    assert!(done.stderr.contains("will not see this instance"), "{}", done.stderr);
}

/// Sum of the `kernel: ... tx_empty N` figures of every port in a report.
fn kernel_tx_empty(report: &str) -> u64 {
    report
        .lines()
        .filter_map(|l| l.split("tx_empty ").nth(1)?.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn final_report_reads_the_sockets_while_they_are_open() {
    let topo = Topology::new("fr", false).unwrap();
    let mut fwd =
        Forwarder::start(&topo.fwd, &[&topo.f0, &topo.f1, "--stats-interval", "0"]).unwrap();
    assert!(topo.ping(&topo.client, IpAddr::V4(SERVER_V4), 5));
    let live = run_to_exit(&topo.fwd, &[], &["stats", "--count", "1"]).unwrap();
    let before = kernel_tx_empty(&live.stdout);
    assert!(before > 0, "the kernel counted TX ring checks: {}", live.stdout);
    let done = fwd.stop().unwrap();
    let after = kernel_tx_empty(&done.stdout);
    assert!(after >= before, "final kernel figures {after} < live {before}: {}", done.stdout);
}

#[test]
fn metrics_endpoint_outlasts_slow_and_endless_clients() {
    use std::time::{Duration, Instant};
    let topo = Topology::new("ms", false).unwrap();
    let mut fwd = Forwarder::start(
        &topo.fwd,
        &[&topo.f0, &topo.f1, "--stats-interval", "0", "--metrics", "19101"],
    )
    .unwrap();
    let checks = in_netns(&topo.fwd, || -> std::io::Result<(bool, usize, Duration, bool)> {
        // A client that connects and says nothing, and one whose request head never ends.
        let mut idle = TcpStream::connect(("127.0.0.1", 19101))?;
        let mut endless = TcpStream::connect(("127.0.0.1", 19101))?;
        endless.set_write_timeout(Some(Duration::from_secs(1)))?;
        endless.write_all(b"GET /metrics HTTP/1.1\r\nX-Endless: ")?;
        // Meanwhile a scrape is answered at once.
        let mut scrape = TcpStream::connect(("127.0.0.1", 19101))?;
        scrape.set_read_timeout(Some(Duration::from_secs(2)))?;
        scrape.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
        let mut answer = String::new();
        scrape.read_to_string(&mut answer)?;
        let served = answer.starts_with("HTTP/1.1 200") && answer.contains("# EOF");
        // The endless head is cut off: writes fail within seconds, after a bounded amount.
        let start = Instant::now();
        let mut sent = 0;
        while start.elapsed() < Duration::from_secs(10) {
            match endless.write(&[b'a'; 4096]) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
        // The silent client is dropped after the header timeout.
        idle.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut byte = [0u8; 1];
        let closed = matches!(idle.read(&mut byte), Ok(0) | Err(_));
        Ok((served, sent, start.elapsed(), closed))
    })
    .unwrap()
    .unwrap();
    let (served, sent, took, closed) = checks;
    assert!(served, "a scrape is served beside a silent and an endless client");
    assert!(took < Duration::from_secs(8), "the endless client is cut off ({sent} B in {took:?})");
    assert!(sent < 16 << 20, "and buffered boundedly ({sent} B)");
    assert!(closed, "the silent client is dropped");
    // A client left connected does not hold the shutdown.
    let _held = in_netns(&topo.fwd, || TcpStream::connect(("127.0.0.1", 19101))).unwrap().unwrap();
    let start = std::time::Instant::now();
    let done = fwd.stop().unwrap();
    assert!(done.success, "{done:?}");
    assert!(start.elapsed() < Duration::from_secs(5), "shutdown took {:?}", start.elapsed());
}
