//! The kernel's policy rules (`ip rule`) of one family, in the kernel's order, and their
//! compilation into the XDP program's `FIB_RULES`.
//!
//! Pure logic over parsed rule messages. A rule whose outcome the XDP program cannot know
//! exactly (fwmark, uidrange, oif, l3mdev, flow label, port masks, tunnel id, realms,
//! interface-group suppression, blackhole / unreachable / prohibit) is compiled to [`FibAction::Kernel`] with
//! the selectors it can evaluate, or with none (every frame reaching it goes to the kernel):
//! no rule set makes xdpfwd forward where the kernel would not.

use ipnet::IpNet;
use netlink_packet_core::{DefaultNla, Nla};
use netlink_packet_route::{
    AddressFamily,
    rule::{RuleAction, RuleAttribute, RuleFlags, RuleMessage},
};
use xdpfwd_common::{
    FIB_NO_SUPPRESS, FibAction, FibFlags, FibRule, MAX_FIB_RULES, Rule, RuleFields,
};

use crate::policy::prefix_words;

/// One policy rule as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FibRuleSpec {
    pub v6: bool,
    pub priority: u32,
    pub src: Option<IpNet>,
    pub dst: Option<IpNet>,
    pub iif: Option<String>,
    pub proto: Option<u8>,
    pub sport: Option<(u16, u16)>,
    pub dport: Option<(u16, u16)>,
    /// `FRA_SPORT_MASK` / `FRA_DPORT_MASK`: the port (the range's start) under a mask.
    pub sport_mask: Option<u16>,
    pub dport_mask: Option<u16>,
    pub invert: bool,
    /// The `tos` or `dscp` selector: (value, mask) over the frame's DS field.
    pub ds: Option<(u8, u8)>,
    pub action: SpecAction,
    /// `suppress_prefixlength` (`None`: not set).
    pub suppress: Option<u32>,
    /// A selector or attribute only the kernel evaluates.
    pub opaque: bool,
}

/// What a rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpecAction {
    Lookup(u32),
    Goto(u32),
    Nop,
    /// Blackhole, unreachable, prohibit, an unknown action.
    Kernel,
}

impl FibRuleSpec {
    /// Parses a rule message; `None` for other families.
    pub fn from_message(msg: &RuleMessage) -> Option<FibRuleSpec> {
        let v6 = match msg.header.family {
            AddressFamily::Inet => false,
            AddressFamily::Inet6 => true,
            _ => return None,
        };
        let mut spec = FibRuleSpec {
            invert: msg.header.flags.contains(RuleFlags::Invert),
            ..FibRuleSpec::all(v6, 0, SpecAction::Kernel)
        };
        let mut dscp = None;
        let mut dscp_mask = None;
        let mut table = u32::from(msg.header.table);
        let mut goto = None;
        for attr in &msg.attributes {
            match attr {
                RuleAttribute::Priority(p) => spec.priority = *p,
                RuleAttribute::Source(a) => {
                    spec.src = IpNet::new(*a, msg.header.src_len).ok().map(|n| n.trunc())
                }
                RuleAttribute::Destination(a) => {
                    spec.dst = IpNet::new(*a, msg.header.dst_len).ok().map(|n| n.trunc())
                }
                RuleAttribute::Iifname(n) => spec.iif = Some(n.clone()),
                RuleAttribute::Table(t) => table = *t,
                RuleAttribute::Goto(t) => goto = Some(*t),
                RuleAttribute::IpProtocol(p) => spec.proto = Some(u8::from(*p)),
                RuleAttribute::SourcePortRange(r) => spec.sport = Some((r.start, r.end)),
                RuleAttribute::DestinationPortRange(r) => spec.dport = Some((r.start, r.end)),
                RuleAttribute::SuppressPrefixLen(n) => {
                    spec.suppress = (*n != u32::MAX).then_some(*n)
                }
                RuleAttribute::SuppressIfGroup(g) => spec.opaque |= *g != u32::MAX,
                RuleAttribute::FwMark(m) => spec.opaque |= *m != 0,
                RuleAttribute::FwMask(_) | RuleAttribute::Protocol(_) => {}
                RuleAttribute::Other(nla) if nla.kind() == FRA_DSCP => {
                    dscp = nla_u8(nla);
                    spec.opaque |= dscp.is_none();
                }
                RuleAttribute::Other(nla) if nla.kind() == FRA_DSCP_MASK => {
                    dscp_mask = nla_u8(nla);
                    spec.opaque |= dscp_mask.is_none();
                }
                RuleAttribute::Other(nla) if nla.kind() == FRA_SPORT_MASK => {
                    spec.sport_mask = nla_u16(nla);
                    spec.opaque |= spec.sport_mask.is_none();
                }
                RuleAttribute::Other(nla) if nla.kind() == FRA_DPORT_MASK => {
                    spec.dport_mask = nla_u16(nla);
                    spec.opaque |= spec.dport_mask.is_none();
                }
                // oif, uidrange, realms, tunnel id, l3mdev, flow label, port masks and
                // whatever comes next.
                _ => spec.opaque = true,
            }
        }
        // A mask without its port: the kernel refuses it; never narrower than the kernel.
        spec.opaque |= (spec.sport_mask.is_some() && spec.sport.is_none())
            || (spec.dport_mask.is_some() && spec.dport.is_none());
        match ds_selector(v6, msg.header.tos, dscp, dscp_mask) {
            Ok(ds) => spec.ds = ds,
            Err(()) => spec.opaque = true,
        }
        spec.action = match msg.header.action {
            RuleAction::ToTable if table != 0 => SpecAction::Lookup(table),
            RuleAction::Goto => goto.map_or(SpecAction::Kernel, SpecAction::Goto),
            RuleAction::Nop => SpecAction::Nop,
            _ => SpecAction::Kernel,
        };
        Some(spec)
    }

    /// The default rules of a family with no `ip rule` changes: `local`, `main` (and
    /// `default` for IPv4).
    pub fn defaults(v6: bool) -> Vec<FibRuleSpec> {
        let rule = |priority, table| FibRuleSpec::all(v6, priority, SpecAction::Lookup(table));
        let mut rules = vec![rule(0, 255), rule(32766, 254)];
        if !v6 {
            rules.push(rule(32767, 253));
        }
        rules
    }

    /// A rule without selectors: `from all`.
    pub fn all(v6: bool, priority: u32, action: SpecAction) -> FibRuleSpec {
        FibRuleSpec {
            v6,
            priority,
            src: None,
            dst: None,
            iif: None,
            proto: None,
            sport: None,
            dport: None,
            sport_mask: None,
            dport_mask: None,
            invert: false,
            ds: None,
            action,
            suppress: None,
            opaque: false,
        }
    }
}

/// `FRA_DSCP` (a DSCP, the DS field's upper six bits), the port masks (Linux 6.16: a rule
/// on a single port reports the mask 0xffff) and `FRA_DSCP_MASK`, which
/// netlink-packet-route does not name.
const FRA_DSCP: u16 = 25;
const FRA_SPORT_MASK: u16 = 28;
const FRA_DPORT_MASK: u16 = 29;
const FRA_DSCP_MASK: u16 = 30;

fn nla_u16(nla: &DefaultNla) -> Option<u16> {
    let mut value = vec![0; nla.value_len()];
    nla.emit_value(&mut value);
    Some(u16::from_ne_bytes(value.try_into().ok()?))
}

fn nla_u8(nla: &DefaultNla) -> Option<u8> {
    let mut value = vec![0; nla.value_len()];
    nla.emit_value(&mut value);
    (value.len() == 1).then(|| value[0])
}

/// The DS-field selector as the kernel's `fib4_rule_match` / `fib6_rule_match` apply it:
/// `(frame ^ value) & mask == 0`. An IPv4 `tos` compares only the legacy TOS bits (0x1c,
/// `fib_dscp_masked_match`), an IPv6 `tos` the whole DSCP; `dscp` (with its mask) the DSCP
/// in both families; the ECN bits never. `Err` for what the kernel would not have accepted.
fn ds_selector(
    v6: bool,
    tos: u8,
    dscp: Option<u8>,
    mask: Option<u8>,
) -> Result<Option<(u8, u8)>, ()> {
    const DSCP_BITS: u8 = 0xfc;
    const LEGACY_TOS_BITS: u8 = 0x1c;
    match (tos, dscp, mask) {
        (0, None, None) => Ok(None),
        (0, Some(d), m) if d <= 0x3f && m.is_none_or(|m| m <= 0x3f) => {
            let mask = m.map_or(DSCP_BITS, |m| m << 2);
            let value = d << 2;
            if value & !mask != 0 { Err(()) } else { Ok(Some((value, mask))) }
        }
        (t, None, None) if v6 && t & !DSCP_BITS == 0 => Ok(Some((t, DSCP_BITS))),
        (t, None, None) if !v6 && t & !LEGACY_TOS_BITS == 0 => Ok(Some((t, LEGACY_TOS_BITS))),
        _ => Err(()),
    }
}

/// The rules of one family in the kernel's order: by priority, then by the time they were
/// added (a new rule goes after those of the same priority, as the kernel inserts it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FibRules {
    rules: Vec<FibRuleSpec>,
}

impl FibRules {
    /// Adds a rule; one the set already holds is not added twice (the kernel refuses an exact
    /// duplicate from `ip rule add`, and an event applied again on top of a dump that already
    /// held its rule must not leave a copy behind after the rule's deletion).
    pub fn add(&mut self, spec: FibRuleSpec) {
        if self.rules.contains(&spec) {
            return;
        }
        let at =
            self.rules.iter().position(|r| r.priority > spec.priority).unwrap_or(self.rules.len());
        self.rules.insert(at, spec);
    }

    pub fn remove(&mut self, spec: &FibRuleSpec) {
        if let Some(at) = self.rules.iter().position(|r| r == spec) {
            self.rules.remove(at);
        }
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether a rule makes the kernel dissect every packet before its lookup
    /// (`fib_rule_requires_fldissect`: a protocol or port selector, unless `iif lo`).
    pub fn require_dissect(&self) -> bool {
        self.rules.iter().any(|r| {
            r.iif.as_deref() != Some("lo")
                && (r.proto.is_some_and(|p| p != 0) || r.sport.is_some() || r.dport.is_some())
        })
    }

    /// The tables the rules look up.
    pub fn tables(&self) -> impl Iterator<Item = u32> + '_ {
        self.rules.iter().filter_map(|r| match r.action {
            SpecAction::Lookup(t) => Some(t),
            _ => None,
        })
    }

    /// The XDP program's rules; `iif` resolves an interface name to a managed ifindex
    /// (`None`: not managed, so the rule never matches a frame xdpfwd sees), `has_routes` says
    /// whether a table holds any route (a lookup in an empty table always goes on, so the
    /// rule is left out). `None` when the rules do not fit `FIB_RULES`.
    pub fn compile(
        &self,
        iif: impl Fn(&str) -> Option<u32>,
        has_routes: impl Fn(u32) -> bool,
    ) -> Option<Vec<FibRule>> {
        let kept: Vec<&FibRuleSpec> = self
            .rules
            .iter()
            .filter(|r| !matches!(r.action, SpecAction::Lookup(t) if !has_routes(t) && !r.opaque))
            .collect();
        if kept.len() > MAX_FIB_RULES as usize {
            return None;
        }
        let compiled = kept
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let mut rule = compile_one(spec, &iif);
                if let SpecAction::Goto(target) = spec.action {
                    // The first rule at the target priority (the kernel refuses backward
                    // jumps), or the next kept one when that rule was left out; a goto to
                    // nothing is skipped, as the kernel skips it.
                    let exists = self.rules.iter().any(|r| r.priority == target);
                    rule.target = kept
                        .iter()
                        .enumerate()
                        .skip(i + 1)
                        .find(|(_, r)| r.priority >= target)
                        .filter(|_| exists)
                        .map_or(u32::MAX, |(j, _)| j as u32);
                }
                rule
            })
            .collect();
        Some(compiled)
    }
}

fn compile_one(spec: &FibRuleSpec, iif: &impl Fn(&str) -> Option<u32>) -> FibRule {
    let mut sel = Rule::default();
    let mut flags = FibFlags::empty();
    // `not iif X` with X not managed matches every frame xdpfwd sees, whatever its other
    // selectors say: the kernel's iif test already fails, and `not` turns the whole into a
    // match.
    let mut always = false;
    if let Some(name) = &spec.iif {
        match iif(name) {
            Some(ifindex) => {
                sel.fields |= RuleFields::IN;
                sel.in_ifindex = ifindex;
            }
            None if !spec.invert => flags |= FibFlags::NEVER,
            None => always = true,
        }
    }
    if let Some(p) = spec.proto {
        sel.fields |= RuleFields::PROTO;
        sel.proto = u16::from(p);
    }
    if let Some(net) = &spec.src {
        sel.fields |= RuleFields::SRC;
        (sel.src, sel.src_mask, _) = prefix_words(net);
    }
    if let Some(net) = &spec.dst {
        sel.fields |= RuleFields::DST;
        (sel.dst, sel.dst_mask, _) = prefix_words(net);
    }
    // `fib_rule_port_match`: a mask compares the range's start under it, no mask the range.
    let (mut sport_mask, mut dport_mask) = (0, 0);
    match (spec.sport, spec.sport_mask.filter(|m| *m != 0)) {
        (Some((lo, _)), Some(mask)) => (sel.sport_lo, sport_mask) = (lo & mask, mask),
        (Some((lo, hi)), None) => {
            sel.fields |= RuleFields::SPORT;
            (sel.sport_lo, sel.sport_hi) = (lo, hi);
        }
        _ => {}
    }
    match (spec.dport, spec.dport_mask.filter(|m| *m != 0)) {
        (Some((lo, _)), Some(mask)) => (sel.dport_lo, dport_mask) = (lo & mask, mask),
        (Some((lo, hi)), None) => {
            sel.fields |= RuleFields::DPORT;
            (sel.dport_lo, sel.dport_hi) = (lo, hi);
        }
        _ => {}
    }
    let (mut ds, mut ds_mask) = spec.ds.unwrap_or((0, 0));
    if spec.invert && !flags.contains(FibFlags::NEVER) {
        flags |= FibFlags::INVERT;
    }
    let (action, table) = match spec.action {
        _ if spec.opaque => (FibAction::Kernel, 0),
        SpecAction::Lookup(t) => (FibAction::Lookup, t),
        SpecAction::Goto(_) => (FibAction::Goto, 0),
        SpecAction::Nop => (FibAction::Nop, 0),
        SpecAction::Kernel => (FibAction::Kernel, 0),
    };
    if (spec.opaque && spec.invert) || always {
        // Inverting a rule whose selectors are only partly known would narrow it: every frame
        // reaching it goes to the kernel.
        sel = Rule::default();
        flags = FibFlags::empty();
        (ds, ds_mask, sport_mask, dport_mask) = (0, 0, 0, 0);
    }
    sel.action = action as u32;
    FibRule {
        sel,
        table,
        target: u32::MAX,
        suppress: spec.suppress.unwrap_or(FIB_NO_SUPPRESS),
        flags,
        ds,
        ds_mask,
        sport_mask,
        dport_mask,
        _pad: [0; 2],
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use netlink_packet_route::rule::RuleHeader;

    use super::*;

    fn msg(action: RuleAction, attrs: Vec<RuleAttribute>) -> RuleMessage {
        let mut m = RuleMessage::default();
        m.header = RuleHeader { family: AddressFamily::Inet, action, ..RuleHeader::default() };
        m.attributes = attrs;
        m
    }

    #[test]
    fn parses_selectors_and_actions() {
        let mut m = msg(
            RuleAction::ToTable,
            vec![
                RuleAttribute::Priority(100),
                RuleAttribute::Source("198.18.0.0".parse::<IpAddr>().unwrap()),
                RuleAttribute::Table(100),
                RuleAttribute::Iifname("f0".into()),
            ],
        );
        m.header.src_len = 24;
        let spec = FibRuleSpec::from_message(&m).unwrap();
        assert_eq!(spec.priority, 100);
        assert_eq!(spec.src, Some("198.18.0.0/24".parse().unwrap()));
        assert_eq!(spec.action, SpecAction::Lookup(100));
        assert!(!spec.opaque);
        let mark =
            msg(RuleAction::ToTable, vec![RuleAttribute::FwMark(1), RuleAttribute::Table(7)]);
        assert!(FibRuleSpec::from_message(&mark).unwrap().opaque);
        let goto = msg(RuleAction::Goto, vec![RuleAttribute::Goto(300)]);
        assert_eq!(FibRuleSpec::from_message(&goto).unwrap().action, SpecAction::Goto(300));
        let bh = msg(RuleAction::Blackhole, vec![]);
        assert_eq!(FibRuleSpec::from_message(&bh).unwrap().action, SpecAction::Kernel);
        let mut tos = msg(RuleAction::ToTable, vec![RuleAttribute::Table(7)]);
        tos.header.tos = 0x10;
        let spec = FibRuleSpec::from_message(&tos).unwrap();
        assert!(!spec.opaque);
        assert_eq!(spec.ds, Some((0x10, 0x1c)), "IPv4 tos: the legacy TOS bits only");
        tos.header.family = AddressFamily::Inet6;
        tos.header.tos = 0xb8;
        let spec = FibRuleSpec::from_message(&tos).unwrap();
        assert_eq!(spec.ds, Some((0xb8, 0xfc)), "IPv6 tos: the whole DSCP");
        tos.header.tos = 0xb9;
        assert!(FibRuleSpec::from_message(&tos).unwrap().opaque, "ECN bits: not the kernel's");
    }

    /// An `RTM_NEWRULE` as Linux 6.18 sends it for `ip rule add dscp 46/MASK lookup 7`:
    /// header, `FRA_TABLE`, `FRA_DSCP`, `FRA_DSCP_MASK`.
    fn dscp_rule_bytes(mask: Option<u8>) -> Vec<u8> {
        use netlink_packet_core::{Emitable, NlaBuffer};
        let mut out = vec![2, 0, 0, 0, 7, 0, 0, 1, 0, 0, 0, 0];
        let mut attrs = vec![DefaultNla::new(15, 7u32.to_ne_bytes().to_vec())];
        attrs.push(DefaultNla::new(FRA_DSCP, vec![46]));
        attrs.extend(mask.map(|m| DefaultNla::new(FRA_DSCP_MASK, vec![m])));
        for a in attrs {
            let mut buf = vec![0; a.buffer_len()];
            a.emit(&mut buf);
            assert!(NlaBuffer::new_checked(&buf[..]).is_ok());
            out.extend(buf);
        }
        out
    }

    #[test]
    fn single_ports_with_the_mask_the_kernel_reports_are_evaluated() {
        use netlink_packet_core::{Emitable, Parseable};
        use netlink_packet_route::rule::RulePortRange;
        // `ip rule add dport 7000 lookup 7` as Linux 6.18 reports it: range 7000-7000 and
        // mask 0xffff; then a real mask.
        let bytes = |mask: u16| {
            let mut m = msg(
                RuleAction::ToTable,
                vec![
                    RuleAttribute::Table(7),
                    RuleAttribute::DestinationPortRange(RulePortRange { start: 7000, end: 7000 }),
                    RuleAttribute::Other(DefaultNla::new(
                        FRA_DPORT_MASK,
                        mask.to_ne_bytes().into(),
                    )),
                ],
            );
            m.header.table = 7;
            let mut out = vec![0; m.buffer_len()];
            m.emit(&mut out);
            out
        };
        let parse = |b: Vec<u8>| {
            let m = RuleMessage::parse(&b[..]).unwrap();
            FibRuleSpec::from_message(&m).unwrap()
        };
        let single = parse(bytes(0xffff));
        assert_eq!(
            (single.dport, single.dport_mask, single.opaque),
            (Some((7000, 7000)), Some(0xffff), false)
        );
        let rules = FibRules { rules: vec![single, parse(bytes(0xff00))] };
        let compiled = rules.compile(|_| None, |_| true).unwrap();
        assert_eq!((compiled[0].sel.dport_lo, compiled[0].dport_mask), (7000, 0xffff));
        assert_eq!((compiled[1].sel.dport_lo, compiled[1].dport_mask), (7000 & 0xff00, 0xff00));
        assert!(!compiled[1].sel.fields.contains(RuleFields::DPORT), "no range under a mask");
        let mut no_port = msg(RuleAction::ToTable, vec![RuleAttribute::Table(7)]);
        no_port.attributes.push(RuleAttribute::Other(DefaultNla::new(FRA_SPORT_MASK, vec![1, 0])));
        assert!(FibRuleSpec::from_message(&no_port).unwrap().opaque);
    }

    #[test]
    fn dscp_selectors_are_evaluated_with_their_mask() {
        use netlink_packet_core::Parseable;
        let parse = |bytes: Vec<u8>| {
            let m = RuleMessage::parse(&bytes[..]).unwrap();
            FibRuleSpec::from_message(&m).unwrap()
        };
        let full = parse(dscp_rule_bytes(None));
        assert_eq!((full.ds, full.opaque), (Some((46 << 2, 0xfc)), false));
        assert_eq!(full.action, SpecAction::Lookup(7));
        let masked = parse(dscp_rule_bytes(Some(0x38)));
        assert_eq!((masked.ds, masked.opaque), (None, true), "bits outside the mask");
        let masked = parse(dscp_rule_bytes(Some(0x3e)));
        assert_eq!((masked.ds, masked.opaque), (Some((46 << 2, 0xf8)), false));
        let rules = FibRules { rules: vec![full] };
        let compiled = rules.compile(|_| None, |_| true).unwrap();
        assert_eq!((compiled[0].ds, compiled[0].ds_mask), (0xb8, 0xfc));
        assert_eq!(FibAction::from_u32(compiled[0].sel.action), FibAction::Lookup);
    }

    #[test]
    fn not_iif_an_unmanaged_interface_matches_every_frame_whatever_else_it_says() {
        let mut m = msg(
            RuleAction::ToTable,
            vec![RuleAttribute::Table(7), RuleAttribute::Iifname("elsewhere".into())],
        );
        m.header.flags = RuleFlags::Invert;
        m.header.tos = 0x10;
        let rules = FibRules { rules: vec![FibRuleSpec::from_message(&m).unwrap()] };
        let rule = rules.compile(|_| None, |_| true).unwrap()[0];
        assert_eq!(rule.sel.fields, RuleFields::empty());
        assert_eq!((rule.ds_mask, rule.flags), (0, FibFlags::empty()), "no selector, no not");
        assert_eq!(FibAction::from_u32(rule.sel.action), FibAction::Lookup);
    }

    #[test]
    fn a_rule_added_again_is_held_once() {
        // An event applied on top of a dump that already held its rule (after lost events):
        // the rule's deletion must leave nothing behind.
        let m =
            msg(RuleAction::ToTable, vec![RuleAttribute::Priority(100), RuleAttribute::Table(7)]);
        let spec = FibRuleSpec::from_message(&m).unwrap();
        let mut rules = FibRules::default();
        rules.add(spec.clone());
        rules.add(spec.clone());
        rules.remove(&spec);
        assert_eq!(rules.len(), 0);
    }

    #[test]
    fn order_is_priority_then_insertion() {
        let mut rules = FibRules::default();
        for spec in FibRuleSpec::defaults(false) {
            rules.add(spec);
        }
        let mut a = FibRuleSpec::defaults(false)[0].clone();
        a.priority = 100;
        a.action = SpecAction::Lookup(100);
        let mut b = a.clone();
        b.action = SpecAction::Lookup(101);
        rules.add(a.clone());
        rules.add(b.clone());
        let tables: Vec<u32> = rules.tables().collect();
        assert_eq!(tables, [255, 100, 101, 254, 253]);
        rules.remove(&a);
        assert_eq!(rules.tables().collect::<Vec<_>>(), [255, 101, 254, 253]);
    }

    #[test]
    fn protocol_and_port_selectors_make_the_kernel_dissect_unless_for_lo() {
        let mut rules = FibRules::default();
        for spec in FibRuleSpec::defaults(true) {
            rules.add(spec);
        }
        assert!(!rules.require_dissect(), "the default rules");
        let base = FibRuleSpec::defaults(true)[0].clone();
        let lo =
            FibRuleSpec { priority: 10, iif: Some("lo".into()), proto: Some(6), ..base.clone() };
        rules.add(lo);
        assert!(!rules.require_dissect(), "iif lo: the host's own packets");
        rules.add(FibRuleSpec { priority: 40000, dport: Some((80, 80)), ..base.clone() });
        assert!(rules.require_dissect(), "a port rule, even one no lookup reaches");
        let mut proto = FibRules::default();
        proto.add(FibRuleSpec { priority: 5, proto: Some(6), ..base });
        assert!(proto.require_dissect());
    }

    #[test]
    fn compiles_gotos_empty_tables_and_opaque_rules() {
        let mut rules = FibRules::default();
        for spec in FibRuleSpec::defaults(false) {
            rules.add(spec);
        }
        let base = FibRuleSpec::defaults(false)[0].clone();
        rules.add(FibRuleSpec { priority: 10, action: SpecAction::Goto(30), ..base.clone() });
        rules.add(FibRuleSpec {
            priority: 20,
            opaque: true,
            action: SpecAction::Lookup(7),
            ..base.clone()
        });
        rules.add(FibRuleSpec { priority: 30, iif: Some("lo".into()), ..base.clone() });
        let out = rules.compile(|_| None, |t| t != 253).unwrap();
        // local, goto, opaque, iif lo, main (the empty default table is left out)
        assert_eq!(out.len(), 5);
        assert_eq!(FibAction::from_u32(out[1].sel.action), FibAction::Goto);
        assert_eq!(out[1].target, 3);
        assert_eq!(FibAction::from_u32(out[2].sel.action), FibAction::Kernel);
        assert!(out[3].flags.contains(FibFlags::NEVER), "iif of an unmanaged interface");
        assert_eq!(out[4].table, 254);
        let mut many = FibRules::default();
        for i in 0..=MAX_FIB_RULES {
            many.add(FibRuleSpec { priority: i, ..base.clone() });
        }
        assert!(many.compile(|_| None, |_| true).is_none(), "too many rules");
    }
}
