//! `nfqmark top`: a live per-second view of a running nfqmark, read from its metrics endpoint
//! (`nfqmark run --metrics`): packets, DNS queries and pairing outcomes, marks per rule, bypass
//! and kernel drops, decision time, table sizes, the process's memory and threads.
//!
//! This module owns reading the Prometheus text format (the subset nfqmark writes; a line it
//! cannot read is skipped), turning two scrapes into rates per second, and drawing the view.
//! Those are pure functions of the scraped text and the time between two scrapes, unit-tested
//! on text; [`run`] does the I/O: one HTTP GET per update over a short connection of its own,
//! with timeouts and a size cap. It must never talk to the daemon any other way (no signals, no
//! netlink, no files), so it needs no privilege beyond reaching the endpoint.

use std::fmt::{self, Write as _};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// One sample line: `name{label="value",...} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A scraped page: its samples, in page order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape {
    pub samples: Vec<Sample>,
}

/// Read one sample line; `None` for comments, blank lines and anything malformed.
pub fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = line.get(..name_end)?;
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let mut rest = line.get(name_end..)?;
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let (parsed, tail) = parse_labels(after)?;
        labels = parsed;
        rest = tail;
    }
    // The value, then an optional timestamp.
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// `key="value",...}` -> the labels and what follows the `}`.
fn parse_labels(mut s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start();
        if let Some(tail) = s.strip_prefix('}') {
            return Some((labels, tail));
        }
        let (key, after) = s.split_once('=')?;
        let key = key.trim();
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return None;
        }
        let mut chars = after.trim_start().strip_prefix('"')?.char_indices();
        let body = after.trim_start().get(1..)?;
        let mut value = String::new();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '"' => break i,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                c => value.push(c),
            }
        };
        labels.push((key.to_string(), value));
        s = body.get(end + 1..)?.trim_start();
        s = s.strip_prefix(',').unwrap_or(s);
    }
}

impl Scrape {
    pub fn parse(text: &str) -> Scrape {
        Scrape {
            samples: text.lines().filter_map(parse_line).collect(),
        }
    }

    /// The sum of the samples named `name` that carry every label in `with`; `None` when there
    /// is no such sample.
    pub fn sum(&self, name: &str, with: &[(&str, &str)]) -> Option<f64> {
        let mut found = None;
        for s in self.samples.iter().filter(|s| s.name == name) {
            if with.iter().all(|(k, v)| s.label(k) == Some(v)) {
                *found.get_or_insert(0.0) += s.value;
            }
        }
        found
    }

    /// Samples named `name`, summed by the value of `label`, in page order.
    pub fn by_label(&self, name: &str, label: &str) -> Vec<(String, f64)> {
        let mut out: Vec<(String, f64)> = Vec::new();
        for s in self.samples.iter().filter(|s| s.name == name) {
            let Some(v) = s.label(label) else { continue };
            match out.iter_mut().find(|(k, _)| k == v) {
                Some((_, sum)) => *sum += s.value,
                None => out.push((v.to_string(), s.value)),
            }
        }
        out
    }

    /// Whether this is nfqmark's page.
    pub fn is_nfqmark(&self) -> bool {
        self.samples
            .iter()
            .any(|s| s.name == "nfqmark_packets_total")
            || self.samples.iter().any(|s| s.name == "nfqmark_build_info")
    }
}

/// Per second from two readings of a counter, `secs` apart. A counter that went down was reset
/// (nfqmark restarted, or a reload restarted a rule's counters): what it counts now is all new.
pub fn rate(before: Option<f64>, now: Option<f64>, secs: f64) -> Option<f64> {
    let now = now?;
    let delta = match before {
        Some(b) if now >= b => now - b,
        _ => now,
    };
    (secs > 0.0).then(|| delta / secs)
}

/// A quantile read off a histogram.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub enum Quantile {
    /// Nothing was observed.
    #[default]
    None,
    /// About this many seconds.
    At(f64),
    /// Past the largest finite bound, this many seconds.
    Beyond(f64),
}

/// The `q` quantile of the decisions timed between two scrapes, from the histogram's buckets
/// (summed over queues), interpolated linearly inside a bucket.
pub fn quantile(before: &Scrape, now: &Scrape, q: f64) -> Quantile {
    const NAME: &str = "nfqmark_decision_seconds_bucket";
    let old = before.by_label(NAME, "le");
    let mut buckets: Vec<(f64, f64)> = now
        .by_label(NAME, "le")
        .into_iter()
        .filter_map(|(le, count)| {
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let prev = old.iter().find(|(k, _)| *k == le).map(|(_, v)| *v);
            Some((bound, rate(prev, Some(count), 1.0)?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let Some(&(_, total)) = buckets.last() else {
        return Quantile::None;
    };
    if total <= 0.0 {
        return Quantile::None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(bound, cumulative) in &buckets {
        if cumulative >= rank && cumulative > below {
            if bound.is_infinite() {
                return Quantile::Beyond(lower);
            }
            return Quantile::At(lower + (bound - lower) * (rank - below) / (cumulative - below));
        }
        lower = bound;
        below = cumulative;
    }
    Quantile::Beyond(lower)
}

/// One rule's rates.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleRate {
    pub rule: String,
    pub marks: f64,
    pub matches: f64,
}

/// Everything one update shows: rates per second over `secs`, gauges as read last.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct View {
    pub secs: f64,
    pub version: Option<String>,
    pub packets: Option<f64>,
    pub marked: Option<f64>,
    pub dns: Option<f64>,
    pub unreadable: Option<f64>,
    pub conflicts: Option<f64>,
    /// Pairing outcomes per second, in the page's order (client queries first).
    pub pairing: Vec<(String, f64)>,
    /// `None` when nfqmark cannot read its queue rules' counters.
    pub bypassed: Option<f64>,
    pub kernel_dropped: Option<f64>,
    pub user_dropped: Option<f64>,
    pub waiting: Option<f64>,
    pub decision_p50: Quantile,
    pub decision_p99: Quantile,
    pub clients_waiting: Option<f64>,
    pub upstream_waiting: Option<f64>,
    pub flows: Option<f64>,
    pub rules_loaded: Option<f64>,
    /// Busiest first.
    pub rules: Vec<RuleRate>,
    pub resident_bytes: Option<f64>,
    pub threads: Option<f64>,
    pub open_fds: Option<f64>,
}

impl View {
    /// The view of what happened between two scrapes `secs` apart.
    pub fn between(before: &Scrape, now: &Scrape, secs: f64) -> View {
        let r = |name: &str, with: &[(&str, &str)]| {
            rate(before.sum(name, with), now.sum(name, with), secs)
        };
        let old_pairing = before.by_label("nfqmark_pairing_total", "outcome");
        let pairing = now
            .by_label("nfqmark_pairing_total", "outcome")
            .into_iter()
            .filter_map(|(outcome, v)| {
                let prev = old_pairing.iter().find(|(k, _)| *k == outcome).map(|p| p.1);
                Some((outcome, rate(prev, Some(v), secs)?))
            })
            .collect();
        let old_marks = before.by_label("nfqmark_rule_marks_total", "rule");
        let old_matches = before.by_label("nfqmark_rule_matches_total", "rule");
        let matches = now.by_label("nfqmark_rule_matches_total", "rule");
        let mut rules: Vec<RuleRate> = now
            .by_label("nfqmark_rule_marks_total", "rule")
            .into_iter()
            .map(|(rule, marks)| {
                let prev =
                    |old: &[(String, f64)]| old.iter().find(|(k, _)| *k == rule).map(|p| p.1);
                let m = matches.iter().find(|(k, _)| *k == rule).map(|p| p.1);
                RuleRate {
                    marks: rate(prev(&old_marks), Some(marks), secs).unwrap_or(0.0),
                    matches: rate(prev(&old_matches), m, secs).unwrap_or(0.0),
                    rule,
                }
            })
            .collect();
        rules.sort_by(|a, b| {
            b.marks
                .total_cmp(&a.marks)
                .then(b.matches.total_cmp(&a.matches))
        });
        let accounting = now.sum("nfqmark_bypass_accounting", &[]) == Some(1.0);
        let version = now
            .samples
            .iter()
            .find(|s| s.name == "nfqmark_build_info")
            .and_then(|s| s.label("version"))
            .map(String::from);
        let gauge = |name: &str, with: &[(&str, &str)]| now.sum(name, with);
        View {
            secs,
            version,
            packets: r("nfqmark_packets_total", &[]),
            marked: r("nfqmark_marked_total", &[]),
            dns: r("nfqmark_dns_messages_total", &[]),
            unreadable: match (
                r("nfqmark_parse_errors_total", &[]),
                r("nfqmark_dns_errors_total", &[]),
            ) {
                (Some(a), Some(b)) => Some(a + b),
                (a, b) => a.or(b),
            },
            conflicts: r("nfqmark_connection_conflicts_total", &[]),
            pairing,
            bypassed: if accounting {
                r("nfqmark_bypassed_total", &[])
            } else {
                None
            },
            kernel_dropped: r("nfqmark_kernel_queue_dropped_total", &[]),
            user_dropped: r("nfqmark_kernel_user_dropped_total", &[]),
            waiting: gauge("nfqmark_kernel_queue_waiting", &[]),
            decision_p50: quantile(before, now, 0.5),
            decision_p99: quantile(before, now, 0.99),
            clients_waiting: gauge("nfqmark_pairing_entries", &[("table", "clients")]),
            upstream_waiting: gauge("nfqmark_pairing_entries", &[("table", "upstream")]),
            flows: gauge("nfqmark_flows_entries", &[]),
            rules_loaded: gauge("nfqmark_rules_loaded", &[]),
            rules,
            resident_bytes: gauge("process_resident_memory_bytes", &[]),
            threads: gauge("process_threads", &[]),
            open_fds: gauge("process_open_fds", &[]),
        }
    }

    /// The view as text: a few lines of rates, then the `rules` busiest rules.
    pub fn render(&self, endpoint: &str, rules: usize) -> String {
        let mut o = String::with_capacity(2048);
        let _ = writeln!(
            o,
            "nfqmark {} at {endpoint}: per second over the last {:.1} s",
            self.version.as_deref().unwrap_or("?"),
            self.secs
        );
        let _ = writeln!(
            o,
            "packets  {:>9}   marked {:>9}   DNS {:>9}   unreadable {}   conflicts {}",
            Num(self.packets),
            Num(self.marked),
            Num(self.dns),
            Num(self.unreadable),
            Num(self.conflicts)
        );
        let get = |k: &str| {
            self.pairing
                .iter()
                .find(|(outcome, _)| outcome == k)
                .map(|p| p.1)
        };
        let _ = writeln!(
            o,
            "queries  {:>9}   paired {:>9}   ambiguous {}   unpaired {}   expired {}   evicted {}   over quota {}",
            Num(get("client_query")),
            Num(get("paired")),
            Num(get("ambiguous")),
            Num(get("unpaired")),
            Num(get("expired")),
            Num(get("evicted")),
            Num(get("over_quota")),
        );
        let _ = writeln!(
            o,
            "tcp      intents {}   opened {}   by socket {}   ambiguous {}   unpaired {}",
            Num(get("tcp_intent")),
            Num(get("tcp_opened")),
            Num(get("tcp_by_socket")),
            Num(get("tcp_ambiguous")),
            Num(get("tcp_unpaired")),
        );
        let _ = writeln!(
            o,
            "by name  own name {}   ancestor {}   derived {}   forwarded queries {}",
            Num(get("by_own_name")),
            Num(get("by_ancestor")),
            Num(get("by_derived")),
            Num(get("forwarded_query")),
        );
        let bypassed = match self.bypassed {
            Some(v) => Num(Some(v)).to_string(),
            None => "n/a (the queue rules' counters are not readable)".to_string(),
        };
        let _ = writeln!(
            o,
            "bypass   {bypassed}   kernel drops: queue full {}   socket full {}   waiting {}",
            Num(self.kernel_dropped),
            Num(self.user_dropped),
            Count(self.waiting),
        );
        let _ = writeln!(
            o,
            "decision p50 {}   p99 {}   (a random sample of the packets)",
            self.decision_p50, self.decision_p99
        );
        let _ = writeln!(
            o,
            "tables   clients waiting {}   upstream waiting {}   learned flows {}",
            Count(self.clients_waiting),
            Count(self.upstream_waiting),
            Count(self.flows),
        );
        let _ = writeln!(
            o,
            "process  RSS {}   threads {}   open fds {}",
            Bytes(self.resident_bytes),
            Count(self.threads),
            Count(self.open_fds),
        );
        match self.rules_loaded {
            Some(n) if n > 0.0 => {
                let _ = writeln!(
                    o,
                    "rules    {} loaded; the busiest {}:\n{:>10} {:>10}  rule",
                    Count(Some(n)),
                    rules.min(self.rules.len()),
                    "marks/s",
                    "matches/s"
                );
                for r in self.rules.iter().take(rules) {
                    let _ = writeln!(
                        o,
                        "{:>10} {:>10}  {}",
                        Num(Some(r.marks)).to_string(),
                        Num(Some(r.matches)).to_string(),
                        r.rule
                    );
                }
            }
            _ => {
                let _ = writeln!(o, "rules    none loaded (DNS pairing only)");
            }
        }
        o
    }
}

/// A rate: one decimal, `-` when the page lacks it.
struct Num(Option<f64>);

impl fmt::Display for Num {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(v) => f.pad(&format!("{v:.1}")),
            None => f.pad("-"),
        }
    }
}

/// A gauge that counts things.
struct Count(Option<f64>);

impl fmt::Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(v) => f.pad(&format!("{v:.0}")),
            None => f.pad("-"),
        }
    }
}

struct Bytes(Option<f64>);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(v) if v >= 1024.0 * 1024.0 => write!(f, "{:.1} MiB", v / (1024.0 * 1024.0)),
            Some(v) => write!(f, "{:.0} KiB", v / 1024.0),
            None => f.write_str("-"),
        }
    }
}

/// A time in seconds, in the unit that suits it.
fn duration(secs: f64) -> String {
    if secs < 1e-6 {
        format!("{:.0} ns", secs * 1e9)
    } else if secs < 1e-3 {
        format!("{:.1} µs", secs * 1e6)
    } else {
        format!("{:.1} ms", secs * 1e3)
    }
}

impl fmt::Display for Quantile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Quantile::At(s) => f.write_str(&duration(s)),
            Quantile::None => f.write_str("-"),
            Quantile::Beyond(bound) => write!(f, "> {}", duration(bound)),
        }
    }
}

/// What `nfqmark top` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    pub endpoint: SocketAddr,
    pub interval: Duration,
    /// Updates before stopping; `None`: until interrupted.
    pub count: Option<u64>,
    /// Rules shown.
    pub rules: usize,
    /// Redraw the screen for each update (a terminal) instead of printing one below the other.
    pub redraw: bool,
}

/// Why `top` stopped.
#[derive(Debug)]
pub enum Error {
    /// The first scrape failed: nothing to show.
    Unreachable(SocketAddr, String),
    /// The endpoint answered with something that is not nfqmark's page.
    NotNfqmark(SocketAddr),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Unreachable(addr, e) => write!(
                f,
                "cannot read http://{addr}/metrics: {e} (is nfqmark running with `--metrics \
                 {addr}`? give its address with --metrics ADDR:PORT)"
            ),
            Error::NotNfqmark(addr) => write!(
                f,
                "http://{addr}/metrics answered, but not with nfqmark's metrics (give the \
                 address of `nfqmark run --metrics` with --metrics ADDR:PORT)"
            ),
        }
    }
}

impl std::error::Error for Error {}

/// Longest a scrape may take, connection included.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Largest page read (a page with a 100,000-rule file is about 15 MB).
const MAX_PAGE: usize = 64 << 20;

/// The body of an HTTP response, or what was wrong with it.
pub fn response_body(raw: &[u8]) -> Result<&str, String> {
    let text = std::str::from_utf8(raw).map_err(|_| "the answer is not UTF-8".to_string())?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| "the answer has no end of headers".to_string())?;
    let status = head.lines().next().unwrap_or_default();
    let code = status.split_whitespace().nth(1);
    if !status.starts_with("HTTP/1.") || code.is_none() {
        return Err(format!("not an HTTP answer: {status:?}"));
    }
    if code != Some("200") {
        return Err(format!("the endpoint answered {status:?}"));
    }
    Ok(body)
}

/// GET /metrics from `addr`: one connection, bounded in time and size.
pub fn fetch(addr: SocketAddr) -> Result<String, String> {
    let deadline = Instant::now() + TIMEOUT;
    let mut conn = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| e.to_string())?;
    let request = format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\nAccept: text/plain\r\n\r\n");
    conn.set_write_timeout(Some(TIMEOUT))
        .and_then(|()| conn.write_all(request.as_bytes()))
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no complete answer within {} s", TIMEOUT.as_secs()));
        }
        conn.set_read_timeout(Some(left))
            .map_err(|e| e.to_string())?;
        match conn.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                raw.extend_from_slice(chunk.get(..n).unwrap_or_default());
                if raw.len() > MAX_PAGE {
                    return Err(format!("the page is larger than {} MiB", MAX_PAGE >> 20));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    response_body(&raw).map(String::from)
}

/// Clear the terminal and put the cursor top left.
const CLEAR: &str = "\x1b[H\x1b[2J";

/// Scrape, wait, scrape again and show what changed, `count` times or until interrupted (or
/// until `out` is closed: `nfqmark top | head` ends quietly). A scrape that fails after the
/// first is shown and retried at the next update.
pub fn run(opts: &Options, out: &mut impl Write) -> Result<(), Error> {
    let addr = opts.endpoint;
    let first = fetch(addr).map_err(|e| Error::Unreachable(addr, e))?;
    let mut before = Scrape::parse(&first);
    if !before.is_nfqmark() {
        return Err(Error::NotNfqmark(addr));
    }
    let mut at = Instant::now();
    let mut shown = 0u64;
    while opts.count.is_none_or(|c| shown < c) {
        std::thread::sleep(opts.interval.saturating_sub(at.elapsed()));
        let text = match fetch(addr) {
            Ok(page) => {
                let now = Scrape::parse(&page);
                let secs = at.elapsed().as_secs_f64();
                at = Instant::now();
                let view = View::between(&before, &now, secs);
                before = now;
                view.render(&addr.to_string(), opts.rules)
            }
            Err(e) => format!("cannot read http://{addr}/metrics: {e}; trying again\n"),
        };
        let frame = if opts.redraw {
            format!("{CLEAR}{text}")
        } else if shown > 0 {
            format!("\n{text}")
        } else {
            text
        };
        if out
            .write_all(frame.as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            return Ok(());
        }
        shown += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{QueueSnapshot, RuleSnapshot, Snapshot, render};

    #[test]
    fn sample_lines_parse_with_labels_escapes_and_timestamps() {
        assert_eq!(
            parse_line(r#"nfqmark_rule_marks_total{rule="a \"b\".rules:3",x="\\"} 4"#),
            Some(Sample {
                name: "nfqmark_rule_marks_total".into(),
                labels: vec![
                    ("rule".into(), "a \"b\".rules:3".into()),
                    ("x".into(), "\\".into())
                ],
                value: 4.0
            })
        );
        let s = parse_line("process_cpu_seconds_total 1.25 1712345678000").expect("timestamp");
        assert_eq!(
            (s.name.as_str(), s.value),
            ("process_cpu_seconds_total", 1.25)
        );
        let s = parse_line(r#"x_bucket{le="+Inf",} +Inf"#).expect("trailing comma");
        assert_eq!(s.label("le"), Some("+Inf"));
        assert!(s.value.is_infinite());
        let s = parse_line(r#"y{a="1, b=\"2\"}"} 7"#).expect("comma and brace in a value");
        assert_eq!(s.label("a"), Some("1, b=\"2\"}"));
        for junk in [
            "",
            "# HELP x y",
            "{a=\"b\"} 1",
            "9x 1",
            "x{a=\"b\" 1",
            "x{a=b} 1",
            "x{=\"b\"} 1",
            "x",
            "x{a=\"b\"}",
            "x one",
            "x{a=\"unterminated} 1",
        ] {
            assert_eq!(parse_line(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn random_lines_never_panic() {
        let mut seed = 0x2545_f491_u32;
        let alphabet = b"ab_{}=\",\\ 0.9+Inf#\n";
        for _ in 0..20_000 {
            let mut line = String::new();
            for _ in 0..(seed % 24) {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                line.push(char::from(alphabet[(seed as usize) % alphabet.len()]));
            }
            let _ = parse_line(&line);
        }
    }

    #[test]
    fn rates_treat_a_counter_that_went_down_as_reset() {
        assert_eq!(rate(Some(10.0), Some(30.0), 2.0), Some(10.0));
        assert_eq!(rate(Some(50.0), Some(4.0), 2.0), Some(2.0));
        assert_eq!(rate(None, Some(4.0), 1.0), Some(4.0));
        assert_eq!(rate(Some(4.0), None, 1.0), None);
        assert_eq!(rate(Some(1.0), Some(2.0), 0.0), None);
    }

    fn page(client_queries: u64, paired: u64, marks: u64, times: &[u64]) -> Scrape {
        let h = crate::stats::DecisionTimes::default();
        for &ns in times {
            h.observe(Duration::from_nanos(ns));
        }
        let mut s = Snapshot {
            queues: vec![QueueSnapshot {
                num: 0,
                packets: client_queries * 4,
                marked: marks,
                decision_time: h.snapshot(),
                ..QueueSnapshot::default()
            }],
            rules: vec![
                RuleSnapshot {
                    rule: "/etc/nfqmark/nfqmark.rules:3".into(),
                    matches: marks * 2,
                    marks,
                },
                RuleSnapshot {
                    rule: "/etc/nfqmark/nfqmark.rules:9".into(),
                    matches: 1,
                    marks: 0,
                },
            ],
            rules_loaded: 2,
            bypassed: Some(5),
            ..Snapshot::default()
        };
        s.pairing.client_queries = client_queries;
        s.pairing.paired = paired;
        let mut text = crate::metrics::render_build_info();
        text.push_str(&render(&s));
        text.push_str(&crate::metrics::process::render(
            &crate::metrics::process::combine(None, Some(12), None, None, 4096, 100),
        ));
        Scrape::parse(&text)
    }

    #[test]
    fn the_view_of_two_real_pages_shows_rates_busiest_rules_first_and_quantiles() {
        let before = page(100, 90, 40, &[200; 10]);
        let mut times = vec![200; 10];
        times.extend([300; 98]);
        times.extend([2_000_000; 2]);
        let now = page(300, 280, 140, &times);
        let v = View::between(&before, &now, 2.0);
        assert_eq!(v.packets, Some(400.0));
        assert_eq!(v.marked, Some(50.0));
        assert_eq!(v.version.as_deref(), Some(env!("CARGO_PKG_VERSION")));
        assert!(v.pairing.contains(&("client_query".into(), 100.0)));
        assert!(v.pairing.contains(&("paired".into(), 95.0)));
        assert_eq!(v.bypassed, Some(0.0));
        assert_eq!(v.open_fds, Some(12.0));
        assert_eq!(
            v.rules.first(),
            Some(&RuleRate {
                rule: "/etc/nfqmark/nfqmark.rules:3".into(),
                marks: 50.0,
                matches: 100.0
            })
        );
        // 100 timed in the interval: 98 in (250 ns, 500 ns], 2 past 1 ms.
        let Quantile::At(p50) = v.decision_p50 else {
            panic!("p50 {:?}", v.decision_p50)
        };
        assert!((2.5e-7..=5e-7).contains(&p50), "{p50}");
        assert_eq!(v.decision_p99, Quantile::Beyond(1e-3));
        let text = v.render("127.0.0.1:9120", 1);
        assert!(
            text.contains("queries      100.0   paired      95.0"),
            "{text}"
        );
        assert!(text.contains("p99 > 1.0 ms"), "{text}");
        assert!(text.contains("2 loaded; the busiest 1:"), "{text}");
        assert!(
            text.contains("      50.0      100.0  /etc/nfqmark/nfqmark.rules:3"),
            "{text}"
        );
        assert!(!text.contains("rules:9"), "{text}");
    }

    #[test]
    fn nothing_timed_and_no_accounting_show_as_such() {
        let mut before = page(1, 1, 0, &[]);
        let mut now = page(1, 1, 0, &[]);
        for s in [&mut before, &mut now] {
            s.samples.retain(|x| x.name != "nfqmark_bypass_accounting");
        }
        let v = View::between(&before, &now, 1.0);
        assert_eq!(v.decision_p50, Quantile::None);
        assert_eq!(v.bypassed, None);
        let text = v.render("x", 10);
        assert!(text.contains("decision p50 -   p99 -"), "{text}");
        assert!(text.contains("bypass   n/a"), "{text}");
    }

    #[test]
    fn http_answers_other_than_200_are_errors() {
        assert_eq!(
            response_body(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nx 1\n"),
            Ok("x 1\n")
        );
        assert!(
            response_body(b"HTTP/1.1 404 Not Found\r\n\r\nno")
                .unwrap_err()
                .contains("404")
        );
        assert!(response_body(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(response_body(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(response_body(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn a_closed_port_is_an_error_naming_the_option() {
        // Bind and drop: the port is very likely closed afterwards.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let opts = Options {
            endpoint: addr,
            interval: Duration::from_millis(100),
            count: Some(1),
            rules: 10,
            redraw: false,
        };
        let e = run(&opts, &mut Vec::new()).expect_err("nothing listens");
        assert!(e.to_string().contains("--metrics"), "{e}");
    }
}
