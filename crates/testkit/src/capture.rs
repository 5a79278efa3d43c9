//! Capture files built in memory (pcap, pcapng, and the link layers `nfqmark replay` reads),
//! for nfqmark's unit and integration tests and fuzz seeds: the bytes tcpdump and dumpcap write.

use std::time::Duration;

/// A classic pcap file (microsecond timestamps, this machine's byte order as tcpdump
/// writes it): `frames` are (time since the epoch, link-layer bytes).
pub fn pcap(link: u32, frames: &[(Duration, Vec<u8>)]) -> Vec<u8> {
    let mut o = Vec::new();
    o.extend_from_slice(&0xa1b2_c3d4u32.to_ne_bytes());
    o.extend_from_slice(&2u16.to_ne_bytes());
    o.extend_from_slice(&4u16.to_ne_bytes());
    o.extend_from_slice(&0i32.to_ne_bytes());
    o.extend_from_slice(&0u32.to_ne_bytes());
    o.extend_from_slice(&262_144u32.to_ne_bytes());
    o.extend_from_slice(&link.to_ne_bytes());
    for (ts, data) in frames {
        let secs = u32::try_from(ts.as_secs()).unwrap_or(u32::MAX);
        o.extend_from_slice(&secs.to_ne_bytes());
        o.extend_from_slice(&ts.subsec_micros().to_ne_bytes());
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        o.extend_from_slice(&len.to_ne_bytes());
        o.extend_from_slice(&len.to_ne_bytes());
        o.extend_from_slice(data);
    }
    o
}

fn block(o: &mut Vec<u8>, kind: u32, body: &[u8]) {
    let padded = body.len().div_ceil(4) * 4;
    let total = u32::try_from(12 + padded).unwrap_or(u32::MAX);
    o.extend_from_slice(&kind.to_le_bytes());
    o.extend_from_slice(&total.to_le_bytes());
    o.extend_from_slice(body);
    o.resize(o.len() + padded - body.len(), 0);
    o.extend_from_slice(&total.to_le_bytes());
}

fn option(o: &mut Vec<u8>, code: u16, value: &[u8]) {
    o.extend_from_slice(&code.to_le_bytes());
    o.extend_from_slice(&u16::try_from(value.len()).unwrap_or(0).to_le_bytes());
    o.extend_from_slice(value);
    o.resize(o.len() + value.len().div_ceil(4) * 4 - value.len(), 0);
}

/// A little-endian pcapng file: one interface per (link type, name), then packets as
/// (time since the epoch, interface number, direction flag: `Some(true)` outbound,
/// `Some(false)` inbound, link-layer bytes).
pub fn pcapng(
    ifaces: &[(u32, &str)],
    packets: &[(Duration, u32, Option<bool>, Vec<u8>)],
) -> Vec<u8> {
    let mut o = Vec::new();
    let mut shb = Vec::new();
    shb.extend_from_slice(&0x1a2b_3c4du32.to_le_bytes());
    shb.extend_from_slice(&1u16.to_le_bytes());
    shb.extend_from_slice(&0u16.to_le_bytes());
    shb.extend_from_slice(&(-1i64).to_le_bytes());
    block(&mut o, 0x0a0d_0d0a, &shb);
    for (link, name) in ifaces {
        let mut idb = Vec::new();
        idb.extend_from_slice(&u16::try_from(*link).unwrap_or(0).to_le_bytes());
        idb.extend_from_slice(&0u16.to_le_bytes());
        idb.extend_from_slice(&262_144u32.to_le_bytes());
        option(&mut idb, 2, name.as_bytes());
        option(&mut idb, 9, &[9]); // nanoseconds
        option(&mut idb, 0, &[]);
        block(&mut o, 1, &idb);
    }
    for (ts, iface, dir, data) in packets {
        let ticks = u64::try_from(ts.as_nanos()).unwrap_or(u64::MAX);
        let mut epb = Vec::new();
        epb.extend_from_slice(&iface.to_le_bytes());
        epb.extend_from_slice(&u32::try_from(ticks >> 32).unwrap_or(0).to_le_bytes());
        epb.extend_from_slice(
            &u32::try_from(ticks & 0xffff_ffff)
                .unwrap_or(0)
                .to_le_bytes(),
        );
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        epb.extend_from_slice(&len.to_le_bytes());
        epb.extend_from_slice(&len.to_le_bytes());
        epb.extend_from_slice(data);
        epb.resize(epb.len() + data.len().div_ceil(4) * 4 - data.len(), 0);
        if let Some(outbound) = dir {
            let flags: u32 = if *outbound { 2 } else { 1 };
            option(&mut epb, 2, &flags.to_le_bytes());
            option(&mut epb, 0, &[]);
        }
        block(&mut o, 6, &epb);
    }
    o
}

/// A Linux cooked v2 (SLL2) frame, as `tcpdump -i any` records it: `outgoing` for a packet
/// this host sent (packet type 4, PACKET_OUTGOING), else one it received (0, PACKET_HOST).
pub fn sll2(ip: &[u8], ifindex: u32, outgoing: bool, mac: [u8; 6]) -> Vec<u8> {
    let mut o = Vec::with_capacity(20 + ip.len());
    let ethertype: u16 = if ip.first().is_some_and(|b| b >> 4 == 6) {
        0x86dd
    } else {
        0x0800
    };
    o.extend_from_slice(&ethertype.to_be_bytes());
    o.extend_from_slice(&[0, 0]);
    o.extend_from_slice(&ifindex.to_be_bytes());
    o.extend_from_slice(&1u16.to_be_bytes()); // ARPHRD_ETHER
    o.push(if outgoing { 4 } else { 0 });
    o.push(6);
    o.extend_from_slice(&mac);
    o.extend_from_slice(&[0, 0]);
    o.extend_from_slice(ip);
    o
}

/// An Ethernet frame carrying `ip`.
pub fn ethernet(ip: &[u8], src: [u8; 6]) -> Vec<u8> {
    let mut o = Vec::with_capacity(14 + ip.len());
    o.extend_from_slice(&[2, 0, 0, 0, 0, 1]);
    o.extend_from_slice(&src);
    let ethertype: u16 = if ip.first().is_some_and(|b| b >> 4 == 6) {
        0x86dd
    } else {
        0x0800
    };
    o.extend_from_slice(&ethertype.to_be_bytes());
    o.extend_from_slice(ip);
    o
}
