//! What each fuzz target feeds nfqmark and what it checks besides "no panic, no hang".
//!
//! The bodies live here, not in `fuzz_targets/`, so the same code runs under libFuzzer
//! (`cargo +nightly fuzz run TARGET`) and on stable over saved inputs (`cargo run --example
//! replay -- TARGET FILE|DIR...`), and the seed corpus is built from nfqmark's own packet
//! fixtures (`cargo run --example seeds`), never hand-typed hex.
//!
//! - [`packet`]: `packet::parse`, then `dns::parse_udp` / `dns::parse_tcp` on its payload and on
//!   the raw bytes. Checks that borrowed slices lie inside the input, that the pairing key is
//!   lower case and shows as the name it holds, and compares each layer with the parser it
//!   replaced: etherparse's `LaxSlicedPacket` (addresses, protocol) and hickory-proto's decoder
//!   (id, flags, counts, question), which must agree except where nfqmark is stricter on
//!   purpose (a compression pointer in the question: there is no earlier name to point to).
//! - [`engine`]: a run of packets through `engine::decide` sharing one pairing table, each with
//!   a Meta prefix (hook, mark, interfaces, clock step). Checks the bits outside the mark mask
//!   are kept, the tables stay within capacity, and every packet is counted once.
//! - [`rules`]: `RuleSet::parse` on any text (every interface exists). Checks every diagnostic
//!   has a place inside the text, a good set describes each rule, and evaluating it on sample
//!   packets works.
//! - [`nfnl`]: the nfnetlink parsers over one datagram: `nfnl::Messages` (queued packets, with
//!   their conntrack entry, checksum state and link-layer address), the nf_tables rule dump
//!   reader and the ctnetlink answer reader. Checks the iteration advances, payloads lie inside
//!   the datagram, a link-layer address is at most 8 bytes, and a dump yields at most one rule
//!   per message.
//! - [`stream`]: `stream::Streams`, the DNS-over-TCP reader. Frames a message sequence, cuts it
//!   at input-chosen points, reorders, duplicates, merges (overlapping retransmissions) and
//!   drops segments. Checks every yielded message is one of the originals (bytes and place in
//!   the stream), in order, never twice; that all of them come when nothing was dropped and no
//!   bound broke; and the table's invariants (`Streams::audit`) after every segment. A second
//!   mode sends arbitrary segments of a few flows (any flags, sequence numbers, clock steps)
//!   through a small table and checks bounds, borrowed slices and the invariants.
//! - [`answer`]: `dns::answer` (every record of a message) and `flows::answer_addresses`, each
//!   against the hickory-proto code it replaced; the intended differences are listed in
//!   `src/answer.rs`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

mod answer;
mod capture;

pub use answer::{answer, reference_addresses, seed_answers};
pub use capture::{capture, seed_captures};

use nfqmark::dns::{self, Dns, QKey};
use nfqmark::engine::{self, EngineConfig, Tables};
use nfqmark::flows::LearnConfig;
use nfqmark::nfnl::Messages;
use nfqmark::nfnl::wire::{ct, nft, set};
use nfqmark::packet::{self, Proto};
use nfqmark::pairing::PairingConfig;
use nfqmark::rules::{Ctx, RuleSet};
use nfqmark::stats::Stats;
use nfqmark::stream::{FlowId, MAX_FRAME, Segment, StreamConfig, Streams};
use nfqmark::types::{Checksum, Conn, Hook, Meta, Verdict};
use nfqmark_testkit as fixtures;

/// True when `part` is a sub-slice of `whole` (or empty).
fn within(whole: &[u8], part: &[u8]) -> bool {
    if part.is_empty() {
        return true;
    }
    let w = whole.as_ptr_range();
    let p = part.as_ptr_range();
    w.start <= p.start && p.end <= w.end
}

fn check_dns(parsed: Result<Dns, dns::Error>) {
    let Ok(d) = parsed else { return };
    if let Some(q) = d.question {
        // Display must work for any name the parser accepts (it goes into logs).
        let _ = q.to_string();
        let wire = q.key.wire_name();
        assert_eq!(wire.last(), Some(&0), "wire name without the root label");
        assert!(wire.len() <= 255, "wire name of {} bytes", wire.len());
        assert!(
            !wire.iter().any(u8::is_ascii_uppercase),
            "the key keeps upper case: {wire:?}"
        );
        // The name shown in logs is the name in the key.
        let shown = QKey::new(&q.name(), q.key.qtype, q.key.qclass);
        assert_eq!(shown, q.key, "name() of {wire:?} is {}", q.name());
    }
}

/// The header and first question as hickory-proto's decoder reads them (what nfqmark used before
/// its own reader): `(id, flags, qdcount, ancount, question)`, the question as (lower-cased wire
/// name, type, class).
type Reference = (u16, u16, u16, u16, Option<(Vec<u8>, u16, u16)>);

fn reference(message: &[u8]) -> Result<Reference, String> {
    use hickory_proto::op::{Header, Query};
    use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
    if message.len() < 12 {
        return Err("short".into());
    }
    let mut decoder = BinDecoder::new(message);
    let header = Header::read(&mut decoder).map_err(|e| format!("{e:?}"))?;
    let flags = u16::from_be_bytes([message[2], message[3]]);
    let question = if header.counts.queries == 0 {
        None
    } else {
        let q = Query::read(&mut decoder).map_err(|e| format!("{e:?}"))?;
        let key = QKey::new(
            &answer::from_hickory(q.name()),
            u16::from(q.query_type()),
            u16::from(q.query_class()),
        );
        Some((key.wire_name().to_vec(), key.qtype, key.qclass))
    };
    Ok((
        header.id,
        flags,
        header.counts.queries,
        header.counts.answers,
        question,
    ))
}

/// Compression pointers followed from the question name at offset 12 (0 when it has none or
/// it is not readable). nfqmark refuses any: the question is the message's first name, so there
/// is no earlier name to point to; hickory-proto accepts some that point into the name itself.
fn pointers_in_question(message: &[u8]) -> usize {
    let mut at = 12;
    let mut pointers = 0;
    while let Some(&l) = message.get(at) {
        match l & 0xc0 {
            0x00 if l == 0 => break,
            0x00 => at += usize::from(l) + 1,
            0xc0 => {
                let Some(&lo) = message.get(at + 1) else {
                    break;
                };
                let target = usize::from(u16::from_be_bytes([l & 0x3f, lo]));
                if target >= at || pointers > 64 {
                    break;
                }
                pointers += 1;
                at = target;
            }
            _ => break,
        }
    }
    pointers
}

/// nfqmark's own DNS reader against hickory-proto's decoder on the same message.
fn compare_with_reference(message: &[u8]) {
    let ours = dns::parse_udp(message);
    let theirs = reference(message);
    match (&ours, &theirs) {
        (Ok(d), Ok((id, flags, _, answers, question))) => {
            assert_eq!(d.id, *id);
            assert_eq!(d.response, flags & 0x8000 != 0);
            assert_eq!(d.opcode, ((flags >> 11) & 0x0f) as u8);
            assert_eq!(d.answer_count, *answers);
            let ours_q = d
                .question
                .as_ref()
                .map(|q| (q.key.wire_name().to_vec(), q.key.qtype, q.key.qclass));
            assert_eq!(&ours_q, question, "question differs from hickory-proto's");
        }
        (Err(_), Err(_)) => {}
        (Ok(d), Err(e)) => panic!("nfqmark reads {d:?}; hickory-proto rejects the message: {e}"),
        (Err(e), Ok(r)) => {
            let pointers = pointers_in_question(message);
            assert!(
                pointers > 0,
                "nfqmark rejects ({e}) what hickory-proto reads: {r:?} ({pointers} pointers)"
            );
        }
    }
}

/// Target `packet`: IP/UDP/TCP parsing and the DNS header and question, with each layer
/// compared against the general-purpose parser it replaced (etherparse's `LaxSlicedPacket`,
/// hickory-proto's decoder).
pub fn packet(data: &[u8]) {
    if let Ok(p) = packet::parse(data) {
        assert!(within(data, p.payload), "payload outside the packet");
        match p.proto {
            Proto::Udp => check_dns(dns::parse_udp(p.payload)),
            Proto::Tcp => check_dns(dns::parse_tcp(p.payload)),
            _ => {
                assert_eq!((p.sport, p.dport), (0, 0), "ports for {:?}", p.proto);
                assert!(p.payload.is_empty(), "payload for {:?}", p.proto);
            }
        }
        compare_ip_with_etherparse(data, &p);
    }
    check_dns(dns::parse_udp(data));
    check_dns(dns::parse_tcp(data));
    compare_with_reference(data);
}

/// Addresses and protocol as etherparse's full lax slicer reads them.
fn compare_ip_with_etherparse(data: &[u8], p: &packet::Packet<'_>) {
    use etherparse::{LaxNetSlice, LaxSlicedPacket};
    let Ok(sliced) = LaxSlicedPacket::from_ip(data) else {
        panic!("nfqmark reads {p:?}; etherparse's LaxSlicedPacket rejects it");
    };
    let (src, dst, ip_payload) = match &sliced.net {
        Some(LaxNetSlice::Ipv4(v4)) => (
            IpAddr::V4(v4.header().source_addr()),
            IpAddr::V4(v4.header().destination_addr()),
            v4.payload(),
        ),
        Some(LaxNetSlice::Ipv6(v6)) => (
            IpAddr::V6(v6.header().source_addr()),
            IpAddr::V6(v6.header().destination_addr()),
            v6.payload(),
        ),
        _ => panic!("nfqmark reads {p:?}; etherparse finds no IP layer"),
    };
    assert_eq!((p.src, p.dst), (src, dst));
    assert_eq!(p.proto, Proto::from_number(ip_payload.ip_number.0));
}

/// Rules that exercise every kind of matcher and action, for [`engine`] and [`rules`].
pub const SAMPLE_RULES: &str = "\
set garden names { portal.nfqm.example, *.garden.nfqm.example }
set lan addrs { 192.0.2.0/24, 2001:db8:1::/64 }
set web ports { 80, 443 }
dir in mark 0/0x100 dns query dns-name @garden accept
dir in mark 0/0x100 dns query drop
dir out dns response dns-type aaaa set-mark 0x20/0xf0
hook forward src @lan proto tcp dport @web set-mark 0x1/0xff
hook prerouting iif lan0 proto udp dport 5353 repeat set-mark 0x400/0x400 nopair
hook output oif wan0 proto tcp sport 53 accept nopair
default accept
";

fn any_interface(_: &str) -> Option<u32> {
    Some(1)
}

fn sample_rules() -> &'static RuleSet {
    static RULES: OnceLock<RuleSet> = OnceLock::new();
    RULES.get_or_init(|| {
        RuleSet::parse(SAMPLE_RULES, "sample.rules", &any_interface).unwrap_or_else(|d| {
            panic!("the fuzz harness's sample rules no longer parse: {d:?}");
        })
    })
}

/// Bytes of the Meta prefix of each record of an [`engine`] input: hook (low 3 bits; bit 4:
/// conntrack entry present, bit 5: first packet, bit 6: checksum not verified), mark (4), input and
/// output interface, clock step in ms (2), packet length (2).
pub const META_LEN: usize = 11;

/// Target `engine`: the first byte picks the configuration (bit 0: mark mask 0xff00 instead of
/// all bits; bit 1: [`SAMPLE_RULES`] instead of none; bits 4-7: table capacity 0-15). Then
/// records of [`META_LEN`] bytes of Meta prefix and a packet, all through one pairing table.
pub fn engine(data: &[u8]) {
    let Some((&select, mut rest)) = data.split_first() else {
        return;
    };
    let mask = if select & 1 == 0 {
        u32::MAX
    } else {
        0x0000_ff00
    };
    let with_rules = select & 2 != 0;
    let empty = RuleSet::empty();
    let rules = if with_rules { sample_rules() } else { &empty };
    let capacity = usize::from(select >> 4);
    let config = EngineConfig {
        pairing: PairingConfig {
            window: Duration::from_secs(5),
            client_capacity: capacity,
            upstream_capacity: capacity,
            mask,
            per_question: 1 + capacity / 4,
            per_client: 1 + capacity / 2,
            claimed_grace: (select & 4 != 0).then_some(Duration::from_millis(500)),
        },
        dns_ports: vec![53, 5353],
    };
    let mut tables = Tables::new(&config, LearnConfig::default());
    let stats = Stats::default();
    let mut now = Instant::now();
    let mut decided = 0u64;
    while let Some((meta, tail)) = rest.split_first_chunk::<META_LEN>() {
        let [hook, m0, m1, m2, m3, indev, outdev, s0, s1, l0, l1] = *meta;
        let mark = u32::from_be_bytes([m0, m1, m2, m3]);
        let mut meta = Meta::new(
            Hook::from_kernel(hook & 0x07),
            mark,
            u32::from(indev),
            u32::from(outdev),
        );
        // The hook byte's high bits: conntrack information (present, first packet) and the
        // checksum state.
        if hook & 0x10 != 0 {
            meta.conn = Some(Conn {
                mark: mark.rotate_left(8),
                first: hook & 0x20 != 0,
            });
        }
        if hook & 0x40 != 0 {
            meta.checksum = Checksum::NotVerified;
        }
        now += Duration::from_millis(u64::from(u16::from_be_bytes([s0, s1])));
        let len = usize::from(u16::from_be_bytes([l0, l1])).min(tail.len());
        let (bytes, next) = tail.split_at(len);
        rest = next;
        let d = engine::decide(&config, rules, &mut tables, &meta, bytes, now);
        stats.count(&d);
        decided += 1;
        if let Some(mark) = d.mark {
            assert_ne!(mark, meta.mark, "a 'new' mark equal to the old one");
            if !with_rules {
                assert_eq!(
                    mark & !mask,
                    meta.mark & !mask,
                    "pairing changed bits outside the mask {mask:#x}"
                );
            }
        }
        if !with_rules {
            assert_eq!(d.verdict, Verdict::Accept, "no rules, yet {:?}", d.verdict);
        }
        let table = &tables.pairing;
        assert!(
            table.client_len() <= capacity,
            "{} clients",
            table.client_len()
        );
        assert!(
            table.upstream_len() <= capacity,
            "{} upstream",
            table.upstream_len()
        );
    }
    assert_eq!(stats.packets.get(), decided);
}

/// Packets the [`rules`] target evaluates a good rule set on.
fn sample_packets() -> &'static [(Meta, Vec<u8>)] {
    static PACKETS: OnceLock<Vec<(Meta, Vec<u8>)>> = OnceLock::new();
    PACKETS.get_or_init(|| {
        seed_packets()
            .into_iter()
            .enumerate()
            .map(|(i, bytes)| {
                let meta = Meta::new(
                    Hook::from_kernel((i % 6) as u8),
                    [0, 0x100, 137, 0xffff_ffff][i % 4],
                    (i % 3) as u32,
                    (i % 2) as u32,
                );
                (meta, bytes)
            })
            .collect()
    })
}

/// Target `rules`: the rule parser on any text.
pub fn rules(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let lines: Vec<&str> = text.split('\n').collect();
    match RuleSet::parse(&text, "fuzz.rules", &any_interface) {
        Ok(set) => {
            let _ = set.summary();
            for i in 0..set.len() {
                assert!(set.describe(i).is_some(), "rule {i} has no place");
            }
            for (meta, bytes) in sample_packets() {
                let Ok(p) = packet::parse(bytes) else {
                    continue;
                };
                let d = match p.proto {
                    Proto::Udp => dns::parse_udp(p.payload).ok(),
                    Proto::Tcp => dns::parse_tcp(p.payload).ok(),
                    _ => None,
                };
                let ctx = Ctx {
                    meta,
                    packet: &p,
                    dns: d.as_ref(),
                };
                let outcome = set.evaluate(&ctx);
                if let Some(rule) = outcome.rule {
                    assert!(rule < set.len(), "rule {rule} of {}", set.len());
                }
            }
        }
        Err(diags) => {
            assert!(!diags.is_empty(), "rejected without a reason");
            for d in &diags {
                let shown = d.to_string();
                assert!(shown.starts_with("fuzz.rules:"), "{shown}");
                assert!(
                    d.line >= 1 && d.line <= lines.len(),
                    "line {} of {}: {shown}",
                    d.line,
                    lines.len()
                );
                let chars = lines.get(d.line - 1).map_or(0, |l| l.chars().count());
                assert!(
                    d.col >= 1 && d.col <= chars + 1,
                    "column {} of a {chars}-character line: {shown}",
                    d.col
                );
            }
        }
    }
}

/// Target `nfnl`: the nfnetlink parsers over one received datagram (see the module header).
pub fn nfnl(data: &[u8]) {
    // The readers only look at messages answering their request: take the first message's
    // sequence number as ours.
    let seq = data
        .get(8..12)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_ne_bytes);
    let mut dump = nft::RuleDump::default();
    let _ = dump.feed(data, seq);
    assert!(
        dump.rules.len() <= data.len() / 16,
        "more rules than messages"
    );
    let _ = nft::packets_per_queue(&dump.rules);
    let _ = ct::parse_answer(data, seq);
    nfnl_sets(data, seq);
    nfnl_queue(data);
}

/// nf_tables set answers: elements of a dump or a get, a set, a batch's acknowledgements; the
/// keys read back as the kernel backend reads them.
fn nfnl_sets(data: &[u8], seq: u32) {
    let mut elements = Vec::new();
    let mut interrupted = false;
    let _ = set::parse_answer(data, seq, &mut elements, &mut interrupted);
    // Every element takes at least a nested attribute header and a key.
    assert!(
        elements.len() <= data.len() / 8,
        "more elements than the datagram holds"
    );
    let specs = nfqmark::kernel_flows::layout(&[nfqmark::flows::FlowTarget {
        rule: 0,
        mark: (1, 0xff),
        by_mark: Some(0xff00),
    }]);
    for e in &elements {
        for spec in &specs {
            if let Some((client, mark, addr)) = spec.parse_key(e.key.as_bytes())
                && spec.target.by_mark.is_none_or(|mask| mark & !mask == 0)
            {
                assert_eq!(
                    spec.key(client, mark, addr).map(|k| k.as_bytes().to_vec()),
                    Some(e.key.as_bytes().to_vec()),
                    "a key read back encodes to itself"
                );
            }
        }
    }
    let mut reply = set::BatchReply::new(set::BatchSeqs {
        begin: seq,
        first: seq.wrapping_add(1),
        messages: 3,
    });
    let _ = reply.feed(data);
    let _ = (reply.complete(), reply.applied(), reply.errno());
}

fn nfnl_queue(data: &[u8]) {
    let mut items = 0usize;
    for item in Messages::new(data) {
        items += 1;
        // Every message takes at least a 16-byte header; errors end the iteration.
        assert!(
            items <= data.len() / 16 + 1,
            "the iteration does not advance"
        );
        match item {
            Ok(msg) => {
                assert!(within(data, msg.payload), "payload outside the datagram");
                let _ = msg.checksum();
                let _ = msg.ct.map(|c| c.first());
                if let Some(hw) = msg.hwaddr {
                    assert!(hw.as_bytes().len() <= 8, "link-layer address past 8 bytes");
                    let _ = hw.mac();
                }
            }
            Err(e) => {
                let _ = e.to_string();
                let _ = e.packet_id();
            }
        }
    }
}

/// A byte reader over the fuzz input that yields zeros once it runs out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn stream_flow(n: u8) -> FlowId {
    let client = SocketAddr::new(CLIENT4, 40000 + u16::from(n & 1));
    let server = SocketAddr::new(ROUTER4, 53);
    let id = FlowId {
        src: client,
        dst: server,
    };
    if n & 2 == 0 { id } else { id.reverse() }
}

/// Stream bounds chosen by two bits of the selector: out-of-order room and buffer budget.
fn stream_config(select: u8) -> StreamConfig {
    StreamConfig {
        capacity: 4,
        max_out_of_order: [MAX_FRAME, 64, 1000, 200_000][usize::from(select & 3)],
        max_buffered: [32 << 20, 600][usize::from((select >> 2) & 1)],
        ..StreamConfig::default()
    }
}

/// Bytes of the stream the faithful mode builds, at most (keeps each run fast).
const STREAM_CAP: usize = 300_000;

/// Target `stream`: the first byte selects the mode (bit 7: arbitrary segments), the bounds
/// (bits 0-2), long messages (bit 3), a FIN on the last byte (bit 4), no SYN so the flow is
/// picked up at its first byte (bit 5), and whether segments may be dropped (bit 6).
pub fn stream(data: &[u8]) {
    let mut input = Bytes(data);
    let select = input.u8();
    if select & 0x80 != 0 {
        return stream_chaos(select, input);
    }
    let config = stream_config(select);
    let isn = input.u32();
    // The messages: each one's bytes tell its index apart from the others'.
    let count = usize::from(input.u8() % 17);
    let mut messages = Vec::with_capacity(count);
    let mut stream = Vec::new();
    let mut offsets = std::collections::HashMap::new();
    for k in 0..count {
        let raw = input.u16();
        let len = if select & 8 != 0 {
            usize::from(raw)
        } else {
            usize::from(raw % 80)
        };
        if stream.len() + 2 + len > STREAM_CAP {
            break;
        }
        let m: Vec<u8> = (0..len)
            .map(|i| (k as u8).wrapping_mul(47) ^ (i as u8))
            .collect();
        offsets.insert(stream.len(), messages.len());
        stream.extend_from_slice(&fixtures::tcp_framed(&m));
        messages.push(m);
    }
    // Cut it: each byte is a segment size, 1-128, or 64-8192 in steps of 64 with its top bit set;
    // the last piece takes the rest.
    let mut pieces: Vec<(usize, usize)> = Vec::new();
    let mut at = 0;
    while at < stream.len() {
        let b = input.u8();
        let size = if input.is_empty() {
            stream.len() - at
        } else if b & 0x80 != 0 {
            (usize::from(b & 0x7f) + 1) * 64
        } else {
            usize::from(b) + 1
        };
        let end = (at + size).min(stream.len());
        pieces.push((at, end));
        at = end;
    }
    // Then reorder, duplicate, merge and drop, as the rest of the input says.
    let mut schedule = pieces.clone();
    let mut dropped = false;
    for _ in 0..64 {
        if input.is_empty() || schedule.is_empty() {
            break;
        }
        let op = input.u8();
        let i = usize::from(input.u8()) % schedule.len();
        match op % 4 {
            0 if i + 1 < schedule.len() => schedule.swap(i, i + 1),
            1 => {
                let again = schedule[i];
                let to = (i + usize::from(op >> 2)).min(schedule.len());
                schedule.insert(to, again);
            }
            2 if select & 0x40 != 0 && schedule.len() > 1 => {
                let gone = schedule.remove(i);
                // Dropped only if no other copy of those bytes is left.
                dropped |= !schedule
                    .iter()
                    .any(|&(lo, hi)| lo <= gone.0 && gone.1 <= hi);
            }
            3 if i + 1 < schedule.len() => {
                let (a, b) = (schedule[i], schedule[i + 1]);
                let merged = (a.0.min(b.0), a.1.max(b.1));
                // A retransmission may cover more than both (its bytes are all real).
                schedule.insert(usize::from(op >> 2).min(schedule.len()), merged);
            }
            _ => {}
        }
    }
    let pickup = select & 0x20 != 0;
    if pickup {
        // Picked up at the stream's first byte: that segment must come first.
        match pieces.first() {
            Some(&first) => schedule.insert(0, first),
            None => return,
        }
    }
    let mut s = Streams::new(config);
    let id = stream_flow(select);
    let mut now = Instant::now();
    let first = isn.wrapping_add(1);
    if !pickup {
        let syn = Segment {
            seq: isn,
            flags: nfqmark::packet::TcpFlags {
                syn: true,
                ..Default::default()
            },
            payload: &[],
            truncated: false,
        };
        let _ = s.segment(id, syn, now);
    }
    let base = if pickup { isn } else { first };
    let mut next_index = 0usize;
    // A model of what the reader has: which bytes came, and the first one that has not.
    let mut have = vec![false; stream.len()];
    let mut expected = 0usize;
    let mut frames: Vec<(usize, usize)> = offsets.iter().map(|(&o, &k)| (o, k)).collect();
    frames.sort_unstable();
    for &(lo, hi) in &schedule {
        now += Duration::from_millis(1);
        let before = expected;
        have[lo..hi].fill(true);
        while have.get(expected) == Some(&true) {
            expected += 1;
        }
        let payload = &stream[lo..hi];
        let segment = Segment {
            seq: base.wrapping_add(lo as u32),
            flags: nfqmark::packet::TcpFlags {
                ack: true,
                fin: select & 0x10 != 0 && hi == stream.len(),
                ..Default::default()
            },
            payload,
            truncated: false,
        };
        let read = s.segment(id, segment, now);
        let mut got = Vec::new();
        for m in read.messages() {
            let offset = m.seq.wrapping_sub(base) as usize;
            let Some(&k) = offsets.get(&offset) else {
                panic!("a message at stream offset {offset}, where none starts");
            };
            assert!(
                k >= next_index,
                "message {k} after message {next_index}: twice or out of order"
            );
            assert_eq!(m.bytes, &messages[k][..], "message {k}'s bytes");
            if m.borrowed {
                assert!(
                    within(payload, m.bytes),
                    "borrowed bytes outside the segment"
                );
            }
            if let Some(start) = m.start {
                assert_eq!(lo + start, offset, "message {k}'s start in the segment");
            }
            next_index = k + 1;
            got.push(k);
        }
        let starts: Vec<usize> = read.starts().map(|start| lo + start).collect();
        for start in &starts {
            assert!(offsets.contains_key(start), "a start at {start}");
        }
        if s.counters.bound_breaks == 0 {
            // Exactly the messages whose last byte just became reachable, and a start for each
            // message beginning in the bytes this segment added to the stream.
            let end = |&(o, k): &(usize, usize)| o + 2 + messages[k].len();
            let due: Vec<usize> = frames
                .iter()
                .filter(|f| end(f) > before && end(f) <= expected)
                .map(|&(_, k)| k)
                .collect();
            assert_eq!(
                got, due,
                "messages of {lo}..{hi} (stream read to {before}, then {expected})"
            );
            let begun: Vec<usize> = frames
                .iter()
                .map(|&(o, _)| o)
                .filter(|&o| lo <= before && before <= o && o < hi)
                .collect();
            assert_eq!(
                starts, begun,
                "starts in {lo}..{hi} (stream read to {before})"
            );
        }
        if let Err(e) = s.audit() {
            panic!("after {lo}..{hi}: {e}");
        }
    }
    let c = s.counters;
    if !dropped && c.bound_breaks == 0 && c.evictions == 0 && c.expiries == 0 {
        assert_eq!(
            next_index,
            messages.len(),
            "messages missing, nothing lost: {c:?}"
        );
        assert_eq!(s.buffered(), 0, "bytes held after the whole stream");
    }
}

/// The `stream` target's second mode: records of flow (bits 0-1), flags, sequence number,
/// clock step and payload, through a two-flow-capacity table.
fn stream_chaos(select: u8, mut input: Bytes<'_>) {
    let config = StreamConfig {
        capacity: usize::from(select & 3),
        idle: Duration::from_millis(200),
        linger: Duration::from_millis(50),
        ..stream_config(select >> 2)
    };
    let mut s = Streams::new(config);
    let mut now = Instant::now();
    let mut yielded = 0u64;
    while !input.is_empty() {
        let who = input.u8();
        let f = input.u8();
        let seq = input.u32();
        now += Duration::from_millis(u64::from(input.u8()));
        let len = usize::from(input.u8()).min(input.0.len());
        let (payload, rest) = input.0.split_at(len);
        input.0 = rest;
        let segment = Segment {
            seq,
            flags: nfqmark::packet::TcpFlags {
                syn: f & 1 != 0,
                ack: f & 2 != 0,
                fin: f & 4 != 0,
                rst: f & 8 != 0,
            },
            payload,
            truncated: f & 16 != 0,
        };
        let read = s.segment(stream_flow(who), segment, now);
        for m in read.messages() {
            yielded += 1;
            if m.borrowed {
                assert!(
                    within(payload, m.bytes),
                    "borrowed bytes outside the segment"
                );
            }
            if let Some(start) = m.start {
                assert!(start + 2 + m.bytes.len() <= payload.len() || !m.borrowed);
            }
        }
        for start in read.starts() {
            assert!(start < payload.len(), "start {start} of {}", payload.len());
        }
        if let Some(p) = read.partial() {
            assert!(p.head.len() < usize::from(p.len.unwrap_or(u16::MAX)).max(1));
        }
        if let Err(e) = s.audit() {
            panic!("{e}");
        }
    }
    assert_eq!(s.counters.messages, yielded);
}

// ---------------------------------------------------------------------------------------------
// Seeds.
// ---------------------------------------------------------------------------------------------

const CLIENT4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 137));
const ROUTER4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
const UPSTREAM4: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 53));
const CLIENT6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x137));
const ROUTER6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1));

/// Real packets: the four packets of a resolution over UDP and TCP, IPv4 and IPv6, a name in
/// the garden, a SYN, a truncated answer.
pub fn seed_packets() -> Vec<Vec<u8>> {
    let q = fixtures::dns_query(0x1234, "www.Example.com");
    let up = fixtures::dns_query(0xbeef, "wWw.eXample.COM");
    let ans = fixtures::dns_answer_a(0xbeef, "www.example.com", &[Ipv4Addr::new(192, 0, 2, 80)]);
    let cans = fixtures::dns_answer_a(0x1234, "www.example.com", &[Ipv4Addr::new(192, 0, 2, 80)]);
    let garden = fixtures::dns_query(7, "a.garden.nfqm.example");
    let mut packets = vec![
        fixtures::udp(CLIENT4, 40000, ROUTER4, 53, &q),
        fixtures::udp(ROUTER4, 33000, UPSTREAM4, 53, &up),
        fixtures::udp(UPSTREAM4, 53, ROUTER4, 33000, &ans),
        fixtures::udp(ROUTER4, 53, CLIENT4, 40000, &cans),
        fixtures::udp(CLIENT6, 40000, ROUTER6, 53, &q),
        fixtures::udp(CLIENT4, 40001, ROUTER4, 53, &garden),
        fixtures::tcp(CLIENT4, 40002, ROUTER4, 53, &fixtures::tcp_framed(&q)),
        fixtures::tcp(UPSTREAM4, 53, ROUTER4, 33001, &fixtures::tcp_framed(&ans)),
        fixtures::tcp_syn(CLIENT4, 40003, UPSTREAM4, 443),
        fixtures::udp(
            CLIENT4,
            40004,
            ROUTER4,
            53,
            &fixtures::dns_header_only(9, false),
        ),
    ];
    let mut short = fixtures::udp(CLIENT4, 40005, ROUTER4, 53, &q);
    fixtures::set_udp_length(&mut short, 9);
    packets.push(short);
    packets
}

/// An `NFQNL_MSG_PACKET` as the kernel sends it (host byte order header, big-endian values).
pub fn nfnl_packet_message(id: u32, hook: u8, mark: u32, indev: u32, payload: &[u8]) -> Vec<u8> {
    fn attr(out: &mut Vec<u8>, attr_type: u16, value: &[u8]) {
        out.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        out.extend_from_slice(&attr_type.to_ne_bytes());
        out.extend_from_slice(value);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    }
    let mut body = vec![AF_INET, 0, 0, 11];
    let mut hdr = id.to_be_bytes().to_vec();
    hdr.extend_from_slice(&0x0800u16.to_be_bytes());
    hdr.push(hook);
    attr(&mut body, 1, &hdr);
    if mark != 0 {
        attr(&mut body, 3, &mark.to_be_bytes());
    }
    if indev != 0 {
        attr(&mut body, 5, &indev.to_be_bytes());
    }
    attr(&mut body, 10, payload);
    let mut msg = Vec::with_capacity(16 + body.len());
    msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
    msg.extend_from_slice(&0x0300u16.to_ne_bytes());
    msg.extend_from_slice(&0u16.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&body);
    msg
}

/// One netlink attribute, padded (host-order header).
fn nl_attr(out: &mut Vec<u8>, attr_type: u16, value: &[u8]) {
    out.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&attr_type.to_ne_bytes());
    out.extend_from_slice(value);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// One netlink message with sequence number 1.
fn nl_msg(msg_type: u16, flags: u16, body: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(16 + body.len());
    msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
    msg.extend_from_slice(&msg_type.to_ne_bytes());
    msg.extend_from_slice(&flags.to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(body);
    msg
}

/// An nf_tables rule dump as iptables-nft's `-m comment --comment nfqmark -j NFQUEUE
/// --queue-num 3 --queue-bypass` comes back: the rule (comment match, counter, NFQUEUE
/// target revision 3), then `NLMSG_DONE`.
pub fn nft_rule_dump() -> Vec<u8> {
    let expr = |name: &str, data: &[u8]| {
        let mut e = Vec::new();
        nl_attr(&mut e, 1, &[name.as_bytes(), &[0]].concat());
        nl_attr(&mut e, 0x8000 | 2, data);
        let mut elem = Vec::new();
        nl_attr(&mut elem, 0x8000 | 1, &e);
        elem
    };
    let xt = |name: &str, rev: u32, info: &[u8]| {
        let mut d = Vec::new();
        nl_attr(&mut d, 1, &[name.as_bytes(), &[0]].concat());
        nl_attr(&mut d, 2, &rev.to_be_bytes());
        nl_attr(&mut d, 3, info);
        d
    };
    let mut comment = [0u8; 256];
    comment[..7].copy_from_slice(b"nfqmark");
    let mut counter = Vec::new();
    nl_attr(&mut counter, 1, &9200u64.to_be_bytes());
    nl_attr(&mut counter, 2, &100u64.to_be_bytes());
    let mut nfqueue = Vec::new();
    for v in [3u16, 1, 1, 0] {
        nfqueue.extend_from_slice(&v.to_ne_bytes());
    }
    let mut exprs = expr("match", &xt("comment", 0, &comment));
    exprs.extend(expr("counter", &counter));
    exprs.extend(expr("target", &xt("NFQUEUE", 3, &nfqueue)));
    let mut body = vec![AF_INET, 0, 0, 1];
    nl_attr(&mut body, 1, b"mangle\0");
    nl_attr(&mut body, 2, b"OUTPUT\0");
    nl_attr(&mut body, 3, &2u64.to_be_bytes());
    nl_attr(&mut body, 0x8000 | 4, &exprs);
    let mut out = nl_msg(0x0a06, 0x2, &body);
    out.extend(nl_msg(3, 0x2, &0i32.to_ne_bytes()));
    out
}

/// A conntrack entry as ctnetlink answers a get: tuple, status (confirmed), mark, id.
/// A dump of an nf_tables set of the kernel backend (`ipv4_addr . ipv4_addr . mark`): two timed
/// elements, then `NLMSG_DONE`, then a batch's acknowledgement.
pub fn set_elements() -> Vec<u8> {
    let mut list = Vec::new();
    for last in [81u8, 82] {
        let key = [&[198, 18, 1, 2, 198, 18, 9, last][..], &0x100u32.to_ne_bytes()].concat();
        let mut value = Vec::new();
        nl_attr(&mut value, 1, &key);
        let mut elem = Vec::new();
        nl_attr(&mut elem, 0x8000 | 1, &value);
        nl_attr(&mut elem, 4, &60_000u64.to_be_bytes());
        nl_attr(&mut elem, 5, &59_000u64.to_be_bytes());
        nl_attr(&mut list, 0x8000 | 1, &elem);
    }
    let mut body = vec![1, 0, 0, 0];
    nl_attr(&mut body, 1, b"nfqmark\0");
    nl_attr(&mut body, 2, b"f1_1_ff_mff00_4\0");
    nl_attr(&mut body, 0x8000 | 3, &list);
    let mut out = nl_msg(0x0a0c, 2, &body);
    out.extend(nl_msg(3, 2, &0i32.to_ne_bytes()));
    out.extend(nl_msg(2, 0, &[0u8; 20]));
    out
}

pub fn ct_entry() -> Vec<u8> {
    let mut ip = Vec::new();
    nl_attr(&mut ip, 1, &[198, 18, 0, 1]);
    nl_attr(&mut ip, 2, &[198, 18, 0, 2]);
    let mut proto = Vec::new();
    nl_attr(&mut proto, 1, &[17]);
    nl_attr(&mut proto, 2, &40000u16.to_be_bytes());
    nl_attr(&mut proto, 3, &53u16.to_be_bytes());
    let mut tuple = Vec::new();
    nl_attr(&mut tuple, 0x8000 | 1, &ip);
    nl_attr(&mut tuple, 0x8000 | 2, &proto);
    let mut body = vec![AF_INET, 0, 0, 0];
    nl_attr(&mut body, 0x8000 | 1, &tuple);
    nl_attr(&mut body, 3, &0x8u32.to_be_bytes());
    nl_attr(&mut body, 8, &0x1234u32.to_be_bytes());
    nl_attr(&mut body, 12, &7u32.to_be_bytes());
    nl_msg(0x0100, 0, &body)
}

/// `nfgenmsg.family` of an IPv4 packet.
const AF_INET: u8 = 2;

/// Seed inputs per target, named.
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    let packets = seed_packets();
    for (i, p) in packets.iter().enumerate() {
        out.push(("packet", format!("packet-{i}"), p.clone()));
    }
    // Bare DNS messages (the target also reads its input as a UDP payload and a TCP segment).
    let messages = [
        fixtures::dns_query(0x1234, "www.Example.com"),
        fixtures::dns_answer_a(7, "a.b.example", &[Ipv4Addr::new(192, 0, 2, 1)]),
        fixtures::dns_header_only(9, true),
        fixtures::tcp_framed(&fixtures::dns_query(1, "tcp.example")),
    ];
    for (i, m) in messages.into_iter().enumerate() {
        out.push(("packet", format!("dns-{i}"), m));
    }
    // Engine: one resolution (client query in, upstream query out, answer in, answer out), in
    // each configuration.
    let steps: [(u8, u32, u8, u8, usize); 4] = [
        (1, 137, 2, 0, 0),
        (3, 0, 0, 3, 1),
        (1, 0, 3, 0, 2),
        (3, 0, 0, 2, 3),
    ];
    for select in [0x00u8, 0x01, 0x02, 0x31, 0xf0] {
        let mut input = vec![select];
        for (hook, mark, indev, outdev, p) in steps {
            let bytes = &packets[p];
            input.push(hook);
            input.extend_from_slice(&mark.to_be_bytes());
            input.extend_from_slice(&[indev, outdev]);
            input.extend_from_slice(&10u16.to_be_bytes());
            input.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
            input.extend_from_slice(bytes);
        }
        out.push(("engine", format!("engine-resolution-{select:02x}"), input));
    }
    out.push(("rules", "sample".into(), SAMPLE_RULES.as_bytes().to_vec()));
    let mut batch = Vec::new();
    for (i, p) in packets.iter().take(4).enumerate() {
        let m = nfnl_packet_message(i as u32 + 1, 1, 137 * (i as u32 % 2), 2, p);
        out.push(("nfnl", format!("nfnl-packet-{i}"), m.clone()));
        batch.extend_from_slice(&m);
    }
    out.push(("nfnl", "nfnl-batch".into(), batch));
    out.push(("nfnl", "nft-rule-dump".into(), nft_rule_dump()));
    out.push(("nfnl", "ct-entry".into(), ct_entry()));
    out.push(("nfnl", "set-elements".into(), set_elements()));
    out.extend(stream_seeds());
    out
}

/// Seeds for [`stream`]: a client's pipelined queries and a resolver's answers, cut in a few
/// ways, in both modes.
fn stream_seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    // Faithful mode: selector, ISN, count, lengths, cuts, then (op, index) pairs.
    type Shape = (u8, u32, &'static [u16], &'static [u8], &'static [u8]);
    let shapes: [Shape; 5] = [
        (0x00, 1000, &[29, 40, 33], &[2, 31, 10, 50], &[]),
        (
            0x10,
            u32::MAX - 5,
            &[12, 0, 1, 60],
            &[1, 1, 20, 3],
            &[0, 1, 1, 0, 3, 2],
        ),
        (
            0x48,
            7,
            &[1500, 300, 4000],
            &[0x85, 0x90, 2, 0xa0],
            &[0, 0, 2, 1, 1, 2],
        ),
        (
            0x21,
            0x8000_0000,
            &[50, 50, 50, 50],
            &[30, 30, 30, 30, 30],
            &[3, 1, 0, 2],
        ),
        (0x02, 0, &[70, 70], &[10; 14], &[0, 3, 0, 5, 0, 7, 1, 9]),
    ];
    for (i, (select, isn, lens, cuts, ops)) in shapes.into_iter().enumerate() {
        let mut input = vec![select];
        input.extend_from_slice(&isn.to_be_bytes());
        input.push(lens.len() as u8);
        for l in lens {
            input.extend_from_slice(&l.to_be_bytes());
        }
        input.extend_from_slice(cuts);
        input.extend_from_slice(ops);
        out.push(("stream", format!("stream-{i}"), input));
    }
    // Chaos mode: a handshake, a query in two pieces, its answer, FIN and RST, as records.
    let q = fixtures::tcp_framed(&fixtures::dns_query(1, "www.example.com"));
    let a = fixtures::tcp_framed(&fixtures::dns_answer_a(
        1,
        "www.example.com",
        &[Ipv4Addr::new(192, 0, 2, 80)],
    ));
    let records: [(u8, u8, u32, &[u8]); 7] = [
        (0, 1, 100, &[]),
        (2, 3, 900, &[]),
        (0, 2, 101, &q[..2]),
        (0, 2, 103, &q[2..]),
        (2, 2, 901, &a),
        (0, 6, 101 + q.len() as u32, &[]),
        (2, 8, 901 + a.len() as u32, &[]),
    ];
    let mut input = vec![0x82];
    for (who, flags, seq, payload) in records {
        input.extend_from_slice(&[who, flags]);
        input.extend_from_slice(&seq.to_be_bytes());
        input.extend_from_slice(&[5, payload.len() as u8]);
        input.extend_from_slice(payload);
    }
    out.push(("stream", "stream-chaos".into(), input));
    out.push((
        "answer",
        "answer-a".into(),
        fixtures::dns_answer_a(7, "www.example.com", &[Ipv4Addr::new(198, 18, 7, 1); 3]),
    ));
    for (name, bytes) in seed_answers() {
        out.push(("answer", name, bytes));
    }
    for (name, bytes) in seed_captures() {
        out.push(("capture", name, bytes));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The nf_tables and ctnetlink seeds are what their readers expect (so the fuzzer starts
    /// from messages that reach the interesting code).
    #[test]
    fn nfnl_seeds_parse_as_meant() {
        let mut dump = nft::RuleDump::default();
        dump.feed(&nft_rule_dump(), 1).expect("dump");
        assert!(dump.done);
        assert_eq!(dump.rules.len(), 1);
        assert_eq!(
            (dump.rules[0].queues.first, dump.rules[0].packets),
            (3, 100)
        );
        match ct::parse_answer(&ct_entry(), 1) {
            Ok(ct::Answer::Entry(e)) => assert_eq!((e.mark, e.first()), (0x1234, Some(false))),
            other => panic!("{other:?}"),
        }
    }

    /// The seeds run clean through their targets, and the packet seeds parse (so the corpus
    /// starts from real packets, not from bytes the parser rejects at once).
    #[test]
    fn seeds_run_clean() {
        for (target, name, input) in seeds() {
            match target {
                "packet" => packet(&input),
                "engine" => engine(&input),
                "rules" => rules(&input),
                "stream" => stream(&input),
                "nfnl" => {
                    nfnl(&input);
                    if name.starts_with("nfnl-") {
                        assert!(Messages::new(&input).all(|m| m.is_ok()), "{name}");
                    }
                }
                "answer" => {
                    answer(&input);
                    // Every seed reads whole, with nfqmark's reader and hickory-proto's.
                    let msg = dns::answer::Message::parse(&input)
                        .unwrap_or_else(|e| panic!("{name}: {e}"));
                    for r in msg.records() {
                        r.unwrap_or_else(|e| panic!("{name}: {e}"));
                    }
                    assert!(
                        hickory_proto::op::Message::from_vec(&input).is_ok(),
                        "{name}"
                    );
                }
                other => panic!("unknown target {other}"),
            }
        }
        for p in seed_packets() {
            assert!(packet::parse(&p).is_ok());
        }
    }
}
