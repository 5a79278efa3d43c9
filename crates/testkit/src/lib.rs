//! nfqmark-testkit: packet builders for nfqmark's unit tests, integration tests, benchmarks,
//! fuzz seeds and the lab's own tests: real wire bytes, built with etherparse (IP, UDP, TCP)
//! and hickory-proto (DNS), never hand-typed hex that can drift.
//!
//! This crate owns building test packets and nothing else. It must never be a normal
//! dependency of the shipped `nfqmark` binary, and never depends on nfqmark (so a type built
//! here is never a second copy of one of nfqmark's). It is test code: a builder given input it
//! cannot turn into the packet asked for (a name that is not a DNS name, a message too long for
//! TCP's length prefix, addresses of two families) panics naming that input, at the caller's
//! line, instead of quietly building another packet (a mistyped name used to become the root).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a builder given input it cannot build panics naming it (above)"
)]

use std::net::{IpAddr, Ipv4Addr};

use etherparse::PacketBuilder;
pub use hickory_proto;
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};

pub mod capture;

/// A DNS message with one question. `response` sets QR.
#[track_caller]
pub fn dns_message(id: u16, name: &str, qtype: RecordType, response: bool) -> Vec<u8> {
    dns_message_with_opcode(id, name, qtype, response, OpCode::Query)
}

/// A DNS message with one question and the given OPCODE (NOTIFY, UPDATE, STATUS...).
#[track_caller]
pub fn dns_message_with_opcode(
    id: u16,
    name: &str,
    qtype: RecordType,
    response: bool,
    opcode: OpCode,
) -> Vec<u8> {
    let mut msg = Message::new(id, message_type(response), opcode);
    msg.add_query(Query::query(dns_name(name), qtype));
    encode(&msg, name)
}

/// A DNS answer for `name` (type A) with one A record per address: a message that can be made
/// as long as a test needs (to split it over TCP segments, say).
#[track_caller]
pub fn dns_answer_a(id: u16, name: &str, addrs: &[Ipv4Addr]) -> Vec<u8> {
    let mut msg = Message::new(id, MessageType::Response, OpCode::Query);
    let owner = dns_name(name);
    msg.add_query(Query::query(owner.clone(), RecordType::A));
    for addr in addrs {
        msg.add_answer(Record::from_rdata(owner.clone(), 300, RData::A(A(*addr))));
    }
    encode(&msg, name)
}

/// A DNS header with no question (QDCOUNT 0).
#[track_caller]
pub fn dns_header_only(id: u16, response: bool) -> Vec<u8> {
    encode(
        &Message::new(id, message_type(response), OpCode::Query),
        "(no question)",
    )
}

/// A DNS query for `name` (type A).
#[track_caller]
pub fn dns_query(id: u16, name: &str) -> Vec<u8> {
    dns_message(id, name, RecordType::A, false)
}

/// A DNS answer (no records) for `name` (type A).
#[track_caller]
pub fn dns_answer(id: u16, name: &str) -> Vec<u8> {
    dns_message(id, name, RecordType::A, true)
}

/// Frame a DNS message for TCP: two-byte length, then the message. Panics when the message is
/// longer than the prefix can say (65,535 bytes).
#[track_caller]
pub fn tcp_framed(message: &[u8]) -> Vec<u8> {
    let Ok(len) = u16::try_from(message.len()) else {
        panic!(
            "testkit::tcp_framed: a {}-byte message does not fit TCP's two-byte length prefix \
             (65,535 at most)",
            message.len()
        );
    };
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(message);
    out
}

/// An IP/UDP packet. Panics when `src` and `dst` are of different families.
#[track_caller]
pub fn udp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, payload: &[u8]) -> Vec<u8> {
    let builder = ip_step(src, dst).udp(sport, dport);
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    if let Err(e) = builder.write(&mut out, payload) {
        panic!(
            "testkit::udp: {src}:{sport} -> {dst}:{dport} with {} payload bytes: {e}",
            payload.len()
        );
    }
    out
}

/// The sequence number of the first data byte of the TCP packets built here ([`tcp`]); the SYN
/// ([`tcp_syn`]) comes just before it.
pub const TCP_DATA_SEQ: u32 = 1000;

/// An IP/TCP packet with ACK and PSH set (a data segment), the first of its connection's data.
/// Panics when `src` and `dst` are of different families.
#[track_caller]
pub fn tcp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, payload: &[u8]) -> Vec<u8> {
    tcp_seq(src, sport, dst, dport, TCP_DATA_SEQ, payload)
}

/// A data segment starting at sequence number `seq` (a later segment of a stream starts
/// at `TCP_DATA_SEQ` plus the bytes sent before it). Panics when `src` and `dst` are of
/// different families.
#[track_caller]
pub fn tcp_seq(
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
    seq: u32,
    payload: &[u8],
) -> Vec<u8> {
    let builder = ip_step(src, dst).tcp(sport, dport, seq, 64240).ack(1).psh();
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    if let Err(e) = builder.write(&mut out, payload) {
        panic!(
            "testkit::tcp_seq: {src}:{sport} -> {dst}:{dport} seq {seq} with {} payload bytes: {e}",
            payload.len()
        );
    }
    out
}

/// An IP/TCP SYN (no payload), whose data starts at [`TCP_DATA_SEQ`]. Panics when `src` and
/// `dst` are of different families.
#[track_caller]
pub fn tcp_syn(src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Vec<u8> {
    let builder = ip_step(src, dst)
        .tcp(sport, dport, TCP_DATA_SEQ - 1, 64240)
        .syn();
    let mut out = Vec::with_capacity(builder.size(0));
    if let Err(e) = builder.write(&mut out, &[]) {
        panic!("testkit::tcp_syn: {src}:{sport} -> {dst}:{dport}: {e}");
    }
    out
}

/// Overwrite the UDP length field of a packet built by [`udp`] (the checksum is left stale:
/// nfqmark does not check it). Returns false, changing nothing, when there is no such field.
pub fn set_udp_length(packet: &mut [u8], length: u16) -> bool {
    let Some(start) = transport_offset(packet).and_then(|t| t.checked_add(4)) else {
        return false;
    };
    match packet.get_mut(start..start + 2) {
        Some(field) => {
            field.copy_from_slice(&length.to_be_bytes());
            true
        }
        None => false,
    }
}

fn message_type(response: bool) -> MessageType {
    if response {
        MessageType::Response
    } else {
        MessageType::Query
    }
}

/// The name as typed (case kept, for 0x20 tests); panics naming it when it is not a DNS name.
#[track_caller]
fn dns_name(name: &str) -> Name {
    match Name::from_ascii(name) {
        Ok(n) => n,
        Err(e) => panic!("testkit: {name:?} is not a DNS name: {e}"),
    }
}

#[track_caller]
fn encode(msg: &Message, name: &str) -> Vec<u8> {
    match msg.to_vec() {
        Ok(bytes) => bytes,
        Err(e) => panic!("testkit: cannot encode the DNS message for {name:?}: {e}"),
    }
}

#[track_caller]
fn ip_step(src: IpAddr, dst: IpAddr) -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => PacketBuilder::ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => PacketBuilder::ipv6(s.octets(), d.octets(), 64),
        (s, d) => panic!(
            "testkit: no packet from {s} to {d}: the addresses are of different families \
             (write the IPv4 one as ::ffff:a.b.c.d for an IPv6 packet)"
        ),
    }
}

/// Where the transport header starts in a packet built here: after the IPv4 header (IHL words)
/// or the fixed 40-byte IPv6 header (the builders add no extension headers).
fn transport_offset(packet: &[u8]) -> Option<usize> {
    match packet.first()? >> 4 {
        4 => Some(usize::from(packet.first()? & 0x0f) * 4),
        6 => Some(40),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use super::*;

    const V4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 2));
    const V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2));

    #[test]
    fn builds_what_it_is_asked_for() {
        let q = dns_query(0x1234, "wWw.Example.COM");
        let msg = Message::from_vec(&q).unwrap();
        assert_eq!(msg.metadata.id, 0x1234);
        assert_eq!(msg.queries[0].name().to_ascii(), "wWw.Example.COM.");
        let root = dns_message(1, ".", RecordType::NS, false);
        assert!(
            Message::from_vec(&root).unwrap().queries[0]
                .name()
                .is_root()
        );
        let ans = dns_answer_a(7, "a.example", &[Ipv4Addr::new(192, 0, 2, 1)]);
        assert_eq!(Message::from_vec(&ans).unwrap().answers.len(), 1);
        assert_eq!(tcp_framed(&q)[..2], (q.len() as u16).to_be_bytes());
        let mut p = udp(V4, 1000, V4, 53, &q);
        assert_eq!(p.len(), 20 + 8 + q.len());
        assert!(set_udp_length(&mut p, 9));
        assert_eq!(p[24..26], 9u16.to_be_bytes());
        assert_eq!(tcp(V6, 1000, V6, 53, &q).len(), 40 + 20 + q.len());
        assert_eq!(tcp_syn(V6, 1000, V6, 53).len(), 40 + 20);
    }

    #[test]
    #[should_panic(expected = "\"www..example\" is not a DNS name")]
    fn a_mistyped_name_panics_naming_it() {
        dns_query(1, "www..example");
    }

    #[test]
    #[should_panic(expected = "is not a DNS name")]
    fn a_label_too_long_panics() {
        dns_answer_a(1, &"a".repeat(64), &[]);
    }

    #[test]
    #[should_panic(expected = "different families")]
    fn mixed_families_panic() {
        udp(V4, 1, V6, 53, b"x");
    }

    #[test]
    #[should_panic(expected = "70000-byte message")]
    fn a_message_too_long_for_tcp_panics() {
        tcp_framed(&vec![0; 70_000]);
    }
}
