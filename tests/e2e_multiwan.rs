//! End to end on a real multi-WAN router (issue 11's acceptance): the router masquerades on
//! each uplink (IPv4 and NAT66), the upstream host drops packets whose source does not belong to
//! the link they arrive on and answers over the link a query came in on (see `nfqmark_lab`,
//! `Network::Real`).
//!
//! Every test is one case (resolver, family, how the clients ask) with marked client A and
//! unmarked client B asking their own names at the same time, twice in one world: first with
//! no nfqmark (the control: every query answered, A's upstream queries over link 1, which shows
//! the test can fail), then, after the router's conntrack table is flushed, with nfqmark and the
//! queue rules `nfqmark setup` prints. With nfqmark each test asserts what [`check`] says:
//! every client query answered as in the control; exact counts at the upstream host (each of
//! A's names accepted and answered over link 2, each of B's over link 1, nothing dropped for a
//! foreign source); no packet of a flow routed out of another link than its NAT binding's (the
//! router counts those; MASQUERADE drops them); and it prints nfqmark's counters.
//!
//! Cases, for dnsmasq (without `--conntrack`), unbound (0x20 on) and knot-resolver, IPv4 and
//! IPv6: clients over UDP; over TCP one query per connection, several pipelined in one
//! segment, the length prefix alone then the message, a message cut in the middle; names the
//! upstream truncates over UDP (unbound and knot-resolver retry over TCP themselves and
//! pipeline several clients' retries on one connection; dnsmasq hands the truncated answer to
//! the client, whose own TCP retry it forwards); the resolver's upstream queries from a few
//! source ports (dnsmasq `--query-port`, `--min-port`/`--max-port`, unbound
//! `outgoing-port-permit`, kresd through `ip_local_port_range`), so both clients' queries reuse
//! each port within conntrack's timeout; queries sent to a public resolver's address that the
//! router DNATs to its own.
//!
//! Tests that fail on today's nfqmark are ignored with what fails, measured; run them with
//! `sudo -E cargo test --test e2e_multiwan -- --ignored --nocapture` (one case: add its name).

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

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::thread;
use std::time::Duration;

use load::{AskLimits, Asked, Shape, TcpShape};
use nfqmark_lab::sniffer::Transport;
use nfqmark_lab::{
    self as lab, Client, Family, IngressDrops, LinkCounts, Options, Resolver, RouteChanges, World,
};

/// Names per client per round.
const PER_CLIENT: usize = 40;

/// One case of the acceptance.
#[derive(Debug, Clone, Copy)]
struct Case {
    resolver: Resolver,
    family: Family,
    shape: Shape,
    /// The upstream answers the names truncated over UDP.
    truncated: bool,
    /// The resolver's upstream source ports (`Options::upstream_ports`): few, so both clients'
    /// queries reuse them within conntrack's timeout.
    ports: Option<(u16, u16)>,
    /// Clients ask a public resolver's address, which the router DNATs to its own.
    dnat: bool,
    /// `nfqmark setup --lean` and `nfqmark run --lean`: answers not queued but truncated ones.
    lean: bool,
}

impl Case {
    fn new(resolver: Resolver, family: Family, shape: Shape) -> Case {
        Case {
            resolver,
            family,
            shape,
            truncated: false,
            ports: None,
            dnat: false,
            lean: false,
        }
    }

    /// The same case with the lean queue layout (issue 17).
    const fn lean(self) -> Case {
        Case { lean: true, ..self }
    }
}

impl std::fmt::Display for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}, clients over {}",
            self.resolver, self.family, self.shape
        )?;
        if self.truncated {
            f.write_str(", upstream truncates over UDP")?;
        }
        match self.ports {
            Some((lo, hi)) if lo == hi => write!(f, ", every upstream query from port {lo}")?,
            Some((lo, hi)) => write!(f, ", upstream queries from ports {lo}-{hi}")?,
            None => {}
        }
        if self.dnat {
            f.write_str(", DNAT'd from a public resolver address")?;
        }
        Ok(())
    }
}

/// What one round gave.
#[derive(Debug)]
struct Round {
    a: Asked,
    b: Asked,
    /// Every upstream query, both transports.
    all: LinkCounts,
    udp: LinkCounts,
    tcp: LinkCounts,
    drops: IngressDrops,
    changes: RouteChanges,
    gaps: u64,
    /// The upstream TCP connections that carried this round's queries.
    connections: Vec<Connection>,
}

/// One upstream TCP connection as the upstream host saw it, by its NAT'd source.
#[derive(Debug, Default)]
struct Connection {
    /// The client whose query came first on it.
    first: Option<Client>,
    links: BTreeSet<String>,
    a: usize,
    b: usize,
    /// Queries dropped for a foreign source.
    dropped: usize,
}

impl Connection {
    fn mixed(&self) -> bool {
        self.a > 0 && self.b > 0
    }

    /// The link the connection should take: that of the client it was opened for.
    fn expected_link(&self) -> &'static str {
        match self.first {
            Some(Client::A) => "link2",
            _ => "link1",
        }
    }

    /// Queries of the client it was not opened for.
    fn foreign(&self) -> usize {
        match self.first {
            Some(Client::A) => self.b,
            _ => self.a,
        }
    }
}

impl std::fmt::Display for Round {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "  client A {}, client B {}", self.a, self.b)?;
        if self.tcp.a_link1 + self.tcp.a_link2 + self.tcp.b_link1 + self.tcp.b_link2 > 0
            && self.udp.a_link1 + self.udp.a_link2 + self.udp.b_link1 + self.udp.b_link2 > 0
        {
            writeln!(f, "  upstream over UDP: {}", self.udp)?;
            writeln!(f, "  upstream over TCP: {}", self.tcp)?;
        } else {
            writeln!(f, "  upstream: {}", self.all)?;
        }
        writeln!(f, "  {}", self.drops)?;
        write!(f, "  {}", self.changes)?;
        if !self.connections.is_empty() {
            let mixed: Vec<&Connection> = self.connections.iter().filter(|c| c.mixed()).collect();
            write!(
                f,
                "\n  upstream TCP connections: {}, {} of them carrying both clients' queries ({} \
                 queries of the client a connection was not opened for)",
                self.connections.len(),
                mixed.len(),
                mixed.iter().map(|c| c.foreign()).sum::<usize>()
            )?;
        }
        if self.gaps > 0 {
            write!(
                f,
                "\n  the sniffer missed TCP segments ({} holes)",
                self.gaps
            )?;
        }
        Ok(())
    }
}

fn names(client: Client, label: &str, truncated: bool) -> Vec<String> {
    let tc = if truncated { "tc-" } else { "" };
    (0..PER_CLIENT)
        .map(|i| format!("{}-{tc}{i}-{label}.nfqm.example", client.letter()))
        .collect()
}

/// Where a client sends its queries in this case.
fn server(case: &Case, client: Client) -> SocketAddr {
    let addr = match (case.dnat, client, case.family) {
        (true, _, Family::V4) => lab::addr::PUBLIC_RESOLVER_V4,
        (true, _, Family::V6) => lab::addr::PUBLIC_RESOLVER_V6,
        (false, Client::A, Family::V4) => lab::addr::ROUTER_A_V4,
        (false, Client::A, Family::V6) => lab::addr::ROUTER_A_V6,
        (false, Client::B, Family::V4) => lab::addr::ROUTER_B_V4,
        (false, Client::B, Family::V6) => lab::addr::ROUTER_B_V6,
    };
    SocketAddr::new(lab::ip(addr).expect("lab address"), 53)
}

fn expected(family: Family) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(lab::upstream::ANSWER_V4),
        Family::V6 => IpAddr::V6(lab::upstream::ANSWER_V6),
    }
}

/// Both clients ask their names at once; then the upstream host's view.
fn round(w: &World, case: &Case, label: &str) -> Round {
    w.sniffer.clear();
    let drops_before = w.ingress_drops().expect("ingress counters");
    let changes_before = w.route_changes().expect("router counters");
    let a_names = names(Client::A, label, case.truncated);
    let b_names = names(Client::B, label, case.truncated);
    let limits = AskLimits {
        // Few source ports: few queries at once (kresd fails a query it finds no port for).
        window: if case.ports.is_some() { 6 } else { usize::MAX },
        ..AskLimits::default()
    };
    let ask = |client: Client, list: &[String]| {
        let ns = match client {
            Client::A => &w.a,
            Client::B => &w.b,
        };
        load::ask(
            ns,
            server(case, client),
            list,
            expected(case.family),
            case.shape,
            limits,
        )
    };
    let (a, b) = thread::scope(|s| {
        let a = s.spawn(|| ask(Client::A, &a_names));
        let b = s.spawn(|| ask(Client::B, &b_names));
        (a.join(), b.join())
    });
    let a = a.expect("client A thread").expect("client A");
    let b = b.expect("client B thread").expect("client B");
    // Let the last packets reach the sniffer.
    thread::sleep(Duration::from_millis(300));
    let drops = w.ingress_drops().expect("ingress counters");
    let changes = w.route_changes().expect("router counters");
    // The sniffer's records are in arrival order; a connection is its source port (the NAT'd
    // address may differ between links when its route changed).
    let mut connections: BTreeMap<u16, Connection> = BTreeMap::new();
    for q in w.sniffer.seen() {
        if q.proto != Transport::Tcp || !q.name.contains(label) {
            continue;
        }
        let client = if q.name.starts_with("a-") {
            Client::A
        } else {
            Client::B
        };
        let c = connections.entry(q.sport).or_default();
        c.first.get_or_insert(client);
        c.links.insert(q.link);
        match client {
            Client::A => c.a += 1,
            Client::B => c.b += 1,
        }
        c.dropped += usize::from(!q.accepted);
    }
    Round {
        a,
        b,
        all: LinkCounts::from_sniffer(&w.sniffer, label),
        udp: LinkCounts::from_sniffer_where(&w.sniffer, label, |s| s.proto == Transport::Udp),
        tcp: LinkCounts::from_sniffer_where(&w.sniffer, label, |s| s.proto == Transport::Tcp),
        drops: drops.since(&drops_before),
        changes: changes.since(&changes_before),
        gaps: w.sniffer.tcp_gaps(),
        connections: connections.into_values().collect(),
    }
}

fn dnat(w: &World, family: Family) {
    let (tool, public, to) = match family {
        Family::V4 => (
            "iptables",
            lab::addr::PUBLIC_RESOLVER_V4,
            lab::addr::ROUTER_A_V4,
        ),
        Family::V6 => (
            "ip6tables",
            lab::addr::PUBLIC_RESOLVER_V6,
            lab::addr::ROUTER_A_V6,
        ),
    };
    for proto in ["udp", "tcp"] {
        w.router_iptables(
            tool,
            &[
                "-t",
                "nat",
                "-A",
                "PREROUTING",
                "-d",
                public,
                "-p",
                proto,
                "--dport",
                "53",
                "-j",
                "DNAT",
                "--to-destination",
                to,
            ],
        )
        .expect("DNAT rule");
    }
}

/// What a round with nfqmark must show, as a list of failures (empty: all good).
///
/// - Every client query answered as in the control.
/// - Exact counts at the upstream host: A's names accepted and answered over link 2, B's over
///   link 1, nothing dropped for a foreign source. Where the names are truncated, the UDP
///   upstream queries are counted so; the TCP retries too when every upstream connection
///   carried one client's queries. A resolver that pipelines several clients' retries on one
///   connection cannot give them two routes: there each connection must keep one link, that of
///   the client it was opened for, accepted and answered, and nfqmark must count each of the
///   other client's queries on it (`conn_conflicts` at least their number, which is printed).
/// - No packet routed out of another link than its connection's NAT binding (a mark that changed
///   inside a connection, or a source port one client's query used reused by the other's within
///   conntrack's timeout: certain in the cases with few source ports, a matter of chance with
///   random ports, which is why those cases exist).
fn check(r: &Round, control: &Round, case: &Case, counters: &load::Counters) -> Vec<String> {
    let n = PER_CLIENT;
    let mut failures = Vec::new();
    if r.a.answered != control.a.answered || r.b.answered != control.b.answered {
        let some = |v: &[String]| v.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
        failures.push(format!(
            "answered: client A {}/{n}, client B {}/{n} (control: {}, {}); unanswered: A {} \
             ({}...), B {} ({}...)",
            r.a.answered,
            r.b.answered,
            control.a.answered,
            control.b.answered,
            r.a.unanswered.len(),
            some(&r.a.unanswered),
            r.b.unanswered.len(),
            some(&r.b.unanswered),
        ));
    }
    let (counted, what) = if case.truncated {
        (&r.udp, "upstream UDP queries")
    } else {
        (&r.all, "upstream queries")
    };
    if !counted.exact(n, n) {
        failures.push(format!(
            "{what}: not every one of A's {n} names accepted and answered over link 2 and B's over \
             link 1, nothing else: {counted}"
        ));
    }
    if case.truncated {
        if r.connections.iter().any(Connection::mixed) {
            for c in &r.connections {
                let kept = c.links.len() == 1 && c.links.contains(c.expected_link());
                if !kept || c.dropped > 0 {
                    failures.push(format!(
                        "an upstream TCP connection opened for client {:?} did not keep its link \
                         {}: links {:?}, {} of its queries dropped ({} of A's, {} of B's)",
                        c.first,
                        c.expected_link(),
                        c.links,
                        c.dropped,
                        c.a,
                        c.b
                    ));
                }
            }
            if r.tcp.unanswered > 0 || r.tcp.dropped() > 0 {
                failures.push(format!("upstream TCP queries: {}", r.tcp));
            }
            // Issue 11: each such query is counted.
            let foreign: usize = r.connections.iter().map(Connection::foreign).sum();
            let counted = counters.get("conn_conflicts");
            if (counted as usize) < foreign {
                failures.push(format!(
                    "{foreign} queries on a connection opened for the other client, but nfqmark \
                     counted conn_conflicts={counted}"
                ));
            }
        } else if !r.tcp.exact(n, n) {
            failures.push(format!(
                "upstream TCP queries: not every one of A's {n} names accepted and answered over \
                 link 2 and B's over link 1, nothing else: {}",
                r.tcp
            ));
        }
    }
    if r.drops.total() != 0 {
        failures.push(r.drops.to_string());
    }
    if r.changes.total() != 0 {
        failures.push(r.changes.to_string());
    }
    // The lean layout really queued no answer to a client (and upstream answers only when
    // truncated): the marks above came from conntrack.
    if case.lean && counters.get("client_answers") != 0 {
        failures.push(format!(
            "lean: {} answers to clients were queued",
            counters.get("client_answers")
        ));
    }
    if case.lean && !case.truncated && counters.get("upstream_answers") != 0 {
        failures.push(format!(
            "lean: {} upstream answers were queued without truncation",
            counters.get("upstream_answers")
        ));
    }
    failures
}

fn run(tag: &str, case: Case) {
    if !common::require_root(tag) {
        return;
    }
    let mut options = Options::new(tag, case.resolver, Some(common::nfqmark_bin()));
    options.upstream_ports = case.ports;
    if case.lean {
        options.nfqmark_args.push("--lean".into());
    }
    let mut w = World::build(options).expect("build the lab");
    if case.dnat {
        dnat(&w, case.family);
    }
    w.start_resolver(case.family).expect("start the resolver");

    // The control: no nfqmark.
    let control = round(&w, &case, "ctl");
    // Each test prints its whole report at once (tests run in parallel).
    let mut report = format!("{case}\nwithout nfqmark:\n{control}");
    let n = PER_CLIENT;
    assert_eq!(
        (control.a.answered, control.b.answered),
        (n, n),
        "the control run must answer every query:\n{report}"
    );
    assert!(
        control.all.a_link1 == n
            && control.all.a_link2 == 0
            && control.all.b_link1 == n
            && control.all.dropped() == 0
            && control.all.unanswered == 0,
        "the control run: every upstream query over link 1, accepted and answered:\n{report}"
    );

    // With nfqmark, with a resolver and a router that forgot the control's connections
    // (unbound and kresd keep upstream TCP connections open for reuse).
    w.start_resolver(case.family).expect("restart the resolver");
    w.flush_conntrack().expect("conntrack -F");
    w.start_nfqmark().expect("start nfqmark");
    let r = round(&w, &case, "nfq");
    let log = w.stop_nfqmark();
    let counters = lab::last_counters(&log);
    report.push_str(&format!("\nwith nfqmark:\n{r}\n  nfqmark: {counters}"));
    println!("{report}");
    let failures = check(&r, &control, &case, &load::Counters::parse(&counters));
    assert!(
        failures.is_empty(),
        "{case}:\n- {}\n{report}\nnfqmark log:\n{log}",
        failures.join("\n- ")
    );
}

/// One `#[test]` per case; attributes (an `#[ignore = ...]`) go before the name.
macro_rules! cases {
    ($($(#[$meta:meta])* $name:ident: $case:expr;)*) => {
        $(
            #[test]
            $(#[$meta])*
            fn $name() {
                run(stringify!($name), $case);
            }
        )*
    };
}

use Family::{V4, V6};
use Resolver::{Dnsmasq, Knot, Unbound};

const ONE: Shape = Shape::Tcp(TcpShape::OnePerConnection);
const PIPELINED: Shape = Shape::Tcp(TcpShape::Pipelined(4));
const LONE_PREFIX: Shape = Shape::Tcp(TcpShape::LonePrefix);
const CUT: Shape = Shape::Tcp(TcpShape::CutMiddle);

const fn truncated(resolver: Resolver, family: Family) -> Case {
    Case {
        resolver,
        family,
        shape: Shape::Udp,
        truncated: true,
        ports: None,
        dnat: false,
        lean: false,
    }
}

const fn dnatted(resolver: Resolver, family: Family, shape: Shape) -> Case {
    Case {
        resolver,
        family,
        shape,
        truncated: false,
        ports: None,
        dnat: true,
        lean: false,
    }
}

/// Clients over UDP, the resolver's upstream queries from `ports`.
const fn ports(resolver: Resolver, family: Family, ports: (u16, u16)) -> Case {
    Case {
        resolver,
        family,
        shape: Shape::Udp,
        truncated: false,
        ports: Some(ports),
        dnat: false,
        lean: false,
    }
}

/// dnsmasq `--query-port=5300`.
const QUERY_PORT: (u16, u16) = (5300, 5300);
/// Sixteen source ports for 80 upstream queries: both clients' queries reuse each.
const FEW_PORTS: (u16, u16) = (40_000, 40_015);

cases! {
    dnsmasq_v4_udp: Case::new(Dnsmasq, V4, Shape::Udp);
    dnsmasq_v6_udp: Case::new(Dnsmasq, V6, Shape::Udp);
    unbound_v4_udp: Case::new(Unbound, V4, Shape::Udp);
    unbound_v6_udp: Case::new(Unbound, V6, Shape::Udp);
    knot_v4_udp: Case::new(Knot, V4, Shape::Udp);
    knot_v6_udp: Case::new(Knot, V6, Shape::Udp);

    dnsmasq_v4_tcp: Case::new(Dnsmasq, V4, ONE);
    dnsmasq_v6_tcp: Case::new(Dnsmasq, V6, ONE);
    unbound_v4_tcp: Case::new(Unbound, V4, ONE);
    unbound_v6_tcp: Case::new(Unbound, V6, ONE);
    knot_v4_tcp: Case::new(Knot, V4, ONE);
    knot_v6_tcp: Case::new(Knot, V6, ONE);

    dnsmasq_v4_tcp_pipelined: Case::new(Dnsmasq, V4, PIPELINED);
    dnsmasq_v6_tcp_pipelined: Case::new(Dnsmasq, V6, PIPELINED);
    unbound_v4_tcp_pipelined: Case::new(Unbound, V4, PIPELINED);
    unbound_v6_tcp_pipelined: Case::new(Unbound, V6, PIPELINED);
    knot_v4_tcp_pipelined: Case::new(Knot, V4, PIPELINED);
    knot_v6_tcp_pipelined: Case::new(Knot, V6, PIPELINED);

    dnsmasq_v4_tcp_lone_prefix: Case::new(Dnsmasq, V4, LONE_PREFIX);
    dnsmasq_v6_tcp_lone_prefix: Case::new(Dnsmasq, V6, LONE_PREFIX);
    unbound_v4_tcp_lone_prefix: Case::new(Unbound, V4, LONE_PREFIX);
    unbound_v6_tcp_lone_prefix: Case::new(Unbound, V6, LONE_PREFIX);
    knot_v4_tcp_lone_prefix: Case::new(Knot, V4, LONE_PREFIX);
    knot_v6_tcp_lone_prefix: Case::new(Knot, V6, LONE_PREFIX);

    dnsmasq_v4_tcp_cut: Case::new(Dnsmasq, V4, CUT);
    dnsmasq_v6_tcp_cut: Case::new(Dnsmasq, V6, CUT);
    unbound_v4_tcp_cut: Case::new(Unbound, V4, CUT);
    unbound_v6_tcp_cut: Case::new(Unbound, V6, CUT);
    knot_v4_tcp_cut: Case::new(Knot, V4, CUT);
    knot_v6_tcp_cut: Case::new(Knot, V6, CUT);

    dnsmasq_v4_truncated: truncated(Dnsmasq, V4);
    dnsmasq_v6_truncated: truncated(Dnsmasq, V6);
    unbound_v4_truncated: truncated(Unbound, V4);
    unbound_v6_truncated: truncated(Unbound, V6);
    knot_v4_truncated: truncated(Knot, V4);
    knot_v6_truncated: truncated(Knot, V6);

    dnsmasq_v4_query_port: ports(Dnsmasq, V4, QUERY_PORT);
    dnsmasq_v6_query_port: ports(Dnsmasq, V6, QUERY_PORT);
    dnsmasq_v4_port_reuse: ports(Dnsmasq, V4, FEW_PORTS);
    dnsmasq_v6_port_reuse: ports(Dnsmasq, V6, FEW_PORTS);
    unbound_v4_port_reuse: ports(Unbound, V4, FEW_PORTS);
    unbound_v6_port_reuse: ports(Unbound, V6, FEW_PORTS);
    knot_v4_port_reuse: ports(Knot, V4, FEW_PORTS);
    knot_v6_port_reuse: ports(Knot, V6, FEW_PORTS);

    dnsmasq_v4_dnat_udp: dnatted(Dnsmasq, V4, Shape::Udp);
    dnsmasq_v6_dnat_udp: dnatted(Dnsmasq, V6, Shape::Udp);
    unbound_v4_dnat_udp: dnatted(Unbound, V4, Shape::Udp);
    unbound_v6_dnat_udp: dnatted(Unbound, V6, Shape::Udp);
    knot_v4_dnat_udp: dnatted(Knot, V4, Shape::Udp);
    knot_v6_dnat_udp: dnatted(Knot, V6, Shape::Udp);
    dnsmasq_v4_dnat_tcp: dnatted(Dnsmasq, V4, ONE);
    dnsmasq_v6_dnat_tcp: dnatted(Dnsmasq, V6, ONE);
    unbound_v4_dnat_tcp: dnatted(Unbound, V4, ONE);
    unbound_v6_dnat_tcp: dnatted(Unbound, V6, ONE);
    knot_v4_dnat_tcp: dnatted(Knot, V4, ONE);
    knot_v6_dnat_tcp: dnatted(Knot, V6, ONE);

    // The lean layout (`setup --lean`, `run --lean`): answers reach nfqmark only when truncated;
    // every case above that a forwarder meets, once more.
    lean_dnsmasq_v4_udp: Case::new(Dnsmasq, V4, Shape::Udp).lean();
    lean_dnsmasq_v6_tcp: Case::new(Dnsmasq, V6, ONE).lean();
    lean_dnsmasq_v4_tcp_pipelined: Case::new(Dnsmasq, V4, PIPELINED).lean();
    lean_dnsmasq_v4_truncated: truncated(Dnsmasq, V4).lean();
    lean_dnsmasq_v4_query_port: ports(Dnsmasq, V4, QUERY_PORT).lean();
    lean_unbound_v4_udp: Case::new(Unbound, V4, Shape::Udp).lean();
    lean_unbound_v6_truncated: truncated(Unbound, V6).lean();
    lean_knot_v4_tcp: Case::new(Knot, V4, ONE).lean();
    lean_knot_v4_truncated: truncated(Knot, V4).lean();
    lean_unbound_v4_dnat_udp: dnatted(Unbound, V4, Shape::Udp).lean();
}
