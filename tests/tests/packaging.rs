//! The systemd unit shipped in `packaging/`: systemd accepts it, it gives xdpfwd what it
//! needs (the five capabilities, `/run/xdpfwd` for `stats` and `reload`, a reload command)
//! and the command line it runs is one xdpfwd understands.

use std::{path::PathBuf, process::Command};

use xdpfwd_tests::xdpfwd_bin;

fn unit() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../packaging/xdpfwd.service");
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn the_systemd_unit_is_valid_and_complete() {
    let unit = unit();
    for line in [
        "RuntimeDirectory=xdpfwd",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW CAP_BPF CAP_PERFMON CAP_IPC_LOCK",
        "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW CAP_BPF CAP_PERFMON CAP_IPC_LOCK",
        "LimitMEMLOCK=infinity",
        "User=xdpfwd",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit lacks {line:?}");
    }
    // The command line parses: only the missing configuration file stops it.
    let exec = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).unwrap();
    let args: Vec<&str> = exec.split_whitespace().skip(1).collect();
    let out = Command::new(xdpfwd_bin()).args(&args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/etc/xdpfwd/xdpfwd.toml") && stderr.contains("cannot read"),
        "{stderr}"
    );

    let Ok(verify) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("skipped systemd-analyze verify: not installed");
        return;
    };
    assert!(verify.status.success());
    // `verify` wants the executable to exist: point it at the one built here.
    let path = std::env::temp_dir().join(format!("xdpfwd-{}.service", std::process::id()));
    let bin = xdpfwd_bin().canonicalize().unwrap();
    std::fs::write(&path, unit.replace("/usr/bin/xdpfwd", bin.to_str().unwrap())).unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(&path).output().unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stderr.is_empty(), "no warnings: {}", String::from_utf8_lossy(&out.stderr));
}
