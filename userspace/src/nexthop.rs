//! Kernel nexthop objects (`ip nexthop`, what FRR installs every route through) and the
//! multipath sets of `RTA_MULTIPATH` routes, and their publication to the XDP program.
//!
//! netlink-packet-route has no nexthop messages, so this module reads them itself from a
//! socket of its own (`RTNLGRP_NEXTHOP`, a dump first) on a thread that hands parsed events
//! to the control plane. [`Nexthops`] resolves an id to its paths and publishes them as an
//! immutable [`NhGroup`] in `NH_GROUPS`, then points the id's slot in `NH_SLOTS` at it with
//! one word: routes follow a nexthop's changes without being rewritten, and the XDP program
//! always reads a whole group. Anything it cannot mirror (blackhole, resilient groups, FDB
//! nexthops, encapsulation, more than `MAX_PATHS` paths) publishes 0: the kernel decides.

use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{Array, MapData};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use tokio::sync::mpsc::UnboundedSender;
use xdpfwd_common::{
    HopFlags, MAX_NH_GROUPS, MAX_NH_SLOTS, MAX_PATHS, NhGroup, NhPath, upper_bounds,
};

use crate::{routes::Path, sockopt};

const RTM_NEWNEXTHOP: u16 = 104;
const RTM_DELNEXTHOP: u16 = 105;
const RTM_GETNEXTHOP: u16 = 106;
const RTNLGRP_NEXTHOP: u32 = 32;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_OVERRUN: u16 = 4;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NHA_ID: u16 = 1;
const NHA_GROUP: u16 = 2;
const NHA_GROUP_TYPE: u16 = 3;
const NHA_BLACKHOLE: u16 = 4;
const NHA_OIF: u16 = 5;
const NHA_GATEWAY: u16 = 6;
const NHA_ENCAP_TYPE: u16 = 7;
const NHA_ENCAP: u16 = 8;
const NHA_FDB: u16 = 11;
/// `struct nhmsg`: family, scope, protocol, reserved, flags.
const NHMSG_LEN: usize = 8;
const NEXTHOP_GRP_TYPE_MPATH: u16 = 0;

/// A nexthop object as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Nexthop {
    /// Out of `oif`, through `gateway` (`None`: on-link).
    Single { oif: u32, gateway: Option<IpAddr> },
    /// A hash-threshold group of other nexthops, with weights.
    Group(Vec<(u32, u32)>),
    /// Blackhole, resilient group, FDB nexthop, encapsulation: the kernel decides.
    Kernel,
}

/// What the nexthop socket reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NhEvent {
    Set(u32, Nexthop),
    Del(u32),
    /// The end of the initial dump.
    Synced,
    /// The socket overran: events were lost.
    Overrun,
    /// The kernel refused a dump for now (busy, or no room for its answer): ask again. The
    /// reader handles it; the control plane never sees it.
    Refused,
}

/// Parses one `RTM_NEWNEXTHOP` / `RTM_DELNEXTHOP` payload (after the netlink header).
pub fn parse(kind: u16, payload: &[u8]) -> Option<NhEvent> {
    let attrs = payload.get(NHMSG_LEN..)?;
    let mut id = None;
    let mut oif = 0;
    let mut gateway = None;
    let mut group = None;
    let mut kernel = false;
    let mut at = 0;
    while at + 4 <= attrs.len() {
        let len = usize::from(u16::from_ne_bytes([attrs[at], attrs[at + 1]]));
        let kind = u16::from_ne_bytes([attrs[at + 2], attrs[at + 3]]) & 0x3fff;
        if len < 4 || at + len > attrs.len() {
            return None;
        }
        let value = &attrs[at + 4..at + len];
        let u32_of = |v: &[u8]| v.get(..4).map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
        match kind {
            NHA_ID => id = u32_of(value),
            NHA_OIF => oif = u32_of(value)?,
            NHA_GATEWAY => {
                gateway = match value.len() {
                    4 => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(value).ok()?))),
                    16 => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(value).ok()?))),
                    _ => return None,
                }
            }
            NHA_GROUP => {
                // struct nexthop_grp: id, weight - 1 (low byte), weight_high, reserved.
                group = Some(
                    value
                        .chunks_exact(8)
                        .map(|e| {
                            let id = u32::from_ne_bytes([e[0], e[1], e[2], e[3]]);
                            let weight = (u32::from(e[5]) << 8 | u32::from(e[4])) + 1;
                            (id, weight)
                        })
                        .collect::<Vec<_>>(),
                )
            }
            NHA_GROUP_TYPE => {
                kernel |= value.get(..2).map(|b| u16::from_ne_bytes([b[0], b[1]]))
                    != Some(NEXTHOP_GRP_TYPE_MPATH)
            }
            NHA_BLACKHOLE | NHA_ENCAP_TYPE | NHA_ENCAP | NHA_FDB => kernel = true,
            _ => {}
        }
        at += (len + 3) & !3;
    }
    let id = id?;
    if kind == RTM_DELNEXTHOP {
        return Some(NhEvent::Del(id));
    }
    let nh = match group {
        _ if kernel => Nexthop::Kernel,
        Some(members) => Nexthop::Group(members),
        None if oif != 0 => Nexthop::Single { oif, gateway },
        None => Nexthop::Kernel,
    };
    Some(NhEvent::Set(id, nh))
}

/// Starts the thread that reads nexthop messages (dump, then events) until `stopped()`
/// (checked every 200 ms) or the receiver is gone. `rx_buf`: the socket's receive buffer.
pub fn spawn_reader(
    stopped: impl Fn() -> bool + Send + 'static,
    tx: UnboundedSender<NhEvent>,
    rx_buf: u32,
) -> anyhow::Result<thread::JoinHandle<()>> {
    let mut socket = Socket::new(NETLINK_ROUTE).context("opening the nexthop netlink socket")?;
    socket.bind_auto().context("binding the nexthop netlink socket")?;
    socket.add_membership(RTNLGRP_NEXTHOP).context("joining RTNLGRP_NEXTHOP")?;
    let granted = sockopt::force_rx_buf(&socket, rx_buf).context("sizing the nexthop socket")?;
    tracing::debug!(granted, "nexthop socket receive buffer");
    sockopt::set_timeout(&socket, Duration::from_millis(200));
    let mut reader = Reader { socket, dumping: false, again: false, heard: Instant::now() };
    reader.dump()?;
    let handle = thread::Builder::new()
        .name("xdpfwd-nexthops".into())
        .spawn(move || reader.run(&stopped, &tx))
        .context("starting the nexthop thread")?;
    Ok(handle)
}

/// The nexthop socket and its dump: one at a time (the kernel refuses a second), repeated
/// when events were lost while it ran, so the [`NhEvent::Synced`] that ends it follows a
/// dump that began after the last loss.
struct Reader {
    socket: Socket,
    dumping: bool,
    /// Events were lost during the running dump: dump again when it ends.
    again: bool,
    /// When the running dump last answered: one silent for [`DUMP_STALL`] was lost (its
    /// answer did not fit the buffer) and is asked again.
    heard: Instant,
}

/// How long a running dump may stay silent before it is asked again.
const DUMP_STALL: Duration = Duration::from_secs(2);

impl Reader {
    /// Asks the kernel for every nexthop object.
    fn dump(&mut self) -> anyhow::Result<()> {
        // nlmsghdr (16 bytes) + nhmsg (8 bytes, family AF_UNSPEC).
        let mut req = [0u8; 24];
        req[0..4].copy_from_slice(&24u32.to_ne_bytes());
        req[4..6].copy_from_slice(&RTM_GETNEXTHOP.to_ne_bytes());
        req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        req[8..12].copy_from_slice(&1u32.to_ne_bytes());
        self.socket.send_to(&req, &SocketAddr::new(0, 0), 0).context("dumping nexthops")?;
        (self.dumping, self.again, self.heard) = (true, false, Instant::now());
        Ok(())
    }

    /// Events were lost: say so, and read every object again.
    fn lost(&mut self, tx: &UnboundedSender<NhEvent>) -> anyhow::Result<()> {
        let _ = tx.send(NhEvent::Overrun);
        if self.dumping {
            self.again = true;
            return Ok(());
        }
        self.dump()
    }

    /// Every receive timeout: a dump refused, or silent for too long, is asked again.
    fn tick(&mut self) -> anyhow::Result<()> {
        if self.dumping && self.heard.elapsed() > DUMP_STALL {
            tracing::debug!("the nexthop dump went silent: asking again");
            (self.dumping, self.again) = (false, true);
        }
        if !self.dumping && self.again {
            self.dump()?;
        }
        Ok(())
    }

    /// The end of a dump: a [`NhEvent::Synced`], or another dump if events were lost.
    fn dumped(&mut self) -> anyhow::Result<Option<NhEvent>> {
        if std::mem::take(&mut self.again) {
            self.dump()?;
            return Ok(None);
        }
        self.dumping = false;
        Ok(Some(NhEvent::Synced))
    }

    fn run(mut self, stopped: &impl Fn() -> bool, tx: &UnboundedSender<NhEvent>) {
        if let Err(e) = self.read(stopped, tx) {
            tracing::error!("reading nexthop events failed: {e:#}");
        }
    }

    fn read(
        &mut self,
        stopped: &impl Fn() -> bool,
        tx: &UnboundedSender<NhEvent>,
    ) -> anyhow::Result<()> {
        let mut buf = vec![0u8; 1 << 16];
        while !stopped() {
            let n = match self.socket.recv(&mut &mut buf[..], 0) {
                Ok(n) => n,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    self.lost(tx)?;
                    continue;
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR)) => {
                    self.tick()?;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            // Answers to the dump carry its sequence number (1); events carry 0.
            if buf.get(8..12) == Some(&1u32.to_ne_bytes()[..]) {
                self.heard = Instant::now();
            }
            for event in messages(&buf[..n]) {
                let event = match event {
                    NhEvent::Synced => self.dumped()?,
                    NhEvent::Refused => {
                        // Asked again at the next tick.
                        (self.dumping, self.again) = (false, true);
                        None
                    }
                    NhEvent::Overrun => {
                        self.lost(tx)?;
                        None
                    }
                    other => Some(other),
                };
                if let Some(event) = event
                    && tx.send(event).is_err()
                {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

/// The events in one datagram of netlink messages.
pub fn messages(mut data: &[u8]) -> Vec<NhEvent> {
    let mut out = Vec::new();
    while data.len() >= 16 {
        let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
        let kind = u16::from_ne_bytes([data[4], data[5]]);
        if len < 16 || len > data.len() {
            break;
        }
        match kind {
            RTM_NEWNEXTHOP | RTM_DELNEXTHOP => out.extend(parse(kind, &data[16..len])),
            NLMSG_DONE => out.push(NhEvent::Synced),
            NLMSG_OVERRUN => out.push(NhEvent::Overrun),
            NLMSG_ERROR => {
                let code =
                    data.get(16..20).map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                if [libc::ENOBUFS, libc::EBUSY, libc::EAGAIN, libc::EINTR].contains(&-code) {
                    out.push(NhEvent::Refused);
                } else {
                    // A dump refused for good (a kernel without nexthop objects): nothing to
                    // mirror.
                    out.push(NhEvent::Synced);
                }
            }
            _ => {}
        }
        data = &data[((len + 3) & !3).min(data.len())..];
    }
    out
}

/// Ids of the multipath sets of `RTA_MULTIPATH` routes start here (above kernel ids in use).
const ANON_BASE: u32 = 0x8000_0000;

/// The nexthop objects and multipath sets, their slots and published groups.
pub struct Nexthops {
    objects: HashMap<u32, Nexthop>,
    /// Multipath sets of routes, by id (from [`ANON_BASE`]) and by their paths.
    anon: HashMap<Vec<Path>, u32>,
    anon_paths: HashMap<u32, Vec<Path>>,
    /// Slot of (id, IPv6 route) in `NH_SLOTS`, and the group index published there.
    slots: HashMap<(u32, bool), (u32, u32)>,
    /// Slots not in use, oldest first (as groups: reused as late as possible).
    free_slots: VecDeque<u32>,
    /// Group indices not in use, oldest first: an index is reused as late as possible, long
    /// after any frame that read the old group is gone.
    free_groups: VecDeque<u32>,
    pub nh_slots: Array<MapData, u32>,
    pub nh_groups: Array<MapData, NhGroup>,
}

impl Nexthops {
    pub fn new(nh_slots: Array<MapData, u32>, nh_groups: Array<MapData, NhGroup>) -> Self {
        Self {
            objects: HashMap::new(),
            anon: HashMap::new(),
            anon_paths: HashMap::new(),
            slots: HashMap::new(),
            free_slots: (1..MAX_NH_SLOTS).collect(),
            free_groups: (1..MAX_NH_GROUPS).collect(),
            nh_slots,
            nh_groups,
        }
    }

    /// The id of a route's multipath set (registered on first use).
    pub fn multipath(&mut self, paths: Vec<Path>) -> u32 {
        if let Some(id) = self.anon.get(&paths) {
            return *id;
        }
        let id = ANON_BASE + self.anon.len() as u32;
        self.anon_paths.insert(id, paths.clone());
        self.anon.insert(paths, id);
        id
    }

    /// A nexthop object was added or changed: republishes every slot it affects (its own and
    /// those of the groups holding it).
    pub fn set(&mut self, id: u32, nh: Nexthop) {
        self.objects.insert(id, nh);
        self.republish(id);
    }

    /// Nexthop objects and multipath sets known.
    pub fn len(&self) -> usize {
        self.objects.len() + self.anon_paths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The ids of the kernel's nexthop objects known.
    pub fn ids(&self) -> Vec<u32> {
        self.objects.keys().copied().collect()
    }

    /// A nexthop object was deleted: its slots publish "the kernel" (frames of routes still
    /// pointing there, until the caller removes them, go to the kernel).
    pub fn remove(&mut self, id: u32) {
        self.objects.remove(&id);
        self.republish(id);
    }

    /// No route points at `slot` any more: it is freed with its group and reused as late as
    /// possible, so that routing daemons creating objects and path sets for ever never run
    /// out of them. The next route through its nexthop gets a new one.
    pub fn release_slot(&mut self, slot: u32) {
        let Some(key) = self.slots.iter().find(|(_, (s, _))| *s == slot).map(|(k, _)| *k) else {
            return;
        };
        let Some((_, group)) = self.slots.remove(&key) else { return };
        if let Err(err) = self.nh_slots.set(slot, 0, 0) {
            tracing::warn!(%err, "clearing a nexthop slot failed");
        }
        if group != 0 {
            self.free_groups.push_back(group);
        }
        self.free_slots.push_back(slot);
    }

    fn republish(&mut self, id: u32) {
        let affected: Vec<(u32, bool)> = self
            .slots
            .keys()
            .filter(|(slot_id, _)| {
                *slot_id == id
                    || matches!(self.objects.get(slot_id), Some(Nexthop::Group(m)) if m.iter().any(|(m, _)| *m == id))
            })
            .copied()
            .collect();
        for key in affected {
            self.publish(key);
        }
    }

    /// The slot routes of family `v6` through `id` point at (allocated and published on
    /// first use); `None` when the slots are exhausted.
    pub fn slot(&mut self, id: u32, v6: bool) -> Option<u32> {
        if let Some((slot, _)) = self.slots.get(&(id, v6)) {
            return Some(*slot);
        }
        let slot = self.free_slots.pop_front()?;
        self.slots.insert((id, v6), (slot, 0));
        self.publish((id, v6));
        Some(slot)
    }

    /// The paths of `id` for routes of family `v6`; `None`: the kernel decides.
    pub fn paths(&self, id: u32, v6: bool) -> Option<Vec<Path>> {
        let paths = if let Some(p) = self.anon_paths.get(&id) {
            p.clone()
        } else {
            match self.objects.get(&id)? {
                Nexthop::Single { oif, gateway } => {
                    vec![Path { oif: *oif, gateway: *gateway, weight: 1 }]
                }
                Nexthop::Group(members) => members
                    .iter()
                    .map(|(m, weight)| match self.objects.get(m)? {
                        Nexthop::Single { oif, gateway } => {
                            Some(Path { oif: *oif, gateway: *gateway, weight: *weight })
                        }
                        _ => None,
                    })
                    .collect::<Option<Vec<_>>>()?,
                Nexthop::Kernel => return None,
            }
        };
        // IPv4 routes may go through IPv6 gateways (RFC 5549), IPv6 routes only through IPv6.
        let family_ok = paths.iter().all(|p| p.gateway.is_none_or(|g| !v6 || g.is_ipv6()));
        (!paths.is_empty() && paths.len() <= MAX_PATHS as usize && family_ok).then_some(paths)
    }

    /// Publishes the group of slot `key` as a new immutable group, then switches the slot.
    fn publish(&mut self, key: (u32, bool)) {
        let Some(&(slot, old)) = self.slots.get(&key) else { return };
        let group = self.paths(key.0, key.1).map(|p| group_of(&p));
        let index = match group {
            Some(group) => match self.free_groups.pop_front() {
                Some(index) => {
                    if let Err(err) = self.nh_groups.set(index, group, 0) {
                        tracing::warn!(%err, "writing a nexthop group failed: the kernel forwards through it");
                        self.free_groups.push_back(index);
                        0
                    } else {
                        index
                    }
                }
                None => {
                    tracing::warn!(
                        "nexthop groups exhausted: the kernel forwards through new ones"
                    );
                    0
                }
            },
            None => 0,
        };
        if let Err(err) = self.nh_slots.set(slot, index, 0) {
            tracing::warn!(%err, "switching a nexthop slot failed");
        }
        if old != 0 {
            self.free_groups.push_back(old);
        }
        self.slots.insert(key, (slot, index));
    }
}

/// The XDP program's group of `paths`, with the kernel's hash-threshold bounds.
pub fn group_of(paths: &[Path]) -> NhGroup {
    let mut group = NhGroup { count: paths.len() as u32, ..NhGroup::default() };
    let weights: Vec<u32> = paths.iter().map(|p| p.weight).collect();
    let mut bounds = vec![0u32; paths.len()];
    upper_bounds(&weights, &mut bounds);
    for ((slot, path), bound) in group.paths.iter_mut().zip(paths).zip(bounds) {
        let mut gateway = [0u8; 16];
        let mut hop = HopFlags::empty();
        match path.gateway {
            Some(IpAddr::V4(g)) => gateway[..4].copy_from_slice(&g.octets()),
            Some(IpAddr::V6(g)) => {
                gateway = g.octets();
                hop = HopFlags::GATEWAY_V6;
            }
            None => {}
        }
        *slot = NhPath { bound, oif: path.oif, gateway, hop };
    }
    group
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `NLMSG_ERROR` answering the dump, with `code`.
    fn error(code: i32) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&36u32.to_ne_bytes());
        m.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        m.extend_from_slice(&[0, 0]);
        m.extend_from_slice(&1u32.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&code.to_ne_bytes());
        m.extend_from_slice(&[0; 16]);
        m
    }

    #[test]
    fn a_dump_refused_for_now_is_asked_again_one_refused_for_good_ends() {
        assert_eq!(messages(&error(-libc::ENOBUFS)), [NhEvent::Refused]);
        assert_eq!(messages(&error(-libc::EBUSY)), [NhEvent::Refused]);
        assert_eq!(messages(&error(-libc::EOPNOTSUPP)), [NhEvent::Synced]);
    }

    /// An `RTM_NEWNEXTHOP` message as `ip nexthop add id 6 via 198.18.2.2 dev (3)` makes it.
    fn single() -> Vec<u8> {
        let mut m = vec![2, 0, 3, 0, 0, 0, 0, 0]; // AF_INET, scope, proto boot, flags
        m.extend_from_slice(&[8, 0, 1, 0, 6, 0, 0, 0]); // NHA_ID 6
        m.extend_from_slice(&[8, 0, 5, 0, 3, 0, 0, 0]); // NHA_OIF 3
        m.extend_from_slice(&[8, 0, 6, 0, 198, 18, 2, 2]); // NHA_GATEWAY
        m
    }

    #[test]
    fn parses_single_group_blackhole_and_delete() {
        assert_eq!(
            parse(RTM_NEWNEXTHOP, &single()),
            Some(NhEvent::Set(
                6,
                Nexthop::Single { oif: 3, gateway: Some("198.18.2.2".parse().unwrap()) }
            ))
        );
        let mut g = vec![0, 0, 3, 0, 0, 0, 0, 0];
        g.extend_from_slice(&[8, 0, 1, 0, 7, 0, 0, 0]);
        // NHA_GROUP: (6, weight 1), (8, weight 3)
        g.extend_from_slice(&[20, 0, 2, 0, 6, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 2, 0, 0, 0]);
        assert_eq!(
            parse(RTM_NEWNEXTHOP, &g),
            Some(NhEvent::Set(7, Nexthop::Group(vec![(6, 1), (8, 3)])))
        );
        let mut res = g.clone();
        res.extend_from_slice(&[6, 0, 3, 0, 1, 0, 0, 0]); // NHA_GROUP_TYPE resilient
        assert_eq!(parse(RTM_NEWNEXTHOP, &res), Some(NhEvent::Set(7, Nexthop::Kernel)));
        let mut bh = vec![2, 0, 3, 0, 0, 0, 0, 0];
        bh.extend_from_slice(&[8, 0, 1, 0, 9, 0, 0, 0, 4, 0, 4, 0]);
        assert_eq!(parse(RTM_NEWNEXTHOP, &bh), Some(NhEvent::Set(9, Nexthop::Kernel)));
        assert_eq!(parse(RTM_DELNEXTHOP, &single()), Some(NhEvent::Del(6)));
        assert_eq!(parse(RTM_NEWNEXTHOP, &single()[..14]), None, "truncated attribute");
    }

    #[test]
    fn datagrams_split_into_messages() {
        let mut d = Vec::new();
        let body = single();
        d.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        d.extend_from_slice(&RTM_NEWNEXTHOP.to_ne_bytes());
        d.extend_from_slice(&[0; 10]);
        d.extend_from_slice(&body);
        d.extend_from_slice(&20u32.to_ne_bytes());
        d.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
        d.extend_from_slice(&[0; 14]);
        let events = messages(&d);
        assert_eq!(events.len(), 2);
        assert_eq!(events[1], NhEvent::Synced);
    }

    #[test]
    fn groups_carry_the_kernels_bounds() {
        let p = |oif, w| Path { oif, gateway: None, weight: w };
        let g = group_of(&[p(3, 1), p(4, 3)]);
        assert_eq!(g.count, 2);
        assert_eq!(g.paths[0].bound, (1 << 29) - 1);
        assert_eq!(g.paths[1].bound, (1 << 31) - 1);
        assert_eq!(g.paths[1].oif, 4);
    }
}
