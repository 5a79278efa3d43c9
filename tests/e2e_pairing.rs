//! End to end: a marked client's DNS queries make the resolver's upstream queries carry the
//! client's mark, so policy routing sends them over the cheap link, with dnsmasq (without
//! `--conntrack`) and with unbound, over UDP and TCP, IPv4 and IPv6.
//!
//! The world (see `nfqmark_lab`): clients A and B, a router running the resolver and nfqmark,
//! an upstream DNS host over two links. Client A is marked 137 by the dnsmasq README's rules;
//! `ip rule fwmark 137` routes the upstream server via link 2. The upstream host records the
//! link every query arrived on: all of client A's must come over link 2, none of client B's.
//!
//! The tests run in the lab's real multi-WAN layout (each uplink masquerades, the upstream host
//! drops foreign sources; a query counts on a link when the upstream host accepted it there),
//! and those that failed there first also in the idealized layout (`*_ideal`). Tests that fail
//! on today's nfqmark are ignored with what fails, measured (issue 11). The strict form of each
//! case, with a control run and exact counts, is in `tests/e2e_multiwan.rs`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a step that fails fails the test, loudly and at once"
)]

mod common;

use std::thread;
use std::time::Duration;

use nfqmark_lab::{self as lab, Client, Family, LinkCounts, Network, Options, Resolver, World};

/// Queries per client per round (each name unique, so each causes an upstream query).
const PER_CLIENT: usize = 24;
/// Of those, names the upstream answers truncated over UDP (forcing a retry over TCP).
const TRUNCATED: usize = 4;

fn names(client: Client, label: &str) -> Vec<String> {
    (0..PER_CLIENT)
        .map(|i| {
            let tc = if i < TRUNCATED { "tc-" } else { "" };
            format!("{}-{tc}{i}-{label}.nfqm.example", client.letter())
        })
        .collect()
}

/// An upstream TCP retry of a name first asked upstream over UDP and truncated: the resolver
/// may carry it on a TCP connection it opened for the other client (unbound and kresd reuse one
/// connection to the server), where it keeps that connection's mark (documented; counted as a
/// conflict). A name a forwarder sends over TCP from the start (dnsmasq, for a client's TCP
/// query) is no retry: it counts with the others.
fn is_retry(s: &lab::sniffer::Seen, asked_over_udp: &std::collections::BTreeSet<String>) -> bool {
    s.proto == lab::sniffer::Transport::Tcp
        && s.name.contains("-tc-")
        && asked_over_udp.contains(&s.name)
}

/// Where the upstream queries of a round went, except the TCP retries of truncated names; those
/// separately; and how many of each client's queries were answered.
fn round(world: &World, family: Family, tcp: bool) -> (LinkCounts, LinkCounts, usize, usize) {
    let label = format!(
        "{}{}",
        match family {
            Family::V4 => "v4",
            Family::V6 => "v6",
        },
        if tcp { "tcp" } else { "udp" }
    );
    world.sniffer.clear();
    let a_names = names(Client::A, &label);
    let b_names = names(Client::B, &label);
    let (a, b) = thread::scope(|s| {
        let a = s.spawn(|| world.query(Client::A, family, &a_names, tcp));
        let b = s.spawn(|| world.query(Client::B, family, &b_names, tcp));
        (a.join(), b.join())
    });
    let a = a.expect("client A thread").expect("client A dig");
    let b = b.expect("client B thread").expect("client B dig");
    // Let the last packets reach the sniffer.
    thread::sleep(Duration::from_millis(300));
    let over_udp: std::collections::BTreeSet<String> = world
        .sniffer
        .seen()
        .into_iter()
        .filter(|s| s.proto == lab::sniffer::Transport::Udp)
        .map(|s| s.name)
        .collect();
    (
        LinkCounts::from_sniffer_where(&world.sniffer, &label, |s| !is_retry(s, &over_udp)),
        LinkCounts::from_sniffer_where(&world.sniffer, &label, |s| is_retry(s, &over_udp)),
        a.answered,
        b.answered,
    )
}

fn carries_marks(resolver: Resolver, tag: &str, network: Network) {
    if !common::require_root(tag) {
        return;
    }
    let mut options = Options::new(tag, resolver, Some(common::nfqmark_bin()));
    options.queue = 7;
    options.network = network;
    options.nfqmark_args = vec!["--metrics".into(), "9120".into()];
    let mut world = World::build(options).expect("build the lab");
    world.start_nfqmark().expect("start nfqmark");
    let mut failures = Vec::new();
    let mut misplaced = 0;
    for family in [Family::V4, Family::V6] {
        world.start_resolver(family).expect("start the resolver");
        for tcp in [false, true] {
            let (counts, retries, a_answered, b_answered) = round(&world, family, tcp);
            let what = format!("{resolver} {family} {}", if tcp { "TCP" } else { "UDP" });
            println!(
                "{what}: {counts}; answered A {a_answered}/{PER_CLIENT}, B {b_answered}/{PER_CLIENT}"
            );
            println!("{what}: TCP retries of truncated names: {retries}");
            if counts.a_link2 != PER_CLIENT || counts.a_link1 != 0 {
                failures.push(format!("{what}: client A's upstream queries: {counts}"));
            }
            if counts.b_link2 != 0 || counts.b_link1 != PER_CLIENT {
                failures.push(format!("{what}: client B's upstream queries: {counts}"));
            }
            // Retries on the other client's connection are counted as conflicts, never lost.
            misplaced += retries.a_link1 + retries.b_link2;
            if retries.dropped() + retries.unanswered != 0 {
                failures.push(format!("{what}: TCP retries: {retries}"));
            }
            if a_answered != PER_CLIENT || b_answered != PER_CLIENT {
                failures.push(format!(
                    "{what}: answered A {a_answered}, B {b_answered} of {PER_CLIENT}"
                ));
            }
        }
    }
    // The metrics endpoint (loopback only) reports what happened.
    let metrics = world
        .router_http_get(9120, "/metrics")
        .expect("GET /metrics");
    println!(
        "{}\n{}",
        world.ingress_drops().expect("ingress counters"),
        world.route_changes().expect("router counters")
    );
    let paired = metric(&metrics, "nfqmark_pairing_total{outcome=\"paired\"}");
    let conflicts: u64 = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("nfqmark_connection_conflicts_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    println!(
        "TCP retries on the other client's connection: {misplaced}; conflicts counted: {conflicts}"
    );
    assert!(
        conflicts >= misplaced as u64,
        "each retry carried on the other client's connection is a counted conflict"
    );
    let log = world.stop_nfqmark();
    println!("nfqmark log:\n{log}");
    assert!(
        metrics.starts_with("HTTP/1.") && metrics.contains("text/plain"),
        "{metrics}"
    );
    assert!(
        paired >= (PER_CLIENT * 8) as u64,
        "paired {paired} in\n{metrics}"
    );
    assert!(
        failures.is_empty(),
        "{}\nnfqmark log:\n{log}",
        failures.join("\n")
    );
    assert!(
        log.contains("paired="),
        "nfqmark did not report its counters:\n{log}"
    );
}

/// The value of one sample in a Prometheus text page.
fn metric(page: &str, sample: &str) -> u64 {
    page.lines()
        .find_map(|l| l.strip_prefix(sample).map(str::trim))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {sample} in\n{page}"))
}

#[test]
fn dnsmasq_without_conntrack_carries_client_marks() {
    carries_marks(Resolver::Dnsmasq, "dnsmasq", Network::Real);
}

#[test]
fn unbound_carries_client_marks() {
    carries_marks(Resolver::Unbound, "unbound", Network::Real);
}

#[test]
fn knot_resolver_carries_client_marks() {
    carries_marks(Resolver::Knot, "knot", Network::Real);
}

#[test]
fn dnsmasq_without_conntrack_carries_client_marks_ideal() {
    carries_marks(Resolver::Dnsmasq, "dnsmasqi", Network::Ideal);
}

#[test]
fn unbound_carries_client_marks_ideal() {
    carries_marks(Resolver::Unbound, "unboundi", Network::Ideal);
}

#[test]
fn knot_resolver_carries_client_marks_ideal() {
    carries_marks(Resolver::Knot, "knoti", Network::Ideal);
}

/// The control: the same world without nfqmark. Client A's upstream queries must then leave
/// over link 1, which shows the test above can fail and that the marks come from nfqmark.
#[test]
fn without_nfqmark_upstream_queries_are_unmarked() {
    if !common::require_root("control") {
        return;
    }
    let mut world =
        World::build(Options::new("control", Resolver::Dnsmasq, None)).expect("build the lab");
    world
        .start_resolver(Family::V4)
        .expect("start the resolver");
    let (counts, _, a_answered, b_answered) = round(&world, Family::V4, false);
    println!("without nfqmark: {counts}");
    assert_eq!(
        (counts.a_link1, counts.a_link2),
        (PER_CLIENT, 0),
        "{counts}"
    );
    assert_eq!(
        (counts.b_link1, counts.b_link2),
        (PER_CLIENT, 0),
        "{counts}"
    );
    assert_eq!((a_answered, b_answered), (PER_CLIENT, PER_CLIENT));
}

/// A resolver that sends every upstream query from one port (dnsmasq `--query-port`, or any
/// resolver once its random ports repeat within conntrack's timeout) puts all of them on one
/// connection, whose saved mark is that of the last marked query. Each upstream query must still
/// leave with its own client's mark: client A's over link 2, client B's over link 1, with the two
/// clients taking turns so the connection's mark changes every query.
#[test]
fn one_upstream_connection_for_all_queries_keeps_each_querys_mark() {
    const TURNS: usize = 8;
    if !common::require_root("fixedport") {
        return;
    }
    let mut options = Options::new("fixedport", Resolver::Dnsmasq, Some(common::nfqmark_bin()));
    options.queue = 9;
    options.dnsmasq_args = vec!["--query-port=5300".into()];
    let mut world = World::build(options).expect("build the lab");
    world.start_nfqmark().expect("start nfqmark");
    world
        .start_resolver(Family::V4)
        .expect("start the resolver");
    world.sniffer.clear();
    let mut answered = 0;
    for i in 0..TURNS {
        for client in [Client::A, Client::B] {
            let name = format!("{}-turn{i}-fixedport.nfqm.example", client.letter());
            answered += world
                .query(client, Family::V4, &[name], false)
                .expect("dig")
                .answered;
        }
    }
    thread::sleep(Duration::from_millis(300));
    let counts = LinkCounts::from_sniffer(&world.sniffer, "fixedport");
    // Printed, not asserted: on the real router each change of client kills the flow (its
    // route changed; MASQUERADE drops the packet) and dnsmasq's retry opens a new one. The
    // strict form of this case is `e2e_multiwan::dnsmasq_v4_query_port`.
    println!(
        "{}\n{}",
        world.route_changes().expect("router counters"),
        world.ingress_drops().expect("ingress counters")
    );
    let log = world.stop_nfqmark();
    println!(
        "one upstream port: {counts}; answered {answered}/{}",
        2 * TURNS
    );
    assert_eq!(
        (
            counts.a_link1,
            counts.a_link2,
            counts.b_link1,
            counts.b_link2
        ),
        (0, TURNS, TURNS, 0),
        "{counts}\nnfqmark log:\n{log}"
    );
    assert_eq!(answered, 2 * TURNS);
}

/// Stands in for a public resolver some clients hard-code (8.8.8.8); only 198.18.0.0/15 here.
const PUBLIC_RESOLVER: &str = lab::addr::PUBLIC_RESOLVER_V4;

/// Clients that send their queries to a public resolver's address, which the router DNATs to
/// its own resolver: the queries of marked client A must still leave over the cheap link, over
/// UDP and TCP. Returns the counts per transport.
fn dnat_round(
    resolver: Resolver,
    nfqmark: bool,
    tag: &str,
    queue: u16,
    network: Network,
) -> Vec<(bool, LinkCounts)> {
    let mut options = Options::new(tag, resolver, nfqmark.then(common::nfqmark_bin));
    options.queue = queue;
    options.network = network;
    let mut world = World::build(options).expect("build the lab");
    for proto in ["udp", "tcp"] {
        world
            .router_iptables(
                "iptables",
                &[
                    "-t",
                    "nat",
                    "-A",
                    "PREROUTING",
                    "-d",
                    PUBLIC_RESOLVER,
                    "-p",
                    proto,
                    "--dport",
                    "53",
                    "-j",
                    "DNAT",
                    "--to-destination",
                    lab::addr::ROUTER_A_V4,
                ],
            )
            .expect("DNAT rule");
    }
    world.start_nfqmark().expect("start nfqmark");
    world
        .start_resolver(Family::V4)
        .expect("start the resolver");
    let mut out = Vec::new();
    for tcp in [false, true] {
        let label = format!("dnat{}", if tcp { "tcp" } else { "udp" });
        world.sniffer.clear();
        let a_names = names(Client::A, &label);
        let b_names = names(Client::B, &label);
        for (client, list) in [(Client::A, &a_names), (Client::B, &b_names)] {
            let r = world
                .query_server(client, Family::V4, PUBLIC_RESOLVER, list, tcp, 2, 2)
                .expect("dig");
            assert_eq!(r.answered, PER_CLIENT, "{client:?} via the DNAT'd address");
        }
        thread::sleep(Duration::from_millis(300));
        out.push((tcp, LinkCounts::from_sniffer(&world.sniffer, &label)));
    }
    out
}

/// dnsmasq `--conntrack` cannot do this (it looks the client's connection up by the addresses
/// its socket saw, which DNAT changed): printed for comparison, 0 of client A's queries via the
/// cheap link with dnsmasq 2.90. nfqmark pairs by question, after DNAT: all of them.
fn dnatted_queries(network: Network, tag: &str) {
    if !common::require_root(tag) {
        return;
    }
    for (tcp, counts) in dnat_round(
        Resolver::DnsmasqConntrack,
        false,
        &format!("{tag}ct"),
        0,
        network,
    ) {
        println!("for comparison, dnsmasq --conntrack, DNAT'd, tcp={tcp}: {counts}");
    }
    for (tcp, counts) in dnat_round(Resolver::Dnsmasq, true, tag, 17, network) {
        println!("dnsmasq + nfqmark, DNAT'd, tcp={tcp}: {counts}");
        assert_eq!(
            (
                counts.a_link1,
                counts.a_link2,
                counts.b_link1,
                counts.b_link2
            ),
            (0, PER_CLIENT, PER_CLIENT, 0),
            "tcp={tcp}: {counts}"
        );
    }
}

#[test]
fn dnatted_queries_keep_the_client_mark() {
    dnatted_queries(Network::Real, "dnat");
}

#[test]
fn dnatted_queries_keep_the_client_mark_ideal() {
    dnatted_queries(Network::Ideal, "dnati");
}
