//! End to end: a hostile host on the LAN (client B) replays the attacks of issue 13 against a
//! router running nfqmark in the lab (`nfqmark_lab`: real multi-WAN, NAT on each uplink):
//!
//! 1. forged DNS answers (spoofed as the router's resolver, and as a server whose answer is
//!    routed through) teach no flow mark, and a flood of them plus the client's own resolutions
//!    evicts nothing of client A's;
//! 2. a query with a wrong UDP checksum, which the resolver never receives, cannot take the
//!    pairing of client A's query of the same name;
//! 3. a flood of one name costs client A nothing: its upstream queries keep their mark, the
//!    question's waiting clients stay bounded, no packet is let past the queue;
//! 4. a flood of unique names fills only B's share of the pairing table (`over_quota`).
//!
//! No defence can be switched off, so every test has a control that shows the attack would
//! work where the defence does not apply: the same answer after a real query *is* learned, the
//! same query with a good checksum *is* paired (ambiguously), a real client's queries up to its
//! share *are* recorded. Figures are printed; nothing is timed. Every load is bounded in count
//! and time, and the tests take turns (they share two cores).

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

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use load::{AskLimits, Counters, QueryFlood, Shape};
use nfqmark_lab::{self as lab, Client, Family, LinkCounts, Options, Resolver, World, upstream};

/// One test at a time: the floods would otherwise share the two cores with another test's.
fn turn() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|p| p.into_inner())
}

fn v4(s: &str) -> Ipv4Addr {
    s.parse().expect("IPv4 address")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

/// A fresh counter line: ask with SIGUSR1 and wait for a new report in the log.
fn fresh_counters(w: &World) -> Counters {
    let before = w.nfqmark_log().matches("packets=").count();
    w.signal_nfqmark(libc::SIGUSR1);
    assert!(
        w.wait_log("packets=", before + 1, Duration::from_secs(3)),
        "nfqmark wrote no counters after SIGUSR1:\n{}",
        w.nfqmark_log()
    );
    Counters::parse(&lab::last_counters(&w.nfqmark_log()))
}

/// `after - before` for each named counter, as `name=delta` pairs.
fn deltas(before: &Counters, after: &Counters, names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("{n}={}", after.get(n).saturating_sub(before.get(n))))
        .collect::<Vec<_>>()
        .join(" ")
}

fn delta(before: &Counters, after: &Counters, name: &str) -> u64 {
    after.get(name).saturating_sub(before.get(name))
}

/// The value of one sample of a Prometheus page (`name{labels}` exactly as written).
fn metric(page: &str, sample: &str) -> u64 {
    page.lines()
        .find_map(|l| l.strip_prefix(sample).map(str::trim))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {sample} in\n{page}"))
}

/// CPU time nfqmark used so far (user + system), from `/proc/PID/stat` (clock ticks of 10 ms).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let ticks: u64 = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|t| t.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// The last `n` lines of nfqmark's log, for failure messages.
fn log_tail(w: &World, n: usize) -> String {
    let log = w.nfqmark_log();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The resolver stopped (SIGSTOP) while it lives: queries line up in its socket in the order
/// they arrive, so two clients' queries wait in nfqmark's table at once. Continued on drop,
/// also when the test fails.
struct Paused(Option<u32>);

impl Paused {
    fn new(w: &World) -> Paused {
        let pid = w.resolver_pid().expect("the resolver runs");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
        Paused(Some(pid))
    }

    fn resume(&mut self) {
        if let Some(pid) = self.0.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(pid as i32, libc::SIGCONT) };
        }
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        self.resume();
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Forged answers.
// ---------------------------------------------------------------------------------------------

/// Both clients' flows to what `*.video.nfqm.example` resolves to get 0x20/0xff (routed over
/// link 2), learned only from answers to their own queries.
const FLOW_RULES: &str = "\
flow src 198.18.1.0/24 names *.video.nfqm.example set-mark 0x20/0xff
flow src 198.18.2.0/24 names *.video.nfqm.example set-mark 0x20/0xff
default accept
";

const FLOW_QUEUE: u16 = 21;
const FLOW_METRICS: u16 = 9213;
const FLOW_CAPACITY: u64 = 100;
/// nfqmark's per-client bound on learned entries: an eighth of `--flow-capacity`.
const FLOW_PER_CLIENT: u64 = FLOW_CAPACITY / 8;

/// The router's firewall as `nfqmark setup --iptables --queue Q --flow-backend queue --rules RULES`
/// prints it, and
/// the flow mark routed over link 2.
fn flow_firewall(w: &World, rules: &Path) {
    let out = Command::new(common::nfqmark_bin())
        .args(["setup", "--iptables", "--queue", &FLOW_QUEUE.to_string()])
        // The learned table's bounds are nfqmark's own: the queue backend.
        .args(["--flow-backend", "queue"])
        .arg("--rules")
        .arg(rules)
        .output()
        .expect("run nfqmark setup");
    assert!(
        out.status.success(),
        "setup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    w.router_iptables_restore(Family::V4, &String::from_utf8_lossy(&out.stdout))
        .expect("load setup's rules");
    let table = lab::CHEAP_TABLE.to_string();
    w.router
        .ip(&["rule", "add", "fwmark", "0x20/0xff", "table", &table])
        .expect("ip rule");
}

/// Resolve `names` (type A) from `ns` at `server` with one dig run; returns dig's answer lines.
fn dig_all(w: &World, ns: &lab::netns::Netns, server: &str, names: &[String]) -> Vec<String> {
    let file = w.path(&format!("dig-{}-{}.txt", ns.name(), names.len()));
    let batch: String = names.iter().map(|n| format!("{n} A\n")).collect();
    std::fs::write(&file, batch).expect("write dig's batch");
    let out = ns
        .command("dig")
        .arg(format!("@{server}"))
        .args(["+short", "+tries=2", "+time=2", "-f"])
        .arg(&file)
        .output()
        .expect("dig");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .collect()
}

/// The name the lab's responder answers with `addr` (TTL `ttl`).
fn video_name(addr: Ipv4Addr, ttl: u32) -> String {
    let [a, b, c, d] = addr.octets();
    format!("ip-{a}-{b}-{c}-{d}.ttl-{ttl}.video.nfqm.example")
}

/// Where a forged answer claims to come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Forged {
    /// The router's own LAN address, port 53: the resolver's answer.
    AsResolver,
    /// The upstream server's address: an answer routed through the router.
    Routed,
}

/// Forged answers to client B, one per `(kind, addr)`, each naming `video_name(addr, 3600)`
/// with one A record `addr` of TTL 3600 and no query before it. Sent from B's own namespace as
/// Ethernet frames to the router's MAC, so they go through the router to B like a real answer
/// (B's own stack would deliver a packet to its own address locally).
fn forge_answers(w: &World, answers: &[(Forged, Ipv4Addr)]) -> usize {
    let router_mac = load::mac_address(&w.router, "cb").expect("router's MAC");
    let b_mac = load::mac_address(&w.b, "eth0").expect("B's MAC");
    let b = v4(lab::addr::B_V4);
    let frames: Vec<Vec<u8>> = answers
        .iter()
        .enumerate()
        .map(|(i, (kind, addr))| {
            let src = match kind {
                Forged::AsResolver => v4(lab::addr::ROUTER_B_V4),
                Forged::Routed => v4(lab::addr::UPSTREAM_V4),
            };
            let id = 0x5a00u16.wrapping_add(i as u16);
            let payload = load::dns_answer_ttl(id, &video_name(*addr, 3600), *addr, 3600)
                .expect("build the answer");
            let packet = load::udp4_packet(
                SocketAddrV4::new(src, 53),
                SocketAddrV4::new(b, 40_000 + i as u16),
                &payload,
                false,
                id,
            );
            load::ether_ipv4(router_mac, b_mac, &packet)
        })
        .collect();
    load::send_frames(&w.b, "eth0", frames, Duration::from_millis(1)).expect("send the frames")
}

/// Forged answers are never learned: B's connection to the forged address stays on its own
/// mark (link 1), whether the answer claims to come from the router's resolver or from a server
/// whose answer the router forwards. Control: after B really resolves the same name (at the
/// resolver, and at the server through the router), its connection is marked (link 2).
///
/// Then with `--flow-capacity 100` (so at most 12 entries per client): A resolves a name, B
/// forges 130 answers with TTL 3600 (none learned) and really resolves 130 names (12 learned
/// in all, the rest over its quota): A's entry is never evicted, and A's new flow there is
/// still marked.
#[test]
fn forged_answers_teach_no_flow_marks_and_evict_nothing_of_a() {
    if !common::require_root("hostile-forge") {
        return;
    }
    let _turn = turn();
    let mut options = Options::new(
        "hostile-forge",
        Resolver::Dnsmasq,
        Some(common::nfqmark_bin()),
    );
    options.queue = FLOW_QUEUE;
    options.queue_rules = false; // the rules `nfqmark setup --rules` prints instead
    options.marking = false; // only the flow rules mark
    let mut w = World::build(options).expect("build the lab");
    let rules = w.path("hostile.rules");
    std::fs::write(&rules, FLOW_RULES).expect("write the rules");
    w.options_mut().nfqmark_args = vec![
        "--rules".into(),
        rules.display().to_string(),
        "--flow-capacity".into(),
        FLOW_CAPACITY.to_string(),
        "--metrics".into(),
        FLOW_METRICS.to_string(),
    ];
    flow_firewall(&w, &rules);
    // The worst case for the routed forgery: no reverse-path filter on the router, so a packet
    // from B's side with the upstream server's address is forwarded (and queued in FORWARD)
    // instead of being dropped as a martian first.
    for key in ["all", "default", "cb"] {
        w.router
            .sysctl(&format!("net.ipv4.conf.{key}.rp_filter"), "0")
            .expect("rp_filter");
    }
    w.start_nfqmark().expect("start nfqmark");
    w.start_resolver(Family::V4).expect("start the resolver");
    assert!(
        lab::wait_for(Duration::from_secs(5), || {
            w.router_http_get(FLOW_METRICS, "/metrics").is_ok()
        }),
        "no metrics endpoint:\n{}",
        w.nfqmark_log()
    );
    let flows = |page: &str, outcome: &str| {
        metric(
            page,
            &format!("nfqmark_flows_total{{outcome=\"{outcome}\"}}"),
        )
    };
    let scrape = || {
        w.router_http_get(FLOW_METRICS, "/metrics")
            .expect("scrape the metrics")
    };

    // --- Part 1: one forged answer of each kind, then the control. ---
    let (by_resolver, by_server) = (v4("198.18.9.81"), v4("198.18.9.82"));
    let before = fresh_counters(&w);
    let page_before = scrape();
    let mut forged = Vec::new();
    for _ in 0..3 {
        forged.push((Forged::AsResolver, by_resolver));
        forged.push((Forged::Routed, by_server));
    }
    assert_eq!(forge_answers(&w, &forged), forged.len());
    thread::sleep(Duration::from_millis(200));
    let after = fresh_counters(&w);
    let page = scrape();
    println!(
        "6 forged answers (3 as the resolver, 3 routed): nfqmark {}; learned {} -> {}",
        deltas(&before, &after, &["packets", "dns", "flows_learned"]),
        flows(&page_before, "learned"),
        flows(&page, "learned")
    );
    // The routed ones reach the queue (FORWARD) and are read as DNS; the ones spoofed as the
    // router's own address are queued in PREROUTING (new flows from B's subnet) and then
    // dropped by the router as martians.
    assert_eq!(
        delta(&before, &after, "dns"),
        forged.len() as u64,
        "the forged answers did not all reach nfqmark: {}\n{}",
        deltas(&before, &after, &["packets", "dns"]),
        log_tail(&w, 20)
    );
    assert_eq!(
        flows(&page, "learned"),
        flows(&page_before, "learned"),
        "a forged answer was learned\n{page}"
    );
    let b_forged_resolver = w
        .connect_to(Client::B, IpAddr::V4(by_resolver), 80)
        .expect("B connects");
    let b_forged_server = w
        .connect_to(Client::B, IpAddr::V4(by_server), 80)
        .expect("B connects");

    // Control: the same names, really resolved by B (at the resolver; at the server, routed).
    let got = dig_all(
        &w,
        &w.b,
        lab::addr::ROUTER_B_V4,
        &[video_name(by_resolver, 3600)],
    );
    assert_eq!(got, vec![by_resolver.to_string()], "B's resolution");
    let got = dig_all(
        &w,
        &w.b,
        lab::addr::UPSTREAM_V4,
        &[video_name(by_server, 3600)],
    );
    assert_eq!(got, vec![by_server.to_string()], "B's routed resolution");
    let b_real_resolver = w
        .connect_to(Client::B, IpAddr::V4(by_resolver), 80)
        .expect("B connects");
    let b_real_server = w
        .connect_to(Client::B, IpAddr::V4(by_server), 80)
        .expect("B connects");
    let page = scrape();
    let learned_part1 = flows(&page, "learned");

    // --- Part 2: A's entry against B's forged flood and B's own resolutions. ---
    let a_addr = v4("198.18.9.90");
    let got = dig_all(
        &w,
        &w.a,
        lab::addr::ROUTER_A_V4,
        &[video_name(a_addr, 3600)],
    );
    assert_eq!(got, vec![a_addr.to_string()], "A's resolution");
    let page_a = scrape();
    let entries_a = metric(&page_a, "nfqmark_flows_entries");
    const FLOOD: u8 = 130;
    let flood_addrs: Vec<Ipv4Addr> = (0..FLOOD)
        .map(|k| Ipv4Addr::new(198, 18, 9, 100 + k))
        .collect();
    let forged: Vec<(Forged, Ipv4Addr)> = flood_addrs
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let kind = if i % 2 == 0 {
                Forged::Routed
            } else {
                Forged::AsResolver
            };
            (kind, *a)
        })
        .collect();
    let before = fresh_counters(&w);
    assert_eq!(forge_answers(&w, &forged), forged.len());
    thread::sleep(Duration::from_millis(200));
    let after = fresh_counters(&w);
    let page_forged = scrape();
    println!(
        "{FLOOD} forged answers with TTL 3600: nfqmark {}; entries {} -> {}, learned {} -> {}, \
         evicted {}",
        deltas(&before, &after, &["packets", "dns"]),
        entries_a,
        metric(&page_forged, "nfqmark_flows_entries"),
        flows(&page_a, "learned"),
        flows(&page_forged, "learned"),
        flows(&page_forged, "evicted"),
    );
    assert_eq!(
        delta(&before, &after, "dns"),
        forged.len() as u64,
        "the forged answers did not all reach nfqmark: {}",
        after.line()
    );
    let b_forged_flood = w
        .connect_to(Client::B, IpAddr::V4(flood_addrs[0]), 80)
        .expect("B connects");
    // B really resolves the same 130 names: learned up to its share, the rest over quota.
    let names: Vec<String> = flood_addrs.iter().map(|a| video_name(*a, 3600)).collect();
    let got = dig_all(&w, &w.b, lab::addr::ROUTER_B_V4, &names);
    assert_eq!(got.len(), names.len(), "B's resolutions: {got:?}");
    let page_b = scrape();
    let a_after = w
        .connect_to(Client::A, IpAddr::V4(a_addr), 80)
        .expect("A connects");
    thread::sleep(Duration::from_millis(200));
    let page_end = scrape();
    println!(
        "B resolved {FLOOD} names: entries {}, learned {} (A 1, B's earlier {}), over_quota {}, \
         evicted {}, flow_marked {}",
        metric(&page_b, "nfqmark_flows_entries"),
        flows(&page_b, "learned"),
        learned_part1,
        flows(&page_b, "over_quota"),
        flows(&page_b, "evicted"),
        flows(&page_end, "flow_marked"),
    );

    let results = [
        (
            "B tcp after an answer forged as the resolver",
            &b_forged_resolver,
            "link1",
        ),
        (
            "B tcp after a forged routed answer",
            &b_forged_server,
            "link1",
        ),
        (
            "B tcp after resolving at the resolver (control)",
            &b_real_resolver,
            "link2",
        ),
        (
            "B tcp after resolving at the server, routed (control)",
            &b_real_server,
            "link2",
        ),
        ("B tcp after 130 forged answers", &b_forged_flood, "link1"),
        ("A tcp after B's flood (A's entry kept)", &a_after, "link2"),
    ];
    let log = w.stop_nfqmark();
    let mut failures = Vec::new();
    for (what, flow, want) in results {
        let seen = w.flow_links(flow);
        println!("{what}: {seen:?}");
        if seen.is_empty() || seen.iter().any(|l| l != want) {
            failures.push(format!("{what}: seen on {seen:?}, expected {want}"));
        }
    }
    assert!(failures.is_empty(), "{}\n{log}", failures.join("\n"));
    // Numbers: nothing forged was learned, B holds its share only, nothing was evicted.
    assert_eq!(learned_part1, 2, "B's two real resolutions\n{page}");
    assert_eq!(entries_a, 3, "B's two entries and A's\n{page_a}");
    assert_eq!(
        metric(&page_forged, "nfqmark_flows_entries"),
        entries_a,
        "forged answers made entries\n{page_forged}"
    );
    assert_eq!(
        flows(&page_forged, "learned"),
        flows(&page_a, "learned"),
        "forged answers were learned\n{page_forged}"
    );
    assert_eq!(
        metric(&page_b, "nfqmark_flows_entries"),
        1 + FLOW_PER_CLIENT,
        "A's entry and B's share\n{page_b}"
    );
    assert_eq!(
        flows(&page_b, "over_quota"),
        u64::from(FLOOD) - (FLOW_PER_CLIENT - 2),
        "B's resolutions past its share\n{page_b}"
    );
    assert_eq!(flows(&page_b, "evicted"), 0, "{page_b}");
}

// ---------------------------------------------------------------------------------------------
// 2. A query with a wrong checksum.
// ---------------------------------------------------------------------------------------------

const CSUM_QUEUE: u16 = 22;
const CSUM_ROUNDS: usize = 5;

/// One round: the resolver paused, B sends `copies` queries for `name` (raw socket, checksum
/// good or bad), A asks `name`; once nfqmark has recorded `recorded` client queries more, the
/// resolver continues. Returns whether A got its answer.
fn checksum_round(
    w: &World,
    name: &str,
    round: usize,
    bad: bool,
    copies: usize,
    recorded: u64,
) -> bool {
    let mut paused = Paused::new(w);
    let before = fresh_counters(w);
    let query = load::dns_query_a(0x7100 + round as u16, name).expect("B's query");
    let packet = load::udp4_packet(
        SocketAddrV4::new(v4(lab::addr::B_V4), 31_000 + round as u16),
        SocketAddrV4::new(v4(lab::addr::ROUTER_B_V4), 53),
        &query,
        bad,
        0x7100 + round as u16,
    );
    assert_eq!(load::udp4_checksum_ok(&packet), !bad);
    let packets = vec![packet; copies];
    assert_eq!(
        load::send_ipv4(&w.b, packets, Duration::from_millis(20)).expect("B sends"),
        copies
    );
    let server = SocketAddr::new(ip(lab::addr::ROUTER_A_V4), 53);
    let limits = AskLimits {
        timeout: Duration::from_secs(3),
        tries: 1,
        ..AskLimits::default()
    };
    thread::scope(|s| {
        let a = s.spawn(|| {
            load::ask(
                &w.a,
                server,
                &[name.to_string()],
                IpAddr::V4(upstream::ANSWER_V4),
                Shape::Udp,
                limits,
            )
        });
        // Both queries are in nfqmark's hands (the resolver still sleeps) before it goes on.
        let lined_up = lab::wait_for(Duration::from_secs(3), || {
            delta(&before, &fresh_counters(w), "client_queries") >= recorded
        });
        paused.resume();
        let asked = a.join().expect("A's thread").expect("A asks");
        assert!(
            lined_up,
            "nfqmark did not record A's query:\n{}",
            log_tail(w, 10)
        );
        asked.answered == 1
    })
}

/// B sends a query with a wrong UDP checksum (three times) for the name A asks next, while the
/// resolver is paused so both wait at once: the socket drops B's, nfqmark records it nowhere,
/// and A's upstream query leaves marked over link 2, 5 of 5 (`bad_checksums` counts B's).
/// Control: the same query with a good checksum is received by the resolver first, and the
/// documented policy gives the upstream query to the oldest waiting client, B: counted in
/// `ambiguous`, over link 1.
#[test]
fn bad_checksum_query_from_b_cannot_take_a_s_pairing() {
    if !common::require_root("hostile-csum") {
        return;
    }
    let _turn = turn();
    let mut options = Options::new(
        "hostile-csum",
        Resolver::Dnsmasq,
        Some(common::nfqmark_bin()),
    );
    options.queue = CSUM_QUEUE;
    let mut w = World::build(options).expect("build the lab");
    w.start_nfqmark().expect("start nfqmark");
    w.start_resolver(Family::V4).expect("start the resolver");

    let run = |label: &str, bad: bool, copies: usize, recorded: u64| {
        let before = fresh_counters(&w);
        let mut answered = 0;
        for i in 0..CSUM_ROUNDS {
            let name = format!("a-{i}-{label}.nfqm.example");
            if checksum_round(&w, &name, i, bad, copies, recorded) {
                answered += 1;
            }
        }
        thread::sleep(Duration::from_millis(300));
        let after = fresh_counters(&w);
        let counts = LinkCounts::from_sniffer(&w.sniffer, label);
        println!(
            "{label}: A answered {answered}/{CSUM_ROUNDS}; upstream {counts}; nfqmark {}",
            deltas(
                &before,
                &after,
                &[
                    "client_queries",
                    "bad_checksums",
                    "paired",
                    "ambiguous",
                    "unpaired"
                ]
            )
        );
        (answered, counts, before, after)
    };

    let (answered, counts, before, after) = run("csumbad", true, 3, 1);
    let (c_answered, c_counts, c_before, c_after) = run("csumgood", false, 1, 2);
    let log = w.stop_nfqmark();
    let tail: String = log.lines().rev().take(20).collect::<Vec<_>>().join("\n");

    // Control first: with a good checksum, B's query is received and holds the question.
    assert_eq!(c_answered, CSUM_ROUNDS, "control: A's answers\n{tail}");
    assert_eq!(
        delta(&c_before, &c_after, "client_queries"),
        2 * CSUM_ROUNDS as u64,
        "control: both clients' queries recorded\n{tail}"
    );
    assert_eq!(
        delta(&c_before, &c_after, "ambiguous"),
        CSUM_ROUNDS as u64,
        "control: each upstream query found both clients waiting\n{tail}"
    );
    assert_eq!(
        (c_counts.a_link1, c_counts.a_link2),
        (CSUM_ROUNDS, 0),
        "control: the oldest waiting client (B) took each upstream query: {c_counts}\n{tail}"
    );
    // The attack: B's queries with a bad checksum are counted and recorded nowhere.
    assert_eq!(answered, CSUM_ROUNDS, "A's answers\n{tail}");
    assert_eq!(
        delta(&before, &after, "bad_checksums"),
        3 * CSUM_ROUNDS as u64,
        "B's queries with a bad checksum\n{tail}"
    );
    assert_eq!(
        delta(&before, &after, "client_queries"),
        CSUM_ROUNDS as u64,
        "only A's queries recorded\n{tail}"
    );
    assert_eq!(delta(&before, &after, "ambiguous"), 0, "{tail}");
    assert!(
        counts.exact(CSUM_ROUNDS, 0),
        "A's upstream queries: {counts} (expected {CSUM_ROUNDS} via link2)\n{tail}"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. and 4. Floods.
// ---------------------------------------------------------------------------------------------

/// A's 25 names and its limits while B floods.
const A_NAMES: usize = 25;

fn a_names(label: &str) -> Vec<String> {
    (0..A_NAMES)
        .map(|i| format!("a-{i}-{label}.nfqm.example"))
        .collect()
}

fn a_limits() -> AskLimits {
    AskLimits {
        timeout: Duration::from_secs(2),
        tries: 3,
        window: 5,
        ..AskLimits::default()
    }
}

/// The queue's largest backlog while `running`, sampled every 5 ms (at most `limit`).
fn backlog_peak(pid: u32, queue: u16, running: &AtomicBool, limit: Duration) -> u64 {
    let mut peak = 0;
    let deadline = Instant::now() + limit;
    while running.load(Ordering::Relaxed) && Instant::now() < deadline {
        if let Some(q) = load::proc_queue_of_pid(pid, queue) {
            peak = peak.max(q.waiting);
        }
        thread::sleep(Duration::from_millis(5));
    }
    peak
}

/// The kernel's own counts for queue `queue`: (packets nfqmark's NFQUEUE rules saw, packets the
/// kernel queued), read while nothing flows through the queue (two equal readings 200 ms apart,
/// at most 10 s), so that the two are of the same packets.
fn kernel_counts(w: &World, pid: u32, queue: u16) -> (u64, u64) {
    let read = || {
        let ids = load::proc_queue_of_pid(pid, queue).map_or(0, |q| q.id_sequence);
        let rules = load::queue_rule_packets(&w.router, queue).expect("iptables-save");
        (rules, ids)
    };
    let mut last = read();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        thread::sleep(Duration::from_millis(200));
        let now = read();
        if now == last {
            break;
        }
        last = now;
    }
    last
}

/// Packets the kernel let past the queue (fail-open, or nobody bound) between two
/// [`kernel_counts`]: what the rules saw and the queue never got.
fn let_past(before: (u64, u64), after: (u64, u64)) -> u64 {
    (after.0 - before.0).saturating_sub(after.1 - before.1)
}

const ONE_NAME_QUEUE: u16 = 23;
const ONE_NAME: &str = "b-onename.nfqm.example";
const ONE_NAME_FLOOD: u64 = 120_000;
/// `--queue-maxlen` with room for every packet of a flood here (the one-name flood queues about
/// two per query): the kernel never lets one past unseen, so the tests are about nfqmark, not
/// the queue's length. (With the default 4,096 and a debug build, the one-name flood filled
/// the queue and 199 packets were let past in one run.)
const ROOMY_MAXLEN: &str = "262144";

/// The flood tests' lab: dnsmasq on `queue`, nfqmark with room in the queue for the whole flood
/// (`ROOMY_MAXLEN`) and `extra` arguments, both started (IPv4).
fn flood_lab(tag: &str, queue: u16, extra: &[String]) -> World {
    let mut options = Options::new(tag, Resolver::Dnsmasq, Some(common::nfqmark_bin()));
    options.queue = queue;
    options.nfqmark_args = extra.to_vec();
    options
        .nfqmark_args
        .extend(["--queue-maxlen".into(), ROOMY_MAXLEN.into()]);
    let mut w = World::build(options).expect("build the lab");
    w.start_nfqmark().expect("start nfqmark");
    w.start_resolver(Family::V4).expect("start the resolver");
    w
}

/// B floods one name (120,000 queries at up to 15,000/s) while A asks 25 names of its own and
/// the flooded one: A's 25 upstream queries all leave over link 2, the flooded question's
/// waiting clients stay within its bound (B's oldest evicted), and no packet passes the queue
/// unseen (by the kernel's counts: the queue rules' packets against the queue's ids; with
/// `--queue-maxlen` large enough for the whole flood).
#[test]
fn one_name_flood_from_b_leaves_a_s_queries_marked() {
    if !common::require_root("hostile-onename") {
        return;
    }
    let _turn = turn();
    let w = flood_lab("hostile-onename", ONE_NAME_QUEUE, &[]);
    let nfqmark = w.nfqmark_pid().expect("nfqmark runs");
    let queue_before = load::proc_queue_of_pid(nfqmark, ONE_NAME_QUEUE).expect("queue bound");
    let kernel_before = kernel_counts(&w, nfqmark, ONE_NAME_QUEUE);
    let before = fresh_counters(&w);
    let cpu_before = cpu_time(nfqmark);
    let flooding = AtomicBool::new(true);
    let server_b = SocketAddr::new(ip(lab::addr::ROUTER_B_V4), 53);
    let server_a = SocketAddr::new(ip(lab::addr::ROUTER_A_V4), 53);
    let mut names = a_names("onename");
    names.push(ONE_NAME.to_string());
    let (flood, asked, peak) = thread::scope(|s| {
        let flood = s.spawn(|| {
            let r = load::query_flood(
                &w.b,
                QueryFlood {
                    server: server_b,
                    queries: ONE_NAME_FLOOD,
                    rate: 15_000,
                    time: Duration::from_secs(12),
                },
                |_| ONE_NAME.to_string(),
            );
            flooding.store(false, Ordering::Relaxed);
            r
        });
        let peak =
            s.spawn(|| backlog_peak(nfqmark, ONE_NAME_QUEUE, &flooding, Duration::from_secs(20)));
        // A asks once the flood is well under way (the kernel has queued 20,000 packets).
        let under_way = lab::wait_for(Duration::from_secs(5), || {
            load::proc_queue_of_pid(nfqmark, ONE_NAME_QUEUE)
                .is_some_and(|q| q.id_sequence >= queue_before.id_sequence + 20_000)
        });
        let asked = load::ask(
            &w.a,
            server_a,
            &names,
            IpAddr::V4(upstream::ANSWER_V4),
            Shape::Udp,
            a_limits(),
        );
        let still_flooding = flooding.load(Ordering::Relaxed);
        (
            flood.join().expect("flood thread"),
            (asked, under_way, still_flooding),
            peak.join().expect("peak thread"),
        )
    });
    let flood = flood.expect("the flood");
    let (asked, under_way, still_flooding) = asked;
    let asked = asked.expect("A asks");
    // Every queued packet gets its verdict before the counters are read.
    lab::wait_for(Duration::from_secs(10), || {
        load::proc_queue_of_pid(nfqmark, ONE_NAME_QUEUE).is_some_and(|q| q.waiting == 0)
    });
    thread::sleep(Duration::from_millis(300));
    let after = fresh_counters(&w);
    let cpu = cpu_time(nfqmark).saturating_sub(cpu_before);
    let queue_after = load::proc_queue_of_pid(nfqmark, ONE_NAME_QUEUE).expect("queue bound");
    let counts = LinkCounts::from_sniffer(&w.sniffer, "-onename");
    let flooded: Vec<_> = w
        .sniffer
        .seen()
        .into_iter()
        .filter(|s| s.name == ONE_NAME)
        .collect();
    let flooded_link2 = flooded.iter().filter(|s| s.link == "link2").count();
    let kernel_after = kernel_counts(&w, nfqmark, ONE_NAME_QUEUE);
    let passed = let_past(kernel_before, kernel_after);
    // nfqmark reads the rules' counters every 2 s: give it one more round.
    thread::sleep(Duration::from_millis(2200));
    let end = fresh_counters(&w);
    println!(
        "B's flood: {flood}; A asked during it: {under_way}, still flooding after: {still_flooding}"
    );
    println!(
        "A: {asked}; upstream {counts}; the flooded name upstream {} times ({flooded_link2} via link2)",
        flooded.len()
    );
    println!(
        "kernel queued {} packets, backlog peak {peak}; nfqmark CPU {cpu:.2?}",
        queue_after.id_sequence - queue_before.id_sequence
    );
    println!(
        "nfqmark: {}; waiting_clients={}; let past the queue: {passed} by the kernel's counts, \
         {} by nfqmark's bypassed",
        deltas(
            &before,
            &after,
            &[
                "packets",
                "client_queries",
                "over_quota",
                "paired",
                "ambiguous",
                "unpaired",
                "client_answers",
                "evicted",
                "expired",
                "enobufs",
            ]
        ),
        after.get("waiting_clients"),
        delta(&before, &end, "bypassed"),
    );
    let tail = log_tail(&w, 20);
    assert!(
        load::wait_exit(nfqmark, Duration::ZERO).is_none(),
        "nfqmark died:\n{tail}"
    );
    assert!(
        flood.sent >= ONE_NAME_FLOOD / 2,
        "the flood sent too little: {flood}"
    );
    assert!(under_way, "the flood never got under way: {flood}");
    assert_eq!(asked.answered, names.len(), "A's answers: {asked}\n{tail}");
    assert!(
        counts.a_link2 == A_NAMES && counts.a_link1 == 0 && counts.dropped() == 0,
        "A's upstream queries: {counts} (expected {A_NAMES} via link2)\n{tail}"
    );
    assert_eq!(
        passed, 0,
        "the kernel let packets past the queue: {kernel_before:?} -> {kernel_after:?}\n{tail}"
    );
    assert_eq!(delta(&before, &after, "enobufs"), 0, "{tail}");
    // The flooded question holds at most 16 waiting clients: every other query B's flood left
    // recorded was evicted (B's own oldest) or answered.
    let recorded = delta(&before, &after, "client_queries");
    let gone = delta(&before, &after, "evicted")
        + delta(&before, &after, "client_answers")
        + delta(&before, &after, "expired");
    assert!(
        recorded >= ONE_NAME_FLOOD / 4,
        "the flood was not recorded: {}",
        after.line()
    );
    assert!(
        after.get("waiting_clients") <= 16,
        "more than the question's share waits: {}",
        after.line()
    );
    assert!(
        recorded.saturating_sub(gone) <= 16 + names.len() as u64,
        "more than the question's share still waits: recorded {recorded}, gone {gone}\n{}",
        after.line()
    );
}

const UNIQUE_QUEUE: u16 = 24;
const UNIQUE_CAPACITY: u64 = 2000;
/// One host's share of the pairing table: a quarter of `--capacity`.
const UNIQUE_SHARE: u64 = UNIQUE_CAPACITY / 4;

/// B floods unique names that the upstream never answers (15,000 at up to 5,000/s, within a
/// window of 30 s), so each recorded query waits its whole window: B fills its quarter of the
/// table (exactly 500 recorded) and the rest is refused (`over_quota`); A's 25 queries during
/// the flood are recorded and leave over link 2, and nothing is evicted. Control: B's first
/// 500 queries are recorded, as any client's are.
#[test]
fn unique_name_flood_from_b_stays_within_its_share() {
    if !common::require_root("hostile-unique") {
        return;
    }
    let _turn = turn();
    // A window longer than the flood's time bound: no entry of B's expires during the flood,
    // so what B holds at the end is exactly what it was let hold. The queue has room for the
    // whole flood: every query of B's reaches nfqmark, so what it refused is exactly what B
    // sent past its share.
    let extra = [
        "--capacity".to_string(),
        UNIQUE_CAPACITY.to_string(),
        "--window".into(),
        "30s".into(),
    ];
    let w = flood_lab("hostile-unique", UNIQUE_QUEUE, &extra);
    // The upstream host never answers B's flood (its names carry the label "bflood").
    w.upstream
        .exec(
            "iptables",
            &[
                "-I", "INPUT", "-p", "udp", "--dport", "53", "-m", "string", "--algo", "bm",
                "--string", "bflood", "-j", "DROP",
            ],
        )
        .expect("silence B's names upstream");
    let nfqmark = w.nfqmark_pid().expect("nfqmark runs");
    let kernel_before = kernel_counts(&w, nfqmark, UNIQUE_QUEUE);
    let before = fresh_counters(&w);
    let flooding = AtomicBool::new(true);
    let server_b = SocketAddr::new(ip(lab::addr::ROUTER_B_V4), 53);
    let server_a = SocketAddr::new(ip(lab::addr::ROUTER_A_V4), 53);
    let names = a_names("uniq");
    let started = Instant::now();
    let (flood, asked, peak, full) = thread::scope(|s| {
        let flood = s.spawn(|| {
            let r = load::query_flood(
                &w.b,
                QueryFlood {
                    server: server_b,
                    queries: 15_000,
                    rate: 5_000,
                    time: Duration::from_secs(4),
                },
                |i| format!("b-{i}.bflood.nfqm.example"),
            );
            flooding.store(false, Ordering::Relaxed);
            r
        });
        let peak =
            s.spawn(|| backlog_peak(nfqmark, UNIQUE_QUEUE, &flooding, Duration::from_secs(10)));
        // A asks once B has filled its share and is being refused.
        let full = lab::wait_for(Duration::from_secs(4), || {
            fresh_counters(&w).get("over_quota") > before.get("over_quota")
        });
        let asked = load::ask(
            &w.a,
            server_a,
            &names,
            IpAddr::V4(upstream::ANSWER_V4),
            Shape::Udp,
            a_limits(),
        );
        (
            flood.join().expect("flood thread"),
            asked,
            peak.join().expect("peak thread"),
            full,
        )
    });
    let flood = flood.expect("the flood");
    let asked = asked.expect("A asks");
    lab::wait_for(Duration::from_secs(10), || {
        load::proc_queue_of_pid(nfqmark, UNIQUE_QUEUE).is_some_and(|q| q.waiting == 0)
    });
    let after = fresh_counters(&w);
    let took = started.elapsed();
    thread::sleep(Duration::from_millis(300));
    let counts = LinkCounts::from_sniffer(&w.sniffer, "-uniq");
    // The resolver works through what waits in its socket (upstream queries go on for a while).
    let kernel_after = kernel_counts(&w, nfqmark, UNIQUE_QUEUE);
    let passed = let_past(kernel_before, kernel_after);
    // nfqmark reads the rules' counters every 2 s: give it one more round.
    thread::sleep(Duration::from_millis(2200));
    let end = fresh_counters(&w);
    println!("B's flood: {flood}; A asked once B was refused: {full}; queue backlog peak {peak}");
    println!("A: {asked}; upstream {counts}");
    println!(
        "nfqmark after {took:.1?}: {}; waiting_clients={} (before: {}); let past the queue: \
         {passed} by the kernel's counts, {} by nfqmark's bypassed",
        deltas(
            &before,
            &after,
            &[
                "packets",
                "client_queries",
                "over_quota",
                "paired",
                "unpaired",
                "evicted",
                "expired"
            ]
        ),
        after.get("waiting_clients"),
        before.get("waiting_clients"),
        delta(&before, &end, "bypassed"),
    );
    let tail = log_tail(&w, 20);
    assert!(
        load::wait_exit(nfqmark, Duration::ZERO).is_none(),
        "nfqmark died:\n{tail}"
    );
    assert_eq!(delta(&before, &end, "enobufs"), 0, "{}", end.line());
    assert_eq!(
        passed, 0,
        "the kernel let packets past the queue: {kernel_before:?} -> {kernel_after:?}\n{tail}"
    );
    assert!(full, "B never went over its share: {}", after.line());
    assert_eq!(asked.answered, A_NAMES, "A's answers: {asked}\n{tail}");
    assert!(
        counts.a_link2 == A_NAMES && counts.a_link1 == 0 && counts.dropped() == 0,
        "A's upstream queries: {counts} (expected {A_NAMES} via link2)\n{tail}"
    );
    // What B may still add: its share less what it already holds (a readiness query the
    // resolver never answered, when it was not listening yet, waits out its window).
    let room = UNIQUE_SHARE - before.get("waiting_clients");
    let recorded = delta(&before, &after, "client_queries");
    assert_eq!(
        recorded,
        room + A_NAMES as u64,
        "B's share and A's queries (B held {} before): {}",
        before.get("waiting_clients"),
        after.line()
    );
    assert_eq!(
        after.get("waiting_clients"),
        UNIQUE_SHARE,
        "B's share waits (and none of A's): {}",
        after.line()
    );
    // Every one of B's queries reached nfqmark (none let past): all past its share refused.
    assert_eq!(
        delta(&before, &after, "over_quota"),
        flood.sent - room,
        "B's queries past its share: {}",
        after.line()
    );
    assert_eq!(delta(&before, &after, "evicted"), 0, "{}", after.line());
}

// ---------------------------------------------------------------------------------------------
// 5. The bypass count under load.
// ---------------------------------------------------------------------------------------------

const RACE_QUEUE: u16 = 25;

/// nfqmark's `bypassed` counts what the kernel let past the queue and nothing else. Under a
/// steady load (40,000 queries of one name at up to 10,000/s from B) the queue has room for all
/// of it (`--queue-maxlen`), and the kernel's own counts (the queue rules' packets against the
/// queue's ids) show that nothing was let past: nfqmark must count 0. Control: with nfqmark
/// gone (`--queue-bypass` lets packets past), the kernel's counts do show B's next queries let
/// past, so the measure sees a bypass when there is one. (nfqmark reads the rules' counters,
/// then the packets it decided, then /proc's waiting count: a packet decided and given its
/// verdict between the last two reads would be in neither and count as let past, and the count
/// never goes back. Not seen in the lab so far; reading the waiting count before the decided
/// count would close it.)
#[test]
fn bypass_count_is_0_when_the_kernel_lets_nothing_past() {
    if !common::require_root("hostile-bypass") {
        return;
    }
    let _turn = turn();
    let w = flood_lab("hostile-bypass", RACE_QUEUE, &[]);
    let nfqmark = w.nfqmark_pid().expect("nfqmark runs");
    let server_b = SocketAddr::new(ip(lab::addr::ROUTER_B_V4), 53);
    let kernel_before = kernel_counts(&w, nfqmark, RACE_QUEUE);
    let before = fresh_counters(&w);
    let flood = load::query_flood(
        &w.b,
        QueryFlood {
            server: server_b,
            queries: 40_000,
            rate: 10_000,
            time: Duration::from_secs(6),
        },
        |_| "b-steady.nfqm.example".to_string(),
    )
    .expect("the load");
    let kernel_after = kernel_counts(&w, nfqmark, RACE_QUEUE);
    let passed = let_past(kernel_before, kernel_after);
    // nfqmark reads the rules' counters every 2 s: give it one more round.
    thread::sleep(Duration::from_millis(2200));
    let after = fresh_counters(&w);
    let counted = delta(&before, &after, "bypassed");
    println!(
        "B's load: {flood}; the rules saw {} packets, the kernel queued {}: {passed} let past; \
         nfqmark counted {counted} let past ({} decided)",
        kernel_after.0 - kernel_before.0,
        kernel_after.1 - kernel_before.1,
        delta(&before, &after, "packets"),
    );
    let tail = log_tail(&w, 10);

    // Control: nfqmark gone, the kernel lets B's queries past, and the measure sees it.
    // SAFETY: kill(2) on our own child's pid (the lab reaps it).
    unsafe { libc::kill(nfqmark as i32, libc::SIGKILL) };
    assert!(
        lab::wait_for(Duration::from_secs(5), || !w.queue_bound(RACE_QUEUE)),
        "the queue stayed bound"
    );
    let control_before = (
        load::queue_rule_packets(&w.router, RACE_QUEUE).expect("iptables-save"),
        kernel_after.1,
    );
    let sent = load::query_flood(
        &w.b,
        QueryFlood {
            server: server_b,
            queries: 20,
            rate: 200,
            time: Duration::from_secs(2),
        },
        |i| format!("b-{i}-unseen.nfqm.example"),
    )
    .expect("queries with nfqmark gone");
    thread::sleep(Duration::from_millis(500));
    let control_after = (
        load::queue_rule_packets(&w.router, RACE_QUEUE).expect("iptables-save"),
        kernel_after.1,
    );
    let control = let_past(control_before, control_after);
    println!("control: with nfqmark gone, {sent}: {control} packets let past");
    assert!(
        control >= sent.sent,
        "the kernel's counts missed what passed with nfqmark gone: {control}"
    );
    // The kernel's counts are exact when the socket never overflowed (a packet the kernel
    // could not hand over gets an id and is let past: ENOBUFS says so).
    assert_eq!(delta(&before, &after, "enobufs"), 0, "{}", after.line());
    assert_eq!(
        passed, 0,
        "the kernel did let packets past: {kernel_before:?} -> {kernel_after:?}"
    );
    assert_eq!(
        counted, passed,
        "nfqmark counted {counted} packets let past; the kernel let {passed} past\n{tail}"
    );
}
