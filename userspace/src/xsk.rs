//! AF_XDP sockets over one shared UMEM.
//!
//! Owns the setup: the UMEM, one socket per (interface, rx queue), each with its own fill and
//! completion rings (`XDP_SHARED_UMEM`, libxdp's `xsk_socket__create_shared`), and the choice
//! between zero-copy and copy binds. It hands the sockets to workers as [`Port`]s and the
//! frames as [`FrameDesc`]s; it never touches a frame itself.
//!
//! Invariant (from xsk-rs): a frame handed to a fill or TX ring is not touched until it comes
//! back through an RX or completion ring, and descriptors never cross UMEMs (there is one).

use std::{io, num::NonZeroU32, os::fd::AsRawFd, sync::Arc};

use xdpfwd_common::{META_LEN, XDP_META_MAX, max_frame_for_mtu};
use xsk_rs::{
    CompQueue, FillQueue, FrameDesc, RxQueue, TxQueue, Umem,
    config::{BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig},
    socket::Socket,
};

use crate::{iface::Iface, stats::PortStats};

/// How sockets are bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BindMode {
    /// Zero-copy where the driver supports it, copy otherwise.
    Auto,
    /// Force copy mode.
    Copy,
    /// Force zero-copy mode (fails where the driver lacks it).
    ZeroCopy,
}

/// Sizes of the UMEM and the rings.
#[derive(Clone, Copy, Debug)]
pub struct XskConfig {
    pub frame_size: u32,
    pub ring_size: u32,
    pub frames_per_socket: u32,
    pub bind: BindMode,
    /// The UMEM in huge pages (`MAP_HUGETLB`).
    pub huge_pages: bool,
}

impl XskConfig {
    /// Longest frame (Ethernet header included) a single UMEM frame carries: the frame minus
    /// the headroom the kernel keeps for XDP (and the metadata in it).
    pub fn max_frame_len(&self) -> u32 {
        self.frame_size - XDP_PACKET_HEADROOM
    }
}

/// Longest frames the AF_XDP path carries, as the XDP program is told (`IfaceInfo`), room for
/// the metadata taken off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameLimits {
    /// In one UMEM frame (`IfaceInfo::max_frame`).
    pub single: u16,
    /// In up to [`MAX_SEGMENTS`] UMEM frames (`IfaceInfo::max_frame_sg`); 0 without
    /// multi-buffer sockets.
    pub multi: u16,
}

impl FrameLimits {
    pub fn new(config: &XskConfig, multi_buffer: bool) -> Self {
        let frame = config.max_frame_len() as usize;
        let multi = if multi_buffer { MAX_SEGMENTS * frame - META_LEN } else { 0 };
        Self {
            single: u16::try_from(frame - META_LEN).unwrap_or(u16::MAX),
            multi: u16::try_from(multi).unwrap_or(u16::MAX),
        }
    }

    /// The longest frame the AF_XDP path carries.
    pub fn longest(&self) -> u16 {
        self.single.max(self.multi)
    }

    /// The largest MTU whose packets all fit: the longest frame less an Ethernet header, a
    /// VLAN tag and the most metadata the kernel lets a program reserve.
    pub fn max_mtu(&self) -> u32 {
        (u32::from(self.longest()) + META_LEN as u32)
            .saturating_sub(max_frame_for_mtu(0) + XDP_META_MAX)
    }
}

/// Most UMEM frames one packet spans on sockets bound with `XDP_USE_SG`. In copy mode the
/// kernel builds one skb of a packet's frames, the first as its head and each further one a
/// page fragment (`xsk_build_skb`), and refuses more than `MAX_SKB_FRAGS` (17) of them; 16
/// carry 61,440 bytes with 4096-byte frames.
pub const MAX_SEGMENTS: usize = 16;

/// The UMEM's size for sockets on `queues`.
fn umem_bytes(queues: &[(Arc<Iface>, u32)], config: &XskConfig) -> u64 {
    queues.len() as u64 * u64::from(config.frames_per_socket) * u64::from(config.frame_size)
}

/// Waits (1 s at most) until `pages` huge pages are free for the taking.
fn await_huge_pages(pages: u64) {
    let available = || {
        let free = meminfo("HugePages_Free").unwrap_or(0);
        free.saturating_sub(meminfo("HugePages_Rsvd").unwrap_or(0))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    while available() < pages && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The size of the huge pages `MAP_HUGETLB` maps (`Hugepagesize` in /proc/meminfo; 2 MiB
/// where it cannot be read).
fn huge_page_size() -> u64 {
    meminfo("Hugepagesize").map_or(2 << 20, |kib| kib << 10)
}

/// The number in field `name` of /proc/meminfo (a count, or kB).
fn meminfo(name: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let value = text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))?;
    value.trim().trim_end_matches("kB").trim().parse().ok()
}

/// `XDP_PACKET_HEADROOM` from the kernel: the room in front of every received frame.
pub const XDP_PACKET_HEADROOM: u32 = 256;

#[derive(Debug, thiserror::Error)]
pub enum XskError {
    #[error("invalid AF_XDP configuration: {0}")]
    Config(String),
    #[error("creating the UMEM ({frames} frames of {frame_size} bytes) failed: {reason}")]
    Umem { frames: u32, frame_size: u32, reason: io::Error },
    #[error(
        "creating the UMEM ({mib} MiB) in huge pages failed: {reason}; reserve them first \
         (`sysctl vm.nr_hugepages={pages}` or more: HugePages_Free in /proc/meminfo), or \
         leave out --hugepages"
    )]
    HugePages { mib: u64, pages: u64, reason: io::Error },
    #[error("binding an AF_XDP socket to {iface} queue {queue} in {mode} mode failed: {source}")]
    Bind { iface: String, queue: u32, mode: &'static str, source: io::Error },
}

/// One AF_XDP socket: an rx queue of an interface, with its four rings.
pub struct Port {
    pub iface: Arc<Iface>,
    pub queue: u32,
    pub rx: RxQueue,
    pub tx: TxQueue,
    pub fill: FillQueue,
    pub comp: CompQueue,
    pub stats: Arc<PortStats>,
}

impl Port {
    pub fn raw_fd(&self) -> i32 {
        self.rx.fd().as_raw_fd()
    }
}

/// Everything [`open`] made.
pub struct Sockets {
    pub umem: Umem,
    pub ports: Vec<Port>,
    pub frames: Vec<FrameDesc>,
    pub zero_copy: bool,
    /// Bound with `XDP_USE_SG` (the UMEM's property: every socket on it): a packet may span
    /// up to [`MAX_SEGMENTS`] UMEM frames, on receive and on transmit.
    pub multi_buffer: bool,
}

/// Creates the UMEM and a socket on every `(iface, queue)` of `queues`.
///
/// Zero-copy sockets take single buffers (a zero-copy driver's multi-buffer limits are its
/// own); copy-mode sockets are bound with `XDP_USE_SG` where the kernel has it (6.6 and
/// later) and without where it refuses.
pub fn open(queues: &[(Arc<Iface>, u32)], config: &XskConfig) -> Result<Sockets, XskError> {
    match config.bind {
        BindMode::Copy => open_copy(queues, config),
        BindMode::ZeroCopy => open_in(queues, config, true, false),
        BindMode::Auto => open_in(queues, config, true, false).or_else(|err| {
            tracing::info!("zero-copy bind not available ({err}); using copy mode");
            await_release(queues, config);
            open_copy(queues, config)
        }),
    }
}

/// Copy mode, multi-buffer if the kernel takes `XDP_USE_SG`.
fn open_copy(queues: &[(Arc<Iface>, u32)], config: &XskConfig) -> Result<Sockets, XskError> {
    open_in(queues, config, false, true).or_else(|err| {
        tracing::info!(
            "multi-buffer AF_XDP (XDP_USE_SG) not available ({err}); frames longer than one \
             UMEM frame take the fast path or the kernel"
        );
        await_release(queues, config);
        open_in(queues, config, false, false)
    })
}

/// After a failed attempt: the kernel releases the first UMEM's huge pages after its socket is
/// gone, a moment later (`xdp_umem_release_deferred`).
fn await_release(queues: &[(Arc<Iface>, u32)], config: &XskConfig) {
    if config.huge_pages {
        await_huge_pages(umem_bytes(queues, config) / huge_page_size());
    }
}

fn open_in(
    queues: &[(Arc<Iface>, u32)],
    config: &XskConfig,
    zero_copy: bool,
    multi_buffer: bool,
) -> Result<Sockets, XskError> {
    let ring = QueueSize::new(config.ring_size).map_err(|e| XskError::Config(e.to_string()))?;
    let frame_size =
        FrameSize::new(config.frame_size).map_err(|e| XskError::Config(e.to_string()))?;
    let umem_config = UmemConfig::builder()
        .frame_size(frame_size)
        .fill_queue_size(ring)
        .comp_queue_size(ring)
        .build()
        .map_err(|e| XskError::Config(e.to_string()))?;
    let total = config
        .frames_per_socket
        .checked_mul(queues.len() as u32)
        .and_then(NonZeroU32::new)
        .ok_or_else(|| XskError::Config("no queues or too many frames".into()))?;
    let bytes = umem_bytes(queues, config);
    let huge_page = huge_page_size();
    if config.huge_pages && !bytes.is_multiple_of(huge_page) {
        return Err(XskError::Config(format!(
            "--hugepages needs a UMEM of whole {} KiB pages, not {bytes} bytes ({} sockets × \
             2 × ring size {} × frame size {}); raise --ring-size",
            huge_page >> 10,
            queues.len(),
            config.ring_size,
            config.frame_size
        )));
    }
    let (umem, frames) = Umem::new(umem_config, total, config.huge_pages).map_err(|e| {
        // xsk-rs's message leaves out the system's reason.
        let reason = match std::error::Error::source(&e) {
            Some(inner) => format!("{e}: {inner}"),
            None => e.to_string(),
        };
        let reason = io::Error::other(reason);
        if config.huge_pages {
            XskError::HugePages { mib: bytes >> 20, pages: bytes / huge_page, reason }
        } else {
            XskError::Umem { frames: total.get(), frame_size: config.frame_size, reason }
        }
    })?;
    let mut mode = if zero_copy { BindFlags::XDP_ZEROCOPY } else { BindFlags::XDP_COPY };
    if multi_buffer {
        mode |= BindFlags::XDP_USE_SG;
    }
    let socket_config = SocketConfig::builder()
        .rx_queue_size(ring)
        .tx_queue_size(ring)
        .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
        .bind_flags(mode | BindFlags::XDP_USE_NEED_WAKEUP)
        .build();
    let mut ports = Vec::with_capacity(queues.len());
    for (iface, queue) in queues {
        let name = Interface::new(iface.cname());
        let bind_err = |source: io::Error| XskError::Bind {
            iface: iface.name.clone(),
            queue: *queue,
            mode: if zero_copy { "zero-copy" } else { "copy" },
            source,
        };
        // SAFETY: each (interface, queue) pair appears once in `queues`, so no other socket of
        // this process is bound to it; the XDP program was loaded by aya, hence the
        // INHIBIT_PROG_LOAD flag.
        let (tx, rx, rings) = unsafe { Socket::new(socket_config, &umem, &name, *queue) }
            .map_err(|e| bind_err(io::Error::other(e.to_string())))?;
        let (fill, comp) = rings.ok_or_else(|| {
            bind_err(io::Error::other("no fill/completion rings: queue bound twice"))
        })?;
        let port = Port {
            iface: iface.clone(),
            queue: *queue,
            rx,
            tx,
            fill,
            comp,
            stats: Arc::new(PortStats::default()),
        };
        if !zero_copy {
            raise_tx_budget(port.raw_fd(), config.ring_size);
        }
        if zero_copy && !is_zero_copy(port.raw_fd()) {
            return Err(bind_err(io::Error::other("kernel fell back to copy mode")));
        }
        ports.push(port);
    }
    Ok(Sockets { umem, ports, frames, zero_copy, multi_buffer })
}

/// In copy mode the kernel transmits at most 32 frames per `sendto` unless told otherwise
/// (`XDP_MAX_TX_SKB_BUDGET`, Linux 6.17 and later): let one kick send a whole ring.
fn raise_tx_budget(fd: i32, budget: u32) {
    // Not in libc yet (Linux 6.17 `include/uapi/linux/if_xdp.h`).
    const XDP_MAX_TX_SKB_BUDGET: i32 = 9;
    // SAFETY: `budget` is a valid u32 for the duration of the call.
    let ret = unsafe {
        libc::setsockopt(fd, libc::SOL_XDP, XDP_MAX_TX_SKB_BUDGET, (&raw const budget).cast(), 4)
    };
    if ret != 0 {
        tracing::debug!(
            "XDP_MAX_TX_SKB_BUDGET not available ({}); 32 frames per TX kick",
            io::Error::last_os_error()
        );
    }
}

/// Enables busy polling on an AF_XDP socket: `SO_PREFER_BUSY_POLL`, `SO_BUSY_POLL` (µs) and
/// `SO_BUSY_POLL_BUDGET` (frames per poll).
pub fn busy_poll(fd: i32, usecs: u32, budget: u32) -> io::Result<()> {
    for (opt, value) in [
        (libc::SO_PREFER_BUSY_POLL, 1u32),
        (libc::SO_BUSY_POLL, usecs),
        (libc::SO_BUSY_POLL_BUDGET, budget),
    ] {
        // SAFETY: `value` is a valid u32 for the duration of the call.
        let ret =
            unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, opt, (&raw const value).cast(), 4) };
        if ret != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether the socket was bound in zero-copy mode (`XDP_OPTIONS`).
pub fn is_zero_copy(fd: i32) -> bool {
    let mut options = libc::xdp_options { flags: 0 };
    let mut len = size_of::<libc::xdp_options>() as libc::socklen_t;
    // SAFETY: `options` and `len` are valid for writes of the sizes passed.
    let ret = unsafe {
        libc::getsockopt(fd, libc::SOL_XDP, libc::XDP_OPTIONS, (&raw mut options).cast(), &mut len)
    };
    ret == 0 && options.flags & libc::XDP_OPTIONS_ZEROCOPY != 0
}

/// Reads `XDP_STATISTICS` of the socket `fd`.
pub fn kernel_stats(fd: i32) -> io::Result<libc::xdp_statistics> {
    // SAFETY: `xdp_statistics` is plain integers; all zeros is a valid value.
    let mut stats: libc::xdp_statistics = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::xdp_statistics>() as libc::socklen_t;
    // SAFETY: `stats` and `len` are valid for writes of the sizes passed.
    let ret = unsafe {
        libc::getsockopt(fd, libc::SOL_XDP, libc::XDP_STATISTICS, (&raw mut stats).cast(), &mut len)
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stats)
}
