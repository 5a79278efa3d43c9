//! Records of a DNS message, every section, read with bounds (RFC 1035 §4.1.3).
//!
//! This module owns reading the answer, authority and additional sections of a message, for the
//! packet path: flow learning (a question's CNAME chain and its A/AAAA records, with TTLs) and
//! causal attribution for recursive resolvers (referral NS names in authority, glue in
//! additional, CNAME/DNAME targets, MX/SRV targets). [`Message::parse`] reads the header and the
//! questions; [`Message::section`] (or [`Message::records`], every section) then yields one
//! [`Record`] at a time: section, owner name, type, class, TTL, and the data decoded for A, AAAA
//! (an address), CNAME, DNAME, NS, PTR (a name), MX and SRV (a target name), raw bytes for every
//! other type. Class and TTL are given as sent (an OPT record's "class" is its payload size).
//!
//! Bounds, so a hostile message costs a bounded amount of work (`benches/answer.rs` measures the
//! worst the bounds allow):
//!
//! - no allocation at all: names are [`Name`]s, inline; raw data is borrowed from the message;
//! - at most [`MAX_QUESTIONS`] questions and [`MAX_SECTION_RECORDS`] records read per section
//!   whatever the counts say (records past that are stepped over, never decoded); a count that
//!   announces more records than the message holds ends in an error where the bytes run out;
//! - names follow [`super::name::read`]'s rules (pointers strictly backward, at most 64 per
//!   name, labels of 63, names of 255 bytes);
//! - a section the caller does not want is stepped over by framing alone (label lengths and
//!   record lengths), never decoded: asking for one section costs little for the others.
//!
//! The first malformed record ends the iteration with an [`Error`] saying what is wrong and
//! where (section, record number, byte offset); records before it were good. This module must
//! never panic, index without a check, allocate, or do work that grows with a count read off
//! the wire rather than with the bytes the message holds (every record stepped over consumes at
//! least 11 bytes, or ends the iteration).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::QKey;
use super::name::{self, HEADER_LEN, Name, NameError, NameErrorKind};
use super::rtype;

/// Most questions read. Real messages carry one (RFC 9619); more are refused.
pub const MAX_QUESTIONS: u16 = 16;
/// Most records decoded per section: answers a resolver sends hold far fewer (a 1232-byte
/// EDNS answer fits about 75 A records). Records past this are stepped over.
pub const MAX_SECTION_RECORDS: u16 = 256;

/// The three record sections, in message order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Section {
    Answer,
    Authority,
    Additional,
}

impl Section {
    fn index(self) -> usize {
        match self {
            Section::Answer => 0,
            Section::Authority => 1,
            Section::Additional => 2,
        }
    }

    fn next(self) -> Option<Section> {
        match self {
            Section::Answer => Some(Section::Authority),
            Section::Authority => Some(Section::Additional),
            Section::Additional => None,
        }
    }
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Section::Answer => "answer",
            Section::Authority => "authority",
            Section::Additional => "additional",
        })
    }
}

/// The section counts as the header announces them (not what the message holds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub questions: u16,
    pub answers: u16,
    pub authorities: u16,
    pub additionals: u16,
}

impl Counts {
    fn records(&self) -> [u16; 3] {
        [self.answers, self.authorities, self.additionals]
    }
}

/// The first question: name (lower case), type and class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub name: Name,
    pub qtype: u16,
    pub qclass: u16,
}

impl Query {
    /// The pairing key of this question.
    pub fn key(&self) -> QKey {
        QKey::new(&self.name, self.qtype, self.qclass)
    }
}

/// A record's data: decoded for the types nfqmark follows, raw for every other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RData<'a> {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Cname(Name),
    Dname(Name),
    Ns(Name),
    Ptr(Name),
    Mx {
        preference: u16,
        exchange: Name,
    },
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: Name,
    },
    /// Any other type: the record's data as sent (names in it may be compressed).
    Other(&'a [u8]),
}

/// One resource record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    pub section: Section,
    /// Its number within its section, from 0.
    pub index: u16,
    /// Byte offset of its owner name in the message.
    pub offset: usize,
    /// Owner name, lower case.
    pub owner: Name,
    pub rtype: u16,
    pub class: u16,
    pub ttl: u32,
    pub data: RData<'a>,
}

impl Record<'_> {
    /// The address of an A or AAAA record.
    pub fn address(&self) -> Option<IpAddr> {
        match self.data {
            RData::A(a) => Some(IpAddr::V4(a)),
            RData::Aaaa(a) => Some(IpAddr::V6(a)),
            _ => None,
        }
    }

    /// The name this record points to: a CNAME's or DNAME's target, an NS's or PTR's name, an
    /// MX's exchange, an SRV's target.
    pub fn target(&self) -> Option<&Name> {
        match &self.data {
            RData::Cname(n) | RData::Dname(n) | RData::Ns(n) | RData::Ptr(n) => Some(n),
            RData::Mx { exchange, .. } => Some(exchange),
            RData::Srv { target, .. } => Some(target),
            _ => None,
        }
    }
}

/// Where in the message a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Header,
    /// Question number (from 0).
    Question(u16),
    /// Record number (from 0) in its section.
    Record(Section, u16),
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::Header => f.write_str("header"),
            Place::Question(i) => write!(f, "question {}", u32::from(*i) + 1),
            Place::Record(s, i) => write!(f, "{s} record {}", u32::from(*i) + 1),
        }
    }
}

/// What is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Shorter than the 12-byte header.
    Short,
    /// The header announces more than [`MAX_QUESTIONS`] questions.
    TooManyQuestions(u16),
    /// A name breaks a rule (see [`super::name`]); never `Truncated`, which is [`Self::Truncated`].
    Name(NameErrorKind),
    /// The message ends inside a question or a record (its name, fixed fields or data).
    Truncated,
    /// Record data that does not hold what its type says (an A record of 3 bytes, a CNAME
    /// whose name does not end where the data does).
    Data { rtype: u16, len: u16 },
}

/// Why a message's records cannot be read (further): what, in which question or record, at
/// which byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Error {
    pub place: Place,
    /// Byte offset of the problem in the message.
    pub at: usize,
    pub kind: ErrorKind,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (place, at) = (self.place, self.at);
        match self.kind {
            ErrorKind::Short => write!(f, "DNS message of {at} bytes, shorter than its header"),
            ErrorKind::TooManyQuestions(n) => write!(
                f,
                "{place}: {n} questions announced, more than the {MAX_QUESTIONS} read"
            ),
            ErrorKind::Name(kind) => write!(f, "{place}: {}", NameError { at, kind }),
            ErrorKind::Truncated => write!(f, "{place}: the message ends at byte {at}"),
            ErrorKind::Data { rtype, len } => write!(
                f,
                "{place}: {} data of {len} bytes at byte {at} does not hold its value",
                rtype::Show(rtype)
            ),
        }
    }
}

impl std::error::Error for Error {}

/// A message whose header and questions were read; its records are read on demand.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    bytes: &'a [u8],
    pub id: u16,
    /// The header's flags word (QR, OPCODE, AA, TC, RD, RA, Z, AD, CD, RCODE).
    pub flags: u16,
    pub counts: Counts,
    question: Option<Query>,
    /// Where the answer section starts.
    records_at: usize,
}

fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    match bytes.get(at..at.checked_add(2)?)? {
        [hi, lo] => Some(u16::from_be_bytes([*hi, *lo])),
        _ => None,
    }
}

fn be32(bytes: &[u8], at: usize) -> Option<u32> {
    match bytes.get(at..at.checked_add(4)?)? {
        [a, b, c, d] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

impl<'a> Message<'a> {
    /// Read the header and every question (the first one kept). Records are not touched.
    pub fn parse(bytes: &'a [u8]) -> Result<Message<'a>, Error> {
        let header = |at| Error {
            place: Place::Header,
            at,
            kind: ErrorKind::Short,
        };
        let word = |at| be16(bytes, at).ok_or(header(bytes.len()));
        let (id, flags) = (word(0)?, word(2)?);
        let counts = Counts {
            questions: word(4)?,
            answers: word(6)?,
            authorities: word(8)?,
            additionals: word(10)?,
        };
        if counts.questions > MAX_QUESTIONS {
            return Err(Error {
                place: Place::Header,
                at: 4,
                kind: ErrorKind::TooManyQuestions(counts.questions),
            });
        }
        let mut at = HEADER_LEN;
        let mut question = None;
        let mut name = Name::root();
        for i in 0..counts.questions {
            let place = Place::Question(i);
            let after = name::read(bytes, at, &mut name).map_err(|e| name_error(place, e))?;
            let (Some(qtype), Some(qclass)) = (be16(bytes, after), be16(bytes, after + 2)) else {
                return Err(Error {
                    place,
                    at: bytes.len(),
                    kind: ErrorKind::Truncated,
                });
            };
            if i == 0 {
                question = Some(Query {
                    name: name.clone(),
                    qtype,
                    qclass,
                });
            }
            at = after + 4;
        }
        Ok(Message {
            bytes,
            id,
            flags,
            counts,
            question,
            records_at: at,
        })
    }

    /// The first question, if the message has one.
    pub fn question(&self) -> Option<&Query> {
        self.question.as_ref()
    }

    /// The QR bit: a response.
    pub fn response(&self) -> bool {
        self.flags & 0x8000 != 0
    }

    /// RCODE (the header's four bits; EDNS extends it in the OPT record).
    pub fn rcode(&self) -> u8 {
        (self.flags & 0x000f) as u8
    }

    /// True when some section announces more records than are read
    /// ([`MAX_SECTION_RECORDS`]).
    pub fn clamped(&self) -> bool {
        self.counts
            .records()
            .iter()
            .any(|&n| n > MAX_SECTION_RECORDS)
    }

    /// Every record, section by section.
    pub fn records(&self) -> Records<'a> {
        self.sections(Section::Answer, Section::Additional)
    }

    /// The records of one section; the sections before it are stepped over by framing alone.
    pub fn section(&self, section: Section) -> Records<'a> {
        self.sections(section, section)
    }

    /// The records of the sections from `first` to `last` (authority and additional for a
    /// referral, say).
    pub fn sections(&self, first: Section, last: Section) -> Records<'a> {
        Records {
            bytes: self.bytes,
            at: self.records_at,
            section: Section::Answer,
            index: 0,
            counts: self.counts.records(),
            first,
            last,
            done: false,
        }
    }
}

fn name_error(place: Place, e: NameError) -> Error {
    Error {
        place,
        at: e.at,
        kind: name_kind(e.kind),
    }
}

/// A name running out of bytes is the message running out of bytes: one kind for both.
fn name_kind(kind: NameErrorKind) -> ErrorKind {
    match kind {
        NameErrorKind::Truncated => ErrorKind::Truncated,
        other => ErrorKind::Name(other),
    }
}

/// The records of some sections, one at a time; see [`Message::sections`]. After an error it
/// yields nothing more.
#[derive(Debug, Clone)]
pub struct Records<'a> {
    bytes: &'a [u8],
    /// Offset of the next record.
    at: usize,
    section: Section,
    /// Number of the next record in `section`.
    index: u16,
    counts: [u16; 3],
    first: Section,
    last: Section,
    done: bool,
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<Record<'a>, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            let section = self.section;
            let announced = self.counts.get(section.index()).copied().unwrap_or(0);
            if section >= self.first && self.index < announced.min(MAX_SECTION_RECORDS) {
                let item = read_record(self.bytes, &mut self.at, section, self.index);
                match &item {
                    Ok(_) => self.index += 1,
                    Err(_) => self.done = true,
                }
                return Some(item);
            }
            // This section is done with: on to the next one wanted, if any, stepping over the
            // rest of this one.
            let Some(next) = section.next().filter(|s| *s <= self.last) else {
                self.done = true;
                break;
            };
            while self.index < announced {
                match skip_record(self.bytes, self.at) {
                    Ok(end) => self.at = end,
                    Err((at, kind)) => {
                        self.done = true;
                        return Some(Err(Error {
                            place: Place::Record(section, self.index),
                            at,
                            kind,
                        }));
                    }
                }
                self.index += 1;
            }
            self.section = next;
            self.index = 0;
        }
        None
    }
}

/// Type, class, TTL and data length: the 10 bytes after a record's owner name.
const FIXED: usize = 10;

/// Step over the record at `at`: its owner name in place, fixed fields and data by length.
fn skip_record(bytes: &[u8], at: usize) -> Result<usize, (usize, ErrorKind)> {
    let after = name::skip(bytes, at).map_err(|e| (e.at, name_kind(e.kind)))?;
    let len = be16(bytes, after + 8).ok_or((bytes.len(), ErrorKind::Truncated))?;
    let end = after + FIXED + usize::from(len);
    if end > bytes.len() {
        return Err((bytes.len(), ErrorKind::Truncated));
    }
    Ok(end)
}

/// Read the record at `*next`, and move `*next` past it.
fn read_record<'a>(
    bytes: &'a [u8],
    next: &mut usize,
    section: Section,
    index: u16,
) -> Result<Record<'a>, Error> {
    let at = *next;
    let place = Place::Record(section, index);
    let err = |at, kind| Error { place, at, kind };
    let mut owner = Name::root();
    let after = name::read(bytes, at, &mut owner).map_err(|e| name_error(place, e))?;
    let (Some(rtype), Some(class), Some(ttl), Some(len)) = (
        be16(bytes, after),
        be16(bytes, after + 2),
        be32(bytes, after + 4),
        be16(bytes, after + 8),
    ) else {
        return Err(err(bytes.len(), ErrorKind::Truncated));
    };
    let start = after + FIXED;
    let end = start + usize::from(len);
    let Some(raw) = bytes.get(start..end) else {
        return Err(err(bytes.len(), ErrorKind::Truncated));
    };
    let bad = err(start, ErrorKind::Data { rtype, len });
    // A name in the data: it may point anywhere before it; its own bytes lie inside the data
    // and end where the data does.
    let in_data = bytes.get(..end).unwrap_or_default();
    let name_at = |from: usize| -> Result<Name, Error> {
        let mut n = Name::root();
        match name::read(in_data, from, &mut n) {
            Ok(after) if after == end => Ok(n),
            Ok(_) => Err(bad),
            Err(e) if e.kind == NameErrorKind::Truncated => Err(bad),
            Err(e) => Err(name_error(place, e)),
        }
    };
    let data = match rtype {
        rtype::A => RData::A(Ipv4Addr::from(<[u8; 4]>::try_from(raw).map_err(|_| bad)?)),
        rtype::AAAA => RData::Aaaa(Ipv6Addr::from(<[u8; 16]>::try_from(raw).map_err(|_| bad)?)),
        rtype::CNAME => RData::Cname(name_at(start)?),
        rtype::DNAME => RData::Dname(name_at(start)?),
        rtype::NS => RData::Ns(name_at(start)?),
        rtype::PTR => RData::Ptr(name_at(start)?),
        rtype::MX => RData::Mx {
            preference: be16(raw, 0).ok_or(bad)?,
            exchange: name_at(start + 2)?,
        },
        rtype::SRV => RData::Srv {
            priority: be16(raw, 0).ok_or(bad)?,
            weight: be16(raw, 2).ok_or(bad)?,
            port: be16(raw, 4).ok_or(bad)?,
            target: name_at(start + 6)?,
        },
        _ => RData::Other(raw),
    };
    *next = end;
    Ok(Record {
        section,
        index,
        offset: at,
        owner,
        rtype,
        class,
        ttl,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len() / 2)
            .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
            .collect()
    }

    /// nsd 4.6.1's answer to `WwW.NfQm.Example A` (with EDNS), captured on loopback: a CNAME
    /// into the zone and three A records; two NS in authority; glue (A, A, AAAA) and an OPT in
    /// additional. nsd keeps the question's case and compresses into it.
    const REAL_A: &str = "\
        d7f6 8500 0001 0004 0002 0004 0357 7757 044e 6651 6d07 4578 616d 706c 6500 0001 \
        0001 c00c 0005 0001 0000 003c 000b 0465 6467 6503 6364 6ec0 10c0 2e00 0100 0100 \
        0000 1400 04c6 1207 01c0 2e00 0100 0100 0000 1400 04c6 1207 02c0 2e00 0100 0100 \
        0000 1400 04c6 1207 03c0 1000 0200 0100 0001 2c00 0603 6e73 31c0 10c0 1000 0200 \
        0100 0001 2c00 0603 6e73 32c0 10c0 7500 0100 0100 0001 2c00 04c6 1200 35c0 8700 \
        0100 0100 0001 2c00 04c6 1200 36c0 7500 1c00 0100 0001 2c00 1020 010d b800 0000 \
        0000 0000 0000 0000 5300 0029 04d0 0000 0000 0000";

    /// nsd's answer to `_sip._udp.nfqm.example SRV`: the SRV target sent uncompressed; glue
    /// for the name servers and an AAAA for the target in additional.
    const REAL_SRV: &str = "\
        4cac 8500 0001 0001 0002 0005 045f 7369 7004 5f75 6470 046e 6671 6d07 6578 616d \
        706c 6500 0021 0001 c00c 0021 0001 0000 012c 0018 000a 0005 13c4 0373 6970 046e \
        6671 6d07 6578 616d 706c 6500 c016 0002 0001 0000 012c 0006 036e 7331 c016 c016 \
        0002 0001 0000 012c 0006 036e 7332 c016 c058 0001 0001 0000 012c 0004 c612 0035 \
        c06a 0001 0001 0000 012c 0004 c612 0036 0373 6970 c016 001c 0001 0000 012c 0010 \
        2001 0db8 0000 0000 0000 0000 0000 5060 c058 001c 0001 0000 012c 0010 2001 0db8 \
        0000 0000 0000 0000 0000 0053 0000 2904 d000 0000 0000 00";

    /// nsd's answer to `mail.nfqm.example MX`: the exchange compressed.
    const REAL_MX: &str = "\
        fb30 8500 0001 0001 0002 0005 046d 6169 6c04 6e66 716d 0765 7861 6d70 6c65 0000 \
        0f00 01c0 0c00 0f00 0100 0001 2c00 0800 0a03 6d78 31c0 11c0 1100 0200 0100 0001 \
        2c00 0603 6e73 31c0 11c0 1100 0200 0100 0001 2c00 0603 6e73 32c0 11c0 3100 0100 \
        0100 0001 2c00 04c6 1200 19c0 4300 0100 0100 0001 2c00 04c6 1200 35c0 5500 0100 \
        0100 0001 2c00 04c6 1200 36c0 4300 1c00 0100 0001 2c00 1020 010d b800 0000 0000 \
        0000 0000 0000 5300 0029 04d0 0000 0000 0000";

    /// Hand-made: compression at every place a name may be compressed. Question
    /// `www.nfqm.example A` at 12 (`nfqm.example` at 16, its root label at 29), then:
    /// - answer 1 (34): owner a pointer to the question; CNAME `edge.cdn` + pointer to 16;
    /// - answer 2 (57): owner a pointer to answer 1's data (which ends in a pointer); A;
    /// - answer 3 (73): owner a pointer into the middle of answer 1's data (`cdn...`); DNAME
    ///   `cdn.net` + a pointer to the question's root label;
    /// - answer 4 (95): owner `mail` + a pointer to answer 2's owner (itself a pointer); MX 10,
    ///   exchange `mx` + a pointer to answer 3's data;
    /// - answer 5 (119): owner `_sip._udp` + pointer to 16; SRV 1 2 5060, target a pointer to
    ///   the question;
    /// - authority 1 (149): owner a pointer to 16; NS `ns1` + a pointer to answer 3's owner (a
    ///   pointer to a pointer);
    /// - additional 1 (167): owner a pointer to the NS data; AAAA;
    /// - additional 2 (195): owner uncompressed `53.0.18.198.in-addr.arpa`; PTR, a pointer to
    ///   additional 1's owner;
    /// - additional 3 (233): OPT, root owner, no data.
    const COMPRESSED: &str = "\
        00018180000100050001000303777777 046e66716d076578616d706c65000001 0001c00c000500010000003c000b0465 \
        6467650363646ec010c02e0001000100 0000140004c6120701c0330027000100 00001e000a0363646e036e6574c01d04 \
        6d61696cc039000f0001000000280007 000a026d78c055045f736970045f7564 70c01000210001000000320008000100 \
        0213c4c00cc010000200010000012c00 06036e7331c049c0a1001c0001000001 2c001020010db8000000000000000000 \
        00005302353301300231380331393807 696e2d61646472046172706100000c00 010000012c0002c0a700002900010000 \
        00000000";

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    /// Every record of `bytes`, and the error that ended them, if any.
    fn all(bytes: &[u8]) -> (Vec<Record<'_>>, Option<Error>) {
        let msg = match Message::parse(bytes) {
            Ok(m) => m,
            Err(e) => return (Vec::new(), Some(e)),
        };
        let mut out = Vec::new();
        for r in msg.records() {
            match r {
                Ok(r) => out.push(r),
                Err(e) => return (out, Some(e)),
            }
        }
        (out, None)
    }

    fn records(bytes: &[u8]) -> Vec<Record<'_>> {
        let (records, error) = all(bytes);
        assert_eq!(error, None);
        records
    }

    /// A record as text: `section owner TYPE ttl data`.
    fn show(r: &Record<'_>) -> String {
        let data = match &r.data {
            RData::A(a) => a.to_string(),
            RData::Aaaa(a) => a.to_string(),
            RData::Cname(n) | RData::Dname(n) | RData::Ns(n) | RData::Ptr(n) => n.to_string(),
            RData::Mx {
                preference,
                exchange,
            } => format!("{preference} {exchange}"),
            RData::Srv {
                priority,
                weight,
                port,
                target,
            } => format!("{priority} {weight} {port} {target}"),
            RData::Other(raw) => format!("raw {} bytes", raw.len()),
        };
        format!(
            "{} {} {} {} {data}",
            r.section,
            r.owner,
            rtype::Show(r.rtype),
            r.ttl
        )
    }

    fn shown(bytes: &[u8]) -> Vec<String> {
        records(bytes).iter().map(show).collect()
    }

    #[test]
    fn real_answer_is_read_record_by_record() {
        let bytes = unhex(REAL_A);
        let msg = Message::parse(&bytes).unwrap();
        assert_eq!(msg.id, 0xd7f6);
        assert!(msg.response());
        assert_eq!(msg.rcode(), 0);
        assert_eq!(
            msg.counts,
            Counts {
                questions: 1,
                answers: 4,
                authorities: 2,
                additionals: 4
            }
        );
        let q = msg.question().unwrap();
        assert_eq!(
            (q.name.to_string(), q.qtype, q.qclass),
            ("www.nfqm.example.".into(), 1, 1)
        );
        assert_eq!(
            q.key(),
            crate::dns::parse_udp(&bytes).unwrap().question.unwrap().key
        );
        assert!(!msg.clamped());
        assert_eq!(
            shown(&bytes),
            [
                "answer www.nfqm.example. CNAME 60 edge.cdn.nfqm.example.",
                "answer edge.cdn.nfqm.example. A 20 198.18.7.1",
                "answer edge.cdn.nfqm.example. A 20 198.18.7.2",
                "answer edge.cdn.nfqm.example. A 20 198.18.7.3",
                "authority nfqm.example. NS 300 ns1.nfqm.example.",
                "authority nfqm.example. NS 300 ns2.nfqm.example.",
                "additional ns1.nfqm.example. A 300 198.18.0.53",
                "additional ns2.nfqm.example. A 300 198.18.0.54",
                "additional ns1.nfqm.example. AAAA 300 2001:db8::53",
                "additional . OPT 0 raw 0 bytes",
            ]
        );
        let rs = records(&bytes);
        assert_eq!(
            rs.last().map(|r| r.class),
            Some(1232),
            "OPT's class is its payload size"
        );
        assert_eq!(
            rs.iter().map(|r| r.offset).take(2).collect::<Vec<_>>(),
            [34, 57]
        );
        assert_eq!(
            rs.iter()
                .map(|r| (r.section, r.index))
                .skip(3)
                .take(3)
                .collect::<Vec<_>>(),
            [
                (Section::Answer, 3),
                (Section::Authority, 0),
                (Section::Authority, 1)
            ]
        );
    }

    #[test]
    fn real_srv_and_mx_answers_give_their_targets() {
        assert_eq!(
            shown(&unhex(REAL_SRV)),
            [
                "answer _sip._udp.nfqm.example. SRV 300 10 5 5060 sip.nfqm.example.",
                "authority nfqm.example. NS 300 ns1.nfqm.example.",
                "authority nfqm.example. NS 300 ns2.nfqm.example.",
                "additional ns1.nfqm.example. A 300 198.18.0.53",
                "additional ns2.nfqm.example. A 300 198.18.0.54",
                "additional sip.nfqm.example. AAAA 300 2001:db8::5060",
                "additional ns1.nfqm.example. AAAA 300 2001:db8::53",
                "additional . OPT 0 raw 0 bytes",
            ]
        );
        let mx = unhex(REAL_MX);
        let rs = records(&mx);
        assert_eq!(
            show(&rs[0]),
            "answer mail.nfqm.example. MX 300 10 mx1.nfqm.example."
        );
        assert_eq!(rs[0].target(), Some(&name("mx1.nfqm.example")));
        assert_eq!(rs[3].address(), Some("198.18.0.25".parse().unwrap()));
        assert_eq!(rs[0].address(), None);
    }

    #[test]
    fn compression_at_every_legal_place_is_expanded() {
        let bytes = unhex(COMPRESSED);
        assert_eq!(
            shown(&bytes),
            [
                "answer www.nfqm.example. CNAME 60 edge.cdn.nfqm.example.",
                "answer edge.cdn.nfqm.example. A 20 198.18.7.1",
                "answer cdn.nfqm.example. DNAME 30 cdn.net.",
                "answer mail.edge.cdn.nfqm.example. MX 40 10 mx.cdn.net.",
                "answer _sip._udp.nfqm.example. SRV 50 1 2 5060 www.nfqm.example.",
                "authority nfqm.example. NS 300 ns1.cdn.nfqm.example.",
                "additional ns1.cdn.nfqm.example. AAAA 300 2001:db8::53",
                "additional 53.0.18.198.in-addr.arpa. PTR 300 ns1.cdn.nfqm.example.",
                "additional . OPT 0 raw 0 bytes",
            ]
        );
        let offsets: Vec<usize> = records(&bytes).iter().map(|r| r.offset).collect();
        assert_eq!(offsets, [34, 57, 73, 95, 119, 149, 167, 195, 233]);
    }

    #[test]
    fn one_section_costs_no_decoding_of_the_others_and_reads_the_same() {
        for fixture in [REAL_A, REAL_SRV, REAL_MX, COMPRESSED] {
            let bytes = unhex(fixture);
            let msg = Message::parse(&bytes).unwrap();
            let every = records(&bytes);
            for s in [Section::Answer, Section::Authority, Section::Additional] {
                let one: Vec<Record<'_>> = msg.section(s).map(Result::unwrap).collect();
                let want: Vec<Record<'_>> =
                    every.iter().filter(|r| r.section == s).cloned().collect();
                assert_eq!(one, want, "{s}");
            }
            let referral: Vec<Record<'_>> = msg
                .sections(Section::Authority, Section::Additional)
                .map(Result::unwrap)
                .collect();
            assert_eq!(
                referral.as_slice(),
                &every[usize::from(msg.counts.answers)..]
            );
        }
        // Stepping over the answer section does not expand its names: a pointer that would be
        // refused there (forward) does not stop the authority section from being read.
        let mut bytes = unhex(REAL_A);
        bytes[34..36].copy_from_slice(&[0xc0, 0xc0]);
        let msg = Message::parse(&bytes).unwrap();
        assert_eq!(msg.section(Section::Authority).count(), 2);
        assert!(msg.section(Section::Authority).all(|r| r.is_ok()));
        let first = msg.records().next().unwrap().unwrap_err();
        assert_eq!(first.place, Place::Record(Section::Answer, 0));
        assert_eq!(
            first.kind,
            ErrorKind::Name(NameErrorKind::PointerNotBackward { target: 0xc0 })
        );
    }

    #[test]
    fn truncation_at_every_byte_of_a_real_answer_is_a_clean_error() {
        for fixture in [REAL_A, REAL_SRV, REAL_MX, COMPRESSED] {
            let bytes = unhex(fixture);
            let whole = records(&bytes);
            for len in 0..bytes.len() {
                let cut = &bytes[..len];
                let (got, error) = all(cut);
                let e = error.unwrap_or_else(|| panic!("cut at {len}: no error"));
                assert!(
                    matches!(e.kind, ErrorKind::Short | ErrorKind::Truncated),
                    "cut at {len}: {e}"
                );
                assert!(e.at <= len, "cut at {len}: error at {}", e.at);
                assert_eq!(got.as_slice(), &whole[..got.len()], "cut at {len}");
                assert!(!e.to_string().is_empty());
                // One section only: the same, or an error no later.
                if let Ok(msg) = Message::parse(cut) {
                    for s in [Section::Answer, Section::Authority, Section::Additional] {
                        let _ = msg.section(s).count();
                    }
                }
            }
            assert_eq!(all(&bytes).0.len(), whole.len());
        }
    }

    /// `bytes` with the header's four counts set.
    fn with_counts(bytes: &[u8], counts: [u16; 4]) -> Vec<u8> {
        let mut b = bytes.to_vec();
        for (i, c) in counts.iter().enumerate() {
            b[4 + 2 * i..6 + 2 * i].copy_from_slice(&c.to_be_bytes());
        }
        b
    }

    #[test]
    fn counts_that_lie_end_where_the_bytes_do() {
        let bytes = unhex(REAL_A);
        let whole = records(&bytes);
        // One more additional record than sent: the ten, then an error at the end.
        let more = with_counts(&bytes, [1, 4, 2, 5]);
        let (got, e) = all(&more);
        assert_eq!(got, whole);
        assert_eq!(
            e,
            Some(Error {
                place: Place::Record(Section::Additional, 4),
                at: bytes.len(),
                kind: ErrorKind::Truncated
            })
        );
        // Everything called an answer, and 65,535 of them announced: the ten, then an error.
        let many = with_counts(&bytes, [1, u16::MAX, 0, 0]);
        let (got, e) = all(&many);
        assert_eq!(got.len(), 10);
        assert!(got.iter().all(|r| r.section == Section::Answer));
        assert_eq!(
            e.map(|e| (e.place, e.kind)),
            Some((Place::Record(Section::Answer, 10), ErrorKind::Truncated))
        );
        // The same through the skipping path: asking for the additional section steps over
        // 65,535 announced answers and stops where the bytes run out.
        let lying = with_counts(&bytes, [1, u16::MAX, 0, 1]);
        let msg = Message::parse(&lying).unwrap();
        assert!(msg.clamped());
        let e = msg
            .section(Section::Additional)
            .next()
            .unwrap()
            .unwrap_err();
        assert_eq!(
            (e.place, e.kind),
            (Place::Record(Section::Answer, 10), ErrorKind::Truncated)
        );
        // Fewer announced than sent: the rest is not read.
        assert_eq!(records(&with_counts(&bytes, [1, 2, 0, 0])), whole[..2]);
        assert_eq!(records(&with_counts(&bytes, [1, 0, 0, 0])), []);
        // Questions: none announced, so the question's bytes are read as a record and fail;
        // too many announced are refused before any is read.
        let none = with_counts(&bytes, [0, 4, 2, 4]);
        let (got, e) = all(&none);
        assert!(got.is_empty());
        assert!(e.is_some());
        let e = Message::parse(&with_counts(&bytes, [u16::MAX, 4, 2, 4])).unwrap_err();
        assert_eq!(e.kind, ErrorKind::TooManyQuestions(u16::MAX));
        assert!(Message::parse(&with_counts(&bytes, [MAX_QUESTIONS, 4, 2, 4])).is_err());
    }

    #[test]
    fn header_only_message_has_no_question_and_no_records() {
        let bytes = with_counts(&unhex(REAL_A)[..12], [0, 0, 0, 0]);
        let msg = Message::parse(&bytes).unwrap();
        assert_eq!(msg.question(), None);
        assert_eq!(msg.records().count(), 0);
        for len in 0..12 {
            let e = Message::parse(&bytes[..len]).unwrap_err();
            assert_eq!((e.place, e.kind), (Place::Header, ErrorKind::Short));
        }
    }

    /// A response to `a.example A` (question at 12, `example` at 14) with `records` (hex) in
    /// the answer section, `n` of them announced.
    fn answer_with(n: u16, records: &str) -> Vec<u8> {
        let mut b = unhex("0001 8180 0001 0000 0000 0000 0161 0765 7861 6d70 6c65 00 0001 0001");
        b[6..8].copy_from_slice(&n.to_be_bytes());
        b.extend(unhex(records));
        b
    }

    fn error(bytes: &[u8]) -> Error {
        all(bytes).1.unwrap_or_else(|| panic!("no error"))
    }

    #[test]
    fn pointer_loops_and_forward_pointers_in_records_are_refused_with_their_place() {
        // Answer 1 at 29: owner a forward pointer to answer 2's owner at 43.
        let fwd = answer_with(
            2,
            "c02b 0001 0001 0000 003c 0004 c6120701  c01d 0001 0001 0000 003c 0004 c6120702",
        );
        let e = error(&fwd);
        assert_eq!(e.place, Place::Record(Section::Answer, 0));
        assert_eq!(e.at, 27);
        assert_eq!(
            e.kind,
            ErrorKind::Name(NameErrorKind::PointerNotBackward { target: 43 })
        );
        assert!(
            e.to_string()
                .starts_with("answer record 1: compression pointer at byte 27"),
            "{e}"
        );
        // A CNAME whose data points to itself.
        let own = answer_with(1, "c00c 0005 0001 0000 003c 0002 c027");
        let e = error(&own);
        assert_eq!(
            e.kind,
            ErrorKind::Name(NameErrorKind::PointerNotBackward { target: 39 })
        );
        // A CNAME to its own owner is legal wire (a loop for a resolver, not for the reader).
        let to_owner = answer_with(1, "c00c 0005 0001 0000 003c 0002 c00c");
        assert_eq!(shown(&to_owner), ["answer a.example. CNAME 60 a.example."]);
        // Two names pointing at each other (a loop): the first one read points forward.
        let looped = answer_with(
            2,
            "c02b 0001 0001 0000 003c 0004 c6120701  c01d 0001 0001 0000 003c 0004 c6120702",
        );
        assert_eq!(looped, fwd);
        // Into the header.
        let e = error(&answer_with(1, "c002 0001 0001 0000 003c 0004 c6120701"));
        assert_eq!(
            e.kind,
            ErrorKind::Name(NameErrorKind::PointerIntoHeader { target: 2 })
        );
        // A label type 0x80.
        let e = error(&answer_with(1, "8001 0001 0001 0000 003c 0004 c6120701"));
        assert_eq!(e.kind, ErrorKind::Name(NameErrorKind::LabelType(0x80)));
    }

    #[test]
    fn data_that_does_not_fit_its_type_is_refused() {
        for (rtype, data) in [
            ("0001", "0003 c61207"),
            ("0001", "0005 c612070101"),
            ("001c", "000f 20010db80000000000000000000000"),
            ("0005", "0003 c00c 00"),      // a name, then a stray byte
            ("0005", "0000"),              // no name at all
            ("0002", "0001 c0"),           // half a pointer, inside the data
            ("000f", "0002 000a"),         // MX without an exchange
            ("000f", "0001 00"),           // MX without a whole preference
            ("0021", "0006 000100020003"), // SRV without a target
        ] {
            let bytes = answer_with(1, &format!("c00c {rtype} 0001 0000 003c {data}"));
            let e = error(&bytes);
            let t = u16::from_str_radix(rtype, 16).unwrap();
            assert!(
                matches!(e.kind, ErrorKind::Data { rtype, .. } if rtype == t),
                "{rtype} {data}: {e}"
            );
            assert_eq!(e.at, 39, "{rtype} {data}");
        }
        // Data past the message's end.
        let e = error(&answer_with(1, "c00c 0001 0001 0000 003c 0004 c612"));
        assert_eq!((e.kind, e.at), (ErrorKind::Truncated, 41));
        // Other types are raw, whatever their length.
        let txt = answer_with(1, "c00c 0010 0001 0000 003c 0003 026869");
        assert_eq!(records(&txt)[0].data, RData::Other(b"\x02hi"));
        let empty = answer_with(1, "c00c 00ff 0001 0000 003c 0000");
        assert_eq!(records(&empty)[0].data, RData::Other(b""));
    }

    #[test]
    fn labels_of_63_and_64_and_names_of_255_and_256_in_records() {
        let l63 = format!("3f{}", "61".repeat(63));
        let l64 = format!("40{}", "61".repeat(64));
        // Owner with a 63-byte label, then a CNAME to a 63-byte label under the question.
        let ok = answer_with(1, &format!("{l63} 00 0005 0001 0000 003c 0042 {l63} c00c"));
        let r = &records(&ok)[0];
        assert_eq!(r.owner.wire().len(), 65);
        assert_eq!(r.target().map(|n| n.label_count()), Some(3));
        let e = error(&answer_with(
            1,
            &format!("{l64} 00 0005 0001 0000 003c 0002 c00c"),
        ));
        assert_eq!(e.kind, ErrorKind::Name(NameErrorKind::LabelType(0x40)));
        let e = error(&answer_with(
            1,
            &format!("c00c 0005 0001 0000 003c 0043 {l64} c00c"),
        ));
        assert_eq!(e.kind, ErrorKind::Name(NameErrorKind::LabelType(0x40)));
        // 255 bytes: three 63-byte labels, one of 61, the root.
        let l61 = format!("3d{}", "62".repeat(61));
        let wire255 = format!("{l63}{l63}{l63}{l61}00");
        let ok = answer_with(1, &format!("{wire255} 0001 0001 0000 003c 0004 c6120701"));
        assert_eq!(records(&ok)[0].owner.wire().len(), 255);
        let wire256 = format!("{l63}{l63}{l63}3e{}00", "62".repeat(62));
        let e = error(&answer_with(
            1,
            &format!("{wire256} 0001 0001 0000 003c 0004 c6120701"),
        ));
        assert_eq!(e.kind, ErrorKind::Name(NameErrorKind::TooLong));
        // 256 through compression: 246 bytes of labels then a pointer to the question
        // (a.example, 11 bytes): 257. With 244 bytes: 255.
        let l60 = format!("3c{}", "63".repeat(60));
        let head246 = format!("{l60}{l60}{l60}{l60}0164"); // 4 * 61 + 2
        let e = error(&answer_with(
            1,
            &format!("{head246} c00c 0001 0001 0000 003c 0004 c6120701"),
        ));
        assert_eq!(e.kind, ErrorKind::Name(NameErrorKind::TooLong));
        let head244 = format!("{l60}{l60}{l60}{l60}");
        let ok = answer_with(1, &format!("c00c 0005 0001 0000 003c 00f6 {head244} c00c"));
        assert_eq!(records(&ok)[0].target().map(|n| n.wire().len()), Some(255));
    }

    #[test]
    fn sections_are_clamped_and_the_rest_stepped_over() {
        let n = MAX_SECTION_RECORDS + 44;
        let a = "c00c 0001 0001 0000 003c 0004 c6120701 ".repeat(usize::from(n));
        let mut bytes = answer_with(n, &a);
        // One NS in authority after them.
        bytes[8..10].copy_from_slice(&1u16.to_be_bytes());
        bytes.extend(unhex("c00e 0002 0001 0000 0e10 0002 c00c"));
        let msg = Message::parse(&bytes).unwrap();
        assert!(msg.clamped());
        assert_eq!(
            msg.section(Section::Answer).count(),
            usize::from(MAX_SECTION_RECORDS)
        );
        let every = records(&bytes);
        assert_eq!(every.len(), usize::from(MAX_SECTION_RECORDS) + 1);
        assert_eq!(
            show(every.last().unwrap()),
            "authority example. NS 3600 a.example."
        );
        assert_eq!(
            msg.section(Section::Authority)
                .map(Result::unwrap)
                .collect::<Vec<_>>(),
            every[usize::from(MAX_SECTION_RECORDS)..]
        );
    }

    #[test]
    fn every_byte_flip_of_the_fixtures_ends_cleanly() {
        for fixture in [REAL_A, REAL_SRV, REAL_MX, COMPRESSED] {
            let bytes = unhex(fixture);
            for i in 0..bytes.len() {
                for value in [0x00, 0x01, 0x3f, 0x40, 0x80, 0xc0, 0xc1, 0xff] {
                    let mut b = bytes.clone();
                    b[i] = value;
                    let (got, e) = all(&b);
                    assert!(got.len() <= 3 * usize::from(MAX_SECTION_RECORDS));
                    if let Some(e) = e {
                        assert!(e.at <= b.len(), "{e}");
                        assert!(!e.to_string().is_empty());
                    }
                }
            }
        }
    }

    #[test]
    fn error_display_says_what_and_where() {
        let e = Error {
            place: Place::Record(Section::Additional, 2),
            at: 99,
            kind: ErrorKind::Data { rtype: 1, len: 3 },
        };
        assert_eq!(
            e.to_string(),
            "additional record 3: A data of 3 bytes at byte 99 does not hold its value"
        );
        let e = Error {
            place: Place::Question(0),
            at: 40,
            kind: ErrorKind::Truncated,
        };
        assert_eq!(e.to_string(), "question 1: the message ends at byte 40");
        let e = Error {
            place: Place::Header,
            at: 4,
            kind: ErrorKind::TooManyQuestions(300),
        };
        assert!(e.to_string().contains("300 questions"));
        let e = Error {
            place: Place::Header,
            at: 7,
            kind: ErrorKind::Short,
        };
        assert!(e.to_string().contains("7 bytes"));
    }
}
