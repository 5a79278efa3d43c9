//! `nfqmark demo`, run as a newcomer would: the short run's summary shows every upstream query
//! of client A on the cheap link and none of client B's, accepted and answered by the upstream
//! host of the real multi-WAN lab; Ctrl-C in the middle leaves no namespace and no process
//! behind.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a step that fails fails the test, loudly and at once"
)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn result_field(line: &str, key: &str) -> usize {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

fn demo_namespaces(pid: u32) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("nfqm-demo-{pid}-")))
        .map(str::to_string)
        .collect()
}

#[test]
fn demo_short_run_puts_client_a_on_the_cheap_link() {
    if !common::require_root("demo_short_run") {
        return;
    }
    let child = Command::new(common::nfqmark_bin())
        .args(["demo", "--seconds", "3", "--rate", "4"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start nfqmark demo");
    let pid = child.id();
    let out = child.wait_with_output().expect("run nfqmark demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "demo failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("RESULT "))
        .expect("the demo prints a RESULT line");
    let a_sent = result_field(line, "a_sent");
    let b_sent = result_field(line, "b_sent");
    assert!(a_sent >= 8 && b_sent >= 8, "too few queries: {line}");
    assert_eq!(result_field(line, "a_cheap"), a_sent, "{line}");
    assert_eq!(result_field(line, "a_fast"), 0, "{line}");
    assert_eq!(result_field(line, "b_cheap"), 0, "{line}");
    assert_eq!(result_field(line, "b_fast"), b_sent, "{line}");
    // The lab is a real multi-WAN router: nothing arrived upstream with the other link's
    // address, and every query that arrived was answered.
    assert_eq!(result_field(line, "dropped"), 0, "{line}");
    assert_eq!(result_field(line, "unanswered"), 0, "{line}");
    assert!(
        demo_namespaces(pid).is_empty(),
        "namespaces left: {:?}",
        demo_namespaces(pid)
    );
}

#[test]
fn demo_interrupted_leaves_nothing_behind() {
    if !common::require_root("demo_interrupted") {
        return;
    }
    let mut child = Command::new(common::nfqmark_bin())
        .args(["demo", "--seconds", "60"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nfqmark demo");
    let pid = child.id();
    let stdout = child.stdout.take().expect("demo stdout");
    let mut lines = BufReader::new(stdout).lines();
    // Wait for the first live line: the network, nfqmark and the resolver are all up.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut live = false;
    for line in lines.by_ref() {
        let line = line.expect("read demo output");
        if line.trim_start().starts_with("1 ") {
            live = true;
            break;
        }
        assert!(Instant::now() < deadline, "demo did not start in time");
    }
    assert!(live, "demo ended before its first live line");
    let namespaces = demo_namespaces(pid);
    assert_eq!(namespaces.len(), 4, "demo namespaces: {namespaces:?}");
    let mut inside = Vec::new();
    for ns in &namespaces {
        let out = Command::new("ip")
            .args(["netns", "pids", ns])
            .output()
            .expect("ip netns pids");
        inside.extend(
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok()),
        );
    }
    assert!(
        !inside.is_empty(),
        "no processes found in the demo namespaces"
    );
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(pid as i32, libc::SIGINT);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for demo") {
            break status;
        }
        assert!(Instant::now() < deadline, "demo did not exit after SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success(), "an interrupted demo reports it");
    assert!(
        demo_namespaces(pid).is_empty(),
        "namespaces left: {:?}",
        demo_namespaces(pid)
    );
    for p in inside {
        // SAFETY: signal 0 only checks whether the process exists.
        let alive = unsafe { libc::kill(p, 0) } == 0;
        assert!(!alive, "process {p} from the demo network still runs");
    }
}
