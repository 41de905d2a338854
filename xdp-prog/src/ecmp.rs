//! ECMP: which path of a nexthop group or multipath route a flow takes, hashed as the
//! kernel's `fib_multipath_hash_policy` says. With `net.ipv4.fib_multipath_hash_seed` set
//! (Linux 6.11+), policies 0, 2 and 3 are the kernel's own hash (`mp_hash`), so every flow
//! takes the kernel's path. Where the kernel's hash cannot be computed (no seed, policy 1,
//! or what only its flow dissector reads: encapsulations, IPv6 extension headers, the ports
//! of other protocols than TCP and UDP), a frame the kernel would forward as it is goes to
//! the kernel; where xdpfwd is the router (the kernel's forwarding off, a popped tag, a
//! rewrite), or with `ecmp = "own-hash"`, xdpfwd's own hash ([`flow_hash`]) chooses.
//!
//! Reads `FIB_CTL` (the seed, the hash fields), `NH_GROUPS` and `NH_BUCKETS`; decides only.

use xdpfwd_common::{
    FIB_CTL_FIELDS, FIB_CTL_SEED, FibWord, HashFields, HashPolicy, HopFlags, MAX_NH_GROUPS,
    MAX_PATHS, flow_hash,
    mp_hash::{Keys, custom_path_hash, ports_word},
};

use crate::{
    decision::{Flow, FlowFlags, QUOTE_UNREAD},
    maps::{FIB_CTL, NH_BUCKETS, NH_GROUPS},
    wire::{IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, extension_header},
};

/// What [`xdpfwd_path`] returns for a frame whose path only the kernel can choose.
pub const PATH_KERNEL: u32 = u32::MAX - 1;

/// Bits of [`xdpfwd_path`]'s argument that hold the group's index.
const GROUP_BITS: u32 = 16;
const _: () = assert!(MAX_NH_GROUPS <= 1 << GROUP_BITS);

/// [`xdpfwd_path`]'s argument: group `index`, hashed as the family's `fib` word says;
/// `own`: xdpfwd's own hash may choose where the kernel's cannot be computed.
#[inline(always)]
pub const fn path_arg(index: u32, fib: &FibWord, own: bool) -> u32 {
    index & ((1 << GROUP_BITS) - 1)
        | (fib.dissect as u32) << GROUP_BITS
        | (fib.hash as u32) << (GROUP_BITS + 1)
        | (own as u32) << (GROUP_BITS + 3)
}

/// Index of the path of the group that the flow's hash selects ([`path_arg`]), `u32::MAX`,
/// or [`PATH_KERNEL`]. A global function, as `policy::xdpfwd_rules`.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn xdpfwd_path(flow: *const Flow, arg: u32) -> u32 {
    // SAFETY: callers pass a live `Flow`; the verifier checks the pointer (it may be null).
    let Some(flow) = (unsafe { flow.as_ref() }) else { return u32::MAX };
    let Some(group) = NH_GROUPS.get(arg & ((1 << GROUP_BITS) - 1)) else { return u32::MAX };
    let policy = HashPolicy::from_bits(arg >> (GROUP_BITS + 1));
    let dissect = (arg >> GROUP_BITS) & 1 == 1;
    let own = (arg >> (GROUP_BITS + 3)) & 1 == 1;
    let Some(hash) = hash(flow, policy, dissect, own) else { return PATH_KERNEL };
    if group.buckets != 0 {
        // A resilient group: the bucket decides.
        let bucket = group.bucket_base.wrapping_add(hash % group.buckets);
        return match NH_BUCKETS.get(bucket) {
            Some(&path) if u32::from(path) < group.count => u32::from(path),
            // Not one of the group's paths (never published so).
            _ => u32::MAX,
        };
    }
    // The kernel's `nexthop_select_path_hthr`: paths with a bad neighbour are skipped (a
    // hash in their range goes on to the next good path), the first good path if none
    // takes the hash, the first path if none is good.
    let mut first = u32::MAX;
    let mut i = 0;
    while i < MAX_PATHS {
        if i >= group.count {
            break;
        }
        if let Some(p) = group.paths.get(i as usize)
            && !p.hop.contains(HopFlags::BAD)
        {
            if first == u32::MAX {
                first = i;
            }
            if hash <= p.bound {
                return i;
            }
        }
        i += 1;
    }
    if first == u32::MAX { 0 } else { first }
}

/// The flow's ECMP hash over the fields the kernel's `fib_multipath_hash_policy` names.
/// With `fib_multipath_hash_seed` set, policies 0, 2 and 3 are the kernel's own hash, so each
/// flow takes the kernel's path. Where the kernel's hash cannot be computed (no seed,
/// policy 1, or what only its flow dissector reads), with `own` xdpfwd's own hash chooses
/// (over addresses for policies 0 and 2, also protocol and ports for 1 and 3), else `None`,
/// the kernel's. `dissect`: IPv6 policy rules make the kernel dissect packets early
/// (`FibWord::dissect`).
#[inline(always)]
fn hash(flow: &Flow, policy: HashPolicy, dissect: bool, own: bool) -> Option<u32> {
    kernel_hash(flow, policy, dissect).or_else(|| {
        own.then(|| own_hash(flow, matches!(policy, HashPolicy::L4 | HashPolicy::Custom)))
    })
}

/// The kernel's hash of the flow, where it can be computed (`mp_hash`). One SipHash for
/// every policy and family: the program's stack has no room for more.
#[inline(always)]
fn kernel_hash(flow: &Flow, policy: HashPolicy, dissect: bool) -> Option<u32> {
    let seed = FIB_CTL.get(FIB_CTL_SEED).copied().unwrap_or(0);
    if seed == 0 || policy == HashPolicy::L4 {
        return None;
    }
    let keys = match policy {
        // Policy 1 returned above.
        HashPolicy::L3 | HashPolicy::L4 if flow.flags.contains(FlowFlags::ICMP_ERROR) => {
            // Hashed on the packet it quotes (`Flow::quoted`).
            return (flow.quoted != QUOTE_UNREAD).then_some(flow.quoted);
        }
        HashPolicy::L3 | HashPolicy::L4 => l3_keys(flow, dissect)?,
        HashPolicy::L3Inner => inner_l3_keys(flow)?,
        HashPolicy::Custom => {
            let word = FIB_CTL.get(FIB_CTL_FIELDS + flow.v6() as u32).copied().unwrap_or(0);
            let fields = HashFields::from_bits_retain(word);
            if (fields.intersects(HashFields::INNER) && encapsulates(flow))
                || (flow.v6() && extension_header(flow.proto))
            {
                return None;
            }
            if !fields.intersects(HashFields::OUTER) {
                return Some(custom_path_hash(0));
            }
            custom_keys(flow, fields)?
        }
    };
    let h = keys.flow_hash(seed);
    Some(if policy == HashPolicy::Custom { custom_path_hash(h) } else { h >> 1 })
}

/// Policy 0 (`ip_multipath_l3_keys`, `ip6_multipath_l3_keys`): the addresses; IPv6's also
/// the flow label and next header. ICMPv6 carries its flow label in host order where the
/// kernel's early dissection supplied it (`fib6_rules_early_flow_dissect`, then
/// `ip6_route_input` hashes ICMPv6 with its keys); behind extension headers that dissection
/// may find ICMPv6 too, which only the kernel knows.
#[inline(always)]
fn l3_keys(flow: &Flow, dissect: bool) -> Option<Keys> {
    let mut keys = Keys { src: flow.src, dst: flow.dst, v6: flow.v6(), ..Keys::default() };
    if flow.v6() {
        if dissect && extension_header(flow.proto) {
            return None;
        }
        // `tags.flow_label`: the header's bytes (`ip6_flowlabel`), or the dissector's value.
        let dissected = dissect && flow.proto == IPPROTO_ICMPV6;
        keys.label = if dissected { flow.label } else { flow.label.swap_bytes() };
        keys.proto = flow.proto;
    }
    Some(keys)
}

/// xdpfwd's own hash ([`flow_hash`]) over the addresses (IPv6: also the flow label and next
/// header), or with `l4` the addresses, protocol and ports.
#[inline(always)]
fn own_hash(flow: &Flow, l4: bool) -> u32 {
    let s = flow.src;
    let d = flow.dst;
    let (a, b) = match l4 {
        false if flow.v6() => (flow.label, flow.proto as u32),
        false => (0, 0),
        true => {
            let ports = if flow.flags.contains(FlowFlags::PORTS) {
                (flow.sport as u32) << 16 | flow.dport as u32
            } else {
                0
            };
            (flow.proto as u32, ports)
        }
    };
    flow_hash(&[
        s[0] as u32,
        (s[0] >> 32) as u32,
        s[1] as u32,
        (s[1] >> 32) as u32,
        d[0] as u32,
        (d[0] >> 32) as u32,
        d[1] as u32,
        (d[1] >> 32) as u32,
        a,
        b,
    ])
}

/// Policy 2 (`skb_flow_dissect_flow_keys` to the innermost header): for a packet that
/// encapsulates none, its own addresses (IPv6: also its flow label, as the dissector keeps
/// it, and next header); ICMP errors are hashed on their own header. Encapsulated packets
/// and IPv6 extension headers, which the dissector walks, are the kernel's.
#[inline(always)]
fn inner_l3_keys(flow: &Flow) -> Option<Keys> {
    if encapsulates(flow) || (flow.v6() && extension_header(flow.proto)) {
        return None;
    }
    let mut keys = Keys { src: flow.src, dst: flow.dst, v6: flow.v6(), ..Keys::default() };
    if flow.v6() {
        keys.label = flow.label;
        keys.proto = flow.proto;
    }
    Some(keys)
}

/// Policy 3: the outer header's `fields` (`fib_multipath_custom_hash_outer`,
/// `rt6_multipath_custom_hash_outer`), as the flow dissector finds them.
#[inline(always)]
fn custom_keys(flow: &Flow, fields: HashFields) -> Option<Keys> {
    let ports = if fields.intersects(HashFields::PORTS) { dissected_ports(flow)? } else { 0 };
    let mask = |field: HashFields| if fields.contains(field) { u64::MAX } else { 0 };
    let (s, d) = (mask(HashFields::SRC_IP), mask(HashFields::DST_IP));
    Some(Keys {
        src: [flow.src[0] & s, flow.src[1] & s],
        dst: [flow.dst[0] & d, flow.dst[1] & d],
        label: flow.label & mask(HashFields::FLOWLABEL) as u32 & if flow.v6() { !0 } else { 0 },
        ports: ports & mask(HashFields::SRC_PORT) as u32 & 0xffff
            | ports & mask(HashFields::DST_PORT) as u32 & 0xffff_0000,
        proto: flow.proto & mask(HashFields::IP_PROTO) as u8,
        v6: flow.v6(),
    })
}

/// The ports the kernel's flow dissector finds (`mp_hash::ports_word`): none in a fragment
/// (`FLOW_DIS_IS_FRAGMENT`), TCP's and UDP's; `None` for the other protocols it reads
/// ports (or an SPI) of (`proto_ports_offset`: DCCP, ESP, AH, SCTP, UDP-Lite), and for a
/// TCP or UDP header this program did not read.
#[inline(always)]
fn dissected_ports(flow: &Flow) -> Option<u32> {
    if flow.flags.contains(FlowFlags::FRAGMENT) {
        Some(0)
    } else if flow.flags.contains(FlowFlags::PORTS) {
        Some(ports_word(flow.sport, flow.dport))
    } else if matches!(flow.proto, IPPROTO_TCP | IPPROTO_UDP | 33 | 50 | 51 | 132 | 136) {
        None
    } else {
        Some(0)
    }
}

/// Whether the kernel's flow dissector finds an encapsulated packet in the flow's
/// (`FLOW_DIS_ENCAPSULATION`: IPv4 or IPv6 in IP, GRE); it does not look into fragments.
#[inline(always)]
fn encapsulates(flow: &Flow) -> bool {
    matches!(flow.proto, 4 | 41 | 47) && !flow.flags.contains(FlowFlags::FRAGMENT)
}
