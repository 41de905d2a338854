//! Tells the control plane at once when the kernel reports a change to what it otherwise
//! polls for every 0.5 s: a forwarding or `rp_filter` sysctl (rtnetlink's netconf groups,
//! `RTM_NEWNETCONF`) or the nftables ruleset (nfnetlink's `NFNLGRP_NFTABLES`). Turning the
//! kernel's forwarding off or adding a forward chain then stops xdpfwd's forwarding within
//! milliseconds, as it stops the kernel's, instead of up to half a second later.
//!
//! Only that something changed is passed on: the control plane reads the sysctls and the
//! chains again, as the poll does, which also covers notifications lost to a full socket.
//! The poll stays for what reports nothing (iptables-legacy, the multipath sysctls).

use std::{os::fd::AsFd, thread, time::Duration};

use anyhow::Context as _;
use netlink_sys::{
    Socket,
    protocols::{NETLINK_NETFILTER, NETLINK_ROUTE},
};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use tokio::sync::mpsc::UnboundedSender;

/// `RTNLGRP_IPV4_NETCONF`, `RTNLGRP_IPV6_NETCONF` (linux/rtnetlink.h).
const NETCONF_GROUPS: [u32; 2] = [24, 25];
/// `NFNLGRP_NFTABLES` (linux/netfilter/nfnetlink.h).
const NFTABLES_GROUP: u32 = 7;
/// How often the thread looks at the stop flag while nothing arrives (below 65 s: a
/// `u16` of ms).
const STOP_CHECK: Duration = Duration::from_millis(200);

/// Opens the sockets and starts the thread, which sends `()` on `tx` for every batch of
/// notifications until `stopped` or until `tx` closes. A socket that cannot be opened (no
/// nf_tables in this kernel, say) is left out with a warning: the poll still covers it.
pub fn spawn(
    stopped: impl Fn() -> bool + Send + 'static,
    tx: UnboundedSender<()>,
) -> anyhow::Result<thread::JoinHandle<()>> {
    let mut sockets = Vec::new();
    for (name, protocol, groups) in [
        ("netconf (sysctl)", NETLINK_ROUTE, &NETCONF_GROUPS[..]),
        ("nftables", NETLINK_NETFILTER, &[NFTABLES_GROUP][..]),
    ] {
        match subscribe(protocol, groups) {
            Ok(socket) => sockets.push(socket),
            Err(err) => tracing::warn!(
                "not following {name} notifications, polling only (every 0.5 s): {err:#}"
            ),
        }
    }
    thread::Builder::new()
        .name("xdpfwd-watch".into())
        .spawn(move || {
            if let Err(err) = watch(&sockets, &stopped, &tx) {
                tracing::warn!("following sysctl and nftables notifications stopped: {err:#}");
            }
        })
        .context("starting the notifications thread")
}

fn subscribe(protocol: isize, groups: &[u32]) -> anyhow::Result<Socket> {
    let mut socket = Socket::new(protocol).context("opening a netlink socket")?;
    socket.bind_auto().context("binding it")?;
    socket.set_non_blocking(true).context("making it non-blocking")?;
    for &group in groups {
        socket.add_membership(group).with_context(|| format!("joining group {group}"))?;
    }
    Ok(socket)
}

fn watch(
    sockets: &[Socket],
    stopped: &impl Fn() -> bool,
    tx: &UnboundedSender<()>,
) -> anyhow::Result<()> {
    let timeout = PollTimeout::from(STOP_CHECK.as_millis() as u16);
    let mut buf = vec![0u8; 1 << 16];
    while !stopped() && !tx.is_closed() {
        let mut fds: Vec<PollFd> =
            sockets.iter().map(|s| PollFd::new(s.as_fd(), PollFlags::POLLIN)).collect();
        match poll(&mut fds, timeout) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(err) => return Err(err).context("poll"),
        }
        let mut changed = false;
        for socket in sockets {
            changed |= drain(socket, &mut buf)?;
        }
        if changed && tx.send(()).is_err() {
            break;
        }
    }
    Ok(())
}

/// Most reads of one socket per wakeup: the rest waits for the next (a ruleset of thousands
/// of rules is one re-read anyway).
const MAX_READS: usize = 1024;

/// Reads the queued notifications; true if there was any, or some were lost (`ENOBUFS`).
fn drain(socket: &Socket, buf: &mut [u8]) -> anyhow::Result<bool> {
    let mut any = false;
    for _ in 0..MAX_READS {
        match socket.recv(&mut &mut buf[..], 0) {
            Ok(_) => any = true,
            Err(err) if err.raw_os_error() == Some(libc::ENOBUFS) => any = true,
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err).context("reading notifications"),
        }
    }
    Ok(any)
}
