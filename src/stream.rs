//! DNS over TCP read as a stream: per-direction reassembly of the two-byte length-prefixed
//! messages of RFC 1035 §4.2.2 / RFC 7766, whatever the segmentation.
//!
//! This module owns the per-flow TCP state nfqmark keeps for DNS connections: the next expected
//! sequence number, the bytes of a message that spans segments, and out-of-order data held until
//! the gap before it is filled. For each segment it reports every DNS message the segment
//! completes or contains, in stream order, each exactly once, borrowed from the segment when the
//! message lies wholly inside it. It is pure: segments and `now` come in, no clock, no I/O, no
//! lock (the caller locks and exports the counters), and it never panics. Its tables are the
//! shared [`crate::lru::Lru`] slab (open flows and ended flows, least recently seen first)
//! under a seeded hash index.
//!
//! It must never stall or alter traffic (it only reads: every segment still gets its verdict
//! from the caller), never yield a message twice or one made of bytes that are not a message
//! (a retransmission, a gap, a flow it lost track of), never size memory from a number read off
//! the wire, and never scan all flows: work per segment is O(1) amortized (hash lookups, LRU
//! lists, at most [`EXPIRE_PER_CALL`] expiries) plus the bytes it copies.
//!
//! Policies:
//!
//! - SYN fixes the initial sequence number; data starts after it (TCP Fast Open data too). A flow
//!   first seen on a data segment (nfqmark started mid-connection, or the flow expired or was
//!   evicted) is picked up assuming that segment starts a message, and counted.
//! - Retransmitted bytes (before the next expected byte) are skipped: only the new bytes of a
//!   segment that overlaps what was read are read.
//! - Out of order: a segment after a gap is held (copied) until the gap is filled, at most
//!   [`StreamConfig::max_out_of_order`] bytes past the next expected byte, in at most
//!   [`MAX_RUNS`] runs. A segment that does not fit breaks the flow: no resync is attempted,
//!   because after a gap nothing tells where the next message starts.
//! - A flow that breaks a bound (out-of-order room, the buffer budget of all flows, a copy the
//!   kernel truncated) is counted and its later segments are not read until it ends (FIN, RST,
//!   idle expiry) or a new SYN starts a new connection on its addresses.
//! - FIN ends a direction once every byte before it was read (a message cut short by it is
//!   dropped); RST ends both directions. An ended flow is remembered for
//!   [`StreamConfig::linger`] so its late retransmissions are recognized, not picked up again.
//! - Idle flows expire after [`StreamConfig::idle`]; at [`StreamConfig::capacity`] the oldest
//!   flow is evicted (ended flows first).
//!
//! Use: one [`Streams`] per set of flows a caller sees (behind the caller's lock when several
//! threads share it); per segment, [`Streams::segment`] (or [`Streams::packet`]), then read
//! the answer before the next segment. Each message is a bare DNS message, as in a UDP payload:
//!
//! ```
//! use std::time::Instant;
//! use nfqmark::stream::{StreamConfig, Streams};
//! use nfqmark::{dns, packet};
//! use nfqmark_testkit as fixtures;
//!
//! let (client, server) = ("198.18.0.2".parse().unwrap(), "198.18.0.1".parse().unwrap());
//! let mut wire = fixtures::tcp_framed(&fixtures::dns_query(1, "a.example"));
//! wire.extend(fixtures::tcp_framed(&fixtures::dns_query(2, "b.example")));
//! let bytes = fixtures::tcp(client, 40000, server, 53, &wire);
//! let segment = packet::parse(&bytes).unwrap();
//!
//! let mut streams = Streams::new(StreamConfig::default());
//! let read = streams.packet(&segment, Instant::now()).unwrap();
//! let ids: Vec<u16> = read.messages().filter_map(|m| dns::parse_udp(m.bytes).ok()).map(|d| d.id).collect();
//! assert_eq!(ids, [1, 2]);
//! assert_eq!(read.starts().count(), 2); // two messages begin in this segment
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

// Flow identities come off the wire: the hasher is seeded at random, as in the pairing table.
use foldhash::fast::RandomState;

use crate::lru::{self, Lru};
use crate::packet::{Packet, Proto, TcpFlags};

/// The longest frame on a DNS-over-TCP stream: a two-byte length and a 65,535-byte message.
pub const MAX_FRAME: usize = 2 + 65_535;

/// Most separate runs of out-of-order data one flow holds (each run is bytes after a gap).
pub const MAX_RUNS: usize = 8;

/// Most flows dropped by expiry per segment: expiry work per segment is bounded; a backlog after
/// a quiet spell drains over the next segments (capacity still bounds the table meanwhile).
pub const EXPIRE_PER_CALL: usize = 8;

/// Buffers of ended flows kept for reuse (so steady traffic allocates nothing), and the largest
/// capacity kept: a buffer that grew for a long answer is freed instead.
const SPARE_BUFFERS: usize = 64;
const SPARE_CAPACITY: usize = 4096;

/// Sizes and timing of the stream table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamConfig {
    /// Most flow directions tracked at once (open, broken or ended); the oldest is evicted.
    pub capacity: usize,
    /// A flow with no segment for this long is forgotten.
    pub idle: Duration,
    /// How long an ended flow (FIN, RST) is remembered, to ignore its late retransmissions.
    pub linger: Duration,
    /// Most bytes of out-of-order data one flow holds, counted from the next expected byte.
    pub max_out_of_order: usize,
    /// Most bytes held over all flows (partial messages and out-of-order data).
    pub max_buffered: usize,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            capacity: 16_384,
            idle: Duration::from_secs(60),
            linger: Duration::from_secs(10),
            max_out_of_order: MAX_FRAME,
            max_buffered: 32 << 20,
        }
    }
}

/// Outcome counters. Plain integers: the caller locks the table and exports these.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamCounters {
    /// DNS messages yielded.
    pub messages: u64,
    /// Flows first seen on a data segment, without their SYN, and read from there.
    pub picked_up: u64,
    /// Segments that carried bytes already read (wholly or in part; only new bytes are read).
    pub retransmits: u64,
    /// Segments that came after a gap (held until it is filled, or breaking the flow).
    pub out_of_order: u64,
    /// Flows that stopped being read: out-of-order room or the buffer budget exceeded, or a
    /// segment the kernel copied only in part.
    pub bound_breaks: u64,
    /// Flows dropped to make room for a new one.
    pub evictions: u64,
    /// Open flows forgotten after `idle` without a segment.
    pub expiries: u64,
}

/// One direction of a TCP connection: who sends the bytes, who receives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowId {
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

impl FlowId {
    /// The other direction of the same connection.
    pub fn reverse(self) -> FlowId {
        FlowId {
            src: self.dst,
            dst: self.src,
        }
    }
}

/// What the stream reader needs of one TCP segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment<'p> {
    /// Sequence number: of the SYN when `flags.syn`, else of the first payload byte.
    pub seq: u32,
    pub flags: TcpFlags,
    pub payload: &'p [u8],
    /// The copy is shorter than the segment on the wire (NFQUEUE copy range): the flow cannot
    /// be read past it.
    pub truncated: bool,
}

impl<'p> Segment<'p> {
    /// The flow and segment of a parsed TCP packet; `None` for any other protocol.
    pub fn of(packet: &Packet<'p>) -> Option<(FlowId, Segment<'p>)> {
        if packet.proto != Proto::Tcp {
            return None;
        }
        let id = FlowId {
            src: SocketAddr::new(packet.src, packet.sport),
            dst: SocketAddr::new(packet.dst, packet.dport),
        };
        let segment = Segment {
            seq: packet.seq,
            flags: packet.tcp,
            payload: packet.payload,
            truncated: packet.truncated,
        };
        Some((id, segment))
    }
}

/// What happened to a segment's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// No payload (handshake, bare ACK, FIN or RST alone): nothing to read.
    Empty,
    /// Read: in order, or the new bytes of a segment that overlaps what was read.
    Read,
    /// Every byte was read before (or its flow has ended): nothing read again.
    Retransmit,
    /// Held: a gap comes before it; its messages come with the segment that fills the gap.
    Held,
    /// Not read: its flow is broken or untracked (capacity 0), or this segment broke it.
    Unread,
}

/// One DNS message of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    /// The message, without its two-byte length.
    pub bytes: &'a [u8],
    /// Sequence number of its length prefix's first byte.
    pub seq: u32,
    /// Where its length prefix starts in this segment's payload, when the message began in this
    /// segment (`None`: it began in an earlier segment, held or read).
    pub start: Option<usize>,
    /// The bytes lie in this segment's payload (`false`: assembled from bytes the flow held,
    /// in the table's scratch space).
    pub borrowed: bool,
}

/// The flow's unfinished message after a segment: what the flow holds of it so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partial<'a> {
    /// Where its length prefix starts in this segment's payload, when it began in this segment.
    pub start: Option<usize>,
    /// Its length, once both bytes of the prefix were seen.
    pub len: Option<u16>,
    /// The message bytes seen so far (after the prefix): enough, once 12 bytes and the question
    /// are in, to read the header of a long answer before its last segment arrives.
    pub head: &'a [u8],
}

/// A message's place in the segment or in the stream table's scratch buffer.
#[derive(Debug, Clone, Copy)]
struct Span {
    borrowed: bool,
    lo: usize,
    hi: usize,
    seq: u32,
    start: Option<usize>,
}

/// The reader's answer for one segment. Borrows the segment and the table until dropped.
#[derive(Debug, Clone, Copy)]
pub struct Read<'a> {
    status: Status,
    payload: &'a [u8],
    scratch: &'a [u8],
    spans: &'a [Span],
    partial: Option<Partial<'a>>,
}

impl<'a> Read<'a> {
    pub fn status(&self) -> Status {
        self.status
    }

    /// The messages this segment completes or contains, in stream order.
    pub fn messages(&self) -> impl Iterator<Item = Message<'a>> + 'a {
        let (payload, scratch) = (self.payload, self.scratch);
        self.spans.iter().map(move |s| {
            let from = if s.borrowed { payload } else { scratch };
            Message {
                bytes: from.get(s.lo..s.hi).unwrap_or_default(),
                seq: s.seq,
                start: s.start,
                borrowed: s.borrowed,
            }
        })
    }

    /// How many messages [`Read::messages`] yields.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The flow's unfinished message after this segment, if any (begun in this segment or an
    /// earlier one: see [`Partial::start`]).
    pub fn partial(&self) -> Option<Partial<'a>> {
        self.partial
    }

    /// Offsets in the payload where a message's length prefix starts, in order: complete
    /// messages, then the unfinished one. Several mean the segment carries several messages
    /// (of one client, or, on a resolver's shared connection, of several).
    pub fn starts(&self) -> impl Iterator<Item = usize> + 'a {
        let partial = self.partial.and_then(|p| p.start);
        self.spans.iter().filter_map(|s| s.start).chain(partial)
    }

    /// Whether the segment carries the start of a message.
    pub fn starts_message(&self) -> bool {
        self.starts().next().is_some()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Being read.
    Open,
    /// Broke a bound: segments pass unread until the flow ends or restarts.
    Broken,
    /// Ended by FIN or RST: remembered for `linger`, segments pass unread.
    Ended,
}

/// Out-of-order data: bytes after the next expected one, with the runs present. `buf[0]` is
/// the byte at the flow's next expected sequence number whenever runs are held (it is realigned
/// after every advance), so offsets are distances past it.
#[derive(Debug, Default)]
struct Held {
    buf: Vec<u8>,
    /// Disjoint, non-adjacent `[lo, hi)` offsets into `buf`, in order; `lo > 0`.
    runs: [(usize, usize); MAX_RUNS],
    count: usize,
}

/// Put `run` at `out[*n]` and count it; false when `out` is full (nothing changed then).
fn push_run(out: &mut [(usize, usize); MAX_RUNS], n: &mut usize, run: (usize, usize)) -> bool {
    match out.get_mut(*n) {
        Some(slot) => {
            *slot = run;
            *n += 1;
            true
        }
        None => false,
    }
}

impl Held {
    fn runs(&self) -> &[(usize, usize)] {
        self.runs.get(..self.count).unwrap_or_default()
    }

    /// Add `[lo, hi)` to the runs, merging what it touches. False when that would make more
    /// than [`MAX_RUNS`] runs (nothing changed then).
    fn add_run(&mut self, lo: usize, hi: usize) -> bool {
        let mut merged = (lo, hi);
        let mut out = [(0usize, 0usize); MAX_RUNS];
        let mut n = 0;
        let mut placed = false;
        for &(a, b) in self.runs() {
            if b < merged.0 {
                // Wholly before the new run (not adjacent).
                if !push_run(&mut out, &mut n, (a, b)) {
                    return false;
                }
            } else if a > merged.1 {
                // Wholly after it: place the new run first.
                if !placed {
                    if !push_run(&mut out, &mut n, merged) {
                        return false;
                    }
                    placed = true;
                }
                if !push_run(&mut out, &mut n, (a, b)) {
                    return false;
                }
            } else {
                merged = (merged.0.min(a), merged.1.max(b));
            }
        }
        if !placed && !push_run(&mut out, &mut n, merged) {
            return false;
        }
        self.runs = out;
        self.count = n;
        true
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.count = 0;
    }
}

#[derive(Debug)]
struct Flow {
    id: FlowId,
    phase: Phase,
    /// Sequence number of the SYN, when it was seen (tells a retransmitted SYN from a new
    /// connection on the same addresses).
    isn: Option<u32>,
    /// The next sequence number expected: every byte before it was read or skipped.
    next: u32,
    /// Where the FIN sits, once seen: the direction ends when `next` reaches it.
    fin: Option<u32>,
    /// Bytes of the unfinished message (its prefix included), from its first byte.
    pending: Vec<u8>,
    /// Sequence number of `pending[0]`.
    pending_seq: u32,
    held: Held,
}

impl Flow {
    fn bytes(&self) -> usize {
        self.pending.len() + self.held.buf.len()
    }
}

/// Where a tracked flow lives: in the list of open and broken flows, or of ended ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Handle {
    ended: bool,
    id: lru::Id,
}

/// What one segment produced; reused from segment to segment so steady traffic allocates
/// nothing.
#[derive(Debug, Default)]
struct Out {
    spans: Vec<Span>,
    /// Messages assembled from buffered bytes, one after the other.
    scratch: Vec<u8>,
    /// Where the unfinished message began in this segment's payload, if it did.
    partial_start: Option<usize>,
}

/// Where a chunk of in-order bytes comes from.
#[derive(Debug, Clone, Copy)]
enum Origin {
    /// This segment's payload, from this offset.
    Payload(usize),
    /// Held out-of-order bytes, from an earlier segment.
    Held,
}

/// The stream table: every tracked TCP flow direction carrying DNS.
#[derive(Debug)]
pub struct Streams {
    config: StreamConfig,
    index: HashMap<FlowId, Handle, RandomState>,
    /// Open and broken flows, least recently seen first.
    live: Lru<Flow>,
    /// Ended flows, least recently seen first.
    ended: Lru<Flow>,
    /// Bytes held over all flows.
    buffered: usize,
    spare: Vec<Vec<u8>>,
    out: Out,
    /// The latest `now` seen: time never runs backwards here, so the lists stay in time order
    /// even when callers on several threads read the clock in one order and lock in another.
    latest: Option<Instant>,
    pub counters: StreamCounters,
}

impl Streams {
    pub fn new(config: StreamConfig) -> Streams {
        Streams {
            config,
            index: HashMap::default(),
            live: Lru::new(),
            ended: Lru::new(),
            buffered: 0,
            spare: Vec::new(),
            out: Out::default(),
            latest: None,
            counters: StreamCounters::default(),
        }
    }

    pub fn config(&self) -> &StreamConfig {
        &self.config
    }

    /// Flow directions tracked now (open, broken or ended).
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Bytes held now over all flows (partial messages and out-of-order data).
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// Check the table's invariants: index and lists agree, ended and broken flows hold
    /// nothing, the byte count is right and within bounds. O(flows): for tests and fuzzing,
    /// never for the packet path.
    pub fn audit(&self) -> Result<(), String> {
        if self.index.len() > self.config.capacity {
            return Err(format!(
                "{} flows, capacity {}",
                self.index.len(),
                self.config.capacity
            ));
        }
        if self.live.len() + self.ended.len() != self.index.len() {
            return Err(format!(
                "{} + {} flows listed, {} indexed",
                self.live.len(),
                self.ended.len(),
                self.index.len()
            ));
        }
        let mut sum = 0usize;
        for (id, &h) in &self.index {
            let flow = self
                .flow(h)
                .ok_or(format!("{id:?} indexed as {h:?}, not listed"))?;
            if flow.id != *id {
                return Err(format!("{:?} indexed as {id:?}", flow.id));
            }
            if (flow.phase == Phase::Ended) != h.ended {
                return Err(format!("{:?} flow in the wrong list", flow.phase));
            }
            sum += flow.bytes();
            if flow.phase != Phase::Open && flow.bytes() != 0 {
                return Err(format!(
                    "{:?} flow holds {} bytes",
                    flow.phase,
                    flow.bytes()
                ));
            }
            if let Some(len) = length_prefix(&flow.pending)
                && flow.pending.len() >= 2 + usize::from(len)
            {
                return Err("a complete message left pending".into());
            }
            let mut last = 0;
            for &(lo, hi) in flow.held.runs() {
                if lo <= last || hi <= lo || hi > flow.held.buf.len() {
                    return Err(format!(
                        "held runs {:?} in {} bytes",
                        flow.held.runs(),
                        flow.held.buf.len()
                    ));
                }
                last = hi;
            }
            if flow.held.count == 0 && !flow.held.buf.is_empty() {
                return Err("held bytes without runs".into());
            }
        }
        if sum != self.buffered {
            return Err(format!("flows hold {sum} bytes, counted {}", self.buffered));
        }
        if self.buffered > self.config.max_buffered {
            return Err(format!(
                "{} bytes held, budget {}",
                self.buffered, self.config.max_buffered
            ));
        }
        Ok(())
    }

    /// Read one segment of flow `id`. The answer borrows the segment's payload and the table:
    /// handle its messages, then drop it before the next segment.
    pub fn segment<'a>(&'a mut self, id: FlowId, segment: Segment<'a>, now: Instant) -> Read<'a> {
        self.out.spans.clear();
        self.out.scratch.clear();
        self.out.partial_start = None;
        let now = self.latest.map_or(now, |l| l.max(now));
        self.latest = Some(now);
        self.expire(now);
        let status = self.step(id, &segment, now);
        let partial = self
            .index
            .get(&id)
            .and_then(|&h| self.flow(h))
            .filter(|f| f.phase == Phase::Open && !f.pending.is_empty())
            .map(|f| Partial {
                start: self.out.partial_start,
                len: length_prefix(&f.pending),
                head: f.pending.get(2..).unwrap_or_default(),
            });
        Read {
            status,
            payload: segment.payload,
            scratch: &self.out.scratch,
            spans: &self.out.spans,
            partial,
        }
    }

    /// Convenience for a parsed packet: [`Streams::segment`] for TCP, `None` otherwise.
    pub fn packet<'a>(&'a mut self, packet: &Packet<'a>, now: Instant) -> Option<Read<'a>> {
        let (id, segment) = Segment::of(packet)?;
        Some(self.segment(id, segment, now))
    }

    fn step(&mut self, id: FlowId, seg: &Segment<'_>, now: Instant) -> Status {
        let has_data = !seg.payload.is_empty();
        if seg.flags.rst {
            self.reset(id, seg.seq, now);
            return if has_data {
                Status::Unread
            } else {
                Status::Empty
            };
        }
        let data_seq = if seg.flags.syn {
            seg.seq.wrapping_add(1)
        } else {
            seg.seq
        };
        match self.index.get(&id).copied() {
            Some(h) if seg.flags.syn => {
                // The same SYN again is a retransmission, whatever became of the flow since.
                if self.flow(h).is_none_or(|f| f.isn != Some(seg.seq)) {
                    // A new connection on the same addresses (or the SYN of a flow picked up
                    // mid-stream, which cannot be told apart): start over.
                    self.restart(id, seg.seq, now);
                }
            }
            Some(_) => {}
            None if seg.flags.syn => self.insert(id, Some(seg.seq), data_seq, now),
            // A bare ACK or FIN of a flow we do not track: nothing to remember.
            None if !has_data => return Status::Empty,
            None => {
                self.insert(id, None, data_seq, now);
                if self.index.contains_key(&id) {
                    self.counters.picked_up += 1;
                }
            }
        }
        let Some(h) = self.touch(id, now) else {
            return Status::Unread;
        };
        let Some(phase) = self.flow(h).map(|f| f.phase) else {
            return Status::Unread;
        };
        match phase {
            Phase::Open => {}
            Phase::Ended if has_data => {
                self.counters.retransmits += 1;
                return Status::Retransmit;
            }
            Phase::Ended => return Status::Empty,
            Phase::Broken => {
                if seg.flags.fin {
                    self.end(id, now);
                }
                return if has_data {
                    Status::Unread
                } else {
                    Status::Empty
                };
            }
        }
        let status = if has_data {
            self.data(h, data_seq, seg.payload, seg.truncated)
        } else {
            Status::Empty
        };
        let mut end = false;
        if let Some(flow) = self.flow_mut(h) {
            if seg.flags.fin {
                // The FIN takes the sequence number after the segment's data. One before the
                // next expected byte is stale (a retransmission from before a restart).
                let len = u32::try_from(seg.payload.len()).unwrap_or(u32::MAX);
                let at = data_seq.wrapping_add(len);
                let ahead = at.wrapping_sub(flow.next) as i32;
                match flow.phase {
                    Phase::Open if flow.fin.is_none() && ahead >= 0 => flow.fin = Some(at),
                    // This very segment broke the flow: its end still ends it.
                    Phase::Broken => end = true,
                    _ => {}
                }
            }
            end |= flow.phase == Phase::Open && flow.fin == Some(flow.next);
        }
        if end {
            self.end(id, now);
        }
        status
    }

    /// The payload of an open flow's segment whose data starts at `seq`.
    fn data(&mut self, h: Handle, seq: u32, payload: &[u8], truncated: bool) -> Status {
        let config = self.config;
        let Some(flow) = self.live.get_mut(h.id).filter(|_| !h.ended) else {
            return Status::Unread;
        };
        let before = flow.bytes();
        // What this flow may hold without exceeding the budget of all flows.
        let room = config
            .max_buffered
            .saturating_sub(self.buffered.saturating_sub(before));
        // Serial-number arithmetic (RFC 1982): distances are taken modulo 2^32.
        let ahead = seq.wrapping_sub(flow.next) as i32;
        let (skip, status) = if ahead < 0 {
            let behind = ahead.unsigned_abs() as usize;
            self.counters.retransmits += 1;
            if behind >= payload.len() {
                return Status::Retransmit;
            }
            (behind, Status::Read)
        } else {
            (0, Status::Read)
        };
        let ok = if truncated {
            false
        } else if ahead > 0 {
            self.counters.out_of_order += 1;
            let ahead = ahead.unsigned_abs() as usize;
            hold(flow, ahead, payload, &config, room, &mut self.spare)
        } else {
            let chunk = payload.get(skip..).unwrap_or_default();
            let origin = Origin::Payload(skip);
            read_in_order(flow, chunk, origin, &mut self.out, room, &mut self.spare)
        };
        let status = match (ok, ahead > 0) {
            (true, true) => Status::Held,
            (true, false) => status,
            (false, _) => {
                self.counters.bound_breaks += 1;
                flow.phase = Phase::Broken;
                recycle(&mut self.spare, &mut flow.pending);
                recycle(&mut self.spare, &mut flow.held.buf);
                flow.held.clear();
                if self.out.spans.is_empty() {
                    Status::Unread
                } else {
                    status
                }
            }
        };
        let after = flow.bytes();
        self.buffered = self.buffered.saturating_sub(before).saturating_add(after);
        self.counters.messages += self.out.spans.len() as u64;
        status
    }

    /// RST from `id`: both directions end. When this direction is being read, the RST must sit
    /// at or just past the next expected byte (RFC 5961's check, loosely), so a stray RST with
    /// a wrong sequence number does not blind the reader.
    fn reset(&mut self, id: FlowId, seq: u32, now: Instant) {
        if let Some(&h) = self.index.get(&id) {
            let room = self.config.max_out_of_order;
            let plausible = self.flow(h).is_none_or(|f| {
                let ahead = seq.wrapping_sub(f.next) as i32;
                f.phase != Phase::Open || (ahead >= 0 && ahead.unsigned_abs() as usize <= room)
            });
            if !plausible {
                return;
            }
            self.end(id, now);
        }
        self.end(id.reverse(), now);
    }

    fn flow(&self, h: Handle) -> Option<&Flow> {
        if h.ended {
            self.ended.get(h.id)
        } else {
            self.live.get(h.id)
        }
    }

    fn flow_mut(&mut self, h: Handle) -> Option<&mut Flow> {
        if h.ended {
            self.ended.get_mut(h.id)
        } else {
            self.live.get_mut(h.id)
        }
    }

    /// Mark flow `id` seen now; its handle.
    fn touch(&mut self, id: FlowId, now: Instant) -> Option<Handle> {
        let h = *self.index.get(&id)?;
        if h.ended {
            self.ended.touch(h.id, now);
        } else {
            self.live.touch(h.id, now);
        }
        Some(h)
    }

    /// Take flow `id` out of its list and the index, its buffers released.
    fn take(&mut self, id: FlowId) -> Option<Flow> {
        let h = self.index.remove(&id)?;
        let mut flow = if h.ended {
            self.ended.remove(h.id)
        } else {
            self.live.remove(h.id)
        }?;
        self.release(&mut flow);
        Some(flow)
    }

    /// Put `flow` in the list its phase belongs to, as seen now.
    fn put(&mut self, flow: Flow, now: Instant) {
        let (id, ended) = (flow.id, flow.phase == Phase::Ended);
        let list = if ended {
            &mut self.ended
        } else {
            &mut self.live
        };
        if let Some(lid) = list.insert(flow, now) {
            self.index.insert(id, Handle { ended, id: lid });
        }
    }

    /// Free a flow's buffers (to the spare pool) and take their bytes off the budget.
    fn release(&mut self, flow: &mut Flow) {
        self.buffered = self.buffered.saturating_sub(flow.bytes());
        recycle(&mut self.spare, &mut flow.pending);
        recycle(&mut self.spare, &mut flow.held.buf);
        flow.held.clear();
    }

    /// Start flow `id` over as a new connection whose SYN is `isn`.
    fn restart(&mut self, id: FlowId, isn: u32, now: Instant) {
        let Some(mut flow) = self.take(id) else {
            return;
        };
        flow.phase = Phase::Open;
        flow.isn = Some(isn);
        flow.next = isn.wrapping_add(1);
        flow.fin = None;
        self.put(flow, now);
    }

    /// End flow `id`: drop its buffers, keep it for `linger` to recognize late retransmissions.
    fn end(&mut self, id: FlowId, now: Instant) {
        if self.index.get(&id).is_none_or(|h| h.ended) {
            return;
        }
        let Some(mut flow) = self.take(id) else {
            return;
        };
        flow.phase = Phase::Ended;
        self.put(flow, now);
    }

    /// Track a new flow, evicting the least recently seen one (ended flows first) at capacity.
    /// Nothing is tracked when the capacity is 0.
    fn insert(&mut self, id: FlowId, isn: Option<u32>, next: u32, now: Instant) {
        if self.config.capacity == 0 {
            return;
        }
        while self.index.len() >= self.config.capacity {
            let victim = self
                .ended
                .oldest()
                .or_else(|| self.live.oldest())
                .map(|(_, _, f)| f.id);
            let Some(victim) = victim else {
                break;
            };
            self.take(victim);
            self.counters.evictions += 1;
        }
        let flow = Flow {
            id,
            phase: Phase::Open,
            isn,
            next,
            fin: None,
            pending: Vec::new(),
            pending_seq: next,
            held: Held::default(),
        };
        self.put(flow, now);
    }

    /// Drop flows past their time, oldest first, at most [`EXPIRE_PER_CALL`] of them.
    pub fn expire(&mut self, now: Instant) {
        for _ in 0..EXPIRE_PER_CALL {
            let due = |list: &Lru<Flow>, after: Duration| {
                let cutoff = now.checked_sub(after)?;
                list.oldest()
                    .filter(|(_, at, _)| *at <= cutoff)
                    .map(|(_, _, f)| f.id)
            };
            if let Some(id) = due(&self.ended, self.config.linger) {
                self.take(id);
            } else if let Some(id) = due(&self.live, self.config.idle) {
                self.take(id);
                self.counters.expiries += 1;
            } else {
                return;
            }
        }
    }
}

/// The message length in a frame's two-byte prefix, once both bytes are there.
fn length_prefix(frame: &[u8]) -> Option<u16> {
    match frame {
        [hi, lo, ..] => Some(u16::from_be_bytes([*hi, *lo])),
        _ => None,
    }
}

/// Give a buffer back to the spare pool (or free it when the pool is full or it grew large),
/// leaving an empty, unallocated one in its place.
fn recycle(spare: &mut Vec<Vec<u8>>, buf: &mut Vec<u8>) {
    let mut taken = std::mem::take(buf);
    if taken.capacity() == 0 || taken.capacity() > SPARE_CAPACITY || spare.len() >= SPARE_BUFFERS {
        return;
    }
    taken.clear();
    spare.push(taken);
}

/// Give an unallocated buffer a spare one's allocation, if there is one.
fn reuse(buf: &mut Vec<u8>, spare: &mut Vec<Vec<u8>>) {
    if buf.capacity() == 0
        && let Some(b) = spare.pop()
    {
        *buf = b;
    }
}

/// Hold out-of-order `data` that starts `ahead` bytes past the flow's next expected byte.
/// False when it does not fit (out-of-order room, runs, the budget `room`).
fn hold(
    flow: &mut Flow,
    ahead: usize,
    data: &[u8],
    config: &StreamConfig,
    room: usize,
    spare: &mut Vec<Vec<u8>>,
) -> bool {
    let Some(end) = ahead.checked_add(data.len()) else {
        return false;
    };
    if end > config.max_out_of_order || flow.pending.len().saturating_add(end) > room {
        return false;
    }
    let held = &mut flow.held;
    if !held.add_run(ahead, end) {
        return false;
    }
    if held.buf.len() < end {
        reuse(&mut held.buf, spare);
        held.buf.resize(end, 0);
    }
    match held.buf.get_mut(ahead..end) {
        Some(place) => {
            place.copy_from_slice(data);
            true
        }
        None => false,
    }
}

/// Read in-order bytes (at the flow's next expected byte), then whatever held bytes they make
/// reachable. False when the flow broke the buffer budget `room`.
fn read_in_order(
    flow: &mut Flow,
    chunk: &[u8],
    origin: Origin,
    out: &mut Out,
    room: usize,
    spare: &mut Vec<Vec<u8>>,
) -> bool {
    let limit = room.saturating_sub(flow.held.buf.len());
    if !frame(flow, chunk, origin, out, limit, spare) {
        return false;
    }
    let advanced = chunk.len();
    flow.next = flow
        .next
        .wrapping_add(u32::try_from(advanced).unwrap_or(u32::MAX));
    if flow.held.count == 0 {
        return true;
    }
    // Held bytes are counted from the old next expected byte: walk the runs it reached.
    let mut at = advanced;
    let runs = flow.held.count;
    let mut used = 0;
    for r in 0..runs {
        let Some(&(lo, hi)) = flow.held.runs.get(r) else {
            break;
        };
        if lo > at {
            break;
        }
        used = r + 1;
        if hi > at {
            let held = std::mem::take(&mut flow.held.buf);
            let piece = held.get(at..hi).unwrap_or_default();
            let ok = frame(flow, piece, Origin::Held, out, limit, spare);
            flow.held.buf = held;
            if !ok {
                return false;
            }
            flow.next = flow
                .next
                .wrapping_add(u32::try_from(hi - at).unwrap_or(u32::MAX));
            at = hi;
        }
    }
    // Realign: drop the runs read and the bytes before the new next expected byte.
    let held = &mut flow.held;
    let remaining = held.count.saturating_sub(used);
    if remaining == 0 {
        held.clear();
        return true;
    }
    let mut kept = [(0usize, 0usize); MAX_RUNS];
    for (k, &(lo, hi)) in held.runs.iter().skip(used).take(remaining).enumerate() {
        if let Some(slot) = kept.get_mut(k) {
            *slot = (lo.saturating_sub(at), hi.saturating_sub(at));
        }
    }
    held.runs = kept;
    held.count = remaining;
    held.buf.drain(..at.min(held.buf.len()));
    true
}

/// Split in-order bytes into messages: finish the pending one, yield every whole frame, keep
/// the unfinished tail. `limit` bounds what the flow's pending buffer may grow to.
fn frame(
    flow: &mut Flow,
    mut chunk: &[u8],
    origin: Origin,
    out: &mut Out,
    limit: usize,
    spare: &mut Vec<Vec<u8>>,
) -> bool {
    let chunk_seq = flow.next;
    // Offset of `chunk`'s first byte from where this call started.
    let mut at = 0usize;
    let seq_at = |at: usize| chunk_seq.wrapping_add(u32::try_from(at).unwrap_or(u32::MAX));
    let offset = |at: usize| match origin {
        Origin::Payload(base) => Some(base.saturating_add(at)),
        Origin::Held => None,
    };
    let pending = &mut flow.pending;
    if !pending.is_empty() {
        if pending.len() == 1 {
            let Some((&b, rest)) = chunk.split_first() else {
                return true;
            };
            pending.push(b);
            chunk = rest;
            at += 1;
        }
        let Some(len) = length_prefix(pending) else {
            return true;
        };
        let total = 2 + usize::from(len);
        let take = total.saturating_sub(pending.len()).min(chunk.len());
        if pending.len().saturating_add(take) > limit {
            return false;
        }
        let (head, rest) = chunk.split_at(take);
        pending.extend_from_slice(head);
        chunk = rest;
        at += take;
        if pending.len() < total {
            return true;
        }
        let lo = out.scratch.len();
        out.scratch
            .extend_from_slice(pending.get(2..).unwrap_or_default());
        out.spans.push(Span {
            borrowed: false,
            lo,
            hi: out.scratch.len(),
            seq: flow.pending_seq,
            start: out.partial_start.take(),
        });
        pending.clear();
    }
    while let [hi, lo, rest @ ..] = chunk {
        let len = usize::from(u16::from_be_bytes([*hi, *lo]));
        let Some((body, after)) = rest.split_at_checked(len) else {
            break;
        };
        let span = match origin {
            Origin::Payload(base) => {
                let lo = base + at + 2;
                Span {
                    borrowed: true,
                    lo,
                    hi: lo + len,
                    seq: seq_at(at),
                    start: Some(base + at),
                }
            }
            Origin::Held => {
                let lo = out.scratch.len();
                out.scratch.extend_from_slice(body);
                Span {
                    borrowed: false,
                    lo,
                    hi: out.scratch.len(),
                    seq: seq_at(at),
                    start: None,
                }
            }
        };
        out.spans.push(span);
        chunk = after;
        at += 2 + len;
    }
    if !chunk.is_empty() {
        if chunk.len() > limit {
            return false;
        }
        reuse(pending, spare);
        pending.extend_from_slice(chunk);
        flow.pending_seq = seq_at(at);
        out.partial_start = offset(at);
    }
    true
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::fixtures;

    const SEC: Duration = Duration::from_secs(1);

    fn flow(port: u16) -> FlowId {
        FlowId {
            src: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)), port),
            dst: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)), 53),
        }
    }

    /// A message of `len` bytes whose content tells it apart from the others.
    fn msg(tag: u8, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| tag.wrapping_mul(31).wrapping_add(i as u8))
            .collect()
    }

    fn framed(messages: &[Vec<u8>]) -> (Vec<u8>, Vec<usize>) {
        let mut stream = Vec::new();
        let mut offsets = Vec::new();
        for m in messages {
            offsets.push(stream.len());
            stream.extend_from_slice(&fixtures::tcp_framed(m));
        }
        (stream, offsets)
    }

    fn flags(syn: bool, fin: bool, rst: bool) -> TcpFlags {
        TcpFlags {
            syn,
            ack: !syn,
            fin,
            rst,
        }
    }

    fn data(seq: u32, payload: &[u8]) -> Segment<'_> {
        Segment {
            seq,
            flags: flags(false, false, false),
            payload,
            truncated: false,
        }
    }

    fn syn(isn: u32) -> Segment<'static> {
        Segment {
            seq: isn,
            flags: flags(true, false, false),
            payload: &[],
            truncated: false,
        }
    }

    fn fin(seq: u32, payload: &[u8]) -> Segment<'_> {
        Segment {
            flags: flags(false, true, false),
            ..data(seq, payload)
        }
    }

    fn rst(seq: u32) -> Segment<'static> {
        Segment {
            flags: flags(false, false, true),
            ..data(seq, &[])
        }
    }

    /// A Read copied out, so the table can be used again.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Got {
        status: Status,
        /// (bytes, seq, start, borrowed)
        messages: Vec<(Vec<u8>, u32, Option<usize>, bool)>,
        starts: Vec<usize>,
        partial: Option<(Option<usize>, Option<u16>, Vec<u8>)>,
    }

    impl Got {
        fn bytes(&self) -> Vec<Vec<u8>> {
            self.messages.iter().map(|m| m.0.clone()).collect()
        }
    }

    fn feed(s: &mut Streams, id: FlowId, seg: Segment<'_>, now: Instant) -> Got {
        let r = s.segment(id, seg, now);
        let got = Got {
            status: r.status(),
            messages: r
                .messages()
                .map(|m| (m.bytes.to_vec(), m.seq, m.start, m.borrowed))
                .collect(),
            starts: r.starts().collect(),
            partial: r.partial().map(|p| (p.start, p.len, p.head.to_vec())),
        };
        assert_eq!(r.len(), got.messages.len());
        assert_eq!(r.is_empty(), got.messages.is_empty());
        assert_eq!(r.starts_message(), !got.starts.is_empty());
        if let Err(e) = s.audit() {
            panic!("after {seg:?}: {e}");
        }
        got
    }

    fn streams() -> Streams {
        Streams::new(StreamConfig::default())
    }

    /// Cut the framed `messages` at `cuts` (sorted stream offsets), send the pieces in order
    /// after a SYN with `isn`, and check everything the reader says about each piece.
    fn check_segmentation(messages: &[Vec<u8>], cuts: &[usize], isn: u32) {
        let (stream, offsets) = framed(messages);
        let ends: Vec<usize> = offsets
            .iter()
            .zip(messages)
            .map(|(o, m)| o + 2 + m.len())
            .collect();
        let mut bounds = vec![0];
        bounds.extend_from_slice(cuts);
        bounds.push(stream.len());
        let mut s = streams();
        let now = Instant::now();
        let id = flow(40000);
        assert_eq!(feed(&mut s, id, syn(isn), now).status, Status::Empty);
        let mut seen = Vec::new();
        let mut starts = Vec::new();
        for w in bounds.windows(2) {
            let (lo, hi) = (w[0], w[1]);
            let seq = isn.wrapping_add(1).wrapping_add(lo as u32);
            let got = feed(&mut s, id, data(seq, &stream[lo..hi]), now);
            let what = format!("cuts {cuts:?} isn {isn}, piece {lo}..{hi}");
            assert_eq!(
                got.status,
                if lo == hi {
                    Status::Empty
                } else {
                    Status::Read
                },
                "{what}"
            );
            for (bytes, mseq, start, borrowed) in &got.messages {
                let k = seen.len();
                assert_eq!(bytes, &messages[k], "{what}: message {k}");
                let at = offsets[k];
                assert_eq!(*mseq, isn.wrapping_add(1).wrapping_add(at as u32), "{what}");
                // Borrowed exactly when the whole frame lies in this piece.
                assert_eq!(*borrowed, at >= lo && ends[k] <= hi, "{what}: message {k}");
                assert_eq!(*start, (at >= lo).then(|| at - lo), "{what}: message {k}");
                seen.push(k);
            }
            starts.extend(got.starts.iter().map(|o| o + lo));
            // The unfinished frame, if any: what of it this piece and earlier ones carried.
            let open = offsets
                .iter()
                .zip(&ends)
                .position(|(&o, &e)| o < hi && e > hi);
            match (open, &got.partial) {
                (None, None) => {}
                (Some(k), Some((start, len, head))) => {
                    let o = offsets[k];
                    assert_eq!(*start, (o >= lo).then(|| o - lo), "{what}");
                    assert_eq!(*len, (hi - o >= 2).then(|| messages[k].len() as u16));
                    assert_eq!(head[..], stream[(o + 2).min(hi)..hi], "{what}");
                }
                (open, partial) => panic!("{what}: unfinished {open:?}, reported {partial:?}"),
            }
        }
        assert_eq!(
            seen,
            (0..messages.len()).collect::<Vec<_>>(),
            "cuts {cuts:?}"
        );
        assert_eq!(starts, offsets, "cuts {cuts:?}");
        assert_eq!(s.counters.messages, messages.len() as u64);
        assert_eq!(s.buffered(), 0);
        let c = s.counters;
        assert_eq!(
            (c.picked_up, c.retransmits, c.out_of_order, c.bound_breaks),
            (0, 0, 0, 0)
        );
    }

    #[test]
    fn every_split_into_two_and_three_segments_yields_each_message_once() {
        // A 0-byte and a 1-byte message are framing edge cases, not DNS; the reader frames them.
        let sets = [
            vec![msg(1, 13), msg(2, 1), msg(3, 29)],
            vec![msg(4, 0), msg(5, 17)],
            vec![msg(6, 12), msg(7, 12), msg(8, 12)],
        ];
        for messages in &sets {
            let total = framed(messages).0.len();
            for a in 0..=total {
                check_segmentation(messages, &[a], 1000);
                for b in a..=total {
                    check_segmentation(messages, &[a, b], 1000);
                }
            }
        }
    }

    #[test]
    fn every_split_of_a_long_answer_and_a_query() {
        let messages = [
            fixtures::dns_answer_a(7, "long.nfqm.example", &[Ipv4Addr::new(198, 18, 9, 9); 40]),
            fixtures::dns_query(8, "q.nfqm.example"),
        ];
        let total = framed(&messages).0.len();
        for a in 0..=total {
            check_segmentation(&messages, &[a], 5);
        }
        for a in (0..=total).step_by(7) {
            for b in (a..=total).step_by(5) {
                check_segmentation(&messages, &[a, b], 5);
            }
        }
    }

    #[test]
    fn every_split_across_sequence_wraparound() {
        let messages = [msg(1, 13), msg(2, 3), msg(3, 20)];
        let total = framed(&messages).0.len();
        // The stream's first byte is isn + 1: put 2^32 at every offset of the stream.
        for wrap_at in 0..=total as u32 {
            let isn = 0u32.wrapping_sub(wrap_at).wrapping_sub(1);
            for a in 0..=total {
                check_segmentation(&messages, &[a], isn);
            }
            check_segmentation(&messages, &[3, 17, 30], isn);
        }
    }

    #[test]
    fn several_messages_in_one_segment_are_all_borrowed_with_their_offsets() {
        let messages = [msg(1, 20), msg(2, 33), msg(3, 12)];
        let (stream, offsets) = framed(&messages);
        let mut s = streams();
        let id = flow(40000);
        let now = Instant::now();
        feed(&mut s, id, syn(99), now);
        let got = feed(&mut s, id, data(100, &stream), now);
        assert_eq!(got.bytes(), messages);
        assert!(got.messages.iter().all(|m| m.3));
        assert_eq!(got.starts, offsets);
        assert_eq!(got.partial, None);
    }

    #[test]
    fn lone_length_prefix_then_message() {
        let m = fixtures::dns_query(1, "split.nfqm.example");
        let f = fixtures::tcp_framed(&m);
        let mut s = streams();
        let id = flow(40000);
        let now = Instant::now();
        feed(&mut s, id, syn(0), now);
        let first = feed(&mut s, id, data(1, &f[..2]), now);
        assert!(first.messages.is_empty());
        assert_eq!(first.starts, vec![0]);
        assert_eq!(
            first.partial,
            Some((Some(0), Some(m.len() as u16), Vec::new()))
        );
        let second = feed(&mut s, id, data(3, &f[2..]), now);
        assert_eq!(second.messages, vec![(m.clone(), 1, None, false)]);
        assert!(second.starts.is_empty());
        assert_eq!(second.partial, None);
    }

    #[test]
    fn exact_retransmission_yields_nothing_again() {
        let (stream, _) = framed(&[msg(1, 20), msg(2, 12)]);
        let mut s = streams();
        let id = flow(40000);
        let now = Instant::now();
        feed(&mut s, id, syn(0), now);
        assert_eq!(feed(&mut s, id, data(1, &stream), now).messages.len(), 2);
        let again = feed(&mut s, id, data(1, &stream), now);
        assert_eq!(again.status, Status::Retransmit);
        assert!(again.messages.is_empty());
        assert_eq!(again.partial, None);
        assert_eq!(s.counters.retransmits, 1);
        assert_eq!(s.counters.messages, 2);
        // A retransmission of part of a message already read creates no phantom either.
        let inner = feed(&mut s, id, data(1 + 24, &stream[24..30]), now);
        assert_eq!(inner.status, Status::Retransmit);
        assert!(inner.messages.is_empty());
    }

    #[test]
    fn overlapping_retransmissions_read_only_the_new_bytes_at_every_split() {
        let messages = [msg(1, 13), msg(2, 2), msg(3, 21)];
        let (stream, _) = framed(&messages);
        let total = stream.len();
        for x in 0..=total {
            for y in 0..=x {
                // [0, x), then [y, total): the second repeats x - y bytes.
                let mut s = streams();
                let id = flow(40000);
                let now = Instant::now();
                feed(&mut s, id, syn(u32::MAX - 10), now);
                let base = u32::MAX - 9;
                let mut got = feed(&mut s, id, data(base, &stream[..x]), now).bytes();
                let second = feed(
                    &mut s,
                    id,
                    data(base.wrapping_add(y as u32), &stream[y..]),
                    now,
                );
                got.extend(second.bytes());
                assert_eq!(got, messages, "x {x} y {y}");
                let overlapped = x > y && total > y;
                let expected = u64::from(overlapped && (x < total || y < x));
                assert_eq!(s.counters.retransmits, expected, "x {x} y {y}");
                if x == total && y < x {
                    assert_eq!(second.status, Status::Retransmit);
                }
                assert_eq!(s.buffered(), 0);
            }
        }
    }

    #[test]
    fn segments_in_every_order_with_duplicates_yield_each_message_once_in_order() {
        let messages = [msg(1, 13), msg(2, 1), msg(3, 29), msg(4, 12)];
        let (stream, _) = framed(&messages);
        let cuts = [0, 9, 16, 40, stream.len()];
        let pieces: Vec<(usize, usize)> = cuts.windows(2).map(|w| (w[0], w[1])).collect();
        let n = pieces.len();
        // All orders of the pieces (Heap's algorithm), each with the first piece sent twice.
        let mut order: Vec<usize> = (0..n).collect();
        let mut c = vec![0; n];
        let mut orders = vec![order.clone()];
        let mut i = 0;
        while i < n {
            if c[i] < i {
                let j = if i % 2 == 0 { 0 } else { c[i] };
                order.swap(j, i);
                orders.push(order.clone());
                c[i] += 1;
                i = 0;
            } else {
                c[i] = 0;
                i += 1;
            }
        }
        assert_eq!(orders.len(), 24);
        for order in orders {
            let mut sends = order.clone();
            sends.insert(2, order[0]);
            let mut s = streams();
            let id = flow(40000);
            let now = Instant::now();
            feed(&mut s, id, syn(4_294_967_290), now);
            let mut got = Vec::new();
            for &p in &sends {
                let (lo, hi) = pieces[p];
                let seq = 4_294_967_291u32.wrapping_add(lo as u32);
                let r = feed(&mut s, id, data(seq, &stream[lo..hi]), now);
                got.extend(r.bytes());
            }
            assert_eq!(got, messages, "order {sends:?}");
            assert_eq!(s.buffered(), 0, "order {sends:?}");
            assert_eq!(s.counters.bound_breaks, 0);
        }
    }

    #[test]
    fn a_held_segment_is_read_when_the_gap_is_filled() {
        let messages = [msg(1, 10), msg(2, 10), msg(3, 10)];
        let (stream, _) = framed(&messages);
        let mut s = streams();
        let id = flow(40000);
        let now = Instant::now();
        feed(&mut s, id, syn(0), now);
        let later = feed(&mut s, id, data(1 + 12, &stream[12..]), now);
        assert_eq!(later.status, Status::Held);
        assert!(later.messages.is_empty() && later.starts.is_empty());
        assert_eq!(s.counters.out_of_order, 1);
        // Held data is counted from the next expected byte: the gap's room counts too.
        assert_eq!(s.buffered(), stream.len());
        let filler = feed(&mut s, id, data(1, &stream[..12]), now);
        assert_eq!(filler.status, Status::Read);
        assert_eq!(filler.bytes(), messages);
        // The first came with the filler; the held ones began in an earlier segment.
        let borrowed: Vec<(bool, Option<usize>)> =
            filler.messages.iter().map(|m| (m.3, m.2)).collect();
        assert_eq!(
            borrowed,
            vec![(true, Some(0)), (false, None), (false, None)]
        );
        assert_eq!(s.buffered(), 0);
    }

    #[test]
    fn a_gap_never_yields_garbage() {
        // The middle piece never comes: nothing after the gap is read, nothing is invented.
        let messages = [msg(1, 10), msg(2, 40), msg(3, 10)];
        let (stream, _) = framed(&messages);
        let mut s = streams();
        let id = flow(40000);
        let now = Instant::now();
        feed(&mut s, id, syn(0), now);
        let mut got = feed(&mut s, id, data(1, &stream[..20]), now).bytes();
        got.extend(feed(&mut s, id, data(1 + 30, &stream[30..]), now).bytes());
        assert_eq!(got, vec![messages[0].clone()]);
    }

    #[test]
    fn out_of_order_beyond_the_room_breaks_the_flow_which_then_passes_unread() {
        let config = StreamConfig {
            max_out_of_order: 100,
            ..StreamConfig::default()
        };
        let mut s = Streams::new(config);
        let id = flow(40000);
        let now = Instant::now();
        feed(&mut s, id, syn(0), now);
        let (stream, _) = framed(&[msg(1, 10), msg(2, 200)]);
        // 99 bytes ahead + 2 = 101 > 100.
        let far = feed(&mut s, id, data(1 + 99, &stream[99..101]), now);
        assert_eq!(far.status, Status::Unread);
        assert_eq!(s.counters.out_of_order, 1);
        assert_eq!(s.counters.bound_breaks, 1);
        assert_eq!(s.buffered(), 0);
        let then = feed(&mut s, id, data(1, &stream[..12]), now);
        assert_eq!(then.status, Status::Unread);
        assert!(then.messages.is_empty());
        assert_eq!(s.counters.messages, 0);
        // A new connection on the same addresses is read again.
        feed(&mut s, id, syn(5000), now);
        let fresh = feed(&mut s, id, data(5001, &stream[..12]), now);
        assert_eq!(fresh.bytes(), vec![msg(1, 10)]);
    }

    #[test]
    fn more_runs_than_held_break_the_flow() {
        let mut s = streams();
        let id = flow(40000);
        let now = Instant::now();
        feed(&mut s, id, syn(0), now);
        for k in 0..MAX_RUNS as u32 {
            let r = feed(&mut s, id, data(1 + 10 + 10 * k, &[0; 5]), now);
            assert_eq!(r.status, Status::Held, "run {k}");
        }
        // Adjacent to a run: merged, still fits.
        assert_eq!(
            feed(&mut s, id, data(1 + 15, &[0; 5]), now).status,
            Status::Held
        );
        assert_eq!(
            feed(&mut s, id, data(1 + 200, &[0; 5]), now).status,
            Status::Held
        );
        assert_eq!(s.counters.bound_breaks, 0);
        let r = feed(&mut s, id, data(1 + 300, &[0; 5]), now);
        assert_eq!(r.status, Status::Unread);
        assert_eq!(s.counters.bound_breaks, 1);
        assert_eq!(s.buffered(), 0);
    }

    #[test]
    fn the_budget_of_all_flows_breaks_the_flow_that_exceeds_it() {
        let config = StreamConfig {
            max_buffered: 100,
            ..StreamConfig::default()
        };
        let mut s = Streams::new(config);
        let now = Instant::now();
        let big = fixtures::tcp_framed(&msg(1, 90));
        let small = fixtures::tcp_framed(&msg(2, 30));
        let (a, b) = (flow(40000), flow(40001));
        feed(&mut s, a, syn(0), now);
        feed(&mut s, b, syn(0), now);
        // 80 bytes of a's message are held; b may hold 20 more.
        assert_eq!(
            feed(&mut s, a, data(1, &big[..80]), now).status,
            Status::Read
        );
        assert_eq!(s.buffered(), 80);
        let r = feed(&mut s, b, data(1, &small[..21]), now);
        assert_eq!(r.status, Status::Unread);
        assert_eq!(s.counters.bound_breaks, 1);
        assert_eq!(s.buffered(), 80);
        // A message wholly inside a segment needs no room at all.
        let (c, whole) = (flow(40002), fixtures::tcp_framed(&msg(3, 500)));
        feed(&mut s, c, syn(0), now);
        assert_eq!(
            feed(&mut s, c, data(1, &whole), now).bytes(),
            vec![msg(3, 500)]
        );
        // a goes on and completes.
        assert_eq!(
            feed(&mut s, a, data(81, &big[80..]), now).bytes(),
            vec![msg(1, 90)]
        );
        assert_eq!(s.buffered(), 0);
    }

    #[test]
    fn a_truncated_copy_breaks_the_flow() {
        let mut s = streams();
        let id = flow(40000);
        let now = Instant::now();
        feed(&mut s, id, syn(0), now);
        let f = fixtures::tcp_framed(&msg(1, 40));
        let cut = Segment {
            truncated: true,
            ..data(1, &f[..20])
        };
        assert_eq!(feed(&mut s, id, cut, now).status, Status::Unread);
        assert_eq!(s.counters.bound_breaks, 1);
        assert_eq!(
            feed(&mut s, id, data(21, &f[20..]), now).status,
            Status::Unread
        );
        assert_eq!(s.counters.messages, 0);
    }

    #[test]
    fn the_least_recently_seen_flow_is_evicted_at_capacity() {
        let config = StreamConfig {
            capacity: 2,
            ..StreamConfig::default()
        };
        let mut s = Streams::new(config);
        let now = Instant::now();
        let (a, b, c) = (flow(1), flow(2), flow(3));
        feed(&mut s, a, syn(0), now);
        feed(&mut s, b, syn(0), now + SEC);
        feed(&mut s, a, data(1, &[]), now + 2 * SEC);
        // A partial message on b, to see its bytes released on eviction.
        feed(&mut s, b, data(1, &[0, 50, 1]), now + 2 * SEC);
        feed(&mut s, a, data(1, &[]), now + 3 * SEC);
        feed(&mut s, c, syn(0), now + 4 * SEC);
        assert_eq!(s.len(), 2);
        assert_eq!(s.counters.evictions, 1);
        assert_eq!(s.buffered(), 0);
        // b is gone: its next segment is picked up mid-stream.
        feed(&mut s, b, data(4, &[0, 1, 9]), now + 5 * SEC);
        assert_eq!(s.counters.picked_up, 1);
        assert_eq!(s.counters.evictions, 2);
    }

    #[test]
    fn ended_flows_are_evicted_before_open_ones() {
        let config = StreamConfig {
            capacity: 2,
            ..StreamConfig::default()
        };
        let mut s = Streams::new(config);
        let now = Instant::now();
        let (a, b, c) = (flow(1), flow(2), flow(3));
        feed(&mut s, a, syn(0), now);
        feed(&mut s, b, syn(0), now + SEC);
        feed(&mut s, b, fin(1, &[]), now + 2 * SEC);
        feed(&mut s, c, syn(0), now + 3 * SEC);
        // a (open, older) stays; b (ended) made room.
        let f = fixtures::tcp_framed(&msg(1, 12));
        assert_eq!(
            feed(&mut s, a, data(1, &f), now + 4 * SEC).bytes(),
            vec![msg(1, 12)]
        );
        assert_eq!(s.counters.picked_up, 0);
    }

    #[test]
    fn idle_flows_expire_and_are_picked_up_again() {
        let mut s = streams();
        let now = Instant::now();
        let id = flow(40000);
        let idle = s.config().idle;
        feed(&mut s, id, syn(0), now);
        feed(&mut s, id, data(1, &[0, 40, 1, 2]), now);
        assert_eq!(s.buffered(), 4);
        let f = fixtures::tcp_framed(&msg(1, 12));
        // Another flow's segment, after the idle time, expires the first.
        feed(&mut s, flow(2), syn(0), now + idle);
        assert_eq!(s.counters.expiries, 1);
        assert_eq!(s.buffered(), 0);
        assert_eq!(s.len(), 1);
        let r = feed(&mut s, id, data(500, &f), now + idle);
        assert_eq!(r.bytes(), vec![msg(1, 12)]);
        assert_eq!(s.counters.picked_up, 1);
    }

    #[test]
    fn expiry_does_bounded_work_per_segment() {
        let mut s = streams();
        let now = Instant::now();
        for p in 0..20 {
            feed(&mut s, flow(p), syn(0), now);
        }
        let later = now + s.config().idle;
        feed(&mut s, flow(100), data(1, &[]), later);
        assert_eq!(s.counters.expiries, EXPIRE_PER_CALL as u64);
        feed(&mut s, flow(100), data(1, &[]), later);
        feed(&mut s, flow(100), data(1, &[]), later);
        assert_eq!(s.counters.expiries, 20);
        assert!(s.is_empty());
    }

    #[test]
    fn a_segment_without_payload_of_an_unknown_flow_creates_no_state() {
        let mut s = streams();
        let now = Instant::now();
        assert_eq!(
            feed(&mut s, flow(1), data(7, &[]), now).status,
            Status::Empty
        );
        assert_eq!(
            feed(&mut s, flow(1), fin(7, &[]), now).status,
            Status::Empty
        );
        assert_eq!(feed(&mut s, flow(1), rst(7), now).status, Status::Empty);
        assert!(s.is_empty());
        assert_eq!(s.counters, StreamCounters::default());
    }

    #[test]
    fn a_flow_seen_without_its_syn_is_picked_up_at_its_first_data_segment() {
        let mut s = streams();
        let now = Instant::now();
        let id = flow(40000);
        let (stream, _) = framed(&[msg(1, 12), msg(2, 30)]);
        let first = feed(&mut s, id, data(123_456, &stream[..20]), now);
        assert_eq!(first.bytes(), vec![msg(1, 12)]);
        assert_eq!(s.counters.picked_up, 1);
        let second = feed(&mut s, id, data(123_476, &stream[20..]), now);
        assert_eq!(second.bytes(), vec![msg(2, 30)]);
        assert_eq!(s.counters.picked_up, 1);
    }

    #[test]
    fn syn_fixes_the_sequence_and_fast_open_data_is_read() {
        let mut s = streams();
        let now = Instant::now();
        let id = flow(40000);
        let f = fixtures::tcp_framed(&msg(1, 12));
        let tfo = Segment {
            payload: &f,
            ..syn(77)
        };
        let r = feed(&mut s, id, tfo, now);
        assert_eq!(r.bytes(), vec![msg(1, 12)]);
        assert_eq!(r.messages[0].1, 78);
        // The SYN retransmitted with its data: nothing twice, no reset.
        assert_eq!(feed(&mut s, id, tfo, now).messages, vec![]);
        assert_eq!(s.counters.picked_up, 0);
    }

    #[test]
    fn a_retransmitted_syn_keeps_the_flow_and_a_new_isn_starts_over() {
        let mut s = streams();
        let now = Instant::now();
        let id = flow(40000);
        let (stream, _) = framed(&[msg(1, 30)]);
        feed(&mut s, id, syn(10), now);
        feed(&mut s, id, data(11, &stream[..5]), now);
        feed(&mut s, id, syn(10), now);
        assert_eq!(
            feed(&mut s, id, data(16, &stream[5..]), now).bytes(),
            vec![msg(1, 30)]
        );
        // Same addresses, new ISN: the old partial message is dropped, not completed by the new
        // connection's bytes.
        feed(&mut s, id, data(11 + 32, &stream[..5]), now);
        assert_eq!(s.buffered(), 5);
        feed(&mut s, id, syn(90_000), now);
        assert_eq!(s.buffered(), 0);
        assert_eq!(
            feed(&mut s, id, data(90_001, &stream), now).bytes(),
            vec![msg(1, 30)]
        );
    }

    #[test]
    fn fin_ends_the_flow_and_its_late_retransmissions_are_not_read() {
        let mut s = streams();
        let now = Instant::now();
        let id = flow(40000);
        let (stream, _) = framed(&[msg(1, 12), msg(2, 12)]);
        feed(&mut s, id, syn(0), now);
        let r = feed(&mut s, id, fin(1, &stream), now);
        assert_eq!(r.bytes(), vec![msg(1, 12), msg(2, 12)]);
        let again = feed(&mut s, id, fin(1, &stream), now + SEC);
        assert_eq!(again.status, Status::Retransmit);
        assert!(again.messages.is_empty());
        assert_eq!(s.counters.picked_up, 0);
        // Forgotten after the linger time, and not counted as an idle expiry.
        let linger = s.config().linger;
        feed(&mut s, flow(2), syn(0), now + SEC + linger);
        assert_eq!(s.len(), 1);
        assert_eq!(s.counters.expiries, 0);
    }

    #[test]
    fn a_message_cut_short_by_fin_is_dropped() {
        let mut s = streams();
        let now = Instant::now();
        let id = flow(40000);
        let f = fixtures::tcp_framed(&msg(1, 30));
        feed(&mut s, id, syn(0), now);
        let r = feed(&mut s, id, fin(1, &f[..10]), now);
        assert!(r.messages.is_empty());
        assert_eq!(r.partial, None);
        assert_eq!(s.buffered(), 0);
        assert_eq!(
            feed(&mut s, id, data(11, &f[10..]), now).status,
            Status::Retransmit
        );
        assert_eq!(s.counters.messages, 0);
    }

    #[test]
    fn a_fin_held_out_of_order_ends_the_flow_once_the_gap_is_filled() {
        let mut s = streams();
        let now = Instant::now();
        let id = flow(40000);
        let (stream, _) = framed(&[msg(1, 12), msg(2, 12)]);
        feed(&mut s, id, syn(0), now);
        assert_eq!(
            feed(&mut s, id, fin(1 + 14, &stream[14..]), now).status,
            Status::Held
        );
        let r = feed(&mut s, id, data(1, &stream[..14]), now);
        assert_eq!(r.bytes(), vec![msg(1, 12), msg(2, 12)]);
        assert_eq!(
            feed(&mut s, id, data(1, &stream), now).status,
            Status::Retransmit
        );
        // Ended: a new SYN starts it over.
        feed(&mut s, id, syn(500), now);
        assert_eq!(
            feed(&mut s, id, data(501, &stream[..14]), now).bytes(),
            vec![msg(1, 12)]
        );
    }

    #[test]
    fn a_retransmitted_syn_does_not_reopen_an_ended_flow() {
        let mut s = streams();
        let now = Instant::now();
        let id = flow(40000);
        let f = fixtures::tcp_framed(&msg(1, 12));
        feed(&mut s, id, syn(0), now);
        feed(&mut s, id, fin(1, &f), now);
        feed(&mut s, id, syn(0), now);
        assert_eq!(
            feed(&mut s, id, data(1, &f), now).status,
            Status::Retransmit
        );
        assert_eq!(s.counters.messages, 1);
    }

    #[test]
    fn a_segment_that_breaks_the_flow_and_carries_fin_ends_it() {
        let config = StreamConfig {
            max_out_of_order: 10,
            ..StreamConfig::default()
        };
        let mut s = Streams::new(config);
        let now = Instant::now();
        let id = flow(40000);
        feed(&mut s, id, syn(0), now);
        assert_eq!(
            feed(&mut s, id, fin(100, &[1; 4]), now).status,
            Status::Unread
        );
        assert_eq!(s.counters.bound_breaks, 1);
        // Ended, so forgotten after the linger time rather than the idle time.
        let linger = s.config().linger;
        feed(&mut s, flow(1), syn(0), now + linger);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn rst_ends_both_directions() {
        let mut s = streams();
        let now = Instant::now();
        let query = flow(40000);
        let answer = query.reverse();
        let f = fixtures::tcp_framed(&msg(1, 12));
        feed(&mut s, query, syn(0), now);
        feed(&mut s, answer, syn(7000), now);
        feed(&mut s, query, data(1, &f), now);
        feed(&mut s, answer, data(7001, &f[..5]), now);
        assert_eq!(s.buffered(), 5);
        feed(&mut s, query, rst(1 + 14), now);
        assert_eq!(s.buffered(), 0);
        // The answer's late retransmission is not picked up as a new flow.
        let late = feed(&mut s, answer, data(7001, &f), now);
        assert_eq!(late.status, Status::Retransmit);
        assert!(late.messages.is_empty());
        assert_eq!(s.counters.picked_up, 0);
    }

    #[test]
    fn rst_with_an_implausible_sequence_number_is_ignored() {
        let mut s = streams();
        let now = Instant::now();
        let id = flow(40000);
        let f = fixtures::tcp_framed(&msg(1, 30));
        feed(&mut s, id, syn(0), now);
        feed(&mut s, id, data(1, &f[..10]), now);
        feed(&mut s, id, rst(1_000_000), now);
        feed(&mut s, id, rst(5), now);
        assert_eq!(
            feed(&mut s, id, data(11, &f[10..]), now).bytes(),
            vec![msg(1, 30)]
        );
    }

    #[test]
    fn capacity_zero_tracks_nothing_and_reads_nothing() {
        let config = StreamConfig {
            capacity: 0,
            ..StreamConfig::default()
        };
        let mut s = Streams::new(config);
        let f = fixtures::tcp_framed(&msg(1, 12));
        let now = Instant::now();
        assert_eq!(feed(&mut s, flow(1), syn(0), now).status, Status::Unread);
        assert_eq!(
            feed(&mut s, flow(1), data(1, &f), now).status,
            Status::Unread
        );
        assert!(s.is_empty());
    }

    #[test]
    fn segment_of_a_parsed_tcp_packet() {
        let client = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2));
        let server = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
        let q = fixtures::dns_query(1, "a.nfqm.example");
        let bytes = fixtures::tcp(client, 40000, server, 53, &fixtures::tcp_framed(&q));
        let p = crate::packet::parse(&bytes).unwrap();
        let (id, seg) = Segment::of(&p).unwrap();
        assert_eq!(id.src, SocketAddr::new(client, 40000));
        assert_eq!(id.dst, SocketAddr::new(server, 53));
        assert_eq!(id.reverse().reverse(), id);
        assert_eq!(seg.seq, p.seq);
        assert_eq!(seg.payload, p.payload);
        let mut s = streams();
        let r = s.packet(&p, Instant::now()).unwrap();
        assert_eq!(
            r.messages().map(|m| m.bytes).collect::<Vec<_>>(),
            vec![&q[..]]
        );
        let udp = fixtures::udp(client, 40000, server, 53, &q);
        let p = crate::packet::parse(&udp).unwrap();
        assert!(Segment::of(&p).is_none());
    }
}
