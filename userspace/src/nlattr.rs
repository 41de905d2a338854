//! Netlink attributes of the messages netlink-packet-route does not parse (nexthops, nftables).

/// The attributes of a netlink message body: (type without flags, value); stops at the first
/// malformed one (`Err`).
pub fn attributes(mut data: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8]), ()>> {
    std::iter::from_fn(move || {
        if data.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([data[0], data[1]]));
        let kind = u16::from_ne_bytes([data[2], data[3]]) & 0x3fff;
        if len < 4 || len > data.len() {
            data = &[];
            return Some(Err(()));
        }
        let value = &data[4..len];
        data = &data[((len + 3) & !3).min(data.len())..];
        Some(Ok((kind, value)))
    })
}
