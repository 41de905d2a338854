//! The control plane: keeps the XDP program's maps in step with the kernel.
//!
//! Runs on its own thread with a single-threaded tokio runtime. It subscribes to rtnetlink
//! link, neighbour and route events, dumps the current state, and from then on applies every
//! change: routes of the `local` and `main` tables ([`crate::routes`]), neighbours of the
//! managed interfaces, interface MTU / MAC / carrier, and the per-interface forwarding sysctls
//! (polled: rtnetlink carries no events for them here). It also asks the kernel to resolve
//! next hops that workers are waiting for (`RTM_NEWNEIGH` with `NTF_USE`), and to re-confirm
//! stale neighbours that xdpfwd keeps sending to, as the kernel's own forwarding would.
//! The configuration's static routes are merged into the same tries (after `local`, before
//! `main`), and its per-interface settings into `IFACES`; a reload hands new ones over.
//!
//! It never touches frames.

use std::{
    collections::HashMap,
    fs,
    net::IpAddr,
    sync::{Arc, atomic::Ordering::Relaxed, mpsc::SyncSender},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{
    HashMap as BpfHashMap, MapData,
    lpm_trie::{Key, LpmTrie},
};
use futures::{StreamExt, TryStreamExt};
use ipnet::IpNet;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    link::LinkMessage,
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
    },
    route::{RouteMessage, RouteType},
};
use netlink_sys::AsyncSocket as _;
use rtnetlink::{Handle, MulticastGroup};
use tokio::sync::mpsc::UnboundedReceiver;
use xdpfwd_common::{
    IFACE_FAST_PATH, IFACE_KERNEL_FWD_V4, IFACE_KERNEL_FWD_V6, IFACE_MANAGED, IFACE_PEER_MAC,
    IFACE_UP, IFACE_VLAN_POP, IFACE_XCONNECT, IfaceInfo, NeighKeyV4, NeighKeyV6, Neighbour,
    ROUTE_KERNEL, ROUTE_STATIC, ROUTE_STATIC_MAC, ROUTE_UNICAST, RouteV4, RouteV6,
};

use crate::{
    iface::{self, Iface},
    policy::{ControlPolicy, StaticRoute},
    routes::{Action, Route, RouteTable, TABLE_STATIC},
    worker::{Resolve, Shared},
};

/// The BPF maps the control plane writes.
pub struct Maps {
    pub ifaces: BpfHashMap<MapData, u32, IfaceInfo>,
    pub routes_v4: LpmTrie<MapData, [u8; 4], RouteV4>,
    pub routes_v6: LpmTrie<MapData, [u8; 16], RouteV6>,
    pub neigh_v4: BpfHashMap<MapData, NeighKeyV4, Neighbour>,
    pub neigh_v6: BpfHashMap<MapData, NeighKeyV6, Neighbour>,
}

/// How often the forwarding sysctls are read.
const SYSCTL_POLL: Duration = Duration::from_millis(500);
/// How often stale neighbours are re-confirmed.
const STALE_REFRESH: Duration = Duration::from_secs(5);
/// Least time between two resolution requests for one next hop (workers repeat theirs every
/// 500 ms while frames wait).
const RESOLVE_INTERVAL: Duration = Duration::from_millis(400);

/// What a route message does.
#[derive(Clone, Copy, Debug)]
enum Change {
    Add,
    Replace,
    Remove,
}

pub struct Control {
    maps: Maps,
    ifaces: Vec<Iface>,
    routes: RouteTable,
    /// Neighbours of managed interfaces with a usable MAC, and their state.
    neighbours: HashMap<(u32, IpAddr), NeighbourState>,
    last_resolve: HashMap<(u32, IpAddr), Instant>,
    /// Kernel forwarding (IPv4, IPv6) per managed ifindex, from the sysctls.
    forwarding: HashMap<u32, (bool, bool)>,
    /// Plain L3 forwarding takes the in-kernel fast path.
    fast_path: bool,
    /// Longest frame the sockets receive whole (`IfaceInfo::max_frame`).
    max_frame: u16,
    shared: Arc<Shared>,
    /// The configuration's interface settings and static routes.
    policy: ControlPolicy,
    /// The static routes currently merged into `routes`.
    statics: Vec<Route>,
    /// Static routes whose next hop is on no managed interface's network.
    inactive: Vec<IpNet>,
    /// The kernel's routes have been dumped: static routes can be resolved against them.
    routes_dumped: bool,
}

impl Control {
    pub fn new(
        maps: Maps,
        ifaces: Vec<Iface>,
        (fast_path, max_frame): (bool, u16),
        shared: Arc<Shared>,
        policy: ControlPolicy,
    ) -> Self {
        Self {
            maps,
            ifaces,
            routes: RouteTable::default(),
            neighbours: HashMap::new(),
            last_resolve: HashMap::new(),
            forwarding: HashMap::new(),
            fast_path,
            max_frame,
            shared,
            policy,
            statics: Vec::new(),
            inactive: Vec::new(),
            routes_dumped: false,
        }
    }

    /// Runs until `shared.stop` is set; reports the initial sync through `ready`. Returns an
    /// error when a managed interface disappears or netlink fails.
    pub async fn run(
        mut self,
        mut resolve: UnboundedReceiver<Resolve>,
        mut policies: UnboundedReceiver<ControlPolicy>,
        ready: SyncSender<Result<(), String>>,
    ) -> anyhow::Result<()> {
        let groups = [
            MulticastGroup::Link,
            MulticastGroup::Neigh,
            MulticastGroup::Ipv4Route,
            MulticastGroup::Ipv6Route,
        ];
        let (mut conn, mut handle, mut events) =
            rtnetlink::new_multicast_connection(&groups).context("opening the rtnetlink socket")?;
        // Route bursts (a link going down) must not overflow the socket.
        let _ = conn.socket_mut().socket_mut().set_rx_buf_sz(8 << 20);
        tokio::spawn(conn);

        if let Err(err) = self.initial_sync(&handle).await {
            let _ = ready.send(Err(format!("{err:#}")));
            return Err(err);
        }
        let _ = ready.send(Ok(()));

        let mut sysctl = tokio::time::interval(SYSCTL_POLL);
        let mut stale = tokio::time::interval(STALE_REFRESH);
        while !self.shared.stop.load(Relaxed) {
            tokio::select! {
                event = events.next() => match event {
                    Some((msg, _)) => self.on_event(msg)?,
                    None => anyhow::bail!("the rtnetlink event stream ended"),
                },
                Some(req) = resolve.recv() => self.resolve(&mut handle, req).await,
                Some(policy) = policies.recv() => self.set_policy(policy),
                _ = sysctl.tick() => self.poll_forwarding(),
                _ = stale.tick() => self.refresh_stale(&mut handle).await,
            }
        }
        Ok(())
    }

    async fn initial_sync(&mut self, handle: &Handle) -> anyhow::Result<()> {
        let mut links = handle.link().get().execute();
        while let Some(link) = links.try_next().await.context("dumping links")? {
            self.on_link(&link);
        }
        self.poll_forwarding();
        for i in 0..self.ifaces.len() {
            let info = self.info(i);
            self.maps.ifaces.insert(self.ifaces[i].ifindex, info, 0).with_context(|| {
                format!("writing interface {} into the IFACES map", self.ifaces[i].name)
            })?;
        }
        let mut v4 = handle
            .route()
            .get(rtnetlink::RouteMessageBuilder::<std::net::Ipv4Addr>::new().build())
            .execute();
        while let Some(route) = v4.try_next().await.context("dumping IPv4 routes")? {
            self.on_route(&route, Change::Add);
        }
        let mut v6 = handle
            .route()
            .get(rtnetlink::RouteMessageBuilder::<std::net::Ipv6Addr>::new().build())
            .execute();
        while let Some(route) = v6.try_next().await.context("dumping IPv6 routes")? {
            self.on_route(&route, Change::Add);
        }
        self.routes_dumped = true;
        self.sync_static();
        let mut neigh = handle.neighbours().get().execute();
        while let Some(n) = neigh.try_next().await.context("dumping neighbours")? {
            self.on_neighbour(&n, true);
        }
        tracing::info!(
            routes = self.routes.actions().count(),
            neighbours = self.neighbours.len(),
            "control plane in sync with the kernel"
        );
        Ok(())
    }

    fn on_event(&mut self, msg: NetlinkMessage<RouteNetlinkMessage>) -> anyhow::Result<()> {
        let replace = msg.header.flags & NLM_F_REPLACE != 0;
        let NetlinkPayload::InnerMessage(msg) = msg.payload else { return Ok(()) };
        match msg {
            RouteNetlinkMessage::NewRoute(r) if replace => self.on_route(&r, Change::Replace),
            RouteNetlinkMessage::NewRoute(r) => self.on_route(&r, Change::Add),
            RouteNetlinkMessage::DelRoute(r) => self.on_route(&r, Change::Remove),
            RouteNetlinkMessage::NewNeighbour(n) => self.on_neighbour(&n, true),
            RouteNetlinkMessage::DelNeighbour(n) => self.on_neighbour(&n, false),
            RouteNetlinkMessage::NewLink(l) => {
                if let Some(i) = self.on_link(&l) {
                    let info = self.info(i);
                    let _ = self.maps.ifaces.insert(self.ifaces[i].ifindex, info, 0);
                }
            }
            RouteNetlinkMessage::DelLink(l) => {
                if let Some(iface) = self.ifaces.iter().find(|i| i.ifindex == l.header.index) {
                    anyhow::bail!("managed interface '{}' was deleted", iface.name);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Applies a link message to the managed interface it names; returns its index.
    fn on_link(&mut self, msg: &LinkMessage) -> Option<usize> {
        let i = self.ifaces.iter().position(|i| i.ifindex == msg.header.index)?;
        let fresh = iface::from_link(msg, self.ifaces[i].slot)?;
        let iface = &mut self.ifaces[i];
        if iface.up != fresh.up || iface.mtu != fresh.mtu || iface.mac != fresh.mac {
            tracing::info!(iface = %iface.name, up = fresh.up, mtu = fresh.mtu, "link changed");
        }
        if fresh.mtu != iface.mtu && fresh.mtu + 14 + 4 > u32::from(self.max_frame) {
            tracing::error!(
                iface = %iface.name,
                mtu = fresh.mtu,
                "MTU raised beyond what single-buffer AF_XDP carries (frames up to {} bytes): \
                 longer frames now go to the kernel; lower the MTU to restore full forwarding",
                self.max_frame
            );
        }
        iface.up = fresh.up;
        iface.mtu = fresh.mtu;
        iface.mac = fresh.mac;
        Some(i)
    }

    fn poll_forwarding(&mut self) {
        let mut changed = Vec::new();
        for (i, iface) in self.ifaces.iter().enumerate() {
            let read = |family: &str| {
                fs::read_to_string(format!("/proc/sys/net/{family}/conf/{}/forwarding", iface.name))
                    .map(|s| s.trim() != "0")
                    .unwrap_or(false)
            };
            let flags = (read("ipv4"), read("ipv6"));
            if self.forwarding.get(&iface.ifindex) != Some(&flags) {
                changed.push((i, flags));
            }
        }
        for (i, flags) in changed {
            tracing::info!(iface = %self.ifaces[i].name, ipv4 = flags.0, ipv6 = flags.1, "kernel forwarding");
            self.forwarding.insert(self.ifaces[i].ifindex, flags);
            let info = self.info(i);
            if let Err(err) = self.maps.ifaces.insert(self.ifaces[i].ifindex, info, 0) {
                tracing::warn!(%err, "updating the IFACES map failed");
            }
        }
    }

    fn on_route(&mut self, msg: &RouteMessage, change: Change) {
        if msg.header.kind == RouteType::Unspec {
            return;
        }
        let Some(route) = Route::from_message(msg) else { return };
        let action = match change {
            Change::Add => self.routes.add(route),
            Change::Replace => self.routes.replace(route),
            Change::Remove => self.routes.remove(&route),
        };
        if let Err(err) = self.write_route(route.prefix, action) {
            tracing::warn!(prefix = %route.prefix, %err, "updating the route map failed");
        }
        // A static route's next hop may have moved to another interface.
        self.sync_static();
    }

    /// A reload's interface settings and static routes.
    fn set_policy(&mut self, policy: ControlPolicy) {
        self.policy = policy;
        for i in 0..self.ifaces.len() {
            let info = self.info(i);
            if let Err(err) = self.maps.ifaces.insert(self.ifaces[i].ifindex, info, 0) {
                tracing::warn!(%err, "updating the IFACES map failed");
            }
        }
        self.sync_static();
    }

    /// The static route `s` as the tries hold it, if its egress interface is known.
    fn resolve_static(&self, s: &StaticRoute) -> Option<Route> {
        let oif = match (s.oif, s.via) {
            (Some(oif), _) => oif,
            (None, Some(via)) => match self.routes.lookup_kernel(via) {
                Some(Action::Unicast { oif, gateway: None })
                    if self.ifaces.iter().any(|i| i.ifindex == oif) =>
                {
                    oif
                }
                _ => return None,
            },
            (None, None) => return None,
        };
        Some(Route {
            prefix: s.dst,
            table: TABLE_STATIC,
            metric: 0,
            tos: 0,
            action: Action::Static { oif, via: s.via, mac: s.mac, vlan: s.vlan },
        })
    }

    /// Brings the static routes in the tries in line with the configuration and the kernel's
    /// routes to their next hops.
    fn sync_static(&mut self) {
        if !self.routes_dumped {
            return;
        }
        let mut wanted = Vec::new();
        let mut inactive = Vec::new();
        for s in &self.policy.routes {
            match self.resolve_static(s) {
                Some(r) => wanted.push(r),
                None => inactive.push(s.dst),
            }
        }
        for dst in inactive.iter().filter(|d| !self.inactive.contains(d)) {
            tracing::warn!(
                %dst,
                "static route inactive: its next hop is not on a connected network of a managed interface"
            );
        }
        self.inactive = inactive;
        if wanted == self.statics {
            return;
        }
        let old = std::mem::take(&mut self.statics);
        for r in old.iter().filter(|r| !wanted.iter().any(|w| w.prefix == r.prefix)) {
            let action = self.routes.remove(r);
            if let Err(err) = self.write_route(r.prefix, action) {
                tracing::warn!(prefix = %r.prefix, %err, "removing a static route failed");
            }
        }
        for r in &wanted {
            let action = self.routes.replace(*r);
            if let Err(err) = self.write_route(r.prefix, action) {
                tracing::warn!(prefix = %r.prefix, %err, "writing a static route failed");
            }
        }
        tracing::info!(
            active = wanted.len(),
            configured = self.policy.routes.len(),
            "static routes"
        );
        self.statics = wanted;
    }

    fn write_route(
        &mut self,
        prefix: IpNet,
        action: Option<Action>,
    ) -> Result<(), aya::maps::MapError> {
        let (kind, oif, gateway, mac, vlan) = match action {
            Some(Action::Unicast { oif, gateway }) => (ROUTE_UNICAST, oif, gateway, None, 0),
            Some(Action::Static { oif, via, mac: Some(mac), vlan }) => {
                (ROUTE_STATIC_MAC, oif, via, Some(mac), vlan)
            }
            Some(Action::Static { oif, via, mac: None, vlan }) => {
                (ROUTE_STATIC, oif, via, None, vlan)
            }
            Some(Action::Kernel) => (ROUTE_KERNEL, 0, None, None, 0),
            None => (0, 0, None, None, 0),
        };
        let mac = mac.unwrap_or_default();
        match prefix {
            IpNet::V4(net) => {
                let key = Key::new(u32::from(net.prefix_len()), net.addr().octets());
                if kind == 0 {
                    return ignore_missing(self.maps.routes_v4.remove(&key));
                }
                let gateway = match gateway {
                    Some(IpAddr::V4(g)) => g.octets(),
                    _ => [0; 4],
                };
                self.maps.routes_v4.insert(&key, RouteV4 { kind, oif, gateway, mac, vlan }, 0)
            }
            IpNet::V6(net) => {
                let key = Key::new(u32::from(net.prefix_len()), net.addr().octets());
                if kind == 0 {
                    return ignore_missing(self.maps.routes_v6.remove(&key));
                }
                let gateway = match gateway {
                    Some(IpAddr::V6(g)) => g.octets(),
                    _ => [0; 16],
                };
                self.maps.routes_v6.insert(&key, RouteV6 { kind, oif, gateway, mac, vlan }, 0)
            }
        }
    }

    fn on_neighbour(&mut self, msg: &NeighbourMessage, add: bool) {
        let ifindex = msg.header.ifindex;
        if !self.ifaces.iter().any(|i| i.ifindex == ifindex)
            || msg.header.flags.contains(NeighbourFlags::Proxy)
        {
            return;
        }
        let mut addr = None;
        let mut mac = None;
        for attr in &msg.attributes {
            match attr {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                    addr = Some(IpAddr::V4(*a))
                }
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                    addr = Some(IpAddr::V6(*a))
                }
                NeighbourAttribute::LinkLayerAddress(l)
                    if l.len() == 6 && l.iter().any(|b| *b != 0) =>
                {
                    let mut m = [0u8; 6];
                    m.copy_from_slice(l);
                    mac = Some(m);
                }
                _ => {}
            }
        }
        let Some(addr) = addr else { return };
        let usable = matches!(
            msg.header.state,
            NeighbourState::Reachable
                | NeighbourState::Stale
                | NeighbourState::Delay
                | NeighbourState::Probe
                | NeighbourState::Permanent
                | NeighbourState::Noarp
        );
        let mac = mac.filter(|_| add && usable);
        // Workers holding frames read the shared table: update it before the XDP map so held
        // frames leave before new ones take the fast path.
        if let Ok(mut table) = self.shared.neighbours.write() {
            match mac {
                Some(m) => table.insert((ifindex, addr), m),
                None => table.remove(&(ifindex, addr)),
            };
        }
        let result = match (addr, mac) {
            (IpAddr::V4(a), Some(m)) => self.maps.neigh_v4.insert(
                NeighKeyV4 { ifindex, addr: a.octets() },
                Neighbour { mac: m, _pad: [0; 2] },
                0,
            ),
            (IpAddr::V4(a), None) => {
                ignore_missing(self.maps.neigh_v4.remove(&NeighKeyV4 { ifindex, addr: a.octets() }))
            }
            (IpAddr::V6(a), Some(m)) => self.maps.neigh_v6.insert(
                NeighKeyV6 { ifindex, addr: a.octets() },
                Neighbour { mac: m, _pad: [0; 2] },
                0,
            ),
            (IpAddr::V6(a), None) => {
                ignore_missing(self.maps.neigh_v6.remove(&NeighKeyV6 { ifindex, addr: a.octets() }))
            }
        };
        if let Err(err) = result {
            tracing::warn!(%addr, %err, "updating the neighbour map failed");
        }
        match mac {
            Some(_) => {
                tracing::debug!(%addr, ifindex, state = ?msg.header.state, "neighbour usable");
                self.neighbours.insert((ifindex, addr), msg.header.state);
            }
            None => {
                self.neighbours.remove(&(ifindex, addr));
            }
        }
    }

    /// Asks the kernel to resolve a next hop a worker waits for (rate-limited).
    async fn resolve(&mut self, handle: &mut Handle, req: Resolve) {
        let key = (req.ifindex, req.addr);
        let now = Instant::now();
        if self.last_resolve.get(&key).is_some_and(|t| now.duration_since(*t) < RESOLVE_INTERVAL) {
            return;
        }
        self.last_resolve.insert(key, now);
        self.last_resolve.retain(|_, t| now.duration_since(*t) < RESOLVE_INTERVAL * 10);
        tracing::debug!(addr = %req.addr, ifindex = req.ifindex, "asking the kernel to resolve a next hop");
        if let Err(err) = neigh_use(handle, req.ifindex, req.addr).await {
            tracing::warn!(addr = %req.addr, %err, "neighbour resolution request failed");
        }
    }

    /// Makes the kernel re-confirm stale neighbours, as it would if it forwarded to them.
    async fn refresh_stale(&mut self, handle: &mut Handle) {
        let stale: Vec<_> = self
            .neighbours
            .iter()
            .filter(|(_, s)| **s == NeighbourState::Stale)
            .map(|(k, _)| *k)
            .collect();
        for (ifindex, addr) in stale {
            let _ = neigh_use(handle, ifindex, addr).await;
        }
    }
}

/// Sends `RTM_NEWNEIGH` with `NTF_USE`: the kernel creates the entry if needed and starts
/// (or refreshes) resolution, sending ARP or neighbour solicitations.
async fn neigh_use(handle: &mut Handle, ifindex: u32, addr: IpAddr) -> anyhow::Result<()> {
    let mut msg = NeighbourMessage::default();
    msg.header.family = if addr.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    msg.header.ifindex = ifindex;
    msg.header.state = NeighbourState::None;
    msg.header.flags = NeighbourFlags::Use;
    msg.header.kind = RouteType::Unspec;
    msg.attributes.push(NeighbourAttribute::Destination(match addr {
        IpAddr::V4(a) => NeighbourAddress::Inet(a),
        IpAddr::V6(a) => NeighbourAddress::Inet6(a),
    }));
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::NewNeighbour(msg));
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE;
    let mut response = handle.request(req)?;
    while let Some(reply) = response.next().await {
        if let NetlinkPayload::Error(err) = reply.payload
            && err.code.is_some()
        {
            anyhow::bail!("RTM_NEWNEIGH NTF_USE: {err}");
        }
    }
    Ok(())
}

fn ignore_missing(result: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match result {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        other => other,
    }
}

impl Control {
    /// The `IFACES` map value of managed interface `i`.
    fn info(&self, i: usize) -> IfaceInfo {
        let iface = &self.ifaces[i];
        let (v4, v6) = self.forwarding.get(&iface.ifindex).copied().unwrap_or_default();
        let mut flags = IFACE_MANAGED;
        if iface.up {
            flags |= IFACE_UP;
        }
        if v4 {
            flags |= IFACE_KERNEL_FWD_V4;
        }
        if v6 {
            flags |= IFACE_KERNEL_FWD_V6;
        }
        if self.fast_path {
            flags |= IFACE_FAST_PATH;
        }
        let opts = self.policy.ifaces.get(&iface.ifindex).copied().unwrap_or_default();
        if opts.vlan_pop {
            flags |= IFACE_VLAN_POP;
        }
        if opts.peer != 0 {
            flags |= IFACE_XCONNECT;
        }
        if opts.peer_mac.is_some() {
            flags |= IFACE_PEER_MAC;
        }
        IfaceInfo {
            slot: iface.slot,
            flags,
            mtu: iface.mtu,
            mac: iface.mac,
            max_frame: self.max_frame,
            peer: opts.peer,
            peer_mac: opts.peer_mac.unwrap_or_default(),
            push_vlan: opts.push_vlan,
        }
    }
}
