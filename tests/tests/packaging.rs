//! The systemd unit shipped in `packaging/`: systemd accepts it, it gives xdpfwd what it
//! needs (the five capabilities, `/run/xdpfwd` for `stats` and `reload`, a reload command)
//! and the command line it runs is one xdpfwd understands; the Debian package installs,
//! upgrades and purges cleanly.

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

/// `cargo xtask test` builds the Debian package (`cargo xtask package`) and hands it here:
/// it installs (binary, unit, example configuration, man pages, completions, the service's
/// user), the installed unit passes `systemd-analyze verify`, installing it again over
/// itself (an upgrade) keeps a configuration the operator wrote, and purging removes all of
/// it, the user included. The binary is stripped (the package is a few MiB).
#[test]
fn the_debian_package_installs_upgrades_and_purges_cleanly() {
    let deb = std::env::var("XDPFWD_DEB").expect("XDPFWD_DEB: run through `cargo xtask test`");
    let installed = |pkg: &str| {
        Command::new("dpkg-query")
            .args(["-W", "-f", "${Status}", pkg])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("ok installed"))
    };
    assert!(!installed("xdpfwd"), "xdpfwd is installed on this machine: the test would replace it");
    let dpkg = |args: &[&str]| {
        let out = Command::new("dpkg").args(args).output().unwrap();
        assert!(out.status.success(), "dpkg {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    /// Purges the package whatever happens.
    struct Purge;
    impl Drop for Purge {
        fn drop(&mut self) {
            let _ = Command::new("dpkg").args(["--purge", "xdpfwd"]).output();
        }
    }
    let purge = Purge;
    dpkg(&["-i", &deb]);
    assert!(installed("xdpfwd"));
    let size = std::fs::metadata("/usr/bin/xdpfwd").unwrap().len();
    assert!(size < 20 << 20, "a stripped binary: {size} bytes");

    let version = Command::new("/usr/bin/xdpfwd").arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&version.stdout);
    assert_eq!(version.trim(), format!("xdpfwd {}", env!("CARGO_PKG_VERSION")));
    let files = String::from_utf8_lossy(
        &Command::new("dpkg").args(["-L", "xdpfwd"]).output().unwrap().stdout,
    )
    .into_owned();
    for file in [
        "/usr/bin/xdpfwd",
        "/etc/xdpfwd/xdpfwd.toml.example",
        "/usr/share/man/man1/xdpfwd.1.gz",
        "/usr/share/man/man1/xdpfwd-run.1.gz",
        "/usr/share/bash-completion/completions/xdpfwd",
        "/usr/share/zsh/vendor-completions/_xdpfwd",
        "/usr/share/fish/vendor_completions.d/xdpfwd.fish",
    ] {
        assert!(files.lines().any(|l| l == file), "the package lacks {file}: {files}");
    }
    let unit = files.lines().find(|l| l.ends_with("/systemd/system/xdpfwd.service"));
    let unit = unit.unwrap_or_else(|| panic!("the package lacks the unit: {files}"));
    let check = Command::new("/usr/bin/xdpfwd")
        .args(["check", "--config", "/etc/xdpfwd/xdpfwd.toml.example"])
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    let user = Command::new("getent").args(["passwd", "xdpfwd"]).output().unwrap();
    assert!(user.status.success(), "the service's user exists");
    let verify = Command::new("systemd-analyze").args(["verify", unit]).output().unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));
    let bash = std::fs::read_to_string("/usr/share/bash-completion/completions/xdpfwd").unwrap();
    assert!(bash.contains("xdpfwd") && bash.contains("stats"), "{bash}");

    // An upgrade (the same package again) keeps the operator's configuration.
    std::fs::write("/etc/xdpfwd/xdpfwd.toml", "[[interface]]\nname = \"xfpk0\"\n").unwrap();
    dpkg(&["-i", &deb]);
    assert!(std::fs::read_to_string("/etc/xdpfwd/xdpfwd.toml").unwrap().contains("xfpk0"));
    std::fs::remove_file("/etc/xdpfwd/xdpfwd.toml").unwrap();

    drop(purge);
    assert!(!installed("xdpfwd"));
    for gone in ["/usr/bin/xdpfwd", "/etc/xdpfwd/xdpfwd.toml.example", unit] {
        assert!(!std::path::Path::new(gone).exists(), "{gone} stays after the purge");
    }
    let user = Command::new("getent").args(["passwd", "xdpfwd"]).output().unwrap();
    assert!(!user.status.success(), "the purge removes the service's user");
}
