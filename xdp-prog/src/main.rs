//! The xdpfwd XDP program.
//!
//! Attached to every managed interface. For each frame it decides, from maps that user space
//! keeps in sync with the kernel's routes, neighbours and interfaces, whether a Linux router
//! would forward it unchanged but for the usual rewrite (MACs, TTL / hop limit, checksum). If so
//! it writes an [`XskMeta`] in front of the frame and redirects it to the AF_XDP socket of its
//! rx queue; user space rewrites and transmits it. Anything else goes to the kernel untouched
//! (`XDP_PASS`), counted by reason. The program never drops and never modifies a frame it
//! passes.
#![no_std]
#![no_main]

use core::mem::size_of;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_xdp_adjust_meta, bpf_xdp_adjust_tail},
    macros::{map, xdp},
    maps::{Array, DevMap, HashMap, LpmTrie, PerCpuArray, XskMap, lpm_trie::Key},
    programs::XdpContext,
};
use xdpfwd_common::{
    ACTION_DROP, ACTION_FAST, ACTION_FORWARD, ACTION_KERNEL, Counter, IFACE_FAST_PATH,
    IFACE_KERNEL_FWD_V4, IFACE_KERNEL_FWD_V6, IFACE_MANAGED, IFACE_UP, IfaceInfo, MAX_IFACES,
    MAX_NEIGHBOURS, MAX_ROUTES, MAX_RULES, META_IPV6, META_LEN, META_MAGIC, META_NEED_NEIGH,
    NeighKeyV4, NeighKeyV6, Neighbour, ROUTE_UNICAST, RULE_DPORT, RULE_DST, RULE_IN, RULE_PROTO,
    RULE_SPORT, RULE_SRC, RULE_V4, RULE_V6, RULESET_ACTIVE, RULESET_COUNT, RULESET_DEFAULT,
    RULESET_LEN, RouteV4, RouteV6, Rule, XSK_MAP_SIZE, XskMeta, xsk_key,
};

#[map]
static XSKS: XskMap = XskMap::with_max_entries(XSK_MAP_SIZE, 0);
#[map]
static IFACES: HashMap<u32, IfaceInfo> = HashMap::with_max_entries(MAX_IFACES, 0);
#[map]
static ROUTES_V4: LpmTrie<[u8; 4], RouteV4> = LpmTrie::with_max_entries(MAX_ROUTES, 0);
#[map]
static ROUTES_V6: LpmTrie<[u8; 16], RouteV6> = LpmTrie::with_max_entries(MAX_ROUTES, 0);
#[map]
static NEIGH_V4: HashMap<NeighKeyV4, Neighbour> = HashMap::with_max_entries(MAX_NEIGHBOURS, 0);
#[map]
static NEIGH_V6: HashMap<NeighKeyV6, Neighbour> = HashMap::with_max_entries(MAX_NEIGHBOURS, 0);
/// Egress devices of the fast path, keyed by interface slot.
#[map]
static DEVMAP: DevMap = DevMap::with_max_entries(MAX_IFACES, 0);
/// Two rule sets (see `xdpfwd_common::MAX_RULES`); `RULESET` says which one is active.
#[map]
static RULES: Array<Rule> = Array::with_max_entries(2 * MAX_RULES, 0);
#[map]
static RULESET: Array<u32> = Array::with_max_entries(RULESET_LEN, 0);
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPV6_HLEN: usize = 40;
const NEXTHDR_HOP: u8 = 0;

/// A frame to forward: the metadata for user space and the ingress interface's XSKMAP slot;
/// with `fast`, the egress slot in `DEVMAP` for the in-kernel fast path instead.
struct Steer {
    meta: XskMeta,
    slot: u32,
    fast: Option<Fast>,
}

/// The in-kernel fast path's part of a decision.
struct Fast {
    egress_slot: u32,
    /// IP length (header included): the frame is trimmed to `ETH_HLEN + ip_len`.
    ip_len: usize,
}

#[xdp]
pub fn xdpfwd(ctx: XdpContext) -> u32 {
    // `Counter::Rx` is not counted here: user space derives it as the sum of the verdicts,
    // which saves a map update per frame.
    match classify(&ctx) {
        Ok(Steer { meta, fast: Some(fast), .. }) => fast_forward(&ctx, &meta, &fast),
        Ok(steer) => redirect(&ctx, steer),
        Err(Counter::DropRule) => {
            count(Counter::DropRule);
            xdp_action::XDP_DROP
        }
        Err(reason) => {
            count(reason);
            xdp_action::XDP_PASS
        }
    }
}

#[inline(always)]
fn count(counter: Counter) {
    if let Some(value) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: the pointer comes from a successful lookup in a per-CPU array, so it is valid
        // and only this CPU writes it while this program runs.
        unsafe { *value += 1 };
    }
}

/// A bounds-checked pointer to a `T` at `offset` bytes into the frame.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*const T, Counter> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return Err(Counter::PassMalformed);
    }
    Ok((start + offset) as *const T)
}

#[inline(always)]
fn iface(ifindex: u32) -> Option<IfaceInfo> {
    // SAFETY: the value is copied out at once; user space may rewrite it concurrently, which at
    // worst yields a mix of old and new fields for this one frame.
    unsafe { IFACES.get(&ifindex) }.copied()
}

#[inline(always)]
fn classify(ctx: &XdpContext) -> Result<Steer, Counter> {
    let ifindex = ctx.ingress_ifindex() as u32;
    let ingress = iface(ifindex).ok_or(Counter::PassNotManaged)?;
    if ingress.flags & IFACE_MANAGED == 0 {
        return Err(Counter::PassNotManaged);
    }
    // SAFETY: `ptr_at` checked that the 14 bytes lie inside the frame.
    let eth = unsafe { &*ptr_at::<[u8; ETH_HLEN]>(ctx, 0)? };
    if eth[0..6] != ingress.mac {
        return Err(Counter::PassNotForUs);
    }
    if ctx.data_end() - ctx.data() > ingress.max_frame as usize {
        // An AF_XDP socket would drop it: longer than a UMEM frame carries.
        return Err(Counter::PassEgress);
    }
    match u16::from_be_bytes([eth[12], eth[13]]) {
        ETH_P_IP => ipv4(ctx, ifindex, &ingress),
        ETH_P_IPV6 => ipv6(ctx, ifindex, &ingress),
        ETH_P_8021Q | ETH_P_8021AD => Err(Counter::PassVlan),
        _ => Err(Counter::PassNotIp),
    }
}

/// The managed, up egress interface `oif`, different from the ingress one.
#[inline(always)]
fn egress(oif: u32, ifindex: u32) -> Result<IfaceInfo, Counter> {
    if oif == ifindex {
        // The kernel would also send an ICMP redirect: leave it to the kernel.
        return Err(Counter::PassEgress);
    }
    let out = iface(oif).ok_or(Counter::PassEgress)?;
    if out.flags & (IFACE_MANAGED | IFACE_UP) != IFACE_MANAGED | IFACE_UP {
        return Err(Counter::PassEgress);
    }
    Ok(out)
}

#[inline(always)]
fn ipv4(ctx: &XdpContext, ifindex: u32, ingress: &IfaceInfo) -> Result<Steer, Counter> {
    // SAFETY: `ptr_at` checked that the 20 bytes lie inside the frame.
    let ip = unsafe { &*ptr_at::<[u8; 20]>(ctx, ETH_HLEN)? };
    if ip[0] >> 4 != 4 || ip[0] & 0xf < 5 {
        return Err(Counter::PassMalformed);
    }
    if ip[0] & 0xf != 5 {
        return Err(Counter::PassOptions);
    }
    let total_len = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    let frame_len = ctx.data_end() - ctx.data();
    if total_len < 20 || ETH_HLEN + total_len > frame_len {
        return Err(Counter::PassMalformed);
    }
    let mut sum = 0u32;
    let mut i = 0;
    while i < 20 {
        sum += u16::from_be_bytes([ip[i], ip[i + 1]]) as u32;
        i += 2;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    if sum != 0xffff {
        return Err(Counter::PassMalformed);
    }
    if ip[8] <= 1 {
        return Err(Counter::PassTtl);
    }
    let src = [ip[12], ip[13], ip[14], ip[15]];
    let dst = [ip[16], ip[17], ip[18], ip[19]];
    if special_v4(src) || special_v4(dst) {
        return Err(Counter::PassSpecialAddr);
    }
    let first_fragment = ip[6] & 0x1f == 0 && ip[7] == 0;
    let ports = l4_ports(ctx, ETH_HLEN + 20, ip[9], first_fragment);
    let mut key_src = [0u8; 16];
    key_src[0..4].copy_from_slice(&src);
    let mut key_dst = [0u8; 16];
    key_dst[0..4].copy_from_slice(&dst);
    let flow = Flow {
        ifindex,
        v6: false,
        proto: ip[9],
        src: words(&key_src),
        dst: words(&key_dst),
        ports,
    };
    let fast = rule_verdict(&flow)?;
    let route = ROUTES_V4.get(Key::new(32, dst)).copied().ok_or(Counter::PassRoute)?;
    if route.kind != ROUTE_UNICAST {
        return Err(Counter::PassRoute);
    }
    let out = egress(route.oif, ifindex)?;
    if total_len > out.mtu as usize {
        return Err(Counter::PassMtu);
    }
    let next_hop = if route.gateway == [0; 4] { dst } else { route.gateway };
    let key = NeighKeyV4 { ifindex: route.oif, addr: next_hop };
    // SAFETY: copied out at once, as in `iface`.
    match unsafe { NEIGH_V4.get(&key) }.copied() {
        Some(neigh) => Ok(resolved(route.oif, 0, &neigh, &out, ingress, total_len, fast)),
        None if ingress.flags & IFACE_KERNEL_FWD_V4 != 0 => Err(Counter::PassNeighMiss),
        None => {
            let mut addr = [0u8; 16];
            addr[0..4].copy_from_slice(&next_hop);
            Ok(unresolved(route.oif, 0, addr, ingress))
        }
    }
}

/// Source and destination ports of a TCP or UDP header at `offset`, when there is one (not in
/// later fragments).
#[inline(always)]
fn l4_ports(
    ctx: &XdpContext,
    offset: usize,
    proto: u8,
    first_fragment: bool,
) -> Option<(u16, u16)> {
    if !first_fragment || (proto != 6 && proto != 17) {
        return None;
    }
    let p = ptr_at::<[u8; 4]>(ctx, offset).ok()?;
    // SAFETY: `ptr_at` checked that the 4 bytes lie inside the frame.
    let p = unsafe { &*p };
    Some((u16::from_be_bytes([p[0], p[1]]), u16::from_be_bytes([p[2], p[3]])))
}

#[inline(always)]
fn words(a: &[u8; 16]) -> [u64; 2] {
    [
        u64::from_ne_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]),
        u64::from_ne_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]),
    ]
}

/// What the rules match on.
struct Flow {
    ifindex: u32,
    v6: bool,
    proto: u8,
    /// Source and destination addresses as [`words`].
    src: [u64; 2],
    dst: [u64; 2],
    /// TCP / UDP source and destination ports, if the frame carries them.
    ports: Option<(u16, u16)>,
}

/// Applies the active rule set: `Err` to pass (`PassRule`) or drop (`DropRule`), `Ok(true)`
/// to take the fast path, `Ok(false)` to forward as usual.
#[inline(always)]
fn rule_verdict(flow: &Flow) -> Result<bool, Counter> {
    match rule_action(flow) {
        ACTION_KERNEL => Err(Counter::PassRule),
        ACTION_DROP => Err(Counter::DropRule),
        ACTION_FAST => Ok(true),
        _ => Ok(false),
    }
}

/// The action of the first matching rule of the active set, or the set's default.
#[inline(always)]
fn rule_action(flow: &Flow) -> u32 {
    let Some(active) = RULESET.get(RULESET_ACTIVE) else { return ACTION_FORWARD };
    let set = *active & 1;
    let count = RULESET.get(RULESET_COUNT + set).copied().unwrap_or(0);
    let default = RULESET.get(RULESET_DEFAULT + set).copied().unwrap_or(ACTION_FORWARD);
    let base = set * MAX_RULES;
    let mut i = 0;
    while i < MAX_RULES {
        if i >= count {
            break;
        }
        if let Some(rule) = RULES.get(base + i) {
            if rule_matches(rule, flow) {
                return rule.action;
            }
        }
        i += 1;
    }
    default
}

#[inline(always)]
fn rule_matches(r: &Rule, flow: &Flow) -> bool {
    let &Flow { ifindex, v6, proto, ref src, ref dst, ports } = flow;
    let f = r.fields;
    if (f & RULE_V4 != 0 && v6) || (f & RULE_V6 != 0 && !v6) {
        return false;
    }
    if f & RULE_IN != 0 && r.in_ifindex != ifindex {
        return false;
    }
    if f & RULE_PROTO != 0 && r.proto != proto as u32 {
        return false;
    }
    if f & RULE_SRC != 0
        && (src[0] & r.src_mask[0] != r.src[0] || src[1] & r.src_mask[1] != r.src[1])
    {
        return false;
    }
    if f & RULE_DST != 0
        && (dst[0] & r.dst_mask[0] != r.dst[0] || dst[1] & r.dst_mask[1] != r.dst[1])
    {
        return false;
    }
    if f & (RULE_SPORT | RULE_DPORT) != 0 {
        let Some((sport, dport)) = ports else { return false };
        if f & RULE_SPORT != 0 && (sport < r.sport_lo || sport > r.sport_hi) {
            return false;
        }
        if f & RULE_DPORT != 0 && (dport < r.dport_lo || dport > r.dport_hi) {
            return false;
        }
    }
    true
}

/// Addresses a router does not forward as is: this network (0/8), loopback (127/8),
/// multicast, class E and limited broadcast (224/3).
#[inline(always)]
fn special_v4(addr: [u8; 4]) -> bool {
    addr[0] == 0 || addr[0] == 127 || addr[0] >= 224
}

#[inline(always)]
fn ipv6(ctx: &XdpContext, ifindex: u32, ingress: &IfaceInfo) -> Result<Steer, Counter> {
    // SAFETY: `ptr_at` checked that the 40 bytes lie inside the frame.
    let ip = unsafe { &*ptr_at::<[u8; IPV6_HLEN]>(ctx, ETH_HLEN)? };
    if ip[0] >> 4 != 6 {
        return Err(Counter::PassMalformed);
    }
    let payload_len = u16::from_be_bytes([ip[4], ip[5]]) as usize;
    let frame_len = ctx.data_end() - ctx.data();
    if ETH_HLEN + IPV6_HLEN + payload_len > frame_len {
        return Err(Counter::PassMalformed);
    }
    if ip[6] == NEXTHDR_HOP || payload_len == 0 {
        // Hop-by-hop options (router alert, jumbograms) are the kernel's business.
        return Err(Counter::PassOptions);
    }
    if ip[7] <= 1 {
        return Err(Counter::PassTtl);
    }
    let mut src = [0u8; 16];
    src.copy_from_slice(&ip[8..24]);
    let mut dst = [0u8; 16];
    dst.copy_from_slice(&ip[24..40]);
    if special_v6(&src) || special_v6(&dst) {
        return Err(Counter::PassSpecialAddr);
    }
    let ports = l4_ports(ctx, ETH_HLEN + IPV6_HLEN, ip[6], true);
    let flow = Flow { ifindex, v6: true, proto: ip[6], src: words(&src), dst: words(&dst), ports };
    let fast = rule_verdict(&flow)?;
    let route = ROUTES_V6.get(Key::new(128, dst)).copied().ok_or(Counter::PassRoute)?;
    if route.kind != ROUTE_UNICAST {
        return Err(Counter::PassRoute);
    }
    let out = egress(route.oif, ifindex)?;
    if IPV6_HLEN + payload_len > out.mtu as usize {
        return Err(Counter::PassMtu);
    }
    let next_hop = if route.gateway == [0; 16] { dst } else { route.gateway };
    let key = NeighKeyV6 { ifindex: route.oif, addr: next_hop };
    // SAFETY: copied out at once, as in `iface`.
    match unsafe { NEIGH_V6.get(&key) }.copied() {
        Some(neigh) => {
            Ok(resolved(route.oif, META_IPV6, &neigh, &out, ingress, IPV6_HLEN + payload_len, fast))
        }
        None if ingress.flags & IFACE_KERNEL_FWD_V6 != 0 => Err(Counter::PassNeighMiss),
        None => Ok(unresolved(route.oif, META_IPV6, next_hop, ingress)),
    }
}

/// Addresses a router does not forward as is: unspecified, loopback, IPv4-mapped, multicast
/// (ff00::/8) and link-local (fe80::/10).
#[inline(always)]
fn special_v6(addr: &[u8; 16]) -> bool {
    if addr[0] == 0xff || (addr[0] == 0xfe && addr[1] & 0xc0 == 0x80) {
        return true;
    }
    let mut high = 0u8;
    let mut i = 0;
    while i < 10 {
        high |= addr[i];
        i += 1;
    }
    // ::/80 covers the unspecified and loopback addresses and the IPv4-mapped ones
    // (::ffff:0:0/96) and the deprecated IPv4-compatible ones.
    high == 0
}

#[inline(always)]
fn resolved(
    oif: u32,
    flags: u16,
    neigh: &Neighbour,
    out: &IfaceInfo,
    ingress: &IfaceInfo,
    ip_len: usize,
    force_fast: bool,
) -> Steer {
    let mut addr = [0u8; 16];
    addr[0..6].copy_from_slice(&neigh.mac);
    addr[6..12].copy_from_slice(&out.mac);
    let fast = (force_fast || out.flags & IFACE_FAST_PATH != 0)
        .then_some(Fast { egress_slot: out.slot, ip_len });
    Steer {
        meta: XskMeta { oif, flags, l3_off: ETH_HLEN as u16, addr, magic: META_MAGIC },
        slot: ingress.slot,
        fast,
    }
}

#[inline(always)]
fn unresolved(oif: u32, flags: u16, next_hop: [u8; 16], ingress: &IfaceInfo) -> Steer {
    Steer {
        meta: XskMeta {
            oif,
            flags: flags | META_NEED_NEIGH,
            l3_off: ETH_HLEN as u16,
            addr: next_hop,
            magic: META_MAGIC,
        },
        slot: ingress.slot,
        fast: None,
    }
}

/// The in-kernel fast path: the same rewrite user space does (MACs, TTL with the kernel's
/// incremental checksum update, hop limit, padding trimmed), then a redirect to the egress
/// device. The frame is only modified once the egress device is known to be in `DEVMAP`.
#[inline(always)]
fn fast_forward(ctx: &XdpContext, meta: &XskMeta, fast: &Fast) -> u32 {
    if DEVMAP.get(fast.egress_slot).is_none() {
        count(Counter::PassEgress);
        return xdp_action::XDP_PASS;
    }
    if rewrite_in_place(ctx, meta).is_err() {
        count(Counter::PassMalformed);
        return xdp_action::XDP_PASS;
    }
    let frame_len = ctx.data_end() - ctx.data();
    let want = ETH_HLEN + fast.ip_len;
    if frame_len > want {
        // SAFETY: `ctx.ctx` is the live `xdp_md`; shrinking by the padding keeps the frame
        // at least `want` bytes long.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, -((frame_len - want) as i32)) } != 0 {
            count(Counter::FastFailed);
            return xdp_action::XDP_DROP;
        }
    }
    match DEVMAP.redirect(fast.egress_slot, 0) {
        Ok(action) => {
            count(Counter::FastForwarded);
            action
        }
        Err(_) => {
            count(Counter::FastFailed);
            xdp_action::XDP_DROP
        }
    }
}

/// Writes the MACs and decrements the TTL / hop limit of the frame classified as `meta`.
/// Touches nothing (returns `Err`) when the headers are not all in bounds.
#[inline(always)]
fn rewrite_in_place(ctx: &XdpContext, meta: &XskMeta) -> Result<(), ()> {
    if meta.flags & META_IPV6 != 0 {
        let ip = ptr_at::<[u8; IPV6_HLEN]>(ctx, ETH_HLEN).map_err(|_| ())? as *mut [u8; IPV6_HLEN];
        let eth = ptr_at::<[u8; ETH_HLEN]>(ctx, 0).map_err(|_| ())? as *mut [u8; ETH_HLEN];
        // SAFETY: both pointers were bounds-checked by `ptr_at`; nothing else aliases them.
        unsafe {
            (*ip)[7] -= 1;
            (&mut (*eth))[0..12].copy_from_slice(&meta.addr[0..12]);
        }
    } else {
        let ip = ptr_at::<[u8; 20]>(ctx, ETH_HLEN).map_err(|_| ())? as *mut [u8; 20];
        let eth = ptr_at::<[u8; ETH_HLEN]>(ctx, 0).map_err(|_| ())? as *mut [u8; ETH_HLEN];
        // SAFETY: as above.
        unsafe {
            (*ip)[8] -= 1;
            // ip_decrease_ttl(): csum += htons(0x0100), folded, in memory byte order.
            let mut sum = u16::from_ne_bytes([(*ip)[10], (*ip)[11]]) as u32;
            sum += 0x0100u16.to_be() as u32;
            sum += (sum >= 0xffff) as u32;
            let check = (sum as u16).to_ne_bytes();
            (*ip)[10] = check[0];
            (*ip)[11] = check[1];
            (&mut (*eth))[0..12].copy_from_slice(&meta.addr[0..12]);
        }
    }
    Ok(())
}

#[inline(always)]
fn redirect(ctx: &XdpContext, steer: Steer) -> u32 {
    let key = xsk_key(steer.slot, ctx.rx_queue_index());
    if XSKS.get(key).is_none() {
        count(Counter::PassNoSocket);
        return xdp_action::XDP_PASS;
    }
    // SAFETY: `ctx.ctx` is the live `xdp_md` of this invocation.
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -(META_LEN as i32)) } != 0 {
        count(Counter::PassNoMeta);
        return xdp_action::XDP_PASS;
    }
    let meta = ctx.metadata();
    if meta + META_LEN > ctx.data() {
        count(Counter::PassNoMeta);
        return xdp_action::XDP_PASS;
    }
    // SAFETY: the check above proves `META_LEN` bytes from `meta` lie in the metadata area.
    unsafe { (meta as *mut XskMeta).write_unaligned(steer.meta) };
    match XSKS.redirect(key, xdp_action::XDP_PASS as u64) {
        Ok(action) => {
            count(if steer.meta.flags & META_NEED_NEIGH != 0 {
                Counter::SteeredNeighMiss
            } else {
                Counter::Steered
            });
            action
        }
        Err(action) => {
            count(Counter::PassNoSocket);
            action
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
