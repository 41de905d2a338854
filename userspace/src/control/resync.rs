//! Reading the kernel's state again when events were lost, or when the kernel changed routes
//! without saying so.
//!
//! A netlink socket that overflows (`ENOBUFS`) has dropped events nobody can name. From the
//! moment xdpfwd learns of it until every table has been read again, the XDP program leaves
//! both families' transit traffic to the kernel (the `stale` cause in [`Control::write_fib`]):
//! no frame is forwarded by a route, rule or neighbour that may no longer exist. Once the
//! burst has passed (the events it sends are dropped: the dump reads what they changed),
//! links, policy rules, routes and neighbours are dumped, whatever differs is written, events that
//! arrived meanwhile are applied on top, and xdpfwd forwards again; a loss during all this
//! starts it over. Nexthop objects come from their own socket, whose reader dumps them again
//! after a loss of its own ([`crate::nexthop`]); objects that dump no longer reports are
//! removed here ([`Control::on_nexthop`]), and everything else is read again after it (an
//! object deleted and made again meanwhile took its routes along without a word).

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use futures::{FutureExt as _, StreamExt as _, TryStreamExt as _};
use ipnet::IpNet;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::Handle;

use super::Control;
use crate::{
    fib_rules::{FibRuleSpec, FibRules},
    routes::{Action, Place, Route, RouteTable},
};

/// The rtnetlink event stream, as `rtnetlink::new_multicast_connection` hands it out.
pub(super) type Events = futures::channel::mpsc::UnboundedReceiver<(
    NetlinkMessage<RouteNetlinkMessage>,
    netlink_sys::SocketAddr,
)>;

/// How long the event stream must stay quiet before a re-read starts, and the longest wait
/// for it: a burst still running would make the dump overrun again.
const QUIET: Duration = Duration::from_millis(100);
const SETTLE: Duration = Duration::from_secs(5);

/// Lets a burst pass before a re-read: discards events until none came for [`QUIET`], at most
/// [`SETTLE`]. Whatever they changed, the dump that follows reads. Returns whether the socket
/// reported a loss among them (the dump makes up for it too).
async fn settle(events: &mut Events) -> anyhow::Result<bool> {
    let until = tokio::time::Instant::now() + SETTLE;
    let mut overrun = false;
    loop {
        let quiet = (tokio::time::Instant::now() + QUIET).min(until);
        match tokio::time::timeout_at(quiet, events.next()).await {
            Ok(Some((msg, _))) => {
                overrun |= matches!(msg.payload, NetlinkPayload::Overrun(_));
                if tokio::time::Instant::now() >= until {
                    return Ok(overrun);
                }
            }
            Err(_) => return Ok(overrun),
            Ok(None) => anyhow::bail!("the rtnetlink event stream ended"),
        }
    }
}

impl Control {
    /// Events were lost on the rtnetlink socket: transit goes to the kernel at once, and
    /// everything is read again before the next event.
    pub(super) fn events_lost(&mut self) {
        tracing::warn!(
            "rtnetlink events were lost (socket overrun): the kernel forwards transit traffic \
             while xdpfwd reads links, rules, routes and neighbours again"
        );
        let was = self.is_stale();
        self.lost = true;
        self.stale = true;
        self.stale_changed(was);
        // A link event lost with the others may have been one that took nexthop objects out
        // of their groups without a word (`Control::link_state`): read those again too.
        if !self.nexthops.is_empty() {
            self.redump.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Tells the XDP program when [`Self::is_stale`] is no longer `was`: while the mirrored
    /// state may be stale, transit goes to the kernel.
    pub(super) fn stale_changed(&mut self, was: bool) {
        if was != self.is_stale() && self.routes_dumped {
            self.write_fib(false);
            self.write_fib(true);
        }
    }

    /// Whether lost events of either socket may have left the maps stale.
    pub(super) fn is_stale(&self) -> bool {
        self.stale || self.nh_seen.is_some()
    }

    /// Reads links, rules, routes and neighbours again, then the events that came meanwhile;
    /// again while those report another loss. Transit stays with the kernel until it is done.
    pub(super) async fn resync_all(
        &mut self,
        handle: &Handle,
        events: &mut Events,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut rounds = 0;
        // Events applied from the queue may ask for another read (a loss, an address or a link
        // gone): it happens before xdpfwd forwards again.
        while (std::mem::take(&mut self.lost) || std::mem::take(&mut self.resync))
            && !self.shared.stop.load(std::sync::atomic::Ordering::Relaxed)
        {
            rounds += 1;
            self.resync = false;
            if settle(events).await? {
                tracing::warn!(
                    "rtnetlink events were lost (socket overrun) while a re-read waited for the \
                     burst to pass: the re-read makes up for them"
                );
            }
            self.resync_links(handle).await?;
            self.resync_rules(handle).await?;
            self.resync_routes(handle).await?;
            self.resync_neighbours(handle).await?;
            // Nothing else runs on this thread meanwhile: what is queued is all that came.
            while let Some(Some((msg, _))) = events.next().now_or_never() {
                self.on_event(msg)?;
            }
        }
        let was = self.is_stale();
        self.stale = false;
        self.stale_changed(was);
        self.rereads.0 += 1;
        self.publish_tables();
        tracing::info!(
            rounds,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "in step with the kernel again: xdpfwd forwards"
        );
        Ok(())
    }

    /// Applies every link again; a managed interface the dump lacks was deleted.
    async fn resync_links(&mut self, handle: &Handle) -> anyhow::Result<()> {
        let mut seen = HashSet::new();
        let mut links = handle.link().get().execute();
        while let Some(link) = links.try_next().await.context("dumping links")? {
            seen.insert(link.header.index);
            self.link_state(&link, true);
            if let Some(i) = self.on_link(&link) {
                self.update_iface(i);
            }
        }
        self.link_up.retain(|index, _| seen.contains(index));
        if let Some(gone) = self.ifaces.iter().find(|i| !seen.contains(&i.ifindex)) {
            anyhow::bail!("managed interface '{}' was deleted", gone.name);
        }
        Ok(())
    }

    /// Reads both families' policy rules again (written with the routes that follow).
    async fn resync_rules(&mut self, handle: &Handle) -> anyhow::Result<()> {
        for (version, v6) in [(rtnetlink::IpVersion::V4, false), (rtnetlink::IpVersion::V6, true)] {
            let mut fresh = FibRules::default();
            let mut rules = handle.rule().get(version).execute();
            while let Some(rule) = rules.try_next().await.context("dumping policy rules")? {
                if let Some(spec) = FibRuleSpec::from_message(&rule) {
                    fresh.add(spec);
                }
            }
            if fresh != self.fib[v6 as usize].rules {
                tracing::info!(v6, rules = fresh.len(), "policy rules read again");
                self.fib[v6 as usize].rules = fresh;
            }
        }
        Ok(())
    }

    /// Reads every route of both families again and writes what differs from the tries.
    pub(super) async fn resync_routes(&mut self, handle: &Handle) -> anyhow::Result<()> {
        let mut fresh = RouteTable::default();
        let mut v4 = handle
            .route()
            .get(rtnetlink::RouteMessageBuilder::<std::net::Ipv4Addr>::new().build())
            .execute();
        while let Some(msg) = v4.try_next().await.context("dumping IPv4 routes")? {
            for r in self.parse_routes(&msg) {
                fresh.add(r, Place::Append);
            }
        }
        let mut v6 = handle
            .route()
            .get(rtnetlink::RouteMessageBuilder::<std::net::Ipv6Addr>::new().build())
            .execute();
        while let Some(msg) = v6.try_next().await.context("dumping IPv6 routes")? {
            for r in self.parse_routes(&msg) {
                fresh.add(r, Place::Append);
            }
        }
        for r in &self.statics {
            fresh.replace(*r);
        }
        // Entries left to the kernel until now get what the kernel has (written below, once
        // they are placeholders no more).
        let held = std::mem::take(&mut self.placeholders);
        self.reread_at = None;
        let old: HashMap<(u32, IpNet), Route> =
            self.routes.entries().map(|(t, p, r)| ((t, p), r)).collect();
        let new: HashMap<(u32, IpNet), Route> =
            fresh.entries().map(|(t, p, r)| ((t, p), r)).collect();
        self.routes = fresh;
        let mut changed = 0;
        for (&(table, prefix), route) in &new {
            // IPv6 ECMP's effective route names no paths: their set may have changed.
            if old.get(&(table, prefix)) != Some(route) || route.action == Action::Siblings {
                self.write_entry(table, prefix, Some(*route));
                changed += 1;
            }
        }
        for &(table, prefix) in old.keys().filter(|k| !new.contains_key(k)) {
            self.write_entry(table, prefix, None);
            changed += 1;
        }
        for (table, prefix) in held {
            self.write_entry(table, prefix, new.get(&(table, prefix)).copied());
        }
        tracing::info!(routes = new.len(), changed, "routes read again");
        for v6 in [false, true] {
            self.write_fib(v6);
            self.update_merge(v6);
        }
        self.sync_static();
        Ok(())
    }

    /// Reads the neighbours again: what changed is written, what is gone removed.
    async fn resync_neighbours(&mut self, handle: &Handle) -> anyhow::Result<()> {
        let mut fresh = HashMap::new();
        let mut bad = HashSet::new();
        let mut neigh = handle.neighbours().get().execute();
        while let Some(msg) = neigh.try_next().await.context("dumping neighbours")? {
            match self.neighbour_of(&msg, true) {
                Some((ifindex, addr, Some(mac))) => {
                    fresh.insert((ifindex, addr), (mac, msg.header.state));
                }
                Some((ifindex, addr, None)) if !super::neighbours::usable(msg.header.state) => {
                    bad.insert((ifindex, addr));
                }
                _ => {}
            }
        }
        self.nexthops.set_bad_neighbours(bad);
        let known: HashMap<(u32, IpAddr), [u8; 6]> =
            self.shared.neighbours.read().map(|t| t.clone()).unwrap_or_default();
        let gone: Vec<(u32, IpAddr)> =
            self.neighbours.keys().filter(|k| !fresh.contains_key(k)).copied().collect();
        for (ifindex, addr) in gone {
            self.set_neighbour(ifindex, addr, None, Default::default());
        }
        for ((ifindex, addr), (mac, state)) in fresh {
            if known.get(&(ifindex, addr)) != Some(&mac) {
                self.set_neighbour(ifindex, addr, Some(mac), state);
            } else {
                self.neighbours.insert((ifindex, addr), state);
            }
        }
        Ok(())
    }
}
