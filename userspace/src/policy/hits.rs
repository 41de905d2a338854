//! Hits per steering rule and per NAT rewrite. The XDP program counts them per CPU, by index
//! in the set that is active (`RULE_HITS`, `NAT_HITS`); a set's counters are zeroed before it
//! becomes active, so the figures count from the moment the configuration that holds the
//! rule was loaded (start or reload).

use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use aya::maps::{MapData, PerCpuArray, PerCpuValues};
use serde::{Deserialize, Serialize};
use xdpfwd_common::{MAX_NATS, MAX_RULES, map_names};

/// One rule's or rewrite's count, for stats and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HitFigure {
    /// Its place among the configuration's `[[rule]]`s or `[[rewrite]]`s, from 0.
    pub index: u32,
    /// Its `name` in the configuration.
    pub name: Option<String>,
    /// Frames it matched since its configuration was loaded.
    pub hits: u64,
}

/// The hit counters and the labels of the active set.
pub struct Hits {
    rules: PerCpuArray<MapData, u64>,
    nats: PerCpuArray<MapData, u64>,
    set: u32,
    rule_names: Vec<Option<String>>,
    nat_names: Vec<Option<String>>,
}

/// Shared by the reloads, which zero and label sets, and the stats, which read them.
pub type SharedHits = Arc<Mutex<Hits>>;

impl Hits {
    pub fn take(ebpf: &mut aya::Ebpf) -> anyhow::Result<SharedHits> {
        let mut take =
            |name: &str| ebpf.take_map(name).with_context(|| format!("map {name} missing"));
        Ok(Arc::new(Mutex::new(Hits {
            rules: PerCpuArray::try_from(take(map_names::RULE_HITS)?)?,
            nats: PerCpuArray::try_from(take(map_names::NAT_HITS)?)?,
            set: 0,
            rule_names: Vec::new(),
            nat_names: Vec::new(),
        })))
    }

    /// Zeroes the counters of `set` (idle: nothing counts there until it becomes active).
    pub fn reset(&mut self, set: u32) -> anyhow::Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e).context("counting CPUs")?;
        let zero = || PerCpuValues::try_from(vec![0u64; cpus]);
        for i in 0..MAX_RULES {
            self.rules.set(set * MAX_RULES + i, zero()?, 0)?;
        }
        for i in 0..MAX_NATS {
            self.nats.set(set * MAX_NATS + i, zero()?, 0)?;
        }
        Ok(())
    }

    /// The set now active, with the names of its rules and rewrites.
    pub fn activate(&mut self, set: u32, rules: Vec<Option<String>>, nats: Vec<Option<String>>) {
        (self.set, self.rule_names, self.nat_names) = (set, rules, nats);
    }

    /// The active set's counts: rules, then rewrites.
    pub fn read(&self) -> (Vec<HitFigure>, Vec<HitFigure>) {
        let figures = |map: &PerCpuArray<MapData, u64>, base: u32, names: &[Option<String>]| {
            names
                .iter()
                .enumerate()
                .map(|(i, name)| HitFigure {
                    index: i as u32,
                    name: name.clone(),
                    hits: map.get(&(base + i as u32), 0).map_or(0, |v| v.iter().sum()),
                })
                .collect()
        };
        (
            figures(&self.rules, self.set * MAX_RULES, &self.rule_names),
            figures(&self.nats, self.set * MAX_NATS, &self.nat_names),
        )
    }
}
