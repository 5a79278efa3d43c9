//! Raw IP packet -> addresses, ports, protocol and L4 payload.
//!
//! This module owns the first look at the bytes NFQUEUE hands us (which start at the IP header).
//! It never allocates and never panics: every length is checked by etherparse before it is read,
//! and a packet we cannot understand is an [`Error`], which the engine turns into the default
//! verdict. Truncated copies (a short NFQUEUE copy range) are a normal case: parsing is lax, so a
//! cut-off UDP payload is still handed up, marked `truncated`, for whatever it is worth.

use std::fmt;
use std::net::IpAddr;

use etherparse::{IpNumber, LaxNetSlice, LaxSlicedPacket, TcpSlice, UdpSlice};

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

/// TCP flags we care about (SYN opens a flow; the rest is for logging and rules).
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
    let sliced = LaxSlicedPacket::from_ip(bytes).map_err(|_| Error::BadIp)?;
    let (src, dst, ip_payload) = match &sliced.net {
        Some(LaxNetSlice::Ipv4(v4)) => {
            let h = v4.header();
            (
                IpAddr::V4(h.source_addr()),
                IpAddr::V4(h.destination_addr()),
                v4.payload(),
            )
        }
        Some(LaxNetSlice::Ipv6(v6)) => {
            let h = v6.header();
            (
                IpAddr::V6(h.source_addr()),
                IpAddr::V6(h.destination_addr()),
                v6.payload(),
            )
        }
        _ => return Err(Error::BadIp),
    };
    let proto = Proto::from_number(ip_payload.ip_number.0);
    let truncated = ip_payload.incomplete || ip_payload.fragmented;
    let mut packet = Packet {
        src,
        dst,
        proto,
        sport: 0,
        dport: 0,
        tcp: TcpFlags::default(),
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
            packet.payload = tcp.payload();
        }
        _ => {}
    }
    Ok(packet)
}
