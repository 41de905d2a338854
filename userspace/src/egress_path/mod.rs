//! Which path plain L3 forwarding takes out of each interface, and why: the AF_XDP path (user
//! space rewrites and transmits the frame) or the in-kernel fast path (the XDP program
//! rewrites it and redirects it to the egress device).
//!
//! With `auto` (the default) the fast path is taken wherever the AF_XDP sockets run in copy
//! mode and the egress device takes redirected frames: in copy mode every frame the AF_XDP
//! path sends is copied into a new skb by the kernel's AF_XDP transmit, while the fast path
//! copies nothing. Where the sockets are zero-copy, the AF_XDP path. Whether a device takes
//! redirected frames is read from the kernel ([`features`]) and followed as it changes (a veth
//! takes them only while its peer has an XDP program or GRO); where the kernel does not say
//! (before Linux 6.3), the AF_XDP path, which works on every device.
//!
//! Steering rules still choose either path for what they match (`action = "fast"` or
//! `"af_xdp"`).

pub mod features;

use std::fmt;

/// `--default-path` and the configuration's `default_path`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DefaultPath {
    /// Per egress: the fast path where the sockets are copy mode and the device takes
    /// redirected frames, the AF_XDP path elsewhere.
    #[default]
    Auto,
    /// AF_XDP sockets; user space rewrites and transmits.
    AfXdp,
    /// In-kernel fast path (XDP rewrite + DEVMAP redirect).
    Fast,
}

impl DefaultPath {
    /// The configuration's name of the setting.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "auto" => Some(DefaultPath::Auto),
            "af_xdp" | "af-xdp" => Some(DefaultPath::AfXdp),
            "fast" => Some(DefaultPath::Fast),
            _ => None,
        }
    }
}

/// A path out of an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    AfXdp,
    Fast,
}

impl Path {
    pub fn name(self) -> &'static str {
        match self {
            Path::AfXdp => "af_xdp",
            Path::Fast => "fast",
        }
    }
}

/// The path plain forwarding takes out of one interface, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EgressPath {
    pub path: Path,
    pub reason: Reason,
}

/// Why an egress takes its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// `--default-path` or the configuration's `default_path` names it.
    Set,
    /// `auto`, AF_XDP sockets in zero-copy mode.
    ZeroCopy,
    /// `auto`, copy-mode sockets, and the device takes redirected frames.
    CopyModeRedirectable,
    /// `auto`, and the device does not take redirected frames (now).
    NotRedirectable,
    /// `auto`, and the kernel does not report XDP features.
    Unknown,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::Set => "set by default_path",
            Reason::ZeroCopy => "auto: the AF_XDP sockets are zero-copy",
            Reason::CopyModeRedirectable => {
                "auto: copy-mode AF_XDP, and the device takes redirected frames"
            }
            Reason::NotRedirectable => {
                "auto: the device takes no redirected frames (a veth: its peer has no XDP program and no GRO; some NIC drivers: not until an XDP program runs on them natively)"
            }
            Reason::Unknown => "auto: the kernel does not report XDP features (Linux 6.3+)",
        })
    }
}

impl Reason {
    /// A short label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Reason::Set => "set",
            Reason::ZeroCopy => "zero_copy",
            Reason::CopyModeRedirectable => "copy_mode_redirectable",
            Reason::NotRedirectable => "not_redirectable",
            Reason::Unknown => "unknown",
        }
    }
}

/// The path out of an interface: `setting` as given, `zero_copy` of the sockets, and the
/// device's XDP features as the kernel last reported them (`None`: not reported).
pub fn choose(setting: DefaultPath, zero_copy: bool, xdp_features: Option<u64>) -> EgressPath {
    let (path, reason) = match (setting, zero_copy, xdp_features) {
        (DefaultPath::Fast, ..) => (Path::Fast, Reason::Set),
        (DefaultPath::AfXdp, ..) => (Path::AfXdp, Reason::Set),
        (DefaultPath::Auto, true, _) => (Path::AfXdp, Reason::ZeroCopy),
        (DefaultPath::Auto, false, None) => (Path::AfXdp, Reason::Unknown),
        (DefaultPath::Auto, false, Some(f)) if f & features::NDO_XMIT != 0 => {
            (Path::Fast, Reason::CopyModeRedirectable)
        }
        (DefaultPath::Auto, false, Some(_)) => (Path::AfXdp, Reason::NotRedirectable),
    };
    EgressPath { path, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A veth's features with and without `NDO_XMIT` (its peer with GRO / without).
    const VETH_PEER_GRO: u64 = 0x67;
    const VETH_PEER_BARE: u64 = 0x23;

    #[test]
    fn auto_takes_the_fast_path_only_where_frames_can_be_redirected_in_copy_mode() {
        let auto = |zc, f| choose(DefaultPath::Auto, zc, f);
        assert_eq!(auto(false, Some(VETH_PEER_GRO)).path, Path::Fast);
        assert_eq!(auto(false, Some(VETH_PEER_BARE)).path, Path::AfXdp);
        assert_eq!(auto(false, Some(VETH_PEER_BARE)).reason, Reason::NotRedirectable);
        assert_eq!(auto(false, None), EgressPath { path: Path::AfXdp, reason: Reason::Unknown });
        assert_eq!(
            auto(true, Some(VETH_PEER_GRO)),
            EgressPath { path: Path::AfXdp, reason: Reason::ZeroCopy }
        );
    }

    #[test]
    fn a_set_path_is_taken_whatever_the_device() {
        for f in [None, Some(VETH_PEER_BARE), Some(VETH_PEER_GRO)] {
            for zc in [false, true] {
                assert_eq!(choose(DefaultPath::Fast, zc, f).path, Path::Fast);
                assert_eq!(choose(DefaultPath::AfXdp, zc, f).path, Path::AfXdp);
            }
        }
    }

    #[test]
    fn names() {
        assert_eq!(DefaultPath::from_name("af_xdp"), Some(DefaultPath::AfXdp));
        assert_eq!(DefaultPath::from_name("auto"), Some(DefaultPath::Auto));
        assert_eq!(DefaultPath::from_name("kernel"), None);
    }
}
