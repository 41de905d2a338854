//! The tcpdump expression of a capture, compiled by libpcap for Ethernet frames.

use anyhow::Context as _;

/// A compiled expression; `None` matches every frame.
pub struct Filter(Option<pcap::BpfProgram>);

impl Filter {
    /// Compiles `expr` (empty: every frame); the error is libpcap's, naming the problem.
    pub fn compile(expr: &str) -> anyhow::Result<Filter> {
        if expr.trim().is_empty() {
            return Ok(Filter(None));
        }
        let dead = pcap::Capture::dead(pcap::Linktype::ETHERNET).context("libpcap")?;
        let program =
            dead.compile(expr, true).with_context(|| format!("filter expression {expr:?}"))?;
        Ok(Filter(Some(program)))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// Whether the frame (its first bytes, as captured) matches.
    pub fn matches(&self, frame: &[u8]) -> bool {
        self.0.as_ref().is_none_or(|p| p.filter(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expressions_select_frames_and_bad_ones_are_named() {
        // An Ethernet + IPv4 + UDP frame, 198.18.0.1 → 198.18.1.1, port 7000.
        let mut frame = vec![0u8; 42];
        frame[12..14].copy_from_slice(&[0x08, 0x00]);
        frame[14] = 0x45;
        frame[16..18].copy_from_slice(&28u16.to_be_bytes());
        frame[22] = 64;
        frame[23] = 17;
        frame[26..30].copy_from_slice(&[198, 18, 0, 1]);
        frame[30..34].copy_from_slice(&[198, 18, 1, 1]);
        frame[36..38].copy_from_slice(&7000u16.to_be_bytes());
        assert!(Filter::compile("").unwrap().matches(&frame));
        assert!(Filter::compile("udp dst port 7000").unwrap().matches(&frame));
        assert!(Filter::compile("src host 198.18.0.1").unwrap().matches(&frame));
        assert!(!Filter::compile("tcp").unwrap().matches(&frame));
        assert!(!Filter::compile("ip6").unwrap().matches(&frame));
        let err = Filter::compile("udp dst prot 7000").err().unwrap();
        assert!(format!("{err:#}").contains("filter expression"), "{err:#}");
    }
}
