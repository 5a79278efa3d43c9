//! The example rule files in `rules/` and the examples in `docs/rules.md`: every one parses
//! without a single diagnostic and passes `nfqmark check` on a machine without the interfaces
//! it names (warnings only; `--strict-interfaces` refuses them), and each example file does
//! what its comments promise on packets built with `nfqmark_testkit`. Also pins that
//! evaluating rules allocates nothing (a counting allocator, per thread).
//!
//! These tests need no root and no network; they read `rules/` and `docs/rules.md`, list this
//! machine's interfaces (an rtnetlink dump, which needs no privilege), and write only in a
//! temporary directory of their own.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a step that fails fails the test, loudly and at once"
)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use hickory_proto::rr::RecordType;
use nfqmark::dns::{self, Name};
use nfqmark::flows::FlowTarget;
use nfqmark::links::{self, LinkMap};
use nfqmark::packet::{self, Proto};
use nfqmark::rules::{self, Ctx, Outcome, RuleSet};
use nfqmark::setup;
use nfqmark::types::{Hook, Meta, Verdict};
use nfqmark_testkit as fixtures;

/// Counts allocations made by the current thread, so parallel tests do not disturb each other.
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: defers every call to the system allocator unchanged; only bumps a thread-local counter
// (const-initialised, so touching it never allocates).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

fn rules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("rules")
}

/// Example files name interfaces the test host does not have; accept any name.
fn any_iface(name: &str) -> Option<u32> {
    match name {
        "lan0" => Some(2),
        _ => Some(9),
    }
}

fn load(name: &str) -> RuleSet {
    let path = rules_dir().join(name);
    match rules::load(&path, &any_iface) {
        Ok(rs) => rs,
        Err(diags) => panic!(
            "{}",
            diags
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
}

#[test]
fn every_example_file_parses_without_diagnostics() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(rules_dir())
        .map(|dir| dir.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    let mut failures = Vec::new();
    for path in &files {
        match rules::load(path, &any_iface) {
            Ok(rs) => eprintln!("{}: {}", path.display(), rs.summary()),
            Err(diags) => failures.extend(diags.iter().map(ToString::to_string)),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    for expected in [
        "accounting.rules",
        "captive-portal.rules",
        "devices-by-mac.rules",
        "dnsmasq-conntrack.rules",
        "flows.rules",
        "lartc-mail.rules",
    ] {
        assert!(
            files.iter().any(|f| f.ends_with(expected)),
            "rules/{expected} is missing"
        );
    }
}

/// `nfqmark check ARGS...` in `dir`: (exit status, stdout, stderr).
fn nfqmark_check(dir: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nfqmark"))
        .arg("check")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("run nfqmark check: {e}"));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A directory of this test's own under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("nfqmark-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// This machine's interfaces.
fn here() -> LinkMap {
    links::dump().unwrap_or_else(|e| panic!("list this machine's interfaces: {e}"))
}

#[test]
fn every_example_file_passes_check_without_its_interfaces() {
    let here = here();
    let mut checked = 0;
    let mut warned = 0;
    let mut entries: Vec<PathBuf> = std::fs::read_dir(rules_dir())
        .map(|dir| dir.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    entries.sort();
    for path in entries {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let (status, stdout, stderr) = nfqmark_check(&rules_dir(), &[name]);
        println!("{name}: {status:?}\n{stdout}{stderr}");
        assert_eq!(status, Some(0), "{name}: {stdout}{stderr}");
        assert!(stdout.starts_with(&format!("{name}: ok: ")), "{stdout}");
        // What this machine lacks, as the library sees it: each is one warning with its place.
        let missing = load(name).missing_interfaces(&here, false);
        let warnings: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains(": warning: "))
            .collect();
        assert_eq!(warnings.len(), missing.len(), "{name}: {stderr}");
        for (shown, d) in warnings.iter().zip(&missing) {
            assert!(
                shown.starts_with(&format!("{name}:{}:{}: warning: ", d.line, d.col)),
                "{shown}"
            );
        }
        // Control: the old behaviour refuses the same file, naming each place.
        let (strict, _, errors) = nfqmark_check(&rules_dir(), &["--strict-interfaces", name]);
        if missing.is_empty() {
            assert_eq!(strict, Some(0), "{name}: {errors}");
        } else {
            assert_eq!(strict, Some(1), "{name}: {errors}");
            assert!(errors.contains(&format!("{name}:{}:{}: ", missing[0].line, missing[0].col)));
            warned += 1;
        }
        checked += 1;
    }
    assert!(checked >= 6, "{checked} files");
    // The examples name lan0, lan+ and guest+; a test machine has none of them.
    assert!(
        warned >= 3,
        "only {warned} files warned: does this machine have lan0?"
    );
}

#[test]
fn the_documented_interface_warning_is_the_real_one() {
    let dir = TempDir::new("home-rules");
    let text = "\
hook prerouting iif lan0 proto tcp dport 25 set-mark 1
dir in iif lan0 src-mac 02:00:5e:10:00:01 set-mark 2
hook output oif wan0 dport 53 accept
hook prerouting iif wg0 set-mark 3
default accept
";
    std::fs::write(dir.0.join("home.rules"), text).unwrap_or_else(|e| panic!("{e}"));
    // Every interface but wg0 exists here, as in the documented run.
    let mut links = LinkMap::new();
    links.apply(&links::LinkEvent::New {
        index: 2,
        name: "lan0".to_string(),
    });
    links.apply(&links::LinkEvent::New {
        index: 3,
        name: "wan0".to_string(),
    });
    let rs = match RuleSet::parse(text, "home.rules", &any_iface) {
        Ok(rs) => rs,
        Err(d) => panic!("{d:?}"),
    };
    let mut got: Vec<String> = rs
        .missing_interfaces(&links, false)
        .iter()
        .map(|d| d.warning())
        .collect();
    got.push(format!("home.rules: ok: {} (1 warning(s))", rs.summary()));
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/rules.md"))
        .unwrap_or_default();
    let documented: Vec<&str> = doc
        .lines()
        .filter(|l| l.starts_with("home.rules"))
        .collect();
    assert_eq!(got, documented);
    // And the command prints exactly that where none of the four exists.
    let here = here();
    if ["lan0", "wan0", "wg0"]
        .iter()
        .all(|n| here.index(n).is_none())
    {
        let (status, stdout, stderr) = nfqmark_check(&dir.0, &["home.rules"]);
        assert_eq!(status, Some(0), "{stdout}{stderr}");
        let warned: Vec<&str> = stderr.lines().collect();
        assert_eq!(warned.len(), 4, "{stderr}");
        assert_eq!(warned.get(3).copied(), documented.first().copied());
        assert_eq!(
            stdout.trim(),
            "home.rules: ok: 4 rules, 0 sets, default accept (4 warning(s))"
        );
    }
}

#[test]
fn rule_examples_in_the_documentation_parse() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/rules.md");
    let doc = std::fs::read_to_string(&path).unwrap_or_default();
    // Untagged code blocks that start like a rules file: a comment or a set.
    let blocks: Vec<&str> = doc
        .split("```")
        .skip(1)
        .step_by(2)
        .filter_map(|b| b.strip_prefix('\n'))
        .filter(|b| b.starts_with('#') || b.starts_with("set "))
        .collect();
    assert!(
        blocks.len() >= 2,
        "no rule examples found in {}",
        path.display()
    );
    for block in blocks {
        if let Err(d) = RuleSet::parse(block, "docs/rules.md", &any_iface) {
            panic!("{block}\n{d:#?}");
        }
    }
}

#[test]
fn documented_error_messages_are_the_real_ones() {
    let text = "\
set garden names { a.example }
set g names { b.example }
prot udp accept
--dport 25 accept
src 198.18.0.1/15 accept
dport 2000-1000 accept
mark /0xff accept
dns-name @gardn accept
set g names { c.example }
dport 25 mark 1
iif eth0:1 accept
dport 80 443 accept
";
    let got: Vec<String> = match RuleSet::parse(text, "rules.conf", &any_iface) {
        Ok(_) => panic!("parsed"),
        Err(d) => d.iter().map(ToString::to_string).collect(),
    };
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/rules.md");
    let doc = std::fs::read_to_string(&path).unwrap_or_default();
    let documented: Vec<&str> = doc
        .lines()
        .filter(|l| l.starts_with("rules.conf:"))
        .collect();
    assert_eq!(got, documented);
}

#[test]
fn documented_flow_rule_errors_are_the_real_ones() {
    let text = "\
flow src 198.18.1.0/24 set-mark 0x20/0xff
flow names *.video.example
flow names a.example set-mark 1 drop
flow nmaes a.example set-mark 1
flow names a.example dport 443 set-mark 1
default accept
flow names b.example set-mark 1
";
    let got: Vec<String> = match RuleSet::parse(text, "flows.rules", &any_iface) {
        Ok(_) => panic!("parsed"),
        Err(d) => d.iter().map(ToString::to_string).collect(),
    };
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/rules.md");
    let doc = std::fs::read_to_string(&path).unwrap_or_default();
    let documented: Vec<&str> = doc
        .lines()
        .filter(|l| l.starts_with("flows.rules:"))
        .collect();
    assert_eq!(got, documented);
}

#[test]
fn a_missing_file_is_one_diagnostic_on_line_zero() {
    let path = rules_dir().join("no-such-file.rules");
    let diags = match rules::load(&path, &any_iface) {
        Ok(_) => panic!("loaded a file that does not exist"),
        Err(d) => d,
    };
    assert_eq!(diags.len(), 1);
    assert_eq!(diags[0].line, 0);
    let shown = diags[0].to_string();
    assert!(
        shown.starts_with(&format!("{}: cannot read the rules file: ", path.display())),
        "{shown}"
    );
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|_| panic!("bad test address {s}"))
}

fn meta(hook: Hook, mark: u32, indev: u32, outdev: u32) -> Meta {
    Meta::new(hook, mark, indev, outdev)
}

/// Evaluate as the engine does: DNS is read for packets to or from port 53.
fn eval(rs: &RuleSet, meta: &Meta, bytes: &[u8]) -> Outcome {
    let packet = match packet::parse(bytes) {
        Ok(p) => p,
        Err(e) => panic!("fixture does not parse: {e}"),
    };
    let dns = if packet.dport == 53 || packet.sport == 53 {
        match packet.proto {
            Proto::Udp => dns::parse_udp(packet.payload).ok(),
            Proto::Tcp => dns::parse_tcp(packet.payload).ok(),
            _ => None,
        }
    } else {
        None
    };
    rs.evaluate(&Ctx {
        meta,
        packet: &packet,
        dns: dns.as_ref(),
    })
}

fn client_query(name: &str) -> Vec<u8> {
    let msg = fixtures::dns_message(1, name, RecordType::A, false);
    fixtures::udp(ip("198.18.10.50"), 40000, ip("198.18.10.1"), 53, &msg)
}

#[test]
fn captive_portal_lets_unauthenticated_clients_resolve_only_the_garden() {
    let rs = load("captive-portal.rules");
    let unauth = meta(Hook::Input, 0x0, 2, 0);
    let authed = meta(Hook::Input, 0x100, 2, 0);
    for name in [
        "portal.example.",
        "WWW.Portal.Example.",
        "x.cdn.portal.example.",
    ] {
        let o = eval(&rs, &unauth, &client_query(name));
        assert_eq!(o.verdict, Verdict::Accept, "{name}");
        assert!(o.pairing && o.rule.is_some(), "{name}");
    }
    for name in ["evil.example.", "cdn.portal.example.wrong."] {
        assert_eq!(
            eval(&rs, &unauth, &client_query(name)).verdict,
            Verdict::Drop,
            "{name}"
        );
        assert_eq!(
            eval(&rs, &authed, &client_query(name)),
            Outcome::DEFAULT,
            "{name}"
        );
    }
    // A hard-coded outside resolver, forwarded: dropped, even the TCP handshake.
    let fwd = meta(Hook::Forward, 0, 2, 3);
    let syn = fixtures::tcp_syn(ip("198.18.10.50"), 40001, ip("203.0.113.53"), 53);
    assert_eq!(eval(&rs, &fwd, &syn).verdict, Verdict::Drop);
    let fwd_authed = meta(Hook::Forward, 0x100, 2, 3);
    assert_eq!(eval(&rs, &fwd_authed, &syn).verdict, Verdict::Accept);
}

#[test]
fn lartc_mail_marks_smtp_one() {
    let rs = load("lartc-mail.rules");
    let smtp = fixtures::tcp_syn(ip("198.18.10.50"), 40000, ip("203.0.113.25"), 25);
    let o = eval(&rs, &meta(Hook::PreRouting, 0x7700, 2, 0), &smtp);
    assert_eq!(o.set_mark, Some((1, u32::MAX)));
    assert_eq!(o.verdict, Verdict::Accept);
    let local = fixtures::tcp_syn(ip("198.18.10.1"), 40000, ip("203.0.113.25"), 25);
    let o = eval(&rs, &meta(Hook::Output, 0, 0, 3), &local);
    assert_eq!(o.set_mark, Some((1, u32::MAX)));
    let web = fixtures::tcp_syn(ip("198.18.10.50"), 40000, ip("203.0.113.25"), 443);
    assert_eq!(
        eval(&rs, &meta(Hook::PreRouting, 0, 2, 0), &web),
        Outcome::DEFAULT
    );
    // Per-rule counters name the rule by file and line.
    let text = std::fs::read_to_string(rules_dir().join("lartc-mail.rules")).unwrap_or_default();
    let line = text
        .lines()
        .position(|l| l.starts_with("hook prerouting"))
        .map(|i| i + 1);
    let described = rs.describe(0).unwrap_or_default();
    assert!(
        line.is_some_and(|n| described.ends_with(&format!("lartc-mail.rules:{n}"))),
        "{described}"
    );
    assert_eq!(rs.describe(2), None);
}

#[test]
fn accounting_marks_by_client_in_rule_order() {
    let rs = load("accounting.rules");
    let fwd = meta(Hook::Forward, 0xab00, 2, 3);
    let mark = |src: &str, dst: &str| {
        let bytes = fixtures::tcp_syn(ip(src), 40000, ip(dst), 443);
        eval(&rs, &fwd, &bytes).set_mark
    };
    assert_eq!(mark("198.18.10.12", "203.0.113.80"), Some((0x01, 0xff)));
    assert_eq!(
        mark("2001:db8:10::11", "2001:db8:ffff::80"),
        Some((0x01, 0xff))
    );
    assert_eq!(
        mark("2001:db8:ffff::80", "2001:db8:10::21"),
        Some((0x02, 0xff))
    );
    assert_eq!(mark("198.18.20.77", "203.0.113.80"), Some((0x10, 0xff)));
    assert_eq!(mark("198.18.10.99", "203.0.113.80"), Some((0xfe, 0xff)));
    assert_eq!(mark("203.0.113.1", "203.0.113.80"), None);
}

#[test]
fn devices_are_marked_by_mac_on_the_lan_interfaces_only() {
    let rs = load("devices-by-mac.rules");
    // This machine's LAN is lan0 and lan1, its guest Wi-Fi guest0, its uplink wan0.
    let links: LinkMap = [(2, "lan0"), (3, "wan0"), (6, "lan1"), (7, "guest0")]
        .iter()
        .map(|(i, n)| (*i, n.to_string()))
        .collect();
    rs.bind(&links);
    let syn = fixtures::tcp_syn(ip("198.18.10.50"), 40000, ip("203.0.113.80"), 443);
    let from = |indev: u32, mac: Option<[u8; 6]>| {
        let mut m = meta(Hook::PreRouting, 0, indev, 0);
        m.src_mac = mac;
        eval(&rs, &m, &syn).set_mark
    };
    let tv = Some([0x02, 0x00, 0x5e, 0x10, 0x00, 0x01]);
    let tablet = Some([0x02, 0x00, 0x5e, 0x10, 0x00, 0x22]);
    let laptop = Some([0x02, 0x00, 0x5e, 0x10, 0x00, 0x99]);
    assert_eq!(from(2, tv), Some((0x2, 0xff)));
    assert_eq!(
        from(6, tv),
        Some((0x2, 0xff)),
        "lan1 is a LAN interface too"
    );
    assert_eq!(from(6, tablet), Some((0x3, 0xff)));
    assert_eq!(from(2, laptop), None);
    assert_eq!(
        from(3, tv),
        None,
        "the same MAC seen on the uplink is not the TV"
    );
    assert_eq!(from(7, laptop), Some((0x10, 0xff)));
    // Sent by this router: no MAC, no input interface, nothing matches.
    let mut local = meta(Hook::Output, 0, 0, 3);
    local.src_mac = None;
    assert_eq!(eval(&rs, &local, &syn), Outcome::DEFAULT);
    assert!(rs.summary().contains("3 MAC addresses"), "{}", rs.summary());
}

#[test]
fn dnsmasq_conntrack_accepts_and_pairs_everything() {
    let rs = load("dnsmasq-conntrack.rules");
    assert_eq!(rs.len(), 0);
    assert_eq!(rs.default_outcome(), Outcome::DEFAULT);
    let o = eval(
        &rs,
        &meta(Hook::Input, 137, 2, 0),
        &client_query("a.example."),
    );
    assert_eq!(o, Outcome::DEFAULT);
}

/// Lower-case names, as the engine passes them: the question, then each CNAME target.
fn chain(names: &[&str]) -> Vec<Name> {
    names
        .iter()
        .map(|n| match Name::from_ascii(n) {
            Ok(name) => name,
            Err(e) => panic!("bad test name {n}: {e}"),
        })
        .collect()
}

#[test]
fn flows_example_marks_video_for_the_lan_only() {
    let rs = load("flows.rules");
    assert!(rs.has_flow_rules());
    assert_eq!(rs.flow_len(), 2);
    assert_eq!(rs.len(), 0, "no packet rules");
    let video = FlowTarget {
        rule: 0,
        mark: (0x20, 0xff),
        by_mark: None,
    };
    for client in ["198.18.1.50", "2001:db8:1::50"] {
        for names in [
            &["video.example."][..],
            &["www.video.example."],
            // An alias in the middle of the chain: the addresses come from its end.
            &[
                "www.news.example.",
                "cdn.video.example.",
                "edge-7.cdn.example.",
            ],
        ] {
            assert_eq!(
                rs.flow_target(ip(client), 0, &chain(names)),
                Some(video),
                "{client} {names:?}"
            );
        }
        assert_eq!(
            rs.flow_target(ip(client), 0, &chain(&["video.example.org."])),
            None
        );
    }
    // Not on the LAN: nothing learned.
    assert_eq!(
        rs.flow_target(ip("198.18.2.50"), 0, &chain(&["www.video.example."])),
        None
    );
    // Update servers: only for clients with a user mark, keyed by it.
    let updates = chain(&["dl.updates.example."]);
    assert_eq!(rs.flow_target(ip("198.18.1.50"), 0x00ff, &updates), None);
    assert_eq!(
        rs.flow_target(ip("198.18.1.50"), 0x0300, &updates),
        Some(FlowTarget {
            rule: 1,
            mark: (0x40, 0xff),
            by_mark: Some(0xff00),
        })
    );
    // What `nfqmark setup` queues: the LAN's new flows, per family.
    assert_eq!(
        setup::flow_clients(&rs),
        (
            Some(vec!["198.18.1.0/24".to_string()]),
            Some(vec!["2001:db8:1::/64".to_string()])
        )
    );
    // Counters name flow rules by file and line.
    let text = std::fs::read_to_string(rules_dir().join("flows.rules")).unwrap_or_default();
    let line = text
        .lines()
        .position(|l| l.starts_with("flow src @lan names @video"))
        .map(|i| i + 1);
    let described = rs.describe_flow(0).unwrap_or_default();
    assert!(
        line.is_some_and(|n| described.ends_with(&format!("flows.rules:{n}"))),
        "{described}"
    );
    assert_eq!(rs.describe_flow(2), None);
    assert!(rs.summary().contains("2 flow rules"), "{}", rs.summary());
    // Flow rules never decide a packet: a client's query and a new flow get the default.
    let o = eval(
        &rs,
        &meta(Hook::Input, 0, 2, 0),
        &client_query("www.video.example."),
    );
    assert_eq!(o, Outcome::DEFAULT);
}

#[test]
fn flow_target_does_not_allocate() {
    let mut text = String::new();
    for i in 0..200u32 {
        text.push_str(&format!(
            "flow src 198.18.{}.0/24 ! mark 0x5/0xf names h{i}.example, *.z{i}.example \
             set-mark {i}/0xff per-mark\n",
            i % 250
        ));
    }
    text.push_str("flow names *.example set-mark 0xff/0xff\n");
    let rs = match RuleSet::parse(&text, "flows-big.rules", &any_iface) {
        Ok(rs) => rs,
        Err(d) => panic!("{d:?}"),
    };
    let lookups = [
        ("198.18.7.9", vec!["www.z7.example."]),
        (
            "198.18.8.9",
            vec!["a.news.test.", "b.cdn.test.", "h8.example."],
        ),
        ("198.18.9.9", vec!["nothing.test."]),
        ("2001:db8::9", vec!["x.y.z.example."]),
        ("198.18.7.9", vec![]),
    ];
    let lookups: Vec<(IpAddr, Vec<Name>)> = lookups
        .iter()
        .map(|(c, names)| (ip(c), chain(names)))
        .collect();
    let mut found = Vec::with_capacity(lookups.len() * 100);
    let before = allocations();
    for _ in 0..100 {
        for (client, names) in &lookups {
            found.push(rs.flow_target(*client, 0, names).map(|t| t.rule));
        }
    }
    let during = allocations() - before;
    assert_eq!(during, 0, "flow_target allocated {during} times");
    assert_eq!(
        &found[..lookups.len()],
        &[Some(7), Some(8), None, Some(200), None]
    );
}

#[test]
fn evaluate_does_not_allocate() {
    // A large rule set exercising every kind of index and matcher.
    let mut text = std::fs::read_to_string(rules_dir().join("captive-portal.rules"))
        .unwrap_or_default()
        .replace("default accept", "");
    for i in 0..300u32 {
        text.push_str(&format!(
            "src 198.18.{}.{}, 2001:db8::{:x} set-mark {i}\n",
            i / 200,
            i % 200 + 1,
            i + 1
        ));
        text.push_str(&format!(
            "dns-name h{i}.example, *.z{i}.example dns-type A drop\n"
        ));
        text.push_str(&format!(
            "proto tcp dport {} ! mark 0x5/0xf set-mark 1\n",
            20000 + i
        ));
    }
    text.push_str("! dport 53 dir forward drop\ndefault accept\n");
    let rs = match RuleSet::parse(&text, "big.rules", &any_iface) {
        Ok(rs) => rs,
        Err(d) => panic!("{d:?}"),
    };
    let packets: Vec<(Meta, Vec<u8>)> = vec![
        (meta(Hook::Input, 0, 2, 0), client_query("WWW.z77.example.")),
        (meta(Hook::Input, 0, 2, 0), client_query("portal.example.")),
        (meta(Hook::Input, 0, 2, 0), client_query("nothing.test.")),
        (
            meta(Hook::Forward, 0, 2, 3),
            fixtures::tcp_syn(ip("2001:db8::1f"), 1, ip("2001:db8:1::1"), 20100),
        ),
        (
            meta(Hook::Forward, 0x105, 2, 3),
            fixtures::tcp(ip("203.0.113.9"), 1, ip("198.18.0.1"), 20100, b"x"),
        ),
        (
            meta(Hook::Output, 0, 0, 3),
            fixtures::udp(ip("198.18.1.50"), 1, ip("203.0.113.9"), 9, b"x"),
        ),
    ];
    let parsed: Vec<_> = packets
        .iter()
        .map(|(m, b)| {
            let p = packet::parse(b).unwrap_or_else(|e| panic!("{e}"));
            let d = if p.dport == 53 {
                dns::parse_udp(p.payload).ok()
            } else {
                None
            };
            (m, p, d)
        })
        .collect();
    let mut outcomes = Vec::with_capacity(parsed.len() * 100);
    let before = allocations();
    for _ in 0..100 {
        for (meta, packet, dns) in &parsed {
            outcomes.push(rs.evaluate(&Ctx {
                meta,
                packet,
                dns: dns.as_ref(),
            }));
        }
    }
    let during = allocations() - before;
    assert_eq!(during, 0, "evaluate allocated {during} times");
    // And the rules did match, in different ways.
    let distinct: std::collections::HashSet<_> = outcomes.iter().map(|o| o.rule).collect();
    assert!(distinct.len() >= 5, "{distinct:?}");
}
