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

/// Reads records from a stream whose reads may time out anywhere: bytes of a record begun
/// are kept until the rest comes.
#[derive(Default)]
pub struct RecordReader {
    buf: Vec<u8>,
}

impl RecordReader {
    /// Starts with bytes already read from the stream (behind the handshake).
    pub fn with(buffered: &[u8]) -> RecordReader {
        RecordReader { buf: buffered.to_vec() }
    }

    /// The next record (header, frame); `Ok(None)` at the end of the stream. A read's error
    /// (a timeout) is returned as it is, and nothing read so far is lost.
    pub fn next(&mut self, from: &mut impl Read) -> io::Result<Option<(CaptureHeader, Vec<u8>)>> {
        let mut chunk = [0u8; 1 << 16];
        loop {
            if let Some(record) = self.take()? {
                return Ok(Some(record));
            }
            match from.read(&mut chunk)? {
                0 => return Ok(None),
                n => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// A whole record from the front of the buffer, if there is one.
    fn take(&mut self) -> io::Result<Option<(CaptureHeader, Vec<u8>)>> {
        let Some(len) = self.buf.get(..4) else { return Ok(None) };
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        let head = size_of::<CaptureHeader>();
        if !(head..=MAX_RECORD).contains(&len) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a record of {len} bytes"),
            ));
        }
        let Some(record) = self.buf.get(4..4 + len) else { return Ok(None) };
        let header = CaptureHeader::from_bytes(record).expect("length checked above");
        if header.caplen as usize != len - head {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "a record's lengths disagree"));
        }
        let frame = record[head..].to_vec();
        self.buf.drain(..4 + len);
        Ok(Some((header, frame)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out its bytes a few at a time, with a timeout between each.
    struct Trickle<'a> {
        bytes: &'a [u8],
        timeout: bool,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            self.timeout = !self.timeout;
            if self.timeout {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = self.bytes.len().min(out.len()).min(5);
            out[..n].copy_from_slice(&self.bytes[..n]);
            self.bytes = &self.bytes[n..];
            Ok(n)
        }
    }

    #[test]
    fn records_survive_timeouts_anywhere_and_a_bad_length_is_refused() {
        let header = CaptureHeader { ts: 5, ifindex: 2, len: 60, caplen: 3, ..Default::default() };
        let mut stream = Vec::new();
        put_record(&mut stream, &header, &[1, 2, 3]);
        put_record(&mut stream, &CaptureHeader { caplen: 1, ..header }, &[9]);
        assert_eq!(stream.len(), record_len(3) + record_len(1));
        let mut from = Trickle { bytes: &stream[3..], timeout: false };
        let mut reader = RecordReader::with(&stream[..3]);
        let mut got = Vec::new();
        for _ in 0..100 {
            match reader.next(&mut from) {
                Ok(Some(record)) => got.push(record),
                Ok(None) => break,
                Err(e) => assert_eq!(e.kind(), io::ErrorKind::WouldBlock),
            }
        }
        assert_eq!(
            got,
            [(header, vec![1, 2, 3]), (CaptureHeader { caplen: 1, ..header }, vec![9])]
        );
        let mut bad = stream.clone();
        bad[0..4].copy_from_slice(&10u32.to_le_bytes());
        assert!(RecordReader::with(&bad).next(&mut &[][..]).is_err());
        let mut lying = stream;
        lying[4 + 16] = 9; // caplen 9 with 3 bytes behind
        assert!(RecordReader::with(&lying).next(&mut &[][..]).is_err());
    }
}
