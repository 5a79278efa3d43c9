//! End to end: nfqmark as a daemon under stress and in trouble, in the lab's namespaces (see
//! `nfqmark_lab`): a flood of malformed DNS-port packets through the queue while real queries
//! flow, `kill -9` and SIGTERM under load, a flood of unique queries with the upstream silent
//! against a small `--capacity`, and running as an unprivileged user with only CAP_NET_ADMIN,
//! plus the start-up errors an operator meets first.
//!
//! What is asserted is correctness only: every queued packet got a verdict (the kernel's own
//! `/proc/net/netfilter/nfnetlink_queue` says so), answers keep coming, marks land where they
//! should, tables stay bounded. Timings and sizes are printed, never compared with a fast
//! machine's. Every load is bounded in count and in time. The tests that make load take turns
//! (one lock), because they share two cores with each other and with whatever else runs.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a step that fails fails the test, loudly and at once"
)]

mod common;
#[path = "common/load.rs"]
mod load;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use load::{Counters, Exit, FloodLimits, FloodTarget, ProcQueue};
use nfqmark_lab::{self as lab, Client, Family, LinkCounts, Options, Resolver, World};

/// The queue every world here uses (the lab's rules carry `--queue-bypass`).
const QUEUE: u16 = 11;

/// `CAP_NET_ADMIN`'s bit number (linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;

/// One load-making test at a time.
fn load_turn() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|p| p.into_inner())
}

fn world(tag: &str, args: &[&str]) -> World {
    let mut options = Options::new(tag, Resolver::Dnsmasq, Some(common::nfqmark_bin()));
    options.queue = QUEUE;
    options.nfqmark_args = args.iter().map(|s| s.to_string()).collect();
    World::build(options).expect("build the lab")
}

fn names(client: Client, label: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("{}-{i}-{label}.nfqm.example", client.letter()))
        .collect()
}

/// Both clients query `n` unique names labelled `label` at once; returns where their upstream
/// queries went and how many each got answered.
fn round(world: &World, label: &str, n: usize) -> (LinkCounts, usize, usize) {
    let a_names = names(Client::A, label, n);
    let b_names = names(Client::B, label, n);
    let (a, b) = thread::scope(|s| {
        let a = s.spawn(|| world.query(Client::A, Family::V4, &a_names, false));
        let b = s.spawn(|| world.query(Client::B, Family::V4, &b_names, false));
        (a.join(), b.join())
    });
    let a = a.expect("client A thread").expect("client A dig");
    let b = b.expect("client B thread").expect("client B dig");
    // Let the last packets reach the sniffer.
    thread::sleep(Duration::from_millis(300));
    (
        LinkCounts::from_sniffer(&world.sniffer, label),
        a.answered,
        b.answered,
    )
}

/// A fresh counter line: ask with SIGUSR1 and wait for a new report in the log.
fn fresh_counters(world: &World) -> Counters {
    let before = world.nfqmark_log().matches("packets=").count();
    world.signal_nfqmark(libc::SIGUSR1);
    assert!(
        world.wait_log("packets=", before + 1, Duration::from_secs(3)),
        "nfqmark wrote no counters after SIGUSR1:\n{}",
        world.nfqmark_log()
    );
    Counters::parse(&lab::last_counters(&world.nfqmark_log()))
}

fn pid(world: &World) -> u32 {
    world.nfqmark_pid().expect("nfqmark runs")
}

/// Client A's upstream queries all via link 2 (marked), client B's all via link 1.
fn assert_marked_round(what: &str, counts: &LinkCounts, n: usize, log: &str) {
    assert!(
        counts.a_link2 == n && counts.a_link1 == 0 && counts.b_link1 == n && counts.b_link2 == 0,
        "{what}: {counts} (expected client A {n} via link2, client B {n} via link1)\n{log}"
    );
}

/// Tens of thousands of malformed and truncated UDP and TCP packets to port 53 while both
/// clients resolve: every packet gets a verdict, every query is answered, client A's upstream
/// queries keep their mark, nfqmark stays up and counts what it could not read.
#[test]
fn malformed_flood_gets_verdicts_while_dns_keeps_working() {
    if !common::require_root("flood") {
        return;
    }
    let _turn = load_turn();
    let mut w = world("flood", &[]);
    w.start_nfqmark().expect("start nfqmark");
    w.start_resolver(Family::V4).expect("start the resolver");
    let nfqmark = pid(&w);

    const BATCH: usize = 16;
    const MAX_BATCHES: usize = 12;
    let flooding = AtomicBool::new(true);
    let target = FloodTarget {
        src4: lab::addr::A_V4.parse().expect("address"),
        dst4: lab::addr::ROUTER_A_V4.parse().expect("address"),
        src6: lab::addr::A_V6.parse().expect("address"),
        dst6: lab::addr::ROUTER_A_V6.parse().expect("address"),
        port: 53,
    };
    let limits = FloodLimits {
        packets: 60_000,
        time: Duration::from_secs(10),
        rate: 20_000,
        max_backlog: 1024,
        v6_every: 4,
        seed: 0x6e66_716d_6172_6b21,
    };
    let (flood, dig) = thread::scope(|s| {
        let flood = s.spawn(|| {
            let r = load::flood(&w.a, target, limits, move || {
                load::proc_queue_of_pid(nfqmark, QUEUE).map_or(0, |q| q.waiting)
            });
            flooding.store(false, Ordering::Relaxed);
            r
        });
        // Real queries from both clients for as long as the flood lasts (bounded batches).
        let mut dig = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(15);
        for batch in 0..MAX_BATCHES {
            if batch > 0 && (!flooding.load(Ordering::Relaxed) || Instant::now() > deadline) {
                break;
            }
            let label = format!("flood{batch}");
            let (counts, a, b) = round(&w, &label, BATCH);
            dig.push((label, counts, a, b));
        }
        (flood.join().expect("flood thread"), dig)
    });
    let flood = flood.expect("send the flood");
    println!("flood: {flood}");

    // Everything queued is given its verdict: the queue drains to zero.
    let drained = lab::wait_for(Duration::from_secs(5), || {
        load::proc_queue_in(&w.router, QUEUE).is_some_and(|q| q.waiting == 0)
    });
    let counters = fresh_counters(&w);
    let kernel = load::proc_queue_in(&w.router, QUEUE).expect("queue still bound");
    let log = w.nfqmark_log();
    let tail: String = log.lines().rev().take(20).collect::<Vec<_>>().join("\n");
    println!("kernel: {kernel}");
    println!("nfqmark: {}", counters.line());
    let packets = counters.get("packets");
    println!(
        "verdicts: nfqmark decided {packets} packets, the kernel queued {} (ids), {} waiting; \
         parse_errors={} dns_errors={} enobufs={}",
        kernel.id_sequence,
        kernel.waiting,
        counters.get("parse_errors"),
        counters.get("dns_errors"),
        counters.get("enobufs")
    );
    let mut sent = 0;
    for (label, counts, a, b) in &dig {
        println!("{label}: {counts}; answered A {a}/{BATCH}, B {b}/{BATCH}");
        sent += BATCH;
        assert_eq!(
            (*a, *b),
            (BATCH, BATCH),
            "{label}: unanswered queries\n{tail}"
        );
        assert_marked_round(label, counts, BATCH, &tail);
    }
    assert!(sent >= 2 * BATCH, "too few rounds ran during the flood");
    assert!(flood.sent >= 30_000, "the flood sent too little: {flood}");
    assert!(
        drained,
        "packets still wait for a verdict: {kernel}\n{tail}"
    );
    assert_eq!(kernel.waiting, 0, "{kernel}");
    assert!(
        kernel.id_sequence >= packets,
        "nfqmark counted more packets ({packets}) than the kernel queued ({kernel})"
    );
    assert!(
        packets >= flood.whole_headers,
        "flood packets went around the queue: nfqmark decided {packets}, the flood sent {} \
         with whole transport headers",
        flood.whole_headers
    );
    assert!(
        load::wait_exit(nfqmark, Duration::ZERO).is_none(),
        "nfqmark died during the flood:\n{tail}"
    );
    assert!(counters.get("parse_errors") > 0, "{}", counters.line());
    assert!(counters.get("dns_errors") > 0, "{}", counters.line());
    assert_eq!(counters.get("verdict_errors"), 0, "{}", counters.line());
}

/// A dig loop on both clients that runs until `stop` (at most `max_batches` batches and 10 s),
/// labelled `load<N>`; returns (sent, answered) per client.
fn dig_loop(w: &World, stop: &AtomicBool, max_batches: usize) -> ((usize, usize), (usize, usize)) {
    const BATCH: usize = 8;
    let mut a = (0, 0);
    let mut b = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    for batch in 0..max_batches {
        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
            break;
        }
        let label = format!("load{batch}");
        let a_names = names(Client::A, &label, BATCH);
        let b_names = names(Client::B, &label, BATCH);
        let (ra, rb) = thread::scope(|s| {
            let ra = s.spawn(|| w.query_with(Client::A, Family::V4, &a_names, false, 1, 3));
            let rb = s.spawn(|| w.query_with(Client::B, Family::V4, &b_names, false, 1, 3));
            (ra.join(), rb.join())
        });
        let ra = ra.expect("dig thread").expect("dig");
        let rb = rb.expect("dig thread").expect("dig");
        a = (a.0 + ra.sent, a.1 + ra.answered);
        b = (b.0 + rb.sent, b.1 + rb.answered);
    }
    (a, b)
}

/// `kill -9` while both clients resolve: with `--queue-bypass` DNS keeps working, unmarked
/// (client A's upstream queries fall back to link 1); a new nfqmark marks again.
#[test]
fn kill_9_under_load_passes_traffic_unmarked_and_a_restart_marks_again() {
    if !common::require_root("kill9") {
        return;
    }
    let _turn = load_turn();
    let mut w = world("kill9", &[]);
    w.start_nfqmark().expect("start nfqmark");
    w.start_resolver(Family::V4).expect("start the resolver");
    const N: usize = 16;

    let (counts, a, b) = round(&w, "before", N);
    println!("before the kill: {counts}; answered A {a}, B {b}");
    assert_eq!((a, b), (N, N));
    assert_marked_round("before the kill", &counts, N, &w.nfqmark_log());

    let victim = pid(&w);
    // Load: dnsperf from client B, and dig loops (which retry) from both clients.
    let input = w.path("kill9.txt");
    load::names_file(&input, "b-kill9", 10_000).expect("write the dnsperf input");
    let perf = load::start_dnsperf(
        &w.b,
        lab::addr::ROUTER_B_V4,
        &input,
        &["-l", "3", "-Q", "1000", "-t", "2"],
        &w.path("dnsperf.out"),
        Duration::from_secs(15),
    )
    .expect("start dnsperf");
    let stop = AtomicBool::new(false);
    let (load, killed_after) = thread::scope(|s| {
        let load = s.spawn(|| dig_loop(&w, &stop, 40));
        thread::sleep(Duration::from_millis(700));
        // SAFETY: kill(2) on nfqmark's pid, our child that the lab has not reaped.
        unsafe {
            libc::kill(victim as i32, libc::SIGKILL);
        }
        let t = Instant::now();
        let gone = lab::wait_for(Duration::from_secs(3), || !w.queue_bound(QUEUE));
        let killed_after = t.elapsed();
        assert!(gone, "queue {QUEUE} still bound after kill -9");
        thread::sleep(Duration::from_millis(700));
        stop.store(true, Ordering::Relaxed);
        (load.join().expect("load thread"), killed_after)
    });
    println!(
        "kill -9: queue unbound after {killed_after:.2?}; under load A answered {}/{}, B {}/{}",
        load.0.1, load.0.0, load.1.1, load.1.0
    );
    let report = perf.finish().expect("dnsperf");
    println!(
        "dnsperf across the kill: sent {}, completed {}, lost {} (the kernel drops what waited \
         in the queue of a killed process)",
        report.sent, report.completed, report.lost
    );
    assert_eq!(
        load::wait_exit(victim, Duration::from_secs(1)),
        Some(Exit::Signal(libc::SIGKILL))
    );
    assert!(report.completed > 500, "too little load:\n{}", report.text);
    assert_eq!(load.0.0, load.0.1, "client A lost queries around the kill");
    assert_eq!(load.1.0, load.1.1, "client B lost queries around the kill");

    w.sniffer.clear();
    let (counts, a, b) = round(&w, "killed", N);
    println!("nfqmark killed: {counts}; answered A {a}, B {b}");
    assert_eq!((a, b), (N, N), "DNS must keep working without nfqmark");
    assert_eq!(
        (
            counts.a_link1,
            counts.a_link2,
            counts.b_link1,
            counts.b_link2
        ),
        (N, 0, N, 0),
        "without nfqmark nothing is marked: {counts}"
    );

    w.start_nfqmark().expect("restart nfqmark");
    let (counts, a, b) = round(&w, "restarted", N);
    let log = w.stop_nfqmark();
    println!("restarted: {counts}; answered A {a}, B {b}");
    assert_eq!((a, b), (N, N));
    assert_marked_round("after the restart", &counts, N, &log);
}

/// What a sampler in the router saw of the queue while nfqmark stopped.
#[derive(Debug, Default)]
struct StopSamples {
    /// The last sample while the queue was still bound.
    last: Option<ProcQueue>,
    max_waiting: u64,
    samples: usize,
    /// The queue was gone (unbound) when sampling ended.
    gone: bool,
    realtime: bool,
}

/// Sample the queue from inside the router every millisecond (at real-time priority, so the
/// load does not starve it) until it disappears, `stop` is set, or 10 s pass.
fn sample_until_unbound(
    w: &World,
    stop: &'static AtomicBool,
) -> thread::JoinHandle<std::io::Result<StopSamples>> {
    load::spawn_in(&w.router, "queue-sampler", move || {
        let mut s = StopSamples {
            realtime: load::realtime_priority(),
            ..StopSamples::default()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
            match load::proc_queue_here(QUEUE) {
                Some(q) => {
                    s.max_waiting = s.max_waiting.max(q.waiting);
                    s.last = Some(q);
                    s.samples += 1;
                }
                None if s.last.is_some() => {
                    s.gone = true;
                    break;
                }
                None => {}
            }
            thread::sleep(Duration::from_millis(1));
        }
        Ok(s)
    })
    .expect("start the sampler")
}

/// SIGTERM while dnsperf runs from client B: nfqmark exits 0 promptly, stops taking packets,
/// gives every queued packet its verdict before it unbinds, and dnsperf loses nothing.
#[test]
fn sigterm_under_load_exits_cleanly_and_leaves_no_packet_behind() {
    if !common::require_root("term") {
        return;
    }
    static SAMPLER_STOP: AtomicBool = AtomicBool::new(false);
    let _turn = load_turn();
    let mut w = world("term", &[]);
    w.start_nfqmark().expect("start nfqmark");
    w.start_resolver(Family::V4).expect("start the resolver");
    let nfqmark = pid(&w);
    let input = w.path("term.txt");
    load::names_file(&input, "b-term", 20_000).expect("write the dnsperf input");
    let perf = load::start_dnsperf(
        &w.b,
        lab::addr::ROUTER_B_V4,
        &input,
        &["-l", "4", "-Q", "1000", "-t", "2"],
        &w.path("dnsperf.out"),
        Duration::from_secs(15),
    )
    .expect("start dnsperf");
    thread::sleep(Duration::from_millis(1500));
    let sampler = sample_until_unbound(&w, &SAMPLER_STOP);
    thread::sleep(Duration::from_millis(100));
    let before = load::proc_queue_in(&w.router, QUEUE).expect("queue bound");

    let sent_at = Instant::now();
    w.signal_nfqmark(libc::SIGTERM);
    let exit = load::wait_exit(nfqmark, Duration::from_secs(5));
    let stop_time = sent_at.elapsed();
    let unbound = lab::wait_for(Duration::from_secs(2), || !w.queue_bound(QUEUE));
    SAMPLER_STOP.store(true, Ordering::Relaxed);
    let samples = load::join(sampler).expect("sampler");
    let report = perf.finish().expect("dnsperf");
    let log = w.nfqmark_log();
    let counters = Counters::parse(&lab::last_counters(&log));
    let last = samples.last.unwrap_or_default();
    println!("before SIGTERM: {before}");
    println!(
        "SIGTERM -> exit {exit:?} after {stop_time:.3?}; sampler ({} samples, real-time {}): \
         last before unbind {last}, most waiting {}, queue gone {}",
        samples.samples, samples.realtime, samples.max_waiting, samples.gone
    );
    println!("nfqmark at exit: {}", counters.line());
    println!(
        "dnsperf: sent {}, completed {}, lost {}",
        report.sent, report.completed, report.lost
    );
    assert_eq!(
        exit,
        Some(Exit::Code(0)),
        "nfqmark did not exit 0 within 5 s of SIGTERM\n{log}"
    );
    assert!(stop_time < Duration::from_secs(5));
    assert!(
        log.contains(&format!("queue {QUEUE}: stopped")),
        "the log does not say the queue stopped:\n{log}"
    );
    assert!(unbound && samples.gone, "queue {QUEUE} is still bound");
    assert_eq!(
        last.waiting, 0,
        "packets were waiting when the queue went away: {last}\n{log}"
    );
    assert_eq!((last.queue_dropped, last.user_dropped), (0, 0), "{last}");
    // Every packet the kernel queued (each took an id) was decided. The sampler's last look
    // falls in the drain's quiet time (no new ids once the queue length is 0), so with it at
    // real-time priority and no ENOBUFS the ids and nfqmark's count must agree exactly.
    let packets = counters.get("packets");
    if samples.realtime && counters.get("enobufs") == 0 {
        assert_eq!(
            last.id_sequence, packets,
            "the kernel queued {} packets, nfqmark decided {packets}",
            last.id_sequence
        );
    } else {
        assert!(last.id_sequence <= packets, "{last}, {}", counters.line());
    }
    assert!(report.completed > 1000, "too little load:\n{}", report.text);
    assert_eq!(
        report.lost, 0,
        "queries lost around the stop:\n{}",
        report.text
    );
}

/// 50,000 unique queries with the upstream silent and `--capacity 2000`: the pairing tables
/// stay at their cap (oldest evicted) and memory does not grow with the flood.
#[test]
fn unique_query_flood_with_silent_upstream_stays_within_capacity() {
    if !common::require_root("capacity") {
        return;
    }
    const CAPACITY: u64 = 2000;
    let _turn = load_turn();
    let mut w = world("capacity", &["--capacity", "2000"]);
    w.start_nfqmark().expect("start nfqmark");
    w.start_resolver(Family::V4).expect("start the resolver");
    let nfqmark = pid(&w);
    let (counts, a, b) = round(&w, "warmup", 8);
    assert_eq!((a, b), (8, 8), "{counts}");
    let rss_before = load::rss_kib(nfqmark).expect("nfqmark's RSS");

    // The upstream host stops answering: queries leave the router (and are paired) but no
    // answer ever comes back, so every client query waits until evicted or expired.
    for tool in ["iptables", "ip6tables"] {
        for proto in ["udp", "tcp"] {
            w.upstream
                .exec(
                    tool,
                    &["-A", "INPUT", "-p", proto, "--dport", "53", "-j", "DROP"],
                )
                .expect("silence the upstream");
        }
    }
    let input = w.path("flood.txt");
    load::names_file(&input, "b-cap", 50_000).expect("write the dnsperf input");
    let started = Instant::now();
    let watching = AtomicBool::new(true);
    let (report, peak) = thread::scope(|s| {
        // The queue's peak backlog, for the report: at the queue's length (4096) the kernel
        // lets packets pass unseen (fail-open), which is allowed but worth knowing.
        let peak = s.spawn(|| {
            let mut peak = 0;
            let deadline = Instant::now() + Duration::from_secs(30);
            while watching.load(Ordering::Relaxed) && Instant::now() < deadline {
                if let Some(q) = load::proc_queue_of_pid(nfqmark, QUEUE) {
                    peak = peak.max(q.waiting);
                }
                thread::sleep(Duration::from_millis(5));
            }
            peak
        });
        let report = load::start_dnsperf(
            &w.b,
            lab::addr::ROUTER_B_V4,
            &input,
            &[
                "-n", "1", "-l", "12", "-Q", "5000", "-q", "10000", "-t", "1",
            ],
            &w.path("dnsperf.out"),
            Duration::from_secs(25),
        )
        .expect("start dnsperf")
        .finish();
        watching.store(false, Ordering::Relaxed);
        (report, peak.join().expect("peak thread"))
    });
    let report = report.expect("dnsperf");
    let took = started.elapsed();
    let counters = fresh_counters(&w);
    let rss_after = load::rss_kib(nfqmark).expect("nfqmark's RSS");
    let hwm = load::status_field(nfqmark, "VmHWM:").unwrap_or_default();
    println!(
        "dnsperf: sent {} in {took:.1?} (completed {}, lost {}); queue backlog peak {peak}",
        report.sent, report.completed, report.lost
    );
    println!("nfqmark: {}", counters.line());
    println!(
        "RSS before {rss_before} KiB, after {rss_after} KiB (growth {} KiB), peak {hwm}",
        rss_after.saturating_sub(rss_before)
    );
    assert!(
        load::wait_exit(nfqmark, Duration::ZERO).is_none(),
        "nfqmark died:\n{}",
        w.nfqmark_log()
    );
    assert!(report.sent >= 20_000, "too little load:\n{}", report.text);
    // One host may hold a quarter of the table (its share): the flood fills that share and
    // the rest is refused, so other clients' queries are never evicted by it.
    assert!(
        counters.get("client_queries") >= CAPACITY / 4,
        "the flood never filled its share of the table: {}",
        counters.line()
    );
    assert!(
        counters.get("over_quota") > 0,
        "the flood was never refused: {}",
        counters.line()
    );
    assert!(
        counters.get("waiting_clients") <= CAPACITY,
        "{}",
        counters.line()
    );
    assert!(
        counters.get("waiting_upstream") <= CAPACITY,
        "{}",
        counters.line()
    );
    assert!(
        rss_after.saturating_sub(rss_before) < 64 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
}

/// A wrapper that starts nfqmark as `nobody` with only CAP_NET_ADMIN, through setpriv.
fn unprivileged_wrapper(w: &World) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = w.path("nfqmark-nobody.sh");
    let script = format!(
        "#!/bin/sh\nexec setpriv --reuid=65534 --regid=65534 --clear-groups \
         --inh-caps=+net_admin --ambient-caps=+net_admin --bounding-set=-all,+net_admin \
         '{}' \"$@\"\n",
        common::nfqmark_bin().display()
    );
    std::fs::write(&path, script).expect("write the wrapper");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// `nfqmark run ...` in the router, bounded to 10 s.
fn run_in_router(w: &World, prefix: &[&str], args: &[&str]) -> load::Ran {
    let bin = common::nfqmark_bin();
    let mut cmd = w.router.command(prefix.first().copied().unwrap_or("env"));
    cmd.args(prefix.iter().skip(1))
        .arg(&bin)
        .arg("run")
        .args(args);
    load::run_bounded(cmd, Duration::from_secs(10)).expect("nfqmark should stop by itself")
}

/// As `nobody` with only CAP_NET_ADMIN nfqmark binds its queue and marks; without the
/// capability, on a queue already taken, or with an unknown interface in its rules it refuses
/// to start with status 2 and says why.
#[test]
fn runs_unprivileged_with_cap_net_admin_and_start_up_errors_say_why() {
    if !common::require_root("nobody") {
        return;
    }
    let mut w = world("nobody", &[]);
    w.options_mut().nfqmark = Some(unprivileged_wrapper(&w));
    w.start_nfqmark().expect("start nfqmark as nobody");
    w.start_resolver(Family::V4).expect("start the resolver");
    let nfqmark = pid(&w);
    let uid = load::status_field(nfqmark, "Uid:")
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let caps = load::status_field(nfqmark, "CapEff:").unwrap_or_default();
    println!("nfqmark as uid {uid}, CapEff {caps}");
    assert!(uid.split_whitespace().all(|u| u == "65534"), "uid {uid}");
    assert_eq!(
        u64::from_str_radix(&caps, 16).ok(),
        Some(1 << CAP_NET_ADMIN),
        "effective capabilities {caps}"
    );
    let (counts, a, b) = round(&w, "nobody", 8);
    println!("as nobody: {counts}; answered A {a}, B {b}");
    assert_eq!((a, b), (8, 8));
    assert_marked_round("as nobody", &counts, 8, &w.nfqmark_log());

    // No CAP_NET_ADMIN at all: refused, one line naming the capability.
    let other = (QUEUE + 1).to_string();
    let r = run_in_router(
        &w,
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ],
        &["--queue", &other],
    );
    println!("without CAP_NET_ADMIN: {} {:?}", r.status, r.stderr.trim());
    assert_eq!(r.status.code(), Some(2), "{r:?}");
    assert_eq!(
        r.stderr.trim().lines().count(),
        1,
        "one line: {:?}",
        r.stderr
    );
    assert!(r.stderr.contains("CAP_NET_ADMIN"), "{:?}", r.stderr);

    // The queue is held by the running nfqmark: a second one is told so.
    let queue = QUEUE.to_string();
    let r = run_in_router(&w, &[], &["--queue", &queue]);
    println!("queue taken: {} {:?}", r.status, r.stderr.trim());
    assert_eq!(r.status.code(), Some(2), "{r:?}");
    assert!(
        r.stderr.contains("already bound by another process"),
        "{:?}",
        r.stderr
    );

    // An interface that does not exist, with --strict-interfaces: FILE:LINE:COL, nothing
    // started. (Without it the rule loads and matches once the interface appears.)
    let rules = w.path("bad-iface.rules");
    let text = "hook prerouting iif nosuch0 proto udp dport 53 accept\ndefault accept\n";
    std::fs::write(&rules, text).expect("write rules");
    let col = text
        .lines()
        .next()
        .and_then(|l| l.find("nosuch0"))
        .expect("column")
        + 1;
    let r = run_in_router(
        &w,
        &[],
        &[
            "--queue",
            &other,
            "--strict-interfaces",
            "--rules",
            &rules.display().to_string(),
        ],
    );
    println!("unknown interface: {} {:?}", r.status, r.stderr.trim());
    assert_eq!(r.status.code(), Some(2), "{r:?}");
    let place = format!("{}:1:{col}:", rules.display());
    assert!(
        r.stderr.contains(&place) && r.stderr.contains("nosuch0"),
        "expected {place} naming the interface: {:?}",
        r.stderr
    );
    assert!(
        !w.queue_bound(QUEUE + 1),
        "a rejected start left queue {} bound",
        QUEUE + 1
    );
}

// ---------------------------------------------------------------------------------------------
// The metrics endpoint against a hostile local user; dead workers; edges of the command line.
// ---------------------------------------------------------------------------------------------

/// Threads of `pid` (entries of /proc/PID/task).
fn thread_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

/// The value of one sample line of a Prometheus page.
fn metric(page: &str, sample: &str) -> u64 {
    page.lines()
        .find_map(|l| l.strip_prefix(sample).map(str::trim))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {sample} in\n{page}"))
}

/// A shell script in the world's directory that runs nfqmark after `prelude` (shell lines).
fn wrapper(w: &World, name: &str, prelude: &str) -> std::path::PathBuf {
    let bin = format!("'{}'", common::nfqmark_bin().display());
    script(w, name, prelude, &bin)
}

/// A shell script in the world's directory: `prelude`, then exec `program` with its arguments.
fn script(w: &World, name: &str, prelude: &str, program: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = w.path(name);
    let script = format!("#!/bin/sh\n{prelude}\nexec {program} \"$@\"\n");
    std::fs::write(&path, script).expect("write the wrapper");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// What a client holding many idle connections to the metrics endpoint saw.
#[derive(Debug)]
struct Held {
    opened: usize,
    failed: usize,
}

/// Open `n` connections to the endpoint from inside the router and keep them idle, never
/// sending a byte, until `release` receives (or 30 s pass). Returns once all are open.
fn hold_idle_connections(
    w: &World,
    port: u16,
    n: usize,
) -> (
    std::sync::mpsc::Sender<()>,
    thread::JoinHandle<std::io::Result<Held>>,
) {
    let (ready_tx, ready) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let holder = load::spawn_in(&w.router, "idle-conns", move || {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut conns = Vec::with_capacity(n);
        let mut failed = 0;
        for _ in 0..n {
            match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
                Ok(c) => conns.push(c),
                Err(_) => failed += 1,
            }
        }
        let held = Held {
            opened: conns.len(),
            failed,
        };
        let _ = ready_tx.send(());
        let _ = released.recv_timeout(Duration::from_secs(30));
        drop(conns);
        Ok(held)
    })
    .expect("start the connection holder");
    ready
        .recv_timeout(Duration::from_secs(60))
        .expect("the holder opened its connections");
    (release, holder)
}

/// Send "GET /" and then `size` bytes more of request line to the endpoint from inside the
/// router, while reading the answer; returns (bytes sent, answer).
fn huge_request_line(w: &World, port: u16, size: usize) -> (usize, String) {
    use std::io::{Read, Write};
    let h = load::spawn_in(&w.router, "huge-request", move || {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut conn = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        conn.set_write_timeout(Some(Duration::from_secs(10)))?;
        let mut writer = conn.try_clone()?;
        let sender = thread::spawn(move || {
            let chunk = vec![b'a'; 64 * 1024];
            let mut sent = writer.write(b"GET /").unwrap_or(0);
            while sent < size {
                match writer.write(&chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => sent += n,
                }
            }
            sent
        });
        let mut answer = Vec::new();
        let _ = conn.read_to_end(&mut answer);
        let sent = sender.join().unwrap_or(0);
        Ok((sent, String::from_utf8_lossy(&answer).into_owned()))
    })
    .expect("start the sender");
    load::join(h).expect("huge request")
}

/// Wait until the endpoint answers `/health` with 200.
fn wait_healthy(w: &World, port: u16) -> bool {
    lab::wait_for(Duration::from_secs(5), || {
        w.router_http_get(port, "/health")
            .is_ok_and(|r| r.starts_with("HTTP/1.1 200"))
    })
}

/// 1,000 idle connections to `--metrics`: nfqmark's thread count stays where it was (one
/// server thread, a connection cap with the oldest idle connection closed to make room), a
/// scrape still answers, and the page counts the evicted connections. A 10 MB request line is
/// answered 431 without the process growing. The thread count before (at least main, signals,
/// metrics and one worker) and the eviction counter are the controls: the measurement sees
/// threads, and the idle connections really reached the server.
#[test]
fn metrics_endpoint_bounds_idle_connections_and_huge_requests() {
    if !common::require_root("metrics-dos") {
        return;
    }
    const PORT: u16 = 9131;
    const IDLE: usize = 1000;
    let _turn = load_turn();
    let mut w = world("mdos", &["--metrics", "9131"]);
    w.start_nfqmark().expect("start nfqmark");
    let nfqmark = pid(&w);
    assert!(wait_healthy(&w, PORT), "no /health:\n{}", w.nfqmark_log());
    let threads_before = thread_count(nfqmark);

    let (release, holder) = hold_idle_connections(&w, PORT, IDLE);
    let threads_during = thread_count(nfqmark);
    let scrape = w.router_http_get(PORT, "/metrics");
    let health = w.router_http_get(PORT, "/health");
    let _ = release.send(());
    let held = load::join(holder).expect("holder");
    println!(
        "{held:?}; nfqmark threads before {threads_before}, with {IDLE} idle connections \
         {threads_during}"
    );
    let scrape = scrape.expect("a scrape with the idle connections open");
    let health = health.expect("/health with the idle connections open");
    assert!(
        threads_before >= 4,
        "the thread count reads wrong: {threads_before}"
    );
    assert_eq!((held.opened, held.failed), (IDLE, 0), "{held:?}");
    assert!(threads_during < 50, "{threads_during} threads");
    assert!(scrape.starts_with("HTTP/1.1 200 OK\r\n"), "{scrape}");
    assert!(
        scrape.contains("nfqmark_packets_total{queue=\"11\"}"),
        "{scrape}"
    );
    let evicted = metric(
        &scrape,
        "nfqmark_metrics_connections_total{outcome=\"evicted\"}",
    );
    println!("evicted idle connections: {evicted}");
    assert!(evicted >= (IDLE - 64) as u64, "evicted {evicted}");
    assert!(health.starts_with("HTTP/1.1 200 OK\r\n"), "{health}");

    // Other methods and paths.
    for (request, status) in [("/nothing", "404"), ("/", "404")] {
        let r = w.router_http_get(PORT, request).expect("GET");
        assert!(
            r.starts_with(&format!("HTTP/1.1 {status} ")),
            "{request}: {r}"
        );
    }

    // A 10 MB request line.
    let rss_before = load::rss_kib(nfqmark).expect("RSS");
    let (sent, answer) = huge_request_line(&w, PORT, 10 << 20);
    let rss_after = load::rss_kib(nfqmark).expect("RSS");
    let hwm = load::status_field(nfqmark, "VmHWM:").unwrap_or_default();
    println!(
        "10 MB request line: sent {sent} bytes, answer {:?}; RSS {rss_before} -> {rss_after} KiB \
         (peak {hwm})",
        answer.lines().next().unwrap_or("")
    );
    assert!(sent >= 64 * 1024, "the request was not sent: {sent} bytes");
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    assert!(
        rss_after <= rss_before + 4 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    assert!(wait_healthy(&w, PORT), "no /health after the huge request");
    assert!(load::wait_exit(nfqmark, Duration::ZERO).is_none());
    let log = w.stop_nfqmark();
    assert!(!log.contains("panicked"), "{log}");
}

/// A pids cgroup (v1 `pids` hierarchy, or v2 with the pids controller) for one test, removed
/// on drop (after the processes in it are gone).
struct PidsCgroup(std::path::PathBuf);

impl PidsCgroup {
    fn new(tag: &str) -> Option<PidsCgroup> {
        let name = format!("nfqm-{}-{tag}", std::process::id());
        let v1 = std::path::Path::new("/sys/fs/cgroup/pids");
        let dir = if v1.join("cgroup.procs").exists() {
            v1.join(name)
        } else {
            let root = std::path::Path::new("/sys/fs/cgroup");
            let controllers = std::fs::read_to_string(root.join("cgroup.controllers")).ok()?;
            if !controllers.split_whitespace().any(|c| c == "pids") {
                return None;
            }
            let _ = std::fs::write(root.join("cgroup.subtree_control"), "+pids");
            root.join(name)
        };
        std::fs::create_dir(&dir).ok()?;
        let cg = PidsCgroup(dir);
        cg.0.join("pids.max").exists().then_some(cg)
    }

    fn set_max(&self, max: usize) {
        std::fs::write(self.0.join("pids.max"), max.to_string()).expect("write pids.max");
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.0.join(file))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// A shell line that moves the shell (which then execs nfqmark) into this cgroup. `ip netns
    /// exec` mounts a fresh /sys, without the cgroup file systems, so the write is done from
    /// this test process's mount namespace.
    fn enter_line(&self) -> String {
        format!(
            "nsenter --mount=/proc/{}/ns/mnt sh -c \"echo $$ > '{}'\" || exit 97",
            std::process::id(),
            self.0.join("cgroup.procs").display()
        )
    }
}

impl Drop for PidsCgroup {
    fn drop(&mut self) {
        let gone = lab::wait_for(Duration::from_secs(5), || {
            std::fs::remove_dir(&self.0).is_ok() || !self.0.exists()
        });
        if !gone {
            eprintln!("could not remove {}", self.0.display());
        }
    }
}

/// Under a tasks limit that leaves nfqmark no thread to spare (as systemd's TasksMax would),
/// 1,000 idle connections to the metrics endpoint change nothing: it keeps answering, and
/// SIGUSR1 and SIGHUP still work. Control: with one task fewer than it needs nfqmark does
/// not start, and says why in one line with status 2 (no panic).
#[test]
fn metrics_endpoint_keeps_serving_under_a_tasks_limit() {
    if !common::require_root("tasks") {
        return;
    }
    const PORT: u16 = 9132;
    // The cgroup outlives the world, so nfqmark is gone before it is removed.
    let Some(cg) = PidsCgroup::new("tasks") else {
        println!("tasks: SKIPPED: no pids cgroup controller on this machine");
        return;
    };
    let _turn = load_turn();
    let mut w = world("tasks", &[]);
    let rules = w.path("tasks.rules");
    std::fs::write(&rules, "default accept\n").expect("write rules");
    w.options_mut().nfqmark_args = vec![
        "--metrics".into(),
        PORT.to_string(),
        "--rules".into(),
        rules.display().to_string(),
    ];
    // main, signals, rules, metrics, the bypass counter and the worker of the one queue.
    const NEEDED: usize = 6;

    // Control: one task short. The queue below is not the world's, so nothing else is bound.
    cg.set_max(NEEDED - 1);
    let enter = wrapper(&w, "nfqmark-cgroup.sh", &cg.enter_line());
    let prefix = script(&w, "in-cgroup.sh", &cg.enter_line(), "");
    let other = (QUEUE + 1).to_string();
    let r = run_in_router(
        &w,
        &[&prefix.display().to_string()],
        &[
            "--queue",
            &other,
            "--metrics",
            "9133",
            "--rules",
            &rules.display().to_string(),
        ],
    );
    println!(
        "{} tasks allowed: {} {:?}",
        NEEDED - 1,
        r.status,
        r.stderr.trim()
    );
    assert_eq!(r.status.code(), Some(2), "{r:?}");
    assert!(
        r.stderr.contains("cannot start the queue-12 thread")
            && r.stderr
                .contains("nfqmark needs 6 threads with these options"),
        "{:?}",
        r.stderr
    );
    assert!(!r.stderr.contains("panicked"), "{:?}", r.stderr);
    assert!(
        !w.queue_bound(QUEUE + 1),
        "a failed start left queue 12 bound"
    );

    cg.set_max(NEEDED);
    w.options_mut().nfqmark = Some(enter);
    w.start_nfqmark().expect("start nfqmark in the cgroup");
    let nfqmark = pid(&w);
    assert!(wait_healthy(&w, PORT), "no /health:\n{}", w.nfqmark_log());
    let (current, max) = (cg.read("pids.current"), cg.read("pids.max"));
    println!(
        "cgroup {}: pids.current {current}, pids.max {max}",
        cg.0.display()
    );
    assert_eq!(
        current,
        NEEDED.to_string(),
        "nfqmark is not (all) in the cgroup"
    );
    assert_eq!(thread_count(nfqmark), NEEDED);
    // Fork/clone refusals so far (the control's); none may be added from here on.
    let events_before = cg.read("pids.events");

    let (release, holder) = hold_idle_connections(&w, PORT, 1000);
    let scrape = w.router_http_get(PORT, "/metrics");
    let counters_before = w.nfqmark_log().matches("packets=").count();
    w.signal_nfqmark(libc::SIGUSR1);
    let reported = w.wait_log("packets=", counters_before + 1, Duration::from_secs(3));
    std::fs::write(&rules, "proto tcp dport 25 accept\ndefault accept\n").expect("rules");
    w.signal_nfqmark(libc::SIGHUP);
    let reloaded = w.wait_log("reloaded", 1, Duration::from_secs(3));
    let _ = release.send(());
    let held = load::join(holder).expect("holder");
    let scrape = scrape.expect("a scrape under the tasks limit");
    let events = cg.read("pids.events");
    println!("{held:?}; pids.events before {events_before:?}, after {events:?}");
    assert_eq!(events, events_before, "something tried to start a task");
    assert_eq!((held.opened, held.failed), (1000, 0), "{held:?}");
    assert!(scrape.starts_with("HTTP/1.1 200 OK\r\n"), "{scrape}");
    assert!(reported, "no counters after SIGUSR1:\n{}", w.nfqmark_log());
    assert!(reloaded, "no reload after SIGHUP:\n{}", w.nfqmark_log());
    assert!(wait_healthy(&w, PORT), "no /health after the connections");
    assert_eq!(thread_count(nfqmark), NEEDED);
    let log = w.stop_nfqmark();
    assert!(!log.contains("panicked"), "{log}");
}

/// A worker whose socket fails for good takes the process down: exit status 2 and one line
/// naming the queue and the cause, so the service manager restarts it; meanwhile
/// `--queue-bypass` lets DNS through unmarked. The error is injected in the worker's receive
/// (debug builds only, `NFQMARK_INJECT_RECV_ERROR`, see src/fault.rs) and takes the path a real
/// one takes. Control: an injected ENOBUFS, which the kernel reports when the socket buffer
/// overflows, is counted and survived, and client A's queries stay marked.
#[test]
fn a_worker_killed_by_a_socket_error_exits_2_naming_the_queue() {
    if !common::require_root("dead-worker") {
        return;
    }
    let _turn = load_turn();
    let mut w = world("deadw", &[]);
    let survivable = wrapper(
        &w,
        "nfqmark-enobufs.sh",
        &format!("export NFQMARK_INJECT_RECV_ERROR={QUEUE}:ENOBUFS:1"),
    );
    w.options_mut().nfqmark = Some(survivable);
    w.start_nfqmark().expect("start nfqmark");
    w.start_resolver(Family::V4).expect("start the resolver");
    let nfqmark = pid(&w);
    let (counts, a, b) = round(&w, "enobufs", 8);
    let counters = fresh_counters(&w);
    println!(
        "after an injected ENOBUFS: {counts}; answered A {a}, B {b}; {}",
        counters.line()
    );
    assert_eq!((a, b), (8, 8));
    assert_marked_round("after ENOBUFS", &counts, 8, &w.nfqmark_log());
    assert_eq!(counters.get("enobufs"), 1, "{}", counters.line());
    assert!(load::wait_exit(nfqmark, Duration::ZERO).is_none());
    w.stop_nfqmark();

    let fatal = wrapper(
        &w,
        "nfqmark-ebadf.sh",
        &format!("export NFQMARK_INJECT_RECV_ERROR={QUEUE}:EBADF:1"),
    );
    w.options_mut().nfqmark = Some(fatal);
    w.start_nfqmark().expect("start nfqmark");
    let nfqmark = pid(&w);
    // Queries flow; the first receive after the first packet fails.
    w.sniffer.clear();
    let (counts, a, b) = round(&w, "ebadf", 8);
    let exit = load::wait_exit(nfqmark, Duration::from_secs(10));
    let log = w.nfqmark_log();
    println!("after an injected EBADF: exit {exit:?}; {counts}; answered A {a}, B {b}");
    let line = log
        .lines()
        .find(|l| l.contains("exiting with status 2"))
        .unwrap_or_default();
    println!("{line}");
    assert_eq!(exit, Some(Exit::Code(2)), "{log}");
    assert!(
        line.contains(&format!(
            "queue {QUEUE}: the worker stopped: receive failed: Bad file descriptor"
        )),
        "{log}"
    );
    assert_eq!(log.matches("exiting with status 2").count(), 1, "{log}");
    assert!(
        lab::wait_for(Duration::from_secs(3), || !w.queue_bound(QUEUE)),
        "queue {QUEUE} still bound"
    );
    // With the queue gone, --queue-bypass lets DNS through, unmarked.
    w.sniffer.clear();
    let (counts, a, b) = round(&w, "bypass", 8);
    println!("without nfqmark: {counts}; answered A {a}, B {b}");
    assert_eq!((a, b), (8, 8));
    assert_eq!(
        (
            counts.a_link1,
            counts.a_link2,
            counts.b_link1,
            counts.b_link2
        ),
        (8, 0, 8, 0),
        "{counts}"
    );
}

/// Durations out of range and rules paths that are not regular files stop the start with a
/// clear error and status 2 (no panic, nothing bound); a FIFO put in place of the rules file
/// is refused at SIGHUP without blocking, the old rules stay, and SIGTERM still stops nfqmark.
/// Controls: an in-range duration gets past the command line (to the next error, a missing
/// rules file), and a SIGHUP with a regular file reloads.
#[test]
fn bad_durations_and_rules_paths_are_refused_clearly() {
    if !common::require_root("edges") {
        return;
    }
    let mut w = world("edges", &[]);
    let other = (QUEUE + 1).to_string();
    let missing = w.path("missing.rules").display().to_string();
    for (option, value, says) in [
        (
            "--window",
            "99999999999999999999h",
            "longest allowed is 10m",
        ),
        ("--window", "11m", "longest allowed is 10m"),
        ("--window", "0s", "shortest allowed is 1ms"),
        (
            "--flow-ttl-max",
            "99999999999999999999h",
            "longest allowed is 168h",
        ),
        ("--flow-ttl-min", "1000000h", "longest allowed is 168h"),
        ("--window", "5 parsecs", "not a duration"),
    ] {
        let r = run_in_router(&w, &[], &["--queue", &other, option, value]);
        let first = r.stderr.lines().next().unwrap_or("");
        println!("{option} {value}: {} {first}", r.status);
        assert_eq!(r.status.code(), Some(2), "{r:?}");
        assert!(
            first.contains(&format!("for '{option} <DURATION>'")) && first.contains(says),
            "{r:?}"
        );
        assert!(!r.stderr.contains("panicked"), "{r:?}");
    }
    // Control: in range, the command line passes and the next check speaks.
    let r = run_in_router(
        &w,
        &[],
        &["--queue", &other, "--window", "10m", "--rules", &missing],
    );
    println!(
        "--window 10m, missing rules: {} {:?}",
        r.status,
        r.stderr.trim()
    );
    assert_eq!(r.status.code(), Some(2), "{r:?}");
    assert!(r.stderr.contains("cannot read the rules file"), "{r:?}");

    // A FIFO (nobody ever writes to it) and a device as the rules file.
    let fifo = w.path("fifo.rules");
    let c = std::ffi::CString::new(fifo.display().to_string()).expect("path");
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    let fifo_arg = fifo.display().to_string();
    for (path, says) in [
        (fifo_arg.as_str(), "is a FIFO"),
        ("/dev/zero", "is a device"),
    ] {
        let r = run_in_router(&w, &[], &["--queue", &other, "--rules", path]);
        println!("--rules {path}: {} {:?}", r.status, r.stderr.trim());
        assert_eq!(r.status.code(), Some(2), "{r:?}");
        assert!(
            r.stderr.contains(&format!(
                "{path}: the rules file {says}, not a regular file"
            )),
            "{r:?}"
        );
        let mut cmd = w
            .router
            .command(&common::nfqmark_bin().display().to_string());
        cmd.args(["check", path]);
        let r = load::run_bounded(cmd, Duration::from_secs(10)).expect("check stops");
        assert_eq!(r.status.code(), Some(1), "{r:?}");
        assert!(r.stderr.contains(says), "{r:?}");
    }
    assert!(!w.queue_bound(QUEUE + 1));

    // At SIGHUP: a good file first (control), then a FIFO in its place.
    let rules = w.path("live.rules");
    std::fs::write(&rules, "default accept\n").expect("write rules");
    w.options_mut().nfqmark_args = vec!["--rules".into(), rules.display().to_string()];
    w.start_nfqmark().expect("start nfqmark");
    let nfqmark = pid(&w);
    std::fs::write(&rules, "proto tcp dport 25 accept\ndefault accept\n").expect("rules");
    w.signal_nfqmark(libc::SIGHUP);
    assert!(
        w.wait_log("reloaded", 1, Duration::from_secs(3)),
        "{}",
        w.nfqmark_log()
    );
    std::fs::remove_file(&rules).expect("remove rules");
    std::fs::rename(&fifo, &rules).expect("a FIFO in its place");
    w.signal_nfqmark(libc::SIGHUP);
    let refused = w.wait_log(
        "the previous rules stay in force",
        1,
        Duration::from_secs(3),
    );
    w.signal_nfqmark(libc::SIGTERM);
    let exit = load::wait_exit(nfqmark, Duration::from_secs(5));
    let log = w.nfqmark_log();
    println!(
        "{}",
        log.lines()
            .filter(|l| l.contains("SIGHUP") || l.contains("FIFO"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(refused, "{log}");
    assert!(
        log.contains("the rules file is a FIFO, not a regular file"),
        "{log}"
    );
    assert_eq!(exit, Some(Exit::Code(0)), "{log}");
}

/// Sends `n` DNS queries from client B's namespace to the router's resolver address (the
/// answers do not matter: the packets only need to reach the queue rules).
fn send_queries_from_b(w: &World, label: &str, n: usize, gap: Duration) {
    let names = names(Client::B, label, n);
    let h = load::spawn_in(&w.b, "queries", move || {
        let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
        for (i, name) in names.iter().enumerate() {
            let q = nfqmark_testkit::dns_query(i as u16, name);
            sock.send_to(&q, (lab::addr::ROUTER_B_V4, 53))?;
            thread::sleep(gap);
        }
        Ok(())
    })
    .expect("start the sender");
    load::join(h).expect("send the queries");
}

/// Packets the kernel lets past a full queue (fail-open) are invisible in /proc; nfqmark counts
/// them from its NFQUEUE rules' own counters. Control: with nfqmark keeping up, the count stays
/// 0. Then nfqmark is stopped (SIGSTOP) so its queue (8 packets long) fills, and 200 more
/// queries pass unseen: the count rises by about that much, and a warning says so.
#[test]
fn packets_let_past_a_full_queue_are_counted_from_the_rules_counters() {
    const PORT: u16 = 9141;
    if !common::require_root("bypass") {
        return;
    }
    let _turn = load_turn();
    let mut w = world(
        "bypass",
        &["--queue-maxlen", "8", "--metrics", &PORT.to_string()],
    );
    w.start_nfqmark().expect("start nfqmark");
    w.start_resolver(Family::V4).expect("start the resolver");
    assert!(wait_healthy(&w, PORT), "no metrics endpoint");
    // Control: a few queries, one at a time so the short queue keeps up; all received. The
    // counters are read every 2 s.
    send_queries_from_b(&w, "bypass-control", 20, Duration::from_millis(20));
    thread::sleep(Duration::from_millis(2500));
    let page = w.router_http_get(PORT, "/metrics").expect("scrape");
    assert_eq!(metric(&page, "nfqmark_bypass_accounting"), 1, "{page}");
    let before = metric(&page, "nfqmark_bypassed_total");
    let saved = |tool: &str| {
        std::process::Command::new("ip")
            .args(["netns", "exec", w.router.name(), tool, "-c"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    assert_eq!(
        before,
        0,
        "nothing was let past yet:\n{page}\n{}\n{}",
        saved("iptables-save"),
        saved("ip6tables-save")
    );
    // nfqmark stops taking packets: the queue fills, the rest passes unseen.
    let nfq = pid(&w);
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(nfq as i32, libc::SIGSTOP) };
    send_queries_from_b(&w, "bypass-flood", 200, Duration::ZERO);
    thread::sleep(Duration::from_millis(300));
    // SAFETY: as above.
    unsafe { libc::kill(nfq as i32, libc::SIGCONT) };
    let mut after = 0;
    let deadline = Instant::now() + Duration::from_secs(8);
    while Instant::now() < deadline {
        thread::sleep(Duration::from_millis(500));
        let page = w.router_http_get(PORT, "/metrics").expect("scrape");
        after = metric(&page, "nfqmark_bypassed_total");
        if after >= 700 {
            break;
        }
    }
    println!("bypassed: {before} before, {after} after 200 queries against a stopped nfqmark");
    // Each of the 200 resolutions passes four queue rules (client query, upstream query,
    // upstream answer, answer to the client), all let past while nfqmark is stopped, but for
    // the 8 client queries that filled the queue: 4 x 192.
    assert!((700..=800).contains(&after), "bypassed {after}");
    assert!(
        w.wait_log("passed queue(s)", 1, Duration::from_secs(3)),
        "no warning:\n{}",
        w.nfqmark_log()
    );
}
