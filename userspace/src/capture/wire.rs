//! Between `xdpfwd capture` and the instance: one JSON line each way to begin (the request,
//! then the interfaces it will see or why not), then the stream of records, each a
//! length-prefixed [`CaptureHeader`] and the frame's first bytes.

use std::io::{self, Read};

use serde::{Deserialize, Serialize};
use xdpfwd_common::CaptureHeader;

/// Longest record the client accepts (a header and a 64 KiB frame, with room).
pub const MAX_RECORD: usize = 1 << 17;

/// `kind` of a record that carries no frame but the number of frames lost so far (a u64
/// behind the header).
pub const LOST: u8 = 0xff;

/// What the client asks for.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Request {
    /// Interface names; empty: every interface of the instance.
    pub interfaces: Vec<String>,
    /// `CaptureFlags` bits.
    pub flags: u32,
    pub snaplen: u32,
    /// A tcpdump expression; empty: every frame.
    pub filter: String,
}

/// The instance's answer: the interfaces the records name (ifindex, name), or why it will
/// not capture.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum Reply {
    Ready { interfaces: Vec<(u32, String)> },
    Refused { error: String },
}

/// Appends a record: length, header, frame bytes.
pub fn put_record(out: &mut Vec<u8>, header: &CaptureHeader, frame: &[u8]) {
    let bytes = header.to_bytes();
    out.extend_from_slice(&((bytes.len() + frame.len()) as u32).to_le_bytes());
    out.extend_from_slice(&bytes);
    out.extend_from_slice(frame);
}

/// Length of the record `put_record` writes for a frame of `caplen` bytes.
pub fn record_len(caplen: usize) -> usize {
    4 + size_of::<CaptureHeader>() + caplen
}

/// Reads the next record into `buf` (header then frame); `Ok(None)` at the end of the stream.
pub fn read_record(from: &mut impl Read, buf: &mut Vec<u8>) -> io::Result<Option<CaptureHeader>> {
    let mut len = [0u8; 4];
    match from.read_exact(&mut len) {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        other => other?,
    }
    let len = u32::from_le_bytes(len) as usize;
    if !(size_of::<CaptureHeader>()..=MAX_RECORD).contains(&len) {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("a record of {len} bytes")));
    }
    buf.resize(len, 0);
    from.read_exact(buf)?;
    let header = CaptureHeader::from_bytes(buf).expect("length checked above");
    if header.caplen as usize != len - size_of::<CaptureHeader>() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "a record's lengths disagree"));
    }
    buf.drain(..size_of::<CaptureHeader>());
    Ok(Some(header))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_bad_length_is_refused() {
        let header = CaptureHeader { ts: 5, ifindex: 2, len: 60, caplen: 3, ..Default::default() };
        let mut stream = Vec::new();
        put_record(&mut stream, &header, &[1, 2, 3]);
        assert_eq!(stream.len(), record_len(3));
        let mut buf = Vec::new();
        let mut from = &stream[..];
        assert_eq!(read_record(&mut from, &mut buf).unwrap(), Some(header));
        assert_eq!(buf, [1, 2, 3]);
        assert_eq!(read_record(&mut from, &mut buf).unwrap(), None);
        let mut bad = stream.clone();
        bad[0..4].copy_from_slice(&10u32.to_le_bytes());
        assert!(read_record(&mut &bad[..], &mut buf).is_err());
        let mut lying = stream;
        lying[4 + 16] = 9; // caplen 9 with 3 bytes behind
        assert!(read_record(&mut &lying[..], &mut buf).is_err());
    }
}
