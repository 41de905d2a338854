//! The control plane: keeps the XDP program's maps in step with the kernel.
//!
//! Runs on its own thread with a single-threaded tokio runtime. It subscribes to rtnetlink
//! link, neighbour, route and rule events (and nexthop events, read by [`crate::nexthop`]),
//! dumps the current state, and from then on applies every change: routes of every table
//! ([`crate::routes`]), policy rules ([`crate::fib_rules`]), nexthop objects and multipath
//! sets, neighbours of the managed interfaces, interface MTU / MAC / carrier, and the
//! per-interface forwarding and ECMP hash sysctls (polled: rtnetlink carries no events for
//! them here). It also asks the kernel to resolve
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
    Array, HashMap as BpfHashMap, MapData,
    lpm_trie::{Key, LpmTrie},
};
use futures::{StreamExt, TryStreamExt};
use ipnet::IpNet;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    link::LinkMessage,
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
    },
    route::{RouteMessage, RouteType},
    rule::RuleMessage,
};
use netlink_sys::AsyncSocket as _;
use rtnetlink::{Handle, MulticastGroup};
use tokio::sync::mpsc::UnboundedReceiver;
use xdpfwd_common::{
    FibRule, FibWord, HashPolicy, IfaceFlags, IfaceInfo, MAX_FIB_RULES, NeighKeyV4, NeighKeyV6,
    Neighbour, Route as MapRoute, RouteKind, fib_rule_index, max_frame_for_mtu, route_key_bits,
    route_key_v4, route_key_v6,
};

use crate::{
    fib_rules::{FibRuleSpec, FibRules},
    iface::{self, Iface},
    netfilter::{self, Hooks, NetfilterMode},
    nexthop::{Nexthops, NhEvent},
    policy::{ControlPolicy, StaticRoute},
    routes::{Action, Place, Route, RouteTable, TABLE_LOCAL, TABLE_MAIN, TABLE_STATIC},
    shared::{Resolve, Shared},
};

/// The BPF maps the control plane writes.
pub struct Maps {
    pub ifaces: BpfHashMap<MapData, u32, IfaceInfo>,
    pub routes_v4: LpmTrie<MapData, [u8; 8], MapRoute>,
    pub routes_v6: LpmTrie<MapData, [u8; 20], MapRoute>,
    pub neigh_v4: BpfHashMap<MapData, NeighKeyV4, Neighbour>,
    pub neigh_v6: BpfHashMap<MapData, NeighKeyV6, Neighbour>,
    pub fib_rules: Array<MapData, FibRule>,
    pub fib_ctl: Array<MapData, u32>,
}

/// Why a family is left to the kernel after a route map write failed.
const ROUTE_FAILED: &str = "a route could not be mirrored (map full?)";
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
    Add(Place),
    Replace,
    Remove,
}

/// One family's policy rules and what the XDP program was last told about them.
#[derive(Default)]
struct Fib {
    rules: FibRules,
    word: FibWord,
    /// Why the family's transit traffic goes to the kernel, if it does (logged once).
    kernel: Option<&'static str>,
}

pub struct Control {
    maps: Maps,
    ifaces: Vec<Iface>,
    routes: RouteTable,
    /// Neighbours of managed interfaces with a usable MAC, and their state.
    neighbours: HashMap<(u32, IpAddr), NeighbourState>,
    last_resolve: HashMap<(u32, IpAddr), Instant>,
    /// The kernel's per-interface sysctls that decide forwarding, per managed ifindex.
    forwarding: HashMap<u32, IfaceSysctls>,
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
    /// Policy rules of IPv4 and IPv6.
    fib: [Fib; 2],
    /// Netfilter's hooks on forwarded traffic, as last read (`None`: not yet).
    netfilter: Option<Hooks>,
    nexthops: Nexthops,
    /// The routes must be read again (a link went down or up, an address was deleted, events
    /// were lost).
    resync: bool,
    /// Per family: the `local` table's host routes are also written under `main`, and the
    /// rule walk skips the `local` lookup (see [`Control::update_merge`]).
    merged: [bool; 2],
}

impl Control {
    pub fn new(
        maps: Maps,
        ifaces: Vec<Iface>,
        (fast_path, max_frame): (bool, u16),
        shared: Arc<Shared>,
        policy: ControlPolicy,
        nexthops: Nexthops,
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
            fib: Default::default(),
            netfilter: None,
            nexthops,
            resync: false,
            merged: [false; 2],
        }
    }

    /// Runs until `shared.stop` is set; reports the initial sync through `ready`. Returns an
    /// error when a managed interface disappears or netlink fails.
    pub async fn run(
        mut self,
        mut resolve: UnboundedReceiver<Resolve>,
        mut policies: UnboundedReceiver<ControlPolicy>,
        mut nh_events: UnboundedReceiver<NhEvent>,
        ready: SyncSender<Result<(), String>>,
    ) -> anyhow::Result<()> {
        let groups = [
            MulticastGroup::Link,
            MulticastGroup::Neigh,
            MulticastGroup::Ipv4Route,
            MulticastGroup::Ipv6Route,
            MulticastGroup::Ipv4Rule,
            MulticastGroup::Ipv6Rule,
            MulticastGroup::Ipv4Ifaddr,
            MulticastGroup::Ipv6Ifaddr,
        ];
        let (mut conn, mut handle, mut events) =
            rtnetlink::new_multicast_connection(&groups).context("opening the rtnetlink socket")?;
        // Route bursts (a link going down) must not overflow the socket.
        let _ = conn.socket_mut().socket_mut().set_rx_buf_sz(8 << 20);
        tokio::spawn(conn);

        if let Err(err) = self.initial_sync(&handle, &mut nh_events).await {
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
                Some(event) = nh_events.recv() => self.on_nexthop(event),
                _ = sysctl.tick() => {
                    self.poll_forwarding();
                    self.poll_netfilter();
                }
                _ = stale.tick() => self.refresh_stale(&mut handle).await,
            }
            if std::mem::take(&mut self.resync) {
                self.resync_routes(&handle).await?;
            }
        }
        Ok(())
    }

    async fn initial_sync(
        &mut self,
        handle: &Handle,
        nh_events: &mut UnboundedReceiver<NhEvent>,
    ) -> anyhow::Result<()> {
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
        // Nexthop objects first, so the routes through them forward from the start.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match tokio::time::timeout_at(deadline, nh_events.recv()).await {
                Ok(Some(NhEvent::Synced)) => break,
                Ok(Some(event)) => self.on_nexthop(event),
                Ok(None) => anyhow::bail!("the nexthop reader stopped"),
                Err(_) => anyhow::bail!("no answer to the nexthop dump within 5 s"),
            }
        }
        for (version, v6) in [(rtnetlink::IpVersion::V4, false), (rtnetlink::IpVersion::V6, true)] {
            let mut rules = handle.rule().get(version).execute();
            while let Some(rule) = rules.try_next().await.context("dumping policy rules")? {
                if let Some(spec) = FibRuleSpec::from_message(&rule) {
                    self.fib[v6 as usize].rules.add(spec);
                }
            }
        }
        while let Some(route) = v4.try_next().await.context("dumping IPv4 routes")? {
            self.on_route(&route, Change::Add(Place::Append));
        }
        let mut v6 = handle
            .route()
            .get(rtnetlink::RouteMessageBuilder::<std::net::Ipv6Addr>::new().build())
            .execute();
        while let Some(route) = v6.try_next().await.context("dumping IPv6 routes")? {
            self.on_route(&route, Change::Add(Place::Append));
        }
        self.poll_netfilter();
        self.routes_dumped = true;
        self.sync_static();
        self.write_fib(false);
        self.write_fib(true);
        self.update_merge(false);
        self.update_merge(true);
        let mut neigh = handle.neighbours().get().execute();
        while let Some(n) = neigh.try_next().await.context("dumping neighbours")? {
            self.on_neighbour(&n, true);
        }
        tracing::info!(
            routes = self.routes.entries().count(),
            rules_v4 = self.fib[0].rules.len(),
            rules_v6 = self.fib[1].rules.len(),
            neighbours = self.neighbours.len(),
            "control plane in sync with the kernel"
        );
        Ok(())
    }

    fn on_event(&mut self, msg: NetlinkMessage<RouteNetlinkMessage>) -> anyhow::Result<()> {
        let replace = msg.header.flags & NLM_F_REPLACE != 0;
        let place =
            if msg.header.flags & NLM_F_APPEND != 0 { Place::Append } else { Place::Prepend };
        let msg = match msg.payload {
            NetlinkPayload::InnerMessage(msg) => msg,
            NetlinkPayload::Overrun(_) => {
                tracing::warn!(
                    "route events were lost (netlink overrun): reading all routes again"
                );
                self.resync = true;
                return Ok(());
            }
            _ => return Ok(()),
        };
        match msg {
            RouteNetlinkMessage::NewRoute(r) if replace => self.on_route(&r, Change::Replace),
            RouteNetlinkMessage::NewRoute(r) => self.on_route(&r, Change::Add(place)),
            RouteNetlinkMessage::DelRoute(r) => self.on_route(&r, Change::Remove),
            RouteNetlinkMessage::NewRule(r) => self.on_rule(&r, true),
            RouteNetlinkMessage::DelRule(r) => self.on_rule(&r, false),
            RouteNetlinkMessage::NewNeighbour(n) => self.on_neighbour(&n, true),
            RouteNetlinkMessage::DelNeighbour(n) => self.on_neighbour(&n, false),
            RouteNetlinkMessage::NewLink(l) => {
                if let Some(i) = self.on_link(&l) {
                    let info = self.info(i);
                    let _ = self.maps.ifaces.insert(self.ifaces[i].ifindex, info, 0);
                }
            }
            // The kernel removes the routes of an address, or of a link going down, without
            // `RTM_DELROUTE`; nor does it bring them back when the link comes up.
            RouteNetlinkMessage::DelAddress(a)
                if self.ifaces.iter().any(|i| i.ifindex == a.header.index) =>
            {
                self.resync = true;
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
        if iface.up != fresh.up {
            self.resync = true;
        }
        if fresh.mtu != iface.mtu && max_frame_for_mtu(fresh.mtu) > u32::from(self.max_frame) {
            tracing::error!(
                iface = %iface.name,
                mtu = fresh.mtu,
                "MTU raised beyond what single-buffer AF_XDP carries (frames up to {} bytes): \
                 longer frames now go to the kernel; lower the MTU to restore full forwarding",
                self.max_frame
            );
        }
        if iface.name != fresh.name && !fresh.name.is_empty() {
            // The sysctls are read by name.
            tracing::info!(from = %iface.name, to = %fresh.name, "interface renamed");
            iface.name = fresh.name;
        }
        iface.up = fresh.up;
        iface.mtu = fresh.mtu;
        iface.mac = fresh.mac;
        if let Ok(mut macs) = self.shared.macs.write() {
            macs.insert(iface.ifindex, iface.mac);
        }
        Some(i)
    }

    fn poll_forwarding(&mut self) {
        let mut changed = Vec::new();
        for (i, iface) in self.ifaces.iter().enumerate() {
            let flags = IfaceSysctls::read(&iface.name);
            if self.forwarding.get(&iface.ifindex) != Some(&flags) {
                changed.push((i, flags));
            }
        }
        self.poll_hash_policy();
        for (i, flags) in changed {
            tracing::info!(
                iface = %self.ifaces[i].name,
                ipv4 = flags.v4,
                ipv6 = flags.v6,
                rp_filter = flags.rp_filter,
                "kernel forwarding"
            );
            self.forwarding.insert(self.ifaces[i].ifindex, flags);
            let info = self.info(i);
            if let Err(err) = self.maps.ifaces.insert(self.ifaces[i].ifindex, info, 0) {
                tracing::warn!(%err, "updating the IFACES map failed");
            }
        }
    }

    /// Follows `fib_multipath_hash_policy`: 0 and 1 are implemented, other policies leave
    /// ECMP to the kernel.
    fn poll_hash_policy(&mut self) {
        for (v6, family) in [(false, "ipv4"), (true, "ipv6")] {
            let policy =
                fs::read_to_string(format!("/proc/sys/net/{family}/fib_multipath_hash_policy"))
                    .ok()
                    .and_then(|s| s.trim().parse::<u32>().ok())
                    .unwrap_or(0);
            let (hash, ecmp_kernel) = match policy {
                0 => (HashPolicy::L3, false),
                1 => (HashPolicy::L4, false),
                _ => (HashPolicy::L3, true),
            };
            let fib = &mut self.fib[v6 as usize];
            if fib.word.hash != hash || fib.word.ecmp_kernel != ecmp_kernel {
                tracing::info!(family, policy, ecmp_kernel, "ECMP hash policy");
                fib.word.hash = hash;
                fib.word.ecmp_kernel = ecmp_kernel;
                if self.routes_dumped {
                    self.write_fib(v6);
                }
            }
        }
    }

    fn on_route(&mut self, msg: &RouteMessage, change: Change) {
        let Some(route) = self.parse_route(msg) else { return };
        let v6 = route.prefix.addr().is_ipv6();
        let had_table = self.routes.has_table(route.table, v6);
        let (table, effective) = match change {
            Change::Add(place) => self.routes.add(route, place),
            Change::Replace => self.routes.replace(route),
            Change::Remove => self.routes.remove(&route),
        };
        self.write_entry(table, route.prefix, effective);
        if self.routes_dumped && table == TABLE_LOCAL {
            self.update_merge(v6);
        }
        if self.routes_dumped {
            if had_table != self.routes.has_table(route.table, v6) {
                // A rule's table became empty or not: rules looking it up are (un)skipped.
                self.write_fib(v6);
            }
            // A static route's next hop may have moved to another interface.
            self.sync_static();
        }
    }

    /// A route message as a [`Route`], with a multipath route's paths registered.
    fn parse_route(&mut self, msg: &RouteMessage) -> Option<Route> {
        if msg.header.kind == RouteType::Unspec {
            return None;
        }
        let parsed = Route::from_message(msg)?;
        let mut route = parsed.route;
        if !parsed.paths.is_empty() {
            route.action = Action::Nexthop { id: self.nexthops.multipath(parsed.paths) };
        }
        Some(route)
    }

    /// Reads every route of both families again and writes what differs from the tries.
    async fn resync_routes(&mut self, handle: &Handle) -> anyhow::Result<()> {
        let mut fresh = RouteTable::default();
        let mut v4 = handle
            .route()
            .get(rtnetlink::RouteMessageBuilder::<std::net::Ipv4Addr>::new().build())
            .execute();
        while let Some(msg) = v4.try_next().await.context("dumping IPv4 routes")? {
            if let Some(r) = self.parse_route(&msg) {
                fresh.add(r, Place::Append);
            }
        }
        let mut v6 = handle
            .route()
            .get(rtnetlink::RouteMessageBuilder::<std::net::Ipv6Addr>::new().build())
            .execute();
        while let Some(msg) = v6.try_next().await.context("dumping IPv6 routes")? {
            if let Some(r) = self.parse_route(&msg) {
                fresh.add(r, Place::Append);
            }
        }
        for r in &self.statics {
            fresh.replace(*r);
        }
        let old: HashMap<(u32, IpNet), Route> =
            self.routes.entries().map(|(t, p, r)| ((t, p), r)).collect();
        let new: HashMap<(u32, IpNet), Route> =
            fresh.entries().map(|(t, p, r)| ((t, p), r)).collect();
        self.routes = fresh;
        let mut changed = 0;
        for (&(table, prefix), route) in &new {
            if old.get(&(table, prefix)) != Some(route) {
                self.write_entry(table, prefix, Some(*route));
                changed += 1;
            }
        }
        for &(table, prefix) in old.keys().filter(|k| !new.contains_key(k)) {
            self.write_entry(table, prefix, None);
            changed += 1;
        }
        tracing::info!(routes = new.len(), changed, "routes read again");
        for v6 in [false, true] {
            self.write_fib(v6);
            self.update_merge(v6);
        }
        self.sync_static();
        Ok(())
    }

    fn on_rule(&mut self, msg: &RuleMessage, add: bool) {
        let Some(spec) = FibRuleSpec::from_message(msg) else { return };
        let v6 = spec.v6;
        tracing::info!(?spec, add, "policy rule");
        if add {
            self.fib[v6 as usize].rules.add(spec);
        } else {
            self.fib[v6 as usize].rules.remove(&spec);
        }
        self.write_fib(v6);
        self.update_merge(v6);
    }

    /// Whether `local` can be merged into `main` for one family: with the default rules only
    /// (`local`, `main`, `default`: nothing between the two lookups) and when every `local`
    /// route is a host route or covers only addresses the XDP program never routes (loopback,
    /// multicast...). Then one lookup in `main` holding `local`'s host routes gives what
    /// `local` then `main` give: a host route is the longest prefix there is.
    fn mergeable(&self, v6: bool) -> bool {
        let defaults = {
            let mut d = FibRules::default();
            for spec in FibRuleSpec::defaults(v6) {
                d.add(spec);
            }
            d
        };
        self.fib[v6 as usize].rules == defaults
            && self.routes.prefixes(TABLE_LOCAL, v6).iter().all(|p| host(p) || never_routed(p))
    }

    /// Merges or unmerges `local` into `main` when [`Self::mergeable`] changed. The order keeps
    /// every frame exact: merged entries are written before the walk stops looking `local`
    /// up, and the walk looks it up again before they are removed.
    fn update_merge(&mut self, v6: bool) {
        let want = self.mergeable(v6);
        if want == self.merged[v6 as usize] {
            return;
        }
        let hosts: Vec<IpNet> =
            self.routes.prefixes(TABLE_LOCAL, v6).into_iter().filter(host).collect();
        tracing::debug!(v6, merged = want, hosts = hosts.len(), "local table merged into main");
        if want {
            self.merged[v6 as usize] = true;
            for p in &hosts {
                self.write_merged(v6, *p);
            }
            self.write_fib(v6);
        } else {
            self.merged[v6 as usize] = false;
            self.write_fib(v6);
            for p in &hosts {
                let main = self.routes.get(TABLE_MAIN, *p);
                self.write_route(TABLE_MAIN, *p, main);
            }
        }
    }

    /// Writes an entry's effective route; with `local` merged, a host prefix's `main` entry
    /// holds `local`'s route when there is one.
    fn write_entry(&mut self, table: u32, prefix: IpNet, effective: Option<Route>) {
        let v6 = prefix.addr().is_ipv6();
        let merged_host = self.merged[v6 as usize] && host(&prefix);
        if merged_host && table == TABLE_MAIN {
            self.write_merged(v6, prefix);
            return;
        }
        self.write_route(table, prefix, effective);
        if merged_host && table == TABLE_LOCAL {
            self.write_merged(v6, prefix);
        }
    }

    /// With `local` merged, the `main` entry of a host prefix: `local`'s route wins.
    fn write_merged(&mut self, v6: bool, prefix: IpNet) {
        if !self.merged[v6 as usize] || !host(&prefix) {
            return;
        }
        let route =
            self.routes.get(TABLE_LOCAL, prefix).or_else(|| self.routes.get(TABLE_MAIN, prefix));
        self.write_route(TABLE_MAIN, prefix, route);
    }

    fn on_nexthop(&mut self, event: NhEvent) {
        match event {
            NhEvent::Set(id, nh) => {
                tracing::debug!(id, ?nh, "nexthop");
                self.nexthops.set(id, nh);
            }
            NhEvent::Del(id) => {
                self.nexthops.remove(id);
                for (table, prefix, effective) in self.routes.remove_nexthop(id) {
                    self.write_entry(table, prefix, effective);
                }
            }
            NhEvent::Synced => {}
            NhEvent::Overrun => {
                tracing::error!(
                    "nexthop events were lost (socket overrun): restart xdpfwd to resynchronise"
                );
            }
        }
    }

    /// Compiles one family's policy rules into the idle set of `FIB_RULES`, then switches the
    /// family's `FIB_CTL` word. Too many rules, or a write that fails, sends the family's
    /// transit traffic to the kernel.
    fn write_fib(&mut self, v6: bool) {
        let names: Vec<(String, u32)> =
            self.ifaces.iter().map(|i| (i.name.clone(), i.ifindex)).collect();
        let routes = &self.routes;
        let merged = self.merged[v6 as usize];
        let fib = &self.fib[v6 as usize];
        let compiled = fib.rules.compile(
            |name| names.iter().find(|(n, _)| n == name).map(|(_, i)| *i),
            // Merged, `main` answers for `local`'s host routes: its lookup is left out.
            |table| routes.has_table(table, v6) && !(merged && table == TABLE_LOCAL),
        );
        let mut word = fib.word;
        let next = 1 - word.set;
        // A route that could not be mirrored keeps the family with the kernel.
        let mut kernel = fib.kernel.filter(|why| *why == ROUTE_FAILED);
        match compiled {
            Some(rules) => {
                for (i, rule) in rules.iter().enumerate() {
                    if self
                        .maps
                        .fib_rules
                        .set(fib_rule_index(next, v6, i as u32), *rule, 0)
                        .is_err()
                    {
                        kernel = Some("writing the rules failed");
                    }
                }
                word.rules = rules.len() as u32;
            }
            None => kernel = Some("more policy rules than the XDP program evaluates"),
        }
        word.set = next;
        word.kernel = kernel.is_some();
        // The kernel's quick source check (own addresses only) holds with the default rules
        // and a `local` table of host routes: exactly when `local` is merged.
        word.full_check = !v6 && !merged;
        let fib = &mut self.fib[v6 as usize];
        if kernel != fib.kernel {
            match kernel {
                Some(why) => tracing::warn!(
                    family = if v6 { "ipv6" } else { "ipv4" },
                    max = MAX_FIB_RULES,
                    "{why}: the kernel forwards this family's transit traffic"
                ),
                None if fib.kernel.is_some() => tracing::info!(
                    family = if v6 { "ipv6" } else { "ipv4" },
                    "policy rules fit again: xdpfwd forwards"
                ),
                None => {}
            }
            fib.kernel = kernel;
            let cause = if v6 { "ipv6 fib" } else { "ipv4 fib" };
            let text = kernel.map(|why| format!("{cause}: {why}: the kernel forwards"));
            notice(&self.shared, cause, text);
        }
        if let Err(err) = self.maps.fib_ctl.set(v6 as u32, word.encode(), 0) {
            tracing::warn!(%err, "switching the policy rules failed");
            return;
        }
        fib.word = word;
    }

    /// Reads netfilter's hooks; when they change, each family's transit traffic goes to the
    /// kernel (`defer`) or is only reported (`warn`). Hooks that cannot be read count as
    /// present.
    fn poll_netfilter(&mut self) {
        let hooks = netfilter::detect().unwrap_or_else(|why| {
            let unknown = vec![format!("unknown: {why}")];
            Hooks { v4: unknown.clone(), v6: unknown }
        });
        if self.netfilter.as_ref() != Some(&hooks) {
            self.netfilter = Some(hooks);
            self.apply_netfilter();
        }
    }

    /// Tells the XDP program, the log and the notices what the hooks and the mode mean.
    fn apply_netfilter(&mut self) {
        let Some(hooks) = self.netfilter.clone() else { return };
        let mode = self.policy.netfilter;
        let text = if hooks.v4.is_empty() && hooks.v6.is_empty() {
            tracing::info!("netfilter: no hooks on forwarded traffic");
            None
        } else if mode == NetfilterMode::Defer {
            tracing::warn!(
                "netfilter hooks see forwarded traffic ({hooks}): the kernel forwards their \
                 families and runs them (netfilter = \"defer\")"
            );
            Some(format!("netfilter (defer): the kernel forwards past {hooks}"))
        } else {
            tracing::warn!(
                "netfilter hooks see forwarded traffic ({hooks}): xdpfwd bypasses them \
                 (netfilter = \"warn\")"
            );
            Some(format!("netfilter (warn): xdpfwd bypasses {hooks}"))
        };
        notice(&self.shared, "netfilter", text);
        for v6 in [false, true] {
            let defer = mode == NetfilterMode::Defer && !hooks.of(v6).is_empty();
            if self.fib[v6 as usize].word.netfilter != defer {
                self.fib[v6 as usize].word.netfilter = defer;
                if self.routes_dumped {
                    self.write_fib(v6);
                }
            }
        }
    }

    /// A reload's interface settings and static routes.
    fn set_policy(&mut self, policy: ControlPolicy) {
        let netfilter_changed = policy.netfilter != self.policy.netfilter;
        self.policy = policy;
        if netfilter_changed {
            self.apply_netfilter();
        }
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
            (None, Some(via)) => match self.routes.lookup_main(via).map(|r| r.action) {
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
            mtu: 0,
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
            let (table, effective) = self.routes.remove(r);
            self.write_entry(table, r.prefix, effective);
        }
        for r in &wanted {
            let (table, effective) = self.routes.replace(*r);
            self.write_entry(table, r.prefix, effective);
        }
        tracing::info!(
            active = wanted.len(),
            configured = self.policy.routes.len(),
            "static routes"
        );
        self.statics = wanted;
    }

    /// Writes the effective route of one table's prefix into its trie (`None`: removes it).
    /// A write that fails sends the family's transit traffic to the kernel: a missing
    /// more-specific route must never let a shorter prefix forward its traffic.
    fn write_route(&mut self, table: u32, prefix: IpNet, route: Option<Route>) {
        let v6 = prefix.addr().is_ipv6();
        let value = route.map(|r| self.map_route(&r));
        let bits = route_key_bits(u32::from(prefix.prefix_len()));
        let result = match (prefix, value) {
            (IpNet::V4(net), Some(v)) => self.maps.routes_v4.insert(
                &Key::new(bits, route_key_v4(table, net.addr().octets())),
                v,
                0,
            ),
            (IpNet::V4(net), None) => ignore_missing(
                self.maps
                    .routes_v4
                    .remove(&Key::new(bits, route_key_v4(table, net.addr().octets()))),
            ),
            (IpNet::V6(net), Some(v)) => self.maps.routes_v6.insert(
                &Key::new(bits, route_key_v6(table, net.addr().octets())),
                v,
                0,
            ),
            (IpNet::V6(net), None) => ignore_missing(
                self.maps
                    .routes_v6
                    .remove(&Key::new(bits, route_key_v6(table, net.addr().octets()))),
            ),
        };
        if let Err(err) = result {
            tracing::error!(%prefix, table, %err, "writing a route failed: the kernel forwards this family's transit traffic");
            let fib = &mut self.fib[v6 as usize];
            fib.kernel = Some(ROUTE_FAILED);
            fib.word.kernel = true;
            let _ = self.maps.fib_ctl.set(v6 as u32, fib.word.encode(), 0);
        }
    }

    /// A route as the XDP program's tries hold it.
    fn map_route(&mut self, r: &Route) -> MapRoute {
        let v6 = r.prefix.addr().is_ipv6();
        let octets = |a: Option<IpAddr>| {
            let mut g = [0u8; 16];
            match a {
                Some(IpAddr::V4(a)) => g[..4].copy_from_slice(&a.octets()),
                Some(IpAddr::V6(a)) => g = a.octets(),
                None => {}
            }
            g
        };
        let mut m = MapRoute {
            mtu: r.mtu,
            prefix_len: u32::from(r.prefix.prefix_len()),
            ..MapRoute::default()
        };
        let kind = match r.action {
            Action::Unicast { oif, gateway } => {
                (m.oif, m.gateway) = (oif, octets(gateway));
                RouteKind::Unicast
            }
            Action::Nexthop { id } => match self.nexthops.slot(id, v6) {
                Some(slot) => {
                    m.nh = slot;
                    RouteKind::Nexthop
                }
                None => {
                    tracing::warn!(id, "nexthop slots exhausted: the kernel forwards through it");
                    RouteKind::Kernel
                }
            },
            Action::Throw => RouteKind::Throw,
            Action::Kernel => RouteKind::Kernel,
            Action::Unreachable => RouteKind::Unreachable,
            Action::Prohibit => RouteKind::Prohibit,
            Action::Static { oif, via, mac, vlan } => {
                (m.oif, m.gateway, m.vlan) = (oif, octets(via), vlan);
                match mac {
                    Some(mac) => {
                        m.mac = mac;
                        RouteKind::StaticMac
                    }
                    None => RouteKind::Static,
                }
            }
        };
        m.kind = kind as u32;
        m
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
                Neighbour { mac: m, ..Neighbour::default() },
                0,
            ),
            (IpAddr::V4(a), None) => {
                ignore_missing(self.maps.neigh_v4.remove(&NeighKeyV4 { ifindex, addr: a.octets() }))
            }
            (IpAddr::V6(a), Some(m)) => self.maps.neigh_v6.insert(
                NeighKeyV6 { ifindex, addr: a.octets() },
                Neighbour { mac: m, ..Neighbour::default() },
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
            if self.take_used(ifindex, addr) {
                let _ = neigh_use(handle, ifindex, addr).await;
            }
        }
    }

    /// Whether the XDP program forwarded to this neighbour since the last call (it marks the
    /// map entry); clears the mark. Entries nobody sends to are left to age as the kernel
    /// ages them.
    fn take_used(&mut self, ifindex: u32, addr: IpAddr) -> bool {
        let used = |n: Neighbour| (n.used != 0).then_some(Neighbour { used: 0, ..n });
        match addr {
            IpAddr::V4(a) => {
                let key = NeighKeyV4 { ifindex, addr: a.octets() };
                let Some(clear) = self.maps.neigh_v4.get(&key, 0).ok().and_then(used) else {
                    return false;
                };
                let _ = self.maps.neigh_v4.insert(key, clear, 0);
            }
            IpAddr::V6(a) => {
                let key = NeighKeyV6 { ifindex, addr: a.octets() };
                let Some(clear) = self.maps.neigh_v6.get(&key, 0).ok().and_then(used) else {
                    return false;
                };
                let _ = self.maps.neigh_v6.insert(key, clear, 0);
            }
        }
        true
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
    // The kernel answers at once; a lost answer must not stall the control plane.
    let answer = async {
        while let Some(reply) = response.next().await {
            if let NetlinkPayload::Error(err) = reply.payload
                && err.code.is_some()
            {
                anyhow::bail!("RTM_NEWNEIGH NTF_USE: {err}");
            }
        }
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(1), answer)
        .await
        .map_err(|_| anyhow::anyhow!("RTM_NEWNEIGH NTF_USE: no answer within 1 s"))?
}

/// A host route: /32 or /128.
fn host(p: &IpNet) -> bool {
    p.prefix_len() == p.max_prefix_len()
}

/// A prefix holding only addresses the XDP program never routes (`classify`'s special
/// addresses): this network, loopback, multicast and class E; IPv6 multicast, link-local and
/// `::/80`.
fn never_routed(p: &IpNet) -> bool {
    let within = |net: &str| net.parse::<IpNet>().is_ok_and(|n| n.contains(p));
    match p {
        IpNet::V4(_) => ["0.0.0.0/8", "127.0.0.0/8", "224.0.0.0/3"].into_iter().any(within),
        IpNet::V6(_) => ["ff00::/8", "fe80::/10", "::/80"].into_iter().any(within),
    }
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
        let sysctls = self.forwarding.get(&iface.ifindex).copied().unwrap_or_default();
        let opts = self.policy.ifaces.get(&iface.ifindex).copied().unwrap_or_default();
        let mut flags = IfaceFlags::MANAGED;
        flags.set(IfaceFlags::UP, iface.up);
        flags.set(IfaceFlags::KERNEL_FWD_V4, sysctls.v4);
        flags.set(IfaceFlags::KERNEL_FWD_V6, sysctls.v6);
        flags.set(IfaceFlags::RP_STRICT, sysctls.rp_filter == 1);
        flags.set(IfaceFlags::RP_LOOSE, sysctls.rp_filter >= 2);
        flags.set(IfaceFlags::FAST_PATH, self.fast_path);
        flags.set(IfaceFlags::VLAN_POP, opts.vlan_pop);
        flags.set(IfaceFlags::XCONNECT, opts.peer != 0);
        flags.set(IfaceFlags::PEER_MAC, opts.peer_mac.is_some());
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

/// Sets (or clears, with `None`) the operator's notice of `cause`.
fn notice(shared: &Shared, cause: &'static str, text: Option<String>) {
    if let Ok(mut notices) = shared.notices.write() {
        match text {
            Some(text) => notices.insert(cause, text),
            None => notices.remove(cause),
        };
    }
}

/// The sysctls of one interface that decide how the kernel forwards what arrives on it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct IfaceSysctls {
    /// `net.ipv4.conf.IFACE.forwarding`.
    v4: bool,
    /// The kernel forwards IPv6 arriving on the interface: `net.ipv6.conf.all.forwarding`
    /// (the per-interface `forwarding` only chooses host or router behaviour), or the
    /// interface's `force_forwarding` (`ip6_forward`).
    v6: bool,
    /// The larger of `net.ipv4.conf.{all,IFACE}.rp_filter` (as the kernel combines them).
    rp_filter: u8,
}

impl IfaceSysctls {
    fn read(iface: &str) -> Self {
        let read =
            |path: String| fs::read_to_string(path).ok().and_then(|s| s.trim().parse::<u8>().ok());
        let conf = |family: &str, dev: &str, key: &str| {
            read(format!("/proc/sys/net/{family}/conf/{dev}/{key}"))
        };
        IfaceSysctls {
            v4: conf("ipv4", iface, "forwarding").is_some_and(|v| v != 0),
            v6: conf("ipv6", "all", "forwarding").is_some_and(|v| v != 0)
                || conf("ipv6", iface, "force_forwarding").is_some_and(|v| v != 0),
            // Unreadable: strict, the check that refuses most.
            rp_filter: conf("ipv4", "all", "rp_filter")
                .unwrap_or(1)
                .max(conf("ipv4", iface, "rp_filter").unwrap_or(1)),
        }
    }
}
