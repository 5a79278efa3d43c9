//! The nfnetlink_queue wire format: the packet messages the kernel sends (parsed into
//! [`PacketMsg`]s and [`MsgError`]s by [`Messages`]), and the verdicts and configuration
//! requests we send.
//!
//! Pure like all of `wire`: no system calls, no `unsafe`, no panics on what the kernel sends,
//! no allocation per packet.

use std::fmt;
use std::io;

use super::ct::{Ct, parse_ct};
use super::{Attrs, FrameError, Request, be32, error_code, next_frame};
use crate::nfnl::abi::*;

/// Room for everything but the payload in a packet message: nlmsghdr, nfgenmsg and every
/// attribute the kernel sends with our flags (about 250 bytes), with a wide margin.
pub(crate) const METADATA_ROOM: usize = 4096;
/// The flags this module manages (others are left as the kernel has them).
const MANAGED_FLAGS: u32 =
    NFQA_CFG_F_FAIL_OPEN | NFQA_CFG_F_CONNTRACK | NFQA_CFG_F_GSO | NFQA_CFG_F_UID_GID;

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
    /// `NFQA_CFG_F_CONNTRACK`: report each packet's conntrack entry ([`PacketMsg::ct`]). A
    /// kernel without it (no `CONFIG_NETFILTER_NETLINK_GLUE_CT`) refuses the flag; then the
    /// queue is bound without it ([`crate::nfnl::Socket::conntrack`] says which).
    pub conntrack: bool,
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
            conntrack: false,
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
    /// See [`PacketMsg::checksum`].
    pub skb_info: u32,
    /// The packet's conntrack entry ([`Config::conntrack`]; none for packets conntrack does not
    /// track, e.g. queued from the raw table, untracked, or invalid).
    pub ct: Option<Ct>,
    /// The link-layer source address, for packets that came in on a device with a link-layer
    /// header (Ethernet, veth: the source MAC). None for locally generated packets.
    pub hwaddr: Option<HwAddr>,
}

/// What the kernel says about the transport checksum of a queued packet, read from
/// `NFQA_SKB_INFO` as `nfqnl_put_packet_info` (net/netfilter/nfnetlink_queue.c) sets it:
/// - `CSUMNOTREADY` when the packet is `CHECKSUM_PARTIAL` (made on this host, the checksum is
///   filled in by the device or later). Only seen with [`Config::gso`]: without it the kernel
///   completes the checksum (`skb_checksum_help`) before queueing, and says nothing;
/// - else `CSUM_NOTVERIFIED` when the packet was queued in PREROUTING, INPUT or FORWARD (or
///   POSTROUTING without a local socket) and `skb_csum_unnecessary` is false: neither the
///   device nor the stack has verified it yet. Conntrack verifies UDP/TCP checksums in
///   PREROUTING (`nf_conntrack_checksum`, on by default), so after it a good packet is
///   verified and a bad one stays unverified;
/// - else nothing: verified, or a packet this host made (OUTPUT) whose checksum is complete.
///
/// No configuration flag is needed for either bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumState {
    Verified,
    NotReady,
    NotVerified,
}

/// A link-layer address as `struct nfqnl_msg_packet_hw` carries it (up to 8 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HwAddr {
    len: u8,
    bytes: [u8; 8],
}

impl HwAddr {
    /// The address bytes (6 for Ethernet).
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes
            .get(..usize::from(self.len))
            .unwrap_or(&self.bytes)
    }

    /// The address as an Ethernet MAC, when it is 6 bytes long.
    pub fn mac(&self) -> Option<[u8; 6]> {
        match (self.len, self.bytes) {
            (6, [a, b, c, d, e, f, _, _]) => Some([a, b, c, d, e, f]),
            _ => None,
        }
    }
}

impl PacketMsg<'_> {
    /// The checksum state `NFQA_SKB_INFO` reports ([`ChecksumState`]).
    pub fn checksum(&self) -> ChecksumState {
        if self.skb_info & SKB_CSUM_NOT_READY != 0 {
            ChecksumState::NotReady
        } else if self.skb_info & SKB_CSUM_NOT_VERIFIED != 0 {
            ChecksumState::NotVerified
        } else {
            ChecksumState::Verified
        }
    }
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

// ---------------------------------------------------------------------------------------------
// Receive buffer and parsing.
// ---------------------------------------------------------------------------------------------

/// A receive buffer, allocated once, big enough for one packet message with the configured
/// copy range. The socket receives into it; [`RecvBuf::messages`] parses what it holds.
pub struct RecvBuf {
    storage: Box<[u8]>,
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

    /// A buffer of `bytes` bytes, rounded up to a multiple of 8.
    pub(crate) fn with_capacity(bytes: usize) -> RecvBuf {
        RecvBuf {
            storage: vec![0u8; bytes.next_multiple_of(8)].into_boxed_slice(),
            len: 0,
            truncated: false,
        }
    }

    /// The whole buffer, for the socket to receive into. Follow with [`RecvBuf::set_received`].
    pub(crate) fn storage_mut(&mut self) -> &mut [u8] {
        &mut self.storage
    }

    /// The socket received a datagram of `datagram_len` bytes into the storage (cut to the
    /// capacity when larger).
    pub(crate) fn set_received(&mut self, datagram_len: usize) -> usize {
        self.len = datagram_len.min(self.capacity());
        self.truncated = datagram_len > self.len;
        self.len
    }

    /// Bytes the buffer holds at most.
    pub fn capacity(&self) -> usize {
        self.storage.len()
    }

    /// The bytes of the last datagram received.
    pub fn as_bytes(&self) -> &[u8] {
        self.storage.get(..self.len).unwrap_or(&[])
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

    pub(crate) fn clear(&mut self) {
        self.len = 0;
        self.truncated = false;
    }

    /// Hold a copy of `datagram`, cut to the capacity.
    pub(crate) fn fill_from(&mut self, datagram: &[u8]) -> usize {
        let n = datagram.len().min(self.capacity());
        if let (Some(dst), Some(src)) = (self.storage.get_mut(..n), datagram.get(..n)) {
            dst.copy_from_slice(src);
        }
        self.set_received(datagram.len())
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
                Err(e) => return Some(Err(frame_error(e))),
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

/// A framing error in the terms of the queue: a cut packet message still names its packet
/// when its header attribute arrived.
fn frame_error(e: FrameError<'_>) -> MsgError {
    match e {
        FrameError::HeaderCut => MsgError::Truncated { id: None },
        FrameError::LengthBelowHeader => MsgError::Malformed {
            id: None,
            reason: "netlink message length shorter than its header",
        },
        FrameError::Truncated {
            msg_type,
            partial_body,
        } => MsgError::Truncated {
            id: (msg_type == PACKET_MSG_TYPE)
                .then(|| peek_packet_id(partial_body))
                .flatten(),
        },
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
        ct: None,
        hwaddr: None,
    };
    let mut ct_info = None;
    let mut have_header = false;
    // The first problem found. A value of the wrong size does not stop the scan (the packet
    // header may still follow, and with it the id the caller needs); broken framing does.
    let mut problem = None;
    for attr in Attrs::new(attrs) {
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
            NFQA_CT => match parse_ct(value) {
                Ok(ct) => {
                    msg.ct = Some(ct);
                    None
                }
                Err(reason) => Some(reason),
            },
            NFQA_CT_INFO => read_some(
                &mut ct_info,
                value,
                "conntrack info attribute shorter than 4 bytes",
            ),
            NFQA_HWADDR => match parse_hwaddr(value) {
                Some(addr) => {
                    msg.hwaddr = Some(addr);
                    None
                }
                None => Some("hardware address attribute malformed"),
            },
            _ => None,
        };
        if let Some(reason) = short {
            problem.get_or_insert(reason);
        }
    }
    if let Some(ct) = msg.ct.as_mut() {
        ct.info = ct_info;
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

/// `struct nfqnl_msg_packet_hw`: be16 length, 2 bytes padding, 8 address bytes.
fn parse_hwaddr(value: &[u8]) -> Option<HwAddr> {
    let raw = value.first_chunk::<NFQA_HWADDR_LEN>()?;
    let [l0, l1, _, _, rest @ ..] = *raw;
    let len = u8::try_from(u16::from_be_bytes([l0, l1]))
        .ok()
        .filter(|&l| l <= 8)?;
    Some(HwAddr { len, bytes: rest })
}

/// The packet id in the readable start of a packet message body that was cut short.
fn peek_packet_id(partial_body: &[u8]) -> Option<u32> {
    match parse_packet(partial_body) {
        Ok(msg) => Some(msg.id),
        Err(e) => e.packet_id(),
    }
}

// ---------------------------------------------------------------------------------------------
// Requests (encoding into fixed buffers).
// ---------------------------------------------------------------------------------------------

/// Room for the largest request the queue sends (a verdict with a mark is 40 bytes).
pub(crate) const REQUEST_CAP: usize = 64;

/// A request to the queue subsystem.
pub(crate) type QueueRequest = Request<REQUEST_CAP>;

/// nlmsghdr + nfgenmsg of a request about queue `queue`.
fn queue_request(msg_type: u16, flags: u16, seq: u32, queue: u16) -> QueueRequest {
    Request::new(
        NFNL_SUBSYS_QUEUE,
        msg_type,
        flags,
        seq,
        libc::AF_UNSPEC as u8,
        queue,
    )
}

pub(crate) fn encode_verdict(
    msg_type: u16,
    seq: u32,
    queue: u16,
    id: u32,
    verdict: Verdict,
    mark: Option<u32>,
) -> QueueRequest {
    let mut req = queue_request(msg_type, 0, seq, queue);
    let [v0, v1, v2, v3] = verdict.to_kernel().to_be_bytes();
    let [i0, i1, i2, i3] = id.to_be_bytes();
    req.attr(NFQA_VERDICT_HDR, &[v0, v1, v2, v3, i0, i1, i2, i3]);
    if let Some(mark) = mark {
        req.attr(NFQA_MARK, &mark.to_be_bytes());
    }
    req
}

/// Verdicts collected for one datagram ([`crate::nfnl::Socket::send_verdicts`]): per-packet verdicts and
/// batch verdicts, in the order they must take effect.
#[derive(Debug, Default)]
pub struct Verdicts {
    pub(crate) bytes: Vec<u8>,
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
pub(crate) enum ConfigMsg {
    /// `NFQA_CFG_CMD`: bind, unbind, (obsolete) pf bind.
    Command { command: u8, pf: u16 },
    /// `NFQA_CFG_PARAMS` with `NFQNL_COPY_PACKET`.
    CopyRange(u32),
    /// `NFQA_CFG_QUEUE_MAXLEN`.
    MaxLen(u32),
    /// `NFQA_CFG_FLAGS` + `NFQA_CFG_MASK`.
    Flags { flags: u32, mask: u32 },
}

pub(crate) fn encode_config(seq: u32, queue: u16, msg: ConfigMsg, ack: bool) -> QueueRequest {
    let flags = if ack { NLM_F_ACK } else { 0 };
    let mut req = queue_request(NFQNL_MSG_CONFIG, flags, seq, queue);
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
pub(crate) fn flags_for(cfg: &Config) -> ConfigMsg {
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
    if cfg.conntrack {
        flags |= NFQA_CFG_F_CONNTRACK;
    }
    ConfigMsg::Flags {
        flags,
        mask: MANAGED_FLAGS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nfnl::testdata::*;
    use crate::nfnl::wire::{AckScan, scan_for_ack};

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
                ct: None,
                hwaddr: None,
            }
        );
    }

    #[test]
    fn unknown_attributes_are_ignored() {
        let buf = packet(&[
            attr(4, &[0; 16]), // NFQA_TIMESTAMP: not read
            pkt_hdr(9, 0x0800, 1),
            attr(18, b"secctx"), // NFQA_SECCTX: not read
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
        for_each_mutant(&base, 0x9e37_79b9_7f4a_7c15u64, 20_000, |mutant| {
            let n = Messages::new(mutant).take(100).count();
            assert!(n <= base.len() / NLMSG_HDRLEN + 1);
        });
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

    // ---- conntrack, checksum state, link-layer address ----

    /// `NFQA_CT` as ctnetlink's glue builds it: tuples (skipped), status, mark, id, zone.
    fn ct_attr(status: u32, mark: Option<u32>, zone: Option<u16>) -> Vec<u8> {
        let mut nested = attr(NLA_F_NESTED | 1, &attr(NLA_F_NESTED | 1, &[0; 8])); // CTA_TUPLE_ORIG
        nested.extend(attr(CTA_STATUS, &status.to_be_bytes()));
        if let Some(mark) = mark {
            nested.extend(attr(CTA_MARK, &mark.to_be_bytes()));
        }
        nested.extend(attr(CTA_ID, &0xc0ff_ee01u32.to_be_bytes()));
        if let Some(zone) = zone {
            nested.extend(attr(CTA_ZONE, &zone.to_be_bytes()));
        }
        nested.extend(attr(7, &120u32.to_be_bytes())); // CTA_TIMEOUT, not read
        attr(NLA_F_NESTED | NFQA_CT, &nested)
    }

    #[test]
    fn conntrack_entry_of_a_new_connection_parses() {
        let buf = packet(&[
            pkt_hdr(4, 0x0800, 3),
            ct_attr(0x0100 | 0x80, Some(0x2a), None), // IPS_SRC_NAT_DONE | IPS_DST_NAT_DONE
            attr(NFQA_CT_INFO, &2u32.to_be_bytes()),  // IP_CT_NEW
            attr(NFQA_PAYLOAD, b"p"),
        ]);
        let ct = one(&buf).expect("packet").ct.expect("conntrack entry");
        assert_eq!(
            ct,
            Ct {
                mark: 0x2a,
                status: Some(0x180),
                id: Some(0xc0ff_ee01),
                zone: 0,
                info: Some(2),
            }
        );
        assert_eq!(ct.first(), Some(true));
    }

    #[test]
    fn confirmed_entry_is_not_first_and_absent_values_default() {
        let buf = packet(&[
            pkt_hdr(5, 0x0800, 1),
            ct_attr(IPS_CONFIRMED | 0x2, None, Some(7)), // IPS_SEEN_REPLY
        ]);
        let ct = one(&buf).expect("packet").ct.expect("conntrack entry");
        assert_eq!(
            (ct.first(), ct.mark, ct.zone, ct.info),
            (Some(false), 0, 7, None)
        );
        let no_status = packet(&[pkt_hdr(6, 0x0800, 1), attr(NFQA_CT, &[])]);
        let ct = one(&no_status).expect("packet").ct.expect("empty entry");
        assert_eq!(ct.first(), None, "no status: unknown");
        assert_eq!(
            one(&packet(&[pkt_hdr(7, 0x0800, 1)])).expect("packet").ct,
            None
        );
    }

    #[test]
    fn broken_conntrack_entry_is_malformed_with_the_id() {
        let short_mark = attr(NFQA_CT, &attr(CTA_MARK, &[0, 1]));
        assert_eq!(
            one(&packet(&[pkt_hdr(8, 0x0800, 3), short_mark])),
            Err(MsgError::Malformed {
                id: Some(8),
                reason: "conntrack mark shorter than 4 bytes"
            })
        );
        let bad_nest = attr(NFQA_CT, &[2, 0, 3, 0]);
        assert_eq!(
            one(&packet(&[bad_nest, pkt_hdr(9, 0x0800, 3)])),
            Err(MsgError::Malformed {
                id: Some(9),
                reason: "attribute length shorter than its header"
            })
        );
        let short_zone = attr(NFQA_CT, &attr(CTA_ZONE, &[1]));
        assert!(matches!(
            one(&packet(&[pkt_hdr(1, 0x0800, 3), short_zone])),
            Err(MsgError::Malformed { id: Some(1), .. })
        ));
    }

    /// `struct nfqnl_msg_packet_hw` for `addr`.
    fn hw_attr(len: u16, addr: &[u8]) -> Vec<u8> {
        let mut v = len.to_be_bytes().to_vec();
        v.extend_from_slice(&[0, 0]);
        let mut bytes = [0u8; 8];
        bytes[..addr.len()].copy_from_slice(addr);
        v.extend_from_slice(&bytes);
        attr(NFQA_HWADDR, &v)
    }

    #[test]
    fn hardware_address_parses_and_odd_ones_are_refused() {
        let mac = [0x02, 0x6e, 0x66, 0x71, 0, 1];
        let buf = packet(&[pkt_hdr(1, 0x0800, 0), hw_attr(6, &mac)]);
        let hw = one(&buf).expect("packet").hwaddr.expect("address");
        assert_eq!((hw.mac(), hw.as_bytes()), (Some(mac), &mac[..]));
        let buf = packet(&[pkt_hdr(1, 0x0800, 0), hw_attr(8, &[9; 8])]);
        let hw = one(&buf).expect("packet").hwaddr.expect("address");
        assert_eq!((hw.mac(), hw.as_bytes()), (None, &[9u8; 8][..]));
        for bad in [
            hw_attr(9, &[0; 8]),
            attr(NFQA_HWADDR, &[0, 6, 0, 0, 1, 2, 3]),
        ] {
            assert_eq!(
                one(&packet(&[pkt_hdr(2, 0x0800, 0), bad])),
                Err(MsgError::Malformed {
                    id: Some(2),
                    reason: "hardware address attribute malformed"
                })
            );
        }
    }

    #[test]
    fn checksum_state_follows_skb_info() {
        let state = |skb_info: u32| {
            let buf = packet(&[
                pkt_hdr(1, 0x0800, 0),
                attr(NFQA_SKB_INFO, &skb_info.to_be_bytes()),
            ]);
            one(&buf).expect("packet").checksum()
        };
        assert_eq!(state(0), ChecksumState::Verified);
        assert_eq!(state(SKB_GSO), ChecksumState::Verified);
        assert_eq!(state(SKB_CSUM_NOT_READY), ChecksumState::NotReady);
        assert_eq!(state(SKB_CSUM_NOT_READY | SKB_GSO), ChecksumState::NotReady);
        assert_eq!(state(SKB_CSUM_NOT_VERIFIED), ChecksumState::NotVerified);
        let buf = packet(&[pkt_hdr(1, 0x0800, 0)]);
        assert_eq!(
            one(&buf).expect("packet").checksum(),
            ChecksumState::Verified,
            "no attribute: nothing to report"
        );
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

    fn bytes(mut req: QueueRequest) -> Vec<u8> {
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
                 08000500 00000009 08000400 0000000f")
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
                mask: 0b1111
            }
        );
        let all = Config {
            fail_open: true,
            gso: true,
            uid_gid: true,
            conntrack: true,
            ..Config::default()
        };
        assert_eq!(
            flags_for(&all),
            ConfigMsg::Flags {
                flags: 0b1111,
                mask: 0b1111
            }
        );
        let conntrack_only = Config {
            fail_open: false,
            conntrack: true,
            ..Config::default()
        };
        assert_eq!(
            flags_for(&conntrack_only),
            ConfigMsg::Flags {
                flags: NFQA_CFG_F_CONNTRACK,
                mask: 0b1111
            }
        );
    }

    #[test]
    fn verdicts_have_the_kernel_numbers() {
        assert_eq!(Verdict::Drop.to_kernel(), 0);
        assert_eq!(Verdict::Accept.to_kernel(), 1);
        assert_eq!(Verdict::Repeat.to_kernel(), 4);
    }

    #[test]
    fn request_overflow_is_an_error_not_a_panic() {
        let mut req = queue_request(NFQNL_MSG_CONFIG, 0, 1, 0);
        req.attr(NFQA_PAYLOAD, &[0; REQUEST_CAP]);
        assert!(req.bytes().is_err());
    }
}
