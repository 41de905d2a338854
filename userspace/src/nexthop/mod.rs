//! Kernel nexthop objects (`ip nexthop`, what FRR installs every route through) and the
//! multipath sets of `RTA_MULTIPATH` routes, and their publication to the XDP program.
//!
//! netlink-packet-route has no nexthop messages, so [`reader`] reads them itself from a
//! socket of its own (`RTNLGRP_NEXTHOP`, a dump first) on a thread that hands parsed events
//! to the control plane. [`Nexthops`] resolves an id to its paths and publishes them as an
//! immutable [`NhGroup`] in `NH_GROUPS`, then points the id's slot in `NH_SLOTS` at it with
//! one word: routes follow a nexthop's changes without being rewritten, and the XDP program
//! always reads a whole group. A resilient group is published with the kernel's bucket
//! table (`NH_BUCKETS`) once every bucket is known. Anything it cannot mirror (blackhole,
//! FDB nexthops, encapsulation, more than `MAX_PATHS` paths, a bucket table not read yet)
//! publishes 0: the kernel decides.

mod buckets;
mod reader;
mod wire;

use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::IpAddr,
};

use aya::maps::{Array, MapData};
use xdpfwd_common::{
    HopFlags, MAX_NH_BUCKETS, MAX_NH_GROUPS, MAX_NH_SLOTS, MAX_PATHS, NhGroup, NhPath, upper_bounds,
};

use self::buckets::BucketSpace;
pub use self::reader::spawn_reader;
use crate::routes::Path;

/// A nexthop object as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Nexthop {
    /// Out of `oif`, through `gateway` (`None`: on-link).
    Single { oif: u32, gateway: Option<IpAddr> },
    /// A hash-threshold group of other nexthops, with weights.
    Group(Vec<(u32, u32)>),
    /// A resilient group of other nexthops: its buckets (reported apart) pick the path.
    Resilient { members: Vec<(u32, u32)>, buckets: u16 },
    /// Blackhole, FDB nexthop, encapsulation: the kernel decides.
    Kernel,
}

/// What the nexthop socket reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NhEvent {
    Set(u32, Nexthop),
    Del(u32),
    /// The end of the initial dump.
    Synced,
    /// The socket overran: events were lost.
    Overrun,
    /// The kernel refused a dump for now (busy, or no room for its answer): ask again. The
    /// reader handles it; the control plane never sees it.
    Refused,
    /// Bucket `index` of resilient group `group` goes to nexthop `nh` (a bucket dump's
    /// answer, or a bucket the kernel moved).
    Bucket {
        group: u32,
        index: u16,
        nh: u32,
    },
    /// The end of a bucket dump, and a bucket dump refused for now: the reader's business.
    BucketsDumped,
    BucketsRefused,
}

/// Ids of the multipath sets of `RTA_MULTIPATH` routes start here (above kernel ids in use).
const ANON_BASE: u32 = 0x8000_0000;

/// The nexthop objects and multipath sets, their slots and published groups.
pub struct Nexthops {
    objects: HashMap<u32, Nexthop>,
    /// Multipath sets of routes, by id (from [`ANON_BASE`]) and by their paths.
    anon: HashMap<Vec<Path>, u32>,
    anon_paths: HashMap<u32, Vec<Path>>,
    /// Slot of (id, IPv6 route) in `NH_SLOTS`, and the group index published there.
    slots: HashMap<(u32, bool), (u32, u32)>,
    /// Slots not in use, oldest first (as groups: reused as late as possible).
    free_slots: VecDeque<u32>,
    /// Group indices not in use, oldest first: an index is reused as late as possible, long
    /// after any frame that read the old group is gone.
    free_groups: VecDeque<u32>,
    /// Resilient groups' bucket tables: the nexthop of each bucket, `None` until known.
    tables: HashMap<u32, Vec<Option<u32>>>,
    /// Where a published group's bucket table lies in `NH_BUCKETS` (group index → start,
    /// length), and the room left.
    bucket_ranges: HashMap<u32, (u32, u32)>,
    bucket_space: BucketSpace,
    /// Neighbours (interface, address) in a state the kernel's path selection avoids
    /// (incomplete, failed): hash-threshold groups skip paths through them.
    bad_neighbours: HashSet<(u32, IpAddr)>,
    /// Resilient groups whose buckets changed since the last [`Self::flush_buckets`].
    buckets_changed: HashSet<u32>,
    /// `net.ipv4.fib_multipath_use_neigh`: IPv4 multipath routes avoid bad neighbours too.
    use_neigh: bool,
    pub nh_slots: Array<MapData, u32>,
    pub nh_groups: Array<MapData, NhGroup>,
    pub nh_buckets: Array<MapData, u8>,
}

impl Nexthops {
    pub fn new(
        nh_slots: Array<MapData, u32>,
        nh_groups: Array<MapData, NhGroup>,
        nh_buckets: Array<MapData, u8>,
    ) -> Self {
        Self {
            objects: HashMap::new(),
            anon: HashMap::new(),
            anon_paths: HashMap::new(),
            slots: HashMap::new(),
            free_slots: (1..MAX_NH_SLOTS).collect(),
            free_groups: (1..MAX_NH_GROUPS).collect(),
            tables: HashMap::new(),
            bucket_ranges: HashMap::new(),
            bucket_space: BucketSpace::new(MAX_NH_BUCKETS),
            bad_neighbours: HashSet::new(),
            buckets_changed: HashSet::new(),
            use_neigh: false,
            nh_slots,
            nh_groups,
            nh_buckets,
        }
    }

    /// The id of a route's multipath set (registered on first use).
    pub fn multipath(&mut self, paths: Vec<Path>) -> u32 {
        if let Some(id) = self.anon.get(&paths) {
            return *id;
        }
        let id = ANON_BASE + self.anon.len() as u32;
        self.anon_paths.insert(id, paths.clone());
        self.anon.insert(paths, id);
        id
    }

    /// A nexthop object was added or changed: republishes every slot it affects (its own and
    /// those of the groups holding it).
    pub fn set(&mut self, id: u32, nh: Nexthop) {
        match &nh {
            // The kernel may have moved buckets without a word (a replaced group): unknown
            // until the reader's bucket dump has told them all again.
            Nexthop::Resilient { buckets, .. } => {
                self.tables.insert(id, vec![None; usize::from(*buckets)]);
            }
            _ => {
                self.tables.remove(&id);
            }
        }
        self.objects.insert(id, nh);
        self.republish(id);
    }

    /// A neighbour became unusable to the kernel's path selection (`bad`), or usable again
    /// (or gone: no entry counts as good): the groups through it are published again.
    pub fn set_neighbour_bad(&mut self, key: (u32, IpAddr), bad: bool) {
        let changed =
            if bad { self.bad_neighbours.insert(key) } else { self.bad_neighbours.remove(&key) };
        if changed {
            self.republish_through(&[key]);
        }
    }

    /// Every neighbour the kernel's path selection avoids, as a dump reports them.
    pub fn set_bad_neighbours(&mut self, bad: HashSet<(u32, IpAddr)>) {
        let changed: Vec<(u32, IpAddr)> =
            self.bad_neighbours.symmetric_difference(&bad).copied().collect();
        self.bad_neighbours = bad;
        self.republish_through(&changed);
    }

    /// Republishes the objects and multipath sets whose path goes through one of
    /// `neighbours`.
    fn republish_through(&mut self, neighbours: &[(u32, IpAddr)]) {
        if neighbours.is_empty() {
            return;
        }
        let through = |oif: u32, gateway: Option<IpAddr>| {
            gateway.is_some_and(|g| neighbours.contains(&(oif, g)))
        };
        let mut ids: Vec<u32> = self
            .objects
            .iter()
            .filter(
                |(_, nh)| matches!(nh, Nexthop::Single { oif, gateway } if through(*oif, *gateway)),
            )
            .map(|(id, _)| *id)
            .collect();
        ids.extend(
            self.anon_paths
                .iter()
                .filter(|(_, paths)| paths.iter().any(|p| through(p.oif, p.gateway)))
                .map(|(id, _)| *id),
        );
        for id in ids {
            self.republish(id);
        }
    }

    /// Follows `net.ipv4.fib_multipath_use_neigh`: with it, the kernel's IPv4 multipath
    /// routes (`fib_select_multipath`) avoid bad neighbours as nexthop groups always do.
    pub fn set_use_neigh(&mut self, on: bool) {
        if self.use_neigh != on {
            self.use_neigh = on;
            let ids: Vec<u32> = self.anon_paths.keys().copied().collect();
            for id in ids {
                self.republish(id);
            }
        }
    }

    /// A bucket of a resilient group was reported; the group is published again by
    /// [`Self::flush_buckets`], once for a batch of them.
    pub fn set_bucket(&mut self, group: u32, index: u16, nh: u32) {
        let Some(table) = self.tables.get_mut(&group) else { return };
        let Some(entry) = table.get_mut(usize::from(index)) else { return };
        if *entry != Some(nh) {
            *entry = Some(nh);
            self.buckets_changed.insert(group);
        }
    }

    /// Publishes again the resilient groups whose buckets changed.
    pub fn flush_buckets(&mut self) {
        for group in std::mem::take(&mut self.buckets_changed) {
            self.republish(group);
        }
    }

    /// Nexthop objects and multipath sets known.
    pub fn len(&self) -> usize {
        self.objects.len() + self.anon_paths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a known nexthop object goes out of `ifindex`.
    pub fn uses_oif(&self, ifindex: u32) -> bool {
        self.objects.values().any(|nh| matches!(nh, Nexthop::Single { oif, .. } if *oif == ifindex))
    }

    /// The ids of the kernel's nexthop objects known.
    pub fn ids(&self) -> Vec<u32> {
        self.objects.keys().copied().collect()
    }

    /// A nexthop object was deleted: its slots publish "the kernel" (frames of routes still
    /// pointing there, until the caller removes them, go to the kernel).
    pub fn remove(&mut self, id: u32) {
        self.objects.remove(&id);
        self.tables.remove(&id);
        self.republish(id);
    }

    /// No route points at `slot` any more: it is freed with its group and reused as late as
    /// possible, so that routing daemons creating objects and path sets for ever never run
    /// out of them. The next route through its nexthop gets a new one.
    pub fn release_slot(&mut self, slot: u32) {
        let Some(key) = self.slots.iter().find(|(_, (s, _))| *s == slot).map(|(k, _)| *k) else {
            return;
        };
        let Some((_, group)) = self.slots.remove(&key) else { return };
        if let Err(err) = self.nh_slots.set(slot, 0, 0) {
            tracing::warn!(%err, "clearing a nexthop slot failed");
        }
        self.free_group(group);
        self.free_slots.push_back(slot);
    }

    /// A published group is no longer pointed at: its index (and its buckets' room) is
    /// reused as late as possible.
    fn free_group(&mut self, index: u32) {
        if index == 0 {
            return;
        }
        if let Some((start, len)) = self.bucket_ranges.remove(&index) {
            self.bucket_space.release(start, len);
        }
        self.free_groups.push_back(index);
    }

    fn republish(&mut self, id: u32) {
        let affected: Vec<(u32, bool)> = self
            .slots
            .keys()
            .filter(|(slot_id, _)| {
                *slot_id == id
                    || matches!(
                        self.objects.get(slot_id),
                        Some(Nexthop::Group(m) | Nexthop::Resilient { members: m, .. })
                            if m.iter().any(|(m, _)| *m == id)
                    )
            })
            .copied()
            .collect();
        for key in affected {
            self.publish(key);
        }
    }

    /// The slot routes of family `v6` through `id` point at (allocated and published on
    /// first use); `None` when the slots are exhausted.
    pub fn slot(&mut self, id: u32, v6: bool) -> Option<u32> {
        if let Some((slot, _)) = self.slots.get(&(id, v6)) {
            return Some(*slot);
        }
        let slot = self.free_slots.pop_front()?;
        self.slots.insert((id, v6), (slot, 0));
        self.publish((id, v6));
        Some(slot)
    }

    /// The paths of `id` for routes of family `v6`; `None`: the kernel decides.
    pub fn paths(&self, id: u32, v6: bool) -> Option<Vec<Path>> {
        let paths = if let Some(p) = self.anon_paths.get(&id) {
            p.clone()
        } else {
            match self.objects.get(&id)? {
                Nexthop::Single { oif, gateway } => {
                    vec![Path { oif: *oif, gateway: *gateway, weight: 1 }]
                }
                Nexthop::Group(members) | Nexthop::Resilient { members, .. } => members
                    .iter()
                    .map(|(m, weight)| match self.objects.get(m)? {
                        Nexthop::Single { oif, gateway } => {
                            Some(Path { oif: *oif, gateway: *gateway, weight: *weight })
                        }
                        _ => None,
                    })
                    .collect::<Option<Vec<_>>>()?,
                Nexthop::Kernel => return None,
            }
        };
        // IPv4 routes may go through IPv6 gateways (RFC 5549), IPv6 routes only through IPv6.
        let family_ok = paths.iter().all(|p| p.gateway.is_none_or(|g| !v6 || g.is_ipv6()));
        (!paths.is_empty() && paths.len() <= MAX_PATHS as usize && family_ok).then_some(paths)
    }

    /// A resilient group's buckets as indices into its members (paths); `None` while a
    /// bucket is unknown or names a nexthop that is no member, and while the table is not
    /// balanced.
    ///
    /// The kernel moves a bucket of an overweight member once it has been idle for the idle
    /// timer, and sees a bucket used only when it forwards through it: frames xdpfwd
    /// forwards would look idle and their flows be moved where the kernel keeps them. A
    /// balanced table moves nothing, so only a balanced one is xdpfwd's; until then the
    /// kernel forwards through the group (and keeps its busy buckets).
    fn bucket_paths(&self, id: u32) -> Option<Vec<u8>> {
        let Some(Nexthop::Resilient { members, .. }) = self.objects.get(&id) else { return None };
        let table: Vec<u8> = self
            .tables
            .get(&id)?
            .iter()
            .map(|nh| members.iter().position(|(m, _)| Some(*m) == *nh).map(|i| i as u8))
            .collect::<Option<_>>()?;
        let weights: Vec<u32> = members.iter().map(|(_, w)| *w).collect();
        let wants = wanted_buckets(&weights, table.len() as u32);
        let balanced = wants.iter().enumerate().all(|(i, want)| {
            table.iter().filter(|p| usize::from(**p) == i).count() as u32 == *want
        });
        balanced.then_some(table)
    }

    /// Publishes the group of slot `key` as a new immutable group, then switches the slot.
    fn publish(&mut self, key: (u32, bool)) {
        let Some(&(slot, old)) = self.slots.get(&key) else { return };
        let index = match self.group(key.0, key.1) {
            Some((group, table)) => match self.free_groups.pop_front() {
                Some(index) => match self.write_group(index, group, table.as_deref()) {
                    Ok(()) => index,
                    Err(err) => {
                        tracing::warn!("{err:#}: the kernel forwards through it");
                        self.free_group(index);
                        0
                    }
                },
                None => {
                    tracing::warn!(
                        "nexthop groups exhausted: the kernel forwards through new ones"
                    );
                    0
                }
            },
            None => 0,
        };
        if let Err(err) = self.nh_slots.set(slot, index, 0) {
            tracing::warn!(%err, "switching a nexthop slot failed");
        }
        self.free_group(old);
        self.slots.insert(key, (slot, index));
    }

    /// The group to publish for `id` (routes of family `v6`), with a resilient group's bucket
    /// table; `None`: the kernel decides.
    fn group(&self, id: u32, v6: bool) -> Option<(NhGroup, Option<Vec<u8>>)> {
        let paths = self.paths(id, v6)?;
        let mut group = group_of(&paths);
        match self.objects.get(&id) {
            Some(Nexthop::Resilient { .. }) => Some((group, Some(self.bucket_paths(id)?))),
            Some(Nexthop::Group(_)) => {
                self.mark_bad(&mut group, &paths);
                Some((group, None))
            }
            None if !v6 && self.use_neigh => {
                self.mark_bad(&mut group, &paths);
                Some((group, None))
            }
            _ => Some((group, None)),
        }
    }

    /// Marks the paths through a bad neighbour: hash-threshold skips them.
    fn mark_bad(&self, group: &mut NhGroup, paths: &[Path]) {
        for (slot, path) in group.paths.iter_mut().zip(paths) {
            if path.gateway.is_some_and(|g| self.bad_neighbours.contains(&(path.oif, g))) {
                slot.hop |= HopFlags::BAD;
            }
        }
    }

    /// Writes group `index` (and its bucket table, into room of its own first).
    fn write_group(
        &mut self,
        index: u32,
        mut group: NhGroup,
        table: Option<&[u8]>,
    ) -> anyhow::Result<()> {
        if let Some(table) = table {
            let len = table.len() as u32;
            let start = self
                .bucket_space
                .alloc(len)
                .ok_or_else(|| anyhow::anyhow!("no room for {len} more nexthop buckets"))?;
            self.bucket_ranges.insert(index, (start, len));
            for (i, path) in table.iter().enumerate() {
                self.nh_buckets.set(start + i as u32, *path, 0).map_err(|err| {
                    anyhow::anyhow!("writing a resilient group's buckets failed: {err}")
                })?;
            }
            (group.buckets, group.bucket_base) = (len, start);
        }
        self.nh_groups
            .set(index, group, 0)
            .map_err(|err| anyhow::anyhow!("writing a nexthop group failed: {err}"))
    }
}

/// The buckets each member of a resilient group wants, from the weights: the kernel's
/// `nh_res_group_rebalance` (`DIV_ROUND_CLOSEST(buckets * cumulated weight, total)`, less
/// the previous bound).
pub fn wanted_buckets(weights: &[u32], buckets: u32) -> Vec<u32> {
    let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
    let (mut cumulated, mut previous) = (0u64, 0u64);
    weights
        .iter()
        .map(|w| {
            cumulated += u64::from(*w);
            let bound = (u64::from(buckets) * cumulated + total / 2) / total.max(1);
            let want = bound - previous;
            previous = bound;
            want as u32
        })
        .collect()
}

/// The XDP program's group of `paths`, with the kernel's hash-threshold bounds.
pub fn group_of(paths: &[Path]) -> NhGroup {
    let mut group = NhGroup { count: paths.len() as u32, ..NhGroup::default() };
    let weights: Vec<u32> = paths.iter().map(|p| p.weight).collect();
    let mut bounds = vec![0u32; paths.len()];
    upper_bounds(&weights, &mut bounds);
    for ((slot, path), bound) in group.paths.iter_mut().zip(paths).zip(bounds) {
        let mut gateway = [0u8; 16];
        let mut hop = HopFlags::empty();
        match path.gateway {
            Some(IpAddr::V4(g)) => gateway[..4].copy_from_slice(&g.octets()),
            Some(IpAddr::V6(g)) => {
                gateway = g.octets();
                hop = HopFlags::GATEWAY_V6;
            }
            None => {}
        }
        *slot = NhPath { bound, oif: path.oif, gateway, hop };
    }
    group
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resilient_members_want_the_kernels_share_of_buckets() {
        assert_eq!(wanted_buckets(&[1, 1], 32), [16, 16]);
        assert_eq!(wanted_buckets(&[1, 3], 32), [8, 24]);
        // DIV_ROUND_CLOSEST of the cumulated bounds: 10.67 → 11, 21.33 → 21, 32.
        assert_eq!(wanted_buckets(&[1, 1, 1], 32), [11, 10, 11]);
        assert_eq!(wanted_buckets(&[1, 7], 8), [1, 7]);
    }

    #[test]
    fn groups_carry_the_kernels_bounds() {
        let p = |oif, w| Path { oif, gateway: None, weight: w };
        let g = group_of(&[p(3, 1), p(4, 3)]);
        assert_eq!(g.count, 2);
        assert_eq!(g.paths[0].bound, (1 << 29) - 1);
        assert_eq!(g.paths[1].bound, (1 << 31) - 1);
        assert_eq!(g.paths[1].oif, 4);
    }
}
