//! The router's checks, as the kernel makes them: which frames a Linux router would forward
//! unchanged but for the usual rewrite, and which it must see itself.
//!
//! Reads the frame and `IFACES`; hands IP packets to `policy` and `route`, and L2
//! cross-connects straight to a [`Steer`]. Changes nothing.

use aya_ebpf::programs::XdpContext;
use xdpfwd_common::{
    Counter, FIB_CTL_SEED, IfaceFlags, IfaceInfo, META_MAGIC, MetaFlags, NatFields, XskMeta, csum,
    mp_hash::{kernel_l3_hash_v4, kernel_l3_hash_v6},
};

use crate::{
    decision::{Flow, FlowFlags, Ingress, NO_NAT, Packet, Parsed, Steer, SteerFlags, Vlan},
    flow_cache::{HIT, probe, xdpfwd_cache_fill},
    maps::{FIB_CTL, FLOW, NATS, PARSED, iface},
    nat::l4_span,
    policy::{Policed, l4_ports, policy_stage},
    route::{route, to_local},
    wire::{
        ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, ICMP_HLEN, IPPROTO_ICMP,
        IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, IPV4_HLEN, IPV6_HLEN, NEXTHDR_HOP, VLAN_HLEN,
        frame_len, ipv4, ipv6, linear_len, ptr_at, words,
    },
};

/// Whether the frame is one a Linux router would forward, and where: `Ok` with the decision
/// in `steer`, or the reason it goes to the kernel (or is dropped, by a rule).
///
/// Inlined into the program's main function: a frame the flow cache knows makes no call
/// but the helpers' (each call and return costs several ns here, under return-stack
/// mitigations); the stages of a miss are out of line, in [`decide`].
#[inline(always)]
pub fn classify(ctx: &XdpContext, steer: &mut Steer) -> Result<(), Counter> {
    let ifindex = ctx.ingress_ifindex() as u32;
    let ingress = iface(ifindex).ok_or(Counter::PassNotManaged)?;
    if !ingress.flags.contains(IfaceFlags::MANAGED) {
        return Err(Counter::PassNotManaged);
    }
    // SAFETY: `ptr_at` checked that the 14 bytes lie inside the frame.
    let eth = unsafe { &*ptr_at::<[u8; ETH_HLEN]>(ctx, 0)? };
    let ethertype = u16::from_be_bytes([eth[12], eth[13]]);
    // Once: a helper call.
    let len = frame_len(ctx);
    if ingress.flags.contains(IfaceFlags::XCONNECT) {
        xconnect(len, ifindex, ingress, ethertype, steer)?;
        return fits(ctx, len, ingress, steer);
    }
    if eth[0..6] != ingress.mac {
        return Err(Counter::PassNotForUs);
    }
    let mut l3 = ETH_HLEN;
    let mut vlan = 0;
    let mut ethertype = ethertype;
    if ethertype == ETH_P_8021Q {
        let pop = ingress.flags.contains(IfaceFlags::VLAN_POP);
        let tag = ptr_at::<[u8; VLAN_HLEN]>(ctx, ETH_HLEN)
            .map_err(|e| if pop { e } else { Counter::PassVlan })?;
        // SAFETY: `ptr_at` checked that the 4 bytes lie inside the frame.
        let tag = unsafe { &*tag };
        let vid = u16::from_be_bytes([tag[0], tag[1]]) & 0x0fff;
        // A priority tag (VLAN id 0) is popped everywhere: the kernel strips it and routes the
        // frame as untagged, which then leaves untagged.
        if pop || vid == 0 {
            vlan = vid;
            ethertype = u16::from_be_bytes([tag[2], tag[3]]);
            l3 = ETH_HLEN + VLAN_HLEN;
        }
    }
    let at = Ingress { ifindex, info: ingress, l3, vlan, len };
    match ethertype {
        ETH_P_IP => ipv4(ctx, &at, steer)?,
        ETH_P_IPV6 => ipv6(ctx, &at, steer)?,
        _ if at.popped() => return Err(Counter::PassVlan),
        ETH_P_8021Q | ETH_P_8021AD => return Err(Counter::PassVlan),
        _ => return Err(Counter::PassNotIp),
    }
    steer.flags.set(SteerFlags::PADDED, l3 + steer.ip_len as usize != len);
    fits(ctx, len, ingress, steer)
}

/// The frame, as it will leave, fits the path `steer` takes: an AF_XDP socket receives one
/// UMEM frame of at most `max_frame` bytes (a tag pushed onto an untagged frame included),
/// or, bound with `XDP_USE_SG`, several, up to `max_frame_sg` bytes, for a frame that is
/// whole (its IP length reaches its end: user space rewrites the first buffer only); the
/// fast path carries
/// a frame in more than one buffer only out of a device that takes such frames. A frame too
/// long for the AF_XDP path takes the fast path where the egress device takes it (the same
/// rewrite; otherwise it would be the kernel's, and with the kernel's forwarding off, lost).
/// A frame steered for an ICMP answer always fits: `egress` trims it to what the answer
/// quotes.
#[inline(always)]
fn fits(
    ctx: &XdpContext,
    len: usize,
    ingress: &IfaceInfo,
    steer: &mut Steer,
) -> Result<(), Counter> {
    let multi_buffer = len > linear_len(ctx);
    let fast_carries = !multi_buffer || steer.flags.contains(SteerFlags::MULTI_BUFFER);
    if steer.fast() {
        return if fast_carries { Ok(()) } else { Err(Counter::PassTooLong) };
    }
    if steer.meta.flags.contains(MetaFlags::ICMP) {
        return Ok(());
    }
    let vlan = steer.vlan();
    let grows = if vlan.push != 0 && !vlan.pop { VLAN_HLEN } else { 0 };
    let sg = ingress.max_frame_sg != 0;
    if (!multi_buffer || sg) && len + grows <= ingress.max_frame as usize {
        return Ok(());
    }
    let whole = steer.ip_len == 0 || steer.meta.l3_off as usize + steer.ip_len as usize == len;
    if whole && len + grows <= ingress.max_frame_sg as usize {
        return Ok(());
    }
    if steer.flags.contains(SteerFlags::REDIRECTABLE) && fast_carries {
        steer.flags |= SteerFlags::FAST;
        return Ok(());
    }
    Err(Counter::PassTooLong)
}

/// An L2 cross-connect: the frame leaves through the peer as it is, but for the VLAN
/// handling of both interfaces and the peer MAC.
#[inline(always)]
fn xconnect(
    len: usize,
    ifindex: u32,
    ingress: &IfaceInfo,
    ethertype: u16,
    steer: &mut Steer,
) -> Result<(), Counter> {
    let out = egress(ingress.peer, ifindex)?;
    let vlan = Vlan {
        pop: ethertype == ETH_P_8021Q && ingress.flags.contains(IfaceFlags::VLAN_POP),
        push: out.push_vlan,
    };
    if len > out.mtu as usize + ETH_HLEN + VLAN_HLEN {
        return Err(Counter::PassMtu);
    }
    let peer_mac = ingress.flags.contains(IfaceFlags::PEER_MAC);
    let mut addr = [0u8; 16];
    if peer_mac {
        addr[0..6].copy_from_slice(&ingress.peer_mac);
    }
    let fast = out.flags.contains(IfaceFlags::FAST_PATH);
    let path = SteerFlags::path(fast, out);
    *steer = Steer {
        meta: XskMeta {
            oif: ingress.peer,
            flags: MetaFlags::L2,
            l3_off: ETH_HLEN as u16,
            addr,
            magic: META_MAGIC,
        },
        slot: ingress.slot,
        egress_slot: out.slot,
        ip_len: 0,
        nat: NO_NAT,
        mtu: 0,
        push: vlan.push,
        flags: vlan.flags()
            | path
            | if peer_mac { SteerFlags::PEER_MAC } else { SteerFlags::empty() },
    };
    Ok(())
}

/// The managed, up egress interface `oif`, different from the ingress one.
#[inline(always)]
pub fn egress(oif: u32, ifindex: u32) -> Result<&'static IfaceInfo, Counter> {
    if oif == ifindex {
        // The kernel would also send an ICMP redirect: leave it to the kernel.
        return Err(Counter::PassEgress);
    }
    let out = iface(oif).ok_or(Counter::PassEgress)?;
    if !out.flags.contains(IfaceFlags::MANAGED.union(IfaceFlags::UP)) {
        return Err(Counter::PassEgress);
    }
    Ok(out)
}

#[inline(always)]
fn ipv4(ctx: &XdpContext, at: &Ingress, steer: &mut Steer) -> Result<(), Counter> {
    let l3 = at.l3;
    // SAFETY: `ptr_at` checked that the 20 bytes lie inside the frame.
    let ip = unsafe { &*ptr_at::<[u8; IPV4_HLEN]>(ctx, l3)? };
    if ip[0] >> 4 != 4 || ip[0] & 0xf < 5 {
        return Err(Counter::PassMalformed);
    }
    if ip[0] & 0xf != 5 {
        return Err(Counter::PassOptions);
    }
    let total_len = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    if total_len < IPV4_HLEN || l3 + total_len > at.len {
        return Err(Counter::PassMalformed);
    }
    // Whole words, each one load (`allows-misaligned-mem-access`): built from bytes, they
    // took a hundred instructions and a dozen stack slots.
    // SAFETY: `ptr_at` checked the 20 bytes; packet data may be read unaligned.
    let w32 = |at: usize| unsafe { ip.as_ptr().add(at).cast::<u32>().read_unaligned() };
    if !csum::ipv4_header_valid([w32(0), w32(4), w32(8), w32(12), w32(16)]) {
        return Err(Counter::PassMalformed);
    }
    let expired = ip[ipv4::TTL] <= 1;
    if expired && !at.answers_icmp(false) {
        return Err(Counter::PassTtl);
    }
    let (src, dst) = (ip[ipv4::SRC], ip[ipv4::DST]);
    if special_v4(src) || special_v4(dst) {
        return Err(Counter::PassSpecialAddr);
    }
    let first_fragment = ip[6] & 0x1f == 0 && ip[7] == 0;
    let packet = Packet {
        v6: false,
        proto: ip[ipv4::PROTO],
        l4: l3 + IPV4_HLEN,
        ip_len: total_len,
        first_fragment,
        unfragmented: first_fragment && ip[6] & 0x20 == 0,
        expired,
        no_fragmenting: ip[6] & 0x40 != 0,
        ds: ip[1],
    };
    let word =
        |at: usize| [u32::from_ne_bytes([ip[at], ip[at + 1], ip[at + 2], ip[at + 3]]) as u64, 0];
    routed(ctx, at, &packet, (word(ipv4::SRC), word(ipv4::DST)), 0, steer)
}

#[inline(always)]
fn ipv6(ctx: &XdpContext, at: &Ingress, steer: &mut Steer) -> Result<(), Counter> {
    let l3 = at.l3;
    // SAFETY: `ptr_at` checked that the 40 bytes lie inside the frame.
    let ip = unsafe { &*ptr_at::<[u8; IPV6_HLEN]>(ctx, l3)? };
    if ip[0] >> 4 != 6 {
        return Err(Counter::PassMalformed);
    }
    let payload_len = u16::from_be_bytes([ip[4], ip[5]]) as usize;
    if l3 + IPV6_HLEN + payload_len > at.len {
        return Err(Counter::PassMalformed);
    }
    if ip[ipv6::NEXT] == NEXTHDR_HOP || payload_len == 0 {
        // Hop-by-hop options (router alert, jumbograms) are the kernel's business.
        return Err(Counter::PassOptions);
    }
    let expired = ip[ipv6::HOP_LIMIT] <= 1;
    if expired && !at.answers_icmp(true) {
        return Err(Counter::PassTtl);
    }
    // Straight into words: 32 separate bytes would be spilled to the 512-byte stack.
    let word = |at: usize| {
        u64::from_ne_bytes([
            ip[at],
            ip[at + 1],
            ip[at + 2],
            ip[at + 3],
            ip[at + 4],
            ip[at + 5],
            ip[at + 6],
            ip[at + 7],
        ])
    };
    let src = [word(ipv6::SRC), word(ipv6::SRC + 8)];
    let dst = [word(ipv6::DST), word(ipv6::DST + 8)];
    if special_v6(&src) || special_v6(&dst) {
        return Err(Counter::PassSpecialAddr);
    }
    let label = u32::from_be_bytes([0, ip[1] & 0x0f, ip[2], ip[3]]);
    let packet = Packet {
        v6: true,
        proto: ip[ipv6::NEXT],
        l4: l3 + IPV6_HLEN,
        ip_len: IPV6_HLEN + payload_len,
        first_fragment: true,
        unfragmented: true,
        expired,
        no_fragmenting: true,
        ds: ip[0] << 4 | ip[1] >> 4,
    };
    routed(ctx, at, &packet, (src, dst), label, steer)
}

/// The stages after the IP checks, for both families: the flow cache, or on a miss
/// [`decide`].
#[inline(always)]
fn routed(
    ctx: &XdpContext,
    at: &Ingress,
    packet: &Packet,
    addrs: ([u64; 2], [u64; 2]),
    label: u32,
    steer: &mut Steer,
) -> Result<(), Counter> {
    let ports = l4_ports(ctx, packet);
    let slot = FLOW.get_ptr_mut(0).ok_or(Counter::PassNoMeta)?;
    // SAFETY: a per-CPU slot only this CPU uses while this program runs.
    let flow = unsafe { &mut *slot };
    *flow = Flow::new(at, packet, addrs, label, ports);
    // An ICMP error is routed by the packet it quotes, which the cache's key does not hold.
    let error = quoted_hash(ctx, packet, flow);
    if !error && probe(flow, steer, at.l3, packet.ip_len, packet.expired) == HIT {
        return Ok(());
    }
    let parsed = PARSED.get_ptr_mut(0).ok_or(Counter::PassNoMeta)?;
    // SAFETY: a per-CPU slot only this CPU uses while this program runs.
    unsafe {
        *parsed =
            Parsed { packet: *packet, ifindex: at.ifindex, vlan: at.vlan, l3: at.l3, len: at.len }
    };
    decide(ctx, steer, at.info)
}

/// Policy, NAT's destination and the route for the flow in `FLOW` (the frame as in
/// `PARSED`, arrived on the interface `info`), whose decision the cache then keeps, where
/// it may. (`info` as an argument: looked up again, it made a miss about 12 ns dearer.)
///
/// Out of line (a BPF subprogram), unlike everything before it: only a miss pays for the
/// call, and the stages' stack frame is not added to the program's main one (with both,
/// the call chain to `route::xdpfwd_fib` would pass the 512 bytes the kernel allows).
#[inline(never)]
fn decide(ctx: &XdpContext, steer: &mut Steer, info: &'static IfaceInfo) -> Result<(), Counter> {
    let parsed = PARSED.get(0).ok_or(Counter::PassNoMeta)?;
    let Parsed { ifindex, vlan, l3, len, ref packet } = *parsed;
    let at = &Ingress { ifindex, info, l3, vlan, len };
    let slot = FLOW.get_ptr_mut(0).ok_or(Counter::PassNoMeta)?;
    // SAFETY: a per-CPU slot only this CPU uses while this program runs.
    let flow = unsafe { &mut *slot };
    let Policed { path, nat, rule } = match policy_stage(flow, packet) {
        Ok(decided) => decided,
        // Steering rules are for transit traffic: the router's own addresses stay reachable.
        Err(Counter::DropRule) if to_local(flow) => return Err(Counter::PassRoute),
        Err(reason) => return Err(reason),
    };
    if nat != NO_NAT {
        if packet.expired {
            // The answer would quote the frame before or after the rewrite: the kernel's.
            return Err(Counter::PassTtl);
        }
        nat_fits(ctx, packet)?;
        let nat = NATS.get(nat).ok_or(Counter::PassNat)?;
        // An address rewrite must update every checksum that covers the addresses; the
        // rewrite knows TCP's, UDP's and ICMP's (DCCP, UDP-Lite, ... go to the kernel).
        if nat.set.intersects(NatFields::SRC.union(NatFields::DST))
            && !matches!(packet.proto, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_ICMP | IPPROTO_ICMPV6)
        {
            return Err(Counter::PassNat);
        }
        if nat.set.contains(NatFields::DST) {
            let mut dst = nat.dst;
            if !packet.v6 {
                dst[4..].fill(0);
            }
            flow.dst = words(&dst);
        }
        if nat.set.contains(NatFields::DPORT) && flow.flags.contains(FlowFlags::PORTS) {
            flow.dport = nat.dport;
        }
    }
    flow.path = path as u8;
    flow.rule = rule;
    route(at, flow, packet, nat, steer)?;
    xdpfwd_cache_fill(flow, steer);
    Ok(())
}

/// Whether the frame is an ICMP error that quotes a whole IP header within the packet
/// (IPv4 types 3, 4, 5, 11, 12, not a later fragment; ICMPv6 types 1-4 right behind the
/// IPv6 header), which the kernel's multipath hash takes from the quoted header instead
/// (`ip_multipath_l3_keys`, `ip6_multipath_l3_keys`; it reads nothing beyond the IP length
/// and hashes the outer header where the quote is cut short). If so, marks `flow`
/// (`FlowFlags::ICMP_ERROR`) and keeps the kernel's hash of the quote in `flow.quoted`
/// when `fib_multipath_hash_seed` is set.
#[inline(always)]
fn quoted_hash(ctx: &XdpContext, packet: &Packet, flow: &mut Flow) -> bool {
    let icmp = if packet.v6 { IPPROTO_ICMPV6 } else { IPPROTO_ICMP };
    let inner_len = if packet.v6 { IPV6_HLEN } else { IPV4_HLEN };
    let inner = packet.l4 + ICMP_HLEN;
    if !packet.first_fragment || packet.proto != icmp || inner + inner_len > packet.ip_end() {
        return false;
    }
    let Ok(kind) = ptr_at::<u8>(ctx, packet.l4) else { return false };
    // SAFETY: `ptr_at` checked that the byte lies inside the frame.
    let kind = unsafe { *kind };
    let error = if packet.v6 { matches!(kind, 1..=4) } else { matches!(kind, 3 | 4 | 5 | 11 | 12) };
    if !error {
        return false;
    }
    flow.flags.insert(FlowFlags::ICMP_ERROR);
    let seed = FIB_CTL.get(FIB_CTL_SEED).copied().unwrap_or(0);
    if seed == 0 {
        return true;
    }
    flow.quoted = if packet.v6 {
        let Ok(ip) = ptr_at::<[u8; IPV6_HLEN]>(ctx, inner) else { return true };
        // SAFETY: `ptr_at` checked that the 40 bytes lie inside the frame.
        let ip = unsafe { &*ip };
        // SAFETY: both addresses lie within the 40 bytes `ptr_at` checked.
        let addr = |at: usize| words(unsafe { &*ip.as_ptr().add(at).cast::<[u8; 16]>() });
        let label = u32::from_ne_bytes([0, ip[1] & 0x0f, ip[2], ip[3]]);
        kernel_l3_hash_v6(seed, addr(ipv6::SRC), addr(ipv6::DST), label, ip[ipv6::NEXT])
    } else {
        let Ok(ip) = ptr_at::<[u8; IPV4_HLEN]>(ctx, inner) else { return true };
        // SAFETY: `ptr_at` checked that the 20 bytes lie inside the frame.
        let ip = unsafe { &*ip };
        let w = |at: usize| u32::from_ne_bytes([ip[at], ip[at + 1], ip[at + 2], ip[at + 3]]);
        kernel_l3_hash_v4(seed, w(ipv4::SRC), w(ipv4::DST))
    };
    true
}

/// The L4 header a rewrite touches lies in the frame's first buffer (where `nat` reads it),
/// so that applying it cannot fail.
#[inline(always)]
fn nat_fits(ctx: &XdpContext, packet: &Packet) -> Result<(), Counter> {
    let end = packet.l4 + l4_span(packet.proto);
    // Within the IP packet too: a write into the padding would be trimmed away.
    if end > linear_len(ctx) || end > packet.ip_end() {
        return Err(Counter::PassNat);
    }
    Ok(())
}

/// Addresses a router does not forward as is: this network (0/8), loopback (127/8),
/// multicast, class E and limited broadcast (224/3), by the address's first byte.
#[inline(always)]
fn special_v4(first: u8) -> bool {
    first == 0 || first == 127 || first >= 224
}

/// Addresses a router does not forward as is: unspecified, loopback, IPv4-mapped, multicast
/// (ff00::/8) and link-local (fe80::/10); `addr` as `wire::words`.
#[inline(always)]
fn special_v6(addr: &[u64; 2]) -> bool {
    let [b0, b1, ..] = addr[0].to_ne_bytes();
    if b0 == 0xff || (b0 == 0xfe && b1 & 0xc0 == 0x80) {
        return true;
    }
    // ::/80 covers the unspecified and loopback addresses and the IPv4-mapped ones
    // (::ffff:0:0/96) and the deprecated IPv4-compatible ones: the first 10 bytes are zero.
    let [c0, c1, ..] = addr[1].to_ne_bytes();
    addr[0] == 0 && c0 == 0 && c1 == 0
}
