//! Load and inspection helpers for the end-to-end tests (`tests/e2e_daemon.rs`,
//! `tests/e2e_multiwan.rs`).
//!
//! A raw-socket flood of malformed DNS-port packets sent from inside a client namespace, dnsperf
//! runs, DNS clients that ask over UDP like a stub resolver and over TCP in every shape RFC 7766
//! allows (one query per connection, several pipelined in one segment, a message split after
//! its length prefix or in its middle), the kernel's own view of a queue
//! (`/proc/net/netfilter/nfnetlink_queue`), nfqmark's counter line, a process's RSS, and the
//! exit status of a child the lab owns (read without reaping it, so the lab still cleans up).
//! Every loop here is bounded in count and in time.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use nfqmark_lab::netns::{self, Netns};

// ---------------------------------------------------------------------------------------------
// The kernel's view of a queue.
// ---------------------------------------------------------------------------------------------

/// One line of `/proc/net/netfilter/nfnetlink_queue`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcQueue {
    pub num: u16,
    pub portid: u32,
    /// Packets queued and waiting for a verdict (the kernel's `queue_total`).
    pub waiting: u64,
    pub copy_mode: u32,
    pub copy_range: u32,
    /// Packets dropped because the queue was full (fail-closed only).
    pub queue_dropped: u64,
    /// Packets dropped because the socket could not take them (fail-closed only).
    pub user_dropped: u64,
    /// The id of the last packet queued: every packet the kernel queued since the bind got one.
    pub id_sequence: u64,
}

impl fmt::Display for ProcQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "queue {}: waiting={} queue_dropped={} user_dropped={} id_sequence={}",
            self.num, self.waiting, self.queue_dropped, self.user_dropped, self.id_sequence
        )
    }
}

/// The line for queue `num`, if that queue is bound.
pub fn parse_proc_queue(text: &str, num: u16) -> Option<ProcQueue> {
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let q = ProcQueue {
            num: f.first()?.parse().ok()?,
            portid: f.get(1)?.parse().ok()?,
            waiting: f.get(2)?.parse().ok()?,
            copy_mode: f.get(3)?.parse().ok()?,
            copy_range: f.get(4)?.parse().ok()?,
            queue_dropped: f.get(5)?.parse().ok()?,
            user_dropped: f.get(6)?.parse().ok()?,
            id_sequence: f.get(7)?.parse().ok()?,
        };
        (q.num == num).then_some(q)
    })
}

/// Queue `num` as seen from inside `ns` (a `cat` in the namespace); `None` when not bound.
pub fn proc_queue_in(ns: &Netns, num: u16) -> Option<ProcQueue> {
    let out = ns
        .exec("cat", &["/proc/net/netfilter/nfnetlink_queue"])
        .ok()?;
    parse_proc_queue(&String::from_utf8_lossy(&out.stdout), num)
}

/// Queue `num` as seen from the namespace of process `pid` (cheap: one file read, from any
/// thread); `None` when not bound or the process is gone.
pub fn proc_queue_of_pid(pid: u32, num: u16) -> Option<ProcQueue> {
    let text =
        std::fs::read_to_string(format!("/proc/{pid}/net/netfilter/nfnetlink_queue")).ok()?;
    parse_proc_queue(&text, num)
}

/// Queue `num` as seen from the calling thread's namespace.
pub fn proc_queue_here(num: u16) -> Option<ProcQueue> {
    let text = std::fs::read_to_string("/proc/thread-self/net/netfilter/nfnetlink_queue").ok()?;
    parse_proc_queue(&text, num)
}

// ---------------------------------------------------------------------------------------------
// nfqmark's counters and its process.
// ---------------------------------------------------------------------------------------------

/// nfqmark's counter line (`packets=... parse_errors=...`) as a map.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    line: String,
    values: BTreeMap<String, u64>,
}

impl Counters {
    pub fn parse(line: &str) -> Counters {
        let values = line
            .split_whitespace()
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect();
        Counters {
            line: line.to_string(),
            values,
        }
    }

    /// A counter's value; panics naming it when nfqmark did not report it (a test bug or a
    /// renamed counter, either worth a loud failure).
    pub fn get(&self, name: &str) -> u64 {
        match self.values.get(name) {
            Some(v) => *v,
            None => panic!("nfqmark reported no counter '{name}' in: {}", self.line),
        }
    }

    pub fn line(&self) -> &str {
        &self.line
    }
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

/// Wait up to `limit` for child `pid` of this process to end, without reaping it (waitid with
/// WNOWAIT): its owner (the lab) still waits for it, so no pid is ever left unreaped or reused
/// under it. `None` when it still runs.
pub fn wait_exit(pid: u32, limit: Duration) -> Option<Exit> {
    let deadline = Instant::now() + limit;
    loop {
        // SAFETY: siginfo_t is plain data; zeroed means "no child changed state" for WNOHANG.
        let mut info: libc::siginfo_t = unsafe { mem::zeroed() };
        // SAFETY: `info` is a valid out-pointer for the call.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        // SAFETY: si_pid and si_status are set by waitid for a child that changed state.
        let (si_pid, status) = unsafe { (info.si_pid(), info.si_status()) };
        if rc == 0 && si_pid != 0 {
            return Some(if info.si_code == libc::CLD_EXITED {
                Exit::Code(status)
            } else {
                Exit::Signal(status)
            });
        }
        if rc != 0 || Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(2));
    }
}

/// Resident set size of `pid` in KiB (VmRSS).
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_field(pid, "VmRSS:")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A field of `/proc/PID/status` (the text after the key).
pub fn status_field(pid: u32, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
}

/// The scheduler sees `pid` as a zombie or it is gone.
pub fn is_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| state == "Z" || state == "X"),
        Err(_) => true,
    }
}

// ---------------------------------------------------------------------------------------------
// Commands with a time limit.
// ---------------------------------------------------------------------------------------------

/// What a bounded run gave.
#[derive(Debug)]
pub struct Ran {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// Run `cmd` to completion, killing it after `limit` (an `Err` then).
pub fn run_bounded(mut cmd: Command, limit: Duration) -> io::Result<Ran> {
    let line = format!("{cmd:?}");
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = reader(child.stdout.take());
    let stderr = reader(child.stderr.take());
    let status = wait_bounded(&mut child, limit)?;
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    match status {
        Some(status) => Ok(Ran {
            status,
            stdout,
            stderr,
            elapsed: start.elapsed(),
        }),
        None => Err(io::Error::other(format!(
            "{line} still ran after {limit:?} (killed); stdout: {stdout} stderr: {stderr}"
        ))),
    }
}

fn reader<R: Read + Send + 'static>(pipe: Option<R>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_string(&mut text);
        }
        text
    })
}

/// Wait up to `limit` for `child`; kill (and reap) it after that and return `None`.
pub fn wait_bounded(child: &mut Child, limit: Duration) -> io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// dnsperf.
// ---------------------------------------------------------------------------------------------

/// Write a dnsperf input file: `count` unique names `PREFIX-N.nfqm.example` of type A.
pub fn names_file(path: &Path, prefix: &str, count: usize) -> io::Result<()> {
    let text: String = (0..count)
        .map(|i| format!("{prefix}-{i}.nfqm.example A\n"))
        .collect();
    std::fs::write(path, text)
}

/// A dnsperf run in progress; its report goes to a file.
#[derive(Debug)]
pub struct DnsperfRun {
    child: Child,
    out: std::path::PathBuf,
    limit: Duration,
}

/// What dnsperf reported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsperfReport {
    pub sent: u64,
    pub completed: u64,
    pub lost: u64,
    pub text: String,
}

/// Start dnsperf inside `ns` against `server` with `input`; `args` must bound the run (`-l`
/// and/or `-n`); `limit` is the hard stop after which it is killed.
pub fn start_dnsperf(
    ns: &Netns,
    server: &str,
    input: &Path,
    args: &[&str],
    out: &Path,
    limit: Duration,
) -> io::Result<DnsperfRun> {
    let file = std::fs::File::create(out)?;
    let child = ns
        .command("dnsperf")
        .args(["-s", server, "-d"])
        .arg(input)
        .args(args)
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()?;
    Ok(DnsperfRun {
        child,
        out: out.to_path_buf(),
        limit,
    })
}

impl DnsperfRun {
    /// Wait for the report (bounded; killed after the limit, which is an error).
    pub fn finish(mut self) -> io::Result<DnsperfReport> {
        let status = wait_bounded(&mut self.child, self.limit)?;
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        if status.is_none() {
            return Err(io::Error::other(format!(
                "dnsperf ran longer than {:?} and was killed:\n{text}",
                self.limit
            )));
        }
        let field = |key: &str| -> io::Result<u64> {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(key))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| io::Error::other(format!("dnsperf reported no '{key}':\n{text}")))
        };
        Ok(DnsperfReport {
            sent: field("Queries sent:")?,
            completed: field("Queries completed:")?,
            lost: field("Queries lost:")?,
            text: text.clone(),
        })
    }
}

impl Drop for DnsperfRun {
    fn drop(&mut self) {
        // Only runs when `finish` was not called (a test failed first).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Threads inside a namespace.
// ---------------------------------------------------------------------------------------------

/// Run `f` on a new thread that entered `ns` (the caller's thread stays where it is).
pub fn spawn_in<T, F>(ns: &Netns, name: &str, f: F) -> io::Result<thread::JoinHandle<io::Result<T>>>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    netns::spawn_in(ns.name(), name, f)
}

pub use nfqmark_lab::netns::join;

/// Give the calling thread a real-time priority (SCHED_FIFO), so a sampler is not starved by
/// the load it watches. False when the kernel refuses (then it samples at normal priority).
pub fn realtime_priority() -> bool {
    let param = libc::sched_param { sched_priority: 10 };
    // SAFETY: pthread_self is always valid; `param` is a valid sched_param.
    unsafe { libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param) == 0 }
}

// ---------------------------------------------------------------------------------------------
// The malformed-packet flood.
// ---------------------------------------------------------------------------------------------

/// xorshift64*: a small deterministic generator (no dependency, reproducible floods).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-ish in `lo..hi` (`lo` when the range is empty).
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        if hi <= lo {
            return lo;
        }
        lo + (self.next_u64() % (hi - lo) as u64) as usize
    }

    pub fn byte(&mut self) -> u8 {
        (self.next_u64() >> 32) as u8
    }

    pub fn u16(&mut self) -> u16 {
        (self.next_u64() >> 24) as u16
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
}

/// The kinds of bad packet the flood sends, all to the DNS port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// UDP whose length field disagrees with the datagram (too short or past its end).
    UdpBadLength,
    /// A UDP header cut after 4..7 bytes (ports readable, length and checksum not).
    UdpShortHeader,
    /// A valid UDP datagram carrying 0..11 bytes: a DNS header cut short.
    DnsTruncatedHeader,
    /// A valid UDP datagram with random bytes.
    DnsRandom,
    /// A DNS query whose question name is a compression pointer loop, points past the end,
    /// uses reserved label types or overruns the message.
    DnsBogusPointer,
    /// A TCP segment (ACK|PSH, no connection) with junk, half of it with a DNS length prefix.
    TcpJunk,
    /// A TCP header whose data offset is below 5 or past the segment.
    TcpBadOffset,
    /// A TCP header cut after 4..19 bytes.
    TcpShortHeader,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::UdpBadLength,
        Kind::UdpShortHeader,
        Kind::DnsTruncatedHeader,
        Kind::DnsRandom,
        Kind::DnsBogusPointer,
        Kind::TcpJunk,
        Kind::TcpBadOffset,
        Kind::TcpShortHeader,
    ];

    /// The transport header is complete and sane (only the length field of UDP may lie).
    pub fn whole_header(self) -> bool {
        !matches!(
            self,
            Kind::UdpShortHeader | Kind::TcpBadOffset | Kind::TcpShortHeader
        )
    }

    fn proto(self) -> u8 {
        match self {
            Kind::TcpJunk | Kind::TcpBadOffset | Kind::TcpShortHeader => libc::IPPROTO_TCP as u8,
            _ => libc::IPPROTO_UDP as u8,
        }
    }
}

/// Where the flood goes: from a client's addresses to the router's, port 53.
#[derive(Debug, Clone, Copy)]
pub struct FloodTarget {
    pub src4: Ipv4Addr,
    pub dst4: Ipv4Addr,
    pub src6: Ipv6Addr,
    pub dst6: Ipv6Addr,
    pub port: u16,
}

/// Bounds of a flood.
#[derive(Debug, Clone, Copy)]
pub struct FloodLimits {
    /// Packets to send.
    pub packets: usize,
    /// Stop after this long even if not all were sent.
    pub time: Duration,
    /// Packets per second at most (0: as fast as the queue takes them).
    pub rate: u64,
    /// Pause while the queue holds more than this many packets (so the queue never fills and
    /// the kernel's fail-open never lets a real query pass unseen).
    pub max_backlog: u64,
    /// One packet in this many is IPv6 (0: none).
    pub v6_every: usize,
    pub seed: u64,
}

/// What a flood did.
#[derive(Debug, Clone, Default)]
pub struct FloodReport {
    pub sent: u64,
    pub v6: u64,
    pub send_errors: u64,
    pub by_kind: BTreeMap<String, u64>,
    /// Packets whose transport header is whole (every queue rule can read their port, whatever
    /// the iptables backend): the ones certain to be queued.
    pub whole_headers: u64,
    /// Time spent waiting for the queue's backlog to fall.
    pub paused: Duration,
    pub elapsed: Duration,
    /// The time limit ended the flood before every packet was sent.
    pub timed_out: bool,
}

impl fmt::Display for FloodReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} packets ({} IPv6) in {:.2?} (paused {:.2?} for the queue's backlog), {} send \
             errors{}; by kind: {:?}",
            self.sent,
            self.v6,
            self.elapsed,
            self.paused,
            self.send_errors,
            if self.timed_out { ", TIME LIMIT" } else { "" },
            self.by_kind
        )
    }
}

/// Send the flood from inside `ns`, on a thread of its own, and wait for it to finish.
/// `backlog` says how many packets wait in the queue now (it may read another namespace's proc
/// file).
pub fn flood<B>(
    ns: &Netns,
    target: FloodTarget,
    limits: FloodLimits,
    backlog: B,
) -> io::Result<FloodReport>
where
    B: FnMut() -> u64 + Send + 'static,
{
    join(spawn_in(ns, "flood", move || {
        send_flood(target, limits, backlog)
    })?)
}

fn raw_socket(family: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_RAW,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if family == libc::AF_INET {
        let one: libc::c_int = 1;
        // SAFETY: `one` is a valid c_int and the length matches it.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_HDRINCL,
                (&one as *const libc::c_int).cast(),
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(fd)
}

fn send_flood<B: FnMut() -> u64>(
    target: FloodTarget,
    limits: FloodLimits,
    mut backlog: B,
) -> io::Result<FloodReport> {
    let s4 = raw_socket(libc::AF_INET)?;
    let s6 = raw_socket(libc::AF_INET6)?;
    // SAFETY: sockaddr_in/sockaddr_in6 are plain data; zeroed is a valid start.
    let mut to4: libc::sockaddr_in = unsafe { mem::zeroed() };
    to4.sin_family = libc::AF_INET as libc::sa_family_t;
    to4.sin_addr.s_addr = u32::from_ne_bytes(target.dst4.octets());
    // SAFETY: as above.
    let mut to6: libc::sockaddr_in6 = unsafe { mem::zeroed() };
    to6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    to6.sin6_addr.s6_addr = target.dst6.octets();

    let mut rng = Rng::new(limits.seed);
    let mut report = FloodReport::default();
    let start = Instant::now();
    let deadline = start + limits.time;
    for i in 0..limits.packets {
        if Instant::now() >= deadline {
            report.timed_out = true;
            break;
        }
        if i % 64 == 0 {
            if limits.rate > 0 {
                let due = start + Duration::from_secs_f64(i as f64 / limits.rate as f64);
                let now = Instant::now();
                if due > now {
                    thread::sleep(due - now);
                }
            }
            let pause = Instant::now();
            while backlog() > limits.max_backlog && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(1));
            }
            report.paused += pause.elapsed();
        }
        let kind = Kind::ALL[i % Kind::ALL.len()];
        let v6 = limits.v6_every > 0 && i % limits.v6_every == limits.v6_every - 1;
        let sport = rng.range(1024, 65_536) as u16;
        let l4 = l4_bytes(kind, &mut rng, sport, target.port);
        let rc = if v6 {
            let l4 = with_checksum(kind, l4, &pseudo6(target.src6, target.dst6, kind));
            let pkt = ipv6(target.src6, target.dst6, kind.proto(), &l4);
            // SAFETY: `pkt` and `to6` are valid for the lengths given.
            unsafe {
                libc::sendto(
                    s6.as_raw_fd(),
                    pkt.as_ptr().cast(),
                    pkt.len(),
                    0,
                    (&to6 as *const libc::sockaddr_in6).cast(),
                    mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            }
        } else {
            let l4 = with_checksum(kind, l4, &pseudo4(target.src4, target.dst4, kind));
            let pkt = ipv4(target.src4, target.dst4, kind.proto(), &l4, rng.u16());
            // SAFETY: `pkt` and `to4` are valid for the lengths given.
            unsafe {
                libc::sendto(
                    s4.as_raw_fd(),
                    pkt.as_ptr().cast(),
                    pkt.len(),
                    0,
                    (&to4 as *const libc::sockaddr_in).cast(),
                    mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            }
        };
        if rc < 0 {
            report.send_errors += 1;
            thread::sleep(Duration::from_micros(200));
            continue;
        }
        report.sent += 1;
        if v6 {
            report.v6 += 1;
        }
        *report.by_kind.entry(format!("{kind:?}")).or_default() += 1;
        if kind.whole_header() {
            report.whole_headers += 1;
        }
    }
    report.elapsed = start.elapsed();
    Ok(report)
}

/// An IPv4 header (no options) in front of `l4`. The kernel fills in the checksum and total
/// length of IP_HDRINCL packets; we fill them in too.
fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8], id: u16) -> Vec<u8> {
    let total = (20 + l4.len()) as u16;
    let mut p = Vec::with_capacity(20 + l4.len());
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&[0x40, 0, 64, proto, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let csum = checksum(&[&p]);
    p[10..12].copy_from_slice(&csum.to_be_bytes());
    p.extend_from_slice(l4);
    p
}

/// An IPv6 header in front of `l4` (IPPROTO_RAW sockets send it as given).
fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(40 + l4.len());
    p.extend_from_slice(&[0x60, 0, 0, 0]);
    p.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    p.extend_from_slice(&[proto, 64]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(l4);
    p
}

/// The pseudo-header for the transport checksum (its length field is filled in later).
fn pseudo4(src: Ipv4Addr, dst: Ipv4Addr, kind: Kind) -> Vec<u8> {
    let mut p = Vec::with_capacity(12);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&[0, kind.proto()]);
    p
}

fn pseudo6(src: Ipv6Addr, dst: Ipv6Addr, kind: Kind) -> Vec<u8> {
    let mut p = Vec::with_capacity(36);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&[0, 0, 0, kind.proto()]);
    p
}

/// Fill in the transport checksum where the header has room for it; broken headers keep
/// whatever they carry.
fn with_checksum(kind: Kind, mut l4: Vec<u8>, pseudo: &[u8]) -> Vec<u8> {
    let at = match kind {
        Kind::DnsTruncatedHeader | Kind::DnsRandom | Kind::DnsBogusPointer => 6,
        Kind::TcpJunk => 16,
        _ => return l4,
    };
    if l4.len() < at + 2 {
        return l4;
    }
    l4[at] = 0;
    l4[at + 1] = 0;
    let len = (l4.len() as u32).to_be_bytes();
    let mut csum = checksum(&[pseudo, &len, &l4]);
    if csum == 0 && at == 6 {
        csum = 0xffff;
    }
    l4[at..at + 2].copy_from_slice(&csum.to_be_bytes());
    l4
}

/// The Internet checksum over the concatenation of `parts` (each even-length but the last).
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let mut odd: Option<u8> = None;
    for part in parts {
        for &b in *part {
            match odd.take() {
                Some(hi) => sum += u32::from(u16::from_be_bytes([hi, b])),
                None => odd = Some(b),
            }
        }
    }
    if let Some(hi) = odd {
        sum += u32::from(u16::from_be_bytes([hi, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn udp(sport: u16, dport: u16, len_field: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::with_capacity(8 + payload.len());
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&len_field.to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

fn tcp(rng: &mut Rng, sport: u16, dport: u16, doff: u8, payload: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(20 + payload.len());
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&rng.bytes(8)); // seq, ack
    t.push(doff << 4);
    t.push(0x18); // ACK|PSH
    t.extend_from_slice(&[0x20, 0x00, 0, 0, 0, 0]); // window, checksum, urgent
    t.extend_from_slice(payload);
    t
}

/// A DNS query header (QDCOUNT 1) followed by a question whose name is broken.
fn bogus_question(rng: &mut Rng) -> Vec<u8> {
    let mut m = Vec::with_capacity(64);
    m.extend_from_slice(&rng.u16().to_be_bytes());
    m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    match rng.range(0, 7) {
        // A pointer to itself.
        0 => m.extend_from_slice(&[0xc0, 12]),
        // A label, then a pointer back to that label: a loop.
        1 => m.extend_from_slice(&[3, b'a', b'b', b'c', 0xc0, 12]),
        // Two pointers pointing at each other.
        2 => m.extend_from_slice(&[0xc0, 14, 0xc0, 12]),
        // A pointer past the end of the message.
        3 => {
            let to = 0xc000 | rng.range(64, 0x3fff) as u16;
            m.extend_from_slice(&to.to_be_bytes());
        }
        // Reserved (0x40) and extended (0x80) label types.
        4 => m.extend_from_slice(&[0x40 | rng.byte() & 0x3f, 1, 2, 3]),
        5 => m.extend_from_slice(&[0x80 | rng.byte() & 0x3f, 1, 2, 3]),
        // A label longer than what is left, and no type/class.
        _ => {
            m.push(63);
            let n = rng.range(0, 40);
            m.extend(rng.bytes(n));
        }
    }
    // Sometimes a type and class, sometimes cut in the middle of them.
    let tail = rng.range(0, 5);
    m.extend_from_slice(&[0, 1, 0, 1][..tail]);
    m
}

fn l4_bytes(kind: Kind, rng: &mut Rng, sport: u16, dport: u16) -> Vec<u8> {
    match kind {
        Kind::UdpBadLength => {
            let n = rng.range(0, 64);
            let payload = rng.bytes(n);
            let real = 8 + payload.len();
            let len_field = if rng.byte() & 1 == 0 {
                rng.range(0, 8) as u16
            } else {
                rng.range(real + 1, 65_536) as u16
            };
            udp(sport, dport, len_field, &payload)
        }
        Kind::UdpShortHeader => {
            let mut u = udp(sport, dport, 8, &[]);
            u.truncate(rng.range(4, 8));
            u
        }
        Kind::DnsTruncatedHeader => {
            let n = rng.range(0, 12);
            let payload = rng.bytes(n);
            udp(sport, dport, (8 + n) as u16, &payload)
        }
        Kind::DnsRandom => {
            let n = rng.range(12, 600);
            let mut payload = rng.bytes(n);
            // Mostly "queries" with a question announced, so the parser reads past the header.
            payload[2] &= 0x7f;
            payload[4] = 0;
            payload[5] = rng.range(0, 3) as u8;
            udp(sport, dport, (8 + n) as u16, &payload)
        }
        Kind::DnsBogusPointer => {
            let payload = bogus_question(rng);
            udp(sport, dport, (8 + payload.len()) as u16, &payload)
        }
        Kind::TcpJunk => {
            let payload = if rng.byte() & 1 == 0 {
                // A DNS-over-TCP length prefix (often wrong) in front of a broken question.
                let q = bogus_question(rng);
                let len = match rng.range(0, 3) {
                    0 => q.len() as u16,
                    1 => rng.u16(),
                    _ => rng.range(0, 12) as u16,
                };
                let mut p = len.to_be_bytes().to_vec();
                p.extend_from_slice(&q);
                p
            } else {
                let n = rng.range(1, 400);
                rng.bytes(n)
            };
            tcp(rng, sport, dport, 5, &payload)
        }
        Kind::TcpBadOffset => {
            let doff = if rng.byte() & 1 == 0 {
                rng.range(0, 5) as u8
            } else {
                15
            };
            let n = rng.range(0, 20);
            let payload = rng.bytes(n);
            tcp(rng, sport, dport, doff, &payload)
        }
        Kind::TcpShortHeader => {
            let mut t = tcp(rng, sport, dport, 5, &[]);
            t.truncate(rng.range(4, 20));
            t
        }
    }
}

// ---------------------------------------------------------------------------------------------
// DNS clients: UDP like a stub resolver, TCP in every shape a stream allows.
// ---------------------------------------------------------------------------------------------

/// How a client writes its TCP queries. Every write is its own segment: the socket has
/// TCP_NODELAY and the writes of one message are [`AskLimits::pause`] apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpShape {
    /// One query per connection, in one segment.
    OnePerConnection,
    /// This many queries per connection, all in one segment; answers read in any order.
    Pipelined(usize),
    /// One query per connection: the two-byte length prefix alone, then the message.
    LonePrefix,
    /// One query per connection, cut in the middle of the message (prefix and first half, then
    /// the rest).
    CutMiddle,
}

/// How a client asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Every query over UDP from one socket, all sent at once, unanswered ones sent again
    /// (`tries`); a truncated answer is asked again over TCP, one query per connection, as a
    /// stub resolver does.
    Udp,
    Tcp(TcpShape),
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shape::Udp => f.write_str("UDP"),
            Shape::Tcp(TcpShape::OnePerConnection) => f.write_str("TCP, one query per connection"),
            Shape::Tcp(TcpShape::Pipelined(n)) => {
                write!(f, "TCP, {n} pipelined queries per segment")
            }
            Shape::Tcp(TcpShape::LonePrefix) => {
                f.write_str("TCP, length prefix alone then the message")
            }
            Shape::Tcp(TcpShape::CutMiddle) => f.write_str("TCP, message cut in the middle"),
        }
    }
}

/// Bounds of a client's run.
#[derive(Debug, Clone, Copy)]
pub struct AskLimits {
    /// How long to wait for answers per try (UDP), per connection (TCP, from the connect).
    pub timeout: Duration,
    /// UDP tries per query (TCP connections are not retried).
    pub tries: u32,
    /// UDP queries outstanding at once (a new one is sent when one is answered or given up).
    pub window: usize,
    /// TCP connections open at once.
    pub workers: usize,
    /// Between the writes of one split message.
    pub pause: Duration,
}

impl Default for AskLimits {
    fn default() -> AskLimits {
        AskLimits {
            timeout: Duration::from_millis(1500),
            tries: 2,
            window: usize::MAX,
            workers: 8,
            pause: Duration::from_millis(20),
        }
    }
}

/// What a client got.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Asked {
    pub sent: usize,
    /// Names answered with the lab's address.
    pub answered: usize,
    /// Names answered truncated over UDP and asked again over TCP.
    pub retried_over_tcp: usize,
    /// Names never answered (sorted).
    pub unanswered: Vec<String>,
}

impl fmt::Display for Asked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} answered", self.answered, self.sent)?;
        if self.retried_over_tcp > 0 {
            write!(f, " ({} retried over TCP)", self.retried_over_tcp)?;
        }
        Ok(())
    }
}

/// Ask `names` (type A from an IPv4 server address, AAAA from an IPv6 one) of `server` from
/// inside `ns`, shaped as `shape`. An answer counts when its id and question match the query
/// and it holds the lab upstream's address (`expected`).
pub fn ask(
    ns: &Netns,
    server: SocketAddr,
    names: &[String],
    expected: IpAddr,
    shape: Shape,
    limits: AskLimits,
) -> io::Result<Asked> {
    let qtype = if server.is_ipv4() {
        RecordType::A
    } else {
        RecordType::AAAA
    };
    let names: Vec<String> = names.to_vec();
    let (answered, retried) = match shape {
        Shape::Udp => {
            let list = names.clone();
            let (answered, truncated) = join(spawn_in(ns, "ask-udp", move || {
                ask_udp(server, &list, qtype, expected, limits)
            })?)?;
            let again = ask_tcp(
                ns,
                server,
                &truncated,
                qtype,
                expected,
                TcpShape::OnePerConnection,
                limits,
            )?;
            let n = truncated.len();
            (answered.into_iter().chain(again).collect(), n)
        }
        Shape::Tcp(t) => (ask_tcp(ns, server, &names, qtype, expected, t, limits)?, 0),
    };
    let answered: std::collections::BTreeSet<String> = answered.into_iter().collect();
    Ok(Asked {
        sent: names.len(),
        answered: answered.len(),
        retried_over_tcp: retried,
        unanswered: names
            .iter()
            .filter(|n| !answered.contains(*n))
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect(),
    })
}

/// A query for `name` with `id`, recursion desired.
fn dns_query(id: u16, name: &str, qtype: RecordType) -> io::Result<Vec<u8>> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(
        Name::from_ascii(name).map_err(io::Error::other)?,
        qtype,
    ));
    m.to_vec().map_err(io::Error::other)
}

/// How an answer to query `id` for `name` came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    /// Holds the expected address.
    Good,
    /// Truncated: ask again over TCP.
    Truncated,
    /// Anything else (another id, question or address, an error code).
    Bad,
}

fn check_reply(bytes: &[u8], id: u16, name: &str, expected: IpAddr) -> Reply {
    let Ok(m) = Message::from_vec(bytes) else {
        return Reply::Bad;
    };
    let same_question = m.queries.first().is_some_and(|q| {
        q.name()
            .to_ascii()
            .trim_end_matches('.')
            .eq_ignore_ascii_case(name.trim_end_matches('.'))
    });
    if m.metadata.id != id || m.metadata.message_type != MessageType::Response || !same_question {
        return Reply::Bad;
    }
    if m.metadata.truncation {
        return Reply::Truncated;
    }
    let good = m.answers.iter().any(|r| match (&r.data, expected) {
        (RData::A(a), IpAddr::V4(e)) => a.0 == e,
        (RData::AAAA(a), IpAddr::V6(e)) => a.0 == e,
        _ => false,
    });
    if good { Reply::Good } else { Reply::Bad }
}

/// The id of the first query of a client run: different runs use different ids.
fn first_id(names: &[String]) -> u16 {
    let seed = names
        .first()
        .map(|n| {
            n.bytes()
                .fold(0u16, |h, b| h.wrapping_mul(31).wrapping_add(u16::from(b)))
        })
        .unwrap_or(0);
    seed ^ (std::process::id() as u16)
}

/// UDP from one socket of the calling thread's namespace, at most `limits.window` queries
/// outstanding, each sent up to `limits.tries` times `limits.timeout` apart; returns the names
/// answered and the names answered truncated.
fn ask_udp(
    server: SocketAddr,
    names: &[String],
    qtype: RecordType,
    expected: IpAddr,
    limits: AskLimits,
) -> io::Result<(Vec<String>, Vec<String>)> {
    let any: SocketAddr = if server.is_ipv4() {
        SocketAddr::from(([0u8; 4], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let socket = UdpSocket::bind(any)?;
    let base = first_id(names);
    let id_of = |i: usize| base.wrapping_add(i as u16);
    let ids: BTreeMap<u16, usize> = (0..names.len()).map(|i| (id_of(i), i)).collect();
    let mut state: Vec<Option<Reply>> = vec![None; names.len()];
    // Outstanding queries: index -> (when the last try is up, tries so far).
    let mut outstanding: BTreeMap<usize, (Instant, u32)> = BTreeMap::new();
    let mut next = 0;
    let mut buf = [0u8; 4096];
    loop {
        while outstanding.len() < limits.window.max(1) && next < names.len() {
            socket.send_to(&dns_query(id_of(next), &names[next], qtype)?, server)?;
            outstanding.insert(next, (Instant::now() + limits.timeout, 1));
            next += 1;
        }
        // Tries that are up: again, or given up.
        let now = Instant::now();
        let due: Vec<usize> = outstanding
            .iter()
            .filter(|(_, (until, _))| *until <= now)
            .map(|(i, _)| *i)
            .collect();
        for i in due {
            let tries = outstanding.get(&i).map_or(0, |(_, t)| *t);
            if tries < limits.tries {
                socket.send_to(&dns_query(id_of(i), &names[i], qtype)?, server)?;
                outstanding.insert(i, (Instant::now() + limits.timeout, tries + 1));
            } else {
                outstanding.remove(&i);
            }
        }
        let Some(until) = outstanding.values().map(|(u, _)| *u).min() else {
            if next >= names.len() {
                break;
            }
            continue;
        };
        let wait = until.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            continue;
        }
        socket.set_read_timeout(Some(wait))?;
        let Ok((n, _)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let Some(reply) = buf.get(..n) else { continue };
        let Some(id) = reply.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]])) else {
            continue;
        };
        if let Some(&i) = ids.get(&id)
            && outstanding.contains_key(&i)
        {
            match check_reply(reply, id, &names[i], expected) {
                Reply::Bad => {}
                r => {
                    state[i] = Some(r);
                    outstanding.remove(&i);
                }
            }
        }
    }
    let pick = |want: Reply| -> Vec<String> {
        names
            .iter()
            .zip(&state)
            .filter(|(_, s)| **s == Some(want))
            .map(|(n, _)| n.clone())
            .collect()
    };
    Ok((pick(Reply::Good), pick(Reply::Truncated)))
}

/// TCP with `limits.workers` connections at once, each a thread in `ns`; returns the names
/// answered.
fn ask_tcp(
    ns: &Netns,
    server: SocketAddr,
    names: &[String],
    qtype: RecordType,
    expected: IpAddr,
    shape: TcpShape,
    limits: AskLimits,
) -> io::Result<Vec<String>> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let per_connection = match shape {
        TcpShape::Pipelined(n) => n.max(1),
        _ => 1,
    };
    let units: std::collections::VecDeque<Vec<String>> = names
        .chunks(per_connection)
        .map(<[String]>::to_vec)
        .collect();
    let units = std::sync::Arc::new(std::sync::Mutex::new(units));
    let base = first_id(names);
    let mut handles = Vec::new();
    for w in 0..limits.workers.max(1) {
        let units = std::sync::Arc::clone(&units);
        handles.push(spawn_in(ns, "ask-tcp", move || {
            let mut answered = Vec::new();
            let mut k = 0u16;
            loop {
                let unit = {
                    let mut q = units.lock().unwrap_or_else(|p| p.into_inner());
                    q.pop_front()
                };
                let Some(unit) = unit else { break };
                // Ids unique across workers and connections of this run.
                let id0 = base
                    .wrapping_add((w as u16).wrapping_mul(4099))
                    .wrapping_add(k.wrapping_mul(per_connection as u16));
                k = k.wrapping_add(1);
                if let Ok(got) = tcp_connection(server, &unit, id0, qtype, expected, shape, limits)
                {
                    answered.extend(got);
                }
            }
            Ok(answered)
        })?);
    }
    let mut out = Vec::new();
    for h in handles {
        out.extend(join(h)?);
    }
    Ok(out)
}

/// One connection: write the queries for `unit` as `shape` says, read answers until each is in
/// or the time is up.
fn tcp_connection(
    server: SocketAddr,
    unit: &[String],
    id0: u16,
    qtype: RecordType,
    expected: IpAddr,
    shape: TcpShape,
    limits: AskLimits,
) -> io::Result<Vec<String>> {
    let deadline = Instant::now() + limits.timeout;
    let mut conn = TcpStream::connect_timeout(&server, limits.timeout)?;
    conn.set_nodelay(true)?;
    let mut framed = Vec::new();
    for (i, name) in unit.iter().enumerate() {
        let q = dns_query(id0.wrapping_add(i as u16), name, qtype)?;
        framed.extend_from_slice(&(q.len() as u16).to_be_bytes());
        framed.extend_from_slice(&q);
    }
    let cut = match shape {
        TcpShape::OnePerConnection | TcpShape::Pipelined(_) => framed.len(),
        TcpShape::LonePrefix => 2,
        TcpShape::CutMiddle => 2 + (framed.len() - 2) / 2,
    };
    let (first, rest) = framed.split_at(cut.min(framed.len()));
    conn.write_all(first)?;
    if !rest.is_empty() {
        thread::sleep(limits.pause);
        conn.write_all(rest)?;
    }
    let mut answered = Vec::new();
    let mut pending: BTreeMap<u16, &String> = unit
        .iter()
        .enumerate()
        .map(|(i, n)| (id0.wrapping_add(i as u16), n))
        .collect();
    while !pending.is_empty() {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        conn.set_read_timeout(Some(deadline - now))?;
        let mut len = [0u8; 2];
        conn.read_exact(&mut len)?;
        let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
        conn.read_exact(&mut msg)?;
        let Some(id) = msg.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]])) else {
            continue;
        };
        if let Some(name) = pending.get(&id).copied()
            && check_reply(&msg, id, name, expected) == Reply::Good
        {
            pending.remove(&id);
            answered.push(name.clone());
        }
    }
    Ok(answered)
}

/// Packets nfqmark's NFQUEUE rules for `queue` counted in `ns` (every table, IPv4 and IPv6),
/// from `iptables-save -c`: every packet that reached such a rule, queued or let past. Against
/// the kernel's queue ids ([`ProcQueue::id_sequence`]: one per packet queued), the difference
/// is what the kernel let past the queue, whatever nfqmark reports.
pub fn queue_rule_packets(ns: &Netns, queue: u16) -> io::Result<u64> {
    let mut total = 0;
    for tool in ["iptables-save", "ip6tables-save"] {
        let out = ns.exec(tool, &["-c"])?;
        total += sum_queue_rule_packets(&String::from_utf8_lossy(&out.stdout), queue);
    }
    Ok(total)
}

/// The packet counts (`[packets:bytes]`) of the `iptables-save -c` lines that send to `queue`
/// and carry nfqmark's comment.
pub fn sum_queue_rule_packets(text: &str, queue: u16) -> u64 {
    let num = queue.to_string();
    text.lines()
        .filter(|l| l.contains("-j NFQUEUE") && l.contains("nfqmark"))
        .filter(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words
                .windows(2)
                .any(|w| w[0] == "--queue-num" && w[1] == num)
        })
        .filter_map(|l| {
            let counters = l.strip_prefix('[')?.split(']').next()?;
            counters.split(':').next()?.parse::<u64>().ok()
        })
        .sum()
}

// ---------------------------------------------------------------------------------------------
// A hostile LAN host: forged answers, queries with a wrong checksum, query floods.
// ---------------------------------------------------------------------------------------------

/// An IPv4/UDP packet from `src` to `dst` carrying `payload`, with its UDP checksum right, or
/// with `bad_checksum` wrong (never 0, which would mean "no checksum", and never a value equal
/// to the right one in ones' complement).
pub fn udp4_packet(
    src: std::net::SocketAddrV4,
    dst: std::net::SocketAddrV4,
    payload: &[u8],
    bad_checksum: bool,
    ip_id: u16,
) -> Vec<u8> {
    let len = 8 + payload.len();
    let mut u = udp(src.port(), dst.port(), len as u16, payload);
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src.ip().octets());
    pseudo.extend_from_slice(&dst.ip().octets());
    pseudo.extend_from_slice(&[0, libc::IPPROTO_UDP as u8]);
    pseudo.extend_from_slice(&(len as u16).to_be_bytes());
    let mut good = checksum(&[&pseudo, &u]);
    if good == 0 {
        good = 0xffff;
    }
    let sum = if bad_checksum {
        match good ^ 0x00ff {
            0 => 0x1234,
            bad => bad,
        }
    } else {
        good
    };
    u[6..8].copy_from_slice(&sum.to_be_bytes());
    ipv4(*src.ip(), *dst.ip(), libc::IPPROTO_UDP as u8, &u, ip_id)
}

/// Whether the UDP checksum of an IPv4 packet built by [`udp4_packet`] verifies.
pub fn udp4_checksum_ok(packet: &[u8]) -> bool {
    let (Some(ip), Some(l4)) = (packet.get(..20), packet.get(20..)) else {
        return false;
    };
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&ip[12..20]);
    pseudo.extend_from_slice(&[0, libc::IPPROTO_UDP as u8]);
    pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    checksum(&[&pseudo, l4]) == 0
}

/// A DNS answer to a type A question for `name` with one A record `addr` of TTL `ttl`, as a
/// resolver or a server would send it (QR, RD, RA set).
pub fn dns_answer_ttl(id: u16, name: &str, addr: Ipv4Addr, ttl: u32) -> io::Result<Vec<u8>> {
    use hickory_proto::rr::Record;
    use hickory_proto::rr::rdata::A;
    let owner = Name::from_ascii(name).map_err(io::Error::other)?;
    let mut m = Message::new(id, MessageType::Response, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.metadata.recursion_available = true;
    m.add_query(Query::query(owner.clone(), RecordType::A));
    m.add_answer(Record::from_rdata(owner, ttl, RData::A(A(addr))));
    m.to_vec().map_err(io::Error::other)
}

/// A query for `name` (type A, recursion desired) with `id`, as a stub resolver sends it.
pub fn dns_query_a(id: u16, name: &str) -> io::Result<Vec<u8>> {
    dns_query(id, name, RecordType::A)
}

/// The MAC address of interface `dev` inside `ns` (from `ip -o link`).
pub fn mac_address(ns: &Netns, dev: &str) -> io::Result<[u8; 6]> {
    let out = ns.ip(&["-o", "link", "show", "dev", dev])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mac = text
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .ok_or_else(|| io::Error::other(format!("{dev} in {} has no MAC: {text}", ns.name())))?;
    let mut bytes = [0u8; 6];
    let mut parts = mac.split(':');
    for b in &mut bytes {
        let part = parts
            .next()
            .ok_or_else(|| io::Error::other(format!("bad MAC {mac}")))?;
        *b = u8::from_str_radix(part, 16).map_err(io::Error::other)?;
    }
    Ok(bytes)
}

/// An Ethernet frame (IPv4) from `src` to `dst` around `ip`.
pub fn ether_ipv4(dst: [u8; 6], src: [u8; 6], ip: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + ip.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(ip);
    f
}

/// Send whole IPv4 packets (header included, as built by [`udp4_packet`]) from a raw socket
/// inside `ns`, each to the destination its header names, `gap` apart. Returns how many the
/// kernel took.
pub fn send_ipv4(ns: &Netns, packets: Vec<Vec<u8>>, gap: Duration) -> io::Result<usize> {
    join(spawn_in(ns, "raw-ipv4", move || {
        let s = raw_socket(libc::AF_INET)?;
        let mut sent = 0;
        for pkt in &packets {
            let Some(dst) = pkt.get(16..20) else { continue };
            // SAFETY: sockaddr_in is plain data; zeroed is a valid start.
            let mut to: libc::sockaddr_in = unsafe { mem::zeroed() };
            to.sin_family = libc::AF_INET as libc::sa_family_t;
            to.sin_addr.s_addr = u32::from_ne_bytes([dst[0], dst[1], dst[2], dst[3]]);
            // SAFETY: `pkt` and `to` are valid for the lengths given.
            let rc = unsafe {
                libc::sendto(
                    s.as_raw_fd(),
                    pkt.as_ptr().cast(),
                    pkt.len(),
                    0,
                    (&to as *const libc::sockaddr_in).cast(),
                    mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
            sent += 1;
            thread::sleep(gap);
        }
        Ok(sent)
    })?)
}

/// Send whole Ethernet frames out of interface `dev` of `ns` (an AF_PACKET socket), `gap`
/// apart: how a LAN host puts on the wire a packet its own stack would never route there (one
/// addressed to itself, through the router). Returns how many the kernel took.
pub fn send_frames(
    ns: &Netns,
    dev: &str,
    frames: Vec<Vec<u8>>,
    gap: Duration,
) -> io::Result<usize> {
    let ifindex = ns.ifindex(dev)?;
    join(spawn_in(ns, "frames", move || {
        // SAFETY: plain socket(2); the fd is owned right away. Protocol 0: send only.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut sent = 0;
        for frame in &frames {
            // SAFETY: sockaddr_ll is plain data; zeroed is a valid start.
            let mut to: libc::sockaddr_ll = unsafe { mem::zeroed() };
            to.sll_family = libc::AF_PACKET as u16;
            to.sll_protocol = 0x0800u16.to_be();
            to.sll_ifindex = ifindex as i32;
            to.sll_halen = 6;
            if let Some(dst) = frame.get(..6) {
                to.sll_addr[..6].copy_from_slice(dst);
            }
            // SAFETY: `frame` and `to` are valid for the lengths given.
            let rc = unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&to as *const libc::sockaddr_ll).cast(),
                    mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
            sent += 1;
            thread::sleep(gap);
        }
        Ok(sent)
    })?)
}

/// A flood of well-formed DNS queries from one UDP socket (the kernel's checksums: the resolver
/// takes every one), bounded in count and time.
#[derive(Debug, Clone, Copy)]
pub struct QueryFlood {
    pub server: SocketAddr,
    /// Queries to send.
    pub queries: u64,
    /// Queries per second at most (0: as fast as the socket takes them).
    pub rate: u64,
    /// Stop after this long even if not all were sent.
    pub time: Duration,
}

/// What a query flood did.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueryFloodReport {
    pub sent: u64,
    pub send_errors: u64,
    pub elapsed: Duration,
    /// The time limit ended the flood before every query was sent.
    pub timed_out: bool,
}

impl fmt::Display for QueryFloodReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} queries in {:.2?} ({:.0}/s), {} send errors{}",
            self.sent,
            self.elapsed,
            self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9),
            self.send_errors,
            if self.timed_out { ", TIME LIMIT" } else { "" }
        )
    }
}

/// Send `flood.queries` queries from inside `ns`, query `i` asking `name_of(i)` with id `i`
/// (mod 2^16); answers are never read (the socket's buffer overflows and the kernel drops
/// them). A name equal to the previous one reuses its bytes, so a one-name flood costs one
/// `sendto` per query.
pub fn query_flood<F>(ns: &Netns, flood: QueryFlood, name_of: F) -> io::Result<QueryFloodReport>
where
    F: Fn(u64) -> String + Send + 'static,
{
    join(spawn_in(ns, "query-flood", move || {
        let any: SocketAddr = if flood.server.is_ipv4() {
            SocketAddr::from(([0u8; 4], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        };
        let socket = UdpSocket::bind(any)?;
        socket.connect(flood.server)?;
        let mut report = QueryFloodReport::default();
        let start = Instant::now();
        let deadline = start + flood.time;
        let mut last: Option<(String, Vec<u8>)> = None;
        for i in 0..flood.queries {
            if i % 64 == 0 {
                if Instant::now() >= deadline {
                    report.timed_out = true;
                    break;
                }
                if flood.rate > 0 {
                    let due = start + Duration::from_secs_f64(i as f64 / flood.rate as f64);
                    let now = Instant::now();
                    if due > now {
                        thread::sleep(due - now);
                    }
                }
            }
            let name = name_of(i);
            let bytes = match last.take() {
                Some((n, mut b)) if n == name => {
                    if let Some(id) = b.get_mut(..2) {
                        id.copy_from_slice(&(i as u16).to_be_bytes());
                    }
                    (n, b)
                }
                _ => {
                    let b = dns_query(i as u16, &name, RecordType::A)?;
                    (name, b)
                }
            };
            match socket.send(&bytes.1) {
                Ok(_) => report.sent += 1,
                Err(_) => {
                    report.send_errors += 1;
                    thread::sleep(Duration::from_micros(200));
                }
            }
            last = Some(bytes);
        }
        report.elapsed = start.elapsed();
        Ok(report)
    })?)
}

#[cfg(test)]
mod tests {
    // The helpers are exercised by the end-to-end tests; the parsing ones also here.
    use super::*;

    #[test]
    fn udp4_checksum_is_right_or_wrong_as_asked() {
        let src = "198.18.2.2:4000".parse().expect("addr");
        let dst = "198.18.2.1:53".parse().expect("addr");
        for n in 0..64u8 {
            let payload: Vec<u8> = (0..n).collect();
            assert!(udp4_checksum_ok(&udp4_packet(src, dst, &payload, false, 1)));
            let bad = udp4_packet(src, dst, &payload, true, 1);
            assert!(!udp4_checksum_ok(&bad));
            assert_ne!(bad.get(26..28), Some(&[0u8, 0][..]), "0 means no checksum");
        }
    }

    #[test]
    fn queue_rule_counters_are_summed_for_one_queue() {
        let text = "*mangle\n\
            [12:900] -A INPUT -p udp -m comment --comment nfqmark -j NFQUEUE --queue-num 23 --queue-bypass\n\
            [5:300] -A OUTPUT -m comment --comment nfqmark -j NFQUEUE --queue-num 230\n\
            [7:300] -A OUTPUT -j NFQUEUE --queue-num 23\n\
            [30:1000] -A OUTPUT -m comment --comment nfqmark -j NFQUEUE --queue-num 23\n\
            [1:1] -A OUTPUT -m comment --comment nfqmark -j CONNMARK --restore-mark\n";
        assert_eq!(sum_queue_rule_packets(text, 23), 42);
    }

    #[test]
    fn proc_queue_line_is_read() {
        let text = "    9  12345     3 2 65535     0     0      841  1\n";
        let q = parse_proc_queue(text, 9).expect("queue 9");
        assert_eq!((q.waiting, q.id_sequence), (3, 841));
        assert!(parse_proc_queue(text, 8).is_none());
    }
}
