//! Loading the embedded XDP program and attaching it (through `bpf_link`, so that nothing
//! stays attached when the process dies), with the checks that turn kernel errors into advice.

use std::fmt;

use aya::{
    Ebpf, EbpfLoader, include_bytes_aligned,
    programs::{Xdp, XdpMode, xdp::XdpLinkId},
};
use xdpfwd_common::map_names;

use crate::iface::Iface;

/// The program's name in the object (`#[xdp] fn xdpfwd`).
pub const PROGRAM: &str = "xdpfwd";

/// `--mode`: how to attach.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    /// Native (driver) mode where the driver supports it, generic (skb) mode otherwise.
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (skb) mode only.
    Skb,
}

/// The mode an interface was attached in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    Native,
    Skb,
}

impl fmt::Display for Attached {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Attached::Native => "native",
            Attached::Skb => "skb",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("loading the embedded eBPF object failed: {0}")]
    Object(#[from] aya::EbpfError),
    #[error("the eBPF object has no program '{PROGRAM}'")]
    NoProgram,
    #[error("loading the XDP program into the kernel failed (verifier or permissions): {0}")]
    Program(#[source] aya::programs::ProgramError),
    #[error(
        "interface '{iface}' already has an XDP program attached: '{name}' (id {id}). \
         Remove it first: `ip link set dev {iface} xdp off`; if it is held by a bpf_link \
         (`bpftool link list`), stop the program that owns it{owner}"
    )]
    AlreadyAttached { iface: String, id: u32, name: String, owner: String },
    #[error("attaching XDP to '{iface}' in {mode} mode failed: {source}")]
    Attach { iface: String, mode: &'static str, source: aya::programs::ProgramError },
}

/// Capacities of the maps whose size follows the routing table (entries of all tables).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub routes_v4: u32,
    pub routes_v6: u32,
    /// Flow cache slots per CPU (0: off, one slot allocated).
    pub flow_cache: u32,
}

/// Loads the embedded object with the route tries sized to `capacity` (they allocate per
/// entry, not up front) and verifies the program.
pub fn load(capacity: Capacity) -> Result<Ebpf, LoadError> {
    let mut loader = EbpfLoader::new();
    if let Some(level) = std::env::var_os("XDPFWD_VERIFIER_LOG") {
        // The whole verifier log in a load error (for developers: it runs to megabytes;
        // `basic`: the states at branches only, every instruction otherwise).
        let detail = if level == "basic" {
            aya::VerifierLogLevel::DEBUG
        } else {
            aya::VerifierLogLevel::VERBOSE
        };
        loader.verifier_log_level(detail | aya::VerifierLogLevel::STATS);
    }
    let mut ebpf = loader
        .map_max_entries(map_names::ROUTES_V4, capacity.routes_v4)
        .map_max_entries(map_names::ROUTES_V6, capacity.routes_v6)
        .map_max_entries(map_names::FLOW_CACHE, capacity.flow_cache.max(1))
        .load(include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp-prog")))?;
    let prog: &mut Xdp = ebpf
        .program_mut(PROGRAM)
        .ok_or(LoadError::NoProgram)?
        .try_into()
        .map_err(LoadError::Program)?;
    let start = std::time::Instant::now();
    prog.load().map_err(LoadError::Program)?;
    let verified = prog.info().ok().and_then(|i| i.verified_instruction_count());
    tracing::info!(
        verified_insns = verified,
        secs = start.elapsed().as_secs_f64(),
        "XDP program verified (the kernel's limit is 1,000,000 instructions processed)"
    );
    Ok(ebpf)
}

/// Refuses interfaces that already carry an XDP program, naming it.
pub fn check_free(ifaces: &[Iface]) -> Result<(), LoadError> {
    for iface in ifaces {
        if let Some(id) = iface.attached_prog {
            let name = aya::programs::loaded_programs()
                .filter_map(Result::ok)
                .find(|p| p.id() == id)
                .and_then(|p| p.name_as_str().map(str::to_owned))
                .unwrap_or_else(|| "?".into());
            let owner = match link_owner(id) {
                Some((pid, comm)) if name == PROGRAM => {
                    format!(
                        " (it is another xdpfwd: pid {pid} '{comm}'; stop it with `kill {pid}`)"
                    )
                }
                Some((pid, comm)) => format!(" (held by pid {pid} '{comm}')"),
                None if name == PROGRAM => " (it is another xdpfwd: `pgrep -a xdpfwd`)".to_owned(),
                None => String::new(),
            };
            return Err(LoadError::AlreadyAttached { iface: iface.name.clone(), id, name, owner });
        }
    }
    Ok(())
}

/// The process holding a `bpf_link` of XDP program `prog_id`, from `/proc/*/fdinfo`.
fn link_owner(prog_id: u32) -> Option<(u32, String)> {
    let wanted = format!("prog_id:\t{prog_id}\n");
    for proc in std::fs::read_dir("/proc").ok()?.filter_map(Result::ok) {
        let Some(pid) = proc.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(proc.path().join("fdinfo")) else { continue };
        for fd in fds.filter_map(Result::ok) {
            let Ok(info) = std::fs::read_to_string(fd.path()) else { continue };
            if info.contains("link_type:\txdp") && info.contains(&wanted) {
                let comm = std::fs::read_to_string(proc.path().join("comm")).unwrap_or_default();
                return Some((pid, comm.trim().to_owned()));
            }
        }
    }
    None
}

/// Attaches the loaded program to `iface`, honouring `mode`.
pub fn attach(
    ebpf: &mut Ebpf,
    iface: &Iface,
    mode: ModeArg,
) -> Result<(XdpLinkId, Attached), LoadError> {
    let prog: &mut Xdp = ebpf
        .program_mut(PROGRAM)
        .ok_or(LoadError::NoProgram)?
        .try_into()
        .map_err(LoadError::Program)?;
    let try_mode = |prog: &mut Xdp, m: XdpMode, name: &'static str| {
        prog.attach_to_if_index(iface.ifindex, m).map_err(|source| LoadError::Attach {
            iface: iface.name.clone(),
            mode: name,
            source,
        })
    };
    match mode {
        ModeArg::Native => Ok((try_mode(prog, XdpMode::Driver, "native")?, Attached::Native)),
        ModeArg::Skb => Ok((try_mode(prog, XdpMode::Skb, "skb")?, Attached::Skb)),
        ModeArg::Auto => match try_mode(prog, XdpMode::Driver, "native") {
            Ok(id) => Ok((id, Attached::Native)),
            Err(err) => {
                tracing::info!(iface = %iface.name, "native XDP unavailable ({err}); using skb mode");
                Ok((try_mode(prog, XdpMode::Skb, "skb")?, Attached::Skb))
            }
        },
    }
}
