//! The thread reading the nexthop socket: a dump of every object first, then events; the
//! buckets of every resilient group it reports; dumps again after lost events.

use std::{
    collections::VecDeque,
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
    let mut reader = Reader {
        socket,
        dumping: false,
        again: false,
        heard: Instant::now(),
        buckets: VecDeque::new(),
        bucket_dump: None,
        bucket_pause: false,
    };
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
    /// A bucket dump was refused for now: the next waits for the next tick.
    bucket_pause: bool,
}

/// How long a running dump may stay silent before it is asked again.
const DUMP_STALL: Duration = Duration::from_secs(2);

impl Reader {
    /// Asks the kernel for every nexthop object.
    fn dump(&mut self) -> anyhow::Result<()> {
        self.socket
            .send_to(&wire::dump_request(), &SocketAddr::new(0, 0), 0)
            .context("dumping nexthops")?;
        (self.dumping, self.again, self.heard) = (true, false, Instant::now());
        Ok(())
    }

    /// Starts the next bucket dump, if no dump runs.
    fn next_bucket_dump(&mut self) -> anyhow::Result<()> {
        if self.dumping || self.bucket_dump.is_some() || self.bucket_pause {
            return Ok(());
        }
        let Some(group) = self.buckets.pop_front() else { return Ok(()) };
        self.socket
            .send_to(&wire::bucket_request(group), &SocketAddr::new(0, 0), 0)
            .context("dumping nexthop buckets")?;
        self.bucket_dump = Some((group, Instant::now()));
        Ok(())
    }

    /// A resilient group was reported: its buckets are to be read (again).
    fn queue_buckets(&mut self, group: u32) {
        if !self.buckets.contains(&group) {
            self.buckets.push_back(group);
        }
    }

    /// Events were lost: say so, and read every object again (and so every group's buckets).
    fn lost(&mut self, tx: &UnboundedSender<NhEvent>) -> anyhow::Result<()> {
        let _ = tx.send(NhEvent::Overrun);
        self.buckets.clear();
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
        if let Some((group, heard)) = self.bucket_dump
            && heard.elapsed() > DUMP_STALL
        {
            tracing::debug!(group, "the nexthop bucket dump went silent: asking again");
            self.bucket_dump = None;
            self.buckets.push_front(group);
        }
        if !self.dumping && self.again && self.bucket_dump.is_none() {
            self.dump()?;
        }
        self.bucket_pause = false;
        self.next_bucket_dump()
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
            // Answers to a dump carry its sequence number; events carry 0.
            match buf.get(8..12).map(|s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]])) {
                Some(DUMP_SEQ) => self.heard = Instant::now(),
                Some(BUCKET_SEQ) => {
                    if let Some((_, heard)) = &mut self.bucket_dump {
                        *heard = Instant::now();
                    }
                }
                _ => {}
            }
            for event in wire::messages(&buf[..n]) {
                if let Some(event) = self.handle(event, tx)?
                    && tx.send(event).is_err()
                {
                    return Ok(());
                }
            }
            self.next_bucket_dump()?;
        }
        Ok(())
    }

    /// What the reader does with an event; `Some`: pass it on to the control plane.
    fn handle(
        &mut self,
        event: NhEvent,
        tx: &UnboundedSender<NhEvent>,
    ) -> anyhow::Result<Option<NhEvent>> {
        Ok(match event {
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
            NhEvent::BucketsDumped => {
                self.bucket_dump = None;
                None
            }
            NhEvent::BucketsRefused => {
                if let Some((group, _)) = self.bucket_dump.take() {
                    self.buckets.push_front(group);
                }
                self.bucket_pause = true;
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
