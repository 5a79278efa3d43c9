//! The upstream DNS host of the lab: a small authoritative responder, and a sniffer that records
//! which link each query arrived on.
//!
//! Both run as threads of the calling process that enter the upstream namespace before opening
//! their sockets, so tests and the demo need no extra program. The responder answers every A
//! query with 198.18.9.99 and every AAAA with 2001:db8:9::99, except that a first label
//! `ip-198-18-9-81` (or `ip6-2001-db8-9--81`) names the address to answer, `alias-ip-...` answers
//! with a CNAME to `ip-....cdn.nfqm.example` and its address, and a label `ttl-N` sets the TTL
//! (60 s otherwise). A first label containing `tc-` gets a truncated (TC) empty answer over UDP,
//! so the resolver or the client retries over TCP. The sniffer reads every frame on the named
//! links (AF_PACKET) and keeps DNS queries and flow openings, which is how the tests count
//! "arrived over link 2". The sink accepts TCP and echoes UDP on a few ports of every address
//! of the upstream host's 198.18.9.0/24 and 2001:db8:9::/64.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::bounded;
use hickory_proto::op::{Message, MessageType};
use hickory_proto::rr::rdata::{A, AAAA, CNAME};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use super::netns::{Netns, enter};
use crate::dns;
use crate::packet::{self, Proto};

/// The address every A query is answered with.
pub const ANSWER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 9, 99);
/// The address every AAAA query is answered with.
pub const ANSWER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, 0, 0x99);

const POLL: Duration = Duration::from_millis(100);

/// Threads that stop when this is dropped.
#[derive(Debug)]
struct Threads {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
}

impl Drop for Threads {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// Spawn a thread that enters `ns`, runs `setup` (open sockets) and reports its result before
/// running `serve` with what setup returned.
fn spawn_in<T, S, F>(ns: &Netns, name: &str, setup: S, serve: F) -> io::Result<JoinHandle<()>>
where
    T: Send + 'static,
    S: FnOnce() -> io::Result<T> + Send + 'static,
    F: FnOnce(T) + Send + 'static,
{
    let ns_name = ns.name().to_string();
    let (tx, rx) = bounded::<io::Result<()>>(1);
    let handle = thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let ready = enter(&ns_name).and_then(|()| setup());
            match ready {
                Ok(state) => {
                    let _ = tx.send(Ok(()));
                    serve(state);
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        })?;
    match rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(e)
        }
        Err(_) => Err(io::Error::other(format!(
            "{name}: thread ended during setup"
        ))),
    }
}

/// Build the answer for a query; `None` for what is not a query.
pub fn answer(query: &[u8], over_udp: bool) -> Option<Vec<u8>> {
    let msg = Message::from_vec(query).ok()?;
    if msg.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut reply = Message::response(msg.metadata.id, msg.metadata.op_code);
    reply.metadata.recursion_desired = msg.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.metadata.authoritative = true;
    if let Some(q) = msg.queries.first() {
        reply.add_query(q.clone());
        let first_label = q.name().iter().next().unwrap_or_default();
        let truncate = over_udp
            && first_label
                .to_ascii_lowercase()
                .windows(3)
                .any(|w| w == b"tc-");
        if truncate {
            reply.metadata.truncation = true;
        } else {
            let labels: Vec<String> = q
                .name()
                .iter()
                .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
                .collect();
            let ttl = labels
                .iter()
                .find_map(|l| l.strip_prefix("ttl-").and_then(|t| t.parse().ok()))
                .unwrap_or(60);
            let first = labels.first().map(String::as_str).unwrap_or_default();
            // `alias-ip-...`: a CNAME to `ip-....cdn.nfqm.example.`, then its address.
            let (owner, first) = match first.strip_prefix("alias-") {
                Some(target) => {
                    let cname = Name::from_ascii(format!("{target}.cdn.nfqm.example."))
                        .unwrap_or_else(|_| Name::root());
                    reply.add_answer(Record::from_rdata(
                        q.name().clone(),
                        ttl,
                        RData::CNAME(CNAME(cname.clone())),
                    ));
                    (cname, target.to_string())
                }
                None => (q.name().clone(), first.to_string()),
            };
            let rdata = match (q.query_type(), named_address(&first)) {
                (RecordType::A, Some(IpAddr::V4(a))) => Some(RData::A(A::from(a))),
                (RecordType::AAAA, Some(IpAddr::V6(a))) => Some(RData::AAAA(AAAA::from(a))),
                (RecordType::A, _) => Some(RData::A(A::from(ANSWER_V4))),
                (RecordType::AAAA, _) => Some(RData::AAAA(AAAA::from(ANSWER_V6))),
                _ => None,
            };
            if let Some(rdata) = rdata {
                reply.add_answer(Record::from_rdata(owner, ttl, rdata));
            }
        }
    }
    if let Some(edns) = msg.edns.as_ref() {
        let mut e = edns.clone();
        e.set_max_payload(1232);
        reply.edns = Some(e);
    }
    reply.to_vec().ok()
}

/// The address a label names: `ip-198-18-9-81` or `ip6-2001-db8-9--81` (`-` for `:`).
fn named_address(label: &str) -> Option<IpAddr> {
    if let Some(v4) = label.strip_prefix("ip-") {
        return v4.replace('-', ".").parse().ok();
    }
    label.strip_prefix("ip6-")?.replace('-', ":").parse().ok()
}

/// The responder: UDP and TCP on port 53 of each given address.
#[derive(Debug)]
pub struct Responder {
    _threads: Threads,
}

impl Responder {
    pub fn start(ns: &Netns, addrs: &[IpAddr]) -> io::Result<Responder> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        for &addr in addrs {
            let sa = SocketAddr::new(addr, 53);
            let stop_udp = Arc::clone(&stop);
            handles.push(spawn_in(
                ns,
                "lab-udp53",
                move || {
                    let s = UdpSocket::bind(sa)?;
                    s.set_read_timeout(Some(POLL))?;
                    Ok(s)
                },
                move |s| serve_udp(s, &stop_udp),
            )?);
            let stop_tcp = Arc::clone(&stop);
            handles.push(spawn_in(
                ns,
                "lab-tcp53",
                move || {
                    let l = TcpListener::bind(sa)?;
                    l.set_nonblocking(true)?;
                    Ok(l)
                },
                move |l| serve_tcp(l, &stop_tcp),
            )?);
        }
        Ok(Responder {
            _threads: Threads { stop, handles },
        })
    }
}

/// Services of the upstream host for flow tests: TCP ports that accept (and close) connections,
/// UDP ports that echo what they receive.
#[derive(Debug)]
pub struct Sink {
    _threads: Threads,
}

impl Sink {
    pub fn start(
        ns: &Netns,
        addrs: &[IpAddr],
        tcp_ports: &[u16],
        udp_ports: &[u16],
    ) -> io::Result<Sink> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        for &addr in addrs {
            for &port in tcp_ports {
                let sa = SocketAddr::new(addr, port);
                let stop = Arc::clone(&stop);
                handles.push(spawn_in(
                    ns,
                    "lab-sink-tcp",
                    move || {
                        let l = TcpListener::bind(sa)?;
                        l.set_nonblocking(true)?;
                        Ok(l)
                    },
                    move |l| {
                        while !stop.load(Ordering::Relaxed) {
                            match l.accept() {
                                Ok((conn, _)) => drop(conn),
                                Err(_) => thread::sleep(Duration::from_millis(10)),
                            }
                        }
                    },
                )?);
            }
            for &port in udp_ports {
                let sa = SocketAddr::new(addr, port);
                let stop = Arc::clone(&stop);
                handles.push(spawn_in(
                    ns,
                    "lab-sink-udp",
                    move || {
                        let s = UdpSocket::bind(sa)?;
                        s.set_read_timeout(Some(POLL))?;
                        Ok(s)
                    },
                    move |s| {
                        let mut buf = [0u8; 2048];
                        while !stop.load(Ordering::Relaxed) {
                            if let Ok((n, peer)) = s.recv_from(&mut buf) {
                                let _ = s.send_to(buf.get(..n).unwrap_or_default(), peer);
                            }
                        }
                    },
                )?);
            }
        }
        Ok(Sink {
            _threads: Threads { stop, handles },
        })
    }
}

/// Open a TCP connection from inside `ns` (a thread enters it), wait for the handshake, close.
pub fn tcp_connect_from(ns: &Netns, to: SocketAddr, timeout: Duration) -> io::Result<()> {
    let ns_name = ns.name().to_string();
    thread::Builder::new()
        .name("lab-connect".into())
        .spawn(move || {
            enter(&ns_name)?;
            TcpStream::connect_timeout(&to, timeout).map(drop)
        })?
        .join()
        .map_err(|_| io::Error::other("connect thread panicked"))?
}

/// Send one UDP datagram from inside `ns` and wait for its echo.
pub fn udp_exchange_from(ns: &Netns, to: SocketAddr, timeout: Duration) -> io::Result<()> {
    let ns_name = ns.name().to_string();
    thread::Builder::new()
        .name("lab-udp".into())
        .spawn(move || {
            enter(&ns_name)?;
            let any: SocketAddr = if to.is_ipv4() {
                SocketAddr::from(([0, 0, 0, 0], 0))
            } else {
                SocketAddr::from(([0u16; 8], 0))
            };
            let s = UdpSocket::bind(any)?;
            s.set_read_timeout(Some(timeout))?;
            s.send_to(b"nfqmark lab flow", to)?;
            let mut buf = [0u8; 64];
            s.recv_from(&mut buf).map(drop)
        })?
        .join()
        .map_err(|_| io::Error::other("udp thread panicked"))?
}

fn serve_udp(socket: UdpSocket, stop: &AtomicBool) {
    let mut buf = vec![0u8; 65_535];
    while !stop.load(Ordering::Relaxed) {
        let Ok((n, peer)) = socket.recv_from(&mut buf) else {
            continue;
        };
        if let Some(reply) = buf.get(..n).and_then(|q| answer(q, true)) {
            let _ = socket.send_to(&reply, peer);
        }
    }
}

fn serve_tcp(listener: TcpListener, stop: &Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((conn, _)) => {
                let stop = Arc::clone(stop);
                let _ = thread::Builder::new()
                    .name("lab-tcp-conn".into())
                    .spawn(move || serve_tcp_conn(conn, &stop));
            }
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn serve_tcp_conn(mut conn: TcpStream, stop: &AtomicBool) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    while !stop.load(Ordering::Relaxed) {
        let mut len = [0u8; 2];
        if conn.read_exact(&mut len).is_err() {
            return;
        }
        let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if conn.read_exact(&mut query).is_err() {
            return;
        }
        let Some(reply) = answer(&query, false) else {
            return;
        };
        let Ok(rlen) = u16::try_from(reply.len()) else {
            return;
        };
        let mut framed = rlen.to_be_bytes().to_vec();
        framed.extend_from_slice(&reply);
        if conn.write_all(&framed).is_err() {
            return;
        }
    }
}

/// One DNS query seen arriving on a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub link: String,
    pub proto: Proto,
    pub src: IpAddr,
    /// Lower-cased query name without the trailing dot.
    pub name: String,
    pub id: u16,
}

/// The opening packet of a flow (TCP SYN, or any UDP datagram not to port 53) seen arriving on a
/// link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowSeen {
    pub link: String,
    pub proto: Proto,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub dport: u16,
}

/// What the sniffer keeps.
#[derive(Debug, Default)]
struct Records {
    queries: Vec<Seen>,
    flows: Vec<FlowSeen>,
}

/// Records DNS queries and flow openings arriving on each named interface.
#[derive(Debug)]
pub struct Sniffer {
    seen: Arc<Mutex<Records>>,
    _threads: Threads,
}

impl Sniffer {
    pub fn start(ns: &Netns, links: &[&str]) -> io::Result<Sniffer> {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Records::default()));
        let mut handles = Vec::new();
        for link in links {
            let link = link.to_string();
            let link_setup = link.clone();
            let stop = Arc::clone(&stop);
            let seen = Arc::clone(&seen);
            handles.push(spawn_in(
                ns,
                "lab-sniffer",
                move || packet_socket(&link_setup),
                move |fd| sniff(&fd, &link, &stop, &seen),
            )?);
        }
        Ok(Sniffer {
            seen,
            _threads: Threads { stop, handles },
        })
    }

    fn records(&self) -> std::sync::MutexGuard<'_, Records> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every DNS query seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.records().queries.clone()
    }

    /// Every flow opening seen so far.
    pub fn flows(&self) -> Vec<FlowSeen> {
        self.records().flows.clone()
    }

    /// Links on which flows from `src` to `dst`:`dport` arrived (one entry per opening packet).
    pub fn flow_links(&self, src: IpAddr, dst: IpAddr, dport: u16) -> Vec<String> {
        self.records()
            .flows
            .iter()
            .filter(|f| f.src == src && f.dst == dst && f.dport == dport)
            .map(|f| f.link.clone())
            .collect()
    }

    /// Forget what was seen (between rounds).
    pub fn clear(&self) {
        let mut r = self.records();
        r.queries.clear();
        r.flows.clear();
    }

    /// Distinct query names per link.
    pub fn names_by_link(&self) -> BTreeMap<String, std::collections::BTreeSet<String>> {
        let mut out: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
        for s in self.seen() {
            out.entry(s.link).or_default().insert(s.name);
        }
        out
    }
}

/// An AF_PACKET socket bound to `iface` in the calling thread's namespace.
fn packet_socket(iface: &str) -> io::Result<OwnedFd> {
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
    let cname = std::ffi::CString::new(iface).map_err(io::Error::other)?;
    // SAFETY: cname is a valid NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if ifindex == 0 {
        return Err(io::Error::other(format!("no interface {iface}")));
    }
    // SAFETY: sockaddr_ll is plain data; zeroed is a valid starting value.
    let mut addr: libc::sockaddr_ll = unsafe { mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    addr.sll_ifindex = ifindex as i32;
    // SAFETY: addr is a valid sockaddr_ll and the length matches it.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
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

fn sniff(fd: &OwnedFd, link: &str, stop: &AtomicBool, seen: &Mutex<Records>) {
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: buf is valid for writes of its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let Ok(n) = usize::try_from(n) else {
            continue;
        };
        let Some(frame) = buf.get(..n) else { continue };
        if let Some(s) = query_in_frame(frame, link)
            && let Ok(mut r) = seen.lock()
        {
            r.queries.push(s);
        } else if let Some(f) = flow_in_frame(frame, link)
            && let Ok(mut r) = seen.lock()
        {
            r.flows.push(f);
        }
    }
}

fn ip_in_frame(frame: &[u8]) -> Option<packet::Packet<'_>> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    if ethertype != 0x0800 && ethertype != 0x86dd {
        return None;
    }
    packet::parse(frame.get(14..)?).ok()
}

/// A flow's opening packet in an Ethernet frame: a TCP SYN, or UDP not to port 53.
pub fn flow_in_frame(frame: &[u8], link: &str) -> Option<FlowSeen> {
    let p = ip_in_frame(frame)?;
    let opening = match p.proto {
        Proto::Tcp => p.tcp.syn && !p.tcp.ack,
        Proto::Udp => p.dport != 53 && p.sport != 53,
        _ => false,
    };
    opening.then(|| FlowSeen {
        link: link.to_string(),
        proto: p.proto,
        src: p.src,
        dst: p.dst,
        dport: p.dport,
    })
}

/// The DNS query in an Ethernet frame, if it holds one (to port 53).
pub fn query_in_frame(frame: &[u8], link: &str) -> Option<Seen> {
    let p = ip_in_frame(frame)?;
    if p.dport != 53 {
        return None;
    }
    let d = match p.proto {
        Proto::Udp => dns::parse_udp(p.payload).ok()?,
        Proto::Tcp => dns::parse_tcp(p.payload).ok()?,
        _ => return None,
    };
    if d.response {
        return None;
    }
    let q = d.question?;
    let mut name = q.name().to_ascii().to_ascii_lowercase();
    if name.ends_with('.') {
        name.pop();
    }
    Some(Seen {
        link: link.to_string(),
        proto: p.proto,
        src: p.src,
        name,
        id: d.id,
    })
}
