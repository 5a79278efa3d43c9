//! Which client connection a forking resolver's upstream TCP connection serves, from the
//! kernel: the resolver's upstream socket (the one sending a SYN) and the accepted socket of the
//! client whose query caused it are held by the same process (dnsmasq forks one process per
//! client TCP connection).
//!
//! This module owns two lookups and the search that joins them:
//! - a TCP socket by its exact 4-tuple, over `NETLINK_SOCK_DIAG` (`inet_diag`, one
//!   `SOCK_DIAG_BY_FAMILY` request per tuple, a question's candidates in one datagram):
//!   its inode, uid, state and cookie ([`wire`] encodes and parses, pure);
//! - which process holds a socket inode, from the `socket:[INODE]` links in `/proc/PID/fd`:
//!   first the processes recent answers point at (the last holders, and the newest children of
//!   their parents), then every process, newest first. The hints only order the search; every
//!   answer is read from the fd tables at the time of the question (pids are reused).
//!
//! [`Resolver::same_process`] is meant for the worker to call off the pairing lock, only when
//! the table says a SYN is ambiguous; the SYN stays queued meanwhile. Measured (release, Linux
//! 6.18, 200 processes, 2 loaded cores; `cost_with_200_processes` in tests/sockdiag_netns.rs):
//! one lookup ~3.3 µs; a dnsmasq SYN with the hints learned ~0.1 ms (one or two fd tables of
//! ~25 µs each, 0.1-0.15 ms median); with no hints 0.35-0.65 ms (newest first: the new child
//! is among the newest processes); a scan of every process 2-6 ms median for ~130 of them
//! (p90 up to 10 ms under that load), cut off at [`SCAN_BUDGET`].
//!
//! It must never: decide anything about packets, panic on what the kernel or `/proc` says
//! (every length is checked; a process that exits mid-read is skipped), trust a cached pid for
//! an answer, believe a holder outside our network namespace, or size an allocation from a
//! number read off the wire. All `unsafe` and every system call are in `sys` at the bottom.
//!
//! Kernel facts this relies on (Linux 6.18; file and function named):
//! - an exact request (no `NLM_F_DUMP`) is answered by `tcp_diag_dump_one` →
//!   `tcp_diag_find_one_icsk` (net/ipv4/tcp_diag.c; `inet_diag_find_one_icsk` in
//!   net/ipv4/inet_diag.c in older kernels, same lookup), which looks the tuple up as an incoming packet would:
//!   `inet_lookup(net, .., saddr = idiag_dst, sport = idiag_dport, daddr = idiag_src,
//!   dport = idiag_sport, idiag_if)`. So `idiag_src`/`idiag_sport` are the socket's LOCAL end,
//!   `idiag_dst`/`idiag_dport` its REMOTE end; ports and addresses in network byte order,
//!   `idiag_if`, the cookie, uid and inode in host order (include/uapi/linux/inet_diag.h);
//! - `inet_lookup` = `__inet_lookup_established`, then `__inet_lookup_listener`
//!   (include/net/inet_hashtables.h): a tuple with no connection but a listener on its local
//!   address and port (the resolver's port 53) answers with the LISTENING socket. Replies are
//!   therefore checked to carry the asked tuple exactly and not be a listener;
//! - the cookie must be `INET_DIAG_NOCOOKIE` in both words, else `sock_diag_check_cookie`
//!   (net/core/sock_diag.c) compares it with the socket's and the lookup fails with `ENOENT`;
//! - an IPv6 request whose two addresses are v4-mapped is looked up in the IPv4 table, and a
//!   dual-stack IPv6 socket talking to an IPv4 peer is found by an IPv4 request and reported as
//!   family `AF_INET6` with v4-mapped addresses (`inet_diag_msg_common_fill`);
//! - `connect` hashes the socket in the established table (`inet_hash_connect`, state
//!   `SYN_SENT`) before `tcp_connect` sends the SYN, so the socket of a SYN queued in OUTPUT is
//!   found; an accepted socket has an inode only once `accept` gave it a `struct socket` (before
//!   that, and for request and time-wait sockets, `idiag_inode` is 0: `inet_req_diag_fill`,
//!   `inet_twsk_diag_fill`);
//! - the answer is produced synchronously inside our `sendto` (`netlink_unicast_kernel` runs
//!   `sock_diag_rcv` in the sender's context), one reply datagram per request, success or
//!   error (`netlink_rcv_skb` acknowledges every failed request even without `NLM_F_ACK`);
//!   sock_diag answers for the network namespace the netlink socket was created in;
//! - socket inodes come from `get_next_ino()` (`sock_alloc`, net/socket.c), an `unsigned int`,
//!   so `idiag_inode` (u32, from `sock_i_ino`) is the whole inode; `/proc/PID/fd/N` links read
//!   `socket:[INODE]` (`sockfs_dname`); reading them, and `/proc/PID/ns/net`, needs
//!   `PTRACE_MODE_READ` on the process (root, or `CAP_SYS_PTRACE`; `proc_fd_access_allowed`);
//! - `/proc/PID/task/PID/children` lists the children of that thread, oldest first
//!   (`CONFIG_PROC_CHILDREN`; fs/proc/array.c `get_children_pid`; fork adds a child at the
//!   tail of its parent's list).

use std::io;
#[cfg(test)]
use std::net::Ipv6Addr;
use std::net::{IpAddr, SocketAddr};

/// A TCP connection as one end sees it: `(local, remote)`.
pub type Ends = (SocketAddr, SocketAddr);

/// Most candidates' requests sent in one datagram (more are sent in several).
const BATCH: usize = 16;
/// How long a scan of every process may take by default before it gives up
/// ([`Link::NoHolder`]): the SYN waits in the queue meanwhile. About 400 processes at the
/// ~50 µs a process's fd table costs (more with many fds).
pub const SCAN_BUDGET: std::time::Duration = std::time::Duration::from_millis(20);
/// Most children of a hinted parent read before the full scan takes over.
const CHILDREN_LIMIT: usize = 64;
/// Recent holders (and their parents) remembered as hints.
const HINTS: usize = 4;

/// TCP states as the kernel numbers them (`include/net/tcp_states.h`).
pub mod state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const LISTEN: u8 = 10;
    /// A request socket (a connection's SYN received, no full socket yet).
    pub const NEW_SYN_RECV: u8 = 12;
}

// ---------------------------------------------------------------------------------------------
// The answer.
// ---------------------------------------------------------------------------------------------

/// What the kernel says about a SYN and the candidate client connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// The process that holds the SYN's socket holds exactly this candidate's socket.
    Candidate { index: usize, pid: u32 },
    /// The holder holds several candidates' sockets: a resolver that serves many clients in
    /// one process (unbound, knot-resolver), or the same connection given twice.
    Several { pid: u32 },
    /// The holder holds none of the candidates' sockets, or none of them exists any more
    /// (`pid` is then `None`: no process was searched).
    NoCandidate { pid: Option<u32> },
    /// No process of our network namespace holds the SYN's socket (it was closed meanwhile,
    /// or its holder lives in another pid namespace, or the scan ran out of time:
    /// [`Stats::gave_up`]).
    NoHolder,
    /// No socket has the SYN's tuple: it is gone, or the tuple is not the socket's own (NAT
    /// applied before the queue).
    NoSynSocket,
}

impl Link {
    /// The chosen candidate, if the kernel named exactly one.
    pub fn index(self) -> Option<usize> {
        match self {
            Link::Candidate { index, .. } => Some(index),
            _ => None,
        }
    }
}

/// Costs of the questions asked so far (for the report and the metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// [`Resolver::same_process`] calls.
    pub questions: u64,
    /// Holders found among the hinted processes.
    pub hint_hits: u64,
    /// Searches that went on to every process.
    pub full_scans: u64,
    /// Fd tables read.
    pub procs_read: u64,
    /// Fd tables we were not allowed to read (missing `CAP_SYS_PTRACE`).
    pub denied: u64,
    /// Holders skipped because they live in another network namespace.
    pub foreign: u64,
    /// Scans of every process that ran out of time ([`Resolver::set_budget`]).
    pub gave_up: u64,
}

// ---------------------------------------------------------------------------------------------
// The resolver: lookups, search, hints.
// ---------------------------------------------------------------------------------------------

/// Asks the kernel which client connection a SYN's process serves. Open it in the network
/// namespace of the resolver (the router's); it answers for that namespace whichever thread
/// calls it later. One per worker thread, or behind a mutex: the calls take `&mut self`.
#[derive(Debug)]
pub struct Resolver {
    sock: sys::DiagSocket,
    /// Our network namespace (`/proc/thread-self/ns/net` when opened); `None` when it could
    /// not be read, and then no holder's namespace can be checked either.
    netns: Option<u64>,
    seq: u32,
    budget: std::time::Duration,
    /// Most recent first.
    holders: [Option<u32>; HINTS],
    parents: [Option<u32>; HINTS],
    stats: Stats,
    /// Scratch: one process's socket inodes, the pids of a scan, the looked-up sockets.
    inodes: Vec<u64>,
    pids: Vec<u32>,
    checked: Vec<u32>,
    found: Vec<Option<SockInfo>>,
}

/// One TCP socket as `inet_diag` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SockInfo {
    /// [`state`] number.
    pub state: u8,
    /// Inode of its `struct socket`, 0 when it has none (request, time-wait, not accepted).
    pub inode: u32,
    /// Uid that created it (an accepted socket inherits the listener's), in our user namespace.
    pub uid: u32,
    pub cookie: u64,
}

impl Resolver {
    /// Open a sock_diag socket in the calling thread's network namespace.
    pub fn new() -> io::Result<Resolver> {
        let sock = sys::DiagSocket::open()?;
        let netns = sys::read_link("/proc/thread-self/ns/net")
            .ok()
            .and_then(|l| procfs::netns_id(&l));
        Ok(Resolver {
            sock,
            netns,
            seq: 1,
            budget: SCAN_BUDGET,
            holders: [None; HINTS],
            parents: [None; HINTS],
            stats: Stats::default(),
            inodes: Vec::new(),
            pids: Vec::new(),
            checked: Vec::new(),
            found: Vec::new(),
        })
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// How long a scan of every process may take (default [`SCAN_BUDGET`]).
    pub fn set_budget(&mut self, budget: std::time::Duration) {
        self.budget = budget;
    }

    /// Forget the hints: the next question scans every process (for measurements).
    pub fn clear_hints(&mut self) {
        self.holders = [None; HINTS];
        self.parents = [None; HINTS];
    }

    /// The TCP socket with exactly these ends (`local` = the socket's own address and port),
    /// or `None`. A listener is never returned for a connection's tuple.
    pub fn lookup(&mut self, ends: Ends) -> io::Result<Option<SockInfo>> {
        self.lookup_all(&[ends])?;
        Ok(self.found.first().copied().flatten())
    }

    /// Which of `candidates` (client connections as the resolver's side sees them: local =
    /// the resolver's address and port 53 after any DNAT, remote = the client's address and
    /// port) is held by the process that holds the socket of the SYN with ends `syn` (local =
    /// the SYN's source, remote = its destination, as queued in OUTPUT before any NAT).
    ///
    /// Errors are the netlink socket's, and `PermissionDenied` when no holder was found and
    /// some process's fd table could not be read (nfqmark needs `CAP_SYS_PTRACE` or root).
    pub fn same_process(&mut self, syn: Ends, candidates: &[Ends]) -> io::Result<Link> {
        self.stats.questions += 1;
        let Some(syn_sock) = self.lookup(syn)? else {
            return Ok(Link::NoSynSocket);
        };
        if syn_sock.inode == 0 {
            return Ok(Link::NoSynSocket);
        }
        self.lookup_all(candidates)?;
        let wanted: Vec<Option<u64>> = self
            .found
            .iter()
            .map(|s| s.filter(|s| s.inode != 0).map(|s| u64::from(s.inode)))
            .collect();
        if wanted.iter().all(Option::is_none) {
            return Ok(Link::NoCandidate { pid: None });
        }
        let denied_before = self.stats.denied;
        match self.find_holder(u64::from(syn_sock.inode), &wanted)? {
            Some((pid, parent, link)) => {
                self.remember(pid, parent);
                Ok(link)
            }
            None if self.stats.denied > denied_before => Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "no readable process holds the SYN's socket, and some /proc/PID/fd could not \
                 be read: run nfqmark as root or grant it CAP_SYS_PTRACE",
            )),
            None => Ok(Link::NoHolder),
        }
    }

    /// Look up every tuple into `self.found` (same order), a batch of requests per datagram.
    fn lookup_all(&mut self, tuples: &[Ends]) -> io::Result<()> {
        self.found.clear();
        self.found.resize(tuples.len(), None);
        for (chunk_no, chunk) in tuples.chunks(BATCH).enumerate() {
            let first = self.seq;
            self.seq = self.seq.wrapping_add(BATCH as u32);
            let mut datagram = Vec::with_capacity(chunk.len() * wire::REQUEST_LEN);
            for (i, &(local, remote)) in chunk.iter().enumerate() {
                let req = wire::encode_request(first.wrapping_add(i as u32), local, remote)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
                datagram.extend_from_slice(&req);
            }
            self.sock.send(&datagram)?;
            let base = chunk_no * BATCH;
            let mut left = chunk.len();
            while left > 0 {
                let got = self.sock.recv()?;
                for reply in wire::Replies::new(got) {
                    let (seq, reply) =
                        reply.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    let i = seq.wrapping_sub(first) as usize;
                    let Some(&asked) = chunk.get(i) else {
                        continue; // a late answer to an earlier question
                    };
                    let Some(slot) = self.found.get_mut(base + i) else {
                        continue;
                    };
                    left = left.saturating_sub(1);
                    match reply {
                        wire::Reply::Socket(msg) if msg.is_exactly(asked) => {
                            *slot = Some(SockInfo {
                                state: msg.state,
                                inode: msg.inode,
                                uid: msg.uid,
                                cookie: msg.cookie,
                            });
                        }
                        wire::Reply::Socket(_) | wire::Reply::Error(libc::ENOENT) => {}
                        wire::Reply::Error(errno) => {
                            return Err(io::Error::from_raw_os_error(errno));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Find a process of our namespace holding socket `syn`, and what it holds of `wanted`;
    /// with the holder's parent when the search knows it.
    fn find_holder(
        &mut self,
        syn: u64,
        wanted: &[Option<u64>],
    ) -> io::Result<Option<(u32, Option<u32>, Link)>> {
        self.checked.clear();
        // 1. The newest children of the last holders' parents (dnsmasq: the child it forked
        //    for this client's connection).
        let mut kids = std::mem::take(&mut self.pids);
        let mut result = None;
        'parents: for parent in self.parents.into_iter().flatten() {
            kids.clear();
            let Ok(text) = sys::read_to_vec(&format!("/proc/{parent}/task/{parent}/children"))
            else {
                continue;
            };
            kids.extend(procfs::pids(&text).take(CHILDREN_LIMIT + 1));
            if kids.len() > CHILDREN_LIMIT {
                continue; // a parent of everything (a shell, a supervisor): the scan's job
            }
            for &pid in kids.iter().rev() {
                if let Some((pid, link)) = self.check_hinted(pid, syn, wanted) {
                    result = Some((pid, Some(parent), link));
                    break 'parents;
                }
            }
        }
        self.pids = kids;
        // 2. The last holders themselves (a resolver that serves many connections in one
        //    process, or a child whose parent we could not read).
        if result.is_none() {
            for pid in self.holders.into_iter().flatten() {
                if let Some((pid, link)) = self.check_hinted(pid, syn, wanted) {
                    result = Some((pid, None, link));
                    break;
                }
            }
        }
        if result.is_some() {
            self.stats.hint_hits += 1;
            return Ok(result);
        }
        // 3. Every process not read yet, newest first (a resolver's new child has the highest
        //    pid until pids wrap), within the time budget.
        self.stats.full_scans += 1;
        let started = std::time::Instant::now();
        let mut all = std::mem::take(&mut self.pids);
        all.clear();
        let listed = sys::list_pids(&mut all);
        all.sort_unstable_by(|a, b| b.cmp(a));
        self.checked.sort_unstable();
        for &pid in &all {
            if started.elapsed() >= self.budget {
                self.stats.gave_up += 1;
                break;
            }
            if self.checked.binary_search(&pid).is_ok() {
                continue;
            }
            if let Some((pid, link)) = self.check(pid, syn, wanted) {
                result = Some((pid, None, link));
                break;
            }
        }
        self.pids = all;
        listed?;
        Ok(result)
    }

    /// [`Resolver::check`] once per question for the hinted pids.
    fn check_hinted(&mut self, pid: u32, syn: u64, wanted: &[Option<u64>]) -> Option<(u32, Link)> {
        if self.checked.contains(&pid) {
            return None;
        }
        self.checked.push(pid);
        self.check(pid, syn, wanted)
    }

    /// Read `pid`'s fd table: when it holds `syn` and lives in our namespace, the answer.
    fn check(&mut self, pid: u32, syn: u64, wanted: &[Option<u64>]) -> Option<(u32, Link)> {
        self.stats.procs_read += 1;
        self.inodes.clear();
        if let Err(e) = sys::socket_inodes(pid, &mut self.inodes) {
            if e.kind() == io::ErrorKind::PermissionDenied {
                self.stats.denied += 1;
            }
            return None;
        }
        let link = procfs::judge(pid, &self.inodes, syn, wanted)?;
        // Believe a holder only in our network namespace.
        let theirs = sys::read_link(&format!("/proc/{pid}/ns/net"))
            .ok()
            .and_then(|l| procfs::netns_id(&l));
        if self.netns.is_none() || theirs != self.netns {
            self.stats.foreign += 1;
            return None;
        }
        Some((pid, link))
    }

    /// Keep `pid` and its parent (read from `/proc/PID/stat` unless known) as hints for the
    /// next question.
    fn remember(&mut self, pid: u32, parent: Option<u32>) {
        push_front(&mut self.holders, pid);
        let parent = parent.or_else(|| {
            sys::read_to_vec(&format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| procfs::stat_ppid(&s))
        });
        // Not init or kthreadd: their children are the whole system (the full scan's job).
        if let Some(ppid) = parent.filter(|&p| p > 2) {
            push_front(&mut self.parents, ppid);
        }
    }
}

/// Put `pid` first in `ring`, once, dropping the oldest.
fn push_front(ring: &mut [Option<u32>; HINTS], pid: u32) {
    let at = ring
        .iter()
        .position(|&p| p == Some(pid))
        .unwrap_or(HINTS - 1);
    if let Some(head) = ring.get_mut(..=at) {
        head.rotate_right(1);
    }
    if let Some(first) = ring.first_mut() {
        *first = Some(pid);
    }
}

/// Whether two addresses are the same once v4-mapped IPv6 is read as IPv4.
fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    a.to_canonical() == b.to_canonical()
}

// ---------------------------------------------------------------------------------------------
// The wire format, pure.
// ---------------------------------------------------------------------------------------------

/// `inet_diag` requests and replies as bytes (include/uapi/linux/inet_diag.h,
/// include/uapi/linux/sock_diag.h). Every length is checked before it is read: any byte
/// string is safe to parse. No system calls, no `unsafe`.
pub mod wire {
    use std::fmt;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

    use super::{Ends, same_ip, state};
    use crate::nfnl::wire::{Frame, FrameError, error_code, next_frame};

    /// `SOCK_DIAG_BY_FAMILY`: the request type, and the type of its replies.
    pub const SOCK_DIAG_BY_FAMILY: u16 = 20;
    pub const NLMSG_ERROR: u16 = 2;
    pub const NLMSG_DONE: u16 = 3;
    pub const NLM_F_REQUEST: u16 = 1;
    /// Both cookie words: "any socket", no cookie check.
    pub const INET_DIAG_NOCOOKIE: u32 = !0;
    const NLMSG_HDRLEN: usize = 16;
    /// `struct inet_diag_req_v2`.
    const REQ_V2_LEN: usize = 56;
    /// `struct inet_diag_msg`.
    pub const MSG_LEN: usize = 72;
    /// One request: nlmsghdr + inet_diag_req_v2.
    pub const REQUEST_LEN: usize = NLMSG_HDRLEN + REQ_V2_LEN;
    const AF_INET: u8 = libc::AF_INET as u8;
    const AF_INET6: u8 = libc::AF_INET6 as u8;
    const IPPROTO_TCP: u8 = libc::IPPROTO_TCP as u8;

    /// Why a request cannot be encoded.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum EncodeError {
        /// One end IPv4, the other IPv6 (and not v4-mapped).
        MixedFamilies,
    }

    impl fmt::Display for EncodeError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                EncodeError::MixedFamilies => f.write_str(
                    "a TCP connection's two ends are both IPv4 or both IPv6 (v4-mapped counts as \
                     IPv4)",
                ),
            }
        }
    }

    /// The request for the TCP socket whose own end is `local` and peer `remote`.
    pub fn encode_request(
        seq: u32,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Result<[u8; REQUEST_LEN], EncodeError> {
        let (family, src, dst) = match (local.ip().to_canonical(), remote.ip().to_canonical()) {
            (IpAddr::V4(l), IpAddr::V4(r)) => (AF_INET, v4_field(l), v4_field(r)),
            (IpAddr::V6(l), IpAddr::V6(r)) => (AF_INET6, l.octets(), r.octets()),
            _ => return Err(EncodeError::MixedFamilies),
        };
        let mut out = [0u8; REQUEST_LEN];
        let mut w = Writer::new(&mut out);
        // nlmsghdr
        w.put(&(REQUEST_LEN as u32).to_ne_bytes());
        w.put(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        w.put(&NLM_F_REQUEST.to_ne_bytes());
        w.put(&seq.to_ne_bytes());
        w.put(&0u32.to_ne_bytes()); // port id: the kernel fills ours in
        // inet_diag_req_v2: family, protocol, no extensions, pad, every state
        w.put(&[family, IPPROTO_TCP, 0, 0]);
        w.put(&u32::MAX.to_ne_bytes());
        // inet_diag_sockid: our end is "src", the peer "dst"; ports big-endian
        w.put(&local.port().to_be_bytes());
        w.put(&remote.port().to_be_bytes());
        w.put(&src);
        w.put(&dst);
        w.put(&0u32.to_ne_bytes()); // any interface
        w.put(&INET_DIAG_NOCOOKIE.to_ne_bytes());
        w.put(&INET_DIAG_NOCOOKIE.to_ne_bytes());
        debug_assert_eq!(w.at, REQUEST_LEN);
        Ok(out)
    }

    fn v4_field(a: Ipv4Addr) -> [u8; 16] {
        let mut f = [0u8; 16];
        if let Some(head) = f.first_chunk_mut::<4>() {
            *head = a.octets();
        }
        f
    }

    /// Writes into a fixed buffer; bytes past its end are dropped (the caller sizes it).
    struct Writer<'a> {
        buf: &'a mut [u8],
        at: usize,
    }

    impl<'a> Writer<'a> {
        fn new(buf: &'a mut [u8]) -> Writer<'a> {
            Writer { buf, at: 0 }
        }

        fn put(&mut self, bytes: &[u8]) {
            let end = self.at.saturating_add(bytes.len());
            if let Some(dst) = self.buf.get_mut(self.at..end) {
                dst.copy_from_slice(bytes);
            }
            self.at = end;
        }
    }

    /// `struct inet_diag_msg`: one socket.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct DiagMsg {
        pub family: u8,
        pub state: u8,
        pub local: SocketAddr,
        pub remote: SocketAddr,
        pub ifindex: u32,
        pub cookie: u64,
        pub uid: u32,
        pub inode: u32,
    }

    impl DiagMsg {
        /// Whether this is the connection with exactly these ends (not a listener the kernel
        /// fell back to).
        pub fn is_exactly(&self, (local, remote): Ends) -> bool {
            self.state != state::LISTEN
                && self.local.port() == local.port()
                && self.remote.port() == remote.port()
                && same_ip(self.local.ip(), local.ip())
                && same_ip(self.remote.ip(), remote.ip())
        }

        /// Read one from a reply's body.
        pub fn parse(body: &[u8]) -> Result<DiagMsg, &'static str> {
            let mut r = Reader(body);
            let short = "inet_diag_msg cut short";
            let [family, state, _timer, _retrans] = r.take::<4>().ok_or(short)?;
            let sport = u16::from_be_bytes(r.take::<2>().ok_or(short)?);
            let dport = u16::from_be_bytes(r.take::<2>().ok_or(short)?);
            let src = r.take::<16>().ok_or(short)?;
            let dst = r.take::<16>().ok_or(short)?;
            let ifindex = u32::from_ne_bytes(r.take::<4>().ok_or(short)?);
            let cookie_lo = u32::from_ne_bytes(r.take::<4>().ok_or(short)?);
            let cookie_hi = u32::from_ne_bytes(r.take::<4>().ok_or(short)?);
            let _expires = r.take::<4>().ok_or(short)?;
            let _rqueue = r.take::<4>().ok_or(short)?;
            let _wqueue = r.take::<4>().ok_or(short)?;
            let uid = u32::from_ne_bytes(r.take::<4>().ok_or(short)?);
            let inode = u32::from_ne_bytes(r.take::<4>().ok_or(short)?);
            let ip = |a: [u8; 16]| -> Result<IpAddr, &'static str> {
                match family {
                    AF_INET => {
                        let head = a.first_chunk::<4>().ok_or(short)?;
                        Ok(IpAddr::V4(Ipv4Addr::from(*head)))
                    }
                    AF_INET6 => Ok(IpAddr::V6(Ipv6Addr::from(a))),
                    _ => Err("inet_diag_msg of neither IPv4 nor IPv6"),
                }
            };
            Ok(DiagMsg {
                family,
                state,
                local: SocketAddr::new(ip(src)?, sport),
                remote: SocketAddr::new(ip(dst)?, dport),
                ifindex,
                cookie: u64::from(cookie_hi) << 32 | u64::from(cookie_lo),
                uid,
                inode,
            })
        }
    }

    struct Reader<'a>(&'a [u8]);

    impl Reader<'_> {
        fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
            let (head, rest) = self.0.split_first_chunk::<N>()?;
            self.0 = rest;
            Some(*head)
        }
    }

    /// The answer to one request.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Reply {
        Socket(DiagMsg),
        /// The kernel refused it: `ENOENT` is "no such socket"; positive errno.
        Error(i32),
    }

    /// The replies in one datagram, each with the sequence number of its request. A framing
    /// error ends the iteration (nothing after a bad length can be trusted); `NLMSG_DONE` and
    /// other message types are skipped.
    pub struct Replies<'a> {
        rest: &'a [u8],
    }

    impl<'a> Replies<'a> {
        pub fn new(datagram: &'a [u8]) -> Replies<'a> {
            Replies { rest: datagram }
        }
    }

    impl Iterator for Replies<'_> {
        type Item = Result<(u32, Reply), &'static str>;

        fn next(&mut self) -> Option<Self::Item> {
            loop {
                let frame = match next_frame(&mut self.rest)? {
                    Ok(frame) => frame,
                    Err(FrameError::HeaderCut) => return Some(Err("netlink header cut short")),
                    Err(FrameError::LengthBelowHeader) => {
                        return Some(Err("netlink length shorter than its header"));
                    }
                    Err(FrameError::Truncated { .. }) => {
                        return Some(Err("netlink message runs past the datagram"));
                    }
                };
                let Frame {
                    msg_type,
                    seq,
                    body,
                    ..
                } = frame;
                match msg_type {
                    SOCK_DIAG_BY_FAMILY => {
                        return Some(DiagMsg::parse(body).map(|m| (seq, Reply::Socket(m))));
                    }
                    NLMSG_ERROR => {
                        return Some(match error_code(body) {
                            Some(0) => Err("sock_diag acknowledged a lookup without an answer"),
                            Some(errno) => Ok((seq, Reply::Error(errno))),
                            None => Err("netlink error message cut short"),
                        });
                    }
                    _ => continue, // NLMSG_DONE, NLMSG_NOOP, anything else: not an answer
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// /proc text, pure.
// ---------------------------------------------------------------------------------------------

/// What `/proc` says, as bytes in and values out.
pub mod procfs {
    use super::Link;

    /// The inode of a `/proc/PID/fd/N` link to a socket: `socket:[12345]`.
    pub fn socket_inode(link: &[u8]) -> Option<u64> {
        bracketed(link, b"socket:[")
    }

    /// The id of a namespace link: `net:[4026531840]`.
    pub fn netns_id(link: &[u8]) -> Option<u64> {
        bracketed(link, b"net:[")
    }

    fn bracketed(link: &[u8], prefix: &[u8]) -> Option<u64> {
        let digits = link.strip_prefix(prefix)?.strip_suffix(b"]")?;
        decimal(digits)
    }

    fn decimal(digits: &[u8]) -> Option<u64> {
        if digits.is_empty() || digits.len() > 20 {
            return None;
        }
        digits.iter().try_fold(0u64, |n, &d| {
            if d.is_ascii_digit() {
                n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            } else {
                None
            }
        })
    }

    /// The parent pid from `/proc/PID/stat`: `pid (comm) state ppid ...`, where comm may hold
    /// spaces and parentheses (so: after the last `)`).
    pub fn stat_ppid(stat: &[u8]) -> Option<u32> {
        let close = stat.iter().rposition(|&b| b == b')')?;
        let after = stat.get(close + 1..)?;
        let mut fields = after
            .split(|b| b.is_ascii_whitespace())
            .filter(|f| !f.is_empty());
        let _state = fields.next()?;
        u32::try_from(decimal(fields.next()?)?).ok()
    }

    /// Pids in a whitespace-separated list (`/proc/PID/task/TID/children`); junk is skipped.
    pub fn pids(text: &[u8]) -> impl Iterator<Item = u32> + '_ {
        text.split(|b| b.is_ascii_whitespace())
            .filter_map(|w| decimal(w).and_then(|n| u32::try_from(n).ok()))
    }

    /// The names in a buffer of `struct linux_dirent64` records as `getdents64` fills it
    /// (`d_ino` u64, `d_off` i64, `d_reclen` u16, `d_type` u8, then the NUL-terminated name,
    /// padded to `d_reclen`). A record whose length is impossible ends the iteration.
    pub fn dirent_names(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
        const NAME_AT: usize = 19;
        let mut rest = buf;
        std::iter::from_fn(move || {
            let reclen = usize::from(u16::from_ne_bytes(*rest.get(16..18)?.first_chunk()?));
            if reclen <= NAME_AT {
                rest = &[];
                return None;
            }
            let record = rest.get(..reclen)?;
            rest = rest.get(reclen..).unwrap_or(&[]);
            let name = record.get(NAME_AT..).unwrap_or(&[]);
            let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
            Some(name.get(..end).unwrap_or(name))
        })
    }

    /// A pid or fd number as `/proc` names them: digits only.
    pub fn number(name: &[u8]) -> Option<u32> {
        u32::try_from(decimal(name)?).ok()
    }

    /// Whether process `pid`, whose fd table holds the socket inodes `held`, holds the SYN's
    /// socket `syn`; if so, what it holds of the candidates' sockets `wanted`.
    pub fn judge(pid: u32, held: &[u64], syn: u64, wanted: &[Option<u64>]) -> Option<Link> {
        if !held.contains(&syn) {
            return None;
        }
        let mut hits = wanted
            .iter()
            .enumerate()
            .filter(|(_, w)| w.is_some_and(|ino| held.contains(&ino)))
            .map(|(i, _)| i);
        Some(match (hits.next(), hits.next()) {
            (Some(index), None) => Link::Candidate { index, pid },
            (Some(_), Some(_)) => Link::Several { pid },
            (None, _) => Link::NoCandidate { pid: Some(pid) },
        })
    }
}

// ---------------------------------------------------------------------------------------------
// System calls: the only place with `unsafe` or I/O.
// ---------------------------------------------------------------------------------------------

mod sys {
    use std::fs::File;
    use std::io;
    use std::mem;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    use std::time::Duration;

    use super::procfs;

    /// How long a reply may take (the kernel answers within our `sendto`).
    const REPLY_TIMEOUT: Duration = Duration::from_secs(1);
    /// Room for one reply datagram (a reply is about 150 bytes).
    const RECV_LEN: usize = 8192;

    #[derive(Debug)]
    pub(super) struct DiagSocket {
        fd: OwnedFd,
        buf: Vec<u8>,
    }

    impl DiagSocket {
        pub(super) fn open() -> io::Result<DiagSocket> {
            // SAFETY: plain syscall with constant arguments; the result is checked below.
            let raw = unsafe {
                libc::socket(
                    libc::AF_NETLINK,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    libc::NETLINK_SOCK_DIAG,
                )
            };
            if raw < 0 {
                let e = io::Error::last_os_error();
                return Err(io::Error::new(
                    e.kind(),
                    format!("opening a NETLINK_SOCK_DIAG socket: {e}"),
                ));
            }
            // SAFETY: `raw` is a socket we just created and nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            Ok(DiagSocket {
                fd,
                buf: vec![0; RECV_LEN],
            })
        }

        /// Send one datagram (one or several requests) to the kernel, whole.
        pub(super) fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
            let addr = kernel_addr();
            loop {
                // SAFETY: `bytes` is valid for reads of its length; `addr` is a valid
                // sockaddr_nl and the length is its size.
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
                        "sock_diag request sent in part",
                    ));
                }
                return Ok(());
            }
        }

        /// The next datagram from the kernel, waiting at most [`REPLY_TIMEOUT`].
        pub(super) fn recv(&mut self) -> io::Result<&[u8]> {
            let deadline = std::time::Instant::now() + REPLY_TIMEOUT;
            loop {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "sock_diag did not answer in time",
                    ));
                }
                let mut pfd = libc::pollfd {
                    fd: self.fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                let ms = libc::c_int::try_from(left.as_millis().max(1)).unwrap_or(1000);
                // SAFETY: `pfd` is one valid pollfd and the count says one.
                let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
                if ready < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(e);
                }
                if ready == 0 {
                    continue;
                }
                let mut from = kernel_addr();
                let mut from_len = mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
                // SAFETY: `buf` is valid for writes of its length; `from` and `from_len` are
                // valid for writes and `from_len` is the size of `from`.
                let n = unsafe {
                    libc::recvfrom(
                        self.fd.as_raw_fd(),
                        self.buf.as_mut_ptr().cast::<libc::c_void>(),
                        self.buf.len(),
                        libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                        (&raw mut from).cast::<libc::sockaddr>(),
                        &mut from_len,
                    )
                };
                if n < 0 {
                    let e = io::Error::last_os_error();
                    match e.kind() {
                        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock => continue,
                        _ => return Err(e),
                    }
                }
                // Only the kernel (port 0) answers lookups.
                if from.nl_pid != 0 {
                    continue;
                }
                let n = n as usize;
                if n > self.buf.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "sock_diag reply larger than the receive buffer",
                    ));
                }
                return Ok(self.buf.get(..n).unwrap_or(&[]));
            }
        }
    }

    fn kernel_addr() -> libc::sockaddr_nl {
        // SAFETY: sockaddr_nl is a plain C struct for which all zeroes is a valid value.
        let mut addr: libc::sockaddr_nl = unsafe { mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr
    }

    /// A symbolic link's target, as bytes.
    pub(super) fn read_link(path: &str) -> io::Result<Vec<u8>> {
        Ok(std::fs::read_link(path)?.as_os_str().as_bytes().to_vec())
    }

    pub(super) fn read_to_vec(path: &str) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    /// Every pid in `/proc` (processes, not threads).
    pub(super) fn list_pids(out: &mut Vec<u32>) -> io::Result<()> {
        let dir = File::open("/proc")?;
        each_name(&dir, |name| {
            if let Some(pid) = procfs::number(name) {
                out.push(pid);
            }
        })
    }

    /// The socket inodes in `pid`'s fd table: each `/proc/PID/fd/N` link read relative to the
    /// open directory (no path walk per fd). A process that exits meanwhile has none; an fd
    /// closed between the listing and its readlink is skipped.
    pub(super) fn socket_inodes(pid: u32, out: &mut Vec<u64>) -> io::Result<()> {
        let dir = File::open(format!("/proc/{pid}/fd"))?;
        let mut target = [0u8; 64];
        each_name(&dir, |name| {
            // Digits only ("." and ".." are not fds), and room for the NUL after them.
            let mut c_name = [0u8; 12];
            if procfs::number(name).is_none() || name.len() >= c_name.len() {
                return;
            }
            if let Some(dst) = c_name.get_mut(..name.len()) {
                dst.copy_from_slice(name);
            }
            // SAFETY: `c_name` is NUL-terminated (zeroed, and the name is shorter than it);
            // `target` is valid for writes of its length; `dir` is open.
            let n = unsafe {
                libc::readlinkat(
                    dir.as_raw_fd(),
                    c_name.as_ptr().cast::<libc::c_char>(),
                    target.as_mut_ptr().cast::<libc::c_char>(),
                    target.len(),
                )
            };
            let Ok(n) = usize::try_from(n) else { return };
            if let Some(inode) = target.get(..n).and_then(procfs::socket_inode) {
                out.push(inode);
            }
        })
    }

    /// Call `f` with each name in directory `dir` (`getdents64`, no allocation per entry).
    fn each_name(dir: &File, mut f: impl FnMut(&[u8])) -> io::Result<()> {
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: `buf` is valid for writes of its length and `dir` is an open directory;
            // the kernel writes at most that many bytes of whole records.
            let n = unsafe {
                libc::syscall(
                    libc::SYS_getdents64,
                    dir.as_raw_fd(),
                    buf.as_mut_ptr(),
                    buf.len(),
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let Some(filled) = usize::try_from(n).ok().and_then(|n| buf.get(..n)) else {
                return Ok(());
            };
            if filled.is_empty() {
                return Ok(());
            }
            procfs::dirent_names(filled).for_each(&mut f);
        }
    }
}

// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::wire::*;
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
            .collect()
    }

    // Replies captured from Linux 6.18 (x86_64, little-endian), one datagram each.

    /// The ESTABLISHED client end 127.0.0.1:56756 -> 127.0.0.1:41013 (request seq 7): inode
    /// 3751035, cookie 37, uid 0; attributes SHUTDOWN, MARK, CGROUP_ID, SOCKOPT.
    const V4_ESTABLISHED: &str = "
        7c000000 1400 0000 07000000 0e4c0000
        02 01 00 00  ddb4 a035  7f000001 00000000 00000000 00000000
        7f000001 00000000 00000000 00000000  00000000  25000000 00000000
        00000000 00000000 00000000 00000000 7b3c3900
        0500 0800 00000000  0800 0f00 00000000  0c00 1500 01000000 00000000
        0600 1600 5200 0000";

    /// The LISTENING socket on 127.0.0.1:41013, the kernel's answer for a tuple with no
    /// connection (127.0.0.1:41013 <- 127.0.0.1:1): state 10, peer 0.0.0.0:0.
    const V4_LISTENER: &str = "
        7c000000 1400 0000 07000000 0e4c0000
        02 0a 00 00  a035 0000  7f000001 00000000 00000000 00000000
        00000000 00000000 00000000 00000000  00000000  27000000 00000000
        00000000 00000000 00000080 00000000 7a3c3900
        0500 0800 00000000  0800 0f00 00000000  0c00 1500 01000000 00000000
        0600 1600 5200 0000";

    /// The ESTABLISHED client end [::1]:37354 -> [::1]:37917 (seq 9), inode 3755388.
    const V6_ESTABLISHED: &str = "
        7c000000 1400 0000 09000000 36580000
        0a 01 00 00  91ea 941d  00000000 00000000 00000000 00000001
        00000000 00000000 00000000 00000001  00000000  10100000 00000000
        00000000 00000000 00000000 00000000 7c4d3900
        0500 0800 00000000  0800 0f00 00000000  0c00 1500 01000000 00000000
        0600 1600 1200 0000";

    /// `ENOENT` for 127.0.0.1:1 <-> 127.0.0.1:2 (seq 8): NLMSG_ERROR with our request echoed.
    const V4_ENOENT: &str = "
        5c000000 0200 0000 08000000 36580000
        feffffff
        48000000 1400 0100 08000000 00000000
        02 06 00 00 ffffffff 0001 0002 7f000001 00000000 00000000 00000000
        7f000001 00000000 00000000 00000000 00000000 ffffffff ffffffff";

    fn only_reply(bytes: &[u8]) -> Result<(u32, Reply), &'static str> {
        let mut replies = Replies::new(bytes);
        let first = replies.next().expect("one reply");
        assert!(replies.next().is_none(), "exactly one reply");
        first
    }

    // ---- requests ----

    #[test]
    fn request_is_what_the_kernel_echoes_back() {
        let req = encode_request(8, sa("127.0.0.1:1"), sa("127.0.0.1:2")).unwrap();
        let echoed = hex(V4_ENOENT);
        assert_eq!(
            &req[..],
            &echoed[20..],
            "nlmsghdr + inet_diag_req_v2, byte for byte"
        );
    }

    #[test]
    fn request_puts_our_end_in_src_and_ports_big_endian() {
        let req = encode_request(1, sa("198.18.3.1:40000"), sa("198.18.3.53:53")).unwrap();
        assert_eq!(
            &req[16..20],
            &[2, 6, 0, 0],
            "AF_INET, IPPROTO_TCP, no extensions"
        );
        assert_eq!(
            &req[24..26],
            &40000u16.to_be_bytes(),
            "idiag_sport = our port"
        );
        assert_eq!(
            &req[26..28],
            &53u16.to_be_bytes(),
            "idiag_dport = the peer's"
        );
        assert_eq!(&req[28..32], &[198, 18, 3, 1]);
        assert_eq!(&req[32..44], &[0; 12]);
        assert_eq!(&req[44..48], &[198, 18, 3, 53]);
        assert_eq!(&req[64..72], &[0xff; 8], "INET_DIAG_NOCOOKIE in both words");

        let v6 = encode_request(2, sa("[2001:db8:3::1]:40000"), sa("[2001:db8:3::53]:53")).unwrap();
        assert_eq!(v6[16], libc::AF_INET6 as u8);
        assert_eq!(
            &v6[28..44],
            &"2001:db8:3::1".parse::<Ipv6Addr>().unwrap().octets()
        );
        assert_eq!(
            &v6[44..60],
            &"2001:db8:3::53".parse::<Ipv6Addr>().unwrap().octets()
        );
    }

    #[test]
    fn v4_mapped_ends_are_asked_as_ipv4_and_mixed_families_refused() {
        let mapped =
            encode_request(3, sa("[::ffff:198.18.1.1]:53"), sa("198.18.1.2:4000")).unwrap();
        let plain = encode_request(3, sa("198.18.1.1:53"), sa("198.18.1.2:4000")).unwrap();
        assert_eq!(mapped, plain);
        assert_eq!(
            encode_request(4, sa("198.18.1.1:53"), sa("[2001:db8:1::2]:4000")),
            Err(EncodeError::MixedFamilies)
        );
    }

    // ---- replies ----

    #[test]
    fn established_v4_reply_parses() {
        let (seq, reply) = only_reply(&hex(V4_ESTABLISHED)).unwrap();
        assert_eq!(seq, 7);
        let Reply::Socket(msg) = reply else {
            panic!("{reply:?}")
        };
        assert_eq!(msg.family, libc::AF_INET as u8);
        assert_eq!(msg.state, state::ESTABLISHED);
        assert_eq!(msg.local, sa("127.0.0.1:56756"));
        assert_eq!(msg.remote, sa("127.0.0.1:41013"));
        assert_eq!((msg.inode, msg.uid, msg.cookie), (3_751_035, 0, 37));
        assert!(msg.is_exactly((sa("127.0.0.1:56756"), sa("127.0.0.1:41013"))));
        assert!(!msg.is_exactly((sa("127.0.0.1:41013"), sa("127.0.0.1:56756"))));
        // The same connection asked as IPv4 but seen by a dual-stack socket (or vice versa).
        assert!(msg.is_exactly((sa("[::ffff:127.0.0.1]:56756"), sa("127.0.0.1:41013"))));
    }

    #[test]
    fn listener_the_kernel_falls_back_to_is_not_the_connection() {
        let (_, reply) = only_reply(&hex(V4_LISTENER)).unwrap();
        let Reply::Socket(msg) = reply else {
            panic!("{reply:?}")
        };
        assert_eq!(msg.state, state::LISTEN);
        assert_eq!(msg.remote, sa("0.0.0.0:0"));
        assert!(!msg.is_exactly((sa("127.0.0.1:41013"), sa("127.0.0.1:1"))));
    }

    #[test]
    fn established_v6_reply_parses() {
        let (seq, reply) = only_reply(&hex(V6_ESTABLISHED)).unwrap();
        assert_eq!(seq, 9);
        let Reply::Socket(msg) = reply else {
            panic!("{reply:?}")
        };
        assert_eq!(
            (msg.local, msg.remote),
            (sa("[::1]:37354"), sa("[::1]:37917"))
        );
        assert_eq!(msg.inode, 3_755_388);
    }

    #[test]
    fn no_such_socket_is_enoent_for_its_request() {
        assert_eq!(
            only_reply(&hex(V4_ENOENT)),
            Ok((8, Reply::Error(libc::ENOENT)))
        );
    }

    #[test]
    fn several_replies_in_one_datagram_come_out_in_order() {
        let mut both = hex(V4_ESTABLISHED);
        both.extend(hex(V4_ENOENT));
        let seqs: Vec<u32> = Replies::new(&both).map(|r| r.unwrap().0).collect();
        assert_eq!(seqs, [7, 8]);
    }

    #[test]
    fn done_and_noop_messages_are_not_answers() {
        let done = hex("14000000 0300 0200 05000000 00000000 00000000");
        assert!(Replies::new(&done).next().is_none());
    }

    #[test]
    fn every_truncation_of_every_reply_is_a_clean_error() {
        for fixture in [V4_ESTABLISHED, V4_LISTENER, V6_ESTABLISHED, V4_ENOENT] {
            let full = hex(fixture);
            assert!(Replies::new(&full[..0]).next().is_none());
            for cut in 1..full.len() {
                let first = Replies::new(&full[..cut]).next();
                assert!(matches!(first, Some(Err(_))), "cut at {cut}: {first:?}");
            }
        }
    }

    #[test]
    fn a_message_whose_length_cuts_its_body_is_a_clean_error() {
        for fixture in [V4_ESTABLISHED, V4_ENOENT] {
            let full = hex(fixture);
            for len in 16..full.len() {
                let mut msg = full[..len].to_vec();
                msg[..4].copy_from_slice(&(len as u32).to_ne_bytes());
                let first = Replies::new(&msg).next().expect("a message");
                let body = len - 16;
                let whole = if fixture == V4_ENOENT {
                    body >= 4
                } else {
                    body >= MSG_LEN
                };
                assert_eq!(first.is_ok(), whole, "length {len}: {first:?}");
            }
        }
    }

    #[test]
    fn garbage_never_panics_and_the_iteration_ends() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let seed = hex(V4_ESTABLISHED);
        for round in 0..20_000 {
            let len = (next() % 300) as usize;
            let mut data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if round % 2 == 0 {
                // Mutate a real reply: framing mostly right, contents wrong.
                data = seed.clone();
                for _ in 0..(next() % 8) {
                    let at = (next() as usize) % data.len();
                    data[at] = next() as u8;
                }
                data.truncate((next() as usize) % (seed.len() + 1));
            }
            let n = Replies::new(&data).take(1000).count();
            assert!(n <= data.len() / 16 + 1, "the iteration does not advance");
        }
    }

    // ---- /proc text ----

    #[test]
    fn socket_links_give_their_inode_and_nothing_else_does() {
        assert_eq!(procfs::socket_inode(b"socket:[3751035]"), Some(3_751_035));
        assert_eq!(
            procfs::socket_inode(b"socket:[4294967295]"),
            Some(u64::from(u32::MAX))
        );
        for other in [
            &b"pipe:[3751035]"[..],
            b"anon_inode:[eventfd]",
            b"/dev/null",
            b"socket:[]",
            b"socket:[12",
            b"socket:[1x2]",
            b"socket:[99999999999999999999999]",
            b"",
        ] {
            assert_eq!(procfs::socket_inode(other), None, "{other:?}");
        }
        assert_eq!(procfs::netns_id(b"net:[4026531840]"), Some(4_026_531_840));
        assert_eq!(procfs::netns_id(b"mnt:[4026531840]"), None);
    }

    #[test]
    fn parent_pid_is_read_after_the_last_parenthesis() {
        assert_eq!(
            procfs::stat_ppid(b"4242 (dnsmasq) S 4100 4100 4100 0 -1"),
            Some(4100)
        );
        assert_eq!(procfs::stat_ppid(b"7 (a) b) (c) R 1 7 7"), Some(1));
        assert_eq!(procfs::stat_ppid(b"7 (x y\nz) S  12 7"), Some(12));
        assert_eq!(procfs::stat_ppid(b"7 (x) S"), None);
        assert_eq!(procfs::stat_ppid(b"7 x S 12"), None);
        assert_eq!(procfs::stat_ppid(b""), None);
    }

    #[test]
    fn pid_lists_skip_junk() {
        let got: Vec<u32> = procfs::pids(b"12 345 \n6x 99999999999 7").collect();
        assert_eq!(got, [12, 345, 7]);
        assert_eq!(procfs::pids(b"").count(), 0);
    }

    fn dirent(name: &str) -> Vec<u8> {
        let reclen = (19 + name.len() + 1).next_multiple_of(8);
        let mut r = vec![0u8; reclen];
        r[16..18].copy_from_slice(&(reclen as u16).to_ne_bytes());
        r[18] = 10; // DT_LNK
        r[19..19 + name.len()].copy_from_slice(name.as_bytes());
        r
    }

    #[test]
    fn dirents_give_their_names_and_stop_at_an_impossible_length() {
        let mut buf = Vec::new();
        for name in [".", "..", "0", "17", "123456"] {
            buf.extend(dirent(name));
        }
        let names: Vec<&[u8]> = procfs::dirent_names(&buf).collect();
        assert_eq!(names, [&b"."[..], b"..", b"0", b"17", b"123456"]);
        let fds: Vec<u32> = names.iter().filter_map(|n| procfs::number(n)).collect();
        assert_eq!(fds, [0, 17, 123_456]);
        // Cut anywhere: the whole records before the cut, nothing past it, no panic.
        for cut in 0..buf.len() {
            let n = procfs::dirent_names(&buf[..cut]).count();
            assert!(n <= 5 && n * 24 <= cut, "cut at {cut}: {n} names");
        }
        // A zero or too short record length ends the iteration instead of looping.
        let mut bad = dirent("5");
        bad[16..18].copy_from_slice(&0u16.to_ne_bytes());
        assert_eq!(procfs::dirent_names(&bad).count(), 0);
        bad[16..18].copy_from_slice(&19u16.to_ne_bytes());
        assert_eq!(procfs::dirent_names(&bad).count(), 0);
        // A name without its NUL ends at its record.
        let mut full = dirent("1234");
        let len = full.len();
        full[19..len].fill(b'7');
        assert_eq!(procfs::dirent_names(&full).next(), Some(&[b'7'; 5][..]));
    }

    #[test]
    fn judge_names_the_one_candidate_the_holder_holds() {
        let held = [10, 20, 30];
        let wanted = [Some(40), Some(20), None];
        assert_eq!(
            procfs::judge(7, &held, 10, &wanted),
            Some(Link::Candidate { index: 1, pid: 7 })
        );
        assert_eq!(procfs::judge(7, &held, 99, &wanted), None, "not the holder");
        assert_eq!(
            procfs::judge(7, &held, 10, &[Some(20), Some(30)]),
            Some(Link::Several { pid: 7 })
        );
        assert_eq!(
            procfs::judge(7, &held, 10, &[Some(40), None]),
            Some(Link::NoCandidate { pid: Some(7) })
        );
        assert_eq!(Link::Candidate { index: 1, pid: 7 }.index(), Some(1));
        assert_eq!(Link::Several { pid: 7 }.index(), None);
    }

    #[test]
    fn hints_keep_the_most_recent_first_once() {
        let mut ring = [None; HINTS];
        for pid in [1, 2, 3, 2, 4, 5, 6] {
            push_front(&mut ring, pid);
        }
        assert_eq!(ring, [Some(6), Some(5), Some(4), Some(2)]);
        push_front(&mut ring, 4);
        assert_eq!(ring, [Some(4), Some(6), Some(5), Some(2)]);
    }

    // ---- the kernel, in our own namespace (no root needed: sock_diag lookups are open to
    //      every user, and our own /proc/self/fd is readable) ----

    #[test]
    fn our_own_connection_is_found_from_both_ends_and_the_listener_is_not() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let client_ends = (client.local_addr().unwrap(), client.peer_addr().unwrap());
        let server_ends = (server.local_addr().unwrap(), server.peer_addr().unwrap());
        let mut r = Resolver::new().unwrap();
        // However loaded the machine, the scan reaches us.
        r.set_budget(std::time::Duration::from_secs(5));
        let c = r.lookup(client_ends).unwrap().expect("client end");
        let s = r.lookup(server_ends).unwrap().expect("server end");
        assert_eq!((c.state, s.state), (state::ESTABLISHED, state::ESTABLISHED));
        assert_ne!(c.inode, s.inode);
        assert!(c.inode != 0 && s.inode != 0);
        // No connection from port 1: the kernel would answer with the listener.
        let nobody = (server_ends.0, sa("127.0.0.1:1"));
        assert_eq!(r.lookup(nobody).unwrap(), None);
        // This process holds both ends: the "SYN" socket's holder holds the server end, and
        // not the (absent) other one.
        let link = r.same_process(client_ends, &[nobody, server_ends]).unwrap();
        assert_eq!(link.index(), Some(1), "{link:?}");
        assert!(matches!(link, Link::Candidate { pid, .. } if pid == std::process::id()));
        assert_eq!(
            r.same_process(client_ends, &[nobody]).unwrap(),
            Link::NoCandidate { pid: None }
        );
        assert_eq!(
            r.same_process(nobody, &[server_ends]).unwrap(),
            Link::NoSynSocket
        );
        // Asked again, the last holder is read first.
        assert_eq!(
            r.same_process(client_ends, &[server_ends]).unwrap().index(),
            Some(0)
        );
        let stats = r.stats();
        assert_eq!((stats.full_scans, stats.hint_hits), (1, 1), "{stats:?}");
        // Without hints and without time for a scan: no holder, counted.
        r.clear_hints();
        r.set_budget(std::time::Duration::ZERO);
        assert_eq!(
            r.same_process(client_ends, &[server_ends]).unwrap(),
            Link::NoHolder
        );
        assert_eq!(r.stats().gave_up, 1);
    }
}
