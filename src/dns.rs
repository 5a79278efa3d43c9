//! DNS header and question, read from a UDP payload or a TCP segment (RFC 1035 §4.1, §4.2.2).
//!
//! This module owns the step from bytes to "which question, which id, query or answer". It uses
//! hickory-proto's decoder, which checks every length before reading, and never panics. It reads
//! only the header and the first question: that is all pairing needs, and it keeps the hot path
//! short. Answers (for flow learning) are read elsewhere, only when a rule asks for them.
//!
//! Names are compared case-insensitively (resolvers that use 0x20 case randomisation send
//! `wWw.ExAmple.COM` upstream for a client's `www.example.com`), so the pairing key holds the
//! name in lower case, in wire form.

use std::fmt;

use hickory_proto::op::{Header, MessageType, Query};
use hickory_proto::rr::Name;
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

/// The question section's identity, as pairing compares it: lower-cased wire-form name, type and
/// class. Cheap to hash (one byte slice and two integers).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QKey {
    name: Box<[u8]>,
    pub qtype: u16,
    pub qclass: u16,
}

impl QKey {
    /// Build a key from a parsed name; labels are lower-cased (ASCII only, as DNS defines).
    pub fn new(name: &Name, qtype: u16, qclass: u16) -> QKey {
        let mut wire = Vec::with_capacity(name.len() + 2);
        for label in name.iter() {
            // A label is at most 63 bytes, so the length fits in a u8.
            wire.push(label.len() as u8);
            wire.extend(label.iter().map(u8::to_ascii_lowercase));
        }
        wire.push(0);
        QKey {
            name: wire.into_boxed_slice(),
            qtype,
            qclass,
        }
    }

    /// The lower-cased name in wire form (length-prefixed labels, ending with the root's 0).
    pub fn wire_name(&self) -> &[u8] {
        &self.name
    }
}

/// The first question of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// The name as it was sent (case preserved), for logs and name rules.
    pub name: Name,
    pub key: QKey,
}

impl Question {
    pub fn qtype(&self) -> u16 {
        self.key.qtype
    }
}

impl fmt::Display for Question {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let qtype = hickory_proto::rr::RecordType::from(self.key.qtype);
        write!(f, "{} {}", self.name, qtype)
    }
}

/// What pairing and rules need to know about a DNS message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dns {
    pub id: u16,
    pub response: bool,
    /// OPCODE; 0 is a standard query.
    pub opcode: u8,
    /// RCODE (low four bits).
    pub rcode: u8,
    /// The TC bit: the answer did not fit and the client should retry over TCP.
    pub truncated: bool,
    pub answer_count: u16,
    /// The first question, if the message has one and it could be read.
    pub question: Option<Question>,
}

/// Why a payload is not a DNS message we can use. Ends in a counter, never in a panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// Shorter than the 12-byte header.
    Short,
    /// The question section is announced but cannot be read.
    BadQuestion,
    /// A TCP segment whose first two bytes do not frame a DNS message (a continuation segment,
    /// or a bare length prefix).
    BadFraming,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Short => f.write_str("DNS message shorter than its 12-byte header"),
            Error::BadQuestion => f.write_str("DNS question section cannot be read"),
            Error::BadFraming => {
                f.write_str("TCP segment does not start with a framed DNS message")
            }
        }
    }
}

impl std::error::Error for Error {}

/// The header is 12 bytes (RFC 1035 §4.1.1).
const HEADER_LEN: usize = 12;

/// Parse a DNS message carried in one UDP datagram.
pub fn parse_udp(payload: &[u8]) -> Result<Dns, Error> {
    parse_message(payload)
}

/// Parse the DNS message at the start of a TCP segment's payload. DNS over TCP prefixes each
/// message with its length in two bytes (RFC 1035 §4.2.2, RFC 7766). We read the message that
/// starts this segment; a message split over segments still yields its header and question when
/// they are in the first one.
pub fn parse_tcp(payload: &[u8]) -> Result<Dns, Error> {
    let (len, rest) = match payload {
        [hi, lo, rest @ ..] => (usize::from(u16::from_be_bytes([*hi, *lo])), rest),
        _ => return Err(Error::BadFraming),
    };
    if len < HEADER_LEN || rest.len() < HEADER_LEN {
        return Err(Error::BadFraming);
    }
    let message = rest.get(..len).unwrap_or(rest);
    parse_message(message).map_err(|e| match e {
        Error::Short => Error::BadFraming,
        other => other,
    })
}

fn parse_message(bytes: &[u8]) -> Result<Dns, Error> {
    if bytes.len() < HEADER_LEN {
        return Err(Error::Short);
    }
    let mut decoder = BinDecoder::new(bytes);
    let header = Header::read(&mut decoder).map_err(|_| Error::Short)?;
    let flags = bytes
        .get(2..4)
        .map_or(0u16, |b| u16::from_be_bytes([b[0], b[1]]));
    let question = if header.counts.queries == 0 {
        None
    } else {
        let query = Query::read(&mut decoder).map_err(|_| Error::BadQuestion)?;
        let key = QKey::new(
            query.name(),
            u16::from(query.query_type()),
            u16::from(query.query_class()),
        );
        Some(Question {
            name: query.name().clone(),
            key,
        })
    };
    Ok(Dns {
        id: header.id,
        response: header.message_type == MessageType::Response,
        opcode: ((flags >> 11) & 0x0f) as u8,
        rcode: (flags & 0x0f) as u8,
        truncated: header.truncation,
        answer_count: header.counts.answers,
        question,
    })
}
