//! Tests of the text -> rules step as a whole (`lex`, `syntax`, `values`, `resolve` and the
//! hints): what each field parses to, and every mistake a user can make, with its place and hint.

use super::defs::{
    Action, AddrRange, Cond, DnsKind, FlowDef, IfPattern, IfaceUse, NamePattern, Parsed, PortRange,
    RuleDef, SetKind, Test,
};
use super::hints::did_you_mean;
use super::parse;
use crate::types::{Direction, Hook, Verdict};

fn iface(name: &str, prefix: bool) -> IfPattern {
    IfPattern {
        name: name.into(),
        prefix,
    }
}

fn ok(text: &str) -> Parsed {
    match parse(text, "t.rules") {
        Ok(p) => p,
        Err(d) => panic!("unexpected errors: {d:#?}"),
    }
}

/// Every diagnostic, as the user sees it.
fn errors(text: &str) -> Vec<String> {
    match parse(text, "t.rules") {
        Ok(p) => panic!("expected errors for {text:?}, parsed {p:#?}"),
        Err(d) => d.iter().map(ToString::to_string).collect(),
    }
}

fn wire(name: &str) -> Box<[u8]> {
    let mut w = Vec::new();
    for l in name.split('.') {
        w.push(l.len() as u8);
        w.extend(l.bytes());
    }
    w.push(0);
    w.into_boxed_slice()
}

fn only_rule(text: &str) -> RuleDef {
    let mut p = ok(text);
    assert_eq!(p.rules.len(), 1, "{text}");
    p.rules.remove(0)
}

#[test]
fn empty_file_is_accept_everything() {
    for text in ["", "# only a comment\n\n   \t\n", "\r\n"] {
        let p = ok(text);
        assert!(p.rules.is_empty());
        assert!(p.sets.is_empty());
        assert_eq!(p.default, Action::ACCEPT);
    }
}

#[test]
fn every_field_parses_to_its_values() {
    let r = only_rule(
        "hook prerouting, INPUT dir in, out iif lan0 oif wan0 src 198.18.0.0/15, 2001:db8::1 \
             dst 198.18.5.5 proto tcp, 17, icmpv6 sport 1024-65535 dport 53, 853, 8000:8080 \
             mark 0x100/0xff00 dns query dns-name Portal.Example., *.cdn.example \
             dns-type AAAA, type65, 99 accept",
    );
    let tests: Vec<Test> = r.conds.into_iter().map(|c| c.test).collect();
    assert_eq!(
        tests,
        vec![
            Test::Hook(vec![Hook::PreRouting, Hook::Input]),
            Test::Dir(vec![Direction::Incoming, Direction::LocalOut]),
            Test::Iif(vec![iface("lan0", false)]),
            Test::Oif(vec![iface("wan0", false)]),
            Test::Src(vec![
                AddrRange::V4(0xc612_0000, 0xc613_ffff),
                AddrRange::V6(0x2001_0db8 << 96 | 1, 0x2001_0db8 << 96 | 1),
            ]),
            Test::Dst(vec![AddrRange::V4(0xc612_0505, 0xc612_0505)]),
            Test::Proto(vec![6, 17, 58]),
            Test::Sport(vec![PortRange {
                lo: 1024,
                hi: 65535
            }]),
            Test::Dport(vec![
                PortRange { lo: 53, hi: 53 },
                PortRange { lo: 853, hi: 853 },
                PortRange { lo: 8000, hi: 8080 },
            ]),
            Test::Mark(vec![(0x100, 0xff00)]),
            Test::Dns(vec![DnsKind::Query]),
            Test::DnsName(vec![
                NamePattern {
                    wire: wire("portal.example"),
                    wildcard: false
                },
                NamePattern {
                    wire: wire("cdn.example"),
                    wildcard: true
                },
            ]),
            Test::DnsType(vec![28, 65, 99]),
        ]
    );
    assert_eq!(r.action, Action::ACCEPT);
}

#[test]
fn interfaces_are_names_and_prefixes_wherever_they_are() {
    // Names that exist nowhere parse: they are matched by name when packets come.
    let p = ok("iif lan0, ppp+, + oif Wan0, a+b accept\n! oif wg0 drop\n");
    let tests: Vec<&Test> = p
        .rules
        .iter()
        .flat_map(|r| &r.conds)
        .map(|c| &c.test)
        .collect();
    assert_eq!(
        tests,
        vec![
            &Test::Iif(vec![
                iface("lan0", false),
                iface("ppp", true),
                iface("", true)
            ]),
            &Test::Oif(vec![iface("Wan0", false), iface("a+b", false)]),
            &Test::Oif(vec![iface("wg0", false)]),
        ]
    );
    let used: Vec<(String, bool, usize, usize)> = p
        .ifaces
        .iter()
        .map(|u: &IfaceUse| (u.pattern.name.to_string(), u.pattern.prefix, u.line, u.col))
        .collect();
    assert_eq!(
        used,
        vec![
            ("lan0".to_string(), false, 1, 5),
            ("ppp".to_string(), true, 1, 11),
            (String::new(), true, 1, 17),
            ("Wan0".to_string(), false, 1, 23),
            ("a+b".to_string(), false, 1, 29),
            ("wg0".to_string(), false, 2, 7),
        ]
    );
    // Fifteen bytes is the kernel's longest name; the '+' does not count.
    assert_eq!(ok("iif abcdefghijklmno+ accept").rules.len(), 1);
}

#[test]
fn source_macs_parse_to_numbers_from_lists_and_sets() {
    let p = ok("set phones macs { 02:00:5E:10:00:01, 0a:bb:cc:dd:ee:ff }\n\
                src-mac @phones, 02:00:00:00:00:0a set-mark 1\n");
    assert_eq!(
        p.rules.first().map(|r| r.conds.clone()),
        Some(vec![Cond {
            negated: false,
            test: Test::SrcMac(vec![0x0200_0000_000a, 0x0200_5e10_0001, 0x0abb_ccdd_eeff]),
        }])
    );
    assert_eq!(
        p.sets.first().map(|s| (s.kind, s.len)),
        Some((SetKind::Macs, 2))
    );
}

#[test]
fn open_port_ranges_and_whole_prefixes() {
    let r = only_rule("sport :1023 dport 1024- src 0.0.0.0/0, ::/0 accept");
    let tests: Vec<Test> = r.conds.into_iter().map(|c| c.test).collect();
    assert_eq!(
        tests,
        vec![
            Test::Sport(vec![PortRange { lo: 0, hi: 1023 }]),
            Test::Dport(vec![PortRange {
                lo: 1024,
                hi: 65535
            }]),
            Test::Src(vec![
                AddrRange::V4(0, u32::MAX),
                AddrRange::V6(0, u128::MAX)
            ]),
        ]
    );
}

#[test]
fn actions_and_flags() {
    let a = |text: &str| only_rule(text).action;
    assert_eq!(
        a("dport 25 set-mark 1"),
        Action {
            verdict: Verdict::Accept,
            set_mark: Some((1, u32::MAX)),
            pairing: true
        }
    );
    assert_eq!(
        a("dport 25 set-mark 0x10/0xf0 repeat nopair"),
        Action {
            verdict: Verdict::Repeat,
            set_mark: Some((0x10, 0xf0)),
            pairing: false
        }
    );
    assert_eq!(
        a("dport 25 DROP"),
        Action {
            verdict: Verdict::Drop,
            set_mark: None,
            pairing: false
        }
    );
    assert_eq!(a("dport 53 accept pair"), Action::ACCEPT);
    assert_eq!(a("accept"), Action::ACCEPT);
    let p = ok("dport 53 accept\ndefault drop # the end\n\n# trailing comment\n");
    assert_eq!(p.default.verdict, Verdict::Drop);
    let p = ok("default set-mark 0x1/0x1 nopair");
    assert_eq!(p.default.set_mark, Some((1, 1)));
    assert!(!p.default.pairing);
}

#[test]
fn negation_with_bang_attached_spaced_or_not() {
    for text in [
        "!dport 53 accept",
        "! dport 53 accept",
        "not dport 53 accept",
    ] {
        let r = only_rule(text);
        assert!(r.conds.first().is_some_and(|c| c.negated), "{text}");
    }
    assert!(
        only_rule("dport 53 accept")
            .conds
            .iter()
            .all(|c| !c.negated)
    );
}

#[test]
fn sets_span_lines_and_expand_into_rules() {
    let p = ok(
        "set garden names {\n  portal.example, *.cdn.example # comment\n  \
                    login.example\n}\nset web ports { 80 443 }\nset lan addrs {198.18.0.0/24,\
                    2001:db8::/64}\n\ndns-name @garden, extra.example accept\n\
                    src @lan dport @web set-mark 2\n",
    );
    assert_eq!(
        p.sets.iter().map(|s| (s.kind, s.len)).collect::<Vec<_>>(),
        vec![
            (SetKind::Names, 3),
            (SetKind::Ports, 2),
            (SetKind::Addrs, 2)
        ]
    );
    let lens: Vec<Vec<usize>> = p
        .rules
        .iter()
        .map(|r| {
            r.conds
                .iter()
                .map(|c| match &c.test {
                    Test::DnsName(v) => v.len(),
                    Test::Src(v) | Test::Dst(v) => v.len(),
                    Test::Sport(v) | Test::Dport(v) => v.len(),
                    _ => 0,
                })
                .collect()
        })
        .collect();
    assert_eq!(lens, vec![vec![4], vec![2, 2]]);
    assert_eq!(
        p.rules.iter().map(|r| r.line).collect::<Vec<_>>(),
        vec![8, 9]
    );
}

#[test]
fn set_may_be_used_before_it_is_defined_and_may_be_empty() {
    let p = ok("dport @mail set-mark 1\nset mail ports { 25, 465, 587 }\nset none names {}\n");
    assert_eq!(p.rules.len(), 1);
    assert_eq!(p.sets.len(), 2);
}

fn only_flow(text: &str) -> FlowDef {
    let mut p = ok(text);
    assert_eq!(p.flows.len(), 1, "{text}");
    p.flows.remove(0)
}

#[test]
fn flow_rule_parses_to_clients_names_and_mark() {
    let f = only_flow(
        "FLOW src 198.18.1.0/24, 2001:db8:1::/64 names *.Video.Example, video.example. \
             set-mark 0x20/0xff",
    );
    assert_eq!(f.line, 1);
    assert_eq!(
        f.conds,
        vec![Cond {
            negated: false,
            test: Test::Src(vec![
                AddrRange::V4(0xc612_0100, 0xc612_01ff),
                AddrRange::V6(
                    0x2001_0db8_0001 << 80,
                    (0x2001_0db8_0001 << 80) | ((1u128 << 64) - 1)
                ),
            ]),
        }]
    );
    assert_eq!(
        f.names,
        vec![
            NamePattern {
                wire: wire("video.example"),
                wildcard: true
            },
            NamePattern {
                wire: wire("video.example"),
                wildcard: false
            },
        ]
    );
    assert_eq!(f.set_mark, (0x20, 0xff));
    assert_eq!(f.per_mark, None);
}

#[test]
fn flow_rules_are_kept_apart_from_packet_rules() {
    let p = ok("dport 25 set-mark 1
                    flow names a.example set-mark 2
                    dport 80 accept
                    flow names b.example set-mark 3
                    default accept
");
    assert_eq!(
        p.rules.iter().map(|r| r.line).collect::<Vec<_>>(),
        vec![1, 3]
    );
    assert_eq!(
        p.flows
            .iter()
            .map(|f| (f.line, f.set_mark))
            .collect::<Vec<_>>(),
        vec![(2, (2, u32::MAX)), (4, (3, u32::MAX))]
    );
}

#[test]
fn flow_rule_with_negation_marks_sets_and_per_mark() {
    let f = only_flow(
        "set vids names { *.video.example }
set lan addrs { 198.18.0.0/16 }
\
             flow src @lan ! src 198.18.9.0/24 not mark 0/0x100 mark 0x1/0xf \
             names @vids, cdn.example set-mark 0x20/0xff per-mark",
    );
    assert_eq!(f.line, 3);
    assert_eq!(
        f.conds.iter().map(|c| c.negated).collect::<Vec<_>>(),
        vec![false, true, true, false]
    );
    assert_eq!(f.names.len(), 2);
    // per-mark keys by the bits the rule's mark matchers look at.
    assert_eq!(f.per_mark, Some(0x10f));
    assert_eq!(
        only_flow("flow names a.example set-mark 1 per-mark").per_mark,
        Some(u32::MAX)
    );
    assert_eq!(
        only_flow("flow mark 0x100/0xff00 names a.example PER-MARK set-mark 1").per_mark,
        Some(0xff00),
        "per-mark may come before set-mark"
    );
}

#[test]
fn flow_words_are_no_keywords_elsewhere() {
    // A set may be called 'names' or 'flow'; 'names' may be a DNS name in a packet rule.
    let p = ok("set names names { names.example }
set flow addrs { 198.18.0.0/24 }
\
                    dns-name @names, names accept
flow src @flow names @names set-mark 1
");
    assert_eq!(p.rules.len(), 1);
    assert_eq!(p.flows.len(), 1);
    assert_eq!(p.sets.len(), 2);
}

/// (what, input, every diagnostic expected).
const BAD: &[(&str, &str, &[&str])] = &[
    (
        "unknown field",
        "prot udp accept",
        &["t.rules:1:1: unknown field 'prot' (did you mean 'proto'?)"],
    ),
    (
        "protocol name without its field",
        "udp dport 53 accept",
        &["t.rules:1:1: unknown field 'udp' (did you mean 'proto udp'?)"],
    ),
    (
        "iptables spellings",
        "-p tcp --dport 25 set-mark 1",
        &[
            "t.rules:1:1: unknown field '-p' (did you mean 'proto'?)",
            "t.rules:1:8: unknown field '--dport' (did you mean 'dport'?)",
        ],
    ),
    (
        "values without commas",
        "dport 80 443 accept",
        &[
            "t.rules:1:10: unknown field '443' (to give a field several values, separate them \
               with commas, as in 'dport 80, 443')",
        ],
    ),
    (
        "CIDR with host bits",
        "src 198.18.0.1/15 accept",
        &["t.rules:1:5: 198.18.0.1/15 has host bits set (the network is 198.18.0.0/15)"],
    ),
    (
        "bad address",
        "src 198.18.0.300 accept",
        &[
            "t.rules:1:5: '198.18.0.300' is not an IPv4 or IPv6 address (write an IPv4 or IPv6 \
               address, or a CIDR like 198.18.0.0/15 or 2001:db8::/32)",
        ],
    ),
    (
        "host name as address",
        "dst portal.example accept",
        &[
            "t.rules:1:5: 'portal.example' is not an IPv4 or IPv6 address (host names are not \
               resolved here; write an address or a CIDR like 198.18.0.0/15, or use dns-name to \
               match DNS questions)",
        ],
    ),
    (
        "prefix too long",
        "dst 2001:db8::/129 accept",
        &["t.rules:1:5: prefix /129 is too long for IPv6 (IPv6 prefixes are at most /128)"],
    ),
    (
        "prefix not a number",
        "src 198.18.0.0/ accept",
        &[
            "t.rules:1:5: '/' is not a prefix length (write a number from 0 to 32, as in \
               198.18.0.0/15)",
        ],
    ),
    (
        "port range backwards",
        "dport 2000-1000 accept",
        &["t.rules:1:7: port range 2000-1000 is backwards (write 1000-2000)"],
    ),
    (
        "port out of range",
        "sport 70000 accept",
        &["t.rules:1:7: port 70000 is out of range (ports are 0-65535)"],
    ),
    (
        "service name",
        "dport smtp accept",
        &["t.rules:1:7: 'smtp' is not a port (service names are not looked up; smtp is 25)"],
    ),
    (
        "mask without value",
        "mark /0xff accept",
        &[
            "t.rules:1:6: mask without value in '/0xff' (write VALUE/MASK, e.g. mark 0x1 or \
               mark 0x100/0xff00)",
        ],
    ),
    (
        "value outside mask",
        "mark 0x3/0x1 accept",
        &[
            "t.rules:1:6: value 0x3 has bits outside mask 0x1: the rule could never match (did \
               you mean 0x1/0x1?)",
        ],
    ),
    (
        "slash without mask",
        "dport 25 set-mark 0x1/",
        &[
            "t.rules:1:19: '/' without a mask in '0x1/' (write VALUE/MASK, e.g. set-mark 0x1 \
               or set-mark 0x100/0xff00)",
        ],
    ),
    (
        "bad number",
        "dport 25 set-mark 0xzz",
        &[
            "t.rules:1:19: '0xzz' is not a 32-bit number (write it in decimal, or in hex like \
               0xff00)",
        ],
    ),
    (
        "unknown set",
        "dns-name @gardn accept\nset garden names { a.example }",
        &["t.rules:1:10: unknown set '@gardn' (did you mean '@garden'?)"],
    ),
    (
        "unknown set, nothing close",
        "src @clients accept",
        &["t.rules:1:5: unknown set '@clients' (define it with: set clients addrs { ... })"],
    ),
    (
        "set of the wrong kind",
        "src @garden accept\nset garden names { a.example }",
        &[
            "t.rules:1:5: set '@garden' holds names, but 'src' needs addresses (the set is \
               defined on line 2)",
        ],
    ),
    (
        "set defined twice",
        "set g names { a.example }\n\nset g names { b.example }",
        &["t.rules:3:5: set 'g' is defined twice (it was first defined on line 1)"],
    ),
    (
        "missing action",
        "dport 25",
        &[
            "t.rules:1:9: missing action (end the rule with accept, drop, repeat or set-mark \
               VALUE[/MASK])",
        ],
    ),
    (
        "mark where set-mark was meant",
        "dport 25 mark 1",
        &[
            "t.rules:1:16: missing action ('mark' matches the packet's mark; to set it, write \
               'set-mark VALUE[/MASK]')",
        ],
    ),
    (
        "only a flag",
        "dport 53 nopair",
        &[
            "t.rules:1:16: missing action (end the rule with accept, drop, repeat or set-mark \
               VALUE[/MASK])",
        ],
    ),
    (
        "nftables' wildcard",
        "iif lan0, wg* accept",
        &[
            "t.rules:1:11: '*' in interface name 'wg*' (write 'wg+': a trailing '+' matches \
               every interface whose name starts with 'wg', as in iptables)",
        ],
    ),
    (
        "interface name too long",
        "oif averyveryverylong0 accept",
        &[
            "t.rules:1:5: interface name 'averyveryverylong0' is longer than 15 bytes (Linux \
               interface names are at most 15 bytes; check the name with 'ip link')",
        ],
    ),
    (
        "address label for an interface",
        "iif eth0:1 accept",
        &[
            "t.rules:1:5: ':' is not allowed in interface name 'eth0:1' ('eth0:1' is an \
               address label, not an interface: write 'eth0')",
        ],
    ),
    (
        "interface with a slash",
        "oif lan/0 accept",
        &[
            "t.rules:1:5: '/' is not allowed in interface name 'lan/0' (interface names \
               cannot hold '/', ':' or '*')",
        ],
    ),
    (
        "interface set",
        "iif @lans accept",
        &[
            "t.rules:1:5: 'iif' does not take a set (only dns-name, src, dst, sport, dport and \
               src-mac take sets)",
        ],
    ),
    (
        "MAC address cut short",
        "src-mac 02:00:5e:10:00 accept",
        &[
            "t.rules:1:9: '02:00:5e:10:00' is not a MAC address (write six two-digit hex bytes \
               separated by ':', as in 02:00:5e:10:00:01)",
        ],
    ),
    (
        "MAC address with dashes",
        "src-mac 02-00-5e-10-00-01 accept",
        &[
            "t.rules:1:9: '02-00-5e-10-00-01' is not a MAC address (write six two-digit hex \
               bytes separated by ':', as in 02:00:5e:10:00:01)",
        ],
    ),
    (
        "group MAC address",
        "src-mac ff:ff:ff:ff:ff:ff accept",
        &[
            "t.rules:1:9: ff:ff:ff:ff:ff:ff is a group (multicast or broadcast) address (no \
               packet comes from a group address: the first byte of a source MAC is even)",
        ],
    ),
    (
        "MAC without a value",
        "src-mac accept",
        &["t.rules:1:8: 'src-mac' needs a value (e.g. 'src-mac 02:00:5e:10:00:01')"],
    ),
    (
        "iptables' mac match",
        "--mac-source 02:00:5e:10:00:01 accept",
        &["t.rules:1:1: unknown field '--mac-source' (did you mean 'src-mac'?)"],
    ),
    (
        "set of MAC addresses used for addresses",
        "set lan macs { 02:00:5e:10:00:01 }\nsrc @lan accept",
        &[
            "t.rules:2:5: set '@lan' holds MAC addresses, but 'src' needs addresses (the set is \
           defined on line 1)",
        ],
    ),
    (
        "two verdicts",
        "dport 25 accept drop",
        &[
            "t.rules:1:17: 'drop' after 'accept': a rule has one verdict (keep one of accept, \
               drop and repeat)",
        ],
    ),
    (
        "set-mark with drop",
        "dport 25 set-mark 1 drop",
        &[
            "t.rules:1:10: 'set-mark' with 'drop': a dropped packet keeps no mark (use 'accept' \
               or 'repeat' with set-mark, or remove set-mark)",
        ],
    ),
    (
        "pairing flag with drop",
        "dport 25 drop nopair",
        &[
            "t.rules:1:15: 'nopair' with 'drop': dropped packets are never paired (remove \
               'nopair')",
        ],
    ),
    (
        "matcher after the action",
        "dport 25 accept sport 26",
        &["t.rules:1:17: matcher 'sport' after the action (put matchers before the action)"],
    ),
    (
        "unknown hook",
        "hook prerouteing accept",
        &["t.rules:1:6: unknown hook 'prerouteing' (did you mean 'prerouting'?)"],
    ),
    (
        "unknown direction",
        "dir sideways accept",
        &["t.rules:1:5: unknown direction 'sideways' (one of in, out, forward)"],
    ),
    (
        "unknown protocol",
        "proto tpc accept",
        &["t.rules:1:7: unknown protocol 'tpc' (did you mean 'tcp'?)"],
    ),
    (
        "unknown DNS kind",
        "dns queyr accept",
        &["t.rules:1:5: unknown DNS message kind 'queyr' (did you mean 'query'?)"],
    ),
    (
        "unknown record type",
        "dns-type AAA accept",
        &["t.rules:1:10: unknown DNS record type 'AAA' (did you mean 'AAAA'?)"],
    ),
    (
        "empty label",
        "dns-name a..example accept",
        &["t.rules:1:10: empty label in 'a..example' (two dots in a row, or a leading dot)"],
    ),
    (
        "wildcard inside a name",
        "dns-name foo.*.example accept",
        &[
            "t.rules:1:10: '*' in 'foo.*.example' is only allowed as the whole first label \
               (write *.example to match every name below example)",
        ],
    ),
    (
        "bare wildcard",
        "dns-name * accept",
        &[
            "t.rules:1:10: '*' alone is not a name pattern (to match any question, write 'dns \
               query' or 'dns any')",
        ],
    ),
    (
        "bad character in a name",
        "dns-name ex%ample accept",
        &[
            "t.rules:1:10: '%' is not allowed in DNS name 'ex%ample' (names hold letters, \
               digits, '-' and '_')",
        ],
    ),
    (
        "field without value",
        "dport accept",
        &["t.rules:1:6: 'dport' needs a value (e.g. 'dport 80, 443')"],
    ),
    (
        "dangling comma",
        "dport 80, accept",
        &["t.rules:1:9: expected a value after ','"],
    ),
    (
        "old-style negation",
        "dport ! 53 accept",
        &["t.rules:1:7: '!' goes before the field, not its value (write '! dport ...')"],
    ),
    (
        "negated action",
        "! accept",
        &[
            "t.rules:1:1: 'accept' cannot be negated (negate a matcher instead, as in '! dport \
               53')",
        ],
    ),
    (
        "misspelt action",
        "dport 25 acept",
        &["t.rules:1:10: unknown action 'acept' (did you mean 'accept'?)"],
    ),
    (
        "rule after default",
        "default drop\ndport 25 accept",
        &[
            "t.rules:2:1: rule after 'default' ('default' on line 1 applies when no rule \
               matches; move it to the end of the file)",
        ],
    ),
    (
        "default twice",
        "default accept\ndefault drop",
        &["t.rules:2:1: 'default' is given twice (the first is on line 1)"],
    ),
    (
        "default with a matcher",
        "default dport 53 accept",
        &[
            "t.rules:1:9: 'default' takes no matcher, found 'dport' (it applies when no rule \
               matches; write matchers in a rule above it)",
        ],
    ),
    (
        "default without action",
        "default",
        &["t.rules:1:8: 'default' needs an action (e.g. 'default accept' or 'default drop')"],
    ),
    (
        "set not closed",
        "set garden names {\n a.example\n",
        &["t.rules:1:18: set 'garden' is not closed (add '}' after its last item)"],
    ),
    (
        "set without braces",
        "set garden names a.example",
        &[
            "t.rules:1:18: expected '{' after 'set garden', found 'a.example' (items go between \
               braces: set garden names { ITEM, ITEM ... })",
        ],
    ),
    (
        "unknown set kind",
        "set garden nams { a.example }",
        &["t.rules:1:12: unknown set kind 'nams' (did you mean 'names'?)"],
    ),
    (
        "set name with @",
        "set @garden names { a.example }",
        &[
            "t.rules:1:5: set name '@garden' starts with '@' (write 'set garden ...'; '@garden' \
               is how a rule refers to it)",
        ],
    ),
    (
        "set in a set",
        "set garden names { @other }",
        &[
            "t.rules:1:20: set 'garden' refers to another set ('@other') (sets cannot contain \
               sets; list the items)",
        ],
    ),
    (
        "bad item in a set",
        "set clients addrs {\n  198.18.0.1\n  198.18.0.999\n}",
        &[
            "t.rules:3:3: '198.18.0.999' is not an IPv4 or IPv6 address (write an IPv4 or IPv6 \
               address, or a CIDR like 198.18.0.0/15 or 2001:db8::/32)",
        ],
    ),
    (
        "text after a set",
        "set garden names { a.example } accept",
        &[
            "t.rules:1:32: unexpected 'accept' after the set's '}' (start the next rule on a new \
               line)",
        ],
    ),
    (
        "ports with a protocol without ports",
        "proto icmp dport 53 accept",
        &[
            "t.rules:1:12: 'dport' with a protocol that has no ports (ports exist only for tcp \
               and udp; this rule can never match)",
        ],
    ),
    (
        "set for a field that takes none",
        "hook @x accept",
        &[
            "t.rules:1:6: 'hook' does not take a set (only dns-name, src, dst, sport, dport and \
               src-mac take sets)",
        ],
    ),
    (
        "braces after a field",
        "dport { 80 443 } accept",
        &[
            "t.rules:1:7: braces after 'dport' (in a rule, separate values with commas, as in \
               'dport 80, 443'; braces hold the items of a set)",
        ],
    ),
    (
        "brace elsewhere in a rule",
        "dport 80 { accept",
        &[
            "t.rules:1:10: unexpected '{' (braces hold the items of a set: set NAME names { ... \
               }; in a rule, separate values with commas)",
        ],
    ),
    (
        "set-mark without value",
        "dport 25 set-mark",
        &[
            "t.rules:1:18: 'set-mark' needs a value (e.g. set-mark 0x1 or set-mark \
               0x100/0xff00)",
        ],
    ),
    (
        "set-mark twice",
        "dport 25 set-mark 1 set-mark 2",
        &[
            "t.rules:1:21: 'set-mark' is given twice (a rule sets one mark; combine the bits \
               into one VALUE/MASK)",
        ],
    ),
    (
        "pair and nopair",
        "dport 25 pair nopair accept",
        &["t.rules:1:15: 'nopair' after 'pair' (keep one of pair and nopair)"],
    ),
    (
        "flow rule without names",
        "flow src 198.18.1.0/24 set-mark 0x20",
        &[
            "t.rules:1:24: flow rule without 'names' (say whose addresses it learns before \
               set-mark, e.g. 'names *.video.example')",
        ],
    ),
    (
        "flow rule without set-mark",
        "flow src 198.18.1.0/24 names a.example",
        &[
            "t.rules:1:39: flow rule without 'set-mark' (end it with the mark for the flows, \
               e.g. 'set-mark 0x20/0xff')",
        ],
    ),
    (
        "flow rule with 'mark' where 'set-mark' was meant",
        "flow names a.example mark 0x20",
        &[
            "t.rules:1:31: flow rule without 'set-mark' ('mark' matches the client's mark; to \
               mark the flows, write 'set-mark VALUE[/MASK]')",
        ],
    ),
    (
        "bare flow",
        "flow",
        &[
            "t.rules:1:5: flow rule without 'names' and 'set-mark' (write: flow [src CIDR, \
               ...] [mark VALUE[/MASK]] names NAME, ... set-mark VALUE[/MASK] [per-mark])",
        ],
    ),
    (
        "drop in a flow rule",
        "flow names a.example set-mark 1 drop",
        &[
            "t.rules:1:33: 'drop' in a flow rule (a flow rule only marks flows, with \
               set-mark; to accept, drop or repeat packets, write a packet rule: a line without \
               'flow')",
        ],
    ),
    (
        "accept, repeat and pair in a flow rule",
        "flow names a.example accept set-mark 1 REPEAT nopair",
        &[
            "t.rules:1:22: 'accept' in a flow rule (a flow rule only marks flows, with \
               set-mark; to accept, drop or repeat packets, write a packet rule: a line without \
               'flow')",
            "t.rules:1:40: 'repeat' in a flow rule (a flow rule only marks flows, with \
               set-mark; to accept, drop or repeat packets, write a packet rule: a line without \
               'flow')",
            "t.rules:1:47: 'nopair' in a flow rule (DNS pairing is chosen by packet rules; a \
               flow rule only marks flows, with set-mark)",
        ],
    ),
    (
        "misspelt names",
        "flow nmaes a.example set-mark 1",
        &["t.rules:1:6: unknown field 'nmaes' in a flow rule (did you mean 'names'?)"],
    ),
    (
        "misspelt set-mark",
        "flow names a.example setmark 1",
        &["t.rules:1:22: unknown action 'setmark' in a flow rule (did you mean 'set-mark'?)"],
    ),
    (
        "misspelt per-mark",
        "flow names a.example set-mark 1 per_mark",
        &["t.rules:1:33: unknown action 'per_mark' in a flow rule (did you mean 'per-mark'?)"],
    ),
    (
        "iptables source in a flow rule",
        "flow -s 198.18.1.0/24 names a.example set-mark 1",
        &["t.rules:1:6: unknown field '-s' in a flow rule (did you mean 'src'?)"],
    ),
    (
        "unknown word in a flow rule, nothing close",
        "flow client 198.18.1.0/24 names a.example set-mark 1",
        &[
            "t.rules:1:6: unknown field 'client' in a flow rule (a flow rule reads: flow [src \
               CIDR, ...] [mark VALUE[/MASK]] names NAME, ... set-mark VALUE[/MASK] [per-mark])",
        ],
    ),
    (
        "names without commas in a flow rule",
        "flow names a.example b.example set-mark 1",
        &[
            "t.rules:1:22: unknown field 'b.example' in a flow rule (to give a field several \
               values, separate them with commas, as in 'names a.example, b.example')",
        ],
    ),
    (
        "dns-name in a flow rule",
        "flow dns-name *.video.example set-mark 1",
        &["t.rules:1:6: 'dns-name' cannot be used in a flow rule (did you mean 'names'?)"],
    ),
    (
        "dst in a flow rule",
        "flow dst 198.18.7.0/24 names a.example set-mark 1",
        &[
            "t.rules:1:6: 'dst' cannot be used in a flow rule (a flow rule's destinations are \
               the addresses its names resolve to)",
        ],
    ),
    (
        "dport in a flow rule",
        "flow names a.example dport 443 set-mark 1",
        &[
            "t.rules:1:22: 'dport' cannot be used in a flow rule (a flow rule matches clients \
               with src and mark, and marks every new flow of theirs to an address its names \
               resolved to)",
        ],
    ),
    (
        "negated names",
        "flow ! names a.example set-mark 1",
        &[
            "t.rules:1:6: 'names' cannot be negated (a flow rule learns the names it lists; to \
               leave some out, give them an earlier flow rule of their own)",
        ],
    ),
    (
        "negated set-mark in a flow rule",
        "flow names a.example not set-mark 1",
        &[
            "t.rules:1:22: 'set-mark' cannot be negated (negate a matcher instead, as in '! src \
               198.18.1.0/24')",
        ],
    ),
    (
        "names twice",
        "flow names a.example names b.example set-mark 1",
        &[
            "t.rules:1:22: 'names' is given twice (list all names after the first 'names', at \
               column 6, separated by commas)",
        ],
    ),
    (
        "per-mark twice",
        "flow names a.example set-mark 1 per-mark per-mark",
        &["t.rules:1:42: 'per-mark' is given twice (remove one)"],
    ),
    (
        "set-mark twice in a flow rule",
        "flow names a.example set-mark 1 set-mark 2",
        &[
            "t.rules:1:33: 'set-mark' is given twice (a rule sets one mark; combine the bits \
               into one VALUE/MASK)",
        ],
    ),
    (
        "client matcher after set-mark",
        "flow names a.example set-mark 1 src 198.18.0.0/24",
        &["t.rules:1:33: matcher 'src' after the action (put matchers before the action)"],
    ),
    (
        "src without a value before names",
        "flow src names a.example set-mark 1",
        &["t.rules:1:9: 'src' needs a value (e.g. 'src 198.18.0.0/15')"],
    ),
    (
        "set-mark without a value before per-mark",
        "flow names a.example set-mark per-mark",
        &[
            "t.rules:1:30: 'set-mark' needs a value (e.g. set-mark 0x1 or set-mark \
               0x100/0xff00)",
        ],
    ),
    (
        "flow set-mark value outside its mask",
        "flow names a.example set-mark 0x3/0x1",
        &[
            "t.rules:1:31: value 0x3 has bits outside mask 0x1: those bits would not be set \
               (did you mean 0x1/0x1?)",
        ],
    ),
    (
        "bad name in a flow rule",
        "flow names a..example set-mark 1",
        &["t.rules:1:12: empty label in 'a..example' (two dots in a row, or a leading dot)"],
    ),
    (
        "set of addresses for names",
        "set lan addrs { 198.18.0.0/24 }\nflow names @lan set-mark 1",
        &[
            "t.rules:2:12: set '@lan' holds addresses, but 'names' needs names (the set is \
               defined on line 1)",
        ],
    ),
    (
        "unknown set in a flow rule",
        "flow names @vidoes set-mark 1\nset videos names { a.example }",
        &["t.rules:1:12: unknown set '@vidoes' (did you mean '@videos'?)"],
    ),
    (
        "set for mark in a flow rule",
        "flow mark @m names a.example set-mark 1",
        &[
            "t.rules:1:11: 'mark' does not take a set (in a flow rule, only src and names take \
               sets)",
        ],
    ),
    (
        "flow rule after default",
        "default accept\nflow names a.example set-mark 1",
        &[
            "t.rules:2:1: flow rule after 'default' ('default' on line 1 ends the rules; move it \
               to the end of the file)",
        ],
    ),
    (
        "names in a packet rule",
        "src 198.18.1.0/24 names a.example set-mark 1",
        &[
            "t.rules:1:19: unknown field 'names' ('names' belongs in a flow rule: start the \
               line with 'flow', as in 'flow names *.video.example set-mark 0x20/0xff')",
        ],
    ),
    (
        "flow not first on the line",
        "src 198.18.1.0/24 flow names a.example set-mark 1",
        &[
            "t.rules:1:19: unknown field 'flow' ('flow' starts a flow rule: put it first on \
               the line)",
        ],
    ),
];

#[test]
fn each_error_names_its_place_and_hint() {
    for (what, text, expected) in BAD {
        let expected: Vec<String> = expected
            .iter()
            .map(|e| e.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(errors(text), expected, "case: {what}");
    }
}

#[test]
fn every_error_in_a_file_is_reported_at_once_in_order() {
    let text = "\
set garden names {
    portal.example
    bad..example
}
set garden names { other.example }
dport 25 accept
prot udp dropp
src 198.18.0.1/40 accept
dns-name @nope accept
iif eth9/1 oif wan0 set-mark 0x3/0x1
default accept
";
    let e = errors(text);
    let places: Vec<&str> = e
        .iter()
        .map(|d| d.split(' ').next().unwrap_or_default())
        .collect();
    assert_eq!(
        places,
        vec![
            "t.rules:3:5:",
            "t.rules:5:5:",
            "t.rules:7:1:",
            "t.rules:7:10:",
            "t.rules:8:5:",
            "t.rules:9:10:",
            "t.rules:10:5:",
            "t.rules:10:30:",
        ],
        "{e:#?}"
    );
}

#[test]
fn mark_hint_only_replaces_the_missing_action_hint() {
    assert_eq!(
        errors("mark 1 set-mark 0xzz"),
        vec![
            "t.rules:1:17: '0xzz' is not a 32-bit number (write it in decimal, or in hex \
                  like 0xff00)"
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        ]
    );
}

#[test]
fn set_brace_may_open_on_the_next_line() {
    let p = ok("set garden names\n{\n  a.example\n}\ndns-name @garden accept\n");
    assert_eq!(p.sets.len(), 1);
    assert_eq!(p.rules.len(), 1);
}

#[test]
fn set_without_kind_still_reads_its_body() {
    assert_eq!(
        errors("set garden {\n  a.example\n  b.example\n}\ndns-name @garden accept\n"),
        vec![
            "t.rules:1:11: set 'garden' needs a kind (write: set garden names|addrs|ports \
                  { ... })"
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        ]
    );
}

#[test]
fn unclosed_set_recovers_at_the_next_set() {
    let e = errors("set garden names {\n a.example\nset x ports { 1 }\ndport @x accept\n");
    assert_eq!(
        e,
        vec!["t.rules:1:18: set 'garden' is not closed (add '}' after its last item)"]
    );
}

#[test]
fn broken_set_is_not_also_reported_at_its_uses() {
    let e = errors("set g names { a..example }\ndns-name @g accept\n");
    assert_eq!(e.len(), 1, "{e:#?}");
}

#[test]
fn keywords_are_case_insensitive_set_names_are_not() {
    let p = ok("HOOK Input PROTO UDP DPORT 53 ACCEPT\nDEFAULT DROP");
    assert_eq!(p.rules.len(), 1);
    assert_eq!(p.default.verdict, Verdict::Drop);
    let e = errors("set Garden names { a.example }\ndns-name @garden accept");
    assert_eq!(
        e,
        vec!["t.rules:2:10: unknown set '@garden' (did you mean '@Garden'?)"]
    );
}

#[test]
fn columns_count_characters_and_tabs_as_one() {
    let e = errors("\tdns-name \u{e9}t\u{e9}.example accept # caf\u{e9}\n");
    assert_eq!(
        e,
        vec![
            "t.rules:1:11: '\u{e9}' is not allowed in DNS name '\u{e9}t\u{e9}.example' \
                  (write internationalised names in their xn-- form)"
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        ]
    );
}

#[test]
fn long_names_are_rejected() {
    let label = "a".repeat(64);
    let e = errors(&format!("dns-name {label}.example accept"));
    assert!(e[0].contains("longer than 63 bytes"), "{e:?}");
    let long = vec!["abcdefghij"; 24].join(".");
    let e = errors(&format!("dns-name {long}.example accept"));
    assert!(e[0].contains("longer than 255 bytes"), "{e:?}");
}

#[test]
fn did_you_mean_needs_a_close_match() {
    assert_eq!(did_you_mean("prot", &["proto", "dport"]), Some("proto"));
    assert_eq!(did_you_mean("dprot", &["proto", "dport"]), Some("dport"));
    assert_eq!(did_you_mean("xyz", &["proto", "dport"]), None);
    assert_eq!(did_you_mean("a", &["ab"]), None);
}

#[test]
fn every_error_in_a_flow_file_is_reported_at_once_in_order() {
    let text = "\
set vids names { *.video.example, bad..example }
flow src 198.18.1.0/24 names @vids set-mark 0x20/0xff
flow names a.example
dport 443 accept
flow src 198.18.1.300 nmaes b.example set-mark 1 drop
flow names c.example set-mark 1
";
    let e = errors(text);
    let places: Vec<&str> = e
        .iter()
        .map(|d| d.split(' ').next().unwrap_or_default())
        .collect();
    assert_eq!(
        places,
        vec![
            "t.rules:1:35:",
            "t.rules:3:21:",
            "t.rules:5:10:",
            "t.rules:5:23:",
            "t.rules:5:50:",
        ],
        "{e:#?}"
    );
}

#[test]
fn garbage_never_panics() {
    // A crude fuzz: every prefix of a rich file, and a few odd byte soups.
    let text = "set g names { a.example, *.b.example }\n! dport 1-2,3 src ::1/128 \
                    dns-name @g mark 0x1/0x1 set-mark 2/3 repeat nopair # c\n\
                    flow ! src 198.18.0.0/24 mark 1/1 names @g, x.example set-mark 1/1 per-mark\n\
                    default drop\n";
    for end in (0..=text.len()).filter(|i| text.is_char_boundary(*i)) {
        let _ = parse(&text[..end], "t");
    }
    for soup in [
        "{{{",
        "}}}",
        "!!!",
        ",,,",
        "set",
        "set {",
        "@",
        "! ! !",
        "-",
        "/",
        "*.*",
        "flow",
        "flow !",
        "flow names",
        "flow names ,",
        "flow set-mark",
        "flow { names }",
        "flow per-mark names",
        "flow not not",
        "flow names @",
    ] {
        let _ = parse(soup, "t");
    }
}
