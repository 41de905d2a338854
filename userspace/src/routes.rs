//! The kernel's routes as the XDP program needs them: for each prefix of the `local` and
//! `main` tables, the one route the kernel would use, reduced to "unicast out of `oif` via
//! `gateway`" or "leave it to the kernel".
//!
//! Pure logic over parsed route messages; [`crate::control`] feeds it netlink events and writes
//! what changes into the BPF tries.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::IpNet;
use netlink_packet_route::{
    AddressFamily,
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteType},
};

/// `RT_TABLE_MAIN`.
pub const TABLE_MAIN: u32 = 254;
/// `RT_TABLE_LOCAL`: local and broadcast addresses; consulted before `main`.
pub const TABLE_LOCAL: u32 = 255;
/// xdpfwd's own table: the configuration's static routes, consulted after `local` and before
/// `main` (outside the kernel's 8-bit and 32-bit table ids in use).
pub const TABLE_STATIC: u32 = u32::MAX;

/// What the XDP program does with a destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// Forward out of `oif`, to `gateway` or, when `None`, to the destination itself.
    Unicast { oif: u32, gateway: Option<IpAddr> },
    /// Let the kernel handle it (local, broadcast, blackhole, multipath, ...).
    Kernel,
    /// A static route of the configuration: out of `oif`, to the neighbour `via` or the fixed
    /// `mac`, tagged with `vlan` (0: none).
    Static { oif: u32, via: Option<IpAddr>, mac: Option<[u8; 6]>, vlan: u16 },
}

/// One route, as far as route selection is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Route {
    pub prefix: IpNet,
    pub table: u32,
    pub metric: u32,
    pub tos: u8,
    pub action: Action,
}

impl Route {
    /// Parses a route message; `None` for routes of other tables or families.
    pub fn from_message(msg: &RouteMessage) -> Option<Route> {
        let mut table = u32::from(msg.header.table);
        let mut dst: Option<IpAddr> = None;
        let mut gateway: Option<IpAddr> = None;
        let mut oif = 0;
        let mut metric = 0;
        let mut complex = false;
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Table(t) => table = *t,
                RouteAttribute::Destination(a) => dst = address(a),
                RouteAttribute::Gateway(a) => gateway = address(a),
                RouteAttribute::Oif(i) => oif = *i,
                RouteAttribute::Priority(p) => metric = *p,
                RouteAttribute::MultiPath(_)
                | RouteAttribute::Via(_)
                | RouteAttribute::Encap(_)
                | RouteAttribute::EncapType(_)
                | RouteAttribute::NhId(_) => complex = true,
                _ => {}
            }
        }
        if table != TABLE_MAIN && table != TABLE_LOCAL {
            return None;
        }
        let len = msg.header.destination_prefix_length;
        let prefix = match msg.header.address_family {
            AddressFamily::Inet => {
                IpNet::new(dst.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)), len).ok()?
            }
            AddressFamily::Inet6 => {
                IpNet::new(dst.unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED)), len).ok()?
            }
            _ => return None,
        };
        let unicast = msg.header.kind == RouteType::Unicast
            && table == TABLE_MAIN
            && !complex
            && oif != 0
            && msg.header.tos == 0
            && msg.header.source_prefix_length == 0;
        let action = if unicast { Action::Unicast { oif, gateway } } else { Action::Kernel };
        Some(Route { prefix: prefix.trunc(), table, metric, tos: msg.header.tos, action })
    }
}

fn address(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// All mirrored routes, grouped by prefix.
#[derive(Debug, Default)]
pub struct RouteTable {
    by_prefix: BTreeMap<IpNet, Vec<Route>>,
}

impl RouteTable {
    /// Adds or replaces a route; returns the prefix's new effective action.
    pub fn add(&mut self, route: Route) -> Option<Action> {
        let routes = self.by_prefix.entry(route.prefix).or_default();
        // The kernel identifies a route by table, prefix, tos, metric (and next hop, for
        // IPv6 siblings).
        routes.retain(|r| !same_identity(r, &route));
        routes.push(route);
        Self::effective(routes)
    }

    /// Replaces every route of the same prefix, table, metric and TOS (an `NLM_F_REPLACE`
    /// update: for IPv6 the kernel drops the old next hops without a `RTM_DELROUTE`); returns
    /// the prefix's new effective action.
    pub fn replace(&mut self, route: Route) -> Option<Action> {
        let routes = self.by_prefix.entry(route.prefix).or_default();
        routes.retain(|r| {
            !(r.table == route.table && r.metric == route.metric && r.tos == route.tos)
        });
        routes.push(route);
        Self::effective(routes)
    }

    /// Removes a route; returns the prefix's new effective action (`None`: no route left).
    pub fn remove(&mut self, route: &Route) -> Option<Action> {
        let routes = self.by_prefix.get_mut(&route.prefix)?;
        routes.retain(|r| !same_identity(r, route));
        let action = Self::effective(routes);
        if routes.is_empty() {
            self.by_prefix.remove(&route.prefix);
        }
        action
    }

    /// Every prefix with its effective action.
    pub fn actions(&self) -> impl Iterator<Item = (IpNet, Action)> + '_ {
        self.by_prefix.iter().filter_map(|(p, r)| Some((*p, Self::effective(r)?)))
    }

    /// The effective action of the longest prefix holding `addr` among the kernel's own
    /// routes (static routes left out).
    pub fn lookup_kernel(&self, addr: IpAddr) -> Option<Action> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (0..=max).rev().find_map(|len| {
            let net = IpNet::new(addr, len).ok()?.trunc();
            let routes: Vec<Route> = self
                .by_prefix
                .get(&net)?
                .iter()
                .filter(|r| r.table != TABLE_STATIC)
                .copied()
                .collect();
            Self::effective(&routes)
        })
    }

    /// The route used for a prefix: `local` before xdpfwd's static routes before `main`, then
    /// the lowest metric; several routes at that metric (ECMP siblings) are left to the kernel.
    fn effective(routes: &[Route]) -> Option<Action> {
        let best = routes
            .iter()
            .min_by_key(|r| (r.table != TABLE_LOCAL, r.table != TABLE_STATIC, r.metric, r.tos))?;
        if best.table == TABLE_LOCAL {
            return Some(Action::Kernel);
        }
        if best.table == TABLE_STATIC {
            return Some(best.action);
        }
        let siblings = routes
            .iter()
            .filter(|r| r.table == best.table && r.metric == best.metric && r.tos == best.tos)
            .count();
        Some(if siblings > 1 { Action::Kernel } else { best.action })
    }
}

fn same_identity(a: &Route, b: &Route) -> bool {
    a.prefix == b.prefix
        && a.table == b.table
        && a.metric == b.metric
        && a.tos == b.tos
        && (a.prefix.addr().is_ipv4() || a.action == b.action)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(prefix: &str, table: u32, metric: u32, action: Action) -> Route {
        Route { prefix: prefix.parse().unwrap(), table, metric, tos: 0, action }
    }

    const VIA: Action =
        Action::Unicast { oif: 3, gateway: Some(IpAddr::V4(Ipv4Addr::new(198, 19, 0, 1))) };
    const DEV: Action = Action::Unicast { oif: 4, gateway: None };

    #[test]
    fn lowest_metric_wins_and_deletion_falls_back() {
        let mut t = RouteTable::default();
        assert_eq!(t.add(route("198.51.100.0/24", TABLE_MAIN, 200, VIA)), Some(VIA));
        assert_eq!(t.add(route("198.51.100.0/24", TABLE_MAIN, 100, DEV)), Some(DEV));
        assert_eq!(t.remove(&route("198.51.100.0/24", TABLE_MAIN, 100, DEV)), Some(VIA));
        assert_eq!(t.remove(&route("198.51.100.0/24", TABLE_MAIN, 200, VIA)), None);
        assert_eq!(t.actions().count(), 0);
    }

    #[test]
    fn local_table_shadows_main() {
        let mut t = RouteTable::default();
        t.add(route("198.18.0.1/32", TABLE_MAIN, 0, DEV));
        assert_eq!(
            t.add(route("198.18.0.1/32", TABLE_LOCAL, 0, Action::Kernel)),
            Some(Action::Kernel)
        );
    }

    #[test]
    fn static_routes_override_main_but_not_local() {
        let mut t = RouteTable::default();
        let fixed = Action::Static { oif: 5, via: None, mac: Some([2, 0, 0, 0, 0, 9]), vlan: 7 };
        t.add(route("198.51.100.0/24", TABLE_MAIN, 0, VIA));
        assert_eq!(t.add(route("198.51.100.0/24", TABLE_STATIC, 0, fixed)), Some(fixed));
        assert_eq!(
            t.add(route("198.51.100.0/24", TABLE_LOCAL, 0, Action::Kernel)),
            Some(Action::Kernel)
        );
        assert_eq!(
            t.lookup_kernel("198.51.100.7".parse().unwrap()),
            Some(Action::Kernel),
            "lookups for next hops see the kernel's routes only"
        );
        t.add(route("198.19.0.0/16", TABLE_MAIN, 0, DEV));
        t.add(route("198.19.0.0/16", TABLE_STATIC, 0, fixed));
        assert_eq!(t.lookup_kernel("198.19.3.4".parse().unwrap()), Some(DEV));
        assert_eq!(t.lookup_kernel("203.0.113.1".parse().unwrap()), None);
    }

    #[test]
    fn replace_keeps_one_route_per_identity() {
        let mut t = RouteTable::default();
        t.add(route("0.0.0.0/0", TABLE_MAIN, 0, VIA));
        assert_eq!(t.add(route("0.0.0.0/0", TABLE_MAIN, 0, DEV)), Some(DEV), "IPv4 replace");
    }

    #[test]
    fn ipv6_siblings_are_left_to_the_kernel() {
        let mut t = RouteTable::default();
        let a = Action::Unicast { oif: 3, gateway: Some("fe80::1".parse().unwrap()) };
        let b = Action::Unicast { oif: 4, gateway: Some("fe80::2".parse().unwrap()) };
        t.add(route("2001:db8::/32", TABLE_MAIN, 1024, a));
        assert_eq!(t.add(route("2001:db8::/32", TABLE_MAIN, 1024, b)), Some(Action::Kernel));
        assert_eq!(t.remove(&route("2001:db8::/32", TABLE_MAIN, 1024, b)), Some(a));
        assert_eq!(
            t.replace(route("2001:db8::/32", TABLE_MAIN, 1024, b)),
            Some(b),
            "replace drops a"
        );
        assert_eq!(t.remove(&route("2001:db8::/32", TABLE_MAIN, 1024, b)), None);
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

    #[test]
    fn next_hop_is_the_gateway_or_on_link() {
        let gw = Ipv4Addr::new(198, 19, 0, 1);
        let via = message(
            254,
            RouteType::Unicast,
            vec![dst(), RouteAttribute::Gateway(RouteAddress::Inet(gw)), RouteAttribute::Oif(3)],
        );
        let r = Route::from_message(&via).unwrap();
        assert_eq!(r.prefix, "198.51.100.0/24".parse::<IpNet>().unwrap());
        assert_eq!(r.action, Action::Unicast { oif: 3, gateway: Some(IpAddr::V4(gw)) });
        let dev = message(
            254,
            RouteType::Unicast,
            vec![dst(), RouteAttribute::Oif(4), RouteAttribute::Priority(100)],
        );
        let r = Route::from_message(&dev).unwrap();
        assert_eq!((r.action, r.metric), (Action::Unicast { oif: 4, gateway: None }, 100));
    }

    #[test]
    fn special_routes_go_to_the_kernel() {
        let local = message(255, RouteType::Local, vec![dst(), RouteAttribute::Oif(3)]);
        assert_eq!(Route::from_message(&local).unwrap().action, Action::Kernel);
        let blackhole = message(254, RouteType::BlackHole, vec![dst()]);
        assert_eq!(Route::from_message(&blackhole).unwrap().action, Action::Kernel);
        let multipath = message(
            254,
            RouteType::Unicast,
            vec![dst(), RouteAttribute::MultiPath(vec![RouteNextHop::default()])],
        );
        assert_eq!(Route::from_message(&multipath).unwrap().action, Action::Kernel);
        let other_table = message(100, RouteType::Unicast, vec![dst(), RouteAttribute::Oif(3)]);
        assert_eq!(Route::from_message(&other_table), None);
        let mut big_table = message(
            252,
            RouteType::Unicast,
            vec![dst(), RouteAttribute::Oif(3), RouteAttribute::Table(254)],
        );
        big_table.header.table = 252;
        assert!(Route::from_message(&big_table).is_some(), "RTA_TABLE wins over the header");
    }
}
