//! What the workers and the control plane share: the stop flag, the neighbours the control
//! plane knows (read by workers for held frames), and the requests workers send back for a
//! next hop to be resolved. Neither side imports the other.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::{Arc, RwLock, atomic::AtomicBool},
};

use crate::{capture, egress_path::EgressPath, icmp, snapshot::TableFigures};

/// A request to the control plane: make the kernel resolve `addr` on `ifindex`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resolve {
    pub ifindex: u32,
    pub addr: IpAddr,
}

/// Neighbours known to the control plane, read by workers for held frames only.
pub type NeighbourTable = RwLock<HashMap<(u32, IpAddr), [u8; 6]>>;

/// State shared by workers and the control plane.
#[derive(Default)]
pub struct Shared {
    pub stop: AtomicBool,
    pub neighbours: NeighbourTable,
    /// The managed interfaces' MAC addresses as they are now (a link may change its own),
    /// by ifindex: the source of held frames.
    pub macs: RwLock<HashMap<u32, [u8; 6]>>,
    /// What the operator must know now, by cause: the control plane's fallbacks to the
    /// kernel and netfilter hooks bypassed; shown by `xdpfwd stats` and metrics.
    pub notices: RwLock<BTreeMap<&'static str, String>>,
    /// Times each notice's cause began (a fallback to the kernel, counted).
    pub fallbacks: RwLock<BTreeMap<&'static str, u64>>,
    /// What became of the packets the router answers with ICMP errors.
    pub icmp: Arc<icmp::Counters>,
    /// The mirrored tables' sizes, as the control plane last published them.
    pub tables: RwLock<TableFigures>,
    /// The path plain forwarding takes out of each managed interface, and why, by name.
    pub egress_paths: RwLock<Vec<(String, EgressPath)>>,
    /// What running captures want of the workers.
    pub capture: Arc<capture::Switch>,
}
