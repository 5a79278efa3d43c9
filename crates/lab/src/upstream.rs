//! The upstream DNS host of the lab: a small authoritative responder and the services flow tests
//! connect to (the sniffer that records which link each packet arrived on is in
//! [`super::sniffer`]).
//!
//! All run as threads of the calling process that enter the upstream namespace before opening
//! their sockets, so tests and the demo need no extra program. The responder answers every A
//! query with 198.18.9.99 and every AAAA with 2001:db8:9::99, except that a first label
//! `ip-198-18-9-81` (or `ip6-2001-db8-9--81`) names the address to answer, `alias-ip-...` answers
//! with a CNAME to `ip-....cdn.nfqm.example` and its address, and a label `ttl-N` sets the TTL
//! (60 s otherwise). A first label containing `tc-` gets a truncated (TC) empty answer over UDP,
//! so the resolver or the client retries over TCP. The sink accepts TCP and echoes UDP on a few
//! ports of every address of the upstream host's 198.18.9.0/24 and 2001:db8:9::/64. The host
//! answers over the link a packet came in on: it has routes to the two links only (in the real
//! layout), and never filters anything itself (the lab's ingress rules do).
//!
//! The responder shares the machine with the system under test, so it must stay cheap at
//! benchmark rates: UDP takes up to 64 queries per `recvmmsg` and sends their answers with
//! one `sendmmsg`, and the common query (one A or AAAA question for a name without any of the
//! labels above) is answered straight from its bytes, giving the same bytes as the general path
//! built with hickory-proto, which handles everything else.

use std::io::{self, Read, Write};
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType};
use hickory_proto::rr::rdata::{A, AAAA, CNAME};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use std::sync::mpsc::sync_channel;

use super::netns::{self, Netns, enter};

/// The address every A query is answered with.
pub const ANSWER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 9, 99);
/// The address every AAAA query is answered with.
pub const ANSWER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, 0, 0x99);

const POLL: Duration = Duration::from_millis(100);

/// The TTL of every answer without a `ttl-N` label.
const DEFAULT_TTL: u32 = 60;
/// The UDP payload size the responder advertises in its OPT record.
const EDNS_PAYLOAD: u16 = 1232;
/// UDP queries taken (and answered) per system call.
const BATCH: usize = 64;
/// Room for the largest UDP datagram.
const DGRAM: usize = 65_535;

/// Threads that stop when this is dropped.
#[derive(Debug)]
pub(super) struct Threads {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
}

impl Threads {
    pub(super) fn new(stop: Arc<AtomicBool>, handles: Vec<JoinHandle<()>>) -> Threads {
        Threads { stop, handles }
    }
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
pub(super) fn spawn_in<T, S, F>(
    ns: &Netns,
    name: &str,
    setup: S,
    serve: F,
) -> io::Result<JoinHandle<()>>
where
    T: Send + 'static,
    S: FnOnce() -> io::Result<T> + Send + 'static,
    F: FnOnce(T) + Send + 'static,
{
    let ns_name = ns.name().to_string();
    let (tx, rx) = sync_channel::<io::Result<()>>(1);
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
    plain_answer(query).or_else(|| full_answer(query, over_udp))
}

/// The answer built with hickory-proto: every query, every label convention.
fn full_answer(query: &[u8], over_udp: bool) -> Option<Vec<u8>> {
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
                .unwrap_or(DEFAULT_TTL);
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
        e.set_max_payload(EDNS_PAYLOAD);
        reply.edns = Some(e);
    }
    reply.to_vec().ok()
}

/// The answer to a plain query, built from its bytes without parsing it into a message: one
/// question, type A or AAAA, class IN, an uncompressed name that is not the root, none of whose
/// labels starts with `ttl-` and whose first label neither starts with `ip-`, `ip6-` or
/// `alias-` nor contains `tc-` (any case); no answer or authority records, and at most one
/// additional record, an OPT whose options hickory keeps as raw bytes. `None` declines: the
/// query goes to [`full_answer`], whose bytes this reproduces for every query it takes.
fn plain_answer(query: &[u8]) -> Option<Vec<u8>> {
    let header: [u8; 12] = query.get(..12)?.try_into().ok()?;
    let [id0, id1, flags0, _, qd0, qd1, an0, an1, ns0, ns1, ar0, ar1] = header;
    // QR 0, OPCODE 0 (QUERY); one question, no answers or authorities, an OPT at most.
    if flags0 & 0xf8 != 0 || [qd0, qd1, an0, an1, ns0, ns1, ar0] != [0, 1, 0, 0, 0, 0, 0] || ar1 > 1
    {
        return None;
    }
    let mut pos = 12;
    loop {
        let len = usize::from(*query.get(pos)?);
        if len == 0 {
            break;
        }
        // 64 and up: a compression pointer or a reserved label type.
        if len > 63 {
            return None;
        }
        let label = query.get(pos + 1..pos + 1 + len)?;
        if has_prefix(label, b"ttl-")
            || pos == 12
                && (has_prefix(label, b"ip-")
                    || has_prefix(label, b"ip6-")
                    || has_prefix(label, b"alias-")
                    || label.windows(3).any(|w| w.eq_ignore_ascii_case(b"tc-")))
        {
            return None;
        }
        pos += 1 + len;
    }
    pos += 1;
    // Not the root (its answer's owner is not compressed), and no longer than a name may be.
    if pos == 13 || pos - 12 > 255 {
        return None;
    }
    let question = query.get(..pos + 4)?;
    let qtype = query.get(pos..pos + 2)?;
    let qclass = query.get(pos + 2..pos + 4)?;
    let v4 = ANSWER_V4.octets();
    let v6 = ANSWER_V6.octets();
    let address: &[u8] = match qtype {
        [0, 1] => &v4,
        [0, 28] => &v6,
        _ => return None,
    };
    if qclass != [0, 1] {
        return None;
    }
    let rest = query.get(pos + 4..)?;
    let opt = match ar1 {
        0 if rest.is_empty() => None,
        1 => Some(plain_opt(rest)?),
        _ => return None,
    };
    let mut out = Vec::with_capacity(question.len() + 12 + address.len() + rest.len());
    // QR, AA, RD as asked, RA; NOERROR. One answer, the OPT if asked with one.
    let flags0 = 0x84 | (flags0 & 0x01);
    out.extend_from_slice(&[id0, id1, flags0, 0x80, 0, 1, 0, 1, 0, 0, 0, ar1]);
    out.extend_from_slice(question.get(12..)?);
    // The owner is the question's name: a pointer to offset 12.
    out.extend_from_slice(&[0xc0, 0x0c]);
    out.extend_from_slice(qtype);
    out.extend_from_slice(&[0, 1]);
    out.extend_from_slice(&DEFAULT_TTL.to_be_bytes());
    out.extend_from_slice(&u16::try_from(address.len()).ok()?.to_be_bytes());
    out.extend_from_slice(address);
    if let Some((version_flags, options)) = opt {
        out.push(0);
        out.extend_from_slice(&41u16.to_be_bytes());
        out.extend_from_slice(&EDNS_PAYLOAD.to_be_bytes());
        // Extended RCODE 0, then the query's version and flags.
        out.push(0);
        out.extend_from_slice(version_flags);
        out.extend_from_slice(&u16::try_from(options.len()).ok()?.to_be_bytes());
        out.extend_from_slice(options);
    }
    Some(out)
}

/// The OPT record that ends a plain query: root owner, type 41, RDATA made of whole options and
/// nothing after it. Returns the version and flags (the TTL's last three bytes) and the options,
/// or `None` for an option hickory parses into a value (NSID 3, DAU 5, ECS 8), which it may
/// write back differently.
fn plain_opt(rr: &[u8]) -> Option<(&[u8], &[u8])> {
    if rr.get(..3)? != [0, 0, 41] {
        return None;
    }
    let version_flags = rr.get(6..9)?;
    let rdlen = usize::from(u16::from_be_bytes([*rr.get(9)?, *rr.get(10)?]));
    let options = rr.get(11..)?;
    if options.len() != rdlen {
        return None;
    }
    let mut rest = options;
    while !rest.is_empty() {
        let code = u16::from_be_bytes([*rest.first()?, *rest.get(1)?]);
        let len = usize::from(u16::from_be_bytes([*rest.get(2)?, *rest.get(3)?]));
        if matches!(code, 3 | 5 | 8) {
            return None;
        }
        rest = rest.get(4 + len..)?;
    }
    Some((version_flags, options))
}

/// Whether `label` starts with `prefix`, ASCII case ignored.
fn has_prefix(label: &[u8], prefix: &[u8]) -> bool {
    label
        .get(..prefix.len())
        .is_some_and(|l| l.eq_ignore_ascii_case(prefix))
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
                        if sa.is_ipv6() {
                            // The destination of each datagram, and leave to send from it
                            // (the service addresses come from a local route, not from
                            // addresses of an interface: IPv6 wants free binding for that).
                            for (level, option) in [
                                (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO),
                                (libc::IPPROTO_IP, libc::IP_FREEBIND),
                            ] {
                                let one: libc::c_int = 1;
                                // SAFETY: `one` is a valid c_int and the length matches it.
                                let rc = unsafe {
                                    libc::setsockopt(
                                        s.as_raw_fd(),
                                        level,
                                        option,
                                        (&one as *const libc::c_int).cast(),
                                        mem::size_of::<libc::c_int>() as libc::socklen_t,
                                    )
                                };
                                if rc != 0 {
                                    return Err(io::Error::last_os_error());
                                }
                            }
                        }
                        Ok(s)
                    },
                    move |s| serve_udp_echo(&s, &stop),
                )?);
            }
        }
        Ok(Sink {
            _threads: Threads { stop, handles },
        })
    }
}

/// Echo UDP datagrams from the address each was sent to, as a real server does: a reply from
/// another address of this host (the one routing would pick) would not match the router's NAT
/// binding. A dual-stack socket gets that address as IPV6_PKTINFO (IPv4 ones mapped) and takes
/// it back the same way when sending.
fn serve_udp_echo(s: &UdpSocket, stop: &AtomicBool) {
    let fd = s.as_raw_fd();
    let mut buf = [0u8; 2048];
    // Room for an in6_pktinfo control message, aligned for cmsghdr.
    let mut control = [0u64; 16];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: plain C structs; zeroed is a valid start.
        let mut peer: libc::sockaddr_in6 = unsafe { mem::zeroed() };
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: as above.
        let mut msg: libc::msghdr = unsafe { mem::zeroed() };
        msg.msg_name = (&mut peer as *mut libc::sockaddr_in6).cast();
        msg.msg_namelen = mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = mem::size_of_val(&control);
        // SAFETY: every pointer in `msg` points at a live buffer of the length given.
        let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
        let Ok(n) = usize::try_from(n) else {
            continue;
        };
        let mut local: Option<libc::in6_pktinfo> = None;
        // SAFETY: the kernel filled `msg_controllen` bytes of `control`; the CMSG macros walk
        // within them, and the data of an IPV6_PKTINFO message is an in6_pktinfo (read
        // unaligned).
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::IPPROTO_IPV6 && (*c).cmsg_type == libc::IPV6_PKTINFO {
                    local = Some(std::ptr::read_unaligned(
                        libc::CMSG_DATA(c).cast::<libc::in6_pktinfo>(),
                    ));
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        let mut reply_iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: n.min(buf.len()),
        };
        msg.msg_iov = &mut reply_iov;
        msg.msg_control = std::ptr::null_mut();
        msg.msg_controllen = 0;
        if let Some(mut info) = local {
            info.ipi6_ifindex = 0;
            let size = mem::size_of::<libc::in6_pktinfo>() as libc::c_uint;
            msg.msg_control = control.as_mut_ptr().cast();
            // SAFETY: CMSG_SPACE only computes a length.
            msg.msg_controllen = unsafe { libc::CMSG_SPACE(size) } as usize;
            // SAFETY: `control` has room for one cmsghdr with an in6_pktinfo (CMSG_SPACE of it
            // is far below its 128 bytes); the data is written unaligned.
            unsafe {
                let c = libc::CMSG_FIRSTHDR(&msg);
                if !c.is_null() {
                    (*c).cmsg_level = libc::IPPROTO_IPV6;
                    (*c).cmsg_type = libc::IPV6_PKTINFO;
                    (*c).cmsg_len = libc::CMSG_LEN(size) as usize;
                    std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::in6_pktinfo>(), info);
                }
            }
        }
        // SAFETY: `msg` points at the peer address, the received bytes and (maybe) the control
        // message built above, all alive for the call.
        unsafe {
            libc::sendmsg(fd, &msg, 0);
        }
    }
}

/// Open a TCP connection from inside `ns` (a thread enters it) from local port `from_port`
/// (0: any), wait for the handshake, close. Returns the local port.
pub fn tcp_connect_from(
    ns: &Netns,
    from_port: u16,
    to: SocketAddr,
    timeout: Duration,
) -> io::Result<u16> {
    netns::on_thread(ns.name(), "lab-connect", move || {
        let s = tcp_connect_bound(from_port, to, timeout)?;
        Ok(s.local_addr()?.port())
    })
}

/// A TCP connection from local port `from_port` (0: any) of the calling thread's namespace.
pub fn tcp_connect_bound(
    from_port: u16,
    to: SocketAddr,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let family = if to.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let stream = unsafe { <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    if from_port != 0 {
        let one: libc::c_int = 1;
        // SAFETY: `one` is a valid c_int and the length matches it.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                (&one as *const libc::c_int).cast(),
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let local = if to.is_ipv4() {
            SocketAddr::from(([0u8; 4], from_port))
        } else {
            SocketAddr::from(([0u16; 8], from_port))
        };
        let (storage, len) = sockaddr(local);
        // SAFETY: `storage` holds a sockaddr of `len` bytes for this family.
        let rc = unsafe { libc::bind(fd, (&storage as *const libc::sockaddr_storage).cast(), len) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    stream.set_nonblocking(true)?;
    let (storage, len) = sockaddr(to);
    // SAFETY: as above.
    let rc = unsafe { libc::connect(fd, (&storage as *const libc::sockaddr_storage).cast(), len) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect to {to}"),
            ));
        }
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if let Some(e) = stream.take_error()? {
            return Err(e);
        }
    }
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// A socket address as the C structs the kernel takes.
fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; zeroed is a valid start.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned for it.
            let sin = unsafe {
                &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>()
            };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: sockaddr_storage is larger than sockaddr_in6 and suitably aligned for it.
            let sin6 = unsafe {
                &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// Send one UDP datagram from inside `ns` from local port `from_port` (0: any) and wait for
/// its echo. Returns the local port.
pub fn udp_exchange_from(
    ns: &Netns,
    from_port: u16,
    to: SocketAddr,
    timeout: Duration,
) -> io::Result<u16> {
    netns::on_thread(ns.name(), "lab-udp", move || {
        let any: SocketAddr = if to.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], from_port))
        } else {
            SocketAddr::from(([0u16; 8], from_port))
        };
        let s = UdpSocket::bind(any)?;
        s.set_read_timeout(Some(timeout))?;
        s.send_to(b"nfqmark lab flow", to)?;
        let mut buf = [0u8; 64];
        s.recv_from(&mut buf)?;
        Ok(s.local_addr()?.port())
    })
}

/// Answer UDP queries in bursts: one `recvmmsg` takes up to [`BATCH`] waiting queries (blocking
/// for the first only until the socket's read timeout, so `stop` is checked every [`POLL`]),
/// one `sendmmsg` sends their answers.
fn serve_udp(socket: UdpSocket, stop: &AtomicBool) {
    let fd = socket.as_raw_fd();
    // Zeroed memory from the allocator: pages the kernel never writes stay unbacked.
    let mut bufs = vec![0u8; BATCH * DGRAM];
    // SAFETY: all-zero is a valid value for these plain C structs.
    let zeroed = unsafe { mem::zeroed::<(libc::sockaddr_storage, libc::iovec, libc::mmsghdr)>() };
    let mut peers = vec![zeroed.0; BATCH];
    let mut recv_iov = vec![zeroed.1; BATCH];
    let mut recv_hdrs = vec![zeroed.2; BATCH];
    let mut send_iov = vec![zeroed.1; BATCH];
    let mut send_hdrs = vec![zeroed.2; BATCH];
    let mut replies: Vec<(usize, Vec<u8>)> = Vec::with_capacity(BATCH);
    while !stop.load(Ordering::Relaxed) {
        for (i, (hdr, iov)) in recv_hdrs.iter_mut().zip(recv_iov.iter_mut()).enumerate() {
            iov.iov_base = bufs.as_mut_ptr().wrapping_add(i * DGRAM).cast();
            iov.iov_len = DGRAM;
            hdr.msg_hdr.msg_iov = iov;
            hdr.msg_hdr.msg_iovlen = 1;
            hdr.msg_hdr.msg_name = peers.as_mut_ptr().wrapping_add(i).cast();
            hdr.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        }
        // SAFETY: each of the BATCH headers points at its own iovec, over its own DGRAM bytes of
        // `bufs`, and at its own sockaddr_storage with the length of one; all of them outlive the
        // call.
        let got = unsafe {
            libc::recvmmsg(
                fd,
                recv_hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        let Ok(got) = usize::try_from(got) else {
            // The read timeout (EAGAIN) or a signal: check `stop`. Anything else: do not spin.
            let e = io::Error::last_os_error();
            if !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
            ) {
                thread::sleep(Duration::from_millis(1));
            }
            continue;
        };
        replies.clear();
        for (i, hdr) in recv_hdrs.iter().take(got.min(BATCH)).enumerate() {
            let start = i * DGRAM;
            let len = (hdr.msg_len as usize).min(DGRAM);
            if let Some(reply) = bufs.get(start..start + len).and_then(|q| answer(q, true)) {
                replies.push((i, reply));
            }
        }
        let n = replies.len();
        for ((hdr, iov), (i, reply)) in send_hdrs.iter_mut().zip(send_iov.iter_mut()).zip(&replies)
        {
            iov.iov_base = reply.as_ptr().cast_mut().cast();
            iov.iov_len = reply.len();
            hdr.msg_hdr.msg_iov = iov;
            hdr.msg_hdr.msg_iovlen = 1;
            hdr.msg_hdr.msg_name = peers.as_mut_ptr().wrapping_add(*i).cast();
            hdr.msg_hdr.msg_namelen = recv_hdrs.get(*i).map_or(0, |h| h.msg_hdr.msg_namelen);
        }
        send_all(fd, send_hdrs.get_mut(..n).unwrap_or_default());
    }
}

/// Send every prepared datagram, calling `sendmmsg` again for what a call did not send. A
/// datagram the kernel refuses (the call fails on it) is dropped, as a lone `send_to`'s error
/// would be: the client retries.
fn send_all(fd: std::os::fd::RawFd, hdrs: &mut [libc::mmsghdr]) {
    let mut sent = 0;
    while let Some(rest) = hdrs.get_mut(sent..)
        && !rest.is_empty()
    {
        // SAFETY: each header in `rest` points at one iovec over a reply and at a peer address
        // with its length, all alive until this function returns; the count is `rest.len()`.
        let rc = unsafe { libc::sendmmsg(fd, rest.as_mut_ptr(), rest.len() as libc::c_uint, 0) };
        match usize::try_from(rc) {
            Ok(n) if n > 0 => sent += n,
            Err(_) if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
            _ => sent += 1,
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

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use hickory_proto::op::{Edns, OpCode, Query};
    use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};

    use super::*;

    fn query(name: &str, qtype: RecordType, rd: bool, edns: Option<Edns>) -> Vec<u8> {
        let mut msg = Message::new(0xbeef, MessageType::Query, OpCode::Query);
        msg.metadata.recursion_desired = rd;
        msg.add_query(Query::query(
            Name::from_ascii(name).expect("test name"),
            qtype,
        ));
        msg.edns = edns;
        msg.to_vec().expect("test query")
    }

    fn edns(dnssec_ok: bool, options: Vec<EdnsOption>) -> Edns {
        let mut e = Edns::new();
        e.set_max_payload(4096);
        e.set_dnssec_ok(dnssec_ok);
        for o in options {
            e.options_mut().insert(o);
        }
        e
    }

    /// Whether the plain path took the query; when it did, its answer must be the full path's,
    /// byte for byte, and parse to the same message.
    fn plain_matches_full(q: &[u8]) -> bool {
        let full = full_answer(q, true);
        let Some(plain) = plain_answer(q) else {
            return false;
        };
        let full = full.expect("the full path answers what the plain path answers");
        let (p, f) = (
            Message::from_vec(&plain).expect("plain answer parses"),
            Message::from_vec(&full).expect("full answer parses"),
        );
        assert_eq!(p.metadata, f.metadata, "header");
        assert_eq!(p.queries, f.queries, "question");
        assert_eq!(p.answers, f.answers, "records, TTL, address");
        assert_eq!(p.edns, f.edns, "EDNS");
        assert_eq!(plain, full, "bytes");
        true
    }

    #[test]
    fn plain_a_and_aaaa_match_the_full_path() {
        for (name, qtype) in [
            ("a-r1c1-123456.nfqm.example.", RecordType::A),
            ("a-r1c1-123456.nfqm.example.", RecordType::AAAA),
            ("x.", RecordType::A),
            ("flows.nfqm.example.", RecordType::AAAA),
        ] {
            for rd in [false, true] {
                let q = query(name, qtype, rd, None);
                assert!(plain_matches_full(&q), "{name} {qtype} rd={rd}");
                let m = Message::from_vec(&plain_answer(&q).unwrap_or_default()).expect("parses");
                assert_eq!(m.metadata.id, 0xbeef);
                assert!(m.metadata.authoritative && m.metadata.recursion_available);
                assert_eq!(m.metadata.recursion_desired, rd);
                assert_eq!(m.answers.len(), 1);
                assert_eq!(m.answers[0].ttl, DEFAULT_TTL);
            }
        }
    }

    #[test]
    fn mixed_case_name_is_answered_with_its_case_kept() {
        let q = query("A-R1c1-123456.NfQm.ExAmPlE.", RecordType::A, true, None);
        assert!(plain_matches_full(&q));
        let m = Message::from_vec(&plain_answer(&q).unwrap_or_default()).expect("parses");
        assert_eq!(
            m.queries[0].name().to_ascii(),
            "A-R1c1-123456.NfQm.ExAmPlE."
        );
    }

    #[test]
    fn opt_record_is_answered_as_the_full_path_does() {
        for e in [
            edns(false, vec![]),
            edns(true, vec![]),
            // A cookie (10) and an unassigned code: kept as raw bytes by hickory.
            edns(
                true,
                vec![EdnsOption::Unknown(10, vec![1, 2, 3, 4, 5, 6, 7, 8])],
            ),
            edns(false, vec![EdnsOption::Unknown(65001, vec![])]),
        ] {
            for qtype in [RecordType::A, RecordType::AAAA] {
                let q = query("www.nfqm.example.", qtype, true, Some(e.clone()));
                assert!(plain_matches_full(&q), "{e:?} {qtype}");
                let m = Message::from_vec(&plain_answer(&q).unwrap_or_default()).expect("parses");
                let got = m.edns.expect("OPT in the answer");
                assert_eq!(got.max_payload(), EDNS_PAYLOAD);
                assert_eq!(got.flags().dnssec_ok, e.flags().dnssec_ok);
            }
        }
    }

    #[test]
    fn client_subnet_option_goes_to_the_full_path() {
        let subnet = ClientSubnet::new(IpAddr::V4(Ipv4Addr::new(198, 18, 1, 0)), 24, 0);
        let q = query(
            "www.nfqm.example.",
            RecordType::A,
            true,
            Some(edns(false, vec![EdnsOption::Subnet(subnet)])),
        );
        assert!(!plain_matches_full(&q));
        assert!(answer(&q, true).is_some());
    }

    #[test]
    fn special_labels_go_to_the_full_path() {
        for name in [
            "ip-198-18-9-81.nfqm.example.",
            "IP-198-18-9-81.nfqm.example.",
            "ip6-2001-db8-9--81.nfqm.example.",
            "alias-ip-198-18-9-81.nfqm.example.",
            "ttl-5.nfqm.example.",
            "www.ttl-5.nfqm.example.",
            "tc-big.nfqm.example.",
            "etc-big.nfqm.example.",
            "TC-big.nfqm.example.",
        ] {
            for qtype in [RecordType::A, RecordType::AAAA] {
                for e in [None, Some(edns(false, vec![]))] {
                    let q = query(name, qtype, true, e);
                    assert!(!plain_matches_full(&q), "{name} {qtype}");
                    assert!(answer(&q, true).is_some(), "{name}");
                    assert!(answer(&q, false).is_some(), "{name}");
                }
            }
        }
    }

    #[test]
    fn tc_label_still_truncates_over_udp_only() {
        let q = query("tc-big.nfqm.example.", RecordType::A, true, None);
        let udp = Message::from_vec(&answer(&q, true).unwrap_or_default()).expect("parses");
        assert!(udp.metadata.truncation && udp.answers.is_empty());
        let tcp = Message::from_vec(&answer(&q, false).unwrap_or_default()).expect("parses");
        assert!(!tcp.metadata.truncation && tcp.answers.len() == 1);
    }

    #[test]
    fn other_types_and_shapes_go_to_the_full_path() {
        for qtype in [RecordType::MX, RecordType::TXT, RecordType::ANY] {
            let q = query("www.nfqm.example.", qtype, true, None);
            assert!(!plain_matches_full(&q), "{qtype}");
        }
        // The root.
        assert!(!plain_matches_full(&query(".", RecordType::A, true, None)));
        // Two questions.
        let mut msg = Message::new(7, MessageType::Query, OpCode::Query);
        msg.add_query(Query::query(
            Name::from_ascii("a.nfqm.example.").expect("name"),
            RecordType::A,
        ));
        msg.add_query(Query::query(
            Name::from_ascii("b.nfqm.example.").expect("name"),
            RecordType::A,
        ));
        let two = msg.to_vec().expect("two questions");
        assert!(!plain_matches_full(&two));
        assert!(answer(&two, true).is_some());
        // A compressed name: "www" then a pointer to offset 11, the zero low byte of ARCOUNT.
        let mut compressed = vec![0, 7, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        compressed.extend_from_slice(b"\x03www\xc0\x0b\x00\x01\x00\x01");
        assert!(!plain_matches_full(&compressed));
        let full = Message::from_vec(&answer(&compressed, true).unwrap_or_default());
        assert_eq!(full.expect("parses").answers.len(), 1);
    }

    #[test]
    fn malformed_or_non_queries_are_declined() {
        let q = query("www.nfqm.example.", RecordType::A, true, None);
        for cut in 0..q.len() {
            assert!(plain_answer(&q[..cut]).is_none(), "cut at {cut}");
        }
        let mut trailing = q.clone();
        trailing.push(0);
        assert!(plain_answer(&trailing).is_none());
        let mut response = q.clone();
        response[2] |= 0x80;
        assert!(plain_answer(&response).is_none());
        assert!(answer(&response, true).is_none());
        let mut notify = q.clone();
        notify[2] |= 4 << 3;
        assert!(plain_answer(&notify).is_none());
        let mut class_ch = q.clone();
        let last = class_ch.len() - 1;
        class_ch[last] = 3;
        assert!(!plain_matches_full(&class_ch));
        let with_opt = query(
            "www.nfqm.example.",
            RecordType::A,
            true,
            Some(edns(false, vec![EdnsOption::Unknown(10, vec![1, 2])])),
        );
        // The option's length one byte longer than its data: not whole options.
        let mut bad_opt = with_opt.clone();
        let at = bad_opt.len() - 3;
        bad_opt[at] += 1;
        assert!(plain_answer(&bad_opt).is_none());
    }

    #[test]
    fn mutated_queries_answered_plainly_match_the_full_path() {
        let seeds = [
            query("www.nfqm.example.", RecordType::A, true, None),
            query(
                "Ab.Ip-1.x.",
                RecordType::AAAA,
                false,
                Some(edns(true, vec![])),
            ),
            query(
                "t.c-.nfqm.example.",
                RecordType::A,
                true,
                Some(edns(false, vec![EdnsOption::Unknown(10, vec![9; 8])])),
            ),
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut taken = 0;
        for round in 0..30_000 {
            let mut q = seeds[round % seeds.len()].clone();
            for _ in 0..=(next() % 3) {
                let at = (next() as usize) % q.len();
                q[at] = match next() % 4 {
                    0 => b'-',
                    1 => q[at] ^ 0x20,
                    _ => next() as u8,
                };
            }
            taken += usize::from(plain_matches_full(&q));
        }
        assert!(taken > 1_000, "only {taken} mutated queries taken");
    }

    #[test]
    fn udp_bursts_are_answered_to_each_sender_and_stop_ends_the_loop() {
        for local in ["127.0.0.1:0", "[::1]:0"] {
            // No IPv6 loopback in some sandboxes: nothing to test there.
            let Ok(server) = UdpSocket::bind(local) else {
                continue;
            };
            server.set_read_timeout(Some(POLL)).expect("timeout");
            let to = server.local_addr().expect("address");
            let stop = Arc::new(AtomicBool::new(false));
            let stop_server = Arc::clone(&stop);
            let handle = thread::spawn(move || serve_udp(server, &stop_server));
            let clients: Vec<UdpSocket> = (0..3)
                .map(|_| UdpSocket::bind(local).expect("client"))
                .collect();
            // More than a burst, from three senders, sent before any is read.
            let n = 3 * BATCH as u16;
            for id in 0..n {
                let mut q = nfqmark_testkit::dns_query(id, "www.nfqm.example");
                if id.is_multiple_of(7) {
                    q = query("tc-x.nfqm.example.", RecordType::A, true, None);
                    q[..2].copy_from_slice(&id.to_be_bytes());
                }
                clients[usize::from(id) % 3].send_to(&q, to).expect("send");
            }
            let mut ids = Vec::new();
            for (k, c) in clients.iter().enumerate() {
                c.set_read_timeout(Some(Duration::from_secs(5)))
                    .expect("timeout");
                let mut buf = [0u8; 512];
                for _ in 0..(0..n).filter(|id| usize::from(*id) % 3 == k).count() {
                    let len = c.recv(&mut buf).expect("answer");
                    let m = Message::from_vec(&buf[..len]).expect("parses");
                    assert_eq!(usize::from(m.metadata.id) % 3, k, "answer to its sender");
                    assert_eq!(m.metadata.truncation, m.metadata.id.is_multiple_of(7));
                    ids.push(m.metadata.id);
                }
            }
            ids.sort_unstable();
            assert_eq!(ids, (0..n).collect::<Vec<_>>(), "{local}");
            stop.store(true, Ordering::Relaxed);
            handle.join().expect("serve_udp ends");
        }
    }

    /// The userspace cost of one answer, plain and full path (`cargo test --release -p
    /// nfqmark-lab --lib upstream -- --ignored --nocapture`). The e2e bench prints the same for
    /// `answer`.
    #[test]
    #[ignore = "a measurement: run with --ignored --nocapture"]
    fn answer_cost() {
        let q = nfqmark_testkit::dns_query(0x1234, "a-r1c1-123456.nfqm.example");
        let n = 200_000u32;
        for (what, f) in [
            (
                "answer (plain path)",
                answer as fn(&[u8], bool) -> Option<Vec<u8>>,
            ),
            ("full_answer (hickory)", full_answer),
        ] {
            let start = Instant::now();
            for _ in 0..n {
                std::hint::black_box(f(std::hint::black_box(&q), true));
            }
            let ns = start.elapsed().as_nanos() as f64 / f64::from(n);
            println!("{what}: {ns:.0} ns per answer");
        }
    }
}
