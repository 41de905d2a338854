//! Installs what building and testing xdpfwd needs, idempotently: Debian packages, the nightly
//! toolchain with `rust-src`, and `bpf-linker` built against nightly's own LLVM.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::{cmd, cmd_output};

/// Debian packages: C toolchain for libxdp (xsk-rs), and the tools the tests and demo drive.
const PACKAGES: &[&str] = &[
    "clang",
    "llvm",
    "libelf-dev",
    "zlib1g-dev",
    "libpcap-dev",
    "pkg-config",
    "m4",
    "make",
    "gcc-multilib",
    "linux-libc-dev",
    "iproute2",
    "ethtool",
    "iputils-ping",
    "iperf3",
    "tcpdump",
    "bpftool",
    "util-linux",
    "frr",
    "bird2",
    "nftables",
    "traceroute",
    "iputils-tracepath",
    // The Debian package: its dependency and the tools that build and check it.
    "adduser",
    "gzip",
    "binutils",
    "systemd",
];

/// Packages whose maintainer scripts enable and start a system-wide daemon (package, service):
/// the tests run their own instances inside the namespaces they create and want none in the
/// root namespace, so bootstrap stops and disables the service right after installing the
/// package (and only then: an instance set up before bootstrap ran is left alone).
const SERVICES_STARTED_ON_INSTALL: &[(&str, &str)] = &[("frr", "frr"), ("bird2", "bird")];

pub fn run() -> anyhow::Result<()> {
    check_platform()?;
    install_packages()?;
    install_nightly()?;
    install_bpf_linker()?;
    install_python_parser()?;
    Ok(())
}

/// The Prometheus project's Python client: its OpenMetrics parser validates `/metrics` in the
/// tests.
fn install_python_parser() -> anyhow::Result<()> {
    let present = || {
        Command::new("python3")
            .args(["-c", "import prometheus_client.openmetrics.parser"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if present() {
        return Ok(());
    }
    eprintln!(
        "xtask: installing the Python package prometheus-client (OpenMetrics parser for the tests)"
    );
    let pip = |extra: &[&str]| {
        Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "prometheus-client"])
            .args(extra)
            .status()
            .is_ok_and(|s| s.success())
    };
    if !pip(&[]) && !pip(&["--break-system-packages"]) {
        bail!("could not install the Python package prometheus-client with pip");
    }
    if !present() {
        bail!("prometheus-client installed but `python3` cannot import it");
    }
    Ok(())
}

fn check_platform() -> anyhow::Result<()> {
    if !Path::new("/etc/debian_version").exists() {
        bail!(
            "xtask installs its dependencies with apt and supports Debian 12 only (no /etc/debian_version)"
        );
    }
    Ok(())
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn install_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {}: run as root (or `sudo apt-get install {}`)",
            missing.join(" "),
            missing.join(" ")
        );
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    let install = |missing: &[&str]| {
        let mut c = Command::new("apt-get");
        c.args(["install", "-y", "-q", "--no-install-recommends"])
            .args(missing)
            .env("DEBIAN_FRONTEND", "noninteractive");
        cmd(&mut c)
    };
    if install(&missing).is_err() {
        eprintln!("xtask: apt-get install failed; refreshing the package lists and retrying");
        cmd(Command::new("apt-get").args(["update", "-q"])).context("apt-get update")?;
        install(&missing).context("apt-get install")?;
    }
    stop_services_started_on_install(&missing);
    Ok(())
}

/// Stops and disables the system-wide service of each package in `installed_now` that starts
/// one on installation. Failing to do so is reported, not fatal: the tests do not depend on it.
fn stop_services_started_on_install(installed_now: &[&str]) {
    let systemd = Path::new("/run/systemd/system").exists();
    let quiet = |c: &mut Command| {
        c.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
    };
    for &(pkg, service) in SERVICES_STARTED_ON_INSTALL {
        if !installed_now.contains(&pkg) {
            continue;
        }
        eprintln!("xtask: stopping and disabling the {service} service that {pkg} started");
        let done = if systemd {
            let unit = format!("{service}.service");
            quiet(Command::new("systemctl").args(["disable", "--now", unit.as_str()]))
        } else {
            // Without systemd the postinst starts the init script, unless policy-rc.d denies
            // it (as in containers); then `invoke-rc.d stop` is denied too, and has nothing
            // to stop.
            let _ = quiet(Command::new("invoke-rc.d").args([service, "stop"]));
            quiet(Command::new("update-rc.d").args([service, "disable"]))
        };
        if !done {
            eprintln!("xtask: warning: could not disable the {service} service; stop it by hand");
        }
    }
}

fn install_nightly() -> anyhow::Result<()> {
    let toolchains = cmd_output(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is required")?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        eprintln!("xtask: installing the nightly toolchain (for the eBPF program)");
        cmd(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let components = cmd_output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))?;
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("xtask: adding rust-src to nightly (to build core for bpfel-unknown-none)");
        cmd(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

fn nightly_sysroot() -> anyhow::Result<PathBuf> {
    Ok(PathBuf::from(
        cmd_output(Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]))?
            .trim(),
    ))
}

fn install_bpf_linker() -> anyhow::Result<()> {
    let works = Command::new("rustup")
        .args(["run", "nightly", "bpf-linker", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if works {
        return Ok(());
    }
    // bpf-linker must use the LLVM that nightly rustc emits bitcode for: nightly's own
    // libLLVM, exposed through an LLVM_PREFIX folder whose lib/libLLVM.so points at it.
    let sysroot = nightly_sysroot()?;
    let version = cmd_output(Command::new("rustup").args(["run", "nightly", "rustc", "-vV"]))?;
    let major = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("nightly rustc does not report its LLVM version")?
        .to_owned();
    let lib = std::fs::read_dir(sysroot.join("lib"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("libLLVM")))
        .with_context(|| format!("no libLLVM in {}/lib", sysroot.display()))?;
    let prefix = std::env::temp_dir().join(format!("xdpfwd-llvm-{major}"));
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&lib, &link)?;
    eprintln!(
        "xtask: building bpf-linker 0.13 against nightly's LLVM {major} (a few minutes, once)"
    );
    cmd(Command::new("rustup")
        .args(["run", "nightly", "cargo", "install", "bpf-linker", "--version", "^0.13"])
        .args(["--no-default-features", "--features", &format!("llvm-{major}")])
        .env("LLVM_PREFIX", &prefix)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO_TARGET_DIR"))
    .context("cargo install bpf-linker")?;
    Ok(())
}
