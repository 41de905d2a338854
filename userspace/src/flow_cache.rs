//! User space's side of the XDP program's flow cache (`xdp-prog/src/flow_cache.rs`): its
//! size, its generations and its figures.
//!
//! The program reuses a flow's decision only while the generation it was made in is the
//! current one. Whatever writes a map the decisions are made from starts a new generation
//! right after: the control plane after each event it handles (and at least every 0.5 s,
//! with its sysctl poll), a reload after it switched the rules.

use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use aya::maps::{Array, MapData, PerCpuArray};
use serde::{Deserialize, Serialize};
use xdpfwd_common::{CacheCtl, CacheStat, cache_mask, map_names};

/// The cache's control words; `None` inside when the cache is off.
pub struct Generations {
    ctl: Option<Array<MapData, CacheCtl>>,
    mask: u32,
    current: u32,
    failed: bool,
}

/// Shared by the control plane and the reloads.
pub type SharedGenerations = Arc<Mutex<Generations>>;

impl Generations {
    /// Takes `CACHE_CTL` and writes the mask of a cache of `slots` slots per CPU (0: off).
    /// The cache stays off (generation 0) until the first [`Generations::next`].
    pub fn take(ebpf: &mut aya::Ebpf, slots: u32) -> anyhow::Result<SharedGenerations> {
        let map = ebpf
            .take_map(map_names::CACHE_CTL)
            .with_context(|| format!("map {} missing", map_names::CACHE_CTL))?;
        let mut ctl = Array::try_from(map)?;
        let (ctl, mask) = match cache_mask(slots) {
            Some(mask) if slots > 0 => {
                ctl.set(0, CacheCtl { generation: 0, mask }, 0)
                    .context("writing the flow cache's size")?;
                (Some(ctl), mask)
            }
            _ => (None, 0),
        };
        Ok(Arc::new(Mutex::new(Generations { ctl, mask, current: 0, failed: false })))
    }

    /// Starts a new generation: every decision cached before is a miss from now on. Should
    /// the write fail, the cache is switched off (a stale generation must not stay current).
    pub fn next(&mut self) {
        let Some(ctl) = &mut self.ctl else { return };
        self.current = next_generation(self.current);
        let mask = self.mask;
        if let Err(err) = ctl.set(0, CacheCtl { generation: self.current, mask }, 0) {
            let _ = ctl.set(0, CacheCtl { generation: 0, mask }, 0);
            if !self.failed {
                tracing::error!(%err, "starting a flow cache generation failed: the cache is off");
            }
            self.failed = true;
            self.ctl = None;
        }
    }
}

/// The generation after `current`, never 0 (which means "off").
fn next_generation(current: u32) -> u32 {
    current.wrapping_add(1).max(1)
}

/// Starts a new generation, if the lock is not poisoned (a panicked holder: the control
/// plane's failure is reported elsewhere).
pub fn next(generations: &SharedGenerations) {
    if let Ok(mut g) = generations.lock() {
        g.next();
    }
}

/// The cache's figures, for stats and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CacheFigures {
    /// Slots per CPU (0: the cache is off).
    pub slots: u32,
    /// Frames whose decision came from the cache.
    pub hits: u64,
    /// Decisions written into it.
    pub fills: u64,
}

/// Reads the program's per-CPU hit and fill counters.
pub struct CacheStats {
    map: PerCpuArray<MapData, u64>,
    slots: u32,
}

impl CacheStats {
    pub fn take(ebpf: &mut aya::Ebpf, slots: u32) -> anyhow::Result<CacheStats> {
        let map = ebpf
            .take_map(map_names::FLOW_CACHE_STATS)
            .with_context(|| format!("map {} missing", map_names::FLOW_CACHE_STATS))?;
        Ok(CacheStats { map: PerCpuArray::try_from(map)?, slots })
    }

    pub fn read(&self) -> CacheFigures {
        let sum =
            |stat: CacheStat| self.map.get(&(stat as u32), 0).map(|v| v.iter().sum()).unwrap_or(0);
        CacheFigures { slots: self.slots, hits: sum(CacheStat::Hits), fills: sum(CacheStat::Fills) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_skip_zero() {
        assert_eq!(next_generation(0), 1);
        assert_eq!(next_generation(41), 42);
        assert_eq!(next_generation(u32::MAX), 1);
    }
}
