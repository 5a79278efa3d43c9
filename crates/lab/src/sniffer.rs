//! The upstream host's sniffer: which link every DNS query, DNS answer and flow opening came
//! over, and whether the host's ingress filter let it in.
//!
//! One thread reads every frame of the watched links from one AF_PACKET socket (in the order
//! the kernel saw them, whatever the link) and turns them into records. A packet whose source
//! does not belong to the link it arrived on is recorded as dropped: the lab's ingress rules on
//! the upstream host drop exactly those (see `lab::World`), and the sniffer classifies with the
//! same prefixes, before the firewall runs. Answers are the upstream host's own DNS responses
//! leaving on a link, so a test can check that a query was accepted *and* answered over the
//! link it came in on.
//!
//! DNS over TCP is read as a stream per direction of each connection: every message of a
//! segment, messages split over segments, retransmitted bytes read once; a hole in the
//! sequence numbers is counted ([`Sniffer::tcp_gaps`]). Packets are parsed with etherparse and
//! hickory-proto, never with nfqmark's own parsers, so the lab's view does not depend on the
//! code under test.
//!
//! This module owns reading and classifying frames; it never sends, drops or changes a packet.

use std::collections::HashMap;
use std::io;
use std::mem;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use hickory_proto::op::{Message, MessageType};

use super::netns::Netns;
use super::upstream::{Threads, spawn_in};

const POLL: Duration = Duration::from_millis(100);

/// Connections whose TCP stream is followed at once; past that, the oldest state is forgotten.
const MAX_STREAMS: usize = 4096;

/// UDP or TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    Udp,
    Tcp,
}

/// An address prefix (`198.18.3.0/24`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

impl Prefix {
    /// `ADDR/LEN`; `None` when it does not parse or the length is too long for the family.
    pub fn parse(s: &str) -> Option<Prefix> {
        let (addr, len) = s.split_once('/')?;
        let addr: IpAddr = addr.parse().ok()?;
        let len: u8 = len.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (len <= max).then_some(Prefix { addr, len })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(p), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(p) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(p), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(p) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// A link the sniffer watches, and the sources the host on it accepts (`None`: any).
#[derive(Debug, Clone)]
pub struct Watched {
    pub link: String,
    pub sources: Option<Vec<Prefix>>,
}

impl Watched {
    /// Whether a packet from `src` arriving on this link gets past the ingress filter. IPv6
    /// link-local sources are the link's own (neighbour discovery), as in the lab's rules.
    pub fn accepts(&self, src: IpAddr) -> bool {
        match &self.sources {
            None => true,
            Some(prefixes) => {
                prefixes.iter().any(|p| p.contains(src))
                    || matches!(src, IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80)
            }
        }
    }
}

/// One DNS query seen arriving on a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub link: String,
    pub proto: Transport,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    /// Lower-cased query name without the trailing dot.
    pub name: String,
    /// The question's type (1 A, 2 NS, 28 AAAA, 43 DS, 48 DNSKEY...).
    pub qtype: u16,
    /// The name as sent had upper-case letters: the resolver randomised its case (0x20).
    pub cased: bool,
    pub id: u16,
    /// The source belongs to the link: the upstream host's ingress filter let it in. False: it
    /// arrived with another link's (or a client's) address and was dropped.
    pub accepted: bool,
}

/// The opening packet of a flow (TCP SYN, or any UDP datagram not to or from port 53) seen
/// arriving on a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowSeen {
    pub link: String,
    pub proto: Transport,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    /// As for [`Seen::accepted`].
    pub accepted: bool,
}

/// A DNS answer the upstream host sent out on a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerSeen {
    pub link: String,
    pub proto: Transport,
    /// Lower-cased question name without the trailing dot.
    pub name: String,
    pub id: u16,
    pub dst: IpAddr,
    pub truncated: bool,
}

/// What one frame told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Query(Seen),
    Answer(AnswerSeen),
    Flow(FlowSeen),
}

/// What the sniffer keeps.
#[derive(Debug, Default)]
struct Records {
    queries: Vec<Seen>,
    answers: Vec<AnswerSeen>,
    flows: Vec<FlowSeen>,
    gaps: u64,
}

/// Records DNS queries, DNS answers and flow openings on the watched links of a namespace.
#[derive(Debug)]
pub struct Sniffer {
    seen: Arc<Mutex<Records>>,
    /// Some watched link accepts only its own sources: the host answers over the link a
    /// query came in on.
    validating: bool,
    _threads: Threads,
}

impl Sniffer {
    /// Start watching `links` of `ns` (none: a sniffer that records nothing and costs nothing).
    pub fn start(ns: &Netns, links: &[Watched]) -> io::Result<Sniffer> {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Records::default()));
        let mut handles = Vec::new();
        if !links.is_empty() {
            let links = links.to_vec();
            let stop = Arc::clone(&stop);
            let seen = Arc::clone(&seen);
            handles.push(spawn_in(
                ns,
                "lab-sniffer",
                move || {
                    let fd = packet_socket()?;
                    let mut by_index = HashMap::new();
                    for w in links {
                        by_index.insert(ifindex(&w.link)?, w);
                    }
                    Ok((fd, by_index))
                },
                move |(fd, by_index)| sniff(&fd, &by_index, &stop, &seen),
            )?);
        }
        Ok(Sniffer {
            seen,
            validating: links.iter().any(|w| w.sources.is_some()),
            _threads: Threads::new(stop, handles),
        })
    }

    /// Whether the upstream host filters sources per link (and so answers over the link a
    /// query came in on); without that, an answer may leave by any link.
    pub fn validating(&self) -> bool {
        self.validating
    }

    fn records(&self) -> MutexGuard<'_, Records> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every DNS query seen so far, accepted or dropped.
    pub fn seen(&self) -> Vec<Seen> {
        self.records().queries.clone()
    }

    /// Every DNS answer the upstream host sent so far.
    pub fn answers(&self) -> Vec<AnswerSeen> {
        self.records().answers.clone()
    }

    /// Every flow opening seen so far.
    pub fn flows(&self) -> Vec<FlowSeen> {
        self.records().flows.clone()
    }

    /// Flow openings of `proto` from source port `sport` to `dst`:`dport` (the router's NAT
    /// keeps the lab clients' source ports), one per opening packet.
    pub fn flows_from_port(&self, proto: Transport, sport: u16, dst: SocketAddr) -> Vec<FlowSeen> {
        self.records()
            .flows
            .iter()
            .filter(|f| {
                f.proto == proto && f.sport == sport && f.dst == dst.ip() && f.dport == dst.port()
            })
            .cloned()
            .collect()
    }

    /// Holes in the sequence numbers of the TCP streams read so far (a segment the sniffer
    /// missed): DNS messages around one may be missing from the records.
    pub fn tcp_gaps(&self) -> u64 {
        self.records().gaps
    }

    /// Forget what was seen (between rounds).
    pub fn clear(&self) {
        let mut r = self.records();
        r.queries.clear();
        r.answers.clear();
        r.flows.clear();
        r.gaps = 0;
    }
}

/// An AF_PACKET socket for every frame of every interface of the calling thread's namespace.
fn packet_socket() -> io::Result<OwnedFd> {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2) call; the fd is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(proto),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: POLL.as_micros() as libc::suseconds_t,
    };
    // SAFETY: tv is a valid timeval and the length matches it.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

fn ifindex(iface: &str) -> io::Result<i32> {
    let cname = std::ffi::CString::new(iface).map_err(io::Error::other)?;
    // SAFETY: cname is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    i32::try_from(index)
        .ok()
        .filter(|i| *i > 0)
        .ok_or_else(|| io::Error::other(format!("no interface {iface}")))
}

fn sniff(fd: &OwnedFd, links: &HashMap<i32, Watched>, stop: &AtomicBool, seen: &Mutex<Records>) {
    let mut buf = vec![0u8; 65_536];
    let mut streams = TcpStreams::default();
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: sockaddr_ll is plain data; zeroed is a valid starting value.
        let mut from: libc::sockaddr_ll = unsafe { mem::zeroed() };
        let mut from_len = mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: buf is valid for writes of its length; `from` and `from_len` are valid
        // out-pointers for a sockaddr_ll.
        let n = unsafe {
            libc::recvfrom(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&mut from as *mut libc::sockaddr_ll).cast(),
                &mut from_len,
            )
        };
        let Ok(n) = usize::try_from(n) else {
            continue;
        };
        let (Some(frame), Some(link)) = (buf.get(..n), links.get(&from.sll_ifindex)) else {
            continue;
        };
        let outgoing = from.sll_pkttype == libc::PACKET_OUTGOING;
        let gaps_before = streams.gaps;
        let events = read_frame(&mut streams, link, outgoing, frame);
        let gaps = streams.gaps - gaps_before;
        if events.is_empty() && gaps == 0 {
            continue;
        }
        let mut r = seen.lock().unwrap_or_else(|p| p.into_inner());
        r.gaps += gaps;
        for e in events {
            match e {
                Event::Query(s) => r.queries.push(s),
                Event::Answer(a) => r.answers.push(a),
                Event::Flow(f) => r.flows.push(f),
            }
        }
    }
}

/// One direction of a TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamKey {
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
}

/// A TCP segment, as far as stream reading needs it.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    pub seq: u32,
    pub syn: bool,
    /// FIN or RST: the direction ends after this segment's bytes.
    pub end: bool,
    pub payload: &'a [u8],
}

#[derive(Debug, Default)]
struct Stream {
    /// The sequence number of the next byte expected.
    next: u32,
    /// Bytes of a DNS message not complete yet (with its two-byte length).
    buf: Vec<u8>,
    /// Some byte in `buf` came in a dropped segment.
    dropped: bool,
    /// When the stream was last used, in segments read (for forgetting the oldest).
    used: u64,
}

/// DNS messages read from TCP segments, per direction of each connection.
#[derive(Debug, Default)]
pub struct TcpStreams {
    streams: HashMap<StreamKey, Stream>,
    clock: u64,
    /// Holes in sequence numbers met so far.
    pub gaps: u64,
}

impl TcpStreams {
    /// Read a segment; returns every DNS message it completes (without the length prefix), each
    /// with whether any of its bytes came in a dropped segment.
    pub fn push(
        &mut self,
        key: StreamKey,
        seg: Segment<'_>,
        dropped: bool,
    ) -> Vec<(Vec<u8>, bool)> {
        self.clock += 1;
        let clock = self.clock;
        if seg.syn {
            self.make_room(&key);
            self.streams.insert(
                key,
                Stream {
                    next: seg.seq.wrapping_add(1),
                    used: clock,
                    ..Stream::default()
                },
            );
        }
        let mut out = Vec::new();
        if !seg.payload.is_empty() {
            // A stream first seen mid-way (its SYN missed) starts at this segment.
            if !self.streams.contains_key(&key) {
                self.make_room(&key);
                self.streams.insert(
                    key,
                    Stream {
                        next: seg.seq,
                        ..Stream::default()
                    },
                );
            }
            if let Some(s) = self.streams.get_mut(&key) {
                s.used = clock;
                let ahead = seg.seq.wrapping_sub(s.next) as i32;
                let mut payload = seg.payload;
                if ahead > 0 {
                    // A hole: what was buffered cannot be completed.
                    self.gaps += 1;
                    s.buf.clear();
                    s.dropped = false;
                    s.next = seg.seq;
                } else if ahead < 0 {
                    // Bytes read already (a retransmission): only what is new counts.
                    let old = ahead.unsigned_abs() as usize;
                    payload = payload.get(old..).unwrap_or_default();
                }
                if !payload.is_empty() {
                    s.buf.extend_from_slice(payload);
                    s.dropped |= dropped;
                    s.next = s.next.wrapping_add(payload.len() as u32);
                    while let Some(len) = s
                        .buf
                        .first_chunk::<2>()
                        .map(|l| usize::from(u16::from_be_bytes(*l)))
                        && s.buf.len() >= 2 + len
                    {
                        let message: Vec<u8> = s.buf.drain(..2 + len).skip(2).collect();
                        out.push((message, s.dropped));
                        if s.buf.is_empty() {
                            s.dropped = false;
                        }
                    }
                }
            }
        }
        if seg.end {
            self.streams.remove(&key);
        }
        out
    }

    /// Forget the least recently used stream when the table is full.
    fn make_room(&mut self, key: &StreamKey) {
        if self.streams.len() < MAX_STREAMS || self.streams.contains_key(key) {
            return;
        }
        if let Some(oldest) = self
            .streams
            .iter()
            .min_by_key(|(_, s)| s.used)
            .map(|(k, _)| *k)
        {
            self.streams.remove(&oldest);
        }
    }
}

/// The transport view of one frame.
struct Ip<'a> {
    src: IpAddr,
    dst: IpAddr,
    l4: L4<'a>,
}

enum L4<'a> {
    Udp {
        sport: u16,
        dport: u16,
        payload: &'a [u8],
    },
    Tcp {
        sport: u16,
        dport: u16,
        seg: Segment<'a>,
        ack: bool,
    },
}

fn ip_in_frame(frame: &[u8]) -> Option<Ip<'_>> {
    let p = SlicedPacket::from_ethernet(frame).ok()?;
    let (src, dst) = match p.net.as_ref()? {
        NetSlice::Ipv4(s) => (
            IpAddr::V4(s.header().source_addr()),
            IpAddr::V4(s.header().destination_addr()),
        ),
        NetSlice::Ipv6(s) => (
            IpAddr::V6(s.header().source_addr()),
            IpAddr::V6(s.header().destination_addr()),
        ),
        NetSlice::Arp(_) => return None,
    };
    let l4 = match p.transport? {
        TransportSlice::Udp(u) => L4::Udp {
            sport: u.source_port(),
            dport: u.destination_port(),
            payload: u.payload(),
        },
        TransportSlice::Tcp(t) => L4::Tcp {
            sport: t.source_port(),
            dport: t.destination_port(),
            seg: Segment {
                seq: t.sequence_number(),
                syn: t.syn(),
                end: t.fin() || t.rst(),
                payload: t.payload(),
            },
            ack: t.ack(),
        },
        _ => return None,
    };
    Some(Ip { src, dst, l4 })
}

/// What the sniffer keeps of a DNS message.
struct Summary {
    id: u16,
    response: bool,
    truncated: bool,
    /// The first question's name, lower-cased, no trailing dot.
    name: String,
    qtype: u16,
    /// The name as sent had upper-case letters (0x20).
    cased: bool,
}

fn dns_summary(message: &[u8]) -> Option<Summary> {
    let m = Message::from_vec(message).ok()?;
    let q = m.queries.first()?;
    // hickory keeps the name's case as sent.
    let sent = q.name().to_ascii();
    let mut name = sent.to_ascii_lowercase();
    if name.ends_with('.') {
        name.pop();
    }
    Some(Summary {
        id: m.metadata.id,
        response: m.metadata.message_type == MessageType::Response,
        truncated: m.metadata.truncation,
        name,
        qtype: u16::from(q.query_type()),
        cased: sent.bytes().any(|b| b.is_ascii_uppercase()),
    })
}

/// Turn one frame on `link` into records: queries and flow openings arriving, answers leaving.
pub fn read_frame(
    streams: &mut TcpStreams,
    link: &Watched,
    outgoing: bool,
    frame: &[u8],
) -> Vec<Event> {
    let Some(ip) = ip_in_frame(frame) else {
        return Vec::new();
    };
    let accepted = outgoing || link.accepts(ip.src);
    let (proto, sport, dport, messages, opening) = match ip.l4 {
        L4::Udp {
            sport,
            dport,
            payload,
        } => {
            let dns = (!outgoing && dport == 53) || (outgoing && sport == 53);
            let messages = if dns {
                vec![(payload.to_vec(), !accepted)]
            } else {
                Vec::new()
            };
            (
                Transport::Udp,
                sport,
                dport,
                messages,
                sport != 53 && dport != 53,
            )
        }
        L4::Tcp {
            sport,
            dport,
            seg,
            ack,
        } => {
            let dns = (!outgoing && dport == 53) || (outgoing && sport == 53);
            let messages = if dns {
                let key = StreamKey {
                    src: ip.src,
                    sport,
                    dst: ip.dst,
                    dport,
                };
                streams.push(key, seg, !accepted)
            } else {
                Vec::new()
            };
            (Transport::Tcp, sport, dport, messages, seg.syn && !ack)
        }
    };
    let mut events = Vec::new();
    for (message, dropped) in messages {
        let Some(Summary {
            id,
            response,
            truncated,
            name,
            qtype,
            cased,
        }) = dns_summary(&message)
        else {
            continue;
        };
        match (outgoing, response) {
            (false, false) => events.push(Event::Query(Seen {
                link: link.link.clone(),
                proto,
                src: ip.src,
                sport,
                dst: ip.dst,
                dport,
                name,
                qtype,
                cased,
                id,
                accepted: !dropped,
            })),
            (true, true) => events.push(Event::Answer(AnswerSeen {
                link: link.link.clone(),
                proto,
                name,
                id,
                dst: ip.dst,
                truncated,
            })),
            _ => {}
        }
    }
    if opening && !outgoing && events.is_empty() {
        events.push(Event::Flow(FlowSeen {
            link: link.link.clone(),
            proto,
            src: ip.src,
            sport,
            dst: ip.dst,
            dport,
            accepted,
        }));
    }
    events
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use etherparse::PacketBuilder;

    use super::*;

    const ROUTER1: [u8; 4] = [198, 18, 3, 1];
    const UPSTREAM: [u8; 4] = [198, 18, 9, 53];

    fn link2() -> Watched {
        Watched {
            link: "link2".into(),
            sources: Some(vec![
                Prefix::parse("198.18.4.0/24").expect("prefix"),
                Prefix::parse("2001:db8:4::/64").expect("prefix"),
            ]),
        }
    }

    fn query(id: u16, name: &str) -> Vec<u8> {
        nfqmark_testkit::dns_query(id, name)
    }

    fn udp_frame(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let b = PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4(src, dst, 64)
            .udp(sport, dport);
        let mut out = Vec::new();
        b.write(&mut out, payload).expect("frame");
        out
    }

    fn tcp_frame(src: [u8; 4], sport: u16, seq: u32, syn: bool, payload: &[u8]) -> Vec<u8> {
        let mut b = PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4(src, UPSTREAM, 64)
            .tcp(sport, 53, seq, 1000);
        b = if syn { b.syn() } else { b.ack(1) };
        let mut out = Vec::new();
        b.write(&mut out, payload).expect("frame");
        out
    }

    fn key() -> StreamKey {
        StreamKey {
            src: IpAddr::V4(Ipv4Addr::from(ROUTER1)),
            sport: 40000,
            dst: IpAddr::V4(Ipv4Addr::from(UPSTREAM)),
            dport: 53,
        }
    }

    fn seg(seq: u32, payload: &[u8]) -> Segment<'_> {
        Segment {
            seq,
            syn: false,
            end: false,
            payload,
        }
    }

    fn framed(messages: &[Vec<u8>]) -> Vec<u8> {
        messages
            .iter()
            .flat_map(|m| nfqmark_testkit::tcp_framed(m))
            .collect()
    }

    #[test]
    fn prefixes_contain_their_addresses_only() {
        let p = Prefix::parse("198.18.4.0/24").expect("prefix");
        assert!(p.contains("198.18.4.1".parse().expect("ip")));
        assert!(!p.contains("198.18.3.1".parse().expect("ip")));
        assert!(!p.contains("2001:db8:4::1".parse().expect("ip")));
        let p6 = Prefix::parse("2001:db8:4::/64").expect("prefix");
        assert!(p6.contains("2001:db8:4::1".parse().expect("ip")));
        assert!(!p6.contains("2001:db8:3::1".parse().expect("ip")));
        assert!(
            Prefix::parse("0.0.0.0/0")
                .expect("all")
                .contains("1.2.3.4".parse().expect("ip"))
        );
        assert!(Prefix::parse("198.18.4.0/33").is_none());
        let w = link2();
        assert!(
            w.accepts("fe80::1".parse().expect("ip")),
            "neighbour discovery"
        );
    }

    #[test]
    fn every_split_of_three_pipelined_messages_reads_each_once() {
        let msgs: Vec<Vec<u8>> = (0..3u16)
            .map(|i| query(i, &format!("q{i}.nfqm.example")))
            .collect();
        let bytes = framed(&msgs);
        for a in 0..=bytes.len() {
            for b in a..=bytes.len() {
                let mut s = TcpStreams::default();
                let mut got = Vec::new();
                let isn = 1000u32;
                let _ = s.push(
                    key(),
                    Segment {
                        seq: isn,
                        syn: true,
                        end: false,
                        payload: &[],
                    },
                    false,
                );
                for (from, to) in [(0, a), (a, b), (b, bytes.len())] {
                    got.extend(s.push(key(), seg(isn + 1 + from as u32, &bytes[from..to]), false));
                }
                let got: Vec<Vec<u8>> = got.into_iter().map(|(m, _)| m).collect();
                assert_eq!(got, msgs, "split at {a} and {b}");
                assert_eq!(s.gaps, 0);
            }
        }
    }

    #[test]
    fn retransmitted_bytes_are_read_once() {
        let msgs = vec![query(1, "a.nfqm.example"), query(2, "b.nfqm.example")];
        let bytes = framed(&msgs);
        let mut s = TcpStreams::default();
        let half = bytes.len() / 2;
        let mut got = s.push(key(), seg(5, &bytes[..half]), false);
        // The first half again, then all of it again, then the rest.
        got.extend(s.push(key(), seg(5, &bytes[..half]), false));
        got.extend(s.push(key(), seg(5, &bytes), false));
        got.extend(s.push(key(), seg(5, &bytes), false));
        assert_eq!(got.len(), 2);
        assert_eq!(s.gaps, 0);
    }

    #[test]
    fn a_hole_is_counted_and_reading_restarts_after_it() {
        let m = query(1, "a.nfqm.example");
        let bytes = framed(&[m.clone(), m.clone()]);
        let one = bytes.len() / 2;
        let mut s = TcpStreams::default();
        let got = s.push(key(), seg(0, &bytes[..3]), false);
        assert!(got.is_empty());
        // Bytes 3..one never seen: the next message starts a new read.
        let got = s.push(key(), seg(one as u32, &bytes[one..]), false);
        assert_eq!(s.gaps, 1);
        assert_eq!(got, vec![(m, false)]);
    }

    #[test]
    fn sequence_numbers_wrap() {
        let m = query(1, "a.nfqm.example");
        let bytes = framed(std::slice::from_ref(&m));
        let mut s = TcpStreams::default();
        let start = u32::MAX - 2;
        let mut got = s.push(key(), seg(start, &bytes[..5]), false);
        got.extend(s.push(key(), seg(start.wrapping_add(5), &bytes[5..]), false));
        assert_eq!(got, vec![(m, false)]);
    }

    #[test]
    fn a_message_with_a_dropped_segment_is_dropped() {
        let m = query(1, "a.nfqm.example");
        let bytes = framed(&[m.clone(), m.clone()]);
        let one = bytes.len() / 2;
        let mut s = TcpStreams::default();
        let mut got = s.push(key(), seg(0, &bytes[..2]), true);
        got.extend(s.push(key(), seg(2, &bytes[2..one]), false));
        got.extend(s.push(key(), seg(one as u32, &bytes[one..]), false));
        assert_eq!(got, vec![(m.clone(), true), (m, false)]);
    }

    #[test]
    fn the_stream_table_is_bounded() {
        let mut s = TcpStreams::default();
        for port in 0..(MAX_STREAMS as u16 + 10) {
            let k = StreamKey {
                sport: port,
                ..key()
            };
            let _ = s.push(k, seg(0, &[0]), false);
        }
        assert_eq!(s.streams.len(), MAX_STREAMS);
    }

    #[test]
    fn queries_from_a_foreign_source_are_dropped_and_answers_recorded() {
        let mut s = TcpStreams::default();
        let q = query(7, "A-1.NfQm.Example");
        // Link 1's address arriving on link 2: dropped.
        let ev = read_frame(
            &mut s,
            &link2(),
            false,
            &udp_frame(ROUTER1, UPSTREAM, 4000, 53, &q),
        );
        let [Event::Query(seen)] = ev.as_slice() else {
            panic!("{ev:?}")
        };
        assert_eq!(seen.name, "a-1.nfqm.example");
        assert!(!seen.accepted);
        // The type and the case as sent are kept for the hierarchy's tables.
        assert_eq!(seen.qtype, 1);
        assert!(seen.cased);
        let lower = read_frame(
            &mut s,
            &link2(),
            false,
            &udp_frame(ROUTER1, UPSTREAM, 4000, 53, &query(8, "a-1.nfqm.example")),
        );
        assert!(matches!(
            lower.as_slice(),
            [Event::Query(Seen { cased: false, .. })]
        ));
        // Link 2's own address: accepted.
        let ev = read_frame(
            &mut s,
            &link2(),
            false,
            &udp_frame([198, 18, 4, 1], UPSTREAM, 4000, 53, &q),
        );
        assert!(matches!(
            ev.as_slice(),
            [Event::Query(Seen { accepted: true, .. })]
        ));
        // The answer leaving.
        let a = nfqmark_testkit::dns_answer(7, "a-1.nfqm.example");
        let ev = read_frame(
            &mut s,
            &link2(),
            true,
            &udp_frame(UPSTREAM, [198, 18, 4, 1], 53, 4000, &a),
        );
        assert!(matches!(
            ev.as_slice(),
            [Event::Answer(AnswerSeen { id: 7, .. })]
        ));
        // A flow opening and a SYN to port 53 (no query: a flow).
        let ev = read_frame(
            &mut s,
            &link2(),
            false,
            &udp_frame([198, 18, 4, 1], UPSTREAM, 4000, 5000, b"x"),
        );
        assert!(matches!(
            ev.as_slice(),
            [Event::Flow(FlowSeen { dport: 5000, .. })]
        ));
    }

    #[test]
    fn tcp_queries_in_one_segment_are_all_recorded() {
        let mut s = TcpStreams::default();
        let msgs: Vec<Vec<u8>> = (0..3u16)
            .map(|i| query(i, &format!("a-{i}.nfqm.example")))
            .collect();
        let src = [198, 18, 4, 1];
        let _ = read_frame(
            &mut s,
            &link2(),
            false,
            &tcp_frame(src, 40000, 99, true, &[]),
        );
        let ev = read_frame(
            &mut s,
            &link2(),
            false,
            &tcp_frame(src, 40000, 100, false, &framed(&msgs)),
        );
        let names: Vec<&str> = ev
            .iter()
            .filter_map(|e| match e {
                Event::Query(q) if q.accepted => Some(q.name.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(
            names,
            ["a-0.nfqm.example", "a-1.nfqm.example", "a-2.nfqm.example"]
        );
    }
}
