//! Conntrack entries on the wire: the `CTA_*` attributes of an entry (in a queued packet's
//! `NFQA_CT`, or in ctnetlink's answer to a get), and the ctnetlink requests nfqmark sends:
//! get an entry by its tuple, change its mark under a mask.
//!
//! Pure, like all of `wire`: no system calls, no `unsafe`, no panics on what the kernel sends.

use std::net::IpAddr;

use super::{Attrs, FrameError, Request, be32, error_code, next_frame};
use crate::nfnl::abi::*;

/// A conntrack entry as the kernel describes it (`NFQA_CT` with `NFQA_CT_INFO` for a queued
/// packet, or ctnetlink's answer to a get).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ct {
    /// `CTA_MARK`, 0 when absent.
    pub mark: u32,
    /// `CTA_STATUS` (`IPS_*` bits), when sent.
    pub status: Option<u32>,
    /// `CTA_ID`, when sent.
    pub id: Option<u32>,
    /// `CTA_ZONE`, 0 (the default zone) when absent.
    pub zone: u16,
    /// `NFQA_CT_INFO`: `enum ip_conntrack_info` (0 established, 1 related, 2 new; +3 in the
    /// reply direction), when sent (queued packets only).
    pub info: Option<u32>,
}

impl Ct {
    /// The entry is not in the conntrack table yet: its packet is the connection's first
    /// (`IPS_CONFIRMED` clear). None when the status was not sent.
    pub fn first(&self) -> Option<bool> {
        self.status.map(|s| s & IPS_CONFIRMED == 0)
    }
}

/// The `CTA_*` attributes of an entry we use; others (tuples, timeout, protocol info, ...)
/// are skipped. A value of the wrong size or broken framing is an error.
pub(crate) fn parse_ct(attrs: &[u8]) -> Result<Ct, &'static str> {
    let mut ct = Ct::default();
    for attr in Attrs::new(attrs) {
        let (attr_type, value) = attr?;
        match attr_type {
            CTA_MARK => ct.mark = be32(value).ok_or("conntrack mark shorter than 4 bytes")?,
            CTA_STATUS => {
                ct.status = Some(be32(value).ok_or("conntrack status shorter than 4 bytes")?)
            }
            CTA_ID => ct.id = Some(be32(value).ok_or("conntrack id shorter than 4 bytes")?),
            CTA_ZONE => {
                let zone = value
                    .first_chunk::<2>()
                    .ok_or("conntrack zone shorter than 2 bytes")?;
                ct.zone = u16::from_be_bytes(*zone);
            }
            _ => {}
        }
    }
    Ok(ct)
}

/// A connection's tuple in one direction: addresses (both IPv4 or both IPv6), IP protocol,
/// ports (TCP, UDP, SCTP, DCCP, UDP-Lite; 0 for others).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub src_port: u16,
    pub dst_port: u16,
}

/// Which of its two tuples names the entry: as its first packet went (original), or as the
/// answers come back (reply; after NAT they differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Original,
    Reply,
}

/// Room for the largest ctnetlink request (an IPv6 tuple, zone, mark and mask: 128 bytes).
pub(crate) const CT_REQUEST_CAP: usize = 160;

/// Why a ctnetlink request could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TupleError {
    /// One address is IPv4, the other IPv6.
    MixedFamilies,
}

fn family(tuple: &Tuple) -> Result<u8, TupleError> {
    match (tuple.src, tuple.dst) {
        (IpAddr::V4(_), IpAddr::V4(_)) => Ok(NFPROTO_IPV4),
        (IpAddr::V6(_), IpAddr::V6(_)) => Ok(NFPROTO_IPV6),
        _ => Err(TupleError::MixedFamilies),
    }
}

fn put_tuple<const N: usize>(req: &mut Request<N>, tuple: &Tuple, dir: Direction) {
    let which = match dir {
        Direction::Original => CTA_TUPLE_ORIG,
        Direction::Reply => CTA_TUPLE_REPLY,
    };
    let outer = req.begin_nest(which);
    let ip = req.begin_nest(CTA_TUPLE_IP);
    match (tuple.src, tuple.dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            req.attr(CTA_IP_V4_SRC, &src.octets());
            req.attr(CTA_IP_V4_DST, &dst.octets());
        }
        (src, dst) => {
            let v6 = |a: IpAddr| match a {
                IpAddr::V6(a) => a.octets(),
                IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
            };
            req.attr(CTA_IP_V6_SRC, &v6(src));
            req.attr(CTA_IP_V6_DST, &v6(dst));
        }
    }
    req.end_nest(ip);
    let proto = req.begin_nest(CTA_TUPLE_PROTO);
    req.attr(CTA_PROTO_NUM, &[tuple.proto]);
    req.attr(CTA_PROTO_SRC_PORT, &tuple.src_port.to_be_bytes());
    req.attr(CTA_PROTO_DST_PORT, &tuple.dst_port.to_be_bytes());
    req.end_nest(proto);
    req.end_nest(outer);
}

/// `IPCTNL_MSG_CT_GET` for the entry with this tuple in zone `zone`. The kernel answers with
/// the entry (an `IPCTNL_MSG_CT_NEW` message) or an error (`ENOENT`: no such entry, which is
/// also what a connection whose first packet is still queued gets: its entry is unconfirmed,
/// not in the table yet).
pub(crate) fn encode_get(
    seq: u32,
    tuple: &Tuple,
    dir: Direction,
    zone: u16,
) -> Result<Request<CT_REQUEST_CAP>, TupleError> {
    let mut req = Request::new(
        NFNL_SUBSYS_CTNETLINK,
        IPCTNL_MSG_CT_GET,
        0,
        seq,
        family(tuple)?,
        0,
    );
    put_tuple(&mut req, tuple, dir);
    if zone != 0 {
        req.attr(CTA_ZONE, &zone.to_be_bytes());
    }
    Ok(req)
}

/// `IPCTNL_MSG_CT_NEW` without `NLM_F_CREATE` (update only) setting the bits of the entry's
/// mark under `mask` to those of `value`, acknowledged. The kernel computes
/// `(old & ~mask) ^ sent`, so `value & mask` is sent.
pub(crate) fn encode_set_mark(
    seq: u32,
    tuple: &Tuple,
    dir: Direction,
    zone: u16,
    value: u32,
    mask: u32,
) -> Result<Request<CT_REQUEST_CAP>, TupleError> {
    let mut req = Request::new(
        NFNL_SUBSYS_CTNETLINK,
        IPCTNL_MSG_CT_NEW,
        NLM_F_ACK,
        seq,
        family(tuple)?,
        0,
    );
    put_tuple(&mut req, tuple, dir);
    if zone != 0 {
        req.attr(CTA_ZONE, &zone.to_be_bytes());
    }
    req.attr(CTA_MARK, &(value & mask).to_be_bytes());
    req.attr(CTA_MARK_MASK, &mask.to_be_bytes());
    Ok(req)
}

/// What a datagram says about ctnetlink request `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The entry asked for.
    Entry(Ct),
    /// Acknowledged (a change done).
    Done,
    /// Refused with this errno.
    Refused(i32),
    /// Nothing about our request in this datagram.
    Nothing,
}

/// Read the answer to request `seq` from one datagram. Other requests' messages are skipped.
pub fn parse_answer(datagram: &[u8], seq: u32) -> Result<Answer, &'static str> {
    let mut rest = datagram;
    while let Some(frame) = next_frame(&mut rest) {
        let frame = frame.map_err(|e| match e {
            FrameError::HeaderCut | FrameError::Truncated { .. } => "ctnetlink answer cut short",
            FrameError::LengthBelowHeader => "ctnetlink answer length below its header",
        })?;
        if frame.seq != seq {
            continue;
        }
        match frame.msg_type {
            NLMSG_ERROR => {
                return match error_code(frame.body).ok_or("error message cut short")? {
                    0 => Ok(Answer::Done),
                    errno => Ok(Answer::Refused(errno)),
                };
            }
            t if t == (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW => {
                let (_nfgenmsg, attrs) = frame
                    .body
                    .split_first_chunk::<NFGENMSG_LEN>()
                    .ok_or("conntrack entry shorter than its nfgenmsg header")?;
                return parse_ct(attrs).map(Answer::Entry);
            }
            _ => {}
        }
    }
    Ok(Answer::Nothing)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::nfnl::testdata::*;

    fn v4() -> Tuple {
        Tuple {
            src: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
            dst: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)),
            proto: 17,
            src_port: 40000,
            dst_port: 53,
        }
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn get_by_ipv4_tuple_encodes() {
        let mut req = encode_get(3, &v4(), Direction::Original, 0).expect("one family");
        assert_eq!(
            req.bytes().expect("fits"),
            hex("48000000 0101 0100 03000000 00000000 \
                 02000000 \
                 34000180 \
                   14000180 0800 0100 c6120001 0800 0200 c6120002 \
                   1c000280 0500 0100 11000000 0600 0200 9c400000 0600 0300 00350000")
        );
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn set_mark_sends_only_the_bits_under_the_mask() {
        let tuple = Tuple {
            src: IpAddr::V6(Ipv6Addr::LOCALHOST),
            dst: IpAddr::V6(Ipv6Addr::LOCALHOST),
            ..v4()
        };
        let mut req =
            encode_set_mark(4, &tuple, Direction::Reply, 7, 0x1234_5678, 0xff00).expect("fits");
        let bytes = req.bytes().expect("fits").to_vec();
        let mut rest = &bytes[..];
        let frame = next_frame(&mut rest).expect("one").expect("framed");
        assert_eq!(frame.msg_type, 0x0100);
        assert_eq!(frame.flags, NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(frame.body[0], NFPROTO_IPV6);
        let attrs: Vec<(u16, Vec<u8>)> = Attrs::new(&frame.body[4..])
            .map(|a| a.map(|(t, v)| (t, v.to_vec())).expect("framed"))
            .collect();
        let types: Vec<u16> = attrs.iter().map(|(t, _)| *t).collect();
        assert_eq!(types, [CTA_TUPLE_REPLY, CTA_ZONE, CTA_MARK, CTA_MARK_MASK]);
        assert_eq!(attrs[1].1, 7u16.to_be_bytes());
        assert_eq!(attrs[2].1, 0x5600u32.to_be_bytes());
        assert_eq!(attrs[3].1, 0xff00u32.to_be_bytes());
        let ip = Attrs::new(&attrs[0].1).next().expect("ip").expect("framed");
        let addrs: Vec<(u16, usize)> = Attrs::new(ip.1)
            .map(|a| a.map(|(t, v)| (t, v.len())).expect("framed"))
            .collect();
        assert_eq!(addrs, [(CTA_IP_V6_SRC, 16), (CTA_IP_V6_DST, 16)]);
    }

    #[test]
    fn mixed_families_are_refused() {
        let tuple = Tuple {
            dst: IpAddr::V6(Ipv6Addr::LOCALHOST),
            ..v4()
        };
        assert_eq!(
            encode_get(1, &tuple, Direction::Original, 0).err(),
            Some(TupleError::MixedFamilies)
        );
    }

    /// An entry as ctnetlink sends it: tuples (skipped), status, mark, id.
    fn entry(seq: u32, status: u32, mark: u32) -> Vec<u8> {
        let mut body = vec![NFPROTO_IPV4, 0, 0, 0];
        body.extend(attr(NLA_F_NESTED | CTA_TUPLE_ORIG, &attr(1, &[0; 8])));
        body.extend(attr(CTA_STATUS, &status.to_be_bytes()));
        body.extend(attr(CTA_MARK, &mark.to_be_bytes()));
        body.extend(attr(CTA_ID, &99u32.to_be_bytes()));
        nlmsg(NFNL_SUBSYS_CTNETLINK << 8, seq, &body)
    }

    #[test]
    fn answers_parse() {
        let got = parse_answer(&entry(5, IPS_CONFIRMED, 0x1234), 5).expect("answer");
        let Answer::Entry(ct) = got else {
            panic!("{got:?}")
        };
        assert_eq!(
            (ct.mark, ct.id, ct.first()),
            (0x1234, Some(99), Some(false))
        );
        assert_eq!(parse_answer(&error_msg(0, 6), 6), Ok(Answer::Done));
        assert_eq!(
            parse_answer(&error_msg(libc::ENOENT, 6), 6),
            Ok(Answer::Refused(libc::ENOENT))
        );
        assert_eq!(
            parse_answer(&entry(5, 0, 0), 6),
            Ok(Answer::Nothing),
            "not ours"
        );
        assert!(parse_answer(&entry(5, 0, 0)[..20], 5).is_err());
        let mut short = entry(5, 0, 0);
        short.truncate(16 + 2);
        short[..4].copy_from_slice(&18u32.to_ne_bytes());
        assert!(parse_answer(&short, 5).is_err());
    }

    #[test]
    fn mutated_answers_never_panic() {
        let base = [entry(5, IPS_CONFIRMED, 7), error_msg(0, 5)].concat();
        for_each_mutant(&base, 0x9e37_79b9_7f4a_7c15u64, 20_000, |mutant| {
            let _ = parse_answer(mutant, 5);
        });
    }
}
