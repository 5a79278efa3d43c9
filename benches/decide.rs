//! The decision path, per packet: `engine::decide` (IP/UDP/TCP parse, DNS header and question,
//! rules, pairing) on packets built with `nfqmark_testkit`, with no rules and with a generated
//! 1,000-rule file (`rules_1000`, mostly non-matching: it exercises the index, not the default).
//!
//! `cargo bench --bench decide` prints ns/packet, the median of several timed runs after a
//! warm-up, for each kind of packet. The four packets of one resolution (client query, the
//! resolver's upstream query, the upstream answer, the answer to the client) are timed as blocks
//! of `BATCH` packets of one kind, in that order, so every upstream query really pairs and every
//! answer really finds its entry; the table is back to empty after each cycle. Run without
//! `--bench` (as `cargo test --benches` does) it makes one short pass as a smoke test.
//!
//! Everything that touches nfqmark's API is in the `api` module below, so a change of signature
//! is fixed in one place. Goal (issue 6): at most 300 ns per DNS packet with 1,000 rules.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "benchmark code, never shipped: a step that fails ends the run, loudly and at once"
)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use nfqmark::types::{Hook, Meta};
use nfqmark_testkit as fixtures;

#[path = "common/rulegen.rs"]
mod rulegen;

/// Names per block: one block per packet kind per cycle.
const BATCH: usize = 1024;
/// The mark client A's queries carry (as in the lab and the generated rules).
const MARK_A: u32 = rulegen::MARK_A;

/// The few calls into nfqmark, kept together.
mod api {
    use std::sync::Mutex;
    use std::time::Instant;

    use nfqmark::engine::{Decision, EngineConfig, Tables};
    use nfqmark::flows::LearnConfig;
    use nfqmark::rules::RuleSet;
    use nfqmark::stats::Stats;
    use nfqmark::types::Meta;
    use nfqmark::worker;

    /// Everything the worker's decision reads besides the packet.
    pub struct Engine {
        config: EngineConfig,
        rules: RuleSet,
        tables: Mutex<Tables>,
        stats: Stats,
        prefilled: std::sync::atomic::AtomicBool,
    }

    impl Engine {
        pub fn new(rules: RuleSet) -> Engine {
            let config = EngineConfig::default();
            Engine {
                tables: Mutex::new(Tables::new(&config, LearnConfig::default())),
                config,
                rules,
                stats: Stats::default(),
                prefilled: Default::default(),
            }
        }

        pub fn prefilled(&self) -> bool {
            self.prefilled.load(std::sync::atomic::Ordering::Relaxed)
        }

        /// What a worker does per packet: plan, lock, apply, finish, count.
        #[inline]
        pub fn decide(&self, meta: &Meta, bytes: &[u8], now: Instant) -> Decision {
            let d = worker::decide_locked(
                &self.config,
                &self.rules,
                &self.tables,
                &self.stats.lock_waits,
                meta,
                bytes,
                now,
            );
            self.stats.count(&d);
            d
        }

        /// Fill the client table with `n` queries that are never answered, from 64 hosts (each
        /// within its quota), as a flood of unique names would.
        pub fn prefill(&self, n: usize, now: Instant) {
            self.prefilled
                .store(true, std::sync::atomic::Ordering::Relaxed);
            let m = Meta::new(nfqmark::types::Hook::Input, 0, 2, 0);
            for i in 0..n {
                let host = super::v4(198, 19, (i % 64) as u8, 1 + (i / 64 % 250) as u8);
                let q = nfqmark_testkit::udp(
                    host,
                    1024 + (i % 60_000) as u16,
                    super::v4(198, 18, 1, 1),
                    53,
                    &nfqmark_testkit::dns_query(i as u16, &format!("fill{i}.nfqm.example")),
                );
                self.decide(&m, &q, now);
            }
        }

        /// Attribute names from the start, as for a recursive resolver (issue 12): every client
        /// query registers its name and ancestors, every upstream answer is read for the names
        /// it points to.
        pub fn attributing(self) -> Engine {
            if let Ok(mut t) = self.tables.lock() {
                t.pairing.start_attributing();
            }
            self
        }

        /// Waiting entries left in the pairing table (0 after whole cycles).
        pub fn waiting(&self) -> usize {
            self.tables
                .lock()
                .map(|t| t.pairing.client_len() + t.pairing.upstream_len())
                .unwrap_or(usize::MAX)
        }
    }

    /// No rules: DNS pairing only.
    pub fn no_rules() -> RuleSet {
        RuleSet::empty()
    }

    /// Parse a rules file; the interfaces it names resolve to fixed indexes.
    pub fn parse_rules(text: &str) -> Result<RuleSet, String> {
        let ifaces = |name: &str| match name {
            "lan0" => Some(2),
            "wan0" => Some(3),
            "wan1" => Some(4),
            "guest0" => Some(5),
            _ => None,
        };
        RuleSet::parse(text, "bench-1000.rules", &ifaces).map_err(|diags| {
            diags
                .iter()
                .take(5)
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        })
    }

    pub fn rule_count(rules: &RuleSet) -> usize {
        rules.len()
    }
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn meta(hook: Hook, mark: u32, indev: u32, outdev: u32) -> Meta {
    Meta::new(hook, mark, indev, outdev)
}

/// 0x20: the resolver randomises the case of the name it sends upstream.
fn mixed_case(name: &str, seed: usize) -> String {
    name.chars()
        .enumerate()
        .map(|(i, c)| {
            if (i.wrapping_mul(31) ^ seed).is_multiple_of(3) {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

/// The four packets of `BATCH` resolutions, as the router sees them.
struct Cycle {
    client_query: Vec<Vec<u8>>,
    upstream_query: Vec<Vec<u8>>,
    upstream_answer: Vec<Vec<u8>>,
    client_answer: Vec<Vec<u8>>,
    /// One hostile host asking one name over and over (issue 13: each must cost O(1)).
    flood: Vec<Vec<u8>>,
}

impl Cycle {
    fn new() -> Cycle {
        let client = v4(198, 18, 1, 2);
        let router_lan = v4(198, 18, 1, 1);
        let router_wan = v4(198, 18, 3, 1);
        let upstream = v4(198, 18, 9, 53);
        let answer_addr = Ipv4Addr::new(198, 18, 9, 99);
        let mut c = Cycle {
            client_query: Vec::new(),
            upstream_query: Vec::new(),
            upstream_answer: Vec::new(),
            client_answer: Vec::new(),
            flood: Vec::new(),
        };
        let hostile = v4(198, 18, 2, 66);
        for i in 0..BATCH {
            let name = format!("www{i}.svc{}.nfqm.example", i % 37);
            let cport = 20_000 + i as u16;
            let cid = (i as u16).wrapping_mul(7919);
            let uport = 40_000 + i as u16;
            let uid = (i as u16).wrapping_mul(104_729_u32 as u16) ^ 0x5a5a;
            let upname = mixed_case(&name, i);
            c.client_query.push(fixtures::udp(
                client,
                cport,
                router_lan,
                53,
                &fixtures::dns_query(cid, &name),
            ));
            c.upstream_query.push(fixtures::udp(
                router_wan,
                uport,
                upstream,
                53,
                &fixtures::dns_query(uid, &upname),
            ));
            c.upstream_answer.push(fixtures::udp(
                upstream,
                53,
                router_wan,
                uport,
                &fixtures::dns_answer_a(uid, &upname, &[answer_addr]),
            ));
            c.client_answer.push(fixtures::udp(
                router_lan,
                53,
                client,
                cport,
                &fixtures::dns_answer_a(cid, &name, &[answer_addr]),
            ));
            c.flood.push(fixtures::udp(
                hostile,
                10_000 + i as u16,
                router_lan,
                53,
                &fixtures::dns_query(i as u16, "flood.nfqm.example"),
            ));
        }
        c
    }
}

/// Timings of one run, in total nanoseconds and packets per kind.
#[derive(Default, Clone, Copy)]
struct Tally {
    ns: u128,
    packets: u64,
}

impl Tally {
    fn per_packet(self) -> f64 {
        if self.packets == 0 {
            f64::NAN
        } else {
            self.ns as f64 / self.packets as f64
        }
    }
}

const KINDS: [&str; 7] = [
    "client query (in)",
    "upstream query (out, paired)",
    "upstream answer (in)",
    "answer to client (out)",
    "non-DNS TCP (forward)",
    "unparsable",
    "flood: one name, one host",
];

/// A simulated clock: 2 µs per packet, so entries age as under load (and never expire here).
struct Clock {
    base: Instant,
    us: u64,
}

impl Clock {
    fn tick(&mut self) -> Instant {
        self.us += 2;
        self.base + Duration::from_micros(self.us)
    }
}

/// CPU time of this thread, in ns. Blocks are timed with it rather than the wall clock: on a
/// small shared machine, time the thread spends preempted is not the decision's.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Time one block of packets of one kind.
fn block(
    engine: &api::Engine,
    m: &Meta,
    packets: &[Vec<u8>],
    clock: &mut Clock,
    tally: &mut Tally,
    check_marked: bool,
) {
    let now = clock.tick();
    let t = thread_cpu_ns();
    let mut marked = 0usize;
    for p in packets {
        let d = engine.decide(m, black_box(p), black_box(now));
        marked += usize::from(d.mark.is_some());
        black_box(d);
    }
    tally.ns += u128::from(thread_cpu_ns().saturating_sub(t));
    tally.packets += packets.len() as u64;
    if check_marked && marked != packets.len() {
        eprintln!(
            "warning: only {marked} of {} packets got the client's mark: pairing is not being \
             exercised as intended",
            packets.len()
        );
    }
}

/// One timed run: `cycles` resolution cycles plus as many non-DNS and unparsable packets.
fn run(
    engine: &api::Engine,
    cycle: &Cycle,
    other: &[Vec<u8>; 2],
    cycles: usize,
    clock: &mut Clock,
) -> [Tally; 7] {
    let mut t = [Tally::default(); 7];
    let cq = meta(Hook::Input, MARK_A, 2, 0);
    let uq = meta(Hook::Output, 0, 0, 3);
    let ua = meta(Hook::Input, 0, 3, 0);
    let ca = meta(Hook::Output, 0, 0, 2);
    let fwd = meta(Hook::Forward, 0, 2, 3);
    let cq0 = meta(Hook::Input, 0, 2, 0);
    let tcp = vec![other[0].clone(); BATCH];
    let bad = vec![other[1].clone(); BATCH];
    for n in 0..cycles {
        // The marked-ness check costs nothing measurable; do it on the first cycle only.
        let check = n == 0;
        block(engine, &cq, &cycle.client_query, clock, &mut t[0], false);
        block(engine, &uq, &cycle.upstream_query, clock, &mut t[1], check);
        block(engine, &ua, &cycle.upstream_answer, clock, &mut t[2], check);
        block(engine, &ca, &cycle.client_answer, clock, &mut t[3], false);
        block(engine, &fwd, &tcp, clock, &mut t[4], false);
        block(engine, &fwd, &bad, clock, &mut t[5], false);
        block(engine, &cq0, &cycle.flood, clock, &mut t[6], false);
    }
    t
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Medians (and min, max) per kind over `runs` runs of each engine, after a warm-up. The
/// engines take turns run by run, so a burst of other work on the machine hits them alike.
fn measure(
    engines: &[&api::Engine],
    runs: usize,
    cycles: usize,
    warmup: Duration,
) -> Vec<Vec<(f64, f64, f64)>> {
    let cycle = Cycle::new();
    let other = [
        fixtures::tcp(
            v4(198, 18, 1, 2),
            51_000,
            v4(203, 0, 113, 80),
            443,
            &[0x17; 200],
        ),
        // An IPv4 header cut short: what a broken or foreign packet looks like.
        fixtures::udp(v4(198, 18, 1, 2), 5, v4(198, 18, 1, 1), 53, b"x")[..12].to_vec(),
    ];
    let mut clocks: Vec<Clock> = engines
        .iter()
        .map(|_| Clock {
            base: Instant::now(),
            us: 0,
        })
        .collect();
    // Warm-up: caches, branch predictors, the table's allocations.
    for (engine, clock) in engines.iter().zip(clocks.iter_mut()) {
        let warm = Instant::now();
        while warm.elapsed() < warmup {
            run(engine, &cycle, &other, 1, clock);
        }
    }
    let mut all: Vec<Vec<[Tally; 7]>> = vec![Vec::new(); engines.len()];
    for _ in 0..runs {
        for ((engine, clock), out) in engines.iter().zip(clocks.iter_mut()).zip(all.iter_mut()) {
            out.push(run(engine, &cycle, &other, cycles, clock));
        }
    }
    for engine in engines.iter().filter(|e| !e.prefilled()) {
        // The flood's name keeps its share of entries (16) waiting, by design.
        if engine.waiting() > 16 {
            eprintln!(
                "warning: {} entries left in the pairing table after whole cycles",
                engine.waiting()
            );
        }
    }
    all.iter()
        .map(|runs| {
            (0..KINDS.len())
                .map(|k| {
                    let v: Vec<f64> = runs.iter().map(|t| t[k].per_packet()).collect();
                    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
                    let max = v.iter().copied().fold(0.0, f64::max);
                    (median(v), min, max)
                })
                .collect()
        })
        .collect()
}

/// Command-line options (after `cargo bench --bench decide --`).
struct Args {
    /// Set by cargo bench; without it (cargo test --benches) one short smoke pass.
    bench: bool,
    runs: usize,
    /// Only this configuration (0: no rules, 1: 1,000 rules, 2: 1,000 rules and a full
    /// table), for profiling one at a time.
    only: Option<usize>,
}

fn args() -> Args {
    let mut a = Args {
        bench: false,
        runs: 15,
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--bench" => a.bench = true,
            "--runs" => a.runs = it.next().and_then(|v| v.parse().ok()).unwrap_or(a.runs),
            "--only" => a.only = it.next().and_then(|v| v.parse().ok()),
            "-h" | "--help" => {
                println!(
                    "cargo bench --bench decide [-- --runs N (default 15)] [--only 0|1|2|3 \
                     (0 rules, 1,000 rules, 1,000 rules with a full table, 1,000 rules \
                     attributing names as for a recursive resolver)]"
                );
                std::process::exit(0);
            }
            // cargo passes filters and harness flags; ignore what we do not know.
            _ => {}
        }
    }
    a
}

fn main() {
    let args = args();
    // Under `cargo test --benches`: one short pass, to show it runs.
    let (runs, cycles) = if args.bench {
        (args.runs.max(1), 20)
    } else {
        (1, 1)
    };
    let loaded = match api::parse_rules(&rulegen::rules_text(1000)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("the generated 1,000-rule file does not parse:\n{e}");
            std::process::exit(1);
        }
    };
    let n_rules = api::rule_count(&loaded);
    let full = api::Engine::new(loaded.clone());
    let loaded_again = loaded.clone();
    // A full client table: every new client query evicts the oldest.
    full.prefill(if args.bench { 65_536 } else { 1024 }, Instant::now());
    let configs: Vec<(&str, api::Engine)> = vec![
        ("0 rules", api::Engine::new(api::no_rules())),
        ("1,000 rules", api::Engine::new(loaded)),
        ("1,000 rules, table full", full),
        (
            "1,000 rules, recursive",
            api::Engine::new(loaded_again).attributing(),
        ),
    ]
    .into_iter()
    .enumerate()
    .filter(|(i, _)| args.only.is_none_or(|o| o == *i))
    .map(|(_, c)| c)
    .collect();
    let engines: Vec<&api::Engine> = configs.iter().map(|(_, e)| e).collect();
    let warmup = Duration::from_millis(if args.bench { 300 } else { 10 });
    let results = measure(&engines, runs, cycles, warmup);
    if !args.bench {
        println!(
            "decide: smoke pass under `cargo test` (no figures); use cargo bench --bench decide"
        );
        return;
    }
    println!(
        "decide(): ns of thread CPU time per packet, median of {runs} runs of {} packets per kind (min-max); \
         rules file: {n_rules} rules",
        cycles * BATCH
    );
    print!("{:<30}", "packet");
    for (name, _) in &configs {
        print!("{name:>24}");
    }
    println!();
    for (k, kind) in KINDS.iter().enumerate() {
        print!("{kind:<30}");
        for r in &results {
            let (med, min, max) = r[k];
            print!("{:>24}", format!("{med:.0} ({min:.0}-{max:.0})"));
        }
        println!();
    }
    print!("{:<30}", "DNS mean (4 packets)");
    for r in &results {
        let mean = r[..4].iter().map(|x| x.0).sum::<f64>() / 4.0;
        print!("{:>24}", format!("{mean:.0}"));
    }
    println!();
    histogram_cost(runs);
    if let Some(((name, _), r)) = configs
        .iter()
        .zip(&results)
        .find(|((name, _), _)| name.starts_with("1,000"))
    {
        let worst = r[..4].iter().map(|x| x.0).fold(0.0, f64::max);
        println!(
            "goal: <= 300 ns per DNS packet with 1,000 rules: worst DNS kind with {name}: \
             {worst:.0} ns -> {}",
            if worst <= 300.0 { "met" } else { "NOT met" }
        );
    }
}

/// What the worker adds per packet for the decision-time histogram (`nfqmark_decision_seconds`):
/// `Stats::decision_time.sampled_since(now)` after each decision, `now` being the clock read the
/// decision needs anyway. Timed against that clock read alone, and against timing every packet.
fn histogram_cost(runs: usize) {
    let stats = nfqmark::stats::Stats::default();
    let n = 1_000_000u64;
    let per = |f: &dyn Fn()| {
        let t = thread_cpu_ns();
        for _ in 0..n {
            f();
        }
        thread_cpu_ns().saturating_sub(t) as f64 / n as f64
    };
    let (mut clock, mut sampled, mut every) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        clock.push(per(&|| {
            black_box(Instant::now());
        }));
        sampled.push(per(&|| {
            stats.decision_time.sampled_since(black_box(Instant::now()));
        }));
        every.push(per(&|| {
            stats
                .decision_time
                .observe(black_box(Instant::now()).elapsed());
        }));
    }
    let (clock, sampled, every) = (median(clock), median(sampled), median(every));
    println!(
        "decision-time histogram: +{:.1} ns per packet (1 in {} timed; the clock read alone: \
         {clock:.1} ns); timing every packet would add {:.1} ns",
        sampled - clock,
        nfqmark::stats::DECISION_SAMPLE,
        every - clock
    );
}
