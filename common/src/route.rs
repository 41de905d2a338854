//! The kernel's FIB as the XDP program reads it: routes of every table in one trie per family,
//! the policy rules (`ip rule`) that choose the tables, and nexthop groups for ECMP.
//!
//! Route tries are keyed by table and destination: the table id (big-endian) comes first in
//! the key, so a lookup with [`route_key_bits`] of the address length plus 32 only matches
//! routes of that table, with the longest prefix winning as in the kernel's own table.

use core::mem::size_of;

use crate::Rule;

/// Capacity of each route trie (all tables of one family).
pub const MAX_ROUTES: u32 = 262_144;
/// Bits of the table id in front of the address in a route key.
pub const TABLE_BITS: u32 = 32;

/// The prefix length of a route key: the table plus `prefix_len` address bits.
#[inline(always)]
pub const fn route_key_bits(prefix_len: u32) -> u32 {
    TABLE_BITS + prefix_len
}

/// Key data of the IPv4 route trie: table id (big-endian), then the address.
#[inline(always)]
pub const fn route_key_v4(table: u32, addr: [u8; 4]) -> [u8; 8] {
    let t = table.to_be_bytes();
    [t[0], t[1], t[2], t[3], addr[0], addr[1], addr[2], addr[3]]
}

/// Key data of the IPv6 route trie: table id (big-endian), then the address.
#[inline(always)]
pub const fn route_key_v6(table: u32, addr: [u8; 16]) -> [u8; 20] {
    let t = table.to_be_bytes();
    let mut k = [0u8; 20];
    k[0] = t[0];
    k[1] = t[1];
    k[2] = t[2];
    k[3] = t[3];
    let mut i = 0;
    while i < 16 {
        k[4 + i] = addr[i];
        i += 1;
    }
    k
}

/// What a route does with the frames it matches.
#[repr(u32)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RouteKind {
    /// No route (an empty map slot).
    #[default]
    None = 0,
    /// Unicast out of `oif`, through `gateway` (all zero: on-link).
    Unicast = 1,
    /// The kernel handles what this route matches: local and broadcast addresses, blackhole,
    /// routes with attributes xdpfwd does not mirror. Ends the rule walk.
    Kernel = 2,
    /// A static route of the configuration, through `gateway` (all zero: on-link); a
    /// neighbour miss is always held and resolved by xdpfwd.
    Static = 3,
    /// A static route to the fixed MAC `mac` (no neighbour lookup).
    StaticMac = 4,
    /// Through the nexthop slot `nh` (a nexthop object, a group or a multipath route): see
    /// `NH_SLOTS` and [`NhGroup`].
    Nexthop = 5,
    /// `throw`: the lookup in this table fails and the rule walk goes on.
    Throw = 6,
    /// `unreachable`: the kernel answers "host unreachable". Ends the rule walk.
    Unreachable = 7,
    /// `prohibit`: the kernel answers "administratively filtered". Ends the rule walk.
    Prohibit = 8,
}

impl RouteKind {
    /// The kind of a map word; unknown words are [`RouteKind::Kernel`].
    #[inline(always)]
    pub const fn from_u32(v: u32) -> RouteKind {
        match v {
            0 => RouteKind::None,
            1 => RouteKind::Unicast,
            3 => RouteKind::Static,
            4 => RouteKind::StaticMac,
            5 => RouteKind::Nexthop,
            6 => RouteKind::Throw,
            7 => RouteKind::Unreachable,
            8 => RouteKind::Prohibit,
            _ => RouteKind::Kernel,
        }
    }

    /// A route of the kernel's own (not of xdpfwd's configuration).
    #[inline(always)]
    pub const fn is_kernel_route(self) -> bool {
        matches!(self, RouteKind::Unicast | RouteKind::Nexthop)
    }
}

/// Value of both route tries (`ROUTES_V4`, `ROUTES_V6`). Addresses in packet byte order, IPv4
/// in the first 4 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Route {
    /// [`RouteKind`] as a word.
    pub kind: u32,
    pub oif: u32,
    pub gateway: [u8; 16],
    /// With [`RouteKind::StaticMac`]: the next hop's MAC.
    pub mac: [u8; 6],
    /// VLAN id tagged onto frames this route sends (0: the egress interface's `push_vlan`).
    pub vlan: u16,
    /// The route's `mtu` metric (0: none): larger packets go to the kernel.
    pub mtu: u32,
    /// With [`RouteKind::Nexthop`]: the slot in `NH_SLOTS`.
    pub nh: u32,
    /// The route's own prefix length (for `suppress_prefixlength`).
    pub prefix_len: u32,
    /// What the gateway is.
    pub hop: HopFlags,
}
const _: () = assert!(size_of::<Route>() == 48);

bitflags::bitflags! {
    /// What a route's or a path's gateway is.
    #[repr(transparent)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct HopFlags: u32 {
        /// An IPv6 gateway of an IPv4 route (RFC 5549, `via inet6`, FRR's BGP unnumbered):
        /// its link-layer address is in the IPv6 neighbour table.
        const GATEWAY_V6 = 1;
        /// A path of a nexthop group whose neighbour the kernel knows to be unusable
        /// (incomplete, failed): hash-threshold skips it, as `nexthop_select_path_hthr`.
        const BAD = 1 << 1;
    }
}

impl Route {
    #[inline(always)]
    pub const fn kind(&self) -> RouteKind {
        RouteKind::from_u32(self.kind)
    }
}

/// Most paths of one nexthop group that xdpfwd forwards (larger groups go to the kernel).
pub const MAX_PATHS: u32 = 16;
/// Slots of nexthop objects and multipath routes (`NH_SLOTS`); slot 0 is never used.
pub const MAX_NH_SLOTS: u32 = 16_384;
/// Published groups (`NH_GROUPS`); index 0 is never used.
pub const MAX_NH_GROUPS: u32 = 8_192;

/// One path of a [`NhGroup`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NhPath {
    /// Hash-threshold upper bound: the path is taken when the flow's 31-bit hash is at most
    /// this (the kernel's `nh_upper_bound`, from the weights).
    pub bound: u32,
    pub oif: u32,
    /// Next hop address (all zero: on-link), in the route's family or, with
    /// [`HopFlags::GATEWAY_V6`], IPv6.
    pub gateway: [u8; 16],
    pub hop: HopFlags,
}
const _: () = assert!(size_of::<NhPath>() == 28);

/// Entries of `NH_BUCKETS`: the bucket tables of all published resilient groups together.
pub const MAX_NH_BUCKETS: u32 = 1 << 20;

/// The paths of a nexthop object, group or multipath route (`NH_GROUPS`). A published group
/// never changes: a change publishes a new one and switches the slot's word in `NH_SLOTS`, so
/// the XDP program always reads a whole group.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NhGroup {
    /// Paths in use (at most [`MAX_PATHS`]).
    pub count: u32,
    /// A resilient group's bucket count (0: hash-threshold over the paths' bounds): the
    /// flow's hash modulo this picks a bucket, whose entry in `NH_BUCKETS` (from
    /// `bucket_base`) is the index of its path, as the kernel's `nexthop_select_path_res`.
    pub buckets: u32,
    pub bucket_base: u32,
    pub _pad: u32,
    pub paths: [NhPath; MAX_PATHS as usize],
}
const _: () = assert!(size_of::<NhGroup>() == 16 + 28 * 16);

impl Default for NhGroup {
    fn default() -> Self {
        NhGroup {
            count: 0,
            buckets: 0,
            bucket_base: 0,
            _pad: 0,
            paths: [NhPath::default(); MAX_PATHS as usize],
        }
    }
}

/// What a policy rule does when it matches.
#[repr(u32)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FibAction {
    /// Look the destination up in `table`.
    #[default]
    Lookup = 0,
    /// Jump to the rule at index `target`.
    Goto = 1,
    /// Nothing: the walk goes on.
    Nop = 2,
    /// The kernel decides: selectors or actions xdpfwd cannot evaluate exactly (fwmark,
    /// uidrange, oif, l3mdev, tos, blackhole, unreachable, prohibit, ...).
    Kernel = 3,
}

impl FibAction {
    #[inline(always)]
    pub const fn from_u32(v: u32) -> FibAction {
        match v {
            0 => FibAction::Lookup,
            1 => FibAction::Goto,
            2 => FibAction::Nop,
            _ => FibAction::Kernel,
        }
    }
}

bitflags::bitflags! {
    /// How a [`FibRule`]'s selectors apply (`FibRule::flags`).
    #[repr(transparent)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct FibFlags: u32 {
        /// The selectors' result is inverted (`ip rule add not ...`).
        const INVERT = 1;
        /// The rule can never match a forwarded frame (its `iif` is not a managed interface).
        const NEVER = 1 << 1;
    }
}

/// `FibRule::suppress` when the rule has no `suppress_prefixlength`.
pub const FIB_NO_SUPPRESS: u32 = u32::MAX;

/// A policy rule (`FIB_RULES`), in the kernel's priority order. The selectors reuse the
/// steering [`Rule`]'s fields (`in`, `proto`, `src`, `dst`, port ranges); its `action` holds
/// the [`FibAction`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FibRule {
    pub sel: Rule,
    pub table: u32,
    /// With [`FibAction::Goto`]: index of the first rule at the target priority (`u32::MAX`:
    /// none, the rule is skipped as the kernel skips an unresolved goto).
    pub target: u32,
    /// Routes with a prefix length up to this are ignored ([`FIB_NO_SUPPRESS`]: none).
    pub suppress: u32,
    pub flags: FibFlags,
    /// The `tos` / `dscp` selector: the rule matches where the frame's DS field (IPv4 TOS
    /// byte, IPv6 traffic class) has `ds` in the bits of `ds_mask` (0: no such selector).
    pub ds: u8,
    pub ds_mask: u8,
    /// Port selectors with a mask (`sport VALUE/MASK`): the rule matches where the port has
    /// `sel.sport_lo` (`sel.dport_lo`) in the mask's bits (0: the range in `sel`, if any).
    pub sport_mask: u16,
    pub dport_mask: u16,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<FibRule>() == 88 + 24);

/// Most policy rules per family that the XDP program evaluates; more send the family's
/// transit traffic to the kernel.
pub const MAX_FIB_RULES: u32 = 32;

/// Index in `FIB_RULES` of rule `i` of `set` for one family (`v6`).
#[inline(always)]
pub const fn fib_rule_index(set: u32, v6: bool, i: u32) -> u32 {
    ((set & 1) * 2 + v6 as u32) * MAX_FIB_RULES + i
}

/// How ECMP chooses a path: the kernel's `fib_multipath_hash_policy`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HashPolicy {
    /// 0: addresses (IPv6: also the flow label and next header).
    #[default]
    L3 = 0,
    /// 1: addresses, protocol and ports.
    L4 = 1,
    /// 2: the innermost addresses the kernel's flow dissector finds (those of an
    /// encapsulated packet; IPv6: also its flow label and next header).
    L3Inner = 2,
    /// 3: the fields `fib_multipath_hash_fields` names ([`HashFields`]).
    Custom = 3,
}

impl HashPolicy {
    /// The policy of the sysctl's value; `None` for one xdpfwd does not know.
    pub const fn from_sysctl(value: u32) -> Option<HashPolicy> {
        match value {
            0 => Some(HashPolicy::L3),
            1 => Some(HashPolicy::L4),
            2 => Some(HashPolicy::L3Inner),
            3 => Some(HashPolicy::Custom),
            _ => None,
        }
    }

    #[inline(always)]
    pub const fn from_bits(bits: u32) -> HashPolicy {
        match bits & 3 {
            0 => HashPolicy::L3,
            1 => HashPolicy::L4,
            2 => HashPolicy::L3Inner,
            _ => HashPolicy::Custom,
        }
    }
}

bitflags::bitflags! {
    /// The fields policy 3 hashes: `net.ipv4.fib_multipath_hash_fields` and its IPv6
    /// twin (`FIB_MULTIPATH_HASH_FIELD_*` in the kernel's `include/net/ip_fib.h`).
    #[repr(transparent)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct HashFields: u32 {
        const SRC_IP = 1;
        const DST_IP = 1 << 1;
        const IP_PROTO = 1 << 2;
        /// IPv6 only.
        const FLOWLABEL = 1 << 3;
        const SRC_PORT = 1 << 4;
        const DST_PORT = 1 << 5;
        const INNER_SRC_IP = 1 << 6;
        const INNER_DST_IP = 1 << 7;
        const INNER_IP_PROTO = 1 << 8;
        const INNER_FLOWLABEL = 1 << 9;
        const INNER_SRC_PORT = 1 << 10;
        const INNER_DST_PORT = 1 << 11;
        /// The outer header's fields (`FIB_MULTIPATH_HASH_FIELD_OUTER_MASK`).
        const OUTER = 0x3f;
        /// An encapsulated packet's (`FIB_MULTIPATH_HASH_FIELD_INNER_MASK`).
        const INNER = 0xfc0;
        const PORTS = Self::SRC_PORT.bits() | Self::DST_PORT.bits();
    }
}

/// Index in `FIB_CTL` of the kernel's `net.ipv4.fib_multipath_hash_seed` (0: not set), which
/// keys both families' multipath hash (`mp_hash`).
pub const FIB_CTL_SEED: u32 = 2;
/// Index in `FIB_CTL` of IPv4's [`HashFields`] (IPv6's follows it).
pub const FIB_CTL_FIELDS: u32 = 3;
/// Entries of `FIB_CTL`: one [`FibWord`] per family, the seed, one [`HashFields`] per family.
pub const FIB_CTL_LEN: u32 = FIB_CTL_FIELDS + 2;

/// The word of `FIB_CTL` (index 0: IPv4, 1: IPv6) that describes one family's FIB: which
/// rule set is live and how many rules it has, the ECMP hash policy, and whether the family's
/// transit traffic must go to the kernel (a rule set too large, a map full, a resync).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FibWord {
    pub set: u32,
    pub rules: u32,
    pub hash: HashPolicy,
    /// ECMP is left to the kernel (a hash policy xdpfwd does not know).
    pub ecmp_kernel: bool,
    /// Everything of this family goes to the kernel.
    pub kernel: bool,
    /// Netfilter hooks see this family's forwarded traffic and the configuration says
    /// `netfilter = "defer"`: its transit traffic goes to the kernel.
    pub netfilter: bool,
    /// IPv4: the kernel validates sources with a full reverse lookup even where
    /// `rp_filter` is 0 (custom policy rules or `local` routes: `fib_validate_source`).
    pub full_check: bool,
    /// IPv6: a policy rule selects on the protocol or ports (not `iif lo`), so the kernel
    /// dissects every packet before the lookup (`fib6_rules_early_flow_dissect`), and hashes
    /// ICMPv6 with what that found (`mp_hash`).
    pub dissect: bool,
    /// xdpfwd's own ECMP hash chooses where the kernel's cannot be computed, also for
    /// frames arriving where the kernel forwards (`ecmp = "own-hash"`); otherwise those go
    /// to the kernel, and only where the kernel's forwarding is off does xdpfwd's own hash
    /// choose.
    pub own_hash: bool,
}

impl FibWord {
    pub const fn encode(self) -> u32 {
        (self.set & 1)
            | (self.rules & 0xff) << 8
            | (self.hash as u32 & 1) << 16
            | (self.ecmp_kernel as u32) << 17
            | (self.kernel as u32) << 18
            | (self.netfilter as u32) << 19
            | (self.full_check as u32) << 20
            | (self.dissect as u32) << 21
            | (self.hash as u32 >> 1) << 22
            | (self.own_hash as u32) << 23
    }

    #[inline(always)]
    pub const fn decode(word: u32) -> FibWord {
        let rules = (word >> 8) & 0xff;
        FibWord {
            set: word & 1,
            rules: if rules > MAX_FIB_RULES { MAX_FIB_RULES } else { rules },
            hash: HashPolicy::from_bits((word >> 16) & 1 | (word >> 21) & 2),
            ecmp_kernel: (word >> 17) & 1 == 1,
            kernel: (word >> 18) & 1 == 1,
            netfilter: (word >> 19) & 1 == 1,
            full_check: (word >> 20) & 1 == 1,
            dissect: (word >> 21) & 1 == 1,
            own_hash: (word >> 23) & 1 == 1,
        }
    }
}

/// The 31-bit flow hash the XDP program chooses ECMP paths with where it cannot use the
/// kernel's (`mp_hash`: no seed set, or policy 1): a multiply-xorshift mix of the words the
/// hash policy names. Stable for a flow while the group is unchanged.
#[inline(always)]
pub const fn flow_hash(words: &[u32; 10]) -> u32 {
    let mut h: u32 = 0x9e37_79b9;
    let mut i = 0;
    while i < 10 {
        h ^= words[i];
        h = h.wrapping_mul(0x85eb_ca6b);
        h ^= h >> 13;
        h = h.wrapping_mul(0xc2b2_ae35);
        h ^= h >> 16;
        i += 1;
    }
    h >> 1
}

/// The hash-threshold bounds of paths with `weights` (the kernel's `nh_group_rebalance`):
/// path `i` is taken for hashes up to `bounds[i]`.
pub fn upper_bounds(weights: &[u32], bounds: &mut [u32]) {
    let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
    let mut acc = 0u64;
    for (w, b) in weights.iter().zip(bounds.iter_mut()) {
        acc += u64::from(*w);
        // DIV_ROUND_CLOSEST_ULL(acc << 31, total) - 1
        let v = ((acc << 31) + total / 2) / total.max(1);
        *b = v.saturating_sub(1) as u32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_put_the_table_first() {
        assert_eq!(route_key_v4(254, [198, 18, 1, 0]), [0, 0, 0, 254, 198, 18, 1, 0]);
        let k = route_key_v6(0x0102_0304, [0xff; 16]);
        assert_eq!(&k[..4], &[1, 2, 3, 4]);
        assert_eq!(&k[4..], &[0xff; 16]);
        assert_eq!(route_key_bits(24), 56);
    }

    #[test]
    fn fib_word_round_trips() {
        let w = FibWord {
            set: 1,
            rules: 7,
            hash: HashPolicy::L4,
            ecmp_kernel: true,
            kernel: false,
            netfilter: true,
            full_check: true,
            dissect: false,
            own_hash: true,
        };
        assert_eq!(FibWord::decode(w.encode()), w);
        let w = FibWord { netfilter: false, kernel: true, dissect: true, own_hash: false, ..w };
        assert_eq!(FibWord::decode(w.encode()), w);
        for hash in [HashPolicy::L3, HashPolicy::L4, HashPolicy::L3Inner, HashPolicy::Custom] {
            let w = FibWord { hash, ..w };
            assert_eq!(FibWord::decode(w.encode()), w);
            assert_eq!(HashPolicy::from_sysctl(hash as u32), Some(hash));
        }
        assert_eq!(HashPolicy::from_sysctl(4), None);
        assert_eq!(FibWord::decode(0xff << 8).rules, MAX_FIB_RULES, "clamped");
    }

    #[test]
    fn bounds_follow_the_weights() {
        let mut b = [0u32; 3];
        upper_bounds(&[1, 1, 2], &mut b);
        assert_eq!(b, [(1 << 29) - 1, (1 << 30) - 1, (1 << 31) - 1]);
        let mut one = [0u32; 1];
        upper_bounds(&[5], &mut one);
        assert_eq!(one, [(1 << 31) - 1], "one path takes every hash");
    }

    #[test]
    fn hash_is_31_bits_and_spreads() {
        let mut low = 0;
        for i in 0..1000u32 {
            let h = flow_hash(&[i, 7, 0, 0, 0, 0, 0, 0, 0, 0]);
            assert!(h < 1 << 31);
            if h < 1 << 30 {
                low += 1;
            }
        }
        assert!((400..600).contains(&low), "{low} of 1000 in the lower half");
    }
}
