//! The configuration file's shape, as serde reads it: every table and key, with the spans
//! that errors point at. Nothing here is validated; `validate` does that.

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct File {
    #[serde(default)]
    pub defaults: Defaults,
    #[serde(default)]
    pub interface: Vec<InterfaceCfg>,
    #[serde(default)]
    pub rule: Vec<RuleCfg>,
    #[serde(default)]
    pub route: Vec<RouteCfg>,
    #[serde(default)]
    pub xconnect: Vec<XconnectCfg>,
    #[serde(default)]
    pub rewrite: Vec<RewriteCfg>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Defaults {
    pub unmatched: Option<Spanned<String>>,
    pub netfilter: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub ecmp: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct InterfaceCfg {
    pub name: Spanned<String>,
    pub mode: Option<Spanned<String>>,
    pub queues: Option<Spanned<i64>>,
    pub vlan_pop: Option<bool>,
    pub vlan_push: Option<Spanned<i64>>,
}

/// Declares the match fields once, for the two tables that have them: `[[rewrite]].match`
/// ([`MatchCfg`]) and `[[rule]]` ([`RuleCfg`], beside its `action`). (`#[serde(flatten)]`
/// would say it shorter, but it loses the spans errors are located with, and
/// `deny_unknown_fields`.)
macro_rules! match_tables {
    ($($field:ident $(as $key:literal)?: $ty:ty,)*) => {
        /// What a rule or a rewrite matches.
        #[derive(Debug, Default, Clone, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub(super) struct MatchCfg {
            $($(#[serde(rename = $key)])? pub $field: Option<Spanned<$ty>>,)*
        }

        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub(super) struct RuleCfg {
            $($(#[serde(rename = $key)])? pub $field: Option<Spanned<$ty>>,)*
            pub action: Spanned<String>,
            /// A label for its hit counter in stats and metrics.
            pub name: Option<Spanned<String>>,
        }

        impl RuleCfg {
            /// The rule's match fields.
            pub fn matches(&self) -> MatchCfg {
                MatchCfg { $($field: self.$field.clone(),)* }
            }
        }
    };
}

match_tables! {
    input as "in": String,
    proto: toml::Value,
    src: String,
    dst: String,
    src_port: toml::Value,
    dst_port: toml::Value,
    vlan: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RouteCfg {
    pub dst: Spanned<String>,
    pub via: Option<Spanned<String>>,
    pub dev: Option<Spanned<String>>,
    pub mac: Option<Spanned<String>>,
    pub vlan: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct XconnectCfg {
    pub a: Spanned<String>,
    pub b: Spanned<String>,
    pub mac_a: Option<Spanned<String>>,
    pub mac_b: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RewriteCfg {
    #[serde(rename = "match")]
    pub matches: Spanned<MatchCfg>,
    /// A label for its hit counter in stats and metrics.
    pub name: Option<Spanned<String>>,
    pub set_src: Option<Spanned<String>>,
    pub set_dst: Option<Spanned<String>>,
    pub set_src_port: Option<Spanned<i64>>,
    pub set_dst_port: Option<Spanned<i64>>,
}
