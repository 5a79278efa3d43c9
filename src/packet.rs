//! Raw IP packet -> addresses, ports, protocol and L4 payload.
//!
//! This module owns the first look at the bytes NFQUEUE hands us (which start at the IP header).
//! It never allocates and never panics: every length is checked by etherparse before it is read,
//! and a packet we cannot understand is an [`Error`], which the engine turns into the default
//! verdict. Truncated copies (a short NFQUEUE copy range) are a normal case: parsing is lax, so a
//! cut-off UDP payload is still handed up, marked `truncated`, for whatever it is worth.
//! For TCP it also reads what stream reassembly ([`crate::stream`]) needs: the sequence number
//! and the flags that open, end and reset a flow.

use std::fmt;
use std::net::IpAddr;

use etherparse::{IpNumber, LaxIpSlice, TcpSlice, UdpSlice};

/// Transport protocol of a packet, with unknown protocols kept as data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
    /// Any other IP protocol number.
    Other(u8),
}

impl Proto {
    pub fn from_number(n: u8) -> Proto {
        match n {
            6 => Proto::Tcp,
            17 => Proto::Udp,
            1 => Proto::Icmp,
            58 => Proto::Icmpv6,
            n => Proto::Other(n),
        }
    }

    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
            Proto::Icmp => 1,
            Proto::Icmpv6 => 58,
            Proto::Other(n) => n,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Proto::Tcp => f.write_str("tcp"),
            Proto::Udp => f.write_str("udp"),
            Proto::Icmp => f.write_str("icmp"),
            Proto::Icmpv6 => f.write_str("icmpv6"),
            Proto::Other(n) => write!(f, "proto-{n}"),
        }
    }
}

/// TCP flags we care about: SYN fixes a flow's initial sequence number, FIN ends one direction,
/// RST the whole connection (see [`crate::stream`]); ACK tells a SYN from a SYN-ACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpFlags {
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
}

/// A parsed view of one IP packet. Borrows the payload from the queue buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: Proto,
    /// Source port for TCP and UDP, 0 otherwise.
    pub sport: u16,
    /// Destination port for TCP and UDP, 0 otherwise.
    pub dport: u16,
    pub tcp: TcpFlags,
    /// TCP sequence number (of the first payload byte, or of the SYN or FIN), 0 otherwise.
    pub seq: u32,
    /// The L4 payload (after the UDP or TCP header); empty for other protocols.
    pub payload: &'a [u8],
    /// True when the copy we were given is shorter than the packet on the wire, or the packet is
    /// a fragment: `payload` is then not the whole L4 payload.
    pub truncated: bool,
}

/// Why a packet could not be parsed. Cheap to build: this ends in a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The IP header itself is missing, cut short or not IPv4/IPv6.
    BadIp,
    /// A TCP or UDP header that is cut short or malformed.
    BadTransport,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadIp => f.write_str("malformed or truncated IP header"),
            Error::BadTransport => f.write_str("malformed or truncated TCP/UDP header"),
        }
    }
}

impl std::error::Error for Error {}

/// Parse a packet that starts at its IP header (what NFQUEUE delivers).
pub fn parse(bytes: &[u8]) -> Result<Packet<'_>, Error> {
    // The IP layer alone (not `LaxSlicedPacket`, which also looks for link layers and costs
    // several times more per packet); the transport header is read below.
    let (ip, _) = LaxIpSlice::from_slice(bytes).map_err(|_| Error::BadIp)?;
    let (src, dst) = (ip.source_addr(), ip.destination_addr());
    let ip_payload = ip.payload();
    let proto = Proto::from_number(ip_payload.ip_number.0);
    let truncated = ip_payload.incomplete || ip_payload.fragmented;
    let mut packet = Packet {
        src,
        dst,
        proto,
        sport: 0,
        dport: 0,
        tcp: TcpFlags::default(),
        seq: 0,
        payload: &[],
        truncated,
    };
    if ip_payload.fragmented {
        // With conntrack loaded the kernel reassembles before the queue hooks, so a fragment
        // here is rare; we do not try to read ports out of it. It is data, not an error.
        return Ok(packet);
    }
    match ip_payload.ip_number {
        IpNumber::UDP => {
            let udp =
                UdpSlice::from_slice_lax(ip_payload.payload).map_err(|_| Error::BadTransport)?;
            packet.sport = udp.source_port();
            packet.dport = udp.destination_port();
            packet.payload = udp.payload();
            // The UDP length field tells the real size; a short copy means we see only part.
            let wire_payload = usize::from(udp.length()).saturating_sub(8);
            if packet.payload.len() < wire_payload {
                packet.truncated = true;
            }
        }
        IpNumber::TCP => {
            let tcp = TcpSlice::from_slice(ip_payload.payload).map_err(|_| Error::BadTransport)?;
            packet.sport = tcp.source_port();
            packet.dport = tcp.destination_port();
            packet.tcp = TcpFlags {
                syn: tcp.syn(),
                ack: tcp.ack(),
                fin: tcp.fin(),
                rst: tcp.rst(),
            };
            packet.seq = tcp.sequence_number();
            packet.payload = tcp.payload();
        }
        _ => {}
    }
    Ok(packet)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use etherparse::PacketBuilder;

    use super::*;
    use crate::fixtures;

    const CLIENT4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 137));
    const RESOLVER4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    const CLIENT6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x137));
    const RESOLVER6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));

    fn query() -> Vec<u8> {
        fixtures::dns_query(0x1234, "www.example.com")
    }

    #[test]
    fn udp_over_ipv4_gives_addresses_ports_and_payload() {
        let dns = query();
        let bytes = fixtures::udp(CLIENT4, 40000, RESOLVER4, 53, &dns);
        let p = parse(&bytes).unwrap();
        assert_eq!(p.src, CLIENT4);
        assert_eq!(p.dst, RESOLVER4);
        assert_eq!(p.proto, Proto::Udp);
        assert_eq!((p.sport, p.dport), (40000, 53));
        assert_eq!(p.payload, &dns[..]);
        assert_eq!(p.tcp, TcpFlags::default());
        assert!(!p.truncated);
    }

    #[test]
    fn udp_over_ipv6_gives_addresses_ports_and_payload() {
        let dns = query();
        let bytes = fixtures::udp(CLIENT6, 40000, RESOLVER6, 53, &dns);
        let p = parse(&bytes).unwrap();
        assert_eq!(p.src, CLIENT6);
        assert_eq!(p.dst, RESOLVER6);
        assert_eq!(p.proto, Proto::Udp);
        assert_eq!((p.sport, p.dport), (40000, 53));
        assert_eq!(p.payload, &dns[..]);
        assert!(!p.truncated);
    }

    #[test]
    fn tcp_data_segment_gives_ports_flags_and_payload() {
        let framed = fixtures::tcp_framed(&query());
        for (src, dst) in [(CLIENT4, RESOLVER4), (CLIENT6, RESOLVER6)] {
            let bytes = fixtures::tcp(src, 40000, dst, 53, &framed);
            let p = parse(&bytes).unwrap();
            assert_eq!((p.src, p.dst), (src, dst));
            assert_eq!(p.proto, Proto::Tcp);
            assert_eq!((p.sport, p.dport), (40000, 53));
            assert_eq!(
                p.tcp,
                TcpFlags {
                    syn: false,
                    ack: true,
                    fin: false,
                    rst: false
                }
            );
            assert_eq!(p.payload, &framed[..]);
            assert!(!p.truncated);
        }
    }

    #[test]
    fn tcp_syn_without_payload_has_syn_flag_and_empty_payload() {
        for (src, dst) in [(CLIENT4, RESOLVER4), (CLIENT6, RESOLVER6)] {
            let bytes = fixtures::tcp_syn(src, 40000, dst, 53);
            let p = parse(&bytes).unwrap();
            assert_eq!(p.proto, Proto::Tcp);
            assert!(p.tcp.syn);
            assert!(!p.tcp.ack);
            assert!(p.payload.is_empty());
            assert!(!p.truncated);
        }
    }

    /// A TCP segment with the given sequence number and flags (`fixtures::tcp` fixes both).
    fn tcp_segment(seq: u32, flags: &str, payload: &[u8]) -> Vec<u8> {
        let mut b =
            PacketBuilder::ipv4([198, 18, 0, 2], [198, 18, 0, 1], 64).tcp(40000, 53, seq, 64240);
        for f in flags.chars() {
            b = match f {
                'S' => b.syn(),
                'A' => b.ack(1),
                'F' => b.fin(),
                'R' => b.rst(),
                _ => b,
            };
        }
        let mut out = Vec::new();
        b.write(&mut out, payload).unwrap();
        out
    }

    #[test]
    fn tcp_sequence_number_and_flags_are_read() {
        let data = fixtures::tcp_framed(&query());
        for (seq, flags, want) in [
            (0, "S", (true, false, false, false)),
            (u32::MAX, "SA", (true, true, false, false)),
            (123_456_789, "AF", (false, true, true, false)),
            (0x8000_0000, "R", (false, false, false, true)),
            (1, "RA", (false, true, false, true)),
        ] {
            let bytes = tcp_segment(seq, flags, &data);
            let p = parse(&bytes).unwrap();
            assert_eq!(p.seq, seq, "{flags}");
            let t = p.tcp;
            assert_eq!((t.syn, t.ack, t.fin, t.rst), want, "{flags}");
            assert_eq!(p.payload, &data[..]);
        }
        let udp = fixtures::udp(CLIENT4, 40000, RESOLVER4, 53, &query());
        assert_eq!(parse(&udp).unwrap().seq, 0);
    }

    #[test]
    fn empty_packet_is_bad_ip() {
        assert_eq!(parse(&[]), Err(Error::BadIp));
    }

    #[test]
    fn ipv4_header_cut_is_bad_ip() {
        let bytes = fixtures::udp(CLIENT4, 40000, RESOLVER4, 53, &query());
        for len in 1..20 {
            assert_eq!(parse(&bytes[..len]), Err(Error::BadIp), "cut at {len}");
        }
    }

    #[test]
    fn ipv6_header_cut_is_bad_ip() {
        let bytes = fixtures::udp(CLIENT6, 40000, RESOLVER6, 53, &query());
        for len in 1..40 {
            assert_eq!(parse(&bytes[..len]), Err(Error::BadIp), "cut at {len}");
        }
    }

    #[test]
    fn ip_version_other_than_4_or_6_is_bad_ip() {
        let mut bytes = fixtures::udp(CLIENT4, 40000, RESOLVER4, 53, &query());
        for version in [0u8, 5, 7, 15] {
            bytes[0] = (version << 4) | 5;
            assert_eq!(parse(&bytes), Err(Error::BadIp), "version {version}");
        }
    }

    #[test]
    fn ipv4_header_length_below_five_words_is_bad_ip() {
        let mut bytes = fixtures::udp(CLIENT4, 40000, RESOLVER4, 53, &query());
        bytes[0] = 0x44;
        assert_eq!(parse(&bytes), Err(Error::BadIp));
    }

    #[test]
    fn udp_header_cut_is_bad_transport() {
        for (src, dst, ip_len) in [(CLIENT4, RESOLVER4, 20), (CLIENT6, RESOLVER6, 40)] {
            let bytes = fixtures::udp(src, 40000, dst, 53, &query());
            for len in ip_len..ip_len + 8 {
                assert_eq!(
                    parse(&bytes[..len]),
                    Err(Error::BadTransport),
                    "cut at {len}"
                );
            }
        }
    }

    #[test]
    fn udp_header_alone_gives_empty_truncated_payload() {
        let bytes = fixtures::udp(CLIENT4, 40000, RESOLVER4, 53, &query());
        let p = parse(&bytes[..28]).unwrap();
        assert_eq!((p.sport, p.dport), (40000, 53));
        assert!(p.payload.is_empty());
        assert!(p.truncated);
    }

    #[test]
    fn tcp_header_cut_is_bad_transport() {
        for (src, dst, ip_len) in [(CLIENT4, RESOLVER4, 20), (CLIENT6, RESOLVER6, 40)] {
            let bytes = fixtures::tcp(src, 40000, dst, 53, &fixtures::tcp_framed(&query()));
            for len in ip_len..ip_len + 20 {
                assert_eq!(
                    parse(&bytes[..len]),
                    Err(Error::BadTransport),
                    "cut at {len}"
                );
            }
        }
    }

    #[test]
    fn tcp_data_offset_beyond_the_copy_is_bad_transport() {
        let mut bytes = fixtures::tcp_syn(CLIENT4, 40000, RESOLVER4, 53);
        // Data offset 15 words (60 bytes) in a 20-byte header with no options behind it.
        bytes[20 + 12] = 0xf0;
        assert_eq!(parse(&bytes), Err(Error::BadTransport));
    }

    #[test]
    fn tcp_data_offset_below_five_words_is_bad_transport() {
        let mut bytes = fixtures::tcp_syn(CLIENT4, 40000, RESOLVER4, 53);
        bytes[20 + 12] = 0x40;
        assert_eq!(parse(&bytes), Err(Error::BadTransport));
    }

    #[test]
    fn udp_payload_cut_by_the_copy_is_handed_up_truncated() {
        let dns = query();
        for (src, dst, ip_len) in [(CLIENT4, RESOLVER4, 20), (CLIENT6, RESOLVER6, 40)] {
            let bytes = fixtures::udp(src, 40000, dst, 53, &dns);
            for keep in [0, 1, 11, 12, 20, dns.len() - 1] {
                let p = parse(&bytes[..ip_len + 8 + keep]).unwrap();
                assert_eq!(p.payload, &dns[..keep], "kept {keep}");
                assert!(p.truncated, "kept {keep}");
                assert_eq!((p.sport, p.dport), (40000, 53));
            }
        }
    }

    #[test]
    fn udp_length_field_larger_than_the_copy_marks_truncated() {
        // The IP header agrees with the copy; only the UDP length claims more.
        let dns = query();
        for (src, dst) in [(CLIENT4, RESOLVER4), (CLIENT6, RESOLVER6)] {
            let mut bytes = fixtures::udp(src, 40000, dst, 53, &dns);
            let claimed = u16::try_from(8 + dns.len() + 100).unwrap();
            assert!(fixtures::set_udp_length(&mut bytes, claimed));
            let p = parse(&bytes).unwrap();
            assert_eq!(p.payload, &dns[..]);
            assert!(p.truncated);
        }
    }

    #[test]
    fn udp_length_field_shorter_than_the_datagram_limits_the_payload() {
        let dns = query();
        let mut bytes = fixtures::udp(CLIENT4, 40000, RESOLVER4, 53, &dns);
        assert!(fixtures::set_udp_length(&mut bytes, 8 + 12));
        let p = parse(&bytes).unwrap();
        assert_eq!(p.payload, &dns[..12]);
        assert!(!p.truncated);
    }

    #[test]
    fn udp_length_field_below_the_header_size_falls_back_to_the_copy() {
        let dns = query();
        for length in [0u16, 1, 7] {
            let mut bytes = fixtures::udp(CLIENT4, 40000, RESOLVER4, 53, &dns);
            assert!(fixtures::set_udp_length(&mut bytes, length));
            let p = parse(&bytes).unwrap();
            assert_eq!(p.payload, &dns[..], "length {length}");
            assert!(!p.truncated, "length {length}");
        }
    }

    #[test]
    fn tcp_payload_cut_by_the_copy_is_handed_up_truncated() {
        let framed = fixtures::tcp_framed(&query());
        let bytes = fixtures::tcp(CLIENT6, 40000, RESOLVER6, 53, &framed);
        let p = parse(&bytes[..40 + 20 + 5]).unwrap();
        assert_eq!(p.payload, &framed[..5]);
        assert!(p.truncated);
    }

    #[test]
    fn ipv4_total_length_below_the_header_falls_back_to_the_copy() {
        let dns = query();
        let mut bytes = fixtures::udp(CLIENT4, 40000, RESOLVER4, 53, &dns);
        bytes[2..4].copy_from_slice(&10u16.to_be_bytes());
        let p = parse(&bytes).unwrap();
        assert_eq!(p.payload, &dns[..]);
    }

    #[test]
    fn ipv4_fragment_is_truncated_data_without_ports() {
        let first = {
            let mut b = fixtures::udp(CLIENT4, 40000, RESOLVER4, 53, &query());
            b[6] |= 0x20; // more fragments
            b
        };
        let later = {
            let mut b = fixtures::udp(CLIENT4, 40000, RESOLVER4, 53, &query());
            b[7] = 0x10; // fragment offset 16 * 8 bytes
            b
        };
        for bytes in [first, later] {
            let p = parse(&bytes).unwrap();
            assert_eq!(p.proto, Proto::Udp);
            assert_eq!((p.sport, p.dport), (0, 0));
            assert!(p.payload.is_empty());
            assert!(p.truncated);
        }
    }

    #[test]
    fn ipv6_hop_by_hop_header_is_skipped() {
        let dns = query();
        let mut bytes = fixtures::udp(CLIENT6, 40000, RESOLVER6, 53, &dns);
        bytes[6] = 0; // next header: hop-by-hop options
        let payload_len = u16::from_be_bytes([bytes[4], bytes[5]]) + 8;
        bytes[4..6].copy_from_slice(&payload_len.to_be_bytes());
        // Next header UDP, length 0 (8 bytes), one PadN option filling the rest.
        let hop_by_hop = [17u8, 0, 1, 4, 0, 0, 0, 0];
        bytes.splice(40..40, hop_by_hop);
        let p = parse(&bytes).unwrap();
        assert_eq!(p.proto, Proto::Udp);
        assert_eq!((p.sport, p.dport), (40000, 53));
        assert_eq!(p.payload, &dns[..]);
        assert!(!p.truncated);
    }

    #[test]
    fn icmp_has_no_ports_and_no_payload() {
        let builder =
            PacketBuilder::ipv4([192, 0, 2, 1], [192, 0, 2, 137], 64).icmpv4_echo_request(7, 1);
        let mut bytes = Vec::new();
        builder.write(&mut bytes, b"ping").unwrap();
        let p = parse(&bytes).unwrap();
        assert_eq!(p.proto, Proto::Icmp);
        assert_eq!((p.sport, p.dport), (0, 0));
        assert!(p.payload.is_empty());
    }

    #[test]
    fn unknown_protocol_is_kept_as_data() {
        let mut bytes = fixtures::udp(CLIENT4, 40000, RESOLVER4, 53, &query());
        bytes[9] = 47; // GRE
        let p = parse(&bytes).unwrap();
        assert_eq!(p.proto, Proto::Other(47));
        assert_eq!((p.sport, p.dport), (0, 0));
        assert!(p.payload.is_empty());
        assert!(!p.truncated);
    }

    #[test]
    fn proto_numbers_round_trip() {
        for n in 0..=u8::MAX {
            assert_eq!(Proto::from_number(n).number(), n);
        }
        assert_eq!(Proto::from_number(6), Proto::Tcp);
        assert_eq!(Proto::from_number(17), Proto::Udp);
        assert_eq!(Proto::from_number(1), Proto::Icmp);
        assert_eq!(Proto::from_number(58), Proto::Icmpv6);
    }

    #[test]
    fn proto_and_error_display() {
        assert_eq!(Proto::Udp.to_string(), "udp");
        assert_eq!(Proto::Tcp.to_string(), "tcp");
        assert_eq!(Proto::Icmp.to_string(), "icmp");
        assert_eq!(Proto::Icmpv6.to_string(), "icmpv6");
        assert_eq!(Proto::Other(47).to_string(), "proto-47");
        assert!(!Error::BadIp.to_string().is_empty());
        assert!(!Error::BadTransport.to_string().is_empty());
    }

    #[test]
    fn every_cut_of_a_packet_parses_or_errs_without_panic() {
        let dns = query();
        let packets = [
            fixtures::udp(CLIENT4, 40000, RESOLVER4, 53, &dns),
            fixtures::udp(CLIENT6, 40000, RESOLVER6, 53, &dns),
            fixtures::tcp(CLIENT4, 40000, RESOLVER4, 53, &fixtures::tcp_framed(&dns)),
            fixtures::tcp(CLIENT6, 40000, RESOLVER6, 53, &fixtures::tcp_framed(&dns)),
        ];
        for bytes in &packets {
            for len in 0..=bytes.len() {
                if let Ok(p) = parse(&bytes[..len]) {
                    assert_eq!(p.truncated, len < bytes.len(), "cut at {len}");
                }
            }
        }
    }
}
