//! Tells the control plane at once when the kernel reports a change to what it otherwise
//! polls for every 0.5 s: a forwarding or `rp_filter` sysctl (rtnetlink's netconf groups,
//! `RTM_NEWNETCONF`) or the nftables ruleset (nfnetlink's `NFNLGRP_NFTABLES`). Turning the
//! kernel's forwarding off or adding a forward chain then stops xdpfwd's forwarding within
//! milliseconds, as it stops the kernel's, instead of up to half a second later.
//!
//! Only that something changed is passed on: the control plane reads the sysctls and the
//! chains again, as the poll does, which also covers notifications lost to a full socket.
//! Of nftables' notifications only those of tables and chains count (what
//! `netfilter::detect` reads): a firewall that updates a set's elements every second does
//! not make xdpfwd read its chains every second. The poll stays for what reports nothing
//! (iptables-legacy, the multipath sysctls).

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
/// notifications that matters until `stopped` or until `tx` closes. A socket that cannot be
/// opened (no nf_tables in this kernel, say) is left out with a warning: the poll still
/// covers it. No thread without a socket.
pub fn spawn(
    stopped: impl Fn() -> bool + Send + 'static,
    tx: UnboundedSender<()>,
) -> anyhow::Result<Option<thread::JoinHandle<()>>> {
    let mut sockets = Vec::new();
    let sources: [(&str, isize, &[u32], Relevant); 2] = [
        ("netconf (sysctl)", NETLINK_ROUTE, &NETCONF_GROUPS, |_| true),
        ("nftables", NETLINK_NETFILTER, &[NFTABLES_GROUP], tables_or_chains),
    ];
    for (name, protocol, groups, relevant) in sources {
        match subscribe(protocol, groups) {
            Ok(socket) => sockets.push((socket, relevant)),
            Err(err) => tracing::warn!(
                "not following {name} notifications, polling only (every 0.5 s): {err:#}"
            ),
        }
    }
    if sockets.is_empty() {
        return Ok(None);
    }
    let handle = thread::Builder::new()
        .name("xdpfwd-watch".into())
        .spawn(move || {
            if let Err(err) = watch(&sockets, &stopped, &tx) {
                tracing::warn!("following sysctl and nftables notifications stopped: {err:#}");
            }
        })
        .context("starting the notifications thread")?;
    Ok(Some(handle))
}

/// Whether a batch of notifications (netlink messages) tells of a change that matters.
type Relevant = fn(&[u8]) -> bool;

/// `NFNL_SUBSYS_NFTABLES` (linux/netfilter/nfnetlink.h), in a message type's high byte.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// `NFT_MSG_NEWTABLE`, `NFT_MSG_DELTABLE`, `NFT_MSG_NEWCHAIN`, `NFT_MSG_DELCHAIN`,
/// `NFT_MSG_DESTROYTABLE`, `NFT_MSG_DESTROYCHAIN` (linux/netfilter/nf_tables.h).
const TABLE_OR_CHAIN: [u16; 6] = [0, 2, 3, 5, 26, 27];
/// `struct nlmsghdr`'s length.
const NLMSG_HDRLEN: usize = 16;

/// Some message of `batch` adds, changes or removes an nftables table or chain.
fn tables_or_chains(mut batch: &[u8]) -> bool {
    while batch.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes([batch[0], batch[1], batch[2], batch[3]]) as usize;
        let kind = u16::from_ne_bytes([batch[4], batch[5]]);
        if kind >> 8 == NFNL_SUBSYS_NFTABLES && TABLE_OR_CHAIN.contains(&(kind & 0xff)) {
            return true;
        }
        if len < NLMSG_HDRLEN {
            break;
        }
        batch = batch.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    false
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
    sockets: &[(Socket, Relevant)],
    stopped: &impl Fn() -> bool,
    tx: &UnboundedSender<()>,
) -> anyhow::Result<()> {
    let timeout = PollTimeout::from(STOP_CHECK.as_millis() as u16);
    let mut buf = vec![0u8; 1 << 16];
    while !stopped() && !tx.is_closed() {
        let mut fds: Vec<PollFd> =
            sockets.iter().map(|(s, _)| PollFd::new(s.as_fd(), PollFlags::POLLIN)).collect();
        match poll(&mut fds, timeout) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(err) => return Err(err).context("poll"),
        }
        let mut changed = false;
        for (socket, relevant) in sockets {
            changed |= drain(socket, *relevant, &mut buf)?;
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

/// Reads the queued notifications; true if any was `relevant`, or some were lost
/// (`ENOBUFS`).
fn drain(socket: &Socket, relevant: Relevant, buf: &mut [u8]) -> anyhow::Result<bool> {
    let mut any = false;
    for _ in 0..MAX_READS {
        match socket.recv(&mut &mut buf[..], 0) {
            Ok(n) => any |= relevant(&buf[..n.min(buf.len())]),
            Err(err) if err.raw_os_error() == Some(libc::ENOBUFS) => any = true,
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err).context("reading notifications"),
        }
    }
    Ok(any)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A netlink message of `kind` with `payload`, padded to 4 bytes.
    fn message(kind: u16, payload: &[u8]) -> Vec<u8> {
        let len = (NLMSG_HDRLEN + payload.len()) as u32;
        let mut m = len.to_ne_bytes().to_vec();
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(payload);
        m.resize(m.len().next_multiple_of(4), 0);
        m
    }

    const NFT: u16 = NFNL_SUBSYS_NFTABLES << 8;

    #[test]
    fn only_tables_and_chains_count() {
        // NEWGEN, NEWSETELEM, NEWRULE: a firewall updating its sets and rules.
        let noise: Vec<u8> =
            [NFT | 15, NFT | 12, NFT | 6].iter().flat_map(|k| message(*k, b"abcde")).collect();
        assert!(!tables_or_chains(&noise));
        for kind in [0, 2, 3, 5, 26, 27] {
            let mut batch = noise.clone();
            batch.extend(message(NFT | kind, b"xyz"));
            assert!(tables_or_chains(&batch), "NFT_MSG {kind}");
        }
        // Another subsystem's NEWCHAIN-numbered message (conntrack's 1 << 8 | 3) does not.
        assert!(!tables_or_chains(&message(1 << 8 | 3, b"")));
        // A truncated or nonsensical batch ends the walk.
        assert!(!tables_or_chains(&[0u8; 7]));
        assert!(!tables_or_chains(&message(NFT | 6, b"")[..8]));
    }
}
