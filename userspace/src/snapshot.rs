//! Gathers a [`Snapshot`]: the workers' counters, the sockets' kernel statistics and the XDP
//! program's per-CPU counters. Used by the periodic reports, `xdpfwd stats` and `/metrics`.

use std::{collections::BTreeMap, sync::Arc, time::Instant};

use aya::maps::{MapData, PerCpuArray};
use xdpfwd_common::Counter;

use crate::{
    alloc_count,
    stats::{FrameFigures, PortFigures, PortStats, Snapshot, WorkerStats},
    xsk,
};

/// One socket, as the snapshot sees it.
pub struct PortView {
    pub iface: String,
    pub queue: u32,
    pub fd: i32,
    pub stats: Arc<PortStats>,
}

/// Where snapshots come from; shared (read-only) by the threads that report.
pub struct StatsSource {
    pub ports: Vec<PortView>,
    pub workers: Vec<Arc<WorkerStats>>,
    pub counters: PerCpuArray<MapData, u64>,
    pub attach: Vec<(String, String)>,
    pub xsk_mode: String,
    pub start: Instant,
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
                    xsk::kernel_stats(v.fd).unwrap_or_default(),
                )
            })
            .collect();
        let frames =
            self.workers.iter().map(|a| a.read()).fold(FrameFigures::default(), FrameFigures::plus);
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
        Snapshot {
            attach: self.attach.clone(),
            xsk_mode: self.xsk_mode.clone(),
            uptime: self.start.elapsed().as_secs_f64(),
            ports,
            frames,
            xdp,
            worker_allocs: alloc_count::counted(),
        }
    }
}
