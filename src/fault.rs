//! Fault injection for the end-to-end tests, compiled into debug builds only.
//!
//! `NFQMARK_INJECT_RECV_ERROR=QUEUE:ERRNO[:AFTER]` makes the worker of queue QUEUE see one
//! receive error ERRNO (a number, or one of the names below) in place of its next receive once
//! it has decided AFTER packets (default 0). The error goes through the same path as a real
//! receive error, so the test sees exactly what a kernel error would cause: ENOBUFS is counted
//! and survived, a permanent error (EBADF, ENOTSOCK, EIO, ...) ends the worker and the process
//! exits 2. Nothing is received in place of the injected error, so no packet loses its
//! verdict; the socket itself is untouched.
//!
//! This module must never be compiled into a release build (lib.rs includes it only with
//! `debug_assertions`) and does nothing without the variable.

use std::io;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

/// The environment variable read once, at the first receive.
pub const VAR: &str = "NFQMARK_INJECT_RECV_ERROR";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Spec {
    queue: u16,
    errno: i32,
    after: u64,
}

/// `QUEUE:ERRNO[:AFTER]`; `None` for anything else (a test that mistypes it sees no fault and
/// fails its own assertion).
fn parse(text: &str) -> Option<Spec> {
    let mut parts = text.trim().split(':');
    let queue = parts.next()?.parse().ok()?;
    let errno = match parts.next()? {
        "ENOBUFS" => libc::ENOBUFS,
        "EBADF" => libc::EBADF,
        "ENOTSOCK" => libc::ENOTSOCK,
        "EIO" => libc::EIO,
        "ENOMEM" => libc::ENOMEM,
        n => n.parse().ok()?,
    };
    let after = match parts.next() {
        Some(n) => n.parse().ok()?,
        None => 0,
    };
    parts.next().is_none().then_some(Spec {
        queue,
        errno,
        after,
    })
}

fn spec() -> Option<Spec> {
    static SPEC: OnceLock<Option<Spec>> = OnceLock::new();
    *SPEC.get_or_init(|| {
        let spec = std::env::var(VAR).ok().and_then(|v| parse(&v));
        if let Some(s) = spec {
            log::warn!(
                "{VAR}: queue {} will see receive error {} after {} packet(s) (debug build)",
                s.queue,
                io::Error::from_raw_os_error(s.errno),
                s.after
            );
        }
        spec
    })
}

/// The injected error for queue `queue`, once, when it has decided `packets` packets.
pub fn recv_error(queue: u16, packets: u64) -> Option<io::Error> {
    static FIRED: AtomicBool = AtomicBool::new(false);
    let s = spec()?;
    if s.queue != queue || packets < s.after || FIRED.swap(true, Ordering::Relaxed) {
        return None;
    }
    Some(io::Error::from_raw_os_error(s.errno))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_names_numbers_and_the_packet_count() {
        assert_eq!(
            parse("11:EBADF:5"),
            Some(Spec {
                queue: 11,
                errno: libc::EBADF,
                after: 5
            })
        );
        assert_eq!(
            parse("0:105"),
            Some(Spec {
                queue: 0,
                errno: 105,
                after: 0
            })
        );
        for bad in [
            "",
            "11",
            "x:EBADF",
            "11:EWHAT",
            "11:EBADF:x",
            "11:EBADF:1:2",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
