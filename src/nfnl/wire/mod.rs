//! The nfnetlink wire format, pure: the requests we encode and the messages the kernel sends
//! us, as bytes in and values out.
//!
//! This file holds what every subsystem shares: netlink framing (`next_frame`), attribute
//! lists (`Attrs`), acknowledgements (`scan_for_ack`) and a request builder writing into a
//! fixed buffer (`Request`). The subsystems each have a file: [`queue`] (nfnetlink_queue:
//! packets, verdicts, configuration), [`nft`] (nf_tables rule dumps: the NFQUEUE rules' packet
//! counters), [`set`] (nf_tables set elements: batches that add, re-time and delete them,
//! dumps and notifications of them) and [`ct`] (ctnetlink: a conntrack entry by its tuple, its
//! mark). Fixed-size requests are encoded in place ([`Request`]); batches, whose size depends on
//! what they carry, into a reused buffer (`MsgBuf`).
//!
//! Every length is checked before it is used, so any byte string is safe to parse (the `nfnl`
//! fuzz target feeds these parsers garbage). This module must never: make a system call, use
//! `unsafe`, panic or assert on what the kernel sends, allocate per packet, or size anything
//! from a number read off the wire.

use std::io;

use super::abi::*;

pub mod ct;
pub mod nft;
pub mod queue;
pub mod set;

/// One framed netlink message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Frame<'a> {
    pub(crate) msg_type: u16,
    pub(crate) flags: u16,
    pub(crate) seq: u32,
    /// Everything after the nlmsghdr, up to `nlmsg_len`.
    pub(crate) body: &'a [u8],
}

/// Why the next message of a datagram cannot be framed. Nothing after it can be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameError<'a> {
    /// Fewer bytes left than a netlink header.
    HeaderCut,
    /// The length field is smaller than the header.
    LengthBelowHeader,
    /// The message runs past the bytes received; `partial_body` is what arrived of its body.
    Truncated {
        msg_type: u16,
        partial_body: &'a [u8],
    },
}

/// Split the next message off `rest`. After a framing error `rest` is emptied: nothing after a
/// bad length can be trusted.
pub(crate) fn next_frame<'a>(rest: &mut &'a [u8]) -> Option<Result<Frame<'a>, FrameError<'a>>> {
    let buf = *rest;
    if buf.is_empty() {
        return None;
    }
    let Some((hdr, _)) = buf.split_first_chunk::<NLMSG_HDRLEN>() else {
        *rest = &[];
        return Some(Err(FrameError::HeaderCut));
    };
    let &[l0, l1, l2, l3, t0, t1, f0, f1, s0, s1, s2, s3, _, _, _, _] = hdr;
    let len = u32::from_ne_bytes([l0, l1, l2, l3]) as usize;
    let msg_type = u16::from_ne_bytes([t0, t1]);
    let flags = u16::from_ne_bytes([f0, f1]);
    let seq = u32::from_ne_bytes([s0, s1, s2, s3]);
    if len < NLMSG_HDRLEN {
        *rest = &[];
        return Some(Err(FrameError::LengthBelowHeader));
    }
    let Some(msg) = buf.get(..len) else {
        *rest = &[];
        return Some(Err(FrameError::Truncated {
            msg_type,
            partial_body: buf.get(NLMSG_HDRLEN..).unwrap_or(&[]),
        }));
    };
    *rest = len
        .checked_next_multiple_of(NL_ALIGNTO)
        .and_then(|next| buf.get(next..))
        .unwrap_or(&[]);
    Some(Ok(Frame {
        msg_type,
        flags,
        seq,
        body: msg.get(NLMSG_HDRLEN..).unwrap_or(&[]),
    }))
}

/// The errno of an `NLMSG_ERROR` body (0 for an acknowledgement), positive.
pub(crate) fn error_code(body: &[u8]) -> Option<i32> {
    let code = i32::from_ne_bytes(*body.first_chunk::<4>()?);
    Some(code.saturating_neg())
}

/// The attributes of a message body: `(type without flag bits, value)`, or why the framing is
/// broken (which ends the iteration).
pub(crate) struct Attrs<'a> {
    pub(crate) rest: &'a [u8],
}

impl<'a> Attrs<'a> {
    pub(crate) fn new(attrs: &'a [u8]) -> Attrs<'a> {
        Attrs { rest: attrs }
    }
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Result<(u16, &'a [u8]), &'static str>;

    fn next(&mut self) -> Option<Self::Item> {
        let buf = self.rest;
        if buf.is_empty() {
            return None;
        }
        self.rest = &[];
        let Some(&[l0, l1, t0, t1]) = buf.first_chunk::<NLA_HDRLEN>() else {
            return Some(Err("attribute header cut short"));
        };
        let len = usize::from(u16::from_ne_bytes([l0, l1]));
        let attr_type = u16::from_ne_bytes([t0, t1]) & NLA_TYPE_MASK;
        if len < NLA_HDRLEN {
            return Some(Err("attribute length shorter than its header"));
        }
        let Some(attr) = buf.get(..len) else {
            return Some(Err("attribute runs past the end of its message"));
        };
        self.rest = len
            .checked_next_multiple_of(NL_ALIGNTO)
            .and_then(|next| buf.get(next..))
            .unwrap_or(&[]);
        Some(Ok((attr_type, attr.get(NLA_HDRLEN..).unwrap_or(&[]))))
    }
}

pub(crate) fn be16(value: &[u8]) -> Option<u16> {
    value.first_chunk::<2>().map(|b| u16::from_be_bytes(*b))
}

pub(crate) fn be32(value: &[u8]) -> Option<u32> {
    value.first_chunk::<4>().map(|b| u32::from_be_bytes(*b))
}

pub(crate) fn be64(value: &[u8]) -> Option<u64> {
    value.first_chunk::<8>().map(|b| u64::from_be_bytes(*b))
}

/// A string attribute: the bytes before the first NUL (all of them when there is none).
pub(crate) fn c_str(value: &[u8]) -> &[u8] {
    match value.iter().position(|&b| b == 0) {
        Some(end) => value.get(..end).unwrap_or(value),
        None => value,
    }
}

/// What a datagram received while waiting for the answer to request `seq` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct AckScan {
    /// The answer to our request: 0 = acknowledged, else the errno.
    pub(crate) ack: Option<i32>,
    /// Something else the caller must see (packets, errors for other requests, garbage).
    pub(crate) other: bool,
}

pub(crate) fn scan_for_ack(datagram: &[u8], seq: u32) -> AckScan {
    let mut scan = AckScan::default();
    let mut rest = datagram;
    while let Some(frame) = next_frame(&mut rest) {
        match frame {
            Ok(Frame {
                msg_type: NLMSG_ERROR,
                seq: s,
                body,
                ..
            }) => match error_code(body) {
                Some(code) if s == seq => scan.ack = Some(code),
                // A late acknowledgement of an earlier request: nothing to tell anyone.
                Some(0) => {}
                _ => scan.other = true,
            },
            Ok(Frame {
                msg_type: NLMSG_NOOP | NLMSG_DONE,
                ..
            }) => {}
            Ok(_) | Err(_) => scan.other = true,
        }
    }
    scan
}

// ---------------------------------------------------------------------------------------------
// Requests (encoding into fixed buffers).
// ---------------------------------------------------------------------------------------------

/// One request to the kernel, encoded in place in `N` bytes: verdicts go out per packet
/// without allocating. Writing past the capacity is not an error until [`Request::bytes`].
#[derive(Clone, Copy)]
pub(crate) struct Request<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> Request<N> {
    /// nlmsghdr (`nlmsg_type` = subsystem << 8 | `msg_type`) + nfgenmsg (`family`, `res_id`
    /// big-endian).
    pub(crate) fn new(
        subsys: u16,
        msg_type: u16,
        flags: u16,
        seq: u32,
        family: u8,
        res_id: u16,
    ) -> Request<N> {
        let mut req = Request {
            buf: [0; N],
            len: 0,
        };
        req.put(&0u32.to_ne_bytes()); // nlmsg_len, set by `bytes`
        req.put(&((subsys << 8) | msg_type).to_ne_bytes());
        req.put(&(flags | NLM_F_REQUEST).to_ne_bytes());
        req.put(&seq.to_ne_bytes());
        req.put(&0u32.to_ne_bytes()); // nlmsg_pid: the kernel knows our port
        req.put(&[family, NFNETLINK_V0]);
        req.put(&res_id.to_be_bytes());
        req
    }

    /// Append bytes. Past the capacity nothing is written and `bytes` reports the overflow.
    fn put(&mut self, bytes: &[u8]) {
        let end = self.len.saturating_add(bytes.len());
        if let Some(dst) = self.buf.get_mut(self.len..end) {
            dst.copy_from_slice(bytes);
        }
        self.len = end;
    }

    fn pad(&mut self) {
        while !self.len.is_multiple_of(NL_ALIGNTO) {
            self.put(&[0]);
        }
    }

    /// Append one attribute, padded to 4 bytes.
    pub(crate) fn attr(&mut self, attr_type: u16, value: &[u8]) {
        let len = u16::try_from(NLA_HDRLEN + value.len()).unwrap_or(u16::MAX);
        self.put(&len.to_ne_bytes());
        self.put(&attr_type.to_ne_bytes());
        self.put(value);
        self.pad();
    }

    /// Open a nested attribute; attributes appended until [`Request::end_nest`] with the
    /// returned token go inside it.
    pub(crate) fn begin_nest(&mut self, attr_type: u16) -> usize {
        let start = self.len;
        self.put(&0u16.to_ne_bytes());
        self.put(&(attr_type | NLA_F_NESTED).to_ne_bytes());
        start
    }

    /// Close the nested attribute opened at `start`: its length covers what was appended.
    pub(crate) fn end_nest(&mut self, start: usize) {
        let len = u16::try_from(self.len.saturating_sub(start)).unwrap_or(u16::MAX);
        if let Some(field) = self.buf.get_mut(start..start.saturating_add(2)) {
            field.copy_from_slice(&len.to_ne_bytes());
        }
    }

    /// The finished message, its length field set.
    pub(crate) fn bytes(&mut self) -> io::Result<&[u8]> {
        let len = u32::try_from(self.len).unwrap_or(u32::MAX);
        if let Some(field) = self.buf.get_mut(..4) {
            field.copy_from_slice(&len.to_ne_bytes());
        }
        self.buf.get(..self.len).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "netlink request larger than its buffer",
            )
        })
    }
}

/// Several netlink messages encoded one after the other into a growable buffer: the batches
/// of nf_tables changes, whose size depends on how many elements they carry. Reused between
/// batches (cleared, not freed), so a steady stream of batches does not allocate.
#[derive(Debug, Default)]
pub(crate) struct MsgBuf {
    buf: Vec<u8>,
    /// Where the message being written starts.
    open: Option<usize>,
}

impl MsgBuf {
    /// Forget what was written; keep the buffer.
    pub(crate) fn clear(&mut self) {
        self.buf.clear();
        self.open = None;
    }

    /// Start a message: nlmsghdr (length set by [`MsgBuf::end`]) and nfgenmsg (`family`,
    /// `res_id` big-endian). `msg_type` is the whole `nlmsg_type`.
    pub(crate) fn begin(&mut self, msg_type: u16, flags: u16, seq: u32, family: u8, res_id: u16) {
        self.end();
        self.open = Some(self.buf.len());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&msg_type.to_ne_bytes());
        self.buf
            .extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&[family, NFNETLINK_V0]);
        self.buf.extend_from_slice(&res_id.to_be_bytes());
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(NL_ALIGNTO) {
            self.buf.push(0);
        }
    }

    /// Append one attribute, padded to 4 bytes. A value too long for an attribute is an
    /// error of the caller's: it is cut to what the length field can say (never happens with
    /// the sizes used here: keys of at most 40 bytes, names of at most 256).
    pub(crate) fn attr(&mut self, attr_type: u16, value: &[u8]) {
        let len = u16::try_from(NLA_HDRLEN + value.len()).unwrap_or(u16::MAX);
        let value = value.get(..usize::from(len) - NLA_HDRLEN).unwrap_or(value);
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&attr_type.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.pad();
    }

    /// A string attribute, NUL-terminated.
    pub(crate) fn attr_str(&mut self, attr_type: u16, value: &str) {
        let len = NLA_HDRLEN + value.len() + 1;
        let len = u16::try_from(len).unwrap_or(u16::MAX);
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&attr_type.to_ne_bytes());
        self.buf.extend_from_slice(value.as_bytes());
        self.buf.push(0);
        self.pad();
    }

    /// Open a nested attribute; close it with [`MsgBuf::end_nest`] and the returned token.
    pub(crate) fn begin_nest(&mut self, attr_type: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(attr_type | NLA_F_NESTED).to_ne_bytes());
        start
    }

    /// Close the nested attribute opened at `start`. False when it grew past what a nested
    /// attribute's 16-bit length can say (the caller keeps nests below 64 KiB).
    pub(crate) fn end_nest(&mut self, start: usize) -> bool {
        let len = u16::try_from(self.buf.len().saturating_sub(start));
        if let Some(field) = self.buf.get_mut(start..start.saturating_add(2)) {
            field.copy_from_slice(&len.unwrap_or(u16::MAX).to_ne_bytes());
        }
        len.is_ok()
    }

    /// Finish the message being written: its length field covers it.
    pub(crate) fn end(&mut self) {
        let Some(start) = self.open.take() else {
            return;
        };
        let len = u32::try_from(self.buf.len().saturating_sub(start)).unwrap_or(u32::MAX);
        if let Some(field) = self.buf.get_mut(start..start.saturating_add(4)) {
            field.copy_from_slice(&len.to_ne_bytes());
        }
    }

    /// Every message written, the last one finished.
    pub(crate) fn bytes(&mut self) -> &[u8] {
        self.end();
        &self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nfnl::testdata::*;

    #[test]
    fn frames_split_and_report_their_header_fields() {
        let mut buf = nlmsg(0x0a06, 7, &[1, 2, 3, 4, 5]);
        buf[6..8].copy_from_slice(&NLM_F_MULTI.to_ne_bytes());
        buf.extend(nlmsg(NLMSG_DONE, 7, &0i32.to_ne_bytes()));
        let mut rest = &buf[..];
        let first = next_frame(&mut rest).expect("one").expect("framed");
        assert_eq!(
            (first.msg_type, first.flags, first.seq, first.body),
            (0x0a06, NLM_F_MULTI, 7, &[1, 2, 3, 4, 5][..])
        );
        let done = next_frame(&mut rest).expect("two").expect("framed");
        assert_eq!(done.msg_type, NLMSG_DONE);
        assert!(next_frame(&mut rest).is_none());
    }

    #[test]
    fn framing_errors_empty_the_rest() {
        let mut rest = &[1u8, 2, 3][..];
        assert_eq!(next_frame(&mut rest), Some(Err(FrameError::HeaderCut)));
        assert!(rest.is_empty());
        let mut short = nlmsg(3, 0, &[]);
        short[..4].copy_from_slice(&8u32.to_ne_bytes());
        let mut rest = &short[..];
        assert_eq!(
            next_frame(&mut rest),
            Some(Err(FrameError::LengthBelowHeader))
        );
        let mut long = nlmsg(0x0300, 0, &[9; 8]);
        long[..4].copy_from_slice(&100u32.to_ne_bytes());
        let mut rest = &long[..];
        assert_eq!(
            next_frame(&mut rest),
            Some(Err(FrameError::Truncated {
                msg_type: 0x0300,
                partial_body: &[9; 8]
            }))
        );
        assert!(rest.is_empty());
    }

    #[test]
    fn nested_attributes_encode_with_their_length_and_flag() {
        let mut req = Request::<64>::new(1, 1, 0, 9, 2, 0);
        let outer = req.begin_nest(1);
        req.attr(2, &[7]);
        req.end_nest(outer);
        let bytes = req.bytes().expect("fits").to_vec();
        // header 16 + nfgenmsg 4, then the nest: len 12, type 0x8001, inner attr len 5 type 2.
        assert_eq!(bytes.len(), 32);
        assert_eq!(&bytes[20..24], &[12, 0, 1, 0x80]);
        assert_eq!(&bytes[24..29], &[5, 0, 2, 0, 7]);
        let mut parsed = Attrs::new(&bytes[20..]);
        let (t, v) = parsed.next().expect("nest").expect("framed");
        assert_eq!(t, 1, "flag bits masked");
        assert_eq!(Attrs::new(v).next(), Some(Ok((2, &[7u8][..]))));
    }

    #[test]
    fn request_overflow_is_an_error_not_a_panic() {
        let mut req = Request::<32>::new(3, 2, 0, 1, 0, 0);
        req.attr(10, &[0; 64]);
        let nest = req.begin_nest(1);
        req.end_nest(nest);
        assert!(req.bytes().is_err());
    }

    #[test]
    fn small_value_readers_check_lengths() {
        assert_eq!(be16(&[1]), None);
        assert_eq!(be16(&[1, 2, 3]), Some(0x0102));
        assert_eq!(be32(&[0, 0, 1]), None);
        assert_eq!(be64(&[0, 0, 0, 0, 0, 0, 1, 2]), Some(0x0102));
        assert_eq!(c_str(b"nfqmark\0\0"), b"nfqmark");
        assert_eq!(c_str(b"no nul"), b"no nul");
        assert_eq!(c_str(b""), b"");
    }
}
