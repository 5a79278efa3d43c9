//! End to end: nfqmark as a daemon under stress and in trouble, in the lab's namespaces (see
//! `nfqmark::lab`): a flood of malformed DNS-port packets through the queue while real queries
//! flow, `kill -9` and SIGTERM under load, a flood of unique queries with the upstream silent
//! against a small `--capacity`, and running as an unprivileged user with only CAP_NET_ADMIN,
//! plus the start-up errors an operator meets first.
//!
//! What is asserted is correctness only: every queued packet got a verdict (the kernel's own
//! `/proc/net/netfilter/nfnetlink_queue` says so), answers keep coming, marks land where they
//! should, tables stay bounded. Timings and sizes are printed, never compared with a fast
//! machine's. Every load is bounded in count and in time. The tests that make load take turns
//! (one lock), because they share two cores with each other and with whatever else runs.

mod common;
#[path = "common/load.rs"]
mod load;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use load::{Counters, Exit, FloodLimits, FloodTarget, ProcQueue};
use nfqmark::lab::{self, Client, Family, LinkCounts, Options, Resolver, World};

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

    // An interface that does not exist: FILE:LINE:COL, nothing started.
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
        &["--queue", &other, "--rules", &rules.display().to_string()],
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
