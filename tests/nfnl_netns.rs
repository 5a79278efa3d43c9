//! `nfnl` against the real kernel: each test makes its own network namespace with an iptables
//! `NFQUEUE` rule on loopback UDP, binds the queue from a thread that entered the namespace,
//! sends datagrams from another thread in it, and checks what the kernel queued and what our
//! verdicts did to the packets (delivery, and the mark seen by a POSTROUTING counter rule).
//!
//! Needs root (`sudo -E cargo test --test nfnl_netns`); without it every test fails saying so,
//! unless `NFQMARK_SKIP_E2E=1`, which turns them into no-ops with a note. Only 127.0.0.1 is
//! used, every wait is bounded, and the namespace is deleted on every path (a Drop guard).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a step that fails fails the test, loudly and at once"
)]

use std::io;
use std::net::{Ipv4Addr, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nfqmark::nfnl::{
    ChecksumState, Config, Ct, HwAddr, MsgError, OpenError, PacketMsg, RecvBuf, SKB_CSUM_NOT_READY,
    Socket, Verdict,
};

/// The mark verdicts set, and the POSTROUTING counter rule looks for.
const MARK: u32 = 0x89;
/// Longest wait for anything that should happen.
const WAIT: Duration = Duration::from_secs(5);
/// How long we watch for something that should not happen.
const QUIET: Duration = Duration::from_millis(400);
/// `NF_INET_LOCAL_OUT`.
const HOOK_OUTPUT: u8 = 3;
const ETH_P_IP: u16 = 0x0800;

/// True when the test may run; false (after a note) when skipped; panics when not root.
fn root_or_skip() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("NFQMARK_SKIP_E2E").as_deref() == Ok("1") {
        eprintln!("note: NFQMARK_SKIP_E2E=1 and not root: skipping the nfnl namespace test");
        return false;
    }
    panic!(
        "the nfnl namespace tests need root (network namespaces, iptables, NFQUEUE): run them \
         with `sudo -E cargo test --test nfnl_netns`, or set NFQMARK_SKIP_E2E=1 to skip them"
    );
}

/// Run a command to completion; panic with its output when it fails.
fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "`{program} {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A throwaway network namespace with `lo` up, deleted when dropped.
struct Netns {
    name: String,
}

impl Netns {
    fn new(test: &str) -> Netns {
        let name = format!("nfqm-nfnl-{}-{test}", std::process::id());
        // Left over from a crashed run with the same pid: start clean.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn exec(&self, args: &[&str]) -> String {
        let mut all = vec!["netns", "exec", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    fn iptables(&self, args: &[&str]) -> String {
        let mut all = vec!["iptables", "-w", "-t", "mangle"];
        all.extend_from_slice(args);
        self.exec(&all)
    }

    /// Queue loopback UDP to `port` from OUTPUT to `queue`; `extra` narrows the match.
    fn queue_rule(&self, port: u16, queue: u16, extra: &[&str]) {
        let port = port.to_string();
        let queue = queue.to_string();
        let mut args = vec![
            "-A",
            "OUTPUT",
            "-d",
            "127.0.0.1",
            "-p",
            "udp",
            "--dport",
            port.as_str(),
        ];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["-j", "NFQUEUE", "--queue-num", queue.as_str()]);
        self.iptables(&args);
    }

    /// Count packets leaving with our mark.
    fn mark_counter_rule(&self) {
        self.iptables(&["-A", "POSTROUTING", "-m", "mark", "--mark", "0x89"]);
    }

    /// Packets the mark counter rule saw.
    fn marked_packets(&self) -> u64 {
        let listing = self.iptables(&["-L", "POSTROUTING", "-v", "-x", "-n"]);
        let line = listing
            .lines()
            .find(|l| l.contains("mark match 0x89"))
            .unwrap_or_else(|| panic!("no mark counter rule in:\n{listing}"));
        line.split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("cannot read the packet count in {line:?}"))
    }

    /// Run `f` on a new thread that first entered the namespace (sockets it creates live there).
    fn spawn<T, F>(&self, f: F) -> JoinHandle<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let name = self.name.clone();
        thread::spawn(move || {
            nfqmark_lab::netns::enter(&name)
                .unwrap_or_else(|e| panic!("cannot enter namespace {name}: {e}"));
            f()
        })
    }

    /// Run `f` inside the namespace and wait for its result.
    fn run_in<T, F>(&self, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        join(self.spawn(f))
    }

    /// A UDP socket bound to 127.0.0.1:`port` in the namespace.
    fn receiver(&self, port: u16) -> UdpSocket {
        self.run_in(move || {
            UdpSocket::bind((Ipv4Addr::LOCALHOST, port))
                .unwrap_or_else(|e| panic!("cannot bind the receiver: {e}"))
        })
    }

    /// Send `datagrams` to 127.0.0.1:`port`, in order, from a thread in the namespace.
    fn send(&self, port: u16, datagrams: &[&[u8]]) {
        let datagrams: Vec<Vec<u8>> = datagrams.iter().map(|d| d.to_vec()).collect();
        self.run_in(move || {
            let tx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
                .unwrap_or_else(|e| panic!("cannot bind the sender: {e}"));
            for d in &datagrams {
                tx.send_to(d, (Ipv4Addr::LOCALHOST, port))
                    .unwrap_or_else(|e| panic!("cannot send: {e}"));
            }
        });
    }

    /// Bind the queue from a thread in the namespace and hand it to `serve` there. Returns once
    /// the queue is bound (so packets sent afterwards are queued to it) with the serving thread.
    fn serve<T, F>(&self, cfg: Config, serve: F) -> JoinHandle<T>
    where
        T: Send + 'static,
        F: FnOnce(&Socket, &mut RecvBuf) -> T + Send + 'static,
    {
        let (ready_tx, ready_rx) = mpsc::channel();
        let handle = self.spawn(move || {
            let sock = match Socket::open(&cfg) {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    panic!("opening queue {}: {e}", cfg.queue);
                }
            };
            let _ = ready_tx.send(Ok(()));
            let mut buf = RecvBuf::new(cfg.copy_range);
            serve(&sock, &mut buf)
        });
        match ready_rx.recv_timeout(WAIT) {
            Ok(Ok(())) => handle,
            Ok(Err(e)) => panic!("opening the queue failed: {e}"),
            Err(e) => panic!("the queue thread did not report within {WAIT:?}: {e}"),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn join<T>(handle: JoinHandle<T>) -> T {
    handle
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// A queued packet, owned so it can leave the queue thread.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Got {
    id: u32,
    hw_protocol: u16,
    hook: u8,
    mark: u32,
    indev: u32,
    outdev: u32,
    payload: Vec<u8>,
    orig_len: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    skb_info: u32,
    checksum: ChecksumState,
    ct: Option<Ct>,
    hwaddr: Option<HwAddr>,
}

impl From<PacketMsg<'_>> for Got {
    fn from(p: PacketMsg<'_>) -> Got {
        Got {
            id: p.id,
            hw_protocol: p.hw_protocol,
            hook: p.hook,
            mark: p.mark,
            indev: p.indev,
            outdev: p.outdev,
            payload: p.payload.to_vec(),
            orig_len: p.orig_len,
            uid: p.uid,
            gid: p.gid,
            skb_info: p.skb_info,
            checksum: p.checksum(),
            ct: p.ct,
            hwaddr: p.hwaddr,
        }
    }
}

/// Everything the socket delivers within `within` (packets and message errors), waiting at most
/// that long, stopping early once `want` packets came.
fn collect(
    sock: &Socket,
    buf: &mut RecvBuf,
    want: usize,
    within: Duration,
) -> (Vec<Got>, Vec<MsgError>) {
    let deadline = Instant::now() + within;
    let (mut packets, mut errors) = (Vec::new(), Vec::new());
    while packets.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match sock.recv(buf, Some(left)) {
            Ok(_) => {}
            Err(e) => panic!("recv failed: {e}"),
        }
        for msg in buf.messages() {
            match msg {
                Ok(p) => packets.push(Got::from(p)),
                Err(e) => errors.push(e),
            }
        }
    }
    (packets, errors)
}

/// Exactly `n` packets, within [`WAIT`], and no message errors.
fn expect_packets(sock: &Socket, buf: &mut RecvBuf, n: usize) -> Vec<Got> {
    let (packets, errors) = collect(sock, buf, n, WAIT);
    assert!(errors.is_empty(), "unexpected message errors: {errors:?}");
    assert_eq!(
        packets.len(),
        n,
        "queued packets within {WAIT:?}: {packets:?}"
    );
    packets
}

/// The next datagram for the receiver within `within`, `None` when the time runs out. EINTR
/// (which a socket with a receive timeout gets, even without signal handlers, e.g. after the
/// process was stopped and continued) just means: wait for the rest of the time.
fn receive_within(rx: &UdpSocket, within: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 2048];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        rx.set_read_timeout(Some(left)).expect("set_read_timeout");
        match rx.recv_from(&mut buf) {
            Ok((n, _)) => return Some(buf[..n].to_vec()),
            Err(e) => match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => return None,
                _ => panic!("receiver failed: {e}"),
            },
        }
    }
}

/// The datagram the receiver gets within [`WAIT`].
fn delivered(rx: &UdpSocket) -> Vec<u8> {
    receive_within(rx, WAIT).unwrap_or_else(|| panic!("nothing delivered within {WAIT:?}"))
}

/// Nothing reaches the receiver for [`QUIET`].
fn nothing_delivered(rx: &UdpSocket) {
    if let Some(d) = receive_within(rx, QUIET) {
        panic!("delivered although it should not be: {d:?}");
    }
}

fn config(queue: u16) -> Config {
    Config {
        queue,
        fail_open: false,
        ..Config::default()
    }
}

/// The IPv4 header + UDP header of a queued loopback datagram, checked, and its UDP payload.
fn udp_payload(packet: &[u8], port: u16) -> &[u8] {
    assert!(packet.len() >= 28, "too short for IPv4 + UDP: {packet:?}");
    assert_eq!(packet[0] >> 4, 4, "not IPv4");
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    assert_eq!(packet[9], 17, "not UDP");
    assert_eq!(&packet[16..20], &[127, 0, 0, 1], "destination");
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    assert_eq!(total, packet.len(), "IPv4 total length vs. bytes queued");
    let udp = &packet[ihl..];
    assert_eq!(
        u16::from_be_bytes([udp[2], udp[3]]),
        port,
        "destination port"
    );
    &udp[8..]
}

/// The UDP checksum of an IPv4 packet verifies (over the pseudo-header).
fn udp_checksum_ok(packet: &[u8]) -> bool {
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    let udp = &packet[ihl..];
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            let hi = u32::from(pair[0]) << 8;
            let lo = pair.get(1).map_or(0, |&b| u32::from(b));
            sum += hi | lo;
        }
    };
    add(&packet[12..20]);
    add(&[0, 17]);
    add(&(udp.len() as u16).to_be_bytes());
    add(udp);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

#[test]
fn marked_accept_is_delivered_with_its_mark() {
    if !root_or_skip() {
        return;
    }
    let (port, queue) = (5301, 3);
    let ns = Netns::new("mark");
    ns.queue_rule(port, queue, &[]);
    ns.mark_counter_rule();
    let rx = ns.receiver(port);
    let cfg = Config {
        uid_gid: true,
        ..config(queue)
    };
    let server = ns.serve(cfg, |sock, buf| {
        let got = expect_packets(sock, buf, 1).remove(0);
        sock.verdict(got.id, Verdict::Accept, Some(MARK))
            .expect("verdict");
        got
    });
    ns.send(port, &[b"nfqm-mark-1"]);
    let got = join(server);

    assert_eq!(got.hook, HOOK_OUTPUT);
    assert_eq!(got.hw_protocol, ETH_P_IP);
    assert_eq!(got.mark, 0, "the packet had no mark before our verdict");
    assert_eq!(got.indev, 0, "locally generated: no input interface");
    assert_eq!(got.outdev, 1, "routed to lo, ifindex 1 in a new namespace");
    assert_eq!(got.orig_len, None, "whole packet copied: no capture length");
    assert_eq!((got.uid, got.gid), (Some(0), Some(0)), "sent by root");
    assert_eq!(udp_payload(&got.payload, port), b"nfqm-mark-1");
    assert_eq!(delivered(&rx), b"nfqm-mark-1");
    assert_eq!(
        ns.marked_packets(),
        1,
        "the mark is on the packet in POSTROUTING"
    );
}

#[test]
fn drop_verdict_is_not_delivered() {
    if !root_or_skip() {
        return;
    }
    let (port, queue) = (5302, 4);
    let ns = Netns::new("drop");
    ns.queue_rule(port, queue, &[]);
    ns.mark_counter_rule();
    let rx = ns.receiver(port);
    let server = ns.serve(config(queue), |sock, buf| {
        let got = expect_packets(sock, buf, 1).remove(0);
        sock.verdict(got.id, Verdict::Drop, Some(MARK))
            .expect("verdict");
        got
    });
    ns.send(port, &[b"nfqm-drop"]);
    let got = join(server);
    assert_eq!(udp_payload(&got.payload, port), b"nfqm-drop");
    nothing_delivered(&rx);
    assert_eq!(
        ns.marked_packets(),
        0,
        "a dropped packet never reaches POSTROUTING"
    );
}

#[test]
fn verdict_batch_covers_every_packet_up_to_its_id() {
    if !root_or_skip() {
        return;
    }
    // Above 255: the queue number is big-endian in nfgenmsg, a byte-order slip shows here.
    let (port, queue) = (5303, 300);
    let ns = Netns::new("batch");
    ns.queue_rule(port, queue, &[]);
    ns.mark_counter_rule();
    let rx = ns.receiver(port);
    let server = ns.serve(config(queue), |sock, buf| {
        let got = expect_packets(sock, buf, 3);
        // The first two in one batch, accepted and marked; the third dropped on its own.
        sock.verdict_batch(got[1].id, Verdict::Accept, Some(MARK))
            .expect("verdict_batch");
        sock.verdict(got[2].id, Verdict::Drop, None)
            .expect("verdict");
        // The kernel complains (asynchronously) only on failure: there must be nothing.
        let (late, errors) = collect(sock, buf, 1, QUIET);
        assert!(
            late.is_empty() && errors.is_empty(),
            "after the verdicts: {late:?} {errors:?}"
        );
        got
    });
    ns.send(port, &[b"nfqm-b1", b"nfqm-b2", b"nfqm-b3"]);
    let got = join(server);
    assert!(
        got[0].id < got[1].id && got[1].id < got[2].id,
        "ids grow: {got:?}"
    );
    let payloads: Vec<&[u8]> = got.iter().map(|g| udp_payload(&g.payload, port)).collect();
    assert_eq!(payloads, [&b"nfqm-b1"[..], b"nfqm-b2", b"nfqm-b3"]);
    assert_eq!(delivered(&rx), b"nfqm-b1");
    assert_eq!(delivered(&rx), b"nfqm-b2");
    nothing_delivered(&rx);
    assert_eq!(ns.marked_packets(), 2);
}

#[test]
fn recv_times_out_with_zero_when_nothing_is_queued() {
    if !root_or_skip() {
        return;
    }
    let ns = Netns::new("idle");
    let server = ns.serve(config(5), |sock, buf| {
        // A wait cut short by EINTR also returns Ok(0) (the caller just loops): try a few
        // times for one that runs its full course.
        let mut waits = Vec::new();
        for _ in 0..3 {
            let start = Instant::now();
            let n = sock
                .recv(buf, Some(Duration::from_millis(150)))
                .expect("recv");
            waits.push((n, start.elapsed(), buf.messages().count()));
            if start.elapsed() >= Duration::from_millis(150) {
                break;
            }
        }
        let n_zero = sock.recv(buf, Some(Duration::ZERO)).expect("recv");
        (waits, n_zero)
    });
    let (waits, n_zero) = join(server);
    assert!(
        waits.iter().all(|&(n, waited, messages)| n == 0
            && messages == 0
            && waited < Duration::from_secs(2)),
        "{waits:?}"
    );
    assert!(
        waits
            .iter()
            .any(|&(_, waited, _)| waited >= Duration::from_millis(150)),
        "no wait ran its course: {waits:?}"
    );
    assert_eq!(n_zero, 0);
}

#[test]
fn second_socket_on_the_same_queue_is_busy() {
    if !root_or_skip() {
        return;
    }
    let ns = Netns::new("busy");
    let (first, second, after_unbind, again) = ns.run_in(|| {
        let cfg = config(6);
        let first = Socket::open(&cfg).expect("first open");
        let second = Socket::open(&cfg).map(|_| ());
        first.unbind().expect("unbind");
        // Unbound, the queue is free for another socket while `first` still exists.
        let after_unbind = Socket::open(&cfg).map(drop);
        let again = first.unbind().map_err(|e| e.to_string());
        (first.queue(), second, after_unbind, again)
    });
    assert_eq!(first, 6);
    match second {
        Err(OpenError::Busy(6)) => {}
        other => panic!("second open: {other:?}"),
    }
    let message = OpenError::Busy(6).to_string();
    assert_eq!(
        message,
        "queue 6 is already bound by another process: stop it, or pick another --queue"
    );
    assert!(after_unbind.is_ok(), "open after unbind: {after_unbind:?}");
    assert_eq!(again, Ok(()), "unbinding twice is a no-op");
}

#[test]
fn closing_the_socket_frees_the_queue() {
    if !root_or_skip() {
        return;
    }
    let ns = Netns::new("reopen");
    let reopened = ns.run_in(|| {
        let cfg = config(7);
        drop(Socket::open(&cfg).expect("first open"));
        Socket::open(&cfg).map(|s| s.queue())
    });
    assert_eq!(reopened.ok(), Some(7));
}

#[test]
fn open_without_cap_net_admin_is_a_permission_error() {
    if !root_or_skip() {
        return;
    }
    let ns = Netns::new("perm");
    let result = ns.run_in(|| {
        drop_cap_net_admin().expect("capset");
        Socket::open(&config(8)).map(drop)
    });
    match result {
        Err(e @ OpenError::Permission(_)) => {
            assert!(e.to_string().contains("CAP_NET_ADMIN"), "{e}");
        }
        other => panic!("open without CAP_NET_ADMIN: {other:?}"),
    }
}

/// Drop CAP_NET_ADMIN from the calling thread's effective set (capabilities are per thread).
fn drop_cap_net_admin() -> io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    const CAP_NET_ADMIN: u32 = 12;
    let mut header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: header and two data structs, as capget(2) wants for version 3.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    data[0].effective &= !(1 << CAP_NET_ADMIN);
    // SAFETY: as above; pid 0 is the calling thread.
    if unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[test]
fn copy_range_cuts_the_payload_and_reports_the_full_length() {
    if !root_or_skip() {
        return;
    }
    let (port, queue) = (5309, 9);
    let ns = Netns::new("copyrange");
    ns.queue_rule(port, queue, &[]);
    let rx = ns.receiver(port);
    let cfg = Config {
        copy_range: 40,
        ..config(queue)
    };
    let server = ns.serve(cfg, |sock, buf| {
        let got = expect_packets(sock, buf, 1).remove(0);
        sock.verdict(got.id, Verdict::Accept, None)
            .expect("verdict");
        got
    });
    let datagram = [b'x'; 100];
    ns.send(port, &[&datagram]);
    let got = join(server);
    assert_eq!(got.payload.len(), 40);
    assert_eq!(got.orig_len, Some(20 + 8 + 100));
    assert_eq!(delivered(&rx), datagram, "the packet itself is not cut");
}

#[test]
fn repeat_verdict_runs_the_hook_again_with_the_new_mark() {
    if !root_or_skip() {
        return;
    }
    let (port, queue) = (5310, 10);
    let ns = Netns::new("repeat");
    // Only unmarked packets are queued: the repeated, marked one passes the second time.
    ns.queue_rule(port, queue, &["-m", "mark", "--mark", "0"]);
    ns.mark_counter_rule();
    let rx = ns.receiver(port);
    let server = ns.serve(config(queue), |sock, buf| {
        let got = expect_packets(sock, buf, 1).remove(0);
        sock.verdict(got.id, Verdict::Repeat, Some(MARK))
            .expect("verdict");
        let (again, errors) = collect(sock, buf, 1, QUIET);
        assert!(
            again.is_empty() && errors.is_empty(),
            "queued again: {again:?} {errors:?}"
        );
        got
    });
    ns.send(port, &[b"nfqm-repeat"]);
    let got = join(server);
    assert_eq!(got.hook, HOOK_OUTPUT);
    assert_eq!(delivered(&rx), b"nfqm-repeat");
    assert_eq!(ns.marked_packets(), 1);
}

#[test]
fn verdict_for_an_unknown_id_comes_back_as_a_netlink_error() {
    if !root_or_skip() {
        return;
    }
    let ns = Netns::new("enoent");
    let server = ns.serve(config(11), |sock, buf| {
        sock.verdict(123_456, Verdict::Accept, None)
            .expect("the send itself succeeds");
        let (packets, errors) = collect(sock, buf, 1, Duration::from_secs(1));
        assert!(packets.is_empty(), "{packets:?}");
        errors
    });
    let errors = join(server);
    match errors.as_slice() {
        [MsgError::Netlink { errno, .. }] => assert_eq!(*errno, libc::ENOENT),
        other => panic!("expected one ENOENT, got {other:?}"),
    }
}

#[test]
fn gso_flag_decides_whether_checksums_are_complete() {
    if !root_or_skip() {
        return;
    }
    let port = 5312;
    let ns = Netns::new("gso");
    ns.queue_rule(port, 12, &[]);
    let _rx = ns.receiver(port);
    let mut seen = Vec::new();
    for gso in [false, true] {
        let cfg = Config { gso, ..config(12) };
        let server = ns.serve(cfg, |sock, buf| {
            let got = expect_packets(sock, buf, 1).remove(0);
            sock.verdict(got.id, Verdict::Accept, None)
                .expect("verdict");
            got
        });
        ns.send(port, &[b"nfqm-gso"]);
        seen.push((gso, join(server)));
    }
    for (gso, got) in &seen {
        let not_ready = got.skb_info & SKB_CSUM_NOT_READY != 0;
        if *gso {
            assert!(
                not_ready,
                "GSO on: local UDP comes with its checksum pending"
            );
        } else {
            assert!(!not_ready, "GSO off: the kernel completes checksums first");
            assert!(udp_checksum_ok(&got.payload), "GSO off: checksum verifies");
        }
    }
}

#[test]
fn forced_receive_buffer_goes_past_rmem_max() {
    if !root_or_skip() {
        return;
    }
    let ns = Netns::new("rcvbuf");
    let (forced, size, rmem_max) = ns.run_in(|| {
        let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(212_992);
        let cfg = Config {
            rcvbuf: Some(rmem_max * 4),
            ..config(13)
        };
        let sock = Socket::open(&cfg).expect("open");
        (
            sock.rcvbuf_forced(),
            sock.rcvbuf().expect("rcvbuf"),
            rmem_max,
        )
    });
    assert!(forced, "root may force the receive buffer");
    assert!(
        size >= rmem_max * 4,
        "asked {} (rmem_max {rmem_max}), got {size}",
        rmem_max * 4
    );
}

#[test]
fn packets_queued_while_opening_all_reach_the_caller() {
    if !root_or_skip() {
        return;
    }
    let (port, queue) = (5314, 14);
    let ns = Netns::new("early");
    ns.queue_rule(port, queue, &[]);
    // Flood the port before and while the queue is bound: the kernel queues to us from the
    // moment the copy range is set, possibly before `open` has read that step's ack.
    let stop = Arc::new(AtomicBool::new(false));
    let flood_done = Arc::new(AtomicBool::new(false));
    let flood = {
        let (stop, done) = (Arc::clone(&stop), Arc::clone(&flood_done));
        ns.spawn(move || {
            let tx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the sender");
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) && start.elapsed() < WAIT {
                // Before the bind the kernel drops them, and sendto says EPERM: fine.
                let _ = tx.send_to(b"early", (Ipv4Addr::LOCALHOST, port));
            }
            done.store(true, Ordering::Release);
        })
    };
    thread::sleep(Duration::from_millis(20));
    let (stop_in_server, done_in_server) = (Arc::clone(&stop), Arc::clone(&flood_done));
    let server = ns.serve(config(queue), move |sock, buf| {
        let (mut ids, mut overflows) = (Vec::new(), 0);
        let opened = Instant::now();
        while opened.elapsed() < WAIT {
            // Let the flood reach the bound queue for a while, then stop it.
            if ids.len() >= 50 || opened.elapsed() > Duration::from_millis(300) {
                stop_in_server.store(true, Ordering::Relaxed);
            }
            // Read before looking at the datagram: a packet is queued (in our socket buffer)
            // before the sender's sendto returns, so once the flood is done one empty wait
            // means everything has been read.
            let done = done_in_server.load(Ordering::Acquire);
            match sock.recv(buf, Some(Duration::from_millis(50))) {
                Ok(0) if done => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => overflows += 1,
                Err(e) => panic!("recv: {e}"),
            }
            let before = ids.len();
            for msg in buf.messages() {
                ids.push(msg.expect("a readable packet").id);
            }
            // Verdicts as we go, as a daemon gives them: every queued packet holds the
            // sender's socket buffer, and a sender out of it blocks in sendto.
            if ids.len() > before
                && let Some(&last) = ids.last()
            {
                sock.verdict_batch(last, Verdict::Drop, None)
                    .expect("verdict_batch");
            }
        }
        // The kernel's own account of this queue, read from inside the namespace.
        let stats = std::fs::read_to_string("/proc/thread-self/net/netfilter/nfnetlink_queue")
            .expect("read nfnetlink_queue stats");
        (ids, overflows, stats)
    });
    let (ids, overflows, stats) = join(server);
    join(flood);
    let fields: Vec<u64> = stats
        .lines()
        .map(|l| {
            l.split_whitespace()
                .filter_map(|f| f.parse().ok())
                .collect::<Vec<u64>>()
        })
        .find(|f| f.first() == Some(&u64::from(queue)))
        .unwrap_or_else(|| panic!("queue {queue} not in:\n{stats}"));
    // queue_num peer_portid queue_total copy_mode copy_range queue_dropped user_dropped id_seq
    let (waiting, user_dropped, id_sequence) = (fields[2], fields[6], fields[7]);
    let seen = format!(
        "{} packets seen (ids {:?}..{:?}), {overflows} ENOBUFS; kernel: {stats}",
        ids.len(),
        ids.first(),
        ids.last()
    );
    assert!(!ids.is_empty(), "the flood queued nothing");
    assert_eq!(waiting, 0, "packets left without a verdict: {seen}");
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids in order, once each: {seen}"
    );
    assert_eq!(
        ids.len() as u64 + user_dropped,
        id_sequence,
        "every id the kernel handed out reached us or was dropped on overflow: {seen}"
    );
}

// ---- conntrack entries, checksum state and link-layer addresses ----

/// `NF_INET_PRE_ROUTING`.
const HOOK_PREROUTING: u8 = 0;
/// The connection mark the CONNMARK rule sets.
const CONNMARK: u32 = 0x2a;
/// Addresses of the two ends of a veth pair ([`Pair`]).
const ADDR_A: Ipv4Addr = Ipv4Addr::new(198, 18, 50, 1);
const ADDR_B: Ipv4Addr = Ipv4Addr::new(198, 18, 50, 2);
/// The MAC address of `a`'s end of the pair.
const MAC_A: [u8; 6] = [0x02, 0x6e, 0x66, 0x71, 0x00, 0x01];

/// Two namespaces joined by a veth pair: `a` (198.18.50.1 on eth0, MAC [`MAC_A`]) and `b`
/// (198.18.50.2 on eth0). Both are deleted when dropped.
struct Pair {
    a: Netns,
    b: Netns,
}

impl Pair {
    fn new(test: &str) -> Pair {
        let pair = Pair {
            a: Netns::new(&format!("{test}-a")),
            b: Netns::new(&format!("{test}-b")),
        };
        // Created inside `a`, so the interface names never meet anything in the host.
        pair.a.exec(&[
            "ip",
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &pair.b.name,
        ]);
        let mac = MAC_A.map(|b| format!("{b:02x}")).join(":");
        pair.a
            .exec(&["ip", "link", "set", "eth0", "address", mac.as_str()]);
        for (ns, addr) in [(&pair.a, ADDR_A), (&pair.b, ADDR_B)] {
            let cidr = format!("{addr}/24");
            ns.exec(&["ip", "addr", "add", cidr.as_str(), "dev", "eth0"]);
            ns.exec(&["ip", "link", "set", "eth0", "up"]);
        }
        pair
    }
}

/// A UDP socket bound in `ns` to `addr`:`port` (0: any port). Sockets keep their namespace, so
/// the test thread can use it afterwards.
fn udp_socket(ns: &Netns, addr: Ipv4Addr, port: u16) -> UdpSocket {
    ns.run_in(move || {
        UdpSocket::bind((addr, port)).unwrap_or_else(|e| panic!("cannot bind {addr}:{port}: {e}"))
    })
}

/// The Internet checksum (RFC 1071) of `chunks` taken as one byte string of even-length parts.
fn internet_checksum(chunks: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in chunks {
        for pair in chunk.chunks(2) {
            let hi = u32::from(pair[0]) << 8;
            let lo = pair.get(1).map_or(0, |&b| u32::from(b));
            sum += hi | lo;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A UDP header and payload from `src` to `dst`:`port` with the right checksum, or with that
/// checksum plus one when `bad`.
fn udp_datagram(src: Ipv4Addr, dst: Ipv4Addr, port: u16, payload: &[u8], bad: bool) -> Vec<u8> {
    let len = (8 + payload.len()) as u16;
    let mut udp = Vec::new();
    udp.extend_from_slice(&40000u16.to_be_bytes());
    udp.extend_from_slice(&port.to_be_bytes());
    udp.extend_from_slice(&len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let pseudo = [
        &src.octets()[..],
        &dst.octets()[..],
        &[0, 17],
        &len.to_be_bytes(),
    ]
    .concat();
    let mut sum = internet_checksum(&[&pseudo, &udp]);
    if sum == 0 {
        sum = 0xffff;
    }
    if bad {
        sum = sum.wrapping_add(1).max(1);
    }
    udp[6..8].copy_from_slice(&sum.to_be_bytes());
    udp
}

/// Send `datagram` (UDP header included) to `dst` from a raw socket created in `ns`: the
/// kernel adds the IP header and leaves the UDP checksum as given.
fn send_raw_udp(ns: &Netns, dst: Ipv4Addr, datagram: Vec<u8>) {
    ns.run_in(move || {
        // SAFETY: plain syscall with constant arguments; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_UDP) };
        assert!(fd >= 0, "raw socket: {}", io::Error::last_os_error());
        // SAFETY: all-zero is a valid sockaddr_in.
        let mut to: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        to.sin_family = libc::AF_INET as libc::sa_family_t;
        to.sin_addr.s_addr = u32::from_ne_bytes(dst.octets());
        // SAFETY: `datagram` is valid for reads of its length; `to` is a valid sockaddr_in
        // and the length is its size.
        let n = unsafe {
            libc::sendto(
                fd,
                datagram.as_ptr().cast(),
                datagram.len(),
                0,
                (&raw const to).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        let sent = io::Error::last_os_error();
        // SAFETY: `fd` is the socket opened above, closed once.
        unsafe { libc::close(fd) };
        assert_eq!(n, datagram.len() as isize, "raw sendto: {sent}");
    });
}

/// Queue UDP to `port` arriving in `ns` (mangle PREROUTING, after conntrack) to `queue`.
fn queue_incoming(ns: &Netns, port: u16, queue: u16) {
    let (port, queue) = (port.to_string(), queue.to_string());
    ns.iptables(&[
        "-A",
        "PREROUTING",
        "-p",
        "udp",
        "--dport",
        &port,
        "-j",
        "NFQUEUE",
        "--queue-num",
        &queue,
    ]);
}

/// Serve `n` packets on a queue in `ns`, accepting each as it comes (so a later packet of
/// the same connection finds it confirmed), and return them.
fn accept_n(ns: &Netns, cfg: Config, n: usize) -> JoinHandle<(bool, Vec<Got>)> {
    ns.serve(cfg, move |sock, buf| {
        let mut all = Vec::new();
        for _ in 0..n {
            let got = expect_packets(sock, buf, 1).remove(0);
            sock.verdict(got.id, Verdict::Accept, None)
                .expect("verdict");
            all.push(got);
        }
        (sock.conntrack(), all)
    })
}

/// Whether this kernel reports conntrack entries to queues: `nfnetlink_queue` needs the glue
/// ctnetlink only registers with CONFIG_NETFILTER_NETLINK_GLUE_CT.
fn kernel_has_glue_ct() -> Option<bool> {
    let config = std::process::Command::new("sh")
        .args(["-c", "zcat /proc/config.gz 2>/dev/null"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&config.stdout);
    if text.is_empty() {
        return None;
    }
    Some(
        text.lines()
            .any(|l| l == "CONFIG_NETFILTER_NETLINK_GLUE_CT=y"),
    )
}

#[test]
fn conntrack_info_reports_the_first_packet_and_the_connmark() {
    if !root_or_skip() {
        return;
    }
    let (port, queue) = (5320, 20);
    let ns = Netns::new("ct");
    let port_s = port.to_string();
    let mark = format!("{CONNMARK:#x}");
    ns.iptables(&[
        "-A",
        "OUTPUT",
        "-d",
        "127.0.0.1",
        "-p",
        "udp",
        "--dport",
        &port_s,
        "-j",
        "CONNMARK",
        "--set-mark",
        &mark,
    ]);
    ns.queue_rule(port, queue, &[]);
    let rx = ns.receiver(port);
    let tx = udp_socket(&ns, Ipv4Addr::LOCALHOST, 0);
    let cfg = Config {
        conntrack: true,
        ..config(queue)
    };
    let server = accept_n(&ns, cfg, 2);
    // One connection: the second datagram leaves only after the first was delivered, so its
    // entry is confirmed by then.
    for payload in [&b"nfqm-ct-1"[..], b"nfqm-ct-2"] {
        tx.send_to(payload, (Ipv4Addr::LOCALHOST, port))
            .expect("send");
        assert_eq!(delivered(&rx), payload);
    }
    let (reported, got) = join(server);
    if !reported {
        // The queue still works, without conntrack entries: what the daemon falls back to.
        assert_eq!(
            kernel_has_glue_ct(),
            Some(false),
            "the kernel refused NFQA_CFG_F_CONNTRACK although its config has the glue"
        );
        assert!(got.iter().all(|g| g.ct.is_none()), "{got:?}");
        eprintln!(
            "note: this kernel has no CONFIG_NETFILTER_NETLINK_GLUE_CT: conntrack entries are \
             not reported to queues; checked the fallback only"
        );
        return;
    }
    let (first, second) = (&got[0], &got[1]);
    let (ct1, ct2) = (
        first.ct.expect("conntrack entry"),
        second.ct.expect("entry"),
    );
    assert_eq!(ct1.first(), Some(true), "first packet: entry unconfirmed");
    assert_eq!(ct2.first(), Some(false), "second packet: entry confirmed");
    assert_eq!(
        (ct1.mark, ct2.mark),
        (CONNMARK, CONNMARK),
        "the CONNMARK rule's mark"
    );
    assert_eq!(ct1.id, ct2.id, "one connection");
    assert_eq!(
        (ct1.info, ct2.info),
        (Some(2), Some(0)),
        "IP_CT_NEW, IP_CT_ESTABLISHED"
    );
    assert_eq!(ct1.zone, 0);
}

#[test]
fn queue_without_conntrack_info_gets_no_entries() {
    if !root_or_skip() {
        return;
    }
    // The control of the test above: the same traffic, not asked for.
    let (port, queue) = (5321, 21);
    let ns = Netns::new("noct");
    ns.queue_rule(port, queue, &[]);
    let rx = ns.receiver(port);
    let server = accept_n(&ns, config(queue), 1);
    ns.send(port, &[b"nfqm-noct"]);
    assert_eq!(delivered(&rx), b"nfqm-noct");
    let (reported, got) = join(server);
    assert!(!reported);
    assert_eq!(got[0].ct, None);
}

#[test]
fn local_udp_on_veth_reports_a_verified_checksum_and_no_link_address() {
    if !root_or_skip() {
        return;
    }
    let (port, queue) = (5322, 22);
    let pair = Pair::new("csumout");
    let (port_s, queue_s) = (port.to_string(), queue.to_string());
    pair.a.iptables(&[
        "-A",
        "OUTPUT",
        "-p",
        "udp",
        "--dport",
        &port_s,
        "-j",
        "NFQUEUE",
        "--queue-num",
        &queue_s,
    ]);
    let rx = udp_socket(&pair.b, ADDR_B, port);
    let tx = udp_socket(&pair.a, ADDR_A, 0);
    let mut seen = Vec::new();
    for gso in [false, true] {
        let server = accept_n(
            &pair.a,
            Config {
                gso,
                ..config(queue)
            },
            1,
        );
        tx.send_to(b"nfqm-csum-out", (ADDR_B, port)).expect("send");
        assert_eq!(delivered(&rx), b"nfqm-csum-out");
        seen.push(join(server).1.remove(0));
    }
    let (plain, gso) = (&seen[0], &seen[1]);
    assert_eq!(plain.hook, HOOK_OUTPUT);
    // Without NFQA_CFG_F_GSO the kernel completes the checksum before queueing and says
    // nothing: Verified. With it, the checksum is left to the device: NotReady.
    assert_eq!(plain.checksum, ChecksumState::Verified);
    assert!(udp_checksum_ok(&plain.payload), "complete checksum");
    assert_eq!(gso.checksum, ChecksumState::NotReady);
    assert_eq!(plain.hwaddr, None, "locally generated: no input device");
}

#[test]
fn bad_udp_checksum_from_another_namespace_is_not_verified() {
    if !root_or_skip() {
        return;
    }
    let (port, queue) = (5323, 23);
    let pair = Pair::new("csumin");
    queue_incoming(&pair.b, port, queue);
    let _rx = udp_socket(&pair.b, ADDR_B, port);
    let tx = udp_socket(&pair.a, ADDR_A, 0);
    // Each round: a raw datagram with a good checksum (the control), the same with a bad one,
    // and one from a UDP socket (its checksum offloaded to veth, CHECKSUM_PARTIAL).
    let round = |tag: u8| {
        let server = accept_n(&pair.b, config(queue), 3);
        let (good, bad, sock) = ([b'g', tag], [b'b', tag], [b's', tag]);
        send_raw_udp(
            &pair.a,
            ADDR_B,
            udp_datagram(ADDR_A, ADDR_B, port, &good, false),
        );
        send_raw_udp(
            &pair.a,
            ADDR_B,
            udp_datagram(ADDR_A, ADDR_B, port, &bad, true),
        );
        tx.send_to(&sock, (ADDR_B, port)).expect("send");
        let (_, got) = join(server);
        let find = |p: &[u8]| {
            got.iter()
                .find(|g| g.payload.ends_with(p))
                .cloned()
                .unwrap_or_else(|| panic!("no packet {p:?} in {got:?}"))
        };
        (find(&good), find(&bad), find(&sock))
    };
    // No rule in b uses conntrack, so nothing has looked at the checksums when the packets
    // are queued.
    let (good, bad, sock) = round(1);
    assert_eq!(good.hook, HOOK_PREROUTING);
    assert!(udp_checksum_ok(&good.payload) && !udp_checksum_ok(&bad.payload));
    assert_eq!(good.checksum, ChecksumState::NotVerified, "{good:?}");
    assert_eq!(bad.checksum, ChecksumState::NotVerified, "{bad:?}");
    assert_eq!(sock.checksum, ChecksumState::Verified, "{sock:?}");
    // Every one came in on veth: the source MAC is a's.
    for g in [&good, &bad, &sock] {
        assert_eq!(g.hwaddr.and_then(|h| h.mac()), Some(MAC_A), "{g:?}");
    }
    // A rule that uses conntrack (as `nfqmark setup` installs) starts it in b: it checks UDP
    // checksums in PREROUTING before mangle, so the good one is verified by the time it is
    // queued and the bad one stays unverified.
    pair.b
        .iptables(&["-I", "PREROUTING", "-j", "CONNMARK", "--restore-mark"]);
    let (good, bad, sock) = round(2);
    assert_eq!(good.checksum, ChecksumState::Verified, "{good:?}");
    assert_eq!(bad.checksum, ChecksumState::NotVerified, "{bad:?}");
    assert_eq!(sock.checksum, ChecksumState::Verified, "{sock:?}");
}

// ---- nf_tables rule counters ----

/// Feed `rules` to `tool` (iptables-restore or ip6tables-restore) in the namespace.
fn restore(ns: &Netns, tool: &str, rules: &str) {
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, tool, "--noflush"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {tool}: {e}"));
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(rules.as_bytes()).expect("write rules");
    }
    let status = child.wait().expect("wait");
    assert!(status.success(), "{tool} failed on:\n{rules}");
}

#[test]
fn rule_counters_count_what_the_queue_never_saw() {
    if !root_or_skip() {
        return;
    }
    let ns = Netns::new("nftcount");
    // Ours (comment nfqmark) to queues 30 (IPv4 and IPv6) and 31 (raw table, a balance
    // range); the control rule queues to 30 too but has no comment, so it is not counted.
    restore(
        &ns,
        "iptables-restore",
        "*mangle\n\
         -A OUTPUT -m comment --comment nfqmark -d 127.0.0.1 -p udp --dport 5330 -j NFQUEUE --queue-num 30 --queue-bypass\n\
         -A OUTPUT -d 127.0.0.1 -p udp --dport 5331 -j NFQUEUE --queue-num 30 --queue-bypass\n\
         COMMIT\n\
         *raw\n\
         -A OUTPUT -p udp --dport 5332 -m comment --comment nfqmark -j NFQUEUE --queue-balance 31:32 --queue-bypass\n\
         COMMIT\n",
    );
    restore(
        &ns,
        "ip6tables-restore",
        "*mangle\n\
         -A OUTPUT -m comment --comment nfqmark -d ::1 -p udp --dport 5330 -j NFQUEUE --queue-num 30 --queue-bypass\n\
         COMMIT\n",
    );
    let before = ns.run_in(|| nfqmark::nfnl::NfnlSocket::open().and_then(|mut s| s.queue_rules()));
    let before = before.expect("rule dump");
    assert_eq!(before.len(), 3, "three rules of ours: {before:?}");
    assert!(before.iter().all(|r| r.packets == 0), "{before:?}");

    // Nobody listens on any queue: with --queue-bypass every packet passes unqueued.
    let (n4, n6, n_other, n_raw) = (7usize, 3usize, 5usize, 2usize);
    let rx4 = ns.receiver(5330);
    let rx_other = ns.receiver(5331);
    let rx_raw = ns.receiver(5332);
    let rx6 = ns.run_in(|| UdpSocket::bind("[::1]:5330").expect("bind ::1"));
    let tx4 = udp_socket(&ns, Ipv4Addr::LOCALHOST, 0);
    let tx6 = ns.run_in(|| UdpSocket::bind("[::1]:0").expect("bind ::1"));
    for (tx, to, rx, n) in [
        (&tx4, "127.0.0.1:5330", &rx4, n4),
        (&tx4, "127.0.0.1:5331", &rx_other, n_other),
        (&tx4, "127.0.0.1:5332", &rx_raw, n_raw),
        (&tx6, "[::1]:5330", &rx6, n6),
    ] {
        for i in 0..n {
            tx.send_to(&[i as u8], to).expect("send");
            assert_eq!(delivered(rx), [i as u8], "bypassed to {to}");
        }
    }

    let after = ns.run_in(|| {
        let mut sock = nfqmark::nfnl::NfnlSocket::open()?;
        let start = Instant::now();
        let rules = sock.queue_rules()?;
        Ok::<_, io::Error>((rules, start.elapsed()))
    });
    let (after, took) = after.expect("rule dump");
    eprintln!(
        "note: dumping 5 tables ({} rules of ours) took {took:?}",
        after.len()
    );
    let sums = nfqmark::nfnl::packets_per_queue(&after);
    let span = |first, count| nfqmark::nfnl::QueueSpan { first, count };
    assert_eq!(
        sums.get(&span(30, 1)),
        Some(&((n4 + n6) as u64)),
        "{after:?}"
    );
    assert_eq!(sums.get(&span(31, 2)), Some(&(n_raw as u64)), "{after:?}");
    assert_eq!(sums.len(), 2, "{sums:?}");
    let families: Vec<(u8, &str)> = after.iter().map(|r| (r.family, r.table.as_str())).collect();
    assert_eq!(families, [(2, "mangle"), (2, "raw"), (10, "mangle")]);
}

// ---- ctnetlink ----

/// The tuple of the UDP flow from `tx` to 127.0.0.1:`port`.
fn udp_tuple(tx: &UdpSocket, port: u16) -> nfqmark::nfnl::Tuple {
    let src = tx.local_addr().expect("local address");
    nfqmark::nfnl::Tuple {
        src: src.ip(),
        dst: Ipv4Addr::LOCALHOST.into(),
        proto: 17,
        src_port: src.port(),
        dst_port: port,
    }
}

/// Packets a rule whose listing contains `needle` counted, in `chain` of the mangle table.
fn rule_packets(ns: &Netns, chain: &str, needle: &str) -> u64 {
    let listing = ns.iptables(&["-L", chain, "-v", "-x", "-n"]);
    let line = listing
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no rule with {needle:?} in:\n{listing}"));
    line.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the packet count in {line:?}"))
}

#[test]
fn ctnetlink_reads_and_sets_the_connection_mark_under_a_mask() {
    if !root_or_skip() {
        return;
    }
    use nfqmark::nfnl::{CtDirection, NfnlSocket, Tuple};
    let port = 5340;
    let ns = Netns::new("ctnl");
    // Counts packets whose connection carries 0x1234; a connmark match also starts conntrack
    // in the namespace.
    ns.iptables(&[
        "-A",
        "POSTROUTING",
        "-p",
        "udp",
        "--dport",
        "5340",
        "-m",
        "connmark",
        "--mark",
        "0x1234",
    ]);
    let rx = ns.receiver(port);
    let tx = udp_socket(&ns, Ipv4Addr::LOCALHOST, 0);
    tx.send_to(b"one", (Ipv4Addr::LOCALHOST, port))
        .expect("send");
    assert_eq!(delivered(&rx), b"one");
    assert_eq!(
        rule_packets(&ns, "POSTROUTING", "connmark match"),
        0,
        "not marked yet"
    );
    let tuple = udp_tuple(&tx, port);
    let reply = Tuple {
        src: tuple.dst,
        dst: tuple.src,
        src_port: tuple.dst_port,
        dst_port: tuple.src_port,
        ..tuple
    };
    let nobody = Tuple {
        src_port: 1,
        ..tuple
    };
    let seen = ns.run_in(move || {
        let mut sock = NfnlSocket::open()?;
        let available = sock.conntrack_available()?;
        let before = sock.conntrack_get(&tuple, CtDirection::Original, 0)?;
        let set_low = sock.conntrack_set_mark(&tuple, CtDirection::Original, 0, 0x34, 0xff)?;
        // Bits outside the mask (0x56) must not land.
        let set_high = sock.conntrack_set_mark(&reply, CtDirection::Reply, 0, 0x1256, 0xff00)?;
        let after = sock.conntrack_get(&reply, CtDirection::Reply, 0)?;
        let missing = sock.conntrack_get(&nobody, CtDirection::Original, 0)?;
        let set_missing = sock.conntrack_set_mark(&nobody, CtDirection::Original, 0, 1, 1)?;
        Ok::<_, io::Error>((
            available,
            before,
            set_low,
            set_high,
            after,
            missing,
            set_missing,
        ))
    });
    let (available, before, set_low, set_high, after, missing, set_missing) =
        seen.expect("ctnetlink");
    assert!(available);
    let before = before.expect("the flow's entry");
    assert_eq!((before.mark, before.first()), (0, Some(false)));
    assert!(set_low && set_high);
    let after = after.expect("the same entry by its reply tuple");
    assert_eq!(after.id, before.id);
    assert_eq!(after.mark, 0x1234);
    assert_eq!((missing, set_missing), (None, false));
    // The kernel itself now sees the mark on the connection: the next packet matches.
    tx.send_to(b"two", (Ipv4Addr::LOCALHOST, port))
        .expect("send");
    assert_eq!(delivered(&rx), b"two");
    assert_eq!(rule_packets(&ns, "POSTROUTING", "connmark match"), 1);
}

#[test]
fn ctnetlink_has_no_entry_while_the_first_packet_is_queued() {
    if !root_or_skip() {
        return;
    }
    use nfqmark::nfnl::{CtDirection, NfnlSocket};
    let (port, queue) = (5341, 41);
    let ns = Netns::new("ctfirst");
    // The queue rule matches on conntrack state, which starts conntrack in the namespace.
    ns.queue_rule(
        port,
        queue,
        &["-m", "conntrack", "--ctstate", "NEW,ESTABLISHED"],
    );
    let rx = ns.receiver(port);
    let tx = udp_socket(&ns, Ipv4Addr::LOCALHOST, 0);
    let tuple = udp_tuple(&tx, port);
    let server = ns.serve(config(queue), move |sock, buf| {
        let mut ctnl = NfnlSocket::open().expect("ctnetlink socket");
        let mut look = || {
            ctnl.conntrack_get(&tuple, CtDirection::Original, 0)
                .expect("ctnetlink get")
        };
        let mut seen = Vec::new();
        for _ in 0..2 {
            let got = expect_packets(sock, buf, 1).remove(0);
            seen.push(look());
            sock.verdict(got.id, Verdict::Accept, None)
                .expect("verdict");
        }
        seen
    });
    for payload in [&b"first"[..], b"second"] {
        tx.send_to(payload, (Ipv4Addr::LOCALHOST, port))
            .expect("send");
        assert_eq!(delivered(&rx), payload);
    }
    let seen = join(server);
    assert_eq!(
        seen[0], None,
        "first packet queued: the entry is not confirmed yet"
    );
    let second = seen[1].expect("confirmed once the first packet left");
    assert_eq!(second.first(), Some(false));
}

/// Load an nft script into the namespace.
fn nft(ns: &Netns, script: &str) {
    let path = std::env::temp_dir().join(format!("{}.nft", ns.name));
    std::fs::write(&path, script).expect("write the nft script");
    let path_text = path.display().to_string();
    ns.exec(&["nft", "-f", &path_text]);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn set_elements_are_added_retimed_read_back_and_deleted_in_batches() {
    if !root_or_skip() {
        return;
    }
    use nfqmark::nfnl::{
        Element, NfnlSocket, NftWatch, SetElemOp as Op, SetId, SetKey as Key, SetOp,
    };
    let ns = Netns::new("sets");
    nft(
        &ns,
        "table inet nfqmark {\n\
         \tset pair4 { type ipv4_addr . ipv4_addr; flags timeout; }\n\
         \tset pair4m { type ipv4_addr . ipv4_addr . mark; flags timeout; }\n\
         \tset pair6 { type ipv6_addr . ipv6_addr; flags timeout; }\n\
         }\n",
    );
    let v4 = |a: [u8; 4], b: [u8; 4]| Key::concat(&[&a, &b]).expect("key");
    let timed = |key: Key, secs: u64| Element {
        key,
        timeout_ms: Some(secs * 1000),
        expiration_ms: None,
    };
    let set = |name: &'static str| SetId {
        family: 1,
        table: "nfqmark",
        name,
    };
    let k1 = v4([198, 18, 1, 2], [198, 18, 9, 81]);
    let k2 = v4([198, 18, 1, 2], [198, 18, 9, 82]);
    let km =
        Key::concat(&[&[198, 18, 1, 2], &[198, 18, 9, 83], &0x100u32.to_ne_bytes()]).expect("key");
    let mut k6 = [0u8; 32];
    k6[..16].copy_from_slice(
        &"2001:db8:1::2"
            .parse::<std::net::Ipv6Addr>()
            .expect("v6")
            .octets(),
    );
    k6[16..].copy_from_slice(
        &"2001:db8:9::81"
            .parse::<std::net::Ipv6Addr>()
            .expect("v6")
            .octets(),
    );
    let k6 = Key::from_bytes(&k6).expect("key");
    let result = ns.run_in(move || {
        let mut watch = NftWatch::open()?;
        let mut sock = NfnlSocket::open()?;
        let info = sock.set_info(&set("pair4"))?;
        let info_m = sock.set_info(&set("pair4m"))?;
        let absent = sock.set_info(&set("nothere"))?;
        let added = sock.set_batch(&[
            SetOp {
                op: Op::Add,
                set: set("pair4"),
                elements: &[timed(k1, 30), timed(k2, 40)],
            },
            SetOp {
                op: Op::Add,
                set: set("pair4m"),
                elements: &[timed(km, 50)],
            },
            SetOp {
                op: Op::Add,
                set: set("pair6"),
                elements: &[timed(k6, 60)],
            },
        ])?;
        let mut notified = Vec::new();
        let deadline = Instant::now() + WAIT;
        while notified.len() < 4 && Instant::now() < deadline {
            watch.recv(Duration::from_millis(200), |s, e, added| {
                notified.push((String::from_utf8_lossy(s).into_owned(), e.key, added))
            })?;
        }
        // Added again with a longer timeout: re-timed (Linux >= 6.12).
        let retimed = sock.set_batch(&[SetOp {
            op: Op::Add,
            set: set("pair4"),
            elements: &[timed(k1, 600)],
        }])?;
        let one = sock.set_element(&set("pair4"), &k1)?;
        let dump = sock.set_elements(&set("pair4"))?;
        // A delete of an element that is not there fails the whole batch: k2 stays.
        let missing = v4([198, 18, 1, 2], [198, 18, 9, 99]);
        let failed = sock.set_batch(&[
            SetOp {
                op: Op::Delete,
                set: set("pair4"),
                elements: &[Element::new(k2)],
            },
            SetOp {
                op: Op::Delete,
                set: set("pair4"),
                elements: &[Element::new(missing)],
            },
        ])?;
        let after_failed = sock.set_element(&set("pair4"), &k2)?;
        // Destroy ignores what is not there (Linux >= 6.3).
        let destroyed = sock.set_batch(&[SetOp {
            op: Op::Destroy,
            set: set("pair4"),
            elements: &[Element::new(k2), Element::new(missing)],
        }])?;
        let after_destroy = sock.set_element(&set("pair4"), &k2)?;
        let to_absent = sock.set_batch(&[SetOp {
            op: Op::Add,
            set: set("nothere"),
            elements: &[timed(k1, 1)],
        }])?;
        Ok::<_, io::Error>((
            info,
            info_m,
            absent,
            added,
            notified,
            retimed,
            one,
            dump,
            failed,
            after_failed,
            destroyed,
            after_destroy,
            to_absent,
        ))
    });
    let (
        info,
        info_m,
        absent,
        added,
        notified,
        retimed,
        one,
        dump,
        failed,
        after_failed,
        destroyed,
        after_destroy,
        to_absent,
    ) = result.expect("nf_tables over netlink");
    let info = info.expect("pair4 exists");
    assert_eq!(
        (info.key_len, info.timeouts(), info.map()),
        (8, true, false)
    );
    assert_eq!(info_m.map(|i| i.key_len), Some(12));
    assert_eq!(absent, None);
    assert!(added.applied(), "{added:?}");
    let mut names: Vec<&str> = notified.iter().map(|(s, _, _)| s.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["pair4", "pair4", "pair4m", "pair6"], "{notified:?}");
    assert!(notified.iter().all(|(_, _, added)| *added));
    assert!(retimed.applied());
    let one = one.expect("k1 is there");
    assert_eq!(one.timeout_ms, Some(600_000), "re-added with a new timeout");
    assert!(one.expiration_ms.is_some_and(|left| left > 590_000));
    let dump = dump.expect("pair4 exists");
    assert_eq!(dump.len(), 2);
    assert!(!failed.applied());
    assert_eq!(failed.failed, Some((1, libc::ENOENT)));
    assert!(after_failed.is_some(), "a failed batch changes nothing");
    assert!(destroyed.applied(), "{destroyed:?}");
    assert_eq!(after_destroy, None);
    assert_eq!(to_absent.errno(), Some(libc::ENOENT));
    // What nft itself reads: the mark in host order, the IPv6 pair, the new timeout.
    let listing = ns.exec(&["nft", "list", "table", "inet", "nfqmark"]);
    assert!(
        listing.contains("198.18.1.2 . 198.18.9.83 . 0x00000100 timeout 50s"),
        "{listing}"
    );
    assert!(
        listing.contains("2001:db8:1::2 . 2001:db8:9::81 timeout 1m"),
        "{listing}"
    );
    assert!(
        listing.contains("198.18.1.2 . 198.18.9.81 timeout 10m"),
        "{listing}"
    );
}
