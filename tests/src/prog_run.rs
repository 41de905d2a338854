//! `BPF_PROG_RUN` (`BPF_PROG_TEST_RUN`) for XDP programs: one run on a frame, or many with
//! `BPF_F_TEST_XDP_LIVE_FRAMES`, where the kernel acts on the verdicts for real.

use std::{
    io,
    os::fd::{AsFd, AsRawFd},
};

use aya::programs::ProgramFd;

/// `union bpf_attr` for `BPF_PROG_TEST_RUN`.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}
const _: () = assert!(size_of::<TestRunAttr>() == 80);

/// `struct xdp_md` as test input.
#[repr(C)]
#[derive(Default)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

/// How to run.
pub enum Mode<'a> {
    /// Once, returning the frame after the run in `out`.
    Once { out: &'a mut Vec<u8> },
    /// `repeat` times for real (`XDP_TX` transmits, `XDP_REDIRECT` redirects).
    Live { repeat: u32 },
    /// `repeat` times on the one frame (each run sees what the last left), nothing carried
    /// out; the kernel's mean time per run (ns) goes into `ns`.
    Timed { repeat: u32, ns: &'a mut u32 },
}

/// Runs `prog` on `frame` as if received on `ifindex`, rx queue `queue`; returns the action of
/// the last run.
pub fn xdp(
    prog: &ProgramFd,
    frame: &[u8],
    ifindex: u32,
    queue: u32,
    mode: Mode<'_>,
) -> io::Result<u32> {
    let ctx = XdpMd {
        data_end: frame.len() as u32,
        ingress_ifindex: ifindex,
        rx_queue_index: queue,
        ..XdpMd::default()
    };
    let mut attr = TestRunAttr {
        prog_fd: prog.as_fd().as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat: 1,
        ctx_size_in: size_of::<XdpMd>() as u32,
        ctx_in: (&raw const ctx) as u64,
        ..TestRunAttr::default()
    };
    let mut out_ptr: Option<&mut Vec<u8>> = None;
    let mut ns_ptr: Option<&mut u32> = None;
    match mode {
        Mode::Once { out } => {
            out.clear();
            out.resize(frame.len() + 512, 0);
            attr.data_size_out = out.len() as u32;
            attr.data_out = out.as_mut_ptr() as u64;
            out_ptr = Some(out);
        }
        Mode::Live { repeat } => {
            attr.repeat = repeat;
            attr.flags = BPF_F_TEST_XDP_LIVE_FRAMES;
            attr.batch_size = 256;
        }
        Mode::Timed { repeat, ns } => {
            attr.repeat = repeat;
            ns_ptr = Some(ns);
        }
    }
    // SAFETY: `attr` is a valid bpf_attr for BPF_PROG_TEST_RUN; every pointer in it (`frame`,
    // `ctx`, the output buffer of `data_size_out` bytes) outlives the call.
    let ret = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_PROG_TEST_RUN, &raw mut attr, size_of::<TestRunAttr>())
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    if let Some(out) = out_ptr {
        out.truncate(attr.data_size_out as usize);
    }
    if let Some(ns) = ns_ptr {
        *ns = attr.duration;
    }
    Ok(attr.retval)
}
