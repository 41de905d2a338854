//! The kernel's policy rules (`ip rule`) of one family, in the kernel's order, and their
//! compilation into the XDP program's `FIB_RULES`.
//!
//! Pure logic over parsed rule messages. A rule whose outcome the XDP program cannot know
//! exactly (fwmark, uidrange, oif, l3mdev, tos / dscp, tunnel id, realms, interface-group
//! suppression, blackhole / unreachable / prohibit) is compiled to [`FibAction::Kernel`] with
//! the selectors it can evaluate, or with none (every frame reaching it goes to the kernel):
//! no rule set makes xdpfwd forward where the kernel would not.

use ipnet::IpNet;
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
    pub invert: bool,
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
            opaque: msg.header.tos != 0,
            ..FibRuleSpec::all(v6, 0, SpecAction::Kernel)
        };
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
                // oif, uidrange, realms, tunnel id, l3mdev, dscp and whatever comes next.
                _ => spec.opaque = true,
            }
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
            invert: false,
            action,
            suppress: None,
            opaque: false,
        }
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
    if let Some(name) = &spec.iif {
        match iif(name) {
            Some(ifindex) => {
                sel.fields |= RuleFields::IN;
                sel.in_ifindex = ifindex;
            }
            None if !spec.invert => flags |= FibFlags::NEVER,
            // `not iif X` with X not managed matches every frame xdpfwd sees.
            None => {}
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
    if let Some((lo, hi)) = spec.sport {
        sel.fields |= RuleFields::SPORT;
        (sel.sport_lo, sel.sport_hi) = (lo, hi);
    }
    if let Some((lo, hi)) = spec.dport {
        sel.fields |= RuleFields::DPORT;
        (sel.dport_lo, sel.dport_hi) = (lo, hi);
    }
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
    if spec.opaque && spec.invert {
        // Inverting a rule whose selectors are only partly known would narrow it: every frame
        // reaching it goes to the kernel.
        sel = Rule::default();
        flags = FibFlags::empty();
    }
    sel.action = action as u32;
    FibRule {
        sel,
        table,
        target: u32::MAX,
        suppress: spec.suppress.unwrap_or(FIB_NO_SUPPRESS),
        flags,
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
        assert!(FibRuleSpec::from_message(&tos).unwrap().opaque);
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
