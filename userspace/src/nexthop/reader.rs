//! The thread reading the nexthop socket: a dump of every object first, then events; the
//! buckets of every resilient group it reports; dumps again after lost events.

use std::{
    collections::{HashSet, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use tokio::sync::mpsc::UnboundedSender;

use super::{
    Nexthop, NhEvent,
    wire::{self, BUCKET_SEQ, DUMP_SEQ, RTNLGRP_NEXTHOP},
};
use crate::sockopt;

/// Starts the thread that reads nexthop messages (dump, then events) until `stopped()`
/// (checked every 200 ms) or the receiver is gone. `rx_buf`: the socket's receive buffer.
/// `redump`: set by the control plane when the kernel may have removed objects without a
/// word (a link went down): every object is read again as after lost events.
pub fn spawn_reader(
    stopped: impl Fn() -> bool + Send + 'static,
    tx: UnboundedSender<NhEvent>,
    rx_buf: u32,
    redump: Arc<AtomicBool>,
) -> anyhow::Result<thread::JoinHandle<()>> {
    let mut socket = Socket::new(NETLINK_ROUTE).context("opening the nexthop netlink socket")?;
    socket.bind_auto().context("binding the nexthop netlink socket")?;
    socket.add_membership(RTNLGRP_NEXTHOP).context("joining RTNLGRP_NEXTHOP")?;
    let granted = sockopt::force_rx_buf(&socket, rx_buf).context("sizing the nexthop socket")?;
    tracing::debug!(granted, "nexthop socket receive buffer");
    sockopt::set_timeout(&socket, Duration::from_millis(200));
    let mut reader = Reader::new(socket, redump);
    reader.dump()?;
    let handle = thread::Builder::new()
        .name("xdpfwd-nexthops".into())
        .spawn(move || reader.run(&stopped, &tx))
        .context("starting the nexthop thread")?;
    Ok(handle)
}

/// The nexthop socket and its dumps: one at a time (the kernel refuses a second). The dump of
/// every object is repeated when events were lost while it ran, so the [`NhEvent::Synced`]
/// that ends it follows a dump that began after the last loss. Each resilient group reported
/// has its buckets dumped after it (the kernel moves buckets without a word when a group is
/// replaced); bucket notifications keep them current afterwards.
struct Reader {
    socket: Socket,
    /// Asked from the control plane: read every object again.
    redump: Arc<AtomicBool>,
    dumping: bool,
    /// Events were lost during the running dump: dump again when it ends.
    again: bool,
    /// When the running dump last answered: one silent for [`DUMP_STALL`] was lost (its
    /// answer did not fit the buffer) and is asked again.
    heard: Instant,
    /// Resilient groups whose buckets are to be dumped, in order.
    buckets: VecDeque<u32>,
    /// The group whose buckets are being dumped, and when that dump last answered.
    bucket_dump: Option<(u32, Instant)>,
    /// Buckets of that group the kernel moved while its dump ran: the dump's answer for
    /// them may be older than the notification, and is dropped.
    moved: HashSet<u16>,
    /// When the kernel last refused a bucket dump.
    bucket_refused: Option<Instant>,
    /// When the kernel last refused the dump of every object.
    refused: Option<Instant>,
}

/// How long a running dump may stay silent before it is asked again.
const DUMP_STALL: Duration = Duration::from_secs(2);
/// How long after a refused dump it is asked again.
const REFUSED_PAUSE: Duration = Duration::from_millis(200);

impl Reader {
    fn new(socket: Socket, redump: Arc<AtomicBool>) -> Self {
        Reader {
            socket,
            redump,
            dumping: false,
            again: false,
            heard: Instant::now(),
            buckets: VecDeque::new(),
            bucket_dump: None,
            moved: HashSet::new(),
            bucket_refused: None,
            refused: None,
        }
    }

    /// Asks the kernel for every nexthop object.
    fn dump(&mut self) -> anyhow::Result<()> {
        if let Err(err) = self.socket.send_to(&wire::dump_request(), &SocketAddr::new(0, 0), 0) {
            // Asked again a moment later (the kernel short of memory, say).
            tracing::warn!(%err, "asking for the nexthop objects failed");
            (self.again, self.refused) = (true, Some(Instant::now()));
            return Ok(());
        }
        (self.dumping, self.again, self.heard) = (true, false, Instant::now());
        Ok(())
    }

    /// Starts the next bucket dump, if no dump runs.
    fn next_bucket_dump(&mut self) -> anyhow::Result<()> {
        if self.dumping
            || self.again
            || self.bucket_dump.is_some()
            || self.bucket_refused.is_some_and(|at| at.elapsed() < REFUSED_PAUSE)
        {
            return Ok(());
        }
        let Some(group) = self.buckets.pop_front() else { return Ok(()) };
        if let Err(err) =
            self.socket.send_to(&wire::bucket_request(group), &SocketAddr::new(0, 0), 0)
        {
            tracing::warn!(%err, group, "asking for a resilient group's buckets failed");
            self.buckets.push_front(group);
            self.bucket_refused = Some(Instant::now());
            return Ok(());
        }
        self.bucket_dump = Some((group, Instant::now()));
        self.moved.clear();
        Ok(())
    }

    /// A resilient group was reported: its buckets are to be read (again).
    fn queue_buckets(&mut self, group: u32) {
        if !self.buckets.contains(&group) {
            self.buckets.push_back(group);
        }
    }

    /// Events were lost: say so, and read every object again (and so every group's buckets)
    /// once the socket's queue has run empty. The kernel reports `ENOBUFS` when a socket
    /// starts dropping and not again until a read finds its queue empty: a dump begun before
    /// that could end before events dropped later, which nobody would report.
    fn lost(&mut self, tx: &UnboundedSender<NhEvent>) {
        let _ = tx.send(NhEvent::Overrun);
        self.buckets.clear();
        self.again = true;
    }

    /// Whether a dump of every object is to be asked for as soon as the queue is empty: one
    /// is wanted, none runs, and the last was not refused just now.
    fn dump_wanted(&self) -> bool {
        self.again
            && !self.dumping
            && self.bucket_dump.is_none()
            && self.refused.is_none_or(|at| at.elapsed() >= REFUSED_PAUSE)
    }

    /// After every read: a dump silent for too long is to be asked again.
    fn timers(&mut self) {
        if self.dumping && self.heard.elapsed() > DUMP_STALL {
            tracing::debug!("the nexthop dump went silent: asking again");
            (self.dumping, self.again) = (false, true);
        }
        if let Some((group, heard)) = self.bucket_dump
            && heard.elapsed() > DUMP_STALL
        {
            tracing::debug!(group, "the nexthop bucket dump went silent: asking again");
            self.bucket_dump = None;
            self.buckets.push_front(group);
        }
    }

    /// A read found the queue empty: a dump wanted after lost events, refused or silent, is
    /// asked (again).
    fn tick(&mut self) -> anyhow::Result<()> {
        self.timers();
        if self.dump_wanted() {
            self.dump()?;
        }
        self.next_bucket_dump()
    }

    /// The end of a dump: a [`NhEvent::Synced`], or none if events were lost meanwhile (the
    /// next dump starts when the queue has run empty).
    fn dumped(&mut self) -> Option<NhEvent> {
        self.dumping = false;
        (!self.again).then_some(NhEvent::Synced)
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
            if self.redump.swap(false, Ordering::Relaxed) {
                // Objects the kernel removed without a word (a link went down).
                self.lost(tx);
            }
            // A dump is wanted: find out at once whether the queue has run empty.
            let flags = if self.dump_wanted() { libc::MSG_DONTWAIT } else { 0 };
            let n = match self.socket.recv(&mut &mut buf[..], flags) {
                Ok(n) => n,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    self.lost(tx);
                    continue;
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR)) => {
                    self.tick()?;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            // Answers to a dump carry its sequence number; events carry 0.
            let seq = buf.get(8..12).map_or(0, |s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]));
            match seq {
                DUMP_SEQ => self.heard = Instant::now(),
                BUCKET_SEQ => {
                    if let Some((_, heard)) = &mut self.bucket_dump {
                        *heard = Instant::now();
                    }
                }
                _ => {}
            }
            for event in wire::messages(&buf[..n]) {
                if self.superseded(&event, seq) {
                    continue;
                }
                if let Some(event) = self.handle(event, tx)?
                    && tx.send(event).is_err()
                {
                    return Ok(());
                }
            }
            self.timers();
            self.next_bucket_dump()?;
        }
        Ok(())
    }

    /// Whether a bucket dump's answer (`seq`) is older than a notification of the same
    /// bucket that came while the dump ran; notes the notifications.
    fn superseded(&mut self, event: &NhEvent, seq: u32) -> bool {
        let NhEvent::Bucket { group, index, .. } = *event else { return false };
        if self.bucket_dump.is_none_or(|(g, _)| g != group) {
            return false;
        }
        if seq == BUCKET_SEQ {
            return self.moved.contains(&index);
        }
        self.moved.insert(index);
        false
    }

    /// What the reader does with an event; `Some`: pass it on to the control plane.
    fn handle(
        &mut self,
        event: NhEvent,
        tx: &UnboundedSender<NhEvent>,
    ) -> anyhow::Result<Option<NhEvent>> {
        Ok(match event {
            NhEvent::Synced => self.dumped(),
            NhEvent::Refused => {
                // Asked again a moment later.
                (self.dumping, self.again, self.refused) = (false, true, Some(Instant::now()));
                None
            }
            NhEvent::Overrun => {
                self.lost(tx);
                None
            }
            NhEvent::BucketsDumped => {
                self.bucket_dump = None;
                None
            }
            NhEvent::BucketsRefused => {
                if let Some((group, _)) = self.bucket_dump.take() {
                    self.buckets.push_front(group);
                }
                self.bucket_refused = Some(Instant::now());
                None
            }
            NhEvent::Set(id, Nexthop::Resilient { members, buckets }) => {
                self.queue_buckets(id);
                Some(NhEvent::Set(id, Nexthop::Resilient { members, buckets }))
            }
            other => Some(other),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dump_that_began_before_a_loss_is_not_the_end_and_the_next_waits_for_an_empty_queue() {
        let socket = Socket::new(NETLINK_ROUTE).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut reader = Reader::new(socket, Arc::default());
        reader.dumping = true;
        assert_eq!(reader.handle(NhEvent::Overrun, &tx).unwrap(), None);
        assert_eq!(rx.try_recv().unwrap(), NhEvent::Overrun, "the control plane is told");
        assert!(!reader.dump_wanted(), "not while the running dump lasts");
        assert_eq!(reader.handle(NhEvent::Synced, &tx).unwrap(), None, "it proves nothing");
        assert!(reader.dump_wanted(), "another, once a read finds the queue empty");
        // Resilient groups reported by a dump have their buckets read after it, not during.
        let res = Nexthop::Resilient { members: vec![(1, 1)], buckets: 4 };
        assert!(reader.handle(NhEvent::Set(9, res), &tx).unwrap().is_some());
        assert_eq!(reader.buckets, [9]);
        reader.next_bucket_dump().unwrap();
        assert!(reader.bucket_dump.is_none(), "the object dump comes first");
        // Refused: asked again a moment later, not at once.
        (reader.again, reader.dumping) = (false, true);
        assert_eq!(reader.handle(NhEvent::Refused, &tx).unwrap(), None);
        assert!(reader.again && !reader.dump_wanted());
    }
}
