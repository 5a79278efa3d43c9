//! `nfqmark replay` as a user runs it (no root needed): a capture file in, a table or JSON lines
//! out; errors name the file and the fix, with the exit statuses `nfqmark check` uses (1 for a
//! rules file with errors) and the daemon uses (2 for anything else that stops it).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a step that fails fails the test, loudly and at once"
)]

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use nfqmark::replay::linktype;
use nfqmark_testkit as fixtures;
use nfqmark_testkit::capture::{pcap, sll2};

struct Temp(PathBuf);

impl Temp {
    fn new(tag: &str, bytes: &[u8]) -> Temp {
        let path =
            std::env::temp_dir().join(format!("nfqmark-replay-cli-{}-{tag}", std::process::id()));
        std::fs::write(&path, bytes).expect("write");
        Temp(path)
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn nfqmark(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_nfqmark"))
        .args(args)
        .output()
        .expect("run nfqmark");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn capture() -> Vec<u8> {
    let client = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 2));
    let router = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 1));
    let t0 = Duration::from_secs(1_800_000_000);
    let q = fixtures::dns_query(1, "a-1.nfqm.example");
    let a = fixtures::dns_answer(1, "a-1.nfqm.example");
    pcap(
        linktype::LINUX_SLL2,
        &[
            (
                t0,
                sll2(
                    &fixtures::udp(client, 40_001, router, 53, &q),
                    2,
                    false,
                    [2, 0, 0, 0, 0, 1],
                ),
            ),
            (
                t0 + Duration::from_millis(2),
                sll2(
                    &fixtures::udp(router, 53, client, 40_001, &a),
                    2,
                    true,
                    [2, 0, 0, 0, 0, 2],
                ),
            ),
        ],
    )
}

#[test]
fn replay_prints_a_table_and_json_lines() {
    let cap = Temp::new("ok.pcap", &capture());
    let path = cap.0.display().to_string();
    let (code, out, err) = nfqmark(&["replay", &path, "--iface", "2=lan0"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("router addresses (inferred): 198.18.1.1"),
        "{err}"
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    assert!(
        lines[1].contains("input")
            && lines[1].contains("lan0")
            && lines[1].contains("client-query"),
        "{out}"
    );
    assert!(
        lines[2].contains("output") && lines[2].contains("client-answer paired"),
        "{out}"
    );
    assert!(lines[3].starts_with("counters: packets=2 "), "{out}");
    let (code, out, _) = nfqmark(&["replay", &path, "--json"]);
    assert_eq!(code, 0);
    assert!(
        out.lines().all(|l| l.starts_with('{') && l.ends_with('}')),
        "{out}"
    );
    assert!(
        out.lines()
            .last()
            .is_some_and(|l| l.contains("\"counters\":\"packets=2 ")),
        "{out}"
    );
}

#[test]
fn replay_errors_name_the_file_and_the_fix() {
    let cap = Temp::new("ok2.pcap", &capture());
    let path = cap.0.display().to_string();
    let bad_rules = Temp::new("bad.rules", b"prot udp accept\n");
    let rules = bad_rules.0.display().to_string();
    let (code, _, err) = nfqmark(&["replay", &path, "--rules", &rules]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(":1:1: unknown field 'prot'"), "{err}");

    let text = Temp::new("text.pcap", b"not a capture\n");
    let (code, _, err) = nfqmark(&["replay", &text.0.display().to_string()]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("not a pcap or pcapng capture") && err.contains("tcpdump -w"),
        "{err}"
    );

    let (code, _, err) = nfqmark(&["replay", "/nonexistent/capture.pcap"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot read the capture"), "{err}");

    let (code, _, err) = nfqmark(&["replay", &path, "--client-mark", "198.18.1.2"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("ADDR[/LEN]=MARK"), "{err}");
}
