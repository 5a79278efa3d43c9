//! DNS-learned flow marks at kernel speed (issue 15), on the lab's network namespaces
//! (`nfqmark_lab`, the real multi-WAN layout: NAT on each uplink, foreign sources dropped).
//!
//! 1. **New connections per second** through the router from client A, which has a flow rule
//!    and 1,000 learned addresses (`ip-198-18-16-0` ... resolved through the router's
//!    dnsmasq first): several threads in client A open TCP connections to those addresses
//!    round-robin, one after the other, each closed at once with a reset (no TIME_WAIT, every
//!    connection a new conntrack entry), to an acceptor of the benchmark's own on the upstream
//!    host. A connection not open within 200 ms is counted as failed and given up. Three configurations, alternated within every round
//!    (the first one rotates):
//!    - `none`: no marking at all (no flow rule, no nfqmark; the connections take link 1);
//!    - `dns`: nfqmark for DNS pairing only (`nfqmark setup`'s rules for a rules file without
//!      flow rules): the firewall rules every marking router has, the connections unmarked;
//!    - `queue`: the queue backend (each new connection's first packet queued to nfqmark);
//!    - `kernel`: the kernel backend (the learned addresses are nft set elements; nfqmark only
//!      sees DNS).
//!
//!    Each run reports connections per second over the measured seconds, the share of SYNs
//!    that arrived over link 2 (marked: 1 for queue and kernel, 0 for none; counted by iptables
//!    on the upstream host), nfqmark's CPU per connection and the whole machine's busy share.
//!    The summary gives the medians and the ratios to `none` (median of the per-round ratios;
//!    goal kernel >= 0.97 x none), and kernel/dns: what marking new flows adds to a router that
//!    pairs DNS anyway.
//! 2. **Answer to element**, kernel backend: client A asks the router's dnsmasq for new names
//!    (each a new address, so a new element) at a steady rate (2,000 a second by default);
//!    a thread in the router listens to nf_tables notifications (`NftWatch`). The latency of
//!    an address is the time its element was announced minus the time the answer reached
//!    client A (the answer leaves the router some microseconds before): negative when the
//!    element was in the kernel before the client had its answer. Reported: p50, p90, p99,
//!    max, how many answers had no element, and nfqmark's own histogram (answer learned to
//!    batch acknowledged). Goal: p99 <= 5 ms.
//!
//! Nothing is pinned: every party shares the machine's CPUs as the scheduler decides. The
//! load of the machine (load average, busy share) is printed with the figures, since other
//! work on a shared machine moves them.
//!
//! Run it with `benches/kflows.sh` (root). Under `cargo test --benches` it does nothing.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "benchmark code, never shipped: a step that fails ends the run, loudly and at once"
)]

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nfqmark::nfnl::NftWatch;
use nfqmark_lab::netns;
use nfqmark_lab::{self as lab, Family, Options, Resolver, World};

#[path = "common/procstat.rs"]
mod procstat;
use procstat::{machine_ticks, stat_ticks, ticks_per_second};

const USAGE: &str = "\
benches/kflows.sh [--rounds N] [--duration S] [--warmup S] [--connectors N] [--addresses N]
                  [--rate N] [--latency-seconds S] [--nfqmark PATH] [--only conn|latency]
  --rounds N           rounds of the connection rate; each runs none, dns, queue, kernel (default 10)
  --duration S         measured seconds per run (default 3)
  --warmup S           seconds of connections before the measured ones (default 1)
  --connectors N       threads in client A opening connections (default 8)
  --addresses N        learned addresses the connections go to (default 1000, at most 1024)
  --rate N             answers per second for the latency part (default 2000)
  --latency-seconds S  how long the latency part asks (default 10)
  --nfqmark PATH       nfqmark binary (default: the one cargo built with this benchmark)
  --modes LIST         which configurations of the connection part (default none,dns,queue,kernel)
  --only conn|latency  run one part only";

#[derive(Debug, Clone)]
struct Args {
    bench: bool,
    rounds: usize,
    duration: u64,
    warmup: u64,
    connectors: usize,
    addresses: usize,
    rate: u64,
    latency_seconds: u64,
    nfqmark: PathBuf,
    conn: bool,
    latency: bool,
    modes: Vec<Mode>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        bench: false,
        rounds: 10,
        duration: 3,
        warmup: 1,
        connectors: 8,
        addresses: 1000,
        rate: 2000,
        latency_seconds: 10,
        nfqmark: PathBuf::from(env!("CARGO_BIN_EXE_nfqmark")),
        conn: true,
        latency: true,
        modes: vec![Mode::None, Mode::Dns, Mode::Queue, Mode::Kernel],
    };
    let mut it = std::env::args().skip(1);
    let num = |name: &str, v: Option<String>| -> Result<u64, String> {
        v.as_deref()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{name} needs a number\n{USAGE}"))
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--bench" => a.bench = true,
            "--rounds" => a.rounds = num("--rounds", it.next())?.max(1) as usize,
            "--duration" => a.duration = num("--duration", it.next())?.max(1),
            "--warmup" => a.warmup = num("--warmup", it.next())?,
            "--connectors" => a.connectors = num("--connectors", it.next())?.clamp(1, 64) as usize,
            "--addresses" => a.addresses = num("--addresses", it.next())?.clamp(1, 1024) as usize,
            "--rate" => a.rate = num("--rate", it.next())?.clamp(1, 50_000),
            "--latency-seconds" => a.latency_seconds = num("--latency-seconds", it.next())?.max(1),
            "--nfqmark" => {
                a.nfqmark = PathBuf::from(
                    it.next()
                        .ok_or_else(|| format!("--nfqmark needs a path\n{USAGE}"))?,
                )
            }
            "--modes" => {
                a.modes = it
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .map(|m| match m.trim() {
                        "none" => Ok(Mode::None),
                        "dns" => Ok(Mode::Dns),
                        "queue" => Ok(Mode::Queue),
                        "kernel" => Ok(Mode::Kernel),
                        _ => Err(format!("--modes takes none,dns,queue,kernel\n{USAGE}")),
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--only" => match it.next().as_deref() {
                Some("conn") => a.latency = false,
                Some("latency") => a.conn = false,
                _ => return Err(format!("--only takes conn or latency\n{USAGE}")),
            },
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument '{other}'\n{USAGE}")),
        }
    }
    Ok(a)
}

/// How the router marks client A's new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    None,
    /// nfqmark for DNS pairing only (setup's rules without flow rules): what the flow
    /// backends add to that.
    Dns,
    Queue,
    Kernel,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::None => "none (no marking)",
            Mode::Dns => "DNS pairing only",
            Mode::Queue => "queue backend",
            Mode::Kernel => "kernel backend",
        }
    }
}

const RULES: &str = "\
flow src 198.18.1.0/24 names *.video.nfqm.example set-mark 0x20/0xff
default accept
";
const QUEUE: u16 = 30;
/// The learned addresses of the connection part: 198.18.16.0/22 (routed to the upstream host).
const CONN_PREFIX: (u8, u8) = (16, 4);
/// The port the connections go to: the benchmark's own acceptor on the upstream host (the
/// lab's sink polls every 10 ms with a backlog of 128, which overflows at these rates).
const CONN_PORT: u16 = 8080;

/// Accept and drop connections on port [`CONN_PORT`] of every address of the upstream host,
/// until `stop`: a deep backlog, two threads, each draining the queue at every wake-up (on a
/// loaded machine an acceptor that falls behind overflows the queue, and a dropped handshake
/// holds a connector for its timeout).
fn acceptor(w: &World, stop: Arc<AtomicBool>) -> io::Result<Vec<thread::JoinHandle<()>>> {
    w.upstream.sysctl("net.core.somaxconn", "65535")?;
    let ns = w.upstream.name().to_string();
    let listener = thread::spawn(move || -> io::Result<std::net::TcpListener> {
        netns::enter(&ns)?;
        let l = std::net::TcpListener::bind(("0.0.0.0", CONN_PORT))?;
        // SAFETY: listen(2) on a socket this thread owns.
        unsafe { libc::listen(l.as_raw_fd(), 65535) };
        l.set_nonblocking(true)?;
        Ok(l)
    })
    .join()
    .map_err(|_| io::Error::other("acceptor setup panicked"))??;
    let mut handles = Vec::new();
    for _ in 0..2 {
        let l = listener.try_clone()?;
        let stop = Arc::clone(&stop);
        handles.push(thread::spawn(move || {
            let mut pfd = libc::pollfd {
                fd: l.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: one valid pollfd.
                if unsafe { libc::poll(&mut pfd, 1, 100) } > 0 {
                    while l.accept().is_ok() {}
                }
            }
        }));
    }
    Ok(handles)
}

fn run_cmd(program: &str, args: &[&str], stdin: Option<&str>) -> io::Result<String> {
    use std::io::Write as _;
    let mut child = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    if let (Some(mut pipe), Some(text)) = (child.stdin.take(), stdin) {
        pipe.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A lab with client A's flow rule in `mode`, nfqmark and dnsmasq running, and the extra
/// service prefix routed (main table over link 1, the cheap table over link 2).
fn build(args: &Args, mode: Mode) -> io::Result<World> {
    let mut options = Options::new("kfb", Resolver::Dnsmasq, Some(args.nfqmark.clone()));
    options.queue = QUEUE;
    options.queue_rules = false;
    options.marking = false;
    if mode == Mode::None {
        options.nfqmark = None;
    }
    let mut w = World::build(options)?;
    let prefix = format!("198.18.{}.0/22", CONN_PREFIX.0);
    w.upstream
        .ip(&["route", "add", "local", &prefix, "dev", "lo"])?;
    w.router
        .ip(&["route", "add", &prefix, "via", "198.18.3.2", "dev", "link1"])?;
    let cheap = lab::CHEAP_TABLE.to_string();
    w.router.ip(&[
        "route",
        "add",
        &prefix,
        "via",
        "198.18.4.2",
        "dev",
        "link2",
        "table",
        &cheap,
    ])?;
    // The clients' subnet in the cheap table too, as policy-routing setups do (mwan3 copies
    // the connected routes into each link's table): replies to a marked connection are found
    // there, without falling through to the main table.
    w.router.ip(&[
        "route",
        "add",
        "198.18.1.0/24",
        "dev",
        "ca",
        "table",
        &cheap,
    ])?;
    w.router
        .ip(&["rule", "add", "fwmark", "0x20/0xff", "table", &cheap])?;

    // SYNs per link at the upstream host, counted by the kernel.
    for link in ["link1", "link2"] {
        w.upstream.exec(
            "iptables",
            &[
                "-w",
                "-t",
                "raw",
                "-A",
                "PREROUTING",
                "-i",
                link,
                "-p",
                "tcp",
                "--syn",
                "--dport",
                "8080",
            ],
        )?;
    }
    let rules = w.path("kflows.rules");
    std::fs::write(
        &rules,
        if mode == Mode::Dns {
            "default accept\n"
        } else {
            RULES
        },
    )?;
    let rules_text = rules.display().to_string();
    let bin = args.nfqmark.display().to_string();
    let queue = QUEUE.to_string();
    let backend = match mode {
        Mode::None => None,
        Mode::Queue | Mode::Dns => Some("queue"),
        Mode::Kernel => Some("nft"),
    };
    if let Some(backend) = backend {
        let text = run_cmd(
            &bin,
            &[
                "setup",
                "--iptables",
                "--queue",
                &queue,
                "--flow-backend",
                backend,
                "--rules",
                &rules_text,
            ],
            None,
        )?;
        w.router_iptables_restore(Family::V4, &text)?;
        if mode == Mode::Kernel {
            let table = run_cmd(
                &bin,
                &["setup", "--flow-table", "--rules", &rules_text],
                None,
            )?;
            let path = w.path("flows.nft");
            std::fs::write(&path, table)?;
            let out = w.router.exec("nft", &["-f", &path.display().to_string()])?;
            if !out.status.success() {
                return Err(io::Error::other(format!(
                    "nft -f: {}",
                    String::from_utf8_lossy(&out.stderr)
                )));
            }
        }
        w.options_mut().nfqmark_args = vec![
            "--rules".into(),
            rules_text,
            "--flow-backend".into(),
            backend.into(),
            "--metrics".into(),
            "9120".into(),
            // One client learns every address of the latency part: its quota (an eighth of
            // the table) must hold them all.
            "--flow-capacity".into(),
            "524288".into(),
        ];
        w.start_nfqmark()?;
    }
    w.start_resolver(Family::V4)?;
    Ok(w)
}

/// Client A's DNS: ask the router for `names` (A records), `rate` a second (0: as fast as
/// answers come back, one at a time), and call `answered(index, when)` for each answer.
fn ask(
    w: &World,
    names: Vec<String>,
    rate: u64,
    answered: impl Fn(usize, Instant) + Send + Sync + 'static,
) -> io::Result<usize> {
    let ns = w.a.name().to_string();
    thread::Builder::new()
        .name("kfb-dns".into())
        .spawn(move || -> io::Result<usize> {
            netns::enter(&ns)?;
            let sock = Arc::new(UdpSocket::bind("198.18.1.2:0")?);
            sock.connect("198.18.1.1:53")?;
            sock.set_read_timeout(Some(Duration::from_millis(200)))?;
            let total = names.len();
            let done = Arc::new(AtomicBool::new(false));
            let got = Arc::new(AtomicU64::new(0));
            let receiver = {
                let (sock, done, got) = (Arc::clone(&sock), Arc::clone(&done), Arc::clone(&got));
                thread::spawn(move || {
                    let mut buf = [0u8; 1500];
                    let mut seen = vec![false; total];
                    while !done.load(Ordering::Relaxed) {
                        let Ok(n) = sock.recv(&mut buf) else {
                            continue;
                        };
                        let at = Instant::now();
                        let id = buf.get(..2).map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
                        let i = usize::from(id);
                        if n > 12 && i < total && !seen[i] {
                            seen[i] = true;
                            answered(i, at);
                            got.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            };
            let start = Instant::now();
            for (i, name) in names.iter().enumerate() {
                let query = nfqmark_testkit::dns_query(i as u16, name);
                if let Some(step) = 1_000_000_000u64.checked_div(rate) {
                    let due = start + Duration::from_nanos(i as u64 * step);
                    let now = Instant::now();
                    if due > now {
                        thread::sleep(due - now);
                    }
                    sock.send(&query)?;
                } else {
                    // One at a time: wait for this answer (or 200 ms) before the next.
                    sock.send(&query)?;
                    let deadline = Instant::now() + Duration::from_millis(200);
                    while got.load(Ordering::Relaxed) <= i as u64 && Instant::now() < deadline {
                        thread::sleep(Duration::from_micros(50));
                    }
                }
            }
            thread::sleep(Duration::from_millis(500));
            done.store(true, Ordering::Relaxed);
            let _ = receiver.join();
            Ok(got.load(Ordering::Relaxed) as usize)
        })?
        .join()
        .map_err(|_| io::Error::other("dns thread panicked"))?
}

fn conn_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, CONN_PREFIX.0 + (i / 256) as u8, (i % 256) as u8)
}

/// SYNs to [`CONN_PORT`] counted per link on the upstream host.
fn syn_counts(w: &World) -> io::Result<(u64, u64)> {
    Ok(lab::per_link(&w.upstream.rule_packets(
        "iptables",
        "raw",
        "PREROUTING",
    )?))
}

/// How long a connection may take to open: a lost SYN would otherwise hold its thread for the
/// kernel's first retransmission (1 s).
const CONNECT_TIMEOUT: Duration = Duration::from_millis(200);

/// One connection from the calling thread to `to`, closed with a reset; whether it opened.
fn connect_once(to: SocketAddr) -> bool {
    let Ok(s) = lab::upstream::tcp_connect_bound(0, to, CONNECT_TIMEOUT) else {
        return false;
    };
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `linger` is a valid struct linger and the length is its size; the fd is open.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    true
}

#[derive(Debug, Clone, Copy)]
struct ConnRun {
    mode: Mode,
    per_second: f64,
    marked_share: f64,
    nfqmark_us_per_conn: f64,
    /// CPU per connection of this process (the client's and the upstream host's threads, and
    /// the kernel's forwarding through the router, which veth runs in the sender's context)
    /// plus nfqmark's: what a connection costs, whatever else runs on the machine.
    path_us_per_conn: f64,
    machine_busy: f64,
    /// Connections that did not open within [`CONNECT_TIMEOUT`], and that took over 100 ms.
    failed: u64,
    slow: u64,
}

/// One configuration's lab, ready to measure: 1,000 addresses learned (in the kernel backend,
/// every element in the kernel), the acceptor running.
struct Lab {
    mode: Mode,
    w: World,
    stop: Arc<AtomicBool>,
    accepting: Vec<thread::JoinHandle<()>>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for a in self.accepting.drain(..) {
            let _ = a.join();
        }
    }
}

fn prepare(args: &Args, mode: Mode) -> io::Result<Lab> {
    let w = build(args, mode)?;
    let names: Vec<String> = (0..args.addresses)
        .map(|i| {
            let a = conn_addr(i).octets();
            format!(
                "ip-{}-{}-{}-{}.ttl-3600.video.nfqm.example",
                a[0], a[1], a[2], a[3]
            )
        })
        .collect();
    let answered = ask(&w, names, 0, |_, _| {})?;
    if answered < args.addresses {
        eprintln!(
            "kflows: {}: only {answered} of {} names answered",
            mode.label(),
            args.addresses
        );
    }
    if mode == Mode::Kernel {
        // Every element in the kernel before the clock starts.
        let _ = lab::wait_for(Duration::from_secs(5), || {
            w.router
                .exec("nft", &["list", "set", "inet", "nfqmark", "f1_20_ff_4"])
                .map(|o| String::from_utf8_lossy(&o.stdout).matches(" . ").count())
                .unwrap_or(0)
                >= answered
        });
    }
    let stop = Arc::new(AtomicBool::new(false));
    let accepting = acceptor(&w, Arc::clone(&stop))?;
    Ok(Lab {
        mode,
        w,
        stop,
        accepting,
    })
}

/// Connections from client A of `lab` for warm-up then `duration` seconds.
fn conn_run(args: &Args, lab: &Lab) -> io::Result<ConnRun> {
    let (w, mode) = (&lab.w, lab.mode);
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let slow = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for t in 0..args.connectors {
        let (stop, measuring, opened, failed, slow) = (
            Arc::clone(&stop),
            Arc::clone(&measuring),
            Arc::clone(&opened),
            Arc::clone(&failed),
            Arc::clone(&slow),
        );
        let ns = w.a.name().to_string();
        let n = args.addresses;
        threads.push(thread::spawn(move || {
            if netns::enter(&ns).is_err() {
                return;
            }
            let mut i = t * 97;
            while !stop.load(Ordering::Relaxed) {
                i = (i + 1) % n;
                let to = SocketAddr::new(IpAddr::V4(conn_addr(i)), CONN_PORT);
                let began = Instant::now();
                let ok = connect_once(to);
                if measuring.load(Ordering::Relaxed) {
                    if !ok {
                        failed.fetch_add(1, Ordering::Relaxed);
                    } else {
                        opened.fetch_add(1, Ordering::Relaxed);
                        if began.elapsed() > Duration::from_millis(100) {
                            slow.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }));
    }
    thread::sleep(Duration::from_secs(args.warmup));
    let nfq_stat = w.nfqmark_pid().map(|p| format!("/proc/{p}/stat"));
    let nfq0 = nfq_stat.as_deref().and_then(stat_ticks).unwrap_or(0);
    let self0 = stat_ticks("/proc/self/stat").unwrap_or(0);
    let m0 = machine_ticks();
    let syn0 = syn_counts(w)?;
    let t0 = Instant::now();
    measuring.store(true, Ordering::Relaxed);
    thread::sleep(Duration::from_secs(args.duration));
    measuring.store(false, Ordering::Relaxed);
    let elapsed = t0.elapsed().as_secs_f64();
    let count = opened.load(Ordering::Relaxed);
    let (failed, slow) = (failed.load(Ordering::Relaxed), slow.load(Ordering::Relaxed));
    let syn1 = syn_counts(w)?;
    let m1 = machine_ticks();
    let nfq1 = nfq_stat.as_deref().and_then(stat_ticks).unwrap_or(0);
    let self1 = stat_ticks("/proc/self/stat").unwrap_or(0);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let (l1, l2) = (syn1.0 - syn0.0, syn1.1 - syn0.1);
    let nfq_us = (nfq1 - nfq0) as f64 / ticks_per_second() * 1e6;
    let self_us = (self1 - self0) as f64 / ticks_per_second() * 1e6;
    let busy = (m1.0 - m0.0) as f64 / ((m1.1 - m0.1).max(1)) as f64;
    Ok(ConnRun {
        mode,
        per_second: count as f64 / elapsed,
        marked_share: l2 as f64 / ((l1 + l2).max(1)) as f64,
        nfqmark_us_per_conn: nfq_us / (count.max(1)) as f64,
        path_us_per_conn: (self_us + nfq_us) / (count.max(1)) as f64,
        machine_busy: busy,
        failed,
        slow,
    })
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn conn_part(args: &Args) -> io::Result<()> {
    let modes = args.modes.clone();
    let mut runs: Vec<Vec<ConnRun>> = Vec::new();
    println!(
        "connections: {} round(s), {} s each (+{} s warm-up), {} connector threads, {} learned \
         addresses; load average before: {}",
        args.rounds,
        args.duration,
        args.warmup,
        args.connectors,
        args.addresses,
        loadavg()
    );
    println!(
        "{:<20} {:>10} {:>8} {:>10} {:>10} {:>6} {:>7} {:>7}",
        "configuration", "conn/s", "marked", "nfqm us/c", "path us/c", "busy", "failed", ">100ms"
    );
    // Every configuration's lab is built first and stays up: the rounds alternate between them
    // in short slices, so a change of the machine's load (other work on a shared machine) hits
    // every configuration alike.
    let labs: Vec<Lab> = modes
        .iter()
        .map(|&m| prepare(args, m))
        .collect::<io::Result<_>>()?;
    for round in 0..args.rounds {
        let mut this = Vec::new();
        for k in 0..labs.len() {
            let lab = &labs[(k + round) % labs.len()];
            let mode = lab.mode;
            let r = conn_run(args, lab)?;
            println!(
                "{:<20} {:>10.0} {:>8.3} {:>10.1} {:>10.1} {:>6.2} {:>7} {:>7}",
                mode.label(),
                r.per_second,
                r.marked_share,
                r.nfqmark_us_per_conn,
                r.path_us_per_conn,
                r.machine_busy,
                r.failed,
                r.slow
            );
            this.push(r);
        }
        runs.push(this);
    }
    // One configuration's figure in one round (NaN when it did not run), and all its figures.
    let of = |m: Mode, r: &Vec<ConnRun>, f: fn(&ConnRun) -> f64| {
        r.iter().find(|x| x.mode == m).map_or(f64::NAN, f)
    };
    let column = |m: Mode, f: fn(&ConnRun) -> f64| -> Vec<f64> {
        runs.iter()
            .flat_map(|r| r.iter().filter(|x| x.mode == m).map(f))
            .collect()
    };
    let per_second: fn(&ConnRun) -> f64 = |x| x.per_second;
    let path: fn(&ConnRun) -> f64 = |x| x.path_us_per_conn;
    println!("\nmedians (load average after: {}):", loadavg());
    for &m in &modes {
        let mut v: Vec<f64> = runs.iter().map(|r| of(m, r, per_second)).collect();
        println!(
            "  {:<20} {:>10.0} conn/s  marked {:.3}  nfqmark {:.1} us/conn  path {:.1} us/conn",
            m.label(),
            median(&mut v),
            median(&mut column(m, |x| x.marked_share)),
            median(&mut column(m, |x| x.nfqmark_us_per_conn)),
            median(&mut column(m, path))
        );
    }
    // Which configurations are compared, and their per-round ratios of `f`.
    let pairs = [
        (Mode::Dns, Mode::None, "dns/none"),
        (Mode::Queue, Mode::None, "queue/none"),
        (Mode::Kernel, Mode::None, "kernel/none"),
        (Mode::Kernel, Mode::Dns, "kernel/dns"),
    ]
    .into_iter()
    .filter(|&(m, base, _)| modes.contains(&m) && modes.contains(&base));
    let ratios = |m: Mode, base: Mode, f: fn(&ConnRun) -> f64| -> Vec<f64> {
        runs.iter().map(|r| of(m, r, f) / of(base, r, f)).collect()
    };
    for (m, base, name) in pairs.clone() {
        let mut ratios = ratios(m, base, per_second);
        let per_round: Vec<String> = ratios.iter().map(|x| format!("{x:.3}")).collect();
        let med = median(&mut ratios);
        let goal = if m == Mode::Kernel && base == Mode::None {
            format!(
                "  goal >= 0.97: {}",
                if med >= 0.97 { "met" } else { "not met" }
            )
        } else {
            String::new()
        };
        println!("  {name:<12} {med:.3}  [{}]{goal}", per_round.join(", "));
    }
    println!("CPU per connection (path us/conn), median of per-round ratios:");
    for (m, base, name) in pairs {
        println!("  {name:<12} {:.3}", median(&mut ratios(m, base, path)));
    }
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn latency_part(args: &Args) -> io::Result<()> {
    let w = build(args, Mode::Kernel)?;
    let n = (args.rate * args.latency_seconds) as usize;
    let n = n.min(60_000);
    // Addresses from 198.18.64.0 up, one per answer: each answer a new element.
    let addr = |i: usize| Ipv4Addr::new(198, 18, 64 + (i / 256) as u8, (i % 256) as u8);
    let names: Vec<String> = (0..n)
        .map(|i| {
            let a = addr(i).octets();
            format!("ip-{}-{}-{}-{}.video.nfqm.example", a[0], a[1], a[2], a[3])
        })
        .collect();
    let index: HashMap<Ipv4Addr, usize> = (0..n).map(|i| (addr(i), i)).collect();
    // The watcher: element announcements in the router.
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let watcher = {
        let ns = w.router.name().to_string();
        let stop = Arc::clone(&stop);
        thread::spawn(move || -> io::Result<HashMap<Ipv4Addr, Instant>> {
            netns::enter(&ns)?;
            let mut watch = NftWatch::open()?;
            let _ = ready_tx.send(());
            let mut seen = HashMap::new();
            while !stop.load(Ordering::Relaxed) {
                watch.recv(Duration::from_millis(100), |set, e, added| {
                    let at = Instant::now();
                    let k = e.key.as_bytes();
                    if added
                        && set == b"f1_20_ff_4"
                        && let Some(a) = k.get(4..8).and_then(|b| <[u8; 4]>::try_from(b).ok())
                    {
                        seen.entry(Ipv4Addr::from(a)).or_insert(at);
                    }
                })?;
            }
            Ok(seen)
        })
    };
    let _ = ready_rx.recv_timeout(Duration::from_secs(5));
    let answers: Arc<std::sync::Mutex<Vec<Option<Instant>>>> =
        Arc::new(std::sync::Mutex::new(vec![None; n]));
    let m0 = machine_ticks();
    let load_before = loadavg();
    let got = {
        let answers = Arc::clone(&answers);
        ask(&w, names, args.rate, move |i, at| {
            if let Ok(mut a) = answers.lock()
                && let Some(slot) = a.get_mut(i)
            {
                *slot = Some(at);
            }
        })?
    };
    let m1 = machine_ticks();
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let seen = watcher
        .join()
        .map_err(|_| io::Error::other("watcher panicked"))??;
    let answers = answers.lock().map(|a| a.clone()).unwrap_or_default();
    let mut lat_ms = Vec::new();
    let mut no_element = 0;
    for (a, &i) in &index {
        let Some(answered) = answers.get(i).copied().flatten() else {
            continue;
        };
        match seen.get(a) {
            Some(&el) => {
                let ms = if el >= answered {
                    (el - answered).as_secs_f64() * 1e3
                } else {
                    -(answered - el).as_secs_f64() * 1e3
                };
                lat_ms.push(ms);
            }
            None => no_element += 1,
        }
    }
    lat_ms.sort_by(f64::total_cmp);
    let metrics = w.router_http_get(9120, "/metrics").unwrap_or_default();
    let busy = (m1.0 - m0.0) as f64 / ((m1.1 - m0.1).max(1)) as f64;
    println!(
        "\nanswer to element, kernel backend: {n} names asked at {} a second over {} s; {got} \
         answered; load average before {load_before}, after {}; machine busy {busy:.2}",
        args.rate,
        args.latency_seconds,
        loadavg()
    );
    println!(
        "  element announced minus answer received, ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3} \
         (negative: the element came first); answers without an element: {no_element}",
        percentile(&lat_ms, 0.5),
        percentile(&lat_ms, 0.9),
        percentile(&lat_ms, 0.99),
        lat_ms.last().copied().unwrap_or(f64::NAN)
    );
    let p99 = percentile(&lat_ms, 0.99);
    println!(
        "  goal p99 <= 5 ms: {}",
        if p99 <= 5.0 { "met" } else { "not met" }
    );
    println!("  nfqmark's own view (answer learned to batch acknowledged):");
    for line in metrics.lines().filter(|l| {
        l.starts_with("nfqmark_kernel_flow_update_seconds")
            || l.starts_with("nfqmark_kernel_flows_total")
            || l.starts_with("nfqmark_kernel_flow_batches_total")
    }) {
        println!("    {line}");
    }
    Ok(())
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            std::process::exit(2);
        }
    };
    if !args.bench {
        println!("kflows: not run under `cargo test`; use benches/kflows.sh (root)");
        return;
    }
    if !netns::is_root() {
        eprintln!("kflows: needs root (network namespaces, iptables, nft, NFQUEUE)");
        std::process::exit(2);
    }
    if !args.nfqmark.is_file() {
        eprintln!("kflows: no nfqmark binary at {}", args.nfqmark.display());
        std::process::exit(2);
    }
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "kflows: nfqmark {}, {cpus} CPU(s), nothing pinned; kernel {}",
        args.nfqmark.display(),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    let mut failed = false;
    if args.conn
        && let Err(e) = conn_part(&args)
    {
        eprintln!("kflows: connections: {e}");
        failed = true;
    }
    if args.latency
        && let Err(e) = latency_part(&args)
    {
        eprintln!("kflows: latency: {e}");
        failed = true;
    }
    if failed {
        std::process::exit(1);
    }
}
