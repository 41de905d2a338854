//! Socket options the control plane's netlink sockets need and the wrappers lack.

use std::{io, os::fd::AsRawFd, time::Duration};

/// Bounds every blocking receive on `socket` (`SO_RCVTIMEO`).
pub fn set_timeout(socket: &impl AsRawFd, timeout: Duration) {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros()),
    };
    // SAFETY: a valid socket descriptor and a `timeval` of the size passed.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
}

/// Asks for a receive buffer of `bytes` beyond `net.core.rmem_max` (`SO_RCVBUFFORCE`, which
/// needs CAP_NET_ADMIN; without it, `SO_RCVBUF` up to `rmem_max`). Returns what the kernel
/// granted (`SO_RCVBUF` as it reads back: twice the request, for its bookkeeping).
pub fn force_rx_buf(socket: &impl AsRawFd, bytes: u32) -> io::Result<u32> {
    let fd = socket.as_raw_fd();
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX / 2);
    let set = |option| {
        // SAFETY: a valid socket descriptor and an `int` of the size passed.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                (&value as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        }
    };
    if set(libc::SO_RCVBUFFORCE) != 0 && set(libc::SO_RCVBUF) != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut granted: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a valid socket descriptor, an `int` and its length to write back.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&mut granted as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u32::try_from(granted).unwrap_or(0))
}
