//! End to end: what an operator runs next to the daemon, against a real nfqmark in the lab.
//!
//! - The Grafana dashboard (`contrib/grafana/nfqmark.json`): every metric its queries name, every
//!   label value they select and every label they group by is in a real scrape of a daemon that
//!   served traffic. The checker's control: the same scrape with a misspelled metric, label value
//!   and label is refused, each named.
//! - `nfqmark top` against a running daemon while clients query: the queries, pairing and the
//!   marking rule's rates are above zero; the control is the same view with the clients idle
//!   (all zero), and `top` against a port nobody serves (exit 2, naming `--metrics`).
//! - The systemd unit's filters (`contrib/nfqmark.service`): every system call nfqmark makes
//!   (under strace, through start, traffic, a scrape, a reload, links coming and going, and a
//!   clean stop) is in the unit's `SystemCallFilter` as systemd expands it, and every socket
//!   family in `RestrictAddressFamilies`; no file is opened for writing (`ProtectSystem=strict`).
//!   The control: the checker refuses a call, a family and a write outside them. Skipped, saying
//!   so, without strace or systemd-analyze.
//!
//! Nothing here is timed: rates are checked against zero, never against a speed. Every load is
//! bounded in count and time.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a step that fails fails the test, loudly and at once"
)]

mod common;

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nfqmark::top::Scrape;
use nfqmark_lab::{self as lab, Client, Family, Options, Resolver, World};

/// The queue the worlds here use (per namespace, so no clash with other tests).
const QUEUE: u16 = 5;
/// The metrics port inside the router namespace.
const PORT: u16 = 9120;

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

// ---------------------------------------------------------------------------------------------
// The dashboard's queries against a scrape.
// ---------------------------------------------------------------------------------------------

/// A metric selector in a PromQL expression: the name and its `label op "value"` matchers.
#[derive(Debug, Clone, PartialEq)]
struct Selector {
    metric: String,
    matchers: Vec<(String, String, String)>,
}

/// What one expression names: selectors, and the labels of its `by`/`without`/`on`/`ignoring`
/// clauses.
#[derive(Debug, Default)]
struct Names {
    selectors: Vec<Selector>,
    grouping: Vec<String>,
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Read the metric selectors and grouping labels of a PromQL expression (the subset dashboards
/// use: no string literals outside matchers). Metric names are identifiers that start with
/// `nfqmark_` or `process_`; `label_values(METRIC, LABEL)` (a Grafana variable) names one too.
fn promql_names(expr: &str) -> Names {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Names::default();
    let mut i = 0;
    let skip_space = |mut j: usize| {
        while chars.get(j).is_some_and(|c| c.is_whitespace()) {
            j += 1;
        }
        j
    };
    while let Some(&c) = chars.get(i) {
        if !is_ident_start(c) || (i > 0 && chars.get(i - 1).is_some_and(|&p| is_ident(p))) {
            i += 1;
            continue;
        }
        let start = i;
        while chars.get(i).is_some_and(|&c| is_ident(c)) {
            i += 1;
        }
        let ident: String = chars[start..i].iter().collect();
        let next = skip_space(i);
        if ident.starts_with("nfqmark_") || ident.starts_with("process_") {
            let mut matchers = Vec::new();
            if chars.get(next) == Some(&'{') {
                let end = chars[next..]
                    .iter()
                    .position(|&c| c == '}')
                    .map_or(chars.len(), |p| next + p);
                let body: String = chars[next + 1..end].iter().collect();
                for m in body.split(',').filter(|m| !m.trim().is_empty()) {
                    let op_at = m.find(['=', '!']).unwrap_or(m.len());
                    let (label, rest) = m.split_at(op_at);
                    let op: String = rest.chars().take_while(|c| "=!~".contains(*c)).collect();
                    let value = rest[op.len()..].trim().trim_matches('"');
                    matchers.push((label.trim().to_string(), op, value.to_string()));
                }
                i = end + 1;
            }
            names.selectors.push(Selector {
                metric: ident,
                matchers,
            });
        } else if [
            "by",
            "without",
            "on",
            "ignoring",
            "group_left",
            "group_right",
        ]
        .contains(&ident.as_str())
            && chars.get(next) == Some(&'(')
        {
            let end = chars[next..]
                .iter()
                .position(|&c| c == ')')
                .map_or(chars.len(), |p| next + p);
            let body: String = chars[next + 1..end].iter().collect();
            names.grouping.extend(
                body.split(',')
                    .map(|l| l.trim().to_string())
                    .filter(|l| !l.is_empty()),
            );
            i = end + 1;
        } else if ident == "label_values" && chars.get(next) == Some(&'(') {
            let end = chars[next..]
                .iter()
                .position(|&c| c == ')')
                .map_or(chars.len(), |p| next + p);
            let body: String = chars[next + 1..end].iter().collect();
            let mut parts = body.split(',').map(str::trim);
            if let (Some(metric), Some(label)) = (parts.next(), parts.next()) {
                names.selectors.push(Selector {
                    metric: metric.to_string(),
                    matchers: Vec::new(),
                });
                names.grouping.push(label.to_string());
            }
            i = end + 1;
        }
    }
    names
}

/// Labels Prometheus adds when it scrapes (not on the page), and the histogram's `le`.
const SCRAPE_LABELS: [&str; 3] = ["instance", "job", "le"];

/// Whether a sample's label value satisfies a `=~` regex of the simple kind dashboards use: an
/// alternation of literals, each possibly ending in `.*`.
fn regex_alternative_matches(alternative: &str, value: &str) -> bool {
    match alternative.strip_suffix(".*") {
        Some(prefix) => value.starts_with(prefix),
        None => value == alternative,
    }
}

/// Every problem with the dashboard's expressions against a scrape: a metric the page lacks, a
/// label value no sample of the metric has, a grouping label none of the expression's metrics
/// has.
fn check_dashboard(exprs: &[String], scrape: &Scrape) -> Vec<String> {
    let mut problems = Vec::new();
    let has_label = |metric: &str, label: &str| {
        scrape
            .samples
            .iter()
            .any(|s| s.name == metric && s.labels.iter().any(|(k, _)| k == label))
    };
    for expr in exprs {
        let names = promql_names(expr);
        if names.selectors.is_empty() {
            problems.push(format!("no nfqmark metric in {expr:?}"));
        }
        for sel in &names.selectors {
            let samples: Vec<_> = scrape
                .samples
                .iter()
                .filter(|s| s.name == sel.metric)
                .collect();
            if samples.is_empty() {
                problems.push(format!(
                    "metric {} is not in the scrape ({expr})",
                    sel.metric
                ));
                continue;
            }
            for (label, op, value) in &sel.matchers {
                if SCRAPE_LABELS.contains(&label.as_str()) {
                    continue;
                }
                let values: BTreeSet<&str> = samples
                    .iter()
                    .filter_map(|s| s.labels.iter().find(|(k, _)| k == label))
                    .map(|(_, v)| v.as_str())
                    .collect();
                let alternatives: Vec<&str> = match op.as_str() {
                    "=" => vec![value.as_str()],
                    "=~" => value.split('|').collect(),
                    _ => continue,
                };
                for alt in alternatives {
                    if !values.iter().any(|v| regex_alternative_matches(alt, v)) {
                        problems.push(format!(
                            "{}{{{label}{op}\"{alt}\"}}: no sample has it (values: {values:?})",
                            sel.metric
                        ));
                    }
                }
            }
        }
        for label in &names.grouping {
            if SCRAPE_LABELS.contains(&label.as_str()) {
                continue;
            }
            if !names.selectors.iter().any(|s| has_label(&s.metric, label)) {
                problems.push(format!("no metric of {expr:?} has the label {label}"));
            }
        }
    }
    problems
}

/// Every PromQL expression of a Grafana dashboard: the panels' `expr`s and the variables'
/// `label_values(...)` queries.
fn dashboard_exprs(json: &serde_json::Value) -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                        ("definition" | "query", serde_json::Value::String(s))
                            if s.contains("label_values(") =>
                        {
                            out.push(s.clone())
                        }
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(json, &mut out);
    out
}

fn the_dashboard() -> (serde_json::Value, Vec<String>) {
    let text = std::fs::read_to_string(repo_file("contrib/grafana/nfqmark.json"))
        .expect("contrib/grafana/nfqmark.json");
    let json: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let exprs = dashboard_exprs(&json);
    (json, exprs)
}

/// A page as nfqmark writes it, small: for the checker's own tests.
const SMALL_PAGE: &str = "\
# TYPE nfqmark_packets_total counter
nfqmark_packets_total{queue=\"0\"} 10
nfqmark_pairing_total{outcome=\"paired\"} 3
nfqmark_pairing_total{outcome=\"tcp_opened\"} 1
nfqmark_decision_seconds_bucket{queue=\"0\",le=\"+Inf\"} 2
process_threads 5
";

#[test]
fn dashboard_checker_reads_promql_and_names_what_is_missing() {
    let n = promql_names(
        "sum by (outcome) (rate(nfqmark_pairing_total{instance=~\"$instance\",outcome=~\"paired|tcp_.*\"}[$__rate_interval])) / on (instance) process_threads",
    );
    assert_eq!(
        n.selectors
            .iter()
            .map(|s| s.metric.as_str())
            .collect::<Vec<_>>(),
        ["nfqmark_pairing_total", "process_threads"]
    );
    assert_eq!(
        n.selectors[0].matchers[1],
        ("outcome".into(), "=~".into(), "paired|tcp_.*".into())
    );
    assert_eq!(n.grouping, ["outcome", "instance"]);
    let n = promql_names("label_values(nfqmark_build_info, instance)");
    assert_eq!(n.selectors[0].metric, "nfqmark_build_info");

    let scrape = Scrape::parse(SMALL_PAGE);
    let good: Vec<String> = [
        "sum by (queue) (rate(nfqmark_packets_total{instance=~\"$instance\"}[5m]))",
        "sum by (outcome) (rate(nfqmark_pairing_total{outcome=~\"paired|tcp_.*\"}[5m]))",
        "histogram_quantile(0.99, sum by (le) (rate(nfqmark_decision_seconds_bucket[5m])))",
        "process_threads",
    ]
    .map(String::from)
    .to_vec();
    assert_eq!(check_dashboard(&good, &scrape), Vec::<String>::new());
    // Control: each kind of mistake is named.
    let bad: Vec<String> = [
        "rate(nfqmark_packet_total[5m])",
        "rate(nfqmark_pairing_total{outcome=\"pairred\"}[5m])",
        "rate(nfqmark_pairing_total{outcome=~\"paired|by_.*\"}[5m])",
        "sum by (rule) (rate(nfqmark_packets_total[5m]))",
        "sum(rate(up[5m]))",
    ]
    .map(String::from)
    .to_vec();
    let problems = check_dashboard(&bad, &scrape);
    assert_eq!(problems.len(), 5, "{problems:#?}");
    for (p, what) in problems.iter().zip([
        "nfqmark_packet_total",
        "pairred",
        "by_.*",
        "label rule",
        "no nfqmark metric",
    ]) {
        assert!(p.contains(what), "{p} should name {what}");
    }
}

#[test]
fn the_dashboard_is_grafana_json_with_queries_on_every_panel() {
    let (json, exprs) = the_dashboard();
    assert_eq!(json["uid"], "nfqmark");
    let panels = json["panels"].as_array().expect("panels");
    for p in panels.iter().filter(|p| p["type"] != "row") {
        let targets = p["targets"].as_array().map_or(0, Vec::len);
        assert!(targets > 0, "panel {} has no query", p["title"]);
        assert!(
            p["datasource"]["uid"] == "${datasource}",
            "panel {} is not on the dashboard's data source variable",
            p["title"]
        );
    }
    assert!(exprs.len() >= 30, "only {} expressions", exprs.len());
    // Every panel query selects the chosen instances.
    for e in exprs.iter().filter(|e| !e.contains("label_values")) {
        assert!(e.contains("instance=~\"$instance\""), "{e}");
    }
}

/// A world with nfqmark serving metrics and a rules file whose rule marks client B's queries
/// (a bit the lab's routing ignores).
fn world(tag: &str) -> (World, String) {
    let mut options = Options::new(tag, Resolver::Dnsmasq, Some(common::nfqmark_bin()));
    options.queue = QUEUE;
    let mut w = World::build(options).expect("build the lab");
    let rules = w.path("ops.rules");
    std::fs::write(
        &rules,
        format!(
            "hook input src {} proto udp dport 53 set-mark 0x4000/0x4000\ndefault accept\n",
            lab::addr::B_V4
        ),
    )
    .expect("write the rules");
    w.options_mut().nfqmark_args = vec![
        "--rules".into(),
        rules.display().to_string(),
        "--metrics".into(),
        PORT.to_string(),
    ];
    w.start_nfqmark().expect("start nfqmark");
    w.start_resolver(Family::V4).expect("start the resolver");
    (w, format!("{}:1", rules.display()))
}

fn scrape(w: &World) -> Scrape {
    let page = w
        .router_http_get(PORT, "/metrics")
        .expect("scrape /metrics");
    let body = nfqmark::top::response_body(page.as_bytes())
        .unwrap_or_else(|e| panic!("scrape: {e}\n{page}"))
        .to_string();
    Scrape::parse(&body)
}

fn names(client: Client, label: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("{}-{i}-{label}.nfqm.example", client.letter()))
        .collect()
}

/// Every query of the dashboard names what a real scrape has: a daemon with a rules file (for
/// the per-rule metrics) that served both clients' queries. Also: the decision-time histogram
/// observed some of that traffic, and the process and build metrics are there.
#[test]
fn dashboard_queries_name_metrics_a_real_scrape_has() {
    if !common::require_root("ops-dashboard") {
        return;
    }
    let (w, rule) = world("odash");
    for (client, label) in [(Client::A, "dash-a"), (Client::B, "dash-b")] {
        let r = w
            .query(client, Family::V4, &names(client, label, 60), false)
            .expect("dig");
        assert!(r.answered > 0, "{client:?}: nothing answered");
    }
    let page = scrape(&w);
    let (_, exprs) = the_dashboard();
    let problems = check_dashboard(&exprs, &page);
    assert!(
        problems.is_empty(),
        "the dashboard names what nfqmark does not export:\n{}",
        problems.join("\n")
    );
    let timed = page
        .sum("nfqmark_decision_seconds_count", &[])
        .expect("histogram count");
    let packets = page.sum("nfqmark_packets_total", &[]).expect("packets");
    println!(
        "{} expressions checked; {packets} packets decided, {timed} timed",
        exprs.len()
    );
    assert!(packets >= 240.0, "{packets} packets for 120 queries");
    assert!(timed > 0.0, "no decision timed out of {packets} packets");
    assert!(
        page.sum("nfqmark_rule_marks_total", &[("rule", &rule)])
            .is_some_and(|m| m > 0.0),
        "the rule {rule} marked nothing"
    );
    assert!(
        page.sum("process_resident_memory_bytes", &[])
            .is_some_and(|b| b > 0.0)
    );
    assert!(page.sum("process_threads", &[]).is_some_and(|t| t >= 4.0));
    assert_eq!(page.sum("nfqmark_build_info", &[]), Some(1.0));

    // Control: the same scrape refuses a dashboard with a misspelled metric and label value.
    let mutated: Vec<String> = exprs
        .iter()
        .map(|e| {
            e.replace("nfqmark_marked_total", "nfqmark_mark_total")
                .replace("outcome=\"paired\"", "outcome=\"pair\"")
        })
        .collect();
    let problems = check_dashboard(&mutated, &page);
    assert!(
        problems.iter().any(|p| p.contains("nfqmark_mark_total"))
            && problems.iter().any(|p| p.contains("\"pair\"")),
        "the mutated dashboard passed: {problems:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// nfqmark top against a running daemon.
// ---------------------------------------------------------------------------------------------

/// The views `top --plain` printed, each as its lines.
fn views(out: &str) -> Vec<Vec<&str>> {
    out.split("\n\n")
        .filter(|v| v.starts_with("nfqmark "))
        .map(|v| v.lines().collect())
        .collect()
}

/// The last view `top` printed: its lines.
fn last_view(out: &str) -> Vec<&str> {
    views(out).pop().unwrap_or_default()
}

/// The first number after `key` on the line that starts with `line`.
fn figure(view: &[&str], line: &str, key: &str) -> f64 {
    let l = view
        .iter()
        .find(|l| l.starts_with(line))
        .unwrap_or_else(|| panic!("no {line} line in {view:#?}"));
    let after = l
        .split_once(key)
        .unwrap_or_else(|| panic!("no {key} in {l:?}"))
        .1;
    after
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no number after {key} in {l:?}"))
}

/// marks/s of `rule` in a view.
fn rule_marks(view: &[&str], rule: &str) -> f64 {
    let l = view
        .iter()
        .find(|l| l.ends_with(rule))
        .unwrap_or_else(|| panic!("no line for {rule} in {view:#?}"));
    l.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no marks/s in {l:?}"))
}

fn top(w: &World, args: &[&str]) -> (Option<i32>, String, String) {
    let out = w
        .router
        .command(&common::nfqmark_bin().to_string_lossy())
        .arg("top")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run nfqmark top");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `nfqmark top` in the router while both clients query: the view shows queries and pairing per
/// second above zero and the marking rule's marks; with the clients idle the same view shows
/// zeros (control), and against a port nobody serves it exits 2 naming `--metrics`.
#[test]
fn top_shows_a_running_daemons_rates() {
    if !common::require_root("ops-top") {
        return;
    }
    let (w, rule) = world("otop");
    let stop = AtomicBool::new(false);
    let port = PORT.to_string();
    let (busy, idle) = thread::scope(|s| {
        // Both clients query, 5 names each every 200 ms, until top is done: at most 150
        // rounds or 30 s.
        let load = s.spawn(|| {
            let started = Instant::now();
            let mut rounds = 0;
            while !stop.load(Ordering::Relaxed)
                && rounds < 150
                && started.elapsed() < Duration::from_secs(30)
            {
                let round = Instant::now();
                for client in [Client::A, Client::B] {
                    let _ = w.query(
                        client,
                        Family::V4,
                        &names(client, &format!("top{rounds}"), 5),
                        false,
                    );
                }
                rounds += 1;
                thread::sleep(Duration::from_millis(200).saturating_sub(round.elapsed()));
            }
            rounds
        });
        // Let the load start before the first scrape.
        thread::sleep(Duration::from_millis(500));
        let busy = top(
            &w,
            &[
                "--metrics",
                &port,
                "--count",
                "3",
                "--interval",
                "1s",
                "--plain",
            ],
        );
        stop.store(true, Ordering::Relaxed);
        let rounds = load.join().expect("load thread");
        println!("{rounds} rounds of 5 queries per client");
        // Idle: the last queries answered, nothing more sent.
        thread::sleep(Duration::from_millis(1500));
        let idle = top(
            &w,
            &["--metrics", &port, "--count", "1", "--interval", "1s"],
        );
        (busy, idle)
    });
    let (code, out, err) = busy;
    println!("{out}");
    assert_eq!(code, Some(0), "top failed: {err}");
    assert_eq!(views(&out).len(), 3, "three views:\n{out}");
    // Every view, each over one second of the clients querying.
    for view in views(&out) {
        let queries = figure(&view, "queries", "queries");
        let paired = figure(&view, "queries", "paired");
        let packets = figure(&view, "packets", "packets");
        let marks = rule_marks(&view, &rule);
        assert!(
            queries > 0.0,
            "no queries per second while clients query: {view:#?}"
        );
        assert!(
            paired > 0.0,
            "nothing paired per second while clients query: {view:#?}"
        );
        assert!(
            packets >= queries,
            "{packets} packets/s < {queries} queries/s"
        );
        assert!(
            marks > 0.0,
            "the rule {rule} shows no marks per second: {view:#?}"
        );
        assert!(
            view.iter()
                .any(|l| l.starts_with("process") && l.contains("MiB")),
            "no process line: {view:#?}"
        );
    }

    // Control: the same view with the clients idle reads zero.
    let (code, out, err) = idle;
    println!("{out}");
    assert_eq!(code, Some(0), "top failed: {err}");
    let view = last_view(&out);
    assert_eq!(figure(&view, "queries", "queries"), 0.0, "{view:#?}");
    assert_eq!(rule_marks(&view, &rule), 0.0, "{view:#?}");

    // Control: nothing listens on this port.
    let (code, out, err) = top(&w, &["--metrics", "9", "--count", "1"]);
    assert_eq!(code, Some(2), "top against a closed port: {out}{err}");
    assert!(err.contains("--metrics"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// The systemd unit's filters against what nfqmark really calls.
// ---------------------------------------------------------------------------------------------

/// `Key=` values of a unit file (every line with that key, joined).
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .flat_map(|v| v.split_whitespace().map(String::from).collect::<Vec<_>>())
        .collect()
}

/// The system calls a `SystemCallFilter` group (or name) stands for, as this machine's systemd
/// expands it, groups within groups included.
fn expand_filter(item: &str, out: &mut BTreeSet<String>, seen: &mut BTreeSet<String>) {
    if !item.starts_with('@') {
        out.insert(item.to_string());
        return;
    }
    if !seen.insert(item.to_string()) {
        return;
    }
    let listing = Command::new("systemd-analyze")
        .args(["syscall-filter", item])
        .output()
        .expect("systemd-analyze syscall-filter");
    let text = String::from_utf8_lossy(&listing.stdout);
    for line in text.lines().skip(1) {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        expand_filter(line, out, seen);
    }
}

/// System call names and socket families in an strace log (`strace -f -o`).
fn strace_calls(log: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut calls = BTreeSet::new();
    let mut families = BTreeSet::new();
    for line in log.lines() {
        // "PID name(args) = ret", or "PID <... name resumed> ...".
        let rest = line
            .trim_start()
            .split_once(' ')
            .map_or(line, |(_, r)| r)
            .trim_start();
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() && rest[name.len()..].starts_with('(') {
            if name == "socket" {
                let family: String = rest["socket(".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                families.insert(family);
            }
            calls.insert(name);
        }
    }
    (calls, families)
}

/// Files an strace log shows opened for writing or created.
fn opened_for_writing(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("open(") || l.contains("openat("))
        .filter(|l| {
            ["O_WRONLY", "O_RDWR", "O_CREAT"]
                .iter()
                .any(|f| l.contains(f))
        })
        .map(String::from)
        .collect()
}

/// What lies outside the unit's filters: calls not allowed, families not allowed.
fn outside_filters(
    calls: &BTreeSet<String>,
    families: &BTreeSet<String>,
    allowed_calls: &BTreeSet<String>,
    allowed_families: &[String],
) -> Vec<String> {
    let mut out: Vec<String> = calls
        .iter()
        .filter(|c| !allowed_calls.contains(*c))
        .map(|c| format!("system call {c}"))
        .collect();
    out.extend(
        families
            .iter()
            .filter(|f| !allowed_families.contains(f))
            .map(|f| format!("socket family {f}")),
    );
    out
}

/// The first child of `pid`.
fn child_of(pid: u32) -> Option<i32> {
    let o = Command::new("pgrep")
        .args(["-P", &pid.to_string()])
        .output()
        .ok()?;
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .find_map(|l| l.trim().parse().ok())
}

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// nfqmark under strace in a namespace of its own, through everything a service does: start
/// with rules naming an interface (the link thread), the metrics endpoint and
/// `--conntrack-info`, DNS packets through the queue, a scrape (`nfqmark top`), SIGHUP, SIGUSR1,
/// the interface renamed, deleted and created again, SIGTERM and the drain. Every call it made
/// must pass the unit's SystemCallFilter (as systemd expands it here) and every socket family
/// its RestrictAddressFamilies; the control shows the check refuses a call and a family outside.
#[test]
fn unit_filters_allow_every_call_nfqmark_makes() {
    if !common::require_root("ops-unit-filters") {
        return;
    }
    if !have("strace") || !have("systemd-analyze") {
        eprintln!(
            "ops-unit-filters: skipped: needs strace and systemd-analyze (bash .ci/run installs \
             them)"
        );
        return;
    }
    let unit = std::fs::read_to_string(repo_file("contrib/nfqmark.service")).expect("the unit");
    let mut allowed = BTreeSet::new();
    let mut seen = BTreeSet::new();
    let filter = unit_values(&unit, "SystemCallFilter");
    assert!(!filter.is_empty(), "the unit has no SystemCallFilter");
    for item in &filter {
        expand_filter(item, &mut allowed, &mut seen);
    }
    let families = unit_values(&unit, "RestrictAddressFamilies");
    assert!(allowed.len() > 100, "{filter:?} expanded to {allowed:?}");

    let ns = lab::netns::Netns::new(&lab::netns::unique_prefix("ounit")).expect("namespace");
    let dir = std::env::temp_dir().join(format!("nfqmark-ounit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let rules = dir.join("unit.rules");
    std::fs::write(
        &rules,
        "hook output oif lo proto udp dport 53 set-mark 0x7/0xff\n\
         hook output oif nfqu+ set-mark 0x8/0xff\ndefault accept\n",
    )
    .expect("rules");
    let bin = common::nfqmark_bin();
    let bin_s = bin.to_string_lossy().to_string();
    let veth = |name: &str, peer: &str| {
        ns.ip(&["link", "add", name, "type", "veth", "peer", "name", peer])
            .map(drop)
    };
    veth("nfqu0", "nfqp0").expect("veth");
    let setup = ns
        .exec(
            &bin_s,
            &[
                "setup",
                "--iptables",
                "--queue",
                &QUEUE.to_string(),
                "--rules",
                &rules.to_string_lossy(),
            ],
        )
        .expect("nfqmark setup");
    let mut restore = ns
        .command("iptables-restore")
        .arg("--noflush")
        .stdin(Stdio::piped())
        .spawn()
        .expect("iptables-restore");
    {
        use std::io::Write;
        let mut stdin = restore.stdin.take().expect("stdin");
        stdin
            .write_all(&setup.stdout)
            .expect("feed iptables-restore");
    }
    assert!(restore.wait().expect("iptables-restore").success());

    let trace = dir.join("strace.log");
    let log = std::fs::File::create(dir.join("nfqmark.log")).expect("log");
    let mut strace = lab::netns::Guarded(
        ns.command("strace")
            .args(["-f", "-qq", "-o"])
            .arg(&trace)
            .arg("--")
            .arg(&bin)
            .args(["run", "--queue", &QUEUE.to_string(), "--rules"])
            .arg(&rules)
            .args(["--metrics", &PORT.to_string(), "--conntrack-info"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("strace"),
    );
    assert!(
        lab::wait_for(Duration::from_secs(10), || ns.queue_bound(QUEUE)),
        "nfqmark did not bind its queue under strace: {}",
        std::fs::read_to_string(dir.join("nfqmark.log")).unwrap_or_default()
    );
    // `ip netns exec` execs strace, and nfqmark is strace's child.
    let pid: i32 = lab::wait_for(Duration::from_secs(5), || child_of(strace.0.id()).is_some())
        .then(|| child_of(strace.0.id()))
        .flatten()
        .expect("nfqmark's pid");
    let signal = |sig: i32| {
        // SAFETY: kill(2) on the nfqmark process this test started.
        unsafe {
            libc::kill(pid, sig);
        }
    };
    // DNS queries through the queue (nothing answers; the packets are what counts).
    let sender = ns.name().to_string();
    thread::spawn(move || -> io::Result<()> {
        lab::netns::enter(&sender)?;
        let sock = std::net::UdpSocket::bind("127.0.0.1:0")?;
        for i in 0..50u16 {
            let q = nfqmark_testkit::dns_query(i, &format!("q{i}.unit.example"));
            sock.send_to(&q, "127.0.0.1:53")?;
        }
        Ok(())
    })
    .join()
    .expect("sender thread")
    .expect("send queries");
    let scraped = ns
        .command(&bin_s)
        .args(["top", "--metrics", &PORT.to_string(), "--count", "1"])
        .args(["--interval", "200ms"])
        .output()
        .expect("top");
    assert!(scraped.status.success(), "top: {scraped:?}");
    signal(libc::SIGHUP);
    signal(libc::SIGUSR1);
    thread::sleep(Duration::from_millis(300));
    ns.ip(&["link", "set", "nfqu0", "name", "nfqu9"])
        .expect("rename");
    ns.ip(&["link", "del", "nfqu9"]).expect("delete");
    veth("nfqu0", "nfqp0").expect("veth again");
    thread::sleep(Duration::from_millis(300));
    signal(libc::SIGTERM);
    let ended = lab::wait_for(Duration::from_secs(10), || {
        strace.0.try_wait().ok().flatten().is_some()
    });
    let nfqmark_log = std::fs::read_to_string(dir.join("nfqmark.log")).unwrap_or_default();
    assert!(ended, "nfqmark did not stop under strace:\n{nfqmark_log}");
    assert!(
        nfqmark_log.contains("packets=") && nfqmark_log.contains("stopping"),
        "{nfqmark_log}"
    );
    let log = std::fs::read_to_string(&trace).expect("strace log");
    let (calls, used_families) = strace_calls(&log);
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "{} distinct system calls, families {used_families:?}; the filter allows {}",
        calls.len(),
        allowed.len()
    );
    assert!(
        calls.contains("recvmsg") || calls.contains("recvfrom"),
        "{calls:?}"
    );
    assert!(calls.contains("socket") && used_families.contains("AF_NETLINK"));
    let outside = outside_filters(&calls, &used_families, &allowed, &families);
    assert!(
        outside.is_empty(),
        "nfqmark calls what contrib/nfqmark.service forbids: {outside:?}"
    );
    // ProtectSystem=strict, PrivateTmp, UMask: nfqmark writes no file.
    let writes = opened_for_writing(&log);
    assert!(writes.is_empty(), "files opened for writing: {writes:?}");
    assert!(
        !opened_for_writing("42 openat(AT_FDCWD, \"/x\", O_WRONLY|O_CREAT, 0644) = 3").is_empty(),
        "the check misses an open for writing"
    );

    // Control: a call and a family outside the unit's filters are caught.
    let mut more_calls = calls.clone();
    more_calls.insert("init_module".into());
    let mut more_families = used_families.clone();
    more_families.insert("AF_PACKET".into());
    let outside = outside_filters(&more_calls, &more_families, &allowed, &families);
    assert_eq!(
        outside,
        ["system call init_module", "socket family AF_PACKET"],
        "the check missed a call or family outside the filters"
    );
}
