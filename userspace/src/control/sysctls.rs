//! The kernel's settings the control plane polls (and reads again when the kernel reports a
//! change, `watch.rs`): per-interface forwarding and source
//! checks, the ECMP hash policy and netfilter's hooks on forwarded traffic.

use std::fs;

use xdpfwd_common::{FIB_CTL_FIELDS, FIB_CTL_SEED, HashPolicy};

use super::{Control, notice};
use crate::{
    config::EcmpMode,
    netfilter::{self, Hooks, NetfilterMode},
};

impl Control {
    /// Reads every setting polled for below.
    pub(super) fn poll_forwarding(&mut self) {
        self.poll_hash_policy();
        self.read_forwarding();
    }

    /// Reads the interfaces' forwarding and source-check sysctls; true if any changed.
    pub(super) fn read_forwarding(&mut self) -> bool {
        let mut changed = Vec::new();
        for (i, iface) in self.ifaces.iter().enumerate() {
            let flags = IfaceSysctls::read(&iface.name);
            if self.forwarding.get(&iface.ifindex) != Some(&flags) {
                changed.push((i, flags));
            }
        }
        let any = !changed.is_empty();
        for (i, flags) in changed {
            tracing::info!(
                iface = %self.ifaces[i].name,
                ipv4 = flags.v4,
                ipv6 = flags.v6,
                rp_filter = flags.rp_filter,
                "kernel forwarding"
            );
            self.forwarding.insert(self.ifaces[i].ifindex, flags);
            self.update_iface(i);
        }
        any
    }

    /// Follows each family's `fib_multipath_hash_policy` (and policy 3's
    /// `fib_multipath_hash_fields`); a policy xdpfwd does not know leaves ECMP to the
    /// kernel. And `fib_multipath_use_neigh` (IPv4) and `fib_multipath_hash_seed`.
    pub(super) fn poll_hash_policy(&mut self) {
        self.poll_hash_seed();
        let use_neigh = fs::read_to_string("/proc/sys/net/ipv4/fib_multipath_use_neigh")
            .is_ok_and(|s| s.trim() == "1");
        self.nexthops.set_use_neigh(use_neigh);
        for (v6, family) in [(false, "ipv4"), (true, "ipv6")] {
            self.poll_hash_fields(v6, family);
            let policy =
                read_u32(&format!("/proc/sys/net/{family}/fib_multipath_hash_policy")).unwrap_or(0);
            // Policy 3 hashes fields xdpfwd must know (and have written) first.
            let (hash, ecmp_kernel) = match HashPolicy::from_sysctl(policy) {
                Some(HashPolicy::Custom) if self.mp_fields[v6 as usize].is_none() => {
                    (HashPolicy::Custom, true)
                }
                Some(hash) => (hash, false),
                None => (HashPolicy::L3, true),
            };
            let fib = &mut self.fib[v6 as usize];
            if fib.word.hash != hash || fib.word.ecmp_kernel != ecmp_kernel {
                tracing::info!(family, policy, ecmp_kernel, "ECMP hash policy");
                fib.word.hash = hash;
                fib.word.ecmp_kernel = ecmp_kernel;
                if self.routes_dumped {
                    self.write_fib(v6);
                }
            }
        }
        self.report_ecmp();
    }

    /// A reload changed `ecmp = ...`: both families' words follow.
    pub(super) fn apply_ecmp_mode(&mut self) {
        let own = self.policy.ecmp == EcmpMode::OwnHash;
        for v6 in [false, true] {
            self.fib[v6 as usize].word.own_hash = own;
            if self.routes_dumped {
                self.write_fib(v6);
            }
        }
        self.report_ecmp();
    }

    /// Logs, per family, why ECMP paths cannot be the kernel's, and what
    /// happens to them: the kernel's where it forwards (`ecmp = "exact"`), or xdpfwd's own
    /// hash (`own-hash`). Where the kernel's forwarding is off, xdpfwd's own hash anyway.
    fn report_ecmp(&mut self) {
        let seed = self.mp_seed.unwrap_or(0);
        for (v6, family) in [(false, "ipv4"), (true, "ipv6")] {
            let word = self.fib[v6 as usize].word;
            let (why, fix) = match word.hash {
                _ if word.ecmp_kernel => (None, ""),
                HashPolicy::L4 => (
                    Some("hash policy 1 takes the NIC's receive hash, which xdpfwd cannot see"),
                    "policy 0, 2 or 3 with the seed",
                ),
                _ if seed == 0 => (
                    Some("no net.ipv4.fib_multipath_hash_seed: the kernel's hash key is random"),
                    "set the seed",
                ),
                _ => (None, ""),
            };
            let text = why.map(|why| {
                if word.own_hash {
                    format!("ECMP paths by xdpfwd's own hash, not the kernel's ({why})")
                } else {
                    format!(
                        "ECMP left to the kernel where it forwards ({why}): {fix}, or \
                         ecmp = \"own-hash\""
                    )
                }
            });
            if self.ecmp_notes[v6 as usize] == text {
                continue;
            }
            match &text {
                Some(text) => tracing::info!(family, "{text}"),
                None => tracing::info!(family, "ECMP paths are the kernel's"),
            }
            self.ecmp_notes[v6 as usize] = text;
        }
    }

    /// Follows one family's `fib_multipath_hash_fields` (policy 3's), in `FIB_CTL`.
    fn poll_hash_fields(&mut self, v6: bool, family: &str) {
        let path = format!("/proc/sys/net/{family}/fib_multipath_hash_fields");
        // Absent before Linux 5.12, where policy 3 does not exist either. Unknown fields
        // leave policy 3 to the kernel.
        let Some(fields) = read_u32(&path) else {
            self.mp_fields[v6 as usize] = None;
            return;
        };
        if self.mp_fields[v6 as usize] == Some(fields) {
            return;
        }
        if let Err(err) = self.maps.fib_ctl.set(FIB_CTL_FIELDS + v6 as u32, fields, 0) {
            tracing::warn!(%err, family, "writing the ECMP hash fields");
            self.mp_fields[v6 as usize] = None;
            return;
        }
        tracing::info!(family, fields = format!("{fields:#06x}"), "ECMP hash fields (policy 3)");
        self.mp_fields[v6 as usize] = Some(fields);
    }

    /// Follows `net.ipv4.fib_multipath_hash_seed` (Linux 6.11+, both families): once it is
    /// set, policies 0, 2 and 3 are hashed as the kernel hashes them, so every flow takes the
    /// kernel's path (`xdpfwd_common::mp_hash`); unset, the kernel's key is random: ECMP
    /// traffic is the kernel's where it forwards, else xdpfwd's own hash chooses.
    fn poll_hash_seed(&mut self) {
        let seed = read_u32("/proc/sys/net/ipv4/fib_multipath_hash_seed").unwrap_or(0);
        if self.mp_seed == Some(seed) {
            return;
        }
        if let Err(err) = self.maps.fib_ctl.set(FIB_CTL_SEED, seed, 0) {
            tracing::warn!(%err, "writing the ECMP hash seed");
            return;
        }
        if seed == 0 {
            tracing::info!("ECMP hash seed not set: the kernel's multipath hash is unknown");
        } else {
            tracing::info!(
                seed,
                "ECMP hash seed: with fib_multipath_hash_policy 0, 2 or 3, flows take the \
                 kernel's paths"
            );
        }
        self.mp_seed = Some(seed);
    }

    /// Reads netfilter's hooks; when they change, each family's transit traffic goes to the
    /// kernel (`defer`) or is only reported (`warn`). Hooks that cannot be read count as
    /// present. True if they changed.
    pub(super) fn poll_netfilter(&mut self) -> bool {
        let hooks = netfilter::detect().unwrap_or_else(|why| {
            let unknown = vec![format!("unknown: {why}")];
            Hooks { v4: unknown.clone(), v6: unknown }
        });
        if self.netfilter.as_ref() == Some(&hooks) {
            return false;
        }
        self.netfilter = Some(hooks);
        self.apply_netfilter();
        true
    }

    /// Tells the XDP program, the log and the notices what the hooks and the mode mean.
    pub(super) fn apply_netfilter(&mut self) {
        let Some(hooks) = self.netfilter.clone() else { return };
        let mode = self.policy.netfilter;
        let text = if hooks.v4.is_empty() && hooks.v6.is_empty() {
            tracing::info!("netfilter: no hooks on forwarded traffic");
            None
        } else if mode == NetfilterMode::Defer {
            tracing::warn!(
                "netfilter hooks see forwarded traffic ({hooks}): the kernel forwards their \
                 families and runs them (netfilter = \"defer\")"
            );
            Some(format!("netfilter (defer): the kernel forwards past {hooks}"))
        } else {
            tracing::warn!(
                "netfilter hooks see forwarded traffic ({hooks}): xdpfwd bypasses them \
                 (netfilter = \"warn\")"
            );
            Some(format!("netfilter (warn): xdpfwd bypasses {hooks}"))
        };
        notice(&self.shared, "netfilter", text);
        for v6 in [false, true] {
            let defer = mode == NetfilterMode::Defer && !hooks.of(v6).is_empty();
            if self.fib[v6 as usize].word.netfilter != defer {
                self.fib[v6 as usize].word.netfilter = defer;
                if self.routes_dumped {
                    self.write_fib(v6);
                }
            }
        }
    }
}

/// The sysctls of one interface that decide how the kernel forwards what arrives on it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct IfaceSysctls {
    /// `net.ipv4.conf.IFACE.forwarding`.
    pub(super) v4: bool,
    /// The kernel forwards IPv6 arriving on the interface: `net.ipv6.conf.all.forwarding`
    /// (the per-interface `forwarding` only chooses host or router behaviour), or the
    /// interface's `force_forwarding` (`ip6_forward`).
    pub(super) v6: bool,
    /// The larger of `net.ipv4.conf.{all,IFACE}.rp_filter` (as the kernel combines them).
    pub(super) rp_filter: u8,
}

impl IfaceSysctls {
    pub(super) fn read(iface: &str) -> Self {
        let read =
            |path: String| fs::read_to_string(path).ok().and_then(|s| s.trim().parse::<u8>().ok());
        let conf = |family: &str, dev: &str, key: &str| {
            read(format!("/proc/sys/net/{family}/conf/{dev}/{key}"))
        };
        IfaceSysctls {
            v4: conf("ipv4", iface, "forwarding").is_some_and(|v| v != 0),
            v6: conf("ipv6", "all", "forwarding").is_some_and(|v| v != 0)
                || conf("ipv6", iface, "force_forwarding").is_some_and(|v| v != 0),
            // Unreadable: strict, the check that refuses most.
            rp_filter: conf("ipv4", "all", "rp_filter")
                .unwrap_or(1)
                .max(conf("ipv4", iface, "rp_filter").unwrap_or(1)),
        }
    }
}

/// A sysctl's value, if it can be read.
fn read_u32(path: &str) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}
