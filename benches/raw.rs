//! Raw queue throughput: DNS-shaped UDP (64-byte DNS query payloads) blasted from a sender
//! namespace through a router namespace's FORWARD chain into NFQUEUE, and counted where it
//! arrives, in a sink namespace.
//!
//! ```text
//!   sender 198.18.100.2 ──in0── router (mangle FORWARD -> NFQUEUE) ──out0── sink 198.18.101.2
//! ```
//!
//! Consumers of the queue, alternated within every round:
//!
//! - no queue rule at all (what forwarding alone delivers);
//! - `nfq_baseline` (benches/nfq_baseline.c, compiled here with gcc against
//!   libnetfilter_queue): accept every packet, one verdict per packet; and the same with one
//!   batch verdict per receive burst;
//! - nfqmark (`run --queue N --fail-closed`), with no rules and with the generated 1,000-rule
//!   file (benches/common/rulegen.rs, none of whose rules matches this traffic).
//!
//! Reported: packets per second sent and delivered (median over rounds), the consumer's CPU time
//! per delivered packet (utime + stime from /proc/PID/stat), and the whole machine's CPU use.
//! Every consumer runs fail-closed (a full queue drops), so everything delivered went through
//! it. Each measurement is bounded in time (`--seconds`, default 2.5 s, after a 0.5 s warm-up).
//!
//! Only addresses from 198.18.0.0/15, only in this run's own namespaces (deleted on every path,
//! by `Netns`'s drop). Needs root; under `cargo test --benches` it does nothing.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "benchmark code, never shipped: a step that fails ends the run, loudly and at once"
)]

use std::fmt::Write as _;
use std::io;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nfqmark_lab::netns::{self, Netns};
use nfqmark_testkit as fixtures;

#[path = "common/procstat.rs"]
mod procstat;
#[path = "common/rulegen.rs"]
mod rulegen;

const SENDER: &str = "198.18.100.2";
const ROUTER_IN: &str = "198.18.100.1";
const ROUTER_OUT: &str = "198.18.101.1";
const SINK: &str = "198.18.101.2";
/// DNS payload size on the wire (the UDP payload).
const PAYLOAD: usize = 64;
/// Datagrams per sendmmsg call.
const BURST: usize = 64;

#[derive(Debug, Clone)]
struct Args {
    bench: bool,
    rounds: usize,
    seconds: f64,
    queue: u16,
    nfqmark: PathBuf,
    only: Option<Vec<String>>,
}

const USAGE: &str = "\
cargo bench --bench raw -- [--rounds N] [--seconds S] [--queue N] [--nfqmark PATH] [--only a,b]
  --rounds N      rounds; each runs every configuration once (default 3)
  --seconds S     measured seconds per configuration, after 0.5 s of warm-up (default 2.5)
  --queue N       NFQUEUE number in the router namespace (default 7)
  --nfqmark PATH  nfqmark binary (default: the one cargo built with this benchmark)
  --only LIST     configurations by key: none,c,cbatch,nfqmark,nfqmark-rules";

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        bench: false,
        rounds: 3,
        seconds: 2.5,
        queue: 7,
        nfqmark: PathBuf::from(env!("CARGO_BIN_EXE_nfqmark")),
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--bench" => a.bench = true,
            "--rounds" => {
                a.rounds = value("--rounds")?
                    .parse::<usize>()
                    .map_err(|_| format!("--rounds needs a number\n{USAGE}"))?
                    .max(1)
            }
            "--seconds" => {
                a.seconds = value("--seconds")?
                    .parse::<f64>()
                    .ok()
                    .filter(|s| *s > 0.0 && *s <= 60.0)
                    .ok_or_else(|| format!("--seconds takes 0-60\n{USAGE}"))?
            }
            "--queue" => {
                a.queue = value("--queue")?
                    .parse()
                    .map_err(|_| format!("--queue takes 0-65535\n{USAGE}"))?
            }
            "--nfqmark" => a.nfqmark = PathBuf::from(value("--nfqmark")?),
            "--only" => a.only = Some(value("--only")?.split(',').map(str::to_string).collect()),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument '{other}'\n{USAGE}")),
        }
    }
    Ok(a)
}

// ------------------------------------------------------------------------------------------------
// The network.

/// Sender, router and sink namespaces, wired. Dropping it deletes them (and kills what runs
/// inside).
struct Net {
    sender: Netns,
    router: Netns,
    sink: Netns,
}

fn build_net() -> io::Result<Net> {
    let prefix = netns::unique_prefix("raw");
    let net = Net {
        sender: Netns::new(&format!("{prefix}-s"))?,
        router: Netns::new(&format!("{prefix}-r"))?,
        sink: Netns::new(&format!("{prefix}-k"))?,
    };
    let (s, r, k) = (&net.sender, &net.router, &net.sink);
    s.ip(&[
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        "in0",
        "netns",
        r.name(),
    ])?;
    k.ip(&[
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        "out0",
        "netns",
        r.name(),
    ])?;
    for (ns, dev, addr) in [
        (s, "eth0", format!("{SENDER}/24")),
        (r, "in0", format!("{ROUTER_IN}/24")),
        (r, "out0", format!("{ROUTER_OUT}/24")),
        (k, "eth0", format!("{SINK}/24")),
    ] {
        ns.ip(&["addr", "add", &addr, "dev", dev])?;
        ns.ip(&["link", "set", dev, "up"])?;
    }
    s.ip(&["route", "add", "default", "via", ROUTER_IN])?;
    k.ip(&["route", "add", "default", "via", ROUTER_OUT])?;
    r.sysctl("net.ipv4.ip_forward", "1")?;
    // The interfaces the generated rules name (iif guest0, oif wan1, ...), so nfqmark can load
    // the file; no traffic uses them.
    // (veth pairs: the dummy driver is not in every kernel.)
    for dev in ["lan0", "wan0", "wan1", "guest0"] {
        r.ip(&[
            "link",
            "add",
            dev,
            "type",
            "veth",
            "peer",
            "name",
            &format!("{dev}p"),
        ])?;
    }
    // The sink counts and drops in raw PREROUTING: no socket, no ICMP back, no conntrack.
    k.exec(
        "iptables",
        &[
            "-w",
            "-t",
            "raw",
            "-A",
            "PREROUTING",
            "-i",
            "eth0",
            "-p",
            "udp",
            "--dport",
            "53",
            "-j",
            "DROP",
        ],
    )?;
    Ok(net)
}

/// Packets the sink has counted so far.
fn sink_count(net: &Net) -> io::Result<u64> {
    Ok(net
        .sink
        .rule_packets("iptables", "raw", "PREROUTING")?
        .iter()
        .filter(|(_, line)| line.contains("DROP"))
        .map(|(packets, _)| packets)
        .sum())
}

fn queue_rule(net: &Net, queue: u16, add: bool) -> io::Result<()> {
    let q = queue.to_string();
    net.router
        .exec(
            "iptables",
            &[
                "-w",
                "-t",
                "mangle",
                if add { "-A" } else { "-D" },
                "FORWARD",
                "-p",
                "udp",
                "--dport",
                "53",
                "-j",
                "NFQUEUE",
                "--queue-num",
                &q,
            ],
        )
        .map(drop)
}

// ------------------------------------------------------------------------------------------------
// The sender: one thread of ours in the sender namespace, sendmmsg in bursts until stopped.

/// A DNS query whose encoding is exactly `PAYLOAD` bytes.
fn dns_payload() -> Vec<u8> {
    // 12 (header) + wire name + 4 (type, class) = 64: the name is 48 bytes in wire form, that
    // is a 33-byte first label under nfqm.example (1+33 + 1+4 + 1+7 + 1).
    let name = format!("{}.nfqm.example", "q".repeat(33));
    let mut p = fixtures::dns_query(0x4242, &name);
    p.resize(PAYLOAD, 0);
    p
}

struct Sender {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    handle: Option<JoinHandle<io::Result<()>>>,
}

impl Sender {
    fn start(ns: &Netns) -> io::Result<Sender> {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let ns_name = ns.name().to_string();
        let (stop2, sent2) = (Arc::clone(&stop), Arc::clone(&sent));
        let (tx, rx) = std::sync::mpsc::channel::<io::Result<()>>();
        let handle =
            thread::Builder::new()
                .name("raw-sender".into())
                .spawn(move || -> io::Result<()> {
                    let setup = (|| -> io::Result<UdpSocket> {
                        netns::enter(&ns_name)?;
                        let sock = UdpSocket::bind(format!("{SENDER}:0"))?;
                        sock.connect(format!("{SINK}:53"))?;
                        Ok(sock)
                    })();
                    let sock = match setup {
                        Ok(s) => {
                            let _ = tx.send(Ok(()));
                            s
                        }
                        Err(e) => {
                            let _ = tx.send(Err(io::Error::new(e.kind(), e.to_string())));
                            return Err(e);
                        }
                    };
                    blast(&sock, &stop2, &sent2);
                    Ok(())
                })?;
        match rx.recv() {
            Ok(Ok(())) => Ok(Sender {
                stop,
                sent,
                handle: Some(handle),
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(io::Error::other("sender thread ended during setup")),
        }
    }

    fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn blast(sock: &UdpSocket, stop: &AtomicBool, sent: &AtomicU64) {
    let payload = dns_payload();
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    // Every entry points at the one iovec, which outlives the calls below.
    let mut msgs: Vec<libc::mmsghdr> = (0..BURST)
        .map(|_| {
            // SAFETY: mmsghdr is plain data; zeroed is valid (no name, no control).
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = &mut iov;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: msgs holds BURST initialised headers whose buffers stay valid for the call.
        let n = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), BURST as u32, 0) };
        if n > 0 {
            sent.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Consumers.

#[derive(Debug, Clone)]
enum Consumer {
    None,
    Baseline { batch: bool },
    Nfqmark { rules: Option<PathBuf> },
}

struct ConfigDef {
    key: &'static str,
    label: &'static str,
    consumer: Consumer,
}

/// A running consumer: killed (and reaped) on drop.
use nfqmark_lab::netns::Guarded as Running;

fn start_consumer(
    net: &Net,
    c: &Consumer,
    args: &Args,
    baseline: &Path,
) -> io::Result<Option<Running>> {
    let q = args.queue.to_string();
    let mut cmd = match c {
        Consumer::None => return Ok(None),
        Consumer::Baseline { batch } => {
            let mut cmd = net.router.command(&baseline.to_string_lossy());
            cmd.arg(&q);
            if *batch {
                cmd.arg("batch");
            }
            cmd
        }
        Consumer::Nfqmark { rules } => {
            let mut cmd = net.router.command(&args.nfqmark.to_string_lossy());
            cmd.args(["run", "--queue", &q, "--fail-closed"]);
            if let Some(r) = rules {
                cmd.arg("--rules").arg(r);
            }
            cmd
        }
    };
    // Output to a file, not a pipe: a consumer that logs a lot must never block on us.
    let log = std::fs::File::create(consumer_log())?;
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let mut child = Running(cmd.spawn()?);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !net.router.queue_bound(args.queue) {
        if let Ok(Some(status)) = child.0.try_wait() {
            let err = std::fs::read_to_string(consumer_log()).unwrap_or_default();
            return Err(io::Error::other(format!(
                "consumer exited ({status}): {}",
                err.trim()
            )));
        }
        if Instant::now() > deadline {
            return Err(io::Error::other(
                "consumer did not bind the queue within 5 s",
            ));
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(Some(child))
}

/// Stop a consumer with SIGTERM and return what it printed (its counters).
fn stop_consumer(mut c: Running) -> String {
    c.terminate(Duration::from_secs(5));
    drop(c);
    std::fs::read_to_string(consumer_log()).unwrap_or_default()
}

/// Where the current consumer's output goes.
fn consumer_log() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("raw-consumer.log")
}

// ------------------------------------------------------------------------------------------------
// One measurement.

#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    sent_pps: f64,
    delivered_pps: f64,
    /// Consumer CPU, in % of one core.
    cpu_pct: f64,
    /// Consumer CPU time per delivered packet, ns.
    cpu_ns_per_packet: f64,
    /// Whole machine, % (100 per core).
    machine_pct: f64,
}

fn measure(
    net: &Net,
    def: &ConfigDef,
    args: &Args,
    baseline: &Path,
) -> io::Result<(Sample, String)> {
    let consumer = start_consumer(net, &def.consumer, args, baseline)?;
    if consumer.is_some() {
        queue_rule(net, args.queue, true)?;
    }
    let sender = Sender::start(&net.sender);
    let result = (|| {
        let sender = sender?;
        thread::sleep(Duration::from_millis(500));
        let pid = consumer.as_ref().map(|c| c.0.id());
        let ticks = || pid.and_then(|p| procstat::stat_ticks(&format!("/proc/{p}/stat")));
        let (c0, s0, t0, m0) = (
            sink_count(net)?,
            sender.sent(),
            ticks(),
            procstat::machine_ticks(),
        );
        let start = Instant::now();
        thread::sleep(Duration::from_secs_f64(args.seconds));
        let (c1, s1, t1, m1) = (
            sink_count(net)?,
            sender.sent(),
            ticks(),
            procstat::machine_ticks(),
        );
        let secs = start.elapsed().as_secs_f64();
        drop(sender);
        let delivered = c1.saturating_sub(c0);
        let hz = procstat::ticks_per_second();
        let cpu_s = match (t0, t1) {
            (Some(a), Some(b)) => b.saturating_sub(a) as f64 / hz,
            _ => f64::NAN,
        };
        let cores = thread::available_parallelism().map_or(1.0, |n| n.get() as f64);
        Ok(Sample {
            sent_pps: s1.saturating_sub(s0) as f64 / secs,
            delivered_pps: delivered as f64 / secs,
            cpu_pct: cpu_s / secs * 100.0,
            cpu_ns_per_packet: if delivered == 0 {
                f64::NAN
            } else {
                cpu_s * 1e9 / delivered as f64
            },
            machine_pct: m1.0.saturating_sub(m0.0) as f64 / m1.1.saturating_sub(m0.1).max(1) as f64
                * 100.0
                * cores,
        })
    })();
    if consumer.is_some() {
        let _ = queue_rule(net, args.queue, false);
    }
    let log = consumer.map(stop_consumer).unwrap_or_default();
    result.map(|s| (s, log))
}

// ------------------------------------------------------------------------------------------------

/// Compile the C baseline into the benchmark's scratch directory.
fn build_baseline() -> Result<PathBuf, String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/nfq_baseline.c");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("nfq_baseline");
    let res = Command::new("gcc")
        .args(["-O2", "-Wall", "-o"])
        .arg(&out)
        .arg(&src)
        .arg("-lnetfilter_queue")
        .output();
    match res {
        Ok(o) if o.status.success() => Ok(out),
        Ok(o) => Err(format!(
            "gcc failed on {}: {} (install gcc and libnetfilter-queue-dev)",
            src.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!(
            "cannot run gcc: {e} (install gcc and libnetfilter-queue-dev)"
        )),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
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

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            std::process::exit(2);
        }
    };
    if !args.bench {
        println!("raw: not run under `cargo test`; use `cargo bench --bench raw` (root)");
        return;
    }
    if !netns::is_root() {
        eprintln!("raw: needs root (network namespaces, iptables, NFQUEUE)");
        std::process::exit(2);
    }
    let baseline = match build_baseline() {
        Ok(p) => Some(p),
        Err(e) => {
            eprintln!("raw: C baseline skipped: {e}");
            None
        }
    };
    let rules_file = Path::new(env!("CARGO_TARGET_TMPDIR")).join("raw-1000.rules");
    if let Err(e) = std::fs::write(&rules_file, rulegen::rules_text(1000)) {
        eprintln!("raw: cannot write {}: {e}", rules_file.display());
        std::process::exit(2);
    }
    let all = [
        ConfigDef {
            key: "none",
            label: "no queue",
            consumer: Consumer::None,
        },
        ConfigDef {
            key: "c",
            label: "C libnetfilter_queue, per-packet",
            consumer: Consumer::Baseline { batch: false },
        },
        ConfigDef {
            key: "cbatch",
            label: "C libnetfilter_queue, batch",
            consumer: Consumer::Baseline { batch: true },
        },
        ConfigDef {
            key: "nfqmark",
            label: "nfqmark",
            consumer: Consumer::Nfqmark { rules: None },
        },
        ConfigDef {
            key: "nfqmark-rules",
            label: "nfqmark + 1,000 rules",
            consumer: Consumer::Nfqmark {
                rules: Some(rules_file.clone()),
            },
        },
    ];
    let defs: Vec<&ConfigDef> = all
        .iter()
        .filter(|d| {
            args.only
                .as_ref()
                .is_none_or(|o| o.iter().any(|k| k == d.key))
        })
        .filter(|d| baseline.is_some() || !matches!(d.consumer, Consumer::Baseline { .. }))
        .collect();
    let baseline = baseline.unwrap_or_default();
    let net = match build_net() {
        Ok(n) => n,
        Err(e) => {
            eprintln!("raw: cannot build the namespaces: {e}");
            std::process::exit(1);
        }
    };
    println!(
        "raw: {} round(s) x {} s per configuration; UDP, {PAYLOAD}-byte DNS payloads, sendmmsg \
         bursts of {BURST}; queue {}",
        args.rounds, args.seconds, args.queue
    );
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); defs.len()];
    for round in 1..=args.rounds {
        for k in 0..defs.len() {
            let i = (k + round - 1) % defs.len();
            let def = defs[i];
            match measure(&net, def, &args, &baseline) {
                Ok((s, log)) => {
                    let tail = log
                        .lines()
                        .rev()
                        .find(|l| l.contains("packets="))
                        .map(|l| l.find("packets=").map_or(l, |p| &l[p..]))
                        .unwrap_or("")
                        .chars()
                        .take(160)
                        .collect::<String>();
                    println!(
                        "round {round} {:<34} sent {:>9.0}/s delivered {:>9.0}/s  consumer cpu \
                         {:>4.0}% = {:>6.0} ns/pkt  machine {:>4.0}%  {tail}",
                        def.label,
                        s.sent_pps,
                        s.delivered_pps,
                        s.cpu_pct,
                        s.cpu_ns_per_packet,
                        s.machine_pct
                    );
                    samples[i].push(s);
                }
                Err(e) => println!("round {round} {}: FAILED: {e}", def.label),
            }
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nraw summary: medians over {} round(s); CPU in % of one core",
        args.rounds
    );
    let _ = writeln!(
        out,
        "{:<34} {:>12} {:>14} {:>10} {:>12} {:>9} {:>9}",
        "configuration", "sent pps", "delivered pps", "cons. CPU", "CPU ns/pkt", "machine", "vs C"
    );
    let c_pps = defs
        .iter()
        .position(|d| d.key == "c")
        .map(|i| median(samples[i].iter().map(|s| s.delivered_pps).collect()));
    for (i, def) in defs.iter().enumerate() {
        let col = |f: fn(&Sample) -> f64| median(samples[i].iter().map(f).collect());
        let delivered = col(|s| s.delivered_pps);
        let vs = match (c_pps, &def.consumer) {
            (Some(c), Consumer::Nfqmark { .. } | Consumer::Baseline { .. }) => {
                format!("{:.2}x", delivered / c)
            }
            _ => "-".into(),
        };
        let _ = writeln!(
            out,
            "{:<34} {:>12.0} {:>14.0} {:>9.0}% {:>12.0} {:>8.0}% {:>9}",
            def.label,
            col(|s| s.sent_pps),
            delivered,
            col(|s| s.cpu_pct),
            col(|s| s.cpu_ns_per_packet),
            col(|s| s.machine_pct),
            vs
        );
    }
    print!("{out}");
}
