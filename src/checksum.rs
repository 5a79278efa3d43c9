//! The transport checksum of a queued packet, checked the way the receiving socket will check
//! it (RFC 768, RFC 793, RFC 8200 §8.1: one's complement sum over a pseudo-header and the
//! segment).
//!
//! netfilter queues packets before the UDP or TCP layer verifies them, so a query with a bad
//! checksum is queued, then dropped by the socket: the resolver never sees it. The engine asks
//! here before it records a client query that the kernel reports as not yet verified. Pure, no
//! allocation, never panics; a packet it cannot fully read is given the benefit of the doubt
//! (the kernel will judge it).

use std::net::IpAddr;

use etherparse::{IpNumber, LaxIpSlice};

/// True unless the packet is a whole UDP or TCP packet whose checksum is wrong.
pub fn transport_ok(bytes: &[u8]) -> bool {
    let Ok((ip, _)) = LaxIpSlice::from_slice(bytes) else {
        return true;
    };
    let payload = ip.payload();
    if payload.incomplete || payload.fragmented {
        return true;
    }
    let segment = payload.payload;
    let proto = payload.ip_number;
    let checksum_at = match proto {
        IpNumber::UDP => 6,
        IpNumber::TCP => 16,
        _ => return true,
    };
    let Some(stored) = segment
        .get(checksum_at..)
        .and_then(<[u8]>::first_chunk)
        .map(|b| u16::from_be_bytes(*b))
    else {
        return true;
    };
    let (src, dst) = (ip.source_addr(), ip.destination_addr());
    if proto == IpNumber::UDP && stored == 0 {
        // No checksum: allowed over IPv4; over IPv6 the kernel drops it.
        return matches!(src, IpAddr::V4(_));
    }
    let Ok(len) = u32::try_from(segment.len()) else {
        return true;
    };
    let mut sum: u64 = 0;
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            sum += add_bytes(&s.octets());
            sum += add_bytes(&d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            sum += add_bytes(&s.octets());
            sum += add_bytes(&d.octets());
        }
        _ => return true,
    }
    sum += u64::from(proto.0) + u64::from(len);
    sum += add_bytes(segment);
    fold(sum) == 0xffff
}

/// Sum of big-endian 16-bit words (an odd last byte padded with zero).
fn add_bytes(bytes: &[u8]) -> u64 {
    let (words, rest) = bytes.as_chunks::<2>();
    let mut sum: u64 = words
        .iter()
        .map(|w| u64::from(u16::from_be_bytes(*w)))
        .sum();
    if let [last] = rest {
        sum += u64::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const A4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 2));
    const B4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 1));
    const A6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2));
    const B6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1));

    fn checksum_offset(bytes: &[u8], udp: bool) -> usize {
        let ip_len = if bytes[0] >> 4 == 4 {
            usize::from(bytes[0] & 0xf) * 4
        } else {
            40
        };
        ip_len + if udp { 6 } else { 16 }
    }

    #[test]
    fn fixtures_carry_good_checksums_and_one_flipped_bit_is_caught() {
        let msg = fixtures::dns_query(0x1234, "www.example.com");
        for (src, dst) in [(A4, B4), (A6, B6)] {
            for udp in [true, false] {
                let mut p = if udp {
                    fixtures::udp(src, 40000, dst, 53, &msg)
                } else {
                    fixtures::tcp(src, 40000, dst, 53, &fixtures::tcp_framed(&msg))
                };
                assert!(transport_ok(&p), "{src} udp={udp}");
                let last = p.len() - 1;
                p[last] ^= 0x01;
                assert!(!transport_ok(&p), "{src} udp={udp}: flipped payload bit");
                p[last] ^= 0x01;
                let at = checksum_offset(&p, udp);
                p[at] ^= 0x80;
                assert!(!transport_ok(&p), "{src} udp={udp}: flipped checksum bit");
            }
        }
    }

    #[test]
    fn zero_udp_checksum_is_no_checksum_over_ipv4_only() {
        let msg = fixtures::dns_query(1, "a.example");
        let mut v4 = fixtures::udp(A4, 1000, B4, 53, &msg);
        let at = checksum_offset(&v4, true);
        v4[at] = 0;
        v4[at + 1] = 0;
        assert!(transport_ok(&v4));
        let mut v6 = fixtures::udp(A6, 1000, B6, 53, &msg);
        let at = checksum_offset(&v6, true);
        v6[at] = 0;
        v6[at + 1] = 0;
        assert!(!transport_ok(&v6));
    }

    #[test]
    fn unreadable_or_cut_packets_get_the_benefit_of_the_doubt() {
        let msg = fixtures::dns_query(1, "a.example");
        let p = fixtures::udp(A4, 1000, B4, 53, &msg);
        for cut in 0..p.len() {
            // Never panics; a cut packet is not judged (the copy is short, not the packet).
            let _ = transport_ok(&p[..cut]);
        }
        assert!(transport_ok(&[]));
        assert!(transport_ok(&[0x45]));
    }
}
