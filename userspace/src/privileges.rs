//! Checks that the process holds the capabilities xdpfwd needs, and names the missing ones.

use std::fs;

/// Capability numbers from `linux/capability.h`.
const CAP_NET_ADMIN: u32 = 12;
const CAP_NET_RAW: u32 = 13;
const CAP_IPC_LOCK: u32 = 14;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The effective capability set of this process.
fn effective() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
}

/// The capabilities xdpfwd needs that this process lacks, by name.
pub fn missing() -> Vec<&'static str> {
    let Some(caps) = effective() else { return Vec::new() };
    let has = |cap: u32| caps & (1 << cap) != 0;
    let mut missing = Vec::new();
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN (attach XDP, netlink)");
    }
    if !has(CAP_NET_RAW) {
        missing.push("CAP_NET_RAW (AF_XDP sockets, raw ICMP sockets for the router's errors)");
    }
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF (load the program, create maps)");
    }
    if !has(CAP_PERFMON) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_PERFMON (pointer arithmetic on packets in the verifier)");
    }
    if !has(CAP_IPC_LOCK) {
        missing.push("CAP_IPC_LOCK (lock the UMEM in memory)");
    }
    missing
}

/// Fails with a message naming every missing capability.
pub fn check() -> anyhow::Result<()> {
    let missing = missing();
    if missing.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "xdpfwd lacks capabilities: {}. Run it as root, or grant them, e.g. \
         `setcap cap_net_admin,cap_net_raw,cap_bpf,cap_perfmon,cap_ipc_lock+ep $(which xdpfwd)`",
        missing.join(", ")
    )
}
