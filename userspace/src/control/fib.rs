//! Routes and policy rules: the kernel's FIB (and the configuration's static routes) as the
//! XDP program's tries and rule sets hold them.

use std::net::IpAddr;

use aya::maps::lpm_trie::Key;
use ipnet::IpNet;
use netlink_packet_route::{
    route::{RouteMessage, RouteType},
    rule::RuleMessage,
};
use xdpfwd_common::{
    HopFlags, MAX_FIB_RULES, Route as MapRoute, RouteKind, fib_rule_index, route_key_bits,
    route_key_v4, route_key_v6,
};

use super::{Change, Control, ROUTE_FAILED, STALE, ignore_missing, notice};
use crate::{
    fib_rules::{FibRuleSpec, FibRules},
    policy::StaticRoute,
    routes::{Action, MTU_UNKNOWN, Place, Route, TABLE_LOCAL, TABLE_MAIN, TABLE_STATIC},
};

impl Control {
    pub(super) fn on_route(&mut self, msg: &RouteMessage, change: Change) {
        for (i, route) in self.parse_routes(msg).into_iter().enumerate() {
            // An IPv6 multipath message's routes after the first join it as its siblings.
            let change = match change {
                Change::Replace if i > 0 => Change::Add(Place::Append),
                change => change,
            };
            self.apply_route(route, change);
        }
    }

    fn apply_route(&mut self, route: Route, change: Change) {
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

    /// A route message as [`Route`]s: one, with an IPv4 multipath route's paths registered as a
    /// set; an IPv6 multipath route as its siblings; an IPv6 address's prefix route and its
    /// Subnet-Router anycast address ([`Route::subnet_router_anycast`]).
    pub(super) fn parse_routes(&mut self, msg: &RouteMessage) -> Vec<Route> {
        if msg.header.kind == RouteType::Unspec {
            return Vec::new();
        }
        let Some(parsed) = Route::from_message(msg) else { return Vec::new() };
        let mut route = parsed.route;
        if parsed.paths.is_empty() {
            return match route.subnet_router_anycast(msg) {
                Some(anycast) => vec![route, anycast],
                None => vec![route],
            };
        }
        if route.prefix.addr().is_ipv6() {
            // The kernel keeps an IPv6 multipath route as sibling routes of one path each, and
            // may delete them one by one (`RTM_DELROUTE` names only the sibling that went):
            // mirrored the same way, a sibling's removal never leaves the others' set behind.
            // The message's metrics are its first sibling's own; the others keep theirs when
            // known ([`RouteTable::add`]), else share them as a multipath add does, unless
            // they are an MTU, which then may be another sibling's: unknown (the kernel's).
            let others = if route.mtu == 0 { 0 } else { MTU_UNKNOWN };
            return parsed
                .paths
                .iter()
                .enumerate()
                .map(|(i, p)| Route {
                    action: Action::Unicast { oif: p.oif, gateway: p.gateway },
                    weight: p.weight,
                    mtu: if i == 0 { route.mtu } else { others },
                    ..route
                })
                .collect();
        }
        route.action = Action::Nexthop { id: self.nexthops.multipath(parsed.paths) };
        vec![route]
    }

    pub(super) fn on_rule(&mut self, msg: &RuleMessage, add: bool) {
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
    pub(super) fn mergeable(&self, v6: bool) -> bool {
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
    pub(super) fn update_merge(&mut self, v6: bool) {
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
    pub(super) fn write_entry(&mut self, table: u32, prefix: IpNet, effective: Option<Route>) {
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
    pub(super) fn write_merged(&mut self, v6: bool, prefix: IpNet) {
        if !self.merged[v6 as usize] || !host(&prefix) {
            return;
        }
        let route =
            self.routes.get(TABLE_LOCAL, prefix).or_else(|| self.routes.get(TABLE_MAIN, prefix));
        self.write_route(TABLE_MAIN, prefix, route);
    }

    /// Compiles one family's policy rules into the idle set of `FIB_RULES`, then switches the
    /// family's `FIB_CTL` word. Too many rules, or a write that fails, sends the family's
    /// transit traffic to the kernel.
    pub(super) fn write_fib(&mut self, v6: bool) {
        let names: Vec<(String, u32)> =
            self.ifaces.iter().map(|i| (i.name.clone(), i.ifindex)).collect();
        let routes = &self.routes;
        let placeholders = &self.placeholders;
        let merged = self.merged[v6 as usize];
        let stale = self.is_stale();
        let fib = &self.fib[v6 as usize];
        // A table whose routes are only placeholders still answers (the kernel's, for now).
        let held =
            |table: u32| placeholders.iter().any(|(t, p)| *t == table && p.addr().is_ipv6() == v6);
        let compiled = fib.rules.compile(
            |name| names.iter().find(|(n, _)| n == name).map(|(_, i)| *i),
            // Merged, `main` answers for `local`'s host routes: its lookup is left out.
            |table| {
                (routes.has_table(table, v6) || held(table)) && !(merged && table == TABLE_LOCAL)
            },
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
        if stale {
            kernel = kernel.or(Some(STALE));
        }
        word.set = next;
        word.kernel = kernel.is_some();
        // The kernel's quick source check (own addresses only) holds with the default rules
        // and a `local` table of host routes: exactly when `local` is merged.
        word.full_check = !v6 && !merged;
        word.dissect = v6 && fib.rules.require_dissect();
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
                    "xdpfwd forwards this family's transit traffic again"
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

    /// The static route `s` as the tries hold it, if its egress interface is known.
    pub(super) fn resolve_static(&self, s: &StaticRoute) -> Option<Route> {
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
            weight: 1,
        })
    }

    /// Brings the static routes in the tries in line with the configuration and the kernel's
    /// routes to their next hops.
    pub(super) fn sync_static(&mut self) {
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
    pub(super) fn write_route(&mut self, table: u32, prefix: IpNet, route: Option<Route>) {
        let v6 = prefix.addr().is_ipv6();
        // An entry left to the kernel until the routes are read again stays so, whatever
        // events for its prefix say meanwhile (`Control::remove_nexthop`).
        let route = match self.placeholders.contains(&(table, prefix)) {
            true => Some(Route {
                prefix,
                table,
                metric: 0,
                tos: 0,
                action: Action::Kernel,
                mtu: 0,
                weight: 1,
            }),
            false => route,
        };
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
        if result.is_ok() {
            let slot = value.filter(|v| v.kind() == RouteKind::Nexthop).map(|v| v.nh);
            self.track_slot((table, prefix), slot);
        }
        if let Err(err) = result {
            let fib = &mut self.fib[v6 as usize];
            if fib.kernel == Some(ROUTE_FAILED) {
                return;
            }
            tracing::error!(
                %prefix,
                table,
                %err,
                "writing a route failed (the trie is full? see --max-routes-{}): the kernel forwards \
                 this family's transit traffic until xdpfwd restarts",
                if v6 { "v6" } else { "v4" }
            );
            fib.kernel = Some(ROUTE_FAILED);
            fib.word.kernel = true;
            let _ = self.maps.fib_ctl.set(v6 as u32, fib.word.encode(), 0);
            let cause = if v6 { "ipv6 fib" } else { "ipv4 fib" };
            notice(
                &self.shared,
                cause,
                Some(format!("{cause}: {ROUTE_FAILED}: the kernel forwards")),
            );
        }
    }

    /// Counts the trie entries pointing at each nexthop slot; a slot no entry points at any
    /// more is released (after the entry was rewritten: no frame finds it freed).
    fn track_slot(&mut self, entry: (u32, IpNet), slot: Option<u32>) {
        let old = match slot {
            Some(slot) => self.entry_slots.insert(entry, slot),
            None => self.entry_slots.remove(&entry),
        };
        if old == slot {
            return;
        }
        if let Some(slot) = slot {
            *self.slot_users.entry(slot).or_default() += 1;
        }
        if let Some(old) = old
            && let Some(users) = self.slot_users.get_mut(&old)
        {
            *users = users.saturating_sub(1);
            if *users == 0 {
                self.slot_users.remove(&old);
                self.nexthops.release_slot(old);
            }
        }
    }

    /// A route as the XDP program's tries hold it.
    pub(super) fn map_route(&mut self, r: &Route) -> MapRoute {
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
                m.hop.set(HopFlags::GATEWAY_V6, gateway.is_some_and(|g| g.is_ipv6()));
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
            Action::Siblings => {
                let paths = self.routes.siblings(r.table, r.prefix);
                let id = self.nexthops.multipath(paths);
                match self.nexthops.slot(id, v6) {
                    Some(slot) => {
                        m.nh = slot;
                        RouteKind::Nexthop
                    }
                    None => {
                        tracing::warn!("nexthop slots exhausted: the kernel forwards IPv6 ECMP");
                        RouteKind::Kernel
                    }
                }
            }
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
