//! `nfqmark replay`: run a packet capture through the daemon's decision path, offline, and say
//! what nfqmark would have done with every packet it would have been given.
//!
//! A capture taken on a router shows packets crossing interfaces, not netfilter hooks, and
//! without their marks. This module rebuilds what the queue would have reported, from the
//! capture and the recipe `nfqmark setup` prints:
//!
//! - **Which way, on which interface**: Linux cooked captures (`tcpdump -i any`: SLL2, or SLL)
//!   say whether a packet arrived or left, and SLL2 on which interface (its index); pcapng
//!   packet flags may say the direction; NFLOG captures (`tcpdump -i nflog:N`) carry the hook,
//!   the mark and both interfaces as netfilter saw them. Plain Ethernet or raw IP captures say
//!   nothing of direction: the router's addresses decide (from the source: leaving).
//! - **The hook guess** ([`Guess`]), with the router's addresses (`--router-addr`, or inferred
//!   from the capture: addresses that are the source of packets leaving and never of packets
//!   arriving): arriving for a router address -> INPUT; leaving from one -> OUTPUT; arriving for
//!   another host -> FORWARD (the same packet seen leaving again is skipped: it was decided when
//!   it arrived); the first packet of a new connection arriving, when flow rules exist ->
//!   PREROUTING. A packet goes to the decision path only where `nfqmark setup`'s rules would
//!   queue it (DNS at INPUT and OUTPUT; with flow rules, DNS at FORWARD and new flows at
//!   PREROUTING); `--hook` instead queues every packet at one hook.
//! - **The mark a packet carries when queued**: a small model of connection marks, as the setup
//!   recipe and the dnsmasq README's marking rules keep them: PREROUTING restores the
//!   connection's mark, gives clients their mark (`--client-mark`, standing for your MARK rules)
//!   and saves it; OUTPUT starts from 0, is queued, then restores under the mask; POSTROUTING
//!   saves a mark under the mask. Connections are keyed by the addresses and ports the capture
//!   shows (after NAT on the way out, before DNAT on the way in, as an interface sees them).
//!
//! Each queued packet then goes through [`engine::decide`] (plan, apply, finish: the steps every
//! worker takes) on the daemon's own shared state ([`Shared`]: tables, rules, counters), with the
//! time taken from the capture; the counters are printed as the daemon logs them. One step the
//! worker takes a capture cannot: for a resolver's TCP SYN that several waiting clients could
//! have caused, the worker asks the running kernel which client connection the resolver's
//! process holds (`crate::sockdiag`); replay settles it as `engine::decide` does, by timing (the
//! oldest waiting client, counted as ambiguous).
//!
//! This module owns the reading of capture files (the only I/O here, in [`read_capture`]) and
//! the model above. It must never decide anything itself: every verdict and mark comes from the
//! engine; and it never touches the kernel. Every table it keeps is bounded.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::{self, Write as _};
use std::hash::{BuildHasher, Hash, Hasher};
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pcap_parser::traits::PcapNGPacketBlock;
use pcap_parser::{Block, PcapBlockOwned, PcapError};

use crate::cli::{ReplayArgs, ReplayHook};
use crate::engine::{self, Class, Decision, Role};
use crate::links::{LinkEvent, LinkMap};
use crate::packet::{self, Packet, Proto};
use crate::rules::RuleSet;
use crate::types::{Conn, Hook, Meta, Verdict, apply_mask};
use crate::worker::{Loaded, Shared, lock};

// ---------------------------------------------------------------------------------------------
// Link layers: what a capture's frame says besides the IP packet. Pure.
// ---------------------------------------------------------------------------------------------

/// Link types nfqmark reads (the tcpdump.org LINKTYPE_ numbers).
pub mod linktype {
    pub const NULL_RAW: u32 = 12;
    pub const ETHERNET: u32 = 1;
    pub const RAW: u32 = 101;
    pub const LINUX_SLL: u32 = 113;
    pub const NFLOG: u32 = 239;
    pub const IPV4: u32 = 228;
    pub const IPV6: u32 = 229;
    pub const LINUX_SLL2: u32 = 276;

    /// The name tcpdump uses, for messages.
    pub fn name(link: u32) -> String {
        match link {
            ETHERNET => "EN10MB (Ethernet)".into(),
            RAW | NULL_RAW | 14 => "RAW (IP)".into(),
            LINUX_SLL => "LINUX_SLL (Linux cooked v1)".into(),
            LINUX_SLL2 => "LINUX_SLL2 (Linux cooked v2)".into(),
            NFLOG => "NFLOG".into(),
            IPV4 => "IPV4".into(),
            IPV6 => "IPV6".into(),
            n => format!("link type {n}"),
        }
    }
}

/// Which way a packet crossed the interface it was captured on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Arrived (for this host, a broadcast, or to be forwarded).
    In,
    /// Left (sent by this host, or forwarded).
    Out,
}

/// Where netfilter logged a packet (NFLOG captures): as the queue would have reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Logged {
    pub hook: Hook,
    pub mark: u32,
    pub indev: u32,
    pub outdev: u32,
}

/// What a frame's link layer says about its packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Seen {
    pub dir: Option<Dir>,
    /// The kernel's index of the interface (SLL2).
    pub ifindex: Option<u32>,
    /// Captured on a loopback interface: every packet there is this host's, and appears twice
    /// in a `-i any` capture (leaving, then arriving).
    pub loopback: bool,
    /// The sender's MAC address, for packets that arrived over an Ethernet-like link.
    pub src_mac: Option<[u8; 6]>,
    pub logged: Option<Logged>,
}

/// Why a frame carries no IP packet nfqmark could be given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Skip {
    /// A link type nfqmark does not read.
    Link(u32),
    /// Not IPv4 or IPv6 (ARP, LLDP, ...): never queued by the IP tables.
    NotIp,
    /// The link-layer header is cut short.
    Truncated,
}

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ARPHRD_LOOPBACK: u16 = 772;
const PACKET_OUTGOING: u8 = 4;

fn be16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([*s.first()?, *s.get(1)?]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    let mut a = [0u8; 4];
    a.copy_from_slice(s);
    Some(u32::from_be_bytes(a))
}

fn mac_at(b: &[u8], at: usize) -> Option<[u8; 6]> {
    let s = b.get(at..at.checked_add(6)?)?;
    let mut a = [0u8; 6];
    a.copy_from_slice(s);
    Some(a)
}

/// The IP packet of a frame and what its link layer says. `host_big_endian`: the byte order of
/// the machine that wrote the capture (NFLOG's type-length headers are in it).
pub fn link_layer(link: u32, data: &[u8], host_big_endian: bool) -> Result<(Seen, &[u8]), Skip> {
    let ip_or_skip = |ethertype: u16| match ethertype {
        ETHERTYPE_IPV4 | ETHERTYPE_IPV6 => Ok(()),
        _ => Err(Skip::NotIp),
    };
    match link {
        linktype::ETHERNET => {
            let mut at = 12;
            let mut ethertype = be16(data, at).ok_or(Skip::Truncated)?;
            // Up to two VLAN tags (802.1Q, 802.1ad).
            for _ in 0..2 {
                if ethertype == 0x8100 || ethertype == 0x88a8 {
                    at += 4;
                    ethertype = be16(data, at).ok_or(Skip::Truncated)?;
                }
            }
            ip_or_skip(ethertype)?;
            let seen = Seen {
                src_mac: mac_at(data, 6),
                ..Seen::default()
            };
            Ok((seen, data.get(at + 2..).ok_or(Skip::Truncated)?))
        }
        linktype::RAW | linktype::NULL_RAW | 14 | linktype::IPV4 | linktype::IPV6 => {
            Ok((Seen::default(), data))
        }
        linktype::LINUX_SLL => {
            // packet type, ARPHRD type, address length, 8 bytes of address, protocol.
            let pkttype = be16(data, 0).ok_or(Skip::Truncated)?;
            let hatype = be16(data, 2).ok_or(Skip::Truncated)?;
            let halen = be16(data, 4).ok_or(Skip::Truncated)?;
            let proto = be16(data, 14).ok_or(Skip::Truncated)?;
            ip_or_skip(proto)?;
            let pkttype = u8::try_from(pkttype).unwrap_or(u8::MAX);
            let seen = cooked(pkttype, hatype, halen == 6, mac_at(data, 6), None);
            Ok((seen, data.get(16..).ok_or(Skip::Truncated)?))
        }
        linktype::LINUX_SLL2 => {
            // protocol, reserved, interface index, ARPHRD type, packet type, address length,
            // 8 bytes of address.
            let proto = be16(data, 0).ok_or(Skip::Truncated)?;
            let ifindex = be32(data, 4).ok_or(Skip::Truncated)?;
            let hatype = be16(data, 8).ok_or(Skip::Truncated)?;
            let pkttype = *data.get(10).ok_or(Skip::Truncated)?;
            let halen = *data.get(11).ok_or(Skip::Truncated)?;
            ip_or_skip(proto)?;
            let seen = cooked(pkttype, hatype, halen == 6, mac_at(data, 12), Some(ifindex));
            Ok((seen, data.get(20..).ok_or(Skip::Truncated)?))
        }
        linktype::NFLOG => nflog(data, host_big_endian),
        other => Err(Skip::Link(other)),
    }
}

/// What a Linux cooked header says.
fn cooked(
    pkttype: u8,
    hatype: u16,
    has_mac: bool,
    mac: Option<[u8; 6]>,
    ifindex: Option<u32>,
) -> Seen {
    let dir = match pkttype {
        0..=3 => Some(Dir::In),
        PACKET_OUTGOING => Some(Dir::Out),
        _ => None,
    };
    Seen {
        dir,
        ifindex,
        loopback: hatype == ARPHRD_LOOPBACK,
        // The address is the sender's: ours when leaving, so only kept for arrivals.
        src_mac: mac.filter(|_| has_mac && dir == Some(Dir::In) && hatype != ARPHRD_LOOPBACK),
        logged: None,
    }
}

/// An NFLOG frame: a 4-byte header (family, version, group), then type-length-value
/// attributes whose length and type are in the capturing host's byte order and whose values
/// are in network order, each padded to 4 bytes.
fn nflog(data: &[u8], host_big_endian: bool) -> Result<(Seen, &[u8]), Skip> {
    const PACKET_HDR: u16 = 1;
    const MARK: u16 = 2;
    const INDEV: u16 = 4;
    const OUTDEV: u16 = 5;
    const HWADDR: u16 = 8;
    const PAYLOAD: u16 = 9;
    let family = *data.first().ok_or(Skip::Truncated)?;
    if family != 2 && family != 10 {
        return Err(Skip::NotIp);
    }
    let read16 = |b: &[u8], at: usize| -> Option<u16> {
        let s = b.get(at..at + 2)?;
        let a = [*s.first()?, *s.get(1)?];
        Some(if host_big_endian {
            u16::from_be_bytes(a)
        } else {
            u16::from_le_bytes(a)
        })
    };
    let mut at = 4;
    let mut logged = Logged {
        hook: Hook::Other(u8::MAX),
        mark: 0,
        indev: 0,
        outdev: 0,
    };
    let mut src_mac = None;
    let mut payload = None;
    while at + 4 <= data.len() {
        let len = usize::from(read16(data, at).ok_or(Skip::Truncated)?);
        let kind = read16(data, at + 2).ok_or(Skip::Truncated)? & 0x7fff;
        if len < 4 {
            return Err(Skip::Truncated);
        }
        let value = data.get(at + 4..at + len).ok_or(Skip::Truncated)?;
        match kind {
            PACKET_HDR => {
                let hook = *value.get(2).ok_or(Skip::Truncated)?;
                logged.hook = Hook::from_kernel(hook);
            }
            MARK => logged.mark = be32(value, 0).ok_or(Skip::Truncated)?,
            INDEV => logged.indev = be32(value, 0).ok_or(Skip::Truncated)?,
            OUTDEV => logged.outdev = be32(value, 0).ok_or(Skip::Truncated)?,
            HWADDR if be16(value, 0) == Some(6) => src_mac = mac_at(value, 4),
            PAYLOAD => payload = Some(value),
            _ => {}
        }
        // Values are padded to 4 bytes.
        at = at.saturating_add(len.div_ceil(4) * 4);
    }
    let payload = payload.ok_or(Skip::Truncated)?;
    let seen = Seen {
        dir: None,
        ifindex: None,
        loopback: false,
        src_mac: src_mac.filter(|_| logged.indev != 0),
        logged: Some(logged),
    };
    Ok((seen, payload))
}

// ---------------------------------------------------------------------------------------------
// Reading capture files: the only I/O of this module.
// ---------------------------------------------------------------------------------------------

/// One captured frame.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    /// When it was captured, since the Unix epoch.
    pub ts: Duration,
    pub link: u32,
    pub data: &'a [u8],
    /// pcapng: the interface's number in its section, and its name when recorded.
    pub iface: Option<(u32, Option<&'a str>)>,
    /// pcapng: the direction from the packet's flags, when recorded.
    pub flags_dir: Option<Dir>,
    /// The capturing host's byte order, as the file says.
    pub big_endian: bool,
}

/// What reading a capture found, besides its frames.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaptureInfo {
    /// "pcap" or "pcapng".
    pub format: &'static str,
    /// Link types seen, in order of first appearance.
    pub links: Vec<u32>,
    pub frames: u64,
    /// The file ends in the middle of a block (a capture still being written, or cut).
    pub cut: bool,
}

/// A capture that cannot be read.
#[derive(Debug)]
pub enum CaptureError {
    Open(io::Error),
    /// Not a pcap or pcapng file, or a block that does not parse.
    Format(String),
}

impl fmt::Display for CaptureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CaptureError::Open(e) => write!(f, "cannot read the capture: {e}"),
            CaptureError::Format(e) => write!(f, "{e}"),
        }
    }
}

/// Largest block read: a frame of the largest snapshot length tcpdump takes (256 KiB) fits
/// many times; a block claiming more is refused instead of growing the buffer without end.
const MAX_BLOCK: usize = 16 << 20;

/// An interface of a pcapng section.
#[derive(Debug, Clone)]
struct NgIface {
    link: u32,
    name: Option<String>,
    /// Timestamp units per second.
    units: u64,
    /// Seconds added to every timestamp.
    offset: i64,
}

/// Units per second from a pcapng `if_tsresol`: 10^n, or 2^n when the top bit is set; `None`
/// when out of range.
fn ts_units(tsresol: u8) -> Option<u64> {
    if tsresol & 0x80 == 0 {
        10u64.checked_pow(u32::from(tsresol))
    } else {
        1u64.checked_shl(u32::from(tsresol & 0x7f))
    }
}

/// A pcapng timestamp as time since the epoch; `None` when it does not fit.
fn ng_time(high: u32, low: u32, units: u64, offset: i64) -> Option<Duration> {
    let ticks = (u64::from(high) << 32) | u64::from(low);
    let units = units.max(1);
    let secs = (ticks / units).checked_add_signed(offset)?;
    let nanos = u128::from(ticks % units) * 1_000_000_000 / u128::from(units);
    Some(Duration::new(secs, u32::try_from(nanos).ok()?))
}

/// The pcapng direction flag (epb_flags, bits 0-1: 1 inbound, 2 outbound).
fn epb_dir(epb: &pcap_parser::pcapng::EnhancedPacketBlock<'_>) -> Option<Dir> {
    let flags = epb.options.iter().find(|o| o.code.0 == 2)?;
    let v = flags.value();
    let bytes: [u8; 4] = v.get(..4)?.try_into().ok()?;
    let word = if epb.big_endian() {
        u32::from_be_bytes(bytes)
    } else {
        u32::from_le_bytes(bytes)
    };
    match word & 3 {
        1 => Some(Dir::In),
        2 => Some(Dir::Out),
        _ => None,
    }
}

/// Read a pcap or pcapng file, calling `each` for every frame in file order. A file that ends
/// inside a block (a capture still being written) ends the frames and sets [`CaptureInfo::cut`].
pub fn read_capture(
    path: &Path,
    each: &mut dyn FnMut(&Frame<'_>),
) -> Result<CaptureInfo, CaptureError> {
    let file = std::fs::File::open(path).map_err(CaptureError::Open)?;
    read_capture_from(&path.display().to_string(), file, each)
}

/// [`read_capture`] from any reader; `name` names it in errors.
pub fn read_capture_from<R: io::Read + Send>(
    name: &str,
    input: R,
    each: &mut dyn FnMut(&Frame<'_>),
) -> Result<CaptureInfo, CaptureError> {
    let mut capacity = 1 << 16;
    let not_capture = |e: &dyn fmt::Debug| {
        CaptureError::Format(format!(
            "{}: not a pcap or pcapng capture ({e:?}); write one with tcpdump -w FILE",
            name
        ))
    };
    let mut reader = match pcap_parser::create_reader(capacity, input) {
        Ok(r) => r,
        Err(PcapError::Eof) => {
            return Err(CaptureError::Format(format!("{}: the file is empty", name)));
        }
        Err(e) => return Err(not_capture(&e)),
    };
    let mut info = CaptureInfo::default();
    let mut legacy: Option<(u32, bool, bool)> = None; // (link, nanoseconds, big endian)
    let mut ifaces: Vec<NgIface> = Vec::new();
    let mut ng_big_endian = false;
    let mut last_ts = Duration::ZERO;
    let note_link = |info: &mut CaptureInfo, link: u32| {
        if !info.links.contains(&link) {
            info.links.push(link);
        }
    };
    loop {
        match reader.next() {
            Ok((offset, block)) => {
                match block {
                    PcapBlockOwned::LegacyHeader(h) => {
                        info.format = "pcap";
                        let link = u32::try_from(h.network.0).unwrap_or(u32::MAX);
                        legacy = Some((link, h.is_nanosecond_precision(), h.is_bigendian()));
                        note_link(&mut info, link);
                    }
                    PcapBlockOwned::Legacy(b) => {
                        let (link, nanos, big_endian) =
                            legacy.unwrap_or((linktype::ETHERNET, false, false));
                        let frac = if nanos {
                            b.ts_usec.min(999_999_999)
                        } else {
                            b.ts_usec.min(999_999).saturating_mul(1000)
                        };
                        let ts = Duration::new(u64::from(b.ts_sec), frac);
                        last_ts = ts;
                        info.frames += 1;
                        each(&Frame {
                            ts,
                            link,
                            data: b.data,
                            iface: None,
                            flags_dir: None,
                            big_endian,
                        });
                    }
                    PcapBlockOwned::NG(Block::SectionHeader(shb)) => {
                        info.format = "pcapng";
                        ifaces.clear();
                        ng_big_endian = shb.big_endian();
                    }
                    PcapBlockOwned::NG(Block::InterfaceDescription(idb)) => {
                        let link = u32::try_from(idb.linktype.0).unwrap_or(u32::MAX);
                        note_link(&mut info, link);
                        ifaces.push(NgIface {
                            link,
                            name: idb.if_name().and_then(Result::ok).map(str::to_string),
                            units: ts_units(idb.if_tsresol).unwrap_or(1_000_000),
                            offset: idb.if_tsoffset,
                        });
                    }
                    PcapBlockOwned::NG(Block::EnhancedPacket(epb)) => {
                        let iface = ifaces.get(usize::try_from(epb.if_id).unwrap_or(usize::MAX));
                        let (link, units, offset, name) = match iface {
                            Some(i) => (i.link, i.units, i.offset, i.name.as_deref()),
                            None => (u32::MAX, 1_000_000, 0, None),
                        };
                        let ts = ng_time(epb.ts_high, epb.ts_low, units, offset).unwrap_or(last_ts);
                        last_ts = ts;
                        info.frames += 1;
                        each(&Frame {
                            ts,
                            link,
                            data: epb.packet_data(),
                            iface: Some((epb.if_id, name)),
                            flags_dir: epb_dir(&epb),
                            big_endian: ng_big_endian,
                        });
                    }
                    PcapBlockOwned::NG(Block::SimplePacket(spb)) => {
                        let (link, name) = ifaces
                            .first()
                            .map_or((u32::MAX, None), |i| (i.link, i.name.as_deref()));
                        info.frames += 1;
                        each(&Frame {
                            ts: last_ts,
                            link,
                            data: spb.packet_data(),
                            iface: Some((0, name)),
                            flags_dir: None,
                            big_endian: ng_big_endian,
                        });
                    }
                    PcapBlockOwned::NG(_) => {}
                }
                reader.consume(offset);
            }
            Err(PcapError::Eof) => break,
            Err(PcapError::Incomplete(_)) => {
                if reader.reader_exhausted() {
                    info.cut = true;
                    break;
                }
                reader
                    .refill()
                    .map_err(|e| CaptureError::Format(format!("{}: read error: {e:?}", name)))?;
            }
            Err(PcapError::UnexpectedEof) => {
                info.cut = true;
                break;
            }
            Err(PcapError::BufferTooSmall) => {
                if capacity >= MAX_BLOCK {
                    return Err(CaptureError::Format(format!(
                        "{}: a block of more than {} MiB at byte {}: not a capture nfqmark reads",
                        name,
                        MAX_BLOCK >> 20,
                        reader.consumed()
                    )));
                }
                capacity *= 4;
                reader.grow(capacity);
                reader
                    .refill()
                    .map_err(|e| CaptureError::Format(format!("{}: read error: {e:?}", name)))?;
            }
            Err(e) => {
                let what = format!("{e:?}");
                return Err(CaptureError::Format(format!(
                    "{}: unreadable block at byte {} ({what}); the file may be damaged",
                    name,
                    reader.consumed()
                )));
            }
        }
    }
    Ok(info)
}

// ---------------------------------------------------------------------------------------------
// The model: router addresses, the hook guess, connection marks. Pure, bounded.
// ---------------------------------------------------------------------------------------------

/// An address prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    /// The prefix a `--client-mark` names.
    pub fn of(m: &crate::cli::ClientMark) -> Prefix {
        Prefix {
            addr: m.addr,
            len: m.len,
        }
    }

    /// `198.18.1.2`, `198.18.1.0/24`, `2001:db8:1::/64`.
    pub fn parse(s: &str) -> Option<Prefix> {
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match l {
            Some(l) => l.trim().parse::<u8>().ok().filter(|&l| l <= max)?,
            None => max,
        };
        Some(Prefix { addr, len })
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

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// Most addresses the router-address inference keeps per list.
const GUESS_CAP: usize = 65_536;

/// Infers the router's addresses from a capture that says which way packets went: addresses
/// that are the source of packets leaving and never the source of packets arriving (other
/// than over loopback). A forwarded client's address arrives first; an upstream server's
/// answers arrive; the router's own addresses (and an address it answers for after DNAT) only
/// ever leave.
#[derive(Debug, Default)]
pub struct LocalGuess {
    leaving: HashSet<IpAddr>,
    arriving: HashSet<IpAddr>,
    /// Some frame said which way it went.
    pub directed: bool,
    /// A list reached [`GUESS_CAP`]: the guess may be incomplete.
    pub full: bool,
}

impl LocalGuess {
    pub fn see(&mut self, seen: &Seen, src: IpAddr) {
        let Some(dir) = seen.dir else { return };
        self.directed = true;
        let set = match (dir, seen.loopback) {
            (Dir::Out, _) => &mut self.leaving,
            (Dir::In, false) => &mut self.arriving,
            (Dir::In, true) => return,
        };
        if set.len() < GUESS_CAP {
            set.insert(src);
        } else {
            self.full = true;
        }
    }

    /// The addresses judged the router's, sorted.
    pub fn addresses(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self.leaving.difference(&self.arriving).copied().collect();
        v.sort_unstable();
        v
    }
}

/// Where a packet was placed: the hook guess.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guess {
    /// Arriving for a router address.
    Input,
    /// Leaving from a router address.
    Output,
    /// Arriving for another host.
    Forward,
    /// The first packet of a new connection arriving (flow rules).
    PreRouting,
    /// A forwarded packet seen leaving, already decided when it arrived.
    ForwardedOut,
    /// Where netfilter logged it (NFLOG capture).
    Logged(Hook),
    /// `--hook`: every packet at this hook.
    Fixed(Hook),
}

/// The hook's name as the rules write it.
pub fn hook_name(h: Hook) -> String {
    match h {
        Hook::PreRouting => "prerouting".into(),
        Hook::Input => "input".into(),
        Hook::Forward => "forward".into(),
        Hook::Output => "output".into(),
        Hook::PostRouting => "postrouting".into(),
        Hook::Other(n) => format!("hook{n}"),
    }
}

impl fmt::Display for Guess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Guess::Input => f.write_str("input"),
            Guess::Output => f.write_str("output"),
            Guess::Forward => f.write_str("forward"),
            Guess::PreRouting => f.write_str("prerouting"),
            Guess::ForwardedOut => f.write_str("fwd-out"),
            Guess::Logged(h) => write!(f, "{}", hook_name(*h)),
            Guess::Fixed(h) => write!(f, "{}", hook_name(*h)),
        }
    }
}

/// A connection as the capture shows it: protocol and both ends, the lower end first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct CtKey {
    proto: u8,
    lo: SocketAddr,
    hi: SocketAddr,
}

impl CtKey {
    fn of(p: &Packet<'_>) -> CtKey {
        let a = SocketAddr::new(p.src, p.sport);
        let b = SocketAddr::new(p.dst, p.dport);
        let proto = match p.proto {
            Proto::Tcp => 6,
            Proto::Udp => 17,
            _ => 0,
        };
        CtKey {
            proto,
            lo: a.min(b),
            hi: a.max(b),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct CtEntry {
    mark: u32,
    seen: Instant,
}

/// Connection marks, bounded: the oldest connection goes when full; an idle one is forgotten
/// after conntrack's timeouts (UDP 30 s, others 10 min here: DNS over TCP rarely idles longer).
#[derive(Debug)]
struct Conntrack {
    map: HashMap<CtKey, CtEntry>,
    order: VecDeque<CtKey>,
    cap: usize,
}

impl Conntrack {
    fn new(cap: usize) -> Conntrack {
        Conntrack {
            map: HashMap::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    /// The connection's mark and whether this packet starts it.
    fn touch(&mut self, key: CtKey, now: Instant) -> (u32, bool) {
        let idle = if key.proto == 17 {
            Duration::from_secs(30)
        } else {
            Duration::from_secs(600)
        };
        if let Some(e) = self.map.get_mut(&key) {
            let fresh = now.saturating_duration_since(e.seen) <= idle;
            e.seen = now;
            if fresh {
                return (e.mark, false);
            }
            e.mark = 0;
            return (0, true);
        }
        while self.map.len() >= self.cap {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
        self.map.insert(key, CtEntry { mark: 0, seen: now });
        self.order.push_back(key);
        (0, true)
    }

    fn mark(&self, key: &CtKey) -> u32 {
        self.map.get(key).map_or(0, |e| e.mark)
    }

    fn save(&mut self, key: &CtKey, mark: u32, mask: u32) {
        if let Some(e) = self.map.get_mut(key) {
            e.mark = apply_mask(e.mark, mark, mask);
        }
    }
}

/// Forwarded packets seen arriving, so the same packet seen leaving (after NAT, on another
/// interface) is known for what it is. Keyed by what NAT does not change (protocol, TCP
/// sequence and flags, payload); kept two seconds, bounded.
#[derive(Debug)]
struct Forwarded {
    /// Fingerprint -> (records alive, records taken but not yet expired).
    live: HashMap<u64, (u32, u32)>,
    order: VecDeque<(Instant, u64)>,
    cap: usize,
}

const FORWARD_KEEP: Duration = Duration::from_secs(2);

impl Forwarded {
    fn new(cap: usize) -> Forwarded {
        Forwarded {
            live: HashMap::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    fn fingerprint(p: &Packet<'_>, len: usize) -> u64 {
        let mut h = foldhash::quality::FixedState::with_seed(0x6e66_716d).build_hasher();
        CtKey::of(p).proto.hash(&mut h);
        p.seq.hash(&mut h);
        (p.tcp.syn, p.tcp.ack, p.tcp.fin, p.tcp.rst).hash(&mut h);
        len.hash(&mut h);
        p.payload.hash(&mut h);
        h.finish()
    }

    fn expire_one(&mut self) {
        if let Some((_, fp)) = self.order.pop_front()
            && let Some(v) = self.live.get_mut(&fp)
        {
            if v.1 > 0 {
                v.1 -= 1;
            } else {
                v.0 = v.0.saturating_sub(1);
            }
            if *v == (0, 0) {
                self.live.remove(&fp);
            }
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(t, _)) = self.order.front() {
            if now.saturating_duration_since(t) <= FORWARD_KEEP {
                break;
            }
            self.expire_one();
        }
    }

    fn record(&mut self, fp: u64, now: Instant) {
        self.expire(now);
        if self.order.len() >= self.cap {
            self.expire_one();
        }
        self.order.push_back((now, fp));
        self.live.entry(fp).or_insert((0, 0)).0 += 1;
    }

    /// True when a forwarded packet with this fingerprint arrived lately (and is now taken).
    fn take(&mut self, fp: u64, now: Instant) -> bool {
        self.expire(now);
        match self.live.get_mut(&fp) {
            Some(v) if v.0 > 0 => {
                v.0 -= 1;
                v.1 += 1;
                true
            }
            _ => false,
        }
    }
}

/// How replay models the router: from the command line, and fixed during a replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelConfig {
    /// The router's addresses (given, or inferred from the capture).
    pub locals: Vec<IpAddr>,
    /// `--hook`: every packet queued at this hook.
    pub hook: Option<Hook>,
    /// The marks your PREROUTING rules give clients' packets (`--client-mark`).
    pub client_marks: Vec<(Prefix, u32)>,
    /// `--mark-mask`.
    pub mask: u32,
    pub dns_ports: Vec<u16>,
    /// The rules have flow rules: `nfqmark setup` then queues DNS at FORWARD and new flows at
    /// PREROUTING.
    pub flow_rules: bool,
    /// `--conntrack-info`: the queue reports each packet's connection (mark, first packet).
    pub conntrack_info: bool,
    /// `--copy-range`: bytes of each packet the queue copies.
    pub copy_range: usize,
}

/// Where and how a packet reaches nfqmark, from the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    pub guess: Guess,
    /// Whether `nfqmark setup`'s rules queue it there.
    pub queued: bool,
    pub meta: Meta,
}

/// The model's state: connection marks and recently forwarded packets.
#[derive(Debug)]
pub struct Model {
    config: ModelConfig,
    locals: HashSet<IpAddr>,
    ct: Conntrack,
    forwarded: Forwarded,
}

impl Model {
    pub fn new(config: ModelConfig) -> Model {
        Model {
            locals: config.locals.iter().copied().collect(),
            config,
            ct: Conntrack::new(65_536),
            forwarded: Forwarded::new(65_536),
        }
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn client_mark(&self, src: IpAddr) -> Option<u32> {
        self.config
            .client_marks
            .iter()
            .find(|(p, _)| p.contains(src))
            .map(|(_, m)| *m)
    }

    fn dns(&self, p: &Packet<'_>) -> bool {
        matches!(p.proto, Proto::Udp | Proto::Tcp)
            && (self.config.dns_ports.contains(&p.sport)
                || self.config.dns_ports.contains(&p.dport))
    }

    /// Place a packet: its hook, whether it is queued there, and the metadata the queue would
    /// report. `ifindex` is the interface it was captured on (0 when unknown). Updates the
    /// connection model up to the queue; [`Model::after`] does the rest with the final mark.
    pub fn place(
        &mut self,
        seen: &Seen,
        ifindex: u32,
        p: &Packet<'_>,
        len: usize,
        now: Instant,
    ) -> Placed {
        let key = CtKey::of(p);
        let (ct_mark, first) = self.ct.touch(key, now);
        let conn = |mark: u32| self.config.conntrack_info.then_some(Conn { mark, first });
        if let Some(l) = seen.logged {
            let mut meta = Meta::new(l.hook, l.mark, l.indev, l.outdev);
            meta.src_mac = seen.src_mac;
            meta.conn = conn(ct_mark);
            let guess = match self.config.hook {
                Some(h) => {
                    meta.hook = h;
                    Guess::Fixed(h)
                }
                None => Guess::Logged(l.hook),
            };
            return Placed {
                guess,
                queued: true,
                meta,
            };
        }
        let local_src = seen.loopback || self.locals.contains(&p.src);
        let local_dst = seen.loopback || self.locals.contains(&p.dst);
        let dir = seen.dir.unwrap_or(if local_src && !local_dst {
            Dir::Out
        } else {
            Dir::In
        });
        let dns = self.dns(p);
        let dns_query_port = self.config.dns_ports.contains(&p.dport);
        let (guess, queued, meta) = match dir {
            Dir::In => {
                // PREROUTING: restore the connection's mark, give a client its mark, save.
                let mut mark = ct_mark;
                if mark == 0
                    && let Some(m) = self.client_mark(p.src)
                {
                    mark = m;
                    self.ct.save(&key, m, u32::MAX);
                }
                let through = !local_dst;
                if through {
                    self.forwarded.record(Forwarded::fingerprint(p, len), now);
                }
                let new_flow = self.config.flow_rules
                    && first
                    && !dns_query_port
                    && matches!(p.proto, Proto::Udp | Proto::Tcp);
                let (guess, queued) = if new_flow {
                    (Guess::PreRouting, true)
                } else if through {
                    (Guess::Forward, dns && self.config.flow_rules)
                } else {
                    (Guess::Input, dns)
                };
                let hook = match guess {
                    Guess::PreRouting => Hook::PreRouting,
                    Guess::Forward => Hook::Forward,
                    _ => Hook::Input,
                };
                let mut meta = Meta::new(hook, mark, ifindex, 0);
                meta.src_mac = seen.src_mac;
                meta.conn = conn(self.ct.mark(&key));
                (guess, queued, meta)
            }
            Dir::Out => {
                if !seen.loopback && self.forwarded.take(Forwarded::fingerprint(p, len), now) {
                    let meta = Meta::new(Hook::PostRouting, ct_mark, 0, ifindex);
                    (Guess::ForwardedOut, false, meta)
                } else if local_src {
                    // The resolver's UDP queries are queued in the raw table, before
                    // conntrack: the queue reports no connection for them.
                    let raw = p.proto == Proto::Udp && dns_query_port;
                    let mut meta = Meta::new(Hook::Output, 0, 0, ifindex);
                    meta.conn = if raw { None } else { conn(ct_mark) };
                    (Guess::Output, dns, meta)
                } else {
                    // A forwarded packet whose arrival the capture did not see.
                    let meta = Meta::new(Hook::Forward, ct_mark, 0, ifindex);
                    (Guess::Forward, dns && self.config.flow_rules, meta)
                }
            }
        };
        match self.config.hook {
            Some(h) => {
                let mut meta = meta;
                meta.hook = h;
                Placed {
                    guess: Guess::Fixed(h),
                    queued: true,
                    meta,
                }
            }
            None => Placed {
                guess,
                queued,
                meta,
            },
        }
    }

    /// After the verdict: the mark the packet leaves with, once the rest of the recipe ran
    /// (OUTPUT restores the connection's mark into a packet that has none under the mask;
    /// POSTROUTING saves a mark under the mask), and the connection updated.
    pub fn after(&mut self, placed: &Placed, p: &Packet<'_>, mark: u32) -> u32 {
        let key = CtKey::of(p);
        let mask = self.config.mask;
        match placed.guess {
            Guess::Output => {
                let mut mark = mark;
                if mark & mask == 0 {
                    mark = apply_mask(mark, self.ct.mark(&key), mask);
                }
                if mark & mask != 0 {
                    self.ct.save(&key, mark, mask);
                }
                mark
            }
            Guess::Forward | Guess::PreRouting | Guess::ForwardedOut => {
                // Forwarded packets pass POSTROUTING.
                if mark & mask != 0 && placed.meta.hook != Hook::Input {
                    self.ct.save(&key, mark, mask);
                }
                mark
            }
            _ => mark,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The replay: frames -> model -> the daemon's decision path -> rows.
// ---------------------------------------------------------------------------------------------

/// Most passes of one packet through its hook when the rules say `repeat` again and again (the
/// kernel would queue it each time; replay stops and says so).
const MAX_PASSES: u8 = 4;

/// One row of the output: a packet and what nfqmark did with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Since the epoch, and since the capture's first frame.
    pub ts: Duration,
    pub rel: Duration,
    pub guess: Guess,
    pub queued: bool,
    /// The interfaces, by name where known.
    pub indev: Option<String>,
    pub outdev: Option<String>,
    pub proto: Proto,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// The DNS message's question, as read from the packet.
    pub question: Option<QuestionText>,
    /// The rule that matched (FILE:LINE).
    pub rule: Option<String>,
    pub decision: Option<Decision>,
    /// The mark when queued, and the mark the packet leaves with.
    pub mark_in: u32,
    pub mark_out: u32,
    pub passes: u8,
}

/// Counters of frames that never reached the model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Skipped {
    pub link: u64,
    pub not_ip: u64,
    pub truncated: u64,
    pub unparsed: u64,
}

/// A replay in progress: the daemon's shared state (tables, counters, rules) and the model.
#[derive(Debug)]
pub struct Replayer {
    shared: Shared,
    loaded: Arc<Loaded>,
    model: Model,
    links: LinkMap,
    base: Instant,
    first: Option<Duration>,
    now: Instant,
    pub skipped: Skipped,
    pub queued: u64,
    pub not_queued: u64,
    /// Packets seen leaving after they were decided arriving.
    pub forwarded_out: u64,
    /// Packets whose rules said `repeat` more than [`MAX_PASSES`] times.
    pub repeat_loops: u64,
}

/// First interface index replay gives a pcapng interface that has no kernel index of its own
/// (its number in the file is added): far from any index a kernel gives.
pub const PCAPNG_IFINDEX_BASE: u32 = 1 << 24;

impl Replayer {
    pub fn new(shared: Shared, model: Model, links: LinkMap) -> Replayer {
        let loaded = shared.rules();
        loaded.rules.bind(&links);
        let base = Instant::now();
        Replayer {
            shared,
            loaded,
            model,
            links,
            base,
            first: None,
            now: base,
            skipped: Skipped::default(),
            queued: 0,
            not_queued: 0,
            forwarded_out: 0,
            repeat_loops: 0,
        }
    }

    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    pub fn rules(&self) -> &RuleSet {
        &self.loaded.rules
    }

    /// Name an interface (an index the capture uses); the rules follow the new name.
    pub fn name_interface(&mut self, index: u32, name: &str) {
        let changed = self.links.apply(&LinkEvent::New {
            index,
            name: name.to_string(),
        });
        if changed {
            self.loaded.rules.bind(&self.links);
        }
    }

    fn iface_name(&self, index: u32) -> Option<String> {
        if index == 0 {
            return None;
        }
        Some(match self.links.name(index) {
            Some(n) => n.to_string(),
            None => format!("if{index}"),
        })
    }

    /// The capture's time as an instant: time never runs backwards (a frame stamped earlier
    /// than the one before is taken at the same time).
    fn instant(&mut self, ts: Duration) -> (Instant, Duration) {
        let first = *self.first.get_or_insert(ts);
        let rel = ts.saturating_sub(first);
        if let Some(t) = self.base.checked_add(rel)
            && t > self.now
        {
            self.now = t;
        }
        (self.now, rel)
    }

    /// Replay one frame; a row for every packet with an IP header.
    pub fn frame(&mut self, frame: &Frame<'_>) -> Option<Row> {
        let (seen, ip) = match link_layer(frame.link, frame.data, frame.big_endian) {
            Ok(x) => x,
            Err(Skip::Link(_)) => {
                self.skipped.link += 1;
                return None;
            }
            Err(Skip::NotIp) => {
                self.skipped.not_ip += 1;
                return None;
            }
            Err(Skip::Truncated) => {
                self.skipped.truncated += 1;
                return None;
            }
        };
        let mut seen = seen;
        if seen.dir.is_none() {
            seen.dir = frame.flags_dir;
        }
        let ifindex = match (seen.ifindex, frame.iface) {
            (Some(i), _) => i,
            (None, Some((n, name))) => {
                let index = PCAPNG_IFINDEX_BASE.saturating_add(n);
                if let Some(name) = name
                    && self.links.name(index) != Some(name)
                {
                    self.name_interface(index, name);
                }
                index
            }
            (None, None) => 0,
        };
        let (now, rel) = self.instant(frame.ts);
        self.packet(frame.ts, rel, now, &seen, ifindex, ip)
    }

    /// Replay one IP packet.
    pub fn packet(
        &mut self,
        ts: Duration,
        rel: Duration,
        now: Instant,
        seen: &Seen,
        ifindex: u32,
        ip: &[u8],
    ) -> Option<Row> {
        let Ok(p) = packet::parse(ip) else {
            self.skipped.unparsed += 1;
            return None;
        };
        let placed = self.model.place(seen, ifindex, &p, ip.len(), now);
        let mut row = Row {
            ts,
            rel,
            guess: placed.guess,
            queued: placed.queued,
            indev: self.iface_name(placed.meta.indev),
            outdev: self.iface_name(placed.meta.outdev),
            proto: p.proto,
            src: SocketAddr::new(p.src, p.sport),
            dst: SocketAddr::new(p.dst, p.dport),
            question: question(&p, &self.model.config.dns_ports),
            rule: None,
            decision: None,
            mark_in: placed.meta.mark,
            mark_out: placed.meta.mark,
            passes: 0,
        };
        if placed.guess == Guess::ForwardedOut {
            self.forwarded_out += 1;
        }
        if !placed.queued {
            self.not_queued += 1;
            row.mark_out = self.model.after(&placed, &p, placed.meta.mark);
            return Some(row);
        }
        self.queued += 1;
        let copy = ip.get(..self.model.config.copy_range).unwrap_or(ip);
        let stats = self.shared.queues.first().map(|q| &q.stats);
        let mut meta = placed.meta;
        let mut decision;
        loop {
            decision = engine::decide(
                &self.shared.config,
                &self.loaded.rules,
                &mut lock(&self.shared.tables),
                &meta,
                copy,
                now,
            );
            row.passes += 1;
            if let Some(stats) = stats {
                stats.count(&decision);
            }
            if let Some(rule) = decision.rule {
                if let Some(c) = self.loaded.matches.get(rule) {
                    c.inc();
                }
                if decision.mark.is_some()
                    && let Some(c) = self.loaded.marks.get(rule)
                {
                    c.inc();
                }
            }
            if let Some(m) = decision.mark {
                meta.mark = m;
            }
            if decision.verdict != Verdict::Repeat {
                break;
            }
            if row.passes >= MAX_PASSES {
                self.repeat_loops += 1;
                break;
            }
        }
        row.rule = decision.rule.and_then(|r| self.loaded.rules.describe(r));
        row.decision = Some(decision);
        row.mark_out = if decision.verdict == Verdict::Drop {
            meta.mark
        } else {
            self.model.after(&placed, &p, meta.mark)
        };
        Some(row)
    }

    /// The daemon's counters line, as `kill -USR1` logs it, for what was replayed.
    pub fn counters(&self) -> String {
        crate::daemon::report(&self.shared)
    }

    /// Replay's own counters: what never reached the decision path, and why.
    pub fn replay_counters(&self) -> String {
        format!(
            "queued={} not_queued={} forwarded_out={} repeat_loops={} skipped_link={} \
             skipped_not_ip={} skipped_truncated={} skipped_unparsed={}",
            self.queued,
            self.not_queued,
            self.forwarded_out,
            self.repeat_loops,
            self.skipped.link,
            self.skipped.not_ip,
            self.skipped.truncated,
            self.skipped.unparsed
        )
    }
}

/// The question of a DNS message, for the output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuestionText {
    /// Lower case, with the trailing dot.
    pub name: String,
    pub qtype: String,
    pub answer: bool,
    pub id: u16,
}

/// The DNS question of a packet to or from a DNS port (the first message of a TCP segment).
fn question(p: &Packet<'_>, ports: &[u16]) -> Option<QuestionText> {
    if !ports.contains(&p.sport) && !ports.contains(&p.dport) {
        return None;
    }
    let dns = match p.proto {
        Proto::Udp => crate::dns::parse_udp(p.payload).ok()?,
        Proto::Tcp if !p.payload.is_empty() => crate::dns::parse_tcp(p.payload).ok()?,
        _ => return None,
    };
    let q = dns.question.as_ref()?;
    let qtype = crate::dns::rtype::Show(q.qtype()).to_string();
    Some(QuestionText {
        name: q.name().to_string(),
        qtype,
        answer: dns.response,
        id: dns.id,
    })
}

// ---------------------------------------------------------------------------------------------
// Output.
// ---------------------------------------------------------------------------------------------

/// The role as a short word, and whether the packet found its partner.
pub fn role_text(role: Role) -> (&'static str, Option<bool>) {
    match role {
        Role::NotPaired => ("-", None),
        Role::ClientQuery => ("client-query", None),
        Role::UpstreamQuery {
            paired: true,
            ambiguous: true,
        } => ("upstream-query-ambiguous", Some(true)),
        Role::UpstreamQuery { paired, .. } => ("upstream-query", Some(paired)),
        Role::UpstreamAnswer { paired } => ("upstream-answer", Some(paired)),
        Role::ClientAnswer { paired } => ("client-answer", Some(paired)),
        Role::TcpOpen { paired } => ("tcp-open", Some(paired)),
        Role::FlowMarked => ("flow-marked", None),
    }
}

fn verdict_text(v: Verdict) -> &'static str {
    match v {
        Verdict::Accept => "accept",
        Verdict::Drop => "drop",
        Verdict::Repeat => "repeat",
    }
}

fn class_text(c: Class) -> &'static str {
    match c {
        Class::Unparsed => "unparsed",
        Class::NotDns => "not-dns",
        Class::Dns => "dns",
        Class::DnsError => "dns-error",
        Class::BadChecksum => "bad-checksum",
    }
}

fn proto_text(p: Proto) -> String {
    p.to_string().to_lowercase()
}

/// The header of the table.
pub fn table_header() -> String {
    format!(
        "{:>12}  {:<11} {:<9} {:<52} {:<34} {:<14} {:<7} {:<17} {}",
        "time", "hook", "iface", "flow", "dns", "rule", "verdict", "mark", "pairing"
    )
}

/// One table line.
pub fn table_line(r: &Row) -> String {
    let iface = match (&r.indev, &r.outdev) {
        (Some(i), None) => i.clone(),
        (None, Some(o)) => format!(">{o}"),
        (Some(i), Some(o)) => format!("{i}>{o}"),
        (None, None) => "-".into(),
    };
    let flow = format!("{} {} > {}", proto_text(r.proto), r.src, r.dst);
    let dns = match &r.question {
        Some(q) => format!(
            "{}{} {}",
            if q.answer { "ans " } else { "" },
            q.name,
            q.qtype
        ),
        None => "-".into(),
    };
    let (verdict, pairing) = match &r.decision {
        Some(d) => {
            let (role, paired) = role_text(d.role);
            let mut p = role.to_string();
            match paired {
                Some(true) => p.push_str(" paired"),
                Some(false) => p.push_str(" unpaired"),
                None => {}
            }
            if d.conflicts > 0 {
                let _ = write!(p, " conflicts={}", d.conflicts);
            }
            if d.learned > 0 {
                let _ = write!(p, " learned={}", d.learned);
            }
            let mut v = verdict_text(d.verdict).to_string();
            if r.passes > 1 {
                let _ = write!(v, "x{}", r.passes);
            }
            (v, p)
        }
        None => ("-".into(), "not queued".into()),
    };
    let mark = if r.mark_in == r.mark_out {
        format!("{:#x}", r.mark_out)
    } else {
        format!("{:#x}->{:#x}", r.mark_in, r.mark_out)
    };
    format!(
        "{:>12}  {:<11} {:<9} {:<52} {:<34} {:<14} {:<7} {:<17} {}",
        format!("{}.{:06}", r.rel.as_secs(), r.rel.subsec_micros()),
        r.guess.to_string(),
        iface,
        flow,
        dns,
        r.rule.as_deref().unwrap_or("-"),
        verdict,
        mark,
        pairing
    )
}

/// `s` as a JSON string.
pub fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn json_opt(s: Option<&str>) -> String {
    s.map_or_else(|| "null".to_string(), json_str)
}

/// One JSON line (an object) for a row.
pub fn json_line(r: &Row) -> String {
    let mut o = String::with_capacity(384);
    let _ = write!(
        o,
        "{{\"time\":{}.{:09},\"rel\":{}.{:09},\"hook\":{},\"queued\":{},\"in\":{},\"out\":{},\
         \"proto\":{},\"src\":{},\"sport\":{},\"dst\":{},\"dport\":{}",
        r.ts.as_secs(),
        r.ts.subsec_nanos(),
        r.rel.as_secs(),
        r.rel.subsec_nanos(),
        json_str(&r.guess.to_string()),
        r.queued,
        json_opt(r.indev.as_deref()),
        json_opt(r.outdev.as_deref()),
        json_str(&proto_text(r.proto)),
        json_str(&r.src.ip().to_string()),
        r.src.port(),
        json_str(&r.dst.ip().to_string()),
        r.dst.port()
    );
    match &r.question {
        Some(q) => {
            let _ = write!(
                o,
                ",\"qname\":{},\"qtype\":{},\"answer\":{},\"id\":{}",
                json_str(&q.name),
                json_str(&q.qtype),
                q.answer,
                q.id
            );
        }
        None => o.push_str(",\"qname\":null,\"qtype\":null,\"answer\":null,\"id\":null"),
    }
    let _ = write!(
        o,
        ",\"rule\":{},\"mark_in\":{},\"mark\":{}",
        json_opt(r.rule.as_deref()),
        r.mark_in,
        r.mark_out
    );
    match &r.decision {
        Some(d) => {
            let (role, paired) = role_text(d.role);
            let paired = paired.map_or_else(|| "null".to_string(), |b| b.to_string());
            let _ = write!(
                o,
                ",\"verdict\":{},\"set_mark\":{},\"class\":{},\"role\":{},\"paired\":{paired},\
                 \"conflicts\":{},\"learned\":{},\"passes\":{}}}",
                json_str(verdict_text(d.verdict)),
                d.mark.map_or_else(|| "null".to_string(), |m| m.to_string()),
                json_str(class_text(d.class)),
                json_str(role),
                d.conflicts,
                d.learned,
                r.passes
            );
        }
        None => o.push_str(
            ",\"verdict\":null,\"set_mark\":null,\"class\":null,\"role\":null,\"paired\":null,\
             \"conflicts\":0,\"learned\":0,\"passes\":0}",
        ),
    }
    o
}

// ---------------------------------------------------------------------------------------------
// The command.
// ---------------------------------------------------------------------------------------------

/// Why `nfqmark replay` could not run.
#[derive(Debug)]
pub enum Error {
    /// The rules file has errors (each one printed as `nfqmark check` does).
    Rules(Vec<crate::rules::Diagnostic>),
    Capture(CaptureError),
    /// A usage problem, with its hint.
    Usage(String),
    Output(io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Rules(d) => {
                for d in d {
                    writeln!(f, "{d}")?;
                }
                write!(f, "{} error(s) in the rules file", d.len())
            }
            Error::Capture(e) => write!(f, "{e}"),
            Error::Usage(e) => write!(f, "{e}"),
            Error::Output(e) => write!(f, "cannot write the output: {e}"),
        }
    }
}

/// What a replay did, for the caller and the tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub info: CaptureInfo,
    /// The router's addresses used, and whether they were inferred.
    pub locals: Vec<IpAddr>,
    pub inferred: bool,
    /// The daemon's counters line.
    pub counters: String,
    /// Replay's own counters line.
    pub replay: String,
}

fn hook_of(h: ReplayHook) -> Option<Hook> {
    match h {
        ReplayHook::Auto => None,
        ReplayHook::Prerouting => Some(Hook::PreRouting),
        ReplayHook::Input => Some(Hook::Input),
        ReplayHook::Forward => Some(Hook::Forward),
        ReplayHook::Output => Some(Hook::Output),
        ReplayHook::Postrouting => Some(Hook::PostRouting),
    }
}

/// `nfqmark replay`: read the capture (twice when the router's addresses are to be inferred),
/// write a table or JSON lines to `out`, and notes (what was inferred, the counters) to `notes`.
pub fn run(
    args: &ReplayArgs,
    out: &mut dyn Write,
    notes: &mut dyn Write,
) -> Result<Summary, Error> {
    let run = &args.run;
    let rules = match &run.rules {
        Some(path) => {
            crate::daemon::load_rules_with(path, &|_: &str| None).map_err(Error::Rules)?
        }
        None => RuleSet::empty(),
    };
    let hook = hook_of(args.hook);
    let mut inferred = false;
    let locals = if !args.router_addr.is_empty() || hook.is_some() {
        args.router_addr.clone()
    } else {
        let mut guess = LocalGuess::default();
        let mut logged = false;
        let info = read_capture(&args.capture, &mut |frame| {
            if let Ok((seen, ip)) = link_layer(frame.link, frame.data, frame.big_endian) {
                logged |= seen.logged.is_some();
                let mut seen = seen;
                if seen.dir.is_none() {
                    seen.dir = frame.flags_dir;
                }
                if let Ok(p) = packet::parse(ip) {
                    guess.see(&seen, p.src);
                }
            }
        })
        .map_err(Error::Capture)?;
        if !guess.directed && !logged && info.frames > 0 {
            let links: Vec<String> = info.links.iter().map(|&l| linktype::name(l)).collect();
            return Err(Error::Usage(format!(
                "{}: this capture ({}) does not say which way packets went: give the router's \
                 addresses with --router-addr (repeatable), or capture with `tcpdump -i any` \
                 (Linux cooked headers say it)",
                args.capture.display(),
                links.join(", ")
            )));
        }
        if guess.full {
            let _ = writeln!(
                notes,
                "nfqmark replay: more than {GUESS_CAP} addresses in the capture: the router's \
                 addresses may be guessed wrong; give them with --router-addr"
            );
        }
        inferred = true;
        guess.addresses()
    };
    let mask = run.mark_mask;
    let model = Model::new(ModelConfig {
        locals: locals.clone(),
        hook,
        client_marks: args
            .client_mark
            .iter()
            .map(|m| (Prefix::of(m), m.mark))
            .collect(),
        mask,
        dns_ports: run.dns_ports.clone(),
        flow_rules: rules.has_flow_rules(),
        conntrack_info: run.conntrack_info,
        copy_range: usize::from(run.copy_range),
    });
    let mut links = LinkMap::new();
    for (index, name) in &args.iface {
        links.apply(&LinkEvent::New {
            index: *index,
            name: name.clone(),
        });
    }
    let names_interfaces = rules.names_interfaces();
    let shared = Shared::new(
        crate::daemon::engine_config(run),
        crate::daemon::learn_config(run),
        rules,
        &[0],
    );
    let mut replayer = Replayer::new(shared, model, links);
    let _ = writeln!(
        notes,
        "nfqmark replay: {}; router addresses{}: {}",
        args.capture.display(),
        if inferred { " (inferred)" } else { "" },
        if locals.is_empty() {
            "none".to_string()
        } else {
            locals
                .iter()
                .map(IpAddr::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    if !args.json {
        writeln!(out, "{}", table_header()).map_err(Error::Output)?;
    }
    let mut write_error = None;
    let mut unnamed: HashSet<u32> = HashSet::new();
    let info = read_capture(&args.capture, &mut |frame| {
        if write_error.is_some() {
            return;
        }
        let Some(row) = replayer.frame(frame) else {
            return;
        };
        for name in [&row.indev, &row.outdev].into_iter().flatten() {
            if let Some(i) = name.strip_prefix("if").and_then(|n| n.parse().ok())
                && unnamed.len() < 64
            {
                unnamed.insert(i);
            }
        }
        if !row.queued && !args.all {
            return;
        }
        let line = if args.json {
            json_line(&row)
        } else {
            table_line(&row)
        };
        if let Err(e) = writeln!(out, "{line}") {
            write_error = Some(e);
        }
    })
    .map_err(Error::Capture)?;
    if let Some(e) = write_error {
        return Err(Error::Output(e));
    }
    if info.cut {
        let _ = writeln!(
            notes,
            "nfqmark replay: the capture ends inside a packet (still being written, or cut): \
             replayed up to there"
        );
    }
    if names_interfaces && !unnamed.is_empty() {
        let mut v: Vec<u32> = unnamed.into_iter().collect();
        v.sort_unstable();
        let _ = writeln!(
            notes,
            "nfqmark replay: the rules name interfaces, and the capture gives only the index \
             of interface(s) {}: name them with --iface INDEX=NAME (`ip -o link` on the router)",
            v.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
        );
    }
    let counters = replayer.counters();
    let replay = replayer.replay_counters();
    if args.json {
        writeln!(
            out,
            "{{\"counters\":{},\"replay\":{}}}",
            json_str(&counters),
            json_str(&replay)
        )
        .map_err(Error::Output)?;
    } else {
        writeln!(out, "counters: {counters}\nreplay: {replay}").map_err(Error::Output)?;
    }
    Ok(Summary {
        info,
        locals,
        inferred,
        counters,
        replay,
    })
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::path::PathBuf;

    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};
    use crate::fixtures;
    use crate::fixtures::capture::{ethernet, pcap, pcapng};

    /// An SLL2 frame, as `tcpdump -i any` records it.
    fn sll2(ip: &[u8], ifindex: u32, dir: Dir, mac: [u8; 6]) -> Vec<u8> {
        fixtures::capture::sll2(ip, ifindex, dir == Dir::Out, mac)
    }

    fn ng_dir(d: Dir) -> Option<bool> {
        Some(d == Dir::Out)
    }

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 2));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 2, 2));
    const LAN_A: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 1));
    const LAN_B: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 2, 1));
    const WAN: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 3, 1));
    const UPSTREAM: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 9, 53));
    const SERVICE: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 9, 80));
    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
    const T0: Duration = Duration::from_secs(1_800_000_000);
    const IF_A: u32 = 2;
    const IF_B: u32 = 3;
    const IF_WAN: u32 = 4;

    fn ms(n: u64) -> Duration {
        T0 + Duration::from_millis(n)
    }

    /// A temporary file removed on drop.
    struct Temp(PathBuf);

    impl Temp {
        fn new(tag: &str, bytes: &[u8]) -> Temp {
            let path = std::env::temp_dir().join(format!(
                "nfqmark-replay-{}-{tag}-{:?}.pcap",
                std::process::id(),
                std::thread::current().id()
            ));
            std::fs::write(&path, bytes).expect("write the test capture");
            Temp(path)
        }
    }

    impl Drop for Temp {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn args(extra: &[&str]) -> ReplayArgs {
        let mut v = vec!["nfqmark", "replay"];
        v.extend_from_slice(extra);
        match Cli::try_parse_from(v).expect("replay arguments").command {
            Command::Replay(a) => a,
            _ => unreachable!("not replay"),
        }
    }

    /// One resolution through the router as `tcpdump -i any` records it: the client's query
    /// arriving, the resolver's upstream query leaving (id 0x5000 + n, port 33000 + n), its
    /// answer arriving, the answer to the client leaving. `gap` between upstream query and
    /// client query.
    fn resolution(
        client: IpAddr,
        lan: IpAddr,
        ifindex: u32,
        n: u16,
        at: u64,
        gap: u64,
    ) -> Vec<(Duration, Vec<u8>)> {
        let name = format!("{}-{n}.nfqm.example", if client == A { 'a' } else { 'b' });
        let q = fixtures::dns_query(n, &name);
        let a = fixtures::dns_answer(n, &name);
        let uq = fixtures::dns_query(0x5000 + n, &name);
        let ua = fixtures::dns_answer(0x5000 + n, &name);
        let cport = 40_000 + n;
        let uport = 33_000 + n;
        vec![
            (
                ms(at),
                sll2(
                    &fixtures::udp(client, cport, lan, 53, &q),
                    ifindex,
                    Dir::In,
                    MAC,
                ),
            ),
            (
                ms(at + gap),
                sll2(
                    &fixtures::udp(WAN, uport, UPSTREAM, 53, &uq),
                    IF_WAN,
                    Dir::Out,
                    MAC,
                ),
            ),
            (
                ms(at + gap + 1),
                sll2(
                    &fixtures::udp(UPSTREAM, 53, WAN, uport, &ua),
                    IF_WAN,
                    Dir::In,
                    MAC,
                ),
            ),
            (
                ms(at + gap + 2),
                sll2(
                    &fixtures::udp(lan, 53, client, cport, &a),
                    ifindex,
                    Dir::Out,
                    MAC,
                ),
            ),
        ]
    }

    fn two_clients(gap: u64) -> Vec<(Duration, Vec<u8>)> {
        let mut frames = resolution(A, LAN_A, IF_A, 1, 0, gap);
        frames.extend(resolution(B, LAN_B, IF_B, 2, 100, gap));
        frames.sort_by_key(|f| f.0);
        frames
    }

    fn replay_json(bytes: &[u8], extra: &[&str]) -> (Vec<String>, Summary) {
        let tmp = Temp::new("json", bytes);
        let path = tmp.0.display().to_string();
        let mut v = vec![path.as_str(), "--json"];
        v.extend_from_slice(extra);
        let mut out = Vec::new();
        let mut notes = Vec::new();
        let summary = run(&args(&v), &mut out, &mut notes).expect("replay");
        let text = String::from_utf8(out).expect("utf-8");
        (text.lines().map(str::to_string).collect(), summary)
    }

    /// A field of a JSON line, as written (strings with their quotes).
    fn field<'a>(line: &'a str, key: &str) -> &'a str {
        let pat = format!("\"{key}\":");
        let Some(start) = line.find(&pat) else {
            return "";
        };
        let rest = &line[start + pat.len()..];
        if let Some(body) = rest.strip_prefix('"') {
            let end = body.find('"').map_or(rest.len(), |j| j + 2);
            return &rest[..end];
        }
        let end = rest.find([',', '}']).unwrap_or(rest.len());
        &rest[..end]
    }

    fn counter(line: &str, key: &str) -> u64 {
        line.split([' ', '"'])
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {line}"))
    }

    #[test]
    fn a_marked_clients_upstream_query_gets_its_mark_and_the_other_clients_not() {
        let bytes = pcap(linktype::LINUX_SLL2, &two_clients(1));
        let (lines, summary) = replay_json(&bytes, &["--client-mark", "198.18.1.2=137"]);
        assert!(summary.inferred);
        assert_eq!(summary.locals, vec![LAN_A, LAN_B, WAN], "{lines:?}");
        // Eight packets, all queued (DNS at INPUT and OUTPUT), and the counters line.
        assert_eq!(lines.len(), 9, "{lines:#?}");
        let upstream: Vec<&String> = lines
            .iter()
            .filter(|l| field(l, "role") == "\"upstream-query\"")
            .collect();
        assert_eq!(upstream.len(), 2);
        assert_eq!(field(upstream[0], "qname"), "\"a-1.nfqm.example.\"");
        assert_eq!(field(upstream[0], "mark"), "137");
        assert_eq!(field(upstream[0], "hook"), "\"output\"");
        assert_eq!(field(upstream[0], "paired"), "true");
        assert_eq!(field(upstream[1], "mark"), "0");
        let client_query = &lines[0];
        assert_eq!(field(client_query, "hook"), "\"input\"");
        assert_eq!(field(client_query, "in"), "\"if2\"");
        assert_eq!(field(client_query, "mark_in"), "137");
        let counters = lines.last().expect("counters");
        assert_eq!(counter(counters, "paired"), 2, "{counters}");
        assert_eq!(counter(counters, "client_queries"), 2, "{counters}");
        assert_eq!(counter(counters, "client_answers"), 2, "{counters}");
        assert_eq!(counter(counters, "upstream_answers"), 2, "{counters}");
        assert_eq!(counter(counters, "packets"), 8, "{counters}");
        // A's upstream query and A's answer changed mark: 2 marked packets. The upstream
        // answer arrives with the mark already, restored from its connection in PREROUTING.
        assert_eq!(counter(counters, "marked"), 2, "{counters}");
        let upstream_answer = &lines[2];
        assert_eq!(field(upstream_answer, "role"), "\"upstream-answer\"");
        assert_eq!(field(upstream_answer, "mark_in"), "137");
        assert_eq!(field(upstream_answer, "set_mark"), "null");

        // Control: without the client's mark nothing is carried, so the same check fails.
        let (lines, _) = replay_json(&bytes, &[]);
        assert!(
            lines
                .iter()
                .all(|l| !l.contains("\"role\"") || field(l, "mark") == "0"),
            "{lines:#?}"
        );
    }

    #[test]
    fn time_comes_from_the_capture() {
        // The resolver asks 6 s after the client: past the 5 s window, nothing pairs.
        let bytes = pcap(linktype::LINUX_SLL2, &two_clients(6_000));
        let (lines, _) = replay_json(&bytes, &["--client-mark", "198.18.1.2=137"]);
        let counters = lines.last().expect("counters");
        assert_eq!(counter(counters, "paired"), 0, "{counters}");
        assert_eq!(counter(counters, "unpaired"), 2, "{counters}");
        // With a 10 s window they pair again.
        let (lines, _) = replay_json(
            &bytes,
            &["--client-mark", "198.18.1.2=137", "--window", "10s"],
        );
        assert_eq!(counter(lines.last().expect("counters"), "paired"), 2);
    }

    #[test]
    fn a_forwarded_packet_is_decided_once_and_new_flows_go_to_prerouting() {
        // Client A opens a TCP connection to a service through the router (masqueraded on the
        // way out): seen arriving on the LAN, then leaving on the WAN with the router's address.
        let syn_in = fixtures::tcp_syn(A, 20_000, SERVICE, 80);
        let syn_out = fixtures::tcp_syn(WAN, 61_000, SERVICE, 80);
        let q = fixtures::dns_query(7, "x.nfqm.example");
        let frames = vec![
            (
                ms(0),
                sll2(&fixtures::udp(A, 40_007, LAN_A, 53, &q), IF_A, Dir::In, MAC),
            ),
            (
                ms(1),
                sll2(
                    &fixtures::udp(WAN, 33_007, UPSTREAM, 53, &q),
                    IF_WAN,
                    Dir::Out,
                    MAC,
                ),
            ),
            (ms(10), sll2(&syn_in, IF_A, Dir::In, MAC)),
            (ms(11), sll2(&syn_out, IF_WAN, Dir::Out, MAC)),
        ];
        let bytes = pcap(linktype::LINUX_SLL2, &frames);
        // The capture has no answer from the router's LAN address: name it.
        let (lines, summary) = replay_json(
            &bytes,
            &[
                "--all",
                "--router-addr",
                "198.18.1.1",
                "--router-addr",
                "198.18.3.1",
            ],
        );
        assert_eq!(lines.len(), 5, "{lines:#?}");
        assert_eq!(field(&lines[0], "hook"), "\"input\"", "{}", lines[0]);
        assert_eq!(field(&lines[2], "hook"), "\"forward\"", "{}", lines[2]);
        assert_eq!(field(&lines[2], "queued"), "false");
        assert_eq!(field(&lines[3], "hook"), "\"fwd-out\"", "{}", lines[3]);
        assert_eq!(counter(&summary.replay, "forwarded_out"), 1);
        // With flow rules, setup queues new flows at PREROUTING.
        let tmp = Temp::new(
            "flowrules",
            b"flow src 198.18.1.0/24 names *.nfqm.example set-mark 0x20/0xff\ndefault accept\n",
        );
        let rules = tmp.0.display().to_string();
        let (lines, _) = replay_json(
            &bytes,
            &[
                "--all",
                "--rules",
                &rules,
                "--router-addr",
                "198.18.1.1",
                "--router-addr",
                "198.18.3.1",
            ],
        );
        assert_eq!(field(&lines[2], "hook"), "\"prerouting\"", "{}", lines[2]);
        assert_eq!(field(&lines[2], "queued"), "true");
        assert_eq!(field(&lines[3], "hook"), "\"fwd-out\"", "{}", lines[3]);
    }

    #[test]
    fn pcapng_interface_names_bind_the_rules_and_flags_give_the_direction() {
        let q = fixtures::dns_query(9, "a-9.nfqm.example");
        let uq = fixtures::dns_query(0x77, "a-9.nfqm.example");
        let packets = vec![
            (
                ms(0),
                0,
                ng_dir(Dir::In),
                ethernet(&fixtures::udp(A, 40_009, LAN_A, 53, &q), MAC),
            ),
            (
                ms(1),
                1,
                ng_dir(Dir::Out),
                ethernet(&fixtures::udp(WAN, 33_009, UPSTREAM, 53, &uq), MAC),
            ),
        ];
        let bytes = pcapng(
            &[(linktype::ETHERNET, "lan0"), (linktype::ETHERNET, "wan0")],
            &packets,
        );
        let tmp = Temp::new(
            "ifrules",
            b"iif lan0 dns query set-mark 0x42\ndefault accept\n",
        );
        let rules = tmp.0.display().to_string();
        let (lines, summary) = replay_json(&bytes, &["--rules", &rules]);
        assert_eq!(summary.info.format, "pcapng");
        // Only the WAN address sends in this capture: the LAN address is not inferred, so the
        // client's query looks forwarded and is not queued.
        assert_eq!(summary.locals, vec![WAN], "{lines:#?}");
        assert_eq!(lines.len(), 2, "{lines:#?}");
        let (lines, _) = replay_json(
            &bytes,
            &[
                "--rules",
                &rules,
                "--router-addr",
                "198.18.1.1",
                "--router-addr",
                "198.18.3.1",
            ],
        );
        assert_eq!(field(&lines[0], "in"), "\"lan0\"");
        assert_eq!(field(&lines[0], "set_mark"), "66", "{}", lines[0]);
        assert!(field(&lines[0], "rule").contains(":1\""), "{}", lines[0]);
        assert_eq!(field(&lines[1], "out"), "\"wan0\"");
        assert_eq!(field(&lines[1], "mark"), "66", "{}", lines[1]);
        // Control: the rule names another interface, nothing matches.
        let tmp = Temp::new(
            "ifrules2",
            b"iif lan1 dns query set-mark 0x42\ndefault accept\n",
        );
        let rules = tmp.0.display().to_string();
        let (lines, _) = replay_json(&bytes, &["--rules", &rules, "--router-addr", "198.18.1.1"]);
        assert_eq!(field(&lines[0], "set_mark"), "null", "{}", lines[0]);
    }

    #[test]
    fn a_capture_without_direction_needs_the_router_addresses() {
        let q = fixtures::dns_query(9, "a-9.nfqm.example");
        let frames = vec![(
            ms(0),
            ethernet(&fixtures::udp(A, 40_009, LAN_A, 53, &q), MAC),
        )];
        let bytes = pcap(linktype::ETHERNET, &frames);
        let tmp = Temp::new("nodir", &bytes);
        let path = tmp.0.display().to_string();
        let e = run(&args(&[&path]), &mut Vec::new(), &mut Vec::new()).expect_err("no direction");
        assert!(e.to_string().contains("--router-addr"), "{e}");
        let (lines, _) = replay_json(&bytes, &["--router-addr", "198.18.1.1"]);
        assert_eq!(field(&lines[0], "hook"), "\"input\"");
        assert_eq!(field(&lines[0], "role"), "\"client-query\"");
    }

    #[test]
    fn repeat_runs_the_packet_through_the_hook_again() {
        let q = fixtures::dns_query(9, "a-9.nfqm.example");
        let frames = vec![(
            ms(0),
            sll2(&fixtures::udp(A, 40_009, LAN_A, 53, &q), IF_A, Dir::In, MAC),
        )];
        let bytes = pcap(linktype::LINUX_SLL2, &frames);
        let tmp = Temp::new(
            "repeat",
            b"mark 0 dns query set-mark 137 repeat\ndefault accept\n",
        );
        let rules = tmp.0.display().to_string();
        let (lines, _) = replay_json(&bytes, &["--rules", &rules, "--router-addr", "198.18.1.1"]);
        assert_eq!(field(&lines[0], "passes"), "2", "{}", lines[0]);
        assert_eq!(field(&lines[0], "mark"), "137", "{}", lines[0]);
        let tmp = Temp::new(
            "repeat2",
            b"dns query set-mark 137 repeat\ndefault accept\n",
        );
        let rules = tmp.0.display().to_string();
        let (lines, summary) =
            replay_json(&bytes, &["--rules", &rules, "--router-addr", "198.18.1.1"]);
        assert_eq!(field(&lines[0], "passes"), "4", "{}", lines[0]);
        assert_eq!(counter(&summary.replay, "repeat_loops"), 1);
    }

    #[test]
    fn link_layers() {
        let ip = fixtures::udp(A, 1, LAN_A, 53, b"x");
        let framed = sll2(&ip, 5, Dir::In, MAC);
        let (seen, got) = link_layer(linktype::LINUX_SLL2, &framed, false).expect("sll2");
        assert_eq!(
            (seen.dir, seen.ifindex, seen.src_mac),
            (Some(Dir::In), Some(5), Some(MAC))
        );
        assert_eq!(got, &ip[..]);
        let (seen, _) = link_layer(linktype::LINUX_SLL2, &sll2(&ip, 5, Dir::Out, MAC), false)
            .expect("sll2 out");
        assert_eq!((seen.dir, seen.src_mac), (Some(Dir::Out), None));
        // SLL v1: packet type, ARPHRD_LOOPBACK, address length 6, address, protocol.
        let mut sll = vec![0, 4, 0x03, 0x04, 0, 6];
        sll.extend_from_slice(&[0; 8]);
        sll.extend_from_slice(&0x0800u16.to_be_bytes());
        sll.extend_from_slice(&ip);
        let (seen, got) = link_layer(linktype::LINUX_SLL, &sll, false).expect("sll");
        assert_eq!((seen.dir, seen.loopback), (Some(Dir::Out), true));
        assert_eq!(got, &ip[..]);
        // Ethernet with a VLAN tag; ARP is not IP.
        let mut eth = ethernet(&ip, MAC);
        eth.splice(12..12, [0x81, 0x00, 0x00, 0x07]);
        assert_eq!(
            link_layer(linktype::ETHERNET, &eth, false).expect("vlan").1,
            &ip[..]
        );
        let mut arp = ethernet(&ip, MAC);
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(
            link_layer(linktype::ETHERNET, &arp, false),
            Err(Skip::NotIp)
        );
        assert_eq!(link_layer(147, &ip, false), Err(Skip::Link(147)));
        // NFLOG: header, packet header (hook INPUT), mark, indev, payload.
        let tlv = |o: &mut Vec<u8>, kind: u16, v: &[u8]| {
            o.extend_from_slice(&u16::try_from(4 + v.len()).unwrap_or(0).to_le_bytes());
            o.extend_from_slice(&kind.to_le_bytes());
            o.extend_from_slice(v);
            o.resize(o.len().div_ceil(4) * 4, 0);
        };
        let mut nf = vec![2, 0, 0, 5];
        tlv(&mut nf, 1, &[0x08, 0x00, 1, 0]);
        tlv(&mut nf, 2, &137u32.to_be_bytes());
        tlv(&mut nf, 4, &7u32.to_be_bytes());
        tlv(&mut nf, 9, &ip);
        let (seen, got) = link_layer(linktype::NFLOG, &nf, false).expect("nflog");
        assert_eq!(
            seen.logged,
            Some(Logged {
                hook: Hook::Input,
                mark: 137,
                indev: 7,
                outdev: 0
            })
        );
        assert_eq!(got, &ip[..]);
        // No prefix of any frame panics.
        for frame in [sll2(&ip, 5, Dir::In, MAC), sll, eth, nf] {
            for link in [
                linktype::ETHERNET,
                linktype::LINUX_SLL,
                linktype::LINUX_SLL2,
                linktype::NFLOG,
                linktype::RAW,
            ] {
                for n in 0..frame.len() {
                    let _ = link_layer(link, &frame[..n], false);
                    let _ = link_layer(link, &frame[..n], true);
                }
            }
        }
    }

    #[test]
    fn damaged_captures_are_errors_or_cut_never_panics() {
        let good = pcap(linktype::LINUX_SLL2, &two_clients(1));
        let ng = pcapng(
            &[(linktype::RAW, "x")],
            &[(
                ms(0),
                0,
                ng_dir(Dir::In),
                fixtures::udp(A, 1, LAN_A, 53, b"abc"),
            )],
        );
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for base in [&good, &ng] {
            // Cut anywhere: the frames before the cut are read, and it says so.
            for cut in (0..base.len()).step_by(7) {
                let tmp = Temp::new("cut", &base[..cut]);
                let mut n = 0;
                if let Ok(info) = read_capture(&tmp.0, &mut |_| n += 1) {
                    assert!(info.cut || cut == 0 || n > 0 || info.frames == 0);
                }
            }
            for _ in 0..200 {
                let mut bytes = base.clone();
                for _ in 0..1 + next() % 8 {
                    let i = (next() % bytes.len() as u64) as usize;
                    bytes[i] = next() as u8;
                }
                let tmp = Temp::new("mut", &bytes);
                let path = tmp.0.display().to_string();
                let _ = run(
                    &args(&[&path, "--router-addr", "198.18.1.1"]),
                    &mut Vec::new(),
                    &mut Vec::new(),
                );
            }
        }
        let tmp = Temp::new("empty", b"");
        let e = read_capture(&tmp.0, &mut |_| {}).expect_err("empty");
        assert!(e.to_string().contains("empty"), "{e}");
        let tmp = Temp::new("text", b"this is not a capture at all, just text\n");
        let e = read_capture(&tmp.0, &mut |_| {}).expect_err("text");
        assert!(e.to_string().contains("not a pcap or pcapng"), "{e}");
    }

    #[test]
    fn the_table_has_a_line_per_queued_packet() {
        let bytes = pcap(linktype::LINUX_SLL2, &two_clients(1));
        let tmp = Temp::new("table", &bytes);
        let path = tmp.0.display().to_string();
        let mut out = Vec::new();
        let mut notes = Vec::new();
        run(
            &args(&[
                &path,
                "--client-mark",
                "198.18.1.0/24=137",
                "--iface",
                "2=ca",
            ]),
            &mut out,
            &mut notes,
        )
        .expect("replay");
        let text = String::from_utf8(out).expect("utf-8");
        let notes = String::from_utf8(notes).expect("utf-8");
        assert!(
            notes.contains("router addresses (inferred): 198.18.1.1, 198.18.2.1, 198.18.3.1"),
            "{notes}"
        );
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].contains("hook") && lines[0].contains("pairing"),
            "{text}"
        );
        assert!(
            lines[1].contains("input")
                && lines[1].contains(" ca ")
                && lines[1].contains("a-1.nfqm.example. A")
                && lines[1].contains("client-query"),
            "{text}"
        );
        assert!(
            lines[2].contains("output")
                && lines[2].contains("0x0->0x89")
                && lines[2].contains("upstream-query paired"),
            "{text}"
        );
        assert!(text.contains("counters: packets=8 marked=2"), "{text}");
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_str("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
    }

    #[test]
    fn prefixes() {
        let p = Prefix::parse("198.18.1.0/24").expect("v4");
        assert!(p.contains(A) && !p.contains(B));
        let p = Prefix::parse("2001:db8:1::/48").expect("v6");
        assert!(p.contains("2001:db8:1:2::5".parse().expect("addr")));
        assert!(!p.contains(A));
        assert!(Prefix::parse("198.18.1.0/33").is_none());
        assert!(Prefix::parse("0.0.0.0/0").expect("all").contains(B));
        assert!(crate::cli::parse_client_mark("198.18.1.2").is_err());
        assert!(crate::cli::parse_client_mark("198.18.1.2/33=1").is_err());
        let m = crate::cli::parse_client_mark("198.18.1.0/24=0x89").expect("client mark");
        assert_eq!((m.len, m.mark), (24, 137));
        assert!(Prefix::of(&m).contains(A));
        assert!(crate::cli::parse_iface("0=x").is_err());
    }
}
