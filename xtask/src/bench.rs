//! `cargo xtask bench`: throughput of xdpfwd against its peers, measured in the same run.
//!
//! Topology: generator namespace → forwarder namespace → sink namespace, veth pairs. The
//! generator is `BPF_PROG_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES` on an `XDP_TX` program (8 UDP
//! flows); the sink counts and drops in XDP. A candidate's rate is the sink's count growth over
//! a steady-state window. Candidates are interleaved over rounds and medians reported. The
//! command rewrites `docs/performance.md` and `docs/performance.svg`.

use std::{
    fmt::Write as _,
    fs,
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use xdpfwd_tests::{
    Forwarder, SERVER_V4, Topology, cpu_seconds, fmt_mac,
    generator::{BareRedirect, FibForward, Generator, Sink, udp_frame},
    ns_sh, report_value, sh,
    traffic::{gbits, iperf3},
};

use crate::{cmd, root};

mod table;

/// RFC 2544 frame sizes (with FCS).
const SIZES: [usize; 7] = [64, 128, 256, 512, 1024, 1280, 1518];
const QUICK_SIZES: [usize; 2] = [64, 1518];
/// Pings per round-trip measurement, one every 10 ms.
const PINGS: &str = "300";
/// The server's address, as ping and iperf3 take it.
const SERVER: &str = "198.18.2.2";
/// The latency-tuned AF_XDP candidate: polling longer than the pings' interval, on the CPU
/// testpmd forwards on.
const TUNED_ARGS: [&str; 6] = ["--default-path", "af-xdp", "--idle-spin", "20000", "--cpus", "1"];
/// The latency-tuned AF_XDP candidate's name.
const TUNED: &str = "xdpfwd AF_XDP, --idle-spin 20000 --cpus 1";

/// The settings of the AF_XDP path `bench --af-xdp` measures: its defaults, pinned to CPU 1
/// (where testpmd forwards), and with 2048-byte UMEM frames (half the memory per frame).
const AF_XDP_VARIANTS: [&[&str]; 3] = [&[], &["--cpus", "1"], &["--frame-size", "2048"]];

/// A ping round trip through one candidate.
struct Latency {
    name: &'static str,
    /// Average round trip (ms) and the candidate's CPU meanwhile (fraction of a core), or why
    /// it was not measured.
    measured: Result<(f64, f64), String>,
}

impl Latency {
    fn of(name: &'static str, measured: anyhow::Result<(f64, f64)>) -> Self {
        Self { name, measured: measured.map_err(|err| format!("{err:#}")) }
    }

    /// A row of the markdown table: candidate, RTT, CPU.
    fn row(&self) -> String {
        match &self.measured {
            Ok((ms, cpu)) => format!("| {} | {ms:.3} | {:.0} % |", self.name, cpu * 100.0),
            Err(_) => format!("| {} | n/a | n/a |", self.name),
        }
    }
}

impl std::fmt::Display for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.measured {
            Ok((ms, cpu)) => {
                write!(f, "{:<42} {ms:.3} ms, CPU {:.0} % of a core", self.name, cpu * 100.0)
            }
            Err(err) => write!(f, "{:<42} not measured: {err}", self.name),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Candidate {
    /// xdpfwd with no path flag: what a user gets.
    Default,
    AfXdp,
    Fast,
    XdpForward,
    Redirect,
    Testpmd,
    Kernel,
}

impl Candidate {
    const ALL: [Candidate; 7] = [
        Candidate::Default,
        Candidate::AfXdp,
        Candidate::Fast,
        Candidate::XdpForward,
        Candidate::Redirect,
        Candidate::Testpmd,
        Candidate::Kernel,
    ];

    fn name(self) -> &'static str {
        match self {
            Candidate::Default => "xdpfwd default",
            Candidate::AfXdp => "xdpfwd AF_XDP",
            Candidate::Fast => "xdpfwd fast path",
            Candidate::XdpForward => "xdp-forward-style",
            Candidate::Redirect => "bare XDP_REDIRECT",
            Candidate::Testpmd => "testpmd net_af_xdp",
            Candidate::Kernel => "Linux forwarding",
        }
    }

    /// The kernel's own forwarding must be on (it forwards, or its FIB lookup says so).
    fn needs_kernel_forwarding(self) -> bool {
        matches!(self, Candidate::Kernel | Candidate::XdpForward)
    }
}

/// A running candidate.
enum Running {
    Xdpfwd(Forwarder),
    Redirect(#[expect(dead_code, reason = "held: dropping it detaches the program")] BareRedirect),
    Fib(#[expect(dead_code, reason = "held: dropping it detaches the program")] FibForward),
    Testpmd(Child),
    Kernel,
}

impl Running {
    /// The candidate's process (none for what runs in the kernel alone).
    fn pid(&self) -> Option<u32> {
        match self {
            Running::Xdpfwd(f) => Some(f.pid()),
            Running::Testpmd(child) => Some(child.id()),
            _ => None,
        }
    }
}

struct Bench {
    topo: Topology,
    c_mac: [u8; 6],
    s_mac: [u8; 6],
    f0_mac: [u8; 6],
    f1_mac: [u8; 6],
}

/// What the generator sends: frames of `size` bytes, cycling over `flows` UDP source ports.
#[derive(Clone, Copy, Debug)]
struct Load {
    size: usize,
    flows: u32,
}

/// Rounds of the flow cache's table (one round moves by about ±10 % from run to run).
const FLOW_CACHE_ROUNDS: usize = 3;

/// iperf3 runs per TCP figure (the median is reported).
const TCP_RUNS: usize = 3;

/// The generator's flows in every measurement but the flow cache's second load.
const FLOWS: u32 = 8;
/// Flows enough that each comes back after its flow-cache slot has been taken by others
/// (8 per slot of the default 8192 per CPU): every frame misses.
const MANY_FLOWS: u32 = 65_536;

/// One measurement.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    pps: f64,
    /// The candidate's process CPU seconds per forwarded packet (0 for what runs in the
    /// kernel alone).
    cpu_per_pkt: f64,
}

/// The bench's topology, prepared; `bin` is the xdpfwd to run.
fn setup(bin: &Path) -> anyhow::Result<Bench> {
    // SAFETY: single-threaded at this point; read by the Forwarder helper.
    unsafe { std::env::set_var("XDPFWD_BIN", bin) };
    // SAFETY: as above.
    unsafe {
        std::env::set_var(
            "XDPFWD_BENCH_OBJ",
            root().join("xdp-prog/target/bpfel-unknown-none/release/xdp-bench"),
        )
    };
    let topo = Topology::new("b", false).context("creating the bench topology")?;
    let bench = Bench {
        c_mac: topo.mac(&topo.client, &topo.c0)?,
        s_mac: topo.mac(&topo.server, &topo.s0)?,
        f0_mac: topo.mac(&topo.fwd, &topo.f0)?,
        f1_mac: topo.mac(&topo.fwd, &topo.f1)?,
        topo,
    };
    bench.prepare()?;
    Ok(bench)
}

/// `cargo xtask bench --profile`: the profiles alone, printed.
pub fn profiles(bin: &Path) -> anyhow::Result<()> {
    let bench = setup(bin)?;
    let sink = Sink::attach(&bench.topo.server, &bench.topo.s0)?;
    for cand in [Candidate::AfXdp, Candidate::Fast, Candidate::XdpForward, Candidate::Redirect] {
        println!("## {}\n\n{}", cand.name(), bench.profile(&sink, cand)?);
    }
    drop(sink);
    bench.cleanup();
    Ok(())
}

/// `cargo xtask bench --xdp`: the XDP candidates alone, printed.
pub fn xdp_only(bin: &Path) -> anyhow::Result<()> {
    let bench = setup(bin)?;
    let sink = Sink::attach(&bench.topo.server, &bench.topo.s0)?;
    println!("{}", bench.xdp_rates(&sink, Duration::from_secs(2), 3)?);
    drop(sink);
    bench.cleanup();
    println!("{}", program_alone().unwrap_or_else(|err| format!("(not measured: {err:#})")));
    Ok(())
}

/// `cargo xtask bench --af-xdp`: the AF_XDP path against testpmd, with variants of its
/// settings, printed.
pub fn af_xdp_only(bin: &Path) -> anyhow::Result<()> {
    install_dpdk()?;
    let bench = setup(bin)?;
    let sink = Sink::attach(&bench.topo.server, &bench.topo.s0)?;
    println!("{}", bench.af_xdp_rates(&sink, Duration::from_secs(2), 3)?);
    drop(sink);
    bench.cleanup();
    Ok(())
}

/// `cargo xtask bench --flow-cache`: the flow cache table alone, printed.
pub fn flow_cache_only(bin: &Path) -> anyhow::Result<()> {
    let bench = setup(bin)?;
    let sink = Sink::attach(&bench.topo.server, &bench.topo.s0)?;
    println!("{}", bench.flow_cache(&sink, Duration::from_secs(2))?);
    drop(sink);
    bench.cleanup();
    Ok(())
}

/// `cargo xtask bench --latency`: xdpfwd's idle CPU and the ping round trips, printed.
pub fn latency_only(bin: &Path) -> anyhow::Result<()> {
    install_dpdk()?;
    let bench = setup(bin)?;
    let [default, tuned] = bench.idle_cpu()?;
    println!("xdpfwd idle: {:.2} % of a core ({TUNED}: {:.2} %)", default * 100.0, tuned * 100.0);
    for l in bench.latencies() {
        println!("{l}");
    }
    bench.cleanup();
    Ok(())
}

pub fn run(bin: &Path, quick: bool) -> anyhow::Result<()> {
    install_dpdk()?;
    let bench = setup(bin)?;
    let sizes: &[usize] = if quick { &QUICK_SIZES } else { &SIZES };
    let rounds = if quick { 1 } else { 3 };
    let window = Duration::from_millis(if quick { 1000 } else { 2000 });

    let generator = bench.generator_rate(sizes, window).unwrap_or_else(|err| {
        eprintln!("bench: the generator's own rate: {err:#}");
        vec![0.0; sizes.len()]
    });
    // results[candidate][size] = samples
    let mut results = vec![vec![Vec::<Sample>::new(); sizes.len()]; Candidate::ALL.len()];
    let mut syscalls_per_pkt = Vec::new();
    let sink = Sink::attach(&bench.topo.server, &bench.topo.s0)?;
    for round in 0..rounds {
        for (ci, cand) in Candidate::ALL.iter().enumerate() {
            eprintln!("bench: round {} / {rounds}: {}", round + 1, cand.name());
            let mut running = match bench.start(*cand) {
                Ok(r) => r,
                Err(err) => {
                    eprintln!("bench: {} unavailable: {err:#}", cand.name());
                    continue;
                }
            };
            for (si, size) in sizes.iter().enumerate() {
                let sample = bench.measure(&sink, &running, *size, window)?;
                eprintln!("bench:   {size:>4} B: {:.3} Mpps", sample.pps / 1e6);
                results[ci][si].push(sample);
            }
            if let Some(ratio) = bench.stop(&mut running)? {
                syscalls_per_pkt.push(ratio);
            }
        }
    }
    let table = bench.table(&sink, rounds, window).map_or_else(
        |err| format!("## A full table\n\n(not measured: {err:#})\n\n"),
        |t| t.markdown(),
    );
    let mut profile = String::new();
    for cand in [Candidate::AfXdp, Candidate::Fast, Candidate::XdpForward] {
        let text =
            bench.profile(&sink, cand).unwrap_or_else(|err| format!("(no profile: {err:#})"));
        let _ = write!(profile, "### {}\n\n{text}\n", cand.name());
    }
    let capture = bench
        .capture_cost(&sink, window)
        .unwrap_or_else(|err| format!("(not measured: {err:#})\n"));
    let huge_pages =
        bench.huge_pages(&sink, window).unwrap_or_else(|err| format!("(not measured: {err:#})\n"));
    let flow_cache =
        bench.flow_cache(&sink, window).unwrap_or_else(|err| format!("(not measured: {err:#})\n"));
    drop(sink);
    let program = program_alone().unwrap_or_else(|err| format!("(not measured: {err:#})\n"));
    let [idle, idle_tuned] = bench.idle_cpu()?;
    let rtts = bench.latencies();
    let tcp: Vec<(Candidate, [Option<f64>; 2])> =
        Candidate::ALL.iter().map(|c| (*c, bench.tcp(*c, 1500))).collect();
    let tcp_jumbo = bench.tcp_jumbo()?;
    bench.cleanup();
    let micro = criterion().unwrap_or_else(|err| format!("(criterion failed: {err:#})"));

    let report = Report {
        generator,
        tcp,
        tcp_jumbo,
        capture,
        huge_pages,
        flow_cache,
        program,
        table,
        micro,
        profile,
        sizes: sizes.to_vec(),
        results,
        syscalls_per_pkt,
        idle,
        idle_tuned,
        rtts,
        quick,
        rounds,
        window,
    };
    let md = report.markdown()?;
    fs::write(root().join("docs/performance.md"), md)?;
    fs::write(root().join("docs/performance.svg"), report.svg()?)?;
    println!("{}", report.table());
    println!("wrote docs/performance.md and docs/performance.svg");
    Ok(())
}

fn install_dpdk() -> anyhow::Result<()> {
    let installed = |pkg: &str| {
        Command::new("dpkg-query")
            .args(["-W", "-f=${Status}", pkg])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
            .unwrap_or(false)
    };
    let missing: Vec<&str> =
        ["dpdk", "dpdk-dev", "linux-perf"].into_iter().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!(
        "xtask: installing {} (testpmd for comparison, perf for profiles)",
        missing.join(" ")
    );
    cmd(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

impl Bench {
    fn prepare(&self) -> anyhow::Result<()> {
        let t = &self.topo;
        t.static_neighbours()?;
        // Gateways on the generator and sink, so no ARP is needed through candidates that
        // forward everything (testpmd) or drop everything (the sink).
        sh(&[
            "ip",
            "-n",
            &t.client,
            "neigh",
            "replace",
            "198.18.1.1",
            "lladdr",
            &fmt_mac(self.f0_mac),
            "dev",
            &t.c0,
            "nud",
            "permanent",
        ])?;
        sh(&[
            "ip",
            "-n",
            &t.server,
            "neigh",
            "replace",
            "198.18.2.1",
            "lladdr",
            &fmt_mac(self.f1_mac),
            "dev",
            &t.s0,
            "nud",
            "permanent",
        ])?;
        // Frames redirected into a veth need GRO (or XDP) on the receiving side.
        t.enable_gro()?;
        for dev in [&t.f0, &t.f1] {
            ns_sh(&t.fwd, &["ethtool", "-K", dev, "gro", "on"])?;
        }
        Ok(())
    }

    fn start(&self, cand: Candidate) -> anyhow::Result<Running> {
        let t = &self.topo;
        t.set_forwarding(cand.needs_kernel_forwarding())?;
        let xdpfwd = |path: &[&str]| self.xdpfwd(path);
        Ok(match cand {
            Candidate::Default => xdpfwd(&[])?,
            Candidate::AfXdp => xdpfwd(&["--default-path", "af-xdp"])?,
            Candidate::Fast => xdpfwd(&["--default-path", "fast"])?,
            Candidate::XdpForward => Running::Fib(FibForward::attach(&t.fwd, (&t.f0, &t.f1))?),
            Candidate::Redirect => Running::Redirect(BareRedirect::attach(
                &t.fwd,
                (&t.f0, &t.f1),
                (self.f0_mac, self.f1_mac),
                (self.c_mac, self.s_mac),
            )?),
            Candidate::Testpmd => Running::Testpmd(self.testpmd()?),
            Candidate::Kernel => Running::Kernel,
        })
    }

    /// xdpfwd between the forwarder's interfaces, with `args` after them.
    fn xdpfwd(&self, args: &[&str]) -> anyhow::Result<Running> {
        Ok(Running::Xdpfwd(self.forwarder(args)?))
    }

    /// As [`Self::xdpfwd`], the process itself.
    fn forwarder(&self, args: &[&str]) -> anyhow::Result<Forwarder> {
        let t = &self.topo;
        let mut all = vec![t.f0.as_str(), &t.f1, "--stats-interval", "0"];
        all.extend_from_slice(args);
        Forwarder::start(&t.fwd, &all)
    }

    fn testpmd(&self) -> anyhow::Result<Child> {
        let t = &self.topo;
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &t.fwd,
                "dpdk-testpmd",
                "-l",
                "0,1",
                "--no-pci",
                "--no-huge",
                "-m",
                "1024",
            ])
            .args(["--file-prefix", &t.prefix, "--log-level", "pmd.net.af_xdp:error"])
            .arg(format!("--vdev=net_af_xdp0,iface={},busy_budget=0", t.f0))
            .arg(format!("--vdev=net_af_xdp1,iface={},busy_budget=0", t.f1))
            .args(["--", "--forward-mode=mac", "--auto-start", "--nb-cores=1"])
            .arg(format!("--eth-peer=0,{}", fmt_mac(self.c_mac)))
            .arg(format!("--eth-peer=1,{}", fmt_mac(self.s_mac)))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting dpdk-testpmd")?;
        // testpmd's stdout is block-buffered into our pipe: wait for its XDP programs instead.
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                bail!("dpdk-testpmd exited: {status}");
            }
            let attached = [&t.f0, &t.f1].iter().all(|dev| {
                sh(&["ip", "-n", &t.fwd, "link", "show", dev]).is_ok_and(|o| o.contains(" xdp"))
            });
            if attached {
                thread::sleep(Duration::from_secs(1));
                return Ok(child);
            }
            thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        bail!("dpdk-testpmd did not start")
    }

    /// Stops a candidate; for xdpfwd, returns its system calls per forwarded packet.
    fn stop(&self, running: &mut Running) -> anyhow::Result<Option<f64>> {
        let result = match running {
            Running::Xdpfwd(fwd) => {
                let done = fwd.stop()?;
                if let Some(line) = done.stdout.lines().find(|l| l.trim_start().starts_with("xdp:"))
                {
                    eprintln!("bench:   {}", line.trim());
                }
                let syscalls = report_value(&done.stdout, "syscalls").unwrap_or(0) as f64;
                let fwd_pkts = xdpfwd_tests::forwarded_packets(&done.stdout).unwrap_or(0) as f64;
                (fwd_pkts > 0.0).then(|| syscalls / fwd_pkts)
            }
            Running::Testpmd(child) => {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(child.id() as i32),
                    nix::sys::signal::Signal::SIGINT,
                );
                let deadline = Instant::now() + Duration::from_secs(10);
                while child.try_wait()?.is_none() && Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(50));
                }
                let _ = child.kill();
                let _ = child.wait();
                // testpmd leaves its XDP programs attached.
                for dev in [&self.topo.f0, &self.topo.f1] {
                    let _ =
                        sh(&["ip", "-n", &self.topo.fwd, "link", "set", "dev", dev, "xdp", "off"]);
                }
                // And its runtime directory (12 MB of tmpfs with `--no-huge`).
                let _ = fs::remove_dir_all(Path::new("/var/run/dpdk").join(&self.topo.prefix));
                None
            }
            Running::Redirect(_) | Running::Fib(_) | Running::Kernel => None,
        };
        *running = Running::Kernel;
        self.topo.set_forwarding(false)?;
        thread::sleep(Duration::from_millis(300));
        Ok(result)
    }

    /// The XDP candidates alone (xdpfwd's fast path and default, the xdp-forward-style
    /// router, the bare redirect) at 64 and 1518 B, interleaved over `rounds`: medians in
    /// Mpps and the fast path's ratios, as a markdown table.
    fn xdp_rates(&self, sink: &Sink, window: Duration, rounds: usize) -> anyhow::Result<String> {
        const CANDIDATES: [Candidate; 4] =
            [Candidate::Fast, Candidate::Default, Candidate::XdpForward, Candidate::Redirect];
        let sizes = QUICK_SIZES;
        let mut rates = [[0.0; QUICK_SIZES.len()]; CANDIDATES.len()].map(|r| r.map(|_| vec![]));
        for round in 0..rounds {
            for (ci, cand) in CANDIDATES.iter().enumerate() {
                eprintln!("bench: round {} / {rounds}: {}", round + 1, cand.name());
                let mut running = self.start(*cand)?;
                for (si, size) in sizes.iter().enumerate() {
                    let sample = self.measure(sink, &running, *size, window);
                    rates[ci][si].push(sample?.pps / 1e6);
                }
                self.stop(&mut running)?;
            }
        }
        let mut out = String::from("| candidate | 64 B (Mpps) | 1518 B (Mpps) |\n|---|---|---|\n");
        let medians = rates.map(|r| r.map(|v| median(&v)));
        for (cand, m) in CANDIDATES.iter().zip(&medians) {
            let _ = writeln!(out, "| {} | {:.3} | {:.3} |", cand.name(), m[0], m[1]);
        }
        out.push('\n');
        for other in [2, 3] {
            let ratio = |si: usize| medians[0][si] / medians[other][si].max(f64::MIN_POSITIVE);
            let _ = writeln!(
                out,
                "fast path / {}: {:.2}x at 64 B, {:.2}x at 1518 B",
                CANDIDATES[other].name(),
                ratio(0),
                ratio(1)
            );
        }
        Ok(out)
    }

    /// The AF_XDP path with its defaults and with each of [`AF_XDP_VARIANTS`], and testpmd,
    /// interleaved over `rounds`, at 64, 512 and 1518 B: medians.
    fn af_xdp_rates(&self, sink: &Sink, window: Duration, rounds: usize) -> anyhow::Result<String> {
        const SIZES: [usize; 3] = [64, 512, 1518];
        let mut names = vec!["testpmd net_af_xdp".to_string()];
        names.extend(AF_XDP_VARIANTS.iter().map(|v| format!("xdpfwd AF_XDP {}", v.join(" "))));
        let mut rates = vec![[(); SIZES.len()].map(|_| Vec::new()); names.len()];
        for round in 0..rounds {
            for (ci, name) in names.iter().enumerate() {
                eprintln!("bench: round {} / {rounds}: {name}", round + 1);
                let mut running = match ci {
                    0 => self.start(Candidate::Testpmd)?,
                    _ => {
                        let mut args = vec!["--default-path", "af-xdp"];
                        args.extend_from_slice(AF_XDP_VARIANTS[ci - 1]);
                        self.xdpfwd(&args)?
                    }
                };
                for (si, size) in SIZES.iter().enumerate() {
                    let sample = self.measure(sink, &running, *size, window)?;
                    let mpps = sample.pps / 1e6;
                    eprintln!(
                        "bench:   {size:>4} B: {mpps:.3} Mpps, {:.0} ns CPU/pkt",
                        sample.cpu_per_pkt * 1e9
                    );
                    rates[ci][si].push(mpps);
                }
                self.stop(&mut running)?;
            }
        }
        let mut out = String::from(
            "| candidate | 64 B | 512 B | 1518 B (Mpps, medians; all runs) |\n|---|---|---|---|\n",
        );
        for (name, r) in names.iter().zip(&rates) {
            let cell = |v: &Vec<f64>| {
                let all: Vec<String> = v.iter().map(|x| format!("{x:.2}")).collect();
                format!("{:.3} ({})", median(v), all.join(" "))
            };
            let _ =
                writeln!(out, "| {name} | {} | {} | {} |", cell(&r[0]), cell(&r[1]), cell(&r[2]));
        }
        Ok(out)
    }

    fn measure(
        &self,
        sink: &Sink,
        running: &Running,
        size: usize,
        window: Duration,
    ) -> anyhow::Result<Sample> {
        self.measure_flows(sink, running, Load { size, flows: FLOWS }, window)
    }

    /// [`Self::measure`] with the generator cycling over `load.flows` flows.
    fn measure_flows(
        &self,
        sink: &Sink,
        running: &Running,
        load: Load,
        window: Duration,
    ) -> anyhow::Result<Sample> {
        let t = &self.topo;
        let (c_mac, f0_mac, size) = (self.c_mac, self.f0_mac, load.size);
        let frame = udp_frame(c_mac, f0_mac, [198, 18, 1, 2], SERVER_V4.octets(), size - 4);
        let generator = Generator::start(&t.client, &t.c0, frame, load.flows, 0, None)?;
        thread::sleep(Duration::from_millis(500));
        let pid = running.pid();
        let (p0, c0, t0) = (sink.count()?.0, pid.map(cpu_seconds).unwrap_or(0.0), Instant::now());
        thread::sleep(window);
        let (p1, c1, t1) = (sink.count()?.0, pid.map(cpu_seconds).unwrap_or(0.0), Instant::now());
        generator.stop()?;
        thread::sleep(Duration::from_millis(200));
        let pkts = (p1 - p0) as f64;
        let pps = pkts / (t1 - t0).as_secs_f64();
        let cpu_per_pkt = if pkts > 0.0 { (c1 - c0) / pkts } else { 0.0 };
        Ok(Sample { pps, cpu_per_pkt })
    }

    /// What capturing all traffic costs each xdpfwd path at 64 B: the rate with no capture
    /// running, then with `xdpfwd capture -w /dev/null` (in and out, every interface), and
    /// what the capture wrote and lost. A markdown table.
    fn capture_cost(&self, sink: &Sink, window: Duration) -> anyhow::Result<String> {
        let mut out = String::from(
            "| path | no capture (Mpps) | capturing all (Mpps) | ratio | frames captured | lost |\n\
             |---|---|---|---|---|---|\n",
        );
        for cand in [Candidate::AfXdp, Candidate::Fast] {
            eprintln!("bench: capture cost: {}", cand.name());
            let mut running = self.start(cand)?;
            let off = self.measure(sink, &running, 64, window)?;
            let capture = Command::new("ip")
                .args(["netns", "exec", &self.topo.fwd])
                .arg(xdpfwd_tests::xdpfwd_bin())
                .args(["capture", "-w", "/dev/null"])
                .stderr(Stdio::piped())
                .spawn()
                .context("starting xdpfwd capture")?;
            thread::sleep(Duration::from_millis(500));
            let on = self.measure(sink, &running, 64, window);
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(capture.id() as i32),
                nix::sys::signal::Signal::SIGINT,
            );
            let said = capture.wait_with_output()?;
            self.stop(&mut running)?;
            let on = on?;
            // "xdpfwd: N frames captured, M lost"
            let said = String::from_utf8_lossy(&said.stderr);
            let line = said.lines().find(|l| l.contains("frames captured")).unwrap_or("");
            let words: Vec<&str> = line.split_whitespace().collect();
            let word = |i: usize| words.get(i).copied().unwrap_or("n/a");
            let _ = writeln!(
                out,
                "| {} | {:.3} | {:.3} | {:.2} | {} | {} |",
                cand.name(),
                off.pps / 1e6,
                on.pps / 1e6,
                on.pps / off.pps.max(1.0),
                word(1),
                word(4).trim_end_matches(','),
            );
        }
        Ok(out)
    }

    /// The AF_XDP path with and without `--hugepages` at the smallest and largest size; the
    /// huge pages are reserved for the measurement (`vm.nr_hugepages`) and given back.
    fn huge_pages(&self, sink: &Sink, window: Duration) -> anyhow::Result<String> {
        const NR: &str = "/proc/sys/vm/nr_hugepages";
        let before = fs::read_to_string(NR)?.trim().parse::<u64>()?;
        // Two sockets of 2 × 2048 frames of 4096 bytes: 16 pages of 2 MiB, and a few spare.
        fs::write(NR, (before + 20).to_string())?;
        let loads = [64, 1518].map(|size| Load { size, flows: FLOWS });
        let result = self.with_and_without(sink, window, "af-xdp", &["--hugepages"], &loads);
        // The kernel releases the UMEM a moment after its sockets close.
        thread::sleep(Duration::from_millis(500));
        fs::write(NR, before.to_string())?;
        let rates = result?;
        let mut out = String::from(
            "| frame (B) | ordinary pages (Mpps) | huge pages (Mpps) | ratio |\n|---|---|---|---|\n",
        );
        for (j, size) in [64, 1518].into_iter().enumerate() {
            let [plain, huge] = [rates[0][j], rates[1][j]];
            let _ = writeln!(
                out,
                "| {size} | {plain:.3} | {huge:.3} | {:.2}× |",
                huge / plain.max(1e-9)
            );
        }
        Ok(out)
    }

    /// Both paths with the flow cache off (`--flow-cache 0`) and on (the default), with the
    /// generator's few flows (every frame but a generation's first a hit) and with
    /// [`MANY_FLOWS`] (a flow comes back after its slot has been taken: every frame a miss);
    /// medians of [`FLOW_CACHE_ROUNDS`] rounds.
    fn flow_cache(&self, sink: &Sink, window: Duration) -> anyhow::Result<String> {
        let mut out = String::from(
            "| path | frame (B) | flows | cache off (Mpps) | cache on (Mpps) | ratio |\n\
             |---|---|---|---|---|---|\n",
        );
        let loads: Vec<Load> = [FLOWS, MANY_FLOWS]
            .into_iter()
            .flat_map(|flows| [64, 1518].map(|size| Load { size, flows }))
            .collect();
        for path in ["fast", "af-xdp"] {
            let mut rounds = Vec::new();
            for _ in 0..FLOW_CACHE_ROUNDS {
                rounds.push(self.with_and_without(
                    sink,
                    window,
                    path,
                    &["--flow-cache", "0"],
                    &loads,
                )?);
            }
            let cell =
                |i: usize, j: usize| median(&rounds.iter().map(|r| r[i][j]).collect::<Vec<_>>());
            for (j, load) in loads.iter().enumerate() {
                let [with, without] = [cell(0, j), cell(1, j)];
                let _ = writeln!(
                    out,
                    "| {path} | {} | {} | {without:.3} | {with:.3} | {:.2}× |",
                    load.size,
                    load.flows,
                    with / without.max(1e-9)
                );
            }
        }
        Ok(out)
    }

    /// Mpps for each of `loads` through xdpfwd on `path`, without `extra` flags (`[0]`) and
    /// with them (`[1]`), one round each.
    fn with_and_without(
        &self,
        sink: &Sink,
        window: Duration,
        path: &str,
        extra: &[&str],
        loads: &[Load],
    ) -> anyhow::Result<[Vec<f64>; 2]> {
        let t = &self.topo;
        let mut rates = [Vec::new(), Vec::new()];
        for (i, extra) in [&[][..], extra].into_iter().enumerate() {
            let mut args =
                vec![t.f0.as_str(), &t.f1, "--stats-interval", "0", "--default-path", path];
            args.extend_from_slice(extra);
            eprintln!("bench: {args:?}");
            let mut running = Running::Xdpfwd(Forwarder::start(&t.fwd, &args)?);
            for load in loads {
                rates[i].push(self.measure_flows(sink, &running, *load, window)?.pps / 1e6);
            }
            self.stop(&mut running)?;
        }
        Ok(rates)
    }

    /// Where the time goes through `cand` at 64 B: `perf record -a` over two seconds,
    /// summarised by thread and by place (user space, kernel, eBPF), and the top symbols.
    fn profile(&self, sink: &Sink, cand: Candidate) -> anyhow::Result<String> {
        let t = &self.topo;
        let data = std::env::temp_dir().join(format!("{}.perf", t.prefix));
        let mut running = self.start(cand)?;
        let frame = udp_frame(self.c_mac, self.f0_mac, [198, 18, 1, 2], SERVER_V4.octets(), 60);
        let generator = Generator::start(&t.client, &t.c0, frame, FLOWS, 0, None)?;
        thread::sleep(Duration::from_millis(500));
        let (before, t0) = (sink.count()?.0, Instant::now());
        let record = sh(&[
            "perf",
            "record",
            "-a",
            "-g",
            "-F",
            "999",
            "-o",
            &data.to_string_lossy(),
            "--",
            "sleep",
            "2",
        ]);
        let (after, t1) = (sink.count()?.0, Instant::now());
        generator.stop()?;
        self.stop(&mut running)?;
        record?;
        let path = data.to_string_lossy().into_owned();
        let report = |sort: &str, lines: usize| -> anyhow::Result<String> {
            let mut args =
                vec!["perf", "report", "-i", &path, "--stdio", "--no-children", "--sort", sort];
            args.extend_from_slice(&["-g", "none"]);
            Ok(sh(&args)?
                .lines()
                .filter(|l| l.trim_start().chars().next().is_some_and(|c| c.is_ascii_digit()))
                .take(lines)
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                .collect::<Vec<_>>()
                .join("\n"))
        };
        let by_thread = report("comm,dso", 10)?;
        let by_symbol = report("comm,sym", 24)?;
        let _ = fs::remove_file(&data);
        Ok(format!(
            "{:.3} Mpps during the profile. Samples by thread and place (`[kernel.kallsyms]` is \
             the kernel, `bpf_prog_*` eBPF, `xdpfwd` our user space; the generator thread also \
             runs the receive side in softirq):\n\n```text\n{by_thread}\n```\n\nTop symbols:\n\n```text\n{by_symbol}\n```\n",
            (after - before) as f64 / (t1 - t0).as_secs_f64() / 1e6
        ))
    }

    /// xdpfwd's CPU use with no traffic, as a fraction of one core: with its defaults, and as
    /// [`TUNED`] once a ping has gone through it.
    fn idle_cpu(&self) -> anyhow::Result<[f64; 2]> {
        let t = &self.topo;
        let idle = |args: &[&str], ping: bool| -> anyhow::Result<f64> {
            let mut fwd = self.forwarder(args)?;
            if ping {
                ns_sh(&t.client, &["ping", "-q", "-c", "3", "-i", "0.01", "-W", "1", SERVER])?;
            }
            thread::sleep(Duration::from_secs(1));
            let (c0, t0) = (cpu_seconds(fwd.pid()), Instant::now());
            thread::sleep(Duration::from_secs(5));
            let (c1, t1) = (cpu_seconds(fwd.pid()), Instant::now());
            fwd.stop()?;
            Ok((c1 - c0) / (t1 - t0).as_secs_f64())
        };
        Ok([idle(&[], false)?, idle(&TUNED_ARGS, true)?])
    }

    /// The generator's own rate (Mpps) at each size, into a sink on the forwarder's first
    /// interface: the most any candidate can be measured at.
    fn generator_rate(&self, sizes: &[usize], window: Duration) -> anyhow::Result<Vec<f64>> {
        let t = &self.topo;
        let sink = Sink::attach(&t.fwd, &t.f0)?;
        let mut rates = Vec::new();
        for size in sizes {
            let frame =
                udp_frame(self.c_mac, self.f0_mac, [198, 18, 1, 2], SERVER_V4.octets(), size - 4);
            let generator = Generator::start(&t.client, &t.c0, frame, FLOWS, 0, None)?;
            thread::sleep(Duration::from_millis(500));
            let (p0, t0) = (sink.count()?.0, Instant::now());
            thread::sleep(window);
            let (p1, t1) = (sink.count()?.0, Instant::now());
            generator.stop()?;
            let mpps = (p1 - p0) as f64 / (t1 - t0).as_secs_f64() / 1e6;
            eprintln!("bench: the generator alone, {size:>4} B: {mpps:.3} Mpps");
            rates.push(mpps);
        }
        Ok(rates)
    }

    /// TCP goodput (Gbit/s, iperf3 receiver side, 3 s) through a candidate with 1 and with 8
    /// streams: the median of [`TCP_RUNS`] runs each (one run moves by a third from the next
    /// on this VM).
    fn tcp(&self, cand: Candidate, mtu: u32) -> [Option<f64>; 2] {
        let t = &self.topo;
        let mut running = match self.start(cand) {
            Ok(running) => running,
            Err(err) => {
                eprintln!("bench: TCP through {} at MTU {mtu}: {err:#}", cand.name());
                return [None, None];
            }
        };
        thread::sleep(Duration::from_millis(300));
        let mut out = [None, None];
        for (i, streams) in ["1", "8"].into_iter().enumerate() {
            let args = ["-c", SERVER, "-p", "5202", "-t", "3", "-f", "g", "-P", streams];
            let runs: Vec<f64> = (0..TCP_RUNS)
                .filter_map(|_| iperf3(t, "5202", &args).ok().and_then(|text| gbits(&text)))
                .collect();
            out[i] = (!runs.is_empty()).then(|| median(&runs));
            eprintln!(
                "bench: TCP through {} at MTU {mtu}, {streams} stream(s): {runs:.2?} Gbit/s",
                cand.name(),
            );
        }
        let _ = self.stop(&mut running);
        out
    }

    /// [`Self::tcp`] at MTU 9000 (every link) for the candidates in [`JUMBO`]; the links
    /// return to MTU 1500 afterwards.
    fn tcp_jumbo(&self) -> anyhow::Result<Vec<(Candidate, [Option<f64>; 2])>> {
        let t = &self.topo;
        t.set_mtu(9000, 9000)?;
        let out = JUMBO.iter().map(|c| (*c, self.tcp(*c, 9000))).collect();
        t.set_mtu(1500, 1500)?;
        Ok(out)
    }

    /// Ping round trips through every candidate, and through the AF_XDP path tuned for
    /// latency.
    fn latencies(&self) -> Vec<Latency> {
        let mut out: Vec<Latency> = Candidate::ALL
            .iter()
            .map(|c| Latency::of(c.name(), self.start(*c).and_then(|r| self.rtt(r))))
            .collect();
        let tuned = self.xdpfwd(&TUNED_ARGS);
        out.push(Latency::of(TUNED, tuned.and_then(|r| self.rtt(r))));
        out
    }

    /// Average round trip (ms) of [`PINGS`] pings, one every 10 ms, through `running`, and
    /// its process's CPU meanwhile (fraction of a core; 0 for what runs in the kernel).
    fn rtt(&self, mut running: Running) -> anyhow::Result<(f64, f64)> {
        let t = &self.topo;
        let pid = running.pid();
        let (c0, t0) = (pid.map(cpu_seconds).unwrap_or(0.0), Instant::now());
        let out = ns_sh(&t.client, &["ping", "-q", "-c", PINGS, "-i", "0.01", "-W", "1", SERVER]);
        let (c1, t1) = (pid.map(cpu_seconds).unwrap_or(0.0), Instant::now());
        self.stop(&mut running)?;
        let out = out?;
        let line = out.lines().find(|l| l.contains("rtt")).context("no rtt line")?;
        let avg =
            line.split('=').nth(1).and_then(|v| v.trim().split('/').nth(1)).context("no avg")?;
        Ok((avg.parse()?, (c1 - c0) / (t1 - t0).as_secs_f64()))
    }

    fn cleanup(&self) {
        let _ = self.topo.set_forwarding(false);
    }
}

/// Runs the criterion benchmarks; returns "- name: time" lines.
fn criterion() -> anyhow::Result<String> {
    let obj = root().join("xdp-prog/target/bpfel-unknown-none/release/xdp-prog");
    let out =
        std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .current_dir(root())
            .args([
                "bench",
                "-p",
                "xdpfwd",
                "--bench",
                "rewrite",
                "--",
                "--warm-up-time",
                "1",
                "--measurement-time",
                "3",
            ])
            .env("XDPFWD_EBPF_OBJ", obj)
            .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = String::new();
    let mut name = String::new();
    for line in text.lines() {
        if line.starts_with("per_packet/") {
            name = line.split_whitespace().collect::<Vec<_>>().join(" ");
            if let Some((n, rest)) = name.clone().split_once("time:")
                && !rest.contains('%')
            {
                let _ = writeln!(lines, "- {}: {}", n.trim(), rest.trim());
                name.clear();
            }
        } else if let Some(rest) = line.trim().strip_prefix("time:")
            && !rest.contains('%')
        {
            let _ = writeln!(lines, "- {}: {}", name.trim(), rest.trim());
        }
    }
    if lines.is_empty() {
        bail!("no criterion output");
    }
    Ok(lines)
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[s.len() / 2]
}

/// The candidates measured at MTU 9000: testpmd's `net_af_xdp` receives single-buffer
/// frames only.
const JUMBO: [Candidate; 6] = [
    Candidate::Default,
    Candidate::AfXdp,
    Candidate::Fast,
    Candidate::XdpForward,
    Candidate::Redirect,
    Candidate::Kernel,
];

struct Report {
    /// The generator's own rate into a drop sink, Mpps per size.
    generator: Vec<f64>,
    /// TCP goodput with 1 and 8 streams, Gbit/s.
    tcp: Vec<(Candidate, [Option<f64>; 2])>,
    /// The same at MTU 9000, for the candidates that carry jumbo frames.
    tcp_jumbo: Vec<(Candidate, [Option<f64>; 2])>,
    /// The capture-cost table.
    capture: String,
    /// The huge-pages table.
    huge_pages: String,
    /// The flow-cache table.
    flow_cache: String,
    /// The program-alone table.
    program: String,
    /// The full-table section.
    table: String,
    sizes: Vec<usize>,
    results: Vec<Vec<Vec<Sample>>>,
    syscalls_per_pkt: Vec<f64>,
    idle: f64,
    idle_tuned: f64,
    rtts: Vec<Latency>,
    quick: bool,
    rounds: usize,
    window: Duration,
    /// criterion results, one line per benchmark.
    micro: String,
    /// `perf` summary of the AF_XDP path at 64 B.
    profile: String,
}

impl Report {
    fn mpps(&self, c: Candidate, si: usize) -> f64 {
        let ci = Candidate::ALL.iter().position(|x| *x == c).unwrap_or(0);
        median(&self.results[ci][si].iter().map(|s| s.pps).collect::<Vec<_>>()) / 1e6
    }

    fn table(&self) -> String {
        let mut t = String::from("| frame (B) | generator alone (Mpps) |");
        for c in Candidate::ALL {
            let _ = write!(t, " {} (Mpps) |", c.name());
        }
        t.push_str("\n|---|---|");
        for _ in Candidate::ALL {
            t.push_str("---|");
        }
        t.push('\n');
        for (si, size) in self.sizes.iter().enumerate() {
            let _ = write!(t, "| {size} | {:.3} |", self.generator.get(si).copied().unwrap_or(0.0));
            for c in Candidate::ALL {
                let _ = write!(t, " {:.3} |", self.mpps(c, si));
            }
            t.push('\n');
        }
        t
    }

    /// The ratios the targets are about, per size.
    fn ratios(&self) -> String {
        let mut t = String::from(
            "| frame (B) | default / Linux (target ≥ 2) | fast / xdp-forward-style (≥ 1.25) | \
             fast / bare redirect (≥ 0.9) | AF_XDP / testpmd (≥ 1) |\n|---|---|---|---|---|\n",
        );
        let ratio = |a: f64, b: f64| if b > 0.0 { format!("{:.2}×", a / b) } else { "n/a".into() };
        for (si, size) in self.sizes.iter().enumerate() {
            let m = |c| self.mpps(c, si);
            let _ = writeln!(
                t,
                "| {size} | {} | {} | {} | {} |",
                ratio(m(Candidate::Default), m(Candidate::Kernel)),
                ratio(m(Candidate::Fast), m(Candidate::XdpForward)),
                ratio(m(Candidate::Fast), m(Candidate::Redirect)),
                ratio(m(Candidate::AfXdp), m(Candidate::Testpmd)),
            );
        }
        t
    }

    fn tcp_table(&self) -> String {
        let mut t = String::from(
            "| candidate | MTU 1500, 1 stream (Gbit/s) | 8 streams | MTU 9000, 1 stream | \
             8 streams |\n|---|---|---|---|---|\n",
        );
        let cell = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.2}"));
        for (c, [one, eight]) in &self.tcp {
            let [j1, j8] =
                self.tcp_jumbo.iter().find(|(j, _)| j == c).map_or([None, None], |(_, v)| *v);
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} | {} |",
                c.name(),
                cell(*one),
                cell(*eight),
                if JUMBO.contains(c) { cell(j1) } else { "-".into() },
                if JUMBO.contains(c) { cell(j8) } else { "-".into() },
            );
        }
        t
    }

    fn markdown(&self) -> anyhow::Result<String> {
        let cpu = sh(&["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"])
            .unwrap_or_default();
        let kernel = sh(&["uname", "-r"]).unwrap_or_default();
        let cores = thread::available_parallelism().map_or(1, |n| n.get());
        let ci = Candidate::ALL.iter().position(|c| *c == Candidate::AfXdp).unwrap_or(0);
        let mut ns_per_pkt = String::new();
        for (si, size) in self.sizes.iter().enumerate() {
            let v: Vec<f64> = self.results[ci][si].iter().map(|s| s.cpu_per_pkt * 1e9).collect();
            let _ = write!(ns_per_pkt, "{size} B: {:.0} ns; ", median(&v));
        }
        let mut rtt = String::new();
        for l in &self.rtts {
            let _ = writeln!(rtt, "{}", l.row());
        }
        Ok(format!(
            r#"# Performance

Regenerated by `cargo xtask bench{quick}` — do not edit by hand.

## Machine

- CPU: {cpu} ({cores} cores), kernel {kernel}
- All candidates run on this machine, in this run, on the same veth topology.

## Method

- Topology: generator namespace → forwarder namespace → sink namespace, joined by veth
  pairs; addresses in 198.18.0.0/15; static neighbours; GRO on the veths (frames redirected
  into a veth need GRO or XDP on the receiving side).
- Generator: `BPF_PROG_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES` on an `XDP_TX` program, 8 UDP
  flows (source ports), in one call of 2^32 - 1 repetitions that a signal ends: a steady
  load. (Each call has a fixed set-up cost of about 25 ms during which nothing is sent; the
  runs of 50,000 frames used before measured every candidate on a stop-and-go load.) The
  generator's thread is pinned to CPU 0 (see "Where the work runs"). Its own rate into a
  drop sink on the forwarder's first interface is the table's first column: no candidate
  can be measured above it. Sink: an XDP program that counts and drops.
- Rate: growth of the sink's count over a {window:.1} s steady-state window after 0.5 s of
  warm-up. Candidates interleaved, {rounds} round(s); the table shows medians.
- Frame sizes are RFC 2544 sizes (FCS included; the frames on the veth are 4 bytes shorter).
- Candidates: **xdpfwd default** (no path flag: `auto`, which here, with GRO on the veths,
  takes the fast path out of both interfaces); **xdpfwd AF_XDP** (`--default-path af-xdp`,
  copy mode on veth); **xdpfwd fast path** (`--default-path fast`: rewrite in XDP +
  `XDP_REDIRECT`); **xdp-forward-style** (an XDP router as the kernel's
  `samples/bpf/xdp_fwd_kern.c` and xdp-tools' `xdp-forward`: `bpf_fib_lookup` in the
  kernel's FIB and neighbour tables, TTL decrement, MACs from the lookup, `bpf_redirect_map`
  on a DEVMAP; IPv4 only; kernel forwarding on, as it requires); **bare XDP_REDIRECT** (an
  XDP program that only rewrites MACs and redirects: the ceiling here); **testpmd net_af_xdp**
  (DPDK 22.11 `dpdk-testpmd --no-pci --no-huge`, mac forwarding mode, one forwarding core);
  **Linux forwarding** (the kernel's IP forwarding, entered through GRO on the veth).
- On veth, an `XDP_TX`ed live frame travels to the peer without a copy and its page returns
  to the generator's pool with whatever a forwarder rewrote in it (MACs, TTL). The generator
  therefore restores the Ethernet, IPv4 and UDP headers of every frame it sends; without
  that, the TTL of recycled frames runs down and the kernel path appears to forward only
  about a thousand frames per run.

## Throughput (Mpps, medians)

{table}
![throughput](performance.svg)

Ratios (same run, medians):

{ratios}
## TCP goodput (iperf3, 3 s, receiver side, median of 3 runs)

Kernel TCP in the end namespaces with their transmit checksum offload off (as the docs say
for veth; that also turns TSO off, so every segment crosses the forwarder as one frame of
at most the MTU); IPv4, MTU 1500, then every link at MTU 9000 (jumbo frames: on veth a
9000-byte frame arrives in three buffers; testpmd's `net_af_xdp` takes single-buffer frames
only and is not run there; "-").

{tcp}

{full_table}
## xdpfwd costs

- System calls per forwarded packet (AF_XDP path, whole runs): {syscalls}
- xdpfwd process CPU per forwarded packet (AF_XDP path, user and system time: it includes
  the kernel's copy-mode transmit work done inside xdpfwd's `sendto` calls, and the sink's
  receive work that runs in softirq on the same core; the receive side on the generator's
  core is not included): {ns_per_pkt}
- CPU when idle: {idle:.2} % of one core (`--default-path af-xdp --idle-spin 20000 --cpus 1`,
  after a few pings: {idle_tuned:.2} %).

## Capturing (`xdpfwd capture`), 64 B

With no capture running, the XDP program reads one array entry per frame to learn that none
runs (twice: before and after its decision) and the workers read one atomic word per frame
they send or drop; nothing is copied. The table measures a capture of all traffic (in and
out, every interface, no filter, written to `/dev/null`) against the same path without one,
in this run: the program copies each frame into a BPF ring buffer (no wakeup per frame; the
instance polls it) and the workers into their own rings, and the instance and the
`xdpfwd capture` process share the two cores with the forwarding. A capture that cannot
keep up loses frames (counted, reported by `xdpfwd capture` when it ends) rather than
slowing forwarding down further. A filter runs in the data path before anything is copied,
so frames it rejects cost the interpreter's steps only.

{capture}
## Huge pages (`--hugepages`)

The AF_XDP path with its UMEM in ordinary pages and in huge pages (`--hugepages`, 2 MiB;
the bench reserves them for the run and gives them back), one round each, same run:

{huge_pages}
## Flow cache (`--flow-cache`)

Both paths with the XDP program's flow cache on (the default, 8192 slots per CPU) and off
(`--flow-cache 0`), medians of three rounds, same run. With the generator's 8 flows, every frame
but a flow's first of each generation takes its decision from the cache; with 65,536 flows
each flow comes back after other flows have taken its slot (8 flows per slot), so every
frame misses: it pays for the probe (a slot not in the CPU's caches) and the fill on top
of the stages, which is what the cache costs traffic it cannot help (a scan, a flood with
random sources): 0.87-0.95× of the cache off, measured before xdpfwd suspended the cache
under such traffic. Now its governor (docs/operations.md) sees more than four fills per
hit at 100,000 frames a second or more and suspends the cache, retrying it after 1 s, then
2 s, so those rows measure the cache suspended but for a retry (half a second of misses in
the 2 s window): six single rounds measured 0.99-1.32× (one round moves by about ±10 %
from run to run here; suspended, the program takes the same path as `--flow-cache 0`).
Off, every frame walks the steering rules, the policy rules, the route trie (twice, with
the source check) and the neighbour table:

{flow_cache}
## The XDP program alone (`BPF_PROG_RUN`)

xdpfwd's program on one frame in a loop, without traffic (`tests/src/xdp_harness.rs`: the
program loaded in a namespace of its own, its maps filled with the test tables: two
steering rules, four NAT rewrites, three policy rules, a default route through a resolved
gateway), not live: nothing is sent, so this is the program's own time per frame, stable to
about a nanosecond, where the rates above move by a few percent. The gateway has the
ingress's MAC, so each run forwards on the fast path (`XDP_REDIRECT`) what the last left
of the frame, with a TTL one lower. Medians of {program_samples} calls of
{program_repeat} runs each:

{program}
## Ping round-trip time through each candidate

{pings} pings, one every 10 ms, averaged; CPU is the candidate's process during the pings
(what runs in the kernel's softirqs is not counted: 0 for the kernel and the XDP-only
candidates). An AF_XDP worker sleeps in `poll()` once it has polled its rings for
`--idle-spin` µs (default 200) without a frame; waking it costs the frame that does so tens
of µs. With `--idle-spin 20000` the worker keeps polling between pings 10 ms apart and
sleeps once traffic stops: the latency of a polling forwarder while traffic flows, the idle
CPU above when it does not (pinned with `--cpus 1` like testpmd's forwarding core).

| candidate | RTT (ms) | CPU |
|---|---|---|
{rtt}
## Where the time goes (64 B, `perf record -a`)

`bpf_prog_*_xdpfwd` is xdpfwd's XDP program (its global functions `xdpfwd_fib`,
`xdpfwd_rules`, `xdpfwd_path` appear as their own `bpf_prog_*`), `bench_fib` the
xdp-forward-style router, `bench_gen` the generator and `bench_sink` the sink; map lookups
the program makes appear as the kernel's functions (`trie_lookup_elem`: the route tries,
`htab_map_lookup_elem` / `__htab_map_lookup_elem`: hash maps, `fib_table_lookup`: the
kernel's FIB).


{profile}
## Micro-benchmarks (criterion, `cargo bench -p xdpfwd`)

User-space work per packet on the AF_XDP path (read the metadata, rewrite in place):

{micro}
## Reading the figures

- **Targets** (issue 12), measured in one run on this 2-core VM, at 64 B and 1518 B: xdpfwd
  with its defaults ≥ 2× Linux forwarding; fast path ≥ 1.25× the xdp-forward-style router
  and ≥ 0.9× the bare `XDP_REDIRECT`; AF_XDP path ≥ testpmd; ≤ 1 system call per 32
  forwarded packets (0.031 per packet); idle CPU < 2 % of a core. The ratio table and the
  lines above give the measured values, misses included.
- **Where the work runs.** The generator's `BPF_PROG_RUN` call transmits with `XDP_TX`; the
  veth peer's NAPI poll, where the candidate's XDP program runs, and the sink's behind it,
  are run in the same call whenever it re-enables bottom halves after a batch. So for the
  XDP candidates (fast path, xdp-forward-style, bare redirect) the generator, the
  candidate and the sink share one core, one frame after another, and a candidate's rate
  is set by the sum of the three costs; the second core idles (`swapper` in the profiles).
  The AF_XDP candidates and Linux forwarding hand frames to another thread (the workers,
  testpmd's core) or to `ksoftirqd`. Ratios between the XDP candidates are therefore
  ratios of whole-pipeline costs, not of the programs alone. The generator's thread is
  pinned to CPU 0, so that the NAPI polls it sets off run there throughout: unpinned, the
  scheduler moved it between the CPUs during a run, the polls stayed behind on the other
  one, the veth rings' locks were contended and pages went back to their pools from the
  wrong CPU, which moved a candidate's figure by up to a third from one run to the next.
- **The default against Linux.** With GRO on the veths the default takes the fast path out
  of both interfaces, so the first ratio is the fast path's against the kernel's own
  forwarding. Without the flow cache it stayed at 1.6-2.0×, held back by the fast path's
  own cost (below); with it, around 2× and above, though single rows still fall under
  when a round is disturbed (the two cores are shared by everything in the bench).
- **TCP.** Linux forwarding wins: with GRO on the forwarder's veths the kernel merges each
  stream's segments into 64 KB packets and forwards one packet where every XDP candidate
  forwards some forty 1500-byte frames, each with its own program run and redirect (XDP sees
  frames before GRO). The fast path is level with the xdp-forward-style router and the bare
  redirect there; the AF_XDP path is level with testpmd, both bound by copy-mode transmit.
  At MTU 9000 (target: the fast path at least Linux's goodput) the same holds with fewer,
  larger frames: GRO still merges seven 9000-byte segments into one 64 KB packet for the
  kernel, while each XDP candidate handles every frame, in three buffers on veth, so Linux
  stays ahead in most runs (each cell is the median of three 3 s runs: single runs of
  Linux's one-stream figure at MTU 9000 have been 11.6-17.2 Gbit/s, the fast path's
  13.1-14.0, so one run can show either ahead). With 8 streams the receiving core is the
  bottleneck, through Linux and the fast path alike (profiled: the receiving iperf3's core
  90-93 % busy, the sender's 40-60 % idle); it also runs much of the forwarding, because
  the ACKs it sends clock the sender's next segments out from its own softirqs, and there
  each frame the fast path forwards costs a copy (below) where GRO saves the kernel work:
  9.3-12 Gbit/s against Linux's 14.5-19 in five ad-hoc runs. Profiled (`perf record -a -g`, one stream, 13.7 Gbit/s through the fast path
  against 17.5 through Linux in that run): the cost is veth's, not the program's. A frame
  the sender's stack hands to a veth whose peer runs XDP is an skb; veth copies it into
  page-pool pages for XDP (`veth_xdp_rcv_skb` → `skb_pp_cow_data` → `skb_copy_bits`):
  13 % of the busy CPU time, a copy the kernel's own forwarding never makes, against 2 %
  for xdpfwd's program. Every XDP candidate pays it (the bare redirect trails Linux too);
  on a NIC, XDP runs on the driver's pages before any skb exists. The AF_XDP path carries
  the data segments itself there, each in three UMEM frames (the sockets are multi-buffer,
  `XDP_USE_SG`): the kernel copies each segment into them on receive, and on transmit into
  an skb with the first frame as its head and a page fragment for each further one
  (`xsk_build_skb`), which is the cost its row shows; testpmd is not run at MTU 9000.
- **Why the AF_XDP path is level with testpmd, not 25 % ahead.** On veth, AF_XDP runs in
  copy mode: the kernel copies every frame into the UMEM on receive, and on transmit
  allocates an skb, copies the frame into it and pushes it through `veth_xmit` to the peer
  (`xsk_generic_xmit`), where the sink's XDP program makes veth copy it once more
  (`skb_pp_cow_data`). The profile above shows the forwarder's worker thread spending
  almost all of its core in that kernel path and only a few percent in xdpfwd's own code
  (the criterion figure: about 12 ns per packet). testpmd pays exactly the same kernel work
  per packet, so with user-space cost already near zero there is little left to win in copy
  mode: both saturate the same kernel transmit path. On the receive core, xdpfwd's XDP
  program does the router's classification (route trie, neighbour table), which testpmd's
  trivial program does not; that core is not the bottleneck here. Zero-copy drivers remove
  the copies and the skb allocation, which is where an AF_XDP forwarder pulls ahead; veth
  cannot show it. Both candidates' rates also jump between two levels about 15 % apart on
  this VM: seven consecutive 2-second windows at 512 B through one running instance gave
  xdpfwd 0.82-1.00 Mpps and testpmd 0.85-1.02 (each instance mostly at one level, some
  switching mid-run; xdpfwd's worker pinned with `--cpus 1` or not), so a run's AF_XDP /
  testpmd ratio between about 0.83 and 1.04 says which level each candidate caught more than
  which forwarder is faster.
- **The fast path** does the same work as the bare redirect plus the router's: the checks
  of `classify`, the flow cache's probe (a hash of the flow's seven key words and their
  compare) and, for a flow not seen in the current generation, the steering and policy
  rules, the route trie, the source check and the neighbour table (its own section above
  shows what the cache saves); then the rewrite, TTL and checksum included, and the
  redirect. On this machine each BPF call and its return costs about 7 ns inside the
  pipeline (five empty subprogram calls added to the bare redirect took it from 4.04 to
  3.53 Mpps): the kernel runs with the `Safe RET` mitigation of the CPU's return-stack flaw
  (SRSO), which sends every return, of a BPF subprogram or of a kernel helper, through a
  return thunk. So a cache hit makes about as many calls as the bare redirect: the
  interfaces sit in an array indexed by ifindex (a lookup the verifier inlines; a hash
  lookup is three calls), the plain fast-path case (no VLAN change, no NAT) is inline in
  the program's main function, one `bpf_redirect_map` both checks the
  device and sets the target, and the padding trim (`bpf_xdp_adjust_tail`) runs only for a
  frame that has padding. The program is built with unaligned memory access allowed, so a
  header field is one load rather than a byte at a time (the IPv4 header checksum is five
  words). `classify` and the probe are inlined into the program's main function, so a hit
  calls only `bpf_xdp_get_buff_len` (the whole length of a frame that may come in several
  buffers) and `bpf_redirect_map`; the stages of a miss are a subprogram of their own
  (`classify::decide`), called once per miss as `classify` was called once per frame
  before. That needed stack: the verifier allows 512 bytes to the frames of a call chain,
  and the main function's frame (about 200 bytes), `decide`'s (about 220) and the rule
  walk's under it (64) add up to about 490 now, after what the stages share moved into per-CPU
  maps and copies held across calls went (architecture.md, `route.rs`). Measured
  (`BPF_PROG_RUN` of one frame, the section above, and an ad-hoc run through a forwarder
  on the bench's tables): a hit went from 95-99 to 84-87 ns, a miss stayed where it was
  (241-271 ns with the harness's rules and rewrites; 204-211 ns on the bench's tables,
  after `decide` took the ingress interface as an argument rather than looking it up
  again, which had cost 12 ns); the fast path went from 0.87-0.89× of the bare redirect
  to 0.90-0.94× in the runs of `cargo xtask bench --xdp` then, and 0.91-0.97× in a full
  bench. Where this table's ratio is lower, look at the generator's own column first: when
  it moves from one frame size to the next (steady at 7.2-7.5 Mpps in a quiet run), the
  VM was disturbed, and the program alone (the section above, stable to a nanosecond)
  says whether the program changed. A tail call,
  tried before for the same purpose, gained a hit 1-3 ns and cost every miss 15-35 ns
  (checks made again, or handed over through a map, in a second program), so it was not
  kept. Left: `bpf_xdp_get_buff_len` (about 7 ns; the program cannot tell a frame in one
  buffer from one in several without it: the flag is in the kernel's `xdp_buff`, which a
  program reaches only through a kfunc, and aya 0.14 cannot load kfunc calls; aya 0.16
  can, but needs rustc 1.98), and the program's own instructions.
- **Ping round trips.** With its worker polling (`--idle-spin 20000`), the AF_XDP path's
  round trip is testpmd's: traced with the `xdp:xdp_redirect`, `net:*` and `sendto`
  tracepoints (20 pings each, same topology), the request reaches the worker's socket about
  22 µs after ping's `sendto` with either forwarder, each worker turns a frame around in
  2-4 µs, and the reply reaches the client's stack 49 µs (xdpfwd) and 48 µs (testpmd) after
  the `sendto`, medians. The averages in the table move by 10-30 µs from run to run (a
  single slow round trip of 0.1-0.8 ms, of which every run has a few, moves a 300-ping
  average by several µs), so one run may put either ahead. With the default `--idle-spin`
  the worker sleeps between pings 10 ms apart, and waking it adds tens of µs.
- Two cores are shared by the generator, the kernel's softirq work and the forwarder, so
  absolute figures are low and move between runs; compare the ratios within a run.
"#,
            quick = if self.quick { " --quick" } else { "" },
            cpu = cpu.trim(),
            kernel = kernel.trim(),
            window = self.window.as_secs_f64(),
            rounds = self.rounds,
            table = self.table(),
            ratios = self.ratios(),
            tcp = self.tcp_table(),
            full_table = self.table,
            syscalls = if self.syscalls_per_pkt.is_empty() {
                "n/a".to_string()
            } else {
                format!(
                    "{:.4} (median of {} runs)",
                    median(&self.syscalls_per_pkt),
                    self.syscalls_per_pkt.len()
                )
            },
            idle = self.idle * 100.0,
            idle_tuned = self.idle_tuned * 100.0,
            pings = PINGS,
            micro = self.micro,
            profile = self.profile,
            capture = self.capture,
            huge_pages = self.huge_pages,
            flow_cache = self.flow_cache,
            program = self.program,
            program_samples = PROGRAM_SAMPLES,
            program_repeat = PROGRAM_REPEAT,
        ))
    }

    fn svg(&self) -> anyhow::Result<String> {
        use plotters::prelude::*;
        let mut out = String::new();
        {
            let root = SVGBackend::with_string(&mut out, (900, 520)).into_drawing_area();
            root.fill(&WHITE)?;
            let max = Candidate::ALL
                .iter()
                .flat_map(|c| (0..self.sizes.len()).map(move |si| (c, si)))
                .map(|(c, si)| self.mpps(*c, si))
                .fold(0.0f64, f64::max)
                .max(0.1)
                * 1.15;
            let xmax = *self.sizes.last().unwrap_or(&1518) as f64 + 50.0;
            let mut chart = ChartBuilder::on(&root)
                .caption("Forwarded packets per second vs frame size", ("sans-serif", 22))
                .margin(15)
                .x_label_area_size(45)
                .y_label_area_size(60)
                .build_cartesian_2d(0f64..xmax, 0f64..max)?;
            chart.configure_mesh().x_desc("frame size (bytes)").y_desc("Mpps").draw()?;
            let colors = [RGBColor(230, 120, 0), RED, BLUE, CYAN, GREEN, MAGENTA, BLACK];
            for (c, color) in Candidate::ALL.iter().zip(colors) {
                let points: Vec<(f64, f64)> = self
                    .sizes
                    .iter()
                    .enumerate()
                    .map(|(si, s)| (*s as f64, self.mpps(*c, si)))
                    .collect();
                chart
                    .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                    .label(c.name())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
                chart.draw_series(points.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()?;
            root.present()?;
        }
        Ok(out)
    }
}

/// Calls of [`program_alone`]'s runs, and runs per call (a frame's TTL of 255 allows 250).
const PROGRAM_SAMPLES: usize = 2000;
const PROGRAM_REPEAT: u32 = 200;
/// The action a frame the fast path forwards comes back with.
const XDP_REDIRECT: u32 = 4;

/// The XDP program's time per frame on the fast path, IPv4 and IPv6, with a flow-cache hit
/// and with every stage (cache off): a markdown table.
fn program_alone() -> anyhow::Result<String> {
    use xdpfwd_tests::xdp_harness::{Harness, looping_frame};
    // `Harness::new` moves its thread into a namespace of its own.
    let measured = thread::spawn(|| -> anyhow::Result<String> {
        let mut h = Harness::new()?;
        h.attach_native()?;
        h.enable_redirect()?;
        h.loop_back()?;
        let mut out = String::from(
            "| frame | flow cache hit (ns) | every stage, cache off (ns) |\n|---|---|---|\n",
        );
        for (name, v6) in [("IPv4 UDP, 60 B", false), ("IPv6 TCP, 74 B", true)] {
            let frame = looping_frame(v6);
            let mut cell = |cache: bool| -> anyhow::Result<u32> {
                h.set_flow_cache(cache)?;
                // The first run fills the cache; the first calls warm the CPU's caches.
                for _ in 0..PROGRAM_SAMPLES / 4 {
                    h.time(&frame, PROGRAM_REPEAT)?;
                }
                let mut ns = Vec::with_capacity(PROGRAM_SAMPLES);
                for _ in 0..PROGRAM_SAMPLES {
                    let (action, t) = h.time(&frame, PROGRAM_REPEAT)?;
                    if action != XDP_REDIRECT {
                        bail!("{name}: action {action}, not XDP_REDIRECT");
                    }
                    ns.push(t);
                }
                ns.sort_unstable();
                Ok(ns[ns.len() / 2])
            };
            let [hit, off] = [cell(true)?, cell(false)?];
            let _ = writeln!(out, "| {name} | {hit} | {off} |");
        }
        Ok(out)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the program-alone thread panicked"))??;
    Ok(measured)
}
