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
//! Two BPF programs share the maps: the entry program `xdpfwd` (attached) makes the router's
//! checks and takes a flow's decision from the flow cache, all inline; a frame the cache has
//! no decision for goes on, by a tail call, to the miss program `xdpfwd_miss`, which makes
//! the checks again and runs every stage. (One program could not inline the checks: the
//! verifier sums the stack frames of a call chain to at most 512 bytes, and the miss stages
//! need theirs; a call per frame costs several ns.)
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

use crate::decision::{Steer, Verdict};

// `frags`: frames may arrive in more than one buffer (jumbo frames; see `wire::frame_len`).
#[xdp(frags)]
pub fn xdpfwd(ctx: XdpContext) -> u32 {
    // `Counter::Rx` is not counted here: user space derives it as the sum of the verdicts,
    // which saves a map update per frame.
    let Some(steer) = maps::STEER.get_ptr_mut(0) else { return xdp_action::XDP_PASS };
    // SAFETY: a per-CPU slot only this CPU uses while this program runs.
    let steer = unsafe { &mut *steer };
    capture::arrived(&ctx);
    let decided = if flow_cache::enabled() {
        classify::cached(&ctx, steer)
    } else {
        Err(Counter::PassNoMissProgram)
    };
    let verdict = match decided {
        Err(Counter::PassNoMissProgram) => {
            // SAFETY: a tail call does not return when it succeeds; the frame is as it
            // arrived (nothing above writes it), and the miss program takes it from there.
            unsafe { maps::MISS_PROGRAM.tail_call(&ctx, 0) };
            Verdict::pass(Counter::PassNoMissProgram)
        }
        decided => carry_out(&ctx, steer, decided),
    };
    finish(&ctx, steer, verdict)
}

/// The miss program: every stage, for a frame [`xdpfwd`] found no cached decision for.
/// Entered by its tail call only (never attached), with the frame as it arrived.
#[xdp(frags)]
pub fn xdpfwd_miss(ctx: XdpContext) -> u32 {
    let Some(steer) = maps::STEER.get_ptr_mut(0) else { return xdp_action::XDP_PASS };
    // SAFETY: as in `xdpfwd`.
    let steer = unsafe { &mut *steer };
    let decided = classify::classify(&ctx, steer);
    let verdict = carry_out(&ctx, steer, decided);
    finish(&ctx, steer, verdict)
}

/// Carries out what `classify` decided into `steer`.
#[inline(always)]
fn carry_out(ctx: &XdpContext, steer: &mut Steer, decided: Result<(), Counter>) -> Verdict {
    match decided {
        Ok(()) if egress::plain(steer) => egress::forward_plain(ctx, steer),
        Ok(()) => egress::forward(ctx, steer),
        Err(Counter::DropRule) => Verdict::drop(Counter::DropRule),
        Err(reason) => Verdict::pass(reason),
    }
}

/// Counts the verdict, shows it to a capture, and returns its XDP action.
#[inline(always)]
fn finish(ctx: &XdpContext, steer: &Steer, verdict: Verdict) -> u32 {
    maps::count(verdict);
    capture::decided(ctx, verdict, steer.meta.oif);
    verdict.action()
}
