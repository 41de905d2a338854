//! 802.1Q tags on the way out: pop, push, or rewrite the VID in place.
//!
//! Decides with [`egress_vlan`] (no change) and applies with [`vlan_apply`], which either
//! changes the frame completely or not at all.

use aya_ebpf::{helpers::bpf_xdp_adjust_head, programs::XdpContext};
use xdpfwd_common::{Counter, IfaceInfo};

use crate::{
    decision::{Ingress, Vlan},
    wire::{ETH_HLEN, ETH_P_8021Q, VLAN_HLEN, field16, move_macs, ptr_at},
};

/// The VLAN handling of a routed frame: the ingress tag (a VLAN's or a priority tag) is
/// popped, the route's or the egress interface's VLAN id pushed. (`classify` checks that a pushed tag still fits the path.)
#[inline(always)]
pub fn egress_vlan(at: &Ingress, route_vlan: u16, out: &IfaceInfo) -> Vlan {
    let push = if route_vlan != 0 { route_vlan } else { out.push_vlan };
    Vlan { pop: at.popped(), push }
}

/// Pops, pushes or rewrites the 802.1Q tag; returns the new offset of the IP header. On
/// `Err` (no headroom) the frame is unchanged.
#[inline(always)]
pub fn vlan_apply(ctx: &XdpContext, l3: usize, vlan: Vlan) -> Result<usize, Counter> {
    match (vlan.pop, vlan.push != 0) {
        (false, false) => Ok(l3),
        (true, true) => {
            let tag = field16(ctx, ETH_HLEN)?;
            // SAFETY: `field16` checked the 2 bytes of the TCI; the priority bits stay.
            unsafe {
                let pcp = (*tag)[0] & 0xf0;
                (*tag)[0] = pcp | (vlan.push >> 8) as u8 & 0x0f;
                (*tag)[1] = vlan.push as u8;
            }
            Ok(l3)
        }
        (true, false) => {
            let eth = ptr_at::<[u8; ETH_HLEN + VLAN_HLEN]>(ctx, 0)?;
            // SAFETY: `ptr_at` checked the 18 bytes; the MACs are read before the head moves.
            let macs = unsafe { core::ptr::read_unaligned(eth as *const [u8; 12]) };
            // SAFETY: `ctx.ctx` is the live `xdp_md`; the frame keeps ≥ 14 bytes.
            if unsafe { bpf_xdp_adjust_head(ctx.ctx, VLAN_HLEN as i32) } != 0 {
                return Err(Counter::PassNoMeta);
            }
            let eth = ptr_at::<[u8; 12]>(ctx, 0)? as *mut [u8; 12];
            // SAFETY: `ptr_at` checked the 12 bytes at the new start, over the old tag.
            unsafe { eth.write_unaligned(macs) };
            Ok(l3 - VLAN_HLEN)
        }
        (false, true) => {
            // SAFETY: `ctx.ctx` is the live `xdp_md`; the driver's headroom takes 4 bytes.
            if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(VLAN_HLEN as i32)) } != 0 {
                return Err(Counter::PassNoMeta);
            }
            let eth =
                ptr_at::<[u8; ETH_HLEN + VLAN_HLEN]>(ctx, 0)? as *mut [u8; ETH_HLEN + VLAN_HLEN];
            // SAFETY: `ptr_at` checked the 18 bytes. The MACs move 4 bytes down and the tag
            // goes between them and the ethertype.
            unsafe {
                move_macs(eth as *mut u8, 4, 0);
                (*eth)[12] = (ETH_P_8021Q >> 8) as u8;
                (*eth)[13] = ETH_P_8021Q as u8;
                (*eth)[14] = (vlan.push >> 8) as u8 & 0x0f;
                (*eth)[15] = vlan.push as u8;
            }
            Ok(l3 + VLAN_HLEN)
        }
    }
}
