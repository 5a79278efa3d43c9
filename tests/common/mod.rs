//! Shared helpers for the end-to-end tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// End-to-end tests need root (namespaces, iptables, NFQUEUE). Without root they fail with a
/// message saying how to run them, unless the user opts out with NFQMARK_SKIP_E2E=1.
/// Returns false when the test should be skipped.
pub fn require_root(test: &str) -> bool {
    if nfqmark_lab::netns::is_root() {
        if let Err(missing) = nfqmark_lab::check_programs(&[
            ("unbound", "unbound"),
            ("kresd", "knot-resolver"),
            ("dnsperf", "dnsperf"),
            ("conntrack", "conntrack"),
        ]) {
            panic!("{test}: {missing} (bash .ci/run installs everything the tests need)");
        }
        return true;
    }
    if std::env::var_os("NFQMARK_SKIP_E2E").is_some_and(|v| v == "1") {
        eprintln!("{test}: skipped (not root, NFQMARK_SKIP_E2E=1)");
        return false;
    }
    panic!(
        "{test}: end-to-end tests need root (network namespaces, iptables, NFQUEUE). Run them \
         as root: `sudo -E cargo test`, or `bash .ci/run` on a test machine. To skip them \
         explicitly, set NFQMARK_SKIP_E2E=1."
    );
}

/// The nfqmark binary built for this test run.
pub fn nfqmark_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_nfqmark"))
}
