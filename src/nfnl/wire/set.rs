//! nf_tables set elements on the wire: the batches that add, re-time and delete elements of a
//! set, the answers to them, and the elements the kernel sends back (a dump of a set, one
//! element asked for by its key, and change notifications, which have the same layout).
//!
//! A batch is a transaction: `NFNL_MSG_BATCH_BEGIN`, element messages, `NFNL_MSG_BATCH_END`,
//! sent in one datagram. The kernel handles it inside the `sendmsg` call: every message is
//! tried, every error (and, for messages flagged `NLM_F_ACK`, every success) is reported once
//! the whole batch was seen, and the batch is committed only when no message failed; a commit
//! that fails is reported against the batch's first message. So nothing of a batch is applied
//! unless all of it is, and every answer to it is waiting in the socket when `sendmsg` returns.
//!
//! Element keys are the set's key as the kernel stores it: the concatenated fields, each padded
//! to 4 bytes (`ipv4_addr . ipv4_addr . mark` is 12 bytes; an address in network order, a mark
//! in host order, as nft's `mark` type is). Timeouts and expirations are milliseconds, be64.
//!
//! Pure, like all of `wire`: no system calls, no `unsafe`, no panics on what the kernel sends,
//! nothing sized from a number read off the wire.

use std::fmt;

use super::{Attrs, FrameError, MsgBuf, be32, be64, c_str, error_code, next_frame};
use crate::nfnl::abi::*;

/// Longest key handled: `ipv6_addr . ipv6_addr . mark` is 36 bytes.
pub const MAX_KEY_LEN: usize = 40;

/// Most elements one message carries. Its element list is one nested attribute (at most 64
/// KiB); 256 of the largest elements nfqmark writes take about 19 KiB.
pub const ELEMENTS_PER_MESSAGE: usize = 256;

/// A set element's key, as the kernel stores it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    len: u8,
    bytes: [u8; MAX_KEY_LEN],
}

impl Key {
    /// A key of these bytes; `None` when longer than [`MAX_KEY_LEN`].
    pub fn from_bytes(bytes: &[u8]) -> Option<Key> {
        let mut key = Key {
            len: u8::try_from(bytes.len()).ok()?,
            bytes: [0; MAX_KEY_LEN],
        };
        key.bytes.get_mut(..bytes.len())?.copy_from_slice(bytes);
        Some(key)
    }

    /// The key of a concatenation: each field padded with zeroes to a multiple of 4 bytes, as
    /// the kernel lays out registers. `None` when the whole is longer than [`MAX_KEY_LEN`].
    pub fn concat(fields: &[&[u8]]) -> Option<Key> {
        let mut key = Key {
            len: 0,
            bytes: [0; MAX_KEY_LEN],
        };
        let mut at = 0usize;
        for field in fields {
            let end = at.checked_add(field.len())?;
            key.bytes.get_mut(at..end)?.copy_from_slice(field);
            at = end.checked_next_multiple_of(4)?;
        }
        if at > MAX_KEY_LEN {
            return None;
        }
        key.len = u8::try_from(at).ok()?;
        Some(key)
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..usize::from(self.len)).unwrap_or(&[])
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(")?;
        for b in self.as_bytes() {
            write!(f, "{b:02x}")?;
        }
        f.write_str(")")
    }
}

/// Which set: its table's family (`NFPROTO_*`), its table and its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetId<'a> {
    pub family: u8,
    pub table: &'a str,
    pub name: &'a str,
}

/// What a batch message does to its elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Add them; one that exists already is kept, and re-timed by Linux >= 6.12 when a timeout
    /// is given (older kernels keep its old expiry).
    Add,
    /// Delete them; one that is not there fails the batch with `ENOENT`.
    Delete,
    /// Delete them, ignoring those not there (Linux >= 6.3; older kernels refuse the message).
    Destroy,
}

/// One element: its key and, for sets with timeouts, its timeout and what is left of it
/// (milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Element {
    pub key: Key,
    pub timeout_ms: Option<u64>,
    pub expiration_ms: Option<u64>,
}

impl Element {
    pub fn new(key: Key) -> Element {
        Element {
            key,
            timeout_ms: None,
            expiration_ms: None,
        }
    }
}

/// The sequence numbers of a batch: the begin marker's (a failed commit is reported against
/// it), and those of its element messages (consecutive, each acknowledged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSeqs {
    pub begin: u32,
    /// First element message's sequence number.
    pub first: u32,
    /// How many element messages.
    pub messages: u32,
}

impl BatchSeqs {
    fn index(&self, seq: u32) -> Option<usize> {
        let i = seq.wrapping_sub(self.first);
        (i < self.messages).then_some(i as usize)
    }
}

/// A batch being written into a [`MsgBuf`]: [`Batch::begin`], one or more
/// [`Batch::elements`], [`Batch::end`].
#[derive(Debug)]
pub(crate) struct Batch {
    seqs: BatchSeqs,
}

impl Batch {
    /// Clear `buf` and open a batch whose messages are numbered from `seq` on.
    pub(crate) fn begin(buf: &mut MsgBuf, seq: u32) -> Batch {
        buf.clear();
        // The subsystem goes in res_id, big-endian (the kernel also takes old nft's host order).
        buf.begin(
            NFNL_MSG_BATCH_BEGIN,
            0,
            seq,
            libc::AF_UNSPEC as u8,
            NFNL_SUBSYS_NFTABLES,
        );
        Batch {
            seqs: BatchSeqs {
                begin: seq,
                first: seq.wrapping_add(1),
                messages: 0,
            },
        }
    }

    /// One message doing `op` to `elements` of `set` (at most [`ELEMENTS_PER_MESSAGE`] are
    /// taken; the rest are left for another message). Acknowledged. Returns how many it took.
    pub(crate) fn elements(
        &mut self,
        buf: &mut MsgBuf,
        op: Op,
        set: &SetId<'_>,
        elements: &[Element],
    ) -> usize {
        let (msg_type, flags) = match op {
            Op::Add => (NFT_MSG_NEWSETELEM, NLM_F_CREATE | NLM_F_ACK),
            Op::Delete => (NFT_MSG_DELSETELEM, NLM_F_ACK),
            Op::Destroy => (NFT_MSG_DESTROYSETELEM, NLM_F_ACK),
        };
        let seq = self.seqs.first.wrapping_add(self.seqs.messages);
        self.seqs.messages = self.seqs.messages.saturating_add(1);
        buf.begin(
            (NFNL_SUBSYS_NFTABLES << 8) | msg_type,
            flags,
            seq,
            set.family,
            0,
        );
        buf.attr_str(NFTA_SET_ELEM_LIST_TABLE, set.table);
        buf.attr_str(NFTA_SET_ELEM_LIST_SET, set.name);
        let list = buf.begin_nest(NFTA_SET_ELEM_LIST_ELEMENTS);
        let taken = elements.len().min(ELEMENTS_PER_MESSAGE);
        for e in elements.iter().take(taken) {
            put_element(buf, e, op == Op::Add);
        }
        buf.end_nest(list);
        buf.end();
        taken
    }

    /// Close the batch. Its sequence numbers, to read the answers with [`BatchReply`].
    pub(crate) fn end(self, buf: &mut MsgBuf) -> BatchSeqs {
        let end_seq = self.seqs.first.wrapping_add(self.seqs.messages);
        buf.begin(
            NFNL_MSG_BATCH_END,
            0,
            end_seq,
            libc::AF_UNSPEC as u8,
            NFNL_SUBSYS_NFTABLES,
        );
        buf.end();
        self.seqs
    }
}

/// One element in a list: its key and, when adding, its timeout and expiration.
fn put_element(buf: &mut MsgBuf, e: &Element, timed: bool) {
    let elem = buf.begin_nest(NFTA_LIST_ELEM);
    let key = buf.begin_nest(NFTA_SET_ELEM_KEY);
    buf.attr(NFTA_DATA_VALUE, e.key.as_bytes());
    buf.end_nest(key);
    if timed {
        if let Some(ms) = e.timeout_ms {
            buf.attr(NFTA_SET_ELEM_TIMEOUT, &ms.to_be_bytes());
        }
        if let Some(ms) = e.expiration_ms {
            buf.attr(NFTA_SET_ELEM_EXPIRATION, &ms.to_be_bytes());
        }
    }
    buf.end_nest(elem);
}

/// What came back for a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchReply {
    seqs: BatchSeqs,
    /// Element messages answered so far.
    answered: u32,
    /// The first error of an element message: (its index in the batch, errno).
    pub failed: Option<(usize, i32)>,
    /// The batch as a whole was refused (the commit failed, or the kernel would not open it):
    /// the errno reported against its begin marker.
    pub refused: Option<i32>,
}

impl BatchReply {
    pub fn new(seqs: BatchSeqs) -> BatchReply {
        BatchReply {
            seqs,
            answered: 0,
            failed: None,
            refused: None,
        }
    }

    /// Take in one datagram. Answers to other requests are skipped.
    pub fn feed(&mut self, datagram: &[u8]) -> Result<(), &'static str> {
        let mut rest = datagram;
        while let Some(frame) = next_frame(&mut rest) {
            let frame = frame.map_err(|e| match e {
                FrameError::HeaderCut | FrameError::Truncated { .. } => "batch answer cut short",
                FrameError::LengthBelowHeader => "batch answer length below its header",
            })?;
            if frame.msg_type != NLMSG_ERROR {
                continue;
            }
            let code = error_code(frame.body).ok_or("error message cut short")?;
            if frame.seq == self.seqs.begin {
                if code != 0 {
                    self.refused.get_or_insert(code);
                }
            } else if let Some(i) = self.seqs.index(frame.seq) {
                self.answered = self.answered.saturating_add(1);
                if code != 0 && self.failed.is_none() {
                    self.failed = Some((i, code));
                }
            }
        }
        Ok(())
    }

    /// Every element message was answered, or the batch was refused as a whole.
    pub fn complete(&self) -> bool {
        self.answered >= self.seqs.messages || self.refused.is_some()
    }

    /// The batch was applied: every message answered without error, and no refusal.
    pub fn applied(&self) -> bool {
        self.answered >= self.seqs.messages && self.failed.is_none() && self.refused.is_none()
    }

    /// The errno that stopped the batch, if any.
    pub fn errno(&self) -> Option<i32> {
        self.refused.or(self.failed.map(|(_, e)| e))
    }
}

/// `NFT_MSG_GETSETELEM` with `NLM_F_DUMP`: every element of `set`.
pub(crate) fn encode_dump(buf: &mut MsgBuf, seq: u32, set: &SetId<'_>) {
    buf.clear();
    buf.begin(
        (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETSETELEM,
        NLM_F_DUMP,
        seq,
        set.family,
        0,
    );
    buf.attr_str(NFTA_SET_ELEM_LIST_TABLE, set.table);
    buf.attr_str(NFTA_SET_ELEM_LIST_SET, set.name);
    buf.end();
}

/// `NFT_MSG_GETSETELEM` for the one element of `set` with this key: the kernel answers with a
/// `NFT_MSG_NEWSETELEM` holding it, or `ENOENT`.
pub(crate) fn encode_get_element(buf: &mut MsgBuf, seq: u32, set: &SetId<'_>, key: &Key) {
    buf.clear();
    buf.begin(
        (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETSETELEM,
        0,
        seq,
        set.family,
        0,
    );
    buf.attr_str(NFTA_SET_ELEM_LIST_TABLE, set.table);
    buf.attr_str(NFTA_SET_ELEM_LIST_SET, set.name);
    let list = buf.begin_nest(NFTA_SET_ELEM_LIST_ELEMENTS);
    put_element(buf, &Element::new(*key), false);
    buf.end_nest(list);
    buf.end();
}

/// `NFT_MSG_GETSET` for one set: the kernel answers with a `NFT_MSG_NEWSET`, or `ENOENT`.
pub(crate) fn encode_get_set(buf: &mut MsgBuf, seq: u32, set: &SetId<'_>) {
    buf.clear();
    buf.begin(
        (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETSET,
        0,
        seq,
        set.family,
        0,
    );
    buf.attr_str(NFTA_SET_TABLE, set.table);
    buf.attr_str(NFTA_SET_NAME, set.name);
    buf.end();
}

/// What a set is, as far as adding elements to it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetInfo {
    /// `NFT_SET_*` flags.
    pub flags: u32,
    /// The key's length in bytes.
    pub key_len: u32,
    /// nft's key type number (a concatenation's types combined).
    pub key_type: u32,
}

impl SetInfo {
    /// Elements can carry timeouts.
    pub fn timeouts(&self) -> bool {
        self.flags & NFT_SET_TIMEOUT != 0
    }

    /// A map (elements need data, which nfqmark never sends).
    pub fn map(&self) -> bool {
        self.flags & NFT_SET_MAP != 0
    }
}

/// What a datagram says about request `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The set asked for.
    Set(SetInfo),
    /// Elements (the answer to a get of one element, or one message of a dump).
    Elements,
    /// The end of a dump.
    Done,
    /// Refused with this errno.
    Refused(i32),
    /// Nothing about our request here.
    Nothing,
}

/// Read the answer to `NFT_MSG_GETSET` or `NFT_MSG_GETSETELEM` request `seq` from one datagram;
/// elements found are appended to `out`. A dump spreads over several datagrams: call again
/// until [`Answer::Done`] (or a refusal). `interrupted` is set when the kernel flags a message
/// of the dump as cut by a change (`NLM_F_DUMP_INTR`).
pub fn parse_answer(
    datagram: &[u8],
    seq: u32,
    out: &mut Vec<Element>,
    interrupted: &mut bool,
) -> Result<Answer, &'static str> {
    let mut rest = datagram;
    let mut answer = Answer::Nothing;
    while let Some(frame) = next_frame(&mut rest) {
        let frame = frame.map_err(|e| match e {
            FrameError::HeaderCut | FrameError::Truncated { .. } => "set answer cut short",
            FrameError::LengthBelowHeader => "set answer length below its header",
        })?;
        if frame.seq != seq {
            continue;
        }
        if frame.flags & NLM_F_DUMP_INTR != 0 {
            *interrupted = true;
        }
        match frame.msg_type {
            NLMSG_DONE => return Ok(Answer::Done),
            NLMSG_ERROR => match error_code(frame.body).ok_or("error message cut short")? {
                0 => {}
                errno => return Ok(Answer::Refused(errno)),
            },
            t if t == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSET => {
                return parse_set(frame.body).map(Answer::Set);
            }
            t if t == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM => {
                parse_elements(frame.body, out)?;
                answer = Answer::Elements;
            }
            _ => {}
        }
    }
    Ok(answer)
}

/// One `NFT_MSG_NEWSET` body.
fn parse_set(body: &[u8]) -> Result<SetInfo, &'static str> {
    let (_nfgenmsg, attrs) = body
        .split_first_chunk::<NFGENMSG_LEN>()
        .ok_or("set message shorter than its nfgenmsg header")?;
    let mut info = SetInfo {
        flags: 0,
        key_len: 0,
        key_type: 0,
    };
    for attr in Attrs::new(attrs) {
        match attr? {
            (NFTA_SET_FLAGS, v) => info.flags = be32(v).ok_or("set flags shorter than 4 bytes")?,
            (NFTA_SET_KEY_LEN, v) => {
                info.key_len = be32(v).ok_or("set key length shorter than 4 bytes")?
            }
            (NFTA_SET_KEY_TYPE, v) => {
                info.key_type = be32(v).ok_or("set key type shorter than 4 bytes")?
            }
            _ => {}
        }
    }
    Ok(info)
}

/// The table and set named by a `NFT_MSG_NEWSETELEM` message, and its elements appended to
/// `out` (a dump message, an answer to a get, or a notification).
pub fn parse_elements<'a>(
    body: &'a [u8],
    out: &mut Vec<Element>,
) -> Result<(&'a [u8], &'a [u8]), &'static str> {
    let (_nfgenmsg, attrs) = body
        .split_first_chunk::<NFGENMSG_LEN>()
        .ok_or("element message shorter than its nfgenmsg header")?;
    let (mut table, mut set) = (&[][..], &[][..]);
    for attr in Attrs::new(attrs) {
        match attr? {
            (NFTA_SET_ELEM_LIST_TABLE, v) => table = c_str(v),
            (NFTA_SET_ELEM_LIST_SET, v) => set = c_str(v),
            (NFTA_SET_ELEM_LIST_ELEMENTS, list) => {
                for elem in Attrs::new(list) {
                    let (elem_type, value) = elem?;
                    if elem_type == NFTA_LIST_ELEM {
                        out.push(parse_element(value)?);
                    }
                }
            }
            _ => {}
        }
    }
    Ok((table, set))
}

/// One element's attributes. An element without a key, or with a key longer than any nfqmark
/// uses, is an error.
fn parse_element(attrs: &[u8]) -> Result<Element, &'static str> {
    let (mut key, mut timeout_ms, mut expiration_ms) = (None, None, None);
    for attr in Attrs::new(attrs) {
        match attr? {
            (NFTA_SET_ELEM_KEY, data) => {
                for d in Attrs::new(data) {
                    if let (NFTA_DATA_VALUE, v) = d? {
                        key = Some(Key::from_bytes(v).ok_or("element key longer than 40 bytes")?);
                    }
                }
            }
            (NFTA_SET_ELEM_TIMEOUT, v) => {
                timeout_ms = Some(be64(v).ok_or("element timeout shorter than 8 bytes")?)
            }
            (NFTA_SET_ELEM_EXPIRATION, v) => {
                expiration_ms = Some(be64(v).ok_or("element expiration shorter than 8 bytes")?)
            }
            _ => {}
        }
    }
    Ok(Element {
        key: key.ok_or("element without a key")?,
        timeout_ms,
        expiration_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nfnl::testdata::*;

    const SET: SetId<'static> = SetId {
        family: NFPROTO_INET,
        table: "nfqmark",
        name: "f1_20_ff_4",
    };

    fn key4() -> Key {
        Key::concat(&[&[198, 18, 1, 2], &[198, 18, 9, 81]]).expect("fits")
    }

    fn frames(bytes: &[u8]) -> Vec<super::super::Frame<'_>> {
        let mut rest = bytes;
        let mut out = Vec::new();
        while let Some(f) = next_frame(&mut rest) {
            out.push(f.expect("framed"));
        }
        out
    }

    #[test]
    fn keys_pad_each_field_to_four_bytes() {
        let k = Key::concat(&[&[1, 2, 3, 4], &[5, 6], &0x100u32.to_ne_bytes()]).expect("fits");
        assert_eq!(k.as_bytes().len(), 12);
        assert_eq!(&k.as_bytes()[..8], &[1, 2, 3, 4, 5, 6, 0, 0]);
        let v6 = [0u8; 16];
        assert_eq!(
            Key::concat(&[&v6, &v6, &[0; 4]]).map(|k| k.as_bytes().len()),
            Some(36)
        );
        assert_eq!(Key::concat(&[&v6, &v6, &v6]), None, "48 bytes");
        assert_eq!(Key::from_bytes(&[0; 41]), None);
        assert_eq!(
            format!("{:?}", Key::from_bytes(&[0xab, 1]).expect("k")),
            "Key(ab01)"
        );
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn a_batch_adds_timed_elements_between_its_markers() {
        let mut buf = MsgBuf::default();
        let mut batch = Batch::begin(&mut buf, 100);
        let e = Element {
            key: key4(),
            timeout_ms: Some(30_000),
            expiration_ms: Some(30_000),
        };
        assert_eq!(batch.elements(&mut buf, Op::Add, &SET, &[e]), 1);
        let seqs = batch.end(&mut buf);
        assert_eq!(
            seqs,
            BatchSeqs {
                begin: 100,
                first: 101,
                messages: 1
            }
        );
        let bytes = buf.bytes().to_vec();
        let f = frames(&bytes);
        assert_eq!(f.len(), 3);
        assert_eq!((f[0].msg_type, f[0].seq), (NFNL_MSG_BATCH_BEGIN, 100));
        assert_eq!(
            f[0].body,
            &[0, 0, 0, 10],
            "AF_UNSPEC, v0, res_id 10 big-endian"
        );
        assert_eq!(f[1].msg_type, 0x0a0c);
        assert_eq!(f[1].flags, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK);
        assert_eq!(f[1].seq, 101);
        assert_eq!((f[2].msg_type, f[2].seq), (NFNL_MSG_BATCH_END, 102));
        // The element message, byte for byte.
        assert_eq!(
            f[1].body,
            hex("01000000 \
                 0c000100 6e66716d61726b00 \
                 0f000200 66315f32305f66665f340000 \
                 30000380 \
                   2c000180 \
                     10000180 0c000100 c6120102c6120951 \
                     0c000400 0000000000007530 \
                     0c000500 0000000000007530")
        );
        // And read back as the kernel would send it.
        let mut out = Vec::new();
        let (table, set) = parse_elements(f[1].body, &mut out).expect("parses");
        assert_eq!((table, set), (&b"nfqmark"[..], &b"f1_20_ff_4"[..]));
        assert_eq!(out, vec![e]);
    }

    #[test]
    fn deletions_carry_keys_only_and_messages_take_at_most_their_share() {
        let mut buf = MsgBuf::default();
        let mut batch = Batch::begin(&mut buf, 1);
        let e = Element {
            key: key4(),
            timeout_ms: Some(1),
            expiration_ms: None,
        };
        let many = vec![e; ELEMENTS_PER_MESSAGE + 10];
        assert_eq!(
            batch.elements(&mut buf, Op::Destroy, &SET, &many),
            ELEMENTS_PER_MESSAGE
        );
        assert_eq!(batch.elements(&mut buf, Op::Delete, &SET, &many[..10]), 10);
        let seqs = batch.end(&mut buf);
        assert_eq!(seqs.messages, 2);
        let bytes = buf.bytes().to_vec();
        let f = frames(&bytes);
        assert_eq!(
            f[1].msg_type,
            (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DESTROYSETELEM
        );
        assert_eq!(
            f[2].msg_type,
            (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELSETELEM
        );
        let mut out = Vec::new();
        parse_elements(f[1].body, &mut out).expect("parses");
        assert_eq!(out.len(), ELEMENTS_PER_MESSAGE);
        assert!(
            out.iter()
                .all(|x| x.timeout_ms.is_none() && x.key == key4())
        );
    }

    fn seqs() -> BatchSeqs {
        BatchSeqs {
            begin: 10,
            first: 11,
            messages: 2,
        }
    }

    #[test]
    fn a_batch_is_applied_once_every_message_is_acknowledged() {
        let mut r = BatchReply::new(seqs());
        r.feed(&error_msg(0, 11)).expect("reads");
        assert!(!r.complete());
        r.feed(&[error_msg(0, 99), error_msg(0, 12)].concat())
            .expect("reads");
        assert!(r.complete() && r.applied());
        assert_eq!(r.errno(), None);
    }

    #[test]
    fn an_element_error_or_a_refused_commit_fails_the_batch() {
        let mut r = BatchReply::new(seqs());
        r.feed(&[error_msg(libc::ENOENT, 12), error_msg(0, 11)].concat())
            .expect("reads");
        assert!(r.complete() && !r.applied());
        assert_eq!(r.failed, Some((1, libc::ENOENT)));
        // A commit that fails is reported against the begin marker, before the acks.
        let mut r = BatchReply::new(seqs());
        r.feed(&error_msg(libc::ENOMEM, 10)).expect("reads");
        assert!(r.complete() && !r.applied());
        assert_eq!(r.errno(), Some(libc::ENOMEM));
        r.feed(&[error_msg(0, 11), error_msg(0, 12)].concat())
            .expect("reads");
        assert!(!r.applied());
    }

    fn element_msg(seq: u32, elems: &[Element], flags: u16) -> Vec<u8> {
        let mut buf = MsgBuf::default();
        let mut batch = Batch::begin(&mut buf, seq - 1);
        batch.elements(&mut buf, Op::Add, &SET, elems);
        let _ = batch.end(&mut buf);
        let bytes = buf.bytes().to_vec();
        let f = frames(&bytes);
        let mut msg = nlmsg(
            (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM,
            seq,
            f[1].body,
        );
        msg[6..8].copy_from_slice(&flags.to_ne_bytes());
        msg
    }

    #[test]
    fn a_dump_collects_elements_until_done() {
        let e = |last: u8, left: u64| Element {
            key: Key::concat(&[&[198, 18, 1, 2], &[198, 18, 9, last]]).expect("fits"),
            timeout_ms: Some(60_000),
            expiration_ms: Some(left),
        };
        let mut out = Vec::new();
        let mut intr = false;
        let first = element_msg(7, &[e(1, 500), e(2, 600)], NLM_F_MULTI);
        assert_eq!(
            parse_answer(&first, 7, &mut out, &mut intr),
            Ok(Answer::Elements)
        );
        let second = [
            element_msg(7, &[e(3, 700)], NLM_F_MULTI | NLM_F_DUMP_INTR),
            nlmsg(NLMSG_DONE, 7, &0i32.to_ne_bytes()),
        ]
        .concat();
        assert_eq!(
            parse_answer(&second, 7, &mut out, &mut intr),
            Ok(Answer::Done)
        );
        assert!(intr);
        assert_eq!(out, vec![e(1, 500), e(2, 600), e(3, 700)]);
        assert_eq!(
            parse_answer(&error_msg(libc::ENOENT, 8), 8, &mut out, &mut intr),
            Ok(Answer::Refused(libc::ENOENT))
        );
        assert_eq!(
            parse_answer(&first, 8, &mut out, &mut intr),
            Ok(Answer::Nothing),
            "another request's"
        );
    }

    #[test]
    fn a_set_reads_its_flags_and_key_length() {
        let mut body = vec![NFPROTO_INET, 0, 0, 0];
        body.extend(attr(NFTA_SET_TABLE, b"nfqmark\0"));
        body.extend(attr(NFTA_SET_NAME, b"f1_20_ff_4\0"));
        body.extend(attr(
            NFTA_SET_FLAGS,
            &(NFT_SET_TIMEOUT | 0x80u32).to_be_bytes(),
        ));
        body.extend(attr(NFTA_SET_KEY_TYPE, &0x1c7u32.to_be_bytes()));
        body.extend(attr(NFTA_SET_KEY_LEN, &8u32.to_be_bytes()));
        let msg = nlmsg((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSET, 3, &body);
        let got = parse_answer(&msg, 3, &mut Vec::new(), &mut false).expect("parses");
        let Answer::Set(info) = got else {
            panic!("{got:?}")
        };
        assert_eq!(
            (info.key_len, info.timeouts(), info.map()),
            (8, true, false)
        );
    }

    #[test]
    fn get_requests_name_table_set_and_key() {
        let mut buf = MsgBuf::default();
        encode_get_set(&mut buf, 4, &SET);
        let bytes = buf.bytes().to_vec();
        let f = frames(&bytes);
        assert_eq!((f[0].msg_type, f[0].flags), (0x0a0a, NLM_F_REQUEST));
        encode_dump(&mut buf, 5, &SET);
        let bytes = buf.bytes().to_vec();
        let f = frames(&bytes);
        assert_eq!(
            (f[0].msg_type, f[0].flags),
            (0x0a0d, NLM_F_REQUEST | NLM_F_DUMP)
        );
        encode_get_element(&mut buf, 6, &SET, &key4());
        let bytes = buf.bytes().to_vec();
        let f = frames(&bytes);
        assert_eq!(f.len(), 1);
        let mut out = Vec::new();
        parse_elements(f[0].body, &mut out).expect("parses");
        assert_eq!(out, vec![Element::new(key4())]);
    }

    #[test]
    fn mutated_element_messages_never_panic() {
        let e = Element {
            key: key4(),
            timeout_ms: Some(9),
            expiration_ms: Some(8),
        };
        let base = [
            element_msg(5, &[e, e], NLM_F_MULTI),
            nlmsg(NLMSG_DONE, 5, &0i32.to_ne_bytes()),
            error_msg(0, 5),
        ]
        .concat();
        for_each_mutant(&base, 0x2545_f491_4f6c_dd1du64, 20_000, |mutant| {
            let mut out = Vec::new();
            let _ = parse_answer(mutant, 5, &mut out, &mut false);
            let mut r = BatchReply::new(BatchSeqs {
                begin: 4,
                first: 5,
                messages: 1,
            });
            let _ = r.feed(mutant);
            assert!(out.len() <= 2 * base.len());
        });
    }
}
