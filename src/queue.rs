//! NFQUEUE I/O: the only place that talks to the kernel's packet queue.
//!
//! This module owns binding a queue, receiving packets and sending verdicts. It decides nothing:
//! the worker asks the engine and gives each packet its one verdict through [`Queue::verdict`].

use std::fmt;
use std::io;

use crate::engine::{Hook, Meta, Verdict};

/// How to bind one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueOptions {
    pub num: u16,
    /// Bytes of each packet copied to us (DNS needs whole packets).
    pub copy_range: u16,
    /// Most packets the kernel holds for us before it drops (or, fail-open, accepts) new ones.
    pub max_len: u32,
    /// When the queue is full, the kernel accepts packets instead of dropping them.
    pub fail_open: bool,
}

impl Default for QueueOptions {
    fn default() -> Self {
        QueueOptions {
            num: 0,
            copy_range: u16::MAX,
            max_len: 4096,
            fail_open: true,
        }
    }
}

/// Why a queue could not be bound, with the fix an operator needs.
#[derive(Debug)]
pub enum OpenError {
    /// EPERM: the process lacks CAP_NET_ADMIN.
    Permission(io::Error),
    /// EBUSY: another process holds the queue.
    Busy(u16),
    /// The kernel has no nfnetlink_queue.
    Unsupported(io::Error),
    Other(&'static str, io::Error),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Permission(_) => f.write_str(
                "permission denied binding the queue: run as root or grant CAP_NET_ADMIN \
                 (setcap cap_net_admin+ep, or AmbientCapabilities=CAP_NET_ADMIN in systemd)",
            ),
            OpenError::Busy(n) => write!(
                f,
                "queue {n} is already bound by another process: stop it, or pick another --queue"
            ),
            OpenError::Unsupported(e) => write!(
                f,
                "the kernel has no NFQUEUE support ({e}): load it with `modprobe nfnetlink_queue`"
            ),
            OpenError::Other(what, e) => write!(f, "{what}: {e}"),
        }
    }
}

impl std::error::Error for OpenError {}

fn classify(what: &'static str, num: u16, e: io::Error) -> OpenError {
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => OpenError::Permission(e),
        Some(libc::EBUSY) => OpenError::Busy(num),
        Some(libc::EPROTONOSUPPORT) | Some(libc::EAFNOSUPPORT) | Some(libc::ENOENT) => {
            OpenError::Unsupported(e)
        }
        _ => OpenError::Other(what, e),
    }
}

/// A bound NFQUEUE.
pub struct Queue {
    inner: nfq::Queue,
    num: u16,
}

/// One queued packet, owned until its verdict is sent.
pub struct Packet {
    msg: nfq::Message,
}

impl Packet {
    pub fn meta(&self) -> Meta {
        Meta {
            hook: Hook::from_kernel(self.msg.get_hook()),
            mark: self.msg.get_nfmark(),
            indev: self.msg.get_indev(),
            outdev: self.msg.get_outdev(),
        }
    }

    pub fn payload(&self) -> &[u8] {
        self.msg.get_payload()
    }
}

impl Queue {
    pub fn open(opts: &QueueOptions) -> Result<Queue, OpenError> {
        let num = opts.num;
        let mut inner =
            nfq::Queue::open().map_err(|e| classify("opening netlink socket", num, e))?;
        inner
            .bind(num)
            .map_err(|e| classify("binding queue", num, e))?;
        inner
            .set_copy_range(num, opts.copy_range)
            .map_err(|e| classify("setting copy range", num, e))?;
        inner
            .set_fail_open(num, opts.fail_open)
            .map_err(|e| classify("setting fail-open", num, e))?;
        inner
            .set_queue_max_len(num, opts.max_len)
            .map_err(|e| classify("setting queue length", num, e))?;
        // Count ENOBUFS (receive buffer overflow) instead of hiding it.
        inner
            .set_recv_enobufs(true)
            .map_err(|e| classify("enabling ENOBUFS reports", num, e))?;
        Ok(Queue { inner, num })
    }

    pub fn num(&self) -> u16 {
        self.num
    }

    /// Block until the next packet.
    pub fn recv(&mut self) -> io::Result<Packet> {
        self.inner.recv().map(|msg| Packet { msg })
    }

    /// Give a packet its verdict, with a new mark when `mark` is set.
    pub fn verdict(
        &mut self,
        packet: Packet,
        verdict: Verdict,
        mark: Option<u32>,
    ) -> io::Result<()> {
        let mut msg = packet.msg;
        if let Some(mark) = mark {
            msg.set_nfmark(mark);
        }
        msg.set_verdict(match verdict {
            Verdict::Accept => nfq::Verdict::Accept,
            Verdict::Drop => nfq::Verdict::Drop,
            Verdict::Repeat => nfq::Verdict::Repeat,
        });
        self.inner.verdict(msg)
    }
}
