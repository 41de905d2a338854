//! Types shared by the xdpfwd eBPF program (`xdp-prog`) and user space (`xdpfwd`).
//!
//! Everything here crosses the kernel boundary as raw bytes, through BPF maps or through the
//! XDP metadata area in front of a frame. So every type is `#[repr(C)]`, has no implicit
//! padding, and its size is pinned by a compile-time assertion. User space gets
//! `aya::Pod` implementations through the `user` feature.
#![no_std]

use core::mem::size_of;

pub mod csum;
pub mod route;

pub use route::*;

/// Most rx queues per interface that xdpfwd steers; the XSKMAP holds `MAX_IFACES * MAX_QUEUES`
/// sockets, keyed by [`xsk_key`].
pub const MAX_QUEUES: u32 = 64;
/// Most interfaces one xdpfwd instance manages.
pub const MAX_IFACES: u32 = 64;
/// Entries in the XSKMAP.
pub const XSK_MAP_SIZE: u32 = MAX_IFACES * MAX_QUEUES;
/// Capacity of each neighbour table.
pub const MAX_NEIGHBOURS: u32 = 16_384;

/// The XSKMAP key of the socket bound to queue `queue` of the interface in slot `slot`.
#[inline(always)]
pub const fn xsk_key(slot: u32, queue: u32) -> u32 {
    slot * MAX_QUEUES + queue
}

/// `IfaceInfo::flags`: xdpfwd has AF_XDP sockets on every rx queue of this interface.
pub const IFACE_MANAGED: u32 = 1;
/// `IfaceInfo::flags`: the kernel forwards IPv4 arriving on this interface
/// (`net.ipv4.conf.IFACE.forwarding`).
pub const IFACE_KERNEL_FWD_V4: u32 = 1 << 1;
/// `IfaceInfo::flags`: the kernel forwards IPv6 (`net.ipv6.conf.IFACE.forwarding`).
pub const IFACE_KERNEL_FWD_V6: u32 = 1 << 2;
/// `IfaceInfo::flags`: the link is administratively and operationally up.
pub const IFACE_UP: u32 = 1 << 3;
/// `IfaceInfo::flags`: plain L3 forwarding out of this interface takes the in-kernel fast
/// path (rewrite in the XDP program, `bpf_redirect_map` on `DEVMAP`) instead of AF_XDP.
pub const IFACE_FAST_PATH: u32 = 1 << 4;
/// `IfaceInfo::flags`: frames arriving with one 802.1Q tag are accepted; the tag is removed
/// on the way out unless the egress pushes one (then its VID is rewritten in place).
pub const IFACE_VLAN_POP: u32 = 1 << 5;
/// `IfaceInfo::flags`: L2 cross-connect: every frame arriving here leaves through
/// `IfaceInfo::peer` unchanged (any ethertype, no L3 processing).
pub const IFACE_XCONNECT: u32 = 1 << 6;
/// `IfaceInfo::flags`: with [`IFACE_XCONNECT`], the destination MAC of cross-connected
/// frames is set to `IfaceInfo::peer_mac`.
pub const IFACE_PEER_MAC: u32 = 1 << 7;

/// What the XDP program knows of an interface (map `IFACES`, key: ifindex).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceInfo {
    /// Slot of the interface in the XSKMAP (see [`xsk_key`]).
    pub slot: u32,
    /// `IFACE_*` bits.
    pub flags: u32,
    /// Largest IP packet the interface sends (its MTU).
    pub mtu: u32,
    /// The interface's own MAC address: the destination of frames it must route, the source of
    /// frames it sends.
    pub mac: [u8; 6],
    /// Longest frame an AF_XDP socket on this interface receives whole (UMEM frame size minus
    /// the kernel's headroom and our metadata); longer frames go to the kernel.
    pub max_frame: u16,
    /// With [`IFACE_XCONNECT`]: the ifindex frames are cross-connected to.
    pub peer: u32,
    /// With [`IFACE_PEER_MAC`]: the destination MAC of cross-connected frames.
    pub peer_mac: [u8; 6],
    /// VLAN id tagged onto every frame sent out of this interface (0: none); a route's own
    /// `vlan` takes precedence.
    pub push_vlan: u16,
}
const _: () = assert!(size_of::<IfaceInfo>() == 32);

/// Key of the IPv4 neighbour table (`NEIGH_V4`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NeighKeyV4 {
    pub ifindex: u32,
    pub addr: [u8; 4],
}
const _: () = assert!(size_of::<NeighKeyV4>() == 8);

/// Key of the IPv6 neighbour table (`NEIGH_V6`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NeighKeyV6 {
    pub ifindex: u32,
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<NeighKeyV6>() == 20);

/// Value of both neighbour tables: the next hop's link-layer address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Neighbour {
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<Neighbour>() == 8);

/// Most rules in one rule set; `RULES` holds two sets (the active one and the one a reload
/// prepares), set `s` at indices `s * MAX_RULES ..`.
pub const MAX_RULES: u32 = 32;
/// Most NAT rewrites in one set; `NATS` holds two sets, as `RULES`.
pub const MAX_NATS: u32 = 16;

/// The one word of the `RULESET` array that describes the active policy: which set of `RULES`
/// and `NATS` is live, how many rules and rewrites it has and the action for unmatched
/// traffic. A reload fills the idle set, then switches everything with one write of this
/// word, so no frame sees a half-applied policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// 0 or 1.
    pub set: u32,
    /// Rules in the set (at most [`MAX_RULES`]).
    pub rules: u32,
    /// Rewrites in the set (at most [`MAX_NATS`]).
    pub nats: u32,
    /// `ACTION_*` for transit traffic that matches no rule.
    pub default: u32,
}

impl Policy {
    /// Packs the policy into its map word.
    pub const fn encode(self) -> u32 {
        (self.set & 1)
            | (self.rules & 0xff) << 8
            | (self.nats & 0xff) << 16
            | (self.default & 0xff) << 24
    }

    /// Unpacks a map word; counts are clamped to the set sizes.
    #[inline(always)]
    pub const fn decode(word: u32) -> Policy {
        let rules = (word >> 8) & 0xff;
        let nats = (word >> 16) & 0xff;
        Policy {
            set: word & 1,
            rules: if rules > MAX_RULES { MAX_RULES } else { rules },
            nats: if nats > MAX_NATS { MAX_NATS } else { nats },
            default: word >> 24,
        }
    }
}
/// Length of the `RULESET` array (index 0: the [`Policy`] word).
pub const RULESET_LEN: u32 = 1;

/// `Rule::fields`: match the ingress ifindex.
pub const RULE_IN: u32 = 1;
/// `Rule::fields`: match the IP protocol / next header.
pub const RULE_PROTO: u32 = 1 << 1;
/// `Rule::fields`: match the source prefix.
pub const RULE_SRC: u32 = 1 << 2;
/// `Rule::fields`: match the destination prefix.
pub const RULE_DST: u32 = 1 << 3;
/// `Rule::fields`: match the source port range (TCP and UDP, first fragments).
pub const RULE_SPORT: u32 = 1 << 4;
/// `Rule::fields`: match the destination port range.
pub const RULE_DPORT: u32 = 1 << 5;
/// `Rule::fields`: IPv4 only (prefixes are IPv4).
pub const RULE_V4: u32 = 1 << 6;
/// `Rule::fields`: IPv6 only.
pub const RULE_V6: u32 = 1 << 7;
/// `Rule::fields`: match the VLAN id the frame arrived with (interfaces with `vlan_pop`).
pub const RULE_VLAN: u32 = 1 << 8;

/// Rule action: the AF_XDP path (or the fast path where the egress is set to it).
pub const ACTION_FORWARD: u32 = 0;
/// Rule action: leave the frame to the kernel.
pub const ACTION_KERNEL: u32 = 1;
/// Rule action: drop the frame.
pub const ACTION_DROP: u32 = 2;
/// Rule action: the in-kernel fast path.
pub const ACTION_FAST: u32 = 3;

/// A steering rule (`RULES`). Addresses and masks are the packet's bytes (IPv4 in the first
/// 4 bytes) read as two native-endian `u64`s, so that a prefix test is two AND-compares.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    pub fields: u32,
    pub action: u32,
    pub in_ifindex: u32,
    pub proto: u16,
    /// With [`RULE_VLAN`]: the VLAN id (1-4094).
    pub vlan: u16,
    pub sport_lo: u16,
    pub sport_hi: u16,
    pub dport_lo: u16,
    pub dport_hi: u16,
    pub src: [u64; 2],
    pub src_mask: [u64; 2],
    pub dst: [u64; 2],
    pub dst_mask: [u64; 2],
}
const _: () = assert!(size_of::<Rule>() == 88);

/// `Nat::set`: replace the source address.
pub const NAT_SRC: u32 = 1;
/// `Nat::set`: replace the destination address (the route lookup uses the new one).
pub const NAT_DST: u32 = 1 << 1;
/// `Nat::set`: replace the TCP / UDP source port (the identifier of an ICMP echo request).
pub const NAT_SPORT: u32 = 1 << 2;
/// `Nat::set`: replace the TCP / UDP destination port (the identifier of an ICMP echo reply).
pub const NAT_DPORT: u32 = 1 << 3;

/// A stateless NAT rewrite (`NATS`): frames matching `rule` (its `action` is unused) get the
/// fields named by `set` replaced, with the IP and L4 checksums updated incrementally.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Nat {
    pub rule: Rule,
    /// `NAT_*` bits.
    pub set: u32,
    pub sport: u16,
    pub dport: u16,
    /// New addresses, in packet byte order (IPv4 in the first 4 bytes).
    pub src: [u8; 16],
    pub dst: [u8; 16],
}
const _: () = assert!(size_of::<Nat>() == 128);

/// Marks valid [`XskMeta`]; the XDP program writes it last, right in front of the frame.
pub const META_MAGIC: u32 = 0x7864_6677; // "xdfw"
/// `XskMeta::flags`: the frame is IPv6 (IPv4 otherwise).
pub const META_IPV6: u16 = 1;
/// `XskMeta::flags`: an L2 cross-connected frame: send it as it is (the XDP program already
/// did the rewrite it needs).
pub const META_L2: u16 = 1 << 2;
/// `XskMeta::flags`: the next hop has no known link-layer address; `addr` holds the next
/// hop's IP address (IPv4 in the first 4 bytes) instead of MACs, and user space must hold the
/// frame until the kernel has resolved it.
pub const META_NEED_NEIGH: u16 = 1 << 1;

/// What the XDP program tells user space about a frame it steers, in the XDP metadata area
/// (`bpf_xdp_adjust_meta`) right in front of the frame; AF_XDP copies it with the frame.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XskMeta {
    /// Egress ifindex chosen by the route lookup.
    pub oif: u32,
    /// `META_*` bits.
    pub flags: u16,
    /// Offset of the IP header in the frame.
    pub l3_off: u16,
    /// Destination MAC in bytes 0..6 and source MAC in 6..12; or, with
    /// [`META_NEED_NEIGH`], the next hop's IP address.
    pub addr: [u8; 16],
    /// [`META_MAGIC`].
    pub magic: u32,
}
const _: () = assert!(size_of::<XskMeta>() == 28);
/// Length of the metadata area (a multiple of 4, at most 32, as the kernel requires).
pub const META_LEN: usize = size_of::<XskMeta>();

/// Per-CPU counters kept by the XDP program (`COUNTERS`, a per-CPU array indexed by the
/// discriminant). Every frame the program sees is counted in exactly one verdict counter;
/// `Rx`, the frames seen, is their sum, computed by user space (the program leaves it 0).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Frames seen.
    Rx = 0,
    /// Steered to an AF_XDP socket with a resolved next hop.
    Steered,
    /// Steered to an AF_XDP socket to wait for neighbour resolution.
    SteeredNeighMiss,
    /// Passed: the ingress interface is not managed (should not happen).
    PassNotManaged,
    /// Passed: destination MAC is not the interface's own (multicast, broadcast, other host).
    PassNotForUs,
    /// Passed: a VLAN tag on an interface without `vlan_pop`, or stacked tags (handled by the
    /// kernel's VLAN devices).
    PassVlan,
    /// Passed: not IPv4 or IPv6 (ARP, LLDP, ...).
    PassNotIp,
    /// Passed: truncated or malformed header, bad length or bad IPv4 header checksum.
    PassMalformed,
    /// Passed: IPv4 options or an IPv6 hop-by-hop header.
    PassOptions,
    /// Passed: TTL or hop limit ≤ 1 (the kernel sends ICMP time exceeded).
    PassTtl,
    /// Passed: martian, multicast, link-local or loopback source or destination.
    PassSpecialAddr,
    /// Passed: no route, or a route the kernel must handle (local, broadcast, unreachable...).
    PassRoute,
    /// Passed: the egress interface is not managed, down, or the ingress interface itself;
    /// or the frame is longer than an AF_XDP socket receives whole.
    PassEgress,
    /// Passed: the packet exceeds the egress MTU (the kernel fragments or sends ICMP).
    PassMtu,
    /// Passed: next hop unresolved and the kernel forwards on this interface, so it resolves
    /// the neighbour and forwards this packet itself.
    PassNeighMiss,
    /// Passed: no AF_XDP socket in the slot for this rx queue.
    PassNoSocket,
    /// Passed: the driver gave no room for the metadata area (or for a pushed VLAN tag).
    PassNoMeta,
    /// Forwarded by the in-kernel fast path (rewritten and redirected to the egress device).
    FastForwarded,
    /// Dropped: the fast path rewrote the frame but the redirect failed.
    FastFailed,
    /// Passed: a rule (or the default for unmatched traffic) says "kernel".
    PassRule,
    /// Dropped: a rule (or the default for unmatched traffic) says "drop".
    DropRule,
    /// Passed: a NAT rewrite matched but the frame cannot be rewritten statelessly (a
    /// fragment, IPv6 extension headers, a truncated L4 header).
    PassNat,
    /// Passed: a policy rule (`ip rule`) whose outcome only the kernel knows (fwmark, tos,
    /// uidrange, blackhole, ...) applies, or the family's FIB is left to the kernel (too many
    /// rules, a map full, a resync under way).
    PassFib,
}

impl Counter {
    /// Every counter, in index order.
    pub const ALL: [Counter; 23] = [
        Counter::Rx,
        Counter::Steered,
        Counter::SteeredNeighMiss,
        Counter::PassNotManaged,
        Counter::PassNotForUs,
        Counter::PassVlan,
        Counter::PassNotIp,
        Counter::PassMalformed,
        Counter::PassOptions,
        Counter::PassTtl,
        Counter::PassSpecialAddr,
        Counter::PassRoute,
        Counter::PassEgress,
        Counter::PassMtu,
        Counter::PassNeighMiss,
        Counter::PassNoSocket,
        Counter::PassNoMeta,
        Counter::FastForwarded,
        Counter::FastFailed,
        Counter::PassRule,
        Counter::DropRule,
        Counter::PassNat,
        Counter::PassFib,
    ];
    /// Number of counters (size of the `COUNTERS` map).
    pub const COUNT: u32 = Self::ALL.len() as u32;

    /// A short snake_case name, used in logs and stats.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Rx => "rx",
            Counter::Steered => "steered",
            Counter::SteeredNeighMiss => "steered_neigh_miss",
            Counter::PassNotManaged => "pass_not_managed",
            Counter::PassNotForUs => "pass_not_for_us",
            Counter::PassVlan => "pass_vlan",
            Counter::PassNotIp => "pass_not_ip",
            Counter::PassMalformed => "pass_malformed",
            Counter::PassOptions => "pass_options",
            Counter::PassTtl => "pass_ttl",
            Counter::PassSpecialAddr => "pass_special_addr",
            Counter::PassRoute => "pass_route",
            Counter::PassEgress => "pass_egress",
            Counter::PassMtu => "pass_mtu",
            Counter::PassNeighMiss => "pass_neigh_miss",
            Counter::PassNoSocket => "pass_no_socket",
            Counter::PassNoMeta => "pass_no_meta",
            Counter::FastForwarded => "fast_forwarded",
            Counter::FastFailed => "fast_failed",
            Counter::PassRule => "pass_rule",
            Counter::DropRule => "drop_rule",
            Counter::PassNat => "pass_nat",
            Counter::PassFib => "pass_fib",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type below is `#[repr(C)]`, made only of integers and byte arrays, with no
    // implicit padding (sizes asserted above), so any bit pattern is a valid value.
    unsafe impl aya::Pod for super::IfaceInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Route {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::NhGroup {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FibRule {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::NeighKeyV4 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::NeighKeyV6 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Neighbour {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Rule {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Nat {}
}
