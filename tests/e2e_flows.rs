//! End to end, DNS-learned flow marks: a client resolves a name a flow rule names through the
//! router's resolver, then opens a TCP connection and a UDP flow to the answered address: both
//! are marked and leave over the cheap link. A client that did not resolve the name, and a name
//! no rule names, are not marked; an alias (CNAME) of a named name is; after the record's TTL a
//! new flow is no longer marked. The router's firewall rules come from `nfqmark setup`. The same
//! holds over IPv6: AAAA answers teach marks for flows to IPv6 addresses.

mod common;

use std::path::Path;
use std::process::Command;
use std::thread::sleep;
use std::time::Duration;

use nfqmark_lab::{self as lab, Client, Family, Opened, Options, Resolver, World};

const RULES: &str = "\
# Flows from clients in 198.18.1.0/24 to what *.video.nfqm.example resolves to: mark 0x20/0xff.
flow src 198.18.1.0/24 names *.video.nfqm.example set-mark 0x20/0xff
default accept
";

fn ip(s: &str) -> std::net::IpAddr {
    s.parse().expect("address")
}

/// The firewall rules `nfqmark setup --iptables ARGS --rules RULES` prints.
fn setup(args: &[&str], rules: &Path) -> String {
    let out = Command::new(common::nfqmark_bin())
        .args(["setup", "--iptables"])
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
    let mut args = vec!["--queue", queue.as_str()];
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
    let mut options = Options::new("flows", Resolver::Dnsmasq, Some(common::nfqmark_bin()));
    options.queue = 11;
    options.queue_rules = false; // the rules `nfqmark setup` prints instead
    options.marking = false;
    let mut w = World::build(options).expect("build the lab");
    let rules = w.path("flows.rules");
    std::fs::write(&rules, RULES).expect("write rules");
    w.options_mut().nfqmark_args = vec![
        "--rules".into(),
        rules.display().to_string(),
        "--flow-ttl-min".into(),
        "1s".into(),
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
    let a_tcp = w
        .connect_to(Client::A, ip("198.18.9.81"), 80)
        .expect("A connects");
    let a_udp = w
        .udp_to(Client::A, ip("198.18.9.81"), 5000)
        .expect("A sends UDP");
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
    let mut options = Options::new("flows6", Resolver::Dnsmasq, Some(common::nfqmark_bin()));
    options.queue = 16;
    options.queue_rules = false; // the rules `nfqmark setup -6` prints instead
    options.marking = false;
    let mut w = World::build(options).expect("build the lab");
    let rules = w.path("flows6.rules");
    std::fs::write(&rules, RULES_V6).expect("write rules");
    w.options_mut().nfqmark_args = vec!["--rules".into(), rules.display().to_string()];
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
