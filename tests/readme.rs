//! The README shows `nfqmark setup`'s output instead of hand-written rules; this keeps that copy
//! true, and checks the README's first lines still give the two commands a newcomer needs.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a step that fails fails the test, loudly and at once"
)]

use nfqmark::setup::{self, Family, Plan};

fn readme() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md")
}

#[test]
fn readme_setup_block_is_what_nfqmark_setup_prints() {
    let plan = Plan {
        queues: (0, 0),
        mask: u32::MAX,
        dns_ports: vec![53],
        flow_clients_v4: None,
        flow_clients_v6: None,
        zones: true,
        lean: false,
        flow_sets: Vec::new(),
        source: "no rules file (DNS pairing only)".into(),
    };
    let expected: String = setup::iptables(&plan, Family::V4)
        .lines()
        .map(|l| {
            if l.is_empty() {
                "\n".to_string()
            } else {
                format!("   {l}\n")
            }
        })
        .collect();
    let text = readme();
    assert!(
        text.contains(&expected),
        "README's setup block differs from `nfqmark setup`; paste this in:\n{expected}"
    );
}

#[test]
fn readme_opens_with_install_and_test_commands() {
    let text = readme();
    let head: Vec<&str> = text.lines().take(6).collect();
    assert!(
        head.iter()
            .any(|l| l.contains("./install.sh") && l.contains("nfqmark demo")),
        "{head:?}"
    );
    assert!(head.iter().any(|l| l.contains("cargo test")), "{head:?}");
    let ci =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/run")).expect(".ci/run");
    assert!(
        ci.contains("cargo test"),
        ".ci/run runs the README's test command"
    );
    // The same command, features and all: `cargo test ...` up to the comment.
    let readme_test = head
        .iter()
        .find_map(|l| l.find("cargo test").map(|at| &l[at..]))
        .map(|cmd| cmd.split('#').next().unwrap_or(cmd).trim())
        .expect("a cargo test line");
    assert!(
        ci.lines().any(|l| l.trim() == readme_test),
        ".ci/run runs `{readme_test}`, the README's test command, as it is written there"
    );
}
