//! The maps user space fills and the program reads, and the per-CPU counters.
//!
//! Owns the map declarations (names as `xdpfwd_common` spells them) and the two accessors
//! every stage uses; no frame access.

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, DevMap, HashMap, LpmTrie, PerCpuArray, XskMap},
};
use xdpfwd_common::{
    CacheCtl, CacheStat, Counter, DEFAULT_CACHE_SLOTS, FIB_CTL_LEN, FibRule, IFINDEX_DIRECT,
    IfaceInfo, MAX_FIB_RULES, MAX_IFACES, MAX_NATS, MAX_NEIGHBOURS, MAX_NH_BUCKETS, MAX_NH_GROUPS,
    MAX_NH_SLOTS, MAX_ROUTES, MAX_RULES, Nat, NeighKeyV4, NeighKeyV6, Neighbour, NhGroup,
    RULESET_LEN, Route, Rule, XSK_MAP_SIZE,
};

use crate::{
    decision::{Flow, Parsed, Steer, Verdict},
    flow_cache::Entry,
};

#[map]
pub static XSKS: XskMap = XskMap::with_max_entries(XSK_MAP_SIZE, 0);
/// Managed interfaces by ifindex below `IFINDEX_DIRECT` (see [`iface`]).
#[map]
pub static IFACES_DIRECT: Array<IfaceInfo> = Array::with_max_entries(IFINDEX_DIRECT, 0);
/// Managed interfaces with a larger ifindex.
#[map]
pub static IFACES: HashMap<u32, IfaceInfo> = HashMap::with_max_entries(MAX_IFACES, 0);
/// Routes of every table, keyed by table and prefix (`xdpfwd_common::route_key_v4`).
#[map]
pub static ROUTES_V4: LpmTrie<[u8; 8], Route> = LpmTrie::with_max_entries(MAX_ROUTES, 0);
#[map]
pub static ROUTES_V6: LpmTrie<[u8; 20], Route> = LpmTrie::with_max_entries(MAX_ROUTES, 0);
/// Policy rules: two sets of both families (`xdpfwd_common::fib_rule_index`).
#[map]
pub static FIB_RULES: Array<FibRule> = Array::with_max_entries(4 * MAX_FIB_RULES, 0);
/// The `FibWord` of IPv4 (0) and IPv6 (1), the kernel's `fib_multipath_hash_seed`
/// (`FIB_CTL_SEED`, 0: not set) and the `HashFields` of IPv4 and IPv6 (from
/// `FIB_CTL_FIELDS`).
#[map]
pub static FIB_CTL: Array<u32> = Array::with_max_entries(FIB_CTL_LEN, 0);
/// Nexthop slot → index of its published group in `NH_GROUPS` (0: the kernel decides).
#[map]
pub static NH_SLOTS: Array<u32> = Array::with_max_entries(MAX_NH_SLOTS, 0);
#[map]
pub static NH_GROUPS: Array<NhGroup> = Array::with_max_entries(MAX_NH_GROUPS, 0);
/// Resilient groups' bucket tables: bucket → index of its path (`NhGroup::bucket_base`).
#[map]
pub static NH_BUCKETS: Array<u8> = Array::with_max_entries(MAX_NH_BUCKETS, 0);
/// The frame's [`crate::decision::Flow`] (one per CPU): in a map, not on the 512-byte stack.
/// Index 1 holds the reverse flow of the source check.
#[map]
pub static FLOW: PerCpuArray<Flow> = PerCpuArray::with_max_entries(2, 0);
/// What `classify` hands `classify::decide` (one per CPU).
#[map]
pub static PARSED: PerCpuArray<Parsed> = PerCpuArray::with_max_entries(1, 0);
/// The decision for the frame (one per CPU), from `classify` to `egress`.
#[map]
pub static STEER: PerCpuArray<Steer> = PerCpuArray::with_max_entries(1, 0);
/// Where the rule walk leaves the route it found (per CPU): 0 for the destination, 1 for
/// the source check's reverse lookup.
#[map]
pub static FIB_RESULT: PerCpuArray<Route> = PerCpuArray::with_max_entries(2, 0);
#[map]
pub static NEIGH_V4: HashMap<NeighKeyV4, Neighbour> = HashMap::with_max_entries(MAX_NEIGHBOURS, 0);
#[map]
pub static NEIGH_V6: HashMap<NeighKeyV6, Neighbour> = HashMap::with_max_entries(MAX_NEIGHBOURS, 0);
/// Egress devices of the fast path, keyed by interface slot.
#[map]
pub static DEVMAP: DevMap = DevMap::with_max_entries(MAX_IFACES, 0);
/// Two rule sets (see `xdpfwd_common::MAX_RULES`); `RULESET` says which one is active.
#[map]
pub static RULES: Array<Rule> = Array::with_max_entries(2 * MAX_RULES, 0);
/// The active `Policy` word.
#[map]
pub static RULESET: Array<u32> = Array::with_max_entries(RULESET_LEN, 0);
/// Two sets of NAT rewrites, selected with the rules by the `Policy` word.
#[map]
pub static NATS: Array<Nat> = Array::with_max_entries(2 * MAX_NATS, 0);

/// Frames each rule of `RULES` matched (same index), per CPU.
#[map]
pub static RULE_HITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(2 * MAX_RULES, 0);
/// Frames each rewrite of `NATS` was chosen for (same index), per CPU.
#[map]
pub static NAT_HITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(2 * MAX_NATS, 0);
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// The flow cache: this many slots per CPU (user space sets the size at load).
#[map]
pub static FLOW_CACHE: PerCpuArray<Entry> = PerCpuArray::with_max_entries(DEFAULT_CACHE_SLOTS, 0);
/// The flow cache's generation and slot mask. Mappable: user space stores the generation
/// with one 8-byte store (`userspace/src/flow_cache.rs`), which the probe loads whole.
#[map]
pub static CACHE_CTL: Array<CacheCtl> = Array::with_max_entries(1, BPF_F_MMAPABLE);
/// The flow cache's hits and fills (`xdpfwd_common::CacheStat`), per CPU.
#[map]
pub static FLOW_CACHE_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(CacheStat::COUNT, 0);

/// Counts the frame `verdict` decides in its one counter.
#[inline(always)]
pub fn count(verdict: Verdict) {
    if let Some(value) = COUNTERS.get_ptr_mut(verdict.reason()) {
        // SAFETY: the pointer comes from a successful lookup in a per-CPU array, so it is valid
        // and only this CPU writes it while this program runs.
        unsafe { *value += 1 };
    }
}

/// Counts one in entry `index` of a per-CPU counter array.
#[inline(always)]
pub fn count_one(map: &PerCpuArray<u64>, index: u32) {
    if let Some(value) = map.get_ptr_mut(index) {
        // SAFETY: this CPU's slot of a per-CPU array: no other program run writes it meanwhile.
        unsafe { *value += 1 };
    }
}

/// Interface `ifindex` as user space wrote it; an unmanaged one may come back all zero (its
/// flags say so).
#[inline(always)]
pub fn iface(ifindex: u32) -> Option<&'static IfaceInfo> {
    if ifindex < IFINDEX_DIRECT {
        return IFACES_DIRECT.get(ifindex);
    }
    // SAFETY: the map value lives while this program runs; user space may rewrite it
    // concurrently, which at worst yields a mix of old and new fields for this one frame.
    // (The same holds for the array's entries.)
    unsafe { IFACES.get(ifindex) }
}
