//! The tcpdump expression of a capture, compiled by libpcap for Ethernet frames into classic
//! BPF, which `xdpfwd_common::cbpf` runs: in the XDP program and the workers before a frame
//! is copied, in the capture server for each client.

use anyhow::Context as _;
use xdpfwd_common::cbpf::{self, CbpfInsn, MAX_PCAP_INSNS};

/// A compiled expression; no instructions match every frame.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter(Vec<CbpfInsn>);

impl Filter {
    /// Compiles `expr` (empty: every frame); the error is libpcap's, naming the problem.
    pub fn compile(expr: &str) -> anyhow::Result<Filter> {
        if expr.trim().is_empty() {
            return Ok(Filter::default());
        }
        let dead = pcap::Capture::dead(pcap::Linktype::ETHERNET).context("libpcap")?;
        let program =
            dead.compile(expr, true).with_context(|| format!("filter expression {expr:?}"))?;
        // pcap's instructions show their fields ("code jt jf k"), not the fields themselves.
        let insns = program
            .get_instructions()
            .iter()
            .map(|i| parse(&i.to_string()))
            .collect::<Option<Vec<_>>>()
            .context("reading libpcap's instructions")?;
        if insns.len() > MAX_PCAP_INSNS as usize {
            anyhow::bail!(
                "filter expression {expr:?}: {} instructions, more than the {MAX_PCAP_INSNS} a \
                 classic BPF program may have",
                insns.len()
            );
        }
        Ok(Filter(insns))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn insns(&self) -> &[CbpfInsn] {
        &self.0
    }

    /// Whether a frame of `len` bytes, whose first bytes are `frame`, matches.
    pub fn matches(&self, frame: &[u8], len: u32) -> bool {
        self.is_empty() || cbpf::accepts::<MAX_PCAP_INSNS, _, _>(&self.0[..], frame, len)
    }
}

fn parse(text: &str) -> Option<CbpfInsn> {
    let mut f = text.split_whitespace();
    let insn = CbpfInsn {
        code: f.next()?.parse().ok()?,
        jt: f.next()?.parse().ok()?,
        jf: f.next()?.parse().ok()?,
        k: f.next()?.parse().ok()?,
    };
    f.next().is_none().then_some(insn)
}

#[cfg(test)]
mod tests {
    use etherparse::PacketBuilder;
    use proptest::prelude::*;

    use super::*;

    /// An Ethernet frame of IPv4 or IPv6, UDP or TCP, or something else.
    fn frame(
        v6: bool,
        tcp: bool,
        (a, b): (u8, u8),
        (sport, dport): (u16, u16),
        n: usize,
    ) -> Vec<u8> {
        let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let ip = if v6 {
            let addr = |x: u8| {
                let mut s = [0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                s[15] = x;
                s
            };
            eth.ipv6(addr(a), addr(b), 64)
        } else {
            eth.ipv4([198, 18, 0, a], [198, 18, 1, b], 64)
        };
        let payload = vec![0x5a; n];
        let mut out = Vec::new();
        if tcp {
            ip.tcp(sport, dport, 1, 1000).write(&mut out, &payload).unwrap();
        } else {
            ip.udp(sport, dport).write(&mut out, &payload).unwrap();
        }
        out
    }

    const EXPRESSIONS: [&str; 12] = [
        "udp dst port 7000",
        "tcp and src port 5000",
        "host 198.18.0.1 or host 198.18.1.2",
        "ip6 and udp",
        "net 198.18.1.0/30",
        "portrange 5000-5010 and not tcp",
        "greater 100",
        "less 80",
        "ip6 host 2001:2::3",
        "udp[8:2] = 0x5a5a",
        "tcp[tcpflags] & tcp-ack != 0",
        "ether src 02:00:00:00:00:01 and (ip or ip6) and len > 60",
    ];

    proptest! {
        /// The interpreter the XDP program and the workers run agrees with libpcap's own
        /// `bpf_filter` on every expression and frame.
        #[test]
        fn the_interpreter_agrees_with_libpcap(
            v6 in any::<bool>(), tcp in any::<bool>(), a in 0u8..4, b in 0u8..4,
            sport in 4998u16..5012, dport in 6999u16..7002, n in 0usize..120, cut in 0usize..200,
        ) {
            let frame = frame(v6, tcp, (a, b), (sport, dport), n);
            let dead = pcap::Capture::dead(pcap::Linktype::ETHERNET).unwrap();
            for expr in EXPRESSIONS {
                let theirs = dead.compile(expr, true).unwrap();
                let ours = Filter::compile(expr).unwrap();
                prop_assert_eq!(ours.matches(&frame, frame.len() as u32), theirs.filter(&frame), "{}", expr);
                // Cut short (a snap length): libpcap's loads beyond the bytes refuse too.
                let short = &frame[..cut.min(frame.len())];
                prop_assert_eq!(ours.matches(short, short.len() as u32), theirs.filter(short), "{} cut", expr);
            }
        }
    }

    #[test]
    fn bad_expressions_are_named_and_short_ones_fit_the_xdp_program() {
        let err = Filter::compile("udp dst prot 7000").err().unwrap();
        assert!(format!("{err:#}").contains("filter expression"), "{err:#}");
        assert!(Filter::compile("").unwrap().is_empty());
        let udp = Filter::compile("udp dst port 7000").unwrap();
        assert!(udp.insns().len() <= xdpfwd_common::cbpf::MAX_INSNS as usize);
        // Longer than any program may be: refused, not silently matching nothing.
        let huge: Vec<String> = (1..2200).map(|n| format!("len = {n}")).collect();
        let huge = huge.join(" or ");
        let err = Filter::compile(&huge).err().unwrap();
        assert!(format!("{err:#}").contains("more than the 4096"), "{err:#}");
    }
}
