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

mod fib;
mod figures;
mod neighbours;
mod resync;
mod sysctls;
pub mod watch;

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
        mpsc::SyncSender,
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{Array, HashMap as BpfHashMap, MapData, lpm_trie::LpmTrie};
use futures::{StreamExt, TryStreamExt};
use ipnet::IpNet;
use netlink_packet_core::{NLM_F_APPEND, NLM_F_REPLACE, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkFlags, LinkMessage},
    neighbour::NeighbourState,
};
use netlink_sys::AsyncSocket as _;
use rtnetlink::{Handle, MulticastGroup};
use sysctls::IfaceSysctls;
use tokio::sync::mpsc::UnboundedReceiver;
use xdpfwd_common::{
    FibRule, FibWord, IFINDEX_DIRECT, IfaceFlags, IfaceInfo, NeighKeyV4, NeighKeyV6, Neighbour,
    Route as MapRoute, max_frame_for_mtu,
};

use crate::{
    config::EcmpMode,
    egress_path::{
        self, DefaultPath, EgressPath, Path,
        features::{self, FeatureEvent},
    },
    fib_rules::{FibRuleSpec, FibRules},
    iface::{self, Iface},
    netfilter::Hooks,
    nexthop::{Nexthops, NhEvent},
    policy::ControlPolicy,
    routes::{Place, Route, RouteTable},
    shared::{Resolve, Shared},
    sockopt,
    xsk::FrameLimits,
};

/// `IFACES_DIRECT` and `IFACES`: where the XDP program finds an interface by its ifindex
/// (`xdpfwd_common::IFINDEX_DIRECT`).
pub struct IfaceMaps {
    pub direct: Array<MapData, IfaceInfo>,
    pub hashed: BpfHashMap<MapData, u32, IfaceInfo>,
}

impl IfaceMaps {
    pub fn insert(&mut self, ifindex: u32, info: IfaceInfo) -> Result<(), aya::maps::MapError> {
        if ifindex < IFINDEX_DIRECT {
            self.direct.set(ifindex, info, 0)
        } else {
            self.hashed.insert(ifindex, info, 0)
        }
    }
}

/// The BPF maps the control plane writes.
pub struct Maps {
    pub ifaces: IfaceMaps,
    pub routes_v4: LpmTrie<MapData, [u8; 8], MapRoute>,
    pub routes_v6: LpmTrie<MapData, [u8; 20], MapRoute>,
    pub neigh_v4: BpfHashMap<MapData, NeighKeyV4, Neighbour>,
    pub neigh_v6: BpfHashMap<MapData, NeighKeyV6, Neighbour>,
    pub fib_rules: Array<MapData, FibRule>,
    pub fib_ctl: Array<MapData, u32>,
    /// The flow cache's generations: a new one after every event handled.
    pub generations: crate::flow_cache::SharedGenerations,
}

/// Why a family is left to the kernel after a route map write failed.
const ROUTE_FAILED: &str = "a route could not be mirrored (route trie full?)";
/// Why a family is left to the kernel while lost events are being made up for.
const STALE: &str = "netlink events were lost and are being read again";
/// Longest a re-read of the kernel's tables may take (a full Internet table takes seconds).
const REREAD_TIMEOUT: Duration = Duration::from_secs(300);
/// Most nexthop events applied before the control plane looks at anything else.
const NH_BATCH: usize = 4096;
/// How long after a nexthop deletion that took routes along the routes are read again.
const REREAD_DELAY: Duration = Duration::from_millis(100);
/// How often the forwarding sysctls are read.
const SYSCTL_POLL: Duration = Duration::from_millis(500);
/// How long the start waits for the kernel's report of the devices' XDP features.
const FIRST_FEATURES: Duration = Duration::from_secs(2);
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

/// How the control plane sets up what it writes and reads.
#[derive(Clone, Copy, Debug)]
pub struct Tuning {
    /// `--default-path`, which overrides the configuration's.
    pub path_flag: Option<DefaultPath>,
    /// The AF_XDP sockets are bound zero-copy.
    pub zero_copy: bool,
    /// The kernel reports the devices' XDP features (a watcher sends them).
    pub reports_features: bool,
    /// Longest frames the AF_XDP path carries (`IfaceInfo::max_frame`, `max_frame_sg`).
    pub frames: FrameLimits,
    /// Receive buffer of the netlink sockets, in bytes.
    pub netlink_buffer: u32,
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
    tuning: Tuning,
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
    /// The routes must be read again (a link went down or up, an address was deleted).
    resync: bool,
    /// Tells the nexthop reader to read every object again.
    redump: Arc<AtomicBool>,
    /// Whether each link (managed or not) was up and had its carrier, as last reported.
    link_up: HashMap<u32, bool>,
    /// Entries written as "the kernel decides" until the routes are read again at
    /// `reread_at` ([`Self::remove_nexthop`]).
    placeholders: HashSet<(u32, IpNet)>,
    reread_at: Option<tokio::time::Instant>,
    /// rtnetlink events were lost (or nexthop events, whose objects are read again already):
    /// everything must be read again (`resync`).
    lost: bool,
    /// Events were lost and not everything has been read again since.
    stale: bool,
    /// Nexthop events were lost: the ids the nexthop socket's new dump reported so far.
    nh_seen: Option<HashSet<u32>>,
    /// Completed re-reads after lost events: of every table, of the nexthop objects.
    rereads: (u64, u64),
    /// The nexthop slot each trie entry points at, and how many entries point at each slot.
    entry_slots: HashMap<(u32, IpNet), u32>,
    slot_users: HashMap<u32, usize>,
    /// Per family: the `local` table's host routes are also written under `main`, and the
    /// rule walk skips the `local` lookup (see [`Control::update_merge`]).
    merged: [bool; 2],
    /// Each device's XDP features as the kernel last reported them, by ifindex; `None`: the
    /// kernel does not report them.
    xdp_features: Option<HashMap<u32, u64>>,
    /// The path out of each managed interface, as last written.
    paths: Vec<Option<EgressPath>>,
    /// The kernel's `fib_multipath_hash_seed` as last written to `FIB_CTL` (0: not set).
    mp_seed: Option<u32>,
    /// Each family's `fib_multipath_hash_fields` as last written to `FIB_CTL`.
    mp_fields: [Option<u32>; 2],
    /// Each family's ECMP notice as last reported: why its paths are not the kernel's.
    ecmp_notes: [Option<String>; 2],
}

/// What the control plane hears from the rest of xdpfwd.
pub struct Inputs {
    /// Next hops workers wait for.
    pub resolve: UnboundedReceiver<Resolve>,
    /// A reload's settings.
    pub policies: UnboundedReceiver<ControlPolicy>,
    pub nh_events: UnboundedReceiver<NhEvent>,
    /// Devices' XDP features (closed at once where the kernel does not report them).
    pub features: UnboundedReceiver<FeatureEvent>,
    /// The kernel reported a sysctl or nftables change ([`watch`]).
    pub changes: UnboundedReceiver<()>,
}

impl Control {
    pub fn new(
        maps: Maps,
        ifaces: Vec<Iface>,
        tuning: Tuning,
        shared: Arc<Shared>,
        policy: ControlPolicy,
        nexthops: Nexthops,
        redump: Arc<AtomicBool>,
    ) -> Self {
        let mut fib: [Fib; 2] = Default::default();
        for f in &mut fib {
            f.word.own_hash = policy.ecmp == EcmpMode::OwnHash;
        }
        Self {
            xdp_features: tuning.reports_features.then(HashMap::new),
            paths: vec![None; ifaces.len()],
            redump,
            link_up: HashMap::new(),
            maps,
            ifaces,
            routes: RouteTable::default(),
            neighbours: HashMap::new(),
            last_resolve: HashMap::new(),
            forwarding: HashMap::new(),
            tuning,
            shared,
            policy,
            statics: Vec::new(),
            inactive: Vec::new(),
            routes_dumped: false,
            fib,
            netfilter: None,
            nexthops,
            resync: false,
            placeholders: HashSet::new(),
            reread_at: None,
            lost: false,
            stale: false,
            nh_seen: None,
            rereads: (0, 0),
            entry_slots: HashMap::new(),
            slot_users: HashMap::new(),
            merged: [false; 2],
            mp_seed: None,
            mp_fields: [None; 2],
            ecmp_notes: [None, None],
        }
    }

    /// Runs until `shared.stop` is set; reports the initial sync through `ready`. Returns an
    /// error when a managed interface disappears or netlink fails.
    pub async fn run(
        mut self,
        inputs: Inputs,
        ready: SyncSender<Result<(), String>>,
    ) -> anyhow::Result<()> {
        let Inputs { mut resolve, mut policies, mut nh_events, mut features, mut changes } = inputs;
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
        // The events' socket: nothing is asked on it (its handle only keeps it open).
        let (mut conn, _events_handle, mut events) =
            rtnetlink::new_multicast_connection(&groups).context("opening the rtnetlink socket")?;
        // Route bursts (a link going down, a BGP session lost) must not overflow the socket;
        // events lost anyway make everything be read again (`resync`).
        let granted =
            sockopt::force_rx_buf(conn.socket_mut().socket_mut(), self.tuning.netlink_buffer)
                .context("sizing the rtnetlink socket")?;
        tracing::info!(granted, "netlink receive buffer (bytes)");
        tokio::spawn(conn);
        // Dumps and requests on a socket of their own: events filling the events' buffer
        // cannot crowd out a dump's answers (the kernel refuses a dump it cannot queue).
        let (conn, mut handle, _) =
            rtnetlink::new_connection().context("opening the rtnetlink request socket")?;
        tokio::spawn(conn);

        if let Err(err) = self.initial_sync(&handle, &mut nh_events, &mut features).await {
            let _ = ready.send(Err(format!("{err:#}")));
            return Err(err);
        }
        crate::flow_cache::next(&self.maps.generations);
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
                event = features.recv(), if self.xdp_features.is_some() => match event {
                    Some(event) => self.on_features(event),
                    None => self.features_gone(),
                },
                event = nh_events.recv() => match event {
                    Some(event) => {
                        // What queued with it too, then the resilient groups whose buckets
                        // moved are published once.
                        self.on_nexthop(event);
                        for _ in 0..NH_BATCH {
                            let Ok(event) = nh_events.try_recv() else { break };
                            self.on_nexthop(event);
                        }
                        self.nexthops.flush_buckets();
                    }
                    None => anyhow::bail!("the nexthop reader stopped"),
                },
                Some(()) = changes.recv() => {
                    while changes.try_recv().is_ok() {}
                    // Only a change starts new generations (below): the notifications of
                    // a busy firewall must not keep emptying the flow cache.
                    let forwarding = self.read_forwarding();
                    if !self.poll_netfilter() && !forwarding {
                        continue;
                    }
                }
                _ = sysctl.tick() => {
                    self.poll_forwarding();
                    self.poll_netfilter();
                    self.publish_tables();
                }
                _ = stale.tick() => self.refresh_stale(&mut handle).await,
                _ = until(self.reread_at) => {
                    self.reread_at = None;
                    self.resync = true;
                }
            }
            // What this turn wrote applies to flows the cache knows too, before a re-read
            // (which may take seconds, leaving transit to the kernel meanwhile: a cached
            // decision must not bypass that).
            crate::flow_cache::next(&self.maps.generations);
            // A dump that never ends must not hold the control plane (and shutdown) for ever:
            // past the bound, xdpfwd stops and leaves everything to the kernel.
            let reread = async {
                if self.lost {
                    self.resync_all(&handle, &mut events).await
                } else if std::mem::take(&mut self.resync) {
                    self.resync_routes(&handle).await
                } else {
                    Ok(())
                }
            };
            tokio::time::timeout(REREAD_TIMEOUT, reread).await.map_err(|_| {
                anyhow::anyhow!(
                    "reading the kernel's tables again took over {} s",
                    REREAD_TIMEOUT.as_secs()
                )
            })??;
            // And what the re-read wrote. A generation every turn, not only those that
            // wrote: at least one per sysctl poll, which also has every flow mark its
            // neighbour as used again (the cache's hits do not).
            crate::flow_cache::next(&self.maps.generations);
        }
        Ok(())
    }

    async fn initial_sync(
        &mut self,
        handle: &Handle,
        nh_events: &mut UnboundedReceiver<NhEvent>,
        features: &mut UnboundedReceiver<FeatureEvent>,
    ) -> anyhow::Result<()> {
        let mut links = handle.link().get().execute();
        while let Some(link) = links.try_next().await.context("dumping links")? {
            self.link_state(&link, true);
            self.on_link(&link);
        }
        self.poll_forwarding();
        self.first_features(features).await;
        for i in 0..self.ifaces.len() {
            self.write_iface(i).with_context(|| {
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
                Ok(Some(NhEvent::Synced)) => {
                    // Ends the tracking of a loss during the dump, if there was one.
                    self.on_nexthop(NhEvent::Synced);
                    break;
                }
                Ok(Some(event)) => {
                    self.on_nexthop(event);
                    self.nexthops.flush_buckets();
                }
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
        self.publish_tables();
        let t = self.shared.tables.read().map(|t| *t).unwrap_or_default();
        tracing::info!(
            routes_v4 = t.routes_v4,
            routes_v6 = t.routes_v6,
            route_memory_mib = (t.route_bytes_v4 + t.route_bytes_v6) >> 20,
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
                self.events_lost();
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
                self.link_state(&l, true);
                if let Some(i) = self.on_link(&l) {
                    self.update_iface(i);
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
                self.link_state(&l, false);
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
        let longest = self.tuning.frames.longest();
        if fresh.mtu > iface.mtu && max_frame_for_mtu(fresh.mtu) > u32::from(longest) {
            tracing::warn!(
                iface = %iface.name,
                mtu = fresh.mtu,
                "MTU raised: frames longer than {longest} bytes do not fit the AF_XDP path; \
                 they take the fast path out of devices that take frames in more than one \
                 buffer, else go to the kernel (counted as pass_too_long), which forwards them \
                 only where its own forwarding is on",
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

    /// A link went down, lost its carrier or was deleted: the kernel removes the nexthop
    /// objects through it (and from their groups) without a word, so the nexthop reader reads
    /// them all again when any known object goes through it.
    fn link_state(&mut self, msg: &LinkMessage, exists: bool) {
        let index = msg.header.index;
        let up = exists
            && msg.header.flags.contains(LinkFlags::Up)
            && msg.header.flags.contains(LinkFlags::LowerUp);
        let was = if exists { self.link_up.insert(index, up) } else { self.link_up.remove(&index) };
        if was == Some(true) && !up && self.nexthops.uses_oif(index) {
            tracing::info!(ifindex = index, "a link with nexthops went down: reading them again");
            self.redump.store(true, Relaxed);
        }
    }

    fn on_nexthop(&mut self, event: NhEvent) {
        match event {
            NhEvent::Set(id, nh) => {
                tracing::debug!(id, ?nh, "nexthop");
                if let Some(seen) = &mut self.nh_seen {
                    seen.insert(id);
                }
                self.nexthops.set(id, nh);
            }
            NhEvent::Del(id) => self.remove_nexthop(id),
            NhEvent::Bucket { group, index, nh } => self.nexthops.set_bucket(group, index, nh),
            // The reader's own business.
            NhEvent::Refused | NhEvent::BucketsDumped | NhEvent::BucketsRefused => {}
            NhEvent::Overrun => {
                if self.nh_seen.is_none() {
                    tracing::warn!(
                        "nexthop events were lost (socket overrun): the kernel forwards transit \
                         traffic while xdpfwd reads the nexthop objects again"
                    );
                }
                // Whatever was reported before this loss proves nothing.
                let was = self.is_stale();
                self.nh_seen = Some(HashSet::new());
                self.stale_changed(was);
            }
            NhEvent::Synced => {
                // After a loss: objects the new dump did not report are gone.
                let Some(seen) = self.nh_seen.take() else { return };
                let gone: Vec<u32> =
                    self.nexthops.ids().into_iter().filter(|id| !seen.contains(id)).collect();
                tracing::info!(objects = seen.len(), removed = gone.len(), "nexthops read again");
                self.rereads.1 += 1;
                for id in gone {
                    self.remove_nexthop(id);
                }
                // An object deleted and made again while its events were lost is in the new
                // dump, but the kernel flushed the routes through it without a word: the
                // routes are read again too, and transit stays with the kernel until then.
                self.stale = true;
                self.lost = true;
            }
        }
    }

    /// A nexthop object is gone, and with it the routes through it (the kernel flushes them
    /// without a word). Route and nexthop events come on different sockets, so a route
    /// added through a new object of the same id may have been applied first and be removed
    /// here by mistake: the prefixes are left to the kernel (never to a shorter prefix)
    /// until the routes are read again, a moment later (a burst of deletions reads once).
    fn remove_nexthop(&mut self, id: u32) {
        self.nexthops.remove(id);
        let removed = self.routes.remove_nexthop(id);
        if removed.is_empty() {
            return;
        }
        for (table, prefix, _) in removed {
            // Written as the kernel's while a placeholder (`write_route`).
            self.placeholders.insert((table, prefix));
            self.write_route(table, prefix, None);
        }
        for v6 in [false, true] {
            self.write_fib(v6);
        }
        self.reread_at.get_or_insert(tokio::time::Instant::now() + REREAD_DELAY);
    }

    /// Waits (2 s at most) for the kernel's first report of every device's XDP features.
    async fn first_features(&mut self, features: &mut UnboundedReceiver<FeatureEvent>) {
        if self.xdp_features.is_none() {
            return;
        }
        let deadline = tokio::time::Instant::now() + FIRST_FEATURES;
        loop {
            match tokio::time::timeout_at(deadline, features.recv()).await {
                Ok(Some(FeatureEvent::Synced)) => return,
                Ok(Some(event)) => self.on_features(event),
                Ok(None) => {
                    tracing::warn!("the XDP features watcher stopped: auto takes the AF_XDP path");
                    self.xdp_features = None;
                    return;
                }
                Err(_) => {
                    tracing::warn!(
                        "the kernel did not report every device's XDP features within 2 s: \
                         auto takes the AF_XDP path out of those not reported yet"
                    );
                    return;
                }
            }
        }
    }

    /// The path plain forwarding takes out of managed interface `i` now.
    fn egress_path(&self, i: usize) -> EgressPath {
        let setting = self.tuning.path_flag.or(self.policy.path).unwrap_or_default();
        // A device the kernel has not reported (yet): as a kernel that does not report.
        let features =
            self.xdp_features.as_ref().and_then(|f| f.get(&self.ifaces[i].ifindex).copied());
        egress_path::choose(setting, self.tuning.zero_copy, features)
    }

    /// Device `i`'s XDP features as the kernel last reported them (none where it did not).
    fn features(&self, i: usize) -> u64 {
        let features = self.xdp_features.as_ref().and_then(|f| f.get(&self.ifaces[i].ifindex));
        features.copied().unwrap_or(0)
    }

    /// A device's XDP features changed: the paths out of managed interfaces follow.
    fn on_features(&mut self, event: FeatureEvent) {
        if let (FeatureEvent::Device { ifindex, xdp }, Some(known)) =
            (event, self.xdp_features.as_mut())
        {
            let before = known.insert(ifindex, xdp).unwrap_or(0);
            let redirect_changed =
                (before ^ xdp) & (features::NDO_XMIT | features::NDO_XMIT_SG) != 0;
            if let Some(i) = self.ifaces.iter().position(|i| i.ifindex == ifindex)
                && self.paths[i].is_some()
                && (redirect_changed || self.paths[i] != Some(self.egress_path(i)))
            {
                self.update_iface(i);
            }
        }
    }

    /// The features watcher stopped: nothing says any more which devices take redirected
    /// frames, so `auto` takes the AF_XDP path everywhere (as where the kernel never said).
    fn features_gone(&mut self) {
        if self.shared.stop.load(Relaxed) {
            // The watcher stops with everything else.
            return;
        }
        tracing::warn!("XDP features are no longer followed: auto takes the AF_XDP path");
        self.xdp_features = None;
        for i in 0..self.ifaces.len() {
            self.update_iface(i);
        }
    }

    /// Notes that interface `i` was written with `path`: publishes it (under the interface's
    /// current name), logged when it changed.
    fn wrote_path(&mut self, i: usize, path: EgressPath) {
        if self.paths[i] != Some(path) {
            self.paths[i] = Some(path);
            tracing::info!(
                interface = %self.ifaces[i].name,
                path = path.path.name(),
                reason = %path.reason,
                "plain forwarding out of the interface"
            );
        }
        if let Ok(mut paths) = self.shared.egress_paths.write() {
            *paths = self
                .ifaces
                .iter()
                .zip(&self.paths)
                .filter_map(|(iface, p)| p.map(|p| (iface.name.clone(), p)))
                .collect();
        }
    }

    /// A reload's interface settings and static routes.
    fn set_policy(&mut self, policy: ControlPolicy) {
        let netfilter_changed = policy.netfilter != self.policy.netfilter;
        let ecmp_changed = policy.ecmp != self.policy.ecmp;
        self.policy = policy;
        if netfilter_changed {
            self.apply_netfilter();
        }
        if ecmp_changed {
            self.apply_ecmp_mode();
        }
        for i in 0..self.ifaces.len() {
            self.update_iface(i);
        }
        self.sync_static();
    }
}

impl Control {
    /// Writes managed interface `i` into `IFACES` as it is now; then its path is in effect
    /// (and shown).
    fn write_iface(&mut self, i: usize) -> Result<(), aya::maps::MapError> {
        let path = self.egress_path(i);
        let info = self.info(i, path);
        self.maps.ifaces.insert(self.ifaces[i].ifindex, info)?;
        self.wrote_path(i, path);
        Ok(())
    }

    /// [`Self::write_iface`], a failure logged (the program keeps the interface's last entry).
    pub(super) fn update_iface(&mut self, i: usize) {
        if let Err(err) = self.write_iface(i) {
            tracing::warn!(%err, interface = %self.ifaces[i].name, "updating the IFACES map failed");
        }
    }

    /// The `IFACES` map value of managed interface `i`, plain forwarding out of it on `path`.
    fn info(&self, i: usize, path: EgressPath) -> IfaceInfo {
        let iface = &self.ifaces[i];
        let sysctls = self.forwarding.get(&iface.ifindex).copied().unwrap_or_default();
        let opts = self.policy.ifaces.get(&iface.ifindex).copied().unwrap_or_default();
        let mut flags = IfaceFlags::MANAGED;
        flags.set(IfaceFlags::UP, iface.up);
        flags.set(IfaceFlags::KERNEL_FWD_V4, sysctls.v4);
        flags.set(IfaceFlags::KERNEL_FWD_V6, sysctls.v6);
        flags.set(IfaceFlags::RP_STRICT, sysctls.rp_filter == 1);
        flags.set(IfaceFlags::RP_LOOSE, sysctls.rp_filter >= 2);
        flags.set(IfaceFlags::FAST_PATH, path.path == Path::Fast);
        let features = self.features(i);
        flags.set(IfaceFlags::REDIRECT_TARGET, features & features::NDO_XMIT != 0);
        flags.set(IfaceFlags::REDIRECT_SG, features & features::NDO_XMIT_SG != 0);
        flags.set(IfaceFlags::VLAN_POP, opts.vlan_pop);
        flags.set(IfaceFlags::XCONNECT, opts.peer != 0);
        flags.set(IfaceFlags::PEER_MAC, opts.peer_mac.is_some());
        IfaceInfo {
            slot: iface.slot,
            flags,
            mtu: iface.mtu,
            mac: iface.mac,
            max_frame: self.tuning.frames.single,
            max_frame_sg: self.tuning.frames.multi,
            _pad: 0,
            peer: opts.peer,
            peer_mac: opts.peer_mac.unwrap_or_default(),
            push_vlan: opts.push_vlan,
        }
    }
}

/// Sets (or clears, with `None`) the operator's notice of `cause`; counts each time it
/// begins.
fn notice(shared: &Shared, cause: &'static str, text: Option<String>) {
    let Ok(mut notices) = shared.notices.write() else { return };
    let began = match text {
        Some(text) => notices.insert(cause, text).is_none(),
        None => {
            notices.remove(cause);
            false
        }
    };
    if began && let Ok(mut counts) = shared.fallbacks.write() {
        *counts.entry(cause).or_default() += 1;
    }
}

/// A map deletion's result, with "no such key" (however aya reports it) as success.
pub(crate) fn ignore_missing(
    result: Result<(), aya::maps::MapError>,
) -> Result<(), aya::maps::MapError> {
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

/// Waits until `at`; for ever without one.
async fn until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
