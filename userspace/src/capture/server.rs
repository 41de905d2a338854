//! The instance's side of `xdpfwd capture`: a thread that takes clients on
//! `<stats directory>/<pid>.capture`, turns the capture on in the XDP program and the workers
//! while any runs, reads the perf ring and the workers' rings, and sends each client the frames
//! it selected. A slow client loses frames (counted and reported to it), never slows
//! forwarding; a client that goes away turns its capture off.

use std::{
    collections::HashMap,
    fs,
    io::{self, BufRead, BufReader, Read, Write},
    os::{
        fd::AsFd,
        unix::net::{UnixListener, UnixStream},
    },
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{
    Array, HashMap as BpfHashMap, MapData,
    perf::{PerfEvent, PerfEventArray, PerfEventArrayBuffer},
};
use nix::{
    poll::{PollFd, PollFlags, PollTimeout, poll},
    sys::socket::{getsockopt, sockopt::PeerCredentials},
};
use xdpfwd_common::{CaptureCtl, CaptureFlags, CaptureHeader, CaptureKind};

use super::{
    Switch,
    filter::Filter,
    tap::Drain,
    wire::{self, Reply, Request},
};

/// Bytes queued for a client before its frames count as lost.
const CLIENT_BUFFER: usize = 8 << 20;
/// Pages of each CPU's perf buffer (a power of two): 1 MiB with 4 KiB pages.
const PERF_PAGES: usize = 256;
/// The most a capture copies of a frame (also what the program copies while a filter
/// needs to see whole frames).
pub const MAX_SNAPLEN: u32 = 65_535;
/// How often a client hears how many of its frames were lost.
const LOST_EVERY: Duration = Duration::from_secs(1);

/// What the server needs from the forwarder: its interfaces, the program's capture maps,
/// the workers' rings and the switch they read.
pub struct Parts {
    pub interfaces: Vec<(u32, String)>,
    pub ctl: Array<MapData, CaptureCtl>,
    pub ctl_ifaces: BpfHashMap<MapData, u32, u32>,
    pub events: PerfEventArray<MapData>,
    pub drains: Vec<Drain>,
    pub switch: Arc<Switch>,
}

/// The socket's path for this instance.
fn socket_path() -> anyhow::Result<PathBuf> {
    Ok(crate::stats_server::dir()?.join(format!("{}.capture", std::process::id())))
}

/// Serves captures until `stop`. The stats server made the directory.
pub fn serve(parts: Parts, stop: Arc<AtomicBool>) -> anyhow::Result<thread::JoinHandle<()>> {
    let path = socket_path()?;
    let _ = fs::remove_file(&path);
    let listener =
        UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    listener.set_nonblocking(true)?;
    let mut server = Server { parts, listener, buffers: Vec::new(), sessions: Vec::new() };
    Ok(thread::Builder::new().name("xdpfwd-capture".into()).spawn(move || {
        while !stop.load(Relaxed) {
            server.accept();
            if server.sessions.is_empty() {
                thread::sleep(Duration::from_millis(50));
                continue;
            }
            server.pump();
        }
        server.sessions.clear();
        server.apply();
        let _ = fs::remove_file(&path);
    })?)
}

struct Server {
    parts: Parts,
    listener: UnixListener,
    /// One per online CPU, opened at the first capture.
    buffers: Vec<PerfEventArrayBuffer<MapData>>,
    sessions: Vec<Session>,
}

/// One client and what it wants.
struct Session {
    conn: UnixStream,
    flags: CaptureFlags,
    ifaces: Vec<u32>,
    snaplen: u32,
    filter: Filter,
    /// Records not yet written to the client.
    out: Vec<u8>,
    lost: u64,
    last_lost: Instant,
    /// Workers' lost counts when it began (their counters never reset).
    base_lost: u64,
}

impl Server {
    /// Takes the clients that connected.
    fn accept(&mut self) {
        while let Ok((conn, _)) = self.listener.accept() {
            match self.begin(conn) {
                Ok(session) => {
                    tracing::info!(
                        interfaces = ?session.ifaces,
                        flags = ?session.flags,
                        "a capture began"
                    );
                    self.sessions.push(session);
                    self.apply();
                }
                Err(err) => tracing::warn!("a capture was refused: {err:#}"),
            }
        }
    }

    /// Reads a client's request and answers it.
    fn begin(&mut self, mut conn: UnixStream) -> anyhow::Result<Session> {
        conn.set_nonblocking(false)?;
        conn.set_read_timeout(Some(Duration::from_secs(2)))?;
        conn.set_write_timeout(Some(Duration::from_secs(2)))?;
        let answer = self.check(&conn);
        let reply = match &answer {
            Ok(s) => Reply::Ready {
                interfaces: self
                    .parts
                    .interfaces
                    .iter()
                    .filter(|(i, _)| s.ifaces.contains(i))
                    .cloned()
                    .collect(),
            },
            Err(err) => Reply::Refused { error: format!("{err:#}") },
        };
        writeln!(conn, "{}", serde_json::to_string(&reply)?)?;
        let mut session = answer?;
        conn.set_nonblocking(true)?;
        session.conn = conn;
        Ok(session)
    }

    /// The session a request asks for, or why not. Only root and this instance's user may
    /// see its traffic.
    fn check(&self, conn: &UnixStream) -> anyhow::Result<Session> {
        let cred = getsockopt(conn, PeerCredentials).context("SO_PEERCRED")?;
        let me = nix::unistd::geteuid().as_raw();
        if cred.uid() != 0 && cred.uid() != me {
            anyhow::bail!("uid {} may not capture (only root or uid {me})", cred.uid());
        }
        let mut line = String::new();
        BufReader::new(conn.take(1 << 16)).read_line(&mut line).context("reading the request")?;
        let request: Request = serde_json::from_str(&line).context("decoding the request")?;
        let flags = CaptureFlags::from_bits(request.flags)
            .filter(|f| !f.is_empty())
            .with_context(|| format!("capture flags {:#x}", request.flags))?;
        let ifaces = self.select(&request.interfaces)?;
        let filter = Filter::compile(&request.filter)?;
        Ok(Session {
            conn: conn.try_clone()?,
            flags,
            ifaces,
            snaplen: request.snaplen.clamp(1, MAX_SNAPLEN),
            filter,
            out: Vec::new(),
            lost: 0,
            last_lost: Instant::now(),
            base_lost: self.worker_lost(),
        })
    }

    /// The ifindexes of the named interfaces (all of them for none).
    fn select(&self, names: &[String]) -> anyhow::Result<Vec<u32>> {
        let all = &self.parts.interfaces;
        if names.is_empty() {
            return Ok(all.iter().map(|(i, _)| *i).collect());
        }
        names
            .iter()
            .map(|name| {
                all.iter().find(|(_, n)| n == name).map(|(i, _)| *i).with_context(|| {
                    let known: Vec<&str> = all.iter().map(|(_, n)| n.as_str()).collect();
                    format!("{name} is not an interface of this instance ({})", known.join(", "))
                })
            })
            .collect()
    }

    fn worker_lost(&self) -> u64 {
        self.parts.drains.iter().map(|d| d.lost.load(Relaxed)).sum()
    }

    /// Sets the program's maps and the workers' switch to what the sessions want together.
    fn apply(&mut self) {
        let mut flags = CaptureFlags::empty();
        let mut snaplen = 0;
        let mut per_iface: HashMap<u32, CaptureFlags> = HashMap::new();
        for s in &self.sessions {
            flags |= s.flags;
            // A filter needs whole frames; the server cuts them to size after it.
            snaplen = snaplen.max(if s.filter.is_empty() { s.snaplen } else { MAX_SNAPLEN });
            for &i in &s.ifaces {
                *per_iface.entry(i).or_default() |= s.flags;
            }
        }
        if !flags.is_empty()
            && self.buffers.is_empty()
            && let Err(err) = self.open_buffers()
        {
            tracing::warn!("capture: the XDP program's frames are not seen: {err:#}");
        }
        for (ifindex, _) in &self.parts.interfaces {
            let result = match per_iface.get(ifindex) {
                Some(f) => self.parts.ctl_ifaces.insert(ifindex, f.bits(), 0),
                None => match self.parts.ctl_ifaces.remove(ifindex) {
                    Err(aya::maps::MapError::KeyNotFound) => Ok(()),
                    other => other,
                },
            };
            if let Err(err) = result {
                tracing::warn!("capture: CAPTURE_IFACES: {err}");
            }
        }
        if let Err(err) = self.parts.ctl.set(0, CaptureCtl { flags, snaplen }, 0) {
            tracing::warn!("capture: CAPTURE: {err}");
        }
        self.parts.switch.set(flags, snaplen);
    }

    fn open_buffers(&mut self) -> anyhow::Result<()> {
        let cpus = aya::util::online_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?;
        for cpu in cpus {
            self.buffers.push(self.parts.events.open(cpu, Some(PERF_PAGES))?);
        }
        Ok(())
    }

    /// Moves frames from the rings to the clients, once.
    fn pump(&mut self) {
        self.wait_for_frames();
        let mut scratch = Vec::new();
        let mut kernel_lost = 0;
        for buffer in &mut self.buffers {
            buffer.for_each(|event| match event {
                PerfEvent::Sample { head, tail } => {
                    scratch.clear();
                    scratch.extend_from_slice(head);
                    scratch.extend_from_slice(tail);
                    dispatch(&mut self.sessions, &scratch);
                }
                PerfEvent::Lost { count } => kernel_lost += count,
            });
        }
        for drain in &mut self.parts.drains {
            let n = drain.ring.slots();
            let Ok(chunk) = drain.ring.read_chunk(n) else { continue };
            let (a, b) = chunk.as_slices();
            scratch.clear();
            scratch.extend_from_slice(a);
            scratch.extend_from_slice(b);
            chunk.commit_all();
            let mut at = 0;
            while let Some(h) = scratch.get(at..).and_then(CaptureHeader::from_bytes) {
                let end = at + size_of::<CaptureHeader>() + h.caplen as usize;
                let Some(record) = scratch.get(at..end) else { break };
                dispatch(&mut self.sessions, record);
                at = end;
            }
        }
        let worker_lost = self.worker_lost();
        let before = self.sessions.len();
        self.sessions.retain_mut(|s| {
            s.lost += kernel_lost;
            s.flush(worker_lost)
        });
        if self.sessions.len() != before {
            tracing::info!("a capture ended");
            self.apply();
        }
    }

    /// Sleeps until the perf ring has frames, at most 20 ms (the workers' rings and the
    /// clients are looked at after it in any case).
    fn wait_for_frames(&self) {
        let mut fds: Vec<PollFd> =
            self.buffers.iter().map(|b| PollFd::new(b.as_fd(), PollFlags::POLLIN)).collect();
        if fds.is_empty() {
            thread::sleep(Duration::from_millis(20));
        } else {
            let _ = poll(&mut fds, PollTimeout::from(20u8));
        }
    }
}

/// Hands one record (header and frame, as a ring holds it) to the sessions that want it.
fn dispatch(sessions: &mut [Session], record: &[u8]) {
    let Some(header) = CaptureHeader::from_bytes(record) else { return };
    let Some(kind) = CaptureKind::from_u8(header.kind) else { return };
    let start = size_of::<CaptureHeader>();
    let Some(frame) = record.get(start..start + header.caplen as usize) else { return };
    for s in sessions {
        if !s.flags.contains(kind.flag())
            || !s.ifaces.contains(&header.ifindex)
            || !s.filter.matches(frame)
        {
            continue;
        }
        let caplen = frame.len().min(s.snaplen as usize);
        if s.out.len() + wire::record_len(caplen) > CLIENT_BUFFER {
            s.lost += 1;
            continue;
        }
        let header = CaptureHeader { caplen: caplen as u32, ..header };
        wire::put_record(&mut s.out, &header, &frame[..caplen]);
    }
}

impl Session {
    /// Writes what the client can take; reports losses now and then. `false`: the client is
    /// gone.
    fn flush(&mut self, worker_lost: u64) -> bool {
        // A client that closed its end is noticed even while no frame comes for it. It sends
        // nothing after its request.
        let mut byte = [0u8; 1];
        match self.conn.read(&mut byte) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            _ => return false,
        }
        if self.last_lost.elapsed() >= LOST_EVERY {
            self.last_lost = Instant::now();
            let lost = self.lost + worker_lost.saturating_sub(self.base_lost);
            let header = CaptureHeader { kind: wire::LOST, caplen: 8, ..Default::default() };
            wire::put_record(&mut self.out, &header, &lost.to_le_bytes());
        }
        while !self.out.is_empty() {
            match self.conn.write(&self.out) {
                Ok(0) => return false,
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        true
    }
}
