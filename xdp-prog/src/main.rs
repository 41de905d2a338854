//! The xdpfwd XDP program.
//!
//! Attached to every managed interface. For each frame it decides, from maps that user space
//! keeps in sync with the kernel's routes, neighbours and interfaces, whether a Linux router
//! would forward it unchanged but for the usual rewrite (MACs, TTL / hop limit, checksum). If so
//! it writes an [`XskMeta`] in front of the frame and redirects it to the AF_XDP socket of its
//! rx queue; user space rewrites and transmits it. Anything else goes to the kernel untouched
//! (`XDP_PASS`), counted by reason. The program never modifies a frame it passes, and drops
//! only what a rule says to drop.
//!
//! The configured policy is applied here too, because only here is the egress known before
//! the frame reaches a socket: steering rules (`RULES`), stateless NAT (`NATS`; the route
//! lookup uses the translated destination), static routes (route kinds in the tries), L2
//! cross-connects and VLAN pop / push / rewrite (`IfaceInfo`, `Route*::vlan`).
#![no_std]
#![no_main]

use core::mem::size_of;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_meta, bpf_xdp_adjust_tail},
    macros::{map, xdp},
    maps::{Array, DevMap, HashMap, LpmTrie, PerCpuArray, XskMap, lpm_trie::Key},
    programs::XdpContext,
};
use xdpfwd_common::{
    ACTION_DROP, ACTION_FAST, ACTION_FORWARD, ACTION_KERNEL, Counter, IFACE_FAST_PATH,
    IFACE_KERNEL_FWD_V4, IFACE_KERNEL_FWD_V6, IFACE_MANAGED, IFACE_PEER_MAC, IFACE_UP,
    IFACE_VLAN_POP, IFACE_XCONNECT, IfaceInfo, MAX_IFACES, MAX_NATS, MAX_NEIGHBOURS, MAX_ROUTES,
    MAX_RULES, META_IPV6, META_L2, META_LEN, META_MAGIC, META_NEED_NEIGH, NAT_DPORT, NAT_DST,
    NAT_SPORT, NAT_SRC, Nat, NeighKeyV4, NeighKeyV6, Neighbour, Policy, ROUTE_STATIC,
    ROUTE_STATIC_MAC, ROUTE_UNICAST, RULE_DPORT, RULE_DST, RULE_IN, RULE_PROTO, RULE_SPORT,
    RULE_SRC, RULE_V4, RULE_V6, RULE_VLAN, RULESET_LEN, RouteV4, RouteV6, Rule, XSK_MAP_SIZE,
    XskMeta, csum, xsk_key,
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
/// The active [`Policy`] word.
#[map]
static RULESET: Array<u32> = Array::with_max_entries(RULESET_LEN, 0);
/// Two sets of NAT rewrites, selected with the rules by the [`Policy`] word.
#[map]
static NATS: Array<Nat> = Array::with_max_entries(2 * MAX_NATS, 0);
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const VLAN_HLEN: usize = 4;
const IPV6_HLEN: usize = 40;
const NEXTHDR_HOP: u8 = 0;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;

/// A frame to forward: the metadata for user space and the ingress interface's XSKMAP slot;
/// with `fast`, the egress slot in `DEVMAP` for the in-kernel fast path instead. Nothing of
/// the frame has changed yet: [`forward`] applies `vlan`, `nat` and (fast path) the rewrite.
struct Steer {
    meta: XskMeta,
    slot: u32,
    fast: Option<Fast>,
    vlan: Vlan,
    nat: Option<&'static Nat>,
    /// Cross-connect: set the destination MAC to `meta.addr[0..6]`.
    peer_mac: bool,
}

/// The in-kernel fast path's part of a decision.
struct Fast {
    egress_slot: u32,
    /// IP length (header included): the frame is trimmed to the L3 offset plus this; 0 for
    /// cross-connected frames, which are sent as they are.
    ip_len: usize,
}

/// What happens to 802.1Q tags on the way out.
#[derive(Clone, Copy)]
struct Vlan {
    /// The frame arrived with a tag that is removed (or rewritten, with `push`).
    pop: bool,
    /// VLAN id to tag the frame with (0: none).
    push: u16,
}

#[xdp]
pub fn xdpfwd(ctx: XdpContext) -> u32 {
    // `Counter::Rx` is not counted here: user space derives it as the sum of the verdicts,
    // which saves a map update per frame.
    match classify(&ctx) {
        Ok(steer) => forward(&ctx, steer),
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
    if ctx.data_end() - ctx.data() > ingress.max_frame as usize {
        // An AF_XDP socket would drop it: longer than a UMEM frame carries.
        return Err(Counter::PassEgress);
    }
    let ethertype = u16::from_be_bytes([eth[12], eth[13]]);
    if ingress.flags & IFACE_XCONNECT != 0 {
        return xconnect(ctx, ifindex, &ingress, ethertype);
    }
    if eth[0..6] != ingress.mac {
        return Err(Counter::PassNotForUs);
    }
    let mut l3 = ETH_HLEN;
    let mut vlan = 0;
    let mut ethertype = ethertype;
    if ethertype == ETH_P_8021Q && ingress.flags & IFACE_VLAN_POP != 0 {
        // SAFETY: `ptr_at` checked that the 4 bytes lie inside the frame.
        let tag = unsafe { &*ptr_at::<[u8; VLAN_HLEN]>(ctx, ETH_HLEN)? };
        vlan = u16::from_be_bytes([tag[0], tag[1]]) & 0x0fff;
        ethertype = u16::from_be_bytes([tag[2], tag[3]]);
        l3 = ETH_HLEN + VLAN_HLEN;
    }
    let at = Ingress { ifindex, info: &ingress, l3, vlan };
    match ethertype {
        ETH_P_IP => ipv4(ctx, &at),
        ETH_P_IPV6 => ipv6(ctx, &at),
        _ if at.tagged() => Err(Counter::PassVlan),
        ETH_P_8021Q | ETH_P_8021AD => Err(Counter::PassVlan),
        _ => Err(Counter::PassNotIp),
    }
}

/// Where and how a frame arrived.
struct Ingress<'a> {
    ifindex: u32,
    info: &'a IfaceInfo,
    /// Offset of the IP header: 14, or 18 behind a tag being popped.
    l3: usize,
    /// VLAN id of the popped tag (0: none).
    vlan: u16,
}

impl Ingress<'_> {
    /// The frame arrived with a tag that is being popped.
    #[inline(always)]
    fn tagged(&self) -> bool {
        self.l3 != ETH_HLEN
    }
}

/// An L2 cross-connect: the frame leaves through the peer as it is, but for the VLAN
/// handling of both interfaces and the peer MAC.
#[inline(always)]
fn xconnect(
    ctx: &XdpContext,
    ifindex: u32,
    ingress: &IfaceInfo,
    ethertype: u16,
) -> Result<Steer, Counter> {
    let out = egress(ingress.peer, ifindex)?;
    let frame_len = ctx.data_end() - ctx.data();
    let vlan = Vlan {
        pop: ethertype == ETH_P_8021Q && ingress.flags & IFACE_VLAN_POP != 0,
        push: out.push_vlan,
    };
    if vlan.push != 0 && !vlan.pop && frame_len + VLAN_HLEN > ingress.max_frame as usize {
        return Err(Counter::PassEgress);
    }
    if frame_len > out.mtu as usize + ETH_HLEN + VLAN_HLEN {
        return Err(Counter::PassMtu);
    }
    let mut addr = [0u8; 16];
    let flags = META_L2;
    if ingress.flags & IFACE_PEER_MAC != 0 {
        addr[0..6].copy_from_slice(&ingress.peer_mac);
    }
    let fast =
        (out.flags & IFACE_FAST_PATH != 0).then_some(Fast { egress_slot: out.slot, ip_len: 0 });
    Ok(Steer {
        meta: XskMeta {
            oif: ingress.peer,
            flags,
            l3_off: ETH_HLEN as u16,
            addr,
            magic: META_MAGIC,
        },
        slot: ingress.slot,
        fast,
        vlan,
        nat: None,
        peer_mac: ingress.flags & IFACE_PEER_MAC != 0,
    })
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

/// The active policy word.
#[inline(always)]
fn policy() -> Policy {
    match RULESET.get(0) {
        Some(word) => Policy::decode(*word),
        None => Policy { default: ACTION_FORWARD, ..Policy::default() },
    }
}

#[inline(always)]
fn ipv4(ctx: &XdpContext, at: &Ingress) -> Result<Steer, Counter> {
    let l3 = at.l3;
    // SAFETY: `ptr_at` checked that the 20 bytes lie inside the frame.
    let ip = unsafe { &*ptr_at::<[u8; 20]>(ctx, l3)? };
    if ip[0] >> 4 != 4 || ip[0] & 0xf < 5 {
        return Err(Counter::PassMalformed);
    }
    if ip[0] & 0xf != 5 {
        return Err(Counter::PassOptions);
    }
    let total_len = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    let frame_len = ctx.data_end() - ctx.data();
    if total_len < 20 || l3 + total_len > frame_len {
        return Err(Counter::PassMalformed);
    }
    let mut sum = 0u32;
    let mut i = 0;
    while i < 20 {
        sum += u16::from_be_bytes([ip[i], ip[i + 1]]) as u32;
        i += 2;
    }
    if csum::fold(sum) != 0xffff {
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
    let unfragmented = first_fragment && ip[6] & 0x20 == 0;
    let packet = Packet { v6: false, proto: ip[9], l4: l3 + 20, first_fragment, unfragmented };
    let (fast, nat) = policy_stage(ctx, at, &packet, || {
        let mut key_src = [0u8; 16];
        key_src[0..4].copy_from_slice(&src);
        let mut key_dst = [0u8; 16];
        key_dst[0..4].copy_from_slice(&dst);
        (words(&key_src), words(&key_dst))
    })?;
    let dst = match nat {
        Some(nat) if nat.set & NAT_DST != 0 => [nat.dst[0], nat.dst[1], nat.dst[2], nat.dst[3]],
        _ => dst,
    };
    let route = ROUTES_V4.get(Key::new(32, dst)).copied().ok_or(Counter::PassRoute)?;
    let kind = route.kind;
    if kind != ROUTE_UNICAST && kind != ROUTE_STATIC && kind != ROUTE_STATIC_MAC {
        return Err(Counter::PassRoute);
    }
    let out = egress(route.oif, at.ifindex)?;
    if total_len > out.mtu as usize {
        return Err(Counter::PassMtu);
    }
    let vlan = egress_vlan(ctx, at, route.vlan, &out)?;
    let next = Next { oif: route.oif, flags: 0, out: &out, ip_len: total_len, fast, vlan, nat };
    if kind == ROUTE_STATIC_MAC {
        return Ok(resolved(next, &route.mac, at));
    }
    let next_hop = if route.gateway == [0; 4] { dst } else { route.gateway };
    let key = NeighKeyV4 { ifindex: route.oif, addr: next_hop };
    // SAFETY: copied out at once, as in `iface`.
    match unsafe { NEIGH_V4.get(&key) }.copied() {
        Some(neigh) => Ok(resolved(next, &neigh.mac, at)),
        // The kernel forwards the packet itself, as it would without xdpfwd, unless the route
        // or a rewrite is xdpfwd's own.
        None if at.info.flags & IFACE_KERNEL_FWD_V4 != 0
            && kind == ROUTE_UNICAST
            && next.nat.is_none() =>
        {
            Err(Counter::PassNeighMiss)
        }
        None => {
            let mut addr = [0u8; 16];
            addr[0..4].copy_from_slice(&next_hop);
            Ok(unresolved(next, addr, at))
        }
    }
}

/// The VLAN handling of a routed frame: the ingress tag is popped, the route's or the egress
/// interface's VLAN id pushed. A push onto an untagged frame must still fit a UMEM frame.
#[inline(always)]
fn egress_vlan(
    ctx: &XdpContext,
    at: &Ingress,
    route_vlan: u16,
    out: &IfaceInfo,
) -> Result<Vlan, Counter> {
    let push = if route_vlan != 0 { route_vlan } else { out.push_vlan };
    if push != 0
        && !at.tagged()
        && ctx.data_end() - ctx.data() + VLAN_HLEN > at.info.max_frame as usize
    {
        return Err(Counter::PassEgress);
    }
    Ok(Vlan { pop: at.tagged(), push })
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
    if !first_fragment || (proto != IPPROTO_TCP && proto != IPPROTO_UDP) {
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

/// What the rules match on. Plain C layout: the global functions below take it by pointer.
#[repr(C)]
pub struct Flow {
    /// Source and destination addresses as [`words`].
    src: [u64; 2],
    dst: [u64; 2],
    ifindex: u32,
    /// TCP / UDP source and destination ports, with [`FLOW_PORTS`].
    sport: u16,
    dport: u16,
    /// VLAN id the frame arrived with (0: untagged).
    vlan: u16,
    proto: u8,
    /// `FLOW_*` bits.
    flags: u8,
}

/// `Flow::flags`: IPv6 (IPv4 otherwise).
const FLOW_V6: u8 = 1;
/// `Flow::flags`: the frame carries TCP / UDP ports.
const FLOW_PORTS: u8 = 2;

impl Flow {
    #[inline(always)]
    fn new(
        at: &Ingress,
        v6: bool,
        proto: u8,
        src: [u64; 2],
        dst: [u64; 2],
        ports: Option<(u16, u16)>,
    ) -> Flow {
        let (sport, dport) = ports.unwrap_or((0, 0));
        let flags = if v6 { FLOW_V6 } else { 0 } | if ports.is_some() { FLOW_PORTS } else { 0 };
        Flow { src, dst, ifindex: at.ifindex, sport, dport, vlan: at.vlan, proto, flags }
    }
}

/// What the policy stage needs to know of an IP packet.
struct Packet {
    v6: bool,
    proto: u8,
    /// Offset of the L4 header.
    l4: usize,
    first_fragment: bool,
    unfragmented: bool,
}

/// The policy stage: the active rules decide (`Err` to pass or drop; `Ok((true, _))` for
/// the fast path) and the first matching NAT rewrite is returned. With no rules and no
/// rewrites (the common case) it reads the policy word and nothing else: no ports, no
/// `Flow`, no calls; `addrs` (the source and destination as [`words`]) is not even run.
#[inline(always)]
fn policy_stage(
    ctx: &XdpContext,
    at: &Ingress,
    packet: &Packet,
    addrs: impl FnOnce() -> ([u64; 2], [u64; 2]),
) -> Result<(bool, Option<&'static Nat>), Counter> {
    let policy = policy();
    if policy.rules | policy.nats == 0 {
        return Ok((verdict(policy.default)?, None));
    }
    let ports = l4_ports(ctx, packet.l4, packet.proto, packet.first_fragment);
    let (src, dst) = addrs();
    let flow = Flow::new(at, packet.v6, packet.proto, src, dst, ports);
    let action =
        if policy.rules == 0 { policy.default } else { xdpfwd_rules(&flow, policy.encode()) };
    let fast = verdict(action)?;
    Ok((fast, nat_for(&flow, &policy, packet.unfragmented)?))
}

/// A rule action as the stage's result: `Err` to pass (`PassRule`) or drop (`DropRule`),
/// `Ok(true)` to take the fast path, `Ok(false)` to forward as usual.
#[inline(always)]
fn verdict(action: u32) -> Result<bool, Counter> {
    match action {
        ACTION_KERNEL => Err(Counter::PassRule),
        ACTION_DROP => Err(Counter::DropRule),
        ACTION_FAST => Ok(true),
        _ => Ok(false),
    }
}

/// The action of the first matching rule of the active set (`word`: the [`Policy`]), or the
/// set's default.
///
/// This and [`xdpfwd_nat_index`] are BPF *global* functions (they need the BTF that
/// `.cargo/config.toml` asks for): the kernel verifies each once, on its own, with its
/// arguments unknown, instead of once for every path that calls it. Inlined, the two loops
/// were re-verified for each IP version, VLAN offset and outcome, and the program took 0.69 M
/// of the verifier's 1 M-instruction budget and 2 s to load; now about 0.1 M and 0.1 s.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn xdpfwd_rules(flow: *const Flow, word: u32) -> u32 {
    let policy = Policy::decode(word);
    // SAFETY: callers pass a live `Flow`; the verifier checks the pointer (it may be null).
    match unsafe { flow.as_ref() } {
        Some(flow) => rule_action(flow, &policy),
        None => policy.default,
    }
}

#[inline(always)]
fn rule_action(flow: &Flow, policy: &Policy) -> u32 {
    let base = policy.set * MAX_RULES;
    let mut i = 0;
    while i < MAX_RULES {
        if i >= policy.rules {
            break;
        }
        if let Some(rule) = RULES.get(base + i) {
            if rule_matches(rule, flow) {
                return rule.action;
            }
        }
        i += 1;
    }
    policy.default
}

/// The first NAT rewrite of the active set that matches; `Err(PassNat)` when one matches a
/// frame that cannot be rewritten statelessly.
#[inline(always)]
fn nat_for(
    flow: &Flow,
    policy: &Policy,
    unfragmented: bool,
) -> Result<Option<&'static Nat>, Counter> {
    if policy.nats == 0 {
        return Ok(None);
    }
    let index = xdpfwd_nat_index(flow, policy.encode());
    if index == u32::MAX {
        return Ok(None);
    }
    if !unfragmented || extension_header(flow.proto) {
        return Err(Counter::PassNat);
    }
    NATS.get(index).map(Some).ok_or(Counter::PassNat)
}

/// Index in `NATS` of the first rewrite of the active set (`word`) that matches, or
/// `u32::MAX`. A global function, as [`xdpfwd_rules`].
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn xdpfwd_nat_index(flow: *const Flow, word: u32) -> u32 {
    let policy = Policy::decode(word);
    // SAFETY: as in `xdpfwd_rules`.
    let Some(flow) = (unsafe { flow.as_ref() }) else { return u32::MAX };
    let base = policy.set * MAX_NATS;
    let mut i = 0;
    while i < MAX_NATS {
        if i >= policy.nats {
            break;
        }
        if let Some(nat) = NATS.get(base + i) {
            if rule_matches(&nat.rule, flow) {
                return base + i;
            }
        }
        i += 1;
    }
    u32::MAX
}

/// IPv6 extension headers (and AH, which authenticates the addresses): the L4 header is not
/// where a stateless rewrite can find it.
#[inline(always)]
fn extension_header(next: u8) -> bool {
    matches!(next, 0 | 43 | 44 | 51 | 60 | 135 | 139 | 140)
}

#[inline(always)]
fn rule_matches(r: &Rule, flow: &Flow) -> bool {
    let &Flow { ifindex, vlan, proto, ref src, ref dst, sport, dport, flags } = flow;
    let v6 = flags & FLOW_V6 != 0;
    let f = r.fields;
    if (f & RULE_V4 != 0 && v6) || (f & RULE_V6 != 0 && !v6) {
        return false;
    }
    if f & RULE_IN != 0 && r.in_ifindex != ifindex {
        return false;
    }
    if f & RULE_VLAN != 0 && r.vlan != vlan {
        return false;
    }
    if f & RULE_PROTO != 0 && r.proto != proto as u16 {
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
        if flags & FLOW_PORTS == 0 {
            return false;
        }
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
fn ipv6(ctx: &XdpContext, at: &Ingress) -> Result<Steer, Counter> {
    let l3 = at.l3;
    // SAFETY: `ptr_at` checked that the 40 bytes lie inside the frame.
    let ip = unsafe { &*ptr_at::<[u8; IPV6_HLEN]>(ctx, l3)? };
    if ip[0] >> 4 != 6 {
        return Err(Counter::PassMalformed);
    }
    let payload_len = u16::from_be_bytes([ip[4], ip[5]]) as usize;
    let frame_len = ctx.data_end() - ctx.data();
    if l3 + IPV6_HLEN + payload_len > frame_len {
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
    let packet = Packet {
        v6: true,
        proto: ip[6],
        l4: l3 + IPV6_HLEN,
        first_fragment: true,
        unfragmented: true,
    };
    let (fast, nat) = policy_stage(ctx, at, &packet, || (words(&src), words(&dst)))?;
    if let Some(nat) = nat
        && nat.set & NAT_DST != 0
    {
        dst = nat.dst;
    }
    let route = ROUTES_V6.get(Key::new(128, dst)).copied().ok_or(Counter::PassRoute)?;
    let kind = route.kind;
    if kind != ROUTE_UNICAST && kind != ROUTE_STATIC && kind != ROUTE_STATIC_MAC {
        return Err(Counter::PassRoute);
    }
    let out = egress(route.oif, at.ifindex)?;
    if IPV6_HLEN + payload_len > out.mtu as usize {
        return Err(Counter::PassMtu);
    }
    let vlan = egress_vlan(ctx, at, route.vlan, &out)?;
    let ip_len = IPV6_HLEN + payload_len;
    let next = Next { oif: route.oif, flags: META_IPV6, out: &out, ip_len, fast, vlan, nat };
    if kind == ROUTE_STATIC_MAC {
        return Ok(resolved(next, &route.mac, at));
    }
    let next_hop = if route.gateway == [0; 16] { dst } else { route.gateway };
    let key = NeighKeyV6 { ifindex: route.oif, addr: next_hop };
    // SAFETY: copied out at once, as in `iface`.
    match unsafe { NEIGH_V6.get(&key) }.copied() {
        Some(neigh) => Ok(resolved(next, &neigh.mac, at)),
        None if at.info.flags & IFACE_KERNEL_FWD_V6 != 0
            && kind == ROUTE_UNICAST
            && next.nat.is_none() =>
        {
            Err(Counter::PassNeighMiss)
        }
        None => Ok(unresolved(next, next_hop, at)),
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

/// A routed frame's decision before the next hop's MAC is known.
struct Next<'a> {
    oif: u32,
    flags: u16,
    out: &'a IfaceInfo,
    ip_len: usize,
    /// A rule chose the fast path.
    fast: bool,
    vlan: Vlan,
    nat: Option<&'static Nat>,
}

#[inline(always)]
fn resolved(next: Next, mac: &[u8; 6], at: &Ingress) -> Steer {
    let mut addr = [0u8; 16];
    addr[0..6].copy_from_slice(mac);
    addr[6..12].copy_from_slice(&next.out.mac);
    let fast = (next.fast || next.out.flags & IFACE_FAST_PATH != 0)
        .then_some(Fast { egress_slot: next.out.slot, ip_len: next.ip_len });
    Steer {
        meta: XskMeta {
            oif: next.oif,
            flags: next.flags,
            l3_off: at.l3 as u16,
            addr,
            magic: META_MAGIC,
        },
        slot: at.info.slot,
        fast,
        vlan: next.vlan,
        nat: next.nat,
        peer_mac: false,
    }
}

#[inline(always)]
fn unresolved(next: Next, next_hop: [u8; 16], at: &Ingress) -> Steer {
    Steer {
        meta: XskMeta {
            oif: next.oif,
            flags: next.flags | META_NEED_NEIGH,
            l3_off: at.l3 as u16,
            addr: next_hop,
            magic: META_MAGIC,
        },
        slot: at.info.slot,
        fast: None,
        vlan: next.vlan,
        nat: next.nat,
        peer_mac: false,
    }
}

/// Carries out a decision: checks that the destination (socket or device) exists, applies
/// the VLAN change, the NAT rewrite and (fast path) the router rewrite, then redirects.
#[inline(always)]
fn forward(ctx: &XdpContext, mut steer: Steer) -> u32 {
    let ready = match &steer.fast {
        Some(fast) => DEVMAP.get(fast.egress_slot).is_some(),
        None => XSKS.get(xsk_key(steer.slot, ctx.rx_queue_index())).is_some(),
    };
    if !ready {
        count(if steer.fast.is_some() { Counter::PassEgress } else { Counter::PassNoSocket });
        return xdp_action::XDP_PASS;
    }
    // Only the VLAN change can fail for want of room; everything after it was bounds-checked
    // by `classify` already, so the `Err`s below are for the verifier.
    let Ok(l3) = vlan_apply(ctx, steer.meta.l3_off as usize, steer.vlan) else {
        count(Counter::PassNoMeta);
        return xdp_action::XDP_PASS;
    };
    steer.meta.l3_off = l3 as u16;
    if let Some(nat) = steer.nat {
        let result = match (l3, steer.meta.flags & META_IPV6 != 0) {
            (ETH_HLEN, false) => nat_v4::<ETH_HLEN>(ctx, nat),
            (ETH_HLEN, true) => nat_v6::<ETH_HLEN>(ctx, nat),
            (_, false) => nat_v4::<{ ETH_HLEN + VLAN_HLEN }>(ctx, nat),
            (_, true) => nat_v6::<{ ETH_HLEN + VLAN_HLEN }>(ctx, nat),
        };
        if result.is_err() {
            count(Counter::PassMalformed);
            return xdp_action::XDP_PASS;
        }
    }
    if steer.peer_mac {
        let Ok(eth) = ptr_at::<[u8; 6]>(ctx, 0) else {
            count(Counter::PassMalformed);
            return xdp_action::XDP_PASS;
        };
        // SAFETY: `ptr_at` checked the 6 bytes; nothing else refers to them.
        unsafe { (*(eth as *mut [u8; 6])).copy_from_slice(&steer.meta.addr[0..6]) };
    }
    match &steer.fast {
        Some(fast) => fast_forward(ctx, &steer.meta, fast),
        None => redirect(ctx, &steer),
    }
}

/// Pops, pushes or rewrites the 802.1Q tag; returns the new offset of the IP header.
#[inline(always)]
fn vlan_apply(ctx: &XdpContext, l3: usize, vlan: Vlan) -> Result<usize, ()> {
    match (vlan.pop, vlan.push != 0) {
        (false, false) => Ok(l3),
        (true, true) => {
            let tag = ptr_at::<[u8; 2]>(ctx, ETH_HLEN).map_err(|_| ())? as *mut [u8; 2];
            // SAFETY: `ptr_at` checked the 2 bytes of the TCI; the priority bits stay.
            unsafe {
                let pcp = (*tag)[0] & 0xf0;
                (*tag)[0] = pcp | (vlan.push >> 8) as u8 & 0x0f;
                (*tag)[1] = vlan.push as u8;
            }
            Ok(l3)
        }
        (true, false) => {
            let eth = ptr_at::<[u8; ETH_HLEN + VLAN_HLEN]>(ctx, 0).map_err(|_| ())?
                as *mut [u8; ETH_HLEN + VLAN_HLEN];
            // SAFETY: `ptr_at` checked the 18 bytes. The MACs move 4 bytes up, over the tag.
            unsafe { move_macs(eth as *mut u8, 0, 4) };
            // SAFETY: `ctx.ctx` is the live `xdp_md`; the frame keeps ≥ 14 bytes.
            if unsafe { bpf_xdp_adjust_head(ctx.ctx, VLAN_HLEN as i32) } != 0 {
                return Err(());
            }
            Ok(l3 - VLAN_HLEN)
        }
        (false, true) => {
            // SAFETY: `ctx.ctx` is the live `xdp_md`; the driver's headroom takes 4 bytes.
            if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(VLAN_HLEN as i32)) } != 0 {
                return Err(());
            }
            let eth = ptr_at::<[u8; ETH_HLEN + VLAN_HLEN]>(ctx, 0).map_err(|_| ())?
                as *mut [u8; ETH_HLEN + VLAN_HLEN];
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

/// Moves the 12 bytes of MAC addresses at `from` to `to` (4 bytes apart) as three 32-bit
/// words; volatile reads keep LLVM from turning this into a `memmove` call, which BPF lacks.
///
/// # Safety
///
/// `frame` must point to at least `max(from, to) + 12` writable bytes.
#[inline(always)]
unsafe fn move_macs(frame: *mut u8, from: usize, to: usize) {
    // SAFETY: the caller guarantees the bytes; unaligned accesses are explicit.
    unsafe {
        let a = core::ptr::read_volatile(frame.add(from) as *const [u8; 4]);
        let b = core::ptr::read_volatile(frame.add(from + 4) as *const [u8; 4]);
        let c = core::ptr::read_volatile(frame.add(from + 8) as *const [u8; 4]);
        (frame.add(to) as *mut [u8; 4]).write(a);
        (frame.add(to + 4) as *mut [u8; 4]).write(b);
        (frame.add(to + 8) as *mut [u8; 4]).write(c);
    }
}

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

/// A 16-bit big-endian field at `offset` of the frame, as a pointer for update.
#[inline(always)]
fn field16(ctx: &XdpContext, offset: usize) -> Result<*mut [u8; 2], ()> {
    Ok(ptr_at::<[u8; 2]>(ctx, offset).map_err(|_| ())? as *mut [u8; 2])
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
) -> Result<u16, ()> {
    let set_port = |offset: usize, new: u16, check: u16| -> Result<u16, ()> {
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
            if nat.set & NAT_SPORT != 0 {
                check = set_port(0, nat.sport, check)?;
            }
            if nat.set & NAT_DPORT != 0 {
                check = set_port(2, nat.dport, check)?;
            }
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            // SAFETY: `ptr_at` checks the byte.
            let kind = unsafe { *ptr_at::<u8>(ctx, l4).map_err(|_| ())? };
            let (request, reply) = if proto == IPPROTO_ICMP { (8, 0) } else { (128, 129) };
            if kind == request && nat.set & NAT_SPORT != 0 {
                check = set_port(4, nat.sport, check)?;
            } else if kind == reply && nat.set & NAT_DPORT != 0 {
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
) -> Result<(usize, bool, bool, u16), ()> {
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
) -> Result<(), ()> {
    let check = if proto == IPPROTO_UDP { csum::udp_wire(check) } else { check };
    let p = field16(ctx, l4 + offset)?;
    // SAFETY: `field16` checked the 2 bytes.
    unsafe { *p = check.to_be_bytes() };
    Ok(())
}

/// Stateless NAT of an IPv4 frame whose header is at `L3` (20 bytes: options were refused).
#[inline(always)]
fn nat_v4<const L3: usize>(ctx: &XdpContext, nat: &Nat) -> Result<(), ()> {
    // SAFETY: `ptr_at` checks the byte.
    let proto = unsafe { *ptr_at::<u8>(ctx, L3 + 9).map_err(|_| ())? };
    let l4 = L3 + 20;
    let ip_check_at = field16(ctx, L3 + 10)?;
    let src = ptr_at::<[u8; 4]>(ctx, L3 + 12).map_err(|_| ())? as *mut [u8; 4];
    let dst = ptr_at::<[u8; 4]>(ctx, L3 + 16).map_err(|_| ())? as *mut [u8; 4];
    let (offset, update, pseudo, l4_check) = l4_plan(ctx, l4, proto, false)?;
    // SAFETY: `field16` checked the pointer.
    let mut sums = (u16::from_be_bytes(unsafe { *ip_check_at }), l4_check);
    if nat.set & NAT_SRC != 0 {
        let new = [nat.src[0], nat.src[1], nat.src[2], nat.src[3]];
        // SAFETY: `ptr_at` checked `src`.
        sums = unsafe { swap_addr(src, &new, sums, update && pseudo) };
    }
    if nat.set & NAT_DST != 0 {
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
fn nat_v6<const L3: usize>(ctx: &XdpContext, nat: &Nat) -> Result<(), ()> {
    // SAFETY: `ptr_at` checks the byte.
    let proto = unsafe { *ptr_at::<u8>(ctx, L3 + 6).map_err(|_| ())? };
    let l4 = L3 + IPV6_HLEN;
    let src = ptr_at::<[u8; 16]>(ctx, L3 + 8).map_err(|_| ())? as *mut [u8; 16];
    let dst = ptr_at::<[u8; 16]>(ctx, L3 + 24).map_err(|_| ())? as *mut [u8; 16];
    let (offset, update, _, l4_check) = l4_plan(ctx, l4, proto, true)?;
    let mut sums = (0, l4_check);
    if nat.set & NAT_SRC != 0 {
        // SAFETY: `ptr_at` checked `src`.
        sums = unsafe { swap_addr(src, &nat.src, sums, update) };
    }
    if nat.set & NAT_DST != 0 {
        // SAFETY: `ptr_at` checked `dst`.
        sums = unsafe { swap_addr(dst, &nat.dst, sums, update) };
    }
    let l4_check = nat_l4(ctx, l4, nat, proto, update, sums.1)?;
    if update {
        store_l4_check(ctx, l4, offset, proto, l4_check)?;
    }
    Ok(())
}

/// The in-kernel fast path: the same rewrite user space does (MACs, TTL with the kernel's
/// incremental checksum update, hop limit, padding trimmed), then a redirect to the egress
/// device. Cross-connected frames go as they are.
#[inline(always)]
fn fast_forward(ctx: &XdpContext, meta: &XskMeta, fast: &Fast) -> u32 {
    let l3 = meta.l3_off as usize;
    if meta.flags & META_L2 == 0 {
        if rewrite_in_place(ctx, meta, l3).is_err() {
            count(Counter::PassMalformed);
            return xdp_action::XDP_PASS;
        }
        let frame_len = ctx.data_end() - ctx.data();
        let want = l3 + fast.ip_len;
        if frame_len > want {
            // SAFETY: `ctx.ctx` is the live `xdp_md`; shrinking by the padding keeps the
            // frame at least `want` bytes long.
            if unsafe { bpf_xdp_adjust_tail(ctx.ctx, -((frame_len - want) as i32)) } != 0 {
                count(Counter::FastFailed);
                return xdp_action::XDP_DROP;
            }
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

/// Writes the MACs and decrements the TTL / hop limit of the frame classified as `meta`,
/// whose IP header is at `l3`. Touches nothing (returns `Err`) when the headers are not all in
/// bounds.
#[inline(always)]
fn rewrite_in_place(ctx: &XdpContext, meta: &XskMeta, l3: usize) -> Result<(), ()> {
    let eth = ptr_at::<[u8; 12]>(ctx, 0).map_err(|_| ())? as *mut [u8; 12];
    if meta.flags & META_IPV6 != 0 {
        let ip = ptr_at::<[u8; IPV6_HLEN]>(ctx, l3).map_err(|_| ())? as *mut [u8; IPV6_HLEN];
        // SAFETY: both pointers were bounds-checked by `ptr_at`; nothing else aliases them.
        unsafe {
            (*ip)[7] -= 1;
            (*eth).copy_from_slice(&meta.addr[0..12]);
        }
    } else {
        let ip = ptr_at::<[u8; 20]>(ctx, l3).map_err(|_| ())? as *mut [u8; 20];
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
            (*eth).copy_from_slice(&meta.addr[0..12]);
        }
    }
    Ok(())
}

#[inline(always)]
fn redirect(ctx: &XdpContext, steer: &Steer) -> u32 {
    let key = xsk_key(steer.slot, ctx.rx_queue_index());
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
