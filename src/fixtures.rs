//! Packet builders for unit tests, integration tests and benchmarks: real wire bytes, built
//! with etherparse (IP, UDP, TCP) and hickory-proto (DNS), never hand-typed hex that can drift.
//!
//! Nothing on the packet path uses this module.

use std::net::{IpAddr, Ipv4Addr};

use etherparse::PacketBuilder;
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// A DNS message with one question. `response` sets QR.
pub fn dns_message(id: u16, name: &str, qtype: RecordType, response: bool) -> Vec<u8> {
    dns_message_with_opcode(id, name, qtype, response, OpCode::Query)
}

/// A DNS message with one question and the given OPCODE (NOTIFY, UPDATE, STATUS...).
pub fn dns_message_with_opcode(
    id: u16,
    name: &str,
    qtype: RecordType,
    response: bool,
    opcode: OpCode,
) -> Vec<u8> {
    let kind = if response {
        MessageType::Response
    } else {
        MessageType::Query
    };
    let mut msg = Message::new(id, kind, opcode);
    msg.add_query(Query::query(name_or_root(name), qtype));
    msg.to_vec().unwrap_or_default()
}

/// A DNS answer for `name` (type A) with one A record per address: a message that can be made
/// as long as a test needs (to split it over TCP segments, say).
pub fn dns_answer_a(id: u16, name: &str, addrs: &[Ipv4Addr]) -> Vec<u8> {
    let mut msg = Message::new(id, MessageType::Response, OpCode::Query);
    let owner = name_or_root(name);
    msg.add_query(Query::query(owner.clone(), RecordType::A));
    for addr in addrs {
        msg.add_answer(Record::from_rdata(owner.clone(), 300, RData::A(A(*addr))));
    }
    msg.to_vec().unwrap_or_default()
}

/// A DNS header with no question (QDCOUNT 0).
pub fn dns_header_only(id: u16, response: bool) -> Vec<u8> {
    let kind = if response {
        MessageType::Response
    } else {
        MessageType::Query
    };
    Message::new(id, kind, OpCode::Query)
        .to_vec()
        .unwrap_or_default()
}

/// The name as typed (case kept, for 0x20 tests), or the root when it is not a valid name.
fn name_or_root(name: &str) -> Name {
    Name::from_ascii(name).unwrap_or_else(|_| Name::root())
}

/// A DNS query for `name` (type A).
pub fn dns_query(id: u16, name: &str) -> Vec<u8> {
    dns_message(id, name, RecordType::A, false)
}

/// A DNS answer (no records) for `name` (type A).
pub fn dns_answer(id: u16, name: &str) -> Vec<u8> {
    dns_message(id, name, RecordType::A, true)
}

/// Frame a DNS message for TCP: two-byte length, then the message.
pub fn tcp_framed(message: &[u8]) -> Vec<u8> {
    let len = u16::try_from(message.len()).unwrap_or(u16::MAX);
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(message);
    out
}

fn ip_step(src: IpAddr, dst: IpAddr) -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => PacketBuilder::ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => PacketBuilder::ipv6(s.octets(), d.octets(), 64),
        (s, d) => {
            // Mixed families make no packet; build IPv6 with the v4 address mapped.
            let s6 = match s {
                IpAddr::V4(a) => a.to_ipv6_mapped(),
                IpAddr::V6(a) => a,
            };
            let d6 = match d {
                IpAddr::V4(a) => a.to_ipv6_mapped(),
                IpAddr::V6(a) => a,
            };
            PacketBuilder::ipv6(s6.octets(), d6.octets(), 64)
        }
    }
}

/// An IP/UDP packet.
pub fn udp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, payload: &[u8]) -> Vec<u8> {
    let builder = ip_step(src, dst).udp(sport, dport);
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut out, payload).unwrap_or_default();
    out
}

/// The sequence number of the first data byte of the TCP packets built here ([`tcp`]); the SYN
/// ([`tcp_syn`]) comes just before it.
pub const TCP_DATA_SEQ: u32 = 1000;

/// An IP/TCP packet with ACK and PSH set (a data segment), the first of its connection's data.
pub fn tcp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, payload: &[u8]) -> Vec<u8> {
    tcp_seq(src, sport, dst, dport, TCP_DATA_SEQ, payload)
}

/// A data segment starting at sequence number `seq` (a later segment of a stream starts
/// at `TCP_DATA_SEQ` plus the bytes sent before it).
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
    builder.write(&mut out, payload).unwrap_or_default();
    out
}

/// An IP/TCP SYN (no payload), whose data starts at [`TCP_DATA_SEQ`].
pub fn tcp_syn(src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Vec<u8> {
    let builder = ip_step(src, dst)
        .tcp(sport, dport, TCP_DATA_SEQ - 1, 64240)
        .syn();
    let mut out = Vec::with_capacity(builder.size(0));
    builder.write(&mut out, &[]).unwrap_or_default();
    out
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
