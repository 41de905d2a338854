//! Runs the real xdpfwd XDP program on arbitrary frames with `BPF_PROG_RUN` (no traffic, no
//! interface of the host touched): the classification is exercised by property tests and the
//! fuzzer against what the kernel verified and runs, and `cargo xtask bench` times it.
//!
//! The harness moves the calling thread into a fresh network namespace (only `lo`, and the
//! veth pair [`Harness::attach_native`] adds; all go with the namespace), loads the
//! program, and fills its maps with a small routing table: a default route through a resolved
//! gateway, an on-link prefix without neighbour, local routes; and a policy: VLAN pop on the
//! ingress, two rules and four NAT rewrites, so that every stage runs. No AF_XDP socket and no
//! DEVMAP entry exist (until a test adds one, [`Harness::enable_redirect`]), so every frame
//! must come back `XDP_PASS`; the property is that it also comes back **byte for byte
//! unchanged**: the program never modifies a frame it passes.

use std::{io, path::PathBuf};

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, MapData, lpm_trie::Key},
    programs::Xdp,
};
use xdpfwd_common::{
    Action, FIB_NO_SUPPRESS, FibAction, FibFlags, FibRule, FibWord, HashPolicy, IFINDEX_DIRECT,
    IfaceFlags, IfaceInfo, Nat, NatFields, NeighKeyV4, NeighKeyV6, Neighbour, NhGroup, NhPath,
    Policy, Route, RouteKind, Rule, RuleFields, fib_rule_index, map_names, route_key_bits,
    route_key_v4, route_key_v6,
};

/// The calling thread's network namespace, as a link to compare.
const THREAD_NETNS: &str = "/proc/thread-self/ns/net";

/// The MAC of the ingress interface in the harness (frames must be sent to it).
pub const INGRESS_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const EGRESS_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const GATEWAY_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x03];
/// ifindex of `lo` in a fresh namespace: the ingress.
const INGRESS: u32 = 1;
/// A managed egress that only exists in the maps.
const EGRESS: u32 = 2;

/// The object `cargo xtask build` leaves (or `$XDPFWD_EBPF_OBJ`).
pub fn xdp_obj() -> PathBuf {
    std::env::var_os("XDPFWD_EBPF_OBJ").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../xdp-prog/target/bpfel-unknown-none/release/xdp-prog")
    })
}

/// The loaded program and its maps.
pub struct Harness {
    ebpf: Ebpf,
    /// The flow cache's last generation (never reused, as in user space).
    generation: u64,
    /// The namespace `new` made (`/proc/thread-self/ns/net`), where
    /// [`Harness::attach_native`] may create its interfaces, and nowhere else.
    netns: PathBuf,
}

impl Harness {
    /// Moves the calling thread into a new network namespace and loads the program there.
    pub fn new() -> anyhow::Result<Self> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .context("unshare(CLONE_NEWNET)")?;
        let mut ebpf = Ebpf::load_file(xdp_obj()).context("loading the xdpfwd object")?;
        let prog: &mut Xdp = ebpf.program_mut("xdpfwd").context("program xdpfwd")?.try_into()?;
        prog.load()?;
        let netns = std::fs::read_link(THREAD_NETNS).context(THREAD_NETNS)?;
        let mut h = Harness { ebpf, generation: 0, netns };
        h.fill()?;
        Ok(h)
    }

    fn fill(&mut self) -> anyhow::Result<()> {
        let info = |slot, mac| IfaceInfo {
            slot,
            flags: IfaceFlags::MANAGED | IfaceFlags::UP,
            mtu: 1500,
            mac,
            max_frame: 3812,
            ..IfaceInfo::default()
        };
        {
            let mut ingress = info(0, INGRESS_MAC);
            ingress.flags |= IfaceFlags::VLAN_POP;
            let mut ifaces = self.ifaces()?;
            ifaces.set(INGRESS, ingress, 0)?;
            ifaces.set(EGRESS, info(1, EGRESS_MAC), 0)?;
        }
        self.fill_fib()?;
        {
            // TCP port 22 to the kernel; VLAN 10 forwarded; default forward.
            let mut rules: Array<_, Rule> =
                Array::try_from(self.ebpf.map_mut(map_names::RULES).context(map_names::RULES)?)?;
            let ssh = Rule {
                fields: RuleFields::PROTO | RuleFields::DPORT,
                action: Action::Kernel as u32,
                proto: 6,
                dport_lo: 22,
                dport_hi: 22,
                ..Rule::default()
            };
            rules.set(0, ssh, 0)?;
            let vlan = Rule {
                fields: RuleFields::VLAN,
                action: Action::Forward as u32,
                vlan: 10,
                ..Rule::default()
            };
            rules.set(1, vlan, 0)?;
            // TCP port 80 to 198.18.2.3:8080; IPv6 UDP from 2001:2:0:1::99 port 5000.
            let mut nats: Array<_, Nat> =
                Array::try_from(self.ebpf.map_mut(map_names::NATS).context(map_names::NATS)?)?;
            let mut dst = [0u8; 16];
            dst[..4].copy_from_slice(&[198, 18, 2, 3]);
            let web = Nat {
                rule: Rule {
                    fields: RuleFields::PROTO | RuleFields::DPORT | RuleFields::V4,
                    proto: 6,
                    dport_lo: 80,
                    dport_hi: 80,
                    ..Rule::default()
                },
                set: NatFields::DST | NatFields::DPORT,
                dport: 8080,
                dst,
                ..Nat::default()
            };
            nats.set(0, web, 0)?;
            let src: [u8; 16] = "2001:2:0:1::99".parse::<std::net::Ipv6Addr>()?.octets();
            let udp6 = Nat {
                rule: Rule {
                    fields: RuleFields::PROTO | RuleFields::V6,
                    proto: 17,
                    ..Rule::default()
                },
                set: NatFields::SRC | NatFields::SPORT,
                sport: 5000,
                src,
                ..Nat::default()
            };
            nats.set(1, udp6, 0)?;
            // IPv4 UDP to port 53: from 198.18.1.77, to port 5353.
            let mut src = [0u8; 16];
            src[..4].copy_from_slice(&[198, 18, 1, 77]);
            let dns = Nat {
                rule: Rule {
                    fields: RuleFields::PROTO | RuleFields::DPORT | RuleFields::V4,
                    proto: 17,
                    dport_lo: 53,
                    dport_hi: 53,
                    ..Rule::default()
                },
                set: NatFields::SRC | NatFields::DPORT,
                dport: 5353,
                src,
                ..Nat::default()
            };
            nats.set(2, dns, 0)?;
            // Any protocol to 198.18.2.44 goes to 198.18.2.45.
            let word = |b: [u8; 4]| u64::from_ne_bytes([b[0], b[1], b[2], b[3], 0, 0, 0, 0]);
            let mut moved = [0u8; 16];
            moved[..4].copy_from_slice(&[198, 18, 2, 45]);
            let host = Nat {
                rule: Rule {
                    fields: RuleFields::DST | RuleFields::V4,
                    dst: [word([198, 18, 2, 44]), 0],
                    dst_mask: [word([255; 4]), 0],
                    ..Rule::default()
                },
                set: NatFields::DST,
                dst: moved,
                ..Nat::default()
            };
            nats.set(3, host, 0)?;
            let mut ruleset: Array<_, u32> = Array::try_from(
                self.ebpf.map_mut(map_names::RULESET).context(map_names::RULESET)?,
            )?;
            let policy = Policy { set: 0, rules: 2, nats: 4, default: Action::Forward };
            ruleset.set(0, policy.encode(), 0)?;
        }
        self.gateways(GATEWAY_MAC)
    }

    /// The neighbour entries of the IPv4 and IPv6 gateways, with `mac`.
    fn gateways(&mut self, mac: [u8; 6]) -> anyhow::Result<()> {
        let mut n4: HashMap<_, NeighKeyV4, Neighbour> = HashMap::try_from(
            self.ebpf.map_mut(map_names::NEIGH_V4).context(map_names::NEIGH_V4)?,
        )?;
        n4.insert(
            NeighKeyV4 { ifindex: EGRESS, addr: [198, 18, 2, 2] },
            Neighbour { mac, ..Neighbour::default() },
            0,
        )?;
        let mut n6: HashMap<_, NeighKeyV6, Neighbour> = HashMap::try_from(
            self.ebpf.map_mut(map_names::NEIGH_V6).context(map_names::NEIGH_V6)?,
        )?;
        let gw: [u8; 16] = "2001:2:0:2::2".parse::<std::net::Ipv6Addr>()?.octets();
        n6.insert(NeighKeyV6::new(EGRESS, gw), Neighbour { mac, ..Neighbour::default() }, 0)?;
        Ok(())
    }

    /// The FIB: policy rules `local`, then TCP to port 443 through table 100 (an ECMP group of
    /// two paths), then `main`; routes: a default through a resolved gateway, an on-link
    /// prefix without neighbour, a local address.
    fn fill_fib(&mut self) -> anyhow::Result<()> {
        let route = |kind: RouteKind, oif, gateway: [u8; 16], prefix_len| Route {
            kind: kind as u32,
            oif,
            gateway,
            prefix_len,
            ..Route::default()
        };
        let mut gw4 = [0u8; 16];
        gw4[..4].copy_from_slice(&[198, 18, 2, 2]);
        {
            let mut r4: LpmTrie<_, [u8; 8], Route> = LpmTrie::try_from(
                self.ebpf.map_mut(map_names::ROUTES_V4).context(map_names::ROUTES_V4)?,
            )?;
            let key = |table, len, a| Key::new(route_key_bits(len), route_key_v4(table, a));
            r4.insert(&key(254, 0, [0; 4]), route(RouteKind::Unicast, EGRESS, gw4, 0), 0)?;
            r4.insert(
                &key(254, 24, [198, 51, 100, 0]),
                route(RouteKind::Unicast, EGRESS, [0; 16], 24),
                0,
            )?;
            r4.insert(
                &key(254, 24, [198, 18, 1, 0]),
                route(RouteKind::Unicast, INGRESS, [0; 16], 24),
                0,
            )?;
            r4.insert(&key(255, 32, [198, 18, 1, 1]), route(RouteKind::Kernel, 0, [0; 16], 32), 0)?;
            let mut ecmp = route(RouteKind::Nexthop, 0, [0; 16], 0);
            ecmp.nh = 1;
            r4.insert(&key(100, 0, [0; 4]), ecmp, 0)?;
        }
        {
            let mut r6: LpmTrie<_, [u8; 20], Route> = LpmTrie::try_from(
                self.ebpf.map_mut(map_names::ROUTES_V6).context(map_names::ROUTES_V6)?,
            )?;
            let gw: [u8; 16] = "2001:2:0:2::2".parse::<std::net::Ipv6Addr>()?.octets();
            r6.insert(
                &Key::new(route_key_bits(0), route_key_v6(254, [0; 16])),
                route(RouteKind::Unicast, EGRESS, gw, 0),
                0,
            )?;
        }
        {
            let mut slots: Array<_, u32> = Array::try_from(
                self.ebpf.map_mut(map_names::NH_SLOTS).context(map_names::NH_SLOTS)?,
            )?;
            slots.set(1, 1, 0)?;
            let mut groups: Array<_, NhGroup> = Array::try_from(
                self.ebpf.map_mut(map_names::NH_GROUPS).context(map_names::NH_GROUPS)?,
            )?;
            let mut group = NhGroup { count: 2, ..NhGroup::default() };
            group.paths[0] =
                NhPath { bound: (1 << 30) - 1, oif: EGRESS, gateway: gw4, ..NhPath::default() };
            group.paths[1] = NhPath { bound: (1 << 31) - 1, oif: EGRESS, ..NhPath::default() };
            groups.set(1, group, 0)?;
        }
        let mut rules: Array<_, FibRule> = Array::try_from(
            self.ebpf.map_mut(map_names::FIB_RULES).context(map_names::FIB_RULES)?,
        )?;
        let lookup = |table| FibRule {
            sel: Rule { action: FibAction::Lookup as u32, ..Rule::default() },
            table,
            target: u32::MAX,
            suppress: FIB_NO_SUPPRESS,
            flags: FibFlags::empty(),
            ..FibRule::default()
        };
        let https = FibRule {
            sel: Rule {
                fields: RuleFields::PROTO | RuleFields::DPORT,
                proto: 6,
                dport_lo: 443,
                dport_hi: 443,
                action: FibAction::Lookup as u32,
                ..Rule::default()
            },
            ..lookup(100)
        };
        for v6 in [false, true] {
            for (i, rule) in [lookup(255), https, lookup(254)].into_iter().enumerate() {
                rules.set(fib_rule_index(0, v6, i as u32), rule, 0)?;
            }
        }
        let mut ctl: Array<_, u32> =
            Array::try_from(self.ebpf.map_mut(map_names::FIB_CTL).context(map_names::FIB_CTL)?)?;
        let word = FibWord { rules: 3, hash: HashPolicy::L4, ..FibWord::default() };
        ctl.set(0, word.encode(), 0)?;
        ctl.set(1, word.encode(), 0)?;
        Ok(())
    }

    /// The interfaces' map: the harness's ifindexes are below `IFINDEX_DIRECT`.
    fn ifaces(&mut self) -> anyhow::Result<Array<&mut MapData, IfaceInfo>> {
        const _: () = assert!(INGRESS < IFINDEX_DIRECT && EGRESS < IFINDEX_DIRECT);
        let name = map_names::IFACES_DIRECT;
        Ok(Array::try_from(self.ebpf.map_mut(name).context(name)?)?)
    }

    /// Selects the AF_XDP path or the fast path for traffic routed to the egress.
    pub fn set_fast_path(&mut self, on: bool) -> anyhow::Result<()> {
        let mut ifaces = self.ifaces()?;
        let mut egress = ifaces.get(&EGRESS, 0)?;
        egress.flags = if on {
            egress.flags | IfaceFlags::FAST_PATH
        } else {
            egress.flags - IfaceFlags::FAST_PATH
        };
        ifaces.set(EGRESS, egress, 0)?;
        Ok(())
    }

    /// Turns the flow cache on (a new generation, as the control plane starts one after every
    /// change) or off.
    pub fn set_flow_cache(&mut self, on: bool) -> anyhow::Result<()> {
        let mut ctl: Array<_, xdpfwd_common::CacheCtl> = Array::try_from(
            self.ebpf.map_mut(map_names::CACHE_CTL).context(map_names::CACHE_CTL)?,
        )?;
        // Off and on again must not bring an old generation back: its entries would count.
        if on {
            self.generation += 1;
        }
        let generation = if on { self.generation } else { 0 };
        let mask = xdpfwd_common::DEFAULT_CACHE_SLOTS - 1;
        ctl.set(0, xdpfwd_common::CacheCtl { generation, mask, _pad: 0 }, 0)?;
        Ok(())
    }

    /// The flow cache's hits so far (summed over CPUs).
    pub fn cache_hits(&self) -> anyhow::Result<u64> {
        let name = map_names::FLOW_CACHE_STATS;
        let stats: aya::maps::PerCpuArray<_, u64> =
            aya::maps::PerCpuArray::try_from(self.ebpf.map(name).context(name)?)?;
        Ok(stats.get(&(xdpfwd_common::CacheStat::Hits as u32), 0)?.iter().sum())
    }

    /// Puts the egress into `DEVMAP` (pointing at `lo`): with the fast path on, frames to
    /// forward are then rewritten by the program and come back `XDP_REDIRECT` (test runs do
    /// not carry out the redirect).
    pub fn enable_redirect(&mut self) -> anyhow::Result<()> {
        let mut devmap = aya::maps::DevMap::try_from(
            self.ebpf.map_mut(map_names::DEVMAP).context(map_names::DEVMAP)?,
        )?;
        devmap.set(1, INGRESS, None, 0)?;
        self.set_fast_path(true)
    }

    /// Turns a capture on in the program: `flags` on the ingress, every frame's bytes, behind
    /// the classic BPF `filter` (none when empty).
    pub fn capture(
        &mut self,
        flags: xdpfwd_common::CaptureFlags,
        filter: &[xdpfwd_common::cbpf::CbpfInsn],
    ) -> anyhow::Result<()> {
        let name = map_names::CAPTURE_FILTER;
        let mut insns: Array<_, xdpfwd_common::cbpf::CbpfInsn> =
            Array::try_from(self.ebpf.map_mut(name).context(name)?)?;
        for (i, insn) in filter.iter().enumerate() {
            insns.set(i as u32, insn, 0)?;
        }
        let name = map_names::CAPTURE_IFACES;
        let mut ifaces: HashMap<_, u32, u32> =
            HashMap::try_from(self.ebpf.map_mut(name).context(name)?)?;
        ifaces.insert(INGRESS, flags.bits(), 0)?;
        let name = map_names::CAPTURE;
        let mut ctl: Array<_, xdpfwd_common::CaptureCtl> =
            Array::try_from(self.ebpf.map_mut(name).context(name)?)?;
        let filter_len = filter.len() as u32;
        ctl.set(0, xdpfwd_common::CaptureCtl { flags, snaplen: 65_535, filter_len, _pad: 0 }, 0)?;
        Ok(())
    }

    /// The records the program put into its capture ring since the last call: header, bytes.
    pub fn captured(&mut self) -> anyhow::Result<Vec<(xdpfwd_common::CaptureHeader, Vec<u8>)>> {
        let name = map_names::CAPTURE_RING;
        let mut ring = aya::maps::RingBuf::try_from(self.ebpf.map_mut(name).context(name)?)?;
        let mut out = Vec::new();
        while let Some(item) = ring.next() {
            let header = xdpfwd_common::CaptureHeader::from_bytes(&item).context("a header")?;
            out.push((header, item[size_of::<xdpfwd_common::CaptureHeader>()..].to_vec()));
        }
        Ok(out)
    }

    /// The program's verdict counters, summed over CPUs, by name.
    pub fn counters(&self) -> anyhow::Result<std::collections::BTreeMap<&'static str, u64>> {
        let map: aya::maps::PerCpuArray<_, u64> = aya::maps::PerCpuArray::try_from(
            self.ebpf.map(map_names::COUNTERS).context(map_names::COUNTERS)?,
        )?;
        let mut out = std::collections::BTreeMap::new();
        for c in xdpfwd_common::Counter::ALL {
            out.insert(c.name(), map.get(&(c as u32), 0)?.iter().sum());
        }
        Ok(out)
    }

    fn prog_fd(&self) -> io::Result<&aya::programs::ProgramFd> {
        let prog: &Xdp = self
            .ebpf
            .program("xdpfwd")
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| io::Error::other("program xdpfwd"))?;
        prog.fd().map_err(io::Error::other)
    }

    /// Runs the program once on `frame`: (XDP action, frame after the run).
    pub fn run(&self, frame: &[u8]) -> io::Result<(u32, Vec<u8>)> {
        let fd = self.prog_fd()?;
        let mut out = Vec::new();
        let action = crate::prog_run::xdp(
            fd,
            frame,
            INGRESS,
            0,
            crate::prog_run::Mode::Once { out: &mut out },
        )?;
        Ok((action, out))
    }

    /// The program's mean time per run (ns) on `frame`, run `repeat` times in a row (each run
    /// on what the last left of the frame), and the last run's action.
    pub fn time(&self, frame: &[u8], repeat: u32) -> io::Result<(u32, u32)> {
        let fd = self.prog_fd()?;
        let mut ns = 0;
        let mode = crate::prog_run::Mode::Timed { repeat, ns: &mut ns };
        let action = crate::prog_run::xdp(fd, frame, INGRESS, 0, mode)?;
        Ok((action, ns))
    }

    /// Attaches the program (native mode) to one end of a veth pair made for the purpose in
    /// the harness's namespace, which goes with it. Attached, the program sits in the
    /// kernel's XDP dispatcher: a [`Harness::time`] call of more than one run otherwise puts
    /// it there and takes it out again, which waits for RCU (milliseconds per call) and
    /// leaves the patched code cold.
    pub fn attach_native(&mut self) -> anyhow::Result<()> {
        // `ip` runs in the calling thread's namespace: only ever the harness's own.
        let here = std::fs::read_link(THREAD_NETNS).context(THREAD_NETNS)?;
        anyhow::ensure!(here == self.netns, "attach_native called outside the harness's namespace");
        let ok = std::process::Command::new("ip")
            .args(["link", "add", "hx0", "type", "veth", "peer", "name", "hx1"])
            .status()?
            .success();
        anyhow::ensure!(ok, "ip link add hx0 failed");
        // Left down: nothing arrives on it to disturb what is timed.
        let prog: &mut Xdp =
            self.ebpf.program_mut("xdpfwd").context("program xdpfwd")?.try_into()?;
        prog.attach("hx0", aya::programs::xdp::XdpMode::Driver).context("attaching to hx0")?;
        Ok(())
    }

    /// Gives the gateways (IPv4 and IPv6) the ingress's MAC: a frame the fast path forwards
    /// to one comes back addressed to the ingress, to be forwarded again (with its TTL one
    /// lower), so that [`Harness::time`] times the same decision run after run.
    pub fn loop_back(&mut self) -> anyhow::Result<()> {
        self.gateways(INGRESS_MAC)
    }
}

/// A frame the harness forwards through its gateway, as [`Harness::loop_back`] wants it:
/// IPv4 UDP (60 bytes) or IPv6 TCP (74 bytes, no NAT rewrite matches), with a TTL / hop
/// limit of 255, enough for 250 runs.
pub fn looping_frame(v6: bool) -> Vec<u8> {
    use etherparse::PacketBuilder;
    let src_mac = [0x02, 0, 0, 0, 0, 0x09];
    let mut v = Vec::new();
    let built = if v6 {
        let [src, dst] = ["2001:2:0:1::2", "2001:2:0:2::2"]
            .map(|a| a.parse::<std::net::Ipv6Addr>().map(|a| a.octets()).unwrap_or_default());
        PacketBuilder::ethernet2(src_mac, INGRESS_MAC)
            .ipv6(src, dst, 255)
            .tcp(4001, 9000, 1, 1000)
            .syn()
            .write(&mut v, &[])
    } else {
        PacketBuilder::ethernet2(src_mac, INGRESS_MAC)
            .ipv4([198, 18, 1, 2], [198, 18, 2, 2], 255)
            .udp(4000, 9000)
            .write(&mut v, &[1; 18])
    };
    built.expect("a frame of constant fields");
    v
}

/// Real frames to start from (seeds for the fuzzer, bases for property tests): UDP, TCP and
/// ICMP over IPv4 and IPv6 towards the harness's routes, as a client would send them.
pub fn seed_frames() -> Vec<Vec<u8>> {
    use etherparse::PacketBuilder;
    let src_mac = [0x02, 0, 0, 0, 0, 0x09];
    let v4 = |dst: [u8; 4], ttl: u8| {
        PacketBuilder::ethernet2(src_mac, INGRESS_MAC).ipv4([198, 18, 1, 2], dst, ttl)
    };
    let v6 = |dst: &str, hop: u8| {
        let dst: std::net::Ipv6Addr = dst.parse().unwrap_or(std::net::Ipv6Addr::LOCALHOST);
        PacketBuilder::ethernet2(src_mac, INGRESS_MAC).ipv6(
            "2001:2:0:1::2".parse::<std::net::Ipv6Addr>().map(|a| a.octets()).unwrap_or_default(),
            dst.octets(),
            hop,
        )
    };
    let mut out = Vec::new();
    let mut push = |r: Result<(), etherparse::err::packet::BuildWriteError>, v: Vec<u8>| {
        if r.is_ok() {
            out.push(v);
        }
    };
    for dst in [[198, 18, 2, 2], [198, 51, 100, 7], [198, 18, 1, 1], [198, 18, 1, 9]] {
        let mut v = Vec::new();
        push(v4(dst, 64).udp(4000, 9000).write(&mut v, &[1; 18]), v);
        let mut v = Vec::new();
        push(v4(dst, 64).tcp(4001, 80, 1, 1000).syn().write(&mut v, &[]), v);
        let mut v = Vec::new();
        push(v4(dst, 64).tcp(4002, 22, 1, 1000).syn().write(&mut v, &[]), v);
        let mut v = Vec::new();
        push(v4(dst, 2).icmpv4_echo_request(1, 1).write(&mut v, &[2; 40]), v);
    }
    for dst in ["2001:2:0:2::2", "2001:db8::1", "fe80::1", "ff02::1"] {
        let mut v = Vec::new();
        push(v6(dst, 64).udp(4000, 9000).write(&mut v, &[3; 20]), v);
        let mut v = Vec::new();
        push(v6(dst, 64).icmpv6_echo_request(1, 1).write(&mut v, &[4; 32]), v);
    }
    // The same frames behind an 802.1Q tag (VLAN 10, priority 3).
    let tagged: Vec<Vec<u8>> = out
        .iter()
        .map(|f| {
            let mut t = f.clone();
            t.splice(12..12, [0x81, 0x00, 0x60, 10]);
            t
        })
        .collect();
    out.extend(tagged);
    out
}
