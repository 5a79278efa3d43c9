//! Prometheus metrics over HTTP (`--metrics ADDR:PORT`, loopback by default).
//!
//! This module owns the text exposition format, the routes (`GET /metrics`, and `GET /health`:
//! 200 while every worker serves, 503 naming the queues whose worker is gone), taking a
//! [`Snapshot`] of the workers' shared state and the kernel's queue table in /proc
//! ([`Snapshot::of`], also used for the counter log line) and, in [`http`], the small bounded
//! server that serves them from one thread. Rendering and routing are pure functions of a
//! [`Snapshot`] and the worker liveness, so they are unit-tested without a socket; the server
//! thread only takes snapshots and writes them out. It never touches the packet path (counters
//! are atomics the workers bump anyway) and never starts a thread per connection. It may use
//! `worker` (the shared state it reads); `worker` never uses it. The process's own figures (memory,
//! descriptors, threads) come from [`process`], read at each scrape on the metrics thread.

mod http;
pub(crate) mod process;

use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};

pub use http::{HttpStats, Limits, Reply};

use crate::flows::LearnCounters;
use crate::pairing::PairingCounters;
use crate::stats::Counter;
use crate::stats::{DECISION_BOUNDS_NS, DECISION_SAMPLE, DecisionTimesSnapshot, Stats};
use crate::worker::{Shared, lock};

/// Counters of one queue's worker, copied out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueSnapshot {
    pub num: u16,
    pub packets: u64,
    pub accepted: u64,
    pub dropped: u64,
    pub repeated: u64,
    pub marked: u64,
    pub parse_errors: u64,
    pub dns: u64,
    pub dns_errors: u64,
    pub not_dns: u64,
    pub bad_checksums: u64,
    pub conn_conflicts: u64,
    pub enobufs: u64,
    pub lock_waits: u64,
    pub recv_errors: u64,
    pub verdict_errors: u64,
    /// Decision times of a sample of the packets.
    pub decision_time: DecisionTimesSnapshot,
}

impl QueueSnapshot {
    /// Field by field sum of several queues (the `num` of the result is 0).
    pub fn sum(queues: &[QueueSnapshot]) -> QueueSnapshot {
        let mut t = QueueSnapshot::default();
        for q in queues {
            t.packets += q.packets;
            t.accepted += q.accepted;
            t.dropped += q.dropped;
            t.repeated += q.repeated;
            t.marked += q.marked;
            t.parse_errors += q.parse_errors;
            t.dns += q.dns;
            t.dns_errors += q.dns_errors;
            t.not_dns += q.not_dns;
            t.bad_checksums += q.bad_checksums;
            t.conn_conflicts += q.conn_conflicts;
            t.enobufs += q.enobufs;
            t.lock_waits += q.lock_waits;
            t.recv_errors += q.recv_errors;
            t.verdict_errors += q.verdict_errors;
            t.decision_time.add(&q.decision_time);
        }
        t
    }

    pub fn of(num: u16, s: &Stats) -> QueueSnapshot {
        QueueSnapshot {
            num,
            packets: s.packets.get(),
            accepted: s.accepted.get(),
            dropped: s.dropped.get(),
            repeated: s.repeated.get(),
            marked: s.marked.get(),
            parse_errors: s.parse_errors.get(),
            dns: s.dns.get(),
            dns_errors: s.dns_errors.get(),
            not_dns: s.not_dns.get(),
            bad_checksums: s.bad_checksums.get(),
            conn_conflicts: s.conn_conflicts.get(),
            enobufs: s.enobufs.get(),
            lock_waits: s.lock_waits.get(),
            recv_errors: s.recv_errors.get(),
            verdict_errors: s.verdict_errors.get(),
            decision_time: s.decision_time.snapshot(),
        }
    }
}

/// The kernel's view of a queue, from /proc/net/netfilter/nfnetlink_queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelQueue {
    pub num: u16,
    /// Packets waiting in the queue now.
    pub waiting: u64,
    /// Packets the kernel dropped (or, fail-open, accepted) because the queue was full.
    pub queue_dropped: u64,
    /// Packets the kernel could not send us (netlink receive buffer full).
    pub user_dropped: u64,
}

/// Parse /proc/net/netfilter/nfnetlink_queue: `queue portid waiting copy_mode copy_range
/// queue_dropped user_dropped id_sequence 1`. Lines that do not parse are skipped.
pub fn parse_proc_queues(text: &str) -> Vec<KernelQueue> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            Some(KernelQueue {
                num: f.first()?.parse().ok()?,
                waiting: f.get(2)?.parse().ok()?,
                queue_dropped: f.get(5)?.parse().ok()?,
                user_dropped: f.get(6)?.parse().ok()?,
            })
        })
        .collect()
}

/// Per-rule counters, copied out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleSnapshot {
    /// Where the rule is, `FILE:LINE`.
    pub rule: String,
    pub matches: u64,
    pub marks: u64,
}

/// Everything the metrics page shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub queues: Vec<QueueSnapshot>,
    pub kernel: Vec<KernelQueue>,
    pub pairing: PairingCounters,
    pub waiting_clients: usize,
    pub waiting_upstream: usize,
    pub learned: LearnCounters,
    pub learned_entries: usize,
    pub rules: Vec<RuleSnapshot>,
    pub rules_loaded: usize,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    /// Packets let past nfqmark's queues, when the queue rules' counters can be read.
    pub bypassed: Option<u64>,
    /// DNS over TCP read as streams.
    pub streams: crate::stream::StreamCounters,
    pub stream_flows: usize,
    /// The kernel backend of flow rules, when it runs.
    pub kernel_flows: Option<crate::kernel_flows::Snapshot>,
    /// Connection marks set over ctnetlink, when on.
    pub ct_marks: Option<crate::ctmark::Snapshot>,
}

impl Snapshot {
    /// Everything the metrics page and the counter log line show, read from the workers' shared
    /// state (one short hold of the tables' lock) and the kernel's queue table in /proc.
    pub fn of(shared: &Shared) -> Snapshot {
        let (pairing, waiting_clients, waiting_upstream, learned, learned_entries, streams) = {
            let t = lock(&shared.tables);
            (
                t.pairing.counters,
                t.pairing.client_len(),
                t.pairing.upstream_len(),
                t.learned.counters,
                t.learned.len(),
                (t.streams.counters, t.streams.len()),
            )
        };
        let loaded = shared.rules();
        let rules = (0..loaded.rules.len())
            .map(|i| RuleSnapshot {
                rule: loaded
                    .rules
                    .describe(i)
                    .unwrap_or_else(|| format!("rule {i}")),
                matches: loaded.matches.get(i).map_or(0, Counter::get),
                marks: loaded.marks.get(i).map_or(0, Counter::get),
            })
            .collect();
        let ours: Vec<u16> = shared.queues.iter().map(|q| q.num).collect();
        let kernel: Vec<KernelQueue> =
            std::fs::read_to_string("/proc/net/netfilter/nfnetlink_queue")
                .map(|t| parse_proc_queues(&t))
                .unwrap_or_default()
                .into_iter()
                .filter(|k| ours.contains(&k.num))
                .collect();
        Snapshot {
            queues: shared
                .queues
                .iter()
                .map(|q| QueueSnapshot::of(q.num, &q.stats))
                .collect(),
            kernel,
            pairing,
            waiting_clients,
            waiting_upstream,
            learned,
            learned_entries,
            rules,
            rules_loaded: loaded.rules.len(),
            reloads_ok: shared.reloads_ok.get(),
            reloads_failed: shared.reloads_failed.get(),
            bypassed: shared
                .bypass_known
                .load(Ordering::Relaxed)
                .then(|| shared.bypassed.get()),
            streams: streams.0,
            stream_flows: streams.1,
            kernel_flows: shared.kernel_flows.get().map(|k| k.stats.snapshot()),
            ct_marks: shared.ct_marks.get().map(|c| c.stats.snapshot()),
        }
    }
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.sample_text(name, labels, &value.to_string());
    }

    /// A sample whose value is already text (a fraction of a second).
    fn sample_text(&mut self, name: &str, labels: &[(&str, &str)], value: &str) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }
}

/// Nanoseconds as decimal seconds, exactly (`250` -> `0.00000025`, `1000000000` -> `1`).
pub fn seconds(ns: u64) -> String {
    let whole = ns / 1_000_000_000;
    let frac = ns % 1_000_000_000;
    if frac == 0 {
        return whole.to_string();
    }
    let digits = format!("{frac:09}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// `nfqmark_build_info`: always 1, with what was built as labels.
pub fn render_build_info() -> String {
    let mut o = Out(String::with_capacity(256));
    o.family(
        "nfqmark_build_info",
        "gauge",
        "Always 1; the labels say which nfqmark this is.",
    );
    let target = format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS);
    o.sample(
        "nfqmark_build_info",
        &[
            ("version", env!("CARGO_PKG_VERSION")),
            (
                "profile",
                if cfg!(debug_assertions) {
                    "debug"
                } else {
                    "release"
                },
            ),
            ("target", &target),
        ],
        1,
    );
    o.0
}

/// The Prometheus text exposition of a snapshot.
pub fn render(s: &Snapshot) -> String {
    let mut o = Out(String::with_capacity(4096));
    type Field = fn(&QueueSnapshot) -> u64;
    let per_queue: [(&str, &str, Field); 11] = [
        ("nfqmark_packets_total", "Packets decided.", |q| q.packets),
        (
            "nfqmark_marked_total",
            "Packets whose mark nfqmark changed.",
            |q| q.marked,
        ),
        (
            "nfqmark_parse_errors_total",
            "Packets whose IP/TCP/UDP headers could not be read (accepted).",
            |q| q.parse_errors,
        ),
        ("nfqmark_dns_messages_total", "DNS messages read.", |q| {
            q.dns
        }),
        (
            "nfqmark_dns_errors_total",
            "Payloads on a DNS port that are not a readable DNS message.",
            |q| q.dns_errors,
        ),
        (
            "nfqmark_bad_checksums_total",
            "DNS queries with a wrong transport checksum (the socket drops them): recorded nowhere.",
            |q| q.bad_checksums,
        ),
        (
            "nfqmark_connection_conflicts_total",
            "Packets of a connection that pairing would have marked otherwise; the connection's mark was kept.",
            |q| q.conn_conflicts,
        ),
        (
            "nfqmark_enobufs_total",
            "Receive buffer overflows (ENOBUFS) on the queue socket.",
            |q| q.enobufs,
        ),
        (
            "nfqmark_lock_waits_total",
            "Decisions that waited for the shared pairing tables' lock held by another queue's worker.",
            |q| q.lock_waits,
        ),
        (
            "nfqmark_recv_errors_total",
            "Receive errors on the queue socket, ENOBUFS included.",
            |q| q.recv_errors,
        ),
        (
            "nfqmark_verdict_errors_total",
            "Verdicts the kernel refused.",
            |q| q.verdict_errors,
        ),
    ];
    for (name, help, field) in per_queue {
        o.family(name, "counter", help);
        for q in &s.queues {
            o.sample(name, &[("queue", &q.num.to_string())], field(q));
        }
    }
    o.family(
        "nfqmark_verdicts_total",
        "counter",
        "Verdicts given, by kind.",
    );
    for q in &s.queues {
        let num = q.num.to_string();
        for (verdict, v) in [
            ("accept", q.accepted),
            ("drop", q.dropped),
            ("repeat", q.repeated),
        ] {
            o.sample(
                "nfqmark_verdicts_total",
                &[("queue", &num), ("verdict", verdict)],
                v,
            );
        }
    }
    o.family(
        "nfqmark_decision_seconds",
        "histogram",
        &format!(
            "Time to decide a packet (parse, rules, pairing; the tables' lock included), for a \
             random sample of 1 in {DECISION_SAMPLE} packets."
        ),
    );
    for q in &s.queues {
        let num = q.num.to_string();
        let h = &q.decision_time;
        let mut cumulative = 0u64;
        for (i, &count) in h.buckets.iter().enumerate() {
            cumulative += count;
            let le = DECISION_BOUNDS_NS
                .get(i)
                .map_or_else(|| "+Inf".to_string(), |&b| seconds(b));
            o.sample(
                "nfqmark_decision_seconds_bucket",
                &[("queue", &num), ("le", &le)],
                cumulative,
            );
        }
        o.sample_text(
            "nfqmark_decision_seconds_sum",
            &[("queue", &num)],
            &seconds(h.sum_ns),
        );
        o.sample(
            "nfqmark_decision_seconds_count",
            &[("queue", &num)],
            h.count(),
        );
    }
    o.family(
        "nfqmark_kernel_queue_waiting",
        "gauge",
        "Packets waiting in the kernel queue.",
    );
    for k in &s.kernel {
        o.sample(
            "nfqmark_kernel_queue_waiting",
            &[("queue", &k.num.to_string())],
            k.waiting,
        );
    }
    o.family(
        "nfqmark_kernel_queue_dropped_total",
        "counter",
        "Packets the kernel did not queue because the queue was full (accepted unmarked when fail-open).",
    );
    for k in &s.kernel {
        o.sample(
            "nfqmark_kernel_queue_dropped_total",
            &[("queue", &k.num.to_string())],
            k.queue_dropped,
        );
    }
    o.family(
        "nfqmark_kernel_user_dropped_total",
        "counter",
        "Packets the kernel could not deliver to nfqmark (socket buffer full).",
    );
    for k in &s.kernel {
        o.sample(
            "nfqmark_kernel_user_dropped_total",
            &[("queue", &k.num.to_string())],
            k.user_dropped,
        );
    }
    o.family(
        "nfqmark_bypassed_total",
        "counter",
        "Packets nfqmark's NFQUEUE rules sent that nfqmark never received (the kernel let them past, unmarked: fail-open or bypass); from the rules' counters.",
    );
    o.sample("nfqmark_bypassed_total", &[], s.bypassed.unwrap_or(0));
    o.family(
        "nfqmark_bypass_accounting",
        "gauge",
        "1 when the NFQUEUE rules' counters are read (nfqmark_bypassed_total is meaningful), else 0.",
    );
    o.sample(
        "nfqmark_bypass_accounting",
        &[],
        u64::from(s.bypassed.is_some()),
    );
    let p = &s.pairing;
    o.family("nfqmark_pairing_total", "counter", "DNS pairing outcomes.");
    for (outcome, v) in [
        ("client_query", p.client_queries),
        ("over_quota", p.over_quota),
        ("paired", p.paired),
        ("ambiguous", p.ambiguous),
        ("unpaired", p.unpaired),
        ("upstream_answer", p.upstream_answers),
        ("client_answer", p.client_answers),
        ("tcp_intent", p.tcp_intents),
        ("tcp_opened", p.tcp_opened),
        ("tcp_by_socket", p.tcp_by_socket),
        ("tcp_ambiguous", p.tcp_ambiguous),
        ("tcp_unpaired", p.tcp_unpaired),
        ("forwarded_query", p.forwarded_queries),
        ("by_own_name", p.by_own_name),
        ("by_ancestor", p.by_ancestor),
        ("by_derived", p.by_derived),
        ("expired", p.expired),
        ("evicted", p.evicted),
        ("retired", p.retired),
    ] {
        o.sample("nfqmark_pairing_total", &[("outcome", outcome)], v);
    }
    o.family(
        "nfqmark_pairing_entries",
        "gauge",
        "Entries in the pairing tables.",
    );
    o.sample(
        "nfqmark_pairing_entries",
        &[("table", "clients")],
        s.waiting_clients as u64,
    );
    o.sample(
        "nfqmark_pairing_entries",
        &[("table", "upstream")],
        s.waiting_upstream as u64,
    );
    let t = &s.streams;
    o.family(
        "nfqmark_tcp_streams_total",
        "counter",
        "DNS over TCP read as streams: messages read, flows picked up without their SYN, retransmitted and out-of-order segments, flows no longer read (a bound broken), evicted and expired flows.",
    );
    for (outcome, v) in [
        ("message", t.messages),
        ("picked_up", t.picked_up),
        ("retransmit", t.retransmits),
        ("out_of_order", t.out_of_order),
        ("bound_break", t.bound_breaks),
        ("evicted", t.evictions),
        ("expired", t.expiries),
    ] {
        o.sample("nfqmark_tcp_streams_total", &[("outcome", outcome)], v);
    }
    o.family(
        "nfqmark_tcp_stream_flows",
        "gauge",
        "DNS-over-TCP flow directions followed now.",
    );
    o.sample("nfqmark_tcp_stream_flows", &[], s.stream_flows as u64);
    let l = &s.learned;
    o.family("nfqmark_flows_total", "counter", "DNS-learned flow marks.");
    for (outcome, v) in [
        ("learned", l.learned),
        ("flow_marked", l.flows_marked),
        ("over_quota", l.over_quota),
        ("expired", l.expired),
        ("evicted", l.evicted),
    ] {
        o.sample("nfqmark_flows_total", &[("outcome", outcome)], v);
    }
    o.family(
        "nfqmark_flows_entries",
        "gauge",
        "Learned (client, address) entries.",
    );
    o.sample("nfqmark_flows_entries", &[], s.learned_entries as u64);
    if let Some(k) = &s.kernel_flows {
        render_kernel_flows(&mut o, k);
    }
    if let Some(c) = &s.ct_marks {
        o.family(
            "nfqmark_conntrack_marks_total",
            "counter",
            "Connection marks set over ctnetlink for first packets nfqmark marked: set, missed (no entry within the retries), dropped (queue full), failed (refused).",
        );
        for (outcome, v) in [
            ("set", c.set),
            ("missed", c.missed),
            ("dropped", c.dropped),
            ("failed", c.failed),
        ] {
            o.sample("nfqmark_conntrack_marks_total", &[("outcome", outcome)], v);
        }
    }
    o.family(
        "nfqmark_rule_matches_total",
        "counter",
        "Packets each rule matched.",
    );
    for r in &s.rules {
        o.sample(
            "nfqmark_rule_matches_total",
            &[("rule", &r.rule)],
            r.matches,
        );
    }
    o.family(
        "nfqmark_rule_marks_total",
        "counter",
        "Marks each rule set.",
    );
    for r in &s.rules {
        o.sample("nfqmark_rule_marks_total", &[("rule", &r.rule)], r.marks);
    }
    o.family("nfqmark_rules_loaded", "gauge", "Rules in force.");
    o.sample("nfqmark_rules_loaded", &[], s.rules_loaded as u64);
    o.family(
        "nfqmark_rule_reloads_total",
        "counter",
        "Rule reloads, by result.",
    );
    o.sample(
        "nfqmark_rule_reloads_total",
        &[("result", "ok")],
        s.reloads_ok,
    );
    o.sample(
        "nfqmark_rule_reloads_total",
        &[("result", "rejected")],
        s.reloads_failed,
    );
    o.0
}

/// The kernel backend of flow rules: what it did to the nft sets, and how long an answer took
/// to become an element.
fn render_kernel_flows(o: &mut Out, k: &crate::kernel_flows::Snapshot) {
    o.family(
        "nfqmark_kernel_flows_total",
        "counter",
        "nft set elements of flow rules: added, refreshed (added again), removed (evicted), expired (read back from the kernel), restored (lost before their TTL, put back), adopted at start, dropped (queue to the backend full), failed (refused by the kernel), no_set (the set is not loaded).",
    );
    for (outcome, v) in [
        ("added", k.added),
        ("refreshed", k.refreshed),
        ("removed", k.removed),
        ("expired", k.expired),
        ("restored", k.restored),
        ("adopted", k.adopted),
        ("dropped", k.dropped),
        ("failed", k.failed),
        ("no_set", k.no_set),
    ] {
        o.sample("nfqmark_kernel_flows_total", &[("outcome", outcome)], v);
    }
    o.family(
        "nfqmark_kernel_flow_batches_total",
        "counter",
        "Netlink batches sent to the kernel's flow sets.",
    );
    o.sample("nfqmark_kernel_flow_batches_total", &[], k.batches);
    o.family(
        "nfqmark_kernel_flow_elements",
        "gauge",
        "Elements in the flow sets at the last read-back.",
    );
    o.sample("nfqmark_kernel_flow_elements", &[], k.elements);
    let name = "nfqmark_kernel_flow_update_seconds";
    o.family(
        name,
        "histogram",
        "Time from an answer being learned to its element being in the kernel.",
    );
    let mut cumulative = 0u64;
    for (i, bound) in crate::kernel_flows::LATENCY_BUCKETS_US.iter().enumerate() {
        cumulative += k.latency.get(i).copied().unwrap_or(0);
        let le = format!("{}", *bound as f64 / 1e6);
        o.sample(&format!("{name}_bucket"), &[("le", &le)], cumulative);
    }
    let count: u64 = k.latency.iter().sum();
    o.sample(&format!("{name}_bucket"), &[("le", "+Inf")], count);
    let _ = writeln!(o.0, "{name}_sum {}", k.latency_sum_us as f64 / 1e6);
    o.sample(&format!("{name}_count"), &[], count);
}

/// The server's own counters, in the exposition format (appended to the page).
pub fn render_http(h: &HttpStats) -> String {
    let mut o = Out(String::with_capacity(512));
    o.family(
        "nfqmark_metrics_connections_total",
        "counter",
        "Connections to this endpoint, by what became of them.",
    );
    for (outcome, v) in [
        ("accepted", h.accepted),
        ("answered", h.answered),
        ("rejected", h.rejected),
        ("evicted", h.evicted),
        ("refused", h.refused),
        ("timed_out", h.timed_out),
        ("accept_error", h.accept_errors),
    ] {
        o.sample(
            "nfqmark_metrics_connections_total",
            &[("outcome", outcome)],
            v,
        );
    }
    o.0
}

/// Which workers are serving their queue, as `/health` reports them.
#[derive(Debug)]
pub struct Alive {
    queues: Vec<(u16, AtomicBool)>,
}

impl Alive {
    /// Every queue marked as not (yet) served.
    pub fn new(queues: &[u16]) -> Alive {
        Alive {
            queues: queues
                .iter()
                .map(|&q| (q, AtomicBool::new(false)))
                .collect(),
        }
    }

    pub fn set(&self, queue: u16, alive: bool) {
        for (q, flag) in &self.queues {
            if *q == queue {
                flag.store(alive, Ordering::Relaxed);
            }
        }
    }

    /// Queues whose worker is serving.
    pub fn serving(&self) -> Vec<u16> {
        self.queues
            .iter()
            .filter(|(_, flag)| flag.load(Ordering::Relaxed))
            .map(|(q, _)| *q)
            .collect()
    }

    /// Queues whose worker is not serving.
    pub fn dead(&self) -> Vec<u16> {
        self.queues
            .iter()
            .filter(|(_, flag)| !flag.load(Ordering::Relaxed))
            .map(|(q, _)| *q)
            .collect()
    }
}

/// The reply to `method` `path`: the page comes from `page`, called only for `GET /metrics`.
pub fn answer(method: &str, path: &str, page: impl FnOnce() -> String, alive: &Alive) -> Reply {
    match (method, path) {
        ("GET", "/metrics") => Reply {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: page(),
            allow: None,
        },
        ("GET", "/health") => {
            let dead = alive.dead();
            if dead.is_empty() {
                Reply::text(200, "ok\n")
            } else {
                let list: Vec<String> = dead.iter().map(u16::to_string).collect();
                Reply::text(503, format!("not serving queue(s) {}\n", list.join(",")))
            }
        }
        (_, "/metrics" | "/health") => Reply {
            allow: Some("GET"),
            ..Reply::text(405, "only GET\n")
        },
        _ => Reply::text(404, "not found: try /metrics or /health\n"),
    }
}

/// The metrics endpoint, bound but not serving yet (binding is a start-up step, so a port in
/// use stops the start).
pub struct Endpoint {
    server: http::Server,
}

impl Endpoint {
    pub fn bind(addr: SocketAddr) -> io::Result<Endpoint> {
        let server = http::Server::bind(addr, Limits::default())?;
        Ok(Endpoint { server })
    }

    /// Serve on this thread until `shared.stop` is set.
    pub fn run(self, shared: &Shared, alive: &Alive) {
        self.server.run(&shared.stop, |method, path, stats| {
            answer(
                method,
                path,
                || {
                    let mut page = render_build_info();
                    page.push_str(&render(&Snapshot::of(shared)));
                    page.push_str(&render_http(stats));
                    page.push_str(&process::render(&process::read()));
                    page
                },
                alive,
            )
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_queues_parse_and_skip_junk() {
        let text = "    0  12345     3 2 65535     7     1  4242  1\n garbage\n   12 -4000 0 2 65535 0 0 1 1\n";
        let q = parse_proc_queues(text);
        assert_eq!(q.len(), 2);
        assert_eq!(
            q[0],
            KernelQueue {
                num: 0,
                waiting: 3,
                queue_dropped: 7,
                user_dropped: 1
            }
        );
        assert_eq!(q[1].num, 12);
    }

    #[test]
    fn routes_answer_get_only_and_health_names_dead_queues() {
        let alive = Alive::new(&[0, 3]);
        let page = || "page\n".to_string();
        assert_eq!(answer("GET", "/health", page, &alive).status, 503);
        assert!(
            answer("GET", "/health", page, &alive)
                .body
                .contains("queue(s) 0,3")
        );
        alive.set(0, true);
        alive.set(3, true);
        assert_eq!(answer("GET", "/health", page, &alive).status, 200);
        alive.set(3, false);
        let r = answer("GET", "/health", page, &alive);
        assert_eq!(
            (r.status, r.body.as_str()),
            (503, "not serving queue(s) 3\n")
        );
        let r = answer("GET", "/metrics", page, &alive);
        assert_eq!((r.status, r.body.as_str()), (200, "page\n"));
        assert!(r.content_type.starts_with("text/plain; version=0.0.4"));
        let r = answer("POST", "/metrics", page, &alive);
        assert_eq!((r.status, r.allow), (405, Some("GET")));
        assert_eq!(answer("HEAD", "/health", page, &alive).status, 405);
        assert_eq!(answer("GET", "/", page, &alive).status, 404);
        assert_eq!(answer("DELETE", "/x", page, &alive).status, 404);
        let never = || -> String { panic!("the page is rendered only for GET /metrics") };
        assert_eq!(answer("GET", "/health", never, &alive).status, 503);
    }

    #[test]
    fn http_counters_render_as_one_family() {
        let text = render_http(&HttpStats {
            evicted: 7,
            ..HttpStats::default()
        });
        assert!(text.contains("# TYPE nfqmark_metrics_connections_total counter\n"));
        assert!(text.contains("nfqmark_metrics_connections_total{outcome=\"evicted\"} 7\n"));
    }

    #[test]
    fn render_has_help_type_and_labelled_samples() {
        let s = Snapshot {
            queues: vec![QueueSnapshot {
                num: 2,
                packets: 10,
                accepted: 9,
                dropped: 1,
                ..QueueSnapshot::default()
            }],
            rules: vec![RuleSnapshot {
                rule: "a \"b\".rules:3".into(),
                matches: 5,
                marks: 4,
            }],
            ..Snapshot::default()
        };
        let text = render(&s);
        assert!(text.contains("# TYPE nfqmark_packets_total counter\n"));
        assert!(text.contains("nfqmark_packets_total{queue=\"2\"} 10\n"));
        assert!(text.contains("nfqmark_verdicts_total{queue=\"2\",verdict=\"drop\"} 1\n"));
        assert!(text.contains("nfqmark_rule_marks_total{rule=\"a \\\"b\\\".rules:3\"} 4\n"));
        assert!(text.contains("nfqmark_pairing_total{outcome=\"paired\"} 0\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap_or("");
            assert!(value.parse::<f64>().is_ok(), "bad sample line {line:?}");
        }
    }

    #[test]
    fn seconds_are_exact_decimals() {
        assert_eq!(seconds(0), "0");
        assert_eq!(seconds(100), "0.0000001");
        assert_eq!(seconds(250), "0.00000025");
        assert_eq!(seconds(1_000_000), "0.001");
        assert_eq!(seconds(1_500_000_000), "1.5");
        assert_eq!(seconds(3_000_000_000), "3");
    }

    #[test]
    fn decision_histogram_is_cumulative_and_ends_with_inf_sum_and_count() {
        let h = crate::stats::DecisionTimes::default();
        for ns in [90, 200, 200, 2_000_000] {
            h.observe(std::time::Duration::from_nanos(ns));
        }
        let s = Snapshot {
            queues: vec![QueueSnapshot {
                num: 1,
                decision_time: h.snapshot(),
                ..QueueSnapshot::default()
            }],
            ..Snapshot::default()
        };
        let text = render(&s);
        assert!(text.contains("# TYPE nfqmark_decision_seconds histogram\n"));
        let buckets: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("nfqmark_decision_seconds_bucket{queue=\"1\""))
            .collect();
        assert_eq!(buckets.len(), DECISION_BOUNDS_NS.len() + 1);
        assert_eq!(
            buckets.first(),
            Some(&"nfqmark_decision_seconds_bucket{queue=\"1\",le=\"0.0000001\"} 1")
        );
        assert!(
            buckets.contains(&"nfqmark_decision_seconds_bucket{queue=\"1\",le=\"0.00000025\"} 3")
        );
        assert!(buckets.contains(&"nfqmark_decision_seconds_bucket{queue=\"1\",le=\"0.001\"} 3"));
        assert_eq!(
            buckets.last(),
            Some(&"nfqmark_decision_seconds_bucket{queue=\"1\",le=\"+Inf\"} 4")
        );
        assert!(text.contains("nfqmark_decision_seconds_sum{queue=\"1\"} 0.00200049\n"));
        assert!(text.contains("nfqmark_decision_seconds_count{queue=\"1\"} 4\n"));
    }

    #[test]
    fn build_info_names_the_version() {
        let text = render_build_info();
        assert!(text.contains("# TYPE nfqmark_build_info gauge\n"));
        assert!(text.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))));
        assert!(text.trim_end().ends_with("} 1"));
    }
}
