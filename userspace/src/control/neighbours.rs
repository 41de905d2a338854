//! Neighbours of the managed interfaces: mirrored into the XDP program's tables, resolved
//! when a worker waits for one, re-confirmed while xdpfwd sends to them.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
    },
    route::RouteType,
};
use rtnetlink::Handle;
use xdpfwd_common::{NeighKeyV4, NeighKeyV6, Neighbour};

use super::{Control, RESOLVE_INTERVAL, ignore_missing};
use crate::shared::Resolve;

/// The kernel's `NUD_VALID`: a neighbour frames may be sent to, and one its path selection
/// does not avoid (`ipv4_good_nh`, `ipv6_good_nh`).
pub(super) fn usable(state: NeighbourState) -> bool {
    matches!(
        state,
        NeighbourState::Reachable
            | NeighbourState::Stale
            | NeighbourState::Delay
            | NeighbourState::Probe
            | NeighbourState::Permanent
            | NeighbourState::Noarp
    )
}

impl Control {
    pub(super) fn on_neighbour(&mut self, msg: &NeighbourMessage, add: bool) {
        if let Some((ifindex, addr, mac)) = self.neighbour_of(msg, add) {
            self.set_neighbour(ifindex, addr, mac, msg.header.state);
            self.nexthops.set_neighbour_bad((ifindex, addr), add && !usable(msg.header.state));
        }
    }

    /// A neighbour message of a managed interface: its interface, address and the MAC frames
    /// may take (`None`: not usable, or removed).
    pub(super) fn neighbour_of(
        &self,
        msg: &NeighbourMessage,
        add: bool,
    ) -> Option<(u32, IpAddr, Option<[u8; 6]>)> {
        let ifindex = msg.header.ifindex;
        if !self.ifaces.iter().any(|i| i.ifindex == ifindex)
            || msg.header.flags.contains(NeighbourFlags::Proxy)
        {
            return None;
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
        Some((ifindex, addr?, mac.filter(|_| add && usable(msg.header.state))))
    }

    /// Publishes a neighbour's MAC (`None`: removes it) to the workers and the XDP program.
    pub(super) fn set_neighbour(
        &mut self,
        ifindex: u32,
        addr: IpAddr,
        mac: Option<[u8; 6]>,
        state: NeighbourState,
    ) {
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
                NeighKeyV6::new(ifindex, a.octets()),
                Neighbour { mac: m, ..Neighbour::default() },
                0,
            ),
            (IpAddr::V6(a), None) => {
                ignore_missing(self.maps.neigh_v6.remove(&NeighKeyV6::new(ifindex, a.octets())))
            }
        };
        if let Err(err) = result {
            tracing::warn!(%addr, %err, "updating the neighbour map failed");
        }
        match mac {
            Some(_) => {
                tracing::debug!(%addr, ifindex, ?state, "neighbour usable");
                self.neighbours.insert((ifindex, addr), state);
            }
            None => {
                self.neighbours.remove(&(ifindex, addr));
            }
        }
    }

    /// Asks the kernel to resolve a next hop a worker waits for (rate-limited).
    pub(super) async fn resolve(&mut self, handle: &mut Handle, req: Resolve) {
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
        } else if !self.neighbours.contains_key(&key) {
            // The kernel now holds an incomplete entry (it says so only when that fails):
            // its path selection avoids the neighbour until it answers.
            self.nexthops.set_neighbour_bad(key, true);
        }
    }

    /// Makes the kernel re-confirm stale neighbours, as it would if it forwarded to them.
    pub(super) async fn refresh_stale(&mut self, handle: &mut Handle) {
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
    pub(super) fn take_used(&mut self, ifindex: u32, addr: IpAddr) -> bool {
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
                let key = NeighKeyV6::new(ifindex, a.octets());
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
