//! Carries a decision out: the only place a frame changes. Everything that can fail for want
//! of room (the metadata area, a VLAN push) happens before the first byte is written, so a
//! frame this module passes to the kernel is the frame that arrived.
//!
//! AF_XDP path: metadata for user space, then `XSKS`. Fast path: the router's rewrite, then
//! `DEVMAP`.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_xdp_adjust_meta, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use xdpfwd_common::{Counter, ICMP_QUOTE_MAX, META_LEN, MetaFlags, XskMeta, xsk_key};

use crate::{
    decision::{NO_NAT, Steer, SteerFlags, Verdict},
    maps::{DEVMAP, NATS, XSKS},
    nat::{nat_v4, nat_v6},
    vlan::vlan_apply,
    wire::{ETH_HLEN, IPV4_HLEN, IPV6_HLEN, VLAN_HLEN, copy_words, frame_len, ipv4, ipv6, ptr_at},
};

/// Checks that the destination (socket or device) exists, reserves the metadata, applies the
/// VLAN change, the NAT rewrite and (fast path) the router rewrite, then redirects.
///
/// Out of line (a BPF subprogram): frames of the plain fast path never call it
/// ([`forward_plain`]), and its stack frame is not added to the stages'.
#[inline(never)]
pub fn forward(ctx: &XdpContext, steer: &mut Steer) -> Verdict {
    let fast = steer.fast();
    // The fast path's target is set first, which changes nothing of the frame: a device
    // missing from DEVMAP leaves it to the kernel untouched. (One call for the lookup and the
    // redirect: every call and return costs, more so under return-stack mitigations.)
    let ready = if fast {
        fast_target(steer)
    } else {
        xsk_key(steer.slot, ctx.rx_queue_index()).is_some_and(|key| XSKS.get(key).is_some())
    };
    if !ready {
        return pass(if fast { Counter::PassEgress } else { Counter::PassNoSocket });
    }
    // SAFETY: `ctx.ctx` is the live `xdp_md`; the frame's bytes do not move.
    if !fast && unsafe { bpf_xdp_adjust_meta(ctx.ctx, -(META_LEN as i32)) } != 0 {
        return pass(Counter::PassNoMeta);
    }
    let l3 = match vlan_apply(ctx, steer.meta.l3_off as usize, steer.vlan()) {
        Ok(l3) => l3,
        Err(reason) => return pass(reason),
    };
    steer.meta.l3_off = l3 as u16;
    // Nothing below fails on a frame `classify` accepted (the headers were bounds-checked
    // there); the `Err`s are for the verifier.
    if let Some(nat) = NATS.get(steer.nat) {
        let result = match (l3, steer.meta.flags.contains(MetaFlags::IPV6)) {
            (ETH_HLEN, false) => nat_v4::<ETH_HLEN>(ctx, nat),
            (ETH_HLEN, true) => nat_v6::<ETH_HLEN>(ctx, nat),
            (_, false) => nat_v4::<{ ETH_HLEN + VLAN_HLEN }>(ctx, nat),
            (_, true) => nat_v6::<{ ETH_HLEN + VLAN_HLEN }>(ctx, nat),
        };
        if result.is_err() {
            return drop(Counter::FastFailed);
        }
    }
    if steer.flags.contains(SteerFlags::PEER_MAC) {
        let Ok(eth) = ptr_at::<[u8; 6]>(ctx, 0) else { return drop(Counter::FastFailed) };
        // SAFETY: `ptr_at` checked the 6 bytes; nothing else refers to them.
        unsafe { (*(eth as *mut [u8; 6])).copy_from_slice(&steer.meta.addr[0..6]) };
    }
    if fast { fast_forward(ctx, steer) } else { redirect(ctx, steer) }
}

/// [`forward`] for the fast path's plain case: no VLAN change, no NAT, no L2 cross-connect.
/// Inlined into the program's main function, where it saves a call and a return per frame.
#[inline(always)]
pub fn forward_plain(ctx: &XdpContext, steer: &Steer) -> Verdict {
    if !fast_target(steer) {
        return pass(Counter::PassEgress);
    }
    fast_forward(ctx, steer)
}

/// Sets the fast path's egress device as the redirect's target, without touching the frame;
/// false if it is missing from `DEVMAP` (the frame then goes to the kernel as it arrived).
/// [`fast_forward`] returns `XDP_REDIRECT` on this.
#[inline(always)]
fn fast_target(steer: &Steer) -> bool {
    DEVMAP.redirect(steer.egress_slot, u64::from(xdp_action::XDP_PASS)).is_ok()
}

/// Whether [`forward_plain`] carries `steer` out.
#[inline(always)]
pub fn plain(steer: &Steer) -> bool {
    let special = SteerFlags::POP.union(SteerFlags::PEER_MAC);
    steer.fast()
        && !steer.flags.intersects(special)
        && steer.push == 0
        && steer.nat == NO_NAT
        && !steer.meta.flags.contains(MetaFlags::L2)
}

#[inline(always)]
fn pass(reason: Counter) -> Verdict {
    Verdict::pass(reason)
}

/// A frame already changed that cannot go on: dropped, never passed half-rewritten.
#[inline(always)]
fn drop(reason: Counter) -> Verdict {
    Verdict::drop(reason)
}

/// The in-kernel fast path: the same rewrite user space does (MACs, TTL with the kernel's
/// incremental checksum update, hop limit, padding trimmed), then a redirect to the egress
/// device. Cross-connected frames go as they are.
#[inline(always)]
fn fast_forward(ctx: &XdpContext, steer: &Steer) -> Verdict {
    let meta = &steer.meta;
    let l3 = meta.l3_off as usize;
    if !meta.flags.contains(MetaFlags::L2) {
        // The offset as a constant: the verifier cannot bound a packet offset read from a map.
        let rewritten = match l3 {
            ETH_HLEN => rewrite_in_place::<ETH_HLEN>(ctx, meta),
            _ => rewrite_in_place::<{ ETH_HLEN + VLAN_HLEN }>(ctx, meta),
        };
        if rewritten.is_err() {
            return drop(Counter::FastFailed);
        }
        // The Ethernet padding of a short frame goes.
        if steer.flags.contains(SteerFlags::PADDED)
            && trim(ctx, l3 + steer.ip_len as usize).is_err()
        {
            return drop(Counter::FastFailed);
        }
    }
    // The caller set the target (`fast_target`).
    Verdict::new(xdp_action::XDP_REDIRECT, Counter::FastForwarded)
}

/// Shortens the frame to `want` bytes if it is longer (from its last buffer on).
#[inline(always)]
fn trim(ctx: &XdpContext, want: usize) -> Result<(), ()> {
    let len = frame_len(ctx);
    // SAFETY: `ctx.ctx` is the live `xdp_md`; shrinking keeps the frame `want` bytes long.
    if len > want && unsafe { bpf_xdp_adjust_tail(ctx.ctx, -((len - want) as i32)) } != 0 {
        return Err(());
    }
    Ok(())
}

/// Writes the MACs and decrements the TTL / hop limit of the frame classified as `meta`,
/// whose IP header is at `L3`. Touches nothing (returns `Err`) when the headers are not all in
/// bounds.
#[inline(always)]
fn rewrite_in_place<const L3: usize>(ctx: &XdpContext, meta: &XskMeta) -> Result<(), Counter> {
    let l3 = L3;
    let eth = ptr_at::<[u8; 12]>(ctx, 0)? as *mut [u8; 12];
    if meta.flags.contains(MetaFlags::IPV6) {
        let ip = ptr_at::<[u8; IPV6_HLEN]>(ctx, l3)? as *mut [u8; IPV6_HLEN];
        // SAFETY: both pointers were bounds-checked by `ptr_at`; nothing else aliases them.
        unsafe {
            (*ip)[ipv6::HOP_LIMIT] -= 1;
            copy_words(eth, meta.addr.as_ptr().cast::<[u8; 12]>());
        }
    } else {
        let ip = ptr_at::<[u8; IPV4_HLEN]>(ctx, l3)? as *mut [u8; IPV4_HLEN];
        // SAFETY: as above.
        unsafe {
            (*ip)[ipv4::TTL] -= 1;
            // ip_decrease_ttl() from include/net/ip.h: csum += htons(0x0100), folded, in
            // memory byte order.
            let at = ipv4::CHECK;
            let mut sum = u16::from_ne_bytes([(*ip)[at], (*ip)[at + 1]]) as u32;
            sum += 0x0100u16.to_be() as u32;
            sum += (sum >= 0xffff) as u32;
            let check = (sum as u16).to_ne_bytes();
            (*ip)[at] = check[0];
            (*ip)[at + 1] = check[1];
            copy_words(eth, meta.addr.as_ptr().cast::<[u8; 12]>());
        }
    }
    Ok(())
}

/// The AF_XDP path: writes the metadata reserved by [`forward`] and redirects to the socket
/// of the rx queue.
#[inline(always)]
fn redirect(ctx: &XdpContext, steer: &Steer) -> Verdict {
    // `forward` checked the key before anything changed.
    let Some(key) = xsk_key(steer.slot, ctx.rx_queue_index()) else {
        return drop(Counter::FastFailed);
    };
    let meta = ctx.metadata();
    if meta + META_LEN > ctx.data() {
        return drop(Counter::FastFailed);
    }
    // SAFETY: the check above proves `META_LEN` bytes from `meta` lie in the metadata area
    // (packet data: unaligned access allowed); `steer` is a map value.
    unsafe { copy_words(meta as *mut XskMeta, &steer.meta) };
    if steer.meta.flags.contains(MetaFlags::ICMP)
        && trim(ctx, steer.meta.l3_off as usize + ICMP_QUOTE_MAX).is_err()
    {
        return drop(Counter::FastFailed);
    }
    match XSKS.redirect(key, 0) {
        Ok(action) => {
            let flags = steer.meta.flags;
            let reason = if flags.contains(MetaFlags::ICMP) {
                Counter::SteeredIcmp
            } else if flags.contains(MetaFlags::NEED_NEIGH) {
                Counter::SteeredNeighMiss
            } else {
                Counter::Steered
            };
            Verdict::new(action, reason)
        }
        Err(_) => drop(Counter::FastFailed),
    }
}
