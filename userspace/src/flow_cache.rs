//! User space's side of the XDP program's flow cache (`xdp-prog/src/flow_cache.rs`): its
//! size, its generations, its figures and its governor.
//!
//! The program reuses a flow's decision only while the generation it was made in is the
//! current one. Whatever writes a map the decisions are made from starts a new generation
//! right after: the control plane after each event it handles (and at least every 0.5 s,
//! with its sysctl poll), a reload after it switched the rules.
//!
//! Where nearly every frame is a new flow (a scan, a flood with random sources), the cache
//! cannot help and costs each frame a probe and a fill. The [`Governor`] sees that in the
//! hits and fills and suspends the cache (generation 0: every frame takes the full path, as
//! with `--flow-cache 0`), then tries it again after a pause that doubles while the traffic
//! stays so. Exact either way: a suspended cache is off, and it comes back in a new
//! generation, so nothing filled before counts.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{Array, MapData, PerCpuArray};
use serde::{Deserialize, Serialize};
use xdpfwd_common::{CacheCtl, CacheStat, cache_mask, map_names};

/// The cache's control words; `None` inside when the cache is off.
pub struct Generations {
    ctl: Option<Array<MapData, CacheCtl>>,
    mask: u32,
    current: u64,
    failed: bool,
    /// Suspended by the [`Governor`]: generation 0 until it resumes the cache.
    suspended: bool,
    /// Times suspended since the start.
    suspensions: u64,
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
                ctl.set(0, CacheCtl { generation: 0, mask, _pad: 0 }, 0)
                    .context("writing the flow cache's size")?;
                (Some(ctl), mask)
            }
            _ => (None, 0),
        };
        Ok(Arc::new(Mutex::new(Generations {
            ctl,
            mask,
            current: 0,
            failed: false,
            suspended: false,
            suspensions: 0,
        })))
    }

    /// Starts a new generation: every decision cached before is a miss from now on (while
    /// suspended, the cache stays off). Should the write fail, the cache is switched off (a
    /// stale generation must not stay current).
    pub fn next(&mut self) {
        if self.suspended {
            return;
        }
        self.current = next_generation(self.current);
        self.write(self.current);
    }

    /// Switches the cache off until [`Generations::resume`].
    pub fn suspend(&mut self) {
        if self.ctl.is_none() || self.suspended {
            return;
        }
        self.suspended = true;
        self.suspensions += 1;
        self.write(0);
    }

    /// Switches a suspended cache on again, in a new generation.
    pub fn resume(&mut self) {
        if std::mem::take(&mut self.suspended) {
            self.next();
        }
    }

    /// Whether the cache is suspended, and how many times it has been.
    pub fn suspension(&self) -> (bool, u64) {
        (self.suspended, self.suspensions)
    }

    fn write(&mut self, generation: u64) {
        let Some(ctl) = &mut self.ctl else { return };
        let mask = self.mask;
        if let Err(err) = ctl.set(0, CacheCtl { generation, mask, _pad: 0 }, 0) {
            let _ = ctl.set(0, CacheCtl { generation: 0, mask, _pad: 0 }, 0);
            if !self.failed {
                tracing::error!(%err, "writing the flow cache's generation failed: the cache is off");
            }
            self.failed = true;
            self.ctl = None;
        }
    }
}

/// The generation after `current`, never 0 (which means "off").
fn next_generation(current: u64) -> u64 {
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
    /// Suspended by the governor: nearly every frame was a new flow.
    pub suspended: bool,
    /// Times the governor suspended it.
    pub suspensions: u64,
}

/// Reads the program's per-CPU hit and fill counters, and the governor's state.
pub struct CacheStats {
    map: PerCpuArray<MapData, u64>,
    slots: u32,
    generations: SharedGenerations,
}

impl CacheStats {
    pub fn take(
        ebpf: &mut aya::Ebpf,
        slots: u32,
        generations: SharedGenerations,
    ) -> anyhow::Result<CacheStats> {
        let map = ebpf
            .take_map(map_names::FLOW_CACHE_STATS)
            .with_context(|| format!("map {} missing", map_names::FLOW_CACHE_STATS))?;
        Ok(CacheStats { map: PerCpuArray::try_from(map)?, slots, generations })
    }

    pub fn read(&self) -> CacheFigures {
        let sum =
            |stat: CacheStat| self.map.get(&(stat as u32), 0).map(|v| v.iter().sum()).unwrap_or(0);
        let (suspended, suspensions) =
            self.generations.lock().map(|g| g.suspension()).unwrap_or_default();
        CacheFigures {
            slots: self.slots,
            hits: sum(CacheStat::Hits),
            fills: sum(CacheStat::Fills),
            suspended,
            suspensions,
        }
    }
}

/// How often the [`Governor`] looks at the figures.
pub const GOVERNOR_TICK: Duration = Duration::from_millis(500);
/// Fewest fills per second at which the governor judges the cache: below, what a miss
/// costs does not matter.
const JUDGED_FILLS_PER_SEC: f64 = 100_000.0;
/// The cache does not pay while it fills more than this many decisions per hit. Measured
/// here (docs/performance.md, "Flow cache"): a hit makes the fast path's frame about a third
/// cheaper, a miss with its fill about a tenth dearer, so the cache pays from about one hit
/// in five frames.
const FILLS_PER_HIT: u64 = 4;
/// The first pause of a suspended cache; each suspension right after a retry doubles it.
const FIRST_PAUSE: Duration = Duration::from_secs(1);
const LONGEST_PAUSE: Duration = Duration::from_secs(16);

/// What the [`Governor`] does to the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Switch {
    Suspend { pause: Duration },
    Resume,
}

/// Suspends the cache while it does not pay and tries it again after a pause, judged from
/// the hits and fills it sees every [`GOVERNOR_TICK`].
pub struct Governor {
    /// Hits and fills at the last look, and when.
    seen: (u64, u64),
    at: Instant,
    /// The pause of the next suspension.
    pause: Duration,
    /// While suspended: when to try again.
    until: Option<Instant>,
}

impl Governor {
    pub fn new(now: Instant, figures: &CacheFigures) -> Self {
        Governor { seen: (figures.hits, figures.fills), at: now, pause: FIRST_PAUSE, until: None }
    }

    /// Looks at the figures at `now`; says what to switch, if anything.
    pub fn look(&mut self, now: Instant, figures: &CacheFigures) -> Option<Switch> {
        let hits = figures.hits.saturating_sub(self.seen.0);
        let fills = figures.fills.saturating_sub(self.seen.1);
        let secs = now.saturating_duration_since(self.at).as_secs_f64();
        (self.seen, self.at) = ((figures.hits, figures.fills), now);
        if let Some(until) = self.until {
            if now < until {
                return None;
            }
            self.until = None;
            return Some(Switch::Resume);
        }
        if fills as f64 >= JUDGED_FILLS_PER_SEC * secs && fills > hits.saturating_mul(FILLS_PER_HIT)
        {
            let pause = self.pause;
            self.pause = (pause * 2).min(LONGEST_PAUSE);
            self.until = Some(now + pause);
            return Some(Switch::Suspend { pause });
        }
        self.pause = FIRST_PAUSE;
        None
    }
}

/// One look of `governor` at `stats`, applied to `generations` and logged.
pub fn govern(governor: &mut Governor, stats: &CacheStats, generations: &SharedGenerations) {
    let figures = stats.read();
    let Some(switch) = governor.look(Instant::now(), &figures) else { return };
    let Ok(mut g) = generations.lock() else { return };
    match switch {
        Switch::Suspend { pause } => {
            g.suspend();
            tracing::info!(
                hits = figures.hits,
                fills = figures.fills,
                "flow cache suspended: nearly every frame is a new flow, for which it only \
                 costs; trying it again in {} s",
                pause.as_secs()
            );
        }
        Switch::Resume => {
            g.resume();
            tracing::info!("flow cache on again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(hits: u64, fills: u64) -> CacheFigures {
        CacheFigures { slots: 8192, hits, fills, ..CacheFigures::default() }
    }

    /// Looks every half second at counters that grow by `hits` and `fills` per look.
    struct Traffic {
        governor: Governor,
        now: Instant,
        total: (u64, u64),
    }

    impl Traffic {
        fn new() -> Self {
            let now = Instant::now();
            Traffic { governor: Governor::new(now, &figures(0, 0)), now, total: (0, 0) }
        }

        fn look(&mut self, hits: u64, fills: u64) -> Option<Switch> {
            self.now += GOVERNOR_TICK;
            self.total = (self.total.0 + hits, self.total.1 + fills);
            self.governor.look(self.now, &figures(self.total.0, self.total.1))
        }
    }

    #[test]
    fn ordinary_traffic_keeps_the_cache() {
        let mut t = Traffic::new();
        // Many flows, one fill each per generation and frequent generations: still a hit in
        // every five frames.
        for _ in 0..100 {
            assert_eq!(t.look(250_000, 1_000_000), None);
        }
        // Nearly all new flows, but too few to matter.
        for _ in 0..100 {
            assert_eq!(t.look(0, 49_000), None);
        }
    }

    #[test]
    fn a_flood_of_new_flows_suspends_it_and_it_is_retried_ever_later() {
        let mut t = Traffic::new();
        assert_eq!(t.look(1000, 1_000_000), Some(Switch::Suspend { pause: FIRST_PAUSE }));
        // Suspended: no fills, no hits, no judgement until the pause is over.
        assert_eq!(t.look(0, 0), None);
        assert_eq!(t.look(0, 0), Some(Switch::Resume));
        // The flood goes on: each retry that fails doubles the pause, up to the longest.
        let mut pauses = Vec::new();
        for _ in 0..200 {
            match t.look(1000, 1_000_000) {
                Some(Switch::Suspend { pause }) => pauses.push(pause.as_secs()),
                Some(Switch::Resume) | None => {}
            }
        }
        assert_eq!(&pauses[..6], [2, 4, 8, 16, 16, 16]);
    }

    #[test]
    fn a_retry_that_pays_keeps_the_cache_and_resets_the_pause() {
        let mut t = Traffic::new();
        assert!(matches!(t.look(0, 2_000_000), Some(Switch::Suspend { .. })));
        while t.look(0, 0) != Some(Switch::Resume) {}
        assert!(
            matches!(t.look(0, 2_000_000), Some(Switch::Suspend { pause }) if pause.as_secs() == 2)
        );
        while t.look(0, 0) != Some(Switch::Resume) {}
        // The flows are few again.
        assert_eq!(t.look(2_000_000, 100), None);
        assert_eq!(
            t.look(0, 2_000_000),
            Some(Switch::Suspend { pause: FIRST_PAUSE }),
            "the pause starts over"
        );
    }

    #[test]
    fn generations_skip_zero() {
        assert_eq!(next_generation(0), 1);
        assert_eq!(next_generation(41), 42);
        // 32 bits would wrap here and bring generation 1's entries back.
        assert_eq!(next_generation(u64::from(u32::MAX)), 1 << 32);
        assert_eq!(next_generation(u64::MAX), 1);
    }
}
