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
    io,
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{Map, MapData, PerCpuArray};
use serde::{Deserialize, Serialize};
use xdpfwd_common::{CacheCtl, CacheStat, cache_mask, map_names};

/// `CACHE_CTL` (a `BPF_F_MMAPABLE` array) mapped into this process. The generation is
/// written with one aligned 8-byte store, which the program's 8-byte load sees whole; a map
/// update through the `bpf` system call copies with `memcpy`, which a concurrent load may
/// see half done, a mix of two generations that could be a later one.
struct CtlWord {
    ctl: NonNull<CacheCtl>,
    len: usize,
    /// Holds the map (its descriptor) as long as the mapping.
    _map: MapData,
}

// SAFETY: the mapping belongs to this value alone (only `Generations`, behind its mutex,
// writes through it); the kernel's side of it is the XDP program's loads.
unsafe impl Send for CtlWord {}

impl CtlWord {
    fn map(map: MapData, mask: u32) -> io::Result<CtlWord> {
        // SAFETY: no preconditions.
        let len = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .map_err(|_| io::Error::other("no page size"))?;
        // SAFETY: a new shared mapping of the map's one page of values; the kernel checks
        // the descriptor, the size and the map's `BPF_F_MMAPABLE`.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ctl = NonNull::new(addr.cast::<CacheCtl>()).ok_or_else(|| io::Error::other("null"))?;
        let word = CtlWord { ctl, len, _map: map };
        word.set(0);
        // SAFETY: the mapping holds entry 0 at its start, 8-aligned (page-aligned); the
        // program reads the mask only while the generation is not 0, written after.
        unsafe { (&raw mut (*word.ctl.as_ptr()).mask).write_volatile(mask) };
        Ok(word)
    }

    fn set(&self, generation: u64) {
        // SAFETY: as in `map`: the field is 8-aligned in a live mapping, and all access to
        // it from this process is atomic.
        let word = unsafe { AtomicU64::from_ptr(&raw mut (*self.ctl.as_ptr()).generation) };
        word.store(generation, Ordering::Release);
    }
}

impl Drop for CtlWord {
    fn drop(&mut self) {
        // SAFETY: unmaps what `map` mapped, once.
        unsafe { libc::munmap(self.ctl.as_ptr().cast(), self.len) };
    }
}

/// The cache's control words; `None` inside when the cache is off.
pub struct Generations {
    ctl: Option<CtlWord>,
    current: u64,
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
        let Map::Array(map) = map else {
            anyhow::bail!("map {} is not an array", map_names::CACHE_CTL);
        };
        let ctl = match cache_mask(slots) {
            Some(mask) if slots > 0 => {
                Some(CtlWord::map(map, mask).context("mapping the flow cache's control word")?)
            }
            _ => None,
        };
        Ok(Arc::new(Mutex::new(Generations { ctl, current: 0, suspended: false, suspensions: 0 })))
    }

    /// Starts a new generation: every decision cached before is a miss from now on (while
    /// suspended, the cache stays off).
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
        if let Some(ctl) = &self.ctl {
            ctl.set(generation);
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

    /// Hits and fills, `None` if the map could not be read.
    pub fn counts(&self) -> Option<(u64, u64)> {
        let sum = |stat: CacheStat| -> Option<u64> {
            self.map.get(&(stat as u32), 0).ok().map(|v| v.iter().sum())
        };
        Some((sum(CacheStat::Hits)?, sum(CacheStat::Fills)?))
    }

    /// The figures for stats and metrics (0 hits and fills if the map could not be read).
    pub fn read(&self) -> CacheFigures {
        let (hits, fills) = self.counts().unwrap_or_default();
        let (suspended, suspensions) =
            self.generations.lock().map(|g| g.suspension()).unwrap_or_default();
        CacheFigures { slots: self.slots, hits, fills, suspended, suspensions }
    }
}

/// How often the [`Governor`] looks at the figures.
pub const GOVERNOR_TICK: Duration = Duration::from_millis(500);
/// Fewest frames (hits and fills) per second at which the governor judges the cache: below,
/// what a miss costs does not matter, and a look tells nothing.
const JUDGED_PER_SEC: f64 = 100_000.0;
/// The cache does not pay while it fills more than this many decisions per hit. Measured
/// here (docs/performance.md, "Flow cache"): a hit makes the fast path's frame about a third
/// cheaper, a miss with its fill about a tenth dearer, so the cache pays from about one hit
/// in five frames.
const FILLS_PER_HIT: u64 = 4;
/// The first pause of a suspended cache; each suspension after a retry doubles it, until a
/// look at judged traffic finds the cache paying.
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
    /// Hits and fills at the last look, and when (`None`: not read yet).
    seen: Option<(u64, u64)>,
    at: Instant,
    /// The pause of the next suspension.
    pause: Duration,
    /// While suspended: when to try again.
    until: Option<Instant>,
}

impl Governor {
    pub fn new(now: Instant) -> Self {
        Governor { seen: None, at: now, pause: FIRST_PAUSE, until: None }
    }

    /// Looks at the cache's hits and fills (since the start) at `now`; says what to switch,
    /// if anything. The first look only takes note.
    pub fn look(&mut self, now: Instant, (hits, fills): (u64, u64)) -> Option<Switch> {
        let seen = self.seen.replace((hits, fills));
        let secs = now.saturating_duration_since(std::mem::replace(&mut self.at, now));
        let (seen_hits, seen_fills) = seen?;
        let (hits, fills) = (hits.saturating_sub(seen_hits), fills.saturating_sub(seen_fills));
        if let Some(until) = self.until {
            if now < until {
                return None;
            }
            self.until = None;
            return Some(Switch::Resume);
        }
        if (hits.saturating_add(fills) as f64) < JUDGED_PER_SEC * secs.as_secs_f64() {
            return None;
        }
        if fills > hits.saturating_mul(FILLS_PER_HIT) {
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
    // A read that fails is skipped: the next one then spans two ticks, judged as such.
    let Some((hits, fills)) = stats.counts() else { return };
    let Some(switch) = governor.look(Instant::now(), (hits, fills)) else { return };
    let Ok(mut g) = generations.lock() else { return };
    match switch {
        Switch::Suspend { pause } => {
            g.suspend();
            tracing::info!(
                hits,
                fills,
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

    /// Looks every half second at counters that grow by `hits` and `fills` per look.
    struct Traffic {
        governor: Governor,
        now: Instant,
        total: (u64, u64),
    }

    impl Traffic {
        fn new() -> Self {
            let now = Instant::now();
            let mut governor = Governor::new(now);
            assert_eq!(governor.look(now, (0, 0)), None, "the first look takes note");
            Traffic { governor, now, total: (0, 0) }
        }

        fn look(&mut self, hits: u64, fills: u64) -> Option<Switch> {
            self.now += GOVERNOR_TICK;
            self.total = (self.total.0 + hits, self.total.1 + fills);
            self.governor.look(self.now, self.total)
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
    fn counters_read_late_are_judged_over_the_time_they_span() {
        let now = Instant::now();
        let mut g = Governor::new(now);
        // Started with a million fills behind it (a first read that failed, say): only
        // what came since the first look counts.
        assert_eq!(g.look(now, (5_000_000, 1_000_000)), None);
        assert_eq!(g.look(now + GOVERNOR_TICK, (5_400_000, 1_010_000)), None);
        // 60,000 frames over two ticks (a read skipped) are too few to judge.
        assert_eq!(g.look(now + GOVERNOR_TICK * 3, (5_400_000, 1_070_000)), None);
    }

    #[test]
    fn quiet_spells_do_not_reset_the_pause() {
        let mut t = Traffic::new();
        let mut pauses = Vec::new();
        // A flood that comes and goes: on for a second, quiet for a second.
        for _ in 0..40 {
            for (hits, fills) in [(0, 1_000_000), (0, 1_000_000), (0, 0), (0, 0)] {
                if let Some(Switch::Suspend { pause }) = t.look(hits, fills) {
                    pauses.push(pause.as_secs());
                }
            }
        }
        assert_eq!(&pauses[..5], [1, 2, 4, 8, 16], "{pauses:?}");
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
