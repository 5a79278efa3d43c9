//! Target `answer`: nfqmark's record reader (`dns::answer`) and flow learning's use of it
//! (`flows::answer_addresses`), each against the hickory-proto code it replaced.
//!
//! The input is one DNS message. Checked, besides "no panic, no hang":
//!
//! - every name the reader gives is lower case, at most 255 bytes, labels at most 63, and
//!   survives the trip through presentation text and wire form; records come in message order
//!   with offsets inside the input; an error's offset lies inside the input; one section read
//!   alone equals that section of a full read; the question agrees with `dns::parse_udp`'s;
//! - **reader vs hickory-proto's `Message::from_vec`**: when both read the whole message, the
//!   same question and, section by section, the same records (owner, type, class, TTL; the
//!   address or name of A, AAAA, CNAME, NS, PTR, MX, SRV, and DNAME when its target is not
//!   compressed). hickory-proto moves OPT out of the additional section; it is left out on both
//!   sides. The intended differences, each asserted to be the only way the two may disagree:
//!   - nfqmark refuses, hickory-proto reads: a compression pointer into the 12-byte header; more
//!     than 64 pointers in one name; more than 16 questions; a DNAME whose data is not one name
//!     (hickory-proto keeps DNAME data raw); in an UPDATE message, empty data for a type nfqmark
//!     decodes (RFC 2136 prerequisites: hickory-proto reads it as "any");
//!   - nfqmark reads, hickory-proto refuses: anything in the data of a type nfqmark keeps raw
//!     (hickory-proto decodes SOA, TXT, OPT, SVCB, ... and refuses empty data outside UPDATE,
//!     OPT/SIG/TSIG outside the additional section, a second OPT, an OPT not owned by the
//!     root); records past the 256 per section nfqmark decodes, which it only steps over;
//! - **`answer_addresses` vs the hickory-based version it replaced** (kept below as
//!   [`reference_addresses`]): same names and addresses whenever both give a result. It may
//!   give none where the old one did only for the reasons above found in the header, question
//!   or answer section, and give one where the old one did not only when the old one refused
//!   something nfqmark does not read (the authority and additional sections) or keeps raw.

use std::net::IpAddr;

use hickory_proto::op::{Message as HMessage, OpCode};
use hickory_proto::rr::{Name as HName, RData as HRData, Record as HRecord, RecordType};
use nfqmark::dns::answer::{
    ErrorKind, MAX_SECTION_RECORDS, Message, Place, RData, Record, Section,
};
use nfqmark::dns::name::NameErrorKind;
use nfqmark::dns::{self, Name, rtype};
use nfqmark::flows::{self, ChainAddress, Resolution};

/// A hickory-proto name in nfqmark's form (lower case, wire form).
pub(crate) fn from_hickory(name: &HName) -> Name {
    let mut wire = Vec::with_capacity(256);
    for label in name.iter() {
        wire.push(label.len() as u8);
        wire.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    wire.push(0);
    Name::from_wire(&wire).unwrap_or_else(|e| panic!("hickory-proto read a name {name:?}: {e}"))
}

/// What both readers can say about a record's data.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Data {
    Addr(IpAddr),
    Name(Name),
    Mx(u16, Name),
    Srv(u16, u16, u16, Name),
    /// Data one side keeps raw or compressed: not compared.
    Unseen,
}

/// A record as both readers can give it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rr {
    owner: Name,
    rtype: u16,
    class: u16,
    ttl: u32,
    data: Data,
}

fn ours(r: &Record<'_>) -> Rr {
    let data = match &r.data {
        RData::A(a) => Data::Addr(IpAddr::V4(*a)),
        RData::Aaaa(a) => Data::Addr(IpAddr::V6(*a)),
        RData::Cname(n) | RData::Dname(n) | RData::Ns(n) | RData::Ptr(n) => Data::Name(n.clone()),
        RData::Mx {
            preference,
            exchange,
        } => Data::Mx(*preference, exchange.clone()),
        RData::Srv {
            priority,
            weight,
            port,
            target,
        } => Data::Srv(*priority, *weight, *port, target.clone()),
        RData::Other(_) => Data::Unseen,
    };
    Rr {
        owner: r.owner.clone(),
        rtype: r.rtype,
        class: r.class,
        ttl: r.ttl,
        data,
    }
}

fn theirs(r: &HRecord) -> Rr {
    let data = match &r.data {
        HRData::A(a) => Data::Addr(IpAddr::V4(a.0)),
        HRData::AAAA(a) => Data::Addr(IpAddr::V6(a.0)),
        HRData::CNAME(n) => Data::Name(from_hickory(&n.0)),
        HRData::NS(n) => Data::Name(from_hickory(&n.0)),
        HRData::PTR(n) => Data::Name(from_hickory(&n.0)),
        HRData::MX(mx) => Data::Mx(mx.preference, from_hickory(&mx.exchange)),
        HRData::SRV(s) => Data::Srv(s.priority, s.weight, s.port, from_hickory(&s.target)),
        // hickory-proto keeps DNAME raw: comparable when its target is sent uncompressed.
        HRData::Unknown { code, rdata } if *code == RecordType::DNAME => {
            match Name::from_wire(&rdata.anything) {
                Ok(n) => Data::Name(n),
                Err(_) => Data::Unseen,
            }
        }
        _ => Data::Unseen,
    };
    Rr {
        owner: from_hickory(&r.name),
        rtype: u16::from(r.record_type()),
        class: u16::from(r.dns_class),
        ttl: r.ttl,
        data,
    }
}

/// Equal, where a side that could not see the data (`Unseen`) matches anything.
fn same(a: &Rr, b: &Rr) -> bool {
    let data = a.data == b.data || a.data == Data::Unseen || b.data == Data::Unseen;
    a.owner == b.owner && a.rtype == b.rtype && a.class == b.class && a.ttl == b.ttl && data
}

/// The reader's invariants on one name.
fn check_name(n: &Name) {
    let wire = n.wire();
    assert!(wire.len() <= 255, "name of {} bytes", wire.len());
    assert_eq!(wire.last(), Some(&0), "no root label: {wire:?}");
    assert!(
        !wire.iter().any(u8::is_ascii_uppercase),
        "upper case in {n}"
    );
    assert!(n.labels().all(|l| !l.is_empty() && l.len() <= 63), "{n}");
    assert_eq!(Name::from_wire(wire).as_ref(), Ok(n), "wire form of {n}");
    assert_eq!(
        Name::from_ascii(&n.to_string()).as_ref(),
        Ok(n),
        "text of {n}"
    );
}

/// Every record our reader gives, section by section, and the error that ended them.
struct Read<'a> {
    msg: Message<'a>,
    records: Vec<Record<'a>>,
    error: Option<nfqmark::dns::answer::Error>,
}

fn read_all(data: &[u8]) -> Result<Read<'_>, nfqmark::dns::answer::Error> {
    let msg = Message::parse(data)?;
    let mut records = Vec::new();
    let mut error = None;
    for r in msg.records() {
        match r {
            Ok(r) => records.push(r),
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    Ok(Read {
        msg,
        records,
        error,
    })
}

fn check_invariants(data: &[u8], read: &Result<Read<'_>, nfqmark::dns::answer::Error>) {
    let r = match read {
        Ok(r) => r,
        Err(e) => {
            assert!(e.at <= data.len(), "{e}");
            let _ = e.to_string();
            return;
        }
    };
    if let Some(q) = r.msg.question() {
        check_name(&q.name);
        let simple = dns::parse_udp(data).unwrap_or_else(|e| {
            panic!("Message::parse reads the question, dns::parse_udp does not: {e}")
        });
        assert_eq!(simple.question.map(|q| q.key), Some(q.key()));
    }
    let mut last = None;
    for rec in &r.records {
        check_name(&rec.owner);
        if let Some(t) = rec.target() {
            check_name(t);
        }
        assert!(rec.offset < data.len());
        assert!(last.is_none_or(|l| l < rec.offset), "records out of order");
        last = Some(rec.offset);
    }
    assert!(r.records.len() <= 3 * usize::from(MAX_SECTION_RECORDS));
    if let Some(e) = &r.error {
        assert!(e.at <= data.len(), "{e}");
        assert!(!e.to_string().is_empty());
        return;
    }
    // A full read went through: each section alone reads the same.
    for s in [Section::Answer, Section::Authority, Section::Additional] {
        let alone: Vec<Record<'_>> = r
            .msg
            .section(s)
            .map(|x| x.unwrap_or_else(|e| panic!("{s} alone: {e}")))
            .collect();
        let want: Vec<&Record<'_>> = r.records.iter().filter(|x| x.section == s).collect();
        assert_eq!(alone.iter().collect::<Vec<_>>(), want, "{s} alone");
    }
}

/// Errors nfqmark gives on purpose where hickory-proto reads on (see the module header).
fn stricter_on_purpose(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::Name(NameErrorKind::PointerIntoHeader { .. })
            | ErrorKind::Name(NameErrorKind::TooManyHops)
            | ErrorKind::TooManyQuestions(_)
    )
}

/// Records of `section` in hickory-proto's message, OPT left out (it moves them to `edns`).
fn hickory_section(m: &HMessage, section: Section) -> &[HRecord] {
    match section {
        Section::Answer => &m.answers,
        Section::Authority => &m.authorities,
        Section::Additional => &m.additionals,
    }
}

fn compare_reader(
    read: &Result<Read<'_>, nfqmark::dns::answer::Error>,
    reference: &Result<HMessage, String>,
) {
    match (read, reference) {
        (Ok(r), Ok(h)) if r.error.is_none() => {
            let q = r
                .msg
                .question()
                .map(|q| (q.name.clone(), q.qtype, q.qclass));
            let hq = h.queries.first().map(|q| {
                (
                    from_hickory(q.name()),
                    u16::from(q.query_type()),
                    u16::from(q.query_class()),
                )
            });
            assert_eq!(q, hq, "question");
            for s in [Section::Answer, Section::Authority, Section::Additional] {
                let mine: Vec<Rr> = r
                    .records
                    .iter()
                    .filter(|x| {
                        x.section == s && !(s == Section::Additional && x.rtype == rtype::OPT)
                    })
                    .map(ours)
                    .collect();
                let mut other: Vec<Rr> = hickory_section(h, s).iter().map(theirs).collect();
                if r.msg.clamped() {
                    other.truncate(mine.len());
                }
                assert_eq!(
                    mine.len(),
                    other.len(),
                    "{s}: {mine:?}\nhickory-proto: {other:?}"
                );
                for (a, b) in mine.iter().zip(&other) {
                    assert!(same(a, b), "{s}: {a:?}\nhickory-proto: {b:?}");
                }
            }
        }
        (Ok(r), Ok(h)) => {
            let e = r.error.as_ref().map(|e| (e.place, e.kind));
            let Some((place, kind)) = e else { return };
            let dname = h
                .answers
                .iter()
                .chain(&h.authorities)
                .chain(&h.additionals)
                .any(|x| x.record_type() == RecordType::DNAME);
            let update_empty = h.metadata.op_code == OpCode::Update
                && matches!(kind, ErrorKind::Data { len: 0, .. });
            assert!(
                stricter_on_purpose(kind)
                    || update_empty
                    || (dname && matches!(place, Place::Record(..))),
                "nfqmark stops at {place} ({kind:?}); hickory-proto reads the whole message"
            );
        }
        (Err(e), Ok(_)) => assert!(
            stricter_on_purpose(e.kind),
            "nfqmark refuses the message ({e}); hickory-proto reads it"
        ),
        (Ok(r), Err(he)) if r.error.is_none() => {
            let raw = r.records.iter().any(|x| matches!(x.data, RData::Other(_)));
            assert!(
                raw || r.msg.clamped(),
                "nfqmark reads every record; hickory-proto refuses the message ({he}) though no \
                 record has data nfqmark keeps raw: {:?}",
                r.records.iter().map(ours).collect::<Vec<_>>()
            );
        }
        _ => {}
    }
}

/// `flows::answer_addresses` as it was, on hickory-proto (the reference for the new one).
pub fn reference_addresses(message: &[u8]) -> Option<Resolution> {
    const MAX_CHAIN: usize = 16;
    let msg = HMessage::from_vec(message).ok()?;
    let question = msg.queries.first()?.name().to_lowercase();
    let mut names = vec![question.clone()];
    let mut current = question;
    let mut chain_ttl = u32::MAX;
    for _ in 0..MAX_CHAIN {
        let cname = msg.answers.iter().find_map(|r| match &r.data {
            HRData::CNAME(target) if r.name.to_lowercase() == current => {
                Some((target.0.to_lowercase(), r.ttl))
            }
            _ => None,
        });
        let Some((target, ttl)) = cname else { break };
        if names.contains(&target) {
            break;
        }
        chain_ttl = chain_ttl.min(ttl);
        names.push(target.clone());
        current = target;
    }
    let addresses = msg
        .answers
        .iter()
        .filter(|r| r.name.to_lowercase() == current)
        .filter_map(|r| {
            let addr = match &r.data {
                HRData::A(a) => IpAddr::V4(a.0),
                HRData::AAAA(a) => IpAddr::V6(a.0),
                _ => return None,
            };
            Some(ChainAddress {
                addr,
                ttl: chain_ttl.min(r.ttl),
            })
        })
        .collect();
    Some(Resolution {
        names: names.iter().map(from_hickory).collect(),
        addresses,
    })
}

fn compare_addresses(data: &[u8], reference: &Result<HMessage, String>) {
    let new = flows::answer_addresses(data);
    let old = reference_addresses(data);
    match (&new, &old) {
        (Some(n), Some(o)) => {
            let clamped = Message::parse(data).is_ok_and(|m| m.clamped());
            if !clamped {
                assert_eq!(n, o, "answer_addresses differs from the hickory-based one");
            }
        }
        (None, Some(_)) => {
            // What stopped nfqmark in the header, question or answer section?
            let Err(e) = Message::parse(data)
                .and_then(|m| m.section(Section::Answer).try_for_each(|r| r.map(|_| ())))
            else {
                panic!("nfqmark learns nothing from an answer it reads whole")
            };
            let dname = reference.as_ref().is_ok_and(|h| {
                h.answers
                    .iter()
                    .any(|x| x.record_type() == RecordType::DNAME)
            });
            let update_empty = reference
                .as_ref()
                .is_ok_and(|h| h.metadata.op_code == OpCode::Update)
                && matches!(e.kind, ErrorKind::Data { len: 0, .. });
            assert!(
                stricter_on_purpose(e.kind) || dname || update_empty,
                "nfqmark learns nothing ({e}); the hickory-based reader learned {old:?}"
            );
        }
        (Some(_), None) => {
            let Ok(m) = Message::parse(data) else {
                panic!("a resolution from a message whose header nfqmark refuses")
            };
            let later = m.counts.authorities > 0 || m.counts.additionals > 0;
            let raw = m
                .section(Section::Answer)
                .any(|r| r.is_ok_and(|r| matches!(r.data, RData::Other(_))));
            assert!(
                later || raw || m.clamped(),
                "nfqmark learns {new:?}; the hickory-based reader refused a message whose \
                 records nfqmark reads whole ({reference:?})",
                reference = reference.as_ref().err()
            );
        }
        (None, None) => {}
    }
}

/// Target `answer`: see the module header.
pub fn answer(data: &[u8]) {
    let read = read_all(data);
    check_invariants(data, &read);
    let reference = HMessage::from_vec(data).map_err(|e| e.to_string());
    compare_reader(&read, &reference);
    compare_addresses(data, &reference);
}

/// Answers to seed the `answer` target, built with hickory-proto (which compresses names):
/// a CNAME chain to three A records, a referral (NS in authority, glue and an OPT in
/// additional), MX, SRV, PTR, a DNAME with its target sent whole, raw types (TXT, SOA).
pub fn seed_answers() -> Vec<(String, Vec<u8>)> {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use hickory_proto::op::{Edns, MessageType, OpCode, Query};
    use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, NS, NULL, PTR, SOA, SRV, TXT};

    fn name(s: &str) -> HName {
        HName::from_ascii(s).unwrap_or_else(|e| panic!("seed name {s}: {e}"))
    }
    fn message(q: &str, qtype: RecordType) -> HMessage {
        let mut m = HMessage::new(0x5eed, MessageType::Response, OpCode::Query);
        m.add_query(Query::query(name(q), qtype));
        m
    }
    fn rec(owner: &str, ttl: u32, data: HRData) -> HRecord {
        HRecord::from_rdata(name(owner), ttl, data)
    }
    let a = |o: &str, ip: [u8; 4]| rec(o, 20, HRData::A(A(Ipv4Addr::from(ip))));

    let mut out = Vec::new();
    let mut chain = message("WwW.Video.Example.", RecordType::A);
    chain.add_answer(rec(
        "www.video.example.",
        300,
        HRData::CNAME(CNAME(name("cdn.video.example."))),
    ));
    chain.add_answer(rec(
        "cdn.video.example.",
        60,
        HRData::CNAME(CNAME(name("edge-7.cdn.example."))),
    ));
    for last in 1..=3 {
        chain.add_answer(a("edge-7.cdn.example.", [198, 18, 7, last]));
    }
    out.push(("answer-cname-chain".to_string(), chain));

    let mut referral = message("www.nfqm.example.", RecordType::A);
    for ns in ["ns1.nfqm.example.", "ns2.elsewhere.example."] {
        referral.add_authority(rec("nfqm.example.", 3600, HRData::NS(NS(name(ns)))));
    }
    referral.add_additional(a("ns1.nfqm.example.", [198, 18, 0, 53]));
    referral.add_additional(rec(
        "ns1.nfqm.example.",
        3600,
        HRData::AAAA(AAAA(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x53))),
    ));
    referral.set_edns(Edns::new());
    out.push(("answer-referral".to_string(), referral));

    let mut mx = message("nfqm.example.", RecordType::MX);
    mx.add_answer(rec(
        "nfqm.example.",
        300,
        HRData::MX(MX::new(10, name("mx1.nfqm.example."))),
    ));
    mx.add_additional(a("mx1.nfqm.example.", [198, 18, 0, 25]));
    out.push(("answer-mx".to_string(), mx));

    let mut srv = message("_sip._udp.nfqm.example.", RecordType::SRV);
    srv.add_answer(rec(
        "_sip._udp.nfqm.example.",
        300,
        HRData::SRV(SRV::new(10, 5, 5060, name("sip.nfqm.example."))),
    ));
    out.push(("answer-srv".to_string(), srv));

    let mut ptr = message("53.0.18.198.in-addr.arpa.", RecordType::PTR);
    ptr.add_answer(rec(
        "53.0.18.198.in-addr.arpa.",
        300,
        HRData::PTR(PTR(name("ns1.nfqm.example."))),
    ));
    out.push(("answer-ptr".to_string(), ptr));

    let mut dname = message("a.old.example.", RecordType::A);
    let target = b"\x03new\x07example\x00".to_vec();
    dname.add_answer(rec(
        "old.example.",
        300,
        HRData::Unknown {
            code: RecordType::DNAME,
            rdata: NULL::with(target),
        },
    ));
    dname.add_answer(rec(
        "a.old.example.",
        300,
        HRData::CNAME(CNAME(name("a.new.example."))),
    ));
    dname.add_answer(a("a.new.example.", [198, 18, 9, 9]));
    out.push(("answer-dname".to_string(), dname));

    let mut raw = message("nfqm.example.", RecordType::TXT);
    raw.add_answer(rec(
        "nfqm.example.",
        300,
        HRData::TXT(TXT::new(vec!["v=spf1 -all".into()])),
    ));
    raw.add_authority(rec(
        "nfqm.example.",
        300,
        HRData::SOA(SOA::new(
            name("ns1.nfqm.example."),
            name("hostmaster.nfqm.example."),
            1,
            3600,
            600,
            86400,
            300,
        )),
    ));
    out.push(("answer-raw-types".to_string(), raw));

    out.into_iter()
        .map(|(n, m)| {
            let bytes = m.to_vec().unwrap_or_else(|e| panic!("seed {n}: {e}"));
            (n, bytes)
        })
        .collect()
}
