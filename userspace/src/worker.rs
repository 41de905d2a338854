//! The data path: one thread that owns some AF_XDP sockets ([`Port`]s) and a share of the
//! UMEM's frames.
//!
//! Each iteration: reap completions (TX done → free), receive (RX → rewrite → pending TX of
//! the egress port, or held for a neighbour, or dropped → free), submit pending TX and kick the
//! kernel only when the ring asks for it, then refill the fill rings from the free list. With
//! no work for a while the thread sleeps in `poll()`.
//!
//! A frame has exactly one owner at a time: the free list, a fill ring (kernel), an RX ring
//! (kernel, then this worker), the pending TX list, a TX ring (kernel, until its completion),
//! or the hold queue. Nothing here allocates or copies payload per packet; buffers are sized at
//! start-up.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{Arc, atomic::Ordering::Relaxed},
    time::{Duration, Instant},
};

use tokio::sync::mpsc::UnboundedSender;
use xdpfwd_common::{
    CaptureFlags, ICMP_QUOTE_FORWARDED, IcmpError, META_LEN, MetaFlags, WorkerDrop, XskMeta,
};
use xsk_rs::{FrameDesc, Umem};

use crate::{
    alloc_count, capture, hold, icmp, rewrite,
    shared::{Resolve, Shared},
    stats::{PortStats, WorkerStats},
    xsk::{MAX_SEGMENTS, Port},
};

/// How long a frame waits for its next hop to be resolved before it is dropped (the kernel's
/// default ARP retransmit × probes is about 3 s).
pub const HOLD_TIMEOUT: Duration = Duration::from_secs(3);
/// How often resolution is requested again while frames wait for a next hop.
const RESOLVE_RETRY: Duration = Duration::from_millis(500);

/// The frames of one packet: one, or up to [`MAX_SEGMENTS`] with multi-buffer sockets.
#[derive(Clone, Copy)]
struct Parts {
    descs: [FrameDesc; MAX_SEGMENTS],
    count: usize,
}

impl Parts {
    /// `descs` (1 to [`MAX_SEGMENTS`] of them; more are cut off).
    fn of(descs: &[FrameDesc]) -> Self {
        let mut parts = Parts { descs: [FrameDesc::default(); MAX_SEGMENTS], count: 0 };
        let count = descs.len().min(MAX_SEGMENTS);
        parts.descs[..count].copy_from_slice(&descs[..count]);
        parts.count = count;
        parts
    }

    fn as_slice(&self) -> &[FrameDesc] {
        &self.descs[..self.count]
    }
}

struct Held {
    parts: Parts,
    port: usize,
    l3_off: usize,
    ipv6: bool,
    ifindex: u32,
    next_hop: IpAddr,
    deadline: Instant,
}

/// `XDP_PKT_CONTD` (`linux/if_xdp.h`): more UMEM frames of the packet follow this one
/// (sockets bound with `XDP_USE_SG`), on the RX ring and on the TX ring alike.
const XDP_PKT_CONTD: u32 = 1;

/// Whether `desc` is the last (or only) frame of its packet.
#[inline]
fn ends_packet(desc: &FrameDesc) -> bool {
    desc.options() & XDP_PKT_CONTD == 0
}

/// Per-port bookkeeping beside the rings.
struct PortState {
    /// The frames of a packet in more than one whose last has not been received yet (the RX
    /// ring may hand them over in more than one batch).
    partial: Vec<FrameDesc>,
    /// A packet of more frames than [`MAX_SEGMENTS`] is being dropped, to its last frame.
    discarding: bool,
    pending: Vec<FrameDesc>,
    in_fill: u32,
    in_tx: u32,
    fill_target: u32,
    /// Since when the TX ring has taken nothing while frames wait (a stalled egress).
    stalled_since: Option<Instant>,
}

/// How long an egress may take no frame before it stops holding back the receive side: a
/// dead egress then loses its frames (`drop_tx_full`) instead of stopping every interface
/// of the worker.
const STALL: Duration = Duration::from_millis(100);

/// Frames the receive side may take: as many as the fullest pending list of an egress that
/// is not stalled can still hold (back-pressure), at most `batch`.
fn receive_room<'a>(
    states: impl Iterator<Item = (usize, usize, Option<Instant>)> + 'a,
    now: Instant,
    batch: usize,
) -> usize {
    states
        .filter(|(_, _, since)| since.is_none_or(|t| now.duration_since(t) < STALL))
        .map(|(len, capacity, _)| capacity - len)
        .min()
        .unwrap_or(batch)
        .min(batch)
}

/// How a worker batches, sizes its rings and waits.
#[derive(Clone, Copy, Debug)]
pub struct Tuning {
    /// Descriptors taken from a ring at once.
    pub batch: usize,
    /// Size of every ring.
    pub ring_size: u32,
    /// UMEM frame size (to tell frames apart by address).
    pub frame_size: u32,
    /// How long the worker keeps polling its rings after its last frame before it sleeps.
    pub idle_spin: Duration,
}

/// When a worker with nothing to do sleeps in `poll()`: once it has polled its rings for
/// `spin` since its last frame, and from then on after every wakeup that brought none (a
/// timeout must not start another spin, or an idle worker would poll for `spin` every
/// timeout).
#[derive(Debug)]
struct Idle {
    spin: Duration,
    /// The first iteration without work since the last frame.
    since: Option<Instant>,
    asleep: bool,
}

impl Idle {
    fn new(spin: Duration) -> Self {
        Self { spin, since: None, asleep: false }
    }

    /// An iteration moved frames.
    fn worked(&mut self) {
        self.since = None;
        self.asleep = false;
    }

    /// Whether to sleep after an iteration without work at `now`.
    fn should_sleep(&mut self, now: Instant) -> bool {
        let since = *self.since.get_or_insert(now);
        self.asleep = self.asleep || now.duration_since(since) >= self.spin;
        self.asleep
    }
}

/// Owner of a frame, as far as this worker knows (`Worker::owner`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Owner {
    /// Another worker's frame.
    Foreign,
    Free,
    /// In a fill ring, or received into the RX ring (the kernel's).
    Fill,
    /// Taken from the RX ring: this worker rewrites it (pending TX included).
    Worker,
    /// In the hold queue.
    Held,
    /// In a TX ring, until its completion.
    Tx,
}

/// What connects a worker to the rest of xdpfwd.
pub struct Links {
    pub shared: Arc<Shared>,
    /// Requests for neighbour resolution, to the control plane.
    pub resolve: UnboundedSender<Resolve>,
    /// Where the worker publishes its frame accounting and system call counts.
    pub account: Arc<WorkerStats>,
    /// Packets to answer with an ICMP error, to the ICMP thread.
    pub icmp: icmp::Queue,
    /// Where frames go while `xdpfwd capture` runs.
    pub tap: capture::tap::Tap,
}

pub struct Worker {
    umem: Umem,
    ports: Vec<Port>,
    state: Vec<PortState>,
    free: Vec<FrameDesc>,
    scratch: Vec<FrameDesc>,
    held: Vec<Held>,
    pollfds: Vec<libc::pollfd>,
    ring_size: u32,
    frame_size: usize,
    /// Owner of every UMEM frame (index: address / frame size).
    owner: Vec<Owner>,
    violations: u64,
    tx_kicks: u64,
    fill_wakeups: u64,
    idle_polls: u64,
    idle: Idle,
    /// When resolution was last requested again for the next hops of held frames.
    last_resolve_sweep: Instant,
    shared: Arc<Shared>,
    resolve: UnboundedSender<Resolve>,
    account: Arc<WorkerStats>,
    icmp: icmp::Queue,
    tap: capture::tap::Tap,
}

impl Worker {
    /// A worker owning `ports` and `frames`: its share of the UMEM's frames (the forwarder
    /// gives each worker `frames_per_socket` for each of its sockets).
    pub fn new(
        umem: Umem,
        ports: Vec<Port>,
        frames: Vec<FrameDesc>,
        tuning: Tuning,
        links: Links,
    ) -> Self {
        let Tuning { batch, ring_size, frame_size, idle_spin } = tuning;
        let Links { shared, resolve, account, icmp, tap } = links;
        let total = frames.len();
        let frame_size = frame_size.max(1) as usize;
        let frames_in_umem = frames.iter().map(|d| d.addr() / frame_size + 1).max().unwrap_or(0);
        let mut owner = vec![Owner::Foreign; frames_in_umem.max(1) * 2];
        for d in &frames {
            owner[d.addr() / frame_size] = Owner::Free;
        }
        let mut free = Vec::with_capacity(total);
        free.extend(frames);
        let state = ports
            .iter()
            .map(|_| PortState {
                partial: Vec::with_capacity(MAX_SEGMENTS),
                discarding: false,
                pending: Vec::with_capacity(ring_size as usize),
                in_fill: 0,
                in_tx: 0,
                fill_target: ring_size,
                stalled_since: None,
            })
            .collect();
        let pollfds = ports
            .iter()
            .map(|p| libc::pollfd { fd: p.raw_fd(), events: libc::POLLIN, revents: 0 })
            .collect();
        account.total.store(total as u64, Relaxed);
        Self {
            umem,
            ports,
            state,
            free,
            scratch: vec![FrameDesc::default(); batch.max(1)],
            held: Vec::with_capacity(hold::CAPACITY),
            pollfds,
            ring_size,
            frame_size,
            owner,
            violations: 0,
            tx_kicks: 0,
            fill_wakeups: 0,
            idle_polls: 0,
            idle: Idle::new(idle_spin),
            last_resolve_sweep: Instant::now(),
            shared,
            resolve,
            account,
            icmp,
            tap,
        }
    }

    /// Records that `desc`'s frame moves from owner `from` to `to`; counts a violation when it
    /// was not where it had to be.
    #[inline]
    fn hand_over(&mut self, desc: &FrameDesc, from: Owner, to: Owner) {
        hand_over(&mut self.owner, &mut self.violations, self.frame_size, desc, from, to);
    }

    /// Runs until `shared.stop` is set.
    /// Runs until the stop flag is set; returns the sockets, still open, so that their
    /// kernel statistics can be read once more.
    pub fn run(mut self) -> Vec<Port> {
        self.refill();
        alloc_count::count_this_thread(true);
        while !self.shared.stop.load(Relaxed) {
            let mut work = self.reap_completions();
            work += self.receive();
            if !self.held.is_empty() {
                self.service_held();
            }
            self.flush_tx();
            self.refill();
            self.publish();
            if work > 0 {
                self.idle.worked();
            } else if self.idle.should_sleep(Instant::now()) {
                self.sleep();
            }
        }
        alloc_count::count_this_thread(false);
        self.publish();
        std::mem::take(&mut self.ports)
    }

    fn reap_completions(&mut self) -> usize {
        let mut done = 0;
        for (port, state) in self.ports.iter_mut().zip(&mut self.state) {
            if state.in_tx == 0 {
                continue;
            }
            // SAFETY: the descriptors are written by the consume and come from our one UMEM.
            let n = unsafe { port.comp.consume(&mut self.scratch) };
            state.in_tx -= n as u32;
            self.free.extend_from_slice(&self.scratch[..n]);
            done += n;
        }
        let start = self.free.len() - done;
        for i in start..self.free.len() {
            let desc = self.free[i];
            self.hand_over(&desc, Owner::Tx, Owner::Free);
        }
        done
    }

    fn receive(&mut self) -> usize {
        let mut received = 0;
        let now = Instant::now();
        for p in 0..self.ports.len() {
            // Back-pressure: take no more than every pending TX list can hold, so a full TX
            // ring leaves frames in the RX ring (and the kernel stops filling when the fill
            // ring runs dry) instead of dropping frames already received; a stalled egress
            // does not count.
            let states =
                self.state.iter().map(|s| (s.pending.len(), s.pending.capacity(), s.stalled_since));
            let take = receive_room(states, now, self.scratch.len());
            if take == 0 {
                break;
            }
            // SAFETY: the RX ring hands us frames of our UMEM that the kernel is done with.
            let n = unsafe { self.ports[p].rx.consume(&mut self.scratch[..take]) };
            if n == 0 {
                continue;
            }
            self.state[p].in_fill -= n as u32;
            received += n;
            let (mut bytes, mut packets) = (0, 0);
            for i in 0..n {
                let desc = self.scratch[i];
                bytes += desc.lengths().data() as u64;
                packets += u64::from(ends_packet(&desc));
                self.hand_over(&desc, Owner::Fill, Owner::Worker);
                if ends_packet(&desc) && self.state[p].partial.is_empty() {
                    self.route(p, desc);
                } else {
                    self.gather(p, desc);
                }
            }
            let stats = &self.ports[p].stats;
            PortStats::add(&stats.rx_packets, packets);
            PortStats::add(&stats.rx_bytes, bytes);
        }
        received
    }

    /// Index of this worker's port on interface `ifindex`.
    #[inline]
    fn port_for(&self, ifindex: u32) -> Option<usize> {
        self.ports.iter().position(|p| p.iface.ifindex == ifindex)
    }

    /// Decides the fate of one received frame.
    #[inline]
    fn route(&mut self, ingress: usize, mut desc: FrameDesc) {
        // SAFETY: `desc` came from our RX ring, so it addresses a frame of `self.umem` that we
        // own; the metadata area lies in that frame's headroom.
        let meta = unsafe { read_meta(&self.umem, &desc) };
        if let Some(meta) = meta.filter(|m| m.flags.contains(MetaFlags::ICMP)) {
            self.answer(desc, &meta);
            return;
        }
        let Some((meta, egress)) = meta.and_then(|m| Some((m, self.port_for(m.oif)?))) else {
            PortStats::add(&self.ports[ingress].stats.drop_invalid, 1);
            self.capture_drop(ingress, &desc, WorkerDrop::Invalid);
            self.drop_frame(desc);
            return;
        };
        if meta.flags.contains(MetaFlags::L2) {
            // Cross-connected: the XDP program did all there is to do.
            self.queue_tx(egress, desc);
            return;
        }
        let ipv6 = meta.flags.contains(MetaFlags::IPV6);
        let l3_off = usize::from(meta.l3_off);
        if meta.flags.contains(MetaFlags::NEED_NEIGH) {
            self.hold(ingress, egress, &[desc], meta, (l3_off, ipv6));
            return;
        }
        let (dst, src) = macs(&meta);
        if self.rewrite(&mut desc, l3_off, ipv6, &dst, &src) {
            self.queue_tx(egress, desc);
        } else {
            PortStats::add(&self.ports[ingress].stats.drop_rewrite, 1);
            self.capture_drop(ingress, &desc, WorkerDrop::Rewrite);
            self.drop_frame(desc);
        }
    }

    /// Collects the frames of a packet in more than one, and routes it when its last is in.
    fn gather(&mut self, ingress: usize, desc: FrameDesc) {
        let state = &self.state[ingress];
        if state.discarding || state.partial.len() == MAX_SEGMENTS {
            // Longer than the XDP program steers here: dropped whole, never half-sent.
            if !state.discarding {
                PortStats::add(&self.ports[ingress].stats.drop_invalid, 1);
                // (Popped, not taken: the list keeps its room, nothing is allocated.)
                while let Some(d) = self.state[ingress].partial.pop() {
                    self.drop_frame(d);
                }
            }
            self.state[ingress].discarding = !ends_packet(&desc);
            self.drop_frame(desc);
            return;
        }
        self.state[ingress].partial.push(desc);
        if ends_packet(&desc) {
            let mut parts = std::mem::take(&mut self.state[ingress].partial);
            self.route_parts(ingress, &parts);
            parts.clear();
            self.state[ingress].partial = parts;
        }
    }

    /// Decides the fate of a packet in more than one frame (`parts`, the first carrying the
    /// metadata and the headers): forwarded whole, its first frame rewritten, or dropped whole.
    /// The XDP program sends only whole frames this way (the IP length reaches the end, so
    /// nothing is trimmed), never one for an ICMP error; one waiting for its next hop is held.
    fn route_parts(&mut self, ingress: usize, parts: &[FrameDesc]) {
        let len = packet_len(parts);
        let mut head = parts[0];
        // SAFETY: the first frame came from our RX ring: a frame of `self.umem` that we own,
        // with the metadata in its headroom.
        let meta = unsafe { read_meta(&self.umem, &head) };
        let plain = meta.filter(|m| !m.flags.contains(MetaFlags::ICMP));
        let Some((meta, egress)) = plain.and_then(|m| Some((m, self.port_for(m.oif)?))) else {
            PortStats::add(&self.ports[ingress].stats.drop_invalid, 1);
            self.drop_parts(ingress, parts, len, WorkerDrop::Invalid);
            return;
        };
        if meta.flags.contains(MetaFlags::L2) {
            self.queue_tx_parts(egress, parts, len);
            return;
        }
        let ipv6 = meta.flags.contains(MetaFlags::IPV6);
        let l3_off = usize::from(meta.l3_off);
        if meta.flags.contains(MetaFlags::NEED_NEIGH) {
            self.hold(ingress, egress, parts, meta, (l3_off, ipv6));
            return;
        }
        let (dst, src) = macs(&meta);
        if self.rewrite_head(&mut head, len, (l3_off, ipv6), (&dst, &src)) {
            self.queue_tx_parts(egress, parts, len);
        } else {
            PortStats::add(&self.ports[ingress].stats.drop_rewrite, 1);
            self.drop_parts(ingress, parts, len, WorkerDrop::Rewrite);
        }
    }

    /// Rewrites the first frame of a packet `len` bytes long in several (see [`Self::rewrite`]).
    #[inline]
    fn rewrite_head(
        &self,
        head: &mut FrameDesc,
        len: usize,
        (l3_off, ipv6): (usize, bool),
        macs: (&[u8; 6], &[u8; 6]),
    ) -> bool {
        // SAFETY: we own the frame (it came from the RX ring or the hold queue).
        let mut data = unsafe { self.umem.data_mut(head) };
        rewrite::route_head(data.contents_mut(), len, l3_off, ipv6, macs).is_ok()
    }

    /// Queues the frames of one packet on `egress`'s TX ring, all or none.
    fn queue_tx_parts(&mut self, egress: usize, parts: &[FrameDesc], len: usize) {
        let pending = &mut self.state[egress].pending;
        if pending.capacity() - pending.len() < parts.len() {
            PortStats::add(&self.ports[egress].stats.drop_tx_full, 1);
            self.drop_parts(egress, parts, len, WorkerDrop::TxFull);
            return;
        }
        for (i, desc) in parts.iter().enumerate() {
            let mut desc = *desc;
            desc.set_options(if i + 1 < parts.len() { XDP_PKT_CONTD } else { 0 });
            pending.push(desc);
        }
        if self.tap.wants(CaptureFlags::OUT) {
            // SAFETY: the frame is ours until the TX ring takes it.
            let data = unsafe { self.umem.data(&parts[0]) };
            self.tap.sent_head(self.ports[egress].iface.ifindex, data.contents(), len);
        }
    }

    /// Drops every frame of a packet, as seen on `port`'s interface (captured by its first).
    fn drop_parts(&mut self, port: usize, parts: &[FrameDesc], len: usize, why: WorkerDrop) {
        if self.tap.wants(CaptureFlags::DROPS) {
            // SAFETY: the worker owns the frames it is about to drop.
            let data = unsafe { self.umem.data(&parts[0]) };
            self.tap.dropped_head(self.ports[port].iface.ifindex, why, data.contents(), len);
        }
        for desc in parts {
            self.drop_frame(*desc);
        }
    }

    /// A frame the router answers with an ICMP error instead of forwarding it: its head goes
    /// to the ICMP thread, the frame back to the free list.
    #[inline]
    fn answer(&mut self, desc: FrameDesc, meta: &XskMeta) {
        if let Some(error) = IcmpError::from_u8(meta.addr[0]) {
            let mtu = u32::from_be_bytes([meta.addr[4], meta.addr[5], meta.addr[6], meta.addr[7]]);
            // SAFETY: we own the frame (it came from the RX ring).
            let data = unsafe { self.umem.data(&desc) };
            let packet = data.contents().get(usize::from(meta.l3_off)..).unwrap_or(&[]);
            let v6 = meta.flags.contains(MetaFlags::IPV6);
            let forwarded = meta.addr[1] == ICMP_QUOTE_FORWARDED;
            self.icmp.push(icmp::Job::new(error, (v6, forwarded), mtu, meta.oif, packet));
        }
        self.drop_frame(desc);
    }

    /// Returns a frame this worker holds to the free list.
    #[inline]
    fn drop_frame(&mut self, desc: FrameDesc) {
        self.hand_over(&desc, Owner::Worker, Owner::Free);
        self.free.push(desc);
    }

    #[inline]
    fn rewrite(
        &self,
        desc: &mut FrameDesc,
        l3_off: usize,
        ipv6: bool,
        dst: &[u8; 6],
        src: &[u8; 6],
    ) -> bool {
        // SAFETY: we own the frame (it came from the RX ring or the hold queue).
        let mut data = unsafe { self.umem.data_mut(desc) };
        match rewrite::route_frame(data.contents_mut(), l3_off, ipv6, dst, src) {
            Ok(len) => {
                data.cursor().set_pos(len);
                true
            }
            Err(_) => false,
        }
    }

    #[inline]
    fn queue_tx(&mut self, egress: usize, desc: FrameDesc) {
        let pending = &mut self.state[egress].pending;
        if pending.len() < pending.capacity() {
            pending.push(desc);
            if self.tap.wants(CaptureFlags::OUT) {
                // SAFETY: the frame is ours until the TX ring takes it.
                let data = unsafe { self.umem.data(&desc) };
                self.tap.sent(self.ports[egress].iface.ifindex, data.contents());
            }
        } else {
            PortStats::add(&self.ports[egress].stats.drop_tx_full, 1);
            self.capture_drop(egress, &desc, WorkerDrop::TxFull);
            self.drop_frame(desc);
        }
    }

    /// Copies a frame this worker drops to a running capture, as seen on `port`'s interface.
    #[inline]
    fn capture_drop(&mut self, port: usize, desc: &FrameDesc, why: WorkerDrop) {
        if self.tap.wants(CaptureFlags::DROPS) {
            // SAFETY: the worker owns the frame it is about to drop.
            let data = unsafe { self.umem.data(desc) };
            self.tap.dropped(self.ports[port].iface.ifindex, why, data.contents());
        }
    }

    /// Holds a packet (its frames: `parts`) until its next hop is resolved; the oldest gives
    /// way when the queue is full (see `hold::victim`).
    fn hold(
        &mut self,
        ingress: usize,
        egress: usize,
        parts: &[FrameDesc],
        meta: XskMeta,
        (l3_off, ipv6): (usize, bool),
    ) {
        let next_hop = if ipv6 || meta.flags.contains(MetaFlags::NEXT_HOP_V6) {
            IpAddr::V6(Ipv6Addr::from(meta.addr))
        } else {
            IpAddr::V4(Ipv4Addr::new(meta.addr[0], meta.addr[1], meta.addr[2], meta.addr[3]))
        };
        let same = |h: &Held| h.ifindex == meta.oif && h.next_hop == next_hop;
        let oldest_same = self.held.iter().position(same);
        let same_hop = self.held.iter().filter(|h| same(h)).count();
        if let Some(i) = hold::victim(same_hop, oldest_same, self.held.len()) {
            let old = self.held.remove(i);
            PortStats::add(&self.ports[ingress].stats.held_dropped, 1);
            for d in old.parts.as_slice() {
                self.hand_over(d, Owner::Held, Owner::Worker);
            }
            let len = packet_len(old.parts.as_slice());
            self.drop_parts(old.port, old.parts.as_slice(), len, WorkerDrop::Held);
        }
        if oldest_same.is_none() {
            // First frame for this next hop: ask the kernel to resolve it.
            let _ = self.resolve.send(Resolve { ifindex: meta.oif, addr: next_hop });
        }
        let stats = &self.ports[ingress].stats;
        PortStats::add(&stats.held, 1);
        for d in parts {
            self.hand_over(d, Owner::Worker, Owner::Held);
        }
        self.held.push(Held {
            parts: Parts::of(parts),
            port: egress,
            l3_off,
            ipv6,
            ifindex: meta.oif,
            next_hop,
            deadline: Instant::now() + HOLD_TIMEOUT,
        });
    }

    /// Sends held frames whose next hop is now known, in arrival order; drops expired ones.
    fn service_held(&mut self) {
        let now = Instant::now();
        if now.duration_since(self.last_resolve_sweep) >= RESOLVE_RETRY {
            // Ask again for every next hop still awaited: a request can be lost (rate limit,
            // a link that was down), and frames keep arriving for it.
            self.last_resolve_sweep = now;
            for i in 0..self.held.len() {
                let (ifindex, addr) = (self.held[i].ifindex, self.held[i].next_hop);
                if !self.held[..i].iter().any(|h| h.ifindex == ifindex && h.next_hop == addr) {
                    let _ = self.resolve.send(Resolve { ifindex, addr });
                }
            }
        }
        let shared = Arc::clone(&self.shared);
        let Ok(table) = shared.neighbours.read() else { return };
        let Ok(macs) = shared.macs.read() else { return };
        let mut keep = 0;
        for i in 0..self.held.len() {
            let h = &self.held[i];
            let (port, l3_off, ipv6, mut parts) = (h.port, h.l3_off, h.ipv6, h.parts);
            let (key, deadline) = ((h.ifindex, h.next_hop), h.deadline);
            let len = packet_len(parts.as_slice());
            if let Some(mac) = table.get(&key) {
                for d in parts.as_slice() {
                    self.hand_over(d, Owner::Held, Owner::Worker);
                }
                let egress = &self.ports[port].iface;
                let src = macs.get(&egress.ifindex).copied().unwrap_or(egress.mac);
                let rewritten = match parts.count {
                    1 => self.rewrite(&mut parts.descs[0], l3_off, ipv6, mac, &src),
                    _ => self.rewrite_head(&mut parts.descs[0], len, (l3_off, ipv6), (mac, &src)),
                };
                if !rewritten {
                    PortStats::add(&self.ports[port].stats.drop_rewrite, 1);
                    self.drop_parts(port, parts.as_slice(), len, WorkerDrop::Rewrite);
                    continue;
                }
                PortStats::add(&self.ports[port].stats.held_sent, 1);
                match parts.count {
                    1 => self.queue_tx(port, parts.descs[0]),
                    _ => self.queue_tx_parts(port, parts.as_slice(), len),
                }
            } else if now >= deadline {
                PortStats::add(&self.ports[port].stats.held_dropped, 1);
                for d in parts.as_slice() {
                    self.hand_over(d, Owner::Held, Owner::Worker);
                }
                self.drop_parts(port, parts.as_slice(), len, WorkerDrop::Held);
            } else {
                self.held.swap(keep, i);
                keep += 1;
            }
        }
        self.held.truncate(keep);
    }

    fn flush_tx(&mut self) {
        let (owner, violations, frame_size) =
            (&mut self.owner, &mut self.violations, self.frame_size);
        for (port, state) in self.ports.iter_mut().zip(&mut self.state) {
            if !state.pending.is_empty() {
                // SAFETY: every pending descriptor is a frame of our UMEM that we own; the TX
                // ring takes ownership of the first `n`.
                let n = unsafe { port.tx.produce(&state.pending) };
                let bytes: usize = state.pending[..n].iter().map(|d| d.lengths().data()).sum();
                let packets = state.pending[..n].iter().filter(|d| ends_packet(d)).count();
                PortStats::add(&port.stats.tx_packets, packets as u64);
                PortStats::add(&port.stats.tx_bytes, bytes as u64);
                state.in_tx += n as u32;
                for d in &state.pending[..n] {
                    hand_over(owner, violations, frame_size, d, Owner::Worker, Owner::Tx);
                }
                // What did not fit waits for the next iteration, in order.
                state.pending.drain(..n);
                state.stalled_since = match (n, state.stalled_since) {
                    (0, None) => Some(Instant::now()),
                    (0, since) => since,
                    _ => None,
                };
            } else {
                state.stalled_since = None;
            }
            // Kick while descriptors wait in the ring: in copy mode each kick sends a bounded
            // batch, so a partial batch must not wait for the next packet.
            if state.in_tx > 0 && port.tx.needs_wakeup() && port.tx.nb_free_exact() < self.ring_size
            {
                let _ = port.tx.wakeup();
                self.tx_kicks += 1;
            }
        }
    }

    fn refill(&mut self) {
        let (owner, violations, frame_size) =
            (&mut self.owner, &mut self.violations, self.frame_size);
        for (port, state) in self.ports.iter_mut().zip(&mut self.state) {
            let want = state.fill_target.saturating_sub(state.in_fill) as usize;
            let k = want.min(self.free.len());
            if k == 0 {
                continue;
            }
            let start = self.free.len() - k;
            // SAFETY: free frames are ours; the fill ring takes ownership of the first `n`.
            let n = unsafe { port.fill.produce(&self.free[start..]) };
            for d in &self.free[start..start + n] {
                hand_over(owner, violations, frame_size, d, Owner::Free, Owner::Fill);
            }
            // The ring took `free[start..start + n]`; keep the rest.
            self.free.copy_within(start + n.., start);
            self.free.truncate(self.free.len() - n);
            state.in_fill += n as u32;
            if n > 0 && port.fill.needs_wakeup() {
                let _ = port.fill.wakeup(port.rx.fd_mut(), 0);
                self.fill_wakeups += 1;
            }
        }
    }

    fn publish(&self) {
        let (fill, tx) = self.state.iter().fold((0u64, 0u64), |(f, t), s| {
            (f + u64::from(s.in_fill), t + u64::from(s.in_tx) + s.pending.len() as u64)
        });
        self.account.free.store(self.free.len() as u64, Relaxed);
        self.account.fill.store(fill, Relaxed);
        self.account.kernel_tx.store(tx, Relaxed);
        let held: usize = self.held.iter().map(|h| h.parts.count).sum();
        self.account.held.store(held as u64, Relaxed);
        self.account.violations.store(self.violations, Relaxed);
        self.account.tx_kicks.store(self.tx_kicks, Relaxed);
        self.account.fill_wakeups.store(self.fill_wakeups, Relaxed);
        self.account.idle_polls.store(self.idle_polls, Relaxed);
    }

    fn sleep(&mut self) {
        let busy = !self.held.is_empty() || self.state.iter().any(|s| s.in_tx > 0);
        let timeout = if busy { 1 } else { 100 };
        // SAFETY: `pollfds` is a valid array of `len` pollfd structs for the call's duration.
        unsafe {
            libc::poll(self.pollfds.as_mut_ptr(), self.pollfds.len() as libc::nfds_t, timeout)
        };
        self.idle_polls += 1;
    }
}

/// The destination and source MACs the XDP program chose for a routed frame (`meta.addr`).
#[inline]
fn macs(meta: &XskMeta) -> ([u8; 6], [u8; 6]) {
    let (mut dst, mut src) = ([0u8; 6], [0u8; 6]);
    dst.copy_from_slice(&meta.addr[0..6]);
    src.copy_from_slice(&meta.addr[6..12]);
    (dst, src)
}

/// The length of a packet in `parts`: all its frames.
#[inline]
fn packet_len(parts: &[FrameDesc]) -> usize {
    parts.iter().map(|d| d.lengths().data()).sum()
}

/// Moves the frame of `desc` from `from` to `to` in `owner`, counting a violation when it was
/// not at `from` (a split borrow of [`Worker::hand_over`]).
#[inline]
fn hand_over(
    owner: &mut [Owner],
    violations: &mut u64,
    frame_size: usize,
    desc: &FrameDesc,
    from: Owner,
    to: Owner,
) {
    match owner.get_mut(desc.addr() / frame_size) {
        Some(o) if *o == from => *o = to,
        Some(o) => {
            *violations += 1;
            *o = to;
        }
        None => *violations += 1,
    }
}

/// Reads the metadata the XDP program put in front of the frame `desc`.
///
/// # Safety
/// `desc` must address a received frame of `umem` owned by the caller.
unsafe fn read_meta(umem: &Umem, desc: &FrameDesc) -> Option<XskMeta> {
    if desc.addr() < META_LEN {
        return None;
    }
    // SAFETY: per the contract, `desc` addresses a frame of `umem`.
    let data = unsafe { umem.data(desc) };
    let start = data.contents().as_ptr();
    // SAFETY: the kernel places received data at least XDP_PACKET_HEADROOM (256) bytes into
    // its UMEM frame, so the META_LEN bytes in front of it are inside the same frame of the
    // mmap'd UMEM region, which we own together with the frame.
    let bytes: [u8; META_LEN] =
        unsafe { start.sub(META_LEN).cast::<[u8; META_LEN]>().read_unaligned() };
    rewrite::parse_meta(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_worker_polls_for_its_spin_then_sleeps_until_a_frame_comes() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut idle = Idle::new(ms(20));
        assert!(!idle.should_sleep(t0));
        assert!(!idle.should_sleep(t0 + ms(19)));
        assert!(idle.should_sleep(t0 + ms(20)));
        // A timeout without a frame: back to sleep at once, no second spin.
        assert!(idle.should_sleep(t0 + ms(120)));
        // A frame: the spin starts again from the next iteration without one.
        idle.worked();
        assert!(!idle.should_sleep(t0 + ms(130)));
        assert!(!idle.should_sleep(t0 + ms(149)));
        assert!(idle.should_sleep(t0 + ms(150)));
    }

    #[test]
    fn no_spin_sleeps_at_the_first_iteration_without_work() {
        let mut idle = Idle::new(Duration::ZERO);
        assert!(idle.should_sleep(Instant::now()));
    }

    #[test]
    fn a_stalled_egress_stops_holding_back_the_others() {
        let now = Instant::now();
        let busy = Some(now - Duration::from_millis(10));
        let dead = Some(now - STALL * 2);
        // Room of the fullest list, bounded by the batch.
        assert_eq!(receive_room([(10, 64, None), (60, 64, None)].into_iter(), now, 32), 4);
        assert_eq!(receive_room([(0, 64, None)].into_iter(), now, 32), 32);
        // A full list that took nothing for a moment still holds back (back-pressure) ...
        assert_eq!(receive_room([(0, 64, None), (64, 64, busy)].into_iter(), now, 32), 0);
        // ... but not once it has taken nothing for longer than `STALL`.
        assert_eq!(receive_room([(0, 64, None), (64, 64, dead)].into_iter(), now, 32), 32);
    }
}
