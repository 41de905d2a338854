//! The router's ICMP errors while the kernel's forwarding is off: the XDP program steers a
//! frame the kernel's forwarding would answer (TTL exhausted, too big, no route) to a worker
//! instead of forwarding it; the worker hands a copy of its head to this module's thread
//! ([`Job`], through a bounded queue) and recycles the frame; the thread decides as the
//! kernel's `__icmp_send` / `icmp6_send` would (whether the packet is answered at all, the
//! rate limits) and sends the error through a raw socket, so that the kernel routes it.
//!
//! `message` builds the errors, `limit` keeps the kernel's limits, `output` owns the sockets.

pub mod limit;
pub mod message;
mod output;
mod source;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
        mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError},
    },
    thread,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use xdpfwd_common::IcmpError;

use self::{
    limit::{Limiter, Settings},
    message::{MESSAGE_MAX, QUOTE_V6},
    output::Output,
};

/// Packets waiting for an answer at most; a worker drops what does not fit (counted).
pub const QUEUE: usize = 64;
/// How often the limits' sysctls are read again.
const SETTINGS_REFRESH: Duration = Duration::from_secs(1);

/// A packet to answer: what the worker copied out of the frame before recycling it.
#[derive(Clone)]
pub struct Job {
    pub error: IcmpError,
    pub v6: bool,
    /// The MTU of a "too big" error.
    pub mtu: u32,
    /// The interface the packet arrived on.
    pub ingress: u32,
    /// The packet from its IP header on, as much as an error quotes (or less if shorter).
    pub packet: [u8; QUOTE_V6],
    pub len: usize,
    /// The kernel drops the packet without an answer: too big for its route's MTU, with
    /// an extension header chain `ip6_fragment` cannot walk.
    pub silent: bool,
}

impl Job {
    /// A job for `packet` (from its IP header; trailing padding beyond the IP length is not
    /// part of it).
    /// With `forwarded`, the quote shows the packet as forwarding left it (IPv6 hop limit
    /// decremented).
    pub fn new(
        error: IcmpError,
        (v6, forwarded): (bool, bool),
        mtu: u32,
        ingress: u32,
        packet: &[u8],
    ) -> Job {
        let ip_len = if v6 {
            packet.get(4..6).map_or(0, |b| 40 + usize::from(u16::from_be_bytes([b[0], b[1]])))
        } else {
            packet.get(2..4).map_or(0, |b| usize::from(u16::from_be_bytes([b[0], b[1]])))
        };
        let len = ip_len.min(packet.len()).min(QUOTE_V6);
        let silent = v6
            && forwarded
            && error == IcmpError::TooBig
            && !message::fragmentable_v6(&packet[..ip_len.min(packet.len())], ip_len);
        let mut job = Job { error, v6, mtu, ingress, packet: [0; QUOTE_V6], len, silent };
        job.packet[..len].copy_from_slice(&packet[..len]);
        if v6 && forwarded && len >= 8 {
            job.packet[7] = job.packet[7].saturating_sub(1);
        }
        job
    }
}

/// What became of the packets the XDP program steered for an answer.
#[derive(Debug, Default)]
pub struct Counters {
    /// Errors sent.
    pub sent: AtomicU64,
    /// Not sent: a rate limit of the kernel's said no.
    pub rate_limited: AtomicU64,
    /// Not sent: the kernel answers no such packet (an ICMP error, a non-first fragment).
    pub not_answered: AtomicU64,
    /// Not sent: the queue to the ICMP thread was full (or the thread is not running).
    pub queue_full: AtomicU64,
    /// Not sent: the kernel refused the message (no route back, ...).
    pub failed: AtomicU64,
}

/// [`Counters`] read at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct IcmpFigures {
    pub sent: u64,
    pub rate_limited: u64,
    pub not_answered: u64,
    pub queue_full: u64,
    pub failed: u64,
}

impl Counters {
    pub fn read(&self) -> IcmpFigures {
        IcmpFigures {
            sent: self.sent.load(Relaxed),
            rate_limited: self.rate_limited.load(Relaxed),
            not_answered: self.not_answered.load(Relaxed),
            queue_full: self.queue_full.load(Relaxed),
            failed: self.failed.load(Relaxed),
        }
    }
}

/// A worker's end of the queue.
#[derive(Clone)]
pub struct Queue {
    tx: Option<SyncSender<Job>>,
    counters: Arc<Counters>,
}

impl Queue {
    /// Hands `job` to the ICMP thread without waiting; a full queue loses it (counted).
    pub fn push(&self, job: Job) {
        let full = match &self.tx {
            Some(tx) => matches!(
                tx.try_send(job),
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_))
            ),
            None => true,
        };
        if full {
            self.counters.queue_full.fetch_add(1, Relaxed);
        }
    }
}

/// Starts the ICMP thread (in this thread's network namespace). Without `CAP_NET_RAW` or
/// raw sockets it logs why and returns a queue that counts everything as lost: the kernel,
/// with its forwarding off, would have sent no error either.
pub fn start(
    counters: Arc<Counters>,
    stopped: impl Fn() -> bool + Send + 'static,
) -> (Queue, Option<thread::JoinHandle<()>>) {
    let output = match Output::open() {
        Ok(o) => o,
        Err(err) => {
            tracing::warn!(%err, "ICMP errors for the traffic xdpfwd cannot forward will not be sent");
            return (Queue { tx: None, counters }, None);
        }
    };
    let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
    let responder = Responder {
        output,
        settings: Settings::read(),
        read_at: Instant::now(),
        limiter: Limiter::default(),
        epoch: Instant::now(),
        counters: counters.clone(),
        message: [0; MESSAGE_MAX],
    };
    let handle = thread::Builder::new()
        .name("xdpfwd-icmp".into())
        .spawn(move || responder.run(&rx, &stopped));
    match handle {
        Ok(h) => (Queue { tx: Some(tx), counters }, Some(h)),
        Err(err) => {
            tracing::warn!(%err, "starting the ICMP thread failed: no ICMP errors will be sent");
            (Queue { tx: None, counters }, None)
        }
    }
}

/// The ICMP thread's state.
struct Responder {
    output: Output,
    settings: Settings,
    read_at: Instant,
    limiter: Limiter,
    /// Time zero of the limiter's milliseconds.
    epoch: Instant,
    counters: Arc<Counters>,
    message: [u8; MESSAGE_MAX],
}

impl Responder {
    /// Answers jobs until every worker's queue is gone or `stopped()` (checked every 200 ms).
    fn run(mut self, rx: &Receiver<Job>, stopped: &impl Fn() -> bool) {
        while !stopped() {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(job) => self.answer(&job),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            if self.read_at.elapsed() >= SETTINGS_REFRESH {
                self.settings = Settings::read();
                self.read_at = Instant::now();
            }
        }
    }

    /// The limiter's clock: ms since start, plus a minute so that a fresh destination's
    /// "last seen" (a minute ago) is representable.
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 60_000
    }

    fn answer(&mut self, job: &Job) {
        let packet = &job.packet[..job.len];
        let outcome = if job.silent {
            Outcome::NotAnswered
        } else if job.v6 {
            self.answer_v6(job, packet)
        } else {
            self.answer_v4(job, packet)
        };
        let counter = match outcome {
            Outcome::Sent => &self.counters.sent,
            Outcome::Limited => &self.counters.rate_limited,
            Outcome::NotAnswered => &self.counters.not_answered,
            Outcome::Failed => &self.counters.failed,
        };
        counter.fetch_add(1, Relaxed);
    }

    /// `ip_error` (for the unreachable kinds), then `__icmp_send`.
    fn answer_v4(&mut self, job: &Job, packet: &[u8]) -> Outcome {
        if !message::answerable_v4(packet) {
            return Outcome::NotAnswered;
        }
        let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
        let peer = IpAddr::V4(src);
        let now = self.now();
        let unreachable = matches!(
            job.error,
            IcmpError::NoRoute | IcmpError::Unreachable | IcmpError::Prohibited
        );
        if unreachable && !self.limiter.route_error_allow(&self.settings, peer, now) {
            return Outcome::Limited;
        }
        let (icmp_type, code) = message::type_code(job.error, false);
        let limited = self.settings.limited(false, icmp_type, code);
        if limited && !self.limiter.global_allow(&self.settings, now) {
            return Outcome::Limited;
        }
        let source = if self.settings.inbound_ifaddr {
            self.output.select_addr(job.ingress, src)
        } else {
            None
        };
        if limited && !self.limiter.peer_allow(peer, self.settings.v4_ratelimit, now) {
            return Outcome::Limited;
        }
        let n = message::build_v4(job.error, job.mtu, packet, usize::MAX, &mut self.message);
        // The TOS bits of the packet with precedence "internetwork control".
        let tos = (packet[1] & 0x1e) | 0xc0;
        match self.output.send_v4(&self.message[..n], src, tos, source) {
            Ok(_) => {
                if limited {
                    self.limiter.consume();
                }
                Outcome::Sent
            }
            Err(err) => {
                tracing::debug!(%err, %src, "sending an ICMP error failed");
                Outcome::Failed
            }
        }
    }

    /// `icmp6_send`.
    fn answer_v6(&mut self, job: &Job, packet: &[u8]) -> Outcome {
        if !message::answerable_v6(packet) {
            return Outcome::NotAnswered;
        }
        let mut octets = [0u8; 16];
        octets.copy_from_slice(&packet[8..24]);
        let src = Ipv6Addr::from(octets);
        let now = self.now();
        let (icmp_type, code) = message::type_code(job.error, true);
        let limited = self.settings.limited(true, icmp_type, code);
        // The route back (prefix length, preferred source), asked once, after the global
        // limit has let the error through.
        let mut back = None;
        if limited {
            if !self.limiter.global_allow(&self.settings, now) {
                return Outcome::Limited;
            }
            back = self.output.route_back(src);
            let Some((prefix_len, _)) = back else {
                return Outcome::Failed;
            };
            let interval = self.settings.v6_interval(prefix_len);
            if !self.limiter.peer_allow(IpAddr::V6(src), interval, now) {
                return Outcome::Limited;
            }
        }
        let n = message::build_v6(job.error, job.mtu, packet, &mut self.message);
        // `icmp6_send`: a route's preferred source, else the address the ingress would send
        // to `src` from.
        if !limited {
            back = self.output.route_back(src);
        }
        let source = if back.is_some_and(|(_, prefsrc)| prefsrc) {
            None
        } else {
            source::select(&self.output.addresses_v6(), src, job.ingress)
        };
        match self.output.send_v6(&self.message[..n], src, source) {
            Ok(_) => {
                if limited {
                    self.limiter.consume();
                }
                Outcome::Sent
            }
            Err(err) => {
                tracing::debug!(%err, %src, "sending an ICMPv6 error failed");
                Outcome::Failed
            }
        }
    }
}

enum Outcome {
    Sent,
    Limited,
    NotAnswered,
    Failed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_takes_the_ip_packet_without_padding() {
        let mut frame = vec![0x45, 0, 0, 28, 0, 0, 0, 0, 1, 17];
        frame.resize(60, 0xee);
        let job = Job::new(IcmpError::TimeExceeded, (false, false), 0, 3, &frame);
        assert_eq!(job.len, 28);
        assert_eq!(&job.packet[..28], &frame[..28]);
        let short = Job::new(IcmpError::TimeExceeded, (false, false), 0, 3, &frame[..3]);
        assert_eq!(short.len, 0);
        let mut v6 = vec![0x60, 0, 0, 0, 0x10, 0, 17, 1];
        v6.resize(40 + 4096, 1);
        let big = Job::new(IcmpError::TooBig, (true, false), 1280, 3, &v6);
        assert_eq!((big.len, big.packet[7]), (QUOTE_V6, 1));
        let after = Job::new(IcmpError::TooBig, (true, true), 1280, 3, &v6);
        assert_eq!(after.packet[7], 0, "the hop limit as forwarding left it");
        assert!(!big.silent && !after.silent);
        // Too big for the route's MTU behind a routing header that runs past the packet.
        let mut chain = v6.clone();
        (chain[6], chain[40], chain[41]) = (43, 17, 255);
        chain.truncate(40 + 0x100);
        (chain[4], chain[5]) = (0x01, 0);
        assert!(Job::new(IcmpError::TooBig, (true, true), 1280, 3, &chain).silent);
        assert!(!Job::new(IcmpError::TooBig, (true, false), 1280, 3, &chain).silent, "link MTU");
    }
}
