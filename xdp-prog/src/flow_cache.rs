//! The flow cache: the policy and route stages' decision for a flow, kept per CPU and reused
//! for the flow's next frames while nothing it was made from has changed.
//!
//! Exact by construction. The key ([`FlowKey`]) holds everything of the frame those stages
//! read: the [`Flow`] as classified and the IP header's offset. Everything else they read
//! is in maps only the control plane writes, and it starts a new generation (`CACHE_CTL`)
//! after every change, which turns every entry filled before into a miss. The generation is
//! read before the first of those maps, so an entry made from a map older than the current
//! generation carries an older generation too. A hit still makes the checks that depend on
//! the frame rather than the flow: its IP length against the route's MTU (kept in the
//! entry), the TTL (an expired frame never uses the cache) and, in `classify`, the fit for
//! its path; the steering rule that matched counts the frame as before.
//!
//! Only resolved decisions without a rewrite are cached: no NAT, no ICMP answer, no frame
//! held for its next hop. A hit does not mark the neighbour as used (`route::neighbour`):
//! every flow misses at least once per generation, and the control plane starts one at
//! least every 0.5 s, well within the 5 s after which it looks at the marks.
//!
//! Owns `FLOW_CACHE` and `FLOW_CACHE_STATS`; reads `CACHE_CTL`, counts in `RULE_HITS`.

use xdpfwd_common::{CacheStat, FlowKey, MetaFlags, key_ds, key_hash, key_iface, key_ports};

use crate::{
    decision::{Flow, NO_NAT, Steer},
    maps::{CACHE_CTL, FLOW_CACHE, FLOW_CACHE_STATS, RULE_HITS, count_one},
    wire::{copy_words, copy_words8},
};

/// A slot of `FLOW_CACHE`.
#[repr(C)]
pub struct Entry {
    key: FlowKey,
    /// The generation the decision was made in (0: none).
    generation: u64,
    /// The generation a miss read, until the decision is filled in.
    pending: u64,
    steer: Steer,
    /// Index + 1 in `RULE_HITS` of the steering rule that matched (0: none).
    rule: u32,
}
// 128 bytes, no padding: two cache lines' worth (a per-CPU value is 8-aligned, so a slot
// may touch a third). The steer 8-aligned, as `copy_words8` wants it.
const _: () = assert!(core::mem::size_of::<Entry>() == 128);
const _: () = assert!(core::mem::offset_of!(Entry, steer).is_multiple_of(8));

/// [`probe`]: the decision is in the steer.
pub const HIT: u32 = u32::MAX;
/// [`probe`]: a miss that is not to be filled in (the cache is off, the frame expired).
pub const NO_FILL: u32 = u32::MAX - 1;

/// Looks the flow, its IP header at `l3`, up in this CPU's table. On a hit, writes the
/// cached decision into `steer` (with this frame's IP length) and returns [`HIT`]; on a
/// miss, claims the flow's slot for [`xdpfwd_cache_fill`] (in `Flow::cache_slot`) and
/// returns it, or [`NO_FILL`]. `steer` must be the per-CPU `STEER` value (8-aligned: a hit
/// copies into it in 8-byte words).
///
/// Inline, unlike the fill and the stages after it: every frame probes, and a BPF call and
/// its return cost several ns each (more under return-stack mitigations), for a few
/// thousand more instructions verified.
#[inline(always)]
pub fn probe(flow: &mut Flow, steer: &mut Steer, l3: usize, ip_len: usize, expired: bool) -> u32 {
    flow.cache_slot = NO_FILL;
    let Some(ctl) = CACHE_CTL.get_ptr(0) else { return NO_FILL };
    // SAFETY: a map value, 8-aligned; user space stores the generation with one 8-byte
    // store, and this one 8-byte load sees either the old or the new value.
    let generation = unsafe { (&raw const (*ctl).generation).read_volatile() };
    if generation == 0 || expired {
        return NO_FILL;
    }
    // SAFETY: as above; the mask never changes once the cache is on.
    let mask = unsafe { (*ctl).mask };
    let (l3, ip_len) = (l3 as u8, ip_len as u32);
    let word = |i| key_word(flow, l3, i);
    let h = key_hash([word(0), word(1), word(2), word(3)], [word(4), word(5), word(6)]);
    let slot = h as u32 & mask;
    let Some(entry) = FLOW_CACHE.get_ptr_mut(slot) else { return NO_FILL };
    // SAFETY: this CPU's value of a per-CPU array: nothing else writes it while this program
    // runs, and user space never does.
    let entry = unsafe { &mut *entry };
    if entry.generation == generation && same(&entry.key, flow, l3) && ip_len <= entry.steer.mtu {
        // SAFETY: both are `Steer`s in map values, 8-aligned (the per-CPU `STEER` value, and
        // the entry's field, asserted above).
        unsafe { copy_words8(steer, &entry.steer) };
        steer.ip_len = ip_len;
        if entry.rule != 0 {
            count_one(&RULE_HITS, entry.rule - 1);
        }
        count_stat(CacheStat::Hits);
        return HIT;
    }
    let mut i = 0;
    while i < KEY_WORDS {
        entry.key.0[i] = key_word(flow, l3, i);
        i += 1;
    }
    entry.generation = 0;
    entry.pending = generation;
    flow.cache_slot = slot;
    slot
}

/// Fills the slot [`probe`] claimed for `flow` with the decision in `steer`,
/// where it can be reused: resolved, no NAT, no answer. A BPF global function, as
/// `policy::xdpfwd_rules`: verified once, on its own.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn xdpfwd_cache_fill(flow: *const Flow, steer: *const Steer) -> u32 {
    // SAFETY: callers pass the live per-CPU flow and steer; the verifier checks the pointers
    // (they may be null).
    let (Some(flow), Some(steer)) = (unsafe { flow.as_ref() }, unsafe { steer.as_ref() }) else {
        return 0;
    };
    let (slot, rule) = (flow.cache_slot, flow.rule);
    let unresolved = MetaFlags::ICMP.union(MetaFlags::NEED_NEIGH).union(MetaFlags::L2);
    if slot >= NO_FILL
        || steer.mtu == 0
        || steer.nat != NO_NAT
        || steer.meta.flags.intersects(unresolved)
    {
        return 0;
    }
    let Some(entry) = FLOW_CACHE.get_ptr_mut(slot) else { return 0 };
    // SAFETY: this CPU's value of a per-CPU array, as in the probe.
    let entry = unsafe { &mut *entry };
    if entry.pending == 0 {
        return 0;
    }
    // SAFETY: both are `Steer`s in map values, aligned.
    unsafe { copy_words(&mut entry.steer, steer) };
    entry.rule = rule;
    entry.generation = entry.pending;
    entry.pending = 0;
    count_stat(CacheStat::Fills);
    1
}

/// Words in a [`FlowKey`].
const KEY_WORDS: usize = 7;

/// Word `i` of the cache key of `flow`, whose IP header is at `l3` (as `FlowKey::new`
/// lays them out), computed where it is used: a key on the stack would not fit the 512
/// bytes the call chain may take.
#[inline(always)]
fn key_word(flow: &Flow, l3: u8, i: usize) -> u64 {
    match i {
        0 => flow.src[0],
        1 => flow.src[1],
        2 => flow.dst[0],
        3 => flow.dst[1],
        4 => key_iface(flow.ifindex, flow.label),
        5 => key_ports(flow.sport, flow.dport, flow.vlan, flow.proto, flow.flags.bits()),
        _ => key_ds(flow.ds, l3),
    }
}

/// The entry's key is the flow's, word by word.
#[inline(always)]
fn same(key: &FlowKey, flow: &Flow, l3: u8) -> bool {
    let mut i = 0;
    while i < KEY_WORDS {
        if key.0[i] != key_word(flow, l3, i) {
            return false;
        }
        i += 1;
    }
    true
}

#[inline(always)]
fn count_stat(stat: CacheStat) {
    count_one(&FLOW_CACHE_STATS, stat as u32);
}
