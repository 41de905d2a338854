//! Stateless NAT: a rewrite's addresses and ports, with the IP and L4 checksums updated
//! incrementally (RFC 1624).
//!
//! Called by `egress` only, for a frame whose headers `classify::nat_fits` checked, so that
//! no step fails half-way.

use aya_ebpf::programs::XdpContext;
use xdpfwd_common::{Counter, Nat, NatFields, csum};

use crate::wire::{
    IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, IPV4_HLEN, IPV6_HLEN, field16, ipv4,
    ipv6, ptr_at,
};

/// Where the L4 checksum of `proto` lies in its header, and whether it covers the
/// pseudo-header (the addresses).
#[inline(always)]
fn l4_checksum(proto: u8) -> Option<(usize, bool)> {
    match proto {
        IPPROTO_TCP => Some((16, true)),
        IPPROTO_UDP => Some((6, true)),
        IPPROTO_ICMP => Some((2, false)),
        IPPROTO_ICMPV6 => Some((2, true)),
        _ => None,
    }
}

/// The L4 part of a rewrite: ports (or the ICMP echo identifier), with the L4 checksum
/// (`check`, already adjusted for the addresses) updated when `update`; returns it.
#[inline(always)]
fn nat_l4(
    ctx: &XdpContext,
    l4: usize,
    nat: &Nat,
    proto: u8,
    update: bool,
    check: u16,
) -> Result<u16, Counter> {
    let set_port = |offset: usize, new: u16, check: u16| -> Result<u16, Counter> {
        let p = field16(ctx, l4 + offset)?;
        // SAFETY: `field16` checked the 2 bytes.
        let old = u16::from_be_bytes(unsafe { *p });
        // SAFETY: as above.
        unsafe { *p = new.to_be_bytes() };
        Ok(if update { csum::replace16(check, old, new) } else { check })
    };
    let mut check = check;
    match proto {
        IPPROTO_TCP | IPPROTO_UDP => {
            if nat.set.contains(NatFields::SPORT) {
                check = set_port(0, nat.sport, check)?;
            }
            if nat.set.contains(NatFields::DPORT) {
                check = set_port(2, nat.dport, check)?;
            }
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            // SAFETY: `ptr_at` checks the byte.
            let kind = unsafe { *ptr_at::<u8>(ctx, l4)? };
            let (request, reply) = if proto == IPPROTO_ICMP { (8, 0) } else { (128, 129) };
            if kind == request && nat.set.contains(NatFields::SPORT) {
                check = set_port(4, nat.sport, check)?;
            } else if kind == reply && nat.set.contains(NatFields::DPORT) {
                check = set_port(4, nat.dport, check)?;
            }
        }
        _ => {}
    }
    Ok(check)
}

/// Replaces the address at `field` with `new`; returns the IP header checksum and the L4
/// checksum adjusted for it (the latter only with `l4`: it covers the pseudo-header).
///
/// # Safety
///
/// `field` must have been checked by `ptr_at`.
#[inline(always)]
unsafe fn swap_addr<const N: usize>(
    field: *mut [u8; N],
    new: &[u8; N],
    (ip_check, l4_check): (u16, u16),
    l4: bool,
) -> (u16, u16) {
    // SAFETY: the caller's guarantee; the old bytes are read in place (no copy: stack space
    // is scarce), then overwritten once.
    unsafe {
        let ip_check = csum::replace_bytes(ip_check, &*field, new);
        let l4_check = if l4 { csum::replace_bytes(l4_check, &*field, new) } else { l4_check };
        *field = *new;
        (ip_check, l4_check)
    }
}

/// Where the rewrite keeps the L4 checksum of `proto`: its offset in the L4 header, whether
/// it is maintained at all (not for other protocols, nor for an IPv4 UDP checksum of zero,
/// which means "none") and whether it covers the addresses.
#[inline(always)]
fn l4_plan(
    ctx: &XdpContext,
    l4: usize,
    proto: u8,
    v6: bool,
) -> Result<(usize, bool, bool, u16), Counter> {
    let Some((offset, pseudo)) = l4_checksum(proto) else { return Ok((0, false, false, 0)) };
    let p = field16(ctx, l4 + offset)?;
    // SAFETY: `field16` checked the 2 bytes.
    let check = u16::from_be_bytes(unsafe { *p });
    let update = v6 || proto != IPPROTO_UDP || check != 0;
    Ok((offset, update, pseudo, check))
}

/// Stores the L4 checksum at `l4 + offset`.
#[inline(always)]
fn store_l4_check(
    ctx: &XdpContext,
    l4: usize,
    offset: usize,
    proto: u8,
    check: u16,
) -> Result<(), Counter> {
    let check = if proto == IPPROTO_UDP { csum::udp_wire(check) } else { check };
    let p = field16(ctx, l4 + offset)?;
    // SAFETY: `field16` checked the 2 bytes.
    unsafe { *p = check.to_be_bytes() };
    Ok(())
}

/// Stateless NAT of an IPv4 frame whose header is at `L3` (20 bytes: options were refused).
#[inline(always)]
pub fn nat_v4<const L3: usize>(ctx: &XdpContext, nat: &Nat) -> Result<(), Counter> {
    // SAFETY: `ptr_at` checks the byte.
    let proto = unsafe { *ptr_at::<u8>(ctx, L3 + ipv4::PROTO)? };
    let l4 = L3 + IPV4_HLEN;
    let ip_check_at = field16(ctx, L3 + ipv4::CHECK)?;
    let src = ptr_at::<[u8; 4]>(ctx, L3 + ipv4::SRC)? as *mut [u8; 4];
    let dst = ptr_at::<[u8; 4]>(ctx, L3 + ipv4::DST)? as *mut [u8; 4];
    let (offset, update, pseudo, l4_check) = l4_plan(ctx, l4, proto, false)?;
    // SAFETY: `field16` checked the pointer.
    let mut sums = (u16::from_be_bytes(unsafe { *ip_check_at }), l4_check);
    if nat.set.contains(NatFields::SRC) {
        let new = [nat.src[0], nat.src[1], nat.src[2], nat.src[3]];
        // SAFETY: `ptr_at` checked `src`.
        sums = unsafe { swap_addr(src, &new, sums, update && pseudo) };
    }
    if nat.set.contains(NatFields::DST) {
        let new = [nat.dst[0], nat.dst[1], nat.dst[2], nat.dst[3]];
        // SAFETY: `ptr_at` checked `dst`.
        sums = unsafe { swap_addr(dst, &new, sums, update && pseudo) };
    }
    // SAFETY: `field16` checked the pointer.
    unsafe { *ip_check_at = sums.0.to_be_bytes() };
    let l4_check = nat_l4(ctx, l4, nat, proto, update, sums.1)?;
    if update {
        store_l4_check(ctx, l4, offset, proto, l4_check)?;
    }
    Ok(())
}

/// Stateless NAT of an IPv6 frame whose header is at `L3` (the L4 header follows directly).
#[inline(always)]
pub fn nat_v6<const L3: usize>(ctx: &XdpContext, nat: &Nat) -> Result<(), Counter> {
    // SAFETY: `ptr_at` checks the byte.
    let proto = unsafe { *ptr_at::<u8>(ctx, L3 + ipv6::NEXT)? };
    let l4 = L3 + IPV6_HLEN;
    let src = ptr_at::<[u8; 16]>(ctx, L3 + ipv6::SRC)? as *mut [u8; 16];
    let dst = ptr_at::<[u8; 16]>(ctx, L3 + ipv6::DST)? as *mut [u8; 16];
    let (offset, update, _, l4_check) = l4_plan(ctx, l4, proto, true)?;
    let mut sums = (0, l4_check);
    if nat.set.contains(NatFields::SRC) {
        // SAFETY: `ptr_at` checked `src`.
        sums = unsafe { swap_addr(src, &nat.src, sums, update) };
    }
    if nat.set.contains(NatFields::DST) {
        // SAFETY: `ptr_at` checked `dst`.
        sums = unsafe { swap_addr(dst, &nat.dst, sums, update) };
    }
    let l4_check = nat_l4(ctx, l4, nat, proto, update, sums.1)?;
    if update {
        store_l4_check(ctx, l4, offset, proto, l4_check)?;
    }
    Ok(())
}

/// The bytes of the L4 header a rewrite of `proto` reads or writes, from its start.
#[inline(always)]
pub fn l4_span(proto: u8) -> usize {
    match proto {
        IPPROTO_TCP => 20,
        IPPROTO_UDP | IPPROTO_ICMP | IPPROTO_ICMPV6 => 8,
        _ => 0,
    }
}
