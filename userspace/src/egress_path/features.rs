//! Each device's XDP features, as the kernel's `netdev` generic netlink family reports them
//! (Linux 6.3+): a dump at start, then the `mgmt` group's notifications, on one socket so the
//! last word about a device is the newest (the kernel fills a dump's answers and queues
//! notifications in the order things happen).
//!
//! What xdpfwd reads from them is `NETDEV_XDP_ACT_NDO_XMIT`: the device takes frames
//! redirected into it. A veth sets it only while its peer has an XDP program or GRO
//! (`veth_set_xdp_features`), the condition under which a frame redirected into it is
//! delivered rather than dropped.

use std::{
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use netlink_packet_core::{
    DecodeError, Emitable, NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
    ParseableParametrized,
};
use netlink_packet_generic::{
    GenlFamily, GenlHeader, GenlMessage,
    ctrl::{
        GenlCtrl, GenlCtrlCmd,
        nlas::{GenlCtrlAttrs, McastGrpAttrs},
    },
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_GENERIC};
use tokio::sync::mpsc::UnboundedSender;

use crate::{nlattr, sockopt};

/// `NETDEV_XDP_ACT_NDO_XMIT`: frames can be redirected into the device.
pub const NDO_XMIT: u64 = 1 << 2;
/// `NETDEV_XDP_ACT_NDO_XMIT_SG`: also frames in more than one buffer (jumbo frames).
pub const NDO_XMIT_SG: u64 = 1 << 6;

/// `NETDEV_CMD_*`.
const CMD_DEV_GET: u8 = 1;
const CMD_DEV_ADD_NTF: u8 = 2;
const CMD_DEV_CHANGE_NTF: u8 = 4;
/// `NETDEV_A_DEV_*`.
const A_DEV_IFINDEX: u16 = 1;
const A_DEV_XDP_FEATURES: u16 = 3;
/// The sequence number of our dumps (notifications carry 0).
const DUMP_SEQ: u32 = 1;
/// How long a running dump may stay silent before it is asked again.
const DUMP_STALL: Duration = Duration::from_secs(2);

/// What the watcher tells the control plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeatureEvent {
    /// A device's XDP features (`NETDEV_XDP_ACT_*` bits), now.
    Device { ifindex: u32, xdp: u64 },
    /// A dump has ended (or was refused): the start need not wait any longer.
    Synced,
}

/// A message of the `netdev` family: its command, a device and its XDP features.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct NetdevMessage {
    cmd: u8,
    ifindex: Option<u32>,
    xdp: Option<u64>,
}

impl GenlFamily for NetdevMessage {
    fn family_name() -> &'static str {
        "netdev"
    }

    fn command(&self) -> u8 {
        self.cmd
    }

    fn version(&self) -> u8 {
        1
    }
}

impl Emitable for NetdevMessage {
    /// Requests carry no attributes (a dump of every device).
    fn buffer_len(&self) -> usize {
        0
    }

    fn emit(&self, _buffer: &mut [u8]) {}
}

impl ParseableParametrized<[u8], GenlHeader> for NetdevMessage {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        let mut msg = NetdevMessage { cmd: header.cmd, ..Default::default() };
        for attr in nlattr::attributes(buf) {
            let (kind, value) = attr.map_err(|()| DecodeError::from("malformed attribute"))?;
            match (kind, value.len()) {
                (A_DEV_IFINDEX, 4) => {
                    msg.ifindex = Some(u32::from_ne_bytes(value.try_into().unwrap_or_default()));
                }
                (A_DEV_XDP_FEATURES, 8) => {
                    msg.xdp = Some(u64::from_ne_bytes(value.try_into().unwrap_or_default()));
                }
                _ => {}
            }
        }
        Ok(msg)
    }
}

/// The `netdev` family's id and its `mgmt` group, from the generic netlink controller;
/// `None` where the kernel has no such family (before Linux 6.3).
fn resolve(socket: &Socket) -> anyhow::Result<Option<(u16, u32)>> {
    let mut msg = GenlMessage::from_payload(GenlCtrl {
        cmd: GenlCtrlCmd::GetFamily,
        nlas: vec![GenlCtrlAttrs::FamilyName(NetdevMessage::family_name().into())],
    });
    msg.finalize();
    let mut msg = NetlinkMessage::from(msg);
    msg.header.flags = NLM_F_REQUEST;
    msg.finalize();
    let mut out = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut out);
    socket.send(&out, 0).context("asking for the netdev netlink family")?;
    let mut buf = vec![0u8; 1 << 16];
    let n = socket.recv(&mut &mut buf[..], 0).context("reading the netdev netlink family")?;
    let reply = NetlinkMessage::<GenlMessage<GenlCtrl>>::deserialize(&buf[..n])
        .context("parsing the netdev netlink family")?;
    let attrs = match reply.payload {
        NetlinkPayload::InnerMessage(msg) => msg.payload.nlas,
        NetlinkPayload::Error(e) if e.raw_code() == -libc::ENOENT => return Ok(None),
        other => anyhow::bail!("unexpected answer about the netdev netlink family: {other:?}"),
    };
    let id = attrs.iter().find_map(|a| match a {
        GenlCtrlAttrs::FamilyId(id) => Some(*id),
        _ => None,
    });
    let group = attrs.iter().find_map(|a| match a {
        GenlCtrlAttrs::McastGroups(groups) => groups.iter().find_map(|g| {
            let named = g.iter().any(|a| matches!(a, McastGrpAttrs::Name(n) if n == "mgmt"));
            g.iter().find_map(|a| match a {
                McastGrpAttrs::Id(id) if named => Some(*id),
                _ => None,
            })
        }),
        _ => None,
    });
    match (id, group) {
        (Some(id), Some(group)) => Ok(Some((id, group))),
        _ => anyhow::bail!("the netdev netlink family has no id or no mgmt group"),
    }
}

/// Starts the thread that reports every device's XDP features and their changes until
/// `stopped()` (checked every 200 ms) or the receiver is gone. `Ok(None)`: this kernel does not
/// report them.
pub fn spawn_watcher(
    stopped: impl Fn() -> bool + Send + 'static,
    tx: UnboundedSender<FeatureEvent>,
) -> anyhow::Result<Option<thread::JoinHandle<()>>> {
    let mut socket = Socket::new(NETLINK_GENERIC).context("opening a generic netlink socket")?;
    socket.bind_auto().context("binding the generic netlink socket")?;
    socket.connect(&SocketAddr::new(0, 0)).context("connecting the generic netlink socket")?;
    sockopt::set_timeout(&socket, Duration::from_millis(200));
    let Some((family, group)) = resolve(&socket)? else {
        return Ok(None);
    };
    socket.add_membership(group).context("joining the netdev mgmt group")?;
    let mut watcher = Watcher { socket, family, dumping: None, again: true };
    let handle = thread::Builder::new()
        .name("xdpfwd-features".into())
        .spawn(move || {
            if let Err(e) = watcher.read(&stopped, &tx) {
                tracing::error!("reading XDP features failed: {e:#}");
            }
        })
        .context("starting the XDP features thread")?;
    Ok(Some(handle))
}

struct Watcher {
    socket: Socket,
    family: u16,
    /// When the running dump last answered.
    dumping: Option<Instant>,
    /// A dump is wanted (at start, after lost notifications).
    again: bool,
}

impl Watcher {
    fn read(
        &mut self,
        stopped: &impl Fn() -> bool,
        tx: &UnboundedSender<FeatureEvent>,
    ) -> anyhow::Result<()> {
        let mut buf = vec![0u8; 1 << 16];
        while !stopped() && !tx.is_closed() {
            if self.dumping.is_some_and(|t| t.elapsed() > DUMP_STALL) {
                self.dumping = None;
                self.again = true;
            }
            if self.again && self.dumping.is_none() {
                self.dump()?;
            }
            let n = match self.socket.recv(&mut &mut buf[..], 0) {
                Ok(n) => n,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    // Notifications were lost: a new dump reports every device as it is now.
                    self.again = true;
                    continue;
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR)) => {
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            self.messages(&buf[..n], tx);
        }
        Ok(())
    }

    fn dump(&mut self) -> anyhow::Result<()> {
        let mut msg =
            GenlMessage::from_payload(NetdevMessage { cmd: CMD_DEV_GET, ..Default::default() });
        msg.set_resolved_family_id(self.family);
        let mut msg = NetlinkMessage::from(msg);
        msg.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        msg.header.sequence_number = DUMP_SEQ;
        msg.finalize();
        let mut out = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut out);
        self.socket.send(&out, 0).context("asking for every device's XDP features")?;
        self.dumping = Some(Instant::now());
        self.again = false;
        Ok(())
    }

    fn messages(&mut self, mut buf: &[u8], tx: &UnboundedSender<FeatureEvent>) {
        while buf.len() >= 16 {
            let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if len < 16 || len > buf.len() {
                return;
            }
            let (one, rest) = buf.split_at(((len + 3) & !3).min(buf.len()));
            buf = rest;
            let Ok(msg) = NetlinkMessage::<GenlMessage<NetdevMessage>>::deserialize(one) else {
                continue;
            };
            if msg.header.sequence_number == DUMP_SEQ && self.dumping.is_some() {
                self.dumping = Some(Instant::now());
            }
            match msg.payload {
                NetlinkPayload::Done(_) => {
                    self.dumping = None;
                    let _ = tx.send(FeatureEvent::Synced);
                }
                NetlinkPayload::Error(e) => {
                    // Devices not reported keep `auto` on the AF_XDP path.
                    tracing::warn!(code = e.raw_code(), "the kernel refused the XDP features dump");
                    self.dumping = None;
                    let _ = tx.send(FeatureEvent::Synced);
                }
                NetlinkPayload::InnerMessage(m) => {
                    if let Some(event) = device(&m.payload) {
                        let _ = tx.send(event);
                    }
                }
                _ => {}
            }
        }
    }
}

/// The features a dump answer or a notification reports (deletions report nothing).
fn device(msg: &NetdevMessage) -> Option<FeatureEvent> {
    if ![CMD_DEV_GET, CMD_DEV_ADD_NTF, CMD_DEV_CHANGE_NTF].contains(&msg.cmd) {
        return None;
    }
    Some(FeatureEvent::Device { ifindex: msg.ifindex?, xdp: msg.xdp? })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A notification as the kernel sends it for a veth whose peer just turned GRO on:
    /// ifindex 7, features BASIC | REDIRECT | NDO_XMIT | RX_SG | NDO_XMIT_SG (0x67), with the
    /// 64-bit attribute's padding attribute in front of it.
    #[rustfmt::skip]
    const CHANGE_NTF: [u8; 48] = [
        48, 0, 0, 0, 0x20, 0, 0, 0, // nlmsg_len, type (the family id, 0x20 here), flags
        0, 0, 0, 0, 0, 0, 0, 0, // seq, pid
        CMD_DEV_CHANGE_NTF, 1, 0, 0, // genl cmd, version
        8, 0, 1, 0, 7, 0, 0, 0, // NETDEV_A_DEV_IFINDEX 7
        4, 0, 2, 0, // NETDEV_A_DEV_PAD
        12, 0, 3, 0, 0x67, 0, 0, 0, 0, 0, 0, 0, // NETDEV_A_DEV_XDP_FEATURES
        4, 0, 6, 0, // an attribute of no interest, empty: skipped
    ];

    #[test]
    fn a_change_notification_reports_the_device() {
        let msg = NetlinkMessage::<GenlMessage<NetdevMessage>>::deserialize(&CHANGE_NTF).unwrap();
        let NetlinkPayload::InnerMessage(m) = msg.payload else { panic!("{msg:?}") };
        assert_eq!(device(&m.payload), Some(FeatureEvent::Device { ifindex: 7, xdp: 0x67 }));
        assert_ne!(0x67 & NDO_XMIT, 0);
    }

    #[test]
    fn deletions_and_messages_without_features_report_nothing() {
        let del = NetdevMessage { cmd: 3, ifindex: Some(7), xdp: Some(0x67) };
        assert_eq!(device(&del), None);
        let no_features = NetdevMessage { cmd: CMD_DEV_CHANGE_NTF, ifindex: Some(7), xdp: None };
        assert_eq!(device(&no_features), None);
    }
}
