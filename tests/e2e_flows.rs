//! End to end, DNS-learned flow marks: a client resolves a name a flow rule names through the
//! router's resolver, then opens a TCP connection and a UDP flow to the answered address: both
//! are marked and leave over the cheap link. A client that did not resolve the name, and a name
//! no rule names, are not marked; an alias (CNAME) of a named name is; after the record's TTL a
//! new flow is no longer marked. The router's firewall rules come from `nfqmark setup`. The same
//! holds over IPv6: AAAA answers teach marks for flows to IPv6 addresses.
//!
//! Both backends: the queue backend (each new flow's first packet queued to nfqmark), and the
//! kernel backend (learned addresses as nft set elements; nfqmark's queue sees no flow packet,
//! the element expires with the TTL, a killed nfqmark leaves its elements marking flows, a
//! restarted one adopts them, `per-mark` keys hold the client's mark).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a step that fails fails the test, loudly and at once"
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::sleep;
use std::time::Duration;

use nfqmark_lab::{self as lab, Client, Family, Opened, Options, Resolver, World};

const RULES: &str = "\
# Flows from clients in 198.18.1.0/24 to what *.video.nfqm.example resolves to: mark 0x20/0xff.
flow src 198.18.1.0/24 names *.video.nfqm.example set-mark 0x20/0xff
default accept
";

/// A lab for one flow test: dnsmasq, queue `queue`, neither the lab's queue rules nor its
/// marking rules (each test loads what `nfqmark setup` prints, and marks client A itself), and
/// `rules` written to NAME.rules in the lab's directory.
fn flows_lab(name: &str, queue: u16, rules: &str) -> (World, PathBuf) {
    let mut options = Options::new(name, Resolver::Dnsmasq, Some(common::nfqmark_bin()));
    options.queue = queue;
    options.queue_rules = false;
    options.marking = false;
    let w = World::build(options).expect("build the lab");
    let path = w.path(&format!("{name}.rules"));
    std::fs::write(&path, rules).expect("write rules");
    (w, path)
}

fn ip(s: &str) -> std::net::IpAddr {
    s.parse().expect("address")
}

/// The firewall rules `nfqmark setup --iptables ARGS --rules RULES` prints.
fn setup(args: &[&str], rules: &Path) -> String {
    setup_text(&[&["--iptables"], args].concat(), rules)
}

/// What `nfqmark setup ARGS --rules RULES` prints.
fn setup_text(args: &[&str], rules: &Path) -> String {
    let out = Command::new(common::nfqmark_bin())
        .arg("setup")
        .args(args)
        .arg("--rules")
        .arg(rules)
        .output()
        .expect("run nfqmark setup");
    assert!(
        out.status.success(),
        "setup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    println!("{text}");
    text
}

/// The router's firewall as `nfqmark setup` prints it for `rules` and `queue` (loaded with
/// iptables-restore or ip6tables-restore), and the rule's mark routed over link 2 (the lab
/// routes only its own mark, 137, there).
fn firewall(w: &World, family: Family, queue: u16, rules: &Path) {
    let queue = queue.to_string();
    let mut args = vec!["--queue", queue.as_str(), "--flow-backend", "queue"];
    if family == Family::V6 {
        args.insert(0, "-6");
    }
    w.router_iptables_restore(family, &setup(&args, rules))
        .expect("load setup's rules");
    let table = lab::CHEAP_TABLE.to_string();
    let mut rule = vec![
        "rule",
        "add",
        "fwmark",
        "0x20/0xff",
        "table",
        table.as_str(),
    ];
    if family == Family::V6 {
        rule.insert(0, "-6");
    }
    w.router.ip(&rule).expect("ip rule");
}

/// Resolve `name` (A, or AAAA for IPv6) from `client` at the router's resolver and check the
/// answer holds `expect`.
fn resolve(w: &World, client: Client, family: Family, name: &str, expect: &str) {
    let (ns, server, qtype) = match (client, family) {
        (Client::A, Family::V4) => (&w.a, lab::addr::ROUTER_A_V4, "A"),
        (Client::B, Family::V4) => (&w.b, lab::addr::ROUTER_B_V4, "A"),
        (Client::A, Family::V6) => (&w.a, lab::addr::ROUTER_A_V6, "AAAA"),
        (Client::B, Family::V6) => (&w.b, lab::addr::ROUTER_B_V6, "AAAA"),
    };
    let server = format!("@{server}");
    let out = ns
        .exec(
            "dig",
            &[&server, "+short", "+tries=2", "+time=2", qtype, name],
        )
        .expect("dig");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.lines().any(|l| l.trim() == expect),
        "{name} -> {text:?}, expected {expect}"
    );
}

/// Whether every flow in `results` was seen, and only on the link it should take; else the
/// test fails with the list of those that were not, and nfqmark's log.
fn check(results: &[(&str, Vec<String>, &str)], log: &str) {
    let mut failures = Vec::new();
    for (what, seen, want) in results {
        println!("{what}: {seen:?}");
        if seen.is_empty() || seen.iter().any(|l| l != want) {
            failures.push(format!("{what}: seen on {seen:?}, expected {want}"));
        }
    }
    assert!(failures.is_empty(), "{}\n{log}", failures.join("\n"));
}

#[test]
fn flows_to_resolved_addresses_get_the_rule_mark_until_the_ttl_passes() {
    if !common::require_root("flows") {
        return;
    }
    let (mut w, rules) = flows_lab("flows", 11, RULES);
    w.options_mut().nfqmark_args = vec![
        "--rules".into(),
        rules.display().to_string(),
        "--flow-ttl-min".into(),
        "1s".into(),
        "--flow-backend".into(),
        "queue".into(),
        "--metrics".into(),
        "9120".into(),
    ];
    firewall(&w, Family::V4, 11, &rules);
    w.start_nfqmark().expect("start nfqmark");
    w.start_resolver(Family::V4).expect("start the resolver");

    let dig =
        |client: Client, name: &str, expect: &str| resolve(&w, client, Family::V4, name, expect);

    // A matching name, resolved by client A: its TCP and UDP flows are marked.
    dig(
        Client::A,
        "ip-198-18-9-81.video.nfqm.example",
        "198.18.9.81",
    );
    let queued_before = queued(&w);
    let a_tcp = w
        .connect_to(Client::A, ip("198.18.9.81"), 80)
        .expect("A connects");
    let a_udp = w
        .udp_to(Client::A, ip("198.18.9.81"), 5000)
        .expect("A sends UDP");
    // The control for the kernel backend's test: here the flows' first packets are queued.
    let flow_packets = queued(&w) - queued_before;
    assert!(
        flow_packets >= 2,
        "the queue backend queues each new flow's first packet: {flow_packets}"
    );
    // Client B never resolved it (and no flow rule names B): not marked.
    let b_tcp = w
        .connect_to(Client::B, ip("198.18.9.81"), 80)
        .expect("B connects");
    // A name no rule names: not marked.
    dig(
        Client::A,
        "ip-198-18-9-82.other.nfqm.example",
        "198.18.9.82",
    );
    let a_other = w
        .connect_to(Client::A, ip("198.18.9.82"), 80)
        .expect("A connects");
    // An alias of a named name: the addresses at the end of the CNAME chain are marked.
    dig(
        Client::A,
        "alias-ip-198-18-9-83.video.nfqm.example",
        "198.18.9.83",
    );
    let a_alias = w
        .connect_to(Client::A, ip("198.18.9.83"), 80)
        .expect("A connects");
    // A 2-second TTL: marked now, not after it passed.
    dig(
        Client::A,
        "ip-198-18-9-84.ttl-2.video.nfqm.example",
        "198.18.9.84",
    );
    let a_ttl = w
        .connect_to(Client::A, ip("198.18.9.84"), 80)
        .expect("A connects");
    sleep(Duration::from_millis(3200));
    let a_expired = w
        .connect_to(Client::A, ip("198.18.9.84"), 443)
        .expect("A connects after the TTL");
    sleep(Duration::from_millis(200));

    let links = |f: &Opened| w.flow_links(f);
    let results = [
        ("A tcp to resolved name", links(&a_tcp), "link2"),
        ("A udp to resolved name", links(&a_udp), "link2"),
        ("B tcp, never resolved", links(&b_tcp), "link1"),
        ("A tcp, name not in a rule", links(&a_other), "link1"),
        ("A tcp to a CNAME's address", links(&a_alias), "link2"),
        ("A tcp within the TTL", links(&a_ttl), "link2"),
        ("A tcp after the TTL", links(&a_expired), "link1"),
    ];
    let log = w.stop_nfqmark();
    println!("{log}");
    check(&results, &log);
}

const RULES_V6: &str = "\
# Flows from clients in 2001:db8:1::/64 to what *.video.nfqm.example resolves to: mark 0x20/0xff.
flow src 2001:db8:1::/64 names *.video.nfqm.example set-mark 0x20/0xff
default accept
";

#[test]
fn ipv6_flows_to_resolved_addresses_get_the_rule_mark() {
    if !common::require_root("flows6") {
        return;
    }
    let (mut w, rules) = flows_lab("flows6", 16, RULES_V6);
    w.options_mut().nfqmark_args = vec![
        "--rules".into(),
        rules.display().to_string(),
        "--flow-backend".into(),
        "queue".into(),
    ];
    firewall(&w, Family::V6, 16, &rules);
    w.start_nfqmark().expect("start nfqmark");
    w.start_resolver(Family::V6).expect("start the resolver");
    // No address is tentative (the lab turns duplicate address detection off), so the router
    // can solicit link 2's neighbour for the first forwarded packet at once.
    let tentative = w
        .router
        .ip(&["-6", "addr", "show", "tentative"])
        .expect("ip");
    assert!(
        tentative.stdout.is_empty(),
        "tentative addresses on the router: {}",
        String::from_utf8_lossy(&tentative.stdout)
    );

    // AAAA from client A to the router's IPv6 resolver address.
    let dig = |name: &str, expect: &str| resolve(&w, Client::A, Family::V6, name, expect);
    let (named, other) = ("2001:db8:9::81", "2001:db8:9::82");

    // A matching name, resolved by client A: its TCP and UDP flows are marked.
    dig("ip6-2001-db8-9--81.video.nfqm.example", named);
    let a_tcp = w.connect_to(Client::A, ip(named), 80).expect("A connects");
    let a_udp = w.udp_to(Client::A, ip(named), 5000).expect("A sends UDP");
    // Client B never resolved it (and no flow rule names B): not marked.
    let b_tcp = w.connect_to(Client::B, ip(named), 80).expect("B connects");
    // A name no rule names: not marked.
    dig("ip6-2001-db8-9--82.other.nfqm.example", other);
    let a_other = w.connect_to(Client::A, ip(other), 80).expect("A connects");
    sleep(Duration::from_millis(200));

    let results = [
        ("A tcp to resolved name", w.flow_links(&a_tcp), "link2"),
        ("A udp to resolved name", w.flow_links(&a_udp), "link2"),
        ("B tcp, never resolved", w.flow_links(&b_tcp), "link1"),
        ("A tcp, name not in a rule", w.flow_links(&a_other), "link1"),
    ];
    let log = w.stop_nfqmark();
    println!("{log}");
    check(&results, &log);
}

/// Packets nfqmark's queue handed it so far (all queues), from its metrics endpoint.
fn queued(w: &World) -> u64 {
    metric_sum(&metrics(w), "nfqmark_packets_total{")
}

fn metrics(w: &World) -> String {
    w.router_http_get(9120, "/metrics").expect("metrics")
}

/// The sum of every sample whose line starts with `prefix`.
fn metric_sum(text: &str, prefix: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn kernel_flows(text: &str, outcome: &str) -> u64 {
    metric_sum(
        text,
        &format!("nfqmark_kernel_flows_total{{outcome=\"{outcome}\"}}"),
    )
}

/// The elements of one of nfqmark's sets on the router, as `nft` lists them.
fn set_listing(w: &World, set: &str) -> String {
    let out = w
        .router
        .exec("nft", &["list", "set", "inet", "nfqmark", set])
        .expect("nft list set");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const KERNEL_RULES: &str = "\
# Client A's mark is 0x100/0xff00 (the test marks it); learned addresses are keyed by it.
flow src 198.18.1.0/24 mark 0x100/0xff00 names *.keyed.nfqm.example set-mark 0x20/0xff per-mark
flow src 198.18.1.0/24, 2001:db8:1::/64 names *.video.nfqm.example set-mark 0x20/0xff
default accept
";

/// The router's firewall for the kernel backend, as `nfqmark setup` prints it: DNS queued by
/// iptables (this kernel has no nft `queue`), the flow sets and their chains by nft; the rule's
/// mark routed over link 2; client A's packets marked 0x100/0xff00 after nfqmark's restore, its
/// TCP to port 443 0x200/0xff00 instead.
fn kernel_firewall(w: &World, queue: u16, rules: &Path) {
    let queue = queue.to_string();
    for family in [Family::V4, Family::V6] {
        let mut args = vec!["--queue", queue.as_str(), "--flow-backend", "nft"];
        if family == Family::V6 {
            args.push("-6");
        }
        let text = setup(&args, rules);
        assert!(
            !text.contains("NFQMARK-FLOWS"),
            "no flow is queued with the kernel backend:\n{text}"
        );
        w.router_iptables_restore(family, &text)
            .expect("load setup's iptables rules");
    }
    let table = setup_text(&["--flow-table"], rules);
    let path = w.path("flows.nft");
    std::fs::write(&path, &table).expect("write the nft table");
    let loaded = w
        .router
        .exec("nft", &["-f", &path.display().to_string()])
        .expect("nft");
    assert!(
        loaded.status.success(),
        "nft -f: {}\n{table}",
        String::from_utf8_lossy(&loaded.stderr)
    );
    let cheap = lab::CHEAP_TABLE.to_string();
    for family in ["-4", "-6"] {
        w.router
            .ip(&[
                family,
                "rule",
                "add",
                "fwmark",
                "0x20/0xff",
                "table",
                &cheap,
            ])
            .expect("ip rule");
    }
    for rule in [
        &[
            "-A",
            "PREROUTING",
            "-s",
            "198.18.1.2",
            "-j",
            "MARK",
            "--set-xmark",
            "0x100/0xff00",
        ][..],
        &[
            "-A",
            "PREROUTING",
            "-s",
            "198.18.1.2",
            "-p",
            "tcp",
            "--dport",
            "443",
            "-j",
            "MARK",
            "--set-xmark",
            "0x200/0xff00",
        ],
    ] {
        w.router_iptables("iptables", &[&["-t", "mangle"][..], rule].concat())
            .expect("mark client A");
    }
}

#[test]
fn kernel_backend_marks_flows_from_nft_sets_without_queueing_them() {
    if !common::require_root("kflows") {
        return;
    }
    let (mut w, rules) = flows_lab("kflows", 21, KERNEL_RULES);
    w.options_mut().nfqmark_args = vec![
        "--rules".into(),
        rules.display().to_string(),
        "--flow-ttl-min".into(),
        "1s".into(),
        "--flow-backend".into(),
        "nft".into(),
        "--flow-readback".into(),
        "500ms".into(),
        "--metrics".into(),
        "9120".into(),
    ];
    kernel_firewall(&w, 21, &rules);
    w.start_nfqmark().expect("start nfqmark");
    assert!(
        w.wait_log("flow rules: nft backend", 1, Duration::from_secs(5)),
        "{}",
        w.nfqmark_log()
    );
    w.start_resolver(Family::V4).expect("start the resolver");
    let dig =
        |client: Client, name: &str, expect: &str| resolve(&w, client, Family::V4, name, expect);
    let video = "f2_20_ff_4";
    let keyed = "f1_20_ff_mff00_4";

    // A matching name: the element appears, and A's new flows are marked by the kernel alone.
    dig(
        Client::A,
        "ip-198-18-9-81.video.nfqm.example",
        "198.18.9.81",
    );
    assert!(
        lab::wait_for(Duration::from_secs(2), || set_listing(&w, video)
            .contains("198.18.1.2 . 198.18.9.81 timeout 1m")),
        "{}",
        set_listing(&w, video)
    );
    let queued_before = queued(&w);
    let a_tcp = w
        .connect_to(Client::A, ip("198.18.9.81"), 80)
        .expect("A connects");
    let a_udp = w
        .udp_to(Client::A, ip("198.18.9.81"), 5000)
        .expect("A sends UDP");
    let b_tcp = w
        .connect_to(Client::B, ip("198.18.9.81"), 80)
        .expect("B connects");
    let flow_packets = queued(&w) - queued_before;
    // Keyed by the client's mark: A resolved with 0x100, so its flows with 0x100 are marked and
    // its flows with another mark (0x200, port 443) are not.
    dig(
        Client::A,
        "ip-198-18-9-85.keyed.nfqm.example",
        "198.18.9.85",
    );
    assert!(
        lab::wait_for(Duration::from_secs(2), || set_listing(&w, keyed)
            .contains("198.18.1.2 . 198.18.9.85 . 0x00000100")),
        "{}",
        set_listing(&w, keyed)
    );
    let keyed_same = w
        .connect_to(Client::A, ip("198.18.9.85"), 80)
        .expect("A connects");
    let keyed_other = w
        .connect_to(Client::A, ip("198.18.9.85"), 443)
        .expect("A connects with another mark");
    // A 2-second TTL: the element times out in the kernel, and flows after it are not marked.
    dig(
        Client::A,
        "ip-198-18-9-84.ttl-2.video.nfqm.example",
        "198.18.9.84",
    );
    let in_ttl = w
        .connect_to(Client::A, ip("198.18.9.84"), 80)
        .expect("A connects");
    assert!(set_listing(&w, video).contains("198.18.9.84 timeout 2s"));
    let expired_before = kernel_flows(&metrics(&w), "expired");
    assert!(
        lab::wait_for(Duration::from_secs(5), || !set_listing(&w, video)
            .contains("198.18.9.84")),
        "the element outlived its TTL: {}",
        set_listing(&w, video)
    );
    let after_ttl = w
        .connect_to(Client::A, ip("198.18.9.84"), 443)
        .expect("A connects after the TTL");
    assert!(
        lab::wait_for(Duration::from_secs(5), || kernel_flows(
            &metrics(&w),
            "expired"
        ) > expired_before),
        "the read-back counts the expired element: {}",
        metrics(&w)
    );
    // Re-resolution refreshes: the element's timeout starts again.
    dig(
        Client::A,
        "ip-198-18-9-86.ttl-30.video.nfqm.example",
        "198.18.9.86",
    );
    sleep(Duration::from_millis(1100));
    dig(
        Client::A,
        "ip-198-18-9-86.ttl-30.video.nfqm.example",
        "198.18.9.86",
    );
    let text = metrics(&w);
    assert!(kernel_flows(&text, "refreshed") >= 1, "{text}");

    // Killed after learning: its elements keep marking new flows.
    dig(
        Client::A,
        "ip-198-18-9-87.ttl-40.video.nfqm.example",
        "198.18.9.87",
    );
    assert!(lab::wait_for(Duration::from_secs(2), || set_listing(
        &w, video
    )
    .contains("198.18.9.87")));
    w.signal_nfqmark(libc::SIGKILL);
    let first_log = w.stop_nfqmark();
    let while_dead = w
        .connect_to(Client::A, ip("198.18.9.87"), 80)
        .expect("A connects while nfqmark is down");
    // Restarted: it adopts what the kernel holds.
    w.start_nfqmark().expect("restart nfqmark");
    assert!(
        w.wait_log("element(s) adopted", 1, Duration::from_secs(5)),
        "{}",
        w.nfqmark_log()
    );
    let text = metrics(&w);
    let adopted = kernel_flows(&text, "adopted");
    assert!(adopted >= 3, "adopted {adopted}: {text}");
    let after_restart = w
        .connect_to(Client::A, ip("198.18.9.87"), 443)
        .expect("A connects after the restart");
    sleep(Duration::from_millis(200));

    let links = |f: &Opened| w.flow_links(f);
    let results = [
        ("A tcp to resolved name", links(&a_tcp), "link2"),
        ("A udp to resolved name", links(&a_udp), "link2"),
        ("B tcp, never resolved", links(&b_tcp), "link1"),
        ("A tcp, keyed, same mark", links(&keyed_same), "link2"),
        ("A tcp, keyed, other mark", links(&keyed_other), "link1"),
        ("A tcp within the TTL", links(&in_ttl), "link2"),
        ("A tcp after the TTL", links(&after_ttl), "link1"),
        ("A tcp, nfqmark killed", links(&while_dead), "link2"),
        ("A tcp, nfqmark restarted", links(&after_restart), "link2"),
    ];
    let log = w.stop_nfqmark();
    println!("{first_log}\n{log}");
    assert_eq!(
        flow_packets, 0,
        "no packet of the flows went through the queue"
    );
    check(&results, &format!("{first_log}\n{log}"));
    assert!(
        log.contains("stay in the kernel until their timeouts"),
        "{log}"
    );
}

#[test]
fn kernel_backend_marks_ipv6_flows() {
    if !common::require_root("kflows6") {
        return;
    }
    let (mut w, rules) = flows_lab("kflows6", 22, KERNEL_RULES);
    w.options_mut().nfqmark_args = vec![
        "--rules".into(),
        rules.display().to_string(),
        "--metrics".into(),
        "9120".into(),
    ];
    kernel_firewall(&w, 22, &rules);
    w.start_nfqmark().expect("start nfqmark");
    assert!(
        w.wait_log("flow rules: nft backend", 1, Duration::from_secs(5)),
        "auto picks the kernel backend once the sets are loaded: {}",
        w.nfqmark_log()
    );
    w.start_resolver(Family::V6).expect("start the resolver");
    let (named, other) = ("2001:db8:9::81", "2001:db8:9::82");
    resolve(
        &w,
        Client::A,
        Family::V6,
        "ip6-2001-db8-9--81.video.nfqm.example",
        named,
    );
    resolve(
        &w,
        Client::A,
        Family::V6,
        "ip6-2001-db8-9--82.other.nfqm.example",
        other,
    );
    assert!(
        lab::wait_for(Duration::from_secs(2), || set_listing(&w, "f2_20_ff_6")
            .contains("2001:db8:1::2 . 2001:db8:9::81")),
        "{}",
        set_listing(&w, "f2_20_ff_6")
    );
    let queued_before = queued(&w);
    let a_tcp = w.connect_to(Client::A, ip(named), 80).expect("A connects");
    let a_udp = w.udp_to(Client::A, ip(named), 5000).expect("A sends UDP");
    let b_tcp = w.connect_to(Client::B, ip(named), 80).expect("B connects");
    let a_other = w.connect_to(Client::A, ip(other), 80).expect("A connects");
    let flow_packets = queued(&w) - queued_before;
    sleep(Duration::from_millis(200));
    let results = [
        ("A tcp to resolved name", w.flow_links(&a_tcp), "link2"),
        ("A udp to resolved name", w.flow_links(&a_udp), "link2"),
        ("B tcp, never resolved", w.flow_links(&b_tcp), "link1"),
        ("A tcp, name not in a rule", w.flow_links(&a_other), "link1"),
    ];
    let log = w.stop_nfqmark();
    println!("{log}");
    assert_eq!(flow_packets, 0, "no flow packet queued");
    check(&results, &log);
}

/// Two datagrams on one UDP flow from client A's local port `sport` to `to`, `gap` apart, each
/// waiting for its echo (a lost one is not an error: the sniffer tells where it went).
fn udp_twice(w: &World, sport: u16, to: std::net::SocketAddr, gap: Duration) -> Opened {
    let ns = w.a.name().to_string();
    std::thread::spawn(move || {
        lab::netns::enter(&ns).expect("enter client A");
        let sock = std::net::UdpSocket::bind(("0.0.0.0", sport)).expect("bind");
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        for (i, payload) in [&b"first"[..], b"second"].iter().enumerate() {
            if i > 0 {
                sleep(gap);
            }
            sock.send_to(payload, to).expect("send");
            let _ = sock.recv(&mut buf);
        }
    })
    .join()
    .expect("client thread");
    Opened {
        client: Client::A,
        proto: lab::sniffer::Transport::Udp,
        sport,
        to,
    }
}

/// The queue backend with the save-mark rule left out of the firewall: the connection of a
/// new flow nfqmark marks still gets the mark, set over ctnetlink, so the flow's later packets
/// get it back and stay on its link. Control: with `--ct-marks off` they do not.
#[test]
fn ctnetlink_marks_the_connection_when_no_rule_saves_the_mark() {
    if !common::require_root("ctmarks") {
        return;
    }
    let (mut w, rules) = flows_lab("ctmarks", 23, RULES);
    let text = setup(&["--queue", "23", "--flow-backend", "queue"], &rules);
    let without_save: String = text
        .lines()
        .filter(|l| !l.contains("--save-mark"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(text, without_save, "setup's text has a save-mark rule");
    w.router_iptables_restore(Family::V4, &without_save)
        .expect("load setup's rules without the save-mark rule");
    let cheap = lab::CHEAP_TABLE.to_string();
    w.router
        .ip(&["rule", "add", "fwmark", "0x20/0xff", "table", &cheap])
        .expect("ip rule");
    let args = |ct: &str| -> Vec<String> {
        [
            "--rules",
            &rules.display().to_string(),
            "--flow-backend",
            "queue",
            "--ct-marks",
            ct,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    w.options_mut().nfqmark_args = args("auto");
    w.start_nfqmark().expect("start nfqmark");
    assert!(
        w.wait_log(
            "connection marks: set over ctnetlink",
            1,
            Duration::from_secs(5)
        ),
        "{}",
        w.nfqmark_log()
    );
    w.start_resolver(Family::V4).expect("start the resolver");
    resolve(
        &w,
        Client::A,
        Family::V4,
        "ip-198-18-9-81.video.nfqm.example",
        "198.18.9.81",
    );
    let gap = Duration::from_millis(300);
    let changes_before = w.route_changes().expect("route changes").udp;
    let with_ct = udp_twice(&w, 31_001, "198.18.9.81:5000".parse().expect("addr"), gap);
    let changes_with = w.route_changes().expect("route changes").udp - changes_before;
    let marked_log = w.stop_nfqmark();
    // The control: the same without ctnetlink.
    w.options_mut().nfqmark_args = args("off");
    w.start_nfqmark().expect("restart nfqmark");
    resolve(
        &w,
        Client::A,
        Family::V4,
        "ip-198-18-9-82.video.nfqm.example",
        "198.18.9.82",
    );
    let changes_before = w.route_changes().expect("route changes").udp;
    let without = udp_twice(&w, 31_002, "198.18.9.82:5000".parse().expect("addr"), gap);
    let changes_without = w.route_changes().expect("route changes").udp - changes_before;
    sleep(Duration::from_millis(200));
    let log = w.stop_nfqmark();
    let with_links = w.flow_links(&with_ct);
    let without_links = w.flow_links(&without);
    println!("{marked_log}\n{log}\nwith ctnetlink: {with_links:?}\nwithout: {without_links:?}");
    assert_eq!(with_links, ["link2", "link2"], "{marked_log}");
    assert_eq!(
        changes_with, 0,
        "no packet of the flow left by another link"
    );
    assert!(marked_log.contains("ct_marks_set=1"), "{marked_log}");
    // Control: the first datagram is marked (queued), the second has no mark to get back and
    // is routed out of link 1 with link 2's NAT binding (counted, and dropped on the way).
    assert_eq!(without_links.first().map(String::as_str), Some("link2"));
    assert!(
        without_links.get(1).is_none_or(|l| l.starts_with("link1")),
        "{without_links:?}"
    );
    assert!(
        changes_without >= 1,
        "without ctnetlink nor a save-mark rule the flow's second packet changes link"
    );
}
