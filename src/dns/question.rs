//! DNS header and question, read from a UDP payload or a TCP segment (RFC 1035 §4.1, §4.2.2).
//!
//! This module owns the step from bytes to "which question, which id, query or answer", on
//! every DNS packet. It reads only the header and the first question: that is all pairing and
//! rules need, and it keeps the hot path short. Records (for flow learning) are read by
//! [`super::answer`], only when a rule asks for them. It must never panic, read a byte before
//! checking it is there, or allocate for a name that fits inline.
//!
//! Names are compared case-insensitively (resolvers that use 0x20 case randomisation send
//! `wWw.ExAmple.COM` upstream for a client's `www.example.com`), so the pairing key holds the
//! name in lower case, in wire form. The question's name is read by [`super::name::read`]; it is
//! the first name of a message, so no compression pointer in it can point at an earlier name,
//! and every pointer is refused.

use std::fmt;
use std::sync::Arc;

use super::name::{self, Name};
use super::rtype;

/// A lower-cased wire-form name. Names that fit (almost all) live inline, so building, cloning
/// and dropping a key costs no allocation on the packet path; longer ones are shared.
#[derive(Clone)]
enum NameBuf {
    Inline { len: u8, bytes: [u8; INLINE_NAME] },
    Shared(Arc<[u8]>),
}

/// Wire-form names up to this long are stored inline (`www.example.com` is 17 bytes).
const INLINE_NAME: usize = 62;

impl NameBuf {
    fn new(wire: &[u8]) -> NameBuf {
        let mut bytes = [0u8; INLINE_NAME];
        match (u8::try_from(wire.len()), bytes.get_mut(..wire.len())) {
            (Ok(len), Some(inline)) => {
                inline.copy_from_slice(wire);
                NameBuf::Inline { len, bytes }
            }
            _ => NameBuf::Shared(wire.into()),
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            NameBuf::Inline { len, bytes } => bytes.get(..usize::from(*len)).unwrap_or_default(),
            NameBuf::Shared(b) => b,
        }
    }
}

impl PartialEq for NameBuf {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for NameBuf {}

impl std::hash::Hash for NameBuf {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl fmt::Debug for NameBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_bytes())
    }
}

/// The question section's identity, as pairing compares it: lower-cased wire-form name, type and
/// class. Cheap to hash (one byte slice and two integers) and to copy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QKey {
    name: NameBuf,
    pub qtype: u16,
    pub qclass: u16,
}

impl QKey {
    /// Build a key from a name (held lower-cased already: DNS case is ASCII only).
    pub fn new(name: &Name, qtype: u16, qclass: u16) -> QKey {
        QKey {
            name: NameBuf::new(name.wire()),
            qtype,
            qclass,
        }
    }

    /// The name (lower case).
    pub fn name(&self) -> Name {
        Name::from_wire(self.wire_name()).unwrap_or_else(|_| Name::root())
    }

    /// The lower-cased name in wire form (length-prefixed labels, ending with the root's 0).
    pub fn wire_name(&self) -> &[u8] {
        self.name.as_bytes()
    }
}

/// The first question of a message: its key (lower-cased name, type, class) is all that pairing
/// and rules need, so that is all that is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    pub key: QKey,
}

impl Question {
    pub fn qtype(&self) -> u16 {
        self.key.qtype
    }

    /// The name (lower case), for logs and tests.
    pub fn name(&self) -> Name {
        self.key.name()
    }
}

impl fmt::Display for Question {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.name(), rtype::Show(self.key.qtype))
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
const HEADER_LEN: usize = name::HEADER_LEN;

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
    // A query is small and sent whole: one that claims to be longer than its segment is far more
    // likely the middle of a long answer that happens to look like a header. Answers may span
    // segments; their first segment still carries header and question.
    let is_query = rest.get(2).is_some_and(|flags| flags & 0x80 == 0);
    if is_query && len > rest.len() {
        return Err(Error::BadFraming);
    }
    let message = rest.get(..len).unwrap_or(rest);
    parse_message(message).map_err(|e| match e {
        Error::Short => Error::BadFraming,
        other => other,
    })
}

fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    match bytes.get(at..at + 2)? {
        [hi, lo] => Some(u16::from_be_bytes([*hi, *lo])),
        _ => None,
    }
}

/// Header and first question, read directly from the bytes: no allocation but the key's name,
/// and only for a name too long to sit inline. (hickory-proto's decoder cost about 160 ns a
/// message here, most of the decision budget.)
fn parse_message(bytes: &[u8]) -> Result<Dns, Error> {
    if bytes.len() < HEADER_LEN {
        return Err(Error::Short);
    }
    let id = be16(bytes, 0).ok_or(Error::Short)?;
    let flags = be16(bytes, 2).ok_or(Error::Short)?;
    let queries = be16(bytes, 4).ok_or(Error::Short)?;
    let answers = be16(bytes, 6).ok_or(Error::Short)?;
    let question = if queries == 0 {
        None
    } else {
        let mut name = Name::root();
        let after = name::read(bytes, HEADER_LEN, &mut name).map_err(|_| Error::BadQuestion)?;
        let qtype = be16(bytes, after).ok_or(Error::BadQuestion)?;
        let qclass = be16(bytes, after + 2).ok_or(Error::BadQuestion)?;
        Some(Question {
            key: QKey::new(&name, qtype, qclass),
        })
    };
    Ok(Dns {
        id,
        response: flags & 0x8000 != 0,
        opcode: ((flags >> 11) & 0x0f) as u8,
        rcode: (flags & 0x0f) as u8,
        truncated: flags & 0x0200 != 0,
        answer_count: answers,
        question,
    })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
    use hickory_proto::rr::{DNSClass, Name as HName, RecordType};

    use super::*;
    use crate::fixtures;

    fn key(name: &str, qtype: RecordType) -> QKey {
        QKey::new(&Name::from_ascii(name).unwrap(), u16::from(qtype), 1)
    }

    fn question(bytes: &[u8]) -> Question {
        parse_udp(bytes).unwrap().question.unwrap()
    }

    #[test]
    fn query_header_and_question_are_read() {
        let dns = parse_udp(&fixtures::dns_query(0x1234, "www.example.com")).unwrap();
        assert_eq!(dns.id, 0x1234);
        assert!(!dns.response);
        assert_eq!(dns.opcode, 0);
        assert_eq!(dns.rcode, 0);
        assert!(!dns.truncated);
        assert_eq!(dns.answer_count, 0);
        let q = dns.question.unwrap();
        assert_eq!(q.qtype(), 1);
        assert_eq!(q.key.qclass, 1);
        assert_eq!(q.key, key("www.example.com", RecordType::A));
        assert_eq!(q.to_string(), "www.example.com. A");
    }

    #[test]
    fn answer_sets_response() {
        let dns = parse_udp(&fixtures::dns_answer(7, "www.example.com")).unwrap();
        assert_eq!(dns.id, 7);
        assert!(dns.response);
        assert_eq!(
            dns.question.unwrap().key,
            key("www.example.com", RecordType::A)
        );
    }

    #[test]
    fn extreme_ids_are_read_as_sent() {
        for id in [0, 1, 0x8000, u16::MAX] {
            assert_eq!(
                parse_udp(&fixtures::dns_query(id, "a.example")).unwrap().id,
                id
            );
        }
    }

    #[test]
    fn case_0x20_variants_share_one_key() {
        let client = question(&fixtures::dns_query(1, "www.example.com"));
        let upstream = question(&fixtures::dns_query(2, "wWw.ExAmPle.CoM"));
        assert_eq!(client.key, upstream.key);
        assert_eq!(upstream.name().to_ascii(), "www.example.com.");
    }

    fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len() / 2)
            .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn question_pointers_into_the_header_or_the_name_itself_are_bad_questions() {
        // Found by the fuzzer (hickory-proto rejects both): the question's name is the first in
        // the message, so no compression pointer in it can point at an earlier name.
        let into_header = unhex(
            "1234 0000 1a1a 1a1a 1a1a 0003 c000 0289 4000 4006 4500 0043 0000 0001 0000 0000 \
             0000 0377 7777 07ff 0600 0000 0101 2001",
        );
        assert_eq!(parse_udp(&into_header), Err(Error::BadQuestion));
        let into_own_label = unhex(
            "45002f2fffff2f2f2f2f2f00202f78000000002df0f0f00000004000401132b625c0000289c000020000\
             004000c010027f2600786e2d2d45af40",
        );
        assert_eq!(parse_udp(&into_own_label), Err(Error::BadQuestion));
    }

    #[test]
    fn long_names_beyond_the_inline_buffer_key_the_same_way() {
        let long = format!("{}.{}.example", "a".repeat(50), "B".repeat(40));
        let upper = long.to_ascii_uppercase();
        let a = question(&fixtures::dns_query(1, &long));
        let b = question(&fixtures::dns_query(2, &upper));
        assert!(a.key.wire_name().len() > INLINE_NAME);
        assert_eq!(a.key, b.key);
        assert_eq!(
            a.name().to_ascii(),
            format!("{}.", long.to_ascii_lowercase())
        );
        let short = question(&fixtures::dns_query(3, "x.example"));
        assert_ne!(a.key, short.key);
    }

    #[test]
    fn key_wire_name_is_length_prefixed_and_lower_case() {
        let q = question(&fixtures::dns_query(1, "wWw.ExAmPle.CoM"));
        assert_eq!(q.key.wire_name(), b"\x03www\x07example\x03com\x00");
    }

    #[test]
    fn key_lower_cases_ascii_only() {
        // DNS case-insensitivity is ASCII only (RFC 4343): other bytes are kept as they are.
        let mut bytes = fixtures::dns_header_only(1, false);
        bytes[5] = 1;
        bytes.extend_from_slice(b"\x03A\xc3\x89\x03COM\x00\x00\x01\x00\x01");
        let key = question(&bytes).key;
        assert_eq!(key.wire_name(), b"\x03a\xc3\x89\x03com\x00");
    }

    #[test]
    fn key_ignores_whether_the_name_is_fully_qualified() {
        assert_eq!(
            key("www.example.com", RecordType::A),
            key("www.example.com.", RecordType::A)
        );
    }

    #[test]
    fn root_name_key_is_a_single_zero() {
        assert_eq!(QKey::new(&Name::root(), 2, 1).wire_name(), b"\x00");
        let q = question(&fixtures::dns_message(1, ".", RecordType::NS, false));
        assert_eq!(q.key.wire_name(), b"\x00");
        assert_eq!(q.qtype(), 2);
    }

    #[test]
    fn different_type_class_or_name_gives_a_different_key() {
        let a = key("www.example.com", RecordType::A);
        assert_ne!(a, key("www.example.com", RecordType::AAAA));
        assert_ne!(a, key("www.example.org", RecordType::A));
        assert_ne!(a, key("ww.example.com", RecordType::A));
        let chaos = QKey::new(&Name::from_ascii("www.example.com").unwrap(), 1, 3);
        assert_ne!(a, chaos);
        // Label boundaries count: a.bc and ab.c are different names.
        assert_ne!(key("a.bc", RecordType::A), key("ab.c", RecordType::A));
    }

    #[test]
    fn question_class_is_read_from_the_wire() {
        let mut msg = Message::new(3, MessageType::Query, OpCode::Query);
        let mut query = Query::query(HName::from_ascii("version.bind").unwrap(), RecordType::TXT);
        query.set_query_class(DNSClass::CH);
        msg.add_query(query);
        let q = question(&msg.to_vec().unwrap());
        assert_eq!(q.key.qclass, 3);
        assert_eq!(q.qtype(), 16);
    }

    #[test]
    fn empty_payload_is_short() {
        assert_eq!(parse_udp(&[]), Err(Error::Short));
    }

    #[test]
    fn dns_header_cut_is_short() {
        let bytes = fixtures::dns_query(1, "www.example.com");
        for len in 0..HEADER_LEN {
            assert_eq!(parse_udp(&bytes[..len]), Err(Error::Short), "cut at {len}");
        }
    }

    #[test]
    fn header_without_question_has_none() {
        for response in [false, true] {
            let dns = parse_udp(&fixtures::dns_header_only(9, response)).unwrap();
            assert_eq!(dns.id, 9);
            assert_eq!(dns.response, response);
            assert_eq!(dns.question, None);
        }
    }

    #[test]
    fn question_cut_is_bad_question() {
        let bytes = fixtures::dns_query(1, "www.example.com");
        // Inside the name, before the type, inside the type, before and inside the class.
        for len in HEADER_LEN..bytes.len() {
            assert_eq!(
                parse_udp(&bytes[..len]),
                Err(Error::BadQuestion),
                "cut at {len}"
            );
        }
        assert!(parse_udp(&bytes).is_ok());
    }

    #[test]
    fn announced_question_missing_is_bad_question() {
        let mut bytes = fixtures::dns_header_only(1, false);
        bytes[5] = 1; // QDCOUNT 1, nothing behind the header
        assert_eq!(parse_udp(&bytes), Err(Error::BadQuestion));
    }

    #[test]
    fn compression_pointer_to_itself_is_bad_question() {
        let mut bytes = fixtures::dns_header_only(1, false);
        bytes[5] = 1;
        bytes.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert_eq!(parse_udp(&bytes), Err(Error::BadQuestion));
    }

    #[test]
    fn compression_pointer_forward_or_out_of_range_is_bad_question() {
        for target in [14u8, 0xff] {
            let mut bytes = fixtures::dns_header_only(1, false);
            bytes[5] = 1;
            bytes.extend_from_slice(&[0xc0, target, 0, 1, 0, 1, 0, 0]);
            assert_eq!(parse_udp(&bytes), Err(Error::BadQuestion), "to {target}");
        }
    }

    #[test]
    fn label_longer_than_63_bytes_is_bad_question() {
        let mut bytes = fixtures::dns_header_only(1, false);
        bytes[5] = 1;
        bytes.push(64);
        bytes.extend_from_slice(&[b'a'; 64]);
        bytes.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert_eq!(parse_udp(&bytes), Err(Error::BadQuestion));
    }

    #[test]
    fn opcode_is_read() {
        for (opcode, n) in [
            (OpCode::Query, 0),
            (OpCode::Status, 2),
            (OpCode::Notify, 4),
            (OpCode::Update, 5),
        ] {
            let bytes =
                fixtures::dns_message_with_opcode(1, "example.com", RecordType::SOA, false, opcode);
            assert_eq!(parse_udp(&bytes).unwrap().opcode, n, "{opcode:?}");
        }
    }

    #[test]
    fn unassigned_opcode_is_data_not_an_error() {
        let mut bytes = fixtures::dns_query(1, "www.example.com");
        for opcode in [3u8, 15] {
            bytes[2] = (bytes[2] & 0x87) | (opcode << 3);
            let dns = parse_udp(&bytes).unwrap();
            assert_eq!(dns.opcode, opcode);
            assert!(!dns.response);
            assert!(dns.question.is_some());
        }
    }

    #[test]
    fn rcode_tc_and_answer_count_are_read() {
        let mut msg = Message::new(5, MessageType::Response, OpCode::Query);
        msg.metadata.truncation = true;
        msg.metadata.response_code = ResponseCode::NXDomain;
        msg.add_query(Query::query(
            HName::from_ascii("nx.example.com").unwrap(),
            RecordType::A,
        ));
        let dns = parse_udp(&msg.to_vec().unwrap()).unwrap();
        assert!(dns.response);
        assert!(dns.truncated);
        assert_eq!(dns.rcode, 3);
        assert_eq!(dns.answer_count, 0);

        let addrs = [Ipv4Addr::new(192, 0, 2, 10), Ipv4Addr::new(192, 0, 2, 11)];
        let dns = parse_udp(&fixtures::dns_answer_a(6, "www.example.com", &addrs)).unwrap();
        assert_eq!(dns.answer_count, 2);
        assert_eq!(dns.rcode, 0);
        assert!(!dns.truncated);
    }

    #[test]
    fn answer_section_cut_still_gives_header_and_question() {
        let addrs = [Ipv4Addr::new(192, 0, 2, 10); 4];
        let bytes = fixtures::dns_answer_a(6, "www.example.com", &addrs);
        let question_end = HEADER_LEN + 17 + 4;
        for len in question_end..bytes.len() {
            let dns = parse_udp(&bytes[..len]).unwrap();
            assert_eq!(dns.answer_count, 4);
            assert!(dns.question.is_some(), "cut at {len}");
        }
    }

    #[test]
    fn tcp_framed_query_is_read() {
        let msg = fixtures::dns_query(0x4242, "wWw.ExAmPle.CoM");
        let dns = parse_tcp(&fixtures::tcp_framed(&msg)).unwrap();
        assert_eq!(dns, parse_udp(&msg).unwrap());
        assert_eq!(
            dns.question.unwrap().key,
            key("www.example.com", RecordType::A)
        );
    }

    #[test]
    fn tcp_without_length_prefix_is_bad_framing() {
        assert_eq!(parse_tcp(&[]), Err(Error::BadFraming));
        assert_eq!(parse_tcp(&[0]), Err(Error::BadFraming));
    }

    #[test]
    fn tcp_bare_length_prefix_segment_is_bad_framing() {
        let framed = fixtures::tcp_framed(&fixtures::dns_query(1, "www.example.com"));
        assert_eq!(parse_tcp(&framed[..2]), Err(Error::BadFraming));
    }

    #[test]
    fn tcp_length_prefix_below_header_size_is_bad_framing() {
        let msg = fixtures::dns_query(1, "www.example.com");
        for len in [0u16, 1, 11] {
            let mut framed = len.to_be_bytes().to_vec();
            framed.extend_from_slice(&msg);
            assert_eq!(parse_tcp(&framed), Err(Error::BadFraming), "length {len}");
        }
    }

    #[test]
    fn tcp_dns_header_cut_is_bad_framing() {
        let framed = fixtures::tcp_framed(&fixtures::dns_query(1, "www.example.com"));
        for len in 0..2 + HEADER_LEN {
            assert_eq!(
                parse_tcp(&framed[..len]),
                Err(Error::BadFraming),
                "cut at {len}"
            );
        }
    }

    #[test]
    fn tcp_message_split_after_the_question_is_read() {
        let addrs = [Ipv4Addr::new(192, 0, 2, 10); 8];
        let msg = fixtures::dns_answer_a(6, "www.example.com", &addrs);
        let framed = fixtures::tcp_framed(&msg);
        // First segment: prefix, header, question and part of the answers.
        let dns = parse_tcp(&framed[..2 + HEADER_LEN + 21 + 5]).unwrap();
        assert_eq!(dns.id, 6);
        assert!(dns.response);
        assert_eq!(
            dns.question.unwrap().key,
            key("www.example.com", RecordType::A)
        );
    }

    #[test]
    fn tcp_message_split_inside_the_question_is_bad_question() {
        let framed = fixtures::tcp_framed(&fixtures::dns_answer(1, "www.example.com"));
        for len in 2 + HEADER_LEN..framed.len() {
            assert_eq!(
                parse_tcp(&framed[..len]),
                Err(Error::BadQuestion),
                "cut at {len}"
            );
        }
    }

    #[test]
    fn tcp_query_longer_than_its_segment_is_bad_framing() {
        // Queries are sent whole; a "query" header claiming more bytes than the segment holds
        // is most likely the middle of a long answer.
        let framed = fixtures::tcp_framed(&fixtures::dns_query(1, "www.example.com"));
        for len in 2 + HEADER_LEN..framed.len() {
            assert_eq!(
                parse_tcp(&framed[..len]),
                Err(Error::BadFraming),
                "cut at {len}"
            );
        }
        assert!(parse_tcp(&framed).is_ok());
    }

    #[test]
    fn tcp_continuation_segment_is_not_read_as_dns() {
        // The tail of a framed query split after its header: the segment starts with the
        // question's name, which does not frame a message.
        let framed = fixtures::tcp_framed(&fixtures::dns_query(1, "www.example.com"));
        assert!(parse_tcp(&framed[2 + HEADER_LEN..]).is_err());
        // The tail of a long answer, a few bytes into its records.
        let addrs = [Ipv4Addr::new(192, 0, 2, 10); 8];
        let framed = fixtures::tcp_framed(&fixtures::dns_answer_a(6, "www.example.com", &addrs));
        let tail = &framed[framed.len() - 10..];
        assert!(parse_tcp(tail).is_err());
    }

    #[test]
    fn tcp_length_prefix_bounds_the_message() {
        // Two pipelined queries in one segment: the first is read, up to its own length.
        let first = fixtures::dns_query(1, "one.example");
        let second = fixtures::dns_query(2, "two.example");
        let mut segment = fixtures::tcp_framed(&first);
        segment.extend_from_slice(&fixtures::tcp_framed(&second));
        let dns = parse_tcp(&segment).unwrap();
        assert_eq!(dns.id, 1);
        assert_eq!(dns.question.unwrap().key, key("one.example", RecordType::A));
        // A prefix one byte short of the question cuts it.
        let mut short = u16::try_from(first.len() - 1)
            .unwrap()
            .to_be_bytes()
            .to_vec();
        short.extend_from_slice(&first);
        assert_eq!(parse_tcp(&short), Err(Error::BadQuestion));
    }

    #[test]
    fn every_cut_before_the_question_ends_errs_and_no_byte_flip_panics() {
        let addrs = [Ipv4Addr::new(192, 0, 2, 10); 2];
        let messages = [
            fixtures::dns_query(1, "www.example.com"),
            fixtures::dns_answer_a(2, "www.example.com", &addrs),
        ];
        // Header (12), `www.example.com` in wire form (17), type and class (4).
        let question_end = 12 + 17 + 4;
        for msg in &messages {
            let framed = fixtures::tcp_framed(msg);
            for len in 0..=msg.len() {
                let whole_question = len >= question_end;
                assert_eq!(
                    parse_udp(&msg[..len]).is_ok(),
                    whole_question,
                    "cut at {len}"
                );
                // Over TCP the length prefix says how long the message is: a cut one is read
                // as far as the question, like over UDP.
                assert_eq!(
                    parse_tcp(&framed[..len + 2]).is_ok(),
                    whole_question,
                    "TCP cut at {len}"
                );
            }
            for i in 0..msg.len() {
                for value in [0x00, 0x3f, 0x40, 0x80, 0xc0, 0xff] {
                    let mut bytes = msg.clone();
                    bytes[i] = value;
                    let _ = parse_udp(&bytes);
                }
            }
        }
    }

    #[test]
    fn error_display_says_what_is_wrong() {
        for e in [Error::Short, Error::BadQuestion, Error::BadFraming] {
            assert!(!e.to_string().is_empty());
        }
    }
}
