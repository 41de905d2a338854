//! The full-table part of the bench: an Internet-sized FIB (983,040 + 16 IPv4 and 250,000
//! IPv6 routes) in the forwarder's namespace. How fast the kernel installs it, how long
//! xdpfwd takes to mirror it at start and the memory its tries take, the rate of route
//! changes it follows next to the kernel's own, and the fast path's rate at 64 B with the
//! full table next to the usual handful of routes.
//!
//! Addresses stay in 198.18.0.0/15 and 2001:2::/48: `main` gets every host route of
//! 198.19.0.0/16 and a route of every length from /16 to /31 (but /24, the connected one)
//! around the sink's address, all through the sink, so the lookup of every frame walks the
//! deepest path the trie has; 14 more tables hold the same host routes (the kernel and the
//! trie hold each); IPv6 /80s go into tables of their own.

use std::{
    fmt::Write as _,
    fs, thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use xdpfwd_tests::{Forwarder, generator::Sink, run_to_exit, sh};

use super::{Bench, Candidate, Running, median};

/// Tables of 65,536 IPv4 host routes (main and 14 more).
const V4_TABLES: u32 = 15;
const V6_ROUTES: u32 = 250_000;
/// Routes added while xdpfwd runs, to measure the change rate it follows.
const CHANGES: u32 = 65_536;

/// What the full-table part measured.
pub(super) struct TableBench {
    routes_v4: u64,
    routes_v6: u64,
    kernel_install: Duration,
    start_small: Duration,
    start_full: Duration,
    route_bytes: (u64, u64),
    rss_bytes: u64,
    kernel_change: Duration,
    follow_change: Duration,
    small_mpps: f64,
    full_mpps: f64,
}

fn v4_table(t: u32) -> String {
    if t == 0 { "main".into() } else { (1000 + t).to_string() }
}

/// The `ip -batch` lines of the full table (`dev` leads to the sink).
fn full_table(dev: &str) -> String {
    let mut b = String::new();
    for len in (16..32).filter(|l| *l != 24) {
        let net = u32::from_be_bytes([198, 18, 2, 2]) & (u32::MAX << (32 - len));
        let [a, b2, c, d] = net.to_be_bytes();
        let _ = writeln!(b, "route add {a}.{b2}.{c}.{d}/{len} dev {dev}");
    }
    for t in 0..V4_TABLES {
        for i in 0..65_536u32 {
            let _ = writeln!(
                b,
                "route add 198.19.{}.{}/32 via 198.18.2.2 dev {dev} table {}",
                i / 256,
                i % 256,
                v4_table(t)
            );
        }
    }
    for i in 0..V6_ROUTES {
        let _ = writeln!(
            b,
            "route add 2001:2:0:{:x}:{:x}::/80 dev {dev} table {}",
            0x8000 + i / 65_536,
            i % 65_536,
            1200 + i / 65_536
        );
    }
    b
}

/// Runs `ip -n NS -batch` over `lines`; returns how long the kernel took.
fn batch(ns: &str, name: &str, lines: &str) -> anyhow::Result<Duration> {
    let file = std::env::temp_dir().join(format!("xdpfwd-bench-{ns}-{name}.batch"));
    fs::write(&file, lines)?;
    let started = Instant::now();
    let done = sh(&["ip", "-n", ns, "-batch", &file.to_string_lossy()]);
    let took = started.elapsed();
    let _ = fs::remove_file(&file);
    done.with_context(|| format!("installing the {name} routes"))?;
    Ok(took)
}

/// The `tables` figures of the instance running in `ns`.
fn tables(ns: &str) -> anyhow::Result<serde_json::Value> {
    let out = run_to_exit(ns, &[], &["stats", "--json", "--count", "1"])?;
    if !out.success {
        bail!("xdpfwd stats: {}", out.stderr);
    }
    let doc: serde_json::Value =
        serde_json::from_str(out.stdout.lines().next().context("no stats")?)?;
    Ok(doc["stats"]["tables"].clone())
}

fn rss_bytes(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

impl Bench {
    /// Starts the fast path and returns it with the time it took to be ready.
    fn start_fast(&self) -> anyhow::Result<(Running, Duration)> {
        let t = &self.topo;
        t.set_forwarding(false)?;
        let started = Instant::now();
        let args = [t.f0.as_str(), &t.f1, "--stats-interval", "0", "--default-path", "fast"];
        let fwd = Forwarder::start(&t.fwd, &args)?;
        Ok((Running::Xdpfwd(fwd), started.elapsed()))
    }

    fn fast_mpps(
        &self,
        sink: &Sink,
        running: &Running,
        rounds: usize,
        window: Duration,
    ) -> anyhow::Result<f64> {
        let mut v = Vec::new();
        for _ in 0..rounds {
            v.push(self.measure(sink, running, 64, window)?.pps / 1e6);
        }
        Ok(median(&v))
    }

    /// The full-table measurements; the table is removed again afterwards.
    pub(super) fn table(
        &self,
        sink: &Sink,
        rounds: usize,
        window: Duration,
    ) -> anyhow::Result<TableBench> {
        let ns = self.topo.fwd.clone();
        let (mut running, start_small) = self.start_fast()?;
        let small_mpps = self.fast_mpps(sink, &running, rounds, window)?;
        self.stop(&mut running)?;

        eprintln!("bench: installing the full table");
        let kernel_install = batch(&ns, "full", &full_table(&self.topo.f1));
        let result = kernel_install.and_then(|kernel_install| {
            self.with_full_table(sink, (rounds, window), (kernel_install, start_small, small_mpps))
        });
        eprintln!("bench: removing the full table");
        for t in (1..V4_TABLES).map(v4_table).chain((0..4).map(|i| (1200 + i).to_string())) {
            let _ = sh(&["ip", "-n", &ns, "route", "flush", "table", &t]);
        }
        let _ = sh(&["ip", "-n", &ns, "route", "flush", "table", "1100"]);
        let _ = sh(&["ip", "-n", &ns, "route", "flush", "root", "198.19.0.0/16"]);
        for len in (16..32).filter(|l| *l != 24) {
            let net = u32::from_be_bytes([198, 18, 2, 2]) & (u32::MAX << (32 - len));
            let [a, b, c, d] = net.to_be_bytes();
            let _ = sh(&["ip", "-n", &ns, "route", "del", &format!("{a}.{b}.{c}.{d}/{len}")]);
        }
        result
    }

    fn with_full_table(
        &self,
        sink: &Sink,
        (rounds, window): (usize, Duration),
        (kernel_install, start_small, small_mpps): (Duration, Duration, f64),
    ) -> anyhow::Result<TableBench> {
        let ns = self.topo.fwd.clone();
        let (mut running, start_full) = self.start_fast()?;
        let pid = match &running {
            Running::Xdpfwd(f) => f.pid(),
            _ => 0,
        };
        let full = tables(&ns)?;
        let figure = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or(0);
        let full_mpps = self.fast_mpps(sink, &running, rounds, window)?;

        eprintln!("bench: {CHANGES} route changes while xdpfwd runs");
        let mut changes = String::new();
        for i in 0..CHANGES {
            let _ = writeln!(
                changes,
                "route add 198.19.{}.{}/32 via 198.18.2.2 dev {} table 1100",
                i / 256,
                i % 256,
                self.topo.f1
            );
        }
        let want = figure(&full, "routes_v4") + u64::from(CHANGES);
        let started = Instant::now();
        let kernel_change = batch(&ns, "changes", &changes)?;
        let deadline = started + Duration::from_secs(300);
        let follow_change = loop {
            if figure(&tables(&ns)?, "routes_v4") >= want {
                break started.elapsed();
            }
            if Instant::now() > deadline {
                bail!("xdpfwd did not follow the route changes within 300 s");
            }
            thread::sleep(Duration::from_millis(100));
        };
        let rss = rss_bytes(pid);
        self.stop(&mut running)?;
        Ok(TableBench {
            routes_v4: figure(&full, "routes_v4"),
            routes_v6: figure(&full, "routes_v6"),
            kernel_install,
            start_small,
            start_full,
            route_bytes: (figure(&full, "route_bytes_v4"), figure(&full, "route_bytes_v6")),
            rss_bytes: rss,
            kernel_change,
            follow_change,
            small_mpps,
            full_mpps,
        })
    }
}

impl TableBench {
    /// The section of `docs/performance.md`.
    pub(super) fn markdown(&self) -> String {
        let mib = |b: u64| b as f64 / f64::from(1 << 20);
        let per_s = |n: f64, d: Duration| n / d.as_secs_f64().max(1e-9);
        let total = (self.routes_v4 + self.routes_v6) as f64;
        let mirror = self.start_full.saturating_sub(self.start_small);
        format!(
            "## A full table\n\n\
             The forwarder's namespace gets an Internet-sized FIB: {v4} IPv4 routes (every host \
             route of 198.19.0.0/16 in `main` and 14 more tables, and routes of every length from \
             /16 to /31 around the sink's address, so each frame's lookup walks the deepest path \
             of the trie) and {v6} IPv6 routes, then xdpfwd runs the fast path ({candidate}).\n\n\
             | | figure |\n|---|---|\n\
             | the kernel installs the table (`ip -batch`) | {ki:.1} s ({kir:.0} routes/s) |\n\
             | xdpfwd start to ready: a handful of routes / the full table | {ss:.2} s / {sf:.2} s |\n\
             | mirroring the full table at start | {mirror:.2} s ({mr:.0} routes/s) |\n\
             | route tries' memory (the kernel's `memlock` of the maps), IPv4 / IPv6 | {b4:.0} MiB / {b6:.0} MiB |\n\
             | xdpfwd resident memory with the full table | {rss:.0} MiB |\n\
             | {changes} routes added while it runs: the kernel installs them | {kc:.2} s ({kcr:.0} routes/s) |\n\
             | ... and xdpfwd's tries hold them all after | {fc:.2} s ({fcr:.0} routes/s) |\n\
             | fast path at 64 B: a handful of routes / the full table | {sm:.3} / {fm:.3} Mpps ({ratio:.2}x; target ≥ 0.90x) |\n\n",
            v4 = self.routes_v4,
            v6 = self.routes_v6,
            candidate = Candidate::Fast.name(),
            ki = self.kernel_install.as_secs_f64(),
            kir = per_s(total, self.kernel_install),
            ss = self.start_small.as_secs_f64(),
            sf = self.start_full.as_secs_f64(),
            mirror = mirror.as_secs_f64(),
            mr = per_s(total, mirror),
            b4 = mib(self.route_bytes.0),
            b6 = mib(self.route_bytes.1),
            rss = mib(self.rss_bytes),
            kc = self.kernel_change.as_secs_f64(),
            changes = CHANGES,
            kcr = per_s(f64::from(CHANGES), self.kernel_change),
            fc = self.follow_change.as_secs_f64(),
            fcr = per_s(f64::from(CHANGES), self.follow_change),
            sm = self.small_mpps,
            fm = self.full_mpps,
            ratio = self.full_mpps / self.small_mpps.max(1e-9),
        )
    }
}
