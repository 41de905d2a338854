//! `xdpfwd capture`: asks the instance of this network namespace for frames and writes them
//! as pcapng (to a file, or standard output for `| tcpdump -r -` and Wireshark).

use std::{
    borrow::Cow,
    fs,
    io::{self, BufRead, BufReader, BufWriter, IsTerminal, Write},
    os::unix::{fs::FileTypeExt, net::UnixStream},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use pcap_file::{
    DataLink,
    pcapng::{
        PcapNgWriter,
        blocks::{
            enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption},
            interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption},
        },
    },
};
use xdpfwd_common::{CaptureFlags, CaptureHeader, CaptureKind, CapturePath, Counter, WorkerDrop};

use super::{
    filter::Filter,
    server::MAX_SNAPLEN,
    tap::monotonic_ns,
    wire::{self, RecordReader, Reply, Request},
};
use crate::stats_server;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Direction {
    In,
    Out,
    Both,
    /// No frame in or out (with `--drops`: only what is not forwarded).
    None,
}

/// `xdpfwd capture`'s flags.
#[derive(clap::Args, Debug)]
pub struct CaptureArgs {
    /// An interface of the instance to capture on (repeat for more; default: all of them).
    #[arg(short, long = "interface", value_name = "IFACE")]
    pub interfaces: Vec<String>,
    /// Frames arriving (before any change), leaving (rewritten), or both. Default: both;
    /// with `--drops`: none.
    #[arg(long, value_enum)]
    pub direction: Option<Direction>,
    /// Also the frames xdpfwd does not forward: left to the kernel or dropped, each with the
    /// counter that says why (a pcapng comment).
    #[arg(long)]
    pub drops: bool,
    /// Stop after this many frames (0: until interrupted).
    #[arg(short, long, default_value_t = 0)]
    pub count: u64,
    /// Bytes of each frame to keep.
    #[arg(short, long, default_value_t = MAX_SNAPLEN)]
    pub snaplen: u32,
    /// Write pcapng here ("-": standard output, the default when it is not a terminal).
    #[arg(short, long, value_name = "FILE")]
    pub write: Option<PathBuf>,
    /// The instance, when several run in this network namespace.
    #[arg(long)]
    pub pid: Option<u32>,
    /// A tcpdump filter expression (pcap-filter(7)); frames that do not match are not copied
    /// to the capture.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub filter: Vec<String>,
}

impl CaptureArgs {
    fn flags(&self) -> anyhow::Result<CaptureFlags> {
        let direction =
            self.direction.unwrap_or(if self.drops { Direction::None } else { Direction::Both });
        let mut flags = match direction {
            Direction::In => CaptureFlags::IN,
            Direction::Out => CaptureFlags::OUT,
            Direction::Both => CaptureFlags::IN | CaptureFlags::OUT,
            Direction::None => CaptureFlags::empty(),
        };
        flags.set(CaptureFlags::DROPS, self.drops);
        if flags.is_empty() {
            bail!("--direction none captures nothing without --drops");
        }
        Ok(flags)
    }
}

/// Runs a capture until `--count` frames, SIGINT / SIGTERM, or the instance stops.
pub fn run(args: CaptureArgs) -> anyhow::Result<()> {
    let flags = args.flags()?;
    if !(1..=MAX_SNAPLEN).contains(&args.snaplen) {
        bail!("--snaplen {}: expected 1 to {MAX_SNAPLEN}", args.snaplen);
    }
    let expr = args.filter.join(" ");
    Filter::compile(&expr)?;
    let out: Box<dyn Write> = match args.write.as_deref() {
        Some(p) if p.as_os_str() != "-" => {
            Box::new(fs::File::create(p).with_context(|| format!("creating {}", p.display()))?)
        }
        _ if io::stdout().is_terminal() => bail!(
            "standard output is a terminal: write pcapng to a file (-w FILE) or a pipe \
             (xdpfwd capture -w - | tcpdump -r -)"
        ),
        _ => Box::new(io::stdout().lock()),
    };
    let conn = connect(args.pid)?;
    let request = Request {
        interfaces: args.interfaces.clone(),
        flags: flags.bits(),
        snaplen: args.snaplen,
        filter: expr,
    };
    let (interfaces, reader) = handshake(conn, &request)?;
    let names: Vec<&str> = interfaces.iter().map(|(_, n)| n.as_str()).collect();
    let what: Vec<String> = flags.iter_names().map(|(n, _)| n.to_lowercase()).collect();
    eprintln!("xdpfwd: capturing {} on {}", what.join(", "), names.join(", "));
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())?;
    }
    let mut pcap = Pcap::new(BufWriter::new(out), &interfaces, args.snaplen)?;
    let (captured, lost) = pcap.copy(reader, args.count, &stop)?;
    eprintln!("xdpfwd: {captured} frames captured, {lost} lost");
    Ok(())
}

/// The capture socket of the instance of this namespace (`pid`, or the only one that
/// answers). As `xdpfwd stats` does, it trusts only an instance of root, this user or the
/// directory's owner, and takes its pid from the kernel (`SO_PEERCRED`); a socket nobody
/// listens on (left by a killed instance) is skipped.
fn connect(pid: Option<u32>) -> anyhow::Result<UnixStream> {
    let dir = stats_server::dir()?;
    let none = || anyhow::anyhow!("no xdpfwd instance to capture from in this network namespace");
    if !dir.exists() {
        return Err(none());
    }
    stats_server::check_dir(std::path::Path::new(stats_server::BASE))?;
    let owner = stats_server::check_dir(&dir)?;
    let mut found = Vec::new();
    let mut denied = None;
    for entry in fs::read_dir(&dir)?.filter_map(Result::ok) {
        let path = entry.path();
        let is_capture = path.extension().is_some_and(|e| e == "capture");
        if !is_capture || !entry.file_type().is_ok_and(|t| t.is_socket()) {
            continue;
        }
        let conn = match UnixStream::connect(&path) {
            Ok(conn) => conn,
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                denied = Some(path);
                continue;
            }
            // Nobody listens: left by an instance that was killed.
            Err(_) => continue,
        };
        match stats_server::trusted_peer(&conn, owner) {
            Ok(pid) => found.push((pid, conn)),
            Err(why) => eprintln!("xdpfwd: skipping {}: {why:#}", path.display()),
        }
    }
    if let Some(pid) = pid {
        let conn = found.into_iter().find(|(p, _)| *p == pid).map(|(_, c)| c);
        return conn.with_context(|| format!("no xdpfwd instance with pid {pid} here"));
    }
    match found.len() {
        0 => match denied {
            Some(path) => bail!(
                "{}: permission denied (only root and the instance's user may capture)",
                path.display()
            ),
            None => Err(none()),
        },
        1 => Ok(found.remove(0).1),
        _ => {
            let pids: Vec<String> = found.iter().map(|(p, _)| p.to_string()).collect();
            bail!("several instances run here (pids {}): choose one with --pid", pids.join(", "))
        }
    }
}

/// The interfaces of a capture (ifindex, name), in the order of its interface blocks.
type Interfaces = Vec<(u32, String)>;

/// Sends the request; returns the interfaces the records will name, and the stream.
fn handshake(
    conn: UnixStream,
    request: &Request,
) -> anyhow::Result<(Interfaces, BufReader<UnixStream>)> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut writer = conn.try_clone()?;
    writeln!(writer, "{}", serde_json::to_string(request)?)?;
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    reader.read_line(&mut line).context("reading the instance's answer")?;
    match serde_json::from_str(&line).context("decoding the instance's answer")? {
        Reply::Ready { interfaces } => {
            // Short reads: the stop flag is looked at between them.
            reader.get_ref().set_read_timeout(Some(Duration::from_millis(200)))?;
            Ok((interfaces, reader))
        }
        Reply::Refused { error } => bail!("the instance refused: {error}"),
    }
}

/// The pcapng being written: one interface block per interface of the capture.
struct Pcap<W: Write> {
    writer: PcapNgWriter<W>,
    interfaces: Vec<u32>,
    /// `CLOCK_REALTIME` − `CLOCK_MONOTONIC`, in nanoseconds.
    epoch: u128,
}

impl<W: Write> Pcap<W> {
    fn new(out: W, interfaces: &[(u32, String)], snaplen: u32) -> anyhow::Result<Self> {
        let mut writer = PcapNgWriter::new(out)?;
        for (_, name) in interfaces {
            writer.write_pcapng_block(InterfaceDescriptionBlock {
                linktype: DataLink::ETHERNET,
                snaplen,
                options: vec![
                    InterfaceDescriptionOption::IfName(Cow::Borrowed(name)),
                    InterfaceDescriptionOption::IfTsResol(9),
                ],
            })?;
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
        let epoch = now.saturating_sub(u128::from(monotonic_ns()));
        Ok(Pcap { writer, interfaces: interfaces.iter().map(|(i, _)| *i).collect(), epoch })
    }

    /// Copies records into the file until `count` frames (0: no limit), `stop`, or the end
    /// of the stream. Returns the frames written and those the instance lost.
    fn copy(
        &mut self,
        from: BufReader<UnixStream>,
        count: u64,
        stop: &AtomicBool,
    ) -> anyhow::Result<(u64, u64)> {
        let (mut written, mut lost) = (0, 0);
        let mut records = RecordReader::with(from.buffer());
        let mut from = from.into_inner();
        while !stop.load(Relaxed) && (count == 0 || written < count) {
            let (header, frame) = match records.next(&mut from) {
                Ok(Some(record)) => record,
                Ok(None) => break,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    self.writer.get_mut().flush()?;
                    continue;
                }
                Err(e) => return Err(e).context("reading from the instance"),
            };
            if header.kind == wire::LOST {
                lost = frame.get(..8).map_or(lost, |b| u64::from_le_bytes(b.try_into().unwrap()));
                continue;
            }
            if self.write(&header, &frame)? {
                written += 1;
            }
        }
        self.writer.get_mut().flush()?;
        Ok((written, lost))
    }

    /// Writes one frame; `false` for a frame of an interface the capture does not have.
    fn write(&mut self, header: &CaptureHeader, frame: &[u8]) -> anyhow::Result<bool> {
        let Some(interface_id) = self.interfaces.iter().position(|&i| i == header.ifindex) else {
            return Ok(false);
        };
        let (flags, comment) = describe(header);
        self.writer.write_pcapng_block(EnhancedPacketBlock {
            interface_id: interface_id as u32,
            timestamp: Duration::from_nanos(
                u64::try_from(self.epoch + u128::from(header.ts)).unwrap_or(u64::MAX),
            ),
            original_len: header.len,
            data: Cow::Borrowed(frame),
            options: vec![
                EnhancedPacketOption::Flags(flags),
                EnhancedPacketOption::Comment(Cow::Owned(comment)),
            ],
        })?;
        Ok(true)
    }
}

/// pcapng `epb_flags` direction bits.
const INBOUND: u32 = 1;
const OUTBOUND: u32 = 2;

/// The packet block's direction flags and comment for a record: where it was seen, by which
/// path, and for frames not forwarded, the counter that says why.
fn describe(header: &CaptureHeader) -> (u32, String) {
    let worker = header.path == CapturePath::AfXdp as u8;
    let reason = if worker {
        WorkerDrop::from_u8(header.reason).map_or("unknown", WorkerDrop::name)
    } else {
        Counter::ALL.get(usize::from(header.reason)).map_or("unknown", |c| c.name())
    };
    match CaptureKind::from_u8(header.kind) {
        Some(CaptureKind::In) => (INBOUND, "xdpfwd: in".into()),
        Some(CaptureKind::Out) if worker => (OUTBOUND, "xdpfwd: out, AF_XDP path".into()),
        Some(CaptureKind::Out) => (OUTBOUND, "xdpfwd: out, fast path".into()),
        Some(CaptureKind::Kernel) => (INBOUND, format!("xdpfwd: to the kernel: {reason}")),
        // A worker's drops are recorded on the egress or the ingress: no direction.
        Some(CaptureKind::Dropped) if worker => (0, format!("xdpfwd: dropped: {reason}")),
        Some(CaptureKind::Dropped) => (INBOUND, format!("xdpfwd: dropped: {reason}")),
        None => (0, "xdpfwd: unknown".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: CaptureKind, path: CapturePath, reason: u8) -> CaptureHeader {
        CaptureHeader { kind: kind as u8, path: path as u8, reason, ..Default::default() }
    }

    #[test]
    fn records_are_described_with_their_direction_path_and_reason() {
        let ttl = header(CaptureKind::Kernel, CapturePath::Xdp, Counter::PassTtl as u8);
        assert_eq!(describe(&ttl), (INBOUND, "xdpfwd: to the kernel: pass_ttl".into()));
        let held = header(CaptureKind::Dropped, CapturePath::AfXdp, WorkerDrop::Held as u8);
        assert_eq!(describe(&held), (0, "xdpfwd: dropped: held_dropped".into()));
        let fast = header(CaptureKind::Out, CapturePath::Xdp, Counter::FastForwarded as u8);
        assert_eq!(describe(&fast), (OUTBOUND, "xdpfwd: out, fast path".into()));
        let sent = header(CaptureKind::Out, CapturePath::AfXdp, 0);
        assert_eq!(describe(&sent).1, "xdpfwd: out, AF_XDP path");
    }

    #[test]
    fn directions_and_drops_make_the_flags() {
        let args = |direction, drops| CaptureArgs {
            interfaces: vec![],
            direction,
            drops,
            count: 0,
            snaplen: 100,
            write: None,
            pid: None,
            filter: vec![],
        };
        assert_eq!(args(None, false).flags().unwrap(), CaptureFlags::IN | CaptureFlags::OUT);
        assert_eq!(args(None, true).flags().unwrap(), CaptureFlags::DROPS);
        let both = args(Some(Direction::In), true).flags().unwrap();
        assert_eq!(both, CaptureFlags::IN | CaptureFlags::DROPS);
        assert!(args(Some(Direction::None), false).flags().is_err());
    }
}
