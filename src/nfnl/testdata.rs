//! Byte fixtures for the unit tests of `wire` and `socket`: netlink messages built the way the
//! kernel lays them out, and one datagram captured from a real kernel.

#![allow(dead_code)]

use super::abi::*;
use super::wire::queue::{Messages, MsgError, PacketMsg};

/// A real datagram from Linux 6.18 (x86_64): UDP 127.0.0.1 -> 127.0.0.1:5301 "nfqm-mark-1",
/// queued from OUTPUT to queue 3 with uid/gid reporting on. 99 bytes, no trailing padding.
#[cfg(target_endian = "little")]
pub(super) const KERNEL_UDP_OUTPUT: &str = "\
    63000000 0003 0000 00000000 00000000 \
    02 00 0003 \
    0b000100 00000001 0800 03 00 \
    08000600 00000001 \
    08001000 00000000 \
    08001100 00000000 \
    2b000a00 45000027 0ded4000 40112ed7 7f000001 7f000001 dc7a14b5 001305b5 \
    6e66716d2d6d61726b2d31";

pub(super) fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

/// One netlink message (host-order header), padded to 4 bytes as the kernel does between
/// messages.
pub(super) fn nlmsg(msg_type: u16, seq: u32, body: &[u8]) -> Vec<u8> {
    let len = (NLMSG_HDRLEN + body.len()) as u32;
    let mut m = Vec::new();
    m.extend_from_slice(&len.to_ne_bytes());
    m.extend_from_slice(&msg_type.to_ne_bytes());
    m.extend_from_slice(&0u16.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(body);
    while m.len() % 4 != 0 {
        m.push(0);
    }
    m
}

pub(super) fn attr(attr_type: u16, value: &[u8]) -> Vec<u8> {
    let mut a = Vec::new();
    a.extend_from_slice(&((NLA_HDRLEN + value.len()) as u16).to_ne_bytes());
    a.extend_from_slice(&attr_type.to_ne_bytes());
    a.extend_from_slice(value);
    while a.len() % 4 != 0 {
        a.push(0);
    }
    a
}

pub(super) fn pkt_hdr(id: u32, hw_protocol: u16, hook: u8) -> Vec<u8> {
    let mut v = id.to_be_bytes().to_vec();
    v.extend_from_slice(&hw_protocol.to_be_bytes());
    v.push(hook);
    attr(NFQA_PACKET_HDR, &v)
}

/// A packet message from queue 3 with these attributes, in this order.
pub(super) fn packet(attrs: &[Vec<u8>]) -> Vec<u8> {
    let mut body = vec![libc::AF_INET as u8, NFNETLINK_V0, 0, 3];
    for a in attrs {
        body.extend_from_slice(a);
    }
    nlmsg(PACKET_MSG_TYPE, 0, &body)
}

pub(super) fn error_msg(errno: i32, seq: u32) -> Vec<u8> {
    let mut body = (-errno).to_ne_bytes().to_vec();
    body.extend_from_slice(&[0; NLMSG_HDRLEN]); // the quoted request header
    nlmsg(NLMSG_ERROR, seq, &body)
}

pub(super) fn all(bytes: &[u8]) -> Vec<Result<PacketMsg<'_>, MsgError>> {
    Messages::new(bytes).collect()
}

pub(super) fn one(bytes: &[u8]) -> Result<PacketMsg<'_>, MsgError> {
    let mut msgs = all(bytes);
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    msgs.remove(0)
}

/// Call `check` on `runs` mutants of `base`, the same ones for the same `seed` (xorshift): one
/// to four bytes overwritten, then the buffer cut at a random length. The "never panics" tests
/// of every codec read these.
pub(super) fn for_each_mutant(base: &[u8], seed: u64, runs: usize, mut check: impl FnMut(&[u8])) {
    let mut state = seed;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..runs {
        let mut buf = base.to_vec();
        for _ in 0..(next() % 4 + 1) {
            let at = (next() % buf.len() as u64) as usize;
            buf[at] = next() as u8;
        }
        let cut = (next() % (buf.len() as u64 + 1)) as usize;
        check(&buf[..cut]);
    }
}
