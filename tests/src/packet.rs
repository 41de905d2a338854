//! Raw frames on an interface (AF_PACKET), to send crafted traffic and capture what arrives.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

const ETH_P_ALL: u16 = 0x0003;
const PACKET_OUTGOING: u8 = 4;
const PACKET_AUXDATA: i32 = 8;

/// An AF_PACKET socket bound to one interface. Open it inside the interface's namespace (see
/// [`crate::in_netns`]).
pub struct RawSocket {
    fd: OwnedFd,
    ifindex: i32,
}

impl RawSocket {
    pub fn open(ifname: &str) -> io::Result<Self> {
        let ifindex = nix::net::if_::if_nametoindex(ifname).map_err(io::Error::from)? as i32;
        // SAFETY: plain socket(2) call; the fd is owned right away.
        let raw =
            unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(ETH_P_ALL.to_be())) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh, valid fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ETH_P_ALL.to_be();
        addr.sll_ifindex = ifindex;
        // SAFETY: `addr` is a valid sockaddr_ll of the size passed.
        let ret = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if ret != 0 {
            return Err(io::Error::last_os_error());
        }
        // The kernel moves a received frame's 802.1Q tag into metadata; the auxiliary data
        // gives it back, so captures show frames as they were on the wire.
        let on: libc::c_int = 1;
        // SAFETY: `on` is a valid c_int for the duration of the call.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                PACKET_AUXDATA,
                (&raw const on).cast(),
                4,
            )
        };
        let size: libc::c_int = 16 << 20;
        // SAFETY: `size` is a valid c_int for the duration of the call.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&raw const size).cast(),
                4,
            )
        };
        Ok(Self { fd, ifindex })
    }

    /// Sends one complete Ethernet frame.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: `frame` is valid for reads of its length.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Receives the next frame that arrived on the interface (not one it sent), waiting at
    /// most `timeout`.
    pub fn recv_incoming(&self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let mut pfd =
                libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) } <= 0 {
                continue;
            }
            // SAFETY: sockaddr_ll is plain data.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut control = [0u64; 16];
            let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
            // SAFETY: msghdr is plain data; the fields set below point to live buffers.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_name = (&raw mut from).cast();
            msg.msg_namelen = size_of::<libc::sockaddr_ll>() as u32;
            msg.msg_iov = &raw mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = size_of_val(&control);
            // SAFETY: `msg` describes valid buffers of the sizes given.
            let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
            if n < 0 {
                continue;
            }
            if from.sll_pkttype == PACKET_OUTGOING || from.sll_ifindex != self.ifindex {
                continue;
            }
            let mut frame = buf[..n as usize].to_vec();
            // SAFETY: the control buffer was filled by recvmsg; CMSG_* walk it within
            // `msg_controllen`.
            unsafe {
                let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
                while !cmsg.is_null() {
                    if (*cmsg).cmsg_level == libc::SOL_PACKET && (*cmsg).cmsg_type == PACKET_AUXDATA
                    {
                        let aux = (libc::CMSG_DATA(cmsg) as *const libc::tpacket_auxdata)
                            .read_unaligned();
                        if aux.tp_status & libc::TP_STATUS_VLAN_VALID != 0 && frame.len() >= 12 {
                            let tpid = if aux.tp_status & libc::TP_STATUS_VLAN_TPID_VALID != 0 {
                                aux.tp_vlan_tpid
                            } else {
                                0x8100
                            };
                            let mut tag = tpid.to_be_bytes().to_vec();
                            tag.extend_from_slice(&aux.tp_vlan_tci.to_be_bytes());
                            frame.splice(12..12, tag);
                        }
                    }
                    cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
                }
            }
            return Some(frame);
        }
    }

    /// Every incoming frame until `quiet` passes without one (at most `limit` frames).
    pub fn drain(&self, quiet: Duration, limit: usize) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        while frames.len() < limit {
            match self.recv_incoming(quiet) {
                Some(f) => frames.push(f),
                None => break,
            }
        }
        frames
    }
}

/// The Internet checksum of `data` (0 when a header with its checksum field is valid).
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Recomputes the IPv4 header checksum of an untagged frame (no-op for other frames).
pub fn fix_ipv4_checksum(f: &mut [u8]) {
    if f.len() < 34 || f[12..14] != [8, 0] {
        return;
    }
    let end = (14 + usize::from(f[14] & 0xf) * 4).min(f.len());
    f[24] = 0;
    f[25] = 0;
    let c = checksum(&f[14..end]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
}

/// An untagged IPv4 frame with 4 bytes of options (NOP NOP NOP EOL) inserted, lengths and
/// checksum fixed.
pub fn with_ipv4_options(plain: &[u8]) -> Vec<u8> {
    let mut f = plain[..34].to_vec();
    f.extend_from_slice(&[1, 1, 1, 0]);
    f.extend_from_slice(&plain[34..]);
    f[14] = 0x46;
    let total = u16::from_be_bytes([f[16], f[17]]) + 4;
    f[16..18].copy_from_slice(&total.to_be_bytes());
    fix_ipv4_checksum(&mut f);
    f
}

/// An untagged IPv6/UDP frame with an 8-byte extension header (PadN) of type `next` (60:
/// destination options, 0: hop-by-hop) inserted before the UDP header.
pub fn with_ipv6_extension(plain: &[u8], next: u8) -> Vec<u8> {
    let mut f = plain[..54].to_vec();
    f.extend_from_slice(&[17, 0, 1, 4, 0, 0, 0, 0]); // next = UDP, length 0, PadN(4)
    f.extend_from_slice(&plain[54..]);
    f[20] = next;
    let len = u16::from_be_bytes([f[18], f[19]]) + 8;
    f[18..20].copy_from_slice(&len.to_be_bytes());
    f
}
