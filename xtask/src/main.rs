//! `cargo xtask`: bootstrap, build, run, demo and test xdpfwd.

mod bench;
mod bootstrap;
mod demo;
mod package;
mod soak;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Build, run, demo and test xdpfwd (run as root on Debian 12)")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing: Debian packages, nightly + rust-src, bpf-linker.
    Bootstrap,
    /// Build the eBPF object and `target/release/xdpfwd` with it embedded.
    Build,
    /// Build, then run `xdpfwd ARGS...`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build, then forward real traffic through veth pairs in namespaces and report.
    Demo,
    /// Measure xdpfwd against testpmd, a bare XDP_REDIRECT, an xdp-forward-style router and
    /// Linux forwarding; rewrites docs/performance.md.
    Bench {
        /// Two frame sizes, one round (a few minutes). This and the options below exclude
        /// one another (group `part`).
        #[arg(long, group = "part")]
        quick: bool,
        /// Only the `perf` profiles at 64 B, printed (docs/performance.md is left alone).
        #[arg(long, group = "part")]
        profile: bool,
        /// Only the XDP candidates (fast path, default, xdp-forward-style, bare redirect) at
        /// 64 and 1518 B, three rounds, and the XDP program alone (`BPF_PROG_RUN`), printed
        /// (docs/performance.md is left alone).
        #[arg(long, group = "part")]
        xdp: bool,
        /// Only the ping round trips through every candidate and xdpfwd's idle CPU, printed
        /// (docs/performance.md is left alone).
        #[arg(long, group = "part")]
        latency: bool,
        /// Only the flow cache's table (both paths, the cache on and off, with few flows and
        /// with every frame a miss), printed (docs/performance.md is left alone).
        #[arg(long, group = "part")]
        flow_cache: bool,
        /// Only the AF_XDP path (its defaults and variants of its settings) against testpmd
        /// at 64, 512 and 1518 B, three rounds, printed (docs/performance.md is left alone).
        #[arg(long, group = "part")]
        af_xdp: bool,
    },
    /// Fuzz the XDP program's classification and the user-space rewrite (cargo fuzz), each
    /// for the given number of seconds, from seeds that are real packets.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        time: u64,
    },
    /// Forward 100 million packets (or `--packets N`) and check frame accounting, ownership,
    /// allocations and memory at the end; writes docs/soak.md.
    Soak {
        #[arg(long, default_value_t = 100_000_000)]
        packets: u64,
    },
    /// Build the Debian package (cargo-deb): the binary, the systemd unit, an example
    /// configuration, man pages and shell completions; prints its path.
    Package,
    /// Build, then run every test: unit tests, then the privileged integration tests.
    Test {
        /// Only run integration tests whose name contains this.
        filter: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Bootstrap => bootstrap::run(),
        Cmd::Build => build().map(|_| ()),
        Cmd::Run { args } => {
            let bin = build()?;
            let status = Command::new(bin).args(args).status()?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Cmd::Demo => {
            let bin = build()?;
            demo::run(&bin)
        }
        Cmd::Test { filter } => test(filter),
        Cmd::Package => {
            let deb = package::build_deb(&build()?)?;
            println!("{}", deb.display());
            Ok(())
        }
        Cmd::Fuzz { time } => fuzz(time),
        Cmd::Soak { packets } => {
            let bin = build()?;
            soak::run(&bin, packets)
        }
        Cmd::Bench { quick, profile, xdp, latency, flow_cache, af_xdp } => {
            let bin = build()?;
            if profile {
                bench::profiles(&bin)
            } else if xdp {
                bench::xdp_only(&bin)
            } else if latency {
                bench::latency_only(&bin)
            } else if flow_cache {
                bench::flow_cache_only(&bin)
            } else if af_xdp {
                bench::af_xdp_only(&bin)
            } else {
                bench::run(&bin, quick)
            }
        }
    }
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// Runs a command with inherited output; fails on a non-zero exit.
pub fn cmd(c: &mut Command) -> anyhow::Result<()> {
    let status = c.status().with_context(|| format!("running {c:?}"))?;
    if !status.success() {
        bail!("{c:?} failed ({status})");
    }
    Ok(())
}

/// Runs a command and returns its stdout.
pub fn cmd_output(c: &mut Command) -> anyhow::Result<String> {
    let out = c.output().with_context(|| format!("running {c:?}"))?;
    if !out.status.success() {
        bail!("{c:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Builds the eBPF object with nightly, then the user-space binary embedding it.
fn build_ebpf() -> anyhow::Result<PathBuf> {
    bootstrap::run()?;
    let prog = root().join("xdp-prog");
    eprintln!("xtask: building the eBPF program (nightly, bpfel-unknown-none)");
    cmd(Command::new("rustup")
        .args(["run", "nightly", "cargo", "build", "--release"])
        .current_dir(&prog)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO"))?;
    Ok(prog.join("target/bpfel-unknown-none/release/xdp-prog"))
}

pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(root());
    c
}

fn build() -> anyhow::Result<PathBuf> {
    let obj = build_ebpf()?;
    eprintln!("xtask: building xdpfwd (release)");
    cmd(cargo().args(["build", "--release", "-p", "xdpfwd"]).env("XDPFWD_EBPF_OBJ", &obj))?;
    let bin = root().join("target/release/xdpfwd");
    eprintln!("xtask: built {}", bin.display());
    Ok(bin)
}

fn test(filter: Option<String>) -> anyhow::Result<()> {
    let bin = build()?;
    let obj = root().join("xdp-prog/target/bpfel-unknown-none/release/xdp-prog");
    if filter.is_none() {
        eprintln!("xtask: formatting and lints");
        cmd(Command::new("rustup")
            .args(["run", "nightly", "cargo", "fmt", "--all", "--check"])
            .current_dir(root()))?;
        // The eBPF crate is a workspace of its own, built with nightly.
        cmd(Command::new("rustup")
            .args(["run", "nightly", "cargo", "fmt", "--all", "--check"])
            .current_dir(root().join("xdp-prog")))?;
        cmd(Command::new("rustup")
            .args(["run", "nightly", "cargo", "clippy", "--release", "--", "-D", "warnings"])
            .current_dir(root().join("xdp-prog"))
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("CARGO"))?;
        cmd(cargo()
            .args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"])
            .env("XDPFWD_EBPF_OBJ", &obj))?;
        eprintln!("xtask: unit tests");
        cmd(cargo()
            .args(["test", "--workspace", "--exclude", "xdpfwd-tests"])
            .env("XDPFWD_EBPF_OBJ", &obj))?;
    }
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "the integration tests create network namespaces and attach XDP programs: run as root"
        );
    }
    eprintln!("xtask: integration tests (veth pairs in network namespaces)");
    let mut c = cargo();
    c.args(["test", "-p", "xdpfwd-tests", "--", "--test-threads=1"]).env("XDPFWD_BIN", &bin).env(
        "XDPFWD_BENCH_OBJ",
        root().join("xdp-prog/target/bpfel-unknown-none/release/xdp-bench"),
    );
    // The package test installs the package this run builds.
    if filter.as_deref().is_none_or(|f| package::TEST.contains(f)) {
        c.env("XDPFWD_DEB", package::build_deb(&bin)?);
    }
    let run_all = filter.is_none();
    if let Some(f) = filter {
        c.arg(f);
    }
    cmd(&mut c)?;
    if run_all {
        eprintln!("xtask: a short fuzzing pass");
        fuzz(20)?;
    }
    Ok(())
}

/// `cargo xtask fuzz`: installs cargo-fuzz if needed, writes seed corpora from real packets,
/// and runs each target for `time` seconds.
fn fuzz(time: u64) -> anyhow::Result<()> {
    let obj = build_ebpf()?;
    let has_fuzz = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_fuzz {
        eprintln!("xtask: installing cargo-fuzz");
        cmd(Command::new("cargo")
            .args(["install", "cargo-fuzz", "--locked"])
            .env_remove("RUSTUP_TOOLCHAIN"))?;
    }
    let fuzz_dir = root().join("fuzz");
    let seeds = xdpfwd_tests::xdp_harness::seed_frames();
    for target in ["xdp_classify", "rewrite"] {
        let corpus = fuzz_dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        for (i, frame) in seeds.iter().enumerate() {
            let mut input = Vec::new();
            if target == "xdp_classify" {
                input.push((i % 2) as u8);
            } else {
                let mut meta = [0u8; 28];
                meta[0..4].copy_from_slice(&2u32.to_ne_bytes());
                meta[6..8].copy_from_slice(&14u16.to_ne_bytes());
                meta[24..28].copy_from_slice(&0x7864_6677u32.to_ne_bytes());
                input.extend_from_slice(&meta);
                input.push(14);
            }
            input.extend_from_slice(frame);
            std::fs::write(corpus.join(format!("seed-{i}")), input)?;
        }
        eprintln!("xtask: fuzzing {target} for {time} s");
        cmd(Command::new("rustup")
            .args(["run", "nightly", "cargo", "fuzz", "run", target])
            .arg(&corpus)
            .args(["--", &format!("-max_total_time={time}"), "-rss_limit_mb=4096"])
            .current_dir(root())
            .env("XDPFWD_EBPF_OBJ", &obj)
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("CARGO_TARGET_DIR"))?;
    }
    Ok(())
}
