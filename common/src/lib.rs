//! Types shared by the xdpfwd eBPF program (`xdp-prog`) and user space (`xdpfwd`).
//!
//! Everything here crosses the kernel boundary as raw bytes, through BPF maps or through the
//! XDP metadata area in front of a frame. So every type is `#[repr(C)]`, has no implicit
//! padding, and its size is pinned by a compile-time assertion. User space gets
//! `aya::Pod` implementations through the `user` feature.
#![no_std]

use core::mem::size_of;

pub mod capture;
pub mod cbpf;
pub mod csum;
pub mod flow_cache;
pub mod mp_hash;
pub mod route;

pub use capture::*;
pub use flow_cache::*;
pub use route::*;

/// The names of the XDP program's maps, as it declares them (`xdp-prog/src/maps.rs`) and as
/// the loader, the policy code and the test harness take them.
pub mod map_names {
    pub const XSKS: &str = "XSKS";
    pub const IFACES: &str = "IFACES";
    pub const IFACES_DIRECT: &str = "IFACES_DIRECT";
    pub const ROUTES_V4: &str = "ROUTES_V4";
    pub const ROUTES_V6: &str = "ROUTES_V6";
    pub const FIB_RULES: &str = "FIB_RULES";
    pub const FIB_CTL: &str = "FIB_CTL";
    pub const NH_SLOTS: &str = "NH_SLOTS";
    pub const NH_GROUPS: &str = "NH_GROUPS";
    pub const NH_BUCKETS: &str = "NH_BUCKETS";
    pub const NEIGH_V4: &str = "NEIGH_V4";
    pub const NEIGH_V6: &str = "NEIGH_V6";
    pub const DEVMAP: &str = "DEVMAP";
    pub const RULES: &str = "RULES";
    pub const RULESET: &str = "RULESET";
    pub const NATS: &str = "NATS";
    pub const RULE_HITS: &str = "RULE_HITS";
    pub const NAT_HITS: &str = "NAT_HITS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const CAPTURE: &str = "CAPTURE";
    pub const CAPTURE_IFACES: &str = "CAPTURE_IFACES";
    pub const CAPTURE_RING: &str = "CAPTURE_RING";
    pub const CAPTURE_LOST: &str = "CAPTURE_LOST";
    pub const CAPTURE_FILTER: &str = "CAPTURE_FILTER";
    pub const FLOW_CACHE: &str = "FLOW_CACHE";
    pub const CACHE_CTL: &str = "CACHE_CTL";
    pub const FLOW_CACHE_STATS: &str = "FLOW_CACHE_STATS";
}

/// Length of an Ethernet header.
pub const ETH_HLEN: u32 = 14;
/// Length of an 802.1Q tag.
pub const VLAN_HLEN: u32 = 4;
/// Most bytes of XDP metadata the kernel lets a program reserve in front of a frame.
pub const XDP_META_MAX: u32 = 32;

/// Longest frame an interface with MTU `mtu` sends or receives: the IP packet, its Ethernet
/// header and one VLAN tag.
pub const fn max_frame_for_mtu(mtu: u32) -> u32 {
    mtu + ETH_HLEN + VLAN_HLEN
}

/// Most rx queues per interface that xdpfwd steers; the XSKMAP holds `MAX_IFACES * MAX_QUEUES`
/// sockets, keyed by [`xsk_key`].
pub const MAX_QUEUES: u32 = 64;
/// Most interfaces one xdpfwd instance manages.
pub const MAX_IFACES: u32 = 64;
/// Interfaces with an ifindex below this are in the array `IFACES_DIRECT` (index: ifindex),
/// the others in the hash `IFACES`: the XDP program reads every frame's ingress interface,
/// and an array lookup is inlined where a hash lookup is three calls into the kernel.
pub const IFINDEX_DIRECT: u32 = 4096;
/// Entries in the XSKMAP.
pub const XSK_MAP_SIZE: u32 = MAX_IFACES * MAX_QUEUES;
/// Capacity of each neighbour table.
pub const MAX_NEIGHBOURS: u32 = 16_384;

/// The XSKMAP key of the socket bound to queue `queue` of the interface in slot `slot`;
/// `None` for a queue beyond [`MAX_QUEUES`] (a NIC with more rx queues than xdpfwd steers),
/// whose key would name a socket of the next slot's interface.
#[inline(always)]
pub const fn xsk_key(slot: u32, queue: u32) -> Option<u32> {
    if queue >= MAX_QUEUES || slot >= MAX_IFACES {
        return None;
    }
    Some(slot * MAX_QUEUES + queue)
}

bitflags::bitflags! {
    /// What the XDP program knows of an interface's role and state (`IfaceInfo::flags`).
    #[repr(transparent)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct IfaceFlags: u32 {
        /// xdpfwd has AF_XDP sockets on every rx queue of this interface.
        const MANAGED = 1;
        /// The kernel forwards IPv4 arriving on this interface
        /// (`net.ipv4.conf.IFACE.forwarding`).
        const KERNEL_FWD_V4 = 1 << 1;
        /// The kernel forwards IPv6 (`net.ipv6.conf.IFACE.forwarding`).
        const KERNEL_FWD_V6 = 1 << 2;
        /// The link is administratively and operationally up.
        const UP = 1 << 3;
        /// Plain L3 forwarding out of this interface takes the in-kernel fast path (rewrite
        /// in the XDP program, `bpf_redirect_map` on `DEVMAP`) instead of AF_XDP.
        const FAST_PATH = 1 << 4;
        /// Frames arriving with one 802.1Q tag are accepted; the tag is removed on the way
        /// out unless the egress pushes one (then its VID is rewritten in place).
        const VLAN_POP = 1 << 5;
        /// L2 cross-connect: every frame arriving here leaves through `IfaceInfo::peer`
        /// unchanged (any ethertype, no L3 processing).
        const XCONNECT = 1 << 6;
        /// With `XCONNECT`, the destination MAC of cross-connected frames is set to
        /// `IfaceInfo::peer_mac`.
        const PEER_MAC = 1 << 7;
        /// IPv4 arriving here is checked as `rp_filter = 1` (strict) does: the route back
        /// to its source must leave through this interface (the larger of
        /// `net.ipv4.conf.{all,IFACE}.rp_filter`).
        const RP_STRICT = 1 << 8;
        /// `rp_filter = 2` (loose): a unicast route back to the source must exist.
        const RP_LOOSE = 1 << 9;
        /// The kernel reports that the device takes redirected frames
        /// (`NETDEV_XDP_ACT_NDO_XMIT`): a frame too long for the AF_XDP path takes the fast
        /// path out of it instead (whatever the path of the rest).
        const REDIRECT_TARGET = 1 << 10;
        /// ... also in more than one buffer (`NETDEV_XDP_ACT_NDO_XMIT_SG`): frames longer than
        /// a page (jumbo frames) take the fast path out of it; without, the kernel forwards
        /// them.
        const REDIRECT_SG = 1 << 11;
    }
}

/// What the XDP program knows of an interface (map `IFACES_DIRECT` or `IFACES`, by
/// [`IFINDEX_DIRECT`]; an all-zero entry is an interface xdpfwd does not manage).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceInfo {
    /// Slot of the interface in the XSKMAP (see [`xsk_key`]).
    pub slot: u32,
    pub flags: IfaceFlags,
    /// Largest IP packet the interface sends (its MTU).
    pub mtu: u32,
    /// The interface's own MAC address: the destination of frames it must route, the source of
    /// frames it sends.
    pub mac: [u8; 6],
    /// Longest frame an AF_XDP socket on this interface receives whole (UMEM frame size minus
    /// the kernel's headroom and our metadata); longer frames take the fast path where it
    /// carries them, else go to the kernel.
    pub max_frame: u16,
    /// Longest frame the AF_XDP path carries in more than one UMEM frame (the sockets are
    /// bound with `XDP_USE_SG`); 0 where they are not. Such a frame goes through the AF_XDP
    /// path whole (its IP length reaching its end).
    pub max_frame_sg: u16,
    /// Explicit padding (the struct is shared with the eBPF program).
    pub _pad: u16,
    /// With [`IfaceFlags::XCONNECT`]: the ifindex frames are cross-connected to.
    pub peer: u32,
    /// With [`IfaceFlags::PEER_MAC`]: the destination MAC of cross-connected frames.
    pub peer_mac: [u8; 6],
    /// VLAN id tagged onto every frame sent out of this interface (0: none); a route's own
    /// `vlan` takes precedence.
    pub push_vlan: u16,
}
const _: () = assert!(size_of::<IfaceInfo>() == 36);

/// Key of the IPv4 neighbour table (`NEIGH_V4`). Aligned to 8 like every key the XDP
/// program builds on its stack: it is compiled to read and write memory unaligned, which
/// the verifier allows for packets but not for the stack.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NeighKeyV4 {
    pub ifindex: u32,
    pub addr: [u8; 4],
}
const _: () = assert!(size_of::<NeighKeyV4>() == 8);

/// Key of the IPv6 neighbour table (`NEIGH_V6`); the address 8-aligned, as
/// [`NeighKeyV4`]'s.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NeighKeyV6 {
    pub ifindex: u32,
    /// Zero: the kernel hashes the key's every byte.
    _pad: u32,
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<NeighKeyV6>() == 24);

impl NeighKeyV6 {
    pub const fn new(ifindex: u32, addr: [u8; 16]) -> Self {
        Self { ifindex, _pad: 0, addr }
    }
}

/// Value of both neighbour tables: the next hop's link-layer address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Neighbour {
    pub mac: [u8; 6],
    /// Set by the XDP program when it forwards to this neighbour (written only while 0, so
    /// at most once per refresh); user space clears it when it asks the kernel to re-confirm
    /// a stale entry, and re-confirms only entries in use.
    pub used: u8,
    pub _pad: u8,
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
    /// What transit traffic that matches no rule gets.
    pub default: Action,
}

impl Policy {
    /// Packs the policy into its map word.
    pub const fn encode(self) -> u32 {
        (self.set & 1)
            | (self.rules & 0xff) << 8
            | (self.nats & 0xff) << 16
            | (self.default as u32 & 0xff) << 24
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
            default: Action::from_u32(word >> 24),
        }
    }
}
/// Length of the `RULESET` array (index 0: the [`Policy`] word).
pub const RULESET_LEN: u32 = 1;

bitflags::bitflags! {
    /// The fields a [`Rule`] matches (`Rule::fields`).
    #[repr(transparent)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct RuleFields: u32 {
        /// The ingress ifindex.
        const IN = 1;
        /// The IP protocol / next header.
        const PROTO = 1 << 1;
        /// The source prefix.
        const SRC = 1 << 2;
        /// The destination prefix.
        const DST = 1 << 3;
        /// The source port range (TCP and UDP, first fragments).
        const SPORT = 1 << 4;
        /// The destination port range.
        const DPORT = 1 << 5;
        /// IPv4 only (prefixes are IPv4).
        const V4 = 1 << 6;
        /// IPv6 only.
        const V6 = 1 << 7;
        /// The VLAN id the frame arrived with (interfaces with `vlan_pop`).
        const VLAN = 1 << 8;
        /// Either port range.
        const PORTS = Self::SPORT.bits() | Self::DPORT.bits();
    }
}

/// What a steering rule (or the default for unmatched traffic) does with a transit frame.
#[repr(u32)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Action {
    /// The path the egress takes by default (`--default-path`; see `IfaceFlags::FAST_PATH`).
    #[default]
    Forward = 0,
    /// Leave the frame to the kernel.
    Kernel = 1,
    /// Drop the frame.
    Drop = 2,
    /// The in-kernel fast path.
    Fast = 3,
    /// The AF_XDP path (user space rewrites and transmits), whatever the egress's default.
    AfXdp = 4,
}

impl Action {
    /// Decodes a map value; an unknown value leaves the frame to the kernel.
    #[inline(always)]
    pub const fn from_u32(v: u32) -> Action {
        match v {
            0 => Action::Forward,
            2 => Action::Drop,
            3 => Action::Fast,
            4 => Action::AfXdp,
            _ => Action::Kernel,
        }
    }

    /// The configuration's name of the action.
    pub const fn name(self) -> &'static str {
        match self {
            Action::Forward => "forward",
            Action::Kernel => "kernel",
            Action::Drop => "drop",
            Action::Fast => "fast",
            Action::AfXdp => "af_xdp",
        }
    }

    /// The action a configuration names.
    pub fn from_name(name: &str) -> Option<Action> {
        [Action::Forward, Action::Kernel, Action::Drop, Action::Fast, Action::AfXdp]
            .into_iter()
            .find(|a| a.name() == name)
    }
}

/// A steering rule (`RULES`). Addresses and masks are the packet's bytes (IPv4 in the first
/// 4 bytes) read as two native-endian `u64`s, so that a prefix test is two AND-compares.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    pub fields: RuleFields,
    /// An [`Action`] (a [`FibAction`] in a [`FibRule`]), as its `u32`.
    pub action: u32,
    pub in_ifindex: u32,
    pub proto: u16,
    /// With [`RuleFields::VLAN`]: the VLAN id (1-4094).
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

bitflags::bitflags! {
    /// The fields a [`Nat`] replaces (`Nat::set`).
    #[repr(transparent)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct NatFields: u32 {
        /// The source address.
        const SRC = 1;
        /// The destination address (the route lookup uses the new one).
        const DST = 1 << 1;
        /// The TCP / UDP source port (the identifier of an ICMP echo request).
        const SPORT = 1 << 2;
        /// The TCP / UDP destination port (the identifier of an ICMP echo reply); policy
        /// rules and the ECMP hash see a new TCP / UDP port, as they see the new address.
        const DPORT = 1 << 3;
    }
}

/// A stateless NAT rewrite (`NATS`): frames matching `rule` (its `action` is unused) get the
/// fields named by `set` replaced, with the IP and L4 checksums updated incrementally.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Nat {
    pub rule: Rule,
    pub set: NatFields,
    pub sport: u16,
    pub dport: u16,
    /// New addresses, in packet byte order (IPv4 in the first 4 bytes).
    pub src: [u8; 16],
    pub dst: [u8; 16],
}
const _: () = assert!(size_of::<Nat>() == 128);

/// Marks valid [`XskMeta`]; the XDP program writes it last, right in front of the frame.
pub const META_MAGIC: u32 = 0x7864_6677; // "xdfw"
bitflags::bitflags! {
    /// What user space must know to send a steered frame (`XskMeta::flags`).
    #[repr(transparent)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct MetaFlags: u16 {
        /// The frame is IPv6 (IPv4 otherwise).
        const IPV6 = 1;
        /// The next hop has no known link-layer address; `addr` holds the next hop's IP
        /// address (IPv4 in the first 4 bytes) instead of MACs, and user space must hold the
        /// frame until the kernel has resolved it.
        const NEED_NEIGH = 1 << 1;
        /// An L2 cross-connected frame: send it as it is (the XDP program already did the
        /// rewrite it needs).
        const L2 = 1 << 2;
        /// Not to be forwarded: the router answers it with the ICMP error named by
        /// `addr[0]` ([`IcmpError`]; [`ICMP_QUOTE_FORWARDED`] in `addr[1]`; the MTU of a
        /// "too big" error in `addr[4..8]`, big-endian), which user space sends through the
        /// kernel, and drops the frame.
        /// `oif` is the ingress. Only while the kernel's forwarding is off on the ingress
        /// (the kernel would drop the frame silently).
        const ICMP = 1 << 3;
        /// With `NEED_NEIGH` on an IPv4 frame: the next hop in `addr` is IPv6 (RFC 5549).
        const NEXT_HOP_V6 = 1 << 4;
    }
}

/// `XskMeta::addr[1]` of an ICMP answer: the kernel finds this error after the forwarding
/// rewrite (IPv6 "packet too big" for a route MTU below the link's, from `ip6_fragment`), so
/// the quoted packet shows its hop limit decremented.
pub const ICMP_QUOTE_FORWARDED: u8 = 1;

/// Most bytes of the offending packet an ICMP error quotes: what remains of the IPv6 minimum
/// MTU after the error's own IPv6 and ICMPv6 headers (RFC 4443 2.4 (c)); an IPv4 error quotes
/// less. The XDP program trims a frame it steers for an answer to this much IP packet, so a
/// jumbo frame fits one AF_XDP buffer.
pub const ICMP_QUOTE_MAX: usize = 1280 - 40 - 8;

/// The ICMP error the router owes a frame it cannot forward ([`MetaFlags::ICMP`]), as the
/// kernel's `ip_forward` / `ip6_forward` / `ip_error` would send it.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IcmpError {
    /// TTL / hop limit exhausted in transit (IPv4 type 11 code 0, IPv6 type 3 code 0).
    TimeExceeded = 1,
    /// Larger than the route's MTU: IPv4 "fragmentation needed" with DF set (type 3 code 4),
    /// IPv6 "packet too big" (type 2); the MTU travels with it.
    TooBig = 2,
    /// IPv4: no route (type 3 code 0, network unreachable).
    NoRoute = 3,
    /// IPv4: an `unreachable` route (type 3 code 1, host unreachable).
    Unreachable = 4,
    /// IPv4: a `prohibit` route (type 3 code 13, communication administratively filtered).
    Prohibited = 5,
}

impl IcmpError {
    #[inline(always)]
    pub const fn from_u8(v: u8) -> Option<IcmpError> {
        match v {
            1 => Some(IcmpError::TimeExceeded),
            2 => Some(IcmpError::TooBig),
            3 => Some(IcmpError::NoRoute),
            4 => Some(IcmpError::Unreachable),
            5 => Some(IcmpError::Prohibited),
            _ => None,
        }
    }
}

/// What the XDP program tells user space about a frame it steers, in the XDP metadata area
/// (`bpf_xdp_adjust_meta`) right in front of the frame; AF_XDP copies it with the frame.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XskMeta {
    /// Egress ifindex chosen by the route lookup.
    pub oif: u32,
    pub flags: MetaFlags,
    /// Offset of the IP header in the frame.
    pub l3_off: u16,
    /// Destination MAC in bytes 0..6 and source MAC in 6..12; or, with
    /// [`MetaFlags::NEED_NEIGH`], the next hop's IP address.
    pub addr: [u8; 16],
    /// [`META_MAGIC`].
    pub magic: u32,
}
const _: () = assert!(size_of::<XskMeta>() == 28);
/// Length of the metadata area (a multiple of 4, at most 32, as the kernel requires).
pub const META_LEN: usize = size_of::<XskMeta>();

/// Declares [`Counter`]: its variants, the list of them and their names, in one place.
macro_rules! counters {
    ($($(#[doc = $doc:literal])* $variant:ident = $name:literal,)*) => {
        /// Per-CPU counters kept by the XDP program (`COUNTERS`, a per-CPU array indexed by
        /// the discriminant). Every frame the program sees is counted in exactly one verdict
        /// counter; `Rx`, the frames seen, is their sum, computed by user space (the program
        /// leaves it 0).
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Counter {
            $($(#[doc = $doc])* $variant,)*
        }

        const COUNTERS: usize = [$(Counter::$variant),*].len();

        impl Counter {
            /// Every counter, in index order.
            pub const ALL: [Counter; COUNTERS] = [$(Counter::$variant),*];
            /// Number of counters (size of the `COUNTERS` map).
            pub const COUNT: u32 = COUNTERS as u32;

            /// A short snake_case name, used in logs, stats and metrics.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Counter::$variant => $name,)*
                }
            }
        }
    };
}

counters! {
    /// Frames seen.
    Rx = "rx",
    /// Steered to an AF_XDP socket with a resolved next hop.
    Steered = "steered",
    /// Steered to an AF_XDP socket to wait for neighbour resolution.
    SteeredNeighMiss = "steered_neigh_miss",
    /// Passed: the ingress interface is not managed (should not happen).
    PassNotManaged = "pass_not_managed",
    /// Passed: destination MAC is not the interface's own (multicast, broadcast, other host).
    PassNotForUs = "pass_not_for_us",
    /// Passed: a VLAN tag on an interface without `vlan_pop`, or stacked tags (handled by the
    /// kernel's VLAN devices).
    PassVlan = "pass_vlan",
    /// Passed: not IPv4 or IPv6 (ARP, LLDP, ...).
    PassNotIp = "pass_not_ip",
    /// Passed: truncated or malformed header, bad length or bad IPv4 header checksum.
    PassMalformed = "pass_malformed",
    /// Passed: IPv4 options or an IPv6 hop-by-hop header.
    PassOptions = "pass_options",
    /// Passed: TTL or hop limit ≤ 1 and the kernel forwards on the ingress (it sends the
    /// ICMP error), or a rewrite applies.
    PassTtl = "pass_ttl",
    /// Passed: martian, multicast, link-local or loopback source or destination.
    PassSpecialAddr = "pass_special_addr",
    /// Passed: no route, or a route the kernel must handle (local, broadcast, unreachable...).
    PassRoute = "pass_route",
    /// Passed: the egress interface is not managed, down, or the ingress interface itself.
    PassEgress = "pass_egress",
    /// Passed: the packet exceeds the egress MTU (the kernel fragments or sends ICMP).
    PassMtu = "pass_mtu",
    /// Passed: next hop unresolved and the kernel forwards on this interface, so it resolves
    /// the neighbour and forwards this packet itself.
    PassNeighMiss = "pass_neigh_miss",
    /// Passed: no AF_XDP socket in the slot for this rx queue.
    PassNoSocket = "pass_no_socket",
    /// Passed: the driver gave no room for the metadata area (or for a pushed VLAN tag).
    PassNoMeta = "pass_no_meta",
    /// Forwarded by the in-kernel fast path (rewritten and redirected to the egress device).
    FastForwarded = "fast_forwarded",
    /// Dropped: the fast path rewrote the frame but the redirect failed.
    FastFailed = "fast_failed",
    /// Passed: a rule (or the default for unmatched traffic) says "kernel".
    PassRule = "pass_rule",
    /// Dropped: a rule (or the default for unmatched traffic) says "drop".
    DropRule = "drop_rule",
    /// Passed: a NAT rewrite matched but the frame cannot be rewritten statelessly (a
    /// fragment, IPv6 extension headers, a truncated L4 header).
    PassNat = "pass_nat",
    /// Passed: a policy rule (`ip rule`) whose outcome only the kernel knows (fwmark, tos,
    /// uidrange, blackhole, ...) applies, or the family's FIB is left to the kernel (too many
    /// rules, a map full, a resync under way).
    PassFib = "pass_fib",
    /// Passed: netfilter rules see forwarded traffic of the frame's family (nftables or
    /// iptables on the forward, prerouting or postrouting hook) and the configuration
    /// defers to them (`netfilter = "defer"`, the default).
    PassNetfilter = "pass_netfilter",
    /// Passed: the kernel's source validation (`rp_filter`, a source that is one of the
    /// router's own addresses, a source routed to a blackhole) might refuse the IPv4 packet,
    /// so the kernel decides.
    PassSourceCheck = "pass_source_check",
    /// Steered to user space to be answered with the ICMP error the kernel's forwarding
    /// would send (TTL exhausted, too big, no route), because the kernel's forwarding is off
    /// on the ingress; the frame itself is not forwarded.
    SteeredIcmp = "steered_icmp",
    /// Passed: the frame is longer than its path carries: an AF_XDP socket receives one
    /// buffer of at most a UMEM frame, and the egress device takes no redirected frame (the
    /// fast path); the fast path carries a frame in more than one buffer (a jumbo frame) only
    /// out of a device that takes such frames (`IfaceFlags::REDIRECT_SG`).
    PassTooLong = "pass_too_long",
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
    unsafe impl aya::Pod for super::CacheCtl {}
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
    // SAFETY: as above.
    unsafe impl aya::Pod for super::CaptureCtl {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::cbpf::CbpfInsn {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xsk_keys_never_cross_into_another_slot() {
        assert_eq!(xsk_key(0, 0), Some(0));
        assert_eq!(xsk_key(1, MAX_QUEUES - 1), Some(2 * MAX_QUEUES - 1));
        // Queue 70 of slot 0 would otherwise be queue 6 of slot 1.
        assert_eq!(xsk_key(0, 70), None);
        assert_eq!(xsk_key(0, MAX_QUEUES), None);
        assert_eq!(xsk_key(MAX_IFACES, 0), None);
    }

    #[test]
    fn counter_names_are_unique_and_in_index_order() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
            assert_eq!(Counter::ALL.iter().filter(|o| o.name() == c.name()).count(), 1);
        }
    }

    #[test]
    fn policy_word_round_trips_and_unknown_actions_go_to_the_kernel() {
        let p = Policy { set: 1, rules: 3, nats: 2, default: Action::Fast };
        assert_eq!(Policy::decode(p.encode()), p);
        assert_eq!(Action::from_u32(9), Action::Kernel);
        assert_eq!(Action::from_name("drop"), Some(Action::Drop));
    }
}
