//! The netlink socket of one NFQUEUE: the only place in nfqmark's netlink code that makes
//! system calls or uses `unsafe`.
//!
//! It binds a queue, receives the datagrams the kernel queues to us (one by one or a burst per
//! `recvmmsg`), and sends the verdicts and configuration requests [`super::wire`] encodes.
//!
//! It must never: parse or decide anything itself (that is `wire`'s and the caller's), block
//! past the caller's timeout (`open` and `unbind` wait at most 5 s for each acknowledgement),
//! or silently lose a packet it was handed: packets that arrive while it waits for an
//! acknowledgement are kept for the caller's next receive, or given the full-queue verdict.
//!
//! Kernel facts this relies on (net/netfilter/nfnetlink_queue.c):
//! - a queue only receives packets once its copy mode is set (`NFQNL_COPY_NONE` makes the kernel
//!   refuse to queue), so [`Socket::open`] sets the copy range last, when everything else is in
//!   force;
//! - configuring a queue that another socket owns fails with `EPERM`, not `EBUSY` (`EBUSY` is
//!   only for binding twice from the same socket); `EPERM` is also what a process without
//!   `CAP_NET_ADMIN` gets. [`Socket::open`] tells the two apart with an obsolete `PF_BIND` command,
//!   which the kernel acknowledges after its capability check and before any queue lookup;
//! - a verdict the kernel rejects (unknown id, ...) is answered asynchronously with an
//!   `NLMSG_ERROR` in the receive stream, which [`super::Messages`] reports as
//!   [`super::MsgError::Netlink`].

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::mem;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use libc::c_int;

use super::abi::*;
use super::wire::ct::{self, Answer, Ct, Direction as CtDirection, Tuple, TupleError};
use super::wire::nft::{DUMPED_TABLES, DumpError, QueueRule, RuleDump, encode_rule_dump};
use super::wire::queue::{
    Config, ConfigMsg, METADATA_ROOM, Messages, RecvBuf, Verdict, Verdicts, encode_config,
    encode_verdict, flags_for,
};
use super::wire::scan_for_ack;
use super::wire::set::{
    self as nftset, Batch, BatchReply, ELEMENTS_PER_MESSAGE, Element, Key, Op, SetId, SetInfo,
};
use super::wire::{MsgBuf, next_frame};

/// How long [`Socket::open`] and [`Socket::unbind`] wait for each acknowledgement.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Most datagrams kept for the caller when packets arrive while we wait for an acknowledgement.
const EARLY_MAX: usize = 64;
/// Most datagrams [`Socket::recv_many`] takes in one call.
pub const MAX_BURST: usize = 16;

/// Why a queue could not be bound, with the fix an operator needs.
#[derive(Debug)]
pub enum OpenError {
    /// `EPERM`: the process lacks `CAP_NET_ADMIN` in the queue's network namespace.
    Permission(io::Error),
    /// The queue is bound by another socket (the kernel says `EPERM` or `EBUSY`).
    Busy(u16),
    /// The kernel has no nfnetlink / nfnetlink_queue.
    Unsupported(io::Error),
    /// Any other failure, with the step that failed.
    Io(&'static str, io::Error),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Permission(e) => write!(
                f,
                "permission denied binding the queue ({e}): run as root or grant CAP_NET_ADMIN \
                 (setcap cap_net_admin+ep, or AmbientCapabilities=CAP_NET_ADMIN in systemd)"
            ),
            OpenError::Busy(n) => write!(
                f,
                "queue {n} is already bound by another process: stop it, or pick another --queue"
            ),
            OpenError::Unsupported(e) => write!(
                f,
                "the kernel has no NFQUEUE support ({e}): load it with `modprobe nfnetlink_queue`"
            ),
            OpenError::Io(what, e) => write!(f, "{what} failed: {e}"),
        }
    }
}

impl std::error::Error for OpenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OpenError::Permission(e) | OpenError::Unsupported(e) | OpenError::Io(_, e) => Some(e),
            OpenError::Busy(_) => None,
        }
    }
}
/// `poll` timeout in milliseconds, rounded up so a short timeout does not become a busy loop.
fn poll_timeout_ms(timeout: Option<Duration>) -> c_int {
    match timeout {
        None => -1,
        Some(t) => c_int::try_from(t.as_nanos().div_ceil(1_000_000)).unwrap_or(c_int::MAX),
    }
}

/// What to do with packets that arrive while we wait for an acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Early {
    /// Keep them for the caller's next `recv` (while opening: they need verdicts).
    Keep,
    /// Drop them on the floor (while unbinding: the kernel drops them with the queue).
    Discard,
}

/// A netlink socket bound to one NFQUEUE. Send and Sync: one thread may receive while another
/// sends verdicts.
pub struct Socket {
    fd: OwnedFd,
    queue: u16,
    fail_open: bool,
    rcvbuf_forced: bool,
    /// `NFQA_CFG_F_CONNTRACK` is in force.
    conntrack: bool,
    seq: AtomicU32,
    bound: AtomicBool,
    /// Datagrams that arrived while `open` waited for its last acknowledgement.
    early: Mutex<VecDeque<Box<[u8]>>>,
    has_early: AtomicBool,
    /// The receive timeout (SO_RCVTIMEO) last set for [`Socket::recv_many`], in microseconds.
    rcvtimeo_us: AtomicU64,
}

impl fmt::Debug for Socket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Socket")
            .field("fd", &self.fd.as_raw_fd())
            .field("queue", &self.queue)
            .field("bound", &self.bound.load(Ordering::Relaxed))
            .finish()
    }
}

impl AsRawFd for Socket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for Socket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Socket {
    /// Open a netlink socket in the calling thread's network namespace and bind queue
    /// `cfg.queue` with the given settings. Each step is acknowledged by the kernel before the
    /// next; the copy range is set last because the kernel queues nothing to us before it.
    pub fn open(cfg: &Config) -> Result<Socket, OpenError> {
        let fd = netlink_socket().map_err(|e| match e.raw_os_error() {
            Some(libc::EPROTONOSUPPORT | libc::EAFNOSUPPORT) => OpenError::Unsupported(e),
            Some(libc::EPERM | libc::EACCES) => OpenError::Permission(e),
            _ => OpenError::Io("creating the netlink socket", e),
        })?;
        let mut sock = Socket {
            fd,
            queue: cfg.queue,
            fail_open: cfg.fail_open,
            rcvbuf_forced: false,
            conntrack: false,
            seq: AtomicU32::new(1),
            bound: AtomicBool::new(false),
            early: Mutex::new(VecDeque::new()),
            has_early: AtomicBool::new(false),
            rcvtimeo_us: AtomicU64::new(0),
        };
        if let Some(size) = cfg.rcvbuf {
            sock.rcvbuf_forced = sock
                .set_rcvbuf(size)
                .map_err(|e| OpenError::Io("setting the receive buffer size", e))?;
        }
        sock.set_int_opt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 0)
            .map_err(|e| OpenError::Io("enabling ENOBUFS reports", e))?;
        // Best effort: smaller error replies; older kernels lack it and that is fine.
        let _ = sock.set_int_opt(SOL_NETLINK, NETLINK_CAP_ACK, 1);
        bind_netlink(sock.fd.as_fd())
            .map_err(|e| OpenError::Io("binding the netlink socket", e))?;

        let mut scratch = RecvBuf::new(cfg.copy_range);
        let bind = ConfigMsg::Command {
            command: NFQNL_CFG_CMD_BIND,
            pf: 0,
        };
        if let Err(e) = sock.request(bind, &mut scratch, Early::Keep) {
            return Err(sock.bind_error(e, &mut scratch));
        }
        sock.bound.store(true, Ordering::Release);
        let config_error = |what| {
            move |e: io::Error| match e.raw_os_error() {
                Some(libc::EPERM) => OpenError::Permission(e),
                _ => OpenError::Io(what, e),
            }
        };
        sock.request(ConfigMsg::MaxLen(cfg.max_len), &mut scratch, Early::Keep)
            .map_err(config_error("setting the queue length"))?;
        sock.conntrack = sock.set_flags(cfg, &mut scratch).map_err(config_error(
            "setting the queue flags (fail-open, GSO, uid/gid)",
        ))?;
        sock.request(
            ConfigMsg::CopyRange(cfg.copy_range),
            &mut scratch,
            Early::Keep,
        )
        .map_err(config_error("setting the copy range"))?;
        Ok(sock)
    }

    /// Set the queue flags; true when conntrack reporting is on. A kernel that refuses
    /// `NFQA_CFG_F_CONNTRACK` (`EOPNOTSUPP`: built without `CONFIG_NETFILTER_NETLINK_GLUE_CT`)
    /// gets the other flags without it. `EAGAIN` means the kernel just loaded ctnetlink for
    /// the flag (`nfqnl_recv_config` asks for the module and wants the request again): once.
    fn set_flags(&self, cfg: &Config, scratch: &mut RecvBuf) -> io::Result<bool> {
        let mut retried = false;
        loop {
            match self.request(flags_for(cfg), scratch, Early::Keep) {
                Ok(()) => return Ok(cfg.conntrack),
                Err(e) if cfg.conntrack && e.raw_os_error() == Some(libc::EAGAIN) && !retried => {
                    retried = true;
                }
                Err(e) if cfg.conntrack && e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                    let without = Config {
                        conntrack: false,
                        ..*cfg
                    };
                    self.request(flags_for(&without), scratch, Early::Keep)?;
                    return Ok(false);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether the kernel reports each packet's conntrack entry: [`Config::conntrack`] was
    /// asked and the kernel accepted it.
    pub fn conntrack(&self) -> bool {
        self.conntrack
    }

    /// The queue number this socket serves.
    pub fn queue(&self) -> u16 {
        self.queue
    }

    /// Whether [`Config::rcvbuf`] was applied with `SO_RCVBUFFORCE` (false: plain `SO_RCVBUF`,
    /// capped by `net.core.rmem_max`, or not requested).
    pub fn rcvbuf_forced(&self) -> bool {
        self.rcvbuf_forced
    }

    /// The receive buffer size as the kernel reports it (twice what was asked: the kernel
    /// counts its bookkeeping).
    pub fn rcvbuf(&self) -> io::Result<usize> {
        let mut value: c_int = 0;
        let mut len = mem::size_of::<c_int>() as libc::socklen_t;
        // SAFETY: `value` and `len` are valid for writes and `len` is the size of `value`.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&raw mut value).cast::<libc::c_void>(),
                &mut len,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(usize::try_from(value).unwrap_or(0))
    }

    /// Wait up to `timeout` (`None`: forever) for the next datagram and read it into `buf`.
    /// Returns its length, 0 when the time ran out or a signal interrupted the wait (the caller
    /// checks its stop flag and calls again). `ENOBUFS` comes back as an error: the socket
    /// buffer overflowed and packets were handled by the queue's full policy; count it and
    /// carry on. A datagram larger than `buf` is cut ([`RecvBuf::truncated`]).
    pub fn recv(&self, buf: &mut RecvBuf, timeout: Option<Duration>) -> io::Result<usize> {
        buf.clear();
        if self.has_early.load(Ordering::Acquire) {
            let mut early = self.lock_early();
            let datagram = early.pop_front();
            self.has_early.store(!early.is_empty(), Ordering::Release);
            drop(early);
            if let Some(datagram) = datagram {
                return Ok(buf.fill_from(&datagram));
            }
        }
        self.recv_raw(buf, timeout)
    }

    /// Give packet `id` its verdict, with a new mark when `mark` is set. The kernel answers
    /// only on failure, later, in the receive stream ([`super::MsgError::Netlink`]).
    pub fn verdict(&self, id: u32, verdict: Verdict, mark: Option<u32>) -> io::Result<()> {
        let mut req = encode_verdict(
            NFQNL_MSG_VERDICT,
            self.next_seq(),
            self.queue,
            id,
            verdict,
            mark,
        );
        self.send(req.bytes()?)
    }

    /// Give every packet still queued with an id up to `up_to_id` (in serial-number order) the
    /// same verdict and, when set, the same mark. The kernel answers `ENOENT` (later, in the
    /// receive stream) when no packet matched.
    pub fn verdict_batch(
        &self,
        up_to_id: u32,
        verdict: Verdict,
        mark: Option<u32>,
    ) -> io::Result<()> {
        let mut req = encode_verdict(
            NFQNL_MSG_VERDICT_BATCH,
            self.next_seq(),
            self.queue,
            up_to_id,
            verdict,
            mark,
        );
        self.send(req.bytes()?)
    }

    /// Send every verdict collected in `verdicts` in one datagram (the kernel handles each
    /// message of a datagram in order), then empty it.
    pub fn send_verdicts(&self, verdicts: &mut Verdicts) -> io::Result<()> {
        if verdicts.bytes.is_empty() {
            return Ok(());
        }
        let result = self.send(&verdicts.bytes);
        verdicts.bytes.clear();
        result
    }

    /// Receive a burst in one system call: wait up to `timeout` for the first datagram, then
    /// take every datagram already waiting, up to `bufs.len()` (at most [`MAX_BURST`]), one per
    /// buffer (`recvmmsg` with `MSG_WAITFORONE`). Returns how many buffers were filled; 0 on
    /// timeout or interruption. One call per burst instead of poll + receive per packet.
    pub fn recv_many(&self, bufs: &mut [RecvBuf], timeout: Duration) -> io::Result<usize> {
        if self.has_early.load(Ordering::Acquire) {
            return match bufs.first_mut() {
                Some(first) => self
                    .recv(first, Some(Duration::ZERO))
                    .map(|n| usize::from(n > 0)),
                None => Ok(0),
            };
        }
        self.set_rcvtimeo(timeout)?;
        let n = bufs.len().min(MAX_BURST);
        // SAFETY: all-zero is a valid value for these plain C structs.
        let mut iov: [libc::iovec; MAX_BURST] = unsafe { mem::zeroed() };
        // SAFETY: as above.
        let mut hdrs: [libc::mmsghdr; MAX_BURST] = unsafe { mem::zeroed() };
        let mut from = [kernel_addr(); MAX_BURST];
        // The first `n` of each (zip stops at the shorter: `bufs` or the MAX_BURST arrays).
        for (((buf, iov), hdr), from) in bufs
            .iter_mut()
            .zip(iov.iter_mut())
            .zip(hdrs.iter_mut())
            .zip(from.iter_mut())
        {
            buf.clear();
            let storage = buf.storage_mut();
            iov.iov_base = storage.as_mut_ptr().cast::<libc::c_void>();
            iov.iov_len = storage.len();
            hdr.msg_hdr.msg_iov = &raw mut *iov;
            hdr.msg_hdr.msg_iovlen = 1;
            hdr.msg_hdr.msg_name = (&raw mut *from).cast::<libc::c_void>();
            hdr.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        }
        // SAFETY: `hdrs[..n]` point at `iov[..n]` and `from[..n]`, which point at the buffers'
        // storage; all outlive the call, and the count says `n`.
        let got = unsafe {
            libc::recvmmsg(
                self.fd.as_raw_fd(),
                hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_WAITFORONE | libc::MSG_TRUNC,
                std::ptr::null_mut(),
            )
        };
        if got < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock => Ok(0),
                _ => Err(e),
            };
        }
        let got = (got as usize).min(n);
        for ((buf, hdr), from) in bufs.iter_mut().zip(&hdrs).zip(&from).take(got) {
            if from.nl_pid != 0 {
                // Only the kernel may talk to us.
                continue;
            }
            buf.set_received(hdr.msg_len as usize);
        }
        Ok(got)
    }

    fn set_rcvtimeo(&self, timeout: Duration) -> io::Result<()> {
        // At least a millisecond: a zero SO_RCVTIMEO would mean "wait forever".
        let us = u64::try_from(timeout.as_micros())
            .unwrap_or(u64::MAX)
            .max(1_000);
        if self.rcvtimeo_us.load(Ordering::Relaxed) == us {
            return Ok(());
        }
        let tv = libc::timeval {
            tv_sec: (us / 1_000_000) as libc::time_t,
            tv_usec: (us % 1_000_000) as libc::suseconds_t,
        };
        // SAFETY: `tv` is a valid timeval for the duration of the call and the length is its
        // size.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tv).cast::<libc::c_void>(),
                mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        self.rcvtimeo_us.store(us, Ordering::Relaxed);
        Ok(())
    }

    /// Unbind the queue and wait for the kernel to confirm. Packets still waiting for a verdict
    /// are dropped by the kernel. Unbinding an unbound socket does nothing.
    /// Change the queue's length limit while bound. With fail-open, a limit of 0 makes the
    /// kernel accept every new packet without queueing it: how a worker stops taking packets
    /// before it unbinds, so that no packet still waiting is dropped with the queue.
    pub fn set_max_len(&self, len: u32) -> io::Result<()> {
        let mut scratch = RecvBuf::with_capacity(METADATA_ROOM);
        self.request(ConfigMsg::MaxLen(len), &mut scratch, Early::Keep)
    }

    pub fn unbind(&self) -> io::Result<()> {
        if !self.bound.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut scratch = RecvBuf::with_capacity(METADATA_ROOM);
        let unbind = ConfigMsg::Command {
            command: NFQNL_CFG_CMD_UNBIND,
            pf: 0,
        };
        self.request(unbind, &mut scratch, Early::Discard)?;
        self.bound.store(false, Ordering::Release);
        Ok(())
    }

    fn next_seq(&self) -> u32 {
        loop {
            // 0 is what the kernel puts in the messages it sends on its own: never ours.
            let seq = self.seq.fetch_add(1, Ordering::Relaxed);
            if seq != 0 {
                return seq;
            }
        }
    }

    fn lock_early(&self) -> MutexGuard<'_, VecDeque<Box<[u8]>>> {
        self.early
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn set_int_opt(&self, level: c_int, name: c_int, value: c_int) -> io::Result<()> {
        set_int_opt(self.fd.as_fd(), level, name, value)
    }

    /// Set the receive buffer; true when forced past `rmem_max`.
    fn set_rcvbuf(&self, size: usize) -> io::Result<bool> {
        // The kernel doubles the value; keep the doubled value within an int.
        let value = c_int::try_from(size)
            .unwrap_or(c_int::MAX)
            .min(c_int::MAX / 2);
        match self.set_int_opt(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, value) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => self
                .set_int_opt(libc::SOL_SOCKET, libc::SO_RCVBUF, value)
                .map(|()| false),
            Err(e) => Err(e),
        }
    }

    fn send(&self, bytes: &[u8]) -> io::Result<()> {
        send_to_kernel(self.fd.as_fd(), bytes)
    }

    /// `poll` then `recvfrom(MSG_DONTWAIT | MSG_TRUNC)` into `buf`. Datagrams not sent by the
    /// kernel (port 0) are ignored.
    fn recv_raw(&self, buf: &mut RecvBuf, timeout: Option<Duration>) -> io::Result<usize> {
        buf.clear();
        if !poll_in(self.fd.as_fd(), timeout)? {
            return Ok(0);
        }
        match recv_from_kernel(self.fd.as_fd(), buf.storage_mut())? {
            Some(n) => Ok(buf.set_received(n)),
            None => Ok(0),
        }
    }

    /// Send a configuration request with `NLM_F_ACK` and wait for its answer.
    fn request(&self, msg: ConfigMsg, scratch: &mut RecvBuf, early: Early) -> io::Result<()> {
        let seq = self.next_seq();
        let mut req = encode_config(seq, self.queue, msg, true);
        self.send(req.bytes()?)?;
        let deadline = Instant::now() + ACK_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the kernel did not acknowledge the request",
                ));
            }
            match self.recv_raw(scratch, Some(left)) {
                Ok(0) => continue,
                Ok(_) => {}
                // Overflow may have eaten the acknowledgement too: the deadline ends the wait.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => continue,
                Err(e) => return Err(e),
            }
            let scan = scan_for_ack(scratch.as_bytes(), seq);
            if scan.other && early == Early::Keep {
                self.keep_early(scratch.as_bytes());
            }
            match scan.ack {
                Some(0) => return Ok(()),
                Some(errno) => return Err(io::Error::from_raw_os_error(errno)),
                None => {}
            }
        }
    }

    /// Hold a datagram that arrived during `open` for the caller's first `recv`. Past the bound,
    /// its packets get what the kernel would give them with a full queue.
    fn keep_early(&self, datagram: &[u8]) {
        let mut early = self.lock_early();
        if early.len() < EARLY_MAX {
            early.push_back(Box::from(datagram));
            self.has_early.store(true, Ordering::Release);
            return;
        }
        drop(early);
        let verdict = if self.fail_open {
            Verdict::Accept
        } else {
            Verdict::Drop
        };
        for msg in Messages::new(datagram) {
            let id = match msg {
                Ok(packet) => Some(packet.id),
                Err(e) => e.packet_id(),
            };
            if let Some(id) = id {
                let _ = self.verdict(id, verdict, None);
            }
        }
    }

    /// Bind failed: say why in the operator's terms. The kernel answers `EPERM` both to a
    /// process without `CAP_NET_ADMIN` and for a queue another socket owns; the obsolete
    /// `PF_BIND` command, acknowledged after the capability check and before any queue lookup,
    /// tells which.
    fn bind_error(&self, e: io::Error, scratch: &mut RecvBuf) -> OpenError {
        match e.raw_os_error() {
            Some(libc::EPERM) => {
                let probe = ConfigMsg::Command {
                    command: NFQNL_CFG_CMD_PF_BIND,
                    pf: libc::AF_INET as u16,
                };
                match self.request(probe, scratch, Early::Discard) {
                    Ok(()) => OpenError::Busy(self.queue),
                    Err(_) => OpenError::Permission(e),
                }
            }
            Some(libc::EBUSY) => OpenError::Busy(self.queue),
            // nfnetlink answers EINVAL for a subsystem it does not know (module not loaded and
            // not loadable).
            Some(libc::EINVAL | libc::ENOENT | libc::EOPNOTSUPP | libc::EPROTONOSUPPORT) => {
                OpenError::Unsupported(e)
            }
            _ => OpenError::Io("binding the queue", e),
        }
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        if self.bound.load(Ordering::Acquire) {
            // Best effort and without waiting: closing the socket unbinds its queues anyway.
            let unbind = ConfigMsg::Command {
                command: NFQNL_CFG_CMD_UNBIND,
                pf: 0,
            };
            let mut req = encode_config(self.next_seq(), self.queue, unbind, false);
            if let Ok(bytes) = req.bytes() {
                let _ = self.send(bytes);
            }
        }
    }
}

/// Most elements [`NfnlSocket::set_batch`] sends in one batch: a batch is one datagram, which
/// must fit the socket's send buffer (the largest elements nfqmark writes take 72 bytes).
pub const MAX_BATCH_ELEMENTS: usize = 512;

/// One step of a batch: do `op` to these elements of `set`.
#[derive(Debug, Clone, Copy)]
pub struct SetOp<'a> {
    pub op: Op,
    pub set: SetId<'a>,
    pub elements: &'a [Element],
}

/// Largest datagram a control socket takes: the kernel fills dump datagrams up to 32 KiB (or
/// the page-sized default), so this leaves room; a larger one is an error, never cut silently.
const CONTROL_BUF: usize = 64 * 1024;
/// How long a control request waits for its whole answer.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a dump interrupted by a change of the ruleset is run again before giving up.
const DUMP_TRIES: usize = 3;

/// A netlink socket for nfnetlink requests that are not the queue's: nf_tables rule dumps
/// ([`NfnlSocket::queue_rules`]) and conntrack entries by tuple ([`NfnlSocket::conntrack_get`],
/// [`NfnlSocket::conntrack_set_mark`]). Blocking, each request bounded by a 5 s deadline; meant for
/// a thread that is not on the packet path (it allocates, and a dump of a big ruleset takes
/// milliseconds).
pub struct NfnlSocket {
    fd: OwnedFd,
    seq: u32,
    buf: Box<[u8]>,
    /// Requests of variable size (batches, set requests) are encoded here, reused.
    out: MsgBuf,
}

impl fmt::Debug for NfnlSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NfnlSocket")
            .field("fd", &self.fd.as_raw_fd())
            .finish()
    }
}

impl NfnlSocket {
    /// A socket in the calling thread's network namespace. Requests need `CAP_NET_ADMIN`
    /// there (every nfnetlink message does), opening does not.
    pub fn open() -> io::Result<NfnlSocket> {
        let fd = netlink_socket()?;
        // Best effort: smaller error replies.
        let _ = set_int_opt(fd.as_fd(), SOL_NETLINK, NETLINK_CAP_ACK, 1);
        bind_netlink(fd.as_fd())?;
        Ok(NfnlSocket {
            fd,
            seq: 0,
            buf: vec![0u8; CONTROL_BUF].into_boxed_slice(),
            out: MsgBuf::default(),
        })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    /// The first of `n` consecutive sequence numbers, none of them 0.
    fn reserve_seqs(&mut self, n: u32) -> u32 {
        let first = self.next_seq();
        let last = first.wrapping_add(n.saturating_sub(1));
        if last < first {
            // Wrapped: start again from 1.
            self.seq = n;
            return 1;
        }
        self.seq = last;
        first
    }

    /// One nf_tables set: its flags and key length; `None` when the table or the set does not
    /// exist.
    pub fn set_info(&mut self, set: &SetId<'_>) -> io::Result<Option<SetInfo>> {
        let seq = self.next_seq();
        nftset::encode_get_set(&mut self.out, seq, set);
        send_to_kernel(self.fd.as_fd(), self.out.bytes())?;
        let deadline = Instant::now() + CONTROL_TIMEOUT;
        loop {
            let datagram = self.recv_until(deadline)?;
            match nftset::parse_answer(datagram, seq, &mut Vec::new(), &mut false) {
                Ok(nftset::Answer::Set(info)) => return Ok(Some(info)),
                Ok(nftset::Answer::Refused(libc::ENOENT)) => return Ok(None),
                Ok(nftset::Answer::Refused(errno)) => {
                    return Err(io::Error::from_raw_os_error(errno));
                }
                Ok(nftset::Answer::Nothing | nftset::Answer::Elements) => continue,
                Ok(nftset::Answer::Done) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the kernel ended a set get without the set",
                    ));
                }
                Err(reason) => return Err(io::Error::new(io::ErrorKind::InvalidData, reason)),
            }
        }
    }

    /// Every element of a set (a dump, run again when a change interrupted it); `None` when
    /// the table or the set does not exist.
    pub fn set_elements(&mut self, set: &SetId<'_>) -> io::Result<Option<Vec<Element>>> {
        for _ in 0..DUMP_TRIES {
            let seq = self.next_seq();
            nftset::encode_dump(&mut self.out, seq, set);
            send_to_kernel(self.fd.as_fd(), self.out.bytes())?;
            let deadline = Instant::now() + CONTROL_TIMEOUT;
            let mut elements = Vec::new();
            let mut interrupted = false;
            loop {
                let datagram = self.recv_until(deadline)?;
                match nftset::parse_answer(datagram, seq, &mut elements, &mut interrupted) {
                    Ok(nftset::Answer::Done) => break,
                    Ok(nftset::Answer::Refused(libc::ENOENT)) => return Ok(None),
                    Ok(nftset::Answer::Refused(errno)) => {
                        return Err(io::Error::from_raw_os_error(errno));
                    }
                    Ok(_) => {}
                    Err(reason) => {
                        return Err(io::Error::new(io::ErrorKind::InvalidData, reason));
                    }
                }
            }
            if !interrupted {
                return Ok(Some(elements));
            }
        }
        Err(io::Error::new(
            io::ErrorKind::Interrupted,
            "the set kept changing during the element dump",
        ))
    }

    /// The element of a set with this key, `None` when there is none (or no such set).
    pub fn set_element(&mut self, set: &SetId<'_>, key: &Key) -> io::Result<Option<Element>> {
        let seq = self.next_seq();
        nftset::encode_get_element(&mut self.out, seq, set, key);
        send_to_kernel(self.fd.as_fd(), self.out.bytes())?;
        let deadline = Instant::now() + CONTROL_TIMEOUT;
        let mut found = Vec::new();
        loop {
            let datagram = self.recv_until(deadline)?;
            match nftset::parse_answer(datagram, seq, &mut found, &mut false) {
                Ok(nftset::Answer::Elements) => return Ok(found.pop()),
                Ok(nftset::Answer::Refused(libc::ENOENT)) => return Ok(None),
                Ok(nftset::Answer::Refused(errno)) => {
                    return Err(io::Error::from_raw_os_error(errno));
                }
                Ok(_) => continue,
                Err(reason) => return Err(io::Error::new(io::ErrorKind::InvalidData, reason)),
            }
        }
    }

    /// Send one batch doing each [`SetOp`] in order, as one transaction, and read what came
    /// back: applied whole, or not at all (then [`BatchReply`] says which message failed and
    /// why). At most [`MAX_BATCH_ELEMENTS`] elements in all.
    pub fn set_batch(&mut self, ops: &[SetOp<'_>]) -> io::Result<BatchReply> {
        let total: usize = ops.iter().map(|o| o.elements.len()).sum();
        if total > MAX_BATCH_ELEMENTS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "more elements than one batch carries",
            ));
        }
        let messages: usize = ops
            .iter()
            .map(|o| o.elements.len().div_ceil(ELEMENTS_PER_MESSAGE).max(1))
            .sum();
        let first = self.reserve_seqs(u32::try_from(messages + 2).unwrap_or(u32::MAX));
        let mut batch = Batch::begin(&mut self.out, first);
        for op in ops {
            let mut rest = op.elements;
            loop {
                let taken = batch.elements(&mut self.out, op.op, &op.set, rest);
                rest = rest.get(taken..).unwrap_or(&[]);
                if rest.is_empty() {
                    break;
                }
            }
        }
        let seqs = batch.end(&mut self.out);
        send_to_kernel(self.fd.as_fd(), self.out.bytes())?;
        let mut reply = BatchReply::new(seqs);
        // The kernel handled the batch inside the send: every answer is waiting already. The
        // deadline only guards against a kernel that behaves otherwise.
        let deadline = Instant::now() + CONTROL_TIMEOUT;
        while !reply.complete() {
            let datagram = self.recv_until(deadline)?;
            reply
                .feed(datagram)
                .map_err(|reason| io::Error::new(io::ErrorKind::InvalidData, reason))?;
        }
        // A refused batch may still have answers queued for its messages: read them now, so
        // they are not mistaken for the next request's.
        while let Some(n) = recv_from_kernel(self.fd.as_fd(), &mut self.buf)? {
            let _ = n;
        }
        Ok(reply)
    }

    /// nfqmark's NFQUEUE rules with their packet counters, from the `mangle` and `raw` tables
    /// of iptables-nft and ip6tables-nft and the `inet nfqmark` table (see
    /// [`super::wire::nft`] for which rules count). Tables that do not exist contribute
    /// nothing; rules of iptables-legacy are not in nf_tables and are not seen.
    pub fn queue_rules(&mut self) -> io::Result<Vec<QueueRule>> {
        let mut rules = Vec::new();
        for (family, table) in DUMPED_TABLES {
            rules.extend(self.dump_rules(family, table)?);
        }
        Ok(rules)
    }

    /// The conntrack entry with this tuple (in `dir`) in zone `zone`; `None` when there is
    /// none. A connection whose first packet is still queued has no entry yet: its entry is
    /// confirmed (put in the table) when that packet leaves the last hook.
    pub fn conntrack_get(
        &mut self,
        tuple: &Tuple,
        dir: CtDirection,
        zone: u16,
    ) -> io::Result<Option<Ct>> {
        let seq = self.next_seq();
        let mut req = ct::encode_get(seq, tuple, dir, zone).map_err(tuple_error)?;
        send_to_kernel(self.fd.as_fd(), req.bytes()?)?;
        match self.ct_answer(seq)? {
            Answer::Entry(ct) => Ok(Some(ct)),
            Answer::Refused(libc::ENOENT) => Ok(None),
            Answer::Refused(errno) => Err(io::Error::from_raw_os_error(errno)),
            Answer::Done | Answer::Nothing => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "ctnetlink acknowledged a get without sending the entry",
            )),
        }
    }

    /// Set the bits under `mask` of the conntrack mark of the entry with this tuple to those
    /// of `value`, keeping the others. False when there is no such entry (none, or not
    /// confirmed yet: see [`NfnlSocket::conntrack_get`]).
    pub fn conntrack_set_mark(
        &mut self,
        tuple: &Tuple,
        dir: CtDirection,
        zone: u16,
        value: u32,
        mask: u32,
    ) -> io::Result<bool> {
        let seq = self.next_seq();
        let mut req =
            ct::encode_set_mark(seq, tuple, dir, zone, value, mask).map_err(tuple_error)?;
        send_to_kernel(self.fd.as_fd(), req.bytes()?)?;
        match self.ct_answer(seq)? {
            Answer::Done => Ok(true),
            Answer::Refused(libc::ENOENT) => Ok(false),
            Answer::Refused(errno) => Err(io::Error::from_raw_os_error(errno)),
            Answer::Entry(_) | Answer::Nothing => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "ctnetlink answered a mark change with something else than an acknowledgement",
            )),
        }
    }

    /// Whether this kernel (and namespace) answers ctnetlink requests: a get for a tuple no
    /// connection has must come back `ENOENT`. A kernel without ctnetlink refuses the
    /// subsystem (`EINVAL` or `EOPNOTSUPP`); without `CAP_NET_ADMIN` it is `EPERM`.
    pub fn conntrack_available(&mut self) -> io::Result<bool> {
        let nobody = Tuple {
            src: std::net::Ipv4Addr::UNSPECIFIED.into(),
            dst: std::net::Ipv4Addr::UNSPECIFIED.into(),
            proto: 17,
            src_port: 0,
            dst_port: 0,
        };
        match self.conntrack_get(&nobody, CtDirection::Original, 0) {
            Ok(_) => Ok(true),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP)) => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Wait for the answer to ctnetlink request `seq`.
    fn ct_answer(&mut self, seq: u32) -> io::Result<Answer> {
        let deadline = Instant::now() + CONTROL_TIMEOUT;
        loop {
            let datagram = self.recv_until(deadline)?;
            match ct::parse_answer(datagram, seq) {
                Ok(Answer::Nothing) => continue,
                Ok(answer) => return Ok(answer),
                Err(reason) => return Err(io::Error::new(io::ErrorKind::InvalidData, reason)),
            }
        }
    }

    /// One table's rules, dumped again when a change of the ruleset interrupted the dump.
    fn dump_rules(&mut self, family: u8, table: &str) -> io::Result<Vec<QueueRule>> {
        for _ in 0..DUMP_TRIES {
            let seq = self.next_seq();
            let mut req = encode_rule_dump(seq, family, table);
            send_to_kernel(self.fd.as_fd(), req.bytes()?)?;
            let mut dump = RuleDump::default();
            let deadline = Instant::now() + CONTROL_TIMEOUT;
            while !dump.done {
                let datagram = self.recv_until(deadline)?;
                match dump.feed(datagram, seq) {
                    Ok(()) => {}
                    // No such table (older kernels answer a filtered dump so): no rules.
                    Err(DumpError::Kernel(libc::ENOENT)) => return Ok(Vec::new()),
                    Err(DumpError::Kernel(errno)) => {
                        return Err(io::Error::from_raw_os_error(errno));
                    }
                    Err(DumpError::Malformed(reason)) => {
                        return Err(io::Error::new(io::ErrorKind::InvalidData, reason));
                    }
                }
            }
            if !dump.interrupted {
                return Ok(dump.rules);
            }
        }
        Err(io::Error::new(
            io::ErrorKind::Interrupted,
            "the ruleset kept changing during the rule dump",
        ))
    }

    /// The next datagram from the kernel, waiting until `deadline`.
    fn recv_until(&mut self, deadline: Instant) -> io::Result<&[u8]> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the kernel did not answer the request in time",
                ));
            }
            if !poll_in(self.fd.as_fd(), Some(left))? {
                continue;
            }
            match recv_from_kernel(self.fd.as_fd(), &mut self.buf)? {
                Some(n) if n > self.buf.len() => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "netlink answer larger than the receive buffer",
                    ));
                }
                Some(n) => return Ok(self.buf.get(..n).unwrap_or(&[])),
                None => continue,
            }
        }
    }
}

/// A netlink socket that listens to nf_tables change notifications (`NFNLGRP_NFTABLES`), for
/// elements added to and deleted from sets: how benchmarks and tests see when an element
/// appears, without polling. Notifications name the table and the set; joining the group needs
/// `CAP_NET_ADMIN` in the namespace (as every nfnetlink request does).
pub struct NftWatch {
    fd: OwnedFd,
    buf: Box<[u8]>,
    elements: Vec<Element>,
}

impl fmt::Debug for NftWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NftWatch")
            .field("fd", &self.fd.as_raw_fd())
            .finish()
    }
}

/// `setsockopt(SOL_NETLINK)`: join a multicast group.
const NETLINK_ADD_MEMBERSHIP: c_int = 1;

impl NftWatch {
    /// Listen in the calling thread's network namespace. The receive buffer is raised (forced
    /// where permitted) so a burst of notifications is not lost.
    pub fn open() -> io::Result<NftWatch> {
        let fd = netlink_socket()?;
        bind_netlink(fd.as_fd())?;
        let group = c_int::try_from(NFNLGRP_NFTABLES).unwrap_or(7);
        set_int_opt(fd.as_fd(), SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)?;
        let size = 8 << 20;
        if set_int_opt(fd.as_fd(), libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, size).is_err() {
            let _ = set_int_opt(fd.as_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, size);
        }
        Ok(NftWatch {
            fd,
            buf: vec![0u8; CONTROL_BUF].into_boxed_slice(),
            elements: Vec::new(),
        })
    }

    /// Wait up to `timeout` for a datagram; call `seen(set, element, added)` for every element
    /// it announces (`added` false: deleted). Returns how many elements. `ENOBUFS` means
    /// notifications were lost.
    pub fn recv(
        &mut self,
        timeout: Duration,
        mut seen: impl FnMut(&[u8], &Element, bool),
    ) -> io::Result<usize> {
        if !poll_in(self.fd.as_fd(), Some(timeout))? {
            return Ok(0);
        }
        let Some(n) = recv_from_kernel(self.fd.as_fd(), &mut self.buf)? else {
            return Ok(0);
        };
        let mut rest = self.buf.get(..n.min(self.buf.len())).unwrap_or(&[]);
        let mut count = 0;
        while let Some(Ok(frame)) = next_frame(&mut rest) {
            let added = match frame.msg_type {
                t if t == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM => true,
                t if t == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELSETELEM => false,
                _ => continue,
            };
            self.elements.clear();
            if let Ok((_table, set)) = nftset::parse_elements(frame.body, &mut self.elements) {
                for e in &self.elements {
                    seen(set, e, added);
                    count += 1;
                }
            }
        }
        Ok(count)
    }
}

fn tuple_error(e: TupleError) -> io::Error {
    match e {
        TupleError::MixedFamilies => io::Error::new(
            io::ErrorKind::InvalidInput,
            "a conntrack tuple needs two IPv4 or two IPv6 addresses",
        ),
    }
}

/// A new nfnetlink socket (not bound yet).
fn netlink_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with constant arguments; the result is checked below.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            NETLINK_NETFILTER,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a socket we just created and nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Bind a netlink socket to a port the kernel chooses.
fn bind_netlink(fd: BorrowedFd<'_>) -> io::Result<()> {
    let addr = kernel_addr();
    // SAFETY: `addr` is a valid sockaddr_nl and the length is its size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast::<libc::sockaddr>(),
            mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_int_opt(fd: BorrowedFd<'_>, level: c_int, name: c_int, value: c_int) -> io::Result<()> {
    // SAFETY: `value` is a valid c_int for the duration of the call and the length is its
    // size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw const value).cast::<libc::c_void>(),
            mem::size_of::<c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Send one datagram to the kernel, whole.
fn send_to_kernel(fd: BorrowedFd<'_>, bytes: &[u8]) -> io::Result<()> {
    let addr = kernel_addr();
    loop {
        // SAFETY: `bytes` is valid for reads of its length, `addr` is a valid sockaddr_nl
        // and the length is its size.
        let n = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                bytes.as_ptr().cast::<libc::c_void>(),
                bytes.len(),
                0,
                (&raw const addr).cast::<libc::sockaddr>(),
                mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n as usize != bytes.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "netlink request sent in part",
            ));
        }
        return Ok(());
    }
}

/// Wait up to `timeout` (`None`: forever) for something to read. False when the time ran out
/// or a signal interrupted the wait.
fn poll_in(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is one valid pollfd and the count says one.
    let ready = unsafe { libc::poll(&mut pfd, 1, poll_timeout_ms(timeout)) };
    if ready < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(e);
    }
    Ok(ready > 0)
}

/// `recvfrom(MSG_DONTWAIT | MSG_TRUNC)` into `storage`: the datagram's full length (more than
/// `storage` when it was cut), or `None` when nothing waits or the sender is not the kernel
/// (port 0: a privileged process writing to our port is not the kernel talking).
fn recv_from_kernel(fd: BorrowedFd<'_>, storage: &mut [u8]) -> io::Result<Option<usize>> {
    let mut from = kernel_addr();
    let mut from_len = mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
    // SAFETY: `storage` is valid for writes of its length; `from` and `from_len` are valid
    // for writes and `from_len` is the size of `from`.
    let n = unsafe {
        libc::recvfrom(
            fd.as_raw_fd(),
            storage.as_mut_ptr().cast::<libc::c_void>(),
            storage.len(),
            libc::MSG_DONTWAIT | libc::MSG_TRUNC,
            (&raw mut from).cast::<libc::sockaddr>(),
            &mut from_len,
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock => Ok(None),
            _ => Err(e),
        };
    }
    if from.nl_pid != 0 {
        return Ok(None);
    }
    Ok(Some(n as usize))
}

/// The kernel's netlink address (port 0), also our bind address (port chosen by the kernel).
fn kernel_addr() -> libc::sockaddr_nl {
    // SAFETY: sockaddr_nl is a plain C struct for which all zeroes is a valid value.
    let mut addr: libc::sockaddr_nl = unsafe { mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nfnl::testdata::*;
    use crate::nfnl::wire::queue::MsgError;

    // ---- the early-packet stash (no kernel needed) ----

    /// A `Socket` over a plain datagram socket, bound to no queue: for the parts of `Socket`
    /// that do not need the kernel's queue (no root needed).
    fn unbound_socket(fail_open: bool) -> Socket {
        // SAFETY: plain syscall with constant arguments; the result is checked below.
        let raw = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        assert!(raw >= 0, "socket: {}", io::Error::last_os_error());
        Socket {
            // SAFETY: `raw` is a socket we just created and nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(raw) },
            queue: 3,
            fail_open,
            rcvbuf_forced: false,
            conntrack: false,
            seq: AtomicU32::new(1),
            bound: AtomicBool::new(false),
            early: Mutex::new(VecDeque::new()),
            has_early: AtomicBool::new(false),
            rcvtimeo_us: AtomicU64::new(0),
        }
    }

    #[test]
    fn packets_kept_while_opening_come_out_of_the_next_recvs_in_order() {
        let sock = unbound_socket(true);
        let first = packet(&[pkt_hdr(1, 0x0800, 3)]);
        let second = packet(&[pkt_hdr(2, 0x0800, 3), attr(NFQA_PAYLOAD, &[7; 100])]);
        sock.keep_early(&first);
        sock.keep_early(&second);

        let mut buf = RecvBuf::new(0);
        assert_eq!(
            sock.recv(&mut buf, Some(Duration::ZERO)).unwrap(),
            first.len()
        );
        assert_eq!(
            buf.messages().map(|m| m.map(|p| p.id)).collect::<Vec<_>>(),
            [Ok(1)]
        );
        // Into a buffer smaller than the datagram: cut, said so, and the id still found.
        let mut small = RecvBuf::with_capacity(40);
        assert_eq!(sock.recv(&mut small, Some(Duration::ZERO)).unwrap(), 40);
        assert!(small.truncated());
        assert_eq!(
            small.messages().collect::<Vec<_>>(),
            [Err(MsgError::Truncated { id: Some(2) })]
        );
        // Then the socket itself, where nothing waits.
        assert_eq!(sock.recv(&mut buf, Some(Duration::ZERO)).unwrap(), 0);
        assert_eq!(buf.messages().count(), 0);
        assert!(!sock.has_early.load(Ordering::Relaxed));
    }

    #[test]
    fn early_packets_past_the_bound_are_not_kept() {
        let sock = unbound_socket(false);
        for id in 0..EARLY_MAX as u32 + 3 {
            // Past the bound the packet gets the full-queue verdict right away (here the send
            // fails: not a netlink socket) instead of growing the stash.
            sock.keep_early(&packet(&[pkt_hdr(id, 0x0800, 3)]));
        }
        assert_eq!(sock.lock_early().len(), EARLY_MAX);
    }

    #[test]
    fn socket_can_be_shared_between_a_receiving_and_a_verdict_thread() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Socket>();
    }

    // ---- small things ----

    #[test]
    fn poll_timeouts_round_up_to_milliseconds() {
        assert_eq!(poll_timeout_ms(None), -1);
        assert_eq!(poll_timeout_ms(Some(Duration::ZERO)), 0);
        assert_eq!(poll_timeout_ms(Some(Duration::from_nanos(1))), 1);
        assert_eq!(poll_timeout_ms(Some(Duration::from_micros(1500))), 2);
        assert_eq!(poll_timeout_ms(Some(Duration::from_secs(3))), 3000);
        assert_eq!(poll_timeout_ms(Some(Duration::MAX)), c_int::MAX);
    }

    #[test]
    fn errors_name_cause_and_fix() {
        assert_eq!(
            OpenError::Busy(3).to_string(),
            "queue 3 is already bound by another process: stop it, or pick another --queue"
        );
        let perm = OpenError::Permission(io::Error::from_raw_os_error(libc::EPERM)).to_string();
        assert!(
            perm.contains("CAP_NET_ADMIN") && !perm.contains('\n'),
            "{perm}"
        );
        let unsup = OpenError::Unsupported(io::Error::from_raw_os_error(libc::EINVAL)).to_string();
        assert!(unsup.contains("modprobe nfnetlink_queue"), "{unsup}");
        let io = OpenError::Io("setting the copy range", io::Error::from_raw_os_error(5));
        assert!(
            io.to_string()
                .starts_with("setting the copy range failed: ")
        );
        let e = MsgError::Netlink {
            errno: libc::ENOENT,
            seq: 4,
        };
        assert!(e.to_string().starts_with("the kernel refused request 4: "));
        assert_eq!(
            MsgError::Malformed {
                id: Some(2),
                reason: "r"
            }
            .to_string(),
            "malformed packet message (packet 2): r"
        );
        assert_eq!(MsgError::Truncated { id: Some(9) }.packet_id(), Some(9));
        assert_eq!(e.packet_id(), None);
    }
}
