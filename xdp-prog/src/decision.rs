//! What the stages find out about a frame and decide for it, passed from stage to stage.
//!
//! Plain data: no map, no frame access. Nothing of the frame changes until `egress` carries a
//! [`Steer`] out.

use aya_ebpf::bindings::xdp_action;
use xdpfwd_common::{Counter, IfaceFlags, IfaceInfo, XskMeta};

use crate::wire::{ETH_HLEN, IPV4_HLEN, IPV6_HLEN};

/// Where and how a frame arrived.
pub struct Ingress {
    pub ifindex: u32,
    pub info: &'static IfaceInfo,
    /// Offset of the IP header: 14, or 18 behind a tag being popped.
    pub l3: usize,
    /// VLAN id of the popped tag (0: none).
    pub vlan: u16,
    /// The frame's length, every buffer of it (`wire::frame_len`).
    pub len: usize,
}

impl Ingress {
    /// The frame arrived with a tag that is being popped: a VLAN's, or a priority tag.
    #[inline(always)]
    pub fn popped(&self) -> bool {
        self.l3 != ETH_HLEN
    }

    /// The frame arrived in a VLAN: its popped tag has a VLAN id. A priority tag (802.1p,
    /// VLAN id 0) is none: the kernel strips it and routes the frame as it routes an
    /// untagged one.
    #[inline(always)]
    pub fn tagged(&self) -> bool {
        self.vlan != 0
    }

    /// The kernel forwards the family on this interface: what xdpfwd passes it, it forwards
    /// (or answers with an ICMP error) itself.
    #[inline(always)]
    pub fn kernel_forwards(&self, v6: bool) -> bool {
        let flag = if v6 { IfaceFlags::KERNEL_FWD_V6 } else { IfaceFlags::KERNEL_FWD_V4 };
        self.info.flags.contains(flag)
    }

    /// The kernel would forward the frame as it arrived: its forwarding is on for the family
    /// here and it did not arrive in a VLAN (a popped VLAN tag makes xdpfwd the frame's
    /// router: the kernel would hand it to a VLAN device, if it has one, not route it from
    /// here).
    #[inline(always)]
    pub fn kernel_forwards_as_is(&self, v6: bool) -> bool {
        self.kernel_forwards(v6) && !self.tagged()
    }

    /// xdpfwd owes the frame the router's ICMP errors: the kernel's forwarding is off on
    /// this interface, so the kernel would drop the frame silently. Not for frames that
    /// arrived in a VLAN (the kernel's reply would leave by its own routes, untagged).
    #[inline(always)]
    pub fn answers_icmp(&self, v6: bool) -> bool {
        !self.kernel_forwards(v6) && !self.tagged()
    }
}

/// What the stages after classification need to know of an IP packet.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Packet {
    pub v6: bool,
    pub proto: u8,
    /// Offset of the L4 header.
    pub l4: usize,
    /// IP length, header included.
    pub ip_len: usize,
    pub first_fragment: bool,
    pub unfragmented: bool,
    /// TTL / hop limit ≤ 1: the router answers "time exceeded" instead of forwarding
    /// (reaches the route step only when xdpfwd owes that answer).
    pub expired: bool,
    /// Too big for the route's MTU means "fragmentation needed" (IPv4 with DF set, every
    /// IPv6 packet), not fragmentation.
    pub no_fragmenting: bool,
    /// The DS field (IPv4 TOS byte, IPv6 traffic class).
    pub ds: u8,
}

impl Packet {
    /// Offset of the end of the IP packet (the frame may be longer: Ethernet padding).
    #[inline(always)]
    pub fn ip_end(&self) -> usize {
        self.l4 - if self.v6 { IPV6_HLEN } else { IPV4_HLEN } + self.ip_len
    }
}

/// What `classify` found of a frame the flow cache did not know, for the stages after it
/// (`classify::decide`), per CPU in a map: on the stack, it and what it comes from took the
/// room in the program's frame that the stages' call chain needs.
#[repr(C)]
pub struct Parsed {
    pub packet: Packet,
    /// [`Ingress`] but for its `info` (a map value pointer, which a map cannot hold:
    /// `decide` takes it as an argument).
    pub ifindex: u32,
    pub vlan: u16,
    pub l3: usize,
    pub len: usize,
}

/// What rules, policy rules and the ECMP hash look at. Plain C layout: the BPF global
/// functions take it by pointer.
#[repr(C)]
pub struct Flow {
    /// Source and destination addresses as `wire::words`.
    pub src: [u64; 2],
    pub dst: [u64; 2],
    pub ifindex: u32,
    /// IPv6 flow label (0 for IPv4).
    pub label: u32,
    /// TCP / UDP source and destination ports, with [`FlowFlags::PORTS`].
    pub sport: u16,
    pub dport: u16,
    /// VLAN id the frame arrived with (0: untagged).
    pub vlan: u16,
    pub proto: u8,
    pub flags: FlowFlags,
    /// The DS field: IPv4 TOS byte, IPv6 traffic class.
    pub ds: u8,
    /// The path a steering rule chose (`policy::PathChoice` as its `u8`), once decided.
    pub path: u8,
    /// Index + 1 in `RULE_HITS` of the steering rule that matched (0: none), once decided.
    pub rule: u32,
    /// The flow cache's slot claimed for the decision (`flow_cache::NO_FILL`: none).
    /// Here rather than in a register: the stages' stack frames are at their limit.
    pub cache_slot: u32,
    /// An ICMP error's (`FlowFlags::ICMP_ERROR`) multipath hash as the kernel computes it,
    /// on the packet it quotes, with `fib_multipath_hash_seed`
    /// (`classify::quoted_hash`); [`QUOTE_UNREAD`] where that is out of reach.
    pub quoted: u32,
}

/// [`Flow::quoted`] of an ICMP error whose quoted header the program could not read.
pub const QUOTE_UNREAD: u32 = u32::MAX;

bitflags::bitflags! {
    /// What a [`Flow`] is (`Flow::flags`).
    #[derive(Clone, Copy)]
    pub struct FlowFlags: u8 {
        /// IPv6 (IPv4 otherwise).
        const V6 = 1;
        /// The frame carries TCP / UDP ports (also a first fragment).
        const PORTS = 1 << 1;
        /// The packet is a fragment (the kernel's policy rules see no ports in it).
        const FRAGMENT = 1 << 2;
        /// An ICMP error quoting a whole IP header (`classify::quoted_hash`): the kernel's
        /// multipath hash reads the packet it quotes.
        const ICMP_ERROR = 1 << 3;
    }
}

impl Flow {
    #[inline(always)]
    pub fn new(
        at: &Ingress,
        packet: &Packet,
        (src, dst): ([u64; 2], [u64; 2]),
        label: u32,
        ports: Option<(u16, u16)>,
    ) -> Flow {
        let (sport, dport) = ports.unwrap_or((0, 0));
        let mut flags = FlowFlags::empty();
        flags.set(FlowFlags::V6, packet.v6);
        flags.set(FlowFlags::PORTS, ports.is_some());
        flags.set(FlowFlags::FRAGMENT, !packet.unfragmented);
        Flow {
            src,
            dst,
            ifindex: at.ifindex,
            label,
            sport,
            dport,
            vlan: at.vlan,
            proto: packet.proto,
            flags,
            ds: packet.ds,
            path: 0,
            rule: 0,
            cache_slot: crate::flow_cache::NO_FILL,
            quoted: QUOTE_UNREAD,
        }
    }

    #[inline(always)]
    pub fn v6(&self) -> bool {
        self.flags.contains(FlowFlags::V6)
    }
}

/// A frame to forward, as the stages leave it in the per-CPU `STEER` slot (not on the
/// stack, and without pointers, which a map may not hold): the metadata for user space and
/// the ingress interface's XSKMAP slot; with [`SteerFlags::FAST`], the egress slot in `DEVMAP` for
/// the in-kernel fast path instead. Nothing of the frame has changed yet: `egress::forward`
/// applies the VLAN change, the NAT rewrite and (fast path) the router rewrite.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Steer {
    pub meta: XskMeta,
    pub slot: u32,
    /// With [`SteerFlags::FAST`]: the egress slot in `DEVMAP`.
    pub egress_slot: u32,
    /// IP length (header included): the fast path trims the frame to the L3 offset plus
    /// this; 0 for cross-connected frames, which are sent as they are.
    pub ip_len: u32,
    /// Index of the NAT rewrite in `NATS`, or [`NO_NAT`].
    pub nat: u32,
    /// The MTU of the route out (the smaller of the route's and the link's) of a resolved
    /// forwarding decision, which the flow cache may keep; 0 for anything else.
    pub mtu: u32,
    /// VLAN id to tag the frame with (0: none).
    pub push: u16,
    pub flags: SteerFlags,
}

/// `Steer::nat`: no rewrite.
pub const NO_NAT: u32 = u32::MAX;

bitflags::bitflags! {
    /// How a [`Steer`] leaves (`Steer::flags`).
    #[derive(Clone, Copy)]
    pub struct SteerFlags: u16 {
        /// The in-kernel fast path.
        const FAST = 1;
        /// The frame arrived with a tag that is removed (or rewritten, with `push`).
        const POP = 1 << 1;
        /// Cross-connect: set the destination MAC to `meta.addr[0..6]`.
        const PEER_MAC = 1 << 2;
        /// The egress device takes redirected frames (`IfaceFlags::REDIRECT_TARGET`): a
        /// frame too long for the AF_XDP path may take the fast path.
        const REDIRECTABLE = 1 << 3;
        /// ... in more than one buffer too (`IfaceFlags::REDIRECT_SG`).
        const MULTI_BUFFER = 1 << 4;
        /// The frame is longer than its IP packet (Ethernet padding, which the fast path
        /// trims). Set per frame by `classify`, never kept by the flow cache.
        const PADDED = 1 << 5;
    }
}

impl SteerFlags {
    /// The path flags of a frame leaving through `out`, on the fast path or not.
    #[inline(always)]
    pub fn path(fast: bool, out: &IfaceInfo) -> SteerFlags {
        let mut flags = if fast { SteerFlags::FAST } else { SteerFlags::empty() };
        if out.flags.contains(IfaceFlags::REDIRECT_TARGET) {
            flags |= SteerFlags::REDIRECTABLE;
        }
        if out.flags.contains(IfaceFlags::REDIRECT_SG) {
            flags |= SteerFlags::MULTI_BUFFER;
        }
        flags
    }
}

impl Steer {
    #[inline(always)]
    pub fn fast(&self) -> bool {
        self.flags.contains(SteerFlags::FAST)
    }

    #[inline(always)]
    pub fn vlan(&self) -> Vlan {
        Vlan { pop: self.flags.contains(SteerFlags::POP), push: self.push }
    }
}

/// What happens to 802.1Q tags on the way out.
#[derive(Clone, Copy)]
pub struct Vlan {
    /// The frame arrived with a tag that is removed (or rewritten, with `push`).
    pub pop: bool,
    /// VLAN id to tag the frame with (0: none).
    pub push: u16,
}

impl Vlan {
    #[inline(always)]
    pub fn flags(&self) -> SteerFlags {
        if self.pop { SteerFlags::POP } else { SteerFlags::empty() }
    }
}

/// What became of a frame: the action for the kernel and the one [`Counter`] that counts
/// it, packed in a word (a BPF subprogram returns one register).
#[derive(Clone, Copy)]
pub struct Verdict(u32);

impl Verdict {
    #[inline(always)]
    pub fn new(action: u32, reason: Counter) -> Verdict {
        Verdict((action & 0xff) | ((reason as u32) << 8))
    }

    /// Left to the kernel untouched.
    #[inline(always)]
    pub fn pass(reason: Counter) -> Verdict {
        Verdict::new(xdp_action::XDP_PASS, reason)
    }

    /// Dropped: a rule says so, or a frame already changed cannot go on.
    #[inline(always)]
    pub fn drop(reason: Counter) -> Verdict {
        Verdict::new(xdp_action::XDP_DROP, reason)
    }

    #[inline(always)]
    pub fn action(self) -> u32 {
        self.0 & 0xff
    }

    /// The index of the counter in `COUNTERS`.
    #[inline(always)]
    pub fn reason(self) -> u32 {
        self.0 >> 8
    }
}
