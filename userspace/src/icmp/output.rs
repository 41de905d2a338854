//! How an ICMP error leaves: through raw ICMP sockets, so that the kernel routes it, picks its
//! source address, resolves its next hop and runs it past netfilter's output hooks as it does
//! for the errors its own forwarding sends. And what the answer needs to know of the
//! kernel's tables: the prefix length of the route back (IPv6 limits) and the ingress's
//! addresses (`icmp_errors_use_inbound_ifaddr`), asked over rtnetlink.

use std::{
    io::IoSlice,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

use anyhow::Context as _;
use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::{AddressAttribute, AddressHeaderFlags, AddressMessage, AddressScope},
    route::{RouteAddress, RouteAttribute, RouteFlags, RouteMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use nix::sys::socket::{ControlMessage, MsgFlags, SockaddrIn, SockaddrIn6, sendmsg};

use super::source::{self, Candidate};
use crate::sockopt::set_timeout;

/// The `use_tempaddr` of the interface `ifindex` (0 when it cannot be read).
fn use_tempaddr(ifindex: u32) -> i32 {
    let Ok(name) = nix::net::if_::if_indextoname(ifindex) else { return 0 };
    let path = format!("/proc/sys/net/ipv6/conf/{}/use_tempaddr", name.to_string_lossy());
    std::fs::read_to_string(path).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// `ICMP_FILTER` (`linux/icmp.h`), on `SOL_RAW`: the ICMP types a raw socket does not
/// receive.
const ICMP_FILTER: libc::c_int = 1;
/// `ICMP6_FILTER` (`linux/icmpv6.h`), on `IPPROTO_ICMPV6`.
const ICMP6_FILTER: libc::c_int = 1;
/// How long a question to the kernel's tables may take.
const NETLINK_TIMEOUT: Duration = Duration::from_millis(200);

/// The raw sockets and the netlink socket of the ICMP answers.
pub struct Output {
    v4: OwnedFd,
    v6: OwnedFd,
    netlink: Socket,
    seq: u32,
    buf: Vec<u8>,
}

/// A raw socket of `proto` that sends only: every ICMP type is filtered on receive.
fn raw_socket(family: libc::c_int, proto: libc::c_int) -> anyhow::Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned below.
    let fd = unsafe { libc::socket(family, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("opening a raw ICMP socket");
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let set = |level, name, value: &[u8]| {
        // SAFETY: a valid descriptor and a buffer of the length passed.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                level,
                name,
                value.as_ptr().cast(),
                value.len() as libc::socklen_t,
            )
        }
    };
    if family == libc::AF_INET {
        set(libc::SOL_RAW, ICMP_FILTER, &u32::MAX.to_ne_bytes());
        // The kernel's own ICMP socket sends without DF.
        set(libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, &libc::IP_PMTUDISC_DONT.to_ne_bytes());
    } else {
        set(libc::IPPROTO_ICMPV6, ICMP6_FILTER, &[0xff; 32]);
    }
    set(libc::SOL_SOCKET, libc::SO_RCVBUF, &0i32.to_ne_bytes());
    Ok(fd)
}

impl Output {
    /// Opens the sockets (needs `CAP_NET_RAW`), in this thread's network namespace.
    pub fn open() -> anyhow::Result<Output> {
        let v4 = raw_socket(libc::AF_INET, libc::IPPROTO_ICMP)?;
        let v6 = raw_socket(libc::AF_INET6, libc::IPPROTO_ICMPV6)?;
        let mut netlink = Socket::new(NETLINK_ROUTE).context("opening a netlink socket")?;
        netlink.bind_auto().context("binding a netlink socket")?;
        set_timeout(&netlink, NETLINK_TIMEOUT);
        Ok(Output { v4, v6, netlink, seq: 0, buf: vec![0; 1 << 16] })
    }

    /// Sends an IPv4 ICMP message to `dst` with `tos`, from `src` if given (else the
    /// kernel picks the source as for any packet it sends).
    pub fn send_v4(
        &self,
        message: &[u8],
        dst: Ipv4Addr,
        tos: u8,
        src: Option<Ipv4Addr>,
    ) -> nix::Result<usize> {
        let to = SockaddrIn::from(std::net::SocketAddrV4::new(dst, 0));
        let iov = [IoSlice::new(message)];
        let info = libc::in_pktinfo {
            ipi_ifindex: 0,
            ipi_spec_dst: libc::in_addr {
                s_addr: u32::from_ne_bytes(src.unwrap_or(Ipv4Addr::UNSPECIFIED).octets()),
            },
            ipi_addr: libc::in_addr { s_addr: 0 },
        };
        let tos_msg = ControlMessage::Ipv4Tos(&tos);
        let info_msg = ControlMessage::Ipv4PacketInfo(&info);
        let cmsgs: &[ControlMessage] =
            if src.is_some() { &[tos_msg, info_msg] } else { &[tos_msg] };
        sendmsg(self.v4.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_DONTWAIT, Some(&to))
    }

    /// Sends an ICMPv6 message to `dst`, from `src` if given (else the kernel picks the
    /// source as for any packet it sends); the kernel fills in the checksum.
    pub fn send_v6(
        &self,
        message: &[u8],
        dst: Ipv6Addr,
        src: Option<Ipv6Addr>,
    ) -> nix::Result<usize> {
        let to = SockaddrIn6::from(std::net::SocketAddrV6::new(dst, 0, 0, 0));
        let iov = [IoSlice::new(message)];
        let info = libc::in6_pktinfo {
            ipi6_addr: libc::in6_addr { s6_addr: src.unwrap_or(Ipv6Addr::UNSPECIFIED).octets() },
            ipi6_ifindex: 0,
        };
        let info_msg = [ControlMessage::Ipv6PacketInfo(&info)];
        let cmsgs: &[ControlMessage] = if src.is_some() { &info_msg } else { &[] };
        sendmsg(self.v6.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_DONTWAIT, Some(&to))
    }

    /// The namespace's IPv6 addresses, as [`source::select`] wants them (in the kernel's
    /// order); empty when the kernel does not answer in time.
    pub fn addresses_v6(&mut self) -> Vec<Candidate> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet6;
        let mut out = Vec::new();
        self.ask(RouteNetlinkMessage::GetAddress(msg), NLM_F_DUMP, |reply| {
            let RouteNetlinkMessage::NewAddress(a) = reply else { return };
            let mut flags = u32::from(a.header.flags.bits());
            let (mut local, mut address) = (None, None);
            for attr in &a.attributes {
                match attr {
                    AddressAttribute::Local(IpAddr::V6(l)) => local = Some(*l),
                    AddressAttribute::Address(IpAddr::V6(l)) => address = Some(*l),
                    AddressAttribute::Flags(f) => flags = f.bits(),
                    _ => {}
                }
            }
            if let Some(addr) = local.or(address) {
                let (ifindex, prefix_len) = (a.header.index, a.header.prefix_len);
                out.push(Candidate { addr, ifindex, prefix_len, flags, prefer_temporary: false });
            }
        });
        for c in out.iter_mut().filter(|c| c.flags & source::TEMPORARY != 0) {
            c.prefer_temporary = use_tempaddr(c.ifindex) >= 2;
        }
        out
    }

    /// The route the kernel sends to `dst` by (`ip route get fibmatch`): its prefix length
    /// and whether it has a preferred source (`src`, with which `icmp6_send` leaves the
    /// choice of the source to the route); `None` when there is none or the kernel does not
    /// answer in time.
    pub fn route_back(&mut self, dst: Ipv6Addr) -> Option<(u8, bool)> {
        self.fib_match(IpAddr::V6(dst))
    }

    /// `RTM_GETROUTE` with `RTM_F_FIB_MATCH` for `dst`: (prefix length, preferred source).
    fn fib_match(&mut self, dst: IpAddr) -> Option<(u8, bool)> {
        let mut msg = RouteMessage::default();
        msg.header.address_family =
            if dst.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
        msg.header.destination_prefix_length = if dst.is_ipv4() { 32 } else { 128 };
        msg.header.flags = RouteFlags::FibMatch;
        msg.attributes.push(RouteAttribute::Destination(match dst {
            IpAddr::V4(a) => RouteAddress::Inet(a),
            IpAddr::V6(a) => RouteAddress::Inet6(a),
        }));
        let mut found = None;
        self.ask(RouteNetlinkMessage::GetRoute(msg), 0, |reply| {
            if let RouteNetlinkMessage::NewRoute(r) = reply {
                let prefsrc =
                    r.attributes.iter().any(|a| matches!(a, RouteAttribute::PrefSource(_)));
                found = Some((r.header.destination_prefix_length, prefsrc));
            }
        });
        found
    }

    /// `inet_select_addr(ingress, dst, RT_SCOPE_LINK)` over the interface's own addresses: its
    /// first primary address of at most link scope on `dst`'s subnet, else its first primary
    /// address of at most link scope.
    pub fn select_addr(&mut self, ifindex: u32, dst: Ipv4Addr) -> Option<Ipv4Addr> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.index = ifindex;
        let mut first = None;
        let mut matching = None;
        self.ask(RouteNetlinkMessage::GetAddress(msg), NLM_F_DUMP, |reply| {
            let RouteNetlinkMessage::NewAddress(a) = reply else { return };
            if a.header.index != ifindex
                || a.header.flags.contains(AddressHeaderFlags::Secondary)
                || !matches!(
                    a.header.scope,
                    AddressScope::Universe | AddressScope::Site | AddressScope::Link
                )
            {
                return;
            }
            let local = a.attributes.iter().find_map(|attr| match attr {
                AddressAttribute::Local(IpAddr::V4(l)) => Some(*l),
                _ => None,
            });
            let Some(local) = local else { return };
            let len = u32::from(a.header.prefix_len);
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len.min(32)) };
            if matching.is_none() && u32::from(local) & mask == u32::from(dst) & mask {
                matching = Some(local);
            }
            first.get_or_insert(local);
        });
        matching.or(first)
    }

    /// Sends `request` and hands every reply to `each` until the answer is complete (an
    /// ACK, an error, the end of a dump) or the kernel is silent for `NETLINK_TIMEOUT`.
    fn ask(
        &mut self,
        request: RouteNetlinkMessage,
        extra_flags: u16,
        mut each: impl FnMut(RouteNetlinkMessage),
    ) {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | extra_flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(request));
        packet.finalize();
        let mut out = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut out);
        if self.netlink.send_to(&out, &SocketAddr::new(0, 0), 0).is_err() {
            return;
        }
        let deadline = std::time::Instant::now() + NETLINK_TIMEOUT;
        while std::time::Instant::now() < deadline {
            let Ok(n) = self.netlink.recv(&mut &mut self.buf[..], 0) else { return };
            let mut at = 0;
            while at < n {
                let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[at..n])
                else {
                    return;
                };
                let len = msg.header.length as usize;
                if msg.header.sequence_number == self.seq {
                    match msg.payload {
                        NetlinkPayload::InnerMessage(m) => {
                            each(m);
                            if extra_flags & NLM_F_DUMP == 0 {
                                return;
                            }
                        }
                        NetlinkPayload::Done(_) | NetlinkPayload::Error(_) => return,
                        _ => {}
                    }
                }
                if len == 0 {
                    return;
                }
                at += (len + 3) & !3;
            }
        }
    }
}
