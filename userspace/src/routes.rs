//! The kernel's routes as the XDP program needs them: for each table and prefix, the one route
//! the kernel would use, reduced to "unicast out of `oif` via `gateway`", "through nexthop
//! object (or multipath set) N", "throw" or "leave it to the kernel".
//!
//! Pure logic over parsed route messages; [`crate::control`] feeds it netlink events and writes
//! what changes into the BPF tries, keyed by table and prefix.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::IpNet;
use netlink_packet_route::{
    AddressFamily,
    route::{
        RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteMetric, RouteNextHop,
        RouteNextHopFlags, RouteProtocol, RouteType, RouteVia,
    },
};

/// `RT_TABLE_DEFAULT`.
pub const TABLE_DEFAULT: u32 = 253;
/// `RT_TABLE_MAIN`.
pub const TABLE_MAIN: u32 = 254;
/// `RT_TABLE_LOCAL`: local and broadcast addresses; consulted first.
pub const TABLE_LOCAL: u32 = 255;
/// xdpfwd's own table: the configuration's static routes, merged into `main` (at the same
/// prefix a static route wins; the longest prefix still wins across both).
pub const TABLE_STATIC: u32 = u32::MAX;

/// What the XDP program does with a destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// Forward out of `oif`, to `gateway` or, when `None`, to the destination itself.
    Unicast { oif: u32, gateway: Option<IpAddr> },
    /// Through a nexthop: a kernel nexthop object (`nhid`), or the multipath set
    /// [`crate::nexthop`] registered for an `RTA_MULTIPATH` route.
    Nexthop { id: u32 },
    /// `throw`: the table has no route for the destination; the rule walk goes on.
    Throw,
    /// Let the kernel handle it (local, broadcast, blackhole, routes with attributes xdpfwd
    /// does not mirror).
    Kernel,
    /// `unreachable`: no forwarding; the router answers "host unreachable".
    Unreachable,
    /// `prohibit`: no forwarding; the router answers "administratively filtered".
    Prohibit,
    /// A static route of the configuration: out of `oif`, to the neighbour `via` or the fixed
    /// `mac`, tagged with `vlan` (0: none).
    Static { oif: u32, via: Option<IpAddr>, mac: Option<[u8; 6]>, vlan: u16 },
    /// IPv6 ECMP: the entry's sibling routes ([`RouteTable::siblings`]), which the kernel
    /// chooses among by hash-threshold over their weights as for a nexthop group.
    Siblings,
}

/// One path of an `RTA_MULTIPATH` route.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Path {
    pub oif: u32,
    pub gateway: Option<IpAddr>,
    pub weight: u32,
}

/// One route, as far as route selection is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Route {
    pub prefix: IpNet,
    pub table: u32,
    pub metric: u32,
    pub tos: u8,
    pub action: Action,
    /// The `mtu` metric (0: none).
    pub mtu: u32,
    /// The weight of an IPv6 ECMP sibling (its path's in the `RTA_MULTIPATH` it came in); 1
    /// otherwise. Messages about one sibling alone do not carry it: it takes no part in
    /// telling routes apart ([`same_route`]).
    pub weight: u32,
}

/// A parsed route message: the route, and the paths of a multipath route (its `action` is
/// then `Nexthop { id: 0 }` until the caller registers the paths).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub route: Route,
    pub paths: Vec<Path>,
}

impl Route {
    /// Parses a route message of any table; `None` for other families and cache entries.
    pub fn from_message(msg: &RouteMessage) -> Option<Parsed> {
        let mut table = u32::from(msg.header.table);
        let mut dst: Option<IpAddr> = None;
        let mut gateway: Option<IpAddr> = None;
        let mut oif = 0;
        let mut metric = 0;
        let mut mtu = 0;
        let mut nhid = None;
        let mut paths = Vec::new();
        let mut complex = false;
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Table(t) => table = *t,
                RouteAttribute::Destination(a) => dst = address(a),
                RouteAttribute::Gateway(a) => gateway = address(a),
                RouteAttribute::Oif(i) => oif = *i,
                RouteAttribute::Priority(p) => metric = *p,
                RouteAttribute::NhId(id) => nhid = Some(*id),
                RouteAttribute::Metrics(metrics) => {
                    for m in metrics {
                        if let RouteMetric::Mtu(v) = m {
                            mtu = *v;
                        }
                    }
                }
                RouteAttribute::MultiPath(hops) => match multipath(hops) {
                    Some(p) => paths = p,
                    None => complex = true,
                },
                RouteAttribute::Via(via) => match via_address(via) {
                    Some(a) => gateway = Some(a),
                    None => complex = true,
                },
                RouteAttribute::Encap(_) | RouteAttribute::EncapType(_) => complex = true,
                _ => {}
            }
        }
        let len = msg.header.destination_prefix_length;
        let v4 = match msg.header.address_family {
            AddressFamily::Inet => true,
            AddressFamily::Inet6 => false,
            _ => return None,
        };
        let unspecified =
            if v4 { IpAddr::V4(Ipv4Addr::UNSPECIFIED) } else { IpAddr::V6(Ipv6Addr::UNSPECIFIED) };
        let prefix = IpNet::new(dst.unwrap_or(unspecified), len).ok()?.trunc();
        let dead = msg.header.flags.contains(RouteFlags::Dead);
        // Routes from router advertisements never form ECMP sets in the kernel (they are not
        // `rt6_qualify_for_ecmp`), which picks among them by its own rules: the kernel's.
        let ra = !v4 && msg.header.protocol == RouteProtocol::Ra;
        let plain = !complex && !dead && !ra && msg.header.source_prefix_length == 0;
        // An IPv4 route may go through an IPv6 gateway (RFC 5549); not the other way round.
        let family_ok = |g: &Option<IpAddr>| g.is_none_or(|g| v4 || g.is_ipv6());
        let action = match msg.header.kind {
            RouteType::Throw => Action::Throw,
            RouteType::Unreachable if msg.header.source_prefix_length == 0 => Action::Unreachable,
            RouteType::Prohibit if msg.header.source_prefix_length == 0 => Action::Prohibit,
            RouteType::Unicast if plain => match nhid {
                Some(id) => Action::Nexthop { id },
                // An IPv6 multipath route is sibling routes to the kernel (a path's deletion
                // names that path alone): the caller mirrors it as such.
                None if !paths.is_empty() && paths.iter().all(|p| family_ok(&p.gateway)) => {
                    Action::Nexthop { id: 0 }
                }
                None if oif != 0 && paths.is_empty() && family_ok(&gateway) => {
                    Action::Unicast { oif, gateway }
                }
                None => Action::Kernel,
            },
            _ => Action::Kernel,
        };
        if action != (Action::Nexthop { id: 0 }) {
            paths.clear();
        }
        let route = Route { prefix, table, metric, tos: msg.header.tos, action, mtu, weight: 1 };
        Some(Parsed { route, paths })
    }
}

impl Route {
    /// The Subnet-Router anycast address (RFC 4291, 2.6.1) of `self`, parsed from `msg`, when
    /// it is the prefix route the kernel made for an IPv6 address (`proto kernel`, on-link,
    /// in `main`): a host route to the prefix's own address, left to the kernel. A Linux
    /// router (forwarding on for the interface) holds that address as an `anycast` route in
    /// `local` and takes packets to it in; while its forwarding is off the kernel removes the
    /// route, but xdpfwd, then the router in its place, must not forward them. Not for /127
    /// and /128 prefixes (RFC 6164) or one whose address is `::`, as in the kernel's
    /// `addrconf_join_anycast`. Its metric, one per interface, is no kernel route's.
    pub fn subnet_router_anycast(&self, msg: &RouteMessage) -> Option<Route> {
        let IpNet::V6(net) = self.prefix else { return None };
        let on_link = matches!(self.action, Action::Unicast { gateway: None, .. });
        if msg.header.protocol != RouteProtocol::Kernel
            || self.table != TABLE_MAIN
            || !on_link
            || net.prefix_len() >= 127
            || net.network().is_unspecified()
        {
            return None;
        }
        let Action::Unicast { oif, .. } = self.action else { return None };
        Some(Route {
            prefix: IpNet::V6(ipnet::Ipv6Net::new(net.network(), 128).ok()?),
            table: TABLE_LOCAL,
            metric: u32::MAX - oif,
            tos: 0,
            action: Action::Kernel,
            mtu: 0,
            weight: 1,
        })
    }
}

/// The paths of an `RTA_MULTIPATH` route; `None` when one of them cannot be mirrored.
fn multipath(hops: &[RouteNextHop]) -> Option<Vec<Path>> {
    hops.iter()
        .map(|hop| {
            let mut gateway = None;
            for attr in &hop.attributes {
                match attr {
                    RouteAttribute::Gateway(a) => gateway = address(a),
                    RouteAttribute::Via(via) => gateway = Some(via_address(via)?),
                    RouteAttribute::Encap(_) | RouteAttribute::EncapType(_) => return None,
                    _ => {}
                }
            }
            if hop.flags.contains(RouteNextHopFlags::Dead) || hop.interface_index == 0 {
                return None;
            }
            Some(Path { oif: hop.interface_index, gateway, weight: u32::from(hop.hops) + 1 })
        })
        .collect()
}

/// The gateway of `RTA_VIA` (an IPv4 route through an IPv6 next hop); `None` for MPLS and
/// other families.
fn via_address(via: &RouteVia) -> Option<IpAddr> {
    match via {
        RouteVia::Inet(a) => Some(IpAddr::V4(*a)),
        RouteVia::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

fn address(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// Where a new route goes among the routes of the same table, prefix, TOS and metric (the
/// kernel's alias list; the first one is used).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// `NLM_F_APPEND` (`ip route append`) and the order of a dump: last.
    Append,
    /// A plain create (`ip route add`, `prepend`): first.
    Prepend,
}

/// The table a route's entry lives in: static routes are merged into `main`.
fn entry_table(table: u32) -> u32 {
    if table == TABLE_STATIC { TABLE_MAIN } else { table }
}

/// All mirrored routes, grouped by table and prefix.
#[derive(Debug, Default)]
pub struct RouteTable {
    entries: BTreeMap<(u32, IpNet), Vec<Route>>,
    /// Entries per (table, IPv6).
    counts: HashMap<(u32, bool), usize>,
}

impl RouteTable {
    /// Adds a route; returns the entry's table and its new effective route.
    pub fn add(&mut self, route: Route, place: Place) -> (u32, Option<Route>) {
        let table = entry_table(route.table);
        self.count(table, route.prefix);
        let routes = self.entries.entry((table, route.prefix)).or_default();
        let mut route = route;
        if route.prefix.addr().is_ipv6()
            && let Some(known) = routes.iter().find(|r| same_route(r, &route))
        {
            // A sibling listed again by a message about another keeps its own metrics (an
            // MTU changes by `replace`).
            route.mtu = known.mtu;
        }
        routes.retain(|r| !same_route(r, &route));
        match place {
            Place::Append => routes.push(route),
            Place::Prepend => {
                let at = routes.iter().position(|r| same_key(r, &route)).unwrap_or(routes.len());
                routes.insert(at, route);
            }
        }
        (table, Self::effective(routes))
    }

    /// An `NLM_F_REPLACE` update: IPv4 replaces the first route of the same key (or adds);
    /// IPv6 replaces every route of the same key (the kernel drops the old next hops without a
    /// `RTM_DELROUTE`). Returns the entry's table and its new effective route.
    pub fn replace(&mut self, route: Route) -> (u32, Option<Route>) {
        let table = entry_table(route.table);
        self.count(table, route.prefix);
        let routes = self.entries.entry((table, route.prefix)).or_default();
        match routes.iter().position(|r| same_key(r, &route)) {
            Some(at) if route.prefix.addr().is_ipv4() => routes[at] = route,
            _ => {
                routes.retain(|r| !same_key(r, &route));
                routes.push(route);
            }
        }
        (table, Self::effective(routes))
    }

    /// Removes a route; returns the entry's table and its new effective route (`None`: no
    /// route left).
    pub fn remove(&mut self, route: &Route) -> (u32, Option<Route>) {
        let table = entry_table(route.table);
        let key = (table, route.prefix);
        let Some(routes) = self.entries.get_mut(&key) else { return (table, None) };
        if let Some(at) = routes.iter().position(|r| same_route(r, route)) {
            routes.remove(at);
        } else if let Some(at) = routes.iter().position(|r| same_key(r, route)) {
            // A deletion that names fewer attributes than the route had (the kernel deletes
            // the first match).
            if route.action == Action::Kernel {
                routes.remove(at);
            }
        }
        let effective = Self::effective(routes);
        if routes.is_empty() {
            self.drop_entry(key);
        }
        (table, effective)
    }

    /// Counts a new entry for `has_table`.
    fn count(&mut self, table: u32, prefix: IpNet) {
        if !self.entries.contains_key(&(table, prefix)) {
            *self.counts.entry((table, prefix.addr().is_ipv6())).or_default() += 1;
        }
    }

    fn drop_entry(&mut self, key: (u32, IpNet)) {
        if self.entries.remove(&key).is_some()
            && let Some(n) = self.counts.get_mut(&(key.0, key.1.addr().is_ipv6()))
        {
            *n = n.saturating_sub(1);
        }
    }

    /// Removes every route that goes through nexthop `id` (the kernel deletes them with the
    /// nexthop, without `RTM_DELROUTE`); returns the entries that changed.
    pub fn remove_nexthop(&mut self, id: u32) -> Vec<(u32, IpNet, Option<Route>)> {
        let keys: Vec<_> = self
            .entries
            .iter()
            .filter(|(_, rs)| rs.iter().any(|r| r.action == Action::Nexthop { id }))
            .map(|(k, _)| *k)
            .collect();
        let mut changed = Vec::new();
        for key in keys {
            if let Some(routes) = self.entries.get_mut(&key) {
                routes.retain(|r| r.action != Action::Nexthop { id });
                changed.push((key.0, key.1, Self::effective(routes)));
                if routes.is_empty() {
                    self.drop_entry(key);
                }
            }
        }
        changed
    }

    /// Every entry (table, prefix) with its effective route.
    pub fn entries(&self) -> impl Iterator<Item = (u32, IpNet, Route)> + '_ {
        self.entries.iter().filter_map(|((t, p), r)| Some((*t, *p, Self::effective(r)?)))
    }

    /// The effective route of one entry.
    pub fn get(&self, table: u32, prefix: IpNet) -> Option<Route> {
        Self::effective(self.entries.get(&(entry_table(table), prefix))?)
    }

    /// The prefixes of `table` of one family.
    pub fn prefixes(&self, table: u32, v6: bool) -> Vec<IpNet> {
        self.entries
            .range((table, IpNet::default())..)
            .take_while(|((t, _), _)| *t == table)
            .map(|((_, p), _)| *p)
            .filter(|p| p.addr().is_ipv6() == v6)
            .collect()
    }

    /// Entries whose effective route goes through nexthop `id`.
    pub fn using_nexthop(&self, id: u32) -> Vec<(u32, IpNet, Route)> {
        self.entries().filter(|(_, _, r)| r.action == Action::Nexthop { id }).collect()
    }

    /// Entries (table, prefix) of one family: what its trie holds.
    pub fn len(&self, v6: bool) -> usize {
        self.counts.iter().filter(|((_, f), _)| *f == v6).map(|(_, n)| n).sum()
    }

    /// Whether `table` holds a route of the family of `v6`.
    pub fn has_table(&self, table: u32, v6: bool) -> bool {
        self.counts.get(&(table, v6)).is_some_and(|n| *n > 0)
    }

    /// The effective route of the longest prefix holding `addr` among the kernel's own
    /// `main` routes (static routes left out).
    pub fn lookup_main(&self, addr: IpAddr) -> Option<Route> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (0..=max).rev().find_map(|len| {
            let net = IpNet::new(addr, len).ok()?.trunc();
            let routes: Vec<Route> = self
                .entries
                .get(&(TABLE_MAIN, net))?
                .iter()
                .filter(|r| r.table != TABLE_STATIC)
                .copied()
                .collect();
            Self::effective(&routes)
        })
    }

    /// The route the kernel uses for an entry: a static route before `main`'s, then the
    /// lowest metric, then the first in the kernel's order. Routes with a TOS (which match
    /// only some packets) and several IPv6 routes at the lowest metric (ECMP siblings the
    /// kernel announces one by one) are left to the kernel.
    fn effective(routes: &[Route]) -> Option<Route> {
        let best = *routes.iter().min_by_key(|r| (r.table != TABLE_STATIC, r.metric))?;
        if best.table == TABLE_STATIC {
            return Some(best);
        }
        let kernel = Route { action: Action::Kernel, ..best };
        if routes.iter().any(|r| r.tos != 0) || best.mtu == MTU_UNKNOWN {
            return Some(kernel);
        }
        let siblings: Vec<&Route> =
            routes.iter().filter(|r| r.table == best.table && r.metric == best.metric).collect();
        if best.prefix.addr().is_ipv6() && siblings.len() > 1 {
            // ECMP siblings through IPv6 gateways are a group; anything else among them is the
            // kernel's.
            let gateway_v6 = |r: &&Route| {
                matches!(r.action, Action::Unicast { gateway: Some(IpAddr::V6(_)), .. })
            };
            // One MTU for the whole set only when none has one of its own.
            let ecmp = siblings.iter().all(gateway_v6)
                && siblings.iter().all(|r| r.mtu == 0)
                && siblings.len() <= MAX_SIBLINGS;
            return Some(if ecmp { Route { action: Action::Siblings, ..best } } else { kernel });
        }
        Some(best)
    }

    /// The paths of an entry whose effective route is [`Action::Siblings`], in the kernel's
    /// order, with their weights.
    pub fn siblings(&self, table: u32, prefix: IpNet) -> Vec<Path> {
        let Some(routes) = self.entries.get(&(entry_table(table), prefix)) else {
            return Vec::new();
        };
        let Some(best) = routes.iter().filter(|r| r.table != TABLE_STATIC).map(|r| r.metric).min()
        else {
            return Vec::new();
        };
        routes
            .iter()
            .filter(|r| r.table == table && r.metric == best)
            .filter_map(|r| match r.action {
                Action::Unicast { oif, gateway } => Some(Path { oif, gateway, weight: r.weight }),
                _ => None,
            })
            .collect()
    }
}

/// Most IPv6 ECMP siblings xdpfwd forwards through (a nexthop group's paths).
const MAX_SIBLINGS: usize = xdpfwd_common::MAX_PATHS as usize;

/// The `mtu` of an IPv6 sibling that a message about another sibling listed: its metrics are
/// not in that message. A stored sibling keeps what it had; one never seen alone is unknown,
/// and an entry with an unknown MTU is the kernel's.
pub const MTU_UNKNOWN: u32 = u32::MAX;

/// The same route, whatever weight each message gave it, and for IPv6 whatever MTU (a message
/// about a sibling lists the others without theirs; a deletion names a route without its
/// weight). IPv4 routes that differ in their metrics alone are distinct aliases.
fn same_route(a: &Route, b: &Route) -> bool {
    let v6 = a.prefix.addr().is_ipv6();
    let bare = |r: &Route| Route { weight: 1, mtu: if v6 { 0 } else { r.mtu }, ..*r };
    bare(a) == bare(b)
}

/// The kernel's key of a route alias: table, prefix, TOS, metric.
fn same_key(a: &Route, b: &Route) -> bool {
    a.prefix == b.prefix && a.table == b.table && a.metric == b.metric && a.tos == b.tos
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(prefix: &str, table: u32, metric: u32, action: Action) -> Route {
        Route { prefix: prefix.parse().unwrap(), table, metric, tos: 0, action, mtu: 0, weight: 1 }
    }

    const VIA: Action =
        Action::Unicast { oif: 3, gateway: Some(IpAddr::V4(Ipv4Addr::new(198, 19, 0, 1))) };
    const DEV: Action = Action::Unicast { oif: 4, gateway: None };

    fn action(r: (u32, Option<Route>)) -> Option<Action> {
        r.1.map(|r| r.action)
    }

    #[test]
    fn lowest_metric_wins_and_deletion_falls_back() {
        let mut t = RouteTable::default();
        let a = route("198.51.100.0/24", TABLE_MAIN, 200, VIA);
        let b = route("198.51.100.0/24", TABLE_MAIN, 100, DEV);
        assert_eq!(action(t.add(a, Place::Prepend)), Some(VIA));
        assert_eq!(action(t.add(b, Place::Prepend)), Some(DEV));
        assert_eq!(action(t.remove(&b)), Some(VIA));
        assert_eq!(action(t.remove(&a)), None);
        assert_eq!(t.entries().count(), 0);
    }

    #[test]
    fn tables_are_separate_entries() {
        let mut t = RouteTable::default();
        t.add(route("198.18.0.1/32", TABLE_MAIN, 0, DEV), Place::Append);
        let (table, r) =
            t.add(route("198.18.0.1/32", TABLE_LOCAL, 0, Action::Kernel), Place::Append);
        assert_eq!((table, r.map(|r| r.action)), (TABLE_LOCAL, Some(Action::Kernel)));
        assert_eq!(t.entries().count(), 2);
        assert!(t.has_table(TABLE_LOCAL, false));
        assert!(!t.has_table(TABLE_LOCAL, true));
        assert!(!t.has_table(100, false));
    }

    #[test]
    fn static_routes_merge_into_main() {
        let mut t = RouteTable::default();
        let fixed = Action::Static { oif: 5, via: None, mac: Some([2, 0, 0, 0, 0, 9]), vlan: 7 };
        t.add(route("198.51.100.0/24", TABLE_MAIN, 0, VIA), Place::Append);
        let (table, r) = t.add(route("198.51.100.0/24", TABLE_STATIC, 0, fixed), Place::Append);
        assert_eq!((table, r.map(|r| r.action)), (TABLE_MAIN, Some(fixed)));
        assert_eq!(
            t.lookup_main("198.51.100.7".parse().unwrap()).map(|r| r.action),
            Some(VIA),
            "lookups for next hops see the kernel's routes only"
        );
        t.add(route("198.19.0.0/16", TABLE_MAIN, 0, DEV), Place::Append);
        assert_eq!(t.lookup_main("198.19.3.4".parse().unwrap()).map(|r| r.action), Some(DEV));
        assert_eq!(t.lookup_main("203.0.113.1".parse().unwrap()), None);
    }

    #[test]
    fn append_keeps_the_first_and_prepend_takes_over() {
        let mut t = RouteTable::default();
        t.add(route("0.0.0.0/0", TABLE_MAIN, 0, VIA), Place::Append);
        assert_eq!(action(t.add(route("0.0.0.0/0", TABLE_MAIN, 0, DEV), Place::Append)), Some(VIA));
        let other = Action::Unicast { oif: 9, gateway: None };
        assert_eq!(
            action(t.add(route("0.0.0.0/0", TABLE_MAIN, 0, other), Place::Prepend)),
            Some(other)
        );
        assert_eq!(action(t.remove(&route("0.0.0.0/0", TABLE_MAIN, 0, other))), Some(VIA));
        assert_eq!(action(t.replace(route("0.0.0.0/0", TABLE_MAIN, 0, other))), Some(other));
        assert_eq!(
            action(t.remove(&route("0.0.0.0/0", TABLE_MAIN, 0, other))),
            Some(DEV),
            "replace took the first route's place"
        );
    }

    #[test]
    fn ipv6_siblings_keep_their_own_mtu_and_deletions_find_them() {
        // `ip -6 route add P via A mtu 1400`, `append P via B` (notified as [B, A] with B's
        // metrics), then both deleted one by one, each named with its own metrics.
        let a = Action::Unicast { oif: 3, gateway: Some("2001:2:0:2::2".parse().unwrap()) };
        let b = Action::Unicast { oif: 4, gateway: Some("2001:2:0:3::2".parse().unwrap()) };
        let with =
            |action, mtu| Route { mtu, ..route("2001:2:0:8060::/64", TABLE_MAIN, 1024, action) };
        let mut t = RouteTable::default();
        t.add(with(a, 1400), Place::Prepend);
        t.add(with(b, 0), Place::Append);
        let (_, effective) = t.add(with(a, MTU_UNKNOWN), Place::Append);
        assert_eq!(
            effective.map(|r| r.action),
            Some(Action::Kernel),
            "a sibling with an MTU of its own: the set is the kernel's"
        );
        assert_eq!(action(t.remove(&with(a, 1400))), Some(b), "A deleted: B alone");
        assert_eq!(action(t.remove(&with(b, 0))), None, "nothing left to forward by");
        // A sibling only ever listed by others has an unknown MTU: the kernel's.
        t.add(with(b, 0), Place::Append);
        t.add(with(a, MTU_UNKNOWN), Place::Append);
        assert_eq!(action(t.remove(&with(b, 0))), Some(Action::Kernel));
    }

    #[test]
    fn tos_routes_are_the_kernels_and_ipv6_siblings_a_group() {
        let mut t = RouteTable::default();
        let mut tos = route("198.51.100.0/24", TABLE_MAIN, 0, VIA);
        tos.tos = 0x10;
        t.add(route("198.51.100.0/24", TABLE_MAIN, 0, DEV), Place::Append);
        assert_eq!(action(t.add(tos, Place::Append)), Some(Action::Kernel));
        let a = Action::Unicast { oif: 3, gateway: Some("fe80::1".parse().unwrap()) };
        let b = Action::Unicast { oif: 4, gateway: Some("fe80::2".parse().unwrap()) };
        let prefix: IpNet = "2001:2::/48".parse().unwrap();
        t.add(route("2001:2::/48", TABLE_MAIN, 1024, a), Place::Append);
        let mut weighted = route("2001:2::/48", TABLE_MAIN, 1024, b);
        weighted.weight = 3;
        assert_eq!(action(t.add(weighted, Place::Append)), Some(Action::Siblings));
        let paths: Vec<(u32, u32)> =
            t.siblings(TABLE_MAIN, prefix).iter().map(|p| (p.oif, p.weight)).collect();
        assert_eq!(paths, [(3, 1), (4, 3)], "the siblings with their weights");
        // A message about one sibling alone has no weight: it still names that sibling.
        assert_eq!(action(t.remove(&route("2001:2::/48", TABLE_MAIN, 1024, b))), Some(a));
        // A sibling without a gateway makes the set the kernel's.
        t.add(route("2001:2::/48", TABLE_MAIN, 1024, DEV), Place::Append);
        assert_eq!(t.get(TABLE_MAIN, prefix).map(|r| r.action), Some(Action::Kernel));
        assert_eq!(action(t.replace(route("2001:2::/48", TABLE_MAIN, 1024, b))), Some(b));
        assert_eq!(action(t.remove(&route("2001:2::/48", TABLE_MAIN, 1024, b))), None);
    }

    #[test]
    fn prefixes_of_one_table_and_family() {
        let mut t = RouteTable::default();
        t.add(route("198.18.1.1/32", TABLE_LOCAL, 0, Action::Kernel), Place::Append);
        t.add(route("2001:2::1/128", TABLE_LOCAL, 0, Action::Kernel), Place::Append);
        t.add(route("198.18.1.0/24", TABLE_MAIN, 0, DEV), Place::Append);
        t.add(route("10.0.0.0/8", 100, 0, DEV), Place::Append);
        let v4: Vec<String> =
            t.prefixes(TABLE_LOCAL, false).iter().map(|p| p.to_string()).collect();
        assert_eq!(v4, ["198.18.1.1/32"]);
        assert_eq!(t.prefixes(TABLE_LOCAL, true).len(), 1);
        assert_eq!(
            t.get(TABLE_MAIN, "198.18.1.0/24".parse().unwrap()).map(|r| r.action),
            Some(DEV)
        );
        assert_eq!(t.get(TABLE_MAIN, "198.18.1.1/32".parse().unwrap()), None);
    }

    #[test]
    fn a_deleted_nexthop_takes_its_routes() {
        let mut t = RouteTable::default();
        t.add(route("198.51.100.0/24", TABLE_MAIN, 0, Action::Nexthop { id: 6 }), Place::Append);
        t.add(route("198.51.0.0/16", 100, 0, Action::Nexthop { id: 6 }), Place::Append);
        t.add(route("198.51.100.0/24", TABLE_MAIN, 10, DEV), Place::Append);
        assert_eq!(t.using_nexthop(6).len(), 2);
        let changed = t.remove_nexthop(6);
        assert_eq!(changed.len(), 2);
        assert!(
            changed.iter().any(|(tb, _, r)| *tb == TABLE_MAIN && r.map(|r| r.action) == Some(DEV))
        );
        assert!(changed.iter().any(|(tb, _, r)| *tb == 100 && r.is_none()));
    }
}

#[cfg(test)]
mod parse_tests {
    use std::net::Ipv4Addr;

    use netlink_packet_route::route::{RouteHeader, RouteNextHop};

    use super::*;

    fn message(table: u8, kind: RouteType, attrs: Vec<RouteAttribute>) -> RouteMessage {
        let mut msg = RouteMessage::default();
        msg.header = RouteHeader {
            address_family: AddressFamily::Inet,
            destination_prefix_length: 24,
            table,
            kind,
            ..RouteHeader::default()
        };
        msg.attributes = attrs;
        msg
    }

    fn dst() -> RouteAttribute {
        RouteAttribute::Destination(RouteAddress::Inet(Ipv4Addr::new(198, 51, 100, 0)))
    }

    fn parse(msg: &RouteMessage) -> Route {
        Route::from_message(msg).unwrap().route
    }

    #[test]
    fn ipv6_routes_from_router_advertisements_are_the_kernels() {
        let mut ra = message(
            254,
            RouteType::Unicast,
            vec![
                RouteAttribute::Gateway(RouteAddress::Inet6("fe80::1".parse().unwrap())),
                RouteAttribute::Oif(3),
            ],
        );
        ra.header.address_family = AddressFamily::Inet6;
        ra.header.destination_prefix_length = 0;
        ra.header.protocol = RouteProtocol::Ra;
        assert_eq!(parse(&ra).action, Action::Kernel, "never an ECMP set, chosen by the kernel");
        ra.header.protocol = RouteProtocol::Static;
        assert!(matches!(parse(&ra).action, Action::Unicast { .. }));
    }

    #[test]
    fn an_ipv6_address_prefix_route_brings_its_subnet_router_anycast() {
        let prefix = |len: u8, protocol, gateway: Option<&str>| {
            let mut attrs = vec![
                RouteAttribute::Destination(RouteAddress::Inet6("2001:2:0:2::".parse().unwrap())),
                RouteAttribute::Oif(7),
            ];
            if let Some(g) = gateway {
                attrs.push(RouteAttribute::Gateway(RouteAddress::Inet6(g.parse().unwrap())));
            }
            let mut msg = message(254, RouteType::Unicast, attrs);
            msg.header.address_family = AddressFamily::Inet6;
            msg.header.destination_prefix_length = len;
            msg.header.protocol = protocol;
            msg
        };
        let msg = prefix(64, RouteProtocol::Kernel, None);
        let anycast = parse(&msg).subnet_router_anycast(&msg).unwrap();
        assert_eq!(anycast.prefix, "2001:2::2:0:0:0:0/128".parse::<IpNet>().unwrap());
        assert_eq!((anycast.table, anycast.action), (TABLE_LOCAL, Action::Kernel));
        assert_eq!(anycast.metric, u32::MAX - 7, "one per interface");
        for (msg, why) in [
            (prefix(127, RouteProtocol::Kernel, None), "RFC 6164"),
            (prefix(64, RouteProtocol::Static, None), "a route a user added"),
            (prefix(64, RouteProtocol::Kernel, Some("fe80::1")), "through a gateway"),
        ] {
            assert_eq!(parse(&msg).subnet_router_anycast(&msg), None, "{why}");
        }
        let v4 = message(254, RouteType::Unicast, vec![dst(), RouteAttribute::Oif(3)]);
        assert_eq!(parse(&v4).subnet_router_anycast(&v4), None, "IPv4");
    }

    #[test]
    fn ipv4_routes_may_go_through_ipv6_gateways_not_the_reverse() {
        let gw6: Ipv6Addr = "2001:2:0:2::2".parse().unwrap();
        let via = message(
            254,
            RouteType::Unicast,
            vec![dst(), RouteAttribute::Via(RouteVia::Inet6(gw6)), RouteAttribute::Oif(3)],
        );
        assert_eq!(
            parse(&via).action,
            Action::Unicast { oif: 3, gateway: Some(IpAddr::V6(gw6)) },
            "RFC 5549: `via inet6`"
        );
        let mut v6 = message(
            254,
            RouteType::Unicast,
            vec![
                RouteAttribute::Via(RouteVia::Inet(Ipv4Addr::new(198, 18, 2, 2))),
                RouteAttribute::Oif(3),
            ],
        );
        v6.header.address_family = AddressFamily::Inet6;
        v6.header.destination_prefix_length = 0;
        assert_eq!(parse(&v6).action, Action::Kernel, "an IPv6 route via IPv4: the kernel's");
    }

    #[test]
    fn next_hop_is_the_gateway_or_on_link() {
        let gw = Ipv4Addr::new(198, 19, 0, 1);
        let via = message(
            254,
            RouteType::Unicast,
            vec![dst(), RouteAttribute::Gateway(RouteAddress::Inet(gw)), RouteAttribute::Oif(3)],
        );
        let r = parse(&via);
        assert_eq!(r.prefix, "198.51.100.0/24".parse::<IpNet>().unwrap());
        assert_eq!(r.action, Action::Unicast { oif: 3, gateway: Some(IpAddr::V4(gw)) });
        let dev = message(
            254,
            RouteType::Unicast,
            vec![
                dst(),
                RouteAttribute::Oif(4),
                RouteAttribute::Priority(100),
                RouteAttribute::Metrics(vec![RouteMetric::Mtu(1400)]),
            ],
        );
        let r = parse(&dev);
        assert_eq!(
            (r.action, r.metric, r.mtu),
            (Action::Unicast { oif: 4, gateway: None }, 100, 1400)
        );
    }

    #[test]
    fn special_routes_go_to_the_kernel_and_throw_continues() {
        let local = message(255, RouteType::Local, vec![dst(), RouteAttribute::Oif(3)]);
        assert_eq!(parse(&local).action, Action::Kernel);
        assert_eq!(parse(&message(254, RouteType::BlackHole, vec![dst()])).action, Action::Kernel);
        let unreachable = parse(&message(254, RouteType::Unreachable, vec![dst()]));
        assert_eq!(unreachable.action, Action::Unreachable);
        assert_eq!(parse(&message(254, RouteType::Prohibit, vec![dst()])).action, Action::Prohibit);
        assert_eq!(parse(&message(100, RouteType::Throw, vec![dst()])).action, Action::Throw);
        let mut big_table = message(
            252,
            RouteType::Unicast,
            vec![dst(), RouteAttribute::Oif(3), RouteAttribute::Table(1000)],
        );
        big_table.header.table = 252;
        assert_eq!(parse(&big_table).table, 1000, "RTA_TABLE wins over the header");
    }

    #[test]
    fn nexthop_objects_and_multipath_are_kept() {
        let nh = message(254, RouteType::Unicast, vec![dst(), RouteAttribute::NhId(6)]);
        assert_eq!(parse(&nh).action, Action::Nexthop { id: 6 });
        let hop = |oif: u32, gw: [u8; 4], hops: u8| {
            let mut h = RouteNextHop::default();
            h.interface_index = oif;
            h.hops = hops;
            h.attributes = vec![RouteAttribute::Gateway(RouteAddress::Inet(gw.into()))];
            h
        };
        let mp = message(
            254,
            RouteType::Unicast,
            vec![
                dst(),
                RouteAttribute::MultiPath(vec![
                    hop(3, [198, 18, 1, 2], 0),
                    hop(4, [198, 18, 2, 2], 1),
                ]),
            ],
        );
        let parsed = Route::from_message(&mp).unwrap();
        assert_eq!(parsed.route.action, Action::Nexthop { id: 0 });
        assert_eq!(parsed.paths.len(), 2);
        assert_eq!(parsed.paths[1].weight, 2, "rtnh_hops is the weight minus one");
        let mut dead = hop(3, [198, 18, 1, 2], 0);
        dead.flags = RouteNextHopFlags::Dead;
        let with_dead =
            message(254, RouteType::Unicast, vec![dst(), RouteAttribute::MultiPath(vec![dead])]);
        assert_eq!(parse(&with_dead).action, Action::Kernel);
        let mut v6 = RouteNextHop::default();
        v6.interface_index = 3;
        v6.attributes =
            vec![RouteAttribute::Gateway(RouteAddress::Inet6("2001:2:0:2::2".parse().unwrap()))];
        let mut mp6 =
            message(254, RouteType::Unicast, vec![RouteAttribute::MultiPath(vec![v6.clone(), v6])]);
        mp6.header.address_family = AddressFamily::Inet6;
        mp6.header.destination_prefix_length = 0;
        let parsed = Route::from_message(&mp6).unwrap();
        assert_eq!(parsed.route.action, Action::Nexthop { id: 0 }, "IPv6 multipath: its paths");
        assert_eq!(parsed.paths.len(), 2, "the control plane mirrors them as siblings");
    }
}
