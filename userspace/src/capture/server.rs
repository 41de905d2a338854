//! The instance's side of `xdpfwd capture`: a thread that takes clients on
//! `<stats directory>/<pid>.capture`, turns the capture on in the XDP program and the workers
//! while any runs, reads the program's ring and the workers' rings, and sends each client the frames
//! it selected. A slow client loses frames (counted and reported to it), never slows
//! forwarding; a client that goes away turns its capture off.

use std::{
    collections::HashMap,
    fs,
    io::{self, BufRead, BufReader, Read, Write},
    os::unix::net::{UnixListener, UnixStream},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use xdpfwd_common::{
    CaptureCtl, CaptureFlags, CaptureHeader, CaptureKind,
    cbpf::{CbpfInsn, MAX_INSNS},
    map_names,
};

use super::{
    Switch,
    filter::Filter,
    tap::Drain,
    wire::{self, Reply, Request},
};

/// Bytes queued for a client before its frames count as lost.
const CLIENT_BUFFER: usize = 8 << 20;
/// How long a new client has to send its request (and take the answer).
const REQUEST_TIMEOUT: Duration = Duration::from_millis(500);
/// Most records read from the program's ring at once: the workers' rings and the clients
/// get their turn under any load.
const RECORDS_PER_PUMP: usize = 65_536;
/// How often a client hears a lost count that changed.
const LOST_EVERY: Duration = Duration::from_millis(10);

/// How long the server sleeps when the rings were empty (they wake nobody: a frame costs
/// the data path no interrupt).
const IDLE: Duration = Duration::from_millis(2);
/// The most a capture copies of a frame (also what the data path copies while a filter
/// runs here and needs to see whole frames).
pub const MAX_SNAPLEN: u32 = 65_535;

/// The XDP program's capture maps.
pub struct Maps {
    ctl: Array<MapData, CaptureCtl>,
    ifaces: BpfHashMap<MapData, u32, u32>,
    filter: Array<MapData, CbpfInsn>,
    ring: RingBuf<MapData>,
    lost: PerCpuArray<MapData, u64>,
}

impl Maps {
    /// Takes them out of the loaded program.
    pub fn take(ebpf: &mut aya::Ebpf) -> anyhow::Result<Maps> {
        let mut take =
            |name: &str| ebpf.take_map(name).with_context(|| format!("map {name} missing"));
        Ok(Maps {
            ctl: Array::try_from(take(map_names::CAPTURE)?)?,
            ifaces: BpfHashMap::try_from(take(map_names::CAPTURE_IFACES)?)?,
            filter: Array::try_from(take(map_names::CAPTURE_FILTER)?)?,
            ring: RingBuf::try_from(take(map_names::CAPTURE_RING)?)?,
            lost: PerCpuArray::try_from(take(map_names::CAPTURE_LOST)?)?,
        })
    }
}

/// What the server needs from the forwarder: its interfaces, the program's capture maps,
/// the workers' rings and the switch they read.
pub struct Parts {
    pub interfaces: Vec<(u32, String)>,
    pub maps: Maps,
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
    let mut server = Server { parts, listener, sessions: Vec::new() };
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
    sessions: Vec<Session>,
}

/// One client and what it wants.
struct Session {
    conn: UnixStream,
    flags: CaptureFlags,
    ifaces: Vec<u32>,
    snaplen: u32,
    filter: Filter,
    /// Records for the client; those before `sent` are written.
    out: Vec<u8>,
    sent: usize,
    /// Frames it wanted that did not fit into `out`.
    lost: u64,
    /// The lost count it last heard, and when.
    reported: u64,
    last_lost: Instant,
    /// The rings' lost counts when it began (they never reset).
    base_lost: u64,
    /// When it began (`CLOCK_MONOTONIC` ns): frames a ring still holds from before are not
    /// its own.
    since: u64,
}

impl Server {
    /// Takes the clients that connected.
    fn accept(&mut self) {
        while let Ok((conn, _)) = self.listener.accept() {
            if let Err(err) = self.begin(conn) {
                tracing::warn!("a capture was refused: {err:#}");
            }
        }
    }

    /// Reads a client's request, turns its capture on, then says so: frames that arrive
    /// after the client hears "ready" are captured.
    fn begin(&mut self, mut conn: UnixStream) -> anyhow::Result<()> {
        conn.set_nonblocking(false)?;
        // A silent client holds the other captures up this long at most.
        conn.set_read_timeout(Some(REQUEST_TIMEOUT))?;
        conn.set_write_timeout(Some(REQUEST_TIMEOUT))?;
        let session = match self.check(&conn) {
            Ok(session) => session,
            Err(err) => {
                let _ = reply(&mut conn, &Reply::Refused { error: format!("{err:#}") });
                return Err(err);
            }
        };
        let interfaces: Vec<(u32, String)> = (self.parts.interfaces.iter())
            .filter(|(i, _)| session.ifaces.contains(i))
            .cloned()
            .collect();
        tracing::info!(interfaces = ?session.ifaces, flags = ?session.flags, "a capture began");
        self.sessions.push(session);
        self.apply();
        let ready = reply(&mut conn, &Reply::Ready { interfaces }).and_then(|()| {
            conn.set_nonblocking(true)?;
            Ok(())
        });
        if let Err(err) = ready {
            self.sessions.pop();
            self.apply();
            return Err(err);
        }
        Ok(())
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
            sent: 0,
            reported: 0,
            flags,
            ifaces,
            snaplen: request.snaplen.clamp(1, MAX_SNAPLEN),
            filter,
            out: Vec::new(),
            lost: 0,
            last_lost: Instant::now(),
            base_lost: self.ring_lost(),
            since: super::tap::monotonic_ns(),
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

    /// Frames the rings could not take: the XDP program's and the workers'.
    fn ring_lost(&self) -> u64 {
        let xdp: u64 =
            self.parts.maps.lost.get(&0, 0).map(|per_cpu| per_cpu.iter().sum()).unwrap_or(0);
        xdp + self.parts.drains.iter().map(|d| d.lost.load(Relaxed)).sum::<u64>()
    }

    /// Sets the program's maps and the workers' switch to what the sessions want together.
    fn apply(&mut self) {
        let mut flags = CaptureFlags::empty();
        let mut per_iface: HashMap<u32, CaptureFlags> = HashMap::new();
        for s in &self.sessions {
            flags |= s.flags;
            for &i in &s.ifaces {
                *per_iface.entry(i).or_default() |= s.flags;
            }
        }
        // One filter every capture shares runs in the data path, before frames are copied;
        // otherwise every frame is copied whole, and each capture's filter runs here.
        let shared = self.sessions.first().map(|s| s.filter.clone()).filter(|f| {
            !f.is_empty()
                && f.insns().len() <= MAX_INSNS as usize
                && self.sessions.iter().all(|s| s.filter == *f)
        });
        // A filter sees whole frames (each client's runs here again); they are cut to the
        // client's length after it.
        let snaplen = self
            .sessions
            .iter()
            .map(|s| if s.filter.is_empty() { s.snaplen } else { MAX_SNAPLEN })
            .max()
            .unwrap_or(0);
        let filter = shared.unwrap_or_default();
        for (i, insn) in filter.insns().iter().enumerate() {
            if let Err(err) = self.parts.maps.filter.set(i as u32, insn, 0) {
                tracing::warn!("capture: CAPTURE_FILTER: {err}");
            }
        }
        for (ifindex, _) in &self.parts.interfaces {
            let result = match per_iface.get(ifindex) {
                Some(f) => self.parts.maps.ifaces.insert(ifindex, f.bits(), 0),
                // aya reports a missing key as the syscall's ENOENT.
                None => crate::control::ignore_missing(self.parts.maps.ifaces.remove(ifindex)),
            };
            if let Err(err) = result {
                tracing::warn!("capture: CAPTURE_IFACES: {err}");
            }
        }
        let filter_len = filter.insns().len() as u32;
        let ctl = CaptureCtl { flags, snaplen, filter_len, _pad: 0 };
        if let Err(err) = self.parts.maps.ctl.set(0, ctl, 0) {
            tracing::warn!("capture: CAPTURE: {err}");
        }
        let ifaces = per_iface.into_iter().collect();
        self.parts.switch.set(flags, snaplen, filter, ifaces);
    }

    /// Moves frames from the rings to the clients, once; sleeps a little when there were
    /// none.
    fn pump(&mut self) {
        let mut found = 0;
        for _ in 0..RECORDS_PER_PUMP {
            let Some(record) = self.parts.maps.ring.next() else { break };
            dispatch(&mut self.sessions, &record);
            found += 1;
        }
        let mut scratch = Vec::new();
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
                found += 1;
            }
        }
        let lost = self.ring_lost();
        let before = self.sessions.len();
        self.sessions.retain_mut(|s| s.flush(lost));
        if self.sessions.len() != before {
            tracing::info!("a capture ended");
            self.apply();
        }
        if found == 0 {
            thread::sleep(IDLE);
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
        if header.ts < s.since
            || !s.flags.contains(kind.flag())
            || !s.ifaces.contains(&header.ifindex)
            || !s.filter.matches(frame, header.len)
        {
            continue;
        }
        let caplen = frame.len().min(s.snaplen as usize);
        if s.out.len() - s.sent + wire::record_len(caplen) > CLIENT_BUFFER {
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
    fn flush(&mut self, ring_lost: u64) -> bool {
        // A client that closed its end is noticed even while no frame comes for it. It sends
        // nothing after its request.
        let mut byte = [0u8; 1];
        match self.conn.read(&mut byte) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            _ => return false,
        }
        let lost = self.lost + ring_lost.saturating_sub(self.base_lost);
        if lost != self.reported && self.last_lost.elapsed() >= LOST_EVERY {
            self.last_lost = Instant::now();
            self.reported = lost;
            let header = CaptureHeader { kind: wire::LOST, caplen: 8, ..Default::default() };
            wire::put_record(&mut self.out, &header, &lost.to_le_bytes());
        }
        while self.sent < self.out.len() {
            match self.conn.write(&self.out[self.sent..]) {
                Ok(0) => return false,
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        // Written bytes go once they are most of the buffer: no shift per partial write.
        if self.sent == self.out.len() {
            self.out.clear();
            self.sent = 0;
        } else if self.sent > self.out.len() / 2 {
            self.out.drain(..self.sent);
            self.sent = 0;
        }
        true
    }
}

/// Writes one line of the handshake.
fn reply(conn: &mut UnixStream, reply: &Reply) -> anyhow::Result<()> {
    writeln!(conn, "{}", serde_json::to_string(reply)?)?;
    Ok(())
}
