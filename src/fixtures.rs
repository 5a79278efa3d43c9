//! Packet builders for unit tests, integration tests and benchmarks: real wire bytes, built
//! with etherparse (IP, UDP, TCP) and hickory-proto (DNS), never hand-typed hex that can drift.
//!
//! Nothing on the packet path uses this module.

use std::net::IpAddr;

use etherparse::PacketBuilder;
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};

/// A DNS message with one question. `response` sets QR.
pub fn dns_message(id: u16, name: &str, qtype: RecordType, response: bool) -> Vec<u8> {
    let kind = if response {
        MessageType::Response
    } else {
        MessageType::Query
    };
    let mut msg = Message::new(id, kind, OpCode::Query);
    let name = Name::from_ascii(name).unwrap_or_else(|_| Name::root());
    msg.add_query(Query::query(name, qtype));
    msg.to_vec().unwrap_or_default()
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

/// An IP/TCP packet with ACK and PSH set (a data segment).
pub fn tcp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, payload: &[u8]) -> Vec<u8> {
    let builder = ip_step(src, dst)
        .tcp(sport, dport, 1000, 64240)
        .ack(1)
        .psh();
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut out, payload).unwrap_or_default();
    out
}

/// An IP/TCP SYN (no payload).
pub fn tcp_syn(src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Vec<u8> {
    let builder = ip_step(src, dst).tcp(sport, dport, 1000, 64240).syn();
    let mut out = Vec::with_capacity(builder.size(0));
    builder.write(&mut out, &[]).unwrap_or_default();
    out
}
