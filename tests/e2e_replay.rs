//! End to end: `nfqmark replay` on captures recorded in the lab decides as the daemon decided
//! for the same traffic.
//!
//! The router of the lab (see `nfqmark::lab`) runs the resolver and nfqmark while tcpdump
//! records every DNS packet on every interface of the router (`tcpdump -i any`, the capture
//! the docs recommend). Clients A (marked 137 by the dnsmasq README's rules) and B query. The
//! daemon's decisions are observable: the upstream host's sniffer records the link every
//! upstream query arrived on (link 2 exactly when it carried mark 137), and the daemon's
//! counters. Replay of the capture, told only what a capture cannot show (client A's mark,
//! `--client-mark`), must give every upstream query the mark its link shows and end with the
//! daemon's counters.
//!
//! A second capture records the packets as netfilter hands them to the queue: NFLOG rules just
//! before nfqmark's queue rules (`tcpdump -i nflog:5`), with hook, interfaces and mark, so its
//! replay needs no `--client-mark`; it must agree with the daemon the same way.
//!
//! Controls: the `-i any` capture replayed without `--client-mark` disagrees with the sniffer
//! on every one of client A's upstream queries, and the NFLOG capture replayed with every packet
//! forced to INPUT (`--hook input`) has no upstream query at all: the comparisons can fail.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a step that fails fails the test, loudly and at once"
)]

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use nfqmark_lab::netns::Guarded;
use nfqmark_lab::{self as lab, Client, Family, Options, Resolver, World};

const PER_CLIENT: usize = 12;

/// The counters the daemon and the replay must agree on: everything the decisions move.
const COMPARED: &[&str] = &[
    "packets",
    "marked",
    "accepted",
    "dropped",
    "dns",
    "dns_errors",
    "not_dns",
    "conn_conflicts",
    "client_queries",
    "paired",
    "ambiguous",
    "by_own_name",
    "by_ancestor",
    "by_derived",
    "unpaired",
    "upstream_answers",
    "client_answers",
    "tcp_intents",
    "tcp_opened",
    "tcp_ambiguous",
    "tcp_unpaired",
];

fn counter(line: &str, key: &str) -> Option<u64> {
    line.split([' ', '"'])
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
}

/// A field of one of replay's JSON lines, as written (strings with their quotes).
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let pat = format!("\"{key}\":");
    let Some(start) = line.find(&pat) else {
        return "";
    };
    let rest = &line[start + pat.len()..];
    if let Some(body) = rest.strip_prefix('"') {
        let end = body.find('"').map_or(rest.len(), |j| j + 2);
        return &rest[..end];
    }
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    &rest[..end]
}

/// NFLOG group of the queue-side capture.
const NFLOG_GROUP: &str = "5";

/// NFLOG rules just before nfqmark's queue rules (which `start_nfqmark` installed): the packets
/// as netfilter hands them to the queue, with hook, interfaces and mark.
fn log_queued_packets(world: &World) {
    for tool in ["iptables", "ip6tables"] {
        let mut rules: Vec<Vec<&str>> = vec![vec![
            "-t", "raw", "-I", "OUTPUT", "-p", "udp", "--dport", "53",
        ]];
        for chain in ["NFQMARK-DNS-IN", "NFQMARK-DNS-OUT"] {
            for proto in ["udp", "tcp"] {
                for dir in ["--dport", "--sport"] {
                    rules.push(vec!["-t", "mangle", "-I", chain, "-p", proto, dir, "53"]);
                }
            }
        }
        for mut r in rules {
            // In NFQMARK-DNS-OUT the resolver's UDP queries are not queued (raw is): skip them.
            if r.contains(&"NFQMARK-DNS-OUT") && r.contains(&"udp") && r.contains(&"--dport") {
                continue;
            }
            r.extend(["-j", "NFLOG", "--nflog-group", NFLOG_GROUP]);
            world.router_iptables(tool, &r).expect("NFLOG rule");
        }
    }
}

/// tcpdump on every interface of the router (or on the NFLOG group: `nflog`), writing `path`
/// packet by packet.
fn start_capture(world: &World, path: &Path, nflog: bool) -> Guarded {
    let log = std::fs::File::create(path.with_extension("log")).expect("tcpdump log");
    let iface = if nflog {
        format!("nflog:{NFLOG_GROUP}")
    } else {
        "any".to_string()
    };
    let filter: &[&str] = if nflog { &[] } else { &["port", "53"] };
    let child = world
        .router
        .command("tcpdump")
        // --immediate-mode: without it libpcap reads the interface capture in blocks that
        // the kernel hands over only when full or after a timeout, and what is still in
        // the ring when tcpdump is stopped is counted ("received by filter") but never
        // written: on a slow machine, the whole capture. Immediate mode gives the ring one
        // slot per snapshot length, so a lab-sized snapshot (its DNS messages are far
        // smaller) and a 16 MiB ring (-B, KiB) keep a burst of queries from overflowing it.
        .args(["-i", &iface, "-n", "--immediate-mode", "-U"])
        .args(["-s", "4096", "-B", "16384", "-w"])
        .arg(path)
        .args(filter)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start tcpdump (package tcpdump)");
    let guard = Guarded(child);
    let started = lab::wait_for(Duration::from_secs(5), || {
        std::fs::read_to_string(path.with_extension("log"))
            .is_ok_and(|t| t.contains("listening on"))
    });
    assert!(started, "tcpdump did not start");
    guard
}

/// Stop tcpdump; it writes what it still holds and exits. The kernel hands NFLOG messages over
/// in batches, flushed at the latest after a second: wait for the last batch first. A capture
/// that lost packets (tcpdump's own figures: fewer captured than received by the filter) is
/// a broken test run, not a finding about replay.
fn stop_capture(mut tcpdump: Guarded, path: &Path, nflog: bool) {
    thread::sleep(Duration::from_millis(if nflog { 2_000 } else { 300 }));
    tcpdump.terminate(Duration::from_secs(3));
    let log = std::fs::read_to_string(path.with_extension("log")).unwrap_or_default();
    println!("tcpdump: {}", log.trim());
    let figure = |what: &str| -> Option<u64> {
        log.lines()
            .find(|l| l.ends_with(what))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
    };
    let (captured, received) = (
        figure("packets captured"),
        figure("packets received by filter"),
    );
    assert!(
        captured.is_some() && captured == received,
        "tcpdump on {} lost packets: captured {captured:?}, received by filter {received:?}",
        path.display()
    );
}

/// `nfqmark replay --json` of a capture; its lines.
fn replay(capture: &Path, extra: &[String]) -> Vec<String> {
    let out = Command::new(common::nfqmark_bin())
        .arg("replay")
        .arg(capture)
        .arg("--json")
        .args(extra)
        .output()
        .expect("run nfqmark replay");
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("replay notes: {}", stderr.trim());
    assert!(out.status.success(), "replay failed: {stderr}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Upstream queries by (name, id): whether they carried mark 137, per replay.
fn replay_marks(lines: &[String]) -> HashMap<(String, u16), bool> {
    lines
        .iter()
        .filter(|l| field(l, "role") == "\"upstream-query\"")
        .filter_map(|l| {
            let name = field(l, "qname").trim_matches('"').trim_end_matches('.');
            let id = field(l, "id").parse().ok()?;
            let mark: u32 = field(l, "mark").parse().ok()?;
            Some(((name.to_string(), id), mark == lab::MARK_A))
        })
        .collect()
}

/// Disagreements between replay and the sniffer: an upstream query the sniffer saw on a link
/// whose mark replay says otherwise, or did not see at all.
fn disagreements(world: &World, marks: &HashMap<(String, u16), bool>, label: &str) -> Vec<String> {
    let mut bad = Vec::new();
    let seen = world.sniffer.seen();
    let mut found = 0;
    for s in seen.iter().filter(|s| s.accepted && s.name.contains(label)) {
        found += 1;
        let cheap = s.link == "link2";
        match marks.get(&(s.name.clone(), s.id)) {
            Some(&marked) if marked == cheap => {}
            Some(&marked) => bad.push(format!(
                "{} id {}: arrived over {}, replay says {}",
                s.name,
                s.id,
                s.link,
                if marked { "marked" } else { "unmarked" }
            )),
            None => bad.push(format!(
                "{} id {}: arrived over {}, not an upstream query in the replay",
                s.name, s.id, s.link
            )),
        }
    }
    assert!(
        found >= 2 * PER_CLIENT,
        "the sniffer saw {found} upstream queries"
    );
    bad
}

fn replay_decides_as_the_daemon(resolver: Resolver, tag: &str, rounds: &[(Family, bool)]) {
    if !common::require_root(tag) {
        return;
    }
    if let Err(missing) = lab::check_programs(&[("tcpdump", "tcpdump")]) {
        panic!("{tag}: {missing}");
    }
    let mut options = Options::new(tag, resolver, Some(common::nfqmark_bin()));
    options.queue = 5;
    let mut world = World::build(options).expect("build the lab");
    let capture = world.path("router.pcap");
    let tcpdump = start_capture(&world, &capture, false);
    world.start_nfqmark().expect("start nfqmark");
    log_queued_packets(&world);
    let logged = world.path("queued.pcap");
    let nflog = start_capture(&world, &logged, true);
    let mut labels = Vec::new();
    let mut started = None;
    for &(family, tcp) in rounds {
        if started != Some(family) {
            world.start_resolver(family).expect("start the resolver");
            started = Some(family);
        }
        let label = format!(
            "{}{}",
            match family {
                Family::V4 => "v4",
                Family::V6 => "v6",
            },
            if tcp { "tcp" } else { "udp" }
        );
        let names = |c: Client| -> Vec<String> {
            (0..PER_CLIENT)
                .map(|i| format!("{}-{i}-{label}-r.nfqm.example", c.letter()))
                .collect()
        };
        let (a, b) = (names(Client::A), names(Client::B));
        let (ra, rb) = thread::scope(|s| {
            let ra = s.spawn(|| world.query(Client::A, family, &a, tcp));
            let rb = s.spawn(|| world.query(Client::B, family, &b, tcp));
            (ra.join(), rb.join())
        });
        let ra = ra.expect("client A").expect("dig A");
        let rb = rb.expect("client B").expect("dig B");
        println!("{label}: answered A {}, B {}", ra.answered, rb.answered);
        labels.push(label);
    }
    thread::sleep(Duration::from_millis(300));
    let daemon = world.nfqmark_counters();
    stop_capture(tcpdump, &capture, false);
    stop_capture(nflog, &logged, true);
    let log = world.stop_nfqmark();
    println!("daemon: {daemon}");

    // The router's interface names, so the replay's table names them.
    let mut iface_args = Vec::new();
    for dev in ["ca", "cb", "link1", "link2"] {
        let index = world.router.ifindex(dev).expect("ifindex");
        iface_args.extend(["--iface".to_string(), format!("{index}={dev}")]);
    }
    let mut marked_args = iface_args.clone();
    for a in [lab::addr::A_V4, lab::addr::A_V6] {
        marked_args.extend(["--client-mark".to_string(), format!("{a}=137")]);
    }

    let lines = replay(&capture, &marked_args);
    let summary = lines.last().cloned().unwrap_or_default();
    println!("replay: {summary}");
    let marks = replay_marks(&lines);
    let mut failures = Vec::new();
    for label in &labels {
        for d in disagreements(&world, &marks, label) {
            failures.push(d);
        }
    }
    for key in COMPARED {
        let (d, r) = (counter(&daemon, key), counter(&summary, key));
        if d.is_none() || d != r {
            failures.push(format!("counter {key}: daemon {d:?}, replay {r:?}"));
        }
    }
    // Every upstream query of client A carried the mark in the replay's view too.
    let a_marked = marks
        .iter()
        .filter(|((name, _), m)| name.starts_with("a-") && **m)
        .count();
    assert!(
        a_marked >= PER_CLIENT * labels.len(),
        "replay marked {a_marked} of client A's upstream queries"
    );
    assert!(
        failures.is_empty(),
        "replay differs from the daemon:\n{}\ndaemon log:\n{log}",
        failures.join("\n")
    );

    // The NFLOG capture holds hooks, interfaces and marks: no --client-mark needed.
    let lines = replay(&logged, &iface_args);
    let summary = lines.last().cloned().unwrap_or_default();
    println!("replay of the NFLOG capture: {summary}");
    let marks = replay_marks(&lines);
    let mut failures = Vec::new();
    for label in &labels {
        failures.extend(disagreements(&world, &marks, label));
    }
    for key in COMPARED {
        let (d, r) = (counter(&daemon, key), counter(&summary, key));
        if d.is_none() || d != r {
            failures.push(format!("counter {key}: daemon {d:?}, replay {r:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "replay of the NFLOG capture differs from the daemon:\n{}",
        failures.join("\n")
    );
    // Control for it: every packet forced to INPUT, no upstream query is one.
    let lines = replay(&logged, &["--hook".to_string(), "input".to_string()]);
    assert!(
        replay_marks(&lines).is_empty(),
        "control: upstream queries at INPUT"
    );

    // Control: without client A's mark (a capture has no marks), replay disagrees with what
    // the daemon did for every one of A's upstream queries.
    let lines = replay(&capture, &iface_args);
    let marks = replay_marks(&lines);
    let mut wrong = 0;
    for label in &labels {
        wrong += disagreements(&world, &marks, label).len();
    }
    assert!(
        wrong >= PER_CLIENT * labels.len(),
        "control: only {wrong} disagreements without --client-mark"
    );
}

#[test]
fn replay_of_dnsmasq_udp_decides_as_the_daemon() {
    replay_decides_as_the_daemon(
        Resolver::Dnsmasq,
        "rpdnsmasq",
        &[(Family::V4, false), (Family::V6, false)],
    );
}

#[test]
fn replay_of_unbound_udp_and_tcp_decides_as_the_daemon() {
    replay_decides_as_the_daemon(
        Resolver::Unbound,
        "rpunbound",
        &[(Family::V4, false), (Family::V4, true)],
    );
}
