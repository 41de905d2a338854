//! xdpfwd: an AF_XDP kernel-bypass packet forwarder.
//!
//! Start with `docs/architecture.md`; the data path is `xdp-prog/src/main.rs` →
//! [`worker`] → [`rewrite`], set up by [`forwarder`].
#![deny(unsafe_op_in_unsafe_fn)]

pub mod alloc_count;
pub mod capture;
pub mod config;
pub mod control;
pub mod egress_path;
pub mod fib_rules;
pub mod flow_cache;
pub mod forwarder;
pub mod hold;
pub mod icmp;
pub mod iface;
pub mod loader;
pub mod metrics;
pub mod netfilter;
pub mod nexthop;
pub mod nlattr;
pub mod policy;
pub mod privileges;
pub mod rewrite;
pub mod routes;
pub mod shared;
pub mod snapshot;
pub mod sockopt;
pub mod stats;
pub mod stats_client;
pub mod stats_server;
pub mod worker;
pub mod xsk;
