//! A [`Snapshot`]: everything at one instant, gathered by a [`StatsSource`] from the
//! workers' counters, the sockets' kernel statistics and the XDP program's per-CPU
//! counters. The periodic reports, the final report, `xdpfwd stats` and `/metrics` show it.
//! Every part decodes with defaults, so a `stats` client reads an older or newer instance.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Instant,
};

use aya::maps::{MapData, PerCpuArray};
use serde::{Deserialize, Serialize};
use xdpfwd_common::Counter;

use crate::{
    alloc_count,
    flow_cache::{CacheFigures, CacheStats},
    icmp::IcmpFigures,
    policy::{HitFigure, SharedHits},
    shared::Shared,
    stats::{PortStats, WorkerStats},
    xsk,
};

/// Kernel statistics of one socket (`XDP_STATISTICS`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct KernelStats {
    pub rx_dropped: u64,
    pub rx_invalid_descs: u64,
    pub tx_invalid_descs: u64,
    pub rx_ring_full: u64,
    pub rx_fill_ring_empty_descs: u64,
    pub tx_ring_empty_descs: u64,
}

impl From<libc::xdp_statistics> for KernelStats {
    fn from(s: libc::xdp_statistics) -> Self {
        KernelStats {
            rx_dropped: s.rx_dropped,
            rx_invalid_descs: s.rx_invalid_descs,
            tx_invalid_descs: s.tx_invalid_descs,
            rx_ring_full: s.rx_ring_full,
            rx_fill_ring_empty_descs: s.rx_fill_ring_empty_descs,
            tx_ring_empty_descs: s.tx_ring_empty_descs,
        }
    }
}

/// Worker figures read at one instant (summed over workers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FrameFigures {
    pub total: u64,
    pub free: u64,
    pub fill: u64,
    pub kernel_tx: u64,
    pub held: u64,
    pub violations: u64,
    pub tx_kicks: u64,
    pub fill_wakeups: u64,
    pub idle_polls: u64,
}

impl FrameFigures {
    /// Adds another worker's figures.
    pub fn plus(self, o: FrameFigures) -> FrameFigures {
        FrameFigures {
            total: self.total + o.total,
            free: self.free + o.free,
            fill: self.fill + o.fill,
            kernel_tx: self.kernel_tx + o.kernel_tx,
            held: self.held + o.held,
            violations: self.violations + o.violations,
            tx_kicks: self.tx_kicks + o.tx_kicks,
            fill_wakeups: self.fill_wakeups + o.fill_wakeups,
            idle_polls: self.idle_polls + o.idle_polls,
        }
    }

    /// System calls made by the workers.
    pub fn syscalls(&self) -> u64 {
        self.tx_kicks + self.fill_wakeups + self.idle_polls
    }
}

/// One port's figures.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PortFigures {
    pub iface: String,
    pub queue: u32,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub drop_invalid: u64,
    pub drop_rewrite: u64,
    pub drop_tx_full: u64,
    pub held: u64,
    pub held_sent: u64,
    pub held_dropped: u64,
    pub kernel: KernelStats,
}

impl PortFigures {
    pub fn read(iface: &str, queue: u32, s: &PortStats, kernel: KernelStats) -> Self {
        Self {
            iface: iface.to_owned(),
            queue,
            rx_packets: s.rx_packets.load(Relaxed),
            rx_bytes: s.rx_bytes.load(Relaxed),
            tx_packets: s.tx_packets.load(Relaxed),
            tx_bytes: s.tx_bytes.load(Relaxed),
            drop_invalid: s.drop_invalid.load(Relaxed),
            drop_rewrite: s.drop_rewrite.load(Relaxed),
            drop_tx_full: s.drop_tx_full.load(Relaxed),
            held: s.held.load(Relaxed),
            held_sent: s.held_sent.load(Relaxed),
            held_dropped: s.held_dropped.load(Relaxed),
            kernel,
        }
    }
}

/// Everything at one instant: what `xdpfwd stats` receives (as JSON) and what the reports
/// and the Prometheus endpoint show.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Snapshot {
    /// Interfaces with their XDP attach mode ("native" or "skb").
    pub attach: Vec<(String, String)>,
    /// "copy" or "zero-copy".
    pub xsk_mode: String,
    /// Longest frame the AF_XDP path carries (bytes): one UMEM frame, or several with
    /// multi-buffer sockets.
    pub xsk_max_frame: u16,
    /// Seconds since the forwarder started.
    pub uptime: f64,
    pub ports: Vec<PortFigures>,
    pub frames: FrameFigures,
    /// XDP program counters, summed over CPUs, by [`Counter::name`].
    pub xdp: std::collections::BTreeMap<String, u64>,
    /// Heap allocations made by worker threads since start.
    pub worker_allocs: u64,
    /// What the operator must know now, by cause (fallbacks to the kernel, netfilter hooks
    /// bypassed).
    pub notices: BTreeMap<String, String>,
    /// The router's ICMP errors for traffic it does not forward (kernel forwarding off).
    pub icmp: IcmpFigures,
    /// The kernel's tables as xdpfwd mirrors them.
    pub tables: TableFigures,
    /// Frames each steering rule and each NAT rewrite matched since the configuration was
    /// loaded.
    pub rules: Vec<HitFigure>,
    pub rewrites: Vec<HitFigure>,
    /// Times each fallback to the kernel (a notice's cause) began since start.
    pub fallbacks: BTreeMap<String, u64>,
    /// The path plain forwarding takes out of each interface now, and why.
    pub egress_paths: Vec<EgressFigure>,
    /// The XDP program's flow cache.
    pub flow_cache: CacheFigures,
}

/// The path plain forwarding takes out of one interface ([`crate::egress_path`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EgressFigure {
    pub iface: String,
    /// "fast" or "af_xdp".
    pub path: String,
    /// Why, in words.
    pub reason: String,
    /// Why, as a metrics label.
    pub cause: String,
}

/// Where the frames the XDP program saw went, by path (from its verdict counters).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathFigures {
    /// Rewritten and redirected in the kernel.
    pub fast: u64,
    /// Steered to the AF_XDP workers (those waiting for a neighbour included).
    pub af_xdp: u64,
    /// Left to the kernel untouched (every `pass_*` reason).
    pub kernel: u64,
    /// Answered with the router's ICMP error instead (kernel forwarding off).
    pub icmp: u64,
    /// Dropped (a rule, or a failed fast-path redirect).
    pub dropped: u64,
}

/// The mirrored tables: entries, capacities and the memory the kernel charges for the route
/// tries (what `/proc/PID/fdinfo` says of each map).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TableFigures {
    pub routes_v4: u64,
    pub max_routes_v4: u64,
    pub route_bytes_v4: u64,
    pub routes_v6: u64,
    pub max_routes_v6: u64,
    pub route_bytes_v6: u64,
    /// Nexthop objects and multipath sets.
    pub nexthops: u64,
    /// Usable neighbours of the managed interfaces.
    pub neighbours: u64,
    /// Times every table was read again after rtnetlink events were lost.
    pub rereads: u64,
    /// Times the nexthop objects were read again after their events were lost.
    pub nexthop_rereads: u64,
}

impl Snapshot {
    pub fn forwarded(&self) -> (u64, u64) {
        self.ports.iter().fold((0, 0), |(p, b), port| (p + port.tx_packets, b + port.tx_bytes))
    }

    pub fn xdp(&self, c: Counter) -> u64 {
        self.xdp.get(c.name()).copied().unwrap_or(0)
    }

    /// The XDP program's verdicts by the path they sent frames on.
    pub fn paths(&self) -> PathFigures {
        let sum = |keep: fn(&str) -> bool| -> u64 {
            Counter::ALL.iter().filter(|c| keep(c.name())).map(|c| self.xdp(*c)).sum()
        };
        PathFigures {
            fast: self.xdp(Counter::FastForwarded),
            af_xdp: self.xdp(Counter::Steered) + self.xdp(Counter::SteeredNeighMiss),
            kernel: sum(|n| n.starts_with("pass_")),
            icmp: self.xdp(Counter::SteeredIcmp),
            dropped: self.xdp(Counter::DropRule) + self.xdp(Counter::FastFailed),
        }
    }

    /// A one-line summary with rates against `prev`, taken `secs` earlier.
    pub fn line(&self, prev: &Snapshot, secs: f64) -> String {
        let (pkts, bytes) = self.forwarded();
        let (ppkts, pbytes) = prev.forwarded();
        let secs = secs.max(1e-9);
        let mut line = format!(
            "forwarded {pkts} pkts {bytes} B ({:.0} pps, {:.1} Mbit/s)",
            (pkts - ppkts.min(pkts)) as f64 / secs,
            (bytes - pbytes.min(bytes)) as f64 * 8.0 / secs / 1e6,
        );
        let passed: u64 = Counter::ALL
            .iter()
            .filter(|c| c.name().starts_with("pass_"))
            .map(|c| self.xdp(*c))
            .sum();
        let _ = write!(
            line,
            "; xdp rx {} steered {} passed {}; frames free {} fill {} tx {} held {}",
            self.xdp(Counter::Rx),
            self.xdp(Counter::Steered) + self.xdp(Counter::SteeredNeighMiss),
            passed,
            self.frames.free,
            self.frames.fill,
            self.frames.kernel_tx,
            self.frames.held
        );
        line
    }

    /// The full multi-line report.
    pub fn report(&self) -> String {
        let mut out = String::new();
        for p in &self.ports {
            let _ = writeln!(
                out,
                "  {}/q{}: rx {} pkts {} B, tx {} pkts {} B, drops: invalid {} rewrite {} tx_full {}, held {} (sent {}, dropped {}); kernel: rx_dropped {} rx_ring_full {} fill_empty {} tx_invalid {} tx_empty {}",
                p.iface,
                p.queue,
                p.rx_packets,
                p.rx_bytes,
                p.tx_packets,
                p.tx_bytes,
                p.drop_invalid,
                p.drop_rewrite,
                p.drop_tx_full,
                p.held,
                p.held_sent,
                p.held_dropped,
                p.kernel.rx_dropped,
                p.kernel.rx_ring_full,
                p.kernel.rx_fill_ring_empty_descs,
                p.kernel.tx_invalid_descs,
                p.kernel.tx_ring_empty_descs,
            );
        }
        if !self.egress_paths.is_empty() {
            let each: Vec<String> = self
                .egress_paths
                .iter()
                .map(|e| format!("{} {} ({})", e.iface, e.path, e.reason))
                .collect();
            let _ = writeln!(out, "  out of: {}", each.join("; "));
        }
        let paths = self.paths();
        let _ = writeln!(
            out,
            "  paths: fast {}, af_xdp {}, kernel {}, icmp {}, dropped {}",
            paths.fast, paths.af_xdp, paths.kernel, paths.icmp, paths.dropped
        );
        let _ = write!(out, "  xdp:");
        for c in Counter::ALL {
            let v = self.xdp(c);
            if v != 0 || matches!(c, Counter::Rx | Counter::Steered) {
                let _ = write!(out, " {}={}", c.name(), v);
            }
        }
        let c = self.flow_cache;
        if c.slots > 0 {
            let _ = write!(
                out,
                "\n  flow cache: hits {}, fills {} ({} slots per CPU)",
                c.hits, c.fills, c.slots
            );
            if c.suspended {
                let _ = write!(out, "; suspended: nearly every frame a new flow");
            }
            if c.suspensions > 0 {
                let _ = write!(out, "; suspended {} times", c.suspensions);
            }
        } else {
            let _ = write!(out, "\n  flow cache: off");
        }
        let f = self.frames;
        let _ = write!(
            out,
            "\n  frames: total {} = free {} + fill {} + tx {} + held {}; ownership violations {}",
            f.total, f.free, f.fill, f.kernel_tx, f.held, f.violations
        );
        let _ = write!(
            out,
            "\n  workers: syscalls {} (tx kicks {}, fill wakeups {}, idle polls {}); heap allocations {}",
            f.syscalls(),
            f.tx_kicks,
            f.fill_wakeups,
            f.idle_polls,
            self.worker_allocs
        );
        let i = self.icmp;
        let _ = write!(
            out,
            "\n  icmp errors: sent {}, rate-limited {}, not answered {}, queue full {}, failed {}",
            i.sent, i.rate_limited, i.not_answered, i.queue_full, i.failed
        );
        let t = self.tables;
        let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
        let _ = write!(
            out,
            "\n  tables: routes v4 {} of {} ({:.1} MiB), v6 {} of {} ({:.1} MiB); nexthops {}; neighbours {}; read again after lost events {} (nexthops {})",
            t.routes_v4,
            t.max_routes_v4,
            mib(t.route_bytes_v4),
            t.routes_v6,
            t.max_routes_v6,
            mib(t.route_bytes_v6),
            t.nexthops,
            t.neighbours,
            t.rereads,
            t.nexthop_rereads
        );
        for (what, figures) in [("rule", &self.rules), ("rewrite", &self.rewrites)] {
            if figures.is_empty() {
                continue;
            }
            let each: Vec<String> = figures
                .iter()
                .map(|f| match &f.name {
                    Some(name) => format!("{} ({name}) {}", f.index, f.hits),
                    None => format!("{} {}", f.index, f.hits),
                })
                .collect();
            let _ = write!(out, "\n  {what} hits: {}", each.join(", "));
        }
        if !self.fallbacks.is_empty() {
            let each: Vec<String> =
                self.fallbacks.iter().map(|(cause, n)| format!("{cause} {n}")).collect();
            let _ = write!(out, "\n  fallbacks to the kernel begun: {}", each.join(", "));
        }
        for text in self.notices.values() {
            let _ = write!(out, "\n  notice: {text}");
        }
        out
    }
}

impl FrameFigures {
    /// What one worker publishes, read now.
    pub fn read(w: &WorkerStats) -> FrameFigures {
        FrameFigures {
            total: w.total.load(Relaxed),
            free: w.free.load(Relaxed),
            fill: w.fill.load(Relaxed),
            kernel_tx: w.kernel_tx.load(Relaxed),
            held: w.held.load(Relaxed),
            violations: w.violations.load(Relaxed),
            tx_kicks: w.tx_kicks.load(Relaxed),
            fill_wakeups: w.fill_wakeups.load(Relaxed),
            idle_polls: w.idle_polls.load(Relaxed),
        }
    }
}

/// One socket, as the snapshot sees it.
pub struct PortView {
    pub iface: String,
    pub queue: u32,
    pub fd: i32,
    pub stats: Arc<PortStats>,
}

impl PortView {
    /// The view of `port` (its fd stays valid while the port lives: the worker returns its
    /// ports when it stops, and they are dropped after the final report).
    pub fn of(port: &xsk::Port) -> Self {
        PortView {
            iface: port.iface.name.clone(),
            queue: port.queue,
            fd: port.raw_fd(),
            stats: port.stats.clone(),
        }
    }
}

/// Where snapshots come from; shared (read-only) by the threads that report.
pub struct StatsSource {
    pub ports: Vec<PortView>,
    pub workers: Vec<Arc<WorkerStats>>,
    pub counters: PerCpuArray<MapData, u64>,
    pub attach: Vec<(String, String)>,
    pub xsk_mode: String,
    pub xsk_max_frame: u16,
    pub start: Instant,
    pub shared: Arc<Shared>,
    pub hits: SharedHits,
    pub cache: CacheStats,
}

impl StatsSource {
    pub fn snapshot(&self) -> Snapshot {
        let ports = self
            .ports
            .iter()
            .map(|v| {
                PortFigures::read(
                    &v.iface,
                    v.queue,
                    &v.stats,
                    xsk::kernel_stats(v.fd).map(KernelStats::from).unwrap_or_default(),
                )
            })
            .collect();
        let frames = self
            .workers
            .iter()
            .map(|w| FrameFigures::read(w))
            .fold(FrameFigures::default(), FrameFigures::plus);
        let mut xdp: BTreeMap<String, u64> = Counter::ALL
            .iter()
            .skip(1)
            .map(|c| {
                let v = self.counters.get(&(*c as u32), 0).map(|v| v.iter().sum()).unwrap_or(0);
                (c.name().to_owned(), v)
            })
            .collect();
        // The program does not count `Rx`: it is the sum of the verdicts.
        xdp.insert(Counter::Rx.name().to_owned(), xdp.values().sum());
        let (rules, rewrites) = self.hits.lock().map(|h| h.read()).unwrap_or_default();
        Snapshot {
            attach: self.attach.clone(),
            xsk_mode: self.xsk_mode.clone(),
            xsk_max_frame: self.xsk_max_frame,
            uptime: self.start.elapsed().as_secs_f64(),
            ports,
            frames,
            xdp,
            worker_allocs: alloc_count::counted(),
            notices: self
                .shared
                .notices
                .read()
                .map(|n| n.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect())
                .unwrap_or_default(),
            icmp: self.shared.icmp.read(),
            tables: self.shared.tables.read().map(|t| *t).unwrap_or_default(),
            rules,
            rewrites,
            flow_cache: self.cache.read(),
            fallbacks: self
                .shared
                .fallbacks
                .read()
                .map(|n| n.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect())
                .unwrap_or_default(),
            egress_paths: self
                .shared
                .egress_paths
                .read()
                .map(|paths| {
                    paths
                        .iter()
                        .map(|(iface, e)| EgressFigure {
                            iface: iface.clone(),
                            path: e.path.name().to_owned(),
                            reason: e.reason.to_string(),
                            cause: e.reason.label().to_owned(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}
