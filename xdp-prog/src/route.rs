//! The kernel's FIB, one step for both families: the policy rules choose tables, the longest
//! prefix of a table gives a route, a nexthop group gives a path, the neighbour table its MAC.
//!
//! Reads `FIB_CTL`, `FIB_RULES`, the route tries, `NH_SLOTS`, `NH_GROUPS` and the neighbour
//! tables; decides, never changes the frame. Whatever it cannot resolve exactly as the kernel
//! would goes to the kernel.

use aya_ebpf::maps::lpm_trie::Key;
use xdpfwd_common::{
    Counter, FIB_NO_SUPPRESS, FibAction, FibFlags, FibRule, FibWord, HashPolicy, HopFlags,
    ICMP_QUOTE_FORWARDED, IcmpError, IfaceFlags, MAX_FIB_RULES, MAX_PATHS, META_MAGIC, MetaFlags,
    NeighKeyV4, NeighKeyV6, NhPath, Route, RouteKind, Rule, RuleFields, XskMeta, fib_rule_index,
    route_key_bits, route_key_v4, route_key_v6,
};

use crate::{
    classify::egress,
    decision::{Flow, FlowFlags, Ingress, NO_NAT, Packet, Steer, SteerFlags},
    ecmp::{PATH_KERNEL, path_arg, xdpfwd_path},
    maps::{
        FIB_CTL, FIB_RESULT, FIB_RULES, FLOW, NEIGH_V4, NEIGH_V6, NH_GROUPS, NH_SLOTS, ROUTES_V4,
        ROUTES_V6,
    },
    policy::{PathChoice, rule_matches},
    vlan::egress_vlan,
    wire::{bytes, copy_words, extension_header, zero_words},
};

/// `xdpfwd_fib`'s `word` for the source check's reverse lookup: the route goes into slot 1
/// of `FIB_RESULT`, which leaves the route being forwarded on in slot 0.
const FIB_REVERSE: u32 = 1 << 31;
/// `xdpfwd_fib` found a route; it is in `FIB_RESULT`.
const FIB_FOUND: u32 = 0;
/// No rule led to a route (the kernel answers "network unreachable").
const FIB_NO_ROUTE: u32 = 1;
/// A rule whose outcome only the kernel knows.
const FIB_KERNEL: u32 = 2;

/// The route step: from the flow (its destination already translated by NAT) to the egress
/// and next hop of the frame, for both families, in the kernel's order: the route, the check
/// of the source against the route back to it (IPv4), the TTL, the MTU, the neighbour. Where
/// the kernel's forwarding would answer with an ICMP error and the kernel's own forwarding
/// is off on the ingress, the frame goes to user space for that answer instead.
#[inline(always)]
pub fn route(
    at: &Ingress,
    flow: &Flow,
    packet: &Packet,
    nat: u32,
    steer: &mut Steer,
) -> Result<(), Counter> {
    let v6 = flow.v6();
    let kernels = kernels_frame(at, v6, nat);
    let word = FIB_CTL.get(v6 as u32).copied().unwrap_or(0);
    let fib = FibWord::decode(word);
    if fib.netfilter {
        return Err(Counter::PassNetfilter);
    }
    if fib.kernel {
        return Err(Counter::PassFib);
    }
    // Slot 0 whatever the word holds: the route must not be the source check's.
    let route = match xdpfwd_fib(flow, word & !FIB_REVERSE) {
        FIB_FOUND => FIB_RESULT.get(0).ok_or(Counter::PassRoute)?,
        FIB_NO_ROUTE => return refuse(at, packet, IcmpError::NoRoute, steer),
        _ => return Err(Counter::PassFib),
    };
    let kind = route.kind();
    // The gateway by reference, and the route's fields read where they are used: copies
    // would be held across the source check's call, in the stack frame the call chain has
    // no room for. (The source check's lookup leaves its route in another slot.)
    let (oif, gateway, hop) = match kind {
        RouteKind::Unicast | RouteKind::Static | RouteKind::StaticMac => {
            (route.oif, &route.gateway, route.hop)
        }
        RouteKind::Nexthop => {
            // Where the kernel would forward the frame as it is, its path is the reference;
            // where it would not, xdpfwd is the router and its own hash may choose.
            let own = fib.own_hash || !kernels;
            let path = path(route.nh, flow, &fib, own)?;
            (path.oif, &path.gateway, path.hop)
        }
        RouteKind::Unreachable => return refuse(at, packet, IcmpError::Unreachable, steer),
        RouteKind::Prohibit => return refuse(at, packet, IcmpError::Prohibited, steer),
        _ => return Err(Counter::PassRoute),
    };
    if !v6 {
        validate_source(at, flow, oif)?;
    }
    if packet.expired {
        // `classify` lets an expired packet come this far only when the answer is ours.
        return answer(at, packet, IcmpError::TimeExceeded, 0, steer);
    }
    let out = egress(oif, at.ifindex)?;
    let route_mtu = route.mtu;
    let mtu = if route_mtu != 0 && route_mtu < out.mtu { route_mtu } else { out.mtu };
    if packet.ip_len > mtu as usize {
        return too_big(at, packet, nat, (route_mtu, out.mtu), steer);
    }
    let vlan = egress_vlan(at, route.vlan, out);
    let fast = PathChoice::fast(flow, out);
    // Field by field: a struct literal zeroes `addr` with a call to a byte-wise `memset`.
    steer.meta.oif = oif;
    steer.meta.flags = if v6 { MetaFlags::IPV6 } else { MetaFlags::empty() };
    steer.meta.l3_off = at.l3 as u16;
    // SAFETY: a field of the per-CPU `STEER` value, 4-byte aligned within it.
    unsafe { zero_words(&mut steer.meta.addr) };
    steer.meta.magic = META_MAGIC;
    steer.slot = at.info.slot;
    steer.egress_slot = out.slot;
    steer.ip_len = packet.ip_len as u32;
    steer.nat = nat;
    steer.mtu = 0;
    steer.push = vlan.push;
    steer.flags = vlan.flags() | SteerFlags::path(fast, out);
    let mac = if kind == RouteKind::StaticMac {
        route.mac
    } else {
        // An IPv4 route may go through an IPv6 gateway (RFC 5549).
        let (next_hop, hop_v6) = if *gateway == [0; 16] {
            (bytes(&flow.dst), v6)
        } else {
            (*gateway, v6 || hop.contains(HopFlags::GATEWAY_V6))
        };
        match neighbour(oif, &next_hop, hop_v6) {
            Some(mac) => mac,
            // The kernel forwards the packet itself, as it would without xdpfwd, unless the
            // route is xdpfwd's own.
            None if kernels && kind.is_kernel_route() => {
                return Err(Counter::PassNeighMiss);
            }
            None => {
                // User space holds the frame until the kernel has resolved `next_hop`.
                steer.meta.flags |= MetaFlags::NEED_NEIGH;
                if hop_v6 != v6 {
                    steer.meta.flags |= MetaFlags::NEXT_HOP_V6;
                }
                steer.meta.addr = next_hop;
                steer.flags.remove(SteerFlags::FAST | SteerFlags::REDIRECTABLE);
                return Ok(());
            }
        }
    };
    steer.meta.addr[0..6].copy_from_slice(&mac);
    steer.meta.addr[6..12].copy_from_slice(&out.mac);
    steer.mtu = mtu;
    Ok(())
}

/// The kernel would forward the frame as it is: its forwarding is on for the ingress, no
/// tag is popped, and no rewrite only xdpfwd applies changes it. Elsewhere xdpfwd is the
/// frame's router (passed to the kernel, the frame would be dropped or routed otherwise).
#[inline(always)]
fn kernels_frame(at: &Ingress, v6: bool, nat: u32) -> bool {
    at.kernel_forwards_as_is(v6) && nat == NO_NAT
}

/// A destination the FIB refuses (no route, `unreachable`, `prohibit`): IPv4 routers answer
/// with "destination unreachable" (`ip_error`), which is xdpfwd's to send while the kernel's
/// forwarding is off; the kernel answers IPv6 itself, forwarding or not.
#[inline(always)]
fn refuse(
    at: &Ingress,
    packet: &Packet,
    error: IcmpError,
    steer: &mut Steer,
) -> Result<(), Counter> {
    if packet.v6 || !at.answers_icmp(false) {
        return Err(Counter::PassRoute);
    }
    answer(at, packet, error, 0, steer)
}

/// A packet over the MTU: the kernel's forwarding answers "fragmentation needed" for IPv4
/// with DF (`ip_forward`, against the route's MTU, else the link's) and fragments the rest;
/// for IPv6 it answers "packet too big" against the link's MTU in `ip6_forward`, or against
/// a smaller route MTU in `ip6_fragment`, after the hop limit was decremented (which the
/// quote then shows). Everything else stays with the kernel.
#[inline(always)]
fn too_big(
    at: &Ingress,
    packet: &Packet,
    nat: u32,
    (route_mtu, link_mtu): (u32, u32),
    steer: &mut Steer,
) -> Result<(), Counter> {
    if nat != NO_NAT || !at.answers_icmp(packet.v6) {
        return Err(Counter::PassMtu);
    }
    if !packet.v6 {
        if !packet.no_fragmenting || route_mtu > link_mtu {
            return Err(Counter::PassMtu);
        }
        let mtu = if route_mtu != 0 { route_mtu } else { link_mtu };
        return answer(at, packet, IcmpError::TooBig, mtu, steer);
    }
    let (mtu, forwarded) = if packet.ip_len > link_mtu as usize {
        (if link_mtu < IPV6_MIN_MTU { IPV6_MIN_MTU } else { link_mtu }, false)
    } else {
        (route_mtu, true)
    };
    answer(at, packet, IcmpError::TooBig, mtu, steer)?;
    if forwarded {
        steer.meta.addr[1] = ICMP_QUOTE_FORWARDED;
    }
    Ok(())
}

/// `IPV6_MIN_MTU`.
const IPV6_MIN_MTU: u32 = 1280;

/// Steers the frame to user space to be answered with `error` (and `mtu` for "too big")
/// instead of being forwarded; nothing of it changes.
#[inline(always)]
fn answer(
    at: &Ingress,
    packet: &Packet,
    error: IcmpError,
    mtu: u32,
    steer: &mut Steer,
) -> Result<(), Counter> {
    let mut addr = [0u8; 16];
    addr[0] = error as u8;
    addr[4..8].copy_from_slice(&mtu.to_be_bytes());
    let family = if packet.v6 { MetaFlags::IPV6 } else { MetaFlags::empty() };
    *steer = Steer {
        meta: XskMeta {
            oif: at.ifindex,
            flags: MetaFlags::ICMP | family,
            l3_off: at.l3 as u16,
            addr,
            magic: META_MAGIC,
        },
        slot: at.info.slot,
        egress_slot: 0,
        ip_len: packet.ip_len as u32,
        nat: NO_NAT,
        mtu: 0,
        push: 0,
        flags: SteerFlags::empty(),
    };
    Ok(())
}

/// The next hop's MAC from the neighbour table of its family.
#[inline(always)]
fn neighbour(oif: u32, addr: &[u8; 16], v6: bool) -> Option<[u8; 6]> {
    let entry = if v6 {
        NEIGH_V6.get_ptr_mut(NeighKeyV6::new(oif, *addr))
    } else {
        NEIGH_V4
            .get_ptr_mut(NeighKeyV4 { ifindex: oif, addr: [addr[0], addr[1], addr[2], addr[3]] })
    }?;
    // SAFETY: a pointer into a map value, valid while this program runs. User space may
    // rewrite the value concurrently, which at worst yields the old or the new MAC for this
    // frame, or a `used` mark lost (the entry is then re-confirmed a refresh later).
    unsafe {
        if (*entry).used == 0 {
            (*entry).used = 1;
        }
        Some((*entry).mac)
    }
}

/// The path of nexthop slot `slot` that the flow's hash selects (hash-threshold, as the
/// kernel's `nexthop_select_path_hthr` and `fib_select_multipath`, or a resilient group's
/// bucket, as `nexthop_select_path_res`).
#[inline(always)]
fn path(slot: u32, flow: &Flow, fib: &FibWord, own: bool) -> Result<&'static NhPath, Counter> {
    let index = NH_SLOTS.get(slot).copied().unwrap_or(0);
    if index == 0 {
        // A blackhole nexthop, a resilient group whose buckets are not read yet, a path
        // xdpfwd does not mirror.
        return Err(Counter::PassRoute);
    }
    let group = NH_GROUPS.get(index).ok_or(Counter::PassRoute)?;
    let mut fib = *fib;
    if (group.count > 1 || group.buckets != 0) && fib.ecmp_kernel {
        if !own {
            return Err(Counter::PassFib);
        }
        // A policy xdpfwd does not know (or policy 3 before its fields): its own hash.
        fib.hash = HashPolicy::L4;
    }
    let i = if group.count > 1 || group.buckets != 0 {
        xdpfwd_path(flow, path_arg(index, &fib, own))
    } else {
        0
    };
    match group.paths.get(i as usize) {
        Some(path) => Ok(path),
        None if i == PATH_KERNEL => Err(Counter::PassFib),
        None => Err(Counter::PassRoute),
    }
}

/// Walks the policy rules of the flow's family (`word`: its [`FibWord`]) as the kernel's
/// `fib_rules_lookup` does: the first matching rule whose table has a route (not `throw`, not
/// suppressed) decides; `goto` jumps forward, `nop` goes on. Returns `FIB_FOUND` with the
/// route in `FIB_RESULT` (slot 1 with [`FIB_REVERSE`], else 0), `FIB_NO_ROUTE` or
/// `FIB_KERNEL`. A global function, as `policy::xdpfwd_rules`.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn xdpfwd_fib(flow: *const Flow, word: u32) -> u32 {
    // SAFETY: callers pass a live `Flow`; the verifier checks the pointer (it may be null).
    let Some(flow) = (unsafe { flow.as_ref() }) else { return FIB_KERNEL };
    let fib = FibWord::decode(word);
    let v6 = flow.v6();
    let mut i = 0;
    let mut steps = 0;
    while steps < MAX_FIB_RULES {
        steps += 1;
        if i >= fib.rules {
            return FIB_NO_ROUTE;
        }
        let Some(rule) = FIB_RULES.get(fib_rule_index(fib.set, v6, i)) else { return FIB_KERNEL };
        if rule.flags.contains(FibFlags::NEVER) {
            i += 1;
            continue;
        }
        let masked_ports = rule.sport_mask | rule.dport_mask != 0;
        let fields =
            if masked_ports { rule.sel.fields.union(RuleFields::PORTS) } else { rule.sel.fields };
        if needs_kernel(fields, flow) && !other_protocol(&rule.sel, flow) {
            return FIB_KERNEL;
        }
        if (rule_matches(&rule.sel, flow) && fib_rule_extra_matches(rule, flow))
            == rule.flags.contains(FibFlags::INVERT)
        {
            i += 1;
            continue;
        }
        match FibAction::from_u32(rule.sel.action) {
            FibAction::Lookup => {
                if let Some(route) = lookup(flow, rule.table)
                    && route.kind() != RouteKind::Throw
                    && (rule.suppress == FIB_NO_SUPPRESS || route.prefix_len > rule.suppress)
                {
                    return match FIB_RESULT.get_ptr_mut(word >> 31) {
                        Some(out) => {
                            // SAFETY: a per-CPU slot only this CPU writes while this program
                            // runs, each slot for one caller (0: `route`, which reads it until
                            // it returns; 1: `validate_source`), and a map value: both aligned.
                            unsafe { copy_words(out, route) };
                            FIB_FOUND
                        }
                        None => FIB_KERNEL,
                    };
                }
                i += 1;
            }
            // Only forward jumps exist (the kernel refuses others), so the walk ends.
            FibAction::Goto if rule.target > i && rule.target != u32::MAX => i = rule.target,
            FibAction::Goto | FibAction::Nop => i += 1,
            FibAction::Kernel => return FIB_KERNEL,
        }
    }
    FIB_KERNEL
}

/// The selectors of a policy rule beyond the steering rule's: the DS field and masked ports
/// (`fib4_rule_match`, `fib6_rule_match`, `fib_rule_port_match`). A rule with masked ports
/// reaches this only for frames with ports (`needs_kernel`).
#[inline(always)]
fn fib_rule_extra_matches(rule: &FibRule, flow: &Flow) -> bool {
    (flow.ds ^ rule.ds) & rule.ds_mask == 0
        && (flow.sport ^ rule.sel.sport_lo) & rule.sport_mask == 0
        && (flow.dport ^ rule.sel.dport_lo) & rule.dport_mask == 0
}

/// The rule selects a protocol and the flow, as the kernel sees it, has another: the rule
/// does not match, whatever its ports (`fib4_rule_match` / `fib6_rule_match` compare the
/// protocol first). Not behind IPv6 extension headers, where the kernel's dissector may
/// find another protocol.
#[inline(always)]
fn other_protocol(rule: &Rule, flow: &Flow) -> bool {
    rule.fields.contains(RuleFields::PROTO)
        && rule.proto != u16::from(flow.proto)
        && !(flow.v6() && extension_header(flow.proto))
}

/// Selectors the kernel evaluates on what its flow dissector finds, where this program sees
/// something else: ports of fragments and of protocols other than TCP and UDP, the
/// protocol behind IPv6 extension headers.
#[inline(always)]
fn needs_kernel(fields: RuleFields, flow: &Flow) -> bool {
    if fields.intersects(RuleFields::PORTS)
        && (!flow.flags.contains(FlowFlags::PORTS) || flow.flags.contains(FlowFlags::FRAGMENT))
    {
        return true;
    }
    fields.intersects(RuleFields::PROTO.union(RuleFields::PORTS))
        && flow.v6()
        && extension_header(flow.proto)
}

/// The kernel's source validation of a forwarded IPv4 packet (`fib_validate_source` in
/// `net/ipv4/fib_frontend.c`), or the frame goes to the kernel, which decides. With
/// `rp_filter` off and no custom rules or `local` routes, the kernel only refuses a source
/// that is one of the router's own addresses. Otherwise it looks the source up as a
/// destination, arriving on the egress (`oif`): strict mode wants a unicast route through the
/// ingress, loose mode any unicast route, and with `rp_filter` off any route but a special
/// one (or none). xdpfwd forwards only where that lookup certainly succeeds; a route through
/// another interface in loose mode (the kernel then also asks whether the ingress has an
/// address) goes to the kernel.
#[inline(always)]
fn validate_source(at: &Ingress, flow: &Flow, oif: u32) -> Result<(), Counter> {
    let strict = at.info.flags.contains(IfaceFlags::RP_STRICT);
    let loose = at.info.flags.contains(IfaceFlags::RP_LOOSE);
    let word = FIB_CTL.get(0).copied().unwrap_or(0);
    if !strict && !loose && !FibWord::decode(word).full_check {
        return match lookup_addr(&flow.src, false, TABLE_LOCAL) {
            Some(r) if r.kind() == RouteKind::Kernel => Err(Counter::PassSourceCheck),
            _ => Ok(()),
        };
    }
    let slot = FLOW.get_ptr_mut(1).ok_or(Counter::PassSourceCheck)?;
    // SAFETY: slot 1 of a per-CPU array that only this CPU uses while this program runs.
    let reverse = unsafe { &mut *slot };
    *reverse = Flow {
        src: flow.dst,
        dst: flow.src,
        ifindex: oif,
        sport: flow.dport,
        dport: flow.sport,
        // The kernel's reverse lookup dissects the protocol and ports (swapped) exactly
        // when a rule has such a selector (`fib4_rules_early_flow_dissect`): where they
        // matter, it sees them.
        ..*flow
    };
    match xdpfwd_fib(reverse, word | FIB_REVERSE) {
        FIB_FOUND => {}
        FIB_NO_ROUTE if !strict && !loose => return Ok(()),
        _ => return Err(Counter::PassSourceCheck),
    }
    let route = FIB_RESULT.get(1).ok_or(Counter::PassSourceCheck)?;
    let through_ingress = match route.kind() {
        RouteKind::Unicast => route.oif == at.ifindex,
        RouteKind::Nexthop => uses_dev(route.nh, at.ifindex),
        // Special routes, and xdpfwd's own static routes, which the kernel does not have.
        _ => return Err(Counter::PassSourceCheck),
    };
    if through_ingress || (!strict && !loose) { Ok(()) } else { Err(Counter::PassSourceCheck) }
}

/// Whether a path of nexthop slot `slot` leaves through `ifindex` (the kernel's
/// `fib_info_nh_uses_dev`).
#[inline(always)]
fn uses_dev(slot: u32, ifindex: u32) -> bool {
    let index = NH_SLOTS.get(slot).copied().unwrap_or(0);
    let Some(group) = NH_GROUPS.get(index).filter(|_| index != 0) else { return false };
    let mut i = 0;
    while i < MAX_PATHS {
        if i >= group.count {
            break;
        }
        if group.paths.get(i as usize).is_some_and(|p| p.oif == ifindex) {
            return true;
        }
        i += 1;
    }
    false
}

/// The flow's destination is one of the router's own (or broadcast) addresses: the `local`
/// table has it.
#[inline(always)]
pub fn to_local(flow: &Flow) -> bool {
    lookup(flow, TABLE_LOCAL).is_some_and(|r| r.kind() == RouteKind::Kernel)
}

/// `RT_TABLE_LOCAL`.
const TABLE_LOCAL: u32 = 255;

/// The longest-prefix route of `table` for the flow's destination.
#[inline(always)]
fn lookup(flow: &Flow, table: u32) -> Option<&'static Route> {
    lookup_addr(&flow.dst, flow.v6(), table)
}

/// The longest-prefix route of `table` for `addr` (the flow's word layout).
#[inline(always)]
fn lookup_addr(addr: &[u64; 2], v6: bool, table: u32) -> Option<&'static Route> {
    let dst = bytes(addr);
    if v6 {
        ROUTES_V6.get(Key::new(route_key_bits(128), route_key_v6(table, dst)))
    } else {
        let addr = [dst[0], dst[1], dst[2], dst[3]];
        ROUTES_V4.get(Key::new(route_key_bits(32), route_key_v4(table, addr)))
    }
}
