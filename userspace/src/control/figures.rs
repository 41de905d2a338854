//! What the control plane publishes about the tables it mirrors: entries, capacities and the
//! memory the kernel charges for the route tries.

use std::{
    fs,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::maps::{IterableMap as _, MapData};

use super::Control;
use crate::snapshot::TableFigures;

impl Control {
    /// Publishes the tables' figures for `xdpfwd stats` and metrics.
    pub(super) fn publish_tables(&self) {
        let v4 = self.maps.routes_v4.map();
        let v6 = self.maps.routes_v6.map();
        let figures = TableFigures {
            routes_v4: self.routes.len(false) as u64,
            max_routes_v4: capacity(v4),
            route_bytes_v4: memlock(v4),
            routes_v6: self.routes.len(true) as u64,
            max_routes_v6: capacity(v6),
            route_bytes_v6: memlock(v6),
            nexthops: self.nexthops.len() as u64,
            neighbours: self.neighbours.len() as u64,
            rereads: self.rereads.0,
            nexthop_rereads: self.rereads.1,
        };
        if let Ok(mut tables) = self.shared.tables.write() {
            *tables = figures;
        }
    }
}

fn capacity(map: &MapData) -> u64 {
    map.info().map_or(0, |i| u64::from(i.max_entries()))
}

/// The bytes the kernel charges for a map (`memlock` in its fdinfo: for a trie, what its
/// entries take now).
fn memlock(map: &MapData) -> u64 {
    let path = format!("/proc/self/fdinfo/{}", map.fd().as_fd().as_raw_fd());
    fs::read_to_string(path)
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("memlock:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}
