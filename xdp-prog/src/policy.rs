//! The configuration's policy: steering rules and the search for a NAT rewrite.
//!
//! Reads `RULESET`, `RULES` and `NATS` (and counts hits in `RULE_HITS` / `NAT_HITS`); decides,
//! never changes the frame. The selector test
//! [`rule_matches`] also serves the kernel's policy rules (`route`).

use aya_ebpf::programs::XdpContext;
use xdpfwd_common::{
    Action, Counter, IfaceFlags, IfaceInfo, MAX_NATS, MAX_RULES, Policy, Rule, RuleFields,
};

use crate::{
    decision::{Flow, FlowFlags, NO_NAT, Packet},
    maps::{NAT_HITS, NATS, RULE_HITS, RULES, RULESET, count_one},
    wire::{IPPROTO_TCP, IPPROTO_UDP, extension_header, ptr_at},
};

/// The active policy word.
#[inline(always)]
fn policy() -> Policy {
    match RULESET.get(0) {
        Some(word) => Policy::decode(*word),
        None => Policy::default(),
    }
}

/// Source and destination ports of a TCP or UDP header at `offset`, when there is one (not in
/// later fragments).
#[inline(always)]
pub fn l4_ports(ctx: &XdpContext, packet: &Packet) -> Option<(u16, u16)> {
    if !packet.first_fragment || (packet.proto != IPPROTO_TCP && packet.proto != IPPROTO_UDP) {
        return None;
    }
    // Ports beyond the IP length (in the frame's padding) are none: the kernel trims the
    // packet to that length before anything reads them.
    if packet.l4 + 4 > packet.ip_end() {
        return None;
    }
    let p = ptr_at::<[u8; 4]>(ctx, packet.l4).ok()?;
    // SAFETY: `ptr_at` checked that the 4 bytes lie inside the frame.
    let p = unsafe { &*p };
    Some((u16::from_be_bytes([p[0], p[1]]), u16::from_be_bytes([p[2], p[3]])))
}

/// What the policy stage decided for a frame it lets through.
pub struct Policed {
    pub path: PathChoice,
    /// Index of the NAT rewrite in `NATS`, or [`NO_NAT`].
    pub nat: u32,
    /// Index + 1 in `RULE_HITS` of the steering rule that matched (0: none), for the flow
    /// cache to count the flow's next frames.
    pub rule: u32,
}

/// The policy stage: the active rules decide (`Err` to pass or drop) and the first matching
/// NAT rewrite is returned. With no rules and no rewrites (the common case) it reads the
/// policy word and nothing else.
#[inline(always)]
pub fn policy_stage(flow: &Flow, packet: &Packet) -> Result<Policed, Counter> {
    let policy = policy();
    if policy.rules | policy.nats == 0 {
        return Ok(Policed { path: verdict(policy.default)?, nat: NO_NAT, rule: 0 });
    }
    let (action, rule) = if policy.rules == 0 {
        (policy.default, 0)
    } else {
        let matched = xdpfwd_rules(flow, policy.encode());
        (Action::from_u32(matched & 0xff), matched >> 8)
    };
    let path = verdict(action)?;
    Ok(Policed { path, nat: nat_for(flow, &policy, packet.unfragmented)?, rule })
}

/// The path a rule chose for a frame it forwards.
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum PathChoice {
    /// The egress's default (`IfaceFlags::FAST_PATH`).
    Default,
    Fast,
    AfXdp,
}

impl PathChoice {
    /// Whether a frame of `flow` takes the fast path out of `out`. The choice is read back
    /// from the per-CPU flow (not carried in a register), so the verifier walks what follows
    /// the policy once rather than once per possible choice.
    #[inline(always)]
    pub fn fast(flow: &Flow, out: &IfaceInfo) -> bool {
        // SAFETY: a field of a valid reference.
        let choice = unsafe { core::ptr::read_volatile(&flow.path) };
        if choice == PathChoice::Default as u8 {
            out.flags.contains(IfaceFlags::FAST_PATH)
        } else {
            choice == PathChoice::Fast as u8
        }
    }
}

/// A rule action as the stage's result: `Err` to pass (`PassRule`) or drop (`DropRule`),
/// else the path to forward on.
#[inline(always)]
fn verdict(action: Action) -> Result<PathChoice, Counter> {
    match action {
        Action::Kernel => Err(Counter::PassRule),
        Action::Drop => Err(Counter::DropRule),
        Action::Fast => Ok(PathChoice::Fast),
        Action::AfXdp => Ok(PathChoice::AfXdp),
        Action::Forward => Ok(PathChoice::Default),
    }
}

/// The action of the first matching rule of the active set (`word`: the [`Policy`]), or the
/// set's default; above the low byte, the rule's index + 1 in `RULE_HITS` (0: none).
///
/// This, [`xdpfwd_nat_index`] and `route::xdpfwd_fib` are BPF *global* functions (they need
/// the BTF that `.cargo/config.toml` asks for): the kernel verifies each once, on its own,
/// with its arguments unknown, instead of once for every path that calls it. Inlined, the
/// loops were re-verified for each IP version, VLAN offset and outcome.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn xdpfwd_rules(flow: *const Flow, word: u32) -> u32 {
    let policy = Policy::decode(word);
    // SAFETY: callers pass a live `Flow`; the verifier checks the pointer (it may be null).
    match unsafe { flow.as_ref() } {
        Some(flow) => rule_action(flow, &policy),
        None => policy.default as u32,
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
            // Behind IPv6 extension headers the protocol and ports are not where the rule
            // looks: the kernel takes the frame rather than letting it slip past the rule.
            if rule.fields.intersects(RuleFields::PROTO.union(RuleFields::PORTS))
                && flow.v6()
                && extension_header(flow.proto)
            {
                return Action::Kernel as u32;
            }
            if rule_matches(rule, flow) {
                count_one(&RULE_HITS, base + i);
                return rule.action & 0xff | (base + i + 1) << 8;
            }
        }
        i += 1;
    }
    policy.default as u32
}

/// Index in `NATS` of the first NAT rewrite of the active set that matches ([`NO_NAT`]:
/// none); `Err(PassNat)` when one matches a frame that cannot be rewritten statelessly.
#[inline(always)]
fn nat_for(flow: &Flow, policy: &Policy, unfragmented: bool) -> Result<u32, Counter> {
    if policy.nats == 0 {
        return Ok(NO_NAT);
    }
    let index = xdpfwd_nat_index(flow, policy.encode());
    if index == u32::MAX {
        return Ok(NO_NAT);
    }
    if !unfragmented || extension_header(flow.proto) {
        return Err(Counter::PassNat);
    }
    count_one(&NAT_HITS, index);
    Ok(index)
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
        if let Some(nat) = NATS.get(base + i)
            && rule_matches(&nat.rule, flow)
        {
            return base + i;
        }
        i += 1;
    }
    u32::MAX
}

/// Whether the selectors of `r` match the flow (the `action` is not looked at).
///
/// Each field of the flow is read where it is tested, volatile: hoisted out of the callers'
/// loops, they were kept in stack slots (200 bytes of `xdpfwd_rules`' frame), which the call
/// chain's 512 bytes cannot spare. They are in this CPU's cache either way.
#[inline(always)]
pub fn rule_matches(r: &Rule, flow: &Flow) -> bool {
    macro_rules! get {
        ($field:ident) => {
            // SAFETY: a field of a valid reference.
            unsafe { core::ptr::read_volatile(&flow.$field) }
        };
        ($field:ident[$i:literal]) => {
            // SAFETY: a field of a valid reference.
            unsafe { core::ptr::read_volatile(&flow.$field[$i]) }
        };
    }
    let f = r.fields;
    let v6 = get!(flags).contains(FlowFlags::V6);
    if (f.contains(RuleFields::V4) && v6) || (f.contains(RuleFields::V6) && !v6) {
        return false;
    }
    if f.contains(RuleFields::IN) && r.in_ifindex != get!(ifindex) {
        return false;
    }
    if f.contains(RuleFields::VLAN) && r.vlan != get!(vlan) {
        return false;
    }
    if f.contains(RuleFields::PROTO) && r.proto != get!(proto) as u16 {
        return false;
    }
    if f.contains(RuleFields::SRC)
        && (get!(src[0]) & r.src_mask[0] != r.src[0] || get!(src[1]) & r.src_mask[1] != r.src[1])
    {
        return false;
    }
    if f.contains(RuleFields::DST)
        && (get!(dst[0]) & r.dst_mask[0] != r.dst[0] || get!(dst[1]) & r.dst_mask[1] != r.dst[1])
    {
        return false;
    }
    if f.intersects(RuleFields::PORTS) {
        if !get!(flags).contains(FlowFlags::PORTS) {
            return false;
        }
        let sport = get!(sport);
        if f.contains(RuleFields::SPORT) && (sport < r.sport_lo || sport > r.sport_hi) {
            return false;
        }
        let dport = get!(dport);
        if f.contains(RuleFields::DPORT) && (dport < r.dport_lo || dport > r.dport_hi) {
            return false;
        }
    }
    true
}
