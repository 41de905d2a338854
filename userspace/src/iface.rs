//! Managed interfaces: what xdpfwd learns about them at start-up over netlink (index, MAC,
//! MTU, rx queues, an XDP program already attached), and the clear error when a name is
//! unknown (pointing at the namespace that has it). `forwarder` refuses an MTU too large and
//! `loader` an interface that already has a program.

use std::{ffi::CString, fs, path::Path};

use futures::TryStreamExt;
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage, LinkXdp};

/// A managed interface.
#[derive(Debug, Clone)]
pub struct Iface {
    pub name: String,
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub mtu: u32,
    /// rx queues, each of which gets an AF_XDP socket.
    pub rx_queues: u32,
    /// XSKMAP slot (position on the command line).
    pub slot: u32,
    /// Whether the link is up.
    pub up: bool,
    /// Id of an XDP program already attached, if any.
    pub attached_prog: Option<u32>,
}

impl Iface {
    pub fn cname(&self) -> CString {
        // Interface names come from the kernel or were found by name: no NUL inside.
        CString::new(self.name.clone()).unwrap_or_default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IfaceError {
    #[error("interface '{name}' does not exist in this network namespace{hint}")]
    NotFound { name: String, hint: String },
    #[error("interface '{0}' is not an Ethernet interface (no 6-byte MAC address)")]
    NotEthernet(String),
    #[error("interface '{name}' is listed twice")]
    Duplicate { name: String },
    #[error("netlink query for interface '{name}' failed: {source}")]
    Netlink { name: String, source: rtnetlink::Error },
    #[error("could not open a netlink socket: {0}")]
    Socket(std::io::Error),
}

/// Looks up `names` in the current network namespace.
pub async fn discover(names: &[String]) -> Result<Vec<Iface>, IfaceError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(IfaceError::Socket)?;
    tokio::spawn(conn);
    let mut ifaces: Vec<Iface> = Vec::new();
    for (slot, name) in names.iter().enumerate() {
        if ifaces.iter().any(|i| &i.name == name) {
            return Err(IfaceError::Duplicate { name: name.clone() });
        }
        let reply = handle.link().get().match_name(name.clone()).execute().try_next().await;
        let msg = match reply {
            Ok(Some(msg)) => msg,
            Ok(None) | Err(rtnetlink::Error::NetlinkError(_)) => {
                return Err(IfaceError::NotFound {
                    name: name.clone(),
                    hint: other_namespace_hint(name),
                });
            }
            Err(source) => return Err(IfaceError::Netlink { name: name.clone(), source }),
        };
        let mut iface =
            from_link(&msg, slot as u32).ok_or_else(|| IfaceError::NotEthernet(name.clone()))?;
        iface.rx_queues = rx_queue_count(&iface.name, iface.ifindex).unwrap_or(iface.rx_queues);
        ifaces.push(iface);
    }
    Ok(ifaces)
}

/// Builds an [`Iface`] from an `RTM_NEWLINK` message; `None` unless it has a 6-byte MAC.
pub fn from_link(msg: &LinkMessage, slot: u32) -> Option<Iface> {
    let mut iface = Iface {
        name: String::new(),
        ifindex: msg.header.index,
        mac: [0; 6],
        mtu: 1500,
        rx_queues: 1,
        slot,
        up: msg.header.flags.contains(LinkFlags::Up)
            && msg.header.flags.contains(LinkFlags::LowerUp),
        attached_prog: None,
    };
    let mut has_mac = false;
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(name) => iface.name = name.clone(),
            LinkAttribute::Address(mac) if mac.len() == 6 => {
                iface.mac.copy_from_slice(mac);
                has_mac = true;
            }
            LinkAttribute::Mtu(mtu) => iface.mtu = *mtu,
            LinkAttribute::NumRxQueues(n) => iface.rx_queues = (*n).max(1),
            LinkAttribute::Xdp(xdp) => {
                iface.attached_prog = xdp.iter().find_map(|x| match x {
                    LinkXdp::ProgId(id) if *id != 0 => Some(*id),
                    _ => None,
                });
            }
            _ => {}
        }
    }
    has_mac.then_some(iface)
}

/// The number of rx queues in use, from sysfs, if this process's sysfs shows this namespace
/// (as under `ip netns exec`).
fn rx_queue_count(name: &str, ifindex: u32) -> Option<u32> {
    let dir = Path::new("/sys/class/net").join(name);
    let index: u32 = fs::read_to_string(dir.join("ifindex")).ok()?.trim().parse().ok()?;
    if index != ifindex {
        return None;
    }
    let count = fs::read_dir(dir.join("queues"))
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
        .count();
    (count > 0).then_some(count as u32)
}

/// " (it exists in network namespace 'x': run xdpfwd there ...)" when a named namespace has an
/// interface of that name; empty otherwise.
fn other_namespace_hint(name: &str) -> String {
    let Ok(entries) = fs::read_dir("/run/netns") else { return String::new() };
    let mut found = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let ns = entry.file_name().to_string_lossy().into_owned();
        let name = name.to_owned();
        // setns() affects only the calling thread: look from a scratch thread.
        let seen = std::thread::spawn(move || -> bool {
            let Ok(file) = fs::File::open(&path) else { return false };
            if nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
                return false;
            }
            nix::net::if_::if_nametoindex(name.as_str()).is_ok()
        })
        .join()
        .unwrap_or(false);
        if seen {
            found.push(ns);
        }
    }
    match found.first() {
        Some(ns) => format!(
            " (it exists in network namespace '{ns}': run xdpfwd there, e.g. `ip netns exec {ns} xdpfwd run ...`)"
        ),
        None => String::new(),
    }
}
