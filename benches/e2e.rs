//! End-to-end resolver throughput with and without marking, on the lab's network namespaces
//! (`nfqmark_lab`): client A runs dnsperf (unique names, 100 queries outstanding) against the
//! router's resolver, which forwards to the upstream host over link 1, or over link 2 when the
//! upstream query carries client A's mark. By default the lab is a real multi-WAN router (each
//! uplink masquerades, the upstream host drops foreign sources); `--ideal` runs the idealized
//! layout (no NAT, no source validation). Each run also counts the packets the upstream host
//! dropped for a foreign source and the packets the router sent out of another link than their
//! flow's NAT binding (MASQUERADE drops those).
//!
//! Configurations, alternated within every round (the starting one rotates each round, so a
//! slow drift of the machine does not favour one of them):
//!
//! 1. dnsmasq forwarding, no marking (no mangle rules at all, so no conntrack either);
//! 2. dnsmasq `--conntrack` with the seed's rules (the dnsmasq README's);
//! 3. dnsmasq without `--conntrack` + nfqmark (the seed's rules and the README's queue rules);
//! 4. unbound + nfqmark;
//! 5. unbound, no marking.
//!
//! (and 0, with `--direct`: dnsperf straight to the upstream responder through the router, no
//! resolver: what the lab's upstream host can answer at most).
//!
//! Every run builds a fresh lab, starts the resolver (and nfqmark), runs dnsperf for a short
//! warm-up and then for `--duration` seconds, and reads queries per second, latency, lost
//! queries, the share of the upstream queries that arrived over link 2 (carried the mark), and
//! the CPU time of each party (resolver, nfqmark, the lab's responder and sniffer threads,
//! dnsperf, the whole machine). After the load, 500 new names asked one at a time give the
//! latency of a single query (median, p99) and what marking adds to it. The summary gives
//! medians over rounds and the ratios 3/1, 3/2 and 4/5 (median of the per-round ratios).
//!
//! By default (the headline figures) the scheduler places every party, as on most routers.
//! `--pin` runs the resolver alone on CPU 0 and every other party on the remaining CPUs: three
//! hosts share one machine here, and the client and upstream hosts then take no CPU from the
//! resolver under test.
//!
//! Run it with `benches/e2e.sh` (root). Under `cargo test --benches` it does nothing.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "benchmark code, never shipped: a step that fails ends the run, loudly and at once"
)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nfqmark_lab::netns::{self, Netns};
use nfqmark_lab::sniffer::Sniffer;
use nfqmark_lab::upstream;
use nfqmark_lab::{self as lab, Family, LinkCounts, Network, Options, Resolver, World};

#[path = "common/procstat.rs"]
mod procstat;
use procstat::{comm, machine_ticks, stat_ticks, stat_user_system, ticks_per_second};

/// One configuration of the router.
#[derive(Debug, Clone, Copy)]
struct Config {
    id: u8,
    label: &'static str,
    resolver: Resolver,
    /// Run nfqmark with the README's queue rules.
    nfqmark: bool,
    /// The seed's mangle rules (client A -> mark 137, connmark save/restore).
    marking: bool,
    /// No resolver: dnsperf asks the upstream responder directly.
    direct: bool,
}

const CONFIGS: [Config; 6] = [
    Config {
        id: 0,
        label: "upstream responder direct",
        resolver: Resolver::Dnsmasq,
        nfqmark: false,
        marking: false,
        direct: true,
    },
    Config {
        id: 1,
        label: "dnsmasq, no marking",
        resolver: Resolver::Dnsmasq,
        nfqmark: false,
        marking: false,
        direct: false,
    },
    Config {
        id: 2,
        label: "dnsmasq --conntrack",
        resolver: Resolver::DnsmasqConntrack,
        nfqmark: false,
        marking: true,
        direct: false,
    },
    Config {
        id: 3,
        label: "dnsmasq + nfqmark",
        resolver: Resolver::Dnsmasq,
        nfqmark: true,
        marking: true,
        direct: false,
    },
    Config {
        id: 4,
        label: "unbound + nfqmark",
        resolver: Resolver::Unbound,
        nfqmark: true,
        marking: true,
        direct: false,
    },
    Config {
        id: 5,
        label: "unbound, no marking",
        resolver: Resolver::Unbound,
        nfqmark: false,
        marking: false,
        direct: false,
    },
];

/// How the link of each upstream query is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Count {
    /// iptables counters on the upstream host's links (in the kernel: costs next to nothing).
    Counters,
    /// The lab's sniffer threads (AF_PACKET, every frame copied to this process and parsed).
    Sniffer,
}

#[derive(Debug, Clone)]
struct Args {
    bench: bool,
    rounds: usize,
    duration: u32,
    warmup: u32,
    clients: u32,
    outstanding: u32,
    configs: Vec<u8>,
    count: Count,
    nfqmark: PathBuf,
    nfqmark_args: Vec<String>,
    /// Pin the resolver to CPU 0 and everything else (dnsperf, nfqmark, the lab's threads) to
    /// the other CPUs (the default when there are at least two).
    pin: bool,
    /// The lab's layout: real multi-WAN (default) or idealized (`--ideal`).
    network: Network,
    /// `--floor`: nfqmark in the lean layout with client queries not queued, so one packet per
    /// query (the upstream query) reaches it: what the fewest queued packets would cost.
    floor: bool,
}

const USAGE: &str = "\
benches/e2e.sh [--rounds N] [--duration S] [--warmup S] [--clients N] [--outstanding N]
               [--configs 1,2,3,4,5] [--direct] [--count counters|sniffer]
               [--nfqmark PATH] [--nfqmark-arg ARG]... [--pin] [--ideal] [--floor]
  --rounds N         rounds; every round runs every configuration once (default 5)
  --duration S       measured seconds of dnsperf per run (default 10)
  --warmup S         dnsperf seconds before the measured ones, other names (default 2)
  --clients N        dnsperf -c (default 10)
  --outstanding N    dnsperf -q: queries in flight (default 100)
  --configs LIST     which configurations (default 1,2,3,4,5; 0 = responder direct)
  --direct           add configuration 0: dnsperf straight to the upstream responder
  --count MODE       how upstream queries are counted per link: kernel counters (default)
                     or the lab's sniffer threads (costs CPU on this 2-core machine)
  --nfqmark PATH     nfqmark binary (default: the one cargo built with this benchmark)
  --nfqmark-arg ARG  extra argument for `nfqmark run` (repeatable), e.g. --rules FILE
  --pin              (with 2 or more CPUs) the resolver alone on CPU 0, and dnsperf, nfqmark and
                     the lab's upstream threads on the others: the client and upstream hosts,
                     which would be other machines, then do not take CPU from the resolver
                     under test, and nfqmark gets no more than a router's second core (less:
                     it shares it). By default (--no-pin) the scheduler places every party, as
                     on most routers: the headline figures
  --ideal            the idealized lab (no NAT on the uplinks, no source validation upstream)
                     instead of the real multi-WAN router
  --floor            a measurement, not a layout: nfqmark runs the lean layout (--lean) with the
                     rule that queues client queries over UDP left out, so one packet per query
                     (the upstream query, which must be held to be marked) reaches it. Pairing
                     cannot work (\"marked\" is 0); CPU and latency show the floor of any layout
                     that holds the upstream query in a queue";

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        bench: false,
        rounds: 5,
        duration: 10,
        warmup: 2,
        clients: 10,
        outstanding: 100,
        configs: vec![1, 2, 3, 4, 5],
        count: Count::Counters,
        nfqmark: PathBuf::from(env!("CARGO_BIN_EXE_nfqmark")),
        nfqmark_args: Vec::new(),
        pin: false,
        network: Network::Real,
        floor: false,
    };
    let mut it = std::env::args().skip(1);
    let num = |name: &str, v: Option<String>| -> Result<u32, String> {
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
            "--clients" => a.clients = num("--clients", it.next())?.max(1),
            "--outstanding" => a.outstanding = num("--outstanding", it.next())?.max(1),
            "--configs" => {
                let v = it.next().unwrap_or_default();
                a.configs = v
                    .split(',')
                    .map(|c| c.trim().parse::<u8>())
                    .collect::<Result<Vec<_>, _>>()
                    .ok()
                    .filter(|c| !c.is_empty() && c.iter().all(|&c| c <= 5))
                    .ok_or_else(|| format!("--configs takes numbers 0-5, e.g. 1,3\n{USAGE}"))?;
            }
            "--pin" => a.pin = num_cpus() >= 2.0,
            "--no-pin" => a.pin = false,
            "--ideal" => a.network = Network::Ideal,
            "--floor" => a.floor = true,
            "--real" => a.network = Network::Real,
            "--direct" => {
                if !a.configs.contains(&0) {
                    a.configs.insert(0, 0);
                }
            }
            "--count" => {
                a.count = match it.next().as_deref() {
                    Some("counters") => Count::Counters,
                    Some("sniffer") => Count::Sniffer,
                    _ => return Err(format!("--count takes counters or sniffer\n{USAGE}")),
                }
            }
            "--nfqmark" => {
                a.nfqmark = PathBuf::from(
                    it.next()
                        .ok_or_else(|| format!("--nfqmark needs a path\n{USAGE}"))?,
                )
            }
            "--nfqmark-arg" => a.nfqmark_args.push(
                it.next()
                    .ok_or_else(|| format!("--nfqmark-arg needs a value\n{USAGE}"))?,
            ),
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
// dnsperf

/// What dnsperf reports.
#[derive(Debug, Clone, Default)]
struct Perf {
    sent: u64,
    lost: u64,
    qps: f64,
    /// Average and standard deviation of the latency, in milliseconds.
    latency_ms: f64,
    stddev_ms: f64,
    /// Response codes other than NOERROR, as dnsperf prints them.
    other_rcodes: String,
}

/// The number after `key` on the line that starts with it (after spaces).
fn field(text: &str, key: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.trim_start().strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn parse_dnsperf(text: &str) -> Option<Perf> {
    let rcodes = text
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("Response codes:"))
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty() && !c.starts_with("NOERROR"))
        .collect::<Vec<_>>()
        .join(", ");
    Some(Perf {
        sent: field(text, "Queries sent:")? as u64,
        lost: field(text, "Queries lost:")? as u64,
        qps: field(text, "Queries per second:")?,
        latency_ms: field(text, "Average Latency (s):")? * 1e3,
        stddev_ms: field(text, "Latency StdDev (s):").unwrap_or(f64::NAN) * 1e3,
        other_rcodes: rcodes,
    })
}

// ------------------------------------------------------------------------------------------------
// CPU time, from /proc (clock ticks).

/// CPU ticks so far of each party: processes in the router namespace by name, this process's
/// lab threads by name, dnsperf by pid, and the whole machine (busy, total).
#[derive(Debug, Clone, Default)]
struct CpuSnap {
    by_name: BTreeMap<String, u64>,
    /// nfqmark's system time (in the kernel on its behalf), also counted in `by_name`.
    nfqmark_system: u64,
    machine_busy: u64,
    machine_total: u64,
}

fn cpu_snap(router: &Netns, dnsperf: Option<u32>) -> CpuSnap {
    let mut s = CpuSnap::default();
    if let Ok(out) = netns::run("ip", ["netns", "pids", router.name()]) {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let name = comm(&format!("/proc/{pid}/comm"));
            if let Some((user, system)) = stat_user_system(&format!("/proc/{pid}/stat")) {
                if name == "nfqmark" {
                    s.nfqmark_system += system;
                }
                *s.by_name.entry(name).or_default() += user + system;
            }
        }
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for task in dir.flatten() {
            let p = task.path().display().to_string();
            let name = comm(&format!("{p}/comm"));
            if name.starts_with("lab-")
                && let Some(t) = stat_ticks(&format!("{p}/stat"))
            {
                *s.by_name.entry(name).or_default() += t;
            }
        }
    }
    if let Some(pid) = dnsperf
        && let Some(t) = stat_ticks(&format!("/proc/{pid}/stat"))
    {
        s.by_name.insert("dnsperf".into(), t);
    }
    (s.machine_busy, s.machine_total) = machine_ticks();
    s
}

/// Share of one CPU each party used between two snapshots, in percent of one core.
#[derive(Debug, Clone, Default)]
struct CpuUse {
    resolver: f64,
    nfqmark: f64,
    /// The part of `nfqmark` spent in the kernel.
    nfqmark_system: f64,
    responder: f64,
    sniffer: f64,
    dnsperf: f64,
    /// Both cores: 200 % is a saturated machine.
    machine: f64,
}

fn cpu_use(a: &CpuSnap, b: &CpuSnap, wall: Duration) -> CpuUse {
    let hz = ticks_per_second();
    let secs = wall.as_secs_f64().max(1e-3);
    let share = |ticks: u64| ticks as f64 / hz / secs * 100.0;
    let pct = |names: &[&str]| {
        let d: u64 = names
            .iter()
            .map(|n| {
                b.by_name
                    .get(*n)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(a.by_name.get(*n).copied().unwrap_or(0))
            })
            .sum();
        share(d)
    };
    let machine_total = b.machine_total.saturating_sub(a.machine_total).max(1);
    let machine_busy = b.machine_busy.saturating_sub(a.machine_busy);
    CpuUse {
        resolver: pct(&["dnsmasq", "unbound"]),
        nfqmark: pct(&["nfqmark"]),
        nfqmark_system: share(b.nfqmark_system.saturating_sub(a.nfqmark_system)),
        responder: pct(&["lab-udp53", "lab-tcp53"]),
        sniffer: pct(&["lab-sniffer"]),
        dnsperf: pct(&["dnsperf"]),
        machine: machine_busy as f64 / machine_total as f64 * 100.0 * num_cpus(),
    }
}

fn num_cpus() -> f64 {
    thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}

// ------------------------------------------------------------------------------------------------
// One run.

#[derive(Debug, Clone, Default)]
struct Sample {
    perf: Perf,
    link1: u64,
    link2: u64,
    cpu: CpuUse,
    /// nfqmark's counter line at the end, when it ran.
    counters: String,
    /// Packets the upstream host dropped for a foreign source during the measured run.
    dropped: u64,
    /// Packets the router sent out of another link than their flow's NAT binding's.
    route_changes: u64,
    /// Latency of queries sent one at a time after the load (new names), in microseconds,
    /// sorted.
    latency_us: Vec<f64>,
}

impl Sample {
    /// Share of upstream queries that arrived over link 2 (carried client A's mark).
    fn marked(&self) -> f64 {
        let all = self.link1 + self.link2;
        if all == 0 {
            f64::NAN
        } else {
            self.link2 as f64 / all as f64
        }
    }
}

/// Per-link counter rules on the upstream host (no target: they only count). Appended after
/// the jump to the lab's ingress filter, so in the real layout they count accepted packets.
fn install_link_counters(up: &Netns) -> io::Result<()> {
    for link in ["link1", "link2"] {
        for proto in ["udp", "tcp"] {
            up.exec(
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
                    proto,
                    "--dport",
                    "53",
                ],
            )?;
        }
    }
    Ok(())
}

/// Packets counted so far per link (link1, link2).
fn link_counters(up: &Netns) -> io::Result<(u64, u64)> {
    Ok(lab::per_link(&up.rule_packets(
        "iptables",
        "raw",
        "PREROUTING",
    )?))
}

/// A query file of `n` unique names for client A (`a-LABEL-N.nfqm.example`).
fn write_names(path: &std::path::Path, label: &str, n: u64) -> io::Result<()> {
    let mut text = String::with_capacity(n as usize * 40);
    for i in 0..n {
        let _ = writeln!(text, "a-{label}-{i}.nfqm.example A");
    }
    std::fs::write(path, text)
}

/// dnsperf in client A's namespace; with `--pin`, under taskset on the CPUs other than the
/// resolver's.
fn dnsperf_command(world: &World, args: &Args) -> Command {
    if args.pin {
        let mut c = world.a.command("taskset");
        c.args(["-c", &others_cpus(), "dnsperf"]);
        c
    } else {
        world.a.command("dnsperf")
    }
}

/// Run dnsperf in client A's namespace; returns its report and its pid's CPU ticks sampler.
fn dnsperf(
    world: &World,
    server: &str,
    file: &std::path::Path,
    seconds: u32,
    args: &Args,
    mut during: impl FnMut(u32),
) -> io::Result<(Perf, String)> {
    let mut cmd = dnsperf_command(world, args);
    cmd.args(["-s", server, "-f", "inet", "-d"])
        .arg(file)
        .args(["-l", &seconds.to_string()])
        .args(["-c", &args.clients.to_string()])
        .args(["-q", &args.outstanding.to_string()])
        .args(["-t", "2"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn()?;
    let pid = child.id();
    // `ip netns exec` (and taskset) exec dnsperf in place: the pid is dnsperf's.
    let waiter = thread::spawn(move || child.wait_with_output());
    let deadline = Instant::now() + Duration::from_secs(u64::from(seconds) + 30);
    while !waiter.is_finished() {
        during(pid);
        if Instant::now() > deadline {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
        thread::sleep(Duration::from_millis(100));
    }
    let out = waiter
        .join()
        .map_err(|_| io::Error::other("dnsperf waiter panicked"))??;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    match parse_dnsperf(&text) {
        Some(p) => Ok((p, text)),
        None => Err(io::Error::other(format!(
            "dnsperf gave no statistics ({}): {}{}",
            out.status,
            text.lines().rev().take(5).collect::<Vec<_>>().join(" | "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
    }
}

/// Queries one at a time (`dnsperf -c 1 -q 1 -v`, each name new, so each goes upstream and back)
/// once the load is over: the latency nfqmark adds to a query, without the queueing of a
/// saturated resolver. Returns each query's latency in microseconds, sorted.
fn latency_probe(
    world: &World,
    server: &str,
    file: &std::path::Path,
    args: &Args,
) -> io::Result<Vec<f64>> {
    let mut cmd = dnsperf_command(world, args);
    cmd.args(["-s", server, "-f", "inet", "-d"])
        .arg(file)
        .args(["-n", "1", "-l", "20", "-c", "1", "-q", "1", "-t", "2", "-v"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let out = cmd.output()?;
    // -v: one line per answer, "> NOERROR name A 0.000123" (the latency in seconds last).
    let mut v: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("> "))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .map(|s| s * 1e6)
        .collect();
    if v.is_empty() {
        return Err(io::Error::other(format!(
            "dnsperf -v gave no per-query latency ({})",
            out.status
        )));
    }
    v.sort_by(f64::total_cmp);
    Ok(v)
}

/// The value below which `q` (0..1) of the sorted `v` lie.
fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
    v.get(i).copied().unwrap_or(f64::NAN)
}

/// Names for the latency probe, one at a time.
const PROBE_NAMES: u64 = 500;

/// The CPUs other than 0, as taskset writes them ("1" or "1-3").
fn others_cpus() -> String {
    let n = num_cpus() as usize;
    if n <= 2 {
        "1".to_string()
    } else {
        format!("1-{}", n - 1)
    }
}

/// Set the CPU affinity of every thread of `pid` (a thread id works too: just that thread).
fn pin_threads(pid: &str, cpus: &[usize], all_threads: bool) -> io::Result<()> {
    let tids: Vec<String> = if all_threads {
        std::fs::read_dir(format!("/proc/{pid}/task"))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect()
    } else {
        vec![pid.to_string()]
    };
    for tid in tids {
        let Ok(tid) = tid.parse::<libc::pid_t>() else {
            continue;
        };
        // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET initialise it, and
        // sched_setaffinity only reads it.
        let rc = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_ZERO(&mut set);
            for &c in cpus {
                libc::CPU_SET(c, &mut set);
            }
            libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set)
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// `--pin`: the resolver alone on CPU 0; nfqmark and the lab's upstream threads (responder,
/// sniffer, sinks) on the others. dnsperf is started under taskset.
fn pin_parties(world: &World) -> io::Result<()> {
    let n = num_cpus() as usize;
    if n < 2 {
        return Ok(());
    }
    let others: Vec<usize> = (1..n).collect();
    let out = netns::run("ip", ["netns", "pids", world.router.name()])?;
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        match comm(&format!("/proc/{pid}/comm")).as_str() {
            "dnsmasq" | "unbound" => pin_threads(pid, &[0], true)?,
            "nfqmark" => pin_threads(pid, &others, true)?,
            _ => {}
        }
    }
    for task in std::fs::read_dir("/proc/self/task")?.flatten() {
        let tid = task.file_name().to_string_lossy().to_string();
        if comm(&format!("/proc/self/task/{tid}/comm")).starts_with("lab-") {
            pin_threads(&tid, &others, false)?;
        }
    }
    Ok(())
}

/// `--floor`: the lean rules `nfqmark setup --lean` prints, without the one that queues client
/// queries over UDP.
fn install_floor_rules(world: &World, nfqmark: &std::path::Path, queue: u16) -> io::Result<()> {
    for family in [Family::V4, Family::V6] {
        let lean = lab::queue_rules(&world.router, nfqmark, queue, family, true)?;
        let client_queries = |l: &&str| {
            l.starts_with("-A NFQMARK-DNS-IN ") && l.contains("-p udp") && l.contains("--dport")
        };
        let left_out = lean.lines().filter(client_queries).count();
        if left_out != 1 {
            return Err(io::Error::other(format!(
                "--floor: expected one rule queueing client queries over UDP, found {left_out}:\n{lean}"
            )));
        }
        let rules: String = lean
            .lines()
            .filter(|l| !client_queries(l))
            .map(|l| format!("{l}\n"))
            .collect();
        world.router_iptables_restore(family, &rules)?;
    }
    Ok(())
}

fn run_one(cfg: Config, round: usize, args: &Args, names: u64) -> io::Result<Sample> {
    let mut opts = Options::new(
        &format!("e2e{}", cfg.id),
        cfg.resolver,
        cfg.nfqmark.then(|| args.nfqmark.clone()),
    );
    opts.marking = cfg.marking;
    opts.nfqmark_args = args.nfqmark_args.clone();
    opts.network = args.network;
    let floor = args.floor && cfg.nfqmark;
    if floor {
        opts.queue_rules = false;
        if !opts.nfqmark_args.iter().any(|a| a == "--lean") {
            opts.nfqmark_args.push("--lean".into());
        }
    }
    let queue = opts.queue;
    let mut world = World::build(opts)?;
    if floor {
        install_floor_rules(&world, &args.nfqmark, queue)?;
    }
    if args.count == Count::Counters {
        // Stop the sniffer threads: they would take CPU from what is measured.
        world.sniffer = Sniffer::start(&world.upstream, &[])?;
    }
    install_link_counters(&world.upstream)?;
    world.start_nfqmark()?;
    let server = if cfg.direct {
        lab::addr::UPSTREAM_V4
    } else {
        world.start_resolver(Family::V4)?;
        lab::addr::ROUTER_A_V4
    };
    if args.pin {
        pin_parties(&world)?;
    }
    let label = format!("r{round}c{}", cfg.id);
    if args.warmup > 0 {
        let warm = world.path("warmup.txt");
        write_names(&warm, &format!("{label}w"), names / 4)?;
        dnsperf(&world, server, &warm, args.warmup, args, |_| {})?;
        // Let the last answers of the warm-up come back before counting.
        thread::sleep(Duration::from_millis(300));
    }
    let file = world.path("names.txt");
    write_names(&file, &label, names)?;
    world.sniffer.clear();
    let (l1_before, l2_before) = link_counters(&world.upstream)?;
    let dropped_before = world.ingress_drops()?.total();
    let changes_before = world.route_changes()?.total();
    let mut first: Option<(CpuSnap, Instant)> = None;
    let mut last: Option<(CpuSnap, Instant)> = None;
    let (perf, _text) = dnsperf(&world, server, &file, args.duration, args, |pid| {
        let snap = (cpu_snap(&world.router, Some(pid)), Instant::now());
        // Once dnsperf has exited (and was reaped) its ticks are gone: keep the last snapshot
        // that still has them.
        if !snap.0.by_name.contains_key("dnsperf") {
            return;
        }
        if first.is_none() {
            first = Some(snap);
        } else {
            last = Some(snap);
        }
    })?;
    thread::sleep(Duration::from_millis(300));
    let (l1_after, l2_after) = link_counters(&world.upstream)?;
    let dropped = world.ingress_drops()?.total() - dropped_before;
    let route_changes = world.route_changes()?.total() - changes_before;
    let (link1, link2) = match args.count {
        Count::Counters => (l1_after - l1_before, l2_after - l2_before),
        Count::Sniffer => {
            let c = LinkCounts::from_sniffer(&world.sniffer, &label);
            (c.a_link1 as u64, c.a_link2 as u64)
        }
    };
    let cpu = match (first, last) {
        (Some((a, ta)), Some((b, tb))) => cpu_use(&a, &b, tb - ta),
        _ => CpuUse::default(),
    };
    let probe = world.path("probe.txt");
    write_names(&probe, &format!("{label}p"), PROBE_NAMES)?;
    let latency_us = latency_probe(&world, server, &probe, args)?;
    let counters = if cfg.nfqmark {
        world.nfqmark_counters()
    } else {
        String::new()
    };
    Ok(Sample {
        latency_us,
        perf,
        link1,
        link2,
        cpu,
        counters,
        dropped,
        route_changes,
    })
}

// ------------------------------------------------------------------------------------------------
// Summary.

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

/// `f` of each round's samples of configurations `num` and `den`, leaving out the rounds where
/// either run failed; `None` when one of them did not run at all.
fn per_round(
    results: &BTreeMap<u8, Vec<Option<Sample>>>,
    num: u8,
    den: u8,
    f: impl Fn(&Sample, &Sample) -> f64,
) -> Option<Vec<f64>> {
    let a = results.get(&num)?;
    let b = results.get(&den)?;
    Some(
        a.iter()
            .zip(b)
            .filter_map(|(x, y)| Some(f(x.as_ref()?, y.as_ref()?)))
            .collect(),
    )
}

fn summary(args: &Args, results: &BTreeMap<u8, Vec<Option<Sample>>>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\ne2e summary: {} round(s) x {} s, dnsperf -c {} -q {}, unique names; medians over \
         rounds (min-max of QPS); CPU in % of one core (machine: {} cores, 100 % each)\n\
         layout: {}\n\
         network: {}; \"marked\" is the share of upstream queries accepted over link 2",
        args.rounds,
        args.duration,
        args.clients,
        args.outstanding,
        num_cpus(),
        if args.pin {
            "pinned: the resolver alone on CPU 0; dnsperf, nfqmark, the upstream host's threads \
             on the others (--no-pin: the scheduler places everything)"
        } else {
            "unpinned: the scheduler places every party (the default; --pin: the resolver alone \
             on CPU 0)"
        },
        args.network
    );
    if args.floor {
        let _ = writeln!(
            out,
            "--floor: nfqmark in the lean layout without queueing client queries (one queued \
             packet per query): pairing cannot work, so \"marked\" is 0 by design"
        );
    }
    let _ = writeln!(
        out,
        "{:<30} {:>22} {:>7} {:>7} {:>7} {:>7}",
        "configuration", "QPS", "lat ms", "sd ms", "lost %", "marked"
    );
    let configs: Vec<&Config> = CONFIGS
        .iter()
        .filter(|c| results.contains_key(&c.id))
        .collect();
    let samples_of = |cfg: &Config| -> Vec<Sample> {
        results
            .get(&cfg.id)
            .map(|v| v.iter().flatten().cloned().collect())
            .unwrap_or_default()
    };
    for cfg in &configs {
        let samples = samples_of(cfg);
        let col = |f: &dyn Fn(&Sample) -> f64| median(samples.iter().map(f).collect());
        let qps: Vec<f64> = samples.iter().map(|s| s.perf.qps).collect();
        let (lo, hi) = qps
            .iter()
            .fold((f64::INFINITY, 0.0f64), |(a, b), &q| (a.min(q), b.max(q)));
        let marked = if cfg.marking {
            format!("{:.3}", col(&|s| s.marked()))
        } else {
            "-".to_string()
        };
        let _ = writeln!(
            out,
            "{:<30} {:>22} {:>7.2} {:>7.2} {:>7.2} {:>7}",
            format!("{}. {}", cfg.id, cfg.label),
            format!("{:.0} ({:.0}-{:.0})", median(qps.clone()), lo, hi),
            col(&|s| s.perf.latency_ms),
            col(&|s| s.perf.stddev_ms),
            col(&|s| {
                if s.perf.sent == 0 {
                    f64::NAN
                } else {
                    s.perf.lost as f64 / s.perf.sent as f64 * 100.0
                }
            }),
            marked,
        );
        let failed = results[&cfg.id].iter().filter(|s| s.is_none()).count();
        if failed > 0 {
            let _ = writeln!(out, "    ({failed} run(s) failed; see above)");
        }
        let rcodes: Vec<&str> = samples
            .iter()
            .map(|s| s.perf.other_rcodes.as_str())
            .filter(|r| !r.is_empty())
            .collect();
        if !rcodes.is_empty() {
            let _ = writeln!(out, "    other response codes: {}", rcodes.join(" | "));
        }
        let lost_on_the_way: u64 = samples.iter().map(|s| s.dropped + s.route_changes).sum();
        if lost_on_the_way > 0 {
            let _ = writeln!(
                out,
                "    packets dropped upstream for a foreign source: {}; routed out of another \
                 link than their flow's NAT binding: {} (all rounds)",
                samples.iter().map(|s| s.dropped).sum::<u64>(),
                samples.iter().map(|s| s.route_changes).sum::<u64>()
            );
        }
    }
    let _ = writeln!(
        out,
        "\nCPU, % of one core (medians): resolver, nfqmark, the lab's upstream responder and \
         sniffer threads, dnsperf, whole machine; and CPU microseconds per query (resolver,\n\
         nfqmark and the part of it in the kernel (sys/q: the verdict's reinjection carries the\n\
         packet on through routing, NAT and the next hooks inside nfqmark's system call), whole\n\
         machine: every party's work for one query, wherever it runs)"
    );
    let _ = writeln!(
        out,
        "{:<30} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>10} {:>10} {:>7} {:>10}",
        "configuration",
        "resolv",
        "nfqm",
        "upstr",
        "sniff",
        "dnsperf",
        "machine",
        "resolv/q",
        "nfqm/q",
        "sys/q",
        "machine/q"
    );
    let per_query = |pct: f64, qps: f64| {
        if qps > 0.0 && pct > 0.0 {
            pct / 100.0 / qps * 1e6
        } else {
            f64::NAN
        }
    };
    for cfg in &configs {
        let samples = samples_of(cfg);
        let col = |f: &dyn Fn(&Sample) -> f64| median(samples.iter().map(f).collect());
        let _ = writeln!(
            out,
            "{:<30} {:>7.0} {:>7.0} {:>7.0} {:>7.0} {:>7.0} {:>7.0} {:>10.1} {:>10.1} {:>7.1} {:>10.1}",
            format!("{}. {}", cfg.id, cfg.label),
            col(&|s| s.cpu.resolver),
            col(&|s| s.cpu.nfqmark),
            col(&|s| s.cpu.responder),
            col(&|s| s.cpu.sniffer),
            col(&|s| s.cpu.dnsperf),
            col(&|s| s.cpu.machine),
            col(&|s| per_query(s.cpu.resolver, s.perf.qps)),
            col(&|s| per_query(s.cpu.nfqmark, s.perf.qps)),
            col(&|s| per_query(s.cpu.nfqmark_system, s.perf.qps)),
            col(&|s| per_query(s.cpu.machine, s.perf.qps)),
        );
    }
    // What marking costs the machine, per query: the same resolver without marking, round by
    // round. nfqmark's own figure also holds work that moved to it from the resolver (the
    // packet's way on after the verdict, which the resolver's send does without a queue).
    let difference = |num: u8, den: u8, f: &dyn Fn(&Sample) -> f64| {
        per_round(results, num, den, |x, y| f(x) - f(y))
            .filter(|v| !v.is_empty())
            .map(median)
    };
    for (num, den, what) in [(3, 1, "dnsmasq"), (4, 5, "unbound")] {
        let machine = difference(num, den, &|s| per_query(s.cpu.machine, s.perf.qps));
        let resolver = difference(num, den, &|s| per_query(s.cpu.resolver, s.perf.qps));
        if let (Some(machine), Some(resolver)) = (machine, resolver) {
            let _ = writeln!(
                out,
                "  {num} vs {den} ({what}): marking adds {machine:+.1} µs of machine CPU per query; \
                 the resolver's own CPU per query changes by {resolver:+.1} µs (medians of per-round \
                 differences)"
            );
        }
    }
    // Latency one query at a time: what nfqmark adds to a query, not a saturated queue's wait.
    let _ = writeln!(
        out,
        "\nlatency of single queries after the load ({PROBE_NAMES} new names, one at a time; \
         microseconds, medians over rounds): median, p99; added = this configuration's median \
         minus that of the same resolver without marking, per round, then the median"
    );
    let _ = writeln!(
        out,
        "{:<30} {:>9} {:>9} {:>9}",
        "configuration", "median", "p99", "added"
    );
    let baseline = |id: u8| -> Option<u8> {
        match id {
            2 | 3 => Some(1),
            4 => Some(5),
            _ => None,
        }
    };
    for cfg in &configs {
        let samples = samples_of(cfg);
        let col = |f: &dyn Fn(&Sample) -> f64| median(samples.iter().map(f).collect());
        let added = baseline(cfg.id)
            .and_then(|b| {
                per_round(results, cfg.id, b, |x, y| {
                    quantile(&x.latency_us, 0.5) - quantile(&y.latency_us, 0.5)
                })
            })
            .map(median);
        let _ = writeln!(
            out,
            "{:<30} {:>9.0} {:>9.0} {:>9}",
            format!("{}. {}", cfg.id, cfg.label),
            col(&|s| quantile(&s.latency_us, 0.5)),
            col(&|s| quantile(&s.latency_us, 0.99)),
            added.map_or("-".to_string(), |a| format!("{a:+.0}")),
        );
    }
    // Ratios: per round, then the median.
    let ratio = |num: u8, den: u8| -> Option<(f64, Vec<f64>)> {
        let v = per_round(results, num, den, |x, y| x.perf.qps / y.perf.qps)?;
        (!v.is_empty()).then(|| (median(v.clone()), v))
    };
    let _ = writeln!(
        out,
        "\nratios of QPS (median of per-round ratios; per round):"
    );
    for (num, den, what, goal) in [
        (3, 1, "dnsmasq + nfqmark / dnsmasq, no marking", Some(0.93)),
        (3, 2, "dnsmasq + nfqmark / dnsmasq --conntrack", Some(1.5)),
        (4, 5, "unbound + nfqmark / unbound, no marking", Some(0.93)),
        (2, 1, "dnsmasq --conntrack / dnsmasq, no marking", None),
    ] {
        if let Some((m, v)) = ratio(num, den) {
            let per: Vec<String> = v.iter().map(|x| format!("{x:.3}")).collect();
            let verdict = match goal {
                Some(g) if m >= g => format!("  goal >= {g}: met"),
                Some(g) => format!("  goal >= {g}: NOT met"),
                None => String::new(),
            };
            let _ = writeln!(
                out,
                "  {num}/{den} {what:<44} {m:.3}  [{}]{verdict}",
                per.join(", ")
            );
        }
    }
    out
}

/// CPU time the lab's responder spends building one answer (`upstream::answer`, userspace
/// only: its two syscalls per query come on top), in ns: tells whether the responder thread
/// can keep up, and what it takes from the machine.
fn responder_answer_ns() -> f64 {
    let query = nfqmark_testkit::dns_query(0x1234, "a-r1c1-123456.nfqm.example");
    let n = 20_000u32;
    let start = Instant::now();
    for _ in 0..n {
        std::hint::black_box(upstream::answer(std::hint::black_box(&query), true));
    }
    start.elapsed().as_nanos() as f64 / f64::from(n)
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
        println!("e2e: not run under `cargo test`; use benches/e2e.sh (root)");
        return;
    }
    if !netns::is_root() {
        eprintln!("e2e: needs root (network namespaces, iptables, NFQUEUE): sudo benches/e2e.sh");
        std::process::exit(2);
    }
    if let Err(missing) = lab::check_programs(&[("dnsperf", "dnsperf"), ("unbound", "unbound")]) {
        eprintln!("e2e: {missing}");
        std::process::exit(2);
    }
    if !args.nfqmark.is_file() {
        eprintln!("e2e: no nfqmark binary at {}", args.nfqmark.display());
        std::process::exit(2);
    }
    let configs: Vec<Config> = CONFIGS
        .iter()
        .filter(|c| args.configs.contains(&c.id))
        .copied()
        .collect();
    println!(
        "e2e: {} round(s) of {:?}, {} s each (+{} s warm-up), nfqmark {}; network: {}",
        args.rounds,
        args.configs,
        args.duration,
        args.warmup,
        args.nfqmark.display(),
        args.network
    );
    println!(
        "e2e: the lab's upstream responder builds an answer in {:.0} ns (one thread, queries \
         taken and answered in bursts of up to 64 with recvmmsg and sendmmsg)",
        responder_answer_ns()
    );
    let mut results: BTreeMap<u8, Vec<Option<Sample>>> = BTreeMap::new();
    // Enough names that no run wraps around its file; grown from what was seen.
    let mut best_qps = 40_000.0f64;
    for round in 1..=args.rounds {
        let n = configs.len();
        for k in 0..n {
            let cfg = configs[(k + round - 1) % n];
            let expect = if cfg.direct {
                best_qps.max(150_000.0)
            } else {
                best_qps
            };
            let names = (expect * 1.5 * f64::from(args.duration)) as u64 + 10_000;
            let started = Instant::now();
            let sample = run_one(cfg, round, &args, names);
            match &sample {
                Ok(s) => {
                    if !cfg.direct {
                        best_qps = best_qps.max(s.perf.qps);
                    }
                    println!(
                        "round {round} {:<28} {:>8.0} QPS  lat {:.2} ms (sd {:.2})  lost {}  \
                         link1/link2 {}/{}  dropped {} rerouted {}  cpu resolver {:.0}% nfqmark {:.0}% responder {:.0}% \
                         sniffer {:.0}% dnsperf {:.0}% machine {:.0}%  single queries p50 {:.0} µs \
                         p99 {:.0} µs  [{:.0} s]{}{}",
                        format!("{}. {}", cfg.id, cfg.label),
                        s.perf.qps,
                        s.perf.latency_ms,
                        s.perf.stddev_ms,
                        s.perf.lost,
                        s.link1,
                        s.link2,
                        s.dropped,
                        s.route_changes,
                        s.cpu.resolver,
                        s.cpu.nfqmark,
                        s.cpu.responder,
                        s.cpu.sniffer,
                        s.cpu.dnsperf,
                        s.cpu.machine,
                        quantile(&s.latency_us, 0.5),
                        quantile(&s.latency_us, 0.99),
                        started.elapsed().as_secs_f64(),
                        if s.perf.sent > names {
                            "  (names wrapped)"
                        } else {
                            ""
                        },
                        if s.counters.is_empty() {
                            String::new()
                        } else {
                            format!("\n    nfqmark: {}", s.counters)
                        }
                    );
                }
                Err(e) => println!("round {round} {}: FAILED: {e}", cfg.label),
            }
            results.entry(cfg.id).or_default().push(sample.ok());
        }
    }
    print!("{}", summary(&args, &results));
}
