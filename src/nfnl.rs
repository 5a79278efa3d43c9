//! nfnetlink_queue spoken directly over a netlink socket: bind a queue, receive the packets the
//! kernel queues to us, give them verdicts (one by one or in batches).
//!
//! This module owns the NFQUEUE wire format (the requests we encode, the messages the kernel sends
//! us) and the one socket that carries them. The wire format is pure: [`Messages`] parses a
//! `&[u8]` into [`PacketMsg`]s and [`MsgError`]s, and the request encoders fill fixed buffers, so
//! both are unit-tested without root. Only [`Socket`] makes syscalls.
//!
//! It decides nothing about packets and must never: panic or assert on what the kernel sends,
//! allocate per packet, block past the caller's timeout (`open` and `unbind` wait at most 5 s for
//! each acknowledgement), or silently lose a packet it was handed. A message that cannot be read is reported as a [`MsgError`] carrying the packet id when
//! one could be recovered, so the caller can still give that packet its verdict.
//!
//! Kernel facts this relies on (net/netfilter/nfnetlink_queue.c):
//! - a queue only receives packets once its copy mode is set (`NFQNL_COPY_NONE` makes the kernel
//!   refuse to queue), so [`Socket::open`] sets the copy range last, when everything else is in
//!   force;
//! - configuring a queue that another socket owns fails with `EPERM`, not `EBUSY` (`EBUSY` is
//!   only for binding twice from the same socket); `EPERM` is also what a process without
//!   `CAP_NET_ADMIN` gets. [`Socket::open`] tells the two apart with an obsolete `PF_BIND` command,
//!   which the kernel acknowledges after its capability check and before any queue lookup;
//! - a verdict the kernel rejects (unknown id, ...) is answered asynchronously with an
//!   `NLMSG_ERROR` in the receive stream, which [`Messages`] reports as [`MsgError::Netlink`].

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::mem;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use libc::c_int;

// ---------------------------------------------------------------------------------------------
// Kernel ABI. Defined here (libc lacks some, and these are the ones this module is checked
// against); all multi-byte netlink header fields are host order, NFQUEUE payloads big-endian.
// ---------------------------------------------------------------------------------------------

// <linux/netlink.h>
/// Netlink protocol of nfnetlink sockets.
const NETLINK_NETFILTER: c_int = 12;
/// `setsockopt` level of netlink socket options.
const SOL_NETLINK: c_int = 270;
/// 1 = do not report receive-queue overflow as `ENOBUFS`. We set 0: overflow must be counted.
const NETLINK_NO_ENOBUFS: c_int = 5;
/// 1 = an error reply quotes only the header of the failed request, not the whole request.
const NETLINK_CAP_ACK: c_int = 10;
/// `sizeof(struct nlmsghdr)`: u32 len, u16 type, u16 flags, u32 seq, u32 pid.
const NLMSG_HDRLEN: usize = 16;
/// Netlink messages and attributes start on 4-byte boundaries (`NLMSG_ALIGNTO`, `NLA_ALIGNTO`).
const NL_ALIGNTO: usize = 4;
/// Nothing: skip.
const NLMSG_NOOP: u16 = 1;
/// Error or acknowledgement: `struct nlmsgerr` (i32 negative errno, 0 = ack; request header).
const NLMSG_ERROR: u16 = 2;
/// End of a multipart dump.
const NLMSG_DONE: u16 = 3;
/// Flag: this is a request.
const NLM_F_REQUEST: u16 = 0x1;
/// Flag: answer with an acknowledgement even on success.
const NLM_F_ACK: u16 = 0x4;
/// `sizeof(struct nlattr)`: u16 len (header included, padding excluded), u16 type.
const NLA_HDRLEN: usize = 4;
/// Attribute type bits without `NLA_F_NESTED` (0x8000) and `NLA_F_NET_BYTEORDER` (0x4000).
const NLA_TYPE_MASK: u16 = 0x3fff;

// <linux/netfilter/nfnetlink.h>
/// `nfgenmsg.version`.
const NFNETLINK_V0: u8 = 0;
/// Subsystem id in the high byte of `nlmsg_type`.
const NFNL_SUBSYS_QUEUE: u16 = 3;
/// `sizeof(struct nfgenmsg)`: u8 family, u8 version, be16 res_id (the queue number).
const NFGENMSG_LEN: usize = 4;

// <linux/netfilter/nfnetlink_queue.h>: message types (low byte of `nlmsg_type`).
/// Kernel -> us: a queued packet.
const NFQNL_MSG_PACKET: u16 = 0;
/// Us -> kernel: verdict for one packet.
const NFQNL_MSG_VERDICT: u16 = 1;
/// Us -> kernel: queue configuration.
const NFQNL_MSG_CONFIG: u16 = 2;
/// Us -> kernel: verdict for every queued packet with id <= the given one.
const NFQNL_MSG_VERDICT_BATCH: u16 = 3;

// Packet and verdict attributes (`enum nfqnl_attr_type`).
/// `struct nfqnl_msg_packet_hdr` (packed, 7 bytes): be32 id, be16 hw_protocol, u8 hook.
const NFQA_PACKET_HDR: u16 = 1;
/// `struct nfqnl_msg_verdict_hdr`: be32 verdict, be32 id.
const NFQA_VERDICT_HDR: u16 = 2;
/// be32 firewall mark (sent only when non-zero; we send it to set a new one).
const NFQA_MARK: u16 = 3;
/// be32 input interface index.
const NFQA_IFINDEX_INDEV: u16 = 5;
/// be32 output interface index.
const NFQA_IFINDEX_OUTDEV: u16 = 6;
/// The packet bytes, from the network header, at most the copy range.
const NFQA_PAYLOAD: u16 = 10;
/// be32 full packet length, sent only when the payload was cut to the copy range.
const NFQA_CAP_LEN: u16 = 13;
/// be32 `NFQA_SKB_*` flags, sent only when non-zero.
const NFQA_SKB_INFO: u16 = 14;
/// be32 uid of the sending socket (needs `NFQA_CFG_F_UID_GID`).
const NFQA_UID: u16 = 16;
/// be32 gid of the sending socket (needs `NFQA_CFG_F_UID_GID`).
const NFQA_GID: u16 = 17;

// Configuration (`enum nfqnl_attr_config`, `enum nfqnl_msg_config_cmds`, ...).
/// `struct nfqnl_msg_config_cmd`: u8 command, u8 pad, be16 pf.
const NFQA_CFG_CMD: u16 = 1;
/// `struct nfqnl_msg_config_params` (packed, 5 bytes): be32 copy_range, u8 copy_mode.
const NFQA_CFG_PARAMS: u16 = 2;
/// be32 most packets held waiting for a verdict.
const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
/// be32 which `NFQA_CFG_F_*` flags this message changes.
const NFQA_CFG_MASK: u16 = 4;
/// be32 the new values of the flags under the mask.
const NFQA_CFG_FLAGS: u16 = 5;
const NFQNL_CFG_CMD_BIND: u8 = 1;
const NFQNL_CFG_CMD_UNBIND: u8 = 2;
/// Obsolete (a no-op since Linux 3.8, acknowledged before any queue lookup).
const NFQNL_CFG_CMD_PF_BIND: u8 = 3;
/// Copy mode: metadata and (up to copy_range bytes of) the packet.
const NFQNL_COPY_PACKET: u8 = 2;
/// Queue full: accept new packets instead of dropping them.
const NFQA_CFG_F_FAIL_OPEN: u32 = 1 << 0;
/// Take GSO packets unsegmented, with checksums possibly not yet computed.
const NFQA_CFG_F_GSO: u32 = 1 << 2;
/// Report the sending socket's uid and gid.
const NFQA_CFG_F_UID_GID: u32 = 1 << 3;
/// The flags this module manages (others are left as the kernel has them).
const MANAGED_FLAGS: u32 = NFQA_CFG_F_FAIL_OPEN | NFQA_CFG_F_GSO | NFQA_CFG_F_UID_GID;
/// The kernel clamps the copy range to this (`0xffff - NLA_HDRLEN`).
pub const MAX_COPY_RANGE: u32 = 0xffff - NLA_HDRLEN as u32;

/// `NFQA_SKB_INFO` flag: the packet's checksum is not computed yet (only with [`Config::gso`]).
pub const SKB_CSUM_NOT_READY: u32 = 1 << 0;
/// `NFQA_SKB_INFO` flag: the packet is a GSO super-packet (only with [`Config::gso`]).
pub const SKB_GSO: u32 = 1 << 1;
/// `NFQA_SKB_INFO` flag: the checksum of an incoming packet has not been verified.
pub const SKB_CSUM_NOT_VERIFIED: u32 = 1 << 2;

// <linux/netfilter.h>
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;
const NF_REPEAT: u32 = 4;

/// `nlmsg_type` of queued packets.
const PACKET_MSG_TYPE: u16 = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET;
/// Room for everything but the payload in a packet message: nlmsghdr, nfgenmsg and every
/// attribute the kernel sends with our flags (about 250 bytes), with a wide margin.
const METADATA_ROOM: usize = 4096;
/// How long [`Socket::open`] and [`Socket::unbind`] wait for each acknowledgement.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Most datagrams kept for the caller when packets arrive while we wait for an acknowledgement.
const EARLY_MAX: usize = 64;

// ---------------------------------------------------------------------------------------------
// Public types.
// ---------------------------------------------------------------------------------------------

/// How to bind one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    pub queue: u16,
    /// Bytes of each packet copied to us; 0 or anything above [`MAX_COPY_RANGE`] means the
    /// kernel's maximum. Default 0xffff (whole packets).
    pub copy_range: u32,
    /// Most packets the kernel holds waiting for our verdicts before the full policy applies.
    pub max_len: u32,
    /// When the queue is full (or our socket buffer is), the kernel accepts packets instead of
    /// dropping them.
    pub fail_open: bool,
    /// Receive buffer size, set with `SO_RCVBUFFORCE` (beyond `net.core.rmem_max`, needs
    /// `CAP_NET_ADMIN`), falling back to `SO_RCVBUF` on `EPERM`. `None` keeps the default.
    pub rcvbuf: Option<usize>,
    /// `NFQA_CFG_F_GSO`: take GSO packets whole, with checksums possibly not computed
    /// ([`SKB_CSUM_NOT_READY`]). Off, the kernel segments them and completes checksums first.
    pub gso: bool,
    /// `NFQA_CFG_F_UID_GID`: report the uid and gid of the socket that sent a local packet.
    pub uid_gid: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            queue: 0,
            copy_range: 0xffff,
            max_len: 4096,
            fail_open: true,
            rcvbuf: None,
            gso: false,
            uid_gid: false,
        }
    }
}

/// What happens to a packet. `Repeat` sends it through its hook again (with its new mark).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    Accept,
    Drop,
    Repeat,
}

impl Verdict {
    /// The kernel's `NF_*` number.
    pub fn to_kernel(self) -> u32 {
        match self {
            Verdict::Accept => NF_ACCEPT,
            Verdict::Drop => NF_DROP,
            Verdict::Repeat => NF_REPEAT,
        }
    }
}

/// One queued packet as the kernel described it. Borrowed from the [`RecvBuf`] it came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketMsg<'a> {
    /// Queue-local id to give the verdict with.
    pub id: u32,
    /// Ethertype of the packet (0x0800 IPv4, 0x86dd IPv6).
    pub hw_protocol: u16,
    /// Netfilter hook it was queued from (`NF_INET_*`: 0 prerouting .. 4 postrouting).
    pub hook: u8,
    /// Firewall mark when queued (0 when the kernel sent none).
    pub mark: u32,
    /// Input interface index, 0 when none.
    pub indev: u32,
    /// Output interface index, 0 when none.
    pub outdev: u32,
    /// The packet from its network header on, cut to the copy range.
    pub payload: &'a [u8],
    /// The full packet length, present only when `payload` was cut to the copy range.
    pub orig_len: Option<u32>,
    /// Uid of the sending socket ([`Config::uid_gid`], local packets only).
    pub uid: Option<u32>,
    /// Gid of the sending socket ([`Config::uid_gid`], local packets only).
    pub gid: Option<u32>,
    /// `SKB_*` flags ([`SKB_CSUM_NOT_READY`], [`SKB_GSO`], [`SKB_CSUM_NOT_VERIFIED`]), 0 if none.
    pub skb_info: u32,
}

/// A message in a received datagram that is not a readable packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsgError {
    /// The kernel refused one of our requests (`NLMSG_ERROR`), e.g. `ENOENT` for a verdict on
    /// an id it no longer holds. `seq` is the sequence number of that request.
    Netlink { errno: i32, seq: u32 },
    /// The message runs past the bytes received: the datagram was larger than the buffer, or
    /// its length field is wrong. Nothing after it in the datagram can be read.
    Truncated { id: Option<u32> },
    /// The message is framed correctly but its content is not what the kernel sends.
    Malformed {
        id: Option<u32>,
        reason: &'static str,
    },
    /// A message type we do not handle (another subsystem, a config echo, ...).
    Unexpected { msg_type: u16 },
}

impl MsgError {
    /// The id of the packet this message was about, when it could be read: that packet still
    /// needs its verdict.
    pub fn packet_id(&self) -> Option<u32> {
        match *self {
            MsgError::Truncated { id } | MsgError::Malformed { id, .. } => id,
            MsgError::Netlink { .. } | MsgError::Unexpected { .. } => None,
        }
    }
}

impl fmt::Display for MsgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            MsgError::Netlink { errno, seq } => write!(
                f,
                "the kernel refused request {seq}: {}",
                io::Error::from_raw_os_error(errno)
            ),
            MsgError::Truncated { id } => {
                write!(f, "netlink message truncated")?;
                if let Some(id) = id {
                    write!(f, " (packet {id})")?;
                }
                f.write_str(": the receive buffer is smaller than the datagram")
            }
            MsgError::Malformed { id, reason } => {
                write!(f, "malformed packet message")?;
                if let Some(id) = id {
                    write!(f, " (packet {id})")?;
                }
                write!(f, ": {reason}")
            }
            MsgError::Unexpected { msg_type } => {
                write!(f, "unexpected netlink message type {msg_type:#06x}")
            }
        }
    }
}

impl std::error::Error for MsgError {}

/// Why a queue could not be bound, with the fix an operator needs.
#[derive(Debug)]
pub enum OpenError {
    /// `EPERM`: the process lacks `CAP_NET_ADMIN` in the queue's network namespace.
    Permission(io::Error),
    /// The queue is bound by another socket (the kernel says `EPERM` or `EBUSY`).
    Busy(u16),
    /// The kernel has no nfnetlink / nfnetlink_queue.
    Unsupported(io::Error),
    /// Any other failure, with the step that failed.
    Io(&'static str, io::Error),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Permission(e) => write!(
                f,
                "permission denied binding the queue ({e}): run as root or grant CAP_NET_ADMIN \
                 (setcap cap_net_admin+ep, or AmbientCapabilities=CAP_NET_ADMIN in systemd)"
            ),
            OpenError::Busy(n) => write!(
                f,
                "queue {n} is already bound by another process: stop it, or pick another --queue"
            ),
            OpenError::Unsupported(e) => write!(
                f,
                "the kernel has no NFQUEUE support ({e}): load it with `modprobe nfnetlink_queue`"
            ),
            OpenError::Io(what, e) => write!(f, "{what} failed: {e}"),
        }
    }
}

impl std::error::Error for OpenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OpenError::Permission(e) | OpenError::Unsupported(e) | OpenError::Io(_, e) => Some(e),
            OpenError::Busy(_) => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Receive buffer and parsing (pure).
// ---------------------------------------------------------------------------------------------

/// A receive buffer, allocated once, 8-byte aligned, big enough for one packet message with
/// the configured copy range.
pub struct RecvBuf {
    words: Box<[u64]>,
    /// Bytes of the last datagram held in the buffer.
    len: usize,
    /// The last datagram was larger than the buffer (its tail is lost).
    truncated: bool,
}

impl RecvBuf {
    /// A buffer for packets copied with `copy_range` (0 = the kernel's maximum).
    pub fn new(copy_range: u32) -> RecvBuf {
        let range = if copy_range == 0 || copy_range > MAX_COPY_RANGE {
            MAX_COPY_RANGE
        } else {
            copy_range
        };
        RecvBuf::with_capacity(range as usize + NLA_HDRLEN + METADATA_ROOM)
    }

    fn with_capacity(bytes: usize) -> RecvBuf {
        RecvBuf {
            words: vec![0u64; bytes.div_ceil(8)].into_boxed_slice(),
            len: 0,
            truncated: false,
        }
    }

    fn storage(&self) -> &[u8] {
        // SAFETY: the pointer and length cover exactly the `words` allocation, which lives as
        // long as `&self`; u64 has no padding and every byte pattern is a valid u8.
        unsafe {
            std::slice::from_raw_parts(
                self.words.as_ptr().cast::<u8>(),
                mem::size_of_val(&*self.words),
            )
        }
    }

    fn storage_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `storage`, and `&mut self` makes this the only view of the allocation;
        // any bytes written through it are a valid u64.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.words.as_mut_ptr().cast::<u8>(),
                mem::size_of_val(&*self.words),
            )
        }
    }

    /// Bytes the buffer holds at most.
    pub fn capacity(&self) -> usize {
        mem::size_of_val(&*self.words)
    }

    /// The bytes of the last datagram received.
    pub fn as_bytes(&self) -> &[u8] {
        self.storage().get(..self.len).unwrap_or(&[])
    }

    /// The last datagram was larger than the buffer (its last message is reported as
    /// [`MsgError::Truncated`]).
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// The messages of the last datagram received (none after a timeout).
    pub fn messages(&self) -> Messages<'_> {
        Messages::new(self.as_bytes())
    }

    fn clear(&mut self) {
        self.len = 0;
        self.truncated = false;
    }

    /// Hold a copy of `datagram`, cut to the capacity.
    fn fill_from(&mut self, datagram: &[u8]) -> usize {
        let n = datagram.len().min(self.capacity());
        if let (Some(dst), Some(src)) = (self.storage_mut().get_mut(..n), datagram.get(..n)) {
            dst.copy_from_slice(src);
        }
        self.len = n;
        self.truncated = datagram.len() > n;
        n
    }
}

impl fmt::Debug for RecvBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecvBuf")
            .field("capacity", &self.capacity())
            .field("len", &self.len)
            .field("truncated", &self.truncated)
            .finish()
    }
}

/// The packet messages in a datagram, in order. Acknowledgements and `NLMSG_NOOP` are skipped,
/// `NLMSG_DONE` ends the iteration, kernel errors and unreadable messages are [`MsgError`]s.
/// A message whose framing is broken ends the iteration after its error.
#[derive(Debug, Clone)]
pub struct Messages<'a> {
    rest: &'a [u8],
}

impl<'a> Messages<'a> {
    /// Parse `datagram`, the bytes of one `recv` on an nfnetlink socket.
    pub fn new(datagram: &'a [u8]) -> Messages<'a> {
        Messages { rest: datagram }
    }
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<PacketMsg<'a>, MsgError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let frame = match next_frame(&mut self.rest)? {
                Ok(frame) => frame,
                Err(e) => return Some(Err(e)),
            };
            match frame.msg_type {
                NLMSG_NOOP => continue,
                NLMSG_DONE => {
                    self.rest = &[];
                    return None;
                }
                NLMSG_ERROR => match error_code(frame.body) {
                    Some(0) => continue,
                    Some(errno) => {
                        return Some(Err(MsgError::Netlink {
                            errno,
                            seq: frame.seq,
                        }));
                    }
                    None => {
                        return Some(Err(MsgError::Malformed {
                            id: None,
                            reason: "error message shorter than its error code",
                        }));
                    }
                },
                PACKET_MSG_TYPE => return Some(parse_packet(frame.body)),
                msg_type => return Some(Err(MsgError::Unexpected { msg_type })),
            }
        }
    }
}

/// One framed netlink message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Frame<'a> {
    msg_type: u16,
    seq: u32,
    /// Everything after the nlmsghdr, up to `nlmsg_len`.
    body: &'a [u8],
}

/// Split the next message off `rest`. After a framing error `rest` is emptied: nothing after a
/// bad length can be trusted.
fn next_frame<'a>(rest: &mut &'a [u8]) -> Option<Result<Frame<'a>, MsgError>> {
    let buf = *rest;
    if buf.is_empty() {
        return None;
    }
    let Some((hdr, _)) = buf.split_first_chunk::<NLMSG_HDRLEN>() else {
        *rest = &[];
        return Some(Err(MsgError::Truncated { id: None }));
    };
    let &[l0, l1, l2, l3, t0, t1, _, _, s0, s1, s2, s3, _, _, _, _] = hdr;
    let len = u32::from_ne_bytes([l0, l1, l2, l3]) as usize;
    let msg_type = u16::from_ne_bytes([t0, t1]);
    let seq = u32::from_ne_bytes([s0, s1, s2, s3]);
    if len < NLMSG_HDRLEN {
        *rest = &[];
        return Some(Err(MsgError::Malformed {
            id: None,
            reason: "netlink message length shorter than its header",
        }));
    }
    let Some(msg) = buf.get(..len) else {
        *rest = &[];
        let id = match msg_type {
            PACKET_MSG_TYPE => buf.get(NLMSG_HDRLEN..).and_then(peek_packet_id),
            _ => None,
        };
        return Some(Err(MsgError::Truncated { id }));
    };
    *rest = len
        .checked_next_multiple_of(NL_ALIGNTO)
        .and_then(|next| buf.get(next..))
        .unwrap_or(&[]);
    Some(Ok(Frame {
        msg_type,
        seq,
        body: msg.get(NLMSG_HDRLEN..).unwrap_or(&[]),
    }))
}

/// The errno of an `NLMSG_ERROR` body (0 for an acknowledgement), positive.
fn error_code(body: &[u8]) -> Option<i32> {
    let code = i32::from_ne_bytes(*body.first_chunk::<4>()?);
    Some(code.saturating_neg())
}

/// The attributes of a message body: `(type without flag bits, value)`, or why the framing is
/// broken (which ends the iteration).
struct Attrs<'a> {
    rest: &'a [u8],
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

fn be32(value: &[u8]) -> Option<u32> {
    value.first_chunk::<4>().map(|b| u32::from_be_bytes(*b))
}

/// Store a be32 attribute value in `slot`; `Some(reason)` when the value is too short.
fn read_into(slot: &mut u32, value: &[u8], reason: &'static str) -> Option<&'static str> {
    match be32(value) {
        Some(v) => {
            *slot = v;
            None
        }
        None => Some(reason),
    }
}

/// Like [`read_into`], for attributes the kernel may leave out.
fn read_some(slot: &mut Option<u32>, value: &[u8], reason: &'static str) -> Option<&'static str> {
    match be32(value) {
        Some(v) => {
            *slot = Some(v);
            None
        }
        None => Some(reason),
    }
}

/// Parse the body (nfgenmsg + attributes) of an `NFQNL_MSG_PACKET`. Attributes come in any
/// order; unknown ones are ignored; a repeated one replaces the earlier value.
fn parse_packet(body: &[u8]) -> Result<PacketMsg<'_>, MsgError> {
    let Some((_nfgenmsg, attrs)) = body.split_first_chunk::<NFGENMSG_LEN>() else {
        return Err(MsgError::Malformed {
            id: None,
            reason: "packet message shorter than its nfgenmsg header",
        });
    };
    let mut msg = PacketMsg {
        id: 0,
        hw_protocol: 0,
        hook: 0,
        mark: 0,
        indev: 0,
        outdev: 0,
        payload: &[],
        orig_len: None,
        uid: None,
        gid: None,
        skb_info: 0,
    };
    let mut have_header = false;
    // The first problem found. A value of the wrong size does not stop the scan (the packet
    // header may still follow, and with it the id the caller needs); broken framing does.
    let mut problem = None;
    for attr in (Attrs { rest: attrs }) {
        let (attr_type, value) = match attr {
            Ok(attr) => attr,
            Err(reason) => {
                problem.get_or_insert(reason);
                break;
            }
        };
        let short = match attr_type {
            NFQA_PACKET_HDR => match value.first_chunk::<7>() {
                Some(&[i0, i1, i2, i3, p0, p1, hook]) => {
                    msg.id = u32::from_be_bytes([i0, i1, i2, i3]);
                    msg.hw_protocol = u16::from_be_bytes([p0, p1]);
                    msg.hook = hook;
                    have_header = true;
                    None
                }
                None => Some("packet header attribute shorter than 7 bytes"),
            },
            NFQA_MARK => read_into(&mut msg.mark, value, "mark attribute shorter than 4 bytes"),
            NFQA_IFINDEX_INDEV => read_into(
                &mut msg.indev,
                value,
                "input interface attribute shorter than 4 bytes",
            ),
            NFQA_IFINDEX_OUTDEV => read_into(
                &mut msg.outdev,
                value,
                "output interface attribute shorter than 4 bytes",
            ),
            NFQA_SKB_INFO => read_into(
                &mut msg.skb_info,
                value,
                "skb info attribute shorter than 4 bytes",
            ),
            NFQA_CAP_LEN => read_some(
                &mut msg.orig_len,
                value,
                "capture length attribute shorter than 4 bytes",
            ),
            NFQA_UID => read_some(&mut msg.uid, value, "uid attribute shorter than 4 bytes"),
            NFQA_GID => read_some(&mut msg.gid, value, "gid attribute shorter than 4 bytes"),
            NFQA_PAYLOAD => {
                msg.payload = value;
                None
            }
            _ => None,
        };
        if let Some(reason) = short {
            problem.get_or_insert(reason);
        }
    }
    let id = have_header.then_some(msg.id);
    match (problem, have_header) {
        (Some(reason), _) => Err(MsgError::Malformed { id, reason }),
        (None, false) => Err(MsgError::Malformed {
            id: None,
            reason: "no packet header attribute",
        }),
        (None, true) => Ok(msg),
    }
}

/// The packet id in the readable start of a packet message body that was cut short.
fn peek_packet_id(partial_body: &[u8]) -> Option<u32> {
    match parse_packet(partial_body) {
        Ok(msg) => Some(msg.id),
        Err(e) => e.packet_id(),
    }
}

/// What a datagram received while waiting for the acknowledgement of request `seq` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct AckScan {
    /// The answer to our request: 0 = acknowledged, else the errno.
    ack: Option<i32>,
    /// Something else the caller must see (packets, errors for other requests, garbage).
    other: bool,
}

fn scan_for_ack(datagram: &[u8], seq: u32) -> AckScan {
    let mut scan = AckScan::default();
    let mut rest = datagram;
    while let Some(frame) = next_frame(&mut rest) {
        match frame {
            Ok(Frame {
                msg_type: NLMSG_ERROR,
                seq: s,
                body,
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
// Requests (pure encoding into fixed buffers).
// ---------------------------------------------------------------------------------------------

/// Room for the largest request we send (a verdict with a mark is 40 bytes).
const REQUEST_CAP: usize = 64;

/// One request to the kernel, encoded in place: verdicts go out per packet, without allocating.
#[derive(Clone, Copy)]
struct Request {
    buf: [u8; REQUEST_CAP],
    len: usize,
}

impl Request {
    /// nlmsghdr + nfgenmsg for queue `queue`.
    fn new(msg_type: u16, flags: u16, seq: u32, queue: u16) -> Request {
        let mut req = Request {
            buf: [0; REQUEST_CAP],
            len: 0,
        };
        req.put(&0u32.to_ne_bytes()); // nlmsg_len, set by `bytes`
        req.put(&((NFNL_SUBSYS_QUEUE << 8) | msg_type).to_ne_bytes());
        req.put(&(flags | NLM_F_REQUEST).to_ne_bytes());
        req.put(&seq.to_ne_bytes());
        req.put(&0u32.to_ne_bytes()); // nlmsg_pid: the kernel knows our port
        req.put(&[libc::AF_UNSPEC as u8, NFNETLINK_V0]);
        req.put(&queue.to_be_bytes());
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

    /// Append one attribute, padded to 4 bytes.
    fn attr(&mut self, attr_type: u16, value: &[u8]) {
        let len = u16::try_from(NLA_HDRLEN + value.len()).unwrap_or(u16::MAX);
        self.put(&len.to_ne_bytes());
        self.put(&attr_type.to_ne_bytes());
        self.put(value);
        while !self.len.is_multiple_of(NL_ALIGNTO) {
            self.put(&[0]);
        }
    }

    /// The finished message, its length field set.
    fn bytes(&mut self) -> io::Result<&[u8]> {
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

fn encode_verdict(
    msg_type: u16,
    seq: u32,
    queue: u16,
    id: u32,
    verdict: Verdict,
    mark: Option<u32>,
) -> Request {
    let mut req = Request::new(msg_type, 0, seq, queue);
    let [v0, v1, v2, v3] = verdict.to_kernel().to_be_bytes();
    let [i0, i1, i2, i3] = id.to_be_bytes();
    req.attr(NFQA_VERDICT_HDR, &[v0, v1, v2, v3, i0, i1, i2, i3]);
    if let Some(mark) = mark {
        req.attr(NFQA_MARK, &mark.to_be_bytes());
    }
    req
}

/// Most datagrams [`Socket::recv_many`] takes in one call.
pub const MAX_BURST: usize = 16;

/// Verdicts collected for one datagram ([`Socket::send_verdicts`]): per-packet verdicts and
/// batch verdicts, in the order they must take effect.
#[derive(Debug, Default)]
pub struct Verdicts {
    bytes: Vec<u8>,
    seq: u32,
}

impl Verdicts {
    pub fn new() -> Verdicts {
        Verdicts::default()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// A verdict for one packet.
    pub fn verdict(
        &mut self,
        queue: u16,
        id: u32,
        verdict: Verdict,
        mark: Option<u32>,
    ) -> io::Result<()> {
        self.push(NFQNL_MSG_VERDICT, queue, id, verdict, mark)
    }

    /// A verdict for every packet of the queue with an id up to `up_to_id` still waiting.
    pub fn batch(
        &mut self,
        queue: u16,
        up_to_id: u32,
        verdict: Verdict,
        mark: Option<u32>,
    ) -> io::Result<()> {
        self.push(NFQNL_MSG_VERDICT_BATCH, queue, up_to_id, verdict, mark)
    }

    fn push(
        &mut self,
        msg_type: u16,
        queue: u16,
        id: u32,
        verdict: Verdict,
        mark: Option<u32>,
    ) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let mut req = encode_verdict(msg_type, self.seq, queue, id, verdict, mark);
        // Every message is a multiple of 4 bytes long, so messages line up as netlink wants.
        self.bytes.extend_from_slice(req.bytes()?);
        Ok(())
    }
}

/// The configuration requests [`Socket`] sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConfigMsg {
    /// `NFQA_CFG_CMD`: bind, unbind, (obsolete) pf bind.
    Command { command: u8, pf: u16 },
    /// `NFQA_CFG_PARAMS` with `NFQNL_COPY_PACKET`.
    CopyRange(u32),
    /// `NFQA_CFG_QUEUE_MAXLEN`.
    MaxLen(u32),
    /// `NFQA_CFG_FLAGS` + `NFQA_CFG_MASK`.
    Flags { flags: u32, mask: u32 },
}

fn encode_config(seq: u32, queue: u16, msg: ConfigMsg, ack: bool) -> Request {
    let flags = if ack { NLM_F_ACK } else { 0 };
    let mut req = Request::new(NFQNL_MSG_CONFIG, flags, seq, queue);
    match msg {
        ConfigMsg::Command { command, pf } => {
            let [p0, p1] = pf.to_be_bytes();
            req.attr(NFQA_CFG_CMD, &[command, 0, p0, p1]);
        }
        ConfigMsg::CopyRange(range) => {
            let [r0, r1, r2, r3] = range.to_be_bytes();
            req.attr(NFQA_CFG_PARAMS, &[r0, r1, r2, r3, NFQNL_COPY_PACKET]);
        }
        ConfigMsg::MaxLen(len) => req.attr(NFQA_CFG_QUEUE_MAXLEN, &len.to_be_bytes()),
        ConfigMsg::Flags { flags, mask } => {
            req.attr(NFQA_CFG_FLAGS, &flags.to_be_bytes());
            req.attr(NFQA_CFG_MASK, &mask.to_be_bytes());
        }
    }
    req
}

/// The flags message for `cfg`: every flag we manage is set or cleared explicitly.
fn flags_for(cfg: &Config) -> ConfigMsg {
    let mut flags = 0;
    if cfg.fail_open {
        flags |= NFQA_CFG_F_FAIL_OPEN;
    }
    if cfg.gso {
        flags |= NFQA_CFG_F_GSO;
    }
    if cfg.uid_gid {
        flags |= NFQA_CFG_F_UID_GID;
    }
    ConfigMsg::Flags {
        flags,
        mask: MANAGED_FLAGS,
    }
}

/// `poll` timeout in milliseconds, rounded up so a short timeout does not become a busy loop.
fn poll_timeout_ms(timeout: Option<Duration>) -> c_int {
    match timeout {
        None => -1,
        Some(t) => c_int::try_from(t.as_nanos().div_ceil(1_000_000)).unwrap_or(c_int::MAX),
    }
}

// ---------------------------------------------------------------------------------------------
// The socket.
// ---------------------------------------------------------------------------------------------

/// What to do with packets that arrive while we wait for an acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Early {
    /// Keep them for the caller's next `recv` (while opening: they need verdicts).
    Keep,
    /// Drop them on the floor (while unbinding: the kernel drops them with the queue).
    Discard,
}

/// A netlink socket bound to one NFQUEUE. Send and Sync: one thread may receive while another
/// sends verdicts.
pub struct Socket {
    fd: OwnedFd,
    queue: u16,
    fail_open: bool,
    rcvbuf_forced: bool,
    seq: AtomicU32,
    bound: AtomicBool,
    /// Datagrams that arrived while `open` waited for its last acknowledgement.
    early: Mutex<VecDeque<Box<[u8]>>>,
    has_early: AtomicBool,
    /// The receive timeout (SO_RCVTIMEO) last set for [`Socket::recv_many`], in microseconds.
    rcvtimeo_us: AtomicU64,
}

impl fmt::Debug for Socket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Socket")
            .field("fd", &self.fd.as_raw_fd())
            .field("queue", &self.queue)
            .field("bound", &self.bound.load(Ordering::Relaxed))
            .finish()
    }
}

impl AsRawFd for Socket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for Socket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Socket {
    /// Open a netlink socket in the calling thread's network namespace and bind queue
    /// `cfg.queue` with the given settings. Each step is acknowledged by the kernel before the
    /// next; the copy range is set last because the kernel queues nothing to us before it.
    pub fn open(cfg: &Config) -> Result<Socket, OpenError> {
        // SAFETY: plain syscall with constant arguments; the result is checked below.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            )
        };
        if raw < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EPROTONOSUPPORT | libc::EAFNOSUPPORT) => OpenError::Unsupported(e),
                Some(libc::EPERM | libc::EACCES) => OpenError::Permission(e),
                _ => OpenError::Io("creating the netlink socket", e),
            });
        }
        // SAFETY: `raw` is a socket we just created and nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut sock = Socket {
            fd,
            queue: cfg.queue,
            fail_open: cfg.fail_open,
            rcvbuf_forced: false,
            seq: AtomicU32::new(1),
            bound: AtomicBool::new(false),
            early: Mutex::new(VecDeque::new()),
            has_early: AtomicBool::new(false),
            rcvtimeo_us: AtomicU64::new(0),
        };
        if let Some(size) = cfg.rcvbuf {
            sock.rcvbuf_forced = sock
                .set_rcvbuf(size)
                .map_err(|e| OpenError::Io("setting the receive buffer size", e))?;
        }
        sock.set_int_opt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 0)
            .map_err(|e| OpenError::Io("enabling ENOBUFS reports", e))?;
        // Best effort: smaller error replies; older kernels lack it and that is fine.
        let _ = sock.set_int_opt(SOL_NETLINK, NETLINK_CAP_ACK, 1);
        let addr = kernel_addr();
        // SAFETY: `addr` is a valid sockaddr_nl and the length is its size.
        let rc = unsafe {
            libc::bind(
                sock.fd.as_raw_fd(),
                (&raw const addr).cast::<libc::sockaddr>(),
                mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(OpenError::Io(
                "binding the netlink socket",
                io::Error::last_os_error(),
            ));
        }

        let mut scratch = RecvBuf::new(cfg.copy_range);
        let bind = ConfigMsg::Command {
            command: NFQNL_CFG_CMD_BIND,
            pf: 0,
        };
        if let Err(e) = sock.request(bind, &mut scratch, Early::Keep) {
            return Err(sock.bind_error(e, &mut scratch));
        }
        sock.bound.store(true, Ordering::Release);
        let steps = [
            (ConfigMsg::MaxLen(cfg.max_len), "setting the queue length"),
            (
                flags_for(cfg),
                "setting the queue flags (fail-open, GSO, uid/gid)",
            ),
            (
                ConfigMsg::CopyRange(cfg.copy_range),
                "setting the copy range",
            ),
        ];
        for (msg, what) in steps {
            sock.request(msg, &mut scratch, Early::Keep)
                .map_err(|e| match e.raw_os_error() {
                    Some(libc::EPERM) => OpenError::Permission(e),
                    _ => OpenError::Io(what, e),
                })?;
        }
        Ok(sock)
    }

    /// The queue number this socket serves.
    pub fn queue(&self) -> u16 {
        self.queue
    }

    /// Whether [`Config::rcvbuf`] was applied with `SO_RCVBUFFORCE` (false: plain `SO_RCVBUF`,
    /// capped by `net.core.rmem_max`, or not requested).
    pub fn rcvbuf_forced(&self) -> bool {
        self.rcvbuf_forced
    }

    /// The receive buffer size as the kernel reports it (twice what was asked: the kernel
    /// counts its bookkeeping).
    pub fn rcvbuf(&self) -> io::Result<usize> {
        let mut value: c_int = 0;
        let mut len = mem::size_of::<c_int>() as libc::socklen_t;
        // SAFETY: `value` and `len` are valid for writes and `len` is the size of `value`.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&raw mut value).cast::<libc::c_void>(),
                &mut len,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(usize::try_from(value).unwrap_or(0))
    }

    /// Wait up to `timeout` (`None`: forever) for the next datagram and read it into `buf`.
    /// Returns its length, 0 when the time ran out or a signal interrupted the wait (the caller
    /// checks its stop flag and calls again). `ENOBUFS` comes back as an error: the socket
    /// buffer overflowed and packets were handled by the queue's full policy; count it and
    /// carry on. A datagram larger than `buf` is cut ([`RecvBuf::truncated`]).
    pub fn recv(&self, buf: &mut RecvBuf, timeout: Option<Duration>) -> io::Result<usize> {
        buf.clear();
        if self.has_early.load(Ordering::Acquire) {
            let mut early = self.lock_early();
            let datagram = early.pop_front();
            self.has_early.store(!early.is_empty(), Ordering::Release);
            drop(early);
            if let Some(datagram) = datagram {
                return Ok(buf.fill_from(&datagram));
            }
        }
        self.recv_raw(buf, timeout)
    }

    /// Give packet `id` its verdict, with a new mark when `mark` is set. The kernel answers
    /// only on failure, later, in the receive stream ([`MsgError::Netlink`]).
    pub fn verdict(&self, id: u32, verdict: Verdict, mark: Option<u32>) -> io::Result<()> {
        let mut req = encode_verdict(
            NFQNL_MSG_VERDICT,
            self.next_seq(),
            self.queue,
            id,
            verdict,
            mark,
        );
        self.send(req.bytes()?)
    }

    /// Give every packet still queued with an id up to `up_to_id` (in serial-number order) the
    /// same verdict and, when set, the same mark. The kernel answers `ENOENT` (later, in the
    /// receive stream) when no packet matched.
    pub fn verdict_batch(
        &self,
        up_to_id: u32,
        verdict: Verdict,
        mark: Option<u32>,
    ) -> io::Result<()> {
        let mut req = encode_verdict(
            NFQNL_MSG_VERDICT_BATCH,
            self.next_seq(),
            self.queue,
            up_to_id,
            verdict,
            mark,
        );
        self.send(req.bytes()?)
    }

    /// Send every verdict collected in `verdicts` in one datagram (the kernel handles each
    /// message of a datagram in order), then empty it.
    pub fn send_verdicts(&self, verdicts: &mut Verdicts) -> io::Result<()> {
        if verdicts.bytes.is_empty() {
            return Ok(());
        }
        let result = self.send(&verdicts.bytes);
        verdicts.bytes.clear();
        result
    }

    /// Receive a burst in one system call: wait up to `timeout` for the first datagram, then
    /// take every datagram already waiting, up to `bufs.len()` (at most [`MAX_BURST`]), one per
    /// buffer (`recvmmsg` with `MSG_WAITFORONE`). Returns how many buffers were filled; 0 on
    /// timeout or interruption. One call per burst instead of poll + receive per packet.
    pub fn recv_many(&self, bufs: &mut [RecvBuf], timeout: Duration) -> io::Result<usize> {
        if self.has_early.load(Ordering::Acquire) {
            return match bufs.first_mut() {
                Some(first) => self
                    .recv(first, Some(Duration::ZERO))
                    .map(|n| usize::from(n > 0)),
                None => Ok(0),
            };
        }
        self.set_rcvtimeo(timeout)?;
        let n = bufs.len().min(MAX_BURST);
        // SAFETY: all-zero is a valid value for these plain C structs.
        let mut iov: [libc::iovec; MAX_BURST] = unsafe { mem::zeroed() };
        // SAFETY: as above.
        let mut hdrs: [libc::mmsghdr; MAX_BURST] = unsafe { mem::zeroed() };
        let mut from = [kernel_addr(); MAX_BURST];
        for (i, buf) in bufs.iter_mut().take(n).enumerate() {
            buf.clear();
            let storage = buf.storage_mut();
            iov[i].iov_base = storage.as_mut_ptr().cast::<libc::c_void>();
            iov[i].iov_len = storage.len();
            hdrs[i].msg_hdr.msg_iov = &raw mut iov[i];
            hdrs[i].msg_hdr.msg_iovlen = 1;
            hdrs[i].msg_hdr.msg_name = (&raw mut from[i]).cast::<libc::c_void>();
            hdrs[i].msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        }
        // SAFETY: `hdrs[..n]` point at `iov[..n]` and `from[..n]`, which point at the buffers'
        // storage; all outlive the call, and the count says `n`.
        let got = unsafe {
            libc::recvmmsg(
                self.fd.as_raw_fd(),
                hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_WAITFORONE | libc::MSG_TRUNC,
                std::ptr::null_mut(),
            )
        };
        if got < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock => Ok(0),
                _ => Err(e),
            };
        }
        let got = (got as usize).min(n);
        for (i, buf) in bufs.iter_mut().take(got).enumerate() {
            if from[i].nl_pid != 0 {
                // Only the kernel may talk to us.
                continue;
            }
            let len = hdrs[i].msg_len as usize;
            buf.len = len.min(buf.capacity());
            buf.truncated = len > buf.len;
        }
        Ok(got)
    }

    fn set_rcvtimeo(&self, timeout: Duration) -> io::Result<()> {
        // At least a millisecond: a zero SO_RCVTIMEO would mean "wait forever".
        let us = u64::try_from(timeout.as_micros())
            .unwrap_or(u64::MAX)
            .max(1_000);
        if self.rcvtimeo_us.load(Ordering::Relaxed) == us {
            return Ok(());
        }
        let tv = libc::timeval {
            tv_sec: (us / 1_000_000) as libc::time_t,
            tv_usec: (us % 1_000_000) as libc::suseconds_t,
        };
        // SAFETY: `tv` is a valid timeval for the duration of the call and the length is its
        // size.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tv).cast::<libc::c_void>(),
                mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        self.rcvtimeo_us.store(us, Ordering::Relaxed);
        Ok(())
    }

    /// Unbind the queue and wait for the kernel to confirm. Packets still waiting for a verdict
    /// are dropped by the kernel. Unbinding an unbound socket does nothing.
    /// Change the queue's length limit while bound. With fail-open, a limit of 0 makes the
    /// kernel accept every new packet without queueing it: how a worker stops taking packets
    /// before it unbinds, so that no packet still waiting is dropped with the queue.
    pub fn set_max_len(&self, len: u32) -> io::Result<()> {
        let mut scratch = RecvBuf::with_capacity(METADATA_ROOM);
        self.request(ConfigMsg::MaxLen(len), &mut scratch, Early::Keep)
    }

    pub fn unbind(&self) -> io::Result<()> {
        if !self.bound.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut scratch = RecvBuf::with_capacity(METADATA_ROOM);
        let unbind = ConfigMsg::Command {
            command: NFQNL_CFG_CMD_UNBIND,
            pf: 0,
        };
        self.request(unbind, &mut scratch, Early::Discard)?;
        self.bound.store(false, Ordering::Release);
        Ok(())
    }

    fn next_seq(&self) -> u32 {
        loop {
            // 0 is what the kernel puts in the messages it sends on its own: never ours.
            let seq = self.seq.fetch_add(1, Ordering::Relaxed);
            if seq != 0 {
                return seq;
            }
        }
    }

    fn lock_early(&self) -> MutexGuard<'_, VecDeque<Box<[u8]>>> {
        self.early
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn set_int_opt(&self, level: c_int, name: c_int, value: c_int) -> io::Result<()> {
        // SAFETY: `value` is a valid c_int for the duration of the call and the length is its
        // size.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                (&raw const value).cast::<libc::c_void>(),
                mem::size_of::<c_int>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Set the receive buffer; true when forced past `rmem_max`.
    fn set_rcvbuf(&self, size: usize) -> io::Result<bool> {
        // The kernel doubles the value; keep the doubled value within an int.
        let value = c_int::try_from(size)
            .unwrap_or(c_int::MAX)
            .min(c_int::MAX / 2);
        match self.set_int_opt(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, value) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => self
                .set_int_opt(libc::SOL_SOCKET, libc::SO_RCVBUF, value)
                .map(|()| false),
            Err(e) => Err(e),
        }
    }

    fn send(&self, bytes: &[u8]) -> io::Result<()> {
        let addr = kernel_addr();
        loop {
            // SAFETY: `bytes` is valid for reads of its length, `addr` is a valid sockaddr_nl
            // and the length is its size.
            let n = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    bytes.as_ptr().cast::<libc::c_void>(),
                    bytes.len(),
                    0,
                    (&raw const addr).cast::<libc::sockaddr>(),
                    mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n as usize != bytes.len() {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "netlink request sent in part",
                ));
            }
            return Ok(());
        }
    }

    /// `poll` then `recvfrom(MSG_DONTWAIT | MSG_TRUNC)` into `buf`. Datagrams not sent by the
    /// kernel (port 0) are ignored.
    fn recv_raw(&self, buf: &mut RecvBuf, timeout: Option<Duration>) -> io::Result<usize> {
        buf.clear();
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is one valid pollfd and the count says one.
        let ready = unsafe { libc::poll(&mut pfd, 1, poll_timeout_ms(timeout)) };
        if ready < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(e);
        }
        if ready == 0 {
            return Ok(0);
        }
        self.recv_now(buf)
    }

    /// `recvfrom` with `MSG_DONTWAIT`: what is waiting now, or `Ok(0)`.
    fn recv_now(&self, buf: &mut RecvBuf) -> io::Result<usize> {
        let mut from = kernel_addr();
        let mut from_len = mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        let storage = buf.storage_mut();
        // SAFETY: `storage` is valid for writes of its length; `from` and `from_len` are valid
        // for writes and `from_len` is the size of `from`.
        let n = unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                storage.as_mut_ptr().cast::<libc::c_void>(),
                storage.len(),
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                (&raw mut from).cast::<libc::sockaddr>(),
                &mut from_len,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock => Ok(0),
                _ => Err(e),
            };
        }
        if from.nl_pid != 0 {
            // Only the kernel may talk to us; a privileged process writing to our port is not
            // queued traffic.
            return Ok(0);
        }
        let n = n as usize;
        buf.len = n.min(buf.capacity());
        buf.truncated = n > buf.len;
        Ok(buf.len)
    }

    /// Send a configuration request with `NLM_F_ACK` and wait for its answer.
    fn request(&self, msg: ConfigMsg, scratch: &mut RecvBuf, early: Early) -> io::Result<()> {
        let seq = self.next_seq();
        let mut req = encode_config(seq, self.queue, msg, true);
        self.send(req.bytes()?)?;
        let deadline = Instant::now() + ACK_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the kernel did not acknowledge the request",
                ));
            }
            match self.recv_raw(scratch, Some(left)) {
                Ok(0) => continue,
                Ok(_) => {}
                // Overflow may have eaten the acknowledgement too: the deadline ends the wait.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => continue,
                Err(e) => return Err(e),
            }
            let scan = scan_for_ack(scratch.as_bytes(), seq);
            if scan.other && early == Early::Keep {
                self.keep_early(scratch.as_bytes());
            }
            match scan.ack {
                Some(0) => return Ok(()),
                Some(errno) => return Err(io::Error::from_raw_os_error(errno)),
                None => {}
            }
        }
    }

    /// Hold a datagram that arrived during `open` for the caller's first `recv`. Past the bound,
    /// its packets get what the kernel would give them with a full queue.
    fn keep_early(&self, datagram: &[u8]) {
        let mut early = self.lock_early();
        if early.len() < EARLY_MAX {
            early.push_back(Box::from(datagram));
            self.has_early.store(true, Ordering::Release);
            return;
        }
        drop(early);
        let verdict = if self.fail_open {
            Verdict::Accept
        } else {
            Verdict::Drop
        };
        for msg in Messages::new(datagram) {
            let id = match msg {
                Ok(packet) => Some(packet.id),
                Err(e) => e.packet_id(),
            };
            if let Some(id) = id {
                let _ = self.verdict(id, verdict, None);
            }
        }
    }

    /// Bind failed: say why in the operator's terms. The kernel answers `EPERM` both to a
    /// process without `CAP_NET_ADMIN` and for a queue another socket owns; the obsolete
    /// `PF_BIND` command, acknowledged after the capability check and before any queue lookup,
    /// tells which.
    fn bind_error(&self, e: io::Error, scratch: &mut RecvBuf) -> OpenError {
        match e.raw_os_error() {
            Some(libc::EPERM) => {
                let probe = ConfigMsg::Command {
                    command: NFQNL_CFG_CMD_PF_BIND,
                    pf: libc::AF_INET as u16,
                };
                match self.request(probe, scratch, Early::Discard) {
                    Ok(()) => OpenError::Busy(self.queue),
                    Err(_) => OpenError::Permission(e),
                }
            }
            Some(libc::EBUSY) => OpenError::Busy(self.queue),
            // nfnetlink answers EINVAL for a subsystem it does not know (module not loaded and
            // not loadable).
            Some(libc::EINVAL | libc::ENOENT | libc::EOPNOTSUPP | libc::EPROTONOSUPPORT) => {
                OpenError::Unsupported(e)
            }
            _ => OpenError::Io("binding the queue", e),
        }
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        if self.bound.load(Ordering::Acquire) {
            // Best effort and without waiting: closing the socket unbinds its queues anyway.
            let unbind = ConfigMsg::Command {
                command: NFQNL_CFG_CMD_UNBIND,
                pf: 0,
            };
            let mut req = encode_config(self.next_seq(), self.queue, unbind, false);
            if let Ok(bytes) = req.bytes() {
                let _ = self.send(bytes);
            }
        }
    }
}

/// The kernel's netlink address (port 0), also our bind address (port chosen by the kernel).
fn kernel_addr() -> libc::sockaddr_nl {
    // SAFETY: sockaddr_nl is a plain C struct for which all zeroes is a valid value.
    let mut addr: libc::sockaddr_nl = unsafe { mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real datagram from Linux 6.18 (x86_64): UDP 127.0.0.1 -> 127.0.0.1:5301 "nfqm-mark-1",
    /// queued from OUTPUT to queue 3 with uid/gid reporting on. 99 bytes, no trailing padding.
    #[cfg(target_endian = "little")]
    const KERNEL_UDP_OUTPUT: &str = "\
        63000000 0003 0000 00000000 00000000 \
        02 00 0003 \
        0b000100 00000001 0800 03 00 \
        08000600 00000001 \
        08001000 00000000 \
        08001100 00000000 \
        2b000a00 45000027 0ded4000 40112ed7 7f000001 7f000001 dc7a14b5 001305b5 \
        6e66716d2d6d61726b2d31";

    fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
            .collect()
    }

    /// One netlink message (host-order header), padded to 4 bytes as the kernel does between
    /// messages.
    fn nlmsg(msg_type: u16, seq: u32, body: &[u8]) -> Vec<u8> {
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

    fn attr(attr_type: u16, value: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((NLA_HDRLEN + value.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&attr_type.to_ne_bytes());
        a.extend_from_slice(value);
        while a.len() % 4 != 0 {
            a.push(0);
        }
        a
    }

    fn pkt_hdr(id: u32, hw_protocol: u16, hook: u8) -> Vec<u8> {
        let mut v = id.to_be_bytes().to_vec();
        v.extend_from_slice(&hw_protocol.to_be_bytes());
        v.push(hook);
        attr(NFQA_PACKET_HDR, &v)
    }

    /// A packet message from queue 3 with these attributes, in this order.
    fn packet(attrs: &[Vec<u8>]) -> Vec<u8> {
        let mut body = vec![libc::AF_INET as u8, NFNETLINK_V0, 0, 3];
        for a in attrs {
            body.extend_from_slice(a);
        }
        nlmsg(PACKET_MSG_TYPE, 0, &body)
    }

    fn error_msg(errno: i32, seq: u32) -> Vec<u8> {
        let mut body = (-errno).to_ne_bytes().to_vec();
        body.extend_from_slice(&[0; NLMSG_HDRLEN]); // the quoted request header
        nlmsg(NLMSG_ERROR, seq, &body)
    }

    fn all(bytes: &[u8]) -> Vec<Result<PacketMsg<'_>, MsgError>> {
        Messages::new(bytes).collect()
    }

    fn one(bytes: &[u8]) -> Result<PacketMsg<'_>, MsgError> {
        let mut msgs = all(bytes);
        assert_eq!(msgs.len(), 1, "{msgs:?}");
        msgs.remove(0)
    }

    // ---- parsing ----

    #[test]
    #[cfg(target_endian = "little")]
    fn real_kernel_packet_message_parses() {
        let bytes = hex(KERNEL_UDP_OUTPUT);
        assert_eq!(bytes.len(), 99);
        let p = one(&bytes).expect("packet");
        assert_eq!(p.id, 1);
        assert_eq!(p.hw_protocol, 0x0800);
        assert_eq!(p.hook, 3);
        assert_eq!((p.mark, p.indev, p.outdev), (0, 0, 1));
        assert_eq!(
            (p.uid, p.gid, p.orig_len, p.skb_info),
            (Some(0), Some(0), None, 0)
        );
        assert_eq!(p.payload.len(), 39);
        assert_eq!(p.payload.first(), Some(&0x45));
        assert!(p.payload.ends_with(b"nfqm-mark-1"));
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn every_prefix_of_a_real_message_is_an_error_not_a_panic() {
        let bytes = hex(KERNEL_UDP_OUTPUT);
        for cut in 1..bytes.len() {
            let msgs = all(&bytes[..cut]);
            assert_eq!(msgs.len(), 1, "cut at {cut}: {msgs:?}");
            let err = msgs[0].expect_err("a cut message is not a packet");
            // Once the 11-byte packet header attribute (bytes 20..31) is in, the id is known.
            let want = if cut >= 31 { Some(1) } else { None };
            assert_eq!(err, MsgError::Truncated { id: want }, "cut at {cut}");
        }
    }

    #[test]
    fn several_messages_in_one_buffer_parse_in_order() {
        let mut buf = packet(&[pkt_hdr(1, 0x0800, 3), attr(NFQA_PAYLOAD, b"abcde")]);
        buf.extend(packet(&[pkt_hdr(2, 0x86dd, 1), attr(NFQA_PAYLOAD, b"xyz")]));
        buf.extend(packet(&[pkt_hdr(3, 0x0800, 0)]));
        let ids: Vec<(u32, u16, u8, &[u8])> = all(&buf)
            .into_iter()
            .map(|m| m.map(|p| (p.id, p.hw_protocol, p.hook, p.payload)))
            .collect::<Result<_, _>>()
            .expect("all packets");
        assert_eq!(
            ids,
            [
                (1, 0x0800, 3, &b"abcde"[..]),
                (2, 0x86dd, 1, b"xyz"),
                (3, 0x0800, 0, b""),
            ]
        );
    }

    #[test]
    fn attributes_parse_in_any_order_and_flag_bits_are_masked() {
        let buf = packet(&[
            attr(NFQA_PAYLOAD, b"data"),
            attr(NFQA_GID | 0x4000, &20u32.to_be_bytes()),
            attr(NFQA_MARK, &0xdead_beefu32.to_be_bytes()),
            attr(NFQA_SKB_INFO, &(SKB_CSUM_NOT_READY | SKB_GSO).to_be_bytes()),
            attr(NFQA_CAP_LEN, &1500u32.to_be_bytes()),
            attr(NFQA_IFINDEX_OUTDEV, &7u32.to_be_bytes()),
            attr(NFQA_UID, &1000u32.to_be_bytes()),
            attr(NFQA_IFINDEX_INDEV, &2u32.to_be_bytes()),
            pkt_hdr(0x0102_0304, 0x0800, 4),
        ]);
        let p = one(&buf).expect("packet");
        assert_eq!(
            p,
            PacketMsg {
                id: 0x0102_0304,
                hw_protocol: 0x0800,
                hook: 4,
                mark: 0xdead_beef,
                indev: 2,
                outdev: 7,
                payload: b"data",
                orig_len: Some(1500),
                uid: Some(1000),
                gid: Some(20),
                skb_info: SKB_CSUM_NOT_READY | SKB_GSO,
            }
        );
    }

    #[test]
    fn unknown_attributes_are_ignored() {
        let buf = packet(&[
            attr(4, &[0; 16]), // NFQA_TIMESTAMP: not read
            pkt_hdr(9, 0x0800, 1),
            attr(9, &[0; 12]),          // NFQA_HWADDR: not read
            attr(0x8000 | 11, &[0; 8]), // nested NFQA_CT
            attr(999 & NLA_TYPE_MASK, b"future"),
            attr(0, &[]), // NFQA_UNSPEC, empty
            attr(NFQA_PAYLOAD, b"p"),
        ]);
        let p = one(&buf).expect("packet");
        assert_eq!((p.id, p.payload), (9, &b"p"[..]));
    }

    #[test]
    fn repeated_attribute_keeps_the_last_value() {
        let buf = packet(&[
            pkt_hdr(1, 0x0800, 1),
            attr(NFQA_MARK, &1u32.to_be_bytes()),
            attr(NFQA_MARK, &2u32.to_be_bytes()),
        ]);
        assert_eq!(one(&buf).expect("packet").mark, 2);
    }

    #[test]
    fn truncated_attribute_header_is_malformed_with_the_id() {
        let mut body = vec![2, 0, 0, 3];
        body.extend(pkt_hdr(7, 0x0800, 3));
        body.extend_from_slice(&[8, 0]); // half an attribute header
        let buf = nlmsg(PACKET_MSG_TYPE, 0, &body);
        assert_eq!(
            one(&buf),
            Err(MsgError::Malformed {
                id: Some(7),
                reason: "attribute header cut short"
            })
        );
    }

    #[test]
    fn attribute_longer_than_its_message_is_malformed_with_the_id() {
        let mut body = vec![2, 0, 0, 3];
        body.extend(pkt_hdr(8, 0x0800, 3));
        body.extend_from_slice(&200u16.to_ne_bytes());
        body.extend_from_slice(&NFQA_PAYLOAD.to_ne_bytes());
        body.extend_from_slice(b"only ten b");
        let mut buf = nlmsg(PACKET_MSG_TYPE, 0, &body);
        buf.extend(packet(&[pkt_hdr(9, 0x0800, 3)]));
        let msgs = all(&buf);
        assert_eq!(
            msgs,
            [
                Err(MsgError::Malformed {
                    id: Some(8),
                    reason: "attribute runs past the end of its message"
                }),
                // The netlink framing was sound: the next message still reads.
                Ok(one(&packet(&[pkt_hdr(9, 0x0800, 3)])).expect("packet")),
            ]
        );
    }

    #[test]
    fn attribute_length_below_its_header_is_malformed() {
        let mut body = vec![2, 0, 0, 3];
        body.extend_from_slice(&2u16.to_ne_bytes());
        body.extend_from_slice(&NFQA_MARK.to_ne_bytes());
        body.extend(pkt_hdr(1, 0x0800, 3));
        let buf = nlmsg(PACKET_MSG_TYPE, 0, &body);
        assert_eq!(
            one(&buf),
            Err(MsgError::Malformed {
                id: None,
                reason: "attribute length shorter than its header"
            })
        );
    }

    #[test]
    fn short_fixed_size_value_is_malformed_but_the_id_is_still_found() {
        let buf = packet(&[attr(NFQA_MARK, &[1, 2]), pkt_hdr(5, 0x0800, 3)]);
        assert_eq!(
            one(&buf),
            Err(MsgError::Malformed {
                id: Some(5),
                reason: "mark attribute shorter than 4 bytes"
            })
        );
        let buf = packet(&[attr(NFQA_PACKET_HDR, &[0, 0, 0, 1, 8, 0])]);
        assert_eq!(
            one(&buf),
            Err(MsgError::Malformed {
                id: None,
                reason: "packet header attribute shorter than 7 bytes"
            })
        );
    }

    #[test]
    fn packet_without_header_attribute_is_malformed() {
        let buf = packet(&[attr(NFQA_PAYLOAD, b"x")]);
        assert_eq!(
            one(&buf),
            Err(MsgError::Malformed {
                id: None,
                reason: "no packet header attribute"
            })
        );
        let buf = nlmsg(PACKET_MSG_TYPE, 0, &[2, 0]);
        assert_eq!(
            one(&buf).map(|_| ()),
            Err(MsgError::Malformed {
                id: None,
                reason: "packet message shorter than its nfgenmsg header"
            })
        );
    }

    #[test]
    fn nlmsg_error_is_reported_and_the_batch_goes_on() {
        let mut buf = error_msg(libc::ENOENT, 42);
        buf.extend(packet(&[pkt_hdr(3, 0x0800, 3)]));
        let msgs = all(&buf);
        assert_eq!(msgs.len(), 2);
        assert_eq!(
            msgs[0],
            Err(MsgError::Netlink {
                errno: libc::ENOENT,
                seq: 42
            })
        );
        assert_eq!(msgs[1].map(|p| p.id), Ok(3));
        let short = nlmsg(NLMSG_ERROR, 1, &[0, 0]);
        assert!(matches!(
            one(&short),
            Err(MsgError::Malformed { id: None, .. })
        ));
    }

    #[test]
    fn acks_and_noops_are_skipped() {
        let mut buf = error_msg(0, 5);
        buf.extend(nlmsg(NLMSG_NOOP, 0, &[]));
        buf.extend(packet(&[pkt_hdr(4, 0x0800, 3)]));
        assert_eq!(one(&buf).map(|p| p.id), Ok(4));
    }

    #[test]
    fn nlmsg_done_ends_the_messages() {
        let mut buf = packet(&[pkt_hdr(1, 0x0800, 3)]);
        buf.extend(nlmsg(NLMSG_DONE, 0, &0i32.to_ne_bytes()));
        buf.extend(packet(&[pkt_hdr(2, 0x0800, 3)]));
        assert_eq!(one(&buf).map(|p| p.id), Ok(1));
    }

    #[test]
    fn unexpected_message_types_are_reported_and_skipped() {
        let mut buf = nlmsg((1 << 8) | 2, 0, &[0; 8]); // a ctnetlink message
        buf.extend(packet(&[pkt_hdr(6, 0x0800, 3)]));
        let msgs = all(&buf);
        assert_eq!(msgs[0], Err(MsgError::Unexpected { msg_type: 0x0102 }));
        assert_eq!(msgs[1].map(|p| p.id), Ok(6));
    }

    #[test]
    fn broken_netlink_length_ends_the_messages() {
        let mut buf = packet(&[pkt_hdr(1, 0x0800, 3)]);
        buf[..4].copy_from_slice(&8u32.to_ne_bytes());
        buf.extend(packet(&[pkt_hdr(2, 0x0800, 3)]));
        assert_eq!(
            all(&buf),
            [Err(MsgError::Malformed {
                id: None,
                reason: "netlink message length shorter than its header"
            })]
        );
        let mut buf = packet(&[pkt_hdr(1, 0x0800, 3)]);
        buf[..4].copy_from_slice(&4096u32.to_ne_bytes());
        assert_eq!(all(&buf), [Err(MsgError::Truncated { id: Some(1) })]);
        assert_eq!(all(&[1, 2, 3]), [Err(MsgError::Truncated { id: None })]);
        assert!(all(&[]).is_empty());
    }

    #[test]
    fn mutated_messages_never_panic() {
        // Deterministic xorshift: flip bytes of a valid two-message buffer many times.
        let mut base = packet(&[
            pkt_hdr(1, 0x0800, 3),
            attr(NFQA_MARK, &5u32.to_be_bytes()),
            attr(NFQA_PAYLOAD, b"payload bytes"),
        ]);
        base.extend(error_msg(libc::ENOENT, 9));
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let mut buf = base.clone();
            for _ in 0..(next() % 4 + 1) {
                let at = (next() % buf.len() as u64) as usize;
                buf[at] = next() as u8;
            }
            let cut = (next() % (buf.len() as u64 + 1)) as usize;
            let n = Messages::new(&buf[..cut]).take(100).count();
            assert!(n <= buf.len() / NLMSG_HDRLEN + 1);
        }
    }

    #[test]
    fn recv_buf_fits_the_copy_range_and_reports_cut_datagrams() {
        assert!(RecvBuf::new(0).capacity() >= MAX_COPY_RANGE as usize + 200);
        assert!(RecvBuf::new(0xffff).capacity() >= MAX_COPY_RANGE as usize + 200);
        let small = RecvBuf::new(40);
        assert!(small.capacity() >= 40 + 200 && small.capacity() < 8192);
        assert_eq!(small.capacity() % 8, 0);

        let mut buf = RecvBuf::with_capacity(24);
        let datagram = packet(&[pkt_hdr(1, 0x0800, 3), attr(NFQA_PAYLOAD, &[0; 64])]);
        assert_eq!(buf.fill_from(&datagram), 24);
        assert!(buf.truncated());
        assert_eq!(buf.as_bytes(), &datagram[..24]);
        assert_eq!(
            buf.messages().collect::<Vec<_>>(),
            [Err(MsgError::Truncated { id: None })]
        );
        let mut buf = RecvBuf::new(0);
        assert_eq!(buf.fill_from(&datagram), datagram.len());
        assert!(!buf.truncated());
        assert_eq!(buf.messages().count(), 1);
        buf.clear();
        assert_eq!(buf.messages().count(), 0);
    }

    // ---- the early-packet stash (no kernel needed) ----

    /// A `Socket` over a plain datagram socket, bound to no queue: for the parts of `Socket`
    /// that do not need the kernel's queue (no root needed).
    fn unbound_socket(fail_open: bool) -> Socket {
        // SAFETY: plain syscall with constant arguments; the result is checked below.
        let raw = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        assert!(raw >= 0, "socket: {}", io::Error::last_os_error());
        Socket {
            // SAFETY: `raw` is a socket we just created and nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(raw) },
            queue: 3,
            fail_open,
            rcvbuf_forced: false,
            seq: AtomicU32::new(1),
            bound: AtomicBool::new(false),
            early: Mutex::new(VecDeque::new()),
            has_early: AtomicBool::new(false),
            rcvtimeo_us: AtomicU64::new(0),
        }
    }

    #[test]
    fn packets_kept_while_opening_come_out_of_the_next_recvs_in_order() {
        let sock = unbound_socket(true);
        let first = packet(&[pkt_hdr(1, 0x0800, 3)]);
        let second = packet(&[pkt_hdr(2, 0x0800, 3), attr(NFQA_PAYLOAD, &[7; 100])]);
        sock.keep_early(&first);
        sock.keep_early(&second);

        let mut buf = RecvBuf::new(0);
        assert_eq!(
            sock.recv(&mut buf, Some(Duration::ZERO)).unwrap(),
            first.len()
        );
        assert_eq!(
            buf.messages().map(|m| m.map(|p| p.id)).collect::<Vec<_>>(),
            [Ok(1)]
        );
        // Into a buffer smaller than the datagram: cut, said so, and the id still found.
        let mut small = RecvBuf::with_capacity(40);
        assert_eq!(sock.recv(&mut small, Some(Duration::ZERO)).unwrap(), 40);
        assert!(small.truncated());
        assert_eq!(
            small.messages().collect::<Vec<_>>(),
            [Err(MsgError::Truncated { id: Some(2) })]
        );
        // Then the socket itself, where nothing waits.
        assert_eq!(sock.recv(&mut buf, Some(Duration::ZERO)).unwrap(), 0);
        assert_eq!(buf.messages().count(), 0);
        assert!(!sock.has_early.load(Ordering::Relaxed));
    }

    #[test]
    fn early_packets_past_the_bound_are_not_kept() {
        let sock = unbound_socket(false);
        for id in 0..EARLY_MAX as u32 + 3 {
            // Past the bound the packet gets the full-queue verdict right away (here the send
            // fails: not a netlink socket) instead of growing the stash.
            sock.keep_early(&packet(&[pkt_hdr(id, 0x0800, 3)]));
        }
        assert_eq!(sock.lock_early().len(), EARLY_MAX);
    }

    // ---- acknowledgements ----

    #[test]
    fn scan_finds_our_ack_and_notices_everything_else() {
        let ok = error_msg(0, 7);
        assert_eq!(
            scan_for_ack(&ok, 7),
            AckScan {
                ack: Some(0),
                other: false
            }
        );
        let refused = error_msg(libc::EPERM, 7);
        assert_eq!(scan_for_ack(&refused, 7).ack, Some(libc::EPERM));
        assert_eq!(scan_for_ack(&ok, 8), AckScan::default(), "stale ack");
        let pkt = packet(&[pkt_hdr(1, 0x0800, 3)]);
        assert_eq!(
            scan_for_ack(&pkt, 7),
            AckScan {
                ack: None,
                other: true
            }
        );
        let other_error = error_msg(libc::ENOENT, 3);
        assert!(scan_for_ack(&other_error, 7).other);
        assert!(scan_for_ack(&[0xff; 5], 7).other);
    }

    // ---- encoding ----

    fn bytes(mut req: Request) -> Vec<u8> {
        req.bytes().expect("fits").to_vec()
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn verdict_with_mark_encodes() {
        let req = encode_verdict(NFQNL_MSG_VERDICT, 7, 3, 1, Verdict::Accept, Some(0x89));
        assert_eq!(
            bytes(req),
            hex("28000000 0103 0100 07000000 00000000 \
                 00000003 \
                 0c000200 00000001 00000001 \
                 08000300 00000089")
        );
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn verdict_without_mark_and_repeat_encode() {
        let req = encode_verdict(NFQNL_MSG_VERDICT, 1, 0, 0xfffe_0001, Verdict::Repeat, None);
        assert_eq!(
            bytes(req),
            hex("20000000 0103 0100 01000000 00000000 \
                 00000000 \
                 0c000200 00000004 fffe0001")
        );
    }

    #[test]
    fn verdicts_of_a_burst_are_whole_messages_back_to_back() {
        let mut v = Verdicts::new();
        v.batch(300, 7, Verdict::Accept, None).unwrap();
        v.verdict(300, 8, Verdict::Accept, Some(0x89)).unwrap();
        let first = bytes(encode_verdict(
            NFQNL_MSG_VERDICT_BATCH,
            1,
            300,
            7,
            Verdict::Accept,
            None,
        ));
        let second = bytes(encode_verdict(
            NFQNL_MSG_VERDICT,
            2,
            300,
            8,
            Verdict::Accept,
            Some(0x89),
        ));
        assert_eq!(first.len() % 4, 0);
        assert_eq!(v.bytes, [first, second].concat());
        assert!(!v.is_empty());
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn verdict_batch_encodes() {
        let req = encode_verdict(
            NFQNL_MSG_VERDICT_BATCH,
            2,
            300,
            0x0102_0304,
            Verdict::Drop,
            Some(1),
        );
        assert_eq!(
            bytes(req),
            hex("28000000 0303 0100 02000000 00000000 \
                 0000012c \
                 0c000200 00000000 01020304 \
                 08000300 00000001")
        );
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn config_messages_encode() {
        let bind = ConfigMsg::Command {
            command: NFQNL_CFG_CMD_BIND,
            pf: 0,
        };
        assert_eq!(
            bytes(encode_config(1, 300, bind, true)),
            hex("1c000000 0203 0500 01000000 00000000 0000012c 08000100 01000000")
        );
        let unbind = ConfigMsg::Command {
            command: NFQNL_CFG_CMD_UNBIND,
            pf: 0,
        };
        assert_eq!(
            bytes(encode_config(2, 3, unbind, false)),
            hex("1c000000 0203 0100 02000000 00000000 00000003 08000100 02000000")
        );
        let pf_bind = ConfigMsg::Command {
            command: NFQNL_CFG_CMD_PF_BIND,
            pf: libc::AF_INET as u16,
        };
        assert_eq!(
            bytes(encode_config(3, 3, pf_bind, true)),
            hex("1c000000 0203 0500 03000000 00000000 00000003 08000100 03000002")
        );
        // copy_params is packed (5 bytes): nla_len 9, then 3 bytes of padding.
        assert_eq!(
            bytes(encode_config(4, 3, ConfigMsg::CopyRange(0xffff), true)),
            hex("20000000 0203 0500 04000000 00000000 00000003 09000200 0000ffff 02000000")
        );
        assert_eq!(
            bytes(encode_config(5, 3, ConfigMsg::MaxLen(4096), true)),
            hex("1c000000 0203 0500 05000000 00000000 00000003 08000300 00001000")
        );
        let cfg = Config {
            fail_open: true,
            gso: false,
            uid_gid: true,
            ..Config::default()
        };
        assert_eq!(
            bytes(encode_config(6, 3, flags_for(&cfg), true)),
            hex("24000000 0203 0500 06000000 00000000 00000003 \
                 08000500 00000009 08000400 0000000d")
        );
    }

    #[test]
    fn flags_follow_the_config() {
        let none = Config {
            fail_open: false,
            ..Config::default()
        };
        assert_eq!(
            flags_for(&none),
            ConfigMsg::Flags {
                flags: 0,
                mask: 0b1101
            }
        );
        let all = Config {
            fail_open: true,
            gso: true,
            uid_gid: true,
            ..Config::default()
        };
        assert_eq!(
            flags_for(&all),
            ConfigMsg::Flags {
                flags: 0b1101,
                mask: 0b1101
            }
        );
    }

    #[test]
    fn socket_can_be_shared_between_a_receiving_and_a_verdict_thread() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Socket>();
    }

    #[test]
    fn verdicts_have_the_kernel_numbers() {
        assert_eq!(Verdict::Drop.to_kernel(), 0);
        assert_eq!(Verdict::Accept.to_kernel(), 1);
        assert_eq!(Verdict::Repeat.to_kernel(), 4);
    }

    #[test]
    fn request_overflow_is_an_error_not_a_panic() {
        let mut req = Request::new(NFQNL_MSG_CONFIG, 0, 1, 0);
        req.attr(NFQA_PAYLOAD, &[0; REQUEST_CAP]);
        assert!(req.bytes().is_err());
    }

    // ---- small things ----

    #[test]
    fn poll_timeouts_round_up_to_milliseconds() {
        assert_eq!(poll_timeout_ms(None), -1);
        assert_eq!(poll_timeout_ms(Some(Duration::ZERO)), 0);
        assert_eq!(poll_timeout_ms(Some(Duration::from_nanos(1))), 1);
        assert_eq!(poll_timeout_ms(Some(Duration::from_micros(1500))), 2);
        assert_eq!(poll_timeout_ms(Some(Duration::from_secs(3))), 3000);
        assert_eq!(poll_timeout_ms(Some(Duration::MAX)), c_int::MAX);
    }

    #[test]
    fn errors_name_cause_and_fix() {
        assert_eq!(
            OpenError::Busy(3).to_string(),
            "queue 3 is already bound by another process: stop it, or pick another --queue"
        );
        let perm = OpenError::Permission(io::Error::from_raw_os_error(libc::EPERM)).to_string();
        assert!(
            perm.contains("CAP_NET_ADMIN") && !perm.contains('\n'),
            "{perm}"
        );
        let unsup = OpenError::Unsupported(io::Error::from_raw_os_error(libc::EINVAL)).to_string();
        assert!(unsup.contains("modprobe nfnetlink_queue"), "{unsup}");
        let io = OpenError::Io("setting the copy range", io::Error::from_raw_os_error(5));
        assert!(
            io.to_string()
                .starts_with("setting the copy range failed: ")
        );
        let e = MsgError::Netlink {
            errno: libc::ENOENT,
            seq: 4,
        };
        assert!(e.to_string().starts_with("the kernel refused request 4: "));
        assert_eq!(
            MsgError::Malformed {
                id: Some(2),
                reason: "r"
            }
            .to_string(),
            "malformed packet message (packet 2): r"
        );
        assert_eq!(MsgError::Truncated { id: Some(9) }.packet_id(), Some(9));
        assert_eq!(e.packet_id(), None);
    }
}
