//! The xdpfwd XDP program.
//!
//! Attached to every managed interface. For each frame it decides, from maps that user space
//! keeps in step with the kernel's FIB (policy rules, routes of every table, nexthop objects
//! and groups), neighbours and interfaces, whether a Linux router would forward it unchanged
//! but for the usual rewrite (MACs, TTL / hop limit, checksum). If so it writes an `XskMeta`
//! in front of the frame and redirects it to the AF_XDP socket of its rx queue (user space
//! rewrites and transmits it), or rewrites it here and redirects it to the egress device (the
//! fast path). Anything else goes to the kernel untouched (`XDP_PASS`), counted by reason.
//! The program never modifies a frame it passes, and drops only what a rule says to drop.
//!
//! The stages, in the order a frame meets them (each module says what it owns):
//! `classify` (the router's checks) → `flow_cache` (a flow's earlier decision, which skips
//! the next two) → `policy` (steering rules, NAT search) → `route` (policy rules, tables,
//! ECMP, neighbours) → `egress` (VLAN via `vlan`, NAT via `nat`, the rewrite, the
//! redirect). Below them: `decision` (what they pass along), `maps`, `wire`.
#![no_std]
#![no_main]

mod capture;
mod classify;
mod decision;
mod ecmp;
mod egress;
mod flow_cache;
mod maps;
mod nat;
mod policy;
mod route;
#[path = "rt.rs"]
mod rt;
mod vlan;
mod wire;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use xdpfwd_common::Counter;

use crate::decision::Verdict;

// `frags`: frames may arrive in more than one buffer (jumbo frames; see `wire::frame_len`).
#[xdp(frags)]
pub fn xdpfwd(ctx: XdpContext) -> u32 {
    // `Counter::Rx` is not counted here: user space derives it as the sum of the verdicts,
    // which saves a map update per frame.
    let Some(steer) = maps::STEER.get_ptr_mut(0) else { return xdp_action::XDP_PASS };
    // SAFETY: a per-CPU slot only this CPU uses while this program runs.
    let steer = unsafe { &mut *steer };
    capture::arrived(&ctx);
    let verdict = match classify::classify(&ctx, steer) {
        Ok(()) if egress::plain(steer) => egress::forward_plain(&ctx, steer),
        Ok(()) => egress::forward(&ctx, steer),
        Err(Counter::DropRule) => Verdict::drop(Counter::DropRule),
        Err(reason) => Verdict::pass(reason),
    };
    maps::count(verdict);
    capture::decided(&ctx, verdict, steer.meta.oif);
    verdict.action()
}
