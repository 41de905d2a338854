//! The live counters the workers write: per socket ([`PortStats`]) and per worker
//! ([`WorkerStats`]). `snapshot` reads them.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

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
