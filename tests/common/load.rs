//! Load and inspection helpers for the daemon's end-to-end tests (`tests/e2e_daemon.rs`).
//!
//! A raw-socket flood of malformed DNS-port packets sent from inside a client namespace, dnsperf
//! runs, the kernel's own view of a queue (`/proc/net/netfilter/nfnetlink_queue`), nfqmark's
//! counter line, a process's RSS, and the exit status of a child the lab owns (read without
//! reaping it, so the lab still cleans up). Every loop here is bounded in count and in time.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read};
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nfqmark::lab::netns::Netns;

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
    let path = format!("/run/netns/{}", ns.name());
    thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let file = std::fs::File::open(&path)?;
            // SAFETY: setns on an open namespace fd, kept open by `file` for the call; this thread
            // is ours and ends with `f`.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            f()
        })
}

/// Join a thread started by [`spawn_in`].
pub fn join<T>(h: thread::JoinHandle<io::Result<T>>) -> io::Result<T> {
    h.join()
        .map_err(|_| io::Error::other("namespace thread panicked"))?
}

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

#[cfg(test)]
mod tests {
    // The helpers are exercised by the end-to-end tests; the parsing ones also here.
    use super::*;

    #[test]
    fn proc_queue_line_is_read() {
        let text = "    9  12345     3 2 65535     0     0      841  1\n";
        let q = parse_proc_queue(text, 9).expect("queue 9");
        assert_eq!((q.waiting, q.id_sequence), (3, 841));
        assert!(parse_proc_queue(text, 8).is_none());
    }
}
