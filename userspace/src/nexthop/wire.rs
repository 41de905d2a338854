//! The nexthop socket's messages: parsing `RTM_NEWNEXTHOP` / `RTM_DELNEXTHOP` /
//! `RTM_NEWNEXTHOPBUCKET` (netlink-packet-route has none of them) and building the dump
//! requests.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{Nexthop, NhEvent};
use crate::nlattr::attributes;

pub(super) const RTM_NEWNEXTHOP: u16 = 104;
pub(super) const RTM_DELNEXTHOP: u16 = 105;
const RTM_GETNEXTHOP: u16 = 106;
pub(super) const RTM_NEWNEXTHOPBUCKET: u16 = 116;
const RTM_GETNEXTHOPBUCKET: u16 = 118;
pub(super) const RTNLGRP_NEXTHOP: u32 = 32;
pub(super) const NLMSG_ERROR: u16 = 2;
pub(super) const NLMSG_DONE: u16 = 3;
const NLMSG_OVERRUN: u16 = 4;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NHA_ID: u16 = 1;
const NHA_GROUP: u16 = 2;
const NHA_GROUP_TYPE: u16 = 3;
const NHA_BLACKHOLE: u16 = 4;
const NHA_OIF: u16 = 5;
const NHA_GATEWAY: u16 = 6;
const NHA_ENCAP_TYPE: u16 = 7;
const NHA_ENCAP: u16 = 8;
const NHA_FDB: u16 = 11;
const NHA_RES_GROUP: u16 = 12;
const NHA_RES_BUCKET: u16 = 13;
const NHA_RES_GROUP_BUCKETS: u16 = 1;
const NHA_RES_BUCKET_INDEX: u16 = 1;
const NHA_RES_BUCKET_NH_ID: u16 = 3;
/// `struct nhmsg`: family, scope, protocol, reserved, flags.
const NHMSG_LEN: usize = 8;
const NEXTHOP_GRP_TYPE_MPATH: u16 = 0;
const NEXTHOP_GRP_TYPE_RES: u16 = 1;

/// Sequence numbers of the reader's requests: answers carry them, events carry 0.
pub(super) const DUMP_SEQ: u32 = 1;
pub(super) const BUCKET_SEQ: u32 = 2;

fn u16_of(v: &[u8]) -> Option<u16> {
    Some(u16::from_ne_bytes(v.get(..2)?.try_into().ok()?))
}

fn u32_of(v: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(v.get(..4)?.try_into().ok()?))
}

/// Parses one `RTM_NEWNEXTHOP` / `RTM_DELNEXTHOP` payload (after the netlink header).
pub fn parse(kind: u16, payload: &[u8]) -> Option<NhEvent> {
    let mut id = None;
    let mut oif = 0;
    let mut gateway = None;
    let mut group = None;
    let mut group_type = NEXTHOP_GRP_TYPE_MPATH;
    let mut buckets = None;
    let mut kernel = false;
    for attr in attributes(payload.get(NHMSG_LEN..)?) {
        let (kind, value) = attr.ok()?;
        match kind {
            NHA_ID => id = u32_of(value),
            NHA_OIF => oif = u32_of(value)?,
            NHA_GATEWAY => {
                gateway = match value.len() {
                    4 => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(value).ok()?))),
                    16 => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(value).ok()?))),
                    _ => return None,
                }
            }
            NHA_GROUP => {
                // struct nexthop_grp: id, weight - 1 (low byte), weight_high, reserved.
                group = Some(
                    value
                        .chunks_exact(8)
                        .map(|e| {
                            let id = u32::from_ne_bytes([e[0], e[1], e[2], e[3]]);
                            let weight = (u32::from(e[5]) << 8 | u32::from(e[4])) + 1;
                            (id, weight)
                        })
                        .collect::<Vec<_>>(),
                )
            }
            NHA_GROUP_TYPE => group_type = u16_of(value)?,
            NHA_RES_GROUP => {
                for nested in attributes(value) {
                    if let (NHA_RES_GROUP_BUCKETS, v) = nested.ok()? {
                        buckets = u16_of(v);
                    }
                }
            }
            NHA_BLACKHOLE | NHA_ENCAP_TYPE | NHA_ENCAP | NHA_FDB => kernel = true,
            _ => {}
        }
    }
    let id = id?;
    if kind == RTM_DELNEXTHOP {
        return Some(NhEvent::Del(id));
    }
    let nh = match (group, group_type) {
        _ if kernel => Nexthop::Kernel,
        (Some(members), NEXTHOP_GRP_TYPE_MPATH) => Nexthop::Group(members),
        (Some(members), NEXTHOP_GRP_TYPE_RES) => match buckets {
            Some(buckets) if buckets > 0 => Nexthop::Resilient { members, buckets },
            _ => Nexthop::Kernel,
        },
        (Some(_), _) => Nexthop::Kernel,
        (None, _) if oif != 0 => Nexthop::Single { oif, gateway },
        (None, _) => Nexthop::Kernel,
    };
    Some(NhEvent::Set(id, nh))
}

/// Parses one `RTM_NEWNEXTHOPBUCKET` payload: the group, a bucket's index and its nexthop.
pub fn parse_bucket(payload: &[u8]) -> Option<NhEvent> {
    let mut group = None;
    let (mut index, mut nh) = (None, None);
    for attr in attributes(payload.get(NHMSG_LEN..)?) {
        match attr.ok()? {
            (NHA_ID, v) => group = u32_of(v),
            (NHA_RES_BUCKET, v) => {
                for nested in attributes(v) {
                    match nested.ok()? {
                        (NHA_RES_BUCKET_INDEX, v) => index = u16_of(v),
                        (NHA_RES_BUCKET_NH_ID, v) => nh = u32_of(v),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(NhEvent::Bucket { group: group?, index: index?, nh: nh? })
}

/// The events in one datagram of netlink messages. The end of the object dump is
/// [`NhEvent::Synced`], that of a bucket dump [`NhEvent::BucketsDumped`]; a dump refused for
/// now [`NhEvent::Refused`] / [`NhEvent::BucketsRefused`].
pub fn messages(mut data: &[u8]) -> Vec<NhEvent> {
    let mut out = Vec::new();
    while data.len() >= 16 {
        let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
        let kind = u16::from_ne_bytes([data[4], data[5]]);
        let seq = u32::from_ne_bytes([data[8], data[9], data[10], data[11]]);
        if len < 16 || len > data.len() {
            break;
        }
        let buckets = seq == BUCKET_SEQ;
        match kind {
            RTM_NEWNEXTHOP | RTM_DELNEXTHOP => out.extend(parse(kind, &data[16..len])),
            RTM_NEWNEXTHOPBUCKET => out.extend(parse_bucket(&data[16..len])),
            // A dump that failed says so in its NLMSG_DONE (`dump_done_errno`).
            NLMSG_DONE | NLMSG_ERROR => out.push(ended(buckets, error_code(data))),
            NLMSG_OVERRUN => out.push(NhEvent::Overrun),
            _ => {}
        }
        data = &data[((len + 3) & !3).min(data.len())..];
    }
    out
}

/// The error code after the netlink header of an `NLMSG_ERROR` or `NLMSG_DONE` (0: none).
fn error_code(message: &[u8]) -> i32 {
    message.get(16..20).map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

/// How a dump ended (`code`: 0, or a negative errno).
fn ended(buckets: bool, code: i32) -> NhEvent {
    let transient = [libc::ENOBUFS, libc::EBUSY, libc::EAGAIN, libc::EINTR, libc::ENOMEM];
    let unsupported = [libc::EOPNOTSUPP, libc::EPROTONOSUPPORT];
    match (buckets, code) {
        (true, c) if transient.contains(&-c) => NhEvent::BucketsRefused,
        // Done, or refused for good (the group is gone, or not resilient).
        (true, _) => NhEvent::BucketsDumped,
        (false, 0) => NhEvent::Synced,
        // Only a kernel without nexthop objects refuses the object dump for good: nothing
        // to mirror. Anything else is asked again.
        (false, c) if unsupported.contains(&-c) => NhEvent::Synced,
        (false, _) => NhEvent::Refused,
    }
}

/// A dump request: nlmsghdr, nhmsg (family AF_UNSPEC), and an `NHA_ID` filter if `id`.
fn request(kind: u16, seq: u32, id: Option<u32>) -> Vec<u8> {
    let len = 24 + if id.is_some() { 8 } else { 0 };
    let mut req = vec![0u8; len];
    req[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
    req[4..6].copy_from_slice(&kind.to_ne_bytes());
    req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req[8..12].copy_from_slice(&seq.to_ne_bytes());
    if let Some(id) = id {
        req[24..26].copy_from_slice(&8u16.to_ne_bytes());
        req[26..28].copy_from_slice(&NHA_ID.to_ne_bytes());
        req[28..32].copy_from_slice(&id.to_ne_bytes());
    }
    req
}

/// Asks for every nexthop object.
pub(super) fn dump_request() -> Vec<u8> {
    request(RTM_GETNEXTHOP, DUMP_SEQ, None)
}

/// Asks for the buckets of resilient group `id`.
pub(super) fn bucket_request(id: u32) -> Vec<u8> {
    request(RTM_GETNEXTHOPBUCKET, BUCKET_SEQ, Some(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `NLMSG_ERROR` answering a dump of sequence `seq`, with `code`.
    pub(crate) fn error(seq: u32, code: i32) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&36u32.to_ne_bytes());
        m.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        m.extend_from_slice(&[0, 0]);
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&code.to_ne_bytes());
        m.extend_from_slice(&[0; 16]);
        m
    }

    #[test]
    fn a_dump_refused_for_now_is_asked_again_one_refused_for_good_ends() {
        assert_eq!(messages(&error(DUMP_SEQ, -libc::ENOBUFS)), [NhEvent::Refused]);
        assert_eq!(messages(&error(DUMP_SEQ, -libc::EBUSY)), [NhEvent::Refused]);
        assert_eq!(messages(&error(DUMP_SEQ, -libc::EOPNOTSUPP)), [NhEvent::Synced]);
        assert_eq!(messages(&error(BUCKET_SEQ, -libc::EBUSY)), [NhEvent::BucketsRefused]);
        assert_eq!(messages(&error(BUCKET_SEQ, -libc::ENOENT)), [NhEvent::BucketsDumped]);
        assert_eq!(messages(&error(DUMP_SEQ, -libc::ENOMEM)), [NhEvent::Refused], "never ends");
        assert_eq!(messages(&error(DUMP_SEQ, -libc::EINVAL)), [NhEvent::Refused]);
        // A dump that failed says so in its NLMSG_DONE.
        let mut done = error(DUMP_SEQ, -libc::EMSGSIZE);
        done[4..6].copy_from_slice(&NLMSG_DONE.to_ne_bytes());
        assert_eq!(messages(&done), [NhEvent::Refused]);
        done[8..12].copy_from_slice(&BUCKET_SEQ.to_ne_bytes());
        done[16..20].copy_from_slice(&(-libc::ENOENT).to_ne_bytes());
        assert_eq!(messages(&done), [NhEvent::BucketsDumped], "the group is gone");
    }

    /// An `RTM_NEWNEXTHOP` message as `ip nexthop add id 6 via 198.18.2.2 dev (3)` makes it.
    fn single() -> Vec<u8> {
        let mut m = vec![2, 0, 3, 0, 0, 0, 0, 0]; // AF_INET, scope, proto boot, flags
        m.extend_from_slice(&[8, 0, 1, 0, 6, 0, 0, 0]); // NHA_ID 6
        m.extend_from_slice(&[8, 0, 5, 0, 3, 0, 0, 0]); // NHA_OIF 3
        m.extend_from_slice(&[8, 0, 6, 0, 198, 18, 2, 2]); // NHA_GATEWAY
        m
    }

    #[test]
    fn parses_single_group_resilient_blackhole_and_delete() {
        assert_eq!(
            parse(RTM_NEWNEXTHOP, &single()),
            Some(NhEvent::Set(
                6,
                Nexthop::Single { oif: 3, gateway: Some("198.18.2.2".parse().unwrap()) }
            ))
        );
        let mut g = vec![0, 0, 3, 0, 0, 0, 0, 0];
        g.extend_from_slice(&[8, 0, 1, 0, 7, 0, 0, 0]);
        // NHA_GROUP: (6, weight 1), (8, weight 3)
        g.extend_from_slice(&[20, 0, 2, 0, 6, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 2, 0, 0, 0]);
        assert_eq!(
            parse(RTM_NEWNEXTHOP, &g),
            Some(NhEvent::Set(7, Nexthop::Group(vec![(6, 1), (8, 3)])))
        );
        let mut res = g.clone();
        res.extend_from_slice(&[6, 0, 3, 0, 1, 0, 0, 0]); // NHA_GROUP_TYPE resilient
        assert_eq!(parse(RTM_NEWNEXTHOP, &res), Some(NhEvent::Set(7, Nexthop::Kernel)), "no size");
        // NHA_RES_GROUP (nested): buckets 32, idle timer 12000.
        res.extend_from_slice(&[20, 0, 12, 0x80, 6, 0, 1, 0, 32, 0, 0, 0, 8, 0, 2, 0]);
        res.extend_from_slice(&12000u32.to_ne_bytes());
        assert_eq!(
            parse(RTM_NEWNEXTHOP, &res),
            Some(NhEvent::Set(
                7,
                Nexthop::Resilient { members: vec![(6, 1), (8, 3)], buckets: 32 }
            ))
        );
        let mut bh = vec![2, 0, 3, 0, 0, 0, 0, 0];
        bh.extend_from_slice(&[8, 0, 1, 0, 9, 0, 0, 0, 4, 0, 4, 0]);
        assert_eq!(parse(RTM_NEWNEXTHOP, &bh), Some(NhEvent::Set(9, Nexthop::Kernel)));
        assert_eq!(parse(RTM_DELNEXTHOP, &single()), Some(NhEvent::Del(6)));
        assert_eq!(parse(RTM_NEWNEXTHOP, &single()[..14]), None, "truncated attribute");
    }

    /// An `RTM_NEWNEXTHOPBUCKET` as the kernel's `nh_fill_res_bucket` makes it: group 7,
    /// bucket 5 → nexthop 8, idle time 300.
    fn bucket() -> Vec<u8> {
        let mut m = vec![0, 0, 3, 0, 0, 0, 0, 0];
        m.extend_from_slice(&[8, 0, 1, 0, 7, 0, 0, 0]);
        m.extend_from_slice(&[32, 0, 13, 0x80]);
        m.extend_from_slice(&[6, 0, 1, 0, 5, 0, 0, 0]); // index (u16, padded)
        m.extend_from_slice(&[8, 0, 3, 0, 8, 0, 0, 0]); // nexthop id
        m.extend_from_slice(&[12, 0, 2, 0]); // idle time (u64)
        m.extend_from_slice(&300u64.to_ne_bytes());
        m
    }

    #[test]
    fn parses_buckets_and_asks_for_one_groups() {
        assert_eq!(parse_bucket(&bucket()), Some(NhEvent::Bucket { group: 7, index: 5, nh: 8 }));
        assert_eq!(parse_bucket(&bucket()[..20]), None);
        let req = bucket_request(7);
        assert_eq!(req.len(), 32);
        assert_eq!(u16::from_ne_bytes([req[4], req[5]]), RTM_GETNEXTHOPBUCKET);
        assert_eq!(u32::from_ne_bytes([req[8], req[9], req[10], req[11]]), BUCKET_SEQ);
        assert_eq!(&req[24..32], &[8, 0, 1, 0, 7, 0, 0, 0]);
        assert_eq!(dump_request().len(), 24);
    }

    #[test]
    fn datagrams_split_into_messages() {
        let mut d = Vec::new();
        for (kind, body, seq) in [
            (RTM_NEWNEXTHOP, single(), 0u32),
            (RTM_NEWNEXTHOPBUCKET, bucket(), BUCKET_SEQ),
            (NLMSG_DONE, vec![0; 4], BUCKET_SEQ),
            (NLMSG_DONE, vec![0; 4], DUMP_SEQ),
        ] {
            d.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
            d.extend_from_slice(&kind.to_ne_bytes());
            d.extend_from_slice(&[0; 2]);
            d.extend_from_slice(&seq.to_ne_bytes());
            d.extend_from_slice(&[0; 4]);
            d.extend_from_slice(&body);
        }
        let events = messages(&d);
        assert_eq!(events.len(), 4);
        assert_eq!(events[1], NhEvent::Bucket { group: 7, index: 5, nh: 8 });
        assert_eq!(&events[2..], [NhEvent::BucketsDumped, NhEvent::Synced]);
    }
}
