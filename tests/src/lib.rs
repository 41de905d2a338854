//! Helpers for the privileged integration tests and the demo: a three-namespace topology on
//! veth pairs, the `xdpfwd` process, sockets opened inside a namespace, and routing daemons
//! (FRR, BIRD) run in those namespaces ([`daemons`]).
//!
//! ```text
//!   client ns                forwarder ns                 server ns
//!   {p}c0 198.18.1.2/24 ─── {p}f0 198.18.1.1/24
//!         2001:2:0:1::2/64       2001:2:0:1::1/64
//!                                {p}f1 198.18.2.1/24 ─── {p}s0 198.18.2.2/24
//!                                      2001:2:0:2::1/64        2001:2:0:2::2/64
//! ```
//!
//! Addresses come from the benchmarking ranges (198.18.0.0/15, 2001:2::/48). Everything is
//! created with unique names and removed on drop, also when a test fails.

use std::{
    fs::File,
    io::{BufRead, BufReader, Read},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

pub mod capture;
pub mod daemons;
pub mod generator;
pub mod mirror;
pub mod packet;
pub mod prog_run;
pub mod routed;
pub mod traffic;
pub mod xdp_harness;

/// Runs a command, failing with its stderr.
pub fn sh(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {args:?}"))?;
    if !out.status.success() {
        bail!("{args:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls `f` every 50 ms until it returns true (then true) or `timeout` passes (then false);
/// `f` runs at least once.
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `args` inside network namespace `ns`.
pub fn ns_sh(ns: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(args);
    sh(&full)
}

pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
pub const FWD_V4_A: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
pub const FWD_V4_B: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
pub const SERVER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 2);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 2);
pub const FWD_V6_A: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 1);
pub const FWD_V6_B: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 2, 0, 0, 0, 1);
pub const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 2, 0, 0, 0, 2);

/// client — forwarder — server, joined by two veth pairs.
pub struct Topology {
    pub prefix: String,
    pub client: String,
    pub fwd: String,
    pub server: String,
    /// client side of the first pair (in `client`)
    pub c0: String,
    /// forwarder side of the first pair
    pub f0: String,
    /// forwarder side of the second pair
    pub f1: String,
    /// server side of the second pair (in `server`)
    pub s0: String,
}

impl Topology {
    /// Creates the topology with kernel forwarding `forwarding` in the forwarder namespace.
    pub fn new(tag: &str, forwarding: bool) -> anyhow::Result<Self> {
        Self::with_queues(tag, forwarding, 1)
    }

    /// Like [`Topology::new`], with `queues` rx and tx queues on every veth.
    pub fn with_queues(tag: &str, forwarding: bool, queues: u32) -> anyhow::Result<Self> {
        Self::build(tag, forwarding, queues, [None, None])
    }

    /// Like [`Topology::new`], with the forwarder's interfaces `f0` and `f1` given these
    /// ifindexes where `Some` (the namespace is new: no other interface holds them).
    pub fn with_ifindexes(
        tag: &str,
        forwarding: bool,
        ifindexes: [Option<u32>; 2],
    ) -> anyhow::Result<Self> {
        Self::build(tag, forwarding, 1, ifindexes)
    }

    fn build(
        tag: &str,
        forwarding: bool,
        queues: u32,
        ifindexes: [Option<u32>; 2],
    ) -> anyhow::Result<Self> {
        static N: AtomicU32 = AtomicU32::new(0);
        let prefix = format!(
            "xf{}{}{}",
            tag,
            std::process::id() % 10_000,
            N.fetch_add(1, Ordering::Relaxed)
        );
        // Interface names are at most 15 bytes.
        let prefix: String = prefix.chars().take(12).collect();
        let t = Topology {
            client: format!("{prefix}c"),
            fwd: format!("{prefix}f"),
            server: format!("{prefix}s"),
            c0: format!("{prefix}c0"),
            f0: format!("{prefix}f0"),
            f1: format!("{prefix}f1"),
            s0: format!("{prefix}s0"),
            prefix,
        };
        t.create(forwarding, queues, ifindexes).inspect_err(|_| t.destroy())?;
        Ok(t)
    }

    fn create(
        &self,
        forwarding: bool,
        queues: u32,
        ifindexes: [Option<u32>; 2],
    ) -> anyhow::Result<()> {
        for ns in [&self.client, &self.fwd, &self.server] {
            sh(&["ip", "netns", "add", ns])?;
            ns_sh(ns, &["ip", "link", "set", "lo", "up"])?;
            // No instance runs in a new namespace: a stats directory under its inode number
            // is a leftover of a test killed in an earlier one (inode numbers are reused).
            let ino = ns_sh(ns, &["stat", "-L", "-c", "%i", "/proc/self/ns/net"])?;
            let _ = std::fs::remove_dir_all(Path::new("/run/xdpfwd").join(ino.trim()));
            // No duplicate address detection: a fresh link's tentative link-local address
            // would delay neighbour solicitations by a second or two.
            ns_sh(
                ns,
                &[
                    "sysctl",
                    "-qw",
                    "net.ipv6.conf.all.accept_dad=0",
                    "net.ipv6.conf.default.accept_dad=0",
                ],
            )?;
        }
        let q = queues.to_string();
        let qs = ["numrxqueues", q.as_str(), "numtxqueues", q.as_str()];
        let ifindexes = ifindexes.map(|i| i.map(|i| i.to_string()));
        for ((a, a_ns, b, b_ns), b_index) in [
            (&self.c0, &self.client, &self.f0, &self.fwd),
            (&self.s0, &self.server, &self.f1, &self.fwd),
        ]
        .into_iter()
        .zip(&ifindexes)
        {
            let mut args = vec!["ip", "link", "add", a.as_str(), "netns", a_ns.as_str()];
            args.extend_from_slice(&qs);
            // The kernel takes the peer's index only with one for the device itself: the
            // same, in the client's or server's namespace (new too).
            if let Some(index) = b_index {
                args.extend_from_slice(&["index", index]);
            }
            args.extend_from_slice(&[
                "type",
                "veth",
                "peer",
                "name",
                b.as_str(),
                "netns",
                b_ns.as_str(),
            ]);
            args.extend_from_slice(&qs);
            if let Some(index) = b_index {
                args.extend_from_slice(&["index", index]);
            }
            sh(&args)?;
        }
        let addr = |ns: &str, dev: &str, a: &str| -> anyhow::Result<()> {
            sh(&["ip", "-n", ns, "addr", "add", a, "dev", dev, "nodad"]).map(|_| ())
        };
        addr(&self.client, &self.c0, "198.18.1.2/24")?;
        addr(&self.client, &self.c0, "2001:2:0:1::2/64")?;
        addr(&self.fwd, &self.f0, "198.18.1.1/24")?;
        addr(&self.fwd, &self.f0, "2001:2:0:1::1/64")?;
        addr(&self.fwd, &self.f1, "198.18.2.1/24")?;
        addr(&self.fwd, &self.f1, "2001:2:0:2::1/64")?;
        addr(&self.server, &self.s0, "198.18.2.2/24")?;
        addr(&self.server, &self.s0, "2001:2:0:2::2/64")?;
        for (ns, dev) in [
            (&self.client, &self.c0),
            (&self.fwd, &self.f0),
            (&self.fwd, &self.f1),
            (&self.server, &self.s0),
        ] {
            sh(&["ip", "-n", ns, "link", "set", dev, "up"])?;
        }
        sh(&["ip", "-n", &self.client, "route", "add", "default", "via", "198.18.1.1"])?;
        sh(&["ip", "-n", &self.client, "-6", "route", "add", "default", "via", "2001:2:0:1::1"])?;
        sh(&["ip", "-n", &self.server, "route", "add", "default", "via", "198.18.2.1"])?;
        sh(&["ip", "-n", &self.server, "-6", "route", "add", "default", "via", "2001:2:0:2::1"])?;
        self.set_forwarding(forwarding)?;
        // The namespaces' own stacks leave TCP/UDP checksums to the (virtual) NIC; any XDP or
        // AF_XDP path forwards them as they are, so compute them in software on the senders.
        ns_sh(&self.client, &["ethtool", "-K", &self.c0, "tx", "off"])?;
        ns_sh(&self.server, &["ethtool", "-K", &self.s0, "tx", "off"])?;
        Ok(())
    }

    /// Enables GRO on the client's and server's interfaces: a veth drops frames redirected
    /// into it (XDP_REDIRECT, the fast path) unless its peer has GRO or an XDP program.
    pub fn enable_gro(&self) -> anyhow::Result<()> {
        ns_sh(&self.client, &["ethtool", "-K", &self.c0, "gro", "on"])?;
        ns_sh(&self.server, &["ethtool", "-K", &self.s0, "gro", "on"])?;
        Ok(())
    }

    /// Sets the MTU of both ends of the client's link and of the server's link.
    pub fn set_mtu(&self, client_link: u32, server_link: u32) -> anyhow::Result<()> {
        for (ns, dev, mtu) in [
            (&self.client, &self.c0, client_link),
            (&self.fwd, &self.f0, client_link),
            (&self.fwd, &self.f1, server_link),
            (&self.server, &self.s0, server_link),
        ] {
            sh(&["ip", "-n", ns, "link", "set", dev, "mtu", &mtu.to_string()])?;
        }
        Ok(())
    }

    /// Turns the forwarder namespace's kernel forwarding on or off (IPv4 and IPv6).
    pub fn set_forwarding(&self, on: bool) -> anyhow::Result<()> {
        let v = if on { "1" } else { "0" };
        ns_sh(&self.fwd, &["sysctl", "-qw", &format!("net.ipv4.ip_forward={v}")])?;
        ns_sh(&self.fwd, &["sysctl", "-qw", &format!("net.ipv6.conf.all.forwarding={v}")])?;
        Ok(())
    }

    /// MAC address of `dev` in `ns`.
    pub fn mac(&self, ns: &str, dev: &str) -> anyhow::Result<[u8; 6]> {
        let out = sh(&["ip", "-n", ns, "-o", "link", "show", dev])?;
        let text = out.split("link/ether ").nth(1).context("no link/ether")?;
        let mut mac = [0u8; 6];
        for (i, part) in text.split_whitespace().next().unwrap_or("").split(':').enumerate().take(6)
        {
            mac[i] = u8::from_str_radix(part, 16)?;
        }
        Ok(mac)
    }

    /// Whether any XDP program is attached to the forwarder's interfaces.
    pub fn xdp_attached(&self) -> bool {
        [&self.f0, &self.f1].iter().any(|dev| {
            sh(&["ip", "-n", &self.fwd, "link", "show", dev])
                .map(|o| o.contains("xdp"))
                .unwrap_or(false)
        })
    }

    /// Pings `dst` from `ns`; true when `count` replies came back.
    pub fn ping(&self, ns: &str, dst: IpAddr, count: u32) -> bool {
        let count = count.to_string();
        ns_sh(ns, &["ping", "-q", "-c", &count, "-i", "0.1", "-W", "2", &dst.to_string()]).is_ok()
    }

    fn destroy(&self) {
        for ns in [&self.client, &self.fwd, &self.server] {
            let _ = Command::new("ip").args(["netns", "del", ns]).stderr(Stdio::null()).status();
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.destroy();
    }
}

/// Path of the `xdpfwd` binary: `$XDPFWD_BIN`, or the release build in this workspace.
pub fn xdpfwd_bin() -> PathBuf {
    std::env::var_os("XDPFWD_BIN").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/xdpfwd")
    })
}

/// A running `xdpfwd`, killed on drop.
pub struct Forwarder {
    child: Option<Child>,
    stdout: mpsc::Receiver<String>,
    stderr: thread::JoinHandle<String>,
    pub ready_line: String,
}

/// What a stopped `xdpfwd` left.
#[derive(Debug)]
pub struct Finished {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Forwarder {
    /// Starts `xdpfwd run ARGS` in `ns` and waits until it is forwarding.
    pub fn start(ns: &str, args: &[&str]) -> anyhow::Result<Self> {
        Self::start_wrapped(ns, &[], args)
    }

    /// Like [`Forwarder::start`], through a wrapper command (e.g. `setpriv ... --`).
    pub fn start_wrapped(ns: &str, wrapper: &[&str], args: &[&str]) -> anyhow::Result<Self> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(wrapper)
            .arg(xdpfwd_bin())
            .arg("run")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting xdpfwd")?;
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().context("stdout")?;
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut err = child.stderr.take().context("stderr")?;
        let stderr = thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        let mut fwd =
            Forwarder { child: Some(child), stdout: rx, stderr, ready_line: String::new() };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            match fwd.stdout.recv_timeout(Duration::from_millis(100)) {
                Ok(line) if line.contains("ready:") => {
                    fwd.ready_line = line;
                    return Ok(fwd);
                }
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        let done = fwd.stop_with(libc::SIGKILL)?;
        bail!("xdpfwd did not become ready: {}{}", done.stdout, done.stderr)
    }

    /// The process id (of `ip netns exec`, which execs xdpfwd).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends `signal` (`SIGSTOP` / `SIGCONT` to hold the process while the kernel changes).
    pub fn signal(&self, signal: i32) {
        if let Some(child) = &self.child {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(child.id() as i32, signal) };
        }
    }

    /// Sends `signal` and waits (at most 20 s) for the exit.
    pub fn stop_with(&mut self, signal: i32) -> anyhow::Result<Finished> {
        let mut child = self.child.take().context("already stopped")?;
        let status = signal_and_wait(&mut child, signal, Duration::from_secs(20))?;
        let mut stdout = String::new();
        while let Ok(line) = self.stdout.recv_timeout(Duration::from_millis(500)) {
            stdout.push_str(&line);
            stdout.push('\n');
        }
        let stderr = std::mem::replace(&mut self.stderr, thread::spawn(String::new))
            .join()
            .unwrap_or_default();
        Ok(Finished { success: status.success(), code: status.code(), stdout, stderr })
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) -> anyhow::Result<Finished> {
        self.stop_with(libc::SIGTERM)
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        if thread::panicking() {
            // A failing test shows what the forwarder said: its log is the diagnosis.
            if let Ok(done) = self.stop_with(libc::SIGTERM) {
                eprintln!("--- the forwarder's log ---\n{}{}", done.stdout, done.stderr);
            }
            return;
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends `signal` to `child` and waits for its exit; kills it after `timeout`.
pub fn signal_and_wait(
    child: &mut Child,
    signal: i32,
    timeout: Duration,
) -> std::io::Result<std::process::ExitStatus> {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(child.id() as i32, signal) };
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return child.wait();
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `f` on a thread that has entered network namespace `ns`; sockets it creates stay in
/// that namespace wherever they are used afterwards.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    let path = format!("/run/netns/{ns}");
    thread::spawn(move || -> anyhow::Result<T> {
        let file = File::open(&path).with_context(|| format!("opening {path}"))?;
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in {ns} panicked"))?
}

/// utime + stime of a process, in seconds (0 when it is gone).
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat; `after` starts at field 3. Clock ticks are 1/100 s on Linux.
    let ticks = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(14) + ticks(15)) / 100.0
}

/// Final counter lines of a stopped forwarder: "forwarded N packets".
pub fn forwarded_packets(stdout: &str) -> Option<u64> {
    let line = stdout.lines().find(|l| l.contains("final: forwarded"))?;
    line.split("forwarded ").nth(1)?.split_whitespace().next()?.parse().ok()
}

/// Value of `name=N` in the forwarder's final `xdp:` counters line.
pub fn xdp_counter(stdout: &str, name: &str) -> u64 {
    stdout
        .lines()
        .find(|l| l.trim_start().starts_with("xdp:"))
        .and_then(|l| {
            l.split_whitespace().find_map(|kv| kv.strip_prefix(&format!("{name}="))?.parse().ok())
        })
        .unwrap_or(0)
}

/// Frames the XDP program forwarded itself or steered to the workers, whichever path the
/// egress took (`fast_forwarded` + `steered`, from the final `xdp:` line).
pub fn xdpfwd_took(stdout: &str) -> u64 {
    xdp_counter(stdout, "steered") + xdp_counter(stdout, "fast_forwarded")
}

/// Runs `xdpfwd ARGS` in `ns` (optionally through a wrapper such as `setpriv`) and expects it to
/// exit on its own within 20 s (for invalid invocations).
pub fn run_to_exit(ns: &str, wrapper: &[&str], args: &[&str]) -> anyhow::Result<Finished> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(wrapper)
        .arg(xdpfwd_bin())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("xdpfwd {args:?} did not exit");
        }
        thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output()?;
    Ok(Finished {
        success: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// `xdpfwd stats --json` of the instance in `ns`, once.
pub fn stats_json(ns: &str) -> serde_json::Value {
    let out = run_to_exit(ns, &[], &["stats", "--json", "--count", "1"]).unwrap();
    assert!(out.success, "{out:?}");
    serde_json::from_str(out.stdout.lines().next().unwrap()).unwrap()
}

/// The number after `key` in a forwarder report ("heap allocations 0" → 0).
pub fn report_value(stdout: &str, key: &str) -> Option<u64> {
    let at = stdout.find(key)? + key.len();
    stdout[at..].split_whitespace().next()?.trim_end_matches([',', ';', ')']).parse().ok()
}

/// The frame accounting line of a report: (total, free, fill, tx, held).
pub fn frame_accounting(stdout: &str) -> Option<(u64, u64, u64, u64, u64)> {
    Some((
        report_value(stdout, "frames: total")?,
        report_value(stdout, "= free")?,
        report_value(stdout, "+ fill")?,
        report_value(stdout, "+ tx")?,
        report_value(stdout, "+ held")?,
    ))
}

impl Topology {
    /// Static neighbour entries on the forwarder for the client and the server, so that no
    /// resolution is needed (a sink that drops everything does not answer ARP).
    pub fn static_neighbours(&self) -> anyhow::Result<()> {
        let c = fmt_mac(self.mac(&self.client, &self.c0)?);
        let s = fmt_mac(self.mac(&self.server, &self.s0)?);
        for (addr, mac, dev) in [
            ("198.18.1.2", &c, &self.f0),
            ("2001:2:0:1::2", &c, &self.f0),
            ("198.18.2.2", &s, &self.f1),
            ("2001:2:0:2::2", &s, &self.f1),
        ] {
            self.permanent_neighbour(addr, mac, dev)?;
        }
        Ok(())
    }
}

impl Topology {
    /// A permanent neighbour entry in the forwarder: `addr` is `mac` on `dev`.
    pub fn permanent_neighbour(&self, addr: &str, mac: &str, dev: &str) -> anyhow::Result<()> {
        let args = ["neigh", "replace", addr, "lladdr", mac, "dev", dev, "nud", "permanent"];
        let mut full = vec!["ip", "-n", self.fwd.as_str()];
        full.extend_from_slice(&args);
        sh(&full).map(|_| ())
    }

    /// A second link between the forwarder and the server, `{p}f2` 198.18.3.1/24,
    /// 2001:2:0:3::1/64 ─── `{p}s2` 198.18.3.2/24, 2001:2:0:3::2/64; it goes away with the
    /// namespaces. Returns the two interface names.
    pub fn second_link(&self) -> anyhow::Result<(String, String)> {
        let (f2, s2) = (format!("{}f2", self.prefix), format!("{}s2", self.prefix));
        sh(&[
            "ip",
            "link",
            "add",
            &f2,
            "netns",
            &self.fwd,
            "type",
            "veth",
            "peer",
            "name",
            &s2,
            "netns",
            &self.server,
        ])?;
        for (ns, dev, v4, v6) in [
            (&self.fwd, &f2, "198.18.3.1/24", "2001:2:0:3::1/64"),
            (&self.server, &s2, "198.18.3.2/24", "2001:2:0:3::2/64"),
        ] {
            sh(&["ip", "-n", ns, "addr", "add", v4, "dev", dev])?;
            sh(&["ip", "-n", ns, "addr", "add", v6, "dev", dev, "nodad"])?;
            sh(&["ip", "-n", ns, "link", "set", dev, "up"])?;
        }
        ns_sh(&self.server, &["ethtool", "-K", &s2, "tx", "off"])?;
        Ok((f2, s2))
    }
}

/// "aa:bb:cc:dd:ee:ff"
pub fn fmt_mac(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}
