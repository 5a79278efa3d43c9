//! `nfqmark setup`: the firewall rules a rules file needs, ready for `iptables-restore` or
//! `nft -f`.
//!
//! This module owns the text of those rules, so the README shows this command's output instead
//! of hand-written copies that drift, and which clients' new flows they queue: the prefixes
//! [`flow_clients`] draws from the flow rules' `src` matchers. Rendering and that math are pure
//! (rules or a [`Plan`] in, text out); the only I/O is in the probes, which ask the running
//! kernel whether a feature exists without changing anything: [`probe_nft_queue`] with `nft
//! --check`, [`probe_ct_zone_mark`] by loading the rule into a scratch network namespace that is
//! thrown away. It never decides how a packet or a flow is marked (that is the rules').
//!
//! Why the resolver's UDP queries are queued in the raw table: on a router that masquerades each
//! uplink, a connection's NAT binding is chosen by its first packet. A resolver that sends every
//! upstream query from one port (dnsmasq `--query-port`), or reuses a port within conntrack's
//! UDP timeout, puts queries of differently marked clients on one connection; the mark routes a
//! query out of the other uplink with the first query's source address, and the far side drops
//! it. `CT --zone-orig mark` makes the mark part of the connection's identity (each mark its own
//! conntrack zone, so its own connection and NAT binding), but the mark must be set before
//! conntrack sees the packet: so these queries are queued in the raw table, ahead of conntrack.
//!
//! Flow rules have two backends, and setup prints the rules of the one the kernel supports
//! ([`probe_nft_flow_sets`], `--flow-backend` overrides). The kernel backend (`nft`) keeps what
//! nfqmark learned as elements of nftables sets, one per flow rule and family
//! (`crate::kernel_flows`), each element timing out with its record's TTL; rules in the `inet
//! nfqmark` table mark a connection's first packet from the sets, save the mark to the
//! connection, and give later packets the mark back: no flow packet is queued, and marks keep
//! working while nfqmark restarts. Each rule sets a constant (the flow rule's mark under its
//! mask) rather than a value looked up in a map: with nft 1.0.6 a map value cannot be combined
//! with the packet's other mark bits (`meta mark set meta mark & 0xffffff00 | <map>` is refused:
//! "Right hand side of binary operation (|) must be constant"; combining two registers needs
//! nft 1.1.1 or newer and Linux 6.13 or newer), while `meta mark & ~mask | value` with constants
//! works on every nft. One set per flow rule keeps first-match-wins: the rules look up the sets in file order
//! and the first hit ends the chain. Only the connection's first packet (conntrack entry not
//! confirmed yet) is looked up, so a connection opened before its address was learned is never
//! re-marked midway. The queue backend (`queue`) queues those first packets to nfqmark instead:
//! for kernels or nft versions without these sets, and for iptables-only setups. Where the kernel
//! lacks the nft `queue` expression, DNS is queued with iptables and the sets are one more nft
//! table (`--flow-table`).

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::{Command, Stdio};

use crate::kernel_flows::SetSpec;
use crate::rules::{AddrRange, RuleSet};

/// What the rules need from the firewall.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// First and last queue (a range is balanced across workers).
    pub queues: (u16, u16),
    /// Bits of the mark nfqmark owns; CONNMARK saves and restores only these.
    pub mask: u32,
    /// DNS ports queued for pairing (and for learning flows from answers).
    pub dns_ports: Vec<u16>,
    /// New flows to queue for DNS-learned marks: source prefixes of the clients that flow rules
    /// name, per family (`None`: no flow rules; an empty list: every client).
    pub flow_clients_v4: Option<Vec<String>>,
    pub flow_clients_v6: Option<Vec<String>>,
    /// Queue the resolver's UDP queries in the raw table with a conntrack zone taken from the
    /// mark (`CT --zone-orig mark`), so that every mark is its own connection.
    pub zones: bool,
    /// The kernel backend's sets for the flow rules (`crate::kernel_flows::layout`): new flows
    /// are marked from them by nft rules, not queued. Empty: flows are queued (or there are no
    /// flow rules).
    pub flow_sets: Vec<SetSpec>,
    /// Queue only what pairing must see (issue 17): client queries and the resolver's queries,
    /// truncated upstream answers (a u32 match on the TC bit: they announce a TCP retry), and
    /// answers to clients only when flow rules learn from them. The other answers get their
    /// connection's mark from conntrack. For forwarding resolvers: a recursive resolver's
    /// referrals and CNAMEs are then not read (attribution by ancestors only).
    pub lean: bool,
    /// Where the rules came from, for the header comment.
    pub source: String,
}

/// Address family of an iptables ruleset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Plan {
    fn queue_target(&self) -> String {
        let (a, b) = self.queues;
        if a == b {
            format!("NFQUEUE --queue-num {a} --queue-bypass")
        } else {
            format!("NFQUEUE --queue-balance {a}:{b} --queue-bypass")
        }
    }

    fn nft_queue(&self) -> String {
        let (a, b) = self.queues;
        if a == b {
            format!("counter queue flags bypass to {a}")
        } else {
            format!("counter queue flags bypass,fanout to {a}-{b}")
        }
    }

    fn mask_args(&self) -> String {
        if self.mask == u32::MAX {
            String::new()
        } else {
            format!(" --nfmask {m:#x} --ctmask {m:#x}", m = self.mask)
        }
    }

    fn flow_clients(&self, family: Family) -> Option<&Vec<String>> {
        match family {
            Family::V4 => self.flow_clients_v4.as_ref(),
            Family::V6 => self.flow_clients_v6.as_ref(),
        }
    }
}

/// Source prefixes the flow rules can match, as text (`198.18.1.0/24`), per family: (IPv4,
/// IPv6), for [`Plan`]. `None` for a family no flow rule can match; `Some(empty vec)` when some
/// flow rule can match every client of that family (no `src`, or only negated `src`). A rule
/// whose positive `src` matchers all hold only for clients inside each of them is stood for by
/// the one covering the fewest addresses of a family (a superset of its clients when it has
/// several); prefixes inside other listed prefixes are left out. Rules without names never match
/// and need nothing.
pub fn flow_clients(rules: &RuleSet) -> (Option<Vec<String>>, Option<Vec<String>>) {
    let mut v4: Clients<u32> = Clients::default();
    let mut v6: Clients<u128> = Clients::default();
    for matchers in rules.flow_sources() {
        if matchers.is_empty() {
            v4.all = true;
            v6.all = true;
            continue;
        }
        let pick4 = matchers.iter().map(|v| {
            v.iter()
                .filter_map(|r| match r {
                    AddrRange::V4(a, b) => Some((*a, *b)),
                    AddrRange::V6(..) => None,
                })
                .collect()
        });
        let pick6 = matchers.iter().map(|v| {
            v.iter()
                .filter_map(|r| match r {
                    AddrRange::V6(a, b) => Some((*a, *b)),
                    AddrRange::V4(..) => None,
                })
                .collect()
        });
        v4.add_tightest(pick4.collect(), |(a, b)| f64::from(b - a) + 1.0);
        v6.add_tightest(pick6.collect(), |(a, b)| (b - a) as f64 + 1.0);
    }
    let text4 = |(a, b): (u32, u32)| format!("{}/{}", Ipv4Addr::from(a), (a ^ b).leading_zeros());
    let text6 = |(a, b): (u128, u128)| format!("{}/{}", Ipv6Addr::from(a), (a ^ b).leading_zeros());
    (
        v4.prefixes((0, u32::MAX), text4),
        v6.prefixes((0, u128::MAX), text6),
    )
}

/// What the flow rules can match of one address family, as inclusive ranges (each a prefix).
#[derive(Debug, Default)]
struct Clients<K> {
    /// Some rule matches every client of the family.
    all: bool,
    ranges: Vec<(K, K)>,
    /// Some rule matches clients of the family.
    any: bool,
}

impl<K: Copy + Ord> Clients<K> {
    /// Of one rule's positive `src` matchers (their ranges in this family), file the one that
    /// covers the fewest addresses; none if any of them has no range in this family.
    fn add_tightest(&mut self, matchers: Vec<Vec<(K, K)>>, size: impl Fn((K, K)) -> f64) {
        if matchers.iter().any(Vec::is_empty) {
            return;
        }
        let total = |v: &Vec<(K, K)>| v.iter().map(|r| size(*r)).sum::<f64>();
        let tightest = matchers
            .into_iter()
            .min_by(|a, b| total(a).total_cmp(&total(b)));
        if let Some(ranges) = tightest {
            self.any = true;
            self.ranges.extend(ranges);
        }
    }

    /// The family's prefixes as text, sorted, without prefixes inside other prefixes; an empty
    /// list for the whole family (`whole` listed, or a rule for every client); `None` when no
    /// rule can match the family.
    fn prefixes(self, whole: (K, K), text: impl Fn((K, K)) -> String) -> Option<Vec<String>> {
        if self.all {
            return Some(Vec::new());
        }
        if !self.any {
            return None;
        }
        let mut ranges = self.ranges;
        if ranges.contains(&whole) {
            return Some(Vec::new());
        }
        ranges.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        let mut out: Vec<(K, K)> = Vec::with_capacity(ranges.len());
        for r in ranges {
            match out.last() {
                Some(last) if r.1 <= last.1 => {}
                _ => out.push(r),
            }
        }
        Some(out.into_iter().map(text).collect())
    }
}

/// `iptables-restore --noflush` input for one family.
pub fn iptables(plan: &Plan, family: Family) -> String {
    let (tool, restore) = match family {
        Family::V4 => ("iptables", "iptables-restore"),
        Family::V6 => ("ip6tables", "ip6tables-restore"),
    };
    let q = plan.queue_target();
    let m = plan.mask_args();
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# nfqmark setup for {} ({tool}), nfqmark {}",
        plan.source,
        env!("CARGO_PKG_VERSION")
    );
    let _ = writeln!(
        o,
        "# apply once (e.g. at boot): nfqmark setup ... | {restore} --noflush"
    );
    let tables: &[&str] = if plan.zones {
        &["mangle", "raw", "nat"]
    } else {
        &["mangle"]
    };
    for t in tables {
        let _ = writeln!(
            o,
            "# remove: {tool}-save -t {t} | grep -v -e '--comment nfqmark' -e '^:NFQMARK' | {restore} -T {t}"
        );
    }
    if plan.zones {
        o.push_str("*raw\n");
        o.push_str(
            "# The resolver's upstream queries over UDP are queued before conntrack sees them, and\n\
             # their mark picks the conntrack zone: each mark is its own connection with its own NAT\n\
             # binding, even when the resolver sends every query from one port.\n",
        );
        for port in &plan.dns_ports {
            let _ = writeln!(o, "-A OUTPUT -p udp --dport {port} -j CT --zone-orig mark");
            let _ = writeln!(o, "-A OUTPUT -p udp --dport {port} -j {q}");
        }
        o.push_str("COMMIT\n");
        o.push_str("*nat\n");
        o.push_str(
            "# Two marks' connections from the same port to the same server differ only by zone,\n\
             # and their replies must differ too: with a nat chain in POSTROUTING, conntrack gives\n\
             # the second one another source port if no masquerade rule already did.\n",
        );
        for port in &plan.dns_ports {
            // No target: a rule that only counts, so it never ends the chain before the
            // masquerade rules, wherever they are.
            let _ = writeln!(o, "-A POSTROUTING -p udp --dport {port}");
        }
        o.push_str("COMMIT\n");
    }
    o.push_str("*mangle\n");
    o.push_str(":NFQMARK-DNS-IN - [0:0]\n:NFQMARK-DNS-OUT - [0:0]\n");
    let flows = plan.flow_clients(family);
    // With the kernel backend, new flows are marked by the nft table's sets, not queued.
    let queued_flows = flows.filter(|_| plan.flow_sets.is_empty());
    if !plan.flow_sets.is_empty() {
        o.push_str(
            "# Flow rules: marked by the kernel from nfqmark's nft sets, not queued; load them with\n\
             # nfqmark setup --rules FILE --flow-table | nft -f -\n",
        );
    }
    if queued_flows.is_some() {
        o.push_str(":NFQMARK-FLOWS - [0:0]\n");
    }
    o.push_str(
        "# Packets of a marked connection get the mark back first, before anything routes them.\n",
    );
    let _ = writeln!(o, "-A PREROUTING -j CONNMARK --restore-mark{m}");
    if queued_flows.is_some() {
        o.push_str("# New flows from clients that flow rules name: nfqmark marks those to learned addresses.\n");
        let _ = writeln!(
            o,
            "-A PREROUTING -m conntrack --ctstate NEW -j NFQMARK-FLOWS"
        );
    }
    o.push_str(
        "# Client queries and upstream answers, after PREROUTING marked them and after DNAT.\n",
    );
    o.push_str("-A INPUT -j NFQMARK-DNS-IN\n");
    o.push_str(
        "# The resolver's queries over TCP (the SYN included) and its answers to clients, before\n\
         # the restore below: the kernel routes a queued packet again only if its mark changed\n\
         # while queued. nfqmark gives a connection's later packets the connection's mark.\n",
    );
    o.push_str("-A OUTPUT -j NFQMARK-DNS-OUT\n");
    let _ = writeln!(
        o,
        "-A OUTPUT -m mark --mark 0/{:#x} -j CONNMARK --restore-mark{m}",
        plan.mask
    );
    if flows.is_some() {
        o.push_str(
            "# DNS answers routed through this host to clients (they teach flow marks too), and\n\
             # the queries they answer (an answer is learned only if its query was seen).\n",
        );
        for port in &plan.dns_ports {
            for proto in ["udp", "tcp"] {
                let _ = writeln!(o, "-A FORWARD -p {proto} --dport {port} -j {q}");
                let _ = writeln!(o, "-A FORWARD -p {proto} --sport {port} -j {q}");
            }
        }
    }
    o.push_str(
        "# A verdict from the queue ends the chain, so the mark is saved in a later hook; only\n\
         # from a connection's first packet, since its mark never changes afterwards.\n",
    );
    let _ = writeln!(
        o,
        "-A POSTROUTING -m conntrack --ctstate NEW -m mark ! --mark 0/{:#x} -j CONNMARK --save-mark{m}",
        plan.mask
    );
    // The TC bit of a DNS header over UDP: IPv4's header length varies, IPv6's does not (no
    // extension headers on a resolver's answers).
    let truncated = match family {
        Family::V4 => "-m u32 --u32 \"0>>22&0x3C@8&0x0200=0x0200\"",
        Family::V6 => "-m u32 --u32 \"48&0x0200=0x0200\"",
    };
    let learning = plan.flow_clients(family).is_some() || !plan.flow_sets.is_empty();
    for port in &plan.dns_ports {
        for proto in ["udp", "tcp"] {
            for dir in ["--dport", "--sport"] {
                match (plan.lean, proto, dir) {
                    (true, "udp", "--sport") => {
                        let _ = writeln!(
                            o,
                            "-A NFQMARK-DNS-IN -p udp --sport {port} {truncated} -j {q}"
                        );
                    }
                    (true, "tcp", "--sport") => {}
                    _ => {
                        let _ = writeln!(o, "-A NFQMARK-DNS-IN -p {proto} {dir} {port} -j {q}");
                    }
                }
            }
            for dir in ["--dport", "--sport"] {
                if plan.zones && proto == "udp" && dir == "--dport" {
                    continue; // queued in the raw table
                }
                if plan.lean && dir == "--sport" && !learning {
                    continue; // answers to clients: their connection's mark
                }
                let _ = writeln!(o, "-A NFQMARK-DNS-OUT -p {proto} {dir} {port} -j {q}");
            }
        }
    }
    if let Some(clients) = queued_flows {
        for port in &plan.dns_ports {
            for proto in ["udp", "tcp"] {
                let _ = writeln!(o, "-A NFQMARK-FLOWS -p {proto} --dport {port} -j RETURN");
            }
        }
        if clients.is_empty() {
            let _ = writeln!(o, "-A NFQMARK-FLOWS -j {q}");
        } else {
            for c in clients {
                let _ = writeln!(o, "-A NFQMARK-FLOWS -s {c} -j {q}");
            }
        }
    }
    o.push_str("COMMIT\n");
    tag(&o)
}

/// Mark every rule nfqmark asks for with `-m comment --comment nfqmark`, so they can be found
/// and removed as a group.
fn tag(text: &str) -> String {
    text.lines()
        .map(|l| match l.strip_prefix("-A ") {
            Some(rest) => match rest.split_once(' ') {
                Some((chain, tail)) => format!("-A {chain} -m comment --comment nfqmark {tail}\n"),
                None => format!("{l}\n"),
            },
            None => format!("{l}\n"),
        })
        .collect()
}

/// `nft -f` input for both families (an `inet` table of its own, replaced as a whole).
pub fn nft(plan: &Plan) -> String {
    let q = plan.nft_queue();
    let mask = plan.mask;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# nfqmark setup for {} (nft), nfqmark {}",
        plan.source,
        env!("CARGO_PKG_VERSION")
    );
    o.push_str(
        "# apply: nfqmark setup --nft ... | nft -f -    remove: nft delete table inet nfqmark\n",
    );
    o.push_str(
        "# nft cannot take a conntrack zone from the mark (CT --zone-orig mark): with a resolver\n\
         # that sends every upstream query from one port (dnsmasq --query-port) behind NAT, use the\n\
         # iptables form (nfqmark setup --iptables)\n",
    );
    if mask != u32::MAX {
        o.push_str(
            "# a partial mark mask combines two registers: this needs nft >= 1.1.1 and Linux >= 6.13;\n\
             # with older ones use the iptables form (nfqmark setup --iptables)\n",
        );
    }
    o.push_str("table inet nfqmark\ndelete table inet nfqmark\ntable inet nfqmark {\n");
    let ports: Vec<String> = plan.dns_ports.iter().map(u16::to_string).collect();
    let ports = if ports.len() == 1 {
        ports.join("")
    } else {
        format!("{{ {} }}", ports.join(", "))
    };
    let restore = if mask == u32::MAX {
        "meta mark set ct mark".to_string()
    } else {
        format!(
            "meta mark set meta mark & {:#x} | ct mark & {mask:#x}",
            !mask
        )
    };
    let save = if mask == u32::MAX {
        "ct mark set meta mark".to_string()
    } else {
        format!("ct mark set ct mark & {:#x} | meta mark & {mask:#x}", !mask)
    };
    let mut flows = String::new();
    for (family, clients) in [
        ("ip", &plan.flow_clients_v4),
        ("ip6", &plan.flow_clients_v6),
    ] {
        if !plan.flow_sets.is_empty() {
            break; // marked from the sets below, not queued
        }
        if let Some(clients) = clients {
            let from = if clients.is_empty() {
                format!(
                    "meta nfproto {}",
                    if family == "ip" { "ipv4" } else { "ipv6" }
                )
            } else {
                format!("{family} saddr {{ {} }}", clients.join(", "))
            };
            let _ = writeln!(
                flows,
                "\t\tct state new {from} udp dport != {ports} {q}\n\t\tct state new {from} tcp dport != {ports} {q}"
            );
        }
    }
    let any_flows = plan.flow_clients_v4.is_some() || plan.flow_clients_v6.is_some();
    let _ = writeln!(
        o,
        "\tchain prerouting {{\n\t\ttype filter hook prerouting priority mangle; policy accept;\n\t\t{restore}\n{flows}\t}}"
    );
    let _ = writeln!(
        o,
        "\tchain input {{\n\t\ttype filter hook input priority mangle; policy accept;\n\t\tudp dport {ports} {q}\n\t\ttcp dport {ports} {q}\n\t\tudp sport {ports} {q}\n\t\ttcp sport {ports} {q}\n\t}}"
    );
    let forward = if any_flows {
        format!("\t\tudp sport {ports} {q}\n\t\ttcp sport {ports} {q}\n")
    } else {
        String::new()
    };
    let _ = writeln!(
        o,
        "\tchain forward {{\n\t\ttype filter hook forward priority mangle; policy accept;\n{forward}\t}}"
    );
    let _ = writeln!(
        o,
        "\tchain output {{\n\t\ttype route hook output priority mangle; policy accept;\n\t\tudp dport {ports} {q}\n\t\ttcp dport {ports} {q}\n\t\tudp sport {ports} {q}\n\t\ttcp sport {ports} {q}\n\t\t{restore}\n\t}}"
    );
    let _ = writeln!(
        o,
        "\tchain postrouting {{\n\t\ttype filter hook postrouting priority mangle; policy accept;\n\t\tct state new meta mark & {mask:#x} != 0 {save}\n\t}}"
    );
    o.push_str(&flow_chains(plan));
    o.push_str("}\n");
    o
}

/// `nft -f` input for the kernel backend's part alone: the `inet nfqmark` table with the flow
/// rules' sets and the chains that mark new flows from them, for kernels where DNS is queued
/// with iptables (no nft `queue` expression). Replaces the table whole: its elements are gone
/// until a running nfqmark puts them back (it reads its sets back every `--flow-readback`).
pub fn nft_flow_table(plan: &Plan) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# nfqmark setup for {} (nft, flow sets only), nfqmark {}",
        plan.source,
        env!("CARGO_PKG_VERSION")
    );
    o.push_str(
        "# apply: nfqmark setup --rules FILE --flow-table | nft -f -    remove: nft delete table inet nfqmark\n\
         # DNS is queued by the iptables rules of: nfqmark setup --rules FILE --iptables\n",
    );
    o.push_str("table inet nfqmark\ndelete table inet nfqmark\ntable inet nfqmark {\n");
    o.push_str(&flow_chains(plan));
    o.push_str("}\n");
    o
}

/// `meta mark set` (or `ct mark set`, with `what` "ct mark") giving the bits under `mask` the
/// value's: constants only, which every nft takes.
fn set_under_mask(what: &str, value: u32, mask: u32) -> String {
    if mask == u32::MAX {
        format!("{what} set {value:#x}")
    } else {
        format!("{what} set {what} & {:#x} | {:#x}", !mask, value & mask)
    }
}

/// The sets of the kernel backend and the chains that use them (inside the table's braces);
/// nothing without them.
fn flow_chains(plan: &Plan) -> String {
    let mut o = String::new();
    if plan.flow_sets.is_empty() {
        return o;
    }
    o.push_str(
        "\t# What nfqmark learned: (client, address[, client's mark]) per flow rule and family,\n\
         \t# each element timing out with its DNS record's TTL (nfqmark writes them).\n",
    );
    for set in &plan.flow_sets {
        let _ = writeln!(
            o,
            "\tset {} {{\n\t\ttype {}\n\t\tflags timeout\n\t}}",
            set.name,
            set.nft_type()
        );
    }
    o.push_str(
        "\t# A connection's first packet to a learned address: the first flow rule whose set holds\n\
         \t# it gives its mark to the packet and to the connection. DNS is marked by pairing.\n\
         \tchain flows {\n",
    );
    for port in &plan.dns_ports {
        let _ = writeln!(
            o,
            "\t\tudp dport {port} return\n\t\ttcp dport {port} return"
        );
    }
    for set in &plan.flow_sets {
        let (value, mask) = set.target.mark;
        let _ = writeln!(
            o,
            "\t\t{} @{} {} {} return",
            set.nft_lookup(),
            set.name,
            set_under_mask("meta mark", value, mask),
            set_under_mask("ct mark", value, mask)
        );
    }
    o.push_str("\t}\n");
    o.push_str(
        "\t# After iptables' mangle PREROUTING (-150), where clients get their marks, before DNAT.\n\
         \t# Only a connection's first packet (its entry not confirmed yet) is looked up, so no\n\
         \t# connection changes its mark; later packets get it back from the connection (with\n\
         \t# the DNS rules' restore for the bits under --mark-mask, here for the others).\n\
         \tchain flow_marks {\n\
         \t\ttype filter hook prerouting priority mangle + 1; policy accept;\n",
    );
    let mut restored: Vec<(u32, u32)> = Vec::new();
    for set in &plan.flow_sets {
        let (value, mask) = set.target.mark;
        let key = (value & mask, mask);
        // Bits under `--mark-mask` come back with the DNS rules' own restore (iptables'
        // PREROUTING CONNMARK, or this table's prerouting chain): one rule fewer per packet.
        if key.0 == 0 || mask & !plan.mask == 0 || restored.contains(&key) {
            continue;
        }
        restored.push(key);
        let _ = writeln!(
            o,
            "\t\tct mark & {mask:#x} == {:#x} {}",
            key.0,
            set_under_mask("meta mark", value, mask)
        );
    }
    o.push_str("\t\tct status ! confirmed jump flows\n\t}\n");
    o
}

/// Whether the running kernel has conntrack zones taken from the mark (`CT --zone-orig mark`,
/// the xt CT target with zone directions, Linux >= 4.6). Loads the rule into a scratch network
/// namespace (`unshare --net`), which disappears with the command: the host's firewall is not
/// touched. `Err` says why it could not tell (not root, no `unshare`, ...).
pub fn probe_ct_zone_mark(family: Family) -> Result<bool, String> {
    let tool = match family {
        Family::V4 => "iptables",
        Family::V6 => "ip6tables",
    };
    let out = Command::new("unshare")
        .args([
            "--net", tool, "-w", "-t", "raw", "-A", "OUTPUT", "-p", "udp",
        ])
        .args(["--dport", "9", "-j", "CT", "--zone-orig", "mark"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("cannot run unshare: {e}"))?;
    if out.status.success() {
        return Ok(true);
    }
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("unshare failed") || err.contains("Operation not permitted") {
        Err(format!(
            "cannot make a scratch network namespace: {}",
            err.trim()
        ))
    } else {
        Ok(false)
    }
}

/// Whether the running kernel and nft take what the kernel backend of flow rules needs: a set
/// of concatenated addresses and a mark with per-element timeouts, looked up by a rule that
/// sets the packet's and the connection's mark under a mask, for a connection's first packet.
/// Asks `nft --check` (nothing changes). `Err` says why it could not tell (no nft, ...).
pub fn probe_nft_flow_sets() -> Result<bool, String> {
    let probe = "table inet nfqmark_probe {\n\tset s { type ipv4_addr . ipv4_addr . mark; flags timeout; }\n\tchain c {\n\t\ttype filter hook prerouting priority mangle + 1; policy accept;\n\t\tct status ! confirmed ip saddr . ip daddr . meta mark & 0xff00 @s meta mark set meta mark & 0xffffff00 | 0x20 ct mark set ct mark & 0xffffff00 | 0x20\n\t}\n}\n";
    match nft_check(probe)? {
        None => Ok(true),
        Some(err) if err.contains("Operation not permitted") => {
            Err(format!("nft --check needs CAP_NET_ADMIN: {}", err.trim()))
        }
        // Refused by the kernel (a missing feature) or by nft (syntax it does not know).
        Some(err) if err.contains("Error:") => Ok(false),
        Some(err) => Err(format!("nft --check failed: {}", err.trim())),
    }
}

/// Run `nft --check -f -` on `script`: `None` when it would load, else nft's error text.
fn nft_check(script: &str) -> Result<Option<String>, String> {
    let mut child = Command::new("nft")
        .args(["--check", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nft: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| format!("cannot talk to nft: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        return Ok(None);
    }
    Ok(Some(String::from_utf8_lossy(&out.stderr).into_owned()))
}

/// Whether the running kernel accepts the nft `queue` expression. Asks `nft --check` to load a
/// throw-away table: nothing is changed. `Err` says why it could not tell (no nft, ...).
pub fn probe_nft_queue() -> Result<bool, String> {
    let probe = "table inet nfqmark_probe {\n\tchain c {\n\t\ttype filter hook output priority 0; policy accept;\n\t\tudp dport 9 queue flags bypass to 0\n\t}\n}\n";
    match nft_check(probe)? {
        None => Ok(true),
        Some(err) if err.contains("queue") || err.contains("No such file or directory") => {
            Ok(false)
        }
        Some(err) => Err(format!("nft --check failed: {}", err.trim())),
    }
}

// ---------------------------------------------------------------------------------------------
// Policy routing: the `ip rule` and `ip route` lines for each mark (`nfqmark setup --routes`).
// ---------------------------------------------------------------------------------------------

/// One mark's route (`--route MARK=DEV[,via=GW][,via6=GW6][,table=N][,pref=N]`): packets whose
/// mark under the mask equals `mark` use table `table`, whose default route leaves by `dev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub mark: u32,
    pub dev: String,
    /// The IPv4 gateway; none: `dev` is point-to-point (ppp0, wg0), or the link has no IPv4.
    pub via4: Option<Ipv4Addr>,
    /// The IPv6 gateway; none: as for IPv4.
    pub via6: Option<Ipv6Addr>,
    /// Routing table; `None`: 100, 101, ... by position.
    pub table: Option<u32>,
    /// `ip rule` preference; `None`: 20000, 20001, ... by position (before main's 32766).
    pub pref: Option<u32>,
}

/// Parse `--route MARK=DEV[,via=GW][,via6=GW6][,table=N][,pref=N]`.
pub fn parse_route(s: &str) -> Result<RouteSpec, String> {
    let example = "e.g. 137=wan2,via=198.51.100.1 or 0x20=wg0";
    let (mark, rest) = s.split_once('=').ok_or_else(|| {
        format!("'{s}' is not MARK=DEV[,via=GW][,via6=GW6][,table=N] ({example})")
    })?;
    let mark = crate::cli::parse_u32(mark)?;
    if mark == 0 {
        return Err(format!(
            "'{s}': mark 0 is every unmarked packet; give the mark nfqmark sets ({example})"
        ));
    }
    let mut parts = rest.split(',');
    let dev = parts.next().unwrap_or("").trim();
    if dev.is_empty() || dev.len() > 15 || dev.contains(['/', ' ', '=']) {
        return Err(format!(
            "'{s}': '{dev}' is not an interface name (at most 15 characters; {example})"
        ));
    }
    let mut spec = RouteSpec {
        mark,
        dev: dev.to_string(),
        via4: None,
        via6: None,
        table: None,
        pref: None,
    };
    for part in parts {
        let (key, value) = part.split_once('=').unwrap_or((part, ""));
        let value = value.trim();
        let bad = |what: &str| format!("'{s}': '{part}': {what} ({example})");
        match key.trim() {
            "via" => match value.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(a)) => spec.via4 = Some(a),
                Ok(std::net::IpAddr::V6(a)) => spec.via6 = Some(a),
                Err(_) => return Err(bad("not an address")),
            },
            "via6" => spec.via6 = Some(value.parse().map_err(|_| bad("not an IPv6 address"))?),
            "table" => {
                let t: u32 = value.parse().map_err(|_| bad("not a table number"))?;
                // 0 is unspec; 253-255 are default, main and local.
                if t == 0 || (253..=255).contains(&t) {
                    return Err(bad("tables 0 and 253-255 are the kernel's; pick another"));
                }
                spec.table = Some(t);
            }
            "pref" => {
                let p: u32 = value.parse().map_err(|_| bad("not a rule preference"))?;
                if p == 0 || p >= 32766 {
                    return Err(bad(
                        "a preference from 1 to 32765 (before the main table's rule)",
                    ));
                }
                spec.pref = Some(p);
            }
            other => {
                return Err(bad(&format!(
                    "unknown key '{other}' (expected via, via6, table or pref)"
                )));
            }
        }
    }
    Ok(spec)
}

/// The metric of the kill switch: the largest, so any real route of the table wins while it
/// exists.
pub const KILL_SWITCH_METRIC: u32 = u32::MAX;

/// The shell commands (for `sh`) that route each mark by its own table, IPv4 and IPv6, with a
/// kill switch in every table: an `unreachable` default route of the largest metric, so that when
/// the mark's link is down (its routes gone) marked packets are refused instead of falling
/// through to the main table's route. `mask`: the bits of the mark nfqmark owns (`fwmark
/// MARK/MASK`). Marks that share a table share its routes. Commands are idempotent: run again,
/// they leave one copy of each rule and route.
pub fn routes(specs: &[RouteSpec], mask: u32, source: &str) -> Result<String, String> {
    if specs.is_empty() {
        return Err(
            "--routes needs at least one --route MARK=DEV[,via=GW][,via6=GW6] (the marks your \
             rules set, and the uplink each one uses)"
                .to_string(),
        );
    }
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# nfqmark setup --routes for {source}, nfqmark {}",
        env!("CARGO_PKG_VERSION")
    );
    o.push_str("# apply once (e.g. when the uplinks come up): nfqmark setup --routes ... | sh\n");
    o.push_str(
        "# Each mark has its own table; its last route is a kill switch: when the uplink goes down\n\
         # (its routes go with it) marked packets are refused, never sent by the main table.\n\
         # A cable pulled leaves the link up and its routes in place unless the kernel ignores\n\
         # routes with a lost carrier (net.ipv4.conf.DEV.ignore_routes_with_linkdown=1, and the\n\
         # same under net.ipv6), set below.\n",
    );
    o.push_str("set -e\n");
    let mut seen_tables: Vec<u32> = Vec::new();
    let mut removal = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let index = u32::try_from(i).unwrap_or(u32::MAX);
        let table = spec.table.unwrap_or(100u32.saturating_add(index));
        let pref = spec.pref.unwrap_or(20_000u32.saturating_add(index));
        let mark = spec.mark & mask;
        if mark == 0 {
            return Err(format!(
                "--route {:#x}={}: the mark has no bit under --mark-mask {mask:#x}",
                spec.mark, spec.dev
            ));
        }
        let fwmark = if mask == u32::MAX {
            format!("{mark:#x}")
        } else {
            format!("{mark:#x}/{mask:#x}")
        };
        let dev = &spec.dev;
        let _ = writeln!(o, "\n# mark {fwmark} -> table {table} -> {dev}");
        let _ = writeln!(
            o,
            "sysctl -qw net.ipv4.conf.{dev}.ignore_routes_with_linkdown=1 net.ipv6.conf.{dev}.ignore_routes_with_linkdown=1 || true"
        );
        for (family, via) in [
            ("-4", spec.via4.map(|a| a.to_string())),
            ("-6", spec.via6.map(|a| a.to_string())),
        ] {
            let name = if family == "-4" { "IPv4" } else { "IPv6" };
            if !seen_tables.contains(&table) {
                // The kill switch first: from the moment the rule exists, the table never lets a
                // marked packet fall through to the main table.
                let _ = writeln!(
                    o,
                    "ip {family} route replace unreachable default metric {KILL_SWITCH_METRIC} table {table}"
                );
                let other_family_has_gateway = match family {
                    "-4" => spec.via6.is_some(),
                    _ => spec.via4.is_some(),
                };
                let route = match via {
                    Some(gw) => Some(format!("default via {gw} dev {dev}")),
                    // A link with a gateway for the other family only: this family has no
                    // route there, only the kill switch.
                    None if other_family_has_gateway => None,
                    None => Some(format!("default dev {dev}")),
                };
                match route {
                    // A link that is down now refuses the route: the kill switch holds until
                    // the route is added again (run this again when the link is up).
                    Some(route) => {
                        let _ = writeln!(
                            o,
                            "ip {family} route replace {route} table {table} || echo \"nfqmark: {dev} is down or has no {name}: marked {name} packets are refused until this runs again with it up\" >&2"
                        );
                    }
                    None => {
                        let _ = writeln!(
                            o,
                            "# no {name} gateway on {dev}: marked {name} packets are refused"
                        );
                    }
                }
            }
            let _ = writeln!(
                o,
                "while ip {family} rule del pref {pref} 2>/dev/null; do :; done"
            );
            let _ = writeln!(
                o,
                "ip {family} rule add pref {pref} fwmark {fwmark} table {table}"
            );
        }
        if !seen_tables.contains(&table) {
            seen_tables.push(table);
            removal.push(format!(
                "ip -4 route flush table {table}; ip -6 route flush table {table}"
            ));
        }
        removal.push(format!(
            "ip -4 rule del pref {pref}; ip -6 rule del pref {pref}"
        ));
    }
    o.push_str("\n# remove:\n");
    for r in removal {
        let _ = writeln!(o, "#   {r}");
    }
    Ok(o)
}

#[cfg(test)]
mod route_tests {
    use super::*;

    fn spec(s: &str) -> RouteSpec {
        parse_route(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn route_specs_parse_and_errors_say_what_is_wrong() {
        let r = spec("137=wan2,via=198.51.100.1,via6=2001:db8::1,table=120,pref=900");
        assert_eq!(r.mark, 137);
        assert_eq!(r.dev, "wan2");
        assert_eq!(r.via4, Some(Ipv4Addr::new(198, 51, 100, 1)));
        assert_eq!(r.via6, "2001:db8::1".parse().ok());
        assert_eq!((r.table, r.pref), (Some(120), Some(900)));
        let r = spec("0x20=wg0,via=2001:db8::1");
        assert_eq!((r.mark, r.via4, r.via6.is_some()), (0x20, None, true));
        for (bad, says) in [
            ("137", "is not MARK=DEV"),
            ("0=wan2", "mark 0"),
            ("x=wan2", "32-bit number"),
            ("137=", "not an interface name"),
            ("137=averyveryverylongname", "not an interface name"),
            ("137=wan2,via=nope", "not an address"),
            ("137=wan2,table=254", "kernel's"),
            ("137=wan2,pref=40000", "preference"),
            ("137=wan2,gw=1.2.3.4", "unknown key 'gw'"),
        ] {
            let e = parse_route(bad).expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn each_mark_gets_a_table_a_rule_and_a_kill_switch_in_both_families() {
        let text = routes(
            &[
                spec("137=link2,via=198.18.4.2,via6=2001:db8:4::2"),
                spec("0x20=wg0"),
                spec("0x30=wan3,via=198.51.100.1"),
            ],
            u32::MAX,
            "test",
        )
        .expect("routes");
        for line in [
            "ip -4 rule add pref 20000 fwmark 0x89 table 100",
            "ip -6 rule add pref 20000 fwmark 0x89 table 100",
            "ip -4 route replace default via 198.18.4.2 dev link2 table 100 || echo \"nfqmark: link2 is down or has no IPv4: marked IPv4 packets are refused until this runs again with it up\" >&2",
            "ip -4 route replace unreachable default metric 4294967295 table 100",
            "ip -6 route replace unreachable default metric 4294967295 table 100",
            "ip -6 route replace default dev wg0 table 101 || echo \"nfqmark: wg0 is down or has no IPv6: marked IPv6 packets are refused until this runs again with it up\" >&2",
            "ip -4 rule add pref 20001 fwmark 0x20 table 101",
            "ip -4 route replace default via 198.51.100.1 dev wan3 table 102 || echo \"nfqmark: wan3 is down or has no IPv4: marked IPv4 packets are refused until this runs again with it up\" >&2",
            "# no IPv6 gateway on wan3: marked IPv6 packets are refused",
            "ip -6 route replace unreachable default metric 4294967295 table 102",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(
            !text.contains("ip -6 route replace default dev wan3"),
            "{text}"
        );
        // Under a mask, the rules match the mask's bits only.
        let text = routes(&[spec("0x100=wan2")], 0xff00, "test").expect("masked");
        assert!(text.contains("fwmark 0x100/0xff00 table 100"), "{text}");
        assert!(routes(&[spec("0x1=wan2")], 0xff00, "t").is_err());
        assert!(routes(&[], u32::MAX, "t").is_err());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::testutil::{VIDEO, rules};

    fn plan() -> Plan {
        Plan {
            queues: (0, 3),
            mask: 0xff,
            dns_ports: vec![53],
            flow_clients_v4: None,
            flow_clients_v6: None,
            zones: true,
            flow_sets: Vec::new(),
            lean: false,
            source: "test.rules".into(),
        }
    }

    #[test]
    fn dns_only_iptables_queues_the_four_dns_directions_and_saves_after_the_queue() {
        let tagged = iptables(&plan(), Family::V4);
        assert!(tagged.contains("-A INPUT -m comment --comment nfqmark -j NFQMARK-DNS-IN\n"));
        let text = tagged.replace(" -m comment --comment nfqmark", "");
        for line in [
            "-A NFQMARK-DNS-IN -p udp --dport 53 -j NFQUEUE --queue-balance 0:3 --queue-bypass",
            "-A NFQMARK-DNS-IN -p tcp --sport 53 -j NFQUEUE --queue-balance 0:3 --queue-bypass",
            "-A NFQMARK-DNS-OUT -p tcp --dport 53 -j NFQUEUE --queue-balance 0:3 --queue-bypass",
            "-A NFQMARK-DNS-OUT -p tcp --sport 53 -j NFQUEUE --queue-balance 0:3 --queue-bypass",
            "-A OUTPUT -p udp --dport 53 -j NFQUEUE --queue-balance 0:3 --queue-bypass",
            "-A POSTROUTING -m conntrack --ctstate NEW -m mark ! --mark 0/0xff -j CONNMARK --save-mark --nfmask 0xff --ctmask 0xff",
            "-A PREROUTING -j CONNMARK --restore-mark --nfmask 0xff --ctmask 0xff",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(!text.contains("NFQMARK-FLOWS"));
        assert!(text.starts_with("# nfqmark setup"));
        assert!(text.ends_with("COMMIT\n"));
    }

    /// The kernel routes a packet coming back from the queue again only if its mark changed
    /// while it was queued: a restore-mark before the queue would hide nfqmark's mark from the
    /// routing decision whenever the connection already carried it.
    #[test]
    fn output_queues_dns_before_restoring_the_connection_mark() {
        let text = iptables(&plan(), Family::V4).replace(" -m comment --comment nfqmark", "");
        let mangle = text.split("*mangle").nth(1).unwrap_or_default();
        let output: Vec<&str> = mangle
            .lines()
            .filter(|l| l.starts_with("-A OUTPUT "))
            .collect();
        assert_eq!(
            output,
            [
                "-A OUTPUT -j NFQMARK-DNS-OUT",
                "-A OUTPUT -m mark --mark 0/0xff -j CONNMARK --restore-mark --nfmask 0xff --ctmask 0xff"
            ]
        );
        let nft = nft(&plan());
        let chain = nft
            .split("chain output {")
            .nth(1)
            .and_then(|c| c.split('}').next())
            .unwrap_or_default();
        let queue = chain.find("queue flags").unwrap_or(usize::MAX);
        let restore = chain.find("meta mark set").unwrap_or(0);
        assert!(queue < restore, "{chain}");
    }

    #[test]
    fn flow_rules_queue_new_flows_of_their_clients_but_not_dns() {
        let mut p = plan();
        p.queues = (2, 2);
        p.mask = u32::MAX;
        p.flow_clients_v4 = Some(vec!["198.18.1.0/24".into()]);
        let text = iptables(&p, Family::V4).replace(" -m comment --comment nfqmark", "");
        assert!(text.contains("-A PREROUTING -m conntrack --ctstate NEW -j NFQMARK-FLOWS\n"));
        assert!(text.contains("-A NFQMARK-FLOWS -p udp --dport 53 -j RETURN\n"));
        assert!(text.contains(
            "-A NFQMARK-FLOWS -s 198.18.1.0/24 -j NFQUEUE --queue-num 2 --queue-bypass\n"
        ));
        assert!(
            text.contains("-A FORWARD -p udp --sport 53 -j NFQUEUE --queue-num 2 --queue-bypass\n")
        );
        assert!(
            text.contains("-A POSTROUTING -m conntrack --ctstate NEW -m mark ! --mark 0/0xffffffff -j CONNMARK --save-mark\n")
        );
        // No flow rules for IPv6: nothing queued there.
        assert!(!iptables(&p, Family::V6).contains("NFQMARK-FLOWS"));
    }

    #[test]
    fn nft_has_one_table_replaced_whole_with_masks() {
        let mut p = plan();
        p.flow_clients_v6 = Some(vec!["2001:db8:1::/64".into()]);
        let text = nft(&p);
        assert!(text.contains("delete table inet nfqmark\ntable inet nfqmark {\n"));
        assert!(text.contains("queue flags bypass,fanout to 0-3"));
        assert!(text.contains("meta mark set meta mark & 0xffffff00 | ct mark & 0xff"));
        assert!(text.contains("ct state new ip6 saddr { 2001:db8:1::/64 } udp dport != 53"));
        assert_eq!(text.matches('{').count(), text.matches('}').count());
    }

    /// The resolver's UDP queries are queued before conntrack, with a zone from the mark, so a
    /// query port shared by differently marked clients makes one connection per mark.
    #[test]
    fn udp_queries_are_queued_in_raw_with_a_zone_from_the_mark_before_the_queue() {
        let text = iptables(&plan(), Family::V6).replace(" -m comment --comment nfqmark", "");
        let raw = text
            .split("*raw\n")
            .nth(1)
            .and_then(|t| t.split("COMMIT").next())
            .unwrap_or_default();
        let rules: Vec<&str> = raw.lines().filter(|l| l.starts_with("-A")).collect();
        assert_eq!(
            rules,
            [
                "-A OUTPUT -p udp --dport 53 -j CT --zone-orig mark",
                "-A OUTPUT -p udp --dport 53 -j NFQUEUE --queue-balance 0:3 --queue-bypass",
            ]
        );
        assert!(text.find("*raw") < text.find("*mangle"));
        assert!(text.contains("ip6tables-save -t raw"));
        let mut off = plan();
        off.zones = false;
        let text = iptables(&off, Family::V4).replace(" -m comment --comment nfqmark", "");
        assert!(!text.contains("*raw"));
        assert!(text.contains("-A NFQMARK-DNS-OUT -p udp --dport 53 -j NFQUEUE"));
    }

    #[test]
    fn flow_clients_per_family() {
        let clients = |text: &str| flow_clients(&rules(text));
        let none: (Option<Vec<String>>, Option<Vec<String>>) = (None, None);
        assert_eq!(clients("dport 443 accept\n"), none);
        assert_eq!(
            clients(VIDEO),
            (
                Some(vec!["198.18.1.0/24".to_string()]),
                Some(vec!["2001:db8:1::/64".to_string()])
            )
        );
        // Mixed rules: v4 only from these, sorted, nested prefixes and repeats left out.
        assert_eq!(
            clients(
                "set lan addrs { 198.18.2.0/24, 198.18.1.7 }\n\
                 flow src 198.18.1.0/24 names a.example set-mark 1\n\
                 flow src @lan, 198.18.1.0/24 names b.example set-mark 2\n\
                 flow src 198.18.3.4 names c.example set-mark 3\n"
            ),
            (
                Some(vec![
                    "198.18.1.0/24".to_string(),
                    "198.18.2.0/24".to_string(),
                    "198.18.3.4/32".to_string()
                ]),
                None
            )
        );
        // A rule for every client of one family.
        assert_eq!(
            clients(
                "flow src 198.18.1.0/24 names a.example set-mark 1\n\
                 flow src ::/0 names b.example set-mark 2\n"
            ),
            (Some(vec!["198.18.1.0/24".to_string()]), Some(vec![]))
        );
        // No src, or only a negated one: every client of both families.
        for text in [
            "flow names a.example set-mark 1\n",
            "flow ! src 198.18.9.0/24 names a.example set-mark 1\n",
            "flow mark 0x1/0x1 names a.example set-mark 1\n\
             flow src 198.18.1.0/24 names a.example set-mark 1\n",
        ] {
            assert_eq!(clients(text), (Some(vec![]), Some(vec![])), "{text}");
        }
        // Several positive src matchers: the tightest stands for the rule; a family one of them
        // leaves out is out.
        assert_eq!(
            clients(
                "flow src 198.18.0.0/16, 2001:db8::/32 src 198.18.5.0/24 names a.example \
                 set-mark 1\n"
            ),
            (Some(vec!["198.18.5.0/24".to_string()]), None)
        );
        // A rule whose names are an empty set can never match.
        assert_eq!(
            clients("set none names { }\nflow names @none set-mark 1\n"),
            none
        );
    }
}
