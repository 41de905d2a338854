//! Netfilter in the forwarding path: which families have nftables or iptables hooks that the
//! kernel would run on forwarded traffic (prerouting, forward, postrouting; any `netdev`
//! chain), read from the kernel of this network namespace.
//!
//! Frames xdpfwd forwards bypass every one of them: no filter, no NAT, no conntrack. With
//! `netfilter = "defer"` (the default) the control plane sends such a family's transit traffic
//! to the kernel while the hooks exist; with `"warn"` it only says so.
//!
//! nftables chains come from an `NFT_MSG_GETCHAIN` dump (nfnetlink, parsed here: no
//! well-kept crate reads it without libnftnl); iptables-legacy tables from
//! `/proc/net/ip{,6}_tables_names` (a loaded table registers its hooks). iptables-nft rules
//! are nftables chains.

use std::{fmt, fs, time::Duration};

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

use crate::sockopt::set_timeout;

/// What `netfilter = ...` asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum NetfilterMode {
    /// Transit traffic of a family with hooks goes to the kernel, which runs them.
    #[default]
    Defer,
    /// Forward anyway (bypassing the hooks); log and show it.
    Warn,
}

impl NetfilterMode {
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "defer" => Some(NetfilterMode::Defer),
            "warn" => Some(NetfilterMode::Warn),
            _ => None,
        }
    }
}

/// The hooks found, per family, described for logs and `xdpfwd stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hooks {
    pub v4: Vec<String>,
    pub v6: Vec<String>,
}

impl Hooks {
    /// Hooks of one family (`v6`).
    pub fn of(&self, v6: bool) -> &[String] {
        if v6 { &self.v6 } else { &self.v4 }
    }
}

impl fmt::Display for Hooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut all: Vec<&String> = self.v4.iter().chain(&self.v6).collect();
        all.sort();
        all.dedup();
        let all: Vec<&str> = all.iter().map(|s| s.as_str()).collect();
        f.write_str(&all.join(", "))
    }
}

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_GETCHAIN: u16 = 4;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFPROTO_INET: u8 = 1;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_NETDEV: u8 = 5;
const NFPROTO_IPV6: u8 = 10;
/// `NF_INET_PRE_ROUTING`, `NF_INET_FORWARD`, `NF_INET_POST_ROUTING`, `NF_INET_INGRESS`.
const FORWARDING_HOOKS: [(u32, &str); 4] =
    [(0, "prerouting"), (2, "forward"), (4, "postrouting"), (5, "ingress")];
/// `struct nfgenmsg`: family, version, resource id.
const NFGENMSG_LEN: usize = 4;

/// Reads the hooks of this namespace. `Err` says why they could not be read (the caller
/// then assumes the worst).
pub fn detect() -> Result<Hooks, String> {
    let mut hooks = nftables_chains()?;
    for (v6, file) in [(false, "/proc/net/ip_tables_names"), (true, "/proc/net/ip6_tables_names")] {
        let tables = fs::read_to_string(file).unwrap_or_default();
        for table in tables.split_whitespace() {
            let family = if v6 { &mut hooks.v6 } else { &mut hooks.v4 };
            family.push(format!("iptables-legacy {} table {table}", if v6 { "ip6" } else { "ip" }));
        }
    }
    Ok(hooks)
}

/// The nftables base chains on a forwarding hook, by family.
fn nftables_chains() -> Result<Hooks, String> {
    let mut socket = match Socket::new(NETLINK_NETFILTER) {
        Ok(s) => s,
        // No nfnetlink in this kernel: no nftables either.
        Err(e) if e.raw_os_error() == Some(libc::EPROTONOSUPPORT) => return Ok(Hooks::default()),
        Err(e) => return Err(format!("opening a netfilter netlink socket: {e}")),
    };
    socket.bind_auto().map_err(|e| format!("binding the netfilter socket: {e}"))?;
    set_timeout(&socket, Duration::from_secs(1));
    socket
        .send_to(&dump_request(), &SocketAddr::new(0, 0), 0)
        .map_err(|e| format!("asking for the nftables chains: {e}"))?;
    let mut hooks = Hooks::default();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = socket
            .recv(&mut &mut buf[..], 0)
            .map_err(|e| format!("reading the nftables chains: {e}"))?;
        match chains(&buf[..n], &mut hooks) {
            Dump::More => {}
            Dump::Done => return Ok(hooks),
            Dump::Error(0 | libc::ENOENT | libc::EAFNOSUPPORT | libc::EOPNOTSUPP) => {
                return Ok(Hooks::default());
            }
            Dump::Error(errno) => {
                return Err(format!(
                    "the nftables chains: {}",
                    std::io::Error::from_raw_os_error(errno)
                ));
            }
        }
    }
}

/// `NFT_MSG_GETCHAIN`, a dump of every family.
fn dump_request() -> Vec<u8> {
    let mut msg = Vec::with_capacity(20);
    msg.extend_from_slice(&20u32.to_ne_bytes());
    msg.extend_from_slice(&(NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETCHAIN).to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: NFPROTO_UNSPEC (every family), NFNETLINK_V0, resource id 0.
    msg.extend_from_slice(&[0, 0, 0, 0]);
    msg
}

enum Dump {
    More,
    Done,
    Error(i32),
}

/// Adds the chains of one datagram of the dump to `hooks`.
fn chains(mut data: &[u8], hooks: &mut Hooks) -> Dump {
    while data.len() >= 16 {
        let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
        let kind = u16::from_ne_bytes([data[4], data[5]]);
        if len < 16 || len > data.len() {
            break;
        }
        let payload = &data[16..len];
        match kind {
            NLMSG_DONE => return Dump::Done,
            NLMSG_ERROR => {
                let errno =
                    payload.get(..4).map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                return Dump::Error(-errno);
            }
            k if k == NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWCHAIN => add_chain(payload, hooks),
            _ => {}
        }
        data = &data[((len + 3) & !3).min(data.len())..];
    }
    Dump::More
}

/// The well-formed attributes of a netlink message body, up to the first malformed one.
fn attrs(data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    crate::nlattr::attributes(data).map_while(Result::ok)
}

/// Records one chain if it is a base chain on a forwarding hook of a family that routes.
fn add_chain(payload: &[u8], hooks: &mut Hooks) {
    let Some(&family) = payload.first() else { return };
    let text =
        |v: &[u8]| String::from_utf8_lossy(v.split(|b| *b == 0).next().unwrap_or(v)).into_owned();
    let (mut table, mut name, mut hook) = (String::new(), String::new(), None);
    for (kind, value) in attrs(payload.get(NFGENMSG_LEN..).unwrap_or_default()) {
        match kind {
            NFTA_CHAIN_TABLE => table = text(value),
            NFTA_CHAIN_NAME => name = text(value),
            NFTA_CHAIN_HOOK => {
                hook = attrs(value)
                    .find(|(k, _)| *k == NFTA_HOOK_HOOKNUM)
                    .and_then(|(_, v)| Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?)))
            }
            _ => {}
        }
    }
    let Some(hook) = hook else { return };
    let (v4, v6, family_name) = match family {
        NFPROTO_INET => (true, true, "inet"),
        NFPROTO_IPV4 => (true, false, "ip"),
        NFPROTO_IPV6 => (false, true, "ip6"),
        // Ingress and egress of a device: the XDP program runs before them.
        NFPROTO_NETDEV => (true, true, "netdev"),
        _ => return,
    };
    let hook_name = if family == NFPROTO_NETDEV {
        if hook == 0 { "ingress" } else { "egress" }
    } else {
        match FORWARDING_HOOKS.iter().find(|(n, _)| *n == hook) {
            Some((_, name)) => name,
            None => return,
        }
    };
    let what = format!("nftables {family_name} {table}/{name} ({hook_name})");
    if v4 {
        hooks.v4.push(what.clone());
    }
    if v6 {
        hooks.v6.push(what);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One `NFT_MSG_NEWCHAIN` message as the kernel sends it (nlmsghdr, nfgenmsg, attributes).
    fn chain_message(family: u8, table: &str, name: &str, hook: Option<u32>) -> Vec<u8> {
        fn attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
            out.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
            out.extend_from_slice(&kind.to_ne_bytes());
            out.extend_from_slice(value);
            out.resize((out.len() + 3) & !3, 0);
        }
        let mut body = vec![family, 0, 0, 0];
        attr(&mut body, NFTA_CHAIN_TABLE, format!("{table}\0").as_bytes());
        attr(&mut body, NFTA_CHAIN_NAME, format!("{name}\0").as_bytes());
        if let Some(hook) = hook {
            let mut nested = Vec::new();
            attr(&mut nested, NFTA_HOOK_HOOKNUM, &hook.to_be_bytes());
            attr(&mut nested, 2, &0i32.to_be_bytes());
            attr(&mut body, NFTA_CHAIN_HOOK | 0x8000, &nested);
        }
        let mut msg = Vec::new();
        msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&(NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWCHAIN).to_ne_bytes());
        msg.extend_from_slice(&[2, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        msg.extend_from_slice(&body);
        msg
    }

    #[test]
    fn forwarding_hooks_are_found_per_family() {
        let mut dump = Vec::new();
        dump.extend(chain_message(NFPROTO_INET, "filter", "fwd", Some(2)));
        dump.extend(chain_message(NFPROTO_IPV4, "nat", "post", Some(4)));
        // Input and output hooks, regular chains and bridges see no forwarded traffic.
        dump.extend(chain_message(NFPROTO_IPV6, "filter", "in", Some(1)));
        dump.extend(chain_message(NFPROTO_IPV6, "filter", "out", Some(3)));
        dump.extend(chain_message(NFPROTO_IPV6, "filter", "mine", None));
        dump.extend(chain_message(7, "br", "fwd", Some(2)));
        let mut hooks = Hooks::default();
        assert!(matches!(chains(&dump, &mut hooks), Dump::More));
        assert_eq!(
            hooks.v4,
            ["nftables inet filter/fwd (forward)", "nftables ip nat/post (postrouting)"]
        );
        assert_eq!(hooks.v6, ["nftables inet filter/fwd (forward)"]);
        let mut netdev = Hooks::default();
        chains(&chain_message(NFPROTO_NETDEV, "t", "ing", Some(0)), &mut netdev);
        assert_eq!(netdev.v4, netdev.v6);
        assert_eq!(netdev.v4, ["nftables netdev t/ing (ingress)"]);
    }

    #[test]
    fn the_end_and_errors_of_a_dump_are_told_apart() {
        let mut done = vec![0u8; 20];
        done[..4].copy_from_slice(&20u32.to_ne_bytes());
        done[4..6].copy_from_slice(&NLMSG_DONE.to_ne_bytes());
        assert!(matches!(chains(&done, &mut Hooks::default()), Dump::Done));
        let mut err = done.clone();
        err[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        err[16..20].copy_from_slice(&(-libc::EPERM).to_ne_bytes());
        assert!(matches!(chains(&err, &mut Hooks::default()), Dump::Error(libc::EPERM)));
        // Truncated input ends the datagram, never panics.
        let msg = chain_message(NFPROTO_INET, "filter", "fwd", Some(2));
        for cut in 0..msg.len() {
            let _ = chains(&msg[..cut], &mut Hooks::default());
        }
    }
}
