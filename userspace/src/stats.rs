//! Counters: per-socket counters written by the workers, frame accounting, and the XDP
//! program's per-CPU verdict counters, gathered into one [`Snapshot`] for printing.

use std::{
    fmt::Write as _,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
};

use serde::{Deserialize, Serialize};
use xdpfwd_common::Counter;

use crate::xsk::KernelStats;

/// Counters of one AF_XDP socket, written only by the worker that owns it.
#[derive(Debug, Default)]
pub struct PortStats {
    /// Frames taken from the RX ring.
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// Frames put on the TX ring (forwarded out of this port).
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Frames whose metadata was missing or named an egress without a socket.
    pub drop_invalid: AtomicU64,
    /// Frames the rewrite refused (truncated, expired).
    pub drop_rewrite: AtomicU64,
    /// Frames dropped because the egress pending list was full (held frames released at
    /// once beyond what the TX ring takes).
    pub drop_tx_full: AtomicU64,
    /// Frames held waiting for neighbour resolution.
    pub held: AtomicU64,
    /// Held frames sent after resolution.
    pub held_sent: AtomicU64,
    /// Held frames dropped (timeout or hold queue full).
    pub held_dropped: AtomicU64,
}

impl PortStats {
    #[inline]
    pub fn add(counter: &AtomicU64, n: u64) {
        if n != 0 {
            counter.fetch_add(n, Relaxed);
        }
    }
}

/// What one worker publishes about itself: where its frames are (they sum to `total` whenever
/// the worker is between iterations), ownership violations, and the system calls it made.
#[derive(Debug, Default)]
pub struct WorkerStats {
    pub total: AtomicU64,
    pub free: AtomicU64,
    pub fill: AtomicU64,
    pub kernel_tx: AtomicU64,
    pub held: AtomicU64,
    /// Ring operations that found a frame in a state it cannot be in (a frame transmitted
    /// that this worker had not received, completed twice, ...). Must stay 0.
    pub violations: AtomicU64,
    /// `sendto` kicks of TX rings.
    pub tx_kicks: AtomicU64,
    /// `poll` wakeups of fill rings.
    pub fill_wakeups: AtomicU64,
    /// `poll` calls while idle.
    pub idle_polls: AtomicU64,
}

/// Worker figures read at one instant (summed over workers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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

impl WorkerStats {
    pub fn read(&self) -> FrameFigures {
        FrameFigures {
            total: self.total.load(Relaxed),
            free: self.free.load(Relaxed),
            fill: self.fill.load(Relaxed),
            kernel_tx: self.kernel_tx.load(Relaxed),
            held: self.held.load(Relaxed),
            violations: self.violations.load(Relaxed),
            tx_kicks: self.tx_kicks.load(Relaxed),
            fill_wakeups: self.fill_wakeups.load(Relaxed),
            idle_polls: self.idle_polls.load(Relaxed),
        }
    }
}

/// One port's figures.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
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
pub struct Snapshot {
    /// Interfaces with their XDP attach mode ("native" or "skb").
    pub attach: Vec<(String, String)>,
    /// "copy" or "zero-copy".
    pub xsk_mode: String,
    /// Seconds since the forwarder started.
    pub uptime: f64,
    pub ports: Vec<PortFigures>,
    pub frames: FrameFigures,
    /// XDP program counters, summed over CPUs, by [`Counter::name`].
    pub xdp: std::collections::BTreeMap<String, u64>,
    /// Heap allocations made by worker threads since start.
    pub worker_allocs: u64,
}

impl Snapshot {
    pub fn forwarded(&self) -> (u64, u64) {
        self.ports.iter().fold((0, 0), |(p, b), port| (p + port.tx_packets, b + port.tx_bytes))
    }

    pub fn xdp(&self, c: Counter) -> u64 {
        self.xdp.get(c.name()).copied().unwrap_or(0)
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
        let _ = write!(out, "  xdp:");
        for c in Counter::ALL {
            let v = self.xdp(c);
            if v != 0 || matches!(c, Counter::Rx | Counter::Steered) {
                let _ = write!(out, " {}={}", c.name(), v);
            }
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
        out
    }
}
